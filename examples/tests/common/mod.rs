//! What the example tests share: starting an example process on a free port
//! and waiting until it answers.

#![allow(dead_code)] // each test file uses its own subset

use mp_testkit::{free_port, wait_for_port, ChildGuard};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// A running handler process and where it listens.
pub struct Running {
    /// Killed when dropped.
    pub child: ChildGuard,
    /// `127.0.0.1:port`.
    pub addr: SocketAddr,
}

impl Running {
    /// `127.0.0.1:port` as a string, for grpcurl.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

/// Starts the Rust example `name` with `env` on a free loopback port.
pub fn start_example(name: &str, env: &[(&str, &str)]) -> Running {
    start(Command::new(mp_testkit::example(name)), env)
}

/// Starts `cmd` with `MP_HOST=127.0.0.1`, `MP_PORT=<free port>` and `env`,
/// and waits (at most 30 s) until its port accepts connections.
pub fn start(mut cmd: Command, env: &[(&str, &str)]) -> Running {
    let port = free_port();
    cmd.env("MP_HOST", "127.0.0.1")
        .env("MP_PORT", port.to_string())
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = ChildGuard::spawn(&mut cmd);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    if !wait_for_port(addr, Duration::from_secs(30)) {
        let status = child.wait_timeout(Duration::ZERO);
        panic!("{cmd:?} did not listen on {addr} within 30 s (exit status: {status:?})");
    }
    Running { child, addr }
}

/// Runs grpcurl and returns its stdout, failing the test with its stderr
/// when it exits non-zero.
pub fn grpcurl_ok(args: &[&str]) -> String {
    let out = mp_testkit::run_grpcurl(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs grpcurl expecting a failed call; returns its stderr.
pub fn grpcurl_err(args: &[&str]) -> String {
    let out = mp_testkit::run_grpcurl(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "grpcurl {args:?} should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// Parses grpcurl's JSON output.
pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("grpcurl printed non-JSON ({e}): {s}"))
}

/// The repository's proto/ directory (for grpcurl `-import-path`).
pub fn proto_dir() -> std::path::PathBuf {
    mp_testkit::repo_root().join("proto")
}

/// A tonic client of `mp.v1.Handler` on `addr`.
pub async fn handler_client(
    addr: SocketAddr,
) -> mp_proto::v1::handler_client::HandlerClient<tonic::transport::Channel> {
    mp_proto::v1::handler_client::HandlerClient::connect(format!("http://{addr}"))
        .await
        // Debug, not Display: tonic's Display says only "transport error".
        .unwrap_or_else(|e| panic!("connect to {addr}: {e:?}"))
}

/// A tonic client of `mp.v1.Merger` on `addr`.
pub async fn merger_client(
    addr: SocketAddr,
) -> mp_proto::v1::merger_client::MergerClient<tonic::transport::Channel> {
    mp_proto::v1::merger_client::MergerClient::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e:?}"))
}

/// A request with a timeout, so no test waits forever on a stuck server.
pub fn timed<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(Duration::from_secs(15));
    r
}

/// Starts the Python example `script` (examples/python/) with `env`.
pub fn start_python(script: &str, env: &[(&str, &str)]) -> Running {
    let path = mp_testkit::repo_root().join("examples/python").join(script);
    let mut cmd = Command::new("python3");
    cmd.arg(path).env("MP_LOG_LEVEL", "WARNING");
    start(cmd, env)
}
