//! The control socket of a supervised chassis: `monarch status`, `reboot`, `shutdown`,
//! `startup`, `power` and `events` talk to `monarch up --hold` through a Unix socket in its
//! run folder.
//!
//! Only the chassis's owner can open it: the run folder is mode 0700, the socket 0600, and
//! the server checks each peer's credentials (`SO_PEERCRED`) against its own user. The
//! protocol is one JSON request per connection, answered by JSON lines: progress lines,
//! events (for `events`), and a last `done` line.

use crate::events::Event;
use serde::{Deserialize, Serialize};
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// The socket's name in the run folder.
pub const SOCKET: &str = "control.sock";

/// Longest request line the server reads.
const MAX_REQUEST: u64 = 64 << 10;

/// Connections served at once; more are refused (each holds a thread).
const MAX_CONNECTIONS: usize = 64;

/// What an operator asks the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The state of every processor (or of one), with the reboot-cause history if asked.
    Status {
        /// One processor.
        id: Option<String>,
        /// Include every reboot cause kept.
        history: bool,
    },
    /// Reboot a processor: negotiated in reverse dependency order, then delivered again.
    Reboot {
        /// The processor.
        id: String,
        /// Do not wait for acknowledgements or deferrals.
        force: bool,
        /// How long each notice may be deferred (milliseconds).
        deadline_ms: u64,
    },
    /// Shut down a processor, or the whole chassis (no id).
    Shutdown {
        /// The processor (none: the chassis).
        id: Option<String>,
        /// Do not wait for acknowledgements or deferrals.
        force: bool,
        /// How long each notice may be deferred (milliseconds).
        deadline_ms: u64,
    },
    /// Bring a processor that was shut down (or failed) up again.
    Startup {
        /// The processor.
        id: String,
    },
    /// Switch main power.
    Power {
        /// On or off.
        on: bool,
        /// Powering off: do not wait for acknowledgements.
        force: bool,
        /// Powering off: how long each notice may be deferred (milliseconds).
        deadline_ms: u64,
    },
    /// Every event from now on.
    Events,
}

/// One line of an answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// How a long request goes (a deferral, a step done).
    Progress {
        /// For the operator.
        line: String,
    },
    /// An event of the chassis (`events`).
    Event {
        /// The event.
        event: Event,
    },
    /// The last line.
    Done {
        /// Whether the request was carried out.
        ok: bool,
        /// Why not, with the fix where there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// What was asked for (the status).
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        body: serde_json::Value,
    },
}

impl Reply {
    /// A failed request.
    pub fn error(why: impl Into<String>) -> Reply {
        Reply::Done { ok: false, error: Some(why.into()), body: serde_json::Value::Null }
    }

    /// A request carried out.
    pub fn ok(body: serde_json::Value) -> Reply {
        Reply::Done { ok: true, error: None, body }
    }
}

/// A request and where its answer goes.
#[derive(Debug)]
pub struct Incoming {
    /// The request.
    pub request: Request,
    /// Its answer's lines; the connection closes after [`Reply::Done`].
    pub reply: mpsc::Sender<Reply>,
}

