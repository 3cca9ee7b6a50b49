//! A frame-level HTTP/2 server for gRPC, on the relay's frame code
//! ([`wire`], [`hpack`](crate::hpack), [`side`]).
//!
//! One task per connection. Unary calls that the [`Unary`] service takes are
//! read whole, handed to it, and its future is polled inside that task (no
//! task, channel or lock per call; a slot of the connection's call set, whose
//! wakes during the task's own rounds cost no rescheduling); the answer goes
//! back as HEADERS, one DATA frame and trailers, within the client's windows.
//! Each connection has its own side of the service ([`UnaryConn`]), which
//! may keep state for its calls (e.g. upstream connections of its own) that
//! the connection's task drives in the same rounds. Every other stream
//! (health checks, server reflection: streaming calls, rare and light) goes
//! to a [`Fallback`] HTTP service (e.g. tonic's) in a task of its own, its
//! request and response bodies carried by channels.
//!
//! What callers can rely on:
//! - A unary request is exactly one uncompressed gRPC message of at most
//!   [`FrontConfig::max_request`] bytes: anything else is answered with a
//!   clear status (RESOURCE_EXHAUSTED, INTERNAL, UNIMPLEMENTED) before the
//!   service sees it. A request that is not gRPC at all (not POST, no
//!   `application/grpc` content type) gets a plain HTTP 415.
//! - A client that resets a stream (or goes away) drops its call's future:
//!   whatever it was waiting on is cancelled.
//! - Protocol errors end the connection with a GOAWAY naming the error;
//!   resetting more than 2,000 streams a second is one ("rapid reset").
//! - On shutdown, every connection gets a GOAWAY, its calls finish, and
//!   [`serve`] returns once all are done or the grace period is over.
//! - What a connection holds of requests is bounded: unary request bodies
//!   being received, [`MAX_HELD`] bytes in all (past it the call crossing
//!   it is answered RESOURCE_EXHAUSTED); the fallback's request bodies
//!   [`MAX_FALLBACK_HELD`] bytes not yet read (past it the stream is reset,
//!   ENHANCE_YOUR_CALM).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::{AbortHandle, Abortable};
use http::uri::PathAndQuery;
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::debug;

use crate::callset::{CallSet, Key};
use crate::grpc::{self, code};
use crate::hpack::HeaderList;
use crate::server::{serve_connections, ServerConfig};
use crate::shutdown::{DrainSignal, Watch};
use crate::side::{self, Close, Engine, Ids, KeptBlock, ServerConn, ServerStreams, Side};
use crate::tls::Io;
use crate::wire::{self, flag, kind, put_data, put_rst, reason, ConnError, Head};

/// A unary gRPC call as the [`Unary`] service receives it.
#[derive(Debug)]
pub struct UnaryRequest {
    /// The method path, e.g. `/mp.v1.Handler/Handle`.
    pub path: PathAndQuery,
    /// The request's header list as received (names in lower case;
    /// pseudo-headers first, then `content-type`, `te`, `grpc-timeout` and
    /// the rest). Shared: the calls of a connection whose requests carry
    /// the same head get the same list.
    pub headers: Arc<HeaderList>,
    /// The caller's `grpc-timeout`, parsed.
    pub timeout: Option<Duration>,
    /// The request message in its gRPC frame (the 5-byte prefix included):
    /// one uncompressed message whose declared length matches.
    pub framed: Bytes,
}

/// A gRPC status that ends a call unsuccessfully.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The gRPC status code (never 0).
    pub code: u16,
    /// The status message.
    pub message: String,
}

/// What a unary call's future resolves to: the reply message (without its
/// gRPC frame prefix), or a status.
pub type UnaryFuture = Pin<Box<dyn Future<Output = Result<Bytes, Failure>> + Send>>;

/// The service that answers unary calls inside the connection task.
pub trait Unary: Send + Sync + 'static {
    /// Whether calls to `path` are this service's (the rest go to the
    /// fallback).
    fn takes(&self, path: &[u8]) -> bool;
    /// The side of the service a new connection uses: it answers that
    /// connection's calls and may keep state for them (e.g. connections of
    /// its own to the services its calls call).
    fn connection(&self) -> Box<dyn UnaryConn>;
}

