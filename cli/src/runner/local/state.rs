//! The local runner's files: what should run (`desired.json`, written by
//! `mp deploy`), what runs (`status.json`, written by the supervisor), and the
//! logs, all under `<state dir>/services/<name>/`.
//!
//! Files are replaced atomically (write a temporary file, then rename), so a
//! reader in another process never sees half a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::plan::{Part, ServicePlan};
use crate::runner::RunnerError;

/// One process the supervisor keeps running: a part of one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique in the service: `<generation>.<part>` (`3.leaf-0`).
    pub id: String,
    /// The part it runs (name, role, endpoint, environment).
    pub part: Part,
    /// The program, resolved to a path.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// What should run, as `mp deploy` last decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Bumped by every deploy of this name.
    pub generation: u64,
    /// The plan of the current generation (pattern, parts, front).
    pub plan: ServicePlan,
    /// Where clients call the service (`127.0.0.1:7700`).
    pub front: String,
    /// The directory the parts run in (where `mp deploy` ran).
    pub cwd: PathBuf,
    /// Every process that should run now (during an update, old and new).
    pub instances: Vec<Instance>,
}

/// How an instance is doing, as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// The process runs.
    Running,
    /// It exited; it is restarted after a backoff.
    Restarting,
    /// It exited again and again soon after starting.
    CrashLoop,
    /// It is being stopped (not desired any more).
    Stopping,
}

/// One instance in `status.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The current process id, while one runs.
    pub pid: Option<u32>,
    /// Its state.
    pub state: InstanceState,
    /// How many times it was restarted.
    pub restarts: u32,
    /// How it last ended (`exit status: 1`), if it did.
    pub last_exit: Option<String>,
}

/// What runs, as the supervisor last wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The supervisor's process id.
    pub supervisor: u32,
    /// The generation of `desired.json` the supervisor has applied.
    pub generation: u64,
    /// Every instance it manages (desired ones, and ones still stopping).
    pub instances: BTreeMap<String, InstanceStatus>,
}

/// The paths of one service's state.
#[derive(Debug, Clone)]
pub struct ServiceDir {
    /// `<state dir>/services/<name>`.
    pub root: PathBuf,
}

impl ServiceDir {
    /// The state of service `name` under `state_dir`.
    pub fn new(state_dir: &Path, name: &str) -> ServiceDir {
        ServiceDir {
            root: state_dir.join("services").join(name),
        }
    }

    /// `desired.json`.
    pub fn desired(&self) -> PathBuf {
        self.root.join("desired.json")
    }

    /// `status.json`.
    pub fn status(&self) -> PathBuf {
        self.root.join("status.json")
    }

    /// The directory of log files.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The log file of a part (shared by its generations), or of `supervisor`.
    pub fn log(&self, part: &str) -> PathBuf {
        self.logs().join(format!("{part}.log"))
    }

    /// The backends file mp-lb follows.
    pub fn backends(&self) -> PathBuf {
        self.root.join("lb.backends")
    }

    /// The shards file mp-gather follows.
    pub fn shards(&self) -> PathBuf {
        self.root.join("gather.shards")
    }

    /// Reads `desired.json`; `None` if there is none.
    pub fn read_desired(&self) -> Result<Option<Desired>, RunnerError> {
        read_json(&self.desired())
    }

    /// Reads `status.json`; `None` if there is none yet.
    pub fn read_status(&self) -> Result<Option<Status>, RunnerError> {
        read_json(&self.status())
    }

    /// Replaces `desired.json`.
    pub fn write_desired(&self, d: &Desired) -> Result<(), RunnerError> {
        write_json(&self.desired(), d)
    }

    /// Replaces `status.json`.
    pub fn write_status(&self, s: &Status) -> Result<(), RunnerError> {
        write_json(&self.status(), s)
    }
}

/// The services with state under `state_dir`, sorted by name.
pub fn service_names(state_dir: &Path) -> Result<Vec<String>, RunnerError> {
    let dir = state_dir.join("services");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RunnerError::io(format!("cannot list {}", dir.display()), e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("desired.json").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, RunnerError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RunnerError::io(
                format!("cannot read {}", path.display()),
                e,
            ))
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        RunnerError::Other(format!(
            "damaged state file {}: {e}; `mp delete` the service to start over",
            path.display()
        ))
    })
}

/// Writes `value` as JSON to `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RunnerError> {
    let text = serde_json::to_vec_pretty(value).expect("state serializes");
    write_atomic(path, &text)
}

/// Writes `bytes` to `path` atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunnerError> {
    let ctx = || format!("cannot write {}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| RunnerError::io(ctx(), e))?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| RunnerError::io(ctx(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| RunnerError::io(ctx(), e))
}
