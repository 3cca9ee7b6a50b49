//! The lean HTTP/2 client against a real hyper HTTP/2 server (the sidecar's
//! server loop) on loopback: replies, statuses, flow control, cancellation,
//! GOAWAY, refused connections, the server's stream limit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use mp_sidecar::h2client::{CallError, Client, ClientConfig, Deadline, Reply, RequestHead};
use mp_sidecar::hpack::HeaderList;
use mp_sidecar::server::{serve, ServerConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

type Body = BoxBody<Bytes, Infallible>;

fn grpc_body(chunks: Vec<Bytes>, status: &str, message: Option<&str>) -> Body {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_str(status).unwrap());
    if let Some(m) = message {
        trailers.insert("grpc-message", HeaderValue::from_str(m).unwrap());
    }
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
        chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
    frames.push(Ok(Frame::trailers(trailers)));
    BodyExt::boxed(StreamBody::new(futures::stream::iter(frames)))
}

/// What the test server tells the test.
struct Seen {
    /// A `/slow` call's handler was dropped (the stream was cancelled).
    cancelled: mpsc::UnboundedSender<()>,
    /// `/count` calls running now, and the most at once.
    running: AtomicUsize,
    most: AtomicUsize,
}

struct DropSignal(mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

async fn handle(seen: Arc<Seen>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let timeout = req.headers().get("grpc-timeout").cloned();
    let authority = req.uri().authority().map(|a| a.to_string());
    let meta = req.headers().get("x-meta").cloned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut resp = Response::builder()
        .status(200)
        .header("content-type", "application/grpc");
    if let Some(t) = timeout {
        resp = resp.header("x-timeout", t);
    }
    if let Some(a) = authority {
        resp = resp.header("x-authority", a);
    }
    if let Some(m) = meta {
        resp = resp.header("x-meta", m);
    }
    let body = match path.as_str() {
        "/t.S/Echo" => grpc_body(vec![body], "0", None),
        "/t.S/Fail" => grpc_body(vec![], "8", Some("out of quota")),
        "/t.S/TrailersOnly" => {
            resp = resp
                .header("grpc-status", "5")
                .header("grpc-message", "no such thing");
            BodyExt::boxed(Empty::new())
        }
        "/t.S/Big" => {
            // 3 MiB in 48 chunks: more than any window we or it start with.
            let chunk = Bytes::from(vec![7u8; 64 * 1024]);
            grpc_body(vec![chunk; 48], "0", None)
        }
        "/t.S/Slow" => {
            let _signal = DropSignal(seen.cancelled.clone());
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/t.S/Count" => {
            let now = seen.running.fetch_add(1, Ordering::SeqCst) + 1;
            seen.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            seen.running.fetch_sub(1, Ordering::SeqCst);
            grpc_body(vec![body], "0", None)
        }
        "/t.S/Sleep" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            grpc_body(vec![body], "0", None)
        }
        _ => grpc_body(vec![], "12", Some("unknown method")),
    };
    Ok(resp.body(body).unwrap())
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    cancelled: mpsc::UnboundedReceiver<()>,
    seen: Arc<Seen>,
}

async fn server(max_concurrent_streams: u32) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, cancelled) = mpsc::unbounded_channel();
    let seen = Arc::new(Seen {
        cancelled: tx,
        running: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });
    let s = seen.clone();
    let service = hyper::service::service_fn(move |req| handle(s.clone(), req));
    let (stop, stopped) = oneshot::channel::<()>();
    let cfg = ServerConfig {
        max_concurrent_streams,
        ..ServerConfig::default()
    };
    tokio::spawn(serve(listener, service, cfg, async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        cancelled,
        seen,
    }
}

fn head(method: &str) -> Arc<RequestHead> {
    let mut headers = HeaderList::new();
    headers.push(b"content-type", b"application/grpc");
    headers.push(b"te", b"trailers");
    Arc::new(RequestHead {
        path: format!("/t.S/{method}").into_bytes(),
        headers,
    })
}

fn message(payload: &[u8]) -> Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    Bytes::from(b)
}

fn trailer<'a>(r: &'a Reply, name: &str) -> Option<&'a [u8]> {
    r.trailers.as_ref()?.get(name.as_bytes())
}

async fn client(addr: SocketAddr) -> Client {
    Client::connect(addr, "leaf.test:1234", &ClientConfig::default())
        .await
        .unwrap()
}

const LIMIT: usize = 4 << 20;

/// A server that accepts one connection, sends an empty SETTINGS frame if
/// `settings`, then reads everything and answers nothing.
async fn silent_server(settings: bool) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        if settings {
            tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        }
        let mut buf = vec![0u8; 4096];
        while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    addr
}

