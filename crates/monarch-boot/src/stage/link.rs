//! A switch's link: the secondaries behind one switch share it, so they take turns for what
//! travels over it: each secondary's copy and verification, in priority order. What does not
//! touch the link runs in parallel with the others' turns: retrieving the image, setting up
//! the window and starting the agent, and, once verified, the handoff.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The turns of the secondaries behind one switch, in the plan's order.
#[derive(Debug)]
pub struct Link {
    /// Which members are done with the link (took their turn, or gave it up).
    done: Mutex<Vec<bool>>,
    changed: Condvar,
}

impl Link {
    /// A link shared by `members` secondaries.
    pub fn new(members: usize) -> Link {
        Link { done: Mutex::new(vec![false; members]), changed: Condvar::new() }
    }

    /// Member `i`'s turn: wait until every member before it is done with the link. Returns
    /// how long it waited.
    fn wait(&self, i: usize) -> Duration {
        let t = Instant::now();
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        while done.iter().take(i).any(|d| !d) {
            done = self.changed.wait(done).unwrap_or_else(PoisonError::into_inner);
        }
        t.elapsed()
    }

    /// Member `i` is done with the link (its turn is over, or it never needs one).
    fn release(&self, i: usize) {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = done.get_mut(i) {
            *d = true;
        }
        self.changed.notify_all();
    }
}

/// One secondary's place on a switch's link. Dropping it gives the turn up, so a stage that
/// ends early (failed, interrupted) never holds up the secondaries after it.
#[derive(Debug)]
pub struct Turn<'a> {
    link: &'a Link,
    index: usize,
    state: Mutex<TurnState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TurnState {
    Waiting,
    Holding,
    Done,
}

impl<'a> Turn<'a> {
    /// Member `index` of `link`.
    pub fn new(link: &'a Link, index: usize) -> Turn<'a> {
        Turn { link, index, state: Mutex::new(TurnState::Waiting) }
    }

    /// Take the link (once; again is a no-op): wait for the members before this one.
    /// Returns how long it waited.
    pub fn take(&self) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *s != TurnState::Waiting {
            return Duration::ZERO;
        }
        let waited = self.link.wait(self.index);
        *s = TurnState::Holding;
        waited
    }

    /// Let the link go to the next member (idempotent).
    pub fn release(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *s != TurnState::Done {
            *s = TurnState::Done;
            self.link.release(self.index);
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn members_hold_the_link_in_order_and_a_member_that_gives_up_does_not_block_the_rest() {
        let link = Link::new(4);
        let order = Mutex::new(Vec::new());
        let inside = AtomicUsize::new(0);
        std::thread::scope(|s| {
            // Started in reverse order: the turns still go 0, 1, 3 (2 gives up without one).
            for i in (0..4).rev() {
                let (link, order, inside) = (&link, &order, &inside);
                s.spawn(move || {
                    let turn = Turn::new(link, i);
                    if i == 2 {
                        return; // dropped: given up
                    }
                    turn.take();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two members on the link at once");
                    order.lock().unwrap().push(i);
                    std::thread::sleep(Duration::from_millis(5));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    turn.release();
                    turn.release(); // idempotent
                });
            }
        });
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 3]);
    }
}
