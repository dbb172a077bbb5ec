//! The monarch's side of one secondary: configure its window, release it (start its agent),
//! and drive [`monarch_proto::primary::Primary`] with real registers, copies and doorbells.

use crate::events::{EventKind, ProcessorSummary, Timings};
use crate::image::{self, Image};
use crate::topology::{Launch, PortPath, Secondary};
use command_fds::{CommandFdExt, FdMapping};
use monarch_drivers::{Poll, Window};
use monarch_proto::layout;
use monarch_proto::msg::{self, Command, Mode, WindowConfig};
use monarch_proto::primary::{Failure, Phase, Primary, PrimaryAction, PrimaryInput, PrimarySpec, Timeouts};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

/// Descriptor number a memfd window gets in the agent (and, after exec, in its image).
const MEMFD_CHILD_FD: i32 = 3;

/// Longest single sleep in the wait loop: how often a launched agent's liveness is checked.
const SLICE: Duration = Duration::from_millis(50);

/// What the stage needs from the run.
pub struct StageCtx<'a> {
    /// Start of the run (event timestamps).
    pub clock: Instant,
    /// Where events go.
    pub emit: &'a (dyn Fn(EventKind) + Sync),
    /// The `monarch` binary to start agents with.
    pub agent_exe: &'a Path,
    /// Time spent queued behind a switch before this stage started.
    pub queued: Duration,
}

/// A staged secondary: its summary, and what keeps running afterwards.
pub struct Staged {
    /// The summary line.
    pub summary: ProcessorSummary,
    /// The launched process (now the running image), if any.
    pub child: Option<Child>,
    /// The window (to send SHUTDOWN at the end of an emulated run).
    pub window: Option<Window>,
    /// The agent's log file.
    pub log: Option<PathBuf>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Stage one secondary from retrieval to its final state.
pub fn stage(sec: &Secondary, ctx: &StageCtx<'_>) -> Staged {
    let mut st = Stage::new(sec, ctx);
    let result = st.run();
    st.finish(result)
}

struct Stage<'a, 'c> {
    sec: &'a Secondary,
    ctx: &'a StageCtx<'c>,
    t0: Instant,
    timings: Timings,
    attempts: u32,
    bytes: u64,
    image: Option<Image>,
    child: Option<Child>,
    window: Option<Window>,
    log: Option<PathBuf>,
    report: Option<String>,
    cmd_seq: u32,
}

impl<'a, 'c> Stage<'a, 'c> {
    fn new(sec: &'a Secondary, ctx: &'a StageCtx<'c>) -> Self {
        Stage {
            sec,
            ctx,
            t0: Instant::now(),
            timings: Timings { queued: ms(ctx.queued), ..Timings::default() },
            attempts: 0,
            bytes: 0,
            image: None,
            child: None,
            window: None,
            log: None,
            report: None,
            cmd_seq: 0,
        }
    }

    fn emit(&self, kind: EventKind) {
        (self.ctx.emit)(kind);
    }

    fn phase(&self, phase: &str, attempt: u32) {
        self.emit(EventKind::Phase { id: self.sec.id.clone(), phase: phase.into(), attempt });
    }

    fn run(&mut self) -> Result<Phase, String> {
        let sec = self.sec;
        // 1. Retrieve the image; size and retrieved checksum.
        let t = Instant::now();
        let image = image::retrieve(&sec.image, sec.algo).map_err(|e| e.to_string())?;
        self.timings.retrieve = ms(t.elapsed());
        self.emit(EventKind::Retrieved {
            id: sec.id.clone(),
            image: sec.image.to_string(),
            bytes: image.bytes.len() as u64,
            algo: sec.algo.name().into(),
            checksum: image.digest.to_hex(sec.algo),
        });
        let image_size = image.bytes.len() as u64;
        if image_size > sec.window.data_size {
            return Err(format!(
                "the image is {image_size} bytes but the window's data area is {} bytes; raise window.size",
                sec.window.data_size
            ));
        }
        // 2. Configure the window (size limit, load offset) before releasing the secondary.
        self.phase("configuring", 0);
        let t = Instant::now();
        if let Some(dir) = sec.window.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let window = if sec.window.memfd {
            Window::create_memfd(&format!("monarch-window:{}", sec.id), sec.window.data_size)
        } else {
            Window::create(&sec.window.path, sec.window.data_size)
        }
        .map_err(|e| e.to_string())?;
        let cfg = WindowConfig { image_size, load_offset: 0, algo: sec.algo, mode: sec.mode, epoch: 0 };
        window.apply(&msg::encode_config(sec.window.data_size, &cfg));
        self.timings.configure = ms(t.elapsed());
        self.window = Some(window);
        self.image = Some(image);
        // 3. Release from reset: start the agent (process) or let the external one see RELEASE.
        let released = Instant::now();
        if sec.launch == Launch::Process {
            self.phase("launching", 0);
            self.launch()?;
        }
        self.handshake(released)
    }

