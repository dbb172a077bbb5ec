//! `monarch up` for a chassis with several management processors: the backplane, one
//! `monarch candidate` process each, their events relayed, and the summary.
use crate::events::{ElectionSummary, Event, EventKind, FailoverSummary, ProcessorSummary, Summary};
use crate::plan::Plan;
use crate::run::UpOptions;
use crate::topology::ElectionBackend;
use monarch_drivers::Window;
use monarch_proto::window::layout;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// The backplane: one register page every candidate of the chassis maps.
use super::backplane::Backplane;
use super::candidate::unix_nanos;

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
    if t.run_dir_is_temporary {
        if let Err(why) = crate::run_folder::create(&t.run_dir) {
            return fail(why.to_string());
        }
    } else if let Err(e) = std::fs::create_dir_all(&t.run_dir) {
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
    let redfish = opts.hold.as_ref().and_then(|h| h.redfish.as_ref());
    for (k, m) in t.managers.iter().enumerate() {
        let args = crate::cmdline::CandidateArgs {
            topo: crate::cmdline::TopologyOpt {
                topology: match source {
                    TopologySource::File(f) => Some(f.clone()),
                    TopologySource::Builtin => None,
                },
            },
            index: k,
            backplane: matches!(t.election.backend, ElectionBackend::Backplane).then(|| bp_path.clone()),
            // One etcd election per run: this run's start names it.
            session: match t.election.backend {
                ElectionBackend::Backplane => "boot".into(),
                ElectionBackend::Etcd(_) => t0.to_string(),
            },
            monarch: pinned.and_then(|p| t.managers.get(p)).map(|p| p.id.clone()),
            run_dir: t.run_dir.clone(),
            t0_unix_ns: t0,
            shutdown_grace: opts.shutdown_grace,
            hold_state_dir: opts.hold.as_ref().map(|h| h.state_dir.clone()),
            hold_deadline: opts.hold.as_ref().map_or(Duration::from_secs(10), |h| h.deadline),
            hold_metrics: opts.hold.as_ref().and_then(|h| h.metrics),
            hold_redfish: redfish.map(|r| r.addr),
            hold_redfish_users: redfish.map(|r| r.users.clone()),
            hold_redfish_certificate: redfish.and_then(|r| r.certificate.clone()),
            hold_redfish_key: redfish.and_then(|r| r.key.clone()),
        };
        let mut cmd = Command::new(&opts.agent_exe);
        crate::logs::inherit(&mut cmd);
        cmd.args(args.to_args())
            .env("MONARCH_SUPERVISOR", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let log = t.run_dir.join(format!("{}.candidate.log", m.id));
        let file = crate::stage::open_log(&log).ok();
        // A supervised chassis (a service, under systemd) runs for long in a candidate: its
        // logs go to our stderr too (the journal), not only to the run folder's file.
        let relay_logs = opts.hold.is_some();
        match (&file, relay_logs) {
            (_, true) => cmd.stderr(Stdio::piped()),
            (Some(f), false) => match f.try_clone() {
                Ok(f) => cmd.stderr(f),
                Err(_) => cmd.stderr(Stdio::null()),
            },
            (None, false) => cmd.stderr(Stdio::null()),
        };
        match cmd.spawn() {
            Ok(mut c) => {
                if let Some(err) = c.stderr.take() {
                    let mut file = file;
                    readers.push(std::thread::spawn(move || {
                        use std::io::Write as _;
                        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                            if let Some(f) = file.as_mut() {
                                let _ = writeln!(f, "{line}");
                            }
                            let _ = writeln!(std::io::stderr().lock(), "{line}");
                        }
                    }));
                }
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
                // Parked, so that the end of the run wakes it at once.
                std::thread::park_timeout(Duration::from_millis(20));
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
    relay.thread().unpark();
    let _ = relay.join();
    let mut exits = Vec::new();
    for c in children.iter_mut() {
        exits.push(c.as_mut().and_then(|c| c.wait().ok()));
    }
    // What the candidates left us: orphaned images nobody shut down (the boot did not
    // finish, or a deposed monarch's agents) are stopped; nothing outlives the chassis.
    // Each is waited for: a killed process with 30 MiB mapped takes a while to finish
    // exiting, and the summary must not come out while one still runs.
    for _ in 0..10 {
        let left = monarch_drivers::host::children_of(std::process::id());
        if left.is_empty() {
            break;
        }
        for &pid in &left {
            monarch_drivers::host::signal(pid, rustix::process::Signal::KILL);
        }
        for pid in left {
            if let Some(p) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
            }
        }
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
