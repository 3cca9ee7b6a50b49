//! Write an mp handler or merger in a few lines.
//!
//! A handler answers `mp.v1.Handler/Handle`: one replica of a `spread`, one
//! leaf of a `scatter`. A merger answers `mp.v1.Merger/Merge`: it combines the
//! leaves' outcomes. This crate turns an async function into either, and
//! serves it the way every mp process is served: on `MP_PORT`, with
//! `grpc.health.v1.Health` and server reflection (so `grpcurl` works), logs,
//! and a graceful shutdown on SIGTERM.
//!
//! ```no_run
//! use serde_json::{json, Value};
//!
//! async fn hello(request: Value) -> mp_sdk::Result<Value> {
//!     Ok(json!({ "request": request, "from": mp_sdk::env().service }))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), mp_sdk::ServeError> {
//!     mp_sdk::serve(mp_sdk::json(hello)).await
//! }
//! ```
//!
//! # Layout
//! - [`handler`](mod@handler): the [`Handler`] trait; [`handler()`] and
//!   [`json()`] make one of a function.
//! - [`merger`](mod@merger): the [`Merger`] trait; [`merger()`] and
//!   [`json_merger()`], with [`Merge`] giving each leaf's reply typed.
//! - [`Error`]: what a handler returns instead of a reply; it reaches the
//!   caller as that gRPC status.
//! - [`Env`] / [`env()`]: the process's place in its topology (`MP_SERVICE`,
//!   `MP_ROLE`, `MP_SHARD`, `MP_SHARDS`, `MP_PORT`).
//! - [`Server`], [`serve()`], [`serve_on()`]: serving and shutting down.

mod env;
mod error;
pub mod handler;
pub mod merger;
mod server;
mod service;
/// Topology as code (feature `deploy`): `Service` declares a pattern and deploys itself.
#[cfg(feature = "deploy")]
pub mod topology;

pub use env::{env, Env, EnvError, DEFAULT_GRACE};
pub use error::{Error, Result};
pub use handler::{handler, json, reply_json, request_json, FnHandler, Handler, JsonHandler};
pub use merger::{json_merger, leaf_json, merger, FnMerger, JsonMerger, Leaf, Merge, Merger};
pub use server::{
    init_tracing, serve, serve_merger, serve_on, ServeError, Server, DEFAULT_MAX_MESSAGE_SIZE,
};
#[cfg(feature = "deploy")]
pub use topology::{DeployError, Service};

/// The contract crate: generated clients, descriptors, names.
pub use mp_proto as proto;
/// The contract's messages, re-exported so a handler needs no other import.
pub use mp_proto::v1::{LeafError, LeafOutcome, MergeRequest, Payload, Reply, Request};
/// gRPC status codes, for [`Error::new`].
pub use tonic::Code;
