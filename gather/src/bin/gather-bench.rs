//! gather-bench: measures mp-gather and prints its tables: each round's, a
//! summary of the ratios over the rounds, and the tail.
//!
//! - Fan-out scaling: N = 1, 10, 100 leaves; requests/s, p50, p99 and CPU
//!   microseconds per leaf call, for mp-gather (a separate process, its CPU
//!   read from /proc) beside the floor: the same fan-out done by a plain tonic
//!   client calling the leaves directly (join of N unary calls; its CPU is the
//!   client process's, load generation included).
//!   mp-lb in front of one leaf is the yardstick for CPU per call, measured
//!   before and after mp-gather's N = 1 run in every round (the machine's
//!   load drifts; the mean of the two is the yardstick). Where HAProxy and
//!   nginx are installed, each in front of the same leaf is measured too
//!   (what one hop through another proxy costs, in the same round).
//! - Tail: 10 shards x 2 replicas where 1% of leaf calls are delayed 50 ms:
//!   p99 without delays, with delays and no hedging, with delays and hedging,
//!   and the share of extra (hedged) leaf calls.
//! - Merging: 10 shards replying 100 numbers each (the seed's histogram
//!   shape), merged by the `json-array` reducer and by an `mp.v1.Merger`
//!   (binning the numbers): mp-gather's CPU per call for each.
//!
//! The leaves are tonic `mp.v1.Handler` servers on loopback in a child
//! process of this program (`--serve-leaves`), so their CPU is counted
//! neither as gather's nor as the client's.
//!
//! Run: `bench/gather` (or `cargo run --release -p mp-gather --bin gather-bench`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use http::uri::PathAndQuery;
use mp_gather::grpc::BytesCodec;
use mp_proto::v1::handler_server::{Handler, HandlerServer};
use mp_proto::v1::merger_server::{Merger, MergerServer};
use mp_proto::v1::{leaf_outcome, MergeRequest, Reply, Request};
use prost::Message;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};

/// Measures mp-gather's fan-out cost and hedged tail latency; prints a table.
#[derive(Parser, Debug)]
#[command(name = "gather-bench")]
struct Cli {
    /// Seconds of load per measured run.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Fan-out sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    fanout: Vec<usize>,
    /// Rounds of the fan-out table (each measures mp-lb too); the summary
    /// gives the median and range of each ratio over the rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=50))]
    rounds: u16,
    /// The mp-gather binary (default: next to this program).
    #[arg(long)]
    gather: Option<PathBuf>,
    /// Internal: serve this many leaves, print their ports, exit on stdin EOF.
    #[arg(long, hide = true)]
    serve_leaves: Option<usize>,
    /// Internal: percentage of leaf calls to delay.
    #[arg(long, hide = true, default_value_t = 0.0)]
    delay_pct: f64,
    /// Internal: how long a delayed leaf call waits, ms.
    #[arg(long, hide = true, default_value_t = 50)]
    delay_ms: u64,
    /// Internal: the leaves reply this many numbers (a JSON array), and a
    /// merger is served beside them.
    #[arg(long, hide = true, default_value_t = 0)]
    samples: usize,
    /// Only load the proxy on this loopback port, as the loaded runs do
    /// (`--concurrency` callers on one connection for `--secs`), and print
    /// the calls made: for profiling a proxy started by hand (e.g. under
    /// `perf stat -p`).
    #[arg(long, value_name = "PORT")]
    load_only: Option<u16>,
    /// Every call carries a `grpc-timeout` that changes from call to call
    /// (a second less a few microseconds), as callers that send the time left
    /// on their deadline do (grpc-go, grpc-java).
    #[arg(long)]
    deadlines: bool,
}

/// `--deadlines`: set once, before any load.
static DEADLINES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    DEADLINES.store(cli.deadlines, std::sync::atomic::Ordering::Relaxed);
    if let Some(port) = cli.load_only {
        let run = rt.block_on(run_gather(port, cli.concurrency, cli.secs));
        println!(
            "{} calls in {:.2} s ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, {} failed",
            run.requests,
            run.secs,
            run.rps(),
            run.pct(50.0),
            run.pct(99.0),
            run.errors
        );
        return Ok(());
    }
    match cli.serve_leaves {
        Some(n) => rt.block_on(serve_leaves(n, cli.delay_pct, cli.delay_ms, cli.samples)),
        None => rt.block_on(bench(cli)),
    }
}

