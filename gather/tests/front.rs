//! mp-gather's own HTTP/2 front (sidecar's frame-level `h2server`) against
//! raw sockets: protocol errors and random frames, HTTP/1 and non-HTTP
//! clients, callers that cancel mid-call, request bodies over the limit and
//! rapid reset. Each gets what the server's contract promises, and the
//! gather serves on.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mp_proto::v1::{Reply, Request};
use mp_sidecar::hpack::{Decoder, Encoder, HeaderList};
use mp_testkit::h2::{frames, random_frames, Rng, PREFACE, SETTINGS};
use prost::Message;
use serde_json::json;
use support::{call, eventually, leaf, leaves, shard_args, GatherProc, LeafSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// How long any single read from the gather may take.
const READ_LIMIT: Duration = Duration::from_secs(10);
const HANDLE: &str = "/mp.v1.Handler/Handle";

// Frame types, flags and error codes (RFC 9113).
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS_KIND: u8 = 4;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const CANCEL: u32 = 8;

/// One frame on the wire.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// `Request::json(1)` in its gRPC frame.
fn grpc_request() -> Vec<u8> {
    let msg = Request::json(json!(1)).encode_to_vec();
    let mut f = vec![0u8];
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(&msg);
    f
}

/// A frame from the gather; HEADERS come decoded (every block is decoded in
/// order, so the HPACK tables stay in step).
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
    headers: Option<HeaderList>,
}

