//! End to end: the built `mp` binary deploys real handler processes (the
//! `hello` and histogram examples, the Python leaf and merger) behind the real
//! mp-lb and mp-gather with the local runner, and calls, lists, follows,
//! updates and deletes them.
//!
//! Every test has its own state directory (`MP_STATE_DIR`), so tests never see
//! each other's services, and an [`Mp`] guard that deletes what the test
//! deployed even when the test fails.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mp_testkit::{bin, example, free_port, output_within, repo_root, ChildGuard};
use serde_json::Value;

/// The `mp` binary with a private state directory; deletes what was deployed
/// when dropped.
struct Mp {
    state: tempfile::TempDir,
    deployed: std::sync::Mutex<Vec<String>>,
}

impl Mp {
    fn new() -> Mp {
        Mp {
            state: tempfile::tempdir().expect("temp dir"),
            deployed: Default::default(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("mp"));
        cmd.args(args)
            .env("MP_STATE_DIR", self.state.path())
            .env_remove("MP_RUNNER")
            .current_dir(repo_root());
        cmd
    }

    /// Runs `mp args...` (at most 90 s).
    fn run(&self, args: &[&str]) -> Output {
        if args.first() == Some(&"deploy") {
            let mut it = args.iter();
            while let Some(a) = it.next() {
                if *a == "--name" {
                    let name = it.next().expect("a name after --name").to_string();
                    self.deployed.lock().unwrap().push(name);
                }
            }
        }
        output_within(&mut self.command(args), Duration::from_secs(90))
    }

    /// Runs `mp args...` and returns its stdout; panics with its stderr on failure.
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

    /// Runs `mp args...`, expects it to fail, and returns its error: the
    /// last line of stderr (progress lines may come before it), the only one
    /// that starts with `mp: `.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(
            !out.status.success(),
            "mp {args:?} succeeded but should fail:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = stderr.lines().last().unwrap_or_default().to_string();
        assert!(err.starts_with("mp: "), "mp {args:?}: {stderr}");
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("mp")).count(),
            1,
            "mp {args:?}: more than one error line:\n{stderr}"
        );
        err
    }

    /// Calls the service with the default body and returns the reply's JSON.
    fn call(&self, name: &str) -> Value {
        let out = self.ok(&["call", name]);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("reply {out:?}: {e}"))
    }

    /// `mp ps NAME` as rows of (part, state, restarts, address, pid).
    fn parts(&self, name: &str) -> Vec<PartRow> {
        self.ok(&["ps", name])
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with("note: "))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                PartRow {
                    name: f[0].to_string(),
                    state: f[2].to_string(),
                    restarts: f[3].parse().unwrap(),
                    address: f[4].to_string(),
                    pid: f[5].parse().ok(),
                }
            })
            .collect()
    }

    fn services_dir(&self) -> PathBuf {
        self.state.path().join("services")
    }

    /// The supervisor's pid of a service, from its status file.
    fn supervisor_pid(&self, name: &str) -> u32 {
        let path = self.services_dir().join(name).join("status.json");
        let status: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        status["supervisor"].as_u64().unwrap() as u32
    }

    /// Waits until `cond` holds on `mp ps NAME`, at most `limit`.
    fn wait_parts(
        &self,
        name: &str,
        limit: Duration,
        cond: impl Fn(&[PartRow]) -> bool,
    ) -> Vec<PartRow> {
        let deadline = Instant::now() + limit;
        loop {
            let rows = self.parts(name);
            if cond(&rows) {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "mp ps {name} did not reach the state in {limit:?}: {rows:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Mp {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.deployed.lock().unwrap());
        for name in names {
            let _ = output_within(
                &mut self.command(&["delete", &name]),
                Duration::from_secs(60),
            );
        }
    }
}

#[derive(Debug, Clone)]
struct PartRow {
    name: String,
    state: String,
    restarts: u32,
    address: String,
    pid: Option<u32>,
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next()),
            Some("Z")
        ),
        Err(_) => false,
    }
}

fn port_free(addr: &str) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// Checks a histogram reply: 10 bins counting the 1,000 samples of 10
/// leaves (the leaves draw inside the histogram's range, so none is dropped).
fn assert_histogram_of_1000(v: &Value) {
    let bins = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    assert_eq!(bins.len(), 10, "{v}");
    let sum: u64 = bins.iter().map(|b| b.as_u64().unwrap()).sum();
    assert_eq!(sum, 1000, "the bins sum to {sum}: {v}");
    // The middle bins (80..120) hold most of a Gaussian around 100.
    assert!(
        bins[4].as_u64().unwrap() + bins[5].as_u64().unwrap() > 400,
        "{v}"
    );
}

