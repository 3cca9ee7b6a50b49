//! The wire walker against prost itself: what one accepts the other does,
//! and what is spliced decodes to what prost would have built.

use super::*;
use mp_proto::v1::{
    leaf_outcome, payload, LeafError, LeafOutcome, MergeRequest, Payload, Reply, Request,
};
use prost::Message;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

/// A small deterministic generator (xorshift), so failures repeat.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn value(rng: &mut Rng, depth: u32) -> Value {
    let kind = match rng.below(if depth > 3 { 4 } else { 6 }) {
        0 => Kind::NullValue(0),
        1 => Kind::NumberValue(rng.next() as f64 / 7.0),
        2 => Kind::StringValue(["", "a", "héllo", "shard"][rng.below(4) as usize].into()),
        3 => Kind::BoolValue(rng.below(2) == 1),
        4 => Kind::StructValue(Struct {
            fields: (0..rng.below(4))
                .map(|i| (format!("k{i}"), value(rng, depth + 1)))
                .collect(),
        }),
        _ => Kind::ListValue(ListValue {
            values: (0..rng.below(5)).map(|_| value(rng, depth + 1)).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fn reply(rng: &mut Rng) -> Reply {
    let body = match rng.below(4) {
        0 => None,
        1 => Some(Payload { kind: None }),
        2 => Some(Payload {
            kind: Some(payload::Kind::Raw(vec![7; rng.below(20) as usize])),
        }),
        _ => Some(Payload {
            kind: Some(payload::Kind::Json(value(rng, 0))),
        }),
    };
    Reply {
        body,
        metadata: (0..rng.below(3))
            .map(|i| (format!("m{i}"), "v".repeat(i as usize)))
            .collect(),
    }
}

/// Flips, cuts, inserts or duplicates bytes of a valid encoding.
fn mutate(rng: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(3) {
        let at = if b.is_empty() {
            0
        } else {
            rng.below(b.len() as u64) as usize
        };
        match rng.below(5) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at] = rng.next() as u8,
            2 => b.truncate(at),
            3 => b.insert(at, rng.next() as u8),
            _ => {
                let end = (at + 1 + rng.below(8) as usize).min(b.len());
                let copy = b[at..end].to_vec();
                b.splice(at..at, copy);
            }
        }
    }
    b
}

#[test]
fn the_walker_accepts_exactly_what_prost_decodes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut bad) = (0, 0);
    for i in 0..20_000 {
        let valid = reply(&mut rng).encode_to_vec();
        let bytes = if i % 4 == 0 {
            valid
        } else {
            mutate(&mut rng, valid)
        };
        let prost_ok = Reply::decode(bytes.as_slice()).is_ok();
        assert_eq!(
            check_envelope(&bytes).is_ok(),
            prost_ok,
            "case {i}: {bytes:?}: prost says {:?}",
            Reply::decode(bytes.as_slice()).err()
        );
        if prost_ok {
            ok += 1;
        } else {
            bad += 1;
        }
    }
    // Both kinds were tried in earnest.
    assert!(ok > 5_000 && bad > 5_000, "{ok} accepted, {bad} refused");
}

#[test]
fn nesting_is_limited_where_prost_limits_it() {
    for depth in 1..240 {
        // Numbers too: a list of them is checked without a walk.
        let mut v = Value {
            kind: Some(if depth % 2 == 0 {
                Kind::NullValue(0)
            } else {
                Kind::NumberValue(1.5)
            }),
        };
        let depth = depth / 2;
        for d in 0..depth {
            v = Value {
                kind: Some(if d % 2 == 0 {
                    Kind::ListValue(ListValue { values: vec![v] })
                } else {
                    Kind::StructValue(Struct {
                        fields: [("k".to_string(), v)].into(),
                    })
                }),
            };
        }
        let bytes = Reply {
            body: Some(Payload {
                kind: Some(payload::Kind::Json(v)),
            }),
            metadata: Default::default(),
        }
        .encode_to_vec();
        assert_eq!(
            check_envelope(&bytes).is_ok(),
            Reply::decode(bytes.as_slice()).is_ok(),
            "depth {depth}"
        );
    }
}

