//! Failover trials (monarch election): boot a chassis with two or more management processors,
//! kill (SIGKILL) or pause (SIGSTOP, then SIGCONT once a new monarch took over) the monarch
//! at a random point of the boot, and check the outcome from outside: every secondary
//! RUNNING, each released exactly once, and only into the image whose checksum the monarch
//! retrieved. `monarch bench failover` runs many and prints the failover time's p50/p99;
//! the test suite runs a few of each kind.
//!
//! Every fact is read from a real run: the events `monarch up --json` prints, and the
//! release log every agent appends to just before its handoff (`MONARCH_RELEASE_LOG`).

use monarch_boot::events::{Event, EventKind, Summary};
use monarch_drivers::host::signal;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What is done to the monarch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: an undisturbed boot (calibrates how long a boot takes).
    None,
    /// SIGKILL it.
    Kill,
    /// SIGSTOP it, and SIGCONT it as soon as a new monarch took over (split brain).
    Pause,
    /// Not the monarch: another process the boot depends on (the etcd server). SIGSTOP it
    /// and SIGCONT it after `resume_after`, or SIGKILL it for good (`None`).
    Outside {
        /// Its pid.
        pid: u32,
        /// How long it stays stopped; `None`: killed.
        resume_after: Option<Duration>,
    },
}

/// When the fault strikes, counted from the first election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// After this long.
    Time(Duration),
    /// Right after this many of the boot's events: a point of its progress, whatever its
    /// speed (a boot slower or faster than the calibration run is struck as far into it).
    Events(usize),
}

/// One trial.
#[derive(Debug, Clone)]
pub struct TrialSpec {
    /// The `monarch` binary.
    pub exe: PathBuf,
    /// Topology file (`None`: the built-in chassis, which has two management processors).
    pub topology: Option<PathBuf>,
    /// What to do to the monarch.
    pub fault: Fault,
    /// When, counted from its election.
    pub after: When,
    /// Give up on the run after this long (it is then killed, and the trial fails).
    pub limit: Duration,
}

/// What a trial found.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// The fault was applied (false: the boot was over before the chosen moment).
    pub struck: bool,
    /// Milliseconds from the fault to the new monarch's claim, if there was a failover.
    pub failover_ms: Option<f64>,
    /// Every secondary RUNNING, each released once, into its verified image, exit status 0.
    pub ok: bool,
    /// What was wrong, if anything.
    pub problems: Vec<String>,
    /// The monarch that finished the boot, and its epoch.
    pub monarch: Option<(String, u32)>,
    /// Secondaries a deposed monarch sent its last commands to (split brain), and how many
    /// commands each secondary ignored (`status.fenced`).
    pub fenced: BTreeMap<String, (bool, u64)>,
    /// A paused monarch said it stood down.
    pub stood_down: bool,
    /// From the first election to the last secondary's final state.
    pub boot_ms: Option<f64>,
    /// Events from the first election to the last secondary's final state.
    pub boot_events: usize,
    /// The final summary.
    #[serde(skip)]
    pub summary: Option<Summary>,
    /// Every event, with the trial's own times (ms since the fault) beside them.
    #[serde(skip)]
    pub events: Vec<(Option<f64>, Event)>,
    /// How long `monarch up` ran.
    pub run_ms: f64,
}

/// How long a paused monarch stays stopped when nobody takes over from it.
const PAUSE_AT_MOST: Duration = Duration::from_secs(10);

