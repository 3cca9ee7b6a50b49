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

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use mp_sidecar::body::Body;
use mp_sidecar::grpc::{self, code};
use mp_sidecar::metrics::{CallHandles, CallMetrics, EndpointMetrics, PoolMetrics};
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
    methods: Methods,
}

/// How many distinct methods get series of their own; the paths of a drop-in
/// proxy come from clients, so the count must be bounded.
const MAX_METHODS: usize = 512;

/// Per-method call metrics: a copy-on-write map, so the call path only reads.
#[derive(Debug)]
struct Methods {
    calls: CallMetrics,
    map: ArcSwap<HashMap<Box<str>, Arc<CallHandles>>>,
    other: Arc<CallHandles>,
}

impl Methods {
    fn new(calls: CallMetrics) -> Methods {
        Methods {
            other: Arc::new(calls.handles("other")),
            calls,
            map: ArcSwap::default(),
        }
    }

    /// The handles for `path` (`/package.Service/Method`); anything that is
    /// not a gRPC path, and new methods past the limit, count as `other`.
    fn get(&self, path: &str) -> Arc<CallHandles> {
        if let Some(h) = self.map.load().get(path) {
            return h.clone();
        }
        let grpc_path = path.len() <= 256
            && path.starts_with('/')
            && path[1..].split('/').count() == 2
            && !path.ends_with('/');
        if !grpc_path {
            return self.other.clone();
        }
        let mut found = None;
        self.map.rcu(|m| {
            if let Some(h) = m.get(path) {
                found = Some(h.clone());
                return m.clone();
            }
            if m.len() >= MAX_METHODS {
                found = Some(self.other.clone());
                return m.clone();
            }
            let h = Arc::new(self.calls.handles(path));
            found = Some(h.clone());
            let mut next = HashMap::clone(m);
            next.insert(path.into(), h);
            Arc::new(next)
        });
        found.unwrap_or_else(|| self.other.clone())
    }
}

impl Proxy {
    /// A proxy forwarding to `pool`; its own answers are counted in `metrics`
    /// under `endpoint="none"`, every call also in `methods` by its path.
    pub fn new(pool: Pool, metrics: &PoolMetrics, methods: CallMetrics) -> Proxy {
        Proxy {
            inner: Arc::new(Inner {
                pool,
                local: metrics.endpoint("none"),
                methods: Methods::new(methods),
            }),
        }
    }

    /// The proxy as a hyper service. The call future is not boxed: one
    /// allocation less per call.
    pub fn service(
        &self,
    ) -> impl Service<
        Request<Incoming>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
           + Send
           + Sync
           + 'static {
        let p = self.clone();
        hyper::service::service_fn(move |req| {
            let p = p.clone();
            async move { Ok::<_, Infallible>(p.handle(req).await) }
        })
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
        let method = self.inner.methods.get(parts.uri.path());
        method.request();
        // A unary call's message usually came with its headers: holding it
        // lets the pool resend the call if a backend refuses it unprocessed.
        let body = match Body::settle(body).await {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("mp-lb: cannot read the request: {e}");
                return self.local(start, &method, code::CANCELLED, &msg);
            }
        };
        let send = self.inner.pool.send(Request::from_parts(parts, body));
        let sent = match deadline {
            None => send.await,
            Some(d) => match tokio::time::timeout_at(d, send).await {
                Ok(r) => r,
                // Dropping the send resets the backend's stream.
                Err(_) => return self.local(start, &method, code::DEADLINE_EXCEEDED, DEADLINE_MSG),
            },
        };
        match sent {
            Ok(Sent { endpoint, response }) => {
                let (parts, body) = response.into_parts();
                let header_status = grpc::status(&parts.headers);
                let fwd = Forward {
                    inner: body,
                    endpoint,
                    method,
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
                self.local(start, &method, code::UNAVAILABLE, &format!("mp-lb: {msg}"))
            }
            Err(SendError::Backend { endpoint, source }) => {
                debug!(endpoint = %endpoint.addr(), error = %source, "call failed");
                endpoint.record(code::UNAVAILABLE, start.elapsed());
                method.response(code::UNAVAILABLE, start.elapsed());
                grpc::error_response(
                    code::UNAVAILABLE,
                    &format!(
                        "mp-lb: backend {} failed: {}",
                        endpoint.addr(),
                        chain(&source)
                    ),
                )
            }
        }
    }

    fn local(
        &self,
        start: Instant,
        method: &CallHandles,
        status: u16,
        msg: &str,
    ) -> Response<ProxyBody> {
        self.inner.local.request();
        self.inner.local.response(status, start.elapsed());
        method.response(status, start.elapsed());
        grpc::error_response(status, msg)
    }
}

/// An error and its causes, `a: b: c` (hyper's own message is often just
/// "http2 error").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
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
    method: Arc<CallHandles>,
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
            let elapsed = self.start.elapsed();
            self.endpoint.record(status, elapsed);
            self.method.response(status, elapsed);
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
                let msg = format!(
                    "mp-lb: backend {} stream failed: {}",
                    f.endpoint.addr(),
                    chain(&e)
                );
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

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn method_series_are_bounded() {
        let m = Methods::new(CallMetrics::register(&mut Registry::default(), "method"));
        let a = m.get("/pkg.Svc/A");
        assert!(
            Arc::ptr_eq(&a, &m.get("/pkg.Svc/A")),
            "one series per method"
        );
        for p in ["/", "/x", "/a/b/c", "no-slash", "/pkg.Svc/"] {
            assert!(Arc::ptr_eq(&m.get(p), &m.other), "{p:?} is not a gRPC path");
        }
        for i in 0..2 * MAX_METHODS {
            m.get(&format!("/pkg.Svc/M{i}"));
        }
        assert_eq!(m.map.load().len(), MAX_METHODS);
        assert!(Arc::ptr_eq(&m.get("/pkg.Svc/Late"), &m.other));
    }
}
