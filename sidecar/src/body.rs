//! [`Body`]: the request body the pool sends, either bytes we made (health
//! checks, gather's fan-out) or a body streamed in from a client (the proxy).
//!
//! An enum rather than a boxed trait object: no allocation per request, and
//! one connection type serves every caller.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
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
}

impl Body {
    /// A body of exactly `b`.
    pub fn from_bytes(b: impl Into<Bytes>) -> Body {
        Body::Bytes(Some(b.into()))
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
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Bytes(b) => b.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
        }
    }
}
