//! A lean HTTP/2 client for unary gRPC calls, on the relay's frame code
//! ([`wire`], [`hpack`](crate::hpack), [`side`]).
//!
//! A [`Client`] is a handle to one connection: a hand-written state machine
//! (like `mp-lb`'s relay connection) behind a mutex, driven by a task of its
//! own ([`Client::new`]) or by its owner's task ([`Client::new_local`] and
//! [`Client::drive`]: no task switch per call). A call takes a slot in the
//! connection's slab, where its answer and its future's waker wait (no
//! channel or allocation per call); the request goes out as HEADERS and DATA
//! within the peer's windows, and the whole reply (head, body up to a limit,
//! trailers) comes back at once. The connection reads and writes its socket
//! in batches, so a busy one costs a few system calls per round of many
//! calls; one timer per connection keeps both the keepalive and the calls'
//! deadlines.
//!
//! What a caller must know:
//! - A call the server certainly did not process (REFUSED_STREAM, a stream
//!   beyond its GOAWAY, a connection that failed before the request was
//!   written, a closed client) fails with [`CallError::Unprocessed`]: it is
//!   safe to send elsewhere.
//! - Dropping a call's future before it finished resets its stream
//!   (RST_STREAM CANCEL): the server sees the cancellation.
//! - A call given a deadline is bounded by it: the server is told it
//!   (`grpc-timeout`), and when it passes the stream is reset (CANCEL) and the
//!   call fails [`CallError::DeadlineExceeded`]. The connection keeps one
//!   timer for all its calls, set to the earliest deadline, not one per call.
//!   A call without a deadline is not bounded by the client.
//! - After a GOAWAY, a connection failure or stream ids running out,
//!   [`Client::is_closed`] is true and every new call is `Unprocessed`: make
//!   a new client. Calls in flight below the GOAWAY finish.
//! - A connection that has heard nothing for the keepalive interval sends a
//!   PING; no answer (nor any other frame) within the keepalive timeout closes
//!   it, so a peer that vanished without closing the TCP connection is not
//!   called forever.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::task::AtomicWaker;
use slab::Slab;
use tokio::time::{Instant, Sleep};

use crate::hpack::HeaderList;
use crate::metrics::ConnectionGuard;
pub use crate::side::Rounds;
use crate::side::{self, append, Control, Engine, Ids, KeptBlock, Side};
use crate::tls::{ClientTls, Io};
use crate::wire::{
    self, flag, kind, put_goaway, put_head, put_rst, put_window_update, reason, ConnError, Head,
};

/// How a client connects and what it advertises.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Flow-control window per stream we advertise (bytes).
    pub stream_window: u32,
    /// Flow-control window of the connection we advertise (bytes).
    pub conn_window: u32,
    /// Largest frame we accept (bytes).
    pub max_frame_size: u32,
    /// TCP connect (and TLS handshake) timeout.
    pub connect_timeout: Duration,
    /// TLS; `None`: h2c.
    pub tls: Option<ClientTls>,
    /// PING the server after this long without a frame from it; `None`:
    /// never.
    pub keepalive: Option<Duration>,
    /// How long a PING may go unanswered (with no other frame either) before
    /// the connection is closed.
    pub keepalive_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            stream_window: 2 * 1024 * 1024,
            conn_window: 8 * 1024 * 1024,
            max_frame_size: 64 * 1024,
            connect_timeout: Duration::from_secs(1),
            tls: None,
            keepalive: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// What calls share: the method path and the request headers other than the
/// pseudo-headers and `grpc-timeout` (e.g. `content-type`, `te`, metadata).
/// Build it once and share it (`Arc`) among the calls that send it.
#[derive(Clone, Debug, Default)]
pub struct RequestHead {
    /// `:path`, e.g. `/mp.v1.Handler/Handle`.
    pub path: Vec<u8>,
    /// Regular headers, names in lower case.
    pub headers: HeaderList,
}

/// A whole unary reply.
#[derive(Debug)]
pub struct Reply {
    /// The response head (`:status` first, as the server sent it). Shared:
    /// the replies of a connection that repeat a head block get the same
    /// list.
    pub head: Arc<HeaderList>,
    /// The response body (DATA frames concatenated).
    pub body: Bytes,
    /// The trailers; `None` when the head ended the stream (trailers-only)
    /// or the body ended without trailers. Shared as the head.
    pub trailers: Option<Arc<HeaderList>>,
}

