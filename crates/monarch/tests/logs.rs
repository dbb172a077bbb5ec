//! Logs an operator can ship: the long-running commands (`monarch netboot serve`,
//! `monarch up --hold` and the candidates it starts) write their diagnostics to stderr as
//! `tracing` events, with `--log-format json` one JSON object per line, while stdout stays
//! the event stream.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::{Chassis, MONARCH, WAIT};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A port free for both UDP and TCP on loopback: bind both to learn one, then hand it over.
fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            break p;
        }
    }
}

/// Every line of a child's output, sent as it comes (the reader keeps draining it).
fn lines_of(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Receive lines until one satisfies `pred`; every line received is kept in `seen`.
fn until(rx: &Receiver<String>, seen: &mut Vec<String>, what: &str, pred: &dyn Fn(&str) -> bool) {
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(l) => {
                let hit = pred(&l);
                seen.push(l);
                if hit {
                    return;
                }
            }
            Err(e) => panic!("{what}: none within {WAIT:?} ({e}); so far:\n{}", seen.join("\n")),
        }
    }
}

/// A log line of `--log-format json`: one object with a timestamp, a level, a target and a
/// message.
fn json_log(line: &str) -> Value {
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("stderr line not JSON ({e}): {line}"));
    for key in ["timestamp", "level", "target", "message"] {
        assert!(v[key].as_str().is_some_and(|s| !s.is_empty()), "no {key} in {line}");
    }
    assert!(
        ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&v["level"].as_str().unwrap()),
        "not a level: {line}"
    );
    v
}

