//! The window boot protocol: the monarch delivers an image into a secondary's memory through
//! a window (a register page followed by a data area) and the two sides agree, by messages in
//! the registers, that what landed is intact before the secondary runs it.
//! `docs/window-protocol.md` is the normative description.
//!
//! The files, each importing only those listed before it:
//! - [`layout`]: the register page: offsets, widths and constants, and a register write.
//! - [`page`]: a register page in ordinary memory, for tests and the model check.
//! - [`stream`]: push mode's ring of chunks in the data area: the arithmetic.
//! - [`msg`]: the messages (config block, commands, statuses, report) and their encoding
//!   into register writes; the golden-byte tests of the wire format.
//! - [`life`]: after the handoff: heartbeat, ready, the supervisor's notices and the
//!   image's answers, the hold of a secondary whose dependencies are not ready.
//! - [`primary`]: the monarch's side of the handshake, as a state machine.
//! - [`secondary`]: the secondary's side of the handshake, as a state machine.
//! - `model.rs` (test-only): the model check that runs both machines against one page
//!   through every interleaving of register stores, loads and doorbells.

pub mod layout;
pub mod life;
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // the model stores 32-bit registers in u64 slots
mod model;
pub mod msg;
pub mod page;
pub mod primary;
pub mod secondary;
pub mod stream;
