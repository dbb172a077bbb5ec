//! Several management processors (monarch election): election on a shared backplane, a monarch
//! that beats, serfs that usurp it when it stalls, and a boot that survives it.
//!
//! `monarch up` with two or more management processors in the topology is the *chassis*
//! ([`up`]): it creates the backplane (a register page in the run folder, the reference design's
//! central bus), starts one `monarch candidate` process per management processor, relays
//! their events and builds the summary. Each candidate ([`run_candidate`]) publishes its
//! BOOT_ID, slot and self-test result, waits for the others (rendezvous), and arbitrates
//! ([`monarch_proto::election::arbitrate`]). The winner claims epoch 1 with a
//! compare-and-swap and boots the chassis, beating on the backplane; the serfs watch the
//! beat. When it stalls they depose the monarch, arbitrate among the rest, and the new
//! winner claims the next epoch and takes the boot over from the windows (see
//! `stage::Authority`): running secondaries are left alone, verified ones are released
//! without a second copy, the rest start over under the new epoch. A monarch that was only
//! paused finds the claim gone when it wakes, stops acting, and says so; whatever it still
//! writes carries its old epoch, which every secondary ignores.

use crate::events::{ElectionSummary, Event, EventKind, FailoverSummary, ProcessorSummary, Summary};
use crate::plan::Plan;
use crate::run::{self, UpOptions};
use crate::stage::Authority;
use crate::topology::ElectionBackend;
use monarch_drivers::Window;
use monarch_proto::election::{self as el, Candidate, Health, Watchdog};
use monarch_proto::window::layout;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The backplane: one register page every candidate of the chassis maps.
pub struct Backplane {
    w: Window,
}

impl Backplane {
    /// Create it for `candidates` candidates (the chassis does, before starting them).
    pub fn create(path: &Path, candidates: usize, pinned: Option<usize>) -> Result<Backplane, String> {
        let w = Window::create(path, 0).map_err(|e| e.to_string())?;
        w.store(el::BP_VERSION, u64::from(el::BP_VERSION_VALUE));
        w.store(el::BP_CANDIDATES, candidates as u64);
        w.store(el::BP_PINNED, pinned.map_or(0, |p| p as u64 + 1));
        w.store(el::BP_MAGIC, el::BP_MAGIC_VALUE);
        Ok(Backplane { w })
    }

    /// Map the backplane the chassis created.
    pub fn open(path: &Path) -> Result<Backplane, String> {
        let w = Window::open(path).map_err(|e| e.to_string())?;
        if w.load(el::BP_MAGIC) != el::BP_MAGIC_VALUE || w.load32(el::BP_VERSION) != el::BP_VERSION_VALUE {
            return Err(format!(
                "{} is not a monarch backplane (version {}); it is made by `monarch up`",
                path.display(),
                el::BP_VERSION_VALUE
            ));
        }
        Ok(Backplane { w })
    }

    fn candidates(&self) -> usize {
        usize::try_from(self.w.load32(el::BP_CANDIDATES)).unwrap_or(0).min(el::MAX_CANDIDATES)
    }

    fn pinned(&self) -> Option<usize> {
        usize::try_from(self.w.load32(el::BP_PINNED)).ok()?.checked_sub(1)
    }

    fn publish(&self, c: &Candidate, pid: u32) {
        let r = el::candidate(c.index);
        self.w.store(r.boot_id, u64::from(c.boot_id));
        self.w.store(r.slot, u64::from(c.slot));
        self.w.store(r.pid, u64::from(pid));
        self.w.store(r.state, u64::from(c.health.code()));
    }

    /// Every candidate as published so far.
    pub fn table(&self) -> Vec<Candidate> {
        (0..self.candidates())
            .map(|k| {
                let r = el::candidate(k);
                Candidate {
                    index: k,
                    slot: self.w.load32(r.slot),
                    boot_id: self.w.load32(r.boot_id),
                    health: Health::from_code(self.w.load32(r.state)),
                }
            })
            .collect()
    }

    /// `(epoch, holder)` of the current monarch.
    pub fn claim(&self) -> Option<(u32, usize)> {
        el::decode_claim(self.w.load(el::BP_CLAIM))
    }

