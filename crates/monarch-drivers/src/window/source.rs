//! [`SourceFile`]: an image file mapped read-only, the source the monarch copies a large image
//! from into windows.
//!
//! Reading an image into a window with `pread(2)` has the kernel walk its page cache a page
//! at a time (about 4 GiB/s here, against 10 GiB/s for a copy between two mappings; the
//! figures are in `docs/performance.md`). Mapped, the file's cached pages are copied by this
//! process word by word, at memory speed, and the monarch's memory stays the page cache's.
//!
//! The file is not this program's: someone may write it, or cut it short, during a boot. So
//! it is read like a window, through atomics only ([`SharedBytes`]), and its mapping is
//! guarded like a window's: an access past a new, shorter end reads zeroes instead of
//! killing the process with SIGBUS. Either change shows as chunks whose checksums no longer
//! match the ones retrieval took, which the monarch reports as an image changed during
//! delivery.

use super::error::WindowError;
use super::guard::Guard;
use super::shared::SharedBytes;
use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::path::{Path, PathBuf};

/// An image file mapped read-only and read through atomics (see the module).
pub struct SourceFile {
    /// Declared before `map`, so it is dropped (unregistered) before the mapping goes.
    guard: Guard,
    map: MmapRaw,
    len: u64,
    path: PathBuf,
}

impl std::fmt::Debug for SourceFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceFile").field("path", &self.path).field("len", &self.len).finish()
    }
}

impl SourceFile {
    /// Map the first `len` bytes of `file` (at `path`, for messages) read-only, its pages
    /// mapped now (MAP_POPULATE: the copies then take no page faults, which on a 1 GiB image
    /// cost more than the copy itself).
    pub fn map(file: &File, path: &Path, len: u64) -> Result<SourceFile, WindowError> {
        let io = |what, source| WindowError::Io { path: path.to_path_buf(), what, source };
        let n = usize::try_from(len).map_err(|_| io("mmap", std::io::ErrorKind::InvalidInput.into()))?;
        if n == 0 {
            return Err(io("mmap", std::io::ErrorKind::UnexpectedEof.into()));
        }
        let map = MmapOptions::new().len(n).populate().map_raw_read_only(file).map_err(|e| io("mmap", e))?;
        let guard = Guard::new(map.as_mut_ptr(), map.len()).map_err(|e| io("guard", e))?;
        Ok(SourceFile { guard, map, len, path: path.to_path_buf() })
    }

    /// Length in bytes (as mapped).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty (never: [`SourceFile::map`] refuses an empty one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether someone cut the file short under this mapping (what was read past the new end
    /// read zeroes).
    pub fn vanished(&self) -> bool {
        self.guard.vanished()
    }

    pub(crate) fn bytes(&self) -> SharedBytes<'_> {
        // SAFETY: the mapping is page-aligned, at least `len` bytes long and whole pages, so
        // valid for reads of `len` rounded up to a word; it lives as long as `self`, which
        // the returned lifetime borrows; this process reads it only through `SharedBytes`
        // (no plain reference to it is ever made), and the guard turns a SIGBUS from a
        // shrunk file into reads of zeroes. The mapping is read-only, and `new` asks for
        // writability too: these bytes are only ever read (`read`, `copy_from`'s source),
        // never handed to a write.
        unsafe { SharedBytes::new(self.map.as_mut_ptr(), self.map.len()) }
    }

    /// Copy `buf.len()` bytes at `offset` into `buf`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), WindowError> {
        let at = self.range(offset, buf.len() as u64)?;
        self.bytes().read(at, buf);
        Ok(())
    }

    /// `offset..offset + len` as an index, or an error naming the file.
    pub(crate) fn range(&self, offset: u64, len: u64) -> Result<usize, WindowError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => usize::try_from(offset).map_err(|_| WindowError::OutOfBounds {
                path: self.path.clone(),
                offset,
                len,
                data_size: self.len,
            }),
            _ => Err(WindowError::OutOfBounds { path: self.path.clone(), offset, len, data_size: self.len }),
        }
    }
}
