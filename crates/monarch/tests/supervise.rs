//! End-to-end tests of the chassis after its boot: dependencies, power domains, crash
//! recovery, negotiated reboots and shutdowns, ports, reboot causes across runs. Real
//! `monarch up` processes, real agents and images, a real control socket; ports live in a
//! network namespace each test creates (and that disappears with its monarch).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{Chassis, MONARCH, Run, dump, find, is, secondary, server_head, t_of, up_json, write_topology};

/// The supervised server most tests here start (`common::server`), dpu0 ready 300 ms after
/// it runs. `dpu0`, `dpu1` and `host` add lines to each.
fn server(dpu0: &str, dpu1: &str, host: &str) -> String {
    common::server("sup", &format!("ready_after = \"300ms\"\n{dpu0}"), dpu1, host)
}

/// Whether `port` is administratively up in the network namespace of process `pid`.
fn port_up(pid: u32, port: &str) -> bool {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["ip", "-o", "link", "show", port])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ip link show {port}: {}", String::from_utf8_lossy(&out.stderr));
    let flags = text.split('<').nth(1).and_then(|r| r.split('>').next()).unwrap_or("");
    flags.split(',').any(|f| f == "UP")
}

fn pid_of(status: &Value) -> u32 {
    u32::try_from(status["pid"].as_u64().unwrap_or_else(|| panic!("no pid in {status}"))).unwrap()
}

fn kill9(pid: u32) {
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
}

fn up(topology: &str) -> (Run, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let t = write_topology(dir.path(), topology);
    (up_json(Some(&t)), dir)
}

#[test]
fn a_dependent_is_released_only_after_its_requirement_is_ready_and_goes_on_without_a_late_want() {
    // dpu1 never gets ready: the host waits for it 1 s (its `wait`), then goes on degraded.
    let topo = server("", "fault = { never_ready = true }", "").replace("wait = \"5s\"", "wait = \"1s\"");
    for _ in 0..2 {
        let (r, _dir) = up(&topo);
        assert_eq!(r.code, 0, "{}\n{}", r.stderr, dump(&r.events));
        let ready = r.events.iter().find(|e| is(e, "ready", "dpu0")).expect("dpu0 ready");
        let released = r.events.iter().find(|e| is(e, "released", "host")).expect("host released");
        assert!(t_of(released) >= t_of(ready), "host released before dpu0 was ready:\n{}", dump(&r.events));
        let held = r.events.iter().find(|e| is(e, "held", "host")).expect("host held at its rendezvous");
        assert!(t_of(held) <= t_of(released));
        assert_eq!(released["without"], serde_json::json!(["dpu1"]), "{released}");
        let host = r.processor("host");
        assert_eq!(host["state"], "running");
        assert_eq!(host["without"], serde_json::json!(["dpu1"]));
        assert!(host["report"].as_str().unwrap().contains("degraded: without dpu1"), "{host}");
        // Main power came on only after the aux domain was up.
        let power = r.events.iter().find(|e| e["event"] == "power" && e["domain"] == "main").unwrap();
        for id in ["dpu0", "dpu1"] {
            let done = r.events.iter().find(|e| is(e, "done", id)).unwrap();
            assert!(t_of(power) >= t_of(done), "main power before {id} was up");
        }
        assert!(r.events.iter().any(|e| is(e, "powered_off", "host")));
    }
}

#[test]
fn a_required_dependency_that_fails_fails_its_dependent_with_a_reason_naming_it() {
    // dpu0's only copy is corrupted: it fails, and the host with it.
    let topo = server("attempts = 1\nfault = { corrupt_attempts = 1 }", "", "");
    let (r, _dir) = up(&topo);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.processor("dpu0")["state"], "failed");
    assert_eq!(r.processor("dpu1")["state"], "running");
    let host = r.processor("host");
    assert_eq!(host["state"], "failed");
    let why = host["error"].as_str().unwrap();
    assert!(why.contains("required dependency dpu0 failed"), "{why}");
}

