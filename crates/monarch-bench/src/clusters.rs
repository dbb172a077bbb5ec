//! `monarch bench clusters`: a machine of clusters booted in phases beside the same machine
//! booted flat, alternating in one run, each `monarch up` a child process of this one; and
//! the model's prediction (`monarch plan --simulate`), calibrated on costs measured in the
//! same run, beside both.
//!
//! The costs the model takes are measured before every pair of boots, and their medians
//! calibrate it. Time to all RUNNING: the `t_ms` of the last `done` event in state `running`. Both boots
//! count their events' times from the same point, the start of the boot inside `monarch up`
//! (so neither includes starting `monarch up` itself), and a run counts only when every
//! core reached RUNNING. Bytes written by the monarch, from the summary: the phased boot's
//! monarch row (the kernel, the description and cluster 0's boot info, once); in the flat
//! boot the monarch makes every copy, so the sum of every row's bytes.

use crate::window::{checksum_figures, memcpy_reference, pattern};
use monarch_boot::events::{EventKind, Summary};
use monarch_boot::phased::simulate::{self, Costs, Machine, Prediction};
use monarch_boot::topology::Topology;
use monarch_boot::values::fmt_size;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The default topology: four clusters of four cores (`examples/clusters.toml`), compiled in
/// so that the bench needs nothing from the source tree (see [`example_for`]).
pub const EXAMPLE: &str = include_str!("../../../examples/clusters.toml");

/// [`EXAMPLE`], its kernel large enough for the demo payload next to `exe`: a release
/// build's (25 MiB) does not fit the example's 16 MiB, so the kernel doubles until it does.
pub fn example_for(exe: &Path) -> (String, u64) {
    let program = std::fs::metadata(exe.with_file_name("monarch-payload")).map_or(0, |m| m.len());
    // The banner and the trailer, with room to spare.
    let need = program + (1 << 20);
    let mut size: u64 = 16 << 20;
    while size < need {
        size *= 2;
    }
    let text = EXAMPLE.replace("image_size = \"16MiB\"", &format!("image_size = \"{}MiB\"", size >> 20));
    (text, size)
}

/// Options of `monarch bench clusters`.
#[derive(Debug, Clone)]
pub struct ClustersOptions {
    /// Boots of each kind.
    pub runs: u32,
    /// Topology file; `None`: [`EXAMPLE`].
    pub topology: Option<PathBuf>,
    /// The `monarch` executable.
    pub exe: PathBuf,
}

/// One boot, measured from outside.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Time to all RUNNING, ms.
    pub ms: f64,
    /// Bytes the monarch wrote.
    pub monarch_bytes: u64,
}

/// Costs measured on this host in the same run, which calibrate the model.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// memcpy into a fresh shared mapping, the kernel's size, one core, best of 3, GiB/s.
    pub memcpy_gib_s: f64,
    /// BLAKE3 over the kernel's size, one core, best of 3, GiB/s.
    pub blake3_gib_s: f64,
    /// CRC32C over the kernel's size, one core, best of 3, GiB/s.
    pub crc32c_gib_s: f64,
    /// Mapping a fresh shared window of the kernel's size, populated (page faults and
    /// zeroing), best of 3, GiB/s.
    pub touch_gib_s: f64,
    /// Reading a populated file of the kernel's size through a mapping just made (a page at
    /// a time: the faults), best of 3, GiB/s.
    pub map_gib_s: f64,
    /// Starting this executable (`monarch --version`) until it exited, median of 5, ms.
    pub process_start_ms: f64,
    /// Starting the kernel itself (the built-in payload of the kernel's size, exec'd from a
    /// sealed image in memory as the cores run it, checking itself, printing its report),
    /// median of 3, ms.
    pub kernel_start_ms: f64,
    /// CPUs this process may run on.
    pub host_cpus: u32,
    /// The CPUs the boots get: `host_cpus` kernels started at once, against one alone,
    /// `host_cpus × alone ÷ together` (less than `host_cpus` when other work takes its share).
    pub effective_cpus: f64,
}

