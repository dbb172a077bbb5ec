//! Logs: the diagnostics of the long-running processes (`monarch up --hold`, its candidates,
//! `monarch netboot serve`) are `tracing` events, written to stderr by the subscriber the
//! binary installs (text, or one JSON object per line). Stdout stays the event stream.
//!
//! The processes the monarch starts from its own executable (candidates, agents) write their
//! logs the same way: the binary says here how it writes its own, and every spawn passes that
//! on through the environment ([`FORMAT_ENV`], [`FILTER_ENV`]), which the child's options read.

use std::process::Command;
use std::sync::OnceLock;

/// The environment variable naming the log format (`text` or `json`).
pub const FORMAT_ENV: &str = "MONARCH_LOG_FORMAT";
/// The environment variable holding the log filter (an `EnvFilter` directive such as
/// `info` or `info,monarch_boot=debug`).
pub const FILTER_ENV: &str = "MONARCH_LOG";

static INHERITED: OnceLock<[(&'static str, String); 2]> = OnceLock::new();

/// Record how this process writes its logs, for the processes it starts. The first call wins.
pub fn pass_on(format: &str, filter: &str) {
    let _ = INHERITED.set([(FORMAT_ENV, format.to_string()), (FILTER_ENV, filter.to_string())]);
}

/// Give `cmd` this process's log format and filter (nothing when [`pass_on`] was never
/// called: the child then inherits whatever environment this process has).
pub fn inherit(cmd: &mut Command) -> &mut Command {
    if let Some(vars) = INHERITED.get() {
        cmd.envs(vars.iter().map(|(k, v)| (*k, v.as_str())));
    }
    cmd
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_child_gets_the_format_and_filter_passed_on() {
        super::pass_on("json", "info,monarch_boot=debug");
        let mut cmd = std::process::Command::new("true");
        super::inherit(&mut cmd);
        let envs: Vec<_> = cmd.get_envs().map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned))).collect();
        assert!(envs.contains(&(super::FORMAT_ENV.into(), Some("json".into()))), "{envs:?}");
        assert!(
            envs.contains(&(super::FILTER_ENV.into(), Some("info,monarch_boot=debug".into()))),
            "{envs:?}"
        );
    }
}
