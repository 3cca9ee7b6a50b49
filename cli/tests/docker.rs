//! End to end on a real Docker engine: the built `mp` binary deploys the
//! `hello` and histogram examples behind the real mp-lb and mp-gather as
//! containers (images built `FROM scratch` on the spot: nothing is pulled),
//! and calls, lists, updates, breaks and deletes them.
//!
//! Outside CI, with no engine reachable, every test prints a loud SKIPPED line
//! and passes; with `CI=true` a missing engine fails them. Each test uses its
//! own service names and a guard that deletes them even when the test fails.
//! The images are built once per run of this file and shared by the tests.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use bollard::Docker;
use mp_cli::runner::docker::{engine, image};
use mp_testkit::{bin, example, in_ci, output_within, profile_dir, repo_root, ChildGuard};

/// The programs the tests run (`mp`, `mp-lb`, `mp-gather` and the example
/// handlers), hard-linked (else copied) once per run into a directory of the
/// run's own: a build in the same target directory while the tests run
/// replaces the originals, and must not change what these tests deploy (a
/// new mp-lb would make an update replace the front).
fn program(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let root = profile_dir().join("mp-docker-tests");
        // Directories of runs that are over (their process is gone).
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().to_string();
            if !PathBuf::from("/proc").join(&pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("create the programs directory");
        let originals = ["mp", "mp-lb", "mp-gather"]
            .map(|b| (b, bin(b)))
            .into_iter()
            .chain(["hello", "histogram-leaf", "histogram-merge"].map(|e| (e, example(e))));
        for (name, original) in originals {
            let to = dir.join(name);
            if std::fs::hard_link(&original, &to).is_err() {
                std::fs::copy(&original, &to).expect("copy a program");
            }
        }
        dir
    });
    dir.join(name)
}

/// A runtime for the few engine calls the tests make themselves.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// The engine, with the shared images built; `None` (after a loud SKIPPED
/// line) when no engine answers outside CI.
fn engine(test: &str) -> Option<Docker> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| block_on(prepare()));
    match ready {
        Ok(()) => Some(block_on(engine::connect()).expect("the engine answered a moment ago")),
        Err(e) if in_ci() => panic!("CI=true and the Docker engine is needed: {e}"),
        Err(e) => {
            loud(&format!("SKIPPED docker test {test}: {e}"));
            None
        }
    }
}

/// Prints `message` where it is seen even when the test passes: straight
/// to stderr, past the test harness's output capture.
fn loud(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** {message} ***\n");
}

/// Builds every image the tests deploy, once, so tests running in parallel
/// do not all build the same ones.
async fn prepare() -> Result<(), String> {
    let docker = engine::connect().await.map_err(|e| e.to_string())?;
    let canonical = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    let mut data_plane = vec![canonical(program("mp-lb")), canonical(program("mp-gather"))];
    data_plane.sort();
    let mut images = vec![("mp-data-plane".to_string(), data_plane)];
    for ex in ["hello", "histogram-leaf", "histogram-merge"] {
        images.push((image::repository_for(ex), vec![canonical(program(ex))]));
    }
    // Pins of runs that are over.
    let options = ListContainersOptionsBuilder::default().all(true).build();
    for c in docker
        .list_containers(Some(options))
        .await
        .map_err(|e| e.to_string())?
    {
        let name = c.names.and_then(|n| n.first().cloned()).unwrap_or_default();
        let Some(pid) = name.strip_prefix("/dt-pin-") else {
            continue;
        };
        if !PathBuf::from("/proc").join(pid).exists() {
            let rm = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                .force(true)
                .build();
            let _ = docker.remove_container(&name[1..], Some(rm)).await;
        }
    }
    for (repository, binaries) in images {
        let sources = image::Sources::for_binaries(&binaries).map_err(|e| e.to_string())?;
        let tag = image::ensure_image(&docker, &repository, sources, &mut |m| eprintln!("{m}"))
            .await
            .map_err(|e| e.to_string())?;
        // Earlier builds (of binaries since rebuilt) would only pile up.
        image::remove_older(&docker, &repository, &tag).await;
        if repository == image::DATA_PLANE_REPOSITORY {
            // Every service runs mp-lb or mp-gather now, so a test's
            // `delete --prune` would remove the shared data-plane image
            // whenever no other test's container happened to use it, under
            // a deploy that is about to. A container created (never started)
            // from it for this run keeps it: the engine refuses to remove an
            // image a container uses, and mp says it kept it.
            let pin = format!("dt-pin-{}", std::process::id());
            let options = bollard::query_parameters::CreateContainerOptionsBuilder::default()
                .name(&pin)
                .build();
            let body = bollard::models::ContainerCreateBody {
                image: Some(tag.clone()),
                // Never run: a command only because the image has none.
                cmd: Some(vec!["pin".to_string()]),
                ..Default::default()
            };
            docker
                .create_container(Some(options), body)
                .await
                .map_err(|e| format!("pinning {tag}: {e}"))?;
        }
    }
    Ok(())
}

/// A unique service name for this run.
fn unique(what: &str) -> String {
    format!("dt-{what}-{}", std::process::id())
}

/// Runs the `mp` binary; deletes the services it deployed when dropped.
struct Mp {
    services: std::sync::Mutex<Vec<String>>,
}

impl Mp {
    fn new() -> Mp {
        Mp {
            services: Default::default(),
        }
    }

    fn command(args: &[&str]) -> Command {
        let mut cmd = Command::new(program("mp"));
        cmd.args(args)
            .env_remove("MP_RUNNER")
            .current_dir(repo_root());
        cmd
    }

