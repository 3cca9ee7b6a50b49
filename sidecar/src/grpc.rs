//! The few pieces of the gRPC wire protocol a proxy needs without decoding
//! messages: status codes, `grpc-status`/`grpc-timeout` headers, and
//! trailers-only error responses.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// gRPC status codes (the numeric values of `grpc-status`).
pub mod code {
    /// Not an error.
    pub const OK: u16 = 0;
    /// The operation was cancelled, typically by the caller.
    pub const CANCELLED: u16 = 1;
    /// Unknown error.
    pub const UNKNOWN: u16 = 2;
    /// The deadline expired before the operation could complete.
    pub const DEADLINE_EXCEEDED: u16 = 4;
    /// Some resource has been exhausted (e.g. a message too large).
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    /// The operation is not implemented or supported.
    pub const UNIMPLEMENTED: u16 = 12;
    /// Internal error.
    pub const INTERNAL: u16 = 13;
    /// The service is currently unavailable; a retry may succeed.
    pub const UNAVAILABLE: u16 = 14;
    /// The highest code defined by gRPC (UNAUTHENTICATED).
    pub const MAX: u16 = 16;

    /// The canonical upper-case name of `code` (`"UNAVAILABLE"`), or
    /// `"UNKNOWN_CODE"` for values gRPC does not define.
    pub fn name(code: u16) -> &'static str {
        const NAMES: [&str; 17] = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        NAMES.get(code as usize).copied().unwrap_or("UNKNOWN_CODE")
    }
}

/// The `grpc-status` header name.
pub const GRPC_STATUS: &str = "grpc-status";
/// The `grpc-message` header name.
pub const GRPC_MESSAGE: &str = "grpc-message";
/// The `grpc-timeout` header name.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";
/// The gRPC content type.
pub const CONTENT_TYPE_GRPC: &str = "application/grpc";

/// The `grpc-status` in `headers` (response headers of a trailers-only
/// response, or trailers), if present and numeric.
pub fn status(headers: &HeaderMap) -> Option<u16> {
    parse_status(headers.get(GRPC_STATUS)?.as_bytes())
}

/// Parses a `grpc-status` value: 1 to 3 ASCII digits.
pub fn parse_status(v: &[u8]) -> Option<u16> {
    // Hot path: almost always one or two ASCII digits.
    if v.is_empty() || v.len() > 3 {
        return None;
    }
    let mut n: u16 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u16::from(b - b'0');
    }
    Some(n)
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`). `None` when malformed (which the spec says to treat
/// as no timeout).
pub fn parse_timeout(v: &HeaderValue) -> Option<Duration> {
    parse_timeout_bytes(v.as_bytes())
}

/// [`parse_timeout`] of a raw header value.
pub fn parse_timeout_bytes(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = digits
        .iter()
        .fold(0, |acc, &d| acc * 10 + u64::from(d - b'0'));
    Some(match unit[0] {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes `d` as a `grpc-timeout` value (at most 8 digits, the finest unit
/// that fits, rounded up so a deadline is never shortened).
pub fn encode_timeout(d: Duration) -> HeaderValue {
    const UNITS: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let nanos = d.as_nanos();
    for (per, unit) in UNITS {
        let n = nanos.div_ceil(per);
        if n < 100_000_000 {
            return HeaderValue::from_str(&format!("{n}{unit}")).expect("ascii");
        }
    }
    HeaderValue::from_static("99999999H")
}

/// Percent-encodes a `grpc-message` as the gRPC spec asks (bytes outside
/// printable ASCII, and `%`).
pub fn encode_message(msg: &str) -> HeaderValue {
    let mut out = String::with_capacity(msg.len());
    for &b in msg.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).expect("percent-encoded ascii is a valid header value")
}

/// Decodes a percent-encoded `grpc-message` (lossy on invalid UTF-8).
pub fn decode_message(v: &HeaderValue) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(x) = u8::from_str_radix(hex, 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Adds `grpc-status` and (when not empty) `grpc-message` to `headers`.
pub fn set_status(headers: &mut HeaderMap, code: u16, message: &str) {
    headers.insert(GRPC_STATUS, HeaderValue::from(code));
    if !message.is_empty() {
        headers.insert(GRPC_MESSAGE, encode_message(message));
    }
}

/// A trailers-only gRPC error response: HTTP 200, `content-type:
/// application/grpc`, `grpc-status` and `grpc-message` in the headers, and an
/// empty body (`B::default()` must be an empty body).
pub fn error_response<B: Default>(code: u16, message: &str) -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_GRPC),
    );
    set_status(h, code, message);
    res
}

#[cfg(test)]
mod tests;
