//! End-to-end tests: the real `monarch` binary, real agent processes, real shared memory.
//!
//! Every test runs its own monarch with its own windows (in a temporary folder or a
//! per-process /dev/shm folder), so tests run in parallel without sharing anything.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)] // test code: a panic is the failure report

use monarch_drivers::Window;
use monarch_proto::window::layout;
use monarch_proto::window::msg;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{MONARCH, Run, monarch, up_json};

/// A topology in a temporary folder, windows in that folder too.
struct Topo {
    dir: tempfile::TempDir,
}

impl Topo {
    fn new(processors: &str) -> Topo {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[chassis]\nname = \"test\"\nrun_dir = \"win\"\n\n[defaults]\ntimeouts = {{ rendezvous = \"20s\", verify = \"20s\", handoff = \"20s\", agent = \"20s\" }}\n\n\
             [[processor]]\nid = \"mm\"\nrole = \"monarch\"\n\n{processors}"
        );
        std::fs::write(dir.path().join("t.toml"), text).unwrap();
        Topo { dir }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("t.toml")
    }
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn secondary(id: &str, extra: &str) -> String {
    format!(
        "[[processor]]\nid = \"{id}\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nimage_size = \"24MiB\"\n{extra}\n"
    )
}

#[test]
fn the_default_chassis_boots_every_secondary() {
    let r = up_json(None);
    assert_eq!(r.code, 0, "{}\n{}", r.summary, r.stderr);
    assert_eq!(r.summary["ok"], true);
    let secs: Vec<&Value> =
        r.summary["processors"].as_array().unwrap().iter().filter(|p| p["role"] == "secondary").collect();
    assert_eq!(secs.len(), 5);
    for p in &secs {
        assert_eq!(p["state"], "running", "{p}");
        // A loaded host may starve the monarch past its heartbeat timeout: mgmt1 takes over,
        // and counts only its own work for a secondary it found running or verified.
        let reused =
            p["resumed"].as_str().is_some_and(|r| r.starts_with("left running") || r.starts_with("adopted"));
        if !reused {
            assert_eq!(p["attempts"], 1, "{p}");
            assert_eq!(p["bytes"], 30 << 20, "{p}");
        }
        assert!(p["timings_ms"]["total"].as_f64().unwrap() > 0.0);
        let report = p["report"].as_str().unwrap();
        assert!(report.contains(&format!("crc32c {}", p["checksum"].as_str().unwrap())), "{report}");
    }
    let paths: Vec<&str> = secs.iter().map(|p| p["path"].as_str().unwrap()).collect();
    assert_eq!(paths.iter().filter(|p| **p == "direct").count(), 3);
    assert_eq!(paths.iter().filter(|p| **p == "switch").count(), 2);
    // Behind the switch: lc3 (priority 10) is verified before lc4's copy starts: they take
    // turns on the switch's link. After a failover both monarchs' events are in the stream:
    // lc3's first verification, and the last monarch's copy to lc4.
    let time = |e: &Value| e["t_ms"].as_f64().unwrap();
    let phase = |id: &str, name: &str| -> Vec<f64> {
        r.events_of(id, "phase").into_iter().filter(|e| e["phase"] == name).map(time).collect()
    };
    let lc3_verified = phase("lc3", "handoff").into_iter().fold(f64::MAX, f64::min);
    let lc4_copy = phase("lc4", "copying").into_iter().fold(0.0, f64::max);
    assert!(lc3_verified <= lc4_copy, "lc4's copy must wait for lc3's turn on the switch's link");
}

#[test]
fn the_default_chassis_prints_a_line_per_processor_with_path_attempts_bytes_and_times() {
    let out = monarch(&["up"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for id in ["rc0", "lc1", "lc2", "lc3", "lc4"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")) && l.contains("running"))
            .unwrap_or_else(|| panic!("no line for {id}:\n{text}"));
        assert!(
            line.contains("ms") && (line.contains("direct") || line.contains("switch pcie-sw0")),
            "{line}"
        );
        // A loaded host may starve the monarch past its heartbeat timeout: then mgmt1 takes
        // over, and a secondary it found running (or verified) is not copied again — its
        // line counts only the new monarch's work, and the failover section says why.
        let taken_over = text.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with(&format!("{id}: left running")) || l.starts_with(&format!("{id}: adopted verified"))
        });
        assert!(line.contains("30MiB") || taken_over, "{line}\n{text}");
    }
    assert!(text.contains("OK: chassis \"default\" booted"), "{text}");
}

