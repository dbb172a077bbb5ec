//! The release gate: what a secondary waits for before it is released, shared by every stage
//! of a run and the supervisor that keeps the chassis.
//!
//! - **Power**: a secondary in the main power domain stays off (not even its agent starts)
//!   until main power is on: automatically once the aux domain is up, or by `monarch power
//!   on`.
//! - **Dependencies**: a secondary whose dependencies are not ready is held at its
//!   rendezvous (its agent runs and sees the hold word, like PCIe configuration retry) until
//!   every `requires` (and its `supervisor`) is RUNNING and ready, and every `wants` is ready or its `wait` has
//!   passed. A required dependency that fails, or is not ready within `wait`, fails the
//!   dependent with a reason that names it; a wanted one that is not ready in time is left
//!   out, and the dependent runs degraded, told which through its window.
//!
//! The supervisor writes what it learns (running, ready, down, power) and the stages read it;
//! a condition variable wakes the waiting stages.

use crate::topology::{PowerDomain, Secondary, Topology};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why a secondary was not let go.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// The run stopped, or the caller's `stop` said to (the reason).
    #[error("{0}")]
    Stopped(String),
    /// The run stopped while main power was off.
    #[error("main power never came on: {0}")]
    NoMainPower(String),
    /// A requirement (or the supervisor) failed.
    #[error("{what} {dep} failed: {why}")]
    Failed {
        /// "required dependency" or "its supervisor".
        what: &'static str,
        /// Its id.
        dep: String,
        /// Why it failed.
        why: String,
    },
    /// A requirement (or the supervisor) was not ready within the secondary's `wait`.
    #[error("{what} {dep} was not ready within {} (its `wait`)", humantime::format_duration(*wait))]
    NotReady {
        /// "required dependency" or "its supervisor".
        what: &'static str,
        /// Its id.
        dep: String,
        /// The secondary's `wait`.
        wait: Duration,
    },
}

/// Where a secondary stands, as far as the ones that depend on it care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Avail {
    /// Not up yet (off, booting, restarting).
    Pending,
    /// Its image runs; its services are not up yet.
    Running,
    /// Its services are up.
    Ready,
    /// It failed or was taken down; the reason.
    Down(String),
}

#[derive(Debug)]
struct State {
    avail: HashMap<String, Avail>,
    main_power: bool,
    /// The run is stopping: every wait ends.
    closing: Option<String>,
}

/// The shared gate of one run.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
    changed: Condvar,
    /// The chassis is supervised after boot (`monarch up --hold`): images heartbeat.
    pub supervised: bool,
}

/// What a dependency gate decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    /// The wanted dependencies it goes on without (degraded).
    pub without: Vec<String>,
}