impl Reply {
    /// The HTTP status (0 when missing or malformed).
    pub fn status(&self) -> u16 {
        match self.head.get(b":status") {
            Some(b"200") => 200,
            v => v
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// Why a call has no reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The server did not process the request: it may go to another server.
    #[error("{0}")]
    Unprocessed(String),
    /// The reply body grew past the call's limit (bytes); the stream was reset.
    #[error("the reply is larger than {0} bytes")]
    TooLarge(usize),
    /// The call failed after the request may have been processed.
    #[error("{0}")]
    Failed(String),
    /// The call's deadline passed before its reply was whole; the stream was
    /// reset.
    #[error("the deadline passed before the reply")]
    DeadlineExceeded,
}

type Answer = Result<Reply, CallError>;

/// When a call must end, and the `grpc-timeout` its server is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    /// Once this passed, the client ends the call (RST_STREAM CANCEL,
    /// [`CallError::DeadlineExceeded`]).
    pub at: Instant,
    /// The `grpc-timeout` sent. `None`: the time left until `at` when the
    /// request is written (a clock read per call); callers that read the
    /// clock already, or send many calls with one deadline, say it.
    pub told: Option<Duration>,
}

impl From<Instant> for Deadline {
    /// `at`, told as the time left when the request is written.
    fn from(at: Instant) -> Deadline {
        Deadline { at, told: None }
    }
}

/// One call waiting for the server's SETTINGS or a free stream slot.
struct NewCall {
    /// Its place in [`Conn::calls`].
    slot: usize,
    head: Arc<RequestHead>,
    body: Bytes,
    deadline: Option<Deadline>,
    max: usize,
}

impl NewCall {
    /// When the call must end, if ever.
    fn ends_at(&self) -> Option<Instant> {
        self.deadline.map(|d| d.at)
    }
}

/// Where a call's answer waits for its future (a slab: a call is an index,
/// not an allocation and a channel).
#[derive(Default)]
struct Calls(Slab<Slot>);

enum Slot {
    /// Not answered yet: the waker of the call's future, the stream carrying
    /// it once started.
    Waiting {
        waker: Option<Waker>,
        stream: Option<u32>,
    },
    Answered(Answer),
}

impl Calls {
    fn open(&mut self) -> usize {
        self.0.insert(Slot::Waiting {
            waker: None,
            stream: None,
        })
    }

    /// Gives call `slot` its answer and wakes its future.
    fn answer(&mut self, slot: usize, answer: Answer) {
        if let Some(s @ Slot::Waiting { .. }) = self.0.get_mut(slot) {
            if let Slot::Waiting { waker: Some(w), .. } =
                std::mem::replace(s, Slot::Answered(answer))
            {
                w.wake();
            }
        }
    }

    fn started(&mut self, slot: usize, id: u32) {
        if let Some(Slot::Waiting { stream, .. }) = self.0.get_mut(slot) {
            *stream = Some(id);
        }
    }

    /// The answer of call `slot` (its slot freed), or its waker noted.
    fn poll(&mut self, slot: usize, cx: &Context<'_>) -> Poll<Answer> {
        match self.0.get_mut(slot) {
            Some(Slot::Waiting { waker, .. }) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Some(Slot::Answered(_)) => match self.0.remove(slot) {
                Slot::Answered(a) => Poll::Ready(a),
                Slot::Waiting { .. } => unreachable!("matched above"),
            },
            None => Poll::Ready(Err(answered_already())),
        }
    }

    /// Frees call `slot` (its future is gone); the stream that carried it,
    /// if it was started and not answered.
    fn close(&mut self, slot: usize) -> Option<u32> {
        match self.0.try_remove(slot) {
            Some(Slot::Waiting { stream, .. }) => stream,
            _ => None,
        }
    }
}

fn answered_already() -> CallError {
    CallError::Failed("the call was already answered".to_string())
}

/// What a connection's handles, calls and driver share.
struct Shared {
    conn: Mutex<Conn>,
    closed: Arc<AtomicBool>,
    /// The task driving the connection, woken when a call comes or goes;
    /// `None`: the owner drives it ([`Client::drive`]).
    driver: Option<AtomicWaker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_driver(&self) {
        if let Some(d) = &self.driver {
            d.wake();
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("closed", &self.closed)
            .field("driven_by_owner", &self.driver.is_none())
            .finish_non_exhaustive()
    }
}

/// Tells the connection when the last handle is gone.
#[derive(Debug)]
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.lock().handles_gone = true;
        self.0.wake_driver();
    }
}

/// A handle to one HTTP/2 connection (cheap to clone). The connection ends
/// when every handle and call is gone, or on GOAWAY or failure.
///
/// A client made by [`Client::new`] or [`Client::connect`] is driven by a
/// task of its own; one made by [`Client::new_local`] is driven by its owner
/// ([`Client::drive`]), inside the owner's task: no task switch per call.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Handle>,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<Io>> + Send>>;

