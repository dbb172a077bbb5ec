//! The monarch election on etcd, for candidates on machines that share no backplane
//! (monarch election across machines; feature `etcd`).
//!
//! Each candidate connects to etcd and campaigns in one election per boot (keys under
//! `monarch/CHASSIS/SESSION/`). etcd's election queues campaigners by arrival, so the reference design's
//! rules decide the order of arrival: a candidate that failed its self-test never campaigns,
//! and the others campaign [`STAGGER`] apart in the order [`monarch_proto::election::arbitrate`]
//! ranks them (the pinned one, then the highest BOOT_ID, then the lowest slot). The leader is
//! monarch; its epoch is its leader key's create revision, which grows with every new leader.
//!
//! A monarch that dies stops renewing its lease; etcd deletes its key when the lease runs
//! out and the next in the queue leads, takes the boot over from the windows (see
//! the election module) and records itself. A monarch cut off from etcd proves locally that
//! its lease still lives ([`monarch_etcd::Leadership::check`]) and stops acting *before* the
//! server could let anyone else in; then it campaigns again. Only the leader can write the
//! boot's records (one transaction guarded by its leader key): `monarch` (who reigns, for a
//! successor to name) and `done` (the boot is over: serfs leave). A candidate that cannot
//! reach etcd for `[election] etcd_timeout` gives the boot up with an error that names etcd.

use super::candidate::{self, CandidateOptions, CandidateOutcome, Takeover};
use crate::events::EventKind;
use crate::topology::EtcdElection;
use monarch_etcd::{Candidate, Config, Error, Leadership, RecordError};
use monarch_proto::election::{self as el, Health};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// Between the campaigns of consecutive ranks: long enough for etcd to have queued the
/// previous one (a loopback round trip is well under a millisecond; a LAN a few).
pub const STAGGER: Duration = Duration::from_millis(300);

/// How often a waiting candidate looks at etcd (is the boot done, who leads, is etcd there).
const POLL: Duration = Duration::from_millis(100);

/// The keys of one boot.
struct Keys {
    election: String,
    monarch: String,
    done: String,
}

impl Keys {
    fn new(chassis: &str, session: &str) -> Keys {
        let base = format!("monarch/{chassis}/{session}");
        Keys {
            election: format!("{base}/election"),
            monarch: format!("{base}/monarch"),
            done: format!("{base}/done"),
        }
    }
}

/// The healthy candidates in the order the reference design's arbitration ranks them.
pub fn arbitration_order(table: &[el::Candidate], pinned: Option<usize>) -> Vec<usize> {
    let mut left = table.to_vec();
    let mut order = Vec::new();
    while let Some(v) = el::arbitrate(&left, pinned.filter(|p| !order.contains(p))) {
        order.push(v.winner);
        if let Some(c) = left.iter_mut().find(|c| c.index == v.winner) {
            c.health = Health::Deposed;
        }
    }
    order
}

