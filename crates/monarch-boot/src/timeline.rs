//! A picture of a boot: the events of a run (`monarch up --json`) drawn as an SVG timeline.
//!
//! [`render`] is pure: a list of [`Event`]s in, an SVG document out. One row per secondary
//! (in the order they first appear), above them a row for the monarch of each epoch, a
//! time axis in milliseconds since the run started, and a legend. [`read_stream`] and
//! [`load`] read a saved stream and keep the lines that are not events apart, so the
//! command line can say how many it ignored and where.
//!
//! How events become bars (each bar is a `<rect class="phase phase-NAME" data-id="ID">`
//! with a `<title>` tooltip; tests count them by class):
//! - `retrieved` → one `phase-retrieve` bar, from the secondary's first step (its `done`
//!   event's `t_ms − ms`, when that boot has a `done`) else from its previous event (or the
//!   start of the run), to the `retrieved` event.
//! - every `phase` event → one bar of that phase (`phase-configuring`, `phase-launching`,
//!   `phase-rendezvous`, `phase-copying`, `phase-verifying`, `phase-handoff`; a phase this
//!   monarch does not know: `phase-other`), lasting until the secondary's next phase
//!   boundary (`phase`, `copied`, `retrieved`, `done`, `lost`, `down`, `restarting`).
//! - `copied` ends the copying bar at the copy's end. When the next `phase` event of that
//!   secondary is not `verifying` (push mode: the digests are checked while the bytes
//!   stream, and no `verifying` event is sent), one more `phase-verifying` bar (marked
//!   `data-implied="copied"`) runs from `copied` to that next boundary.
//! - `done` with state `running` → one `phase-running` bar, to the secondary's `lost` or
//!   `down`, else to the end of the picture.
//!
//! So: bars = `phase` events + `retrieved` events + `done` events with state `running` +
//! `copied` events not followed by a `verifying` phase.
//!
//! Marks (`<g class="mark mark-KIND" data-id="ID">` with a `<title>`): `mark-retry` (the
//! first `phase` of a new attempt above 1), `mark-mismatch` (a checksum mismatch, red),
//! `mark-repaired` (a chunk re-sent), `mark-held`, `mark-released` (only after `held`, or
//! when released degraded: every secondary is released once as a matter of course),
//! `mark-defer` (an `answer` that defers), `mark-lost`, `mark-restarting`, `mark-down`,
//! `mark-failed` (`done` with state `failed` or `interrupted`). A `failover` is a vertical
//! line across every row (`<g class="failover">`) labelled `from → to`.
//!
//! Events this module does not draw are ignored, as are events of kinds it does not know
//! (a newer monarch's: they fail to parse in [`read_stream`] and are counted there). Odd
//! input never panics: times out of order are sorted, times that are not finite are
//! dropped, text is cleaned of characters XML cannot carry, and an empty list gives a
//! valid picture that says "no events".

use crate::events::{Event, EventKind, Summary};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use svg::Document;
use svg::node::element::{Group, Line, Path as SvgPath, Rectangle, Style, Text, Title};
use thiserror::Error;

/// What can go wrong reading a stream or writing a picture.
#[derive(Debug, Error)]
pub enum TimelineError {
    /// The stream cannot be opened.
    #[error("{file}: cannot open: {source}")]
    Open {
        /// The file (`-`: standard input).
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the stream cannot be read.
    #[error("{file}: line {line}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// The line (1-based).
        line: usize,
        /// Why.
        source: std::io::Error,
    },
    /// The stream has lines, and none of them is an event.
    #[error(
        "{file}: none of its {lines} lines is a monarch event (line {first_line}: {first_why}); \
         give the output of `monarch up --json`"
    )]
    NoEvents {
        /// The file.
        file: String,
        /// Lines that were not blank.
        lines: usize,
        /// The first of them.
        first_line: usize,
        /// Why it is not an event.
        first_why: String,
    },
    /// The picture cannot be written.
    #[error("{}: cannot write the picture: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `monarch up` writes its events or its table to standard output: its picture goes to
    /// a file.
    #[error(
        "--timeline -: standard output carries the run's own output; give a file, e.g. --timeline boot.svg"
    )]
    Stdout,
    /// The picture's folder does not exist (checked before a boot, so the picture of a long
    /// boot is not lost at its end).
    #[error("{}: cannot write the picture there: the folder {} does not exist", path.display(), folder.display())]
    NoFolder {
        /// The file.
        path: PathBuf,
        /// Its folder.
        folder: PathBuf,
    },
}

/// A stream read back: its events, and the lines that were not events.
#[derive(Debug, Default)]
pub struct Stream {
    /// The stream's name in messages (its file, or `standard input`).
    pub file: String,
    /// The events, in the stream's order.
    pub events: Vec<Event>,
    /// Lines that were not events (blank lines are not counted).
    pub skipped: Vec<Skipped>,
}

/// A line of a stream that is not an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// The line (1-based).
    pub line: usize,
    /// Why it is not an event.
    pub why: String,
}

impl Stream {
    /// A one-line warning about the skipped lines (`None` when there are none): how many,
    /// and where the first few are.
    pub fn warning(&self) -> Option<String> {
        let file = &self.file;
        let first = self.skipped.first()?;
        let total = self.skipped.len() + self.events.len();
        let mut w = format!(
            "{file}: ignored {} of {total} lines that are not monarch events (line {}: {}",
            self.skipped.len(),
            first.line,
            first.why
        );
        let more: Vec<String> =
            self.skipped.iter().skip(1).take(2).map(|s| format!("line {}", s.line)).collect();
        if !more.is_empty() {
            w.push_str(&format!("; also {}", more.join(", ")));
            if self.skipped.len() > 3 {
                w.push_str(", …");
            }
        }
        w.push(')');
        Some(w)
    }
}

/// Read a saved `monarch up --json` stream: one JSON object per line. Lines that are not
/// events (not JSON, not UTF-8, a kind of event this monarch does not know, a field
/// missing) are kept in [`Stream::skipped`]; blank lines are ignored. `file` names the
/// stream in errors.
pub fn read_stream<R: BufRead>(mut r: R, file: &str) -> Result<Stream, TimelineError> {
    let mut out = Stream { file: file.into(), ..Stream::default() };
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        line += 1;
        match r.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(source) => return Err(TimelineError::Read { file: file.into(), line, source }),
        }
        let Ok(text) = std::str::from_utf8(&buf) else {
            out.skipped.push(Skipped { line, why: "not UTF-8".into() });
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(text) {
            Ok(ev) => out.events.push(ev),
            Err(e) => out.skipped.push(Skipped { line, why: why_not_an_event(text, &e) }),
        }
    }
    if out.events.is_empty()
        && let Some(first) = out.skipped.first()
    {
        return Err(TimelineError::NoEvents {
            file: file.into(),
            lines: out.skipped.len(),
            first_line: first.line,
            first_why: first.why.clone(),
        });
    }
    Ok(out)
}

