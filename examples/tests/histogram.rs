//! The histogram scatter/gather examples: the leaf's samples, the merger's
//! bins (values outside [0, 200) dropped), and real leaves feeding the real
//! merger.

mod common;
use common::*;
use mp_examples::histogram::{count, BINS};
use mp_proto::v1::{leaf_outcome::Outcome, LeafError, LeafOutcome, MergeRequest, Request};
use tonic::Code;

fn samples(reply: &mp_proto::v1::Reply) -> Vec<f64> {
    serde_json::from_value(reply.body_json().expect("JSON body")).expect("an array of numbers")
}

#[tokio::test]
async fn a_leaf_replies_100_gaussian_samples() {
    let leaf = start_example("histogram-leaf", &[]);
    let reply = handler_client(leaf.addr)
        .await
        .handle(timed(Request::default()))
        .await
        .expect("leaf answers")
        .into_inner();
    let xs = samples(&reply);
    assert_eq!(xs.len(), 100);
    // Mean 100, sigma 25: the mean of 100 samples is within 4 standard
    // errors (4 * 2.5) of 100 all but once in 15,000 runs... use 8 to be sure.
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    assert!((80.0..120.0).contains(&mean), "mean {mean}");
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
    assert!((12.0..38.0).contains(&var.sqrt()), "sigma {}", var.sqrt());
    // Two calls do not repeat themselves.
    let again = handler_client(leaf.addr)
        .await
        .handle(timed(Request::default()))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(xs, samples(&again));
}

#[test]
fn the_merger_bins_by_20_and_drops_what_is_outside_via_grpcurl() {
    let merge = start_example("histogram-merge", &[]);
    let d = r#"{"leaves":[
        {"shard":0,"reply":{"body":{"json":[0, 19.99, 20, 105, 199.99]}}},
        {"shard":1,"reply":{"body":{"json":[-0.5, 200, 1000, 50]}}}
    ]}"#;
    let out = grpcurl_ok(&["-plaintext", "-d", d, &merge.target(), "mp.v1.Merger/Merge"]);
    assert_eq!(
        json(&out)["body"]["json"],
        serde_json::json!([2, 1, 1, 0, 0, 1, 0, 0, 0, 1]),
        "{out}"
    );
}

#[tokio::test]
async fn real_leaves_feed_the_real_merger() {
    let leaves: Vec<_> = (0..3)
        .map(|i| {
            let shard = i.to_string();
            start_example(
                "histogram-leaf",
                &[("MP_SHARD", shard.as_str()), ("MP_SHARDS", "3")],
            )
        })
        .collect();
    let merge = start_example("histogram-merge", &[]);

    let mut outcomes = Vec::new();
    let mut expected = [0u64; BINS];
    for (i, leaf) in leaves.iter().enumerate() {
        let reply = handler_client(leaf.addr)
            .await
            .handle(timed(Request::default()))
            .await
            .expect("leaf answers")
            .into_inner();
        count(&mut expected, samples(&reply));
        outcomes.push(LeafOutcome {
            shard: i as u32,
            outcome: Some(Outcome::Reply(reply)),
            ..Default::default()
        });
    }
    // One shard failed: the merger counts the others.
    outcomes.push(LeafOutcome {
        shard: 3,
        outcome: Some(Outcome::Error(LeafError {
            code: Code::Unavailable as i32,
            message: "connection refused".into(),
        })),
        ..Default::default()
    });
    let reply = merger_client(merge.addr)
        .await
        .merge(timed(MergeRequest {
            request: Some(Request::default()),
            leaves: outcomes,
        }))
        .await
        .expect("merge answers")
        .into_inner();
    let counts: Vec<u64> = serde_json::from_value(reply.body_json().unwrap()).unwrap();
    assert_eq!(counts, expected);
    // 300 samples of N(100, 25): only a handful fall outside [0, 200).
    let total: u64 = counts.iter().sum();
    assert!((290..=300).contains(&total), "{total}");
}

#[tokio::test]
async fn the_merger_fails_when_no_leaf_answered() {
    let merge = start_example("histogram-merge", &[]);
    let status = merger_client(merge.addr)
        .await
        .merge(timed(MergeRequest {
            request: None,
            leaves: vec![LeafOutcome {
                shard: 0,
                outcome: Some(Outcome::Error(LeafError {
                    code: Code::DeadlineExceeded as i32,
                    message: "too slow".into(),
                })),
                ..Default::default()
            }],
        }))
        .await
        .expect_err("nothing to merge");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(status.message().contains("shard 0: too slow"), "{status:?}");
}

#[tokio::test]
async fn a_leaf_reply_that_is_not_numbers_is_left_out() {
    let merge = start_example("histogram-merge", &[]);
    let ok = |shard, body| LeafOutcome {
        shard,
        outcome: Some(Outcome::Reply(mp_proto::v1::Reply::json(body))),
        ..Default::default()
    };
    let reply = merger_client(merge.addr)
        .await
        .merge(timed(MergeRequest {
            request: None,
            leaves: vec![
                ok(0, serde_json::json!([10, 30])),
                ok(1, serde_json::json!({"not": "numbers"})),
            ],
        }))
        .await
        .expect("the good leaf is counted")
        .into_inner();
    assert_eq!(
        reply.body_json().unwrap(),
        serde_json::json!([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    );
}
