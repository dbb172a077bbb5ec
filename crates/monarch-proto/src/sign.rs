//! Signed images: Ed25519 signatures over an image's BLAKE3 digest, and the three small text
//! formats they travel in — a secret key (`.key`), a public key (`.pub`) and a detached
//! signature (`.sig`). No file is opened here: callers hand in bytes and get values or a
//! [`FormatError`] naming the field; everything parsed is untrusted (a `.sig` reaches a
//! secondary through a window or over the network).
//!
//! Each file is one line of ASCII, fields separated by one space, ending in one `\n`:
//!
//! ```text
//! monarch-key v1 ed25519 <secret seed: 64 lowercase hex>
//! monarch-pub v1 ed25519 <public key: 64 lowercase hex>
//! monarch-sig v1 ed25519 <key id: 16 hex> <image length: decimal> <blake3: 64 hex> <signature: 128 hex>
//! ```
//!
//! The key id is the first 8 bytes of BLAKE3 of the public key: it lets a verifier say *which*
//! key signed, and that it does not trust it. The signed message is
//! `"monarch-sig v1 ed25519\0" ‖ length (u64 LE) ‖ BLAKE3(image)` (domain-separated, so a
//! signature made for anything else never verifies as an image signature). The length and
//! digest in the `.sig` are a copy of what was signed, kept for the error message ("signed an
//! image of N bytes"); verification recomputes both from the bytes it holds, never trusts
//! them. Parsing is strict: lowercase hex only, no leading zeros, no extra space or line, so
//! a single flipped bit anywhere in a `.sig` either fails to parse or fails to verify.
//!
//! Why BLAKE3: the workspace already carries it (a window checksum and the netboot digest),
//! it is a cryptographic hash, and it is the fastest one on hand (several GiB/s with SIMD,
//! against ~0.7 GiB/s for SHA-512), so a secondary re-hashing a 30 MiB image pays
//! milliseconds. Ed25519 then signs 62 bytes.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use std::fmt;
use thiserror::Error;

/// First field of a secret key file.
pub const KEY_TAG: &str = "monarch-key";
/// First field of a public key file.
pub const PUB_TAG: &str = "monarch-pub";
/// First field of a signature file.
pub const SIG_TAG: &str = "monarch-sig";
/// The format version this build reads and writes.
pub const VERSION: &str = "v1";
/// The signature algorithm.
pub const ALGORITHM: &str = "ed25519";
/// Longest `.sig` record accepted (the longest valid one is 249 bytes).
pub const SIG_MAX: usize = 256;
/// Domain separation prefix of the signed message.
const DOMAIN: &[u8] = b"monarch-sig v1 ed25519\0";

/// Why a key or signature record does not parse. Every variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// Not one line of printable ASCII ending in `\n`.
    #[error("not a {kind} record: expected one line of text ending in a newline ({why})")]
    NotALine {
        /// Which record (`key`, `pub`, `sig`).
        kind: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The record is longer than any valid one.
    #[error("a {kind} record is at most {max} bytes, this one has {len}")]
    TooLong {
        /// Which record.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The first field is not the expected tag.
    #[error("the record starts with {found:?}, not {expected:?}")]
    WrongTag {
        /// What was expected.
        expected: &'static str,
        /// What was found (shortened).
        found: String,
    },
    /// A version this build does not read.
    #[error(
        "format version {found:?} is not supported (this build reads {VERSION}); use a monarch as new as the one that wrote it"
    )]
    Version {
        /// What was found.
        found: String,
    },
    /// An algorithm this build does not know.
    #[error("algorithm {found:?} is not supported (only {ALGORITHM})")]
    Algorithm {
        /// What was found.
        found: String,
    },
    /// Too few or too many fields.
    #[error("a {kind} record has {expected} fields separated by single spaces, this one has {found}")]
    Fields {
        /// Which record.
        kind: &'static str,
        /// How many it must have.
        expected: usize,
        /// How many it has.
        found: usize,
    },
    /// A field is not the expected number of lowercase hex digits.
    #[error("field {field}: expected {digits} lowercase hex digits")]
    Hex {
        /// Field name.
        field: &'static str,
        /// Digits expected.
        digits: usize,
    },
    /// The length field is not a canonical decimal number.
    #[error("field length: expected a decimal number of bytes without leading zeros")]
    Length,
    /// An attached-signature trailer whose length does not fit.
    #[error("the image ends in a signature trailer (MNRCHSIG) whose length {0} does not fit")]
    Trailer(u32),
    /// The public key is not a valid Ed25519 point.
    #[error("field key: not a valid Ed25519 public key")]
    Key,
}

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// Signed by a key that is not among the trusted ones.
    #[error("signed by key {signer}, which is not trusted (trusted: {})", list(trusted))]
    Untrusted {
        /// The key id in the signature.
        signer: KeyId,
        /// The trusted key ids.
        trusted: Vec<KeyId>,
    },
    /// The signature names another length: it was made for another image.
    #[error(
        "the signature is of a {signed}-byte image, this image has {len} bytes: a signature of another image"
    )]
    OtherLength {
        /// Length in the signature.
        signed: u64,
        /// Length of the bytes held.
        len: u64,
    },
    /// Same length, another digest: the image changed after signing, or it is another image.
    #[error(
        "the image's BLAKE3 digest is {actual}, the signature was made over {signed}: the image changed after it was signed, or the signature is of another image"
    )]
    OtherDigest {
        /// Digest in the signature (hex).
        signed: String,
        /// Digest of the bytes held (hex).
        actual: String,
    },
    /// The Ed25519 signature itself does not verify over this image with the named key.
    #[error(
        "the Ed25519 signature does not verify with key {signer} over this image (a damaged or forged signature)"
    )]
    BadSignature {
        /// The key it claims.
        signer: KeyId,
    },
}

