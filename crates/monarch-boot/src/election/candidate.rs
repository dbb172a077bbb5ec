//! What every candidate does, whatever the election backend: its options and outcome,
//! announcing itself, and reigning as monarch once elected (the boot, on its authority).
use crate::events::{Event, EventKind, Summary};
use crate::plan::Plan;
use crate::run::{self, UpOptions};
use crate::stage::Authority;
use monarch_proto::election::Health;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// The candidate's self-test result, as an event; false when it failed (the reference design's
/// PDC_CONFIG deconfigures it: it never becomes monarch).
pub fn announce(o: &CandidateOptions, emit: &mut dyn FnMut(EventKind)) -> bool {
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

/// A serf taking the boot over from a monarch that stalled.
pub struct Takeover {
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
        n += usize::from(crate::stage::claim(sec, epoch).map_err(|e| e.to_string())?);
    }
    Ok(n)
}

/// One term as monarch of `epoch`, whatever the election backend: claim every window,
/// announce the takeover (from `takeover`'s monarch) and the election, then boot — or take
/// the boot over from the windows — acting only while `check` says so. `Some(summary)` when
/// the boot ran to its end with the mandate intact; `None` when the mandate was lost (the
/// candidate said so in a StoodDown event).
pub fn reign(
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

/// Tie this candidate to its chassis (`monarch up`, whose pid the chassis passes as
/// `MONARCH_SUPERVISOR`): when the chassis dies, the kernel sends this process SIGTERM, which
/// stops it cleanly (a held chassis is shut down) instead of leaving it orphaned. False if
/// the chassis is gone already.
pub fn bind_to_chassis() -> bool {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    // The chassis may have died before the line above: then no signal comes.
    let chassis = std::env::var("MONARCH_SUPERVISOR").ok().and_then(|p| p.parse::<u32>().ok());
    chassis.is_none_or(monarch_drivers::host::alive)
}
