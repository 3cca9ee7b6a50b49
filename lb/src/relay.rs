//! The relay: mp-lb's data path, HTTP/2 frame by frame.
//!
//! One task per client connection owns that connection and the backend
//! connections its calls use (opened on first use: one per backend, more when
//! a backend's stream limit is reached). A call's frames go from one socket
//! to the other inside that task: the request's header block is decoded,
//! re-encoded for the backend's connection and sent on a stream of its own;
//! DATA is copied across within both sides' flow-control windows; the
//! response and its trailers come back the same way. No locks, channels or
//! per-call tasks, and every socket is read and written in batches, so a
//! loaded connection costs a few system calls per round of many calls.
//!
//! Flow control is relayed, not terminated: bytes taken from a peer are given
//! back to it (WINDOW_UPDATE) only once passed on to the other side, so what
//! the relay holds for a stream is bounded by the window it advertised.
//!
//! The pool ([`mp_sidecar::pool`]) still decides where calls go: round robin
//! over the endpoints that are connected, pass health checks and are not
//! ejected; outcomes feed its passive health. What the relay adds:
//! `grpc-timeout` enforced (DEADLINE_EXCEEDED, backend stream reset), calls a
//! backend refused unprocessed (REFUSED_STREAM, beyond its GOAWAY, connection
//! refused) sent to the next endpoint, and every error of its own a gRPC
//! status whose message starts with `mp-lb:`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use mp_sidecar::grpc::{self, code};
use mp_sidecar::hpack::HeaderList;
use mp_sidecar::metrics::{CallHandles, EndpointMetrics};
use mp_sidecar::pool::{Endpoint, Pool};
use mp_sidecar::server::{accept_until, tls_accept};
use mp_sidecar::shutdown::{Drain, Watch};
use mp_sidecar::side::{self, Control, Side};
use mp_sidecar::tls::{ClientTls, Io};
use mp_sidecar::wire::{
    self, flag, kind, put_data, put_goaway, put_rst, put_settings, put_window_update, reason,
    setting, ConnError, Head, PREFACE,
};
use tokio::io::AsyncWrite;
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

use crate::methods::Methods;

/// How the relay serves and connects.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Concurrent streams a client may open on one connection.
    pub max_concurrent_streams: u32,
    /// Flow-control window per stream we advertise to either side (bytes).
    pub stream_window: u32,
    /// Flow-control window per connection we advertise (bytes).
    pub conn_window: u32,
    /// Largest frame we accept (bytes).
    pub max_frame_size: u32,
    /// Largest request header list we accept (RFC 9113 size); larger ones
    /// are answered RESOURCE_EXHAUSTED.
    pub max_header_list_size: u32,
    /// TCP connect (and TLS handshake) timeout to a backend.
    pub connect_timeout: Duration,
    /// TLS to the backends; `None`: h2c.
    pub backend_tls: Option<ClientTls>,
    /// TLS for clients; `None`: h2c.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// How long open connections may take to finish after shutdown starts.
    pub grace: Duration,
    /// A backend connection carrying calls that stays silent this long is
    /// sent a PING; silent for as long again, it is closed and its calls end
    /// UNAVAILABLE (a backend that vanished without closing its sockets).
    pub keepalive: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_concurrent_streams: 1024,
            stream_window: 2 * 1024 * 1024,
            conn_window: 8 * 1024 * 1024,
            max_frame_size: 64 * 1024,
            max_header_list_size: 16 * 1024,
            connect_timeout: Duration::from_secs(1),
            backend_tls: None,
            server_tls: None,
            grace: Duration::from_secs(10),
            keepalive: Duration::from_secs(10),
        }
    }
}

/// What every connection of a relay shares: where calls go and what is
/// counted. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Relay {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pool: Pool,
    /// Calls answered by the relay itself (no endpoint took them).
    local: EndpointMetrics,
    methods: Methods,
    cfg: RelayConfig,
}

impl Relay {
    /// A relay forwarding to `pool`; its own answers are counted in `local`,
    /// every call also in `methods` by its path.
    pub fn new(pool: Pool, local: EndpointMetrics, methods: Methods, cfg: RelayConfig) -> Relay {
        Relay {
            inner: Arc::new(Shared {
                pool,
                local,
                methods,
                cfg,
            }),
        }
    }

    /// Serves `listener` until `shutdown` resolves; then stops accepting,
    /// sends every client a GOAWAY and waits for their calls to finish, at
    /// most the configured grace. Returns when all are done or the grace is
    /// over.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let drain = Drain::new();
        accept_until(&listener, shutdown, |tcp, peer| {
            let shared = self.inner.clone();
            let watch = drain.watch();
            tokio::spawn(async move {
                let io = match &shared.cfg.server_tls {
                    None => Io::Plain(tcp),
                    Some(tls) => match tls_accept(tls.clone(), tcp).await {
                        Ok(io) => io,
                        Err(e) => return debug!(%peer, error = %e, "TLS handshake failed"),
                    },
                };
                // Right after start, give discovery and the first connects a
                // moment rather than refusing the first calls.
                if shared.pool.starting() {
                    shared.pool.wait_available(shared.cfg.connect_timeout).await;
                }
                Conn::new(shared, io, watch).await;
            });
        })
        .await;
        drop(listener);
        info!(grace = ?self.inner.cfg.grace, "stopped accepting; draining open connections");
        match drain.drain(self.inner.cfg.grace).await {
            Ok(()) => info!("all connections drained"),
            Err(e) => warn!("{e}; closing them"),
        }
    }
}

/// Tries on different endpoints one call may take.
const MAX_ATTEMPTS: u8 = 8;
/// Request bytes kept per call to send it again when a backend refuses it
/// unprocessed; a call that streams more is not resent.
const REPLAY_LIMIT: usize = 64 * 1024;
/// Unwritten output past which a connection stops reading the sockets that
/// feed it.
const WRITE_HIGH: usize = 1024 * 1024;
/// Rounds of reading and writing per wakeup before yielding to other tasks.
const ROUNDS: usize = 32;
/// Calls queued on a backend connection before its SETTINGS say how many
/// it takes (RFC 9113 advises a limit of no less than 100).
const ASSUMED_STREAMS: usize = 100;
/// Connections one client connection opens to one endpoint when the
/// endpoint's stream limit is reached; past them, calls queue.
const MAX_UPS_PER_ENDPOINT: usize = 8;
/// Stream ids stop here (2^31 - 1).
const MAX_STREAM_ID: u32 = wire::MAX_WINDOW;

