//! The monarch's side of the phased boot: (1) sequential: it writes the kernel, the
//! description and cluster 0's boot info into cluster 0's bank, once; (2) it starts one head
//! per other cluster (`monarch core`), which copy for their clusters, and meets them at the
//! `heads` barrier; (3) it starts cluster 0's cores, owns its cluster's barrier and the
//! `final` one (it owns them without taking part), after which every core jumps into its
//! kernel and reports RUNNING. Its own core (core 0 of cluster 0) is one of them: a process
//! of its own, started with cluster 0's others, so that the monarch stays to report the boot.

use super::bank::{self, Bank, Record};
use super::core::{barrier_event, barrier_path, final_participants, header, zone};
use crate::cmdline::CoreArgs;
use crate::events::{Event, EventKind, ProcessorSummary, Summary};
use crate::plan::Plan;
use crate::topology::ImageSource;
use monarch_drivers::barrier::{Barrier, BarrierFile};
use monarch_drivers::doorbell::Doorbell;
use monarch_proto::arch::{self, ArchView, ZoneKind};
use monarch_proto::barrier::Outcome;
use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Boot the machine of clusters `plan` describes, in phases.
pub fn run(plan: &Plan, exe: &Path, on_event: &mut dyn FnMut(&Event)) -> Summary {
    let t = &plan.topology;
    let t0 = crate::election::candidate::unix_nanos();
    let clock = crate::election::instant_at(t0);
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<Event>();
    let emit = |kind| {
        let _ = tx.send(Event { t_ms: clock.elapsed().as_secs_f64() * 1e3, kind });
    };
    let mut expected: Vec<String> = Vec::new();
    let mut children = Vec::new();
    let mut failed_early = phases(plan, exe, t0, &emit, &tx, &mut expected, &mut children).err();
    drop(tx);
    let mut done: BTreeMap<String, Event> = BTreeMap::new();
    // Cores the boot went on without, and why.
    let mut left_out: BTreeMap<String, String> = BTreeMap::new();
    // Cores whose missed barrier failed the boot.
    let mut missed: BTreeMap<String, String> = BTreeMap::new();
    // Bytes each core copied (a head, for its cluster).
    let mut copied: BTreeMap<String, u64> = BTreeMap::new();
    let monarch = plan.monarch().to_string();
    // Events until every core that should run has said how it ended.
    let until =
        Instant::now() + t.clusters.as_ref().map_or(Duration::from_secs(30), |c| c.barrier_timeout * 3);
    loop {
        let settled = |id: &String| done.contains_key(id) || left_out.contains_key(id);
        if expected.iter().all(settled) && failed_early.is_none() {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(ev) => {
                match &ev.kind {
                    EventKind::Done { id, .. } => {
                        done.insert(id.clone(), ev.clone());
                    }
                    EventKind::Copied { id, bytes, .. } => *copied.entry(id.clone()).or_default() += bytes,
                    EventKind::LeftOut { what, why } => {
                        left_out.entry(what.clone()).or_insert_with(|| why.clone());
                    }
                    EventKind::Barrier { barrier, outcome, missing, .. } => {
                        let released = outcome == "released";
                        let into = if released { &mut left_out } else { &mut missed };
                        for m in missing {
                            into.entry(m.clone()).or_insert_with(|| {
                                format!(
                                    "missed the {barrier} barrier's deadline (barrier_policy = \"{}\")",
                                    if released { "exclude" } else { "abort" }
                                )
                            });
                        }
                    }
                    _ => {}
                }
                on_event(&ev);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if failed_early.is_some() || Instant::now() >= until {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                if expected.iter().all(|id| done.contains_key(id) || left_out.contains_key(id)) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= until {
                    failed_early.get_or_insert_with(|| "not every core reported in time".into());
                    break;
                }
            }
        }
    }
    for c in &mut children {
        let _ = c.wait();
    }
    let mut me = ProcessorSummary::new(&monarch, "monarch", "monarch");
    // What the monarch wrote: the kernel, the description and cluster 0's boot info, once.
    me.bytes = copied.get(&monarch).copied().unwrap_or(0);
    let mut processors = Vec::new();
    let mut ok = failed_early.is_none();
    for id in &expected {
        // The monarch's own core, once it jumped: its row is the monarch's.
        let role = if *id == monarch { "monarch" } else { "secondary" };
        let mut p = ProcessorSummary::new(id, role, "failed");
        p.bytes = copied.get(id).copied().unwrap_or(0);
        if let Some(ev) = done.get(id) {
            // From the boot's start to its report.
            p.timings_ms.total = ev.t_ms;
        }
        match (done.get(id).map(|e| &e.kind), left_out.get(id)) {
            (Some(EventKind::Done { state, report, .. }), _) if state == "running" => {
                p.state.clone_from(state);
                p.report.clone_from(report);
            }
            (done, Some(why)) => {
                p.state = "left-out".into();
                // What it said of itself, if it got to say something, then why it was left out.
                p.error = Some(match done {
                    Some(EventKind::Done { error: Some(e), .. }) => format!("{e}; {why}"),
                    _ => why.clone(),
                });
            }
            (Some(EventKind::Done { state, report, error, .. }), None) => {
                p.state.clone_from(state);
                p.report.clone_from(report);
                p.error.clone_from(error);
            }
            _ => p.error = Some(missed.get(id).cloned().unwrap_or_else(|| "no report".into())),
        }
        ok &= p.state == "running" || p.state == "left-out";
        if *id == monarch {
            // Its core never got to say anything (the boot failed before): it stays the
            // monarch, and the summary's error says why.
            if failed_early.is_some() && !done.contains_key(id) && !left_out.contains_key(id) {
                continue;
            }
            me.state = p.state;
            me.report = p.report;
            me.error = p.error;
            me.timings_ms.total = p.timings_ms.total;
        } else {
            processors.push(p);
        }
    }
    processors.insert(0, me);
    // Cores that failed their self-test were never booted: the summary names them too.
    for (id, why) in &left_out {
        if !expected.contains(id) && id.starts_with('c') && !id.contains(' ') {
            let mut p = ProcessorSummary::new(id, "secondary", "left-out");
            p.error = Some(why.clone());
            processors.push(p);
        }
    }
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    if t.run_dir_is_temporary {
        let _ = std::fs::remove_dir_all(&t.run_dir);
    }
    Summary { ok, chassis: t.name.clone(), total_ms, processors, election: None, error: failed_early }
}

/// The three phases; fills in the cores expected to report (as soon as they are known) and
/// the processes started, even when it fails.
fn phases(
    plan: &Plan,
    exe: &Path,
    t0: u128,
    emit: &dyn Fn(EventKind),
    tx: &mpsc::Sender<Event>,
    expected: &mut Vec<String>,
    children: &mut Vec<Child>,
) -> Result<(), String> {
    let t = &plan.topology;
    let c = t.clusters.as_ref().ok_or("not a machine of clusters")?;
    if t.run_dir_is_temporary {
        crate::run_folder::create(&t.run_dir).map_err(|e| e.to_string())?;
    } else {
        std::fs::create_dir_all(&t.run_dir).map_err(|e| format!("{}: {e}", t.run_dir.display()))?;
    }
    let monarch = plan.monarch().to_string();
    // Phase 1, sequential: the kernel and the description into cluster 0's bank, once.
    let arch_bytes = match &c.arch {
        Some(bytes) => bytes.clone(),
        None => super::describe::describe(t).map_err(|e| e.to_string())?.1,
    };
    let view = ArchView::parse(&arch_bytes).map_err(|e| e.to_string())?;
    let kernel = match &t.secondaries.first().ok_or("no core to boot")?.image {
        ImageSource::Builtin { size, banner } => {
            crate::image::build_payload(&crate::builtin::payload_program(), *size, banner)
                .map_err(|e| e.to_string())?
        }
        ImageSource::File(p) => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
    };
    let record = Record::of(&kernel, &arch_bytes);
    let clusters = arch::select::booting_clusters(&view);
    let mut banks = BTreeMap::new();
    for cl in &c.clusters {
        if let Some(b) = cl.banks.iter().find(|b| !b.failed) {
            let bank = Bank::create(&bank::path(&t.run_dir, cl.id), b.size)
                .map_err(|e| format!("bank of cluster {}: {e}", cl.id))?;
            banks.insert(cl.id, bank);
        }
    }
    let zero = banks.get_mut(&0).ok_or("cluster 0 has no tested bank")?;
    emit(EventKind::Phase { id: monarch.clone(), phase: "copying".into(), attempt: 1 });
    let copy_started = Instant::now();
    zero.write(zone(&view, ZoneKind::Kernel)?, &kernel)?;
    zero.write(zone(&view, ZoneKind::ArchInfo)?, &arch_bytes)?;
    zero.write(zone(&view, ZoneKind::BootCode)?, &record.encode())?;
    let info = arch::boot_info(&view, 0).map_err(|e| e.to_string())?.encode().map_err(|e| e.to_string())?;
    zero.write(zone(&view, ZoneKind::BootInfo)?, &info)?;
    emit(EventKind::Copied {
        id: monarch.clone(),
        attempt: 1,
        bytes: (kernel.len() + arch_bytes.len() + info.len()) as u64,
        ms: copy_started.elapsed().as_secs_f64() * 1e3,
    });
    // Cluster 0's kernel, sealed in memory once, for its cores to check and run.
    let kernel_c0 = super::core::seal("kernel-c0", &kernel)?;
    emit(EventKind::Phase { id: monarch.clone(), phase: "boot-info".into(), attempt: 0 });
    for (what, why) in untested(&view) {
        emit(EventKind::LeftOut { what, why });
    }
    // The barriers the monarch owns.
    let hf = BarrierFile::create(&barrier_path(&t.run_dir, "heads")).map_err(|e| e.to_string())?;
    // The monarch arrives at the heads barrier as cluster 0's head.
    let heads = Barrier::create(
        hf.block(),
        header(clusters.len(), c.barrier_policy, c.barrier_timeout),
        Some(0),
        Doorbell::detect(),
    );
    let everyone = final_participants(&view);
    expected.extend(everyone.iter().map(|(cl, lid, _)| crate::topology::core_id(*cl, *lid)));
    let ff = BarrierFile::create(&barrier_path(&t.run_dir, "final")).map_err(|e| e.to_string())?;
    // Its deadline covers the heads barrier and a cluster's barrier before it.
    let last = Barrier::create(
        ff.block(),
        header(everyone.len(), c.barrier_policy, c.barrier_timeout * 3),
        None,
        Doorbell::detect(),
    );
    let args = |cluster: u16, lid: u16| CoreArgs {
        run_dir: t.run_dir.clone(),
        cluster,
        lid,
        arch_base: view.zone(ZoneKind::ArchInfo).map_or(0, |z| z.base()),
        arch_max: view.zone(ZoneKind::ArchInfo).map_or(0, |z| z.max()),
        barrier_timeout: c.barrier_timeout,
        barrier_policy: c.barrier_policy,
        killed_before_barrier: c
            .clusters
            .iter()
            .find(|k| k.id == cluster)
            .map(|k| k.killed_before_barrier.clone())
            .unwrap_or_default(),
        t0_unix_ns: t0,
        netboot: super::serve::arg(c, cluster),
        monarch_core: cluster == 0 && lid == 0,
        // Cluster 0's cores run the kernel the monarch sealed (unless they boot over the
        // network); a head makes its own cluster's.
        kernel: (cluster == 0 && super::serve::arg(c, 0).is_none()).then(|| kernel_c0.path()),
    };
    // The clusters whose barrier was decided, released, and how many cores each left out:
    // once all are, and everyone else arrived, the final barrier need not wait any longer.
    let settled: Arc<Mutex<BTreeMap<u16, usize>>> = Arc::default();
    let start = |cluster: u16, lid: u16, children: &mut Vec<Child>| -> Result<(), String> {
        let mut child = Command::new(exe)
            .args(args(cluster, lid).to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start core {}: {e}", crate::topology::core_id(cluster, lid)))?;
        emit(EventKind::Launched {
            id: crate::topology::core_id(cluster, lid),
            pid: child.id(),
            console: None,
        });
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            let settled = Arc::clone(&settled);
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                        if let EventKind::Barrier { barrier, outcome, missing, .. } = &ev.kind
                            && outcome == "released"
                            && let Some(cl) = barrier.strip_prefix("cluster ").and_then(|n| n.parse().ok())
                            && let Ok(mut s) = settled.lock()
                        {
                            s.insert(cl, missing.len());
                        }
                        let _ = tx.send(ev);
                    }
                }
            });
        }
        children.push(child);
        Ok(())
    };
    // Phase 2: one head per other cluster.
    for &cl in clusters.iter().filter(|c| **c != 0) {
        start(cl, 0, children)?;
    }
    let name = |cl: u16, k: u16| crate::topology::core_id(cl, k);
    let decided = heads.own(heads.header().deadline_ns);
    barrier_event(emit, "heads", &heads, &decided, &|k| name(clusters[usize::from(k)], 0))?;
    if let (Outcome::Released { excluded }, Ok(mut s)) = (&decided, settled.lock()) {
        // A cluster whose head missed the heads barrier never starts: none of its cores come.
        for &k in excluded {
            let cl = clusters[usize::from(k)];
            s.insert(cl, view.cores_of(cl).filter(|c| !c.failed()).count());
        }
    }
    // Phase 3 for cluster 0: its cores, the monarch's own among them; its barrier.
    let tested = arch::boot_info(&view, 0).map_err(|e| e.to_string())?;
    let lf = BarrierFile::create(&barrier_path(&t.run_dir, "c0")).map_err(|e| e.to_string())?;
    let local = Barrier::create(
        lf.block(),
        header(tested.cores.len(), c.barrier_policy, c.barrier_timeout),
        None,
        Doorbell::detect(),
    );
    for k in &tested.cores {
        start(0, k.lid, children)?;
    }
    let decided = local.own(local.header().deadline_ns);
    barrier_event(emit, "cluster 0", &local, &decided, &|k| name(0, tested.cores[usize::from(k)].lid))?;
    if let (Outcome::Released { excluded }, Ok(mut s)) = (&decided, settled.lock()) {
        s.insert(0, excluded.len());
    }
    let decided = own_final(&last, clusters.len(), &settled);
    barrier_event(emit, "final", &last, &decided, &|k| {
        let (cl, lid, _) = everyone[usize::from(k)];
        name(cl, lid)
    })?;
    Ok(())
}

