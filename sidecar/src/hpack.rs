//! HPACK (RFC 7541) for a frame-level proxy: a header list kept in one
//! buffer, and an encoder and a decoder of our own (Huffman decoding by
//! [`crate::huffman`]).
//!
//! The encoder indexes what repeats from call to call (`:path`,
//! `content-type`, `te`, `grpc-status: 0`, ...) in its dynamic table, so the
//! peer decodes most headers of a steady call stream from one byte each; it
//! never Huffman-codes (loopback and LAN bytes are cheap, CPU is not).
//!
//! The decoder, likewise, meets the same blocks again and again (a client's
//! request heads, a server's reply heads and trailers): a block whose bytes
//! it decoded lately, with its table unchanged since, gets the list decoded
//! then, shared ([`Decoder::decode_shared`]).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::wire::{reason, ConnError};

/// A decoded header list: every name and value in one buffer, in order.
/// Reused from call to call (`clear` keeps the capacity). Two lists are
/// equal when they hold the same fields in the same order.
#[derive(Clone, Default, PartialEq, Eq)]
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

    /// An empty list with room for `fields` fields of `bytes` bytes in all.
    pub fn with_capacity(fields: usize, bytes: usize) -> HeaderList {
        HeaderList {
            buf: Vec::with_capacity(bytes),
            fields: Vec::with_capacity(fields),
            size: 0,
        }
    }

    /// The bytes of names and values in all.
    pub fn bytes(&self) -> usize {
        self.buf.len()
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

    /// The regular fields as an `http::HeaderMap`, in order; pseudo-headers
    /// and fields that are not valid HTTP names or values are left out.
    pub fn to_header_map(&self) -> http::HeaderMap {
        let mut map = http::HeaderMap::with_capacity(self.len());
        for (n, v) in self.iter().filter(|(n, _)| !n.starts_with(b":")) {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n),
                http::HeaderValue::from_bytes(v),
            ) {
                map.append(n, v);
            }
        }
        map
    }
}

/// The dynamic table size we let peers use (the HTTP/2 default; we never
/// advertise another).
pub const TABLE_SIZE: usize = 4096;

/// The largest header list a block may decode to (RFC 9113 size). Small
/// blocks can name big table entries many times over: past this the block
/// is refused rather than expanded.
pub const MAX_DECODED: usize = 256 * 1024;

fn compression(what: &'static str) -> ConnError {
    ConnError {
        code: reason::COMPRESSION_ERROR,
        what,
    }
}

/// An HPACK decoder: one per direction of a connection.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: dynamic index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    size: usize,
    max: usize,
    /// Huffman-decoded strings.
    scratch: Vec<u8>,
    /// The last Huffman string and its decoding: clients that never index a
    /// field (nghttp2 and `:path`) send the same codes call after call.
    memo: [(Vec<u8>, Vec<u8>); 2],
    name: Vec<u8>,
    /// Counts the changes to the dynamic table: a block decodes to the same
    /// list as long as this stays the same.
    generation: u64,
    /// Blocks decoded lately that left the table as it was, with their lists
    /// ([`Decoder::decode_shared`]).
    kept: Vec<KeptDecoding>,
    /// The next of `kept` to replace.
    next_kept: usize,
    /// Where [`Decoder::decode_shared`] decodes a block it does not know.
    decoded: HeaderList,
}

/// A header block and its list, decoded at table generation `generation`
/// (`NEVER`: a spare list, for no block).
#[derive(Debug)]
struct KeptDecoding {
    block: Vec<u8>,
    generation: u64,
    list: Arc<HeaderList>,
}

