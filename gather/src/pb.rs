//! The protobuf wire format of the `mp.v1` messages mp-gather passes on,
//! walked without building them. A leaf's `Reply` is checked as prost would
//! decode it (same acceptance, same recursion limit) and its JSON body found,
//! so the merger's `MergeRequest` and the `json-array` reducer's reply are
//! spliced from the leaves' own bytes: no decoding and re-encoding of every
//! JSON value of every shard (a third of mp-gather's CPU time with the
//! seed's histogram leaves and merger).

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_varint, encoded_len_varint};

/// Nesting prost accepts (its default recursion limit).
const RECURSION_LIMIT: u32 = 100;

/// Why bytes are not the message they should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(&'static str);

/// The messages walked: `Request` and `Reply` share one shape (a `Payload`
/// body and string metadata); the rest are `Payload` and
/// `google.protobuf.Value`'s own.
#[derive(Debug, Clone, Copy)]
enum Msg {
    Envelope,
    Payload,
    Value,
    Struct,
    List,
    StringEntry,
    ValueEntry,
}

/// What a known field holds.
enum Ty {
    /// A message.
    Msg(Msg),
    Str,
    Bytes,
    Varint,
    Fixed64,
}

fn field(msg: Msg, num: u32) -> Option<Ty> {
    Some(match (msg, num) {
        (Msg::Envelope, 1) => Ty::Msg(Msg::Payload),
        // A map's entries are messages (prost >= 0.14.6 checks their wire
        // type too; 0.14.4 read a length whatever the type).
        (Msg::Envelope, 2) => Ty::Msg(Msg::StringEntry),
        (Msg::Payload, 1) => Ty::Msg(Msg::Value),
        (Msg::Payload, 2) => Ty::Bytes,
        // null_value (an enum), number_value, string_value, bool_value,
        // struct_value, list_value.
        (Msg::Value, 1 | 4) => Ty::Varint,
        (Msg::Value, 2) => Ty::Fixed64,
        (Msg::Value, 3) => Ty::Str,
        (Msg::Value, 5) => Ty::Msg(Msg::Struct),
        (Msg::Value, 6) => Ty::Msg(Msg::List),
        (Msg::Struct, 1) => Ty::Msg(Msg::ValueEntry),
        (Msg::List, 1) => Ty::Msg(Msg::Value),
        (Msg::StringEntry, 1 | 2) | (Msg::ValueEntry, 1) => Ty::Str,
        (Msg::ValueEntry, 2) => Ty::Msg(Msg::Value),
        _ => return None,
    })
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

#[inline]
fn varint(buf: &mut &[u8]) -> Result<u64, Malformed> {
    // Keys and most lengths are one byte.
    if let Some((&b, rest)) = buf.split_first() {
        if b < 0x80 {
            *buf = rest;
            return Ok(u64::from(b));
        }
    }
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        // The tenth byte holds the top bit only.
        if i == 9 && b > 1 {
            break;
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *buf = &buf[i + 1..];
            return Ok(value);
        }
    }
    Err(Malformed("invalid varint"))
}

fn take<'a>(buf: &mut &'a [u8], n: u64) -> Result<&'a [u8], Malformed> {
    if n > buf.len() as u64 {
        return Err(Malformed("buffer underflow"));
    }
    let (head, rest) = buf.split_at(n as usize);
    *buf = rest;
    Ok(head)
}

/// A field's number and wire type.
fn key(buf: &mut &[u8]) -> Result<(u32, u8), Malformed> {
    let key = varint(buf)?;
    if key > u64::from(u32::MAX) {
        return Err(Malformed("invalid key"));
    }
    let wire = (key & 7) as u8;
    if wire > FIXED32 {
        return Err(Malformed("invalid wire type"));
    }
    let num = (key as u32) >> 3;
    if num == 0 {
        return Err(Malformed("invalid tag value: 0"));
    }
    Ok((num, wire))
}

