//! [`WindowError`]: what opening or using a window fails with.

use monarch_proto::window::layout;
use std::path::PathBuf;
use thiserror::Error;

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
    /// The window's file system has no room for it.
    #[error(
        "window {path}: needs {needed} bytes ({}) but its file system has {} free; free space there (for /dev/shm: `mount -o remount,size=… /dev/shm`), or give the window a path on a file system with room",
        mib(*needed),
        free.map_or_else(|| "less".to_string(), |f| format!("{f} bytes ({})", mib(f)))
    )]
    NoSpace {
        /// The window's path.
        path: PathBuf,
        /// Bytes it needs.
        needed: u64,
        /// Bytes free for an unprivileged writer there, if the file system says.
        free: Option<u64>,
    },
    /// The peer shrank the window's file while it was mapped here.
    #[error(
        "window {path}: the file was truncated by someone else while monarch used it (the secondary's side, or another program); its contents are gone: this secondary is failed, the others go on; check what else opens {path}"
    )]
    Vanished {
        /// The window's path.
        path: PathBuf,
    },
    /// Something that is not a window is at the path: the monarch will not overwrite it.
    #[error(
        "window {path}: it is {what}, not a monarch window; monarch will not overwrite it: choose another path, or remove it yourself"
    )]
    NotAWindow {
        /// The path.
        path: PathBuf,
        /// What is there.
        what: &'static str,
    },
}

/// `n` bytes in MiB, for messages.
#[allow(clippy::cast_precision_loss)] // a figure for people
fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
}
