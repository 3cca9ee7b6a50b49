//! The endpoint pool: for each discovered endpoint a few HTTP/2 connections,
//! kept open and reconnected with backoff; health (active checks, passive
//! ejection); and round-robin picking over the endpoints that take traffic.
//!
//! The request path ([`Pool::send`]) takes no lock: the endpoint list and each
//! connection slot are `ArcSwap` snapshots, the round-robin cursor and the
//! health state are atomics. Background tasks (one per connection slot, one
//! health checker per endpoint, one following discovery) do the rest.
//!
//! A request that never reached a backend (the connection closed or went away
//! before the request was written to it) is sent to the next endpoint; nothing
//! else is retried.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::body::Body;
use crate::discovery::Endpoints;
use crate::grpc::code;
use crate::health::{self, HealthConfig};
use crate::metrics::{EndpointMetrics, PoolMetrics};
use crate::tls::Io;

/// Exponential backoff bounds.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The first delay.
    pub base: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `n` (0-based): `base * 2^n`, capped at `max`,
    /// with up to 25% of random jitter so that many clients do not retry in step.
    pub fn delay(&self, n: u32) -> Duration {
        let d = self.base.saturating_mul(1u32 << n.min(16)).min(self.max);
        let jitter = d.mul_f64(rand_fraction() * 0.25);
        d.saturating_sub(jitter)
    }
}

/// A cheap pseudo-random number in [0, 1) (jitter only, not cryptographic).
fn rand_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_nanos());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// HTTP/2 client settings of the pool's connections.
#[derive(Clone, Debug)]
pub struct H2Config {
    /// Initial per-stream flow-control window (bytes).
    pub stream_window: u32,
    /// Initial connection flow-control window (bytes).
    pub conn_window: u32,
    /// Largest frame we accept (bytes).
    pub max_frame_size: u32,
    /// PING the backend this often while the connection is open (detects dead
    /// peers that never closed the TCP connection); `None` disables it.
    pub keepalive: Option<Duration>,
}

impl Default for H2Config {
    fn default() -> Self {
        H2Config {
            stream_window: 2 * 1024 * 1024,
            conn_window: 8 * 1024 * 1024,
            max_frame_size: 64 * 1024,
            keepalive: Some(Duration::from_secs(30)),
        }
    }
}

/// How a pool connects, checks and ejects.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// HTTP/2 connections kept open per endpoint (requests are multiplexed
    /// over them, taken in turn).
    pub conns_per_endpoint: usize,
    /// How long a TCP connect and HTTP/2 handshake may take.
    pub connect_timeout: Duration,
    /// Delay between reconnection attempts of one connection.
    pub reconnect: Backoff,
    /// Active health checks.
    pub health: HealthConfig,
    /// This many UNAVAILABLE responses in a row eject an endpoint.
    pub eject_after_unavailable: u32,
    /// How long an ejection lasts (doubling for repeated ejections).
    pub ejection: Backoff,
    /// HTTP/2 settings.
    pub h2: H2Config,
    /// TLS to the backends; `None`: h2c.
    pub tls: Option<crate::tls::ClientTls>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            conns_per_endpoint: 2,
            connect_timeout: Duration::from_secs(1),
            reconnect: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(2),
            },
            health: HealthConfig::default(),
            eject_after_unavailable: 5,
            ejection: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(30),
            },
            h2: H2Config::default(),
            tls: None,
        }
    }
}

/// Nanoseconds since the first call: a cheap monotonic clock for deadlines
/// stored in atomics.
pub(crate) fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // +1 so that 0 can mean "never".
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX) + 1
}

/// A connection to an endpoint, ready to send requests on.
type Conn = http2::SendRequest<Body>;

/// One backend endpoint: its connections and its health.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    label: String,
    slots: Box<[ArcSwapOption<Conn>]>,
    next_slot: AtomicUsize,
    connected: AtomicUsize,
    /// Passing active health checks (true until a check says otherwise).
    active_ok: AtomicBool,
    /// Out of rotation until this `now_nanos()` (0: not ejected).
    ejected_until: AtomicU64,
    /// Ejections in a row (the backoff exponent).
    ejections: AtomicU32,
    consecutive_unavailable: AtomicU32,
    /// A first connection attempt has finished (either way).
    tried: AtomicBool,
    metrics: EndpointMetrics,
    cfg: Arc<PoolConfig>,
    stop: watch::Sender<bool>,
}

