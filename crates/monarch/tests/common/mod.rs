//! Helpers shared by the end-to-end tests: run the real `monarch` binary and read its JSON.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses some of them

use serde_json::Value;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a supervised chassis's test waits for an event: long enough for a loaded CI host;
/// the tests never assert a duration.
pub const WAIT: Duration = Duration::from_secs(120);

pub const MONARCH: &str = env!("CARGO_BIN_EXE_monarch");

/// The head of a supervised chassis's topology named `name`: a BMC monarch, generous
/// timeouts, a 100 ms heartbeat, quick restarts, its run and state folders beside it.
pub fn server_head(name: &str) -> String {
    format!(
        r#"
[chassis]
name = "{name}"
run_dir = "win"
state_dir = "state"

[defaults]
timeouts = {{ rendezvous = "30s", verify = "30s", handoff = "30s", agent = "60s" }}
heartbeat = "100ms"
heartbeat_timeout = "5s"
restart_backoff = "50ms"

[[processor]]
id = "bmc"
role = "monarch"
"#
    )
}

/// A secondary `id` running the built-in payload (24 MiB, banner "`id` up"), with `extra`
/// lines.
pub fn secondary(id: &str, extra: &str) -> String {
    format!(
        "[[processor]]\nid = \"{id}\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nimage_size = \"24MiB\"\nbanner = \"{id} up\"\n{extra}\n"
    )
}

/// A server named `name`: dpu0 (storage, the host requires it), dpu1 (network, the host wants
/// it), the host on main power. `dpu0`, `dpu1` and `host` add lines to each.
pub fn server(name: &str, dpu0: &str, dpu1: &str, host: &str) -> String {
    format!(
        "{}\n{}\n{}\n{}",
        server_head(name),
        secondary("dpu0", dpu0),
        secondary("dpu1", dpu1),
        secondary(
            "host",
            &format!("power = \"main\"\nrequires = [\"dpu0\"]\nwants = [\"dpu1\"]\nwait = \"5s\"\n{host}")
        ),
    )
}

pub struct Run {
    pub code: i32,
    pub events: Vec<Value>,
    pub summary: Value,
    pub stderr: String,
}

impl Run {
    pub fn processor(&self, id: &str) -> &Value {
        self.summary["processors"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["id"] == id))
            .unwrap_or_else(|| panic!("no processor {id} in {}", self.summary))
    }
    pub fn events_of(&self, id: &str, event: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["id"] == id && e["event"] == event).collect()
    }
}

pub fn monarch(args: &[&str]) -> Output {
    Command::new(MONARCH).args(args).output().expect("run monarch")
}

