//! mp-lb when things go wrong: backends killed or stopped under load, coming
//! back, failing health checks, none left; and clients that send garbage.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{say, Backend, Lb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// Calls `Say` from `workers` concurrent loops until `stop`; returns every
/// call's (start time, result).
fn load(
    lb: &Lb,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, Result<String, tonic::Status>)>> {
    let addr = lb.addr;
    tokio::spawn(async move {
        let c = support::client(addr).await;
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (mut c, stop, out) = (c.clone(), stop.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let mut req = tonic::Request::new(say(b"load"));
                    req.set_timeout(Duration::from_secs(5));
                    let r = c.say(req).await.map(|r| r.into_inner().server);
                    out.lock().unwrap().push((t, r));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(out).unwrap().into_inner().unwrap()
    })
}

fn servers(results: &[(Instant, Result<String, tonic::Status>)], after: Instant) -> Vec<String> {
    let mut v: Vec<String> = results
        .iter()
        .filter(|(t, _)| *t > after)
        .filter_map(|(_, r)| r.as_ref().ok().cloned())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_ejected_then_no_call_fails_and_it_is_used_again_when_back() {
    let mut bs = [
        Backend::start("k0"),
        Backend::start("k1"),
        Backend::start("k2"),
    ];
    let lb = Lb::start(&[&bs[0], &bs[1], &bs[2]], &["--health-interval", "200ms"]).await;
    lb.wait_ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&lb, 8, stop.clone());

    tokio::time::sleep(Duration::from_millis(400)).await;
    let killed_at = Instant::now();
    let addr = bs[0].addr;
    bs[0].kill();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let back_at = Instant::now();
    bs[0] = Backend::start_on("k0-again", addr);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.store(true, Ordering::Relaxed);
    let results = running.await.unwrap();

    // Calls in flight on the killed backend may fail; once it is out (the
    // connection closed), none may.
    // (A generous bound: CI machines are slow and shared.)
    let settled = killed_at + Duration::from_millis(1000);
    let late_failures: Vec<_> = results
        .iter()
        .filter(|(t, r)| *t > settled && r.is_err())
        .map(|(_, r)| r.as_ref().unwrap_err().clone())
        .collect();
    assert!(
        late_failures.is_empty(),
        "calls failed after ejection: {late_failures:?}"
    );
    let early = results
        .iter()
        .filter(|(t, r)| *t <= settled && r.is_err())
        .count();
    for (_, r) in results.iter().filter(|(_, r)| r.is_err()) {
        assert_eq!(r.as_ref().unwrap_err().code(), Code::Unavailable, "{r:?}");
    }
    let total = results.len();
    assert!(total > 500, "only {total} calls under load");

    // While it was dead, only the other two answered...
    let dead_window: Vec<_> = results
        .iter()
        .filter(|(t, _)| *t > settled && *t < back_at)
        .filter_map(|(_, r)| r.as_ref().ok().cloned())
        .collect();
    assert!(
        !dead_window.iter().any(|s| s == "k0"),
        "killed backend still answered"
    );
    // ...and once back, it is used again.
    let last = servers(&results, back_at + Duration::from_millis(2500));
    assert_eq!(last, ["k0-again", "k1", "k2"], "{early} early failures");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_stopped_gracefully_under_load_fails_no_call() {
    let mut bs = [
        Backend::start("t0"),
        Backend::start("t1"),
        Backend::start("t2"),
    ];
    let lb = Lb::start(&[&bs[0], &bs[1], &bs[2]], &["--health-interval", "200ms"]).await;
    lb.wait_ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&lb, 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(400)).await;
    bs[0].terminate();
    let stopped_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let results = running.await.unwrap();
    let failures: Vec<_> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} calls failed: {:?}",
        failures.len(),
        results.len(),
        failures.first()
    );
    assert_eq!(
        servers(&results, stopped_at + Duration::from_millis(100)),
        ["t1", "t2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_checks_take_a_backend_out_and_passing_ones_bring_it_back() {
    let bs = [Backend::start("h0"), Backend::start("h1")];
    let lb = Lb::start(
        &[&bs[0], &bs[1]],
        &["--health-interval", "100ms", "--unhealthy-threshold", "1"],
    )
    .await;
    lb.wait_ready().await;
    let mut c = lb.client().await;
    bs[0]
        .health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..20 {
        assert_eq!(c.say(say(b"x")).await.unwrap().into_inner().server, "h1");
    }
    bs[0]
        .health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.push(c.say(say(b"x")).await.unwrap().into_inner().server);
    }
    assert!(seen.iter().any(|s| s == "h0"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_backend_gives_unavailable_at_once() {
    let mut b = Backend::start("gone");
    let lb = Lb::start(&[&b], &[]).await;
    lb.wait_ready().await;
    let mut c = lb.client().await;
    c.say(say(b"x")).await.unwrap();
    b.kill();
    // Wait until mp-lb has seen it go (its readiness follows).
    let t = Instant::now();
    while support::admin_get(lb.admin, "/ready").await.0 != 503 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the dead backend was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let t = Instant::now();
        let st = c.say(say(b"x")).await.unwrap_err();
        assert_eq!(st.code(), Code::Unavailable);
        assert!(st.message().contains("no healthy endpoint"), "{st:?}");
        assert!(st.message().contains(&b.addr.to_string()), "{st:?}");
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
    }

    // A backend that was never up, from the start.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lb2 = Lb::start_args(vec![
        "mp-lb".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--backend".into(),
        nobody.to_string(),
    ])
    .await;
    let mut c = lb2.client().await;
    let t = Instant::now();
    let st = c.say(say(b"x")).await.unwrap_err();
    assert_eq!(st.code(), Code::Unavailable);
    assert!(st.message().contains("no healthy endpoint"), "{st:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

/// Sends `bytes` on a fresh connection and returns what comes back before
/// the proxy closes it (bounded).
async fn raw(lb: &Lb, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_http1_and_oversized_headers_get_an_error_and_the_proxy_lives_on() {
    let b = Backend::start("ok");
    let lb = Lb::start(&[&b], &[]).await;
    let mut c = lb.client().await;

    // Random bytes.
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = raw(&lb, &garbage).await;
    // An HTTP/2 preface followed by nonsense frames.
    let mut bad_h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bad_h2.extend_from_slice(&[0, 0, 4, 0xff, 0xff, 0, 0, 0, 1, 1, 2, 3, 4]);
    bad_h2.extend_from_slice(&garbage);
    let _ = raw(&lb, &bad_h2).await;
    // HTTP/1.1: told plainly that this port speaks HTTP/2.
    let reply = raw(
        &lb,
        b"GET /x HTTP/1.1\r\nhost: lb\r\nconnection: close\r\n\r\n",
    )
    .await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 505"), "{reply}");
    assert!(reply.contains("HTTP/2"), "{reply}");

    // A header block far over the limit.
    let mut req = tonic::Request::new(say(b"x"));
    req.metadata_mut()
        .insert("x-huge", "a".repeat(256 * 1024).parse().unwrap());
    assert!(c.say(req).await.is_err(), "oversized header accepted");

    // Still serving, on old and new connections.
    let mut c2 = lb.client().await;
    assert_eq!(c2.say(say(b"x")).await.unwrap().into_inner().server, "ok");
    let mut c = lb.client().await;
    assert_eq!(c.say(say(b"y")).await.unwrap().into_inner().payload, b"y");
}