// ---------------------------------------------------------------- leaves

struct BenchLeaf {
    reply: Reply,
    delay_pct: f64,
    delay: Duration,
}

#[tonic::async_trait]
impl Handler for BenchLeaf {
    async fn handle(
        &self,
        _request: tonic::Request<Request>,
    ) -> Result<tonic::Response<Reply>, tonic::Status> {
        if self.delay_pct > 0.0 && rand::random::<f64>() * 100.0 < self.delay_pct {
            tokio::time::sleep(self.delay).await;
        }
        Ok(tonic::Response::new(self.reply.clone()))
    }
}

/// Bins the leaves' numbers (JSON arrays) into 10 bins of width 10, as the
/// seed's histogram merger does.
struct BenchMerger;

#[tonic::async_trait]
impl Merger for BenchMerger {
    async fn merge(
        &self,
        request: tonic::Request<MergeRequest>,
    ) -> Result<tonic::Response<Reply>, tonic::Status> {
        let mut bins = [0u64; 10];
        for leaf in request.into_inner().leaves {
            if let Some(leaf_outcome::Outcome::Reply(r)) = leaf.outcome {
                let bad =
                    |e: &dyn std::fmt::Display| tonic::Status::invalid_argument(e.to_string());
                let body = r.body_json().map_err(|e| bad(&e))?;
                let samples: Vec<f64> = serde_json::from_value(body).map_err(|e| bad(&e))?;
                for x in samples {
                    if (0.0..100.0).contains(&x) {
                        bins[(x / 10.0) as usize] += 1;
                    }
                }
            }
        }
        Ok(tonic::Response::new(Reply::json(serde_json::json!(bins))))
    }
}

async fn serve_leaves(n: usize, delay_pct: f64, delay_ms: u64, samples: usize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if samples > 0 {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        writeln!(out, "merger {}", l.local_addr()?.port())?;
        tokio::spawn(
            Server::builder()
                .add_service(MergerServer::new(BenchMerger))
                .serve_with_incoming(TcpIncoming::from(l).with_nodelay(Some(true))),
        );
    }
    for shard in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        writeln!(out, "{}", l.local_addr()?.port())?;
        let body = if samples > 0 {
            // Spread over [0, 100), differently per shard.
            let xs: Vec<f64> = (0..samples)
                .map(|i| ((shard * 37 + i * 13) % 1000) as f64 / 10.0)
                .collect();
            serde_json::json!(xs)
        } else {
            serde_json::json!({"shard": shard, "ok": true})
        };
        let leaf = BenchLeaf {
            reply: Reply::json(body),
            delay_pct,
            delay: Duration::from_millis(delay_ms),
        };
        tokio::spawn(
            Server::builder()
                .add_service(HandlerServer::new(leaf))
                .serve_with_incoming(TcpIncoming::from(l).with_nodelay(Some(true))),
        );
    }
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    // The parent holds our stdin: when it goes away, so do we.
    tokio::task::spawn_blocking(|| {
        let mut buf = String::new();
        while std::io::stdin().read_line(&mut buf).is_ok_and(|n| n > 0) {}
    })
    .await?;
    Ok(())
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_leaves(n: usize, delay_pct: f64) -> Result<(Proc, Vec<u16>)> {
    let (proc, ports, _) = start_leaves_with(n, delay_pct, 0)?;
    Ok((proc, ports))
}

/// [`start_leaves`] whose leaves reply `samples` numbers (when not 0), with
/// a merger: its port too.
fn start_leaves_with(
    n: usize,
    delay_pct: f64,
    samples: usize,
) -> Result<(Proc, Vec<u16>, Option<u16>)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve-leaves", &n.to_string()])
        .args(["--delay-pct", &delay_pct.to_string()])
        .args(["--samples", &samples.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the leaves process")?;
    let stdout = child.stdout.take().context("leaves stdout")?;
    let proc = Proc(child);
    let mut ports = Vec::new();
    let mut merger = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line == "ready" {
            return Ok((proc, ports, merger));
        }
        match line.strip_prefix("merger ") {
            Some(port) => merger = Some(port.parse()?),
            None => ports.push(line.parse()?),
        }
    }
    bail!("the leaves process ended before it was ready")
}

