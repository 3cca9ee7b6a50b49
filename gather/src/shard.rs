//! Shards and their replicas: a sidecar pool per shard (discovery, health,
//! round robin), a lean HTTP/2 client per replica for the leaf calls
//! ([`mp_sidecar::h2client`]), a tonic channel for the few calls that are not on
//! the data path (reflection, the merger), and a window of recent latencies
//! for percentile hedging.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use hyper_util::rt::TokioIo;
use mp_sidecar::addr::{HostPort, Resolver};
use mp_sidecar::discovery::{self, DiscoveryConfig, Source};
use mp_sidecar::h2client::{Client, ClientConfig};
use mp_sidecar::metrics::PoolMetrics;
use mp_sidecar::pool::{Pool, PoolConfig};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::metrics::ShardMetrics;

/// How long a TCP connect to a replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A tonic channel to one address, for calls off the data path: reflection
/// questions to a leaf.
#[derive(Debug)]
pub struct Replica {
    /// `host:port` as given on the command line (what metrics and
    /// `LeafOutcome.endpoint` show).
    pub endpoint: Arc<str>,
    /// One HTTP/2 connection, multiplexed by every call to this replica and
    /// re-established lazily when it breaks.
    pub channel: Channel,
}

impl Replica {
    /// A replica at `endpoint` (`HOST:PORT`). Does not connect: the first
    /// call does, and a host name is resolved with `resolver` (pure Rust, no
    /// getaddrinfo) at every (re)connect, so a container that comes up later,
    /// or moves, is found.
    ///
    /// Must be called inside a tokio runtime.
    pub fn new(endpoint: &str, resolver: &Resolver) -> Result<Replica, ReplicaError> {
        let target: HostPort = endpoint.parse()?;
        let resolver = resolver.clone();
        let channel = Endpoint::from_shared(format!("http://{target}"))?
            .tcp_nodelay(true)
            .connect_with_connector_lazy(tower::service_fn(move |_uri| {
                let target = target.clone();
                let resolver = resolver.clone();
                async move { connect(&resolver, &target).await.map(TokioIo::new) }
            }));
        Ok(Replica {
            endpoint: endpoint.into(),
            channel,
        })
    }
}

/// An address that cannot be a replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// A shard without replicas.
    #[error("a shard needs at least one replica")]
    NoReplica,
    /// Not usable as an HTTP/2 `:authority`.
    #[error("{0:?} cannot be an HTTP/2 authority")]
    Authority(String),
    /// Not `HOST:PORT`.
    #[error(transparent)]
    Addr(#[from] mp_sidecar::addr::AddrParseError),
    /// Not usable as an HTTP/2 authority.
    #[error("invalid endpoint")]
    Endpoint(#[from] tonic::transport::Error),
}

/// Resolves `target` and connects to the first of its addresses that answers.
async fn connect(resolver: &Resolver, target: &HostPort) -> io::Result<TcpStream> {
    let attempt = async {
        let addrs = resolver
            .resolve(target)
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{target} has no address"))
        }))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {target} timed out after {CONNECT_TIMEOUT:?}"),
            )
        })?
}

/// A shard's leaf call connections, and the pool generation they were last
/// checked against.
#[derive(Debug, Default)]
struct Clients {
    list: Vec<(SocketAddr, Client)>,
    generation: u64,
}

/// One shard: a pool of its replicas and what mp-gather remembers about it.
#[derive(Debug)]
pub struct Shard {
    /// 0-based shard index (the leaf's MP_SHARD).
    pub index: usize,
    /// The replicas: HTTP/2 connections kept open, health-checked, ejected
    /// after repeated UNAVAILABLE, round robin; names re-resolved.
    pub pool: Pool,
    /// The first replica's `HOST:PORT`, the `:authority` of leaf calls.
    pub authority: Authority,
    /// Recent latencies, for percentile hedging.
    pub window: LatencyWindow,
    /// Metric handles.
    pub metrics: ShardMetrics,
    /// The leaf calls' connections, one per replica address, opened on first
    /// use and replaced once closed (GOAWAY, failure). The pool's own
    /// connections only tell which replicas are up.
    clients: Mutex<Clients>,
    /// The replicas given as host names (not IP literals), to say why the
    /// pool is empty when they do not resolve.
    names: Vec<HostPort>,
    resolver: Resolver,
    /// The last [`Shard::unresolved`] answer and when it was found: failing
    /// calls ask the DNS server at most once a second, whatever the rate.
    unresolved: Mutex<Option<(std::time::Instant, Option<String>)>>,
}

impl Shard {
    /// Shard `index` served by `replicas` (at least one), whose host names
    /// are resolved again every `dns_interval`. Must be called inside a tokio
    /// runtime: the pool connects in the background at once.
    pub fn new(
        index: usize,
        replicas: &[HostPort],
        resolver: &Resolver,
        pool_metrics: &PoolMetrics,
        metrics: ShardMetrics,
        percentile: f64,
        dns_interval: Duration,
    ) -> Result<Self, ReplicaError> {
        let first = replicas.first().ok_or(ReplicaError::NoReplica)?;
        let authority: Authority = first
            .to_string()
            .parse()
            .map_err(|_| ReplicaError::Authority(first.to_string()))?;
        // IP literals are fixed; names are resolved again periodically, so a
        // container that starts late or moves is followed.
        let sources = replicas
            .iter()
            .map(|hp| match hp.socket_addr() {
                Some(_) => Source::Static(hp.clone()),
                None => Source::Dns(hp.clone()),
            })
            .collect();
        let discovery_config = DiscoveryConfig {
            dns_interval,
            ..DiscoveryConfig::default()
        };
        let endpoints = discovery::spawn(sources, resolver.clone(), discovery_config);
        let pool = Pool::new(
            format!("shard {index}"),
            PoolConfig::default(),
            pool_metrics.clone(),
            endpoints,
        );
        Ok(Shard {
            index,
            pool,
            authority,
            window: LatencyWindow::new(percentile),
            metrics,
            clients: Mutex::new(Clients::default()),
            names: replicas
                .iter()
                .filter(|hp| hp.socket_addr().is_none())
                .cloned()
                .collect(),
            resolver: resolver.clone(),
            unresolved: Mutex::new(None),
        })
    }

