//! Execute a plan: every lane in parallel, the secondaries of a lane one after another;
//! events to the caller as they happen; a summary at the end.

use crate::events::{Event, EventKind, ProcessorSummary, Summary};
use crate::plan::Plan;
use crate::stage::{Authority, StageCtx, Staged, stage};
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
        let mut monarch =
            ProcessorSummary::new(authority.name.unwrap_or(plan.monarch()), "monarch", "failed");
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
        return summary;
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
    let mut staged: Vec<Option<Staged>> = (0..t.secondaries.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for lane in &plan.lanes {
            let tx = tx.clone();
            let members = lane.members();
            let agent_exe = opts.agent_exe.as_path();
            handles.push(scope.spawn(move || {
                let emit = move |kind| {
                    let _ = tx.send(Event { t_ms: clock.elapsed().as_secs_f64() * 1e3, kind });
                };
                let lane_start = Instant::now();
                let mut out = Vec::new();
                for i in members {
                    let ctx =
                        StageCtx { clock, emit: &emit, agent_exe, queued: lane_start.elapsed(), authority };
                    out.push((i, stage(&t.secondaries[i], &ctx)));
                }
                out
            }));
        }
        drop(tx);
        for ev in rx {
            on_event(&ev);
        }
        for h in handles {
            match h.join() {
                Ok(results) => {
                    for (i, s) in results {
                        staged[i] = Some(s);
                    }
                }
                Err(_) => {
                    eprintln!("monarch: a staging thread panicked; its secondaries are reported failed")
                }
            }
        }
    });
    let total_ms = clock.elapsed().as_secs_f64() * 1e3;
    // End of the emulated run: ask running images to stop, then make sure they did.
    if (authority.check)().is_ok() {
        shutdown(&mut staged, opts.shutdown_grace, authority);
    }
    let mut monarch = ProcessorSummary::new(monarch_id, "monarch", "monarch");
    monarch.timings_ms.total = total_ms;
    let mut processors = vec![monarch];
    for (i, s) in staged.into_iter().enumerate() {
        processors.push(match s {
            Some(s) => s.summary,
            None => failed_summary(&t.secondaries[i].id, "its staging thread died"),
        });
    }
    if t.run_dir_is_temporary {
        let _ = std::fs::remove_dir_all(&t.run_dir);
    }
    let ok = processors
        .iter()
        .filter(|p| p.role == "secondary" && p.required)
        .all(|p| matches!(p.state.as_str(), "running" | "released"));
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
