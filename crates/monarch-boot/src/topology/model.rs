//! The resolved topology: what the rest of monarch reads (processors, their launch, window,
//! image, timeouts; the election), every default applied and every field checked.
use super::launch::Launch;
use crate::handoff::Handoff;
use crate::values::fmt_size;
use monarch_proto::{Algo, window::msg::Mode};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A file (path resolved against the topology file's folder).
    File(PathBuf),
    /// The built-in demo payload: the `monarch-payload` program padded to `size` bytes,
    /// with `banner` in its trailer (it reports the banner when it runs).
    Builtin {
        /// Total image size.
        size: u64,
        /// Text the running payload reports.
        banner: String,
    },
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::File(p) => write!(f, "{}", p.display()),
            ImageSource::Builtin { size, .. } => write!(f, "builtin:payload ({})", fmt_size(*size)),
        }
    }
}

/// Where a window lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    /// The window file (for a memfd window: where the agent log goes, with `.log`).
    pub path: PathBuf,
    /// Data-area size in bytes (the register page comes on top).
    pub data_size: u64,
}

/// Timeouts of one secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Release → READY.
    pub rendezvous: Duration,
    /// STAGED → written checksum.
    pub verify: Duration,
    /// OK → RUNNING.
    pub handoff: Duration,
    /// The agent's own wait for each command of the monarch.
    pub agent: Duration,
}

/// Fault injection, for tests and demonstrations of the recovery paths.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Faults {
    /// Flip one byte of the copy in each of the first N attempts, in a way only the
    /// whole-image written checksum can see (push: the manifest agrees with the bad chunk).
    pub corrupt_attempts: u32,
    /// Push: flip one byte of these chunks (0-based) the first time each is sent; the
    /// per-chunk digest catches it and the chunk alone is re-sent.
    pub corrupt_chunks: Vec<u64>,
    /// SIGKILL the agent halfway through the first copy.
    pub kill_agent_during_copy: bool,
    /// Deliver the image with one byte changed, after the monarch's own signature check,
    /// its checksum and manifest computed over the changed bytes: what a compromised monarch
    /// (or an image changed after it was signed) would deliver. Every checksum agrees, so
    /// only the secondary's own signature check can refuse it.
    pub tamper_image: bool,
    /// The demo payload never reports that its services are ready (a secondary that boots
    /// but never comes up: what waits on it must give up or degrade).
    pub never_ready: bool,
    /// The demo payload answers every shutdown or reboot notice with DEFER and this reason,
    /// until the supervisor's deadline runs out.
    pub defer_notices: Option<String>,
}

/// How a secondary is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortPath {
    /// Its own port on the monarch: staged in parallel with the other direct ones.
    Direct,
    /// Behind a switch: its copy and verification take turns with the others on that
    /// switch's link.
    Switch(String),
}

/// A secondary, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secondary {
    /// Unique id.
    pub id: String,
    /// Slot number.
    pub slot: Option<u32>,
    /// BOOT_ID.
    pub boot_id: Option<u32>,
    /// Direct or behind a switch.
    pub path: PortPath,
    /// Higher goes first behind a switch.
    pub priority: i32,
    /// The image.
    pub image: ImageSource,
    /// The window.
    pub window: WindowSpec,
    /// How it is started and reached (window agent process, external, VM, network boot).
    pub launch: Launch,
    /// What happens after OK.
    pub handoff: Handoff,
    /// Who copies.
    pub mode: Mode,
    /// Checksum algorithm.
    pub algo: Algo,
    /// Copies to try (push: also the most times one chunk is re-sent).
    pub attempts: u32,
    /// Push: chunk size of the ring and the manifest.
    pub chunk_size: u64,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Must it boot for `monarch up` to succeed?
    pub required: bool,
    /// Injected faults.
    pub faults: Faults,
    /// Signed images: the policy and keys this secondary is configured with.
    pub signing: Signing,
    /// How it lives after its boot: dependencies, power domain, supervision, recovery.
    pub life: Lifecycle,
}

