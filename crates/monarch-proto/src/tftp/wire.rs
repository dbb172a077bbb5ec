//! TFTP packets, sans-IO: the codec of RFC 1350 with the option extension of RFC 2347.
//!
//! Everything here treats its input as hostile: [`parse`] never panics, never allocates, and
//! bounds every field ([`MAX_FILENAME_LEN`], [`MAX_OPTIONS`], [`MAX_OPTION_LEN`],
//! [`MAX_BLKSIZE`]). Every encoder writes something [`parse`] accepts.

use std::borrow::Cow;
use std::fmt;

/// Opcode of a read request.
pub const OP_RRQ: u16 = 1;
/// Opcode of a write request.
pub const OP_WRQ: u16 = 2;
/// Opcode of a data block.
pub const OP_DATA: u16 = 3;
/// Opcode of an acknowledgement.
pub const OP_ACK: u16 = 4;
/// Opcode of an error.
pub const OP_ERROR: u16 = 5;
/// Opcode of an option acknowledgement (RFC 2347).
pub const OP_OACK: u16 = 6;

/// The block size when no `blksize` option is negotiated (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// The smallest `blksize` RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// The largest `blksize` RFC 2348 allows (a 65535-byte IP datagram minus IP and UDP headers
/// and the 4-byte TFTP header).
pub const MAX_BLKSIZE: u16 = 65464;
/// Longest filename accepted in a request, in bytes.
pub const MAX_FILENAME_LEN: usize = 1024;
/// Most option pairs accepted in one request or OACK (real clients send at most five).
pub const MAX_OPTIONS: usize = 32;
/// Longest option name or value, in bytes.
pub const MAX_OPTION_LEN: usize = 255;
/// Longest mode string accepted ("netascii" is the longest real one).
const MAX_MODE_LEN: usize = 16;

/// A transfer mode (RFC 1350). Only [`Mode::Octet`] is served: netascii's line-ending
/// translation would make the delivered bytes differ from the image (and its digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Text with CR LF line endings.
    Netascii,
    /// Raw bytes.
    Octet,
    /// Obsolete mail mode.
    Mail,
}

impl Mode {
    /// The mode's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Netascii => "netascii",
            Mode::Octet => "octet",
            Mode::Mail => "mail",
        }
    }
}

/// TFTP error codes (RFC 1350, RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: not defined, see the message.
    NotDefined,
    /// 1: file not found.
    FileNotFound,
    /// 2: access violation.
    AccessViolation,
    /// 3: disk full or allocation exceeded.
    DiskFull,
    /// 4: illegal TFTP operation.
    IllegalOperation,
    /// 5: unknown transfer ID.
    UnknownTid,
    /// 6: file already exists.
    FileExists,
    /// 7: no such user.
    NoSuchUser,
    /// 8: option negotiation refused (RFC 2347).
    OptionRefused,
}

impl ErrorCode {
    /// The code on the wire.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTid => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionRefused => 8,
        }
    }

    /// The code for a wire value, if it is one RFC 1350/2347 defines.
    pub fn from_code(code: u16) -> Option<ErrorCode> {
        Some(match code {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTid,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionRefused,
            _ => return None,
        })
    }
}

/// Options of a request or OACK: a validated run of NUL-terminated `name`, `value` strings,
/// kept as the raw bytes so parsing allocates nothing. Names compare case-insensitively
/// (RFC 2347).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Options<'a> {
    raw: &'a [u8],
}

impl<'a> Options<'a> {
    /// Validate `raw` (every string NUL-terminated, UTF-8, non-empty names, paired, within
    /// the bounds) and wrap it.
    fn new(raw: &'a [u8]) -> Result<Options<'a>, ParseError> {
        if !raw.is_empty() && raw.last() != Some(&0) {
            return Err(ParseError::Unterminated("option list"));
        }
        let mut strings = 0usize;
        for s in raw.split(|&b| b == 0).take(raw.iter().filter(|&&b| b == 0).count()) {
            if strings >= 2 * MAX_OPTIONS {
                return Err(ParseError::TooManyOptions);
            }
            if s.len() > MAX_OPTION_LEN {
                return Err(ParseError::OptionTooLong);
            }
            if std::str::from_utf8(s).is_err() {
                return Err(ParseError::NotUtf8("option"));
            }
            if strings % 2 == 0 && s.is_empty() {
                return Err(ParseError::EmptyOptionName);
            }
            strings += 1;
        }
        if strings % 2 == 1 {
            return Err(ParseError::OptionWithoutValue);
        }
        Ok(Options { raw })
    }

    /// The `(name, value)` pairs in order.
    pub fn iter(&self) -> OptionsIter<'a> {
        OptionsIter { rest: self.raw }
    }

