//! Which hardware each cluster boots with: from a checked description, the boot info of one
//! cluster, with only the parts that passed their self-test, and the list of what was left
//! out. A cluster boots only if it passed its own self-test and has a tested core and a
//! tested bank; every boot info lists the clusters that do not.

use super::boot_info::{BOOT_INFO_MAJOR, BootCore, BootDevice, BootInfo, Excluded, Part, Span};
use super::error::{ArchError, ClusterIds, Why};
use super::wire::{ArchView, ClusterDesc};

/// Why a cluster is left out of the boot, or `None` if it boots.
pub fn exclusion(arch: &ArchView<'_>, cluster: &ClusterDesc) -> Option<Why> {
    let id = cluster.id();
    if cluster.failed() {
        Some(Why::SelfTest)
    } else if arch.cores_of(id).all(|c| c.failed()) {
        Some(Why::NoTestedCore)
    } else if arch.banks_of(id).all(|b| b.failed()) {
        Some(Why::NoTestedBank)
    } else {
        None
    }
}

/// The clusters that boot, in file order.
pub fn booting_clusters(arch: &ArchView<'_>) -> Vec<u16> {
    arch.clusters().iter().filter(|c| exclusion(arch, c).is_none()).map(ClusterDesc::id).collect()
}

/// The boot info of `cluster`: its tested cores (by lid, keeping their hardware lids), the
/// memory past the zones in its first tested bank, its tested devices, and what was left
/// out (every cluster that does not boot, this cluster's failed cores, banks and devices).
/// An error if the cluster does not exist, is left out itself (the error says why), or has
/// more parts than a boot info holds.
pub fn boot_info(arch: &ArchView<'_>, cluster: u16) -> Result<BootInfo, ArchError> {
    let Some(c) = arch.cluster(cluster) else {
        return Err(ArchError::NoSuchCluster {
            cluster,
            known: ClusterIds(arch.clusters().iter().map(ClusterDesc::id).collect()),
        });
    };
    if let Some(why) = exclusion(arch, c) {
        return Err(ArchError::Excluded { cluster, why });
    }
    let mut excluded = Vec::new();
    for other in arch.clusters() {
        if let Some(why) = exclusion(arch, other) {
            excluded.push(Excluded { what: Part::Cluster, cluster: other.id(), id: other.id().into(), why });
        }
    }
    let mut cores = Vec::new();
    for core in arch.cores_of(cluster) {
        if core.failed() {
            excluded.push(Excluded { what: Part::Core, cluster, id: core.gid(), why: Why::SelfTest });
        } else {
            cores.push(BootCore { lid: core.lid(), gid: core.gid() });
        }
    }
    cores.sort_by_key(|c| c.lid);
    let index = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    let mut bank = None;
    for (i, b) in arch.banks().iter().enumerate().filter(|(_, b)| b.cluster() == cluster) {
        if b.failed() {
            excluded.push(Excluded { what: Part::Bank, cluster, id: index(i), why: Why::SelfTest });
        } else if bank.is_none() {
            bank = Some(Span { base: b.base(), size: b.size() });
        }
    }
    let mut devices = Vec::new();
    for (i, d) in arch.devices().iter().enumerate().filter(|(_, d)| d.cluster() == cluster) {
        if d.failed() {
            excluded.push(Excluded { what: Part::Device, cluster, id: index(i), why: Why::SelfTest });
        } else {
            devices.push(BootDevice {
                kind: d.kind(),
                channels: d.channels(),
                base: d.base(),
                size: d.size(),
            });
        }
    }
    // A cluster that boots has a tested bank, and a checked description's tested banks hold
    // the zones.
    let bank = bank.ok_or(ArchError::Excluded { cluster, why: Why::NoTestedBank })?;
    let skip = arch.zones_end().min(bank.size);
    let memory = Span { base: bank.base + skip, size: bank.size - skip };
    let cluster_count = booting_clusters(arch).len();
    let info = BootInfo {
        version: BOOT_INFO_MAJOR,
        cluster,
        x: c.x,
        y: c.y,
        x_size: arch.x_size(),
        y_size: arch.y_size(),
        cluster_count: u16::try_from(cluster_count).unwrap_or(u16::MAX),
        cores,
        bank,
        memory,
        devices,
        excluded,
        arch_crc: arch.header().crc.get(),
    };
    info.encode()?;
    Ok(info)
}
