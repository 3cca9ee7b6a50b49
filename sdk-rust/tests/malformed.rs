//! Bytes that are not a valid message, and messages over the size limit, get
//! a gRPC status, never a panic or a hang, and the server keeps serving.

use bytes::{Buf, BufMut};
use mp_sdk::proto::v1::handler_client::HandlerClient;
use mp_sdk::{Request, Server};
use prost::Message;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends and receives message bytes as they are, so a test can send what no
/// generated client would.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;
#[derive(Debug)]
struct RawEncoder;
#[derive(Debug)]
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

async fn start(server: Server) -> (SocketAddr, Channel) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve_on(listener, std::future::pending()));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    (addr, channel)
}

async fn send_raw(channel: Channel, bytes: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/mp.v1.Handler/Handle");
    grpc.unary(tonic::Request::new(bytes), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

fn echo() -> Server {
    Server::new().handler(mp_sdk::json(|v: serde_json::Value| async move { Ok(v) }))
}

#[tokio::test]
async fn bytes_that_are_not_a_request_get_a_status() {
    let (_addr, channel) = start(echo()).await;
    // Field 1 (body) claims 200 bytes and holds 3: not a valid protobuf.
    let status = send_raw(channel.clone(), vec![0x0a, 200, 1, 2, 3])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("decode"), "{status:?}");

    // The same connection still serves a good request, sent the same raw way.
    let good = Request::json(serde_json::json!({"ok": true})).encode_to_vec();
    let reply = send_raw(channel, good)
        .await
        .expect("a valid request works");
    let reply = mp_sdk::Reply::decode(reply.as_slice()).unwrap();
    assert_eq!(reply.body_json().unwrap(), serde_json::json!({"ok": true}));
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_and_the_default_is_roomy() {
    // The limit applies whatever the order of the builder calls.
    let (_, limited) = start(echo().max_message_size(1024)).await;
    let (_, default) = start(echo()).await;
    let big = Request::json(serde_json::json!("x".repeat(4096)));
    let status = HandlerClient::new(limited.clone())
        .handle(big.clone())
        .await
        .unwrap_err();
    // gRPC suggests RESOURCE_EXHAUSTED; tonic says OUT_OF_RANGE.
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(status.message().contains("too large"), "{status:?}");
    let small = Request::json(serde_json::json!("x".repeat(100)));
    HandlerClient::new(limited).handle(small).await.unwrap();
    // The default limit (16 MiB) takes 8 MiB, which gRPC's usual 4 MiB would not.
    let huge = Request::json(serde_json::json!("x".repeat(8 << 20)));
    HandlerClient::new(default)
        .max_decoding_message_size(32 << 20)
        .max_encoding_message_size(32 << 20)
        .handle(huge)
        .await
        .unwrap();
}
