//! Exhaustive model check of the register/doorbell protocol.
//!
//! Both real state machines ([`Primary`], [`Secondary`]) run against one in-memory register
//! page. Every register store, every load, the doorbells, the copy (which may land
//! corrupted), the verify, timeouts and the death of either side are separate atomic steps,
//! and a depth-first search visits *every* interleaving. In every reachable state:
//! - a message is delivered only as it was posted (no torn reads);
//! - the secondary hands off only into an image that landed intact;
//! - the primary reports success only for a secondary that handed off into such an image;
//! - every side that is still alive finishes (no deadlock, no lost doorbell).
//!
//! We model the protocol at the granularity the hardware gives us (one aligned word per
//! store/load, sequentially consistent per word; the drivers use Release/Acquire on the
//! publication words, which gives exactly this ordering). Loom would check the driver's
//! memory orderings too, but it cannot run the futex or a second process; this search runs
//! the real decision code, which is where the protocol's bugs would live.

use crate::Algo;
use crate::checksum::Digest;
use crate::window::layout::{self, Reg};
use crate::window::msg::{self, Command, Mode, Status, WindowConfig};
use crate::window::primary::{Phase, Primary, PrimaryAction, PrimaryInput, PrimarySpec, Timeouts};
use crate::window::secondary::{Secondary, SecondaryAction, SecondaryInput};
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

const GOOD: Digest = Digest([1; 32]);
const CORRUPT: Digest = Digest([2; 32]);
const TORN: Digest = Digest([3; 32]);
const CFG: WindowConfig = WindowConfig {
    image_size: 64,
    load_offset: 0,
    algo: Algo::Crc32c,
    mode: Mode::Pull,
    epoch: 0,
    chunk_size: 0,
    ring_size: 0,
};

/// The registers of a page, compactly (the model clones and hashes millions of these).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
/// The model has one monarch: the fixed registers plus its command block, block 0.
struct Page([u64; layout::ALL.len() + BLOCK0.len()]);

const BLOCK0: [Reg; 11] = layout::cmd(0).regs();

impl Page {
    fn new() -> Page {
        Page([0; layout::ALL.len() + BLOCK0.len()])
    }
    fn index(r: Reg) -> usize {
        layout::ALL
            .iter()
            .chain(BLOCK0.iter())
            .position(|x| *x == r)
            .unwrap_or_else(|| panic!("{} is not a model register", r.name))
    }
    fn read(&self, r: Reg) -> u64 {
        self.0[Self::index(r)]
    }
    fn write(&mut self, r: Reg, v: u64) {
        let v = match r.width {
            layout::Width::W32 => v & 0xffff_ffff,
            layout::Width::W64 => v,
        };
        self.0[Self::index(r)] = v;
    }
    fn apply(&mut self, writes: &[layout::Write]) {
        for (r, v) in writes {
            self.write(*r, *v);
        }
    }
}

/// What the data area holds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Data {
    Empty,
    InFlight,
    Good,
    Corrupt,
}

