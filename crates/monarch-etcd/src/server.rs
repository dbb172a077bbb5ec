//! A private etcd server on loopback (Debian's `etcd-server`, which must be installed: its
//! `etcd` on PATH), for tests and benches that need a real one: free ports, a data directory
//! of its own, killed (even when stopped) when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Candidate, Config};

/// A running etcd on 127.0.0.1.
pub struct LocalEtcd {
    child: Child,
    program: PathBuf,
    endpoint: String,
    log: PathBuf,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| format!("cannot find a free port: {e}"))
}

/// What to run `apt-get install` for when `etcd` is missing.
pub const PACKAGE: &str = "etcd-server";

/// The `etcd` program on PATH, or an error that names the package to install.
pub fn etcd_program() -> Result<PathBuf, String> {
    etcd_program_in(&std::env::var_os("PATH").unwrap_or_default())
}

/// The first executable `etcd` in the folders of `path` (a PATH value).
fn etcd_program_in(path: &std::ffi::OsStr) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or_else(|| {
            format!("etcd is not installed (no `etcd` on PATH): install it with `apt-get install {PACKAGE}`")
        })
}

fn spawn(program: &Path, args: &[String], log: &Path) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open etcd's log {}: {e}", log.display()))?;
    Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().map_err(
        |e| format!("cannot start {} ({e}): install it with `apt-get install {PACKAGE}`", program.display()),
    )
}

impl LocalEtcd {
    /// Start one and wait until it answers. Without `etcd` on PATH, an error that says to
    /// install [`PACKAGE`] (nothing is installed here).
    pub fn start() -> Result<LocalEtcd, String> {
        let program = etcd_program()?;
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
        let child = spawn(&program, &args, &log)?;
        let mut etcd = LocalEtcd { child, program, endpoint, log, args, _dir: dir };
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
        self.child = spawn(&self.program, &self.args, &self.log)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn etcd_is_looked_up_on_path_and_its_absence_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let (empty, bin) = (dir.path().join("empty"), dir.path().join("bin"));
        std::fs::create_dir(&empty).unwrap();
        std::fs::create_dir(&bin).unwrap();
        let etcd = bin.join("etcd");
        std::fs::write(&etcd, "#!/bin/sh\n").unwrap();
        let path = std::env::join_paths([&empty, &bin]).unwrap();
        let e = etcd_program_in(&path).unwrap_err();
        assert!(e.contains("apt-get install etcd-server"), "not executable yet: {e}");
        std::fs::set_permissions(&etcd, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(etcd_program_in(&path).unwrap(), etcd);
        assert!(etcd_program_in(std::ffi::OsStr::new("")).is_err());
    }
}
