//! A model of a machine of clusters' boot time (`monarch plan --simulate`): the phased boot
//! beside the flat one, predicted from a few costs (copy, hash and checksum bandwidths, the
//! price of starting a process, a barrier's latency) and two limits: the link every copy
//! out of cluster 0's bank (phased) or out of the monarch (flat) shares, and the CPUs that
//! run it all (one per core on real hardware; a few host CPUs when the cores are processes
//! of one Linux box). Sans IO: the caller measures or chooses the costs (docs/scaling.md).
//!
//! Each step is a set of equal tasks run in parallel; its time is the longest of: one task
//! alone, the tasks' CPU time spread over the CPUs available (fluid sharing), and the bytes
//! that cross the shared link at its bandwidth. A boot is the sum of its steps.

use serde::Serialize;

/// Bytes in a GiB.
const GIB: f64 = (1u64 << 30) as f64;

/// The costs the model is built from. Defaults are round figures of a current x86 server
/// core (docs/scaling.md); `monarch bench clusters` and `plan --simulate --measure` measure
/// them on the host instead.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Costs {
    /// Copying into memory not touched before (a bank, a window, a memfd), GiB/s, one core.
    /// Default 4.
    pub memcpy_gib_s: f64,
    /// The link the copies share: out of cluster 0's bank in the phased boot, out of the
    /// monarch in the flat one, GiB/s. `None`: as fast as one core copies (`memcpy_gib_s`).
    pub link_gib_s: Option<f64>,
    /// BLAKE3, which checks the kernel against the handoff record (heads and cores), GiB/s,
    /// one core. Default 2.
    pub hash_gib_s: f64,
    /// CRC32C, the retrieved and written checksums of the flat boot and the kernel's check of
    /// its own image, GiB/s, one core. Default 8.
    pub checksum_gib_s: f64,
    /// Populating memory not touched before (page faults and zeroing: a bank's pages as they
    /// are first written, a window mapped at configure time, a kernel's memfd), GiB/s, one
    /// core. Default 4.
    pub touch_gib_s: f64,
    /// Reading memory another process populated through a mapping just made (a head reading
    /// bank 0, a core its bank, an agent its window: page faults, no zeroing), GiB/s, one
    /// core. Default 8.
    pub map_gib_s: f64,
    /// Starting a process (a core, an agent) until it runs its own code, ms. Default 2.
    pub process_start_ms: f64,
    /// Starting the kernel: exec of the image, its read and check of itself, its report, ms.
    /// `None`: a process start, a copy and a CRC32C of the image.
    pub kernel_start_ms: Option<f64>,
    /// A barrier, from its last arrival to everyone released, ms. Default 0.1.
    pub barrier_ms: f64,
    /// CPUs that run every core: `None` on real hardware (each core its own CPU, and the
    /// monarch one core); `Some(n)` when the cores are processes sharing n host CPUs (a
    /// fraction when other work on the host takes its share of them).
    pub host_cpus: Option<f64>,
}

impl Default for Costs {
    fn default() -> Costs {
        Costs {
            memcpy_gib_s: 4.0,
            link_gib_s: None,
            hash_gib_s: 2.0,
            checksum_gib_s: 8.0,
            touch_gib_s: 4.0,
            map_gib_s: 8.0,
            process_start_ms: 2.0,
            kernel_start_ms: None,
            barrier_ms: 0.1,
            host_cpus: None,
        }
    }
}

impl Costs {
    /// The shared link's bandwidth, GiB/s.
    pub fn link(&self) -> f64 {
        self.link_gib_s.unwrap_or(self.memcpy_gib_s)
    }

    /// Milliseconds to move `bytes` at `gib_s`.
    fn ms(bytes: u64, gib_s: f64) -> f64 {
        bytes as f64 / GIB / gib_s.max(1e-9) * 1e3
    }
}

/// The machine: its clusters' core counts (cluster 0 first; core 0 of cluster 0 is the
/// monarch) and the kernel every core boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// Cores of each cluster.
    pub cores: Vec<u32>,
    /// The kernel image, bytes.
    pub image_bytes: u64,
}