impl Endpoint {
    /// Records a finished call: its gRPC status and duration in the metrics,
    /// and the status for passive health (see [`Endpoint::observe_status`]).
    #[inline]
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.metrics.response(status, elapsed);
        self.observe_status(status);
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint's metrics handles.
    pub fn metrics(&self) -> &EndpointMetrics {
        &self.metrics
    }

    /// True when the endpoint takes traffic: connected, passing health checks
    /// and not ejected.
    #[inline]
    pub fn is_available(&self) -> bool {
        if self.connected.load(Ordering::Relaxed) == 0 || !self.active_ok.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        // Only read the clock when an ejection is in force.
        until == 0 || now_nanos() >= until
    }

    /// True once the endpoint left its pool (discovery stopped listing it,
    /// or the pool is gone): it is never picked again, and whoever keeps
    /// connections of their own to it should close them once their calls
    /// are done.
    pub fn is_removed(&self) -> bool {
        *self.stop.borrow()
    }

    /// Why the endpoint takes no traffic (for error messages), or "available".
    pub fn state(&self) -> &'static str {
        if self.connected.load(Ordering::Relaxed) == 0 {
            if self.tried.load(Ordering::Relaxed) {
                "not connected"
            } else {
                "connecting"
            }
        } else if !self.active_ok.load(Ordering::Relaxed) {
            "failing health checks"
        } else if !self.is_available() {
            "ejected"
        } else {
            "available"
        }
    }

    /// An open connection, taken in turn among the endpoint's slots.
    #[inline]
    pub fn conn(&self) -> Option<Conn> {
        let n = self.slots.len();
        let start = self.next_slot.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let slot = &self.slots[(start + k) % n];
            if let Some(c) = &*slot.load() {
                if !c.is_closed() {
                    return Some(Conn::clone(c));
                }
            }
        }
        None
    }

    /// Records the outcome of a call for passive health: UNAVAILABLE responses
    /// in a row eject the endpoint (with backoff); anything else resets that.
    #[inline]
    pub fn observe_status(&self, status: u16) {
        let cfg = &*self.cfg;
        if status == code::UNAVAILABLE {
            let n = self.consecutive_unavailable.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= cfg.eject_after_unavailable {
                self.consecutive_unavailable.store(0, Ordering::Relaxed);
                self.eject(cfg.ejection, "UNAVAILABLE responses in a row");
            }
        } else {
            // Loads first: no cache-line writes on the common path.
            if self.consecutive_unavailable.load(Ordering::Relaxed) != 0 {
                self.consecutive_unavailable.store(0, Ordering::Relaxed);
            }
            if self.ejections.load(Ordering::Relaxed) != 0
                && self.ejected_until.load(Ordering::Relaxed) == 0
            {
                self.ejections.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Takes the endpoint out of rotation for a backoff that grows with every
    /// ejection in a row.
    pub fn eject(&self, backoff: Backoff, why: &str) {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed);
        let d = backoff.delay(n);
        let until = now_nanos() + u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2);
        self.ejected_until.store(until, Ordering::Relaxed);
        self.metrics.set_healthy(false);
        warn!(endpoint = %self.addr, ?d, "ejecting endpoint: {why}");
    }

    /// Clears an ejection whose time is over; returns whether the endpoint is
    /// available now. Called by the health task.
    pub(crate) fn refresh(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && now_nanos() >= until {
            self.ejected_until.store(0, Ordering::Relaxed);
            info!(endpoint = %self.addr, "ejection over, endpoint back in rotation");
        }
        let ok = self.is_available();
        self.metrics.set_healthy(ok);
        ok
    }

    pub(crate) fn set_active_ok(&self, ok: bool) {
        if self.active_ok.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                info!(endpoint = %self.addr, "health checks pass again");
            } else {
                warn!(endpoint = %self.addr, "health checks failing; out of rotation");
            }
        }
        self.refresh();
    }

    pub(crate) fn connected_count(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }
}

/// A response from a backend, and the endpoint that answered.
#[derive(Debug)]
pub struct Sent {
    /// The endpoint the request went to.
    pub endpoint: Arc<Endpoint>,
    /// The backend's response (head; the body streams).
    pub response: Response<Incoming>,
}

