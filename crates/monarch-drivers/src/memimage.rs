//! An image in this process's own memory: an anonymous memfd, written while it is filled
//! (landed), then sealed and executed — the `exec` handoff runs exactly the bytes that were
//! delivered and verified, never a file someone could swap on disk.

use memmap2::{Mmap, MmapMut};
use rustix::fs::{MemfdFlags, SealFlags};
use std::cell::OnceCell;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The granularity at which [`MemImage::land`] leaves zeroes unwritten: a page.
const PAGE: u64 = 4096;

/// A memfd-backed image of fixed size, zero until landed. Nothing maps it while it is
/// filled: bytes land by `pwrite` (the kernel allocates each page as it copies into it, with
/// no page table to fill and empty again), and the pages of zeroes that land in a part never
/// written before are left as holes, which read as zeroes — an image that is mostly padding
/// costs the memory of what it holds.
pub struct MemImage {
    file: File,
    len: u64,
    /// Every byte from here on has never been written: it reads as zero.
    fresh_from: u64,
    /// A read-only mapping, made on the first [`MemImage::bytes`].
    map: OnceCell<Mmap>,
}

impl std::fmt::Debug for MemImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemImage").field("len", &self.len).finish()
    }
}

/// Whether `bytes` are all zero (a word at a time: this runs over every landed byte).
fn all_zero(bytes: &[u8]) -> bool {
    let words = bytes.chunks_exact(8);
    let rest = words.remainder();
    let or = words.fold(0u64, |acc, w| acc | u64::from_ne_bytes(w.try_into().unwrap_or([1; 8])));
    or == 0 && rest.iter().all(|b| *b == 0)
}

impl MemImage {
    /// A zeroed image of `len` bytes named `name` (shows in `/proc/PID/fd` and in
    /// `/proc/PID/maps` of whatever runs it).
    pub fn new(name: &str, len: u64) -> io::Result<MemImage> {
        let fd: OwnedFd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        let file = File::from(fd);
        file.set_len(len)?;
        Ok(MemImage { file, len, fresh_from: 0, map: OnceCell::new() })
    }

    /// A zeroed image holding `bytes` at its start.
    pub fn of(name: &str, bytes: &[u8]) -> io::Result<MemImage> {
        let mut m = MemImage::new(name, bytes.len() as u64)?;
        m.land(0, bytes)?;
        Ok(m)
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Write `bytes` at `offset`. Where the range was never written before, the pages of it
    /// that are all zero are skipped: they read as zero already. Refused past the end (the
    /// image never grows) and once [`MemImage::bytes`] has mapped it.
    pub fn land(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let end = offset.checked_add(bytes.len() as u64).filter(|e| *e <= self.len).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} bytes at {offset} do not fit an image of {} bytes", bytes.len(), self.len),
            )
        })?;
        if self.map.get().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the image is mapped: it is read-only",
            ));
        }
        // Pieces end on the file's page boundaries; a run of pieces that are not skipped is
        // written in one call.
        let mut run: Option<usize> = None;
        let mut at = 0usize;
        while at < bytes.len() {
            let pos = offset + at as u64;
            let to_boundary = usize::try_from(PAGE - pos % PAGE).unwrap_or(usize::MAX);
            let piece = to_boundary.min(bytes.len() - at);
            let skip = pos >= self.fresh_from && all_zero(&bytes[at..at + piece]);
            match (skip, run) {
                (true, Some(from)) => {
                    self.file.write_all_at(&bytes[from..at], offset + from as u64)?;
                    run = None;
                }
                (false, None) => run = Some(at),
                _ => {}
            }
            at += piece;
        }
        if let Some(from) = run {
            self.file.write_all_at(&bytes[from..], offset + from as u64)?;
        }
        self.fresh_from = self.fresh_from.max(end);
        Ok(())
    }

    /// The bytes, through a read-only mapping made on first use (a kernel bundle is parsed
    /// where it lies). Holes are faulted in as they are read.
    pub fn bytes(&self) -> io::Result<&[u8]> {
        if self.map.get().is_none() {
            // SAFETY: the memfd was created by this process and never shared while it is
            // filled; writes through `land` are refused from now on, so nothing changes the
            // bytes or the size under the mapping while `&[u8]` into it lives.
            let map = unsafe { Mmap::map(&self.file)? };
            let _ = self.map.set(map);
        }
        Ok(self.map.get().map_or(&[], |m| &m[..]))
    }

    /// Seal the image against any change and replace this process with it: `argv0` and
    /// `args` become its command line, `env` is added to the environment. Returns only on
    /// failure.
    pub fn exec(self, argv0: &str, args: &[String], env: &[(String, String)]) -> io::Error {
        match self.sealed_file() {
            Ok(ro) => exec_file(ro, argv0, args, env),
            Err(e) => e,
        }
    }

    /// Seal the image against any change (no write, no resize, no further seal) and keep it
    /// read-only: what is checked in it from then on is what runs.
    pub fn seal(self) -> io::Result<SealedImage> {
        SealedImage::mapped(self.sealed_file()?)
    }

    /// Sealed, as a read-only descriptor (the only one left).
    fn sealed_file(self) -> io::Result<File> {
        let MemImage { file, .. } = self;
        rustix::fs::fcntl_add_seals(&file, SEALED | SealFlags::SEAL)?;
        // Keep only a read-only descriptor: the kernel refuses (ETXTBSY) to execute a file
        // that is open for writing.
        File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))
    }
}

