//! The command lines of the processes the monarch starts from its own executable: a window
//! agent (`monarch agent`), a monarch candidate (`monarch candidate`) and a network agent
//! (`monarch netboot agent`). Each is one type, parsed by the binary's command line (clap
//! derives the parser from it) and written by the monarch with [`AgentArgs::to_args`] and
//! its siblings, so both halves of the contract are the same code: the binary's tests parse
//! what `to_args` writes back into an equal value, and a renamed flag fails them.
use crate::handoff::Handoff;
use crate::signing::TrustArgs;
use crate::topology::{Topology, TopologyError};
use crate::values;
use clap::Args;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which topology: a file, or the built-in emulated chassis.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct TopologyOpt {
    /// Topology file (TOML, see docs/topology.md). Default: the built-in emulated chassis.
    #[arg(long, short = 't', value_name = "FILE")]
    pub topology: Option<PathBuf>,
}

impl TopologyOpt {
    /// Load and check the topology it names.
    pub fn load(&self) -> Result<Topology, TopologyError> {
        match &self.topology {
            Some(f) => Topology::load(f),
            None => Topology::builtin(),
        }
    }
}

/// `monarch agent`: the secondary's side of a window boot.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct AgentArgs {
    /// The window: a file both sides map (e.g. /dev/shm/…, or a PCI BAR's resourceN), or
    /// `ivshmem` for the BAR of this machine's first ivshmem PCI device (implies --poll).
    #[arg(long, value_name = "PATH")]
    pub window: PathBuf,
    /// This secondary's id, for messages.
    #[arg(long, default_value = "secondary")]
    pub id: String,
    /// What to do after OK.
    #[arg(long, value_enum, default_value = "exec")]
    pub handoff: Handoff,
    /// Longest wait for the window to appear and for each command of the monarch.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = values::parse_duration)]
    pub timeout: Duration,
    /// Poll the doorbell (for windows shared across kernels) instead of futex waits.
    #[arg(long)]
    pub poll: bool,
    /// The epoch of the monarch starting this agent (`monarch up` passes it): if a newer
    /// monarch has claimed the window by the time the agent holds it, the agent leaves it
    /// alone and exits with status 75. Without it, the agent obeys whoever configured the
    /// window.
    #[arg(long, value_name = "N")]
    pub epoch: Option<u32>,
    #[command(flatten)]
    #[allow(missing_docs)] // flattened: its own fields carry the help
    pub trust: TrustArgs,
}

impl AgentArgs {
    /// The arguments after the executable: `agent --window … …`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = words(&["agent", "--window"]);
        a.push(self.window.clone().into());
        a.extend(words(&["--id", &self.id, "--handoff", self.handoff.name(), "--timeout"]));
        a.push(duration(self.timeout));
        if self.poll {
            a.push("--poll".into());
        }
        if let Some(e) = self.epoch {
            a.extend(words(&["--epoch", &e.to_string()]));
        }
        a.extend(self.trust.to_args());
        a
    }
}

/// `monarch candidate`: one management processor of a chassis, started by `monarch up`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct CandidateArgs {
    #[command(flatten)]
    #[allow(missing_docs)] // flattened: its own fields carry the help
    pub topo: TopologyOpt,
    /// This candidate's index among the topology's management processors.
    #[arg(long)]
    pub index: usize,
    /// The backplane `monarch up` created (a backplane election).
    #[arg(long, value_name = "FILE")]
    pub backplane: Option<PathBuf>,
    /// Names this boot in etcd (an etcd election): every candidate of one boot passes the
    /// same value.
    #[arg(long, value_name = "NAME", default_value = "boot")]
    pub session: String,
    /// The operator's choice of monarch (a management processor's id).
    #[arg(long, value_name = "ID")]
    pub monarch: Option<String>,
    /// The chassis' run folder (windows without a path live there).
    #[arg(long, value_name = "DIR")]
    pub run_dir: PathBuf,
    /// The chassis' start, in Unix nanoseconds (event times count from it).
    #[arg(long)]
    pub t0_unix_ns: u128,
    /// As for `monarch up`.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = values::parse_duration)]
    pub shutdown_grace: Duration,
    /// `monarch up --hold`: the monarch keeps the chassis after its boot; its state folder.
    #[arg(long, value_name = "DIR")]
    pub hold_state_dir: Option<PathBuf>,
    /// With --hold-state-dir: how long a stop signal's shutdown may be deferred.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = values::parse_duration)]
    pub hold_deadline: Duration,
    /// With --hold-state-dir: where to serve Prometheus metrics.
    #[arg(long, value_name = "ADDR")]
    pub hold_metrics: Option<std::net::SocketAddr>,
    /// With --hold-state-dir: where to serve Redfish.
    #[arg(long, value_name = "ADDR", requires = "hold_redfish_users")]
    pub hold_redfish: Option<std::net::SocketAddr>,
    /// With --hold-redfish: its users file.
    #[arg(long, value_name = "FILE")]
    pub hold_redfish_users: Option<PathBuf>,
    /// With --hold-redfish: its certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "hold_redfish_key")]
    pub hold_redfish_certificate: Option<PathBuf>,
    /// With --hold-redfish: its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "hold_redfish_certificate")]
    pub hold_redfish_key: Option<PathBuf>,
}

