//! [`Body`]: the request body the pool sends, either bytes we made (health
//! checks, gather's fan-out) or a body streamed in from a client (the proxy).
//!
//! An enum rather than a boxed trait object: no allocation per request, and
//! one connection type serves every caller.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
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
    /// A received body still streaming in (after a frame already read from
    /// it, if any), recorded as it passes so that it can be sent again.
    Recorded(Option<Frame<Bytes>>, Incoming, Arc<Mutex<Recording>>),
}

/// The most of a streamed request body kept for a resend.
pub const MAX_RECORDING: usize = 64 * 1024;

/// What passed through a [`Body::Recorded`]: its data, up to
/// [`MAX_RECORDING`] bytes (cloned `Bytes`: shared, not copied).
#[derive(Debug, Default)]
pub struct Recording {
    data: Vec<Bytes>,
    len: usize,
    ended: bool,
    /// Too large, or had trailers: cannot be resent.
    spoiled: bool,
}

impl Recording {
    fn record(&mut self, frame: Option<&Frame<Bytes>>) {
        match frame {
            None => self.ended = true,
            Some(_) if self.spoiled => {}
            Some(f) => match f.data_ref() {
                Some(d) if self.len + d.len() <= MAX_RECORDING => {
                    self.len += d.len();
                    self.data.push(d.clone());
                }
                _ => {
                    self.spoiled = true;
                    self.data = Vec::new();
                }
            },
        }
    }

    /// The whole body again, if it ended and was small enough to keep.
    pub fn replay(&self) -> Option<Body> {
        if !self.ended || self.spoiled {
            return None;
        }
        Some(match self.data.len() {
            0 => Body::Empty,
            1 => Body::Bytes(Some(self.data[0].clone())),
            _ => Body::Bytes(Some(self.data.concat().into())),
        })
    }
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
    /// message comes with its headers) becomes [`Body::Bytes`]; anything else
    /// streams on as it comes, recorded ([`Body::Recorded`]). Either way the
    /// pool can send the request again to another backend if the first one
    /// refused it unprocessed, once the body has passed whole.
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
        let recording = || Arc::new(Mutex::new(Recording::default()));
        Ok(match first {
            None => Body::Recorded(None, incoming, recording()),
            Some(None) => Body::Empty,
            Some(Some(Err(e))) => return Err(e),
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if incoming.is_end_stream() => Body::Bytes(Some(data)),
                Ok(data) => Body::Recorded(Some(Frame::data(data)), incoming, recording()),
                Err(frame) => Body::Recorded(Some(frame), incoming, recording()),
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

    /// The recording of a [`Body::Recorded`].
    pub fn recording(&self) -> Option<Arc<Mutex<Recording>>> {
        match self {
            Body::Recorded(_, _, r) => Some(r.clone()),
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
            Body::Recorded(first, rest, rec) => {
                let next = match first.take() {
                    Some(f) => Poll::Ready(Some(Ok(f))),
                    None => Pin::new(&mut *rest).poll_frame(cx),
                };
                if let Poll::Ready(r) = &next {
                    let mut rec = rec.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Some(Ok(f)) => {
                            rec.record(Some(f));
                            // Senders stop polling once `is_end_stream` says
                            // so: the end must be noted now.
                            if first.is_none() && rest.is_end_stream() {
                                rec.record(None);
                            }
                        }
                        Some(Err(_)) => rec.spoiled = true,
                        None => rec.record(None),
                    }
                }
                next
            }
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Bytes(b) => b.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::Recorded(first, rest, _) => first.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::Recorded(..) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recordings_replay_only_whole_small_bodies() {
        let mut r = Recording::default();
        r.record(Some(&Frame::data(Bytes::from_static(b"ab"))));
        assert!(r.replay().is_none(), "not ended yet");
        r.record(Some(&Frame::data(Bytes::from_static(b"cd"))));
        r.record(None);
        match r.replay() {
            Some(Body::Bytes(Some(b))) => assert_eq!(&b[..], b"abcd"),
            other => panic!("{other:?}"),
        }

        let mut big = Recording::default();
        big.record(Some(&Frame::data(Bytes::from(vec![0; MAX_RECORDING + 1]))));
        big.record(None);
        assert!(big.replay().is_none());

        let mut t = Recording::default();
        t.record(Some(&Frame::trailers(http::HeaderMap::new())));
        t.record(None);
        assert!(t.replay().is_none(), "trailers are not replayed");

        let mut e = Recording::default();
        e.record(None);
        assert!(matches!(e.replay(), Some(Body::Empty)));
    }
}
