//! A busy caller connection's own leaf connections (`mp_gather::own`): made
//! after `OWN_AFTER` calls on one connection, answering as the shared ones
//! do (shard order, deadlines, cancellation), counted in the replicas'
//! call-connection gauges, and closed when the caller's connection ends.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use mp_gather::own::OWN_AFTER;
use serde_json::json;
use support::*;
use tonic::Code;

/// The `mp_gather_leaf_endpoint_call_connections` gauges' values.
fn call_connections(g: &GatherProc) -> Vec<u64> {
    g.admin_get("/metrics")
        .lines()
        .filter(|l| l.starts_with("mp_gather_leaf_endpoint_call_connections{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

async fn shards_in_order(
    c: &mut mp_proto::v1::handler_client::HandlerClient<tonic::transport::Channel>,
    i: u64,
) {
    let reply = call(c, json!(i)).await.expect("answered");
    let body = reply.body_json().unwrap();
    let shards: Vec<u64> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["shard"].as_u64().unwrap())
        .collect();
    assert_eq!(shards, [0, 1], "call {i}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_caller_connection_gets_leaf_connections_of_its_own() {
    let ls = leaves(2).await;
    let g = GatherProc::start_with(&shard_args(&ls), true);
    let mut busy = g.client().await;
    for i in 0..OWN_AFTER {
        shards_in_order(&mut busy, i).await;
    }
    // The shared connections only, one per replica.
    assert_eq!(call_connections(&g), [1, 1]);
    for i in 0..20 {
        shards_in_order(&mut busy, OWN_AFTER + i).await;
    }
    // Now its own too.
    assert_eq!(call_connections(&g), [2, 2]);
    // Another caller connection making a few calls uses the shared ones.
    let mut brief = g.client().await;
    for i in 0..3 {
        shards_in_order(&mut brief, i).await;
    }
    assert_eq!(call_connections(&g), [2, 2]);
    // The busy caller goes: its leaf connections close with it.
    drop(busy);
    assert!(
        eventually(Duration::from_secs(5), || call_connections(&g) == [1, 1]).await,
        "{:?}",
        call_connections(&g)
    );
    shards_in_order(&mut brief, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_leaf_connections_keep_deadlines_and_cancel_late_calls() {
    let slow = slow_leaf(0, Duration::from_secs(30)).await;
    let mut a = shard_args(std::slice::from_ref(&slow));
    a.extend(args(&["--leaf-timeout", "200ms"]));
    let g = GatherProc::start_with(&a, true);
    let c = g.client().await;
    let batch = |n: u64| {
        let calls = (0..n).map(|i| {
            let mut c = c.clone();
            async move { call(&mut c, json!(i)).await }
        });
        futures::future::join_all(calls)
    };
    // On the shared connection, then (past OWN_AFTER) on the caller's own.
    for (n, own) in [(OWN_AFTER, false), (5, true)] {
        let started = std::time::Instant::now();
        for r in batch(n).await {
            let err = r.expect_err("the leaf is too slow");
            assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
            assert!(err.message().contains("--leaf-timeout 200ms"), "{err:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(3), "own: {own}");
    }
    let stats = slow.stats.clone();
    let all = OWN_AFTER as usize + 5;
    assert!(
        eventually(Duration::from_secs(5), || stats
            .cancelled
            .load(Ordering::SeqCst)
            == all)
        .await,
        "the leaf saw {} of {all} calls cancelled",
        stats.cancelled.load(Ordering::SeqCst)
    );
    assert_eq!(call_connections(&g), [2]);
}

/// Calls woken from another runtime thread (a shared leaf connection's task
/// there) and from their own connection's task alike are answered: no call
/// is left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_callers_on_two_threads_are_all_answered() {
    let ls = leaves(2).await;
    let mut a = shard_args(&ls);
    a.extend(args(&["--threads", "2"]));
    let g = GatherProc::start_with(&a, true);
    let callers = (0..4).map(|_| {
        let g = &g;
        async move {
            let c = g.client().await;
            // Past OWN_AFTER on each connection, 8 at a time.
            let calls = (0..OWN_AFTER + 40).map(|i| {
                let mut c = c.clone();
                async move { shards_in_order(&mut c, i).await }
            });
            futures::stream::iter(calls)
                .buffer_unordered(8)
                .collect::<Vec<()>>()
                .await;
            c
        }
    });
    let _held = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(callers))
        .await
        .expect("every call answered");
    // The shared connection and the four callers' own, per replica.
    assert_eq!(call_connections(&g), [5, 5]);
}

/// A replica that leaves the topology while a busy caller holds its own
/// connection to it: the connection closes once its calls are done (the
/// replica may keep running, as one being drained does), and the calls go on
/// to the replica that stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_leaf_connections_to_a_replica_that_left_are_closed() {
    let dir = std::env::temp_dir().join(format!("mp-gather-own-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("replicas.shards");
    let stays = leaf(LeafSpec {
        name: "stays",
        ..LeafSpec::default()
    })
    .await;
    let leaves = leaf(LeafSpec {
        name: "leaves",
        ..LeafSpec::default()
    })
    .await;
    write_file(&file, &format!("{},{}\n", stays.addr(), leaves.addr()));
    let g = GatherProc::start_with(&args(&["--shards-file", file.to_str().unwrap()]), true);
    g.wait_healthy(1);
    let mut busy = g.client().await;
    let mut named = std::collections::HashSet::new();
    for i in 0..OWN_AFTER + 20 {
        let reply = call(&mut busy, json!(i)).await.expect("answered");
        named.insert(reply.body_json().unwrap()[0]["name"].to_string());
    }
    assert_eq!(named.len(), 2, "both replicas answer: {named:?}");
    let port = leaves.addr.port();
    // The pool's, the shared call connection and the caller's own.
    let before = connections_to(port);
    assert!(before >= 2, "{before} connections to the replica");

    write_file(&file, &format!("{}\n", stays.addr()));
    assert!(
        eventually(Duration::from_secs(10), || generation(&g) == Some(2)).await,
        "the gather did not switch to the new file"
    );
    let served = leaves.stats.finished.load(Ordering::SeqCst);
    let open = call_until_closed(&mut busy, ("name", "stays"), || connections_to(port)).await;
    assert_eq!(
        open, 0,
        "connections to the replica that left (of {before})"
    );
    assert_eq!(leaves.stats.finished.load(Ordering::SeqCst), served);
    assert!(connections_to(stays.addr.port()) >= 2);
    let _ = std::fs::remove_dir_all(&dir);
}