    /// The client for leaf calls to the replica at `addr`: the open one, or a
    /// new one (connecting in the background) when there is none or it closed.
    pub fn client(&self, addr: SocketAddr) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.pool.generation();
        if clients.generation != generation {
            // Replicas left discovery: their connections go (each closes
            // once the calls it carries are done).
            clients.generation = generation;
            let known = self.pool.endpoints();
            clients
                .list
                .retain(|(a, _)| known.iter().any(|e| e.addr() == *a));
        }
        if let Some((_, c)) = clients.list.iter().find(|(a, _)| *a == addr) {
            if !c.is_closed() {
                return c.clone();
            }
        }
        let known = self.pool.endpoints();
        let cfg = ClientConfig::default();
        let c = match known.iter().find(|e| e.addr() == addr) {
            // Counted in mp_gather_leaf_endpoint_call_connections.
            Some(ep) => Client::new_counted(
                addr,
                self.authority.as_str(),
                &cfg,
                ep.metrics().call_connection(),
            ),
            None => Client::new(addr, self.authority.as_str(), &cfg),
        };
        // Closed clients go (rare: this runs only when a connection is made).
        clients.list.retain(|(a, c)| *a != addr && !c.is_closed());
        clients.list.push((addr, c.clone()));
        c
    }

    /// Why the shard has no replica to call when that is because its host
    /// names do not resolve, e.g. `leaf-1.leaves:9000 does not resolve:
    /// leaf-1.leaves: no such host (no A/AAAA records)`; `None` when they
    /// resolve, or the shard has none. Asks the resolver at most once a second
    /// (each lookup bounded by 1 s), so calls failing at a high rate do not
    /// flood the DNS server.
    pub async fn unresolved(&self) -> Option<String> {
        if self.names.is_empty() {
            return None;
        }
        let now = std::time::Instant::now();
        {
            let cached = self.unresolved.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, note)) = &*cached {
                if now.duration_since(*at) < Duration::from_secs(1) {
                    return note.clone();
                }
            }
        }
        let mut notes = Vec::new();
        for hp in &self.names {
            let why = match tokio::time::timeout(Duration::from_secs(1), self.resolver.resolve(hp))
                .await
            {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the DNS lookup timed out after 1s".to_string(),
            };
            notes.push(format!("{hp} does not resolve: {why}"));
        }
        let note = (!notes.is_empty()).then(|| notes.join("; "));
        *self.unresolved.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, note.clone()));
        note
    }
}

/// How many recent latencies a shard keeps.
const WINDOW: usize = 512;
/// Recompute the percentile after this many new samples: sorting on every
/// call would cost more than the call.
const RECOMPUTE_EVERY: u32 = 16;
/// Below this many samples the percentile means little: no percentile hedging.
const MIN_SAMPLES: usize = 32;

/// A ring of a shard's recent latencies and a cached percentile of them.
#[derive(Debug)]
pub struct LatencyWindow {
    percentile: f64,
    ring: Mutex<Ring>,
    /// The cached percentile in microseconds; 0 = not known yet.
    cached_us: AtomicU64,
}

#[derive(Debug)]
struct Ring {
    samples: Vec<u32>,
    pos: usize,
    since: u32,
}

impl LatencyWindow {
    /// A window that tracks `percentile` (0-100).
    pub fn new(percentile: f64) -> Self {
        LatencyWindow {
            percentile,
            ring: Mutex::new(Ring {
                samples: Vec::with_capacity(WINDOW),
                pos: 0,
                since: 0,
            }),
            cached_us: AtomicU64::new(0),
        }
    }

    /// Adds one latency.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.samples.len() < WINDOW {
            ring.samples.push(us);
        } else {
            let pos = ring.pos;
            ring.samples[pos] = us;
            ring.pos = (pos + 1) % WINDOW;
        }
        ring.since += 1;
        if ring.since >= RECOMPUTE_EVERY && ring.samples.len() >= MIN_SAMPLES {
            ring.since = 0;
            let mut sorted = ring.samples.clone();
            drop(ring);
            let rank = ((self.percentile / 100.0) * (sorted.len() - 1) as f64).round() as usize;
            let (_, v, _) = sorted.select_nth_unstable(rank);
            self.cached_us
                .store(u64::from(*v).max(1), Ordering::Relaxed);
        }
    }

    /// The percentile of the recent latencies, once enough are known.
    pub fn current(&self) -> Option<Duration> {
        match self.cached_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_percentile() {
        let w = LatencyWindow::new(90.0);
        assert_eq!(w.current(), None);
        for i in 1..=100u64 {
            w.record(Duration::from_millis(i));
        }
        let p = w.current().unwrap();
        assert!(
            p >= Duration::from_millis(85) && p <= Duration::from_millis(95),
            "{p:?}"
        );
    }
}
