//! `mp-lb`: parse flags, bind, run until SIGTERM/SIGINT, exit 0 after draining.

use std::process::ExitCode;

use clap::Parser;
use mp_lb::Args;
use tracing::info;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("mp-lb: {e}");
        return ExitCode::from(2);
    }
    mp_sidecar::telemetry::init();
    let (rt, threads) = match mp_sidecar::runtime::build(args.threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mp-lb: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args, threads)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mp-lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args, threads: usize) -> anyhow::Result<()> {
    use anyhow::Context;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let admin = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("cannot listen on {} (--admin)", args.admin))?;
    info!(
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        threads,
        "mp-lb serving"
    );
    mp_lb::run(args, listener, Some(admin), mp_sidecar::shutdown::signal())
        .await
        .context("cannot set up TLS (--tls-cert, --tls-key, --backend-tls-ca)")?;
    Ok(())
}
