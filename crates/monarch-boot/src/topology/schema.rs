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
