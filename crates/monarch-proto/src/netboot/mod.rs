//! The network boot discovery flow for monarch agents, sans-IO: messages and the client
//! (agent) side as a state machine.
//!
//! Network boot: a machine that has no memory window broadcasts a *boot server
//! discovery*; a boot server that holds a data block for it answers with the block's *size*;
//! the machine *pre-posts a buffer of exactly that size*, sends a *download request*, and the
//! server transfers the block straight into the buffer. No answer within a bounded wait: the
//! machine goes on booting what it already has. We add what the reference design leaves to the
//! implementer: a transaction id, a digest of the block (the agent verifies before handing
//! off: the safety invariant of the whole product), a token that ties the download to the
//! offer, and the digest of the image the machine already has (so an up-to-date machine is
//! told so and skips the transfer).
//!
//! The files, each importing only those listed before it:
//! - [`wire`]: the messages (DISCOVER, OFFER, DOWNLOAD, ACCEPT, REFUSE), their encoding and
//!   the TCP framing.
//! - [`client`]: the agent's side of the flow, as a state machine.

pub mod client;
pub mod wire;