/// Run one candidate of an etcd election (see the module docs).
pub(crate) fn run_candidate(
    o: &CandidateOptions,
    e: &EtcdElection,
    emit: &mut dyn FnMut(EventKind),
) -> CandidateOutcome {
    let t = &o.plan.topology;
    let me = o.index;
    let mgr = &t.managers[me];
    if !candidate::announce(o, emit) {
        return CandidateOutcome::Deconfigured;
    }
    let table = t.candidates();
    let pinned = o.pinned.or(t.election.pinned);
    let order = arbitration_order(&table, pinned);
    let rank = order.iter().position(|k| *k == me).unwrap_or(order.len());
    let name = |k: usize| t.manager_name(k);
    let keys = Keys::new(&t.name, &o.session);
    let cfg = Config::new(e.endpoints.clone(), keys.election.clone(), mgr.id.clone()).with_ttl(e.ttl);
    let started = Instant::now();
    let etcd = loop {
        match Candidate::connect(cfg.clone()) {
            Ok(c) => break Arc::new(c),
            Err(Error::Unreachable { .. }) if started.elapsed() < e.timeout => std::thread::sleep(POLL * 5),
            Err(err) => return CandidateOutcome::Failed(gave_up(&err.to_string(), e)),
        }
    };
    // The reference design's order of arrival in etcd's queue, counted from when etcd answered (so a
    // late etcd does not let everyone in at once).
    std::thread::sleep(STAGGER * u32::try_from(rank).unwrap_or(u32::MAX));
    // A reign of ours that booted everything but stood down while marking the boot done, its
    // epoch and outcome: that mark may still land, late (etcd applies a request it received
    // before it stopped answering), and then that reign finished the boot.
    let mut unmarked: Option<(u32, bool)> = None;
    let finished_late = |unmarked: Option<(u32, bool)>, emit: &mut dyn FnMut(EventKind)| {
        let (epoch, ok) = unmarked?;
        let done = etcd.read(&keys.done).ok().flatten()?;
        (done == format!("{epoch} {ok}")).then(|| {
            emit(EventKind::Finished { id: mgr.id.clone(), epoch, ok });
            CandidateOutcome::Finished { ok }
        })
    };
    loop {
        let (leadership, last_seen) = match campaign(&etcd, &keys, e) {
            Campaign::Won(l, seen) => (*l, seen),
            Campaign::Done => return finished_late(unmarked, emit).unwrap_or(CandidateOutcome::Serf),
            Campaign::GaveUp(why) => return CandidateOutcome::Failed(why),
        };
        let Some(epoch) = u32::try_from(leadership.epoch()).ok().filter(|e| *e > 0) else {
            let revision = leadership.epoch();
            let _ = leadership.resign();
            return CandidateOutcome::Failed(format!(
                "etcd's revision {revision} does not fit the windows' 32-bit epoch register: elect on an etcd cluster of its own (a fresh one starts at revision 1)"
            ));
        };
        // Queued behind the monarch that finished: nothing left to do.
        if matches!(etcd.read(&keys.done), Ok(Some(_))) {
            let _ = leadership.resign();
            return finished_late(unmarked, emit).unwrap_or(CandidateOutcome::Serf);
        }
        let previous = match etcd.read(&keys.monarch) {
            Ok(p) => p,
            // etcd went away right after the win: campaign again (or give up in time); hand
            // the key back at once if etcd still hears us, not a TTL later.
            Err(_) => {
                let _ = leadership.resign();
                continue;
            }
        };
        if let Err(err) = leadership.record(&keys.monarch, &format!("{} {epoch}", mgr.id)) {
            emit(EventKind::StoodDown {
                id: mgr.id.clone(),
                epoch,
                why: err.to_string(),
                aborted: Vec::new(),
            });
            let _ = leadership.resign();
            continue;
        }
        let takeover = previous.map(|rec| {
            let from = rec.split_whitespace().next().unwrap_or("?").chars().take(64).collect::<String>();
            let detected = last_seen.filter(|(who, _)| *who == from).map_or_else(Instant::now, |(_, at)| at);
            Takeover { from, silent_ms: 0.0, detected }
        });
        let reason = match &takeover {
            Some(t) => format!("next in etcd's queue after {}'s lease ran out", t.from),
            None if rank == 0 => {
                el::arbitrate(&table, pinned).map_or_else(String::new, |v| v.describe(&name))
            }
            None => format!(
                "first to campaign in etcd ({} did not)",
                order[..rank.min(order.len())].iter().map(|k| name(*k)).collect::<Vec<_>>().join(", ")
            ),
        };
        let id = mgr.id.clone();
        let check = || {
            leadership.check().map(|_| ()).map_err(|lost| {
                format!("{id} is no longer monarch (epoch {epoch}): {lost}; it stopped acting")
            })
        };
        let Some(summary) = candidate::reign(o, epoch, reason, takeover, &check, emit) else {
            // Lost the lease (etcd out of reach, or paused): campaign again, resume if we win.
            continue;
        };
        // Mark the boot done, only while we lead; retry while etcd does not answer.
        loop {
            match leadership.record(&keys.done, &format!("{epoch} {}", summary.ok)) {
                Ok(()) => {
                    emit(EventKind::Finished { id: id.clone(), epoch, ok: summary.ok });
                    let _ = leadership.resign();
                    return CandidateOutcome::Finished { ok: summary.ok };
                }
                Err(RecordError::Lost(lost)) => {
                    emit(EventKind::StoodDown {
                        id: id.clone(),
                        epoch,
                        why: format!(
                            "{id} booted everything but lost its mandate before it could mark the boot done: {lost}"
                        ),
                        aborted: Vec::new(),
                    });
                    unmarked = Some((epoch, summary.ok));
                    break;
                }
                Err(RecordError::Etcd(_)) => std::thread::sleep(POLL),
            }
        }
    }
}

