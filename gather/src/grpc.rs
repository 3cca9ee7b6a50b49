//! gRPC plumbing that mp-gather needs and tonic keeps private: a codec that
//! passes message bytes through untouched, the `grpc-timeout` header, and the
//! caller metadata that may be forwarded to leaves.

use bytes::{Buf, BufMut, Bytes};
use mp_sidecar::hpack::HeaderList;
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

/// True for a header of the caller's that travels on to the leaves and the
/// merger: not a pseudo-header, and not one that belongs to one hop of gRPC
/// (the leaf calls set their own te, content-type and user-agent; the
/// deadline is recomputed per leaf). A `match`: every header of every call
/// asks.
pub fn is_forwardable(name: &[u8]) -> bool {
    !name.starts_with(b":")
        && !matches!(
            name,
            b"te"
                | b"content-type"
                | b"grpc-timeout"
                | b"grpc-encoding"
                | b"grpc-accept-encoding"
                | b"user-agent"
                | b"content-length"
        )
}

/// `headers` as tonic metadata (for the merger call); entries that are not
/// valid metadata are left out.
pub fn metadata(headers: &HeaderList) -> MetadataMap {
    MetadataMap::from_headers(headers.to_header_map())
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
        let mut h = HeaderList::new();
        h.push(b":path", b"/a.B/C");
        h.push(b"grpc-timeout", b"1S");
        h.push(b"x-tenant", b"a");
        h.push(b"content-type", b"application/grpc");
        h.push(b"user-agent", b"grpc-go/1");
        let out = crate::leaf::Outgoing::new(
            http::uri::PathAndQuery::from_static("/a.B/C"),
            bytes::Bytes::new(),
            &std::sync::Arc::new(h),
        );
        // The leaves get mp-gather's own content-type and te, then the
        // caller's metadata; the merger gets the metadata alone.
        let names: Vec<&[u8]> = out.head.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"content-type"[..], b"te", b"x-tenant"]);
        assert_eq!(
            out.head.headers.get(b"content-type"),
            Some(&b"application/grpc"[..])
        );
        let fwd = out.metadata();
        assert_eq!(fwd.len(), 1);
        assert_eq!(fwd.get(b"x-tenant"), Some(&b"a"[..]));
        assert_eq!(metadata(&fwd).get("x-tenant").unwrap(), "a");
        assert!(!is_forwardable(b":authority"));
        assert!(is_forwardable(b"authorization"));
    }
}
