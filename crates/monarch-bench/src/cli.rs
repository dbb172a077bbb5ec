//! `monarch bench …` on the command line: the arguments of each bench (parsed by the
//! `monarch` binary, which hands the subcommand here), running it, and printing its result
//! as JSON or for people. The binary maps a [`BenchError`] to its exit status.
use clap::{Args, Subcommand};
use monarch_boot::values;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a bench did not give its figures.
#[derive(Debug, Error)]
pub enum BenchError {
    /// The bench could not run to the end (a tool missing, a server that did not start, …).
    #[error("monarch bench {bench}: {message}")]
    Failed {
        /// Which bench.
        bench: String,
        /// What went wrong.
        message: String,
    },
    /// Its input was wrong (the topology of `bench failover`).
    #[error("{0}")]
    BadInput(String),
    /// Trials ran, and some were not ok (failover: not every secondary booted once,
    /// correctly; recovery: not detected and RUNNING again).
    #[error("monarch bench {bench}: {failed} of {trials} trials were not ok")]
    TrialsFailed {
        /// Which bench.
        bench: &'static str,
        /// Trials not ok.
        failed: usize,
        /// Trials run.
        trials: usize,
    },
}

/// Run one bench; `exe` is the `monarch` executable, which the benches start as agents and
/// candidates.
pub fn run(cmd: BenchCmd, exe: &Path) -> Result<(), BenchError> {
    match cmd {
        BenchCmd::Window(a) => window(a, exe),
        BenchCmd::Baseline(a) => baseline(a, exe),
        BenchCmd::Vm(a) => vm(a, exe),
        BenchCmd::Failover(a) => failover(a, exe),
        BenchCmd::Recovery(a) => recovery(a, exe),
        BenchCmd::Clusters(a) => {
            let opts = crate::clusters::ClustersOptions {
                runs: a.runs.max(1),
                topology: a.topology,
                exe: exe.to_path_buf(),
            };
            let result = crate::clusters::bench(&opts, &mut bench_progress(a.json));
            report_bench("clusters", a.json, result, crate::clusters::render)
        }
        BenchCmd::Up(a) => {
            let opts =
                crate::up::UpOptions { runs: a.runs.max(1), topology: a.topology, exe: exe.to_path_buf() };
            let result = crate::up::bench(&opts, &mut bench_progress(a.json));
            report_bench("up", a.json, result, crate::up::render)
        }
        BenchCmd::Netboot(a) => {
            let opts = crate::netboot::NetbenchOptions {
                tftp_size: a.tftp_size,
                http_size: a.http_size,
                reps: a.reps.max(1),
                ..Default::default()
            };
            let result = crate::netboot::netboot_bench(&opts, &mut bench_progress(a.json));
            report_bench("netboot", a.json, result, crate::netboot::render)
        }
    }
}

