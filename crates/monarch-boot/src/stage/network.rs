//! The monarch's side of a secondary with no window (`launch = "netboot"`): boot it over the
//! network with the network boot flow, reporting the same events and summary as a window secondary.
//!
//! One secondary's life, as a window secondary has it:
//! 1. **retrieve**: the image is put in `RUN_DIR/ID.netboot/` (a builtin payload is built
//!    there; a file is copied, `copy_file_range`) and its retrieved checksum is computed *from
//!    that copy*, so the checksum is of exactly the bytes that will be served;
//! 2. **configuring**: a [`DiscoveryServer`] for this machine alone starts on 127.0.0.1
//!    (ephemeral UDP and TCP ports), offering digests in the secondary's `checksum`
//!    algorithm; the monarch sends it one DISCOVER of its own and checks that the offered size
//!    and digest are the retrieved ones before anything is released (this also makes the
//!    server hash the image now, not while the agent waits);
//! 3. **launching**: `monarch netboot agent --server … --mac … --json` starts (stderr to
//!    `RUN_DIR/ID.log`, stdout read here);
//! 4. **rendezvous** (the agent discovers) until the server offers to it; **copying** until
//!    the server has sent the image into the agent's pre-posted buffer; **verifying** until
//!    the agent's JSON report (it verified the buffer against the offered digest and, with a
//!    disk, installed it A/B); **handoff** until the payload's marker line
//!    ([`crate::payload::NETBOOT_MARKER`]) arrives: state `running`, its report the payload's.
//!    With `handoff = "none"` the agent exits 0 after the report: state `released`.
//!
//! The agent verifies; there is one attempt and a mismatch is a failure with the agent's own
//! words. The running image's self-reported size (and CRC-32C, when that is the checksum) is
//! compared with the retrieved one as a last check that what runs is what was retrieved.
//!
//! Why a server per secondary (a thread with a current-thread tokio runtime) rather than one
//! shared server: each netboot secondary then lives entirely inside its own `stage` call, like
//! a window secondary — its failure, its timeouts and its cleanup cannot touch another
//! secondary, and `run.rs` needs no change. The cost is one thread and two loopback sockets
//! per netboot secondary for the duration of its boot.

use super::context::{StageCtx, Staged, announce_done, log_tail, ms, port_path, retrieved};
use crate::events::{EventKind, ProcessorSummary, Timings};
use crate::handoff::Handoff;
use crate::image;
use crate::netboot::DiscoveryThread;
use crate::payload::NETBOOT_MARKER;
use crate::topology::{ImageSource, NetbootSpec, Secondary};
use monarch_net::EventSink;
use monarch_net::catalog::{Catalog, Machine};
use monarch_net::discovery::{DiscoveryConfig, DiscoveryEvent};
use monarch_proto::Algo;
use monarch_proto::checksum::Digest;
use monarch_proto::mac::Mac;
use monarch_proto::netboot::wire::{Discover, Message, Offer};
use monarch_proto::text::{MAX_CHARS, printable};
use serde_json::Value;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// Longest line read from the agent's standard output; longer lines arrive in pieces. The
/// agent is ours, but what it prints after the handoff is the delivered image's.
const MAX_LINE: u64 = 64 * 1024;

/// How often the agent rebroadcasts while nobody answers (the server is local and ready, so
/// the first DISCOVER is normally answered).
const REDISCOVER: Duration = Duration::from_millis(500);

/// How long the agent may take to exit after its image stopped reporting (stdout closed).
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// What the stage waits for: the boot server's events and the agent's standard output.
enum Msg {
    Server(DiscoveryEvent),
    /// The server stopped by itself (its sockets failed).
    ServerDown(String),
    Line(String),
    Eof,
}

