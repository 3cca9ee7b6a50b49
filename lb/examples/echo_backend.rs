//! A small tonic echo server (`lbtest.echo.v1.Echo`, the tests' proto) used as
//! the backend of the load-balancer benchmark (`bench/lb/run.sh`).
//!
//! Usage: `echo_backend PORT [HOST]` (h2c). One runtime thread by default
//! (`ECHO_THREADS=N` for more): three of them share one core in the benchmark.
//! Serves reflection (v1, v1alpha) and grpc.health.v1 like any mp backend.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

mod pb {
    tonic::include_proto!("lbtest.echo.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/echo_descriptor.bin"));
}

use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest};

struct Svc {
    name: String,
}

type Replies = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Svc {
    async fn say(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(EchoReply {
            payload: req.into_inner().payload,
            server: self.name.clone(),
            seq: 0,
        }))
    }

    type ExpandStream = Replies;

    async fn expand(&self, req: Request<EchoRequest>) -> Result<Response<Replies>, Status> {
        let r = req.into_inner();
        let name = self.name.clone();
        let replies = (0..r.count).map(move |seq| {
            Ok(EchoReply {
                payload: r.payload.clone(),
                server: name.clone(),
                seq,
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(replies))))
    }

    async fn collect(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let mut s = req.into_inner();
        let (mut payload, mut n) = (Vec::new(), 0);
        while let Some(m) = s.message().await? {
            payload.extend_from_slice(&m.payload);
            n += 1;
        }
        Ok(Response::new(EchoReply {
            payload,
            server: self.name.clone(),
            seq: n,
        }))
    }

    type ChatStream = Replies;

    async fn chat(
        &self,
        _req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Replies>, Status> {
        Err(Status::unimplemented("the benchmark backend does not chat"))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .ok_or("usage: echo_backend PORT [HOST]")?
        .parse()?;
    let host = args.next().unwrap_or_else(|| "127.0.0.1".into());
    let addr: std::net::SocketAddr = format!("{host}:{port}").parse()?;
    let threads: usize = std::env::var("ECHO_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let refl_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let refl_v1a = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let (_reporter, health) = tonic_health::server::health_reporter();
        eprintln!("echo_backend listening on {addr}");
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(refl_v1)
            .add_service(refl_v1a)
            .add_service(EchoServer::new(Svc {
                name: addr.to_string(),
            }))
            .serve_with_shutdown(addr, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
