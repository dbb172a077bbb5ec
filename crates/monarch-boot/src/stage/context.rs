//! What every stage shares, window or network: the run's context and the monarch's
//! authority, the result of a stage, the summary's port and time formats, and the logs of
//! the processes a stage starts.
use crate::events::{EventKind, ProcessorSummary};
use crate::topology::{PortPath, Secondary};
use monarch_drivers::Window;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

/// What the stage needs from the run.
pub struct StageCtx<'a> {
    /// Start of the run (event timestamps).
    pub clock: Instant,
    /// Where events go.
    pub emit: &'a (dyn Fn(EventKind) + Sync),
    /// The `monarch` binary to start agents with.
    pub agent_exe: &'a Path,
    /// Behind a switch: this secondary's turn on its link (taken for the copy and the
    /// verification; the time waiting for it is the stage's `queued` time).
    pub link: Option<&'a crate::stage::link::Turn<'a>>,
    /// On whose authority the monarch acts (its command block and epoch).
    pub authority: &'a Authority<'a>,
    /// What a secondary waits for before it is released: power, dependencies.
    pub gate: &'a crate::gate::Gate,
    /// Booted again by the supervisor (a restart, a reboot, a startup): its previous image
    /// is gone, and the secondary's registers are reset as a reset of it would.
    pub again: bool,
}

/// The monarch's authority over the windows (monarch election): the command block it writes, the
/// epoch stamped on every command, whether it takes over a boot another monarch started,
/// and the check, made before every command and every chunk, that it still is monarch.
pub struct Authority<'a> {
    /// The monarch's id (`None`: the topology's only management processor).
    pub name: Option<&'a str>,
    /// Its command block in every window (its candidate index).
    pub block: usize,
    /// Its epoch.
    pub epoch: u32,
    /// Take over what a previous monarch left in the windows instead of starting afresh.
    pub resume: bool,
    /// `Err(why)` once this process is no longer monarch: it stops acting at once.
    pub check: &'a (dyn Fn() -> Result<(), String> + Sync),
    /// One of several monarchs: never zero a window's registers (the chassis did at power-on;
    /// a newer monarch may be using them). Every monarch claims each window's `cfg.epoch` by
    /// compare-and-swap before configuring it.
    pub shared: bool,
}

impl Authority<'static> {
    /// The only monarch there is: block 0, epoch 1, never deposed.
    pub fn sole() -> Authority<'static> {
        Authority { name: None, block: 0, epoch: 1, resume: false, check: &|| Ok(()), shared: false }
    }
}

/// A staged secondary: its summary, and what keeps running afterwards.
pub struct Staged {
    /// The summary line.
    pub summary: ProcessorSummary,
    /// The launched process (now the running image), if any.
    pub child: Option<Child>,
    /// The window (to send SHUTDOWN at the end of an emulated run).
    pub window: Option<Window>,
    /// The running image's pid when another monarch started it (not our child).
    pub adopted_pid: Option<u32>,
}

/// Milliseconds, to the microsecond (event and summary times).
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The `Retrieved` event of a secondary whose image was just retrieved, window or network.
pub fn retrieved(sec: &Secondary, image: &crate::image::Image) -> EventKind {
    EventKind::Retrieved {
        id: sec.id.clone(),
        image: sec.image.to_string(),
        bytes: image.len,
        algo: sec.algo.name().into(),
        checksum: image.digest.to_hex(sec.algo),
    }
}

/// `direct`, or `switch` and the switch's name, as a summary shows a secondary's port.
pub fn port_path(sec: &Secondary) -> (Option<String>, Option<String>) {
    match &sec.path {
        PortPath::Direct => (Some("direct".into()), None),
        PortPath::Switch(s) => (Some("switch".into()), Some(s.clone())),
    }
}

/// The `Done` event of a secondary, read off the summary it ends with (window and netboot
/// stages alike), so the event and the summary cannot disagree.
pub fn announce_done(emit: &(dyn Fn(EventKind) + Sync), s: &ProcessorSummary) {
    emit(EventKind::Done {
        id: s.id.clone(),
        state: s.state.clone(),
        attempts: s.attempts,
        bytes: s.bytes,
        ms: s.timings_ms.total,
        report: s.report.clone(),
        error: s.error.clone(),
    });
}

/// Start `cmd` with stdin closed and stdout + stderr appended to `log` (`what` names it in
/// errors).
///
/// The log is opened for appending, not truncated: a spare agent launched for a window (a
/// new monarch's, or a relaunch) must not wipe the log of an agent still writing to it,
/// whose next write would then land at its old offset behind a hole of NUL bytes. A log
/// over [`LOG_CAP`] is emptied first, so a fixed `run_dir` cannot grow one without bound;
/// with every writer appending, that leaves no hole either.
pub(crate) fn spawn_logged(cmd: &mut Process, log: &Path, what: &str) -> Result<Child, String> {
    let out = open_log(log).map_err(|e| format!("cannot create {what} {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("cannot share {what} {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().map_err(|e| e.to_string())
}

/// Open a process's log for appending (see `spawn_logged` for why not truncating), emptied
/// first if it is over [`LOG_CAP`].
pub fn open_log(log: &Path) -> std::io::Result<File> {
    let f = File::options().append(true).create(true).open(log)?;
    if f.metadata()?.len() > LOG_CAP {
        f.set_len(0)?;
    }
    Ok(f)
}

/// Size above which a log is emptied when the next process is started on it.
pub const LOG_CAP: u64 = 4 << 20;

/// The last non-empty line of an agent log, trimmed (for error messages).
/// Only the end of the file is read (a VM's console is the guest's to fill), decoded
/// lossily, with control characters dropped before it reaches an operator's terminal.
pub fn log_tail(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut raw = Vec::new();
    f.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(monarch_proto::text::printable(line.trim(), monarch_proto::text::MAX_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_process_on_a_log_keeps_what_the_live_one_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        let go = dir.path().join("go");
        let script = format!("echo first; while [ ! -e {} ]; do sleep 0.01; done; echo late", go.display());
        let mut live = spawn_logged(Process::new("sh").args(["-c", &script]), &log, "log").unwrap();
        // Wait for the live one's first line, then start a spare on the same log.
        let t = std::time::Instant::now();
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("first") {
            assert!(t.elapsed() < Duration::from_secs(10), "the first process never wrote");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut spare = spawn_logged(Process::new("sh").args(["-c", "echo spare"]), &log, "log").unwrap();
        assert!(spare.wait().unwrap().success());
        std::fs::write(&go, b"").unwrap();
        assert!(live.wait().unwrap().success());
        let text = std::fs::read(&log).unwrap();
        assert!(!text.contains(&0), "a hole of NUL bytes: {text:?}");
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.lines().collect::<Vec<_>>(), ["first", "spare", "late"], "{text}");
        assert_eq!(log_tail(&log).as_deref(), Some("late"));
        // An oversized log is emptied when the next process starts on it.
        std::fs::write(&log, vec![b'x'; usize::try_from(LOG_CAP).unwrap() + 1]).unwrap();
        let mut next = spawn_logged(Process::new("sh").args(["-c", "echo fresh"]), &log, "log").unwrap();
        assert!(next.wait().unwrap().success());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "fresh\n");
    }
}