impl Client {
    /// A client of `addr` whose connection is opened in the background (calls
    /// made meanwhile wait for it; if it fails, they fail `Unprocessed`).
    /// `authority` is the `:authority` of its calls. Must be called inside a
    /// tokio runtime.
    pub fn new(addr: SocketAddr, authority: &str, cfg: &ClientConfig) -> Client {
        let tls = cfg.tls.clone();
        let limit = cfg.connect_timeout;
        let connecting: Connecting = Box::pin(crate::tls::dial(addr, tls, limit));
        Client::spawn(addr, authority, cfg, Err(connecting), None)
    }

    /// [`Client::new`], counted in a gauge (e.g. an endpoint's connections
    /// carrying calls) for as long as its connection lives.
    pub fn new_counted(
        addr: SocketAddr,
        authority: &str,
        cfg: &ClientConfig,
        counted: ConnectionGuard,
    ) -> Client {
        let tls = cfg.tls.clone();
        let limit = cfg.connect_timeout;
        let connecting: Connecting = Box::pin(crate::tls::dial(addr, tls, limit));
        Client::spawn(addr, authority, cfg, Err(connecting), Some(counted))
    }

    /// Connects to `addr` (TCP, TLS when configured) and returns a client of
    /// the connection; an error when the connection cannot be opened.
    pub async fn connect(
        addr: SocketAddr,
        authority: &str,
        cfg: &ClientConfig,
    ) -> io::Result<Client> {
        let io = crate::tls::dial(addr, cfg.tls.clone(), cfg.connect_timeout).await?;
        Ok(Client::spawn(addr, authority, cfg, Ok(io), None))
    }

    /// A client of `addr` driven by its owner, not by a task of its own: the
    /// owner calls [`Client::drive`] from its task whenever it runs (each
    /// call's progress, the connection's reads and writes, its timer happen
    /// there), until it resolves. The connection opens in the background as
    /// with [`Client::new`]; `counted` is a gauge it is counted in while
    /// open. Must be made inside a tokio runtime.
    pub fn new_local(
        addr: SocketAddr,
        authority: &str,
        cfg: &ClientConfig,
        counted: Option<ConnectionGuard>,
    ) -> Client {
        let tls = cfg.tls.clone();
        let limit = cfg.connect_timeout;
        let connecting: Connecting = Box::pin(crate::tls::dial(addr, tls, limit));
        let shared = Client::shared(addr, authority, cfg, Err(connecting), counted, false);
        Client {
            inner: Arc::new(Handle(shared)),
        }
    }

    /// Drives a client made by [`Client::new_local`]: rounds of reading,
    /// writing, starting calls and keeping time until nothing is left to do
    /// (`cx` is woken when there is), or the connection ended
    /// ([`Rounds::Finished`]: it takes no calls; drop it). Does nothing for a
    /// client driven by its own task.
    pub fn drive(&self, cx: &mut Context<'_>) -> Rounds {
        let shared = &self.inner.0;
        if shared.driver.is_some() {
            return Rounds::Idle;
        }
        let rounds = side::run_rounds(&mut *shared.lock(), cx);
        if rounds == Rounds::Finished {
            shared.closed.store(true, Ordering::Relaxed);
        }
        rounds
    }

    /// Sends what the calls made since the last [`Client::drive`] need sent
    /// (their requests), without reading: for an owner that drives the client
    /// before polling its calls and sends after. Whether anything was
    /// written. Does nothing for a client driven by its own task.
    pub fn send(&self, cx: &mut Context<'_>) -> bool {
        let shared = &self.inner.0;
        shared.driver.is_none() && shared.lock().send(cx)
    }

    fn spawn(
        addr: SocketAddr,
        authority: &str,
        cfg: &ClientConfig,
        io: Result<Io, Connecting>,
        counted: Option<ConnectionGuard>,
    ) -> Client {
        let shared = Client::shared(addr, authority, cfg, io, counted, true);
        tokio::spawn(Driver(shared.clone()));
        Client {
            inner: Arc::new(Handle(shared)),
        }
    }

