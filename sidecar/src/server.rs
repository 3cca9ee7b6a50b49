//! Serving HTTP/2 (h2c) on a bound listener until shutdown, then draining the
//! open connections within a grace period.
//!
//! HTTP/1.1 clients are served too (hyper's auto-detection), so that the
//! service can tell them plainly that this port speaks HTTP/2; anything that
//! is neither gets its connection closed, and the server goes on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body as HttpBody;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::shutdown::Drain;
use crate::tls::Io;

/// HTTP/2 server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Concurrent streams a client may open on one connection.
    pub max_concurrent_streams: u32,
    /// Initial per-stream flow-control window (bytes).
    pub stream_window: u32,
    /// Initial connection flow-control window (bytes).
    pub conn_window: u32,
    /// Largest frame we accept (bytes).
    pub max_frame_size: u32,
    /// Largest header block we accept (bytes); larger ones are refused.
    pub max_header_list_size: u32,
    /// How long open connections may take to finish after shutdown starts.
    pub grace: Duration,
    /// Serve TLS (ALPN h2) with this configuration; `None`: h2c.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_concurrent_streams: 1024,
            stream_window: 2 * 1024 * 1024,
            conn_window: 8 * 1024 * 1024,
            max_frame_size: 64 * 1024,
            max_header_list_size: 16 * 1024,
            grace: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Serves `service` on `listener` until `shutdown` resolves; then stops
/// accepting, asks every connection to finish (HTTP/2 GOAWAY) and waits for
/// them, at most `cfg.grace`. Returns when all are done or the grace is over.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .initial_stream_window_size(cfg.stream_window)
        .initial_connection_window_size(cfg.conn_window)
        .max_frame_size(cfg.max_frame_size)
        .max_header_list_size(cfg.max_header_list_size);
    let builder = Arc::new(builder);
    let drain = Drain::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.as_mut() => break,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends pass; do not spin on them.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Small gRPC frames must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let watch = drain.watch();
        let builder = builder.clone();
        let service = service.clone();
        let tls = cfg.tls.clone();
        tokio::spawn(async move {
            let io = match tls {
                None => Io::Plain(stream),
                Some(tls) => {
                    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
                    // A client that never finishes its handshake must not
                    // hold a connection (and the drain) forever.
                    match tokio::time::timeout(Duration::from_secs(10), accept).await {
                        Ok(Ok(s)) => Io::ServerTls(Box::new(s)),
                        Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => return debug!(%peer, "TLS handshake timed out"),
                    }
                }
            };
            let conn = builder.serve_connection(TokioIo::new(io), service);
            if let Err(e) = watch.watch(conn, |c| c.graceful_shutdown()).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    info!(grace = ?cfg.grace, "stopped accepting; draining open connections");
    match drain.drain(cfg.grace).await {
        Ok(()) => info!("all connections drained"),
        Err(e) => warn!("{e}; closing them"),
    }
}
