//! Crash recovery under supervision (`monarch bench recovery`).
//!
//! `monarch up --hold` runs a server chassis (two DPUs and a host that depends on them, or
//! the operator's topology); each trial SIGKILLs the running image of one secondary drawn at
//! random and times, as a client following the supervisor's events sees them:
//! - **detect**: from the kill to the supervisor's `lost` event;
//! - **recover**: from the kill to the secondary's RUNNING again (its image retrieved,
//!   delivered and verified afresh, its agent handing off).
//!
//! The reference, from the same run: the delivery of that image alone, as its stage timed
//! it (retrieve → RUNNING), for the first boot and each recovery.
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one trial may take before it counts as not ok.
const TRIAL_LIMIT: Duration = Duration::from_secs(60);

/// The built-in chassis of the bench: restarts unlimited and without back-off, so every
/// trial measures the recovery itself.
const SERVER: &str = r#"
[chassis]
name = "recovery-bench"
run_dir = "win"
state_dir = "state"

[defaults]
timeouts = { rendezvous = "30s", verify = "30s", handoff = "30s", agent = "60s" }
recovery = "restart"
max_restarts = 1000000
restart_window = "1s"
restart_backoff = "0s"
heartbeat = "100ms"
heartbeat_timeout = "5s"

[[processor]]
id = "bmc"
role = "monarch"

[[processor]]
id = "dpu0"
role = "secondary"
image = "builtin:payload"
image_size = "24MiB"
banner = "dpu0: storage DPU up"

[[processor]]
id = "dpu1"
role = "secondary"
image = "builtin:payload"
image_size = "24MiB"
banner = "dpu1: network DPU up"

[[processor]]
id = "host"
role = "secondary"
image = "builtin:payload"
image_size = "24MiB"
banner = "host up"
power = "main"
requires = ["dpu0"]
wants = ["dpu1"]
wait = "5s"
"#;

/// Why the bench gave no figures.
#[derive(Debug)]
pub enum RecoveryError {
    /// The topology given is not one the bench can use.
    BadInput(String),
    /// The chassis could not be started or booted.
    Failed(String),
}

/// What `monarch bench recovery` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryBench {
    /// Trials run.
    pub trials: usize,
    /// Trials where the killed secondary was detected and RUNNING again, with a new image
    /// process, and no other secondary was lost meanwhile.
    pub ok: usize,
    /// Kill → `lost`, 50th percentile (ms).
    pub detect_p50_ms: f64,
    /// … 99th percentile.
    pub detect_p99_ms: f64,
    /// Kill → RUNNING again, 50th percentile (ms).
    pub recover_p50_ms: f64,
    /// … 99th percentile.
    pub recover_p99_ms: f64,
    /// Reference: one image's delivery alone (its stage, retrieve → RUNNING), 50th
    /// percentile over the deliveries of the recoveries (ms). The first boot's are left out:
    /// their stages include waiting for main power and dependencies.
    pub deliver_p50_ms: f64,
    /// … 99th percentile.
    pub deliver_p99_ms: f64,
    /// Secondaries in the chassis.
    pub secondaries: usize,
    /// The trials that were not ok, with why.
    pub failures: Vec<String>,
}

/// `monarch up --hold --json` running, its events arriving with the time they arrived.
struct Held {
    exe: PathBuf,
    child: Child,
    events: mpsc::Receiver<(Instant, Value)>,
    socket: PathBuf,
    /// Last pid launched for each secondary (the agent, which becomes the image).
    pids: HashMap<String, u32>,
    /// Stage times of the deliveries seen (while `counting`).
    delivered_ms: Vec<f64>,
    counting: bool,
    /// Secondaries the supervisor reported lost since this was last cleared.
    lost: Vec<String>,
}

