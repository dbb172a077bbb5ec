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
}

/// How a secondary is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortPath {
    /// Its own port on the monarch: staged in parallel with the other direct ones.
    Direct,
    /// Behind a switch: staged one after another with the others on that switch.
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
    pub const CHUNK_SIZE: u64 = 1 << 20;
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