/// Everything `monarch bench clusters` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ClustersBench {
    /// Always `clusters`.
    pub bench: &'static str,
    /// The topology booted.
    pub topology: String,
    /// Clusters and cores.
    pub clusters: usize,
    /// Every core, the monarch included.
    pub cores: u64,
    /// The kernel, bytes.
    pub image_bytes: u64,
    /// Boots of each kind.
    pub runs: u32,
    /// Time to all RUNNING, phased, median, ms.
    pub phased_ms: f64,
    /// … flat, median, ms.
    pub flat_ms: f64,
    /// … phased, 90th percentile (nearest rank), ms.
    pub phased_p90_ms: f64,
    /// … flat, 90th percentile (nearest rank), ms.
    pub flat_p90_ms: f64,
    /// `flat_ms / phased_ms`.
    pub ratio: f64,
    /// Bytes the monarch wrote, phased, median.
    pub monarch_bytes_phased: u64,
    /// … flat, median.
    pub monarch_bytes_flat: u64,
    /// `monarch_bytes_flat / monarch_bytes_phased`.
    pub bytes_ratio: f64,
    /// Every phased boot, in order.
    pub phased_samples: Vec<Sample>,
    /// Every flat boot, in order.
    pub flat_samples: Vec<Sample>,
    /// The host's costs: each the median of its measurements, taken before every pair of boots.
    pub measured: Measured,
    /// The reference every speed is beside: memcpy into a fresh shared mapping, GiB/s.
    pub memcpy_gib_s: f64,
    /// The model's prediction from the measured costs.
    pub prediction: Prediction,
    /// `(predicted - measured) / measured`, phased, percent.
    pub phased_error_pct: f64,
    /// … flat, percent.
    pub flat_error_pct: f64,
}

/// The median (the mean of the middle two for an even count; 0 for none).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Nearest rank: the smallest value with at least `p` percent at or below it.
pub fn pct(v: &[f64], p: usize) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n => v[(n * p).div_ceil(100).clamp(1, n) - 1],
    }
}

/// Milliseconds `cmd` takes from its start to its exit, median of `n`.
fn time_process(cmd: &mut Command, n: usize) -> Result<f64, String> {
    let mut took = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
        took.push(t.elapsed().as_secs_f64() * 1e3);
        if !status.success() {
            return Err(format!("{:?} failed: {status}", cmd.get_program()));
        }
    }
    Ok(median(&took))
}

