//! SIGINT and SIGTERM as a request to stop the boot cleanly, not a kill.
//!
//! `monarch up` and its candidates [`install`] handlers that only raise a flag; the staging
//! loops read it ([`received`]) wherever they already check their mandate, and stop as they
//! would on any failure: a secondary not yet released gets an ABORT, its agent is stopped,
//! it is reported `interrupted`; images already running get the usual SHUTDOWN with its
//! grace period; the temporary run folder is removed and the summary printed. A second
//! signal to `monarch up` ends it at once.
//!
//! Ctrl-C in a terminal signals the whole foreground process group: `monarch up`, its
//! candidates, and the agents and images they started. Those last two are the monarch's
//! to stop, so they are started with SIGINT ignored
//! ([`monarch_drivers::host::ignore_sigint_in`]; SIGTERM and SIGKILL still end them), and
//! QEMU, which would install its own handler, in a process group of its own.

use rustix::process::Signal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The last stop signal received (0: none).
static RECEIVED: AtomicUsize = AtomicUsize::new(0);
/// Set with the first signal; arms the immediate exit on the second.
static ARMED: AtomicBool = AtomicBool::new(false);

/// Catch SIGINT and SIGTERM into the flag [`received`] reads. With `second_exits`, a second
/// one exits the process at once with status 128 + the signal's number (for the process
/// the operator waits on; candidates leave it off, since `monarch up` passes its own
/// interruption on to them and they may have had the terminal's already).
pub fn install(second_exits: bool) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        if second_exits {
            // Registered first: it sees the flag as the previous signal left it.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, &ARMED)?;
        }
        signal_hook::flag::register(sig, &ARMED)?;
        signal_hook::flag::register_usize(sig, &RECEIVED, usize::try_from(sig).unwrap_or(1))?;
    }
    Ok(())
}

/// The stop signal received (the latest if several), if any.
pub fn signal() -> Option<Signal> {
    match i32::try_from(RECEIVED.load(Ordering::SeqCst)).unwrap_or(-1) {
        signal_hook::consts::SIGINT => Some(Signal::INT),
        signal_hook::consts::SIGTERM => Some(Signal::TERM),
        _ => None,
    }
}

/// [`signal`]'s name (`"SIGINT"`, `"SIGTERM"`), for messages.
pub fn received() -> Option<&'static str> {
    signal().map(|s| if s == Signal::INT { "SIGINT" } else { "SIGTERM" })
}

/// The exit status for a run stopped by [`received`]'s signal: 128 + its number.
pub fn exit_status() -> Option<u8> {
    let n = RECEIVED.load(Ordering::SeqCst);
    (n != 0).then(|| u8::try_from(128 + n).unwrap_or(u8::MAX))
}