#[tokio::test]
async fn unary_replies_statuses_and_trailers_only() {
    let s = server(1024).await;
    let c = client(s.addr).await;

    let deadline = Instant::now() + Duration::from_secs(5);
    let r = c
        .call(
            head("Echo"),
            message(b"hello"),
            Some(deadline.into()),
            LIMIT,
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&r.body[..], &message(b"hello")[..]);
    assert_eq!(trailer(&r, "grpc-status"), Some(&b"0"[..]));
    assert_eq!(r.head.get(b"x-authority"), Some(&b"leaf.test:1234"[..]));
    // The deadline reached the server as grpc-timeout, a little under 5 s.
    let t = r.head.get(b"x-timeout").expect("grpc-timeout sent");
    let t = mp_sidecar::grpc::parse_timeout_bytes(t).expect("well formed");
    assert!(
        t <= Duration::from_secs(5) && t > Duration::from_secs(4),
        "{t:?}"
    );
    // A deadline whose timeout the caller gives is told as given.
    let told = Deadline {
        at: Instant::now() + Duration::from_secs(5),
        told: Some(Duration::from_millis(1234)),
    };
    let r = c
        .call(head("Echo"), message(b"hello"), Some(told), LIMIT)
        .await
        .unwrap();
    let t = r.head.get(b"x-timeout").expect("grpc-timeout sent");
    assert_eq!(
        mp_sidecar::grpc::parse_timeout_bytes(t),
        Some(Duration::from_millis(1234))
    );

    // An error status in the trailers.
    let r = c
        .call(head("Fail"), message(b"x"), None, LIMIT)
        .await
        .unwrap();
    assert_eq!(trailer(&r, "grpc-status"), Some(&b"8"[..]));
    assert_eq!(trailer(&r, "grpc-message"), Some(&b"out of quota"[..]));
    assert!(
        r.head.get(b"x-timeout").is_none(),
        "no deadline, no grpc-timeout"
    );

    // Trailers-only: the status in the head, no body, no trailers.
    let r = c
        .call(head("TrailersOnly"), message(b"x"), None, LIMIT)
        .await
        .unwrap();
    assert_eq!(r.head.get(b"grpc-status"), Some(&b"5"[..]));
    assert!(r.body.is_empty() && r.trailers.is_none(), "{r:?}");

    // Many calls at once on the one connection, each its own answer.
    let calls = (0..200u32).map(|i| {
        let c = c.clone();
        async move {
            let p = i.to_string();
            let r = c
                .call(head("Echo"), message(p.as_bytes()), None, LIMIT)
                .await
                .unwrap();
            assert_eq!(&r.body[5..], p.as_bytes());
        }
    });
    futures::future::join_all(calls).await;
    assert!(!c.is_closed());
}