#[test]
fn spread_3_hello_calls_reach_3_servers_3_times_each() {
    let mp = Mp::new();
    let out = mp.ok(&[
        "deploy",
        "--pattern",
        "spread",
        "--name",
        "hello",
        "--replicas",
        "3",
        "--handler",
        path(&example("hello")),
        "--timeout",
        "60",
    ]);
    assert!(
        out.starts_with("deployed hello (local): 4 processes, front at 127.0.0.1:"),
        "{out}"
    );

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..9 {
        let reply = mp.call("hello");
        assert_eq!(reply["request"], serde_json::json!({"foo": "bar"}));
        *seen
            .entry(reply["server"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n == 3), "{seen:?}");
}

#[test]
fn scatter_10_histogram_sums_to_1000_and_ps_from_another_process_sees_it() {
    let mp = Mp::new();
    let out = mp.ok(&[
        "deploy",
        "--pattern",
        "scatter",
        "--name",
        "histogram-service",
        "--shards",
        "10",
        "--leaf",
        path(&example("histogram-leaf")),
        "--merge",
        path(&example("histogram-merge")),
        "--timeout",
        "60",
    ]);
    assert!(out.contains("12 processes"), "{out}");
    assert_histogram_of_1000(&mp.call("histogram-service"));

    // Every `mp` run is its own process: this one only has the state
    // directory. Health is measured live, so allow a few rounds on a loaded
    // machine.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ps = mp.ok(&["ps", "--runner", "local"]);
        let row = ps
            .lines()
            .find(|l| l.starts_with("histogram-service "))
            .unwrap_or_else(|| panic!("{ps}"));
        let f: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&f[1..3], ["scatter", "local"], "{ps}");
        assert_eq!(f[4], "0", "no restarts: {ps}");
        if f[3] == "12/12" && f.last() == Some(&"healthy") {
            break;
        }
        assert!(Instant::now() < deadline, "not 12/12 healthy: {ps}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let parts = mp.parts("histogram-service");
    assert_eq!(parts.len(), 12);
    assert!(parts.iter().all(|p| p.pid.is_some()), "{parts:?}");
}

#[test]
fn scatter_with_the_python_leaf_and_merger() {
    let mp = Mp::new();
    mp.ok(&[
        "deploy",
        "--pattern",
        "scatter",
        "--name",
        "py-histogram",
        "--shards",
        "10",
        "--leaf",
        "python3 examples/python/leaf.py",
        "--merge",
        "python3 examples/python/merge.py",
        "--timeout",
        "90",
    ]);
    assert_histogram_of_1000(&mp.call("py-histogram"));
}

#[test]
fn mp_toml_deploys_two_services_side_by_side() {
    let mp = Mp::new();
    let file = mp.state.path().join("mp.toml");
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"greeter\"\npattern = \"spread\"\nreplicas = 2\nhandler = {:?}\n\n\
             [[service]]\nname = \"histogram\"\npattern = \"scatter\"\nshards = 10\nleaf = {:?}\nmerge = {:?}\n",
            path(&example("hello")),
            path(&example("histogram-leaf")),
            path(&example("histogram-merge")),
        ),
    )
    .unwrap();
    mp.deployed
        .lock()
        .unwrap()
        .extend(["greeter".to_string(), "histogram".to_string()]);
    let out = mp.ok(&["deploy", "-f", path(&file), "--timeout", "60"]);
    assert!(
        out.contains("deployed greeter (local): 3 processes"),
        "{out}"
    );
    assert!(
        out.contains("deployed histogram (local): 12 processes"),
        "{out}"
    );

    let ps = mp.ok(&["ps", "--runner", "local"]);
    let fronts: Vec<&str> = ps
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(5).unwrap())
        .collect();
    assert_eq!(fronts.len(), 2, "{ps}");
    assert_ne!(fronts[0], fronts[1], "{ps}");
    assert!(mp.call("greeter")["server"].is_string());
    assert_histogram_of_1000(&mp.call("histogram"));

    // Deleting one leaves the other alone.
    mp.ok(&["delete", "greeter"]);
    assert_histogram_of_1000(&mp.call("histogram"));
    let ps = mp.ok(&["ps", "--runner", "local"]);
    assert!(!ps.contains("greeter") && ps.contains("histogram"), "{ps}");
}

