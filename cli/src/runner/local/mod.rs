//! The local runner: every part a process on this machine, kept running by a
//! detached supervisor after `mp` exits, with its state in a directory of its
//! own so another shell's `mp ps/logs/call/delete` see it.
//!
//! # Layout of the state directory
//! ```text
//! <state dir>/services/<name>/desired.json   what should run (written by mp deploy)
//!                             status.json    what runs (written by the supervisor)
//!                             lb.backends    the replicas mp-lb follows (spread)
//!                             gather.shards  the shards and merger mp-gather follows (scatter)
//!                             logs/<part>.log
//!                             logs/supervisor.log
//! ```
//!
//! # Updates
//! Deploying a name that exists starts the new generation's parts beside the
//! old ones, waits until they are healthy, then moves the front over: for a
//! spread, the same mp-lb keeps serving and is pointed at the new replicas
//! through its backends file; for a scatter, the same mp-gather keeps serving
//! and is pointed at the new leaves and merger through its shards file (mp
//! waits until its `mp_gather_topology_generation` metric shows the switch).
//! No call fails. A `service` has an mp-lb of one backend as its front (see
//! `LocalAddressing::service_behind_lb`), so it updates like a spread. A
//! gather whose own flags change (reducer, policy), or a front of another
//! kind (a `service` deployed before it had an mp-lb), is restarted on the
//! same port (a short gap). Old parts then get SIGTERM and drain.

mod logs;
mod proc;
mod state;
pub mod supervisor;

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::health;
use crate::plan::{
    Address, Addressing, DataPlane, Endpoint, Exec, Front, Part, PartKey, PlanError, ServicePlan,
    FILE_FLAGS,
};
use crate::runner::{
    Deployed, LogOptions, LogStream, PartEvent, PartState, PartStatus, Progress, Runner,
    RunnerError, RunnerKind, ServiceStatus,
};
use crate::topology::Service;
use state::{Desired, Instance, InstanceState, ServiceDir, Status};
use supervisor::SUPERVISE_ENV;

/// How long `mp deploy` waits for every part's health check by default.
pub const DEFAULT_DEPLOY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long mp-lb takes at most to see a changed backends file (it polls it
/// every second), with a margin.
const LB_FILE_SETTLE: Duration = Duration::from_millis(2500);

/// How long mp-gather may take to switch to a rewritten shards file (it
/// looks every 250 ms, then gives the new shards up to 5 s to connect).
const GATHER_FILE_WAIT: Duration = Duration::from_secs(10);

/// How long a deploy or delete waits for another one of the same service.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// Held while a service is deployed or deleted; the lock goes with the file
/// descriptor (which the supervisor does not inherit: Rust opens files
/// close-on-exec).
struct NameLock {
    _file: std::fs::File,
}

/// The host every local part binds and is reached on.
const LOOPBACK: &str = "127.0.0.1";

/// Runs services as local processes; state under [`LocalRunner::state_dir`].
#[derive(Debug, Clone)]
pub struct LocalRunner {
    state_dir: PathBuf,
    deploy_timeout: Duration,
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
            deploy_timeout: DEFAULT_DEPLOY_TIMEOUT,
        }
    }

    /// How long a deploy waits for every part to become healthy.
    pub fn deploy_timeout(mut self, timeout: Duration) -> LocalRunner {
        self.deploy_timeout = timeout;
        self
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn dir(&self, name: &str) -> ServiceDir {
        ServiceDir::new(&self.state_dir, name)
    }

    /// Takes the lock of service `name`, so two `mp` runs never deploy or
    /// delete the same service at once; waits for a running one to finish.
    async fn lock(&self, name: &str) -> Result<NameLock, RunnerError> {
        use rustix::fs::{flock, FlockOperation};
        let dir = self.state_dir.join("services");
        std::fs::create_dir_all(&dir)
            .map_err(|e| RunnerError::io(format!("cannot create {}", dir.display()), e))?;
        let path = dir.join(format!(".{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| RunnerError::io(format!("cannot open {}", path.display()), e))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(NameLock { _file: file }),
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(RunnerError::Other(format!(
                        "another mp is still deploying or deleting `{name}` after {LOCK_WAIT:?}: \
                         try again when it is done"
                    )))
                }
                Err(e) => {
                    return Err(RunnerError::io(
                        format!("cannot lock {}", path.display()),
                        e.into(),
                    ))
                }
            }
        }
    }

    /// The front ports of every deployed service, by port.
    fn front_ports(&self) -> BTreeMap<u16, String> {
        let mut out = BTreeMap::new();
        for name in state::service_names(&self.state_dir).unwrap_or_default() {
            if let Ok(Some(d)) = self.dir(&name).read_desired() {
                out.insert(d.plan.front_part().endpoint.listen.port, name);
            }
        }
        out
    }
}

