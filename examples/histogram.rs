//! # histogram: scatter/gather declared in code
//!
//! Metaparticle's fourth chapter: ten leaves each draw 100 samples of a
//! Gaussian, mp-gather sends every request to all ten, and a merger counts
//! the samples into a 10-bin histogram. One program holds the leaf, the
//! merger and the topology; running it deploys the 12 processes (10 leaves,
//! the merger, mp-gather) and the runner starts this same executable as each
//! leaf and as the merger.
//!
//! ```console
//! $ cargo build --release --bins --examples
//! $ target/release/examples/histogram             # deploy (or update)
//! $ target/release/examples/histogram call        # or: mp call histogram-service
//! [0,6,40,155,271,312,158,47,10,1]
//! $ target/release/examples/histogram delete
//! ```
//!
//! The same service from separate programs (and from Python) is
//! `mp deploy --pattern scatter` with `histogram-leaf` and `histogram-merge`.

use mp_examples::histogram::{count, sample, BINS, SAMPLES};
use serde_json::Value;

/// One leaf: 100 samples (this leaf's shard is `mp_sdk::env().shard`; every
/// shard samples the same distribution here).
async fn leaf(_request: Value) -> mp_sdk::Result<Vec<f64>> {
    let mut rng = rand::rng();
    Ok((0..SAMPLES).map(|_| sample(&mut rng)).collect())
}

/// The merger: every leaf's samples counted into 10 bins of width 20. A
/// failed leaf fails the call (mp-gather's default policy already requires
/// all of them).
async fn merge(merge: mp_sdk::Merge<Vec<f64>>) -> mp_sdk::Result<[u64; BINS]> {
    let mut counts = [0; BINS];
    for samples in merge.all()? {
        count(&mut counts, samples);
    }
    Ok(counts)
}

fn main() -> std::process::ExitCode {
    mp_sdk::Service::new("histogram-service")
        .scatter(10, mp_sdk::json(leaf), mp_sdk::json_merger(merge))
        .run()
}