/// Power domain of a secondary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerDomain {
    /// Auxiliary power: on with the chassis (management controllers, DPUs, NICs).
    #[default]
    Aux,
    /// Main power: switched on once the aux domain is up (`[chassis] main_power`).
    Main,
}

impl PowerDomain {
    /// Its name in topology files: `aux` or `main`.
    pub fn name(self) -> &'static str {
        match self {
            PowerDomain::Aux => "aux",
            PowerDomain::Main => "main",
        }
    }
}

/// What the supervisor does when a secondary's running image dies or stalls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Recovery {
    /// Boot it again (at most `max_restarts` times in `restart_window`).
    #[default]
    Restart,
    /// Leave it down.
    None,
}

impl Recovery {
    /// Its name in topology files: `restart` or `none`.
    pub fn name(self) -> &'static str {
        match self {
            Recovery::Restart => "restart",
            Recovery::None => "none",
        }
    }
}

/// What happens to a secondary when something it `requires` goes down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnDependencyLoss {
    /// It keeps running, marked degraded, until the dependency is back.
    #[default]
    Degrade,
    /// It is restarted once the dependency is back.
    Restart,
}

impl OnDependencyLoss {
    /// Its name in topology files: `degrade` or `restart`.
    pub fn name(self) -> &'static str {
        match self {
            OnDependencyLoss::Degrade => "degrade",
            OnDependencyLoss::Restart => "restart",
        }
    }
}

/// How the main power domain is switched on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MainPower {
    /// On by itself once the aux domain is up.
    #[default]
    Auto,
    /// Main-domain processors wait for `monarch power on`.
    Manual,
}

impl MainPower {
    /// Its name in topology files: `auto` or `manual`.
    pub fn name(self) -> &'static str {
        match self {
            MainPower::Auto => "auto",
            MainPower::Manual => "manual",
        }
    }
}

/// How a secondary lives after its boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// Hard dependencies (secondary ids): it starts after they are ready, and is affected
    /// (`on_dependency_loss`) when one goes down.
    pub requires: Vec<String>,
    /// Soft dependencies (secondary ids): it waits for them at most `wait`, then starts anyway.
    pub wants: Vec<String>,
    /// How long to wait for `wants`.
    pub wait: Duration,
    /// Its power domain.
    pub power: PowerDomain,
    /// Id of the secondary (an AMC) supervising it; `None`: the monarch (the BMC).
    pub supervisor: Option<String>,
    /// Host network interface names it owns.
    pub ports: Vec<String>,
    /// What is done when its running image dies or stalls.
    pub recovery: Recovery,
    /// Restarts allowed within `restart_window` before it is left down.
    pub max_restarts: u32,
    /// The window `max_restarts` is counted in.
    pub restart_window: Duration,
    /// Wait before a restart.
    pub restart_backoff: Duration,
    /// What happens to it when something it `requires` goes down.
    pub on_dependency_loss: OnDependencyLoss,
    /// The running image beats this often.
    pub heartbeat: Duration,
    /// Silence this long means the image is stalled.
    pub heartbeat_timeout: Duration,
    /// Demo payload only: its services take this long to come up after it runs.
    pub ready_after: Duration,
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle {
            requires: Vec::new(),
            wants: Vec::new(),
            wait: defaults::WAIT,
            power: PowerDomain::Aux,
            supervisor: None,
            ports: Vec::new(),
            recovery: Recovery::Restart,
            max_restarts: defaults::MAX_RESTARTS,
            restart_window: defaults::RESTART_WINDOW,
            restart_backoff: defaults::RESTART_BACKOFF,
            on_dependency_loss: OnDependencyLoss::Degrade,
            heartbeat: defaults::LIFE_HEARTBEAT,
            heartbeat_timeout: defaults::LIFE_HEARTBEAT_TIMEOUT,
            ready_after: Duration::ZERO,
        }
    }
}

impl Lifecycle {
    /// Everything it depends on: `requires`, then `wants`, then `supervisor`, each id once.
    pub fn depends_on(&self) -> impl Iterator<Item = &str> {
        let mut ids: Vec<&str> = Vec::new();
        for id in self.requires.iter().chain(&self.wants).chain(&self.supervisor) {
            if !ids.contains(&id.as_str()) {
                ids.push(id);
            }
        }
        ids.into_iter()
    }

