//! mp-lb's backend side: the relay reading whatever a backend writes back
//! (replies with fuzzed heads, bodies and trailers, raw frames of every
//! type), decoding its header blocks and relaying them to the client.
//!
//! mp-lb runs in this process with one backend: a listener of this process
//! that, on every connection, reads the preface and writes the bytes of the
//! input being run, then closes (at once or 50 ms later). Each input is 1 to 3 calls through mp-lb
//! (on `h2client`, 500 ms deadline). Health checks and ejection are off, so
//! every input reaches the backend. The properties: no panic, and every call
//! resolves within a second of its deadline.
#![no_main]

mod common;
mod replies;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mp_sidecar::h2client::{Client, ClientConfig, RequestHead};
use mp_sidecar::hpack::HeaderList;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

struct Lb {
    rt: Runtime,
    addr: SocketAddr,
    /// What the backend writes on its next connections, and whether it
    /// closes at once after (else 50 ms later, reading meanwhile).
    script: Arc<Mutex<(Vec<u8>, bool)>>,
}

fn lb() -> &'static Lb {
    static LB: OnceLock<Lb> = OnceLock::new();
    LB.get_or_init(|| {
        let rt = common::runtime();
        let script = Arc::new(Mutex::new((Vec::new(), true)));
        let addr = rt.block_on(async {
            let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let backend_addr = backend.local_addr().unwrap().to_string();
            let script = script.clone();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = backend.accept().await {
                    let (bytes, close) = script.lock().unwrap().clone();
                    tokio::spawn(async move {
                        let mut preface = [0u8; 24];
                        if s.read_exact(&mut preface).await.is_err() {
                            return;
                        }
                        let _ = s.write_all(&bytes).await;
                        if !close {
                            let mut sink = [0u8; 4096];
                            let _ = tokio::time::timeout(Duration::from_millis(50), async {
                                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                            })
                            .await;
                        }
                    });
                }
            });
            // Every input reaches the backend: no health checks, no ejection.
            let more = ["--health-interval", "0", "--eject-after", "4000000000"];
            let addr = common::spawn_lb(&backend_addr, &more).await;
            addr
        });
        Lb { rt, addr, script }
    })
}

fuzz_target!(|input: replies::Input| {
    let lb = lb();
    *lb.script.lock().unwrap() = (replies::bytes_of(&input), input.close);
    lb.rt.block_on(async {
        let client = Client::connect(lb.addr, "lb", &ClientConfig::default())
            .await
            .unwrap();
        let mut headers = HeaderList::new();
        headers.push(b"content-type", b"application/grpc");
        headers.push(b"te", b"trailers");
        let head = Arc::new(RequestHead {
            path: b"/mp.v1.Handler/Handle".to_vec(),
            headers,
        });
        replies::calls_resolve(
            &client,
            head,
            input.calls,
            Duration::from_millis(500),
            "through mp-lb",
        )
        .await;
    });
});
