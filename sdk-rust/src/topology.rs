//! Topology as code: a program that declares its service's pattern, deploys
//! itself when run, and serves the right role when a runner starts it.
//!
//! ```no_run
//! use serde_json::Value;
//!
//! async fn leaf(_request: Value) -> mp_sdk::Result<Vec<f64>> {
//!     Ok(vec![1.0, 2.0])
//! }
//!
//! async fn merge(merge: mp_sdk::Merge<Vec<f64>>) -> mp_sdk::Result<usize> {
//!     Ok(merge.all()?.into_iter().flatten().count())
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     mp_sdk::Service::new("counter")
//!         .scatter(10, mp_sdk::json(leaf), mp_sdk::json_merger(merge))
//!         .run()
//! }
//! ```
//!
//! Run as a plain program (`counter`, or `counter deploy --runner docker`),
//! [`Service::run`] plans the topology with this very executable as every
//! handler part, deploys it through the runner (the same runners as the `mp`
//! command: default local) and prints where to call it. The runner starts the
//! executable again for each part with `MP_ROLE` set (`handler`, `replica`,
//! `leaf`, `merge`): then `run` serves that role. `counter call [JSON]` calls
//! the service, `counter delete` tears it down.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use mp_cli::ops;
use mp_cli::runner::{self, NoProgress, RunnerKind};
use mp_cli::topology::{PatternKind, Program, ServiceSpec, Topology};

use crate::{Handler, Merger, Server};

/// Adds one role's handler or merger to a server.
type Role = Box<dyn FnOnce(Server) -> Server + Send>;

enum Declared {
    Service(Role),
    Spread(u32, Role),
    Scatter {
        shards: u32,
        leaf: Role,
        merge: Role,
    },
}

/// A service declared in code: a name, a pattern with its handlers, and
/// optionally a front port and extra environment. See the [module
/// docs](self).
pub struct Service {
    name: String,
    port: Option<u16>,
    env: BTreeMap<String, String>,
    declared: Option<Declared>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("pattern", &self.pattern_kind())
            .finish_non_exhaustive()
    }
}