#[test]
fn a_killed_handler_is_restarted_and_calls_succeed_again() {
    let mp = Mp::new();
    mp.ok(&[
        "deploy",
        "--pattern",
        "service",
        "--name",
        "solo",
        "--handler",
        path(&example("hello")),
        "--timeout",
        "60",
    ]);
    mp.call("solo");
    let before = mp.parts("solo");
    let pid = before[0].pid.expect("a pid");
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());

    // The handler is back, and the mp-lb in front of it (a `service`'s
    // front) has seen it answer its health check again.
    let after = mp.wait_parts("solo", Duration::from_secs(30), |rows| {
        rows[0].restarts == 1
            && rows[0].pid != Some(pid)
            && rows.iter().all(|r| r.state == "healthy")
    });
    assert!(!alive(pid));
    assert_eq!(
        after[0].address, before[0].address,
        "restarted on the same port"
    );
    assert_eq!(
        mp.call("solo")["request"],
        serde_json::json!({"foo": "bar"})
    );
    let logs = mp.ok(&["logs", "solo"]);
    assert!(logs.contains("killed by signal 9"), "{logs}");
}

#[test]
fn a_part_that_keeps_crashing_shows_as_a_crash_loop() {
    let mp = Mp::new();
    // The handler serves for a moment, then the test makes it crash at once
    // on every restart (by removing the script it runs).
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("handler.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ -f {0} ] || exit 7\nexec {1}\n",
            dir.path().join("ok").display(),
            path(&example("hello"))
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("ok"), "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    mp.ok(&[
        "deploy",
        "--pattern",
        "service",
        "--name",
        "crashy",
        "--handler",
        path(&script),
        "--timeout",
        "60",
    ]);
    let pid = mp.parts("crashy")[0].pid.unwrap();
    std::fs::remove_file(dir.path().join("ok")).unwrap();
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    mp.wait_parts("crashy", Duration::from_secs(30), |rows| {
        rows[0].state == "crash-loop" && rows[0].restarts >= 3
    });
    let ps = mp.ok(&["ps", "--runner", "local"]);
    assert!(ps.contains("handler crash-loop"), "{ps}");
    let detail = mp.ok(&["ps", "crashy"]);
    assert!(detail.contains("exit status 7"), "{detail}");
}

/// `mp.v1.Handler/Handle` calls to a front, one after the other (20 ms
/// apart), from a thread of their own until stopped.
struct CallStream {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    caller: std::thread::JoinHandle<()>,
}

impl CallStream {
    fn start(front: &str) -> CallStream {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let caller = {
            let (stop, ok, failures, front) = (
                stop.clone(),
                ok.clone(),
                failures.clone(),
                front.to_string(),
            );
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    // Bounded in count too: 20 ms apart, this is minutes.
                    for _ in 0..20_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let body = serde_json::json!({"n": 1});
                        match mp_cli::health::call_json(&front, body, Duration::from_secs(10)).await
                        {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                failures.lock().unwrap().push(e.to_string());
                                0
                            }
                        };
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
        };
        CallStream {
            stop,
            ok,
            failures,
            caller,
        }
    }

    /// Stops the stream; asserts that no call failed and at least `min`
    /// were answered.
    fn finish_without_failures(self, min: usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.caller.join().unwrap();
        let failures = self.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{} calls failed during the update: {failures:?}",
            failures.len()
        );
        let ok = self.ok.load(Ordering::Relaxed);
        assert!(ok >= min, "only {ok} calls");
    }
}

#[test]
fn redeploy_updates_with_no_failed_call_during_a_steady_stream() {
    let mp = Mp::new();
    let hello = example("hello");
    let deploy = |replicas: &str| {
        mp.ok(&[
            "deploy",
            "--pattern",
            "spread",
            "--name",
            "rolling",
            "--replicas",
            replicas,
            "--handler",
            path(&hello),
            "--timeout",
            "60",
        ])
    };
    deploy("3");
    let front = mp
        .ok(&["ps"])
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(5)
        .unwrap()
        .to_string();
    let before: Vec<u32> = mp.parts("rolling").iter().filter_map(|p| p.pid).collect();

    // A steady stream of calls from this process while the update runs.
    let stream = CallStream::start(&front);
    std::thread::sleep(Duration::from_millis(500));
    let out = deploy("2");
    std::thread::sleep(Duration::from_millis(500));
    stream.finish_without_failures(20);

    assert!(
        out.starts_with("updated rolling (local): 3 processes"),
        "{out}"
    );

    // The new replicas serve; the old ones are gone; the front stayed.
    let parts = mp.parts("rolling");
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["replica-0", "replica-1", "lb"]);
    let lb_pid = parts[2].pid;
    assert!(
        before.contains(&lb_pid.unwrap()),
        "the same mp-lb keeps serving"
    );
    for old in before.iter().filter(|p| Some(**p) != lb_pid) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(*old) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(*old), "old replica {old} still runs");
    }
    let servers: std::collections::BTreeSet<String> = (0..4)
        .map(|_| mp.call("rolling")["server"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(servers.len(), 2, "{servers:?}");
}

#[test]
fn redeploying_a_service_keeps_its_port_and_fails_no_call_during_a_steady_stream() {
    let mp = Mp::new();
    let hello = example("hello");
    let deploy = || {
        mp.ok(&[
            "deploy",
            "--pattern",
            "service",
            "--name",
            "single",
            "--handler",
            path(&hello),
            "--timeout",
            "60",
        ])
    };
    let out = deploy();
    let front = out.trim().rsplit(' ').next().unwrap().to_string();
    // The handler behind an mp-lb of one, which owns the front port.
    let before = mp.parts("single");
    let names: Vec<&str> = before.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["handler", "lb"]);
    assert_eq!(before[1].address, front);
    let old_server = mp.call("single")["server"].as_str().unwrap().to_string();
    assert!(old_server.ends_with(&before[0].address.rsplit(':').next().unwrap().to_string()));

    let stream = CallStream::start(&front);
    std::thread::sleep(Duration::from_millis(500));
    let out = deploy();
    std::thread::sleep(Duration::from_millis(500));
    stream.finish_without_failures(20);
    assert!(
        out.starts_with(&format!(
            "updated single (local): 2 processes, front at {front}"
        )),
        "{out}"
    );

    // A new handler serves behind the same mp-lb; the old one is gone.
    let after = mp.parts("single");
    assert_eq!(after[1].pid, before[1].pid, "the same mp-lb keeps serving");
    assert_ne!(after[0].pid, before[0].pid);
    let old_pid = before[0].pid.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(old_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(old_pid), "the old handler still runs");
    let new_server = mp.call("single")["server"].as_str().unwrap().to_string();
    assert_ne!(new_server, old_server);
}