    /// Runs `mp args...` (at most 3 minutes: the first deploy may build).
    fn run(&self, args: &[&str]) -> Output {
        if let Some(i) = args.iter().position(|a| *a == "--name") {
            self.services.lock().unwrap().push(args[i + 1].to_string());
        }
        output_within(&mut Self::command(args), Duration::from_secs(180))
    }

    /// Runs `mp args...`, panics with its output unless it succeeds.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "mp {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `mp args...`, expects a failure, returns its last stderr line.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "mp {args:?} succeeded but should fail:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_string()
    }

    /// `mp call NAME` on the docker runner: the reply's JSON.
    fn call(&self, name: &str) -> Result<serde_json::Value, String> {
        let out = output_within(
            &mut Self::command(&["call", name, "--runner", "docker", "--timeout", "10"]),
            Duration::from_secs(20),
        );
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

impl Drop for Mp {
    fn drop(&mut self) {
        for name in self.services.lock().unwrap().drain(..) {
            let _ = output_within(
                &mut Self::command(&["delete", &name, "--runner", "docker"]),
                Duration::from_secs(60),
            );
        }
    }
}

/// The containers of `service` (running or not).
fn containers(docker: &Docker, service: &str) -> Vec<ContainerSummary> {
    let filters: HashMap<&str, Vec<String>> = [(
        "label",
        vec![
            "mp.managed-by=mp".to_string(),
            format!("mp.service={service}"),
        ],
    )]
    .into_iter()
    .collect();
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    block_on(docker.list_containers(Some(options))).expect("list containers")
}

fn names(cs: &[ContainerSummary]) -> Vec<String> {
    let mut n: Vec<String> = cs
        .iter()
        .filter_map(|c| c.names.as_ref()?.first().cloned())
        .map(|n| n.trim_start_matches('/').to_string())
        .collect();
    n.sort();
    n
}

/// Whether the network `name` exists.
fn network_exists(docker: &Docker, name: &str) -> bool {
    let filters: HashMap<&str, Vec<String>> =
        [("name", vec![name.to_string()])].into_iter().collect();
    let options = ListNetworksOptionsBuilder::default()
        .filters(&filters)
        .build();
    block_on(docker.list_networks(Some(options)))
        .expect("list networks")
        .iter()
        .any(|n| n.name.as_deref() == Some(name))
}

/// Asserts that nothing of `service` is left on the engine.
fn assert_gone(docker: &Docker, service: &str) {
    let left = names(&containers(docker, service));
    assert!(left.is_empty(), "containers of {service} left: {left:?}");
    assert!(
        !network_exists(docker, &format!("mp-{service}")),
        "network mp-{service} left"
    );
}

/// The `server` field of hello's replies over `n` calls.
fn servers(mp: &Mp, name: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let reply = mp.call(name).unwrap_or_else(|e| panic!("call {name}: {e}"));
        let server = reply["server"].as_str().expect("hello names its server");
        *seen.entry(server.to_string()).or_default() += 1;
    }
    seen
}

/// Runs `f` while another thread calls `name` in a loop; panics if any call
/// failed, or if none was made.
fn calls_during<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let caller = {
        let (stop, ok, name) = (stop.clone(), ok.clone(), name.to_string());
        std::thread::spawn(move || {
            let mp = Mp::new();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match mp.call(&name) {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e),
                }
            }
            errors
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    let errors = caller.join().expect("caller thread");
    assert!(errors.is_empty(), "calls failed meanwhile: {errors:?}");
    assert!(ok.load(Ordering::Relaxed) > 0, "calls were made meanwhile");
    out
}

/// `mp logs NAME --role ROLE --follow` running in the background.
struct Follow {
    _child: ChildGuard,
    text: Arc<std::sync::Mutex<String>>,
    errors: Arc<std::sync::Mutex<String>>,
}

impl Follow {
    fn start(name: &str, role: &str) -> Follow {
        let mut child = ChildGuard::spawn(
            Mp::command(&[
                "logs", name, "--runner", "docker", "--role", role, "--follow",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        );
        let read = |pipe: Box<dyn std::io::Read + Send>| {
            let text = Arc::new(std::sync::Mutex::new(String::new()));
            let sink = text.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut t = sink.lock().unwrap();
                    t.push_str(&line);
                    t.push('\n');
                }
            });
            text
        };
        let stdout = child.inner().stdout.take().expect("piped");
        let stderr = child.inner().stderr.take().expect("piped");
        Follow {
            text: read(Box::new(stdout)),
            errors: read(Box::new(stderr)),
            _child: child,
        }
    }

    /// Everything printed so far.
    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// What it printed and, if anything, what it said on stderr: for a
    /// failing assertion (a follow that stopped says why there).
    fn report(&self) -> String {
        let errors = self.errors.lock().unwrap().clone();
        if errors.is_empty() {
            self.text()
        } else {
            format!("{}--- mp logs stderr ---\n{errors}", self.text())
        }
    }
}

/// The `/metrics` text of the front container `front`, from its admin port
/// as the deploy published it on loopback.
fn front_metrics(docker: &Docker, front: &str) -> String {
    use std::io::{Read, Write};
    let inspect = block_on(docker.inspect_container(front, None)).expect("inspect the front");
    let port = inspect
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get("9901/tcp").cloned().flatten())
        .and_then(|b| b.first()?.host_port.clone())
        .unwrap_or_else(|| panic!("{front} publishes its admin port"));
    let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the metrics");
    text
}

