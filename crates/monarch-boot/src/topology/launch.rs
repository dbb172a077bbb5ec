//! How a secondary is started and reached, as the topology says it: each launch mode with
//! its own settings ([`Launch`]), and their resolution from a processor's table. A new launch
//! mode is a variant here (with its settings and their resolution), its name in the file
//! schema, and how staging starts and watches it (`stage/launch.rs`).
use super::env::Environment;
use super::error::Ctx;
use super::schema::{FaultDef, LaunchDef, ProcessorDef};
use crate::handoff::Handoff;
use crate::values::fmt_size;
use crate::vm::artifacts::Artifacts;
use monarch_proto::Algo;
use monarch_proto::mac::Mac;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

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

    /// Why a new monarch could not take this secondary over after a failover, if it could
    /// not (the chassis then needs a single management processor).
    pub fn why_no_takeover(&self) -> Option<&'static str> {
        match self {
            Launch::Netboot(_) => Some("is booted over the network"),
            Launch::Qemu(_) => Some("is a VM (its agent's liveness cannot be probed from here)"),
            Launch::Process { memfd: true } => {
                Some("has a memfd window (only the monarch that made it can hand it over)")
            }
            Launch::Process { memfd: false } | Launch::External => None,
        }
    }

    /// The window is a memfd the monarch made (only it can hand it to an agent).
    pub fn memfd(&self) -> bool {
        matches!(self, Launch::Process { memfd: true })
    }
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

/// What resolving a processor's launch needs besides its definition.
pub(super) struct Given<'a> {
    /// `launch` as the file says it.
    pub(super) def: LaunchDef,
    /// The processor's table.
    pub(super) p: &'a ProcessorDef,
    /// Its faults.
    pub(super) fault: &'a FaultDef,
    /// `processor "ID"`, for problems.
    pub(super) who: &'a str,
    /// Its id.
    pub(super) id: &'a str,
    /// Where relative paths start.
    pub(super) base: &'a Path,
    /// The image's size, when known.
    pub(super) image_size: Option<u64>,
    /// Its handoff, resolved.
    pub(super) handoff: Handoff,
    /// `window.memfd`.
    pub(super) memfd: bool,
    /// Where VM artifacts are.
    pub(super) vm_art: &'a Artifacts,
    /// The machine.
    pub(super) env: &'a dyn Environment,
}

/// What the launches of the processors before this one use that must be unique.
#[derive(Default)]
pub(super) struct Seen {
    macs: HashMap<Mac, String>,
    disks: HashMap<PathBuf, String>,
}

/// Resolve a secondary's launch mode and its settings, pushing every problem on `cx`.
pub(super) fn resolve(cx: &mut Ctx<'_>, g: &Given<'_>, seen: &mut Seen) -> Launch {
    let (p, who) = (g.p, g.who);
    let vm = g.def == LaunchDef::Qemu;
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
        let need = (4 * g.image_size.unwrap_or(0) + (128 << 20)).next_multiple_of(64 << 20);
        if memory < need {
            cx.push(q.memory.as_ref().map(Spanned::span).or(Some(p.id.span())), format!("{who}.qemu.memory"), format!("{} is too little: the kexec handoff holds the image about four times over on top of stage 1; give the VM at least {}", fmt_size(memory), fmt_size(need)));
        }
        let accel = q.accel.unwrap_or_else(|| "tcg".into());
        if !["tcg", "kvm"].contains(&accel.as_str()) {
            cx.push(p.qemu.as_ref().map(Spanned::span), format!("{who}.qemu.accel"), format!("unknown accelerator \"{accel}\"; use \"tcg\" (software emulation) or \"kvm\""));
        }
        let kernel = q.kernel.map_or_else(|| g.vm_art.kernel.clone(), |k| g.base.join(k));
        let initrd = q.initrd.map_or_else(|| g.vm_art.initrd.clone(), |k| g.base.join(k));
        for (f, what) in [(&kernel, "kernel"), (&initrd, "initrd")] {
            if !g.env.is_file(f) {
                cx.push(p.qemu.as_ref().map(Spanned::span).or(Some(p.id.span())), format!("{who}.qemu.{what}"), format!("{} is missing; run `monarch vm prepare` (it builds the stage-1 kernel and initramfs) or set qemu.{what}", f.display()));
            }
        }
        QemuSpec { memory_mib: memory >> 20, accel, kernel, initrd }
    });
    let netboot = if g.def == LaunchDef::Netboot {
        let spec = netboot_spec(cx, g);
        if let Some(other) = seen.macs.insert(spec.mac, g.id.to_string()) {
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
            && let Some(other) = seen.disks.insert(d.clone(), g.id.to_string())
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
        for (set, name) in
            [(p.mac.is_some(), "mac"), (p.disk.is_some(), "disk"), (p.disk_size.is_some(), "disk_size")]
        {
            if set {
                cx.push(Some(p.id.span()), format!("{who}.{name}"), format!("{name} applies to a secondary booted over the network: set launch = \"netboot\" or remove {name}"));
            }
        }
        None
    };
    match (g.def, qemu, netboot) {
        (LaunchDef::Qemu, Some(q), _) => Launch::Qemu(q),
        (LaunchDef::Netboot, _, Some(n)) => Launch::Netboot(n),
        (LaunchDef::External, ..) => Launch::External,
        _ => Launch::Process { memfd: g.memfd },
    }
}

/// Validate a launch = "netboot" secondary: its own fields (`mac`, `disk`, `disk_size`), and
/// no field that only means something for a window.
fn netboot_spec(cx: &mut Ctx<'_>, n: &Given<'_>) -> NetbootSpec {
    let (who, p, f) = (n.who, n.p, n.fault);
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
    if f.kill_agent_during_copy || !f.corrupt_chunks.is_empty() || f.corrupt_attempts > 1 || f.tamper_image {
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
        (Some(d), None) if !n.env.exists(d) => cx.push(p.disk.as_ref().map(Spanned::span), format!("{who}.disk"), format!("{} does not exist; give disk_size (e.g. \"256MiB\") to have it created, or point disk at an existing block device or file", d.display())),
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
