//! gRPC plumbing that mp-gather needs and tonic keeps private: a codec that
//! passes message bytes through untouched, the `grpc-timeout` header, and the
//! caller metadata that may be forwarded to leaves.

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::Status;

/// A codec whose messages are the raw serialized bytes: mp-gather never needs
/// to decode a leaf's request or reply to fan it out or concatenate it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Headers that belong to one hop of gRPC, not to the call: the leaf calls set
/// their own (tonic adds te, content-type and user-agent; the deadline is
/// recomputed per leaf).
const HOP_HEADERS: [&str; 7] = [
    "te",
    "content-type",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "user-agent",
    "content-length",
];

/// The caller's custom metadata, without the per-hop headers, ready to be
/// cloned onto each leaf call.
pub fn forwardable(mut md: MetadataMap) -> MetadataMap {
    if md.is_empty() {
        return md;
    }
    for h in HOP_HEADERS {
        md.remove(h);
    }
    md
}

/// The canonical name of a status code, e.g. `DEADLINE_EXCEEDED`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_headers_are_dropped() {
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", "1S".parse().unwrap());
        md.insert("x-tenant", "a".parse().unwrap());
        let md = forwardable(md);
        assert!(md.get("grpc-timeout").is_none());
        assert_eq!(md.get("x-tenant").unwrap(), "a");
    }
}