/// One connection's side of a [`Unary`] service: made when the connection
/// opens, dropped when it ends, driven by the connection's task.
pub trait UnaryConn: Send {
    /// Answers one call. The future is polled by the connection's task and
    /// dropped, unfinished, when the client cancels the call.
    fn call(&mut self, req: UnaryRequest) -> UnaryFuture;
    /// Does the connection's own work (e.g. drives its upstream
    /// connections), registering its wakeups with `cx`: called at every round
    /// of the connection's task, before its calls are polled (so answers that
    /// came are taken in the same round). Whether anything happened. None by
    /// default.
    fn poll(&mut self, _cx: &mut Context<'_>) -> bool {
        false
    }
    /// Sends what the calls just polled started (e.g. their requests
    /// upstream): called at every round after the calls were polled. Whether
    /// anything happened. None by default.
    fn flush(&mut self, _cx: &mut Context<'_>) -> bool {
        false
    }
}

/// A response body of the fallback service.
pub type ResponseBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The service for every stream the [`Unary`] service does not take: one
/// request in (its body streamed), one response out (streamed). Runs in a
/// task per stream.
pub type Fallback = Arc<
    dyn Fn(
            http::Request<RequestBody>,
        ) -> Pin<Box<dyn Future<Output = http::Response<ResponseBody>> + Send>>
        + Send
        + Sync,
>;

/// How the server serves.
#[derive(Clone, Debug)]
pub struct FrontConfig {
    /// Stream limit, windows, frame and header list sizes, TLS, grace.
    pub server: ServerConfig,
    /// Largest unary request message (bytes, without the frame prefix).
    pub max_request: usize,
    /// Who answers, for messages (e.g. `mp-gather`).
    pub name: &'static str,
}

/// Serves `listener` until `shutdown` resolves; then stops accepting, sends
/// every client a GOAWAY and waits for their calls to finish, at most the
/// configured grace.
pub async fn serve(
    listener: TcpListener,
    unary: Arc<dyn Unary>,
    fallback: Fallback,
    cfg: FrontConfig,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared {
        unary,
        fallback,
        cfg,
    });
    let (tls, grace) = (shared.cfg.server.tls.clone(), shared.cfg.server.grace);
    serve_connections(listener, tls, grace, shutdown, move |io, _, watch| {
        Conn::new(shared.clone(), io, watch)
    })
    .await;
}

