//! Runners: how a [`ServicePlan`] is started, listed, followed and deleted on
//! one kind of engine (local processes, Docker, ...).
//!
//! A runner is a thin layer over its engine: the plan (what to run) is already
//! decided by [`crate::plan`]; the runner only supplies addresses
//! ([`Runner::addressing`]) and turns parts into processes or containers. The
//! CLI and the SDK's topology-as-code drive every runner through [`Runner`]
//! and report progress through [`Progress`].

use std::fmt;
use std::time::Duration;

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::plan::{Addressing, PlanError, Role, ServicePlan};
use crate::topology::{PatternKind, TopologyError};

pub mod docker;
pub mod local;

/// Which runner to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    /// Plain processes on this machine (the default: needs nothing installed).
    Local,
    /// Containers on a Docker engine.
    Docker,
}

impl RunnerKind {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerKind::Local => "local",
            RunnerKind::Docker => "docker",
        }
    }
}

impl fmt::Display for RunnerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What went wrong in a runner. Every message is one line that says what to
/// do next where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// No service of that name is deployed on this runner.
    #[error("no service named `{0}` is deployed (`mp ps` lists them)")]
    NotFound(String),
    /// The topology is invalid.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The plan could not be made.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The front port (or another needed port) is taken.
    #[error("port {port} is already in use{by}: choose another with --port, or stop what uses it")]
    PortInUse {
        /// The port.
        port: u16,
        /// ` by <who>` when known, else empty.
        by: String,
    },
    /// A part's program cannot be run (not found, not executable, bad image).
    #[error("{part}: {message}")]
    BadProgram {
        /// The part (`replica-0`) or the program.
        part: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A part stopped while the deploy waited for it to become healthy.
    #[error("{part} exited at once ({status}){last_line}: check the command, then `mp logs {service} --role {role}`")]
    PartExited {
        /// The service.
        service: String,
        /// The part.
        part: String,
        /// Its role (for the `mp logs` hint).
        role: Role,
        /// How it ended (`exit status 1`, `signal 9`).
        status: String,
        /// `: <last line of its output>` when there is one, else empty.
        last_line: String,
    },
    /// A part did not pass its health check in time.
    #[error("{part} did not become healthy within {after:?}{detail}: see `mp logs {service}`")]
    Unhealthy {
        /// The service.
        service: String,
        /// The part.
        part: String,
        /// How long the deploy waited.
        after: Duration,
        /// `: <last health-check error>` when there is one, else empty.
        detail: String,
    },
    /// A replacement passed its health check but the service's front did
    /// not start sending it calls in time; the part it was to replace keeps
    /// serving.
    #[error("the new {part} is healthy but the front did not send it calls within {after:?}, so the old {part} keeps serving and the new one was removed: see `mp logs {service} --role {front}`")]
    NotTakenUp {
        /// The service.
        service: String,
        /// The part being replaced.
        part: String,
        /// The front's role (for the `mp logs` hint).
        front: Role,
        /// How long the update waited.
        after: Duration,
    },
    /// A replaced leaf's address stayed in mp-gather's shard after the leaf
    /// was removed; the update stopped rather than let another shard's leaf
    /// be given that address.
    #[error("the old {part} is gone but the front still lists its address after {after:?}; the update stopped here (the new {part} serves): see `mp logs {service} --role {front}`, then run the deploy again")]
    NotDropped {
        /// The service.
        service: String,
        /// The part that was replaced.
        part: String,
        /// The front's role (for the `mp logs` hint).
        front: Role,
        /// How long the update waited.
        after: Duration,
    },
    /// One of mp's own programs (mp-lb, mp-gather) is missing.
    #[error("{program} not found next to {beside} nor on PATH: build it with `cargo build --release --bins` (or put it on PATH)")]
    MissingDataPlane {
        /// The program's name.
        program: String,
        /// The directory searched first.
        beside: String,
    },
    /// The engine cannot be reached (e.g. no Docker daemon).
    #[error("{0}")]
    Unavailable(String),
    /// The runner does not support this (yet).
    #[error("{0}")]
    Unsupported(String),
    /// The runner's own state is damaged or could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Anything else, said in one line.
    #[error("{0}")]
    Other(String),
}

impl RunnerError {
    /// An [`RunnerError::Io`] with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> RunnerError {
        RunnerError::Io {
            context: context.into(),
            source,
        }
    }
}

/// How far a part has come, as reported to [`Progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartEvent {
    /// The process or container is being started.
    Starting,
    /// It runs; its health check does not pass yet.
    Started,
    /// Its health check passed.
    Healthy,
    /// It is being stopped (delete, or replaced by an update).
    Stopping,
    /// It is gone.
    Stopped,
    /// It failed (the message says how).
    Failed(String),
}

/// Receives progress while a runner works, so a user sees parts come up.
/// Implementations must be cheap and must not block.
pub trait Progress: Send + Sync {
    /// `part` of `service` reached `event`.
    fn part(&self, service: &str, part: &str, event: PartEvent);
    /// A free-form step (`building image mp-data-plane`, `updating hello`).
    fn note(&self, service: &str, message: &str);
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn part(&self, _: &str, _: &str, _: PartEvent) {}
    fn note(&self, _: &str, _: &str) {}
}

