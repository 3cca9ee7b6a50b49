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
    // The status line is all we need; the answer is a few bytes.
    match admin_get(addr, "/ready", 256, timeout).await? {
        (200, _) => Ok(()),
        (code, _) => Err(format!("not ready ({code} from {addr}/ready)")),
    }
}

/// The text of `GET /metrics` (OpenMetrics) from the admin endpoint of
/// mp-lb or mp-gather at `addr` (`host:port`): whole (it ends with `# EOF`,
/// so a series missing from it is missing from the endpoint), at most 4 MiB.
pub async fn metrics(addr: &str, timeout: Duration) -> Result<String, String> {
    match admin_get(addr, "/metrics", 4 << 20, timeout).await? {
        (200, body) if body.trim_end().ends_with("# EOF") => Ok(body),
        (200, _) => Err(format!("{addr}/metrics was cut short")),
        (code, _) => Err(format!("{code} from {addr}/metrics")),
    }
}

/// `GET path` from the admin endpoint at `addr`: the status and up to `limit`
/// bytes of the answer's body, within `timeout`.
async fn admin_get(
    addr: &str,
    path: &str,
    limit: u64,
    timeout: Duration,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("admin endpoint {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: mp\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("admin endpoint {addr}: {e}"))?;
        let mut answer = Vec::new();
        // A short read still has the status line, which is what counts.
        let _ = s.take(limit).read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        head.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .map(|code| (code, body.to_string()))
            .ok_or_else(|| format!("no HTTP answer from {addr}{path}"))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {addr}{path} within {timeout:?}")))
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

#[cfg(test)]
mod admin_tests {
    use super::*;

    /// Serves `answer` once on a loopback port, then closes.
    async fn serving(answer: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request).await;
            let _ = s.write_all(answer.as_bytes()).await;
        });
        addr
    }

    #[tokio::test]
    async fn metrics_are_whole_or_an_error() {
        let t = Duration::from_secs(5);
        let whole =
            "HTTP/1.1 200 OK\r\ncontent-length: 34\r\n\r\nmp_lb_endpoint_healthy 1\n# EOF\n";
        let text = metrics(&serving(whole).await, t).await.unwrap();
        assert!(text.starts_with("mp_lb_endpoint_healthy 1"), "{text}");
        let cut = "HTTP/1.1 200 OK\r\ncontent-length: 34\r\n\r\nmp_lb_endpoint_heal";
        let e = metrics(&serving(cut).await, t).await.unwrap_err();
        assert!(e.contains("cut short"), "{e}");
        let busy = "HTTP/1.1 503 Service Unavailable\r\n\r\n";
        let e = metrics(&serving(busy).await, t).await.unwrap_err();
        assert!(e.contains("503"), "{e}");
        let e = metrics(&serving("").await, t).await.unwrap_err();
        assert!(e.contains("no HTTP answer"), "{e}");
        let e = ready(&serving(busy).await, t).await.unwrap_err();
        assert!(e.contains("not ready (503"), "{e}");
        ready(&serving("HTTP/1.1 200 OK\r\n\r\nready").await, t)
            .await
            .unwrap();
    }
}