/// The seals that make a memfd immutable.
const SEALED: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW).union(SealFlags::WRITE);

/// An image sealed in memory (a memfd no one can change or resize any more), mapped
/// read-only. Several processes may open the same one and run it: the cores of a cluster
/// share their cluster's kernel, as the cores of one memory share the code in it.
pub struct SealedImage {
    file: File,
    map: Mmap,
}

impl std::fmt::Debug for SealedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedImage").field("len", &self.map.len()).finish()
    }
}

impl SealedImage {
    /// `bytes` in a memfd of its own named `name`, sealed.
    pub fn of(name: &str, bytes: &[u8]) -> io::Result<SealedImage> {
        MemImage::of(name, bytes)?.seal()
    }

    /// Open a sealed image another process of this user holds, by a path to its descriptor
    /// (`/proc/PID/fd/N`, [`SealedImage::path`]). Refused unless it is sealed against writes
    /// and resizing: a file that could still change would make any check of it worthless.
    pub fn open(path: &Path) -> io::Result<SealedImage> {
        let img = SealedImage::view(path)?;
        img.populate();
        Ok(img)
    }

    /// Open a sealed image as [`SealedImage::open`] does, but map nothing until it is
    /// touched: for reading only parts of it, such as the runs of a sparse image that hold
    /// data ([`SealedImage::data_ranges`]). Touching a hole through the mapping gives it a
    /// page of its own.
    pub fn view(path: &Path) -> io::Result<SealedImage> {
        let file = File::open(path)?;
        let seals = rustix::fs::fcntl_get_seals(&file)?;
        if !seals.contains(SEALED) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a sealed image (seals {seals:?})", path.display()),
            ));
        }
        SealedImage::unpopulated(file)
    }

    fn mapped(file: File) -> io::Result<SealedImage> {
        let img = SealedImage::unpopulated(file)?;
        img.populate();
        Ok(img)
    }

    fn unpopulated(file: File) -> io::Result<SealedImage> {
        // SAFETY: the memfd is sealed against writes, shrinking and growing (checked by
        // `view`, done by `seal`): no process can change the bytes or the size under this
        // mapping, so handing out `&[u8]` into it is sound.
        let map = unsafe { Mmap::map(&file)? };
        Ok(SealedImage { file, map })
    }

    /// Fault the pages in now, in one call (they are usually in memory already: the image
    /// was just written); older kernels answer EINVAL and the reads fault instead.
    fn populate(&self) {
        // SAFETY: the range is exactly this mapping; the advice only maps its pages.
        let _ = unsafe {
            libc::madvise(self.map.as_ptr().cast_mut().cast(), self.map.len(), libc::MADV_POPULATE_READ)
        };
    }

    /// The runs of the image that may hold data; the rest reads as zeroes ([`data_ranges`]).
    pub fn data_ranges(&self) -> io::Result<Vec<std::ops::Range<u64>>> {
        data_ranges(&self.file, self.map.len() as u64)
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// A path by which other processes of this user can open it while this one holds it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd()))
    }

    /// Replace this process with the image: `argv0` and `args` become its command line,
    /// `env` is added to the environment. Returns only on failure.
    pub fn exec(self, argv0: &str, args: &[String], env: &[(String, String)]) -> io::Error {
        let SealedImage { file, map } = self;
        drop(map);
        exec_file(file, argv0, args, env)
    }
}

