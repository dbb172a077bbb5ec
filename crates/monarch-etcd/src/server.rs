//! A private etcd server on loopback (Debian's `etcd-server`, installed with apt-get when
//! missing), for tests and benches that need a real one: free ports, a data directory of
//! its own, killed (even when stopped) when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Candidate, Config};

/// A running etcd on 127.0.0.1.
pub struct LocalEtcd {
    child: Child,
    endpoint: String,
    log: PathBuf,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| format!("cannot find a free port: {e}"))
}

fn spawn(args: &[String], log: &Path) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open etcd's log {}: {e}", log.display()))?;
    Command::new("etcd")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start etcd ({e}): install it with `apt-get install etcd-server`"))
}

impl LocalEtcd {
    /// Start one (installing `etcd-server` first if `etcd` is missing) and wait until it
    /// answers.
    pub fn start() -> Result<LocalEtcd, String> {
        monarch_drivers::host::ensure_packages(&[("etcd", "etcd-server")], &mut |m| eprintln!("{m}"))?;
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make etcd's data folder: {e}"))?;
        let (client, peer) = (free_port()?, free_port()?);
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = dir.path().join("etcd.log");
        let args: Vec<String> = [
            "--name",
            "monarch-local",
            "--data-dir",
            &dir.path().join("data").display().to_string(),
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("monarch-local={peer_url}"),
            "--logger",
            "zap",
            "--log-level",
            "warn",
            "--log-outputs",
            "stderr",
        ]
        .map(String::from)
        .to_vec();
        let child = spawn(&args, &log)?;
        let mut etcd = LocalEtcd { child, endpoint, log, args, _dir: dir };
        etcd.wait_ready()?;
        Ok(etcd)
    }

    /// Its client URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill it outright (no chance to flush or say goodbye).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again on the same ports and data directory; returns when it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        self.child = spawn(&self.args, &self.log)?;
        self.wait_ready()
    }

    /// Send it a signal (SIGSTOP: a hung server; SIGCONT: back).
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<(), String> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).map_err(|e| format!("cannot signal etcd: {e}"))
    }

    /// What it logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("etcd exited with {status}: {}", self.log_text()));
            }
            let mut cfg = Config::new(vec![self.endpoint.clone()], "monarch/ready", "probe");
            cfg.connect_timeout = Duration::from_millis(500);
            if Candidate::connect(cfg).and_then(|c| c.leader()).is_ok() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(20) {
                return Err(format!("etcd not ready after 20 s: {}", self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.signal(rustix::process::Signal::CONT);
        self.kill();
    }
}
