//! Exhaustive model check of the barrier protocol.
//!
//! The real machines ([`Arrive`], [`Poll`], [`Decide`], [`Abort`]) run against one
//! [`MemBlock`], one word access per step, and a depth-first search visits every
//! interleaving of: each participant's steps, its death (at any step before its arrival is
//! complete, or only before it starts), the deadline passing (at any step), an outside abort
//! (optional), the owner's steps, and the futex: a waiter goes to sleep only if the state word
//! still holds what it read (the atomic check of `FUTEX_WAIT`), and wakes when someone who
//! changed the word wakes the waiters. In every reachable state:
//! - nobody is released before every participant the owner did not exclude arrived;
//! - no participant is both excluded and released; the owner's excluded set, every released
//!   participant's, and the set of those told "excluded" agree;
//! - under [`Policy::Abort`] nobody is released unless nobody was missing; once anyone sees
//!   "aborted", nobody is released;
//! - whom the owner reports missing includes everyone who never arrived and nobody who had
//!   arrived when it closed the barrier (one who arrived while it decided may go either way,
//!   and is then told consistently);
//! - in a final state (nothing can move), every live participant and the owner finished.
//!
//! The owner is either no participant (the monarch at a global barrier) or participant 0
//! (a head at its cluster's local barrier: it arrives, then waits and decides); it does not
//! die: if the owner dies the supervisor stops the whole boot. The model stores words in a
//! [`MemBlock`], sequentially consistent per word, which is what the drivers' `SeqCst`
//! atomics give.

use super::{Abort, Arrive, Decide, Header, MemBlock, OFF_ARRIVALS, OFF_STATE, Outcome, Policy, Poll, Words};
use std::collections::HashSet;