#[test]
fn a_list_of_numbers_at_the_limit_is_refused_as_prost_refuses_it() {
    // Lists and structs use up the budget by 2 and 3 levels: some mix puts
    // the innermost list (of a number) at every remaining budget, 0 too.
    for structs in 0..3 {
        for lists in 1..60 {
            let mut v = Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![Value {
                        kind: Some(Kind::NumberValue(2.0)),
                    }],
                })),
            };
            for _ in 1..lists {
                v = Value {
                    kind: Some(Kind::ListValue(ListValue { values: vec![v] })),
                };
            }
            for _ in 0..structs {
                v = Value {
                    kind: Some(Kind::StructValue(Struct {
                        fields: [("k".to_string(), v)].into(),
                    })),
                };
            }
            let bytes = json_reply(v);
            assert_eq!(
                check_envelope(&bytes).is_ok(),
                Reply::decode(bytes.as_slice()).is_ok(),
                "{structs} structs around {lists} lists"
            );
        }
    }
}

#[test]
fn unknown_fields_and_groups_are_skipped_as_prost_skips_them() {
    let known = Reply {
        body: Some(Payload {
            kind: Some(payload::Kind::Json(Value {
                kind: Some(Kind::NumberValue(1.0)),
            })),
        }),
        metadata: Default::default(),
    }
    .encode_to_vec();
    let cases: &[&[u8]] = &[
        &[0x18, 0x05],                         // field 3, varint
        &[0x1d, 1, 2, 3, 4],                   // field 3, fixed32
        &[0x19, 1, 2, 3, 4, 5, 6, 7, 8],       // field 3, fixed64
        &[0x1a, 0x02, 0xff, 0xfe],             // field 3, bytes (not UTF-8: unknown, so fine)
        &[0x1b, 0x08, 0x01, 0x1c],             // field 3, a group holding a varint
        &[0x1b, 0x08, 0x01, 0x24],             // a group ended by another field's end
        &[0x1c],                               // an end group with no start
        &[0x1e],                               // wire type 6
        &[0x00, 0x01],                         // field 0
        &[0x0a, 0x02, 0x10],                   // body: a payload cut short
        &[0x12, 0x04, 0x0a, 0x02, 0xc3, 0x28], // metadata key not UTF-8
        &[0x08, 0x01],                         // body as a varint: wrong wire type
        // Maps of the wrong wire type (prost 0.14.4 read a length whatever
        // the type; 0.14.6 refuses them, as the walker now does).
        &[0x10, 0x02, 0x0a, 0x00],       // metadata as a varint
        &[0x11, 0, 0, 0, 0, 0, 0, 0, 0], // metadata as a fixed64
        &[0x0a, 0x06, 0x0a, 0x04, 0x2a, 0x02, 0x08, 0x00], // a struct's fields as a varint
        &[0x0a, 0x06, 0x0a, 0x04, 0x2a, 0x02, 0x0a, 0x00], // the same, well typed
    ];
    for extra in cases {
        let mut bytes = known.clone();
        bytes.extend_from_slice(extra);
        assert_eq!(
            check_envelope(&bytes).is_ok(),
            Reply::decode(bytes.as_slice()).is_ok(),
            "{extra:?}"
        );
    }
}

fn json_reply(v: Value) -> Vec<u8> {
    Reply {
        body: Some(Payload {
            kind: Some(payload::Kind::Json(v)),
        }),
        metadata: Default::default(),
    }
    .encode_to_vec()
}

#[test]
fn the_body_is_found_or_left_to_the_decoder() {
    let number = Value {
        kind: Some(Kind::NumberValue(2.5)),
    };
    assert_eq!(
        body(&json_reply(number.clone())),
        Body::Json(&number.encode_to_vec())
    );
    assert_eq!(body(&Reply::default().encode_to_vec()), Body::Missing);
    let empty = Reply {
        body: Some(Payload { kind: None }),
        metadata: [("k".to_string(), "v".to_string())].into(),
    };
    assert_eq!(body(&empty.encode_to_vec()), Body::Missing);
    let raw = Reply {
        body: Some(Payload {
            kind: Some(payload::Kind::Raw(b"x".to_vec())),
        }),
        metadata: Default::default(),
    };
    assert_eq!(body(&raw.encode_to_vec()), Body::Raw);
    // Two bodies (or two kinds) merge when decoded.
    let mut twice = json_reply(number.clone());
    twice.extend(json_reply(number));
    assert_eq!(body(&twice), Body::Repeated);
    let mut bodies = raw.encode_to_vec();
    bodies.extend(empty.encode_to_vec());
    assert_eq!(body(&bodies), Body::Repeated);
    // One payload with both kinds: the last wins when decoded.
    let both = [0x0a, 0x07, 0x12, 0x01, b'x', 0x0a, 0x02, 0x20, 0x01];
    assert!(Reply::decode(&both[..]).is_ok());
    assert_eq!(body(&both), Body::Repeated);
    // Unknown fields around the kind do not hide it.
    let around = [0x0a, 0x07, 0x18, 0x01, 0x12, 0x01, b'x', 0x28, 0x00];
    assert!(check_envelope(&around).is_ok());
    assert_eq!(body(&around), Body::Raw);
}

