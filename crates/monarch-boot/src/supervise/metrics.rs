//! Prometheus metrics of a supervised chassis (`monarch up --hold --metrics ADDR`): what the
//! supervisor knows, served at `/metrics` by [`crate::metrics::serve`].
//!
//! Counters and histograms follow the event stream (every event the supervisor sees goes
//! through [`Metrics::observe`]); gauges (state, readiness, heartbeat age, main power, epoch)
//! are set by the supervisor on each turn.
use crate::events::{Event, EventKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Every state a secondary can be in, as `monarch status` names them.
pub const STATES: &[&str] = &["booting", "running", "restarting", "shut_down", "failed", "off"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Id {
    id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdState {
    id: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdPhase {
    id: String,
    phase: String,
}

/// Boot phase durations' buckets, in seconds: 1 ms to about 33 s, doubling.
fn phase_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16)
}

/// The metrics of one chassis.
pub struct Metrics {
    registry: Registry,
    state: Family<IdState, Gauge>,
    ready: Family<Id, Gauge>,
    restarts: Family<Id, Counter>,
    heartbeat_age: Family<Id, Gauge<f64, AtomicU64>>,
    phase: Family<IdPhase, Histogram>,
    bytes: Family<Id, Counter>,
    attempts: Family<Id, Counter>,
    mismatches: Family<Id, Counter>,
    repaired: Family<Id, Counter>,
    lost: Family<Id, Counter>,
    failovers: Counter,
    epoch: Gauge,
    main_power: Gauge,
}

impl Metrics {
    /// The metrics of a chassis whose secondaries are `ids`: every series exists from the
    /// start (a counter that never moved reads 0, not "no data").
    pub fn new(ids: &[String]) -> Metrics {
        let mut registry = Registry::with_prefix("monarch");
        let m = Metrics {
            state: Family::default(),
            ready: Family::default(),
            restarts: Family::default(),
            heartbeat_age: Family::default(),
            phase: Family::new_with_constructor(|| Histogram::new(phase_buckets())),
            bytes: Family::default(),
            attempts: Family::default(),
            mismatches: Family::default(),
            repaired: Family::default(),
            lost: Family::default(),
            failovers: Counter::default(),
            epoch: Gauge::default(),
            main_power: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "processor_state",
            "1 for the state each secondary is in (booting, running, restarting, shut_down, failed, off), 0 for the others",
            m.state.clone(),
        );
        registry.register(
            "processor_ready",
            "1 while the secondary's image says its services are up",
            m.ready.clone(),
        );
        registry.register(
            "processor_restarts",
            "Restarts after a crash, a stall or a fault",
            m.restarts.clone(),
        );
        registry.register(
            "processor_lost",
            "Running images lost (exited, killed, stalled, faulted)",
            m.lost.clone(),
        );
        registry.register(
            "processor_heartbeat_age_seconds",
            "Time since the running image's last heartbeat",
            m.heartbeat_age.clone(),
        );
        registry.register(
            "boot_phase_seconds",
            "Duration of each boot phase of each secondary (retrieve, configure, rendezvous, copy, verify, handoff, total)",
            m.phase.clone(),
        );
        registry.register(
            "delivered_bytes",
            "Image bytes copied into the secondary's window",
            m.bytes.clone(),
        );
        registry.register(
            "attempts",
            "Copy attempts (a checksum mismatch makes another)",
            m.attempts.clone(),
        );
        registry.register(
            "checksum_mismatches",
            "Attempts whose written checksum did not match the retrieved one",
            m.mismatches.clone(),
        );
        registry.register(
            "repaired_chunks",
            "Chunks that failed their digest and were sent again alone",
            m.repaired.clone(),
        );
        registry.register("failovers", "Monarch failovers of this chassis", m.failovers.clone());
        registry.register("epoch", "The epoch of the monarch that supervises the chassis", m.epoch.clone());
        registry.register("main_power", "1 while the main power domain is on", m.main_power.clone());
        let mut m = m;
        m.registry = registry;
        for id in ids {
            let l = Id { id: id.clone() };
            for family in [&m.restarts, &m.bytes, &m.attempts, &m.mismatches, &m.repaired, &m.lost] {
                let _ = family.get_or_create(&l);
            }
            let _ = m.ready.get_or_create(&l);
            m.set_state(id, "booting");
        }
        m
    }

    /// Count what an event says.
    pub fn observe(&self, ev: &Event) {
        let id = |s: &str| Id { id: s.to_string() };
        match &ev.kind {
            EventKind::Copied { id: i, bytes, .. } => {
                self.bytes.get_or_create(&id(i)).inc_by(*bytes);
                self.attempts.get_or_create(&id(i)).inc();
            }
            EventKind::Mismatch { id: i, .. } => {
                self.mismatches.get_or_create(&id(i)).inc();
            }
            EventKind::Repaired { id: i, .. } => {
                self.repaired.get_or_create(&id(i)).inc();
            }
            EventKind::Restarting { id: i, .. } => {
                self.restarts.get_or_create(&id(i)).inc();
            }
            EventKind::Lost { id: i, .. } => {
                self.lost.get_or_create(&id(i)).inc();
            }
            EventKind::Failover { epoch, .. } => {
                self.failovers.inc();
                self.epoch.set(i64::from(*epoch));
            }
            EventKind::Elected { epoch, .. } => {
                self.epoch.set(i64::from(*epoch));
            }
            _ => {}
        }
    }

    /// Record the phase durations of a finished stage (its summary's timings, in ms).
    pub fn phases(&self, id: &str, t: &crate::events::Timings) {
        for (phase, ms) in [
            ("retrieve", t.retrieve),
            ("configure", t.configure),
            ("rendezvous", t.rendezvous),
            ("copy", t.copy),
            ("verify", t.verify),
            ("handoff", t.handoff),
            ("total", t.total),
        ] {
            if ms > 0.0 {
                let l = IdPhase { id: id.to_string(), phase: phase.to_string() };
                self.phase.get_or_create(&l).observe(ms / 1e3);
            }
        }
    }

    /// The state of secondary `id` now (one series per state, 1 for this one).
    pub fn set_state(&self, id: &str, state: &str) {
        for s in STATES {
            let l = IdState { id: id.to_string(), state: (*s).to_string() };
            self.state.get_or_create(&l).set(i64::from(*s == state));
        }
    }

    /// Its readiness and the age of its last heartbeat (`None`: no image beats now).
    pub fn set_life(&self, id: &str, ready: bool, heartbeat_age: Option<f64>) {
        let l = Id { id: id.to_string() };
        self.ready.get_or_create(&l).set(i64::from(ready));
        match heartbeat_age {
            Some(age) => {
                self.heartbeat_age.get_or_create(&l).set(age);
            }
            None => {
                self.heartbeat_age.remove(&l);
            }
        }
    }

    /// Main power and the supervising monarch's epoch.
    pub fn set_chassis(&self, main_power: bool, epoch: u32) {
        self.main_power.set(i64::from(main_power));
        self.epoch.set(i64::from(epoch));
    }
}

impl crate::metrics::Exposition for Metrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::events::Timings;
    use crate::metrics::Exposition as _;

    fn ev(kind: EventKind) -> Event {
        Event { t_ms: 1.0, kind }
    }

    #[test]
    fn events_move_the_counters_and_every_series_exists_from_the_start() {
        let m = Metrics::new(&["dpu0".into(), "host".into()]);
        let text = m.render();
        assert!(text.contains("monarch_processor_restarts_total{id=\"host\"} 0"), "{text}");
        assert!(text.contains("monarch_processor_state{id=\"dpu0\",state=\"booting\"} 1"), "{text}");
        m.observe(&ev(EventKind::Copied { id: "dpu0".into(), attempt: 1, bytes: 4096, ms: 1.0 }));
        m.observe(&ev(EventKind::Restarting { id: "dpu0".into(), restart: 1, after_ms: 0.0 }));
        m.set_state("dpu0", "running");
        m.set_life("dpu0", true, Some(0.05));
        m.phases("dpu0", &Timings { copy: 12.0, total: 80.0, ..Timings::default() });
        let text = m.render();
        for want in [
            "monarch_delivered_bytes_total{id=\"dpu0\"} 4096",
            "monarch_attempts_total{id=\"dpu0\"} 1",
            "monarch_processor_restarts_total{id=\"dpu0\"} 1",
            "monarch_processor_state{id=\"dpu0\",state=\"running\"} 1",
            "monarch_processor_state{id=\"dpu0\",state=\"booting\"} 0",
            "monarch_processor_ready{id=\"dpu0\"} 1",
            "monarch_processor_heartbeat_age_seconds{id=\"dpu0\"} 0.05",
            "monarch_boot_phase_seconds_count{id=\"dpu0\",phase=\"copy\"} 1",
        ] {
            assert!(text.contains(want), "no {want} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        let old = m.render_text();
        assert!(old.contains("# TYPE monarch_attempts_total counter\n"), "{old}");
        assert!(old.contains("# HELP monarch_attempts_total Copy attempts"), "{old}");
        assert!(old.contains("# TYPE monarch_processor_ready gauge\n"), "{old}");
        assert!(!old.contains("# EOF"));
    }
}
