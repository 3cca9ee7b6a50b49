//! mp-gather: the scatter/gather front of mp. It fans each unary gRPC call out
//! to one replica of every shard, applies a failure policy and deadlines,
//! hedges slow shards, and merges the outcomes with the user's
//! `mp.v1.Merger` or a built-in reducer.
//!
//! # Layout
//! - [`config`]: the command line (clap) and its value parsers.
//! - [`gather`]: the core: fan-out, policy, deadlines, hedging.
//! - [`call`]: one call as the core sees it (what every leaf call shares,
//!   what each shard produced) and how failures read in statuses.
//! - [`merge`]: the merger call and the built-in reducers (`json-array`,
//!   `concat`, `first`).
//! - [`shard`]: shards, replicas (one pooled HTTP/2 channel each), latency
//!   windows.
//! - [`topology`]: the shards and merger in use, and the shards file that
//!   changes them while mp-gather runs.
//! - [`hedge`]: the hedge budget.
//! - [`leaf`]: one call to a leaf: a replica from the sidecar pool, the call on a lean HTTP/2 client.
//! - [`own`]: the leaf connections a busy caller connection owns, driven by
//!   its task.
//! - [`server`]: the gather port: unary calls on the sidecar's frame-level
//!   server ([`mp_sidecar::h2server`]), health and reflection on tonic, drain.
//! - [`reflect`]: server reflection, local for mp.v1, forwarded to a leaf for
//!   other protos.
//! - [`grpc`]: the bytes codec, `grpc-timeout`, forwarded metadata.
//! - [`metrics`]: Prometheus metrics.
//!
//! A call flows: [`mp_sidecar::h2server`] -> [`gather::Gather::handle`]
//! (deadline) -> `scatter` (one future per shard, policy as outcomes arrive) ->
//! [`merge::Merge::merge`] -> the answer.

pub mod call;
pub mod config;
pub mod gather;
pub mod grpc;
pub mod hedge;
pub mod leaf;
pub mod merge;
pub mod metrics;
pub mod own;
pub mod pb;
pub mod reflect;
pub mod server;
pub mod shard;
pub mod topology;

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mp_sidecar::admin::AdminState;
use mp_sidecar::metrics::PoolMetrics;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::config::{Args, HedgeAfter, Policy};
use crate::gather::Gather;
use crate::hedge::Budget;
use crate::metrics::Metrics;
use crate::reflect::Reflection;
use crate::server::GatherService;
use crate::topology::{Builder, TopologySpec};

/// Why mp-gather cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is inconsistent.
    #[error("{0}")]
    Config(String),
    /// An address is not usable as an endpoint.
    #[error("{addr:?}: {source}")]
    Endpoint {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: shard::ReplicaError,
    },
    /// A built-in descriptor set does not decode (a build problem).
    #[error("cannot load the reflection descriptors")]
    Descriptors(#[from] prost::DecodeError),
}

/// Builds the gather (shards, pools, merge) from the command line and the
/// topology it starts with (see [`topology::from_args`]). The shard pools
/// start connecting in the background. Needs a tokio runtime.
pub fn build(
    args: &Args,
    spec: &TopologySpec,
    metrics: Metrics,
    pool_metrics: &PoolMetrics,
) -> Result<(Gather, Builder), Error> {
    let percentile = match args.hedge_after {
        Some(HedgeAfter::Percentile(p)) => p,
        _ => 95.0,
    };
    let builder = Builder {
        policy: args.policy,
        reducer: args.reducer,
        percentile,
        metrics: metrics.clone(),
        pool_metrics: pool_metrics.clone(),
        resolver: match args.dns_server {
            Some(server) => mp_sidecar::addr::Resolver::with_nameserver(server),
            None => mp_sidecar::addr::Resolver::system(),
        },
        dns_interval: args.dns_interval,
    };
    let topology = builder.build(spec)?;
    let gather = Gather {
        topology: ArcSwap::from_pointee(topology),
        policy: args.policy,
        hedge: args.hedge_after,
        budget: Budget::new(args.hedge_budget),
        // Longer than a year is forever; it keeps deadline arithmetic in range.
        leaf_timeout: args
            .leaf_timeout
            .min(std::time::Duration::from_secs(365 * 86_400)),
        metrics,
    };
    Ok((gather, builder))
}