// ---------------------------------------------------------------- gather

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn gather_bin(cli: &Cli) -> Result<PathBuf> {
    let p = match &cli.gather {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("mp-gather"),
    };
    if !p.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p mp-gather --bins)",
            p.display()
        );
    }
    Ok(p)
}

struct Gather {
    proc: Proc,
    port: u16,
    admin: u16,
}

fn start_gather(bin: &PathBuf, shards: &[String], extra: &[&str]) -> Result<Gather> {
    start_proxy(bin, "--shard", shards, extra)
}

/// Starts mp-gather (`--shard`) or mp-lb (`--backend`) and waits for its port.
fn start_proxy(bin: &PathBuf, flag: &str, targets: &[String], extra: &[&str]) -> Result<Gather> {
    let port = free_port()?;
    let admin = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(extra)
        .env("RUST_LOG", "warn");
    for t in targets {
        cmd.args([flag, t]);
    }
    let what = bin
        .file_name()
        .map_or("the proxy".into(), |n| n.to_string_lossy());
    let proc = Proc(cmd.spawn().with_context(|| format!("starting {what}"))?);
    wait_listening(port, &what)?;
    Ok(Gather { proc, port, admin })
}

/// Waits (at most 10 s) until something listens on loopback `port`.
fn wait_listening(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    // A connection to itself (a source port equal to the port, which a
    // loopback connect can get while nothing listens) does not count.
    let listening = || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok_and(|s| s.local_addr().ok().map(|a| a.port()) != Some(port))
    };
    while !listening() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on 127.0.0.1:{port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

// ---------------------------------------------------------------- peers

/// A proxy of another project in front of one leaf: what one hop through
/// HAProxy or nginx costs, on the same machine in the same round as mp-lb's
/// and mp-gather's. Both are given one thread and keep their upstream
/// connections (the settings of `bench/lb/run.sh`).
#[derive(Clone, Copy, Debug)]
enum Peer {
    Haproxy,
    Nginx,
}

impl Peer {
    const ALL: [Peer; 2] = [Peer::Haproxy, Peer::Nginx];

    fn name(self) -> &'static str {
        match self {
            Peer::Haproxy => "HAProxy",
            Peer::Nginx => "nginx (grpc_pass)",
        }
    }

    /// The installed program, if any (sbin directories too: Debian puts
    /// both there, outside a user's PATH).
    fn program(self) -> Option<PathBuf> {
        let name = match self {
            Peer::Haproxy => "haproxy",
            Peer::Nginx => "nginx",
        };
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    /// Starts it in front of the leaf on `leaf`, its files in a directory
    /// of its own (removed when the returned guard drops).
    fn start(self, program: &PathBuf, leaf: u16) -> Result<PeerProc> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "gather-bench-{}-{}",
            std::process::id(),
            self.name().split(' ').next().unwrap_or("peer")
        ));
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        let mut cmd = Command::new(program);
        match self {
            Peer::Haproxy => {
                let cfg = dir.join("haproxy.cfg");
                std::fs::write(
                    &cfg,
                    format!(
                        "global\n    nbthread 1\n    maxconn 4000\n\
                         defaults\n    mode http\n    timeout connect 5s\n    timeout client 600s\n    timeout server 600s\n\
                         frontend front\n    bind 127.0.0.1:{port} proto h2\n    default_backend leaf\n\
                         backend leaf\n    http-reuse always\n    server leaf 127.0.0.1:{leaf} proto h2\n"
                    ),
                )?;
                cmd.arg("-db").arg("-f").arg(&cfg);
            }
            Peer::Nginx => {
                let cfg = dir.join("nginx.conf");
                // One process (no master): its CPU is the one measured.
                std::fs::write(
                    &cfg,
                    format!(
                        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                         error_log {d}/error.log warn;\nevents {{ worker_connections 8192; }}\n\
                         http {{\n    access_log off;\n\
                         client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
                         fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
                         keepalive_requests 100000000;\n    keepalive_timeout 600s;\n    http2_max_concurrent_streams 1024;\n\
                         upstream leaf {{\n        server 127.0.0.1:{leaf};\n        keepalive 1024;\n\
                         keepalive_requests 100000000;\n        keepalive_timeout 600s;\n    }}\n\
                         server {{\n        listen 127.0.0.1:{port} http2;\n        location / {{ grpc_pass grpc://leaf; }}\n    }}\n}}\n"
                    ),
                )?;
                cmd.arg("-p").arg(&dir).arg("-e").arg(dir.join("error.log"));
                cmd.arg("-c").arg(&cfg);
            }
        }
        let log = std::fs::File::create(dir.join("output.log"))?;
        cmd.stdout(log.try_clone()?).stderr(log);
        let proc = Proc(
            cmd.spawn()
                .with_context(|| format!("starting {}", program.display()))?,
        );
        let guard = PeerProc { proc, port, dir };
        wait_listening(port, self.name()).map_err(|e| {
            let out = std::fs::read_to_string(guard.dir.join("output.log")).unwrap_or_default();
            e.context(out.trim().to_string())
        })?;
        Ok(guard)
    }
}

/// A running peer proxy; stopped and its directory removed when dropped.
struct PeerProc {
    proc: Proc,
    port: u16,
    dir: PathBuf,
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        let _ = self.proc.0.kill();
        let _ = self.proc.0.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// user+system CPU time of process `pid`, from /proc (clock ticks of 10 ms).
fn cpu_time(pid: Option<u32>) -> Duration {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which is in parentheses): utime is the
    // 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn admin_metrics(port: u16) -> String {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

// ---------------------------------------------------------------- load

struct Run {
    requests: usize,
    errors: usize,
    secs: f64,
    lat_us: Vec<u32>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.lat_us.len() - 1) as f64).round() as usize;
        self.lat_us[i] as f64 / 1000.0
    }
}

/// Calls `one` from `concurrency` workers for `secs`; latencies of the calls.
async fn load<F, Fut>(concurrency: usize, secs: f64, one: F) -> Run
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let one = Arc::new(one);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let mut errors = 0;
            while Instant::now() < end {
                let t = Instant::now();
                if one().await {
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut lat_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap_or_default();
        lat_us.extend(l);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    lat_us.sort_unstable();
    Run {
        requests: lat_us.len(),
        errors,
        secs,
        lat_us,
    }
}

/// Seconds of load before each measured pair of runs.
const WARM_SECS: f64 = 0.3;

/// One path measured: unloaded (one caller) and loaded (`--concurrency`
/// callers) runs, and the CPU per leaf call of the process that matters
/// during the loaded run.
struct Measured {
    idle: Run,
    loaded: Run,
    cpu_us: f64,
}

/// Warms `run` up, then measures it unloaded and loaded; the CPU is process
/// `pid`'s (`None`: this one), per call over `fanout` leaf calls each.
async fn measure<F, Fut>(cli: &Cli, pid: Option<u32>, fanout: usize, run: F) -> Measured
where
    F: Fn(usize, f64) -> Fut,
    Fut: std::future::Future<Output = Run>,
{
    run(cli.concurrency, WARM_SECS).await;
    let idle = run(1, cli.secs / 2.0).await;
    let c0 = cpu_time(pid);
    let loaded = run(cli.concurrency, cli.secs).await;
    let cpu = cpu_time(pid) - c0;
    let cpu_us = cpu.as_secs_f64() * 1e6 / (loaded.requests.max(1) * fanout) as f64;
    Measured {
        idle,
        loaded,
        cpu_us,
    }
}

fn row(n: usize, path: &str, m: &Measured) {
    let (idle, loaded) = (&m.idle, &m.loaded);
    println!(
        "| {n} | {path} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1} | {} |",
        idle.pct(50.0),
        idle.pct(99.0),
        loaded.rps(),
        loaded.pct(50.0),
        loaded.pct(99.0),
        m.cpu_us,
        idle.errors + loaded.errors
    );
}

fn channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("valid uri")
        .tcp_nodelay(true)
        .connect_lazy()
}

fn request_bytes() -> Bytes {
    Request::json(serde_json::json!({"q": 1}))
        .encode_to_vec()
        .into()
}

async fn unary(ch: &Channel, body: &Bytes) -> bool {
    let mut g = tonic::client::Grpc::new(ch.clone());
    if g.ready().await.is_err() {
        return false;
    }
    let mut req = tonic::Request::new(body.clone());
    if DEADLINES.load(std::sync::atomic::Ordering::Relaxed) {
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        req.set_timeout(Duration::from_micros(1_000_000 - n % 997));
    }
    g.unary::<Bytes, Bytes, _>(
        req,
        PathAndQuery::from_static(mp_proto::names::HANDLE_PATH),
        BytesCodec,
    )
    .await
    .is_ok()
}

/// The floor: this process fans out to the leaves itself.
async fn run_direct(ports: &[u16], concurrency: usize, secs: f64) -> Run {
    let channels: Arc<Vec<Channel>> = Arc::new(ports.iter().map(|p| channel(*p)).collect());
    let body = request_bytes();
    load(concurrency, secs, move || {
        let channels = channels.clone();
        let body = body.clone();
        async move {
            let calls = channels.iter().map(|c| unary(c, &body));
            futures::future::join_all(calls)
                .await
                .into_iter()
                .all(|ok| ok)
        }
    })
    .await
}

async fn run_gather(port: u16, concurrency: usize, secs: f64) -> Run {
    let ch = channel(port);
    let body = request_bytes();
    load(concurrency, secs, move || {
        let ch = ch.clone();
        let body = body.clone();
        async move { unary(&ch, &body).await }
    })
    .await
}

// ---------------------------------------------------------------- table

/// One round's ratios for one fan-out size.
struct Ratios {
    p50_unloaded: f64,
    p50_loaded: f64,
    cpu_direct: f64,
    cpu_lb: f64,
}

/// `median (min-max)` of `v`.
fn spread(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    match v.as_slice() {
        [] => "-".into(),
        [one] => format!("{one:.2}"),
        _ => format!("{:.2} ({:.2}-{:.2})", v[v.len() / 2], v[0], v[v.len() - 1]),
    }
}

async fn bench(cli: Cli) -> Result<()> {
    let bin = gather_bin(&cli)?;
    let max_n = cli.fanout.iter().copied().max().unwrap_or(1).max(20);
    eprintln!("starting {max_n} leaves...");
    let (_leaves, ports) = start_leaves(max_n, 0.0)?;

    println!(
        "## mp-gather fan-out (loopback; unloaded = 1 caller, loaded = {} callers; {:.1} s per run; {} rounds)",
        cli.concurrency, cli.secs, cli.rounds
    );
    // Per fan-out size, the ratios of every round.
    let mut ratios: Vec<(usize, Vec<Ratios>)> =
        cli.fanout.iter().map(|n| (*n, Vec::new())).collect();
    let lb_bin = bin.with_file_name("mp-lb");
    // mp-lb's p50 over a direct call's (one leaf): what one proxy hop costs.
    let mut lb_hop: Vec<(f64, f64)> = Vec::new();
    // The same for HAProxy and nginx, where installed, and their CPU per
    // call over mp-lb's.
    let mut peer_hops: Vec<(Peer, PathBuf, Vec<Ratios>)> = Peer::ALL
        .iter()
        .filter_map(|p| Some((*p, p.program()?, Vec::new())))
        .collect();
    if peer_hops.len() < Peer::ALL.len() {
        println!(
            "\n(HAProxy and nginx in front of one leaf are measured too where they are installed: \
             `apt-get install haproxy nginx`; bench/gather installs them when run as root.)"
        );
    }
    for round in 1..=cli.rounds {
        println!("\n### Round {round}\n");
        println!(
            "| N leaves | path | unloaded p50 ms | unloaded p99 ms | loaded req/s | loaded p50 ms | loaded p99 ms | CPU us per leaf call | errors |"
        );
        println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        // mp-lb in front of one leaf: the CPU target's yardstick, this round.
        // Measured before and after mp-gather's N = 1 run (the machine's
        // load drifts within a round): the mean of the two is the yardstick.
        let measure_lb = || async {
            if !lb_bin.is_file() {
                return Ok::<_, anyhow::Error>(None);
            }
            let one = [format!("127.0.0.1:{}", ports[0])];
            let lb = start_proxy(&lb_bin, "--backend", &one, &[])?;
            let port = lb.port;
            let m = measure(&cli, Some(lb.proc.0.id()), 1, |c, secs| {
                run_gather(port, c, secs)
            })
            .await;
            Ok(Some(m))
        };
        let (mut lb_cpu, lb_p50) = match measure_lb().await? {
            Some(m) => {
                row(1, "mp-lb, the yardstick (lb CPU per proxied call)", &m);
                (m.cpu_us, (m.idle.pct(50.0), m.loaded.pct(50.0)))
            }
            None => (f64::NAN, (f64::NAN, f64::NAN)),
        };
        for (n, rs) in ratios.iter_mut() {
            let n = *n;
            let ports = &ports[..n];
            // The floor: direct fan-out from this process.
            let d = measure(&cli, None, n, |c, secs| run_direct(ports, c, secs)).await;
            row(n, "direct tonic fan-out (client CPU)", &d);
            // Through mp-gather.
            let shards: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            let g = start_gather(&bin, &shards, &["--reducer", "concat"])?;
            let port = g.port;
            let r = measure(&cli, Some(g.proc.0.id()), n, |c, secs| {
                run_gather(port, c, secs)
            })
            .await;
            row(n, "mp-gather (gather CPU)", &r);
            drop(g);
            if n == 1 {
                lb_hop.push((lb_p50.0 / d.idle.pct(50.0), lb_p50.1 / d.loaded.pct(50.0)));
                if let Some(m) = measure_lb().await? {
                    row(1, "mp-lb again (the yardstick is the mean of the two)", &m);
                    lb_cpu = (lb_cpu + m.cpu_us) / 2.0;
                }
                for (peer, program, hops) in peer_hops.iter_mut() {
                    let proxy = match peer.start(program, ports[0]) {
                        Ok(p) => p,
                        Err(e) => {
                            eprintln!("{} left out of this round: {e:#}", peer.name());
                            continue;
                        }
                    };
                    let port = proxy.port;
                    let m = measure(&cli, Some(proxy.proc.0.id()), 1, |c, secs| {
                        run_gather(port, c, secs)
                    })
                    .await;
                    row(1, &format!("{} in front of the leaf", peer.name()), &m);
                    hops.push(Ratios {
                        p50_unloaded: m.idle.pct(50.0) / d.idle.pct(50.0),
                        p50_loaded: m.loaded.pct(50.0) / d.loaded.pct(50.0),
                        cpu_direct: m.cpu_us / d.cpu_us,
                        cpu_lb: m.cpu_us / lb_cpu,
                    });
                }
            }
            rs.push(Ratios {
                p50_unloaded: r.idle.pct(50.0) / d.idle.pct(50.0),
                p50_loaded: r.loaded.pct(50.0) / d.loaded.pct(50.0),
                cpu_direct: r.cpu_us / d.cpu_us,
                cpu_lb: r.cpu_us / lb_cpu,
            });
        }
    }
    println!("\n### Summary: median (range) over {} rounds\n", cli.rounds);
    println!("| N leaves | p50 / direct p50, unloaded | loaded | CPU per leaf call / mp-lb's per call | / direct client's |");
    println!("|---:|---:|---:|---:|---:|");
    for (n, rs) in &ratios {
        let col = |f: fn(&Ratios) -> f64| spread(rs.iter().map(f).collect());
        println!(
            "| {n} | {} | {} | {} | {} |",
            col(|r| r.p50_unloaded),
            col(|r| r.p50_loaded),
            col(|r| r.cpu_lb),
            col(|r| r.cpu_direct)
        );
    }
    if !lb_hop.is_empty() {
        println!(
            "| 1, mp-lb instead (one proxy hop) | {} | {} | 1 | - |",
            spread(lb_hop.iter().map(|h| h.0).collect()),
            spread(lb_hop.iter().map(|h| h.1).collect())
        );
    }
    for (peer, _, hops) in &peer_hops {
        if hops.is_empty() {
            continue;
        }
        let col = |f: fn(&Ratios) -> f64| spread(hops.iter().map(f).collect());
        println!(
            "| 1, {} instead (one proxy hop) | {} | {} | {} | {} |",
            peer.name(),
            col(|r| r.p50_unloaded),
            col(|r| r.p50_loaded),
            col(|r| r.cpu_lb),
            col(|r| r.cpu_direct)
        );
    }
    println!("\nTargets: p50 <= 1.2x the direct fan-out's; CPU per leaf call <= mp-lb's per proxied call.");

    // Tail at scale: 10 shards x 2 replicas.
    println!(
        "\n## Tail: 10 shards x 2 replicas, 1% of leaf calls delayed 50 ms ({} callers, {:.1} s per run)\n",
        cli.concurrency, cli.secs
    );
    println!("| run | req/s | p50 ms | p99 ms | p99.9 ms | extra leaf calls |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (_slow_leaves, slow_ports) = start_leaves(20, 1.0)?;
    let shards = |ports: &[u16]| -> Vec<String> {
        (0..10)
            .map(|i| format!("127.0.0.1:{},127.0.0.1:{}", ports[2 * i], ports[2 * i + 1]))
            .collect()
    };
    let runs: [(&str, &[u16], &[&str]); 4] = [
        ("no delays, no hedging", &ports[..20], &[]),
        ("1% delayed, no hedging", &slow_ports, &[]),
        (
            "1% delayed, --hedge-after p95 --hedge-budget 5",
            &slow_ports,
            &["--hedge-after", "p95", "--hedge-budget", "5"],
        ),
        (
            "1% delayed, --hedge-after 10ms --hedge-budget 5",
            &slow_ports,
            &["--hedge-after", "10ms", "--hedge-budget", "5"],
        ),
    ];
    let mut p99s = Vec::new();
    for (name, ports, flags) in runs {
        let mut args = vec!["--reducer", "concat"];
        args.extend_from_slice(flags);
        let g = start_gather(&bin, &shards(ports), &args)?;
        run_gather(g.port, cli.concurrency, WARM_SECS).await;
        let before = admin_metrics(g.admin);
        let r = run_gather(g.port, cli.concurrency, cli.secs).await;
        let after = admin_metrics(g.admin);
        let hedges = metric_sum(&after, "mp_gather_hedges_sent_total")
            - metric_sum(&before, "mp_gather_hedges_sent_total");
        let calls = metric_sum(&after, "mp_gather_leaf_calls_total")
            - metric_sum(&before, "mp_gather_leaf_calls_total");
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2}% |",
            r.rps(),
            r.pct(50.0),
            r.pct(99.0),
            r.pct(99.9),
            100.0 * hedges / calls.max(1.0)
        );
        p99s.push(r.pct(99.0));
        drop(g);
    }
    println!();
    println!(
        "- hedged p99 / undelayed p99 = {:.2} (p95 hedge), {:.2} (10 ms hedge); target <= 2",
        p99s[2] / p99s[0],
        p99s[3] / p99s[0]
    );
    merging(&cli, &bin).await
}

/// The seed's histogram shape: 10 shards replying 100 numbers each, merged
/// by the json-array reducer and by a merger, every round.
async fn merging(cli: &Cli, bin: &PathBuf) -> Result<()> {
    println!(
        "\n## Merging: 10 shards replying 100 numbers each ({} callers, {:.1} s per run, {} rounds)\n",
        cli.concurrency, cli.secs, cli.rounds
    );
    println!("| round | merged by | loaded req/s | loaded p50 ms | loaded p99 ms | gather CPU us per call | errors |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let (_leaves, ports, merger) = start_leaves_with(10, 0.0, 100)?;
    let merger = merger.context("the leaves process started no merger")?;
    let shards: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let merger = format!("127.0.0.1:{merger}");
    let ways: [(&str, [&str; 2]); 2] = [
        ("the json-array reducer", ["--reducer", "json-array"]),
        ("a merger (mp.v1.Merger: 10 bins)", ["--merge", &merger]),
    ];
    let mut cpu = [Vec::new(), Vec::new()];
    for round in 1..=cli.rounds {
        for (i, (name, flags)) in ways.iter().enumerate() {
            let g = start_gather(bin, &shards, flags)?;
            let port = g.port;
            let m = measure(cli, Some(g.proc.0.id()), 1, |c, secs| {
                run_gather(port, c, secs)
            })
            .await;
            println!(
                "| {round} | {name} | {:.0} | {:.2} | {:.2} | {:.1} | {} |",
                m.loaded.rps(),
                m.loaded.pct(50.0),
                m.loaded.pct(99.0),
                m.cpu_us,
                m.idle.errors + m.loaded.errors
            );
            cpu[i].push(m.cpu_us);
        }
    }
    let [reducer, merger] = cpu;
    println!(
        "\n- gather CPU us per call, median (range): json-array {}, merger {}",
        spread(reducer),
        spread(merger)
    );
    Ok(())
}
