//! The `faulty` example's knobs, which the lb and gather tests rely on, and
//! handler errors reaching callers (grpcurl and a Rust client) as statuses.

mod common;
use common::*;
use mp_proto::v1::Request;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test]
async fn without_knobs_it_replies_like_hello() {
    let f = start_example("faulty", &[]);
    let reply = handler_client(f.addr)
        .await
        .handle(timed(Request::json(serde_json::json!({"n": 1}))))
        .await
        .expect("call succeeds")
        .into_inner();
    let body = reply.body_json().unwrap();
    assert_eq!(body["request"], serde_json::json!({"n": 1}));
    assert!(body["server"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{}", f.addr.port())));
}

#[tokio::test]
async fn a_handler_error_reaches_a_rust_client_as_that_status() {
    let f = start_example(
        "faulty",
        &[
            ("MP_FAIL_CODE", "NOT_FOUND"),
            ("MP_FAIL_MESSAGE", "no such key: k1"),
        ],
    );
    let status = handler_client(f.addr)
        .await
        .handle(timed(Request::json(serde_json::json!({}))))
        .await
        .expect_err("the handler fails");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such key: k1");
}

#[test]
fn a_handler_error_reaches_grpcurl_as_that_status() {
    let f = start_example(
        "faulty",
        &[
            ("MP_FAIL_CODE", "14"),
            ("MP_FAIL_MESSAGE", "try again later"),
        ],
    );
    let err = grpcurl_err(&[
        "-plaintext",
        "-d",
        r#"{"body":{"json":1}}"#,
        &f.target(),
        "mp.v1.Handler/Handle",
    ]);
    assert!(err.contains("Code: Unavailable"), "{err}");
    assert!(err.contains("Message: try again later"), "{err}");
}

#[tokio::test]
async fn fail_shard_fails_only_that_shard() {
    let knobs = [
        ("MP_SHARDS", "2"),
        ("MP_FAIL_SHARD", "1"),
        ("MP_FAIL_CODE", "internal"),
    ];
    let shard0 = start_example("faulty", &[knobs[0], knobs[1], knobs[2], ("MP_SHARD", "0")]);
    let shard1 = start_example("faulty", &[knobs[0], knobs[1], knobs[2], ("MP_SHARD", "1")]);
    let req = || timed(Request::json(serde_json::json!(null)));
    handler_client(shard0.addr)
        .await
        .handle(req())
        .await
        .expect("shard 0 answers");
    let status = handler_client(shard1.addr)
        .await
        .handle(req())
        .await
        .expect_err("shard 1 fails");
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(status.message(), "injected failure");
}

#[tokio::test]
async fn delay_holds_the_answer_back() {
    let f = start_example("faulty", &[("MP_DELAY_MS", "1500")]);
    let mut client = handler_client(f.addr).await;
    let start = Instant::now();
    client
        .handle(timed(Request::default()))
        .await
        .expect("slow but fine");
    assert!(start.elapsed() >= Duration::from_millis(1500));

    // A caller's deadline (grpc-timeout) shorter than the delay ends the call
    // early. tonic's server reports an expired grpc-timeout as CANCELLED
    // ("Timeout expired"), where grpc-go says DEADLINE_EXCEEDED: accept both.
    let mut req = tonic::Request::new(Request::default());
    req.set_timeout(Duration::from_millis(100));
    let start = Instant::now();
    let status = client.handle(req).await.expect_err("deadline");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_bad_knob_stops_it_at_start_with_a_message() {
    let out = mp_testkit::output_within(
        Command::new(mp_testkit::example("faulty"))
            .env("MP_PORT", mp_testkit::free_port().to_string())
            .env("MP_FAIL_CODE", "SOMETIMES"),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MP_FAIL_CODE=\"SOMETIMES\""), "{stderr}");
}