    /// The value of option `name` (case-insensitive), first occurrence.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when there are no options.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The raw bytes (each string NUL-terminated), as they go on the wire.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
}

impl fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Iterator over the pairs of [`Options`].
#[derive(Debug, Clone)]
pub struct OptionsIter<'a> {
    rest: &'a [u8],
}

impl<'a> OptionsIter<'a> {
    fn next_str(&mut self) -> Option<&'a str> {
        let end = self.rest.iter().position(|&b| b == 0)?;
        let (s, rest) = self.rest.split_at(end);
        self.rest = rest.get(1..).unwrap_or_default();
        // Validated when the Options were made; an invalid string cannot occur.
        Some(std::str::from_utf8(s).unwrap_or_default())
    }
}

impl<'a> Iterator for OptionsIter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        let name = self.next_str()?;
        let value = self.next_str()?;
        Some((name, value))
    }
}

/// A read or write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Request<'a> {
    /// The file asked for, as sent (check it with `request::check_path` before use).
    pub filename: &'a str,
    /// The transfer mode.
    pub mode: Mode,
    /// Options (RFC 2347), possibly none.
    pub options: Options<'a>,
}

/// A TFTP packet, borrowing from the datagram it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Packet<'a> {
    /// Read request.
    Rrq(Request<'a>),
    /// Write request.
    Wrq(Request<'a>),
    /// A data block.
    Data {
        /// Block number (wraps past 65535).
        block: u16,
        /// At most [`MAX_BLKSIZE`] bytes.
        data: &'a [u8],
    },
    /// Acknowledgement of a block (0 acknowledges an OACK).
    Ack {
        /// Block number.
        block: u16,
    },
    /// An error; ends the transfer.
    Error {
        /// The code (see [`ErrorCode::from_code`]; other values are kept as sent).
        code: u16,
        /// The message as sent (not necessarily UTF-8), without its NUL.
        message: &'a [u8],
    },
    /// Option acknowledgement.
    Oack(Options<'a>),
}

impl Packet<'_> {
    /// An error's message as text (invalid UTF-8 replaced); empty for other packets.
    pub fn error_message(&self) -> Cow<'_, str> {
        match self {
            Packet::Error { message, .. } => String::from_utf8_lossy(message),
            _ => Cow::Borrowed(""),
        }
    }

    /// Append the packet's wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Packet::Rrq(r) => encode_request_raw(OP_RRQ, r.filename, r.mode, r.options.raw, out),
            Packet::Wrq(r) => encode_request_raw(OP_WRQ, r.filename, r.mode, r.options.raw, out),
            Packet::Data { block, data } => {
                out.extend_from_slice(&data_header(*block));
                out.extend_from_slice(data);
            }
            Packet::Ack { block } => out.extend_from_slice(&encode_ack(*block)),
            Packet::Error { code, message } => {
                out.extend_from_slice(&OP_ERROR.to_be_bytes());
                out.extend_from_slice(&code.to_be_bytes());
                out.extend(message.iter().copied().filter(|&b| b != 0));
                out.push(0);
            }
            Packet::Oack(o) => {
                out.extend_from_slice(&OP_OACK.to_be_bytes());
                out.extend_from_slice(o.raw);
            }
        }
    }
}

