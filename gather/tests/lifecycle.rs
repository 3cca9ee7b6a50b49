//! The gather process around the calls: malformed input, admin endpoints and
//! metrics, graceful shutdown on SIGTERM.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use support::*;

/// Posts `body` to `path` on the gather port as a gRPC request over h2c,
/// with raw control of the bytes; returns the HTTP status and the
/// grpc-status and grpc-message (from headers or trailers).
async fn raw_post(
    g: &GatherProc,
    path: &str,
    content_type: &str,
    body: &'static [u8],
) -> (u16, Option<String>, Option<String>) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("{}{path}", g.url()))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answer in time")
        .expect("HTTP answer");
    let status = resp.status().as_u16();
    let mut headers = resp.headers().clone();
    let collected = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body");
    if let Some(t) = collected.trailers() {
        headers.extend(t.clone());
    }
    let get = |k: &str| headers.get(k).map(|v| v.to_str().unwrap().to_string());
    (status, get("grpc-status"), get("grpc-message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_clear_statuses() {
    let ls = leaves(2).await;
    let g = GatherProc::start(&shard_args(&ls));
    let path = "/mp.v1.Handler/Handle";

    // A frame header announcing 10 bytes, then only 2.
    let (_, code, msg) = raw_post(&g, path, "application/grpc", &[0, 0, 0, 0, 10, 1, 2]).await;
    assert_eq!(
        code.as_deref(),
        Some("13"),
        "INTERNAL expected, got {code:?} {msg:?}"
    );
    // Half a frame header.
    let (_, code, _) = raw_post(&g, path, "application/grpc", &[0, 0, 0]).await;
    assert_eq!(code.as_deref(), Some("13"));
    // A compressed frame, though no compression was negotiated.
    let (_, code, msg) = raw_post(&g, path, "application/grpc", &[1, 0, 0, 0, 1, 0]).await;
    assert!(code.is_some_and(|c| c != "0"), "{msg:?}");
    // A message declared larger than the 4 MiB limit.
    let (_, code, msg) = raw_post(&g, path, "application/grpc", &[0, 0x7f, 0, 0, 0]).await;
    assert_eq!(
        code.as_deref(),
        Some("8"),
        "RESOURCE_EXHAUSTED expected: {msg:?}"
    );
    assert!(msg.unwrap_or_default().contains("larger"));
    // A frame that is not an mp.v1.Request: the leaves refuse it.
    let (_, code, msg) = raw_post(&g, path, "application/grpc", &[0, 0, 0, 0, 2, 0xff, 0xff]).await;
    assert!(code.is_some_and(|c| c != "0"), "{msg:?}");
    // Not gRPC at all.
    let (status, _, _) = raw_post(&g, path, "text/plain", b"hello").await;
    assert_eq!(status, 415);

    // And the gather still serves good calls afterwards.
    call(&mut g.client().await, json!(1))
        .await
        .expect("still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_serves_metrics_ready_and_live() {
    let ls = leaves(2).await;
    let mut a = shard_args(&ls);
    a.extend(args(&["--shard", &dead_addr(), "--policy", "best-effort"]));
    let g = GatherProc::start_with(&a, true);
    // Ready once enough shards are connected for best-effort (one).
    g.wait_healthy(2);
    assert!(
        eventually(Duration::from_secs(5), || g
            .admin_get("/ready")
            .starts_with("HTTP/1.1 200"))
        .await
    );
    assert!(g.admin_get("/live").starts_with("HTTP/1.1 200"));
    call(&mut g.client().await, json!(1))
        .await
        .expect("partial");
    let m = g.admin_get("/metrics");
    for want in [
        "mp_gather_requests_total{code=\"OK\"} 1",
        "mp_gather_leaf_calls_total{shard=\"0\",code=\"OK\"} 1",
        "mp_gather_leaf_calls_total{shard=\"2\",code=\"UNAVAILABLE\"} 1",
        "mp_gather_leaf_duration_seconds_count{shard=\"1\"} 1",
        "mp_gather_request_duration_seconds_count 1",
    ] {
        assert!(m.contains(want), "{want} missing from:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_calls_in_flight_then_exits_zero() {
    let slow = leaf(LeafSpec {
        delay: Duration::from_millis(800),
        ..LeafSpec::default()
    })
    .await;
    // Two runtime threads (the default is one) drain the same way.
    let mut g = GatherProc::start_with(
        &args(&["--shard", &slow.addr(), "--grace", "5s", "--threads", "2"]),
        true,
    );
    let mut c = g.client().await;
    let in_flight = tokio::spawn(async move { call(&mut c, json!(1)).await });
    // Let the call reach the leaf, then ask the gather to stop.
    let stats = slow.stats.clone();
    assert!(
        eventually(Duration::from_secs(5), || stats
            .started
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await
    );
    g.child.signal("TERM");
    let reply = in_flight
        .await
        .unwrap()
        .expect("the call in flight completes");
    assert_eq!(reply.body_json().unwrap()[0]["shard"], 0);
    let status = tokio::task::spawn_blocking(move || {
        let s = g.child.wait_timeout(Duration::from_secs(10));
        (s, g)
    })
    .await
    .unwrap()
    .0;
    let status = status.expect("mp-gather exited after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// While mp-gather drains after SIGTERM with a call in flight to a slow leaf
/// (the faulty example): a health watcher (as a load balancer keeps one)
/// hears NOT_SERVING and its stream ends, new connections are refused,
/// `/ready` answers 503; the call in flight still completes OK, and the
/// process exits 0 as soon as it has, not at the end of the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_says_not_serving_and_finishes_the_call_in_flight() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let delay = Duration::from_millis(2500);
    let slow = example("faulty", &[("MP_DELAY_MS", &delay.as_millis().to_string())]);
    let grace = Duration::from_secs(30);
    let mut g = GatherProc::start_with(&args(&["--shard", &slow.addr(), "--grace", "30s"]), true);
    g.wait_healthy(1);

    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(g.url())
            .unwrap()
            .connect()
            .await
            .expect("connect for health"),
    );
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let before = health.check(check("mp.v1.Handler")).await.expect("Check");
    assert_eq!(before.into_inner().status(), ServingStatus::Serving);
    let mut watch = health.watch(check("")).await.expect("Watch").into_inner();
    let first = watch.message().await.expect("a status").expect("a status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let mut c = g.client().await;
    let start = std::time::Instant::now();
    let in_flight = tokio::spawn(async move { call(&mut c, json!({"in": "flight"})).await });
    // Stop once the leaf has the call (mp-gather counted the request to it).
    let sent = || {
        g.admin_get("/metrics")
            .lines()
            .any(|l| l.starts_with("mp_gather_leaf_requests_total{") && l.ends_with(" 1"))
    };
    assert!(
        eventually(Duration::from_secs(5), sent).await,
        "the call did not reach the leaf"
    );
    g.child.signal("TERM");

    // The watcher hears NOT_SERVING, then its stream ends, so it does not
    // hold the connection (and the drain) open.
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the watcher heard of the drain within 5 s")
        .expect("a status");
    assert_eq!(next.map(|m| m.status()), Some(ServingStatus::NotServing));
    let end = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the watch stream ended within 5 s");
    assert!(matches!(end, Ok(None)), "{end:?}");
    // New connections are refused; the admin port says not ready.
    let addr = g.addr;
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(
            addr
        )
        .is_err())
        .await,
        "the gather port still accepts connections while draining"
    );
    assert!(g.admin_get("/ready").starts_with("HTTP/1.1 503"));
    assert!(
        !in_flight.is_finished() && start.elapsed() < delay,
        "the checks above must run while the call is in flight: make the delay longer"
    );

    let reply = in_flight
        .await
        .unwrap()
        .expect("the call in flight completes OK");
    assert_eq!(
        reply.body_json().unwrap()[0]["request"],
        json!({"in": "flight"})
    );
    let done = start.elapsed();
    assert!(done >= delay, "{done:?}");
    let status = tokio::task::spawn_blocking(move || g.child.wait_timeout(grace / 2))
        .await
        .unwrap()
        .expect("mp-gather exited well before the end of the grace period");
    assert!(status.success(), "exit status {status}");
    drop(watch);
}

/// A replica stopped gracefully (SIGTERM: it sends GOAWAY, refuses new
/// streams and finishes what it has) while calls flow: the calls it refused
/// unprocessed go to the shard's other replica, so none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_gracefully_under_load_fails_no_call() {
    let slow = [("MP_DELAY_MS", "5")];
    let mut r0 = example("faulty", &slow);
    let r1 = example("faulty", &slow);
    let g = GatherProc::start_with(
        &args(&["--shard", &format!("{},{}", r0.addr(), r1.addr())]),
        true,
    );
    g.wait_healthy(2);
    let stop_at = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut load = Vec::new();
    for _ in 0..4 {
        let mut c = g.client().await;
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while tokio::time::Instant::now() < stop_at {
                match call(&mut c, json!({"n": 1})).await {
                    Ok(_) => ok += 1,
                    Err(s) => failed.push(s),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    r0.child.signal("TERM");
    let (mut ok, mut failed) = (0, Vec::new());
    for t in load {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} calls failed, first: {:?}",
        failed.len(),
        ok + failed.len(),
        failed.first()
    );
    assert!(ok > 50, "only {ok} calls made it");
    let exited = r0.child.wait_timeout(Duration::from_secs(10));
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
}
