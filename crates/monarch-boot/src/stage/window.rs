//! The monarch's side of one secondary with a window: configure its window, release it
//! (start its agent), and drive [`monarch_proto::window::primary::Primary`] with real registers,
//! copies and doorbells.
use super::context::{StageCtx, Staged, announce_done, log_tail, ms, port_path, retrieved};
use super::launch;
use super::takeover::{config_writes, raise_epoch};
use crate::events::{EventKind, ProcessorSummary, Timings};
use crate::handoff::Handoff;
use crate::image::{self, Image};
use crate::topology::{ImageSource, Launch, Secondary};
use monarch_drivers::{Poll, Window};
use monarch_proto::text::{MAX_CHARS, printable};
use monarch_proto::window::msg::{self, Command, Mode, WindowConfig};
use monarch_proto::window::primary::{
    Failure, Phase, Primary, PrimaryAction, PrimaryInput, PrimarySpec, Timeouts,
};
use monarch_proto::window::stream;
use monarch_proto::window::{layout, life};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// Longest single sleep in the wait loop: how often a launched agent's liveness is checked.
const SLICE: Duration = Duration::from_millis(50);

/// How long a new monarch waits for a status word caught busy to settle.
const SETTLE: Duration = Duration::from_millis(500);

/// Stage one secondary that has a window, from retrieval to its final state.
pub(crate) fn stage(sec: &Secondary, ctx: &StageCtx<'_>) -> Staged {
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
    /// QEMU's own messages (launch = "qemu").
    qemu_log: Option<PathBuf>,
    report: Option<String>,
    geometry: Option<stream::Geometry>,
    repairs: u64,
    bytes_resent: u64,
    /// The agent is not our child (started by a monarch that was deposed): its liveness is
    /// the window's agent lock.
    foreign_agent: bool,
    /// What the takeover found, for the summary.
    resumed: Option<String>,
    /// The running image's pid, from its RUNNING status, when it is not our child.
    adopted_pid: Option<u32>,
    /// We found we are no longer monarch: the secondary is another's now.
    deposed: bool,
    /// Stopped by SIGINT/SIGTERM ([`crate::interrupt`]) before it was released.
    interrupted: bool,
    /// A command was posted after that (the stopping ABORT, fenced by the secondary).
    late_command: bool,
    /// The secondary said HANDING_OFF (its agent may now be gone: it became the image).
    handing_off: bool,
    /// Wanted dependencies it was released without (degraded).
    without: Vec<String>,
}

/// The producer side of one push attempt.
struct Streamer {
    attempt: u32,
    /// Next chunk (0-based) to write.
    next: u64,
    /// Last `stream.nak_seq` seen.
    nak_seq: u64,
    /// Value of `stream.repaired` (monotonic over the handshake).
    repairs: u64,
    /// Times each chunk was refused in this attempt.
    naks: std::collections::HashMap<u64, u32>,
    started: Instant,
    /// The copy's end was reported.
    reported: bool,
}

impl Streamer {
    fn new(attempt: u32, repairs: u64, w: &Window) -> Streamer {
        Streamer {
            attempt,
            next: 0,
            nak_seq: w.load(layout::STREAM_NAK_SEQ),
            repairs,
            naks: std::collections::HashMap::new(),
            started: Instant::now(),
            reported: false,
        }
    }
}

/// A copy into the window failed: a window its secondary shrank says so (the kernel's own
/// copy into the gap fails with EFAULT, "Bad address", which names nothing).
fn copy_error(w: &Window, e: monarch_drivers::WindowError) -> String {
    w.check_intact().err().unwrap_or(e).to_string()
}

/// Injected fault: one flipped byte, as a bad link would leave it.
fn flip_byte(w: &Window, offset: u64) -> Result<(), String> {
    let mut b = [0u8; 1];
    w.read_data(offset, &mut b).map_err(|e| e.to_string())?;
    w.write_data(offset, &[b[0] ^ 0x5a]).map_err(|e| e.to_string())
}

