//! TFTP, sans-IO: the read side of a TFTP server, as monarch serves boot files to firmware.
//!
//! Why our own and not a crate: the TFTP crates on crates.io either own the sockets (so they
//! cannot be driven by a fake clock in tests, nor tuned for the bench), or lack windowsize
//! and block-number rollover. The wire format is tiny; the value is in the state machine,
//! which is written to be tested here without a socket in sight.
//!
//! The files, each importing only those listed before it:
//! - [`wire`]: the packets (RFC 1350 + the option extension of RFC 2347): parse and encode.
//! - [`request`]: the lexical check of a requested path, and what a read-only server refuses.
//! - [`negotiate`]: option negotiation (RFC 2348 blksize, RFC 2349 timeout/tsize, RFC 7440
//!   windowsize) within the server's limits.
//! - [`transfer`]: the server side of a read transfer, as a state machine.

pub mod negotiate;
pub mod request;
pub mod transfer;
pub mod wire;