/// Blocks a decoder keeps with their lists: a connection's blocks mostly
/// repeat one or two shapes (a request head; a reply head and trailers).
const KEPT_BLOCKS: usize = 4;
/// The longest block kept. Repeated blocks that index their fields are a few
/// dozen bytes; this bounds what a connection keeps.
const MAX_KEPT_BLOCK: usize = 512;
/// The largest list kept (RFC 7541 size): a short block may name big table
/// entries many times over, and what a connection keeps stays small.
const MAX_KEPT_LIST: usize = 16 * 1024;
/// The generation of a kept list that serves no block.
const NEVER: u64 = u64::MAX;

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder whose table may grow to [`TABLE_SIZE`].
    pub fn new() -> Decoder {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
            scratch: Vec::new(),
            memo: Default::default(),
            name: Vec::new(),
            generation: 0,
            kept: Vec::new(),
            next_kept: 0,
            decoded: HeaderList::new(),
        }
    }

    /// Decodes a complete header block (as [`Decoder::decode`]) into a list
    /// that may be shared: a block whose bytes are those of a block decoded
    /// lately, with the table as it was then, decodes to the same list, and
    /// that list is returned again (no decoding, no copy). Lists no one holds
    /// any more are filled again rather than allocated.
    pub fn decode_shared(&mut self, block: &[u8]) -> Result<Arc<HeaderList>, ConnError> {
        let generation = self.generation;
        if let Some(k) = self
            .kept
            .iter()
            .find(|k| k.generation == generation && k.block == block)
        {
            return Ok(k.list.clone());
        }
        let mut decoded = std::mem::take(&mut self.decoded);
        decoded.clear();
        let result = self.decode(block, &mut decoded);
        self.decoded = decoded;
        result?;
        if self.decoded.size() > MAX_KEPT_LIST {
            return Ok(Arc::new(self.decoded.clone()));
        }
        // Kept only when decoding it again would give the same list: it left
        // the table as it found it.
        let keep = self.generation == generation && block.len() <= MAX_KEPT_BLOCK;
        let k = if self.kept.len() < KEPT_BLOCKS {
            self.kept.push(KeptDecoding {
                block: Vec::new(),
                generation: NEVER,
                list: Arc::new(self.decoded.clone()),
            });
            self.kept.last_mut().expect("just pushed")
        } else {
            // A list that serves no block any more goes first, else the
            // oldest.
            let now = self.generation;
            let i = match self.kept.iter().position(|k| k.generation != now) {
                Some(i) => i,
                None => {
                    let i = self.next_kept;
                    self.next_kept = (i + 1) % KEPT_BLOCKS;
                    i
                }
            };
            let k = &mut self.kept[i];
            match Arc::get_mut(&mut k.list) {
                Some(list) => list.clone_from(&self.decoded),
                // Still held (a call in flight): a list of its own.
                None => k.list = Arc::new(self.decoded.clone()),
            }
            k
        };
        k.block.clear();
        if keep {
            k.block.extend_from_slice(block);
            k.generation = self.generation;
        } else {
            k.generation = NEVER;
        }
        Ok(k.list.clone())
    }

    /// Decodes a complete header block, appending its fields to `into`. A
    /// block that does not decode is a connection error (COMPRESSION_ERROR):
    /// the decoder's table can no longer be trusted; so is one that decodes
    /// to more than [`MAX_DECODED`] bytes (ENHANCE_YOUR_CALM).
    pub fn decode(&mut self, block: &[u8], into: &mut HeaderList) -> Result<(), ConnError> {
        let mut i = 0;
        let mut at_start = true;
        while i < block.len() {
            let b = block[i];
            if b & 0x80 != 0 {
                let (idx, n) = get_int(&block[i..], 7)?;
                i += n;
                let (name, value) = field(&self.entries, idx)?;
                into.push(name, value);
            } else if b & 0xe0 == 0x20 {
                // A table size update: only at the start of a block.
                if !at_start {
                    return Err(compression("table size update after a field"));
                }
                let (max, n) = get_int(&block[i..], 5)?;
                i += n;
                if max > TABLE_SIZE {
                    return Err(compression("table size update over the limit"));
                }
                self.max = max;
                self.evict(0);
                self.generation += 1;
                continue;
            } else {
                let (index, prefix) = if b & 0x40 != 0 { (true, 6) } else { (false, 4) };
                let (idx, n) = get_int(&block[i..], prefix)?;
                i += n;
                // Copied into a buffer kept for that: the value is read next,
                // from the same scratch space the name may have come from.
                self.name.clear();
                if idx == 0 {
                    let (s, n) = string(&block[i..], &mut self.scratch, &mut self.memo)?;
                    i += n;
                    self.name.extend_from_slice(s);
                } else {
                    self.name.extend_from_slice(field(&self.entries, idx)?.0);
                }
                let (value, n) = string(&block[i..], &mut self.scratch, &mut self.memo)?;
                i += n;
                into.push(&self.name, value);
                if index {
                    self.generation += 1;
                    let size = self.name.len() + value.len() + 32;
                    let entry: Entry = (self.name.as_slice().into(), value.into());
                    self.evict(size);
                    if size <= self.max {
                        self.entries.push_front(entry);
                        self.size += size;
                    }
                }
            }
            at_start = false;
            if into.size() > MAX_DECODED {
                return Err(ConnError {
                    code: reason::ENHANCE_YOUR_CALM,
                    what: "header list over 256 KiB once decoded",
                });
            }
        }
        Ok(())
    }

    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.entries.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }
}

