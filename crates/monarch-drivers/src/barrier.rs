//! Boot barriers in shared memory: the machines of `monarch_proto::barrier` run against a
//! block of words that several processes map, with sleeping waits.
//!
//! - [`SharedBlock`]: a mapped barrier block, accessed through `SeqCst` atomics only.
//! - [`Barrier`]: one process's handle on a barrier: arrive, look, wait until released or
//!   until the deadline (with a futex on the state word where the processes share a kernel,
//!   bounded polling where they do not: [`Doorbell`]), the owner's decision, abort.
//! - [`BarrierFile`]: a barrier block in a file of its own (`/dev/shm`), created by the
//!   owner and opened by the participants.
//!
//! Every futex wait is cut into slices of at most [`SLICE`]: a participant that released the
//! barrier and died before it woke anyone costs the others one slice, not a hang (the model
//! check covers that death with the slices, `docs/barriers.md`).

use crate::doorbell::Doorbell;
use memmap2::{MmapOptions, MmapRaw};
use monarch_proto::barrier::{
    Abort, Arrive, Arrived, BLOCK_SIZE, Decide, Header, HeaderError, OFF_ARRIVED, OFF_STATE, Outcome, Poll,
    State, Words,
};
use std::fs::{File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Longest single futex sleep: after it a waiter looks at the state word again.
pub const SLICE: Duration = Duration::from_millis(50);

/// Now, in `CLOCK_MONOTONIC` nanoseconds: the clock of barrier deadlines.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec.unsigned_abs())
}

/// A barrier block in memory this process may share with others (a mapped file, a PCI BAR,
/// memory of this process), touched only through atomics.
#[derive(Debug, Clone, Copy)]
pub struct SharedBlock<'a> {
    base: *mut u8,
    _memory: PhantomData<&'a [AtomicU64]>,
}

// SAFETY: a `SharedBlock` is a shared borrow of atomics (what `new`'s contract makes of the
// memory), and `&[AtomicU64]` is `Send` and `Sync`: every access is atomic.
unsafe impl Send for SharedBlock<'_> {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedBlock<'_> {}

impl<'a> SharedBlock<'a> {
    /// The block at `base`.
    ///
    /// # Safety
    ///
    /// For all of `'a`: `base` is non-null, 8-byte aligned and valid for reads and writes of
    /// [`BLOCK_SIZE`] bytes that stay mapped; this process touches them only through atomics
    /// of the width the barrier layout gives each place (no `&[u8]` to them exists). Other
    /// processes may do anything to them.
    pub unsafe fn new(base: *mut u8) -> SharedBlock<'a> {
        assert!(!base.is_null() && base.align_offset(8) == 0, "misaligned barrier block");
        SharedBlock { base, _memory: PhantomData }
    }

    /// A block in this process's memory, for threads.
    pub fn of_atomics(words: &'a [AtomicU64; BLOCK_SIZE / 8]) -> SharedBlock<'a> {
        // SAFETY: the array is BLOCK_SIZE bytes of atomics, 8-byte aligned, borrowed for 'a;
        // everything touches it through atomics (it is made of them; the 32-bit views this
        // type makes of its halves are atomics too, and all of this process's accesses to a
        // place have the width the layout gives it).
        unsafe { SharedBlock::new(words.as_ptr().cast::<u8>().cast_mut()) }
    }

    fn u32_at(&self, at: usize) -> &'a AtomicU32 {
        assert!(at % 4 == 0 && at + 4 <= BLOCK_SIZE, "bad barrier word {at:#x}");
        // SAFETY: inside the block and 4-byte aligned (asserted; the base is 8-byte
        // aligned), valid for 'a and only accessed atomically at this width (`new`'s
        // contract).
        unsafe { AtomicU32::from_ptr(self.base.add(at).cast::<u32>()) }
    }

    fn u64_at(&self, at: usize) -> &'a AtomicU64 {
        assert!(at % 8 == 0 && at + 8 <= BLOCK_SIZE, "bad barrier word {at:#x}");
        // SAFETY: as in `u32_at`, 8 bytes, 8-byte aligned.
        unsafe { AtomicU64::from_ptr(self.base.add(at).cast::<u64>()) }
    }

    /// The state word, to sleep on.
    fn state_word(&self) -> &'a AtomicU32 {
        self.u32_at(OFF_STATE)
    }
}

impl Words for SharedBlock<'_> {
    fn load32(&self, at: usize) -> u32 {
        self.u32_at(at).load(Ordering::SeqCst)
    }
    fn store32(&self, at: usize, v: u32) {
        self.u32_at(at).store(v, Ordering::SeqCst)
    }
    fn cas32(&self, at: usize, current: u32, new: u32) -> Result<u32, u32> {
        self.u32_at(at).compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
    }
    fn fetch_add32(&self, at: usize, v: u32) -> u32 {
        self.u32_at(at).fetch_add(v, Ordering::SeqCst)
    }
    fn load64(&self, at: usize) -> u64 {
        self.u64_at(at).load(Ordering::SeqCst)
    }
    fn store64(&self, at: usize, v: u64) {
        self.u64_at(at).store(v, Ordering::SeqCst)
    }
    fn fetch_or64(&self, at: usize, v: u64) -> u64 {
        self.u64_at(at).fetch_or(v, Ordering::SeqCst)
    }
}

/// Run a machine of `monarch_proto::barrier` to its end.
fn run<T>(mut step: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(t) = step() {
            return t;
        }
    }
}

/// One process's handle on a barrier.
#[derive(Debug, Clone, Copy)]
pub struct Barrier<'a> {
    block: SharedBlock<'a>,
    header: Header,
    me: Option<u16>,
    owner: bool,
    bell: Doorbell,
}

