//! Memory windows: a register page plus a data area in memory both sides map.
//!
//! Backends: a file (under `/dev/shm` for RAM, or any path, e.g. a PCI BAR's `resourceN`
//! in sysfs) or a memfd handed to a child. Registers are touched only through atomics
//! (Acquire loads, Release stores) derived from raw pointers into the mapping; the data area
//! only through bulk copies between the mapping and memory this process owns. No Rust
//! reference to window memory the other side writes is ever created (`AtomicU32`/`AtomicU64`
//! are the exception that proves the rule: they are the sanctioned way to share a word).
//!
//! Every value read from the window is the peer's and untrusted: the drivers hand raw words
//! to `monarch-proto` to validate; the data area's size comes from the mapping, never from
//! the header.

use crate::doorbell::{self, Doorbell};
use memmap2::{MmapOptions, MmapRaw};
use monarch_proto::checksum::{Algo, Digest, Hasher};
use monarch_proto::window::layout::{self, Reg, Width};
use monarch_proto::window::msg::{RegisterError, SeqWord};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use thiserror::Error;

// monarch targets 64-bit machines: every u64 offset inside a mapping fits a usize.
const _: () = assert!(usize::BITS == 64, "monarch-drivers needs a 64-bit target");

/// A u64 that is known to index memory (bounded by a mapping's length) as usize.
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
    /// The backing file could not be created, opened, sized or mapped.
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

/// A mapped window.
pub struct Window {
    map: MmapRaw,
    _file: File,
    path: PathBuf,
    data_size: u64,
    bell: Doorbell,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window").field("path", &self.path).field("data_size", &self.data_size).finish()
    }
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

impl Window {
    /// Create the file at `path` (or reuse it) as a window with `data_size` bytes of data
    /// area, map it and zero its register page. Done by the primary. An existing file is
    /// resized in place, not replaced, so an external agent that already waits on that
    /// path keeps seeing the same memory.
    pub fn create(path: &Path, data_size: u64) -> Result<Window, WindowError> {
        let w = Self::create_keep(path, data_size)?;
        w.clear_registers();
        Ok(w)
    }

    /// [`Window::create`] without zeroing the register page: for a monarch of several, whose
    /// chassis zeroed every window at power-on, and which must not wipe what a newer monarch
    /// may have written since.
    pub fn create_keep(path: &Path, data_size: u64) -> Result<Window, WindowError> {
        let (file, len) = Self::open_sized(path, data_size, true)?;
        Self::map(file, path.to_path_buf(), len)
    }

