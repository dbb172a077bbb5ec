//! Boot barriers with a deadline: the block of words in shared memory and the protocol over
//! it, as resumable machines that each do one atomic word access per step.
//!
//! A phased boot (after ALMOS-MKH: `docs/barriers.md`) meets at barriers: the cluster heads
//! at a global barrier once each copied the kernel into its cluster, then every core of a
//! cluster at its cluster's local barrier, and all at a final global one before they jump.
//! Each participant is a process; the barrier is a [`BLOCK_SIZE`]-byte block of little-endian,
//! naturally aligned words in memory they all map. `docs/barriers.md` describes the block
//! word by word.
//!
//! # Who decides
//!
//! Every barrier has exactly **one owner**: the monarch for a global barrier, the cluster's
//! head for its cluster's local barrier. The owner created the block (it wrote the header,
//! the deadline and the policy) and it is the only one that runs [`Decide`], the timeout
//! decision; a participant never does, so there are never two deciders. The owner may be a
//! participant too (a head is one of its cluster's cores); it then both arrives and decides.
//! - The deadline is an absolute `CLOCK_MONOTONIC` time in nanoseconds, written by the owner
//!   at creation. Absolute, because participants attach at different times and must all
//!   agree on one instant without knowing when the owner started; `CLOCK_MONOTONIC` because
//!   the processes share a kernel, hence the clock, and it never jumps. Only the owner acts
//!   on it, so where the participants do not share the owner's kernel (a PCIe window) the
//!   deadline stays correct: for them it only bounds how long they sleep before looking
//!   again.
//! - At the deadline the owner *closes* the barrier (one compare-and-swap, `OPEN` →
//!   `CLOSING`), reads the arrival bitmap, and then: when nobody is missing it releases
//!   everyone whatever the policy; otherwise, by the barrier's [`Policy`], it either
//!   **excludes** the missing (writes them into the exclusion bitmap, then releases the
//!   others) or **aborts** (the exclusion bitmap then names the missing, and the state
//!   becomes aborted with [`reason::TIMEOUT`]). Being excluded is decided by the exclusion
//!   bitmap alone: a participant that arrives after the owner read its bit is excluded,
//!   even if it set its bit before the release, and learns so from [`Poll`]. It must not
//!   jump.
//! - Anyone (owner or participant) may [`Abort`]: an abort only ever stops everyone, so
//!   two aborters cannot disagree, and it can only win over a barrier not yet released.
//! - Whoever moves the state word to a final state (the last arrival, the owner, an
//!   aborter) must then wake every waiter on it (`wake: true` in what its machine returns).
//!
//! # The machines
//!
//! [`Arrive`], [`Poll`], [`Decide`] and [`Abort`] each take one step per call of their
//! `step`, and each step is exactly one access to one word of the block through [`Words`]
//! (load, store, compare-and-swap, fetch-add or fetch-or). The drivers run a machine to its
//! end against the mapped block; the model check (`barrier/model.rs`, test-only) runs the
//! very same machines one step at a time, in every interleaving.

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // participant indices of the model are tiny
mod model;

/// `b"MNRCHBAR"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MNRCHBAR");
/// Layout version of the block.
pub const VERSION: u32 = 1;
/// Most participants one barrier can have (the bitmaps have this many bits).
pub const MAX_PARTICIPANTS: usize = 256;
/// Bytes of a barrier block.
pub const BLOCK_SIZE: usize = 0x80;

/// `u64`: [`MAGIC`], written last by the creator.
pub const OFF_MAGIC: usize = 0x00;
/// `u32`: [`VERSION`].
pub const OFF_VERSION: usize = 0x08;
/// `u32`: the number of participants `N`, `1..=MAX_PARTICIPANTS`.
pub const OFF_PARTICIPANTS: usize = 0x0C;
/// `u32`: the generation: which use of the block this is (a reused block gets a new one).
pub const OFF_GENERATION: usize = 0x10;
/// `u32`: the [`Policy`] applied at the deadline.
pub const OFF_POLICY: usize = 0x14;
/// `u64`: the deadline, absolute `CLOCK_MONOTONIC` nanoseconds.
pub const OFF_DEADLINE: usize = 0x18;
/// `u32`: the state word (see [`State`]); waiters sleep on it.
pub const OFF_STATE: usize = 0x20;
/// `u32`: how many distinct participants set their arrival bit.
pub const OFF_ARRIVED: usize = 0x24;
/// `4 × u64`: the arrival bitmap, bit `i % 64` of word `i / 64` for participant `i`.
pub const OFF_ARRIVALS: usize = 0x40;
/// `4 × u64`: the exclusion bitmap, the same way; written by the owner only.
pub const OFF_EXCLUDED: usize = 0x60;
/// Words in each bitmap.
pub const BITMAP_WORDS: usize = MAX_PARTICIPANTS / 64;