/// `monarch netboot serve` (discovery only, on loopback) with `--log-format FORMAT` (none:
/// the default); an operator breaks its catalog while it runs. Returns its stdout and stderr
/// lines, after a SIGTERM ended it cleanly.
fn serve_with_a_broken_catalog(root: &Path, format: Option<&str>) -> (Vec<String>, Vec<String>) {
    let mut child = Command::new(MONARCH)
        .args(["netboot", "serve", "--root"])
        .arg(root)
        .args(["--tftp-port", "0", "--http-port", "0", "--discovery-port", &free_port().to_string()])
        .arg("--json")
        .args(format.map(|f| ["--log-format", f]).into_iter().flatten())
        .env_remove("MONARCH_LOG_FORMAT")
        .env_remove("MONARCH_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    until(&out, &mut stdout, "the ready event", &|l| l.contains(r#""event":"ready""#));
    // The catalog watcher notices a changed file; a fresh text each round changes it even if
    // the watcher looked only after the first write.
    let catalog = root.join("machines.toml");
    let mut round = 0;
    loop {
        round += 1;
        std::fs::write(&catalog, format!("# round {round}\nthis is not = = toml\n")).unwrap();
        match out.recv_timeout(Duration::from_secs(2)) {
            Ok(l) => {
                let done = l.contains(r#""event":"catalog_error""#);
                stdout.push(l);
                if done {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("netboot serve stopped: {e}; stdout:\n{}", stdout.join("\n")),
        }
    }
    until(&err, &mut stderr, "the warning about the catalog", &|l| l.contains("the catalog does not load"));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < WAIT, "netboot serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "netboot serve: {status}; stderr:\n{}", stderr.join("\n"));
    // The readers end at the pipes' end: everything either stream said.
    stdout.extend(out.iter());
    stderr.extend(err.iter());
    (stdout, stderr)
}

#[test]
fn netboot_serve_logs_json_lines_on_stderr_and_keeps_its_events_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = serve_with_a_broken_catalog(dir.path(), Some("json"));
    // Stdout: the event stream, nothing else.
    for l in &stdout {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line not JSON ({e}): {l}"));
        assert!(v["event"].is_string() && v["service"].is_string(), "not an event: {l}");
        assert!(v.get("level").is_none(), "a log line on stdout: {l}");
    }
    // Stderr: logs only, each one JSON object.
    let logs: Vec<Value> = stderr.iter().map(|l| json_log(l)).collect();
    let ready = logs
        .iter()
        .find(|v| v["message"] == "network boot services ready")
        .unwrap_or_else(|| panic!("no log of the services starting:\n{}", stderr.join("\n")));
    assert_eq!(ready["level"], "INFO", "{ready}");
    assert!(
        ready["discovery"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:") || a.starts_with("0.0.0.0:")),
        "{ready}"
    );
    let warn = logs
        .iter()
        .find(|v| v["level"] == "WARN")
        .unwrap_or_else(|| panic!("no warning:\n{}", stderr.join("\n")));
    assert!(warn["message"].as_str().unwrap().contains("the catalog does not load"), "{warn}");
    assert!(warn["catalog"].as_str().unwrap().ends_with("machines.toml"), "structured field: {warn}");
    assert!(warn["error"].as_str().unwrap().contains("line 2"), "the reason, with where: {warn}");
    assert_eq!(warn["target"], "monarch_boot::netboot", "{warn}");
}

#[test]
fn netboot_serve_logs_concise_text_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let (_, stderr) = serve_with_a_broken_catalog(dir.path(), None);
    assert!(!stderr.is_empty());
    for l in &stderr {
        assert!(!l.trim_start().starts_with('{'), "text mode wrote JSON: {l}");
    }
    let warn = stderr.iter().find(|l| l.contains("WARN")).unwrap_or_else(|| panic!("{}", stderr.join("\n")));
    assert!(warn.contains("the catalog does not load") && warn.contains("catalog="), "{warn}");
    assert!(!warn.contains("monarch_boot::"), "no target clutter in text mode: {warn}");
}

const HEAD: &str = r#"
[chassis]
name = "logs"
run_dir = "win"
state_dir = "state"

[defaults]
timeouts = { rendezvous = "30s", verify = "30s", handoff = "30s", agent = "60s" }
heartbeat = "100ms"
heartbeat_timeout = "5s"
"#;

fn processor(id: &str, role: &str) -> String {
    if role == "monarch" {
        format!("[[processor]]\nid = \"{id}\"\nrole = \"monarch\"\n")
    } else {
        format!(
            "[[processor]]\nid = \"{id}\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nimage_size = \"24MiB\"\nbanner = \"{id} up\"\n"
        )
    }
}

/// Wait until the collected stderr of `c` has a line containing `text`.
fn wait_stderr(c: &Chassis, text: &str) {
    let start = Instant::now();
    let lines = c.stderr.clone().unwrap();
    while !lines.lock().unwrap().iter().any(|l| l.contains(text)) {
        assert!(
            start.elapsed() < WAIT,
            "no stderr line with {text:?}:\n{}",
            lines.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn up_hold_with_json_logs_writes_only_json_lines_on_stderr() {
    let topo = format!("{HEAD}\n{}\n{}", processor("bmc", "monarch"), processor("dpu0", "secondary"));
    let pictures = tempfile::tempdir().unwrap();
    let svg = pictures.path().join("run.svg");
    let c = Chassis::start_capturing_stderr(
        &topo,
        &["--log-format", "json", "--timeline", svg.to_str().unwrap()],
    );
    c.wait_for("dpu0 ready", &|e| common::is(e, "ready", "dpu0"));
    wait_stderr(&c, "supervising the chassis");
    let lines = c.stderr.clone().unwrap();
    let (code, events) = c.shut_down();
    assert_eq!(code, 0, "{}", common::dump(&events));
    // The last log line, said after the chassis shut down: the stream is complete up to it.
    let start = Instant::now();
    while !lines.lock().unwrap().iter().any(|l| l.contains("the picture of this run")) {
        assert!(start.elapsed() < WAIT, "no log of the picture:\n{}", lines.lock().unwrap().join("\n"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = lines.lock().unwrap().clone();
    let logs: Vec<Value> = lines.iter().map(|l| json_log(l)).collect();
    let sup = logs.iter().find(|v| v["message"] == "supervising the chassis").unwrap();
    assert_eq!(sup["level"], "INFO", "{sup}");
    assert_eq!(sup["chassis"], "logs", "{sup}");
    assert!(sup["socket"].as_str().unwrap().ends_with("control.sock"), "{sup}");
}

#[test]
fn candidates_write_their_logs_in_the_chassis_format() {
    // Two management processors: the supervisor runs in the elected candidate, a process of
    // its own whose stderr is its log in the run folder, and, held, `monarch up`'s stderr too
    // (the journal, under systemd); `--log-format json` reaches it.
    let topo = format!(
        "{HEAD}\n{}\n{}\n{}",
        processor("mgmt0", "monarch"),
        processor("mgmt1", "monarch"),
        processor("dpu0", "secondary")
    );
    let c = Chassis::start_capturing_stderr(&topo, &["--log-format", "json"]);
    c.wait_for("dpu0 ready", &|e| common::is(e, "ready", "dpu0"));
    let run_dir = c.dir.path().join("win");
    let start = Instant::now();
    let (log, text) = loop {
        let found = ["mgmt0", "mgmt1"].iter().find_map(|m| {
            let f = run_dir.join(format!("{m}.candidate.log"));
            let text = std::fs::read_to_string(&f).ok()?;
            text.contains("supervising the chassis").then_some((f, text))
        });
        if let Some(f) = found {
            break f;
        }
        assert!(start.elapsed() < WAIT, "no candidate logged that it supervises");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whole lines only: the candidate may be writing the next one.
    let complete = &text[..=text.rfind('\n').unwrap()];
    for l in complete.lines() {
        json_log(l);
    }
    assert!(
        complete.lines().any(|l| json_log(l)["message"] == "supervising the chassis"),
        "{}",
        log.display()
    );
    wait_stderr(&c, "supervising the chassis");
    for l in c.stderr_lines() {
        json_log(&l);
    }
    let (code, events) = c.shut_down();
    assert_eq!(code, 0, "{}", common::dump(&events));
}
