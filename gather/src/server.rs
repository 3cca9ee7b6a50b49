//! The gather port: routes health and reflection to their services and every
//! other path to the gather; served by the sidecar's h2c loop with a bounded
//! graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use mp_sidecar::server::ServerConfig;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;
use tonic_reflection::pb::{v1, v1alpha};
use tower::ServiceExt;

use crate::gather::Gather;
use crate::grpc::BytesCodec;
use crate::reflect::{Reflection, V1Alpha, V1};

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
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let timeout = req
            .headers()
            .get(mp_sidecar::grpc::GRPC_TIMEOUT)
            .and_then(mp_sidecar::grpc::parse_timeout);
        let gather = self.gather;
        let unary = tower::service_fn(move |r: tonic::Request<Bytes>| {
            let gather = gather.clone();
            let path = path.clone();
            async move {
                gather
                    .handle(&path, timeout, r)
                    .await
                    .map(tonic::Response::new)
            }
        });
        tonic::server::Grpc::new(BytesCodec).unary(unary, req).await
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
