//! Test support: in-process tonic backends of the tests' own echo service
//! (each on its own runtime, so it can be killed like a process), and an
//! in-process mp-lb in front of them.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub mod pb {
    tonic::include_proto!("lbtest.echo.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/echo_descriptor.bin"));
}

use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest};

/// What a backend saw.
#[derive(Default, Debug)]
pub struct Seen {
    pub calls: AtomicUsize,
    /// Streams whose client went away before the stream ended.
    pub cancelled: AtomicUsize,
}

#[derive(Clone)]
struct Svc {
    name: String,
    seen: Arc<Seen>,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

fn fail(r: &EchoRequest) -> Result<(), Status> {
    if r.fail_code != 0 {
        let mut st = Status::new(
            tonic::Code::from_i32(r.fail_code as i32),
            r.fail_message.clone(),
        );
        st.metadata_mut()
            .insert("x-trailer", "custom-trailer-value".parse().unwrap());
        return Err(st);
    }
    Ok(())
}

#[tonic::async_trait]
impl Echo for Svc {
    async fn say(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        let echo = req.metadata().get("x-echo").cloned();
        let timeout = req.metadata().get("grpc-timeout").cloned();
        let r = req.into_inner();
        if r.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(r.delay_ms.into())).await;
        }
        fail(&r)?;
        let mut res = Response::new(EchoReply {
            payload: r.payload,
            server: self.name.clone(),
            seq: 0,
        });
        if let Some(v) = echo {
            res.metadata_mut().insert("x-echo", v);
        }
        if let Some(v) = timeout {
            res.metadata_mut().insert("x-seen-timeout", v);
        }
        Ok(res)
    }

    type ExpandStream = ReplyStream;

    async fn expand(&self, req: Request<EchoRequest>) -> Result<Response<ReplyStream>, Status> {
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        let r = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let (name, seen) = (self.name.clone(), self.seen.clone());
        tokio::spawn(async move {
            for seq in 0..r.count {
                if r.delay_ms > 0 {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(r.delay_ms.into())) => {}
                        _ = tx.closed() => {
                            seen.cancelled.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
                let reply = EchoReply {
                    payload: r.payload.clone(),
                    server: name.clone(),
                    seq,
                };
                if tx.send(Ok(reply)).await.is_err() {
                    seen.cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            if let Err(st) = fail(&r) {
                let _ = tx.send(Err(st)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn collect(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        let mut s = req.into_inner();
        let mut payload = Vec::new();
        let mut n = 0;
        while let Some(r) = s.message().await? {
            payload.extend_from_slice(&r.payload);
            n += 1;
        }
        Ok(Response::new(EchoReply {
            payload,
            server: self.name.clone(),
            seq: n,
        }))
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        let mut s = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let name = self.name.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            while let Ok(Some(r)) = s.message().await {
                let reply = EchoReply {
                    payload: r.payload,
                    server: name.clone(),
                    seq,
                };
                seq += 1;
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A tonic backend (Echo, grpc.health.v1, reflection v1 + v1alpha) running on
/// its own runtime thread: `kill` drops every socket at once, like a crashed
/// process; `terminate` shuts down gracefully, like SIGTERM.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Seen>,
    pub health: tonic_health::server::HealthReporter,
    rt: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<std::sync::mpsc::Receiver<()>>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Backend::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    /// Starts on `addr` (e.g. the address of a backend that was killed).
    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        Backend::start_opts(name, addr, None)
    }

    /// Starts a backend that lets a connection have at most `streams` calls
    /// at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    pub fn start_limited(name: &str, streams: u32) -> Backend {
        Backend::start_opts(name, "127.0.0.1:0".parse().unwrap(), Some(streams))
    }

    fn start_opts(name: &str, addr: SocketAddr, max_streams: Option<u32>) -> Backend {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let std_listener = bind_retry(addr);
        let addr = std_listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (health_tx, health_rx) = std::sync::mpsc::channel();
        let svc = Svc {
            name: name.to_string(),
            seen: seen.clone(),
        };
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let (reporter, health) = tonic_health::server::health_reporter();
            health_tx.send(reporter).unwrap();
            let refl_v1 = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .unwrap();
            let refl_v1a = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1alpha()
                .unwrap();
            let echo = EchoServer::new(svc)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .max_concurrent_streams(max_streams)
                .add_service(health)
                .add_service(refl_v1)
                .add_service(refl_v1a)
                .add_service(echo)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
            let _ = done_tx.send(());
        });
        let health = health_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Backend {
            addr,
            name: name.to_string(),
            seen,
            health,
            rt: Some(rt),
            stop: Some(stop_tx),
            done: Some(done_rx),
        }
    }

    pub fn calls(&self) -> usize {
        self.seen.calls.load(Ordering::SeqCst)
    }

    /// Like SIGKILL: every connection and the listener close at once.
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Like SIGTERM to a tonic server: stop accepting, finish the calls in
    /// flight (GOAWAY to clients), then exit.
    pub fn terminate(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            if let Some(done) = self.done.take() {
                let _ = done.recv_timeout(Duration::from_secs(10));
            }
        }
        self.kill();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Binds `addr`, retrying for a while if a killed backend's port is still
/// held.
fn bind_retry(addr: SocketAddr) -> std::net::TcpListener {
    for _ in 0..100 {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true).unwrap();
                return l;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    panic!("cannot bind {addr}");
}

/// An in-process mp-lb.
pub struct Lb {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Lb {
    /// Starts mp-lb with `--backend` for each of `backends`, and `extra` flags.
    pub async fn start(backends: &[&Backend], extra: &[&str]) -> Lb {
        let mut argv: Vec<String> = vec!["mp-lb".into(), "--listen".into(), "127.0.0.1:0".into()];
        for b in backends {
            argv.push("--backend".into());
            argv.push(b.addr.to_string());
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        Lb::start_args(argv).await
    }

    pub async fn start_args(argv: Vec<String>) -> Lb {
        let args = mp_lb::Args::try_parse_from(argv).expect("valid flags");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            mp_lb::run(args, listener, Some(admin), async {
                let _ = rx.await;
            })
            .await
            .expect("mp-lb runs");
        });
        Lb {
            addr,
            admin: admin_addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> EchoClient<tonic::transport::Channel> {
        client(self.addr).await
    }

    /// Waits until mp-lb's /ready says 200 (some backend is healthy).
    pub async fn wait_ready(&self) {
        for _ in 0..250 {
            if admin_get(self.admin, "/ready").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("mp-lb not ready within 5 s");
    }

    /// Stops mp-lb as SIGTERM would and waits for it to finish draining.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("mp-lb stopped within 15 s")
            .unwrap();
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub async fn client(addr: SocketAddr) -> EchoClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect to mp-lb");
    EchoClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

pub fn say(payload: &[u8]) -> EchoRequest {
    EchoRequest {
        payload: payload.to_vec(),
        ..Default::default()
    }
}

/// GET over HTTP/1.1 on the admin port: (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf)).await;
    let status = buf.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// One gRPC call over a fresh raw HTTP/2 connection (no client-side timers or
/// retries): returns the response headers and trailers (empty for a
/// trailers-only response).
pub async fn raw_call(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    msg: &impl prost::Message,
) -> (http::HeaderMap, http::HeaderMap) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let body = msg.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let mut req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answer within 10 s")
        .unwrap();
    let (parts, body) = res.into_parts();
    let collected = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("body within 10 s")
        .unwrap();
    (
        parts.headers,
        collected.trailers().cloned().unwrap_or_default(),
    )
}

/// An HTTP/2 server that answers every request after `delay`, ignoring any
/// grpc-timeout (unlike tonic, which enforces it too).
pub async fn sleepy_backend(delay: Duration) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    let mut r = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                    r.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    r.headers_mut().insert("grpc-status", "0".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    addr
}
