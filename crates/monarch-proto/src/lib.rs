//! # monarch-proto: the sans-IO protocol core
//!
//! Everything monarch decides about booting secondaries, with no clock, socket, thread or
//! memory map in sight. Drivers (`monarch-drivers`, `monarch-net`) move bytes and ring
//! doorbells; the orchestrator (`monarch-boot`) decides which secondaries run when. Both feed
//! inputs into the machines here with an explicit `now` and carry out the actions they
//! return, so every path — success, retry, abort, timeout, garbage from the peer — is tested
//! here without a process in sight.
//!
//! One folder per protocol. Inside each, as smoltcp keeps its `wire` apart from its
//! `socket`s, the bytes on the wire (parse and encode, every field of the peer's validated)
//! live apart from the state machines that decide; each folder's `mod.rs` lists its files.
//! - [`window`]: the window boot over shared memory: the register layout of a window
//!   ([`window::layout`]), the messages carried in it ([`window::msg`]), push streaming
//!   ([`window::stream`]), an in-memory page ([`window::page`]), and the two handshake state
//!   machines, the monarch's ([`window::primary`]) and the secondary's
//!   ([`window::secondary`]); a model check (`window/model.rs`, test-only) visits every
//!   interleaving of the register protocol.
//! - [`tftp`]: the TFTP server's side: packets ([`tftp::wire`]), the checks of a request
//!   ([`tftp::request`]), option negotiation ([`tftp::negotiate`]) and the read transfer's
//!   state machine ([`tftp::transfer`]).
//! - [`dhcp`]: the DHCP / ProxyDHCP server's side: decoding and encoding through dhcproto
//!   ([`dhcp::wire`]), the boot file each kind of client gets ([`dhcp::boot`]), the address
//!   pool and its lease table ([`dhcp::pool`]) and the server's decisions ([`dhcp::server`]).
//! - [`http`]: which answer an HTTP range request gets (RFC 9110 §13.1.5, §14).
//! - [`arch`]: multi-cluster machines: the hardware description `arch_info.bin`
//!   ([`arch::wire`]) and each cluster's boot info ([`arch::boot_info`](mod@arch::boot_info),
//!   [`arch::select`]).
//! - [`netboot`]: the discovery flow of monarch agents that boot over the network: the
//!   messages ([`netboot::wire`]) and the agent's state machine ([`netboot::client`]).
//!
//! - [`barrier`]: boot barriers with a deadline in shared memory: the block's words, and
//!   arrival, look, the owner's timeout decision and abort as machines of one atomic word
//!   access per step; a model check (`barrier/model.rs`, test-only) visits every
//!   interleaving.
//!
//! At the root, what several protocols share or what fits one file: checksums
//! ([`checksum`]), MAC addresses ([`mac`]), monarch election and failover ([`election`]),
//! the A/B slots of a disk target ([`slots`]), text a peer wrote, made safe to show
//! ([`text`]), and per-source limits that keep one peer from taking what all share
//! ([`fair`]).
//!
//! No file imports one that imports it back, directly or through others: state machines
//! import messages, messages import layouts, and nothing below imports upwards
//! (`scripts/import-cycles` checks it).
#![forbid(unsafe_code)]

pub mod arch;
pub mod barrier;
pub mod checksum;
pub mod dhcp;
pub mod election;
pub mod fair;
pub mod http;
pub mod mac;
pub mod netboot;
pub mod sign;
pub mod slots;
pub mod text;
pub mod tftp;
pub mod window;

pub use checksum::{Algo, Digest};
