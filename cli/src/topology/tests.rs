//! Tests of mp.toml parsing and of topology validation.

use super::*;

fn parse(text: &str) -> Result<Topology, TopologyError> {
    Topology::from_toml(text, "mp.toml")
}

fn err(text: &str) -> String {
    parse(text).expect_err("should be rejected").to_string()
}

#[test]
fn parses_several_services_of_every_pattern() {
    let t = parse(
        r#"
        [[service]]
        name = "histogram-service"
        pattern = "scatter"
        shards = 10
        leaf = "target/release/examples/histogram-leaf"
        merge = "target/release/examples/histogram-merge"
        port = 7700

        [[service]]
        name = "hello"
        pattern = "spread"
        replicas = 3
        handler = ["python3", "examples/python/leaf.py"]
        env = { GREETING = "hi" }

        [[service]]
        name = "one"
        pattern = "service"
        handler = { image = "my/handler:1" }
        "#,
    )
    .unwrap();
    assert_eq!(t.services.len(), 3);
    let h = &t.services[0];
    assert_eq!(h.name, "histogram-service");
    assert_eq!(h.port, Some(7700));
    assert_eq!(
        h.pattern,
        Pattern::Scatter {
            shards: 10,
            replicas: 1,
            leaf: Program::Command(vec!["target/release/examples/histogram-leaf".into()]),
            combine: Combine::Merge(Program::Command(vec![
                "target/release/examples/histogram-merge".into()
            ])),
            policy: None,
        }
    );
    assert_eq!(
        t.services[1].pattern,
        Pattern::Spread {
            replicas: 3,
            handler: Program::Command(vec!["python3".into(), "examples/python/leaf.py".into()]),
        }
    );
    assert_eq!(
        t.services[1].env.get("GREETING").map(String::as_str),
        Some("hi")
    );
    assert_eq!(
        t.services[2].pattern,
        Pattern::Service {
            handler: Program::Image("my/handler:1".into())
        }
    );
}

