//! The mapped-file backend: [`Window`].

use super::error::WindowError;
use super::guard::Guard;
use super::memory::WindowMemory;
use super::poll::Poll;
use super::shared::SharedBytes;
use crate::doorbell::Doorbell;
use memmap2::{MmapOptions, MmapRaw};
use monarch_proto::checksum::{Algo, Digest};
use monarch_proto::window::layout::{self, Reg};
use monarch_proto::window::msg::RegisterError;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A window in a mapped file (under `/dev/shm`, a PCI BAR's `resourceN`, any path) or a
/// memfd: the backend for a peer in another process, or a device.
///
/// It implements [`WindowMemory`]; its protocol methods are also inherent methods of the
/// same name (they forward to the trait), so code that names only `Window` need not import
/// the trait.
pub struct Window {
    /// Declared before `map`, so it is dropped (unregistered) before the mapping goes.
    guard: Guard,
    map: MmapRaw,
    file: File,
    path: PathBuf,
    bell: Doorbell,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window").field("path", &self.path).field("data_size", &self.data_size()).finish()
    }
}

/// What is already at a path about to become a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Nothing.
    Nothing,
    /// A window: an empty file, one whose header carries the window magic (left by an
    /// earlier run), or one of exactly this window's length whose header is not written yet
    /// (a monarch of this run claimed it a moment ago).
    Window,
    /// A device's memory (a PCI BAR's `resourceN` in sysfs): a window by nature.
    Device,
    /// Anything else: a folder, a device node, a file with other contents. Never
    /// overwritten.
    Other(&'static str),
}

/// What is at `path`, for a monarch about to create a window of `window_len` bytes there
/// (register page and data area: `layout::window_len`). Reads at most the header's first
/// word; changes nothing.
pub fn existing(path: &Path, window_len: u64) -> Existing {
    use std::io::Read;
    let Ok(meta) = std::fs::metadata(path) else { return Existing::Nothing };
    if path.starts_with("/sys") {
        return Existing::Device;
    }
    if meta.is_dir() {
        return Existing::Other("a folder");
    }
    if !meta.is_file() {
        return Existing::Other("not a regular file (a device node, a pipe or a socket)");
    }
    if meta.len() == 0 {
        return Existing::Window;
    }
    let mut magic = [0u8; 8];
    let off = layout::HDR_MAGIC.offset;
    let read = File::open(path).and_then(|mut f| {
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(off as u64))?;
        f.read_exact(&mut magic)
    });
    match read {
        Ok(()) if u64::from_le_bytes(magic) == layout::MAGIC => Existing::Window,
        Ok(()) if u64::from_le_bytes(magic) == 0 && meta.len() == window_len => Existing::Window,
        Ok(()) | Err(_) => Existing::Other("a file with other contents"),
    }
}

/// Reserve the first `len` bytes of a window's file on its file system now, so no store into
/// the mapping can meet a full file system later: on a full tmpfs a store to a page that
/// has none is SIGBUS, which kills the whole monarch, where this is an error for the one
/// window. File systems that cannot reserve (a device's BAR in sysfs) are left as they are.
fn reserve(file: &File, path: &Path, len: u64) -> Result<(), WindowError> {
    use std::os::unix::fs::MetadataExt as _;
    use std::sync::{Condvar, Mutex, PoisonError};
    // Bytes that reservations of this process are still taking, and their ends.
    static PENDING: Mutex<u64> = Mutex::new(0);
    static ENDED: Condvar = Condvar::new();
    // Two reservations that race for the last space on a file system each take part of it,
    // and both fail where one would have fitted. So one goes alongside those under way only
    // if the file system has room for all of them and for it (counting theirs whole, as if
    // none of it were taken yet: never too little); else it waits for them to end. Windows
    // are made in parallel, and reserving is most of their cost (tmpfs zeroes every page).
    let needed = len.saturating_sub(file.metadata().map_or(0, |m| m.blocks().saturating_mul(512)));
    let free = || rustix::fs::fstatvfs(file).ok().map(|v| v.f_bavail.saturating_mul(v.f_frsize));
    {
        let mut pending = PENDING.lock().unwrap_or_else(PoisonError::into_inner);
        while *pending > 0 && free().is_some_and(|f| f < pending.saturating_add(needed)) {
            pending = ENDED.wait(pending).unwrap_or_else(PoisonError::into_inner);
        }
        *pending = pending.saturating_add(needed);
    }
    // A signal (the operator's Ctrl-C included) interrupts a long fallocate on tmpfs: what
    // was reserved stays, so ask again; the caller notices the interruption itself.
    let mut r = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len);
    while r == Err(rustix::io::Errno::INTR) {
        r = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len);
    }
    {
        let mut pending = PENDING.lock().unwrap_or_else(PoisonError::into_inner);
        *pending = pending.saturating_sub(needed);
        ENDED.notify_all();
    }
    match r {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOSPC) => {
            let free = rustix::fs::fstatvfs(file).map(|v| v.f_bavail.saturating_mul(v.f_frsize)).ok();
            Err(WindowError::NoSpace { path: path.to_path_buf(), needed: len, free })
        }
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS | rustix::io::Errno::NODEV) => Ok(()),
        Err(e) => Err(WindowError::Io { path: path.to_path_buf(), what: "reserve space", source: e.into() }),
    }
}