/// Measure the model's costs on this host, over the kernel's size (`image_bytes`, from 1 to
/// 256 MiB): memcpy into a fresh shared mapping, populating one, BLAKE3 and CRC32C; starting
/// `exe`, and starting the built-in payload of that size (the kernel the cores jump into).
pub fn measure(exe: &Path, image_bytes: u64) -> Result<Measured, String> {
    let size = image_bytes.clamp(1 << 20, 256 << 20);
    let len = usize::try_from(size).map_err(|e| e.to_string())?;
    let piece = pattern(len, 0x636c_7573_7465_7273);
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1));
    let (memcpy, touch, map, kernel_start_ms, effective_cpus) =
        monarch_drivers::host::with_scratch(Path::new("/dev/shm"), "bench-clusters", |dir| {
            let memcpy = memcpy_reference(dir, &piece, size, size, 3)?;
            let mut best = Duration::MAX;
            for rep in 0..3 {
                let path = dir.join(format!("touch-{rep}.win"));
                let t = Instant::now();
                let w = monarch_drivers::Window::create(&path, size).map_err(|e| e.to_string())?;
                best = best.min(t.elapsed());
                drop(w);
                let _ = std::fs::remove_file(&path);
            }
            let touch = size as f64 / f64::from(1u32 << 30) / best.as_secs_f64().max(1e-9);
            // A file another process populated, mapped afresh and read: a bank, a window.
            let path = dir.join("map.bank");
            std::fs::write(&path, &piece).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut best = Duration::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                let bank = monarch_boot::phased::bank::Bank::open(&path).map_err(|e| e.to_string())?;
                let bytes = bank.read((0, size), size)?;
                let sum = bytes.iter().step_by(4096).fold(0u8, |a, b| a.wrapping_add(*b));
                std::hint::black_box(sum);
                best = best.min(t.elapsed());
            }
            let _ = std::fs::remove_file(&path);
            let map = size as f64 / f64::from(1u32 << 30) / best.as_secs_f64().max(1e-9);
            // The kernel: the payload program next to `exe`, padded to the kernel's size.
            let program = exe.with_file_name("monarch-payload");
            let kernel = monarch_boot::image::build_payload(&program, size, "bench clusters")
                .map_err(|e| format!("the kernel to time: {e}"))?;
            // Run from a sealed image in memory, as every core runs its cluster's kernel.
            let sealed = monarch_drivers::memimage::SealedImage::of("bench-kernel", &kernel)
                .map_err(|e| format!("the kernel to time, in memory: {e}"))?;
            drop(kernel);
            let path = sealed.path();
            let mut cmd = Command::new(&path);
            cmd.env_remove("MONARCH_WINDOW").env_remove("MONARCH_BOOT_INFO");
            let kernel_start = time_process(&mut cmd, 3)?;
            // As many at once as there are CPUs: how many the boots really get.
            let mut together = Vec::new();
            for _ in 0..3 {
                let t = Instant::now();
                let children = (0..host_cpus)
                    .map(|_| {
                        cmd.stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .map_err(|e| format!("cannot start {}: {e}", path.display()))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                for mut c in children {
                    c.wait().map_err(|e| e.to_string())?;
                }
                together.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let effective = (f64::from(host_cpus) * kernel_start / median(&together).max(1e-9))
                .clamp(1.0, f64::from(host_cpus));
            Ok((memcpy, touch, map, kernel_start, effective))
        })?;
    let sums = checksum_figures(&piece, 3, memcpy);
    let of = |name: &str| sums.iter().find(|c| c.algo == name).map_or(0.0, |c| c.gib_s);
    let process_start_ms = time_process(Command::new(exe).arg("--version"), 5)?;
    Ok(Measured {
        memcpy_gib_s: memcpy,
        blake3_gib_s: of("blake3"),
        crc32c_gib_s: of("crc32c"),
        touch_gib_s: touch,
        map_gib_s: map,
        process_start_ms,
        kernel_start_ms,
        host_cpus,
        effective_cpus,
    })
}

impl Measured {
    /// Each cost's median over several measurements.
    pub fn median(all: &[Measured]) -> Measured {
        let of = |f: fn(&Measured) -> f64| median(&all.iter().map(f).collect::<Vec<f64>>());
        Measured {
            memcpy_gib_s: of(|m| m.memcpy_gib_s),
            blake3_gib_s: of(|m| m.blake3_gib_s),
            crc32c_gib_s: of(|m| m.crc32c_gib_s),
            touch_gib_s: of(|m| m.touch_gib_s),
            map_gib_s: of(|m| m.map_gib_s),
            process_start_ms: of(|m| m.process_start_ms),
            kernel_start_ms: of(|m| m.kernel_start_ms),
            host_cpus: all.first().map_or(1, |m| m.host_cpus),
            effective_cpus: of(|m| m.effective_cpus),
        }
    }

    /// The model's costs from these measurements: the cores of a machine booted by `monarch
    /// up` are processes of this host, so they share the CPUs it measured they get; the link is memcpy (banks and
    /// windows are shared memory of this host); barriers keep their default.
    pub fn costs(&self) -> Costs {
        Costs {
            memcpy_gib_s: self.memcpy_gib_s,
            link_gib_s: None,
            hash_gib_s: self.blake3_gib_s,
            checksum_gib_s: self.crc32c_gib_s,
            touch_gib_s: self.touch_gib_s,
            map_gib_s: self.map_gib_s,
            process_start_ms: self.process_start_ms,
            kernel_start_ms: Some(self.kernel_start_ms),
            host_cpus: Some(self.effective_cpus),
            ..Costs::default()
        }
    }
}

/// Boot `topology` once with `monarch up --json` (`--flat`), as a child process.
pub fn boot_once(exe: &Path, topology: &Path, flat: bool, limit: Duration) -> Result<Sample, String> {
    let mut cmd = Command::new(exe);
    cmd.arg("up").arg("--json").arg("--topology").arg(topology);
    if flat {
        cmd.arg("--flat");
    }
    let (events, status, _) = crate::run::run_up(&mut cmd, limit)?;
    let how = if flat { "flat" } else { "phased" };
    let summary: &Summary = events
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            EventKind::Summary(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| format!("the {how} boot printed no summary (did it run out of {limit:?}?)"))?;
    if !status.success() || !summary.ok {
        let why: Vec<String> = summary.processors.iter().filter_map(|p| p.error.clone()).collect();
        return Err(format!("the {how} boot failed: {}", why.join("; ")));
    }
    let running: Vec<f64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Done { state, .. } if state == "running" => Some(e.t_ms),
            _ => None,
        })
        .collect();
    // Every core boots, the monarch's own too when phased; the flat boot's monarch stays one.
    let cores = summary.processors.iter().filter(|p| p.state != "monarch").count();
    if running.len() != cores {
        return Err(format!("the {how} boot: {} of {cores} cores reported RUNNING", running.len()));
    }
    let monarch_bytes = if flat {
        summary.processors.iter().map(|p| p.bytes).sum()
    } else {
        summary.processors.iter().filter(|p| p.role == "monarch").map(|p| p.bytes).sum()
    };
    Ok(Sample { ms: running.iter().copied().fold(0.0, f64::max), monarch_bytes })
}

