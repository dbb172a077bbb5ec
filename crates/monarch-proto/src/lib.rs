//! # monarch-proto: the sans-IO protocol core
//!
//! Everything monarch decides about a window boot, with no clock, socket, thread or
//! memory map in sight: the register layout of a window ([`layout`]), the messages carried
//! in it ([`msg`]), the checksums ([`checksum`]), and the two handshake state machines of
//! the window boot — the monarch's ([`primary`]) and the secondary's ([`secondary`]). Drivers
//! (`monarch-drivers`) move bytes and ring doorbells; the orchestrator (`monarch-boot`)
//! decides which secondaries run when. Both feed inputs into these machines with an
//! explicit `now` and carry out the actions they return, so every path — success, retry,
//! abort, timeout, garbage from the peer — is tested here without a process in sight,
//! and a model check (`src/model.rs`, test-only) visits every interleaving of the register protocol.
#![forbid(unsafe_code)]

pub mod checksum;
pub mod dhcp;
pub mod election;
pub mod layout;
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // the model stores 32-bit registers in u64 slots
mod model;
pub mod msg;
pub mod netboot;
pub mod page;
pub mod primary;
pub mod secondary;
pub mod slots;
pub mod stream;
pub mod tftp;

pub use checksum::{Algo, Digest};
pub use msg::{Command, Mode, Status, WindowConfig};