/// `monarch bench …`: each measurement beside a reference measured in the same run.
#[derive(Subcommand)]
pub enum BenchCmd {
    /// The window path beside its limit: memcpy bandwidth into a shared mapping.
    #[command(long_about = "The window path beside its physical limit, measured in one run.\n\n\
Reference: memcpy of the image into a populated shared mapping (one core, best of --reps). \
Then the real delivery: the monarch stages the same image to --secondaries real agent \
processes on direct ports (handoff none), timed from the start of each copy to the arrival of \
the written checksum. Prints GiB/s and the ratio to the reference for each figure, and the \
throughput of each checksum algorithm.")]
    Window(BenchWindowArgs),
    /// the classic path (BIOS and TFTP) beside the window: TFTP with 512-byte blocks from tftpd-hpa.
    #[command(
        long_about = "The reference design's baseline, measured beside the window path in one run.\n\n\
The same image is fetched with a real TFTP client (atftp) from Debian's tftpd-hpa with \
512-byte blocks, on loopback and over a veth pair with MTU 1500 between two network namespaces \
the bench creates and removes; then delivered and verified through a window. Prints each \
time and the window path's speed-up. Installs tftpd-hpa and atftp with apt-get when missing \
(needs root, as do the namespaces)."
    )]
    Baseline(BenchBaselineArgs),
    /// VM start to the delivered kernel running: the window (stage 1 + kexec) beside iPXE/TFTP.
    #[command(
        long_about = "Time from starting a QEMU VM to the delivered kernel running, two ways, in one run:\n\n\
- through the window: stage 1 boots, its agent verifies the bundle in the ivshmem BAR, kexec (the path of launch = \"qemu\");\n\
- over the network: QEMU's own iPXE fetches the same kernel and initramfs from QEMU's built-in TFTP server (-netdev user,tftp=…,bootfile=…) with the same command line.\n\n\
Both clocks start at QEMU's spawn and stop when the delivered initramfs says it runs. Needs `monarch vm prepare` first."
    )]
    Vm(BenchVmArgs),
    /// Network boot beside tftpd-hpa and nginx: TFTP (window 1 and 16) and HTTP, loopback and veth.
    #[command(long_about = "Our network boot services beside the classic servers, measured in one run.\n\n\
TFTP: the same file fetched by the same client (atftp, blksize 1468) from our server and from \
Debian's tftpd-hpa, with windowsize 1 and with windowsize 16 (RFC 7440; tftpd-hpa ignores the \
option and runs lock-step). HTTP: the same file fetched by curl from our server and from nginx \
(sendfile on). Each over loopback and over a veth pair with MTU 1500 into a network namespace \
the bench creates and removes. Prints MiB/s, the ratio to the reference and the target; \
beside them the client's own CPU time per transfer, the fastest the client could fetch at that \
(its limit on this host) and the ratio that allows at most (`ceiling`): a target above the \
ceiling is marked client-bound. Installs tftpd-hpa, atftp, curl and nginx with apt-get when missing (needs root).")]
    Netboot(BenchNetbootArgs),
    /// Failover: kill the monarch at random points of the boot; failover time p50/p99.
    #[command(long_about = "Failover under fire, measured in real runs.\n\n\
An undisturbed `monarch up` of the topology (which needs two or more management processors; \
the built-in chassis has two) calibrates how long a boot takes; then each trial boots it again \
and SIGKILLs the monarch at a uniformly random point of its progress (after the n-th of the \
events an undisturbed boot has, n drawn uniformly). A trial is ok when every \
secondary ends RUNNING, each was released exactly once, and only into the image whose checksum \
the monarch retrieved (every agent logs its handoff). Failover time: from the SIGKILL to the \
new monarch's takeover (next epoch claimed on the backplane or in etcd, and in every window); its \
floor is the heartbeat timeout ([election] timeout), or the lease TTL on etcd ([election] ttl), \
which the report prints beside it.")]
    Failover(BenchFailoverArgs),
    /// Crash recovery: kill running images at random under `up --hold`; detect and recover p50/p99.
    #[command(long_about = "Crash recovery of a supervised chassis, measured in one run.\n\n\
