//! The admin HTTP server: `/metrics` (Prometheus text), `/ready`, `/live`.
//!
//! It speaks HTTP/1.1 and h2c on one port, so `curl` and Prometheus work
//! as-is. Bind it to loopback unless it must be scraped from elsewhere: it has
//! no authentication.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// The content type of the Prometheus/OpenMetrics text format that
/// `prometheus_client` writes.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin server shows: a metrics registry and a readiness flag.
///
/// Cheap to clone; clones share the registry and the flag. Register metrics
/// with [`AdminState::registry`] (usually at startup; registering later is fine
/// too), flip readiness with [`AdminState::set_ready`].
#[derive(Clone, Debug)]
pub struct AdminState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    // A mutex, not a lock-free structure: it is taken at registration and once
    // per scrape, never on the data path (metrics themselves are atomics).
    registry: Mutex<Registry>,
    ready: AtomicBool,
}

impl AdminState {
    /// A state showing `registry`, not ready yet.
    pub fn new(registry: Registry) -> Self {
        AdminState {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                ready: AtomicBool::new(false),
            }),
        }
    }

    /// The registry, locked: register metrics through it. Do not hold the guard
    /// across an `.await`.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves a registry that is still
        // usable; keep serving it.
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Sets whether `/ready` answers 200 (true) or 503 (false).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Whether `/ready` currently answers 200.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// The registry encoded in the Prometheus text format.
    pub fn encode_metrics(&self) -> String {
        let mut out = String::new();
        // Encoding into a String only fails if a metric's own Display fails.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry()) {
            warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for AdminState {
    fn default() -> Self {
        AdminState::new(Registry::default())
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves, then
/// stops accepting and closes open admin connections.
///
/// - `GET /metrics`: the registry in Prometheus text format.
/// - `GET /ready`: 200 `ready` when the ready flag is set, else 503 `not ready`.
/// - `GET /live`: 200 `live` while the process serves at all.
/// - anything else: 404 (405 for a known path with a method other than GET/HEAD).
///
/// Returns an error only if accepting fails in a way that will not recover.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.as_mut() => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Per-connection errors (e.g. ECONNABORTED) and fd
                    // exhaustion are transient: back off briefly, keep going.
                    warn!(error = %e, "admin: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req)) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    // Scrapes are short; nothing worth draining.
    conns.shutdown().await;
    Ok(())
}

fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/ready" | "/live");
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /ready or /live\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match path {
        "/metrics" => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)
            .body(Full::new(Bytes::from(state.encode_metrics())))
            .expect("valid response"),
        "/ready" if state.is_ready() => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::OK, "live\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid response")
}

#[cfg(test)]
mod tests;
