//! Doorbells: a 32-bit counter in the register page that one side increments and the other
//! waits on. Where both sides share a kernel the wait is a futex (shared, not private: the
//! word lives in a shared mapping); otherwise bounded polling with backoff. Every wait has a
//! timeout; a spurious or early return is harmless because callers re-read the message.
//!
//! The count is the word's low 31 bits. Bit 31 says that a futex waiter sleeps on the word:
//! a waiter sets it before it sleeps, and a ring clears it and makes the `futex` wake call
//! only when it was set. A streamed image rings once per chunk on each side; most of those
//! rings find the peer busy copying, and a wake call is a system call each (measured in
//! `docs/performance.md`).

use rustix::thread::futex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A counting doorbell's count: its low 31 bits.
const COUNT: u32 = 0x7FFF_FFFF;
/// A counting doorbell's sleeper bit: a futex waiter sleeps on the word.
const SLEEPER: u32 = 1 << 31;

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

    /// Ring a counting doorbell: add one to its count (and clear the sleeper bit), and wake
    /// its waiters only if one said it sleeps.
    pub fn ring(self, word: &AtomicU32) {
        let old = word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some((v & COUNT).wrapping_add(1) & COUNT))
            .unwrap_or_else(|v| v);
        if old & SLEEPER != 0 {
            self.wake(word);
        }
    }

    /// The count of a counting doorbell (the sleeper bit left out).
    pub fn count(word: &AtomicU32) -> u32 {
        word.load(Ordering::Acquire) & COUNT
    }

    /// Wait until a counting doorbell's count differs from `seen` (a value [`Self::count`]
    /// returned), at most `timeout`. True if it rang. A futex waiter sets the sleeper bit
    /// before it sleeps, so that [`Self::ring`] knows to wake it.
    pub fn wait_rung(self, word: &AtomicU32, seen: u32, timeout: Duration) -> bool {
        self.wait_until(
            word,
            timeout,
            |v| v & COUNT != seen,
            |v| {
                if v & SLEEPER != 0 {
                    return Some(v);
                }
                // A ring between the look and here fails the exchange: look again.
                word.compare_exchange(v, v | SLEEPER, Ordering::AcqRel, Ordering::Acquire)
                    .ok()
                    .map(|_| v | SLEEPER)
            },
        )
    }

    /// Wake every waiter on `word` (after it was changed); how many were asleep.
    pub fn wake(self, word: &AtomicU32) -> usize {
        if self != Doorbell::Futex {
            return 0;
        }
        // The kernel reads the count as a signed int: u32::MAX would be -1, which wakes one
        // waiter and leaves the others to their timeout slice. i32::MAX is "all".
        // An error here (ENOSYS on an exotic kernel) only costs the waiters their timeout
        // slice; waiters always bound their sleep.
        futex::wake(word, futex::Flags::empty(), i32::MAX.unsigned_abs()).unwrap_or(0)
    }

    /// Wait until `word != seen`, at most `timeout`. True if it changed. (A word that is
    /// not a counting doorbell: the waker calls [`Self::wake`] every time.)
    pub fn wait(self, word: &AtomicU32, seen: u32, timeout: Duration) -> bool {
        self.wait_until(word, timeout, |v| v != seen, Some)
    }

    /// Wait until `changed(word)`, at most `timeout`. Before a futex wait, `arm` turns the
    /// value last looked at into the one to sleep on (`None`: it changed meanwhile, look
    /// again); the futex sleeps while the word holds that value.
    fn wait_until(
        self,
        word: &AtomicU32,
        timeout: Duration,
        changed: impl Fn(u32) -> bool,
        arm: impl Fn(u32) -> Option<u32>,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut sleep = Duration::from_micros(20);
        loop {
            let seen = word.load(Ordering::Acquire);
            if changed(seen) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let left = deadline - now;
            match self {
                Doorbell::Futex => {
                    let Some(seen) = arm(seen) else { continue };
                    let ts = rustix::time::Timespec {
                        tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                        tv_nsec: left.subsec_nanos().into(),
                    };
                    // EAGAIN (already changed), EINTR and ETIMEDOUT all lead back to the check;
                    // so does a ring after `arm`, which changes the word or, seeing a
                    // sleeper's bit, wakes it.
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

    #[test]
    fn a_ring_wakes_a_sleeper_and_no_ring_is_lost() {
        for bell in [Doorbell::Futex, Doorbell::Poll { max_sleep: Duration::from_millis(1) }] {
            let w = Arc::new(AtomicU32::new(0));
            // Nobody sleeps: the ring only counts.
            bell.ring(&w);
            assert_eq!(w.load(Ordering::Acquire), 1);
            assert!(!bell.wait_rung(&w, 1, Duration::from_millis(5)));
            if bell == Doorbell::Futex {
                assert_eq!(w.load(Ordering::Acquire), 1 | SLEEPER, "a futex waiter says it sleeps");
            }
            assert_eq!(Doorbell::count(&w), 1, "the sleeper bit is not part of the count");
            // Many rings from another thread, each awaited: none is lost, none sleeps forever.
            let w2 = Arc::clone(&w);
            let t = std::thread::spawn(move || {
                for _ in 0..2000 {
                    bell.ring(&w2);
                }
            });
            let mut seen = Doorbell::count(&w);
            while seen != 2001 {
                assert!(bell.wait_rung(&w, seen, Duration::from_secs(30)), "a ring was lost at {seen}");
                seen = Doorbell::count(&w);
            }
            t.join().unwrap();
            assert_eq!(w.load(Ordering::Acquire) & SLEEPER, 0, "the last ring cleared the sleeper bit");
        }
    }

    /// Whether thread `tid` of this process is blocked in futex(2) now.
    fn in_futex(tid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
            .is_ok_and(|s| s.split_whitespace().next() == Some(&libc::SYS_futex.to_string()))
    }

    #[test]
    fn one_wake_wakes_every_sleeper() {
        let w = Arc::new(AtomicU32::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let sleepers: Vec<_> = (0..3)
            .map(|_| {
                let (w, tx) = (Arc::clone(&w), tx.clone());
                std::thread::spawn(move || {
                    let _ = tx.send(rustix::thread::gettid().as_raw_nonzero().get());
                    Doorbell::Futex.wait(&w, 0, Duration::from_secs(60))
                })
            })
            .collect();
        let tids: Vec<i32> = (0..3).map(|_| rx.recv().unwrap()).collect();
        let asleep = Instant::now() + Duration::from_secs(30);
        while !tids.iter().all(|t| in_futex(*t)) {
            assert!(
                Instant::now() < asleep,
                "the sleepers never showed in futex(2) (/proc/self/task/*/syscall)"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        w.store(1, Ordering::Release);
        assert_eq!(Doorbell::Futex.wake(&w), 3, "one wake, every sleeper");
        for s in sleepers {
            assert!(s.join().unwrap());
        }
    }

    #[test]
    fn the_count_wraps_within_its_bits() {
        let w = AtomicU32::new(COUNT | SLEEPER);
        Doorbell::Poll { max_sleep: Duration::from_millis(1) }.ring(&w);
        assert_eq!(w.load(Ordering::Acquire), 0);
    }
}
