//! The discovery flow's messages on the wire: [`Message::encode`], [`Message::decode`] and
//! the TCP framing.
//!
//! ## Wire format (version 1, little-endian)
//! Every message starts with a 10-byte header: magic `MNRB`, version `1`, kind, xid (u32).
//!
//! | kind | message  | body after the header                                                     |
//! |------|----------|---------------------------------------------------------------------------|
//! | 1    | DISCOVER | mac \[6\], algo code u8 (0 = no local image), digest \[32\]                   |
//! | 2    | OFFER    | size u64, algo code u8, digest \[32\], tcp port u16, token \[16\], name len u8, name |
//! | 3    | DOWNLOAD | token \[16\], size u64                                                      |
//! | 4    | ACCEPT   | size u64 (then exactly `size` raw bytes follow on the stream)             |
//! | 5    | REFUSE   | code u8, reason len u8, reason (UTF-8)                                    |
//!
//! DISCOVER and OFFER are UDP datagrams (the server's UDP port, broadcast allowed); DOWNLOAD,
//! ACCEPT and REFUSE travel on TCP, each as a frame: u16 length, then the message. Decoding is
//! strict (exact lengths, known codes, zero digest padding, UTF-8 names) and never panics;
//! every length is bounded by [`MAX_MESSAGE`].

use crate::checksum::{Algo, Digest};
use crate::mac::Mac;

/// `MNRB`: monarch network boot.
pub const MAGIC: [u8; 4] = *b"MNRB";
/// Wire version.
pub const VERSION: u8 = 1;
/// Header length: magic, version, kind, xid.
pub const HEADER_LEN: usize = 10;
/// No message is longer than this (an OFFER with a 255-byte name is 326 bytes); anything
/// longer is garbage and is refused before it is read.
pub const MAX_MESSAGE: usize = 512;
/// Longest image name carried in an OFFER (its length is one byte on the wire).
pub const MAX_NAME: usize = 255;
/// Longest reason carried in a REFUSE.
pub const MAX_REASON: usize = 255;

const KIND_DISCOVER: u8 = 1;
const KIND_OFFER: u8 = 2;
const KIND_DOWNLOAD: u8 = 3;
const KIND_ACCEPT: u8 = 4;
const KIND_REFUSE: u8 = 5;

/// A download token: ties a DOWNLOAD to the OFFER the server made (random, 128 bits).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Token(pub [u8; 16]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are short-lived capabilities: show only a prefix in logs.
        write!(f, "Token({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// A machine's request for a boot server (the reference design's signal 520).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Discover {
    /// Transaction id chosen by the machine; the OFFER echoes it.
    pub xid: u32,
    /// The machine's MAC address: the catalog key.
    pub mac: Mac,
    /// The image the machine already has, if any (algorithm + digest).
    pub current: Option<(Algo, Digest)>,
}

/// A boot server's answer: it has a data block for this machine (the reference design's signal 525).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Offer {
    /// The DISCOVER's transaction id.
    pub xid: u32,
    /// The image's name (for people and events; at most [`MAX_NAME`] bytes, not empty).
    pub name: String,
    /// Exact size of the data block: the machine pre-posts a buffer of this size.
    pub size: u64,
    /// Checksum algorithm of `digest`.
    pub algo: Algo,
    /// Digest of the whole block: the machine verifies what landed against it.
    pub digest: Digest,
    /// TCP port of the download service on the offering server's address.
    pub tcp_port: u16,
    /// Capability for the DOWNLOAD.
    pub token: Token,
}

/// The machine asks for the offered block on TCP (the reference design's signal 530).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Download {
    /// The OFFER's transaction id.
    pub xid: u32,
    /// The OFFER's token.
    pub token: Token,
    /// The size the machine pre-posted: the server refuses if it no longer matches.
    pub size: u64,
}

/// Why a server refused a DOWNLOAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefuseCode {
    /// The token is unknown or expired: discover again.
    BadToken,
    /// The image changed since the offer (size differs): discover again.
    Changed,
    /// The server is at its limit of concurrent transfers: try again later.
    Busy,
    /// The image could not be read on the server.
    Unavailable,
    /// A code this version does not know (kept, not rejected: the reason text says more).
    Other(u8),
}

impl RefuseCode {
    /// Wire code.
    pub fn code(self) -> u8 {
        match self {
            RefuseCode::BadToken => 1,
            RefuseCode::Changed => 2,
            RefuseCode::Busy => 3,
            RefuseCode::Unavailable => 4,
            RefuseCode::Other(c) => c,
        }
    }

