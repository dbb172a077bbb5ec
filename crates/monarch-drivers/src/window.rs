//! Memory windows: a register page plus a data area in memory both sides can write.
//!
//! What the protocol does with a window is the consumer-side trait [`WindowMemory`]:
//! registers (atomic loads, stores, compare-and-swap), seqlock messages, doorbells, and
//! copies into and out of the data area, with and without a checksum. Its backends only
//! say where the memory is:
//! - [`Window`]: a mapped file (under `/dev/shm` for RAM, or any path, e.g. a PCI BAR's
//!   `resourceN` in sysfs) or a memfd handed to a child; the peer is another process, or a
//!   device;
//! - [`MemWindow`]: a heap allocation shared between threads of one process, so that both
//!   sides of the handshake can be tested in one process.
//!
//! Every value read from the window is the peer's and untrusted: the drivers hand raw words
//! to `monarch-proto` to validate; the data area's size comes from the backend (the mapping),
//! never from the header.
//!
//! # Memory model: how window memory is accessed
//!
//! The peer writes window memory whenever it likes, protocol or not: a buggy or hostile
//! agent, a monarch that was paused and resumes, a device. Under Rust's memory model a plain
//! access (a `&[u8]`, `copy_nonoverlapping`, a memcpy) that races with a write is undefined
//! behaviour, and so is a volatile one: volatile only keeps the compiler from eliding or
//! merging the access, it does not make a race defined. The compiler may assume that
//! memory it reads plainly does not change under it (and, for example, read it twice where
//! the source reads it once). So this process touches window memory only with atomics:
//! - a register is an `AtomicU32`/`AtomicU64` of its width: Acquire loads, Release stores,
//!   AcqRel read-modify-writes;
//! - the data area is copied a naturally aligned 64-bit word at a time, with Relaxed
//!   `AtomicU64` loads and stores ([`SharedBytes`]); a range that starts or ends inside a
//!   word reads that word whole, or changes only its own bytes of it by compare-and-swap.
//!   Both sides' accesses to a word are therefore the same size, which the model requires
//!   of racing atomic writes.
//!
//! A racing copy is then defined: each word is copied as one of the values it held, and a
//! copy mixes old and new words at worst, which the checksum that every image is judged by
//! catches. The Relaxed copies need no ordering of their own: the side that writes data
//! publishes it afterwards with a Release store in the register page (a message's
//! publication word, `stream.produced`), and the side that reads data reads it only after an
//! Acquire load of that register saw the publication; the reader hands a region back the same
//! way (`stream.consumed`), so its reads happen before the writer overwrites the region.
//! Data is never hashed or used in place: it is copied into this process's own memory first,
//! and the copy is what is checksummed (and, for an image, what runs).
//!
//! A peer in another process, or a device, is not part of this program, and nothing it does
//! can make this program's behaviour undefined as long as this program's own accesses do not
//! assume the memory stable: an atomic load is never assumed to return what an earlier one
//! did, nor re-done to fetch a value again. The in-memory backend ([`MemWindow`]) has the
//! peer on another thread of this program, where the rules above are the whole story.
//!
//! One writer is not this process's code: [`WindowMemory::fill_from_file`] asks the kernel
//! to read(2) an image straight into the data area. That copy happens inside the system call,
//! before the Release store that publishes the image, like a device's DMA.
//!
//! What the copies cost next to memcpy is measured by the `hot_paths` bench.

mod heap;
mod mmap;
mod shared;

pub use heap::MemWindow;
pub use mmap::Window;
pub use shared::SharedBytes;

use crate::doorbell::{self, Doorbell};
use monarch_proto::checksum::{Algo, Digest, Hasher};
use monarch_proto::window::layout::{self, Reg, Width};
use monarch_proto::window::msg::{RegisterError, SeqWord};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use thiserror::Error;

// monarch targets 64-bit machines: every u64 offset inside a window fits a usize.
const _: () = assert!(usize::BITS == 64, "monarch-drivers needs a 64-bit target");

/// A u64 that is known to index memory (bounded by a window's length) as usize.
#[allow(clippy::cast_possible_truncation)] // lossless on 64-bit targets (asserted above)
fn idx(v: u64) -> usize {
    v as usize
}

