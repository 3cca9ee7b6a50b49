//! The local runner: every part a process on this machine, kept running by a
//! detached supervisor after `mp` exits, with its state in a directory of its
//! own so another shell's `mp ps/logs/call/delete` see it.

use std::path::PathBuf;

use crate::plan::{Addressing, SequentialPorts, ServicePlan};
use crate::runner::{
    Deployed, LogOptions, LogStream, Progress, Runner, RunnerError, RunnerKind, ServiceStatus,
};

/// Runs services as local processes; state under [`LocalRunner::state_dir`].
#[derive(Debug, Clone)]
pub struct LocalRunner {
    state_dir: PathBuf,
}

/// Where the local runner keeps its state: `$MP_STATE_DIR`, else
/// `$XDG_STATE_HOME/mp`, else `~/.local/state/mp`.
pub fn default_state_dir() -> Result<PathBuf, RunnerError> {
    if let Some(d) = std::env::var_os("MP_STATE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("mp"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/mp")),
        None => Err(RunnerError::Other(
            "no state directory: set MP_STATE_DIR (or XDG_STATE_HOME or HOME)".into(),
        )),
    }
}

impl LocalRunner {
    /// A runner with its state in [`default_state_dir`].
    pub fn from_env() -> Result<LocalRunner, RunnerError> {
        Ok(LocalRunner::with_state_dir(default_state_dir()?))
    }

    /// A runner with its state in `dir`.
    pub fn with_state_dir(dir: impl Into<PathBuf>) -> LocalRunner {
        LocalRunner {
            state_dir: dir.into(),
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }
}

#[async_trait::async_trait]
impl Runner for LocalRunner {
    fn kind(&self) -> RunnerKind {
        RunnerKind::Local
    }

    fn addressing(&self) -> Box<dyn Addressing + Send + '_> {
        Box::new(SequentialPorts::from(17000))
    }

    async fn deploy(
        &self,
        _plan: &ServicePlan,
        _progress: &dyn Progress,
    ) -> Result<Deployed, RunnerError> {
        Err(RunnerError::Unsupported(
            "the local runner is being built".into(),
        ))
    }

    async fn list(&self) -> Result<Vec<ServiceStatus>, RunnerError> {
        Ok(Vec::new())
    }

    async fn front(&self, name: &str) -> Result<String, RunnerError> {
        Err(RunnerError::NotFound(name.to_string()))
    }

    async fn logs(&self, name: &str, _options: &LogOptions) -> Result<LogStream, RunnerError> {
        Err(RunnerError::NotFound(name.to_string()))
    }

    async fn delete(&self, _name: &str, _progress: &dyn Progress) -> Result<bool, RunnerError> {
        Ok(false)
    }
}