/// The request body the fallback reads: the DATA of its stream as it comes.
#[derive(Debug)]
pub struct RequestBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
    buffered: Arc<AtomicUsize>,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => {
                self.buffered.fetch_sub(b.len(), Ordering::Relaxed);
                Poll::Ready(Some(Ok(http_body::Frame::data(b))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Bytes of unary request bodies one connection may hold while they arrive
/// (16 calls of the 4 MiB maximum).
pub const MAX_HELD: usize = 64 << 20;
/// Bytes sent to a connection's fallback streams that they have not read
/// yet (health and reflection requests are small).
pub const MAX_FALLBACK_HELD: usize = 4 << 20;

impl Drop for RequestBody {
    fn drop(&mut self) {
        // What the service never read is no longer held for it.
        while let Ok(b) = self.rx.try_recv() {
            self.buffered.fetch_sub(b.len(), Ordering::Relaxed);
        }
    }
}

/// Unwritten output past which a connection stops reading its client.
const WRITE_HIGH: usize = 1024 * 1024;

struct Shared {
    unary: Arc<dyn Unary>,
    fallback: Fallback,
    cfg: FrontConfig,
}

/// What a fallback stream's task tells the connection.
enum Event {
    /// The response head; true: it ends the stream.
    Head(http::response::Parts, bool),
    Data(Bytes),
    Trailers(http::HeaderMap),
    /// The body ended without trailers.
    End,
    /// The body failed.
    Failed(String),
}

enum Kind {
    /// A unary call: its head until the request is whole, the request so
    /// far, then the call's key in the call set while it runs.
    Unary {
        head: Option<(PathAndQuery, Arc<HeaderList>, Option<Duration>)>,
        body: BytesMut,
        /// Its key in [`Conn::calls`] while it runs.
        running: Option<Key>,
    },
    /// A fallback stream: the request body's sender (dropped at its end),
    /// the task.
    Fallback {
        body: Option<mpsc::UnboundedSender<Bytes>>,
        task: AbortHandle,
    },
}

struct Stream {
    kind: Kind,
    /// The client ended its side.
    req_end: bool,
    /// Request bytes taken, not yet given back with a stream WINDOW_UPDATE.
    credit: u32,
    head_sent: bool,
    /// Our send window for this stream.
    window: i64,
    /// Response bytes waiting for the windows.
    out: BytesMut,
    /// Nothing more comes after `out` (then `trailers`, or an empty
    /// END_STREAM DATA frame).
    resp_end: bool,
    trailers: Option<Trailers>,
}

/// A response's trailers.
enum Trailers {
    /// `grpc-status: 0`.
    Ok,
    List(HeaderList),
}

struct Conn {
    shared: Arc<Shared>,
    side: Side,
    streams: Ids<Stream>,
    calls: CallSet<UnaryFuture>,
    /// Calls that finished in a round, to answer.
    finished: Vec<(u32, Result<Bytes, Failure>)>,
    /// The connection's side of the unary service (dropped after the calls
    /// above).
    unary: Box<dyn UnaryConn>,
    events: mpsc::UnboundedReceiver<(u32, Event)>,
    events_tx: mpsc::UnboundedSender<(u32, Event)>,
    /// A fallback task held a sender of `events` at the last round: the
    /// channel is read until a round finds none (and reads it once more).
    fallback_senders: bool,
    state: ServerConn,
    /// The drain signal (it holds the connection's watch of the drain).
    drain: DrainSignal,
    /// The blocks of a successful reply's head and trailers, the same for
    /// every call.
    ok_head: KeptBlock,
    ok_trailers: KeptBlock,
    /// The last request head read, and what was read off it.
    last_request: Option<(Arc<HeaderList>, RequestInfo)>,
    /// Bytes of unary request bodies still arriving.
    held: usize,
    /// Bytes sent to fallback streams and not yet read by them.
    fallback_held: Arc<AtomicUsize>,
}

/// The request head fields the front checks, found in one pass over the
/// list (the first of each name), not one search per field.
#[derive(Default)]
struct RequestFields<'a> {
    path: Option<&'a [u8]>,
    method: Option<&'a [u8]>,
    scheme: Option<&'a [u8]>,
    content_type: Option<&'a [u8]>,
    encoding: Option<&'a [u8]>,
    timeout: Option<&'a [u8]>,
}

/// What the front reads off a request head, kept with the last head read.
#[derive(Clone)]
struct RequestInfo {
    /// `:path`, `:method` and `:scheme` are there.
    valid: bool,
    /// The unary service takes the path (else the fallback does).
    unary: bool,
    /// POST, with a gRPC content-type.
    grpc: bool,
    /// No `grpc-encoding`, or `identity`.
    identity: bool,
    /// The path, parsed, for a unary gRPC call (none when malformed).
    path: Option<PathAndQuery>,
    /// `grpc-timeout`, parsed.
    timeout: Option<Duration>,
}

impl<'a> RequestFields<'a> {
    fn of(list: &'a HeaderList) -> Self {
        let mut f = RequestFields::default();
        for (name, value) in list.iter() {
            let slot = match name {
                b":path" => &mut f.path,
                b":method" => &mut f.method,
                b":scheme" => &mut f.scheme,
                b"content-type" => &mut f.content_type,
                b"grpc-encoding" => &mut f.encoding,
                b"grpc-timeout" => &mut f.timeout,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        f
    }
}

impl Conn {
    fn new(shared: Arc<Shared>, io: Io, watch: Watch) -> Conn {
        let (events_tx, events) = mpsc::unbounded_channel();
        let unary = shared.unary.connection();
        Conn {
            shared,
            side: Side::new(Some(io)),
            streams: Ids::default(),
            calls: CallSet::new(),
            finished: Vec::new(),
            unary,
            events,
            events_tx,
            fallback_senders: false,
            state: ServerConn::default(),
            drain: DrainSignal::new(watch),
            ok_head: KeptBlock::default(),
            ok_trailers: KeptBlock::default(),
            last_request: None,
            held: 0,
            fallback_held: Arc::new(AtomicUsize::new(0)),
        }
    }

    // ---- input ------------------------------------------------------------

    fn data_frame(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        let r = wire::unpad(&h, p)?;
        let data = &p[r];
        let end = h.has(flag::END_STREAM);
        // Every byte is taken off the socket at once (a unary request is
        // bounded; a fallback body is bounded below): the connection's window
        // gets it back at once.
        self.credit(h.len);
        let window = self.shared.cfg.server.stream_window;
        let max = self.shared.cfg.max_request;
        let Some(s) = self.streams.get_mut(&h.stream) else {
            if h.stream == 0 || h.stream > self.state.last_id {
                return Err(ConnError::protocol("DATA on an idle stream"));
            }
            // A stream we already ended: nothing to do.
            return Ok(());
        };
        if s.req_end {
            return Err(ConnError {
                code: reason::STREAM_CLOSED,
                what: "DATA after END_STREAM",
            });
        }
        s.req_end = end;
        let (mut over, mut crowded) = (false, false);
        match &mut s.kind {
            Kind::Unary { body, .. } => {
                if body.len() + data.len() > max + 5 {
                    over = true;
                } else if self.held + data.len() > MAX_HELD {
                    crowded = true;
                } else {
                    side::append(body, data);
                    self.held += data.len();
                }
            }
            Kind::Fallback { body, .. } => {
                let buffered = &self.fallback_held;
                if buffered.load(Ordering::Relaxed) + data.len() > MAX_FALLBACK_HELD {
                    over = true;
                } else if let Some(tx) = body {
                    if !data.is_empty() {
                        // Counted before it can be read (and uncounted).
                        buffered.fetch_add(data.len(), Ordering::Relaxed);
                        if tx.send(Bytes::copy_from_slice(data)).is_err() {
                            buffered.fetch_sub(data.len(), Ordering::Relaxed);
                        }
                    }
                    if end {
                        *body = None;
                    }
                }
            }
        }
        if crowded {
            let msg = format!(
                "{}: this connection holds {MAX_HELD} bytes of requests still arriving; send \
                 fewer large requests at once",
                self.shared.cfg.name
            );
            self.answer(h.stream, code::RESOURCE_EXHAUSTED, &msg);
            return Ok(());
        }
        if over {
            if matches!(s.kind, Kind::Unary { .. }) {
                let msg = format!(
                    "{}: the request is larger than the {max}-byte limit",
                    self.shared.cfg.name
                );
                self.answer(h.stream, code::RESOURCE_EXHAUSTED, &msg);
            } else if let Some(s) = self.streams.remove(&h.stream) {
                self.cancel(&s);
                put_rst(&mut self.side.wbuf, h.stream, reason::ENHANCE_YOUR_CALM);
            }
            return Ok(());
        }
        s.credit += h.len as u32;
        if !end && s.credit >= window / 2 {
            wire::put_window_update(&mut self.side.wbuf, h.stream, s.credit);
            s.credit = 0;
        }
        if end && matches!(s.kind, Kind::Unary { .. }) {
            self.start_call(h.stream);
        }
        Ok(())
    }

    /// Gives `n` bytes back to the connection's window; the WINDOW_UPDATE
    /// goes out once half of it is due.
    fn credit(&mut self, n: usize) {
        self.side.credit += n as u32;
        if self.side.credit >= self.shared.cfg.server.conn_window / 2 {
            wire::put_window_update(&mut self.side.wbuf, 0, self.side.credit);
            self.side.credit = 0;
        }
    }

    fn header_block(&mut self, id: u32, end: bool) -> Result<(), ConnError> {
        // A client's requests mostly repeat their head block: the list
        // decoded for the last one serves again.
        let list = self.side.dec.decode_shared(&self.side.block)?;
        if let Some(s) = self.streams.get_mut(&id) {
            // Request trailers: they end the request (their content is not
            // passed on; gRPC requests carry none).
            if !end || s.req_end {
                put_rst(&mut self.side.wbuf, id, reason::PROTOCOL_ERROR);
                if let Some(s) = self.streams.remove(&id) {
                    self.cancel(&s);
                }
                return Ok(());
            }
            s.req_end = true;
            match &mut s.kind {
                Kind::Unary { .. } => self.start_call(id),
                Kind::Fallback { body, .. } => *body = None,
            }
            return Ok(());
        }
        if id <= self.state.last_id {
            // A stream we ended while the client was still sending: its late
            // trailers were decoded (HPACK state) and are dropped.
            return Ok(());
        }
        self.state.last_id = id;
        if self.state.goaway_sent
            || self.streams.len() >= self.shared.cfg.server.max_concurrent_streams as usize
        {
            put_rst(&mut self.side.wbuf, id, reason::REFUSED_STREAM);
            return Ok(());
        }
        let name = self.shared.cfg.name;
        let info = self.request_info(&list);
        let mut stream = Stream {
            kind: Kind::Unary {
                head: None,
                body: BytesMut::new(),
                running: None,
            },
            req_end: end,
            credit: 0,
            head_sent: false,
            window: i64::from(self.side.peer.initial_window_size),
            out: BytesMut::new(),
            resp_end: false,
            trailers: None,
        };
        if !info.valid {
            self.streams.insert(id, stream);
            let msg = format!("{name}: request without :method, :scheme or :path");
            self.answer(id, code::INTERNAL, &msg);
            return Ok(());
        }
        if list.size() > self.shared.cfg.server.max_header_list_size as usize {
            self.streams.insert(id, stream);
            let msg = format!(
                "{name}: request header list is over the limit of {} bytes",
                self.shared.cfg.server.max_header_list_size
            );
            self.answer(id, code::RESOURCE_EXHAUSTED, &msg);
            return Ok(());
        }
        if !info.unary {
            stream.kind = self.start_fallback(id, &list, end);
            self.streams.insert(id, stream);
            return Ok(());
        }
        self.streams.insert(id, stream);
        if !info.grpc {
            let text =
                format!("{name} serves gRPC only: POST with content-type application/grpc\n");
            self.plain(id, 415, &text);
            return Ok(());
        }
        if !info.identity {
            let msg = format!("{name} accepts uncompressed messages only (grpc-encoding identity)");
            self.answer(id, code::UNIMPLEMENTED, &msg);
            return Ok(());
        }
        let Some(path) = info.path else {
            self.answer(id, code::INTERNAL, &format!("{name}: malformed :path"));
            return Ok(());
        };
        if let Some(Stream {
            kind: Kind::Unary { head, .. },
            ..
        }) = self.streams.get_mut(&id)
        {
            *head = Some((path, list, info.timeout));
        }
        if end {
            self.start_call(id);
        }
        Ok(())
    }

    /// What the front reads off request head `list`. A client's requests
    /// mostly share their list (see [`crate::hpack::Decoder::decode_shared`]):
    /// then it is what was read off the last one.
    fn request_info(&mut self, list: &Arc<HeaderList>) -> RequestInfo {
        if let Some((last, info)) = &self.last_request {
            if Arc::ptr_eq(last, list) {
                return info.clone();
            }
        }
        let req = RequestFields::of(list);
        let path = req.path.unwrap_or(b"");
        let valid =
            !path.is_empty() && req.method.is_some_and(|m| !m.is_empty()) && req.scheme.is_some();
        let unary = valid && self.shared.unary.takes(path);
        let grpc = req.method == Some(b"POST")
            && req
                .content_type
                .is_some_and(|v| v.starts_with(b"application/grpc"));
        // Only calls the unary service answers need the path parsed. Heads
        // that differ (a grpc-timeout per call) mostly repeat the path: a
        // clone of the last one parsed is a reference count, not a parse.
        let parsed = match &self.last_request {
            _ if !(unary && grpc) => None,
            Some((_, RequestInfo { path: Some(p), .. })) if p.as_str().as_bytes() == path => {
                Some(p.clone())
            }
            _ => PathAndQuery::try_from(path.to_vec()).ok(),
        };
        let info = RequestInfo {
            valid,
            unary,
            grpc,
            identity: req.encoding.is_none_or(|e| e == b"identity"),
            path: parsed,
            timeout: req.timeout.and_then(grpc::parse_timeout_bytes),
        };
        self.last_request = Some((list.clone(), info.clone()));
        info
    }

    /// The request of unary stream `id` is whole: check it and start the
    /// call.
    fn start_call(&mut self, id: u32) {
        let name = self.shared.cfg.name;
        let max = self.shared.cfg.max_request;
        let Some(Stream {
            kind:
                Kind::Unary {
                    head,
                    body,
                    running,
                },
            ..
        }) = self.streams.get_mut(&id)
        else {
            return;
        };
        let Some((path, headers, timeout)) = head.take() else {
            return;
        };
        let framed = std::mem::take(body).freeze();
        self.held -= framed.len();
        match check_request(&framed, max) {
            Ok(()) => {
                let req = UnaryRequest {
                    path,
                    headers,
                    timeout,
                    framed,
                };
                // One lookup of the stream: the call's key goes straight in.
                *running = Some(self.calls.push(id, self.unary.call(req)));
            }
            Err((code, msg)) => self.answer(id, code, &format!("{name}: {msg}")),
        }
    }

    /// Starts the fallback for stream `id` (request head `list`).
    fn start_fallback(&mut self, id: u32, list: &HeaderList, end: bool) -> Kind {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut req = http::Request::new(RequestBody {
            rx,
            buffered: self.fallback_held.clone(),
        });
        *req.version_mut() = http::Version::HTTP_2;
        if let Some(m) = list
            .get(b":method")
            .and_then(|m| http::Method::from_bytes(m).ok())
        {
            *req.method_mut() = m;
        }
        if let Ok(uri) = http::Uri::try_from(list.get(b":path").unwrap_or(b"/")) {
            *req.uri_mut() = uri;
        }
        *req.headers_mut() = list.to_header_map();
        let fallback = self.shared.fallback.clone();
        let events = self.events_tx.clone();
        let (task, reg) = AbortHandle::new_pair();
        tokio::spawn(Abortable::new(
            async move {
                let resp = fallback(req).await;
                respond(id, resp, &events).await;
            },
            reg,
        ));
        Kind::Fallback {
            body: (!end).then_some(tx),
            task,
        }
    }

    // ---- output -----------------------------------------------------------

    /// Answers stream `id` with a gRPC status of our own and forgets it.
    fn answer(&mut self, id: u32, status: u16, msg: &str) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        self.cancel(&s);
        self.side.put_status(id, s.head_sent, status, msg);
        self.finish(id, &s);
    }

    /// Answers stream `id` with a plain-text HTTP response and forgets it.
    fn plain(&mut self, id: u32, status: u16, text: &str) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        let st = status.to_string();
        self.side.put_headers(
            id,
            false,
            [
                (&b":status"[..], st.as_bytes()),
                (b"content-type", b"text/plain; charset=utf-8"),
            ]
            .into_iter(),
        );
        let mut out = text.as_bytes();
        let mut window = s.window;
        // A short text: what the windows do not take now is dropped (never
        // the case with HTTP/2's initial windows).
        self.side.send_data(id, &mut out, &mut window, true);
        if !out.is_empty() {
            put_rst(&mut self.side.wbuf, id, reason::NO_ERROR);
        }
        self.finish(id, &s);
    }

    /// A stream we ended: if the client is still sending, tell it to stop.
    fn finish(&mut self, id: u32, s: &Stream) {
        if !s.req_end {
            put_rst(&mut self.side.wbuf, id, reason::NO_ERROR);
        }
    }

    /// A unary call finished.
    fn call_done(&mut self, id: u32, result: Result<Bytes, Failure>) {
        let reply = match result {
            Ok(r) => r,
            Err(f) => return self.answer(id, f.code, &f.message),
        };
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let kept = &mut self.ok_head;
        self.side.put_header_block(id, false, |enc, out| {
            enc.begin(out);
            let fields: [(&[u8], &[u8]); 2] = [
                (b":status", b"200"),
                (b"content-type", grpc::CONTENT_TYPE_GRPC.as_bytes()),
            ];
            kept.write(enc, out, fields);
        });
        s.head_sent = true;
        s.trailers = Some(Trailers::Ok);
        s.resp_end = true;
        let len = 5 + reply.len();
        let fits = (len as i64) <= s.window.min(self.side.send_window)
            && len <= self.side.peer.max_frame_size as usize;
        if fits {
            // The common case: the whole reply goes now, straight into the
            // write buffer (no copy of it kept per stream).
            s.window -= len as i64;
            self.side.send_window -= len as i64;
            let w = &mut self.side.wbuf;
            wire::put_head(w, len, kind::DATA, 0, id);
            w.push(0);
            w.extend_from_slice(&(reply.len() as u32).to_be_bytes());
            w.extend_from_slice(&reply);
        } else {
            s.out.reserve(len);
            s.out.put_u8(0);
            s.out.put_u32(reply.len() as u32);
            s.out.extend_from_slice(&reply);
        }
        self.pump(id);
    }

    /// What a fallback task reported.
    fn event(&mut self, id: u32, ev: Event) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        match ev {
            Event::Head(parts, end) => {
                let st = parts.status.as_u16().to_string();
                let fields = std::iter::once((&b":status"[..], st.as_bytes())).chain(
                    parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
                );
                self.side.put_headers(id, end, fields);
                s.head_sent = true;
                if end {
                    if let Some(s) = self.streams.remove(&id) {
                        self.finish(id, &s);
                    }
                }
            }
            Event::Data(b) => {
                s.out.extend_from_slice(&b);
                self.pump(id);
            }
            Event::Trailers(map) => {
                let mut t = HeaderList::new();
                for (n, v) in &map {
                    t.push(n.as_str().as_bytes(), v.as_bytes());
                }
                s.trailers = Some(Trailers::List(t));
                s.resp_end = true;
                self.pump(id);
            }
            Event::End => {
                s.resp_end = true;
                self.pump(id);
            }
            Event::Failed(e) => {
                let msg = format!("{}: the response failed: {e}", self.shared.cfg.name);
                self.answer(id, code::INTERNAL, &msg);
            }
        }
    }

    /// Sends what of stream `id`'s response the windows allow; ends it once
    /// all is sent.
    fn pump(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let end = s.resp_end && s.trailers.is_none();
        let (_, ended) = self.side.send_data(id, &mut s.out, &mut s.window, end);
        if !s.out.is_empty() || !s.resp_end {
            return;
        }
        match s.trailers.take() {
            Some(Trailers::Ok) => {
                let kept = &mut self.ok_trailers;
                self.side.put_header_block(id, true, |enc, out| {
                    enc.begin(out);
                    kept.write(enc, out, [(&b"grpc-status"[..], &b"0"[..])]);
                });
            }
            Some(Trailers::List(t)) => self.side.put_headers(id, true, t.iter()),
            None if !ended => put_data(&mut self.side.wbuf, id, &[], true),
            None => {}
        }
        if let Some(s) = self.streams.remove(&id) {
            self.finish(id, &s);
        }
    }

    // ---- the connection ---------------------------------------------------

    /// Stops whatever works on stream `s` (removed), and forgets what it
    /// held.
    fn cancel(&mut self, s: &Stream) {
        match &s.kind {
            Kind::Unary { body, running, .. } => {
                self.held -= body.len();
                if let Some(key) = running {
                    self.calls.remove(*key);
                }
            }
            Kind::Fallback { task, .. } => task.abort(),
        }
    }

    /// Collects finished calls and fallback events.
    fn collect(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        let mut finished = std::mem::take(&mut self.finished);
        busy |= self.calls.poll(&mut finished);
        for (id, result) in finished.drain(..) {
            self.call_done(id, result);
        }
        self.finished = finished;
        // Only fallback tasks send events, each on its own clone of
        // `events_tx`: with none left nothing more can come, and the channel
        // (a few hundred instructions a round) is not read. A task sends
        // before it drops its sender, so the round that first counts no
        // other sender still reads what the last one sent.
        let senders = self.events_tx.strong_count() > 1;
        if senders || self.fallback_senders {
            while let Poll::Ready(Some((id, ev))) = self.events.poll_recv(cx) {
                busy = true;
                self.event(id, ev);
            }
        }
        self.fallback_senders = senders;
        busy
    }
}

/// Checks a whole unary request: exactly one uncompressed gRPC frame of at
/// most `max` message bytes.
fn check_request(framed: &[u8], max: usize) -> Result<(), (u16, String)> {
    if framed.len() < 5 {
        return Err((
            code::INTERNAL,
            format!(
                "malformed request: {} bytes, less than a gRPC frame header",
                framed.len()
            ),
        ));
    }
    let declared = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
    if framed[0] != 0 {
        return Err((
            code::INTERNAL,
            "malformed request: a compressed frame without grpc-encoding".into(),
        ));
    }
    if declared > max {
        return Err((
            code::RESOURCE_EXHAUSTED,
            format!("the request message of {declared} bytes is larger than the {max}-byte limit"),
        ));
    }
    if framed.len() - 5 != declared {
        return Err((
            code::INTERNAL,
            format!(
                "malformed request: a frame of {declared} bytes with {} bytes of data (a unary \
                 call carries exactly one message)",
                framed.len() - 5
            ),
        ));
    }
    Ok(())
}

/// Streams a fallback response to the connection as events.
async fn respond(
    id: u32,
    resp: http::Response<ResponseBody>,
    events: &mpsc::UnboundedSender<(u32, Event)>,
) {
    let (parts, mut body) = resp.into_parts();
    let end = http_body::Body::is_end_stream(&body);
    if events.send((id, Event::Head(parts, end))).is_err() || end {
        return;
    }
    while let Some(frame) = body.frame().await {
        let ev = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => Event::Data(d),
                Err(f) => match f.into_trailers() {
                    Ok(t) => {
                        let _ = events.send((id, Event::Trailers(t)));
                        return;
                    }
                    Err(_) => continue,
                },
            },
            Err(e) => {
                let _ = events.send((id, Event::Failed(e.to_string())));
                return;
            }
        };
        if events.send((id, ev)).is_err() {
            return;
        }
    }
    let _ = events.send((id, Event::End));
}