#[test]
fn delete_stops_every_process_and_frees_every_port() {
    let mp = Mp::new();
    mp.ok(&[
        "deploy",
        "--pattern",
        "scatter",
        "--name",
        "doomed",
        "--shards",
        "3",
        "--leaf",
        path(&example("histogram-leaf")),
        "--merge",
        path(&example("histogram-merge")),
        "--timeout",
        "60",
    ]);
    let parts = mp.parts("doomed");
    assert_eq!(parts.len(), 5);
    let supervisor = mp.supervisor_pid("doomed");
    let pids: Vec<u32> = parts
        .iter()
        .filter_map(|p| p.pid)
        .chain([supervisor])
        .collect();
    assert_eq!(pids.len(), 6);
    assert!(pids.iter().all(|p| alive(*p)));

    let out = mp.ok(&["delete", "doomed"]);
    assert_eq!(out.trim(), "deleted doomed");
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} still runs after delete");
    }
    for p in &parts {
        assert!(
            port_free(&p.address),
            "{} still taken after delete",
            p.address
        );
    }
    assert!(!mp.services_dir().join("doomed").exists());
    // Deleting what is gone is not an error.
    assert_eq!(
        mp.ok(&["delete", "doomed"]).trim(),
        "nothing to delete: no service named doomed"
    );
    let ps = mp.run(&["ps", "--runner", "local"]);
    assert!(String::from_utf8_lossy(&ps.stdout).is_empty());
}

