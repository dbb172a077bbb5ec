//! The demo payload: the program a secondary runs after an `exec` handoff.
//!
//! It proves it is the delivered image: it reads its own bytes (`/proc/self/exe`, which is
//! the sealed memfd the agent executed), computes their CRC-32C, reads the banner from its
//! trailer, writes both into the window's report block and posts RUNNING. Then it idles like
//! a booted OS until the monarch posts SHUTDOWN (or its parent is gone).

use crate::image;
use monarch_drivers::{Poll, Window};
use monarch_proto::Algo;
use monarch_proto::layout;
use monarch_proto::msg::{self, Command, Status};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the payload prints on standard output when it runs without a window (after a
/// network boot), followed by its report.
pub const NETBOOT_MARKER: &str = "MONARCH-PAYLOAD RUNNING";

/// Run the payload; the error is printed by the binary.
pub fn run() -> Result<(), String> {
    let me = std::fs::read("/proc/self/exe").map_err(|e| format!("cannot read my own image: {e}"))?;
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
    let w = Window::open(&path).map_err(|e| e.to_string())?;
    announce(&w, &report)?;
    let parent = rustix::process::getppid();
    idle_until_shutdown(&w, linger, &|| rustix::process::getppid() != parent);
    Ok(())
}

/// Check the window's header, write `report` into its report block and post RUNNING.
pub fn announce(w: &Window, report: &str) -> Result<(), String> {
    msg::decode_header(&|r| w.load(r), w.data_size())
        .map_err(|e| format!("window {}: {e}", w.path().display()))?;
    w.apply(&msg::encode_report(report));
    let seq = msg::next_seq(w.load32(layout::ST_SEQ));
    w.post(
        &msg::encode_status(seq, &Status::Running { pid: u64::from(std::process::id()) }),
        layout::DB_TO_PRIMARY,
    );
    Ok(())
}

/// Idle like a booted OS until the monarch posts SHUTDOWN, `gone()` says to stop, or
/// `linger` has passed.
pub fn idle_until_shutdown(w: &Window, linger: Duration, gone: &dyn Fn() -> bool) {
    let cmd_seq = w.load32(layout::CMD_SEQ);
    let start = Instant::now();
    while start.elapsed() < linger {
        let seen = w.bell_value(layout::DB_TO_SECONDARY);
        if let Poll::Message(_, Command::Shutdown) =
            w.read_message(layout::CMD_SEQ, cmd_seq, msg::decode_command)
        {
            return;
        }
        if gone() {
            return;
        }
        w.wait_bell(layout::DB_TO_SECONDARY, seen, Duration::from_millis(500));
    }
}
