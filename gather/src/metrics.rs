//! Prometheus metrics of mp-gather: calls answered, and per shard the leaf
//! latency, outcomes by status code, hedges sent and won.
//!
//! Every handle the data path touches is created at startup and kept next to
//! its shard, so recording is a few atomic adds: no label lookup, no lock.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 250 µs to ~16 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// The metric families; register once, then take per-shard handles.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<Labels, Counter>,
    request_codes: [Counter; 17],
    request_seconds: Histogram,
    leaf_calls: Family<Labels, Counter>,
    leaf_seconds: HistogramFamily,
    hedges_sent: Family<Labels, Counter>,
    hedges_won: Family<Labels, Counter>,
    /// Hedges the budget did not allow.
    pub hedges_denied: Counter,
    /// Topologies in use so far: 1 at startup, one more per shards-file change
    /// applied.
    topology_generation: Gauge,
}

/// The handles one shard records into.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    /// Latency of the shard's outcome (answer or failure), seconds.
    pub latency: Histogram,
    /// Outcomes, indexed by gRPC status code (0 = OK).
    pub outcomes: [Counter; 17],
    /// Hedged calls sent.
    pub hedges_sent: Counter,
    /// Hedged calls whose answer was used.
    pub hedges_won: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<Labels, Counter>::default();
        let request_codes = std::array::from_fn(|code| {
            let name = crate::grpc::code_name(tonic::Code::from_i32(code as i32));
            requests
                .get_or_create(&vec![("code", name.to_string())])
                .clone()
        });
        Metrics {
            requests,
            request_codes,
            request_seconds: latency_histogram(),
            leaf_calls: Family::default(),
            leaf_seconds: Family::new_with_constructor(latency_histogram),
            hedges_sent: Family::default(),
            hedges_won: Family::default(),
            hedges_denied: Counter::default(),
            topology_generation: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every family in `registry` under the `mp_gather` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("mp_gather");
        r.register(
            "requests",
            "Gathered calls answered, by gRPC status code",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Latency of gathered calls, fan-out to answer",
            self.request_seconds.clone(),
        );
        r.register(
            "leaf_calls",
            "Shard outcomes, by shard and gRPC status code",
            self.leaf_calls.clone(),
        );
        r.register(
            "leaf_duration_seconds",
            "Latency of each shard's outcome, by shard",
            self.leaf_seconds.clone(),
        );
        r.register(
            "hedges_sent",
            "Hedged (second) calls sent, by shard",
            self.hedges_sent.clone(),
        );
        r.register(
            "hedges_won",
            "Hedged calls whose answer was used, by shard",
            self.hedges_won.clone(),
        );
        r.register(
            "hedges_denied",
            "Hedges not sent because the hedge budget was spent",
            self.hedges_denied.clone(),
        );
        r.register(
            "topology_generation",
            "Topologies used so far: 1 at startup, +1 per change of the shards file applied",
            self.topology_generation.clone(),
        );
        self.topology_generation.set(1);
    }

    /// Counts one more topology in use; returns its generation.
    pub fn topology_swapped(&self) -> u64 {
        (self.topology_generation.inc() + 1) as u64
    }

    /// The handles of shard `index`.
    pub fn shard(&self, index: usize) -> ShardMetrics {
        let shard = index.to_string();
        let label = || vec![("shard", shard.clone())];
        ShardMetrics {
            latency: self.leaf_seconds.get_or_create(&label()).clone(),
            outcomes: std::array::from_fn(|code| {
                let name = crate::grpc::code_name(tonic::Code::from_i32(code as i32));
                self.leaf_calls
                    .get_or_create(&vec![("shard", shard.clone()), ("code", name.to_string())])
                    .clone()
            }),
            hedges_sent: self.hedges_sent.get_or_create(&label()).clone(),
            hedges_won: self.hedges_won.get_or_create(&label()).clone(),
        }
    }

    /// Records one answered call.
    pub fn request(&self, code: tonic::Code, seconds: f64) {
        self.request_codes[(code as usize).min(16)].inc();
        self.request_seconds.observe(seconds);
    }
}
