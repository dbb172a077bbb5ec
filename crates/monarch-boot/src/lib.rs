//! # monarch-boot: orchestration
//!
//! Turns a topology into a boot: [`topology`] parses and validates the chassis description,
//! [`plan`] decides who is staged in parallel and who waits behind which switch,
//! [`image`] retrieves images and computes their retrieved checksums, [`stage`] drives one
//! secondary's handshake from the monarch's side, [`agent`] is the secondary's side, and
//! [`run`] executes a whole plan, streaming [`events`] to whatever front end is listening.
//! [`netstage`] boots a secondary that has no window over the network with the
//! same events and summary. [`vm`] makes secondaries of QEMU VMs (ivshmem window, `kexec`
//! handoff of a [`bundle`]).
//! The protocol decisions are `monarch-proto`'s; the memory and processes are
//! `monarch-drivers`'.
#![forbid(unsafe_code)]

pub mod agent;
pub mod bundle;
pub mod chassis;
#[cfg(feature = "etcd")]
pub mod etcd_chassis;
pub mod events;
/// The host's own tools (moved to the drivers; re-exported for existing callers).
pub use monarch_drivers::host;
/// The etcd election (feature `etcd`), for callers that need its types or a local server.
#[cfg(feature = "etcd")]
pub use monarch_etcd;
pub mod handoff;
pub mod image;
pub mod interrupt;
pub mod netagent;
pub mod netboot;
pub mod netstage;
pub mod payload;
pub mod plan;
pub mod run;
pub mod stage;
pub mod topology;
pub mod values;
pub mod vm;