/// Abort reasons, the upper 24 bits of an aborted state word.
pub mod reason {
    /// The owner's deadline passed with participants missing, under [`super::Policy::Abort`].
    pub const TIMEOUT: u32 = 1;
    /// A participant gave up on an owner that never decided.
    pub const OWNER_SILENT: u32 = 2;
    /// The supervisor (or an operator) stopped the boot.
    pub const STOPPED: u32 = 3;
    /// An earlier barrier of some participants aborted, so they can never arrive at this one.
    pub const EARLIER_ABORTED: u32 = 4;
    /// Largest reason that fits in the state word.
    pub const MAX: u32 = 0x00ff_ffff;
}

/// What the owner does with participants missing at the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Mark the missing excluded and release the others.
    #[default]
    Exclude,
    /// Abort the barrier: nobody is released.
    Abort,
}

impl Policy {
    /// The word stored at [`OFF_POLICY`].
    pub fn code(self) -> u32 {
        match self {
            Policy::Exclude => 0,
            Policy::Abort => 1,
        }
    }
    /// The policy of a stored word.
    pub fn from_code(c: u32) -> Option<Policy> {
        match c {
            0 => Some(Policy::Exclude),
            1 => Some(Policy::Abort),
            _ => None,
        }
    }

    /// Its name in a topology and on a command line: `exclude` or `abort`.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Exclude => "exclude",
            Policy::Abort => "abort",
        }
    }

    /// The policy of a name ([`Policy::name`]).
    pub fn from_name(name: &str) -> Option<Policy> {
        [Policy::Exclude, Policy::Abort].into_iter().find(|p| p.name() == name)
    }
}

/// The state word, decoded. Its low 8 bits are the kind; an aborted word carries its reason
/// in the upper 24 bits, so the reason is published by the same compare-and-swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Waiting for arrivals.
    Open,
    /// The owner is deciding the timeout; arrivals are still recorded but may be excluded.
    Closing,
    /// Released: every participant not in the exclusion bitmap may go on.
    Released,
    /// Aborted, with a reason: nobody goes on.
    Aborted(u32),
    /// A word this version does not know (a corrupted block): treated as aborted.
    Unknown(u32),
}

const K_OPEN: u32 = 1;
const K_CLOSING: u32 = 2;
const K_RELEASED: u32 = 3;
const K_ABORTED: u32 = 4;

impl State {
    /// The state word.
    pub fn encode(self) -> u32 {
        match self {
            State::Open => K_OPEN,
            State::Closing => K_CLOSING,
            State::Released => K_RELEASED,
            State::Aborted(r) => K_ABORTED | ((r & reason::MAX) << 8),
            State::Unknown(w) => w,
        }
    }
    /// A state word decoded.
    pub fn decode(w: u32) -> State {
        match w & 0xff {
            K_OPEN if w == K_OPEN => State::Open,
            K_CLOSING if w == K_CLOSING => State::Closing,
            K_RELEASED if w == K_RELEASED => State::Released,
            K_ABORTED => State::Aborted(w >> 8),
            _ => State::Unknown(w),
        }
    }
    /// Whether nothing can change it any more.
    pub fn is_final(self) -> bool {
        !matches!(self, State::Open | State::Closing)
    }
}