fn wire_is(wire: u8, expected: u8) -> Result<(), Malformed> {
    if wire == expected {
        Ok(())
    } else {
        Err(Malformed("invalid wire type"))
    }
}

fn delimited<'a>(wire: u8, buf: &mut &'a [u8]) -> Result<&'a [u8], Malformed> {
    wire_is(wire, LEN)?;
    let n = varint(buf)?;
    take(buf, n)
}

fn limit(ctx: u32) -> Result<(), Malformed> {
    if ctx == 0 {
        Err(Malformed("recursion limit reached"))
    } else {
        Ok(())
    }
}

/// Checks the fields of a `msg` whose fields prost would merge with
/// recursion budget `ctx` (nested messages and skipped fields need some left,
/// as in prost).
fn walk(mut buf: &[u8], msg: Msg, ctx: u32) -> Result<(), Malformed> {
    while !buf.is_empty() {
        if let Msg::List = msg {
            // A list's number, as every encoder writes it: values(1) of 9
            // bytes holding number_value(2), 8 bytes. What the walk below
            // would find, without walking (the budget allows a Value here
            // whenever it allows this list).
            if let [0x0a, 0x09, 0x11, _, _, _, _, _, _, _, _, rest @ ..] = buf {
                if ctx > 0 {
                    buf = rest;
                    continue;
                }
            }
        }
        let (num, wire) = key(&mut buf)?;
        match field(msg, num) {
            Some(Ty::Msg(inner)) => {
                let body = delimited(wire, &mut buf)?;
                limit(ctx)?;
                walk(body, inner, ctx - 1)?;
            }
            Some(Ty::Str) => {
                let s = delimited(wire, &mut buf)?;
                std::str::from_utf8(s)
                    .map_err(|_| Malformed("invalid string value: data is not UTF-8 encoded"))?;
            }
            Some(Ty::Bytes) => {
                delimited(wire, &mut buf)?;
            }
            Some(Ty::Varint) => {
                wire_is(wire, VARINT)?;
                varint(&mut buf)?;
            }
            Some(Ty::Fixed64) => {
                wire_is(wire, FIXED64)?;
                take(&mut buf, 8)?;
            }
            None => skip(wire, num, &mut buf, ctx)?,
        }
    }
    Ok(())
}

/// Skips an unknown field (prost keeps none).
fn skip(wire: u8, num: u32, buf: &mut &[u8], ctx: u32) -> Result<(), Malformed> {
    limit(ctx)?;
    match wire {
        VARINT => varint(buf).map(drop),
        FIXED64 => take(buf, 8).map(drop),
        LEN => {
            let n = varint(buf)?;
            take(buf, n).map(drop)
        }
        FIXED32 => take(buf, 4).map(drop),
        START_GROUP => loop {
            let (inner, inner_wire) = key(buf)?;
            if inner_wire == END_GROUP {
                if inner != num {
                    return Err(Malformed("unexpected end group tag"));
                }
                return Ok(());
            }
            skip(inner_wire, inner, buf, ctx - 1)?;
        },
        _ => Err(Malformed("unexpected end group tag")),
    }
}

/// Checks that `bytes` decode as an `mp.v1.Reply` (or `mp.v1.Request`: the
/// same shape), accepting exactly what prost accepts.
pub fn check_envelope(bytes: &[u8]) -> Result<(), Malformed> {
    walk(bytes, Msg::Envelope, RECURSION_LIMIT)
}

/// The body of a checked `mp.v1.Reply`, as found on the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// No body, or one with neither kind: JSON null to the reducer.
    Missing,
    /// A JSON body: the encoded `google.protobuf.Value`.
    Json(&'a [u8]),
    /// A raw body.
    Raw,
    /// The body or its kind occurs more than once (protobuf merges them):
    /// decode the message to know what it is.
    Repeated,
}

