//! The chassis after its boot (`monarch up --hold`): the supervisor keeps every secondary
//! running, watches its heartbeat, recovers what crashes within its restart limits, keeps
//! the ports of a secondary down until it is ready, and carries out the operator's
//! negotiated reboots and shutdowns in reverse dependency order.
//!
//! - [`restart`]: restart limits and back-off (pure).
//! - [`causes`]: reboot causes, kept across runs in the state folder.
//! - [`control`]: the control socket and its protocol (server and client).
//! - [`metrics`]: Prometheus metrics of the chassis, served at `/metrics`.
//! - `keeper`: the supervisor itself, run by `run::boot` from the first stage on.

pub mod causes;
pub mod control;
pub(crate) mod keeper;
pub mod metrics;
pub mod restart;
