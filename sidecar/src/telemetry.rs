//! Logging: a `tracing` subscriber writing to stderr, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the process-wide `tracing` subscriber: human-readable lines on
/// stderr (coloured only on a terminal), filtered by `RUST_LOG` (default
/// `info`).
///
/// Safe to call more than once (e.g. from several tests): later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // `try_init` fails only when a subscriber is already set, which is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for people: logs piped to files or collectors stay plain.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