    fn shared(
        addr: SocketAddr,
        authority: &str,
        cfg: &ClientConfig,
        io: Result<Io, Connecting>,
        counted: Option<ConnectionGuard>,
        own_task: bool,
    ) -> Arc<Shared> {
        let closed = Arc::new(AtomicBool::new(false));
        let (io, connecting) = match io {
            Ok(io) => (Some(io), None),
            Err(c) => (None, Some(c)),
        };
        let mut side = Side::new(io);
        side.client_preface(cfg.stream_window, cfg.max_frame_size, cfg.conn_window);
        let mut conn = Conn {
            side,
            addr,
            authority: authority.as_bytes().to_vec(),
            scheme: if cfg.tls.is_some() { b"https" } else { b"http" },
            stream_window: cfg.stream_window,
            conn_window: cfg.conn_window,
            max_frame: cfg.max_frame_size as usize,
            calls: Calls::default(),
            handles_gone: false,
            connecting,
            closed: closed.clone(),
            streams: Ids::default(),
            queue: VecDeque::new(),
            next_id: 1,
            settled: false,
            goaway: None,
            dead: None,
            flushed: 0,
            keepalive: cfg.keepalive.map(|k| (k, cfg.keepalive_timeout)),
            keepalive_at: None,
            expiry: None,
            timer: None,
            timer_polled: false,
            heard: false,
            ping_out: false,
            kept: KeptBlock::default(),
            kept_for: None,
            _counted: counted,
        };
        if conn.side.io.is_some() {
            conn.arm_keepalive();
        }
        Arc::new(Shared {
            conn: Mutex::new(conn),
            closed,
            driver: own_task.then(AtomicWaker::new),
        })
    }

    /// True once the connection takes no new calls (GOAWAY, failure, ids
    /// used up): make a new client.
    pub fn is_closed(&self) -> bool {
        self.inner.0.closed.load(Ordering::Relaxed)
    }

    /// True when no call made on this client is outstanding (each one's
    /// future resolved or was dropped). An owner-driven client
    /// ([`Client::new_local`]) may then be dropped without stranding a call:
    /// its connection closes with it.
    pub fn is_idle(&self) -> bool {
        self.inner.0.lock().calls.0.is_empty()
    }

    /// Sends a POST of `body` with `head` and resolves to the whole reply.
    /// `deadline` is told to the server as `grpc-timeout` (see
    /// [`Deadline::told`]) and bounds the call: once it passed, the stream is
    /// reset and the call fails [`CallError::DeadlineExceeded`] (the
    /// connection's timer fires at or just after it). A reply body over
    /// `max_body` bytes fails the call ([`CallError::TooLarge`]). Dropping
    /// the future before it resolves resets the stream (CANCEL).
    pub fn call(
        &self,
        head: Arc<RequestHead>,
        body: Bytes,
        deadline: Option<Deadline>,
        max_body: usize,
    ) -> Call {
        let shared = &self.inner.0;
        let slot = {
            let mut conn = shared.lock();
            let slot = conn.calls.open();
            conn.accept(NewCall {
                slot,
                head,
                body,
                deadline,
                max: max_body,
            });
            slot
        };
        shared.wake_driver();
        Call {
            shared: shared.clone(),
            slot,
            done: false,
        }
    }
}

/// A call in flight: resolves to its reply; dropped before that, it resets
/// the stream.
#[must_use = "a call does nothing unless awaited, and dropping it cancels it"]
pub struct Call {
    shared: Arc<Shared>,
    slot: usize,
    /// Its answer was taken (the slot is free).
    done: bool,
}

impl Future for Call {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        // Polled again after its answer: its slot may be another call's now.
        if self.done {
            return Poll::Ready(Err(answered_already()));
        }
        let answer = std::task::ready!(self.shared.lock().calls.poll(self.slot, cx));
        self.done = true;
        Poll::Ready(answer)
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            self.shared.lock().abandon(self.slot);
            self.shared.wake_driver();
        }
    }
}

/// The task of a client that drives itself.
struct Driver(Arc<Shared>);

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let shared = &self.0;
        if let Some(d) = &shared.driver {
            d.register(cx.waker());
        }
        let done = side::poll_engine(&mut *shared.lock(), cx);
        if done.is_ready() {
            shared.closed.store(true, Ordering::Relaxed);
        }
        done
    }
}

/// Stream ids stop here (2^31 - 1).
const MAX_STREAM_ID: u32 = wire::MAX_WINDOW;

/// One open stream.
struct Stream {
    /// The call's slot in [`Conn::calls`].
    slot: usize,
    head: Option<Arc<HeaderList>>,
    body: BytesMut,
    max: usize,
    deadline: Option<Instant>,
    /// Request bytes waiting for the windows.
    to_send: Bytes,
    /// Our send window on the stream.
    window: i64,
    end_sent: bool,
    /// Response bytes taken, not yet given back (stream WINDOW_UPDATE).
    credit: u32,
    /// Output offset where its HEADERS end: not all written -> unprocessed.
    written_at: u64,
}