    fn launch(&mut self) -> Result<(), String> {
        let sec = self.sec;
        let log = sec.window.path.with_extension("log");
        let err =
            File::create(&log).map_err(|e| format!("cannot create agent log {}: {e}", log.display()))?;
        let mut cmd = Process::new(self.ctx.agent_exe);
        cmd.arg("agent").arg("--window");
        if sec.window.memfd {
            // The child inherits the window as descriptor 3 and opens it by its /proc path.
            let fd = self
                .window()
                .fd()
                .try_clone_to_owned()
                .map_err(|e| format!("cannot share the memfd window: {e}"))?;
            cmd.fd_mappings(vec![FdMapping { parent_fd: fd, child_fd: MEMFD_CHILD_FD }])
                .map_err(|e| format!("cannot hand the memfd window to the agent: {e}"))?;
            cmd.arg(format!("/proc/self/fd/{MEMFD_CHILD_FD}"));
        } else {
            cmd.arg(&sec.window.path);
        }
        let child = cmd
            .arg("--id")
            .arg(&sec.id)
            .arg("--handoff")
            .arg(sec.handoff.name())
            .arg("--timeout")
            .arg(humantime::format_duration(sec.timeouts.agent).to_string())
            .stdin(Stdio::null())
            .stdout(err.try_clone().map_err(|e| e.to_string())?)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start agent {}: {e}", self.ctx.agent_exe.display()))?;
        self.emit(EventKind::Launched { id: sec.id.clone(), pid: child.id() });
        self.child = Some(child);
        self.log = Some(log);
        Ok(())
    }

    fn window(&self) -> &Window {
        #[allow(clippy::expect_used)] // set in `run` before the handshake starts
        self.window.as_ref().expect("window configured before the handshake")
    }

    fn post(&mut self, cmd: &Command) {
        self.cmd_seq = msg::next_seq(self.cmd_seq);
        let w = msg::encode_command(self.cmd_seq, cmd);
        self.window().post(&w, layout::DB_TO_SECONDARY);
    }

    fn copy(&mut self, attempt: u32) -> Result<(), String> {
        let sec = self.sec;
        let t = Instant::now();
        let Some(image) = self.image.take() else { return Err("internal: image missing".into()) };
        let result = (|| {
            let w = self.window.as_ref().ok_or("internal: window missing")?;
            let half = image.bytes.len() / 2;
            w.write_data(0, &image.bytes[..half]).map_err(|e| e.to_string())?;
            if sec.faults.kill_agent_during_copy && attempt == 1 {
                // Injected fault: the agent dies mid-transfer.
                if let Some(c) = &mut self.child {
                    let _ = c.kill();
                }
            }
            w.write_data(half as u64, &image.bytes[half..]).map_err(|e| e.to_string())?;
            if attempt <= sec.faults.corrupt_attempts {
                // Injected fault: one flipped byte, as a bad link would leave it.
                let mut b = [0u8; 1];
                w.read_data(half as u64, &mut b).map_err(|e| e.to_string())?;
                w.write_data(half as u64, &[b[0] ^ 0x5a]).map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        })();
        let n = image.bytes.len() as u64;
        self.image = Some(image);
        result?;
        let took = t.elapsed();
        self.timings.copy += ms(took);
        self.bytes += n;
        self.attempts = attempt;
        self.emit(EventKind::Copied { id: sec.id.clone(), attempt, bytes: n, ms: ms(took) });
        Ok(())
    }

    fn agent_exit(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => Some(format!("agent process {} exited ({status})", c.id())),
            _ => None,
        }
    }