/// Stage one netboot secondary from retrieval to its final state (called by
/// the staging entry point, for `launch = "netboot"`).
pub(crate) fn stage(sec: &Secondary, nb: &NetbootSpec, ctx: &StageCtx<'_>) -> Staged {
    let mut st = NetStage {
        sec,
        nb,
        ctx,
        t0: Instant::now(),
        // Behind a switch, a network boot takes the link for its whole stage.
        timings: Timings { queued: ctx.link.map_or(0.0, |turn| ms(turn.take())), ..Timings::default() },
        attempts: 0,
        bytes: 0,
        image_bytes: 0,
        checksum: None,
        unsigned: None,
        report: None,
        child: None,
        server: None,
        root: sec.window.path.with_extension("netboot"),
        log: super::launch::agent_log(sec),
        server_said: None,
        interrupted: false,
    };
    let result = st.run();
    st.finish(result)
}

/// Longest wait between two looks at the interruption flag.
const INTERRUPT_SLICE: Duration = Duration::from_millis(100);

struct NetStage<'a, 'c> {
    sec: &'a Secondary,
    nb: &'a NetbootSpec,
    ctx: &'a StageCtx<'c>,
    t0: Instant,
    timings: Timings,
    attempts: u32,
    bytes: u64,
    image_bytes: u64,
    checksum: Option<Digest>,
    /// With a signature attached to the served copy: the image alone (what the agent runs),
    /// its length and CRC-32C, which the running payload reports.
    unsigned: Option<(u64, Digest)>,
    report: Option<String>,
    child: Option<Child>,
    server: Option<DiscoveryThread>,
    /// The served root: `RUN_DIR/ID.netboot/` with the image in it.
    root: PathBuf,
    /// The agent's standard error.
    log: PathBuf,
    /// The boot server's last refusal or failed transfer (for error messages).
    server_said: Option<String>,
    /// Stopped by SIGINT/SIGTERM ([`crate::interrupt`]).
    interrupted: bool,
}

/// Where the stage is, what ends it, and which timeout bounds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Rendezvous,
    Copying,
    Verifying,
    Handoff,
}

impl<'a, 'c> NetStage<'a, 'c> {
    fn emit(&self, kind: EventKind) {
        (self.ctx.emit)(kind);
    }

    fn phase(&self, phase: &str, attempt: u32) {
        self.emit(EventKind::Phase { id: self.sec.id.clone(), phase: phase.into(), attempt });
    }