/// Serves mp-gather on `listener` (and the admin endpoints on `admin`) until
/// `shutdown` resolves, then drains for at most `--grace`.
pub async fn run(
    args: Args,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    // Per-replica request, status, latency and health metrics of the pools.
    let pool_metrics = PoolMetrics::register(registry.sub_registry_with_prefix("mp_gather_leaf"));
    // With a shards file, the text read is what the file watcher compares
    // with: it is read once, so a change in between is not missed.
    let (spec, applied) = match &args.shards_file {
        Some(path) => topology::read(path).map_err(Error::Config)?,
        None => (
            topology::from_args(&args).map_err(Error::Config)?,
            String::new(),
        ),
    };
    let (gather, builder) = build(&args, &spec, metrics, &pool_metrics)?;
    let gather = Arc::new(gather);
    // With a shards file, a task follows it; it ends with the server.
    let follow = args.shards_file.as_ref().map(|path| {
        info!(file = %path.display(), "following the shards file");
        let gather = gather.clone();
        tokio::spawn(topology::watch(path.clone(), applied, builder, move |t| {
            gather.swap(t)
        }))
    });

    let reporter = HealthReporter::new();
    reporter
        .set_service_status(mp_proto::names::HANDLER, ServingStatus::Serving)
        .await;
    let health = tonic_health::pb::health_server::HealthServer::new(
        HealthService::from_health_reporter(reporter.clone()),
    );
    // Reflection questions about other protos go to shard 0's first replica
    // of the current topology.
    let reflection = Reflection::new(
        &[
            mp_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ],
        &[
            mp_proto::names::HANDLER,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ],
        None,
    )?
    .following(gather.clone());
    let service = GatherService::new(gather.clone(), health, &reflection);

    let state = AdminState::new(registry);
    // Ready while enough shards have a replica to call for the policy to
    // succeed (all of them, K of them, or one), and not draining.
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readiness = {
        let (state, gather, draining) = (state.clone(), gather.clone(), draining.clone());
        tokio::spawn(async move {
            loop {
                let topology = gather.topology.load();
                let needed = match gather.policy {
                    Policy::All => topology.shards.len(),
                    Policy::Quorum(k) => k,
                    Policy::BestEffort => 1,
                };
                let up = topology
                    .shards
                    .iter()
                    .filter(|s| s.pool.available() > 0)
                    .count();
                let stopping = draining.load(std::sync::atomic::Ordering::Relaxed);
                state.set_ready(up >= needed && !stopping);
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };
    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
    let admin_task = admin.map(|l| {
        let addr = l.local_addr().ok();
        info!(?addr, "admin endpoints (/metrics, /ready, /live)");
        let state = state.clone();
        let mut stopped = admin_stopped.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = mp_sidecar::admin::serve(l, state, stop).await {
                warn!(error = %e, "admin server failed");
            }
        })
    });

    info!(
        addr = ?listener.local_addr().ok(),
        shards = spec.shards.len(),
        policy = %args.policy,
        "mp-gather serving"
    );
    let drain = {
        let state = state.clone();
        let mut reporter = reporter.clone();
        async move {
            shutdown.await;
            // Tell load balancers and probes first, then drain.
            draining.store(true, std::sync::atomic::Ordering::Relaxed);
            state.set_ready(false);
            for name in ["", mp_proto::names::HANDLER] {
                reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
            // Then forget the statuses, as mp-sdk does: that ends every open
            // Watch stream (after it delivered NOT_SERVING), which would
            // otherwise hold its connection, and so the drain, open for the
            // whole grace period.
            for name in ["", mp_proto::names::HANDLER] {
                reporter.clear_service_status(name).await;
            }
        }
    };
    server::serve(listener, service, drain, args.grace).await;
    readiness.abort();
    if let Some(f) = follow {
        f.abort();
    }
    let _ = stop_admin.send(true);
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    Ok(())
}
