//! Test support for mp-gather's integration tests: in-process leaves and
//! mergers on loopback ports (real tonic servers, port 0), the real
//! `mp-gather` binary as a child process, and small clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mp_proto::v1::handler_client::HandlerClient;
use mp_proto::v1::handler_server::{Handler, HandlerServer};
use mp_proto::v1::merger_server::{Merger, MergerServer};
use mp_proto::v1::{leaf_outcome, MergeRequest, Reply, Request};
use mp_testkit::{free_port, wait_for_port, ChildGuard};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};

/// The test-only `demo.catalog.v1` proto (gather/tests/proto/catalog.proto).
pub mod catalog {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("demo.catalog.v1");
    /// Its encoded descriptor set, for reflection.
    pub const DESCRIPTOR: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/catalog_descriptor.bin"));
}

/// What a test leaf does and what it saw.
#[derive(Debug, Default)]
pub struct LeafStats {
    /// Calls that started.
    pub started: AtomicUsize,
    /// Calls that finished (answered).
    pub finished: AtomicUsize,
    /// Calls dropped before they finished: the caller cancelled them.
    pub cancelled: AtomicUsize,
    /// Connections accepted (counted by mergers).
    pub connections: AtomicUsize,
}

/// A test leaf's behaviour.
#[derive(Debug, Clone, Default)]
pub struct LeafSpec {
    /// Which shard it claims to be.
    pub shard: usize,
    /// How long each call takes.
    pub delay: Duration,
    /// Fail every call with this status.
    pub fail: Option<(Code, &'static str)>,
    /// A name shown in replies (to tell replicas apart).
    pub name: &'static str,
}

/// A leaf server that stops when dropped.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub stats: Arc<LeafStats>,
    _stop: oneshot::Sender<()>,
}

