//! One core's side of the phased boot (`monarch core`): a head (core 0 of a cluster other
//! than 0) copies the boot code, the description and the kernel from cluster 0's bank into its
//! own, checks what it copied against the handoff record, seals a copy of the kernel in memory
//! for its cluster, builds its cluster's boot info and meets the other heads at the `heads`
//! barrier; then it starts its cluster's other cores, which check that sealed kernel and their
//! boot info entry and meet at their cluster's barrier and at the `final` one, after which
//! every core jumps into its cluster's kernel. The monarch's own core (`--monarch-core`) is
//! one of cluster 0's cores; the monarch heads cluster 0.
//!
//! Events go to standard output as JSON lines (`monarch up --json`'s format), one write each,
//! so the cores of a cluster can share the head's pipe to the monarch.

use super::bank::{self, Bank, Record};
use crate::cmdline::CoreArgs;
use crate::events::{Event, EventKind};
use monarch_drivers::barrier::{Barrier, BarrierFile};
use monarch_drivers::doorbell::Doorbell;
use monarch_drivers::memimage::SealedImage;
use monarch_proto::arch::{self, ArchView, ZoneKind};
use monarch_proto::barrier::{Header, Outcome, Policy, reason};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every barrier is used once.
pub const GENERATION: u32 = 1;

/// How long a participant waits past a barrier's deadline for its owner's decision.
const OWNER_GRACE: Duration = Duration::from_secs(5);

/// A barrier's file in the run folder: `heads`, `c<N>` (a cluster's), `final`.
pub fn barrier_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("barrier-{name}"))
}

/// The header of a barrier its owner creates now: `participants`, `policy`, the deadline
/// `timeout` from now.
pub fn header(participants: usize, policy: Policy, timeout: Duration) -> Header {
    Header {
        participants: u16::try_from(participants).unwrap_or(u16::MAX),
        generation: GENERATION,
        policy,
        deadline_ns: deadline_ns(timeout),
    }
}

/// A barrier's outcome for a person, its participants named by `name`.
pub fn outcome_text(o: &Outcome, name: &dyn Fn(u16) -> String) -> String {
    let names = |ks: &[u16]| ks.iter().map(|k| name(*k)).collect::<Vec<_>>().join(", ");
    match o {
        Outcome::Released { excluded } if excluded.is_empty() => "released".into(),
        Outcome::Released { excluded } => format!("released without {}", names(excluded)),
        Outcome::Excluded => "left out: it arrived after the deadline".into(),
        Outcome::Aborted { reason: reason::TIMEOUT, missing } => {
            format!("aborted: {} missed its deadline (barrier_policy = \"abort\")", names(missing))
        }
        Outcome::Aborted { reason: reason::OWNER_SILENT, .. } => "aborted: its owner never decided".into(),
        Outcome::Aborted { reason: reason::STOPPED, .. } => "aborted: the boot was stopped".into(),
        Outcome::Aborted { reason: reason::EARLIER_ABORTED, .. } => {
            "aborted: a cluster's barrier aborted before it".into()
        }
        Outcome::Aborted { reason, .. } => format!("aborted (reason {reason})"),
        Outcome::Waiting { .. } | Outcome::TimedOut { .. } => "not decided in time by its owner".into(),
    }
}

/// The final barrier's file and this core's place among its participants.
fn final_barrier(a: &CoreArgs, view: &ArchView<'_>) -> Result<(BarrierFile, u16), String> {
    let me = final_participants(view)
        .iter()
        .position(|(c, l, _)| *c == a.cluster && *l == a.lid)
        .ok_or("not among the final barrier's cores")?;
    let f =
        BarrierFile::open(&barrier_path(&a.run_dir, "final")).map_err(|e| format!("final barrier: {e}"))?;
    Ok((f, u16::try_from(me).unwrap_or(u16::MAX)))
}