/// Run one trial.
pub fn trial(spec: &TrialSpec) -> Result<Trial, String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("cannot make a scratch folder: {e}"))?;
    let release_log = scratch.path().join("released.log");
    let mut cmd = Command::new(&spec.exe);
    cmd.arg("up").arg("--json").arg("--shutdown-grace").arg("2s");
    if let Some(t) = &spec.topology {
        cmd.arg("--topology").arg(t);
    }
    // Its own process group, so that a run that hangs can be stopped whole.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .env("MONARCH_RELEASE_LOG", &release_log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", spec.exe.display()))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                let _ = tx.send(ev);
            }
        }
    });
    let start = Instant::now();
    let mut pids: BTreeMap<String, u32> = BTreeMap::new();
    let mut t = Trial {
        struck: false,
        failover_ms: None,
        ok: false,
        problems: Vec::new(),
        monarch: None,
        fenced: BTreeMap::new(),
        stood_down: false,
        boot_ms: None,
        boot_events: 0,
        summary: None,
        events: Vec::new(),
        run_ms: 0.0,
    };
    let mut resume_outside: Option<(u32, Instant)> = None;
    let mut elected_at: Option<Instant> = None;
    let mut victim: Option<(u32, When)> = None; // (pid, when to strike, from the election)
    let mut progress = 0usize; // events since the first election
    let mut struck_at: Option<Instant> = None;
    let mut paused: Option<u32> = None;
    let mut aborted: Vec<String> = Vec::new();
    loop {
        let wait = match victim {
            Some((_, When::Time(d))) => elected_at
                .map_or(d, |e| (e + d).saturating_duration_since(Instant::now()))
                .min(Duration::from_millis(20)),
            _ => Duration::from_millis(50),
        };
        let got = rx.recv_timeout(wait);
        if let Ok(ev) = &got {
            t.events.push((struck_at.map(|at| at.elapsed().as_secs_f64() * 1e3), ev.clone()));
            progress += usize::from(elected_at.is_some());
        }
        match got {
            Ok(ev) => match ev.kind {
                EventKind::Candidate { id, pid, .. } => {
                    pids.insert(id, pid);
                }
                EventKind::Done { .. } => {
                    t.boot_ms = elected_at.map(|e| e.elapsed().as_secs_f64() * 1e3);
                    t.boot_events = progress;
                }
                EventKind::Elected { monarch, epoch, .. } => {
                    elected_at.get_or_insert_with(Instant::now);
                    if victim.is_none()
                        && !t.struck
                        && spec.fault != Fault::None
                        && let Some(pid) = pids.get(&monarch)
                    {
                        victim = Some((*pid, spec.after));
                    }
                    t.monarch = Some((monarch, epoch));
                }
                EventKind::Failover { .. } => {
                    if let Some(at) = struck_at
                        && t.failover_ms.is_none()
                    {
                        t.failover_ms = Some(at.elapsed().as_secs_f64() * 1e3);
                    }
                    if let Some(pid) = paused.take() {
                        signal(pid, rustix::process::Signal::CONT);
                    }
                }
                EventKind::StoodDown { aborted: a, .. } => {
                    t.stood_down = true;
                    aborted = a;
                }
                EventKind::Summary(s) => t.summary = Some(s),
                _ => {}
            },
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let due = match victim {
            Some((_, When::Time(d))) => elected_at.is_some_and(|e| e.elapsed() >= d),
            Some((_, When::Events(n))) => progress >= n,
            None => false,
        };
        if let Some((pid, _)) = victim
            && due
        {
            victim = None;
            if t.summary.is_none() && monarch_drivers::host::alive(pid) {
                match spec.fault {
                    Fault::Kill => signal(pid, rustix::process::Signal::KILL),
                    Fault::Pause => {
                        signal(pid, rustix::process::Signal::STOP);
                        paused = Some(pid);
                    }
                    Fault::Outside { pid, resume_after: Some(d) } => {
                        signal(pid, rustix::process::Signal::STOP);
                        resume_outside = Some((pid, Instant::now() + d));
                    }
                    Fault::Outside { pid, resume_after: None } => signal(pid, rustix::process::Signal::KILL),
                    Fault::None => {}
                }
                t.struck = true;
                struck_at = Some(Instant::now());
            }
        }
        if let Some((pid, at)) = resume_outside
            && Instant::now() >= at
        {
            signal(pid, rustix::process::Signal::CONT);
            resume_outside = None;
        }
        // A monarch paused when there was nothing left to take over (it had just marked the
        // boot done): nobody fails over, so it is resumed after a while instead.
        if let (Some(pid), Some(at)) = (paused, struck_at)
            && at.elapsed() > PAUSE_AT_MOST
        {
            signal(pid, rustix::process::Signal::CONT);
            paused = None;
        }
        if start.elapsed() > spec.limit {
            // The whole run: `monarch up`, its candidates and their agents and images.
            monarch_drivers::host::signal_group(child.id(), rustix::process::Signal::KILL);
            t.problems.push(format!("the run did not end within {:?}", spec.limit));
            break;
        }
    }
    if let Some(pid) = paused.or(resume_outside.map(|(p, _)| p)) {
        signal(pid, rustix::process::Signal::CONT);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    t.run_ms = start.elapsed().as_secs_f64() * 1e3;
    let _ = reader.join();
    check(&mut t, &release_log, status.success(), &aborted);
    Ok(t)
}

/// [`trial`] of the built-in chassis in a run folder of its own (under /dev/shm, as the
/// chassis's own would be), whose logs (every candidate's, agent's and image's) are copied to
/// `keep` when the trial is not ok, and named in its problems.
pub fn trial_keeping_logs(spec: &TrialSpec, keep: &Path) -> Result<Trial, String> {
    let scratch = tempfile::Builder::new()
        .prefix("monarch-failover-")
        .tempdir_in("/dev/shm")
        .map_err(|e| format!("cannot make a trial folder under /dev/shm: {e}"))?;
    let run = scratch.path().join("run");
    let topology = scratch.path().join("chassis.toml");
    let text = monarch_boot::topology::DEFAULT_TOPOLOGY.replacen(
        "[chassis]\n",
        &format!("[chassis]\nrun_dir = {:?}\n", run.display().to_string()),
        1,
    );
    std::fs::write(&topology, text).map_err(|e| format!("cannot write {}: {e}", topology.display()))?;
    let mut t = trial(&TrialSpec { topology: Some(topology), ..spec.clone() })?;
    if !t.ok {
        std::fs::create_dir_all(keep).map_err(|e| format!("cannot create {}: {e}", keep.display()))?;
        let mut kept = 0;
        for e in std::fs::read_dir(&run).into_iter().flatten().flatten() {
            let name = e.file_name();
            if Path::new(&name).extension().is_some_and(|x| x == "log")
                && std::fs::copy(e.path(), keep.join(&name)).is_ok()
            {
                kept += 1;
            }
        }
        t.problems.push(match kept {
            0 => format!("it left no logs to keep (its run folder {} has none)", run.display()),
            n => format!("its {n} logs are kept in {}", keep.display()),
        });
    }
    Ok(t)
}

/// Judge a finished trial by its summary and release log.
fn check(t: &mut Trial, release_log: &Path, exited_ok: bool, aborted: &[String]) {
    let Some(s) = &t.summary else {
        t.problems.push("no summary".into());
        return;
    };
    if !exited_ok {
        t.problems.push("monarch up exited with a failure".into());
    }
    let log = std::fs::read_to_string(release_log).unwrap_or_default();
    let mut released: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in log.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [id, _epoch, _attempt, checksum, _pid] = f.as_slice() {
            released.entry(id).or_default().push(checksum);
        } else {
            t.problems.push(format!("bad release log line {line:?}"));
        }
    }
    for p in s.processors.iter().filter(|p| p.role == "secondary") {
        if p.state != "running" {
            t.problems.push(format!("{} ended {}: {}", p.id, p.state, p.error.clone().unwrap_or_default()));
        }
        let r = released.get(p.id.as_str()).cloned().unwrap_or_default();
        if r.len() != 1 {
            t.problems.push(format!("{} was released {} times", p.id, r.len()));
        }
        if let Some(c) = &p.checksum
            && r.iter().any(|x| x != c)
        {
            t.problems.push(format!("{} was released into {r:?}, not its verified image {c}", p.id));
        }
        t.fenced.insert(p.id.clone(), (aborted.contains(&p.id), p.fenced));
    }
    for id in aborted {
        if t.fenced.get(id).is_none_or(|(_, n)| *n == 0) {
            t.problems
                .push(format!("{id} got the deposed monarch's last command but did not count it as fenced"));
        }
    }
    if let Some(e) = &s.election {
        t.monarch = Some((e.monarch.clone(), e.epoch));
    }
    t.ok = t.problems.is_empty() && s.ok;
}

