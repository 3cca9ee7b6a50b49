//! The HTTP/2 wire format (RFC 9113) as a frame-level proxy needs it: frame
//! heads, the payloads of the frames it reads, and writers for the frames it
//! sends. No connection state lives here; see `mp-lb`'s relay for that.

use std::fmt;

/// The client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Length of a frame head.
pub const HEAD_LEN: usize = 9;

/// The flow-control window every stream and connection starts with.
pub const DEFAULT_WINDOW: u32 = 65_535;

/// The largest flow-control window.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frame types.
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// PRIORITY.
    pub const PRIORITY: u8 = 0x2;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PUSH_PROMISE.
    pub const PUSH_PROMISE: u8 = 0x5;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    /// DATA, HEADERS: the sender's last frame on the stream.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING: an acknowledgement.
    pub const ACK: u8 = 0x1;
    /// HEADERS, CONTINUATION: the header block is complete.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS: the payload is padded.
    pub const PADDED: u8 = 0x8;
    /// HEADERS: a priority block precedes the fragment.
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (RST_STREAM, GOAWAY).
pub mod reason {
    /// NO_ERROR.
    pub const NO_ERROR: u32 = 0x0;
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 0x1;
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: u32 = 0x2;
    /// FLOW_CONTROL_ERROR.
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    /// STREAM_CLOSED.
    pub const STREAM_CLOSED: u32 = 0x5;
    /// FRAME_SIZE_ERROR.
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    /// REFUSED_STREAM: the stream was not processed; it may be retried.
    pub const REFUSED_STREAM: u32 = 0x7;
    /// CANCEL.
    pub const CANCEL: u32 = 0x8;
    /// COMPRESSION_ERROR.
    pub const COMPRESSION_ERROR: u32 = 0x9;
    /// ENHANCE_YOUR_CALM.
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    /// The code's name, for messages.
    pub fn name(code: u32) -> &'static str {
        match code {
            0x0 => "NO_ERROR",
            0x1 => "PROTOCOL_ERROR",
            0x2 => "INTERNAL_ERROR",
            0x3 => "FLOW_CONTROL_ERROR",
            0x4 => "SETTINGS_TIMEOUT",
            0x5 => "STREAM_CLOSED",
            0x6 => "FRAME_SIZE_ERROR",
            0x7 => "REFUSED_STREAM",
            0x8 => "CANCEL",
            0x9 => "COMPRESSION_ERROR",
            0xa => "CONNECT_ERROR",
            0xb => "ENHANCE_YOUR_CALM",
            0xc => "INADEQUATE_SECURITY",
            0xd => "HTTP_1_1_REQUIRED",
            _ => "unknown error code",
        }
    }
}

/// SETTINGS identifiers.
pub mod setting {
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    /// SETTINGS_ENABLE_PUSH.
    pub const ENABLE_PUSH: u16 = 0x2;
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE.
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// A violation of the protocol by the peer: the connection must end with a
/// GOAWAY carrying `code`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} ({})", what, reason::name(*code))]
pub struct ConnError {
    /// The HTTP/2 error code to send in the GOAWAY.
    pub code: u32,
    /// What was wrong.
    pub what: &'static str,
}

impl ConnError {
    /// A PROTOCOL_ERROR saying `what`.
    pub const fn protocol(what: &'static str) -> ConnError {
        ConnError {
            code: reason::PROTOCOL_ERROR,
            what,
        }
    }
}

/// A frame head: the 9 bytes before every payload.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Payload length.
    pub len: usize,
    /// Frame type (see [`kind`]).
    pub kind: u8,
    /// Flags (see [`flag`]).
    pub flags: u8,
    /// Stream identifier (0: the connection).
    pub stream: u32,
}

impl fmt::Debug for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frame(type {} flags {:#x} stream {} len {})",
            self.kind, self.flags, self.stream, self.len
        )
    }
}

impl Head {
    /// Reads a head from the first [`HEAD_LEN`] bytes of `b` (which must
    /// hold them).
    #[inline]
    pub fn parse(b: &[u8]) -> Head {
        Head {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    /// True when `f` is set.
    #[inline]
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// Appends a frame head to `out`.
#[inline]
pub fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len < 1 << 24);
    let l = (len as u32).to_be_bytes();
    let s = stream.to_be_bytes();
    out.extend_from_slice(&[l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]]);
}

/// Overwrites the length of the frame head written at `at`.
#[inline]
pub fn patch_len(out: &mut [u8], at: usize, len: usize) {
    let l = (len as u32).to_be_bytes();
    out[at..at + 3].copy_from_slice(&l[1..]);
}