#[test]
fn the_running_secondary_is_the_delivered_image() {
    let t = Topo::new("[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"a.img\"\n");
    let img = t.file("a.img");
    let built = monarch(&[
        "image",
        "build",
        "--size",
        "24MiB",
        "--banner",
        "version ALPHA-1111",
        "-o",
        img.to_str().unwrap(),
    ]);
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let first = up_json(Some(&t.path()));
    assert_eq!(first.code, 0, "{}", first.summary);
    let report = first.processor("a")["report"].as_str().unwrap().to_string();
    assert!(report.contains("version ALPHA-1111"), "{report}");

    // Change the image's bytes at the source; what runs must change with them.
    let mut bytes = std::fs::read(&img).unwrap();
    let at = bytes.windows(10).position(|w| w == b"ALPHA-1111").unwrap();
    bytes[at..at + 10].copy_from_slice(b"OMEGA-2222");
    std::fs::write(&img, &bytes).unwrap();
    let second = up_json(Some(&t.path()));
    assert_eq!(second.code, 0, "{}", second.summary);
    let report2 = second.processor("a")["report"].as_str().unwrap();
    assert!(report2.contains("version OMEGA-2222"), "{report2}");
    let crc = monarch_proto::Algo::Crc32c.digest(&bytes).to_hex(monarch_proto::Algo::Crc32c);
    assert!(
        report2.contains(&crc),
        "the running image must hash to the changed file's checksum {crc}: {report2}"
    );
}

/// The safety invariant, seen from outside: a secondary that failed never handed off.
fn assert_never_handed_off(r: &Run, t: &Topo, id: &str) {
    assert!(r.events_of(id, "phase").iter().all(|e| e["phase"] != "handoff"), "{id} reached handoff");
    assert!(r.processor(id).get("report").is_none(), "{id} ran an image: {}", r.processor(id));
    let log = std::fs::read_to_string(t.file(&format!("win/{id}.log"))).unwrap_or_default();
    assert!(!log.contains("handing off"), "agent log of {id} shows a handoff:\n{log}");
}

#[test]
fn one_corrupted_copy_is_rewritten_and_the_secondary_runs() {
    let t = Topo::new(&secondary("a", "fault = { corrupt_attempts = 1 }"));
    let r = up_json(Some(&t.path()));
    assert_eq!(r.code, 0, "{}\n{}", r.summary, r.stderr);
    let a = r.processor("a");
    assert_eq!(a["state"], "running");
    assert_eq!(a["attempts"], 2);
    assert_eq!(a["bytes"], 2 * (24 << 20));
    let mism = r.events_of("a", "mismatch");
    assert_eq!(mism.len(), 1);
    assert_eq!(mism[0]["attempt"], 1);
    assert_ne!(mism[0]["written"], mism[0]["expected"]);
}

#[test]
fn persistent_corruption_aborts_after_the_configured_attempts_while_the_others_run() {
    let t = Topo::new(&format!(
        "{}{}{}",
        secondary("bad", "attempts = 3\nfault = { corrupt_attempts = 99 }"),
        secondary("good1", ""),
        secondary("good2", "mode = \"pull\""),
    ));
    let r = up_json(Some(&t.path()));
    assert_eq!(r.code, 1, "exit status 1 when a required secondary fails");
    assert_eq!(r.summary["ok"], false);
    let bad = r.processor("bad");
    assert_eq!(bad["state"], "failed");
    assert_eq!(bad["attempts"], 3);
    assert_eq!(r.events_of("bad", "mismatch").len(), 3);
    assert!(
        bad["error"].as_str().unwrap().contains("never matched the retrieved checksum in 3 attempt(s)"),
        "{bad}"
    );
    assert_never_handed_off(&r, &t, "bad");
    for id in ["good1", "good2"] {
        assert_eq!(r.processor(id)["state"], "running", "{}", r.processor(id));
    }
}