#[test]
fn a_killed_supervisor_leaves_its_parts_running_ps_says_so_and_delete_stops_them() {
    let mp = Mp::new();
    mp.ok(&[
        "deploy",
        "--pattern",
        "spread",
        "--name",
        "orphans",
        "--replicas",
        "2",
        "--handler",
        path(&example("hello")),
    ]);
    let before = mp.parts("orphans");
    let pids: Vec<u32> = before.iter().filter_map(|p| p.pid).collect();
    assert_eq!(pids.len(), 3, "{before:?}");
    let supervisor = mp.supervisor_pid("orphans");
    let killed = Command::new("kill")
        .args(["-KILL", &supervisor.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(supervisor) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(supervisor), "the supervisor survived SIGKILL");

    // The parts still run and serve, and `mp ps` says so, with a note.
    assert!(pids.iter().all(|p| alive(*p)));
    assert!(mp.call("orphans")["server"].is_string());
    let ps = mp.ok(&["ps"]);
    let line = ps.lines().find(|l| l.starts_with("orphans")).unwrap();
    assert!(line.contains(" 3/3 "), "{ps}");
    assert!(line.contains("healthy (see the note below)"), "{ps}");
    let note = ps
        .lines()
        .find(|l| l.starts_with("note: "))
        .unwrap_or_else(|| panic!("no note in:\n{ps}"));
    for words in [
        format!("the supervisor of orphans (pid {supervisor}) is gone"),
        "3 of 3 parts still run, but nothing restarts them".to_string(),
        "`mp deploy`".to_string(),
        "`mp delete orphans`".to_string(),
    ] {
        assert!(note.contains(&words), "{words:?} not in {note:?}");
    }
    let rows = mp.parts("orphans");
    assert!(rows.iter().all(|r| r.state == "healthy"), "{rows:?}");
    assert_eq!(
        rows.iter().filter_map(|r| r.pid).collect::<Vec<_>>(),
        pids,
        "the same processes"
    );
    assert!(mp.ok(&["ps", "orphans"]).contains("note: the supervisor"));

    // A part that dies now stays dead, and `mp ps` says that too.
    let replica = rows.iter().find(|r| r.name == "replica-0").unwrap();
    let killed = Command::new("kill")
        .args(["-KILL", &replica.pid.unwrap().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    mp.wait_parts("orphans", Duration::from_secs(10), |rows| {
        rows.iter()
            .any(|r| r.name == "replica-0" && r.state == "stopped")
    });
    assert!(mp.ok(&["ps"]).contains("2 of 3 parts still run"));

    // `mp delete` stops what is left and frees the ports.
    assert_eq!(mp.ok(&["delete", "orphans"]).trim(), "deleted orphans");
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} still runs after delete");
    }
    for r in &rows {
        assert!(port_free(&r.address), "{} still taken", r.address);
    }
}

#[test]
fn logs_are_prefixed_by_part_filtered_by_role_and_followed() {
    let mp = Mp::new();
    mp.ok(&[
        "deploy",
        "--pattern",
        "scatter",
        "--name",
        "talky",
        "--shards",
        "2",
        "--leaf",
        path(&example("histogram-leaf")),
        "--reducer",
        "json-array",
        "--timeout",
        "60",
    ]);
    // Each leaf answers 100 samples; the json-array reducer gathers them all.
    let reply = mp.call("talky");
    let leaves = reply.as_array().unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(leaves.len(), 2, "{reply}");
    assert!(
        leaves.iter().all(|l| l.as_array().unwrap().len() == 100),
        "{reply}"
    );

    let all = mp.ok(&["logs", "talky"]);
    for part in ["leaf-0 ", "leaf-1 ", "gather ", "supervisor "] {
        assert!(
            all.lines().any(|l| l.starts_with(part)),
            "no {part} line in:\n{all}"
        );
    }
    let leaves = mp.ok(&["logs", "talky", "--role", "leaf"]);
    assert!(!leaves.is_empty());
    assert!(leaves.lines().all(|l| l.starts_with("leaf-")), "{leaves}");

    // --follow prints what comes later: kill a leaf, and the supervisor's
    // restart line (and the new leaf's start lines) show up.
    let mut follow = ChildGuard::spawn(
        mp.command(&["logs", "talky", "--follow"])
            .stdout(Stdio::piped()),
    );
    let stdout = follow.inner().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let pid = mp.parts("talky")[0].pid.unwrap();
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if line.starts_with("supervisor") && line.contains("restarting") {
                return;
            }
            got.push(line);
        }
    }
    panic!(
        "no restart line followed within 20 s; got:\n{}",
        got.join("\n")
    );
}

#[test]
fn bad_input_gets_a_one_line_error_and_deploys_nothing() {
    let mp = Mp::new();
    let hello = example("hello");
    let hello = path(&hello);

    let e = mp.fails(&[
        "deploy",
        "--pattern",
        "ring",
        "--name",
        "bad",
        "--handler",
        hello,
    ]);
    assert!(
        e.contains("'ring'") && e.contains("service, spread, scatter"),
        "{e}"
    );

    let e = mp.fails(&[
        "deploy",
        "--pattern",
        "spread",
        "--name",
        "bad",
        "--replicas",
        "2",
        "--handler",
        "./no/such/handler",
    ]);
    assert!(e.contains("`./no/such/handler` does not exist"), "{e}");
    let e = mp.fails(&[
        "deploy",
        "--pattern",
        "service",
        "--name",
        "bad",
        "--handler",
        "no-such-program-anywhere",
    ]);
    assert!(e.contains("not found on PATH"), "{e}");

    let e = mp.fails(&[
        "deploy",
        "--pattern",
        "spread",
        "--name",
        "bad",
        "--replicas",
        "2",
        "--handler",
        "sh -c 'echo mp-boom >&2; exit 3'",
        "--timeout",
        "60",
    ]);
    assert!(e.contains("exited at once (exit status 3): mp-boom"), "{e}");
    assert!(e.contains("mp logs bad --role replica"), "{e}");

    // A handler that runs but never serves: the deploy gives up at the bound.
    let e = mp.fails(&[
        "deploy",
        "--pattern",
        "service",
        "--name",
        "bad",
        "--handler",
        "sleep 37.25",
        "--timeout",
        "2",
    ]);
    assert!(
        e.contains("handler did not become healthy within 2s"),
        "{e}"
    );

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let e = mp.fails(&[
        "deploy",
        "--pattern",
        "service",
        "--name",
        "bad",
        "--handler",
        hello,
        "--port",
        &port,
    ]);
    assert!(e.contains(&format!("port {port} is already in use")), "{e}");

    let file = mp.state.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[service]]\nname = \"bad\"\npattern = \"spread\"\nhandler = \"x\"\n",
    )
    .unwrap();
    let e = mp.fails(&["deploy", "-f", path(&file)]);
    assert!(e.contains("needs `replicas`"), "{e}");
    std::fs::write(&file, "[[service]\n").unwrap();
    let e = mp.fails(&["deploy", "-f", path(&file)]);
    assert!(e.contains("invalid") && e.contains("line 1"), "{e}");

    let e = mp.fails(&["call", "nobody"]);
    assert_eq!(
        e,
        "mp: no service named `nobody` is deployed (`mp ps` lists them)"
    );
    let e = mp.fails(&["logs", "nobody"]);
    assert!(e.contains("no service named `nobody`"), "{e}");

    // Nothing of any of these was left behind.
    assert!(!mp.services_dir().join("bad").exists());
    assert!(String::from_utf8_lossy(&mp.run(&["ps", "--runner", "local"]).stdout).is_empty());
    for pattern in ["echo mp-boom", "sleep 37.25"] {
        let leftovers = Command::new("pgrep")
            .args(["-f", pattern])
            .output()
            .unwrap();
        let pids = String::from_utf8_lossy(&leftovers.stdout);
        assert!(pids.is_empty(), "`{pattern}` still runs: {pids}");
    }
}