fn list(ids: &[KeyId]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// A key's short id: the first 8 bytes of BLAKE3 of its public key, shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// What is signed of an image: its length and BLAKE3 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageDigest {
    /// Bytes.
    pub len: u64,
    /// BLAKE3 of the bytes.
    pub blake3: [u8; 32],
}

impl ImageDigest {
    /// The digest of `image`.
    pub fn of(image: &[u8]) -> ImageDigest {
        let mut h = ImageHasher::default();
        h.update(image);
        h.finish()
    }

    /// The message Ed25519 signs.
    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(DOMAIN.len() + 40);
        m.extend_from_slice(DOMAIN);
        m.extend_from_slice(&self.len.to_le_bytes());
        m.extend_from_slice(&self.blake3);
        m
    }
}

/// An [`ImageDigest`] computed piece by piece, for bytes that arrive in chunks.
#[derive(Default)]
pub struct ImageHasher {
    hasher: blake3::Hasher,
    len: u64,
}

impl ImageHasher {
    /// Absorb the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        // Large inputs: BLAKE3's SIMD path hashes several chunks at once.
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// The digest of everything absorbed.
    pub fn finish(&self) -> ImageDigest {
        ImageDigest { len: self.len, blake3: *self.hasher.finalize().as_bytes() }
    }
}

/// A public key: what a secondary trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PublicKey {
    /// From the 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, FormatError> {
        VerifyingKey::from_bytes(bytes).map(PublicKey).map_err(|_| FormatError::Key)
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Its short id.
    pub fn id(&self) -> KeyId {
        let h = blake3::hash(self.0.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&h.as_bytes()[..8]);
        KeyId(id)
    }

    /// The `.pub` record.
    pub fn to_record(&self) -> String {
        format!("{PUB_TAG} {VERSION} {ALGORITHM} {}\n", hex(&self.0.to_bytes()))
    }

    /// Parse a `.pub` record.
    pub fn parse(record: &[u8]) -> Result<PublicKey, FormatError> {
        let f = fields(record, "pub", PUB_TAG, 4, 128)?;
        PublicKey::from_bytes(&unhex::<32>(f[3], "key")?)
    }

    /// The raw key as 64 hex digits (for a kernel command line, where spaces separate
    /// parameters).
    pub fn to_hex(&self) -> String {
        hex(&self.0.to_bytes())
    }

    /// Parse 64 hex digits (see [`PublicKey::to_hex`]).
    pub fn from_hex(s: &str) -> Result<PublicKey, FormatError> {
        PublicKey::from_bytes(&unhex::<32>(s, "key")?)
    }
}

/// A secret key: what signs. Its bytes are wiped when dropped (`ed25519-dalek`'s zeroize).
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public().id())
    }
}

impl SecretKey {
    /// From a 32-byte seed, which must be uniformly random (the caller reads it from the OS).
    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(seed))
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The `.key` record (secret: write it where only its owner can read it).
    pub fn to_record(&self) -> String {
        format!("{KEY_TAG} {VERSION} {ALGORITHM} {}\n", hex(&self.0.to_bytes()))
    }

    /// Parse a `.key` record.
    pub fn parse(record: &[u8]) -> Result<SecretKey, FormatError> {
        let f = fields(record, "key", KEY_TAG, 4, 128)?;
        Ok(SecretKey::from_seed(&unhex::<32>(f[3], "seed")?))
    }

    /// Sign an image of which `digest` is the digest.
    pub fn sign(&self, digest: &ImageDigest) -> Signature {
        let sig = self.0.sign(&digest.message());
        Signature { signer: self.public().id(), signed: *digest, sig: sig.to_bytes() }
    }
}