/// The `IP:8080` on the service's network of each of `service`'s containers
/// whose name starts with `mp-<service>-<part>`: how its front lists them.
fn endpoints(docker: &Docker, service: &str, part: &str) -> Vec<String> {
    let prefix = format!("/mp-{service}-{part}");
    containers(docker, service)
        .iter()
        .filter(|c| {
            c.names
                .as_ref()
                .is_some_and(|n| n.iter().any(|n| n.starts_with(&prefix)))
        })
        .map(|c| {
            let id = c.id.as_deref().expect("an id");
            let inspect = block_on(docker.inspect_container(id, None)).expect("inspect");
            let ip = inspect
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|mut n| n.remove(&format!("mp-{service}")))
                .and_then(|e| e.ip_address)
                .unwrap_or_else(|| panic!("{prefix} has an address on the network"));
            format!("{ip}:8080")
        })
        .collect()
}

/// Asserts that the front `front`'s metrics list every one of `endpoints`
/// as healthy (`series`: `mp_lb_endpoint_healthy` or
/// `mp_gather_leaf_endpoint_healthy`).
fn assert_taking_calls(docker: &Docker, front: &str, series: &str, endpoints: &[String]) {
    let metrics = front_metrics(docker, front);
    for ep in endpoints {
        let line = format!("{series}{{endpoint=\"{ep}\"}} 1");
        assert!(
            metrics.lines().any(|l| l == line),
            "{front} does not send calls to {ep}:\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with(series))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The id of the container called `name` among `cs`.
fn id_named(cs: &[ContainerSummary], name: &str) -> Option<String> {
    cs.iter()
        .find(|c| {
            c.names
                .as_ref()
                .is_some_and(|ns| ns.iter().any(|x| x == &format!("/{name}")))
        })
        .and_then(|c| c.id.clone())
}

/// Waits (at most `limit`) until `f` is true.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

#[test]
fn spread_of_three_is_four_containers_and_updates_without_failed_calls() {
    let Some(docker) = engine("spread") else {
        return;
    };
    let mp = Mp::new();
    let name = unique("spread");
    let hello = program("hello");
    let deploy = [
        "deploy",
        "--runner",
        "docker",
        "--pattern",
        "spread",
        "--name",
        &name,
        "--replicas",
        "3",
        "--handler",
        hello.to_str().unwrap(),
    ];
    // The dry run shows mp-lb exactly as the container will run it.
    let plan = mp.ok(&[&deploy[..], &["--dry-run"]].concat());
    let planned_lb = plan
        .lines()
        .find_map(|l| l.split_once(" mp-lb ").map(|(_, args)| args.to_string()))
        .unwrap_or_else(|| panic!("no mp-lb line in the dry run:\n{plan}"));
    assert!(
        planned_lb.contains(&format!("--dns mp-{name}-replicas:8080"))
            && !planned_lb.contains("--backend"),
        "{planned_lb}"
    );
    assert!(
        containers(&docker, &name).is_empty(),
        "a dry run starts nothing"
    );
    let out = mp.ok(&deploy);
    assert!(out.contains("127.0.0.1:"), "deploy prints the front: {out}");
    let lb_cmd = block_on(docker.inspect_container(&format!("mp-{name}-lb-0"), None))
        .expect("inspect the lb")
        .config
        .and_then(|c| c.cmd)
        .expect("the lb's command");
    assert!(lb_cmd[0].ends_with("/mp-lb"), "{lb_cmd:?}");
    assert_eq!(lb_cmd[1..].join(" "), planned_lb, "dry run vs. what runs");

    // Seed chapter 2: 3 replicas and a load balancer, as containers.
    let cs = containers(&docker, &name);
    assert_eq!(
        names(&cs),
        [
            format!("mp-{name}-lb-0"),
            format!("mp-{name}-replica-0"),
            format!("mp-{name}-replica-1"),
            format!("mp-{name}-replica-2"),
        ]
    );
    assert!(network_exists(&docker, &format!("mp-{name}")));
    // mp-lb is healthy once one replica is; it checks the others within
    // moments. Then the round robin is exact.
    assert!(
        eventually(Duration::from_secs(20), || servers(&mp, &name, 3).len()
            == 3),
        "all 3 replicas serve"
    );
    let seen = servers(&mp, &name, 9);
    assert_eq!(
        seen.len(),
        3,
        "9 calls reach 3 container hostnames: {seen:?}"
    );
    assert!(
        seen.keys()
            .all(|s| s.starts_with(&format!("mp-{name}-replica-"))),
        "{seen:?}"
    );
    assert!(seen.values().all(|n| *n == 3), "round robin: {seen:?}");

    let ps = mp.ok(&["ps", "--runner", "docker"]);
    let line = ps
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(line.contains("4/4") && line.contains("docker"), "{line}");
    let logs = mp.ok(&["logs", &name, "--runner", "docker", "--role", "replica"]);
    for i in 0..3 {
        assert!(
            logs.contains(&format!("replica-{i}")),
            "logs of replica-{i}:\n{logs}"
        );
    }

    // A re-deploy with a change replaces the replicas one at a time while
    // calls keep succeeding; the lb is kept.
    let id_of = |cs: &[ContainerSummary], n: &str| -> Option<String> {
        cs.iter()
            .find(|c| {
                c.names
                    .as_ref()
                    .is_some_and(|ns| ns.iter().any(|x| x == &format!("/{n}")))
            })
            .and_then(|c| c.id.clone())
    };
    let lb = format!("mp-{name}-lb-0");
    let lb_id = id_of(&cs, &lb);
    let before: Vec<String> = cs.iter().filter_map(|c| c.id.clone()).collect();
    let spread = |replicas: &str, extra: &[&str]| {
        let mut args = vec![
            "deploy",
            "--runner",
            "docker",
            "--pattern",
            "spread",
            "--name",
            &name,
            "--replicas",
            replicas,
            "--handler",
            hello.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        calls_during(&name, || mp.ok(&args))
    };
    let follow = Follow::start(&name, "replica");
    spread("3", &["--env", "VERSION=2"]);
    // `logs --follow` picked up the replacements as they appeared.
    let started = |i: usize| {
        follow
            .text()
            .lines()
            .filter(|l| l.starts_with(&format!("replica-{i}")) && l.contains("serving"))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(20), || (0..3).all(|i| started(i) >= 2)),
        "logs --follow shows old and new replicas starting:\n{}",
        follow.report()
    );
    drop(follow);
    let after = containers(&docker, &name);
    assert_eq!(after.len(), 4, "{:?}", names(&after));
    let replaced = after
        .iter()
        .filter(|c| !before.contains(c.id.as_ref().unwrap()))
        .count();
    assert_eq!(replaced, 3, "the 3 replicas were replaced");
    assert_eq!(id_of(&after, &lb), lb_id, "the lb was kept");
    // The update moved on from each replica once mp-lb sent calls to its
    // replacement, as its admin endpoint says.
    let new_replicas = endpoints(&docker, &name, "replica-");
    assert_eq!(new_replicas.len(), 3, "{new_replicas:?}");
    assert_taking_calls(&docker, &lb, "mp_lb_endpoint_healthy", &new_replicas);
    // mp-lb resolves the replicas' alias again every few seconds.
    let all = |n: usize| {
        eventually(Duration::from_secs(20), || {
            servers(&mp, &name, 2 * n).len() == n
        })
    };
    assert!(all(3), "the new replicas all serve");

    // Scaling up and down is an update too: calls keep succeeding, the lb stays.
    spread("4", &["--env", "VERSION=2"]);
    assert_eq!(containers(&docker, &name).len(), 5);
    assert!(all(4), "the 4th replica serves");
    spread("3", &["--env", "VERSION=2"]);
    let after = containers(&docker, &name);
    assert_eq!(after.len(), 4, "{:?}", names(&after));
    assert_eq!(id_of(&after, &lb), lb_id, "the lb was kept");
    assert!(all(3));

    // Stopping one replica by hand: mp-lb takes it out, and no call fails.
    let victim = format!("mp-{name}-replica-1");
    block_on(docker.stop_container(
        &victim,
        None::<bollard::query_parameters::StopContainerOptions>,
    ))
    .expect("docker stop");
    std::thread::sleep(Duration::from_secs(6));
    let seen = servers(&mp, &name, 12);
    assert!(!seen.contains_key(&format!("{victim}:8080")), "{seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");

    // Delete leaves no container and no network.
    let out = mp.ok(&["delete", &name, "--runner", "docker"]);
    assert!(out.contains("deleted"), "{out}");
    assert_gone(&docker, &name);
    let out = mp.ok(&["delete", &name, "--runner", "docker"]);
    assert!(
        out.contains("nothing to delete"),
        "deleting twice is fine: {out}"
    );
}

/// Whether the engine refuses `id`'s output because it is being removed (409
/// "dead or marked for removal"); `None` once it is gone (404) or when the
/// output is served.
async fn refused_as_leaving(docker: &Docker, id: &str) -> Option<bool> {
    use futures::StreamExt;
    let options = bollard::query_parameters::LogsOptionsBuilder::default()
        .stdout(true)
        .tail("1")
        .build();
    match docker.logs(id, Some(options)).next().await {
        Some(Err(bollard::errors::Error::DockerResponseServerError { status_code, .. })) => {
            match status_code {
                409 => Some(true),
                404 => None,
                _ => Some(false),
            }
        }
        _ => Some(false),
    }
}

/// `mp logs` while a rolling update removes containers: the engine refuses
/// the output of a container being removed (409), and that part is skipped
/// like one already gone, not the end of the command (a follow that met it
/// ended, and took every other part's output with it). Each replica is
/// removed in turn while the service's output is read; the engine is asked
/// before and after the read, so at least one read is known to have met a
/// removal under way.
#[test]
fn logs_skip_a_container_being_removed() {
    let Some(docker) = engine("logs-removal") else {
        return;
    };
    let mp = Mp::new();
    let name = unique("logsrm");
    let hello = program("hello");
    mp.ok(&[
        "deploy",
        "--runner",
        "docker",
        "--pattern",
        "spread",
        "--name",
        &name,
        "--replicas",
        "4",
        "--handler",
        hello.to_str().unwrap(),
    ]);
    let replicas: Vec<String> = (0..4).map(|i| format!("mp-{name}-replica-{i}")).collect();
    let existing = names(&containers(&docker, &name));
    assert!(
        replicas.iter().all(|r| existing.contains(r)),
        "{existing:?}"
    );
    let within_removal = block_on(async {
        use futures::StreamExt;
        use mp_cli::runner::{LogOptions, Runner};
        let runner = mp_cli::runner::docker::DockerRunner::connect()
            .await
            .expect("the engine answered a moment ago");
        let mut within_removal = 0;
        for id in &replicas {
            let remover = docker.clone();
            let removed = id.clone();
            let removal = tokio::spawn(async move {
                let force = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .build();
                remover.remove_container(&removed, Some(force)).await
            });
            // The removal is under way once the engine refuses the output.
            let asked = Instant::now();
            let before = loop {
                match refused_as_leaving(&docker, id).await {
                    Some(false) if asked.elapsed() < Duration::from_secs(5) => {
                        tokio::time::sleep(Duration::from_millis(2)).await
                    }
                    other => break other == Some(true),
                }
            };
            let options = LogOptions {
                role: None,
                follow: false,
            };
            let lines: Vec<_> = runner
                .logs(&name, &options)
                .await
                .expect("the service is there")
                .collect()
                .await;
            let after = refused_as_leaving(&docker, id).await == Some(true);
            let errors: Vec<String> = lines
                .iter()
                .filter_map(|l| l.as_ref().err().map(|e| e.to_string()))
                .collect();
            assert!(
                errors.is_empty(),
                "reading the output while {id} was removed: {errors:?}"
            );
            assert!(
                lines.iter().flatten().any(|l| l.part == "lb"),
                "the lb's output is missing while {id} was removed"
            );
            if before && after {
                within_removal += 1;
            }
            removal
                .await
                .expect("the removal task")
                .unwrap_or_else(|e| panic!("removing {id}: {e}"));
        }
        within_removal
    });
    assert!(
        within_removal >= 1,
        "no read met a removal under way (the engine removed every replica \
         before the read began), so this test showed nothing"
    );
}

#[test]
fn scatter_of_ten_sums_to_a_thousand_and_a_killed_leaf_comes_back() {
    let Some(docker) = engine("scatter") else {
        return;
    };
    let mp = Mp::new();
    let name = unique("histogram");
    let leaf = program("histogram-leaf");
    let merge = program("histogram-merge");
    let deploy = |extra: &[&str]| {
        let mut args = vec![
            "deploy",
            "--runner",
            "docker",
            "--pattern",
            "scatter",
            "--name",
            &name,
            "--shards",
            "10",
            "--leaf",
            leaf.to_str().unwrap(),
            "--merge",
            merge.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        mp.ok(&args)
    };
    deploy(&[]);
    // Seed chapter 4: 10 leaves, the gather root and the merger.
    let cs = containers(&docker, &name);
    let n = names(&cs);
    assert_eq!(n.len(), 12, "{n:?}");
    assert!(n.contains(&format!("mp-{name}-gather-0")), "{n:?}");
    assert!(n.contains(&format!("mp-{name}-merge-0")), "{n:?}");
    for i in 0..10 {
        assert!(n.contains(&format!("mp-{name}-leaf-{i}")), "{n:?}");
    }
    let sum = |reply: &serde_json::Value| -> u64 {
        reply
            .as_array()
            .unwrap_or_else(|| panic!("a histogram: {reply}"))
            .iter()
            .map(|b| {
                b.as_u64()
                    .unwrap_or_else(|| panic!("bins are counts: {reply}"))
            })
            .sum()
    };
    let reply = mp.call(&name).expect("call the histogram");
    assert_eq!(reply.as_array().map(Vec::len), Some(10), "{reply}");
    // 10 leaves x 100 samples, all inside the histogram's range.
    let whole = |n: u64| n == 1000;
    assert!(whole(sum(&reply)), "10 leaves x 100 samples: {reply}");

    // A leaf's process killed by hand (a crash, not `docker stop`): the
    // restart policy brings it back and calls succeed again.
    let victim = format!("mp-{name}-leaf-3");
    // Follow the leaf's output across its crash: the stream goes on with the
    // restarted process's lines.
    let follow = Follow::start(&name, "leaf");
    let leaf3_lines = |followed: &str| followed.lines().filter(|l| l.starts_with("leaf-3")).count();
    assert!(
        eventually(Duration::from_secs(20), || leaf3_lines(&follow.text()) > 0),
        "logs --follow shows leaf-3:\n{}",
        follow.report()
    );
    let before_crash = leaf3_lines(&follow.text());
    let inspect = block_on(docker.inspect_container(&victim, None)).expect("inspect leaf");
    let pid = inspect
        .state
        .and_then(|s| s.pid)
        .expect("a running leaf has a pid");
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    if !killed.is_ok_and(|s| s.success()) {
        assert!(!in_ci(), "cannot kill pid {pid} of {victim}");
        loud("SKIPPED the crash part: killing a container's process needs root");
        return;
    }
    let back = eventually(Duration::from_secs(30), || {
        let i = block_on(docker.inspect_container(&victim, None)).expect("inspect");
        i.restart_count.unwrap_or(0) >= 1 && i.state.and_then(|s| s.running) == Some(true)
    });
    assert!(back, "{victim} was restarted");
    let recovered = eventually(Duration::from_secs(30), || {
        mp.call(&name).is_ok_and(|r| whole(sum(&r)))
    });
    assert!(recovered, "calls succeed again after the leaf came back");

    // An update replaces the leaves and the merger one at a time while every
    // call succeeds; mp-gather is kept.
    let gather = format!("mp-{name}-gather-0");
    let gather_id = id_named(&containers(&docker, &name), &gather);
    let merger_id = id_named(&containers(&docker, &name), &format!("mp-{name}-merge-0"));
    calls_during(&name, || deploy(&["--env", "VERSION=2"]));
    let after = containers(&docker, &name);
    assert_eq!(id_named(&after, &gather), gather_id, "mp-gather was kept");
    assert_ne!(
        id_named(&after, &format!("mp-{name}-merge-0")),
        merger_id,
        "the merger was replaced"
    );
    let reply = mp.call(&name).expect("call the updated histogram");
    assert!(whole(sum(&reply)), "after the update: {reply}");

    let followed_on = eventually(Duration::from_secs(20), || {
        leaf3_lines(&follow.text()) > before_crash
    });
    assert!(
        followed_on,
        "logs --follow goes on after the restart:\n{}",
        follow.report()
    );
    drop(follow);
    let ps = mp.ok(&["ps", "--runner", "docker"]);
    let line = ps
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(line.contains("12/12"), "{line}");

    mp.ok(&["delete", &name, "--runner", "docker"]);
    assert_gone(&docker, &name);
}

/// Whether every shard of the json-array reply `reply` was answered by its
/// own leaf: element i comes from `mp-<service>-leaf-i` (hello names its
/// host, which is the container's name).
fn in_shard_order(service: &str, reply: &serde_json::Value, shards: usize) -> Result<(), String> {
    let parts = reply
        .as_array()
        .ok_or_else(|| format!("not an array: {reply}"))?;
    if parts.len() != shards {
        return Err(format!("{} parts: {reply}", parts.len()));
    }
    for (i, part) in parts.iter().enumerate() {
        let want = format!("mp-{service}-leaf-{i}:8080");
        if part["server"].as_str() != Some(want.as_str()) {
            return Err(format!("shard {i} answered by {}: {reply}", part["server"]));
        }
    }
    Ok(())
}

/// A scatter's update replaces its leaves one at a time while every call
/// succeeds with each shard answered by its own leaf. The engine gives a
/// removed leaf's address to the next replacement (another shard's leaf):
/// the update waits until mp-gather has dropped it, and goes on from each
/// leaf once mp-gather sends calls to its replacement.
#[test]
fn a_scatter_updates_leaf_by_leaf_with_every_shard_answered_by_its_own() {
    let Some(docker) = engine("scatter-update") else {
        return;
    };
    const SHARDS: usize = 5;
    let mp = Mp::new();
    let name = unique("shards");
    let hello = program("hello");
    let deploy = |extra: &[&str]| {
        let shards = SHARDS.to_string();
        let mut args = vec![
            "deploy",
            "--runner",
            "docker",
            "--pattern",
            "scatter",
            "--name",
            &name,
            "--shards",
            &shards,
            "--leaf",
            hello.to_str().unwrap(),
            "--reducer",
            "json-array",
        ];
        args.extend_from_slice(extra);
        let out = mp.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "mp {args:?} failed:\n{stderr}");
        stderr
    };
    deploy(&[]);
    let reply = mp.call(&name).expect("call the scatter");
    in_shard_order(&name, &reply, SHARDS).unwrap();
    let gather = format!("mp-{name}-gather-0");
    let gather_id = id_named(&containers(&docker, &name), &gather);
    let before: Vec<String> = containers(&docker, &name)
        .iter()
        .filter_map(|c| c.id.clone())
        .collect();

    // Calls all through the update, each checked shard by shard.
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let (stop, name) = (stop.clone(), name.clone());
        std::thread::spawn(move || {
            let mp = Mp::new();
            let (mut ok, mut wrong) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match mp
                    .call(&name)
                    .and_then(|r| in_shard_order(&name, &r, SHARDS))
                {
                    Ok(()) => ok += 1,
                    Err(e) => wrong.push(e),
                }
            }
            (ok, wrong)
        })
    };
    let said = deploy(&["--env", "VERSION=2"]);
    stop.store(true, Ordering::Relaxed);
    // It asked mp-gather each time, rather than waiting a fixed time.
    assert!(!said.contains("cannot ask the front"), "{said}");
    let (ok, wrong) = caller.join().expect("caller thread");
    assert!(
        wrong.is_empty(),
        "{} bad calls of {}: {wrong:#?}",
        wrong.len(),
        ok + wrong.len()
    );
    assert!(ok > 0, "calls were made meanwhile");

    let after = containers(&docker, &name);
    assert_eq!(after.len(), SHARDS + 1, "{:?}", names(&after));
    let replaced = after
        .iter()
        .filter(|c| !before.contains(c.id.as_ref().unwrap()))
        .count();
    assert_eq!(replaced, SHARDS, "every leaf was replaced");
    assert_eq!(id_named(&after, &gather), gather_id, "mp-gather was kept");
    // The update returned once mp-gather sent calls to every new leaf.
    let leaves = endpoints(&docker, &name, "leaf-");
    assert_eq!(leaves.len(), SHARDS, "{leaves:?}");
    assert_taking_calls(&docker, &gather, "mp_gather_leaf_endpoint_healthy", &leaves);
    let reply = mp.call(&name).expect("call the updated scatter");
    in_shard_order(&name, &reply, SHARDS).unwrap();
}

#[test]
fn two_services_side_by_side_do_not_collide() {
    let Some(docker) = engine("side-by-side") else {
        return;
    };
    let mp = Mp::new();
    let (a, b) = (unique("one"), unique("two"));
    let hello = program("hello");
    for name in [&a, &b] {
        mp.ok(&[
            "deploy",
            "--runner",
            "docker",
            "--pattern",
            "service",
            "--name",
            name,
            "--handler",
            hello.to_str().unwrap(),
        ]);
    }
    for name in [&a, &b] {
        let seen = servers(&mp, name, 2);
        let expected = format!("mp-{name}-handler-0:8080");
        assert_eq!(seen.keys().collect::<Vec<_>>(), [&expected], "{seen:?}");
        // The handler behind an mp-lb of one backend, which owns the port.
        let cs = containers(&docker, name);
        assert_eq!(
            names(&cs),
            [format!("mp-{name}-handler-0"), format!("mp-{name}-lb-0")],
        );
    }
    let fronts: Vec<String> = [&a, &b]
        .iter()
        .map(|n| {
            let ps = mp.ok(&["ps", "--runner", "docker"]);
            ps.lines()
                .find(|l| l.starts_with(n.as_str()))
                .unwrap_or_else(|| panic!("{ps}"))
                .to_string()
        })
        .collect();
    assert_ne!(fronts[0], fronts[1]);

    // An update to a handler that cannot start fails, and the service keeps
    // serving from the container it had.
    let handler = format!("mp-{a}-handler-0");
    let id = id_named(&containers(&docker, &a), &handler);
    assert!(id.is_some());
    let exits = mp_testkit::which("false").expect("false(1) is installed");
    let err = mp.fails(&[
        "deploy",
        "--runner",
        "docker",
        "--pattern",
        "service",
        "--name",
        &a,
        "--handler",
        exits.to_str().unwrap(),
    ]);
    assert!(err.contains("exited"), "{err}");
    let cs = containers(&docker, &a);
    assert_eq!(cs.len(), 2, "{:?}", names(&cs));
    assert_eq!(id_named(&cs, &handler), id, "the old handler still runs");
    assert_eq!(servers(&mp, &a, 1).len(), 1, "{a} still answers");
    mp.ok(&["delete", &a, "--runner", "docker"]);
    assert_gone(&docker, &a);
    assert_eq!(servers(&mp, &b, 1).len(), 1, "{b} still answers");
    mp.ok(&["delete", &b, "--runner", "docker"]);
    assert_gone(&docker, &b);
}

#[test]
fn a_service_redeploys_behind_its_lb_without_failed_calls() {
    let Some(docker) = engine("service-update") else {
        return;
    };
    let mp = Mp::new();
    let name = unique("svcupdate");
    let hello = program("hello");
    let deploy = |extra: &[&str]| {
        let mut args = vec![
            "deploy",
            "--runner",
            "docker",
            "--pattern",
            "service",
            "--name",
            &name,
            "--handler",
            hello.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.iter().map(|a| a.to_string()).collect::<Vec<String>>()
    };
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mp.ok(&args)
    };
    // The dry run shows the front: mp-lb following the handler's alias.
    let plan = run(&[deploy(&[]), vec!["--dry-run".into()]].concat());
    let planned_lb = plan
        .lines()
        .find_map(|l| l.split_once(" mp-lb ").map(|(_, args)| args.to_string()))
        .unwrap_or_else(|| panic!("no mp-lb line in the dry run:\n{plan}"));
    assert!(
        planned_lb.contains(&format!("--dns mp-{name}-replicas:8080")),
        "{planned_lb}"
    );
    let out = run(&deploy(&[]));
    assert!(out.contains("2 processes"), "{out}");
    let lb = format!("mp-{name}-lb-0");
    let handler = format!("mp-{name}-handler-0");
    let lb_cmd = block_on(docker.inspect_container(&lb, None))
        .expect("inspect the lb")
        .config
        .and_then(|c| c.cmd)
        .expect("the lb's command");
    assert_eq!(lb_cmd[1..].join(" "), planned_lb, "dry run vs. what runs");
    let mut before = containers(&docker, &name);
    assert_eq!(
        names(&before),
        [handler.clone(), lb.clone()],
        "{:?}",
        names(&before)
    );
    // mp-lb has checked the handler (it answers through the lb).
    assert!(
        eventually(Duration::from_secs(20), || servers(&mp, &name, 1).len()
            == 1),
        "the handler answers through mp-lb"
    );

    // Two re-deploys with a change: the handler is replaced new before old
    // under the alias mp-lb follows, the lb (and its published port) stays,
    // and no call of a steady stream fails.
    for version in ["VERSION=2", "VERSION=3"] {
        calls_during(&name, || run(&deploy(&["--env", version])));
        let after = containers(&docker, &name);
        assert_eq!(names(&after), [handler.clone(), lb.clone()]);
        assert_eq!(
            id_named(&after, &lb),
            id_named(&before, &lb),
            "the lb was kept"
        );
        assert_ne!(
            id_named(&after, &handler),
            id_named(&before, &handler),
            "the handler was replaced"
        );
        let env = block_on(docker.inspect_container(&handler, None))
            .expect("inspect the handler")
            .config
            .and_then(|c| c.env)
            .unwrap_or_default();
        assert!(env.iter().any(|e| e == version), "{env:?}");
        before = after;
    }
    let seen = servers(&mp, &name, 3);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        [&format!("{handler}:8080")],
        "{seen:?}"
    );
    mp.ok(&["delete", &name, "--runner", "docker"]);
    assert_gone(&docker, &name);
}

