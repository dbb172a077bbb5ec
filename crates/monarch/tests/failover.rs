//! Monarch election and failover end to end, with real processes: the built-in chassis has two management
//! processors; the monarch is killed (SIGKILL) or paused (SIGSTOP, then SIGCONT) at random
//! points of the boot, and every trial must end with every secondary RUNNING, released
//! exactly once, into its verified image. The paused monarch must stand down, and its late
//! commands must be ignored by the secondaries (each counts them in `status.fenced`).
//! `monarch bench failover --trials N` runs more trials than the test suite does
//! (MONARCH_FAILOVER_TRIALS sets the count here, default 8).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use monarch_bench::failover::{self, Fault, TrialSpec, When};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_monarch"))
}

fn trials() -> usize {
    std::env::var("MONARCH_FAILOVER_TRIALS").ok().and_then(|s| s.parse().ok()).unwrap_or(8)
}

#[test]
fn the_monarch_killed_at_random_points_never_costs_a_secondary() {
    let n = trials();
    let r = failover::bench(&exe(), None, n, false, None, &mut |i, t| {
        eprintln!("trial {i}: struck {} failover {:?} ok {} {:?}", t.struck, t.failover_ms, t.ok, t.problems);
    })
    .unwrap();
    assert_eq!(r.ok, n, "failed trials: {:#?}", r.failures);
    // Kill points are drawn inside the boot: most trials must really fail over.
    assert!(r.failovers * 2 >= n, "only {} of {n} trials failed over", r.failovers);
    eprintln!(
        "failover p50 {:.0} ms p99 {:.0} ms over {} failovers (timeout {:.0} ms)",
        r.p50_ms, r.p99_ms, r.failovers, r.timeout_ms
    );
}

#[test]
fn a_paused_monarch_is_fenced_and_stands_down() {
    let mut fenced_seen = 0;
    let mut stood_down = 0;
    // Early in the boot (secondaries in flight) through late, by the boot's progress (its
    // events since the election), whatever its speed.
    for (i, events) in [5usize, 20, 35, 50].into_iter().enumerate() {
        let t = failover::trial(&TrialSpec {
            exe: exe(),
            topology: None,
            fault: Fault::Pause,
            after: When::Events(events),
            limit: Duration::from_secs(120),
        })
        .unwrap();
        eprintln!("pause after {events} events: {t:?}");
        assert!(t.ok, "trial {i}: {:?}", t.problems);
        if t.failover_ms.is_some() {
            assert!(t.stood_down, "trial {i}: the paused monarch never said it stood down");
            assert_eq!(t.monarch.as_ref().map(|(m, e)| (m.as_str(), *e)), Some(("mgmt1", 2)));
            stood_down += 1;
        }
        // Every secondary the deposed monarch still wrote to ignored it (checked in trial()).
        fenced_seen += t.fenced.values().filter(|(aborted, n)| *aborted && *n > 0).count();
    }
    assert!(stood_down >= 2, "the pause landed after the boot in too many trials");
    assert!(fenced_seen > 0, "no paused monarch wrote a late command: the fence was never exercised");
}

fn up(topology: &str, extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.toml");
    std::fs::write(&f, topology).unwrap();
    let out =
        Command::new(exe()).arg("up").arg("--json").arg("--topology").arg(&f).args(extra).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(last).unwrap()
}

/// `monarch up --json --topology FILE` in a process group of its own, killed whole after
/// `limit` (a boot that never ends fails its test instead of hanging it): the child, and its
/// events as they come.
fn spawn_up(
    topology: &Path,
    limit: Duration,
) -> (std::process::Child, impl Iterator<Item = serde_json::Value>) {
    use std::io::BufRead;
    let mut cmd = Command::new(exe());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .args(["up", "--json", "--topology"])
        .arg(topology)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let group = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    });
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let events = out.lines().map_while(Result::ok).map(|line| serde_json::from_str(&line).unwrap());
    (child, events)
}

/// SIGKILL process `pid` (a candidate, by the pid its `candidate` event gave).
fn sigkill(pid: u64) -> rustix::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
}

// The election rules, not failover: a timeout long enough that a loaded CI host cannot
// depose the elected monarch and change the answer.
const THREE: &str = r#"
[chassis]
name = "three"
[election]
heartbeat = "20ms"
timeout = "3s"
[[processor]]
id = "m0"
role = "monarch"
slot = 0
[[processor]]
id = "m1"
role = "monarch"
slot = 1
boot_id = 9
self_test = "fail"
[[processor]]
id = "m2"
role = "monarch"
slot = 2
boot_id = 3
[[processor]]
id = "lc"
role = "secondary"
image = "builtin:payload"
"#;

