//! The election on a backplane: a register page every candidate on one machine maps (CAS
//! claim, the monarch's heartbeat, serfs watching it).
use crate::events::EventKind;
use monarch_drivers::Window;
use monarch_proto::election::{self as el, Candidate, Health, Watchdog};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::candidate::{CandidateOptions, CandidateOutcome, Takeover, announce, reign};

/// Why the backplane could not be made or mapped.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// The register page could not be created or mapped.
    #[error(transparent)]
    Window(#[from] monarch_drivers::WindowError),
    /// The file holds something else.
    #[error("{} is not a monarch backplane (version {version}); it is made by `monarch up`", path.display())]
    NotABackplane {
        /// The file.
        path: PathBuf,
        /// The version this monarch speaks.
        version: u32,
    },
}

/// The backplane: one register page every candidate of the chassis maps.
pub struct Backplane {
    w: Window,
}

impl Backplane {
    /// Create it for `candidates` candidates (the chassis does, before starting them).
    pub fn create(
        path: &Path,
        candidates: usize,
        pinned: Option<usize>,
    ) -> Result<Backplane, BackplaneError> {
        let w = Window::create(path, 0)?;
        w.store(el::BP_VERSION, u64::from(el::BP_VERSION_VALUE));
        w.store(el::BP_CANDIDATES, candidates as u64);
        w.store(el::BP_PINNED, pinned.map_or(0, |p| p as u64 + 1));
        w.store(el::BP_MAGIC, el::BP_MAGIC_VALUE);
        Ok(Backplane { w })
    }

    /// Map the backplane the chassis created.
    pub fn open(path: &Path) -> Result<Backplane, BackplaneError> {
        let w = Window::open(path)?;
        if w.load(el::BP_MAGIC) != el::BP_MAGIC_VALUE || w.load32(el::BP_VERSION) != el::BP_VERSION_VALUE {
            return Err(BackplaneError::NotABackplane {
                path: path.to_path_buf(),
                version: el::BP_VERSION_VALUE,
            });
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

    /// The process candidate `k` published (0: none yet).
    fn pid(&self, k: usize) -> u32 {
        u32::try_from(self.w.load(el::candidate(k).pid)).unwrap_or(0)
    }

    /// `(epoch, ok)` once a monarch finished the boot.
    pub fn done(&self) -> Option<(u32, bool)> {
        el::decode_done(self.w.load(el::BP_CLAIM))
    }
}

/// Run one candidate on the backplane: publish, rendezvous, arbitrate, then serve as monarch
/// or watch as serf (and usurp a stalled monarch).
pub fn run_on_backplane(o: &CandidateOptions, emit: &mut dyn FnMut(EventKind)) -> CandidateOutcome {
    let t = &o.plan.topology;
    let mgr = &t.managers[o.index];
    let Some(path) = &o.backplane else {
        return CandidateOutcome::Failed("a backplane election needs --backplane FILE".into());
    };
    let bp = match Backplane::open(path) {
        Ok(b) => b,
        Err(e) => return CandidateOutcome::Failed(e.to_string()),
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
    // The monarch's process, watched for its death (see [`Death`]).
    let mut death = Death::default();
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
                            dead: false,
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
                death.watch(el::claim_word(epoch, holder), bp.pid(holder));
                let beat = bp.w.load(el::BP_HEARTBEAT);
                let silent = dog.observe(beat, now);
                if silent || death.dead {
                    let silent_ms =
                        if silent { e.timeout.as_secs_f64() * 1e3 } else { death.since_beat(&dog, now) };
                    if bp.depose(holder) {
                        emit(EventKind::Stalled {
                            monarch: name(holder),
                            epoch,
                            by: mgr.id.clone(),
                            silent_ms,
                            dead: !silent,
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
                            dead: false,
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
        death.sleep(tick);
    }
}

/// Kernel-speed death detection: a pidfd on the monarch's process, which the kernel makes
/// readable the moment the process is gone, so a serf sharing the monarch's kernel notices a
/// dead monarch at once instead of after `timeout` of heartbeat silence. A monarch that hangs
/// (SIGSTOP, a livelock) stays alive for the kernel: its heartbeat's silence still catches
/// it, as it catches everything this cannot see.
///
/// Only a death the kernel reports counts. The pid is read from the backplane (untrusted):
/// when no pidfd can be opened for it (no such process: not in this pid namespace, or gone
/// already; a kernel without pidfds) the serf just relies on the heartbeat, and a wrong pid
/// that names some other live process can only make the serf wait for the heartbeat too. The
/// pid cannot name a later process while the monarch lives, so a death seen is the monarch's.
#[derive(Default)]
struct Death {
    /// The claim word the watched process holds.
    word: u64,
    /// Its pidfd, if one could be opened.
    fd: Option<OwnedFd>,
    /// The kernel said it is gone.
    dead: bool,
}

impl Death {
    /// Watch `pid`, the holder of claim `word` (a new claim: a new process to watch).
    fn watch(&mut self, word: u64, pid: u32) {
        if self.word == word {
            return;
        }
        *self = Death { word, fd: None, dead: false };
        let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return };
        if pid == rustix::process::getpid() {
            return;
        }
        self.fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok();
    }

    /// Sleep `tick`, or less if the watched process dies meanwhile.
    fn sleep(&mut self, tick: Duration) {
        let Some(fd) = &self.fd else {
            std::thread::sleep(tick);
            return;
        };
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        let timeout = rustix::time::Timespec::try_from(tick).ok();
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(n) if n > 0 => {
                self.dead = true;
                self.fd = None;
            }
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => {
                // Cannot wait on it: from now on, the heartbeat alone.
                self.fd = None;
                std::thread::sleep(tick);
            }
        }
    }

    /// How long the dead monarch had been silent: since the last heartbeat the serf saw.
    fn since_beat(&self, dog: &Watchdog, now: Duration) -> f64 {
        dog.silent_for(now).as_secs_f64() * 1e3
    }
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
        // The heartbeat: only while the claim is still ours. It parks between beats, so
        // that the end of the reign wakes it at once rather than after its period.
        let beat = scope.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                if bp.w.load(el::BP_CLAIM) != word {
                    deposed.store(true, Ordering::Release);
                    return;
                }
                let b = bp.w.load(el::BP_HEARTBEAT);
                bp.w.store(el::BP_HEARTBEAT, b.wrapping_add(1));
                std::thread::park_timeout(period);
            }
        });
        let s = reign(o, epoch, reason, takeover, &check, emit);
        stop.store(true, Ordering::Release);
        beat.thread().unpark();
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
