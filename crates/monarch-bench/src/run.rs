//! Running `monarch up` as a child process, for the benches that time it from outside.

use monarch_boot::events::Event;
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run a `monarch up --json` command to its end, in its own process group (killed whole if
/// it outlives `limit`): the events it printed, how it exited, and its wall time in ms.
pub fn run_up(
    cmd: &mut Command,
    limit: Duration,
) -> Result<(Vec<Event>, std::process::ExitStatus, f64), String> {
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cmd.get_program().to_string_lossy()))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(limit).is_err() {
            monarch_drivers::host::signal_group(pid, rustix::process::Signal::KILL);
        }
    });
    let events: Vec<Event> = std::io::BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Event>(&l).ok())
        .collect();
    let status = child.wait().map_err(|e| e.to_string())?;
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    let _ = tx.send(());
    let _ = watchdog.join();
    Ok((events, status, wall_ms))
}
