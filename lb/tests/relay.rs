//! The relay's own HTTP/2 work: header blocks larger than a frame, many
//! calls on one connection against a backend's stream limit, and clients
//! that break the protocol (each gets a GOAWAY naming its error; the proxy
//! serves on).

mod support;

use std::time::Duration;

use futures::StreamExt;
use mp_testkit::h2::{frames, random_frames, Rng, PREFACE, SETTINGS};
use support::pb::EchoRequest;
use support::{say, Backend, Lb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One call on a fresh hyper HTTP/2 connection that accepts header lists of
/// up to 1 MiB (tonic's client stops at 16 KiB): the response head (with the
/// status of a trailers-only response) and trailers.
async fn call_big_headers(
    addr: std::net::SocketAddr,
    req: &EchoRequest,
    extra: Option<(&str, &str)>,
) -> (http::HeaderMap, http::HeaderMap) {
    use http_body_util::BodyExt;
    use prost::Message;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .max_header_list_size(1 << 20)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let body = req.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let mut r = http::Request::post(format!("http://{addr}/lbtest.echo.v1.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some((k, v)) = extra {
        r = r.header(k, v);
    }
    let r = r
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), send.send_request(r))
        .await
        .expect("answer within 10 s")
        .expect("a response");
    let (parts, body) = res.into_parts();
    let collected = body.collect().await.expect("the body");
    (
        parts.headers,
        collected.trailers().cloned().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_blocks_larger_than_a_frame_pass_both_ways() {
    let b = Backend::start("big");
    let lb = Lb::start(&[&b], &[]).await;
    lb.wait_ready().await;
    // A trailers-only answer of ~40 KiB: more than the client's 16 KiB
    // frames, so the relay sends it as HEADERS + CONTINUATION.
    let msg: String = (0..40_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let req = EchoRequest {
        fail_code: 9,
        fail_message: msg.clone(),
        ..Default::default()
    };
    let (head, _) = call_big_headers(lb.addr, &req, None).await;
    assert_eq!(head["grpc-status"], "9");
    assert_eq!(head["grpc-message"].as_bytes(), msg.as_bytes(), "intact");
    assert_eq!(head["x-trailer"], "custom-trailer-value");
    // Request metadata just under the relay's 16 KiB limit passes, and the
    // response echoes it (one frame each way: both peers take 16 KiB frames).
    let v = "v".repeat(15_000);
    let (head, trailers) = call_big_headers(lb.addr, &say(b"m"), Some(("x-echo", &v))).await;
    assert_eq!(head["x-echo"].len(), 15_000);
    assert_eq!(trailers["grpc-status"], "0");
    // Over the limit: RESOURCE_EXHAUSTED from the relay itself.
    let v = "v".repeat(20_000);
    let (head, _) = call_big_headers(lb.addr, &say(b"m"), Some(("x-echo", &v))).await;
    assert_eq!(head["grpc-status"], "8", "{head:?}");
    // The same connection's HPACK tables stay in step (tonic client).
    let mut c = lb.client().await;
    for _ in 0..3 {
        assert_eq!(c.say(say(b"x")).await.unwrap().into_inner().payload, b"x");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_on_one_connection_past_a_backend_stream_limit() {
    // Each backend takes at most 4 calls per connection: the relay opens
    // more connections rather than queue or fail.
    let bs = [
        Backend::start_limited("l0", 4),
        Backend::start_limited("l1", 4),
    ];
    let lb = Lb::start(&[&bs[0], &bs[1]], &["--health-interval", "0"]).await;
    lb.wait_ready().await;
    let c = lb.client().await;
    let results = futures::stream::iter(0..400)
        .map(|i| {
            let mut c = c.clone();
            async move {
                let req = EchoRequest {
                    payload: vec![i as u8],
                    delay_ms: 20,
                    ..Default::default()
                };
                c.say(req).await.map(|r| r.into_inner())
            }
        })
        .buffer_unordered(100)
        .collect::<Vec<_>>()
        .await;
    let mut per_backend = [0usize; 2];
    for r in results {
        let r = r.expect("every call succeeds");
        per_backend[usize::from(r.server == "l1")] += 1;
    }
    assert_eq!(per_backend, [200, 200], "round robin over both");
}

/// Sends a preface, an empty SETTINGS and `then`; returns the GOAWAY error
/// code the proxy answers with (and whether it acknowledged a PING).
async fn abuse(lb: &Lb, then: &[u8]) -> (Option<u32>, bool) {
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    out.extend_from_slice(then);
    s.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let fs = frames(&buf);
    let goaway = fs
        .iter()
        .find(|f| f.0 == 7)
        .map(|f| u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]));
    let pong = fs
        .iter()
        .any(|f| f.0 == 6 && f.1 == 1 && f.3 == b"12345678");
    (goaway, pong)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_get_a_goaway_and_the_proxy_serves_on() {
    let b = Backend::start("ok");
    let lb = Lb::start(&[&b], &[]).await;
    lb.wait_ready().await;
    let ping = [&[0u8, 0, 8, 6, 0, 0, 0, 0, 0][..], b"12345678"].concat();

    // HEADERS on an even (server-initiated) stream id.
    let bad = [&ping[..], &[0, 0, 1, 1, 5, 0, 0, 0, 2, 0x82]].concat();
    assert_eq!(
        abuse(&lb, &bad).await,
        (Some(1), true),
        "PROTOCOL_ERROR, after the PING's ACK"
    );
    // A frame over the 64 KiB frame size we advertise.
    let mut big = vec![0x01, 0x00, 0x01, 0, 0, 0, 0, 0, 1];
    big.extend(std::iter::repeat_n(0u8, 65_537));
    assert_eq!(abuse(&lb, &big).await.0, Some(6), "FRAME_SIZE_ERROR");
    // A header block that does not decode (index 70 of an empty table).
    let hpack = [0u8, 0, 1, 1, 5, 0, 0, 0, 1, 0x80 | 70];
    assert_eq!(abuse(&lb, &hpack).await.0, Some(9), "COMPRESSION_ERROR");
    // DATA on a stream never opened.
    let data = [0u8, 0, 1, 0, 1, 0, 0, 0, 9, b'x'];
    assert_eq!(abuse(&lb, &data).await.0, Some(1), "PROTOCOL_ERROR");
    // CONTINUATION with no HEADERS before it.
    let cont = [0u8, 0, 1, 9, 4, 0, 0, 0, 1, 0x82];
    assert_eq!(abuse(&lb, &cont).await.0, Some(1), "PROTOCOL_ERROR");
    // A WINDOW_UPDATE of 0.
    let wu = [0u8, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(abuse(&lb, &wu).await.0, Some(1), "PROTOCOL_ERROR");

    let mut c = lb.client().await;
    assert_eq!(
        c.say(say(b"still")).await.unwrap().into_inner().payload,
        b"still"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_call_cancels_the_backend_stream_and_others_go_on() {
    let b = Backend::start("c");
    let lb = Lb::start(&[&b], &[]).await;
    lb.wait_ready().await;
    // One client reads two replies of a long stream, then goes away with
    // its whole connection.
    {
        let mut c = lb.client().await;
        let req = EchoRequest {
            count: 1000,
            delay_ms: 20,
            ..Default::default()
        };
        let mut s = c.expand(req).await.unwrap().into_inner();
        s.message().await.unwrap().unwrap();
        s.message().await.unwrap().unwrap();
    }
    // The backend sees its stream cancelled, long before the stream's end.
    let t = std::time::Instant::now();
    while b.seen.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "backend stream not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c2 = lb.client().await;
    assert_eq!(
        c2.say(say(b"next")).await.unwrap().into_inner().payload,
        b"next"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_frames_never_take_the_proxy_down() {
    // A panicking connection task would not stop the proxy, but it is a bug:
    // count the panics of runtime threads.
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current()
            .name()
            .is_some_and(|n| n.contains("tokio-runtime-worker"))
        {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        previous(info);
    }));
    let b = Backend::start("ok");
    let lb = Lb::start(&[&b], &[]).await;
    lb.wait_ready().await;
    let mut rng = Rng::new(0x853c_49e6_748f_ea9b);
    let mut conns = Vec::new();
    for _ in 0..150 {
        let mut out = [PREFACE, &SETTINGS].concat();
        out.extend(random_frames(&mut rng));
        let addr = lb.addr;
        conns.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(&out).await;
            let _ = s.shutdown().await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        }));
    }
    for c in conns {
        c.await.unwrap();
    }
    let mut c = lb.client().await;
    for _ in 0..3 {
        assert_eq!(
            c.say(say(b"alive")).await.unwrap().into_inner().payload,
            b"alive"
        );
    }
}

/// Established TCP connections to `port` on loopback (client ends, from
/// /proc/net/tcp).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f[2].rsplit(':').next().unwrap();
            u16::from_str_radix(remote_port, 16).unwrap() == port && f[3] == "01"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_sets_the_backend_connections_of_a_client_connection() {
    let b = Backend::start("p");
    let lb = Lb::start(&[&b], &["--pool-size", "3"]).await;
    lb.wait_ready().await;
    let c = lb.client().await;
    let calls = futures::stream::iter(0..300)
        .map(|_| {
            let mut c = c.clone();
            async move { c.say(say(b"x")).await.map(|r| r.into_inner().payload) }
        })
        .buffer_unordered(30)
        .collect::<Vec<_>>()
        .await;
    assert!(calls.iter().all(|r| r.as_ref().is_ok_and(|p| p == b"x")));
    // Three for the one client connection's calls, one for health checks.
    assert_eq!(connections_to(b.addr.port()), 4);
    // A second client connection gets its own three.
    let mut c2 = lb.client().await;
    for _ in 0..6 {
        c2.say(say(b"y")).await.unwrap();
    }
    assert_eq!(connections_to(b.addr.port()), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_in_headers_and_continuation_frames_is_relayed() {
    let b = Backend::start("cont");
    let lb = Lb::start(&[&b], &[]).await;
    lb.wait_ready().await;
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    // HEADERS (END_STREAM, no END_HEADERS): POST, http; CONTINUATION
    // (END_HEADERS): :path "/".
    out.extend_from_slice(&[0, 0, 2, 1, 1, 0, 0, 0, 1, 0x83, 0x86]);
    out.extend_from_slice(&[0, 0, 1, 9, 4, 0, 0, 0, 1, 0x84]);
    s.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed: {:?}", frames(&buf));
            buf.extend_from_slice(&chunk[..n]);
            if frames(&buf).iter().any(|f| f.0 == 1 && f.2 == 1) {
                break;
            }
        }
    })
    .await;
    assert!(
        answered.is_ok(),
        "no response head on stream 1: {:?}",
        frames(&buf)
    );
    assert_eq!(
        b.calls(),
        0,
        "the backend answered the path itself (no Echo call)"
    );
}
