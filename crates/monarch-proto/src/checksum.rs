//! Checksums for the handshake: the *retrieved* checksum the monarch computes when it fetches
//! an image, and the *written* checksum the secondary computes over what landed.
//!
//! All algorithms produce a [`Digest`] of 32 bytes on the wire; shorter checksums are
//! little-endian in the first bytes and zero-padded, so the register layout never changes.

use std::fmt;

/// Checksum algorithm, as carried in the `cfg.algo` register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algo {
    /// CRC-32C (Castagnoli), hardware-accelerated on x86-64 (SSE 4.2) and aarch64.
    Crc32c,
    /// XXH3, 64-bit.
    Xxh3,
    /// BLAKE3, 256-bit (cryptographic; the choice when images may be tampered with).
    Blake3,
}

impl Algo {
    /// Every algorithm, in register-code order.
    pub const ALL: [Algo; 3] = [Algo::Crc32c, Algo::Xxh3, Algo::Blake3];

    /// Register code.
    pub fn code(self) -> u32 {
        match self {
            Algo::Crc32c => 1,
            Algo::Xxh3 => 2,
            Algo::Blake3 => 3,
        }
    }

    /// Decode a register code; `None` for an unknown one.
    pub fn from_code(code: u32) -> Option<Algo> {
        Algo::ALL.into_iter().find(|a| a.code() == code)
    }

    /// Name used in topology files and output.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Crc32c => "crc32c",
            Algo::Xxh3 => "xxh3",
            Algo::Blake3 => "blake3",
        }
    }

    /// Parse a name as written in topology files.
    pub fn from_name(name: &str) -> Option<Algo> {
        Algo::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Number of meaningful bytes in the digest.
    pub fn digest_len(self) -> usize {
        match self {
            Algo::Crc32c => 4,
            Algo::Xxh3 => 8,
            Algo::Blake3 => 32,
        }
    }

    /// Checksum of a whole buffer.
    pub fn digest(self, data: &[u8]) -> Digest {
        let mut h = Hasher::new(self);
        h.update(data);
        h.finish()
    }
}

