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
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use mp_sidecar::grpc::{self, code};
use mp_sidecar::hpack::HeaderList;
use mp_sidecar::metrics::{CallHandles, ConnectionGuard, EndpointMetrics};
use mp_sidecar::pool::{Endpoint, Pool};
use mp_sidecar::server::{serve_connections, ServerConfig};
use mp_sidecar::shutdown::{DrainSignal, Watch};
use mp_sidecar::side::{self, Close, Control, Engine, Ids, ServerConn, ServerStreams, Side};
use mp_sidecar::tls::{ClientTls, Io};
use mp_sidecar::wire::{
    self, flag, kind, put_data, put_goaway, put_rst, put_window_update, reason, ConnError, Head,
};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use crate::methods::Methods;

mod backend;
mod client;
mod lifecycle;

/// How the relay serves and connects.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The client side: stream limit, windows and frame size we advertise
    /// (to backends too), the largest request header list (larger ones are
    /// answered RESOURCE_EXHAUSTED), TLS, and the drain's grace.
    pub server: ServerConfig,
    /// Backend connections each client connection keeps per endpoint, its
    /// calls spread over them in turn (more are opened only when all reach
    /// the backend's stream limit).
    pub conns_per_endpoint: u16,
    /// TCP connect (and TLS handshake) timeout to a backend.
    pub connect_timeout: Duration,
    /// TLS to the backends; `None`: h2c.
    pub backend_tls: Option<ClientTls>,
    /// A backend connection carrying calls that stays silent this long is
    /// sent a PING; silent for as long again, it is closed and its calls end
    /// UNAVAILABLE (a backend that vanished without closing its sockets).
    pub keepalive: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            server: ServerConfig::default(),
            conns_per_endpoint: 1,
            connect_timeout: Duration::from_secs(1),
            backend_tls: None,
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
        let shared = self.inner.clone();
        let (tls, grace) = (shared.cfg.server.tls.clone(), shared.cfg.server.grace);
        serve_connections(listener, tls, grace, shutdown, move |io, _, watch| {
            let shared = shared.clone();
            async move {
                // Right after start, give discovery and the first connects a
                // moment rather than refusing the first calls.
                if shared.pool.starting() {
                    shared.pool.wait_available(shared.cfg.connect_timeout).await;
                }
                Conn::new(shared, io, watch).await;
            }
        })
        .await;
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
/// Calls queued on a backend connection before its SETTINGS say how many
/// it takes (RFC 9113 advises a limit of no less than 100).
const ASSUMED_STREAMS: usize = 100;
/// Connections one client connection opens to one endpoint when the
/// endpoint's stream limit is reached; past them, calls queue.
const MAX_UPS_PER_ENDPOINT: usize = 8;
/// Stream ids stop here (2^31 - 1).
const MAX_STREAM_ID: u32 = wire::MAX_WINDOW;

const DEADLINE_MSG: &str = "mp-lb: deadline exceeded (grpc-timeout)";

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
    /// Counts the connection in the endpoint's gauge while it is open.
    _counted: Option<ConnectionGuard>,
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

/// One client connection and its backend connections.
struct Conn {
    shared: Arc<Shared>,
    client: Side,
    ups: Vec<Option<Up>>,
    streams: Ids<Stream>,
    state: ServerConn,
    deadlines: BinaryHeap<Reverse<(Instant, u32)>>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Ticks while some backend connection carries calls.
    keepalive: Option<Pin<Box<Sleep>>>,
    /// The drain signal (it holds the connection's watch of the drain).
    drain: DrainSignal,
    /// Header lists to reuse.
    spare: Vec<HeaderList>,
    /// Turns among an endpoint's backend connections.
    turn: usize,
}

impl Conn {
    fn new(shared: Arc<Shared>, io: Io, watch: Watch) -> Conn {
        Conn {
            shared,
            client: Side::new(Some(io)),
            ups: Vec::new(),
            streams: Ids::default(),
            state: ServerConn::default(),
            deadlines: BinaryHeap::new(),
            timer: None,
            keepalive: None,
            drain: DrainSignal::new(watch),
            spare: Vec::new(),
            turn: 0,
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
}
