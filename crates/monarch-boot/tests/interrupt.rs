//! The stop flag with real signals (its own test binary: the flag is process-wide).

use monarch_boot::interrupt::{exit_status, install, received};
use std::time::{Duration, Instant};

#[test]
fn a_stop_signal_raises_the_flag_and_names_itself() {
    install(false).unwrap();
    assert_eq!(received(), None);
    let me = rustix::process::getpid();
    rustix::process::kill_process(me, rustix::process::Signal::TERM).unwrap();
    let t = Instant::now();
    while received().is_none() && t.elapsed() < Duration::from_secs(5) {
        std::thread::yield_now();
    }
    assert_eq!(received(), Some("SIGTERM"));
    assert_eq!(exit_status(), Some(143));
    // A second one is caught too: without `second_exits` the process lives on.
    rustix::process::kill_process(me, rustix::process::Signal::INT).unwrap();
    let t = Instant::now();
    while received() != Some("SIGINT") && t.elapsed() < Duration::from_secs(5) {
        std::thread::yield_now();
    }
    assert_eq!((received(), exit_status()), (Some("SIGINT"), Some(130)));
}