impl Data {
    fn digest(self) -> Digest {
        match self {
            Data::Good => GOOD,
            Data::Corrupt => CORRUPT,
            Data::InFlight | Data::Empty => TORN,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Op {
    Store(Reg, u64),
    Ring(Reg),
    CopyBegin(u32),
    CopyEnd(u32),
    Verify(u32),
    Handoff,
    Done(Result<Phase, ()>),
}

/// A reader working through the seqlock-style read of the peer's message block.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
#[allow(clippy::large_enum_variant)] // model state, cloned whole either way
enum Read {
    Idle,
    /// Read the publication word; next, the payload registers in order, then the word again.
    Reading {
        seq: u32,
        regs_done: usize,
        snapshot: Page,
    },
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Side {
    ops: VecDeque<Op>,
    read: Read,
    seen_bell: u32,
    last_seq: u32,
    next_seq: u32,
    now: Duration,
    crashed: bool,
}

impl Side {
    fn new() -> Side {
        Side {
            ops: VecDeque::new(),
            read: Read::Idle,
            seen_bell: 0,
            last_seq: 0,
            next_seq: 1,
            now: Duration::ZERO,
            crashed: false,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct World {
    page: Page,
    data: Data,
    p: Primary,
    s: Secondary,
    ps: Side,
    ss: Side,
    corruptions_left: u32,
    crashes_left: u32,
    /// What the data area held when the secondary accepted OK and decided to hand off.
    accepted: Option<Data>,
    handed_off: Option<Data>,
    outcome: Option<Result<Phase, ()>>,
    /// Every message posted, by (block, seq), to detect torn reads.
    posted: Vec<(bool, u32, Page)>,
}

/// How a message is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Publication {
    /// The protocol: busy marker, payload, sequence number.
    SeqLock,
    /// Mutation: payload, then sequence number, no busy marker.
    PayloadThenSeq,
    /// Mutation: sequence number first, then the payload.
    SeqFirst,
}

/// Knobs of one model run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    pub max_attempts: u32,
    pub corruptions: u32,
    pub crashes: u32,
    pub expect_running: bool,
    /// Push mode's order: STAGED before the copy (the model does not model the ring, so a
    /// verification may see the copy in flight: it must then fail safe, never hand off).
    pub stream: bool,
    /// Mutations for the self-test of the checker.
    pub publication: Publication,
}

fn payload_regs(cmd_block: bool) -> Vec<Reg> {
    // The registers a reader of the block reads, publication word excluded.
    let sample = if cmd_block {
        msg::encode_command(0, 1, 1, &Command::Release)
    } else {
        msg::encode_status(1, 1, &Status::Ready { pid: 0 })
    };
    sample.into_iter().map(|(r, _)| r).filter(|r| *r != layout::cmd(0).seq && *r != layout::ST_SEQ).collect()
}

impl World {
    fn post(&mut self, primary: bool, cfg: &Config, writes: Vec<layout::Write>) {
        let side = if primary { &mut self.ps } else { &mut self.ss };
        let mut writes = writes;
        match cfg.publication {
            Publication::SeqLock => {}
            Publication::PayloadThenSeq => {
                writes.remove(0);
            }
            Publication::SeqFirst => {
                writes.remove(0);
                if let Some(last) = writes.pop() {
                    writes.insert(0, last);
                }
            }
        }
        // Record what a reader must see for this seq: the payload as posted.
        let mut expect = Page::new();
        expect.apply(&writes);
        let seq_reg = if primary { layout::cmd(0).seq } else { layout::ST_SEQ };
        expect.write(seq_reg, u64::from(side.next_seq));
        self.posted.push((primary, side.next_seq, expect));
        side.next_seq += 1;
        side.ops.extend(writes.into_iter().map(|(r, v)| Op::Store(r, v)));
        side.ops.push_back(Op::Ring(if primary { layout::DB_TO_SECONDARY } else { layout::DB_TO_PRIMARY }));
    }

    fn primary_actions(&mut self, cfg: &Config, actions: Vec<PrimaryAction>) {
        for a in actions {
            match a {
                PrimaryAction::Post(c) => {
                    let seq = self.ps.next_seq;
                    self.post(true, cfg, msg::encode_command(0, seq, 1, &c));
                }
                PrimaryAction::Copy { attempt } => {
                    self.ps.ops.push_back(Op::CopyBegin(attempt));
                    self.ps.ops.push_back(Op::CopyEnd(attempt));
                }
                PrimaryAction::Mismatch { .. } => {}
                PrimaryAction::Done(r) => self.ps.ops.push_back(Op::Done(r.map_err(|_| ()))),
            }
        }
    }

    fn secondary_actions(&mut self, cfg: &Config, actions: Vec<SecondaryAction>) {
        for a in actions {
            match a {
                SecondaryAction::Post(st) => {
                    let seq = self.ss.next_seq;
                    self.post(false, cfg, msg::encode_status(seq, 1, &st));
                }
                SecondaryAction::Verify { attempt, .. } => self.ss.ops.push_back(Op::Verify(attempt)),
                SecondaryAction::Handoff { .. } => {
                    self.accepted = Some(self.data);
                    self.ss.ops.push_back(Op::Handoff)
                }
                SecondaryAction::Exit(_) => {}
            }
        }
    }

    fn bell(&self, r: Reg) -> u32 {
        self.page.read(r) as u32
    }

    /// All successor worlds.
    fn successors(&self, cfg: &Config) -> Vec<World> {
        let mut out = Vec::new();
        for primary in [true, false] {
            let side = if primary { &self.ps } else { &self.ss };
            if side.crashed {
                continue;
            }
            let done = if primary {
                self.p.is_done() && side.ops.is_empty()
            } else {
                self.s.is_done() && side.ops.is_empty()
            };
            if done {
                continue;
            }
            if self.crashes_left > 0 {
                let mut w = self.clone();
                w.crashes_left -= 1;
                if primary {
                    w.ps.crashed = true
                } else {
                    w.ss.crashed = true
                }
                out.push(w);
            }
            out.extend(self.step(primary, cfg));
        }
        out
    }

    fn step(&self, primary: bool, cfg: &Config) -> Vec<World> {
        let mut w = self.clone();
        let side = if primary { &mut w.ps } else { &mut w.ss };
        if let Some(Op::Verify(attempt)) = side.ops.front().cloned()
            && cfg.stream
            && w.page.read(layout::cmd(0).produced) < u64::from(attempt)
        {
            // Streaming: the secondary reads only what the primary has produced for this
            // attempt. Until then it can only time out, which yields a checksum that cannot
            // match.
            side.ops.pop_front();
            let now = w.ss.now;
            let a = w.s.handle(now, SecondaryInput::Verified { attempt, digest: TORN });
            w.secondary_actions(cfg, a);
            return vec![w];
        }
        if let Some(op) = side.ops.pop_front() {
            match op {
                Op::Store(r, v) => w.page.write(r, v),
                Op::Ring(r) => {
                    let v = w.page.read(r) as u32;
                    w.page.write(r, u64::from(v.wrapping_add(1)));
                }
                Op::CopyBegin(_) => w.data = Data::InFlight,
                Op::CopyEnd(attempt) => {
                    if cfg.stream {
                        // The ring's producer counter, reduced to "attempt n fully produced".
                        w.page.write(layout::cmd(0).produced, u64::from(attempt));
                    }
                    let mut outs = Vec::new();
                    if w.corruptions_left > 0 {
                        let mut c = w.clone();
                        c.corruptions_left -= 1;
                        c.data = Data::Corrupt;
                        let now = c.ps.now;
                        let a = c.p.handle(now, PrimaryInput::Copied { attempt });
                        c.primary_actions(cfg, a);
                        outs.push(c);
                    }
                    w.data = Data::Good;
                    let now = w.ps.now;
                    let a = w.p.handle(now, PrimaryInput::Copied { attempt });
                    w.primary_actions(cfg, a);
                    outs.push(w);
                    return outs;
                }
                Op::Verify(attempt) => {
                    let digest = w.data.digest();
                    let now = w.ss.now;
                    let a = w.s.handle(now, SecondaryInput::Verified { attempt, digest });
                    w.secondary_actions(cfg, a);
                }
                Op::Handoff => {
                    w.handed_off = Some(w.data);
                    let _ = w.s.handed_off();
                    if cfg.expect_running {
                        // The delivered image runs and reports through the window.
                        let seq = w.ss.next_seq;
                        w.post(false, cfg, msg::encode_status(seq, 1, &Status::Running { pid: 1 }));
                    }
                }
                Op::Done(r) => w.outcome = Some(r),
            }
            return vec![w];
        }
        // No pending op: read the peer's block, or wait.
        let (seq_reg, bell_reg) = if primary {
            (layout::ST_SEQ, layout::DB_TO_PRIMARY)
        } else {
            (layout::cmd(0).seq, layout::DB_TO_SECONDARY)
        };
        let regs = payload_regs(!primary);
        match side.read.clone() {
            Read::Reading { seq, regs_done, mut snapshot } if regs_done < regs.len() => {
                let r = regs[regs_done];
                snapshot.write(r, w.page.read(r));
                side.read = Read::Reading { seq, regs_done: regs_done + 1, snapshot };
                vec![w]
            }
            Read::Reading { seq, mut snapshot, .. } => {
                let again = w.page.read(seq_reg) as u32;
                side.read = Read::Idle;
                if msg::SeqWord::from_raw(again) != msg::SeqWord::Published(seq) {
                    return vec![w]; // changed under us: the bell is still unseen, read again
                }
                side.last_seq = seq;
                snapshot.write(seq_reg, u64::from(seq));
                let expect =
                    w.posted.iter().find(|(p, s, _)| *p != primary && *s == seq).map(|(_, _, pg)| pg.clone());
                if let Some(expect) = expect {
                    for r in regs.iter().chain([&seq_reg]) {
                        assert_eq!(snapshot.read(*r), expect.read(*r), "torn read of {} (seq {seq})", r.name);
                    }
                }
                let read = |r| snapshot.read(r);
                if primary {
                    let input = match msg::decode_status(&read) {
                        Ok(s) => PrimaryInput::Status(s),
                        Err(e) => PrimaryInput::Garbage(e),
                    };
                    let now = w.ps.now;
                    let a = w.p.handle(now, input);
                    w.primary_actions(cfg, a);
                } else {
                    let input = match msg::decode_command(0, &read).map(|s| s.cmd) {
                        Ok(Ok(Command::Release)) => SecondaryInput::Release(Ok(CFG)),
                        Ok(Ok(c)) => SecondaryInput::Command(c),
                        Ok(Err(e)) | Err(e) => SecondaryInput::Garbage(e),
                    };
                    let now = w.ss.now;
                    let a = w.s.handle(now, input);
                    w.secondary_actions(cfg, a);
                }
                vec![w]
            }
            Read::Idle => {
                let seen_bell = side.seen_bell;
                let bell = w.bell(bell_reg);
                let mut outs = Vec::new();
                if bell != seen_bell {
                    // Doorbell rang: note it, then look at the publication word.
                    let mut r = w.clone();
                    let rs = if primary { &mut r.ps } else { &mut r.ss };
                    rs.seen_bell = bell;
                    let raw = r.page.read(seq_reg) as u32;
                    let rs = if primary { &mut r.ps } else { &mut r.ss };
                    if let msg::SeqWord::Published(seq) = msg::SeqWord::from_raw(raw)
                        && seq != rs.last_seq
                    {
                        rs.read = Read::Reading { seq, regs_done: 0, snapshot: Page::new() };
                    }
                    outs.push(r);
                }
                // A timeout may always fire while waiting with a deadline.
                let deadline = if primary { w.p.deadline() } else { w.s.deadline() };
                if let Some(d) = deadline {
                    let mut t = w.clone();
                    if primary {
                        t.ps.now = d;
                        let a = t.p.handle(d, PrimaryInput::Tick);
                        t.primary_actions(cfg, a);
                    } else {
                        t.ss.now = d;
                        let a = t.s.handle(d, SecondaryInput::Tick);
                        t.secondary_actions(cfg, a);
                    }
                    outs.push(t);
                }
                outs
            }
        }
    }

    fn check(&self, cfg: &Config, terminal: bool) {
        if let Some(d) = self.handed_off {
            assert_eq!(d, Data::Good, "secondary handed off into {d:?} data");
        }
        if let Some(d) = self.accepted {
            assert_eq!(d, Data::Good, "secondary accepted OK for {d:?} data");
        }
        if let Some(Ok(phase)) = self.outcome {
            assert_eq!(
                self.accepted,
                Some(Data::Good),
                "primary reported {phase:?} but the secondary never accepted a verified image"
            );
            if cfg.expect_running {
                assert_eq!(phase, Phase::Running);
                assert_eq!(self.handed_off, Some(Data::Good), "RUNNING reported without a handoff");
            }
        }
        if terminal {
            if !self.ps.crashed {
                assert!(self.outcome.is_some(), "primary never finished: {:?}", self.p);
            }
            if !self.ss.crashed {
                assert!(self.s.is_done(), "secondary never finished: {:?}", self.s);
            }
        }
    }
}

/// Explore every interleaving; returns the number of distinct states.
pub(crate) fn explore(cfg: Config) -> usize {
    let t = Duration::from_secs(1);
    let mut p = Primary::new(PrimarySpec {
        expected: GOOD,
        max_attempts: cfg.max_attempts,
        expect_running: cfg.expect_running,
        stream: cfg.stream,
        timeouts: Timeouts { rendezvous: t, verify: t, handoff: t },
    });
    let mut s = Secondary::new(1, t);
    let mut w = World {
        page: Page::new(),
        data: Data::Empty,
        p: p.clone(),
        s: s.clone(),
        ps: Side::new(),
        ss: Side::new(),
        corruptions_left: cfg.corruptions,
        crashes_left: cfg.crashes,
        accepted: None,
        handed_off: None,
        outcome: None,
        posted: Vec::new(),
    };
    let _ = s.handle(Duration::ZERO, SecondaryInput::Start);
    let a = p.handle(Duration::ZERO, PrimaryInput::Start);
    w.p = p;
    w.s = s;
    w.primary_actions(&cfg, a);
    let mut seen = HashSet::new();
    let mut stack = vec![w];
    while let Some(w) = stack.pop() {
        if !seen.insert(w.clone()) {
            continue;
        }
        let next = w.successors(&cfg);
        w.check(&cfg, next.is_empty());
        stack.extend(next);
    }
    seen.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interleaving_is_safe_and_terminates() {
        // Corruption and crashes are optional at every step, so a budget of N explores every
        // run with 0..=N of them: corrupting every attempt and allowing one crash covers all.
        for max_attempts in 1..=3 {
            for (expect_running, stream) in [(true, false), (false, false), (true, true)] {
                let cfg = Config {
                    max_attempts,
                    corruptions: max_attempts,
                    crashes: 1,
                    expect_running,
                    stream,
                    publication: Publication::SeqLock,
                };
                let n = explore(cfg);
                assert!(n > 1000, "{cfg:?}: only {n} states: the model is not exploring");
            }
        }
    }

    /// The checker must be able to fail: both weaker publication orders are caught.
    #[test]
    fn the_checker_catches_publication_without_the_busy_marker() {
        for publication in [Publication::PayloadThenSeq, Publication::SeqFirst] {
            let r = std::panic::catch_unwind(|| {
                explore(Config {
                    max_attempts: 2,
                    corruptions: 1,
                    crashes: 1,
                    expect_running: true,
                    stream: false,
                    publication,
                })
            });
            let err = r.expect_err("a weaker publication order must be caught as a torn read");
            let text = err.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(text.contains("torn read"), "{publication:?}: {text}");
        }
    }
}