const DEADLINE: u64 = 10;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Part {
    Arriving(Arrive),
    /// Just moved the state word to a final one: wake the waiters (a step of its own).
    Waking,
    Looking(Poll),
    /// About to `FUTEX_WAIT` on the state word holding `seen`.
    Sleep(u32),
    /// In `FUTEX_WAIT` since the wake count was `wakes`.
    Sleeping {
        seen: u32,
        wakes: u32,
    },
    Done(Outcome),
    Dead,
    /// Participant 0 when the owner is it (the owner's actor plays it).
    Owner,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Owner {
    /// The owner as participant 0 arrives first.
    Arriving(Arrive),
    /// Its arrival released the barrier: wake the waiters.
    WakingArrived,
    Looking(Poll),
    Sleep(u32),
    Sleeping {
        seen: u32,
        wakes: u32,
    },
    Deciding(Decide),
    Waking(Outcome),
    Done(Outcome),
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Aborter {
    Idle,
    Aborting(Abort),
    Waking,
    Done,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct World {
    mem: MemBlock,
    /// Futex wake calls on the state word so far.
    wakes: u32,
    past: bool,
    parts: Vec<Part>,
    owner: Owner,
    aborter: Aborter,
    deaths_left: u32,
    /// The owner's participant number, when it is one.
    owner_me: Option<u16>,
    /// The arrival bits when the owner's decision began (its first step).
    arrived_at_close: Option<u64>,
    /// The owner's decision, when it made one (not when it found the barrier decided).
    decision: Option<Outcome>,
}

/// Where a participant may die.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deaths {
    /// Only before its first step: it never arrives.
    BeforeArriving,
    /// At any step of its arrival, also after it released the barrier but before it woke
    /// anyone. Waiters then rely on the drivers' bounded sleep slices (`slices`).
    Anywhere,
}

/// Knobs of one model run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    pub participants: u16,
    pub policy: Policy,
    pub deaths: u32,
    pub where_deaths: Deaths,
    /// Sleepers also wake on their own when the state word changed (the drivers' bounded
    /// sleep slices); without it, only a wake call wakes them, so a lost wake is a deadlock.
    pub slices: bool,
    /// Someone outside may abort at any step.
    pub aborter: bool,
    /// The owner is participant 0 (a cluster's head at its local barrier): it arrives, then
    /// waits and decides.
    pub owner_participates: bool,
    /// Mutation for the checker's self-test: the last arrival does not wake anyone.
    pub forget_wake: bool,
}

impl World {
    fn now(&self) -> u64 {
        if self.past { DEADLINE } else { 0 }
    }

    fn state(&self) -> u32 {
        self.mem.load32(OFF_STATE)
    }

    fn successors(&self, h: &Header, cfg: &Config) -> Vec<World> {
        let mut out = Vec::new();
        if !self.past {
            let mut w = self.clone();
            w.past = true;
            out.push(w);
        }
        for i in 0..self.parts.len() {
            out.extend(self.step_part(i, h, cfg));
        }
        out.extend(self.step_owner(h));
        if let Some(w) = self.step_aborter() {
            out.push(w);
        }
        out
    }

    fn step_part(&self, i: usize, h: &Header, cfg: &Config) -> Vec<World> {
        let me = i as u16;
        let mut out = Vec::new();
        let mut w = self.clone();
        match &mut w.parts[i] {
            Part::Arriving(a) => {
                let fresh = *a == Arrive::new(h, me);
                if self.deaths_left > 0 && (fresh || cfg.where_deaths == Deaths::Anywhere) {
                    let mut d = self.clone();
                    d.deaths_left -= 1;
                    d.parts[i] = Part::Dead;
                    out.push(d);
                }
                if let Some(r) = a.step(&w.mem) {
                    let wake = r.wake && !cfg.forget_wake;
                    w.parts[i] =
                        if wake { Part::Waking } else { Part::Looking(Poll::new(h, Some(me), w.now())) };
                }
            }
            Part::Waking => {
                if self.deaths_left > 0 && cfg.where_deaths == Deaths::Anywhere {
                    let mut d = self.clone();
                    d.deaths_left -= 1;
                    d.parts[i] = Part::Dead;
                    out.push(d);
                }
                w.wakes += 1;
                w.parts[i] = Part::Looking(Poll::new(h, Some(me), w.now()));
            }
            Part::Looking(p) => {
                if let Some(o) = p.step(&w.mem) {
                    w.parts[i] = match o {
                        Outcome::Waiting { seen } | Outcome::TimedOut { seen, .. } => Part::Sleep(seen),
                        o => Part::Done(o),
                    };
                }
            }
            Part::Sleep(seen) => {
                let seen = *seen;
                w.parts[i] = if w.state() == seen {
                    Part::Sleeping { seen, wakes: w.wakes }
                } else {
                    Part::Looking(Poll::new(h, Some(me), w.now()))
                };
            }
            Part::Sleeping { seen, wakes } => {
                let changed = self.state() != *seen;
                if !(changed && (self.wakes > *wakes || cfg.slices)) {
                    return out;
                }
                w.parts[i] = Part::Looking(Poll::new(h, Some(me), w.now()));
            }
            Part::Done(_) | Part::Dead | Part::Owner => return out,
        }
        out.push(w);
        out
    }

    fn step_owner(&self, h: &Header) -> Option<World> {
        let mut w = self.clone();
        let me = self.owner_me;
        match &mut w.owner {
            Owner::Arriving(a) => {
                if let Some(r) = a.step(&w.mem) {
                    w.owner =
                        if r.wake { Owner::WakingArrived } else { Owner::Looking(Poll::new(h, me, w.now())) };
                }
            }
            Owner::WakingArrived => {
                w.wakes += 1;
                w.owner = Owner::Looking(Poll::new(h, me, w.now()));
            }
            Owner::Looking(p) => match p.step(&w.mem) {
                None => {}
                Some(Outcome::Waiting { seen }) => w.owner = Owner::Sleep(seen),
                Some(Outcome::TimedOut { .. }) => {
                    w.arrived_at_close = Some(w.mem.load64(OFF_ARRIVALS));
                    w.owner = Owner::Deciding(Decide::new(h));
                }
                Some(o) => w.owner = Owner::Done(o),
            },
            Owner::Sleep(seen) => {
                let seen = *seen;
                w.owner = if w.state() == seen {
                    Owner::Sleeping { seen, wakes: w.wakes }
                } else {
                    Owner::Looking(Poll::new(h, me, w.now()))
                };
            }
            Owner::Sleeping { seen, wakes } => {
                // The owner's wait also ends at the deadline.
                if !(self.past || (self.state() != *seen && self.wakes > *wakes)) {
                    return None;
                }
                w.owner = Owner::Looking(Poll::new(h, me, w.now()));
            }
            Owner::Deciding(d) => {
                if let Some(dec) = d.step(&w.mem) {
                    if dec.wake {
                        w.decision = Some(dec.outcome.clone());
                    }
                    w.owner = if dec.wake { Owner::Waking(dec.outcome) } else { Owner::Done(dec.outcome) };
                }
            }
            Owner::Waking(o) => {
                w.wakes += 1;
                w.owner = Owner::Done(o.clone());
            }
            Owner::Done(_) => return None,
        }
        Some(w)
    }

    fn step_aborter(&self) -> Option<World> {
        let mut w = self.clone();
        match &mut w.aborter {
            Aborter::Idle => return None,
            Aborter::Aborting(a) => {
                if let Some((_, wake)) = a.step(&w.mem) {
                    w.aborter = if wake { Aborter::Waking } else { Aborter::Done };
                }
            }
            Aborter::Waking => {
                w.wakes += 1;
                w.aborter = Aborter::Done;
            }
            Aborter::Done => return None,
        }
        Some(w)
    }

    fn check(&self, h: &Header, cfg: &Config, terminal: bool) {
        let arrived = self.mem.load64(OFF_ARRIVALS);
        let n = usize::from(h.participants);
        let mut released: Vec<(usize, &Vec<u16>)> = (0..n)
            .filter_map(|i| match &self.parts[i] {
                Part::Done(Outcome::Released { excluded }) => Some((i, excluded)),
                _ => None,
            })
            .collect();
        if let (Some(me), Owner::Done(o)) = (self.owner_me, &self.owner) {
            assert!(*o != Outcome::Excluded, "the owner excluded itself");
            if let Outcome::Released { excluded } = o {
                released.push((usize::from(me), excluded));
            }
        }
        let excluded_told: Vec<u16> =
            (0..n).filter(|i| self.parts[*i] == Part::Done(Outcome::Excluded)).map(|i| i as u16).collect();
        let aborted_seen = self.parts.iter().any(|p| matches!(p, Part::Done(Outcome::Aborted { .. })))
            || matches!(self.owner, Owner::Done(Outcome::Aborted { .. }));
        for (i, excluded) in &released {
            assert!(!excluded.contains(&(*i as u16)), "participant {i} released though excluded");
            for j in 0..h.participants {
                assert!(
                    excluded.contains(&j) || arrived >> j & 1 == 1,
                    "participant {i} released before {j} (not excluded) arrived: {self:?}"
                );
            }
            if cfg.policy == Policy::Abort {
                assert!(excluded.is_empty(), "released with {excluded:?} excluded under Abort");
            }
            assert!(!aborted_seen, "released and aborted in one run: {self:?}");
            if let Some(Outcome::Released { excluded: owners }) = &self.decision {
                assert_eq!(*excluded, owners, "released participants disagree with the owner");
            }
            for e in &excluded_told {
                assert!(excluded.contains(e), "{e} told excluded, not in {excluded:?}");
            }
        }
        if let Some(Outcome::Released { excluded: missing } | Outcome::Aborted { missing, .. }) =
            &self.decision
        {
            let before = self.arrived_at_close.unwrap_or(0);
            for j in 0..h.participants {
                let never = self.parts[usize::from(j)] == Part::Dead && arrived >> j & 1 == 0;
                if never {
                    assert!(missing.contains(&j), "{j} never arrived, not reported missing: {missing:?}");
                }
                if before >> j & 1 == 1 {
                    assert!(!missing.contains(&j), "{j} arrived before the decision, reported missing");
                }
            }
            if let Outcome::Released { excluded } = self.decision.as_ref().unwrap_or(&Outcome::Excluded) {
                for e in excluded {
                    assert!(
                        !matches!(self.parts[usize::from(*e)], Part::Done(Outcome::Released { .. })),
                        "{e} excluded by the owner but released"
                    );
                }
            }
        }
        if terminal {
            for (i, p) in self.parts.iter().enumerate() {
                assert!(
                    matches!(p, Part::Done(_) | Part::Dead | Part::Owner),
                    "participant {i} never finished: {self:?}"
                );
            }
            assert!(matches!(self.owner, Owner::Done(_)), "the owner never finished: {self:?}");
        }
    }
}

/// Explore every interleaving; returns the number of distinct states.
pub(crate) fn explore(cfg: Config) -> usize {
    let h =
        Header { participants: cfg.participants, generation: 1, policy: cfg.policy, deadline_ns: DEADLINE };
    let mem = MemBlock::new();
    h.write(&mem);
    let w = World {
        mem,
        wakes: 0,
        past: false,
        parts: (0..cfg.participants)
            .map(|i| {
                if cfg.owner_participates && i == 0 {
                    Part::Owner
                } else {
                    Part::Arriving(Arrive::new(&h, i))
                }
            })
            .collect(),
        owner: if cfg.owner_participates {
            Owner::Arriving(Arrive::new(&h, 0))
        } else {
            Owner::Looking(Poll::new(&h, None, 0))
        },
        owner_me: cfg.owner_participates.then_some(0),
        aborter: if cfg.aborter {
            Aborter::Aborting(Abort::new(super::reason::STOPPED))
        } else {
            Aborter::Idle
        },
        deaths_left: cfg.deaths,
        arrived_at_close: None,
        decision: None,
    };
    // A world's block is a `Cell`, but a world in the set is never stepped again: every step
    // works on a clone.
    #[allow(clippy::mutable_key_type)]
    let mut seen = HashSet::new();
    let mut stack = vec![w];
    while let Some(w) = stack.pop() {
        if !seen.insert(w.clone()) {
            continue;
        }
        let next = w.successors(&h, &cfg);
        w.check(&h, &cfg, next.is_empty());
        stack.extend(next);
    }
    seen.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> Vec<Config> {
        let mut v = Vec::new();
        for participants in [1, 2, 3] {
            for policy in [Policy::Exclude, Policy::Abort] {
                for (where_deaths, slices) in [(Deaths::BeforeArriving, false), (Deaths::Anywhere, true)] {
                    for aborter in [false, true] {
                        // Three participants are the bulk of the search: the abort's
                        // interleavings are covered with one and two, and deaths after
                        // arriving (which only the owner's last swap tells apart by policy)
                        // under Exclude.
                        let abort_late = policy == Policy::Abort && where_deaths == Deaths::Anywhere;
                        if participants == 3 && (aborter || abort_late) {
                            continue;
                        }
                        v.push(Config {
                            participants,
                            policy,
                            deaths: u32::from(participants.min(2)),
                            where_deaths,
                            slices,
                            aborter,
                            owner_participates: false,
                            forget_wake: false,
                        });
                    }
                }
            }
        }
        // The owner as one of the participants: two or three in all, the others may die.
        for participants in [2, 3] {
            for policy in [Policy::Exclude, Policy::Abort] {
                v.push(Config {
                    participants,
                    policy,
                    deaths: u32::from(participants - 1),
                    where_deaths: Deaths::BeforeArriving,
                    slices: false,
                    aborter: participants == 2,
                    owner_participates: true,
                    forget_wake: false,
                });
            }
        }
        v
    }

    #[test]
    fn every_interleaving_is_safe_and_every_live_participant_finishes() {
        let start = std::time::Instant::now();
        let mut total = 0;
        for cfg in configs() {
            let n = explore(cfg);
            assert!(n > 50, "{cfg:?}: only {n} states: the model is not exploring");
            total += n;
        }
        eprintln!("barrier model: {total} states in {:?}", start.elapsed());
    }

    /// The checker must be able to fail: a last arrival that wakes nobody leaves sleepers
    /// behind when only a wake can wake them.
    #[test]
    fn the_checker_catches_a_lost_wake() {
        let r = std::panic::catch_unwind(|| {
            explore(Config {
                participants: 2,
                policy: Policy::Exclude,
                deaths: 0,
                where_deaths: Deaths::BeforeArriving,
                slices: false,
                aborter: false,
                owner_participates: false,
                forget_wake: true,
            })
        });
        let err = r.expect_err("a lost wake must be caught");
        let text = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(text.contains("never finished"), "{text}");
    }
}