/// Word-granular access to one barrier block (offsets from its start). Every method is one
/// atomic access; the drivers implement it over shared memory with `SeqCst` atomics, the
/// model and tests over [`MemBlock`].
pub trait Words {
    /// Load the 32-bit word at `at`.
    fn load32(&self, at: usize) -> u32;
    /// Store the 32-bit word at `at`.
    fn store32(&self, at: usize, v: u32);
    /// Compare-and-swap the 32-bit word at `at`: `Ok(current)` if it held `current` and now
    /// holds `new`, else `Err(what it held)`.
    fn cas32(&self, at: usize, current: u32, new: u32) -> Result<u32, u32>;
    /// Add to the 32-bit word at `at` (wrapping), returning what it held.
    fn fetch_add32(&self, at: usize, v: u32) -> u32;
    /// Load the 64-bit word at `at`.
    fn load64(&self, at: usize) -> u64;
    /// Store the 64-bit word at `at`.
    fn store64(&self, at: usize, v: u64);
    /// Or into the 64-bit word at `at`, returning what it held.
    fn fetch_or64(&self, at: usize, v: u64) -> u64;
}

/// A barrier block in ordinary memory (one thread): tests, the model check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemBlock(std::cell::Cell<[u32; BLOCK_SIZE / 4]>);

impl std::hash::Hash for MemBlock {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.get().hash(h);
    }
}

impl MemBlock {
    /// A zeroed block.
    pub fn new() -> MemBlock {
        MemBlock::default()
    }
    fn get(&self, at: usize) -> u32 {
        assert!(at % 4 == 0 && at < BLOCK_SIZE, "bad barrier word {at:#x}");
        self.0.get()[at / 4]
    }
    fn set(&self, at: usize, v: u32) {
        assert!(at % 4 == 0 && at < BLOCK_SIZE, "bad barrier word {at:#x}");
        let mut w = self.0.get();
        w[at / 4] = v;
        self.0.set(w);
    }
}

#[allow(clippy::cast_possible_truncation)] // halves of a u64, on purpose
impl Words for MemBlock {
    fn load32(&self, at: usize) -> u32 {
        self.get(at)
    }
    fn store32(&self, at: usize, v: u32) {
        self.set(at, v)
    }
    fn cas32(&self, at: usize, current: u32, new: u32) -> Result<u32, u32> {
        let old = self.get(at);
        if old == current {
            self.set(at, new);
            Ok(old)
        } else {
            Err(old)
        }
    }
    fn fetch_add32(&self, at: usize, v: u32) -> u32 {
        let old = self.get(at);
        self.set(at, old.wrapping_add(v));
        old
    }
    fn load64(&self, at: usize) -> u64 {
        assert!(at % 8 == 0, "misaligned 64-bit barrier word {at:#x}");
        u64::from(self.get(at)) | (u64::from(self.get(at + 4)) << 32)
    }
    fn store64(&self, at: usize, v: u64) {
        assert!(at % 8 == 0, "misaligned 64-bit barrier word {at:#x}");
        self.set(at, v as u32);
        self.set(at + 4, (v >> 32) as u32);
    }
    fn fetch_or64(&self, at: usize, v: u64) -> u64 {
        let old = self.load64(at);
        self.store64(at, old | v);
        old
    }
}

/// What the owner writes at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Participants `N`, `1..=MAX_PARTICIPANTS`; they are numbered `0..N`.
    pub participants: u16,
    /// Which use of the block this is.
    pub generation: u32,
    /// What the owner does at the deadline.
    pub policy: Policy,
    /// Absolute `CLOCK_MONOTONIC` nanoseconds.
    pub deadline_ns: u64,
}

/// Why a block is not a barrier this code can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The magic is not [`MAGIC`] (not a barrier, or not initialised yet).
    #[error("not a barrier block (magic {0:#018x})")]
    Magic(u64),
    /// Another layout version.
    #[error("barrier layout version {0}, this is {VERSION}")]
    Version(u32),
    /// A participant count of 0 or above [`MAX_PARTICIPANTS`].
    #[error("barrier of {0} participants (1..={MAX_PARTICIPANTS})")]
    Participants(u32),
    /// A participant number outside `0..N`.
    #[error("participant {me} of a barrier of {participants}")]
    NotAParticipant {
        /// The number asked for.
        me: u16,
        /// `N`.
        participants: u16,
    },
    /// An unknown policy code.
    #[error("unknown barrier policy {0}")]
    Policy(u32),
    /// Not the generation the caller expected (a stale or a future use of the block).
    #[error("barrier generation {found}, expected {expected}")]
    Generation {
        /// In the block.
        found: u32,
        /// Asked for.
        expected: u32,
    },
}

