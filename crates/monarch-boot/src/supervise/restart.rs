//! Restart limits, like systemd's `StartLimitBurst=`/`StartLimitIntervalSec=` with a
//! doubling back-off: at most `max` restarts within any `window`; the n-th restart in the
//! window waits `backoff × 2^(n−1)` (at most [`MAX_BACKOFF`]). Pure: the caller gives the
//! time.
use std::collections::VecDeque;
use std::time::Duration;

/// The longest back-off, however many restarts came before.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One secondary's restart budget.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    max: u32,
    window: Duration,
    backoff: Duration,
    /// When the restarts still inside the window happened.
    recent: VecDeque<Duration>,
}

/// What to do about a secondary that was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart it after `after`; it is the `nth` restart within the window.
    Restart {
        /// Restarts within the window, this one included.
        nth: u32,
        /// Back-off before the restart.
        after: Duration,
    },
    /// The limit is reached: leave it failed.
    GiveUp {
        /// Restarts within the window already.
        restarts: u32,
    },
}

impl RestartBudget {
    /// A budget of `max` restarts within `window`, the first after `backoff`.
    pub fn new(max: u32, window: Duration, backoff: Duration) -> RestartBudget {
        RestartBudget { max, window, backoff, recent: VecDeque::new() }
    }

    /// The secondary was lost at `now` (any monotonic clock): restart it, or give up.
    pub fn on_loss(&mut self, now: Duration) -> Decision {
        while self.recent.front().is_some_and(|t| now.saturating_sub(*t) >= self.window) {
            self.recent.pop_front();
        }
        let n = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        if n >= self.max {
            return Decision::GiveUp { restarts: n };
        }
        self.recent.push_back(now);
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        let after = self.backoff.checked_mul(factor).unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF);
        Decision::Restart { nth: n + 1, after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn restarts_back_off_double_and_stop_at_the_limit_within_the_window() {
        let mut b = RestartBudget::new(3, s(60), Duration::from_millis(100));
        assert_eq!(b.on_loss(s(0)), Decision::Restart { nth: 1, after: Duration::from_millis(100) });
        assert_eq!(b.on_loss(s(1)), Decision::Restart { nth: 2, after: Duration::from_millis(200) });
        assert_eq!(b.on_loss(s(2)), Decision::Restart { nth: 3, after: Duration::from_millis(400) });
        assert_eq!(b.on_loss(s(3)), Decision::GiveUp { restarts: 3 });
        // Once the first restarts leave the window (those at 0 s and 1 s, by 61 s), there is
        // budget again, and the back-off counts only the restarts still inside it.
        assert_eq!(b.on_loss(s(61)), Decision::Restart { nth: 2, after: Duration::from_millis(200) });
    }

    #[test]
    fn no_restarts_allowed_and_a_huge_backoff_is_capped() {
        let mut b = RestartBudget::new(0, s(60), s(1));
        assert_eq!(b.on_loss(s(0)), Decision::GiveUp { restarts: 0 });
        let mut b = RestartBudget::new(100, s(3600), s(20));
        b.on_loss(s(0));
        assert_eq!(b.on_loss(s(1)), Decision::Restart { nth: 2, after: MAX_BACKOFF });
        for i in 2..60 {
            assert!(matches!(b.on_loss(s(i)), Decision::Restart { after, .. } if after == MAX_BACKOFF));
        }
    }
}