/// A detached signature: the `.sig` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Which key made it.
    pub signer: KeyId,
    /// What it says it signed (informative: verification recomputes it).
    pub signed: ImageDigest,
    /// The Ed25519 signature.
    pub sig: [u8; 64],
}

impl Signature {
    /// The `.sig` record.
    pub fn to_record(&self) -> String {
        format!(
            "{SIG_TAG} {VERSION} {ALGORITHM} {} {} {} {}\n",
            self.signer,
            self.signed.len,
            hex(&self.signed.blake3),
            hex(&self.sig)
        )
    }

    /// Parse a `.sig` record (untrusted bytes).
    pub fn parse(record: &[u8]) -> Result<Signature, FormatError> {
        let f = fields(record, "sig", SIG_TAG, 7, SIG_MAX)?;
        let signer = KeyId(unhex::<8>(f[3], "key id")?);
        let len = f[4];
        if len.is_empty()
            || len.len() > 20
            || !len.bytes().all(|b| b.is_ascii_digit())
            || (len.len() > 1 && len.starts_with('0'))
        {
            return Err(FormatError::Length);
        }
        let len: u64 = len.parse().map_err(|_| FormatError::Length)?;
        let blake3 = unhex::<32>(f[5], "blake3")?;
        let sig = unhex::<64>(f[6], "signature")?;
        Ok(Signature { signer, signed: ImageDigest { len, blake3 }, sig })
    }

    /// Verify this signature over the image whose digest `actual` the verifier computed from
    /// the bytes it holds, with one of `trusted`. Returns the key that verified.
    pub fn verify(&self, trusted: &[PublicKey], actual: &ImageDigest) -> Result<KeyId, VerifyError> {
        let Some(key) = trusted.iter().find(|k| k.id() == self.signer) else {
            return Err(VerifyError::Untrusted {
                signer: self.signer,
                trusted: trusted.iter().map(PublicKey::id).collect(),
            });
        };
        if self.signed.len != actual.len {
            return Err(VerifyError::OtherLength { signed: self.signed.len, len: actual.len });
        }
        if self.signed.blake3 != actual.blake3 {
            return Err(VerifyError::OtherDigest {
                signed: hex(&self.signed.blake3),
                actual: hex(&actual.blake3),
            });
        }
        let sig = ed25519_dalek::Signature::from_bytes(&self.sig);
        key.0
            .verify_strict(&actual.message(), &sig)
            .map_err(|_| VerifyError::BadSignature { signer: self.signer })?;
        Ok(self.signer)
    }
}

/// Last 8 bytes of an image that carries its signature (over the network, where there is no
/// register page): `image ‖ .sig record ‖ record length (u32 LE) ‖ "MNRCHSIG"`.
pub const ATTACHED_MAGIC: &[u8; 8] = b"MNRCHSIG";

/// The trailer that attaches `record` to an image (see [`ATTACHED_MAGIC`]).
pub fn attach(record: &[u8]) -> Vec<u8> {
    let mut t = record.to_vec();
    t.extend_from_slice(&u32::try_from(record.len()).unwrap_or(u32::MAX).to_le_bytes());
    t.extend_from_slice(ATTACHED_MAGIC);
    t
}

/// Split bytes that may carry an attached signature into the image and the record (untrusted
/// input). No trailer: all of it is the image, unsigned. A trailer that does not fit is an
/// error, never a shorter image.
pub fn detach(bytes: &[u8]) -> Result<(&[u8], Option<&[u8]>), FormatError> {
    let Some(tail) = bytes.len().checked_sub(12).map(|t| &bytes[t..]) else { return Ok((bytes, None)) };
    if &tail[4..] != ATTACHED_MAGIC {
        return Ok((bytes, None));
    }
    let mut n = [0u8; 4];
    n.copy_from_slice(&tail[..4]);
    let len = u32::from_le_bytes(n);
    let n = usize::try_from(len).map_err(|_| FormatError::Trailer(len))?;
    if n > SIG_MAX || n + 12 > bytes.len() {
        return Err(FormatError::Trailer(len));
    }
    let end = bytes.len() - 12;
    Ok((&bytes[..end - n], Some(&bytes[end - n..end])))
}