`monarch up --hold` boots a server chassis (two DPUs and a host that depends on them; or --topology, with \
one management processor); each trial SIGKILLs the running image of one secondary drawn at random and \
times, as a client following the events sees them, the detection (kill → the supervisor's `lost` event) \
and the recovery (kill → RUNNING again: its image retrieved, delivered and verified afresh). The built-in \
chassis restarts without back-off and without a restart limit, so the figures are the mechanism's own. \
Reference, from the same run: one image's delivery alone (its stage's time, retrieve → RUNNING).")]
    Recovery(BenchRecoveryArgs),
    /// A machine of clusters booted in phases beside flat, with the model's prediction.
    #[command(
        long_about = "A machine of clusters booted in phases beside the same machine booted flat, in one run.\n\n\
Boots the topology (default: examples/clusters.toml, four clusters of four cores, built in; its \
16 MiB kernel doubled until it holds this build's demo payload, 32 MiB for a release build) with \
`monarch up --json` and with `monarch up --flat --json`, alternating, --runs of each, and prints the \
median and p90 time to all RUNNING (the last core's RUNNING report, on the boot's own clock) and the \
bytes the monarch wrote. First it measures this host: memcpy into a fresh shared mapping (the \
reference), BLAKE3 and CRC32C over the kernel's size, and the start of a process; the model of \
`monarch plan --simulate`, calibrated on those costs, predicts both boots, and its error is printed \
beside the measured times.\n\n\
Examples:\n  monarch bench clusters\n  monarch bench clusters --runs 10 --json\n  \
monarch bench clusters --topology my-clusters.toml"
    )]
    Clusters(BenchClustersArgs),
    /// The main job's wall time: `monarch up` on the default chassis, beside its copies' memcpy time.
    #[command(
        long_about = "The main job's wall time, measured from outside: `monarch up --json` (the built-in \
default chassis, or --topology) runs --runs times, each a child process timed from its start to its \
exit; prints the median and p90, the boot's own total and what lies outside it (process start, \
monarch election, stopping the images), and each phase's slowest secondary (queued behind a switch, \
retrieve, configure, rendezvous, copy, verify, handoff), medians over the runs. Beside them, the reference measured in \
the same run: memcpy into a fresh shared mapping, and what copying every secondary's image at that \
speed would take, the floor of a delivery through windows.\n\n\
Examples:\n  monarch bench up\n  monarch bench up --runs 20 --json\n  monarch bench up -t my-chassis.toml"
    )]
    Up(BenchUpArgs),
}

#[allow(missing_docs)] // clap would show a doc comment here as the help text
#[derive(Args)]
pub struct BenchUpArgs {
    /// Topology file [default: the built-in default chassis].
    #[arg(long, short = 't', value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Runs of `monarch up`; the median and p90 are printed.
    #[arg(long, default_value_t = 10)]
    runs: u32,
    /// One JSON object on stdout: wall_ms, wall_p90_ms, boot_ms, outside_ms, phases_ms,
    /// image_bytes, memcpy_gib_s, memcpy_ms, wall_over_memcpy and every run's samples.
    #[arg(long)]
    json: bool,
}

#[allow(missing_docs)] // clap would show a doc comment here as the help text
#[derive(Args)]
pub struct BenchClustersArgs {
    /// Topology of a machine of clusters [default: examples/clusters.toml, built in].
    #[arg(long, short = 't', value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Boots of each kind (phased and flat, alternating); the medians are compared.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// One JSON object on stdout: phased_ms, flat_ms, monarch_bytes_phased, monarch_bytes_flat
    /// (medians), their p90s, ratio, the samples, the measured costs and the prediction.
    #[arg(long)]
    json: bool,
}

#[allow(missing_docs)] // clap would show a doc comment here as the help text
#[derive(Args)]
pub struct BenchRecoveryArgs {
    /// Topology file (one management processor) [default: a built-in server with two DPUs].
    #[arg(long, short = 't', value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Trials (each one image killed and recovered).
    #[arg(long, default_value_t = 30)]
    trials: usize,
    /// One JSON object on stdout: trials, ok, detect_p50_ms, detect_p99_ms, recover_p50_ms,
    /// recover_p99_ms, deliver_p50_ms, deliver_p99_ms, secondaries, failures.
    #[arg(long)]
    json: bool,
}

fn recovery(a: BenchRecoveryArgs, exe: &Path) -> Result<(), BenchError> {
    let json = a.json;
    let r = crate::recovery::bench(exe, a.topology.as_deref(), a.trials.max(1), &mut |i, line| {
        if !json {
            eprintln!("trial {:>3}: {line}", i + 1);
        }
    })
    .map_err(|e| match e {
        crate::recovery::RecoveryError::BadInput(m) => BenchError::BadInput(m),
        crate::recovery::RecoveryError::Failed(message) => {
            BenchError::Failed { bench: "recovery".into(), message }
        }
    })?;
    if json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        print!("{}", crate::recovery::render(&r));
    }
    if r.ok == r.trials {
        Ok(())
    } else {
        Err(BenchError::TrialsFailed { bench: "recovery", failed: r.trials - r.ok, trials: r.trials })
    }
}