/// Why a line is not an event, in words: an unknown kind is told apart from a broken line.
fn why_not_an_event(text: &str, e: &serde_json::Error) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return format!("not JSON ({e})");
    };
    match v.get("event").and_then(|k| k.as_str()) {
        Some(kind) if e.to_string().starts_with("unknown variant") => {
            format!("an event this monarch does not know ({:?})", clean(kind, 40))
        }
        Some(kind) => format!("a {:?} event that does not parse ({e})", clean(kind, 40)),
        None => "JSON, but not an event (no \"event\" field)".into(),
    }
}

/// [`read_stream`] of a file, or of standard input for `-`.
pub fn load(path: &Path) -> Result<Stream, TimelineError> {
    let file = path.display().to_string();
    if path.as_os_str() == "-" {
        return read_stream(std::io::stdin().lock(), "standard input");
    }
    let f = std::fs::File::open(path).map_err(|source| TimelineError::Open { file: file.clone(), source })?;
    read_stream(std::io::BufReader::new(f), &file)
}

/// Write a picture to `path` (replaced whole: a reader never sees half of it), or to
/// standard output for `-`.
pub fn save(path: &Path, svg: &str) -> Result<(), TimelineError> {
    let result = if path.as_os_str() == "-" {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        out.write_all(svg.as_bytes()).and_then(|()| out.flush())
    } else {
        monarch_drivers::fs::write_atomically(path, svg.as_bytes())
    };
    result.map_err(|source| TimelineError::Write { path: path.to_path_buf(), source })
}

/// Whether the picture of a run can be written to `path` at its end: a file (not `-`) in a
/// folder that exists. Checked before a boot, so a typo does not cost the picture of a long
/// one.
pub fn check_destination(path: &Path) -> Result<(), TimelineError> {
    if path.as_os_str() == "-" {
        return Err(TimelineError::Stdout);
    }
    let folder = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if folder.is_dir() {
        Ok(())
    } else {
        Err(TimelineError::NoFolder { path: path.to_path_buf(), folder: folder.to_path_buf() })
    }
}

/// The phases a bar can show, in the order of a boot: class suffix, legend label, colour.
const BARS: [(&str, &str, &str); 9] = [
    ("retrieve", "retrieve", "#a6cee3"),
    ("configuring", "configure", "#cab2d6"),
    ("launching", "launching", "#fdbf6f"),
    ("rendezvous", "rendezvous", "#ff7f00"),
    ("copying", "copy", "#1f78b4"),
    ("verifying", "verify", "#6a3d9a"),
    ("handoff", "handoff", "#fb9a99"),
    ("running", "running", "#33a02c"),
    ("other", "other phase", "#bdbdbd"),
];