#[tokio::test]
async fn large_reply_flows_and_the_limit_holds() {
    let s = server(1024).await;
    let c = client(s.addr).await;
    let r = c
        .call(head("Big"), message(b""), None, LIMIT)
        .await
        .unwrap();
    assert_eq!(r.body.len(), 48 * 64 * 1024);
    assert!(r.body.iter().all(|&b| b == 7));
    assert_eq!(trailer(&r, "grpc-status"), Some(&b"0"[..]));

    // A large request too (past the server's initial windows).
    let big = vec![3u8; 3 << 20];
    let r = c
        .call(head("Echo"), message(&big), None, LIMIT)
        .await
        .unwrap();
    assert_eq!(r.body.len(), big.len() + 5);

    // Over the limit: refused, and the connection still serves.
    let e = c
        .call(head("Big"), message(b""), None, 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(e, CallError::TooLarge(1 << 20));
    let r = c
        .call(head("Echo"), message(b"after"), None, LIMIT)
        .await
        .unwrap();
    assert_eq!(&r.body[5..], b"after");
}

#[tokio::test]
async fn a_dropped_call_cancels_its_stream_on_the_server() {
    let mut s = server(1024).await;
    let c = client(s.addr).await;
    let call = c.call(head("Slow"), message(b"x"), None, LIMIT);
    let r = tokio::time::timeout(Duration::from_millis(200), call).await;
    assert!(r.is_err(), "the slow call must not answer");
    // Dropped by the timeout: the server's handler is dropped when the
    // RST_STREAM arrives.
    tokio::time::timeout(Duration::from_secs(5), s.cancelled.recv())
        .await
        .expect("the server saw the cancellation")
        .unwrap();
    // The connection goes on.
    let r = c
        .call(head("Echo"), message(b"x"), None, LIMIT)
        .await
        .unwrap();
    assert_eq!(trailer(&r, "grpc-status"), Some(&b"0"[..]));
}

#[tokio::test]
async fn goaway_finishes_calls_in_flight_and_refuses_new_ones_unprocessed() {
    let mut s = server(1024).await;
    let c = client(s.addr).await;
    // Connected and settled.
    c.call(head("Echo"), message(b"x"), None, LIMIT)
        .await
        .unwrap();
    let in_flight = tokio::spawn(c.call(head("Sleep"), message(b"late"), None, LIMIT));
    // Let the call reach the server before it stops (its stream must be
    // below the GOAWAY's last stream id).
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.stop.take().unwrap().send(()).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while !c.is_closed() {
        assert!(Instant::now() < until, "GOAWAY never seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let e = c
        .call(head("Echo"), message(b"x"), None, LIMIT)
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::Unprocessed(_)), "{e:?}");
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(&r.body[5..], b"late");
    assert_eq!(trailer(&r, "grpc-status"), Some(&b"0"[..]));
}

#[tokio::test]
async fn refused_connections_fail_and_say_so() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let e = Client::connect(addr, "x", &ClientConfig::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // A lazily connecting client: its calls fail unprocessed, and it closes.
    let c = Client::new(addr, "x", &ClientConfig::default());
    let e = c
        .call(head("Echo"), message(b"x"), None, LIMIT)
        .await
        .unwrap_err();
    match e {
        CallError::Unprocessed(m) => assert!(m.contains("cannot connect"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert!(c.is_closed());
}

#[tokio::test]
async fn the_servers_stream_limit_is_respected() {
    let s = server(3).await;
    let c = client(s.addr).await;
    let calls = (0..20).map(|_| c.call(head("Count"), message(b"n"), None, LIMIT));
    for r in futures::future::join_all(calls).await {
        let r = r.expect("no call refused");
        assert_eq!(trailer(&r, "grpc-status"), Some(&b"0"[..]));
    }
    let most = s.seen.most.load(Ordering::SeqCst);
    assert!((2..=3).contains(&most), "{most} at once");
}

#[tokio::test]
async fn a_server_that_stops_answering_is_found_out_by_ping() {
    // Sends its SETTINGS, then answers nothing, not even PINGs (a peer gone
    // without a FIN).
    let addr = silent_server(true).await;
    let cfg = ClientConfig {
        keepalive: Some(Duration::from_millis(100)),
        keepalive_timeout: Duration::from_millis(100),
        ..ClientConfig::default()
    };
    let c = Client::connect(addr, "x", &cfg).await.unwrap();
    let started = Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(5),
        c.call(head("Echo"), message(b"x"), None, LIMIT),
    )
    .await
    .expect("the call ends when the PING goes unanswered")
    .unwrap_err();
    match e {
        CallError::Failed(m) => assert!(m.contains("did not answer a PING"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert!(c.is_closed());
}

#[tokio::test]
async fn a_server_that_answers_pings_keeps_its_connection() {
    let s = server(1024).await;
    let cfg = ClientConfig {
        keepalive: Some(Duration::from_millis(20)),
        keepalive_timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    let c = Client::connect(s.addr, "x", &cfg).await.unwrap();
    // Idle for many keepalive intervals: PINGs go out and are answered.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!c.is_closed());
    let r = c
        .call(head("Echo"), message(b"x"), None, LIMIT)
        .await
        .unwrap();
    assert_eq!(trailer(&r, "grpc-status"), Some(&b"0"[..]));
}

#[tokio::test]
async fn deadlines_end_calls_and_reset_their_streams() {
    let mut s = server(1024).await;
    let c = client(s.addr).await;
    let start = Instant::now();
    let ms = |n| start + Duration::from_millis(n);
    // The later call has the earlier deadline: the connection's one timer
    // moves to it.
    let slow_300 = tokio::spawn(c.call(head("Slow"), message(b"a"), Some(ms(300).into()), LIMIT));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let slow_100 = tokio::spawn(c.call(head("Slow"), message(b"b"), Some(ms(100).into()), LIMIT));
    let sleep_5s = tokio::spawn(c.call(head("Sleep"), message(b"c"), Some(ms(5000).into()), LIMIT));
    let unbounded = tokio::spawn(c.call(head("Sleep"), message(b"d"), None, LIMIT));

    let e = slow_100.await.unwrap().unwrap_err();
    assert_eq!(e, CallError::DeadlineExceeded);
    let at = start.elapsed();
    assert!(at >= Duration::from_millis(100), "ended at {at:?}");
    let e = slow_300.await.unwrap().unwrap_err();
    assert_eq!(e, CallError::DeadlineExceeded);
    let at = start.elapsed();
    assert!(at >= Duration::from_millis(300), "ended at {at:?}");
    // Both streams were reset: the server dropped both handlers.
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(5), s.cancelled.recv())
            .await
            .expect("the server saw the cancellation")
            .unwrap();
    }
    // Calls within their deadline, or without one, are not touched.
    let r = sleep_5s.await.unwrap().unwrap();
    assert_eq!(&r.body[5..], b"c");
    let r = unbounded.await.unwrap().unwrap();
    assert_eq!(&r.body[5..], b"d");
    assert!(!c.is_closed());
}

#[tokio::test]
async fn a_call_waiting_for_the_connection_ends_at_its_deadline() {
    // Never speaks HTTP/2: calls wait for its SETTINGS.
    let addr = silent_server(false).await;
    let c = Client::connect(addr, "x", &ClientConfig::default())
        .await
        .unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_millis(100);
    let e = tokio::time::timeout(
        Duration::from_secs(5),
        c.call(head("Echo"), message(b"x"), Some(deadline.into()), LIMIT),
    )
    .await
    .expect("the deadline ends the call")
    .unwrap_err();
    assert_eq!(e, CallError::DeadlineExceeded);
    assert!(start.elapsed() >= Duration::from_millis(100));
}

/// A head for `/t.S/Echo` with metadata `x-meta: value` (and `pad`, a
/// header as long as asked, to fill the peer's table).
fn head_with(value: &str, pad: usize) -> Arc<RequestHead> {
    let mut headers = HeaderList::new();
    headers.push(b"content-type", b"application/grpc");
    headers.push(b"te", b"trailers");
    headers.push(b"x-meta", value.as_bytes());
    if pad > 0 {
        headers.push(b"x-pad", "p".repeat(pad).as_bytes());
    }
    Arc::new(RequestHead {
        path: b"/t.S/Echo".to_vec(),
        headers,
    })
}

#[tokio::test]
async fn reused_header_blocks_say_what_each_calls_head_says() {
    let s = server(1024).await;
    let c = client(s.addr).await;
    let (a, b) = (head_with("a", 0), head_with("b", 0));
    // The same head again (its block kept and reused), another head, back:
    // every call's metadata arrives as its own head says.
    let order = [&a, &a, &a, &b, &a, &b, &b, &a];
    for (i, h) in order.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let r = c
            .call((*h).clone(), message(b"x"), Some(deadline.into()), LIMIT)
            .await
            .unwrap();
        let want = h.headers.get(b"x-meta").unwrap();
        assert_eq!(r.head.get(b"x-meta"), Some(want), "call {i}");
        // grpc-timeout, not part of the kept block, is each call's own.
        assert!(r.head.get(b"x-timeout").is_some(), "call {i}");
    }
    // Heads that fill the server's table evict the entries a block refers
    // to; calls between them stay right.
    for i in 0..20 {
        let h = head_with(&format!("filler-{i}"), 400);
        let r = c.call(h, message(b"x"), None, LIMIT).await.unwrap();
        assert_eq!(
            r.head.get(b"x-meta"),
            Some(format!("filler-{i}").as_bytes())
        );
        let r = c.call(a.clone(), message(b"x"), None, LIMIT).await.unwrap();
        assert_eq!(r.head.get(b"x-meta"), Some(&b"a"[..]), "after filler {i}");
    }
}

#[tokio::test]
async fn a_call_outlives_its_client_handle() {
    let s = server(1024).await;
    let c = client(s.addr).await;
    let call = c.call(head("Sleep"), message(b"kept"), None, LIMIT);
    // The last handle goes while the call is in flight: the connection
    // stays until the call is answered.
    drop(c);
    let r = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(&r.body[5..], b"kept");
}

#[tokio::test]
async fn a_local_client_moves_only_when_its_owner_drives_it() {
    use mp_sidecar::h2client::Rounds;
    use std::future::Future;
    let mut s = server(1024).await;
    let c = Client::new_local(s.addr, "x", &ClientConfig::default(), None);
    // Not driven: the call goes nowhere.
    let idle = tokio::time::timeout(
        Duration::from_millis(200),
        c.call(head("Echo"), message(b"x"), None, LIMIT),
    )
    .await;
    assert!(idle.is_err(), "an undriven client answered");
    // Driven by the task that awaits the call.
    let mut call = std::pin::pin!(c.call(head("Echo"), message(b"local"), None, LIMIT));
    let r = std::future::poll_fn(|cx| {
        let _ = c.drive(cx);
        call.as_mut().poll(cx)
    })
    .await
    .unwrap();
    assert_eq!(&r.body[5..], b"local");
    // The server goes away: driving tells the owner the connection ended.
    s.stop.take().unwrap().send(()).unwrap();
    let ended = tokio::time::timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| match c.drive(cx) {
            Rounds::Finished => std::task::Poll::Ready(()),
            _ => std::task::Poll::Pending,
        }),
    )
    .await;
    assert!(ended.is_ok(), "the connection never ended");
    assert!(c.is_closed());
}
