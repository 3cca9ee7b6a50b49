//! # replicated: three replicas behind a load balancer, declared in code
//!
//! Metaparticle's second chapter: the program says "spread me over 3
//! replicas", and running it deploys exactly that (3 handler processes behind
//! mp-lb, on the local runner unless `--runner docker`). The runner starts
//! this same executable in each replica, where `run()` serves the handler.
//!
//! ```console
//! $ cargo build --release --bins --examples
//! $ target/release/examples/replicated            # deploy (or update)
//! $ target/release/examples/replicated call       # or: mp call replicated
//! {"from":"replica 1 of replicated","request":{"foo":"bar"},"server":"myhost:40123"}
//! $ target/release/examples/replicated delete
//! ```

use serde_json::{json, Value};

/// Every replica answers with the request and which replica it is, so calls
/// through the load balancer show the turns.
async fn hello(request: Value) -> mp_sdk::Result<Value> {
    let env = mp_sdk::env();
    let replica = std::env::var("MP_REPLICA").unwrap_or_default();
    Ok(json!({
        "request": request,
        "from": format!("replica {replica} of {}", env.service),
        "server": format!("{}:{}", env.hostname, env.port.unwrap_or_default()),
    }))
}

fn main() -> std::process::ExitCode {
    mp_sdk::Service::new("replicated")
        .spread(3, mp_sdk::json(hello))
        .run()
}