impl Header {
    /// Initialise a block (the owner, before anyone attaches): zero the bitmaps and the
    /// counter, write the header and the open state, and the magic last.
    pub fn write(&self, m: &impl Words) {
        assert!((1..=MAX_PARTICIPANTS).contains(&usize::from(self.participants)), "bad participant count");
        m.store64(OFF_MAGIC, 0);
        for i in 0..BITMAP_WORDS {
            m.store64(OFF_ARRIVALS + 8 * i, 0);
            m.store64(OFF_EXCLUDED + 8 * i, 0);
        }
        m.store32(OFF_ARRIVED, 0);
        m.store32(OFF_VERSION, VERSION);
        m.store32(OFF_PARTICIPANTS, u32::from(self.participants));
        m.store32(OFF_GENERATION, self.generation);
        m.store32(OFF_POLICY, self.policy.code());
        m.store64(OFF_DEADLINE, self.deadline_ns);
        m.store32(OFF_STATE, State::Open.encode());
        m.store64(OFF_MAGIC, MAGIC);
    }

    /// Read and check a block's header (a participant attaching), expecting `generation`.
    pub fn read(m: &impl Words, generation: u32) -> Result<Header, HeaderError> {
        let magic = m.load64(OFF_MAGIC);
        if magic != MAGIC {
            return Err(HeaderError::Magic(magic));
        }
        let version = m.load32(OFF_VERSION);
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        let n = m.load32(OFF_PARTICIPANTS);
        let participants = u16::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_PARTICIPANTS).contains(&usize::from(*n)))
            .ok_or(HeaderError::Participants(n))?;
        let p = m.load32(OFF_POLICY);
        let policy = Policy::from_code(p).ok_or(HeaderError::Policy(p))?;
        let found = m.load32(OFF_GENERATION);
        if found != generation {
            return Err(HeaderError::Generation { found, expected: generation });
        }
        Ok(Header { participants, generation, policy, deadline_ns: m.load64(OFF_DEADLINE) })
    }

    /// Bitmap words in use.
    fn words(&self) -> usize {
        usize::from(self.participants).div_ceil(64)
    }

    /// The participants (of `0..N`) whose bit is clear in `bits` (`want_set` false) or set.
    fn members(&self, bits: &[u64], want_set: bool) -> Vec<u16> {
        (0..self.participants)
            .filter(|&i| (bits[usize::from(i) / 64] >> (i % 64) & 1 == 1) == want_set)
            .collect()
    }
}

/// Participant `me`'s word offset and bit in a bitmap at `base`.
fn bit(base: usize, me: u16) -> (usize, u64) {
    (base + 8 * (usize::from(me) / 64), 1u64 << (me % 64))
}

/// What a participant learns from arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arrived {
    /// This arrival was the last: it released the barrier and must wake every waiter.
    pub wake: bool,
    /// Its bit was already set (it had arrived before): nothing changed.
    pub again: bool,
}

/// Arriving: set my bit; the first time, count me; the last to be counted releases.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Arrive {
    me: u16,
    n: u32,
    pc: ArrivePc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ArrivePc {
    SetBit,
    Count,
    Release,
}

impl Arrive {
    /// Participant `me` (`< N`) arrives at the barrier of `header`.
    pub fn new(header: &Header, me: u16) -> Arrive {
        assert!(me < header.participants, "participant {me} of a barrier of {}", header.participants);
        Arrive { me, n: u32::from(header.participants), pc: ArrivePc::SetBit }
    }

    /// One word access; `Some` when done.
    pub fn step(&mut self, m: &impl Words) -> Option<Arrived> {
        match self.pc {
            ArrivePc::SetBit => {
                let (at, b) = bit(OFF_ARRIVALS, self.me);
                if m.fetch_or64(at, b) & b != 0 {
                    return Some(Arrived { wake: false, again: true });
                }
                self.pc = ArrivePc::Count;
                None
            }
            ArrivePc::Count => {
                // Every participant is counted once (its bit was clear), so the count reaches
                // N only once every bit is set.
                if m.fetch_add32(OFF_ARRIVED, 1).wrapping_add(1) < self.n {
                    return Some(Arrived { wake: false, again: false });
                }
                self.pc = ArrivePc::Release;
                None
            }
            ArrivePc::Release => {
                // Fails when the owner closed it (it decides: everyone's bit is set, so it
                // releases) or someone aborted it: no one to wake on this path.
                let ok = m.cas32(OFF_STATE, State::Open.encode(), State::Released.encode()).is_ok();
                Some(Arrived { wake: ok, again: false })
            }
        }
    }
}