    /// Whether it depends on anything.
    pub fn has_dependencies(&self) -> bool {
        self.depends_on().next().is_some()
    }
}

/// What a secondary trusts, and the files it came from (a process agent and a network
/// agent are given the files; a VM, which has none of the host's files, the keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signing {
    /// Policy and keys.
    pub trust: crate::signing::Trust,
    /// The `.pub` files, resolved against the topology file's folder.
    pub key_files: Vec<std::path::PathBuf>,
}

impl Signing {
    /// The agent arguments that give a process agent this trust.
    pub fn agent_args(&self) -> crate::signing::TrustArgs {
        use crate::signing::SignaturePolicy;
        match self.trust.policy {
            SignaturePolicy::Off => crate::signing::TrustArgs::default(),
            p => crate::signing::TrustArgs { trust: self.key_files.clone(), signature: Some(p) },
        }
    }
}

/// How a supervised chassis is managed from outside (the `[management]` table; `up --hold`'s
/// flags win over it). Paths are resolved against the topology file's folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Management {
    /// Where to serve Redfish (HTTPS).
    pub redfish: Option<std::net::SocketAddr>,
    /// The Redfish users file.
    pub users: Option<PathBuf>,
    /// The Redfish service's certificate (PEM).
    pub certificate: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<std::net::SocketAddr>,
}

/// A machine of many clusters: each cluster has cores and memory banks; core 0 of each is
/// its head, and core 0 of cluster 0 is the monarch. Its cores are the topology's processors
/// (`c<cluster>-<core>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clusters {
    /// The clusters, by id (0, 1, …).
    pub clusters: Vec<ClusterSpec>,
    /// The zones of every cluster's memory bank, in bank order.
    pub zones: Vec<ZoneSpec>,
    /// How long a barrier waits for its participants.
    pub barrier_timeout: std::time::Duration,
    /// What a missed barrier does.
    pub barrier_policy: BarrierPolicy,
    /// The kernel image's size (every core boots the same one).
    pub image_size: u64,
    /// The binary description this machine was read from (`monarch up --arch`), booted as
    /// is; `None`: it is compiled from the topology.
    pub arch: Option<Vec<u8>>,
}

/// One cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Its id.
    pub id: u16,
    /// Its place in the mesh.
    pub x: u8,
    /// Its place in the mesh.
    pub y: u8,
    /// Its cores; core 0 is its head.
    pub cores: Vec<CoreSpec>,
    /// Its memory banks.
    pub banks: Vec<BankSpec>,
    /// Fault injection: these cores (by index) are killed just before their first barrier.
    pub killed_before_barrier: Vec<u16>,
    /// launch = "netboot": the network its head serves its other cores on.
    pub net: Option<ClusterNet>,
}

/// One core of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreSpec {
    /// Its index in the cluster.
    pub lid: u16,
    /// The processor it is (`c<cluster>-<lid>`).
    pub processor: String,
    /// It fails its self-test: left out of every boot info and not booted.
    pub failed: bool,
}

/// One memory bank of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankSpec {
    /// Its size.
    pub size: u64,
    /// It fails its self-test: left out of every boot info.
    pub failed: bool,
}

/// A named zone of a memory bank (the same map in every cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneSpec {
    /// What it holds.
    pub kind: ZoneKind,
    /// Its offset in the bank.
    pub base: u64,
    /// Its maximum size.
    pub max: u64,
}

impl ZoneSpec {
    /// One past its last byte.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.max)
    }
}

/// What a zone holds: the binary description's own kinds.
pub use monarch_proto::arch::ZoneKind;

/// A zone kind's name in topology files and their messages: `boot_code`, `arch_info`,
/// `kernel`, `boot_info`, `stacks` (the description's tools spell them with dashes).
pub fn zone_field(kind: ZoneKind) -> &'static str {
    match kind {
        ZoneKind::BootCode => "boot_code",
        ZoneKind::ArchInfo => "arch_info",
        ZoneKind::Kernel => "kernel",
        ZoneKind::BootInfo => "boot_info",
        ZoneKind::Stacks => "stacks",
    }
}

