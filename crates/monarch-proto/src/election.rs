//! Monarch selection and failover, sans-IO.
//!
//! - [`arbitrate`]: who of the candidates becomes monarch. The reference design's rules: a candidate that
//!   did not pass its self-test is deconfigured and never considered; an operator may pin the
//!   monarch (the reference design's Boot Console Handler); otherwise the highest BOOT_ID wins, and among
//!   equal BOOT_IDs the lowest slot.
//! - The **backplane** (the reference design's central bus): a register page every candidate on one
//!   machine maps. Candidates publish their BOOT_ID, slot and self-test result; the winner
//!   *claims* the monarchy with one compare-and-swap on [`BP_CLAIM`], which also bumps the
//!   **epoch**; the monarch increments [`BP_HEARTBEAT`]; serfs wait in rendezvous and watch
//!   it ([`Watchdog`]). A serf that sees the heartbeat stall deconfigures the monarch (a CAS on
//!   its state word), arbitrates again among the rest, and the new winner claims epoch + 1.
//!   Every command a monarch writes into a secondary's window carries its epoch, so a
//!   monarch that was only paused cannot act after it wakes up (see `window::secondary::Fence`).

use crate::window::layout::{Reg, r32, r64};
use std::time::Duration;

/// A candidate's state on the backplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Has not published itself (not started, or not yet).
    Absent,
    /// Passed its self-test: may be monarch.
    Healthy,
    /// Failed its self-test: deconfigured (PDC_CONFIG), never monarch.
    FailedSelfTest,
    /// Was monarch and stopped answering: deconfigured by the serfs that usurped it.
    Deposed,
}

impl Health {
    /// Register code.
    pub fn code(self) -> u32 {
        match self {
            Health::Absent => 0,
            Health::Healthy => 1,
            Health::FailedSelfTest => 2,
            Health::Deposed => 3,
        }
    }
    /// Decode (peer data: unknown codes count as absent, which never wins).
    pub fn from_code(c: u32) -> Health {
        match c {
            1 => Health::Healthy,
            2 => Health::FailedSelfTest,
            3 => Health::Deposed,
            _ => Health::Absent,
        }
    }
    /// Name in events and output.
    pub fn name(self) -> &'static str {
        match self {
            Health::Absent => "absent",
            Health::Healthy => "healthy",
            Health::FailedSelfTest => "failed self-test",
            Health::Deposed => "deposed",
        }
    }
}

/// One candidate, as arbitration sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Its index (backplane entry and command block).
    pub index: usize,
    /// Its slot on the bus.
    pub slot: u32,
    /// Its BOOT_ID (the factory default is 2, per the reference design).
    pub boot_id: u32,
    /// Its state.
    pub health: Health,
}

/// Why the winner won.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The operator pinned it.
    Pinned,
    /// It had the highest BOOT_ID.
    HighestBootId {
        /// That BOOT_ID.
        boot_id: u32,
    },
    /// Several had the highest BOOT_ID; it had the lowest slot among them.
    LowestSlot {
        /// The BOOT_ID they shared.
        boot_id: u32,
        /// How many shared it.
        tied: usize,
    },
}

/// The outcome of arbitration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// Index of the winner.
    pub winner: usize,
    /// Why.
    pub reason: Reason,
    /// The operator pinned a candidate that cannot be monarch (deconfigured or absent): the
    /// rules decided instead.
    pub pin_ignored: Option<usize>,
}

impl Verdict {
    /// A sentence for events and the summary, e.g. "highest BOOT_ID (3)".
    pub fn describe(&self, name: &dyn Fn(usize) -> String) -> String {
        let mut s = match self.reason {
            Reason::Pinned => "pinned by the operator".to_string(),
            Reason::HighestBootId { boot_id } => format!("highest BOOT_ID ({boot_id})"),
            Reason::LowestSlot { boot_id, tied } => {
                format!("lowest slot among the {tied} candidates with the highest BOOT_ID ({boot_id})")
            }
        };
        if let Some(p) = self.pin_ignored {
            s.push_str(&format!("; the pinned {} cannot be monarch", name(p)));
        }
        s
    }
}

