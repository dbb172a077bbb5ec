//! The diagnostics on stderr (`--log-format`, `--log-level`): a `tracing` subscriber, as
//! concise text for people or one JSON object per line for a log shipper. Stdout is never
//! written here: it carries the `--json` event streams.

use clap::{Args, ValueEnum};
use monarch_boot::logs::{FILTER_ENV, FORMAT_ENV};
use std::io::IsTerminal as _;
use tracing_subscriber::EnvFilter;

/// How the diagnostics on stderr are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `LEVEL message key=value …`, one line each, no timestamps (the journal adds them).
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the fields.
    Json,
}

impl LogFormat {
    fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The options every command takes (`global`: before or after the subcommand).
#[derive(Args, Debug)]
pub struct LogArgs {
    /// How diagnostics are written to stderr: text, or one JSON object per line (for Loki,
    /// Elastic, Vector…). Stdout (the `--json` events) is unaffected.
    #[arg(long, global = true, value_enum, env = FORMAT_ENV, default_value = "text", value_name = "FORMAT")]
    pub log_format: LogFormat,
    /// Which diagnostics are written: a level (error, warn, info, debug, trace) or
    /// tracing's filter directives, e.g. `warn,monarch_boot=debug`.
    #[arg(long, global = true, env = FILTER_ENV, default_value = "info", value_name = "FILTER", value_parser = parse_filter)]
    pub log_level: String,
}

fn parse_filter(s: &str) -> Result<String, String> {
    EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("not a log filter ({e}); e.g. info or warn,monarch_boot=debug"))
}

/// Install the subscriber, and have the processes this one starts (candidates, agents)
/// write their logs the same way.
pub fn install(a: &LogArgs) {
    monarch_boot::logs::pass_on(a.log_format.name(), &a.log_level);
    // Checked by the parser already; a filter that fails here logs at the default level.
    let filter = EnvFilter::try_new(&a.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match a.log_format {
        LogFormat::Text => {
            builder.without_time().with_target(false).with_ansi(std::io::stderr().is_terminal()).try_init()
        }
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init()
        }
    };
}