/// What a core that misses a barrier's deadline does to the boot: it is left out and the
/// others go on (`exclude`), or the boot fails (`abort`). The barriers' own type.
pub use monarch_proto::barrier::Policy as BarrierPolicy;

/// A management processor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    /// Unique id.
    pub id: String,
    /// Slot.
    pub slot: Option<u32>,
    /// BOOT_ID.
    pub boot_id: Option<u32>,
    /// It fails its self-test (`self_test = "fail"`): deconfigured, never monarch.
    pub fails_self_test: bool,
}

impl Manager {
    /// As arbitration sees it (monarch election: BOOT_ID defaults to 2, the factory setting; a
    /// missing slot counts as its position in the file).
    pub fn candidate(&self, index: usize) -> monarch_proto::election::Candidate {
        use monarch_proto::election::{Candidate, Health};
        Candidate {
            index,
            slot: self.slot.unwrap_or(u32::try_from(index).unwrap_or(u32::MAX)),
            boot_id: self.boot_id.unwrap_or(defaults::BOOT_ID),
            health: if self.fails_self_test { Health::FailedSelfTest } else { Health::Healthy },
        }
    }
}

/// How the management processors elect the monarch and watch it (the `[election]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Election {
    /// Index (in `managers`) of the monarch the operator pinned.
    pub pinned: Option<usize>,
    /// How often the monarch beats on the backplane.
    pub heartbeat: Duration,
    /// Beats missed for this long: the serfs depose the monarch.
    pub timeout: Duration,
    /// How long candidates wait for each other before the first arbitration.
    pub rendezvous: Duration,
    /// Where the election runs.
    pub backend: ElectionBackend,
}

/// Where the candidates elect the monarch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectionBackend {
    /// The backplane: a register page every candidate on this machine maps (CAS claim,
    /// heartbeat, serfs watching it).
    Backplane,
    /// etcd (`[election] etcd = [...]`): for candidates on machines that share no backplane.
    Etcd(EtcdElection),
}

/// An election on etcd (feature `etcd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdElection {
    /// Client URLs (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Lease TTL: a dead monarch is replaced about this long after its last keep-alive.
    pub ttl: Duration,
    /// A candidate cut off from etcd for this long gives the boot up (with a clear error).
    pub timeout: Duration,
}

/// A validated topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Chassis name.
    pub name: String,
    /// Where windows without an explicit path are created.
    pub run_dir: PathBuf,
    /// True when `run_dir` was chosen by monarch (and is removed after the run).
    pub run_dir_is_temporary: bool,
    /// Management processors (monarch candidates), in file order.
    pub managers: Vec<Manager>,
    /// Election settings (used when there are two or more managers).
    pub election: Election,
    /// Switches, in file order.
    pub switches: Vec<String>,
    /// Secondaries, in file order.
    pub secondaries: Vec<Secondary>,
    /// How the main power domain is switched on (`[chassis] main_power`).
    pub main_power: MainPower,
    /// Where the supervisor keeps reboot causes across runs (`[chassis] state_dir`, resolved
    /// against the topology file's folder); `None`: nothing is kept.
    pub state_dir: Option<PathBuf>,
    /// How a supervised chassis is managed from outside (`[management]`).
    pub management: Management,
    /// A machine of many clusters (`[[cluster]]`), whose processors are its cores.
    pub clusters: Option<Clusters>,
}

