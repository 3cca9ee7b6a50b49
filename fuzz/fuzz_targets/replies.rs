//! What a fuzzed server (a leaf, a backend) writes back: replies with
//! fuzzed heads, bodies and trailers, and raw frames of every type.

use arbitrary::Arbitrary;
use mp_sidecar::hpack::Encoder;

use crate::common::frame;

const STATUSES: &[&str] = &["200", "404", "503", "1000", "abc", ""];

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
    /// Any frame: type, flags, stream, payload.
    Frame {
        kind: u8,
        flags: u8,
        stream: u8,
        payload: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    /// The server's SETTINGS come first.
    pub settings: bool,
    pub parts: Vec<Part>,
    /// Close the connection after writing (else keep it open).
    pub close: bool,
    /// Calls made (1 to 3).
    pub calls: u8,
}

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
            Part::Frame {
                kind,
                flags,
                stream,
                payload,
            } => frame(&mut out, *kind % 12, *flags, u32::from(*stream), payload),
        }
    }
    out
}