impl Held {
    fn start(exe: &Path, topology: &Path) -> Result<Held, String> {
        let mut child = Command::new(exe)
            .args(["up", "--hold", "--json", "--topology"])
            .arg(topology)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {} up --hold: {e}", exe.display()))?;
        let out = child.stdout.take().ok_or("no standard output from monarch up")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send((Instant::now(), v));
                }
            }
        });
        let mut held = Held {
            exe: exe.to_path_buf(),
            child,
            events: rx,
            socket: PathBuf::new(),
            pids: HashMap::new(),
            delivered_ms: Vec::new(),
            counting: false,
            lost: Vec::new(),
        };
        // Its control socket, as it says (a temporary run folder is named after its pid).
        match held.until(TRIAL_LIMIT, &|e| e["event"] == "supervising") {
            Ok((_, e)) => {
                held.socket = PathBuf::from(e["socket"].as_str().unwrap_or_default());
                Ok(held)
            }
            Err(e) => {
                held.stop();
                Err(format!("monarch up --hold did not start supervising: {e}"))
            }
        }
    }

    /// The next event matching `pred`, within `limit` (every event seen is noted).
    fn until(&mut self, limit: Duration, pred: &dyn Fn(&Value) -> bool) -> Result<(Instant, Value), String> {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let (at, v) = self.events.recv_timeout(left).map_err(|_| "the chassis went quiet".to_string())?;
            let id = v["id"].as_str().unwrap_or("").to_string();
            match v["event"].as_str() {
                Some("launched") => {
                    if let Some(pid) = v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
                        self.pids.insert(id, pid);
                    }
                }
                Some("done") if v["state"] == "running" && self.counting => {
                    if let Some(ms) = v["ms"].as_f64() {
                        self.delivered_ms.push(ms);
                    }
                }
                Some("lost") => self.lost.push(id.clone()),
                Some("summary") => return Err("the chassis stopped".into()),
                _ => {}
            }
            if pred(&v) {
                return Ok((at, v));
            }
        }
    }

    fn stop(mut self) {
        let _ = Command::new(&self.exe)
            .args(["shutdown", "--force", "--socket"])
            .arg(&self.socket)
            .stdout(Stdio::null())
            .status();
        let end = Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the bench: `trials` kills of a random secondary's image under `monarch up --hold` of
/// `topology` (default: the built-in server chassis). `progress` hears each trial.
pub fn bench(
    exe: &Path,
    topology: Option<&Path>,
    trials: usize,
    progress: &mut dyn FnMut(usize, &str),
) -> Result<RecoveryBench, RecoveryError> {
    let dir = tempfile::tempdir()
        .map_err(|e| RecoveryError::Failed(format!("cannot make a temporary folder: {e}")))?;
    let topo = match topology {
        Some(t) => t.to_path_buf(),
        None => {
            let p = dir.path().join("server.toml");
            std::fs::write(&p, SERVER)
                .map_err(|e| RecoveryError::Failed(format!("cannot write {}: {e}", p.display())))?;
            p
        }
    };
    let parsed =
        monarch_boot::topology::Topology::load(&topo).map_err(|e| RecoveryError::BadInput(e.to_string()))?;
    if parsed.managers.len() != 1 {
        return Err(RecoveryError::BadInput(format!(
            "{}: bench recovery needs a topology with one management processor (role = \"monarch\")",
            topo.display()
        )));
    }
    let ids: Vec<String> = parsed.secondaries.iter().map(|s| s.id.clone()).collect();
    let mut held = Held::start(exe, &topo).map_err(RecoveryError::Failed)?;
    let boot = (|| {
        let mut ready = std::collections::HashSet::new();
        while ready.len() < ids.len() {
            let (_, e) = held.until(TRIAL_LIMIT, &|e| e["event"] == "ready")?;
            ready.insert(e["id"].as_str().unwrap_or("").to_string());
        }
        Ok::<(), String>(())
    })();
    if let Err(e) = boot {
        held.stop();
        return Err(RecoveryError::Failed(format!("the chassis did not boot: {e}")));
    }
    held.counting = true;
    let (mut detect, mut recover) = (Vec::new(), Vec::new());
    let mut failures = Vec::new();
    let mut ok = 0;
    for i in 0..trials {
        let id = ids[fastrand::usize(..ids.len())].clone();
        let r = one(&mut held, &id);
        match r {
            Ok((d, r)) => {
                ok += 1;
                detect.push(d);
                recover.push(r);
                progress(i, &format!("killed {id}: detected in {d:.1} ms, RUNNING again in {r:.1} ms"));
            }
            Err(e) => {
                progress(i, &format!("killed {id}: NOT OK: {e}"));
                failures.push(format!("trial {i} ({id}): {e}"));
            }
        }
    }
    let delivered = held.delivered_ms.clone();
    held.stop();
    Ok(RecoveryBench {
        trials,
        ok,
        detect_p50_ms: pct(&detect, 50),
        detect_p99_ms: pct(&detect, 99),
        recover_p50_ms: pct(&recover, 50),
        recover_p99_ms: pct(&recover, 99),
        deliver_p50_ms: pct(&delivered, 50),
        deliver_p99_ms: pct(&delivered, 99),
        secondaries: ids.len(),
        failures,
    })
}

/// One trial: kill `id`'s image; (detect ms, recover ms).
fn one(held: &mut Held, id: &str) -> Result<(f64, f64), String> {
    let pid = *held.pids.get(id).ok_or("no pid known for it")?;
    held.lost.clear();
    let killed = Instant::now();
    monarch_drivers::host::signal(pid, rustix::process::Signal::KILL);
    let want = id.to_string();
    let (lost_at, _) = held.until(TRIAL_LIMIT, &|e| e["event"] == "lost" && e["id"] == want.as_str())?;
    let (up_at, _) = held.until(TRIAL_LIMIT, &|e| {
        e["event"] == "done" && e["id"] == want.as_str() && e["state"] == "running"
    })?;
    held.until(TRIAL_LIMIT, &|e| e["event"] == "ready" && e["id"] == want.as_str())?;
    if held.pids.get(id) == Some(&pid) {
        return Err("RUNNING again with the same process: it was not restarted".into());
    }
    if let Some(other) = held.lost.iter().find(|l| l.as_str() != id) {
        return Err(format!("{other} was lost too"));
    }
    let ms = |t: Instant| t.duration_since(killed).as_secs_f64() * 1e3;
    Ok((ms(lost_at), ms(up_at)))
}

/// Nearest rank: the smallest value with at least `p` percent at or below it.
fn pct(v: &[f64], p: usize) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n => v[(n * p).div_ceil(100).clamp(1, n) - 1],
    }
}

