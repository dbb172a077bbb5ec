//! A peer that shrinks a shared window file cannot kill this process.
//!
//! A window file is shared with another process (an external agent, a VM's QEMU). If that
//! process truncates the file, every access of ours to a page past the new end raises
//! SIGBUS, whose default action kills the whole monarch — and every other secondary's boot
//! with it. A sealed memfd would forbid the shrink, but a window at a path (`/dev/shm`, a
//! device) cannot be sealed, so the defence is here, as Wayland compositors defend their
//! clients' shared-memory pools:
//!
//! - every mapping of a window is registered in a fixed table the SIGBUS handler can read
//!   without locks or allocation;
//! - on a SIGBUS inside a registered mapping, the handler maps private zeroed memory over
//!   that whole mapping (`MAP_FIXED | MAP_ANONYMOUS`) and marks it vanished; the faulting
//!   access then completes harmlessly, and so does every later one;
//! - the owner of the window asks [`Guard::vanished`] and fails that secondary alone;
//! - a SIGBUS anywhere else is not ours: the previous disposition is restored and the
//!   signal raised again, so the process dies of it exactly as it would have.
//!
//! The handler calls only `mmap`, `sigaction` and `raise`, which are system calls.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};

/// How many window mappings can be guarded at once (a mapping past that is refused).
const SLOTS: usize = 1024;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    hit: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // the initialiser of each slot of the table
const FREE: Slot = Slot { start: AtomicUsize::new(0), len: AtomicUsize::new(0), hit: AtomicBool::new(false) };

/// The guarded mappings, for the handler: `len == 0` is a free slot.
static TABLE: [Slot; SLOTS] = [FREE; SLOTS];

/// Which slots are taken (registration and release only; never touched by the handler).
static TAKEN: Mutex<[bool; SLOTS]> = Mutex::new([false; SLOTS]);

/// The SIGBUS disposition before ours, restored for a fault that is not a window's. Set
/// once, before the handler is installed; reading a set `OnceLock` is a plain atomic load.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALLED: Once = Once::new();

/// One guarded mapping; dropping it ends the guard (drop it before unmapping).
#[derive(Debug)]
pub(crate) struct Guard {
    index: usize,
}

impl Guard {
    /// Guard the mapping of `len` bytes at `start`. Fails when [`SLOTS`] mappings are guarded
    /// already, or the handler cannot be installed.
    pub(crate) fn new(start: *mut u8, len: usize) -> std::io::Result<Guard> {
        install()?;
        let index = {
            let mut taken = TAKEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let i = taken
                .iter()
                .position(|t| !t)
                .ok_or_else(|| std::io::Error::other(format!("more than {SLOTS} windows mapped at once")))?;
            taken[i] = true;
            i
        };
        let slot = &TABLE[index];
        slot.hit.store(false, Ordering::Release);
        slot.start.store(start as usize, Ordering::Release);
        slot.len.store(len, Ordering::Release);
        Ok(Guard { index })
    }

    /// Whether the peer shrank the file under this mapping: its contents are gone (replaced
    /// by private zeroes), and nothing written to it reaches the peer any more.
    pub(crate) fn vanished(&self) -> bool {
        TABLE[self.index].hit.load(Ordering::Acquire)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let slot = &TABLE[self.index];
        slot.len.store(0, Ordering::Release);
        slot.start.store(0, Ordering::Release);
        let mut taken = TAKEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        taken[self.index] = false;
    }
}

/// Whether the handler was installed (a failure is remembered: every guard then fails).
static INSTALL_ERROR: OnceLock<i32> = OnceLock::new();

fn install() -> std::io::Result<()> {
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; sigaction is
        // called with valid pointers; PREVIOUS is set before the handler that reads it exists.
        unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                result = Err(std::io::Error::last_os_error());
                return;
            }
            let _ = PREVIOUS.set(old);
            if libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) != 0 {
                result = Err(std::io::Error::last_os_error());
            }
        }
        if let Err(e) = &result {
            let _ = INSTALL_ERROR.set(e.raw_os_error().unwrap_or(libc::EINVAL));
        }
    });
    match INSTALL_ERROR.get() {
        Some(&errno) => Err(std::io::Error::from_raw_os_error(errno)),
        None => result,
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    // A fault (si_code > 0), not a SIGBUS some process sent with kill().
    if code > 0 {
        for slot in &TABLE {
            let len = slot.len.load(Ordering::Acquire);
            let start = slot.start.load(Ordering::Acquire);
            // A slot being released or registered meanwhile is skipped: its length changed
            // between the two loads (release clears it first, registration sets it last).
            if len == 0 || addr < start || addr - start >= len || slot.len.load(Ordering::Acquire) != len {
                continue;
            }
            // SAFETY: [start, start+len) is a live mapping of a window (its guard is
            // registered while it is mapped, and the mapping is in use by the faulting
            // access); replacing it with private anonymous memory of the same size keeps
            // every pointer into it valid.
            let p = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                slot.hit.store(true, Ordering::Release);
                return;
            }
            break;
        }
    }
    // Not a window's: die of it as without us (or as the previous handler decides).
    // SAFETY: sigaction and raise are async-signal-safe, called with valid pointers.
    unsafe {
        if let Some(old) = PREVIOUS.get() {
            libc::sigaction(sig, old, std::ptr::null_mut());
        }
        if code <= 0 {
            libc::raise(sig);
        }
    }
    // Returning re-runs the faulting access, which now meets the restored disposition.
}
