//! `mp`: deploy, call, list, follow and delete topologies.

use std::process::ExitCode;

fn main() -> ExitCode {
    // `mp deploy` re-runs this executable as a service's supervisor.
    if let Some(code) = mp_cli::runner::local::supervisor::entry() {
        return code;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    mp_cli::cmd::main()
}
