//! Data-plane metrics (Prometheus, via `prometheus_client`): per endpoint
//! requests, responses by gRPC status, a latency histogram, health and
//! connections.
//!
//! Handles for an endpoint are looked up once, when the endpoint appears; the
//! request path then only touches atomics. The latency histogram is our own
//! lock-free one: `prometheus_client`'s takes a lock on every observation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::grpc::code;

/// Latency buckets (seconds): 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram of durations with fixed buckets, updated with atomics only.
#[derive(Clone, Debug)]
pub struct Histogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// An empty histogram with the given upper bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            inner: Arc::new(HistogramInner {
                bounds,
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Records one observation.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .inner
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.inner.bounds.len());
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The number of observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.inner.counts.len());
        for (i, c) in self.inner.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let bound = self.inner.bounds.get(i).copied().unwrap_or(f64::MAX);
            buckets.push((bound, cumulative));
        }
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, cumulative, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Label sets: built once per endpoint or method, never on the call path.
type Labels = Vec<(&'static str, String)>;

/// Calls counted by one label (`endpoint` or `method`): requests, responses
/// by gRPC status, latency. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CallMetrics {
    key: &'static str,
    requests: Family<Labels, Counter>,
    responses: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
}

impl CallMetrics {
    /// Registers `requests_total`, `responses_total` and
    /// `request_duration_seconds` in `registry`, labelled by `key`.
    pub fn register(registry: &mut Registry, key: &'static str) -> Self {
        let m = CallMetrics {
            key,
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::default(),
        };
        registry.register(
            "requests",
            format!("Calls sent, by {key} (`none`: answered by the proxy itself)"),
            m.requests.clone(),
        );
        registry.register(
            "responses",
            format!("Calls finished, by {key} and gRPC status (CANCELLED includes calls the client abandoned)"),
            m.responses.clone(),
        );
        registry.register(
            "request_duration_seconds",
            format!("Time from receiving a call to its last response frame, by {key}"),
            m.latency.clone(),
        );
        m
    }

    /// The handles of one label value.
    pub fn handles(&self, value: &str) -> CallHandles {
        let l: Labels = vec![(self.key, value.to_string())];
        CallHandles {
            value: value.to_string(),
            requests: self.requests.get_or_create_owned(&l),
            latency: self.latency.get_or_create_owned(&l),
            statuses: Default::default(),
            family: self.clone(),
        }
    }

    /// Removes the series of one label value.
    pub fn remove(&self, value: &str) {
        let l: Labels = vec![(self.key, value.to_string())];
        self.requests.remove(&l);
        self.latency.remove(&l);
        for c in 0..=code::MAX + 1 {
            self.responses.remove(&vec![
                (self.key, value.to_string()),
                ("grpc_code", status_label(c).to_string()),
            ]);
        }
    }
}

/// The metric families of a pool (or several pools sharing one registry):
/// calls by endpoint, endpoint health and connections. Cheap to clone.
///
/// Pools sharing these families (mp-gather's shards) may hold the same
/// endpoint at once (one leaf serving two shards, or an address one shard
/// has not dropped yet that another has just been given): its series are
/// shared, and stay until the last pool holding it removes it.
#[derive(Clone, Debug)]
pub struct PoolMetrics {
    calls: CallMetrics,
    healthy: Family<Labels, Gauge>,
    connections: Family<Labels, Gauge>,
    call_connections: Family<Labels, Gauge>,
    /// How many pools hold each endpoint (by label).
    holders: Arc<Mutex<HashMap<String, usize>>>,
}