impl CandidateArgs {
    /// The arguments after the executable: `candidate --index … …`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = words(&["candidate"]);
        if let Some(f) = &self.topo.topology {
            a.push("--topology".into());
            a.push(f.clone().into());
        }
        a.extend(words(&["--index", &self.index.to_string()]));
        if let Some(b) = &self.backplane {
            a.push("--backplane".into());
            a.push(b.clone().into());
        }
        a.extend(words(&["--session", &self.session]));
        if let Some(m) = &self.monarch {
            a.extend(words(&["--monarch", m]));
        }
        a.push("--run-dir".into());
        a.push(self.run_dir.clone().into());
        a.extend(words(&["--t0-unix-ns", &self.t0_unix_ns.to_string(), "--shutdown-grace"]));
        a.push(duration(self.shutdown_grace));
        if let Some(d) = &self.hold_state_dir {
            a.push("--hold-state-dir".into());
            a.push(d.clone().into());
            a.push("--hold-deadline".into());
            a.push(duration(self.hold_deadline));
            if let Some(m) = &self.hold_metrics {
                a.extend(words(&["--hold-metrics", &m.to_string()]));
            }
            if let (Some(r), Some(u)) = (&self.hold_redfish, &self.hold_redfish_users) {
                a.extend(words(&["--hold-redfish", &r.to_string(), "--hold-redfish-users"]));
                a.push(u.clone().into());
                if let (Some(c), Some(k)) = (&self.hold_redfish_certificate, &self.hold_redfish_key) {
                    a.push("--hold-redfish-certificate".into());
                    a.push(c.clone().into());
                    a.push("--hold-redfish-key".into());
                    a.push(k.clone().into());
                }
            }
        }
        a
    }
}

/// `monarch netboot agent` (and `recover`): the machine's side of a network boot.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct NetbootAgentArgs {
    /// Where to send DISCOVERs: a boot server's HOST:PORT or a broadcast address.
    #[arg(long, value_name = "ADDR", default_value = "255.255.255.255:4012")]
    pub server: SocketAddr,
    /// Use this interface (its MAC, and SO_BINDTODEVICE for broadcasts).
    #[arg(long, value_name = "IF")]
    pub interface: Option<String>,
    /// This machine's MAC address [default: the interface's].
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
    /// Give up on the boot server after this long and boot the local image.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// Rebroadcast the DISCOVER this often while nobody answers.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// The machine's disk (block device or file); without it the machine is diskless.
    #[arg(long, value_name = "TARGET")]
    pub disk: Option<PathBuf>,
    /// Create the disk file with this size if it does not exist (e.g. 256MiB).
    #[arg(long, value_name = "SIZE", value_parser = values::parse_size)]
    pub disk_size: Option<u64>,
    /// Refuse images larger than this.
    #[arg(long, value_name = "SIZE", default_value = "4GiB", value_parser = values::parse_size)]
    pub max_size: u64,
    /// What to do with the verified image: exec (run it), none (exit 0), or kexec (a kernel
    /// bundle).
    #[arg(long, value_enum, default_value = "exec")]
    pub handoff: Handoff,
    /// One JSON object on stdout before the handoff.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)] // flattened: its own fields carry the help
    pub trust: TrustArgs,
}