/// Free loopback ports; a front keeps the port it was asked for, or the one
/// its service already has.
struct LocalAddressing<'a> {
    runner: &'a LocalRunner,
    handed_out: HashSet<u16>,
    /// Whether mp-lb and mp-gather follow files, asked once per plan.
    lb_follows: OnceCell<bool>,
    gather_follows: OnceCell<bool>,
}

/// Whether the data-plane program `binary` (as the local runner finds it)
/// follows a file named by `flag`. A program that cannot be found counts as
/// following: the deploy stops at it anyway, with a clear error.
fn data_plane_follows(binary: DataPlane, flag: &str) -> bool {
    proc::find_data_plane(binary.binary_name()).map_or(true, |p| follows_file(&p, flag))
}

impl LocalAddressing<'_> {
    fn free_port(&mut self, part: &PartKey<'_>) -> Result<u16, PlanError> {
        for _ in 0..100 {
            let port = TcpListener::bind((LOOPBACK, 0))
                .and_then(|l| l.local_addr())
                .map_err(|e| PlanError::Address {
                    service: part.service.name.clone(),
                    part: part.name.to_string(),
                    message: format!("cannot find a free loopback port: {e}"),
                })?
                .port();
            if self.handed_out.insert(port) {
                return Ok(port);
            }
        }
        Err(PlanError::Address {
            service: part.service.name.clone(),
            part: part.name.to_string(),
            message: "cannot find a free loopback port".into(),
        })
    }
}

impl Addressing for LocalAddressing<'_> {
    fn assign(&mut self, part: PartKey<'_>) -> Result<Endpoint, PlanError> {
        let port = if part.front {
            let existing = self
                .runner
                .dir(&part.service.name)
                .read_desired()
                .ok()
                .flatten()
                .map(|d| d.plan.front_part().endpoint.listen.port);
            match part.service.port.or(existing) {
                Some(p) => p,
                None => self.free_port(&part)?,
            }
        } else {
            self.free_port(&part)?
        };
        let admin = if part.role.is_data_plane() {
            Some(Address::new(LOOPBACK, self.free_port(&part)?))
        } else {
            None
        };
        let a = Address::new(LOOPBACK, port);
        Ok(Endpoint {
            listen: a.clone(),
            reach: a,
            admin,
        })
    }

    /// Yes: the front port then belongs to an mp-lb that outlives the
    /// handler, so a re-deploy moves it to the new handler with no gap (a
    /// handler cannot share its port with its successor: that would need
    /// SO_REUSEPORT in every handler, in every language). mp-lb costs a few
    /// microseconds per call and about 8 MiB.
    fn service_behind_lb(&self) -> bool {
        true
    }

    /// `--backends-file <state dir>/services/<name>/lb.backends`, which the
    /// runner writes with the replicas before mp-lb starts and rewrites on a
    /// re-deploy (mp-lb follows it): the same mp-lb then switches over with
    /// no gap. An mp-lb too old for the flag gets `--backend` flags.
    fn lb_backend_args(&self, service: &Service, backends: &[String]) -> Vec<String> {
        if *self
            .lb_follows
            .get_or_init(|| data_plane_follows(DataPlane::MpLb, "--backends-file"))
        {
            let file = self.runner.dir(&service.name).backends();
            vec!["--backends-file".into(), file.display().to_string()]
        } else {
            crate::plan::backend_flags(backends)
        }
    }

    /// `--shards-file <state dir>/services/<name>/gather.shards`, written and
    /// followed like mp-lb's backends file; `--shard`/`--merge` flags for an
    /// mp-gather too old for it.
    fn gather_shard_args(
        &self,
        service: &Service,
        shards: &[Vec<String>],
        merge: Option<&str>,
    ) -> Vec<String> {
        if *self
            .gather_follows
            .get_or_init(|| data_plane_follows(DataPlane::MpGather, "--shards-file"))
        {
            let file = self.runner.dir(&service.name).shards();
            vec!["--shards-file".into(), file.display().to_string()]
        } else {
            crate::plan::shard_flags(shards, merge)
        }
    }
}