/// Defaults when neither the processor nor `[defaults]` say otherwise.
pub mod defaults {
    use std::time::Duration;
    /// Copies to try.
    pub const ATTEMPTS: u32 = 3;
    /// Release → READY (an agent process starting, or firmware coming out of reset).
    pub const RENDEZVOUS: Duration = Duration::from_secs(10);
    /// STAGED → written checksum.
    pub const VERIFY: Duration = Duration::from_secs(10);
    /// OK → RUNNING.
    pub const HANDOFF: Duration = Duration::from_secs(10);
    /// The agent's wait for each command.
    pub const AGENT: Duration = Duration::from_secs(30);
    /// Push: chunk size.
    pub const CHUNK_SIZE: u64 = 256 << 10;
    /// A VM secondary's timeouts are the defaults times this (it boots a kernel under
    /// emulation before its agent answers, and another one after the handoff).
    pub const VM_SLOWDOWN: u32 = 6;
    /// Builtin image size: the reference design's 30 MB image.
    pub const IMAGE_SIZE: u64 = 30 << 20;
    /// BOOT_ID of a management processor that sets none (the reference design's factory default).
    pub const BOOT_ID: u32 = 2;
    /// The monarch's heartbeat period on the backplane.
    pub const HEARTBEAT: Duration = Duration::from_millis(50);
    /// Heartbeat silence after which serfs depose the monarch.
    pub const FAILOVER: Duration = Duration::from_millis(500);
    /// Candidates' wait for each other before the first arbitration.
    pub const ELECTION_RENDEZVOUS: Duration = Duration::from_secs(5);
    /// etcd lease TTL (etcd grants at least 2 s with its default timing).
    pub const ETCD_TTL: Duration = Duration::from_secs(3);
    /// How long a candidate may be cut off from etcd before it gives the boot up.
    pub const ETCD_TIMEOUT: Duration = Duration::from_secs(15);
    /// How long a secondary waits for what it `wants` before it starts anyway.
    pub const WAIT: Duration = Duration::from_secs(30);
    /// Restarts allowed within the restart window.
    pub const MAX_RESTARTS: u32 = 3;
    /// The window restarts are counted in.
    pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
    /// Wait before a restart.
    pub const RESTART_BACKOFF: Duration = Duration::from_millis(100);
    /// How often a supervised secondary's running image beats.
    pub const LIFE_HEARTBEAT: Duration = Duration::from_millis(100);
    /// Silence after which a supervised secondary's image counts as stalled.
    pub const LIFE_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
    /// The shortest heartbeat a secondary may be given.
    pub const LIFE_HEARTBEAT_MIN: Duration = Duration::from_millis(10);
}

impl Topology {
    /// Every management processor as arbitration sees it (index = position in the file).
    pub fn candidates(&self) -> Vec<monarch_proto::election::Candidate> {
        self.managers.iter().enumerate().map(|(k, m)| m.candidate(k)).collect()
    }

    /// The id of management processor `k`, for events and messages (`candidate K` for an
    /// index that names none).
    pub fn manager_name(&self, k: usize) -> String {
        self.managers.get(k).map_or_else(|| format!("candidate {k}"), |m| m.id.clone())
    }

    /// Move the run folder to `dir` (windows that live in it move with it): every candidate
    /// process of one chassis parses the topology itself, and must find the same windows.
    pub fn relocate(&mut self, dir: &Path) {
        for s in &mut self.secondaries {
            if let Ok(rest) = s.window.path.strip_prefix(&self.run_dir) {
                s.window.path = dir.join(rest);
            }
        }
        self.run_dir = dir.to_path_buf();
    }
}

/// The discovery port a head serves on unless `network.port` says otherwise (the port of
/// `monarch netboot serve`).
pub const DISCOVERY_PORT: u16 = 4012;

/// The network a cluster's head serves its cores on, and where those cores run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterNet {
    /// The interface the head's boot server answers on only (`SO_BINDTODEVICE`).
    pub interface: String,
    /// The head's address on that interface.
    pub address: std::net::Ipv4Addr,
    /// Its discovery port (UDP); downloads go to the TCP port each offer names.
    pub port: u16,
    /// The network namespace of core `k` is `namespaces[k - 1]` (`ip netns exec` runs it there).
    pub namespaces: Vec<String>,
}

impl ClusterNet {
    /// The namespace core `lid` (not the head) runs in.
    pub fn namespace_of(&self, lid: u16) -> Option<&str> {
        usize::from(lid).checked_sub(1).and_then(|k| self.namespaces.get(k)).map(String::as_str)
    }
}