    fn handshake(&mut self, released: Instant) -> Result<Phase, String> {
        let sec = self.sec;
        let expected = self.image.as_ref().map(|i| i.digest).unwrap_or_default();
        let mut p = Primary::new(PrimarySpec {
            expected,
            max_attempts: sec.attempts,
            expect_running: sec.handoff == crate::topology::Handoff::Exec,
            timeouts: Timeouts {
                rendezvous: sec.timeouts.rendezvous,
                verify: sec.timeouts.verify,
                handoff: sec.timeouts.handoff,
            },
        });
        let clock = Instant::now();
        let mut status_seq = 0u32;
        let mut inputs = vec![PrimaryInput::Start];
        let mut phase_started = released;
        let mut last_phase = Phase::Idle;
        loop {
            // Feed what we have, carry out the actions.
            for input in std::mem::take(&mut inputs) {
                for action in p.handle(clock.elapsed(), input) {
                    match action {
                        PrimaryAction::Post(cmd) => self.post(&cmd),
                        PrimaryAction::Copy { attempt } => {
                            // Copy time is accounted on its own, not in the phase it interrupts.
                            self.account(last_phase, phase_started.elapsed());
                            last_phase = Phase::Copying;
                            self.phase("copying", attempt);
                            let copied = self.copy(attempt);
                            phase_started = Instant::now();
                            match copied {
                                Ok(()) => inputs.push(PrimaryInput::Copied { attempt }),
                                Err(e) => {
                                    self.post(&Command::Abort { reason: msg::AbortReason::Stopped });
                                    return Err(e);
                                }
                            }
                        }
                        PrimaryAction::Mismatch { attempt, written } => self.emit(EventKind::Mismatch {
                            id: sec.id.clone(),
                            attempt,
                            written: written.to_hex(sec.algo),
                            expected: expected.to_hex(sec.algo),
                        }),
                        PrimaryAction::Done(r) => {
                            self.account(last_phase, phase_started.elapsed());
                            return r.map_err(|f| self.explain(f));
                        }
                    }
                }
            }
            if !inputs.is_empty() {
                continue;
            }
            // Phase bookkeeping for timings and events.
            if p.phase() != last_phase {
                self.account(last_phase, phase_started.elapsed());
                if last_phase != Phase::Idle {
                    // Rendezvous counts from the release (agent start included).
                    phase_started = Instant::now();
                }
                last_phase = p.phase();
                match last_phase {
                    Phase::Rendezvous => self.phase("rendezvous", 0),
                    Phase::Verifying => self.phase("verifying", p.attempt()),
                    Phase::Handoff => self.phase("handoff", p.attempt()),
                    _ => {}
                }
            }
            // Wait for the secondary.
            let w = self.window();
            let seen = w.bell_value(layout::DB_TO_PRIMARY);
            match w.read_message(layout::ST_SEQ, status_seq, msg::decode_status) {
                Poll::Message(seq, st) => {
                    status_seq = seq;
                    if let msg::Status::Running { .. } = st {
                        self.report = Some(msg::decode_report(&|r| self.window().load(r)));
                    }
                    inputs.push(PrimaryInput::Status(st));
                }
                Poll::Garbage(seq, e) => {
                    status_seq = seq;
                    inputs.push(PrimaryInput::Garbage(e));
                }
                Poll::Nothing => {
                    if let Some(why) = self.agent_exit() {
                        inputs.push(PrimaryInput::PeerGone(why));
                        continue;
                    }
                    let left = p.deadline().map_or(SLICE, |d| d.saturating_sub(clock.elapsed()));
                    self.window().wait_bell(layout::DB_TO_PRIMARY, seen, left.min(SLICE));
                    inputs.push(PrimaryInput::Tick);
                }
            }
        }
    }

    fn account(&mut self, phase: Phase, took: Duration) {
        let t = ms(took);
        match phase {
            Phase::Rendezvous => self.timings.rendezvous += t,
            Phase::Verifying => self.timings.verify += t,
            Phase::Handoff => self.timings.handoff += t,
            _ => {}
        }
    }

    fn explain(&mut self, f: Failure) -> String {
        let mut s = f.to_string();
        if let Failure::ChecksumMismatch { attempts, .. } = f {
            s = format!(
                "written checksum never matched the retrieved checksum in {attempts} attempt(s); aborted (raise `attempts` or check the link)"
            );
        }
        if let Some(why) = self.agent_exit() {
            s.push_str(&format!("; {why}"));
        }
        if let Some(tail) = self.log.as_deref().and_then(log_tail) {
            s.push_str(&format!("; agent said: {tail}"));
        }
        s
    }

    fn finish(mut self, result: Result<Phase, String>) -> Staged {
        let sec = self.sec;
        let (state, error) = match &result {
            Ok(Phase::Running) => ("running", None),
            Ok(_) => ("released", None),
            Err(e) => ("failed", Some(e.clone())),
        };
        if result.is_err() {
            // A failed secondary is stopped, and never left holding a half-done handshake.
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.timings.total = ms(self.t0.elapsed());
        let image_bytes = self.image.as_ref().map_or(0, |i| i.bytes.len() as u64);
        self.emit(EventKind::Done {
            id: sec.id.clone(),
            state: state.into(),
            attempts: self.attempts,
            bytes: self.bytes,
            ms: self.timings.total,
            report: self.report.clone(),
            error: error.clone(),
        });
        let (path, switch) = match &sec.path {
            PortPath::Direct => ("direct", None),
            PortPath::Switch(s) => ("switch", Some(s.clone())),
        };
        Staged {
            summary: ProcessorSummary {
                id: sec.id.clone(),
                role: "secondary".into(),
                state: state.into(),
                path: Some(path.into()),
                switch,
                attempts: self.attempts,
                bytes: self.bytes,
                image_bytes,
                mode: Some(match sec.mode {
                    Mode::Push => "push".into(),
                    Mode::Pull => "pull".into(),
                }),
                algo: Some(sec.algo.name().into()),
                checksum: self.image.as_ref().map(|i| i.digest.to_hex(sec.algo)),
                timings_ms: self.timings.clone(),
                report: self.report.clone(),
                error,
                required: sec.required,
            },
            child: self.child.take(),
            window: self.window.take(),
            log: self.log.take(),
        }
    }
}

/// The last non-empty line of an agent log, trimmed (for error messages).
fn log_tail(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(line.trim().chars().take(300).collect())
}