#[allow(missing_docs)] // clap would show a doc comment here as the help text
#[derive(Args)]
pub struct BenchFailoverArgs {
    /// Topology file (TOML, see docs/topology.md). Default: the built-in emulated chassis.
    #[arg(long, short = 't', value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Trials (each a full boot with the monarch killed at a random point).
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Split brain: SIGSTOP the monarch instead, and SIGCONT it once a new monarch took over;
    /// it must stand down, and the secondaries must ignore what it still writes.
    #[arg(long)]
    pause: bool,
    /// Copy the logs of every trial that is not ok (candidates, agents, images) into
    /// DIR/trial-N. Built-in chassis only.
    #[arg(long, value_name = "DIR")]
    keep_failed: Option<PathBuf>,
    /// One JSON object on stdout: trials, ok, failovers, p50_ms, p99_ms, max_ms, timeout_ms,
    /// boot_ms, fault, stood_down, fenced_commands.
    #[arg(long)]
    json: bool,
}

#[allow(missing_docs)] // clap would show a doc comment here as the help text
#[derive(Args)]
pub struct BenchNetbootArgs {
    /// Size of the file fetched over TFTP.
    #[arg(long, default_value = "64MiB", value_parser = values::parse_size)]
    tftp_size: u64,
    /// Size of the file fetched over HTTP.
    #[arg(long, default_value = "1GiB", value_parser = values::parse_size)]
    http_size: u64,
    /// Transfers per server and figure, ours and the reference alternating; the medians
    /// are compared (the best run is shown beside each).
    #[arg(long, default_value_t = crate::netboot::DEFAULT_REPS)]
    reps: u32,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[allow(missing_docs)] // clap would show a doc comment here as the help text
#[derive(Args)]
pub struct BenchVmArgs {
    /// Boots of each kind; the best is kept.
    #[arg(long, default_value_t = 1)]
    reps: u32,
    /// VM artifacts folder [default: $MONARCH_VM_DIR, else /var/cache/monarch/vm].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[allow(missing_docs)] // clap would show a doc comment here as the help text
#[derive(Args)]
pub struct BenchBaselineArgs {
    /// Image size.
    #[arg(long, default_value = "30MiB", value_parser = values::parse_size)]
    size: u64,
    /// Runs of the window delivery; the best is kept.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[allow(missing_docs)] // clap would show a doc comment here as the help text
#[derive(Args)]
pub struct BenchWindowArgs {
    /// Image size.
    #[arg(long, default_value = "30MiB", value_parser = values::parse_size)]
    size: u64,
    /// Secondaries on direct ports, staged in parallel.
    #[arg(long, default_value_t = 1)]
    secondaries: u32,
    /// Window data-area size (default: the image size).
    #[arg(long, value_parser = values::parse_size)]
    window: Option<u64>,
    /// Written-checksum algorithm: crc32c, xxh3, blake3.
    #[arg(long, default_value = "crc32c", value_parser = values::parse_algo)]
    checksum: monarch_proto::Algo,
    /// Chunk size of the streamed delivery (default: the topology's default, 256KiB): try
    /// sizes around the host's L2 cache to see where the pipeline runs fastest.
    #[arg(long, value_parser = values::parse_size)]
    chunk: Option<u64>,
    /// Repetitions of each measurement; the best is reported.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Also deliver the image signed (signature = "required"), alternating with the plain
    /// runs, and report the signed delivery as a ratio to the checksum alone.
    #[arg(long)]
    signed: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn failover(a: BenchFailoverArgs, exe: &Path) -> Result<(), BenchError> {
    let json = a.json;
    let did = if a.pause { "paused" } else { "killed" };
    let r = crate::failover::bench(
        exe,
        a.topology.as_deref(),
        a.trials,
        a.pause,
        a.keep_failed.as_deref(),
        &mut |i, t| {
            if !json {
                let what = match (t.struck, t.failover_ms) {
                    (true, Some(ms)) => format!("{did} the monarch; failover in {ms:.0} ms"),
                    (true, None) => format!("{did} the monarch; no failover seen"),
                    (false, _) => "the boot ended before the fault".into(),
                };
                let verdict =
                    if t.ok { "ok".to_string() } else { format!("NOT OK: {}", t.problems.join("; ")) };
                eprintln!("trial {:>3}: {what}: {verdict}", i + 1);
            }
        },
    );
    match r {
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                println!(
                    "\nmonarch bench failover ({did} monarch): {} trials, {} ok (all secondaries RUNNING, each released once, into its verified image)\n  {} failovers: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms  (failover timeout {:.0} ms; an undisturbed boot takes {:.0} ms from the election)",
                    r.trials, r.ok, r.failovers, r.p50_ms, r.p99_ms, r.max_ms, r.timeout_ms, r.boot_ms
                );
                if a.pause {
                    println!(
                        "  split brain: the paused monarch stood down in {} trials; {} of its late commands were ignored by the secondaries",
                        r.stood_down, r.fenced_commands
                    );
                }
                for f in &r.failures {
                    println!("  {f}");
                }
            }
            if r.ok == r.trials {
                Ok(())
            } else {
                Err(BenchError::TrialsFailed { bench: "failover", failed: r.trials - r.ok, trials: r.trials })
            }
        }
        Err(e) => Err(BenchError::BadInput(e)),
    }
}

fn window(a: BenchWindowArgs, exe: &Path) -> Result<(), BenchError> {
    let agent_exe = exe.to_path_buf();
    let opts = crate::window::WindowBenchOptions {
        size: a.size,
        secondaries: a.secondaries.max(1),
        window: a.window.unwrap_or(a.size),
        algo: a.checksum,
        chunk: a.chunk,
        reps: a.reps.max(1),
        agent_exe,
        signed: a.signed,
    };
    let json = a.json;
    report_bench(
        "window",
        json,
        crate::window::window(&opts, &mut bench_progress(json)),
        crate::window::render,
    )
}

fn baseline(a: BenchBaselineArgs, exe: &Path) -> Result<(), BenchError> {
    let agent_exe = exe.to_path_buf();
    let json = a.json;
    let result = crate::baseline::baseline(a.size, a.reps.max(1), agent_exe, &mut bench_progress(json));
    report_bench("baseline", json, result, crate::baseline::render)
}

fn vm(a: BenchVmArgs, exe: &Path) -> Result<(), BenchError> {
    let agent_exe = exe.to_path_buf();
    let dir = a.dir.unwrap_or_else(monarch_boot::vm::artifacts::default_dir);
    let json = a.json;
    let result = crate::vm::vm_bench(&dir, a.reps.max(1), agent_exe, &mut bench_progress(json));
    report_bench("vm", json, result, crate::vm::render)
}

/// Progress lines of a bench on stderr, unless the output is JSON.
fn bench_progress(json: bool) -> impl FnMut(&str) {
    move |m: &str| {
        if !json {
            eprintln!("bench: {m}");
        }
    }
}

/// Print a bench result as JSON or for people; its error with the bench's name.
fn report_bench<T: serde::Serialize>(
    name: &str,
    json: bool,
    result: Result<T, String>,
    human: fn(&T) -> String,
) -> Result<(), BenchError> {
    match result {
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                print!("{}", human(&r));
            }
            Ok(())
        }
        Err(message) => Err(BenchError::Failed { bench: name.to_string(), message }),
    }
}
