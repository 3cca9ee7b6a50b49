//! Active health checks: `grpc.health.v1.Health/Check` (the whole server, the
//! empty service name) on an endpoint's own pooled connections.
//!
//! A backend that does not implement the health service (UNIMPLEMENTED) is
//! taken as healthy: it answered, so it is up. That keeps `mp-lb` a drop-in
//! proxy for services that never heard of grpc.health.v1.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{header, Method, Request};
use http_body_util::BodyExt;
use tracing::debug;

use crate::body::Body;
use crate::grpc::{self, code};
use crate::pool::{stopped, Endpoint, PoolConfig};

/// Active health checking.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    /// Time between checks; `None` turns active checks off.
    pub interval: Option<Duration>,
    /// How long a check may take.
    pub timeout: Duration,
    /// Failed checks in a row that take an endpoint out of rotation.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that bring it back.
    pub healthy_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Some(Duration::from_secs(2)),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 2,
            healthy_threshold: 1,
        }
    }
}

/// The path of the standard health check.
pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// What one check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// SERVING (or the health service is not implemented, see the module doc).
    Serving,
    /// The backend answered something else (NOT_SERVING, an error status...).
    NotServing(String),
    /// No answer (no connection, timeout, transport error).
    Failed(String),
}

/// Runs one check of `ep` on one of its connections.
pub async fn check(ep: &Endpoint, timeout: Duration) -> Outcome {
    let Some(mut conn) = ep.conn() else {
        return Outcome::Failed("not connected".into());
    };
    let uri = format!("http://{}{CHECK_PATH}", ep.addr());
    // An empty HealthCheckRequest (service ""): flag 0, length 0.
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, grpc::CONTENT_TYPE_GRPC)
        .header(header::TE, "trailers")
        .header(grpc::GRPC_TIMEOUT, grpc::encode_timeout(timeout))
        .body(Body::from_bytes(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("valid request");
    let call = async {
        let res = conn.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = res.into_parts();
        if parts.status != http::StatusCode::OK {
            return Ok(Outcome::NotServing(format!("HTTP {}", parts.status)));
        }
        let collected = body.collect().await.map_err(|e| e.to_string())?;
        let status =
            grpc::status(&parts.headers).or_else(|| collected.trailers().and_then(grpc::status));
        let message = collected
            .trailers()
            .and_then(|t| t.get(grpc::GRPC_MESSAGE))
            .or_else(|| parts.headers.get(grpc::GRPC_MESSAGE))
            .map(grpc::decode_message)
            .unwrap_or_default();
        Ok::<_, String>(match status {
            Some(code::OK) => match serving_status(collected.to_bytes()) {
                Some(1) => Outcome::Serving,
                Some(s) => Outcome::NotServing(format!("health status {s}")),
                None => Outcome::NotServing("malformed HealthCheckResponse".into()),
            },
            Some(code::UNIMPLEMENTED) => Outcome::Serving,
            Some(c) => Outcome::NotServing(format!("{} {message}", code::name(c))),
            None => Outcome::NotServing("no grpc-status".into()),
        })
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Failed(format!("no answer within {timeout:?}")),
    }
}

/// The `status` field (1, varint) of a gRPC-framed HealthCheckResponse.
fn serving_status(mut b: Bytes) -> Option<u64> {
    if b.len() < 5 || b[0] != 0 {
        return None;
    }
    b.advance(1);
    let len = b.get_u32() as usize;
    let mut msg = b.get(..len)?;
    let mut status = 0; // A missing field is its default, UNKNOWN (0).
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        match key & 7 {
            0 => {
                let v = varint(&mut msg)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let n = usize::try_from(varint(&mut msg)?).ok()?;
                msg = msg.get(n..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The health loop of one endpoint, until it is removed. Also expires
/// ejections and keeps the health gauge current.
pub(crate) async fn run(ep: Arc<Endpoint>, cfg: Arc<PoolConfig>) {
    let mut stop = ep.stopped();
    let h = &cfg.health;
    let tick = h.interval.unwrap_or(Duration::from_secs(1));
    let (mut fails, mut passes) = (0u32, 0u32);
    loop {
        if h.interval.is_some() && ep.connected_count() > 0 {
            let outcome = tokio::select! {
                o = check(&ep, h.timeout) => o,
                _ = stopped(&mut stop) => return,
            };
            if outcome == Outcome::Serving {
                fails = 0;
                passes += 1;
                if passes >= h.healthy_threshold {
                    ep.set_active_ok(true);
                }
            } else {
                debug!(endpoint = %ep.addr(), ?outcome, "health check failed");
                passes = 0;
                fails += 1;
                if fails >= h.unhealthy_threshold {
                    ep.set_active_ok(false);
                }
            }
        }
        ep.refresh();
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_serving_status() {
        let frame = |msg: &[u8]| {
            let mut v = vec![0, 0, 0, 0, msg.len() as u8];
            v.extend_from_slice(msg);
            Bytes::from(v)
        };
        assert_eq!(serving_status(frame(&[0x08, 0x01])), Some(1));
        assert_eq!(serving_status(frame(&[0x08, 0x02])), Some(2));
        assert_eq!(serving_status(frame(&[])), Some(0));
        assert_eq!(
            serving_status(frame(&[0x12, 0x01, b'x', 0x08, 0x01])),
            Some(1)
        );
        assert_eq!(serving_status(frame(&[0x08])), None);
        assert_eq!(serving_status(Bytes::from_static(&[1, 0, 0, 0, 0])), None);
    }
}