/// Arbitrate among `candidates` (monarch election). `None` when no candidate may be monarch.
pub fn arbitrate(candidates: &[Candidate], pinned: Option<usize>) -> Option<Verdict> {
    let eligible: Vec<&Candidate> = candidates.iter().filter(|c| c.health == Health::Healthy).collect();
    let pin_ignored = pinned.filter(|p| !eligible.iter().any(|c| c.index == *p));
    if let Some(p) = pinned
        && pin_ignored.is_none()
    {
        return Some(Verdict { winner: p, reason: Reason::Pinned, pin_ignored: None });
    }
    let top = eligible.iter().map(|c| c.boot_id).max()?;
    let tied: Vec<&&Candidate> = eligible.iter().filter(|c| c.boot_id == top).collect();
    // Slots are unique on a bus; the index breaks a tie only in a malformed table.
    let winner = tied.iter().min_by_key(|c| (c.slot, c.index))?;
    let reason = if tied.len() == 1 {
        Reason::HighestBootId { boot_id: top }
    } else {
        Reason::LowestSlot { boot_id: top, tied: tied.len() }
    };
    Some(Verdict { winner: winner.index, reason, pin_ignored })
}

/// A serf's view of the monarch's heartbeat: stalled when the counter has not moved for
/// `timeout`.
///
/// With [`Watchdog::with_max_gap`], silence is counted only while the serf itself was
/// watching: two observations further apart than `max_gap` (the serf was not scheduled —
/// a loaded host starves everyone at once) count as `max_gap`. A monarch whose heartbeat
/// thread was starved by the same stall beats again as soon as the host recovers, and
/// keeps its mandate; a dead monarch is still deposed, a little later if the serf keeps
/// being starved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Watchdog {
    timeout: Duration,
    max_gap: Duration,
    /// The beat last seen, and the time of the last observation.
    last: Option<(u64, Duration)>,
    /// Silence counted since that beat.
    silent: Duration,
}

impl Watchdog {
    /// A watchdog that declares a stall after `timeout` without a beat.
    pub fn new(timeout: Duration) -> Watchdog {
        Watchdog { timeout, max_gap: Duration::MAX, last: None, silent: Duration::ZERO }
    }

    /// Count at most `max_gap` of silence between two observations.
    pub fn with_max_gap(self, max_gap: Duration) -> Watchdog {
        Watchdog { max_gap, ..self }
    }

    /// Feed the heartbeat counter read at `now`; true when the monarch has stalled.
    pub fn observe(&mut self, beat: u64, now: Duration) -> bool {
        match self.last {
            Some((b, prev)) if b == beat => {
                self.silent = self.silent.saturating_add(now.saturating_sub(prev).min(self.max_gap));
                self.last = Some((b, now));
                self.silent >= self.timeout
            }
            _ => {
                self.last = Some((beat, now));
                self.silent = Duration::ZERO;
                false
            }
        }
    }

    /// The silence counted so far, up to `now` (as [`Watchdog::observe`] would count it).
    pub fn silent_for(&self, now: Duration) -> Duration {
        match self.last {
            Some((_, prev)) => self.silent.saturating_add(now.saturating_sub(prev).min(self.max_gap)),
            None => Duration::ZERO,
        }
    }

    /// Forget the last beat (a new monarch took over: give it a full timeout).
    pub fn reset(&mut self) {
        self.last = None;
        self.silent = Duration::ZERO;
    }
}

/// The claim word: who is monarch, in which epoch, and whether it finished the boot.
/// `epoch << 32 | flags << 16 | (holder + 1)`; 0 = nobody yet.
pub fn claim_word(epoch: u32, holder: usize) -> u64 {
    (u64::from(epoch) << 32) | ((holder as u64 + 1) & HOLDER_MASK)
}

const HOLDER_MASK: u64 = 0xffff;
/// Claim flag: the holder finished the boot.
const DONE: u64 = 1 << 16;
/// Claim flag, with [`DONE`]: some required secondary failed.
const FAILED: u64 = 1 << 17;

/// Decode the claim word: `(epoch, holder)`, or `None` if nobody claimed (or garbage).
pub fn decode_claim(word: u64) -> Option<(u32, usize)> {
    let epoch = u32::try_from(word >> 32).ok()?;
    let holder = usize::try_from(word & HOLDER_MASK).ok()?.checked_sub(1)?;
    (epoch > 0 && holder < MAX_CANDIDATES).then_some((epoch, holder))
}

/// The claim word of `claim` once its holder finished the boot (`ok`: every required
/// secondary booted). A monarch marks the boot done by compare-and-swap from its own claim
/// word to this one, so a deposed monarch that wakes up cannot mark a boot it no longer owns.
pub fn done_word(claim: u64, ok: bool) -> u64 {
    claim | DONE | if ok { 0 } else { FAILED }
}

