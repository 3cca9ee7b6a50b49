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
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::shutdown::{Drain, Watch};
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
    let tls = cfg.tls.clone();
    serve_connections(
        listener,
        tls,
        cfg.grace,
        shutdown,
        move |io, peer, watch| {
            let builder = builder.clone();
            let service = service.clone();
            async move {
                let conn = builder.serve_connection(TokioIo::new(io), service);
                if let Err(e) = watch.watch(conn, |c| c.graceful_shutdown()).await {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
            }
        },
    )
    .await;
}

/// Accepts connections on `listener` until `shutdown` resolves (with the TLS
/// handshake when `tls` is given) and runs `conn` on each, in a task of its
/// own, with a [`Watch`] of the drain; then stops accepting, signals every
/// watch and waits for the connections to finish, at most `grace`.
pub async fn serve_connections<F, Fut>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
    conn: F,
) where
    F: Fn(Io, SocketAddr, Watch) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let drain = Drain::new();
    accept_until(&listener, shutdown, |tcp, peer| {
        let watch = drain.watch();
        let tls = tls.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let io = match tls {
                None => Io::Plain(tcp),
                Some(tls) => match tls_accept(tls, tcp).await {
                    Ok(io) => io,
                    Err(e) => return debug!(%peer, error = %e, "TLS handshake failed"),
                },
            };
            conn(io, peer, watch).await;
        });
    })
    .await;
    drop(listener);
    info!(?grace, "stopped accepting; draining open connections");
    match drain.drain(grace).await {
        Ok(()) => info!("all connections drained"),
        Err(e) => warn!("{e}; closing them"),
    }
}

/// Accepts connections on `listener` until `shutdown` resolves, handing each
/// (with TCP_NODELAY set) to `on_conn`. Accept errors (EMFILE and friends)
/// are logged and waited out briefly rather than spun on.
pub async fn accept_until(
    listener: &TcpListener,
    shutdown: impl Future<Output = ()>,
    mut on_conn: impl FnMut(TcpStream, SocketAddr),
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.as_mut() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Small gRPC frames must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        on_conn(stream, peer);
    }
}

/// The TLS handshake of an accepted connection, bounded: a client that never
/// finishes it must not hold a connection (and the drain) forever.
pub async fn tls_accept(tls: Arc<rustls::ServerConfig>, tcp: TcpStream) -> std::io::Result<Io> {
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(tcp);
    match tokio::time::timeout(Duration::from_secs(10), accept).await {
        Ok(Ok(s)) => Ok(Io::ServerTls(Box::new(s))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}
