//! mp-lb as a transparent proxy: every kind of call, metadata, trailers, big
//! messages, deadlines, cancellation, round robin, and a service mp-lb knows
//! nothing about called with grpcurl through it.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use support::pb::EchoRequest;
use support::{say, Backend, Lb};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_call_passes_metadata_both_ways() {
    let b = Backend::start("b1");
    let lb = Lb::start(&[&b], &[]).await;
    let mut c = lb.client().await;
    let mut req = tonic::Request::new(say(b"hello"));
    req.metadata_mut()
        .insert("x-echo", "meta-value".parse().unwrap());
    let res = c.say(req).await.expect("call through mp-lb");
    assert_eq!(res.metadata().get("x-echo").unwrap(), "meta-value");
    let r = res.into_inner();
    assert_eq!(r.payload, b"hello");
    assert_eq!(r.server, "b1");
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_even() {
    let bs = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let lb = Lb::start(&[&bs[0], &bs[1], &bs[2]], &["--health-interval", "0"]).await;
    lb.wait_ready().await;
    let c = lb.client().await;
    // 3,000 calls, 30 at a time.
    let calls = futures::stream::iter(0..3000)
        .map(|_| {
            let mut c = c.clone();
            async move { c.say(say(b"x")).await.map(|r| r.into_inner().server) }
        })
        .buffer_unordered(30)
        .collect::<Vec<_>>()
        .await;
    let mut counts = std::collections::BTreeMap::new();
    for r in calls {
        *counts
            .entry(r.expect("every call succeeds"))
            .or_insert(0usize) += 1;
    }
    for b in &bs {
        let n = counts.get(&b.name).copied().unwrap_or(0);
        assert!((950..=1050).contains(&n), "uneven split: {counts:?}");
        assert_eq!(b.calls(), n, "backend saw what the client saw");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_in_every_direction() {
    let b = Backend::start("s");
    let lb = Lb::start(&[&b], &[]).await;
    let mut c = lb.client().await;

    // Server streaming.
    let req = EchoRequest {
        payload: b"p".to_vec(),
        count: 50,
        ..Default::default()
    };
    let mut s = c.expand(req).await.unwrap().into_inner();
    let mut seqs = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        seqs.push(m.seq);
    }
    assert_eq!(seqs, (0..50).collect::<Vec<_>>());

    // Client streaming.
    let reqs = futures::stream::iter((0..20u8).map(|i| say(&[i])));
    let r = c.collect(reqs).await.unwrap().into_inner();
    assert_eq!(r.seq, 20);
    assert_eq!(r.payload, (0..20u8).collect::<Vec<_>>());

    // Bidirectional, in lock step: each reply must come back before the next
    // request is sent, so nothing may be buffered until the end.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = c
        .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..10u8 {
        tx.send(say(&[i])).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("reply streamed back before the request stream ended")
            .unwrap()
            .unwrap();
        assert_eq!(m.payload, [i]);
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_message_and_trailers_pass_untouched() {
    let b = Backend::start("t");
    let lb = Lb::start(&[&b], &[]).await;
    let mut c = lb.client().await;

    // Trailers-only (an error before any message).
    let req = EchoRequest {
        fail_code: 5,
        fail_message: "nothing here: ünïcode 100%".into(),
        ..Default::default()
    };
    let st = c.say(req).await.unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    assert_eq!(st.message(), "nothing here: ünïcode 100%");
    assert_eq!(
        st.metadata().get("x-trailer").unwrap(),
        "custom-trailer-value"
    );

    // Real trailers after streamed messages.
    let req = EchoRequest {
        count: 3,
        fail_code: 9,
        fail_message: "after three".into(),
        ..Default::default()
    };
    let mut s = c.expand(req).await.unwrap().into_inner();
    for _ in 0..3 {
        s.message().await.unwrap().unwrap();
    }
    let st = s.message().await.unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition);
    assert_eq!(st.message(), "after three");
    assert_eq!(
        st.metadata().get("x-trailer").unwrap(),
        "custom-trailer-value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_message_passes_both_ways() {
    let b = Backend::start("big");
    let lb = Lb::start(&[&b], &[]).await;
    let mut c = lb.client().await;
    let payload: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let r = c
        .say(say(&payload))
        .await
        .expect("16 MiB through mp-lb")
        .into_inner();
    assert!(r.payload == payload, "payload intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_expiry_gives_deadline_exceeded_and_is_forwarded() {
    let b = Backend::start("slow");
    let lb = Lb::start(&[&b], &[]).await;
    let mut c = lb.client().await;

    // Forwarded: the backend sees a grpc-timeout.
    let mut req = tonic::Request::new(say(b"x"));
    req.set_timeout(Duration::from_secs(30));
    let res = c.say(req).await.unwrap();
    assert!(
        res.metadata().get("x-seen-timeout").is_some(),
        "grpc-timeout reached the backend"
    );

    // Unary: the backend answers too late. A backend that ignores
    // grpc-timeout and a raw HTTP/2 client, so that only mp-lb watches the
    // clock.
    let slow = support::sleepy_backend(Duration::from_secs(3)).await;
    let lb2 = Lb::start_args(vec![
        "mp-lb".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--backend".into(),
        slow.to_string(),
        "--health-interval".into(),
        "0".into(),
    ])
    .await;
    let t = Instant::now();
    let (head, _) = support::raw_call(
        lb2.addr,
        "/lbtest.echo.v1.Echo/Say",
        &[("grpc-timeout", "300m")],
        &EchoRequest::default(),
    )
    .await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(head["content-type"], "application/grpc");
    assert_eq!(head["grpc-status"], "4", "{head:?}");
    assert!(
        head["grpc-message"].to_str().unwrap().contains("mp-lb"),
        "{head:?}"
    );

    // Streaming: messages flow, then the deadline passes mid-stream; only
    // mp-lb is watching the clock then, so the status is its own.
    let mut req = tonic::Request::new(EchoRequest {
        count: 20,
        delay_ms: 100,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("grpc-timeout", "450m".parse().unwrap());
    let t = Instant::now();
    let mut s = c.expand(req).await.unwrap().into_inner();
    let mut got = 0;
    let st = loop {
        match s.message().await {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("stream ended without an error"),
            Err(st) => break st,
        }
    };
    assert!((2..20).contains(&got), "got {got} messages");
    assert_eq!(st.code(), Code::DeadlineExceeded, "{st:?}");
    assert!(st.message().contains("mp-lb"), "{st:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cancel_reaches_the_backend() {
    let b = Backend::start("c");
    let lb = Lb::start(&[&b], &[]).await;
    let mut c = lb.client().await;
    let req = EchoRequest {
        count: 1000,
        delay_ms: 20,
        ..Default::default()
    };
    let mut s = c.expand(req).await.unwrap().into_inner();
    s.message().await.unwrap().unwrap();
    s.message().await.unwrap().unwrap();
    drop(s);
    let t = Instant::now();
    while b.seen.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "backend never saw the cancel"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
