//! Monarch election across machines: the built-in chassis' two management processors elect the
//! monarch on a real etcd (Debian's etcd-server, started by each test on loopback) instead
//! of the backplane, and `monarch up` boots through it — with the monarch SIGKILLed
//! mid-boot, with etcd stopped (SIGSTOP) mid-boot for longer than a lease, and with etcd
//! killed for good. Every outcome is judged from outside, as in tests/failover.rs: each
//! secondary RUNNING, released exactly once, into its verified image; or a clear error.
#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use monarch_bench::failover::{self, Fault, Trial, TrialSpec, When};
use monarch_boot::events::EventKind;
use monarch_boot::monarch_etcd::server::LocalEtcd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_monarch"))
}

/// A private etcd, installing it first (apt-get) if it is missing.
fn local_etcd() -> LocalEtcd {
    let etcd = [("etcd", monarch_boot::monarch_etcd::server::PACKAGE)];
    monarch_drivers::host::ensure_packages(&etcd, &mut |m| eprintln!("{m}")).expect("etcd installed");
    LocalEtcd::start().unwrap()
}

/// The built-in chassis, electing on `etcd` with a 2 s lease.
fn topology(dir: &Path, etcd: &LocalEtcd, etcd_timeout: &str) -> PathBuf {
    let out = Command::new(exe()).args(["topology", "default"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap().replace(
        "[election]\n",
        &format!(
            "[election]\netcd = [\"{}\"]\nttl = \"2s\"\netcd_timeout = \"{etcd_timeout}\"\n",
            etcd.endpoint()
        ),
    );
    assert!(text.contains("etcd = "), "the default chassis has an [election] table");
    let f = dir.join("etcd-chassis.toml");
    std::fs::write(&f, text).unwrap();
    f
}

fn trial(topology: &Path, fault: Fault, after: When) -> Trial {
    let t = failover::trial(&TrialSpec {
        exe: exe(),
        topology: Some(topology.to_path_buf()),
        fault,
        after,
        limit: Duration::from_secs(120),
    })
    .unwrap();
    for (since_fault, ev) in &t.events {
        if !matches!(ev.kind, EventKind::Phase { .. } | EventKind::Summary(_)) {
            eprintln!("{:>9.1} ms (fault {since_fault:>8.1?}) {:?}", ev.t_ms, ev.kind);
        }
    }
    t
}

/// (candidate, epoch, event time) of every election, in order.
fn elections(t: &Trial) -> Vec<(String, u32, f64)> {
    t.events
        .iter()
        .filter_map(|(_, e)| match &e.kind {
            EventKind::Elected { monarch, epoch, .. } => Some((monarch.clone(), *epoch, e.t_ms)),
            _ => None,
        })
        .collect()
}

/// Agents and images the run started are all gone once `monarch up` has returned.
fn assert_nothing_left(t: &Trial) {
    for (_, e) in &t.events {
        if let EventKind::Launched { id, pid, .. } = &e.kind {
            assert!(!monarch_boot::host::alive(*pid), "{id}'s process {pid} outlived the chassis");
        }
    }
}

#[test]
fn the_monarch_killed_mid_boot_is_replaced_through_etcd() {
    let etcd = local_etcd();
    let dir = tempfile::tempdir().unwrap();
    let topo = topology(dir.path(), &etcd, "15s");
    // Mid-boot by its progress, not by a time: a faster boot is struck as far into it.
    let t = trial(&topo, Fault::Kill, When::Events(20));
    assert!(t.ok, "{:?}", t.problems);
    assert!(t.struck, "the boot was over before the kill");
    let e = elections(&t);
    assert_eq!(
        e.first().map(|x| x.0.as_str()),
        Some("mgmt"),
        "the reference design's rules: equal BOOT_IDs, lowest slot"
    );
    let (last, last_epoch, _) = e.last().cloned().unwrap();
    assert_eq!(last, "mgmt1", "the serf took over: {e:?}");
    assert!(last_epoch > e[0].1, "epochs grow: {e:?}");
    let ms = t.failover_ms.expect("a failover was announced");
    eprintln!("failover through etcd {ms:.0} ms after the kill (lease TTL 2 s)");
    assert_nothing_left(&t);
}

#[test]
fn etcd_stopped_mid_boot_never_two_monarchs() {
    let etcd = local_etcd();
    let dir = tempfile::tempdir().unwrap();
    let topo = topology(dir.path(), &etcd, "15s");
    let stopped_for = 4000.0;
    let fault =
        Fault::Outside { pid: etcd.pid(), resume_after: Some(Duration::from_secs_f64(stopped_for / 1e3)) };
    let t = trial(&topo, fault, When::Events(20));
    // The boot finishes once etcd is back, every secondary released exactly once, into its
    // verified image (judged by the trial from the agents' release log).
    assert!(t.ok, "{:?}", t.problems);
    assert!(t.struck);
    // The monarch stood down while etcd was still stopped: it could no longer prove its
    // lease. Nobody was elected until etcd was back, and every later election came after the
    // stand-down: never two monarchs acting.
    let since = |kind: fn(&EventKind) -> bool| -> Vec<(f64, f64)> {
        t.events.iter().filter(|(_, e)| kind(&e.kind)).map(|(s, e)| (s.unwrap_or(-1.0), e.t_ms)).collect()
    };
    let stood = since(|k| matches!(k, EventKind::StoodDown { .. }));
    let elected = since(|k| matches!(k, EventKind::Elected { .. }));
    let (down_since_fault, down_at) = *stood.first().expect("the monarch stood down");
    assert!(
        down_since_fault > 0.0 && down_since_fault < stopped_for,
        "it stood down {down_since_fault:.0} ms after etcd stopped (etcd was stopped for {stopped_for} ms)"
    );
    let later: Vec<_> = elected.iter().filter(|(s, _)| *s > 0.0).collect();
    // Once etcd is back, either someone is elected and finishes the boot, or the old
    // monarch's mark that the boot is done, sent before etcd stopped answering, lands late:
    // then that monarch finished it, at the epoch it had, and nobody else acts.
    let first_epoch = t.events.iter().find_map(|(_, e)| match &e.kind {
        EventKind::Elected { epoch, .. } => Some(*epoch),
        _ => None,
    });
    let finished_late = t.events.iter().any(|(s, e)| {
        matches!(&e.kind, EventKind::Finished { epoch, ok: true, .. } if Some(*epoch) == first_epoch)
            && s.is_some_and(|s| s >= stopped_for)
    });
    assert!(!later.is_empty() || finished_late, "someone was elected once etcd was back: {elected:?}");
    for (s, at) in later {
        assert!(*s >= stopped_for, "elected {s:.0} ms after etcd stopped, while it was still stopped");
        assert!(*at > down_at, "elected at {at:.0} ms, before the old monarch stood down at {down_at:.0} ms");
    }
    assert_nothing_left(&t);
}

#[test]
fn etcd_gone_for_good_fails_the_boot_with_a_clear_error() {
    let etcd = local_etcd();
    let dir = tempfile::tempdir().unwrap();
    let topo = topology(dir.path(), &etcd, "4s");
    let t = trial(&topo, Fault::Outside { pid: etcd.pid(), resume_after: None }, When::Events(10));
    assert!(!t.ok, "the boot cannot finish without etcd");
    let s = t.summary.as_ref().expect("a summary");
    assert!(!s.ok);
    let why = s.error.clone().unwrap_or_default();
    eprintln!("the chassis said: {why}");
    assert!(why.contains("etcd") && why.contains("etcd_timeout"), "{why}");
    assert!(why.contains(etcd.endpoint()), "the error names the endpoint: {why}");
    // No second monarch ever acted: one election only, and no secondary released twice.
    assert_eq!(elections(&t).len(), 1, "{:?}", elections(&t));
    assert!(!t.problems.iter().any(|p| p.contains("released 2")), "{:?}", t.problems);
    assert!(t.run_ms < 60_000.0, "gave up only after {:.0} ms", t.run_ms);
    assert_nothing_left(&t);
}