const DEADLINE_MSG: &str = "mp-lb: deadline exceeded (grpc-timeout)";

/// A hasher for stream ids (small integers): one multiply.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Ids<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

type Connecting = Pin<Box<dyn Future<Output = io::Result<Io>> + Send>>;

/// A backend connection of one client connection.
struct Up {
    side: Side,
    endpoint: Arc<Endpoint>,
    connecting: Option<Connecting>,
    /// The connection was established (a failure before that means none of
    /// its streams reached the backend).
    connected: bool,
    next_id: u32,
    /// Backend stream id -> client stream id.
    streams: Ids<u32>,
    /// The backend's GOAWAY: the last stream it processes.
    goaway: Option<u32>,
    /// The backend's first SETTINGS arrived (so its stream limit is known).
    settled: bool,
    /// Client streams waiting for room on this connection, in order.
    waiting: VecDeque<u32>,
    /// Bytes came since the last keepalive tick.
    heard: bool,
    /// A keepalive PING is out, unanswered.
    pinged: bool,
}

impl Up {
    /// Can take calls (now or once it has room).
    fn usable(&self) -> bool {
        self.goaway.is_none() && !self.side.eof && self.next_id < MAX_STREAM_ID - 2
    }

    /// Has room for one more stream now.
    fn has_room(&self) -> bool {
        (self.streams.len() as u64) < u64::from(self.side.peer.max_concurrent_streams)
    }
}

/// One call: a client stream and the backend stream it is relayed to.
struct Stream {
    /// (index in `Conn::ups`, backend stream id).
    up: Option<(usize, u32)>,
    /// Waiting for room on this backend connection.
    queued: Option<usize>,
    endpoint: Option<Arc<Endpoint>>,
    method: Arc<CallHandles>,
    start: Instant,
    attempts: u8,
    deadline: Option<Instant>,
    /// The request head, kept until the response starts (to send it again).
    head: Option<HeaderList>,
    /// The request body so far, while it may have to be sent again.
    replay: Option<Vec<u8>>,
    /// The client sent END_STREAM.
    req_end: bool,
    /// END_STREAM went to the backend.
    up_end_sent: bool,
    /// Request bytes waiting for the backend's windows.
    to_up: BytesMut,
    /// Request trailers (rare in gRPC), sent after `to_up`.
    req_trailers: Option<HeaderList>,
    /// The backend's send window for this stream.
    up_window: i64,
    /// Client bytes received, not yet passed on (so not yet given back).
    uncredited: usize,
    /// Client bytes passed on, not yet given back with a stream WINDOW_UPDATE.
    client_credit: u32,
    /// The response head went to the client.
    head_sent: bool,
    /// `grpc-status` of a trailers-only response head.
    head_status: Option<u16>,
    /// Response bytes waiting for the client's windows.
    to_client: BytesMut,
    /// The backend ended its side (END_STREAM, maybe with trailers).
    resp_end: bool,
    resp_trailers: Option<HeaderList>,
    /// Our send window to the client for this stream.
    client_window: i64,
    up_uncredited: usize,
    up_credit: u32,
}

/// Why a connection ends.
enum Close {
    /// Finished (both sides done or client gone): no more output.
    Now,
    /// Flush what is written, then close.
    AfterFlush,
}

/// One client connection and its backend connections.
struct Conn {
    shared: Arc<Shared>,
    client: Side,
    ups: Vec<Option<Up>>,
    streams: Ids<Stream>,
    last_client_id: u32,
    preface: bool,
    goaway_sent: bool,
    /// The client sent GOAWAY: it opens no more streams.
    client_goaway: bool,
    closing: Option<Close>,
    deadlines: BinaryHeap<Reverse<(Instant, u32)>>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Ticks while some backend connection carries calls.
    keepalive: Option<Pin<Box<Sleep>>>,
    drain: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    _watch: Watch,
    /// Header lists to reuse.
    spare: Vec<HeaderList>,
}

impl Conn {
    fn new(shared: Arc<Shared>, io: Io, watch: Watch) -> Conn {
        let w = watch.clone();
        Conn {
            shared,
            client: Side::new(Some(io)),
            ups: Vec::new(),
            streams: Ids::default(),
            last_client_id: 0,
            preface: false,
            goaway_sent: false,
            client_goaway: false,
            closing: None,
            deadlines: BinaryHeap::new(),
            timer: None,
            keepalive: None,
            drain: Some(Box::pin(async move { w.signaled().await })),
            _watch: watch,
            spare: Vec::new(),
        }
    }

    fn list(&mut self) -> HeaderList {
        self.spare.pop().unwrap_or_default()
    }

    fn give_back(&mut self, mut l: HeaderList) {
        if self.spare.len() < 64 {
            l.clear();
            self.spare.push(l);
        }
    }

    // ---- the client side --------------------------------------------------