/// The body of `reply`, which [`check_envelope`] accepted.
pub fn body(reply: &[u8]) -> Body<'_> {
    match only_field(reply, &[1]) {
        None => Body::Missing,
        Some(Err(())) => Body::Repeated,
        // Payload's oneof: json = 1, raw = 2.
        Some(Ok((_, payload))) => match only_field(payload, &[1, 2]) {
            None => Body::Missing,
            Some(Err(())) => Body::Repeated,
            Some(Ok((1, json))) => Body::Json(json),
            Some(Ok(_)) => Body::Raw,
        },
    }
}

/// The one occurrence of any of the length-delimited fields `nums` in a
/// checked message, and its number: `None` when there is none, `Err` when
/// there are several.
fn only_field<'a>(mut buf: &'a [u8], nums: &[u32]) -> Option<Result<(u32, &'a [u8]), ()>> {
    let mut found = None;
    while let Ok((n, wire)) = key(&mut buf) {
        if wire != LEN {
            skip(wire, n, &mut buf, RECURSION_LIMIT).ok()?;
            continue;
        }
        let value = varint(&mut buf).and_then(|len| take(&mut buf, len)).ok()?;
        if nums.contains(&n) {
            if found.is_some() {
                return Some(Err(()));
            }
            found = Some((n, value));
        }
    }
    found.map(Ok)
}

/// `google.protobuf.Value` null, encoded.
const NULL_VALUE: &[u8] = &[0x08, 0x00];

/// An encoded value, or null.
fn value_of<V: AsRef<[u8]>>(v: &Option<V>) -> &[u8] {
    v.as_ref().map_or(NULL_VALUE, AsRef::as_ref)
}

fn len_field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Writes the key and length of length-delimited field `num` (1-15).
fn put_len(out: &mut BytesMut, num: u8, len: usize) {
    out.put_u8(num << 3 | LEN);
    encode_varint(len as u64, out);
}

/// The `mp.v1.Reply` whose JSON body is the array of `values` (encoded
/// `google.protobuf.Value`s; `None` is null), with `missing` as its
/// `mp-missing-shards` metadata when not empty.
pub fn json_array_reply<V: AsRef<[u8]>>(
    values: &[Option<V>],
    missing_key: &str,
    missing: &str,
) -> Bytes {
    let list: usize = values
        .iter()
        .map(|v| len_field_len(value_of(v).len()))
        .sum();
    let value = len_field_len(list);
    let payload = len_field_len(value);
    let entry = if missing.is_empty() {
        0
    } else {
        len_field_len(missing_key.len()) + len_field_len(missing.len())
    };
    let total = len_field_len(payload) + if entry > 0 { len_field_len(entry) } else { 0 };
    let mut out = BytesMut::with_capacity(total);
    put_len(&mut out, 1, payload); // Reply.body
    put_len(&mut out, 1, value); // Payload.json
    put_len(&mut out, 6, list); // Value.list_value
    for v in values {
        let v = value_of(v);
        put_len(&mut out, 1, v.len()); // ListValue.values
        out.put_slice(v);
    }
    if entry > 0 {
        put_len(&mut out, 2, entry); // Reply.metadata
        put_len(&mut out, 1, missing_key.len());
        out.put_slice(missing_key.as_bytes());
        put_len(&mut out, 2, missing.len());
        out.put_slice(missing.as_bytes());
    }
    debug_assert_eq!(out.len(), total);
    out.freeze()
}

/// The bytes before a gRPC message: compressed flag and length.
const FRAME_PREFIX: usize = 5;

/// Builds an `mp.v1.MergeRequest` from its parts, encoded: the request
/// (an encoded `mp.v1.Request`), then per shard its `LeafOutcome` without
/// the reply (encoded by prost) and the reply's encoded `mp.v1.Reply`,
/// spliced in as the outcome's `reply` field.
#[derive(Debug, Default)]
pub struct MergeRequestWriter {
    out: BytesMut,
}