pub fn up_json(topology: Option<&Path>) -> Run {
    let mut args = vec!["up", "--json"];
    let t;
    if let Some(p) = topology {
        t = p.display().to_string();
        args.push("--topology");
        args.push(&t);
    }
    let out = monarch(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let summary = events.last().cloned().unwrap_or(Value::Null);
    assert_eq!(summary["event"], "summary", "last line must be the summary: {stdout}");
    Run {
        code: out.status.code().unwrap_or(-1),
        events,
        summary,
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

pub fn write_topology(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("t.toml");
    std::fs::write(&p, text).unwrap();
    p
}

pub fn t_of(e: &Value) -> f64 {
    e["t_ms"].as_f64().unwrap()
}

/// Index of the first event matching, after `from`.
pub fn find(events: &[Value], from: usize, pred: &dyn Fn(&Value) -> bool) -> Option<usize> {
    events.iter().enumerate().skip(from).find(|(_, e)| pred(e)).map(|(i, _)| i)
}

pub fn is(e: &Value, event: &str, id: &str) -> bool {
    e["event"] == event && e["id"] == id
}

/// `monarch up --hold --json` running in the background, its events collected as they come.
pub struct Chassis {
    pub child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    /// Its stderr lines as they come, when started with [`Chassis::start_capturing_stderr`]
    /// (collected on after the chassis is shut down and gone).
    pub stderr: Option<Arc<Mutex<Vec<String>>>>,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Chassis {
    /// Start the chassis of `topology`, in a network namespace of its own when `ports` names
    /// veth pairs to create there first (`(port, peer)`).
    pub fn start(topology: &str, ports: &[(&str, &str)]) -> Chassis {
        Chassis::start_with(topology, ports, &[])
    }

    /// [`Chassis::start`] with more arguments for `monarch up --hold`.
    pub fn start_with(topology: &str, ports: &[(&str, &str)], extra: &[&str]) -> Chassis {
        Chassis::spawn(topology, ports, extra, false)
    }

    /// [`Chassis::start_with`] (no ports), its stderr collected for [`Chassis::stderr_lines`]
    /// instead of passed through.
    pub fn start_capturing_stderr(topology: &str, extra: &[&str]) -> Chassis {
        Chassis::spawn(topology, &[], extra, true)
    }

    fn spawn(topology: &str, ports: &[(&str, &str)], extra: &[&str], capture: bool) -> Chassis {
        let dir = tempfile::tempdir().unwrap();
        let t = write_topology(dir.path(), topology);
        let up = format!("exec {MONARCH} up --hold --json --topology {} {}", t.display(), extra.join(" "));
        let mut cmd = if ports.is_empty() {
            let mut c = Command::new(MONARCH);
            c.args(["up", "--hold", "--json", "--topology"]).arg(&t).args(extra);
            c
        } else {
            monarch_drivers::host::ensure_packages(&[("ip", "iproute2")], &mut |l| eprintln!("{l}")).unwrap();
            let mut script = String::new();
            for (port, peer) in ports {
                script.push_str(&format!("ip link add {port} type veth peer name {peer} && "));
            }
            script.push_str(&up);
            let mut c = Command::new("unshare");
            c.args(["--net", "--", "sh", "-c", &script]);
            c
        };
        let stderr = if capture { Stdio::piped() } else { Stdio::inherit() };
        let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().expect("start monarch up --hold");
        let stderr = child.stderr.take().map(|err| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        });
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                sink.lock().unwrap().push(v);
            }
        });
        let socket = dir.path().join("win/control.sock");
        let c = Chassis { child, events, stderr, socket, dir };
        c.wait_for("the supervisor to start", &|e| e["event"] == "supervising");
        c
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Wait until an event matches; it is returned with its index.
    pub fn wait_for(&self, what: &str, pred: &dyn Fn(&Value) -> bool) -> (usize, Value) {
        self.wait_after(0, what, pred)
    }

    pub fn wait_after(&self, from: usize, what: &str, pred: &dyn Fn(&Value) -> bool) -> (usize, Value) {
        let start = Instant::now();
        loop {
            let ev = self.events();
            if let Some(i) = find(&ev, from, pred) {
                return (i, ev[i].clone());
            }
            assert!(start.elapsed() < WAIT, "no event for {what} within {WAIT:?}; events:\n{}", dump(&ev));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(MONARCH).args(args).arg("--socket").arg(&self.socket).output().unwrap()
    }

    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "monarch {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            dump(&self.events())
        );
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    pub fn status(&self, id: &str) -> Value {
        let out = self.ctl(&["status", id, "--json", "--history"]);
        assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["processors"][0].clone()
    }

    /// `monarch shutdown`, and the exit status of `up --hold` with every event.
    pub fn shut_down(self) -> (i32, Vec<Value>) {
        self.shut_down_with(&[])
    }

    pub fn shut_down_with(mut self, args: &[&str]) -> (i32, Vec<Value>) {
        let mut a = vec!["shutdown"];
        a.extend_from_slice(if args.is_empty() { &["--deadline", "20s"] } else { args });
        self.ctl_ok(&a);
        let start = Instant::now();
        let code = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s.code().unwrap_or(-1);
            }
            assert!(start.elapsed() < WAIT, "monarch up --hold did not exit after shutdown");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread drains what is left.
        std::thread::sleep(Duration::from_millis(100));
        (code, self.events())
    }

    /// Its stderr so far (empty unless started with [`Chassis::start_capturing_stderr`]).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.as_ref().map(|l| l.lock().unwrap().clone()).unwrap_or_default()
    }

    pub fn monarch_pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Chassis {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // A failed test: stop the chassis (its images follow their parent).
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn dump(ev: &[Value]) -> String {
    ev.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
}
