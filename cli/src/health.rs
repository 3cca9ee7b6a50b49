//! Health checks (`grpc.health.v1.Health/Check`) and the `mp call` client:
//! how the CLI talks to the parts it started.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Why a call to a front failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The address is not a valid endpoint.
    #[error("invalid address {addr}: {message}")]
    Address {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// No connection could be made.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The server answered with an error status.
    #[error("{code:?}: {message}")]
    Status {
        /// The gRPC code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The reply's body is not JSON.
    #[error("the reply is not JSON: {0}")]
    NotJson(String),
}

async fn channel(addr: &str, timeout: Duration) -> Result<Channel, CallError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| CallError::Address {
            addr: addr.to_string(),
            message: e.to_string(),
        })?
        .connect_timeout(timeout)
        .timeout(timeout);
    endpoint.connect().await.map_err(|e| CallError::Connect {
        addr: addr.to_string(),
        message: source_chain(&e),
    })
}

// tonic's transport errors say "transport error" and keep the cause in the
// source chain: show the whole chain so "connection refused" is visible.
fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Checks the overall health (service `""`) of the gRPC server at `addr`
/// (`host:port`), within `timeout`. `Ok(())` only when it answers SERVING;
/// otherwise a short reason.
pub async fn check(addr: &str, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let ch = channel(addr, timeout).await.map_err(|e| e.to_string())?;
        let reply = HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|s| format!("health check: {:?}: {}", s.code(), s.message()))?;
        match reply.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("health check: {}", other.as_str_name())),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("health check: no answer within {timeout:?}")))
}

/// Calls `mp.v1.Handler/Handle` at `addr` with a JSON `body` and returns the
/// reply's JSON body.
pub async fn call_json(
    addr: &str,
    body: serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, CallError> {
    let ch = channel(addr, timeout).await?;
    let mut client = mp_proto::v1::handler_client::HandlerClient::new(ch);
    let reply = client
        .handle(mp_proto::v1::Request::json(body))
        .await
        .map_err(|s| CallError::Status {
            code: s.code(),
            message: s.message().to_string(),
        })?
        .into_inner();
    reply
        .body_json()
        .map_err(|e| CallError::NotJson(e.to_string()))
}

/// Asks the admin endpoint of mp-lb or mp-gather at `addr` (`host:port`)
/// whether it is ready (`GET /ready` answers 200): it has healthy backends
/// (mp-lb), or enough shards to call (mp-gather). Its gRPC health check alone
/// says only that it listens.
pub async fn ready(addr: &str, timeout: Duration) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("admin endpoint {addr}: {e}"))?;
        s.write_all(b"GET /ready HTTP/1.1\r\nHost: mp\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("admin endpoint {addr}: {e}"))?;
        let mut head = Vec::new();
        // The status line is all we need; the answer is a few bytes.
        let _ = s.take(256).read_to_end(&mut head).await;
        let head = String::from_utf8_lossy(&head);
        match head.split_whitespace().nth(1) {
            Some("200") => Ok(()),
            Some(code) => Err(format!("not ready ({code} from {addr}/ready)")),
            None => Err(format!("no HTTP answer from {addr}/ready")),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "readiness: no answer from {addr} within {timeout:?}"
            ))
        })
}

/// The text of `GET /metrics` (Prometheus) from the admin endpoint of mp-lb
/// or mp-gather at `addr` (`host:port`), at most 4 MiB of it.
pub async fn metrics(addr: &str, timeout: Duration) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("admin endpoint {addr}: {e}"))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: mp\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("admin endpoint {addr}: {e}"))?;
        let mut answer = Vec::new();
        s.take(4 << 20)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("admin endpoint {addr}: {e}"))?;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP answer from {addr}/metrics"))?;
        match head.split_whitespace().nth(1) {
            Some("200") => Ok(body.to_string()),
            code => Err(format!(
                "{} from {addr}/metrics",
                code.unwrap_or("no status")
            )),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("metrics: no answer from {addr} within {timeout:?}")))
}

/// A part's full health: its gRPC health check at `reach`, and for mp-lb and
/// mp-gather (which have an `admin` address) their readiness too.
pub async fn part_ready(reach: &str, admin: Option<&str>, timeout: Duration) -> Result<(), String> {
    check(reach, timeout).await?;
    match admin {
        Some(admin) => ready(admin, timeout).await,
        None => Ok(()),
    }
}