/// Run the bench: measure the costs, then `runs` phased and `runs` flat boots, alternating.
pub fn bench(opts: &ClustersOptions, progress: &mut dyn FnMut(&str)) -> Result<ClustersBench, String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("cannot make a scratch folder: {e}"))?;
    let (path, name) = match &opts.topology {
        Some(p) => (p.clone(), p.display().to_string()),
        None => {
            let p = scratch.path().join("clusters.toml");
            let (text, size) = example_for(&opts.exe);
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
            let name = if size == 16 << 20 {
                "examples/clusters.toml (built in)".to_string()
            } else {
                format!(
                    "examples/clusters.toml (built in), its kernel {} to hold this build's payload",
                    fmt_size(size)
                )
            };
            (p, name)
        }
    };
    let topology = Topology::load(&path).map_err(|e| e.to_string())?;
    let machine =
        Machine::of(&topology).ok_or("the topology has no [[cluster]]: not a machine of clusters")?;
    let limit = Duration::from_secs(120);
    let (mut phased, mut flat) = (Vec::new(), Vec::new());
    let mut costs = Vec::new();
    let runs = opts.runs.max(1);
    for i in 0..runs {
        // The costs before every pair of boots, so that the calibration sees the host the
        // boots see (other work on it comes and goes).
        progress(&format!(
            "run {}/{runs}: measuring this host: memcpy, populating, BLAKE3 and CRC32C over {}, starting a process and the kernel",
            i + 1,
            fmt_size(machine.image_bytes)
        ));
        costs.push(measure(&opts.exe, machine.image_bytes)?);
        // Alternating, and which goes first alternates too, so both see the same host.
        for is_flat in if i % 2 == 0 { [false, true] } else { [true, false] } {
            let s = boot_once(&opts.exe, &path, is_flat, limit)?;
            progress(&format!(
                "run {}/{runs} {}: all RUNNING at {:.1} ms, the monarch wrote {}",
                i + 1,
                if is_flat { "flat  " } else { "phased" },
                s.ms,
                fmt_size(s.monarch_bytes)
            ));
            if is_flat { flat.push(s) } else { phased.push(s) }
        }
    }
    let ms = |v: &[Sample]| v.iter().map(|s| s.ms).collect::<Vec<f64>>();
    // The lower middle: bytes are counts, not averaged.
    let bytes = |v: &[Sample]| {
        let mut b: Vec<u64> = v.iter().map(|s| s.monarch_bytes).collect();
        b.sort_unstable();
        b.get(b.len().saturating_sub(1) / 2).copied().unwrap_or(0)
    };
    let (phased_ms, flat_ms) = (median(&ms(&phased)), median(&ms(&flat)));
    let (monarch_bytes_phased, monarch_bytes_flat) = (bytes(&phased), bytes(&flat));
    let measured = Measured::median(&costs);
    let prediction = simulate::predict(&machine, &measured.costs());
    let err = |p: f64, m: f64| (p - m) / m.max(1e-9) * 100.0;
    Ok(ClustersBench {
        bench: "clusters",
        topology: name,
        clusters: machine.cores.len(),
        cores: machine.total_cores(),
        image_bytes: machine.image_bytes,
        runs,
        phased_ms,
        flat_ms,
        phased_p90_ms: pct(&ms(&phased), 90),
        flat_p90_ms: pct(&ms(&flat), 90),
        ratio: flat_ms / phased_ms.max(1e-9),
        monarch_bytes_phased,
        monarch_bytes_flat,
        bytes_ratio: monarch_bytes_flat as f64 / (monarch_bytes_phased as f64).max(1.0),
        phased_samples: phased,
        flat_samples: flat,
        memcpy_gib_s: measured.memcpy_gib_s,
        phased_error_pct: err(prediction.phased_ms, phased_ms),
        flat_error_pct: err(prediction.flat_ms, flat_ms),
        measured,
        prediction,
    })
}