impl PoolMetrics {
    /// Registers the families in `registry` (give it a prefix, e.g.
    /// `Registry::with_prefix("mp_lb")`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = PoolMetrics {
            calls: CallMetrics::register(registry, "endpoint"),
            healthy: Family::default(),
            connections: Family::default(),
            call_connections: Family::default(),
            holders: Default::default(),
        };
        registry.register(
            "endpoint_healthy",
            "1 when the endpoint takes traffic (connected, passing health checks, not ejected); mp-gather: in how many shards it does",
            m.healthy.clone(),
        );
        registry.register(
            "endpoint_connections",
            "Open HTTP/2 connections the pool keeps to the endpoint (they carry its health checks)",
            m.connections.clone(),
        );
        registry.register(
            "endpoint_call_connections",
            "Open HTTP/2 connections carrying calls to the endpoint (mp-lb: those of every client connection; mp-gather: its leaf client's)",
            m.call_connections.clone(),
        );
        m
    }

    /// Metrics that go nowhere (for tests and callers without a registry).
    pub fn unregistered() -> Self {
        PoolMetrics::register(&mut Registry::default())
    }

    /// The handles of one endpoint (`endpoint` is its label value), for a
    /// pool that now holds it; [`PoolMetrics::remove`] when it lets it go.
    pub fn endpoint(&self, endpoint: &str) -> EndpointMetrics {
        *self
            .holders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(endpoint.to_string())
            .or_default() += 1;
        let l: Labels = vec![("endpoint", endpoint.to_string())];
        EndpointMetrics {
            calls: self.calls.handles(endpoint),
            healthy: self.healthy.get_or_create_owned(&l),
            connections: self.connections.get_or_create_owned(&l),
            call_connections: self.call_connections.get_or_create_owned(&l),
            own_healthy: AtomicI64::new(0),
            own_connections: AtomicI64::new(0),
        }
    }

    /// A pool let the endpoint go (it left discovery): its series are
    /// removed once no other pool holds it.
    pub fn remove(&self, endpoint: &str) {
        {
            let mut holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
            match holders.get_mut(endpoint) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    return;
                }
                _ => {
                    holders.remove(endpoint);
                }
            }
        }
        let l: Labels = vec![("endpoint", endpoint.to_string())];
        self.calls.remove(endpoint);
        self.healthy.remove(&l);
        self.connections.remove(&l);
        self.call_connections.remove(&l);
    }
}

fn status_label(c: u16) -> &'static str {
    if c <= code::MAX {
        code::name(c)
    } else {
        "OTHER"
    }
}

/// The call counters of one label value; every method is a few atomic
/// operations.
#[derive(Debug)]
pub struct CallHandles {
    value: String,
    requests: Counter,
    latency: Histogram,
    /// Created on first use, so unused codes do not fill the scrape.
    statuses: [OnceLock<Counter>; code::MAX as usize + 2],
    family: CallMetrics,
}

impl CallHandles {
    /// Counts a request sent.
    #[inline]
    pub fn request(&self) {
        self.requests.inc();
    }

    /// Counts a finished call with gRPC status `code` that took `elapsed`.
    #[inline]
    pub fn response(&self, status: u16, elapsed: Duration) {
        let i = usize::from(status.min(code::MAX + 1));
        self.statuses[i]
            .get_or_init(|| {
                self.family.responses.get_or_create_owned(&vec![
                    (self.family.key, self.value.clone()),
                    ("grpc_code", status_label(status).to_string()),
                ])
            })
            .inc();
        self.latency.observe(elapsed);
    }
}

/// One endpoint's metric handles, for one pool. Where pools share an
/// endpoint's series (see [`PoolMetrics`]), each adds its own part to the
/// gauges: the health gauge counts the pools the endpoint takes traffic in,
/// the connections gauge their connections to it together.
#[derive(Debug)]
pub struct EndpointMetrics {
    calls: CallHandles,
    healthy: Gauge,
    connections: Gauge,
    call_connections: Gauge,
    /// This pool's part of `healthy` (0 or 1) and of `connections`.
    own_healthy: AtomicI64,
    own_connections: AtomicI64,
}

impl EndpointMetrics {
    /// Counts a request sent.
    #[inline]
    pub fn request(&self) {
        self.calls.request();
    }

    /// Counts a finished call with gRPC status `code` that took `elapsed`.
    #[inline]
    pub fn response(&self, status: u16, elapsed: Duration) {
        self.calls.response(status, elapsed);
    }

