//! `monarch bench window`: the window path measured beside its physical limit, in one run.
//!
//! The limit on one machine is the bandwidth of copying into a shared mapping, so that is the
//! reference: `memcpy` (our window driver's bulk copy, by atomic words) of as many bytes as the image into a
//! shared window created and populated just before, as the delivery's window is (wrapping
//! round a window smaller than the image, as the ring does), best of several runs. A window
//! reused from the previous run would sit in this machine's 105 MiB L3 cache and flatter the
//! reference with a cache-to-cache copy no delivery gets. Then the real thing: the monarch stages the same image
//! to N real agent processes through real windows (handoff `none`, so nothing but the
//! delivery and its verification is timed), from the start of the copy to the written
//! checksum's arrival. Every figure is printed beside the reference and their ratio.

use monarch_boot::events::EventKind;
use monarch_boot::plan::Plan;
use monarch_boot::run::{UpOptions, up};
use monarch_boot::topology::Topology;
use monarch_boot::values::fmt_size;
use monarch_drivers::Window;
use monarch_proto::Algo;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// Options of `monarch bench window`.
#[derive(Debug, Clone)]
pub struct WindowBenchOptions {
    /// Image size.
    pub size: u64,
    /// Secondaries on direct ports, staged in parallel.
    pub secondaries: u32,
    /// Window data-area size (at least the image size for now).
    pub window: u64,
    /// Written-checksum algorithm.
    pub algo: Algo,
    /// Chunk size of the streamed delivery (None: the topology's default).
    pub chunk: Option<u64>,
    /// Repetitions of each measurement (the best is kept).
    pub reps: u32,
    /// The `monarch` binary, to start agents.
    pub agent_exe: std::path::PathBuf,
    /// Also deliver the image signed (`signature = "required"`), alternating with the plain
    /// runs: the agent then hashes its copy with BLAKE3 and checks an Ed25519 signature.
    pub signed: bool,
}

/// A throughput beside its reference.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What was measured.
    pub what: String,
    /// Bytes per second, in GiB/s.
    pub gib_s: f64,
    /// What it is compared with.
    pub reference: String,
    /// The reference, GiB/s, measured in the same run.
    pub reference_gib_s: f64,
    /// `gib_s / reference_gib_s`.
    pub ratio: f64,
    /// The best case: memcpy into a cache-warm mapping, same run.
    pub warm_reference_gib_s: f64,
    /// `gib_s / warm_reference_gib_s`.
    pub ratio_to_warm: f64,
}

/// Checksum throughput.
#[derive(Debug, Clone, Serialize)]
pub struct ChecksumFigure {
    /// Algorithm.
    pub algo: String,
    /// GiB/s over an in-memory buffer.
    pub gib_s: f64,
    /// Against the memcpy reference.
    pub ratio_to_memcpy: f64,
}

/// Everything `monarch bench window` measured.
#[derive(Debug, Clone, Serialize)]
pub struct WindowBench {
    /// Always `window`.
    pub bench: &'static str,
    /// Image size.
    pub size: u64,
    /// Secondaries.
    pub secondaries: u32,
    /// Window data-area size.
    pub window: u64,
    /// Written-checksum algorithm of the delivery.
    pub algo: String,
    /// Chunk size of the streamed delivery.
    pub chunk: u64,
    /// The reference: memcpy into a freshly created shared mapping, one core, GiB/s.
    pub memcpy_gib_s: f64,
    /// The best case: memcpy into a cache-warm shared mapping, one core, GiB/s.
    pub memcpy_warm_gib_s: f64,
    /// The price of copying by atomic words: libc's memcpy of the same bytes into a freshly
    /// allocated private buffer of the window's size, one core, GiB/s (the window copies
    /// above go through the window driver's atomic-word copy).
    pub plain_memcpy_gib_s: f64,
    /// Checksum throughputs.
    pub checksums: Vec<ChecksumFigure>,
    /// Delivered + verified, per secondary (the slowest), and aggregate over all.
    pub figures: Vec<Figure>,
    /// With `--signed`: the signed delivery's throughput divided by the plain one's, both
    /// from this run (1.0 = signature verification is free).
    pub signed_to_checksum_ratio: Option<f64>,
    /// Peak resident memory of this process (the monarch side, bench buffers included).
    pub monarch_peak_rss: u64,
    /// Peak resident memory of the largest agent (its VmHWM, from its log).
    pub agent_peak_rss: u64,
}

