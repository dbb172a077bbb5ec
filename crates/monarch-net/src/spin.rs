//! Polling a socket for a moment before sleeping on it, shared by the TFTP and HTTP
//! services.
//!
//! A transfer that would sleep until its socket is ready (TFTP: the client's ACK; HTTP: room
//! in the send queue) may instead poll for up to a short budget. It costs the polling core
//! and saves a sleep and a wake-up, and where the client runs on the same machine it keeps
//! the server's kernel work on the server's core. Two limits keep the cost bounded:
//! - `SpinSlots`: at most `max` transfers of a service poll at once ([`default_max_spinning`]:
//!   one less than the cores), so the clients and the rest of the machine keep a core;
//! - `Backoff`: a transfer whose polls keep running out ([`MISSES_BEFORE_BACKING_OFF`] in
//!   a row: its client is slower than the budget) sleeps from then on, polling again only
//!   once in [`PROBE_EVERY`] waits in case the client sped up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Polls in a row that ran out before the socket was ready, after which a transfer stops
/// polling: its client is slower than the budget (a real NIC, firmware, an emulated
/// machine), and polling would only burn the core for nothing.
pub const MISSES_BEFORE_BACKING_OFF: u32 = 8;
/// While backed off, one wait in this many polls again, in case the client sped up.
pub const PROBE_EVERY: u32 = 64;

/// The default number of transfers that may poll at once: one less than the cores (at
/// least one).
pub fn default_max_spinning() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// One service's polling budget and the slots to poll with: at most `max` of its transfers
/// poll at once. Clones share the slots.
#[derive(Debug, Clone)]
pub(crate) struct SpinSlots {
    taken: Arc<AtomicUsize>,
    max: usize,
    spin: Duration,
}

impl SpinSlots {
    /// Slots for `max` transfers at once, each polling for up to `spin` (zero: never).
    pub(crate) fn new(spin: Duration, max: usize) -> SpinSlots {
        SpinSlots { taken: Arc::new(AtomicUsize::new(0)), max, spin }
    }

    /// A slot if fewer than `max` are taken and the budget is not zero; else a slot that
    /// never polls.
    pub(crate) fn take(&self) -> SpinSlot {
        let (max, spin) = (self.max, self.spin);
        let got = !spin.is_zero()
            && self
                .taken
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
                .is_ok();
        SpinSlot { count: got.then(|| Arc::clone(&self.taken)), spin }
    }
}

/// The right to poll, held by at most `max` transfers of one service at once
/// ([`SpinSlots::take`]); given back when dropped.
#[derive(Debug)]
pub(crate) struct SpinSlot {
    count: Option<Arc<AtomicUsize>>,
    spin: Duration,
}

impl SpinSlot {
    /// A slot that never polls.
    pub(crate) fn never() -> SpinSlot {
        SpinSlot { count: None, spin: Duration::ZERO }
    }

    /// How long to poll before each sleep (zero without a slot).
    pub(crate) fn budget(&self) -> Duration {
        if self.count.is_some() { self.spin } else { Duration::ZERO }
    }
}

impl Drop for SpinSlot {
    fn drop(&mut self) {
        if let Some(c) = &self.count {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One transfer's record of whether polling pays: it polls before each wait while its polls
/// find the socket ready, and mostly sleeps once they keep running out.
#[derive(Debug)]
pub(crate) struct Backoff {
    budget: Duration,
    misses: u32,
    waits: u32,
}

impl Backoff {
    /// Poll for up to `budget` before each wait (zero: never).
    pub(crate) fn new(budget: Duration) -> Backoff {
        Backoff { budget, misses: 0, waits: 0 }
    }

    /// How long to poll before this wait: the budget, or zero (sleep at once).
    pub(crate) fn poll_for(&mut self) -> Duration {
        self.waits = self.waits.wrapping_add(1);
        let polls = self.misses < MISSES_BEFORE_BACKING_OFF || self.waits % PROBE_EVERY == 0;
        if polls { self.budget } else { Duration::ZERO }
    }

    /// The poll found the socket ready.
    pub(crate) fn hit(&mut self) {
        self.misses = 0;
    }

    /// The poll ran out first.
    pub(crate) fn miss(&mut self) {
        self.misses = self.misses.saturating_add(1);
    }

    /// Polls in a row that ran out.
    #[cfg(test)]
    pub(crate) fn misses(&self) -> u32 {
        self.misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_max_spinning_transfers_poll_at_once() {
        let spin = Duration::from_micros(100);
        let slots = SpinSlots::new(spin, 1);
        let a = slots.take();
        let b = slots.clone().take();
        assert_eq!((a.budget(), b.budget()), (spin, Duration::ZERO), "clones share the slots");
        drop(b);
        assert_eq!(slots.taken.load(Ordering::Acquire), 1, "a slot that was not taken is not given back");
        drop(a);
        assert_eq!(slots.take().budget(), spin, "the slot is free again");
        assert_eq!(SpinSlots::new(Duration::ZERO, 1).take().budget(), Duration::ZERO);
    }

    #[test]
    fn a_transfer_whose_polls_keep_missing_mostly_sleeps() {
        let spin = Duration::from_micros(50);
        let mut b = Backoff::new(spin);
        for _ in 0..MISSES_BEFORE_BACKING_OFF {
            assert_eq!(b.poll_for(), spin);
            b.miss();
        }
        let polled = (0..PROBE_EVERY * 4).filter(|_| b.poll_for() == spin).count();
        assert_eq!(polled, 4, "backed off, it polls once in {PROBE_EVERY} waits");
        b.hit();
        assert_eq!(b.poll_for(), spin, "a hit brings polling back");
        assert_eq!(Backoff::new(Duration::ZERO).poll_for(), Duration::ZERO);
    }
}
