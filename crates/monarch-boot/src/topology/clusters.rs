//! A machine of many clusters (`[clusters]` and `[[cluster]]`): its cores become the
//! topology's processors (`c<cluster>-<core>`; `c0-0` is the monarch), and its memory banks
//! are divided into zones, checked here: inside every bank, no overlap, each content within
//! its zone's maximum.

use super::error::Ctx;
use super::model::{
    BankSpec, BarrierPolicy, ClusterSpec, Clusters, CoreSpec, ZoneKind, ZoneSpec, zone_field,
};
use super::schema::{ClusterDef, ClustersDef, FileDef, ProcessorDef, SizeDef, ZoneDef};
use crate::values::fmt_size;
use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

/// A zone's bases are aligned to this (a page).
const ZONE_ALIGN: u64 = 4096;

/// Default maximum sizes: the boot code, the description's copy, the boot info; the kernel
/// zone defaults to the image's size, the stacks to [`STACK`] per core.
const BOOT_CODE: u64 = 1 << 20;
const ARCH_INFO: u64 = 64 << 10;
const BOOT_INFO: u64 = 4 << 10;
/// One core's boot stack.
pub const STACK: u64 = 64 << 10;

/// Default bank size.
const BANK: u64 = 64 << 20;

/// Default image of every core.
const IMAGE: &str = "builtin:payload";

/// How long a barrier waits by default.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(10);

/// The processor id of core `lid` of cluster `cluster`.
pub fn core_id(cluster: u16, lid: u16) -> String {
    format!("c{cluster}-{lid}")
}

/// Turn `[[cluster]]` tables into processors, before they are resolved: core 0 of cluster 0
/// is the monarch, every other core that passes its self-test a secondary booting the
/// `[clusters]` image. Returns the clusters without their zones (see [`zones`]).
pub(super) fn expand(
    cx: &mut Ctx<'_>,
    file: &mut FileDef,
) -> Option<(Vec<ClusterSpec>, BarrierPolicy, Duration)> {
    if file.cluster.is_empty() {
        if let Some(c) = &file.clusters
            && let Some(i) = &c.image
        {
            cx.push(Some(i.span()), "clusters", "[clusters] describes what every [[cluster]] shares, and there is no [[cluster]]: add them, or remove [clusters]");
        }
        return None;
    }
    if let Some(p) = file.processors.first() {
        cx.push(
            Some(p.id.span()),
            format!("processor \"{}\"", p.id.get_ref()),
            "a machine of clusters takes its processors from its [[cluster]] tables (core 0 of cluster 0 is the monarch, the other cores are booted): remove the [[processor]] tables",
        );
        return None;
    }
    let shared = file.clusters.take().unwrap_or_default();
    let mut specs = Vec::new();
    let mut seen: BTreeMap<u16, ()> = BTreeMap::new();
    for c in &file.cluster {
        let id = *c.id.get_ref();
        let who = format!("cluster {id}");
        if seen.insert(id, ()).is_some() {
            cx.push(
                Some(c.id.span()),
                format!("{who}.id"),
                "two clusters have this id; give every [[cluster]] its own",
            );
            continue;
        }
        if let Some(spec) = cluster(cx, c, &who) {
            specs.push((c.id.span(), spec));
        }
    }
    specs.sort_by_key(|(_, s)| s.id);
    for (k, (span, s)) in specs.iter().enumerate() {
        if usize::from(s.id) != k {
            cx.push(
                Some(span.clone()),
                format!("cluster {}.id", s.id),
                format!("cluster ids run from 0 without gaps; there is no cluster {k}: renumber the clusters 0..{}", specs.len() - 1),
            );
            break;
        }
    }
    if let Some((span, c0)) = specs.first()
        && c0.id == 0
        && c0.cores.first().is_some_and(|c| c.failed)
    {
        cx.push(Some(span.clone()), "cluster 0.self_test", "core 0 of cluster 0 is the monarch, which runs the boot: it cannot be one that failed its self-test");
    }
    let policy = cx.choice(
        shared.barrier_policy.as_ref(),
        "clusters.barrier_policy",
        "barrier_policy",
        &[
            ("exclude", BarrierPolicy::Exclude, "a core that misses a barrier is left out, the others go on"),
            ("abort", BarrierPolicy::Abort, "a missed barrier fails the boot"),
        ],
        BarrierPolicy::default(),
    );
    let timeout = cx.duration(&shared.barrier_timeout, "clusters.barrier_timeout", BARRIER_TIMEOUT);
    // The processors: every core that passes its self-test.
    let image = shared.image.clone();
    for (span, c) in &specs {
        for core in &c.cores {
            let role = if c.id == 0 && core.lid == 0 { "monarch" } else { "secondary" };
            // A failed monarch core is an error reported above; the others are not booted.
            if core.failed && role == "secondary" {
                continue;
            }
            let mut def: ProcessorDef = match toml::from_str(&format!(
                "id = \"{}\"\nrole = \"{role}\"\nbanner = \"kernel up\"\n",
                core.processor
            )) {
                Ok(d) => d,
                Err(e) => {
                    cx.push(Some(span.clone()), format!("cluster {}", c.id), format!("internal: {e}"));
                    continue;
                }
            };
            def.id = Spanned::new(span.clone(), core.processor.clone());
            if role == "secondary" {
                def.image =
                    Some(image.clone().unwrap_or_else(|| Spanned::new(span.clone(), IMAGE.to_string())));
                def.image_size = shared.image_size.as_ref().map(|s| {
                    Spanned::new(
                        s.span(),
                        match s.get_ref() {
                            SizeDef::Bytes(b) => SizeDef::Bytes(*b),
                            SizeDef::Text(t) => SizeDef::Text(t.clone()),
                        },
                    )
                });
            }
            file.processors.push(def);
        }
    }
    file.clusters = Some(shared);
    Some((specs.into_iter().map(|(_, s)| s).collect(), policy, timeout))
}

