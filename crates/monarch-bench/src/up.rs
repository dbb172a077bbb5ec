//! `monarch bench up`: the main job's wall time. `monarch up` on a chassis (the built-in
//! default unless a topology is given) runs `--runs` times, each a child process timed from
//! its start to its exit; the median and p90 are printed with the breakdown by phase, beside
//! what the copies alone would cost: memcpy of every secondary's image into a fresh shared
//! mapping, measured in the same run (the floor of any delivery through windows).
//!
//! The breakdown, per run: for each phase of the secondaries' boot (queued behind a switch,
//! retrieve, configure, rendezvous, copy, verify, handoff) the slowest secondary's time, since the boot waits for
//! the last one; `boot` is the summary's own total (from the boot's start inside `monarch up`
//! to its summary) and `outside` the rest of the wall time (starting the process, reading the
//! topology, the monarch election, stopping the images at the end). The figures printed are
//! medians over the runs.

use crate::clusters::{median, pct};
use crate::window::{memcpy_reference, pattern};
use monarch_boot::events::{EventKind, Summary};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How long one `monarch up` may take before the bench gives up on it.
const LIMIT: Duration = Duration::from_secs(120);

/// The phases of a secondary's boot, in order, as the summary's `timings_ms` names them.
/// `queued`: waiting behind the other secondaries on its switch (they are staged one after
/// another).
pub const PHASES: [&str; 7] = ["queued", "retrieve", "configure", "rendezvous", "copy", "verify", "handoff"];

/// Options of `monarch bench up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Runs.
    pub runs: u32,
    /// Topology file; `None`: the built-in default chassis.
    pub topology: Option<PathBuf>,
    /// The `monarch` executable.
    pub exe: PathBuf,
}

/// One run, measured.
#[derive(Debug, Clone, Serialize)]
pub struct UpRun {
    /// From the command's start to its exit, ms.
    pub wall_ms: f64,
    /// The summary's total: the boot inside `monarch up`, ms.
    pub boot_ms: f64,
    /// Each phase's slowest secondary, ms.
    pub phases_ms: BTreeMap<String, f64>,
}

/// The result of `monarch bench up`.
#[derive(Debug, Clone, Serialize)]
pub struct UpBench {
    /// `"up"`.
    pub bench: &'static str,
    /// The chassis booted.
    pub chassis: String,
    /// Secondaries booted per run.
    pub secondaries: usize,
    /// Runs.
    pub runs: usize,
    /// Median wall time, ms.
    pub wall_ms: f64,
    /// p90 wall time (nearest rank), ms.
    pub wall_p90_ms: f64,
    /// Median of the boot's own total, ms.
    pub boot_ms: f64,
    /// Median of what lies outside the boot (process start, election, shutdown), ms.
    pub outside_ms: f64,
    /// Median of each phase's slowest secondary, ms.
    pub phases_ms: BTreeMap<String, f64>,
    /// Bytes of every secondary's image together.
    pub image_bytes: u64,
    /// The reference: memcpy into a fresh shared mapping, one core, best of 3, GiB/s.
    pub memcpy_gib_s: f64,
    /// What copying every image would take at that speed, one after another, ms.
    pub memcpy_ms: f64,
    /// `wall_ms / memcpy_ms`.
    pub wall_over_memcpy: f64,
    /// Every run.
    pub samples: Vec<UpRun>,
}

/// Run `monarch up --json` once, timed from outside.
fn run_once(opts: &UpOptions) -> Result<(UpRun, Summary), String> {
    let mut cmd = Command::new(&opts.exe);
    cmd.arg("up").arg("--json");
    if let Some(t) = &opts.topology {
        cmd.arg("--topology").arg(t);
    }
    let (events, status, wall_ms) = crate::run::run_up(&mut cmd, LIMIT)?;
    let summary = events.into_iter().rev().find_map(|e| match e.kind {
        EventKind::Summary(s) => Some(s),
        _ => None,
    });
    let summary = summary.ok_or_else(|| format!("monarch up printed no summary (ran out of {LIMIT:?}?)"))?;
    if !status.success() || !summary.ok {
        let why: Vec<String> = summary.processors.iter().filter_map(|p| p.error.clone()).collect();
        return Err(format!("monarch up failed ({status}): {}", why.join("; ")));
    }
    let secs = summary.processors.iter().filter(|p| p.role == "secondary");
    let mut phases_ms: BTreeMap<String, f64> = PHASES.iter().map(|p| ((*p).to_string(), 0.0)).collect();
    for p in secs {
        let t = &p.timings_ms;
        for (name, ms) in
            PHASES.iter().zip([t.queued, t.retrieve, t.configure, t.rendezvous, t.copy, t.verify, t.handoff])
        {
            let slot = phases_ms.entry((*name).to_string()).or_default();
            *slot = slot.max(ms);
        }
    }
    Ok((UpRun { wall_ms, boot_ms: summary.total_ms, phases_ms }, summary))
}

