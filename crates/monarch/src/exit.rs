//! Exit codes (docs/cli.md), in one place for every subcommand.
use std::process::ExitCode;

/// A required secondary did not boot, or the agent failed.
pub const BOOT_FAILED: u8 = 1;
/// Bad input: topology, arguments, files.
pub const BAD_INPUT: u8 = 2;
/// A candidate that was monarch and stood down (a newer monarch holds the chassis).
pub const STOOD_DOWN: u8 = 3;
/// A candidate that failed its self-test: deconfigured, never monarch.
pub const DECONFIGURED: u8 = 4;
/// An agent that left its window alone: another agent holds it, a newer monarch claimed it,
/// or its image already runs (the monarch's stage reads this as "watch the other agent").
pub const LEFT_ALONE: u8 = 75;

/// Say what was wrong with the input, and exit with [`BAD_INPUT`].
pub fn bad_input(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("monarch: {e}");
    ExitCode::from(BAD_INPUT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_agent_exit_the_stage_reads_is_the_one_the_binary_gives() {
        assert_eq!(i32::from(super::LEFT_ALONE), monarch_boot::agent::EXIT_BUSY);
    }
}