fn cluster(cx: &mut Ctx<'_>, c: &ClusterDef, who: &str) -> Option<ClusterSpec> {
    let id = *c.id.get_ref();
    let n = *c.cores.get_ref();
    if n == 0 {
        cx.push(
            Some(c.cores.span()),
            format!("{who}.cores"),
            "a cluster needs at least one core (core 0 is its head)",
        );
        return None;
    }
    let mut banks = Vec::new();
    match &c.banks {
        None => banks.push(BankSpec { size: BANK, failed: false }),
        Some(list) if list.get_ref().is_empty() => {
            cx.push(
                Some(list.span()),
                format!("{who}.banks"),
                "a cluster needs at least one memory bank: give its size, banks = [\"64MiB\"]",
            );
            return None;
        }
        Some(list) => {
            for b in list.get_ref() {
                let size = cx.size(&Spanned::new(list.span(), clone_size(b)), &format!("{who}.banks"))?;
                banks.push(BankSpec { size, failed: false });
            }
        }
    }
    let mut cores: Vec<CoreSpec> =
        (0..n).map(|lid| CoreSpec { lid, processor: core_id(id, lid), failed: false }).collect();
    if let Some(t) = &c.self_test {
        for &k in &t.get_ref().failed_cores {
            match cores.get_mut(usize::from(k)) {
                Some(core) => core.failed = true,
                None => cx.push(
                    Some(t.span()),
                    format!("{who}.self_test.failed_cores"),
                    format!("there is no core {k}: the cluster's cores are 0..{}", n - 1),
                ),
            }
        }
        for &k in &t.get_ref().failed_banks {
            let count = banks.len();
            match banks.get_mut(usize::from(k)) {
                Some(b) => b.failed = true,
                None => cx.push(
                    Some(t.span()),
                    format!("{who}.self_test.failed_banks"),
                    format!("there is no bank {k}: the cluster has {count} bank(s), 0..{}", count - 1),
                ),
            }
        }
    }
    let mut killed_before_barrier = Vec::new();
    if let Some(f) = &c.fault {
        for &k in &f.get_ref().killed_before_barrier {
            let field = format!("{who}.fault.killed_before_barrier");
            match cores.get(usize::from(k)) {
                None => cx.push(
                    Some(f.span()),
                    field,
                    format!("there is no core {k}: the cluster's cores are 0..{}", n - 1),
                ),
                Some(_) if id == 0 && k == 0 => cx.push(
                    Some(f.span()),
                    field,
                    "core 0 of cluster 0 is the monarch, which owns the barriers: kill another core",
                ),
                Some(core) if core.failed => cx.push(
                    Some(f.span()),
                    field,
                    format!("core {k} failed its self-test, so it is never started: kill another core"),
                ),
                Some(_) => killed_before_barrier.push(k),
            }
        }
    }
    let net = super::netcluster::resolve(cx, who, id, n, c.launch.as_ref(), c.network.as_ref());
    let x = c.x.unwrap_or(u8::try_from(id).unwrap_or(u8::MAX));
    Some(ClusterSpec { id, x, y: c.y.unwrap_or(0), cores, banks, net, killed_before_barrier })
}

fn clone_size(s: &SizeDef) -> SizeDef {
    match s {
        SizeDef::Bytes(b) => SizeDef::Bytes(*b),
        SizeDef::Text(t) => SizeDef::Text(t.clone()),
    }
}

fn align(v: u64) -> u64 {
    v.div_ceil(ZONE_ALIGN).saturating_mul(ZONE_ALIGN)
}

