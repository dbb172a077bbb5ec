//! # monarch-proto: the sans-IO protocol core
//!
//! Everything monarch decides about booting secondaries, with no clock, socket, thread or
//! memory map in sight. Drivers (`monarch-drivers`, `monarch-net`) move bytes and ring
//! doorbells; the orchestrator (`monarch-boot`) decides which secondaries run when. Both feed
//! inputs into the machines here with an explicit `now` and carry out the actions they
//! return, so every path — success, retry, abort, timeout, garbage from the peer — is tested
//! here without a process in sight.
//!
//! - [`window`]: the window boot: the register layout of a window, the messages carried in
//!   it, push streaming, and the two handshake state machines — the monarch's and the
//!   secondary's — with a model check (test-only) of every interleaving of the register
//!   protocol.
//! - [`tftp`]: the TFTP server's side: packets ([`tftp::wire`]), the checks of a request
//!   ([`tftp::request`]), option negotiation ([`tftp::negotiate`]) and the read transfer's
//!   state machine ([`tftp::transfer`]).
//! - [`dhcp`]: the DHCP / ProxyDHCP server's side: decoding and encoding through dhcproto
//!   ([`dhcp::wire`]), the boot file each kind of client gets ([`dhcp::boot`]), the address
//!   pool and its lease table ([`dhcp::pool`]) and the server's decisions ([`dhcp::server`]).
//! - [`netboot`]: the discovery flow of monarch agents that boot over the network: the
//!   messages ([`netboot::wire`]) and the agent's state machine ([`netboot::client`]).
//! - [`checksum`], [`mac`], [`election`], [`slots`]: checksums, MAC addresses, monarch
//!   election and the A/B disk slots.
#![forbid(unsafe_code)]

pub mod checksum;
pub mod dhcp;
pub mod election;
pub mod mac;
pub mod netboot;
pub mod slots;
pub mod tftp;
pub mod window;

pub use checksum::{Algo, Digest};