/// The field at HPACK index `idx`: the static table's, then `entries` (the
/// dynamic table, newest first).
fn field(entries: &VecDeque<Entry>, idx: usize) -> Result<(&[u8], &[u8]), ConnError> {
    match idx {
        0 => Err(compression("index 0")),
        1..=61 => Ok(STATIC[idx - 1]),
        _ => entries
            .get(idx - 62)
            .map(|(n, v)| (&**n, &**v))
            .ok_or(compression("index past the tables")),
    }
}

/// Reads an HPACK integer with an `n`-bit prefix: (value, bytes read).
#[inline]
fn get_int(b: &[u8], n: u8) -> Result<(usize, usize), ConnError> {
    let max = (1usize << n) - 1;
    let v = usize::from(b[0]) & max;
    if v < max {
        return Ok((v, 1));
    }
    let mut v = max;
    for (k, &c) in b[1..].iter().enumerate().take(4) {
        v += usize::from(c & 0x7f) << (7 * k);
        if c & 0x80 == 0 {
            return Ok((v, k + 2));
        }
    }
    Err(compression("integer truncated or too large"))
}

/// Reads an HPACK string literal (Huffman-decoded into `scratch` when so
/// coded, or taken from `memo` when decoded lately): (bytes, bytes read).
#[inline]
fn string<'a>(
    b: &'a [u8],
    scratch: &'a mut Vec<u8>,
    memo: &'a mut [(Vec<u8>, Vec<u8>); 2],
) -> Result<(&'a [u8], usize), ConnError> {
    if b.is_empty() {
        return Err(compression("string literal truncated"));
    }
    let huffman = b[0] & 0x80 != 0;
    let (len, n) = get_int(b, 7)?;
    let raw = b
        .get(n..n + len)
        .ok_or(compression("string literal truncated"))?;
    if !huffman {
        return Ok((raw, n + len));
    }
    if let Some(k) = memo.iter().position(|(code, _)| code.as_slice() == raw) {
        return Ok((memo[k].1.as_slice(), n + len));
    }
    scratch.clear();
    crate::huffman::decode(raw, scratch).map_err(|_| compression("bad Huffman code"))?;
    if raw.len() <= 256 {
        // Keep the newest two.
        memo.swap(0, 1);
        memo[0].0.clear();
        memo[0].0.extend_from_slice(raw);
        memo[0].1.clear();
        memo[0].1.extend_from_slice(scratch);
    }
    Ok((scratch.as_slice(), n + len))
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
/// The name is found by a `match` (a jump on its length, then a compare or
/// two), not a scan of the table: every header of every block asks.
#[inline]
fn static_index(name: &[u8], value: &[u8]) -> (Option<usize>, Option<usize>) {
    // (first index, entries) of each name; entries of one name are adjacent.
    let (first, count) = match name {
        b":authority" => (1, 1),
        b":method" => (2, 2),
        b":path" => (4, 2),
        b":scheme" => (6, 2),
        b":status" => (8, 7),
        b"accept-charset" => (15, 1),
        b"accept-encoding" => (16, 1),
        b"accept-language" => (17, 1),
        b"accept-ranges" => (18, 1),
        b"accept" => (19, 1),
        b"access-control-allow-origin" => (20, 1),
        b"age" => (21, 1),
        b"allow" => (22, 1),
        b"authorization" => (23, 1),
        b"cache-control" => (24, 1),
        b"content-disposition" => (25, 1),
        b"content-encoding" => (26, 1),
        b"content-language" => (27, 1),
        b"content-length" => (28, 1),
        b"content-location" => (29, 1),
        b"content-range" => (30, 1),
        b"content-type" => (31, 1),
        b"cookie" => (32, 1),
        b"date" => (33, 1),
        b"etag" => (34, 1),
        b"expect" => (35, 1),
        b"expires" => (36, 1),
        b"from" => (37, 1),
        b"host" => (38, 1),
        b"if-match" => (39, 1),
        b"if-modified-since" => (40, 1),
        b"if-none-match" => (41, 1),
        b"if-range" => (42, 1),
        b"if-unmodified-since" => (43, 1),
        b"last-modified" => (44, 1),
        b"link" => (45, 1),
        b"location" => (46, 1),
        b"max-forwards" => (47, 1),
        b"proxy-authenticate" => (48, 1),
        b"proxy-authorization" => (49, 1),
        b"range" => (50, 1),
        b"referer" => (51, 1),
        b"refresh" => (52, 1),
        b"retry-after" => (53, 1),
        b"server" => (54, 1),
        b"set-cookie" => (55, 1),
        b"strict-transport-security" => (56, 1),
        b"transfer-encoding" => (57, 1),
        b"user-agent" => (58, 1),
        b"vary" => (59, 1),
        b"via" => (60, 1),
        b"www-authenticate" => (61, 1),
        _ => return (None, None),
    };
    let exact = (first..first + count).find(|&i| STATIC[i - 1].1 == value);
    (exact, Some(first))
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
    /// Counts changes to the table (and owed size updates): the same fields
    /// encoded at the same generation give the same bytes.
    generation: u64,
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
            generation: 0,
        }
    }

    /// The table's generation: while it is unchanged, encoding the same
    /// fields gives the same bytes (so a block may be kept and reused, see
    /// [`Encoder::reusable`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True when a block begun at generation `at` may be reused as it is: the
    /// encoding changed nothing (no entry added or evicted, no size update
    /// owed or emitted).
    pub fn reusable(&self, at: u64) -> bool {
        self.generation == at && self.update.is_none()
    }

    /// Follows the peer's SETTINGS_HEADER_TABLE_SIZE (we use at most
    /// [`TABLE_SIZE`] of it).
    pub fn set_peer_table_size(&mut self, peer: u32) {
        let max = (peer as usize).min(TABLE_SIZE);
        if max != self.max {
            self.max = max;
            self.evict(0);
            self.update = Some(max);
            self.generation += 1;
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
            self.generation += 1;
        }
    }

    /// Encodes one field (call [`Encoder::begin`] first for each block).
    pub fn encode(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        let (exact, static_name) = static_index(name, value);
        if let Some(i) = exact {
            return put_int(out, 0x80, 7, i);
        }
        // A name whose values vary never enters the table (see below): with
        // no static entry either, it is written out, and nothing is searched.
        if static_name.is_none() && varies(name) {
            out.push(0x00);
            put_str(out, name);
            return put_str(out, value);
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
            self.generation += 1;
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

    #[test]
    fn a_block_is_reusable_only_while_the_table_is_unchanged() {
        let fields: [(&[u8], &[u8]); 2] = [(b"x-meta", b"a"), (b"te", b"trailers")];
        let block = |enc: &mut Encoder| {
            let mut out = Vec::new();
            enc.begin(&mut out);
            let at = enc.generation();
            for (n, v) in fields {
                enc.encode(n, v, &mut out);
            }
            (out, enc.reusable(at))
        };
        let mut enc = Encoder::new();
        // First time: the fields enter the table; that block is not the next.
        let (first, reusable) = block(&mut enc);
        assert!(!reusable);
        let (second, reusable) = block(&mut enc);
        assert!(reusable && second != first);
        assert_eq!(block(&mut enc), (second.clone(), true));
        // A varying field leaves the table as it is.
        let at = enc.generation();
        enc.encode(b"grpc-timeout", b"1S", &mut Vec::new());
        assert!(enc.reusable(at));
        // The peer's new table size: evictions and a size update owed.
        let at = enc.generation();
        enc.set_peer_table_size(0);
        assert!(!enc.reusable(at));
        let (after, _) = block(&mut enc);
        assert_ne!(after, second);
        let mut dec = Decoder::new();
        let mut list = HeaderList::new();
        dec.decode(&after, &mut list).unwrap();
        assert_eq!(list.get(b"x-meta"), Some(&b"a"[..]));
    }

    #[test]
    fn static_index_finds_every_entry_and_only_those() {
        for (i, (name, value)) in STATIC.iter().enumerate() {
            let first = STATIC.iter().position(|(n, _)| n == name).unwrap() + 1;
            assert_eq!(static_index(name, value), (Some(i + 1), Some(first)));
            assert_eq!(static_index(name, b"no such value"), (None, Some(first)));
        }
        assert_eq!(static_index(b"grpc-status", b"0"), (None, None));
        assert_eq!(static_index(b"Content-Type", b""), (None, None));
    }

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
    fn decodes_the_rfc_huffman_example_twice() {
        // RFC 7541 C.4.1: GET http://www.example.com/ with Huffman coding.
        let block = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let mut dec = Decoder::new();
        for _ in 0..2 {
            let mut l = HeaderList::new();
            dec.decode(&block, &mut l).unwrap();
            assert_eq!(l.get(b":authority"), Some(&b"www.example.com"[..]));
            assert_eq!(l.get(b":method"), Some(&b"GET"[..]));
            assert_eq!(l.get(b":path"), Some(&b"/"[..]));
        }
        // Indexed with incremental indexing: now in the dynamic table.
        let mut l = HeaderList::new();
        dec.decode(&[0x80 | 62], &mut l).unwrap();
        assert_eq!(l.get(b":authority"), Some(&b"www.example.com"[..]));
    }

    #[test]
    fn a_small_block_that_expands_hugely_is_refused() {
        // One 4,000-byte entry, then its index 100,000 times: 100 KB that
        // would decode to 400 MB.
        let mut block = vec![0x40, 1, b'x'];
        put_int(&mut block, 0, 7, 3990);
        block.extend(std::iter::repeat_n(b'v', 3990));
        block.extend(std::iter::repeat_n(0x80 | 62, 100_000));
        let mut l = HeaderList::new();
        let e = Decoder::new().decode(&block, &mut l).unwrap_err();
        assert_eq!(e.code, reason::ENHANCE_YOUR_CALM);
        assert!(l.size() <= MAX_DECODED + 4096 + 32);
    }

    /// A cheap deterministic byte stream (xorshift), for the fuzz-style test.
    fn noise(seed: &mut u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn random_blocks_decode_or_fail_but_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut dec = Decoder::new();
        let mut ok = 0;
        for i in 0..20_000 {
            let mut block = noise(&mut seed, 1 + i % 64);
            // Bias towards valid-looking representations now and then.
            if i % 3 == 0 {
                block[0] = 0x80 | (block[0] % 70);
            }
            let mut l = HeaderList::new();
            match dec.decode(&block, &mut l) {
                Ok(()) => ok += 1,
                // A failed block leaves the table untrusted: start afresh.
                Err(_) => dec = Decoder::new(),
            }
        }
        assert!(ok > 100, "some random blocks decode ({ok})");
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

    /// `(name, value)` pairs of a list, for comparisons that print well.
    fn pairs(list: &HeaderList) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_repeated_block_shares_its_list() {
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let req: [(&[u8], &[u8]); 4] = [
            (b":method", b"POST"),
            (b":path", b"/a.B/C"),
            (b"content-type", b"application/grpc"),
            (b"x-tenant", b"a"),
        ];
        let block = |enc: &mut Encoder| {
            let mut out = Vec::new();
            enc.begin(&mut out);
            for (n, v) in req {
                enc.encode(n, v, &mut out);
            }
            out
        };
        // The first block fills the table: decoding it again would not give
        // the same list, so it is not kept.
        let first = dec.decode_shared(&block(&mut enc)).unwrap();
        let second = dec.decode_shared(&block(&mut enc)).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(pairs(&first), pairs(&second));
        // From then on the same bytes: the same list.
        let third = dec.decode_shared(&block(&mut enc)).unwrap();
        assert!(Arc::ptr_eq(&second, &third));
        assert_eq!(third.get(b"x-tenant"), Some(&b"a"[..]));
    }

    #[test]
    fn the_same_bytes_decode_anew_once_the_table_changed() {
        let mut dec = Decoder::new();
        // Literal with incremental indexing, new name: x-a: 1, then x-b: 2.
        let add = |name: &[u8], value: &[u8]| {
            let mut b = vec![0x40, name.len() as u8];
            b.extend_from_slice(name);
            b.push(value.len() as u8);
            b.extend_from_slice(value);
            b
        };
        let newest = [0x80 | 62];
        dec.decode_shared(&add(b"x-a", b"1")).unwrap();
        let a = dec.decode_shared(&newest).unwrap();
        assert_eq!(a.get(b"x-a"), Some(&b"1"[..]));
        dec.decode_shared(&add(b"x-b", b"2")).unwrap();
        let b = dec.decode_shared(&newest).unwrap();
        assert_eq!(pairs(&b), [("x-b".to_string(), "2".to_string())]);
        // The held list is not filled again with the new fields.
        assert_eq!(pairs(&a), [("x-a".to_string(), "1".to_string())]);
        // A table size update (to 0) empties the table: the index is gone.
        dec.decode_shared(&[0x20]).unwrap();
        let e = dec.decode_shared(&newest).unwrap_err();
        assert_eq!(e.code, reason::COMPRESSION_ERROR);
    }

    #[test]
    fn lists_no_one_holds_are_filled_again_and_held_ones_are_not() {
        let mut dec = Decoder::new();
        // Static-table fields only: these blocks leave the table as it is.
        let blocks: Vec<Vec<u8>> = (2..=14).map(|i| vec![0x80 | i]).collect();
        let held = dec.decode_shared(&blocks[0]).unwrap();
        let want = pairs(&held);
        let mut seen = std::collections::HashSet::new();
        for b in &blocks[1..] {
            let list = dec.decode_shared(b).unwrap();
            seen.insert(Arc::as_ptr(&list));
        }
        // Twelve blocks through at most four lists, the held one not among
        // them, its fields unchanged.
        assert!(seen.len() <= KEPT_BLOCKS, "{} lists", seen.len());
        assert!(!seen.contains(&Arc::as_ptr(&held)));
        assert_eq!(pairs(&held), want);
    }

    #[test]
    fn a_big_list_is_not_kept() {
        let mut dec = Decoder::new();
        // One 3,000-byte entry in the table, then a block naming it six
        // times: 18 KB of list from six bytes.
        let mut add = vec![0x40, 5];
        add.extend_from_slice(b"x-big");
        add.extend_from_slice(&[0x7f, 0xba, 0x16]); // 127 + 0x3a + (0x16 << 7) = 3,001
        add.extend_from_slice(&[b'v'; 3001]);
        dec.decode_shared(&add).unwrap();
        let six = [0x80 | 62; 6];
        let a = dec.decode_shared(&six).unwrap();
        let b = dec.decode_shared(&six).unwrap();
        assert_eq!(a.len(), 6);
        assert_eq!(*a, *b);
        assert!(!Arc::ptr_eq(&a, &b), "a list over the bound was kept");
        // A small block of the same table is kept as ever.
        let one = [0x80 | 62];
        let c = dec.decode_shared(&one).unwrap();
        assert!(Arc::ptr_eq(&c, &dec.decode_shared(&one).unwrap()));
    }

    #[test]
    fn shared_decoding_matches_decoding_block_by_block() {
        // A pseudo-random stream of blocks, some fields repeating, some
        // varying, with table size changes: the shared lists always say
        // what a plain decoding of the same block says.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut enc, mut shared, mut plain) = (Encoder::new(), Decoder::new(), Decoder::new());
        let mut held = Vec::new();
        for i in 0..3000 {
            if next(100) == 0 {
                enc.set_peer_table_size([0, 64, 256, 4096][next(4) as usize] as u32);
            }
            let mut block = Vec::new();
            enc.begin(&mut block);
            let fields = 1 + next(3);
            for _ in 0..fields {
                let value = match next(3) {
                    0 => format!("v{}", next(1000)),
                    _ => format!("v{}", next(2)),
                };
                let name = format!("x-{}", next(3));
                enc.encode(name.as_bytes(), value.as_bytes(), &mut block);
            }
            let got = shared.decode_shared(&block).unwrap();
            let mut want = HeaderList::new();
            plain.decode(&block, &mut want).unwrap();
            assert_eq!(*got, want, "block {i}");
            // Some lists stay held a while, as calls in flight hold them.
            if next(3) == 0 {
                held.push((got, want));
            }
            if held.len() > 8 {
                let (got, want) = held.remove(0);
                assert_eq!(*got, want, "a held list changed");
            }
        }
    }
}
