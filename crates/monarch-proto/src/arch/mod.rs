//! The hardware description of a machine made of many clusters, and each cluster's boot
//! info: the data of the phased boot (after ALMOS-MKH's on TSAR, `docs/arch-info.md`).
//!
//! One core of the first cluster loads the kernel and `arch_info.bin`, a binary description
//! of every cluster, core, memory bank and device (with those that failed their self-test
//! marked) and of the zones every cluster's bank is cut into; then the head core of each
//! cluster copies both into its own bank and builds its cluster's boot info from the
//! description: only the hardware that passed its self-test, and where the kernel's memory
//! starts. Everything here is data and checks; copying and barriers are elsewhere.
//!
//! The files, each importing only those listed before it:
//! - [`model`]: the owned model ([`model::ArchInfo`] and its parts).
//! - [`error`]: why a description or a boot info is refused ([`error::ArchError`]).
//! - [`boot_info`](mod@boot_info): a cluster's boot info, its fixed-size block and the zero-copy
//!   [`boot_info::BootInfoView`].
//! - [`wire`]: `arch_info.bin`, byte by byte: [`wire::encode`] and the zero-copy
//!   [`wire::ArchView`], which checks every rule of the format.
//! - [`select`]: which hardware a cluster boots with: [`select::boot_info()`].
//! - `tests.rs` (test-only): golden bytes, round trips, every error, corrupted files.

pub mod boot_info;
pub mod error;
pub mod model;
pub mod select;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)] // test code
mod tests;
pub mod wire;

pub use boot_info::{BOOT_INFO_SIZE, BootInfo, BootInfoView};
pub use error::ArchError;
pub use model::{ArchInfo, Bank, Cluster, Core, Device, DeviceKind, Zone, ZoneKind};
pub use select::boot_info;
pub use wire::{ArchView, encode};
