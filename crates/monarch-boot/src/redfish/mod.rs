//! The Redfish service of a supervised chassis (`monarch up --hold --redfish ADDR`): the
//! chassis, its processors and its management processors as DMTF Redfish resources over
//! HTTPS, for the tools operators already run (OpenStack Ironic's sushy, redfishtool, DMTF's
//! validator). Resets go to the supervisor as `monarch reboot`/`shutdown`/`startup` do.
//!
//! [`tree`] builds the documents, [`journal`] remembers the events for the logs and the
//! event stream, [`service`] serves them, [`users`] checks credentials against the
//! operator's users file and [`tls`] holds the service's certificate.

pub mod journal;
pub mod service;
pub mod tls;
pub mod tree;
pub mod users;

use std::net::SocketAddr;
use std::path::PathBuf;

/// Where and how to serve Redfish (`[management]` in the topology, or `up --hold`'s flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedfishOptions {
    /// The address to listen on (HTTPS).
    pub addr: SocketAddr,
    /// The users file: `NAME:HASH[:ROLE]` lines (`monarch redfish useradd`).
    pub users: PathBuf,
    /// The certificate (PEM); none: one made at first start, kept in the state folder.
    pub certificate: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

/// Why the Redfish service could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    /// The users file.
    #[error(transparent)]
    Users(#[from] users::UsersError),
    /// No user in it: nobody could log in.
    #[error(
        "users file {0}: no user in it, so nobody could use the Redfish service; add one with `monarch redfish useradd {0} admin --role Administrator`"
    )]
    NoUsers(PathBuf),
    /// The certificate.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The address.
    #[error("Redfish service {addr}: {source}; give another address with --redfish")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
