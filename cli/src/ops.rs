//! What the commands do, independent of how they were asked for: deploy a
//! topology, find a service on whichever runner has it, delete it. Shared by
//! the `mp` binary and by topology-as-code programs (`mp-sdk`'s `deploy`
//! feature).

use std::io::Write;
use std::sync::Mutex;

use crate::plan::{self, Plan};
use crate::runner::{self, Deployed, PartEvent, Progress, Runner, RunnerError, RunnerKind};
use crate::topology::Topology;

/// Prints progress as one line per event on stderr: readable in a terminal
/// and in a log file alike.
#[derive(Debug, Default)]
pub struct LinePrinter {
    counts: Mutex<std::collections::HashMap<String, (usize, usize)>>,
}

impl LinePrinter {
    /// A printer that counts healthy parts against `total` per service.
    pub fn for_plan(plan: &Plan) -> LinePrinter {
        let counts = plan
            .services
            .iter()
            .map(|s| (s.name().to_string(), (0, s.parts.len())))
            .collect();
        LinePrinter {
            counts: Mutex::new(counts),
        }
    }

    fn line(&self, text: String) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{text}");
    }
}

impl Progress for LinePrinter {
    fn part(&self, service: &str, part: &str, event: PartEvent) {
        match event {
            PartEvent::Healthy => {
                let (n, total) = {
                    let mut c = self.counts.lock().expect("progress lock");
                    let e = c.entry(service.to_string()).or_insert((0, 0));
                    e.0 += 1;
                    *e
                };
                if total >= n {
                    self.line(format!("  {service}: {part} healthy ({n}/{total})"));
                } else {
                    self.line(format!("  {service}: {part} healthy"));
                }
            }
            PartEvent::Failed(why) => self.line(format!("  {service}: {part} failed: {why}")),
            PartEvent::Stopping => self.line(format!("  {service}: stopping {part}")),
            // Starting/started/stopped add nothing a user needs line by line.
            PartEvent::Starting | PartEvent::Started | PartEvent::Stopped => {}
        }
    }

    fn note(&self, service: &str, message: &str) {
        self.line(format!("  {service}: {message}"));
    }
}

/// Deploys each service of `plan` (made with [`make_plan`] for the same
/// runner) in turn, reporting progress. If one fails, the services this call
/// created are deleted again (updated ones keep running), so nothing is left
/// half-deployed.
pub async fn deploy(
    runner: &dyn Runner,
    plan: &Plan,
    progress: &dyn Progress,
) -> Result<Vec<Deployed>, RunnerError> {
    let mut done: Vec<Deployed> = Vec::new();
    for sp in &plan.services {
        match runner.deploy(sp, progress).await {
            Ok(d) => done.push(d),
            Err(e) => {
                for d in done.iter().filter(|d| !d.updated) {
                    let _ = runner.delete(&d.name, &runner::NoProgress).await;
                }
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// What `mp deploy` does with a topology, for the CLI and for topology as
/// code alike: plans it for `runner`, then either prints the plan on stdout
/// (`dry_run`; nothing starts) or deploys it with progress lines on stderr and
/// one line per deployed service on stdout. Returns what was deployed (nothing
/// on a dry run).
pub async fn deploy_and_report(
    runner: &dyn Runner,
    topology: &Topology,
    dry_run: bool,
) -> Result<Vec<Deployed>, RunnerError> {
    let plan = make_plan(runner, topology)?;
    if dry_run {
        for sp in &plan.services {
            print!("{sp}");
        }
        return Ok(Vec::new());
    }
    let progress = LinePrinter::for_plan(&plan);
    let done = deploy(runner, &plan, &progress).await?;
    for d in &done {
        println!(
            "{} {} ({}): {} processes, front at {}",
            if d.updated { "updated" } else { "deployed" },
            d.name,
            runner.kind(),
            d.parts,
            d.front
        );
    }
    Ok(done)
}

/// The plan of `topology` with `runner`'s addresses.
pub fn make_plan(runner: &dyn Runner, topology: &Topology) -> Result<Plan, RunnerError> {
    let mut addressing = runner.addressing();
    Ok(plan::plan(topology, &mut *addressing)?)
}

/// The runners to look in for a service, in order: the one asked for, or
/// local then docker (a docker engine that cannot be reached is skipped).
pub async fn runners(only: Option<RunnerKind>) -> Result<Vec<Box<dyn Runner>>, RunnerError> {
    match only {
        Some(kind) => Ok(vec![runner::connect(kind).await?]),
        None => {
            let mut out = vec![runner::connect(RunnerKind::Local).await?];
            if let Ok(d) = runner::connect(RunnerKind::Docker).await {
                out.push(d);
            }
            Ok(out)
        }
    }
}

/// The runner that has service `name` and its front address. Runners are
/// tried in order (local, then docker), and the Docker engine is only
/// contacted when the local runner does not have the service.
pub async fn locate(
    name: &str,
    only: Option<RunnerKind>,
) -> Result<(Box<dyn Runner>, String), RunnerError> {
    let kinds = match only {
        Some(kind) => vec![kind],
        None => vec![RunnerKind::Local, RunnerKind::Docker],
    };
    for kind in kinds {
        let r = match runner::connect(kind).await {
            Ok(r) => r,
            // Without an engine there is nothing of it to find, unless it
            // was asked for by name.
            Err(e) if only.is_some() => return Err(e),
            Err(_) => continue,
        };
        match r.front(name).await {
            Ok(front) => return Ok((r, front)),
            Err(RunnerError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(RunnerError::NotFound(name.to_string()))
}

/// Deletes `name` from every runner that has it (or only from `only`).
/// Returns whether anything was deleted.
pub async fn delete(
    name: &str,
    only: Option<RunnerKind>,
    progress: &dyn Progress,
) -> Result<bool, RunnerError> {
    let mut any = false;
    for r in runners(only).await? {
        any |= r.delete(name, progress).await?;
    }
    Ok(any)
}
