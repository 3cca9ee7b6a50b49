//! The command line of `mp-gather` (clap derive: the doc comments are the help)
//! and the small value parsers it needs (durations, policies, hedge delays).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mp_sidecar::addr::HostPort;

/// Scatter every unary gRPC call to all shards, gather their replies and merge
/// them into one answer.
///
/// Any method path is fanned out as raw message bytes, so mp-gather also works
/// in front of services of other protos. Calls to `mp.v1.Handler/Handle` are
/// merged into a JSON array by default, other methods by protobuf
/// concatenation. Health (`grpc.health.v1`) and server reflection (v1 and
/// v1alpha) are served on the same port, so grpcurl works against it.
#[derive(Parser, Debug, Clone)]
#[command(name = "mp-gather", version, max_term_width = 100)]
pub struct Args {
    /// Address to serve gRPC (h2c) on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,

    /// One shard: the address of its leaf, or comma-separated addresses of its
    /// replicas (used round robin). Repeat the flag once per shard, in shard
    /// order. Host names are resolved at connect time.
    #[arg(long = "shard", value_name = "ADDR[,ADDR...]", value_parser = parse_shard)]
    pub shards: Vec<ShardSpec>,

    /// Shards named by a DNS template: `{i}` is replaced by the shard index,
    /// e.g. `leaf-{i}.leaves:9000` (a Kubernetes StatefulSet). Needs --shards.
    #[arg(
        long,
        value_name = "NAME:PORT",
        requires = "shard_count",
        conflicts_with = "shards"
    )]
    pub shard_dns: Option<String>,

    /// How many shards --shard-dns names.
    #[arg(long = "shards", value_name = "N", requires = "shard_dns")]
    pub shard_count: Option<usize>,

    /// Ask this DNS server (IP:PORT, plain UDP/TCP) for the shards' host
    /// names instead of the servers in /etc/resolv.conf; /etc/hosts is not
    /// read then. For tests, and for sidecars whose resolv.conf is wrong.
    #[arg(long, value_name = "ADDR")]
    pub dns_server: Option<SocketAddr>,

    /// How often the replicas' host names (in --shard, --shard-dns or the
    /// shards file) are resolved again, so a replica that moves or is
    /// replaced under the same name is followed.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub dns_interval: Duration,

    /// Address of a user merger (`mp.v1.Merger/Merge`) that combines the
    /// shards' outcomes.
    #[arg(long, value_name = "ADDR", conflicts_with = "reducer")]
    pub merge: Option<String>,

    /// Take the shards (and the merger) from a file, followed while mp-gather
    /// runs: one line per shard in shard order, its replicas comma-separated;
    /// an optional `merge ADDR` line; `#` comments. A changed file applies to
    /// new calls (calls in flight finish on the old shards); a file that does
    /// not parse keeps the last good one. Replace it atomically (write, then
    /// rename). Instead of --shard, --shard-dns and --merge.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = ["shards", "shard_dns", "merge"]
    )]
    pub shards_file: Option<PathBuf>,

    /// Built-in reducer used when no --merge is given. Default: json-array for
    /// `mp.v1.Handler/Handle`, concat for any other method.
    #[arg(long, value_enum, value_name = "NAME")]
    pub reducer: Option<ReducerKind>,

    /// What to do when shards fail: `all` (any failure fails the call, naming
    /// the shard), `quorum=K` (at least K shards must answer), `best-effort`
    /// (merge whatever answered by the deadline).
    #[arg(long, value_name = "POLICY", default_value = "all")]
    pub policy: Policy,

    /// Upper bound for one shard's answer (e.g. 500ms, 2s). The caller's
    /// grpc-timeout, when shorter, bounds it further.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub leaf_timeout: Duration,

    /// Hedge: when a shard with several replicas has not answered after this
    /// delay, send the call to another replica too; the first answer wins and
    /// the other call is cancelled. A duration (50ms) or a percentile of the
    /// shard's recent latencies (p95). Off by default.
    #[arg(long, value_name = "DUR|pNN")]
    pub hedge_after: Option<HedgeAfter>,

    /// Cap on hedged calls, as a percentage of leaf calls (after a burst of 10).
    #[arg(long, value_name = "PCT", default_value_t = 5.0, value_parser = parse_percent)]
    pub hedge_budget: f64,

    /// Address of the admin HTTP server (/metrics, /ready, /live). Off when
    /// not given.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// How long in-flight calls may take to finish after SIGTERM.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Worker threads. With one (the default), a call's front connection and
    /// its leaf connections share the thread, with no wakeups across threads
    /// (15-35% less CPU per call than two in bench/gather); more add
    /// throughput where cores are to spare.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
}

impl Args {
    /// The shards in order, from --shard or --shard-dns/--shards. Fails when
    /// there are none.
    pub fn shard_specs(&self) -> Result<Vec<ShardSpec>, String> {
        if let (Some(template), Some(n)) = (&self.shard_dns, self.shard_count) {
            if !template.contains("{i}") {
                return Err(format!(
                    "--shard-dns {template:?} has no `{{i}}` for the shard index, e.g. leaf-{{i}}.leaves:9000"
                ));
            }
            if n == 0 {
                return Err("--shards must be at least 1".into());
            }
            return (0..n)
                .map(|i| parse_shard(&template.replace("{i}", &i.to_string())))
                .collect();
        }
        if self.shards.is_empty() {
            return Err(
                "no shards: give --shard ADDR once per shard (or --shard-dns with --shards, or --shards-file)"
                    .into(),
            );
        }
        Ok(self.shards.clone())
    }
}