impl Machine {
    /// `clusters` clusters of `cores` cores each.
    pub fn uniform(clusters: u32, cores: u32, image_bytes: u64) -> Machine {
        Machine { cores: vec![cores.max(1); usize::try_from(clusters.max(1)).unwrap_or(1)], image_bytes }
    }

    /// The machine a topology of clusters describes (its tested cores and the image size);
    /// `None` for a topology without `[[cluster]]`.
    pub fn of(t: &crate::topology::Topology) -> Option<Machine> {
        let c = t.clusters.as_ref()?;
        let cores = c
            .clusters
            .iter()
            .map(|cl| u32::try_from(cl.cores.iter().filter(|k| !k.failed).count()).unwrap_or(u32::MAX))
            .collect();
        // A file's size as it is now (0 when it cannot be read).
        let image_bytes = t.secondaries.first().map_or(0, |s| match &s.image {
            crate::topology::ImageSource::Builtin { size, .. } => *size,
            crate::topology::ImageSource::File(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
        });
        Some(Machine { cores, image_bytes })
    }

    /// Every core, the monarch included.
    pub fn total_cores(&self) -> u64 {
        self.cores.iter().map(|c| u64::from(*c)).sum()
    }
}

/// One step of a boot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// What happens.
    pub what: String,
    /// Tasks run in parallel.
    pub tasks: u64,
    /// One task alone, ms.
    pub task_ms: f64,
    /// The step, ms.
    pub ms: f64,
    /// What bounds it: `task` (one task alone), `cpu` (CPUs shared), `link` (the shared
    /// link), `latency` (a barrier).
    pub bound: &'static str,
}

/// One way of booting, predicted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Boot {
    /// Its steps, in order.
    pub steps: Vec<Step>,
    /// Their sum: time to every core RUNNING, ms.
    pub total_ms: f64,
    /// Bytes the monarch writes.
    pub monarch_bytes: u64,
}

/// The phased boot beside the flat one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The machine.
    pub clusters: usize,
    /// Every core, the monarch included.
    pub cores: u64,
    /// The kernel, bytes.
    pub image_bytes: u64,
    /// The costs it was computed with.
    pub costs: Costs,
    /// The phased boot.
    pub phased: Boot,
    /// The flat boot.
    pub flat: Boot,
    /// Predicted time to all RUNNING, phased, ms.
    pub phased_ms: f64,
    /// … flat, ms.
    pub flat_ms: f64,
    /// `flat_ms / phased_ms`.
    pub ratio: f64,
}

/// A step of `tasks` equal tasks of `cpu_ms` CPU time each, `link_bytes` crossing the shared
/// link, on `cpus` CPUs.
fn step(what: &str, tasks: u64, cpu_ms: f64, link_bytes: u64, cpus: f64, c: &Costs) -> Step {
    if tasks == 0 {
        return Step { what: what.into(), tasks, task_ms: 0.0, ms: 0.0, bound: "task" };
    }
    let alone = cpu_ms;
    let shared = tasks as f64 * cpu_ms / cpus.clamp(1.0, tasks as f64);
    let link = Costs::ms(link_bytes, c.link());
    let (ms, bound) = if link > 0.0 && link >= shared.max(alone) {
        (link, "link")
    } else if shared > alone * 1.000_001 {
        (shared, "cpu")
    } else {
        (alone, "task")
    };
    Step { what: what.into(), tasks, task_ms: alone, ms, bound }
}

fn barrier(what: &str, c: &Costs) -> Step {
    Step { what: what.into(), tasks: 1, task_ms: c.barrier_ms, ms: c.barrier_ms, bound: "latency" }
}

fn boot(steps: Vec<Step>, monarch_bytes: u64) -> Boot {
    Boot { total_ms: steps.iter().map(|s| s.ms).sum(), steps, monarch_bytes }
}