    fn run(&mut self) -> Result<&'static str, String> {
        let sec = self.sec;
        let stop =
            || crate::interrupt::received().map(|sig| format!("interrupted by {sig} before it was released"));
        // A main-domain machine stays off until main power is on.
        self.ctx
            .gate
            .power(sec, &mut || self.emit(EventKind::PoweredOff { id: sec.id.clone() }), &stop)
            .map_err(|e| e.to_string())?;
        // 1. Retrieve into the served root; the checksum is of the served bytes.
        let t = Instant::now();
        let (served, name) = self.retrieve()?;
        self.timings.retrieve = ms(t.elapsed());
        // 2. This machine's boot server, checked against the retrieval before any release.
        self.phase("configuring", 0);
        let t = Instant::now();
        let (tx, rx) = mpsc::channel::<Msg>();
        let catalog = Catalog::from_parts(
            &self.root,
            None,
            [(self.nb.mac, Machine { name: Some(sec.id.clone()), image: Some(name), ..Machine::default() })],
        )
        .map_err(|e| format!("cannot serve the image: {e}"))?;
        let server = start_server(&sec.id, catalog, sec.algo, tx.clone())?;
        let udp = server.udp();
        self.server = Some(server);
        let (prime_from, offer) = prime(udp, self.nb.mac, sec.timeouts.rendezvous)?;
        self.check_offer(&offer)?;
        if sec.faults.corrupt_attempts > 0 {
            corrupt_keeping_mtime(&served)?;
        }
        self.timings.configure = ms(t.elapsed());
        // 3. Release: start the agent, once its dependencies let it go (no window to hold it
        // at: it is not started before).
        let mut without = Vec::new();
        if sec.life.has_dependencies() {
            let on_wait = &mut |awaited: &[String]| {
                self.emit(EventKind::Held { id: sec.id.clone(), waiting_for: awaited.to_vec() });
            };
            without = self.ctx.gate.dependencies(sec, on_wait, &stop).map_err(|e| e.to_string())?.without;
        }
        self.emit(EventKind::Released { id: sec.id.clone(), without });
        self.phase("launching", 0);
        let released = Instant::now();
        self.launch(udp, tx)?;
        self.phase("rendezvous", 0);
        self.follow(&rx, prime_from, released)
    }

    /// Put the image in the served root and compute its retrieved checksum from there.
    fn retrieve(&mut self) -> Result<(PathBuf, String), String> {
        let sec = self.sec;
        if self.root.exists() {
            // Left by an earlier run in a kept run_dir: never serve stale bytes.
            std::fs::remove_dir_all(&self.root)
                .map_err(|e| format!("cannot clear {}: {e}; remove it", self.root.display()))?;
        }
        std::fs::create_dir_all(&self.root)
            .map_err(|e| format!("cannot create {}: {e}; check run_dir", self.root.display()))?;
        let name = match &sec.image {
            ImageSource::File(p) => p
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| {
                    n.len() <= 100 && n.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                })
                .map_or_else(|| format!("{}.img", sec.id), str::to_string),
            ImageSource::Builtin { .. } => format!("{}.img", sec.id),
        };
        let served = self.root.join(&name);
        let image = match &sec.image {
            ImageSource::File(src) => {
                // copy_file_range: in the kernel (a reflink where the file system has them).
                std::fs::copy(src, &served).map_err(|e| {
                    format!(
                        "cannot copy image {} to {}: {e}; check both paths",
                        src.display(),
                        served.display()
                    )
                })?;
                // Signed: the monarch checks the copy it will serve, then attaches the
                // signature to it (the network has no register page); the agent splits it
                // off and checks it again with its own keys before installing or running.
                if sec.signing.trust.checks() {
                    let bytes = std::fs::read(&served)
                        .map_err(|e| format!("cannot read {}: {e}", served.display()))?;
                    let held = monarch_proto::sign::ImageDigest::of(&bytes);
                    if let Some(record) = crate::signing::check_image(&sec.signing.trust, src, &held)
                        .map_err(|e| e.to_string())?
                    {
                        use std::io::Write as _;
                        std::fs::OpenOptions::new()
                            .append(true)
                            .open(&served)
                            .and_then(|mut f| f.write_all(&monarch_proto::sign::attach(&record)))
                            .map_err(|e| {
                                format!("cannot attach the signature to {}: {e}", served.display())
                            })?;
                        self.unsigned = Some((held.len, Algo::Crc32c.digest(&bytes)));
                    }
                }
                image::retrieve(&ImageSource::File(served.clone()), sec.algo, 0)
            }
            source => {
                let image = image::retrieve(source, sec.algo, 0).map_err(|e| e.to_string())?;
                if let Some(bytes) = image.data.contiguous() {
                    std::fs::write(&served, &bytes)
                        .map_err(|e| format!("cannot write {}: {e}; check run_dir", served.display()))?;
                }
                Ok(image)
            }
        }
        .map_err(|e| e.to_string())?;
        self.image_bytes = image.len;
        self.checksum = Some(image.digest);
        self.emit(retrieved(sec, &image));
        Ok((served, name))
    }

    /// The server must offer exactly what was retrieved: the agent verifies against the offer.
    fn check_offer(&self, o: &Offer) -> Result<(), String> {
        let algo = self.sec.algo;
        let want = self.checksum.unwrap_or_default();
        if o.size != self.image_bytes || o.algo != algo || o.digest != want {
            return Err(format!(
                "the boot server offers {} ({} bytes, {} {}) but the monarch retrieved {} bytes with {} {}: \
                 the served copy in {} changed after retrieval; nothing was released (run again)",
                o.name,
                o.size,
                o.algo.name(),
                o.digest.to_hex(o.algo),
                self.image_bytes,
                algo.name(),
                want.to_hex(algo),
                self.root.display()
            ));
        }
        Ok(())
    }

    fn launch(&mut self, udp: SocketAddr, tx: mpsc::Sender<Msg>) -> Result<(), String> {
        let sec = self.sec;
        let exe = self.ctx.agent_exe;
        let mut cmd = Command::new(exe);
        // The terminal's Ctrl-C is ours to act on, not the agent's (crate::interrupt).
        monarch_drivers::host::ignore_sigint_in(&mut cmd);
        let args = crate::cmdline::NetbootAgentArgs {
            server: udp,
            interface: None,
            mac: Some(self.nb.mac.to_string()),
            wait: sec.timeouts.rendezvous,
            interval: REDISCOVER.min(sec.timeouts.rendezvous),
            disk: self.nb.disk.clone(),
            disk_size: self.nb.disk.as_ref().and(self.nb.disk_size),
            max_size: self.image_bytes.max(1),
            handoff: sec.handoff,
            json: true,
            trust: sec.signing.agent_args(),
        };
        cmd.args(args.to_args());
        // The payload reports through a window when it sees one; this one has none.
        cmd.env_remove("MONARCH_WINDOW");
        crate::logs::inherit(&mut cmd);
        // Appended to, like a window agent's log: a relaunch keeps what the first run said.
        let log = super::context::open_log(&self.log)
            .map_err(|e| format!("cannot create agent log {}: {e}; check run_dir", self.log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start the netboot agent {}: {e}", exe.display()))?;
        let out = child.stdout.take().ok_or("internal: the agent's stdout is not piped")?;
        self.emit(EventKind::Launched { id: sec.id.clone(), pid: child.id(), console: None });
        self.child = Some(child);
        std::thread::Builder::new()
            .name(format!("netboot-out-{}", sec.id))
            .spawn(move || read_lines(out, &tx))
            .map_err(|e| format!("cannot start a thread to read the agent's output: {e}"))?;
        Ok(())
    }

    /// Follow the server's events and the agent's output from the release to the final state.
    fn follow(
        &mut self,
        rx: &mpsc::Receiver<Msg>,
        prime_from: SocketAddr,
        released: Instant,
    ) -> Result<&'static str, String> {
        let sec = self.sec;
        let mut step = Step::Rendezvous;
        let mut started = released;
        let mut deadline = released + sec.timeouts.rendezvous;
        loop {
            let now = Instant::now();
            let Some(left) = deadline.checked_duration_since(now).filter(|d| !d.is_zero()) else {
                return Err(self.timed_out(step));
            };
            // In slices, so the operator's interruption is seen within one.
            let msg = match rx.recv_timeout(left.min(INTERRUPT_SLICE)) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(sig) = crate::interrupt::received() {
                        self.interrupted = true;
                        return Err(format!("interrupted by {sig} before it booted"));
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => Msg::Eof,
            };
            match msg {
                Msg::Server(DiscoveryEvent::Offered { peer, .. })
                    if peer != prime_from && step == Step::Rendezvous =>
                {
                    self.timings.rendezvous = ms(started.elapsed());
                    self.attempts = 1;
                    self.phase("copying", 1);
                    step = Step::Copying;
                    started = Instant::now();
                    deadline = started + sec.timeouts.agent;
                }
                Msg::Server(DiscoveryEvent::Sent { peer, bytes, .. })
                    if peer != prime_from && step <= Step::Copying =>
                {
                    self.copied(bytes, started.elapsed());
                    self.phase("verifying", 1);
                    step = Step::Verifying;
                    started = Instant::now();
                    deadline = started + sec.timeouts.verify;
                }
                Msg::Server(
                    DiscoveryEvent::Failed { reason, bytes, .. }
                    | DiscoveryEvent::Dropped { reason, bytes, .. },
                ) => {
                    self.server_said = Some(format!("transfer broke off after {bytes} bytes: {reason}"));
                }
                Msg::Server(DiscoveryEvent::Refused { reason, .. }) => {
                    self.server_said = Some(format!("download refused: {reason}"));
                }
                Msg::Server(_) => {}
                Msg::ServerDown(e) => {
                    return Err(format!("the boot server stopped: {e}{}", self.agent_said()));
                }
                Msg::Line(line) if step < Step::Handoff && line.starts_with('{') => {
                    let Ok(report) = serde_json::from_str::<Value>(&line) else { continue };
                    let source = report["source"].as_str().unwrap_or("?").to_string();
                    if step == Step::Rendezvous {
                        self.timings.rendezvous = ms(started.elapsed());
                    }
                    if step <= Step::Copying && source != "disk" {
                        // The agent finished before the server's `sent` event was read.
                        let bytes = report["bytes"].as_u64().unwrap_or(0);
                        self.attempts = 1;
                        self.copied(bytes, started.elapsed());
                        self.phase("verifying", 1);
                    }
                    // The agent's own measurement of its verification (fetch_ms: discover,
                    // transfer, verify); with a disk, the install follows it.
                    self.timings.verify =
                        report["fetch_ms"][2].as_f64().map_or(0.0, |v| (v * 1e3).round() / 1e3);
                    self.phase("handoff", self.attempts);
                    step = Step::Handoff;
                    started = Instant::now();
                    deadline = started + sec.timeouts.handoff;
                }
                Msg::Line(line) => {
                    if let Some(at) = line.find(NETBOOT_MARKER) {
                        let report = printable(line[at + NETBOOT_MARKER.len()..].trim(), MAX_CHARS);
                        self.timings.handoff = ms(started.elapsed());
                        self.check_running(&report)?;
                        self.report = Some(report);
                        return Ok("running");
                    }
                }
                Msg::Eof => {
                    let status = self.wait_exit();
                    if step == Step::Handoff
                        && sec.handoff == Handoff::None
                        && status.as_ref().is_some_and(std::process::ExitStatus::success)
                    {
                        self.timings.handoff = ms(started.elapsed());
                        return Ok("released");
                    }
                    let pid = self.child.as_ref().map_or(0, Child::id);
                    let how = status.map_or_else(|| "did not exit".to_string(), |s| s.to_string());
                    return Err(format!(
                        "netboot agent {pid} ended ({how}) while {} without the image reporting running{}",
                        doing(step),
                        self.agent_said()
                    ));
                }
            }
        }
    }

    fn copied(&mut self, bytes: u64, took: Duration) {
        self.bytes = bytes;
        self.timings.copy = ms(took);
        self.emit(EventKind::Copied { id: self.sec.id.clone(), attempt: 1, bytes, ms: ms(took) });
    }

    /// The payload says `BANNER [image N bytes, crc32c X]`: it must be the retrieved image.
    fn check_running(&self, report: &str) -> Result<(), String> {
        let size = report
            .rsplit_once("[image ")
            .and_then(|(_, r)| r.split_once(" bytes"))
            .and_then(|(n, _)| n.parse::<u64>().ok());
        // A signed image runs without the signature attached to it for the network.
        let (expected, crc) = match self.unsigned {
            Some((len, crc)) => (len, Some(crc)),
            None => (self.image_bytes, self.checksum.filter(|_| self.sec.algo == Algo::Crc32c)),
        };
        if size.is_some_and(|n| n != expected) {
            return Err(format!(
                "the running image reports {} bytes but the monarch retrieved {}: it is not the delivered image ({report})",
                size.unwrap_or_default(),
                expected
            ));
        }
        if let Some(want) = crc.map(|d| d.to_hex(Algo::Crc32c))
            && let Some(crc) = report.rsplit_once("crc32c ").map(|(_, r)| r.trim_end_matches(']').trim())
            && crc != want
        {
            return Err(format!(
                "the running image reports crc32c {crc} but the monarch retrieved {want}: it is not the delivered image"
            ));
        }
        Ok(())
    }

    fn timed_out(&self, step: Step) -> String {
        let t = &self.sec.timeouts;
        let (what, after, knob) = match step {
            Step::Rendezvous => (
                "no offer reached the agent (it did not discover its boot server)",
                t.rendezvous,
                "rendezvous",
            ),
            Step::Copying => ("the transfer into the agent's buffer did not complete", t.agent, "agent"),
            Step::Verifying => {
                ("the agent did not report a verified image after the transfer", t.verify, "verify")
            }
            Step::Handoff => {
                ("the image did not report running after the agent's handoff", t.handoff, "handoff")
            }
        };
        format!(
            "{what} within {} (timeouts.{knob}); raise timeouts.{knob} if the machine is just slow{}",
            humantime::format_duration(after),
            self.agent_said()
        )
    }

    /// `; boot server: …; agent said: …` from what is known.
    fn agent_said(&self) -> String {
        let mut s = String::new();
        if let Some(w) = &self.server_said {
            s.push_str(&format!("; boot server: {w}"));
        }
        if let Some(tail) = log_tail(&self.log) {
            s.push_str(&format!("; agent said: {tail}"));
        }
        s
    }

    /// Reap the agent after its output closed (bounded: it may have closed stdout and hung).
    fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let until = Instant::now() + EXIT_GRACE;
        loop {
            match c.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                _ => return None,
            }
        }
    }

    fn finish(mut self, result: Result<&'static str, String>) -> Staged {
        let sec = self.sec;
        let (state, error) = match &result {
            Ok(s) => (*s, None),
            Err(e) if self.interrupted => ("interrupted", Some(e.clone())),
            Err(e) => ("failed", Some(e.clone())),
        };
        if result.is_err()
            && let Some(mut c) = self.child.take()
        {
            // A failed secondary is stopped: nothing keeps running behind a failure.
            let _ = c.kill();
            let _ = c.wait();
        }
        // The boot server goes with the stage (its thread joined, its ports closed), and so
        // does the served copy; the agent's log stays.
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.root);
        self.timings.total = ms(self.t0.elapsed());
        let (path, switch) = port_path(sec);
        let summary = ProcessorSummary {
            path,
            switch,
            attempts: self.attempts,
            bytes: self.bytes,
            image_bytes: self.image_bytes,
            mode: Some("netboot".into()),
            algo: Some(sec.algo.name().into()),
            checksum: self.checksum.map(|d| d.to_hex(sec.algo)),
            timings_ms: self.timings.clone(),
            report: self.report.clone(),
            error,
            required: sec.required,
            ..ProcessorSummary::new(&sec.id, "secondary", state)
        };
        announce_done(self.ctx.emit, &summary);
        Staged { summary, child: self.child.take(), window: None, adopted_pid: None }
    }
}

