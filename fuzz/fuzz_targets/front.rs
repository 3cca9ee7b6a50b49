//! Whole HTTP/2 connections to mp-gather's and mp-lb's front, as any client
//! (or attacker) may write them: gRPC calls with fuzzed heads, bodies and
//! flags, mixed with raw frames of every type.
//!
//! The servers run in this process, in front of a real `mp_sdk` echo leaf:
//! mp-gather with two shards on it (calls fan out), merging by `json-array`
//! or by a real `mp_sdk` merger; mp-lb with the leaf as its backend. Each input is one connection: written, half-closed, then read
//! until the server closes it. The properties: no panic anywhere (libFuzzer's
//! hook aborts on one in any thread), and the server closes a connection
//! whose client has finished writing within a few seconds (never a hang).
#![no_main]

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use clap::Parser;
use common::{frame, RawFrame};
use libfuzzer_sys::fuzz_target;
use mp_sidecar::hpack::Encoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Paths the calls take: the contract, the services every port serves, a
/// method of another proto (mp-gather forwards it, mp-lb relays it), and
/// a path that is not a gRPC method at all.
const PATHS: &[&str] = &[
    "/mp.v1.Handler/Handle",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/mp.v1.Merger/Merge",
    "/other.Service/Method",
    "/",
];

#[derive(Arbitrary, Debug)]
enum Part {
    /// A gRPC request head, then its body as DATA frames.
    Call {
        stream: u8,
        path: u8,
        /// `grpc-timeout`, `content-type` and such, or any extra field.
        extra: Vec<(Vec<u8>, Vec<u8>)>,
        /// Leave out `:method` etc.: heads that are not requests.
        bare: bool,
        body: Vec<Vec<u8>>,
        /// Frame each message with the gRPC prefix.
        grpc_framed: bool,
        end: bool,
    },
    /// Any frame.
    Frame(RawFrame),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Which server: see [`Servers::addr`].
    server: u8,
    /// Leave out the preface and first SETTINGS.
    no_preface: bool,
    parts: Vec<Part>,
}

struct Servers {
    rt: Runtime,
    /// mp-gather merging by `json-array`, mp-gather with a merger, mp-lb.
    addrs: [(SocketAddr, &'static str); 3],
}

impl Servers {
    fn addr(&self, which: u8) -> (SocketAddr, &'static str) {
        self.addrs[usize::from(which) % self.addrs.len()]
    }
}

/// mp-gather's arguments for two shards on `leaf` (and `more`).
fn gather_args(leaf: &str, more: &[&str]) -> mp_gather::config::Args {
    let mut args = vec![
        "mp-gather",
        "--shard",
        leaf,
        "--shard",
        leaf,
        "--leaf-timeout",
        "2s",
    ];
    args.extend_from_slice(more);
    mp_gather::config::Args::try_parse_from(args).unwrap()
}

fn servers() -> &'static Servers {
    static S: OnceLock<Servers> = OnceLock::new();
    S.get_or_init(|| {
        let rt = common::runtime();
        let addrs = rt.block_on(async {
            let leaf = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let leaf_addr = leaf.local_addr().unwrap().to_string();
            tokio::spawn(mp_sdk::serve_on(
                leaf,
                mp_sdk::json(|v: serde_json::Value| async move { Ok(v) }),
                std::future::pending(),
            ));
            // Counts the replies (a body that is not JSON fails the merge).
            let merger = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let merger_addr = merger.local_addr().unwrap().to_string();
            let count = mp_sdk::json_merger(|m: mp_sdk::Merge<serde_json::Value>| async move {
                Ok(m.replies().count())
            });
            tokio::spawn(
                mp_sdk::Server::new()
                    .merger(count)
                    .serve_on(merger, std::future::pending()),
            );
            let g = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let gather = g.local_addr().unwrap();
            let args = gather_args(&leaf_addr, &[]);
            tokio::spawn(mp_gather::run(args, g, None, std::future::pending()));
            let m = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let merging = m.local_addr().unwrap();
            let args = gather_args(&leaf_addr, &["--merge", &merger_addr]);
            tokio::spawn(mp_gather::run(args, m, None, std::future::pending()));
            let lb = common::spawn_lb(&leaf_addr, &[]).await;
            [
                (gather, "mp-gather (json-array)"),
                (merging, "mp-gather (a merger)"),
                (lb, "mp-lb"),
            ]
        });
        Servers { rt, addrs }
    })
}

fn bytes_of(input: &Input) -> Vec<u8> {
    let mut out = Vec::new();
    if !input.no_preface {
        out.extend_from_slice(PREFACE);
        frame(&mut out, 4, 0, 0, &[]);
    }
    let mut enc = Encoder::new();
    for part in &input.parts {
        match part {
            Part::Call {
                stream,
                path,
                extra,
                bare,
                body,
                grpc_framed,
                end,
            } => {
                let stream = u32::from(*stream) * 2 + 1;
                let mut block = Vec::new();
                enc.begin(&mut block);
                if !bare {
                    let path = PATHS[usize::from(*path) % PATHS.len()];
                    for (n, v) in [
                        (":method", "POST"),
                        (":scheme", "http"),
                        (":path", path),
                        (":authority", "fuzz"),
                        ("content-type", "application/grpc"),
                        ("te", "trailers"),
                    ] {
                        enc.encode(n.as_bytes(), v.as_bytes(), &mut block);
                    }
                }
                for (n, v) in extra.iter().take(8) {
                    enc.encode(n, v, &mut block);
                }
                let no_body = body.is_empty();
                let flags = 0x4 | if *end && no_body { 0x1 } else { 0 };
                frame(&mut out, 1, flags, stream, &block);
                for (i, msg) in body.iter().enumerate() {
                    let mut data = Vec::new();
                    if *grpc_framed {
                        data.push(0);
                        data.extend_from_slice(&(msg.len() as u32).to_be_bytes());
                    }
                    data.extend_from_slice(msg);
                    let last = i + 1 == body.len();
                    frame(&mut out, 0, if *end && last { 1 } else { 0 }, stream, &data);
                }
            }
            Part::Frame(f) => f.write(&mut out),
        }
    }
    out
}

fuzz_target!(|input: Input| {
    let s = servers();
    let (addr, name) = s.addr(input.server);
    let bytes = bytes_of(&input);
    s.rt.block_on(async {
        let mut c = TcpStream::connect(addr).await.unwrap();
        // The server may close before reading everything: that is fine.
        let _ = c.write_all(&bytes).await;
        let _ = c.shutdown().await;
        let mut buf = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await {
            Ok(_) => {}
            Err(_) => {
                panic!("{name} kept the connection open 5 s after the client finished writing")
            }
        }
    });
});