    fn try_claim(&self, from: u64, epoch: u32, me: usize) -> bool {
        self.w.compare_exchange(el::BP_CLAIM, from, el::claim_word(epoch, me)).is_ok()
    }

    /// Mark candidate `k` deposed; true if this call did it.
    fn depose(&self, k: usize) -> bool {
        let r = el::candidate(k).state;
        self.w
            .compare_exchange(r, u64::from(Health::Healthy.code()), u64::from(Health::Deposed.code()))
            .is_ok()
    }

    /// `(epoch, ok)` once a monarch finished the boot.
    pub fn done(&self) -> Option<(u32, bool)> {
        el::decode_done(self.w.load(el::BP_CLAIM))
    }
}

/// What a candidate process is told.
pub struct CandidateOptions {
    /// The plan (topology relocated to the chassis' run folder).
    pub plan: Plan,
    /// Its index among the management processors.
    pub index: usize,
    /// The backplane file (backplane elections).
    pub backplane: Option<PathBuf>,
    /// Names this boot in etcd (etcd elections): every candidate of one boot uses the same.
    pub session: String,
    /// The operator's choice of monarch (`--monarch`), over the topology's.
    pub pinned: Option<usize>,
    /// As for `monarch up`.
    pub up: UpOptions,
    /// The chassis' start, which event times count from.
    pub clock: Instant,
}

/// How a candidate ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CandidateOutcome {
    /// It was monarch and finished the boot (`ok`: every required secondary booted).
    Finished {
        /// The boot's result.
        ok: bool,
    },
    /// Another monarch finished the boot.
    Serf,
    /// It failed its self-test and stayed out.
    Deconfigured,
    /// It was monarch, was deposed (paused or cut off) and stood down.
    StoodDown,
    /// No candidate could become monarch, or the backplane failed.
    Failed(String),
}