/// Split a record into exactly `n` fields and check tag, version and algorithm.
fn fields<'a>(
    record: &'a [u8],
    kind: &'static str,
    tag: &'static str,
    n: usize,
    max: usize,
) -> Result<Vec<&'a str>, FormatError> {
    if record.len() > max {
        return Err(FormatError::TooLong { kind, len: record.len(), max });
    }
    let Some(line) = record.strip_suffix(b"\n") else {
        return Err(FormatError::NotALine { kind, why: "no newline at the end" });
    };
    if !line.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(FormatError::NotALine {
            kind,
            why: "a byte that is not printable ASCII, or a second line",
        });
    }
    // Printable ASCII: valid UTF-8.
    let line = std::str::from_utf8(line).map_err(|_| FormatError::NotALine { kind, why: "not ASCII" })?;
    let f: Vec<&str> = line.split(' ').collect();
    if f[0] != tag {
        return Err(FormatError::WrongTag { expected: tag, found: f[0].chars().take(24).collect() });
    }
    if f.len() != n {
        return Err(FormatError::Fields { kind, expected: n, found: f.len() });
    }
    if f[1] != VERSION {
        return Err(FormatError::Version { found: f[1].chars().take(24).collect() });
    }
    if f[2] != ALGORITHM {
        return Err(FormatError::Algorithm { found: f[2].chars().take(24).collect() });
    }
    Ok(f)
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex<const N: usize>(s: &str, field: &'static str) -> Result<[u8; N], FormatError> {
    let err = FormatError::Hex { field, digits: 2 * N };
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(err.clone()),
    };
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return Err(err.clone());
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEED: [u8; 32] = [7; 32];

    fn key() -> SecretKey {
        SecretKey::from_seed(&SEED)
    }

    #[test]
    fn golden_records() {
        // Pinned bytes: if these change, the formats changed, and so must VERSION.
        let k = key();
        assert_eq!(
            k.to_record(),
            "monarch-key v1 ed25519 0707070707070707070707070707070707070707070707070707070707070707\n"
        );
        let p = k.public();
        assert_eq!(
            p.to_record(),
            "monarch-pub v1 ed25519 ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c\n"
        );
        assert_eq!(p.id().to_string(), "0871f3aabc26e458");
        let s = k.sign(&ImageDigest::of(b"hello, secondary"));
        // The signature was checked against an independent Ed25519 implementation (Python's
        // `cryptography`) over DOMAIN ‖ 16u64 LE ‖ the digest below.
        assert_eq!(
            s.to_record(),
            "monarch-sig v1 ed25519 0871f3aabc26e458 16 \
             ff07b8ca9c2752c2615b50b273a6a9c161db73cffb7cd6b1263631c38175fb35 \
             79aec3ee2b7af0545156a7e7291f9a9d33c6111a4d7bb24443d521e9dd76deb5\
             c49d959560874963ec1354e983c2efc797b8713c11e319e3e97b27e5b239140d\n"
        );
    }

    #[test]
    fn records_round_trip_and_verify() {
        let k = key();
        assert_eq!(SecretKey::parse(k.to_record().as_bytes()).unwrap().public(), k.public());
        let p = PublicKey::parse(k.public().to_record().as_bytes()).unwrap();
        assert_eq!(PublicKey::from_hex(&p.to_hex()).unwrap(), p);
        let image = b"the image".as_slice();
        let d = ImageDigest::of(image);
        let s = Signature::parse(k.sign(&d).to_record().as_bytes()).unwrap();
        assert_eq!(s.verify(std::slice::from_ref(&p), &d).unwrap(), p.id());
        // Streaming digest = one-shot digest.
        let mut h = ImageHasher::default();
        h.update(&image[..3]);
        h.update(&image[3..]);
        assert_eq!(h.finish(), d);
    }

    #[test]
    fn each_refusal_names_why() {
        let k = key();
        let other = SecretKey::from_seed(&[9; 32]);
        let image = vec![0x5a; 1000];
        let d = ImageDigest::of(&image);
        let s = k.sign(&d);
        let trusted = [k.public()];
        // Wrong key.
        let e = other.sign(&d).verify(&trusted, &d).unwrap_err();
        assert!(matches!(e, VerifyError::Untrusted { .. }), "{e}");
        assert!(e.to_string().contains(&k.public().id().to_string()), "{e}");
        // A signature of another image.
        let e = s.verify(&trusted, &ImageDigest::of(&image[1..])).unwrap_err();
        assert!(matches!(e, VerifyError::OtherLength { signed: 1000, len: 999 }), "{e}");
        let mut tampered = image.clone();
        tampered[500] ^= 1;
        let e = s.verify(&trusted, &ImageDigest::of(&tampered)).unwrap_err();
        assert!(matches!(e, VerifyError::OtherDigest { .. }), "{e}");
        // A signature whose claimed digest was edited to match a tampered image.
        let mut forged = s.clone();
        forged.signed = ImageDigest::of(&tampered);
        let e = forged.verify(&trusted, &ImageDigest::of(&tampered)).unwrap_err();
        assert!(matches!(e, VerifyError::BadSignature { .. }), "{e}");
        // No trusted key at all.
        assert!(matches!(s.verify(&[], &d).unwrap_err(), VerifyError::Untrusted { .. }));
    }

    #[test]
    fn truncated_and_garbled_records_are_refused() {
        let rec = key().sign(&ImageDigest::of(b"x")).to_record();
        for n in 0..rec.len() {
            assert!(Signature::parse(&rec.as_bytes()[..n]).is_err(), "truncated to {n}");
        }
        let bad = [
            ("", "no newline"),
            ("monarch-sig v1 ed25519 0fe2\n", "fields"),
            ("monarch-pub v1 ed25519 00\n", "monarch-pub"),
            ("monarch-sig v2 ed25519 a b c d\n", "version"),
            ("monarch-sig v1 rsa a b c d\n", "algorithm"),
        ];
        for (rec, what) in bad {
            let e = Signature::parse(rec.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(what), "{rec:?}: {e}");
        }
        let up = rec.replacen("a", "A", 1);
        assert!(Signature::parse(up.as_bytes()).is_err(), "uppercase hex");
        let sp = rec.replacen(' ', "  ", 1);
        assert!(Signature::parse(sp.as_bytes()).is_err(), "double space");
        let two = format!("{rec}{rec}");
        assert!(Signature::parse(two.as_bytes()).is_err(), "two lines");
        let crlf = rec.replace('\n', "\r\n");
        assert!(Signature::parse(crlf.as_bytes()).is_err(), "CRLF");
        let lead = rec.replacen(" 1 ", " 01 ", 1);
        assert!(matches!(Signature::parse(lead.as_bytes()), Err(FormatError::Length)));
        assert!(Signature::parse(&[0xff; 300]).is_err());
        // A public key that is not a curve point.
        let notpoint = format!("monarch-pub v1 ed25519 {}\n", "02".repeat(32));
        assert_eq!(PublicKey::parse(notpoint.as_bytes()).unwrap_err(), FormatError::Key);
        // A secret key is not a public key, and the other way round.
        assert!(PublicKey::parse(key().to_record().as_bytes()).is_err());
        assert!(SecretKey::parse(key().public().to_record().as_bytes()).is_err());
    }

    #[test]
    fn attached_signatures_split_off_exactly() {
        let image = b"image bytes".to_vec();
        let rec = key().sign(&ImageDigest::of(&image)).to_record().into_bytes();
        let mut sent = image.clone();
        sent.extend_from_slice(&attach(&rec));
        assert_eq!(detach(&sent).unwrap(), (&image[..], Some(&rec[..])));
        assert_eq!(detach(&image).unwrap(), (&image[..], None), "no trailer: unsigned");
        assert_eq!(detach(b"").unwrap(), (&b""[..], None));
        let mut bad = image.clone();
        bad.extend_from_slice(&attach(&[b'x'; 300]));
        assert_eq!(detach(&bad), Err(FormatError::Trailer(300)));
        let mut short = 400u32.to_le_bytes().to_vec();
        short.extend_from_slice(ATTACHED_MAGIC);
        assert_eq!(detach(&short), Err(FormatError::Trailer(400)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any single-bit flip of the image or of the `.sig` record fails verification.
        #[test]
        fn any_single_bit_flip_fails(image in proptest::collection::vec(any::<u8>(), 1..2048), bit in any::<usize>(), in_sig in any::<bool>()) {
            let k = key();
            let trusted = [k.public()];
            let d = ImageDigest::of(&image);
            let rec = k.sign(&d).to_record().into_bytes();
            if in_sig {
                let mut r = rec.clone();
                let b = bit % (r.len() * 8);
                r[b / 8] ^= 1 << (b % 8);
                let ok = Signature::parse(&r).ok().and_then(|s| s.verify(&trusted, &d).ok());
                prop_assert!(ok.is_none(), "a flipped bit {b} of the record still verified");
            } else {
                let mut img = image.clone();
                let b = bit % (img.len() * 8);
                img[b / 8] ^= 1 << (b % 8);
                let s = Signature::parse(&rec).unwrap();
                prop_assert!(s.verify(&trusted, &ImageDigest::of(&img)).is_err());
            }
        }

        /// Arbitrary bytes never panic the parsers.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Signature::parse(&bytes);
            let _ = PublicKey::parse(&bytes);
            let _ = SecretKey::parse(&bytes);
        }
    }
}