impl NetbootAgentArgs {
    /// The arguments after the executable: `netboot agent --server … …`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = words(&["netboot", "agent", "--server", &self.server.to_string()]);
        if let Some(i) = &self.interface {
            a.extend(words(&["--interface", i]));
        }
        if let Some(m) = &self.mac {
            a.extend(words(&["--mac", m]));
        }
        a.push("--wait".into());
        a.push(duration(self.wait));
        a.push("--interval".into());
        a.push(duration(self.interval));
        if let Some(d) = &self.disk {
            a.push("--disk".into());
            a.push(d.clone().into());
        }
        if let Some(s) = self.disk_size {
            a.extend(words(&["--disk-size", &s.to_string()]));
        }
        a.extend(words(&["--max-size", &self.max_size.to_string(), "--handoff", self.handoff.name()]));
        if self.json {
            a.push("--json".into());
        }
        a.extend(self.trust.to_args());
        a
    }
}

/// `monarch core`: one core of a machine of clusters in the phased boot (a head copies for
/// its cluster; every core verifies, meets its barriers and jumps into the kernel).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct CoreArgs {
    /// The run folder: the banks (`bank-N`) and barriers (`barrier-…`) are there.
    #[arg(long, value_name = "DIR")]
    pub run_dir: PathBuf,
    /// Its cluster.
    #[arg(long)]
    pub cluster: u16,
    /// Its index in the cluster (0: the head).
    #[arg(long)]
    pub lid: u16,
    /// Where the description is in bank 0 (the arch-info zone's offset and maximum).
    #[arg(long, value_name = "OFFSET")]
    pub arch_base: u64,
    /// The arch-info zone's maximum size.
    #[arg(long, value_name = "BYTES")]
    pub arch_max: u64,
    /// How long a barrier waits (the head decides its cluster's).
    #[arg(long, value_name = "DURATION", value_parser = values::parse_duration)]
    pub barrier_timeout: Duration,
    /// A missed barrier: `exclude` or `abort`.
    #[arg(long, value_name = "POLICY", value_parser = parse_policy)]
    pub barrier_policy: monarch_proto::barrier::Policy,
    /// Fault injection: these cores of its cluster (by index) kill themselves just before
    /// their first barrier.
    #[arg(long, value_name = "LIDS", value_delimiter = ',')]
    pub killed_before_barrier: Vec<u16>,
    /// The boot's start, in Unix nanoseconds (event times count from it).
    #[arg(long)]
    pub t0_unix_ns: u128,
    /// Its cluster boots over the network: the network its head serves on, as JSON
    /// (`phased::serve`).
    #[arg(long, value_name = "JSON")]
    pub netboot: Option<String>,
    /// The monarch's own core (core 0 of cluster 0): a core like cluster 0's others, not a
    /// head (the monarch heads cluster 0 and owns its barrier): it checks the kernel in bank 0
    /// and its entry, meets cluster 0's barrier and the final one, and jumps.
    #[arg(long)]
    pub monarch_core: bool,
    /// Its cluster's kernel, sealed in memory by the cluster's head (by the monarch for
    /// cluster 0), as a path to the head's descriptor (`/proc/PID/fd/N`): the core checks it
    /// and runs it. None: a head, or a core that fetches its kernel over the network.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
}

impl CoreArgs {
    /// The arguments after the executable: `core --run-dir … …`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = words(&["core", "--run-dir"]);
        a.push(self.run_dir.clone().into());
        a.extend(words(&[
            "--cluster",
            &self.cluster.to_string(),
            "--lid",
            &self.lid.to_string(),
            "--arch-base",
            &self.arch_base.to_string(),
            "--arch-max",
            &self.arch_max.to_string(),
            "--barrier-timeout",
        ]));
        a.push(duration(self.barrier_timeout));
        a.extend(words(&[
            "--barrier-policy",
            self.barrier_policy.name(),
            "--t0-unix-ns",
            &self.t0_unix_ns.to_string(),
        ]));
        if !self.killed_before_barrier.is_empty() {
            let lids: Vec<String> = self.killed_before_barrier.iter().map(u16::to_string).collect();
            a.extend(words(&["--killed-before-barrier", &lids.join(",")]));
        }
        if let Some(n) = &self.netboot {
            a.extend(words(&["--netboot", n]));
        }
        if self.monarch_core {
            a.push("--monarch-core".into());
        }
        if let Some(k) = &self.kernel {
            a.push("--kernel".into());
            a.push(k.clone().into());
        }
        a
    }
}

fn parse_policy(s: &str) -> Result<monarch_proto::barrier::Policy, String> {
    monarch_proto::barrier::Policy::from_name(s)
        .ok_or_else(|| format!("\"{s}\": the policy is exclude or abort"))
}

fn words(w: &[&str]) -> Vec<OsString> {
    w.iter().map(OsString::from).collect()
}

fn duration(d: Duration) -> OsString {
    humantime::format_duration(d).to_string().into()
}
