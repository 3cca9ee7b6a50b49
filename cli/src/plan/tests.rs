//! Tests of the plan: parts, environment, front flags, addresses.

use super::*;
use crate::topology::ServiceSpec;

fn service(spec: ServiceSpec) -> Service {
    spec.validate().unwrap()
}

fn cmd(line: &str) -> Option<Program> {
    Some(Program::parse_command_line(line).unwrap())
}

fn plan_one(s: Service) -> ServicePlan {
    let mut plan = plan(&Topology::single(s), &mut SequentialPorts::from(7000)).unwrap();
    plan.services.remove(0)
}

#[test]
fn service_pattern_is_one_handler_that_is_the_front() {
    let p = plan_one(service(ServiceSpec {
        name: "one".into(),
        pattern: PatternKind::Service,
        handler: cmd("target/release/examples/hello --greeting hi"),
        port: Some(7700),
        ..Default::default()
    }));
    assert_eq!(p.parts.len(), 1);
    assert_eq!(p.front, "handler");
    assert_eq!(p.front_config, Front::Handler);
    let h = p.front_part();
    assert_eq!(h.role, Role::Handler);
    assert_eq!(h.endpoint.listen, Address::new("127.0.0.1", 7700));
    assert_eq!(
        h.exec,
        Exec::Command {
            program: "target/release/examples/hello".into(),
            args: vec!["--greeting".into(), "hi".into()],
        }
    );
    assert_eq!(h.env["MP_PORT"], "7700");
    assert_eq!(h.env["MP_ROLE"], "handler");
    assert_eq!(h.env["MP_SERVICE"], "one");
    assert!(!h.env.contains_key("MP_SHARD"));
}

#[test]
fn spread_is_replicas_behind_mp_lb() {
    let mut s = service(ServiceSpec {
        name: "hello".into(),
        pattern: PatternKind::Spread,
        handler: cmd("hello"),
        replicas: Some(3),
        ..Default::default()
    });
    s.env.insert("GREETING".into(), "hi".into());
    let p = plan_one(s);
    let names: Vec<&str> = p.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["replica-0", "replica-1", "replica-2", "lb"]);
    for (i, r) in p.parts[..3].iter().enumerate() {
        assert_eq!(r.role, Role::Replica);
        assert_eq!(r.index, i as u32);
        assert_eq!(r.env["MP_PORT"], (7000 + i).to_string());
        assert_eq!(r.env["MP_REPLICA"], i.to_string());
        assert_eq!(r.env["GREETING"], "hi");
    }
    let lb = p.front_part();
    assert_eq!(lb.name, "lb");
    assert_eq!(lb.role, Role::Lb);
    // Port 7003 is the front (no --port given), 7004 its admin port.
    assert_eq!(
        lb.exec,
        Exec::DataPlane {
            binary: DataPlane::MpLb,
            args: [
                "--listen",
                "127.0.0.1:7003",
                "--backend",
                "127.0.0.1:7000",
                "--backend",
                "127.0.0.1:7001",
                "--backend",
                "127.0.0.1:7002",
                "--admin",
                "127.0.0.1:7004",
            ]
            .map(String::from)
            .to_vec(),
        }
    );
    // The user's environment is for handlers, not the data plane.
    assert!(!lb.env.contains_key("GREETING"));
    assert_eq!(lb.env["MP_ROLE"], "lb");
    assert_eq!(
        p.front_config,
        Front::Lb {
            backends: vec![
                "127.0.0.1:7000".into(),
                "127.0.0.1:7001".into(),
                "127.0.0.1:7002".into()
            ]
        }
    );
}

#[test]
fn scatter_is_leaves_and_a_merge_behind_mp_gather() {
    let p = plan_one(service(ServiceSpec {
        name: "histogram-service".into(),
        pattern: PatternKind::Scatter,
        shards: Some(10),
        leaf: cmd("python3 examples/python/leaf.py"),
        merge: cmd("histogram-merge"),
        port: Some(7700),
        ..Default::default()
    }));
    assert_eq!(p.parts.len(), 12);
    assert_eq!(p.front, "gather");
    for s in 0..10u32 {
        let leaf = p.part(&format!("leaf-{s}")).unwrap();
        assert_eq!(leaf.role, Role::Leaf);
        assert_eq!(leaf.shard, Some(s));
        assert_eq!(leaf.env["MP_SHARD"], s.to_string());
        assert_eq!(leaf.env["MP_SHARDS"], "10");
        assert_eq!(leaf.env["MP_ROLE"], "leaf");
        assert_eq!(
            leaf.exec,
            Exec::Command {
                program: "python3".into(),
                args: vec!["examples/python/leaf.py".into()]
            }
        );
    }
    let merge = p.part("merge").unwrap();
    assert_eq!(merge.role, Role::Merge);
    assert_eq!(merge.endpoint.listen.port, 7010);
    let gather = p.front_part();
    assert_eq!(p.parts.last().unwrap().name, "gather");
    let Exec::DataPlane { binary, args } = &gather.exec else {
        panic!("gather is data plane")
    };
    assert_eq!(*binary, DataPlane::MpGather);
    let mut want = vec!["--listen".to_string(), "127.0.0.1:7700".to_string()];
    for s in 0..10 {
        want.extend(["--shard".to_string(), format!("127.0.0.1:{}", 7000 + s)]);
    }
    want.extend(["--merge", "127.0.0.1:7010", "--admin", "127.0.0.1:7011"].map(String::from));
    assert_eq!(*args, want);
}