    /// Decode a wire code.
    pub fn from_code(c: u8) -> RefuseCode {
        match c {
            1 => RefuseCode::BadToken,
            2 => RefuseCode::Changed,
            3 => RefuseCode::Busy,
            4 => RefuseCode::Unavailable,
            c => RefuseCode::Other(c),
        }
    }
}

/// Every message of the flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// UDP, machine → server.
    Discover(Discover),
    /// UDP, server → machine.
    Offer(Offer),
    /// TCP, machine → server.
    Download(Download),
    /// TCP, server → machine: `size` raw bytes follow.
    Accept {
        /// The DOWNLOAD's transaction id.
        xid: u32,
        /// Bytes that follow.
        size: u64,
    },
    /// TCP, server → machine: no transfer; the connection closes.
    Refuse {
        /// The DOWNLOAD's transaction id.
        xid: u32,
        /// Why.
        code: RefuseCode,
        /// For people (at most [`MAX_REASON`] bytes; longer reasons are cut at a char boundary).
        reason: String,
    },
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the message needs.
    #[error("truncated netboot message: {got} bytes, {need} needed")]
    Truncated {
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// More bytes than the message has: not this protocol, or a corrupted message.
    #[error("netboot message has {extra} trailing bytes")]
    Trailing {
        /// Bytes after the message.
        extra: usize,
    },
    /// Longer than [`MAX_MESSAGE`].
    #[error("netboot message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLong(usize),
    /// Not `MNRB`.
    #[error("not a monarch netboot message (bad magic)")]
    BadMagic,
    /// Another version.
    #[error("netboot version {0} is not supported (this side speaks {VERSION}): upgrade the older side")]
    BadVersion(u8),
    /// Unknown kind.
    #[error("unknown netboot message kind {0}")]
    BadKind(u8),
    /// Unknown checksum algorithm code.
    #[error("unknown checksum algorithm code {0}")]
    BadAlgo(u8),
    /// Digest bytes past the algorithm's length are not zero.
    #[error("digest padding is not zero for {0}")]
    BadDigestPadding(Algo),
    /// Image name empty or not UTF-8.
    #[error("offer carries an empty or non-UTF-8 image name")]
    BadName,
    /// Refuse reason not UTF-8.
    #[error("refuse reason is not UTF-8")]
    BadReason,
}

/// A bounds-checked reader over a byte slice: every read returns `Truncated` instead of
/// panicking. (Hand-written: a dozen lines, and no parsing crate would bound better.)
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(WireError::Truncated { got: self.buf.len(), need: self.pos.saturating_add(n) }),
        }
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn digest(&mut self, algo: Option<Algo>) -> Result<Digest, WireError> {
        let d = Digest(self.array()?);
        if let Some(a) = algo {
            if d.0[a.digest_len()..].iter().any(|b| *b != 0) {
                return Err(WireError::BadDigestPadding(a));
            }
        } else if d.0.iter().any(|b| *b != 0) {
            return Err(WireError::BadAlgo(0));
        }
        Ok(d)
    }
    fn finish(&self) -> Result<(), WireError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            extra => Err(WireError::Trailing { extra }),
        }
    }
}

fn algo_code(a: Algo) -> u8 {
    // Algorithm codes are 1..=3 (see `Algo::code`); one byte on the wire.
    u8::try_from(a.code()).unwrap_or(0)
}

fn algo_from(code: u8) -> Result<Algo, WireError> {
    Algo::from_code(u32::from(code)).ok_or(WireError::BadAlgo(code))
}

/// `s` cut to at most `max` bytes at a char boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Cut to at most 255 bytes and return the length as a byte.
fn short_str(s: &str) -> (u8, &str) {
    let s = cut(s, 255);
    (u8::try_from(s.len()).unwrap_or(u8::MAX), s)
}

impl Message {
    /// The transaction id.
    pub fn xid(&self) -> u32 {
        match self {
            Message::Discover(d) => d.xid,
            Message::Offer(o) => o.xid,
            Message::Download(d) => d.xid,
            Message::Accept { xid, .. } | Message::Refuse { xid, .. } => *xid,
        }
    }