impl Frame {
    fn u32_at(&self, i: usize) -> u32 {
        u32::from_be_bytes([
            self.payload[i],
            self.payload[i + 1],
            self.payload[i + 2],
            self.payload[i + 3],
        ])
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .as_ref()?
            .get(name.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// A raw HTTP/2 client connection to the gather.
struct Raw {
    r: OwnedReadHalf,
    w: Option<OwnedWriteHalf>,
    rbuf: Vec<u8>,
    enc: Encoder,
    dec: Decoder,
}

impl Raw {
    /// The initial stream window the gather's SETTINGS give (65,535 when
    /// they do not say), read before anything else.
    async fn initial_window(&mut self) -> i64 {
        loop {
            let f = self.next().await.expect("the gather's SETTINGS");
            if f.kind == SETTINGS_KIND && f.flags & 1 == 0 {
                let window = f.payload.chunks(6).find_map(|s| {
                    (u16::from_be_bytes([s[0], s[1]]) == 4)
                        .then(|| i64::from(u32::from_be_bytes([s[2], s[3], s[4], s[5]])))
                });
                return window.unwrap_or(65_535);
            }
        }
    }

    /// Connects and sends the preface and an empty SETTINGS.
    async fn open(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).unwrap();
        let (r, w) = s.into_split();
        let mut raw = Raw {
            r,
            w: Some(w),
            rbuf: Vec::new(),
            enc: Encoder::new(),
            dec: Decoder::new(),
        };
        raw.send(&[PREFACE, &SETTINGS].concat()).await;
        raw
    }

    async fn send(&mut self, b: &[u8]) {
        let w = self.w.as_mut().expect("writer");
        tokio::time::timeout(READ_LIMIT, w.write_all(b))
            .await
            .expect("write within 10 s")
            .expect("write");
    }

    /// The next frame; `None` when the connection ends or nothing comes
    /// within 10 s. SETTINGS are acknowledged.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some((kind, flags, stream, payload)) = frames(&self.rbuf).into_iter().next() {
                self.rbuf.drain(..9 + payload.len());
                let headers = (kind == HEADERS).then(|| {
                    assert!(flags & END_HEADERS != 0, "no CONTINUATION expected");
                    let mut list = HeaderList::new();
                    self.dec.decode(&payload, &mut list).expect("HPACK");
                    list
                });
                if kind == SETTINGS_KIND && flags & 1 == 0 {
                    // (Unless a task of the test's own does the writing.)
                    if let Some(w) = self.w.as_mut() {
                        let _ = w.write_all(&frame(SETTINGS_KIND, 1, 0, &[])).await;
                    }
                }
                return Some(Frame {
                    kind,
                    flags,
                    stream,
                    payload,
                    headers,
                });
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(READ_LIMIT, self.r.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.rbuf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// A request head for `path` on `stream` (the request body follows).
    fn head(&mut self, stream: u32, path: &str) -> Vec<u8> {
        self.head_of(
            stream,
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
    }

    /// A request head of exactly `fields` on `stream`.
    fn head_of(&mut self, stream: u32, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        self.enc.begin(&mut block);
        for (n, v) in fields {
            self.enc.encode(n.as_bytes(), v.as_bytes(), &mut block);
        }
        frame(HEADERS, END_HEADERS, stream, &block)
    }

    /// Sends a whole `Handle` call (`Request::json(1)`) on `stream`.
    async fn start_call(&mut self, stream: u32) {
        let mut out = self.head(stream, HANDLE);
        out.extend(frame(DATA, END_STREAM, stream, &grpc_request()));
        self.send(&out).await;
    }

    /// Reads until `stream` ends: its response head, DATA bytes and
    /// trailers (the head is the trailers in a trailers-only answer).
    async fn response(&mut self, stream: u32) -> (Frame, Vec<u8>, Option<Frame>) {
        let mut head = None;
        let mut data = Vec::new();
        loop {
            let f = self
                .next()
                .await
                .unwrap_or_else(|| panic!("connection ended before stream {stream} did"));
            assert!(f.kind != GOAWAY, "GOAWAY: {f:?}");
            if f.stream != stream {
                continue;
            }
            match f.kind {
                HEADERS if head.is_none() => {
                    let end = f.flags & END_STREAM != 0;
                    head = Some(f);
                    if end {
                        return (head.unwrap(), data, None);
                    }
                }
                HEADERS => {
                    assert!(f.flags & END_STREAM != 0, "trailers end the stream");
                    return (head.unwrap(), data, Some(f));
                }
                DATA => {
                    data.extend_from_slice(&f.payload);
                    assert!(f.flags & END_STREAM == 0, "a gRPC answer ends in trailers");
                }
                RST_STREAM => panic!("stream {stream} reset: {f:?}"),
                _ => {}
            }
        }
    }

    /// A whole `Handle` call on `stream`: it must succeed.
    async fn call_ok(&mut self, stream: u32) -> Reply {
        self.start_call(stream).await;
        let (head, data, trailers) = self.response(stream).await;
        assert_eq!(head.header(":status").as_deref(), Some("200"), "{head:?}");
        let trailers = trailers.unwrap_or_else(|| panic!("trailers-only answer: {head:?}"));
        assert_eq!(
            trailers.header("grpc-status").as_deref(),
            Some("0"),
            "{trailers:?}"
        );
        assert!(data.len() >= 5 && data[0] == 0, "one gRPC frame: {data:?}");
        Reply::decode(&data[5..]).expect("a Reply")
    }
}

/// Sends a preface, an empty SETTINGS and `then`; returns the GOAWAY error
/// code the gather answers with (and whether it acknowledged a PING).
async fn abuse(addr: SocketAddr, then: &[u8]) -> (Option<u32>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[PREFACE, &SETTINGS, then].concat())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(READ_LIMIT, s.read_to_end(&mut buf)).await;
    let fs = frames(&buf);
    let goaway = fs
        .iter()
        .find(|f| f.0 == GOAWAY)
        .map(|f| u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]));
    let pong = fs
        .iter()
        .any(|f| f.0 == 6 && f.1 == 1 && f.3 == b"12345678");
    (goaway, pong)
}

/// A leaf's counter, now.
fn n(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

/// One successful call through tonic.
async fn serves(g: &GatherProc) {
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        call(&mut g.client().await, json!("alive")).await
    })
    .await
    .expect("a call within 20 s");
    r.expect("the gather serves a normal call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_get_a_goaway_naming_the_error_and_the_gather_serves_on() {
    let ls = leaves(1).await;
    let g = GatherProc::start(&shard_args(&ls));
    let ping = frame(6, 0, 0, b"12345678");
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        // A client may only open odd streams.
        (
            "HEADERS on an even stream id",
            frame(HEADERS, 5, 2, &[0x82]),
            1,
        ),
        // We advertise 64 KiB frames.
        (
            "a frame over the max frame size",
            frame(HEADERS, 5, 1, &vec![0u8; 65_537]),
            6,
        ),
        // Index 70 of an empty dynamic table.
        (
            "an undecodable header block",
            frame(HEADERS, 5, 1, &[0x80 | 70]),
            9,
        ),
        ("DATA on an idle stream", frame(DATA, 1, 9, b"x"), 1),
        (
            "CONTINUATION without HEADERS",
            frame(9, END_HEADERS, 1, &[0x82]),
            1,
        ),
        (
            "a WINDOW_UPDATE of 0",
            frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 0]),
            1,
        ),
        (
            "PUSH_PROMISE from the client",
            frame(5, END_HEADERS, 1, &[0, 0, 0, 2, 0x82]),
            1,
        ),
    ];
    for (what, bad, code) in cases {
        let got = abuse(g.addr, &[&ping[..], &bad].concat()).await;
        assert_eq!(
            got,
            (Some(code), true),
            "{what}: a GOAWAY with code {code} after the PING's ACK"
        );
    }
    serves(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_frames_never_take_the_gather_down() {
    let ls = leaves(1).await;
    let mut g = GatherProc::start(&shard_args(&ls));
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut conns = Vec::new();
    for i in 0..200 {
        let mut out = Vec::new();
        if i % 10 == 9 {
            // Now and then, random bytes with no preface at all.
            out.extend((0..rng.next_u64() % 300).map(|_| rng.next_u64() as u8));
        } else {
            out.extend_from_slice(PREFACE);
            out.extend_from_slice(&SETTINGS);
        }
        out.extend(random_frames(&mut rng));
        let addr = g.addr;
        conns.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(&out).await;
            let _ = s.shutdown().await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(READ_LIMIT, s.read_to_end(&mut buf)).await;
        }));
    }
    for c in conns {
        c.await.unwrap();
    }
    for _ in 0..3 {
        serves(&g).await;
    }
    assert!(
        g.child.inner().try_wait().unwrap().is_none(),
        "mp-gather exited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_gets_a_505_and_non_http_is_closed() {
    let ls = leaves(1).await;
    let g = GatherProc::start(&shard_args(&ls));
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(READ_LIMIT, s.read_to_end(&mut buf))
        .await
        .expect("the answer and close within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 505"), "{text}");
    assert!(text.contains("mp-gather"), "{text}");

    // A TLS-like record and a line that is not HTTP: closed, unanswered.
    for garbage in [
        &[0x16u8, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
        b"hello there\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(g.addr).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut buf = Vec::new();
        let r = tokio::time::timeout(READ_LIMIT, s.read_to_end(&mut buf))
            .await
            .expect("closed within 10 s");
        // A close with our bytes unread may come as a reset: closed too.
        if let Err(e) = r {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
        assert!(buf.is_empty(), "no answer to garbage: {buf:?}");
    }
    serves(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_resets_or_goes_away_cancels_the_leaf_call() {
    let slow = vec![
        leaf(LeafSpec {
            delay: Duration::from_secs(3),
            ..LeafSpec::default()
        })
        .await,
    ];
    let stats = slow[0].stats.clone();
    let g = GatherProc::start(&shard_args(&slow));

    // RST_STREAM CANCEL mid-call.
    let mut raw = Raw::open(g.addr).await;
    raw.start_call(1).await;
    assert!(
        eventually(Duration::from_secs(5), || n(&stats.started) == 1).await,
        "the leaf got the call"
    );
    raw.send(&rst(1, CANCEL)).await;
    assert!(
        eventually(Duration::from_secs(3), || n(&stats.cancelled) == 1).await,
        "the leaf call was not cancelled: {stats:?}"
    );

    // The whole connection goes away mid-call.
    let mut raw2 = Raw::open(g.addr).await;
    raw2.start_call(1).await;
    assert!(
        eventually(Duration::from_secs(5), || n(&stats.started) == 2).await,
        "the leaf got the second call"
    );
    drop(raw2);
    assert!(
        eventually(Duration::from_secs(3), || n(&stats.cancelled) == 2).await,
        "the leaf call was not cancelled: {stats:?}"
    );
    assert_eq!(n(&stats.finished), 0, "none ran to its end");

    // The first connection, its stream reset, still serves a call.
    let reply = tokio::time::timeout(Duration::from_secs(20), raw.call_ok(3))
        .await
        .expect("an answer within 20 s");
    assert!(reply.body.is_some(), "{reply:?}");
    assert_eq!(n(&stats.finished), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_the_limit_is_resource_exhausted() {
    let ls = leaves(1).await;
    let g = GatherProc::start(&shard_args(&ls));
    let mut raw = Raw::open(g.addr).await;

    // The windows: the stream's from the gather's SETTINGS, the
    // connection's from 65,535 and its WINDOW_UPDATEs.
    let mut stream_window = raw.initial_window().await;
    let mut conn_window: i64 = 65_535;

    // A message of 4 MiB + 200 KiB (its frame header says so), in DATA
    // frames of at most 60,000 bytes, sent as the windows allow. The request
    // never ends (no END_STREAM): the answer must come as soon as the body
    // is over the limit, not when it is whole.
    let msg_len = (4 << 20) + 200 * 1024;
    let mut body = vec![0u8; 5 + msg_len];
    body[1..5].copy_from_slice(&(msg_len as u32).to_be_bytes());
    let head = raw.head(1, HANDLE);
    raw.send(&head).await;
    let mut sent = 0;
    let mut answer = None;
    let work = async {
        while answer.is_none() {
            let n = (body.len() - sent).min(60_000);
            if n > 0 && n as i64 <= stream_window.min(conn_window) {
                raw.send(&frame(DATA, 0, 1, &body[sent..sent + n])).await;
                sent += n;
                stream_window -= n as i64;
                conn_window -= n as i64;
                continue;
            }
            let f = raw.next().await.expect("the connection ended");
            match (f.kind, f.stream) {
                (WINDOW_UPDATE, 0) => conn_window += i64::from(f.u32_at(0)),
                (WINDOW_UPDATE, 1) => stream_window += i64::from(f.u32_at(0)),
                (HEADERS, 1) => answer = Some(f),
                (GOAWAY, _) | (RST_STREAM, 1) => panic!("{f:?}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .expect("an answer within 30 s");
    let answer = answer.unwrap();
    assert!(answer.flags & END_STREAM != 0, "trailers-only: {answer:?}");
    assert_eq!(
        answer.header("grpc-status").as_deref(),
        Some("8"),
        "RESOURCE_EXHAUSTED: {answer:?}"
    );
    let message = answer.header("grpc-message").unwrap_or_default();
    assert!(
        message.contains("mp-gather") && message.contains("limit"),
        "{message}"
    );

    // The same connection serves on, and so does a new one.
    let reply = tokio::time::timeout(Duration::from_secs(20), raw.call_ok(3))
        .await
        .expect("an answer within 20 s");
    assert!(reply.body.is_some(), "{reply:?}");
    let mut fresh = Raw::open(g.addr).await;
    tokio::time::timeout(Duration::from_secs(20), fresh.call_ok(1))
        .await
        .expect("an answer within 20 s");
    serves(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_ends_the_connection_with_enhance_your_calm() {
    let ls = leaves(1).await;
    let g = GatherProc::start(&shard_args(&ls));
    let mut raw = Raw::open(g.addr).await;
    // 2,500 streams opened (a head, no body yet) and reset at once, written
    // by a task of their own so the reads below never wait on the writes
    // (and the writes may fail once the gather has closed).
    let mut batches = Vec::new();
    for b in 0..25u32 {
        let mut out = Vec::new();
        for i in 0..100u32 {
            let id = 1 + 2 * (b * 100 + i);
            out.extend(raw.head(id, HANDLE));
            out.extend(rst(id, CANCEL));
        }
        batches.push(out);
    }
    let mut w = raw.w.take().unwrap();
    let writer = tokio::spawn(async move {
        for b in batches {
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
        w
    });
    let goaway = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match raw.next().await {
                Some(f) if f.kind == GOAWAY => return Some(f),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .expect("within 20 s")
    .expect("a GOAWAY before the connection ended");
    assert_eq!(goaway.u32_at(4), 0xb, "ENHANCE_YOUR_CALM: {goaway:?}");
    let debug = String::from_utf8_lossy(&goaway.payload[8..]);
    assert!(debug.contains("reset"), "the GOAWAY says why: {debug}");
    // Nothing more comes: the gather closed the connection.
    assert!(raw.next().await.is_none(), "the connection ends");
    let _ = writer.await;
    serves(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holds_a_bounded_amount_of_arriving_requests() {
    let ls = leaves(1).await;
    let g = GatherProc::start(&shard_args(&ls));
    let mut raw = Raw::open(g.addr).await;
    let initial = raw.initial_window().await;
    // Bodies of 4,000,000 bytes (under the 4 MiB message limit), none of
    // them ended, one stream after the other: 16 fit in the 64 MiB a
    // connection holds, the 17th crosses it and is refused; nothing else is.
    let body = vec![0u8; 4_000_000];
    let mut conn_window: i64 = 65_535;
    let mut windows = std::collections::HashMap::new();
    let mut refused = None;
    let work = async {
        for k in 0..17u32 {
            let id = 1 + 2 * k;
            let head = raw.head(id, HANDLE);
            raw.send(&head).await;
            windows.insert(id, initial);
            let mut sent = 0;
            while sent < body.len() && refused.is_none() {
                let w = windows[&id].min(conn_window);
                let n = (body.len() - sent).min(60_000);
                if n as i64 <= w {
                    raw.send(&frame(DATA, 0, id, &body[sent..sent + n])).await;
                    sent += n;
                    *windows.get_mut(&id).unwrap() -= n as i64;
                    conn_window -= n as i64;
                    continue;
                }
                let f = raw.next().await.expect("the connection ended");
                match (f.kind, f.stream) {
                    (WINDOW_UPDATE, 0) => conn_window += i64::from(f.u32_at(0)),
                    (WINDOW_UPDATE, s) => *windows.entry(s).or_insert(0) += i64::from(f.u32_at(0)),
                    (HEADERS, s) => refused = Some((s, f)),
                    (GOAWAY, _) | (RST_STREAM, _) => panic!("{f:?}"),
                    _ => {}
                }
            }
            if refused.is_some() {
                break;
            }
        }
        // The 17th stream's last bytes may not have needed a read: wait for
        // its answer.
        while refused.is_none() {
            let f = raw.next().await.expect("the connection ended");
            if f.kind == HEADERS {
                refused = Some((f.stream, f));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .expect("within 60 s");
    let (stream, answer) = refused.unwrap();
    assert_eq!(stream, 33, "the 17th stream is the one refused");
    assert_eq!(answer.header("grpc-status").as_deref(), Some("8"));
    let message = answer.header("grpc-message").unwrap_or_default();
    assert!(message.contains("holds"), "{message}");
    // A new connection is served as ever.
    serves(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_the_front_refuses_get_clear_statuses() {
    let ls = leaves(1).await;
    let g = GatherProc::start(&shard_args(&ls));
    let mut raw = Raw::open(g.addr).await;
    let base = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", HANDLE),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];
    let big = "x".repeat(20_000);
    let cases = [
        (
            [&base[..], &[("grpc-encoding", "gzip")]].concat(),
            "12",
            "uncompressed",
        ),
        (
            [&base[..], &[("x-big", big.as_str())]].concat(),
            "8",
            "header list",
        ),
        (
            base.iter()
                .copied()
                .filter(|(n, _)| *n != ":scheme")
                .collect(),
            "13",
            ":scheme",
        ),
    ];
    for (i, (fields, want, says)) in cases.iter().enumerate() {
        let id = 1 + 2 * i as u32;
        let mut out = raw.head_of(id, fields);
        out.extend(frame(DATA, END_STREAM, id, &grpc_request()));
        raw.send(&out).await;
        let (head, _, trailers) = tokio::time::timeout(READ_LIMIT, raw.response(id))
            .await
            .expect("an answer in time");
        let t = trailers.unwrap_or(head);
        assert_eq!(
            t.header("grpc-status").as_deref(),
            Some(*want),
            "{fields:?}: {t:?}"
        );
        let msg = t.header("grpc-message").unwrap_or_default();
        assert!(msg.contains(says), "{says:?} not in {msg:?}");
    }
    // The connection serves on.
    let reply = tokio::time::timeout(READ_LIMIT, raw.call_ok(7))
        .await
        .expect("an answer in time");
    assert!(reply.body.is_some(), "{reply:?}");
}
