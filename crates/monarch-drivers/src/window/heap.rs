//! The in-memory backend: [`MemWindow`].

use super::error::WindowError;
use super::memory::WindowMemory;
use super::shared::SharedBytes;
use crate::doorbell::Doorbell;
use monarch_proto::window::layout;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A window in this process's heap, for both sides of the protocol in one process: each
/// side (thread) holds its own handle, made with [`MemWindow::attach`], onto the same memory.
///
/// It behaves like a [`Window`](super::mmap::Window) on a file that two processes mapped:
/// the same registers, data area, futex doorbells (a futex works on any memory; the memory
/// is zeroed at creation) and an agent lock that, like `flock`, belongs to a handle and goes
/// with it when the handle is dropped.
pub struct MemWindow {
    shared: Arc<Shared>,
    /// This handle's identity for the agent lock (never 0).
    handle: u64,
    bell: Doorbell,
}

/// What the handles of one in-memory window share.
struct Shared {
    /// The register page and the data area, rounded up to whole words.
    words: Box<[AtomicU64]>,
    /// Bytes in the window (register page + data area).
    len: usize,
    path: PathBuf,
    /// The handle holding the agent lock, 0 when nobody does.
    lock: AtomicU64,
    /// The last handle identity given out.
    handles: AtomicU64,
}

impl std::fmt::Debug for MemWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemWindow")
            .field("path", &self.shared.path)
            .field("data_size", &self.data_size())
            .field("handle", &self.handle)
            .finish()
    }
}

impl MemWindow {
    /// A zeroed window with `data_size` bytes of data area, named `memory:NAME` in
    /// messages. Fails (instead of aborting) when the memory cannot be allocated.
    pub fn new(name: &str, data_size: u64) -> Result<MemWindow, WindowError> {
        let path = PathBuf::from(format!("memory:{name}"));
        let too_big = |path: PathBuf| WindowError::Io {
            path,
            what: "allocate",
            source: std::io::ErrorKind::OutOfMemory.into(),
        };
        let len = layout::window_len(data_size)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| too_big(path.clone()))?;
        let n = len.div_ceil(8);
        let mut words = Vec::new();
        words.try_reserve_exact(n).map_err(|_| too_big(path.clone()))?;
        words.resize_with(n, || AtomicU64::new(0));
        let shared = Shared {
            words: words.into_boxed_slice(),
            len,
            path,
            lock: AtomicU64::new(0),
            handles: AtomicU64::new(1),
        };
        Ok(MemWindow { shared: Arc::new(shared), handle: 1, bell: Doorbell::detect() })
    }

    /// Another handle onto the same memory (what opening a window file again is to a
    /// [`Window`](super::mmap::Window)): for the other side, on another thread. It has its own
    /// doorbell setting (this one's to start with) and its own identity for the agent lock.
    pub fn attach(&self) -> MemWindow {
        let handle = self.shared.handles.fetch_add(1, Ordering::Relaxed) + 1;
        MemWindow { shared: Arc::clone(&self.shared), handle, bell: self.bell }
    }

    /// Use bounded polling instead of futex waits (to test that path).
    pub fn set_doorbell(&mut self, bell: Doorbell) {
        self.bell = bell;
    }
}

impl WindowMemory for MemWindow {
    fn memory(&self) -> SharedBytes<'_> {
        let words = &self.shared.words;
        // SAFETY: `words` is a live allocation of `len.div_ceil(8)` AtomicU64 (8-byte aligned,
        // whole words), borrowed from `self` for the view's lifetime and never moved (it is
        // boxed behind an Arc). Writing through a pointer derived from `&[AtomicU64]` is
        // allowed: AtomicU64 is an UnsafeCell. Nothing in this crate touches `words` other
        // than through `SharedBytes` (and the kernel, through `fill_from_file`).
        unsafe { SharedBytes::new(words.as_ptr().cast::<u8>().cast_mut(), self.shared.len) }
    }

    fn path(&self) -> &Path {
        &self.shared.path
    }

    fn doorbell(&self) -> Doorbell {
        self.bell
    }

    fn try_lock(&self) -> std::io::Result<bool> {
        match self.shared.lock.compare_exchange(0, self.handle, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(true),
            Err(holder) => Ok(holder == self.handle),
        }
    }

    fn unlock(&self) {
        let _ = self.shared.lock.compare_exchange(self.handle, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl Drop for MemWindow {
    fn drop(&mut self) {
        self.unlock();
    }
}