#[test]
fn bad_input_gets_a_clear_error_and_leaves_nothing() {
    let Some(docker) = engine("bad-input") else {
        return;
    };
    let mp = Mp::new();
    let hello = program("hello");
    let hello = hello.to_str().unwrap();

    // An image that is not on the engine (nothing can be pulled).
    let name = unique("noimage");
    let err = mp.fails(&[
        "deploy",
        "--runner",
        "docker",
        "--pattern",
        "service",
        "--name",
        &name,
        "--image",
        "--handler",
        "mp-no-such-image:1",
    ]);
    assert!(
        err.contains("mp-no-such-image:1") && err.contains("not on this Docker engine"),
        "{err}"
    );
    assert_gone(&docker, &name);

    // A front port that is taken.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().unwrap().port().to_string();
    let name = unique("porttaken");
    let err = mp.fails(&[
        "deploy",
        "--runner",
        "docker",
        "--pattern",
        "spread",
        "--name",
        &name,
        "--replicas",
        "2",
        "--handler",
        hello,
        "--port",
        &port,
    ]);
    assert!(
        err.contains(&format!("port {port} is already in use")),
        "{err}"
    );
    assert_gone(&docker, &name);
    drop(taken);

    // A name Docker would refuse.
    let err = mp.fails(&[
        "deploy",
        "--runner",
        "docker",
        "--pattern",
        "service",
        "--name",
        "Bad/Name!",
        "--handler",
        hello,
    ]);
    assert!(err.contains("invalid service name"), "{err}");
    assert!(names(&containers(&docker, "Bad/Name!")).is_empty());

    // A command that is not a binary mp can package.
    let name = unique("python");
    let err = mp.fails(&[
        "deploy",
        "--runner",
        "docker",
        "--pattern",
        "service",
        "--name",
        &name,
        "--handler",
        "python3 examples/python/leaf.py",
    ]);
    assert!(err.contains("image"), "says to use an image: {err}");
    assert_gone(&docker, &name);

    // A handler that exits at once: its exit is reported, nothing is left.
    let name = unique("exits");
    let exits = mp_testkit::which("false").expect("false(1) is installed");
    let err = mp.fails(&[
        "deploy",
        "--runner",
        "docker",
        "--pattern",
        "spread",
        "--name",
        &name,
        "--replicas",
        "2",
        "--handler",
        exits.to_str().unwrap(),
    ]);
    assert!(err.contains("exit"), "{err}");
    assert_gone(&docker, &name);
}