/// Predict both boots of `m` with costs `c`.
pub fn predict(m: &Machine, c: &Costs) -> Prediction {
    let s = m.image_bytes;
    let n = m.total_cores();
    let secondaries = n.saturating_sub(1);
    let heads = m.cores.len().saturating_sub(1) as u64;
    // Every core its own CPU on real hardware, the host's CPUs in an emulation.
    let cpus = |tasks: u64| c.host_cpus.unwrap_or(tasks as f64);
    // The monarch: one core on real hardware; its threads share the host's CPUs otherwise.
    let monarch_cpus = c.host_cpus.unwrap_or(1.0);
    let copy = Costs::ms(s, c.memcpy_gib_s);
    let touch = Costs::ms(s, c.touch_gib_s);
    let map = Costs::ms(s, c.map_gib_s);
    let hash = Costs::ms(s, c.hash_gib_s);
    let crc = Costs::ms(s, c.checksum_gib_s);
    let start = c.process_start_ms;
    // Starting the kernel: the process replaced by it, which reads itself.
    let kernel_start = c.kernel_start_ms.unwrap_or(start + copy + crc);
    // Flat: every secondary's verified copy into fresh executable memory, then started.
    let jump = touch + copy + kernel_start;
    // The cores a head starts: every core but the heads; in cluster 0, the monarch's own
    // core too (the monarch heads it).
    let others: u64 = m.cores.iter().map(|k| u64::from(k.saturating_sub(1))).sum::<u64>() + 1;
    let phased = boot(
        vec![
            // The kernel made once (its record hashed with BLAKE3), written into bank 0 and
            // sealed in memory for cluster 0's cores, fresh pages touched as they are written.
            step(
                "1 monarch: kernel made, hashed, into bank 0 and sealed",
                1,
                touch + hash + 2.0 * (touch + copy),
                0,
                1.0,
                c,
            ),
            step(
                "2 heads: copy from bank 0, check (BLAKE3), seal, boot info",
                heads,
                start + map + 2.0 * (touch + copy + hash),
                heads * s,
                cpus(heads),
                c,
            ),
            barrier("  heads barrier", c),
            step(
                "3 cores started by their heads, check the kernel",
                others,
                start + map + hash,
                0,
                cpus(others),
                c,
            ),
            barrier("  cluster barriers", c),
            barrier("  final barrier", c),
            // Every core of a cluster runs the one sealed kernel its head made: nothing to copy.
            step("4 every core jumps into its cluster's kernel", n, kernel_start, 0, cpus(n), c),
        ],
        s,
    );
    let flat = boot(
        vec![
            step(
                "1 monarch: image made and checksummed, per secondary",
                secondaries,
                touch + crc,
                0,
                monarch_cpus,
                c,
            ),
            step(
                "2 windows mapped (populated), agents started",
                secondaries,
                touch + start,
                0,
                cpus(secondaries),
                c,
            ),
            step("3 monarch copies into every window", secondaries, copy, secondaries * s, monarch_cpus, c),
            step("4 agents verify the written checksum", secondaries, map + crc, 0, cpus(secondaries), c),
            step("5 every core jumps into its kernel", secondaries, jump, 0, cpus(secondaries), c),
        ],
        secondaries * s,
    );
    Prediction {
        clusters: m.cores.len(),
        cores: n,
        image_bytes: s,
        costs: *c,
        phased_ms: phased.total_ms,
        flat_ms: flat.total_ms,
        ratio: flat.total_ms / phased.total_ms.max(1e-9),
        phased,
        flat,
    }
}