const REFERENCE: &str = "memcpy into a fresh shared mapping, one core";

fn gib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / d.as_secs_f64().max(1e-9)
}

/// Deterministic, incompressible-looking bytes (xorshift64*), fast to make.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut x = seed | 1;
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The largest `peak memory N kB` an agent logged in `run_dir`.
fn agent_peak(run_dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(run_dir) else { return 0 };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| {
                    l.split("peak memory ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok()
                })
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap_or(0)
        * 1024
}

fn write_pattern_file(path: &Path, size: u64) -> Result<(), String> {
    use std::io::Write;
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    let mut left = size;
    let mut seed = 0x006d_6f6e_6172_6368u64;
    while left > 0 {
        let n = left.min(64 << 20);
        f.write_all(&pattern(usize::try_from(n).map_err(|e| e.to_string())?, seed)).map_err(err)?;
        left -= n;
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    }
    f.flush().map_err(err)
}

/// Time to copy `size` bytes from `piece` (repeated) into the first `len` bytes of `w`'s data
/// area, wrapping round as the ring does.
fn copy_through(w: &Window, piece: &[u8], size: u64, len: u64) -> Result<Duration, String> {
    timed_wrapping(piece, size, len, |at, bytes| w.write_data(at, bytes).map_err(|e| e.to_string()))
}