/// Appends a SETTINGS frame with `values`.
pub fn put_settings(out: &mut Vec<u8>, values: &[(u16, u32)]) {
    put_head(out, values.len() * 6, kind::SETTINGS, 0, 0);
    for (id, v) in values {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends a SETTINGS acknowledgement.
pub fn put_settings_ack(out: &mut Vec<u8>) {
    put_head(out, 0, kind::SETTINGS, flag::ACK, 0);
}

/// Appends a WINDOW_UPDATE of `inc` bytes for `stream` (0: the connection).
#[inline]
pub fn put_window_update(out: &mut Vec<u8>, stream: u32, inc: u32) {
    debug_assert!(inc > 0 && inc <= MAX_WINDOW);
    put_head(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&inc.to_be_bytes());
}

/// Appends a RST_STREAM with `code`.
pub fn put_rst(out: &mut Vec<u8>, stream: u32, code: u32) {
    put_head(out, 4, kind::RST_STREAM, 0, stream);
    out.extend_from_slice(&code.to_be_bytes());
}

/// Appends a PING acknowledgement echoing `payload`.
pub fn put_ping_ack(out: &mut Vec<u8>, payload: &[u8]) {
    put_head(out, 8, kind::PING, flag::ACK, 0);
    out.extend_from_slice(payload);
}

/// Appends a PING with `payload`.
pub fn put_ping(out: &mut Vec<u8>, payload: [u8; 8]) {
    put_head(out, 8, kind::PING, 0, 0);
    out.extend_from_slice(&payload);
}

/// Appends a GOAWAY naming `last` as the last stream processed.
pub fn put_goaway(out: &mut Vec<u8>, last: u32, code: u32, debug: &[u8]) {
    put_head(out, 8 + debug.len(), kind::GOAWAY, 0, 0);
    out.extend_from_slice(&last.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(debug);
}

/// Appends one DATA frame (the caller keeps it within the peer's frame size).
#[inline]
pub fn put_data(out: &mut Vec<u8>, stream: u32, data: &[u8], end_stream: bool) {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    put_head(out, data.len(), kind::DATA, flags, stream);
    out.extend_from_slice(data);
}

/// The payload of a DATA or HEADERS frame without its padding (and, for
/// HEADERS, without its priority block).
#[inline]
pub fn unpad(head: &Head, payload: &[u8]) -> Result<std::ops::Range<usize>, ConnError> {
    let mut start = 0;
    let mut end = payload.len();
    if head.has(flag::PADDED) {
        let pad = usize::from(
            *payload
                .first()
                .ok_or(ConnError::protocol("empty padded frame"))?,
        );
        start = 1;
        end = end
            .checked_sub(pad)
            .filter(|&e| e >= start)
            .ok_or(ConnError::protocol("padding longer than the frame"))?;
    }
    if head.kind == kind::HEADERS && head.has(flag::PRIORITY) {
        start += 5;
        if start > end {
            return Err(ConnError::protocol("HEADERS too short for its priority"));
        }
    }
    Ok(start..end)
}

/// A peer's SETTINGS as they stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// SETTINGS_HEADER_TABLE_SIZE: the peer's decoder's table limit.
    pub header_table_size: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS (`u32::MAX`: no limit).
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub initial_window_size: u32,
    /// SETTINGS_MAX_FRAME_SIZE.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE (`u32::MAX`: no limit).
    pub max_header_list_size: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            header_table_size: 4096,
            max_concurrent_streams: u32::MAX,
            initial_window_size: DEFAULT_WINDOW,
            max_frame_size: 16_384,
            max_header_list_size: u32::MAX,
        }
    }
}

impl Settings {
    /// Applies a SETTINGS payload. Returns the change of the initial window
    /// (to apply to every open stream's send window).
    pub fn apply(&mut self, payload: &[u8]) -> Result<i64, ConnError> {
        if payload.len() % 6 != 0 {
            return Err(ConnError {
                code: reason::FRAME_SIZE_ERROR,
                what: "SETTINGS length not a multiple of 6",
            });
        }
        let before = self.initial_window_size;
        for s in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                setting::HEADER_TABLE_SIZE => self.header_table_size = v,
                setting::ENABLE_PUSH if v > 1 => {
                    return Err(ConnError::protocol("SETTINGS_ENABLE_PUSH not 0 or 1"))
                }
                setting::MAX_CONCURRENT_STREAMS => self.max_concurrent_streams = v,
                setting::INITIAL_WINDOW_SIZE => {
                    if v > MAX_WINDOW {
                        return Err(ConnError {
                            code: reason::FLOW_CONTROL_ERROR,
                            what: "SETTINGS_INITIAL_WINDOW_SIZE too large",
                        });
                    }
                    self.initial_window_size = v;
                }
                setting::MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&v) {
                        return Err(ConnError::protocol("SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    self.max_frame_size = v;
                }
                setting::MAX_HEADER_LIST_SIZE => self.max_header_list_size = v,
                // Unknown settings must be ignored.
                _ => {}
            }
        }
        Ok(i64::from(self.initial_window_size) - i64::from(before))
    }
}

