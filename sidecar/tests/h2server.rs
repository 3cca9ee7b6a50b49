//! The frame-level server as a library, on loopback: unary calls answered by
//! the `Unary` service (called with the lean client), and a fallback stream
//! that never reads its body held to the connection's bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mp_sidecar::h2client::{Client, ClientConfig, RequestHead};
use mp_sidecar::h2server::{
    self, Failure, Fallback, FrontConfig, Unary, UnaryConn, UnaryFuture, UnaryRequest,
    MAX_FALLBACK_HELD,
};
use mp_sidecar::hpack::{Encoder, HeaderList};
use mp_sidecar::server::ServerConfig;
use mp_testkit::h2::{frames, PREFACE, SETTINGS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Echoes the request message on `/echo/*`; fails `/fail/*` with its path;
/// on `/seen/*` says what it was given: whether the header list is the
/// previous call's very list, the timeout, and `x-meta`.
struct Echo;

impl Unary for Echo {
    fn takes(&self, path: &[u8]) -> bool {
        path.starts_with(b"/echo/") || path.starts_with(b"/fail/") || path.starts_with(b"/seen/")
    }

    fn connection(&self) -> Box<dyn UnaryConn> {
        Box::new(EchoConn { last: None })
    }
}

struct EchoConn {
    /// The previous call's header list.
    last: Option<Arc<HeaderList>>,
}

impl UnaryConn for EchoConn {
    fn call(&mut self, req: UnaryRequest) -> UnaryFuture {
        let shared = self
            .last
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, &req.headers));
        self.last = Some(req.headers.clone());
        Box::pin(async move {
            if req.path.path().starts_with("/fail/") {
                return Err(Failure {
                    code: 9,
                    message: format!("no {}", req.path.path()),
                });
            }
            if req.path.path().starts_with("/seen/") {
                let meta = req.headers.get(b"x-meta").unwrap_or(b"-");
                let text = format!(
                    "{shared} {} {} {}",
                    req.path.path(),
                    req.timeout.is_some(),
                    String::from_utf8_lossy(meta)
                );
                return Ok(Bytes::from(text));
            }
            Ok(req.framed.slice(5..))
        })
    }
}

/// Serves `Echo`, with a fallback that holds its request and never reads
/// or answers it.
async fn server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fallback: Fallback = Arc::new(|req| {
        Box::pin(async move {
            let _unread = req;
            std::future::pending().await
        })
    });
    let cfg = FrontConfig {
        server: ServerConfig::default(),
        max_request: 4 << 20,
        name: "test-front",
    };
    tokio::spawn(h2server::serve(
        listener,
        Arc::new(Echo),
        fallback,
        cfg,
        std::future::pending(),
    ));
    addr
}

fn head(path: &str) -> Arc<RequestHead> {
    let mut headers = HeaderList::new();
    headers.push(b"content-type", b"application/grpc");
    headers.push(b"te", b"trailers");
    Arc::new(RequestHead {
        path: path.as_bytes().to_vec(),
        headers,
    })
}

fn framed(msg: &[u8]) -> Bytes {
    let mut f = vec![0u8];
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f.into()
}

#[tokio::test]
async fn unary_calls_are_answered_by_the_service() {
    let addr = server().await;
    let c = Client::connect(addr, "localhost", &ClientConfig::default())
        .await
        .unwrap();
    let calls: Vec<_> = (0..50u8)
        .map(|i| c.call(head("/echo/A"), framed(&[i; 100]), None, 1 << 20))
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("in time")
            .expect("a reply");
        assert_eq!(r.status(), 200);
        assert_eq!(&r.body[..], &framed(&[i as u8; 100])[..]);
        let t = r.trailers.expect("trailers");
        assert_eq!(t.get(b"grpc-status"), Some(&b"0"[..]));
    }
    let r = c
        .call(head("/fail/B"), framed(b"x"), None, 1 << 20)
        .await
        .expect("a reply");
    // A failure is trailers-only: its status is in the head.
    assert_eq!(r.head.get(b"grpc-status"), Some(&b"9"[..]), "{r:?}");
    assert_eq!(r.head.get(b"grpc-message"), Some(&b"no /fail/B"[..]));
    // The connection remembers the last path it parsed: each call must still
    // reach the service with its own.
    for path in ["/fail/C", "/fail/B", "/fail/C"] {
        let r = c
            .call(head(path), framed(b"x"), None, 1 << 20)
            .await
            .expect("a reply");
        let want = format!("no {path}");
        assert_eq!(r.head.get(b"grpc-message"), Some(want.as_bytes()), "{r:?}");
    }
}

