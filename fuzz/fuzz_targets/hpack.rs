//! HPACK header blocks and Huffman strings, as a peer may send them.
//!
//! - A sequence of blocks decodes the same through `decode` and through
//!   `decode_shared` (which keeps and hands out lists of repeated blocks), and
//!   both stop at the same block with an error.
//! - A Huffman string that decodes re-encodes to exactly its bytes (the code
//!   is canonical once padding must be the EOS prefix and under 8 bits); any
//!   octets encode and decode back to themselves.
//!
//! No input may panic or hang.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mp_sidecar::hpack::{Decoder, HeaderList};

#[derive(Arbitrary, Debug)]
struct Input {
    /// The blocks of one connection direction, in order.
    blocks: Vec<Vec<u8>>,
    /// A string for the Huffman checks.
    huffman: Vec<u8>,
}

fn fields(list: &HeaderList) -> Vec<(Vec<u8>, Vec<u8>)> {
    list.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect()
}

fuzz_target!(|input: Input| {
    let (mut plain, mut shared) = (Decoder::new(), Decoder::new());
    // Lists held across blocks, as calls in flight hold them: the decoder
    // must not refill a list someone holds.
    let mut held = Vec::new();
    for block in &input.blocks {
        let mut list = HeaderList::new();
        let a = plain.decode(block, &mut list);
        let b = shared.decode_shared(block);
        match (a, b) {
            (Ok(()), Ok(s)) => {
                assert_eq!(fields(&list), fields(&s), "block {block:?}");
                assert_eq!(list.size(), s.size());
                held.push((fields(&s), s));
            }
            (Err(_), Err(_)) => break,
            (a, b) => panic!("decode {a:?} but decode_shared {b:?} for {block:?}"),
        }
    }
    for (seen, list) in &held {
        assert_eq!(seen, &fields(list), "a held list changed");
    }

    let mut out = Vec::new();
    if mp_sidecar::huffman::decode(&input.huffman, &mut out).is_ok() {
        let mut again = Vec::new();
        httlib_huffman::encode(&out, &mut again).unwrap();
        assert_eq!(again, input.huffman, "decoded to {out:?}");
    }
    let mut coded = Vec::new();
    httlib_huffman::encode(&input.huffman, &mut coded).unwrap();
    out.clear();
    mp_sidecar::huffman::decode(&coded, &mut out).expect("an encoder's string");
    assert_eq!(out, input.huffman);
});
