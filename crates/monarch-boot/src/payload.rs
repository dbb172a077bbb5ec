//! The demo payload: the program a secondary runs after an `exec` handoff.
//!
//! It proves it is the delivered image: it reads its own bytes (`/proc/self/exe`, which is
//! the sealed memfd the agent executed), computes their CRC-32C, reads the banner from its
//! trailer, writes both into the window's report block and posts RUNNING. Then it idles like
//! a booted OS until the monarch posts SHUTDOWN (or its parent is gone).

use crate::image;
use monarch_drivers::{Poll, Window};
use monarch_proto::Algo;
use monarch_proto::window::layout;
use monarch_proto::window::msg::{self, Command, Status};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the payload prints on standard output when it runs without a window (after a
/// network boot), followed by its report.
pub const NETBOOT_MARKER: &str = "MONARCH-PAYLOAD RUNNING";

/// Why the demo payload could not report: no window, or a window it could not use.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Its own executable could not be read (for its report's checksum).
    #[error("cannot read my own image: {0}")]
    OwnImage(std::io::Error),
    /// The window named by `MONARCH_WINDOW` could not be mapped.
    #[error(transparent)]
    Window(#[from] monarch_drivers::WindowError),
    /// The window would not take the report.
    #[error("{0}")]
    Report(String),
}

/// Run the payload; the error is printed by the binary.
pub fn run() -> Result<(), PayloadError> {
    let me = std::fs::read("/proc/self/exe").map_err(PayloadError::OwnImage)?;
    let banner = image::read_banner(&me).unwrap_or_else(|| "(no banner)".into());
    let report = format!(
        "{banner} [image {} bytes, crc32c {}]",
        me.len(),
        Algo::Crc32c.digest(&me).to_hex(Algo::Crc32c)
    );
    let Some(path) = std::env::var_os("MONARCH_WINDOW").map(PathBuf::from) else {
        // Booted over the network (`monarch netboot agent`): no window to report through;
        // standard output is the report.
        println!("{NETBOOT_MARKER} {report}");
        return Ok(());
    };
    let linger = std::env::var("MONARCH_LINGER")
        .ok()
        .and_then(|s| humantime::parse_duration(&s).ok())
        .unwrap_or(Duration::from_secs(3600));
    let w = Window::open(&path)?;
    let since = announce(&w, &report).map_err(PayloadError::Report)?;
    // Stop when the chassis goes away: the process named by MONARCH_SUPERVISOR (`monarch up`
    // when several candidates may take turns as monarch), else the parent that started us.
    let supervisor = std::env::var("MONARCH_SUPERVISOR").ok().and_then(|p| p.parse::<u32>().ok());
    let parent = rustix::process::getppid();
    idle_until_shutdown(&w, &since, linger, &|| match supervisor {
        Some(pid) => !monarch_drivers::host::alive(pid),
        None => rustix::process::getppid() != parent,
    });
    Ok(())
}

/// Where every command block stood just before RUNNING was posted: commands after it are
/// for the running image (see [`idle_until_shutdown`]).
pub struct Since(Vec<u32>);

/// Check the window's header, write `report` into its report block and post RUNNING.
pub(crate) fn announce(w: &Window, report: &str) -> Result<Since, String> {
    msg::decode_header(&|r| w.load(r), w.data_size())
        .map_err(|e| format!("window {}: {e}", w.path().display()))?;
    // Taken before RUNNING: a monarch that sees it may post SHUTDOWN at once (regression:
    // taken after, under load, that SHUTDOWN was counted as already seen, and the image
    // idled until the monarch's grace ran out and it was killed).
    let since = Since((0..layout::CMD_BLOCKS).map(|k| w.load32(layout::cmd(k).seq)).collect());
    w.apply(&msg::encode_report(report));
    let seq = msg::next_seq(w.load32(layout::ST_SEQ));
    // RUNNING answers the monarch the agent handed off under (its last status's epoch).
    let epoch = w.load32(layout::ST_EPOCH);
    w.post(
        &msg::encode_status(seq, epoch, &Status::Running { pid: u64::from(std::process::id()) }),
        layout::DB_TO_PRIMARY,
    );
    Ok(since)
}

/// Idle like a booted OS until the monarch posts SHUTDOWN, `gone()` says to stop, or
/// `linger` has passed.
///
/// SHUTDOWN is taken from any command block whose epoch is at least the one the image was
/// released under (and the window's claim, `cfg.epoch`): the monarch that finishes the boot
/// may not be the one that released it. Commands are counted from `since`, what
/// `announce` saw before it posted RUNNING.
pub fn idle_until_shutdown(w: &Window, since: &Since, linger: Duration, gone: &dyn Fn() -> bool) {
    let mut seqs = since.0.clone();
    let released = w.load32(layout::ST_EPOCH);
    let start = Instant::now();
    while start.elapsed() < linger {
        let seen = w.bell_value(layout::DB_TO_SECONDARY);
        for (k, last) in seqs.iter_mut().enumerate() {
            let dec = |r: &dyn Fn(layout::Reg) -> u64| msg::decode_command(k, r);
            if let Poll::Message(seq, stamped) = w.read_message(layout::cmd(k).seq, *last, dec) {
                *last = seq;
                if stamped.epoch < released.max(w.load32(layout::CFG_EPOCH)) {
                    // A deposed monarch: ignored, and counted like the agent counts them.
                    w.store(layout::ST_FENCED, w.load(layout::ST_FENCED) + 1);
                } else if stamped.cmd == Ok(Command::Shutdown) {
                    return;
                }
            }
        }
        if gone() {
            return;
        }
        w.wait_bell(layout::DB_TO_SECONDARY, seen, Duration::from_millis(500));
    }
}
