//! `mp-lb`: a round-robin gRPC load balancer and transparent HTTP/2 proxy.
//!
//! # Layout
//! - [`cli`]: the command line.
//! - [`relay`]: the data path: HTTP/2 frames relayed from each client
//!   connection to backend connections it owns, calls placed by the pool.
//! - [`methods`]: per-method metrics, bounded.
//! - [`run`]: wires discovery, the pool, the relay and the admin server
//!   together, until shutdown.
//!
//! A call flows: client -> [`relay`] (decodes the request head, asks
//! [`mp_sidecar::pool::Pool::pick`] for the next healthy endpoint in round
//! robin) -> a backend connection of that client connection -> backend; the
//! response frames come back the same way, and the call's `grpc-status`
//! feeds the metrics and the endpoint's passive health.

pub mod cli;
pub mod methods;
pub mod relay;

use std::future::Future;
use std::time::Duration;

use mp_sidecar::addr::Resolver;
use mp_sidecar::admin::{self, AdminState};
use mp_sidecar::discovery::{self, DiscoveryConfig, Source};
use mp_sidecar::health::HealthConfig;
use mp_sidecar::metrics::{CallMetrics, PoolMetrics};
use mp_sidecar::pool::{Pool, PoolConfig};
use mp_sidecar::server::ServerConfig;
use mp_sidecar::tls::{self, ClientTls, TlsError};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::info;

pub use cli::Args;

/// The pool configuration `args` ask for.
pub fn pool_config(args: &Args) -> Result<PoolConfig, TlsError> {
    let tls = match &args.backend_tls_ca {
        Some(ca) => Some(ClientTls::new(ca, &args.backend_tls_name)?),
        None => None,
    };
    Ok(PoolConfig {
        // The pool's own connections only carry health checks.
        conns_per_endpoint: 1,
        connect_timeout: args.connect_timeout,
        health: HealthConfig {
            interval: (!args.health_interval.is_zero()).then_some(args.health_interval),
            timeout: args.health_timeout,
            unhealthy_threshold: args.unhealthy_threshold,
            healthy_threshold: args.healthy_threshold,
        },
        eject_after_unavailable: args.eject_after,
        tls,
        ..PoolConfig::default()
    })
}

/// The discovery sources `args` name.
pub fn sources(args: &Args) -> Vec<Source> {
    let mut v: Vec<Source> = args.backends.iter().cloned().map(Source::Static).collect();
    v.extend(args.backends_file.iter().cloned().map(Source::File));
    v.extend(args.dns.iter().cloned().map(Source::Dns));
    v
}

/// Runs the load balancer on `listener` (and the admin server on `admin`,
/// when given) until `shutdown` resolves; then drains within `args.grace`.
/// Fails at once, before serving, when the TLS files cannot be used.
pub async fn run(
    args: Args,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TlsError> {
    let pool_cfg = pool_config(&args)?;
    let server_tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
        _ => None,
    };
    let mut registry = Registry::with_prefix("mp_lb");
    let metrics = PoolMetrics::register(&mut registry);
    let methods = CallMetrics::register(registry.sub_registry_with_prefix("method"), "method");
    let state = AdminState::new(registry);

    let endpoints = discovery::spawn(
        sources(&args),
        Resolver::system(),
        DiscoveryConfig {
            dns_interval: args.dns_interval,
            ..DiscoveryConfig::default()
        },
    );
    let pool = Pool::new("backends", pool_cfg, metrics.clone(), endpoints);
    let relay = relay::Relay::new(
        pool.clone(),
        metrics.endpoint("none"),
        methods::Methods::new(methods),
        relay::RelayConfig {
            server: ServerConfig {
                max_concurrent_streams: args.max_concurrent_streams,
                grace: args.grace,
                tls: server_tls,
                ..ServerConfig::default()
            },
            connect_timeout: args.connect_timeout,
            backend_tls: pool.config().tls.clone(),
            keepalive: args.keepalive,
            conns_per_endpoint: args.pool_size,
        },
    );

    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(admin) = admin {
        let state = state.clone();
        tokio::spawn(async move {
            let _ = admin::serve(admin, state, async {
                let _ = admin_stopped.await;
            })
            .await;
        });
    }
    // Ready while some backend takes traffic.
    let ready = {
        let (state, pool) = (state.clone(), pool.clone());
        tokio::spawn(async move {
            loop {
                state.set_ready(pool.available() > 0);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let st = state.clone();
    let shutdown = async move {
        shutdown.await;
        ready.abort();
        st.set_ready(false);
    };
    relay.serve(listener, shutdown).await;
    let _ = admin_stop.send(());
    info!("stopped");
    Ok(())
}