/// Piece size of copy-and-hash loops: a piece is hashed right after it is copied, while it
/// is still in L1.
pub const CHUNK: usize = 32 << 10;

/// Errors opening or using a window.
#[derive(Debug, Error)]
pub enum WindowError {
    /// The backing file could not be created, opened, sized or mapped (or the memory of an
    /// in-memory window allocated).
    #[error("window {path}: {what}: {source}")]
    Io {
        /// The window's path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is too small to hold even the register page.
    #[error(
        "window {path}: {len} bytes is smaller than the {}-byte register page; give the window a size of at least the image size plus 4 KiB",
        layout::REGS_SIZE
    )]
    TooSmall {
        /// The window's path.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// A data-area access outside the data area.
    #[error("window {path}: {len} bytes at data offset {offset} overrun the {data_size}-byte data area")]
    OutOfBounds {
        /// The window's path.
        path: PathBuf,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Data area size.
        data_size: u64,
    },
}

/// Outcome of reading a peer's message block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll<T> {
    /// Nothing new since the last message taken.
    Nothing,
    /// A new, complete message with its sequence number.
    Message(u32, T),
    /// A new message that does not decode, with its sequence number.
    Garbage(u32, RegisterError),
}

/// Which kind of doorbell wait a window uses.
pub use doorbell::Doorbell as DoorbellKind;

/// The register of `r` (a 32-bit one inside the page). Panics on a bad register: registers
/// are constants of `monarch_proto::window::layout`, never values from the peer.
fn reg32(mem: SharedBytes<'_>, r: Reg) -> &AtomicU32 {
    assert!(r.width == Width::W32 && r.offset + 4 <= layout::REGS_SIZE, "bad register {r:?}");
    mem.u32_at(r.offset)
}

/// As [`reg32`], for a 64-bit register.
fn reg64(mem: SharedBytes<'_>, r: Reg) -> &AtomicU64 {
    assert!(r.width == Width::W64 && r.offset + 8 <= layout::REGS_SIZE, "bad register {r:?}");
    mem.u64_at(r.offset)
}

/// Where `len` bytes at data offset `offset` of `w` are in its [`WindowMemory::memory`], or
/// why they are not in the data area.
fn data_at<W: WindowMemory + ?Sized>(w: &W, offset: u64, len: u64) -> Result<usize, WindowError> {
    let data_size = w.data_size();
    match offset.checked_add(len) {
        Some(end) if end <= data_size => Ok(layout::REGS_SIZE + idx(offset)),
        _ => Err(WindowError::OutOfBounds { path: w.path().to_path_buf(), offset, len, data_size }),
    }
}

/// A window as the protocol uses it, whatever memory it lives in.
///
/// A backend provides the memory ([`WindowMemory::memory`]), a name, a doorbell kind and
/// the agent lock; every protocol operation is a provided method built on those, the same
/// for every backend. Generic code takes `&impl WindowMemory` (the trait is not object safe:
/// its message and progress callbacks are generic).
pub trait WindowMemory {
    /// The window's bytes: register page, then data area.
    fn memory(&self) -> SharedBytes<'_>;

    /// The window's name: its file's path, `memfd:NAME` or `memory:NAME`. For messages.
    fn path(&self) -> &Path;

    /// How waits on this window's doorbells are done.
    fn doorbell(&self) -> Doorbell;

    /// Take the window's agent lock without waiting: true if taken (or already held through
    /// this handle). There is never more than one agent on a window, and a new monarch can
    /// tell whether a secondary's agent is still alive: the lock goes with its holder.
    fn try_lock(&self) -> std::io::Result<bool>;

    /// Release the lock taken with [`WindowMemory::try_lock`].
    fn unlock(&self);

    /// Size of the data area, from the memory (never from the header).
    fn data_size(&self) -> u64 {
        self.memory().len().saturating_sub(layout::REGS_SIZE) as u64
    }

