//! Deploying, updating and deleting a service's network and containers.
//!
//! A new service: network, then every container (handlers first, the front
//! last), then wait until each one answers its gRPC health check through its
//! published loopback port. If anything fails, everything made for it is
//! removed again: nothing is left half-deployed.
//!
//! An update compares each container's spec digest with the plan's. Changed
//! handler parts are replaced one at a time, new before old: the replacement
//! starts under a temporary name with the same DNS alias, becomes healthy,
//! and once the front sends it calls (its admin endpoint's metrics list it
//! healthy) the old one is stopped (SIGTERM, graceful) and removed and the
//! new one takes its name; callers always find a healthy part behind the
//! name. A replaced leaf's address must then leave mp-gather's shard before
//! the next part starts: the engine gives a freed address to the next
//! container, another shard's leaf. The
//! front owns the published port, so a changed front is first tried on an
//! ephemeral port (a broken one fails the update and the old one keeps
//! serving), then replaced stop-then-start; it changes only with
//! mp-lb/mp-gather themselves or the shape of a scatter. (A `service` has an
//! mp-lb of one backend as its front, so a new handler is a handler part
//! replaced new before old, like a spread's replica.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, EndpointSettings, HostConfig,
    NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::error::{status_of, DockerError};
use super::spec::{container_spec, ContainerSpec, ADMIN_PORT, PORT};
use super::{label, labels, DockerRunner};
use crate::plan::{Role, ServicePlan};
use crate::runner::{Deployed, PartEvent, Progress, RunnerError};

/// How long a part may take to pass its first health check, by default.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopped part may take to finish what it is doing.
const STOP_GRACE_SECS: i32 = 10;

/// How long a replacement runs next to the part it replaces when the front
/// cannot be asked whether it sends the replacement calls yet (see
/// [`front_takes`]): the front resolves names again periodically, and must
/// know the new address before the old one goes away (or a shard, or a
/// spread of one replica, would have nowhere to send calls). mp-lb and
/// mp-gather, as the docker runner starts them, look every second (see
/// [`super::spec::DNS_INTERVAL`]); an mp-gather started by an earlier mp
/// looks every 5 s.
fn dns_settle(role: Role) -> Duration {
    match role {
        Role::Replica => Duration::from_secs(2),
        // A `service`'s handler is mp-lb's only backend: no other replica
        // covers for a new one mp-lb has not connected to yet, so a margin.
        Role::Handler => Duration::from_secs(3),
        // mp-gather resolves the merger's name at each new connection and
        // keeps none open to an address it did not just look up, so the old
        // merger can go at once: its connection's GOAWAY makes mp-gather
        // connect again, by name, and a merge the old one did not take is
        // sent again.
        Role::Merge => Duration::ZERO,
        _ => Duration::from_secs(6),
    }
}

/// How long the front may take to send calls to a healthy replacement
/// before the update gives up on it: many times its DNS interval, for a busy
/// machine.
const TAKE_UP_LIMIT: Duration = Duration::from_secs(30);

/// How many containers a new deploy creates and starts at once.
const START_CONCURRENCY: usize = 4;

/// Suffix of a replacement container while it starts next to the original.
const NEXT: &str = "-next";