fn doing(step: Step) -> &'static str {
    match step {
        Step::Rendezvous => "discovering its boot server",
        Step::Copying => "receiving the image",
        Step::Verifying => "verifying the image",
        Step::Handoff => "handing off",
    }
}

/// This secondary's discovery service on loopback, its events to `tx` (and `ServerDown`
/// if it ends by itself).
fn start_server(
    id: &str,
    catalog: Catalog,
    algo: Algo,
    tx: mpsc::Sender<Msg>,
) -> Result<DiscoveryThread, String> {
    let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let cfg = DiscoveryConfig { algo, ..DiscoveryConfig::new(lo, lo, catalog) };
    let events = tx.clone();
    let sink: EventSink<DiscoveryEvent> = Arc::new(move |e| {
        let _ = events.send(Msg::Server(e));
    });
    DiscoveryThread::start(
        format!("netboot-srv-{id}"),
        "start the boot server on 127.0.0.1",
        cfg,
        sink,
        move |r| {
            let why = r.err().unwrap_or_else(|| "it ended".to_string());
            let _ = tx.send(Msg::ServerDown(why));
        },
    )
    .map_err(|e| e.to_string())
}

/// The monarch's own DISCOVER for `mac`: the server's OFFER (after it hashed the image) and
/// the address it was asked from (its `offered` event is not the agent's).
fn prime(server: SocketAddr, mac: Mac, wait: Duration) -> Result<(SocketAddr, Offer), String> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot bind a UDP socket on 127.0.0.1: {e}"))?;
    let from = sock.local_addr().map_err(|e| format!("cannot read a UDP socket's address: {e}"))?;
    let xid = std::process::id().rotate_left(16) ^ {
        let o = mac.octets();
        u32::from_le_bytes([o[2], o[3], o[4], o[5]])
    };
    let discover = Message::Discover(Discover { xid, mac, current: None }).encode();
    let start = Instant::now();
    let mut buf = vec![0u8; monarch_proto::netboot::wire::MAX_MESSAGE + 1];
    while start.elapsed() < wait {
        sock.send_to(&discover, server)
            .map_err(|e| format!("cannot send to the boot server {server}: {e}"))?;
        let resend = Instant::now() + Duration::from_secs(1);
        while let Some(left) = resend.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            let _ = sock.set_read_timeout(Some(left));
            let (n, peer) = match sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(_) => {
                    // An ICMP error from an earlier send (nobody there yet): wait, do not spin.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if peer != server {
                continue;
            }
            if let Ok(Message::Offer(o)) = Message::decode(&buf[..n])
                && o.xid == xid
            {
                return Ok((from, o));
            }
        }
    }
    Err(format!(
        "the boot server at {server} did not answer the monarch's own DISCOVER within {} (timeouts.rendezvous); \
         it may still be hashing a very large image: raise timeouts.rendezvous",
        humantime::format_duration(wait)
    ))
}

