//! The `mp` command line: its arguments (clap derive; the doc comments are
//! the help) and what each command prints.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;

use crate::health;
use crate::ops;
use crate::plan::Role;
use crate::runner::{self, LogOptions, NoProgress, RunnerError, RunnerKind, ServiceStatus};
use crate::topology::{PatternKind, Policy, Program, Reducer, ServiceSpec, Topology};

/// Deploy distributed-systems patterns (a service, replicas behind a load
/// balancer, scatter/gather) from any handler that speaks the mp gRPC
/// contract; call them, list them, follow their logs, delete them.
#[derive(Debug, Parser)]
#[command(name = "mp", version, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy a topology, or update it in place if it is deployed (a rolling
    /// update). Returns when every part is healthy and prints the front.
    Deploy(DeployArgs),
    /// Call a service: mp.v1.Handler/Handle on its front with a JSON body;
    /// prints the reply's JSON.
    Call(CallArgs),
    /// List deployed services (or one service's parts).
    Ps(PsArgs),
    /// Print every part's output, each line prefixed by its part.
    Logs(LogsArgs),
    /// Stop and remove a service. Deleting what is not there is not an error.
    Delete(DeleteArgs),
}

/// `mp deploy`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  mp deploy --pattern spread --name hello --replicas 3 --handler target/release/examples/hello
  mp deploy --pattern scatter --name histogram-service --shards 10 \\
      --leaf target/release/examples/histogram-leaf --merge target/release/examples/histogram-merge
  mp deploy -f mp.toml")]
pub struct DeployArgs {
    /// Deploy the services declared in this file (`[[service]]` tables)
    /// instead of the flags below.
    #[arg(short = 'f', long = "file", value_name = "MP_TOML", conflicts_with_all = ["pattern", "name"])]
    pub file: Option<PathBuf>,
    /// The pattern.
    #[arg(long, value_enum, required_unless_present = "file")]
    pub pattern: Option<PatternKind>,
    /// The service's name (lowercase letters, digits and -).
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    /// The handler's command line (service, spread), started with MP_PORT,
    /// MP_SERVICE, MP_ROLE, MP_SHARD, MP_SHARDS set.
    #[arg(long, value_name = "CMD")]
    pub handler: Option<String>,
    /// How many replicas (spread; for scatter, replicas of each shard).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// How many shards (scatter).
    #[arg(long, value_name = "N")]
    pub shards: Option<u32>,
    /// The leaf's command line (scatter).
    #[arg(long, value_name = "CMD")]
    pub leaf: Option<String>,
    /// The merge handler's command line (scatter; an mp.v1.Merger).
    #[arg(long, value_name = "CMD", conflicts_with = "reducer")]
    pub merge: Option<String>,
    /// A reducer built into mp-gather instead of a merge handler (scatter).
    #[arg(long, value_enum, value_name = "NAME")]
    pub reducer: Option<Reducer>,
    /// What mp-gather does when leaves fail: all, quorum=K or best-effort (scatter).
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<Policy>,
    /// Treat --handler, --leaf and --merge as container images, not command
    /// lines (container runners only).
    #[arg(long)]
    pub image: bool,
    /// Extra environment for the handlers (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// The front's port (else the service's current one, else a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Where to run it.
    #[arg(long, value_enum, default_value_t = RunnerKind::Local, env = "MP_RUNNER")]
    pub runner: RunnerKind,
    /// Print the plan (every part, its command and environment) and start nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for every part to become healthy, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

/// `mp call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The service.
    pub name: String,
    /// The request body, as JSON.
    #[arg(default_value = r#"{"foo":"bar"}"#)]
    pub json: String,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
    /// Only look for the service on this runner.
    #[arg(long, value_enum)]
    pub runner: Option<RunnerKind>,
}

/// `mp ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show this service's parts.
    pub name: Option<String>,
    /// Only this runner.
    #[arg(long, value_enum)]
    pub runner: Option<RunnerKind>,
}

/// `mp logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The service.
    pub name: String,
    /// Only parts of this role.
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Keep printing new lines as they are written (until Ctrl-C).
    #[arg(short, long)]
    pub follow: bool,
    /// Only look for the service on this runner.
    #[arg(long, value_enum)]
    pub runner: Option<RunnerKind>,
}

/// `mp delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The service.
    pub name: String,
    /// Only delete it from this runner.
    #[arg(long, value_enum)]
    pub runner: Option<RunnerKind>,
    /// Also remove the images mp built for it (docker runner; images other
    /// containers still use, and your own images, are kept).
    #[arg(long)]
    pub prune: bool,
}

/// Parses the command line, runs the command, prints a one-line error on
/// failure. The `mp` binary's whole `main` after the supervisor check.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mp: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mp: {e}");
            ExitCode::FAILURE
        }
    }
}