/// What a successful deploy gives back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The service.
    pub name: String,
    /// How many parts run.
    pub parts: usize,
    /// Where clients call it (`127.0.0.1:7700`).
    pub front: String,
    /// Whether an existing deployment was updated (rather than created).
    pub updated: bool,
}

/// The state of one part, for `mp ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartState {
    /// Running and answering its health check.
    Healthy,
    /// Running; its health check does not pass (yet).
    Running,
    /// Waiting before a restart after it crashed.
    Restarting,
    /// It keeps crashing: restarted several times in a short while.
    CrashLoop,
    /// Not running and not going to be restarted.
    Stopped,
}

impl fmt::Display for PartState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            PartState::Healthy => "healthy",
            PartState::Running => "running",
            PartState::Restarting => "restarting",
            PartState::CrashLoop => "crash-loop",
            PartState::Stopped => "stopped",
        })
    }
}

/// One part of a deployed service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartStatus {
    /// The part's name (`leaf-3`).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its state.
    pub state: PartState,
    /// How many times it was restarted.
    pub restarts: u32,
    /// Where it listens (as the runner sees it).
    pub address: String,
    /// The process id or container id.
    pub id: Option<String>,
    /// How it last ended, if it did (`exit status 1`).
    pub last_exit: Option<String>,
}

/// A deployed service, for `mp ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: String,
    /// Its pattern.
    pub pattern: PatternKind,
    /// The runner it is on.
    pub runner: RunnerKind,
    /// Where clients call it, if known.
    pub front: Option<String>,
    /// Every part.
    pub parts: Vec<PartStatus>,
    /// Something the user must know beyond the parts' states, and what to do
    /// about it (the local runner: the service's supervisor is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl ServiceStatus {
    /// How many parts are healthy.
    pub fn healthy(&self) -> usize {
        self.parts
            .iter()
            .filter(|p| p.state == PartState::Healthy)
            .count()
    }

    /// The total restarts of all parts.
    pub fn restarts(&self) -> u32 {
        self.parts.iter().map(|p| p.restarts).sum()
    }
}

/// Which log lines to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only parts of this role.
    pub role: Option<Role>,
    /// Keep following new lines until the stream is dropped.
    pub follow: bool,
}

/// One line of a part's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The part that printed it.
    pub part: String,
    /// The line, without its newline.
    pub line: String,
}

/// A stream of log lines (endless when following).
pub type LogStream = BoxStream<'static, Result<LogLine, RunnerError>>;

/// An engine that runs service plans. Implementations: [`local::LocalRunner`]
/// (processes), and the Docker runner.
#[async_trait::async_trait]
pub trait Runner: Send + Sync {
    /// Which runner this is.
    fn kind(&self) -> RunnerKind;

    /// The addresses this runner gives parts of new plans. The local runner
    /// picks free loopback ports (and keeps an existing service's front port
    /// on an update); Docker uses container names on the service's network.
    fn addressing(&self) -> Box<dyn Addressing + Send + '_>;

    /// Starts `plan` (or updates the service of the same name in place, a
    /// rolling update: calls keep succeeding) and returns once every part
    /// passes its health check, reporting progress on the way. On failure
    /// nothing of a new service is left running, and an updated service keeps
    /// running as before.
    async fn deploy(
        &self,
        plan: &ServicePlan,
        progress: &dyn Progress,
    ) -> Result<Deployed, RunnerError>;

    /// Every service this runner has deployed.
    async fn list(&self) -> Result<Vec<ServiceStatus>, RunnerError>;

    /// The service called `name`, or `None` if this runner has no such service.
    async fn status(&self, name: &str) -> Result<Option<ServiceStatus>, RunnerError> {
        Ok(self.list().await?.into_iter().find(|s| s.name == name))
    }

    /// The address (`host:port`) where clients on this machine call the
    /// service's front, or [`RunnerError::NotFound`].
    async fn front(&self, name: &str) -> Result<String, RunnerError>;

    /// The output of every part of `name` (or of one role), each line tagged
    /// with its part; endless when `options.follow`.
    async fn logs(&self, name: &str, options: &LogOptions) -> Result<LogStream, RunnerError>;

    /// Stops and removes everything of `name`. Returns whether there was
    /// anything to delete: deleting what is gone is not an error.
    async fn delete(&self, name: &str, progress: &dyn Progress) -> Result<bool, RunnerError>;
}

/// The runner of `kind`, ready to use. The Docker runner connects to the
/// engine here, so a missing daemon is reported before anything else.
pub async fn connect(kind: RunnerKind) -> Result<Box<dyn Runner>, RunnerError> {
    match kind {
        RunnerKind::Local => Ok(Box::new(local::LocalRunner::from_env()?)),
        // The Docker runner (runner/docker*) plugs in here.
        RunnerKind::Docker => Ok(Box::new(docker::DockerRunner::connect().await?)),
    }
}