#[test]
fn no_engine_is_one_clear_line() {
    // Needs no engine: that is the point.
    let out = output_within(
        Mp::command(&[
            "deploy",
            "--runner",
            "docker",
            "--pattern",
            "service",
            "--name",
            "dt-noengine",
            "--handler",
            "/bin/true",
        ])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock")
            && lines[0].contains("DOCKER_HOST"),
        "{stderr}"
    );
}

#[test]
fn images_are_built_once_per_content_and_pruned_on_request() {
    let Some(docker) = engine("images") else {
        return;
    };
    let mp = Mp::new();
    // A binary of its own, so its image belongs to this test alone.
    let dir = tempfile::tempdir().expect("temp dir");
    let own = dir.path().join(format!("hello-img-{}", std::process::id()));
    std::fs::copy(program("hello"), &own).expect("copy hello");
    let repository = image::repository_for(own.file_name().unwrap().to_str().unwrap());
    let name = unique("images");
    let deploy = || {
        let out = mp.run(&[
            "deploy",
            "--runner",
            "docker",
            "--pattern",
            "service",
            "--name",
            &name,
            "--handler",
            own.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let tags = || -> Vec<String> {
        let images =
            block_on(docker.list_images(None::<bollard::query_parameters::ListImagesOptions>))
                .expect("list images");
        images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .filter(|t| t.starts_with(&format!("{repository}:")))
            .collect()
    };
    let first = deploy();
    assert!(
        first.contains(&format!("building image {repository}:")),
        "{first}"
    );
    assert_eq!(tags().len(), 1, "{:?}", tags());
    // Unchanged binary: found by content, nothing built, nothing replaced.
    let before = containers(&docker, &name);
    let second = deploy();
    assert!(!second.contains("building image"), "{second}");
    let after = containers(&docker, &name);
    assert_eq!(after.len(), 2, "{:?}", names(&after));
    for part in ["handler", "lb"] {
        let n = format!("mp-{name}-{part}-0");
        assert!(id_named(&before, &n).is_some(), "{n}");
        assert_eq!(
            id_named(&after, &n),
            id_named(&before, &n),
            "an unchanged part is kept: {n}"
        );
    }
    assert_eq!(servers(&mp, &name, 1).len(), 1);

    let out = mp.ok(&["delete", &name, "--runner", "docker", "--prune"]);
    assert!(out.contains("deleted"), "{out}");
    assert_gone(&docker, &name);
    assert!(tags().is_empty(), "--prune removed {:?}", tags());
}

/// Removes an image when dropped.
struct ImageGuard<'a>(&'a Docker, String);

impl Drop for ImageGuard<'_> {
    fn drop(&mut self) {
        let options = bollard::query_parameters::RemoveImageOptionsBuilder::default()
            .force(true)
            .build();
        let _ = block_on(self.0.remove_image(&self.1, Some(options), None));
    }
}

#[test]
fn a_user_image_runs_as_given_and_is_never_pruned() {
    let Some(docker) = engine("user-image") else {
        return;
    };
    // A user's image with its own entrypoint, built here FROM mp's hello
    // image (nothing can be pulled).
    let hello = std::fs::canonicalize(program("hello")).expect("hello");
    let sources = image::Sources::for_binaries(&[hello]).expect("sources");
    let base = block_on(image::ensure_image(
        &docker,
        &image::repository_for("hello"),
        sources,
        &mut |_| {},
    ))
    .expect("hello image");
    let user = format!("dt-user-hello-{}:1", std::process::id());
    let _guard = ImageGuard(&docker, user.clone());
    let dockerfile = format!("FROM {base}\nENTRYPOINT [\"/usr/local/bin/hello\"]\n");
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())
        .expect("tar");
    let context = tar.into_inner().expect("tar");
    let options = bollard::query_parameters::BuildImageOptionsBuilder::default()
        .t(&user)
        .rm(true)
        .build();
    block_on(async {
        use futures::StreamExt;
        let mut build = docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(step) = build.next().await {
            step.expect("build the user image");
        }
    });

    let mp = Mp::new();
    let name = unique("userimage");
    mp.ok(&[
        "deploy",
        "--runner",
        "docker",
        "--pattern",
        "service",
        "--name",
        &name,
        "--image",
        "--handler",
        &user,
    ]);
    let cs = containers(&docker, &name);
    assert_eq!(cs.len(), 2, "{:?}", names(&cs));
    let handler = cs
        .iter()
        .find(|c| id_named(&cs, &format!("mp-{name}-handler-0")) == c.id)
        .expect("the handler container");
    assert_eq!(handler.image.as_deref(), Some(user.as_str()));
    assert_eq!(servers(&mp, &name, 2).len(), 1);

    mp.ok(&["delete", &name, "--runner", "docker", "--prune"]);
    assert_gone(&docker, &name);
    assert!(
        block_on(docker.inspect_image(&user)).is_ok(),
        "--prune keeps the user's image"
    );
}
