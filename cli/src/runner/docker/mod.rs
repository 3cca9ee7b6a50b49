//! The docker runner: every part of a service a container on a Docker engine,
//! driven through the engine's API (bollard).
//!
//! # Layout
//! - [`engine`]: reaching the engine (`DOCKER_HOST` or the default socket), or
//!   one line saying why not.
//! - [`image`]: `FROM scratch` images of our binaries (no registry needed),
//!   tagged by content.
//! - [`labels`]: names and labels; the labels are the runner's only state.
//! - [`spec`]: a plan's part as a container specification (pure, digested).
//! - `deploy`: networks and containers, health checks, rolling updates.
//! - `logs`: following the parts' output.
//!
//! What a service becomes: a bridge network `mp-<name>`; one container per
//! part, `mp-<name>-<role>-<i>`, on that network, reached by its name; the
//! front published on `127.0.0.1:<port>`; every container published on an
//! ephemeral loopback port too, so `mp` checks each part's gRPC health from
//! this machine (a `FROM scratch` image has no shell or probe program to run
//! a Docker healthcheck with). Containers restart unless stopped by hand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bollard::models::ContainerSummary;
use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;

use crate::plan::{Addressing, DataPlane, Exec, Role, ServicePlan};
use crate::runner::{
    Deployed, LogOptions, LogStream, PartState, PartStatus, Progress, Runner, RunnerError,
    RunnerKind, ServiceStatus,
};

mod deploy;
pub mod engine;
pub mod error;
pub mod image;
pub mod labels;
mod logs;
pub mod spec;

pub use error::DockerError;
pub use spec::DockerAddressing;

/// Runs services as containers on a Docker engine. Holds no state of its own:
/// everything is found again by label.
#[derive(Debug, Clone)]
pub struct DockerRunner {
    docker: Docker,
    prune_images: bool,
    ready_timeout: std::time::Duration,
}

impl From<DockerError> for RunnerError {
    fn from(e: DockerError) -> RunnerError {
        match e {
            DockerError::Unreachable { .. } => RunnerError::Unavailable(e.to_string()),
            other => RunnerError::Other(other.to_string()),
        }
    }
}

impl DockerRunner {
    /// Connects to the engine (`DOCKER_HOST`, else the default socket);
    /// fails with one line saying how to fix it when no engine answers.
    pub async fn connect() -> Result<DockerRunner, RunnerError> {
        Ok(DockerRunner {
            docker: engine::connect().await?,
            prune_images: false,
            ready_timeout: deploy::READY_TIMEOUT,
        })
    }

    /// How long [`Runner::deploy`] waits for each part to pass its health
    /// check before it gives up (and removes what it started).
    pub fn deploy_timeout(mut self, limit: std::time::Duration) -> DockerRunner {
        self.ready_timeout = limit;
        self
    }

    /// Whether [`Runner::delete`] also removes the images mp built for the
    /// service (images still used by other containers, and users' own
    /// images, are kept).
    pub fn prune_images(mut self, prune: bool) -> DockerRunner {
        self.prune_images = prune;
        self
    }

    /// The engine client.
    pub fn engine(&self) -> &Docker {
        &self.docker
    }

