//! A leaf's reply bytes, as mp-gather reads them without decoding.
//!
//! - The walker (`pb::check_envelope`) accepts exactly what prost's decoder
//!   of `mp.v1.Reply` accepts.
//! - For an accepted reply, the body found on the wire (`pb::body`) is the
//!   decoded one, and what mp-gather splices from it (a `json-array` reply,
//!   a merger's `MergeRequest`) decodes as if built from the decoded reply.
//!
//! No input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mp_gather::merge::MISSING_SHARDS;
use mp_gather::pb::{self, Body, MergeRequestWriter, Spliced};
use mp_proto::v1::{payload::Kind, LeafOutcome, MergeRequest, Reply, Request};
use prost::Message;

fuzz_target!(|bytes: &[u8]| {
    let decoded = Reply::decode(bytes);
    assert_eq!(
        pb::check_envelope(bytes).is_ok(),
        decoded.is_ok(),
        "prost says {:?}",
        decoded.as_ref().err()
    );
    let Ok(reply) = decoded else { return };
    let kind = reply.body.clone().and_then(|b| b.kind);
    match (pb::body(bytes), &kind) {
        (Body::Missing, None) | (Body::Raw, Some(Kind::Raw(_))) | (Body::Repeated, _) => {}
        (Body::Json(v), Some(Kind::Json(value))) => {
            let found = prost_types::Value::decode(v).expect("a checked value");
            assert_eq!(found.encode_to_vec(), value.encode_to_vec());
            // The json-array reducer's reply holds this value.
            let array = pb::json_array_reply(&[Some(v), None], MISSING_SHARDS, "1");
            let array = Reply::decode(array).expect("a json-array reply decodes");
            let Some(Kind::Json(prost_types::Value {
                kind: Some(prost_types::value::Kind::ListValue(list)),
            })) = array.body.and_then(|b| b.kind)
            else {
                panic!("not a list")
            };
            assert_eq!(list.values.len(), 2);
            assert_eq!(list.values[0].encode_to_vec(), value.encode_to_vec());
            assert_eq!(array.metadata[MISSING_SHARDS], "1");
        }
        (found, kind) => panic!("body {found:?} but the reply's is {kind:?}"),
    }
    // A merger's request carries the reply as it came.
    let request = Request::default().encode_to_vec();
    let mut w = MergeRequestWriter::new(&request, bytes.len());
    let fields = LeafOutcome {
        shard: 3,
        endpoint: "leaf:1".into(),
        ..Default::default()
    };
    w.leaf(&fields, Some(Spliced::Reply(bytes)));
    let framed = w.finish();
    let merge = MergeRequest::decode(&framed[5..]).expect("a merge request decodes");
    let leaf = &merge.leaves[0];
    assert_eq!(leaf.shard, 3);
    match &leaf.outcome {
        // By encoding: a NaN number is not equal to itself.
        Some(mp_proto::v1::leaf_outcome::Outcome::Reply(r)) => {
            assert_eq!(
                r.body.as_ref().map(Message::encode_to_vec),
                reply.body.as_ref().map(Message::encode_to_vec)
            );
            assert_eq!(r.metadata, reply.metadata);
        }
        other => panic!("outcome {other:?}"),
    }
});
