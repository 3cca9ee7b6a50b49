//! What the connection targets share: their runtime, the HTTP/2 frame
//! writer, mp-lb started in process.

#![allow(dead_code)] // each target uses its own subset

use std::net::SocketAddr;

use arbitrary::Arbitrary;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

/// A two-worker runtime, as the servers run on, in a process that survives
/// writes to closed connections.
pub fn runtime() -> Runtime {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    // libFuzzer's main, not Rust's, starts this process, so SIGPIPE still
    // kills it: a write to a connection the peer closed would end the run.
    // A handler of tokio's takes the signal instead (and stays installed),
    // as Rust's main ignores it in the real binaries.
    let pipe = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())
            .expect("a SIGPIPE handler")
    });
    // Dropping the stream leaves the handler in place.
    drop(pipe);
    rt
}

/// Appends one frame; a payload past the 24-bit length is cut.
pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len().min(0xff_ffff) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(&payload[..len as usize]);
}

/// Any frame, as written: type (of the 10 defined and two unknown ones),
/// flags, stream, payload.
#[derive(Arbitrary, Debug)]
pub struct RawFrame {
    kind: u8,
    flags: u8,
    stream: u8,
    payload: Vec<u8>,
}

impl RawFrame {
    /// Appends it to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        frame(
            out,
            self.kind % 12,
            self.flags,
            u32::from(self.stream),
            &self.payload,
        );
    }
}

/// Starts mp-lb in this runtime, in front of `backend`, with `more` flags;
/// returns where it listens.
pub async fn spawn_lb(backend: &str, more: &[&str]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut args = vec!["mp-lb", "--listen", "127.0.0.1:0", "--backend", backend];
    args.extend_from_slice(more);
    let args = mp_lb::Args::try_parse_from(args).expect("mp-lb's flags");
    tokio::spawn(mp_lb::run(args, listener, None, std::future::pending()));
    addr
}