#[test]
fn scatter_with_replicas_per_shard_a_reducer_and_a_policy() {
    let p = plan_one(service(ServiceSpec {
        name: "s".into(),
        pattern: PatternKind::Scatter,
        shards: Some(2),
        replicas: Some(2),
        leaf: cmd("leaf"),
        reducer: Some(Reducer::First),
        policy: Some(Policy::Quorum(1)),
        ..Default::default()
    }));
    let names: Vec<&str> = p.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["leaf-0-0", "leaf-0-1", "leaf-1-0", "leaf-1-1", "gather"]
    );
    assert_eq!(p.part("leaf-1-1").unwrap().env["MP_SHARD"], "1");
    assert_eq!(p.part("leaf-1-1").unwrap().env["MP_REPLICA"], "1");
    let Exec::DataPlane { args, .. } = &p.front_part().exec else {
        panic!()
    };
    let line = args.join(" ");
    assert_eq!(
        line,
        "--listen 127.0.0.1:7004 --shard 127.0.0.1:7000,127.0.0.1:7001 \
         --shard 127.0.0.1:7002,127.0.0.1:7003 --reducer first --policy quorum=1 --admin 127.0.0.1:7005"
    );
}

#[test]
fn a_runner_addressing_decides_hosts_and_ports() {
    // As a container runner would: every part on its own host, same port.
    struct Names;
    impl Addressing for Names {
        fn assign(&mut self, part: PartKey<'_>) -> Result<Endpoint, PlanError> {
            Ok(Endpoint {
                listen: Address::new("0.0.0.0", 8080),
                reach: Address::new(format!("mp-{}-{}", part.service.name, part.name), 8080),
                admin: None,
            })
        }
    }
    let s = service(ServiceSpec {
        name: "hello".into(),
        pattern: PatternKind::Spread,
        handler: Some(Program::Image("my/hello:1".into())),
        replicas: Some(2),
        ..Default::default()
    });
    let p = plan_service(&s, &mut Names).unwrap();
    assert_eq!(
        p.parts[0].exec,
        Exec::Image {
            image: "my/hello:1".into()
        }
    );
    assert_eq!(p.parts[0].env["MP_HOST"], "0.0.0.0");
    assert_eq!(
        p.front_config,
        Front::Lb {
            backends: vec![
                "mp-hello-replica-0:8080".into(),
                "mp-hello-replica-1:8080".into()
            ]
        }
    );
    let Exec::DataPlane { args, .. } = &p.front_part().exec else {
        panic!()
    };
    assert_eq!(
        args.join(" "),
        "--listen 0.0.0.0:8080 --backend mp-hello-replica-0:8080 --backend mp-hello-replica-1:8080"
    );
}

#[test]
fn an_addressing_error_stops_the_plan() {
    struct Full;
    impl Addressing for Full {
        fn assign(&mut self, part: PartKey<'_>) -> Result<Endpoint, PlanError> {
            Err(PlanError::Address {
                service: part.service.name.clone(),
                part: part.name.into(),
                message: "no free port".into(),
            })
        }
    }
    let s = service(ServiceSpec {
        name: "one".into(),
        pattern: PatternKind::Service,
        handler: cmd("x"),
        ..Default::default()
    });
    let e = plan(&Topology::single(s), &mut Full).unwrap_err();
    assert_eq!(e.to_string(), "service `one`, part handler: no free port");
}

#[test]
fn roles_parse_and_the_dry_run_listing_names_every_part() {
    assert_eq!("leaf".parse::<Role>().unwrap(), Role::Leaf);
    assert!("boss".parse::<Role>().is_err());
    let p = plan_one(service(ServiceSpec {
        name: "hello".into(),
        pattern: PatternKind::Spread,
        handler: cmd("hello"),
        replicas: Some(2),
        ..Default::default()
    }));
    let text = p.to_string();
    assert!(
        text.starts_with("service hello (spread, 3 parts, front lb)\n"),
        "{text}"
    );
    assert!(text.contains("replica-1"), "{text}");
    assert!(text.contains("mp-lb --listen 127.0.0.1:7002"), "{text}");
}
