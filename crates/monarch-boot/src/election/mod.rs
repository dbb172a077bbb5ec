//! Several management processors (monarch election): election on a shared backplane, a monarch
//! that beats, serfs that usurp it when it stalls, and a boot that survives it.
//!
//! `monarch up` with two or more management processors in the topology is the *chassis*
//! ([`chassis::up`]): it creates the backplane (a register page in the run folder, the reference design's
//! central bus), starts one `monarch candidate` process per management processor, relays
//! their events and builds the summary. Each candidate ([`run_candidate`]) publishes its
//! BOOT_ID, slot and self-test result, waits for the others (rendezvous), and arbitrates
//! ([`monarch_proto::election::arbitrate`]). The winner claims epoch 1 with a
//! compare-and-swap and boots the chassis, beating on the backplane; the serfs watch the
//! beat. When it stalls they depose the monarch, arbitrate among the rest, and the new
//! winner claims the next epoch and takes the boot over from the windows (see
//! `crate::stage::Authority`): running secondaries are left alone, verified ones are released
//! without a second copy, the rest start over under the new epoch. A monarch that was only
//! paused finds the claim gone when it wakes, stops acting, and says so; whatever it still
//! writes carries its old epoch, which every secondary ignores.
//!
//! - [`candidate`]: what every candidate does whatever the backend: announce itself, and
//!   reign as monarch ([`candidate::reign`]).
//! - [`backplane`]: the election on a register page every candidate on one machine maps.
//! - `etcd` (feature `etcd`): the election across machines on etcd.
//! - [`chassis`]: `monarch up` for several management processors: the candidate processes.

pub mod backplane;
pub mod candidate;
pub mod chassis;
#[cfg(feature = "etcd")]
pub mod etcd;

pub use candidate::{CandidateOptions, CandidateOutcome, instant_at};
pub use chassis::{TopologySource, up};

use crate::events::{Event, EventKind};
use crate::topology::ElectionBackend;

/// Run one candidate: publish, rendezvous, arbitrate, then serve as monarch or wait as serf
/// (and usurp a stalled monarch), on the topology's election backend. Events go to
/// `on_event`.
pub fn run_candidate(o: &CandidateOptions, on_event: &mut dyn FnMut(&Event)) -> CandidateOutcome {
    let clock = o.clock;
    let mut emit = |kind| on_event(&Event { t_ms: clock.elapsed().as_secs_f64() * 1e3, kind });
    if o.plan.topology.managers.get(o.index).is_none() {
        return CandidateOutcome::Failed(format!("no management processor with index {}", o.index));
    }
    let outcome = match &o.plan.topology.election.backend {
        ElectionBackend::Backplane => backplane::run_on_backplane(o, &mut emit),
        #[cfg(feature = "etcd")]
        ElectionBackend::Etcd(e) => etcd::run_candidate(o, e, &mut emit),
        #[cfg(not(feature = "etcd"))]
        ElectionBackend::Etcd(_) => CandidateOutcome::Failed(
            "this monarch was built without etcd support: rebuild with `--features etcd`".into(),
        ),
    };
    if let CandidateOutcome::Failed(why) = &outcome {
        emit(EventKind::GaveUp { id: o.plan.topology.managers[o.index].id.clone(), why: why.clone() });
    }
    outcome
}
