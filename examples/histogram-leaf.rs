//! # histogram-leaf: one leaf of the histogram scatter/gather
//!
//! Every leaf draws 100 samples of a Gaussian (mean 100, sigma 25) and
//! replies them as a JSON array of numbers; `histogram-merge` counts what all
//! leaves sent. It ignores the request body, so a bare call works:
//!
//! ```console
//! $ MP_PORT=7001 cargo run --example histogram-leaf
//! $ grpcurl -plaintext 127.0.0.1:7001 mp.v1.Handler/Handle
//! ```

use mp_examples::histogram::{MEAN, SAMPLES, SIGMA};
use rand_distr::{Distribution, Normal};
use serde_json::Value;

async fn leaf(_request: Value) -> mp_sdk::Result<Vec<f64>> {
    let normal = Normal::new(MEAN, SIGMA).expect("sigma is finite and positive");
    let mut rng = rand::rng();
    Ok((0..SAMPLES).map(|_| normal.sample(&mut rng)).collect())
}

#[tokio::main]
async fn main() -> Result<(), mp_sdk::ServeError> {
    mp_sdk::serve(mp_sdk::json(leaf)).await
}