impl Running {
    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

struct TestLeaf {
    spec: LeafSpec,
    stats: Arc<LeafStats>,
}

/// Counts a call as cancelled unless it was marked finished before drop.
struct CallGuard {
    stats: Arc<LeafStats>,
    finished: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.finished {
            self.stats.finished.fetch_add(1, Ordering::SeqCst);
        } else {
            self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tonic::async_trait]
impl Handler for TestLeaf {
    async fn handle(
        &self,
        request: tonic::Request<Request>,
    ) -> Result<tonic::Response<Reply>, Status> {
        self.stats.started.fetch_add(1, Ordering::SeqCst);
        let mut guard = CallGuard {
            stats: self.stats.clone(),
            finished: false,
        };
        let tenant = request
            .metadata()
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        tokio::time::sleep(self.spec.delay).await;
        guard.finished = true;
        if let Some((code, msg)) = self.spec.fail {
            return Err(Status::new(code, msg));
        }
        let body = request
            .get_ref()
            .body_json()
            .unwrap_or(serde_json::Value::Null);
        Ok(tonic::Response::new(Reply::json(json!({
            "shard": self.spec.shard,
            "name": self.spec.name,
            "tenant": tenant,
            "timeout": timeout,
            "echo": body,
        }))))
    }
}

/// Accepted connections with Nagle off, as real gRPC servers run: small
/// HTTP/2 frames must not wait for an ACK.
fn incoming(l: TcpListener) -> TcpIncoming {
    TcpIncoming::from(l).with_nodelay(Some(true))
}

async fn bind() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

/// Starts an mp.v1 leaf.
pub async fn leaf(spec: LeafSpec) -> Running {
    let (listener, addr) = bind().await;
    let stats = Arc::new(LeafStats::default());
    let svc = HandlerServer::new(TestLeaf {
        spec,
        stats: stats.clone(),
    });
    let (tx, rx) = oneshot::channel();
    tokio::spawn(
        Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming(listener), async {
                let _ = rx.await;
            }),
    );
    Running {
        addr,
        stats,
        _stop: tx,
    }
}

/// A leaf of `shard` whose every call takes `delay`.
pub async fn slow_leaf(shard: usize, delay: Duration) -> Running {
    leaf(LeafSpec {
        shard,
        delay,
        ..LeafSpec::default()
    })
    .await
}

/// `n` plain leaves, shard i answering `{"shard": i, ...}`.
pub async fn leaves(n: usize) -> Vec<Running> {
    let mut v = Vec::new();
    for shard in 0..n {
        v.push(
            leaf(LeafSpec {
                shard,
                ..LeafSpec::default()
            })
            .await,
        );
    }
    v
}

/// How a test merger answers.
#[derive(Debug, Clone, Copy)]
pub enum MergerMode {
    /// A summary of what it received, as JSON.
    Summarize,
    /// Fails with this status.
    Fail(Code, &'static str),
    /// Never answers.
    Hang,
    /// Merges `demo.catalog.v1.Catalog/Search` calls, which reach it as raw
    /// payloads: every shard's items, sorted, and a source naming the query
    /// and the shards that failed.
    Catalog,
}

struct TestMerger(MergerMode);

#[tonic::async_trait]
impl Merger for TestMerger {
    async fn merge(
        &self,
        request: tonic::Request<MergeRequest>,
    ) -> Result<tonic::Response<Reply>, Status> {
        match self.0 {
            MergerMode::Fail(code, msg) => return Err(Status::new(code, msg)),
            MergerMode::Hang => std::future::pending().await,
            MergerMode::Summarize => {}
            MergerMode::Catalog => return merge_catalog(request.into_inner()),
        }
        let meta = |k: &str| {
            request
                .metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (tenant, timeout) = (meta("x-tenant"), meta("grpc-timeout"));
        let m = request.into_inner();
        let leaves: Vec<_> = m
            .leaves
            .iter()
            .map(|l| match &l.outcome {
                Some(leaf_outcome::Outcome::Reply(r)) => json!({
                    "shard": l.shard,
                    "ok": r.body_json().unwrap_or_default(),
                    "endpoint": l.endpoint,
                    "hedged": l.hedged,
                    "has_elapsed": l.elapsed.is_some(),
                }),
                Some(leaf_outcome::Outcome::Error(e)) => json!({
                    "shard": l.shard,
                    "error": {"code": e.code, "message": e.message},
                }),
                None => json!({"shard": l.shard}),
            })
            .collect();
        let request = m.request.as_ref().and_then(|r| r.body_json().ok());
        Ok(tonic::Response::new(Reply::json(json!({
            "request": request,
            "leaves": leaves,
            "tenant": tenant,
            "timeout": timeout,
        }))))
    }
}

fn raw_body(p: Option<&mp_proto::v1::Payload>) -> Result<&[u8], Status> {
    match p.and_then(|p| p.kind.as_ref()) {
        Some(mp_proto::v1::payload::Kind::Raw(b)) => Ok(b),
        other => Err(Status::invalid_argument(format!(
            "not a raw body: {other:?}"
        ))),
    }
}

fn merge_catalog(m: MergeRequest) -> Result<tonic::Response<Reply>, Status> {
    use prost::Message;
    let request = m.request.unwrap_or_default();
    let method = request
        .metadata
        .get("mp-method")
        .cloned()
        .unwrap_or_default();
    if method != "/demo.catalog.v1.Catalog/Search" {
        return Err(Status::invalid_argument(format!("mp-method is {method:?}")));
    }
    let query = catalog::SearchRequest::decode(raw_body(request.body.as_ref())?)
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .query;
    let mut items = Vec::new();
    let mut failed = Vec::new();
    for l in &m.leaves {
        match &l.outcome {
            Some(leaf_outcome::Outcome::Reply(r)) => {
                let reply = catalog::SearchReply::decode(raw_body(r.body.as_ref())?)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                items.extend(reply.items);
            }
            _ => failed.push(l.shard.to_string()),
        }
    }
    items.sort();
    let merged = catalog::SearchReply {
        items,
        source: format!("merged {query:?}, failed [{}]", failed.join(",")),
    };
    Ok(tonic::Response::new(Reply {
        body: Some(mp_proto::v1::Payload {
            kind: Some(mp_proto::v1::payload::Kind::Raw(merged.encode_to_vec())),
        }),
        metadata: Default::default(),
    }))
}

/// Starts a test merger.
pub async fn merger(mode: MergerMode) -> Running {
    let (listener, _) = bind().await;
    merger_on(listener, mode)
}

/// A test merger on `listener` (e.g. a merger back on the port of one that
/// stopped).
pub fn merger_on(listener: TcpListener, mode: MergerMode) -> Running {
    use futures::StreamExt;
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel();
    let stats = Arc::new(LeafStats::default());
    let seen = stats.clone();
    let accepted = incoming(listener).inspect(move |_| {
        seen.connections.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(
        Server::builder()
            .add_service(MergerServer::new(TestMerger(mode)))
            .serve_with_incoming_shutdown(accepted, async {
                let _ = rx.await;
            }),
    );
    Running {
        addr,
        stats,
        _stop: tx,
    }
}

struct CatalogLeaf {
    shard: usize,
    items: Vec<String>,
}

#[tonic::async_trait]
impl catalog::catalog_server::Catalog for CatalogLeaf {
    async fn search(
        &self,
        request: tonic::Request<catalog::SearchRequest>,
    ) -> Result<tonic::Response<catalog::SearchReply>, Status> {
        let q = request.into_inner().query;
        Ok(tonic::Response::new(catalog::SearchReply {
            items: self
                .items
                .iter()
                .filter(|i| i.contains(&q))
                .cloned()
                .collect(),
            source: format!("shard-{}", self.shard),
        }))
    }
}

/// Starts a `demo.catalog.v1.Catalog` leaf (with reflection) holding `items`.
pub async fn catalog_leaf(shard: usize, items: &[&str]) -> Running {
    let (listener, addr) = bind().await;
    let (tx, rx) = oneshot::channel();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(catalog::DESCRIPTOR)
        .build_v1()
        .expect("reflection");
    let svc = catalog::catalog_server::CatalogServer::new(CatalogLeaf {
        shard,
        items: items.iter().map(|s| s.to_string()).collect(),
    });
    tokio::spawn(
        Server::builder()
            .add_service(svc)
            .add_service(reflection)
            .serve_with_incoming_shutdown(incoming(listener), async {
                let _ = rx.await;
            }),
    );
    Running {
        addr,
        stats: Arc::default(),
        _stop: tx,
    }
}

/// An address where nothing listens (a dead leaf).
pub fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A running mp-gather process.
pub struct GatherProc {
    /// The gather port.
    pub addr: SocketAddr,
    /// The admin port, if one was asked for.
    pub admin: Option<SocketAddr>,
    /// The process.
    pub child: ChildGuard,
}

impl GatherProc {
    /// Starts `mp-gather --listen <free port> <args>` and waits for its port.
    pub fn start(args: &[String]) -> GatherProc {
        Self::start_with(args, false)
    }

    /// Like [`GatherProc::start`], with an admin port too.
    pub fn start_with(args: &[String], admin: bool) -> GatherProc {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin =
            admin.then(|| -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() });
        let mut cmd = Command::new(mp_testkit::bin("mp-gather"));
        cmd.arg("--listen").arg(addr.to_string()).args(args);
        if let Some(a) = admin {
            cmd.arg("--admin").arg(a.to_string());
        }
        cmd.env("RUST_LOG", "mp_gather=debug,info");
        let child = ChildGuard::spawn(&mut cmd);
        assert!(
            wait_for_port(addr, Duration::from_secs(10)),
            "mp-gather did not listen on {addr}"
        );
        if let Some(a) = admin {
            assert!(wait_for_port(a, Duration::from_secs(10)), "no admin port");
        }
        GatherProc { addr, admin, child }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A Handler client to the gather port.
    pub async fn client(&self) -> HandlerClient<Channel> {
        HandlerClient::connect(self.url())
            .await
            .expect("connect to mp-gather")
    }

    /// Waits (at most 10 s) until the admin metrics show `n` leaf replicas
    /// connected and healthy.
    pub fn wait_healthy(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.admin_get("/metrics");
            let healthy = m
                .lines()
                .filter(|l| l.starts_with("mp_gather_leaf_endpoint_healthy{") && l.ends_with(" 1"))
                .count();
            if healthy >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {healthy} of {n} replicas healthy:\n{m}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `path` on the admin port; the response body.
    pub fn admin_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let addr = self.admin.expect("started with an admin port");
        let mut s = std::net::TcpStream::connect(addr).expect("admin connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}

/// `--shard a --shard b ...` for the leaves.
pub fn shard_args(leaves: &[Running]) -> Vec<String> {
    leaves
        .iter()
        .flat_map(|l| ["--shard".to_string(), l.addr()])
        .collect()
}

/// Builds an argument list from string slices.
pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Calls Handle on the gather with a JSON body.
pub async fn call(
    client: &mut HandlerClient<Channel>,
    body: serde_json::Value,
) -> Result<Reply, Status> {
    client
        .handle(Request::json(body))
        .await
        .map(tonic::Response::into_inner)
}

/// Polls `cond` every 20 ms for at most `limit`.
pub async fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A handler process (an example, or a Python script) on a free port.
pub struct Process {
    /// Killed when dropped.
    pub child: ChildGuard,
    /// `127.0.0.1:port`.
    pub addr: SocketAddr,
}

impl Process {
    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

fn start_handler(mut cmd: Command, env: &[(&str, &str)]) -> Process {
    let port = free_port();
    cmd.env("MP_HOST", "127.0.0.1")
        .env("MP_PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .env("MP_LOG_LEVEL", "WARNING");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = ChildGuard::spawn(&mut cmd);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        wait_for_port(addr, Duration::from_secs(30)),
        "{cmd:?} did not listen on {addr} within 30 s"
    );
    Process { child, addr }
}

/// Starts the Rust example `name` (examples/) with `env`.
pub fn example(name: &str, env: &[(&str, &str)]) -> Process {
    start_handler(Command::new(mp_testkit::example(name)), env)
}

/// Starts the Python example `script` (examples/python/) with `env`.
pub fn python(script: &str, env: &[(&str, &str)]) -> Process {
    let path = mp_testkit::repo_root().join("examples/python").join(script);
    let mut cmd = Command::new("python3");
    cmd.arg(path);
    start_handler(cmd, env)
}

/// True when python3 with grpcio is installed. Outside CI a missing one is
/// reported loudly and the caller skips; in CI it fails the test.
pub fn python_grpc_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import grpc, grpc_health, grpc_reflection"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !mp_testkit::in_ci(),
            "python3 with grpcio is required in CI: pip install -r examples/python/requirements.txt"
        );
        eprintln!(
            "SKIPPED: python3 with grpcio, grpcio-health-checking and grpcio-reflection is not \
             installed (pip install -r examples/python/requirements.txt)"
        );
    }
    ok
}

/// Runs grpcurl; its stdout, failing the test with its stderr when it fails.
pub fn grpcurl_ok(a: &[&str]) -> String {
    let out = mp_testkit::run_grpcurl(a);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcurl {a:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Replaces `path` atomically, as a shards file's writers should.
pub fn write_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The value of the `mp_gather_topology_generation` gauge.
pub fn generation(g: &GatherProc) -> Option<u64> {
    g.admin_get("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix("mp_gather_topology_generation "))
        .and_then(|v| v.trim().parse().ok())
}

/// TCP connections established to the local `port` (the server's side of
/// each, from /proc/net/tcp): what a leaf has open from mp-gather.
pub fn connections_to(port: u16) -> usize {
    connections_at(None, port)
}

/// [`connections_to`] the local address `ip` (any, when `None`) and `port`.
pub fn connections_at(ip: Option<std::net::Ipv4Addr>, port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp (Linux)");
    // local_address is HEX_IP:HEX_PORT, the address in the host's byte
    // order; state 01 is ESTABLISHED.
    let ip = ip.map(|ip| format!("{:08X}", u32::from_le_bytes(ip.octets())));
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some((at, p)) = f.get(1).and_then(|a| a.split_once(':')) else {
                return false;
            };
            f.get(3) == Some(&"01")
                && u16::from_str_radix(p, 16) == Ok(port)
                && ip.as_deref().is_none_or(|ip| ip == at)
        })
        .count()
}

/// Calls through `client` (at most 100 calls, 50 ms apart), each answered by
/// shard 0's replica whose `field` is `answered_by`, until `open()` counts
/// no connection; returns the last count.
pub async fn call_until_closed(
    client: &mut HandlerClient<Channel>,
    (field, answered_by): (&str, &str),
    open: impl Fn() -> usize,
) -> usize {
    let mut left = open();
    for i in 0..100 {
        let reply = call(client, json!(i)).await.expect("answered");
        assert_eq!(reply.body_json().unwrap()[0][field], answered_by);
        left = open();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    left
}

/// A front for `target` whose first connection goes away before taking a
/// call, as a server shutting down or shedding load does: it reads the
/// client's first request head, answers a GOAWAY naming no stream (so the call was certainly not processed) and closes. Later
/// connections are relayed to `target`. Returns its address and the count
/// of connections it accepted.
pub async fn goes_away_once(target: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (listener, addr) = bind().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            if count.fetch_add(1, Ordering::SeqCst) > 0 {
                tokio::spawn(async move {
                    if let Ok(mut t) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut s, &mut t).await;
                    }
                });
                continue;
            }
            // The preface; our SETTINGS (a client starts calls once they
            // came); then frames until the first HEADERS.
            let mut buf = vec![0u8; 24];
            if s.read_exact(&mut buf).await.is_err() {
                continue;
            }
            if s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.is_err() {
                continue;
            }
            loop {
                let mut head = [0u8; 9];
                if s.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; len];
                if s.read_exact(&mut payload).await.is_err() || head[3] == 1 {
                    break;
                }
            }
            // GOAWAY: last stream 0, NO_ERROR.
            let mut out = vec![0, 0, 8, 7, 0, 0, 0, 0, 0];
            out.extend_from_slice(&[0; 8]);
            let _ = s.write_all(&out).await;
            let _ = s.shutdown().await;
        }
    });
    (addr, accepted)
}