/// `(epoch, ok)` of a finished boot, from the claim word; `None` while it runs.
pub fn decode_done(word: u64) -> Option<(u32, bool)> {
    let (epoch, _) = decode_claim(word)?;
    (word & DONE != 0).then_some((epoch, word & FAILED == 0))
}

// --- The backplane register page --------------------------------------------------------

/// Candidates a backplane holds (one command block each in every window).
pub const MAX_CANDIDATES: usize = crate::window::layout::CMD_BLOCKS;
/// `b"MNRCHBPL"` as a little-endian u64.
pub const BP_MAGIC_VALUE: u64 = u64::from_le_bytes(*b"MNRCHBPL");
/// Backplane layout version (2: the boot's end is a flag of the claim word).
pub const BP_VERSION_VALUE: u32 = 2;

/// Magic, written last by whoever creates the backplane.
pub const BP_MAGIC: Reg = r64(0x000, "bp.magic");
/// Layout version.
pub const BP_VERSION: Reg = r32(0x008, "bp.version");
/// Number of candidates in the chassis.
pub const BP_CANDIDATES: Reg = r32(0x00C, "bp.candidates");
/// 1 + index of the candidate the operator pinned; 0 for none.
pub const BP_PINNED: Reg = r32(0x010, "bp.pinned");
/// The claim word ([`claim_word`], [`done_word`]): changed only by compare-and-swap.
pub const BP_CLAIM: Reg = r64(0x040, "bp.claim");
/// Incremented by the monarch while it lives.
pub const BP_HEARTBEAT: Reg = r64(0x048, "bp.heartbeat");

/// The registers of candidate `k` on the backplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CandidateRegs {
    /// [`Health`] code; written by the candidate, or by the serfs (CAS) when they depose it.
    pub state: Reg,
    /// Its BOOT_ID.
    pub boot_id: Reg,
    /// Its slot.
    pub slot: Reg,
    /// Its process id (for the operator and the tests).
    pub pid: Reg,
}