/// The connection task.
struct Conn {
    side: Side,
    addr: SocketAddr,
    /// Counts the connection in a gauge while the task lives.
    _counted: Option<ConnectionGuard>,
    authority: Vec<u8>,
    scheme: &'static [u8],
    stream_window: u32,
    conn_window: u32,
    max_frame: usize,
    /// The calls' answers and wakers.
    calls: Calls,
    /// Every [`Client`] handle was dropped: no new calls will come.
    handles_gone: bool,
    connecting: Option<Connecting>,
    closed: Arc<AtomicBool>,
    streams: Ids<Stream>,
    /// Calls waiting for the server's SETTINGS or a free stream slot.
    queue: VecDeque<NewCall>,
    next_id: u32,
    /// The server's first SETTINGS arrived.
    settled: bool,
    goaway: Option<u32>,
    /// The connection failed: why.
    dead: Option<String>,
    /// Bytes written to the socket so far.
    flushed: u64,
    /// (interval, timeout) of keepalive PINGs.
    keepalive: Option<(Duration, Duration)>,
    /// When the keepalive looks at the connection next.
    keepalive_at: Option<Instant>,
    /// No call's deadline is earlier than this (a lower bound: calls that
    /// end are not taken out; the timer's firing looks at the calls left).
    expiry: Option<Instant>,
    /// Fires at the earlier of `keepalive_at` and `expiry`.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer was polled since its deadline was set.
    timer_polled: bool,
    /// A frame arrived since the timer was armed.
    heard: bool,
    /// The block of the last request head encoded (pseudo-headers and
    /// headers, not `grpc-timeout`), and the head it is of.
    kept: KeptBlock,
    kept_for: Option<Arc<RequestHead>>,
    /// A PING went out and the timer waits for its answer.
    ping_out: bool,
}