/// Deploys `plan`, or updates the service of the same name.
pub async fn deploy(
    runner: &DockerRunner,
    plan: &ServicePlan,
    progress: &dyn Progress,
) -> Result<Deployed, RunnerError> {
    let name = plan.name();
    labels::validate_service_name(name)?;
    let existing = runner.containers(Some(name)).await?;
    let existing_port = existing
        .iter()
        .find_map(|c| label(c, labels::FRONT_PORT))
        .and_then(|p| p.parse::<u16>().ok());
    let front_port = match (plan.service.port, existing_port) {
        (Some(p), _) => p,
        (None, Some(p)) => p,
        (None, None) => free_port()?,
    };
    // A port we already publish is ours; any other must be free now, so a
    // taken port fails before anything is created.
    if Some(front_port) != existing_port {
        ensure_port_free(front_port)?;
    }
    let launches = runner.launches(plan, progress).await?;
    let specs: Vec<ContainerSpec> = plan
        .parts
        .iter()
        .map(|p| container_spec(plan, p, &launches[&p.name], front_port))
        .collect();

    let docker = &runner.docker;
    let limit = runner.ready_timeout;
    let network = labels::network_name(name);
    let made_network = ensure_network(docker, name, &network).await?;
    let updated = !existing.is_empty();
    let result = if updated {
        update(docker, plan, &specs, &existing, &network, limit, progress).await
    } else {
        create_all(docker, plan, &specs, &network, limit, progress).await
    };
    if let Err(e) = result {
        if !updated {
            // Nothing half-deployed: remove whatever this attempt made.
            // The user has seen what failed; the clean-up is silent.
            remove_service(docker, name, &crate::runner::NoProgress).await;
            if made_network {
                let _ = docker.remove_network(&network).await;
            }
        }
        return Err(e);
    }
    // Earlier builds of the images this service now runs are unused.
    let mut ours: Vec<&str> = specs
        .iter()
        .map(|s| s.image.as_str())
        .filter(|i| super::image::is_our_repository(i))
        .collect();
    ours.sort();
    ours.dedup();
    for tag in ours {
        if let Some((repository, _)) = tag.rsplit_once(':') {
            super::image::remove_older(docker, repository, tag).await;
        }
    }
    Ok(Deployed {
        name: name.to_string(),
        parts: specs.len(),
        front: format!("127.0.0.1:{front_port}"),
        updated,
    })
}

/// A new service: create and start every container, then wait for all.
async fn create_all(
    docker: &bollard::Docker,
    plan: &ServicePlan,
    specs: &[ContainerSpec],
    network: &str,
    limit: Duration,
    progress: &dyn Progress,
) -> Result<(), RunnerError> {
    let service = plan.name();
    // Handler parts a few at a time (the engine does each in a fraction of a
    // second), then the front.
    let (front, handlers): (Vec<&ContainerSpec>, Vec<&ContainerSpec>) =
        specs.iter().partition(|s| s.front_port.is_some());
    let starts: Vec<_> = handlers
        .into_iter()
        .map(|spec| start_reporting(docker, service, spec, network, progress))
        .collect();
    let started: Vec<Result<(), RunnerError>> = futures::stream::iter(starts)
        .buffer_unordered(START_CONCURRENCY)
        .collect()
        .await;
    started.into_iter().collect::<Result<(), RunnerError>>()?;
    for spec in front {
        start_reporting(docker, service, spec, network, progress).await?;
    }
    let waits = specs.iter().map(|s| async move {
        let r = wait_healthy(docker, service, s, &s.name, limit).await;
        match &r {
            Ok(()) => progress.part(service, &s.part, PartEvent::Healthy),
            Err(e) => progress.part(service, &s.part, PartEvent::Failed(e.to_string())),
        }
        r
    });
    // The first part that fails ends the wait for the others.
    futures::future::try_join_all(waits).await?;
    Ok(())
}

/// [`start`] with progress.
async fn start_reporting(
    docker: &bollard::Docker,
    service: &str,
    spec: &ContainerSpec,
    network: &str,
    progress: &dyn Progress,
) -> Result<(), RunnerError> {
    progress.part(service, &spec.part, PartEvent::Starting);
    start(docker, spec, &spec.name, network).await?;
    progress.part(service, &spec.part, PartEvent::Started);
    Ok(())
}