impl fmt::Display for Algo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A checksum as it travels in registers: 32 bytes, zero-padded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The four little-endian u64 register words.
    pub fn words(&self) -> [u64; 4] {
        let mut w = [0u64; 4];
        for (i, chunk) in self.0.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w[i] = u64::from_le_bytes(b);
        }
        w
    }

    /// Rebuild from four register words.
    pub fn from_words(words: [u64; 4]) -> Digest {
        let mut d = [0u8; 32];
        for (i, w) in words.iter().enumerate() {
            d[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        Digest(d)
    }

    /// Hex of the first `algo.digest_len()` bytes, for people.
    pub fn to_hex(&self, algo: Algo) -> String {
        self.0[..algo.digest_len()].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.0.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1).max(4);
        write!(f, "Digest(")?;
        for b in &self.0[..end] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// Streaming checksum state.
#[derive(Clone)]
pub enum Hasher {
    /// CRC-32C running value.
    Crc32c(u32),
    /// XXH3-64 state.
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
    /// BLAKE3 state.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// A fresh state for `algo`.
    pub fn new(algo: Algo) -> Hasher {
        match algo {
            Algo::Crc32c => Hasher::Crc32c(0),
            Algo::Xxh3 => Hasher::Xxh3(Box::default()),
            Algo::Blake3 => Hasher::Blake3(Box::default()),
        }
    }

    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Crc32c(c) => *c = crc32c::crc32c_append(*c, data),
            Hasher::Xxh3(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// Feed bytes whose own digest (same algorithm) is already known: CRC-32C combines the
    /// two checksums arithmetically without a second pass over the data; the others hash
    /// the bytes again.
    pub fn absorb(&mut self, data: &[u8], digest_of_data: &Digest) {
        match self {
            Hasher::Crc32c(c) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(&digest_of_data.0[..4]);
                *c = crc32c_combine(*c, u32::from_le_bytes(b), data.len() as u64);
            }
            _ => self.update(data),
        }
    }

    /// Feed `len` zero bytes: CRC-32C shifts its register past them arithmetically, in
    /// time logarithmic in `len` (a hole of a sparse image costs nothing to checksum); the
    /// others hash zeroes from a small buffer.
    pub fn update_zeros(&mut self, mut len: u64) {
        match self {
            Hasher::Crc32c(c) => *c = crc32c_extend_zeros(*c, len),
            _ => {
                const ZEROS: [u8; 16 << 10] = [0; 16 << 10];
                while len > 0 {
                    let n = usize::try_from(len.min(ZEROS.len() as u64)).unwrap_or(ZEROS.len());
                    self.update(&ZEROS[..n]);
                    len -= n as u64;
                }
            }
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(&self) -> Digest {
        let mut d = [0u8; 32];
        match self {
            Hasher::Crc32c(c) => d[..4].copy_from_slice(&c.to_le_bytes()),
            Hasher::Xxh3(h) => d[..8].copy_from_slice(&h.digest().to_le_bytes()),
            Hasher::Blake3(h) => d.copy_from_slice(h.finalize().as_bytes()),
        }
        Digest(d)
    }
}

/// The reflected CRC-32C (Castagnoli) polynomial.
const CASTAGNOLI: u32 = 0x82F6_3B78;

/// `a * b mod P` over GF(2), both operands in the reflected representation (bit 31 is x^0).
const fn mult_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ CASTAGNOLI } else { b >> 1 };
    }
}

/// `x^(2^k) mod P` for k = 0..67 (a length's bits 0..63, in bytes of 2^3 bits), built at
/// compile time. Whole, not folded onto 32 entries as zlib's CRC-32 table is: that relies on
/// x^(2^32) = x modulo CRC-32's polynomial, which is false for Castagnoli's (tested).
const X2N: [u32; 67] = {
    let mut t = [0u32; 67];
    let mut p = 1u32 << 30; // x^1
    let mut k = 0;
    while k < 67 {
        t[k] = p;
        p = mult_mod_p(p, p);
        k += 1;
    }
    t
};

/// `x^(8 * len) mod P`: the operator that shifts a CRC past `len` bytes.
fn x8n_mod_p(len: u64) -> u32 {
    let mut p = 1u32 << 31; // x^0
    for (bit, x2n) in X2N[3..].iter().enumerate() {
        if len >> bit == 0 {
            break;
        }
        if len >> bit & 1 != 0 {
            p = mult_mod_p(*x2n, p);
        }
    }
    p
}

/// CRC-32C of `A ‖ B` from `crc32c(A)`, `crc32c(B)` and the length of `B`, with one
/// polynomial product (the pre- and post-conditioning cancel, as in zlib's
/// `crc32_combine`). The `crc32c` crate's own combine builds its shift operator from
/// matrices on every call, which costs more than checksumming a 256 KiB chunk in cache (13 µs
/// against 9 µs here): the per-chunk combine of a streamed image would cost as much as the
/// checksum itself.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    mult_mod_p(x8n_mod_p(len_b), crc_a) ^ crc_b
}