    /// Checks the connection preface; answers HTTP/1 plainly.
    fn read_preface(&mut self) -> Result<bool, Close> {
        let b = &self.client.rbuf;
        let n = b.len().min(PREFACE.len());
        if b[..n] == PREFACE[..n] {
            if n < PREFACE.len() {
                return Ok(false);
            }
            self.client.rbuf.advance(PREFACE.len());
            self.preface = true;
            let cfg = &self.shared.cfg;
            let w = &mut self.client.wbuf;
            put_settings(
                w,
                &[
                    (setting::MAX_CONCURRENT_STREAMS, cfg.max_concurrent_streams),
                    (setting::INITIAL_WINDOW_SIZE, cfg.stream_window),
                    (setting::MAX_FRAME_SIZE, cfg.max_frame_size),
                    (setting::MAX_HEADER_LIST_SIZE, cfg.max_header_list_size),
                ],
            );
            if cfg.conn_window > wire::DEFAULT_WINDOW {
                put_window_update(w, 0, cfg.conn_window - wire::DEFAULT_WINDOW);
            }
            return Ok(true);
        }
        // Not HTTP/2. An HTTP/1 request line gets a plain answer.
        let line_end = b.windows(2).position(|w| w == b"\r\n");
        match line_end {
            None if b.len() < 8192 && !self.client.eof && b[0].is_ascii_uppercase() => Ok(false),
            Some(i) if b[..i].ends_with(b" HTTP/1.1") || b[..i].ends_with(b" HTTP/1.0") => {
                let body = "mp-lb speaks HTTP/2 (gRPC); this request was HTTP/1.x\n";
                let res = format!(
                    "HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                self.client.wbuf.extend_from_slice(res.as_bytes());
                Err(Close::AfterFlush)
            }
            _ => {
                debug!("not an HTTP/2 client; closing");
                Err(Close::Now)
            }
        }
    }

    /// Handles every complete frame the client sent.
    fn client_input(&mut self) -> Result<(), ConnError> {
        let buf = std::mem::take(&mut self.client.rbuf);
        let max = self.shared.cfg.max_frame_size as usize;
        let (used, r) = side::each_frame(&buf, max, |h, p| self.client_frame(h, p));
        let mut buf = buf;
        buf.advance(used);
        self.client.rbuf = buf;
        r
    }

    fn client_frame(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        match self.client.control(&h, p)? {
            Control::Done => return Ok(()),
            Control::Settings(0) => return Ok(()),
            Control::Settings(delta) => {
                let ids: Vec<u32> = self.streams.keys().copied().collect();
                for id in ids {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.client_window += delta;
                    }
                    self.pump_to_client(id);
                }
                return Ok(());
            }
            Control::NotMine => {}
        }
        match h.kind {
            kind::DATA => self.client_data(h, p),
            kind::HEADERS | kind::CONTINUATION => {
                if h.kind == kind::HEADERS && h.stream % 2 == 0 {
                    return Err(ConnError::protocol("HEADERS on an even stream id"));
                }
                match self.client.header_frame(&h, p)? {
                    Some((id, end)) => self.client_headers(id, end),
                    None => Ok(()),
                }
            }
            kind::RST_STREAM => {
                wire::rst_code(p)?;
                if let Some(s) = self.streams.remove(&h.stream) {
                    self.end_stream(h.stream, s, code::CANCELLED, true);
                }
                Ok(())
            }
            kind::GOAWAY => {
                wire::goaway(p)?;
                // The client opens no more streams; the open ones finish.
                self.client_goaway = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let inc = wire::window_increment(p)?;
                if inc == 0 {
                    return Err(ConnError::protocol("WINDOW_UPDATE of 0"));
                }
                if h.stream == 0 {
                    self.client.send_window += i64::from(inc);
                    let ids: Vec<u32> = self
                        .streams
                        .iter()
                        .filter(|(_, s)| !s.to_client.is_empty() || s.resp_end)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in ids {
                        self.pump_to_client(id);
                    }
                } else if let Some(s) = self.streams.get_mut(&h.stream) {
                    s.client_window += i64::from(inc);
                    self.pump_to_client(h.stream);
                }
                Ok(())
            }
            kind::PUSH_PROMISE => Err(ConnError::protocol("PUSH_PROMISE from a client")),
            // PRIORITY is advice we do not take; unknown types are ignored.
            _ => Ok(()),
        }
    }

    fn client_data(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        let r = wire::unpad(&h, p)?;
        let data = &p[r];
        let padding = h.len - data.len();
        let Some(s) = self.streams.get_mut(&h.stream) else {
            if h.stream == 0 || h.stream > self.last_client_id {
                return Err(ConnError::protocol("DATA on an idle stream"));
            }
            // A stream we already ended: give its bytes back at once.
            self.credit_client(0, h.len);
            return Ok(());
        };
        if s.req_end {
            self.credit_client(0, h.len);
            return Ok(());
        }
        if s.uncredited + data.len() > self.shared.cfg.stream_window as usize * 2 {
            return Err(ConnError {
                code: reason::FLOW_CONTROL_ERROR,
                what: "DATA beyond the stream's window",
            });
        }
        s.uncredited += data.len();
        if let Some(rep) = &mut s.replay {
            if rep.len() + data.len() <= REPLAY_LIMIT {
                rep.extend_from_slice(data);
            } else {
                s.replay = None;
            }
        }
        s.to_up.extend_from_slice(data);
        if h.has(flag::END_STREAM) {
            s.req_end = true;
        }
        if padding > 0 {
            self.credit_client(h.stream, padding);
        }
        self.pump_to_up(h.stream);
        Ok(())
    }

    /// Gives `n` client bytes back: to the connection, and to `stream` (0:
    /// only the connection); WINDOW_UPDATEs go out once half a window is due.
    fn credit_client(&mut self, stream: u32, n: usize) {
        let cfg = &self.shared.cfg;
        let n = n as u32;
        self.client.credit += n;
        if self.client.credit >= cfg.conn_window / 2 {
            put_window_update(&mut self.client.wbuf, 0, self.client.credit);
            self.client.credit = 0;
        }
        if stream != 0 {
            if let Some(s) = self.streams.get_mut(&stream) {
                s.client_credit += n;
                if !s.req_end && s.client_credit >= cfg.stream_window / 2 {
                    put_window_update(&mut self.client.wbuf, stream, s.client_credit);
                    s.client_credit = 0;
                }
            }
        }
    }