/// An existing service: replace what changed, one container at a time.
async fn update(
    docker: &bollard::Docker,
    plan: &ServicePlan,
    specs: &[ContainerSpec],
    existing: &[ContainerSummary],
    network: &str,
    limit: Duration,
    progress: &dyn Progress,
) -> Result<(), RunnerError> {
    let service = plan.name();
    let by_name: HashMap<String, &ContainerSummary> = existing
        .iter()
        .filter_map(|c| Some((container_name(c)?, c)))
        .collect();
    // Leftovers of an interrupted update.
    for (n, c) in &by_name {
        if n.ends_with(NEXT) {
            remove(docker, c.id.as_deref().unwrap_or(n)).await;
        }
    }
    for spec in specs {
        let old = by_name.get(&spec.name);
        let running = old
            .is_some_and(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING));
        match old {
            Some(c) if label(c, labels::SPEC) == Some(spec.digest()) && running => {
                // Unchanged; still make sure it is healthy before going on.
                wait_healthy(docker, service, spec, &spec.name, limit).await?;
                progress.part(service, &spec.part, PartEvent::Healthy);
            }
            Some(c) if spec.front_port.is_none() => {
                // New before old, under a temporary name with the same alias.
                let temp = format!("{}{NEXT}", spec.name);
                progress.part(service, &spec.part, PartEvent::Starting);
                let result = match start(docker, spec, &temp, network).await {
                    Ok(()) => wait_healthy(docker, service, spec, &temp, limit).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    remove(docker, &temp).await;
                    progress.part(service, &spec.part, PartEvent::Failed(e.to_string()));
                    return Err(e);
                }
                if let Err(e) = front_takes(docker, service, specs, spec, &temp, network).await {
                    remove(docker, &temp).await;
                    progress.part(service, &spec.part, PartEvent::Failed(e.to_string()));
                    return Err(e);
                }
                progress.part(service, &spec.part, PartEvent::Stopping);
                let old_id = c.id.as_deref().unwrap_or(&spec.name);
                // A leaf's address, freed when it goes, may be given to the
                // next replacement, a leaf of another shard: mp-gather must
                // have dropped it from this shard first (see `front_drops`).
                let old_endpoint = match spec.role {
                    Role::Leaf => endpoint_on(docker, old_id, network).await,
                    _ => None,
                };
                stop_and_remove(docker, old_id).await;
                let rename = RenameContainerOptionsBuilder::default()
                    .name(&spec.name)
                    .build();
                docker
                    .rename_container(&temp, rename)
                    .await
                    .map_err(|e| DockerError::api(format!("renaming {temp}"), e))?;
                if let Some(old) = old_endpoint {
                    if let Err(e) = front_drops(docker, service, specs, spec, &old).await {
                        progress.part(service, &spec.part, PartEvent::Failed(e.to_string()));
                        return Err(e);
                    }
                }
                progress.part(service, &spec.part, PartEvent::Healthy);
            }
            Some(c) => {
                // The front holds the published port, so two cannot run at
                // once. First a trial of the new front on an ephemeral port,
                // so a broken update leaves the old one serving; then stop
                // the old and start the new on the port.
                let temp = format!("{}{NEXT}", spec.name);
                let trial = ContainerSpec {
                    front_port: None,
                    ..spec.clone()
                };
                progress.part(service, &spec.part, PartEvent::Starting);
                let result = match start(docker, &trial, &temp, network).await {
                    Ok(()) => wait_healthy(docker, service, &trial, &temp, limit).await,
                    Err(e) => Err(e),
                };
                remove(docker, &temp).await;
                if let Err(e) = result {
                    progress.part(service, &spec.part, PartEvent::Failed(e.to_string()));
                    return Err(e);
                }
                progress.part(service, &spec.part, PartEvent::Stopping);
                stop_and_remove(docker, c.id.as_deref().unwrap_or(&spec.name)).await;
                progress.part(service, &spec.part, PartEvent::Starting);
                start(docker, spec, &spec.name, network).await?;
                wait_healthy(docker, service, spec, &spec.name, limit).await?;
                progress.part(service, &spec.part, PartEvent::Healthy);
            }
            None => {
                if spec.front_port.is_some() {
                    // A new kind of front (the pattern changed): the old
                    // front gives up the published port first.
                    for (n, c) in &by_name {
                        if label(c, labels::FRONT) == Some("true") && !n.ends_with(NEXT) {
                            stop_and_remove(docker, c.id.as_deref().unwrap_or(n)).await;
                        }
                    }
                }
                progress.part(service, &spec.part, PartEvent::Starting);
                start(docker, spec, &spec.name, network).await?;
                wait_healthy(docker, service, spec, &spec.name, limit).await?;
                progress.part(service, &spec.part, PartEvent::Healthy);
            }
        }
    }
    // Parts the plan no longer has (a smaller spread), once the front has
    // been updated to stop sending them calls.
    for (n, c) in &by_name {
        if !n.ends_with(NEXT) && !specs.iter().any(|s| &s.name == n) {
            let part = label(c, labels::PART).unwrap_or(n).to_string();
            progress.part(service, &part, PartEvent::Stopping);
            stop_and_remove(docker, c.id.as_deref().unwrap_or(n)).await;
            progress.part(service, &part, PartEvent::Stopped);
        }
    }
    Ok(())
}