/// What a look at the barrier tells.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Not decided, before the deadline. `seen` is the state word, to sleep on.
    Waiting {
        /// The state word as read.
        seen: u32,
    },
    /// Released, and the looker is not excluded: go on. `excluded` names who must not.
    Released {
        /// The participants the owner excluded (empty when all arrived).
        excluded: Vec<u16>,
    },
    /// Released without the looker: the owner excluded it. It must not go on.
    Excluded,
    /// Aborted: nobody goes on.
    Aborted {
        /// Why ([`reason`]).
        reason: u32,
        /// Whom the owner found missing, when it aborted at the deadline (else empty).
        missing: Vec<u16>,
    },
    /// Past the deadline and not decided yet. The owner must now [`Decide`]; anyone else
    /// keeps waiting for the owner's decision.
    TimedOut {
        /// Who had not arrived when looked at.
        missing: Vec<u16>,
        /// The state word as read, to sleep on.
        seen: u32,
    },
}

impl Outcome {
    /// Whether the barrier is decided (released, excluded or aborted).
    pub fn is_final(&self) -> bool {
        !matches!(self, Outcome::Waiting { .. } | Outcome::TimedOut { .. })
    }
}

/// Looking at the barrier: the state word, then the bitmap that explains it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Poll {
    header: Header,
    me: Option<u16>,
    past_deadline: bool,
    state: Option<u32>,
    bits: Vec<u64>,
}

impl Poll {
    /// A look by participant `me` (`None`: the owner when not a participant) at monotonic
    /// time `now_ns`.
    pub fn new(header: &Header, me: Option<u16>, now_ns: u64) -> Poll {
        Poll {
            header: *header,
            me,
            past_deadline: now_ns >= header.deadline_ns,
            state: None,
            bits: Vec::new(),
        }
    }

    /// One word access; `Some` when done.
    pub fn step(&mut self, m: &impl Words) -> Option<Outcome> {
        let Some(seen) = self.state else {
            let seen = m.load32(OFF_STATE);
            self.state = Some(seen);
            return match State::decode(seen) {
                State::Open | State::Closing if !self.past_deadline => Some(Outcome::Waiting { seen }),
                _ => None,
            };
        };
        let state = State::decode(seen);
        let base = if state.is_final() { OFF_EXCLUDED } else { OFF_ARRIVALS };
        if self.bits.len() < self.header.words() {
            self.bits.push(m.load64(base + 8 * self.bits.len()));
            if self.bits.len() < self.header.words() {
                return None;
            }
        }
        let h = &self.header;
        Some(match state {
            State::Open | State::Closing => Outcome::TimedOut { missing: h.members(&self.bits, false), seen },
            State::Released => {
                let excluded = h.members(&self.bits, true);
                match self.me {
                    Some(me) if excluded.contains(&me) => Outcome::Excluded,
                    _ => Outcome::Released { excluded },
                }
            }
            State::Aborted(reason) => Outcome::Aborted { reason, missing: h.members(&self.bits, true) },
            State::Unknown(w) => Outcome::Aborted { reason: w, missing: Vec::new() },
        })
    }
}

/// The owner's decision at the deadline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The outcome for everyone (for the owner as a participant: it arrived before deciding,
    /// so it is never excluded).
    pub outcome: Outcome,
    /// This decision moved the state word: the owner must wake every waiter.
    pub wake: bool,
}

/// The owner's timeout decision (the owner only; see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decide {
    header: Header,
    pc: DecidePc,
    arrivals: Vec<u64>,
    written: usize,
    look: Option<Poll>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DecidePc {
    Close,
    ReadArrivals,
    WriteMissing,
    Finish,
    /// Someone else decided first (all arrived, or an abort): look at what they decided.
    Look,
}