/// `monarch bench failover`.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverBench {
    /// What was done to the monarch: `kill` (SIGKILL) or `pause` (SIGSTOP, SIGCONT after the
    /// takeover: split brain).
    pub fault: &'static str,
    /// Trials in which the (paused) monarch said it stood down.
    pub stood_down: usize,
    /// Commands of deposed monarchs the secondaries ignored, over all trials.
    pub fenced_commands: u64,
    /// Trials run.
    pub trials: usize,
    /// Trials that ended with every secondary RUNNING, released once, into its image.
    pub ok: usize,
    /// Trials where the monarch died before the boot was over (a failover happened).
    pub failovers: usize,
    /// Failover time (SIGKILL of the monarch → the new monarch's claim), median.
    pub p50_ms: f64,
    /// … 99th percentile.
    pub p99_ms: f64,
    /// Worst.
    pub max_ms: f64,
    /// The configured failover floor: the heartbeat timeout on a backplane, the lease TTL on
    /// etcd (failover time is about this, less the time since the last beat or keep-alive
    /// before the kill, plus the takeover).
    pub timeout_ms: f64,
    /// An undisturbed boot, from election to the last secondary's final state.
    pub boot_ms: f64,
    /// The trials that were not ok, with what was wrong.
    pub failures: Vec<String>,
}

