//! [`WindowMemory`]: every protocol operation on a window, provided once for all backends
//! over the memory a backend hands out as [`SharedBytes`].

use super::error::WindowError;
use super::poll::Poll;
use super::shared::SharedBytes;
use crate::doorbell::Doorbell;
use monarch_proto::checksum::{Algo, Digest, Hasher};
use monarch_proto::window::layout::{self, Reg, Width};
use monarch_proto::window::msg::{RegisterError, SeqWord};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

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
        self.doorbell().ring(reg32(self.memory(), bell));
    }

    /// Current value of a doorbell (take it *before* reading the message it guards).
    fn bell_value(&self, bell: Reg) -> u32 {
        crate::doorbell::Doorbell::count(reg32(self.memory(), bell))
    }

    /// Wait until the doorbell differs from `seen`, at most `timeout`. True if it rang.
    fn wait_bell(&self, bell: Reg, seen: u32, timeout: Duration) -> bool {
        self.doorbell().wait_rung(reg32(self.memory(), bell), seen, timeout)
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

    /// Copy `len` bytes at `src_offset` of a mapped image file into the data area at
    /// `offset`, word by word (see [`SourceFile`](super::source::SourceFile)).
    fn copy_from_source(
        &self,
        offset: u64,
        src: &super::source::SourceFile,
        src_offset: u64,
        len: u64,
    ) -> Result<(), WindowError> {
        let at = data_at(self, offset, len)?;
        let from = src.range(src_offset, len)?;
        self.memory().copy_from(at, &src.bytes(), from, idx(len));
        Ok(())
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
        let at = data_at(self, offset, dst.len() as u64)?;
        if algo == Algo::Crc32c {
            // One pass (load, checksum, store each word) where the CPU allows it: pieces of
            // three chunks, each taken as three lockstep chains. Every piece starts on a word
            // when the first does, so the fast path takes all of them or none.
            let mut crc = 0u32;
            let mut done = 0usize;
            for piece in dst.chunks_mut(3 * CHUNK) {
                let n = piece.len();
                let Some(c) = self.memory().read_crc32c(at + done, piece) else { break };
                crc = monarch_proto::checksum::crc32c_combine(crc, c, n as u64);
                done += n;
                progress(done as u64);
            }
            if done == dst.len() {
                let mut d = [0u8; 32];
                d[..4].copy_from_slice(&crc.to_le_bytes());
                return Ok(Digest(d));
            }
        }
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