    /// Load a register (Acquire).
    fn load(&self, r: Reg) -> u64 {
        match r.width {
            Width::W32 => u64::from(reg32(self.memory(), r).load(Ordering::Acquire)),
            Width::W64 => reg64(self.memory(), r).load(Ordering::Acquire),
        }
    }

    /// Load a 32-bit register (Acquire).
    fn load32(&self, r: Reg) -> u32 {
        reg32(self.memory(), r).load(Ordering::Acquire)
    }

    /// Store a register (Release). A 32-bit register takes the low half of `v`.
    fn store(&self, r: Reg, v: u64) {
        match r.width {
            Width::W32 => {
                reg32(self.memory(), r).store(u32::try_from(v & 0xffff_ffff).unwrap_or(0), Ordering::Release)
            }
            Width::W64 => reg64(self.memory(), r).store(v, Ordering::Release),
        }
    }

    /// Compare-and-swap a register (AcqRel): `Ok(previous)` when it held `current` and now
    /// holds `new`, `Err(actual)` otherwise. The backplane's claim and deconfigure steps.
    fn compare_exchange(&self, r: Reg, current: u64, new: u64) -> Result<u64, u64> {
        match r.width {
            Width::W32 => {
                let (Ok(c), Ok(n)) = (u32::try_from(current), u32::try_from(new)) else {
                    return Err(self.load(r));
                };
                reg32(self.memory(), r)
                    .compare_exchange(c, n, Ordering::AcqRel, Ordering::Acquire)
                    .map(u64::from)
                    .map_err(u64::from)
            }
            Width::W64 => {
                reg64(self.memory(), r).compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            }
        }
    }

    /// Zero every register (a 64-bit store per word); the data area is left alone. Meant
    /// for before the peer starts: a peer thread of this process touching a 32-bit register
    /// meanwhile would race with a store of another size (a peer process is not this
    /// program: to it both are single aligned accesses).
    fn clear_registers(&self) {
        for off in (0..layout::REGS_SIZE).step_by(8) {
            self.store(Reg { offset: off, width: Width::W64, name: "page" }, 0);
        }
    }

    /// Apply register writes in order (each a Release store).
    fn apply(&self, writes: &[layout::Write]) {
        for (r, v) in writes {
            self.store(*r, *v);
        }
    }

    /// Ring a doorbell: increment it and wake whoever waits on it.
    fn ring(&self, bell: Reg) {
        let w = reg32(self.memory(), bell);
        w.fetch_add(1, Ordering::AcqRel);
        self.doorbell().wake(w);
    }

    /// Current value of a doorbell (take it *before* reading the message it guards).
    fn bell_value(&self, bell: Reg) -> u32 {
        reg32(self.memory(), bell).load(Ordering::Acquire)
    }

    /// Wait until the doorbell differs from `seen`, at most `timeout`. True if it rang.
    fn wait_bell(&self, bell: Reg, seen: u32, timeout: Duration) -> bool {
        self.doorbell().wait(reg32(self.memory(), bell), seen, timeout)
    }

    /// Read a message block seqlock-style: publication word, payload, publication word.
    fn read_message<T>(
        &self,
        seq_reg: Reg,
        last_seq: u32,
        decode: impl Fn(&dyn Fn(Reg) -> u64) -> Result<T, RegisterError>,
    ) -> Poll<T> {
        const TRIES: usize = 64;
        for _ in 0..TRIES {
            let first = self.load32(seq_reg);
            let seq = match SeqWord::from_raw(first) {
                SeqWord::Empty | SeqWord::Busy => return Poll::Nothing,
                SeqWord::Published(n) if n == last_seq => return Poll::Nothing,
                SeqWord::Published(n) => n,
            };
            let value = decode(&|r| self.load(r));
            if self.load32(seq_reg) == first {
                return match value {
                    Ok(v) => Poll::Message(seq, v),
                    Err(e) => Poll::Garbage(seq, e),
                };
            }
            std::hint::spin_loop();
        }
        Poll::Garbage(last_seq, RegisterError::Unstable(seq_reg.name))
    }

    /// Post a message with the writes from `monarch_proto::window::msg::encode_*`, then ring.
    fn post(&self, writes: &[layout::Write], bell: Reg) {
        self.apply(writes);
        self.ring(bell);
    }