    /// Every container mp made for `service` (or for every service), running
    /// or not.
    async fn containers(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters: std::collections::HashMap<&str, Vec<String>> =
            [("label", labels::filter(service))].into_iter().collect();
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|e| DockerError::api("listing containers", e))
    }

    /// How each part of `plan` runs in a container: images built (or found)
    /// for our binaries, users' images checked to exist.
    async fn launches(
        &self,
        plan: &ServicePlan,
        progress: &dyn Progress,
    ) -> Result<BTreeMap<String, spec::Launch>, RunnerError> {
        let mut by_part = BTreeMap::new();
        let mut built: BTreeMap<PathBuf, String> = BTreeMap::new();
        let mut data_plane: Option<String> = None;
        let service = plan.name();
        let mut note = |m: String| progress.note(service, &m);
        for part in &plan.parts {
            let launch = match &part.exec {
                Exec::DataPlane { binary, .. } => {
                    let tag = match &data_plane {
                        Some(t) => t.clone(),
                        None => {
                            // One image holds both programs; only the one this
                            // service runs must exist.
                            let mut bins = vec![find_data_plane(*binary)?];
                            let other = match binary {
                                DataPlane::MpLb => DataPlane::MpGather,
                                DataPlane::MpGather => DataPlane::MpLb,
                            };
                            bins.extend(find_data_plane(other).ok());
                            bins.sort();
                            let t = self
                                .package(image::DATA_PLANE_REPOSITORY, bins, &mut note)
                                .await?;
                            data_plane = Some(t.clone());
                            t
                        }
                    };
                    spec::Launch {
                        image: tag,
                        program: Some(format!("{}/{}", image::BIN_DIR, binary.binary_name())),
                    }
                }
                Exec::Command { program, .. } => {
                    let bin =
                        handler_binary(program).map_err(|message| RunnerError::BadProgram {
                            part: part.name.clone(),
                            message,
                        })?;
                    let tag = match built.get(&bin) {
                        Some(t) => t.clone(),
                        None => {
                            let name = bin
                                .file_name()
                                .and_then(|n| n.to_str())
                                .unwrap_or("handler");
                            let t = self
                                .package(&image::repository_for(name), vec![bin.clone()], &mut note)
                                .await
                                .map_err(|e| RunnerError::BadProgram {
                                    part: part.name.clone(),
                                    message: e.to_string(),
                                })?;
                            built.insert(bin.clone(), t.clone());
                            t
                        }
                    };
                    let file = bin.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    spec::Launch {
                        image: tag,
                        program: Some(format!("{}/{file}", image::BIN_DIR)),
                    }
                }
                Exec::Image { image } => {
                    if let Err(e) = self.docker.inspect_image(image).await {
                        let message = if error::status_of(&e) == Some(404) {
                            format!(
                                "image `{image}` is not on this Docker engine, and mp does not pull \
                                 images: build it here (`docker build -t {image} .`) or load it \
                                 (`docker load`), then deploy again"
                            )
                        } else {
                            DockerError::api(format!("inspecting image {image}"), e).to_string()
                        };
                        return Err(RunnerError::BadProgram {
                            part: part.name.clone(),
                            message,
                        });
                    }
                    spec::Launch {
                        image: image.clone(),
                        program: None,
                    }
                }
            };
            by_part.insert(part.name.clone(), launch);
        }
        Ok(by_part)
    }

    /// The tag of a `FROM scratch` image of `binaries`, building it if the
    /// engine does not have it yet.
    async fn package(
        &self,
        repository: &str,
        binaries: Vec<PathBuf>,
        note: &mut (dyn FnMut(String) + Send),
    ) -> Result<String, DockerError> {
        let sources = tokio::task::spawn_blocking(move || image::Sources::for_binaries(&binaries))
            .await
            .map_err(|e| DockerError::Context(e.to_string()))??;
        image::ensure_image(&self.docker, repository, sources, note).await
    }
}

/// Finds mp-lb or mp-gather: next to the running program (or one directory
/// up, for programs in `target/*/examples/`), else on `PATH`.
pub fn find_data_plane(which: DataPlane) -> Result<PathBuf, RunnerError> {
    let name = which.binary_name();
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    if let Some(dir) = &exe_dir {
        for d in [Some(dir.as_path()), dir.parent()].into_iter().flatten() {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
        {
            return Ok(p);
        }
    }
    Err(RunnerError::MissingDataPlane {
        program: name.to_string(),
        beside: exe_dir.map_or_else(|| "mp".to_string(), |d| d.display().to_string()),
    })
}

/// The binary file a handler's program names, to package into an image.
/// Only native binaries given as files can be packaged; anything else needs
/// a user's image, and the message says so.
fn handler_binary(program: &str) -> Result<PathBuf, String> {
    let path = Path::new(program);
    let needs_image = "the docker runner packages native handler binaries given by path (e.g. \
                       target/release/examples/hello) into images; for anything else (python3 \
                       leaf.py, a JVM, ...) build an image that serves on $MP_PORT and deploy it \
                       with --image (or `{ image = \"NAME\" }` in mp.toml)";
    if path.is_file() {
        return std::fs::canonicalize(path).map_err(|e| format!("cannot read `{program}`: {e}"));
    }
    if program.contains('/') {
        return Err(format!("`{program}` does not exist (build it first?)"));
    }
    Err(format!(
        "`{program}` is a command, not a binary file: {needs_image}"
    ))
}

fn label<'a>(c: &'a ContainerSummary, key: &str) -> Option<&'a str> {
    c.labels.as_ref()?.get(key).map(String::as_str)
}

#[async_trait::async_trait]
impl Runner for DockerRunner {
    fn kind(&self) -> RunnerKind {
        RunnerKind::Docker
    }

