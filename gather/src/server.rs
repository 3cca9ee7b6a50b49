//! The gather port: routes health and reflection to their services and every
//! other path to the gather; served by the sidecar's h2c loop with a bounded
//! graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use mp_sidecar::grpc;
use mp_sidecar::server::ServerConfig;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;
use tonic_reflection::pb::{v1, v1alpha};
use tower::ServiceExt;

use crate::gather::Gather;
use crate::reflect::{Reflection, V1Alpha, V1};

/// Largest request message accepted (tonic's default too).
pub const MAX_REQUEST: usize = 4 << 20;

const HEALTH: &str = "/grpc.health.v1.Health/";
const REFLECTION_V1: &str = "/grpc.reflection.v1.ServerReflection/";
const REFLECTION_V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/";

/// Everything the gather port answers. Cheap to clone (one per connection).
#[derive(Clone)]
pub struct GatherService {
    gather: Arc<Gather>,
    health: HealthServer<HealthService>,
    reflection_v1: v1::server_reflection_server::ServerReflectionServer<V1>,
    reflection_v1alpha: v1alpha::server_reflection_server::ServerReflectionServer<V1Alpha>,
}

impl GatherService {
    /// Routes health to `health`, reflection to `reflection`, the rest to
    /// `gather`.
    pub fn new(
        gather: Arc<Gather>,
        health: HealthServer<HealthService>,
        reflection: &Reflection,
    ) -> Self {
        GatherService {
            gather,
            health,
            reflection_v1: reflection.v1(),
            reflection_v1alpha: reflection.v1alpha(),
        }
    }

    /// Answers one HTTP/2 request.
    pub async fn route(self, req: http::Request<Incoming>) -> http::Response<Body> {
        let path = req.uri().path();
        let routed = if path.starts_with(HEALTH) {
            self.health.oneshot(req).await
        } else if path.starts_with(REFLECTION_V1) {
            self.reflection_v1.oneshot(req).await
        } else if path.starts_with(REFLECTION_V1ALPHA) {
            self.reflection_v1alpha.oneshot(req).await
        } else {
            return self.gather(req).await;
        };
        routed.unwrap_or_else(|never: Infallible| match never {})
    }

    async fn gather(self, req: http::Request<Incoming>) -> http::Response<Body> {
        let is_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if req.method() != http::Method::POST || !is_grpc {
            return plain(
                http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "mp-gather serves gRPC only: POST with content-type application/grpc\n",
            );
        }
        if let Some(enc) = req.headers().get("grpc-encoding") {
            if enc.as_bytes() != b"identity" {
                return grpc_error(
                    Code::Unimplemented,
                    "mp-gather accepts uncompressed messages only (grpc-encoding identity)",
                );
            }
        }
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let timeout = req
            .headers()
            .get(grpc::GRPC_TIMEOUT)
            .and_then(grpc::parse_timeout);
        let (parts, body) = req.into_parts();
        // The whole framed request: it is forwarded to the leaves as is.
        let framed = match read_request(body).await {
            Ok(f) => f,
            Err(s) => return grpc_error(s.code(), s.message()),
        };
        let metadata = tonic::metadata::MetadataMap::from_headers(parts.headers);
        match self.gather.handle(&path, timeout, metadata, framed).await {
            Ok(reply) => grpc_reply(reply),
            Err(s) => grpc_error(s.code(), s.message()),
        }
    }
}

/// Reads a unary request body: exactly one uncompressed gRPC frame of at most
/// [`MAX_REQUEST`] bytes. Returns the frame, header included.
async fn read_request(body: Incoming) -> Result<Bytes, Status> {
    let framed = Limited::new(body, MAX_REQUEST + 5)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Status::resource_exhausted(format!(
                    "the request is larger than the {MAX_REQUEST}-byte limit"
                ))
            } else {
                Status::cancelled(format!("reading the request failed: {e}"))
            }
        })?
        .to_bytes();
    if framed.len() < 5 {
        return Err(Status::internal(format!(
            "malformed request: {} bytes, less than a gRPC frame header",
            framed.len()
        )));
    }
    let declared = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
    if framed[0] != 0 {
        return Err(Status::internal(
            "malformed request: a compressed frame without grpc-encoding",
        ));
    }
    if declared > MAX_REQUEST {
        return Err(Status::resource_exhausted(format!(
            "the request message of {declared} bytes is larger than the {MAX_REQUEST}-byte limit"
        )));
    }
    if framed.len() - 5 != declared {
        return Err(Status::internal(format!(
            "malformed request: a frame of {declared} bytes with {} bytes of data (a unary call \
             carries exactly one message)",
            framed.len() - 5
        )));
    }
    Ok(framed)
}

/// A unary gRPC response: one message, then `grpc-status: 0`.
fn grpc_reply(message: Bytes) -> http::Response<Body> {
    let mut head = BytesMut::with_capacity(5);
    head.put_u8(0);
    head.put_u32(message.len() as u32);
    let mut trailers = http::HeaderMap::with_capacity(1);
    trailers.insert(grpc::GRPC_STATUS, http::HeaderValue::from_static("0"));
    let mut r = http::Response::new(Body::new(Reply {
        chunks: [Some(head.freeze()), Some(message)],
        trailers: Some(trailers),
    }));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(grpc::CONTENT_TYPE_GRPC),
    );
    r
}

/// A trailers-only gRPC error response.
fn grpc_error(code: Code, message: &str) -> http::Response<Body> {
    let mut r = http::Response::new(Body::empty());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(grpc::CONTENT_TYPE_GRPC),
    );
    grpc::set_status(h, code as u16, message);
    r
}

/// The body of [`grpc_reply`]: the frame header and the message as two
/// chunks (the message is not copied), then the trailers.
struct Reply {
    chunks: [Option<Bytes>; 2],
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let next = match this.chunks.iter_mut().find_map(Option::take) {
            Some(b) => Some(http_body::Frame::data(b)),
            None => this.trailers.take().map(http_body::Frame::trailers),
        };
        std::task::Poll::Ready(next.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.iter().all(Option::is_none) && self.trailers.is_none()
    }
}

fn plain(status: http::StatusCode, text: &'static str) -> http::Response<Body> {
    let mut r = http::Response::new(Body::new(http_body_util::Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl hyper::service::Service<http::Request<Incoming>> for GatherService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.route(req).await) })
    }
}

/// Serves `service` on `listener` (h2c, the sidecar's server loop) until
/// `shutdown` resolves; then stops accepting, lets the calls in flight finish
/// for at most `grace`, and returns.
pub async fn serve(
    listener: TcpListener,
    service: GatherService,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let cfg = ServerConfig {
        grace,
        ..ServerConfig::default()
    };
    mp_sidecar::server::serve(listener, service, cfg, shutdown).await;
}