#[test]
fn a_killed_dpu_is_delivered_again_while_its_host_runs_on_told_lost_then_restored_and_its_port_follows() {
    let topo = server("", "ports = [\"p-dpu1\"]", "");
    let c = Chassis::start(&topo, &[("p-dpu1", "p-peer")]);
    let (_, _) = c.wait_for("the host ready", &|e| is(e, "ready", "host"));
    let (_, _) = c.wait_for("dpu1's port up", &|e| is(e, "port", "dpu1") && e["up"] == true);
    assert!(port_up(c.monarch_pid(), "p-dpu1"), "dpu1 is ready: its port is up");
    let host_pid = pid_of(&c.status("host"));
    let dpu1_pid = pid_of(&c.status("dpu1"));
    let mark = c.events().len();
    kill9(dpu1_pid);

    let (lost, e) = c.wait_after(mark, "dpu1 lost", &|e| is(e, "lost", "dpu1"));
    assert!(e["cause"].as_str().unwrap().contains("SIGKILL"), "{e}");
    let (told_lost, _) =
        c.wait_after(mark, "host told", &|e| is(e, "notice", "host") && e["notice"] == "dependency-lost");
    let (down, _) = c.wait_after(mark, "port down", &|e| is(e, "port", "dpu1") && e["up"] == false);
    // Delivered and verified again: a fresh copy, RUNNING again, ready again.
    let (copied, _) = c.wait_after(lost, "dpu1 copied again", &|e| is(e, "copied", "dpu1"));
    let (running, _) =
        c.wait_after(copied, "dpu1 running again", &|e| is(e, "done", "dpu1") && e["state"] == "running");
    let (ready, _) = c.wait_after(running, "dpu1 ready again", &|e| is(e, "ready", "dpu1"));
    let (restored, _) = c.wait_after(ready, "host told restored", &|e| {
        is(e, "notice", "host") && e["notice"] == "dependency-restored"
    });
    let (up, _) = c.wait_after(ready, "port up", &|e| is(e, "port", "dpu1") && e["up"] == true);
    assert!(lost < told_lost && told_lost < restored && down < up, "order:\n{}", dump(&c.events()));
    assert!(port_up(c.monarch_pid(), "p-dpu1"));
    // The host never went down.
    let host = c.status("host");
    assert_eq!(pid_of(&host), host_pid, "the host kept running: {host}");
    assert_eq!(host["restarts"], 0);
    let dpu1 = c.status("dpu1");
    assert_ne!(pid_of(&dpu1), dpu1_pid);
    assert_eq!(dpu1["restarts"], 1);
    assert!(dpu1["last_causes"][0]["cause"].as_str().unwrap().contains("SIGKILL"), "{dpu1}");
    assert!(!c.events()[mark..].iter().any(|e| is(e, "lost", "host")));
    let (code, _) = c.shut_down();
    assert_eq!(code, 0);
}