#[test]
fn command_lines_split_like_a_shell_without_one() {
    assert_eq!(
        Program::parse_command_line(r#"python3 "my leaf.py" --x 'a b'"#).unwrap(),
        Program::Command(vec![
            "python3".into(),
            "my leaf.py".into(),
            "--x".into(),
            "a b".into()
        ])
    );
    assert!(Program::parse_command_line("   ").is_err());
    assert!(Program::parse_command_line("python3 'unbalanced").is_err());
    let p = Program::Command(vec!["python3".into(), "my leaf.py".into()]);
    assert_eq!(p.to_string(), "python3 'my leaf.py'");
}

#[test]
fn scatter_defaults_to_a_json_array_and_takes_reducer_and_policy() {
    let t = parse(
        r#"
        [[service]]
        name = "s"
        pattern = "scatter"
        shards = 2
        replicas = 2
        leaf = "leaf"
        reducer = "concat"
        policy = "quorum=1"
        "#,
    )
    .unwrap();
    match &t.services[0].pattern {
        Pattern::Scatter {
            replicas,
            combine,
            policy,
            ..
        } => {
            assert_eq!(*replicas, 2);
            assert_eq!(*combine, Combine::Reducer(Reducer::Concat));
            assert_eq!(*policy, Some(Policy::Quorum(1)));
        }
        other => panic!("not a scatter: {other:?}"),
    }
    let t = parse("[[service]]\nname = \"s\"\npattern = \"scatter\"\nshards = 1\nleaf = \"l\"\n")
        .unwrap();
    assert!(matches!(
        t.services[0].pattern,
        Pattern::Scatter {
            combine: Combine::Reducer(Reducer::JsonArray),
            ..
        }
    ));
}

#[test]
fn invalid_files_get_one_line_errors_that_say_what_is_wrong() {
    let cases = [
        ("[[service]\nname=", "invalid mp.toml: line 1"),
        (
            "[[service]]\nname = \"a\"\npattern = \"ring\"\nhandler = \"x\"\n",
            "unknown variant `ring`",
        ),
        ("[[service]]\nname = \"a\"\npattern = \"spread\"\nreplicas = 2\n", "needs `handler`"),
        ("[[service]]\nname = \"a\"\npattern = \"spread\"\nhandler = \"x\"\n", "needs `replicas`"),
        (
            "[[service]]\nname = \"a\"\npattern = \"spread\"\nhandler = \"x\"\nreplicas = 0\n",
            "at least 1",
        ),
        (
            "[[service]]\nname = \"a\"\npattern = \"spread\"\nhandler = \"x\"\nreplicas = 2\nleaf = \"y\"\n",
            "`leaf` is not used by the spread pattern",
        ),
        (
            "[[service]]\nname = \"a\"\npattern = \"scatter\"\nshards = 2\nleaf = \"y\"\nmerge = \"m\"\nreducer = \"first\"\n",
            "not both",
        ),
        (
            "[[service]]\nname = \"a\"\npattern = \"scatter\"\nshards = 2\nleaf = \"y\"\npolicy = \"most\"\n",
            "unknown policy `most`",
        ),
        (
            "[[service]]\nname = \"a\"\npattern = \"scatter\"\nshards = 2\nleaf = \"y\"\npolicy = \"quorum=3\"\n",
            "quorum=3 is more than the 2 shards",
        ),
        ("[[service]]\nname = \"Bad_Name\"\npattern = \"service\"\nhandler = \"x\"\n", "invalid service name"),
        ("[[service]]\nname = \"a\"\npattern = \"service\"\nhandler = \"x\"\nport = 0\n", "between 1 and 65535"),
        ("[[service]]\nname = \"a\"\npattern = \"service\"\nhandler = \"\"\n", "empty"),
        ("[[service]]\nname = \"a\"\npattern = \"service\"\nhandler = []\n", "empty array"),
        ("[[service]]\nname = \"a\"\npattern = \"service\"\nhandler = { cmd = \"x\" }\n", "unknown field `cmd`"),
        ("[[service]]\nname = \"a\"\npattern = \"service\"\nhandlr = \"x\"\n", "unknown field `handlr`"),
        (
            "[[service]]\nname = \"a\"\npattern = \"service\"\nhandler = \"x\"\nenv = { MP_PORT = \"1\" }\n",
            "MP_* are set by mp",
        ),
        (
            "[[service]]\nname = \"a\"\npattern = \"service\"\nhandler = \"x\"\n[[service]]\nname = \"a\"\npattern = \"service\"\nhandler = \"y\"\n",
            "declared twice",
        ),
        (
            "[[service]]\nname = \"a\"\npattern = \"service\"\nhandler = \"x\"\nport = 9\n[[service]]\nname = \"b\"\npattern = \"service\"\nhandler = \"y\"\nport = 9\n",
            "already the front of `a`",
        ),
        ("", "declares no service"),
    ];
    for (text, want) in cases {
        let e = err(text);
        assert!(
            e.contains(want),
            "{text:?}: error {e:?} does not contain {want:?}"
        );
        assert!(!e.contains('\n'), "{text:?}: error is not one line: {e:?}");
    }
}

#[test]
fn names_fit_every_runner() {
    for ok in ["a", "histogram-service", "svc2", &"a".repeat(MAX_NAME_LEN)] {
        assert!(validate_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "-a",
        "a-",
        "2a",
        "A",
        "a_b",
        "a.b",
        "a b",
        &"a".repeat(MAX_NAME_LEN + 1),
    ] {
        assert!(validate_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn policies_and_patterns_round_trip_through_their_names() {
    for p in [Policy::All, Policy::Quorum(3), Policy::BestEffort] {
        assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
    }
    assert!("quorum=0".parse::<Policy>().is_err());
    for k in [
        PatternKind::Service,
        PatternKind::Spread,
        PatternKind::Scatter,
    ] {
        assert_eq!(k.as_str().parse::<PatternKind>().unwrap(), k);
    }
    assert_eq!(
        "ring".parse::<PatternKind>().unwrap_err(),
        "unknown pattern `ring`: expected service, spread or scatter"
    );
}

#[test]
fn a_validated_service_serializes_and_reads_back() {
    let t = parse(
        "[[service]]\nname = \"a\"\npattern = \"scatter\"\nshards = 3\nleaf = \"l --x\"\nmerge = { image = \"m:1\" }\npolicy = \"best-effort\"\n",
    )
    .unwrap();
    let json = serde_json::to_string(&t).unwrap();
    let back: Topology = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
}
