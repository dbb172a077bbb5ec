//! The supervisor: one per run, on the run's main thread, from the first stage on.
//!
//! During the boot it watches each running image's flags, so that the secondaries that
//! depend on it are released once it is ready ([`crate::gate`]), and it turns main power on
//! once the aux domain is up. Held (`monarch up --hold`), it then keeps the chassis: it
//! notices an image that exits, is killed, stops beating or reports a fault, records the
//! reboot cause, tells the secondaries that depend on it, takes its ports down, and boots it
//! again within its restart limits; and it carries out the operator's requests from the
//! control socket, negotiated through notices in the windows, in reverse dependency order.

use super::causes::{Cause, CauseLog};
use super::control::{Incoming, Reply, Request};
use super::metrics::Metrics;
use super::restart::{Decision, RestartBudget};
use crate::events::{Event, EventKind, ProcessorSummary};
use crate::gate::{Avail, Gate};
use crate::stage::Staged;
use crate::topology::{MainPower, OnDependencyLoss, PowerDomain, Recovery, Secondary, Topology};
use monarch_drivers::Poll;
use monarch_proto::window::layout;
use monarch_proto::window::life::{self, Answer, Notice, NoticeKind};
use monarch_proto::window::msg;
use serde_json::json;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

/// How long an image that acknowledged a shutdown or reboot gets to exit by itself.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// What `monarch up --hold` adds to a run.
#[derive(Debug, Clone)]
pub struct HoldOptions {
    /// Where reboot causes are kept across runs.
    pub state_dir: PathBuf,
    /// How long a notice may be deferred when the operator names no deadline (SIGTERM too).
    pub deadline: Duration,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Where and how to serve Redfish, if anywhere.
    pub redfish: Option<crate::redfish::RedfishOptions>,
}

/// Where a secondary stands in the supervisor's eyes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Its stage runs (boot, reboot, restart).
    Booting,
    /// Its image runs.
    Running,
    /// Lost; booted again after the back-off.
    Restarting,
    /// Shut down by the operator (admin down).
    ShutDown,
    /// Failed for good (a boot that failed, recovery off, or its restart limit hit).
    Failed,
    /// Powered off with the main domain.
    Off,
}

impl St {
    fn name(self) -> &'static str {
        match self {
            St::Booting => "booting",
            St::Running => "running",
            St::Restarting => "restarting",
            St::ShutDown => "shut_down",
            St::Failed => "failed",
            St::Off => "off",
        }
    }
}

struct Proc {
    st: St,
    ready: bool,
    staged: Option<Staged>,
    /// The last summary its stage gave.
    summary: Option<ProcessorSummary>,
    beat: u64,
    beat_at: Instant,
    budget: RestartBudget,
    restarts: u32,
    admin_up: bool,
    without: Vec<String>,
    restart_at: Option<Instant>,
    notice_seq: u32,
    answer_seq: u32,
    /// Why it failed for good, or why it is down.
    why: Option<String>,
    /// It was told to shut down or reboot: its own exit is expected, not a crash.
    leaving: bool,
    /// Told to leave, it did: it answers nothing more.
    gone: bool,
    /// Released without an image to watch (handoff `none`, a network boot): no exit,
    /// heartbeat or window of its own after the release.
    unwatched: bool,
    /// A stage of it runs (its result is still to come): never a second one at once.
    staging: bool,
    /// Failed because its supervisor (an AMC) was down: booted again once it is back.
    awaits_supervisor: bool,
    /// The last notices posted to it (number, kind), to name what an answer answers.
    posted: VecDeque<(u32, NoticeKind)>,
}

/// After a secondary is stopped on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// It is booted again (reboot).
    Reboot,
    /// It stays down until `monarch startup` (admin down).
    ShutDown,
    /// It is off with main power, until `monarch power on`.
    Off,
}

enum Step {
    Notify {
        ids: Vec<usize>,
        kind: NoticeKind,
        about: String,
    },
    Stop {
        id: usize,
        cause: String,
        then: Then,
    },
    Start {
        id: usize,
    },
    AwaitUp {
        id: usize,
    },
    Power {
        on: bool,
        why: String,
    },
    /// The gate closes: nothing more is released.
    Close,
    Finish,
}

struct NoticeWait {
    until: Instant,
    kind: NoticeKind,
    /// (secondary, notice seq) still unanswered or deferred.
    pending: Vec<(usize, u32)>,
}

struct Op {
    what: String,
    steps: VecDeque<Step>,
    force: bool,
    deadline: Duration,
    reply: Option<Sender<Reply>>,
    wait: Option<NoticeWait>,
    /// Stop waiting before this (a stopped image's own exit).
    pause_until: Option<Instant>,
    error: Option<String>,
}

/// Something else that sees every event.
pub(crate) type Watcher<'a> = Box<dyn Fn(&Event) + 'a>;

/// The supervisor of one run.
pub(crate) struct Keeper<'a> {
    t: &'a Topology,
    gate: &'a Gate,
    emit: &'a dyn Fn(EventKind),
    epoch: u32,
    hold: Option<HoldOptions>,
    causes: Option<CauseLog>,
    procs: Vec<Proc>,
    /// Secondaries whose first stage has not returned yet.
    first_pending: usize,
    ops: VecDeque<Op>,
    op: Option<Op>,
    followers: Vec<Sender<Reply>>,
    auto_power_done: bool,
    finished: bool,
    /// A stop signal was turned into a shutdown already.
    signalled: bool,
    /// A whole-chassis shutdown is queued or under way: no more requests, no more boots.
    closing: bool,
    /// Prometheus metrics, when served.
    metrics: Option<Arc<Metrics>>,
    /// Who else sees every event (the Redfish service's log and stream).
    watchers: Vec<Watcher<'a>>,
    /// When the gauges were last set.
    gauges_at: Instant,
    /// systemd was told the chassis is ready (`Type=notify`).
    notified_ready: bool,
    /// systemd's watchdog period, and when it was last fed.
    watchdog: Option<(Duration, Instant)>,
    start: Instant,
    /// Dependency levels (the plan's rule): level 0 depends on nothing.
    levels: Vec<Vec<usize>>,
}

