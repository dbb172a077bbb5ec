//! Topology files: what the chassis is made of, parsed and validated.
//!
//! A topology is TOML (unknown fields are errors). Every error names the file, the line
//! and the field, and says how to fix it; all errors of a file are reported at once.
//! `monarch topology default` prints the built-in chassis as a starting point, and
//! `docs/topology.md` documents every field.
//!
//! The file's schema (`schema.rs`) is resolved (`resolve.rs`) into the model the rest of
//! monarch reads (`model.rs`); what resolving asks of the machine (files, disks, VM
//! artifacts) goes through one `Environment` (`env.rs`), and problems are collected in
//! `error.rs`.

mod clusters;
mod env;
mod error;
mod launch;
mod lifecycle;
mod model;
mod netcluster;
mod resolve;
mod schema;
#[cfg(test)]
mod tests;

pub use clusters::{STACK, core_id};
pub use env::{Environment, Host, ImageFileProblem, WindowFile};
pub use error::{Problem, TopologyError};
pub use launch::{Launch, NetbootSpec, QemuSpec, derived_mac};
pub use model::*;
pub use resolve::{DEFAULT_TOPOLOGY, sanitize};
pub use schema::Role;