/// `d` as a `grpc-timeout` value in `buf` (what [`crate::grpc::encode_timeout`]
/// gives, without allocating: at most 8 digits, the finest unit that fits,
/// rounded up).
fn encode_timeout(d: Duration, buf: &mut [u8; 9]) -> &[u8] {
    const UNITS: [(u128, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ];
    let nanos = d.as_nanos();
    let (mut n, unit) = UNITS
        .iter()
        .map(|&(per, unit)| (nanos.div_ceil(per), unit))
        .find(|&(n, _)| n < 100_000_000)
        .unwrap_or((99_999_999, b'H'));
    let mut i = 8;
    buf[8] = unit;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

fn pump(side: &mut Side, id: u32, s: &mut Stream) {
    // The whole request is in `to_send`: its last frame ends the stream.
    let (_, ended) = side.send_data(id, &mut s.to_send, &mut s.window, true);
    s.end_sent |= ended;
}

impl Conn {
    fn usable(&self) -> bool {
        self.dead.is_none() && self.goaway.is_none() && self.next_id < MAX_STREAM_ID - 2
    }

    fn accept(&mut self, c: NewCall) {
        if !self.usable() {
            let why = self.why_closed();
            self.calls.answer(c.slot, Err(CallError::Unprocessed(why)));
            return;
        }
        if let Some(d) = c.ends_at() {
            // Calls mostly come with later deadlines than those before them:
            // the timer moves only when this one is the earliest.
            if self.expiry.is_none_or(|e| d < e) {
                self.expiry = Some(d);
                self.retime();
            }
        }
        self.queue.push_back(c);
    }

    fn why_closed(&self) -> String {
        match (&self.dead, self.goaway) {
            (Some(d), _) => d.clone(),
            (None, Some(_)) => format!("{} went away (GOAWAY)", self.addr),
            _ => format!("the connection to {} used up its stream ids", self.addr),
        }
    }

    /// Starts queued calls while the server's stream limit allows.
    fn start_queued(&mut self) {
        if !self.settled || self.side.io.is_none() {
            return;
        }
        while !self.queue.is_empty()
            && (self.streams.len() as u64) < u64::from(self.side.peer.max_concurrent_streams)
        {
            if !self.usable() {
                self.closed.store(true, Ordering::Relaxed);
                let why = self.why_closed();
                for c in self.queue.drain(..) {
                    self.calls
                        .answer(c.slot, Err(CallError::Unprocessed(why.clone())));
                }
                return;
            }
            let c = self.queue.pop_front().expect("not empty");
            self.start(c);
        }
    }

    fn start(&mut self, c: NewCall) {
        let id = self.next_id;
        self.next_id += 2;
        let mut tbuf = [0u8; 9];
        let timeout = c
            .deadline
            .map(|d| {
                d.told
                    .unwrap_or_else(|| d.at.saturating_duration_since(Instant::now()))
            })
            .map(|t| encode_timeout(t, &mut tbuf));
        let end = c.body.is_empty();
        let (scheme, authority) = (self.scheme, &self.authority[..]);
        // Calls sharing a head are encoded the same way while the table does
        // not change: the bytes kept from the last one serve.
        if !self
            .kept_for
            .as_ref()
            .is_some_and(|h| Arc::ptr_eq(h, &c.head))
        {
            self.kept.clear();
            self.kept_for = Some(c.head.clone());
        }
        let kept = &mut self.kept;
        self.side.put_header_block(id, end, |enc, out| {
            enc.begin(out);
            let pseudo: [(&[u8], &[u8]); 4] = [
                (b":method", b"POST"),
                (b":scheme", scheme),
                (b":path", &c.head.path),
                (b":authority", authority),
            ];
            kept.write(enc, out, pseudo.into_iter().chain(c.head.headers.iter()));
            // Never indexed (its value changes from call to call): it leaves
            // the table as it was.
            if let Some(t) = timeout {
                enc.encode(b"grpc-timeout", t, out);
            }
        });
        self.calls.started(c.slot, id);
        let mut s = Stream {
            slot: c.slot,
            head: None,
            body: BytesMut::new(),
            max: c.max,
            deadline: c.ends_at(),
            to_send: c.body,
            window: i64::from(self.side.peer.initial_window_size),
            end_sent: end,
            credit: 0,
            written_at: self.flushed + self.side.pending_out() as u64,
        };
        pump(&mut self.side, id, &mut s);
        self.streams.insert(id, s);
    }

    /// The future of call `slot` is gone: its stream is reset (CANCEL), or,
    /// not started yet, it leaves the queue.
    fn abandon(&mut self, slot: usize) {
        match self.calls.close(slot) {
            Some(id) => {
                if self.streams.remove(&id).is_some() {
                    put_rst(&mut self.side.wbuf, id, reason::CANCEL);
                }
            }
            None => {
                if let Some(i) = self.queue.iter().position(|c| c.slot == slot) {
                    self.queue.remove(i);
                }
            }
        }
    }

    /// Ends the connection: every call fails, unprocessed when its request
    /// never fully left.
    fn die(&mut self, why: String) {
        self.closed.store(true, Ordering::Relaxed);
        for (_, s) in self.streams.drain() {
            let e = if s.written_at > self.flushed {
                CallError::Unprocessed(why.clone())
            } else if s.head.is_some() {
                CallError::Failed(format!("the reply broke off: {why}"))
            } else {
                CallError::Failed(why.clone())
            };
            self.calls.answer(s.slot, Err(e));
        }
        for c in self.queue.drain(..) {
            self.calls
                .answer(c.slot, Err(CallError::Unprocessed(why.clone())));
        }
        self.dead = Some(why);
    }

    fn input(&mut self) -> Result<(), ConnError> {
        let buf = std::mem::take(&mut self.side.rbuf);
        let (used, r) = side::each_frame(&buf, self.max_frame, |h, p| self.frame(h, p));
        let mut buf = buf;
        buf.advance(used);
        self.side.rbuf = buf;
        r
    }

    fn credit_conn(&mut self, n: usize) {
        self.side.credit += n as u32;
        if self.side.credit >= self.conn_window / 2 {
            put_window_update(&mut self.side.wbuf, 0, self.side.credit);
            self.side.credit = 0;
        }
    }

    fn frame(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        match self.side.control(&h, p)? {
            Control::Done => return Ok(()),
            Control::Settings(delta) => {
                self.settled = true;
                if delta != 0 {
                    for (id, s) in self.streams.iter_mut() {
                        s.window += delta;
                        pump(&mut self.side, *id, s);
                    }
                }
                return Ok(());
            }
            Control::NotMine => {}
        }
        match h.kind {
            kind::DATA => {
                let r = wire::unpad(&h, p)?;
                // Taken off the connection at once: what a stream holds is
                // bounded by its limit.
                self.credit_conn(h.len);
                let Some(s) = self.streams.get_mut(&h.stream) else {
                    return Ok(());
                };
                if s.head.is_none() {
                    return Err(ConnError::protocol("DATA before the response head"));
                }
                let data = &p[r];
                if s.body.len() + data.len() > s.max {
                    let s = self.streams.remove(&h.stream).expect("present");
                    put_rst(&mut self.side.wbuf, h.stream, reason::CANCEL);
                    self.calls.answer(s.slot, Err(CallError::TooLarge(s.max)));
                    return Ok(());
                }
                append(&mut s.body, data);
                if h.has(flag::END_STREAM) {
                    self.complete(h.stream, None);
                } else {
                    s.credit += h.len as u32;
                    if s.credit >= self.stream_window / 2 {
                        put_window_update(&mut self.side.wbuf, h.stream, s.credit);
                        s.credit = 0;
                    }
                }
                Ok(())
            }
            kind::HEADERS | kind::CONTINUATION => match self.side.header_frame(&h, p)? {
                Some((id, end)) => self.headers(id, end),
                None => Ok(()),
            },
            kind::RST_STREAM => {
                let rc = wire::rst_code(p)?;
                if let Some(s) = self.streams.remove(&h.stream) {
                    let what = format!("{} reset the stream ({})", self.addr, reason::name(rc));
                    let e = if rc == reason::REFUSED_STREAM {
                        CallError::Unprocessed(what)
                    } else if s.head.is_some() {
                        CallError::Failed(format!("the reply broke off: {what}"))
                    } else {
                        CallError::Failed(what)
                    };
                    self.calls.answer(s.slot, Err(e));
                }
                Ok(())
            }
            kind::GOAWAY => {
                let (last, _) = wire::goaway(p)?;
                self.goaway = Some(self.goaway.map_or(last, |l| l.min(last)));
                self.closed.store(true, Ordering::Relaxed);
                let why = format!("{} went away (GOAWAY)", self.addr);
                let refused: Vec<u32> = self
                    .streams
                    .keys()
                    .copied()
                    .filter(|&id| id > last)
                    .collect();
                for id in refused {
                    if let Some(s) = self.streams.remove(&id) {
                        self.calls
                            .answer(s.slot, Err(CallError::Unprocessed(why.clone())));
                    }
                }
                for c in self.queue.drain(..) {
                    self.calls
                        .answer(c.slot, Err(CallError::Unprocessed(why.clone())));
                }
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                match self.side.window_update(&h, p)? {
                    None => {
                        for (id, s) in self.streams.iter_mut() {
                            if !s.to_send.is_empty() {
                                pump(&mut self.side, *id, s);
                            }
                        }
                    }
                    Some(inc) => {
                        if let Some(s) = self.streams.get_mut(&h.stream) {
                            s.window += i64::from(inc);
                            pump(&mut self.side, h.stream, s);
                        }
                    }
                }
                Ok(())
            }
            kind::PUSH_PROMISE => Err(ConnError::protocol("PUSH_PROMISE though push is off")),
            _ => Ok(()),
        }
    }

    fn headers(&mut self, id: u32, end: bool) -> Result<(), ConnError> {
        // Decoded even for a stream we dropped: HPACK state is per connection.
        // A server's replies mostly repeat their head and trailer blocks: the
        // lists decoded for earlier ones serve again.
        let list = self.side.dec.decode_shared(&self.side.block)?;
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if s.head.is_none() {
            // 1xx: an informational head; the real one follows.
            if !end
                && list
                    .get(b":status")
                    .is_some_and(|v| v.first() == Some(&b'1'))
            {
                return Ok(());
            }
            s.head = Some(list);
            if end {
                self.complete(id, None);
            }
            return Ok(());
        }
        if !end {
            return Err(ConnError::protocol("trailers without END_STREAM"));
        }
        self.complete(id, Some(list));
        Ok(())
    }

    /// The server ended the stream: the reply goes to its caller.
    fn complete(&mut self, id: u32, trailers: Option<Arc<HeaderList>>) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if !s.end_sent {
            // The server answered before reading the whole request.
            put_rst(&mut self.side.wbuf, id, reason::NO_ERROR);
        }
        let reply = Reply {
            head: s.head.unwrap_or_default(),
            body: s.body.freeze(),
            trailers,
        };
        self.calls.answer(s.slot, Ok(reply));
    }

    /// Starts the queued calls the server's limit allows and writes what is
    /// due. Whether anything was written.
    fn send(&mut self, cx: &mut Context<'_>) -> bool {
        self.start_queued();
        let before = self.side.pending_out();
        match self.side.poll_flush(cx) {
            Ok(w) => {
                self.flushed += (before - self.side.pending_out()) as u64;
                w
            }
            Err(e) => {
                if self.dead.is_none() {
                    self.die(format!("writing to {} failed: {e}", self.addr));
                }
                true
            }
        }
    }

    fn arm_keepalive(&mut self) {
        if let Some((interval, _)) = self.keepalive {
            self.keepalive_at = Some(Instant::now() + interval);
            self.retime();
        }
    }

    /// Sets the timer to the earlier of the keepalive's next look and the
    /// earliest deadline; drops it when there is neither.
    fn retime(&mut self) {
        let at = match (self.keepalive_at, self.expiry) {
            (Some(k), Some(e)) => k.min(e),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => {
                self.timer = None;
                return;
            }
        };
        match self.timer.as_mut() {
            Some(t) if t.deadline() == at => return,
            Some(t) => t.as_mut().reset(at),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        self.timer_polled = false;
    }

    /// The timer fired: keepalive and deadlines due by now are seen to.
    fn timer_due(&mut self) {
        let now = Instant::now();
        if self.keepalive_at.is_some_and(|k| k <= now) {
            self.keepalive_due(now);
        }
        if self.expiry.is_some_and(|e| e <= now) {
            self.expire(now);
        }
        self.retime();
    }

    /// Fails the calls whose deadline passed by `now` (their streams reset)
    /// and finds the earliest deadline left.
    fn expire(&mut self, now: Instant) {
        let past = |d: Option<Instant>| d.is_some_and(|d| d <= now);
        let late: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| past(s.deadline))
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(s) = self.streams.remove(&id) {
                put_rst(&mut self.side.wbuf, id, reason::CANCEL);
                self.calls.answer(s.slot, Err(CallError::DeadlineExceeded));
            }
        }
        let (late, waiting): (VecDeque<NewCall>, VecDeque<NewCall>) =
            self.queue.drain(..).partition(|c| past(c.ends_at()));
        self.queue = waiting;
        for c in late {
            self.calls.answer(c.slot, Err(CallError::DeadlineExceeded));
        }
        self.expiry = self
            .streams
            .values()
            .filter_map(|s| s.deadline)
            .chain(self.queue.iter().filter_map(NewCall::ends_at))
            .min();
    }

    /// The keepalive's time came: the server was heard (wait again), or is
    /// asked for a PING, or did not answer one (the connection ends).
    fn keepalive_due(&mut self, now: Instant) {
        let Some((interval, timeout)) = self.keepalive else {
            return;
        };
        let (heard, ping_out) = (self.heard, self.ping_out);
        self.heard = false;
        self.ping_out = false;
        let next = if heard {
            interval
        } else if ping_out {
            self.keepalive_at = None;
            self.die(format!(
                "{} did not answer a PING within {timeout:?}",
                self.addr
            ));
            return;
        } else {
            put_head(&mut self.side.wbuf, 8, kind::PING, 0, 0);
            self.side.wbuf.extend_from_slice(b"mp-alive");
            self.ping_out = true;
            timeout
        };
        self.keepalive_at = Some(now + next);
    }
}

