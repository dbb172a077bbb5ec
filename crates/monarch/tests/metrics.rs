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
image_size = "24MiB"

[[processor]]
id = "dpu1"
role = "secondary"
image = "builtin:payload"
image_size = "24MiB"
"#;

/// GET `path` from `addr`, asking the server to close when done: (status, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
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

#[test]
fn netboot_serve_counts_transfers_bytes_and_errors_per_protocol() {
    monarch_drivers::host::ensure_packages(&[("promtool", "prometheus")], &mut |l| eprintln!("{l}")).unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("img.bin"), vec![7u8; 100_000]).unwrap();
    let (http, metrics) = (free_port(), free_port());
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(common::MONARCH)
        .args(["netboot", "serve", "--root"])
        .arg(root.path())
        .args(["--address", "127.0.0.1", "--tftp-port", "0", "--discovery-port", "0", "--json"])
        .args(["--http-port", &http.to_string(), "--metrics", &format!("127.0.0.1:{metrics}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _child = Killed(child);
    // Read its events to the end (a closed pipe would stop it), saying when it is ready.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            if serde_json::from_str::<Value>(&l).is_ok_and(|e| e["event"] == "ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(WAIT).expect("netboot serve never said ready");
    let web = format!("127.0.0.1:{http}");
    assert_eq!(get(&web, "/img.bin").0, 200);
    assert_eq!(get(&web, "/no-such-file").0, 404);
    let m = format!("127.0.0.1:{metrics}");
    let start = Instant::now();
    let text = loop {
        let (_, text) = get(&m, "/metrics");
        if text.contains("monarch_netboot_errors_total{protocol=\"http\"} 1") || start.elapsed() > WAIT {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for want in [
        "monarch_netboot_transfers_total{protocol=\"http\"} 1",
        "monarch_netboot_bytes_total{protocol=\"http\"} 100000",
        "monarch_netboot_errors_total{protocol=\"http\"} 1",
        "monarch_netboot_transfers_total{protocol=\"tftp\"} 0",
    ] {
        assert!(text.contains(want), "no {want} in:\n{text}");
    }
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(out.status.success(), "promtool: {}", String::from_utf8_lossy(&out.stdout));
}
