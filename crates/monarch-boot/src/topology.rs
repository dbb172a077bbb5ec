//! Topology files: what the chassis is made of, parsed and validated.
//!
//! A topology is TOML (unknown fields are errors). Every error names the file, the line
//! and the field, and says how to fix it; all errors of a file are reported at once.
//! `monarch topology default` prints the built-in chassis as a starting point, and
//! `docs/topology.md` documents every field.

use crate::handoff::Handoff;
use crate::values::fmt_size;
use bytesize::ByteSize;
use monarch_proto::mac::Mac;
use monarch_proto::{Algo, window::layout, window::msg::Mode, window::stream};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use toml::Spanned;

/// The built-in chassis (a PCIe switch in front of the management processor): a management processor, a route card and four
/// line cards, two on direct ports and two behind one switch.
pub const DEFAULT_TOPOLOGY: &str = include_str!("default-chassis.toml");

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field or table, e.g. `processor "lc3".switch`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A topology that cannot be used.
#[derive(Debug, Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("topology {}: cannot read: {source}; check the path given to --topology", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file has problems.
    #[error("{}", render(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn render(path: &Path, problems: &[Problem]) -> String {
    let mut s = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        match p.line {
            Some(l) => s.push_str(&format!("{}:{l}: {}: {}", path.display(), p.field, p.message)),
            None => s.push_str(&format!("{}: {}: {}", path.display(), p.field, p.message)),
        }
    }
    s
}

/// A role in the chassis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A management processor that may be elected monarch.
    Monarch,
    /// A processor booted by the monarch.
    Secondary,
}

/// How a secondary is started and reached, with each way's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// The monarch starts `monarch agent` as a local process (the emulated chassis).
    Process {
        /// The window is an anonymous memfd handed to the agent instead of a file.
        memfd: bool,
    },
    /// Someone else starts the agent (firmware, initramfs, another host); only the window
    /// is given.
    External,
    /// The monarch starts a QEMU VM whose ivshmem PCI BAR is the window; the agent runs as
    /// PID 1 of the VM's stage-1 initramfs (`monarch vm prepare` builds it).
    Qemu(QemuSpec),
    /// No window: the monarch serves the image over the network and starts `monarch netboot
    /// agent`, which fetches, verifies and hands off (the window spec only names the log,
    /// `RUN_DIR/ID.log`).
    Netboot(NetbootSpec),
}

impl Launch {
    /// Its name in topology files: `process`, `external`, `qemu` or `netboot`.
    pub fn name(&self) -> &'static str {
        match self {
            Launch::Process { .. } => "process",
            Launch::External => "external",
            Launch::Qemu(_) => "qemu",
            Launch::Netboot(_) => "netboot",
        }
    }

    /// The window is a memfd the monarch made (only it can hand it to an agent).
    pub fn memfd(&self) -> bool {
        matches!(self, Launch::Process { memfd: true })
    }
}