/// One shard as given on the command line: its replicas' addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    /// `host:port` of every replica, at least one.
    pub replicas: Vec<String>,
}

/// Parses `ADDR[,ADDR...]` where each ADDR is `host:port`.
pub fn parse_shard(s: &str) -> Result<ShardSpec, String> {
    let replicas: Vec<String> = s.split(',').map(|a| a.trim().to_string()).collect();
    for a in &replicas {
        check_host_port(a)?;
    }
    Ok(ShardSpec { replicas })
}

/// Checks that `a` is `HOST:PORT` (HOST an IP literal, `[v6]`, or a DNS name).
pub fn check_host_port(a: &str) -> Result<(), String> {
    a.parse::<HostPort>().map(|_| ()).map_err(|e| e.to_string())
}

/// The built-in reducers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReducerKind {
    /// An `mp.v1.Reply` whose JSON body is the array of the shards' JSON
    /// bodies, in shard order (null for a shard that did not answer). Only for
    /// `mp.v1.Handler/Handle`.
    JsonArray,
    /// The shards' serialized replies concatenated in shard order, which
    /// protobuf decodes as one merged message: repeated fields append, maps
    /// merge, scalars and oneofs take the last shard's value, sub-messages
    /// merge recursively. Works for any method.
    Concat,
    /// The first successful reply to arrive; the other calls are cancelled.
    First,
}

/// What makes a fan-out succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Every shard must answer; the first failure fails the call.
    All,
    /// At least K shards must answer; the call fails as soon as that is
    /// impossible. Otherwise it waits for every shard (up to the deadline) so
    /// the merge sees as much data as possible.
    Quorum(usize),
    /// Merge whatever answered by the deadline.
    BestEffort,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Policy::All),
            "best-effort" => Ok(Policy::BestEffort),
            _ => match s.strip_prefix("quorum=") {
                Some(k) => match k.parse::<usize>() {
                    Ok(k) if k > 0 => Ok(Policy::Quorum(k)),
                    _ => Err(format!("quorum needs a count of at least 1, got {k:?}")),
                },
                None => Err(format!(
                    "unknown policy {s:?}: use all, quorum=K or best-effort"
                )),
            },
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::All => f.write_str("all"),
            Policy::Quorum(k) => write!(f, "quorum={k}"),
            Policy::BestEffort => f.write_str("best-effort"),
        }
    }
}

/// When a hedged call is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeAfter {
    /// After a fixed delay.
    Fixed(Duration),
    /// After the given percentile (0-100) of the shard's recent latencies.
    Percentile(f64),
}

impl FromStr for HedgeAfter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix('p') {
            let p: f64 = p
                .parse()
                .map_err(|_| format!("{s:?} is not a percentile like p95"))?;
            if !(0.0 < p && p < 100.0) {
                return Err(format!("percentile {p} is not between 0 and 100"));
            }
            return Ok(HedgeAfter::Percentile(p));
        }
        parse_duration(s).map(HedgeAfter::Fixed)
    }
}

/// Parses a duration such as `250ms`, `2s`, `1.5s`, `1m` (the sidecar's
/// syntax, shared with mp-lb).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    mp_sidecar::duration::parse(s)
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("{p} is not between 0 and 100"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10 parsecs").is_err());
    }

    #[test]
    fn policies() {
        assert_eq!("all".parse(), Ok(Policy::All));
        assert_eq!("quorum=3".parse(), Ok(Policy::Quorum(3)));
        assert_eq!("best-effort".parse(), Ok(Policy::BestEffort));
        assert!("quorum=0".parse::<Policy>().is_err());
        assert!("most".parse::<Policy>().is_err());
    }

    #[test]
    fn hedges_and_shards() {
        assert_eq!("p95".parse(), Ok(HedgeAfter::Percentile(95.0)));
        assert_eq!(
            "50ms".parse(),
            Ok(HedgeAfter::Fixed(Duration::from_millis(50)))
        );
        assert!("p100".parse::<HedgeAfter>().is_err());
        let s = parse_shard("a:1,127.0.0.1:2").unwrap();
        assert_eq!(s.replicas, ["a:1", "127.0.0.1:2"]);
        assert!(parse_shard("nope").is_err());
        assert!(parse_shard("a:99999").is_err());
    }

    #[test]
    fn shard_dns_template() {
        let a = Args::try_parse_from([
            "mp-gather",
            "--shard-dns",
            "leaf-{i}.leaves:9000",
            "--shards",
            "3",
        ])
        .unwrap();
        let specs = a.shard_specs().unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[2].replicas, ["leaf-2.leaves:9000"]);
        let a = Args::try_parse_from(["mp-gather", "--shard-dns", "leaf:9000", "--shards", "3"])
            .unwrap();
        assert!(a.shard_specs().unwrap_err().contains("{i}"));
        // Flags that exclude each other.
        assert!(Args::try_parse_from([
            "mp-gather",
            "--shard",
            "a:1",
            "--merge",
            "m:1",
            "--reducer",
            "concat"
        ])
        .is_err());
        assert!(Args::try_parse_from(["mp-gather", "--shard-dns", "x-{i}:1"]).is_err());
        let a = Args::try_parse_from([
            "mp-gather",
            "--shard",
            "a:1",
            "--dns-server",
            "127.0.0.1:53",
        ])
        .unwrap();
        assert_eq!(a.dns_server, Some("127.0.0.1:53".parse().unwrap()));
        assert!(
            Args::try_parse_from(["mp-gather", "--shard", "a:1", "--dns-server", "ns1"]).is_err()
        );
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
