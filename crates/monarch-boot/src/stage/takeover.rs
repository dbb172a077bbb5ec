//! A new monarch's claim on a secondary's window: `cfg.epoch` raised by compare-and-swap
//! before it acts, so the secondary ignores every command of an older monarch.
use crate::topology::Secondary;
use monarch_drivers::Window;
use monarch_proto::window::layout;
use monarch_proto::window::msg::{self, WindowConfig};
use thiserror::Error;

/// Why a window could not be claimed for a new monarch.
#[derive(Debug, Error)]
pub enum ClaimError {
    /// A newer monarch holds the window already; this one leaves it alone.
    #[error("a newer monarch (epoch {theirs}) claimed this window; this one (epoch {ours}) leaves it alone")]
    Newer {
        /// The epoch in the window.
        theirs: u64,
        /// This monarch's epoch.
        ours: u64,
    },
    /// The window's folder could not be created.
    #[error("cannot create {}: {source}", dir.display())]
    Folder {
        /// The folder.
        dir: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The window could not be mapped.
    #[error("cannot claim the window of {id}: {source}")]
    Map {
        /// The secondary.
        id: String,
        /// The window driver's error.
        source: monarch_drivers::WindowError,
    },
    /// A newer monarch holds this secondary's window.
    #[error("{id}: {source}")]
    Secondary {
        /// The secondary.
        id: String,
        /// What the window said.
        source: Box<ClaimError>,
    },
}

/// The config's register writes without `cfg.epoch`, which only [`raise_epoch`] changes
/// (several monarchs may take turns).
pub fn config_writes(data_size: u64, cfg: &WindowConfig) -> Vec<layout::Write> {
    msg::encode_config(data_size, cfg).into_iter().filter(|(r, _)| *r != layout::CFG_EPOCH).collect()
}

/// Raise a window's `cfg.epoch` to `epoch` by compare-and-swap (it only ever grows). `Err`
/// when a newer monarch holds it already.
pub fn raise_epoch(w: &Window, epoch: u32) -> Result<(), ClaimError> {
    let ours = u64::from(epoch);
    loop {
        let cur = w.load(layout::CFG_EPOCH);
        if cur > ours {
            return Err(ClaimError::Newer { theirs: cur, ours });
        }
        if cur == ours || w.compare_exchange(layout::CFG_EPOCH, cur, ours).is_ok() {
            return Ok(());
        }
    }
}

/// Claim a secondary's window for a new monarch's `epoch` before it acts (monarch election): map it
/// (creating it at its configured size if no monarch has yet, registers untouched) and raise
/// `cfg.epoch`. From then on the secondary ignores every command of an older epoch — the
/// deposed monarch's included, even if it is the one the secondary followed until now —
/// because it reads `cfg.epoch` after each command. `Ok(false)`: nothing to claim (no
/// window file: a network-booted or memfd secondary).
pub fn claim(sec: &Secondary, epoch: u32) -> Result<bool, ClaimError> {
    if !super::launch::has_window_file(&sec.launch) {
        return Ok(false);
    }
    if let Some(dir) = sec.window.path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|source| ClaimError::Folder { dir: dir.to_path_buf(), source })?;
    }
    let w = Window::registers_of(&sec.window.path, sec.window.data_size)
        .map_err(|source| ClaimError::Map { id: sec.id.clone(), source })?;
    raise_epoch(&w, epoch).map_err(|e| ClaimError::Secondary { id: sec.id.clone(), source: Box::new(e) })?;
    Ok(true)
}
