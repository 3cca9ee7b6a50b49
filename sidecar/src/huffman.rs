//! HPACK's Huffman code (RFC 7541 §5.2 and Appendix B), decoded with a
//! table: the codes of up to 9 bits (every digit, letter and the usual
//! punctuation) are found by one lookup of the next 9 bits, the rarer
//! longer ones by a search among the codes of each length. Clients
//! Huffman-code most header values (h2, grpc-go), and one that sends a new
//! `grpc-timeout` with every call has it decoded at every call.

use std::sync::OnceLock;

use httlib_huffman::encoder::table::ENCODE_TABLE;

/// Codes this long or shorter are decoded by one lookup.
const FAST_BITS: u32 = 9;
/// The longest code (RFC 7541 Appendix B).
const MAX_LEN: usize = 30;
/// The end-of-string symbol, never valid inside a string.
const EOS: u16 = 256;

/// The decoding tables, built once from the code table.
struct Tables {
    /// By the next [`FAST_BITS`] bits: the symbol and its code's length
    /// (`symbol << 5 | length`), or 0 when the code is longer.
    fast: [u16; 1 << FAST_BITS],
    /// By length: the (code, symbol) pairs of that length, sorted by code.
    long: [Vec<(u32, u16)>; MAX_LEN + 1],
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = Tables {
            fast: [0; 1 << FAST_BITS],
            long: std::array::from_fn(|_| Vec::new()),
        };
        for (symbol, &(len, code)) in ENCODE_TABLE.iter().enumerate() {
            let (len, symbol) = (u32::from(len), symbol as u16);
            if len <= FAST_BITS {
                // Every FAST_BITS-bit sequence this code starts.
                let first = (code << (FAST_BITS - len)) as usize;
                for e in &mut t.fast[first..first + (1 << (FAST_BITS - len))] {
                    *e = symbol << 5 | len as u16;
                }
            } else {
                t.long[len as usize].push((code, symbol));
            }
        }
        for codes in &mut t.long {
            codes.sort_unstable();
        }
        t
    })
}

/// A string that is not a valid Huffman coding: a code for end-of-string
/// inside it, or padding that is not a prefix of it or is 8 bits or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCode;

/// Decodes the Huffman-coded `src`, appending the octets to `dst`.
pub fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), BadCode> {
    let t = tables();
    // The bits not decoded yet, from the most significant bit down.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    let mut rest = src;
    dst.reserve(src.len() * 8 / 5);
    loop {
        // Refill to at least MAX_LEN bits while input is left.
        while bits <= 56 {
            let Some((&b, tail)) = rest.split_first() else {
                break;
            };
            acc |= u64::from(b) << (56 - bits);
            bits += 8;
            rest = tail;
        }
        if bits == 0 {
            return Ok(());
        }
        let e = t.fast[(acc >> (64 - FAST_BITS)) as usize];
        let (symbol, len) = if e != 0 && u32::from(e & 31) <= bits {
            (e >> 5, u32::from(e & 31))
        } else {
            match long(t, acc, bits) {
                Some(found) => found,
                None => {
                    // What is left must be padding: fewer than 8 bits, all
                    // ones (the start of the end-of-string code).
                    let ones = (!0u64) << (64 - bits);
                    return if bits < 8 && acc == ones {
                        Ok(())
                    } else {
                        Err(BadCode)
                    };
                }
            }
        };
        if symbol == EOS {
            return Err(BadCode);
        }
        dst.push(symbol as u8);
        acc <<= len;
        bits -= len;
    }
}

/// The symbol whose code (longer than [`FAST_BITS`]) starts `acc`, if the
/// `bits` there hold one.
#[cold]
fn long(t: &Tables, acc: u64, bits: u32) -> Option<(u16, u32)> {
    for len in FAST_BITS + 1..=(MAX_LEN as u32).min(bits) {
        let code = (acc >> (64 - len)) as u32;
        let codes = &t.long[len as usize];
        if let Ok(i) = codes.binary_search_by_key(&code, |&(c, _)| c) {
            return Some((codes[i].1, len));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference decoder's answer, held to the RFC: it takes padding of
    /// zeros too, but a valid coding is exactly the encoding of what it
    /// decodes to (the codes follow from the octets, the padding is the
    /// end-of-string code's start).
    fn theirs(src: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        httlib_huffman::decode(src, &mut out, httlib_huffman::DecoderSpeed::OneBit).ok()?;
        (encode(&out) == src).then_some(out)
    }

    fn ours(src: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        decode(src, &mut out).ok()?;
        Some(out)
    }

    fn encode(plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        httlib_huffman::encode(plain, &mut out).expect("encodes");
        out
    }

    #[test]
    fn the_rfc_examples_decode() {
        // RFC 7541 C.4.1 and C.4.3.
        let www = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(ours(&www).as_deref(), Some(&b"www.example.com"[..]));
        let custom = [0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf];
        assert_eq!(ours(&custom).as_deref(), Some(&b"custom-value"[..]));
        assert_eq!(ours(&[]).as_deref(), Some(&b""[..]));
    }

    #[test]
    fn every_symbol_alone_and_in_company_decodes() {
        for b in 0..=255u8 {
            for plain in [vec![b], vec![b'a', b, b'0'], vec![b; 7]] {
                assert_eq!(ours(&encode(&plain)), Some(plain.clone()), "{plain:?}");
            }
        }
    }

    #[test]
    fn bad_padding_and_end_of_string_are_refused() {
        // '0' is 00000 (5 bits): the other 3 bits must be ones.
        assert_eq!(ours(&[0b0000_0111]).as_deref(), Some(&b"0"[..]));
        assert_eq!(ours(&[0b0000_0110]), None, "padding not all ones");
        assert_eq!(ours(&[0b0000_0000]), None, "padding of zeros");
        // A whole byte of padding.
        assert_eq!(ours(&[0b0000_0111, 0xff]), None, "8 bits of padding");
        // The end-of-string code (30 ones) inside the string.
        assert_eq!(ours(&[0xff, 0xff, 0xff, 0xfc]), None);
        assert_eq!(ours(&[0xff, 0xff, 0xff, 0xff]), None);
    }

    /// The same answers as the reference decoder, for random valid codings
    /// and for random bytes (mostly invalid).
    #[test]
    fn agrees_with_the_reference_decoder() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut valid, mut invalid) = (0, 0);
        for i in 0..50_000 {
            let len = (next() % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| match next() % 4 {
                    // Mostly what header values hold, some of anything.
                    0 => b"0123456789"[(next() % 10) as usize],
                    1 => b"abcdefghijklmnopqrstuvwxyz-/.:"[(next() % 30) as usize],
                    _ => next() as u8,
                })
                .collect();
            let src = if i % 2 == 0 { encode(&bytes) } else { bytes };
            let expected = theirs(&src);
            assert_eq!(ours(&src), expected, "{src:?}");
            match expected {
                Some(_) => valid += 1,
                None => invalid += 1,
            }
        }
        assert!(
            valid > 20_000 && invalid > 10_000,
            "{valid} valid, {invalid} invalid"
        );
    }
}