#[test]
fn the_election_rules_pick_the_monarch_and_the_operator_can_pin_it() {
    let s = up(THREE, &[]);
    let e = &s["election"];
    assert_eq!(e["monarch"], "m2", "{s}");
    assert_eq!(e["reason"], "highest BOOT_ID (3)", "m1 has 9 but failed its self-test: {s}");
    let state = |id: &str| {
        s["processors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["state"].clone())
            .unwrap()
    };
    assert_eq!(state("m2"), "monarch");
    assert_eq!(state("m1"), "deconfigured");
    assert_eq!(state("m0"), "serf");
    assert_eq!(state("lc"), "running");
    assert_eq!(s["processors"][0]["id"], "m2", "the monarch comes first");

    let s = up(THREE, &["--monarch", "m0"]);
    assert_eq!(s["election"]["monarch"], "m0", "{s}");
    assert_eq!(s["election"]["reason"], "pinned by the operator");
    let s = up(THREE, &["--monarch", "m1"]);
    assert_eq!(s["election"]["monarch"], "m2", "{s}");
    assert!(s["election"]["reason"].as_str().unwrap().contains("the pinned m1 cannot be monarch"), "{s}");
}

/// Regression: with three candidates, the serf next in line was dead when the monarch died;
/// the last one waited for it for ever instead of deposing it too and taking over.
#[test]
fn a_dead_serf_next_in_line_is_passed_over() {
    let topology = r#"
[chassis]
name = "three-down"
[election]
heartbeat = "20ms"
timeout = "200ms"
[[processor]]
id = "m0"
role = "monarch"
boot_id = 3
[[processor]]
id = "m1"
role = "monarch"
boot_id = 2
[[processor]]
id = "m2"
role = "monarch"
boot_id = 1
[[processor]]
id = "lc"
role = "secondary"
image = "builtin:payload"
[processor.fault]
corrupt_attempts = 1
"#;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.toml");
    std::fs::write(&f, topology).unwrap();
    // Before the fix this boot never ended: stop the whole run after a minute, so the test
    // fails instead of hanging.
    let (mut child, out) = spawn_up(&f, Duration::from_secs(60));
    let kill = |pid: u64| sigkill(pid).unwrap();
    let mut pids = std::collections::HashMap::new();
    let mut last = serde_json::Value::Null;
    let mut events = Vec::new();
    let (mut strike, mut struck) = (false, false);
    for ev in out {
        events.push(ev["event"].as_str().unwrap_or_default().to_string());
        if ev["event"] == "candidate" {
            pids.insert(ev["id"].as_str().unwrap().to_string(), ev["pid"].as_u64().unwrap());
        }
        // As soon as m0 reigns: the serf next in line dies, then the monarch (once both
        // candidates' events are in: they come from two processes, in either order).
        strike |= ev["event"] == "elected" && ev["monarch"] == "m0";
        if strike
            && !struck
            && let (Some(m1), Some(m0)) = (pids.get("m1"), pids.get("m0"))
        {
            kill(*m1);
            kill(*m0);
            struck = true;
        }
        last = ev;
    }
    assert!(child.wait().unwrap().success(), "{last}");
    assert!(struck, "m0 was never elected with both candidates known: {events:?}");
    assert_eq!(last["event"], "summary");
    assert_eq!(last["election"]["monarch"], "m2", "{last}");
    let lc = last["processors"].as_array().unwrap().iter().find(|p| p["id"] == "lc").unwrap();
    assert_eq!(lc["state"], "running", "{last}");
    let stalled = events.iter().filter(|e| *e == "stalled").count();
    assert!(stalled >= 2, "m0 and then m1 were deposed: {events:?}");
}

