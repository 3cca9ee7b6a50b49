//! Tests of the local runner's pure parts: addresses, mp-lb's arguments,
//! state paths.

use super::*;
use crate::topology::{PatternKind, Program, ServiceSpec, Topology};

fn spread(name: &str, port: Option<u16>) -> Topology {
    Topology::single(
        ServiceSpec {
            name: name.into(),
            pattern: PatternKind::Spread,
            replicas: Some(3),
            handler: Some(Program::Command(vec!["hello".into()])),
            port,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    )
}

#[test]
fn every_part_gets_its_own_free_loopback_port() {
    let dir = tempfile::tempdir().unwrap();
    let runner = LocalRunner::with_state_dir(dir.path());
    let plan = crate::ops::make_plan(&runner, &spread("hello", None)).unwrap();
    let mut ports = HashSet::new();
    for p in &plan.services[0].parts {
        assert_eq!(p.endpoint.listen.host, "127.0.0.1");
        assert!(ports.insert(p.endpoint.listen.port), "port reused: {p:?}");
        if let Some(a) = &p.endpoint.admin {
            assert!(ports.insert(a.port), "admin port reused: {p:?}");
        }
    }
    assert_eq!(ports.len(), 5, "3 replicas, the lb and its admin port");
    let plan = crate::ops::make_plan(&runner, &spread("hello", Some(7777))).unwrap();
    assert_eq!(plan.services[0].front_part().endpoint.listen.port, 7777);
}

#[test]
fn an_updated_service_keeps_its_front_port() {
    let dir = tempfile::tempdir().unwrap();
    let runner = LocalRunner::with_state_dir(dir.path());
    let plan = crate::ops::make_plan(&runner, &spread("hello", Some(7123))).unwrap();
    let sp = plan.services[0].clone();
    ServiceDir::new(dir.path(), "hello")
        .write_desired(&Desired {
            generation: 1,
            front: "127.0.0.1:7123".into(),
            cwd: dir.path().into(),
            instances: Vec::new(),
            plan: sp,
        })
        .unwrap();
    // No --port this time: the running front's port is kept.
    let again = crate::ops::make_plan(&runner, &spread("hello", None)).unwrap();
    assert_eq!(again.services[0].front_part().endpoint.listen.port, 7123);
    assert_eq!(state::service_names(dir.path()).unwrap(), ["hello"]);
}

#[test]
fn mp_lb_follows_a_file_instead_of_backend_flags() {
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:1",
        "--backend",
        "127.0.0.1:2",
        "--backend",
        "127.0.0.1:3",
        "--admin",
        "127.0.0.1:4",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        lb_args_with_file(&args, Path::new("/s/lb.backends")).join(" "),
        "--listen 127.0.0.1:1 --admin 127.0.0.1:4 --backends-file /s/lb.backends"
    );
    assert_eq!(
        backends_text(&["127.0.0.1:2".into(), "127.0.0.1:3".into()]),
        "# Written by mp: the replicas this mp-lb balances over.\n127.0.0.1:2\n127.0.0.1:3\n"
    );
}

#[test]
fn mp_gather_follows_a_file_instead_of_shard_and_merge_flags() {
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:1",
        "--shard",
        "127.0.0.1:2",
        "--shard",
        "127.0.0.1:3,127.0.0.1:4",
        "--merge",
        "127.0.0.1:5",
        "--policy",
        "all",
        "--admin",
        "127.0.0.1:6",
    ]
    .map(String::from)
    .to_vec();
    let with_file = gather_args_with_file(&args, Path::new("/s/gather.shards"));
    assert_eq!(
        with_file.join(" "),
        "--listen 127.0.0.1:1 --policy all --admin 127.0.0.1:6 --shards-file /s/gather.shards"
    );
    let shards = vec![
        vec!["127.0.0.1:2".to_string()],
        vec!["127.0.0.1:3".to_string(), "127.0.0.1:4".to_string()],
    ];
    let text = shards_text(&shards, Some("127.0.0.1:5"));
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            "127.0.0.1:2",
            "127.0.0.1:3,127.0.0.1:4",
            "merge 127.0.0.1:5"
        ]
    );
    assert!(!shards_text(&shards, None)
        .lines()
        .any(|l| l.starts_with("merge")));
    // A new admin port alone does not make a new front.
    let mut moved = with_file.clone();
    moved[5] = "127.0.0.1:7".into();
    assert_eq!(without_admin(&with_file), without_admin(&moved));
}

#[test]
fn programs_resolve_like_a_shell_and_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    assert!(proc::resolve_program("sh", dir.path()).is_ok());
    let e = proc::resolve_program("no-such-program-mp", dir.path()).unwrap_err();
    assert!(e.contains("not found on PATH"), "{e}");
    let e = proc::resolve_program("./missing", dir.path()).unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
    std::fs::write(dir.path().join("data"), "x").unwrap();
    let e = proc::resolve_program("./data", dir.path()).unwrap_err();
    assert!(e.contains("not executable"), "{e}");
}

#[test]
fn the_state_dir_follows_the_environment_conventions() {
    // Only read here: the variables are not changed (tests run in parallel).
    let d = default_state_dir().unwrap();
    match std::env::var_os("MP_STATE_DIR").filter(|v| !v.is_empty()) {
        Some(v) => assert_eq!(d, PathBuf::from(v)),
        None => assert!(d.ends_with("mp"), "{}", d.display()),
    }
}
