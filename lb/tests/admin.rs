//! mp-lb's admin port and its discovery sources other than --backend.

mod support;

use std::time::{Duration, Instant};

use support::{admin_get, say, Backend, Lb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_ready_and_live() {
    let b = Backend::start("m");
    let lb = Lb::start(&[&b], &[]).await;
    assert_eq!(admin_get(lb.admin, "/live").await.0, 200);
    lb.wait_ready().await;
    let mut c = lb.client().await;
    for _ in 0..5 {
        c.say(say(b"x")).await.unwrap();
    }
    let req = support::pb::EchoRequest {
        fail_code: 14,
        fail_message: "busy".into(),
        ..Default::default()
    };
    c.say(req).await.unwrap_err();

    let (st, text) = admin_get(lb.admin, "/metrics").await;
    assert_eq!(st, 200);
    let ep = b.addr.to_string();
    for needle in [
        format!(r#"mp_lb_requests_total{{endpoint="{ep}"}} 6"#),
        format!(r#"mp_lb_responses_total{{endpoint="{ep}",grpc_code="OK"}} 5"#),
        format!(r#"mp_lb_responses_total{{endpoint="{ep}",grpc_code="UNAVAILABLE"}} 1"#),
        format!(r#"mp_lb_request_duration_seconds_count{{endpoint="{ep}"}} 6"#),
        format!(r#"mp_lb_endpoint_healthy{{endpoint="{ep}"}} 1"#),
        format!(r#"mp_lb_endpoint_connections{{endpoint="{ep}"}} 1"#),
        r#"mp_lb_method_requests_total{method="/lbtest.echo.v1.Echo/Say"} 6"#.to_string(),
        r#"mp_lb_method_responses_total{method="/lbtest.echo.v1.Echo/Say",grpc_code="OK"} 5"#
            .to_string(),
        r#"mp_lb_method_request_duration_seconds_count{method="/lbtest.echo.v1.Echo/Say"} 6"#
            .to_string(),
    ] {
        assert!(text.contains(&needle), "no {needle} in\n{text}");
    }
    // The client connection's own connection to the backend carries the
    // calls; it closes with the client connection.
    let gauge = format!(r#"mp_lb_endpoint_call_connections{{endpoint="{ep}"}}"#);
    assert!(
        text.contains(&format!("{gauge} 1")),
        "no {gauge} 1 in\n{text}"
    );
    drop(c);
    let t = Instant::now();
    while !admin_get(lb.admin, "/metrics")
        .await
        .1
        .contains(&format!("{gauge} 0"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{gauge} stays above 0"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(admin_get(lb.admin, "/nothing").await.0, 404);
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_without_a_healthy_backend() {
    let mut b = Backend::start("r");
    let lb = Lb::start(&[&b], &[]).await;
    lb.wait_ready().await;
    b.kill();
    let t = Instant::now();
    while admin_get(lb.admin, "/ready").await.0 != 503 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still ready with its only backend dead"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(admin_get(lb.admin, "/live").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_file_is_followed() {
    let (b1, b2) = (Backend::start("f1"), Backend::start("f2"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backends");
    std::fs::write(&file, format!("# the first\n{}\n", b1.addr)).unwrap();
    let lb = Lb::start_args(vec![
        "mp-lb".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--backends-file".into(),
        file.display().to_string(),
    ])
    .await;
    lb.wait_ready().await;
    let mut c = lb.client().await;
    assert_eq!(c.say(say(b"x")).await.unwrap().into_inner().server, "f1");

    std::fs::write(&file, format!("{}  # now only the second one\n", b2.addr)).unwrap();
    let t = Instant::now();
    loop {
        let s = c.say(say(b"x")).await.unwrap().into_inner().server;
        if s == "f2" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "file change not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled: only f2 from now on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..10 {
        assert_eq!(c.say(say(b"x")).await.unwrap().into_inner().server, "f2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_name_stands_for_its_addresses() {
    // `localhost` resolves without a DNS server; the resolver's DNS path is
    // covered by mp-sidecar's discovery tests.
    let b = Backend::start("d");
    let lb = Lb::start_args(vec![
        "mp-lb".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--dns".into(),
        format!("localhost:{}", b.addr.port()),
    ])
    .await;
    lb.wait_ready().await;
    let mut c = lb.client().await;
    assert_eq!(c.say(say(b"x")).await.unwrap().into_inner().server, "d");
}