/// Why the control socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No supervised chassis found.
    #[error(
        "no supervised chassis is running{}: no control socket answers in /dev/shm/monarch-*/; start one with `monarch up --hold`, or name its socket with --socket RUN_DIR/control.sock",
        .0.as_deref().map(|c| format!(" with the name {c:?}")).unwrap_or_default()
    )]
    NoChassis(Option<String>),
    /// Several supervised chassis, none named.
    #[error("several supervised chassis are running ({0}); name one with --chassis NAME")]
    Several(String),
    /// The socket could not be created, reached or read.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor went away before it answered: it stopped, or died.
    #[error(
        "control socket {path}: the supervisor closed the connection before it answered: it stopped (or died); `monarch status` tells whether it still runs"
    )]
    Closed {
        /// The socket.
        path: PathBuf,
    },
    /// The supervisor answered something this build does not understand.
    #[error("control socket {path}: unreadable answer ({why}); is the running monarch the same version?")]
    Garbled {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// Serve the control socket at `path` (in a run folder only this user can enter): every
/// request of the owner goes to `tx`; a connection from anyone else is refused.
///
/// A socket nobody answers on is left by a monarch that died: it is replaced. One that still
/// answers belongs to a supervisor that is alive: with `take_over` (a monarch elected over
/// another of the same chassis, which may be only paused and is deposed now) it is replaced
/// too; otherwise the chassis is held already, and that is an error.
pub fn serve(path: &Path, tx: mpsc::Sender<Incoming>, take_over: bool) -> Result<Server, ControlError> {
    let io = |source| ControlError::Io { path: path.to_path_buf(), source };
    if path.exists() {
        if UnixStream::connect(path).is_ok() && !take_over {
            return Err(ControlError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another supervisor answers on it: this chassis is held already (`monarch status`), or give it another run_dir",
                ),
            });
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let active = Arc::new(AtomicUsize::new(0));
    let counted = active.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                if counted.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    let refusal =
                        Reply::error(format!("too many connections at once ({MAX_CONNECTIONS}); try again"));
                    let _ = conn.write_all(
                        format!("{}\n", serde_json::to_string(&refusal).unwrap_or_default()).as_bytes(),
                    );
                    continue;
                }
                let tx = tx.clone();
                counted.fetch_add(1, Ordering::SeqCst);
                let done = counted.clone();
                let spawned = std::thread::Builder::new().name("control-conn".into()).spawn(move || {
                    let _ = handle(conn, &tx);
                    done.fetch_sub(1, Ordering::SeqCst);
                });
                if spawned.is_err() {
                    counted.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .map_err(io)?;
    Ok(Server { active, path: path.to_path_buf() })
}

/// A running control socket.
#[derive(Debug)]
pub struct Server {
    active: Arc<AtomicUsize>,
    path: PathBuf,
}

impl Server {
    /// Wait (at most `timeout`) until every connection has written its last line: the
    /// answer to `monarch shutdown` must reach it before this process exits.
    pub fn drain(&self, timeout: Duration) {
        let until = std::time::Instant::now() + timeout;
        while self.active.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Remove the socket file (the chassis is no longer supervised by this process).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn handle(conn: UnixStream, tx: &mpsc::Sender<Incoming>) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let send = |out: &mut UnixStream, r: &Reply| -> std::io::Result<()> {
        let mut line = serde_json::to_string(r).map_err(std::io::Error::other)?;
        line.push('\n');
        out.write_all(line.as_bytes())
    };
    let me = rustix::process::geteuid();
    match rustix::net::sockopt::socket_peercred(&conn) {
        Ok(cred) if cred.uid == me => {}
        Ok(cred) => {
            return send(
                &mut out,
                &Reply::error(format!(
                    "user {} may not control this chassis: only its owner (user {}) may",
                    cred.uid.as_raw(),
                    me.as_raw()
                )),
            );
        }
        Err(e) => return send(&mut out, &Reply::error(format!("cannot check who is asking: {e}"))),
    }
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut raw = Vec::new();
    if let Err(e) = BufReader::new(&conn).take(MAX_REQUEST).read_until(b'\n', &mut raw) {
        return send(&mut out, &Reply::error(format!("no request read: {e}")));
    }
    if raw.last() != Some(&b'\n') {
        let why = if raw.len() as u64 >= MAX_REQUEST {
            format!("request too long (over {} KiB)", MAX_REQUEST >> 10)
        } else {
            "request not ended by a newline".to_string()
        };
        return send(&mut out, &Reply::error(why));
    }
    let Ok(line) = String::from_utf8(raw) else {
        return send(&mut out, &Reply::error("unreadable request: not UTF-8"));
    };
    let request = match serde_json::from_str::<Request>(&line) {
        Ok(r) => r,
        Err(e) => return send(&mut out, &Reply::error(format!("unreadable request: {e}"))),
    };
    let (rtx, rrx) = mpsc::channel();
    if tx.send(Incoming { request, reply: rtx }).is_err() {
        return send(&mut out, &Reply::error("the supervisor is stopping"));
    }
    for r in rrx {
        let last = matches!(r, Reply::Done { .. });
        send(&mut out, &r)?;
        if last {
            break;
        }
    }
    Ok(())
}

use std::io::Read as _;

/// The control socket of the supervised chassis named `chassis` (or of the only one running),
/// found among the temporary run folders in /dev/shm.
pub fn find(chassis: Option<&str>) -> Result<PathBuf, ControlError> {
    let mut found = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/dev/shm") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("monarch-") else { continue };
            // monarch-<chassis>-<pid>
            let Some((chassis_part, pid)) = rest.rsplit_once('-') else { continue };
            if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if chassis.is_some_and(|c| crate::topology::sanitize(c) != chassis_part) {
                continue;
            }
            let sock = e.path().join(SOCKET);
            if UnixStream::connect(&sock).is_ok() {
                found.push((chassis_part.to_string(), sock));
            }
        }
    }
    match found.len() {
        0 => Err(ControlError::NoChassis(chassis.map(str::to_string))),
        1 => Ok(found.remove(0).1),
        _ => Err(ControlError::Several(
            found.iter().map(|(c, p)| format!("{c} at {}", p.display())).collect::<Vec<_>>().join(", "),
        )),
    }
}