/// For people.
pub fn render(r: &RecoveryBench) -> String {
    let mut s = format!(
        "\nmonarch bench recovery: {} trials, {} ok ({} secondaries, a random one's image SIGKILLed each trial)\n",
        r.trials, r.ok, r.secondaries
    );
    s.push_str(&format!(
        "  detect   (kill → the supervisor's lost event):  p50 {:>7.1} ms   p99 {:>7.1} ms\n",
        r.detect_p50_ms, r.detect_p99_ms
    ));
    s.push_str(&format!(
        "  recover  (kill → RUNNING again, delivered and verified afresh):  p50 {:>7.1} ms   p99 {:>7.1} ms\n",
        r.recover_p50_ms, r.recover_p99_ms
    ));
    s.push_str(&format!(
        "  reference: one image's delivery alone (retrieve → RUNNING):  p50 {:>7.1} ms   p99 {:>7.1} ms  (recover/deliver p50 {:.2}×)\n",
        r.deliver_p50_ms,
        r.deliver_p99_ms,
        if r.deliver_p50_ms > 0.0 { r.recover_p50_ms / r.deliver_p50_ms } else { 0.0 }
    ));
    for f in &r.failures {
        s.push_str(&format!("  {f}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((pct(&v, 50) - 50.0).abs() < f64::EPSILON);
        assert!((pct(&v, 99) - 99.0).abs() < f64::EPSILON);
        assert!((pct(&[3.0], 99) - 3.0).abs() < f64::EPSILON);
        assert!(pct(&[], 50).abs() < f64::EPSILON);
    }

    #[test]
    fn the_built_in_chassis_resolves() {
        let t =
            monarch_boot::topology::Topology::parse(SERVER, Path::new("s.toml"), Path::new("/tmp")).unwrap();
        assert_eq!(t.secondaries.len(), 3);
        assert_eq!(t.secondaries[0].life.restart_backoff, Duration::ZERO);
    }
}
