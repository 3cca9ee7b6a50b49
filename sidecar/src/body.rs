//! [`Body`]: the request body the pool sends, either bytes we made (health
//! checks, gather's fan-out) or a body streamed in from a client (the proxy).
//!
//! An enum rather than a boxed trait object: no allocation per request, and
//! one connection type serves every caller.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

/// A request (or response) body: empty, one buffer, or a streamed body
/// passed through untouched (data frames and trailers).
#[derive(Debug, Default)]
pub enum Body {
    /// No body.
    #[default]
    Empty,
    /// One buffer (taken when sent).
    Bytes(Option<Bytes>),
    /// A body received from a peer, forwarded frame by frame.
    Incoming(Incoming),
    /// A frame already read from a received body, then the rest of it.
    Prefixed(Option<Frame<Bytes>>, Incoming),
}

impl Body {
    /// A body of exactly `b`.
    pub fn from_bytes(b: impl Into<Bytes>) -> Body {
        Body::Bytes(Some(b.into()))
    }
}

impl Body {
    /// Reads what a received body has already delivered, without waiting:
    /// a body that has fully arrived (the usual unary gRPC call, whose one
    /// message comes with its headers) becomes [`Body::Bytes`], which the pool
    /// can send again to another backend if the first one refused it. Anything
    /// else streams on as it came.
    pub async fn settle(incoming: Incoming) -> Result<Body, hyper::Error> {
        let mut incoming = incoming;
        if incoming.is_end_stream() {
            return Ok(Body::Empty);
        }
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut incoming).poll_frame(cx) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            })
        })
        .await;
        Ok(match first {
            None => Body::Incoming(incoming),
            Some(None) => Body::Empty,
            Some(Some(Err(e))) => return Err(e),
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if incoming.is_end_stream() => Body::Bytes(Some(data)),
                Ok(data) => Body::Prefixed(Some(Frame::data(data)), incoming),
                Err(frame) => Body::Prefixed(Some(frame), incoming),
            },
        })
    }

    /// A copy of a body that is fully in memory (empty or one buffer), to
    /// send it again; `None` for a streamed body.
    pub fn try_clone(&self) -> Option<Body> {
        match self {
            Body::Empty => Some(Body::Empty),
            Body::Bytes(b) => Some(Body::Bytes(b.clone())),
            _ => None,
        }
    }
}

impl From<Incoming> for Body {
    fn from(b: Incoming) -> Self {
        Body::Incoming(b)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(b) => Pin::new(b).poll_frame(cx),
            Body::Prefixed(first, rest) => match first.take() {
                Some(f) => Poll::Ready(Some(Ok(f))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Bytes(b) => b.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::Prefixed(first, rest) => first.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::Prefixed(..) => SizeHint::default(),
        }
    }
}
