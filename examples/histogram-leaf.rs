//! # histogram-leaf: one leaf of the histogram scatter/gather
//!
//! Every leaf draws 100 samples of a Gaussian (mean 100, sigma 25, drawn
//! again when beyond [0, 200), so none is lost to the histogram's range) and
//! replies them as a JSON array of numbers; `histogram-merge` counts what all
//! leaves sent. It ignores the request body, so a bare call works:
//!
//! ```console
//! $ MP_PORT=7001 cargo run --example histogram-leaf
//! $ grpcurl -plaintext 127.0.0.1:7001 mp.v1.Handler/Handle
//! ```

use mp_examples::histogram::{sample, SAMPLES};
use serde_json::Value;

async fn leaf(_request: Value) -> mp_sdk::Result<Vec<f64>> {
    let mut rng = rand::rng();
    Ok((0..SAMPLES).map(|_| sample(&mut rng)).collect())
}

#[tokio::main]
async fn main() -> Result<(), mp_sdk::ServeError> {
    mp_sdk::serve(mp_sdk::json(leaf)).await
}