/// The prediction for people: each boot's steps, then the totals.
pub fn render(p: &Prediction) -> String {
    let c = &p.costs;
    let mut out = format!(
        "monarch plan --simulate: {} clusters, {} cores, {} kernel\n\
         costs: memcpy {:.2} GiB/s, link {:.2} GiB/s ({:.1} Gbit/s), BLAKE3 {:.2} GiB/s, CRC32C {:.2} GiB/s, \
         touch {:.2} GiB/s, map {:.2} GiB/s, process start {:.2} ms, kernel start {}, barrier {:.2} ms, {}\n",
        p.clusters,
        p.cores,
        crate::values::fmt_size(p.image_bytes),
        c.memcpy_gib_s,
        c.link(),
        c.link() * GIB * 8.0 / 1e9,
        c.hash_gib_s,
        c.checksum_gib_s,
        c.touch_gib_s,
        c.map_gib_s,
        c.process_start_ms,
        c.kernel_start_ms.map_or_else(|| "= start + copy + CRC32C".to_string(), |k| format!("{k:.2} ms")),
        c.barrier_ms,
        match c.host_cpus {
            None => "every core its own CPU".to_string(),
            Some(n) => format!("all cores on {n:.2} host CPU(s)"),
        }
    );
    for (name, b) in [("phased", &p.phased), ("flat", &p.flat)] {
        out.push_str(&format!("\n{name}:\n"));
        for s in &b.steps {
            out.push_str(&format!(
                "  {:<56} {:>7} x {:>9.2} ms  {:>10.2} ms  ({})\n",
                s.what, s.tasks, s.task_ms, s.ms, s.bound
            ));
        }
        out.push_str(&format!(
            "  {:<56} {:>35.2} ms  monarch writes {}\n",
            "total",
            b.total_ms,
            crate::values::fmt_size(b.monarch_bytes)
        ));
    }
    out.push_str(&format!(
        "\nphased {:.1} ms, flat {:.1} ms: phased is {:.2}x faster\n",
        p.phased_ms, p.flat_ms, p.ratio
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB16: u64 = 16 << 20;

    #[test]
    fn phased_beats_flat_on_a_large_machine_and_writes_the_kernel_once() {
        let p = predict(&Machine::uniform(256, 64, MIB16), &Costs::default());
        assert!(p.phased_ms < p.flat_ms, "{p:?}");
        assert!(p.ratio > 10.0, "{}", p.ratio);
        assert_eq!(p.phased.monarch_bytes, MIB16);
        assert_eq!(p.flat.monarch_bytes, (256 * 64 - 1) * MIB16);
        assert_eq!(p.cores, 256 * 64);
    }

    #[test]
    fn a_faster_link_never_slows_a_boot() {
        let m = Machine::uniform(64, 16, MIB16);
        let mut last: Option<Prediction> = None;
        for gib_s in [0.5, 1.0, 2.0, 4.0, 8.0, 32.0] {
            let p = predict(&m, &Costs { link_gib_s: Some(gib_s), ..Costs::default() });
            if let Some(l) = &last {
                assert!(p.phased_ms <= l.phased_ms && p.flat_ms <= l.flat_ms, "{gib_s}: {p:?}");
            }
            last = Some(p);
        }
    }

    #[test]
    fn more_host_cpus_never_slow_a_boot_and_an_emulation_is_cpu_bound() {
        let m = Machine::uniform(4, 4, MIB16);
        let mut last = f64::MAX;
        for n in [1.0, 1.5, 2.0, 4.0, 16.0] {
            let p = predict(&m, &Costs { host_cpus: Some(n), ..Costs::default() });
            assert!(p.phased_ms <= last, "{n}: {}", p.phased_ms);
            last = p.phased_ms;
        }
        let p = predict(&m, &Costs { host_cpus: Some(2.0), ..Costs::default() });
        assert!(p.phased.steps.iter().any(|s| s.bound == "cpu"), "{}", render(&p));
    }

    #[test]
    fn flat_copies_are_bound_by_the_monarch_link() {
        let m = Machine::uniform(16, 16, MIB16);
        let c = Costs { link_gib_s: Some(1.0), ..Costs::default() };
        let p = predict(&m, &c);
        let copies = &p.flat.steps[2];
        assert_eq!(copies.bound, "link");
        // 255 copies of 16 MiB at 1 GiB/s.
        assert!((copies.ms - 255.0 * 16.0 / 1024.0 * 1e3).abs() < 1e-6, "{copies:?}");
    }

    #[test]
    fn one_cluster_has_no_heads_step_and_steps_add_up() {
        let p = predict(&Machine::uniform(1, 4, MIB16), &Costs::default());
        assert_eq!(p.phased.steps[1].tasks, 0);
        assert!(p.phased.steps[1].ms.abs() < f64::EPSILON);
        let sum: f64 = p.phased.steps.iter().map(|s| s.ms).sum();
        assert!((sum - p.phased_ms).abs() < 1e-9);
        // Four cores started by the monarch (its own among them), four jumps.
        assert_eq!(p.phased.steps[3].tasks, 4);
        assert_eq!(p.phased.steps[6].tasks, 4);
    }

    #[test]
    fn a_bigger_kernel_costs_more() {
        let c = Costs::default();
        let small = predict(&Machine::uniform(8, 8, MIB16), &c);
        let big = predict(&Machine::uniform(8, 8, 4 * MIB16), &c);
        assert!(big.phased_ms > small.phased_ms && big.flat_ms > small.flat_ms);
    }
}
