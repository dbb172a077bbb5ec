//! `monarch plan --simulate`: a machine of clusters' predicted boot time, phased beside flat
//! (the model is `monarch_boot::phased::simulate`; docs/scaling.md).

use crate::exit::bad_input;
use clap::Args;
use monarch_boot::cmdline::TopologyOpt;
use monarch_boot::phased::simulate::{self, Costs, Machine};
use monarch_boot::values;
use std::process::ExitCode;

/// Bytes per second in a Gbit/s, over bytes in a GiB: Gbit/s → GiB/s.
const GBIT_IN_GIB: f64 = 1e9 / 8.0 / (1u64 << 30) as f64;

#[allow(missing_docs)] // clap would show a doc comment here as the help text
#[derive(Args, Debug, Clone, Default)]
pub struct SimulateArgs {
    /// Predict the boot time of a machine of clusters, phased beside flat, instead of printing
    /// the plan.
    #[arg(long)]
    pub simulate: bool,
    /// The link the copies share (out of cluster 0's bank when phased, out of the monarch when
    /// flat), in Gbit/s [default: as fast as one core copies: --memcpy-gib-s].
    #[arg(long, value_name = "G", requires = "simulate")]
    pub link_gbps: Option<f64>,
    /// A machine of this many clusters (with --cores) instead of the topology's.
    #[arg(long, value_name = "N", requires_all = ["simulate", "cores"])]
    pub clusters: Option<u32>,
    /// Cores per cluster (with --clusters).
    #[arg(long, value_name = "K", requires_all = ["simulate", "clusters"])]
    pub cores: Option<u32>,
    /// Kernel size with --clusters [default: the topology's image size, else 16MiB].
    #[arg(long, value_name = "SIZE", value_parser = values::parse_size, requires = "simulate")]
    pub image_size: Option<u64>,
    /// Measure this host's costs first (memcpy, populating memory, BLAKE3, CRC32C, starting a
    /// process and the kernel), and run every core on its CPUs, as `monarch up` does here.
    #[arg(long, requires = "simulate")]
    pub measure: bool,
    /// CPUs every core shares, a fraction when other work takes its share [default: each
    /// core its own CPU; with --measure, the parallelism measured on this host].
    #[arg(long, value_name = "N", requires = "simulate")]
    pub host_cpus: Option<f64>,
    /// memcpy into fresh memory, GiB/s, one core [default: 4].
    #[arg(long, value_name = "GIB_S", requires = "simulate")]
    pub memcpy_gib_s: Option<f64>,
    /// Populating fresh memory (page faults, zeroing), GiB/s [default: 4].
    #[arg(long, value_name = "GIB_S", requires = "simulate")]
    pub touch_gib_s: Option<f64>,
    /// Reading memory another process populated, through a fresh mapping, GiB/s [default: 8].
    #[arg(long, value_name = "GIB_S", requires = "simulate")]
    pub map_gib_s: Option<f64>,
    /// BLAKE3, GiB/s, one core [default: 2].
    #[arg(long, value_name = "GIB_S", requires = "simulate")]
    pub hash_gib_s: Option<f64>,
    /// CRC32C, GiB/s, one core [default: 8].
    #[arg(long, value_name = "GIB_S", requires = "simulate")]
    pub checksum_gib_s: Option<f64>,
    /// Starting a process, ms [default: 2].
    #[arg(long, value_name = "MS", requires = "simulate")]
    pub process_start_ms: Option<f64>,
    /// Starting the kernel (exec, its check of itself, its report), ms [default: a process
    /// start + a copy + a CRC32C of the kernel].
    #[arg(long, value_name = "MS", requires = "simulate")]
    pub kernel_start_ms: Option<f64>,
    /// A barrier's latency, ms [default: 0.1].
    #[arg(long, value_name = "MS", requires = "simulate")]
    pub barrier_ms: Option<f64>,
    /// One JSON object on stdout: phased_ms, flat_ms, ratio, the steps of each, the costs.
    #[arg(long, requires = "simulate")]
    pub json: bool,
}

/// `monarch plan --simulate`.
pub fn run(a: &SimulateArgs, topo: &TopologyOpt) -> ExitCode {
    let loaded = match (a.clusters, &topo.topology) {
        (Some(_), None) => None,
        _ => match topo.load() {
            Ok(t) => Some(t),
            Err(e) => return bad_input(&e),
        },
    };
    let from_topology = loaded.as_ref().and_then(Machine::of);
    let machine = match (a.clusters, a.cores) {
        (Some(n), Some(k)) => Machine::uniform(
            n,
            k,
            a.image_size.or(from_topology.as_ref().map(|m| m.image_bytes)).unwrap_or(16 << 20),
        ),
        _ => match from_topology {
            Some(mut m) => {
                if let Some(s) = a.image_size {
                    m.image_bytes = s;
                }
                m
            }
            None => {
                return bad_input(
                    &"plan --simulate needs a machine of clusters: --topology examples/clusters.toml (a topology with [[cluster]] tables), or --clusters N --cores K",
                );
            }
        },
    };
    let mut c = Costs::default();
    if a.measure {
        let exe = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => return bad_input(&format!("cannot find this executable: {e}")),
        };
        match monarch_bench::clusters::measure(&exe, machine.image_bytes) {
            Ok(m) => c = m.costs(),
            Err(e) => {
                eprintln!("monarch plan --simulate --measure: {e}");
                return ExitCode::from(crate::exit::BOOT_FAILED);
            }
        }
    }
    let set = |v: &mut f64, o: Option<f64>| {
        if let Some(x) = o {
            *v = x;
        }
    };
    set(&mut c.memcpy_gib_s, a.memcpy_gib_s);
    set(&mut c.touch_gib_s, a.touch_gib_s);
    set(&mut c.map_gib_s, a.map_gib_s);
    set(&mut c.hash_gib_s, a.hash_gib_s);
    set(&mut c.checksum_gib_s, a.checksum_gib_s);
    set(&mut c.process_start_ms, a.process_start_ms);
    set(&mut c.barrier_ms, a.barrier_ms);
    if a.kernel_start_ms.is_some() {
        c.kernel_start_ms = a.kernel_start_ms;
    }
    if a.host_cpus.is_some() {
        c.host_cpus = a.host_cpus;
    }
    if let Some(g) = a.link_gbps {
        c.link_gib_s = Some(g * GBIT_IN_GIB);
    }
    let positive =
        [c.memcpy_gib_s, c.touch_gib_s, c.hash_gib_s, c.checksum_gib_s, c.link(), c.host_cpus.unwrap_or(1.0)];
    if positive.iter().any(|v| !v.is_finite() || *v <= 0.0)
        || [c.process_start_ms, c.barrier_ms, c.kernel_start_ms.unwrap_or(0.0)]
            .iter()
            .any(|v| !v.is_finite() || *v < 0.0)
    {
        return bad_input(&"plan --simulate: bandwidths and --host-cpus must be above 0, times 0 or more");
    }
    let p = simulate::predict(&machine, &c);
    if a.json {
        println!("{}", serde_json::to_string(&p).unwrap_or_default());
    } else {
        print!("{}", simulate::render(&p));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    #[test]
    fn eight_gbit_s_is_a_gigabyte_per_second() {
        assert!((8.0 * super::GBIT_IN_GIB - 1e9 / f64::from(1u32 << 30)).abs() < 1e-12);
    }
}