impl ServerStreams for Conn {
    fn client(&mut self) -> &mut Side {
        &mut self.side
    }

    fn state(&mut self) -> &mut ServerConn {
        &mut self.state
    }

    fn config(&self) -> &ServerConfig {
        &self.shared.cfg.server
    }

    fn name(&self) -> &'static str {
        self.shared.cfg.name
    }

    fn cancel_all(&mut self) {
        let streams = std::mem::take(&mut self.streams);
        for s in streams.values() {
            self.cancel(s);
        }
    }

    fn data(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        self.data_frame(h, p)
    }

    fn headers(&mut self, id: u32, end: bool) -> Result<(), ConnError> {
        self.header_block(id, end)
    }

    fn reset(&mut self, id: u32) -> bool {
        let Some(s) = self.streams.remove(&id) else {
            return false;
        };
        self.cancel(&s);
        true
    }

    fn windows_moved(&mut self, delta: i64) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            if let Some(s) = self.streams.get_mut(&id) {
                s.window += delta;
            }
            self.pump(id);
        }
    }

    fn connection_window_grew(&mut self) {
        let ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.out.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.pump(id);
        }
    }

    fn stream_window_grew(&mut self, id: u32, inc: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.window += i64::from(inc);
            self.pump(id);
        }
    }
}

impl Engine for Conn {
    fn round(&mut self, cx: &mut Context<'_>) -> bool {
        // Every part runs every round: each registers its wakeups.
        let mut busy = false;
        if self.drain.poll(cx) {
            side::start_drain(self);
            busy = true;
        }
        let backed_up = self.side.pending_out() > WRITE_HIGH;
        busy |= side::read_client(self, cx, backed_up);
        busy |= self.unary.poll(cx);
        busy |= self.collect(cx);
        busy |= self.unary.flush(cx);
        match self.side.poll_flush(cx) {
            Ok(w) => busy |= w,
            Err(e) => {
                debug!(error = %e, "writing to the client failed");
                self.cancel_all();
                self.state.closing = Some(Close::Now);
                busy = true;
            }
        }
        busy
    }

    fn finished(&self) -> bool {
        self.state.finished(&self.side, self.streams.is_empty())
    }

    fn main_side(&mut self) -> &mut Side {
        &mut self.side
    }
}

impl Future for Conn {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.calls.enter(cx);
        let r = side::poll_engine(this, cx);
        this.calls.leave(cx);
        r
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Fallback tasks outlive nothing of ours.
        self.cancel_all();
    }
}
