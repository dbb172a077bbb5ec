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
