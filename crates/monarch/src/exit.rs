//! Exit codes (docs/cli.md), in one place for every subcommand.
use std::process::ExitCode;

/// A required secondary did not boot, or the agent failed.
pub const BOOT_FAILED: u8 = 1;
/// Bad input: topology, arguments, files.
pub const BAD_INPUT: u8 = 2;

/// Say what was wrong with the input, and exit with [`BAD_INPUT`].
pub fn bad_input(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("monarch: {e}");
    ExitCode::from(BAD_INPUT)
}