#[tokio::test]
async fn a_fallback_stream_that_does_not_read_is_reset_past_the_bound() {
    let addr = server().await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = [PREFACE, &SETTINGS].concat();
    let mut enc = Encoder::new();
    let mut block = Vec::new();
    enc.begin(&mut block);
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/other.Service/Stream"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
    ] {
        enc.encode(n.as_bytes(), v.as_bytes(), &mut block);
    }
    out.extend_from_slice(&[0, 0, block.len() as u8, 1, 4, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    s.write_all(&out).await.unwrap();

    // DATA in 16 KiB frames within the windows the server grants (its
    // SETTINGS and WINDOW_UPDATEs), until it resets the stream.
    let (mut stream_window, mut conn_window) = (65_535i64, 65_535i64);
    let chunk = vec![7u8; 16 * 1024];
    let (mut sent, mut buf, mut reset) = (0usize, Vec::new(), None);
    let work = async {
        while reset.is_none() {
            if stream_window.min(conn_window) >= chunk.len() as i64 && sent < 2 * MAX_FALLBACK_HELD
            {
                let mut f = vec![0, 0x40, 0, 0, 0, 0, 0, 0, 1];
                f.extend_from_slice(&chunk);
                s.write_all(&f).await.unwrap();
                sent += chunk.len();
                stream_window -= chunk.len() as i64;
                conn_window -= chunk.len() as i64;
                continue;
            }
            let mut tmp = [0u8; 4096];
            let n = s.read(&mut tmp).await.unwrap();
            assert!(n > 0, "the connection ended: {:?}", frames(&buf));
            buf.extend_from_slice(&tmp[..n]);
            let fs = frames(&buf);
            let used: usize = fs.iter().map(|f| 9 + f.3.len()).sum();
            buf.drain(..used);
            for (kind, flags, id, p) in fs {
                match kind {
                    4 if flags & 1 == 0 => {
                        for s in p.chunks(6) {
                            if u16::from_be_bytes([s[0], s[1]]) == 4 {
                                let w = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                                stream_window += i64::from(w) - 65_535;
                            }
                        }
                    }
                    8 => {
                        let inc = i64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]]));
                        if id == 0 {
                            conn_window += inc;
                        } else {
                            stream_window += inc;
                        }
                    }
                    3 if id == 1 => reset = Some(u32::from_be_bytes([p[0], p[1], p[2], p[3]])),
                    7 => panic!("GOAWAY: {p:?}"),
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .expect("a reset within 20 s");
    assert_eq!(reset, Some(0xb), "ENHANCE_YOUR_CALM");
    assert!(
        sent > MAX_FALLBACK_HELD,
        "reset only past the bound ({sent} bytes sent)"
    );

    // Another connection is served as ever.
    let c = Client::connect(addr, "localhost", &ClientConfig::default())
        .await
        .unwrap();
    let r = c
        .call(head("/echo/C"), framed(b"ok"), None, 1 << 20)
        .await
        .expect("a reply");
    assert_eq!(&r.body[..], &framed(b"ok")[..]);
}

fn head_with(path: &str, extra: &[(&str, &str)]) -> Arc<RequestHead> {
    let mut h = (*head(path)).clone();
    for (n, v) in extra {
        h.headers.push(n.as_bytes(), v.as_bytes());
    }
    Arc::new(h)
}

#[tokio::test]
async fn repeated_heads_share_one_list_and_every_call_reads_its_own() {
    let addr = server().await;
    let c = Client::connect(addr, "localhost", &ClientConfig::default())
        .await
        .unwrap();
    let a = head_with("/seen/A", &[("x-meta", "a")]);
    let b = head_with("/seen/B", &[("x-meta", "b")]);
    let gzip = head_with("/seen/A", &[("x-meta", "a"), ("grpc-encoding", "gzip")]);
    let soon = || Some((tokio::time::Instant::now() + Duration::from_secs(30)).into());
    // (head, deadline, what the service says, or the status it fails with).
    let steps: Vec<(&Arc<RequestHead>, Option<_>, Result<&str, &str>)> = vec![
        // The first block fills the client's encoder table and the second
        // indexes it: from the third on, the bytes and the list repeat.
        (&a, None, Ok("false /seen/A false a")),
        (&a, None, Ok("false /seen/A false a")),
        (&a, None, Ok("true /seen/A false a")),
        (&a, None, Ok("true /seen/A false a")),
        // Another head, then back: each call has its own path and metadata.
        (&b, None, Ok("false /seen/B false b")),
        (&a, None, Ok("false /seen/A false a")),
        (&b, None, Ok("false /seen/B false b")),
        // A varying grpc-timeout: a list per call, each with its timeout.
        (&a, soon(), Ok("false /seen/A true a")),
        (&a, soon(), Ok("false /seen/A true a")),
        // Refused in between, then the same head as before answers again.
        (&gzip, None, Err("12")),
        (&b, None, Ok("false /seen/B false b")),
        (&b, None, Ok("true /seen/B false b")),
    ];
    for (i, (h, deadline, want)) in steps.into_iter().enumerate() {
        let r = c
            .call(h.clone(), framed(b"x"), deadline, 1 << 20)
            .await
            .expect("a reply");
        match want {
            Ok(text) => {
                assert_eq!(r.head.get(b"grpc-status"), None, "step {i}: {r:?}");
                assert_eq!(&r.body[5..], text.as_bytes(), "step {i}");
            }
            Err(code) => {
                assert_eq!(
                    r.head.get(b"grpc-status"),
                    Some(code.as_bytes()),
                    "step {i}: {r:?}"
                );
            }
        }
    }
}