impl<'a> Barrier<'a> {
    /// The owner initialises the block with `header` (before anyone attaches) and holds it;
    /// `me` is its participant number if it is one of the participants too.
    pub fn create(block: SharedBlock<'a>, header: Header, me: Option<u16>, bell: Doorbell) -> Barrier<'a> {
        header.write(&block);
        Barrier { block, header, me, owner: true, bell }
    }

    /// Participant `me` attaches to the barrier of `generation` in `block`.
    pub fn attach(
        block: SharedBlock<'a>,
        generation: u32,
        me: u16,
        bell: Doorbell,
    ) -> Result<Barrier<'a>, HeaderError> {
        let header = Header::read(&block, generation)?;
        if me >= header.participants {
            return Err(HeaderError::NotAParticipant { me, participants: header.participants });
        }
        Ok(Barrier { block, header, me: Some(me), owner: false, bell })
    }

    /// The block's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// How many participants arrived so far (for progress reports).
    pub fn arrived(&self) -> u32 {
        self.block.load32(OFF_ARRIVED)
    }

    fn wake(&self) {
        self.bell.wake(self.block.state_word());
    }

    /// Arrive (a participant); the last arrival releases and wakes everyone.
    pub fn arrive(&self) -> Arrived {
        let me = self.me.expect("only a participant arrives");
        let mut a = Arrive::new(&self.header, me);
        let r = run(|| a.step(&self.block));
        if r.wake {
            self.wake();
        }
        r
    }

    /// Look at the barrier now.
    pub fn poll(&self) -> Outcome {
        let mut p = Poll::new(&self.header, self.me, monotonic_ns());
        run(|| p.step(&self.block))
    }

    /// Wait until the barrier is decided, at most until `until_ns` (`CLOCK_MONOTONIC`). The
    /// owner's wait also ends at the barrier's deadline, with [`Outcome::TimedOut`]: it must
    /// then [`Barrier::decide`]. A participant's goes on past the deadline, waiting for the
    /// owner's decision, until `until_ns` (after which it may [`Barrier::abort`] with
    /// `reason::OWNER_SILENT`).
    pub fn wait(&self, until_ns: u64) -> Outcome {
        loop {
            let o = self.poll();
            let now = monotonic_ns();
            let ends =
                o.is_final() || (self.owner && matches!(o, Outcome::TimedOut { .. })) || now >= until_ns;
            let (false, Outcome::Waiting { seen } | Outcome::TimedOut { seen, .. }) = (ends, &o) else {
                return o;
            };
            let seen = *seen;
            let mut wake_at = until_ns;
            if now < self.header.deadline_ns {
                wake_at = wake_at.min(self.header.deadline_ns);
            }
            let left = Duration::from_nanos(wake_at - now);
            let slice = if self.bell == Doorbell::Futex { left.min(SLICE) } else { left };
            self.bell.wait(self.block.state_word(), seen, slice);
        }
    }

    /// The owner's decision at the deadline (see `monarch_proto::barrier`): release without
    /// the missing, or abort, by the barrier's policy; everyone is woken. Only the owner
    /// calls it. It may call it before the deadline it wrote: deciding is what makes the
    /// deadline pass.
    pub fn decide(&self) -> Outcome {
        assert!(self.owner, "only the barrier's owner decides");
        let mut d = Decide::new(&self.header);
        let r = run(|| d.step(&self.block));
        if r.wake {
            self.wake();
        }
        r.outcome
    }

    /// The owner's whole part: arrive if it is a participant, wait until the barrier is
    /// released or the deadline passed, then decide. At most until `until_ns`.
    pub fn own(&self, until_ns: u64) -> Outcome {
        assert!(self.owner, "only the barrier's owner owns it");
        if self.me.is_some() {
            self.arrive();
        }
        match self.wait(until_ns) {
            Outcome::TimedOut { .. } => self.decide(),
            o => o,
        }
    }

    /// Abort the barrier with `reason` (anyone may): the state afterwards, aborted (or
    /// released, when it was too late to abort).
    pub fn abort(&self, reason: u32) -> State {
        let mut a = Abort::new(reason);
        let (state, wake) = run(|| a.step(&self.block));
        if wake {
            self.wake();
        }
        state
    }
}

/// A barrier block in a file of its own (under `/dev/shm`), mapped shared.
#[derive(Debug)]
pub struct BarrierFile {
    map: MmapRaw,
    path: PathBuf,
}

impl BarrierFile {
    /// Create (or truncate and reuse) the file at `path`, sized for one block, and map it.
    /// The block is zero until [`Barrier::create`] writes it.
    pub fn create(path: &Path) -> io::Result<BarrierFile> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len(BLOCK_SIZE as u64)?;
        Self::map(&file, path)
    }

    /// Map the existing barrier file at `path`.
    pub fn open(path: &Path) -> io::Result<BarrierFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        if file.metadata()?.len() < BLOCK_SIZE as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too small for a barrier block"));
        }
        Self::map(&file, path)
    }

    fn map(file: &File, path: &Path) -> io::Result<BarrierFile> {
        let map = MmapOptions::new().len(BLOCK_SIZE).map_raw(file)?;
        Ok(BarrierFile { map, path: path.to_path_buf() })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The block. The file must keep its size while mapped: a peer that truncates it makes
    /// the next access a SIGBUS (barrier files are the owner's, never shrunk).
    pub fn block(&self) -> SharedBlock<'_> {
        // SAFETY: the mapping is BLOCK_SIZE bytes, page-aligned, shared and writable, and
        // lives as long as `self`, which the block borrows; this process touches it only
        // through `SharedBlock`, i.e. through atomics of the layout's widths.
        unsafe { SharedBlock::new(self.map.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests;