#[test]
fn an_agent_killed_mid_transfer_fails_alone_within_its_timeout() {
    let t = Topo::new(&format!(
        "{}{}",
        secondary("victim", "fault = { kill_agent_during_copy = true }"),
        secondary("other", ""),
    ));
    let r = up_json(Some(&t.path()));
    assert_eq!(r.code, 1);
    let v = r.processor("victim");
    assert_eq!(v["state"], "failed");
    let err = v["error"].as_str().unwrap();
    assert!(err.contains("signal: 9") || err.contains("SIGKILL"), "{err}");
    // What happened: one attempt, cut short after half the image was streamed.
    assert_eq!(v["attempts"], 1, "{v}");
    let (bytes, image) = (v["bytes"].as_u64().unwrap(), v["image_bytes"].as_u64().unwrap());
    assert!(bytes >= image / 2, "{bytes} of {image} bytes were streamed, half before the kill");
    assert!(v["timings_ms"]["total"].as_f64().unwrap() < 20_000.0, "must fail within its 20 s timeouts");
    assert_never_handed_off(&r, &t, "victim");
    assert_eq!(r.processor("other")["state"], "running");
}

#[test]
fn garbage_in_the_register_page_fails_that_secondary_only_with_a_clear_error() {
    let t = Topo::new(&format!(
        "{}{}",
        secondary(
            "g",
            "launch = \"external\"\nwindow = { path = \"g.win\" }\ntimeouts = { rendezvous = \"20s\" }"
        ),
        secondary("ok", ""),
    ));
    let win = t.file("g.win");
    // A misbehaving secondary: waits for the monarch to release it, then posts garbage.
    let impostor = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(w) = Window::open(&win)
                && w.load(layout::HDR_MAGIC) == layout::MAGIC
                && w.load(layout::cmd(0).seq) != 0
            {
                w.store(layout::ST_CODE, 0xdead_beef);
                w.store(layout::ST_ATTEMPT, 0xffff_ffff);
                w.store(layout::ST_SEQ, 1);
                w.ring(layout::DB_TO_PRIMARY);
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    let r = up_json(Some(&t.path()));
    assert!(impostor.join().unwrap(), "the impostor never saw the window released");
    assert_eq!(r.code, 1);
    let g = r.processor("g");
    assert_eq!(g["state"], "failed");
    let err = g["error"].as_str().unwrap();
    assert!(err.contains("status.code") && err.contains("3735928559"), "{err}");
    assert_eq!(r.processor("ok")["state"], "running");
}

#[test]
fn an_agent_given_a_garbage_window_says_what_is_wrong_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("junk.win");
    let junk: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&f, &junk).unwrap();
    let out = monarch(&["agent", "--window", f.to_str().unwrap(), "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hdr.magic") && err.contains("not a monarch window"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(&f).unwrap(),
        junk,
        "the agent must not write into a window it does not understand"
    );

    let out = monarch(&[
        "agent",
        "--window",
        dir.path().join("nothing-here").to_str().unwrap(),
        "--timeout",
        "200ms",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no monarch initialised it"));
}

#[test]
fn an_external_polling_agent_with_handoff_none_is_released_after_verification() {
    let t = Topo::new(&secondary(
        "ext",
        "launch = \"external\"\nhandoff = \"none\"\nmode = \"pull\"\nwindow = { path = \"ext.win\" }",
    ));
    // The agent starts first, as firmware would, and waits for the window.
    let agent = Command::new(MONARCH)
        .args([
            "agent",
            "--window",
            t.file("ext.win").to_str().unwrap(),
            "--id",
            "ext",
            "--handoff",
            "none",
            "--timeout",
            "20s",
            "--poll", // a doorbell across kernels: bounded polling, no futex
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let r = up_json(Some(&t.path()));
    let out = agent.wait_with_output().unwrap();
    assert_eq!(r.code, 0, "{}", r.summary);
    assert_eq!(r.processor("ext")["state"], "released");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bytes_that_are_not_a_program_fail_the_handoff_with_a_reason() {
    let t = Topo::new("[[processor]]\nid = \"x\"\nrole = \"secondary\"\nimage = \"x.img\"\n");
    std::fs::write(t.file("x.img"), vec![0x42u8; 1 << 16]).unwrap();
    let r = up_json(Some(&t.path()));
    assert_eq!(r.code, 1);
    let x = r.processor("x");
    assert_eq!(x["state"], "failed");
    assert!(x["error"].as_str().unwrap().contains("handoff into the image failed"), "{x}");
}

#[test]
fn topology_errors_name_the_file_line_field_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[chassis]\nname = \"x\"\n[[processor]]\nid = \"m\"\nrole = \"monarch\"\n[[processor]]\nid = \"m\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\n",
            ":7: processor \"m\".id: duplicate processor id",
        ),
        (
            "[chassis]\nname = \"x\"\n[[processor]]\nid = \"m\"\nrole = \"monarch\"\n[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nswitch = \"nope\"\n",
            ":10: processor \"a\".switch: switch \"nope\" is not defined",
        ),
        (
            "[chassis]\nname = \"x\"\n[[processor]]\nid = \"m\"\nrole = \"monarch\"\n[[processor]]\nid = \"a\"\nrole = \"secondary\"\n",
            "a secondary needs an image",
        ),
        ("[chassis]\nname = \"x\"\nfoo = 1\n", ":3: syntax: unknown field `foo`"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&f, text).unwrap();
        for cmd in ["plan", "up"] {
            let out = monarch(&[cmd, "--topology", f.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(2), "{cmd} exits 2 on a bad topology");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("bad{i}.toml")) && err.contains(needle),
                "{cmd}: expected {needle:?} in {err}"
            );
        }
    }
}

#[test]
fn plan_shows_parallel_lanes_and_switch_order_without_booting() {
    let out = monarch(&["plan"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("staged in parallel (direct ports)"), "{text}");
    assert!(text.contains("behind switch pcie-sw0"), "{text}");
    let l3 = text.find("1. lc3").unwrap();
    let l4 = text.find("2. lc4").unwrap();
    assert!(l3 < l4);
    // The printed default topology is the one `up` uses, and it validates.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("d.toml");
    std::fs::write(&f, monarch(&["topology", "default"]).stdout).unwrap();
    let check = monarch(&["topology", "check", f.to_str().unwrap()]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

#[test]
fn help_teaches_the_commands() {
    let out = monarch(&["up", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["--topology", "--json", "built-in emulated chassis", "switch"] {
        assert!(text.contains(needle), "{needle} missing from up --help:\n{text}");
    }
}

#[test]
fn a_payload_with_no_window_reports_on_standard_output() {
    // As after a network boot: no window to report through, so the report is printed.
    let payload = Path::new(MONARCH).with_file_name("monarch-payload");
    let out = Command::new(payload).env_remove("MONARCH_WINDOW").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("MONARCH-PAYLOAD RUNNING (no banner) [image "), "{stdout}");
    let _ = msg::SEQ_BUSY; // the test links the protocol crate for the impostor above
}

#[test]
fn a_memfd_window_is_inherited_by_the_agent_and_by_the_image_it_runs() {
    let t = Topo::new(&format!(
        "{}{}",
        secondary("m", "window = { memfd = true }\nfault = { corrupt_attempts = 1 }"),
        secondary("f", ""),
    ));
    let r = up_json(Some(&t.path()));
    assert_eq!(r.code, 0, "{}\n{}", r.summary, r.stderr);
    let m = r.processor("m");
    assert_eq!(m["state"], "running");
    assert_eq!(m["attempts"], 2, "the retry path works through a memfd window too");
    assert!(m["report"].as_str().unwrap().contains("m booted the delivered image"), "{m}");
    assert!(!t.file("win/m.win").exists(), "a memfd window leaves no file behind");

    let bad = Topo::new(&secondary("x", "launch = \"external\"\nwindow = { memfd = true }"));
    let out = monarch(&["plan", "--topology", bad.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("window.memfd: a memfd window is handed to an agent the monarch starts")
    );
}

#[test]
fn a_corrupted_chunk_is_repaired_by_resending_that_chunk_alone() {
    let t = Topo::new(&format!(
        "{}{}",
        secondary("r", "chunk_size = \"1MiB\"\nfault = { corrupt_chunks = [3, 7] }"),
        secondary("clean", ""),
    ));
    let r = up_json(Some(&t.path()));
    assert_eq!(r.code, 0, "{}\n{}", r.summary, r.stderr);
    let p = r.processor("r");
    assert_eq!(p["state"], "running");
    assert_eq!(p["attempts"], 1, "no whole-image retry");
    assert_eq!(p["repairs"], 2);
    assert_eq!(p["bytes_resent"], 2 << 20, "exactly the two bad chunks were re-sent");
    assert_eq!(p["bytes"], (24 << 20) + (2 << 20));
    let chunks: Vec<u64> =
        r.events_of("r", "repaired").iter().map(|e| e["chunk"].as_u64().unwrap()).collect();
    assert_eq!(chunks, [3, 7]);
    assert_eq!(r.processor("clean")["repairs"], 0);
}

#[test]
fn an_image_larger_than_its_window_streams_through_the_ring_and_runs() {
    // 16 MiB through a 4 MiB window: 3 slots of 1 MiB after the manifest page.
    let t = Topo::new(&secondary("big", "window = { size = \"4MiB\" }\nfault = { corrupt_chunks = [12] }"));
    let r = up_json(Some(&t.path()));
    assert_eq!(r.code, 0, "{}\n{}", r.summary, r.stderr);
    let p = r.processor("big");
    assert_eq!(p["state"], "running");
    assert_eq!(p["repairs"], 1);
    let report = p["report"].as_str().unwrap();
    assert!(report.contains(&format!("crc32c {}", p["checksum"].as_str().unwrap())), "{report}");
}

/// The reference design's baseline with real tftpd-hpa and atftp, installed by the bench if missing, on
/// loopback and over a veth pair between two namespaces the bench makes and removes.
#[test]
fn the_tftp_baseline_runs_real_servers_and_cleans_up_its_namespaces() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the baseline bench needs root (apt-get, network namespaces)");
        return;
    }
    let child = Command::new(MONARCH)
        .args(["bench", "baseline", "--size", "1MiB", "--reps", "1", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its namespaces are named after its pid: look for those only (another bench on the
    // machine may be running its own).
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bench"], "baseline");
    assert!(v["window_seconds"].as_f64().unwrap() > 0.0);
    let tftp = v["tftp"].as_array().unwrap();
    assert_eq!(tftp.len(), 2);
    for t in tftp {
        assert!(t["seconds"].as_f64().unwrap() > 0.0, "{t}");
        assert!(t["window_speedup"].as_f64().is_some(), "{t}");
        let (w, m, r) =
            (t["window_speedup"].as_f64(), t["memcpy_speedup"].as_f64(), t["speedup_ratio"].as_f64());
        assert!(m.is_some_and(|m| m > 0.0), "{t}");
        assert!((r.unwrap() - w.unwrap() / m.unwrap()).abs() < 1e-9, "{t}");
    }
    assert!(v["memcpy_seconds"].as_f64().unwrap() > 0.0);
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let names = String::from_utf8_lossy(&netns.stdout);
    for ns in [format!("monarch-bl-srv-{pid}"), format!("monarch-bl-cli-{pid}")] {
        assert!(
            !names.lines().any(|l| l.split_whitespace().next() == Some(ns.as_str())),
            "{ns} left behind:\n{names}"
        );
    }
}

/// Ctrl-C as a terminal sends it, to the whole process group, once the first secondary
/// runs: exit 130, every secondary either running (then shut down) or `interrupted`, the
/// summary says why, and nothing is left behind: no process of the group, no run folder.
fn interrupt_the_boot(topology: Option<&Path>, temporary_run_dir: impl FnOnce(u32) -> Option<PathBuf>) {
    use std::io::BufRead;
    let mut cmd = Command::new(MONARCH);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.args(["up", "--json"]);
    if let Some(t) = topology {
        cmd.arg("--topology").arg(t);
    }
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let group = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut sent = false;
    for line in out.lines().map_while(Result::ok) {
        let ev: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if !sent && ev["event"] == "done" && ev["state"] == "running" {
            rustix::process::kill_process_group(group, rustix::process::Signal::INT).unwrap();
            sent = true;
        }
        lines.push(ev);
    }
    let status = child.wait().unwrap();
    assert!(sent, "no secondary ever ran: {lines:?}");
    let summary = lines.last().unwrap();
    assert_eq!(summary["event"], "summary", "{lines:?}");
    assert_eq!(status.code(), Some(130), "{summary}");
    for p in summary["processors"].as_array().unwrap().iter().filter(|p| p["role"] == "secondary") {
        let state = p["state"].as_str().unwrap();
        assert!(state == "running" || state == "interrupted", "{p}");
        if state == "interrupted" {
            assert!(p["error"].as_str().unwrap().contains("interrupted by SIGINT"), "{p}");
        }
    }
    if summary["processors"].as_array().unwrap().iter().any(|p| p["state"] == "interrupted") {
        assert!(summary["error"].as_str().unwrap().contains("interrupted by SIGINT"), "{summary}");
    }
    let t = Instant::now();
    while rustix::process::test_kill_process_group(group).is_ok() {
        assert!(t.elapsed() < Duration::from_secs(10), "processes of the run outlived it");
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(dir) = temporary_run_dir(child.id()) {
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }
}

#[test]
fn ctrl_c_stops_the_default_chassis_cleanly() {
    interrupt_the_boot(None, |pid| Some(PathBuf::from(format!("/dev/shm/monarch-default-{pid}"))));
}

#[test]
fn ctrl_c_stops_a_single_monarch_cleanly() {
    let t = Topo::new(&(1..=4).map(|k| secondary(&format!("s{k}"), "")).collect::<String>());
    // Its run folder is the topology's own, kept; its agents and images are what must go.
    interrupt_the_boot(Some(&t.path()), |_| None);
}

/// A window path that names the topology file itself, another file, a folder or a folder
/// that does not exist: `plan` and `up` refuse it as bad input before writing anything, and
/// every one of those files and folders is as it was.
#[test]
fn a_window_path_never_clobbers_a_file_nor_creates_folders() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("t.toml");
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "keep me\n").unwrap();
    let missing = dir.path().join("no/such/folder");
    let cases = [
        (topo.clone(), "is a file with other contents, not a monarch window"),
        (notes.clone(), "is a file with other contents, not a monarch window"),
        (dir.path().to_path_buf(), "is a folder, not a monarch window"),
        (missing.join("a.win"), "does not exist; monarch creates windows, not folders"),
    ];
    for (path, needle) in cases {
        let text = format!(
            "[chassis]\nname = \"x\"\nrun_dir = \"run\"\n[[processor]]\nid = \"m\"\nrole = \"monarch\"\n{}window = {{ path = {:?} }}\n",
            secondary("a", ""),
            path.display().to_string()
        );
        std::fs::write(&topo, &text).unwrap();
        for cmd in ["plan", "up"] {
            let out = monarch(&[cmd, "--topology", topo.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} with window.path {}: {err}", path.display());
            assert!(err.contains("processor \"a\".window.path") && err.contains(needle), "{cmd}: {err}");
        }
        assert_eq!(std::fs::read_to_string(&topo).unwrap(), text, "the topology file is untouched");
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep me\n");
        assert!(!dir.path().join("no").exists(), "no folder was created");
        assert!(!dir.path().join("run").exists(), "nothing started, so no run folder either");
    }
}

/// What a running image reports is its own text: a newline, a forged summary line, colour
/// escapes and a bell reach neither the terminal nor the JSON raw.
#[test]
fn a_secondary_report_cannot_forge_lines_or_drive_the_terminal() {
    let banner = r#"banner = "lc1 ok\nOK: chassis forged booted every secondary\u001b[31m red\u0007\u202e""#;
    let t = Topo::new(&secondary("a", banner));
    let out = monarch(&["up", "--topology", t.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    for (what, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\u{202e}'),
            "{what}: {text}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("OK: chassis forged")),
            "{what} has a forged line: {text}"
        );
        if what == "stdout" {
            assert!(
                text.contains(
                    r"lc1 ok\nOK: chassis forged booted every secondary\u{1b}[31m red\u{7}\u{202e}"
                ),
                "{text}"
            );
        }
    }
    let r = up_json(Some(&t.path()));
    let report = r.processor("a")["report"].as_str().unwrap().to_string();
    assert!(report.starts_with(r"lc1 ok\nOK: chassis forged") && !report.contains('\n'), "{report}");
}

/// The sweep of run folders that killed monarchs left behind removes only what it can prove
/// is one: a folder merely named like a run folder (a user's, or another pid namespace's
/// live run) survives `monarch up`.
#[test]
fn up_removes_no_folder_it_cannot_prove_an_abandoned_run() {
    // pid_max is at most 2^22 on Linux: these pids cannot be running.
    let users = PathBuf::from(format!("/dev/shm/monarch-default-{}", 4_194_300 + std::process::id() % 90));
    let _ = std::fs::remove_dir_all(&users);
    std::fs::create_dir(&users).unwrap();
    std::fs::write(users.join("thesis.txt"), "keep me\n").unwrap();
    let r = up_json(None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let kept = std::fs::read_to_string(users.join("thesis.txt"));
    let _ = std::fs::remove_dir_all(&users);
    assert_eq!(kept.ok().as_deref(), Some("keep me\n"), "monarch up removed {}", users.display());
}

/// A small tmpfs, mounted for one test and unmounted (lazily, whatever happened) after it.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status();
        assert!(
            st.is_ok_and(|s| s.success()),
            "mount a {size} tmpfs at {} (the tests run as root)",
            path.display()
        );
        Tmpfs { path: path.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A window that does not fit on its file system fails that secondary, with the path, the
/// size needed and the space free named; the monarch is not killed (SIGBUS on the first
/// store to a page the full tmpfs cannot give), the others boot, and a summary is printed.
#[test]
fn a_full_tmpfs_fails_the_window_that_does_not_fit_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let _small = Tmpfs::mount(&dir.path().join("small"), "30m");
    // Two 24 MiB windows in a 30 MiB file system: one fits, the other cannot.
    let text = format!(
        "[chassis]\nname = \"full\"\nrun_dir = \"small\"\n[[processor]]\nid = \"m\"\nrole = \"monarch\"\n{}{}",
        secondary("a", ""),
        secondary("b", ""),
    );
    let topo = dir.path().join("t.toml");
    std::fs::write(&topo, text).unwrap();
    let r = up_json(Some(&topo));
    assert_eq!(r.code, 1, "a failed secondary, not a dead monarch: {}", r.stderr);
    let states: Vec<String> =
        ["a", "b"].iter().map(|id| r.processor(id)["state"].as_str().unwrap().to_string()).collect();
    assert!(states.contains(&"running".to_string()), "one window fits: {states:?}: {}", r.summary);
    let failed = ["a", "b"].into_iter().find(|id| r.processor(id)["state"] == "failed").expect("one failed");
    let why = r.processor(failed)["error"].as_str().unwrap();
    assert!(
        why.contains(&format!("small/{failed}.win"))
            && why.contains("needs 26218496 bytes")
            && why.contains("free"),
        "{why}"
    );
}

/// An external secondary that truncates its window file while the monarch waits on it
/// fails alone, with the reason named; the monarch does not die of SIGBUS, and the other
/// secondary boots.
#[test]
fn a_secondary_that_truncates_its_window_fails_alone() {
    let t = Topo::new(&format!(
        "{}{}",
        secondary("ext", "launch = \"external\"\nwindow = { path = \"ext.win\" }"),
        secondary("ok", ""),
    ));
    let win = t.file("ext.win");
    // The hostile secondary: once the monarch has configured the window, cut it to nothing.
    let cutter = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(w) = Window::open(&win)
                && w.load(layout::HDR_MAGIC) == layout::MAGIC
                && w.load(layout::CFG_IMAGE_SIZE) != 0
            {
                drop(w);
                std::fs::OpenOptions::new().write(true).open(&win).unwrap().set_len(0).unwrap();
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    });
    let r = up_json(Some(&t.path()));
    assert!(cutter.join().unwrap(), "the window was never configured");
    assert_eq!(r.code, 1, "one failed secondary, not a dead monarch: {}", r.stderr);
    assert_eq!(r.processor("ok")["state"], "running");
    assert_eq!(r.processor("ext")["state"], "failed");
    let why = r.processor("ext")["error"].as_str().unwrap();
    assert!(why.contains("ext.win") && why.contains("truncated"), "{why}");
}

/// A file image that someone changes while it is being delivered is named as the cause, not
/// the link: in push mode the first refused chunk is checked against the image's retrieved
/// digests before it is re-sent; in pull mode the image is checked when no copy matched.
#[test]
fn an_image_changed_during_its_delivery_is_blamed_not_the_link() {
    // Larger than what the monarch keeps in memory, so it is read from its file as it goes.
    let size: u64 = 264 << 20;
    for mode in ["push", "pull"] {
        let window = if mode == "push" {
            "window = { path = \"img.win\", size = \"8MiB\" }"
        } else {
            "window = { path = \"img.win\" }"
        };
        let t = Topo::new(&format!(
            "[[processor]]\nid = \"img\"\nrole = \"secondary\"\nimage = \"big.img\"\nhandoff = \"none\"\nattempts = 2\nmode = \"{mode}\"\n{window}\n"
        ));
        let img = t.file("big.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let win = t.file("img.win");
        // Once the window exists the image was retrieved (its digests taken): change its end.
        let changer = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if win.exists() {
                    use std::os::unix::fs::FileExt;
                    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
                    f.write_all_at(&[0xa5; 1 << 20], size - (4 << 20)).unwrap();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            false
        });
        let r = up_json(Some(&t.path()));
        assert!(changer.join().unwrap(), "{mode}: the window never appeared");
        assert_eq!(r.code, 1, "{mode}: {}", r.stderr);
        let p = r.processor("img");
        assert_eq!(p["state"], "failed", "{mode}: {p}");
        let why = p["error"].as_str().unwrap();
        assert!(
            why.contains("big.img changed while it was being delivered") && !why.contains("check the link"),
            "{mode}: {why}"
        );
        assert!(p["attempts"].as_u64().unwrap() >= 1 && p["bytes"].as_u64().unwrap() > 0, "{mode}: {p}");
    }
}

/// An agent holds its verified copy of the image in its own memory until the exec: another
/// process of the same user must not reach it through /proc (its fds, its memory). The
/// agent makes itself non-dumpable, which the kernel shows by giving its /proc entries to
/// root. Run as `nobody`, so the ownership tells.
#[test]
fn an_agent_is_not_dumpable_so_its_peers_cannot_reach_its_memory() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", MONARCH, "agent", "--window"])
        .arg(dir.path().join("later.win"))
        .args(["--id", "a", "--timeout", "30s"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("setpriv (util-linux) runs the agent as nobody");
    let pid = agent.id();
    // Once it runs as nobody (setpriv has exec'd monarch), look at its /proc entries.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut owner = None;
    while Instant::now() < deadline {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        if exe.is_some_and(|e| e.ends_with("monarch")) {
            std::thread::sleep(Duration::from_millis(200)); // past the agent's first steps
            owner = std::fs::metadata(format!("/proc/{pid}/fd")).ok().map(|m| m.uid());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(
        owner,
        Some(0),
        "the agent (running as uid 65534) is not dumpable: its /proc entries belong to root"
    );
}

/// `monarch bench up`: the default chassis booted from outside, its wall time beside the copies'
/// memcpy time in the same run (no time compared: only that each figure was measured and adds up).
#[test]
fn bench_up_times_the_default_chassis_beside_its_copies() {
    let out = monarch(&["bench", "up", "--runs", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["bench"].as_str(), v["chassis"].as_str()), (Some("up"), Some("default")));
    assert_eq!(v["secondaries"], 5);
    assert_eq!(v["samples"].as_array().unwrap().len(), 2);
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k}: {v}"));
    assert!(f("wall_ms") >= f("boot_ms") && f("boot_ms") > 0.0, "{v}");
    assert!(f("memcpy_gib_s") > 0.0 && f("memcpy_ms") > 0.0, "{v}");
    assert_eq!(v["image_bytes"], 5 * (30u64 << 20));
    for p in ["queued", "retrieve", "configure", "rendezvous", "copy", "verify", "handoff"] {
        assert!(v["phases_ms"][p].as_f64().unwrap() >= 0.0, "{p}: {v}");
    }
    assert!(v["phases_ms"]["copy"].as_f64().unwrap() > 0.0, "{v}");
}