    fn client_headers(&mut self, id: u32, end: bool) -> Result<(), ConnError> {
        let mut list = self.list();
        self.client.dec.decode(&self.client.block, &mut list)?;
        if let Some(s) = self.streams.get_mut(&id) {
            // Request trailers.
            if !end || s.req_end {
                self.give_back(list);
                put_rst(&mut self.client.wbuf, id, reason::PROTOCOL_ERROR);
                if let Some(s) = self.streams.remove(&id) {
                    self.end_stream(id, s, code::INTERNAL, true);
                }
                return Ok(());
            }
            s.req_end = true;
            s.req_trailers = Some(list);
            self.pump_to_up(id);
            return Ok(());
        }
        if id <= self.last_client_id {
            // A stream we ended (or refused) while the client was still
            // sending: its late trailers are decoded (HPACK) and dropped.
            self.give_back(list);
            return Ok(());
        }
        self.last_client_id = id;
        if self.goaway_sent || self.streams.len() >= self.shared.cfg.max_concurrent_streams as usize
        {
            self.give_back(list);
            put_rst(&mut self.client.wbuf, id, reason::REFUSED_STREAM);
            return Ok(());
        }
        let start = Instant::now();
        let path = list.get(b":path").unwrap_or(b"");
        let method = self
            .shared
            .methods
            .get(std::str::from_utf8(path).unwrap_or(""));
        method.request();
        let valid = !path.is_empty()
            && list.get(b":method").is_some_and(|m| !m.is_empty())
            && list.get(b":scheme").is_some();
        let deadline = list
            .get(grpc::GRPC_TIMEOUT.as_bytes())
            .and_then(grpc::parse_timeout_bytes)
            .map(|t| start + t.min(Duration::from_secs(86_400 * 365)));
        let too_big = list.size() > self.shared.cfg.max_header_list_size as usize;
        let stream = Stream {
            up: None,
            queued: None,
            endpoint: None,
            method,
            start,
            attempts: 0,
            deadline,
            head: Some(list),
            replay: Some(Vec::new()),
            req_end: end,
            up_end_sent: false,
            to_up: BytesMut::new(),
            req_trailers: None,
            up_window: 0,
            uncredited: 0,
            client_credit: 0,
            head_sent: false,
            head_status: None,
            to_client: BytesMut::new(),
            resp_end: false,
            resp_trailers: None,
            client_window: i64::from(self.client.peer.initial_window_size),
            up_uncredited: 0,
            up_credit: 0,
        };
        self.streams.insert(id, stream);
        if !valid {
            self.answer(
                id,
                code::INTERNAL,
                "mp-lb: request without :method, :scheme or :path",
            );
            return Ok(());
        }
        if too_big {
            let msg = format!(
                "mp-lb: request header list is over the limit of {} bytes",
                self.shared.cfg.max_header_list_size
            );
            self.answer(id, code::RESOURCE_EXHAUSTED, &msg);
            return Ok(());
        }
        if let Some(d) = deadline {
            self.deadlines.push(Reverse((d, id)));
            self.arm_timer();
        }
        self.dispatch(id);
        Ok(())
    }

    // ---- sending calls to backends ------------------------------------------

    /// Sends stream `id` to the next available endpoint (again, when a
    /// backend refused it).
    fn dispatch(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.attempts += 1;
        if s.attempts > MAX_ATTEMPTS {
            let msg = format!(
                "mp-lb: backends refused the call unprocessed {MAX_ATTEMPTS} times; giving up"
            );
            self.answer(id, code::UNAVAILABLE, &msg);
            return;
        }
        let pool = &self.shared.pool;
        let Some(ep) = pool.pick() else {
            let msg = format!("mp-lb: {}", pool.describe());
            self.answer(id, code::UNAVAILABLE, &msg);
            return;
        };
        ep.metrics().request();
        s.endpoint = Some(ep.clone());
        self.place(id, &ep);
    }

    /// Puts stream `id` on a connection to `ep`: sent at once when one has
    /// room, else queued on one until it has.
    fn place(&mut self, id: u32, ep: &Arc<Endpoint>) {
        let ui = self.up_for(ep);
        let up = self.ups[ui].as_mut().expect("up_for returns a live slot");
        if up.settled && up.has_room() && up.waiting.is_empty() {
            self.send_on(ui, id);
        } else {
            up.waiting.push_back(id);
            if let Some(s) = self.streams.get_mut(&id) {
                s.queued = Some(ui);
            }
        }
    }

    /// Opens stream `id` on backend connection `ui` (which has room).
    fn send_on(&mut self, ui: usize, id: u32) {
        let up = self.ups[ui].as_mut().expect("live");
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let uid = up.next_id;
        up.next_id += 2;
        up.streams.insert(uid, id);
        s.queued = None;
        s.up = Some((ui, uid));
        s.up_window = i64::from(up.side.peer.initial_window_size);
        s.up_end_sent = false;
        let end = s.req_end && s.to_up.is_empty() && s.req_trailers.is_none();
        if let Some(head) = &s.head {
            up.side.put_headers(uid, end, head.iter());
        }
        if end {
            s.up_end_sent = true;
        }
        self.pump_to_up(id);
    }

    /// Sends what waits on backend connection `ui` as far as it has room;
    /// a connection that can take no more calls hands its queue on.
    fn release(&mut self, ui: usize) {
        loop {
            let Some(up) = self.ups[ui].as_mut() else {
                return;
            };
            if up.waiting.is_empty() {
                return;
            }
            if !up.usable() {
                // Going away: its queue goes to other connections.
                let waiting: Vec<u32> = up.waiting.drain(..).collect();
                let ep = up.endpoint.clone();
                for id in waiting {
                    if self.streams.get(&id).is_some_and(|s| s.queued == Some(ui)) {
                        self.place(id, &ep);
                    }
                }
                return;
            }
            if !up.settled || !up.has_room() {
                return;
            }
            let id = up.waiting.pop_front().expect("not empty");
            if self.streams.get(&id).is_some_and(|s| s.queued == Some(ui)) {
                self.send_on(ui, id);
            }
        }
    }

    /// The backend's first SETTINGS arrived on `ui`: what fits goes; the
    /// rest is spread over more connections (up to a limit per endpoint).
    fn settled(&mut self, ui: usize) {
        self.release(ui);
        let Some(up) = self.ups[ui].as_mut() else {
            return;
        };
        let rest: Vec<u32> = up.waiting.drain(..).collect();
        let ep = up.endpoint.clone();
        for id in rest {
            if let Some(s) = self.streams.get_mut(&id) {
                if s.queued == Some(ui) {
                    s.queued = None;
                    self.place(id, &ep);
                }
            }
        }
    }