/// The monarch's part in the `final` barrier: wait, and decide at the deadline or as soon as
/// every cluster's barrier was released and everyone those did not leave out has arrived
/// (those left out never come: waiting out the deadline would only delay the boot).
fn own_final(b: &Barrier<'_>, clusters: usize, settled: &Mutex<BTreeMap<u16, usize>>) -> Outcome {
    const LOOK: u64 = 10_000_000;
    let deadline = b.header().deadline_ns;
    loop {
        let until = deadline.min(monarch_drivers::barrier::monotonic_ns().saturating_add(LOOK));
        match b.wait(until) {
            Outcome::TimedOut { .. } => return b.decide(),
            Outcome::Waiting { .. } => {
                let left_out =
                    settled.lock().ok().filter(|s| s.len() == clusters).map(|s| s.values().sum::<usize>());
                let arrived = usize::try_from(b.arrived()).unwrap_or(usize::MAX);
                if left_out.is_some_and(|n| arrived.saturating_add(n) >= usize::from(b.header().participants))
                {
                    return b.decide();
                }
            }
            decided => return decided,
        }
    }
}

/// What failed its self-test, as (what, why): every cluster that does not boot, and the
/// failed cores (`c<cluster>-<lid>`) and banks of those that do. No boot info lists them.
fn untested(view: &ArchView<'_>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for c in view.clusters() {
        let id = c.id();
        if let Some(why) = arch::select::exclusion(view, c) {
            out.push((format!("cluster {id}"), why.to_string()));
            continue;
        }
        for k in view.cores_of(id).filter(|k| k.failed()) {
            out.push((crate::topology::core_id(id, k.lid()), "failed its self-test".into()));
        }
        for (i, b) in view.banks_of(id).enumerate() {
            if b.failed() {
                out.push((format!("bank {i} of cluster {id}"), "failed its self-test".into()));
            }
        }
    }
    out
}
