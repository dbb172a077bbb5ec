//! Doorbells: a 32-bit counter in the register page that one side increments and the other
//! waits on. Where both sides share a kernel the wait is a futex (shared, not private: the
//! word lives in a shared mapping); otherwise bounded polling with backoff. Every wait has a
//! timeout; a spurious or early return is harmless because callers re-read the message.

use rustix::thread::futex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How to wait for a doorbell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doorbell {
    /// futex(2) wait/wake on the shared word (same kernel on both sides).
    Futex,
    /// Poll the word with exponential backoff up to `max_sleep` (windows across kernels,
    /// such as an ivshmem BAR without interrupts).
    Poll {
        /// Longest sleep between two looks.
        max_sleep: Duration,
    },
}

impl Doorbell {
    /// The default for a window mapped on this machine: futex.
    pub fn detect() -> Doorbell {
        Doorbell::Futex
    }

    /// Wake every waiter on `word` (after it was incremented).
    pub fn wake(self, word: &AtomicU32) {
        if self == Doorbell::Futex {
            // An error here (ENOSYS on an exotic kernel) only costs the waiter its timeout
            // slice; waiters always bound their sleep.
            let _ = futex::wake(word, futex::Flags::empty(), u32::MAX);
        }
    }

    /// Wait until `word != seen`, at most `timeout`. True if it changed.
    pub fn wait(self, word: &AtomicU32, seen: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut sleep = Duration::from_micros(20);
        loop {
            if word.load(Ordering::Acquire) != seen {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let left = deadline - now;
            match self {
                Doorbell::Futex => {
                    let ts = rustix::time::Timespec {
                        tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                        tv_nsec: left.subsec_nanos().into(),
                    };
                    // EAGAIN (already changed), EINTR and ETIMEDOUT all lead back to the check.
                    let _ = futex::wait(word, futex::Flags::empty(), seen, Some(&ts));
                }
                Doorbell::Poll { max_sleep } => {
                    std::thread::sleep(sleep.min(left));
                    sleep = (sleep * 2).min(max_sleep);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wait_returns_false_on_timeout_and_true_when_rung() {
        for bell in [Doorbell::Futex, Doorbell::Poll { max_sleep: Duration::from_millis(1) }] {
            let w = Arc::new(AtomicU32::new(0));
            assert!(!bell.wait(&w, 0, Duration::from_millis(5)));
            assert!(bell.wait(&w, 7, Duration::ZERO), "a value already different returns at once");
            let w2 = Arc::clone(&w);
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                w2.fetch_add(1, Ordering::AcqRel);
                bell.wake(&w2);
            });
            assert!(bell.wait(&w, 0, Duration::from_secs(30)));
            t.join().unwrap();
        }
    }
}
