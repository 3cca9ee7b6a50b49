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

fn scatter(name: &str) -> Topology {
    Topology::single(
        ServiceSpec {
            name: name.into(),
            pattern: PatternKind::Scatter,
            shards: Some(2),
            leaf: Some(Program::Command(vec!["leaf".into()])),
            merge: Some(Program::Command(vec!["merge".into()])),
            ..Default::default()
        }
        .validate()
        .unwrap(),
    )
}

/// The front part's arguments, as one string.
fn front_args(plan: &ServicePlan) -> String {
    match &plan.front_part().exec {
        Exec::DataPlane { args, .. } => args.join(" "),
        other => panic!("front is {other:?}"),
    }
}

#[test]
fn the_plan_points_mp_lb_at_its_backends_file() {
    let dir = tempfile::tempdir().unwrap();
    let runner = LocalRunner::with_state_dir(dir.path());
    let plan = crate::ops::make_plan(&runner, &spread("hello", Some(7001))).unwrap();
    let sp = &plan.services[0];
    let file = dir.path().join("services/hello/lb.backends");
    let args = front_args(sp);
    assert!(
        args.starts_with(&format!(
            "--listen 127.0.0.1:7001 --backends-file {} --admin 127.0.0.1:",
            file.display()
        )),
        "{args}"
    );
    assert!(!args.contains("--backend "), "{args}");
    assert_eq!(front_file(sp), Some(file.clone()));
    let Front::Lb { backends } = &sp.front_config else {
        panic!("{:?}", sp.front_config)
    };
    assert_eq!(
        sp.front_config.file_text().unwrap(),
        format!(
            "# Written by mp: the replicas this mp-lb balances over.\n{}\n",
            backends.join("\n")
        )
    );
    // The dry run names the file and what it will hold.
    let shown = sp.to_string();
    assert!(
        shown.contains(&format!("{} (written by mp) holds:", file.display())),
        "{shown}"
    );
    for b in backends {
        assert!(shown.contains(&format!("    {b}\n")), "{shown}");
    }
}

#[test]
fn the_plan_points_mp_gather_at_its_shards_file() {
    let dir = tempfile::tempdir().unwrap();
    let runner = LocalRunner::with_state_dir(dir.path());
    let plan = crate::ops::make_plan(&runner, &scatter("hist")).unwrap();
    let sp = &plan.services[0];
    let file = dir.path().join("services/hist/gather.shards");
    let args = front_args(sp);
    assert!(
        args.contains(&format!("--shards-file {} --admin", file.display())),
        "{args}"
    );
    assert!(
        !args.contains("--shard ") && !args.contains("--merge"),
        "{args}"
    );
    assert_eq!(front_file(sp), Some(file));
    let text = sp.front_config.file_text().unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let addr = |n: &str| sp.part(n).unwrap().endpoint.reach.to_string();
    assert_eq!(
        lines,
        [
            addr("leaf-0"),
            addr("leaf-1"),
            format!("merge {}", addr("merge"))
        ]
    );
    // A new admin port alone does not make a new front.
    let again = crate::ops::make_plan(&runner, &scatter("hist")).unwrap();
    let (Exec::DataPlane { args: a, .. }, Exec::DataPlane { args: b, .. }) =
        (&sp.front_part().exec, &again.services[0].front_part().exec)
    else {
        panic!("not data plane fronts")
    };
    assert_ne!(a, b);
    assert_eq!(without_admin(a)[2..], without_admin(b)[2..]);
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