/// Send `request` to the supervisor at `path`; every line before the last goes to `on_line`.
/// Returns the last line ([`Reply::Done`]).
pub fn call(path: &Path, request: &Request, on_line: &mut dyn FnMut(&Reply)) -> Result<Reply, ControlError> {
    let io = |source| ControlError::Io { path: path.to_path_buf(), source };
    let mut conn = UnixStream::connect(path).map_err(io)?;
    let mut line = serde_json::to_string(request).map_err(|e| io(std::io::Error::other(e)))?;
    line.push('\n');
    conn.write_all(line.as_bytes()).map_err(io)?;
    for l in BufReader::new(conn).lines() {
        let l = l.map_err(io)?;
        let r: Reply = serde_json::from_str(&l)
            .map_err(|e| ControlError::Garbled { path: path.to_path_buf(), why: e.to_string() })?;
        if matches!(r, Reply::Done { .. }) {
            return Ok(r);
        }
        on_line(&r);
    }
    Err(ControlError::Closed { path: path.to_path_buf() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reaches_the_supervisor_and_its_lines_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let (tx, rx) = mpsc::channel();
        let _server = serve(&path, tx, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::thread::spawn(move || {
            let inc: Incoming = rx.recv().unwrap();
            assert_eq!(inc.request, Request::Startup { id: "dpu0".into() });
            inc.reply.send(Reply::Progress { line: "starting dpu0".into() }).unwrap();
            inc.reply.send(Reply::ok(serde_json::json!({"id": "dpu0"}))).unwrap();
        });
        let mut lines = Vec::new();
        let done = call(&path, &Request::Startup { id: "dpu0".into() }, &mut |r| {
            lines.push(serde_json::to_string(r).unwrap())
        })
        .unwrap();
        assert_eq!(lines, vec![r#"{"kind":"progress","line":"starting dpu0"}"#]);
        assert!(matches!(done, Reply::Done { ok: true, .. }));
    }

    #[test]
    fn garbage_gets_a_clear_answer_and_no_chassis_says_how_to_start_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let (tx, _rx) = mpsc::channel();
        let _server = serve(&path, tx, false).unwrap();
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"{\"op\":\"format_disk\"}\n").unwrap();
        let mut answer = String::new();
        BufReader::new(c).read_line(&mut answer).unwrap();
        assert!(answer.contains("unreadable request"), "{answer}");
        let e = find(Some("no-such-chassis-anywhere")).unwrap_err().to_string();
        assert!(e.contains("monarch up --hold") && e.contains("no-such-chassis-anywhere"), "{e}");
    }
}