enum Campaign {
    /// We lead; the last leader we saw before, and when.
    Won(Box<Leadership>, Option<(String, Instant)>),
    /// The boot was marked done while we waited.
    Done,
    /// etcd stayed out of reach too long, or refused us.
    GaveUp(String),
}

/// Campaign (in a thread: it blocks until we lead) while watching etcd: the boot's `done`
/// record, who leads, and whether etcd answers at all.
fn campaign(etcd: &Arc<Candidate>, keys: &Keys, e: &EtcdElection) -> Campaign {
    let (tx, rx) = mpsc::channel();
    let c = Arc::clone(etcd);
    // If the boot ends first the process exits with this thread still queued; its lease
    // then runs out on its own.
    std::thread::spawn(move || {
        let _ = tx.send(c.campaign(None));
    });
    let mut last_seen: Option<(String, Instant)> = None;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        if let Some(sig) = crate::interrupt::received() {
            return Campaign::GaveUp(format!("interrupted by {sig}: stopped campaigning"));
        }
        match rx.recv_timeout(POLL) {
            Ok(Ok(l)) => return Campaign::Won(Box::new(l), last_seen),
            Ok(Err(err)) => return Campaign::GaveUp(gave_up(&err.to_string(), e)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Campaign::GaveUp("the campaign thread died".into());
            }
        }
        match etcd.read(&keys.done) {
            Ok(Some(_)) => return Campaign::Done,
            Ok(None) => unreachable_since = None,
            Err(err) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= e.timeout {
                    return Campaign::GaveUp(gave_up(&err.to_string(), e));
                }
            }
        }
        if let Ok(Some((who, _))) = etcd.leader() {
            last_seen = Some((who, Instant::now()));
        }
    }
}

fn gave_up(err: &str, e: &EtcdElection) -> String {
    format!(
        "{err}; no monarch can be elected without etcd, so this candidate gave the boot up after {} \
         (election.etcd_timeout): bring etcd back at {} and run the boot again",
        humantime::format_duration(e.timeout),
        e.endpoints.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: usize, slot: u32, boot_id: u32, health: Health) -> el::Candidate {
        el::Candidate { index, slot, boot_id, health }
    }

    #[test]
    fn campaigns_arrive_in_arbitration_order() {
        let t = [
            c(0, 0, 2, Health::Healthy),
            c(1, 6, 2, Health::Healthy),
            c(2, 3, 9, Health::FailedSelfTest),
            c(3, 4, 5, Health::Healthy),
        ];
        assert_eq!(arbitration_order(&t, None), vec![3, 0, 1], "BOOT_ID, then slot; never the failed one");
        assert_eq!(arbitration_order(&t, Some(1)), vec![1, 3, 0], "the pinned one first");
        assert_eq!(arbitration_order(&t, Some(2)), vec![3, 0, 1], "a pinned failed candidate is passed over");
    }

    #[test]
    fn keys_of_one_boot_live_apart_from_its_election() {
        let k = Keys::new("default", "17");
        assert_eq!(k.election, "monarch/default/17/election");
        assert!(
            !k.done.starts_with(&format!("{}/", k.election)),
            "a record under the election prefix would campaign"
        );
        assert!(!k.monarch.starts_with(&format!("{}/", k.election)));
    }
}