/// `launch` as written in a topology file, before its settings are resolved into a
/// [`Launch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum LaunchDef {
    Process,
    External,
    Qemu,
    Netboot,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SizeDef {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    chassis: ChassisDef,
    #[serde(default)]
    election: ElectionDef,
    #[serde(default)]
    defaults: SettingsDef,
    #[serde(default, rename = "switch")]
    switches: Vec<SwitchDef>,
    #[serde(default, rename = "processor")]
    processors: Vec<ProcessorDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChassisDef {
    name: String,
    run_dir: Option<String>,
    vm_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ElectionDef {
    /// The operator's choice of monarch (the reference design's Boot Console Handler).
    monarch: Option<Spanned<String>>,
    heartbeat: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rendezvous: Option<Spanned<String>>,
    /// etcd client URLs: elect over etcd instead of the backplane (candidates on machines
    /// that share no backplane).
    etcd: Option<Spanned<EndpointsDef>>,
    /// etcd lease TTL.
    ttl: Option<Spanned<String>>,
    /// How long a candidate may be cut off from etcd before it gives the boot up.
    etcd_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EndpointsDef {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchDef {
    id: Spanned<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsDef {
    launch: Option<LaunchDef>,
    handoff: Option<Handoff>,
    mode: Option<Spanned<String>>,
    checksum: Option<Spanned<String>>,
    attempts: Option<Spanned<u32>>,
    timeouts: Option<TimeoutsDef>,
    required: Option<bool>,
    chunk_size: Option<Spanned<SizeDef>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutsDef {
    rendezvous: Option<Spanned<String>>,
    verify: Option<Spanned<String>>,
    handoff: Option<Spanned<String>>,
    agent: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowDef {
    path: Option<String>,
    #[serde(default)]
    memfd: bool,
    size: Option<Spanned<SizeDef>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct QemuDef {
    memory: Option<Spanned<SizeDef>>,
    accel: Option<String>,
    kernel: Option<String>,
    initrd: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultDef {
    #[serde(default)]
    corrupt_attempts: u32,
    #[serde(default)]
    kill_agent_during_copy: bool,
    #[serde(default)]
    corrupt_chunks: Vec<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessorDef {
    id: Spanned<String>,
    role: Role,
    boot_id: Option<u32>,
    slot: Option<u32>,
    /// A management processor's self-test result: "pass" (default) or "fail" (deconfigured,
    /// never monarch; the PDC_CONFIG self-test result), for exercising the rule.
    self_test: Option<Spanned<String>>,
    switch: Option<Spanned<String>>,
    priority: Option<i32>,
    image: Option<Spanned<String>>,
    image_size: Option<Spanned<SizeDef>>,
    banner: Option<String>,
    window: Option<Spanned<WindowDef>>,
    fault: Option<FaultDef>,
    qemu: Option<Spanned<QemuDef>>,
    /// launch = "netboot": the machine's MAC (its identity for the boot server).
    mac: Option<Spanned<String>>,
    /// launch = "netboot": the machine's disk (A/B install, then boot from the disk).
    disk: Option<Spanned<String>>,
    /// launch = "netboot": size of the disk file when it has to be created.
    disk_size: Option<Spanned<SizeDef>>,
    // The per-processor settings (same names as in [defaults]); serde cannot combine
    // `flatten` with `deny_unknown_fields`, so they are listed here again.
    launch: Option<LaunchDef>,
    handoff: Option<Handoff>,
    mode: Option<Spanned<String>>,
    checksum: Option<Spanned<String>>,
    attempts: Option<Spanned<u32>>,
    timeouts: Option<TimeoutsDef>,
    required: Option<bool>,
    chunk_size: Option<Spanned<SizeDef>>,
}

impl ProcessorDef {
    fn settings(&self) -> SettingsDef {
        SettingsDef {
            launch: self.launch,
            handoff: self.handoff,
            mode: self.mode.clone(),
            checksum: self.checksum.clone(),
            attempts: self.attempts.clone(),
            timeouts: self.timeouts.clone(),
            required: self.required,
            chunk_size: self.chunk_size.clone(),
        }
    }
}

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
}

/// A secondary with no window, booted over the network (launch = "netboot"):
/// the monarch serves its image with a discovery service and starts `monarch netboot agent`,
/// which discovers the server, pre-posts a buffer of the offered size, has the image
/// transferred into it, verifies it and hands off (diskless) or installs it A/B on `disk`
/// and boots from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetbootSpec {
    /// The machine's MAC: its identity for the boot server (`mac`, else derived from the id).
    pub mac: Mac,
    /// The machine's disk (a block device or a file standing in for one); `None`: diskless.
    pub disk: Option<PathBuf>,
    /// Size to create the disk file with when it does not exist.
    pub disk_size: Option<u64>,
}

/// The MAC a netboot secondary gets when the topology names none: QEMU's locally
/// administered prefix `52:54:00` and three bytes of a hash of the id, so it is the same in
/// every run (the boot server's catalog and a disk's A/B history key on it).
pub fn derived_mac(id: &str) -> Mac {
    let d = Algo::Blake3.digest(format!("monarch netboot mac {id}").as_bytes());
    Mac::new([0x52, 0x54, 0x00, d.0[0], d.0[1], d.0[2]])
}

/// A secondary that is a QEMU VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSpec {
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// QEMU accelerator: `tcg` (software emulation, works everywhere) or `kvm`.
    pub accel: String,
    /// Stage-1 kernel.
    pub kernel: PathBuf,
    /// Stage-1 initramfs (its `/init` is a static `monarch`).
    pub initrd: PathBuf,
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

struct Ctx<'a> {
    src: &'a str,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn line_of(&self, span: std::ops::Range<usize>) -> usize {
        self.src[..span.start.min(self.src.len())].matches('\n').count() + 1
    }
    fn push(
        &mut self,
        span: Option<std::ops::Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = span.map(|s| self.line_of(s));
        self.problems.push(Problem { line, field: field.into(), message: message.into() });
    }
    fn size(&mut self, v: &Spanned<SizeDef>, field: &str) -> Option<u64> {
        match v.get_ref() {
            SizeDef::Bytes(b) => Some(*b),
            SizeDef::Text(t) => match t.parse::<ByteSize>() {
                Ok(b) => Some(b.as_u64()),
                Err(_) => {
                    self.push(Some(v.span()), field, format!("\"{t}\" is not a size; write bytes (31457280) or a size with a unit (\"30MiB\", \"64 MiB\", \"1GiB\")"));
                    None
                }
            },
        }
    }
    fn duration(&mut self, v: &Option<Spanned<String>>, field: &str, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                self.push(
                    Some(v.span()),
                    field,
                    format!("\"{}\" is not a duration; write e.g. \"500ms\", \"5s\", \"2m\"", v.get_ref()),
                );
                default
            }
        }
    }
}

/// The smallest data area of at least `data` bytes that makes a PCI BAR: register page +
/// data area, a power of two in all (a VM's window is an ivshmem BAR).
fn bar_data_size(data: u64) -> u64 {
    (data + layout::REGS_SIZE as u64).next_power_of_two() - layout::REGS_SIZE as u64
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

    /// The built-in default chassis.
    pub fn builtin() -> Result<Topology, TopologyError> {
        Topology::parse(DEFAULT_TOPOLOGY, Path::new("<built-in default chassis>"), Path::new("."))
    }

    /// Read and validate a topology file.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let src = std::fs::read_to_string(path)
            .map_err(|source| TopologyError::Read { path: path.into(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Topology::parse(&src, path, base)
    }

    /// Validate topology text; `path` names it in errors, `base` resolves relative paths.
    pub fn parse(src: &str, path: &Path, base: &Path) -> Result<Topology, TopologyError> {
        let invalid = |problems| TopologyError::Invalid { path: path.into(), problems };
        let file: FileDef = match toml::from_str(src) {
            Ok(f) => f,
            Err(e) => {
                let line = e.span().map(|s| src[..s.start.min(src.len())].matches('\n').count() + 1);
                let msg = e.message().to_string();
                let hint = if msg.contains("unknown field") {
                    "; see `monarch topology default` or docs/topology.md for the fields"
                } else if msg.contains("missing field") {
                    "; add it (see `monarch topology default` for an example)"
                } else {
                    ""
                };
                return Err(invalid(vec![Problem {
                    line,
                    field: "syntax".into(),
                    message: format!("{msg}{hint}"),
                }]));
            }
        };
        let mut cx = Ctx { src, problems: Vec::new() };
        let d = &file.defaults;

        let mut switches = Vec::new();
        let mut switch_used: HashMap<String, bool> = HashMap::new();
        for s in &file.switches {
            if switch_used.insert(s.id.get_ref().clone(), false).is_some() {
                cx.push(
                    Some(s.id.span()),
                    format!("switch \"{}\"", s.id.get_ref()),
                    "duplicate switch id; give every [[switch]] its own id",
                );
            }
            switches.push(s.id.get_ref().clone());
        }

        let (run_dir, run_dir_is_temporary) = match &file.chassis.run_dir {
            Some(d) => (base.join(d), false),
            None => (
                PathBuf::from(format!(
                    "/dev/shm/monarch-{}-{}",
                    sanitize(&file.chassis.name),
                    std::process::id()
                )),
                true,
            ),
        };

        let vm_dir =
            file.chassis.vm_dir.as_ref().map_or_else(crate::vm::artifacts::default_dir, |d| base.join(d));
        let vm_art = crate::vm::artifacts::Artifacts::at(&vm_dir);
        let mut seen_ids: BTreeMap<String, ()> = BTreeMap::new();
        let mut seen_windows: HashMap<PathBuf, String> = HashMap::new();
        let mut seen_macs: HashMap<Mac, String> = HashMap::new();
        let mut seen_disks: HashMap<PathBuf, String> = HashMap::new();
        let mut managers = Vec::new();
        let mut secondaries = Vec::new();
        for p in &file.processors {
            let id = p.id.get_ref().clone();
            let who = format!("processor \"{id}\"");
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                cx.push(
                    Some(p.id.span()),
                    format!("{who}.id"),
                    "ids use letters, digits, '-' and '_' only (they name window files)",
                );
            }
            if seen_ids.insert(id.clone(), ()).is_some() {
                cx.push(
                    Some(p.id.span()),
                    format!("{who}.id"),
                    "duplicate processor id; every [[processor]] needs its own id",
                );
            }
            if p.role != Role::Monarch && p.self_test.is_some() {
                cx.push(p.self_test.as_ref().map(Spanned::span), format!("{who}.self_test"), "only a management processor (role = \"monarch\") runs the election self-test; remove the field");
            }
            if p.role == Role::Monarch {
                let fails_self_test = match p.self_test.as_ref().map(|t| (t.get_ref().as_str(), t.span())) {
                    None | Some(("pass", _)) => false,
                    Some(("fail", _)) => true,
                    Some((other, span)) => {
                        cx.push(
                            Some(span),
                            format!("{who}.self_test"),
                            format!("unknown self_test \"{other}\"; use \"pass\" or \"fail\""),
                        );
                        false
                    }
                };
                for (set, name) in [
                    (p.switch.is_some(), "switch"),
                    (p.image.is_some(), "image"),
                    (p.window.is_some(), "window"),
                    (p.fault.is_some(), "fault"),
                    (p.mac.is_some(), "mac"),
                    (p.disk.is_some(), "disk"),
                    (p.disk_size.is_some(), "disk_size"),
                ] {
                    if set {
                        cx.push(Some(p.id.span()), format!("{who}.{name}"), format!("a monarch has no {name}; remove the field or make the processor role = \"secondary\""));
                    }
                }
                managers.push(Manager { id, slot: p.slot, boot_id: p.boot_id, fails_self_test });
                continue;
            }
            // --- a secondary ---
            let s = merge(&p.settings(), d);
            let path = match &p.switch {
                None => PortPath::Direct,
                Some(sw) => {
                    if let Some(used) = switch_used.get_mut(sw.get_ref()) {
                        *used = true;
                    } else {
                        let known = if switches.is_empty() {
                            "none are defined".to_string()
                        } else {
                            format!("defined: {}", switches.join(", "))
                        };
                        cx.push(Some(sw.span()), format!("{who}.switch"), format!("switch \"{}\" is not defined ({known}); add [[switch]] id = \"{}\" or fix the name; leave `switch` out for a direct port", sw.get_ref(), sw.get_ref()));
                    }
                    PortPath::Switch(sw.get_ref().clone())
                }
            };
            let image = match &p.image {
                None => {
                    cx.push(Some(p.id.span()), format!("{who}.image"), "a secondary needs an image: a file path, or \"builtin:payload\" for the demo payload");
                    ImageSource::Builtin { size: defaults::IMAGE_SIZE, banner: String::new() }
                }
                Some(i) if i.get_ref() == "builtin:payload" => {
                    let size = match &p.image_size {
                        Some(v) => cx.size(v, &format!("{who}.image_size")).unwrap_or(defaults::IMAGE_SIZE),
                        None => defaults::IMAGE_SIZE,
                    };
                    ImageSource::Builtin {
                        size,
                        banner: p
                            .banner
                            .clone()
                            .unwrap_or_else(|| format!("{id} booted the delivered image")),
                    }
                }
                Some(i) if i.get_ref() == "vm:payload" => {
                    if let Err(e) = vm_art.check() {
                        cx.push(Some(i.span()), format!("{who}.image"), e.to_string());
                    }
                    ImageSource::File(vm_art.bundle.clone())
                }
                Some(i) if i.get_ref().starts_with("builtin:") => {
                    cx.push(
                        Some(i.span()),
                        format!("{who}.image"),
                        format!(
                            "unknown built-in image \"{}\"; the one built-in image is \"builtin:payload\"",
                            i.get_ref()
                        ),
                    );
                    ImageSource::Builtin { size: defaults::IMAGE_SIZE, banner: String::new() }
                }
                Some(i) => {
                    if p.image_size.is_some() || p.banner.is_some() {
                        cx.push(Some(i.span()), format!("{who}.image_size"), "image_size and banner apply to \"builtin:payload\" only; a file image has the size of the file");
                    }
                    let f = i.get_ref().strip_prefix("file://").unwrap_or(i.get_ref());
                    let f = base.join(f);
                    match std::fs::metadata(&f) {
                        Ok(m) if m.is_file() && m.len() > 0 => {}
                        Ok(_) => cx.push(
                            Some(i.span()),
                            format!("{who}.image"),
                            format!("{} is empty or not a regular file", f.display()),
                        ),
                        Err(e) => cx.push(
                            Some(i.span()),
                            format!("{who}.image"),
                            format!(
                                "cannot read {}: {e}; paths are relative to the topology file",
                                f.display()
                            ),
                        ),
                    }
                    ImageSource::File(f)
                }
            };
            let image_size = match &image {
                ImageSource::Builtin { size, .. } => Some(*size),
                ImageSource::File(f) => std::fs::metadata(f).ok().map(|m| m.len()),
            };
            let launch_def = s.launch.unwrap_or(LaunchDef::Process);
            let net = launch_def == LaunchDef::Netboot;
            let vm = launch_def == LaunchDef::Qemu;
            if p.qemu.is_some() && !vm {
                cx.push(
                    p.qemu.as_ref().map(Spanned::span),
                    format!("{who}.qemu"),
                    "a [processor.qemu] table needs launch = \"qemu\"",
                );
            }
            let qemu = vm.then(|| {
                let q = p.qemu.as_ref().map(|q| q.get_ref().clone()).unwrap_or_default();
                let memory = q.memory.as_ref().and_then(|m| cx.size(m, &format!("{who}.qemu.memory"))).unwrap_or(512 << 20);
                // The kexec handoff holds the bundle about four times (staged, two memfds, the
                // kernel's own copy) on top of the running stage 1.
                let need = (4 * image_size.unwrap_or(0) + (128 << 20)).next_multiple_of(64 << 20);
                if memory < need {
                    cx.push(q.memory.as_ref().map(Spanned::span).or(Some(p.id.span())), format!("{who}.qemu.memory"), format!("{} is too little: the kexec handoff holds the image about four times over on top of stage 1; give the VM at least {}", fmt_size(memory), fmt_size(need)));
                }
                let accel = q.accel.unwrap_or_else(|| "tcg".into());
                if !["tcg", "kvm"].contains(&accel.as_str()) {
                    cx.push(p.qemu.as_ref().map(Spanned::span), format!("{who}.qemu.accel"), format!("unknown accelerator \"{accel}\"; use \"tcg\" (software emulation) or \"kvm\""));
                }
                let kernel = q.kernel.map_or_else(|| vm_art.kernel.clone(), |k| base.join(k));
                let initrd = q.initrd.map_or_else(|| vm_art.initrd.clone(), |k| base.join(k));
                for (f, what) in [(&kernel, "kernel"), (&initrd, "initrd")] {
                    if !f.is_file() {
                        cx.push(p.qemu.as_ref().map(Spanned::span).or(Some(p.id.span())), format!("{who}.qemu.{what}"), format!("{} is missing; run `monarch vm prepare` (it builds the stage-1 kernel and initramfs) or set qemu.{what}", f.display()));
                    }
                }
                QemuSpec { memory_mib: memory >> 20, accel, kernel, initrd }
            });
            let handoff = s.handoff.unwrap_or(if vm { Handoff::Kexec } else { Handoff::Exec });
            if vm && handoff == Handoff::Exec {
                cx.push(Some(p.id.span()), format!("{who}.handoff"), "a VM hands off with \"kexec\" (a kernel bundle) or \"none\"; \"exec\" runs a program in the monarch's own kernel");
            }
            if handoff == Handoff::Kexec && launch_def == LaunchDef::Process {
                cx.push(Some(p.id.span()), format!("{who}.handoff"), "kexec replaces the running kernel: use it with launch = \"qemu\" (or an external agent on its own machine), never with launch = \"process\"");
            }
            let (wpath, wsize, wspan) = match &p.window {
                Some(w) => {
                    let size =
                        w.get_ref().size.as_ref().and_then(|v| cx.size(v, &format!("{who}.window.size")));
                    (w.get_ref().path.as_ref().map(|x| base.join(x)), size, Some(w.span()))
                }
                None => (None, None, None),
            };
            let memfd = p.window.as_ref().is_some_and(|w| w.get_ref().memfd);
            if vm
                && let (Some(size), Some(span)) = (wsize, &wspan)
                && bar_data_size(size) != size
            {
                let fit = bar_data_size(size);
                cx.push(Some(span.clone()), format!("{who}.window.size"), format!("a VM's window is a PCI BAR, whose size (data area + the 4 KiB register page) is a power of two; use {fit} (or leave window.size out)"));
            }
            if memfd && (launch_def != LaunchDef::Process || wpath.is_some()) {
                cx.push(wspan.clone(), format!("{who}.window.memfd"), "a memfd window is handed to an agent the monarch starts: use it with launch = \"process\" and without window.path");
            }
            let wpath = match wpath {
                Some(p) => p,
                None => {
                    if launch_def == LaunchDef::External {
                        cx.push(wspan.clone().or(Some(p.id.span())), format!("{who}.window.path"), "an external agent needs to be told where the window is: set window = { path = \"/dev/shm/...\" } and start `monarch agent --window` on that path");
                    }
                    run_dir.join(format!("{id}.win"))
                }
            };
            if let Some(other) = seen_windows.insert(wpath.clone(), id.clone()) {
                cx.push(
                    wspan.clone().or(Some(p.id.span())),
                    format!("{who}.window.path"),
                    format!(
                        "window {} is already used by \"{other}\"; every secondary needs its own window",
                        wpath.display()
                    ),
                );
            }
            let mode = match &s.mode {
                None => Mode::Push,
                Some(m) if m.get_ref() == "push" => Mode::Push,
                Some(m) if m.get_ref() == "pull" => Mode::Pull,
                Some(m) => {
                    cx.push(Some(m.span()), format!("{who}.mode"), format!("unknown mode \"{}\"; use \"push\" (the monarch copies) or \"pull\" (the secondary copies)", m.get_ref()));
                    Mode::Push
                }
            };
            let chunk_size = match &s.chunk_size {
                None => defaults::CHUNK_SIZE,
                Some(v) => match cx.size(v, &format!("{who}.chunk_size")) {
                    Some(c) if c >= 4096 && c % 4096 == 0 => c,
                    Some(_) => {
                        cx.push(
                            Some(v.span()),
                            format!("{who}.chunk_size"),
                            "a chunk is a whole number of 4 KiB pages (e.g. \"1MiB\")",
                        );
                        defaults::CHUNK_SIZE
                    }
                    None => defaults::CHUNK_SIZE,
                },
            };
            let data_size = match (wsize, image_size) {
                (Some(0), _) => {
                    cx.push(
                        wspan.clone(),
                        format!("{who}.window.size"),
                        "a window needs a data area; give a size of at least the image size",
                    );
                    0
                }
                (Some(w), Some(img)) if mode == Mode::Pull && img > w => {
                    cx.push(
                        wspan.clone(),
                        format!("{who}.window.size"),
                        format!(
                            "the image is {} but the window's data area is {}; in pull mode the whole image sits in the window: make window.size at least {} (or use mode = \"push\", which streams)",
                            fmt_size(img),
                            fmt_size(w),
                            fmt_size(img)
                        ),
                    );
                    w
                }
                (Some(w), Some(img))
                    if mode == Mode::Push && stream::layout(img, w, chunk_size).is_none() =>
                {
                    let min = stream_window(img, chunk_size.min(img.next_multiple_of(4096)));
                    cx.push(
                        wspan.clone(),
                        format!("{who}.window.size"),
                        format!(
                            "the window's data area ({}) cannot hold the image's manifest and one {} chunk; make window.size at least {}",
                            fmt_size(w),
                            fmt_size(chunk_size),
                            fmt_size(min)
                        ),
                    );
                    w
                }
                (Some(w), _) => w,
                (None, Some(img)) => {
                    let data = match mode {
                        Mode::Pull => img.div_ceil(1 << 20) << 20,
                        Mode::Push => stream_window(img, chunk_size)
                            .next_multiple_of(1 << 20)
                            .max(stream_window(img, chunk_size)),
                    };
                    if vm { bar_data_size(data) } else { data }
                }
                (None, None) => 0,
            };
            let algo = match &s.checksum {
                None => Algo::Crc32c,
                Some(c) => Algo::from_name(c.get_ref()).unwrap_or_else(|| {
                    cx.push(
                        Some(c.span()),
                        format!("{who}.checksum"),
                        format!("unknown checksum \"{}\"; use crc32c, xxh3 or blake3", c.get_ref()),
                    );
                    Algo::Crc32c
                }),
            };
            let attempts = match &s.attempts {
                None => defaults::ATTEMPTS,
                Some(a) if *a.get_ref() == 0 => {
                    cx.push(
                        Some(a.span()),
                        format!("{who}.attempts"),
                        "attempts must be at least 1 (the first copy counts)",
                    );
                    1
                }
                Some(a) => *a.get_ref(),
            };
            let t = s.timeouts.clone().unwrap_or_default();
            // A VM boots a kernel before its agent answers, and again after the handoff.
            let slow = if vm { defaults::VM_SLOWDOWN } else { 1 };
            let timeouts = Timeouts {
                rendezvous: cx.duration(
                    &t.rendezvous,
                    &format!("{who}.timeouts.rendezvous"),
                    defaults::RENDEZVOUS * slow,
                ),
                verify: cx.duration(&t.verify, &format!("{who}.timeouts.verify"), defaults::VERIFY * slow),
                handoff: cx.duration(
                    &t.handoff,
                    &format!("{who}.timeouts.handoff"),
                    defaults::HANDOFF * slow,
                ),
                agent: cx.duration(&t.agent, &format!("{who}.timeouts.agent"), defaults::AGENT * slow),
            };
            let f = p.fault.clone().unwrap_or_default();
            let netboot = if net {
                let ctx = NetCheck { who: &who, id: &id, base, image_size, handoff };
                let spec = netboot_spec(&mut cx, p, &f, &ctx);
                if let Some(other) = seen_macs.insert(spec.mac, id.clone()) {
                    cx.push(
                        p.mac.as_ref().map_or(p.id.span(), Spanned::span).into(),
                        format!("{who}.mac"),
                        format!(
                            "MAC {} is already used by \"{other}\"; a MAC is a machine's identity for the boot server: give each netboot secondary its own `mac`",
                            spec.mac
                        ),
                    );
                }
                if let Some(d) = &spec.disk
                    && let Some(other) = seen_disks.insert(d.clone(), id.clone())
                {
                    cx.push(
                        p.disk.as_ref().map(Spanned::span),
                        format!("{who}.disk"),
                        format!(
                            "disk {} is already used by \"{other}\"; every machine needs its own disk",
                            d.display()
                        ),
                    );
                }
                Some(spec)
            } else {
                for (set, name) in [
                    (p.mac.is_some(), "mac"),
                    (p.disk.is_some(), "disk"),
                    (p.disk_size.is_some(), "disk_size"),
                ] {
                    if set {
                        cx.push(Some(p.id.span()), format!("{who}.{name}"), format!("{name} applies to a secondary booted over the network: set launch = \"netboot\" or remove {name}"));
                    }
                }
                None
            };
            // No window, and one attempt: the agent verifies and a mismatch is a failure.
            let (data_size, attempts) = if net { (0, 1) } else { (data_size, attempts) };
            if f.kill_agent_during_copy && launch_def == LaunchDef::External {
                cx.push(
                    Some(p.id.span()),
                    format!("{who}.fault.kill_agent_during_copy"),
                    "the monarch can only kill agents it launched; use launch = \"process\"",
                );
            }
            secondaries.push(Secondary {
                id,
                slot: p.slot,
                boot_id: p.boot_id,
                path,
                priority: p.priority.unwrap_or(0),
                image,
                window: WindowSpec { path: wpath, data_size },
                launch: match (launch_def, qemu, netboot) {
                    (LaunchDef::Qemu, Some(q), _) => Launch::Qemu(q),
                    (LaunchDef::Netboot, _, Some(n)) => Launch::Netboot(n),
                    (LaunchDef::External, ..) => Launch::External,
                    _ => Launch::Process { memfd },
                },
                handoff,
                mode,
                algo,
                attempts,
                timeouts,
                required: s.required.unwrap_or(true),
                faults: Faults {
                    corrupt_attempts: f.corrupt_attempts,
                    kill_agent_during_copy: f.kill_agent_during_copy,
                    corrupt_chunks: f.corrupt_chunks.clone(),
                },
                chunk_size,
            });
        }
        if managers.is_empty() {
            cx.push(
                None,
                "processor",
                "no processor has role = \"monarch\"; add the management processor that runs `monarch up`",
            );
        }
        if secondaries.is_empty() {
            cx.push(None, "processor", "no processor has role = \"secondary\"; there is nothing to boot");
        }
        for s in &file.switches {
            if switch_used.get(s.id.get_ref()) == Some(&false) {
                cx.push(
                    Some(s.id.span()),
                    format!("switch \"{}\"", s.id.get_ref()),
                    "no secondary sits behind this switch; remove it or set switch = \"…\" on a secondary",
                );
            }
        }
        let election = election_spec(&mut cx, &file.election, &managers, &secondaries);
        let mut slots: HashMap<u32, &str> = HashMap::new();
        for (id, slot) in
            managers.iter().map(|m| (&m.id, m.slot)).chain(secondaries.iter().map(|s| (&s.id, s.slot)))
        {
            if let Some(slot) = slot
                && let Some(other) = slots.insert(slot, id)
            {
                let span = file.processors.iter().find(|p| p.id.get_ref() == id).map(|p| p.id.span());
                cx.push(span, format!("processor \"{id}\".slot"), format!("slot {slot} is already taken by \"{other}\"; slots are physical positions, one processor each"));
            }
        }
        if cx.problems.is_empty() {
            Ok(Topology {
                name: file.chassis.name,
                run_dir,
                run_dir_is_temporary,
                managers,
                election,
                switches,
                secondaries,
            })
        } else {
            Err(invalid(cx.problems))
        }
    }
}

/// The `[election]` table, and what failover needs of the secondaries: a new monarch must
/// be able to open every window by its path and tell whether its agent is alive (the agent
/// holds the window's lock), which rules out memfd windows (handed down by one monarch
/// process), VMs (their agent is in another kernel) and network boots (no window).
fn election_spec(
    cx: &mut Ctx<'_>,
    e: &ElectionDef,
    managers: &[Manager],
    secondaries: &[Secondary],
) -> Election {
    let heartbeat = cx.duration(&e.heartbeat, "election.heartbeat", defaults::HEARTBEAT);
    let timeout = cx.duration(&e.timeout, "election.timeout", defaults::FAILOVER);
    let rendezvous = cx.duration(&e.rendezvous, "election.rendezvous", defaults::ELECTION_RENDEZVOUS);
    if timeout < heartbeat * 3 {
        cx.push(e.timeout.as_ref().map(Spanned::span), "election.timeout", format!("the failover timeout ({}) must be at least 3 heartbeats ({}), or a busy monarch is deposed by mistake", humantime::format_duration(timeout), humantime::format_duration(heartbeat * 3)));
    }
    let pinned = e.monarch.as_ref().and_then(|m| {
        let i = managers.iter().position(|x| &x.id == m.get_ref());
        if i.is_none() {
            let known: Vec<&str> = managers.iter().map(|m| m.id.as_str()).collect();
            cx.push(
                Some(m.span()),
                "election.monarch",
                format!(
                    "\"{}\" is not a management processor; use one of: {}",
                    m.get_ref(),
                    known.join(", ")
                ),
            );
        }
        i
    });
    if managers.len() > monarch_proto::election::MAX_CANDIDATES {
        cx.push(
            None,
            "processor",
            format!(
                "{} management processors; a window has command blocks for at most {}",
                managers.len(),
                monarch_proto::election::MAX_CANDIDATES
            ),
        );
    }
    if managers.len() > 1 {
        for s in secondaries {
            let why = match &s.launch {
                Launch::Netboot(_) => Some("is booted over the network"),
                Launch::Qemu(_) => Some("is a VM (its agent's liveness cannot be probed from here)"),
                Launch::Process { memfd: true } => {
                    Some("has a memfd window (only the monarch that made it can hand it over)")
                }
                Launch::Process { memfd: false } | Launch::External => None,
            };
            if let Some(why) = why {
                cx.push(None, format!("processor \"{}\"", s.id), format!("it {why}, so a new monarch could not take it over; with two or more management processors every secondary needs a window file (launch = \"process\" or \"external\"), or keep one management processor"));
            }
        }
    }
    let backend = match &e.etcd {
        None => {
            for (v, f) in [(&e.ttl, "election.ttl"), (&e.etcd_timeout, "election.etcd_timeout")] {
                if let Some(v) = v {
                    cx.push(
                        Some(v.span()),
                        f,
                        "only an etcd election has it: set election.etcd, or remove the field",
                    );
                }
            }
            ElectionBackend::Backplane
        }
        Some(ep) => {
            let endpoints = match ep.get_ref() {
                EndpointsDef::One(u) => vec![u.clone()],
                EndpointsDef::Many(v) => v.clone(),
            };
            if endpoints.is_empty() || endpoints.iter().any(|u| u.trim().is_empty()) {
                cx.push(
                    Some(ep.span()),
                    "election.etcd",
                    "give etcd's client URLs, e.g. [\"http://10.0.0.1:2379\"]",
                );
            }
            if let Some(bad) = endpoints.iter().find(|u| u.starts_with("https://")) {
                cx.push(
                    Some(ep.span()),
                    "election.etcd",
                    format!("{bad}: TLS is not supported; use an http:// endpoint"),
                );
            }
            if !cfg!(feature = "etcd") {
                cx.push(Some(ep.span()), "election.etcd", "this monarch was built without etcd support: rebuild with `cargo build --release --features etcd` (its build needs `apt-get install protobuf-compiler libprotobuf-dev`)");
            }
            let ttl = cx.duration(&e.ttl, "election.ttl", defaults::ETCD_TTL);
            if ttl < Duration::from_secs(1) {
                cx.push(
                    e.ttl.as_ref().map(Spanned::span),
                    "election.ttl",
                    "etcd leases count whole seconds: use \"2s\" or more",
                );
            }
            let timeout = cx.duration(&e.etcd_timeout, "election.etcd_timeout", defaults::ETCD_TIMEOUT);
            if timeout < ttl {
                cx.push(e.etcd_timeout.as_ref().map(Spanned::span), "election.etcd_timeout", format!("must be at least the lease TTL ({}), or a candidate gives up before a dead monarch's lease can expire", humantime::format_duration(ttl)));
            }
            ElectionBackend::Etcd(EtcdElection { endpoints, ttl, timeout })
        }
    };
    Election { pinned, heartbeat, timeout, rendezvous, backend }
}

/// What [`netboot_spec`] needs to know about the secondary besides its definition.
struct NetCheck<'a> {
    who: &'a str,
    id: &'a str,
    base: &'a Path,
    image_size: Option<u64>,
    handoff: Handoff,
}

/// Validate a launch = "netboot" secondary: its own fields (`mac`, `disk`, `disk_size`), and
/// no field that only means something for a window.
fn netboot_spec(cx: &mut Ctx<'_>, p: &ProcessorDef, f: &FaultDef, n: &NetCheck<'_>) -> NetbootSpec {
    let who = n.who;
    let id_span = Some(p.id.span());
    // Fields set on the processor itself; from [defaults] they are simply not used.
    for (span, name, why) in [
        (
            p.window.as_ref().map(Spanned::span),
            "window",
            "the agent pre-posts a buffer of the offered size instead; its log is RUN_DIR/ID.log",
        ),
        (
            p.mode.as_ref().map(Spanned::span),
            "mode",
            "the image is transferred whole into the agent's pre-posted buffer",
        ),
        (
            p.chunk_size.as_ref().map(Spanned::span),
            "chunk_size",
            "the image is transferred whole into the agent's pre-posted buffer",
        ),
    ] {
        if let Some(span) = span {
            cx.push(
                Some(span),
                format!("{who}.{name}"),
                format!("a netboot secondary has no window ({why}); remove {name}"),
            );
        }
    }
    if let Some(a) = &p.attempts
        && *a.get_ref() != 1
    {
        cx.push(Some(a.span()), format!("{who}.attempts"), "a netboot secondary makes one attempt: its agent verifies the image against the offered digest and a mismatch is a failure; remove attempts");
    }
    if f.kill_agent_during_copy || !f.corrupt_chunks.is_empty() || f.corrupt_attempts > 1 {
        cx.push(id_span.clone(), format!("{who}.fault"), "a netboot secondary supports fault = { corrupt_attempts = 1 } only (a byte of the served image flips after the offer; the agent's verification must refuse it)");
    }
    if n.handoff == Handoff::Kexec {
        cx.push(id_span.clone(), format!("{who}.handoff"), "a netboot secondary hands off with \"exec\" (run the verified image) or \"none\" (stop after verification)");
    }
    let mac = match &p.mac {
        None => derived_mac(n.id),
        Some(m) => match m.get_ref().parse::<Mac>().ok() {
            Some(mac) if mac.octets()[0] & 1 == 0 && mac.octets() != [0; 6] => mac,
            Some(_) => {
                cx.push(Some(m.span()), format!("{who}.mac"), format!("\"{}\" is a multicast or all-zero address; a machine needs a unicast MAC such as \"52:54:00:12:34:56\"", m.get_ref()));
                derived_mac(n.id)
            }
            None => {
                cx.push(Some(m.span()), format!("{who}.mac"), format!("\"{}\" is not a MAC address; write six hex bytes, e.g. \"52:54:00:12:34:56\" (or leave mac out: one is derived from the id)", m.get_ref()));
                derived_mac(n.id)
            }
        },
    };
    let disk = p.disk.as_ref().map(|d| n.base.join(d.get_ref()));
    let disk_size = p.disk_size.as_ref().and_then(|v| cx.size(v, &format!("{who}.disk_size")));
    match (&disk, &p.disk_size) {
        (None, Some(v)) => cx.push(Some(v.span()), format!("{who}.disk_size"), "disk_size is the size of the machine's disk file: set disk = \"path\" too, or remove disk_size (diskless)"),
        (Some(d), None) if !d.exists() => cx.push(p.disk.as_ref().map(Spanned::span), format!("{who}.disk"), format!("{} does not exist; give disk_size (e.g. \"256MiB\") to have it created, or point disk at an existing block device or file", d.display())),
        _ => {}
    }
    if let (Some(size), Some(img), Some(v)) = (disk_size, n.image_size, &p.disk_size) {
        match monarch_proto::slots::Layout::min_target_len(img) {
            Some(min) if size < min => cx.push(Some(v.span()), format!("{who}.disk_size"), format!("{} cannot hold two A/B slots of a {} image with their records; make disk_size at least {}", fmt_size(size), fmt_size(img), fmt_size(min.next_multiple_of(1 << 20)))),
            Some(_) => {}
            None => cx.push(Some(v.span()), format!("{who}.disk_size"), format!("a {} image is too large for an A/B disk", fmt_size(img))),
        }
    }
    NetbootSpec { mac, disk, disk_size }
}

/// Data-area size that holds an image's manifest and the whole image as a ring of chunks.
fn stream_window(image: u64, chunk: u64) -> u64 {
    let chunk = chunk.max(4096);
    (image.div_ceil(chunk) * stream::DIGEST_LEN).next_multiple_of(4096) + image.next_multiple_of(chunk)
}

fn merge(p: &SettingsDef, d: &SettingsDef) -> SettingsDef {
    let t = match (&p.timeouts, &d.timeouts) {
        (Some(a), Some(b)) => Some(TimeoutsDef {
            rendezvous: a.rendezvous.clone().or_else(|| b.rendezvous.clone()),
            verify: a.verify.clone().or_else(|| b.verify.clone()),
            handoff: a.handoff.clone().or_else(|| b.handoff.clone()),
            agent: a.agent.clone().or_else(|| b.agent.clone()),
        }),
        (a, b) => a.clone().or_else(|| b.clone()),
    };
    SettingsDef {
        launch: p.launch.or(d.launch),
        handoff: p.handoff.or(d.handoff),
        mode: p.mode.clone().or_else(|| d.mode.clone()),
        checksum: p.checksum.clone().or_else(|| d.checksum.clone()),
        attempts: p.attempts.clone().or_else(|| d.attempts.clone()),
        timeouts: t,
        required: p.required.or(d.required),
        chunk_size: p.chunk_size.clone().or_else(|| d.chunk_size.clone()),
    }
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Topology, TopologyError> {
        Topology::parse(src, Path::new("t.toml"), Path::new("/nonexistent"))
    }

    fn errors(src: &str) -> String {
        parse(src).unwrap_err().to_string()
    }

    const HEAD: &str = "[chassis]\nname = \"t\"\n[[processor]]\nid = \"mm\"\nrole = \"monarch\"\n";

    #[test]
    fn the_builtin_chassis_is_the_reference_design() {
        let t = Topology::builtin().unwrap();
        assert_eq!(t.managers.len(), 2, "two management modules (monarch election)");
        let table: Vec<_> = t.managers.iter().enumerate().map(|(i, m)| m.candidate(i)).collect();
        let v = monarch_proto::election::arbitrate(&table, t.election.pinned).unwrap();
        assert_eq!(t.managers[v.winner].id, "mgmt", "equal BOOT_IDs: the lowest slot wins");
        assert_eq!(t.secondaries.len(), 5);
        let direct = t.secondaries.iter().filter(|s| s.path == PortPath::Direct).count();
        assert_eq!(direct, 3, "route card + two line cards on direct ports");
        assert!(
            t.secondaries
                .iter()
                .all(|s| s.image == ImageSource::Builtin { size: 30 << 20, banner: s.image_banner() })
        );
        assert!(t.run_dir_is_temporary);
    }

    impl Secondary {
        fn image_banner(&self) -> String {
            match &self.image {
                ImageSource::Builtin { banner, .. } => banner.clone(),
                ImageSource::File(_) => String::new(),
            }
        }
    }

    #[test]
    fn duplicate_ids_are_reported_with_their_line() {
        let e = errors(&format!(
            "{HEAD}[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\n[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\n"
        ));
        assert!(e.contains("t.toml:11: processor \"a\".id: duplicate processor id"), "{e}");
    }

    #[test]
    fn unknown_switch_names_the_defined_ones() {
        let e = errors(&format!(
            "{HEAD}[[switch]]\nid = \"sw0\"\n[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nswitch = \"sw9\"\n"
        ));
        assert!(
            e.contains(":12: processor \"a\".switch: switch \"sw9\" is not defined (defined: sw0)"),
            "{e}"
        );
    }

    #[test]
    fn a_secondary_without_an_image_is_refused() {
        let e = errors(&format!("{HEAD}[[processor]]\nid = \"a\"\nrole = \"secondary\"\n"));
        assert!(e.contains("processor \"a\".image: a secondary needs an image"), "{e}");
    }

    #[test]
    fn an_image_larger_than_its_window_is_refused_with_the_size_to_use() {
        let e = errors(&format!(
            "{HEAD}[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nimage_size = \"8MiB\"\nmode = \"pull\"\nwindow = {{ size = \"4MiB\" }}\n"
        ));
        assert!(e.contains("processor \"a\".window.size: the image is 8MiB but the window's data area is 4MiB; in pull mode the whole image sits in the window: make window.size at least 8MiB"), "{e}");
    }

    #[test]
    fn unknown_fields_and_syntax_errors_have_lines() {
        let e = errors(&format!("{HEAD}colour = \"red\"\n"));
        assert!(e.contains("t.toml:6: syntax: unknown field `colour`"), "{e}");
        assert!(e.contains("docs/topology.md"), "{e}");
        let e = errors("[chassis\n");
        assert!(e.starts_with("t.toml:1: syntax:"), "{e}");
    }

    #[test]
    fn external_agents_need_a_window_path() {
        let e = errors(&format!(
            "{HEAD}[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nlaunch = \"external\"\n"
        ));
        assert!(e.contains("processor \"a\".window.path: an external agent needs"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field_and_the_accepted_ones() {
        let e = errors(&format!(
            "{HEAD}[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nmode = \"shove\"\nchecksum = \"md5\"\nattempts = 0\ntimeouts = {{ verify = \"soon\" }}\nimage_size = \"lots\"\n"
        ));
        for needle in [
            "mode: unknown mode \"shove\"",
            "checksum: unknown checksum \"md5\"",
            "attempts: attempts must be at least 1",
            "timeouts.verify: \"soon\" is not a duration",
            "image_size: \"lots\" is not a size",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in\n{e}");
        }
    }

    #[test]
    fn no_monarch_no_secondaries_unused_switch_and_shared_slots() {
        let e = errors("[chassis]\nname = \"t\"\n[[switch]]\nid = \"s\"\n");
        assert!(e.contains("no processor has role = \"monarch\""), "{e}");
        assert!(e.contains("nothing to boot"), "{e}");
        assert!(e.contains("switch \"s\": no secondary sits behind this switch"), "{e}");
        let e = errors(&format!(
            "{HEAD}slot = 1\n[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nslot = 1\n"
        ));
        assert!(e.contains("slot 1 is already taken by \"mm\""), "{e}");
    }

    #[test]
    fn election_settings_are_checked() {
        const TWO: &str = "[chassis]\nname = \"t\"\n[[processor]]\nid = \"m0\"\nrole = \"monarch\"\nslot = 0\n[[processor]]\nid = \"m1\"\nrole = \"monarch\"\nslot = 1\nboot_id = 5\nself_test = \"fail\"\n";
        let sec = "[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\n";
        let t = parse(&format!(
            "{TWO}{sec}[election]\nmonarch = \"m1\"\nheartbeat = \"20ms\"\ntimeout = \"100ms\"\n"
        ))
        .unwrap();
        assert_eq!(t.election.pinned, Some(1));
        assert_eq!(t.election.heartbeat, Duration::from_millis(20));
        assert!(t.managers[1].fails_self_test);
        let table: Vec<_> = t.managers.iter().enumerate().map(|(i, m)| m.candidate(i)).collect();
        let v = monarch_proto::election::arbitrate(&table, t.election.pinned).unwrap();
        assert_eq!(v.winner, 0, "the pinned candidate failed its self-test");

        let e = errors(&format!(
            "{TWO}{sec}[election]\nmonarch = \"nope\"\ntimeout = \"60ms\"\nheartbeat = \"50ms\"\n"
        ));
        assert!(
            e.contains("election.monarch: \"nope\" is not a management processor; use one of: m0, m1"),
            "{e}"
        );
        assert!(e.contains("must be at least 3 heartbeats"), "{e}");
        let e = errors(&format!("{TWO}{sec}self_test = \"fail\"\n"));
        assert!(e.contains("only a management processor"), "{e}");
        let e = errors(&format!("{TWO}{sec}window = {{ memfd = true }}\n"));
        assert!(e.contains("a new monarch could not take it over"), "{e}");
        let e = errors(&format!("{HEAD}self_test = \"maybe\"\n{sec}"));
        assert!(e.contains("unknown self_test \"maybe\""), "{e}");
    }

    #[test]
    fn missing_image_file_is_reported() {
        let e =
            errors(&format!("{HEAD}[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"nope.img\"\n"));
        assert!(e.contains("processor \"a\".image: cannot read /nonexistent/nope.img"), "{e}");
    }

    fn netboot(id: &str, extra: &str) -> String {
        format!(
            "[[processor]]\nid = \"{id}\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nimage_size = \"8MiB\"\nlaunch = \"netboot\"\n{extra}\n"
        )
    }

    #[test]
    fn a_netboot_secondary_has_a_stable_mac_an_optional_disk_and_no_window() {
        let dir = tempfile::tempdir().unwrap();
        let src = format!(
            "{HEAD}[defaults]\nmode = \"pull\"\nattempts = 3\n{}{}{}",
            netboot("nb0", ""),
            netboot("nb1", "mac = \"52:54:00:AA:bb:01\"\ndisk = \"disks/nb1.img\"\ndisk_size = \"64MiB\""),
            "[[processor]]\nid = \"w\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\n"
        );
        let t = Topology::parse(&src, Path::new("t.toml"), dir.path()).unwrap();
        let [nb0, nb1, w] = &t.secondaries[..] else { panic!("three secondaries") };
        let Launch::Netboot(spec0) = &nb0.launch else { panic!("nb0 is booted over the network") };
        assert_eq!(spec0.mac, derived_mac("nb0"));
        assert_eq!(&spec0.mac.octets()[..3], &[0x52, 0x54, 0x00]);
        assert_ne!(derived_mac("nb0"), derived_mac("nb1"));
        assert_eq!((spec0.disk.as_ref(), spec0.disk_size), (None, None));
        assert_eq!((nb0.launch.name(), nb0.handoff), ("netboot", Handoff::Exec));
        assert_eq!((nb0.window.data_size, nb0.attempts), (0, 1), "no window, one attempt");
        assert_eq!(nb0.window.path.with_extension("log"), t.run_dir.join("nb0.log"));
        let Launch::Netboot(spec1) = &nb1.launch else { panic!("nb1 is booted over the network") };
        assert_eq!(spec1.mac, Mac::new([0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01]));
        assert_eq!(
            spec1.disk.as_deref(),
            Some(dir.path().join("disks/nb1.img").as_path()),
            "relative to the file"
        );
        assert_eq!(spec1.disk_size, Some(64 << 20));
        assert_eq!(w.launch, Launch::Process { memfd: false });
    }

    #[test]
    fn window_fields_on_a_netboot_secondary_and_netboot_fields_elsewhere_are_refused() {
        let e = errors(&format!(
            "{HEAD}mac = \"52:54:00:00:00:01\"\n{}{}{}{}[[processor]]\nid = \"w\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\ndisk = \"x.img\"\n",
            netboot("a", "window = { size = \"64MiB\" }\nmode = \"push\"\nattempts = 2\nhandoff = \"kexec\""),
            netboot("b", "mac = \"01:00:5e:00:00:01\"\nfault = { kill_agent_during_copy = true }"),
            netboot("c", "mac = \"nope\"\ndisk_size = \"64MiB\""),
            netboot("d", "disk = \"missing.img\""),
        ));
        for needle in [
            "processor \"mm\".mac: a monarch has no mac",
            "processor \"a\".window: a netboot secondary has no window",
            "processor \"a\".mode: a netboot secondary has no window",
            "processor \"a\".attempts: a netboot secondary makes one attempt",
            "processor \"a\".handoff: a netboot secondary hands off with \"exec\"",
            "processor \"b\".mac: \"01:00:5e:00:00:01\" is a multicast",
            "processor \"b\".fault: a netboot secondary supports fault = { corrupt_attempts = 1 } only",
            "processor \"c\".mac: \"nope\" is not a MAC address",
            "processor \"c\".disk_size: disk_size is the size of the machine's disk file: set disk",
            "processor \"d\".disk: /nonexistent/missing.img does not exist; give disk_size",
            "processor \"w\".disk: disk applies to a secondary booted over the network: set launch = \"netboot\"",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in\n{e}");
        }
        assert!(!e.contains("kexec replaces the running kernel"), "{e}");
    }

    #[test]
    fn netboot_macs_and_disks_are_one_per_machine_and_a_disk_must_hold_two_slots() {
        let e = errors(&format!(
            "{HEAD}{}{}{}",
            netboot("a", "mac = \"52:54:00:00:00:01\"\ndisk = \"d.img\"\ndisk_size = \"64MiB\""),
            netboot("b", "mac = \"52:54:00:00:00:01\"\ndisk = \"d.img\"\ndisk_size = \"64MiB\""),
            netboot("c", "disk = \"c.img\"\ndisk_size = \"4MiB\""),
        ));
        for needle in [
            "processor \"b\".mac: MAC 52:54:00:00:00:01 is already used by \"a\"",
            "processor \"b\".disk: disk /nonexistent/d.img is already used by \"a\"",
            "processor \"c\".disk_size: 4MiB cannot hold two A/B slots of a 8MiB image",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in\n{e}");
        }
    }

    #[test]
    fn defaults_apply_and_processors_override_them() {
        let t = parse(&format!("{HEAD}[defaults]\nattempts = 5\nchecksum = \"blake3\"\ntimeouts = {{ verify = \"2s\" }}\n[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nattempts = 2\ntimeouts = {{ handoff = \"1s\" }}\n")).unwrap();
        let a = &t.secondaries[0];
        assert_eq!(a.attempts, 2);
        assert_eq!(a.algo, Algo::Blake3);
        assert_eq!(a.timeouts.verify, Duration::from_secs(2));
        assert_eq!(a.timeouts.handoff, Duration::from_secs(1));
        assert_eq!(a.window.data_size, 31 << 20, "push: the whole image as a ring, plus the manifest");
    }
}
