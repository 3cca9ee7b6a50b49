//! The Python leaf and merger (stock grpcio) answer grpcurl and a Rust client
//! alike, and are interchangeable with the Rust examples: the contract is
//! language-neutral.

mod common;
use common::*;
use mp_examples::histogram::{count, BINS};
use mp_proto::v1::{leaf_outcome::Outcome, LeafOutcome, MergeRequest, Payload, Reply, Request};
use std::time::Duration;
use tonic::Code;

fn numbers(reply: &Reply) -> Vec<f64> {
    serde_json::from_value(reply.body_json().expect("JSON body")).expect("an array of numbers")
}

fn outcome(shard: u32, reply: Reply) -> LeafOutcome {
    LeafOutcome {
        shard,
        outcome: Some(Outcome::Reply(reply)),
        ..Default::default()
    }
}

#[test]
fn python_leaf_answers_grpcurl() {
    let leaf = start_python("leaf.py", &[]);
    let t = leaf.target();
    let list = grpcurl_ok(&["-plaintext", &t, "list"]);
    assert!(list.lines().any(|l| l == "mp.v1.Handler"), "{list}");
    assert!(list.lines().any(|l| l == "grpc.health.v1.Health"), "{list}");
    let describe = grpcurl_ok(&["-plaintext", &t, "describe", "mp.v1.Handler"]);
    assert!(describe.contains("rpc Handle"), "{describe}");
    let out = grpcurl_ok(&["-plaintext", &t, "mp.v1.Handler/Handle"]);
    let samples = json(&out)["body"]["json"].as_array().cloned().unwrap();
    assert_eq!(samples.len(), 100, "{out}");
    assert!(samples.iter().all(|x| x.is_number()));
    let health = grpcurl_ok(&["-plaintext", &t, "grpc.health.v1.Health/Check"]);
    assert_eq!(json(&health)["status"], "SERVING");
}

#[tokio::test]
async fn python_leaf_answers_a_rust_client() {
    let leaf = start_python("leaf.py", &[]);
    let mut client = handler_client(leaf.addr).await;
    let reply = client
        .handle(timed(Request::json(serde_json::json!({"any": "thing"}))))
        .await
        .expect("leaf answers")
        .into_inner();
    let xs = numbers(&reply);
    assert_eq!(xs.len(), 100);
    let mean = xs.iter().sum::<f64>() / 100.0;
    assert!((80.0..120.0).contains(&mean), "mean {mean}");

    // Raw bytes are refused the way the Rust SDK refuses them.
    let raw = Request {
        body: Some(Payload::raw(b"\x00\x01".to_vec())),
        metadata: Default::default(),
    };
    let status = client.handle(timed(raw)).await.expect_err("raw body");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("raw bytes"), "{status:?}");
}

#[test]
fn python_and_rust_mergers_agree_via_grpcurl() {
    let py = start_python("merge.py", &[]);
    let rs = start_example("histogram-merge", &[]);
    let cases = [
        r#"{"leaves":[{"shard":0,"reply":{"body":{"json":[0, 19.99, 20, 105, 199.99]}}},
                      {"shard":1,"reply":{"body":{"json":[-0.5, 200, 1000, 50]}}}]}"#,
        // A failed leaf and one that is not numbers are left out.
        r#"{"leaves":[{"shard":0,"error":{"code":14,"message":"down"}},
                      {"shard":1,"reply":{"body":{"json":{"x":1}}}},
                      {"shard":2,"reply":{"body":{"json":[42]}}}]}"#,
        r#"{"leaves":[]}"#,
    ];
    for d in cases {
        let a = grpcurl_ok(&["-plaintext", "-d", d, &py.target(), "mp.v1.Merger/Merge"]);
        let b = grpcurl_ok(&["-plaintext", "-d", d, &rs.target(), "mp.v1.Merger/Merge"]);
        assert_eq!(json(&a), json(&b), "python and rust differ on {d}");
    }
    let expect = json(&grpcurl_ok(&[
        "-plaintext",
        "-d",
        cases[0],
        &py.target(),
        "mp.v1.Merger/Merge",
    ]));
    assert_eq!(
        expect["body"]["json"],
        serde_json::json!([2, 1, 1, 0, 0, 1, 0, 0, 0, 1])
    );

    // No leaf answered: both fail with the first failure's code.
    let d = r#"{"leaves":[{"shard":3,"error":{"code":4,"message":"too slow"}}]}"#;
    for target in [py.target(), rs.target()] {
        let err = grpcurl_err(&["-plaintext", "-d", d, &target, "mp.v1.Merger/Merge"]);
        assert!(err.contains("Code: DeadlineExceeded"), "{target}: {err}");
        assert!(err.contains("shard 3: too slow"), "{target}: {err}");
    }
}

#[tokio::test]
async fn rust_and_python_leaves_and_mergers_are_interchangeable() {
    let py_leaf = start_python("leaf.py", &[("MP_SHARD", "0"), ("MP_SHARDS", "2")]);
    let rs_leaf = start_example("histogram-leaf", &[("MP_SHARD", "1"), ("MP_SHARDS", "2")]);
    let py_merge = start_python("merge.py", &[]);
    let rs_merge = start_example("histogram-merge", &[]);

    let mut leaves = Vec::new();
    let mut expected = [0u64; BINS];
    for (shard, leaf) in [&py_leaf, &rs_leaf].into_iter().enumerate() {
        let reply = handler_client(leaf.addr)
            .await
            .handle(timed(Request::default()))
            .await
            .expect("leaf answers")
            .into_inner();
        count(&mut expected, numbers(&reply));
        leaves.push(outcome(shard as u32, reply));
    }
    let request = MergeRequest {
        request: Some(Request::default()),
        leaves,
    };
    for merger in [&py_merge, &rs_merge] {
        let reply = merger_client(merger.addr)
            .await
            .merge(timed(request.clone()))
            .await
            .expect("merger answers")
            .into_inner();
        let counts: Vec<u64> = serde_json::from_value(reply.body_json().unwrap()).unwrap();
        assert_eq!(counts, expected, "merger at {}", merger.addr);
    }
}

#[test]
fn python_handler_drains_on_sigterm_and_exits_0() {
    let mut leaf = start_python("leaf.py", &[("MP_GRACE", "5")]);
    grpcurl_ok(&["-plaintext", &leaf.target(), "mp.v1.Handler/Handle"]);
    leaf.child.signal("TERM");
    let status = leaf
        .child
        .wait_timeout(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}