/// Reads the 31-bit increment of a WINDOW_UPDATE payload.
pub fn window_increment(payload: &[u8]) -> Result<u32, ConnError> {
    match payload {
        [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d]) & MAX_WINDOW),
        _ => Err(ConnError {
            code: reason::FRAME_SIZE_ERROR,
            what: "WINDOW_UPDATE length not 4",
        }),
    }
}

/// Reads the error code of a RST_STREAM payload.
pub fn rst_code(payload: &[u8]) -> Result<u32, ConnError> {
    match payload {
        [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(ConnError {
            code: reason::FRAME_SIZE_ERROR,
            what: "RST_STREAM length not 4",
        }),
    }
}

/// Reads a GOAWAY payload: the last stream the peer processes, and the code.
pub fn goaway(payload: &[u8]) -> Result<(u32, u32), ConnError> {
    if payload.len() < 8 {
        return Err(ConnError {
            code: reason::FRAME_SIZE_ERROR,
            what: "GOAWAY shorter than 8 bytes",
        });
    }
    let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & MAX_WINDOW;
    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
    Ok((last, code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip() {
        let mut out = Vec::new();
        put_head(
            &mut out,
            70_000,
            kind::HEADERS,
            flag::END_HEADERS,
            0x7fff_ffff,
        );
        assert_eq!(out.len(), HEAD_LEN);
        let h = Head::parse(&out);
        assert_eq!(
            (h.len, h.kind, h.flags, h.stream),
            (70_000, kind::HEADERS, flag::END_HEADERS, 0x7fff_ffff)
        );
        patch_len(&mut out, 0, 5);
        assert_eq!(Head::parse(&out).len, 5);
        // The reserved bit is ignored.
        out[5] |= 0x80;
        assert_eq!(Head::parse(&out).stream, 0x7fff_ffff);
    }

    #[test]
    fn padding_and_priority_are_stripped() {
        let head = Head {
            len: 0,
            kind: kind::HEADERS,
            flags: flag::PADDED | flag::PRIORITY,
            stream: 1,
        };
        let payload = [2u8, 0, 0, 0, 0, 9, b'h', b'i', 0, 0];
        assert_eq!(unpad(&head, &payload).unwrap(), 6..8);
        let data = Head {
            kind: kind::DATA,
            flags: flag::PADDED,
            ..head
        };
        assert!(unpad(&data, &[9u8, 1, 2]).is_err(), "padding past the end");
        assert!(unpad(&data, &[]).is_err());
        assert_eq!(unpad(&data, &[0u8, 1, 2]).unwrap(), 1..3);
    }

    #[test]
    fn settings_apply_and_check() {
        let mut s = Settings::default();
        let mut out = Vec::new();
        put_settings(
            &mut out,
            &[
                (setting::INITIAL_WINDOW_SIZE, 1 << 20),
                (setting::MAX_FRAME_SIZE, 1 << 16),
                (setting::MAX_CONCURRENT_STREAMS, 100),
                (0x99, 7),
            ],
        );
        let delta = s.apply(&out[HEAD_LEN..]).unwrap();
        assert_eq!(delta, (1 << 20) - 65_535);
        assert_eq!(s.max_frame_size, 1 << 16);
        assert_eq!(s.max_concurrent_streams, 100);
        assert!(
            s.apply(&[0, 5, 0, 0, 0, 1]).is_err(),
            "frame size below 16384"
        );
        assert!(
            s.apply(&[0, 4, 0x80, 0, 0, 0]).is_err(),
            "window over 2^31-1"
        );
        assert!(s.apply(&[0, 4, 0]).is_err(), "length");
    }

    #[test]
    fn control_payloads() {
        let mut out = Vec::new();
        put_goaway(&mut out, 7, reason::NO_ERROR, b"bye");
        assert_eq!(goaway(&out[HEAD_LEN..]).unwrap(), (7, 0));
        out.clear();
        put_window_update(&mut out, 3, 1000);
        assert_eq!(window_increment(&out[HEAD_LEN..]).unwrap(), 1000);
        out.clear();
        put_rst(&mut out, 3, reason::REFUSED_STREAM);
        assert_eq!(rst_code(&out[HEAD_LEN..]).unwrap(), reason::REFUSED_STREAM);
        assert!(goaway(&[0; 4]).is_err());
        assert_eq!(reason::name(reason::REFUSED_STREAM), "REFUSED_STREAM");
    }
}