/// The chassis' start time as Unix nanoseconds (for `--t0-unix-ns`).
pub fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// The `Instant` that was `t0` Unix nanoseconds (clamped to now).
pub fn instant_at(t0: u128) -> Instant {
    let ago = unix_nanos().saturating_sub(t0);
    let ago = Duration::from_nanos(u64::try_from(ago).unwrap_or(u64::MAX));
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

/// Run one candidate: publish, rendezvous, arbitrate, then serve as monarch or wait as serf
/// (and usurp a stalled monarch), on the topology's election backend. Events go to
/// `on_event`.
pub fn run_candidate(o: &CandidateOptions, on_event: &mut dyn FnMut(&Event)) -> CandidateOutcome {
    let clock = o.clock;
    let mut emit = |kind| on_event(&Event { t_ms: clock.elapsed().as_secs_f64() * 1e3, kind });
    if o.plan.topology.managers.get(o.index).is_none() {
        return CandidateOutcome::Failed(format!("no management processor with index {}", o.index));
    }
    let outcome = match &o.plan.topology.election.backend {
        ElectionBackend::Backplane => run_on_backplane(o, &mut emit),
        #[cfg(feature = "etcd")]
        ElectionBackend::Etcd(e) => crate::etcd_chassis::run_candidate(o, e, &mut emit),
        #[cfg(not(feature = "etcd"))]
        ElectionBackend::Etcd(_) => CandidateOutcome::Failed(
            "this monarch was built without etcd support: rebuild with `--features etcd`".into(),
        ),
    };
    if let CandidateOutcome::Failed(why) = &outcome {
        emit(EventKind::GaveUp { id: o.plan.topology.managers[o.index].id.clone(), why: why.clone() });
    }
    outcome
}

/// The candidate's self-test result, as an event; false when it failed (the reference design's
/// PDC_CONFIG deconfigures it: it never becomes monarch).
pub(crate) fn announce(o: &CandidateOptions, emit: &mut dyn FnMut(EventKind)) -> bool {
    let mgr = &o.plan.topology.managers[o.index];
    let mine = mgr.candidate(o.index);
    emit(EventKind::Candidate {
        id: mgr.id.clone(),
        slot: mine.slot,
        boot_id: mine.boot_id,
        health: mine.health.name().into(),
        pid: std::process::id(),
    });
    mine.health == Health::Healthy
}

fn run_on_backplane(o: &CandidateOptions, emit: &mut dyn FnMut(EventKind)) -> CandidateOutcome {
    let t = &o.plan.topology;
    let mgr = &t.managers[o.index];
    let Some(path) = &o.backplane else {
        return CandidateOutcome::Failed("a backplane election needs --backplane FILE".into());
    };
    let bp = match Backplane::open(path) {
        Ok(b) => b,
        Err(e) => return CandidateOutcome::Failed(e),
    };
    let me = o.index;
    let name = |k: usize| t.manager_name(k);
    let mine = mgr.candidate(me);
    bp.publish(&mine, std::process::id());
    if !announce(o, emit) {
        return CandidateOutcome::Deconfigured;
    }
    let e = &t.election;
    let tick = (e.heartbeat / 2).clamp(Duration::from_millis(1), Duration::from_millis(10));
    let start = Instant::now();
    // Silence counts only while this serf watched: a host stalled for everyone (the monarch's
    // heartbeat thread too) is not a dead monarch. Watching every `tick`, two readings two
    // heartbeats apart mean this serf itself was not running.
    let mut dog = Watchdog::new(e.timeout).with_max_gap(e.heartbeat.saturating_mul(2).max(tick * 4));
    let mut last_claim = None;
    // The claim word this serf has already waited a whole timeout on (its monarch deposed).
    let mut waited_on: Option<u64> = None;
    loop {
        if bp.done().is_some() {
            return CandidateOutcome::Serf;
        }
        if let Some(sig) = crate::interrupt::received() {
            // The operator stopped the boot: a serf does not take it over.
            return CandidateOutcome::Failed(format!("interrupted by {sig}: stopped waiting as a serf"));
        }
        let now = start.elapsed();
        match bp.claim() {
            None => {
                // Rendezvous: everyone published, or the wait is over.
                let table = bp.table();
                if table.iter().any(|c| c.health == Health::Absent) && now < e.rendezvous {
                    std::thread::sleep(tick);
                    continue;
                }
                let Some(v) = el::arbitrate(&table, bp.pinned()) else {
                    return CandidateOutcome::Failed("no healthy management processor can be monarch".into());
                };
                if v.winner == me {
                    if bp.try_claim(0, 1, me) {
                        let reason = v.describe(&name);
                        return serve(o, &bp, 1, reason, None, emit);
                    }
                } else if dog.observe(0, now) {
                    // The winner never claimed: it is gone before it began.
                    if bp.depose(v.winner) {
                        emit(EventKind::Stalled {
                            monarch: name(v.winner),
                            epoch: 0,
                            by: mgr.id.clone(),
                            silent_ms: e.timeout.as_secs_f64() * 1e3,
                        });
                    }
                    dog.reset();
                }
            }
            Some((epoch, holder)) => {
                if last_claim != Some((epoch, holder)) {
                    last_claim = Some((epoch, holder));
                    dog.reset();
                }
                if holder == me {
                    // Our claim, but we are not serving: a restart of this process. Stay out.
                    return CandidateOutcome::Failed("this candidate's claim outlived it".into());
                }
                let beat = bp.w.load(el::BP_HEARTBEAT);
                if dog.observe(beat, now) {
                    let silent_ms = e.timeout.as_secs_f64() * 1e3;
                    if bp.depose(holder) {
                        emit(EventKind::Stalled {
                            monarch: name(holder),
                            epoch,
                            by: mgr.id.clone(),
                            silent_ms,
                        });
                    }
                    let word = el::claim_word(epoch, holder);
                    if waited_on == Some(word)
                        && let Some(v) = el::arbitrate(&bp.table(), bp.pinned())
                        && v.winner != me
                        && bp.depose(v.winner)
                    {
                        // A whole timeout after the monarch was deposed nobody has claimed:
                        // the serf the rules name is gone too (regression: with three
                        // candidates and a dead serf, the others waited for it for ever).
                        emit(EventKind::Stalled {
                            monarch: name(v.winner),
                            epoch: 0,
                            by: mgr.id.clone(),
                            silent_ms,
                        });
                    }
                    waited_on = Some(word);
                    let detected = Instant::now();
                    if let Some(v) = el::arbitrate(&bp.table(), bp.pinned())
                        && v.winner == me
                        && bp.try_claim(el::claim_word(epoch, holder), epoch + 1, me)
                    {
                        let reason = v.describe(&name);
                        let from = Takeover { from: name(holder), silent_ms, detected };
                        return serve(o, &bp, epoch + 1, reason, Some(from), emit);
                    }
                    dog.reset();
                }
            }
        }
        std::thread::sleep(tick);
    }
}

/// A serf taking the boot over from a monarch that stalled.
pub(crate) struct Takeover {
    /// The deposed monarch.
    pub from: String,
    /// How long it had been silent when the serf gave up on it.
    pub silent_ms: f64,
    /// When the serf gave up on it.
    pub detected: Instant,
}

/// Claim every secondary's window for `epoch` before acting (see [`crate::stage::claim`]):
/// from here on the secondaries ignore every older monarch.
fn claim_windows(plan: &Plan, epoch: u32) -> Result<usize, String> {
    let mut n = 0;
    for sec in &plan.topology.secondaries {
        n += usize::from(crate::stage::claim(sec, epoch)?);
    }
    Ok(n)
}

/// One term as monarch of `epoch`, whatever the election backend: claim every window,
/// announce the takeover (from `takeover`'s monarch) and the election, then boot — or take
/// the boot over from the windows — acting only while `check` says so. `Some(summary)` when
/// the boot ran to its end with the mandate intact; `None` when the mandate was lost (the
/// candidate said so in a StoodDown event).
pub(crate) fn reign(
    o: &CandidateOptions,
    epoch: u32,
    reason: String,
    takeover: Option<Takeover>,
    check: &(dyn Fn() -> Result<(), String> + Sync),
    emit: &mut dyn FnMut(EventKind),
) -> Option<Summary> {
    let id = o.plan.topology.managers[o.index].id.clone();
    let resume = takeover.is_some();
    // The takeover is complete once every window is ours: only then is it announced.
    if let Err(why) = claim_windows(&o.plan, epoch).and_then(|_| check()) {
        emit(EventKind::StoodDown { id, epoch, why, aborted: Vec::new() });
        return None;
    }
    if let Some(t) = takeover {
        emit(EventKind::Failover {
            from: t.from,
            to: id.clone(),
            epoch,
            reason: reason.clone(),
            ms: t.silent_ms + t.detected.elapsed().as_secs_f64() * 1e3,
        });
    }
    emit(EventKind::Elected { monarch: id.clone(), epoch, reason });
    let authority = Authority { name: Some(&id), block: o.index, epoch, resume, check, shared: true };
    let summary = run::boot(&o.plan, &o.up, &authority, o.clock, &mut |ev: &Event| emit(ev.kind.clone()));
    if let Err(why) = check() {
        let aborted = summary.processors.iter().filter(|p| p.late_command).map(|p| p.id.clone()).collect();
        emit(EventKind::StoodDown { id, epoch, why, aborted });
        return None;
    }
    Some(summary)
}

/// Serve as monarch of `epoch` on the backplane: beat while the claim is ours, reign, mark
/// the boot done.
fn serve(
    o: &CandidateOptions,
    bp: &Backplane,
    epoch: u32,
    reason: String,
    takeover: Option<Takeover>,
    emit: &mut dyn FnMut(EventKind),
) -> CandidateOutcome {
    let me = o.index;
    let id = o.plan.topology.managers[me].id.clone();
    let word = el::claim_word(epoch, me);
    let deposed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let period = o.plan.topology.election.heartbeat;
    let check = || {
        if deposed.load(Ordering::Acquire) || bp.w.load(el::BP_CLAIM) != word {
            deposed.store(true, Ordering::Release);
            let now = bp.claim().map_or("nobody".into(), |(e, h)| {
                format!("{} holds epoch {e}", o.plan.topology.managers.get(h).map_or("?", |m| m.id.as_str()))
            });
            Err(format!("{id} is no longer monarch (epoch {epoch}): {now}; it stopped acting"))
        } else {
            Ok(())
        }
    };
    let summary = std::thread::scope(|scope| {
        // The heartbeat: only while the claim is still ours.
        scope.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                if bp.w.load(el::BP_CLAIM) != word {
                    deposed.store(true, Ordering::Release);
                    return;
                }
                let b = bp.w.load(el::BP_HEARTBEAT);
                bp.w.store(el::BP_HEARTBEAT, b.wrapping_add(1));
                std::thread::sleep(period);
            }
        });
        let s = reign(o, epoch, reason, takeover, &check, emit);
        stop.store(true, Ordering::Release);
        s
    });
    let Some(summary) = summary else { return CandidateOutcome::StoodDown };
    // Done is a flag of our own claim word, set by CAS: if we were deposed after our last
    // check (paused right here), the CAS fails and we stand down instead.
    if bp.w.compare_exchange(el::BP_CLAIM, word, el::done_word(word, summary.ok)).is_err() {
        let why = check().err().unwrap_or_else(|| "the claim changed".into());
        emit(EventKind::StoodDown { id, epoch, why, aborted: Vec::new() });
        return CandidateOutcome::StoodDown;
    }
    emit(EventKind::Finished { id, epoch, ok: summary.ok });
    CandidateOutcome::Finished { ok: summary.ok }
}

