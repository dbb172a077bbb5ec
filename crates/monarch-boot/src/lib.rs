//! # monarch-boot: orchestration
//!
//! Turns a topology into a boot, by concept:
//! - the monarch's side: [`topology`] (the chassis description, parsed and checked),
//!   [`plan`] (who is staged in parallel, who waits behind which switch), [`image`] (images
//!   retrieved and their checksums), [`stage`] (one secondary, through its window or over
//!   the network), [`run`] (a whole plan), [`election`] (several management processors:
//!   candidates, backplane, etcd, the chassis), [`netboot`] (`monarch netboot serve`);
//! - the secondary's side: [`agent`] (window agent), [`netagent`] (network agent),
//!   [`handoff`] (what either does with its verified image), [`payload`] (the demo image);
//! - both: [`signing`] (signed images: key and signature files, the policy, and the check
//!   every secondary runs before a handoff), [`events`] (what every front end reads),
//!   [`timeline`] (a run's events drawn as an SVG picture), [`vm`] (QEMU secondaries: artifacts,
//!   the monarch's QEMU command, PID 1 inside the VM, the [`bundle`] it kexecs),
//!   [`values`] (sizes, durations, checksum names), [`interrupt`] (Ctrl-C and SIGTERM),
//!   [`logs`] (the diagnostics on stderr, and how started processes write theirs).
//!
//! The protocol decisions are `monarch-proto`'s; the memory and processes are
//! `monarch-drivers`'. `docs/architecture.md` maps every concept to its files.
#![forbid(unsafe_code)]

pub mod agent;
pub mod builtin;
pub mod bundle;
pub mod cmdline;
pub mod election;
pub mod events;
pub mod gate;
/// The host's own tools (moved to the drivers; re-exported for existing callers).
pub use monarch_drivers::host;
/// The etcd election (feature `etcd`), for callers that need its types or a local server.
#[cfg(feature = "etcd")]
pub use monarch_etcd;
pub mod handoff;
pub mod image;
pub mod interrupt;
pub mod logs;
pub mod metrics;
pub mod netagent;
pub mod netboot;
pub mod payload;
pub mod phased;
pub mod plan;
pub mod redfish;
pub mod run;
pub mod run_folder;
pub mod signing;
pub mod stage;
pub mod supervise;
pub mod timeline;
pub mod topology;
pub mod values;
pub mod vm;
