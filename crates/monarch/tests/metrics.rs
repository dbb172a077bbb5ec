//! Prometheus metrics of a supervised chassis, checked by Prometheus's own tools: `promtool
//! check metrics` on what `/metrics` serves, and a real Prometheus server (Debian's
//! `prometheus`, installed when missing) that scrapes the supervisor and answers a PromQL
//! query for the restart count after a crash was injected.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use serde_json::Value;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Chassis, WAIT, is};

const TOPOLOGY: &str = r#"
[chassis]
name = "metrics"
run_dir = "win"
state_dir = "state"

[defaults]
timeouts = { rendezvous = "30s", verify = "30s", handoff = "30s", agent = "60s" }
heartbeat_timeout = "5s"
restart_backoff = "50ms"

[[processor]]
id = "bmc"
role = "monarch"

[[processor]]
id = "dpu0"
role = "secondary"
image = "builtin:payload"
image_size = "16MiB"

[[processor]]
id = "dpu1"
role = "secondary"
image = "builtin:payload"
image_size = "16MiB"
"#;

/// GET `path` from `addr` (HTTP/1.0, so the server closes when done): (status, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A PromQL query's first value, if it has one yet.
fn query(prom: &str, q: &str) -> Option<String> {
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect();
    let (status, body) = get(prom, &format!("/api/v1/query?query={enc}"));
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str().map(str::to_string)
}

#[test]
fn promtool_accepts_the_metrics_and_a_prometheus_server_sees_the_restart_after_a_crash() {
    monarch_drivers::host::ensure_packages(
        &[("promtool", "prometheus"), ("prometheus", "prometheus")],
        &mut |l| eprintln!("{l}"),
    )
    .unwrap();
    let c = Chassis::start_with(TOPOLOGY, &[], &["--metrics", "127.0.0.1:0"]);
    let (_, sup) = c.wait_for("supervising", &|e| e["event"] == "supervising");
    let addr = sup["metrics"].as_str().expect("the metrics address in the supervising event").to_string();
    c.wait_for("dpu1 ready", &|e| is(e, "ready", "dpu1"));

    // promtool's own lint of the exposition.
    let (status, text) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("monarch_processor_restarts_total{id=\"dpu1\"} 0"), "{text}");

    // A real Prometheus server scraping the supervisor every second.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: monarch\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let prom = format!("127.0.0.1:{}", free_port());
    let mut server = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={prom}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = |what: &str, f: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < WAIT, "{what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    until("prometheus never became ready", &|| {
        TcpStream::connect(&prom).is_ok() && get(&prom, "/-/ready").0 == 200
    });
    until("prometheus never scraped the supervisor", &|| {
        query(&prom, "up{job=\"monarch\"}").as_deref() == Some("1")
    });
    assert_eq!(query(&prom, "monarch_processor_restarts_total{id=\"dpu1\"}").as_deref(), Some("0"));

    // A crash, recovered; the next scrape counts it.
    let pid = c.status("dpu1")["pid"].as_u64().unwrap();
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let mark = c.events().len();
    c.wait_after(mark, "dpu1 back", &|e| is(e, "ready", "dpu1"));
    until("prometheus never saw the restart", &|| {
        query(&prom, "monarch_processor_restarts_total{id=\"dpu1\"}").as_deref() == Some("1")
    });
    assert_eq!(query(&prom, "monarch_processor_restarts_total{id=\"dpu0\"}").as_deref(), Some("0"));
    assert_eq!(query(&prom, "monarch_processor_state{id=\"dpu1\",state=\"running\"}").as_deref(), Some("1"));
    let _ = server.kill();
    let _ = server.wait();
    let (code, _) = c.shut_down();
    assert_eq!(code, 0);
}