/// Why [`Pool::send`] has no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No endpoint takes traffic; the message says what each one is doing.
    #[error("{0}")]
    NoEndpoint(String),
    /// The request reached a backend (or may have), then failed.
    #[error("backend {}: {source}", endpoint.addr)]
    Backend {
        /// The endpoint.
        endpoint: Arc<Endpoint>,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
}

/// A pool of endpoints following a discovery watch. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Pool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    rr: AtomicUsize,
    cfg: Arc<PoolConfig>,
    metrics: PoolMetrics,
    /// Woken when an endpoint connects or fails, or the set changes.
    changed: Arc<Notify>,
    /// Discovery has published at least once.
    discovered: AtomicBool,
    /// Moves every time the endpoint set is applied.
    generation: AtomicU64,
    /// Dropped with the last `Pool`: stops the discovery follower.
    _alive: watch::Sender<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for ep in self.endpoints.load().iter() {
            ep.stop.send_replace(true);
            self.metrics.remove(&ep.label);
        }
    }
}

impl Pool {
    /// A pool named `name` (for logs) following `endpoints`. Must be called
    /// within a tokio runtime: it spawns the tasks that connect and check.
    pub fn new(
        name: impl Into<String>,
        cfg: PoolConfig,
        metrics: PoolMetrics,
        mut endpoints: watch::Receiver<Endpoints>,
    ) -> Pool {
        let (alive_tx, mut alive_rx) = watch::channel(());
        let shared = Arc::new(Shared {
            name: name.into(),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            rr: AtomicUsize::new(0),
            cfg: Arc::new(cfg),
            metrics,
            changed: Arc::new(Notify::new()),
            discovered: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            _alive: alive_tx,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            // Apply the current value first (it may already be the first set).
            let mut first = true;
            loop {
                if !first {
                    tokio::select! {
                        r = endpoints.changed() => if r.is_err() { return },
                        _ = alive_rx.changed() => return,
                    }
                }
                let set = endpoints.borrow_and_update().clone();
                let published = !first || !set.is_empty();
                first = false;
                let Some(shared) = weak.upgrade() else { return };
                if published {
                    apply(&shared, &set);
                }
            }
        });
        Pool { shared }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.cfg
    }

    /// A number that moves every time discovery changes the endpoint set
    /// (an endpoint added or removed): whoever keeps something per endpoint
    /// can tell, with one atomic load, when to look again.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// A snapshot of the endpoints.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.shared.endpoints.load().iter().cloned().collect()
    }

    /// How many endpoints take traffic now.
    pub fn available(&self) -> usize {
        self.shared
            .endpoints
            .load()
            .iter()
            .filter(|e| e.is_available())
            .count()
    }

    /// The next available endpoint in round-robin order.
    #[inline]
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let eps = self.shared.endpoints.load();
        let n = eps.len();
        if n == 0 {
            return None;
        }
        let start = self.shared.rr.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &eps[(start + k) % n])
            .find(|e| e.is_available())
            .cloned()
    }

    /// Waits (at most `limit`) until some endpoint is available. Returns
    /// whether one is.
    pub async fn wait_available(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.shared.changed.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.available() > 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.available() > 0;
            }
        }
    }

    /// True while an answer may still come soon: discovery has not spoken yet,
    /// or an endpoint is making its first connection.
    pub fn starting(&self) -> bool {
        !self.shared.discovered.load(Ordering::Relaxed)
            || self
                .shared
                .endpoints
                .load()
                .iter()
                .any(|e| !e.tried.load(Ordering::Relaxed))
    }

    /// Sends `req` to the next available endpoint.
    ///
    /// Retried on the next endpoint, and only then: a request that was not
    /// written to a backend (its connection had just closed), and a request
    /// whose body is in memory ([`Body::Bytes`], [`Body::Empty`]) that the
    /// backend refused unprocessed (REFUSED_STREAM, or beyond the last stream
    /// of its GOAWAY). With no endpoint available, fails at once, unless the
    /// pool is still starting (then it waits up to the connect timeout).
    pub async fn send(&self, req: Request<Body>) -> Result<Sent, SendError> {
        // Keep what it takes to send the request again: its head, and its
        // body when in memory (or the recording of a streamed one).
        let mut recording = req.body().recording();
        let mut replay =
            (recording.is_some() || req.body().try_clone().is_some()).then(|| clone_request(&req));
        let mut req = req;
        let mut waited = false;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let ep = match self.pick() {
                Some(ep) => ep,
                None if !waited && self.starting() => {
                    waited = true;
                    self.wait_available(self.shared.cfg.connect_timeout).await;
                    continue;
                }
                None => return Err(SendError::NoEndpoint(self.describe())),
            };
            let Some(mut conn) = ep.conn() else {
                if attempts > MAX_ATTEMPTS {
                    return Err(SendError::NoEndpoint(self.describe()));
                }
                continue;
            };
            ep.metrics.request();
            match conn.try_send_request(req).await {
                Ok(response) => {
                    return Ok(Sent {
                        endpoint: ep,
                        response,
                    })
                }
                Err(mut e) => {
                    if attempts <= MAX_ATTEMPTS {
                        if let Some(r) = e.take_message() {
                            debug!(endpoint = %ep.addr, error = %e.error(), "request not sent; trying the next endpoint");
                            req = r;
                            continue;
                        }
                        if let Some(r) = resend(&mut replay, &mut recording, e.error()) {
                            debug!(endpoint = %ep.addr, error = %e.error(), "request refused unprocessed; trying the next endpoint");
                            req = r;
                            continue;
                        }
                    }
                    return Err(SendError::Backend {
                        endpoint: ep,
                        source: e.into_error(),
                    });
                }
            }
        }
    }

    /// "no healthy endpoint: ..." with every endpoint's state.
    pub fn describe(&self) -> String {
        let eps = self.shared.endpoints.load();
        if eps.is_empty() {
            return format!("no healthy endpoint: {} has no endpoints", self.shared.name);
        }
        let states: Vec<String> = eps
            .iter()
            .map(|e| format!("{} {}", e.addr, e.state()))
            .collect();
        format!(
            "no healthy endpoint in {} ({} known: {})",
            self.shared.name,
            eps.len(),
            states.join(", ")
        )
    }
}