    fn addressing(&self) -> Box<dyn Addressing + Send + '_> {
        Box::new(DockerAddressing)
    }

    async fn deploy(
        &self,
        plan: &ServicePlan,
        progress: &dyn Progress,
    ) -> Result<Deployed, RunnerError> {
        deploy::deploy(self, plan, progress).await
    }

    async fn list(&self) -> Result<Vec<ServiceStatus>, RunnerError> {
        let containers = self.containers(None).await?;
        let mut names: Vec<String> = containers
            .iter()
            .filter_map(|c| label(c, labels::SERVICE).map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            let mine: Vec<&ContainerSummary> = containers
                .iter()
                .filter(|c| label(c, labels::SERVICE) == Some(name.as_str()))
                .collect();
            out.push(self.service_status(&name, &mine).await);
        }
        Ok(out)
    }

    async fn status(&self, name: &str) -> Result<Option<ServiceStatus>, RunnerError> {
        let containers = self.containers(Some(name)).await?;
        if containers.is_empty() {
            return Ok(None);
        }
        let mine: Vec<&ContainerSummary> = containers.iter().collect();
        Ok(Some(self.service_status(name, &mine).await))
    }

    async fn front(&self, name: &str) -> Result<String, RunnerError> {
        let containers = self.containers(Some(name)).await?;
        containers
            .iter()
            .find_map(|c| label(c, labels::FRONT_PORT))
            .map(|port| format!("127.0.0.1:{port}"))
            .ok_or_else(|| RunnerError::NotFound(name.to_string()))
    }

    async fn logs(&self, name: &str, options: &LogOptions) -> Result<LogStream, RunnerError> {
        if self.containers(Some(name)).await?.is_empty() {
            return Err(RunnerError::NotFound(name.to_string()));
        }
        let parts = logs::parts(&self.docker, name, options.role).await?;
        Ok(logs::stream(
            self.docker.clone(),
            name.to_string(),
            options.role,
            parts,
            options.follow,
        ))
    }

    async fn delete(&self, name: &str, progress: &dyn Progress) -> Result<bool, RunnerError> {
        deploy::delete(self, name, progress).await
    }
}

impl DockerRunner {
    /// The status of the service `name` from its containers.
    async fn service_status(&self, name: &str, containers: &[&ContainerSummary]) -> ServiceStatus {
        let pattern = containers
            .iter()
            .find_map(|c| label(c, labels::PATTERN))
            .and_then(|p| p.parse().ok())
            .unwrap_or(crate::topology::PatternKind::Service);
        let front = containers
            .iter()
            .find_map(|c| label(c, labels::FRONT_PORT))
            .map(|p| format!("127.0.0.1:{p}"));
        let checks = containers.iter().map(|c| self.part_status(c));
        let mut parts = futures::future::join_all(checks).await;
        parts.sort_by(|a, b| (a.role, &a.name).cmp(&(b.role, &b.name)));
        ServiceStatus {
            name: name.to_string(),
            pattern,
            runner: RunnerKind::Docker,
            front,
            parts,
            warning: None,
        }
    }

    async fn part_status(&self, c: &ContainerSummary) -> PartStatus {
        use bollard::models::ContainerSummaryStateEnum as S;
        let id = c.id.clone().unwrap_or_default();
        let name = label(c, labels::PART).unwrap_or("?").to_string();
        let role: Role = label(c, labels::ROLE)
            .and_then(|r| r.parse().ok())
            .unwrap_or(Role::Handler);
        let inspect = self.docker.inspect_container(&id, None).await.ok();
        let restarts = inspect
            .as_ref()
            .and_then(|i| i.restart_count)
            .unwrap_or(0)
            .max(0) as u32;
        let exit_code = inspect
            .as_ref()
            .and_then(|i| i.state.as_ref())
            .and_then(|s| s.exit_code);
        let published = deploy::published_port(inspect.as_ref());
        let state = match c.state {
            Some(S::RUNNING) => match published {
                Some(p)
                    if deploy::healthy(p, std::time::Duration::from_secs(1))
                        .await
                        .is_ok() =>
                {
                    PartState::Healthy
                }
                _ => PartState::Running,
            },
            Some(S::RESTARTING) if restarts >= 3 => PartState::CrashLoop,
            Some(S::RESTARTING) => PartState::Restarting,
            _ => PartState::Stopped,
        };
        let port = label(c, labels::PORT).unwrap_or("?");
        let container = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        // From this machine, the published port; else the name on the network.
        let address = match published {
            Some(p) => format!("127.0.0.1:{p}"),
            None => format!("{container}:{port}"),
        };
        PartStatus {
            name,
            role,
            state,
            restarts,
            address,
            id: Some(id.chars().take(12).collect()),
            last_exit: exit_code
                .filter(|_| restarts > 0 || c.state != Some(S::RUNNING))
                .map(|code| format!("exit code {code}")),
        }
    }
}
