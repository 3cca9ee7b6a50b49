//! # hello: the smallest mp handler
//!
//! It answers every request with the request itself and the name of the
//! server that answered. Run a few replicas behind a load balancer and the
//! `server` field shows the calls taking turns.
//!
//! ```console
//! $ MP_PORT=7000 cargo run --example hello
//! $ grpcurl -plaintext -d '{"body":{"json":{"foo":"bar"}}}' 127.0.0.1:7000 mp.v1.Handler/Handle
//! {
//!   "body": {
//!     "json": {
//!       "request": { "foo": "bar" },
//!       "server": "myhost:7000"
//!     }
//!   }
//! }
//! ```

use serde_json::{json, Value};

/// The handler. It takes the request body as JSON (`Value` accepts any JSON,
/// your own `#[derive(Deserialize)]` type would accept only that shape) and
/// returns a JSON reply. Returning `Err(mp_sdk::Error::...)` instead would
/// give the caller that gRPC status.
async fn hello(request: Value) -> mp_sdk::Result<Value> {
    // `mp_sdk::env()` tells the process where it stands: service, role,
    // shard, port. Host name and port tell replicas apart, even on one host.
    let env = mp_sdk::env();
    let port = env.port.unwrap_or_default();
    Ok(json!({
        "request": request,
        "server": format!("{}:{port}", env.hostname),
    }))
}

/// Serving takes one line: listen on `MP_PORT`, answer `mp.v1.Handler`, the
/// gRPC health check and reflection, and on Ctrl-C or SIGTERM finish the calls
/// in flight before exiting.
#[tokio::main]
async fn main() -> Result<(), mp_sdk::ServeError> {
    mp_sdk::serve(mp_sdk::json(hello)).await
}