/// How many endpoints one request may be tried on.
const MAX_ATTEMPTS: usize = 8;

/// True when the backend says it did not process the stream: REFUSED_STREAM,
/// or a GOAWAY whose last stream is below ours. Such a request may be sent
/// elsewhere whatever its method.
pub fn never_processed(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        source = s.source();
    }
    false
}

/// The request to send again after `error`, if the backend did not process
/// it and its whole body is at hand.
fn resend(
    replay: &mut Option<Request<Body>>,
    recording: &mut Option<Arc<std::sync::Mutex<crate::body::Recording>>>,
    error: &hyper::Error,
) -> Option<Request<Body>> {
    let template = replay.as_mut()?;
    if !never_processed(error) {
        return None;
    }
    if let Some(rec) = recording.as_ref() {
        let body = crate::body::Recording::resume(rec)?;
        if body.try_clone().is_none() {
            // Still streaming in: this attempt reads on from the recording.
            let mut r = clone_request(template);
            *r.body_mut() = body;
            return Some(r);
        }
        // Whole: from now on the template carries it.
        *template.body_mut() = body;
        *recording = None;
    }
    Some(clone_request(template))
}

fn clone_request(r: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(r.body().try_clone().unwrap_or_default());
    *copy.method_mut() = r.method().clone();
    *copy.uri_mut() = r.uri().clone();
    *copy.version_mut() = r.version();
    *copy.headers_mut() = r.headers().clone();
    copy
}

