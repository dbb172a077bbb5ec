//! The topology file's schema, as serde reads it: every table and field with its spans (for
//! errors that name the line), before anything is resolved or checked.
use crate::handoff::Handoff;
use crate::signing::SignaturePolicy;
use serde::Deserialize;

use toml::Spanned;

/// `launch` as written in a topology file, before its settings are resolved into a
/// [`Launch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum LaunchDef {
    Process,
    External,
    Qemu,
    Netboot,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum SizeDef {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDef {
    pub(super) chassis: ChassisDef,
    #[serde(default)]
    pub(super) election: ElectionDef,
    #[serde(default)]
    pub(super) defaults: SettingsDef,
    #[serde(default, rename = "switch")]
    pub(super) switches: Vec<SwitchDef>,
    #[serde(default, rename = "processor")]
    pub(super) processors: Vec<ProcessorDef>,
    #[serde(default)]
    pub(super) management: ManagementDef,
    /// What every cluster shares (a machine of many clusters).
    #[serde(default)]
    pub(super) clusters: Option<ClustersDef>,
    #[serde(default, rename = "cluster")]
    pub(super) cluster: Vec<ClusterDef>,
}

/// `[clusters]`: what every cluster of a machine shares.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClustersDef {
    /// The kernel image every core boots.
    pub(super) image: Option<Spanned<String>>,
    pub(super) image_size: Option<Spanned<SizeDef>>,
    /// The zones of every cluster's memory bank, with their maximum sizes, in bank order.
    pub(super) zones: Option<ZonesDef>,
    /// How long a barrier waits for its participants.
    pub(super) barrier_timeout: Option<Spanned<String>>,
    /// What a missed barrier does: "exclude" the late core, or "abort" the boot.
    pub(super) barrier_policy: Option<Spanned<String>>,
}

/// The maximum size of each zone of a memory bank.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ZonesDef {
    pub(super) boot_code: Option<Spanned<ZoneDef>>,
    pub(super) arch_info: Option<Spanned<ZoneDef>>,
    pub(super) kernel: Option<Spanned<ZoneDef>>,
    pub(super) boot_info: Option<Spanned<ZoneDef>>,
    pub(super) stacks: Option<Spanned<ZoneDef>>,
}

/// A zone: its maximum size (placed after the zone before it), or its base and maximum.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum ZoneDef {
    Max(SizeDef),
    At { base: SizeDef, max: SizeDef },
}

/// `[[cluster]]`: a cluster's cores and memory banks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterDef {
    pub(super) id: Spanned<u16>,
    /// Its place in the mesh (default: x = id, y = 0).
    pub(super) x: Option<u8>,
    pub(super) y: Option<u8>,
    /// How many cores (core 0 is the cluster's head).
    pub(super) cores: Spanned<u16>,
    /// Its memory banks' sizes.
    pub(super) banks: Option<Spanned<Vec<SizeDef>>>,
    /// Hardware that fails its self-test (emulated): left out of every boot info.
    pub(super) self_test: Option<Spanned<SelfTestDef>>,
    /// How its cores other than the head boot: `process` (default) or `netboot`.
    pub(super) launch: Option<Spanned<LaunchDef>>,
    /// launch = "netboot": the network its head serves the cores on.
    pub(super) network: Option<Spanned<ClusterNetDef>>,
    /// Fault injection, for tests and demonstrations of the barrier policies.
    pub(super) fault: Option<Spanned<ClusterFaultDef>>,
}

/// Faults injected into a cluster's phased boot.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterFaultDef {
    /// These cores (indexes in the cluster) are killed (SIGKILL) just before their first
    /// barrier: a head before the heads barrier, any other core before its cluster's.
    #[serde(default)]
    pub(super) killed_before_barrier: Vec<u16>,
}

/// `network` of a `[[cluster]]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterNetDef {
    /// The interface the head serves on (a bridge its cores' links are on).
    pub(super) interface: String,
    /// The head's address on it: where the cores send their DISCOVERs.
    pub(super) address: String,
    /// The discovery port (default 4012).
    pub(super) port: Option<u16>,
    /// The network namespace of each core but the head, in core order (core 1 first).
    pub(super) namespaces: Vec<String>,
}