/// Run the bench.
pub fn bench(opts: &UpOptions, progress: &mut dyn FnMut(&str)) -> Result<UpBench, String> {
    let runs = opts.runs.max(1) as usize;
    let mut samples = Vec::with_capacity(runs);
    let mut last: Option<Summary> = None;
    for k in 1..=runs {
        let (run, summary) = run_once(opts)?;
        progress(&format!(
            "run {k}/{runs}: {:.1} ms wall, boot {:.1} ms, slowest copy {:.1} ms",
            run.wall_ms,
            run.boot_ms,
            run.phases_ms.get("copy").copied().unwrap_or(0.0)
        ));
        samples.push(run);
        last = Some(summary);
    }
    let summary = last.ok_or("no run")?;
    let secondaries: Vec<_> = summary.processors.iter().filter(|p| p.role == "secondary").collect();
    let image_bytes: u64 = secondaries.iter().map(|p| p.image_bytes).sum();
    let largest = secondaries.iter().map(|p| p.image_bytes).max().unwrap_or(0).max(1 << 20);
    // The reference, in the same run: one image's worth into a fresh shared mapping.
    progress("reference: memcpy into a fresh shared mapping");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let piece = pattern(1 << 20, 7);
    let memcpy_gib_s = memcpy_reference(dir.path(), &piece, largest, largest, 3)?;
    let memcpy_ms = image_bytes as f64 / (memcpy_gib_s * f64::from(1u32 << 30)) * 1e3;
    let walls: Vec<f64> = samples.iter().map(|s| s.wall_ms).collect();
    let boots: Vec<f64> = samples.iter().map(|s| s.boot_ms).collect();
    let outside: Vec<f64> = samples.iter().map(|s| s.wall_ms - s.boot_ms).collect();
    let phases_ms = PHASES
        .iter()
        .map(|p| {
            let v: Vec<f64> = samples.iter().map(|s| s.phases_ms.get(*p).copied().unwrap_or(0.0)).collect();
            ((*p).to_string(), median(&v))
        })
        .collect();
    let wall_ms = median(&walls);
    Ok(UpBench {
        bench: "up",
        chassis: summary.chassis.clone(),
        secondaries: secondaries.len(),
        runs,
        wall_ms,
        wall_p90_ms: pct(&walls, 90),
        boot_ms: median(&boots),
        outside_ms: median(&outside),
        phases_ms,
        image_bytes,
        memcpy_gib_s,
        memcpy_ms,
        wall_over_memcpy: wall_ms / memcpy_ms.max(1e-9),
        samples,
    })
}

/// For people.
pub fn render(r: &UpBench) -> String {
    let mut s = format!(
        "\nmonarch bench up: chassis \"{}\", {} secondaries, {} runs\n\n\
         \x20 reference  memcpy into a fresh shared mapping, one core   {:>8.2} GiB/s\n\
         \x20            every image copied at that speed ({})        {:>8.1} ms\n\n\
         \x20 monarch up wall time     median {:>8.1} ms   p90 {:>8.1} ms   ({:.1}x the copies' memcpy time)\n\
         \x20   the boot itself        median {:>8.1} ms\n\
         \x20   outside the boot       median {:>8.1} ms   (process start, election, shutdown)\n\n\
         \x20 by phase, the slowest secondary's time (medians):\n",
        r.chassis,
        r.secondaries,
        r.runs,
        r.memcpy_gib_s,
        monarch_boot::values::fmt_size(r.image_bytes),
        r.memcpy_ms,
        r.wall_ms,
        r.wall_p90_ms,
        r.wall_over_memcpy,
        r.boot_ms,
        r.outside_ms,
    );
    for p in PHASES {
        s.push_str(&format!("    {p:<11} {:>8.1} ms\n", r.phases_ms.get(p).copied().unwrap_or(0.0)));
    }
    s
}
