//! mp-gather end to end: a real `mp-gather` process in front of real tonic
//! leaves on loopback; fan-out, shard order, reducers, failure policies and
//! deadlines.

mod support;

use std::time::{Duration, Instant};

use mp_proto::v1::handler_client::HandlerClient;
use serde_json::json;
use support::*;
use tonic::transport::Channel;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fans_out_and_keeps_shard_order() {
    // Later shards answer first: the order must still be the shards'.
    let mut ls = Vec::new();
    for shard in 0..5 {
        ls.push(
            leaf(LeafSpec {
                shard,
                delay: Duration::from_millis(20 * (5 - shard as u64)),
                ..LeafSpec::default()
            })
            .await,
        );
    }
    let g = GatherProc::start(&shard_args(&ls));
    let mut c = g.client().await;
    let reply = call(&mut c, json!({"q": 7})).await.expect("gathered");
    let body = reply.body_json().unwrap();
    let shards: Vec<u64> = body
        .as_array()
        .expect("json-array by default for mp.v1.Handler/Handle")
        .iter()
        .map(|v| v["shard"].as_u64().unwrap())
        .collect();
    assert_eq!(shards, [0, 1, 2, 3, 4]);
    // Every leaf received the caller's request.
    assert!(body
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["echo"] == json!({"q": 7})));
    for l in &ls {
        assert_eq!(
            l.stats.finished.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_metadata_and_the_deadline_to_leaves() {
    let ls = leaves(2).await;
    let g = GatherProc::start(&shard_args(&ls));
    let mut c = g.client().await;
    let mut req = tonic::Request::new(mp_proto::v1::Request::json(json!(null)));
    req.metadata_mut()
        .insert("x-tenant", "acme".parse().unwrap());
    req.set_timeout(Duration::from_secs(5));
    let reply = c.handle(req).await.expect("gathered").into_inner();
    let body = reply.body_json().unwrap();
    for v in body.as_array().unwrap() {
        assert_eq!(v["tenant"], "acme");
        // Each leaf learns its (shorter) deadline.
        assert!(v["timeout"].is_string(), "leaf saw no grpc-timeout: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_all_fails_naming_the_shard_and_its_status() {
    let mut ls = leaves(2).await;
    ls.push(
        leaf(LeafSpec {
            shard: 2,
            fail: Some((Code::FailedPrecondition, "index not loaded")),
            ..LeafSpec::default()
        })
        .await,
    );
    let g = GatherProc::start(&shard_args(&ls));
    let mut c = g.client().await;
    let err = call(&mut c, json!(1)).await.expect_err("shard 2 fails");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("shard 2"), "{err:?}");
    assert!(err.message().contains("index not loaded"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_all_with_a_dead_leaf_is_unavailable() {
    let ls = leaves(1).await;
    let mut a = shard_args(&ls);
    a.extend(args(&["--shard", &dead_addr()]));
    let g = GatherProc::start(&a);
    let mut c = g.client().await;
    let err = call(&mut c, json!(1)).await.expect_err("shard 1 is dead");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("shard 1"), "{err:?}");
    assert!(err.message().contains("no healthy endpoint"), "{err:?}");
    assert!(err.message().contains("not connected"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_merges_what_arrived_by_the_deadline() {
    let mut ls = leaves(2).await;
    let hanging = leaf(LeafSpec {
        shard: 2,
        delay: Duration::from_secs(30),
        ..LeafSpec::default()
    })
    .await;
    ls.push(hanging);
    let mut a = shard_args(&ls);
    a.extend(args(&["--shard", &dead_addr()]));
    a.extend(args(&[
        "--policy",
        "best-effort",
        "--leaf-timeout",
        "300ms",
    ]));
    let g = GatherProc::start(&a);
    let mut c = g.client().await;
    let t = Instant::now();
    let reply = call(&mut c, json!(1)).await.expect("partial result");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let body = reply.body_json().unwrap();
    let arr = body.as_array().unwrap();
    assert_eq!(arr.len(), 4);
    assert_eq!(arr[0]["shard"], 0);
    assert_eq!(arr[1]["shard"], 1);
    assert!(arr[2].is_null() && arr[3].is_null(), "{body}");
    assert_eq!(reply.metadata.get("mp-missing-shards").unwrap(), "2,3");
    // The hanging leaf's call was cancelled when the deadline hit.
    let stats = ls[2].stats.clone();
    assert!(
        eventually(Duration::from_secs(3), || stats
            .cancelled
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await,
        "the hanging leaf never saw its call cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_merger_sees_missing_shards_and_why() {
    let mut ls = leaves(1).await;
    ls.push(
        leaf(LeafSpec {
            shard: 1,
            delay: Duration::from_secs(30),
            ..LeafSpec::default()
        })
        .await,
    );
    let m = merger(MergerMode::Summarize).await;
    let mut a = shard_args(&ls);
    a.extend(args(&[
        "--merge",
        &m.addr(),
        "--policy",
        "best-effort",
        "--leaf-timeout",
        "300ms",
    ]));
    let g = GatherProc::start(&a);
    let mut c = g.client().await;
    let reply = call(&mut c, json!({"q": "x"})).await.expect("merged");
    let body = reply.body_json().unwrap();
    assert_eq!(body["request"], json!({"q": "x"}));
    let leaves = body["leaves"].as_array().unwrap();
    assert_eq!(leaves[0]["ok"]["shard"], 0);
    assert_eq!(leaves[0]["endpoint"], ls[0].addr());
    assert_eq!(leaves[0]["has_elapsed"], true);
    assert_eq!(leaves[1]["error"]["code"], Code::DeadlineExceeded as i32);
    assert!(
        leaves[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("leaf-timeout"),
        "{body}"
    );
}

/// The merger learns the caller's metadata and deadline; once it goes away
/// the calls say so, and once it is back on its address they are merged
/// again (the connection is made anew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_merger_gets_metadata_and_the_deadline_and_is_found_again_after_a_restart() {
    let ls = leaves(2).await;
    let m = merger(MergerMode::Summarize).await;
    let merger_addr = m.addr;
    let mut a = shard_args(&ls);
    a.extend(args(&["--merge", &m.addr()]));
    let g = GatherProc::start(&a);
    let mut c = g.client().await;
    // Merges share one connection, the first ones (all at once) too.
    let first = (0..16).map(|i| {
        let mut c = c.clone();
        async move { call(&mut c, json!(i)).await }
    });
    for r in futures::future::join_all(first).await {
        r.expect("merged");
    }
    assert_eq!(
        m.stats
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let mut req = tonic::Request::new(mp_proto::v1::Request::json(json!(1)));
    req.metadata_mut()
        .insert("x-tenant", "acme".parse().unwrap());
    req.set_timeout(Duration::from_secs(5));
    let body = c.handle(req).await.expect("merged").into_inner();
    let body = body.body_json().unwrap();
    assert_eq!(body["tenant"], "acme", "{body}");
    assert!(
        body["timeout"].is_string(),
        "the merger saw no grpc-timeout: {body}"
    );

    drop(m);
    let mut last = None;
    for _ in 0..100 {
        match call(&mut c, json!(2)).await {
            Err(e) => {
                last = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let err = last.expect("calls fail while the merger is away");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("not reachable"), "{err:?}");

    let listener = tokio::net::TcpListener::bind(merger_addr).await.unwrap();
    let _back = merger_on(listener, MergerMode::Summarize);
    let reply = call(&mut c, json!(3)).await.expect("merged again");
    assert_eq!(reply.body_json().unwrap()["request"], json!(3));
}

/// A merge the merger did not take (its connection went away first: GOAWAY
/// naming no stream) goes again on a new connection; the caller sees only
/// the merged reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_the_merger_did_not_take_goes_again_on_a_new_connection() {
    let ls = leaves(2).await;
    let m = merger(MergerMode::Summarize).await;
    let (front, accepted) = goes_away_once(m.addr).await;
    let mut a = shard_args(&ls);
    a.extend(args(&["--merge", &front.to_string()]));
    let g = GatherProc::start(&a);
    let mut c = g.client().await;
    let reply = call(&mut c, json!(7))
        .await
        .expect("merged on the second connection");
    assert_eq!(reply.body_json().unwrap()["request"], json!(7));
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Later merges keep to the new connection.
    for i in 0..5 {
        call(&mut c, json!(i)).await.expect("merged");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_accepts_partial_results_and_fails_when_unreachable() {
    let ls = leaves(2).await;
    let mut a = shard_args(&ls);
    a.extend(args(&["--shard", &dead_addr()]));

    let mut ok = a.clone();
    ok.extend(args(&["--policy", "quorum=2"]));
    let g = GatherProc::start(&ok);
    let reply = call(&mut g.client().await, json!(1)).await.expect("2 of 3");
    let body = reply.body_json().unwrap();
    assert_eq!(body[0]["shard"], 0);
    assert_eq!(body[1]["shard"], 1);
    assert!(body[2].is_null());

    let mut strict = a.clone();
    strict.extend(args(&["--policy", "quorum=3"]));
    let g = GatherProc::start(&strict);
    let err = call(&mut g.client().await, json!(1))
        .await
        .expect_err("3 of 3 impossible");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("quorum of 3"), "{err:?}");
    assert!(err.message().contains("shard 2"), "{err:?}");
}

/// Calls with a deadline of `ms` milliseconds a gather that cannot answer in
/// time: DEADLINE_EXCEEDED, its message naming `why`, well before 2 s.
async fn past_deadline(c: &mut HandlerClient<Channel>, ms: u64, why: &str) {
    let mut req = tonic::Request::new(mp_proto::v1::Request::json(json!(1)));
    req.set_timeout(Duration::from_millis(ms));
    let t = Instant::now();
    let err = c.handle(req).await.expect_err("deadline");
    let took = t.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains(why), "{err:?}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_deadline_shorter_than_a_slow_leaf() {
    let mut ls = leaves(1).await;
    ls.push(
        leaf(LeafSpec {
            shard: 1,
            delay: Duration::from_secs(5),
            ..LeafSpec::default()
        })
        .await,
    );
    let g = GatherProc::start(&shard_args(&ls));
    let mut c = g.client().await;
    past_deadline(&mut c, 400, "shard 1").await;
    let stats = ls[1].stats.clone();
    assert!(
        eventually(Duration::from_secs(3), || stats
            .cancelled
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await,
        "the slow leaf's call was not cancelled"
    );
}

/// One shard has no fan-out timer: its leaf connection ends the call at the
/// deadline (the leaf's own, then the caller's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_shard_is_bounded_by_the_deadlines_too() {
    let slow = slow_leaf(0, Duration::from_secs(30)).await;
    let mut a = shard_args(std::slice::from_ref(&slow));
    a.extend(args(&["--leaf-timeout", "300ms"]));
    let g = GatherProc::start(&a);
    let mut c = g.client().await;
    let t = Instant::now();
    let err = call(&mut c, json!(1)).await.expect_err("deadline");
    let took = t.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("shard 0"), "{err:?}");
    assert!(err.message().contains("--leaf-timeout 300ms"), "{err:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    let cancelled = |n| {
        let stats = slow.stats.clone();
        eventually(Duration::from_secs(3), move || {
            stats.cancelled.load(std::sync::atomic::Ordering::SeqCst) == n
        })
    };
    assert!(cancelled(1).await, "the slow leaf's call was not cancelled");

    // The caller's shorter deadline bounds it the same way.
    past_deadline(&mut c, 200, "caller's").await;
    assert!(cancelled(2).await, "the slow leaf's call was not cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedge_to_a_second_replica_wins_and_cancels_the_loser() {
    let slow = leaf(LeafSpec {
        shard: 0,
        delay: Duration::from_secs(2),
        name: "slow",
        ..LeafSpec::default()
    })
    .await;
    let fast = leaf(LeafSpec {
        shard: 0,
        name: "fast",
        ..LeafSpec::default()
    })
    .await;
    let other = leaves(2).await;
    let a = args(&[
        "--shard",
        &format!("{},{}", slow.addr(), fast.addr()),
        "--shard",
        &other[1].addr(),
        "--hedge-after",
        "50ms",
    ]);
    let g = GatherProc::start_with(&a, true);
    // Hedging needs both replicas of shard 0 connected.
    g.wait_healthy(3);
    let mut c = g.client().await;
    // Round robin sends one of the first two calls to `slow` first.
    for _ in 0..2 {
        let t = Instant::now();
        let reply = call(&mut c, json!(1)).await.expect("hedged answer");
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "took {took:?}: the hedge did not win"
        );
        let body = reply.body_json().unwrap();
        assert_eq!(body[0]["name"], "fast", "{body}");
    }
    let stats = slow.stats.clone();
    let to_slow = stats.started.load(std::sync::atomic::Ordering::SeqCst);
    assert!(to_slow >= 1, "no call went to the slow replica");
    assert!(
        eventually(Duration::from_secs(1), || stats
            .cancelled
            .load(std::sync::atomic::Ordering::SeqCst)
            == to_slow)
        .await,
        "the losing calls to the slow replica were not cancelled"
    );
    let metrics = g.admin_get("/metrics");
    assert!(
        metrics.contains(&format!(
            "mp_gather_hedges_sent_total{{shard=\"0\"}} {to_slow}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "mp_gather_hedges_won_total{{shard=\"0\"}} {to_slow}"
        )),
        "{metrics}"
    );
    // One leaf-client connection to each replica called (both of shard 0's).
    let gauges: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("mp_gather_leaf_endpoint_call_connections{"))
        .collect();
    assert!(gauges.len() >= 2, "{metrics}");
    assert!(gauges.iter().all(|l| l.ends_with(" 1")), "{gauges:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_reducer_answers_with_the_fastest_shard() {
    let slow = leaf(LeafSpec {
        shard: 0,
        delay: Duration::from_secs(3),
        ..LeafSpec::default()
    })
    .await;
    let fast = leaf(LeafSpec {
        shard: 1,
        ..LeafSpec::default()
    })
    .await;
    let ls = [slow, fast];
    let mut a = shard_args(&ls);
    a.extend(args(&["--reducer", "first"]));
    let g = GatherProc::start(&a);
    let t = Instant::now();
    let reply = call(&mut g.client().await, json!(1)).await.expect("first");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(reply.body_json().unwrap()["shard"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merger_errors_and_outages_give_clear_statuses() {
    let ls = leaves(2).await;
    let failing = merger(MergerMode::Fail(
        Code::InvalidArgument,
        "bins do not add up",
    ))
    .await;
    let mut a = shard_args(&ls);
    a.extend(args(&["--merge", &failing.addr()]));
    let g = GatherProc::start(&a);
    let err = call(&mut g.client().await, json!(1))
        .await
        .expect_err("merger fails");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("merger"), "{err:?}");
    assert!(err.message().contains("bins do not add up"), "{err:?}");

    let mut a = shard_args(&ls);
    a.extend(args(&["--merge", &dead_addr()]));
    let g = GatherProc::start(&a);
    let err = call(&mut g.client().await, json!(1))
        .await
        .expect_err("merger down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("merger"), "{err:?}");
    assert!(err.message().contains("not reachable"), "{err:?}");
}

/// The caller's deadline bounds the merge too: a merger that never answers
/// is given up at the deadline, and the status says which part was late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_deadline_bounds_a_merger_that_never_answers() {
    let ls = leaves(2).await;
    let m = merger(MergerMode::Hang).await;
    let mut a = shard_args(&ls);
    a.extend(args(&["--merge", &m.addr()]));
    let g = GatherProc::start(&a);
    past_deadline(&mut g.client().await, 500, "merger").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concat_merges_replies_of_another_proto() {
    use support::catalog::{catalog_client::CatalogClient, SearchRequest};
    let ls = vec![
        catalog_leaf(0, &["red apple", "green pear"]).await,
        catalog_leaf(1, &["red cherry"]).await,
        catalog_leaf(2, &["blue plum", "red currant"]).await,
    ];
    // No --reducer: concat is the default for methods other than mp.v1's.
    let g = GatherProc::start(&shard_args(&ls));
    let mut c = CatalogClient::connect(g.url()).await.unwrap();
    let reply = c
        .search(SearchRequest {
            query: "red".into(),
        })
        .await
        .expect("concatenated")
        .into_inner();
    // Repeated fields append in shard order; scalars: the last shard wins.
    assert_eq!(reply.items, ["red apple", "red cherry", "red currant"]);
    assert_eq!(reply.source, "shard-2");

    // json-array does not apply to another proto: a clear error.
    let mut a = shard_args(&ls);
    a.extend(args(&["--reducer", "json-array"]));
    let g = GatherProc::start(&a);
    let mut c = CatalogClient::connect(g.url()).await.unwrap();
    let err = c
        .search(SearchRequest { query: "x".into() })
        .await
        .expect_err("json-array on catalog");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("--reducer concat"), "{err:?}");
}

/// A merger merges calls of a proto mp-gather does not know: it gets the
/// request and each shard's reply as raw payloads (the method named in the
/// request's `mp-method`), and answers the reply message as a raw body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merger_merges_calls_of_another_proto_as_raw_payloads() {
    use support::catalog::{catalog_client::CatalogClient, SearchRequest};
    let ls = vec![
        catalog_leaf(0, &["red plum", "green pear"]).await,
        catalog_leaf(1, &["red apple"]).await,
    ];
    let m = merger(MergerMode::Catalog).await;
    let mut a = shard_args(&ls);
    a.extend(args(&["--shard", &dead_addr()]));
    a.extend(args(&["--merge", &m.addr(), "--policy", "best-effort"]));
    let g = GatherProc::start(&a);
    let mut c = CatalogClient::connect(g.url()).await.unwrap();
    let reply = c
        .search(SearchRequest {
            query: "red".into(),
        })
        .await
        .expect("merged")
        .into_inner();
    assert_eq!(reply.items, ["red apple", "red plum"]);
    assert_eq!(reply.source, "merged \"red\", failed [2]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_of_leaves_are_their_status() {
    let ls = leaves(2).await;
    let g = GatherProc::start(&shard_args(&ls));
    let channel = tonic::transport::Channel::from_shared(g.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let err = grpc
        .unary::<_, bytes::Bytes, _>(
            tonic::Request::new(bytes::Bytes::new()),
            http::uri::PathAndQuery::from_static("/no.Such/Method"),
            mp_gather::grpc::BytesCodec,
        )
        .await
        .expect_err("leaves do not know it");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("failed: UNIMPLEMENTED"), "{err:?}");
}

#[test]
fn bad_flags_give_one_clear_line() {
    let out = mp_testkit::output_within(
        std::process::Command::new(mp_testkit::bin("mp-gather")).args([
            "--shard",
            "127.0.0.1:1",
            "--policy",
            "most",
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unknown policy"), "{err}");

    let out = mp_testkit::output_within(
        std::process::Command::new(mp_testkit::bin("mp-gather")).args(["--listen", "127.0.0.1:0"]),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no shards"), "{err}");

    let out = mp_testkit::output_within(
        std::process::Command::new(mp_testkit::bin("mp-gather")).args([
            "--shard",
            "127.0.0.1:1",
            "--threads",
            "0",
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--threads"), "{err}");

    let out = mp_testkit::output_within(
        std::process::Command::new(mp_testkit::bin("mp-gather")).arg("--help"),
        Duration::from_secs(10),
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--hedge-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_by_host_name_and_replica_lists() {
    let ls = leaves(2).await;
    let replica = leaf(LeafSpec {
        shard: 1,
        name: "second",
        ..LeafSpec::default()
    })
    .await;
    let a = args(&[
        "--shard",
        &format!("localhost:{}", ls[0].addr.port()),
        "--shard",
        &format!("{},localhost:{}", ls[1].addr(), replica.addr.port()),
    ]);
    let g = GatherProc::start_with(&a, true);
    g.wait_healthy(3);
    let mut c = g.client().await;
    let mut names = Vec::new();
    for _ in 0..4 {
        let body = call(&mut c, json!(1))
            .await
            .expect("gathered")
            .body_json()
            .unwrap();
        assert_eq!(body[0]["shard"], 0);
        names.push(body[1]["name"].as_str().unwrap().to_string());
    }
    // Round robin between shard 1's two replicas.
    assert!(
        names[0] != names[1] && names[0] == names[2] && names[1] == names[3],
        "{names:?}"
    );
}