    /// Sets whether the endpoint takes traffic in this pool.
    pub fn set_healthy(&self, healthy: bool) {
        let now = i64::from(healthy);
        let was = self.own_healthy.swap(now, Ordering::Relaxed);
        self.healthy.inc_by(now - was);
    }

    /// Sets this pool's open connection count to the endpoint.
    pub fn set_connections(&self, n: usize) {
        let now = i64::try_from(n).unwrap_or(i64::MAX);
        let was = self.own_connections.swap(now, Ordering::Relaxed);
        self.connections.inc_by(now - was);
    }

    /// Counts one more connection carrying calls, until the guard drops.
    pub fn call_connection(&self) -> ConnectionGuard {
        self.call_connections.inc();
        ConnectionGuard(self.call_connections.clone())
    }
}

impl Drop for EndpointMetrics {
    /// This pool's parts leave the shared gauges with it.
    fn drop(&mut self) {
        self.healthy.dec_by(*self.own_healthy.get_mut());
        self.connections.dec_by(*self.own_connections.get_mut());
    }
}

/// One open connection in a gauge: counted while this lives.
#[derive(Debug)]
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_and_families_encode() {
        let mut reg = Registry::with_prefix("t");
        let m = PoolMetrics::register(&mut reg);
        let e = m.endpoint("127.0.0.1:1");
        e.request();
        e.response(0, Duration::from_micros(300));
        e.response(14, Duration::from_secs(20));
        e.set_healthy(true);
        let guard = e.call_connection();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains(r#"t_requests_total{endpoint="127.0.0.1:1"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"t_responses_total{endpoint="127.0.0.1:1",grpc_code="UNAVAILABLE"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(
                r#"t_request_duration_seconds_bucket{le="0.0005",endpoint="127.0.0.1:1"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains(r#"t_request_duration_seconds_count{endpoint="127.0.0.1:1"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"t_endpoint_healthy{endpoint="127.0.0.1:1"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"t_endpoint_call_connections{endpoint="127.0.0.1:1"} 1"#),
            "{out}"
        );
        drop(guard);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains(r#"t_endpoint_call_connections{endpoint="127.0.0.1:1"} 0"#),
            "{out}"
        );
        m.remove("127.0.0.1:1");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(!out.contains("127.0.0.1:1"), "{out}");
    }

    #[test]
    fn an_endpoint_two_pools_hold_stays_until_both_let_it_go() {
        let mut reg = Registry::with_prefix("t");
        let m = PoolMetrics::register(&mut reg);
        let text = |reg: &Registry| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, reg).unwrap();
            out
        };
        let first = m.endpoint("10.0.0.5:8080");
        first.set_healthy(true);
        first.set_connections(2);
        // Another pool (shard) is given the same address before the first
        // one has dropped it; each adds its part.
        let second = m.clone().endpoint("10.0.0.5:8080");
        second.set_healthy(true);
        second.set_connections(1);
        let out = text(&reg);
        assert!(
            out.contains(r#"t_endpoint_healthy{endpoint="10.0.0.5:8080"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"t_endpoint_connections{endpoint="10.0.0.5:8080"} 3"#),
            "{out}"
        );
        // The first pool loses it (its connection failed), then drops it:
        // the second pool's endpoint is still listed, healthy.
        first.set_healthy(false);
        // Said again (a health check's repeated verdict): no change.
        first.set_healthy(false);
        m.remove("10.0.0.5:8080");
        drop(first);
        let out = text(&reg);
        assert!(
            out.contains(r#"t_endpoint_healthy{endpoint="10.0.0.5:8080"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"t_endpoint_connections{endpoint="10.0.0.5:8080"} 1"#),
            "{out}"
        );
        m.remove("10.0.0.5:8080");
        drop(second);
        assert!(!text(&reg).contains("10.0.0.5:8080"), "{}", text(&reg));
        // Held again after it was gone: listed again.
        let again = m.endpoint("10.0.0.5:8080");
        again.set_healthy(true);
        assert!(text(&reg).contains(r#"t_endpoint_healthy{endpoint="10.0.0.5:8080"} 1"#));
    }
}