/// Time to hand `size` bytes of `piece` (repeated) to `write` at offsets that wrap round the
/// first `len` bytes, as the ring does: the copy loop of every reference.
fn timed_wrapping(
    piece: &[u8],
    size: u64,
    len: u64,
    mut write: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<Duration, String> {
    let t = Instant::now();
    let mut done = 0u64;
    while done < size {
        let at = done % len;
        let n = (size - done).min(piece.len() as u64).min(len - at);
        write(at, &piece[..usize::try_from(n).map_err(|e| e.to_string())?])?;
        done += n;
    }
    Ok(t.elapsed())
}

/// memcpy bandwidth into a shared mapping under the delivery's own conditions: `size` bytes
/// copied from `piece` (repeated) into a window of `window` bytes that was created and
/// populated just before, as each delivery's window is; wrapping round it when the image is
/// larger, as the ring does. Best of `reps`.
pub fn memcpy_reference(dir: &Path, piece: &[u8], size: u64, window: u64, reps: u32) -> Result<f64, String> {
    let mut best = Duration::MAX;
    for rep in 0..reps.max(1) {
        let path = dir.join(format!("reference-{rep}.win"));
        let len = window.min(size).max(piece.len() as u64);
        let w = Window::create(&path, len).map_err(|e| e.to_string())?;
        best = best.min(copy_through(&w, piece, size, len)?);
        drop(w);
        let _ = std::fs::remove_file(&path);
    }
    Ok(gib_s(size, best))
}

/// libc's memcpy (`copy_from_slice`) of `size` bytes from `piece` into a private buffer of
/// the window's size, allocated and touched just before: what the window's copy would cost
/// with plain stores into memory no other process sees. Best of `reps`.
pub fn plain_memcpy(piece: &[u8], size: u64, window: u64, reps: u32) -> Result<f64, String> {
    let len = usize::try_from(window.min(size).max(piece.len() as u64)).map_err(|e| e.to_string())?;
    let mut best = Duration::MAX;
    for _ in 0..reps.max(1) {
        let mut buf = vec![1u8; len];
        let took = timed_wrapping(piece, size, len as u64, |at, bytes| {
            let at = usize::try_from(at).map_err(|e| e.to_string())?;
            buf[at..at + bytes.len()].copy_from_slice(bytes);
            Ok(())
        })?;
        best = best.min(took);
        std::hint::black_box(&buf);
    }
    Ok(gib_s(size, best))
}

/// The same copy into one window reused run after run, so its pages sit in the cache: the
/// best case, printed as an upper bound beside the like-for-like reference.
pub fn memcpy_warm(dir: &Path, piece: &[u8], size: u64, window: u64, reps: u32) -> Result<f64, String> {
    let path = dir.join("reference-warm.win");
    let len = window.min(size).max(piece.len() as u64);
    let w = Window::create(&path, len).map_err(|e| e.to_string())?;
    let mut best = Duration::MAX;
    for _ in 0..reps.max(1) + 1 {
        best = best.min(copy_through(&w, piece, size, len)?);
    }
    drop(w);
    let _ = std::fs::remove_file(&path);
    Ok(gib_s(size, best))
}

/// Checksum throughput of each algorithm over `data`: best of `reps`.
pub fn checksum_figures(data: &[u8], reps: u32, memcpy: f64) -> Vec<ChecksumFigure> {
    Algo::ALL
        .into_iter()
        .map(|algo| {
            let mut best = Duration::MAX;
            for _ in 0..reps.max(1) {
                let t = Instant::now();
                std::hint::black_box(algo.digest(std::hint::black_box(data)));
                best = best.min(t.elapsed());
            }
            let g = gib_s(data.len() as u64, best);
            ChecksumFigure { algo: algo.name().into(), gib_s: g, ratio_to_memcpy: g / memcpy }
        })
        .collect()
}

/// Run the window bench.
pub fn window(opts: &WindowBenchOptions, progress: &mut dyn FnMut(&str)) -> Result<WindowBench, String> {
    monarch_drivers::host::with_scratch(Path::new("/dev/shm"), "bench", |dir| {
        // Memory stays bounded by the window: the image is written to its file in pieces,
        // and the reference copies a window-sized buffer as often as the image needs.
        progress(&format!("making a {} image", fmt_size(opts.size)));
        let img_path = dir.join("image.bin");
        write_pattern_file(&img_path, opts.size)?;
        let piece = usize::try_from(opts.size.min(opts.window).min(256 << 20)).map_err(|e| e.to_string())?;
        let buffer = pattern(piece, 0x006d_6f6e_6172_6368);
        progress("measuring memcpy into a shared mapping (the reference)");
        let memcpy = memcpy_reference(dir, &buffer, opts.size, opts.window, opts.reps)?;
        let warm = memcpy_warm(dir, &buffer, opts.size, opts.window, opts.reps)?;
        let plain = plain_memcpy(&buffer, opts.size, opts.window, opts.reps)?;
        progress("measuring checksum throughput");
        let checksums = checksum_figures(&buffer, opts.reps, memcpy);
        drop(buffer);
        let mut best_slowest = 0.0f64;
        let mut best_aggregate = 0.0f64;
        let mut best_signed = 0.0f64;
        if opts.signed {
            progress("signing the image (a fresh Ed25519 key pair)");
            monarch_boot::signing::keygen(&dir.join("bench")).map_err(|e| e.to_string())?;
            monarch_boot::signing::sign_file(&dir.join("bench.key"), &img_path).map_err(|e| e.to_string())?;
        }
        for rep in 0..opts.reps.max(1) {
            progress(&format!(
                "delivering to {} secondar{} (run {}/{})",
                opts.secondaries,
                if opts.secondaries == 1 { "y" } else { "ies" },
                rep + 1,
                opts.reps.max(1)
            ));
            let (slowest, aggregate) = deliver(opts, dir, &img_path, false)?;
            best_slowest = best_slowest.max(slowest);
            best_aggregate = best_aggregate.max(aggregate);
            if opts.signed {
                // Alternating with the plain runs, so both see the same host.
                let (slowest, _) = deliver(opts, dir, &img_path, true)?;
                best_signed = best_signed.max(slowest);
            }
        }
        let mut figures = vec![Figure {
            what: format!(
                "delivered + verified ({}), per secondary (slowest of {})",
                opts.algo, opts.secondaries
            ),
            gib_s: best_slowest,
            reference: REFERENCE.into(),
            reference_gib_s: memcpy,
            ratio: best_slowest / memcpy,
            warm_reference_gib_s: warm,
            ratio_to_warm: best_slowest / warm,
        }];
        if opts.signed {
            figures.push(Figure {
                what: format!(
                    "delivered + verified ({}) + signature checked by the agent (BLAKE3 + Ed25519), per secondary (slowest of {})",
                    opts.algo, opts.secondaries
                ),
                gib_s: best_signed,
                reference: REFERENCE.into(),
                reference_gib_s: memcpy,
                ratio: best_signed / memcpy,
                warm_reference_gib_s: warm,
                ratio_to_warm: best_signed / warm,
            });
        }
        if opts.secondaries > 1 {
            figures.push(Figure {
                what: format!(
                    "delivered + verified ({}), aggregate over {} secondaries",
                    opts.algo, opts.secondaries
                ),
                gib_s: best_aggregate,
                reference: REFERENCE.into(),
                reference_gib_s: memcpy,
                ratio: best_aggregate / memcpy,
                warm_reference_gib_s: warm,
                ratio_to_warm: best_aggregate / warm,
            });
        }
        Ok(WindowBench {
            bench: "window",
            size: opts.size,
            secondaries: opts.secondaries,
            window: opts.window,
            algo: opts.algo.name().into(),
            chunk: opts.chunk.unwrap_or(monarch_boot::topology::defaults::CHUNK_SIZE),
            memcpy_gib_s: memcpy,
            memcpy_warm_gib_s: warm,
            plain_memcpy_gib_s: plain,
            checksums,
            figures,
            signed_to_checksum_ratio: opts.signed.then(|| best_signed / best_slowest.max(1e-12)),
            monarch_peak_rss: monarch_drivers::host::peak_rss_bytes(),
            agent_peak_rss: agent_peak(&dir.join("run")),
        })
    })
}

/// One delivery run: (seconds of the slowest secondary's delivery, aggregate GiB/s).
pub fn deliver_once(opts: &WindowBenchOptions, dir: &Path, image: &Path) -> Result<(f64, f64), String> {
    let (slowest, aggregate) = deliver(opts, dir, image, false)?;
    Ok((opts.size as f64 / (1u64 << 30) as f64 / slowest.max(1e-12), aggregate))
}

/// One delivery run: (slowest per-secondary GiB/s, aggregate GiB/s).
fn deliver(opts: &WindowBenchOptions, dir: &Path, image: &Path, signed: bool) -> Result<(f64, f64), String> {
    let mut text = format!(
        "[chassis]\nname = \"bench\"\nrun_dir = \"{}\"\n{}[defaults]\nhandoff = \"none\"\nchecksum = \"{}\"\nattempts = 1\n\
         {}[[processor]]\nid = \"mm\"\nrole = \"monarch\"\n",
        dir.join("run").display(),
        if signed { "trust = [\"bench.pub\"]\nsignature = \"required\"\n" } else { "" },
        opts.algo.name(),
        opts.chunk.map(|c| format!("chunk_size = {c}\n")).unwrap_or_default()
    );
    for i in 0..opts.secondaries {
        text.push_str(&format!(
            "[[processor]]\nid = \"s{i}\"\nrole = \"secondary\"\nimage = \"{}\"\nwindow = {{ size = {} }}\n",
            image.display(),
            opts.window
        ));
    }
    let topo = Topology::parse(&text, Path::new("<bench>"), dir).map_err(|e| e.to_string())?;
    let plan = Plan::new(topo);
    let up_opts =
        UpOptions { agent_exe: opts.agent_exe.clone(), shutdown_grace: Duration::from_secs(1), hold: None };
    // Per secondary: from its copy start to the arrival of its written checksum (its
    // "handoff" phase starts right after the monarch compared it).
    let mut starts = std::collections::HashMap::new();
    let mut ends = std::collections::HashMap::new();
    let summary = up(&plan, &up_opts, &mut |ev| {
        if let EventKind::Phase { id, phase, .. } = &ev.kind {
            match phase.as_str() {
                "copying" => {
                    starts.entry(id.clone()).or_insert(ev.t_ms);
                }
                "handoff" => {
                    ends.insert(id.clone(), ev.t_ms);
                }
                _ => {}
            }
        }
    });
    if !summary.ok {
        let why: Vec<String> = summary.processors.iter().filter_map(|p| p.error.clone()).collect();
        return Err(format!("the bench boot failed: {}", why.join("; ")));
    }
    let mut slowest = f64::MAX;
    let (mut first, mut last) = (f64::MAX, 0.0f64);
    for (id, s) in &starts {
        let e = ends.get(id).copied().ok_or(format!("no end event for {id}"))?;
        slowest = slowest.min(gib_s(opts.size, Duration::from_secs_f64((e - s).max(1e-6) / 1e3)));
        first = first.min(*s);
        last = last.max(e);
    }
    let total = u64::from(opts.secondaries) * opts.size;
    Ok((slowest, gib_s(total, Duration::from_secs_f64((last - first).max(1e-6) / 1e3))))
}

/// `monarch bench window` for people.
pub fn render(r: &WindowBench) -> String {
    let mut out = format!(
        "\nmonarch bench window: {} image, {} secondar{}, {} window, {} chunks, {}\n\n",
        fmt_size(r.size),
        r.secondaries,
        if r.secondaries == 1 { "y" } else { "ies" },
        fmt_size(r.window),
        fmt_size(r.chunk),
        r.algo
    );
    out.push_str(&format!(
        "  reference  memcpy into a fresh shared mapping, one core        {:>7.2} GiB/s  (as each delivery's window is)\n",
        r.memcpy_gib_s
    ));
    out.push_str(&format!(
        "  best case  memcpy into a cache-warm shared mapping, one core   {:>7.2} GiB/s  (the same window rewritten)\n",
        r.memcpy_warm_gib_s
    ));
    out.push_str(&format!(
        "  plain      libc memcpy into fresh private memory, one core     {:>7.2} GiB/s  (the window's copies go by atomic words: {:.2}x this)\n\n",
        r.plain_memcpy_gib_s,
        r.memcpy_gib_s / r.plain_memcpy_gib_s.max(1e-9)
    ));
    for c in &r.checksums {
        out.push_str(&format!(
            "  checksum   {:<8} {:>7.2} GiB/s   {:.2}x memcpy\n",
            c.algo, c.gib_s, c.ratio_to_memcpy
        ));
    }
    out.push('\n');
    for f in &r.figures {
        out.push_str(&format!(
            "  {}\n      {:.2} GiB/s = {:.2}x the reference ({}: {:.2} GiB/s), {:.2}x the best case ({:.2} GiB/s)\n\n",
            f.what, f.gib_s, f.ratio, f.reference, f.reference_gib_s, f.ratio_to_warm, f.warm_reference_gib_s
        ));
    }
    if let Some(ratio) = r.signed_to_checksum_ratio {
        out.push_str(&format!(
            "  window delivery with signature verification, as a ratio to the checksum alone: {ratio:.2}x (same run)\n\n"
        ));
    }
    out.push_str(&format!(
        "  peak memory: monarch side {} (bench buffers and the window mapping included), largest agent {}\n",
        fmt_size(r.monarch_peak_rss.next_multiple_of(1 << 20)),
        fmt_size(r.agent_peak_rss.next_multiple_of(1 << 20))
    ));
    out
}