impl Decide {
    /// The owner decides the barrier of `header`, whose deadline passed.
    pub fn new(header: &Header) -> Decide {
        Decide { header: *header, pc: DecidePc::Close, arrivals: Vec::new(), written: 0, look: None }
    }

    fn missing_bits(&self) -> Vec<u64> {
        let n = usize::from(self.header.participants);
        (0..self.header.words())
            .map(|i| {
                let valid = if (i + 1) * 64 <= n { u64::MAX } else { (1u64 << (n - i * 64)) - 1 };
                !self.arrivals[i] & valid
            })
            .collect()
    }

    /// One word access; `Some` when done.
    pub fn step(&mut self, m: &impl Words) -> Option<Decision> {
        match self.pc {
            DecidePc::Close => {
                match m.cas32(OFF_STATE, State::Open.encode(), State::Closing.encode()) {
                    Ok(_) => self.pc = DecidePc::ReadArrivals,
                    // Closing already: a previous decision of this owner stopped half way.
                    Err(w) if State::decode(w) == State::Closing => self.pc = DecidePc::ReadArrivals,
                    Err(_) => self.pc = DecidePc::Look,
                }
                None
            }
            DecidePc::ReadArrivals => {
                self.arrivals.push(m.load64(OFF_ARRIVALS + 8 * self.arrivals.len()));
                if self.arrivals.len() == self.header.words() {
                    let none_missing = self.missing_bits().iter().all(|w| *w == 0);
                    self.pc = if none_missing { DecidePc::Finish } else { DecidePc::WriteMissing };
                }
                None
            }
            DecidePc::WriteMissing => {
                let bits = self.missing_bits();
                m.store64(OFF_EXCLUDED + 8 * self.written, bits[self.written]);
                self.written += 1;
                if self.written == bits.len() {
                    self.pc = DecidePc::Finish;
                }
                None
            }
            DecidePc::Finish => {
                let missing = self.header.members(&self.missing_bits(), true);
                let to = match self.header.policy {
                    Policy::Abort if !missing.is_empty() => State::Aborted(reason::TIMEOUT),
                    _ => State::Released,
                };
                match m.cas32(OFF_STATE, State::Closing.encode(), to.encode()) {
                    Ok(_) => {
                        let outcome = match to {
                            State::Released => Outcome::Released { excluded: missing },
                            _ => Outcome::Aborted { reason: reason::TIMEOUT, missing },
                        };
                        Some(Decision { outcome, wake: true })
                    }
                    // Aborted meanwhile by someone else.
                    Err(_) => {
                        self.pc = DecidePc::Look;
                        None
                    }
                }
            }
            DecidePc::Look => {
                let look = self.look.get_or_insert_with(|| Poll::new(&self.header, None, u64::MAX));
                look.step(m).map(|outcome| Decision { outcome, wake: false })
            }
        }
    }
}

/// Aborting: anyone may, while the barrier is not released.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Abort {
    reason: u32,
    seen: Option<u32>,
}

impl Abort {
    /// Abort with `reason` (at most [`reason::MAX`]).
    pub fn new(reason: u32) -> Abort {
        Abort { reason: reason & reason::MAX, seen: None }
    }