/// CRC-32C of `A ‖ 0^len` from `crc32c(A)`: the raw register (the CRC without its final
/// inversion) times `x^(8 * len)`, since zero bytes shift the register and add nothing.
pub fn crc32c_extend_zeros(crc_a: u32, len: u64) -> u32 {
    mult_mod_p(x8n_mod_p(len), !crc_a) ^ !0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_answers() {
        // CRC-32C check value from RFC 3720 appendix B.4 / the Rocksoft catalogue.
        assert_eq!(Algo::Crc32c.digest(b"123456789").to_hex(Algo::Crc32c), "839206e3");
        // BLAKE3 of the empty input (from the BLAKE3 test vectors).
        assert_eq!(
            Algo::Blake3.digest(b"").to_hex(Algo::Blake3),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        // XXH3-64 of the empty input with seed value 0.
        assert_eq!(Algo::Xxh3.digest(b"").0[..8], 0x2D06800538D394C2u64.to_le_bytes());
    }

    #[test]
    fn codes_and_names_round_trip() {
        for a in Algo::ALL {
            assert_eq!(Algo::from_code(a.code()), Some(a));
            assert_eq!(Algo::from_name(a.name()), Some(a));
        }
        assert_eq!(Algo::from_code(0), None);
        assert_eq!(Algo::from_code(u32::MAX), None);
    }

    proptest! {
        #[test]
        fn streaming_equals_one_shot(data in proptest::collection::vec(any::<u8>(), 0..4096), cut in 0usize..4096) {
            let cut = cut.min(data.len());
            for a in Algo::ALL {
                let mut h = Hasher::new(a);
                h.update(&data[..cut]);
                h.update(&data[cut..]);
                prop_assert_eq!(h.finish(), a.digest(&data));
            }
        }

        #[test]
        fn absorbing_chunks_equals_hashing_the_whole(data in proptest::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..700) {
            for a in Algo::ALL {
                let mut h = Hasher::new(a);
                for c in data.chunks(chunk) {
                    h.absorb(c, &a.digest(c));
                }
                prop_assert_eq!(h.finish(), a.digest(&data));
            }
        }

        #[test]
        fn digest_words_round_trip(bytes in any::<[u8; 32]>()) {
            let d = Digest(bytes);
            prop_assert_eq!(Digest::from_words(d.words()), d);
        }
    }

    proptest! {
        #[test]
        fn the_fast_combine_agrees_with_checksumming_the_concatenation(
            a in proptest::collection::vec(any::<u8>(), 0..3000),
            b in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
            let combined = crc32c_combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b.len() as u64);
            prop_assert_eq!(combined, crc32c::crc32c(&whole));
            prop_assert_eq!(combined, crc32c::crc32c_combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b.len()));
        }
    }

    proptest! {
        #[test]
        fn zeroes_fed_by_length_equal_zeroes_fed_as_bytes(
            a in proptest::collection::vec(any::<u8>(), 0..300),
            zeros in 0usize..10_000,
        ) {
            for algo in Algo::ALL {
                let mut by_len = Hasher::new(algo);
                by_len.update(&a);
                by_len.update_zeros(zeros as u64);
                let mut by_bytes = Hasher::new(algo);
                by_bytes.update(&a);
                by_bytes.update(&vec![0u8; zeros]);
                prop_assert_eq!(by_len.finish(), by_bytes.finish());
            }
        }
    }

    #[test]
    fn zeroes_extend_alike_however_long_the_run() {
        // Past 2^29 bytes the shift operator's table must not wrap: CRC-32C's x^(2^k) cycle
        // is not zlib's CRC-32's.
        let a = crc32c::crc32c(b"monarch");
        for bits in [20u32, 28, 29, 30, 31, 32, 33, 40, 50, 61] {
            let half = 1u64 << (bits - 1);
            let whole = crc32c_extend_zeros(a, 1 << bits);
            assert_eq!(whole, crc32c_extend_zeros(crc32c_extend_zeros(a, half), half), "2^{bits} zeroes");
            // The crate's own (matrix) combine agrees, from the CRC of the zeroes alone.
            let zeros = crc32c_extend_zeros(0, 1 << bits);
            assert_eq!(crc32c_combine(a, zeros, 1 << bits), whole, "2^{bits} zeroes");
            assert_eq!(crc32c::crc32c_combine(a, zeros, 1 << bits), whole, "2^{bits} zeroes");
        }
    }

    #[test]
    fn the_fast_combine_handles_long_runs() {
        let a = b"monarch".as_slice();
        let zeros = vec![0u8; (1 << 20) + 13];
        let mut whole = a.to_vec();
        whole.extend_from_slice(&zeros);
        assert_eq!(
            crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(&zeros), zeros.len() as u64),
            crc32c::crc32c(&whole)
        );
    }
}