/// Applies a new endpoint set: keeps the endpoints still present, starts new
/// ones, stops the removed ones (their open connections finish what they
/// carry, then close).
fn apply(shared: &Arc<Shared>, set: &Endpoints) {
    let old = shared.endpoints.load_full();
    let mut next = Vec::with_capacity(set.len());
    for &addr in set.iter() {
        if let Some(ep) = old.iter().find(|e| e.addr == addr) {
            next.push(ep.clone());
            continue;
        }
        info!(pool = %shared.name, endpoint = %addr, "adding endpoint");
        let label = addr.to_string();
        let ep = Arc::new(Endpoint {
            addr,
            metrics: shared.metrics.endpoint(&label),
            label,
            slots: (0..shared.cfg.conns_per_endpoint.max(1))
                .map(|_| ArcSwapOption::empty())
                .collect(),
            next_slot: AtomicUsize::new(0),
            connected: AtomicUsize::new(0),
            active_ok: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_unavailable: AtomicU32::new(0),
            tried: AtomicBool::new(false),
            cfg: shared.cfg.clone(),
            stop: watch::channel(false).0,
        });
        for i in 0..ep.slots.len() {
            tokio::spawn(run_slot(
                ep.clone(),
                i,
                shared.cfg.clone(),
                shared.changed.clone(),
            ));
        }
        tokio::spawn(health::run(ep.clone(), shared.cfg.clone()));
        next.push(ep);
    }
    for ep in old.iter() {
        if !set.contains(&ep.addr) {
            info!(pool = %shared.name, endpoint = %ep.addr, "removing endpoint");
            ep.stop.send_replace(true);
            shared.metrics.remove(&ep.label);
        }
    }
    shared.endpoints.store(Arc::new(next));
    shared.generation.fetch_add(1, Ordering::Release);
    shared.discovered.store(true, Ordering::Relaxed);
    shared.changed.notify_waiters();
}

/// Resolves when the endpoint is removed (or its owner is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The `Ref` that `wait_for` returns must not live across later awaits.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Opens one HTTP/2 connection (TCP with `TCP_NODELAY`, h2c handshake).
async fn connect(
    addr: SocketAddr,
    cfg: &PoolConfig,
) -> Result<(Conn, http2::Connection<TokioIo<Io>, Body, TokioExecutor>), String> {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        // Small gRPC frames must not wait for Nagle.
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let io = match &cfg.tls {
            None => Io::Plain(stream),
            Some(tls) => tls
                .connect(stream)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?,
        };
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .initial_stream_window_size(cfg.h2.stream_window)
            .initial_connection_window_size(cfg.h2.conn_window)
            .max_frame_size(cfg.h2.max_frame_size)
            .max_header_list_size(64 * 1024);
        if let Some(k) = cfg.h2.keepalive {
            b.keep_alive_interval(k)
                .keep_alive_timeout(Duration::from_secs(10));
        }
        b.handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))
    };
    match tokio::time::timeout(cfg.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {:?}", cfg.connect_timeout)),
    }
}

/// Keeps connection slot `i` of `ep` filled until the endpoint is removed.
async fn run_slot(ep: Arc<Endpoint>, i: usize, cfg: Arc<PoolConfig>, changed: Arc<Notify>) {
    let mut stop = ep.stopped();
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let res = tokio::select! {
            r = connect(ep.addr, &cfg) => r,
            _ = stopped(&mut stop) => return,
        };
        match res {
            Ok((send, conn)) => {
                if failures > 0 {
                    info!(endpoint = %ep.addr, "connected again");
                }
                failures = 0;
                ep.slots[i].store(Some(Arc::new(send)));
                let n = ep.connected.fetch_add(1, Ordering::Relaxed) + 1;
                ep.tried.store(true, Ordering::Relaxed);
                ep.metrics.set_connections(n);
                ep.refresh();
                changed.notify_waiters();

                let mut conn = pin!(conn);
                let ended = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = stopped(&mut stop) => {
                        // Removed: no new requests; let in-flight ones finish.
                        ep.slots[i].store(None);
                        conn.await
                    }
                };
                ep.slots[i].store(None);
                let n = ep.connected.fetch_sub(1, Ordering::Relaxed) - 1;
                ep.metrics.set_connections(n);
                ep.refresh();
                match ended {
                    Ok(()) => debug!(endpoint = %ep.addr, "connection closed"),
                    Err(e) => info!(endpoint = %ep.addr, error = %e, "connection lost"),
                }
            }
            Err(e) => {
                let first = !ep.tried.swap(true, Ordering::Relaxed);
                if failures == 0 || first {
                    warn!(endpoint = %ep.addr, error = %e, "cannot connect; retrying with backoff");
                } else {
                    debug!(endpoint = %ep.addr, error = %e, failures, "cannot connect");
                }
                // A refused connection means the backend is gone or going:
                // keep the whole endpoint out until the next attempt.
                if ep.ejected_until.load(Ordering::Relaxed) == 0 && ep.connected_count() > 0 {
                    ep.eject(cfg.reconnect, "connect failed");
                }
                changed.notify_waiters();
                let delay = cfg.reconnect.delay(failures);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut stop) => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
