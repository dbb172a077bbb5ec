//! # monarch-drivers: where bytes move
//!
//! The only crate of monarch with `unsafe` code, each block with a `// SAFETY:` comment.
//! - [`window`]: shared-memory windows: the [`WindowMemory`] trait the protocol uses, over
//!   a mapped file (`/dev/shm`, memfd, PCI BAR resource file: [`Window`]) or heap memory
//!   shared between threads ([`MemWindow`]); registers and data copies by atomics only,
//!   seqlock message reads.
//! - [`barrier`]: boot barriers with a deadline in a shared block (a `/dev/shm` file or any
//!   mapping): arrive, wait (futex or bounded polling), the owner's decision, abort.
//! - [`doorbell`]: futex doorbells, bounded polling where there is no shared kernel.
//! - [`memimage`]: an image held in a sealed memfd, and the `exec` handoff that runs the
//!   delivered bytes themselves.
//! - [`fs`]: files replaced atomically (temporary beside, fsync, rename, fsync the folder).
//! - [`kexec`]: the `kexec` handoff (a verified kernel + initrd replace the running kernel).
//! - [`link`]: network interfaces (a secondary's ports) set administratively up or down
//!   through netlink.
//! - [`sockopt`]: socket options that rustix, socket2 and nix lack (`TCP_NOTSENT_LOWAT`).
//!
//! The protocol decisions live in `monarch-proto`; the orchestration in `monarch-boot`.

pub mod barrier;
pub mod disk;
pub mod doorbell;
pub mod fs;
pub mod host;
pub mod kexec;
pub mod link;
pub mod memimage;
pub mod sockopt;
pub mod window;

pub use doorbell::Doorbell;
pub use window::{MemWindow, Poll, SourceFile, Window, WindowError, WindowMemory};
