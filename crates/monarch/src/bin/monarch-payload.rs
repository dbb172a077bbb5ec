//! The demo payload that secondaries run after an `exec` handoff (see
//! `monarch_boot::payload`). It is small on purpose: it is what gets padded to the image
//! size and delivered through the window.
#![forbid(unsafe_code)]

fn main() {
    if let Err(e) = monarch_boot::payload::run() {
        eprintln!("monarch-payload: {e}");
        std::process::exit(1);
    }
}