/// A takeover restarts a secondary by what its topology says launches it: for an external
/// one, the operator's agent (here started only after the takeover, as firmware that boots
/// late would), never a host agent of the new monarch's. Regression: the restart path
/// started `monarch agent` for any window whose lock was free, whatever its launch mode.
#[test]
fn a_takeover_of_an_external_secondary_starts_no_agent_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let window = dir.path().join("ext.win");
    let topology = format!(
        r#"
[chassis]
name = "ext-takeover"
[election]
heartbeat = "20ms"
timeout = "1s"
[defaults]
timeouts = {{ rendezvous = "30s", verify = "20s", handoff = "20s", agent = "30s" }}
[[processor]]
id = "m0"
role = "monarch"
boot_id = 3
[[processor]]
id = "m1"
role = "monarch"
boot_id = 2
[[processor]]
id = "ext"
role = "secondary"
image = "builtin:payload"
image_size = "24MiB"
launch = "external"
handoff = "none"
mode = "pull"
window = {{ path = "{}" }}
"#,
        window.display()
    );
    let f = dir.path().join("t.toml");
    std::fs::write(&f, topology).unwrap();
    let (mut child, out) = spawn_up(&f, Duration::from_secs(90));
    let mut pids = std::collections::HashMap::new();
    let mut events = Vec::new();
    let (mut killed, mut agent) = (false, None);
    let mut last = serde_json::Value::Null;
    for ev in out {
        if ev["event"] == "candidate" {
            pids.insert(ev["id"].as_str().unwrap().to_string(), ev["pid"].as_u64().unwrap());
        }
        let rendezvous = ev["event"] == "phase" && ev["id"] == "ext" && ev["phase"] == "rendezvous";
        if rendezvous && !killed {
            // m0 configured and released the window and waits for an agent: kill it there.
            let m0 = pids.get("m0").copied().expect("m0 announced itself before it booted");
            let _ = sigkill(m0); // it may have stood down already (deposed on a loaded host)
            killed = true;
        } else if rendezvous && agent.is_none() {
            // m1 took over and restarted ext (without an agent: it is the operator's to
            // start); it waits at the rendezvous, where the operator's agent now comes up.
            agent = Some(
                Command::new(exe())
                    .args(["agent", "--window"])
                    .arg(&window)
                    .args(["--id", "ext", "--handoff", "none", "--timeout", "30s"])
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
        }
        events.push(ev.clone());
        last = ev;
    }
    let status = child.wait().unwrap();
    let agent = agent.expect("m1 never waited for ext's agent").wait_with_output().unwrap();
    assert!(killed, "ext never reached its rendezvous: {events:?}");
    assert!(status.success(), "{last}");
    assert!(agent.status.success(), "the external agent: {}", String::from_utf8_lossy(&agent.stderr));
    assert_eq!(last["election"]["monarch"], "m1", "{last}");
    let ext = last["processors"].as_array().unwrap().iter().find(|p| p["id"] == "ext").unwrap();
    assert_eq!(ext["state"], "released", "{last}");
    assert_eq!(ext["resumed"], "restarted in flight (its agent kept)", "{last}");
    assert!(events.iter().any(|e| e["event"] == "failover"), "{events:?}");
    let launched: Vec<_> = events.iter().filter(|e| e["event"] == "launched").collect();
    assert!(launched.is_empty(), "no monarch may start an agent for an external secondary: {launched:?}");
}

/// A monarch that dies is noticed through its death (the kernel releases its pidfd), not its
/// silence: with a heartbeat timeout of ten minutes, a serf still takes over, and says it
/// had heard the monarch only moments before.
#[test]
fn a_dead_monarch_is_noticed_by_its_death_not_its_silence() {
    let dir = tempfile::tempdir().unwrap();
    let default =
        monarch_boot::topology::DEFAULT_TOPOLOGY.replace(r#"timeout = "500ms""#, r#"timeout = "10min""#);
    assert!(default.contains("10min"), "the default chassis's election timeout moved");
    let t = dir.path().join("t.toml");
    std::fs::write(&t, default).unwrap();
    let mut took_over = 0;
    for events in [10usize, 30] {
        let r = failover::trial(&TrialSpec {
            exe: exe(),
            topology: Some(t.clone()),
            fault: Fault::Kill,
            after: When::Events(events),
            limit: Duration::from_secs(120),
        })
        .unwrap();
        assert!(r.ok, "kill after {events} events: {:?}", r.problems);
        if r.struck && r.failover_ms.is_some() {
            took_over += 1;
            let stalled = r
                .events
                .iter()
                .find_map(|(_, e)| match &e.kind {
                    monarch_boot::events::EventKind::Stalled { silent_ms, .. } => Some(*silent_ms),
                    _ => None,
                })
                .expect("the serf says whom it deposed");
            assert!(stalled < 600_000.0, "deposed for its silence ({stalled} ms), not its death");
        }
    }
    assert!(took_over > 0, "the monarch was never killed inside the boot");
}

/// A trial that is not ok keeps its logs when asked (`bench failover --keep-failed`): here a
/// boot whose `monarch up` is made to exit with a failure after it booted.
#[test]
fn a_failed_trial_keeps_its_logs_when_asked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("monarch-then-fail");
    std::fs::write(&wrapper, format!("#!/bin/sh\n{:?} \"$@\"\nexit 1\n", exe().display().to_string()))
        .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let keep = dir.path().join("kept");
    let t = failover::trial_keeping_logs(
        &TrialSpec {
            exe: wrapper,
            topology: None,
            fault: Fault::None,
            after: When::Time(Duration::ZERO),
            limit: Duration::from_secs(120),
        },
        &keep,
    )
    .unwrap();
    assert!(!t.ok, "{:?}", t.problems);
    assert!(t.problems.iter().any(|p| p.contains("exited with a failure")), "{:?}", t.problems);
    assert!(t.problems.iter().any(|p| p.contains(&keep.display().to_string())), "{:?}", t.problems);
    let logs: Vec<String> = std::fs::read_dir(&keep)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for want in ["rc0.log", "lc4.log", "mgmt.candidate.log"] {
        assert!(logs.iter().any(|l| l == want), "{want} not kept: {logs:?}");
    }
}
