//! # monarch-net: network boot services (drivers layer)
//!
//! For machines with no memory window, the monarch boots them over the network.
//! The wire protocols' decisions are sans-IO in `monarch-proto` ([`monarch_proto::tftp`],
//! [`monarch_proto::dhcp`], [`monarch_proto::netboot`]); this crate puts them on tokio
//! sockets:
//! - [`tftp`]: a read-only TFTP server (RFC 1350 + options 2347/2348/2349 and 7440 windowsize).
//! - [`dhcp`]: a DHCP server with persisted leases, and a ProxyDHCP mode (ports 67/4011).
//! - [`http`]: HTTP boot (images with Content-Length and Range, per-machine iPXE scripts).
//! - [`discovery`]: the reference design's flow for monarch agents: discovery, size + digest, pre-posted
//!   buffer, bulk transfer straight into it.
//! - [`catalog`]: what each machine boots (from a directory and/or the topology).
//! - [`spin`]: polling a socket for a moment before sleeping on it (TFTP's ACKs, HTTP's
//!   sends), and the limits on it.
//!
//! Every service reports what it does through an [`EventSink`].
#![forbid(unsafe_code)]

pub mod catalog;
pub mod dhcp;
pub mod discovery;
pub mod http;
mod sendfile;
pub mod spin;
pub mod tftp;

/// Where a service reports its events (progress, completions, refusals). Cheap to clone.
pub type EventSink<E> = std::sync::Arc<dyn Fn(E) + Send + Sync>;

/// An [`EventSink`] that drops everything.
pub fn discard<E>() -> EventSink<E> {
    std::sync::Arc::new(|_| {})
}

/// The next connection on `listener`. Accept errors (out of descriptors, a connection reset
/// before it was accepted) are transient: back off briefly and try again instead of spinning
/// or ending the service (axum does the same).
pub(crate) async fn accept(
    listener: &tokio::net::TcpListener,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}
