//! Real processes and real signals: SIGTERM during a slow call lets the call
//! complete, refuses new connections and exits 0; a second signal cuts the
//! drain short; a bad environment stops the process with a clear message.

mod common;
use common::*;
use mp_proto::v1::Request;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// Waits until connecting to `addr` is refused (the listener is closed).
fn wait_refused(addr: std::net::SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ if Instant::now() > deadline => panic!("{addr} still accepts connections"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[tokio::test]
async fn sigterm_during_a_slow_call_completes_it_refuses_new_connections_and_exits_0() {
    let mut slow = start_example("faulty", &[("MP_DELAY_MS", "1500"), ("MP_GRACE", "20s")]);
    let mut client = handler_client(slow.addr).await;
    let call = tokio::spawn(async move {
        client
            .handle(timed(Request::json(serde_json::json!({"slow": true}))))
            .await
    });
    // Let the call reach the handler, then ask the process to stop.
    tokio::time::sleep(Duration::from_millis(400)).await;
    slow.child.signal("TERM");

    let addr = slow.addr;
    tokio::task::spawn_blocking(move || wait_refused(addr, Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(
        !call.is_finished(),
        "the slow call should still be running while new connections are refused"
    );

    let reply = call
        .await
        .unwrap()
        .expect("the in-flight call completes")
        .into_inner();
    assert_eq!(
        reply.body_json().unwrap()["request"],
        serde_json::json!({"slow": true})
    );
    let status = tokio::task::spawn_blocking(move || {
        let s = slow.child.wait_timeout(Duration::from_secs(15));
        (s, slow)
    })
    .await
    .unwrap()
    .0
    .expect("the process exits after draining");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn a_second_signal_ends_the_drain_at_once() {
    let mut stuck = start_example("faulty", &[("MP_DELAY_MS", "600000"), ("MP_GRACE", "600")]);
    let mut client = handler_client(stuck.addr).await;
    let _call = tokio::spawn(async move { client.handle(Request::default()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stuck.child.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        stuck.child.wait_timeout(Duration::ZERO).is_none(),
        "still draining after the first signal"
    );
    stuck.child.signal("INT");
    let status = stuck
        .child
        .wait_timeout(Duration::from_secs(10))
        .expect("exits on the second signal");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn a_missing_or_bad_port_is_a_clear_error() {
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(mp_testkit::example("hello"));
        cmd.env_remove("MP_PORT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = mp_testkit::output_within(&mut cmd, Duration::from_secs(10));
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[]);
    assert!(err.contains("MP_PORT is not set"), "{err}");
    let err = run(&[("MP_PORT", "seventy")]);
    assert!(err.contains("MP_PORT=\"seventy\" is not valid"), "{err}");
    let err = run(&[("MP_PORT", "7000"), ("MP_SHARD", "4"), ("MP_SHARDS", "2")]);
    assert!(err.contains("MP_SHARD=\"4\""), "{err}");

    // A port in use: say so instead of serving nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = run(&[("MP_HOST", "127.0.0.1"), ("MP_PORT", &port)]);
    assert!(err.contains("cannot listen on 127.0.0.1:"), "{err}");
}
