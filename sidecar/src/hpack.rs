//! HPACK (RFC 7541) for a frame-level proxy: a header list kept in one
//! buffer, an encoder of our own, and a decoder (the `loona-hpack` crate's,
//! which does the Huffman decoding).
//!
//! The encoder indexes what repeats from call to call (`:path`,
//! `content-type`, `te`, `grpc-status: 0`, ...) in its dynamic table, so the
//! peer decodes most headers of a steady call stream from one byte each; it
//! never Huffman-codes (loopback and LAN bytes are cheap, CPU is not).

use std::borrow::Cow;
use std::collections::VecDeque;

use crate::wire::{reason, ConnError};

/// A decoded header list: every name and value in one buffer, in order.
/// Reused from call to call (`clear` keeps the capacity).
#[derive(Clone, Default)]
pub struct HeaderList {
    buf: Vec<u8>,
    /// (start, name length, value length) of each field in `buf`.
    fields: Vec<(usize, usize, usize)>,
    /// RFC 7541 size: the sum of name + value + 32 over the fields.
    size: usize,
}

impl std::fmt::Debug for HeaderList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = f.debug_list();
        for (n, v) in self.iter() {
            l.entry(&(String::from_utf8_lossy(n), String::from_utf8_lossy(v)));
        }
        l.finish()
    }
}

impl HeaderList {
    /// An empty list.
    pub fn new() -> HeaderList {
        HeaderList::default()
    }

    /// Empties the list, keeping its buffers.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.fields.clear();
        self.size = 0;
    }

    /// Appends a field.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(value);
        self.fields.push((start, name.len(), value.len()));
        self.size += name.len() + value.len() + 32;
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields.iter().map(|&(s, n, v)| {
            let name = &self.buf[s..s + n];
            (name, &self.buf[s + n..s + n + v])
        })
    }

    /// The value of the first field called `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The list's size as RFC 9113 counts it against
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How many fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// An HPACK decoder: one per direction of a connection.
pub struct Decoder {
    inner: loona_hpack::Decoder<'static>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

/// The dynamic table size we let peers use (the HTTP/2 default; we never
/// advertise another).
pub const TABLE_SIZE: usize = 4096;

impl Decoder {
    /// A decoder whose table may grow to [`TABLE_SIZE`].
    pub fn new() -> Decoder {
        let mut inner = loona_hpack::Decoder::new();
        inner.set_max_allowed_table_size(TABLE_SIZE);
        Decoder { inner }
    }

    /// Decodes a complete header block, appending its fields to `into`. A
    /// block that does not decode is a connection error (COMPRESSION_ERROR):
    /// the decoder's table can no longer be trusted.
    pub fn decode(&mut self, block: &[u8], into: &mut HeaderList) -> Result<(), ConnError> {
        self.inner
            .decode_with_cb(block, |n: Cow<'_, [u8]>, v: Cow<'_, [u8]>| {
                into.push(&n, &v)
            })
            .map_err(|_| ConnError {
                code: reason::COMPRESSION_ERROR,
                what: "header block does not decode (HPACK)",
            })
    }
}

/// The static table (RFC 7541 Appendix A); index = position + 1.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Static index of (name, value) when both match, and of the name alone.
#[inline]
fn static_index(name: &[u8], value: &[u8]) -> (Option<usize>, Option<usize>) {
    let mut by_name = None;
    for (i, (n, v)) in STATIC.iter().enumerate() {
        if n.len() == name.len() && *n == name {
            if *v == value {
                return (Some(i + 1), Some(i + 1));
            }
            by_name.get_or_insert(i + 1);
        } else if by_name.is_some() {
            // Entries of one name are adjacent.
            break;
        }
    }
    (None, by_name)
}

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// An HPACK encoder: one per direction of a connection.
#[derive(Debug)]
pub struct Encoder {
    /// Newest first: dynamic index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    size: usize,
    max: usize,
    /// A table size update owed at the start of the next block.
    update: Option<usize>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    /// An encoder for a peer with the default table size (4096).
    pub fn new() -> Encoder {
        Encoder {
            entries: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
            update: None,
        }
    }

    /// Follows the peer's SETTINGS_HEADER_TABLE_SIZE (we use at most
    /// [`TABLE_SIZE`] of it).
    pub fn set_peer_table_size(&mut self, peer: u32) {
        let max = (peer as usize).min(TABLE_SIZE);
        if max != self.max {
            self.max = max;
            self.evict(0);
            self.update = Some(max);
        }
    }

    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.entries.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }

    /// Starts a header block: emits a table size update if one is owed.
    pub fn begin(&mut self, out: &mut Vec<u8>) {
        if let Some(max) = self.update.take() {
            put_int(out, 0x20, 5, max);
        }
    }

