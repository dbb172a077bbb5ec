//! Memory windows: a register page plus a data area in memory both sides can write.
//!
//! What the protocol does with a window is the consumer-side trait [`WindowMemory`]:
//! registers (atomic loads, stores, compare-and-swap), seqlock messages, doorbells, and
//! copies into and out of the data area, with and without a checksum. Its backends only
//! say where the memory is:
//! - [`Window`]: a mapped file (under `/dev/shm` for RAM, or any path, e.g. a PCI BAR's
//!   `resourceN` in sysfs) or a memfd handed to a child; the peer is another process, or a
//!   device;
//! - [`MemWindow`]: a heap allocation shared between threads of one process, so that both
//!   sides of the handshake can be tested in one process.
//!
//! Every value read from the window is the peer's and untrusted: the drivers hand raw words
//! to `monarch-proto` to validate; the data area's size comes from the backend (the mapping),
//! never from the header.
//!
//! # Memory model: how window memory is accessed
//!
//! The peer writes window memory whenever it likes, protocol or not: a buggy or hostile
//! agent, a monarch that was paused and resumes, a device. Under Rust's memory model a plain
//! access (a `&[u8]`, `copy_nonoverlapping`, a memcpy) that races with a write is undefined
//! behaviour, and so is a volatile one: volatile only keeps the compiler from eliding or
//! merging the access, it does not make a race defined. The compiler may assume that
//! memory it reads plainly does not change under it (and, for example, read it twice where
//! the source reads it once). So this process touches window memory only with atomics:
//! - a register is an `AtomicU32`/`AtomicU64` of its width: Acquire loads, Release stores,
//!   AcqRel read-modify-writes;
//! - the data area is copied a naturally aligned 64-bit word at a time, with Relaxed
//!   `AtomicU64` loads and stores ([`SharedBytes`]); a range that starts or ends inside a
//!   word reads that word whole, or changes only its own bytes of it by compare-and-swap.
//!   Both sides' accesses to a word are therefore the same size, which the model requires
//!   of racing atomic writes.
//!
//! A racing copy is then defined: each word is copied as one of the values it held, and a
//! copy mixes old and new words at worst, which the checksum that every image is judged by
//! catches. The Relaxed copies need no ordering of their own: the side that writes data
//! publishes it afterwards with a Release store in the register page (a message's
//! publication word, `stream.produced`), and the side that reads data reads it only after an
//! Acquire load of that register saw the publication; the reader hands a region back the same
//! way (`stream.consumed`), so its reads happen before the writer overwrites the region.
//! Data is never hashed or used in place: it is copied into this process's own memory first,
//! and the copy is what is checksummed (and, for an image, what runs).
//!
//! A peer in another process, or a device, is not part of this program, and nothing it does
//! can make this program's behaviour undefined as long as this program's own accesses do not
//! assume the memory stable: an atomic load is never assumed to return what an earlier one
//! did, nor re-done to fetch a value again. The in-memory backend ([`MemWindow`]) has the
//! peer on another thread of this program, where the rules above are the whole story.
//!
//! One writer is not this process's code: [`WindowMemory::fill_from_file`] asks the kernel
//! to read(2) an image straight into the data area. That copy happens inside the system call,
//! before the Release store that publishes the image, like a device's DMA.
//!
//! A large image file is read the same way: [`SourceFile`] maps it read-only, guarded, and
//! copies from it into a window are Relaxed loads and stores of words, because whoever owns
//! the file may write it meanwhile.
//!
//! What the copies cost next to memcpy is measured by the `hot_paths` bench.

mod error;
mod guard;
mod heap;
mod memory;
mod mmap;
mod poll;
mod shared;
mod source;

pub use error::WindowError;
pub use heap::MemWindow;
pub use memory::{CHUNK, WindowMemory};
pub use mmap::{Existing, Window, existing};
pub use poll::Poll;
pub use shared::SharedBytes;
pub use source::SourceFile;

/// Which kind of doorbell wait a window uses.
pub use crate::doorbell::Doorbell as DoorbellKind;

#[cfg(test)]
mod tests;