/// Why a datagram is not a valid TFTP packet. The messages name the defect so a log line
/// tells which client sends what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the header its opcode needs.
    #[error("packet too short ({0} bytes) for its TFTP header")]
    TooShort(usize),
    /// Opcode outside 1..=6.
    #[error("unknown TFTP opcode {0} (expected 1..=6)")]
    UnknownOpcode(u16),
    /// A string without its NUL terminator.
    #[error("the {0} is not NUL-terminated")]
    Unterminated(&'static str),
    /// A string that is not UTF-8 (TFTP strings are ASCII).
    #[error("the {0} is not ASCII/UTF-8 text")]
    NotUtf8(&'static str),
    /// Filename longer than [`MAX_FILENAME_LEN`].
    #[error("filename longer than {MAX_FILENAME_LEN} bytes")]
    FilenameTooLong,
    /// A mode other than netascii, octet or mail.
    #[error("unknown transfer mode (expected \"octet\")")]
    UnknownMode,
    /// More than [`MAX_OPTIONS`] option pairs.
    #[error("more than {MAX_OPTIONS} options")]
    TooManyOptions,
    /// An option name or value longer than [`MAX_OPTION_LEN`].
    #[error("option name or value longer than {MAX_OPTION_LEN} bytes")]
    OptionTooLong,
    /// An option with an empty name.
    #[error("option with an empty name")]
    EmptyOptionName,
    /// An option name without a value.
    #[error("option without a value")]
    OptionWithoutValue,
    /// A DATA packet with more than [`MAX_BLKSIZE`] bytes.
    #[error("DATA packet with {0} bytes (at most {MAX_BLKSIZE})")]
    DataTooLong(usize),
}

/// Split off one NUL-terminated string.
fn take_str<'a>(buf: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), ParseError> {
    let end = buf.iter().position(|&b| b == 0).ok_or(ParseError::Unterminated(what))?;
    Ok((&buf[..end], &buf[end + 1..]))
}

fn parse_request(body: &[u8]) -> Result<Request<'_>, ParseError> {
    let (name, rest) = take_str(body, "filename")?;
    if name.len() > MAX_FILENAME_LEN {
        return Err(ParseError::FilenameTooLong);
    }
    let filename = std::str::from_utf8(name).map_err(|_| ParseError::NotUtf8("filename"))?;
    let (mode, rest) = take_str(rest, "mode")?;
    if mode.len() > MAX_MODE_LEN {
        return Err(ParseError::UnknownMode);
    }
    let mode = match mode.to_ascii_lowercase().as_slice() {
        b"octet" => Mode::Octet,
        b"netascii" => Mode::Netascii,
        b"mail" => Mode::Mail,
        _ => return Err(ParseError::UnknownMode),
    };
    Ok(Request { filename, mode, options: Options::new(rest)? })
}

/// A big-endian u16 and the rest, if there are two bytes.
fn split_u16(body: &[u8]) -> Option<(u16, &[u8])> {
    match body {
        [a, b, rest @ ..] => Some((u16::from_be_bytes([*a, *b]), rest)),
        _ => None,
    }
}

/// Parse one datagram. Never panics, never allocates on success; every length is bounded.
/// Leniencies, for firmware seen in the wild: trailing bytes after an ACK's block number are
/// ignored, and an ERROR's message may lack its NUL.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, ParseError> {
    let (op, body) = match buf {
        [a, b, body @ ..] => (u16::from_be_bytes([*a, *b]), body),
        _ => return Err(ParseError::TooShort(buf.len())),
    };
    let len = buf.len();
    let two = |body| split_u16(body).ok_or(ParseError::TooShort(len));
    match op {
        OP_RRQ => Ok(Packet::Rrq(parse_request(body)?)),
        OP_WRQ => Ok(Packet::Wrq(parse_request(body)?)),
        OP_DATA => {
            let (block, data) = two(body)?;
            if data.len() > usize::from(MAX_BLKSIZE) {
                return Err(ParseError::DataTooLong(data.len()));
            }
            Ok(Packet::Data { block, data })
        }
        OP_ACK => Ok(Packet::Ack { block: two(body)?.0 }),
        OP_ERROR => {
            let (code, rest) = two(body)?;
            let message = match rest.iter().position(|&b| b == 0) {
                Some(end) => &rest[..end],
                None => rest,
            };
            Ok(Packet::Error { code, message })
        }
        OP_OACK => Ok(Packet::Oack(Options::new(body)?)),
        other => Err(ParseError::UnknownOpcode(other)),
    }
}