#[test]
fn past_its_restart_limit_a_dpu_stays_failed_and_its_reboot_causes_outlive_monarch() {
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let topo = server("", "max_restarts = 1", "")
        .replace("state_dir = \"state\"", &format!("state_dir = \"{}\"", state.display()));
    let c = Chassis::start(&topo, &[]);
    c.wait_for("host ready", &|e| is(e, "ready", "host"));
    kill9(pid_of(&c.status("dpu1")));
    let (i, _) = c.wait_for("restart", &|e| is(e, "restarting", "dpu1"));
    let (i, _) = c.wait_after(i, "running again", &|e| is(e, "done", "dpu1") && e["state"] == "running");
    c.wait_after(i, "ready again", &|e| is(e, "ready", "dpu1"));
    kill9(pid_of(&c.status("dpu1")));
    let (_, down) = c.wait_for("dpu1 failed", &|e| is(e, "down", "dpu1"));
    assert_eq!(down["state"], "failed");
    assert!(down["why"].as_str().unwrap().contains("restart limit"), "{down}");
    let dpu1 = c.status("dpu1");
    assert_eq!(dpu1["state"], "failed");
    let history = dpu1["history"].as_array().unwrap().clone();
    assert_eq!(history.len(), 2, "{dpu1}");
    assert!(history[1]["action"].as_str().unwrap().contains("restart limit"), "{dpu1}");
    // The host runs on, degraded.
    assert_eq!(c.status("host")["state"], "running");
    assert_eq!(c.status("host")["without"], serde_json::json!(["dpu1"]));
    let (code, _) = c.shut_down();
    assert_eq!(code, 1, "a required secondary failed for good");

    // A new monarch over the same state folder still knows.
    assert!(state.join("reboot-causes.jsonl").exists());
    let again = Chassis::start(&topo, &[]);
    let h = again.status("dpu1");
    assert_eq!(h["history"].as_array().unwrap().len(), 2, "{h}");
    assert_eq!(h["history"][0]["cause"], history[0]["cause"]);
    let out = again.ctl(&["status", "dpu1", "--history"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("restart limit reached"), "{text}");
    drop(again);
}

#[test]
fn a_reboot_waits_for_a_deferring_dependent_until_its_deadline_force_does_not_and_shutdown_goes_in_reverse_order()
 {
    let topo = server("", "", "fault = { defer_notices = \"I/O in flight\" }");
    let c = Chassis::start(&topo, &[]);
    c.wait_for("host ready", &|e| is(e, "ready", "host"));
    let mark = c.events().len();
    let said = c.ctl_ok(&["reboot", "dpu0", "--deadline", "1s"]);
    assert!(said.contains("host defers") && said.contains("I/O in flight"), "{said}");
    let ev = c.events();
    let defer =
        find(&ev, mark, &|e| is(e, "answer", "host") && e["answer"] == "defer").expect("host deferred");
    let over =
        find(&ev, mark, &|e| is(e, "overridden", "host") && e["why"] == "deadline").expect("deadline passed");
    let lost =
        find(&ev, mark, &|e| is(e, "notice", "host") && e["notice"] == "dependency-lost").expect("host told");
    let again = find(&ev, mark, &|e| is(e, "done", "dpu0") && e["state"] == "running").expect("dpu0 back");
    assert!(defer < over && over < lost && lost < again, "order:\n{}", dump(&ev));
    assert_eq!(ev[defer]["reason"], "I/O in flight");
    // The host stayed up throughout.
    assert!(!ev[mark..].iter().any(|e| is(e, "lost", "host")));
    c.wait_after(again, "dpu0 ready", &|e| is(e, "ready", "dpu0"));

    // --force: no waiting for anyone.
    let mark = c.events().len();
    c.ctl_ok(&["reboot", "dpu0", "--force"]);
    let ev = c.events();
    assert!(
        find(&ev, mark, &|e| is(e, "overridden", "host") && e["why"] == "force").is_some(),
        "{}",
        dump(&ev)
    );
    assert!(
        find(&ev, mark, &|e| is(e, "overridden", "host") && e["why"] == "deadline").is_none(),
        "{}",
        dump(&ev)
    );
    c.wait_after(mark, "dpu0 ready", &|e| is(e, "ready", "dpu0"));

    // A host reboot: its DPUs are told to clean up its context, answer, and stay up.
    let dpu_pids: Vec<u32> = ["dpu0", "dpu1"].iter().map(|id| pid_of(&c.status(id))).collect();
    let mark = c.events().len();
    c.ctl_ok(&["reboot", "host", "--deadline", "1s"]);
    let ev = c.events();
    for dpu in ["dpu0", "dpu1"] {
        let told =
            find(&ev, mark, &|e| is(e, "notice", dpu) && e["notice"] == "peer-reboot").expect("DPU told");
        assert!(ev[told]["about"].as_str().unwrap().contains("host reboots"), "{}", ev[told]);
        assert!(find(&ev, told, &|e| is(e, "answer", dpu) && e["notice"] == "peer-reboot").is_some());
    }
    let after: Vec<u32> = ["dpu0", "dpu1"].iter().map(|id| pid_of(&c.status(id))).collect();
    assert_eq!(after, dpu_pids, "the DPUs stayed up");
    assert!(
        find(&ev, mark, &|e| is(e, "done", "host") && e["state"] == "running").is_some(),
        "{}",
        dump(&ev)
    );
    c.wait_after(mark, "host ready", &|e| is(e, "ready", "host"));

    // Shutdown of the chassis: every acknowledgement before power-off, dependents first
    // (the host defers until its deadline, then goes).
    let mark = c.events().len();
    let (code, ev) = c.shut_down_with(&["--deadline", "1s"]);
    assert_eq!(code, 0);
    let ack = |id: &str| {
        find(&ev, mark, &|e| is(e, "answer", id) && e["notice"] == "shutdown")
            .unwrap_or_else(|| panic!("{id}: no answer\n{}", dump(&ev)))
    };
    let main_off =
        find(&ev, mark, &|e| e["event"] == "power" && e["domain"] == "main" && e["on"] == false).unwrap();
    let aux_off =
        find(&ev, mark, &|e| e["event"] == "power" && e["domain"] == "aux" && e["on"] == false).unwrap();
    let host_down = find(&ev, mark, &|e| is(e, "down", "host")).unwrap();
    assert!(ack("host") < host_down && host_down < main_off, "host first:\n{}", dump(&ev));
    for dpu in ["dpu0", "dpu1"] {
        let down = find(&ev, mark, &|e| is(e, "down", dpu)).unwrap();
        assert!(main_off < ack(dpu) && ack(dpu) < down && down < aux_off, "{dpu}:\n{}", dump(&ev));
    }
}

#[test]
fn with_manual_main_power_the_host_waits_for_power_on() {
    let topo =
        server("", "", "").replace("state_dir = \"state\"", "state_dir = \"state\"\nmain_power = \"manual\"");
    let c = Chassis::start(&topo, &[]);
    c.wait_for("dpu0 ready", &|e| is(e, "ready", "dpu0"));
    c.wait_for("host off", &|e| is(e, "powered_off", "host"));
    // The aux domain is up and ready; the host still waits for main power.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!c.events().iter().any(|e| is(e, "launched", "host")), "{}", dump(&c.events()));
    let host = c.status("host");
    assert_eq!(host["state"], "booting");
    let mark = c.events().len();
    c.ctl_ok(&["power", "on"]);
    let (p, _) = c.wait_after(mark, "power on", &|e| e["event"] == "power" && e["on"] == true);
    let (l, _) = c.wait_after(mark, "host launched", &|e| is(e, "launched", "host"));
    assert!(p < l);
    c.wait_after(l, "host ready", &|e| is(e, "ready", "host"));
    // Power off: the host is shut down first; power on again brings it back.
    c.ctl_ok(&["power", "off"]);
    assert_eq!(c.status("host")["state"], "off");
    assert_eq!(c.status("dpu0")["state"], "running");
    let mark = c.events().len();
    c.ctl_ok(&["power", "on"]);
    c.wait_after(mark, "host ready again", &|e| is(e, "ready", "host"));
    let (code, _) = c.shut_down();
    assert_eq!(code, 0);
}

#[test]
fn the_chassis_commands_say_what_is_wrong() {
    // No chassis under that name.
    let out = Command::new(MONARCH).args(["status", "--chassis", "no-such-chassis-here"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("monarch up --hold") && e.contains("no-such-chassis-here"), "{e}");
    // An unknown id on a running chassis.
    let c = Chassis::start(&server("", "", ""), &[]);
    let out = c.ctl(&["reboot", "dpu9"]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("dpu9") && e.contains("dpu0, dpu1, host"), "{e}");
    let out = c.ctl(&["startup", "dpu0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already"), "{out:?}");
    // Events follow: a request shows up in the stream.
    let follow = Command::new(MONARCH)
        .args(["events", "--follow", "--json", "--socket"])
        .arg(&c.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.ctl_ok(&["shutdown", "dpu1"]);
    assert_eq!(c.status("dpu1")["admin"], "down");
    c.ctl_ok(&["startup", "dpu1"]);
    let (code, _) = c.shut_down();
    assert_eq!(code, 0);
    let out = follow.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"event\":\"request\"") && text.contains("shutdown dpu1"), "{text}");
}

#[test]
fn when_the_holding_monarch_dies_a_serf_takes_supervision_over_without_restarting_anyone() {
    let topo = server("", "", "").replace(
        "[[processor]]\nid = \"bmc\"\nrole = \"monarch\"\n",
        "[election]\nheartbeat = \"50ms\"\ntimeout = \"1s\"\n\n[[processor]]\nid = \"bmc\"\nrole = \"monarch\"\n\n[[processor]]\nid = \"bmc1\"\nrole = \"monarch\"\n",
    );
    let c = Chassis::start(&topo, &[]);
    c.wait_for("host ready", &|e| is(e, "ready", "host"));
    let (_, elected) = c.wait_for("the election", &|e| e["event"] == "elected");
    let monarch = elected["monarch"].as_str().unwrap().to_string();
    let (_, cand) =
        c.wait_for("the monarch's candidate", &|e| e["event"] == "candidate" && e["id"] == monarch.as_str());
    let pids: Vec<u32> = ["dpu0", "dpu1", "host"].iter().map(|id| pid_of(&c.status(id))).collect();
    let mark = c.events().len();
    kill9(u32::try_from(cand["pid"].as_u64().unwrap()).unwrap());
    let (f, failover) = c.wait_after(mark, "a failover", &|e| e["event"] == "failover");
    assert_eq!(failover["from"], monarch.as_str());
    // The new monarch supervises: its control socket answers, and nothing was restarted.
    c.wait_after(f, "the new supervisor", &|e| e["event"] == "supervising");
    for id in ["dpu0", "dpu1", "host"] {
        let (_, d) = c.wait_after(f, "adopted", &|e| is(e, "done", id));
        assert_eq!(d["state"], "running", "{d}");
    }
    let after: Vec<u32> = ["dpu0", "dpu1", "host"].iter().map(|id| pid_of(&c.status(id))).collect();
    assert_eq!(after, pids, "every image kept its pid");
    let ev = c.events();
    assert!(
        !ev[mark..].iter().any(|e| e["event"] == "launched" || e["event"] == "lost"),
        "{}",
        dump(&ev[mark..])
    );
    // A later crash of a DPU is still recovered, by the new monarch.
    let mark = c.events().len();
    kill9(pids[1]);
    let (l, _) = c.wait_after(mark, "dpu1 lost", &|e| is(e, "lost", "dpu1"));
    let (r, _) = c.wait_after(l, "dpu1 running again", &|e| is(e, "done", "dpu1") && e["state"] == "running");
    c.wait_after(r, "dpu1 ready again", &|e| is(e, "ready", "dpu1"));
    assert_eq!(c.status("dpu1")["restarts"], 1);
    assert_eq!(pid_of(&c.status("host")), pids[2]);
    let (code, _) = c.shut_down();
    assert_eq!(code, 0);
}

#[test]
fn bench_recovery_kills_running_images_and_reports_detection_and_recovery_beside_delivery() {
    let out = Command::new(MONARCH).args(["bench", "recovery", "--trials", "3", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["trials"], 3);
    assert_eq!(r["ok"], 3, "{r}");
    for f in ["detect_p50_ms", "detect_p99_ms", "recover_p50_ms", "recover_p99_ms", "deliver_p50_ms"] {
        assert!(r[f].as_f64().is_some_and(|x| x > 0.0), "{f}: {r}");
    }
    assert!(r["detect_p50_ms"].as_f64() <= r["recover_p50_ms"].as_f64(), "{r}");
}

#[test]
fn a_host_whose_dpu_resets_crash_it_is_restarted_with_the_dpu_when_asked() {
    let topo = server("", "", "on_dependency_loss = \"restart\"");
    let c = Chassis::start(&topo, &[]);
    c.wait_for("host ready", &|e| is(e, "ready", "host"));
    let host_pid = pid_of(&c.status("host"));
    let mark = c.events().len();
    kill9(pid_of(&c.status("dpu0")));
    let (_, lost) = c.wait_after(mark, "host lost", &|e| is(e, "lost", "host"));
    assert!(lost["cause"].as_str().unwrap().contains("dpu0"), "{lost}");
    // The host comes back only once dpu0 is ready again.
    let (dpu_ready, _) = c.wait_after(mark, "dpu0 ready", &|e| is(e, "ready", "dpu0"));
    let (released, _) = c.wait_after(mark, "host released", &|e| is(e, "released", "host"));
    assert!(dpu_ready < released, "{}", dump(&c.events()));
    c.wait_after(released, "host ready", &|e| is(e, "ready", "host"));
    assert_ne!(pid_of(&c.status("host")), host_pid);
    // Killing a DPU the host only wants leaves the host alone.
    let host_pid = pid_of(&c.status("host"));
    let mark = c.events().len();
    kill9(pid_of(&c.status("dpu1")));
    c.wait_after(mark, "dpu1 back", &|e| is(e, "ready", "dpu1"));
    assert_eq!(pid_of(&c.status("host")), host_pid);
    let (code, _) = c.shut_down();
    assert_eq!(code, 0);
}

#[test]
fn sigterm_shuts_a_held_chassis_down_gracefully_and_a_released_firmware_is_not_mistaken_for_a_crash() {
    // fw0 hands off with `none` (firmware that jumps by itself): released, no image to watch.
    let topo = format!("{}\n{}", server("", "", ""), secondary("fw0", "handoff = \"none\""));
    let mut c = Chassis::start(&topo, &[]);
    c.wait_for("host ready", &|e| is(e, "ready", "host"));
    c.wait_for("fw0 released", &|e| is(e, "done", "fw0") && e["state"] == "released");
    std::thread::sleep(Duration::from_millis(1500));
    let fw = c.status("fw0");
    assert_eq!(fw["state"], "running", "{fw}");
    assert_eq!(fw["restarts"], 0, "{fw}");
    assert!(!c.events().iter().any(|e| is(e, "lost", "fw0")), "{}", dump(&c.events()));
    let pid = c.monarch_pid();
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let start = std::time::Instant::now();
    let code = loop {
        if let Some(s) = c.child.try_wait().unwrap() {
            break s.code();
        }
        assert!(start.elapsed() < common::WAIT, "up --hold did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(100));
    let ev = c.events();
    assert_eq!(code, Some(0), "{}", dump(&ev));
    let ack = find(&ev, 0, &|e| is(e, "answer", "host") && e["notice"] == "shutdown").expect("host told");
    let main_off =
        find(&ev, 0, &|e| e["event"] == "power" && e["domain"] == "main" && e["on"] == false).unwrap();
    assert!(ack < main_off);
    assert!(
        find(&ev, 0, &|e| e["event"] == "request" && e["what"].as_str().unwrap().contains("SIGTERM"))
            .is_some()
    );
}

#[test]
fn a_shutdown_during_the_boot_reports_the_waiting_host_shut_down_and_refuses_what_comes_after() {
    let topo =
        server("", "", "").replace("state_dir = \"state\"", "state_dir = \"state\"\nmain_power = \"manual\"");
    let c = Chassis::start(&topo, &[]);
    c.wait_for("host off", &|e| is(e, "powered_off", "host"));
    c.wait_for("dpu0 ready", &|e| is(e, "ready", "dpu0"));
    // Still booting: a reboot of it would start a second boot.
    let out = c.ctl(&["reboot", "host"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("booting already"), "{out:?}");
    let (code, ev) = c.shut_down();
    assert_eq!(code, 0, "{}", dump(&ev));
    let summary = ev.last().unwrap();
    let host = summary["processors"].as_array().unwrap().iter().find(|p| p["id"] == "host").unwrap();
    assert_eq!(host["state"], "shut_down", "{host}");
    assert!(host.get("error").is_none(), "{host}");
}

#[test]
fn a_card_whose_amc_is_down_waits_for_it_and_comes_back_with_it() {
    let topo = format!(
        "{}\n{}\n{}\n{}",
        server_head("sup"),
        secondary("amc0", "max_restarts = 0"),
        secondary("dpu0", "supervisor = \"amc0\""),
        secondary("host", "power = \"main\"\nrequires = [\"dpu0\"]"),
    );
    let c = Chassis::start(&topo, &[]);
    c.wait_for("host ready", &|e| is(e, "ready", "host"));
    kill9(pid_of(&c.status("amc0")));
    let (_, down) = c.wait_for("amc0 failed", &|e| is(e, "down", "amc0"));
    assert_eq!(down["state"], "failed");
    // dpu0 keeps running without its AMC (told), until it crashes itself.
    assert_eq!(c.status("dpu0")["state"], "running");
    let mark = c.events().len();
    kill9(pid_of(&c.status("dpu0")));
    let (_, d) = c.wait_after(mark, "dpu0 down", &|e| is(e, "down", "dpu0"));
    assert!(d["why"].as_str().unwrap().contains("its supervisor amc0 is down"), "{d}");
    let dpu0 = c.status("dpu0");
    assert!(
        dpu0["last_causes"][0]["action"].as_str().unwrap().contains("waits for its supervisor amc0"),
        "{dpu0}"
    );
    // The AMC back: the card it supervises comes back with it.
    let mark = c.events().len();
    c.ctl_ok(&["startup", "amc0"]);
    let (r, _) = c.wait_after(mark, "amc0 ready", &|e| is(e, "ready", "amc0"));
    c.wait_after(r, "dpu0 ready again", &|e| is(e, "ready", "dpu0"));
    assert_eq!(c.status("dpu0")["state"], "running");
    let (code, _) = c.shut_down();
    assert_eq!(code, 0);
}
