//! Staging: the monarch's side of one secondary, from retrieval of its image to its final
//! state, with the same events and summary whichever way it is booted.
//!
//! - `window`: through a memory window (the handshake, push streaming, launching the
//!   agent as a process, a QEMU VM, or leaving it to someone else).
//! - `network`: a secondary with no window, booted over the network.
//! - `launch`: every decision that depends on a window secondary's launch mode.
//! - [`takeover`]: a new monarch's claim on the windows before it acts.
//! - [`link`]: the turns of the secondaries behind one switch for its link.
//! - [`context`]: what both share: the run's context, the monarch's authority, the result,
//!   the logs of the processes a stage starts.

pub mod context;
pub(crate) mod launch;
pub mod link;
pub(crate) mod network;
pub mod takeover;
pub(crate) mod window;

pub use context::{Authority, StageCtx, Staged, open_log};
pub use takeover::claim;

use crate::topology::{Launch, Secondary};

/// Stage one secondary from retrieval to its final state.
pub fn stage(sec: &Secondary, ctx: &StageCtx<'_>) -> Staged {
    match &sec.launch {
        // No window: booted over the network, with the same events and summary.
        Launch::Netboot(nb) => network::stage(sec, nb, ctx),
        // Every other launch mode has a window; `launch` says how its agent is started.
        _ => window::stage(sec, ctx),
    }
}