/// `monarch bench clusters` for people.
pub fn render(r: &ClustersBench) -> String {
    let m = &r.measured;
    let mut out = format!(
        "\nmonarch bench clusters: {} ({} clusters, {} cores, {} kernel), {} run{} each, alternating\n\n",
        r.topology,
        r.clusters,
        r.cores,
        fmt_size(r.image_bytes),
        r.runs,
        if r.runs == 1 { "" } else { "s" }
    );
    out.push_str(&format!(
        "  reference  memcpy into a fresh shared mapping, one core   {:>7.2} GiB/s\n\
         \x20 this host  BLAKE3 {:.2} GiB/s ({:.2}x memcpy), CRC32C {:.2} GiB/s ({:.2}x memcpy), populating fresh memory {:.2} GiB/s ({:.2}x memcpy),\n\
         \x20            reading through a fresh mapping {:.2} GiB/s ({:.2}x memcpy)\n\
         \x20            process start {:.2} ms, kernel start {:.2} ms, {} CPU(s), of which the boots get {:.2}\n\n",
        m.memcpy_gib_s,
        m.blake3_gib_s,
        m.blake3_gib_s / m.memcpy_gib_s.max(1e-9),
        m.crc32c_gib_s,
        m.crc32c_gib_s / m.memcpy_gib_s.max(1e-9),
        m.touch_gib_s,
        m.touch_gib_s / m.memcpy_gib_s.max(1e-9),
        m.map_gib_s,
        m.map_gib_s / m.memcpy_gib_s.max(1e-9),
        m.process_start_ms,
        m.kernel_start_ms,
        m.host_cpus,
        m.effective_cpus
    ));
    out.push_str(&format!(
        "  {:<8} {:>12} {:>12} {:>16} {:>14} {:>8}\n",
        "boot", "median ms", "p90 ms", "monarch writes", "predicted ms", "error"
    ));
    for (name, ms, p90, bytes, predicted, error) in [
        (
            "phased",
            r.phased_ms,
            r.phased_p90_ms,
            r.monarch_bytes_phased,
            r.prediction.phased_ms,
            r.phased_error_pct,
        ),
        ("flat", r.flat_ms, r.flat_p90_ms, r.monarch_bytes_flat, r.prediction.flat_ms, r.flat_error_pct),
    ] {
        out.push_str(&format!(
            "  {name:<8} {ms:>12.1} {p90:>12.1} {:>16} {predicted:>14.1} {error:>+7.1}%\n",
            fmt_size(bytes)
        ));
    }
    out.push_str(&format!(
        "\n  phased is {:.2}x faster than flat to all RUNNING (same run), and the monarch writes {:.1}x fewer bytes\n",
        r.ratio, r.bytes_ratio
    ));
    out.push_str(&format!(
        "  the model (monarch plan --simulate, calibrated on the costs above) predicts {:.2}x\n\n",
        r.prediction.ratio
    ));
    out.push_str(&simulate::render(&r.prediction));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_topology_is_a_machine_of_clusters() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("clusters.toml");
        std::fs::write(&p, EXAMPLE).unwrap();
        let m = Machine::of(&Topology::load(&p).unwrap()).unwrap();
        assert_eq!(m.cores, [4, 4, 4, 4]);
        assert_eq!(m.image_bytes, 16 << 20);
    }

    #[test]
    fn the_example_kernel_grows_to_hold_a_large_payload() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("monarch");
        let (text, size) = example_for(&exe);
        assert_eq!((text.as_str(), size), (EXAMPLE, 16 << 20), "no payload: as the example");
        std::fs::write(dir.path().join("monarch-payload"), vec![0u8; 25 << 20]).unwrap();
        let (text, size) = example_for(&exe);
        assert_eq!(size, 32 << 20);
        assert!(text.contains("image_size = \"32MiB\""), "{text}");
    }

    #[test]
    fn median_and_nearest_rank() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < f64::EPSILON);
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!((pct(&v, 90) - 9.0).abs() < f64::EPSILON);
        assert!(pct(&[], 90).abs() < f64::EPSILON);
    }
}