#[test]
fn dry_run_prints_the_plan_and_starts_nothing() {
    let mp = Mp::new();
    let out = mp.ok(&[
        "deploy",
        "--pattern",
        "scatter",
        "--name",
        "plan-only",
        "--shards",
        "2",
        "--leaf",
        "python3 examples/python/leaf.py",
        "--reducer",
        "json-array",
        "--dry-run",
    ]);
    assert!(
        out.starts_with("service plan-only (scatter, 3 parts, front gather)"),
        "{out}"
    );
    assert!(
        out.contains("MP_SHARD=1") && out.contains("MP_SHARDS=2"),
        "{out}"
    );
    assert!(out.contains("mp-gather --listen 127.0.0.1:"), "{out}");
    assert!(!mp.services_dir().join("plan-only").exists());
}

/// The command line of process `pid`, from /proc.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_else(|e| panic!("cmdline of {pid}: {e}"))
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

/// `args` with the value after `--admin` replaced (each plan picks a fresh
/// admin port, so a dry run cannot know the one a later deploy gets).
fn admin_masked(args: &[String]) -> Vec<String> {
    let mut out = args.to_vec();
    if let Some(i) = out.iter().position(|a| a == "--admin") {
        out[i + 1] = "ADMIN".into();
    }
    out
}

/// Deploys `deploy` (which sets the front's `--port`) after its dry run and
/// checks that the front `front` (mp-lb or mp-gather) runs exactly the
/// command the dry run showed, and that the file the dry run names holds
/// what it said, with the real parts' addresses.
fn dry_run_matches_the_running_front(mp: &Mp, name: &str, deploy: &[&str], front: &str) {
    let plan = mp.ok(&[deploy, &["--dry-run"]].concat());
    assert!(
        !mp.services_dir().join(name).exists(),
        "a dry run starts nothing"
    );
    let planned: Vec<String> = plan
        .lines()
        .find_map(|l| {
            l.split_once(&format!(" {front} "))
                .map(|(_, a)| a.to_string())
        })
        .unwrap_or_else(|| panic!("no {front} line in the dry run:\n{plan}"))
        .split(' ')
        .map(String::from)
        .collect();
    let file_flag = if front == "mp-lb" {
        "--backends-file"
    } else {
        "--shards-file"
    };
    let file = planned
        .iter()
        .position(|a| a == file_flag)
        .map(|i| planned[i + 1].clone())
        .unwrap_or_else(|| panic!("the dry run's {front} follows no file: {planned:?}"));
    assert!(
        !planned
            .iter()
            .any(|a| a == "--backend" || a == "--shard" || a == "--merge"),
        "{planned:?}"
    );
    // The dry run lists what the file will hold, after naming it.
    let listed: Vec<&str> = plan
        .lines()
        .skip_while(|l| !l.contains(&format!("{file} (written by mp) holds:")))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(str::trim)
        .collect();
    assert!(
        !listed.is_empty(),
        "the dry run does not show {file}:\n{plan}"
    );

    mp.ok(deploy);
    let rows = mp.parts(name);
    let role = if front == "mp-lb" { "lb" } else { "gather" };
    let pid = rows.iter().find(|r| r.name == role).unwrap().pid.unwrap();
    let running = cmdline(pid);
    assert!(running[0].ends_with(&format!("/{front}")), "{running:?}");
    assert_eq!(
        admin_masked(&running[1..]),
        admin_masked(&planned),
        "dry run vs. /proc/{pid}/cmdline"
    );
    // The file holds what the dry run listed, with the ports the deploy gave
    // the parts: one line per replica or shard (and the merger), in order.
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), listed.len(), "{text} vs {listed:?}");
    let want: Vec<String> = rows
        .iter()
        .filter(|r| r.name != role)
        .map(|r| match r.name.as_str() {
            "merge" => format!("merge {}", r.address),
            _ => r.address.clone(),
        })
        .collect();
    assert_eq!(lines, want, "{file}");
}

