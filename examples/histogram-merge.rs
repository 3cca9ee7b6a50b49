//! # histogram-merge: the merger of the histogram scatter/gather
//!
//! Receives every leaf's samples (a JSON array of numbers each) and replies a
//! histogram: a JSON array of 10 counts, bins of width 20 over [0, 200).
//! Samples outside that range are dropped (the original example indexed past
//! the last bin with them). Leaves that failed are left out and logged: a
//! histogram of the shards that answered beats no answer. Only when no leaf
//! answered at all is the merge an error.
//!
//! ```console
//! $ MP_PORT=7002 cargo run --example histogram-merge
//! $ grpcurl -plaintext -d '{"leaves":[{"shard":0,"reply":{"body":{"json":[1,25,250]}}}]}' \
//!     127.0.0.1:7002 mp.v1.Merger/Merge
//! ```

use mp_examples::histogram::{count, BINS};
use mp_sdk::{Error, Merge};

async fn merge(merge: Merge<Vec<f64>>) -> mp_sdk::Result<[u64; BINS]> {
    for failed in merge.failures() {
        if let Err(e) = &failed.result {
            tracing::warn!(shard = failed.shard, error = %e, "leaving out a failed leaf");
        }
    }
    if !merge.leaves.is_empty() && merge.replies().next().is_none() {
        // Nothing to count: an all-zero histogram would be a lie.
        let first = merge.all().expect_err("every leaf failed");
        return Err(Error::new(
            first.code(),
            format!("no leaf answered; first failure: {}", first.message()),
        ));
    }
    let mut counts = [0; BINS];
    for samples in merge.replies() {
        count(&mut counts, samples.iter().copied());
    }
    Ok(counts)
}

#[tokio::main]
async fn main() -> Result<(), mp_sdk::ServeError> {
    mp_sdk::serve_merger(mp_sdk::json_merger(merge)).await
}
