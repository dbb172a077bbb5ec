//! A machine of clusters as a binary hardware description (`arch_info.bin`, see
//! `docs/arch-info.md`): what `monarch arch compile` writes and the boot reads.
//!
//! Cores are numbered globally (`gid`) cluster after cluster; memory banks are placed one
//! after another in one physical address space, each on a 1 MiB boundary. Hardware that
//! failed its self-test is described, marked failed: every boot info leaves it out.

use crate::topology::{Clusters, Topology, TopologyError, zone_field};
use monarch_proto::arch::{self, ArchError, ArchInfo, ArchView};
use std::fmt::Write as _;
use std::path::Path;

/// Banks start on this boundary.
const BANK_ALIGN: u64 = 1 << 20;

/// Why a topology cannot be described.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// It has no `[[cluster]]`.
    #[error(
        "topology \"{0}\" describes no clusters: arch_info.bin describes a machine of [[cluster]] tables (see examples/clusters.toml)"
    )]
    NoClusters(String),
    /// The description breaks a rule of the format.
    #[error("the description of topology \"{name}\" is not valid: {source}")]
    Invalid {
        /// The topology's name.
        name: String,
        /// The rule.
        #[source]
        source: ArchError,
    },
}

/// Why a binary description cannot be booted (`monarch up --arch`).
#[derive(Debug, thiserror::Error)]
pub enum BootFromError {
    /// It cannot be read.
    #[error("cannot read {path}: {source}; give the arch_info.bin that `monarch arch compile` wrote")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It breaks a rule of the format (the error names the descriptor).
    #[error("{path} is not a valid arch_info.bin: {source}; `monarch arch show {path}` tells more")]
    Invalid {
        /// The file.
        path: String,
        /// The rule.
        #[source]
        source: ArchError,
    },
    /// It is valid, but describes a machine monarch cannot boot as described.
    #[error("{path} describes a machine that cannot be booted:\n{source}")]
    Unbootable {
        /// The file.
        path: String,
        /// What the topology made of it says.
        #[source]
        source: TopologyError,
    },
}

/// The machine a binary description describes, ready to boot: its clusters, cores, banks
/// (what failed its self-test marked so) and zones, every core booting the built-in demo
/// kernel sized to the kernel zone, with the default barrier timeout and policy. The boot
/// uses the description's own bytes, not a recompilation.
pub fn booted_from(path: &Path) -> Result<Topology, BootFromError> {
    let bytes = std::fs::read(path).map_err(|source| BootFromError::Read { path: path.into(), source })?;
    let shown = path.display().to_string();
    let view =
        ArchView::parse(&bytes).map_err(|source| BootFromError::Invalid { path: shown.clone(), source })?;
    let mut t = Topology::parse(&topology_text(&view), path, Path::new("."))
        .map_err(|source| BootFromError::Unbootable { path: shown, source })?;
    if let Some(c) = t.clusters.as_mut() {
        c.arch = Some(bytes);
    }
    Ok(t)
}

/// A topology (TOML) with the description's machine.
fn topology_text(view: &ArchView<'_>) -> String {
    let mut s = String::new();
    let name = view.name().replace(['"', '\\'], "_");
    let _ = writeln!(s, "[chassis]\nname = \"{name}\"\n\n[clusters]");
    let kernel = view.zone(arch::ZoneKind::Kernel).map_or(0, |z| z.max());
    if kernel > 0 {
        let _ = writeln!(s, "image_size = {kernel}");
    }
    let zones: Vec<String> = view
        .zones()
        .iter()
        .filter_map(|z| {
            let kind = z.kind()?;
            Some(format!("{} = {{ base = {}, max = {} }}", zone_field(kind), z.base(), z.max()))
        })
        .collect();
    let _ = writeln!(s, "zones = {{ {} }}", zones.join(", "));
    for c in view.clusters() {
        let id = c.id();
        let cores: Vec<_> = view.cores_of(id).collect();
        let banks: Vec<_> = view.banks_of(id).collect();
        let failed_cores: Vec<String> =
            cores.iter().filter(|k| k.failed() || c.failed()).map(|k| k.lid().to_string()).collect();
        let failed_banks: Vec<String> =
            banks.iter().enumerate().filter(|(_, b)| b.failed()).map(|(i, _)| i.to_string()).collect();
        let sizes: Vec<String> = banks.iter().map(|b| b.size().to_string()).collect();
        let _ = writeln!(
            s,
            "\n[[cluster]]\nid = {id}\nx = {}\ny = {}\ncores = {}\nbanks = [{}]\nself_test = {{ failed_cores = [{}], failed_banks = [{}] }}",
            c.x,
            c.y,
            cores.len(),
            sizes.join(", "),
            failed_cores.join(", "),
            failed_banks.join(", ")
        );
    }
    s
}