/// The kinds of marks: class suffix, legend label, shape, colour, lane (above or below
/// the bar).
const MARKS: [(&str, &str, Shape, &str, Lane); 10] = [
    ("mismatch", "checksum mismatch", Shape::Diamond, "#e31a1c", Lane::Above),
    ("retry", "new attempt", Shape::Ring, "#e31a1c", Lane::Below),
    ("repaired", "chunk re-sent", Shape::Square, "#b15928", Lane::Above),
    ("held", "held", Shape::TriangleDown, "#636363", Lane::Below),
    ("released", "released", Shape::TriangleUp, "#238b45", Lane::Below),
    ("defer", "deferred", Shape::Diamond, "#ffcc00", Lane::Below),
    ("lost", "lost", Shape::Cross, "#000000", Lane::Above),
    ("restarting", "restarting", Shape::Ring, "#1f78b4", Lane::Below),
    ("down", "down", Shape::Square, "#000000", Lane::Below),
    ("failed", "failed", Shape::Cross, "#e31a1c", Lane::Above),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Diamond,
    Ring,
    Square,
    TriangleUp,
    TriangleDown,
    Cross,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Lane {
    Above,
    Below,
}

/// One bar of a row.
#[derive(Debug, Clone)]
struct Bar {
    /// Index into [`BARS`].
    kind: usize,
    /// The phase's name as the event gave it (for `other`).
    name: String,
    start: f64,
    /// `None`: open (to the end of the picture, or the next boundary).
    end: Option<f64>,
    attempt: Option<u32>,
    implied: bool,
}

/// One mark of a row.
#[derive(Debug, Clone)]
struct Mark {
    /// Index into [`MARKS`].
    kind: usize,
    t: f64,
    text: String,
}

/// One secondary's row.
#[derive(Debug, Default)]
struct Row {
    id: String,
    bars: Vec<Bar>,
    marks: Vec<Mark>,
    /// The bar a boundary ends.
    open: Option<usize>,
    /// This boot's retrieve bar, whose start the boot's `done` corrects.
    retrieve: Option<usize>,
    /// The earliest a retrieve bar may start: the end of the previous boot.
    floor: f64,
    /// The time of this secondary's previous event.
    last_t: Option<f64>,
    attempt: u32,
    held: bool,
}

impl Row {
    fn close(&mut self, t: f64) {
        if let Some(i) = self.open.take()
            && let Some(b) = self.bars.get_mut(i)
        {
            b.end = Some(t.max(b.start));
        }
    }
    fn open_bar(&mut self, bar: Bar) {
        self.bars.push(bar);
        self.open = Some(self.bars.len() - 1);
    }
    fn mark(&mut self, kind: &str, t: f64, text: String) {
        if let Some(k) = MARKS.iter().position(|m| m.0 == kind) {
            self.marks.push(Mark { kind: k, t, text });
        }
    }
}

/// One monarch's time in charge.
#[derive(Debug)]
struct Tenure {
    monarch: String,
    epoch: Option<u32>,
    start: f64,
    end: Option<f64>,
}

/// Everything the picture shows, laid out in time (not yet in space).
#[derive(Debug, Default)]
struct Picture {
    title: String,
    rows: Vec<Row>,
    tenures: Vec<Tenure>,
    failovers: Vec<(f64, String)>,
    t0: f64,
    t1: f64,
    empty: bool,
}

fn bar_kind(phase: &str) -> usize {
    BARS.iter().position(|b| b.0 == phase).unwrap_or(BARS.len() - 1)
}

/// Lay the events out in time.
fn lay_out(events: &[Event]) -> Picture {
    let mut evs: Vec<&Event> = events.iter().filter(|e| e.t_ms.is_finite()).collect();
    evs.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    let mut p = Picture { empty: evs.is_empty(), ..Picture::default() };
    // Where a retrieve bar without a better start begins: the run's `start`, else its first event.
    let run_start = evs
        .iter()
        .find(|e| matches!(e.kind, EventKind::Start { .. }))
        .or(evs.first())
        .map_or(0.0, |e| e.t_ms);
    p.t0 = evs.first().map_or(0.0, |e| e.t_ms).min(0.0);
    p.t1 = evs.last().map_or(0.0, |e| e.t_ms);
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut chassis: Option<String> = None;
    let mut summary: Option<&Summary> = None;
    for (i, ev) in evs.iter().enumerate() {
        let t = ev.t_ms;
        match &ev.kind {
            EventKind::Start { chassis: c, monarch, .. } => {
                chassis.get_or_insert_with(|| c.clone());
                if p.tenures.is_empty() {
                    p.tenures.push(Tenure { monarch: monarch.clone(), epoch: None, start: t, end: None });
                }
                continue;
            }
            EventKind::Elected { monarch, epoch, .. } => {
                if let Some(last) = p.tenures.last_mut() {
                    if last.monarch == *monarch && last.end.is_none() {
                        last.epoch = Some(*epoch);
                        continue;
                    }
                    last.end.get_or_insert(t);
                }
                p.tenures.push(Tenure { monarch: monarch.clone(), epoch: Some(*epoch), start: t, end: None });
                continue;
            }
            EventKind::Failover { from, to, epoch, .. } => {
                p.failovers
                    .push((t, format!("failover {} → {} (epoch {epoch})", clean(from, 24), clean(to, 24))));
                if let Some(last) = p.tenures.last_mut() {
                    last.end.get_or_insert(t);
                }
                p.tenures.push(Tenure { monarch: to.clone(), epoch: Some(*epoch), start: t, end: None });
                continue;
            }
            EventKind::Summary(s) => {
                summary = Some(s);
                continue;
            }
            _ => {}
        }
        let Some(id) = ev.kind.id() else { continue };
        let r = *index.entry(id.to_string()).or_insert_with(|| {
            p.rows.push(Row { id: id.to_string(), floor: f64::NEG_INFINITY, ..Row::default() });
            p.rows.len() - 1
        });
        let Some(row) = p.rows.get_mut(r) else { continue };
        let previous = row.last_t.replace(t);
        match &ev.kind {
            EventKind::Retrieved { image, bytes, .. } => {
                row.close(t);
                let start = previous.unwrap_or(run_start).max(row.floor).min(t);
                row.bars.push(Bar {
                    kind: bar_kind("retrieve"),
                    name: format!("retrieve {} ({bytes} bytes)", clean(image, 80)),
                    start,
                    end: Some(t),
                    attempt: None,
                    implied: false,
                });
                row.retrieve = Some(row.bars.len() - 1);
                row.attempt = 0;
            }
            EventKind::Phase { phase, attempt, .. } => {
                row.close(t);
                if *attempt > 1 && *attempt > row.attempt {
                    row.mark("retry", t, format!("attempt {attempt}: the image is written again"));
                }
                row.attempt = row.attempt.max(*attempt);
                row.open_bar(Bar {
                    kind: bar_kind(phase),
                    name: clean(phase, 40),
                    start: t,
                    end: None,
                    attempt: (*attempt > 0).then_some(*attempt),
                    implied: false,
                });
            }
            EventKind::Copied { attempt, bytes, ms, .. } => {
                row.close(t);
                if !verifying_follows(&evs[i + 1..], id) {
                    row.open_bar(Bar {
                        kind: bar_kind("verifying"),
                        name: format!(
                            "verifying (the copy's end to its checksum; {bytes} bytes in {ms:.1} ms)"
                        ),
                        start: t,
                        end: None,
                        attempt: Some(*attempt),
                        implied: true,
                    });
                }
            }
            EventKind::Mismatch { attempt, written, expected, .. } => row.mark(
                "mismatch",
                t,
                format!(
                    "checksum mismatch on attempt {attempt}: written {}, retrieved {}",
                    clean(written, 64),
                    clean(expected, 64)
                ),
            ),
            EventKind::Repaired { attempt, chunk, bytes, .. } => row.mark(
                "repaired",
                t,
                format!(
                    "chunk {chunk} failed its digest in attempt {attempt}: re-sent alone ({bytes} bytes)"
                ),
            ),
            EventKind::Done { state, attempts, ms, error, .. } => {
                row.close(t);
                if let Some(b) = row.retrieve.take().and_then(|i| row.bars.get_mut(i))
                    && ms.is_finite()
                    && *ms >= 0.0
                {
                    b.start = (t - ms).max(row.floor).max(p.t0).min(b.end.unwrap_or(b.start));
                }
                match state.as_str() {
                    "running" => row.open_bar(Bar {
                        kind: bar_kind("running"),
                        name: format!("running (after {attempts} attempt(s), {ms:.1} ms)"),
                        start: t,
                        end: None,
                        attempt: None,
                        implied: false,
                    }),
                    "failed" | "interrupted" => row.mark(
                        "failed",
                        t,
                        format!(
                            "{} after {attempts} attempt(s){}",
                            clean(state, 20),
                            error.as_deref().map(|e| format!(": {}", clean(e, 300))).unwrap_or_default()
                        ),
                    ),
                    _ => {}
                }
            }
            EventKind::Held { waiting_for, .. } => {
                row.held = true;
                let who: Vec<String> = waiting_for.iter().map(|w| clean(w, 40)).collect();
                row.mark("held", t, format!("held at its rendezvous: waits for {}", who.join(", ")));
            }
            EventKind::Released { without, .. } => {
                if row.held || !without.is_empty() {
                    let text = if without.is_empty() {
                        "released: its dependencies are ready".to_string()
                    } else {
                        let w: Vec<String> = without.iter().map(|w| clean(w, 40)).collect();
                        format!("released degraded, without {}", w.join(", "))
                    };
                    row.mark("released", t, text);
                }
                row.held = false;
            }
            EventKind::Answer { notice, answer, reason, .. } if answer == "defer" => row.mark(
                "defer",
                t,
                format!(
                    "defers the {}{}",
                    clean(notice, 40),
                    reason.as_deref().map(|r| format!(": {}", clean(r, 200))).unwrap_or_default()
                ),
            ),
            EventKind::Lost { cause, .. } => {
                row.close(t);
                row.floor = t;
                row.mark("lost", t, format!("lost: {}", clean(cause, 300)));
            }
            EventKind::Restarting { restart, after_ms, .. } => {
                row.close(t);
                row.floor = t;
                row.mark("restarting", t, format!("restarting (restart {restart}) after {after_ms:.0} ms"));
            }
            EventKind::Down { state, why, .. } => {
                row.close(t);
                row.floor = t;
                row.mark("down", t, format!("{}: {}", clean(state, 20), clean(why, 300)));
            }
            _ => {}
        }
    }
    if let Some(s) = summary {
        p.t1 = p.t1.max(if s.total_ms.is_finite() { s.total_ms } else { p.t1 });
    }
    let name = chassis.or_else(|| summary.map(|s| s.chassis.clone()));
    p.title = match (name, summary) {
        (Some(c), Some(s)) => format!(
            "chassis \"{}\": {} in {:.1} ms, {} secondaries",
            clean(&c, 60),
            if s.ok { "booted" } else { "did not boot" },
            s.total_ms,
            p.rows.len()
        ),
        (Some(c), None) => format!(
            "chassis \"{}\": {} secondaries (no summary: a run cut short?)",
            clean(&c, 60),
            p.rows.len()
        ),
        (None, _) => format!("a boot of {} secondaries", p.rows.len()),
    };
    if p.empty {
        p.title = "no events".into();
    }
    if p.t1 <= p.t0 {
        p.t1 = p.t0 + 1.0;
    }
    p
}

/// Whether the next phase boundary of `id` among `rest` is a `verifying` phase.
fn verifying_follows(rest: &[&Event], id: &str) -> bool {
    for e in rest {
        if e.kind.id() != Some(id) {
            continue;
        }
        match &e.kind {
            EventKind::Phase { phase, .. } => return phase == "verifying",
            EventKind::Retrieved { .. }
            | EventKind::Done { .. }
            | EventKind::Lost { .. }
            | EventKind::Down { .. }
            | EventKind::Restarting { .. } => return false,
            _ => {}
        }
    }
    false
}

/// Text as XML can carry it, at most `max` characters: control characters and
/// bidirectional marks become U+FFFD, the rest is cut with an ellipsis.
fn clean(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| {
            if c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{fffe}' | '\u{ffff}')
            {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

// Geometry, in pixels.
const WIDTH: f64 = 1000.0;
const LEFT: f64 = 130.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 40.0;
const ROW: f64 = 30.0;
const BAR: f64 = 14.0;
const MARK: f64 = 4.5;

/// Round to hundredths of a pixel: shorter files, same picture.
fn px(v: f64) -> f64 {
    if v.is_finite() { (v * 100.0).round() / 100.0 } else { 0.0 }
}

/// A step of 1, 2 or 5 × 10^k that cuts `span` into at most about 10 ticks.
fn tick_step(span: f64) -> f64 {
    let raw = (span / 8.0).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag)
}

fn fmt_ms(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else if step >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn symbol(shape: Shape, x: f64, y: f64, colour: &str) -> SvgPath {
    let r = MARK;
    let d = match shape {
        Shape::Diamond => format!(
            "M{} {}L{} {}L{} {}L{} {}Z",
            px(x),
            px(y - r),
            px(x + r),
            px(y),
            px(x),
            px(y + r),
            px(x - r),
            px(y)
        ),
        Shape::Square => format!(
            "M{} {}h{}v{}h{}Z",
            px(x - r * 0.8),
            px(y - r * 0.8),
            px(r * 1.6),
            px(r * 1.6),
            px(-r * 1.6)
        ),
        Shape::TriangleUp => format!(
            "M{} {}L{} {}L{} {}Z",
            px(x),
            px(y - r),
            px(x + r),
            px(y + r * 0.8),
            px(x - r),
            px(y + r * 0.8)
        ),
        Shape::TriangleDown => format!(
            "M{} {}L{} {}L{} {}Z",
            px(x),
            px(y + r),
            px(x + r),
            px(y - r * 0.8),
            px(x - r),
            px(y - r * 0.8)
        ),
        Shape::Ring => format!(
            "M{} {}a{r} {r} 0 1 0 {} 0a{r} {r} 0 1 0 {} 0",
            px(x - r),
            px(y),
            px(2.0 * r),
            px(-2.0 * r)
        ),
        Shape::Cross => format!(
            "M{} {}L{} {}M{} {}L{} {}",
            px(x - r),
            px(y - r),
            px(x + r),
            px(y + r),
            px(x - r),
            px(y + r),
            px(x + r),
            px(y - r)
        ),
    };
    let path = SvgPath::new().set("d", d);
    match shape {
        Shape::Ring => path.set("fill", "white").set("stroke", colour).set("stroke-width", 2),
        Shape::Cross => path.set("fill", "none").set("stroke", colour).set("stroke-width", 2.5),
        _ => path.set("fill", colour).set("stroke", "#333333").set("stroke-width", 0.6),
    }
}

fn label(x: f64, y: f64, text: &str) -> Text {
    Text::new(text).set("x", px(x)).set("y", px(y))
}

/// The picture of a run: an SVG document (see the module's documentation for what it shows).
pub fn render(events: &[Event]) -> String {
    let p = lay_out(events);
    let plot = WIDTH - LEFT - RIGHT;
    let span = p.t1 - p.t0;
    let x_of = |t: f64| px(LEFT + ((t - p.t0) / span).clamp(0.0, 1.0) * plot);
    let has_tenures = !p.tenures.is_empty();
    let first_row = TOP + if has_tenures { ROW } else { 0.0 };
    let rows_end = first_row + ROW * p.rows.len().max(1) as f64;
    let axis_y = rows_end + 6.0;
    let legend_y = axis_y + 54.0;
    let legend_rows = 3.0;
    let height = legend_y + legend_rows * 18.0 + 10.0;

    let mut doc = Document::new()
        .set("width", WIDTH)
        .set("height", px(height))
        .set("viewBox", (0, 0, WIDTH, px(height)))
        .set("font-family", "sans-serif")
        .set("font-size", 11)
        .add(Title::new(format!("monarch boot timeline: {}", p.title)))
        .add(Style::new(
            "text { fill: #222222; } .failover text { fill: #b10026; font-weight: bold; } .row-label { font-family: monospace; }",
        ))
        .add(Rectangle::new().set("width", "100%").set("height", "100%").set("fill", "white"))
        .add(label(10.0, 22.0, &p.title).set("class", "picture-title").set("font-size", 14).set("font-weight", "bold"));

    if p.empty {
        return doc
            .add(
                label(WIDTH / 2.0, first_row + ROW / 2.0, "no events")
                    .set("class", "empty")
                    .set("text-anchor", "middle"),
            )
            .to_string();
    }

    // Row backgrounds and labels.
    let mut rows = Group::new().set("class", "rows");
    if has_tenures {
        rows = rows.add(label(10.0, TOP + ROW / 2.0 + 4.0, "monarch").set("class", "row-label"));
    }
    for (k, row) in p.rows.iter().enumerate() {
        let y = first_row + ROW * k as f64;
        if k % 2 == 0 {
            rows = rows.add(
                Rectangle::new()
                    .set("x", 0)
                    .set("y", px(y))
                    .set("width", WIDTH)
                    .set("height", ROW)
                    .set("fill", "#f4f4f4"),
            );
        }
        rows = rows.add(
            label(10.0, y + ROW / 2.0 + 4.0, &clean(&row.id, 16))
                .set("class", "row-label")
                .set("data-id", clean(&row.id, 200))
                .add(Title::new(clean(&row.id, 200))),
        );
    }
    if p.rows.is_empty() {
        rows = rows.add(
            label(LEFT, first_row + ROW / 2.0 + 4.0, "no events about secondaries").set("class", "empty"),
        );
    }
    doc = doc.add(rows);

    // The time axis, with vertical grid lines at its ticks.
    let step = tick_step(span);
    let mut axis = Group::new().set("class", "axis");
    axis = axis.add(
        Line::new()
            .set("x1", LEFT)
            .set("x2", px(LEFT + plot))
            .set("y1", px(axis_y))
            .set("y2", px(axis_y))
            .set("stroke", "#333333"),
    );
    let mut tick = (p.t0 / step).ceil() * step;
    let mut n = 0;
    while tick <= p.t1 + step * 1e-9 && n < 40 {
        let x = x_of(tick);
        axis = axis
            .add(
                Line::new()
                    .set("x1", x)
                    .set("x2", x)
                    .set("y1", px(TOP))
                    .set("y2", px(axis_y))
                    .set("stroke", "#dddddd"),
            )
            .add(
                Line::new()
                    .set("x1", x)
                    .set("x2", x)
                    .set("y1", px(axis_y))
                    .set("y2", px(axis_y + 5.0))
                    .set("stroke", "#333333"),
            )
            .add(
                label(x, axis_y + 17.0, &fmt_ms(tick, step))
                    .set("class", "tick")
                    .set("text-anchor", "middle"),
            );
        tick += step;
        n += 1;
    }
    axis = axis.add(label(LEFT + plot, axis_y + 31.0, "ms since the run started").set("text-anchor", "end"));
    doc = doc.add(axis);

    // Who was monarch, epoch by epoch.
    if has_tenures {
        let mut g = Group::new().set("class", "tenures");
        for (k, m) in p.tenures.iter().enumerate() {
            let (a, b) = (x_of(m.start), x_of(m.end.unwrap_or(p.t1)));
            let who = match m.epoch {
                Some(e) => format!("{} (epoch {e})", clean(&m.monarch, 40)),
                None => clean(&m.monarch, 40),
            };
            let y = TOP + (ROW - BAR) / 2.0;
            g = g.add(
                Group::new()
                    .set("class", "tenure")
                    .add(Title::new(format!("monarch {who}")))
                    .add(
                        Rectangle::new()
                            .set("x", a)
                            .set("y", px(y))
                            .set("width", px((b - a).max(0.5)))
                            .set("height", BAR)
                            .set("fill", if k % 2 == 0 { "#d9d9d9" } else { "#bdbdbd" }),
                    )
                    .add(label(a + 3.0, y + BAR - 3.0, &who)),
            );
        }
        doc = doc.add(g);
    }

    // Bars.
    let mut bars = Group::new().set("class", "bars");
    for (k, row) in p.rows.iter().enumerate() {
        let y = first_row + ROW * k as f64 + (ROW - BAR) / 2.0;
        for b in &row.bars {
            let (class, _, colour) = BARS[b.kind.min(BARS.len() - 1)];
            let end = b.end.unwrap_or(p.t1).max(b.start);
            let (a, z) = (x_of(b.start), x_of(end));
            let attempt = b.attempt.map(|n| format!(", attempt {n}")).unwrap_or_default();
            let mut rect = Rectangle::new()
                .set("class", format!("phase phase-{class}"))
                .set("data-id", clean(&row.id, 200))
                .set("x", a)
                .set("y", px(y))
                .set("width", px((z - a).max(0.5)))
                .set("height", BAR)
                .set("fill", colour)
                .add(Title::new(format!(
                    "{}: {}{attempt}: {:.1} ms (from {:.1} to {:.1} ms)",
                    clean(&row.id, 200),
                    b.name,
                    end - b.start,
                    b.start,
                    end
                )));
            if let Some(n) = b.attempt {
                rect = rect.set("data-attempt", n);
            }
            if b.implied {
                rect = rect.set("data-implied", "copied");
            }
            bars = bars.add(rect);
        }
    }
    doc = doc.add(bars);

    // Marks, above or below their row's bars.
    let mut marks = Group::new().set("class", "marks");
    for (k, row) in p.rows.iter().enumerate() {
        let mid = first_row + ROW * k as f64 + ROW / 2.0;
        for m in &row.marks {
            let (class, _, shape, colour, lane) = MARKS[m.kind.min(MARKS.len() - 1)];
            let y = match lane {
                Lane::Above => mid - BAR / 2.0,
                Lane::Below => mid + BAR / 2.0,
            };
            marks = marks.add(
                Group::new()
                    .set("class", format!("mark mark-{class}"))
                    .set("data-id", clean(&row.id, 200))
                    .add(Title::new(format!("{} at {:.1} ms: {}", clean(&row.id, 200), m.t, m.text)))
                    .add(symbol(shape, x_of(m.t), y, colour)),
            );
        }
    }
    doc = doc.add(marks);

    // Failovers: a line across every row.
    for (t, text) in &p.failovers {
        let x = x_of(*t);
        doc = doc.add(
            Group::new()
                .set("class", "failover")
                .add(Title::new(format!("{text} at {t:.1} ms")))
                .add(
                    Line::new()
                        .set("x1", x)
                        .set("x2", x)
                        .set("y1", px(TOP - 4.0))
                        .set("y2", px(axis_y))
                        .set("stroke", "#b10026")
                        .set("stroke-width", 2)
                        .set("stroke-dasharray", "6 3"),
                )
                .add(label(x + 4.0, TOP - 6.0, text)),
        );
    }

    // The legend: phases, then marks.
    let mut legend = Group::new().set("class", "legend");
    let mut x = 10.0;
    let mut y = legend_y;
    for (class, name, colour) in BARS {
        legend = legend
            .add(
                Rectangle::new()
                    .set("x", px(x))
                    .set("y", px(y - 9.0))
                    .set("width", 14)
                    .set("height", 10)
                    .set("fill", colour)
                    .set("class", format!("legend-{class}")),
            )
            .add(label(x + 18.0, y, name));
        x += 95.0;
    }
    x = 10.0;
    y += 20.0;
    for (k, (class, name, shape, colour, _)) in MARKS.iter().enumerate() {
        if k == 6 {
            x = 10.0;
            y += 18.0;
        }
        legend = legend
            .add(symbol(*shape, x + 6.0, y - 4.0, colour).set("class", format!("legend-{class}")))
            .add(label(x + 16.0, y, name));
        x += 140.0;
    }
    legend = legend.add(
        Line::new()
            .set("x1", px(x + 2.0))
            .set("x2", px(x + 2.0))
            .set("y1", px(y - 10.0))
            .set("y2", px(y + 2.0))
            .set("stroke", "#b10026")
            .set("stroke-width", 2)
            .set("stroke-dasharray", "3 2"),
    );
    legend = legend.add(label(x + 10.0, y, "failover"));
    doc = doc.add(legend);
    doc.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
mod tests {
    //! Golden properties, not golden bytes: every picture is parsed back as XML and its bars
    //! and marks are counted against the events it was drawn from.
    use super::*;
    use proptest::prelude::*;

    fn events(lines: &str) -> Vec<Event> {
        lines.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect(l)).collect()
    }

    /// Every element with this class (among its classes).
    fn with_class<'a>(d: &'a roxmltree::Document<'a>, class: &str) -> Vec<roxmltree::Node<'a, 'a>> {
        d.descendants()
            .filter(|n| n.attribute("class").is_some_and(|c| c.split(' ').any(|x| x == class)))
            .collect()
    }

    fn title(n: roxmltree::Node) -> String {
        n.children().find(|c| c.has_tag_name("title")).and_then(|t| t.text()).unwrap_or_default().to_string()
    }

    fn phase_events(evs: &[Event], name: &str) -> usize {
        evs.iter().filter(|e| matches!(&e.kind, EventKind::Phase { phase, .. } if phase == name)).count()
    }

    /// A pull-mode secondary whose first copy is corrupted, and a push-mode one.
    const RUN: &str = r#"
{"t_ms":1.0,"event":"start","chassis":"test","monarch":"mm","secondaries":2}
{"t_ms":20.0,"event":"retrieved","id":"a","image":"builtin:payload","bytes":100,"algo":"crc32c","checksum":"01"}
{"t_ms":20.5,"event":"phase","id":"a","phase":"configuring","attempt":0}
{"t_ms":25.0,"event":"retrieved","id":"b","image":"builtin:payload","bytes":100,"algo":"crc32c","checksum":"02"}
{"t_ms":25.5,"event":"phase","id":"b","phase":"configuring","attempt":0}
{"t_ms":30.0,"event":"phase","id":"a","phase":"launching","attempt":0}
{"t_ms":31.0,"event":"launched","id":"a","pid":7}
{"t_ms":31.1,"event":"released","id":"a"}
{"t_ms":31.2,"event":"phase","id":"a","phase":"rendezvous","attempt":0}
{"t_ms":33.0,"event":"phase","id":"b","phase":"launching","attempt":0}
{"t_ms":34.0,"event":"phase","id":"b","phase":"rendezvous","attempt":0}
{"t_ms":35.0,"event":"phase","id":"a","phase":"copying","attempt":1}
{"t_ms":36.0,"event":"phase","id":"b","phase":"copying","attempt":1}
{"t_ms":40.0,"event":"copied","id":"a","attempt":1,"bytes":100,"ms":5.0}
{"t_ms":41.0,"event":"phase","id":"a","phase":"verifying","attempt":1}
{"t_ms":45.0,"event":"mismatch","id":"a","attempt":1,"written":"ff","expected":"01"}
{"t_ms":45.1,"event":"phase","id":"a","phase":"copying","attempt":2}
{"t_ms":46.0,"event":"repaired","id":"b","attempt":1,"chunk":3,"bytes":10}
{"t_ms":48.0,"event":"copied","id":"b","attempt":1,"bytes":100,"ms":12.0}
{"t_ms":50.0,"event":"copied","id":"a","attempt":2,"bytes":100,"ms":4.9}
{"t_ms":51.0,"event":"phase","id":"a","phase":"verifying","attempt":2}
{"t_ms":55.0,"event":"phase","id":"b","phase":"handoff","attempt":1}
{"t_ms":56.0,"event":"phase","id":"a","phase":"handoff","attempt":2}
{"t_ms":60.0,"event":"done","id":"b","state":"running","attempts":1,"bytes":100,"ms":50.0}
{"t_ms":66.0,"event":"done","id":"a","state":"running","attempts":2,"bytes":200,"ms":56.0}
{"t_ms":70.0,"event":"finished","id":"mm","epoch":1,"ok":true}
{"t_ms":80.0,"event":"summary","ok":true,"chassis":"test","total_ms":80.0,"processors":[]}
"#;

    #[test]
    fn every_phase_event_is_one_bar_of_its_phase() {
        let evs = events(RUN);
        let svg = render(&evs);
        let d = roxmltree::Document::parse(&svg).expect("the picture is XML");
        assert!(d.root_element().has_tag_name("svg"));
        for phase in ["configuring", "launching", "rendezvous", "copying", "verifying", "handoff"] {
            let drawn = with_class(&d, &format!("phase-{phase}"))
                .into_iter()
                .filter(|n| n.attribute("data-implied").is_none())
                .count();
            assert_eq!(drawn, phase_events(&evs, phase), "{phase}");
        }
        let retrieved = evs.iter().filter(|e| matches!(e.kind, EventKind::Retrieved { .. })).count();
        assert_eq!(with_class(&d, "phase-retrieve").len(), retrieved);
        assert_eq!(with_class(&d, "phase-running").len(), 2);
        // b streams (push): its copy is followed by no `verifying` event, so one is implied.
        let implied: Vec<_> =
            d.descendants().filter(|n| n.attribute("data-implied") == Some("copied")).collect();
        assert_eq!(implied.len(), 1);
        assert_eq!(implied[0].attribute("data-id"), Some("b"));
        let phases = evs.iter().filter(|e| matches!(e.kind, EventKind::Phase { .. })).count();
        assert_eq!(with_class(&d, "phase").len(), phases + retrieved + 2 + 1, "the documented mapping");
        // One row per secondary, in the order they appear.
        let rows: Vec<_> =
            with_class(&d, "row-label").iter().filter_map(|n| n.attribute("data-id")).collect();
        assert_eq!(rows, ["a", "b"]);
    }

    #[test]
    fn a_retrieve_bar_starts_at_the_first_step_its_done_event_gives() {
        let svg = render(&events(RUN));
        let d = roxmltree::Document::parse(&svg).unwrap();
        let a = with_class(&d, "phase-retrieve")
            .into_iter()
            .find(|n| n.attribute("data-id") == Some("a"))
            .unwrap();
        // a is done at 66 after 56 ms: its first step was at 10 ms.
        assert!(title(a).contains("from 10.0 to 20.0 ms"), "{}", title(a));
    }

    #[test]
    fn a_checksum_mismatch_shows_in_red_with_the_retry_after_it() {
        let svg = render(&events(RUN));
        let d = roxmltree::Document::parse(&svg).unwrap();
        let mismatch = with_class(&d, "mark-mismatch");
        assert_eq!(mismatch.len(), 1);
        assert_eq!(mismatch[0].attribute("data-id"), Some("a"));
        assert!(title(mismatch[0]).contains("checksum mismatch on attempt 1: written ff, retrieved 01"));
        let fill = mismatch[0].children().find_map(|c| c.attribute("fill")).unwrap();
        assert_eq!(fill, "#e31a1c");
        let retry = with_class(&d, "mark-retry");
        assert_eq!(retry.len(), 1, "one mark per new attempt, not per phase of it");
        assert!(title(retry[0]).contains("attempt 2"));
        assert_eq!(with_class(&d, "mark-repaired").len(), 1);
        // Every secondary is released once as a matter of course: no mark for that.
        assert!(with_class(&d, "mark-released").is_empty());
    }

    #[test]
    fn an_empty_list_is_a_picture_that_says_no_events() {
        let svg = render(&[]);
        let d = roxmltree::Document::parse(&svg).unwrap();
        assert!(d.root_element().has_tag_name("svg"));
        assert!(d.descendants().any(|n| n.text().map(str::trim) == Some("no events")));
        assert!(with_class(&d, "phase").is_empty());
    }

    #[test]
    fn a_failover_crosses_every_row_and_supervision_is_marked() {
        let evs = events(
            r#"
{"t_ms":1.0,"event":"elected","monarch":"m0","epoch":1,"reason":"lowest slot"}
{"t_ms":2.0,"event":"retrieved","id":"x","image":"i","bytes":1,"algo":"crc32c","checksum":"00"}
{"t_ms":3.0,"event":"phase","id":"x","phase":"configuring","attempt":0}
{"t_ms":3.5,"event":"held","id":"x","waiting_for":["y"]}
{"t_ms":4.0,"event":"failover","from":"m0","to":"m1","epoch":2,"reason":"r","ms":1.0}
{"t_ms":5.0,"event":"released","id":"x","without":["y"]}
{"t_ms":6.0,"event":"done","id":"x","state":"running","attempts":1,"bytes":1,"ms":5.0}
{"t_ms":7.0,"event":"answer","id":"x","notice":"reboot","answer":"defer","reason":"busy"}
{"t_ms":7.5,"event":"answer","id":"x","notice":"reboot","answer":"ack"}
{"t_ms":8.0,"event":"lost","id":"x","cause":"killed by signal 9"}
{"t_ms":9.0,"event":"restarting","id":"x","restart":1,"after_ms":100.0}
{"t_ms":9.5,"event":"retrieved","id":"x","image":"i","bytes":1,"algo":"crc32c","checksum":"00"}
{"t_ms":10.0,"event":"done","id":"x","state":"failed","attempts":3,"bytes":3,"ms":1.0,"error":"gave up"}
{"t_ms":12.0,"event":"ready","id":"z"}
"#,
        );
        let svg = render(&evs);
        let d = roxmltree::Document::parse(&svg).unwrap();
        let f = with_class(&d, "failover");
        assert_eq!(f.len(), 1);
        assert!(d.descendants().any(|n| n.text().map(str::trim) == Some("failover m0 → m1 (epoch 2)")));
        let line = f[0].children().find(|c| c.has_tag_name("line")).unwrap();
        let (y1, y2): (f64, f64) =
            (line.attribute("y1").unwrap().parse().unwrap(), line.attribute("y2").unwrap().parse().unwrap());
        assert!(y2 - y1 >= 2.0 * ROW, "across both rows: {y1}..{y2}");
        for (mark, n) in
            [("held", 1), ("released", 1), ("defer", 1), ("lost", 1), ("restarting", 1), ("failed", 1)]
        {
            assert_eq!(with_class(&d, &format!("mark-{mark}")).len(), n, "{mark}");
        }
        // The running bar ends where the image was lost, not at the end of the picture.
        let running = with_class(&d, "phase-running");
        assert_eq!(running.len(), 1);
        assert!(title(running[0]).contains("from 6.0 to 8.0 ms"), "{}", title(running[0]));
        // The restarted boot's retrieval starts after the restart, not at the first boot.
        let retrieve = with_class(&d, "phase-retrieve");
        assert!(title(retrieve[1]).contains("from 9.0 to 9.5 ms"), "{}", title(retrieve[1]));
        assert_eq!(with_class(&d, "tenure").len(), 2);
    }

    #[test]
    fn garbage_fields_and_odd_times_still_make_a_valid_picture() {
        let id = "\"<&>'\u{0}\u{1b}[31m\u{202e}evil".to_string();
        let ev = |t_ms: f64, kind: EventKind| Event { t_ms, kind };
        let evs = vec![
            ev(50.0, EventKind::Phase { id: id.clone(), phase: "copying".into(), attempt: u32::MAX }),
            ev(f64::NAN, EventKind::Phase { id: id.clone(), phase: "verifying".into(), attempt: 1 }),
            ev(-5.0, EventKind::Phase { id: id.clone(), phase: "warp\u{7}drive".into(), attempt: 0 }),
            ev(f64::INFINITY, EventKind::Ready { id: id.clone() }),
            ev(
                10.0,
                EventKind::Done {
                    id: "".into(),
                    state: "running".into(),
                    attempts: 0,
                    bytes: 0,
                    ms: f64::NAN,
                    report: None,
                    error: None,
                },
            ),
            ev(1e300, EventKind::Copied { id: "q".repeat(10_000), attempt: 0, bytes: u64::MAX, ms: -1.0 }),
            ev(
                20.0,
                EventKind::Mismatch {
                    id: id.clone(),
                    attempt: 0,
                    written: "]]>".into(),
                    expected: "\u{fffe}".into(),
                },
            ),
            ev(
                30.0,
                EventKind::Failover {
                    from: "<a>".into(),
                    to: "\"b\"".into(),
                    epoch: 0,
                    reason: String::new(),
                    ms: 0.0,
                },
            ),
        ];
        let svg = render(&evs);
        let d = roxmltree::Document::parse(&svg).expect("valid XML whatever the input");
        // An unknown phase is still a bar (of its own class); times out of order are sorted.
        assert_eq!(with_class(&d, "phase-other").len(), 1);
        assert_eq!(with_class(&d, "phase-copying").len(), 1);
        for n in with_class(&d, "phase") {
            for a in ["x", "width"] {
                let v: f64 = n.attribute(a).unwrap().parse().unwrap();
                assert!((0.0..=WIDTH).contains(&v), "{a}={v}");
            }
        }
        // The id keeps its quotes and brackets (escaped), loses its control characters.
        let ids: Vec<&str> =
            with_class(&d, "row-label").iter().filter_map(|n| n.attribute("data-id")).collect();
        assert!(ids.iter().any(|i| i.starts_with("\"<&>'\u{fffd}")), "{ids:?}");
        assert!(!svg.contains('\u{1b}') && !svg.contains('\u{202e}'));
    }

    #[test]
    fn a_stream_keeps_its_events_and_counts_the_lines_that_are_not() {
        let text = format!(
            "{}\nnot json\n\n{{\"t_ms\":1,\"event\":\"teleported\",\"id\":\"a\"}}\n{{\"t_ms\":1,\"event\":\"phase\",\"id\":\"a\"}}\n[1,2]\n",
            RUN.trim()
        );
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"\xff\n");
        let s = read_stream(&bytes[..], "run.jsonl").unwrap();
        assert_eq!(s.events.len(), RUN.trim().lines().count());
        let lines: Vec<usize> = s.skipped.iter().map(|k| k.line).collect();
        let n = RUN.trim().lines().count();
        assert_eq!(lines, [n + 1, n + 3, n + 4, n + 5, n + 6]);
        assert!(s.skipped[0].why.starts_with("not JSON"), "{:?}", s.skipped[0]);
        assert!(s.skipped[1].why.contains("does not know (\"teleported\")"), "{:?}", s.skipped[1]);
        assert!(s.skipped[2].why.contains("\"phase\" event that does not parse"), "{:?}", s.skipped[2]);
        assert_eq!(s.skipped[4].why, "not UTF-8");
        let w = s.warning().unwrap();
        assert!(w.starts_with(&format!("run.jsonl: ignored 5 of {} lines", n + 5)), "{w}");
        assert!(w.contains(&format!("line {}", n + 1)), "{w}");
        assert!(read_stream(&b""[..], "e").unwrap().warning().is_none());
    }

    #[test]
    fn a_stream_with_no_event_names_its_file_and_first_line() {
        let e = read_stream(&b"\nOK: chassis booted\n"[..], "out.txt").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("out.txt: none of its 1 lines is a monarch event (line 2: not JSON"),
            "{text}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Any sequence of these events, in any order, at any times, draws a valid picture
        /// with one bar per `phase` event.
        #[test]
        fn any_stream_draws_a_valid_picture(
            raw in prop::collection::vec((0u8..12, 0usize..3, -10.0f64..1e4, 0u32..4, 0usize..8), 0..60)
        ) {
            let ids = ["a", "b", "c"];
            let phases = ["configuring", "launching", "rendezvous", "copying", "verifying", "handoff", "", "x"];
            let evs: Vec<Event> = raw
                .iter()
                .map(|&(k, i, t, n, p)| {
                    let id = ids[i].to_string();
                    let kind = match k {
                        0 => EventKind::Phase { id, phase: phases[p].into(), attempt: n },
                        1 => EventKind::Retrieved { id, image: "i".into(), bytes: 1, algo: "crc32c".into(), checksum: "0".into() },
                        2 => EventKind::Copied { id, attempt: n, bytes: 1, ms: t / 3.0 },
                        3 => EventKind::Mismatch { id, attempt: n, written: "1".into(), expected: "2".into() },
                        4 => EventKind::Done { id, state: ["running", "failed", "released"][p % 3].into(), attempts: n, bytes: 0, ms: t, report: None, error: None },
                        5 => EventKind::Lost { id, cause: "c".into() },
                        6 => EventKind::Restarting { id, restart: n, after_ms: t },
                        7 => EventKind::Held { id, waiting_for: vec!["b".into()] },
                        8 => EventKind::Released { id, without: vec![] },
                        9 => EventKind::Failover { from: "m".into(), to: id, epoch: n, reason: String::new(), ms: 0.0 },
                        10 => EventKind::Down { id, state: "failed".into(), why: "w".into() },
                        _ => EventKind::Repaired { id, attempt: n, chunk: 0, bytes: 1 },
                    };
                    Event { t_ms: t, kind }
                })
                .collect();
            let svg = render(&evs);
            let d = roxmltree::Document::parse(&svg).expect("valid XML");
            let phases = evs.iter().filter(|e| matches!(e.kind, EventKind::Phase { .. })).count();
            let drawn = with_class(&d, "phase")
                .into_iter()
                .filter(|n| !n.attribute("class").unwrap_or("").contains("phase-retrieve")
                    && !n.attribute("class").unwrap_or("").contains("phase-running")
                    && n.attribute("data-implied").is_none())
                .count();
            prop_assert_eq!(drawn, phases);
        }
    }
}
