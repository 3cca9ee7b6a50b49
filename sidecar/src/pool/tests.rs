use super::*;
use std::collections::BTreeSet;
use std::convert::Infallible;

/// A minimal h2c server answering every request with `grpc-status: 0` and
/// its own name in a header.
async fn server(name: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let mut r = Response::new(Body::Empty);
                    r.headers_mut().insert("grpc-status", "0".parse().unwrap());
                    r.headers_mut().insert("x-server", name.parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn request() -> Request<Body> {
    Request::builder()
        .uri("http://backend/x.Y/Z")
        .body(Body::Empty)
        .unwrap()
}

fn cfg() -> PoolConfig {
    PoolConfig {
        health: HealthConfig {
            interval: None,
            ..HealthConfig::default()
        },
        ..PoolConfig::default()
    }
}

#[test]
fn backoff_doubles_up_to_the_max_with_jitter() {
    let b = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    for (n, nominal) in [
        (0, 100),
        (1, 200),
        (2, 400),
        (3, 800),
        (4, 1000),
        (40, 1000),
    ] {
        let d = b.delay(n);
        let nominal = Duration::from_millis(nominal);
        assert!(d <= nominal && d >= nominal.mul_f64(0.75), "{n}: {d:?}");
    }
}

#[tokio::test]
async fn round_robin_over_endpoints_and_answers_at_once_when_none() {
    let a = server("a").await;
    let b = server("b").await;
    let (tx, rx) = watch::channel(Arc::new(BTreeSet::from([a, b])));
    let pool = Pool::new("test", cfg(), PoolMetrics::unregistered(), rx);
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let sent = pool.send(request()).await.expect("sent");
        let name = sent.response.headers()["x-server"]
            .to_str()
            .unwrap()
            .to_string();
        *seen.entry(name).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&5), "{seen:?}");

    // An endpoint nobody listens on: refused at once, never picked.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    tx.send_replace(Arc::new(BTreeSet::from([dead])));
    let t = Instant::now();
    let err = loop {
        match pool.send(request()).await {
            Err(e) => break e,
            Ok(_) => assert!(t.elapsed() < Duration::from_secs(5), "old endpoints kept"),
        }
    };
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let msg = err.to_string();
    assert!(
        msg.contains("no healthy endpoint") && msg.contains(&dead.to_string()),
        "{msg}"
    );
}

#[tokio::test]
async fn unavailable_in_a_row_ejects_then_readmits() {
    let a = server("a").await;
    let (_tx, rx) = watch::channel(Arc::new(BTreeSet::from([a])));
    let mut c = cfg();
    c.eject_after_unavailable = 3;
    c.ejection = Backoff {
        base: Duration::from_millis(200),
        max: Duration::from_millis(200),
    };
    let pool = Pool::new("test", c, PoolMetrics::unregistered(), rx);
    assert!(pool.wait_available(Duration::from_secs(2)).await);
    let ep = pool.pick().unwrap();
    ep.record(code::UNAVAILABLE, Duration::ZERO);
    ep.record(code::UNAVAILABLE, Duration::ZERO);
    assert!(ep.is_available(), "two are not enough");
    ep.record(code::UNAVAILABLE, Duration::ZERO);
    assert!(!ep.is_available());
    assert_eq!(ep.state(), "ejected");
    assert!(pool.send(request()).await.is_err());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(ep.is_available(), "back after the ejection time");
    pool.send(request()).await.expect("readmitted");
}