    /// One word access; `Some((state now, wake))` when done: the state is aborted (by this
    /// abort if `wake`, else by an earlier one) or released (too late to abort).
    pub fn step(&mut self, m: &impl Words) -> Option<(State, bool)> {
        match self.seen {
            None => {
                let w = m.load32(OFF_STATE);
                if State::decode(w).is_final() {
                    return Some((State::decode(w), false));
                }
                self.seen = Some(w);
                None
            }
            Some(w) => {
                let to = State::Aborted(self.reason);
                match m.cas32(OFF_STATE, w, to.encode()) {
                    Ok(_) => Some((to, true)),
                    Err(now) => {
                        self.seen = None;
                        if State::decode(now).is_final() {
                            return Some((State::decode(now), false));
                        }
                        None
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(n: u16, policy: Policy) -> Header {
        Header { participants: n, generation: 7, policy, deadline_ns: 100 }
    }

    fn run<T>(mut f: impl FnMut() -> Option<T>) -> T {
        loop {
            if let Some(t) = f() {
                return t;
            }
        }
    }

    #[test]
    fn the_header_round_trips_and_is_checked() {
        let m = MemBlock::new();
        assert_eq!(Header::read(&m, 7), Err(HeaderError::Magic(0)));
        let h = header(200, Policy::Abort);
        h.write(&m);
        assert_eq!(Header::read(&m, 7), Ok(h));
        assert_eq!(Header::read(&m, 8), Err(HeaderError::Generation { found: 7, expected: 8 }));
        m.store32(OFF_PARTICIPANTS, 0);
        assert_eq!(Header::read(&m, 7), Err(HeaderError::Participants(0)));
    }

    #[test]
    fn the_state_word_carries_the_abort_reason() {
        for s in [State::Open, State::Closing, State::Released, State::Aborted(0xabcdef)] {
            assert_eq!(State::decode(s.encode()), s);
        }
        assert_eq!(State::decode(0x100 | K_OPEN), State::Unknown(0x101));
    }

    #[test]
    fn the_last_of_many_arrivals_releases_and_wakes() {
        let m = MemBlock::new();
        let h = header(130, Policy::Exclude);
        h.write(&m);
        for me in 0..130 {
            let mut a = Arrive::new(&h, me);
            let r = run(|| a.step(&m));
            assert_eq!(r.wake, me == 129);
            let mut p = Poll::new(&h, Some(me), 0);
            let o = run(|| p.step(&m));
            assert_eq!(o.is_final(), me == 129, "{o:?}");
        }
        let mut again = Arrive::new(&h, 3);
        assert_eq!(run(|| again.step(&m)), Arrived { wake: false, again: true });
        let mut p = Poll::new(&h, Some(5), 0);
        assert_eq!(run(|| p.step(&m)), Outcome::Released { excluded: vec![] });
    }

    #[test]
    fn past_the_deadline_the_owner_excludes_or_aborts_the_missing() {
        for policy in [Policy::Exclude, Policy::Abort] {
            let m = MemBlock::new();
            let h = header(70, policy);
            h.write(&m);
            for me in (0..70).filter(|i| *i != 1 && *i != 65) {
                let mut a = Arrive::new(&h, me);
                run(|| a.step(&m));
            }
            let mut p = Poll::new(&h, Some(0), 100);
            assert!(matches!(run(|| p.step(&m)), Outcome::TimedOut { missing, .. } if missing == [1, 65]));
            let mut d = Decide::new(&h);
            let dec = run(|| d.step(&m));
            assert!(dec.wake);
            let mut late = Arrive::new(&h, 65);
            assert!(!run(|| late.step(&m)).wake);
            let (mine, late_one) = (Poll::new(&h, Some(0), 0), Poll::new(&h, Some(65), 0));
            let [mine, late_one] = [mine, late_one].map(|mut p| run(|| p.step(&m)));
            match policy {
                Policy::Exclude => {
                    assert_eq!(dec.outcome, Outcome::Released { excluded: vec![1, 65] });
                    assert_eq!(mine, Outcome::Released { excluded: vec![1, 65] });
                    assert_eq!(late_one, Outcome::Excluded);
                }
                Policy::Abort => {
                    let want = Outcome::Aborted { reason: reason::TIMEOUT, missing: vec![1, 65] };
                    assert_eq!((&dec.outcome, &mine, &late_one), (&want, &want, &want));
                }
            }
            // Too late to abort a decided barrier; deciding again changes nothing.
            let mut ab = Abort::new(reason::STOPPED);
            assert!(!run(|| ab.step(&m)).1);
            let mut d = Decide::new(&h);
            assert_eq!(run(|| d.step(&m)), Decision { outcome: dec.outcome, wake: false });
        }
    }

    #[test]
    fn an_abort_wins_over_an_open_barrier_only() {
        let m = MemBlock::new();
        let h = header(2, Policy::Exclude);
        h.write(&m);
        let mut ab = Abort::new(reason::STOPPED);
        assert_eq!(run(|| ab.step(&m)), (State::Aborted(reason::STOPPED), true));
        let mut a = Arrive::new(&h, 0);
        run(|| a.step(&m));
        let mut p = Poll::new(&h, Some(0), 0);
        assert_eq!(run(|| p.step(&m)), Outcome::Aborted { reason: reason::STOPPED, missing: vec![] });
    }
}
