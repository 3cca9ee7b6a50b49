//! The topology: the shards and the merger a call is scattered over, and the
//! shards file that can change it while mp-gather runs (`--shards-file`).
//!
//! A [`Topology`] is immutable; the gather (`crate::gather::Gather`) holds the current one
//! behind an `ArcSwap`. A call loads it once (one atomic load and a reference
//! count) and keeps it to the end, so a swap affects new calls only and calls
//! in flight finish on the shards they started with. The old topology, its
//! pools and their connections go away when its last call is done.
//!
//! # The shards file
//! ```text
//! # One line per shard, in shard order: the shard's replicas, comma-separated.
//! 127.0.0.1:9001
//! 127.0.0.1:9002,127.0.0.1:9003
//! # Optional: the merger (mp.v1.Merger); without it, the reducer applies.
//! merge 127.0.0.1:9100
//! ```
//! [`watch`] re-reads the file when it changes. A file that does not parse
//! keeps the last good topology (with a warning in the log); a good one is
//! built (its pools start connecting), given a moment to connect, then swapped
//! in. Writers should replace the file atomically (write a temporary file and
//! rename it), so that a half-written file is never read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mp_sidecar::addr::{HostPort, Resolver};
use mp_sidecar::metrics::PoolMetrics;
use tracing::{debug, info, warn};

use crate::config::{self, Args, Policy, ShardSpec};
use crate::merge::{Merge, MergerLink};
use crate::metrics::Metrics;
use crate::shard::{Replica, ReplicaError, Shard};
use crate::Error;

/// How often the shards file is looked at.
pub const FILE_INTERVAL: Duration = Duration::from_millis(250);
/// How long a new topology's shards get to connect before it is swapped in.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// The shards and merger calls are scattered over.
#[derive(Debug)]
pub struct Topology {
    /// The shards, in order.
    pub shards: Box<[Shard]>,
    /// How outcomes become one answer.
    pub merge: Merge,
    /// Shard 0's first replica, which reflection questions about other
    /// protos are forwarded to (connected on first use).
    pub reflection: Option<tonic::transport::Channel>,
}

/// What a topology is made of, as given on the command line or in a shards
/// file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologySpec {
    /// The shards in order, at least one.
    pub shards: Vec<ShardSpec>,
    /// `HOST:PORT` of the merger, if any.
    pub merge: Option<String>,
}

/// Parses a shards file: one shard per line (its replicas comma-separated),
/// an optional `merge HOST:PORT` line, `#` comments and blank lines. The error
/// names the line.
pub fn parse(text: &str) -> Result<TopologySpec, String> {
    let mut shards = Vec::new();
    let mut merge = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", n + 1);
        if let Some(rest) = line.strip_prefix("merge") {
            if rest.is_empty() || rest.starts_with(char::is_whitespace) {
                let addr = rest.trim();
                if addr.is_empty() {
                    return Err(at("`merge` needs the merger's HOST:PORT".into()));
                }
                if merge.is_some() {
                    return Err(at("a second `merge` line; give one merger".into()));
                }
                config::check_host_port(addr).map_err(at)?;
                merge = Some(addr.to_string());
                continue;
            }
        }
        let replicas: Vec<&str> = line.split(',').map(str::trim).collect();
        if replicas.iter().any(|r| r.is_empty()) {
            return Err(at(format!("{line:?} has an empty replica address")));
        }
        shards.push(config::parse_shard(line).map_err(at)?);
    }
    if shards.is_empty() {
        return Err("no shards: give one line per shard, its replicas comma-separated".into());
    }
    Ok(TopologySpec { shards, merge })
}

/// The topology to start with: the shards file's, or the one the flags
/// give. Fails when there are no shards or the file is not usable.
pub fn from_args(args: &Args) -> Result<TopologySpec, String> {
    if let Some(path) = &args.shards_file {
        return read(path).map(|(spec, _)| spec);
    }
    Ok(TopologySpec {
        shards: args.shard_specs()?,
        merge: args.merge.clone(),
    })
}

/// Reads and parses a shards file; also returns the text read.
pub fn read(path: &Path) -> Result<(TopologySpec, String), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the shards file {}: {e}", path.display()))?;
    let spec = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((spec, text))
}

/// What building a topology needs besides its spec.
#[derive(Debug, Clone)]
pub struct Builder {
    /// The failure policy (a quorum needs enough shards).
    pub policy: Policy,
    /// The built-in reducer when there is no merger.
    pub reducer: Option<config::ReducerKind>,
    /// The percentile hedging tracks.
    pub percentile: f64,
    /// Per-shard metric handles come from here.
    pub metrics: Metrics,
    /// The pools' metrics.
    pub pool_metrics: PoolMetrics,
    /// Resolves leaf and merger names.
    pub resolver: Resolver,
    /// How often the shards' replica names are resolved again.
    pub dns_interval: Duration,
}