/// Run `trials` trials, each SIGKILLing (or, with `pause`, SIGSTOPping until the takeover)
/// the monarch at a uniformly random point of the boot's progress (after one of the events
/// an undisturbed boot has). `progress` hears each trial's
/// outcome.
pub fn bench(
    exe: &Path,
    topology: Option<&Path>,
    trials: usize,
    pause: bool,
    keep_failed: Option<&Path>,
    progress: &mut dyn FnMut(usize, &Trial),
) -> Result<FailoverBench, String> {
    if keep_failed.is_some() && topology.is_some() {
        return Err("--keep-failed works with the built-in chassis only: each trial then runs in a run folder of its own (a topology with its own run_dir keeps its logs there already)".into());
    }
    if let Some(dir) = keep_failed {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!("cannot create {}: {e}; give --keep-failed a folder you can write", dir.display())
        })?;
    }
    let plan_topology = match topology {
        Some(t) => monarch_boot::topology::Topology::load(t).map_err(|e| e.to_string())?,
        None => monarch_boot::topology::Topology::builtin().map_err(|e| e.to_string())?,
    };
    if plan_topology.managers.len() < 2 {
        return Err(
            "failover needs two or more management processors (role = \"monarch\") in the topology".into()
        );
    }
    let spec = |fault, after: When| TrialSpec {
        exe: exe.to_path_buf(),
        topology: topology.map(Path::to_path_buf),
        fault,
        after,
        limit: Duration::from_secs(120),
    };
    // Calibrate: how long does an undisturbed boot take from the election on?
    let calm = trial(&spec(Fault::None, When::Time(Duration::ZERO)))?;
    if !calm.ok {
        return Err(format!("an undisturbed boot already fails: {}", calm.problems.join("; ")));
    }
    let boot_ms = calm.boot_ms.unwrap_or(500.0);
    let mut times = Vec::new();
    let mut ok = 0;
    let mut failures = Vec::new();
    let (mut stood_down, mut fenced_commands) = (0, 0);
    let (fault, verb) = if pause { (Fault::Pause, "pause") } else { (Fault::Kill, "kill") };
    for i in 0..trials {
        // A uniformly random point of the boot's progress: after one of its events.
        let n = fastrand::usize(..calm.boot_events.max(1));
        let t = match keep_failed {
            None => trial(&spec(fault, When::Events(n)))?,
            Some(keep) => {
                trial_keeping_logs(&spec(fault, When::Events(n)), &keep.join(format!("trial-{}", i + 1)))?
            }
        };
        if t.ok {
            ok += 1;
        } else {
            failures.push(format!("trial {i} ({verb} after {n} events): {}", t.problems.join("; ")));
        }
        stood_down += usize::from(t.stood_down);
        fenced_commands += t.fenced.values().map(|(_, n)| n).sum::<u64>();
        if let Some(ms) = t.failover_ms {
            times.push(ms);
        }
        progress(i, &t);
    }
    times.sort_by(f64::total_cmp);
    // Nearest rank: the smallest time with at least `p` percent of the trials at or below it.
    let pct = |p: usize| match times.len() {
        0 => 0.0,
        n => times[(n * p).div_ceil(100).clamp(1, n) - 1],
    };
    Ok(FailoverBench {
        fault: verb,
        stood_down,
        fenced_commands,
        trials,
        ok,
        failovers: times.len(),
        p50_ms: pct(50),
        p99_ms: pct(99),
        max_ms: times.last().copied().unwrap_or(0.0),
        timeout_ms: match &plan_topology.election.backend {
            monarch_boot::topology::ElectionBackend::Backplane => plan_topology.election.timeout,
            monarch_boot::topology::ElectionBackend::Etcd(e) => e.ttl,
        }
        .as_secs_f64()
            * 1e3,
        boot_ms,
        failures,
    })
}