#[test]
fn dry_run_shows_the_exact_command_of_mp_lb_and_mp_gather() {
    let mp = Mp::new();
    let lb_port = free_port().to_string();
    let hello = example("hello");
    dry_run_matches_the_running_front(
        &mp,
        "exact-lb",
        &[
            "deploy",
            "--pattern",
            "spread",
            "--name",
            "exact-lb",
            "--replicas",
            "2",
            "--handler",
            path(&hello),
            "--port",
            &lb_port,
            "--timeout",
            "60",
        ],
        "mp-lb",
    );
    let gather_port = free_port().to_string();
    let leaf = example("histogram-leaf");
    let merge = example("histogram-merge");
    dry_run_matches_the_running_front(
        &mp,
        "exact-gather",
        &[
            "deploy",
            "--pattern",
            "scatter",
            "--name",
            "exact-gather",
            "--shards",
            "3",
            "--leaf",
            path(&leaf),
            "--merge",
            path(&merge),
            "--policy",
            "all",
            "--port",
            &gather_port,
            "--timeout",
            "60",
        ],
        "mp-gather",
    );
    assert_eq!(histogram_sum(&mp.call("exact-gather")), 300);
}

#[test]
fn topology_as_code_deploys_itself_serves_its_roles_and_deletes_itself() {
    let mp = Mp::new();
    mp.deployed
        .lock()
        .unwrap()
        .extend(["histogram-service".to_string(), "replicated".to_string()]);
    let program = |name: &str, args: &[&str]| {
        let mut cmd = Command::new(example(name));
        cmd.args(args)
            .env("MP_STATE_DIR", mp.state.path())
            .current_dir(repo_root());
        let out = output_within(&mut cmd, Duration::from_secs(90));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{name} {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };

    let out = program("histogram", &[]);
    assert!(
        out.starts_with("deployed histogram-service (local): 12 processes, front at 127.0.0.1:"),
        "{out}"
    );
    let reply: Value = serde_json::from_str(program("histogram", &["call"]).trim()).unwrap();
    assert_histogram_of_1000(&reply);
    // The same service, seen and called by `mp`.
    assert_histogram_of_1000(&mp.call("histogram-service"));
    // Health is measured live by `mp ps`; on a loaded machine a check can
    // miss its bound once, so allow a few rounds.
    mp.wait_parts("histogram-service", Duration::from_secs(20), |rows| {
        rows.len() == 12 && rows.iter().all(|p| p.state == "healthy")
    });

    program("replicated", &[]);
    let froms: std::collections::BTreeSet<String> = (0..3)
        .map(|_| mp.call("replicated")["from"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        froms.into_iter().collect::<Vec<_>>(),
        [
            "replica 0 of replicated",
            "replica 1 of replicated",
            "replica 2 of replicated"
        ]
    );

    assert_eq!(
        program("histogram", &["delete"]).trim(),
        "deleted histogram-service"
    );
    assert_eq!(
        program("replicated", &["delete"]).trim(),
        "deleted replicated"
    );
    assert!(String::from_utf8_lossy(&mp.run(&["ps", "--runner", "local"]).stdout).is_empty());
}

#[test]
fn a_missing_data_plane_binary_is_a_clear_error_before_anything_starts() {
    let mp = Mp::new();
    // An `mp` alone in a directory, with neither mp-lb nor mp-gather beside
    // it or on PATH.
    let lonely = tempfile::tempdir().unwrap();
    let bin_dir = lonely.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let copy = bin_dir.join("mp");
    std::fs::copy(bin("mp"), &copy).unwrap();
    let hello = example("hello");
    for (pattern, program, extra) in [
        (
            "spread",
            "mp-lb",
            ["--replicas", "2", "--handler", path(&hello)],
        ),
        (
            "scatter",
            "mp-gather",
            ["--shards", "2", "--leaf", path(&hello)],
        ),
    ] {
        let mut cmd = Command::new(&copy);
        cmd.args(["deploy", "--pattern", pattern, "--name", "nolb"])
            .args(extra)
            .env("MP_STATE_DIR", mp.state.path())
            .env("PATH", "/usr/bin:/bin")
            .env_remove("MP_BIN_DIR");
        let out = output_within(&mut cmd, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(!out.status.success());
        assert_eq!(
            err,
            format!(
                "mp: {program} not found next to {} nor on PATH: build it with `cargo build \
                 --release --bins` (or put it on PATH)",
                bin_dir.display()
            )
        );
        assert!(!mp.services_dir().join("nolb").exists());
    }
}

/// The histogram's bins of a reply, and their sum (100 samples per leaf).
fn histogram_sum(v: &Value) -> u64 {
    let bins = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    assert_eq!(bins.len(), 10, "{v}");
    bins.iter().map(|b| b.as_u64().unwrap()).sum()
}

#[test]
fn redeploying_a_scatter_replaces_its_leaves_and_keeps_its_front_port() {
    let mp = Mp::new();
    let leaf = example("histogram-leaf");
    let merge = example("histogram-merge");
    let deploy = |shards: &str| {
        mp.ok(&[
            "deploy",
            "--pattern",
            "scatter",
            "--name",
            "resharded",
            "--shards",
            shards,
            "--leaf",
            path(&leaf),
            "--merge",
            path(&merge),
            "--timeout",
            "60",
        ])
    };
    let first = deploy("2");
    let front = first.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(histogram_sum(&mp.call("resharded")), 200);
    let before = mp.parts("resharded");
    let gather_pid = before.iter().find(|p| p.name == "gather").unwrap().pid;
    let old: Vec<u32> = before
        .iter()
        .filter(|p| p.name != "gather")
        .filter_map(|p| p.pid)
        .collect();

    // A steady stream of calls to the front while the shards change under it.
    let stream = CallStream::start(&front);
    std::thread::sleep(Duration::from_millis(500));
    let second = deploy("3");
    std::thread::sleep(Duration::from_millis(500));
    stream.finish_without_failures(20);

    assert!(
        second.starts_with("updated resharded (local): 5 processes"),
        "{second}"
    );
    assert!(
        second.trim().ends_with(&front),
        "the front moved: {first} then {second}"
    );
    // The same mp-gather fans out to the 3 new leaves and the new merger.
    assert_eq!(histogram_sum(&mp.call("resharded")), 300);
    for pid in old {
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(pid), "old part {pid} still runs");
    }
    let parts = mp.parts("resharded");
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["leaf-0", "leaf-1", "leaf-2", "merge", "gather"]);
    assert_eq!(parts[4].pid, gather_pid, "the same mp-gather keeps serving");
    assert!(
        std::fs::read_to_string(mp.services_dir().join("resharded/gather.shards"))
            .unwrap()
            .contains("merge 127.0.0.1:"),
        "the shards file names the merger"
    );
    // Still the new topology after every old part is gone.
    assert_eq!(histogram_sum(&mp.call("resharded")), 300);
}

#[test]
fn redeploying_a_scatter_with_another_reducer_restarts_its_gather_on_the_new_leaves() {
    let mp = Mp::new();
    let leaf = example("histogram-leaf");
    let deploy = |shards: &str, reducer: &str| {
        mp.ok(&[
            "deploy",
            "--pattern",
            "scatter",
            "--name",
            "rereduced",
            "--shards",
            shards,
            "--leaf",
            path(&leaf),
            "--reducer",
            reducer,
            "--timeout",
            "60",
        ])
    };
    deploy("2", "json-array");
    assert_eq!(mp.call("rereduced").as_array().unwrap().len(), 2);
    let before = mp.parts("rereduced");
    let old: Vec<u32> = before.iter().filter_map(|p| p.pid).collect();

    // Another reducer is another mp-gather command line: a new gather on
    // the same port, which must find the new leaves in its shards file.
    let out = deploy("3", "first");
    assert!(
        out.starts_with("updated rereduced (local): 4 processes"),
        "{out}"
    );
    for pid in &old {
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(*pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(*pid), "old part {pid} still runs");
    }
    let shards =
        std::fs::read_to_string(mp.services_dir().join("rereduced/gather.shards")).unwrap();
    let lines: Vec<&str> = shards.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 3, "{shards}");
    // `first`: one leaf's reply, from a leaf that runs now.
    let reply = mp.call("rereduced");
    assert!(reply.is_array() || reply.is_object(), "{reply}");
    let gather = mp.parts("rereduced");
    let gather = gather.iter().find(|p| p.name == "gather").unwrap();
    assert!(
        !old.contains(&gather.pid.unwrap()),
        "the gather was not replaced"
    );
}
