//! The seed's histogram scatter/gather with real processes: 10 leaves and a
//! merger (the Rust examples, then the Python ones) behind a real mp-gather.

mod support;

use std::time::Duration;

use mp_proto::v1::Request;
use serde_json::Value;
use support::*;

const SHARDS: usize = 10;

/// Checks a merged histogram: 10 bins whose counts add up to the 1,000
/// samples (the leaves draw inside the histogram's range [0, 200)).
fn check_histogram(body: &Value) {
    let bins: Vec<u64> = serde_json::from_value(body.clone()).expect("an array of counts");
    assert_eq!(bins.len(), 10, "{body}");
    let total: u64 = bins.iter().sum();
    assert_eq!(total, 1000, "bins sum to {total}: {body}");
    // Mean 100 lands in bins 4 and 5: they hold the most.
    let top = bins.iter().enumerate().max_by_key(|(_, c)| **c).unwrap().0;
    assert!((3..=6).contains(&top), "{body}");
}

async fn gather_histogram(leaves: &[Process], merge: &Process) {
    let mut a: Vec<String> = leaves
        .iter()
        .flat_map(|l| ["--shard".to_string(), l.addr()])
        .collect();
    a.extend(args(&["--merge", &merge.addr()]));
    let g = GatherProc::start(&a);
    let mut c = g.client().await;
    let mut req = tonic::Request::new(Request::default());
    req.set_timeout(Duration::from_secs(20));
    let reply = c.handle(req).await.expect("histogram").into_inner();
    check_histogram(&reply.body_json().unwrap());

    // Without the merger, json-array shows the raw material: exactly 100
    // samples from each of the 10 shards, in shard order.
    let a: Vec<String> = leaves
        .iter()
        .flat_map(|l| ["--shard".to_string(), l.addr()])
        .collect();
    let g = GatherProc::start(&a);
    let reply = call(&mut g.client().await, Value::Null)
        .await
        .expect("samples");
    let body = reply.body_json().unwrap();
    let per_shard: Vec<usize> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(per_shard, [100; SHARDS]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_with_rust_leaves_and_merger() {
    let leaves: Vec<Process> = (0..SHARDS)
        .map(|i| {
            example(
                "histogram-leaf",
                &[("MP_SHARD", &i.to_string()), ("MP_SHARDS", "10")],
            )
        })
        .collect();
    let merge = example("histogram-merge", &[]);
    gather_histogram(&leaves, &merge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_with_python_leaves_and_merger() {
    if !python_grpc_available() {
        return;
    }
    let leaves: Vec<Process> = (0..SHARDS)
        .map(|i| {
            python(
                "leaf.py",
                &[("MP_SHARD", &i.to_string()), ("MP_SHARDS", "10")],
            )
        })
        .collect();
    let merge = python("merge.py", &[]);
    gather_histogram(&leaves, &merge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_example_leaf_fails_the_gather_with_its_status() {
    let ok = example("hello", &[]);
    let bad = example(
        "faulty",
        &[
            ("MP_FAIL_CODE", "RESOURCE_EXHAUSTED"),
            ("MP_FAIL_MESSAGE", "out of quota"),
        ],
    );
    let g = GatherProc::start(&args(&["--shard", &ok.addr(), "--shard", &bad.addr()]));
    let err = call(&mut g.client().await, Value::Null)
        .await
        .expect_err("faulty fails");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("shard 1"), "{err:?}");
    assert!(err.message().contains("out of quota"), "{err:?}");
}