/// Whether this mp-lb or mp-gather follows a file: its help names `flag`
/// (`--backends-file`, `--shards-file`).
fn follows_file(program: &Path, flag: &str) -> bool {
    Command::new(program)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

/// The file the front of `plan` follows, if its arguments name one (mp-lb's
/// `--backends-file`, mp-gather's `--shards-file`): the plan decides.
fn front_file(plan: &ServicePlan) -> Option<PathBuf> {
    match &plan.front_part().exec {
        Exec::DataPlane { args, .. } => args
            .windows(2)
            .find(|w| FILE_FLAGS.contains(&w[0].as_str()))
            .map(|w| PathBuf::from(&w[1])),
        _ => None,
    }
}

/// Arguments without the `--admin ADDR` pair (a new deployment gets a new
/// admin port, which alone does not need a new front).
fn without_admin(args: &[String]) -> Vec<&String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--admin" {
            it.next();
        } else {
            out.push(a);
        }
    }
    out
}

/// The value of the gauge or counter `name` (without labels) on the admin
/// endpoint `addr`'s `/metrics`, if it answers in time.
async fn admin_metric(addr: &str, name: &str) -> Option<f64> {
    let text = crate::health::metrics(addr, Duration::from_secs(2))
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The last non-empty line of a log file, for error messages.
fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let tail = &text[text.len().saturating_sub(4096)..];
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(200).collect())
}

/// The supervisor of a service, if it runs.
fn supervisor_alive(name: &str, status: Option<&Status>) -> Option<u32> {
    let pid = status?.supervisor;
    (proc::alive(pid) && proc::has_env(pid, SUPERVISE_ENV, name)).then_some(pid)
}

impl LocalRunner {
    fn instances(
        &self,
        plan: &ServicePlan,
        generation: u64,
        cwd: &Path,
    ) -> Result<Vec<Instance>, RunnerError> {
        let mut out = Vec::new();
        for part in &plan.parts {
            let (program, args) = match &part.exec {
                Exec::Command { program, args } => {
                    let path = proc::resolve_program(program, cwd).map_err(|message| {
                        RunnerError::BadProgram {
                            part: part.name.clone(),
                            message,
                        }
                    })?;
                    (path, args.clone())
                }
                Exec::Image { image } => {
                    return Err(RunnerError::Unsupported(format!(
                        "{}: image `{image}` needs a container runner: use --runner docker, or give a command line",
                        part.name
                    )))
                }
                Exec::DataPlane { binary, args } => {
                    let path = proc::find_data_plane(binary.binary_name()).map_err(|beside| {
                        RunnerError::MissingDataPlane {
                            program: binary.binary_name().to_string(),
                            beside,
                        }
                    })?;
                    // As planned: the plan already names the file the front
                    // follows (see `LocalAddressing`).
                    (path, args.clone())
                }
            };
            out.push(Instance {
                id: format!("{generation}.{}", part.name),
                part: part.clone(),
                program,
                args,
            });
        }
        Ok(out)
    }

