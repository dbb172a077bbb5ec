//! Execute a plan: every secondary in parallel, those behind one switch taking turns on its
//! link for their copy and verification; events to the caller as they happen; a summary at
//! the end.

use crate::events::{Event, EventKind, ProcessorSummary, Summary};
use crate::gate::Gate;
use crate::plan::Plan;
use crate::stage::link::{Link, Turn};
use crate::stage::{Authority, StageCtx, Staged, stage};
use crate::supervise::control;
pub use crate::supervise::keeper::HoldOptions;
use crate::supervise::keeper::Keeper;
use monarch_proto::window::layout;
use monarch_proto::window::msg::{self, Command};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Options of `monarch up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The `monarch` binary that agents are started with.
    pub agent_exe: PathBuf,
    /// How long running images get to stop after SHUTDOWN at the end of the run.
    pub shutdown_grace: Duration,
    /// Keep the chassis managed after the boot (`monarch up --hold`).
    pub hold: Option<HoldOptions>,
}

/// Boot everything in `plan`, calling `on_event` for every event (the summary last).
pub fn up(plan: &Plan, opts: &UpOptions, on_event: &mut dyn FnMut(&Event)) -> Summary {
    boot(plan, opts, &Authority::sole(), Instant::now(), on_event)
}

/// [`up`] on the authority of one monarch of several (monarch election): its command block and
/// epoch, resuming what a previous monarch left, and stopping at once when deposed. Event
/// times count from `clock`.
pub fn boot(
    plan: &Plan,
    opts: &UpOptions,
    authority: &Authority<'_>,
    clock: Instant,
    on_event: &mut dyn FnMut(&Event),
) -> Summary {
    let t = &plan.topology;
    if t.run_dir_is_temporary
        && let Err(why) = crate::run_folder::create(&t.run_dir)
    {
        return refused(plan, authority, clock, why.to_string(), on_event);
    }
    let (tx, rx) = mpsc::channel::<Event>();
    let send = |tx: &mpsc::Sender<Event>, kind| {
        let _ = tx.send(Event { t_ms: clock.elapsed().as_secs_f64() * 1e3, kind });
    };
    let monarch_id = authority.name.unwrap_or(plan.monarch());
    if !authority.resume {
        send(
            &tx,
            EventKind::Start {
                chassis: t.name.clone(),
                monarch: monarch_id.into(),
                secondaries: t.secondaries.len(),
            },
        );
    }
    let gate = Gate::new(t, opts.hold.is_some());
    let (ctl_tx, ctl_rx) = mpsc::channel::<control::Incoming>();
    let mut causes = None;
    let mut server = None;
    let mut metrics = None;
    let mut metrics_addr = None;
    let mut journal = None;
    if let Some(hold) = &opts.hold {
        // Several management processors: whoever is monarch now serves the socket.
        match prepare_hold(plan, hold, ctl_tx, authority.shared, authority.resume, monarch_id) {
            Ok(held) => {
                server = Some(held.server);
                metrics = held.metrics.map(|(m, addr)| {
                    metrics_addr = Some(addr.to_string());
                    m
                });
                let redfish_addr = held.redfish.as_ref().map(|(_, a)| a.to_string());
                journal = held.redfish.map(|(j, _)| j);
                tracing::info!(
                    chassis = %t.name,
                    socket = %held.socket.display(),
                    state_dir = %hold.state_dir.display(),
                    metrics = metrics_addr.as_deref(),
                    redfish = redfish_addr.as_deref(),
                    "supervising the chassis"
                );
                send(
                    &tx,
                    EventKind::Supervising {
                        chassis: t.name.clone(),
                        socket: held.socket.display().to_string(),
                        state_dir: hold.state_dir.display().to_string(),
                        metrics: metrics_addr.clone(),
                        redfish: redfish_addr,
                    },
                );
                causes = Some(held.causes);
            }
            Err(why) => return refused(plan, authority, clock, why, on_event),
        }
    }
    let mut results: Vec<(Option<Staged>, Option<ProcessorSummary>)> = Vec::new();
    // A secondary booted again starts from scratch, even under a monarch that took over.
    let again_authority = Authority {
        name: authority.name,
        block: authority.block,
        epoch: authority.epoch,
        resume: false,
        check: authority.check,
        shared: authority.shared,
    };
    let again = &again_authority;
    let links: Vec<Option<Link>> = plan
        .lanes
        .iter()
        .map(|lane| matches!(lane, crate::plan::Lane::Switch { .. }).then(|| Link::new(lane.members().len())))
        .collect();
    std::thread::scope(|scope| {
        let (stx, srx) = mpsc::channel::<(usize, Staged)>();
        let agent_exe = opts.agent_exe.as_path();
        let gate = &gate;
        // Every secondary in a thread of its own; those behind one switch take turns on its
        // link for their copy and verification (the rest of their stages run alongside).
        for (lane, link) in plan.lanes.iter().zip(&links) {
            for (place, i) in lane.members().into_iter().enumerate() {
                let tx = tx.clone();
                let stx = stx.clone();
                scope.spawn(move || {
                    let emit = move |kind| {
                        let _ = tx.send(Event { t_ms: clock.elapsed().as_secs_f64() * 1e3, kind });
                    };
                    let turn = link.as_ref().map(|l| Turn::new(l, place));
                    let ctx = StageCtx {
                        clock,
                        emit: &emit,
                        agent_exe,
                        link: turn.as_ref(),
                        authority,
                        gate,
                        again: false,
                    };
                    let _ = stx.send((i, stage(&t.secondaries[i], &ctx)));
                });
            }
        }
        let keeper_tx = tx.clone();
        let keeper_emit = move |kind| {
            let _ = keeper_tx.send(Event { t_ms: clock.elapsed().as_secs_f64() * 1e3, kind });
        };
        let mut keeper =
            Keeper::new(t, gate, &keeper_emit, authority.epoch, opts.hold.clone(), causes.take());
        if let Some(m) = metrics.take() {
            keeper.with_metrics(m);
        }
        if let Some(j) = journal.take() {
            keeper.with_watcher(Box::new(move |ev| j.observe(ev)));
        }
        loop {
            while let Ok(ev) = rx.try_recv() {
                keeper.observe(&ev);
                on_event(&ev);
            }
            while let Ok((i, s)) = srx.try_recv() {
                keeper.staged(i, s);
            }
            while let Ok(inc) = ctl_rx.try_recv() {
                keeper.request(inc);
            }
            for i in keeper.tick() {
                // Booted again (a restart, a reboot, a startup): a stage of its own.
                let tx = tx.clone();
                let stx = stx.clone();
                scope.spawn(move || {
                    let emit = move |kind| {
                        let _ = tx.send(Event { t_ms: clock.elapsed().as_secs_f64() * 1e3, kind });
                    };
                    let ctx = StageCtx {
                        clock,
                        emit: &emit,
                        agent_exe,
                        link: None,
                        authority: again,
                        gate,
                        again: true,
                    };
                    let _ = stx.send((i, stage(&t.secondaries[i], &ctx)));
                });
            }
            if keeper.finished() {
                break;
            }
            if opts.hold.is_some() && (authority.check)().is_err() {
                // Deposed (a monarch that was paused wakes up to a newer one): the chassis is
                // the new monarch's to supervise; stop acting on it at once.
                gate.close("this monarch was deposed");
                tracing::warn!(chassis = %t.name, "deposed by a newer monarch; it supervises the chassis now");
                break;
            }
            if let Ok(ev) = rx.recv_timeout(Duration::from_millis(5)) {
                keeper.observe(&ev);
                on_event(&ev);
            }
        }
        // Stages still waiting at a gate (a shutdown came first) stop now.
        gate.close("the chassis shut down");
        drop(stx);
        // Whatever stage still runs ends (and hands its secondary in) before the summary.
        for (i, s) in srx.iter() {
            keeper.staged(i, s);
        }
        while let Ok(ev) = rx.try_recv() {
            keeper.observe(&ev);
            on_event(&ev);
        }
        results = keeper.into_results();
    });
    drop(tx);
    for ev in rx.try_iter() {
        on_event(&ev);
    }
    if let Some(s) = &server {
        // The last answers (`monarch shutdown`'s) reach their callers before we exit.
        s.drain(Duration::from_secs(2));
        // Deposed, the socket may be the new monarch's already: leave it.
        if (authority.check)().is_ok() {
            s.remove();
        }
    }
    let total_ms = clock.elapsed().as_secs_f64() * 1e3;
    let mut staged: Vec<Option<Staged>> = Vec::new();
    let mut summaries = Vec::new();
    for (s, summary) in results {
        staged.push(s);
        summaries.push(summary);
    }
    // End of the emulated run: ask running images to stop, then make sure they did.
    if (authority.check)().is_ok() {
        shutdown(&mut staged, opts.shutdown_grace, authority);
    }
    let mut monarch = ProcessorSummary::new(monarch_id, "monarch", "monarch");
    monarch.timings_ms.total = total_ms;
    let mut processors = vec![monarch];
    for (i, s) in summaries.into_iter().enumerate() {
        processors.push(match s {
            Some(s) => s,
            None => failed_summary(&t.secondaries[i].id, "its staging thread died"),
        });
    }
    if t.run_dir_is_temporary {
        let _ = std::fs::remove_dir_all(&t.run_dir);
    }
    let ok = processors
        .iter()
        .filter(|p| p.role == "secondary" && p.required)
        .all(|p| matches!(p.state.as_str(), "running" | "released" | "shut_down"));
    // The operator's stop, said once for the whole run (each secondary it cut short says so too).
    let error = processors.iter().any(|p| p.state == "interrupted").then(|| {
        format!(
            "interrupted by {}: staging stopped, what was running was shut down",
            crate::interrupt::received().unwrap_or("a stop signal")
        )
    });
    let summary = Summary { ok, chassis: t.name.clone(), total_ms, processors, election: None, error };
    on_event(&Event { t_ms: total_ms, kind: EventKind::Summary(summary.clone()) });
    summary
}

/// The run could not start: every secondary is reported not booted, for `why`.
fn refused(
    plan: &Plan,
    authority: &Authority<'_>,
    clock: Instant,
    why: String,
    on_event: &mut dyn FnMut(&Event),
) -> Summary {
    let t = &plan.topology;
    let mut monarch = ProcessorSummary::new(authority.name.unwrap_or(plan.monarch()), "monarch", "failed");
    monarch.error = Some(why.clone());
    let mut processors = vec![monarch];
    processors.extend(t.secondaries.iter().map(|s| failed_summary(&s.id, &format!("not booted: {why}"))));
    let total_ms = clock.elapsed().as_secs_f64() * 1e3;
    let summary = Summary {
        ok: false,
        chassis: t.name.clone(),
        total_ms,
        processors,
        election: None,
        error: Some(why),
    };
    on_event(&Event { t_ms: total_ms, kind: EventKind::Summary(summary.clone()) });
    summary
}

/// Before a held boot: the state folder's reboot causes, every port down until its owner is
/// ready (each must exist), the control socket in the run folder, and the metrics and Redfish
/// services if asked for.
fn prepare_hold(
    plan: &Plan,
    hold: &HoldOptions,
    ctl: mpsc::Sender<control::Incoming>,
    take_over: bool,
    resume: bool,
    monarch_id: &str,
) -> Result<Held, String> {
    let t = &plan.topology;
    let causes = crate::supervise::causes::CauseLog::open(&hold.state_dir).map_err(|e| e.to_string())?;
    for s in &t.secondaries {
        for port in &s.life.ports {
            match monarch_drivers::link::exists(port) {
                Ok(true) => monarch_drivers::link::set_up(port, false)
                    .map_err(|e| format!("{}: cannot hold port {port} down until it is ready: {e}", s.id))?,
                Ok(false) => {
                    return Err(format!(
                        "{}: port {port}: network interface {port} does not exist in this network namespace; create it or fix `ports`",
                        s.id
                    ));
                }
                Err(e) => return Err(format!("{}: port {port}: {e}", s.id)),
            }
        }
    }
    std::fs::create_dir_all(&t.run_dir)
        .map_err(|e| format!("cannot create the run folder {}: {e}", t.run_dir.display()))?;
    // Absolute, for the operator who reads it from the events.
    let socket = std::path::absolute(t.run_dir.join(control::SOCKET))
        .map_err(|e| format!("cannot name the control socket in {}: {e}", t.run_dir.display()))?;
    let server = control::serve(&socket, ctl.clone(), take_over).map_err(|e| e.to_string())?;
    let mut metrics = None;
    if let Some(addr) = hold.metrics {
        let ids: Vec<String> = t.secondaries.iter().map(|s| s.id.clone()).collect();
        let m = std::sync::Arc::new(crate::supervise::metrics::Metrics::new(&ids));
        match crate::metrics::serve(addr, m.clone()) {
            Ok(bound) => metrics = Some((m, bound)),
            // A monarch taking over from one that is only paused finds the port taken: it
            // supervises without metrics rather than not at all.
            Err(e) if resume => tracing::warn!(error = %e, "supervising without metrics"),
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut redfish = None;
    if let Some(opts) = &hold.redfish {
        use crate::redfish::{journal::Journal, service, tree};
        let mut managers: Vec<String> = t.managers.iter().map(|m| m.id.clone()).collect();
        if !managers.iter().any(|m| m == monarch_id) {
            managers.insert(0, monarch_id.to_string());
        }
        let info = tree::Info {
            chassis: t.name.clone(),
            chassis_id: crate::topology::sanitize(&t.name),
            uuid: tree::uuid(&t.name),
            systems: t.secondaries.iter().map(|s| s.id.clone()).collect(),
            managers,
            monarch: monarch_id.to_string(),
        };
        let journal = std::sync::Arc::new(Journal::default());
        match service::serve(opts, &hold.state_dir, info, ctl, journal.clone(), hold.deadline) {
            Ok(served) => {
                for w in &served.warnings {
                    tracing::warn!("Redfish: {w}");
                }
                if served.made {
                    tracing::info!(
                        certificate = %served.certificate.display(),
                        sha256 = %served.fingerprint,
                        "Redfish: made a self-signed certificate; give your own with --redfish-cert and --redfish-key"
                    );
                } else {
                    tracing::info!(
                        certificate = %served.certificate.display(),
                        sha256 = %served.fingerprint,
                        "Redfish: serving with its certificate"
                    );
                }
                redfish = Some((journal, served.addr));
            }
            Err(e) if resume => tracing::warn!("{e}; supervising without Redfish"),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(Held { causes, socket, server, metrics, redfish })
}

/// What a held boot starts with.
struct Held {
    /// Reboot causes kept across runs.
    causes: crate::supervise::causes::CauseLog,
    /// The control socket's path.
    socket: PathBuf,
    /// Its server.
    server: control::Server,
    /// The metrics, with the address they are served at.
    metrics: Option<(std::sync::Arc<crate::supervise::metrics::Metrics>, std::net::SocketAddr)>,
    /// The Redfish service's memory of events, with its address.
    redfish: Option<(std::sync::Arc<crate::redfish::journal::Journal>, std::net::SocketAddr)>,
}

fn failed_summary(id: &str, why: &str) -> ProcessorSummary {
    ProcessorSummary { error: Some(why.into()), ..ProcessorSummary::new(id, "secondary", "failed") }
}

fn shutdown(staged: &mut [Option<Staged>], grace: Duration, authority: &Authority<'_>) {
    let block = layout::cmd(authority.block);
    for s in staged.iter().flatten() {
        if let (Some(w), true) = (&s.window, s.child.is_some() || s.adopted_pid.is_some()) {
            let seq = msg::next_seq(w.load32(block.seq));
            w.post(
                &msg::encode_command(authority.block, seq, authority.epoch, &Command::Shutdown),
                layout::DB_TO_SECONDARY,
            );
        }
    }
    let deadline = Instant::now() + grace;
    for s in staged.iter().flatten() {
        // Images another monarch started are not our children: watch them by pid.
        if let Some(pid) = s.adopted_pid {
            while crate::host::alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            // The pid came from the window (peer data): kill it only if it is that secondary's
            // image, which the agent started as `monarch-image:ID`.
            let ours = crate::host::cmdline(pid).first() == Some(&format!("monarch-image:{}", s.summary.id));
            if crate::host::alive(pid) && ours {
                crate::host::signal(pid, rustix::process::Signal::KILL);
            }
        }
    }
    for s in staged.iter_mut().flatten() {
        if let Some(c) = &mut s.child {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}