// clap's errors span several lines (the error, possible values, a usage
// hint); keep them to one line like every other error of mp.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.render().to_string();
    let head: Vec<&str> = text
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let msg = head.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    eprintln!("mp: {msg} (see `mp --help`)");
    ExitCode::from(2)
}

/// The error of a command: one line.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// From a runner or the topology.
    #[error(transparent)]
    Runner(#[from] RunnerError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl From<crate::topology::TopologyError> for CmdError {
    fn from(e: crate::topology::TopologyError) -> Self {
        CmdError::Runner(e.into())
    }
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> Result<(), CmdError> {
    match cli.command {
        Command::Deploy(a) => deploy(a).await,
        Command::Call(a) => call(a).await,
        Command::Ps(a) => ps(a).await,
        Command::Logs(a) => logs(a).await,
        Command::Delete(a) => {
            let deleted = if a.prune && a.runner != Some(RunnerKind::Local) {
                // Only the docker runner has images to prune.
                let docker = runner::docker::DockerRunner::connect()
                    .await?
                    .prune_images(true);
                let mut any = runner::Runner::delete(&docker, &a.name, &NoProgress).await?;
                if a.runner.is_none() {
                    any |= ops::delete(&a.name, Some(RunnerKind::Local), &NoProgress).await?;
                }
                any
            } else {
                ops::delete(&a.name, a.runner, &NoProgress).await?
            };
            if deleted {
                println!("deleted {}", a.name);
            } else {
                println!("nothing to delete: no service named {}", a.name);
            }
            Ok(())
        }
    }
}

fn program(line: Option<String>, image: bool, flag: &str) -> Result<Option<Program>, CmdError> {
    line.map(|l| {
        if image {
            Ok(Program::Image(l))
        } else {
            Program::parse_command_line(&l).map_err(|m| CmdError::Other(format!("--{flag}: {m}")))
        }
    })
    .transpose()
}

async fn deploy(a: DeployArgs) -> Result<(), CmdError> {
    let topology = match &a.file {
        Some(path) => Topology::from_file(path)?,
        None => {
            let spec = ServiceSpec {
                name: a.name.clone().unwrap_or_default(),
                pattern: a.pattern.unwrap_or_default(),
                handler: program(a.handler, a.image, "handler")?,
                replicas: a.replicas,
                shards: a.shards,
                leaf: program(a.leaf, a.image, "leaf")?,
                merge: program(a.merge, a.image, "merge")?,
                reducer: a.reducer,
                policy: a.policy,
                port: a.port,
                env: a.env.into_iter().collect(),
            };
            Topology::single(spec.validate()?)
        }
    };
    let runner: Box<dyn runner::Runner> = match a.runner {
        RunnerKind::Local => Box::new(
            runner::local::LocalRunner::from_env()?.deploy_timeout(Duration::from_secs(a.timeout)),
        ),
        RunnerKind::Docker => Box::new(
            runner::docker::DockerRunner::connect()
                .await?
                .deploy_timeout(Duration::from_secs(a.timeout)),
        ),
    };
    ops::deploy_and_report(&*runner, &topology, a.dry_run).await?;
    Ok(())
}

async fn call(a: CallArgs) -> Result<(), CmdError> {
    let body: serde_json::Value = serde_json::from_str(&a.json).map_err(|e| {
        CmdError::Other(format!(
            "the request body is not JSON ({e}): quote it for the shell, e.g. mp call {} '{{\"foo\":\"bar\"}}'",
            a.name
        ))
    })?;
    let (_, front) = ops::locate(&a.name, a.runner).await?;
    let reply = health::call_json(&front, body, Duration::from_secs(a.timeout))
        .await
        .map_err(|e| CmdError::Other(format!("calling {} at {front}: {e}", a.name)))?;
    println!(
        "{}",
        serde_json::to_string(&reply).expect("JSON serializes")
    );
    Ok(())
}

async fn ps(a: PsArgs) -> Result<(), CmdError> {
    let mut all: Vec<ServiceStatus> = Vec::new();
    for r in ops::runners(a.runner).await? {
        match &a.name {
            Some(name) => all.extend(r.status(name).await?),
            None => all.extend(r.list().await?),
        }
    }
    if let Some(name) = &a.name {
        let Some(s) = all.first() else {
            return Err(RunnerError::NotFound(name.clone()).into());
        };
        println!(
            "{:<16} {:<8} {:<11} {:>8}  {:<22} {:<14} LAST EXIT",
            "PART", "ROLE", "STATE", "RESTARTS", "ADDRESS", "ID"
        );
        for p in &s.parts {
            let id = p.id.as_deref().unwrap_or("-");
            println!(
                "{:<16} {:<8} {:<11} {:>8}  {:<22} {:<14} {}",
                p.name,
                p.role,
                p.state,
                p.restarts,
                p.address,
                &id[..id.len().min(14)],
                p.last_exit.as_deref().unwrap_or("-")
            );
        }
        if let Some(w) = &s.warning {
            println!("note: {w}");
        }
        return Ok(());
    }
    if all.is_empty() {
        eprintln!("no services deployed (deploy one with `mp deploy`)");
        return Ok(());
    }
    let width = all.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<width$}  {:<8} {:<7} {:>7} {:>8}  {:<22} STATUS",
        "NAME", "PATTERN", "RUNNER", "HEALTHY", "RESTARTS", "FRONT"
    );
    for s in &all {
        println!(
            "{:<width$}  {:<8} {:<7} {:>7} {:>8}  {:<22} {}",
            s.name,
            s.pattern,
            s.runner,
            format!("{}/{}", s.healthy(), s.parts.len()),
            s.restarts(),
            s.front.as_deref().unwrap_or("-"),
            summary(s)
        );
    }
    for s in all.iter().filter(|s| s.warning.is_some()) {
        println!("note: {}", s.warning.as_deref().unwrap_or_default());
    }
    Ok(())
}

