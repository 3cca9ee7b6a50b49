//! What a fuzzed server (a leaf, a backend) writes back: replies with
//! fuzzed heads, bodies and trailers, and raw frames of every type; and the
//! calls made to it, which must all resolve.

use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use mp_sidecar::h2client::{Client, Deadline, RequestHead};
use mp_sidecar::hpack::Encoder;

use crate::common::{frame, RawFrame};

/// `:status` values: good, bad, out of range, not a number, empty.
const STATUSES: &[&str] = &["200", "404", "503", "1000", "abc", ""];

/// One piece of what the server writes.
#[derive(Arbitrary, Debug)]
pub enum Part {
    /// A response head, then DATA, then (maybe) trailers.
    Reply {
        stream: u8,
        status: u8,
        /// `content-type`, `grpc-status`, `grpc-message` or any field.
        head: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<Vec<u8>>,
        trailers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
        /// END_STREAM on the head (a trailers-only reply).
        head_ends: bool,
    },
    /// Any frame.
    Frame(RawFrame),
}

/// One input: what the server writes, how it ends, the calls made to it.
#[derive(Arbitrary, Debug)]
pub struct Input {
    /// The server's SETTINGS come first.
    pub settings: bool,
    /// Written in order, on streams 1 to 15 (the calls' ids) or any.
    pub parts: Vec<Part>,
    /// Close the connection after writing (else keep it open).
    pub close: bool,
    /// Calls made (1 to 3).
    pub calls: u8,
}

/// A header block of `first` (when given) and at most 8 of `fields`.
fn block(enc: &mut Encoder, first: Option<(&str, &str)>, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut b = Vec::new();
    enc.begin(&mut b);
    if let Some((n, v)) = first {
        enc.encode(n.as_bytes(), v.as_bytes(), &mut b);
    }
    for (n, v) in fields.iter().take(8) {
        enc.encode(n, v, &mut b);
    }
    b
}

/// The bytes the server writes for `input` (after reading the preface).
pub fn bytes_of(input: &Input) -> Vec<u8> {
    let mut out = Vec::new();
    if input.settings {
        frame(&mut out, 4, 0, 0, &[]);
    }
    let mut enc = Encoder::new();
    for part in &input.parts {
        match part {
            Part::Reply {
                stream,
                status,
                head,
                body,
                trailers,
                head_ends,
            } => {
                let stream = u32::from(*stream % 8) * 2 + 1;
                let status = STATUSES[usize::from(*status) % STATUSES.len()];
                let h = block(&mut enc, Some((":status", status)), head);
                frame(&mut out, 1, 0x4 | u8::from(*head_ends), stream, &h);
                for (i, data) in body.iter().enumerate() {
                    let end = trailers.is_none() && i + 1 == body.len();
                    frame(&mut out, 0, u8::from(end), stream, data);
                }
                if let Some(t) = trailers {
                    let t = block(&mut enc, None, t);
                    frame(&mut out, 1, 0x5, stream, &t);
                }
            }
            Part::Frame(f) => f.write(&mut out),
        }
    }
    out
}

/// Makes 1 to 3 (by `n`) calls of `head` on `client`, with a deadline
/// `deadline` from now, and panics unless every one resolves (a reply or an
/// error) within a second of it: `who` is what would have hung.
pub async fn calls_resolve(
    client: &Client,
    head: Arc<RequestHead>,
    n: u8,
    deadline: Duration,
    who: &str,
) {
    let at = tokio::time::Instant::now() + deadline;
    let calls: Vec<_> = (0..1 + n % 3)
        .map(|_| {
            client.call(
                head.clone(),
                bytes::Bytes::from_static(&[0, 0, 0, 0, 0]),
                Some(Deadline::from(at)),
                1 << 20,
            )
        })
        .collect();
    let all = futures::future::join_all(calls);
    if tokio::time::timeout(deadline + Duration::from_secs(1), all)
        .await
        .is_err()
    {
        panic!("a call {who} was still unresolved 1 s after its deadline");
    }
}