/// The description of `t`'s clusters, checked, as the model and as bytes.
pub fn describe(t: &Topology) -> Result<(ArchInfo, Vec<u8>), DescribeError> {
    let c = t.clusters.as_ref().ok_or_else(|| DescribeError::NoClusters(t.name.clone()))?;
    let info = model(&t.name, c);
    let bytes = arch::wire::encode_checked(&info)
        .map_err(|source| DescribeError::Invalid { name: t.name.clone(), source })?;
    Ok((info, bytes))
}

/// The model of `c` (not checked).
pub fn model(name: &str, c: &Clusters) -> ArchInfo {
    let mut info = ArchInfo {
        name: name.to_string(),
        x_size: c.clusters.iter().map(|k| k.x).max().unwrap_or(0).saturating_add(1),
        y_size: c.clusters.iter().map(|k| k.y).max().unwrap_or(0).saturating_add(1),
        clusters: Vec::new(),
        cores: Vec::new(),
        banks: Vec::new(),
        devices: Vec::new(),
        zones: c.zones.iter().map(|z| arch::Zone { kind: z.kind, base: z.base, max: z.max }).collect(),
    };
    let mut gid = 0u32;
    let mut address = 0u64;
    for k in &c.clusters {
        info.clusters.push(arch::Cluster { id: k.id, x: k.x, y: k.y, failed: false });
        for core in &k.cores {
            info.cores.push(arch::Core { gid, cluster: k.id, lid: core.lid, failed: core.failed });
            gid = gid.saturating_add(1);
        }
        for b in &k.banks {
            info.banks.push(arch::Bank { cluster: k.id, base: address, size: b.size, failed: b.failed });
            address = address.saturating_add(b.size).div_ceil(BANK_ALIGN).saturating_mul(BANK_ALIGN);
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_machine_of_clusters_compiles_to_a_description_every_cluster_boots_from() {
        let src = "[chassis]\nname = \"m\"\n[clusters]\nimage_size = \"12MiB\"\n\
             [[cluster]]\nid = 0\ncores = 2\nbanks = [\"32MiB\"]\n\
             [[cluster]]\nid = 1\ncores = 3\nbanks = [\"32MiB\", \"32MiB\"]\nself_test = { failed_cores = [1], failed_banks = [0] }\n";
        let t = Topology::parse(src, Path::new("m.toml"), Path::new("/nonexistent")).unwrap();
        let (info, bytes) = describe(&t).unwrap();
        let view = arch::ArchView::parse(&bytes).unwrap();
        assert_eq!(view.to_owned(), info, "round trip");
        assert_eq!(info.cores.iter().map(|k| k.gid).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(info.banks[1].base, 32 << 20, "banks one after another");
        let b1 = arch::boot_info(&view, 1).unwrap();
        let lids: Vec<u16> = b1.cores.iter().map(|k| k.lid).collect();
        assert_eq!(lids, [0, 2], "core 1 failed its self-test");
        assert_eq!(b1.bank.base, 64 << 20, "its first bank failed: the second one");
        assert_eq!(b1.cluster_count, 2);
    }

    #[test]
    fn the_example_machine_is_four_clusters_of_four_cores() {
        let src = include_str!("../../../../examples/clusters.toml");
        let t = Topology::parse(src, Path::new("clusters.toml"), Path::new("/nonexistent")).unwrap();
        let (info, _) = describe(&t).unwrap();
        assert_eq!((info.clusters.len(), info.cores.len()), (4, 16));
        assert_eq!(t.secondaries.len(), 15, "every core but the monarch is booted");
    }

    #[test]
    fn a_compiled_description_boots_as_the_machine_it_describes() {
        let src = include_str!("../../../../examples/clusters.toml").replace(
            "[[cluster]]\nid = 2\ncores = 4",
            "[[cluster]]\nid = 2\ncores = 4\nself_test = { failed_cores = [3] }",
        );
        let t = Topology::parse(&src, Path::new("clusters.toml"), Path::new("/nonexistent")).unwrap();
        let (_, bytes) = describe(&t).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("arch_info.bin");
        std::fs::write(&file, &bytes).unwrap();
        let back = booted_from(&file).unwrap();
        let ids = |t: &Topology| t.secondaries.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&back), ids(&t), "the same cores boot");
        let c = back.clusters.as_ref().unwrap();
        assert_eq!(c.arch.as_deref(), Some(&bytes[..]), "booted from the file's own bytes");
        assert_eq!(describe(&back).unwrap().1, bytes, "and it compiles back to them");
        std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
        let e = booted_from(&file).unwrap_err().to_string();
        assert!(e.contains("is not a valid arch_info.bin"), "{e}");
    }

    #[test]
    fn a_topology_without_clusters_is_named() {
        let t = Topology::builtin().unwrap();
        let e = describe(&t).unwrap_err().to_string();
        assert!(e.contains("describes no clusters"), "{e}");
    }
}