    /// The bytes on the wire. An OFFER name longer than [`MAX_NAME`] bytes is cut at a char
    /// boundary (an empty name is sent as `image`, since empty names are refused on decode).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        let kind = match self {
            Message::Discover(_) => KIND_DISCOVER,
            Message::Offer(_) => KIND_OFFER,
            Message::Download(_) => KIND_DOWNLOAD,
            Message::Accept { .. } => KIND_ACCEPT,
            Message::Refuse { .. } => KIND_REFUSE,
        };
        b.extend_from_slice(&MAGIC);
        b.push(VERSION);
        b.push(kind);
        b.extend_from_slice(&self.xid().to_le_bytes());
        match self {
            Message::Discover(d) => {
                b.extend_from_slice(&d.mac.octets());
                match d.current {
                    Some((a, dg)) => {
                        b.push(algo_code(a));
                        b.extend_from_slice(&canonical(a, dg).0);
                    }
                    None => {
                        b.push(0);
                        b.extend_from_slice(&[0; 32]);
                    }
                }
            }
            Message::Offer(o) => {
                b.extend_from_slice(&o.size.to_le_bytes());
                b.push(algo_code(o.algo));
                b.extend_from_slice(&canonical(o.algo, o.digest).0);
                b.extend_from_slice(&o.tcp_port.to_le_bytes());
                b.extend_from_slice(&o.token.0);
                let name = if o.name.is_empty() { "image" } else { o.name.as_str() };
                let (len, name) = short_str(name);
                b.push(len);
                b.extend_from_slice(name.as_bytes());
            }
            Message::Download(d) => {
                b.extend_from_slice(&d.token.0);
                b.extend_from_slice(&d.size.to_le_bytes());
            }
            Message::Accept { size, .. } => b.extend_from_slice(&size.to_le_bytes()),
            Message::Refuse { code, reason, .. } => {
                b.push(code.code());
                let (len, reason) = short_str(reason);
                b.push(len);
                b.extend_from_slice(reason.as_bytes());
            }
        }
        b
    }

    /// Decode one message; any deviation from the format is a [`WireError`], never a panic.
    pub fn decode(buf: &[u8]) -> Result<Message, WireError> {
        if buf.len() > MAX_MESSAGE {
            return Err(WireError::TooLong(buf.len()));
        }
        let mut r = Reader { buf, pos: 0 };
        if r.array::<4>()? != MAGIC {
            return Err(WireError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(WireError::BadVersion(version));
        }
        let kind = r.u8()?;
        let xid = r.u32()?;
        let msg = match kind {
            KIND_DISCOVER => {
                let mac = Mac::new(r.array()?);
                let current = match r.u8()? {
                    0 => {
                        r.digest(None)?;
                        None
                    }
                    c => {
                        let a = algo_from(c)?;
                        Some((a, r.digest(Some(a))?))
                    }
                };
                Message::Discover(Discover { xid, mac, current })
            }
            KIND_OFFER => {
                let size = r.u64()?;
                let algo = algo_from(r.u8()?)?;
                let digest = r.digest(Some(algo))?;
                let tcp_port = r.u16()?;
                let token = Token(r.array()?);
                let len = usize::from(r.u8()?);
                let name = std::str::from_utf8(r.take(len)?).map_err(|_| WireError::BadName)?;
                if name.is_empty() {
                    return Err(WireError::BadName);
                }
                Message::Offer(Offer { xid, name: name.to_string(), size, algo, digest, tcp_port, token })
            }
            KIND_DOWNLOAD => Message::Download(Download { xid, token: Token(r.array()?), size: r.u64()? }),
            KIND_ACCEPT => Message::Accept { xid, size: r.u64()? },
            KIND_REFUSE => {
                let code = RefuseCode::from_code(r.u8()?);
                let len = usize::from(r.u8()?);
                let reason = std::str::from_utf8(r.take(len)?).map_err(|_| WireError::BadReason)?;
                Message::Refuse { xid, code, reason: reason.to_string() }
            }
            k => return Err(WireError::BadKind(k)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// The message as a TCP frame: u16 length (LE), then [`Message::encode`].
    pub fn frame(&self) -> Vec<u8> {
        let body = self.encode();
        // Every encoded message is at most MAX_MESSAGE (512) bytes: the length fits a u16.
        let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
        let mut f = Vec::with_capacity(body.len() + 2);
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(&body);
        f
    }
}

/// The length announced by a TCP frame's 2-byte prefix, refused before anything is read when
/// it is zero or above [`MAX_MESSAGE`].
pub fn frame_len(prefix: [u8; 2]) -> Result<usize, WireError> {
    match usize::from(u16::from_le_bytes(prefix)) {
        0 => Err(WireError::Truncated { got: 0, need: HEADER_LEN }),
        n if n > MAX_MESSAGE => Err(WireError::TooLong(n)),
        n => Ok(n),
    }
}

/// The digest with the bytes past `algo.digest_len()` zeroed (as the wire requires).
pub(super) fn canonical(algo: Algo, d: Digest) -> Digest {
    let mut c = d;
    c.0[algo.digest_len()..].fill(0);
    c
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An OFFER of `data` under xid 0x1234_5678, BLAKE3, TCP port 4012.
    pub(in crate::netboot) fn offer(data: &[u8]) -> Offer {
        Offer {
            xid: 0x1234_5678,
            name: "payload.efi".into(),
            size: data.len() as u64,
            algo: Algo::Blake3,
            digest: Algo::Blake3.digest(data),
            tcp_port: 4012,
            token: Token([7; 16]),
        }
    }

    #[test]
    fn wire_errors_are_specific() {
        let good = Message::Accept { xid: 1, size: 2 }.encode();
        assert_eq!(Message::decode(&good[..5]), Err(WireError::Truncated { got: 5, need: 6 }));
        let mut g = good.clone();
        g.push(0);
        assert_eq!(Message::decode(&g), Err(WireError::Trailing { extra: 1 }));
        let mut g = good.clone();
        g[0] = b'X';
        assert_eq!(Message::decode(&g), Err(WireError::BadMagic));
        let mut g = good.clone();
        g[4] = 9;
        assert_eq!(Message::decode(&g), Err(WireError::BadVersion(9)));
        let mut g = good.clone();
        g[5] = 77;
        assert_eq!(Message::decode(&g), Err(WireError::BadKind(77)));
        assert_eq!(Message::decode(&[0; 600]), Err(WireError::TooLong(600)));
        // A CRC-32C digest with junk past its 4 bytes.
        let mut o = offer(b"abc");
        o.algo = Algo::Crc32c;
        o.digest = Algo::Crc32c.digest(b"abc");
        let mut g = Message::Offer(o).encode();
        g[HEADER_LEN + 8 + 1 + 10] = 1;
        assert_eq!(Message::decode(&g), Err(WireError::BadDigestPadding(Algo::Crc32c)));
        assert_eq!(frame_len([0, 0]).map_err(|_| ()), Err(()));
        assert_eq!(frame_len([0x01, 0x02]), Err(WireError::TooLong(0x201)));
        assert_eq!(frame_len([34, 0]), Ok(34));
    }

    #[test]
    fn long_names_are_cut_at_a_char_boundary() {
        let mut o = offer(b"abc");
        o.name = "é".repeat(200); // 400 bytes
        let Ok(Message::Offer(back)) = Message::decode(&Message::Offer(o).encode()) else { panic!() };
        assert_eq!(back.name, "é".repeat(127));
        assert!(Message::Offer(back).encode().len() <= MAX_MESSAGE);
    }

    fn arb_algo() -> impl Strategy<Value = Algo> {
        prop::sample::select(Algo::ALL.to_vec())
    }

    fn arb_digest() -> impl Strategy<Value = (Algo, Digest)> {
        (arb_algo(), any::<[u8; 32]>()).prop_map(|(a, d)| (a, canonical(a, Digest(d))))
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u32>(), any::<[u8; 6]>(), proptest::option::of(arb_digest())).prop_map(
                |(xid, mac, current)| Message::Discover(Discover { xid, mac: Mac::new(mac), current })
            ),
            (
                any::<u32>(),
                "[a-z0-9._/-]{1,255}",
                any::<u64>(),
                arb_digest(),
                any::<u16>(),
                any::<[u8; 16]>()
            )
                .prop_map(|(xid, name, size, (algo, digest), tcp_port, t)| Message::Offer(
                    Offer { xid, name, size, algo, digest, tcp_port, token: Token(t) }
                )),
            (any::<u32>(), any::<[u8; 16]>(), any::<u64>())
                .prop_map(|(xid, t, size)| Message::Download(Download { xid, token: Token(t), size })),
            (any::<u32>(), any::<u64>()).prop_map(|(xid, size)| Message::Accept { xid, size }),
            (any::<u32>(), 1u8..=6, ".{0,60}").prop_map(|(xid, c, reason)| Message::Refuse {
                xid,
                code: RefuseCode::from_code(c),
                reason: cut(&reason, MAX_REASON).to_string()
            }),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_near_valid(m in arb_message(), cut_at in 0usize..400, flip in 0usize..400, bit in 0u8..8) {
            let mut b = m.encode();
            if !b.is_empty() {
                let i = flip % b.len();
                b[i] ^= 1 << bit;
            }
            let _ = Message::decode(&b);
            let _ = Message::decode(&b[..cut_at.min(b.len())]);
        }

        #[test]
        fn encode_decode_round_trip(m in arb_message()) {
            let b = m.encode();
            prop_assert!(b.len() <= MAX_MESSAGE);
            prop_assert_eq!(Message::decode(&b), Ok(m.clone()));
            let f = m.frame();
            prop_assert_eq!(frame_len([f[0], f[1]]), Ok(b.len()));
        }
    }
}