/// One word for a service's state, naming the parts that are not healthy.
fn summary(s: &ServiceStatus) -> String {
    use crate::runner::PartState;
    let bad: Vec<String> = s
        .parts
        .iter()
        .filter(|p| p.state != PartState::Healthy)
        .map(|p| format!("{} {}", p.name, p.state))
        .collect();
    let parts = summary_of_parts(&bad);
    if s.warning.is_some() {
        // The note itself follows the table.
        format!("{parts} (see the note below)")
    } else {
        parts
    }
}

fn summary_of_parts(bad: &[String]) -> String {
    if bad.is_empty() {
        "healthy".to_string()
    } else if bad.len() > 3 {
        format!(
            "{}, ... ({} parts not healthy)",
            bad[..3].join(", "),
            bad.len()
        )
    } else {
        bad.join(", ")
    }
}

async fn logs(a: LogsArgs) -> Result<(), CmdError> {
    let (runner, _) = ops::locate(&a.name, a.runner).await?;
    let mut stream = runner
        .logs(
            &a.name,
            &LogOptions {
                role: a.role,
                follow: a.follow,
            },
        )
        .await?;
    use std::io::Write;
    while let Some(line) = stream.next().await {
        let line = line?;
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{:<10} | {}", line.part, line.line).is_err() {
            // The reader went away (`mp logs x | head`): stop quietly.
            break;
        }
        if a.follow {
            let _ = out.flush();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn deploy_flags_parse_into_a_service() {
        let cli = Cli::try_parse_from([
            "mp",
            "deploy",
            "--pattern",
            "scatter",
            "--name",
            "h",
            "--shards",
            "3",
            "--leaf",
            "python3 'my leaf.py'",
            "--reducer",
            "concat",
            "--policy",
            "quorum=2",
            "--env",
            "A=1",
            "--port",
            "7700",
            "--dry-run",
        ])
        .unwrap();
        let Command::Deploy(a) = cli.command else {
            panic!("not deploy")
        };
        assert_eq!(a.pattern, Some(PatternKind::Scatter));
        assert_eq!(a.policy, Some(Policy::Quorum(2)));
        assert_eq!(a.reducer, Some(Reducer::Concat));
        assert_eq!(a.env, [("A".to_string(), "1".to_string())]);
        assert!(a.dry_run);
        assert_eq!(
            program(a.leaf, false, "leaf").unwrap(),
            Some(Program::Command(vec![
                "python3".into(),
                "my leaf.py".into()
            ]))
        );
        assert_eq!(
            program(Some("me/leaf:1".into()), true, "leaf").unwrap(),
            Some(Program::Image("me/leaf:1".into()))
        );
    }

    #[test]
    fn usage_errors_are_refused_by_the_parser() {
        for args in [
            &["mp", "deploy", "--pattern", "ring", "--name", "x"][..],
            &["mp", "deploy", "--name", "x"],
            &["mp", "deploy", "-f", "mp.toml", "--pattern", "spread"],
            &[
                "mp",
                "deploy",
                "--pattern",
                "scatter",
                "--name",
                "x",
                "--merge",
                "m",
                "--reducer",
                "first",
            ],
            &[
                "mp",
                "deploy",
                "--pattern",
                "spread",
                "--name",
                "x",
                "--env",
                "NOEQUALS",
            ],
            &["mp", "call"],
            &["mp", "logs", "x", "--role", "boss"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
        let cli = Cli::try_parse_from(["mp", "call", "x"]).unwrap();
        let Command::Call(a) = cli.command else {
            panic!("not call")
        };
        assert_eq!(a.json, r#"{"foo":"bar"}"#);
    }
}
