//! The per-call path of the proxy.
//!
//! A call is forwarded as it came: method, path, headers, and the request
//! body streamed frame by frame; the backend's response head, body and
//! trailers come back the same way. Nothing is decoded or buffered, so any
//! gRPC service (or any HTTP/2 request) passes.
//!
//! What the proxy adds: `grpc-timeout` is enforced here too (expiry answers
//! DEADLINE_EXCEEDED and resets the backend stream), and every error of its
//! own is a proper trailers-only gRPC response whose message starts with
//! `mp-lb:`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use mp_sidecar::body::Body;
use mp_sidecar::grpc::{self, code};
use mp_sidecar::metrics::{EndpointMetrics, PoolMetrics};
use mp_sidecar::pool::{Endpoint, Pool, SendError, Sent};
use tokio::time::{Instant, Sleep};
use tracing::debug;

/// The proxy: a cheap-to-clone handle on the pool it forwards to.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    /// Calls answered by the proxy itself (no endpoint took them).
    local: EndpointMetrics,
}

impl Proxy {
    /// A proxy forwarding to `pool`; its own answers are counted in `metrics`
    /// under `endpoint="none"`.
    pub fn new(pool: Pool, metrics: &PoolMetrics) -> Proxy {
        Proxy {
            inner: Arc::new(Inner {
                pool,
                local: metrics.endpoint("none"),
            }),
        }
    }

    /// The proxy as a hyper service.
    pub fn service(&self) -> ProxyService {
        ProxyService(self.clone())
    }

    /// Forwards one call and returns the response to give the client.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        if req.version() != Version::HTTP_2 {
            return http1_rejected();
        }
        let deadline = req
            .headers()
            .get(grpc::GRPC_TIMEOUT)
            .and_then(grpc::parse_timeout)
            .map(|t| start + t.min(Duration::from_secs(86_400 * 365)));
        let (parts, body) = req.into_parts();
        // A unary call's message usually came with its headers: holding it
        // lets the pool resend the call if a backend refuses it unprocessed.
        let body = match Body::settle(body).await {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("mp-lb: cannot read the request: {e}");
                return self.local(start, code::CANCELLED, &msg);
            }
        };
        let send = self.inner.pool.send(Request::from_parts(parts, body));
        let sent = match deadline {
            None => send.await,
            Some(d) => match tokio::time::timeout_at(d, send).await {
                Ok(r) => r,
                // Dropping the send resets the backend's stream.
                Err(_) => return self.local(start, code::DEADLINE_EXCEEDED, DEADLINE_MSG),
            },
        };
        match sent {
            Ok(Sent { endpoint, response }) => {
                let (parts, body) = response.into_parts();
                let header_status = grpc::status(&parts.headers);
                let fwd = Forward {
                    inner: body,
                    endpoint,
                    start,
                    header_status,
                    deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
                    done: false,
                };
                let mut body = ProxyBody::forward(fwd);
                body.finish_if_ended();
                Response::from_parts(parts, body)
            }
            Err(SendError::NoEndpoint(msg)) => {
                self.local(start, code::UNAVAILABLE, &format!("mp-lb: {msg}"))
            }
            Err(SendError::Backend { endpoint, source }) => {
                debug!(endpoint = %endpoint.addr(), error = %source, "call failed");
                endpoint.record(code::UNAVAILABLE, start.elapsed());
                grpc::error_response(
                    code::UNAVAILABLE,
                    &format!("mp-lb: backend {} failed: {source}", endpoint.addr()),
                )
            }
        }
    }

    fn local(&self, start: Instant, status: u16, msg: &str) -> Response<ProxyBody> {
        self.inner.local.request();
        self.inner.local.response(status, start.elapsed());
        grpc::error_response(status, msg)
    }
}

const DEADLINE_MSG: &str = "mp-lb: deadline exceeded (grpc-timeout)";

fn http1_rejected() -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::local(Body::from_bytes(Bytes::from_static(
        b"mp-lb speaks HTTP/2 (gRPC); this request was HTTP/1.x\n",
    ))));
    *res.status_mut() = StatusCode::HTTP_VERSION_NOT_SUPPORTED;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// [`Proxy`] as a `hyper` service.
#[derive(Clone, Debug)]
pub struct ProxyService(Proxy);

impl Service<Request<Incoming>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let p = self.0.clone();
        Box::pin(async move { Ok(p.handle(req).await) })
    }
}

/// The body of a response the proxy gives: a backend's, forwarded, or one
/// of its own.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Forward(Forward),
    Local(Body),
}

impl Default for ProxyBody {
    fn default() -> Self {
        ProxyBody::local(Body::Empty)
    }
}

impl ProxyBody {
    fn local(b: Body) -> Self {
        ProxyBody {
            kind: Kind::Local(b),
        }
    }

    fn forward(f: Forward) -> Self {
        ProxyBody {
            kind: Kind::Forward(f),
        }
    }

    /// A trailers-only backend response ends with its head: record it now.
    fn finish_if_ended(&mut self) {
        if let Kind::Forward(f) = &mut self.kind {
            if http_body::Body::is_end_stream(&f.inner) {
                let s = f.header_status.unwrap_or(code::UNKNOWN);
                f.finish(s);
            }
        }
    }
}

/// A backend's response body on its way to the client; records the call's
/// gRPC status and duration when it ends, however it ends.
#[derive(Debug)]
struct Forward {
    inner: Incoming,
    endpoint: Arc<Endpoint>,
    start: Instant,
    /// `grpc-status` of the response head (a trailers-only response).
    header_status: Option<u16>,
    deadline: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl Forward {
    fn finish(&mut self, status: u16) {
        if !self.done {
            self.done = true;
            self.endpoint.record(status, self.start.elapsed());
        }
    }

    /// Trailers ending the call with a status of the proxy's own.
    fn own_trailers(&mut self, status: u16, msg: &str) -> Frame<Bytes> {
        self.finish(status);
        let mut t = HeaderMap::new();
        grpc::set_status(&mut t, status, msg);
        Frame::trailers(t)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or reset the stream).
        self.finish(code::CANCELLED);
    }
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let f = match &mut self.get_mut().kind {
            Kind::Local(b) => return Pin::new(b).poll_frame(cx),
            Kind::Forward(f) => f,
        };
        if f.done {
            return Poll::Ready(None);
        }
        if let Some(d) = &mut f.deadline {
            if d.as_mut().poll(cx).is_ready() {
                // Our trailers end the call; dropping `inner` later resets
                // the backend's stream.
                return Poll::Ready(Some(Ok(
                    f.own_trailers(code::DEADLINE_EXCEEDED, DEADLINE_MSG)
                )));
            }
        }
        match ready!(Pin::new(&mut f.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(t) = frame.trailers_ref() {
                    f.finish(grpc::status(t).unwrap_or(code::UNKNOWN));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                // The backend's stream broke mid-call: end it as a gRPC call
                // rather than a bare reset, so the client sees why.
                let msg = format!("mp-lb: backend {} stream failed: {e}", f.endpoint.addr());
                Poll::Ready(Some(Ok(f.own_trailers(code::UNAVAILABLE, &msg))))
            }
            None => {
                let s = f.header_status.unwrap_or(code::UNKNOWN);
                f.finish(s);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(b) => b.is_end_stream(),
            Kind::Forward(f) => f.done || f.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(b) => b.size_hint(),
            Kind::Forward(f) if f.deadline.is_some() => SizeHint::default(),
            Kind::Forward(f) => f.inner.size_hint(),
        }
    }
}
