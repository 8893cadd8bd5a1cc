//! Logs go to stderr through `tracing`: plain lines that journald stores well, or JSON lines for
//! log shippers. `RUST_LOG` picks what is shown (default `info`; the embedded broker's own
//! chatter, which logs ordinary disconnects as errors, is kept to warnings).

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber; call once, first thing in `main`. `default` is the filter
/// used when `RUST_LOG` is not set (the demo wants its narration, not the daemon's log lines).
pub fn init(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Under systemd the journal stamps each line itself; a second timestamp is noise.
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    match (format, under_journald) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Plain, true) => builder.without_time().with_ansi(false).init(),
        (LogFormat::Plain, false) => builder.init(),
    }
}