/// The zone map, checked against every cluster's first tested bank and the contents:
/// the kernel image (`image_size`) and one stack per core.
pub(super) fn zones(
    cx: &mut Ctx<'_>,
    shared: Option<&ClustersDef>,
    clusters: Vec<ClusterSpec>,
    policy: BarrierPolicy,
    barrier_timeout: Duration,
    image_size: u64,
) -> Clusters {
    let defs = shared.and_then(|s| s.zones.as_ref());
    let most_cores = clusters.iter().map(|c| c.cores.len() as u64).max().unwrap_or(1);
    let mut zones: Vec<(ZoneSpec, Option<std::ops::Range<usize>>)> = Vec::new();
    let mut next = 0u64;
    for kind in ZoneKind::ALL {
        let def = defs.and_then(|d| match kind {
            ZoneKind::BootCode => d.boot_code.as_ref(),
            ZoneKind::ArchInfo => d.arch_info.as_ref(),
            ZoneKind::Kernel => d.kernel.as_ref(),
            ZoneKind::BootInfo => d.boot_info.as_ref(),
            ZoneKind::Stacks => d.stacks.as_ref(),
        });
        let field = format!("clusters.zones.{}", zone_field(kind));
        let default = match kind {
            ZoneKind::BootCode => BOOT_CODE,
            ZoneKind::ArchInfo => ARCH_INFO,
            ZoneKind::Kernel => align(image_size),
            ZoneKind::BootInfo => BOOT_INFO,
            ZoneKind::Stacks => STACK.saturating_mul(most_cores),
        };
        let (base, max) = match def.map(|d| (d.span(), d.get_ref())) {
            None => (next, default),
            Some((span, ZoneDef::Max(m))) => {
                (next, cx.size(&Spanned::new(span, clone_size(m)), &field).unwrap_or(default))
            }
            Some((span, ZoneDef::At { base, max })) => (
                cx.size(&Spanned::new(span.clone(), clone_size(base)), &field).unwrap_or(next),
                cx.size(&Spanned::new(span, clone_size(max)), &field).unwrap_or(default),
            ),
        };
        let span = def.map(Spanned::span);
        if base % ZONE_ALIGN != 0 {
            cx.push(
                span.clone(),
                field.clone(),
                format!(
                    "zone {} starts at {base:#x}, not on a 4 KiB boundary: align its base",
                    zone_field(kind)
                ),
            );
        }
        let zone = ZoneSpec { kind, base, max };
        next = align(zone.end());
        zones.push((zone, span));
    }
    // No two zones overlap.
    for (i, (a, span)) in zones.iter().enumerate() {
        for (b, _) in &zones[..i] {
            if a.base < b.end() && b.base < a.end() {
                cx.push(
                    span.clone(),
                    format!("clusters.zones.{}", zone_field(a.kind)),
                    format!(
                        "zone {} ({:#x}..{:#x}) overlaps zone {} ({:#x}..{:#x}): move its base past {:#x}",
                        zone_field(a.kind),
                        a.base,
                        a.end(),
                        zone_field(b.kind),
                        b.base,
                        b.end(),
                        b.end()
                    ),
                );
            }
        }
    }
    // Each content within its zone's maximum.
    let content = |k: ZoneKind| match k {
        ZoneKind::Kernel => Some(("the kernel image", image_size)),
        ZoneKind::Stacks => Some(("one boot stack per core", STACK.saturating_mul(most_cores))),
        _ => None,
    };
    for (z, span) in &zones {
        if let Some((what, need)) = content(z.kind)
            && need > z.max
        {
            cx.push(
                span.clone(),
                format!("clusters.zones.{}", zone_field(z.kind)),
                format!(
                    "{what} takes {} and zone {} holds at most {}: raise [clusters] zones.{} to {} or more",
                    fmt_size(need),
                    zone_field(z.kind),
                    fmt_size(z.max),
                    zone_field(z.kind),
                    fmt_size(need)
                ),
            );
        }
    }
    // Every zone inside every cluster's memory.
    let end = zones.iter().map(|(z, _)| z.end()).max().unwrap_or(0);
    for c in &clusters {
        let Some(bank) = c.banks.iter().find(|b| !b.failed) else {
            continue;
        };
        if let Some((z, _)) = zones.iter().find(|(z, _)| z.end() > bank.size) {
            cx.push(
                None,
                format!("cluster {}.banks", c.id),
                format!(
                    "zone {} ({:#x}..{:#x}) does not fit the cluster's memory bank ({}); the zones need {}: give the bank more memory or the zones less",
                    zone_field(z.kind), z.base, z.end(), fmt_size(bank.size), fmt_size(end)
                ),
            );
        }
    }
    Clusters {
        clusters,
        zones: zones.into_iter().map(|(z, _)| z).collect(),
        barrier_timeout,
        barrier_policy: policy,
        image_size,
        arch: None,
    }
}