impl MergeRequestWriter {
    /// Starts with the encoded `mp.v1.Request`; `room` is a hint of the
    /// bytes to come.
    pub fn new(request: &[u8], room: usize) -> Self {
        let mut out = BytesMut::with_capacity(FRAME_PREFIX + len_field_len(request.len()) + room);
        // The gRPC frame's prefix, filled in by `finish` (the message is
        // written in place, not copied into a frame after).
        out.put_bytes(0, FRAME_PREFIX);
        put_len(&mut out, 1, request.len()); // MergeRequest.request
        out.put_slice(request);
        MergeRequestWriter { out }
    }

    /// Adds one shard's outcome: `fields` (a `LeafOutcome` without its
    /// reply), and `reply` as its `reply` when there is one.
    pub fn leaf(&mut self, fields: &impl prost::Message, reply: Option<Spliced<'_>>) {
        let own = fields.encoded_len();
        let reply_len = match reply {
            None => 0,
            Some(Spliced::Reply(r)) => r.len(),
            Some(Spliced::Raw(b)) => envelope_len(b, None),
        };
        let spliced = if reply.is_some() {
            len_field_len(reply_len)
        } else {
            0
        };
        put_len(&mut self.out, 2, own + spliced); // MergeRequest.leaves
        fields
            .encode(&mut self.out)
            .expect("a BytesMut grows as needed");
        match reply {
            None => {}
            Some(Spliced::Reply(r)) => {
                put_len(&mut self.out, 2, r.len()); // LeafOutcome.reply
                self.out.put_slice(r);
            }
            Some(Spliced::Raw(b)) => {
                put_len(&mut self.out, 2, reply_len);
                put_envelope(&mut self.out, b, None);
            }
        }
    }

    /// The encoded `mp.v1.MergeRequest` in its gRPC frame.
    pub fn finish(mut self) -> Bytes {
        let len = (self.out.len() - FRAME_PREFIX) as u32;
        // Uncompressed, then the length.
        self.out[1..FRAME_PREFIX].copy_from_slice(&len.to_be_bytes());
        self.out.freeze()
    }
}

/// A leaf's reply, as a merge request carries it.
#[derive(Debug, Clone, Copy)]
pub enum Spliced<'a> {
    /// An encoded `mp.v1.Reply`, checked.
    Reply(&'a [u8]),
    /// The reply message of a method other than `mp.v1`'s: the `Reply`'s
    /// raw body.
    Raw(&'a [u8]),
}

/// The length of [`put_envelope`]'s encoding.
fn envelope_len(raw: &[u8], entry: Option<(&str, &str)>) -> usize {
    len_field_len(len_field_len(raw.len()))
        + entry.map_or(0, |(k, v)| {
            len_field_len(len_field_len(k.len()) + len_field_len(v.len()))
        })
}

/// Writes an `mp.v1.Request` or `mp.v1.Reply` with a raw body and at most
/// one metadata entry.
fn put_envelope(out: &mut BytesMut, raw: &[u8], entry: Option<(&str, &str)>) {
    put_len(out, 1, len_field_len(raw.len())); // body
    put_len(out, 2, raw.len()); // Payload.raw
    out.put_slice(raw);
    if let Some((k, v)) = entry {
        put_len(out, 2, len_field_len(k.len()) + len_field_len(v.len())); // metadata
        put_len(out, 1, k.len());
        out.put_slice(k.as_bytes());
        put_len(out, 2, v.len());
        out.put_slice(v.as_bytes());
    }
}

/// An encoded `mp.v1.Request` with a raw `body` and the metadata entry
/// `key`: `value`.
pub fn raw_request(body: &[u8], key: &str, value: &str) -> Bytes {
    let entry = Some((key, value));
    let mut out = BytesMut::with_capacity(envelope_len(body, entry));
    put_envelope(&mut out, body, entry);
    out.freeze()
}

#[cfg(test)]
mod tests;