/// What fails its self-test in a cluster.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SelfTestDef {
    /// Core indexes in the cluster.
    #[serde(default)]
    pub(super) failed_cores: Vec<u16>,
    /// Bank indexes in the cluster.
    #[serde(default)]
    pub(super) failed_banks: Vec<u16>,
}

/// How the supervised chassis is managed from outside (`monarch up --hold`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ManagementDef {
    /// Where to serve Redfish (HTTPS), `IP:PORT`.
    pub(super) redfish: Option<Spanned<String>>,
    /// The Redfish users file.
    pub(super) users: Option<String>,
    /// The Redfish service's certificate and key (PEM).
    pub(super) certificate: Option<String>,
    pub(super) key: Option<String>,
    /// Where to serve Prometheus metrics, `IP:PORT`.
    pub(super) metrics: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChassisDef {
    pub(super) name: String,
    pub(super) run_dir: Option<String>,
    pub(super) vm_dir: Option<String>,
    /// Public keys every secondary trusts (a processor's own `trust` replaces them).
    pub(super) trust: Option<Spanned<Vec<String>>>,
    /// Whether images must be signed (a processor's own `signature` wins).
    pub(super) signature: Option<Spanned<SignaturePolicy>>,
    /// How the main power domain comes on: "auto" (once aux is up) or "manual".
    pub(super) main_power: Option<Spanned<String>>,
    /// Where the supervisor keeps reboot causes across runs.
    pub(super) state_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ElectionDef {
    /// The operator's choice of monarch (the reference design's Boot Console Handler).
    pub(super) monarch: Option<Spanned<String>>,
    pub(super) heartbeat: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) rendezvous: Option<Spanned<String>>,
    /// etcd client URLs: elect over etcd instead of the backplane (candidates on machines
    /// that share no backplane).
    pub(super) etcd: Option<Spanned<EndpointsDef>>,
    /// etcd lease TTL.
    pub(super) ttl: Option<Spanned<String>>,
    /// How long a candidate may be cut off from etcd before it gives the boot up.
    pub(super) etcd_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum EndpointsDef {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SwitchDef {
    pub(super) id: Spanned<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SettingsDef {
    pub(super) launch: Option<LaunchDef>,
    pub(super) handoff: Option<Handoff>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) checksum: Option<Spanned<String>>,
    pub(super) attempts: Option<Spanned<u32>>,
    pub(super) timeouts: Option<TimeoutsDef>,
    pub(super) required: Option<bool>,
    pub(super) chunk_size: Option<Spanned<SizeDef>>,
    // How the secondary lives after its boot (see `Lifecycle`).
    pub(super) power: Option<Spanned<String>>,
    pub(super) wait: Option<Spanned<String>>,
    pub(super) recovery: Option<Spanned<String>>,
    pub(super) max_restarts: Option<Spanned<u32>>,
    pub(super) restart_window: Option<Spanned<String>>,
    pub(super) restart_backoff: Option<Spanned<String>>,
    pub(super) on_dependency_loss: Option<Spanned<String>>,
    pub(super) heartbeat: Option<Spanned<String>>,
    pub(super) heartbeat_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TimeoutsDef {
    pub(super) rendezvous: Option<Spanned<String>>,
    pub(super) verify: Option<Spanned<String>>,
    pub(super) handoff: Option<Spanned<String>>,
    pub(super) agent: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WindowDef {
    pub(super) path: Option<String>,
    #[serde(default)]
    pub(super) memfd: bool,
    pub(super) size: Option<Spanned<SizeDef>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QemuDef {
    pub(super) memory: Option<Spanned<SizeDef>>,
    pub(super) accel: Option<String>,
    pub(super) kernel: Option<String>,
    pub(super) initrd: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FaultDef {
    #[serde(default)]
    pub(super) corrupt_attempts: u32,
    #[serde(default)]
    pub(super) kill_agent_during_copy: bool,
    #[serde(default)]
    pub(super) corrupt_chunks: Vec<u64>,
    #[serde(default)]
    pub(super) tamper_image: bool,
    /// The demo payload never reports ready.
    pub(super) never_ready: Option<Spanned<bool>>,
    /// The demo payload defers every shutdown/reboot notice with this reason.
    pub(super) defer_notices: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProcessorDef {
    pub(super) id: Spanned<String>,
    pub(super) role: Role,
    pub(super) boot_id: Option<u32>,
    pub(super) slot: Option<u32>,
    /// A management processor's self-test result: "pass" (default) or "fail" (deconfigured,
    /// never monarch; the PDC_CONFIG self-test result), for exercising the rule.
    pub(super) self_test: Option<Spanned<String>>,
    pub(super) switch: Option<Spanned<String>>,
    pub(super) priority: Option<i32>,
    pub(super) image: Option<Spanned<String>>,
    pub(super) image_size: Option<Spanned<SizeDef>>,
    pub(super) banner: Option<String>,
    pub(super) window: Option<Spanned<WindowDef>>,
    pub(super) fault: Option<FaultDef>,
    pub(super) qemu: Option<Spanned<QemuDef>>,
    /// launch = "netboot": the machine's MAC (its identity for the boot server).
    pub(super) mac: Option<Spanned<String>>,
    /// launch = "netboot": the machine's disk (A/B install, then boot from the disk).
    pub(super) disk: Option<Spanned<String>>,
    /// launch = "netboot": size of the disk file when it has to be created.
    pub(super) disk_size: Option<Spanned<SizeDef>>,
    /// Public keys this secondary trusts (replaces `[chassis] trust`).
    pub(super) trust: Option<Spanned<Vec<String>>>,
    /// Whether its image must be signed (overrides `[chassis] signature`).
    pub(super) signature: Option<Spanned<SignaturePolicy>>,
    // The per-processor settings (same names as in [defaults]); serde cannot combine
    // `flatten` with `deny_unknown_fields`, so they are listed here again.
    pub(super) launch: Option<LaunchDef>,
    pub(super) handoff: Option<Handoff>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) checksum: Option<Spanned<String>>,
    pub(super) attempts: Option<Spanned<u32>>,
    pub(super) timeouts: Option<TimeoutsDef>,
    pub(super) required: Option<bool>,
    pub(super) chunk_size: Option<Spanned<SizeDef>>,
    pub(super) power: Option<Spanned<String>>,
    pub(super) wait: Option<Spanned<String>>,
    pub(super) recovery: Option<Spanned<String>>,
    pub(super) max_restarts: Option<Spanned<u32>>,
    pub(super) restart_window: Option<Spanned<String>>,
    pub(super) restart_backoff: Option<Spanned<String>>,
    pub(super) on_dependency_loss: Option<Spanned<String>>,
    pub(super) heartbeat: Option<Spanned<String>>,
    pub(super) heartbeat_timeout: Option<Spanned<String>>,
    // How it lives after its boot, its own only (not in [defaults]).
    /// Hard dependencies: secondary ids.
    pub(super) requires: Option<Spanned<Vec<Spanned<String>>>>,
    /// Soft dependencies: secondary ids.
    pub(super) wants: Option<Spanned<Vec<Spanned<String>>>>,
    /// The secondary (an AMC) that supervises it; none: the monarch.
    pub(super) supervisor: Option<Spanned<String>>,
    /// Host network interfaces it owns.
    pub(super) ports: Option<Spanned<Vec<Spanned<String>>>>,
    /// Demo payload: how long its services take to come up.
    pub(super) ready_after: Option<Spanned<String>>,
}

impl ProcessorDef {
    pub(super) fn settings(&self) -> SettingsDef {
        SettingsDef {
            launch: self.launch,
            handoff: self.handoff,
            mode: self.mode.clone(),
            checksum: self.checksum.clone(),
            attempts: self.attempts.clone(),
            timeouts: self.timeouts.clone(),
            required: self.required,
            chunk_size: self.chunk_size.clone(),
            power: self.power.clone(),
            wait: self.wait.clone(),
            recovery: self.recovery.clone(),
            max_restarts: self.max_restarts.clone(),
            restart_window: self.restart_window.clone(),
            restart_backoff: self.restart_backoff.clone(),
            on_dependency_loss: self.on_dependency_loss.clone(),
            heartbeat: self.heartbeat.clone(),
            heartbeat_timeout: self.heartbeat_timeout.clone(),
        }
    }
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
