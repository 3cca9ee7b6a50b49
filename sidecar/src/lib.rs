//! The shared data plane of `mp-lb` and `mp-gather`.
//!
//! # Layout
//! - [`telemetry`]: `tracing` set up from `RUST_LOG`.
//! - [`shutdown`]: SIGTERM/SIGINT as a future, and [`shutdown::Drain`], a bounded drain of
//!   in-flight connections.
//! - [`admin`]: the admin HTTP server (`/metrics`, `/ready`, `/live`).

pub mod admin;
pub mod shutdown;
pub mod telemetry;