    fn spawn_supervisor(&self, dir: &ServiceDir, name: &str) -> Result<Child, RunnerError> {
        let exe = std::env::current_exe()
            .map_err(|e| RunnerError::io("cannot find the running executable", e))?;
        std::fs::create_dir_all(dir.logs())
            .map_err(|e| RunnerError::io(format!("cannot create {}", dir.logs().display()), e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.log("supervisor"))
            .map_err(|e| RunnerError::io("cannot open the supervisor's log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| RunnerError::io("cannot open the supervisor's log", e))?;
        // The supervisor must not hold this process's stdout/stderr: a caller
        // reading them to the end (a script, a test) would wait for it forever.
        Command::new(exe)
            .env(SUPERVISE_ENV, name)
            .env("MP_STATE_DIR", &self.state_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| RunnerError::io("cannot start the supervisor", e))
    }

    /// Waits until every instance in `ids` answers its health check.
    async fn wait_healthy(
        &self,
        dir: &ServiceDir,
        plan_name: &str,
        generation: u64,
        instances: &[Instance],
        mut supervisor: Option<&mut Child>,
        progress: &dyn Progress,
    ) -> Result<(), RunnerError> {
        let deadline = Instant::now() + self.deploy_timeout;
        let mut pending: Vec<&Instance> = instances.iter().collect();
        let mut announced: HashSet<String> = HashSet::new();
        let mut last_error: BTreeMap<String, String> = BTreeMap::new();
        while !pending.is_empty() {
            if let Some(child) = supervisor.as_deref_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    return Err(RunnerError::Other(format!(
                        "the supervisor of {plan_name} stopped ({st}){}: see {}",
                        last_line(&dir.log("supervisor"))
                            .map(|l| format!(": {l}"))
                            .unwrap_or_default(),
                        dir.log("supervisor").display()
                    )));
                }
            }
            let status = dir.read_status()?.filter(|s| s.generation >= generation);
            if let Some(status) = &status {
                for inst in &pending {
                    let Some(st) = status.instances.get(&inst.id) else {
                        continue;
                    };
                    if st.restarts > 0
                        || matches!(
                            st.state,
                            InstanceState::Restarting | InstanceState::CrashLoop
                        )
                    {
                        let why = st.last_exit.clone().unwrap_or_else(|| "exited".into());
                        progress.part(plan_name, &inst.part.name, PartEvent::Failed(why.clone()));
                        return Err(RunnerError::PartExited {
                            service: plan_name.to_string(),
                            part: format!("{} (`{}`)", inst.part.name, inst.part.exec),
                            role: inst.part.role,
                            status: why,
                            last_line: last_line(&dir.log(&inst.part.name))
                                .map(|l| format!(": {l}"))
                                .unwrap_or_default(),
                        });
                    }
                    if st.pid.is_some() && announced.insert(inst.id.clone()) {
                        progress.part(plan_name, &inst.part.name, PartEvent::Started);
                    }
                }
                let checks = pending.iter().map(|inst| async move {
                    let started = status
                        .instances
                        .get(&inst.id)
                        .is_some_and(|s| s.pid.is_some());
                    if !started {
                        return Err("not started yet".to_string());
                    }
                    let admin = inst.part.endpoint.admin.as_ref().map(|a| a.to_string());
                    health::part_ready(
                        &inst.part.endpoint.reach.to_string(),
                        admin.as_deref(),
                        Duration::from_millis(500),
                    )
                    .await
                });
                let results = futures::future::join_all(checks).await;
                let mut still = Vec::new();
                for (inst, r) in pending.into_iter().zip(results) {
                    match r {
                        Ok(()) => progress.part(plan_name, &inst.part.name, PartEvent::Healthy),
                        Err(e) => {
                            last_error.insert(inst.id.clone(), e);
                            still.push(inst);
                        }
                    }
                }
                pending = still;
            }
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let inst = pending[0];
                return Err(RunnerError::Unhealthy {
                    service: plan_name.to_string(),
                    part: inst.part.name.clone(),
                    after: self.deploy_timeout,
                    detail: last_error
                        .get(&inst.id)
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Waits until none of `ids` is in the supervisor's status any more.
    async fn wait_gone(&self, dir: &ServiceDir, ids: &[String]) {
        let deadline = Instant::now() + supervisor_grace() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match dir.read_status() {
                Ok(Some(s)) if ids.iter().any(|id| s.instances.contains_key(id)) => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops a service's supervisor (which stops its parts) and removes its
    /// state. Parts left behind by a supervisor that died are killed by pid.
    async fn teardown(
        &self,
        dir: &ServiceDir,
        name: &str,
        mut own_child: Option<Child>,
    ) -> Result<(), RunnerError> {
        let status = dir.read_status()?;
        if let Some(pid) = supervisor_alive(name, status.as_ref()) {
            proc::terminate(pid);
            let deadline = Instant::now() + supervisor_grace() + Duration::from_secs(3);
            loop {
                let gone = match own_child.as_mut() {
                    Some(c) => !matches!(c.try_wait(), Ok(None)),
                    None => !proc::alive(pid),
                };
                if gone || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Whatever still runs (a supervisor killed by hand leaves its parts).
        if let Some(status) = &status {
            for st in status.instances.values() {
                if let Some(pid) = st.pid {
                    if proc::alive(pid) && proc::has_env(pid, crate::plan::env::SERVICE, name) {
                        proc::signal_group(pid, true);
                    }
                }
            }
        }
        match std::fs::remove_dir_all(&dir.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RunnerError::io(
                format!("cannot remove {}", dir.root.display()),
                e,
            )),
        }
    }

    async fn deploy_new(
        &self,
        dir: &ServiceDir,
        plan: &ServicePlan,
        cwd: PathBuf,
        progress: &dyn Progress,
    ) -> Result<Deployed, RunnerError> {
        let name = plan.name();
        let file = front_file(plan);
        let instances = self.instances(plan, 1, &cwd)?;
        std::fs::create_dir_all(dir.logs())
            .map_err(|e| RunnerError::io(format!("cannot create {}", dir.root.display()), e))?;
        if let (Some(file), Some(text)) = (&file, plan.front_config.file_text()) {
            state::write_atomic(file, text.as_bytes())?;
        }
        let front = plan.front_part().endpoint.reach.to_string();
        // The handler parts first, the front once they are healthy: it then
        // finds every backend or shard answering from its first second (no
        // refused connections in its log, no backoff to wait out).
        let (front_parts, rest): (Vec<Instance>, Vec<Instance>) = instances
            .iter()
            .cloned()
            .partition(|i| i.part.name == plan.front);
        let stages: Vec<(u64, Vec<Instance>)> = if rest.is_empty() {
            vec![(1, front_parts)]
        } else {
            vec![(1, rest), (2, front_parts)]
        };
        let mut child: Option<Child> = None;
        let mut running: Vec<Instance> = Vec::new();
        for (generation, stage) in stages {
            running.extend(stage.iter().cloned());
            dir.write_desired(&Desired {
                generation,
                plan: plan.clone(),
                front: front.clone(),
                cwd: cwd.clone(),
                instances: running.clone(),
            })?;
            for inst in &stage {
                progress.part(name, &inst.part.name, PartEvent::Starting);
            }
            if child.is_none() {
                match self.spawn_supervisor(dir, name) {
                    Ok(c) => child = Some(c),
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&dir.root);
                        return Err(e);
                    }
                }
            }
            let waited = self
                .wait_healthy(dir, name, generation, &stage, child.as_mut(), progress)
                .await;
            if let Err(e) = waited {
                progress.note(name, "stopping what was started");
                self.teardown(dir, name, child).await?;
                return Err(e);
            }
        }
        Ok(Deployed {
            name: name.to_string(),
            parts: instances.len(),
            front,
            updated: false,
        })
    }

    async fn deploy_update(
        &self,
        dir: &ServiceDir,
        plan: &ServicePlan,
        old: Desired,
        cwd: PathBuf,
        progress: &dyn Progress,
    ) -> Result<Deployed, RunnerError> {
        let name = plan.name();
        let generation = old.generation + 1;
        let file = front_file(plan);
        let new = self.instances(plan, generation, &cwd)?;
        let (new_front, new_rest): (Vec<Instance>, Vec<Instance>) =
            new.into_iter().partition(|i| i.part.name == plan.front);
        let old_front: Vec<Instance> = old
            .instances
            .iter()
            .filter(|i| i.part.name == old.plan.front)
            .cloned()
            .collect();
        // The running mp-lb can stay if it follows the backends file and
        // listens where the new one would; the running mp-gather can stay if
        // it follows the shards file and its other flags (reducer, policy)
        // are the new ones.
        let same_listen =
            old.plan.front_part().endpoint.listen == plan.front_part().endpoint.listen;
        let keep_front = file.is_some()
            && same_listen
            && match (&old.plan.front_config, &plan.front_config) {
                (Front::Lb { .. }, Front::Lb { .. }) => old_front
                    .iter()
                    .all(|i| i.args.iter().any(|a| a == "--backends-file")),
                (Front::Gather { .. }, Front::Gather { .. }) => {
                    old_front.len() == 1
                        && new_front.len() == 1
                        && old_front[0].args.iter().any(|a| a == "--shards-file")
                        && without_admin(&old_front[0].args) == without_admin(&new_front[0].args)
                }
                _ => false,
            };
        let front = plan.front_part().endpoint.reach.to_string();
        progress.note(name, &format!("updating to generation {generation}"));

        // 1. New parts beside the old ones.
        let mut step = old.clone();
        step.generation = generation;
        step.instances.extend(new_rest.iter().cloned());
        dir.write_desired(&step)?;
        for inst in &new_rest {
            progress.part(name, &inst.part.name, PartEvent::Starting);
        }
        if let Err(e) = self
            .wait_healthy(dir, name, generation, &new_rest, None, progress)
            .await
        {
            // Back to the old generation: the service keeps running as it was.
            progress.note(name, "update failed: keeping the running version");
            let mut back = old.clone();
            back.generation = generation + 1;
            dir.write_desired(&back)?;
            return Err(e);
        }

        // 2. The front moves to the new parts.
        let mut final_plan = plan.clone();
        let mut instances = new_rest.clone();
        if keep_front {
            if let Front::Gather { .. } = &plan.front_config {
                self.switch_gather(&old, file.as_deref(), plan, progress)
                    .await?;
            } else {
                if let (Some(file), Some(text)) = (&file, plan.front_config.file_text()) {
                    state::write_atomic(file, text.as_bytes())?;
                }
                progress.note(name, "mp-lb now balances over the new replicas");
                tokio::time::sleep(LB_FILE_SETTLE).await;
            }
            instances.extend(old_front.iter().cloned());
            // The plan records the mp-lb that keeps running.
            if let Some(p) = final_plan.parts.iter_mut().find(|p| p.name == plan.front) {
                *p = old.plan.front_part().clone();
            }
        } else {
            let mut gap = step.clone();
            gap.generation = generation + 1;
            gap.instances.retain(|i| i.part.name != old.plan.front);
            for inst in &old_front {
                progress.part(name, &inst.part.name, PartEvent::Stopping);
            }
            dir.write_desired(&gap)?;
            let ids: Vec<String> = old_front.iter().map(|i| i.id.clone()).collect();
            self.wait_gone(dir, &ids).await;
            // The new front follows the file from its start: it must name
            // the new parts already.
            if let (Some(file), Some(text)) = (&file, plan.front_config.file_text()) {
                state::write_atomic(file, text.as_bytes())?;
            }
            instances.extend(new_front.iter().cloned());
        }

        // 3. Only the new generation (and a kept mp-lb) remains.
        let done = Desired {
            generation: generation + 2,
            plan: final_plan,
            front: front.clone(),
            cwd,
            instances: instances.clone(),
        };
        dir.write_desired(&done)?;
        if !keep_front {
            for inst in &new_front {
                progress.part(name, &inst.part.name, PartEvent::Starting);
            }
            self.wait_healthy(dir, name, generation + 2, &new_front, None, progress)
                .await?;
        }
        for inst in &old.instances {
            if !instances.iter().any(|i| i.id == inst.id) {
                progress.part(
                    name,
                    &format!("old {}", inst.part.name),
                    PartEvent::Stopping,
                );
            }
        }
        Ok(Deployed {
            name: name.to_string(),
            parts: instances.len(),
            front,
            updated: true,
        })
    }

    /// Rewrites the shards file of the running mp-gather (the front of
    /// `old`) for `plan` and waits until it uses it: its
    /// `mp_gather_topology_generation` metric grows. Without an answer from
    /// its admin endpoint, waits the longest switch time instead.
    async fn switch_gather(
        &self,
        old: &Desired,
        file: Option<&Path>,
        plan: &ServicePlan,
        progress: &dyn Progress,
    ) -> Result<(), RunnerError> {
        const METRIC: &str = "mp_gather_topology_generation";
        let name = plan.name();
        let (Some(file), Some(text)) = (file, plan.front_config.file_text()) else {
            return Ok(());
        };
        let admin = old
            .plan
            .front_part()
            .endpoint
            .admin
            .as_ref()
            .map(|a| a.to_string());
        let before = match &admin {
            Some(a) => admin_metric(a, METRIC).await,
            None => None,
        };
        let unchanged = std::fs::read_to_string(file).is_ok_and(|t| t == text);
        state::write_atomic(file, text.as_bytes())?;
        if unchanged {
            // Same shards and merger (e.g. only the leaves' ports were kept):
            // nothing for mp-gather to switch.
            return Ok(());
        }
        let (Some(admin), Some(before)) = (admin, before) else {
            tokio::time::sleep(GATHER_FILE_WAIT).await;
            progress.note(name, "mp-gather now scatters to the new leaves");
            return Ok(());
        };
        let deadline = Instant::now() + GATHER_FILE_WAIT;
        loop {
            if admin_metric(&admin, METRIC)
                .await
                .is_some_and(|g| g > before)
            {
                progress.note(name, "mp-gather now scatters to the new leaves");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RunnerError::Other(format!(
                    "mp-gather of {name} did not switch to the new shards within {GATHER_FILE_WAIT:?}: see `mp logs {name} --role gather`; the new leaves keep running"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The parts of `d` as they are. `alive`: whether the supervisor runs;
    /// when it does not, a part's recorded pid is asked directly (it may
    /// well still run), and nothing is restarting.
    async fn health_of(
        &self,
        d: &Desired,
        status: Option<&Status>,
        alive: bool,
    ) -> Vec<PartStatus> {
        let service = d.plan.name();
        let checks = d.instances.iter().map(|inst| async move {
            let st = status.and_then(|s| s.instances.get(&inst.id));
            let pid = st.and_then(|s| s.pid);
            let running = if alive {
                pid.is_some()
            } else {
                pid.is_some_and(|p| part_process_alive(p, service))
            };
            let state = match st.map(|s| s.state) {
                // Without a supervisor, no part is restarting or stopping.
                _ if !alive && !running => PartState::Stopped,
                _ if !alive => health_state(inst).await,
                Some(InstanceState::CrashLoop) => PartState::CrashLoop,
                Some(InstanceState::Restarting) => PartState::Restarting,
                Some(InstanceState::Stopping) => PartState::Stopped,
                _ if !running => PartState::Stopped,
                _ => health_state(inst).await,
            };
            PartStatus {
                name: inst.part.name.clone(),
                role: inst.part.role,
                state,
                restarts: st.map_or(0, |s| s.restarts),
                address: inst.part.endpoint.reach.to_string(),
                id: pid.map(|p| p.to_string()),
                last_exit: st.and_then(|s| s.last_exit.clone()),
            }
        });
        futures::future::join_all(checks).await
    }
}

/// Healthy or merely running: what a part's health check says.
async fn health_state(inst: &Instance) -> PartState {
    let addr = inst.part.endpoint.reach.to_string();
    let admin = inst.part.endpoint.admin.as_ref().map(|a| a.to_string());
    match health::part_ready(&addr, admin.as_deref(), Duration::from_millis(1500)).await {
        Ok(()) => PartState::Healthy,
        Err(_) => PartState::Running,
    }
}

/// Whether `pid` runs and is a part of `service` (its environment says so,
/// so a reused pid is not taken for a part).
fn part_process_alive(pid: u32, service: &str) -> bool {
    proc::alive(pid) && proc::has_env(pid, crate::plan::env::SERVICE, service)
}

/// What `mp ps` says when the supervisor of `name` is gone.
fn unsupervised_warning(name: &str, supervisor: Option<u32>, parts: &[PartStatus]) -> String {
    let running = parts
        .iter()
        .filter(|p| p.state != PartState::Stopped)
        .count();
    let was = supervisor
        .map(|p| format!(" (pid {p})"))
        .unwrap_or_default();
    format!(
        "the supervisor of {name}{was} is gone: {running} of {} parts still run, but nothing \
         restarts them; run the same `mp deploy` again to restart {name} under a new \
         supervisor, or `mp delete {name}` to stop it",
        parts.len()
    )
}

fn supervisor_grace() -> Duration {
    Duration::from_secs(10)
}

/// Whether `port` can be bound on loopback now.
fn port_free(port: u16) -> bool {
    TcpListener::bind((LOOPBACK, port)).is_ok()
}

#[async_trait::async_trait]
impl Runner for LocalRunner {
    fn kind(&self) -> RunnerKind {
        RunnerKind::Local
    }

    fn addressing(&self) -> Box<dyn Addressing + Send + '_> {
        Box::new(LocalAddressing {
            runner: self,
            handed_out: HashSet::new(),
            lb_follows: OnceCell::new(),
            gather_follows: OnceCell::new(),
        })
    }

    async fn deploy(
        &self,
        plan: &ServicePlan,
        progress: &dyn Progress,
    ) -> Result<Deployed, RunnerError> {
        let name = plan.name();
        let dir = self.dir(name);
        let _lock = self.lock(name).await?;
        let cwd = std::env::current_dir()
            .map_err(|e| RunnerError::io("cannot read the current directory", e))?;

        let mut old = dir.read_desired()?;
        if old.is_some() && supervisor_alive(name, dir.read_status()?.as_ref()).is_none() {
            // Its supervisor is gone (killed, or the machine rebooted): start afresh.
            progress.note(
                name,
                "the previous deployment is not supervised any more: replacing it",
            );
            self.teardown(&dir, name, None).await?;
            old = None;
        }

        // Everything that can be checked is checked before anything starts.
        self.instances(plan, 0, &cwd)?;
        let listen = &plan.front_part().endpoint.listen;
        let same_front = old
            .as_ref()
            .is_some_and(|o| &o.plan.front_part().endpoint.listen == listen);
        if !same_front && !port_free(listen.port) {
            let by = self
                .front_ports()
                .get(&listen.port)
                .map(|s| format!(" by service `{s}`"))
                .unwrap_or_default();
            return Err(RunnerError::PortInUse {
                port: listen.port,
                by,
            });
        }

        match old {
            None => self.deploy_new(&dir, plan, cwd, progress).await,
            Some(old) => self.deploy_update(&dir, plan, old, cwd, progress).await,
        }
    }

    async fn list(&self) -> Result<Vec<ServiceStatus>, RunnerError> {
        let mut out = Vec::new();
        for name in state::service_names(&self.state_dir)? {
            if let Some(s) = self.status(&name).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    async fn status(&self, name: &str) -> Result<Option<ServiceStatus>, RunnerError> {
        let dir = self.dir(name);
        let Some(d) = dir.read_desired()? else {
            return Ok(None);
        };
        let status = dir.read_status()?;
        let alive = supervisor_alive(name, status.as_ref()).is_some();
        let parts = self.health_of(&d, status.as_ref(), alive).await;
        let warning = (!alive).then(|| {
            let supervisor = status.as_ref().map(|s| s.supervisor).filter(|p| *p != 0);
            unsupervised_warning(name, supervisor, &parts)
        });
        Ok(Some(ServiceStatus {
            name: name.to_string(),
            pattern: d.plan.pattern(),
            runner: RunnerKind::Local,
            front: Some(d.front.clone()),
            parts,
            warning,
        }))
    }

    async fn front(&self, name: &str) -> Result<String, RunnerError> {
        match self.dir(name).read_desired()? {
            Some(d) => Ok(d.front),
            None => Err(RunnerError::NotFound(name.to_string())),
        }
    }

    async fn logs(&self, name: &str, options: &LogOptions) -> Result<LogStream, RunnerError> {
        let dir = self.dir(name);
        let Some(d) = dir.read_desired()? else {
            return Err(RunnerError::NotFound(name.to_string()));
        };
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        let mut parts: Vec<&Part> = d.plan.parts.iter().collect();
        parts.retain(|p| options.role.is_none_or(|r| r == p.role));
        for p in parts {
            files.push((p.name.clone(), dir.log(&p.name)));
        }
        if options.role.is_none() {
            files.push(("supervisor".to_string(), dir.log("supervisor")));
        }
        Ok(logs::stream(files, options.follow))
    }

    async fn delete(&self, name: &str, progress: &dyn Progress) -> Result<bool, RunnerError> {
        let dir = self.dir(name);
        if !dir.root.exists() {
            return Ok(false);
        }
        let _lock = self.lock(name).await?;
        let parts: Vec<String> = dir
            .read_desired()
            .ok()
            .flatten()
            .map(|d| d.instances.iter().map(|i| i.part.name.clone()).collect())
            .unwrap_or_default();
        for p in &parts {
            progress.part(name, p, PartEvent::Stopping);
        }
        self.teardown(&dir, name, None).await?;
        for p in &parts {
            progress.part(name, p, PartEvent::Stopped);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
