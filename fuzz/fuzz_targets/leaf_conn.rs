//! The leaf side of mp-gather's data plane: `h2client` reading whatever a
//! leaf (or anything listening where a leaf should be) writes back: replies
//! with fuzzed heads, bodies and trailers, mixed with raw frames of every
//! type, then the connection kept or closed.
//!
//! Each input is one connection to a listener of this process that writes
//! the input's frames after the client's preface arrives, and 1 to 3 calls
//! on it with a 30 ms deadline. The properties: no panic, and every call
//! resolves (a reply or an error) within a second of its deadline.
#![no_main]

mod common;
mod replies;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mp_sidecar::h2client::{Client, ClientConfig, RequestHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(common::runtime)
}

fuzz_target!(|input: replies::Input| {
    let bytes = replies::bytes_of(&input);
    rt().block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let close = input.close;
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // The client's preface and SETTINGS first, as a server reads them.
            let mut preface = [0u8; 24];
            if s.read_exact(&mut preface).await.is_err() {
                return;
            }
            let _ = s.write_all(&bytes).await;
            if close {
                return;
            }
            // Kept open, read (and dropped) until the client is done.
            let mut sink = [0u8; 4096];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let client = Client::connect(addr, "leaf", &ClientConfig::default())
            .await
            .unwrap();
        let head = Arc::new(RequestHead {
            path: b"/mp.v1.Handler/Handle".to_vec(),
            headers: Default::default(),
        });
        replies::calls_resolve(
            &client,
            head,
            input.calls,
            Duration::from_millis(30),
            "on the leaf connection",
        )
        .await;
        drop(client);
        server.abort();
    });
});