/// Append `s` as a NUL-terminated string (NUL bytes inside it dropped).
pub(super) fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().filter(|&b| b != 0));
    out.push(0);
}

fn encode_request_raw(op: u16, filename: &str, mode: Mode, options: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&op.to_be_bytes());
    push_str(out, filename);
    push_str(out, mode.as_str());
    out.extend_from_slice(options);
}

/// Append a request (`write` = WRQ, else RRQ) with its options. NUL bytes inside the
/// strings are dropped, so the result always parses.
pub fn encode_request(write: bool, filename: &str, mode: Mode, options: &[(&str, &str)], out: &mut Vec<u8>) {
    encode_request_raw(if write { OP_WRQ } else { OP_RRQ }, filename, mode, &[], out);
    for (n, v) in options {
        push_str(out, n);
        push_str(out, v);
    }
}

/// The 4-byte header of DATA block `block`; the data follows it.
pub fn data_header(block: u16) -> [u8; 4] {
    let [a, b] = OP_DATA.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

/// An ACK of `block`.
pub fn encode_ack(block: u16) -> [u8; 4] {
    let [a, b] = OP_ACK.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

/// Append an ERROR with `code` and `message` (NUL bytes in it dropped).
pub fn encode_error(code: ErrorCode, message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&OP_ERROR.to_be_bytes());
    out.extend_from_slice(&code.code().to_be_bytes());
    push_str(out, message);
}

/// Append an OACK with these pairs.
pub fn encode_oack(options: &[(&str, &str)], out: &mut Vec<u8>) {
    out.extend_from_slice(&OP_OACK.to_be_bytes());
    for (n, v) in options {
        push_str(out, n);
        push_str(out, v);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An RRQ for `boot/img` in octet mode with these options.
    pub(in crate::tftp) fn rrq(opts: &[(&str, &str)]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_request(false, "boot/img", Mode::Octet, opts, &mut v);
        v
    }

    /// The options of the RRQ in `buf`.
    pub(in crate::tftp) fn req_options(buf: &[u8]) -> Options<'_> {
        match parse(buf).unwrap() {
            Packet::Rrq(r) => r.options,
            p => panic!("not an RRQ: {p:?}"),
        }
    }

    #[test]
    fn parses_a_request_with_options() {
        let buf = rrq(&[("BlkSize", "1468"), ("tsize", "0")]);
        let Packet::Rrq(r) = parse(&buf).unwrap() else { panic!() };
        assert_eq!(r.filename, "boot/img");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(r.options.get("blksize"), Some("1468"));
        assert_eq!(r.options.get("TSIZE"), Some("0"));
        assert_eq!(r.options.len(), 2);
        let mut again = Vec::new();
        Packet::Rrq(r).encode(&mut again);
        assert_eq!(again, buf);
    }

    #[test]
    fn mode_is_case_insensitive_and_unknown_modes_are_errors() {
        assert!(matches!(parse(b"\0\x01f\0OCTET\0"), Ok(Packet::Rrq(Request { mode: Mode::Octet, .. }))));
        assert!(matches!(
            parse(b"\0\x01f\0NetAscii\0"),
            Ok(Packet::Rrq(Request { mode: Mode::Netascii, .. }))
        ));
        assert_eq!(parse(b"\0\x01f\0binary\0"), Err(ParseError::UnknownMode));
        assert_eq!(parse(b"\0\x01f\0octetoctetoctetoctet\0"), Err(ParseError::UnknownMode));
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(parse(b""), Err(ParseError::TooShort(0)));
        assert_eq!(parse(b"\0"), Err(ParseError::TooShort(1)));
        assert_eq!(parse(b"\0\x04\0"), Err(ParseError::TooShort(3)));
        assert_eq!(parse(b"\0\x03\x01"), Err(ParseError::TooShort(3)));
        assert_eq!(parse(b"\0\x09abc"), Err(ParseError::UnknownOpcode(9)));
        assert_eq!(parse(b"\0\x01file"), Err(ParseError::Unterminated("filename")));
        assert_eq!(parse(b"\0\x01file\0octet"), Err(ParseError::Unterminated("mode")));
        assert_eq!(parse(b"\0\x01f\0octet\0blksize\0"), Err(ParseError::OptionWithoutValue));
        assert_eq!(parse(b"\0\x01f\0octet\0blksize\x00512"), Err(ParseError::Unterminated("option list")));
        assert_eq!(parse(b"\0\x01f\0octet\0\x00512\0"), Err(ParseError::EmptyOptionName));
        assert_eq!(parse(b"\0\x01\xff\0octet\0"), Err(ParseError::NotUtf8("filename")));
        assert_eq!(parse(b"\0\x06a\0\xff\0"), Err(ParseError::NotUtf8("option")));
        let long = [&b"\0\x01"[..], &vec![b'a'; MAX_FILENAME_LEN + 1], b"\0octet\0"].concat();
        assert_eq!(parse(&long), Err(ParseError::FilenameTooLong));
        let many: Vec<(String, String)> = (0..=MAX_OPTIONS).map(|i| (format!("o{i}"), "1".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(parse(&rrq(&many)), Err(ParseError::TooManyOptions));
        let big = "9".repeat(MAX_OPTION_LEN + 1);
        assert_eq!(parse(&rrq(&[("blksize", &big)])), Err(ParseError::OptionTooLong));
        let data = [&[0u8, 3, 0, 1][..], &vec![0; usize::from(MAX_BLKSIZE) + 1]].concat();
        assert_eq!(parse(&data), Err(ParseError::DataTooLong(usize::from(MAX_BLKSIZE) + 1)));
    }

    #[test]
    fn lenient_on_ack_padding_and_error_without_nul() {
        assert_eq!(parse(b"\0\x04\0\x07junk"), Ok(Packet::Ack { block: 7 }));
        assert_eq!(parse(b"\0\x05\0\x08bye"), Ok(Packet::Error { code: 8, message: b"bye" }));
        assert_eq!(parse(b"\0\x05\0\x01"), Ok(Packet::Error { code: 1, message: b"" }));
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._/-]{1,40}"
    }

    fn arb_packet_bytes() -> impl Strategy<Value = Vec<u8>> {
        let mode = prop_oneof![Just(Mode::Octet), Just(Mode::Netascii), Just(Mode::Mail)];
        let opts = || proptest::collection::vec((arb_name(), "[0-9a-z]{0,10}"), 0..MAX_OPTIONS);
        prop_oneof![
            (any::<bool>(), arb_name(), mode, opts()).prop_map(|(w, f, m, o)| {
                let o: Vec<(&str, &str)> = o.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                let mut v = Vec::new();
                encode_request(w, &f, m, &o, &mut v);
                v
            }),
            (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..2000)).prop_map(|(b, d)| {
                let mut v = data_header(b).to_vec();
                v.extend(d);
                v
            }),
            any::<u16>().prop_map(|b| encode_ack(b).to_vec()),
            (0u16..9, "[ -~]{0,60}").prop_map(|(c, m)| {
                let mut v = Vec::new();
                encode_error(ErrorCode::from_code(c).unwrap_or(ErrorCode::NotDefined), &m, &mut v);
                v
            }),
            opts().prop_map(|o| {
                let o: Vec<(&str, &str)> = o.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                let mut v = Vec::new();
                encode_oack(&o, &mut v);
                v
            }),
        ]
    }

    proptest! {
        /// Arbitrary bytes never panic the parser.
        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&buf);
        }

        /// Valid packets with bytes flipped, cut or appended never panic the parser either,
        /// and whatever parses re-encodes to something that parses the same.
        #[test]
        fn mutated_packets_never_panic(
            buf in arb_packet_bytes(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut buf = buf;
            for (i, b) in flips {
                if !buf.is_empty() { let i = i.index(buf.len()); buf[i] = b; }
            }
            buf.truncate(cut.index(buf.len() + 1));
            if let Ok(p) = parse(&buf) {
                let mut again = Vec::new();
                p.encode(&mut again);
                prop_assert_eq!(parse(&again), Ok(p));
            }
        }

        /// encode → parse is the identity.
        #[test]
        fn encode_parse_round_trip(buf in arb_packet_bytes()) {
            let p = parse(&buf).expect("encoded packets parse");
            let mut again = Vec::new();
            p.encode(&mut again);
            prop_assert_eq!(again, buf);
        }
    }
}