    /// A connection to `ep` for one more call: one with room, else one still
    /// starting (its calls wait for the backend's SETTINGS), else a new one,
    /// else (at the limit per endpoint) the one with the shortest queue.
    fn up_for(&mut self, ep: &Arc<Endpoint>) -> usize {
        let addr = ep.addr();
        let mut count = 0;
        let mut shortest: Option<(usize, usize)> = None;
        for (i, u) in self.ups.iter().enumerate() {
            let Some(u) = u else { continue };
            if u.endpoint.addr() != addr || !u.usable() {
                continue;
            }
            count += 1;
            if u.waiting.is_empty() && u.settled && u.has_room() {
                return i;
            }
            if !u.settled && u.waiting.len() < ASSUMED_STREAMS {
                return i;
            }
            if shortest.is_none_or(|(_, n)| u.waiting.len() < n) {
                shortest = Some((i, u.waiting.len()));
            }
        }
        if let (Some((i, _)), true) = (shortest, count >= MAX_UPS_PER_ENDPOINT) {
            return i;
        }
        let cfg = &self.shared.cfg;
        let tls = cfg.backend_tls.clone();
        let limit = cfg.connect_timeout;
        let connecting: Connecting = Box::pin(async move {
            let tcp = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = tcp.set_nodelay(true);
            match tls {
                None => Ok(Io::Plain(tcp)),
                Some(t) => tokio::time::timeout(limit, t.connect(tcp))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })?,
            }
        });
        let mut side = Side::new(None);
        side.wbuf.extend_from_slice(PREFACE);
        put_settings(
            &mut side.wbuf,
            &[
                (setting::ENABLE_PUSH, 0),
                (setting::INITIAL_WINDOW_SIZE, cfg.stream_window),
                (setting::MAX_FRAME_SIZE, cfg.max_frame_size),
            ],
        );
        if cfg.conn_window > wire::DEFAULT_WINDOW {
            put_window_update(&mut side.wbuf, 0, cfg.conn_window - wire::DEFAULT_WINDOW);
        }
        let up = Up {
            side,
            endpoint: ep.clone(),
            connecting: Some(connecting),
            connected: false,
            next_id: 1,
            streams: Ids::default(),
            goaway: None,
            settled: false,
            waiting: VecDeque::new(),
            heard: false,
            pinged: false,
        };
        match self.ups.iter().position(Option::is_none) {
            Some(i) => {
                self.ups[i] = Some(up);
                i
            }
            None => {
                self.ups.push(Some(up));
                self.ups.len() - 1
            }
        }
    }

    /// Moves request bytes to the backend as its windows allow; gives them
    /// back to the client as they go.
    fn pump_to_up(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let Some((ui, uid)) = s.up else { return };
        let Some(up) = self.ups[ui].as_mut() else {
            return;
        };
        let side = &mut up.side;
        let max = side.peer.max_frame_size as i64;
        let mut moved = 0usize;
        while !s.to_up.is_empty() {
            let n = (s.to_up.len() as i64)
                .min(s.up_window)
                .min(side.send_window)
                .min(max);
            if n <= 0 {
                break;
            }
            let n = n as usize;
            let end = s.req_end && n == s.to_up.len() && s.req_trailers.is_none();
            put_data(&mut side.wbuf, uid, &s.to_up[..n], end);
            s.to_up.advance(n);
            s.up_window -= n as i64;
            side.send_window -= n as i64;
            moved += n;
            if end {
                s.up_end_sent = true;
            }
        }
        if s.to_up.is_empty() && s.req_end && !s.up_end_sent {
            match s.req_trailers.take() {
                Some(mut t) => {
                    side.put_headers(uid, true, t.iter());
                    t.clear();
                    self.spare.push(t);
                }
                None => put_data(&mut side.wbuf, uid, &[], true),
            }
            s.up_end_sent = true;
        }
        if moved > 0 {
            let c = moved.min(s.uncredited);
            s.uncredited -= c;
            if c > 0 {
                self.credit_client(id, c);
            }
        }
    }

    // ---- the backend side ----------------------------------------------------

    fn up_input(&mut self, ui: usize) -> Result<(), ConnError> {
        let Some(up) = self.ups[ui].as_mut() else {
            return Ok(());
        };
        let buf = std::mem::take(&mut up.side.rbuf);
        let max = self.shared.cfg.max_frame_size as usize;
        let (used, r) = side::each_frame(&buf, max, |h, p| self.up_frame(ui, h, p));
        let mut buf = buf;
        buf.advance(used);
        if let Some(up) = self.ups[ui].as_mut() {
            up.side.rbuf = buf;
        }
        r
    }

    fn up_frame(&mut self, ui: usize, h: Head, p: &[u8]) -> Result<(), ConnError> {
        let up = self.ups[ui].as_mut().expect("live");
        match up.side.control(&h, p)? {
            Control::Done => return Ok(()),
            Control::Settings(delta) => {
                let first = !up.settled;
                up.settled = true;
                if delta != 0 {
                    let ids: Vec<u32> = up.streams.values().copied().collect();
                    for id in ids {
                        if let Some(s) = self.streams.get_mut(&id) {
                            s.up_window += delta;
                        }
                        self.pump_to_up(id);
                    }
                }
                if first {
                    self.settled(ui);
                } else {
                    // The stream limit may have grown.
                    self.release(ui);
                }
                return Ok(());
            }
            Control::NotMine => {}
        }
        match h.kind {
            kind::DATA => {
                let r = wire::unpad(&h, p)?;
                let data = &p[r];
                let padding = h.len - data.len();
                let Some(&id) = up.streams.get(&h.stream) else {
                    self.credit_up(ui, 0, h.len);
                    return Ok(());
                };
                let Some(s) = self.streams.get_mut(&id) else {
                    self.credit_up(ui, 0, h.len);
                    return Ok(());
                };
                if s.resp_end || !s.head_sent {
                    return Err(ConnError::protocol(
                        "DATA before the response head or after its end",
                    ));
                }
                s.up_uncredited += data.len();
                s.to_client.extend_from_slice(data);
                if h.has(flag::END_STREAM) {
                    s.resp_end = true;
                }
                if padding > 0 {
                    self.credit_up(ui, h.stream, padding);
                }
                self.pump_to_client(id);
                Ok(())
            }
            kind::HEADERS | kind::CONTINUATION => match up.side.header_frame(&h, p)? {
                Some((uid, end)) => self.up_headers(ui, uid, end),
                None => Ok(()),
            },
            kind::RST_STREAM => {
                let rc = wire::rst_code(p)?;
                if let Some(id) = up.streams.remove(&h.stream) {
                    self.up_stream_failed(id, rc == reason::REFUSED_STREAM, || {
                        format!("reset the stream ({})", reason::name(rc))
                    });
                    self.release(ui);
                }
                Ok(())
            }
            kind::GOAWAY => {
                let (last, rc) = wire::goaway(p)?;
                debug!(endpoint = %up.endpoint.addr(), last, reason = reason::name(rc), "backend sent GOAWAY");
                up.goaway = Some(up.goaway.map_or(last, |l| l.min(last)));
                let refused: Vec<(u32, u32)> = up
                    .streams
                    .iter()
                    .filter(|(uid, _)| **uid > last)
                    .map(|(u, c)| (*u, *c))
                    .collect();
                for (uid, id) in refused {
                    if let Some(up) = self.ups[ui].as_mut() {
                        up.streams.remove(&uid);
                    }
                    self.up_stream_failed(id, true, || "went away (GOAWAY)".into());
                }
                self.release(ui);
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let inc = wire::window_increment(p)?;
                if h.stream == 0 {
                    up.side.send_window += i64::from(inc);
                    let ids: Vec<u32> = up.streams.values().copied().collect();
                    for id in ids {
                        self.pump_to_up(id);
                    }
                } else if let Some(&id) = up.streams.get(&h.stream) {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.up_window += i64::from(inc);
                    }
                    self.pump_to_up(id);
                }
                Ok(())
            }
            kind::PUSH_PROMISE => Err(ConnError::protocol("PUSH_PROMISE though push is off")),
            _ => Ok(()),
        }
    }

    fn credit_up(&mut self, ui: usize, uid: u32, n: usize) {
        let cfg = &self.shared.cfg;
        let Some(up) = self.ups[ui].as_mut() else {
            return;
        };
        let n = n as u32;
        up.side.credit += n;
        if up.side.credit >= cfg.conn_window / 2 {
            put_window_update(&mut up.side.wbuf, 0, up.side.credit);
            up.side.credit = 0;
        }
        if uid != 0 {
            if let Some(s) = up.streams.get(&uid).and_then(|id| self.streams.get_mut(id)) {
                s.up_credit += n;
                if !s.resp_end && s.up_credit >= cfg.stream_window / 2 {
                    put_window_update(&mut up.side.wbuf, uid, s.up_credit);
                    s.up_credit = 0;
                }
            }
        }
    }

    fn up_headers(&mut self, ui: usize, uid: u32, end: bool) -> Result<(), ConnError> {
        let mut list = self.list();
        let up = self.ups[ui].as_mut().expect("live");
        up.side.dec.decode(&up.side.block, &mut list)?;
        let Some(&id) = up.streams.get(&uid) else {
            self.give_back(list);
            return Ok(());
        };
        let Some(s) = self.streams.get_mut(&id) else {
            self.give_back(list);
            return Ok(());
        };
        if !s.head_sent {
            s.head_sent = true;
            // The backend took the call: it is never sent again.
            let head = s.head.take();
            s.replay = None;
            s.head_status = list.get(b"grpc-status").and_then(grpc::parse_status);
            self.client.put_headers(id, end, list.iter());
            self.give_back(list);
            if let Some(h) = head {
                self.give_back(h);
            }
            if end {
                if let Some(s) = self.streams.remove(&id) {
                    let st = s.head_status.unwrap_or(code::UNKNOWN);
                    self.end_stream(id, s, st, false);
                }
            }
            return Ok(());
        }
        if !end {
            return Err(ConnError::protocol("trailers without END_STREAM"));
        }
        s.resp_end = true;
        s.resp_trailers = Some(list);
        self.pump_to_client(id);
        Ok(())
    }

    /// A backend stream ended without a response: sent to another endpoint
    /// when the backend did not process it and the request can be replayed,
    /// else answered UNAVAILABLE.
    fn up_stream_failed(&mut self, id: u32, unprocessed: bool, why: impl FnOnce() -> String) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let ep = s.endpoint.clone();
        s.up = None;
        if unprocessed && !s.head_sent {
            if let Some(rep) = &s.replay {
                s.to_up.clear();
                s.to_up.extend_from_slice(rep);
                s.up_end_sent = false;
                if let Some(ep) = &ep {
                    debug!(endpoint = %ep.addr(), "call refused unprocessed; trying the next endpoint");
                }
                self.dispatch(id);
                return;
            }
        }
        let addr = ep
            .as_ref()
            .map(|e| e.addr().to_string())
            .unwrap_or_default();
        let msg = if s.head_sent {
            format!("mp-lb: backend {addr} stream failed: {}", why())
        } else {
            format!("mp-lb: backend {addr} failed: {}", why())
        };
        self.answer(id, code::UNAVAILABLE, &msg);
    }

    /// Moves response bytes to the client as its windows allow, then the
    /// trailers; gives the bytes back to the backend as they go.
    fn pump_to_client(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let side = &mut self.client;
        let max = side.peer.max_frame_size as i64;
        let mut moved = 0usize;
        let mut ended = false;
        while !s.to_client.is_empty() {
            let n = (s.to_client.len() as i64)
                .min(s.client_window)
                .min(side.send_window)
                .min(max);
            if n <= 0 {
                break;
            }
            let n = n as usize;
            let end = s.resp_end && n == s.to_client.len() && s.resp_trailers.is_none();
            put_data(&mut side.wbuf, id, &s.to_client[..n], end);
            s.to_client.advance(n);
            s.client_window -= n as i64;
            side.send_window -= n as i64;
            moved += n;
            ended |= end;
        }
        let mut status = None;
        if s.to_client.is_empty() && s.resp_end {
            match s.resp_trailers.take() {
                Some(mut t) => {
                    status = Some(t.get(b"grpc-status").and_then(grpc::parse_status));
                    side.put_headers(id, true, t.iter());
                    t.clear();
                    self.spare.push(t);
                }
                None => {
                    if !ended {
                        put_data(&mut side.wbuf, id, &[], true);
                    }
                    status = Some(s.head_status);
                }
            }
        }
        let up = s.up;
        if moved > 0 {
            let c = moved.min(s.up_uncredited);
            s.up_uncredited -= c;
            if let (Some((ui, uid)), true) = (up, c > 0) {
                self.credit_up(ui, uid, c);
            }
        }
        if let Some(st) = status {
            if let Some(s) = self.streams.remove(&id) {
                self.end_stream(id, s, st.unwrap_or(code::UNKNOWN), false);
            }
        }
    }

    // ---- ending calls ----------------------------------------------------------

    /// Answers stream `id` with a status of our own, resetting its backend
    /// stream.
    fn answer(&mut self, id: u32, status: u16, msg: &str) {
        let Some(mut s) = self.streams.remove(&id) else {
            return;
        };
        s.to_client.clear();
        self.client.put_status(id, s.head_sent, status, msg);
        self.end_stream(id, s, status, true);
    }

    /// Records the end of a call and frees its backend stream.
    fn end_stream(&mut self, id: u32, s: Stream, status: u16, reset_up: bool) {
        let elapsed = s.start.elapsed();
        match &s.endpoint {
            Some(ep) => ep.record(status, elapsed),
            None => {
                self.shared.local.request();
                self.shared.local.response(status, elapsed);
            }
        }
        s.method.response(status, elapsed);
        let freed = s.up.map(|(ui, _)| ui);
        if let Some((ui, uid)) = s.up {
            if let Some(up) = self.ups[ui].as_mut() {
                up.streams.remove(&uid);
                if reset_up || !s.up_end_sent {
                    put_rst(&mut up.side.wbuf, uid, reason::CANCEL);
                }
                // Bytes of theirs we hold no more: give them back.
                let held = s.to_client.len();
                if held > 0 {
                    up.side.credit += held as u32;
                }
            }
        }
        // The client is done with a stream we ended early: stop its sending.
        if !s.req_end && status != code::CANCELLED {
            put_rst(&mut self.client.wbuf, id, reason::NO_ERROR);
        }
        if !s.to_up.is_empty() {
            self.client.credit += s.to_up.len() as u32;
        }
        if let Some(h) = s.head {
            self.give_back(h);
        }
        if let Some(ui) = freed {
            self.release(ui);
        }
        // Deadlines of ended calls linger in the heap until due: sweep them
        // when they outnumber the calls (long deadlines, many calls).
        if self.deadlines.len() > 2 * self.streams.len() + 64 {
            let streams = &self.streams;
            self.deadlines.retain(|Reverse((at, id))| {
                streams.get(id).is_some_and(|s| s.deadline == Some(*at))
            });
        }
    }

    /// Ends every call of backend connection `ui`, which closed (or never
    /// opened): calls it did not take go to other endpoints.
    fn up_closed(&mut self, ui: usize, why: &str) {
        let Some(up) = self.ups[ui].take() else {
            return;
        };
        let never = !up.connected;
        if !up.streams.is_empty() {
            debug!(endpoint = %up.endpoint.addr(), streams = up.streams.len(), "backend connection closed: {why}");
        }
        // Calls that waited for room were never sent: another try.
        for id in up.waiting.iter().copied() {
            if let Some(s) = self.streams.get_mut(&id) {
                if s.queued == Some(ui) {
                    s.queued = None;
                    self.dispatch(id);
                }
            }
        }
        let mut ids: Vec<(u32, u32)> = up.streams.iter().map(|(u, c)| (*u, *c)).collect();
        ids.sort_unstable();
        for (uid, id) in ids {
            let unprocessed = never || up.goaway.is_some_and(|l| uid > l);
            self.up_stream_failed(id, unprocessed, || why.to_string());
        }
    }

    // ---- deadlines and shutdown -------------------------------------------------

    fn arm_timer(&mut self) {
        let Some(Reverse((at, _))) = self.deadlines.peek() else {
            self.timer = None;
            return;
        };
        match &mut self.timer {
            Some(t) if t.deadline() == *at => {}
            Some(t) => t.as_mut().reset(*at),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(*at))),
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if self
                .streams
                .get(&id)
                .is_some_and(|s| s.deadline == Some(at))
            {
                self.answer(id, code::DEADLINE_EXCEEDED, DEADLINE_MSG);
            }
        }
        self.arm_timer();
    }

    /// A keepalive tick: a backend connection with calls that said nothing
    /// since the last tick gets a PING; one that did not answer the last
    /// PING either is closed.
    fn keepalive_tick(&mut self) {
        for ui in 0..self.ups.len() {
            let Some(up) = self.ups[ui].as_mut() else {
                continue;
            };
            if up.streams.is_empty() || !up.connected {
                up.pinged = false;
                continue;
            }
            if std::mem::take(&mut up.heard) {
                up.pinged = false;
            } else if !up.pinged {
                up.pinged = true;
                wire::put_ping(&mut up.side.wbuf, *b"mp-lb\0\0\0");
            } else {
                let why = format!(
                    "no answer to a PING within {:?}",
                    self.shared.cfg.keepalive * 2
                );
                warn!(endpoint = %up.endpoint.addr(), "backend silent; closing its connection: {why}");
                self.up_closed(ui, &why);
            }
        }
    }

    fn start_drain(&mut self) {
        if !self.goaway_sent && self.preface {
            put_goaway(
                &mut self.client.wbuf,
                self.last_client_id,
                reason::NO_ERROR,
                b"",
            );
        }
        self.goaway_sent = true;
        if !self.preface {
            self.closing = Some(Close::Now);
        }
    }

    /// Ends the connection on a protocol error of the client's.
    fn client_error(&mut self, e: &ConnError) {
        debug!(error = %e, "client connection error");
        put_goaway(
            &mut self.client.wbuf,
            self.last_client_id,
            e.code,
            e.what.as_bytes(),
        );
        self.goaway_sent = true;
        self.cancel_all();
        self.closing = Some(Close::AfterFlush);
    }

    /// The client is gone: every call is cancelled.
    fn cancel_all(&mut self) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            if let Some(mut s) = self.streams.remove(&id) {
                s.req_end = true;
                self.end_stream(id, s, code::CANCELLED, true);
            }
        }
    }

    fn finished(&self) -> bool {
        match self.closing {
            Some(Close::Now) => true,
            Some(Close::AfterFlush) => self.client.pending_out() == 0,
            None => {
                (self.goaway_sent || self.client_goaway)
                    && self.streams.is_empty()
                    && self.client.pending_out() == 0
            }
        }
    }

    /// One round: read what is there, act on it, write what is due.
    /// Returns whether anything happened.
    fn round(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        if let Some(d) = &mut self.drain {
            if d.as_mut().poll(cx).is_ready() {
                self.drain = None;
                self.start_drain();
                busy = true;
            }
        }
        if let Some(t) = &mut self.timer {
            if t.as_mut().poll(cx).is_ready() {
                self.expire();
                busy = true;
            }
        }
        let every = self.shared.cfg.keepalive;
        if let Some(t) = &mut self.keepalive {
            if t.as_mut().poll(cx).is_ready() {
                t.as_mut().reset(Instant::now() + every);
                self.keepalive_tick();
                busy = true;
            }
        } else if !every.is_zero() && self.ups.iter().flatten().any(|u| !u.streams.is_empty()) {
            let mut t = Box::pin(tokio::time::sleep(every));
            // Registers the timer with this task.
            let _ = t.as_mut().poll(cx);
            self.keepalive = Some(t);
        }
        // The client.
        let backed_up = self.client.pending_out() > WRITE_HIGH
            || self
                .ups
                .iter()
                .flatten()
                .any(|u| u.side.pending_out() > WRITE_HIGH);
        if self.closing.is_none() && !self.client.eof && !backed_up {
            match self.client.poll_read(cx) {
                Poll::Ready(Ok(0)) => {
                    self.client.eof = true;
                    busy = true;
                    if !self.preface && !self.client.rbuf.is_empty() {
                        if let Err(c) = self.read_preface() {
                            self.closing = Some(c);
                        }
                    }
                    if self.closing.is_none() {
                        self.cancel_all();
                        self.closing = Some(Close::Now);
                    }
                }
                Poll::Ready(Ok(_)) => {
                    busy = true;
                    let mut ok = true;
                    if !self.preface {
                        match self.read_preface() {
                            Ok(done) => ok = done,
                            Err(c) => {
                                self.closing = Some(c);
                                ok = false;
                            }
                        }
                    }
                    if ok {
                        if let Err(e) = self.client_input() {
                            self.client_error(&e);
                        }
                    }
                }
                Poll::Ready(Err(e)) => {
                    debug!(error = %e, "client connection failed");
                    self.client.eof = true;
                    self.cancel_all();
                    self.closing = Some(Close::Now);
                    busy = true;
                }
                Poll::Pending => {}
            }
        }
        // The backends.
        let client_backed_up = self.client.pending_out() > WRITE_HIGH;
        for ui in 0..self.ups.len() {
            let Some(up) = self.ups[ui].as_mut() else {
                continue;
            };
            if let Some(c) = &mut up.connecting {
                match c.as_mut().poll(cx) {
                    Poll::Pending => continue,
                    Poll::Ready(Ok(io)) => {
                        up.connecting = None;
                        up.connected = true;
                        up.side.io = Some(io);
                        busy = true;
                    }
                    Poll::Ready(Err(e)) => {
                        busy = true;
                        let why = format!("cannot connect: {e}");
                        self.up_closed(ui, &why);
                        continue;
                    }
                }
            }
            if client_backed_up {
                continue;
            }
            match up.side.poll_read(cx) {
                Poll::Ready(Ok(0)) => {
                    busy = true;
                    self.up_closed(ui, "connection closed");
                }
                Poll::Ready(Ok(_)) => {
                    busy = true;
                    up.heard = true;
                    if let Err(e) = self.up_input(ui) {
                        if let Some(up) = self.ups[ui].as_mut() {
                            warn!(endpoint = %up.endpoint.addr(), error = %e, "backend broke the protocol; closing its connection");
                            put_goaway(&mut up.side.wbuf, 0, e.code, e.what.as_bytes());
                            let _ = up.side.poll_flush(cx);
                        }
                        self.up_closed(ui, &format!("protocol error: {e}"));
                    }
                }
                Poll::Ready(Err(e)) => {
                    busy = true;
                    self.up_closed(ui, &format!("connection failed: {e}"));
                }
                Poll::Pending => {}
            }
        }
        // Writes.
        for ui in 0..self.ups.len() {
            let Some(up) = self.ups[ui].as_mut() else {
                continue;
            };
            match up.side.poll_flush(cx) {
                Ok(w) => busy |= w,
                Err(e) => {
                    busy = true;
                    self.up_closed(ui, &format!("write failed: {e}"));
                    continue;
                }
            }
            // A backend connection that went away and has no calls left.
            let up = self.ups[ui].as_ref().expect("live");
            if up.streams.is_empty() && (up.goaway.is_some() || up.side.eof) {
                self.ups[ui] = None;
            }
        }
        match self.client.poll_flush(cx) {
            Ok(w) => busy |= w,
            Err(e) => {
                debug!(error = %e, "writing to the client failed");
                self.cancel_all();
                self.closing = Some(Close::Now);
                busy = true;
            }
        }
        busy
    }
}

impl Future for Conn {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..ROUNDS {
            let busy = this.round(cx);
            if this.finished() {
                if let Some(io) = this.client.io.as_mut() {
                    // Our last bytes, then FIN (TLS: close_notify).
                    let _ = Pin::new(io).poll_shutdown(cx);
                }
                return Poll::Ready(());
            }
            if !busy {
                return Poll::Pending;
            }
        }
        // Plenty to do: let other connections have a turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
