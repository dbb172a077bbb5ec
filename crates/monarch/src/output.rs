//! What `monarch up` prints: live progress (bars on a terminal, one line per event
//! otherwise), JSON lines with `--json`, and the final table.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use monarch_boot::events::{Event, EventKind, Summary};
use monarch_boot::plan::Plan;
use monarch_boot::values::fmt_size;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};

pub struct Output {
    json: bool,
    bars: Option<(MultiProgress, HashMap<String, ProgressBar>)>,
}

impl Output {
    pub fn new(json: bool, plan: &Plan) -> Output {
        let bars = (!json && std::io::stderr().is_terminal()).then(|| {
            let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let style =
                ProgressStyle::with_template("{prefix:<8} {wide_msg} [{bar:24}] {bytes:>9}/{total_bytes:<9}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            let mut map = HashMap::new();
            for s in &plan.topology.secondaries {
                let b = mp.add(ProgressBar::new(s.window.data_size));
                b.set_style(style.clone());
                b.set_prefix(s.id.clone());
                b.set_message("waiting");
                map.insert(s.id.clone(), b);
            }
            (mp, map)
        });
        Output { json, bars }
    }

    pub fn event(&mut self, ev: &Event) {
        if self.json {
            if let Ok(line) = serde_json::to_string(ev) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            return;
        }
        if let EventKind::Summary(_) = ev.kind {
            return;
        }
        let text = ev.kind.describe();
        match (&self.bars, ev.kind.id()) {
            (Some((_, bars)), Some(id)) => {
                if let Some(b) = bars.get(id) {
                    match &ev.kind {
                        EventKind::Retrieved { bytes, .. } => b.set_length(*bytes),
                        EventKind::Phase { phase, .. } if phase == "copying" => b.set_position(0),
                        EventKind::Copied { bytes, .. } => b.set_position(*bytes),
                        _ => {}
                    }
                    if let EventKind::Done { .. } = ev.kind {
                        b.finish_with_message(text);
                    } else if let (EventKind::Mismatch { .. } | EventKind::Repaired { .. }, Some((mp, _))) =
                        (&ev.kind, &self.bars)
                    {
                        // A retry is news: keep it on screen above the bars.
                        let _ = mp.println(format!("{id:<8} {text}"));
                    } else {
                        b.set_message(text);
                    }
                }
            }
            (Some((mp, _)), None) => {
                let _ = mp.println(text);
            }
            (None, id) => {
                println!("[{:>9.1} ms] {:<8} {}", ev.t_ms, id.unwrap_or(""), text);
            }
        }
    }

    pub fn finish(&mut self, s: &Summary) {
        if self.json {
            return;
        }
        if let Some((mp, _)) = &self.bars {
            let _ = mp.clear();
        }
        print!("{}", table(s));
    }
}

/// The final table: one line per processor with its path, attempts, bytes and times.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let secs: Vec<_> = s.processors.iter().filter(|p| p.role == "secondary").collect();
    let up = secs.iter().filter(|p| matches!(p.state.as_str(), "running" | "released")).count();
    let shut = secs.iter().filter(|p| p.state == "shut_down").count();
    if shut > 0 {
        // A supervised chassis (`up --hold`), shut down by the operator at the end.
        out.push_str(&format!(
            "\n{}: chassis \"{}\" supervised for {:.1} s, then shut down: {shut}/{} secondaries shut down as asked\n\n",
            if s.ok { "OK" } else { "FAILED" },
            s.chassis,
            s.total_ms / 1e3,
            secs.len()
        ));
    } else {
        // The phased boot of a machine of clusters goes on without hardware that failed its
        // self-test or missed a barrier (barrier_policy = "exclude").
        let left_out = secs.iter().filter(|p| p.state == "left-out").count();
        // A machine of clusters: the monarch's own core jumps into the kernel too.
        let own = s.processors.iter().any(|p| p.role == "monarch" && p.state == "running");
        out.push_str(&format!(
            "\n{}: chassis \"{}\" {} in {:.1} ms: {up}/{} secondaries up{}{}\n\n",
            if s.ok { "OK" } else { "FAILED" },
            s.chassis,
            if s.ok { "booted" } else { "did not boot" },
            s.total_ms,
            secs.len(),
            if own { ", and the monarch's own core" } else { "" },
            if left_out > 0 { format!(", {left_out} left out") } else { String::new() }
        ));
    }
    if let Some(e) = &s.error {
        out.push_str(&format!("why: {e}\n\n"));
    }
    out.push_str(&format!(
        "{:<8} {:<11} {:<16} {:>8} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}\n",
        "id",
        "state",
        "path",
        "attempts",
        "bytes",
        "retrieve",
        "rendezvous",
        "copy",
        "verify",
        "handoff",
        "total"
    ));
    for p in &s.processors {
        if p.role != "secondary" && p.report.is_none() {
            out.push_str(&format!("{:<8} {:<11} {:<16}\n", p.id, p.state, "-"));
            continue;
        }
        let path = match (&p.path, &p.switch) {
            (_, Some(sw)) => format!("switch {sw}"),
            (Some(x), None) => x.clone(),
            _ => "-".into(),
        };
        let t = &p.timings_ms;
        out.push_str(&format!(
            "{:<8} {:<11} {:<16} {:>8} {:>9} {:>7.1}ms {:>8.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms\n",
            p.id,
            p.state,
            path,
            p.attempts,
            fmt_size(p.bytes),
            t.retrieve,
            t.rendezvous,
            t.copy,
            t.verify,
            t.handoff,
            t.total
        ));
    }
    let notes: Vec<String> = s
        .processors
        .iter()
        .filter_map(|p| match (&p.error, &p.report) {
            (Some(e), _) if p.role != "secondary" => Some(format!("  {}: {e}", p.id)),
            (Some(e), _) if p.state == "interrupted" => Some(format!("  {}: INTERRUPTED: {e}", p.id)),
            (Some(e), _) if p.state == "left-out" => Some(format!("  {}: left out: {e}", p.id)),
            (Some(e), _) => Some(format!("  {}: FAILED: {e}", p.id)),
            (None, Some(r)) => Some(format!("  {}: {r}", p.id)),
            _ => None,
        })
        .collect();
    if let Some(e) = &s.election {
        out.push_str(&format!("\nmonarch {} (epoch {}): {}\n", e.monarch, e.epoch, e.reason));
        for f in &e.failovers {
            out.push_str(&format!(
                "  failover at {:.1} ms: {} took over from {} (epoch {}), {:.0} ms after it was last seen alive\n",
                f.t_ms, f.to, f.from, f.epoch, f.ms
            ));
        }
        // How the new monarch took each secondary over (its attempts and bytes columns
        // count only what this monarch did).
        for p in s.processors.iter().filter(|p| p.role == "secondary") {
            if let Some(r) = &p.resumed {
                out.push_str(&format!("  {}: {r}\n", p.id));
            }
        }
    }
    if !notes.is_empty() {
        out.push_str("\nwhat each secondary reported:\n");
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    out
}