#[test]
fn a_spliced_json_array_decodes_as_the_built_one() {
    let mut rng = Rng(7);
    for n in 0..60 {
        let values: Vec<Option<Value>> = (0..n % 12)
            .map(|_| (rng.below(5) > 0).then(|| value(&mut rng, 0)))
            .collect();
        let encoded: Vec<Option<Vec<u8>>> = values
            .iter()
            .map(|v| v.as_ref().map(Message::encode_to_vec))
            .collect();
        let slices: Vec<Option<&[u8]>> = encoded.iter().map(|v| v.as_deref()).collect();
        let missing = if n % 3 == 0 { "" } else { "1,4" };
        let spliced = json_array_reply(&slices, "mp-missing-shards", missing);
        let null = Value {
            kind: Some(Kind::NullValue(0)),
        };
        let built = Reply {
            body: Some(Payload {
                kind: Some(payload::Kind::Json(Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: values
                            .into_iter()
                            .map(|v| v.unwrap_or(null.clone()))
                            .collect(),
                    })),
                })),
            }),
            metadata: if missing.is_empty() {
                Default::default()
            } else {
                [("mp-missing-shards".to_string(), missing.to_string())].into()
            },
        };
        assert_eq!(Reply::decode(spliced).unwrap(), built, "case {n}");
    }
}

#[test]
fn a_spliced_merge_request_decodes_as_the_built_one() {
    let mut rng = Rng(11);
    let request = Request {
        body: Some(Payload {
            kind: Some(payload::Kind::Json(value(&mut rng, 0))),
        }),
        metadata: [("x-tenant".to_string(), "t".to_string())].into(),
    };
    let replies: Vec<Reply> = (0..5).map(|_| reply(&mut rng)).collect();
    let mut w = MergeRequestWriter::new(&request.encode_to_vec(), 0);
    let mut leaves = Vec::new();
    for (i, r) in replies.iter().enumerate() {
        let mut outcome = LeafOutcome {
            shard: i as u32,
            outcome: None,
            elapsed: Some(prost_types::Duration {
                seconds: 0,
                nanos: 1_000 * i as i32,
            }),
            endpoint: format!("127.0.0.1:{}", 9000 + i),
            hedged: i == 3,
        };
        if i == 2 {
            outcome.outcome = Some(leaf_outcome::Outcome::Error(LeafError {
                code: 14,
                message: "down".into(),
            }));
            w.leaf(&outcome, None);
        } else {
            let bytes = r.encode_to_vec();
            if i == 4 {
                // A reply of another method: its bytes as the raw body.
                w.leaf(&outcome, Some(Spliced::Raw(&bytes)));
                outcome.outcome = Some(leaf_outcome::Outcome::Reply(Reply {
                    body: Some(Payload {
                        kind: Some(payload::Kind::Raw(bytes)),
                    }),
                    metadata: Default::default(),
                }));
            } else {
                w.leaf(&outcome, Some(Spliced::Reply(&bytes)));
                outcome.outcome = Some(leaf_outcome::Outcome::Reply(r.clone()));
            }
        }
        leaves.push(outcome);
    }
    let built = MergeRequest {
        request: Some(request),
        leaves,
    };
    let framed = w.finish();
    assert_eq!(framed[0], 0, "not compressed");
    let len = u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize;
    assert_eq!(len, framed.len() - 5);
    assert_eq!(MergeRequest::decode(&framed[5..]).unwrap(), built);
}

#[test]
fn a_raw_request_decodes_as_the_built_one() {
    let bytes = raw_request(b"\x0a\x01z", "mp-method", "/demo.Catalog/Search");
    let built = Request {
        body: Some(Payload {
            kind: Some(payload::Kind::Raw(b"\x0a\x01z".to_vec())),
        }),
        metadata: [("mp-method".to_string(), "/demo.Catalog/Search".to_string())].into(),
    };
    assert_eq!(Request::decode(bytes).unwrap(), built);
}
