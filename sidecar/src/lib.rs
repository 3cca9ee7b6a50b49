//! The shared data plane of `mp-lb` and `mp-gather`.
//!
//! # Layout
//! - [`telemetry`]: `tracing` set up from `RUST_LOG`.
//! - [`shutdown`]: SIGTERM/SIGINT as a future, and [`shutdown::Drain`], a bounded drain of
//!   in-flight connections.
//! - [`admin`]: the admin HTTP server (`/metrics`, `/ready`, `/live`).
//! - [`addr`]: `HOST:PORT` and name resolution without the C library.
//! - [`discovery`]: static, file and DNS sources merged into a watch of endpoint sets.
//! - [`grpc`]: status codes, `grpc-timeout`, trailers-only error responses.
//! - [`pool`]: per-endpoint HTTP/2 connection pools, round robin, passive ejection; [`health`]:
//!   active grpc.health.v1 checks; [`body`]: the body type the pool sends.
//! - [`server`]: an HTTP/2 server loop with a bounded drain on shutdown.
//! - [`metrics`]: per-endpoint Prometheus metrics with a lock-free histogram.
//! - [`tls`]: rustls server/client configurations (ALPN h2) and a plain-or-TLS connection type.
//! - [`wire`], [`hpack`], [`side`]: the HTTP/2 frame format, header compression and one
//!   end of a connection, for `mp-lb`'s frame-level relay.
//! - [`h2client`]: a lean HTTP/2 client for unary gRPC calls on the same frame code;
//!   [`h2server`]: a server that answers unary gRPC calls inside the connection's task.
//! - [`runtime`]: the tokio runtime sized by `--threads`.
//! - [`duration`]: `250ms`/`2s` durations for command-line flags.

pub mod addr;
pub mod admin;
pub mod body;
mod callset;
pub mod discovery;
pub mod duration;
pub mod grpc;
pub mod h2client;
pub mod h2server;
pub mod health;
pub mod hpack;
pub mod huffman;
pub mod metrics;
pub mod pool;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod side;
pub mod telemetry;
pub mod tls;
pub mod wire;