impl<'a> Keeper<'a> {
    pub(crate) fn new(
        t: &'a Topology,
        gate: &'a Gate,
        emit: &'a dyn Fn(EventKind),
        epoch: u32,
        hold: Option<HoldOptions>,
        causes: Option<CauseLog>,
    ) -> Keeper<'a> {
        let now = Instant::now();
        let procs = t
            .secondaries
            .iter()
            .map(|s| Proc {
                st: St::Booting,
                ready: false,
                staged: None,
                summary: None,
                beat: 0,
                beat_at: now,
                budget: RestartBudget::new(
                    s.life.max_restarts,
                    s.life.restart_window,
                    s.life.restart_backoff,
                ),
                restarts: 0,
                admin_up: true,
                without: Vec::new(),
                restart_at: None,
                notice_seq: 0,
                answer_seq: 0,
                why: None,
                leaving: false,
                gone: false,
                unwatched: false,
                staging: true,
                awaits_supervisor: false,
                posted: VecDeque::new(),
            })
            .collect();
        Keeper {
            t,
            gate,
            emit,
            epoch,
            hold,
            causes,
            procs,
            first_pending: t.secondaries.len(),
            ops: VecDeque::new(),
            op: None,
            followers: Vec::new(),
            auto_power_done: false,
            finished: false,
            signalled: false,
            closing: false,
            metrics: None,
            watchers: Vec::new(),
            gauges_at: now,
            notified_ready: false,
            watchdog: sd_notify::watchdog_enabled().map(|p| (p, now)),
            start: now,
            levels: crate::plan::Plan::new(t.clone()).levels(),
        }
    }

    fn sec(&self, i: usize) -> &'a Secondary {
        &self.t.secondaries[i]
    }

    fn index(&self, id: &str) -> Option<usize> {
        self.t.secondaries.iter().position(|s| s.id == id)
    }

    fn held(&self) -> bool {
        self.hold.is_some()
    }

    /// The run is over: every first stage returned (not held), or the chassis was shut down.
    pub(crate) fn finished(&self) -> bool {
        if self.held() { self.finished } else { self.first_pending == 0 }
    }

    /// Count events and set gauges into `metrics` from now on.
    pub(crate) fn with_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    /// Show every event to `watch` too.
    pub(crate) fn with_watcher(&mut self, watch: Watcher<'a>) {
        self.watchers.push(watch);
    }

    /// Pass an event on to the operators following them (and the metrics).
    pub(crate) fn observe(&mut self, ev: &Event) {
        if let Some(m) = &self.metrics {
            m.observe(ev);
        }
        for w in &self.watchers {
            w(ev);
        }
        self.followers.retain(|f| f.send(Reply::Event { event: ev.clone() }).is_ok());
    }

    /// A stage returned.
    pub(crate) fn staged(&mut self, i: usize, s: Staged) {
        let first = self.procs[i].summary.is_none();
        if first {
            self.first_pending = self.first_pending.saturating_sub(1);
        }
        let id = self.sec(i).id.clone();
        let state = s.summary.state.clone();
        let now = Instant::now();
        let closing = self.closing || self.finished;
        let p = &mut self.procs[i];
        p.staging = false;
        p.summary = Some(s.summary.clone());
        p.without.clone_from(&s.summary.without);
        if closing || matches!(p.st, St::ShutDown | St::Off) {
            // Taken down while it was coming up (the chassis shuts down, or the operator
            // shut it down or switched main power off): it never ran for anyone, so it is
            // stopped quietly, and it is down as asked, not failed.
            let mut s = s;
            if let Some(c) = s.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            if p.st != St::Off {
                p.st = St::ShutDown;
                p.admin_up = false;
            }
            if let Some(sum) = p.summary.as_mut() {
                sum.state = if p.st == St::Off { "off".into() } else { "shut_down".into() };
                sum.error = None;
            }
            return;
        }
        if let Some(m) = &self.metrics
            && matches!(state.as_str(), "running" | "released")
        {
            m.phases(&id, &s.summary.timings_ms);
        }
        let p = &mut self.procs[i];
        match state.as_str() {
            "running" => {
                p.st = St::Running;
                p.unwatched = false;
                p.ready = false;
                p.leaving = false;
                p.gone = false;
                p.posted.clear();
                p.beat = 0;
                p.beat_at = now;
                p.answer_seq = s.window.as_ref().map_or(0, |w| w.load32(layout::ANSWER_SEQ) & !msg::SEQ_BUSY);
                p.notice_seq = s.window.as_ref().map_or(0, |w| w.load32(layout::NOTICE_SEQ) & !msg::SEQ_BUSY);
                p.staged = Some(s);
                self.gate.set(&id, Avail::Running);
            }
            // Released without a running image to watch (handoff none, a network boot).
            "released" => {
                p.st = St::Running;
                p.ready = true;
                p.unwatched = true;
                p.staged = Some(s);
                self.gate.set(&id, Avail::Ready);
            }
            _ => {
                let why = s.summary.error.clone().unwrap_or_else(|| format!("its boot ended {state}"));
                p.st = St::Failed;
                p.why = Some(why.clone());
                p.staged = Some(s);
                self.gate.set(&id, Avail::Down(why.clone()));
                if !first && self.held() {
                    // A restart or reboot that did not come back.
                    self.record(i, &format!("its boot failed: {why}"), "failed");
                    (self.emit)(EventKind::Down { id, state: "failed".into(), why });
                }
            }
        }
    }

    /// One turn: watch the images, turn power on, restart what is due, go on with the
    /// operator's request. Returns the secondaries to stage (again).
    pub(crate) fn tick(&mut self) -> Vec<usize> {
        let mut stage = Vec::new();
        if self.held()
            && !self.signalled
            && let Some(sig) = crate::interrupt::received()
        {
            self.signalled = true;
            (self.emit)(EventKind::Request { what: format!("shutdown ({sig})") });
            let deadline = self.hold.as_ref().map_or(Duration::from_secs(10), |h| h.deadline);
            // The operator wants out: whatever was under way or queued is cut short (a
            // service manager's stop timeout must not run out on a deferred reboot).
            let why = format!("interrupted by {sig}: the chassis shuts down");
            self.refuse_pending(&why, true);
            let op = self.shutdown_chassis(false, deadline, None);
            self.ops.push_front(op);
        }
        for i in 0..self.procs.len() {
            self.watch(i);
        }
        self.auto_power();
        let now = Instant::now();
        for i in 0..self.procs.len() {
            let p = &mut self.procs[i];
            if p.st == St::Restarting && p.restart_at.is_some_and(|t| now >= t) {
                p.restart_at = None;
                p.st = St::Booting;
                p.staging = true;
                stage.push(i);
            }
        }
        self.step_ops(&mut stage);
        self.tell_the_service_manager();
        if self.metrics.is_some() && now.duration_since(self.gauges_at) >= Duration::from_millis(100) {
            self.gauges_at = now;
            self.set_gauges(now);
        }
        stage
    }

    /// Set the metrics' gauges from where every secondary stands.
    fn set_gauges(&self, now: Instant) {
        let Some(m) = &self.metrics else { return };
        for (s, p) in self.t.secondaries.iter().zip(&self.procs) {
            m.set_state(&s.id, p.st.name());
            let beats = p.st == St::Running && !p.unwatched && self.held();
            m.set_life(&s.id, p.ready, beats.then(|| now.duration_since(p.beat_at).as_secs_f64()));
        }
        m.set_chassis(self.gate.main_power(), self.epoch);
    }

    /// systemd (`Type=notify`): ready once the boot is done and the chassis is held, the
    /// watchdog fed while this loop turns. Nothing happens outside systemd.
    fn tell_the_service_manager(&mut self) {
        if !self.held() {
            return;
        }
        if !self.notified_ready && self.first_pending == 0 {
            self.notified_ready = true;
            let up = self.procs.iter().filter(|p| p.st == St::Running).count();
            let status =
                format!("supervising chassis {}: {up}/{} secondaries running", self.t.name, self.procs.len());
            let _ =
                sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);
        }
        if let Some((period, fed)) = self.watchdog
            && fed.elapsed() >= period / 2
        {
            self.watchdog = Some((period, Instant::now()));
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }

    /// Answer the operation under way (with `current`) and every queued one with `why`, and
    /// drop them.
    fn refuse_pending(&mut self, why: &str, current: bool) {
        let now = if current { self.op.take() } else { None };
        for op in now.into_iter().chain(self.ops.drain(..)) {
            if let Some(r) = op.reply {
                let _ = r.send(Reply::error(format!("{}: {why}", op.what)));
            }
        }
    }

    fn auto_power(&mut self) {
        if self.auto_power_done || self.t.main_power == MainPower::Manual {
            return;
        }
        let aux_settled = self
            .t
            .secondaries
            .iter()
            .zip(&self.procs)
            .filter(|(s, _)| s.life.power == PowerDomain::Aux)
            .all(|(_, p)| p.summary.is_some());
        if aux_settled {
            self.auto_power_done = true;
            self.gate.set_main_power(true);
            if self.t.secondaries.iter().any(|s| s.life.power == PowerDomain::Main) {
                (self.emit)(EventKind::Power {
                    domain: "main".into(),
                    on: true,
                    why: "auto: the aux domain is up".into(),
                });
            }
        }
    }

    /// Watch one running image: its exit, its heartbeat, its flags, its answers.
    fn watch(&mut self, i: usize) {
        let held = self.held();
        let sec = self.sec(i);
        let now = Instant::now();
        let p = &mut self.procs[i];
        if p.st != St::Running || p.unwatched {
            return;
        }
        // Answers first: an image that acknowledged a shutdown may be gone a moment later.
        let answer = p
            .staged
            .as_ref()
            .and_then(|s| s.window.as_ref())
            .map(|w| w.read_message(layout::ANSWER_SEQ, p.answer_seq, life::decode_answer));
        match answer {
            Some(Poll::Message(seq, a)) => {
                self.procs[i].answer_seq = seq;
                self.answered(i, a);
            }
            Some(Poll::Garbage(seq, e)) => {
                self.procs[i].answer_seq = seq;
                tracing::warn!(processor = %sec.id, error = %e, "an unreadable answer in its window");
            }
            _ => {}
        }
        let p = &mut self.procs[i];
        let Some(s) = p.staged.as_mut() else { return };
        if held {
            let exited = if let Some(c) = s.child.as_mut() {
                match c.try_wait() {
                    Ok(Some(status)) => Some(describe_exit(status)),
                    _ => None,
                }
            } else {
                s.adopted_pid
                    .filter(|pid| !monarch_drivers::host::alive(*pid))
                    .map(|pid| format!("its image (pid {pid}) is gone"))
            };
            if let Some(why) = exited {
                if p.leaving {
                    p.gone = true;
                } else {
                    self.lost(i, &why);
                }
                // Told to leave: the operation that told it stops it (and says why).
                return;
            }
        }
        let Some(w) = s.window.as_ref() else { return };
        let l = life::decode_life(&|r| w.load(r));
        if held {
            if l.beat != p.beat {
                p.beat = l.beat;
                p.beat_at = now;
            } else if now.duration_since(p.beat_at) > sec.life.heartbeat_timeout {
                let silent = now.duration_since(p.beat_at);
                self.kill(i);
                self.lost(i, &format!("it stopped heartbeating (silent for {} ms)", silent.as_millis()));
                return;
            }
            if l.fault {
                self.kill(i);
                self.lost(i, "its image reported a fault");
                return;
            }
        }
        let p = &mut self.procs[i];
        if l.ready && !p.ready {
            p.ready = true;
            (self.emit)(EventKind::Ready { id: sec.id.clone() });
            self.gate.set(&sec.id, Avail::Ready);
            if held {
                self.ports(i, true);
                self.restore_dependents(i);
            }
        }
    }

    /// Kill a secondary's image (or agent) and wait for it.
    fn kill(&mut self, i: usize) {
        let id = self.sec(i).id.clone();
        let Some(s) = self.procs[i].staged.as_mut() else { return };
        if let Some(c) = s.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        } else if let Some(pid) = s.adopted_pid {
            // The pid came from the window (peer data): kill it only if it is that
            // secondary's image, which the agent started as `monarch-image:ID`.
            if monarch_drivers::host::cmdline(pid).first() == Some(&format!("monarch-image:{id}")) {
                monarch_drivers::host::signal(pid, rustix::process::Signal::KILL);
            }
        }
    }

    fn record(&mut self, i: usize, cause: &str, action: &str) {
        let id = self.sec(i).id.clone();
        if let Some(log) = self.causes.as_mut()
            && let Err(e) = log.record(&id, cause, action)
        {
            tracing::warn!(processor = %id, error = %e, "the reboot cause could not be kept");
        }
    }

    /// A running image was lost (not stopped on purpose): record why, tell its dependents,
    /// take its ports down, and restart it if its recovery and limits allow.
    fn lost(&mut self, i: usize, cause: &str) {
        let sec = self.sec(i);
        let id = sec.id.clone();
        (self.emit)(EventKind::Lost { id: id.clone(), cause: cause.to_string() });
        let now = Instant::now();
        // A card supervised by its AMC cannot be recovered while the AMC is down: it waits
        // for it instead of spending its restarts.
        let supervisor_down = sec.life.supervisor.as_deref().and_then(|s| self.index(s)).filter(|k| {
            let q = &self.procs[*k];
            !(q.st == St::Running && q.ready)
        });
        if let (Some(k), Recovery::Restart) = (supervisor_down, sec.life.recovery) {
            let sup = self.sec(k).id.clone();
            let why = format!("{cause}; its supervisor {sup} is down: it is booted again once {sup} is back");
            let p = &mut self.procs[i];
            p.ready = false;
            p.staged = None;
            p.st = St::Failed;
            p.awaits_supervisor = true;
            p.why = Some(why.clone());
            self.gate.set(&id, Avail::Down(why.clone()));
            self.record(i, cause, &format!("waits for its supervisor {sup}"));
            (self.emit)(EventKind::Down { id: id.clone(), state: "failed".into(), why });
            self.ports(i, false);
            self.dependency_lost(i, cause);
            return;
        }
        let p = &mut self.procs[i];
        p.ready = false;
        p.staged = None;
        let decision = match (sec.life.recovery, p.admin_up) {
            (Recovery::Restart, true) => p.budget.on_loss(now.duration_since(self.start)),
            _ => Decision::GiveUp { restarts: 0 },
        };
        match decision {
            Decision::Restart { nth, after } => {
                p.st = St::Restarting;
                p.restarts += 1;
                p.restart_at = Some(now + after);
                self.gate.set(&id, Avail::Pending);
                self.record(
                    i,
                    cause,
                    &format!(
                        "restarted by {} (restart {nth} of {} within {})",
                        sec.life.supervisor.as_deref().unwrap_or("the monarch"),
                        sec.life.max_restarts,
                        fmt_d(sec.life.restart_window)
                    ),
                );
                (self.emit)(EventKind::Restarting {
                    id: id.clone(),
                    restart: nth,
                    after_ms: after.as_secs_f64() * 1e3,
                });
            }
            Decision::GiveUp { restarts } => {
                let why = if sec.life.recovery == Recovery::None {
                    format!("{cause}; recovery = \"none\"")
                } else {
                    format!(
                        "{cause}; restart limit reached ({restarts} restarts within {})",
                        fmt_d(sec.life.restart_window)
                    )
                };
                p.st = St::Failed;
                p.why = Some(why.clone());
                self.gate.set(&id, Avail::Down(why.clone()));
                let action = if sec.life.recovery == Recovery::None {
                    "failed: recovery is off"
                } else {
                    "failed: restart limit reached"
                };
                self.record(i, cause, action);
                (self.emit)(EventKind::Down { id: id.clone(), state: "failed".into(), why });
            }
        }
        self.ports(i, false);
        self.dependency_lost(i, cause);
    }

    /// Set `i`'s ports up or down.
    fn ports(&self, i: usize, up: bool) {
        let sec = self.sec(i);
        for port in &sec.life.ports {
            match monarch_drivers::link::set_up(port, up) {
                Ok(()) => (self.emit)(EventKind::Port { id: sec.id.clone(), port: port.clone(), up }),
                Err(e) => {
                    tracing::warn!(processor = %sec.id, port = %port, up, error = %e, "cannot set the port")
                }
            }
        }
    }

    /// The secondaries that depend on `i` (requires, wants, supervisor) and run now.
    fn running_dependents(&self, i: usize) -> Vec<usize> {
        let id = &self.sec(i).id;
        (0..self.procs.len())
            .filter(|j| self.procs[*j].st == St::Running && self.sec(*j).life.depends_on().any(|d| d == id))
            .collect()
    }

    /// What `i` depends on that runs now.
    fn running_dependencies(&self, i: usize) -> Vec<usize> {
        self.sec(i)
            .life
            .depends_on()
            .filter_map(|d| self.index(d))
            .filter(|j| self.procs[*j].st == St::Running)
            .collect()
    }

    /// Tell `i`'s running dependents that it is gone: they run degraded, or are restarted
    /// with it (`on_dependency_loss = "restart"`, for a hard dependency).
    fn dependency_lost(&mut self, i: usize, cause: &str) {
        let id = self.sec(i).id.clone();
        for j in self.running_dependents(i) {
            let dep = self.sec(j);
            let hard = dep.life.requires.contains(&id) || dep.life.supervisor.as_ref() == Some(&id);
            if hard && dep.life.on_dependency_loss == OnDependencyLoss::Restart {
                self.kill(j);
                self.lost(
                    j,
                    &format!("its dependency {id} was lost ({cause}), and on_dependency_loss = \"restart\""),
                );
                continue;
            }
            let p = &mut self.procs[j];
            if !p.without.contains(&id) {
                p.without.push(id.clone());
            }
            self.write_missing(j);
            self.notice(j, NoticeKind::DependencyLost, &format!("{id}: {cause}"), 0);
        }
    }

    /// `i` is ready again: its dependents that ran without it get it back.
    fn restore_dependents(&mut self, i: usize) {
        let id = self.sec(i).id.clone();
        // The cards it supervises that failed while it was down come back now.
        for j in 0..self.procs.len() {
            let p = &mut self.procs[j];
            if p.awaits_supervisor
                && p.st == St::Failed
                && self.t.secondaries[j].life.supervisor.as_ref() == Some(&id)
            {
                p.awaits_supervisor = false;
                p.st = St::Restarting;
                p.restart_at = Some(Instant::now());
                p.restarts += 1;
                self.gate.set(&self.t.secondaries[j].id, Avail::Pending);
                (self.emit)(EventKind::Restarting {
                    id: self.t.secondaries[j].id.clone(),
                    restart: 0,
                    after_ms: 0.0,
                });
            }
        }
        for j in self.running_dependents(i) {
            if let Some(k) = self.procs[j].without.iter().position(|d| d == &id) {
                self.procs[j].without.remove(k);
                self.write_missing(j);
                self.notice(j, NoticeKind::DependencyRestored, &format!("{id}: ready again"), 0);
            }
        }
    }

    fn write_missing(&self, j: usize) {
        if let Some(w) = self.procs[j].staged.as_ref().and_then(|s| s.window.as_ref()) {
            w.apply(&life::encode_missing(&self.procs[j].without));
        }
    }

    /// Post a notice into `j`'s window; its number, if it has a window.
    fn notice(&mut self, j: usize, kind: NoticeKind, about: &str, deadline_ms: u64) -> Option<u32> {
        let id = self.sec(j).id.clone();
        let p = &mut self.procs[j];
        if p.unwatched {
            // Released into firmware or over the network: nobody reads its window.
            return None;
        }
        let w = p.staged.as_ref().and_then(|s| s.window.as_ref())?;
        let seq = msg::next_seq(p.notice_seq);
        p.notice_seq = seq;
        if matches!(kind, NoticeKind::Shutdown | NoticeKind::Reboot) {
            p.leaving = true;
        }
        p.posted.push_back((seq, kind));
        if p.posted.len() > 16 {
            p.posted.pop_front();
        }
        let n = Notice { kind, deadline_ms, text: about.to_string() };
        w.post(&life::encode_notice(seq, self.epoch, &n), layout::DB_TO_SECONDARY);
        (self.emit)(EventKind::Notice { id, notice: kind.name().into(), about: about.into(), deadline_ms });
        Some(seq)
    }

    fn answered(&mut self, i: usize, a: life::NoticeAnswer) {
        let id = self.sec(i).id.clone();
        let Some(kind) = self.procs[i].posted.iter().find(|(seq, _)| *seq == a.notice).map(|(_, k)| *k)
        else {
            // An answer to nothing we posted (peer data): noted, not acted on.
            tracing::warn!(processor = %id, notice = a.notice, "an answer to a notice that was never posted; ignored");
            return;
        };
        let (answer, reason) = answer_parts(&a.answer);
        (self.emit)(EventKind::Answer { id: id.clone(), notice: kind.name().into(), answer, reason });
        let Some(op) = self.op.as_mut() else { return };
        let Some(wait) = op.wait.as_mut() else { return };
        let Some(k) = wait.pending.iter().position(|(j, seq)| *j == i && *seq == a.notice) else {
            return;
        };
        match &a.answer {
            Answer::Ack => {
                wait.pending.remove(k);
            }
            Answer::Defer(why) => {
                let left = wait.until.saturating_duration_since(Instant::now());
                let line = format!(
                    "{id} defers the {}: {} (waiting up to {} more; --force overrides)",
                    kind.name(),
                    monarch_proto::text::printable(why, 200),
                    fmt_d(left)
                );
                if let Some(r) = &op.reply {
                    let _ = r.send(Reply::Progress { line });
                }
            }
        }
    }

    /// Stop `i` on purpose (reboot, shutdown, power off): give an image that acknowledged a
    /// moment to exit by itself, then kill it; record why; take its ports down; tell its
    /// dependents.
    fn stop(&mut self, i: usize, cause: &str, then: Then) {
        let id = self.sec(i).id.clone();
        if let Some(s) = self.procs[i].staged.as_mut() {
            let until = Instant::now() + EXIT_GRACE;
            if let Some(c) = s.child.as_mut() {
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
            } else if let Some(pid) = s.adopted_pid {
                // Adopted from a monarch that died: not our child, watched by its pid.
                while monarch_drivers::host::alive(pid) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            self.kill(i);
        }
        let was_running = self.procs[i].st == St::Running;
        let p = &mut self.procs[i];
        p.staged = None;
        p.ready = false;
        p.leaving = false;
        p.gone = false;
        let action = match then {
            Then::Reboot => {
                p.st = St::Booting;
                self.gate.set(&id, Avail::Pending);
                "rebooted"
            }
            Then::ShutDown => {
                p.st = St::ShutDown;
                p.admin_up = false;
                p.why = Some(cause.to_string());
                self.gate.set(&id, Avail::Down(cause.to_string()));
                (self.emit)(EventKind::Down { id: id.clone(), state: "shut_down".into(), why: cause.into() });
                "shut down"
            }
            Then::Off => {
                p.st = St::Off;
                self.gate.set(&id, Avail::Pending);
                (self.emit)(EventKind::Down { id: id.clone(), state: "off".into(), why: cause.into() });
                "powered off"
            }
        };
        if was_running {
            self.record(i, cause, action);
        }
        self.ports(i, false);
        self.dependency_lost(i, cause);
    }

    fn step_ops(&mut self, stage: &mut Vec<usize>) {
        loop {
            if self.op.is_none() {
                match self.ops.pop_front() {
                    Some(op) => self.op = Some(op),
                    None => return,
                }
            }
            let now = Instant::now();
            let Some(op) = self.op.as_mut() else { return };
            if op.pause_until.is_some_and(|t| now < t) {
                return;
            }
            if let Some(wait) = &op.wait {
                if wait.pending.is_empty() {
                    op.wait = None;
                } else if now >= wait.until {
                    let kind = wait.kind;
                    let late: Vec<usize> = wait.pending.iter().map(|(j, _)| *j).collect();
                    op.wait = None;
                    for j in late {
                        let id = self.t.secondaries[j].id.clone();
                        if let Some(r) = &op.reply {
                            let _ = r.send(Reply::Progress {
                                line: format!("{id}: the {} deadline passed; going on", kind.name()),
                            });
                        }
                        (self.emit)(EventKind::Overridden {
                            id,
                            notice: kind.name().into(),
                            why: "deadline".into(),
                        });
                    }
                } else {
                    // Drop the secondaries that are gone meanwhile: they cannot answer.
                    let procs = &self.procs;
                    if let Some(w) = op.wait.as_mut() {
                        w.pending.retain(|(j, _)| procs[*j].st == St::Running && !procs[*j].gone);
                    }
                    return;
                }
            }
            let Some(step) = op.steps.pop_front() else {
                let op = self.op.take();
                if let Some(op) = op {
                    let reply = match &op.error {
                        None => Reply::ok(json!({ "done": op.what })),
                        Some(e) => Reply::error(e.clone()),
                    };
                    if let Some(r) = op.reply {
                        let _ = r.send(reply);
                    }
                }
                continue;
            };
            match step {
                Step::Notify { ids, kind, about } => {
                    let (force, deadline) = (op.force, op.deadline);
                    let deadline_ms =
                        if force { 0 } else { u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX) };
                    let mut pending = Vec::new();
                    for j in ids {
                        if self.procs[j].st != St::Running {
                            continue;
                        }
                        if let Some(seq) = self.notice(j, kind, &about, deadline_ms) {
                            if force {
                                let id = self.sec(j).id.clone();
                                (self.emit)(EventKind::Overridden {
                                    id,
                                    notice: kind.name().into(),
                                    why: "force".into(),
                                });
                            } else {
                                pending.push((j, seq));
                            }
                        }
                    }
                    if let Some(op) = self.op.as_mut()
                        && !pending.is_empty()
                    {
                        op.wait = Some(NoticeWait { until: now + deadline, kind, pending });
                    }
                }
                Step::Stop { id, cause, then } => {
                    if matches!(self.procs[id].st, St::Running | St::Booting | St::Restarting) {
                        self.stop(id, &cause, then);
                    } else if then == Then::Off && self.procs[id].st == St::Failed {
                        self.procs[id].st = St::Off;
                    }
                }
                Step::Start { id } => {
                    let p = &mut self.procs[id];
                    if !matches!(p.st, St::Running) {
                        p.st = St::Booting;
                        p.admin_up = true;
                        p.why = None;
                        p.awaits_supervisor = false;
                        self.gate.set(&self.t.secondaries[id].id, Avail::Pending);
                        // A stage of it that still runs (it was taken down while it came up)
                        // delivers this boot: never two at once.
                        if !p.staging {
                            p.staging = true;
                            stage.push(id);
                        }
                    }
                }
                Step::AwaitUp { id } => match self.procs[id].st {
                    St::Booting | St::Restarting => {
                        op.steps.push_front(Step::AwaitUp { id });
                        return;
                    }
                    St::Running => {
                        if let Some(r) = &op.reply {
                            let _ = r.send(Reply::Progress {
                                line: format!("{}: running again", self.t.secondaries[id].id),
                            });
                        }
                    }
                    other => {
                        let why = self.procs[id].why.clone().unwrap_or_else(|| other.name().into());
                        op.error = Some(format!("{} did not come back: {why}", self.t.secondaries[id].id));
                    }
                },
                Step::Power { on, why } => {
                    if self.gate.main_power() != on {
                        self.gate.set_main_power(on);
                        (self.emit)(EventKind::Power { domain: "main".into(), on, why });
                    }
                }
                Step::Close => self.gate.close("the chassis shuts down"),
                Step::Finish => {
                    self.finished = true;
                    self.refuse_pending("the chassis shut down before it was carried out", false);
                    (self.emit)(EventKind::Power {
                        domain: "aux".into(),
                        on: false,
                        why: "the chassis shut down".into(),
                    });
                    self.gate.close("the chassis shut down");
                }
            }
        }
    }

    /// Take an operator's request.
    pub(crate) fn request(&mut self, inc: Incoming) {
        let Incoming { request, reply } = inc;
        if let Request::Status { id, history } = &request {
            let _ = reply.send(self.status(id.as_deref(), *history));
            return;
        }
        if let Request::Events = &request {
            self.followers.push(reply);
            return;
        }
        if self.finished || self.signalled || self.closing {
            let _ = reply.send(Reply::error("the chassis is shutting down"));
            return;
        }
        let known = || self.t.secondaries.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", ");
        let lookup = |id: &str| {
            self.index(id).ok_or_else(|| {
                format!("no processor {id:?} in chassis {}; its secondaries are: {}", self.t.name, known())
            })
        };
        let ms = |d: u64| Duration::from_millis(d);
        let op = match &request {
            Request::Reboot { id, force, deadline_ms } => lookup(id).and_then(|i| {
                match self.procs[i].st {
                    St::ShutDown => {
                        return Err(format!("{id} is shut down: bring it up with `monarch startup {id}`"));
                    }
                    St::Off => return Err(format!("{id} is off with main power: `monarch power on`")),
                    St::Booting | St::Restarting => {
                        return Err(format!(
                            "{id} is {} already: wait until it runs (`monarch status {id}`)",
                            self.procs[i].st.name()
                        ));
                    }
                    St::Running | St::Failed => {}
                }
                Ok(self.reboot(i, *force, ms(*deadline_ms), reply.clone()))
            }),
            Request::Shutdown { id: Some(id), force, deadline_ms } => {
                lookup(id).map(|i| self.shutdown_one(i, *force, ms(*deadline_ms), reply.clone()))
            }
            Request::Shutdown { id: None, force, deadline_ms } => {
                self.closing = true;
                Ok(self.shutdown_chassis(*force, ms(*deadline_ms), Some(reply.clone())))
            }
            Request::Startup { id } => lookup(id).and_then(|i| match self.procs[i].st {
                St::ShutDown | St::Failed => {
                    let p = &mut self.procs[i];
                    p.budget = RestartBudget::new(
                        self.t.secondaries[i].life.max_restarts,
                        self.t.secondaries[i].life.restart_window,
                        self.t.secondaries[i].life.restart_backoff,
                    );
                    Ok(self.op(
                        format!("startup {id}"),
                        vec![Step::Start { id: i }, Step::AwaitUp { id: i }],
                        false,
                        Duration::ZERO,
                        reply.clone(),
                    ))
                }
                St::Off => Err(format!("{id} is off with main power: `monarch power on`")),
                other => Err(format!("{id} is {} already", other.name())),
            }),
            Request::Power { on: true, .. } => {
                if self.gate.main_power() {
                    Err("main power is on already".into())
                } else {
                    self.auto_power_done = true;
                    let mut steps = vec![Step::Power { on: true, why: "operator".into() }];
                    let mut started = Vec::new();
                    for level in &self.levels {
                        for &i in level {
                            if self.procs[i].st == St::Off && self.sec(i).life.power == PowerDomain::Main {
                                steps.push(Step::Start { id: i });
                                started.push(i);
                            }
                        }
                    }
                    // Done when the main domain runs again, as `reboot` and `startup` are.
                    steps.extend(started.into_iter().map(|id| Step::AwaitUp { id }));
                    Ok(self.op("power on".into(), steps, false, Duration::ZERO, reply.clone()))
                }
            }
            Request::Power { on: false, force, deadline_ms } => {
                if !self.gate.main_power() {
                    Err("main power is off already".into())
                } else {
                    self.auto_power_done = true;
                    let mut steps = self.shutdown_steps(PowerDomain::Main, Then::Off, "main power goes off");
                    steps.push(Step::Power { on: false, why: "operator".into() });
                    Ok(self.op("power off".into(), steps, *force, ms(*deadline_ms), reply.clone()))
                }
            }
            Request::Status { .. } | Request::Events => return,
        };
        match op {
            Ok(op) => {
                (self.emit)(EventKind::Request { what: op.what.clone() });
                self.ops.push_back(op);
            }
            Err(e) => {
                let _ = reply.send(Reply::error(e));
            }
        }
    }

    fn op(
        &self,
        what: String,
        steps: Vec<Step>,
        force: bool,
        deadline: Duration,
        reply: Sender<Reply>,
    ) -> Op {
        Op {
            what,
            steps: steps.into(),
            force,
            deadline,
            reply: Some(reply),
            wait: None,
            pause_until: None,
            error: None,
        }
    }

    fn reboot(&self, i: usize, force: bool, deadline: Duration, reply: Sender<Reply>) -> Op {
        let id = self.sec(i).id.clone();
        let steps = vec![
            Step::Notify {
                ids: self.running_dependents(i),
                kind: NoticeKind::DependencyLeaving,
                about: format!("{id} reboots"),
            },
            Step::Notify {
                ids: vec![i],
                kind: NoticeKind::Reboot,
                about: "requested by the operator".into(),
            },
            Step::Notify {
                ids: self.running_dependencies(i),
                kind: NoticeKind::PeerReboot,
                about: format!("{id} reboots: clean up its context"),
            },
            Step::Stop { id: i, cause: "reboot requested by the operator".into(), then: Then::Reboot },
            Step::Start { id: i },
            Step::AwaitUp { id: i },
        ];
        self.op(format!("reboot {id}"), steps, force, deadline, reply)
    }

    fn shutdown_one(&self, i: usize, force: bool, deadline: Duration, reply: Sender<Reply>) -> Op {
        let id = self.sec(i).id.clone();
        let steps = vec![
            Step::Notify {
                ids: self.running_dependents(i),
                kind: NoticeKind::DependencyLeaving,
                about: format!("{id} shuts down"),
            },
            Step::Notify {
                ids: vec![i],
                kind: NoticeKind::Shutdown,
                about: "requested by the operator".into(),
            },
            Step::Stop { id: i, cause: "shut down by the operator".into(), then: Then::ShutDown },
        ];
        self.op(format!("shutdown {id}"), steps, force, deadline, reply)
    }

    /// Shut down every secondary of `domain`, in reverse dependency order: each level is
    /// notified and acknowledges (or its deadline passes) before it is stopped, and before
    /// the level below is notified.
    fn shutdown_steps(&self, domain: PowerDomain, then: Then, about: &str) -> Vec<Step> {
        let mut steps = Vec::new();
        for level in self.levels.iter().rev() {
            let ids: Vec<usize> =
                level.iter().copied().filter(|i| self.sec(*i).life.power == domain).collect();
            if ids.is_empty() {
                continue;
            }
            steps.push(Step::Notify { ids: ids.clone(), kind: NoticeKind::Shutdown, about: about.into() });
            for i in ids {
                steps.push(Step::Stop { id: i, cause: format!("{about} (operator)"), then });
            }
        }
        steps
    }

    fn shutdown_chassis(&mut self, force: bool, deadline: Duration, reply: Option<Sender<Reply>>) -> Op {
        self.closing = true;
        if self.held() {
            let _ = sd_notify::notify(&[
                sd_notify::NotifyState::Stopping,
                sd_notify::NotifyState::Status("shutting the chassis down in reverse dependency order"),
            ]);
        }
        // Nothing more is released: stages still waiting at the gate stop (and are reported
        // shut down, not failed).
        let mut steps = vec![Step::Close];
        steps.extend(self.shutdown_steps(PowerDomain::Main, Then::ShutDown, "the chassis shuts down"));
        steps.push(Step::Power { on: false, why: "the chassis shuts down".into() });
        steps.extend(self.shutdown_steps(PowerDomain::Aux, Then::ShutDown, "the chassis shuts down"));
        steps.push(Step::Finish);
        Op {
            what: "shutdown".into(),
            steps: steps.into(),
            force,
            deadline,
            reply,
            wait: None,
            pause_until: None,
            error: None,
        }
    }

    fn status(&self, id: Option<&str>, history: bool) -> Reply {
        let only = match id {
            Some(id) => match self.index(id) {
                Some(i) => Some(i),
                None => {
                    let known: Vec<&str> = self.t.secondaries.iter().map(|s| s.id.as_str()).collect();
                    return Reply::error(format!(
                        "no processor {id:?} in chassis {}; its secondaries are: {}",
                        self.t.name,
                        known.join(", ")
                    ));
                }
            },
            None => None,
        };
        let empty: &[Cause] = &[];
        let procs: Vec<serde_json::Value> = (0..self.procs.len())
            .filter(|i| only.is_none_or(|o| o == *i))
            .map(|i| {
                let s = self.sec(i);
                let p = &self.procs[i];
                let causes = self.causes.as_ref().map_or(empty, |c| c.history(&s.id));
                let last: Vec<&Cause> = causes.iter().rev().take(3).collect();
                let pid = p
                    .staged
                    .as_ref()
                    .and_then(|st| st.child.as_ref().map(std::process::Child::id).or(st.adopted_pid));
                let mut v = json!({
                    "id": s.id,
                    "state": p.st.name(),
                    "admin": if p.admin_up { "up" } else { "down" },
                    "ready": p.ready,
                    "pid": if p.st == St::Running { pid } else { None },
                    "restarts": p.restarts,
                    "power": s.life.power.name(),
                    "supervisor": s.life.supervisor.clone().unwrap_or_else(|| "monarch".into()),
                    "without": p.without,
                    "ports": s.life.ports,
                    "last_causes": last,
                });
                if let Some(why) = &p.why {
                    v["why"] = json!(why);
                }
                if history {
                    v["history"] = json!(causes);
                }
                v
            })
            .collect();
        Reply::ok(json!({
            "chassis": self.t.name,
            "epoch": self.epoch,
            "main_power": if self.gate.main_power() { "on" } else { "off" },
            "main_power_mode": match self.t.main_power { MainPower::Auto => "auto", MainPower::Manual => "manual" },
            "state_dir": self.hold.as_ref().map(|h| h.state_dir.display().to_string()),
            "processors": procs,
        }))
    }

    /// The end of the run: the stages' results, with what happened to them since.
    pub(crate) fn into_results(self) -> Vec<(Option<Staged>, Option<ProcessorSummary>)> {
        self.procs
            .into_iter()
            .map(|p| {
                let summary = p.summary.map(|mut s| {
                    match p.st {
                        St::Failed if s.state == "running" => {
                            s.state = "failed".into();
                            s.error = p.why.clone();
                        }
                        St::ShutDown | St::Off if s.state == "running" => s.state = "shut_down".into(),
                        _ => {}
                    }
                    s.without = p.without.clone();
                    s
                });
                (p.staged, summary)
            })
            .collect()
    }
}

fn answer_parts(a: &Answer) -> (String, Option<String>) {
    match a {
        Answer::Ack => ("ack".into(), None),
        Answer::Defer(why) => ("defer".into(), Some(monarch_proto::text::printable(why, 200))),
    }
}

fn fmt_d(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
        .to_string()
}

/// How an image's process ended, for its reboot cause.
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("its image exited with status {code}"),
        (None, Some(sig)) => {
            let name = match sig {
                9 => " (SIGKILL)",
                15 => " (SIGTERM)",
                11 => " (SIGSEGV)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                _ => "",
            };
            format!("its image was killed by signal {sig}{name}")
        }
        _ => format!("its image ended ({status})"),
    }
}
