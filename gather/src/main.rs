//! mp-gather: scatter a request to every shard, gather and merge the replies.
//! See `mp-gather --help` and the crate docs.

use std::process::ExitCode;

use clap::Parser;
use mp_gather::config::Args;
use tokio::net::TcpListener;
use tracing::error;

#[global_allocator]
static ALLOC: mp_alloc::MpAlloc = mp_alloc::MpAlloc;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One clear line instead of clap's usage block.
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            let line = line.strip_prefix("error: ").unwrap_or(line);
            eprintln!("mp-gather: {line} (see mp-gather --help)");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = mp_gather::topology::from_args(&args) {
        eprintln!("mp-gather: {e}");
        return ExitCode::from(2);
    }
    mp_sidecar::telemetry::init();
    let runtime = mp_sidecar::runtime::build(Some(args.threads)).map(|(rt, _)| rt);
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mp-gather: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("mp-gather: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin = match args.admin {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--admin)"))?,
        ),
        None => None,
    };
    mp_gather::run(args, listener, admin, mp_sidecar::shutdown::signal()).await?;
    Ok(())
}