/// Replace this process with the program in `ro` (read-only, sealed); returns only on failure.
fn exec_file(ro: File, argv0: &str, args: &[String], env: &[(String, String)]) -> io::Error {
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let mut argv = Vec::with_capacity(args.len() + 1);
    let mut envp = Vec::new();
    let built: io::Result<()> = (|| {
        argv.push(cstr(argv0.as_bytes())?);
        for a in args {
            argv.push(cstr(a.as_bytes())?);
        }
        for (k, v) in std::env::vars_os() {
            if env.iter().any(|(ek, _)| k.as_bytes() == ek.as_bytes()) {
                continue;
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(cstr(&kv)?);
        }
        for (k, v) in env {
            envp.push(cstr(format!("{k}={v}").as_bytes())?);
        }
        Ok(())
    })();
    if let Err(e) = built {
        return e;
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // Why fexecve and not std::process::Command: std execs by path with execvp semantics,
    // which on ENOEXEC hands the bytes to /bin/sh as a script. Delivered bytes that are
    // not a program must fail the handoff, never run as shell commands.
    // SAFETY: `ro` is an open descriptor; argv/envp are NULL-terminated arrays of
    // pointers to NUL-terminated strings that outlive the call (on success the call does
    // not return; on failure nothing was consumed).
    unsafe { libc::fexecve(ro.as_raw_fd(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    io::Error::last_os_error()
}

/// Map `file` shared and writable: a memory bank of the phased boot, which the cores of a
/// cluster map together.
pub fn map_shared(file: &std::fs::File) -> io::Result<MmapMut> {
    // SAFETY: memmap2 marks this unsafe because another process may change or shrink the
    // file while it is mapped. The phased boot orders every write to a bank before its reads
    // (a process is started, or a barrier released, only after the bank was written), and
    // bank files are the run's own, never shrunk while the run lasts; a peer that broke that
    // rule could tear what we read (which the digests catch) or make a read a SIGBUS.
    unsafe { MmapMut::map_mut(file) }
}

/// The parts of `file`'s first `len` bytes that may hold data, in order; everything else
/// is a hole, which reads as zeroes (`SEEK_DATA`/`SEEK_HOLE`). A landed image's padding is
/// such holes: whoever checksums it can skip them (see `Hasher::update_zeros`). A file
/// system that does not report holes reports one run of data, the whole file. A file
/// shorter than `len` is an error (`UnexpectedEof`): its missing end is not zeroes.
pub fn data_ranges(file: &File, len: u64) -> io::Result<Vec<std::ops::Range<u64>>> {
    use rustix::fs::SeekFrom;
    if file.metadata()?.len() < len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file is shorter than asked"));
    }
    let mut runs = Vec::new();
    let mut pos = 0;
    while pos < len {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(start) => start,
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            // The file system cannot say: treat it all as data.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
                return Ok(std::iter::once(0..len).filter(|r| !r.is_empty()).collect());
            }
            Err(e) => return Err(e.into()),
        };
        if start >= len {
            break;
        }
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?.min(len);
        if end <= start {
            // Changed under us (a file that is not sealed): no progress to be made.
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file changed while it was read"));
        }
        runs.push(start..end);
        pos = end;
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_ranges_skip_the_holes_and_cover_every_written_byte() {
        let p = 4096u64;
        let mut m = MemImage::new("ranges", 10 * p).unwrap();
        m.land(p, &[7u8; 4096]).unwrap();
        m.land(5 * p + 1, &[9u8; 2 * 4096]).unwrap();
        let runs = data_ranges(&m.file, m.len()).unwrap();
        // tmpfs reports holes page by page; a file system may round a run out, never in.
        assert!(runs.iter().any(|r| r.start <= p && r.end >= 2 * p), "{runs:?}");
        assert!(runs.iter().any(|r| r.start <= 5 * p + 1 && r.end > 7 * p), "{runs:?}");
        assert!(!runs.iter().any(|r| r.contains(&0) || r.contains(&(9 * p))), "{runs:?}");
        assert!(runs.windows(2).all(|w| w[0].end <= w[1].start), "{runs:?}");
        // Cut short by `len`, and nothing for an empty file.
        let cut = data_ranges(&m.file, p + 10).unwrap();
        assert!(cut.len() == 1 && cut[0].start <= p && cut[0].end == p + 10, "{cut:?}");
        // Longer than the file: an error, not zeroes.
        let e = data_ranges(&m.file, m.len() + 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(data_ranges(&MemImage::new("empty", 0).unwrap().file, 0).unwrap().is_empty());
    }

    #[test]
    fn holds_and_returns_bytes() {
        let m = MemImage::of("test", b"0123456789").unwrap();
        assert_eq!(m.bytes().unwrap(), b"0123456789");
        assert_eq!(m.len(), 10);
    }

    /// Whether this host gives memfds huge pages (`shmem_enabled` set to `always`,
    /// `within_size` or `force`): then a touched page allocates 2 MiB around it, and counts of
    /// allocated pages say nothing about holes.
    fn shmem_huge_pages() -> bool {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
            .is_ok_and(|s| ["[always]", "[within_size]", "[force]"].iter().any(|m| s.contains(m)))
    }

    /// Bytes of the memfd that hold memory (the rest are holes).
    fn allocated(m: &MemImage) -> u64 {
        rustix::fs::fstat(&m.file).unwrap().st_blocks as u64 * 512
    }

    #[test]
    fn pages_of_zeroes_landed_where_nothing_was_written_stay_holes() {
        let p = 4096usize;
        let mut bytes = vec![0u8; 4 * p];
        bytes[10] = 1; // page 0
        bytes[3 * p + p - 1] = 2; // page 3
        let mut m = MemImage::new("holes", 4 * p as u64).unwrap();
        // Landed off a page boundary, in two pieces.
        m.land(0, &bytes[..p + 100]).unwrap();
        m.land(p as u64 + 100, &bytes[p + 100..]).unwrap();
        if !shmem_huge_pages() {
            assert_eq!(allocated(&m), 2 * PAGE, "pages 1 and 2 are zeroes: never allocated");
        }
        assert_eq!(m.bytes().unwrap(), &bytes[..]);
        assert!(m.land(0, b"x").is_err(), "a mapped image is read-only");
    }

    #[test]
    fn zeroes_landed_over_bytes_written_before_are_written() {
        let mut m = MemImage::new("rewrite", 8192).unwrap();
        m.land(0, &[7u8; 8192]).unwrap();
        m.land(4096, &[0u8; 4096]).unwrap();
        let mut want = vec![7u8; 4096];
        want.extend_from_slice(&[0u8; 4096]);
        assert_eq!(m.bytes().unwrap(), &want[..]);
        let e = m.land(8000, &[0u8; 200]).unwrap_err();
        assert!(e.to_string().contains("do not fit an image of 8192 bytes"), "{e}");
    }

    proptest::proptest! {
        /// Whatever lands where, in whatever order, the image reads back as a plain buffer
        /// written the same way.
        #[test]
        fn an_image_reads_back_as_the_bytes_landed_in_it(
            writes in proptest::collection::vec((0usize..20_000, 0usize..9_000, 0u8..3), 1..8)
        ) {
            const LEN: usize = 24_576;
            let mut model = vec![0u8; LEN];
            let mut m = MemImage::new("model", LEN as u64).unwrap();
            for (at, n, kind) in writes {
                let n = n.min(LEN - at);
                // Zeroes, ones, or a few marks in zeroes.
                let chunk: Vec<u8> = (0..n).map(|i| match kind {
                    0 => 0,
                    1 => 1,
                    _ => u8::from(i % 5000 == 3),
                }).collect();
                m.land(at as u64, &chunk).unwrap();
                model[at..at + n].copy_from_slice(&chunk);
            }
            proptest::prop_assert_eq!(m.bytes().unwrap(), &model[..]);
        }
    }

    #[test]
    fn a_sealed_image_opens_by_its_path_unchanged_and_an_unsealed_file_is_refused() {
        let mut m = MemImage::new("shared", 8192).unwrap();
        m.land(0, b"hello").unwrap();
        let sealed = m.seal().unwrap();
        let other = SealedImage::open(&sealed.path()).unwrap();
        assert_eq!(&other.bytes()[..5], b"hello");
        assert_eq!(other.bytes().len(), 8192);
        // No one can write it any more, through any descriptor.
        let mut w = std::fs::OpenOptions::new().write(true).open(sealed.path()).unwrap();
        assert!(std::io::Write::write_all(&mut w, b"x").is_err());
        // A file that could still change is refused.
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(SealedImage::open(file.path()).is_err());
        let unsealed = MemImage::new("unsealed", 4096).unwrap();
        let path = format!("/proc/self/fd/{}", unsealed.file.as_raw_fd());
        let e = SealedImage::open(Path::new(&path)).unwrap_err();
        assert!(e.to_string().contains("not a sealed image"), "{e}");
    }

    #[test]
    fn a_view_reads_the_data_runs_without_filling_the_holes() {
        let p = 4096usize;
        let mut m = MemImage::new("view", 64 * p as u64).unwrap();
        m.land(3 * p as u64, &[5u8; 4096]).unwrap();
        // Sealed as the exec handoff seals it (`seal` would fault every page in).
        let ro = m.sealed_file().unwrap();
        let view = SealedImage::view(Path::new(&format!("/proc/self/fd/{}", ro.as_raw_fd()))).unwrap();
        let runs = view.data_ranges().unwrap();
        assert!(runs.iter().any(|r| r.start <= 3 * p as u64 && r.end >= 4 * p as u64), "{runs:?}");
        for r in &runs {
            let (a, b) = (usize::try_from(r.start).unwrap(), usize::try_from(r.end).unwrap());
            assert!(view.bytes()[a..b].iter().all(|&x| x == 5 || x == 0));
        }
        // Only the data was touched: the 63 pages of holes are still holes.
        let blocks = rustix::fs::fstat(&view.file).unwrap().st_blocks as u64 * 512;
        if !shmem_huge_pages() {
            assert!(blocks < 8 * p as u64, "{blocks} bytes allocated");
        }
        assert!(SealedImage::view(tempfile::NamedTempFile::new().unwrap().path()).is_err());
    }

    #[test]
    fn exec_of_bytes_that_are_not_a_program_fails_and_returns() {
        let m = MemImage::of("junk", &[0x5a; 64]).unwrap();
        let e = m.exec("junk", &[], &[]);
        assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::NOEXEC.raw_os_error()), "{e}");
    }
}