/// Injected fault (`fault = { corrupt_attempts = 1 }`): flip one byte of the served image
/// after the server hashed it, keeping size and mtime so the server's digest cache still
/// offers the old digest — as a disk error under a running server would. The agent's
/// verification must refuse the transfer.
fn corrupt_keeping_mtime(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let err = |e: std::io::Error| format!("fault injection on {}: {e}", path.display());
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(err)?;
    let meta = f.metadata().map_err(err)?;
    let at = meta.len() / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).map_err(err)?;
    f.write_all_at(&[b[0] ^ 0x5a], at).map_err(err)?;
    f.set_modified(meta.modified().map_err(err)?).map_err(err)
}

/// Send the agent's output lines to the stage, then `Eof`.
fn read_lines(out: ChildStdout, tx: &mpsc::Sender<Msg>) {
    let mut r = BufReader::new(out);
    loop {
        let mut line = Vec::new();
        match (&mut r).take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                if tx.send(Msg::Line(text.trim_end().to_string())).is_err() {
                    // Nobody listens any more (the stage is over): drain so the image never
                    // blocks on a full pipe.
                    let _ = std::io::copy(&mut r, &mut std::io::sink());
                    return;
                }
            }
        }
    }
    let _ = tx.send(Msg::Eof);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_flips_one_byte_and_keeps_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![7u8; 1000]).unwrap();
        let before = std::fs::metadata(&p).unwrap();
        corrupt_keeping_mtime(&p).unwrap();
        let after = std::fs::metadata(&p).unwrap();
        assert_eq!((before.len(), before.modified().unwrap()), (after.len(), after.modified().unwrap()));
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.iter().filter(|x| **x != 7).count(), 1);
        assert_eq!(b[500], 7 ^ 0x5a);
    }

    #[test]
    fn the_server_offers_what_was_put_in_its_root_and_stops_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.img"), b"hello netboot").unwrap();
        let mac = Mac::new([0x52, 0x54, 0, 1, 2, 3]);
        let m = Machine { image: Some("a.img".into()), ..Machine::default() };
        let catalog = Catalog::from_parts(dir.path(), None, [(mac, m)]).unwrap();
        let (tx, rx) = mpsc::channel();
        let server = start_server("t", catalog, Algo::Crc32c, tx).unwrap();
        let (from, offer) = prime(server.udp(), mac, Duration::from_secs(20)).unwrap();
        assert_eq!((offer.size, offer.algo), (13, Algo::Crc32c));
        assert_eq!(offer.digest, Algo::Crc32c.digest(b"hello netboot"));
        let offered = rx.iter().find_map(|m| match m {
            Msg::Server(DiscoveryEvent::Offered { peer, .. }) => Some(peer),
            _ => None,
        });
        assert_eq!(offered, Some(from));
        // A MAC the catalog does not know gets no answer.
        let e =
            prime(server.udp(), Mac::new([0x52, 0x54, 0, 9, 9, 9]), Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("did not answer"), "{e}");
        let udp = server.udp();
        drop(server);
        // The port is free again: the service is gone.
        UdpSocket::bind(udp).unwrap();
    }

    #[test]
    fn log_tail_is_the_last_line_with_control_characters_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, "first\nmonarch: netboot agent: digest \u{1b}[31mmismatch\n\n").unwrap();
        assert_eq!(log_tail(&p).unwrap(), "monarch: netboot agent: digest \\u{1b}[31mmismatch");
    }
}
