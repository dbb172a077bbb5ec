//! # monarch-drivers: where bytes move
//!
//! The only crate of monarch with `unsafe` code, each block with a `// SAFETY:` comment.
//! - [`window`]: shared-memory windows (file, `/dev/shm`, memfd, PCI BAR resource file),
//!   register access by atomics only, seqlock message reads, bulk data copies.
//! - [`doorbell`]: futex doorbells, bounded polling where there is no shared kernel.
//! - [`memimage`]: an image held in a sealed memfd, and the `exec` handoff that runs the
//!   delivered bytes themselves.
//!
//! The protocol decisions live in `monarch-proto`; the orchestration in `monarch-boot`.

pub mod doorbell;
pub mod memimage;
pub mod window;

pub use doorbell::Doorbell;
pub use window::{Poll, Window, WindowError};

/// Peak resident memory, in bytes, of this process (`self_`) or of the largest of its
/// waited-for children.
pub fn peak_rss(self_: bool) -> u64 {
    let who = if self_ { libc::RUSAGE_SELF } else { libc::RUSAGE_CHILDREN };
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the pointer, which points to enough
    // properly aligned memory; it was zero-initialised, so it is initialised even on error.
    let u = unsafe {
        libc::getrusage(who, u.as_mut_ptr());
        u.assume_init()
    };
    u64::try_from(u.ru_maxrss).unwrap_or(0) * 1024
}