impl Builder {
    /// Builds the topology of `spec`: the shard pools start connecting in
    /// the background. Needs a tokio runtime.
    pub fn build(&self, spec: &TopologySpec) -> Result<Topology, Error> {
        if let Policy::Quorum(k) = self.policy {
            if k > spec.shards.len() {
                return Err(Error::Config(format!(
                    "--policy quorum={k} needs at least {k} shards, there are {}",
                    spec.shards.len()
                )));
            }
        }
        let mut shards = Vec::with_capacity(spec.shards.len());
        for (i, s) in spec.shards.iter().enumerate() {
            let addrs = s
                .replicas
                .iter()
                .map(|a| {
                    a.parse::<HostPort>().map_err(|e| Error::Endpoint {
                        addr: a.clone(),
                        source: e.into(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let shard = Shard::new(
                i,
                &addrs,
                &self.resolver,
                &self.pool_metrics,
                self.metrics.shard(i),
                self.percentile,
                self.dns_interval,
            )
            .map_err(|source| Error::Endpoint {
                addr: s.replicas.join(","),
                source,
            })?;
            shards.push(shard);
        }
        let merge = match &spec.merge {
            Some(addr) => {
                config::check_host_port(addr).map_err(Error::Config)?;
                let target: HostPort = addr.parse().map_err(|e| Error::Endpoint {
                    addr: addr.clone(),
                    source: ReplicaError::Addr(e),
                })?;
                Merge::Merger {
                    link: MergerLink::new(target, self.resolver.clone()),
                    endpoint: addr.as_str().into(),
                }
            }
            None => Merge::Reducer(self.reducer),
        };
        let reflection = spec
            .shards
            .first()
            .and_then(|s| s.replicas.first())
            .and_then(|a| Replica::new(a, &self.resolver).ok())
            .map(|r| r.channel);
        Ok(Topology {
            shards: shards.into_boxed_slice(),
            merge,
            reflection,
        })
    }
}

/// Follows the shards file at `path`: every [`FILE_INTERVAL`], a changed
/// file is parsed and built, its shards get up to 5 s (`CONNECT_WAIT`) to have a
/// replica connected, then `swap` puts it in place of the running one and
/// returns its generation. `applied` is the text of the topology running now.
/// Runs until the task is dropped.
pub async fn watch(
    path: PathBuf,
    mut applied: String,
    builder: Builder,
    swap: impl Fn(Topology) -> u64,
) {
    // The last text looked at, good or bad: a bad file is reported once.
    let mut seen = applied.clone();
    loop {
        tokio::time::sleep(FILE_INTERVAL).await;
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                // A file being replaced may vanish for a moment.
                debug!(file = %path.display(), error = %e, "cannot read the shards file; keeping the running topology");
                continue;
            }
        };
        if text == seen {
            continue;
        }
        seen = text.clone();
        if text == applied {
            continue;
        }
        let built = parse(&text)
            .map_err(|e| e.to_string())
            .and_then(|spec| builder.build(&spec).map_err(|e| e.to_string()));
        let topology = match built {
            Ok(t) => t,
            Err(e) => {
                warn!(file = %path.display(), "the shards file is not usable, keeping the running topology: {e}");
                continue;
            }
        };
        // New calls should find a connection ready: wait (bounded) until
        // every shard has a replica up. A shard that is not up by then is
        // swapped in anyway: the file says it is the shard now.
        let waits = topology
            .shards
            .iter()
            .map(|s| s.pool.wait_available(CONNECT_WAIT));
        let up = futures::future::join_all(waits).await;
        let down: Vec<usize> = (0..up.len()).filter(|&i| !up[i]).collect();
        if !down.is_empty() {
            warn!(file = %path.display(), shards = ?down, "no replica of these shards is reachable yet; using the new topology anyway");
        }
        let shards = topology.shards.len();
        let merger = match &topology.merge {
            Merge::Merger { endpoint, .. } => Some(endpoint.to_string()),
            Merge::Reducer(_) => None,
        };
        let generation = swap(topology);
        applied = text;
        info!(file = %path.display(), shards, ?merger, generation, "new topology from the shards file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_files() {
        let t = parse(
            "# shards\n127.0.0.1:1\n\n 127.0.0.1:2, leaf:3 # two replicas\nmerge m:4\nmerger:5\n",
        )
        .unwrap();
        let replicas: Vec<_> = t.shards.iter().map(|s| s.replicas.clone()).collect();
        assert_eq!(
            replicas,
            [
                vec!["127.0.0.1:1"],
                vec!["127.0.0.1:2", "leaf:3"],
                vec!["merger:5"]
            ]
        );
        assert_eq!(t.merge.as_deref(), Some("m:4"));
        assert_eq!(parse("a:1").unwrap().merge, None);
        assert!(parse("").unwrap_err().contains("no shards"));
        assert!(parse("# only\n").is_err());
        assert!(parse("a:1\nb\n").unwrap_err().starts_with("line 2"));
        assert!(parse("a:1,\n").unwrap_err().contains("empty"));
        assert!(parse("a:1\nmerge\n").unwrap_err().contains("merger"));
        assert!(parse("a:1\nmerge m:1\nmerge m:2\n")
            .unwrap_err()
            .contains("second"));
        assert!(parse("merge m:1\n").unwrap_err().contains("no shards"));
    }
}