/// Why a declared service cannot be deployed or served.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No pattern was declared (`.service`, `.spread` or `.scatter`).
    #[error("service `{0}` declares no pattern: call .service(..), .spread(..) or .scatter(..) before .run()")]
    NoPattern(String),
    /// The declaration is not valid (e.g. 0 replicas, a bad name).
    #[error(transparent)]
    Topology(#[from] mp_cli::topology::TopologyError),
    /// The runner failed.
    #[error(transparent)]
    Runner(#[from] mp_cli::runner::RunnerError),
    /// A runner started this program in a role its pattern does not have.
    #[error("MP_ROLE={role} is not a role of this {pattern} service (expected {expected})")]
    Role {
        /// The role asked for.
        role: String,
        /// The declared pattern.
        pattern: PatternKind,
        /// The roles it has.
        expected: &'static str,
    },
    /// Serving the role failed.
    #[error(transparent)]
    Serve(#[from] crate::ServeError),
    /// The command line is not understood.
    #[error("{0}")]
    Usage(String),
    /// Anything else (the executable cannot be found, a call failed).
    #[error("{0}")]
    Other(String),
}

fn role<H: Handler>(h: H) -> Role {
    Box::new(move |s: Server| s.handler(h))
}

fn merger_role<M: Merger>(m: M) -> Role {
    Box::new(move |s: Server| s.merger(m))
}

/// What the program was asked to do on its command line.
#[derive(Debug, PartialEq, Eq)]
enum Cmd {
    Deploy { runner: RunnerKind, dry_run: bool },
    Delete { runner: Option<RunnerKind> },
    Call { json: String },
    Help,
}

const USAGE: &str = "usage: PROGRAM [deploy] [--runner local|docker] [--dry-run]
       PROGRAM call [JSON]
       PROGRAM delete [--runner local|docker]

Run with no command, the program deploys its service (a rolling update if it
is deployed) and prints where to call it. Inspect it with `mp ps` and
`mp logs NAME`.";

fn parse(args: &[String]) -> Result<Cmd, String> {
    let mut it = args.iter().map(String::as_str).peekable();
    let command = match it.peek() {
        Some(c) if !c.starts_with('-') => it.next().unwrap_or_default(),
        _ => "deploy",
    };
    let mut runner = None;
    let mut dry_run = false;
    let mut rest = Vec::new();
    while let Some(a) = it.next() {
        match a {
            "--runner" => {
                let v = it.next().ok_or("--runner needs a value: local or docker")?;
                runner = Some(match v {
                    "local" => RunnerKind::Local,
                    "docker" => RunnerKind::Docker,
                    other => {
                        return Err(format!(
                            "unknown runner `{other}`: expected local or docker"
                        ))
                    }
                });
            }
            "--dry-run" => dry_run = true,
            "-h" | "--help" => return Ok(Cmd::Help),
            other if other.starts_with('-') => return Err(format!("unknown option `{other}`")),
            other => rest.push(other.to_string()),
        }
    }
    match command {
        "deploy" if rest.is_empty() => Ok(Cmd::Deploy {
            runner: runner.unwrap_or(RunnerKind::Local),
            dry_run,
        }),
        "delete" if rest.is_empty() && !dry_run => Ok(Cmd::Delete { runner }),
        "call" if rest.len() <= 1 && runner.is_none() && !dry_run => Ok(Cmd::Call {
            json: rest.pop().unwrap_or_else(|| r#"{"foo":"bar"}"#.to_string()),
        }),
        "help" => Ok(Cmd::Help),
        "deploy" | "delete" | "call" => Err(format!("unexpected arguments for `{command}`")),
        other => Err(format!(
            "unknown command `{other}`: expected deploy, call or delete"
        )),
    }
}

impl Service {
    /// A service called `name` (lowercase letters, digits and `-`).
    pub fn new(name: impl Into<String>) -> Service {
        Service {
            name: name.into(),
            port: None,
            env: BTreeMap::new(),
            declared: None,
        }
    }

    /// One process serving `handler`; it is the front.
    pub fn service(mut self, handler: impl Handler) -> Service {
        self.declared = Some(Declared::Service(role(handler)));
        self
    }

    /// `replicas` processes serving `handler`, behind mp-lb (round robin).
    pub fn spread(mut self, replicas: u32, handler: impl Handler) -> Service {
        self.declared = Some(Declared::Spread(replicas, role(handler)));
        self
    }

    /// `shards` processes serving `leaf` (each told its shard: see
    /// [`env()`](crate::env)), behind mp-gather, which sends every request to
    /// all of them and has `merge` combine the replies.
    pub fn scatter(mut self, shards: u32, leaf: impl Handler, merge: impl Merger) -> Service {
        self.declared = Some(Declared::Scatter {
            shards,
            leaf: role(leaf),
            merge: merger_role(merge),
        });
        self
    }

    /// Serve the front on this port (else a free one, kept across updates).
    pub fn port(mut self, port: u16) -> Service {
        self.port = Some(port);
        self
    }

    /// An extra environment variable for every handler process.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Service {
        self.env.insert(key.into(), value.into());
        self
    }

    fn pattern_kind(&self) -> Option<PatternKind> {
        self.declared.as_ref().map(|d| match d {
            Declared::Service(_) => PatternKind::Service,
            Declared::Spread(..) => PatternKind::Spread,
            Declared::Scatter { .. } => PatternKind::Scatter,
        })
    }

    /// The topology this declaration deploys, with `program` (this
    /// executable) as every handler part.
    pub fn topology(&self, program: &Path) -> Result<Topology, DeployError> {
        let cmd = || Some(Program::Command(vec![program.display().to_string()]));
        let mut spec = ServiceSpec {
            name: self.name.clone(),
            port: self.port,
            env: self.env.clone(),
            ..Default::default()
        };
        match &self.declared {
            None => return Err(DeployError::NoPattern(self.name.clone())),
            Some(Declared::Service(_)) => {
                spec.pattern = PatternKind::Service;
                spec.handler = cmd();
            }
            Some(Declared::Spread(n, _)) => {
                spec.pattern = PatternKind::Spread;
                spec.replicas = Some(*n);
                spec.handler = cmd();
            }
            Some(Declared::Scatter { shards, .. }) => {
                spec.pattern = PatternKind::Scatter;
                spec.shards = Some(*shards);
                spec.leaf = cmd();
                spec.merge = cmd();
            }
        }
        Ok(Topology::single(spec.validate()?))
    }

    /// Deploys, calls or deletes the service (run as a plain program), or
    /// serves the role a runner started this process in (`MP_ROLE` set).
    /// Prints a one-line error and returns a failure code when something goes
    /// wrong. Call it from a plain (not async) `main`: it runs its own async
    /// runtime.
    pub fn run(self) -> ExitCode {
        // The local runner supervises a service with this same executable.
        if let Some(code) = mp_cli::runner::local::supervisor::entry() {
            return code;
        }
        let name = self.name.clone();
        match self.try_run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn try_run(self) -> Result<(), DeployError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| DeployError::Other(format!("cannot start the async runtime: {e}")))?;
        if let Some(role) = std::env::var("MP_ROLE").ok().filter(|r| !r.is_empty()) {
            let server = self.server_for(&role)?;
            return Ok(rt.block_on(server.serve())?);
        }
        let args: Vec<String> = std::env::args().skip(1).collect();
        match parse(&args).map_err(|m| DeployError::Usage(format!("{m} (see --help)")))? {
            Cmd::Help => {
                println!("{USAGE}");
                Ok(())
            }
            Cmd::Deploy { runner, dry_run } => rt.block_on(self.deploy(runner, dry_run)),
            Cmd::Delete { runner } => rt.block_on(async {
                if ops::delete(&self.name, runner, &NoProgress).await? {
                    println!("deleted {}", self.name);
                } else {
                    println!("nothing to delete: no service named {}", self.name);
                }
                Ok(())
            }),
            Cmd::Call { json } => rt.block_on(self.call(&json)),
        }
    }

    /// The server for `role`: the handler for `handler`/`replica`/`leaf`,
    /// the merger for `merge`.
    fn server_for(self, role: &str) -> Result<Server, DeployError> {
        let pattern = self
            .pattern_kind()
            .ok_or_else(|| DeployError::NoPattern(self.name.clone()))?;
        let wrong = |expected| DeployError::Role {
            role: role.to_string(),
            pattern,
            expected,
        };
        let add = match (self.declared, role) {
            (Some(Declared::Service(h)), "handler") => h,
            (Some(Declared::Service(_)), _) => return Err(wrong("handler")),
            (Some(Declared::Spread(_, h)), "replica" | "handler") => h,
            (Some(Declared::Spread(..)), _) => return Err(wrong("replica")),
            (Some(Declared::Scatter { leaf, .. }), "leaf") => leaf,
            (Some(Declared::Scatter { merge, .. }), "merge") => merge,
            (Some(Declared::Scatter { .. }), _) => return Err(wrong("leaf or merge")),
            (None, _) => return Err(DeployError::NoPattern(self.name)),
        };
        Ok(add(Server::new()))
    }

    async fn deploy(&self, kind: RunnerKind, dry_run: bool) -> Result<(), DeployError> {
        let exe = std::env::current_exe()
            .map_err(|e| DeployError::Other(format!("cannot find this program's path: {e}")))?;
        let topology = self.topology(&exe)?;
        let runner = runner::connect(kind).await?;
        for d in ops::deploy_and_report(&*runner, &topology, dry_run).await? {
            let prog = exe.file_name().map(|f| f.to_string_lossy().into_owned());
            println!(
                "call it: {} call  (or: mp call {}; grpcurl -plaintext -d '{{\"body\":{{\"json\":{{\"foo\":\"bar\"}}}}}}' {} mp.v1.Handler/Handle)",
                prog.as_deref().unwrap_or("PROGRAM"),
                d.name,
                d.front
            );
        }
        Ok(())
    }

    async fn call(&self, json: &str) -> Result<(), DeployError> {
        let body: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| DeployError::Usage(format!("the request body is not JSON: {e}")))?;
        let (_, front) = ops::locate(&self.name, None).await?;
        let reply = mp_cli::health::call_json(&front, body, Duration::from_secs(30))
            .await
            .map_err(|e| DeployError::Other(format!("calling {} at {front}: {e}", self.name)))?;
        println!("{reply}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_command_line_defaults_to_deploy_on_the_local_runner() {
        let local = Cmd::Deploy {
            runner: RunnerKind::Local,
            dry_run: false,
        };
        assert_eq!(parse(&args(&[])).unwrap(), local);
        assert_eq!(parse(&args(&["deploy"])).unwrap(), local);
        assert_eq!(
            parse(&args(&["--runner", "docker", "--dry-run"])).unwrap(),
            Cmd::Deploy {
                runner: RunnerKind::Docker,
                dry_run: true
            }
        );
        assert_eq!(
            parse(&args(&["delete"])).unwrap(),
            Cmd::Delete { runner: None }
        );
        assert_eq!(
            parse(&args(&["call", "[1]"])).unwrap(),
            Cmd::Call { json: "[1]".into() }
        );
        assert_eq!(
            parse(&args(&["call"])).unwrap(),
            Cmd::Call {
                json: r#"{"foo":"bar"}"#.into()
            }
        );
        assert!(parse(&args(&["--runner", "k8s"]))
            .unwrap_err()
            .contains("unknown runner"));
        assert!(parse(&args(&["launch"]))
            .unwrap_err()
            .contains("unknown command"));
        assert!(parse(&args(&["--fast"]))
            .unwrap_err()
            .contains("unknown option"));
    }

    async fn echo(v: serde_json::Value) -> crate::Result<serde_json::Value> {
        Ok(v)
    }

    async fn count(m: crate::Merge<serde_json::Value>) -> crate::Result<usize> {
        Ok(m.all()?.len())
    }

    #[test]
    fn a_declaration_becomes_a_topology_of_this_program() {
        let exe = Path::new("/bin/prog");
        let t = Service::new("hist")
            .scatter(4, crate::json(echo), crate::json_merger(count))
            .port(7700)
            .env("MODE", "fast")
            .topology(exe)
            .unwrap();
        let s = &t.services[0];
        assert_eq!(s.name, "hist");
        assert_eq!(s.port, Some(7700));
        assert_eq!(s.env["MODE"], "fast");
        let prog = Program::Command(vec!["/bin/prog".into()]);
        assert_eq!(
            s.pattern,
            mp_cli::topology::Pattern::Scatter {
                shards: 4,
                replicas: 1,
                leaf: prog.clone(),
                combine: mp_cli::topology::Combine::Merge(prog),
                policy: None,
            }
        );
        let e = Service::new("x").topology(exe).unwrap_err();
        assert!(e.to_string().contains("declares no pattern"), "{e}");
        let e = Service::new("x")
            .spread(0, crate::json(echo))
            .topology(exe)
            .unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
    }

    #[test]
    fn each_role_gets_its_server_and_other_roles_are_refused() {
        let spread = || Service::new("s").spread(3, crate::json(echo));
        assert!(spread().server_for("replica").is_ok());
        let e = spread().server_for("leaf").unwrap_err();
        assert_eq!(
            e.to_string(),
            "MP_ROLE=leaf is not a role of this spread service (expected replica)"
        );
        let scatter = || Service::new("s").scatter(2, crate::json(echo), crate::json_merger(count));
        assert!(scatter().server_for("leaf").is_ok());
        assert!(scatter().server_for("merge").is_ok());
        assert!(scatter().server_for("replica").is_err());
        assert!(Service::new("s").server_for("handler").is_err());
    }
}
