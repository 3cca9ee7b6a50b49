//! One gRPC call to a leaf on the sidecar's connection pool, written by hand
//! on hyper's HTTP/2 client: the request message is framed once per fan-out
//! and the same bytes are shared by every leaf call (no copy per leaf); the
//! reply is read with a size limit, its status taken from the trailers (or a
//! trailers-only response).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use mp_sidecar::body::Body;
use mp_sidecar::grpc;
use mp_sidecar::pool::{self, Endpoint};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::shard::Shard;

/// Largest reply message accepted from a leaf (tonic's default too).
pub const MAX_REPLY: usize = 4 << 20;
/// How long a call waits for a shard whose replicas are all still connecting.
const STARTING_WAIT: Duration = Duration::from_secs(1);
/// Replicas tried for one call whose request never left (connection closing).
const MAX_ATTEMPTS: usize = 8;

/// What every leaf call of one fan-out shares.
#[derive(Debug)]
pub struct Outgoing {
    /// The method path.
    pub path: PathAndQuery,
    /// The request message in its gRPC frame.
    pub framed: Bytes,
    /// content-type, te and the caller's forwarded metadata.
    pub headers: HeaderMap,
}

impl Outgoing {
    /// The shared parts of calling `path` with the request message in its
    /// gRPC frame (`framed`, as the caller sent it) and the caller's
    /// forwardable metadata as `headers`.
    pub fn new(path: PathAndQuery, framed: Bytes, mut headers: HeaderMap) -> Self {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(grpc::CONTENT_TYPE_GRPC),
        );
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        Outgoing {
            path,
            framed,
            headers,
        }
    }

    fn request(&self, shard: &Shard, deadline: Instant) -> Request<Body> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(shard.authority.clone());
        parts.path_and_query = Some(self.path.clone());
        let mut req = Request::new(Body::from_bytes(self.framed.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
        *req.headers_mut() = self.headers.clone();
        // The leaf learns its deadline, so it can give up too.
        req.headers_mut().insert(
            grpc::GRPC_TIMEOUT,
            grpc::encode_timeout(deadline.saturating_duration_since(Instant::now())),
        );
        req
    }
}

/// The next available replica of `shard` (round robin), other than `avoid`.
pub fn pick(shard: &Shard, avoid: Option<&Arc<Endpoint>>) -> Option<Arc<Endpoint>> {
    let Some(avoid) = avoid else {
        return shard.pool.pick();
    };
    // Round robin moves on at every pick: a few tries find another replica
    // whenever one is available.
    (0..4)
        .filter_map(|_| shard.pool.pick())
        .find(|e| !Arc::ptr_eq(e, avoid))
}

/// Calls one replica of `shard` (`first` if given, else the next one; never
/// `avoid`) and reads its reply. Returns the reply message and the replica
/// that answered.
pub async fn call(
    shard: &Shard,
    out: &Outgoing,
    deadline: Instant,
    first: Option<Arc<Endpoint>>,
    avoid: Option<&Arc<Endpoint>>,
) -> (Result<Bytes, Status>, Option<Arc<Endpoint>>) {
    let start = Instant::now();
    match send(shard, out, deadline, first, avoid).await {
        Err(s) => (Err(s), None),
        Ok((ep, response)) => {
            let reply = read_reply(response).await;
            let code = reply.as_ref().map_or_else(|s| s.code() as u16, |_| 0);
            // Metrics and passive health (UNAVAILABLE streaks eject).
            ep.record(code, start.elapsed());
            (reply, Some(ep))
        }
    }
}

async fn send(
    shard: &Shard,
    out: &Outgoing,
    deadline: Instant,
    mut next: Option<Arc<Endpoint>>,
    avoid: Option<&Arc<Endpoint>>,
) -> Result<(Arc<Endpoint>, Response<Incoming>), Status> {
    let mut req = out.request(shard, deadline);
    let mut waited = false;
    for _ in 0..MAX_ATTEMPTS {
        let ep = match next.take().or_else(|| pick(shard, avoid)) {
            Some(ep) => ep,
            // Just started: the connections may be a moment away.
            None if !waited && avoid.is_none() => {
                waited = true;
                shard.pool.wait_available(STARTING_WAIT).await;
                continue;
            }
            None => break,
        };
        let Some(mut conn) = ep.conn() else {
            continue;
        };
        ep.metrics().request();
        match conn.try_send_request(req).await {
            Ok(response) => return Ok((ep, response)),
            Err(mut e) => match e.take_message() {
                // Never written: safe to send to another replica.
                Some(r) => req = r,
                // Written, but refused unprocessed (REFUSED_STREAM, beyond a
                // GOAWAY: a replica shutting down): the body is in memory, so
                // the same call goes to another replica, as the pool does.
                None if pool::never_processed(e.error()) => {
                    req = out.request(shard, deadline);
                }
                None => {
                    ep.record(grpc::code::UNAVAILABLE, Duration::ZERO);
                    return Err(Status::unavailable(format!(
                        "{}: {}",
                        ep.addr(),
                        e.into_error()
                    )));
                }
            },
        }
    }
    // A name that does not resolve leaves the pool empty: say so, naming it.
    let mut why = shard.pool.describe();
    if shard.pool.endpoints().is_empty() {
        if let Some(note) = shard.unresolved().await {
            why = format!("{why}; {note}");
        }
    }
    Err(Status::unavailable(why))
}

/// The reply message of a leaf's response, or its status.
pub async fn read_reply(response: Response<Incoming>) -> Result<Bytes, Status> {
    let (parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        return Err(from_http(parts.status));
    }
    // Trailers-only: the status is in the headers and there is no message.
    if let Some(code) = grpc::status(&parts.headers) {
        return Err(status(code, &parts.headers, "a status without a reply"));
    }
    let collected = Limited::new(body, MAX_REPLY + 5)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Status::resource_exhausted(format!("the reply is larger than {MAX_REPLY} bytes"))
            } else {
                Status::unavailable(format!("the reply broke off: {e}"))
            }
        })?;
    let code = collected.trailers().and_then(grpc::status);
    match code {
        Some(0) => {}
        Some(code) => {
            let trailers = collected.trailers().cloned().unwrap_or_default();
            return Err(status(code, &trailers, ""));
        }
        None => return Err(Status::internal("the reply ended without a grpc-status")),
    }
    let mut buf = collected.to_bytes();
    if buf.len() < 5 {
        return Err(Status::internal("the reply has no message"));
    }
    let compressed = buf.get_u8();
    let len = buf.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::internal(
            "the reply is compressed, though no compression was offered",
        ));
    }
    if buf.len() != len {
        return Err(Status::internal(format!(
            "malformed reply: a frame of {len} bytes with {} bytes of data",
            buf.len()
        )));
    }
    Ok(buf)
}

fn status(code: u16, headers: &HeaderMap, fallback: &str) -> Status {
    let message = headers
        .get(grpc::GRPC_MESSAGE)
        .map(grpc::decode_message)
        .unwrap_or_else(|| fallback.to_string());
    Status::new(Code::from_i32(i32::from(code)), message)
}

/// The gRPC status of a non-200 HTTP response (gRPC's HTTP-to-status map).
fn from_http(s: StatusCode) -> Status {
    let code = match s.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("the leaf answered HTTP {s}"))
}