/// Backplane entry of candidate `k` (wraps at [`MAX_CANDIDATES`]).
pub const fn candidate(k: usize) -> CandidateRegs {
    let b = 0x100 + (k % MAX_CANDIDATES) * 0x40;
    CandidateRegs {
        state: r32(b, "bp.candidate.state"),
        boot_id: r32(b + 4, "bp.candidate.boot_id"),
        slot: r32(b + 8, "bp.candidate.slot"),
        pid: r64(b + 16, "bp.candidate.pid"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(index: usize, slot: u32, boot_id: u32, health: Health) -> Candidate {
        Candidate { index, slot, boot_id, health }
    }
    use Health::*;

    /// The reference design's rules, one row each.
    #[test]
    fn arbitration_table() {
        struct Row {
            what: &'static str,
            cands: Vec<Candidate>,
            pinned: Option<usize>,
            winner: Option<usize>,
            reason: Option<Reason>,
        }
        let rows = vec![
            Row {
                what: "highest BOOT_ID wins whatever its slot",
                cands: vec![c(0, 0, 2, Healthy), c(1, 1, 5, Healthy), c(2, 2, 3, Healthy)],
                pinned: None,
                winner: Some(1),
                reason: Some(Reason::HighestBootId { boot_id: 5 }),
            },
            Row {
                what: "factory default: every BOOT_ID 2, the lowest slot wins (the reference design's figure)",
                cands: vec![
                    c(0, 3, 2, Healthy),
                    c(1, 0, 2, Healthy),
                    c(2, 1, 2, Healthy),
                    c(3, 2, 2, Healthy),
                ],
                pinned: None,
                winner: Some(1),
                reason: Some(Reason::LowestSlot { boot_id: 2, tied: 4 }),
            },
            Row {
                what: "a tie only among the highest BOOT_IDs counts",
                cands: vec![c(0, 0, 1, Healthy), c(1, 5, 4, Healthy), c(2, 4, 4, Healthy)],
                pinned: None,
                winner: Some(2),
                reason: Some(Reason::LowestSlot { boot_id: 4, tied: 2 }),
            },
            Row {
                what: "a candidate that failed self-test is deconfigured even with the highest BOOT_ID",
                cands: vec![c(0, 0, 9, FailedSelfTest), c(1, 1, 2, Healthy)],
                pinned: None,
                winner: Some(1),
                reason: Some(Reason::HighestBootId { boot_id: 2 }),
            },
            Row {
                what: "a deposed monarch never wins again",
                cands: vec![c(0, 0, 9, Deposed), c(1, 1, 2, Healthy), c(2, 2, 2, Healthy)],
                pinned: None,
                winner: Some(1),
                reason: Some(Reason::LowestSlot { boot_id: 2, tied: 2 }),
            },
            Row {
                what: "an absent candidate never wins",
                cands: vec![c(0, 0, 9, Absent), c(1, 1, 2, Healthy)],
                pinned: None,
                winner: Some(1),
                reason: Some(Reason::HighestBootId { boot_id: 2 }),
            },
            Row {
                what: "the operator's pin beats BOOT_ID and slot",
                cands: vec![c(0, 0, 9, Healthy), c(1, 1, 2, Healthy)],
                pinned: Some(1),
                winner: Some(1),
                reason: Some(Reason::Pinned),
            },
            Row {
                what: "a pinned candidate that failed self-test is ignored: the rules decide",
                cands: vec![c(0, 0, 2, Healthy), c(1, 1, 9, FailedSelfTest)],
                pinned: Some(1),
                winner: Some(0),
                reason: Some(Reason::HighestBootId { boot_id: 2 }),
            },
            Row {
                what: "nobody healthy: no monarch",
                cands: vec![c(0, 0, 2, FailedSelfTest), c(1, 1, 2, Deposed), c(2, 2, 2, Absent)],
                pinned: Some(0),
                winner: None,
                reason: None,
            },
            Row {
                what: "a single healthy candidate wins",
                cands: vec![c(0, 7, 0, Healthy)],
                pinned: None,
                winner: Some(0),
                reason: Some(Reason::HighestBootId { boot_id: 0 }),
            },
        ];
        for r in rows {
            let v = arbitrate(&r.cands, r.pinned);
            assert_eq!(v.map(|v| v.winner), r.winner, "{}", r.what);
            assert_eq!(v.map(|v| v.reason), r.reason, "{}", r.what);
        }
        let v = arbitrate(&[c(0, 0, 2, Healthy), c(1, 1, 9, FailedSelfTest)], Some(1)).unwrap();
        assert_eq!(v.pin_ignored, Some(1));
        let name = |i: usize| format!("mgmt{i}");
        assert_eq!(v.describe(&name), "highest BOOT_ID (2); the pinned mgmt1 cannot be monarch");
    }

    fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
        let health =
            prop_oneof![Just(Healthy), Just(Healthy), Just(FailedSelfTest), Just(Deposed), Just(Absent)];
        proptest::collection::vec((0u32..4, health), 1..MAX_CANDIDATES).prop_flat_map(|v| {
            // Unique slots, as on a real bus, in any order.
            let slots: Vec<u32> = (0..u32::try_from(v.len()).unwrap()).map(|s| s * 3).collect();
            Just(slots).prop_shuffle().prop_map(move |slots| {
                v.iter()
                    .zip(slots)
                    .enumerate()
                    .map(|(i, ((boot_id, health), slot))| c(i, slot, *boot_id, *health))
                    .collect()
            })
        })
    }

    proptest! {
        /// Exactly one winner when anyone is healthy; it is healthy; no healthy candidate
        /// beats it by the rules; and every candidate computing the verdict from the same
        /// table (in any order) names the same winner.
        #[test]
        fn one_healthy_winner(cands in arb_candidates(), pin in proptest::option::of(0usize..MAX_CANDIDATES), rot in 0usize..8) {
            let v = arbitrate(&cands, pin);
            let healthy: Vec<&Candidate> = cands.iter().filter(|c| c.health == Healthy).collect();
            prop_assert_eq!(v.is_some(), !healthy.is_empty());
            if let Some(v) = v {
                let w = cands.iter().find(|c| c.index == v.winner).unwrap();
                prop_assert_eq!(w.health, Healthy, "a deconfigured candidate won");
                if v.reason != Reason::Pinned {
                    for h in &healthy {
                        prop_assert!((h.boot_id, std::cmp::Reverse(h.slot)) <= (w.boot_id, std::cmp::Reverse(w.slot)));
                    }
                }
                let mut rotated = cands.clone();
                let k = rot % rotated.len();
                rotated.rotate_left(k);
                prop_assert_eq!(arbitrate(&rotated, pin).map(|v| v.winner), Some(v.winner));
            }
        }

        /// Deconfiguring the winner (as serfs do on failover) always yields another winner
        /// or none, never the deposed one.
        #[test]
        fn a_deposed_winner_never_wins_again(cands in arb_candidates()) {
            let mut cands = cands;
            let mut seen = Vec::new();
            while let Some(v) = arbitrate(&cands, None) {
                prop_assert!(!seen.contains(&v.winner));
                seen.push(v.winner);
                cands[v.winner].health = Deposed;
            }
            prop_assert!(cands.iter().all(|c| c.health != Healthy));
        }

        #[test]
        fn claim_and_done_words_round_trip(epoch in 1u32.., holder in 0usize..MAX_CANDIDATES, ok in any::<bool>()) {
            let claim = claim_word(epoch, holder);
            prop_assert_eq!(decode_claim(claim), Some((epoch, holder)));
            prop_assert_eq!(decode_done(claim), None, "a fresh claim is not done");
            prop_assert_eq!(decode_done(done_word(claim, ok)), Some((epoch, ok)));
            prop_assert_eq!(decode_claim(done_word(claim, ok)), Some((epoch, holder)), "done keeps the holder");
        }
    }

    #[test]
    fn claim_word_garbage_is_nobody() {
        assert_eq!(decode_claim(0), None);
        assert_eq!(decode_claim(5), None, "epoch 0 is never claimed");
        assert_eq!(decode_claim(claim_word(1, 0) + 100), None, "holder out of range");
        assert_eq!(decode_done(0), None);
        assert_eq!(decode_done(1 << 16), None, "done without a claim is nobody's");
    }

    #[test]
    fn watchdog_declares_a_stall_only_after_the_timeout_without_a_beat() {
        let ms = Duration::from_millis;
        let mut w = Watchdog::new(ms(100));
        assert!(!w.observe(1, ms(0)));
        assert!(!w.observe(1, ms(99)));
        assert!(!w.observe(2, ms(150)), "a beat restarts the count");
        assert!(!w.observe(2, ms(249)));
        assert!(w.observe(2, ms(250)));
        w.reset();
        assert!(!w.observe(2, ms(251)));
    }

    #[test]
    fn a_starved_watchdog_counts_only_the_silence_it_watched() {
        let ms = Duration::from_millis;
        let mut w = Watchdog::new(ms(500)).with_max_gap(ms(100));
        assert!(!w.observe(7, ms(0)));
        // The serf slept 800 ms (the host stalled): that is 100 ms of watched silence.
        assert!(!w.observe(7, ms(800)));
        // Watching every 10 ms again, the monarch that beats as the host recovers is fine.
        assert!(!w.observe(7, ms(810)));
        assert!(!w.observe(8, ms(820)));
        // A monarch that never beats again is deposed after 500 ms of watching.
        let mut t = 820;
        while !w.observe(8, ms(t)) {
            t += 10;
            assert!(t < 2000, "never declared the stall");
        }
        assert_eq!(t, 1320);
    }

    proptest::proptest! {
        /// However the serf is scheduled, a stall needs `timeout` of real silence, and is
        /// declared at the latest `timeout / max_gap` observations after the last beat.
        #[test]
        fn watchdog_stalls_are_never_early_and_never_lost(gaps in proptest::collection::vec(1u64..400, 1..64)) {
            let ms = Duration::from_millis;
            let mut w = Watchdog::new(ms(500)).with_max_gap(ms(100));
            let mut now = 0;
            proptest::prop_assert!(!w.observe(1, ms(0)));
            for (k, g) in gaps.iter().enumerate() {
                now += g;
                let stalled = w.observe(1, ms(now));
                if now < 500 {
                    proptest::prop_assert!(!stalled, "stall after {now} ms of silence");
                }
                if k + 1 >= 5 && gaps[..=k].iter().all(|g| *g >= 100) {
                    proptest::prop_assert!(stalled, "no stall after {} observations of 100 ms or more", k + 1);
                }
                if stalled {
                    break;
                }
            }
        }
    }

    #[test]
    fn backplane_registers_are_aligned_and_disjoint() {
        let mut regs = vec![BP_MAGIC, BP_VERSION, BP_CANDIDATES, BP_PINNED, BP_CLAIM, BP_HEARTBEAT];
        for k in 0..MAX_CANDIDATES {
            let c = candidate(k);
            regs.extend([c.state, c.boot_id, c.slot, c.pid]);
        }
        let mut used = [false; crate::window::layout::REGS_SIZE];
        for r in regs {
            let w = if r.width == crate::window::layout::Width::W32 { 4 } else { 8 };
            assert_eq!(r.offset % w, 0, "{}", r.name);
            for b in &mut used[r.offset..r.offset + w] {
                assert!(!*b, "{} overlaps", r.name);
                *b = true;
            }
        }
    }
}