/// Creates and starts the container of `spec` under the name `name`.
async fn start(
    docker: &bollard::Docker,
    spec: &ContainerSpec,
    name: &str,
    network: &str,
) -> Result<(), RunnerError> {
    let on_loopback = |port: String| {
        Some(vec![PortBinding {
            host_ip: Some("127.0.0.1".into()),
            host_port: Some(port),
        }])
    };
    // Empty: the engine picks a free port (for health checks from here).
    let mut ports = vec![(
        format!("{PORT}/tcp"),
        on_loopback(spec.front_port.map(|p| p.to_string()).unwrap_or_default()),
    )];
    if spec.role.is_data_plane() {
        // mp-lb's and mp-gather's admin endpoint, so a deploy can ask them
        // whether they are ready and which replicas they send calls to.
        ports.push((format!("{ADMIN_PORT}/tcp"), on_loopback(String::new())));
    }
    let exposed: Vec<String> = ports.iter().map(|(k, _)| k.clone()).collect();
    let host_config = HostConfig {
        port_bindings: Some(ports.into_iter().collect()),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        network_mode: Some(network.to_string()),
        // A tiny init as PID 1 forwards SIGTERM and reaps children, so
        // `docker stop` is prompt even for handlers that ignore signals.
        init: Some(true),
        ..Default::default()
    };
    let endpoint = EndpointSettings {
        aliases: Some(spec.aliases.clone()),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.cmd.clone(),
        env: Some(spec.env.clone()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        hostname: Some(spec.name.chars().take(63).collect()),
        exposed_ports: Some(exposed),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some([(network.to_string(), endpoint)].into_iter().collect()),
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    docker
        .create_container(Some(options), body)
        .await
        .map_err(|e| match status_of(&e) {
            Some(409) => RunnerError::Other(format!(
                "container {name} already exists and is not mp's: remove it (`docker rm -f {name}`) \
                 or choose another service name"
            )),
            _ => DockerError::api(format!("creating container {name}"), e).into(),
        })?;
    if let Err(e) = docker.start_container(name, None).await {
        let err = DockerError::api(format!("starting container {name}"), e);
        let msg = err.to_string();
        remove(docker, name).await;
        if let (Some(port), true) = (
            spec.front_port,
            msg.contains("already allocated") || msg.contains("address already in use"),
        ) {
            return Err(RunnerError::PortInUse {
                port,
                by: String::new(),
            });
        }
        return Err(err.into());
    }
    Ok(())
}

/// Waits until the container `name` (running `spec`) passes its gRPC health
/// check; fails early, with its last line of output, if it exits.
async fn wait_healthy(
    docker: &bollard::Docker,
    service: &str,
    spec: &ContainerSpec,
    name: &str,
    limit: Duration,
) -> Result<(), RunnerError> {
    let started = Instant::now();
    let mut last_error = String::new();
    loop {
        let inspect = docker
            .inspect_container(name, None)
            .await
            .map_err(|e| DockerError::api(format!("inspecting {name}"), e))?;
        let state = inspect.state.clone().unwrap_or_default();
        let restarts = inspect.restart_count.unwrap_or(0);
        if restarts > 0 || !state.running.unwrap_or(false) || state.restarting.unwrap_or(false) {
            // Give the engine a moment to report a part that never ran.
            if restarts > 0 || started.elapsed() > Duration::from_secs(2) {
                let running = state.running.unwrap_or(false);
                let status = match (state.exit_code, state.error.as_deref()) {
                    (_, Some(err)) if !err.is_empty() => err.to_string(),
                    // Caught between a crash and its restart's next crash.
                    _ if running && restarts == 1 => "exited, restarted once".to_string(),
                    _ if running => format!("exited, restarted {restarts} times"),
                    (Some(code), _) => format!("exit code {code}"),
                    _ => "not running".into(),
                };
                let last = last_line(docker, name).await;
                return Err(RunnerError::PartExited {
                    service: service.to_string(),
                    part: spec.part.clone(),
                    role: spec.role,
                    status,
                    last_line: last.map(|l| format!(": {l}")).unwrap_or_default(),
                });
            }
        } else if let Some(port) = published_port(Some(&inspect)) {
            // mp-lb and mp-gather also say whether they can serve calls
            // (healthy backends, enough shards); their health check says
            // only that they listen.
            let mut ready = healthy(port, Duration::from_secs(1)).await;
            if let (Ok(()), Some(admin)) = (&ready, published(Some(&inspect), ADMIN_PORT)) {
                let admin = format!("127.0.0.1:{admin}");
                ready = crate::health::ready(&admin, Duration::from_secs(1)).await;
            }
            match ready {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e,
            }
        }
        if started.elapsed() > limit {
            return Err(RunnerError::Unhealthy {
                service: service.to_string(),
                part: spec.part.clone(),
                after: limit,
                detail: if last_error.is_empty() {
                    String::new()
                } else {
                    format!(": {last_error}")
                },
            });
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// The loopback port the container's gRPC port is published on.
pub fn published_port(inspect: Option<&ContainerInspectResponse>) -> Option<u16> {
    published(inspect, PORT)
}

/// The loopback port the container's port `port` is published on.
fn published(inspect: Option<&ContainerInspectResponse>, port: u16) -> Option<u16> {
    let ports = inspect?.network_settings.as_ref()?.ports.as_ref()?;
    let bindings = ports.get(&format!("{port}/tcp"))?.as_ref()?;
    bindings
        .iter()
        .find_map(|b| b.host_port.as_deref().and_then(|p| p.parse().ok()))
}

/// Waits until the service's front sends calls to `new`, the healthy
/// replacement of `spec`, so the part it replaces can go with no gap. The
/// front's admin endpoint says so: the replacement's `IP:PORT` on the
/// service's network is a healthy endpoint in its metrics. Fails with
/// [`RunnerError::NotTakenUp`] after [`TAKE_UP_LIMIT`].
///
/// Where the front cannot be asked (one started by an earlier mp, which did
/// not publish its admin endpoint, or one that does not answer), the fixed
/// wait of [`dns_settle`]; the merge handler, which mp-gather does not list
/// (it looks the name up at each new connection), gets that wait too: none.
async fn front_takes(
    docker: &bollard::Docker,
    service: &str,
    specs: &[ContainerSpec],
    spec: &ContainerSpec,
    new: &str,
    network: &str,
) -> Result<(), RunnerError> {
    let listed = matches!(spec.role, Role::Replica | Role::Handler | Role::Leaf);
    let front = if listed {
        front_admin(docker, specs).await
    } else {
        None
    };
    let endpoint = match front {
        Some(_) => endpoint_on(docker, new, network).await,
        None => None,
    };
    let (Some((front, admin)), Some(endpoint)) = (front, endpoint) else {
        tokio::time::sleep(dns_settle(spec.role)).await;
        return Ok(());
    };
    let asked = ask_front_until(&admin, |text| {
        healthy_in(text, &endpoint).is_some_and(|shards| shards >= 1.0)
    })
    .await;
    settled(asked, service, spec, new)
        .await
        .map_err(|after| RunnerError::NotTakenUp {
            service: service.to_string(),
            part: spec.part.clone(),
            front,
            after,
        })
}

/// Waits, after a replaced leaf was removed, until mp-gather no longer
/// lists its address `old` (`IP:PORT`): it resolved the shard's name again
/// and dropped it. Docker gives a freed address to the next container
/// started on the network, which would be the next shard's replacement; a
/// shard still holding the address would send its calls there, to a leaf of
/// another shard, and answer with that shard's data. Where the front cannot
/// be asked, a fixed wait longer than its DNS interval. Fails with
/// [`RunnerError::NotDropped`] after [`TAKE_UP_LIMIT`]: the update stops
/// there rather than risk it.
async fn front_drops(
    docker: &bollard::Docker,
    service: &str,
    specs: &[ContainerSpec],
    spec: &ContainerSpec,
    old: &str,
) -> Result<(), RunnerError> {
    let Some((front, admin)) = front_admin(docker, specs).await else {
        tokio::time::sleep(dns_settle(spec.role)).await;
        return Ok(());
    };
    let asked = ask_front_until(&admin, |text| healthy_in(text, old).is_none()).await;
    settled(asked, service, spec, old)
        .await
        .map_err(|after| RunnerError::NotDropped {
            service: service.to_string(),
            part: spec.part.clone(),
            front,
            after,
        })
}

/// How asking the front came out.
enum Asked {
    /// Its metrics said what was waited for.
    Said,
    /// It never answered (the error): it cannot be asked.
    NoAnswer(String),
    /// It answered, but not that, within [`TAKE_UP_LIMIT`].
    NotWithin(Duration),
}

/// Reads the front's metrics at `admin` until `said` holds for them, for at
/// most [`TAKE_UP_LIMIT`].
async fn ask_front_until(admin: &str, said: impl Fn(&str) -> bool) -> Asked {
    let started = Instant::now();
    let mut answered = false;
    loop {
        match crate::health::metrics(admin, Duration::from_secs(2)).await {
            Ok(text) if said(&text) => return Asked::Said,
            Ok(_) => answered = true,
            Err(e) if !answered => return Asked::NoAnswer(e),
            // It answered before: a moment's trouble; ask again.
            Err(_) => {}
        }
        if started.elapsed() > TAKE_UP_LIMIT {
            return Asked::NotWithin(TAKE_UP_LIMIT);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `Ok` once the front said so, or after the fixed wait when it could not be
/// asked (said in a warning, with `about`); how long it was asked otherwise.
async fn settled(
    asked: Asked,
    service: &str,
    spec: &ContainerSpec,
    about: &str,
) -> Result<(), Duration> {
    match asked {
        Asked::Said => Ok(()),
        Asked::NoAnswer(e) => {
            let wait = dns_settle(spec.role);
            tracing::warn!(
                "cannot ask the front of {service} about {about} ({e}); waiting {wait:?} instead"
            );
            tokio::time::sleep(wait).await;
            Ok(())
        }
        Asked::NotWithin(after) => Err(after),
    }
}

/// The service's front's role and admin endpoint (`127.0.0.1:PORT`, as
/// published); `None` when it does not publish one (started by an earlier
/// mp) or cannot be inspected.
async fn front_admin(docker: &bollard::Docker, specs: &[ContainerSpec]) -> Option<(Role, String)> {
    let front = specs.iter().find(|s| s.front_port.is_some())?;
    let running = docker.inspect_container(&front.name, None).await.ok()?;
    let admin = published(Some(&running), ADMIN_PORT)?;
    Some((front.role, format!("127.0.0.1:{admin}")))
}

/// The container's gRPC endpoint on `network` (`IP:PORT`), as the front
/// lists it.
async fn endpoint_on(docker: &bollard::Docker, container: &str, network: &str) -> Option<String> {
    let inspect = docker.inspect_container(container, None).await.ok()?;
    let ip = inspect
        .network_settings?
        .networks?
        .remove(network)?
        .ip_address
        .filter(|ip| !ip.is_empty())?;
    Some(format!("{ip}:{PORT}"))
}

/// The value of `endpoint`'s (`IP:PORT`) health series in mp-lb's or
/// mp-gather's `metrics` (`mp_lb_endpoint_healthy{...}`,
/// `mp_gather_leaf_endpoint_healthy{...}`): 1 when it takes calls (mp-gather:
/// in how many shards), 0 when not; `None` when it is not listed at all.
fn healthy_in(metrics: &str, endpoint: &str) -> Option<f64> {
    let series = format!("_endpoint_healthy{{endpoint=\"{endpoint}\"}} ");
    metrics
        .lines()
        .filter(|l| l.starts_with("mp_"))
        .find_map(|l| l.split_once(&series)?.1.trim().parse().ok())
}

/// Asks `grpc.health.v1.Health/Check` on `127.0.0.1:port`. A server that
/// answers but has no health service (UNIMPLEMENTED) counts as healthy: it
/// is up and speaks gRPC.
pub async fn healthy(port: u16, limit: Duration) -> Result<(), String> {
    let check = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(limit);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        match reply {
            Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
            Ok(r) => Err(format!("health status {}", r.get_ref().status)),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(()),
            Err(s) => Err(format!("health check: {}", s.message())),
        }
    };
    tokio::time::timeout(limit, check)
        .await
        .unwrap_or_else(|_| Err("health check timed out".into()))
}

/// The last non-empty line the container printed, if any.
async fn last_line(docker: &bollard::Docker, name: &str) -> Option<String> {
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail("20")
        .build();
    let mut out = String::new();
    let mut logs = docker.logs(name, Some(options));
    while let Some(Ok(chunk)) = logs.next().await {
        out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    out.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
}

/// Creates the service's network unless it exists; returns whether it made it.
async fn ensure_network(
    docker: &bollard::Docker,
    service: &str,
    network: &str,
) -> Result<bool, RunnerError> {
    match docker.inspect_network(network, None).await {
        Ok(n) => {
            let ours = n
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::SERVICE))
                .is_some_and(|s| s == service);
            if ours {
                Ok(false)
            } else {
                Err(RunnerError::Other(format!(
                    "a Docker network named {network} exists and is not mp's: remove it \
                     (`docker network rm {network}`) or choose another service name"
                )))
            }
        }
        Err(e) if status_of(&e) == Some(404) => {
            let net_labels: HashMap<String, String> = [
                (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
                (labels::SERVICE.to_string(), service.to_string()),
            ]
            .into_iter()
            .collect();
            docker
                .create_network(NetworkCreateRequest {
                    name: network.to_string(),
                    driver: Some("bridge".into()),
                    labels: Some(net_labels),
                    ..Default::default()
                })
                .await
                .map_err(|e| DockerError::api(format!("creating network {network}"), e))?;
            Ok(true)
        }
        Err(e) => Err(DockerError::api(format!("inspecting network {network}"), e).into()),
    }
}

/// Stops `id` gracefully (SIGTERM, then SIGKILL after the grace period) and
/// removes it. Errors are ignored: it may be gone already.
async fn stop_and_remove(docker: &bollard::Docker, id: &str) {
    let stop = StopContainerOptionsBuilder::default()
        .t(STOP_GRACE_SECS)
        .build();
    let _ = docker.stop_container(id, Some(stop)).await;
    remove(docker, id).await;
}

/// Removes `id` at once (killing it if it runs). A container the engine is
/// busy with (one that exits at once is being restarted by its policy; a
/// removal already in progress) refuses for a moment: asked again a few
/// times before giving up. Gone already is done.
async fn remove(docker: &bollard::Docker, id: &str) {
    for attempt in 1..=REMOVE_ATTEMPTS {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(id, Some(options)).await {
            Ok(()) => return,
            Err(e) if status_of(&e) == Some(404) => return,
            Err(e) => {
                tracing::debug!(container = id, attempt, error = %e, "removing a container failed");
                if attempt < REMOVE_ATTEMPTS {
                    tokio::time::sleep(REMOVE_RETRY * attempt).await;
                }
            }
        }
    }
}

/// Tries to remove a container before giving up, and the pause after the
/// first (growing by as much after each).
const REMOVE_ATTEMPTS: u32 = 5;
const REMOVE_RETRY: Duration = Duration::from_millis(100);

/// Removes every container of `service`; returns the images they ran and
/// whether there was any.
async fn remove_service(
    docker: &bollard::Docker,
    service: &str,
    progress: &dyn Progress,
) -> (Vec<String>, bool) {
    let filters: HashMap<&str, Vec<String>> = [("label", labels::filter(Some(service)))]
        .into_iter()
        .collect();
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default();
    let images: Vec<String> = containers.iter().filter_map(|c| c.image.clone()).collect();
    let removals = containers.iter().map(|c| async move {
        let part = label(c, labels::PART).unwrap_or("?").to_string();
        progress.part(service, &part, PartEvent::Stopping);
        if let Some(id) = &c.id {
            remove(docker, id).await;
        }
        progress.part(service, &part, PartEvent::Stopped);
    });
    futures::future::join_all(removals).await;
    (images, !containers.is_empty())
}

/// Deletes everything of `service`: containers, network, and with pruning
/// the images mp built for it that nothing else uses.
pub async fn delete(
    runner: &DockerRunner,
    service: &str,
    progress: &dyn Progress,
) -> Result<bool, RunnerError> {
    let docker = &runner.docker;
    // Fail with the engine's error (not "nothing to delete") if it is unwell.
    runner.containers(Some(service)).await?;
    let (images, had_containers) = remove_service(docker, service, progress).await;
    let network = labels::network_name(service);
    let had_network = match docker.remove_network(&network).await {
        Ok(()) => true,
        Err(e) if status_of(&e) == Some(404) => false,
        Err(e) => return Err(DockerError::api(format!("removing network {network}"), e).into()),
    };
    if runner.prune_images {
        let mut unique = images;
        unique.sort();
        unique.dedup();
        for image in unique {
            // Labels are inherited by images built FROM ours, so the name
            // must be one mp gives too.
            let ours = super::image::is_our_repository(&image)
                && docker
                    .inspect_image(&image)
                    .await
                    .ok()
                    .and_then(|i| i.config.and_then(|c| c.labels))
                    .is_some_and(|l| {
                        l.get(labels::MANAGED_BY).map(String::as_str) == Some(labels::MANAGER)
                    });
            if !ours {
                continue; // a user's image is theirs to keep
            }
            let options = RemoveImageOptionsBuilder::default().build();
            match docker.remove_image(&image, Some(options), None).await {
                Ok(_) => progress.note(service, &format!("removed image {image}")),
                Err(e) if status_of(&e) == Some(409) => progress.note(
                    service,
                    &format!("kept image {image}: other containers use it"),
                ),
                Err(_) => {}
            }
        }
    }
    Ok(had_containers || had_network)
}

/// The container's name without the leading `/`.
fn container_name(c: &ContainerSummary) -> Option<String> {
    c.names
        .as_ref()?
        .first()
        .map(|n| n.trim_start_matches('/').to_string())
}

/// A loopback port that is free now, for a front without `--port`.
fn free_port() -> Result<u16, RunnerError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| RunnerError::io("finding a free port for the front", e))
}

/// Fails with [`RunnerError::PortInUse`] if `port` cannot be bound here.
fn ensure_port_free(port: u16) -> Result<(), RunnerError> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(RunnerError::PortInUse {
            port,
            by: String::new(),
        }),
        Err(e) => Err(RunnerError::io(format!("checking port {port}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fronts_health_series_is_read_per_endpoint() {
        let lb = "# HELP mp_lb_endpoint_healthy 1 when the endpoint takes traffic\n\
                  mp_lb_endpoint_healthy{endpoint=\"172.18.0.3:8080\"} 1\n\
                  mp_lb_endpoint_healthy{endpoint=\"172.18.0.4:8080\"} 0\n\
                  mp_lb_endpoint_connections{endpoint=\"172.18.0.5:8080\"} 1\n";
        assert_eq!(healthy_in(lb, "172.18.0.3:8080"), Some(1.0));
        assert_eq!(
            healthy_in(lb, "172.18.0.4:8080"),
            Some(0.0),
            "listed, not healthy"
        );
        assert_eq!(healthy_in(lb, "172.18.0.5:8080"), None, "another series");
        assert_eq!(healthy_in(lb, "172.18.0.30:8080"), None, "not listed");
        assert_eq!(healthy_in(lb, "172.18.0.3:80"), None, "another port");
        // Held by two of mp-gather's shards at once: healthy in both.
        let gather = "mp_gather_leaf_endpoint_healthy{endpoint=\"172.18.0.9:8080\"} 2\n";
        assert_eq!(healthy_in(gather, "172.18.0.9:8080"), Some(2.0));
        assert_eq!(healthy_in("", "172.18.0.9:8080"), None);
    }
}