impl Engine for Conn {
    /// One round: connect, take commands, read, start calls, write.
    /// Returns whether anything happened.
    fn round(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        if let Some(c) = &mut self.connecting {
            match c.as_mut().poll(cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(io)) => {
                    self.connecting = None;
                    self.side.io = Some(io);
                    self.arm_keepalive();
                    busy = true;
                }
                Poll::Ready(Err(e)) => {
                    self.connecting = None;
                    self.die(format!("cannot connect to {}: {e}", self.addr));
                    return true;
                }
            }
        }
        // The timer is polled (registered) once per deadline, and again only
        // once the driver fired it, not at every round; `is_elapsed` asks the
        // timer entry, not the clock (a clock read per round showed in
        // profiles).
        if let Some(t) = self.timer.as_mut() {
            if !self.timer_polled || t.is_elapsed() {
                self.timer_polled = true;
                if t.as_mut().poll(cx).is_ready() {
                    busy = true;
                    self.timer_due();
                }
            }
        }
        if self.side.io.is_some() && !self.side.eof {
            match self.side.poll_read(cx) {
                Poll::Ready(Ok(0)) => {
                    busy = true;
                    self.side.eof = true;
                    self.die(format!("{} closed the connection", self.addr));
                }
                Poll::Ready(Ok(_)) => {
                    busy = true;
                    self.heard = true;
                    if let Err(e) = self.input() {
                        put_goaway(&mut self.side.wbuf, 0, e.code, e.what.as_bytes());
                        self.die(format!("{} broke the HTTP/2 protocol: {e}", self.addr));
                    }
                }
                Poll::Ready(Err(e)) => {
                    busy = true;
                    self.side.eof = true;
                    self.die(format!("the connection to {} failed: {e}", self.addr));
                }
                Poll::Pending => {}
            }
        }
        busy |= self.send(cx);
        busy
    }

    fn finished(&self) -> bool {
        if self.dead.is_some() {
            return true;
        }
        self.streams.is_empty()
            && self.queue.is_empty()
            && (self.handles_gone || !self.usable())
            && self.side.pending_out() == 0
    }

    fn main_side(&mut self) -> &mut Side {
        &mut self.side
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_encode_as_the_grpc_module_does() {
        let mut buf = [0u8; 9];
        for d in [
            Duration::ZERO,
            Duration::from_nanos(7),
            Duration::from_micros(99_999_999),
            Duration::from_millis(1500),
            Duration::from_secs(86_400 * 400),
            Duration::from_secs(u64::MAX),
        ] {
            let want = crate::grpc::encode_timeout(d);
            assert_eq!(encode_timeout(d, &mut buf), want.as_bytes(), "{d:?}");
        }
    }
}