    /// Open (or create) the window file at `path` and give it the length of a window with
    /// `data_size` bytes of data area: exactly (`exact`), or at least. In place, never
    /// replaced.
    fn open_sized(path: &Path, data_size: u64, exact: bool) -> Result<(File, u64), WindowError> {
        let io = |what| move |source| WindowError::Io { path: path.to_path_buf(), what, source };
        let len = layout::window_len(data_size).ok_or(WindowError::TooSmall { path: path.into(), len: 0 })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io("create"))?;
        if exact || file.metadata().map_err(io("stat"))?.len() < len {
            file.set_len(len).map_err(io("set size"))?;
        }
        Ok((file, len))
    }

    /// Create an anonymous window (a memfd) with `data_size` bytes of data area, for a child
    /// process that inherits it (see [`Window::fd`]). `name` shows in `/proc/PID/fd`.
    pub fn create_memfd(name: &str, data_size: u64) -> Result<Window, WindowError> {
        let path = PathBuf::from(format!("memfd:{name}"));
        let io = |what| {
            let path = path.clone();
            move |source| WindowError::Io { path, what, source }
        };
        let len =
            layout::window_len(data_size).ok_or(WindowError::TooSmall { path: path.clone(), len: 0 })?;
        let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| io("memfd_create")(e.into()))?;
        let file = File::from(fd);
        file.set_len(len).map_err(io("set size"))?;
        Self::map(file, path, len)
    }

    /// The descriptor of the backing file (to hand a memfd window to a child process).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self._file.as_fd()
    }

    /// Zero every register (word by word, atomically); the data area is left alone.
    pub fn clear_registers(&self) {
        for off in (0..layout::REGS_SIZE).step_by(8) {
            self.store(Reg { offset: off, width: Width::W64, name: "page" }, 0);
        }
    }

    /// Map an existing window file. Done by the secondary (or a primary attaching to a
    /// window someone else sized, such as a PCI BAR).
    pub fn open(path: &Path) -> Result<Window, WindowError> {
        let io = |what| move |source| WindowError::Io { path: path.to_path_buf(), what, source };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        Self::map(file, path.to_path_buf(), len)
    }

    /// [`Window::create_keep`], but map only the register page: nothing of the data area is
    /// mapped or faulted in, so it is fast whatever the window's size. For touching registers
    /// only (a new monarch claiming `cfg.epoch` in every window before it acts); data access
    /// through it is refused (its data area is empty).
    pub fn registers_of(path: &Path, data_size: u64) -> Result<Window, WindowError> {
        let (file, _) = Self::open_sized(path, data_size, false)?;
        let map = MmapOptions::new()
            .len(layout::REGS_SIZE)
            .map_raw(&file)
            .map_err(|source| WindowError::Io { path: path.to_path_buf(), what: "mmap", source })?;
        Ok(Window { map, _file: file, path: path.to_path_buf(), data_size: 0, bell: Doorbell::detect() })
    }

    fn map(file: File, path: PathBuf, len: u64) -> Result<Window, WindowError> {
        if len < layout::REGS_SIZE as u64 {
            return Err(WindowError::TooSmall { path, len });
        }
        // MAP_POPULATE: fault the whole window in now, at configure time, so the copy and the
        // verification run at memory speed instead of taking a page fault every 4 KiB.
        let map = MmapOptions::new().populate().map_raw(&file).map_err(|source| WindowError::Io {
            path: path.clone(),
            what: "mmap",
            source,
        })?;
        // MAP_POPULATE maps a shared file's pages read-only first; the first store to each
        // page would still fault. MADV_POPULATE_WRITE (Linux 5.14) maps them writable now.
        // Older kernels answer EINVAL: the window still works, a little slower.
        // SAFETY: the range is exactly this mapping; the advice only pre-faults pages and
        // never changes their contents.
        let _ = unsafe { libc::madvise(map.as_mut_ptr().cast(), map.len(), libc::MADV_POPULATE_WRITE) };
        let data_size = (map.len() - layout::REGS_SIZE) as u64;
        Ok(Window { map, _file: file, path, data_size, bell: Doorbell::detect() })
    }

    /// Use bounded polling instead of futex waits (for windows shared across kernels).
    pub fn set_doorbell(&mut self, bell: Doorbell) {
        self.bell = bell;
    }

    /// The window's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the data area, from the mapping.
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    fn word32(&self, r: Reg) -> &AtomicU32 {
        assert!(
            r.width == Width::W32 && r.offset % 4 == 0 && r.offset + 4 <= layout::REGS_SIZE,
            "bad register {r:?}"
        );
        // SAFETY: the mapping is at least REGS_SIZE bytes long (checked in `map`), page
        // aligned, and lives as long as `self`; the offset is 4-byte aligned and inside the
        // register page (asserted above). AtomicU32 has the layout of u32 and tolerates
        // concurrent access from the other process, which only ever uses atomic accesses too.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(r.offset).cast::<u32>()) }
    }

    fn word64(&self, r: Reg) -> &AtomicU64 {
        assert!(
            r.width == Width::W64 && r.offset % 8 == 0 && r.offset + 8 <= layout::REGS_SIZE,
            "bad register {r:?}"
        );
        // SAFETY: as in `word32`, with 8-byte alignment (the mapping is page aligned).
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(r.offset).cast::<u64>()) }
    }

    /// Load a register (Acquire).
    pub fn load(&self, r: Reg) -> u64 {
        match r.width {
            Width::W32 => u64::from(self.word32(r).load(Ordering::Acquire)),
            Width::W64 => self.word64(r).load(Ordering::Acquire),
        }
    }

    /// Load a 32-bit register (Acquire).
    pub fn load32(&self, r: Reg) -> u32 {
        self.word32(r).load(Ordering::Acquire)
    }

    /// Store a register (Release). A 32-bit register takes the low half of `v`.
    pub fn store(&self, r: Reg, v: u64) {
        match r.width {
            Width::W32 => {
                self.word32(r).store(u32::try_from(v & 0xffff_ffff).unwrap_or(0), Ordering::Release)
            }
            Width::W64 => self.word64(r).store(v, Ordering::Release),
        }
    }

    /// Compare-and-swap a register (AcqRel): `Ok(previous)` when it held `current` and now
    /// holds `new`, `Err(actual)` otherwise. The backplane's claim and deconfigure steps.
    pub fn compare_exchange(&self, r: Reg, current: u64, new: u64) -> Result<u64, u64> {
        match r.width {
            Width::W32 => {
                let (Ok(c), Ok(n)) = (u32::try_from(current), u32::try_from(new)) else {
                    return Err(self.load(r));
                };
                self.word32(r)
                    .compare_exchange(c, n, Ordering::AcqRel, Ordering::Acquire)
                    .map(u64::from)
                    .map_err(u64::from)
            }
            Width::W64 => self.word64(r).compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire),
        }
    }

    /// Take the window's exclusive lock without waiting (`flock`): true if taken. An agent
    /// holds it for its whole life, so there is never more than one agent on a window, and
    /// a new monarch can tell whether a secondary's agent is still alive (the lock goes
    /// with the last descriptor, when the agent exits or execs its image).
    pub fn try_lock(&self) -> std::io::Result<bool> {
        match rustix::fs::flock(&self._file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Release the lock taken with [`Window::try_lock`].
    pub fn unlock(&self) {
        let _ = rustix::fs::flock(&self._file, rustix::fs::FlockOperation::Unlock);
    }

    /// Apply register writes in order (each a Release store).
    pub fn apply(&self, writes: &[layout::Write]) {
        for (r, v) in writes {
            self.store(*r, *v);
        }
    }

    /// Ring a doorbell: increment it and wake whoever waits on it.
    pub fn ring(&self, bell: Reg) {
        let w = self.word32(bell);
        w.fetch_add(1, Ordering::AcqRel);
        self.bell.wake(w);
    }

    /// Current value of a doorbell (take it *before* reading the message it guards).
    pub fn bell_value(&self, bell: Reg) -> u32 {
        self.word32(bell).load(Ordering::Acquire)
    }

    /// Wait until the doorbell differs from `seen`, at most `timeout`. True if it rang.
    pub fn wait_bell(&self, bell: Reg, seen: u32, timeout: Duration) -> bool {
        self.bell.wait(self.word32(bell), seen, timeout)
    }

    /// Read a message block seqlock-style: publication word, payload, publication word.
    pub fn read_message<T>(
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
    pub fn post(&self, writes: &[layout::Write], bell: Reg) {
        self.apply(writes);
        self.ring(bell);
    }

    fn data_ptr(&self, offset: u64, len: usize) -> Result<*mut u8, WindowError> {
        let end = offset.checked_add(len as u64);
        match end {
            Some(end) if end <= self.data_size => {}
            _ => {
                return Err(WindowError::OutOfBounds {
                    path: self.path.clone(),
                    offset,
                    len: len as u64,
                    data_size: self.data_size,
                });
            }
        }
        // SAFETY: offset + len <= data_size (checked above), and the data area starts at
        // REGS_SIZE inside a mapping of REGS_SIZE + data_size bytes, so the pointer and the
        // `len` bytes after it are inside the mapping. `offset` fits usize because it is below
        // the mapping's length, itself a usize.
        Ok(unsafe { self.map.as_mut_ptr().add(layout::REGS_SIZE + idx(offset)) })
    }

    /// Copy `src` into the data area at `offset` (the reference design's memcpy into the BAR).
    pub fn write_data(&self, offset: u64, src: &[u8]) -> Result<(), WindowError> {
        let dst = self.data_ptr(offset, src.len())?;
        // SAFETY: `dst..dst+len` is inside the mapping (data_ptr), `src` is our own memory
        // and cannot overlap a shared mapping we only reach through raw pointers. The peer
        // may read concurrently; that race is the protocol's to prevent (it only reads after
        // STAGED), and at worst it reads stale bytes, which the checksum catches.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    /// Read `len` bytes of `file` at `file_offset` straight into the data area at `offset`
    /// (one copy, from the page cache into the window; the image never has to sit in this
    /// process's memory).
    pub fn fill_from_file(
        &self,
        offset: u64,
        file: &File,
        file_offset: u64,
        len: u64,
    ) -> Result<(), WindowError> {
        use std::os::fd::AsRawFd;
        let n = usize::try_from(len).map_err(|_| self.out_of_bounds(offset, len))?;
        let dst = self.data_ptr(offset, n)?;
        let mut done = 0usize;
        while done < n {
            let at = i64::try_from(file_offset + done as u64).map_err(|_| self.out_of_bounds(offset, len))?;
            // SAFETY: `dst + done .. dst + n` is inside the mapping (data_ptr checked
            // offset + n); pread writes at most `n - done` bytes there and nothing else. No
            // Rust reference to the window is created.
            let r = unsafe { libc::pread(file.as_raw_fd(), dst.add(done).cast(), n - done, at) };
            match r {
                r if r > 0 => done += r.unsigned_abs(),
                0 => {
                    return Err(WindowError::Io {
                        path: self.path.clone(),
                        what: "read image (file shorter than expected)",
                        source: std::io::ErrorKind::UnexpectedEof.into(),
                    });
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(WindowError::Io {
                            path: self.path.clone(),
                            what: "read image",
                            source: e,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn out_of_bounds(&self, offset: u64, len: u64) -> WindowError {
        WindowError::OutOfBounds { path: self.path.clone(), offset, len, data_size: self.data_size }
    }

    /// Copy `dst.len()` bytes of the data area at `offset` into `dst` (memory we own).
    pub fn read_data(&self, offset: u64, dst: &mut [u8]) -> Result<(), WindowError> {
        let src = self.data_ptr(offset, dst.len())?;
        // SAFETY: `src..src+len` is inside the mapping (data_ptr); `dst` is our own memory.
        // Bytes the peer changes concurrently are copied as whatever they are at that moment:
        // never a reference, never UB in this process, and the checksum judges the result.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Checksum `len` bytes of the data area at `offset`, through a bounce buffer (we never
    /// hash shared memory in place: a slice of it would be a reference the peer can write).
    /// `progress` is called with the bytes done after every chunk.
    pub fn digest_data(
        &self,
        offset: u64,
        len: u64,
        algo: Algo,
        mut progress: impl FnMut(u64),
    ) -> Result<Digest, WindowError> {
        self.data_ptr(offset, 0)?;
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

    /// Copy `dst.len()` bytes at `offset` into `dst` while checksumming what was copied.
    pub fn copy_out_digest(
        &self,
        offset: u64,
        dst: &mut [u8],
        algo: Algo,
        mut progress: impl FnMut(u64),
    ) -> Result<Digest, WindowError> {
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

/// Which kind of doorbell wait a window uses.
pub use doorbell::Doorbell as DoorbellKind;

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_proto::window::msg::{self, Command, Status, encode_command, encode_status};

    fn tmp_window(data: u64) -> (tempfile::TempDir, Window) {
        let dir = tempfile::tempdir().unwrap();
        let w = Window::create(&dir.path().join("w.win"), data).unwrap();
        (dir, w)
    }

    #[test]
    fn registers_are_little_endian_at_their_offsets_in_the_file() {
        let (dir, w) = tmp_window(4096);
        w.store(layout::HDR_MAGIC, layout::MAGIC);
        w.store(layout::cmd(0).attempt, 0x0102_0304);
        let bytes = std::fs::read(dir.path().join("w.win")).unwrap();
        assert_eq!(&bytes[0..8], b"MNRCHWIN");
        assert_eq!(&bytes[0x408..0x40C], &[4, 3, 2, 1]);
    }

    #[test]
    fn two_mappings_see_each_others_messages() {
        let (dir, a) = tmp_window(4096);
        let b = Window::open(&dir.path().join("w.win")).unwrap();
        assert_eq!(b.data_size(), 4096);
        a.post(&encode_command(0, 1, 1, &Command::Staged { attempt: 1 }), layout::DB_TO_SECONDARY);
        assert_eq!(b.bell_value(layout::DB_TO_SECONDARY), 1);
        let dec = |r: &dyn Fn(layout::Reg) -> u64| msg::decode_command(0, r);
        assert_eq!(
            b.read_message(layout::cmd(0).seq, 0, dec),
            Poll::Message(1, msg::Stamped { epoch: 1, cmd: Ok(Command::Staged { attempt: 1 }) })
        );
        assert_eq!(b.read_message(layout::cmd(0).seq, 1, dec), Poll::Nothing);
        b.post(&encode_status(1, 1, &Status::Ready { pid: 5 }), layout::DB_TO_PRIMARY);
        assert_eq!(
            a.read_message(layout::ST_SEQ, 0, msg::decode_status),
            Poll::Message(1, Status::Ready { pid: 5 })
        );
    }

    #[test]
    fn a_busy_publication_word_is_not_a_message() {
        let (_d, w) = tmp_window(4096);
        w.store(layout::ST_SEQ, u64::from(3 | msg::SEQ_BUSY));
        assert_eq!(w.read_message(layout::ST_SEQ, 0, msg::decode_status), Poll::Nothing);
    }

    #[test]
    fn garbage_status_is_reported_not_panicked() {
        let (_d, w) = tmp_window(4096);
        w.store(layout::ST_CODE, 0xdead_beef);
        w.store(layout::ST_SEQ, 1);
        assert_eq!(
            w.read_message(layout::ST_SEQ, 0, msg::decode_status),
            Poll::Garbage(1, RegisterError::UnknownStatus(0xdead_beef))
        );
    }

    #[test]
    fn data_access_is_bounds_checked() {
        let (_d, w) = tmp_window(100);
        assert!(w.write_data(0, &[1; 100]).is_ok());
        assert!(matches!(w.write_data(1, &[1; 100]), Err(WindowError::OutOfBounds { .. })));
        assert!(matches!(w.write_data(u64::MAX, &[1]), Err(WindowError::OutOfBounds { .. })));
        let mut buf = [0u8; 100];
        w.read_data(0, &mut buf).unwrap();
        assert_eq!(buf, [1; 100]);
        assert!(w.digest_data(50, 51, Algo::Crc32c, |_| {}).is_err());
    }

    #[test]
    fn digests_in_place_and_while_copying_agree_with_the_one_shot_digest() {
        let (_d, w) = tmp_window(3 * CHUNK as u64 + 17);
        let img: Vec<u8> = (0..(2 * CHUNK + 5)).map(|i| u8::try_from(i * 7 % 251).unwrap()).collect();
        w.write_data(9, &img).unwrap();
        for algo in Algo::ALL {
            let mut last = 0;
            let d = w.digest_data(9, img.len() as u64, algo, |n| last = n).unwrap();
            assert_eq!(d, algo.digest(&img));
            assert_eq!(last, img.len() as u64);
            let mut out = vec![0u8; img.len()];
            assert_eq!(w.copy_out_digest(9, &mut out, algo, |_| {}).unwrap(), algo.digest(&img));
            assert_eq!(out, img);
        }
    }

    #[test]
    fn filling_from_a_file_lands_the_file_bytes() {
        let (dir, w) = tmp_window(10_000);
        let src = dir.path().join("src");
        let bytes: Vec<u8> = (0..9000u32).map(|i| u8::try_from(i % 253).unwrap()).collect();
        std::fs::write(&src, &bytes).unwrap();
        let f = File::open(&src).unwrap();
        w.fill_from_file(100, &f, 1000, 8000).unwrap();
        let mut out = vec![0u8; 8000];
        w.read_data(100, &mut out).unwrap();
        assert_eq!(out, &bytes[1000..9000]);
        assert!(w.fill_from_file(5000, &f, 0, 8000).is_err(), "past the data area");
        assert!(w.fill_from_file(0, &f, 8000, 2000).is_err(), "past the end of the file");
    }

    #[test]
    fn a_file_smaller_than_the_register_page_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("small");
        std::fs::write(&p, [0u8; 100]).unwrap();
        let e = Window::open(&p).unwrap_err();
        assert!(e.to_string().contains("smaller than the 4096-byte register page"), "{e}");
    }

    #[test]
    fn compare_exchange_and_the_agent_lock() {
        let (dir, a) = tmp_window(4096);
        let b = Window::open(&dir.path().join("w.win")).unwrap();
        let r = layout::ST_FENCED;
        assert_eq!(a.compare_exchange(r, 0, 7), Ok(0));
        assert_eq!(b.compare_exchange(r, 0, 9), Err(7), "only one of two claims wins");
        assert_eq!(b.load(r), 7);
        // One lock per window, across mappings (flock is per open file).
        assert!(a.try_lock().unwrap());
        assert!(!b.try_lock().unwrap());
        a.unlock();
        assert!(b.try_lock().unwrap());
        drop(b);
        assert!(a.try_lock().unwrap(), "the lock goes with its holder");
    }
}