impl Gate {
    /// A gate for `topology`: every secondary pending, main power off.
    pub fn new(topology: &Topology, supervised: bool) -> Gate {
        let avail = topology.secondaries.iter().map(|s| (s.id.clone(), Avail::Pending)).collect();
        Gate {
            state: Mutex::new(State { avail, main_power: false, closing: None }),
            changed: Condvar::new(),
            supervised,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Record where secondary `id` stands, and wake the waiters.
    pub fn set(&self, id: &str, avail: Avail) {
        self.lock().avail.insert(id.to_string(), avail);
        self.changed.notify_all();
    }

    /// Where secondary `id` stands.
    pub fn avail(&self, id: &str) -> Avail {
        self.lock().avail.get(id).cloned().unwrap_or(Avail::Pending)
    }

    /// Turn main power on or off.
    pub fn set_main_power(&self, on: bool) {
        self.lock().main_power = on;
        self.changed.notify_all();
    }

    /// Whether main power is on.
    pub fn main_power(&self) -> bool {
        self.lock().main_power
    }

    /// End every wait: the run stops (`why` is what the waiting stages fail with).
    pub fn close(&self, why: &str) {
        self.lock().closing.get_or_insert_with(|| why.to_string());
        self.changed.notify_all();
    }

    /// Wait until `sec` is powered: at once in the aux domain; in the main domain, until
    /// main power is on. `on_wait` is called once if it has to wait; `stop` is polled (the
    /// operator's stop, a lost election) and ends the wait with its reason.
    pub fn power(
        &self,
        sec: &Secondary,
        on_wait: &mut dyn FnMut(),
        stop: &dyn Fn() -> Option<String>,
    ) -> Result<(), GateError> {
        if sec.life.power == PowerDomain::Aux {
            return Ok(());
        }
        let mut said = false;
        let mut st = self.lock();
        loop {
            if let Some(why) = &st.closing {
                return Err(GateError::NoMainPower(why.clone()));
            }
            if st.main_power {
                return Ok(());
            }
            if let Some(why) = stop() {
                return Err(GateError::Stopped(why));
            }
            if !std::mem::replace(&mut said, true) {
                drop(st);
                on_wait();
                st = self.lock();
                continue;
            }
            st = self.wait(st, Duration::from_millis(100));
        }
    }

    /// Wait until `sec`'s dependencies let it go (see the module's rules). `on_wait` gets
    /// the ids still awaited, once, if it has to wait.
    pub fn dependencies(
        &self,
        sec: &Secondary,
        on_wait: &mut dyn FnMut(&[String]),
        stop: &dyn Fn() -> Option<String>,
    ) -> Result<Passed, GateError> {
        let start = Instant::now();
        let wait = sec.life.wait;
        let mut said = false;
        let mut st = self.lock();
        loop {
            if let Some(why) = &st.closing {
                return Err(GateError::Stopped(why.clone()));
            }
            let late = start.elapsed() >= wait;
            let mut awaited = Vec::new();
            let hard = sec.life.requires.iter().map(|d| (d, "required dependency"));
            for (dep, what) in hard.chain(sec.life.supervisor.iter().map(|d| (d, "its supervisor"))) {
                match st.avail.get(dep).unwrap_or(&Avail::Pending) {
                    Avail::Ready => {}
                    Avail::Down(why) => {
                        return Err(GateError::Failed { what, dep: dep.clone(), why: why.clone() });
                    }
                    Avail::Running | Avail::Pending if late => {
                        return Err(GateError::NotReady { what, dep: dep.clone(), wait });
                    }
                    Avail::Running | Avail::Pending => awaited.push(dep.clone()),
                }
            }
            let mut without = Vec::new();
            for dep in &sec.life.wants {
                match st.avail.get(dep).unwrap_or(&Avail::Pending) {
                    Avail::Ready => {}
                    Avail::Down(_) => without.push(dep.clone()),
                    Avail::Running | Avail::Pending if late => without.push(dep.clone()),
                    Avail::Running | Avail::Pending => awaited.push(dep.clone()),
                }
            }
            if awaited.is_empty() {
                return Ok(Passed { without });
            }
            if let Some(why) = stop() {
                return Err(GateError::Stopped(why));
            }
            if !std::mem::replace(&mut said, true) {
                drop(st);
                on_wait(&awaited);
                st = self.lock();
                continue;
            }
            let left = wait.saturating_sub(start.elapsed());
            st = self.wait(st, left.min(Duration::from_millis(100)).max(Duration::from_millis(1)));
        }
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>, d: Duration) -> MutexGuard<'a, State> {
        match self.changed.wait_timeout(st, d) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::topology::Topology;
    use std::path::Path;

    const TWO_DPUS: &str = r#"
[chassis]
name = "t"
[[processor]]
id = "bmc"
role = "monarch"
[[processor]]
id = "dpu0"
role = "secondary"
image = "builtin:payload"
[[processor]]
id = "dpu1"
role = "secondary"
image = "builtin:payload"
[[processor]]
id = "host"
role = "secondary"
image = "builtin:payload"
"#;

    fn topo(wait: Duration) -> Topology {
        let mut t = Topology::parse(TWO_DPUS, Path::new("t.toml"), Path::new("/tmp")).unwrap();
        let host = t.secondaries.iter_mut().find(|s| s.id == "host").unwrap();
        host.life.requires = vec!["dpu0".into()];
        host.life.wants = vec!["dpu1".into()];
        host.life.wait = wait;
        host.life.power = PowerDomain::Main;
        t
    }

    fn host(t: &Topology) -> &Secondary {
        t.secondaries.iter().find(|s| s.id == "host").unwrap()
    }

    #[test]
    fn a_dependent_waits_for_its_required_dependency_and_goes_on_without_a_late_wanted_one() {
        let t = topo(Duration::from_millis(300));
        let g = Gate::new(&t, false);
        g.set("dpu0", Avail::Running);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let mut awaited = Vec::new();
                let r = g.dependencies(host(&t), &mut |a| awaited = a.to_vec(), &|| None);
                (r, awaited)
            });
            std::thread::sleep(Duration::from_millis(50));
            g.set("dpu0", Avail::Ready);
            let (r, awaited) = waiter.join().unwrap();
            assert_eq!(awaited, vec!["dpu0".to_string(), "dpu1".to_string()]);
            assert_eq!(r, Ok(Passed { without: vec!["dpu1".into()] }));
        });
    }

    #[test]
    fn a_failed_or_never_ready_requirement_fails_the_dependent_naming_it() {
        let t = topo(Duration::from_millis(100));
        let g = Gate::new(&t, false);
        g.set("dpu0", Avail::Down("its image exited".into()));
        let e = g.dependencies(host(&t), &mut |_| {}, &|| None).unwrap_err().to_string();
        assert!(e.contains("dpu0") && e.contains("its image exited"), "{e}");
        g.set("dpu0", Avail::Running);
        let e = g.dependencies(host(&t), &mut |_| {}, &|| None).unwrap_err().to_string();
        assert!(e.contains("dpu0") && e.contains("not ready within"), "{e}");
    }

    #[test]
    fn main_power_holds_main_domain_processors_until_it_is_on() {
        let t = topo(Duration::from_secs(1));
        let g = Gate::new(&t, false);
        let dpu0 = &t.secondaries[0];
        assert_eq!(g.power(dpu0, &mut || panic!("aux never waits"), &|| None), Ok(()));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let mut waited = false;
                let r = g.power(host(&t), &mut || waited = true, &|| None);
                (r, waited)
            });
            std::thread::sleep(Duration::from_millis(30));
            g.set_main_power(true);
            assert_eq!(waiter.join().unwrap(), (Ok(()), true));
        });
        g.set_main_power(false);
        g.close("shut down");
        assert!(g.power(host(&t), &mut || {}, &|| None).unwrap_err().to_string().contains("shut down"));
    }
}
