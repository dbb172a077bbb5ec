//! The monarch's side of the phased boot: (1) sequential: it writes the kernel, the
//! description and cluster 0's boot info into cluster 0's bank, once; (2) it starts one head
//! per other cluster (`monarch core`), which copy for their clusters, and meets them at the
//! `heads` barrier; (3) it starts cluster 0's other cores, owns its cluster's barrier and the
//! `final` one, after which every core jumps into its kernel and reports RUNNING.

use super::bank::{self, Bank, Record};
use super::core::{GENERATION, barrier_path, deadline_ns, final_participants, policy, zone};
use crate::cmdline::CoreArgs;
use crate::events::{Event, EventKind, ProcessorSummary, Summary};
use crate::plan::Plan;
use crate::topology::ImageSource;
use monarch_drivers::barrier::{Barrier, BarrierFile};
use monarch_drivers::doorbell::Doorbell;
use monarch_proto::arch::{self, ArchView, ZoneKind};
use monarch_proto::barrier::{Header, Outcome};
use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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
    let result = phases(plan, exe, t0, &emit, &tx);
    drop(tx);
    let mut done: BTreeMap<String, Event> = BTreeMap::new();
    let monarch = plan.monarch().to_string();
    let mut written = 0u64;
    let mut failed_early = result.as_ref().err().cloned();
    let expected: Vec<String> = result.as_ref().map(|(e, _)| e.clone()).unwrap_or_default();
    let mut children = result.map(|(_, c)| c).unwrap_or_default();
    // Events until every core that should run has said how it ended.
    let until =
        Instant::now() + t.clusters.as_ref().map_or(Duration::from_secs(30), |c| c.barrier_timeout * 3);
    loop {
        if expected.iter().all(|id| done.contains_key(id)) && failed_early.is_none() {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(ev) => {
                match &ev.kind {
                    EventKind::Done { id, .. } => {
                        done.insert(id.clone(), ev.clone());
                    }
                    EventKind::Copied { id, bytes, .. } if *id == monarch => written += bytes,
                    _ => {}
                }
                on_event(&ev);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if failed_early.is_some() || Instant::now() >= until {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                if expected.iter().all(|id| done.contains_key(id)) {
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
    me.bytes = written;
    let mut processors = vec![me];
    let mut ok = failed_early.is_none();
    for id in &expected {
        let mut p = ProcessorSummary::new(id, "secondary", "failed");
        match done.get(id).map(|e| &e.kind) {
            Some(EventKind::Done { state, report, error, .. }) => {
                p.state.clone_from(state);
                p.report.clone_from(report);
                p.error.clone_from(error);
            }
            _ => p.error = Some("no report".into()),
        }
        ok &= p.state == "running";
        processors.push(p);
    }
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    if t.run_dir_is_temporary {
        let _ = std::fs::remove_dir_all(&t.run_dir);
    }
    Summary { ok, chassis: t.name.clone(), total_ms, processors, election: None, error: failed_early }
}

/// The three phases; returns the cores expected to report and the processes started.
fn phases(
    plan: &Plan,
    exe: &Path,
    t0: u128,
    emit: &dyn Fn(EventKind),
    tx: &mpsc::Sender<Event>,
) -> Result<(Vec<String>, Vec<Child>), String> {
    let t = &plan.topology;
    let c = t.clusters.as_ref().ok_or("not a machine of clusters")?;
    if t.run_dir_is_temporary {
        crate::run_folder::create(&t.run_dir)?;
    } else {
        std::fs::create_dir_all(&t.run_dir).map_err(|e| format!("{}: {e}", t.run_dir.display()))?;
    }
    let monarch = plan.monarch().to_string();
    // Phase 1, sequential: the kernel and the description into cluster 0's bank, once.
    let (_, arch_bytes) = super::describe::describe(t).map_err(|e| e.to_string())?;
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
    emit(EventKind::Phase { id: monarch.clone(), phase: "boot-info".into(), attempt: 0 });
    // The barriers the monarch owns.
    let hf = BarrierFile::create(&barrier_path(&t.run_dir, "heads")).map_err(|e| e.to_string())?;
    let heads = Barrier::create(
        hf.block(),
        Header {
            participants: u16::try_from(clusters.len()).unwrap_or(u16::MAX),
            generation: GENERATION,
            policy: c.barrier_policy_proto(),
            deadline_ns: deadline_ns(c.barrier_timeout),
        },
        Some(0),
        Doorbell::detect(),
    );
    let everyone = final_participants(&view);
    let ff = BarrierFile::create(&barrier_path(&t.run_dir, "final")).map_err(|e| e.to_string())?;
    let last = Barrier::create(
        ff.block(),
        Header {
            participants: u16::try_from(everyone.len()).unwrap_or(u16::MAX),
            generation: GENERATION,
            policy: c.barrier_policy_proto(),
            deadline_ns: deadline_ns(c.barrier_timeout * 3),
        },
        Some(0),
        Doorbell::detect(),
    );
    let policy_name = match c.barrier_policy {
        crate::topology::BarrierPolicy::Exclude => "exclude",
        crate::topology::BarrierPolicy::Abort => "abort",
    };
    let args = |cluster: u16, lid: u16| CoreArgs {
        run_dir: t.run_dir.clone(),
        cluster,
        lid,
        arch_base: view.zone(ZoneKind::ArchInfo).map_or(0, |z| z.base()),
        arch_max: view.zone(ZoneKind::ArchInfo).map_or(0, |z| z.max()),
        barrier_timeout: c.barrier_timeout,
        barrier_policy: policy_name.into(),
        t0_unix_ns: t0,
        netboot: super::serve::arg(c, cluster),
    };
    let mut children = Vec::new();
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
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(ev) = serde_json::from_str::<Event>(&line) {
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
        start(cl, 0, &mut children)?;
    }
    let name = |cl: u16, k: u16| crate::topology::core_id(cl, k);
    let decided = heads.own(heads.header().deadline_ns);
    let released =
        barrier_event(emit, "heads", &decided, clusters.len(), &|k| name(clusters[usize::from(k)], 0));
    if !released {
        return Err(format!("the heads barrier: {decided:?}"));
    }
    // Phase 3 for cluster 0: its other cores, its barrier.
    let tested = arch::boot_info(&view, 0).map_err(|e| e.to_string())?;
    let lf = BarrierFile::create(&barrier_path(&t.run_dir, "c0")).map_err(|e| e.to_string())?;
    let local = Barrier::create(
        lf.block(),
        Header {
            participants: u16::try_from(tested.cores.len()).unwrap_or(u16::MAX),
            generation: GENERATION,
            policy: c.barrier_policy_proto(),
            deadline_ns: deadline_ns(c.barrier_timeout),
        },
        Some(0),
        Doorbell::detect(),
    );
    for k in tested.cores.iter().filter(|k| k.lid != 0) {
        start(0, k.lid, &mut children)?;
    }
    let decided = local.own(local.header().deadline_ns);
    if !barrier_event(emit, "cluster 0", &decided, tested.cores.len(), &|k| {
        name(0, tested.cores[usize::from(k)].lid)
    }) {
        return Err(format!("cluster 0's barrier: {decided:?}"));
    }
    let decided = last.own(last.header().deadline_ns);
    if !barrier_event(emit, "final", &decided, everyone.len(), &|k| {
        let (cl, lid, _) = everyone[usize::from(k)];
        name(cl, lid)
    }) {
        return Err(format!("the final barrier: {decided:?}"));
    }
    let expected: Vec<String> = everyone
        .iter()
        .filter(|(cl, lid, _)| !(*cl == 0 && *lid == 0))
        .map(|(cl, lid, _)| name(*cl, *lid))
        .collect();
    Ok((expected, children))
}

/// The event of a barrier decided by its owner; whether it released.
fn barrier_event(
    emit: &dyn Fn(EventKind),
    barrier: &str,
    o: &Outcome,
    n: usize,
    name: &dyn Fn(u16) -> String,
) -> bool {
    let (outcome, missing, released) = match o {
        Outcome::Released { excluded } => {
            ("released", excluded.iter().map(|k| name(*k)).collect::<Vec<_>>(), true)
        }
        Outcome::Aborted { missing, .. } => ("aborted", missing.iter().map(|k| name(*k)).collect(), false),
        other => {
            (if matches!(other, Outcome::Excluded) { "excluded" } else { "undecided" }, Vec::new(), false)
        }
    };
    emit(EventKind::Barrier {
        barrier: barrier.into(),
        outcome: outcome.into(),
        arrived: n - missing.len(),
        missing,
    });
    released
}

impl crate::topology::Clusters {
    /// The barrier policy, as the barriers take it.
    pub fn barrier_policy_proto(&self) -> monarch_proto::barrier::Policy {
        policy(match self.barrier_policy {
            crate::topology::BarrierPolicy::Exclude => "exclude",
            crate::topology::BarrierPolicy::Abort => "abort",
        })
    }
}
