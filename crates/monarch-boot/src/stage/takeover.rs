//! A new monarch's claim on a secondary's window: `cfg.epoch` raised by compare-and-swap
//! before it acts, so the secondary ignores every command of an older monarch.
use crate::topology::Secondary;
use monarch_drivers::Window;
use monarch_proto::layout;
use monarch_proto::msg::{self, WindowConfig};

/// The config's register writes without `cfg.epoch`, which only [`raise_epoch`] changes
/// (several monarchs may take turns).
pub fn config_writes(data_size: u64, cfg: &WindowConfig) -> Vec<msg::Write> {
    msg::encode_config(data_size, cfg).into_iter().filter(|(r, _)| *r != layout::CFG_EPOCH).collect()
}

/// Raise a window's `cfg.epoch` to `epoch` by compare-and-swap (it only ever grows). `Err`
/// when a newer monarch holds it already.
pub fn raise_epoch(w: &Window, epoch: u32) -> Result<(), String> {
    let ours = u64::from(epoch);
    loop {
        let cur = w.load(layout::CFG_EPOCH);
        if cur > ours {
            return Err(format!(
                "a newer monarch (epoch {cur}) claimed this window; this one (epoch {ours}) leaves it alone"
            ));
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
pub fn claim(sec: &Secondary, epoch: u32) -> Result<bool, String> {
    if sec.netboot.is_some() || sec.window.memfd {
        return Ok(false);
    }
    if let Some(dir) = sec.window.path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let w = Window::registers_of(&sec.window.path, sec.window.data_size)
        .map_err(|e| format!("cannot claim the window of {}: {e}", sec.id))?;
    raise_epoch(&w, epoch).map_err(|e| format!("{}: {e}", sec.id))?;
    Ok(true)
}
