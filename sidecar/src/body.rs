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
    /// it, if any), recorded as it passes so that it can be sent again. The
    /// received body itself lives in the shared [`Recording`], so a resend
    /// can go on reading it after a refused attempt dropped its copy.
    Recorded(Option<Frame<Bytes>>, Arc<Mutex<Recording>>, u32),
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
    /// The rest of the received body.
    rest: Option<Incoming>,
    /// Which `Body::Recorded` reads on: a resend supersedes the body of the
    /// refused attempt, which then reads nothing more.
    generation: u32,
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

    fn new(rest: Incoming) -> Arc<Mutex<Recording>> {
        Arc::new(Mutex::new(Recording {
            rest: Some(rest),
            ..Recording::default()
        }))
    }

    /// The body to send again: the whole of it if it has ended, else what
    /// passed so far followed by the rest as it comes (still recorded).
    /// `None` when it cannot be resent (too large, trailers, a read error).
    pub fn resume(rec: &Arc<Mutex<Recording>>) -> Option<Body> {
        let mut r = rec.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = r.replay() {
            return Some(b);
        }
        if r.spoiled || r.rest.is_none() {
            return None;
        }
        r.generation += 1;
        let prefix: Bytes = r.data.concat().into();
        r.data.clear();
        r.len = 0;
        let first = (!prefix.is_empty()).then(|| Frame::data(prefix));
        Some(Body::Recorded(first, rec.clone(), r.generation))
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
        Ok(match first {
            None => Body::Recorded(None, Recording::new(incoming), 0),
            Some(None) => Body::Empty,
            Some(Some(Err(e))) => return Err(e),
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if incoming.is_end_stream() => Body::Bytes(Some(data)),
                Ok(data) => Body::Recorded(Some(Frame::data(data)), Recording::new(incoming), 0),
                Err(frame) => Body::Recorded(Some(frame), Recording::new(incoming), 0),
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
            Body::Recorded(_, r, _) => Some(r.clone()),
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
            Body::Recorded(first, rec, generation) => {
                let mut rec = rec.lock().unwrap_or_else(|p| p.into_inner());
                if rec.generation != *generation {
                    // Superseded by a resend: the rest is no longer ours.
                    return Poll::Ready(None);
                }
                let (next, end) = match first.take() {
                    Some(f) => (Poll::Ready(Some(Ok(f))), false),
                    None => match rec.rest.as_mut() {
                        None => (Poll::Ready(None), true),
                        Some(rest) => (Pin::new(rest).poll_frame(cx), false),
                    },
                };
                // Senders stop polling once `is_end_stream` says so: the end
                // must be noted with the last frame.
                let ended = end || rec.rest.as_ref().is_none_or(|r| r.is_end_stream());
                match &next {
                    Poll::Ready(Some(Ok(f))) => {
                        rec.record(Some(f));
                        if ended {
                            rec.record(None);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => rec.spoiled = true,
                    Poll::Ready(None) => rec.record(None),
                    Poll::Pending => {}
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
            Body::Recorded(first, rec, generation) => {
                let rec = rec.lock().unwrap_or_else(|p| p.into_inner());
                rec.generation != *generation
                    || (first.is_none() && rec.rest.as_ref().is_none_or(|r| r.is_end_stream()))
            }
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
