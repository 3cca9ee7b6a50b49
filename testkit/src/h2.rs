//! Raw HTTP/2 bytes for tests that speak to a server below any client
//! library: a frame parser and deterministic random frames.

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty SETTINGS frame.
pub const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// The complete frames at the start of `bytes`: (type, flags, stream,
/// payload); an incomplete last frame is left out.
pub fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

/// A deterministic pseudo-random sequence (xorshift64): the same seed, the
/// same bytes, so a failure can be replayed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A sequence from `seed` (not 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Up to 40 random frames: every frame type (and an unknown one), random
/// flags, small odd and even stream ids, payloads of up to 40 bytes that
/// often look like header blocks of HPACK's static table.
pub fn random_frames(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..(rng.next_u64() % 40) {
        let r = rng.next_u64();
        let len = (r % 40) as usize;
        let kind = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x42][(r >> 8) as usize % 11];
        let flags = (r >> 16) as u8;
        let stream = ((r >> 24) % 8) as u32;
        out.extend_from_slice(&[0, 0, len as u8, kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend((0..len).map(|k| {
            if k % 2 == 0 {
                0x80 | (rng.next_u64() % 62) as u8
            } else {
                rng.next_u64() as u8
            }
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_frames_parse_back_whole() {
        let mut rng = Rng::new(7);
        for _ in 0..100 {
            let bytes = random_frames(&mut rng);
            let fs = frames(&bytes);
            let total: usize = fs.iter().map(|f| 9 + f.3.len()).sum();
            assert_eq!(total, bytes.len(), "every frame is complete");
        }
    }
}