/// Which pages of a window a mapping maps before they are first touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Populate {
    /// All of them, writable: the side that copies the image in.
    Write,
    /// All of them, for reading: the side that copies the image out, once.
    Read,
    /// None: a process that touches only the register page (a running image), for which
    /// mapping every page of a large window would cost more than its whole use of it.
    No,
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
        Self::map(file, path.to_path_buf(), len, Populate::Write)
    }

    /// Open (or create) the window file at `path` and give it the length of a window with
    /// `data_size` bytes of data area: exactly (`exact`), or at least. In place, never
    /// replaced.
    fn open_sized(path: &Path, data_size: u64, exact: bool) -> Result<(File, u64), WindowError> {
        let io = |what| move |source| WindowError::Io { path: path.to_path_buf(), what, source };
        let len = layout::window_len(data_size).ok_or(WindowError::TooSmall { path: path.into(), len: 0 })?;
        if let Existing::Other(what) = existing(path, len) {
            return Err(WindowError::NotAWindow { path: path.to_path_buf(), what });
        }
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
        // Only what will be written is reserved: the whole window, or its register page.
        reserve(&file, path, if exact { len } else { layout::REGS_SIZE as u64 })?;
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
        reserve(&file, &path, len)?;
        Self::map(file, path, len, Populate::Write)
    }

    /// The descriptor of the backing file (to hand a memfd window to a child process).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }

    /// Map an existing window file. Done by the secondary (or a primary attaching to a
    /// window someone else sized, such as a PCI BAR).
    pub fn open(path: &Path) -> Result<Window, WindowError> {
        let io = |what| move |source| WindowError::Io { path: path.to_path_buf(), what, source };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        Self::map(file, path.to_path_buf(), len, Populate::Read)
    }

    /// [`Window::open`] for a process that touches the register page only (a running image
    /// reporting through it): no page of the data area is mapped until it is read.
    pub fn open_registers(path: &Path) -> Result<Window, WindowError> {
        let io = |what| move |source| WindowError::Io { path: path.to_path_buf(), what, source };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        Self::map(file, path.to_path_buf(), len, Populate::No)
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
        let guard = Guard::new(map.as_mut_ptr(), map.len()).map_err(|source| WindowError::Io {
            path: path.to_path_buf(),
            what: "guard",
            source,
        })?;
        Ok(Window { guard, map, file, path: path.to_path_buf(), bell: Doorbell::detect() })
    }

    /// Map a window's file, its pages mapped now as `populate` says.
    fn map(file: File, path: PathBuf, len: u64, populate: Populate) -> Result<Window, WindowError> {
        if len < layout::REGS_SIZE as u64 {
            return Err(WindowError::TooSmall { path, len });
        }
        let map = MmapOptions::new().map_raw(&file).map_err(|source| WindowError::Io {
            path: path.clone(),
            what: "mmap",
            source,
        })?;
        // Fault the whole window in now, at configure time, so the copy runs at memory speed
        // instead of taking a page fault every 4 KiB: MADV_POPULATE_WRITE maps every page
        // writable, MADV_POPULATE_READ readable (Linux 5.14). Not MAP_POPULATE: on a shared
        // file it maps pages read-only, so a writer's stores still fault, and it took longer
        // than the two advices together (18 ms for 30 MiB here, see docs/performance.md).
        // Older kernels answer EINVAL: the window still works, a little slower.
        let advice = match populate {
            Populate::Write => Some(libc::MADV_POPULATE_WRITE),
            Populate::Read => Some(libc::MADV_POPULATE_READ),
            Populate::No => None,
        };
        if let Some(advice) = advice {
            // SAFETY: the range is exactly this mapping; the advice only pre-faults pages
            // and never changes their contents.
            let _ = unsafe { libc::madvise(map.as_mut_ptr().cast(), map.len(), advice) };
        }
        let guard = Guard::new(map.as_mut_ptr(), map.len()).map_err(|source| WindowError::Io {
            path: path.clone(),
            what: "guard",
            source,
        })?;
        Ok(Window { guard, map, file, path, bell: Doorbell::detect() })
    }

    /// Whether the peer shrank the window's file under this mapping (see the `guard`
    /// module): its contents are gone, and nothing written to it reaches the peer any more.
    /// The access that met the shrunk file completed on private zeroes instead of killing
    /// the process with SIGBUS; whoever uses the window must now give it up.
    pub fn vanished(&self) -> bool {
        self.guard.vanished()
    }

    /// [`Window::vanished`] as an error naming the window, for whoever must give it up; also
    /// when the file is now shorter than the mapping but no access has met the gap yet (the
    /// kernel's own copies into it, such as `read(2)` of an image file, fail with EFAULT
    /// instead of raising SIGBUS).
    pub fn check_intact(&self) -> Result<(), WindowError> {
        let shrunk = || self.file.metadata().is_ok_and(|m| m.is_file() && m.len() < self.map.len() as u64);
        if self.vanished() || shrunk() {
            return Err(WindowError::Vanished { path: self.path.clone() });
        }
        Ok(())
    }

    /// Use bounded polling instead of futex waits (for windows shared across kernels).
    pub fn set_doorbell(&mut self, bell: Doorbell) {
        self.bell = bell;
    }

    /// The window's path ([`WindowMemory::path`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the data area, from the mapping ([`WindowMemory::data_size`]).
    pub fn data_size(&self) -> u64 {
        WindowMemory::data_size(self)
    }

    /// [`WindowMemory::load`]: load a register (Acquire).
    pub fn load(&self, r: Reg) -> u64 {
        WindowMemory::load(self, r)
    }

    /// [`WindowMemory::load32`]: load a 32-bit register (Acquire).
    pub fn load32(&self, r: Reg) -> u32 {
        WindowMemory::load32(self, r)
    }

    /// [`WindowMemory::store`]: store a register (Release).
    pub fn store(&self, r: Reg, v: u64) {
        WindowMemory::store(self, r, v)
    }

    /// [`WindowMemory::compare_exchange`]: compare-and-swap a register (AcqRel).
    pub fn compare_exchange(&self, r: Reg, current: u64, new: u64) -> Result<u64, u64> {
        WindowMemory::compare_exchange(self, r, current, new)
    }

    /// [`WindowMemory::clear_registers`]: zero every register.
    pub fn clear_registers(&self) {
        WindowMemory::clear_registers(self)
    }

    /// Take the window's exclusive lock without waiting (`flock`): true if taken. An agent
    /// holds it for its whole life, so there is never more than one agent on a window, and
    /// a new monarch can tell whether a secondary's agent is still alive (the lock goes
    /// with the last descriptor, when the agent exits or execs its image).
    pub fn try_lock(&self) -> std::io::Result<bool> {
        match rustix::fs::flock(&self.file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Release the lock taken with [`Window::try_lock`].
    pub fn unlock(&self) {
        let _ = rustix::fs::flock(&self.file, rustix::fs::FlockOperation::Unlock);
    }

    /// [`WindowMemory::apply`]: apply register writes in order.
    pub fn apply(&self, writes: &[layout::Write]) {
        WindowMemory::apply(self, writes)
    }

    /// [`WindowMemory::ring`]: ring a doorbell.
    pub fn ring(&self, bell: Reg) {
        WindowMemory::ring(self, bell)
    }

    /// [`WindowMemory::bell_value`]: current value of a doorbell.
    pub fn bell_value(&self, bell: Reg) -> u32 {
        WindowMemory::bell_value(self, bell)
    }

    /// [`WindowMemory::wait_bell`]: wait until the doorbell differs from `seen`.
    pub fn wait_bell(&self, bell: Reg, seen: u32, timeout: Duration) -> bool {
        WindowMemory::wait_bell(self, bell, seen, timeout)
    }

    /// [`WindowMemory::read_message`]: read a message block seqlock-style.
    pub fn read_message<T>(
        &self,
        seq_reg: Reg,
        last_seq: u32,
        decode: impl Fn(&dyn Fn(Reg) -> u64) -> Result<T, RegisterError>,
    ) -> Poll<T> {
        WindowMemory::read_message(self, seq_reg, last_seq, decode)
    }

    /// [`WindowMemory::post`]: post a message, then ring.
    pub fn post(&self, writes: &[layout::Write], bell: Reg) {
        WindowMemory::post(self, writes, bell)
    }

    /// [`WindowMemory::write_data`]: copy `src` into the data area at `offset`.
    pub fn write_data(&self, offset: u64, src: &[u8]) -> Result<(), WindowError> {
        WindowMemory::write_data(self, offset, src)
    }

    /// [`WindowMemory::fill_from_file`]: read part of `file` straight into the data area.
    pub fn fill_from_file(
        &self,
        offset: u64,
        file: &File,
        file_offset: u64,
        len: u64,
    ) -> Result<(), WindowError> {
        WindowMemory::fill_from_file(self, offset, file, file_offset, len)
    }

    /// [`WindowMemory::copy_from_source`]: copy part of a mapped image file into the data
    /// area.
    pub fn copy_from_source(
        &self,
        offset: u64,
        src: &super::source::SourceFile,
        src_offset: u64,
        len: u64,
    ) -> Result<(), WindowError> {
        WindowMemory::copy_from_source(self, offset, src, src_offset, len)
    }

    /// [`WindowMemory::read_data`]: copy part of the data area into `dst`.
    pub fn read_data(&self, offset: u64, dst: &mut [u8]) -> Result<(), WindowError> {
        WindowMemory::read_data(self, offset, dst)
    }

    /// [`WindowMemory::digest_data`]: checksum part of the data area.
    pub fn digest_data(
        &self,
        offset: u64,
        len: u64,
        algo: Algo,
        progress: impl FnMut(u64),
    ) -> Result<Digest, WindowError> {
        WindowMemory::digest_data(self, offset, len, algo, progress)
    }

    /// [`WindowMemory::copy_out_digest`]: copy part of the data area into `dst` while
    /// checksumming the copy.
    pub fn copy_out_digest(
        &self,
        offset: u64,
        dst: &mut [u8],
        algo: Algo,
        progress: impl FnMut(u64),
    ) -> Result<Digest, WindowError> {
        WindowMemory::copy_out_digest(self, offset, dst, algo, progress)
    }
}

impl WindowMemory for Window {
    fn memory(&self) -> SharedBytes<'_> {
        // SAFETY: the mapping starts on a page boundary and is mapped read-write for as long
        // as `self` lives (the borrow), in whole pages, so the last partial word is mapped
        // too. This process touches it only through `SharedBytes` and the atomics it hands
        // out (and the kernel, through `fill_from_file`): `Window` never hands out a
        // reference to it nor copies it plainly. Other processes mapping the file are outside
        // this program.
        unsafe { SharedBytes::new(self.map.as_mut_ptr(), self.map.len()) }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn doorbell(&self) -> Doorbell {
        self.bell
    }

    fn try_lock(&self) -> std::io::Result<bool> {
        Window::try_lock(self)
    }

    fn unlock(&self) {
        Window::unlock(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_proto::window::msg;
    use monarch_proto::window::msg::{Command, Status, encode_command, encode_status};

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
    fn data_lands_in_the_file_after_the_register_page_byte_for_byte() {
        let (dir, w) = tmp_window(64);
        w.write_data(3, b"0123456789abcdefXYZ").unwrap();
        let bytes = std::fs::read(dir.path().join("w.win")).unwrap();
        assert_eq!(&bytes[layout::REGS_SIZE..layout::REGS_SIZE + 24], b"\0\0\x000123456789abcdefXYZ\0\0");
    }

    #[test]
    fn registers_only_mapping_has_no_data_area() {
        let (dir, w) = tmp_window(1 << 20);
        w.store(layout::CFG_EPOCH, 3);
        let r = Window::registers_of(&dir.path().join("w.win"), 1 << 20).unwrap();
        assert_eq!((r.data_size(), r.load(layout::CFG_EPOCH)), (0, 3));
        assert!(matches!(r.write_data(0, &[1]), Err(WindowError::OutOfBounds { .. })));
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