impl<'a, 'c> Stage<'a, 'c> {
    fn new(sec: &'a Secondary, ctx: &'a StageCtx<'c>) -> Self {
        Stage {
            sec,
            ctx,
            t0: Instant::now(),
            timings: Timings::default(),
            attempts: 0,
            bytes: 0,
            image: None,
            child: None,
            window: None,
            log: None,
            qemu_log: None,
            report: None,
            geometry: None,
            repairs: 0,
            bytes_resent: 0,
            foreign_agent: false,
            resumed: None,
            adopted_pid: None,
            deposed: false,
            interrupted: false,
            late_command: false,
            handing_off: false,
            without: Vec::new(),
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
        // 1. Retrieve the image: size, retrieved checksum, and (push) the chunk manifest.
        let t = Instant::now();
        let image_size = image::source_len(&sec.image).map_err(|e| e.to_string())?;
        let ring = match sec.mode {
            Mode::Pull => None,
            Mode::Push => Some(stream::layout(image_size, sec.window.data_size, sec.chunk_size).ok_or_else(|| {
                format!(
                    "the window's data area ({} bytes) cannot hold the manifest and one chunk of a {image_size}-byte image; raise window.size",
                    sec.window.data_size
                )
            })?),
        };
        let chunk_size = ring.map_or(0, |(c, _, _)| c);
        let mut image = image::retrieve(&sec.image, sec.algo, chunk_size).map_err(|e| e.to_string())?;
        self.timings.retrieve = ms(t.elapsed());
        self.emit(retrieved(sec, &image));
        if sec.handoff == Handoff::Kexec
            && let Some(bytes) = image.data.contiguous()
        {
            // Refuse a bundle the agent could never boot before a VM is even started.
            crate::bundle::parse(&bytes)
                .map_err(|e| format!("image {} cannot be booted by kexec: {e}", sec.image))?;
        }
        // The monarch's own signature check, so the operator hears early; the secondary
        // checks again over the bytes it receives, with its own keys.
        let signature = check_signature(sec, &image)?;
        if sec.faults.tamper_image {
            image = image.tampered().map_err(|e| e.to_string())?;
        }
        if sec.mode == Mode::Pull && image.len > sec.window.data_size {
            return Err(format!(
                "the image is {} bytes but the window's data area is {} bytes; raise window.size (pull mode holds the whole image)",
                image.len, sec.window.data_size
            ));
        }
        // A main-domain secondary stays off until main power is on.
        self.ctx
            .gate
            .power(sec, &mut || self.emit(EventKind::PoweredOff { id: sec.id.clone() }), &|| {
                self.stop_reason()
            })
            .map_err(|e| e.to_string())?;
        // 2. Configure the window (size limit, load offset, ring) before releasing the secondary.
        self.phase("configuring", 0);
        let t = Instant::now();
        if let Some(dir) = sec.window.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        if self.ctx.authority.resume {
            let digest = image.digest;
            self.image = Some(image);
            if let Some(found) = self.attach(digest) {
                return found;
            }
            image = self.image.take().ok_or("internal: image missing")?;
        }
        self.mandate()?;
        let window = launch::create_window(sec, self.ctx.authority.shared).map_err(|e| e.to_string())?;
        self.claim_window(&window)?;
        if self.ctx.again {
            window.apply(&life::reset_secondary_writes());
        }
        let mut window = window;
        if let Some(bell) = launch::doorbell(&sec.launch) {
            window.set_doorbell(bell);
        }
        let (load_offset, ring_size) = ring.map_or((0, 0), |(_, off, size)| (off, size));
        let cfg = WindowConfig {
            image_size: image.len,
            load_offset,
            algo: sec.algo,
            mode: sec.mode,
            epoch: self.ctx.authority.epoch,
            chunk_size,
            ring_size,
        };
        // cfg.epoch is ours by CAS already; rewriting it could undo a newer claim.
        window.apply(&config_writes(sec.window.data_size, &cfg));
        // The signature travels with the image, in the register page (cleared when unsigned,
        // so a record an earlier run left never lingers).
        window.apply(
            &msg::encode_signature(signature.as_deref())
                .ok_or("internal: a signature record over 256 bytes")?,
        );
        // Supervision: how often the running image beats (0: not supervised), and the hold
        // word, set while the dependencies are awaited.
        let beat_ms = if self.ctx.gate.supervised {
            u32::try_from(sec.life.heartbeat.as_millis()).unwrap_or(u32::MAX).max(1)
        } else {
            0
        };
        window.apply(&life::encode_life_config(beat_ms, sec.life.has_dependencies(), &[]));
        self.timings.configure = ms(t.elapsed());
        self.geometry = Some(stream::Geometry::new(&cfg));
        self.window = Some(window);
        self.image = Some(image);
        // 3. Release from reset: start the agent (process or VM) or let the external one see
        // RELEASE, once the dependencies let it go.
        self.launch()?;
        self.wait_for_dependencies()?;
        self.take_link();
        let released = Instant::now();
        self.handshake(released, None)
    }

    /// Behind a switch: wait for this secondary's turn on the switch's link (the
    /// secondaries before it have been verified, or gave up) before the handshake's copy.
    fn take_link(&mut self) {
        if let Some(turn) = self.ctx.link {
            self.timings.queued += ms(turn.take());
        }
    }

    /// Behind a switch: verified (or finished), so the link goes to the next secondary.
    fn release_link(&self) {
        if let Some(turn) = self.ctx.link {
            turn.release();
        }
    }

    /// Take over this secondary's window from a previous monarch: leave a running image
    /// alone, adopt a verified attempt (OK in our epoch, no second copy) or one handing
    /// off, and restart anything else from RELEASE (our epoch makes the agent drop its
    /// attempt) — launching a new agent only if none holds the window. `None`: the previous
    /// monarch never configured it; stage it from scratch.
    fn attach(&mut self, expected: monarch_proto::Digest) -> Option<Result<Phase, String>> {
        let sec = self.sec;
        let w = Window::open(&sec.window.path).ok()?;
        msg::decode_header(&|r| w.load(r), w.data_size()).ok()?;
        // The last status, read until it is stable: a status word caught busy (the agent, or
        // its image, posting at this very moment) must not pass for "nothing posted", which
        // would restart — and release a second time — a secondary that is handing off or
        // running. A word that never settles is garbage: start over.
        let settle = Instant::now();
        let found = loop {
            match w.read_message(layout::ST_SEQ, 0, msg::decode_status) {
                Poll::Message(seq, st) => break Some((seq, st)),
                Poll::Nothing if w.load32(layout::ST_SEQ) != 0 && settle.elapsed() < SETTLE => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                _ => break None,
            }
        };
        let status_seq = found.as_ref().map_or(0, |(s, _)| *s);
        // An agent the previous monarch started writes where ours would: a failure quotes it.
        self.log = matches!(sec.launch, Launch::Process { .. }).then(|| launch::agent_log(sec));
        let spec = self.primary_spec(expected);
        let decision =
            monarch_proto::window::primary::resume(spec, found.as_ref().map(|(_, s)| s), Duration::ZERO);
        let cfg = msg::decode_config(&|r| w.load(r), w.data_size()).ok();
        self.geometry = cfg.map(|c| stream::Geometry::new(&c));
        self.window = Some(w);
        let released = Instant::now();
        Some(match decision {
            monarch_proto::window::primary::Resume::LeaveRunning => {
                self.resumed = Some("left running".into());
                if let Some((_, msg::Status::Running { pid })) = &found {
                    self.adopted_pid = u32::try_from(*pid).ok().filter(|p| *p > 1);
                }
                self.report = Some(printable(&msg::decode_report(&|r| self.window().load(r)), MAX_CHARS));
                self.phase("adopted", 0);
                Ok(Phase::Running)
            }
            monarch_proto::window::primary::Resume::Adopt(p, actions) => {
                self.resumed = Some(format!("adopted verified attempt {} (not staged again)", p.attempt()));
                self.attempts = p.attempt();
                self.foreign_agent = true;
                // Found handing off: the agent's lock went with its exec of the image, which
                // has not said RUNNING yet. A free lock is that, not a dead agent.
                self.handing_off = matches!(found, Some((_, msg::Status::HandingOff { .. })));
                self.phase("adopted", p.attempt());
                self.handshake(released, Some((p, actions, status_seq)))
            }
            monarch_proto::window::primary::Resume::Restart => {
                let r = (|| {
                    self.mandate()?;
                    // Our config, stamped with our epoch: an agent started now ignores any
                    // older monarch from its first command on.
                    let mut c = cfg.ok_or("the previous monarch left an invalid config")?;
                    c.epoch = self.ctx.authority.epoch;
                    if let Some(w) = self.window.take() {
                        let claimed = self.claim_window(&w);
                        self.window = Some(w);
                        claimed?;
                    }
                    let w = self.window();
                    // cfg.epoch is ours by CAS already: a plain store could lower a newer claim.
                    w.apply(&config_writes(w.data_size(), &c));
                    // Whether an agent holds the window's lock now (then we watch it by it).
                    let probe = || -> Result<bool, String> {
                        let free = w.try_lock().map_err(|e| format!("cannot probe the agent lock: {e}"))?;
                        if free {
                            w.unlock();
                        }
                        Ok(!free)
                    };
                    let (alive, locked) = launch::liveness(sec, &probe)?;
                    if alive {
                        self.resumed = Some("restarted in flight (its agent kept)".into());
                        self.foreign_agent = locked;
                    } else {
                        self.resumed = Some("restarted (new agent)".into());
                        self.launch()?;
                    }
                    Ok::<(), String>(())
                })();
                match r {
                    Ok(()) => {
                        self.take_link();
                        self.handshake(Instant::now(), None).map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e),
                }
            }
        })
    }

    /// Claim the window for our epoch: `cfg.epoch` only ever grows, by compare-and-swap, so
    /// a deposed monarch that wakes up between its check and its configuration cannot take
    /// a window back from a newer one (what it writes after losing the CAS is refused).
    fn claim_window(&mut self, w: &Window) -> Result<(), String> {
        if let Err(e) = raise_epoch(w, self.ctx.authority.epoch) {
            self.deposed = true;
            return Err(e.to_string());
        }
        self.mandate()
    }

    /// `Err(why)` once we may not go on: no longer monarch (remembered as deposed), or the
    /// operator asked the boot to stop (SIGINT/SIGTERM, remembered as interrupted). Checked
    /// before every step that acts on the secondary.
    fn mandate(&mut self) -> Result<(), String> {
        if let Some(sig) = crate::interrupt::received() {
            self.interrupted = true;
            return Err(format!("interrupted by {sig} before it was released"));
        }
        self.authority_check()
    }

    /// The election's half of [`Self::mandate`].
    fn authority_check(&mut self) -> Result<(), String> {
        (self.ctx.authority.check)().inspect_err(|_| self.deposed = true)
    }

    /// Whether we were deposed (known already, or found now).
    fn is_deposed(&mut self) -> bool {
        self.deposed || self.authority_check().is_err()
    }

    fn primary_spec(&self, expected: monarch_proto::Digest) -> PrimarySpec {
        let sec = self.sec;
        PrimarySpec {
            expected,
            max_attempts: sec.attempts,
            expect_running: sec.handoff != Handoff::None,
            stream: sec.mode == Mode::Push,
            timeouts: Timeouts {
                rendezvous: sec.timeouts.rendezvous,
                verify: sec.timeouts.verify,
                handoff: sec.timeouts.handoff,
            },
        }
    }

    /// Why the stage must stop waiting, if it must: the operator's stop, a lost election.
    fn stop_reason(&self) -> Option<String> {
        if let Some(sig) = crate::interrupt::received() {
            return Some(format!("interrupted by {sig} before it was released"));
        }
        (self.ctx.authority.check)().err()
    }

    /// Hold the secondary at its rendezvous (the hold word is set: its agent keeps waiting)
    /// until its dependencies let it go; then tell it which wanted ones it goes on without.
    fn wait_for_dependencies(&mut self) -> Result<(), String> {
        let sec = self.sec;
        if sec.life.has_dependencies() {
            let passed = self.ctx.gate.dependencies(
                sec,
                &mut |awaited| {
                    self.emit(EventKind::Held { id: sec.id.clone(), waiting_for: awaited.to_vec() })
                },
                &|| self.stop_reason(),
            );
            if passed.is_err() {
                self.interrupted = crate::interrupt::received().is_some();
            }
            let passed = passed.map_err(|e| e.to_string())?;
            let w = self.window();
            w.apply(&life::encode_missing(&passed.without));
            w.store(layout::LIFE_HOLD, 0);
            self.without = passed.without;
        }
        self.emit(EventKind::Released { id: sec.id.clone(), without: self.without.clone() });
        Ok(())
    }

    /// Release the secondary: start its agent (or its VM) as its launch mode says; an
    /// external agent sees RELEASE by itself.
    fn launch(&mut self) -> Result<(), String> {
        let sec = self.sec;
        if !launch::monarch_starts_it(&sec.launch) {
            return Ok(());
        }
        self.phase("launching", 0);
        self.mandate()?;
        let Some(started) = launch::start(sec, self.ctx, self.window())? else { return Ok(()) };
        self.emit(EventKind::Launched {
            id: sec.id.clone(),
            pid: started.child.id(),
            console: started.console.map(|c| c.display().to_string()),
        });
        self.child = Some(started.child);
        self.log = Some(started.log);
        self.qemu_log = started.qemu_log;
        Ok(())
    }

    fn window(&self) -> &Window {
        #[allow(clippy::expect_used)] // set in `run` before the handshake starts
        self.window.as_ref().expect("window configured before the handshake")
    }

    /// Post a command in our block, stamped with our epoch — if we are still monarch.
    fn post(&mut self, cmd: &Command) -> Result<(), String> {
        self.mandate()?;
        self.post_unchecked(cmd);
        Ok(())
    }

    fn post_unchecked(&mut self, cmd: &Command) {
        let a = self.ctx.authority;
        // Continue from what our block holds: the same candidate may be monarch again (a
        // later term, on etcd) and the agent has seen its earlier numbers (regression: the
        // new term's RELEASE reused seq 1 and the agent never saw it).
        let seq = msg::next_seq(self.window().load32(layout::cmd(a.block).seq) & !msg::SEQ_BUSY);
        let w = msg::encode_command(a.block, seq, a.epoch, cmd);
        self.window().post(&w, layout::DB_TO_SECONDARY);
    }

    /// A stage that stops aborts its secondary. One that stops because it was deposed posts
    /// its ABORT (with its old epoch) only into a window a newer monarch has already claimed
    /// (`cfg.epoch` above ours, which never goes down again): the secondary then ignores it
    /// and counts it in `status.fenced`, a parting command that shows the fence at work and
    /// can do no harm (docs/window-protocol.md, fencing). A window not yet claimed is left
    /// alone: its new monarch will be there in a moment.
    fn abort(&mut self, reason: msg::AbortReason) {
        let cmd = Command::Abort { reason };
        if self.is_deposed() {
            let ours = u64::from(self.ctx.authority.epoch);
            if self.window.as_ref().is_some_and(|w| w.load(layout::CFG_EPOCH) > ours) {
                self.post_unchecked(&cmd);
                self.late_command = true;
            }
        } else {
            self.post_unchecked(&cmd);
        }
    }

    /// Pull mode: put the whole image into the window before STAGED.
    fn copy_whole(&mut self, attempt: u32) -> Result<(), String> {
        let sec = self.sec;
        self.mandate()?;
        let t = Instant::now();
        let (w, image) = self.parts()?;
        let len = image.len;
        let half = len / 2;
        image.copy_into(w, 0, 0, half).map_err(|e| copy_error(w, e))?;
        self.bytes += half;
        if sec.faults.kill_agent_during_copy && attempt == 1 {
            self.kill_agent();
        }
        let (w, image) = self.parts()?;
        image.copy_into(w, half, half, len - half).map_err(|e| copy_error(w, e))?;
        if attempt <= sec.faults.corrupt_attempts {
            flip_byte(w, half)?;
        }
        self.bytes += len - half;
        self.copied(attempt, len, t.elapsed());
        Ok(())
    }

    fn parts(&self) -> Result<(&Window, &Image), String> {
        match (&self.window, &self.image) {
            (Some(w), Some(i)) => Ok((w, i)),
            _ => Err("internal: window or image missing".into()),
        }
    }

    fn kill_agent(&mut self) {
        // Injected fault: the agent dies mid-transfer.
        if let Some(c) = &mut self.child {
            let _ = c.kill();
        }
    }

    /// An attempt's copy is complete (its bytes were counted as they went).
    fn copied(&mut self, attempt: u32, bytes: u64, took: Duration) {
        self.timings.copy += ms(took);
        self.emit(EventKind::Copied { id: self.sec.id.clone(), attempt, bytes, ms: ms(took) });
    }

    /// Push mode: the manifest goes in before STAGED (the secondary reads it then). For the
    /// attempts with an injected whole-image fault, the manifest agrees with the corrupted
    /// chunk, so only the whole-image written checksum can catch it.
    fn write_manifest(&self, attempt: u32) -> Result<(), String> {
        let (w, image) = self.parts()?;
        let geo = self.geometry.ok_or("internal: no ring")?;
        let mut manifest = image.manifest.clone();
        if attempt <= self.sec.faults.corrupt_attempts {
            let k = geo.chunks() / 2;
            let (off, len) = geo.chunk(k);
            let mut buf = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
            image.read_at(off, &mut buf).map_err(|e| format!("cannot read the image: {e}"))?;
            let mid = buf.len() / 2;
            buf[mid] ^= 0x5a;
            if let Some(d) = manifest.get_mut(usize::try_from(k).map_err(|e| e.to_string())?) {
                *d = image.algo.digest(&buf);
            }
        }
        let mut bytes = Vec::with_capacity(manifest.len() * 32);
        for d in &manifest {
            bytes.extend_from_slice(&d.0);
        }
        w.write_data(0, &bytes).map_err(|e| e.to_string())
    }

    /// Push mode: copy as many chunks as the ring has room for, and re-send any chunk the
    /// secondary refused. Returns true when it did something.
    fn pump(&mut self, st: &mut Streamer) -> Result<bool, String> {
        let sec = self.sec;
        let geo = self.geometry.ok_or("internal: no ring")?;
        let mut did = false;
        // Repairs first: the secondary waits on them.
        let (w, _) = self.parts()?;
        let nak_seq = w.load(layout::STREAM_NAK_SEQ);
        if nak_seq != st.nak_seq {
            st.nak_seq = nak_seq;
            let nak = w.load(layout::STREAM_NAK);
            let consumed = w.load(layout::STREAM_CONSUMED);
            let chunk =
                nak.checked_sub(1).filter(|k| *k < st.next && geo.position(st.attempt, *k) >= consumed);
            let Some(k) = chunk else {
                return Err(format!(
                    "invalid register contents from the secondary: stream.nak = {nak} names no chunk in the ring (chunks {}..{} of attempt {})",
                    consumed.saturating_sub(geo.position(st.attempt, 0)),
                    st.next,
                    st.attempt
                ));
            };
            let n = st.naks.entry(k).or_insert(0);
            *n += 1;
            if *n > sec.attempts {
                return Err(format!(
                    "chunk {k} failed its digest {} times in attempt {}; aborted (check the link, or raise `attempts`)",
                    *n, st.attempt
                ));
            }
            let (off, len) = geo.chunk(k);
            let (w, image) = self.parts()?;
            // A refused chunk is the link's fault only if the image still has what it had:
            // a file image someone changed during the boot would be refused forever.
            if !image.chunk_unchanged(k, off, len).map_err(|e| format!("cannot read the image: {e}"))? {
                return Err(format!(
                    "image {} changed while it was being delivered: chunk {k} (bytes {off}..{}) no longer has the checksum it had when the image was retrieved, so the secondary rightly refused it (the link is not at fault); leave an image file alone during a boot (deliver a copy), then boot again",
                    sec.image,
                    off + len
                ));
            }
            image
                .copy_into(w, geo.slot_offset(geo.position(st.attempt, k)), off, len)
                .map_err(|e| copy_error(w, e))?;
            st.repairs += 1;
            w.store(layout::cmd(self.ctx.authority.block).repaired, st.repairs);
            w.ring(layout::DB_TO_SECONDARY);
            self.repairs += 1;
            self.bytes_resent += len;
            self.bytes += len;
            self.emit(EventKind::Repaired { id: sec.id.clone(), attempt: st.attempt, chunk: k, bytes: len });
            did = true;
        }
        // Then new chunks, as far as the ring has free slots, while we are still monarch.
        let chunks = geo.chunks();
        while st.next < chunks {
            self.mandate()?;
            let pos = geo.position(st.attempt, st.next);
            let (w, image) = self.parts()?;
            if !geo.may_produce(pos, w.load(layout::STREAM_CONSUMED)) {
                break;
            }
            let (off, len) = geo.chunk(st.next);
            let slot = geo.slot_offset(pos);
            image.copy_into(w, slot, off, len).map_err(|e| copy_error(w, e))?;
            let whole_fault = st.attempt <= sec.faults.corrupt_attempts && st.next == chunks / 2;
            let chunk_fault = st.attempt == 1 && sec.faults.corrupt_chunks.contains(&st.next);
            if whole_fault || chunk_fault {
                flip_byte(w, slot + len / 2)?;
            }
            w.store(layout::cmd(self.ctx.authority.block).produced, pos + 1);
            w.ring(layout::DB_TO_SECONDARY);
            st.next += 1;
            self.bytes += len;
            did = true;
            if sec.faults.kill_agent_during_copy && st.attempt == 1 && st.next == chunks.div_ceil(2) {
                self.kill_agent();
            }
        }
        if st.next == chunks && !st.reported {
            st.reported = true;
            let len = self.image.as_ref().map_or(0, |i| i.len);
            self.copied(st.attempt, len, st.started.elapsed());
        }
        Ok(did)
    }

    fn agent_exit(&mut self, phase: Phase, status_seq: u32) -> Option<String> {
        if self.foreign_agent && matches!(phase, Phase::Rendezvous | Phase::Verifying | Phase::Handoff) {
            // Not our child: its agent lock tells. The lock goes with the agent, or at the
            // exec of the image, which comes after our OK and the agent's HANDING_OFF: so a
            // free lock means a dead agent unless a status we have not read yet is waiting.
            let w = self.window.as_ref()?;
            if w.try_lock().ok()? {
                w.unlock();
                let seq = w.load32(layout::ST_SEQ) & !msg::SEQ_BUSY;
                let pending = seq != status_seq;
                // An agent the previous monarch started just before it died may not have
                // taken the lock yet (a takeover is that fast): one that never spoke is still
                // awaited, for as long as the rendezvous lasts.
                let starting = phase == Phase::Rendezvous && seq == 0;
                if pending || starting || self.handing_off {
                    return None;
                }
                return Some("the agent (started by the previous monarch) is gone".into());
            }
            return None;
        }
        let c = self.child.as_mut()?;
        let Ok(Some(status)) = c.try_wait() else { return None };
        let pid = c.id();
        if let Some(why) = launch::ended(self.sec, self.qemu_log.as_deref(), status, pid) {
            return Some(why);
        }
        if status.code() == Some(crate::agent::EXIT_BUSY) && self.ctx.authority.shared {
            // Another agent holds the window (one a deposed monarch started late): it is this
            // secondary's agent as well as ours would be; watch it by its lock.
            self.child = None;
            self.foreign_agent = true;
            return None;
        }
        Some(format!("agent process {pid} exited ({status})"))
    }

    /// Drive the handshake: from RELEASE, or (`adopted`) from a machine a takeover resumed,
    /// with its first actions and the status already seen.
    fn handshake(
        &mut self,
        released: Instant,
        adopted: Option<(Primary, Vec<PrimaryAction>, u32)>,
    ) -> Result<Phase, String> {
        let sec = self.sec;
        let expected = self.image.as_ref().map(|i| i.digest).unwrap_or_default();
        let epoch = self.ctx.authority.epoch;
        let clock = Instant::now();
        // Statuses already in the window answer someone else: start after them.
        let mut status_seq = self.window().load32(layout::ST_SEQ) & !msg::SEQ_BUSY;
        let (mut p, mut pending, mut inputs) = match adopted {
            Some((p, actions, seq)) => {
                status_seq = seq;
                (p, actions, Vec::new())
            }
            None => (Primary::new(self.primary_spec(expected)), Vec::new(), vec![PrimaryInput::Start]),
        };
        let mut phase_started = released;
        let mut last_phase = Phase::Idle;
        let mut streamer: Option<Streamer> = None;
        loop {
            // A window its secondary truncated is that secondary's failure (the access that
            // met it completed on private memory, see monarch_drivers' window guard).
            self.window().check_intact().map_err(|e| e.to_string())?;
            // Feed what we have, carry out the actions.
            let mut batches = Vec::new();
            if !pending.is_empty() {
                batches.push(std::mem::take(&mut pending));
            }
            for input in std::mem::take(&mut inputs) {
                batches.push(p.handle(clock.elapsed(), input));
            }
            for batch in batches {
                for action in batch {
                    let step = match action {
                        PrimaryAction::Post(cmd) => {
                            let manifest = match cmd {
                                Command::Staged { attempt } if sec.mode == Mode::Push => {
                                    self.write_manifest(attempt)
                                }
                                _ => Ok(()),
                            };
                            manifest.and_then(|()| self.post(&cmd))
                        }
                        PrimaryAction::Copy { attempt } => {
                            // Copy time is accounted on its own, not in the phase it interrupts.
                            self.account(last_phase, phase_started.elapsed());
                            last_phase = p.phase();
                            self.phase("copying", attempt);
                            self.attempts = attempt;
                            let r = match sec.mode {
                                Mode::Pull => self
                                    .copy_whole(attempt)
                                    .map(|()| inputs.push(PrimaryInput::Copied { attempt })),
                                Mode::Push => {
                                    streamer = Some(Streamer::new(attempt, self.repairs, self.window()));
                                    Ok(())
                                }
                            };
                            phase_started = Instant::now();
                            r
                        }
                        PrimaryAction::Mismatch { attempt, written } => {
                            self.emit(EventKind::Mismatch {
                                id: sec.id.clone(),
                                attempt,
                                written: written.to_hex(sec.algo),
                                expected: expected.to_hex(sec.algo),
                            });
                            Ok(())
                        }
                        PrimaryAction::Done(r) => {
                            self.account(last_phase, phase_started.elapsed());
                            return r.map_err(|f| self.explain(f));
                        }
                    };
                    if let Err(e) = step {
                        self.abort(msg::AbortReason::Stopped);
                        return Err(e);
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
                    Phase::Handoff => {
                        // The event first: the next member's "copying" must come after it.
                        self.phase("handoff", p.attempt());
                        self.release_link();
                    }
                    _ => {}
                }
            }
            // Stream (push), then look for the secondary's answer, then wait for its doorbell.
            let seen = self.window().bell_value(layout::DB_TO_PRIMARY);
            let mut busy = false;
            if let Some(st) = &mut streamer {
                let was_reported = st.reported;
                match self.pump(st) {
                    Ok(did) => busy = did,
                    Err(e) => {
                        let reason = if self.interrupted || self.is_deposed() {
                            msg::AbortReason::Stopped
                        } else {
                            msg::AbortReason::ProtocolError
                        };
                        self.abort(reason);
                        return Err(e);
                    }
                }
                if st.reported && !was_reported {
                    inputs.push(PrimaryInput::Copied { attempt: st.attempt });
                }
            }
            let w = self.window();
            let decode = |r: &dyn Fn(layout::Reg) -> u64| {
                msg::decode_status(r)
                    .map(|st| (u32::try_from(r(layout::ST_EPOCH) & 0xffff_ffff).unwrap_or(0), st))
            };
            match w.read_message(layout::ST_SEQ, status_seq, decode) {
                // READY, VERIFIED and FAILED answer the commands of one epoch: another's are
                // not ours (a secondary still finishing what a deposed monarch asked).
                // HANDING_OFF and RUNNING are facts, whoever said OK.
                Poll::Message(seq, (e, st))
                    if e != epoch
                        && !matches!(st, msg::Status::HandingOff { .. } | msg::Status::Running { .. }) =>
                {
                    status_seq = seq;
                }
                Poll::Message(seq, (_, st)) => {
                    status_seq = seq;
                    if matches!(st, msg::Status::HandingOff { .. }) {
                        self.handing_off = true;
                    }
                    if let msg::Status::Running { pid } = st {
                        if self.child.is_none() {
                            self.adopted_pid = u32::try_from(pid).ok().filter(|p| *p > 1);
                        }
                        self.report =
                            Some(printable(&msg::decode_report(&|r| self.window().load(r)), MAX_CHARS));
                    }
                    inputs.push(PrimaryInput::Status(st));
                }
                Poll::Garbage(seq, e) => {
                    status_seq = seq;
                    inputs.push(PrimaryInput::Garbage(e));
                }
                Poll::Nothing if busy || !inputs.is_empty() => {}
                Poll::Nothing => {
                    // Waiting is acting too: a monarch that lost its mandate stops here.
                    if let Err(e) = self.mandate() {
                        self.abort(msg::AbortReason::Stopped);
                        return Err(e);
                    }
                    if let Some(why) = self.agent_exit(p.phase(), status_seq) {
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
            // An image file that can no longer be read whole (cut short) has changed too.
            s = match self.image.as_ref().map(Image::unchanged) {
                Some(Ok(false) | Err(_)) => format!(
                    "image {} changed while it was being delivered: it no longer has the checksum it had when it was retrieved, so the written checksum could not match in {attempts} attempt(s) (the link is not at fault); leave an image file alone during a boot (deliver a copy), then boot again",
                    self.sec.image
                ),
                _ => format!(
                    "written checksum never matched the retrieved checksum in {attempts} attempt(s); aborted (raise `attempts` or check the link)"
                ),
            };
        }
        if let Some(why) = self.agent_exit(Phase::Failed, 0) {
            s.push_str(&format!("; {why}"));
        }
        if let Some(tail) = self.log.as_deref().and_then(log_tail) {
            let whose = launch::log_name(&self.sec.launch);
            s.push_str(&format!("; {whose} said: {tail}"));
        }
        s
    }

    fn finish(mut self, result: Result<Phase, String>) -> Staged {
        self.release_link();
        let sec = self.sec;
        let deposed = result.is_err() && self.is_deposed();
        let (state, error) = match &result {
            Ok(Phase::Running) => ("running", None),
            Ok(_) => ("released", None),
            // Not a failure of the secondary: it is the new monarch's to finish.
            Err(e) if deposed => ("handed over", Some(e.clone())),
            // Nor this: the operator stopped the boot.
            Err(e) if self.interrupted => ("interrupted", Some(e.clone())),
            Err(e) => ("failed", Some(e.clone())),
        };
        if deposed {
            // Deposed: the secondary and its agent are the new monarch's now; leave them be.
            self.child = None;
        } else if result.is_err() {
            // A failed secondary is stopped, and never left holding a half-done handshake.
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.timings.total = ms(self.t0.elapsed());
        let (path, switch) = port_path(sec);
        let summary = ProcessorSummary {
            id: sec.id.clone(),
            role: "secondary".into(),
            state: state.into(),
            path,
            switch,
            attempts: self.attempts,
            bytes: self.bytes,
            image_bytes: self.image.as_ref().map_or(0, |i| i.len),
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
            repairs: self.repairs,
            bytes_resent: self.bytes_resent,
            resumed: self.resumed.clone(),
            fenced: 0,
            late_command: self.late_command,
            without: self.without.clone(),
        };
        announce_done(self.ctx.emit, &summary);
        Staged {
            summary,
            child: self.child.take(),
            window: self.window.take(),
            adopted_pid: self.adopted_pid,
        }
    }
}

/// The monarch's check of `IMAGE.sig` over the retrieved bytes, with the secondary's trusted
/// keys: the `.sig` record to send with the image (`None`: unsigned, or signatures off).
fn check_signature(sec: &Secondary, image: &Image) -> Result<Option<Vec<u8>>, String> {
    use crate::signing::{self, SignaturePolicy};
    let ImageSource::File(path) = &sec.image else { return Ok(None) };
    if sec.signing.trust.policy == SignaturePolicy::Off {
        return Ok(None);
    }
    let held = match &image.data {
        image::ImageData::File { .. } => signing::digest_file(path).map_err(|e| e.to_string())?,
        data => monarch_proto::sign::ImageDigest::of(&data.contiguous().unwrap_or_default()),
    };
    signing::check_image(&sec.signing.trust, path, &held).map_err(|e| e.to_string())
}
