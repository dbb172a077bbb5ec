//! What the Redfish service remembers of the supervisor's events: a bounded log per
//! processor (and one for the chassis-wide events, under the monarch's manager), when each
//! processor's image last came up, and the live stream for Server-Sent Events.

use crate::events::{Event, EventKind};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;
use tokio::sync::broadcast;

/// Entries kept per log (older ones are dropped: the log wraps).
pub const KEEP: usize = 1000;

/// One remembered event.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its number, unique in the service's life.
    pub n: u64,
    /// When it was seen (RFC 3339, UTC).
    pub created: String,
    /// `OK`, `Warning` or `Critical`.
    pub severity: &'static str,
    /// For a person.
    pub message: String,
}

/// A streamed event: its number, the processor it is about (none: the chassis), and the
/// Redfish Event document's parts.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// Number.
    pub n: u64,
    /// The processor.
    pub id: Option<String>,
    /// The entry.
    pub entry: Entry,
    /// The supervisor's event as it is (`monarch up --json`).
    pub raw: Value,
}

#[derive(Default)]
struct Inner {
    next: u64,
    logs: HashMap<Option<String>, VecDeque<Entry>>,
    running_since: HashMap<String, String>,
}

/// The service's memory of events.
pub struct Journal {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<Streamed>>,
}

impl Default for Journal {
    fn default() -> Self {
        Journal { inner: Mutex::new(Inner { next: 1, ..Inner::default() }), live: broadcast::channel(1024).0 }
    }
}

/// Now, for `Created` and `LastStateTime`.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// How serious an event is.
fn severity(k: &EventKind) -> &'static str {
    match k {
        EventKind::Done { error: Some(_), .. } | EventKind::GaveUp { .. } => "Critical",
        EventKind::Down { state, .. } if state == "failed" => "Critical",
        EventKind::Lost { .. }
        | EventKind::Mismatch { .. }
        | EventKind::Repaired { .. }
        | EventKind::Failover { .. }
        | EventKind::Stalled { .. }
        | EventKind::Overridden { .. } => "Warning",
        EventKind::Answer { answer, .. } if answer == "defer" => "Warning",
        _ => "OK",
    }
}

impl Journal {
    /// Remember an event and stream it.
    pub fn observe(&self, ev: &Event) {
        if matches!(ev.kind, EventKind::Summary(_)) {
            return;
        }
        let id = ev.kind.id().map(str::to_string);
        let created = now();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let n = inner.next;
        inner.next += 1;
        if let (Some(id), EventKind::Done { state, .. }) = (&id, &ev.kind)
            && state == "running"
        {
            inner.running_since.insert(id.clone(), created.clone());
        }
        let entry = Entry { n, created, severity: severity(&ev.kind), message: ev.kind.describe() };
        let log = inner.logs.entry(id.clone()).or_default();
        if log.len() == KEEP {
            log.pop_front();
        }
        log.push_back(entry.clone());
        drop(inner);
        let raw = serde_json::to_value(ev).unwrap_or(Value::Null);
        // Nobody listening is not an error.
        let _ = self.live.send(Arc::new(Streamed { n, id, entry, raw }));
    }

    /// The log of a processor (`None`: the chassis-wide events).
    pub fn log(&self, id: Option<&str>) -> Vec<Entry> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.logs.get(&id.map(str::to_string)).map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }

    /// When a processor's image last came up (delivered, verified and running).
    pub fn running_since(&self, id: &str) -> Option<String> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).running_since.get(id).cloned()
    }

    /// The live stream, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Streamed>> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind) -> Event {
        Event { t_ms: 1.0, kind }
    }

    #[test]
    fn events_go_to_their_processors_log_and_the_stream() {
        let j = Journal::default();
        let mut rx = j.subscribe();
        j.observe(&ev(EventKind::Ready { id: "dpu0".into() }));
        j.observe(&ev(EventKind::Request { what: "reboot dpu0".into() }));
        j.observe(&ev(EventKind::Lost { id: "dpu0".into(), cause: "its image exited with status 3".into() }));
        let log = j.log(Some("dpu0"));
        assert_eq!(log.len(), 2);
        assert_eq!(log[1].severity, "Warning");
        assert!(log[1].message.contains("exited with status 3"), "{}", log[1].message);
        assert_eq!(j.log(None).len(), 1, "the operator's request is chassis-wide");
        let first = rx.try_recv().expect("streamed");
        assert_eq!((first.n, first.id.as_deref()), (1, Some("dpu0")));
    }

    #[test]
    fn a_log_wraps_when_full() {
        let j = Journal::default();
        for _ in 0..KEEP + 5 {
            j.observe(&ev(EventKind::Ready { id: "a".into() }));
        }
        let log = j.log(Some("a"));
        assert_eq!(log.len(), KEEP);
        assert_eq!(log[0].n, 6);
    }
}