/// Where the candidates read the topology from.
#[derive(Debug, Clone)]
pub enum TopologySource {
    /// The built-in chassis.
    Builtin,
    /// A file.
    File(PathBuf),
}

/// `monarch up` for a chassis with two or more management processors: start a candidate
/// process for each, relay their events, and summarise who won, every failover, and the
/// secondaries as the last monarch saw them. `pinned` (the CLI's `--monarch`) overrides the
/// topology's `[election] monarch`.
pub fn up(
    plan: &Plan,
    source: &TopologySource,
    opts: &UpOptions,
    pinned: Option<usize>,
    on_event: &mut dyn FnMut(&Event),
) -> Summary {
    let clock = Instant::now();
    let t0 = unix_nanos();
    let t = &plan.topology;
    if t.run_dir_is_temporary
        && let Some(parent) = t.run_dir.parent()
    {
        run::remove_stale_run_dirs(parent);
    }
    let fail = |why: String| Summary {
        ok: false,
        chassis: t.name.clone(),
        total_ms: clock.elapsed().as_secs_f64() * 1e3,
        processors: vec![ProcessorSummary {
            error: Some(why.clone()),
            ..ProcessorSummary::new(plan.monarch(), "monarch", "failed")
        }],
        election: None,
        error: Some(why),
    };
    if let Err(e) = std::fs::create_dir_all(&t.run_dir) {
        return fail(format!("cannot create the run folder {}: {e}", t.run_dir.display()));
    }
    // Power-on: every window's registers start from zero, so no candidate takes a previous
    // run's RUNNING for this one's.
    for s in &t.secondaries {
        if s.window.path.exists()
            && let Ok(w) = Window::registers_of(&s.window.path, s.window.data_size)
        {
            w.clear_registers();
        }
    }
    let pinned = pinned.or(t.election.pinned);
    let bp_path = t.run_dir.join("backplane.bp");
    // Keep the backplane mapped for the whole run (its file lives in the run folder).
    let _bp = match t.election.backend {
        ElectionBackend::Backplane => match Backplane::create(&bp_path, t.managers.len(), pinned) {
            Ok(b) => Some(b),
            Err(e) => return fail(format!("cannot create the backplane: {e}")),
        },
        ElectionBackend::Etcd(_) => None,
    };
    // Orphans of a killed monarch (its agents, now running images) come to us, so the last
    // monarch's SHUTDOWN ends them and nothing outlives the chassis.
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
    let (tx, rx) = mpsc::channel::<(usize, Event)>();
    let mut children: Vec<Option<Child>> = Vec::new();
    let mut readers = Vec::new();
    for (k, m) in t.managers.iter().enumerate() {
        let mut cmd = Command::new(&opts.agent_exe);
        cmd.arg("candidate");
        if let TopologySource::File(f) = source {
            cmd.arg("--topology").arg(f);
        }
        cmd.arg("--index").arg(k.to_string());
        match t.election.backend {
            ElectionBackend::Backplane => cmd.arg("--backplane").arg(&bp_path),
            // One election per run: this run's start names it.
            ElectionBackend::Etcd(_) => cmd.arg("--session").arg(t0.to_string()),
        };
        if let Some(p) = pinned.and_then(|p| t.managers.get(p)) {
            cmd.arg("--monarch").arg(&p.id);
        }
        cmd.arg("--run-dir")
            .arg(&t.run_dir)
            .arg("--t0-unix-ns")
            .arg(t0.to_string())
            .arg("--shutdown-grace")
            .arg(humantime::format_duration(opts.shutdown_grace).to_string())
            .env("MONARCH_SUPERVISOR", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let log = t.run_dir.join(format!("{}.candidate.log", m.id));
        match crate::stage::open_log(&log) {
            Ok(f) => cmd.stderr(f),
            Err(_) => cmd.stderr(Stdio::null()),
        };
        match cmd.spawn() {
            Ok(mut c) => {
                if let Some(out) = c.stdout.take() {
                    let tx = tx.clone();
                    readers.push(std::thread::spawn(move || {
                        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                            if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                                let _ = tx.send((k, ev));
                            }
                        }
                    }));
                }
                children.push(Some(c));
            }
            Err(e) => {
                on_event(&Event {
                    t_ms: clock.elapsed().as_secs_f64() * 1e3,
                    kind: EventKind::GaveUp {
                        id: m.id.clone(),
                        why: format!("cannot start its candidate process {}: {e}", opts.agent_exe.display()),
                    },
                });
                children.push(None);
            }
        }
    }
    drop(tx);
    // The operator's stop (crate::interrupt) is passed on to every candidate, as the same
    // signal: the monarch stops staging and shuts down what runs, serfs stop waiting. (From
    // a terminal they had the signal already; a second one changes nothing.)
    let pids: Vec<u32> = children.iter().flatten().map(Child::id).collect();
    let ended = Arc::new(AtomicBool::new(false));
    let relay = {
        let ended = Arc::clone(&ended);
        std::thread::spawn(move || {
            while !ended.load(Ordering::Acquire) {
                if let Some(sig) = crate::interrupt::signal() {
                    for &pid in &pids {
                        monarch_drivers::host::signal(pid, sig);
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut summaries: Vec<Option<Summary>> = t.managers.iter().map(|_| None).collect();
    let mut state: Vec<&str> = t.managers.iter().map(|_| "serf").collect();
    let mut elected: Option<(usize, String, u32, String)> = None;
    let mut finished: Option<(usize, u32, bool)> = None;
    let mut gave_up: Vec<String> = Vec::new();
    let mut failovers = Vec::new();
    for (k, ev) in rx {
        match &ev.kind {
            EventKind::Summary(s) => {
                summaries[k] = Some(s.clone());
                continue;
            }
            EventKind::Candidate { health, .. } if health != "healthy" => state[k] = "deconfigured",
            EventKind::Elected { monarch, epoch, reason } => {
                elected = Some((k, monarch.clone(), *epoch, reason.clone()));
                state[k] = "monarch";
            }
            EventKind::Stalled { monarch, .. } => {
                if let Some(i) = t.managers.iter().position(|m| &m.id == monarch) {
                    state[i] = "deposed";
                }
            }
            EventKind::Failover { from, to, epoch, ms, .. } => failovers.push(FailoverSummary {
                from: from.clone(),
                to: to.clone(),
                epoch: *epoch,
                t_ms: ev.t_ms,
                ms: *ms,
            }),
            EventKind::StoodDown { .. } => state[k] = "stood down",
            EventKind::Finished { epoch, ok, .. } => finished = Some((k, *epoch, *ok)),
            EventKind::GaveUp { id, why } => {
                state[k] = "gave up";
                gave_up.push(format!("{id}: {why}"));
            }
            _ => {}
        }
        on_event(&ev);
    }
    for r in readers {
        let _ = r.join();
    }
    ended.store(true, Ordering::Release);
    let _ = relay.join();
    let mut exits = Vec::new();
    for c in children.iter_mut() {
        exits.push(c.as_mut().and_then(|c| c.wait().ok()));
    }
    // What the candidates left us: orphaned images nobody shut down (the boot did not
    // finish, or a deposed monarch's agents) are stopped; nothing outlives the chassis.
    for pid in monarch_drivers::host::children_of(std::process::id()) {
        monarch_drivers::host::signal(pid, rustix::process::Signal::KILL);
    }
    while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
    let total_ms = clock.elapsed().as_secs_f64() * 1e3;
    let last_monarch = elected.as_ref().map(|(k, ..)| *k);
    let mut summary = match finished.and_then(|(k, ..)| summaries[k].clone()) {
        Some(s) => s,
        None => {
            // Nobody finished: say why, and report each secondary as the last monarch saw it
            // (running ones are running; anything else did not boot).
            let why = if !gave_up.is_empty() {
                format!("no monarch finished the boot: {}", gave_up.join("; "))
            } else {
                match last_monarch {
                    Some(h) => format!(
                        "monarch {} did not finish the boot and no candidate took over (its process: {}); see {}",
                        t.managers[h].id,
                        exits.get(h).copied().flatten().map_or("not started".into(), |s| s.to_string()),
                        t.run_dir.join(format!("{}.candidate.log", t.managers[h].id)).display()
                    ),
                    None => "no candidate became monarch (see the candidates' logs in the run folder)".into(),
                }
            };
            let seen = last_monarch.and_then(|h| summaries[h].clone());
            let mut s = fail(why.clone());
            s.processors.extend(t.secondaries.iter().map(|sec| {
                let last = seen.as_ref().and_then(|x| x.processors.iter().find(|p| p.id == sec.id));
                match last {
                    Some(p) if p.state == "running" => p.clone(),
                    Some(p) => ProcessorSummary {
                        state: "failed".into(),
                        error: Some(format!("not booted: {why}")),
                        ..p.clone()
                    },
                    None => ProcessorSummary {
                        error: Some(format!("not booted: {why}")),
                        required: sec.required,
                        ..ProcessorSummary::new(&sec.id, "secondary", "failed")
                    },
                }
            }));
            s
        }
    };
    // The candidates, the final monarch first (it is the summary's first line already).
    summary.processors.retain(|p| p.role == "secondary");
    let holder = finished.map(|(k, ..)| k);
    for (k, m) in t.managers.iter().enumerate().rev() {
        let p = if Some(k) == holder {
            ProcessorSummary {
                timings_ms: crate::events::Timings { total: total_ms, ..Default::default() },
                ..ProcessorSummary::new(&m.id, "monarch", "monarch")
            }
        } else {
            let st = if state[k] == "monarch" { "failed" } else { state[k] };
            ProcessorSummary { required: false, ..ProcessorSummary::new(&m.id, "candidate", st) }
        };
        summary.processors.insert(0, p);
    }
    if let Some(pos) = summary.processors.iter().position(|p| p.role == "monarch") {
        let m = summary.processors.remove(pos);
        summary.processors.insert(0, m);
    }
    // What the deposed monarch's late commands did: every secondary counted them, ignored.
    for p in summary.processors.iter_mut().filter(|p| p.role == "secondary") {
        if let Some(sec) = t.secondaries.iter().find(|s| s.id == p.id)
            && sec.window.path.exists()
            && let Ok(w) = Window::registers_of(&sec.window.path, sec.window.data_size)
        {
            p.fenced = w.load(layout::ST_FENCED);
        }
    }
    summary.election = elected.map(|(k, monarch, epoch, reason)| {
        let (monarch, epoch, reason) = match finished {
            Some((f, e, _)) if f != k => (t.managers[f].id.clone(), e, reason),
            _ => (monarch, epoch, reason),
        };
        ElectionSummary { monarch, epoch, reason, failovers }
    });
    summary.total_ms = total_ms;
    summary.ok = summary.ok && finished.is_some_and(|(_, _, ok)| ok);
    if t.run_dir_is_temporary {
        let _ = std::fs::remove_dir_all(&t.run_dir);
    }
    on_event(&Event { t_ms: total_ms, kind: EventKind::Summary(summary.clone()) });
    summary
}