/// Fault injection: a core named in `--killed-before-barrier` dies here, as a core that
/// stops dead would (SIGKILL: no last word, no clean-up).
fn maybe_killed(a: &CoreArgs) {
    if a.killed_before_barrier.contains(&a.lid) {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// A zone of the description: (offset, maximum).
pub(crate) fn zone(view: &ArchView<'_>, kind: ZoneKind) -> Result<bank::Span, String> {
    view.zone(kind)
        .map(|z| (z.base(), z.max()))
        .ok_or_else(|| format!("the description has no {} zone", kind.name()))
}

/// Who meets at the `final` barrier, in order: every tested core of every booting cluster,
/// as (cluster, lid, gid).
pub fn final_participants(view: &ArchView<'_>) -> Vec<(u16, u16, u32)> {
    let mut out = Vec::new();
    for c in arch::select::booting_clusters(view) {
        if let Ok(info) = arch::boot_info(view, c) {
            out.extend(info.cores.iter().map(|k| (c, k.lid, k.gid)));
        }
    }
    out
}

/// Events on standard output, timed from the boot's start.
pub struct Emitter {
    clock: Instant,
}

impl Emitter {
    /// Timed from `t0_unix_ns`.
    pub fn new(t0_unix_ns: u128) -> Emitter {
        Emitter { clock: crate::election::instant_at(t0_unix_ns) }
    }

    /// One event, one line, one write.
    pub fn emit(&self, kind: EventKind) {
        let ev = Event { t_ms: self.clock.elapsed().as_secs_f64() * 1e3, kind };
        if let Ok(mut line) = serde_json::to_string(&ev) {
            line.push('\n');
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
    }
}

/// The deadline of a barrier, `timeout` from now, as `CLOCK_MONOTONIC` nanoseconds.
pub fn deadline_ns(timeout: Duration) -> u64 {
    monarch_drivers::barrier::monotonic_ns()
        .saturating_add(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX))
}

/// Wait as a participant (not the owner) until the owner decides.
fn wait_decided(b: &Barrier<'_>) -> Outcome {
    let until = b.header().deadline_ns.saturating_add(u64::try_from(OWNER_GRACE.as_nanos()).unwrap_or(0));
    b.wait(until)
}

/// Run core `a.lid` of cluster `a.cluster`; returns only when it failed (a core that gets
/// through every barrier becomes its kernel).
pub fn run(a: &CoreArgs, exe: &Path) -> String {
    let out = Emitter::new(a.t0_unix_ns);
    let id = crate::topology::core_id(a.cluster, a.lid);
    let why = match steps(a, exe, &out, &id) {
        Ok(never) => match never {},
        Err(why) => why,
    };
    out.emit(EventKind::Done {
        id: id.clone(),
        state: "failed".into(),
        attempts: 1,
        bytes: 0,
        ms: 0.0,
        report: None,
        error: Some(why.clone()),
    });
    why
}

enum Never {}

fn steps(a: &CoreArgs, exe: &Path, out: &Emitter, id: &str) -> Result<Never, String> {
    let phase = |p: &str| out.emit(EventKind::Phase { id: id.to_string(), phase: p.into(), attempt: 0 });
    let mut mine = Bank::open(&bank::path(&a.run_dir, a.cluster)).map_err(|e| format!("its bank: {e}"))?;
    // The monarch's own core is core 0 of cluster 0 but no head: the monarch heads cluster 0.
    let head = a.lid == 0 && !a.monarch_core;
    // The cluster's kernel sealed in memory, which its head makes and its cores run.
    let mut made = None;
    if head && a.cluster != 0 {
        // Phase 2: copy from cluster 0, check, build this cluster's boot info.
        phase("copying");
        let zero = Bank::open(&bank::path(&a.run_dir, 0)).map_err(|e| format!("cluster 0's bank: {e}"))?;

        let arch_zone = (a.arch_base, a.arch_max);
        let record_bytes = zero.read((0, bank::RECORD as u64), bank::RECORD as u64)?.to_vec();
        let record = Record::decode(&record_bytes)?;
        let arch_bytes = zero.read(arch_zone, u64::from(record.arch_len))?.to_vec();
        let view = ArchView::parse(&arch_bytes).map_err(|e| format!("cluster 0's description: {e}"))?;
        let kernel_zone = zone(&view, ZoneKind::Kernel)?;
        let boot_code = zone(&view, ZoneKind::BootCode)?;
        let started = Instant::now();
        let kernel = zero.read(kernel_zone, record.kernel_len)?;
        mine.write(kernel_zone, kernel)?;
        mine.write(arch_zone, &arch_bytes)?;
        mine.write(boot_code, &record_bytes)?;
        out.emit(EventKind::Copied {
            id: id.to_string(),
            attempt: 1,
            bytes: record.kernel_len + arch_bytes.len() as u64,
            ms: started.elapsed().as_secs_f64() * 1e3,
        });
        phase("verifying");
        let copied = mine.read(kernel_zone, record.kernel_len)?;
        let copied_arch = mine.read(arch_zone, u64::from(record.arch_len))?;
        record.check(copied, copied_arch)?;
        let sealed = seal(&format!("kernel-c{}", a.cluster), copied)?;
        record.check(sealed.bytes(), copied_arch)?;
        made = Some(sealed);
        let info = arch::boot_info(&view, a.cluster).map_err(|e| e.to_string())?;
        let bytes = info.encode().map_err(|e| e.to_string())?;
        mine.write(zone(&view, ZoneKind::BootInfo)?, &bytes)?;
        phase("boot-info");
        // The heads barrier.
        let clusters = arch::select::booting_clusters(&view);
        let me = clusters.iter().position(|c| *c == a.cluster).ok_or("this cluster does not boot")?;
        let f = BarrierFile::open(&barrier_path(&a.run_dir, "heads"))
            .map_err(|e| format!("heads barrier: {e}"))?;
        let b =
            Barrier::attach(f.block(), GENERATION, u16::try_from(me).unwrap_or(u16::MAX), Doorbell::detect())
                .map_err(|e| format!("heads barrier: {e}"))?;
        maybe_killed(a);
        phase("heads-barrier");
        b.arrive();
        match wait_decided(&b) {
            Outcome::Released { .. } => {}
            other => {
                let name =
                    |k: u16| crate::topology::core_id(clusters.get(usize::from(k)).copied().unwrap_or(k), 0);
                return Err(format!("the heads barrier: {}", outcome_text(&other, &name)));
            }
        }
    }
    // Every core: the kernel and this cluster's boot info, as its head left them.
    let record = Record::decode(mine.read((0, bank::RECORD as u64), bank::RECORD as u64)?)?;
    let arch_bytes = mine.read((a.arch_base, a.arch_max), u64::from(record.arch_len))?;
    let view = ArchView::parse(arch_bytes).map_err(|e| format!("its cluster's description: {e}"))?;
    let kernel_zone = zone(&view, ZoneKind::Kernel)?;
    let boot_info_zone = zone(&view, ZoneKind::BootInfo)?;
    // A core of a cluster booted over the network fetches its kernel from its head.
    let fetched =
        if a.lid == 0 { None } else { super::serve::fetch(a, &record, arch_bytes, &|k| out.emit(k), id)? };
    // The kernel it will run: its cluster's, sealed in memory (made by its head, or by the
    // monarch for cluster 0) and shared by the cluster's cores; or the one it fetched. It is
    // opened here, before this core arrives at any barrier: its holder keeps it at least
    // until every core it waits for has arrived at the final barrier.
    let sealed = match (made, &a.kernel) {
        (Some(s), _) => Some(s),
        (None, Some(path)) if fetched.is_none() => Some(
            SealedImage::open(path).map_err(|e| format!("its cluster's kernel {}: {e}", path.display()))?,
        ),
        _ => None,
    };
    // A head checked the kernel as it copied it; every other core checks what it will run.
    if !head && fetched.is_none() {
        phase("verifying");
        let kernel = match &sealed {
            Some(s) => s.bytes(),
            None => mine.read(kernel_zone, record.kernel_len)?,
        };
        record.check(kernel, arch_bytes)?;
    }
    let info_bytes = mine.read(boot_info_zone, arch::BOOT_INFO_SIZE as u64)?;
    let info = arch::BootInfoView::parse(info_bytes).map_err(|e| format!("its boot info: {e}"))?;
    let gid = view
        .cores_of(a.cluster)
        .find(|k| k.lid() == a.lid)
        .map(|k| k.gid())
        .ok_or_else(|| format!("core {} is not in cluster {}'s description", a.lid, a.cluster))?;
    let index = info
        .core_index(gid)
        .ok_or_else(|| format!("core gid {gid} has no entry in its cluster's boot info"))?;
    let shared = sealed.as_ref().map(SealedImage::path);
    meet(a, exe, out, (&view, &info, index), mine.read(kernel_zone, record.kernel_len)?, shared)?;
    // Jump: into its cluster's sealed kernel (or the one it fetched), told where its boot
    // info is.
    phase("handoff");
    let image = match (sealed, &fetched) {
        (Some(s), _) => s,
        (None, Some(k)) => seal(id, k)?,
        (None, None) => seal(id, mine.read(kernel_zone, record.kernel_len)?)?,
    };
    let env = vec![
        ("MONARCH_BOOT_INFO".to_string(), format!("{}@{}", mine.path().display(), boot_info_zone.0)),
        ("MONARCH_CORE_GID".to_string(), gid.to_string()),
        ("MONARCH_ID".to_string(), id.to_string()),
        ("MONARCH_T0_UNIX_NS".to_string(), a.t0_unix_ns.to_string()),
    ];
    Err(format!("cannot jump into its kernel: {}", image.exec(id, &[], &env)))
}

/// This core's cluster barrier (a head owns it, and starts its cluster's other cores first:
/// served over the network when the cluster boots so), then the `final` one the monarch owns.
/// Returns once both released this core.
fn meet(
    a: &CoreArgs,
    exe: &Path,
    out: &Emitter,
    (view, info, index): (&ArchView<'_>, &arch::BootInfoView<'_>, usize),
    kernel: &[u8],
    shared: Option<PathBuf>,
) -> Result<(), String> {
    let head = a.lid == 0 && !a.monarch_core;
    let id = crate::topology::core_id(a.cluster, a.lid);
    let phase = |p: &str| out.emit(EventKind::Phase { id: id.clone(), phase: p.into(), attempt: 0 });
    // This cluster's barrier: its head owns it and starts the others.
    let local = barrier_path(&a.run_dir, &format!("c{}", a.cluster));
    let participants = u16::try_from(info.core_count()).unwrap_or(u16::MAX);
    let local_file = if head {
        BarrierFile::create(&local).map_err(|e| format!("cluster barrier: {e}"))?
    } else {
        BarrierFile::open(&local).map_err(|e| format!("cluster barrier: {e}"))?
    };
    let me = u16::try_from(index).unwrap_or(u16::MAX);
    let mut serving = None;
    let lb = if head {
        let header = header(usize::from(participants), a.barrier_policy, a.barrier_timeout);
        let b = Barrier::create(local_file.block(), header, Some(me), Doorbell::detect());
        // Phase 3: release the cluster's other cores (served over the network, when it boots so).
        let served = Emitter::new(a.t0_unix_ns);
        serving = super::serve::start(a, kernel, move |k| served.emit(k))?;
        for k in view.cores_of(a.cluster).filter(|k| k.lid() != 0 && info.core_index(k.gid()).is_some()) {
            // A core booted over the network fetches its kernel instead.
            let kernel = if a.netboot.is_none() { shared.clone() } else { None };
            let args = CoreArgs { lid: k.lid(), monarch_core: false, kernel, ..a.clone() };
            super::serve::command(exe, &args)?
                .stdin(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start core {}: {e}", k.lid()))?;
        }
        b
    } else {
        Barrier::attach(local_file.block(), GENERATION, me, Doorbell::detect())
            .map_err(|e| format!("cluster barrier: {e}"))?
    };
    if !head {
        maybe_killed(a);
    }
    phase("cluster-barrier");
    let outcome = if head {
        lb.own(lb.header().deadline_ns)
    } else {
        lb.arrive();
        wait_decided(&lb)
    };
    let name = |k: u16| {
        let lid = info.cores().get(usize::from(k)).map_or(k, |c| c.lid.get());
        crate::topology::core_id(a.cluster, lid)
    };
    if head
        && barrier_event(&|k| out.emit(k), &format!("cluster {}", a.cluster), &lb, &outcome, &name).is_err()
    {
        // Nobody of this cluster can meet the final barrier now: stop it for all, rather
        // than let the monarch wait out its deadline.
        if let Ok((f, me)) = final_barrier(a, view)
            && let Ok(fb) = Barrier::attach(f.block(), GENERATION, me, Doorbell::detect())
        {
            fb.abort(reason::EARLIER_ABORTED);
        }
    }
    if !matches!(outcome, Outcome::Released { .. }) {
        return Err(format!("cluster {}'s barrier: {}", a.cluster, outcome_text(&outcome, &name)));
    }
    drop(serving);
    // The final barrier (the monarch owns it).
    let (f, me) = final_barrier(a, view)?;
    let fb = Barrier::attach(f.block(), GENERATION, me, Doorbell::detect())
        .map_err(|e| format!("final barrier: {e}"))?;
    phase("final-barrier");
    fb.arrive();
    match wait_decided(&fb) {
        Outcome::Released { .. } => {}
        other => {
            let all = final_participants(view);
            let name = |k: u16| {
                all.get(usize::from(k))
                    .map_or_else(|| k.to_string(), |(c, l, _)| crate::topology::core_id(*c, *l))
            };
            return Err(format!("the final barrier: {}", outcome_text(&other, &name)));
        }
    }
    Ok(())
}

/// `kernel` in a memfd of its own named `name`, sealed: what is checked in it is what runs.
pub(crate) fn seal(name: &str, kernel: &[u8]) -> Result<SealedImage, String> {
    SealedImage::of(name, kernel).map_err(|e| format!("cannot hold the kernel in memory ({name}): {e}"))
}

/// The event of a barrier decided by its owner; an error that says why, unless it released.
pub(crate) fn barrier_event(
    emit: &dyn Fn(EventKind),
    barrier: &str,
    b: &Barrier<'_>,
    o: &Outcome,
    name: &dyn Fn(u16) -> String,
) -> Result<(), String> {
    let n = usize::from(b.header().participants);
    let (outcome, missing) = match o {
        Outcome::Released { excluded } => ("released", excluded.iter().map(|k| name(*k)).collect::<Vec<_>>()),
        Outcome::Aborted { missing, .. } => ("aborted", missing.iter().map(|k| name(*k)).collect()),
        _ => ("undecided", Vec::new()),
    };
    // Stopped early (an earlier barrier aborted): whoever had arrived by then.
    let arrived = match o {
        Outcome::Aborted { missing, .. } if missing.is_empty() => {
            usize::try_from(b.arrived()).unwrap_or(n).min(n)
        }
        _ => n - missing.len(),
    };
    emit(EventKind::Barrier { barrier: barrier.into(), outcome: outcome.into(), arrived, missing });
    match o {
        Outcome::Released { .. } => Ok(()),
        other => Err(format!("the {barrier} barrier: {}", outcome_text(other, name))),
    }
}