    /// Encodes one field (call [`Encoder::begin`] first for each block).
    pub fn encode(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        let (exact, static_name) = static_index(name, value);
        if let Some(i) = exact {
            return put_int(out, 0x80, 7, i);
        }
        let mut name_index = static_name;
        for (k, (n, v)) in self.entries.iter().enumerate() {
            if **n == *name {
                if **v == *value {
                    return put_int(out, 0x80, 7, 62 + k);
                }
                name_index.get_or_insert(62 + k);
            }
        }
        let size = name.len() + value.len() + 32;
        let (first, prefix) = if never_indexed(name) {
            (0x10, 4)
        } else if size * 2 > self.max || varies(name) {
            (0x00, 4)
        } else {
            (0x40, 6)
        };
        match name_index {
            Some(i) => put_int(out, first, prefix, i),
            None => {
                out.push(first);
                put_str(out, name);
            }
        }
        put_str(out, value);
        if first == 0x40 {
            self.evict(size);
            self.entries.push_front((name.into(), value.into()));
            self.size += size;
        }
    }
}

/// Names whose values change from call to call: indexing them would only
/// churn the table.
fn varies(name: &[u8]) -> bool {
    matches!(
        name,
        b"grpc-timeout"
            | b"grpc-message"
            | b"content-length"
            | b"date"
            | b"grpc-status-details-bin"
    )
}

/// Names a proxy must not let anyone index (RFC 7541 section 7.1.3).
fn never_indexed(name: &[u8]) -> bool {
    matches!(
        name,
        b"authorization" | b"proxy-authorization" | b"cookie" | b"set-cookie"
    )
}

/// An HPACK integer with an `n`-bit prefix; `first` holds the high bits.
#[inline]
fn put_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An HPACK string literal, not Huffman-coded.
#[inline]
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(enc: &mut Encoder, dec: &mut Decoder, fields: &[(&str, &str)]) -> usize {
        let mut block = Vec::new();
        enc.begin(&mut block);
        for (n, v) in fields {
            enc.encode(n.as_bytes(), v.as_bytes(), &mut block);
        }
        let mut got = HeaderList::new();
        dec.decode(&block, &mut got).unwrap();
        let got: Vec<(String, String)> = got
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
        block.len()
    }

    #[test]
    fn repeated_requests_shrink_to_indices() {
        let (mut enc, mut dec) = (Encoder::new(), Decoder::new());
        let req = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/lbtest.echo.v1.Echo/Say"),
            (":authority", "127.0.0.1:7000"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "999m"),
            ("authorization", "Bearer secret"),
        ];
        let first = round_trip(&mut enc, &mut dec, &req);
        let second = round_trip(&mut enc, &mut dec, &req);
        assert!(second < first / 2, "{second} vs {first}");
        // Six one-byte indices, then grpc-timeout (literal name and value)
        // and authorization (static name index, never indexed).
        assert_eq!(second, 6 + (1 + 1 + 12 + 1 + 4) + (2 + 1 + 13));
    }

    #[test]
    fn table_limits_are_kept() {
        let (mut enc, mut dec) = (Encoder::new(), Decoder::new());
        for i in 0..500 {
            let v = format!("value-{i}-{}", "x".repeat(i % 40));
            round_trip(&mut enc, &mut dec, &[("x-key", &v), (":status", "200")]);
        }
        assert!(enc.size <= TABLE_SIZE);
        // A smaller peer table: a size update, and still in step.
        enc.set_peer_table_size(100);
        round_trip(
            &mut enc,
            &mut dec,
            &[("x-a", "1"), ("x-b", "2"), ("x-c", "3")],
        );
        assert!(enc.size <= 100);
        enc.set_peer_table_size(0);
        round_trip(&mut enc, &mut dec, &[("x-a", "1")]);
        assert_eq!(enc.entries.len(), 0);
        // Big values are sent, not indexed.
        let big = "b".repeat(10_000);
        round_trip(&mut enc, &mut dec, &[("x-big", &big), ("x-big", &big)]);
    }

    #[test]
    fn integers_across_prefix_boundaries() {
        for v in [0usize, 14, 15, 16, 126, 127, 128, 300, 16_384, 1 << 20] {
            let mut out = Vec::new();
            put_int(&mut out, 0, 4, v);
            // Decode by hand.
            let mut n = usize::from(out[0] & 0x0f);
            if n == 15 {
                let mut shift = 0;
                for &b in &out[1..] {
                    n += usize::from(b & 0x7f) << shift;
                    shift += 7;
                }
            }
            assert_eq!(n, v);
        }
    }

    #[test]
    fn garbage_is_a_compression_error() {
        let mut dec = Decoder::new();
        let mut l = HeaderList::new();
        let e = dec.decode(&[0xff, 0xff, 0xff, 0xff], &mut l).unwrap_err();
        assert_eq!(e.code, reason::COMPRESSION_ERROR);
        // Index past the tables.
        assert!(Decoder::new().decode(&[0x80 | 70], &mut l).is_err());
    }
}