    /// Copy `src` into the data area at `offset` (the reference design's memcpy into the BAR),
    /// a Relaxed atomic store per word: publish it with a Release store afterwards.
    fn write_data(&self, offset: u64, src: &[u8]) -> Result<(), WindowError> {
        let at = data_at(self, offset, src.len() as u64)?;
        self.memory().write(at, src);
        Ok(())
    }

    /// Copy `dst.len()` bytes of the data area at `offset` into `dst` (memory we own), a
    /// Relaxed atomic load per word: read it after an Acquire load saw it published. Words
    /// the peer changes meanwhile are copied as one of the values they held.
    fn read_data(&self, offset: u64, dst: &mut [u8]) -> Result<(), WindowError> {
        let at = data_at(self, offset, dst.len() as u64)?;
        self.memory().read(at, dst);
        Ok(())
    }

    /// Read `len` bytes of `file` at `file_offset` straight into the data area at `offset`
    /// (one copy, by the kernel, from the page cache into the window; the image never has to
    /// sit in this process's memory). Publish it with a Release store afterwards, as after
    /// [`WindowMemory::write_data`].
    fn fill_from_file(
        &self,
        offset: u64,
        file: &File,
        file_offset: u64,
        len: u64,
    ) -> Result<(), WindowError> {
        use std::os::fd::AsRawFd;
        let at = data_at(self, offset, len)?;
        let n = idx(len);
        let dst = self.memory().raw_at(at, n);
        let mut done = 0usize;
        while done < n {
            let Some(pos) = file_offset.checked_add(done as u64).and_then(|p| i64::try_from(p).ok()) else {
                let data_size = self.data_size();
                return Err(WindowError::OutOfBounds { path: self.path().into(), offset, len, data_size });
            };
            // SAFETY: `dst + done .. dst + n` is inside the window memory (`raw_at` checked
            // `at + n`), which stays valid while `self` is borrowed; pread writes at most
            // `n - done` bytes there and nothing else. This process never reads or writes that
            // memory through the pointer: the kernel does, which `SharedBytes::new` allows.
            let r = unsafe { libc::pread(file.as_raw_fd(), dst.wrapping_add(done).cast(), n - done, pos) };
            match r {
                r if r > 0 => done += r.unsigned_abs(),
                0 => {
                    return Err(WindowError::Io {
                        path: self.path().into(),
                        what: "read image (file shorter than expected)",
                        source: std::io::ErrorKind::UnexpectedEof.into(),
                    });
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(WindowError::Io {
                            path: self.path().into(),
                            what: "read image",
                            source: e,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Checksum `len` bytes of the data area at `offset`, through a bounce buffer (window
    /// memory is never hashed in place: only copies of it are). `progress` is called with the
    /// bytes done after every chunk.
    fn digest_data(
        &self,
        offset: u64,
        len: u64,
        algo: Algo,
        mut progress: impl FnMut(u64),
    ) -> Result<Digest, WindowError> {
        data_at(self, offset, len)?;
        let mut h = Hasher::new(algo);
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = idx((len - done).min(CHUNK as u64));
            self.read_data(offset + done, &mut buf[..n])?;
            h.update(&buf[..n]);
            done += n as u64;
            progress(done);
        }
        Ok(h.finish())
    }

    /// Copy `dst.len()` bytes at `offset` into `dst` while checksumming what was copied (the
    /// copy, not the window: the digest is of exactly the bytes `dst` ends up holding).
    fn copy_out_digest(
        &self,
        offset: u64,
        dst: &mut [u8],
        algo: Algo,
        mut progress: impl FnMut(u64),
    ) -> Result<Digest, WindowError> {
        data_at(self, offset, dst.len() as u64)?;
        let mut h = Hasher::new(algo);
        let mut done = 0usize;
        for chunk in dst.chunks_mut(CHUNK) {
            self.read_data(offset + done as u64, chunk)?;
            h.update(chunk);
            done += chunk.len();
            progress(done as u64);
        }
        Ok(h.finish())
    }
}

#[cfg(test)]
mod tests;
