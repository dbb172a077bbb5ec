//! An image in this process's own memory: an anonymous memfd, mapped read-write while it is
//! filled, then sealed and executed — the `exec` handoff runs exactly the bytes that were
//! delivered and verified, never a file someone could swap on disk.

use memmap2::{Mmap, MmapMut};
use rustix::fs::{MemfdFlags, SealFlags};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A memfd-backed buffer of fixed size.
pub struct MemImage {
    file: File,
    map: MmapMut,
}

impl std::fmt::Debug for MemImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemImage").field("len", &self.map.len()).finish()
    }
}

impl MemImage {
    /// A zeroed image of `len` bytes named `name` (shows in `/proc/PID/maps`).
    pub fn new(name: &str, len: u64) -> io::Result<MemImage> {
        let fd: OwnedFd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        let file = File::from(fd);
        file.set_len(len)?;
        // Allocate every page in one call (shmem's fallocate takes them in batches, cheaper
        // than one fault each; a kernel that refuses leaves them to the populate below).
        let _ = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len);
        // SAFETY: the memfd was created just now by this process and has not been shared:
        // no other mapping or descriptor can change it while `map` lives, so handing out
        // `&[u8]`/`&mut [u8]` into it is sound.
        let map = unsafe { MmapMut::map_mut(&file)? };
        // Fault every page in now, in one call, rather than one fault per 4 KiB as the copy
        // first touches each (several times faster; older kernels answer EINVAL and the
        // copy takes the faults instead).
        // SAFETY: the range is exactly this mapping; the advice only allocates and maps its
        // (zeroed) pages, never changing what it holds.
        let _ =
            unsafe { libc::madvise(map.as_ptr().cast_mut().cast(), map.len(), libc::MADV_POPULATE_WRITE) };
        Ok(MemImage { file, map })
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The bytes, writable (while filling).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
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
        let MemImage { file, map } = self;
        // A writable shared mapping would make the write seal fail (EBUSY).
        drop(map);
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
        let mut m = MemImage::new(name, bytes.len() as u64)?;
        m.bytes_mut().copy_from_slice(bytes);
        m.seal()
    }

    /// Open a sealed image another process of this user holds, by a path to its descriptor
    /// (`/proc/PID/fd/N`, [`SealedImage::path`]). Refused unless it is sealed against writes
    /// and resizing: a file that could still change would make any check of it worthless.
    pub fn open(path: &Path) -> io::Result<SealedImage> {
        let file = File::open(path)?;
        let seals = rustix::fs::fcntl_get_seals(&file)?;
        if !seals.contains(SEALED) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a sealed image (seals {seals:?})", path.display()),
            ));
        }
        SealedImage::mapped(file)
    }

    fn mapped(file: File) -> io::Result<SealedImage> {
        // SAFETY: the memfd is sealed against writes, shrinking and growing (checked by
        // `open`, done by `seal`): no process can change the bytes or the size under this
        // mapping, so handing out `&[u8]` into it is sound.
        let map = unsafe { Mmap::map(&file)? };
        // Fault the pages in now, in one call (they are usually in memory already: the
        // image was just written); older kernels answer EINVAL and the reads fault instead.
        // SAFETY: the range is exactly this mapping; the advice only maps its pages.
        let _ = unsafe { libc::madvise(map.as_ptr().cast_mut().cast(), map.len(), libc::MADV_POPULATE_READ) };
        Ok(SealedImage { file, map })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_and_returns_bytes() {
        let mut m = MemImage::new("test", 10).unwrap();
        m.bytes_mut().copy_from_slice(b"0123456789");
        assert_eq!(m.bytes(), b"0123456789");
    }

    #[test]
    fn a_sealed_image_opens_by_its_path_unchanged_and_an_unsealed_file_is_refused() {
        let mut m = MemImage::new("shared", 8192).unwrap();
        m.bytes_mut()[..5].copy_from_slice(b"hello");
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
    fn exec_of_bytes_that_are_not_a_program_fails_and_returns() {
        let mut m = MemImage::new("junk", 64).unwrap();
        m.bytes_mut().fill(0x5a);
        let e = m.exec("junk", &[], &[]);
        assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::NOEXEC.raw_os_error()), "{e}");
    }
}
