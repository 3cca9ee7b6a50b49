//! The gather port: every path but health and reflection is a unary call to
//! fan out, answered by the sidecar's frame-level server inside the
//! connection's task; health and reflection go to tonic; shutdown drains
//! within a bounded grace.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use http_body_util::BodyExt;
use mp_sidecar::grpc;
use mp_sidecar::h2server::{
    self, Failure, Fallback, FrontConfig, RequestBody, Unary, UnaryConn, UnaryFuture, UnaryRequest,
};
use mp_sidecar::server::ServerConfig;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;
use tonic_reflection::pb::{v1, v1alpha};
use tower::ServiceExt;

use crate::gather::Gather;
use crate::own::OwnLeaves;
use crate::reflect::{Reflection, V1Alpha, V1};

/// Largest request message accepted (tonic's default too).
pub const MAX_REQUEST: usize = 4 << 20;

const HEALTH: &str = "/grpc.health.v1.Health/";
const REFLECTION_V1: &str = "/grpc.reflection.v1.ServerReflection/";
const REFLECTION_V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/";

/// Everything the gather port answers: the gather itself (unary calls, taken
/// by the frame-level front in [`serve`]) and, on tonic, health and
/// reflection. Cheap to clone.
#[derive(Clone)]
pub struct GatherService {
    gather: Arc<Gather>,
    health: HealthServer<HealthService>,
    reflection_v1: v1::server_reflection_server::ServerReflectionServer<V1>,
    reflection_v1alpha: v1alpha::server_reflection_server::ServerReflectionServer<V1Alpha>,
}

impl GatherService {
    /// Health answered by `health`, reflection by `reflection`, every other
    /// call by `gather`.
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

    /// Answers one health or reflection request (a stream the front hands
    /// over); other paths are the front's and are UNIMPLEMENTED here.
    pub async fn route(self, req: http::Request<RequestBody>) -> http::Response<Body> {
        let path = req.uri().path();
        let routed = if path.starts_with(HEALTH) {
            self.health.oneshot(req).await
        } else if path.starts_with(REFLECTION_V1) {
            self.reflection_v1.oneshot(req).await
        } else if path.starts_with(REFLECTION_V1ALPHA) {
            self.reflection_v1alpha.oneshot(req).await
        } else {
            return grpc::error_response(
                grpc::code::UNIMPLEMENTED,
                &format!("mp-gather: {path} is served by the gather front"),
            );
        };
        routed.unwrap_or_else(|never: Infallible| match never {})
    }
}

/// The unary side of the gather port: every path but health and reflection
/// is fanned out, inside the connection's task.
struct Front {
    gather: Arc<Gather>,
}

impl Unary for Front {
    fn takes(&self, path: &[u8]) -> bool {
        ![HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA]
            .iter()
            .any(|p| path.starts_with(p.as_bytes()))
    }

    fn connection(&self) -> Box<dyn UnaryConn> {
        Box::new(FrontConn {
            gather: self.gather.clone(),
            own: Arc::new(OwnLeaves::default()),
        })
    }
}

/// One caller connection's side of the gather: its calls, and the leaf
/// connections it owns once busy, driven by its task.
struct FrontConn {
    gather: Arc<Gather>,
    own: Arc<OwnLeaves>,
}

impl UnaryConn for FrontConn {
    fn call(&mut self, req: UnaryRequest) -> UnaryFuture {
        let (gather, own) = (self.gather.clone(), self.own.clone());
        Box::pin(async move {
            gather
                .handle(&req.path, req.timeout, &req.headers, req.framed, &own)
                .await
                .map_err(|s| Failure {
                    code: s.code() as u16,
                    message: s.message().to_string(),
                })
        })
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        self.own.drive(cx)
    }

    fn flush(&mut self, cx: &mut Context<'_>) -> bool {
        // The requests of the leaf calls just made; their answers are read by
        // the next round's `poll`.
        self.own.send(cx)
    }
}

/// Serves `service` on `listener` until `shutdown` resolves; then stops
/// accepting, lets the calls in flight finish for at most `grace`, and
/// returns. Unary calls are answered by the frame-level server
/// ([`mp_sidecar::h2server`]); health and reflection by tonic.
pub async fn serve(
    listener: TcpListener,
    service: GatherService,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let cfg = FrontConfig {
        server: ServerConfig {
            grace,
            ..ServerConfig::default()
        },
        max_request: MAX_REQUEST,
        name: "mp-gather",
    };
    let unary = Arc::new(Front {
        gather: service.gather.clone(),
    });
    let fallback: Fallback = Arc::new(move |req| {
        let service = service.clone();
        Box::pin(async move {
            service
                .route(req)
                .await
                .map(|b| b.map_err(Into::into).boxed_unsync())
        })
    });
    h2server::serve(listener, unary, fallback, cfg, shutdown).await;
}
