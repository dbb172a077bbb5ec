//! TFTP, sans-IO: the packet codec (RFC 1350 + the option extension of RFC 2347), option
//! negotiation (RFC 2348 blksize, RFC 2349 timeout/tsize, RFC 7440 windowsize), the lexical
//! check of a requested path, and the server side of a read transfer as a state machine.
//!
//! Why our own and not a crate: the TFTP crates on crates.io either own the sockets (so they
//! cannot be driven by a fake clock in tests, nor tuned for the bench), or lack windowsize
//! and block-number rollover. The wire format is tiny; the value is in the state machine,
//! which is written to be tested here without a socket in sight.
//!
//! Everything here treats its input as hostile: [`parse`] never panics, never allocates, and
//! bounds every field ([`MAX_FILENAME_LEN`], [`MAX_OPTIONS`], [`MAX_OPTION_LEN`],
//! [`MAX_BLKSIZE`]); the transfer ignores ACKs that make no sense instead of trusting them.
//!
//! ## Block numbers
//! Block `i` of a file (0-based) covers bytes `[i·blksize, (i+1)·blksize)` and travels as
//! block number `(i + 1) mod 65536`: after 65535 comes 0 ("rollover"), which is what atftp,
//! tftp-hpa and curl expect for files larger than 65535 blocks (32 MiB at 512-byte blocks).
//! A file always ends with a short block (possibly empty), so a file of `n` bytes has
//! `n / blksize + 1` blocks. Internally the machine counts blocks with `u64` and maps a
//! 16-bit ACK onto the only count that can be meant: the one within the window in flight.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

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
/// The largest window this implementation uses, whatever is asked and configured. RFC 7440
/// allows 65535, but a window of more than half the 16-bit block space makes a stale ACK
/// (from before a rollover) indistinguishable from a fresh one.
pub const MAX_WINDOWSIZE: u16 = 32768;
/// Longest filename accepted in a request, in bytes.
pub const MAX_FILENAME_LEN: usize = 1024;
/// Most option pairs accepted in one request or OACK (real clients send at most five).
pub const MAX_OPTIONS: usize = 32;
/// Longest option name or value, in bytes.
pub const MAX_OPTION_LEN: usize = 255;
/// Longest mode string accepted ("netascii" is the longest real one).
const MAX_MODE_LEN: usize = 16;

// ---------------------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------------------

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
    /// The file asked for, as sent (check it with [`check_path`] before use).
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

fn push_str(out: &mut Vec<u8>, s: &str) {
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

// ---------------------------------------------------------------------------------------
// Requests: path check and refusals
// ---------------------------------------------------------------------------------------

/// Why a requested path is refused before the file system is even asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing asked for.
    #[error("empty filename")]
    Empty,
    /// Starts with `/` or `\`.
    #[error("absolute path refused: ask for a path relative to the TFTP root")]
    Absolute,
    /// Has a `..` component.
    #[error("`..` in the path refused: files outside the TFTP root are not served")]
    ParentDir,
    /// Has a NUL or another control character.
    #[error("control character in the path refused")]
    ControlChar,
}

/// Check a requested filename lexically and return it normalised: relative, components
/// joined by `/`, no empty or `.` components. Both `/` and `\` count as separators, so a
/// Windows-style `boot\pxe.0` works and `..\..\etc` is caught like `../../etc`. This is
/// only the first fence: the server must still resolve the result beneath its root without
/// following symlinks out of it.
pub fn check_path(name: &str) -> Result<String, PathError> {
    if name.chars().any(char::is_control) {
        return Err(PathError::ControlChar);
    }
    if name.starts_with(['/', '\\']) {
        return Err(PathError::Absolute);
    }
    let mut out = String::with_capacity(name.len());
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(PathError::ParentDir),
            p => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(p);
            }
        }
    }
    if out.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(out)
}

/// A request the server will not serve, with the TFTP error to answer it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error code to send.
    pub code: ErrorCode,
    /// The message to send (and log): what is wrong and what to do instead.
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TFTP error {} ({:?}): {}", self.code.code(), self.code, self.message)
    }
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into() }
    }
}

/// What a read-only server answers to a request before opening anything: the normalised
/// path to open, or the refusal. WRQ → access violation (read-only); a mode other than
/// octet → illegal operation (netascii would alter the image's bytes); a bad path → access
/// violation.
pub fn check_read_request(packet: &Packet<'_>) -> Result<String, Refusal> {
    let req = match packet {
        Packet::Rrq(r) => r,
        Packet::Wrq(_) => {
            return Err(Refusal::new(
                ErrorCode::AccessViolation,
                "this TFTP server is read-only: writes are refused",
            ));
        }
        _ => return Err(Refusal::new(ErrorCode::IllegalOperation, "expected a read request (RRQ)")),
    };
    if req.mode != Mode::Octet {
        return Err(Refusal::new(
            ErrorCode::IllegalOperation,
            format!("mode {} is not served: use octet (binary) mode", req.mode.as_str()),
        ));
    }
    check_path(req.filename).map_err(|e| Refusal::new(ErrorCode::AccessViolation, e.to_string()))
}

// ---------------------------------------------------------------------------------------
// Option negotiation
// ---------------------------------------------------------------------------------------

/// The server's limits and defaults for transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest block size granted (clamped to [`MIN_BLKSIZE`]..=[`MAX_BLKSIZE`]).
    pub max_blksize: u16,
    /// Largest window granted (clamped to 1..=[`MAX_WINDOWSIZE`]).
    pub max_windowsize: u16,
    /// Retransmission timeout when the client negotiates none.
    pub timeout: Duration,
    /// Retransmissions of the same window before the transfer is abandoned.
    pub retries: u32,
}

impl Default for ServerConfig {
    /// Every block size RFC 2348 allows, windows up to 64 blocks, 1 s timeout, 5 retries.
    fn default() -> Self {
        ServerConfig {
            max_blksize: MAX_BLKSIZE,
            max_windowsize: 64,
            timeout: Duration::from_secs(1),
            retries: 5,
        }
    }
}

/// The options granted to a client: what goes in the OACK. `None` = not asked for (or asked
/// with an invalid value, which RFC 2347 lets the server ignore).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Accepted {
    /// Granted block size.
    pub blksize: Option<u16>,
    /// The file size, for a `tsize` request.
    pub tsize: Option<u64>,
    /// Granted retransmission timeout, seconds.
    pub timeout: Option<u8>,
    /// Granted window size.
    pub windowsize: Option<u16>,
}

impl Accepted {
    /// True when nothing was granted (then no OACK is sent; data starts at once).
    pub fn is_empty(&self) -> bool {
        *self == Accepted::default()
    }

    /// Append the OACK packet for these options.
    pub fn encode_oack(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&OP_OACK.to_be_bytes());
        let mut put = |name: &str, value: Option<u64>| {
            if let Some(v) = value {
                push_str(out, name);
                push_str(out, &v.to_string());
            }
        };
        put("blksize", self.blksize.map(u64::from));
        put("tsize", self.tsize);
        put("timeout", self.timeout.map(u64::from));
        put("windowsize", self.windowsize.map(u64::from));
    }
}

/// A decimal number as TFTP options carry them: ASCII digits only, no sign or spaces.
fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Decide the options for a read of a `file_size`-byte file: blksize 8..=65464 capped by
/// the config, timeout 1..=255 s, tsize answered with the size, windowsize 1..=65535 capped
/// by the config; unknown or invalid options are ignored (and so left out of the OACK).
pub fn negotiate(options: Options<'_>, file_size: u64, cfg: &ServerConfig) -> Accepted {
    let max_blk = cfg.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
    let max_win = cfg.max_windowsize.clamp(1, MAX_WINDOWSIZE);
    let mut acc = Accepted::default();
    let num = |name: &str| options.get(name).and_then(parse_number);
    if let Some(b) = num("blksize").filter(|b| (u64::from(MIN_BLKSIZE)..=u64::from(MAX_BLKSIZE)).contains(b))
    {
        acc.blksize = Some(u16::try_from(b).unwrap_or(MAX_BLKSIZE).min(max_blk));
    }
    if num("tsize").is_some() {
        acc.tsize = Some(file_size);
    }
    if let Some(t) = num("timeout").and_then(|t| u8::try_from(t).ok()).filter(|&t| t >= 1) {
        acc.timeout = Some(t);
    }
    if let Some(w) = num("windowsize").filter(|w| (1..=65535).contains(w)) {
        acc.windowsize = Some(u16::try_from(w).unwrap_or(u16::MAX).min(max_win));
    }
    acc
}

// ---------------------------------------------------------------------------------------
// The read transfer
// ---------------------------------------------------------------------------------------

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the OACK for these options ([`Accepted::encode_oack`]).
    SendOack(Accepted),
    /// Send DATA block number `block` holding the file's bytes `[offset, offset + len)`.
    SendData {
        /// Block number on the wire.
        block: u16,
        /// Offset in the file.
        offset: u64,
        /// Length (shorter than the block size only for the last block).
        len: usize,
    },
    /// Send an ERROR.
    SendError(ErrorCode, &'static str),
    /// The client acknowledged the last block: `bytes` delivered. Nothing follows.
    Done {
        /// The file's size.
        bytes: u64,
    },
    /// The transfer is over without success. Nothing follows.
    Failed(Failure),
}

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The client sent an ERROR (e.g. code 8 after reading `tsize`, as firmware does before
    /// asking again with the size it wanted).
    #[error("the client ended the transfer with TFTP error {code}: {message}")]
    ClientError {
        /// Its code.
        code: u16,
        /// Its message.
        message: String,
    },
    /// No acknowledgement after every retransmission.
    #[error("no acknowledgement from the client after {retries} retransmissions of {timeout:?} each")]
    TimedOut {
        /// Retransmissions made.
        retries: u32,
        /// The timeout used.
        timeout: Duration,
    },
}

/// Inputs from the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// Begin: send the OACK or the first window.
    Start,
    /// A packet from the client's transfer ID (the driver drops other sources).
    Packet(Packet<'a>),
    /// Time passed; retransmit if the deadline is reached.
    Tick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    AwaitOackAck,
    Sending,
    Over,
}

/// The server side of one read transfer. Feed it [`Input`]s with the current time and
/// carry out the [`Action`]s it pushes; call [`ReadTransfer::handle`] with [`Input::Tick`]
/// no later than [`ReadTransfer::deadline`].
///
/// Sliding window (RFC 7440; windowsize 1 is plain RFC 1350): a window of up to
/// `windowsize` blocks is sent from the first unacknowledged block. An ACK of a block inside
/// the window in flight moves the window to the block after it and sends a fresh window
/// (the client acknowledges the last block it got in order, so a gap is re-sent from there).
/// An ACK that acknowledges nothing new — a duplicate — is ignored: answering duplicates is
/// the Sorcerer's Apprentice bug, where every delayed ACK doubles the traffic for the rest of
/// the transfer. Lost windows are re-sent on timeout, at most `retries` times in a row.
#[derive(Debug, Clone)]
pub struct ReadTransfer {
    size: u64,
    blksize: u64,
    window: u64,
    blocks: u64,
    acked: u64,
    sent: u64,
    timeout: Duration,
    retries: u32,
    retries_left: u32,
    oack: Accepted,
    phase: Phase,
    deadline: Option<Duration>,
}

impl ReadTransfer {
    /// A transfer of a `size`-byte file for a request with `options`.
    pub fn new(options: Options<'_>, size: u64, cfg: &ServerConfig) -> ReadTransfer {
        let oack = negotiate(options, size, cfg);
        let blksize = u64::from(oack.blksize.unwrap_or(DEFAULT_BLKSIZE));
        let timeout = oack.timeout.map_or(cfg.timeout, |t| Duration::from_secs(u64::from(t)));
        ReadTransfer {
            size,
            blksize,
            window: u64::from(oack.windowsize.unwrap_or(1)),
            blocks: size / blksize + 1,
            acked: 0,
            sent: 0,
            timeout,
            retries: cfg.retries,
            retries_left: cfg.retries,
            oack,
            phase: Phase::Idle,
            deadline: None,
        }
    }

    /// The options granted (what the OACK says).
    pub fn accepted(&self) -> Accepted {
        self.oack
    }

    /// The block size in use.
    pub fn blksize(&self) -> u16 {
        u16::try_from(self.blksize).unwrap_or(MAX_BLKSIZE)
    }

    /// The window size in use.
    pub fn windowsize(&self) -> u16 {
        u16::try_from(self.window).unwrap_or(MAX_WINDOWSIZE)
    }

    /// The retransmission timeout in use.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes the client has acknowledged so far.
    pub fn acked_bytes(&self) -> u64 {
        (self.acked * self.blksize).min(self.size)
    }

    /// When the driver must feed [`Input::Tick`] at the latest; `None` once over.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// True once [`Action::Done`] or [`Action::Failed`] was pushed.
    pub fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    /// Feed one input at time `now` (any monotonic clock); actions are appended to `out`
    /// (a buffer the driver reuses, so the hot path allocates nothing).
    pub fn handle(&mut self, now: Duration, input: Input<'_>, out: &mut Vec<Action>) {
        match (self.phase, input) {
            (Phase::Over, _) => {}
            (Phase::Idle, Input::Start) => {
                if self.oack.is_empty() {
                    self.phase = Phase::Sending;
                    self.send_window(now, out);
                } else {
                    self.phase = Phase::AwaitOackAck;
                    out.push(Action::SendOack(self.oack));
                    self.deadline = Some(now.saturating_add(self.timeout));
                }
            }
            (Phase::Idle, _) => {}
            (_, Input::Packet(Packet::Error { code, message })) => {
                self.finish(
                    out,
                    Action::Failed(Failure::ClientError {
                        code,
                        message: String::from_utf8_lossy(message).into_owned(),
                    }),
                );
            }
            (Phase::AwaitOackAck, Input::Packet(Packet::Ack { block: 0 })) => {
                self.phase = Phase::Sending;
                self.retries_left = self.retries;
                self.send_window(now, out);
            }
            (Phase::Sending, Input::Packet(Packet::Ack { block })) => {
                // The only count this ACK can mean: the one in [acked, acked + 65535] with
                // these low 16 bits. Windows are at most MAX_WINDOWSIZE, so a stale ACK from
                // before the window lands beyond `sent` and is ignored.
                let c = self.acked + u64::from(block.wrapping_sub(low16(self.acked)));
                if c <= self.acked || c > self.sent {
                    return; // duplicate or stale: never answered (Sorcerer's Apprentice)
                }
                self.acked = c;
                self.retries_left = self.retries;
                if self.acked == self.blocks {
                    let bytes = self.size;
                    self.finish(out, Action::Done { bytes });
                } else {
                    self.send_window(now, out);
                }
            }
            (_, Input::Tick) => {
                if self.deadline.is_some_and(|d| now >= d) {
                    if self.retries_left == 0 {
                        out.push(Action::SendError(ErrorCode::NotDefined, "transfer timed out"));
                        let f = Failure::TimedOut { retries: self.retries, timeout: self.timeout };
                        self.finish(out, Action::Failed(f));
                        return;
                    }
                    self.retries_left -= 1;
                    if self.phase == Phase::AwaitOackAck {
                        out.push(Action::SendOack(self.oack));
                        self.deadline = Some(now.saturating_add(self.timeout));
                    } else {
                        self.send_window(now, out);
                    }
                }
            }
            // Anything else from the client (a stray DATA, RRQ, OACK, an early ACK) is
            // ignored: it cannot advance the transfer, and answering could start a loop.
            (_, Input::Start | Input::Packet(_)) => {}
        }
    }

    fn finish(&mut self, out: &mut Vec<Action>, last: Action) {
        self.phase = Phase::Over;
        self.deadline = None;
        out.push(last);
    }

    /// Send blocks `[acked, acked + window)` (those that exist) and arm the timer.
    fn send_window(&mut self, now: Duration, out: &mut Vec<Action>) {
        let end = self.acked.saturating_add(self.window).min(self.blocks);
        for i in self.acked..end {
            let offset = i * self.blksize;
            let len = self.blksize.min(self.size - offset);
            out.push(Action::SendData {
                block: block_number(i),
                offset,
                len: usize::try_from(len).unwrap_or(usize::MAX),
            });
        }
        self.sent = end;
        self.deadline = Some(now.saturating_add(self.timeout));
    }
}

/// The wire block number of block index `i` (0-based): `(i + 1) mod 65536`.
pub fn block_number(i: u64) -> u16 {
    low16(i.wrapping_add(1))
}

/// The low 16 bits: block numbers are counts modulo 65536.
#[allow(clippy::cast_possible_truncation)] // the truncation is the point
fn low16(x: u64) -> u16 {
    x as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn rrq(opts: &[(&str, &str)]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_request(false, "boot/img", Mode::Octet, opts, &mut v);
        v
    }

    fn req_options(buf: &[u8]) -> Options<'_> {
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

    #[test]
    fn path_check() {
        assert_eq!(check_path("pxelinux.0").as_deref(), Ok("pxelinux.0"));
        assert_eq!(check_path("./boot//x86\\wds.com").as_deref(), Ok("boot/x86/wds.com"));
        assert_eq!(check_path("a/...").as_deref(), Ok("a/..."));
        assert_eq!(check_path("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(check_path("\\windows"), Err(PathError::Absolute));
        assert_eq!(check_path("../x"), Err(PathError::ParentDir));
        assert_eq!(check_path("a/../../x"), Err(PathError::ParentDir));
        assert_eq!(check_path("a\\..\\..\\x"), Err(PathError::ParentDir));
        assert_eq!(check_path(""), Err(PathError::Empty));
        assert_eq!(check_path("./"), Err(PathError::Empty));
        assert_eq!(check_path("a\u{1}b"), Err(PathError::ControlChar));
        assert_eq!(check_path("a\0b"), Err(PathError::ControlChar));
    }

    #[test]
    fn read_requests_are_checked() {
        let ok = rrq(&[]);
        assert_eq!(check_read_request(&parse(&ok).unwrap()).as_deref(), Ok("boot/img"));
        let mut w = Vec::new();
        encode_request(true, "x", Mode::Octet, &[], &mut w);
        assert_eq!(check_read_request(&parse(&w).unwrap()).unwrap_err().code, ErrorCode::AccessViolation);
        let n = parse(b"\0\x01x\0netascii\0").unwrap();
        assert_eq!(check_read_request(&n).unwrap_err().code, ErrorCode::IllegalOperation);
        let p = parse(b"\0\x01../x\0octet\0").unwrap();
        assert_eq!(check_read_request(&p).unwrap_err().code, ErrorCode::AccessViolation);
    }

    #[test]
    fn negotiation_caps_and_ignores() {
        let cfg = ServerConfig { max_blksize: 1468, max_windowsize: 16, ..ServerConfig::default() };
        let b =
            rrq(&[("blksize", "65464"), ("tsize", "0"), ("timeout", "3"), ("windowsize", "64"), ("x", "1")]);
        let a = negotiate(req_options(&b), 1234, &cfg);
        assert_eq!(
            a,
            Accepted { blksize: Some(1468), tsize: Some(1234), timeout: Some(3), windowsize: Some(16) }
        );
        let b = rrq(&[("blksize", "7"), ("timeout", "0"), ("windowsize", "0"), ("tsize", "-1")]);
        assert!(negotiate(req_options(&b), 1, &cfg).is_empty());
        let b = rrq(&[("blksize", "65465"), ("timeout", "256"), ("windowsize", "65536"), ("tsize", " 0")]);
        assert!(negotiate(req_options(&b), 1, &cfg).is_empty());
        let b = rrq(&[("blksize", "8"), ("windowsize", "65535")]);
        let a = negotiate(req_options(&b), 1, &ServerConfig { max_windowsize: u16::MAX, ..cfg });
        assert_eq!((a.blksize, a.windowsize), (Some(8), Some(MAX_WINDOWSIZE)));
        // The first occurrence wins.
        let b = rrq(&[("blksize", "1024"), ("BLKSIZE", "512")]);
        assert_eq!(negotiate(req_options(&b), 1, &cfg).blksize, Some(1024));
        let mut o = Vec::new();
        Accepted { blksize: Some(1024), tsize: Some(9), timeout: None, windowsize: Some(4) }
            .encode_oack(&mut o);
        assert_eq!(o, b"\0\x06blksize\x001024\0tsize\x009\0windowsize\x004\0");
        let Packet::Oack(p) = parse(&o).unwrap() else { panic!() };
        assert_eq!(p.get("tsize"), Some("9"));
    }

    fn start(opts: &[(&str, &str)], size: u64, cfg: &ServerConfig) -> (ReadTransfer, Vec<Action>) {
        let b = rrq(opts);
        let mut t = ReadTransfer::new(req_options(&b), size, cfg);
        let mut out = Vec::new();
        t.handle(ms(0), Input::Start, &mut out);
        (t, out)
    }

    fn ack(t: &mut ReadTransfer, now: u64, block: u16) -> Vec<Action> {
        let mut out = Vec::new();
        t.handle(ms(now), Input::Packet(Packet::Ack { block }), &mut out);
        out
    }

    fn data(block: u16, offset: u64, len: usize) -> Action {
        Action::SendData { block, offset, len }
    }

    #[test]
    fn plain_transfer_without_options() {
        let cfg = ServerConfig::default();
        let (mut t, a) = start(&[], 1024, &cfg);
        assert_eq!(a, vec![data(1, 0, 512)]);
        assert_eq!(t.deadline(), Some(ms(1000)));
        assert_eq!(ack(&mut t, 1, 1), vec![data(2, 512, 512)]);
        assert_eq!(ack(&mut t, 2, 1), vec![], "a duplicate ACK is never answered");
        assert_eq!(ack(&mut t, 3, 2), vec![data(3, 1024, 0)], "an exact multiple ends with an empty block");
        assert_eq!(ack(&mut t, 4, 3), vec![Action::Done { bytes: 1024 }]);
        assert!(t.is_over());
        assert_eq!(t.deadline(), None);
        assert_eq!(ack(&mut t, 5, 3), vec![]);
    }

    #[test]
    fn oack_then_window_then_slide_and_gap() {
        let cfg = ServerConfig::default();
        let (mut t, a) = start(&[("blksize", "100"), ("windowsize", "4"), ("tsize", "0")], 950, &cfg);
        assert_eq!(
            a,
            vec![Action::SendOack(Accepted {
                blksize: Some(100),
                tsize: Some(950),
                timeout: None,
                windowsize: Some(4)
            })]
        );
        assert_eq!(ack(&mut t, 1, 1), vec![], "only ACK 0 acknowledges the OACK");
        assert_eq!(
            ack(&mut t, 1, 0),
            (1..=4).map(|b| data(b, u64::from(b - 1) * 100, 100)).collect::<Vec<_>>()
        );
        // The client got 1 and 2 only: the window restarts at 3.
        assert_eq!(
            ack(&mut t, 2, 2),
            (3..=6).map(|b| data(b, u64::from(b - 1) * 100, 100)).collect::<Vec<_>>()
        );
        assert_eq!(ack(&mut t, 3, 2), vec![], "duplicate");
        assert_eq!(ack(&mut t, 3, 7), vec![], "beyond what was sent");
        assert_eq!(
            ack(&mut t, 4, 6),
            vec![data(7, 600, 100), data(8, 700, 100), data(9, 800, 100), data(10, 900, 50)]
        );
        assert_eq!(t.acked_bytes(), 600);
        assert_eq!(ack(&mut t, 5, 10), vec![Action::Done { bytes: 950 }]);
    }

    #[test]
    fn timeouts_resend_then_give_up() {
        let cfg = ServerConfig { retries: 2, ..ServerConfig::default() };
        let (mut t, _) = start(&[("windowsize", "2")], 2000, &cfg);
        let mut out = Vec::new();
        t.handle(ms(999), Input::Tick, &mut out);
        assert!(out.is_empty(), "not yet");
        t.handle(ms(1000), Input::Tick, &mut out);
        assert!(matches!(out[..], [Action::SendOack(_)]));
        out.clear();
        assert_eq!(ack(&mut t, 1100, 0), vec![data(1, 0, 512), data(2, 512, 512)]);
        assert_eq!(ack(&mut t, 1200, 1), vec![data(2, 512, 512), data(3, 1024, 512)]);
        t.handle(ms(2200), Input::Tick, &mut out);
        assert_eq!(out, vec![data(2, 512, 512), data(3, 1024, 512)], "resend from the first unacked");
        out.clear();
        t.handle(ms(3200), Input::Tick, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        t.handle(ms(4200), Input::Tick, &mut out);
        assert_eq!(out[0], Action::SendError(ErrorCode::NotDefined, "transfer timed out"));
        assert!(matches!(out[1], Action::Failed(Failure::TimedOut { retries: 2, .. })));
        assert!(t.is_over());
    }

    #[test]
    fn client_error_ends_at_once() {
        // Firmware asks for tsize, reads it from the OACK, and aborts with error 8.
        let (mut t, _) = start(&[("tsize", "0")], 5000, &ServerConfig::default());
        let mut out = Vec::new();
        t.handle(ms(5), Input::Packet(Packet::Error { code: 8, message: b"tsize only" }), &mut out);
        assert_eq!(out, vec![Action::Failed(Failure::ClientError { code: 8, message: "tsize only".into() })]);
        assert_eq!(t.deadline(), None);
        out.clear();
        t.handle(ms(5000), Input::Tick, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn client_timeout_option_sets_the_timer() {
        let (t, _) = start(&[("timeout", "7")], 1, &ServerConfig::default());
        assert_eq!(t.deadline(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        assert_eq!(block_number(0), 1);
        assert_eq!(block_number(65534), 65535);
        assert_eq!(block_number(65535), 0);
        assert_eq!(block_number(65536), 1);
        // A file of exactly 65536 blocks of 8 bytes: the last full block goes out as 0.
        let size = 8 * 65536 + 3;
        let (mut t, a) = start(&[("blksize", "8")], size, &ServerConfig::default());
        assert!(matches!(a[..], [Action::SendOack(_)]));
        let mut next = ack(&mut t, 0, 0);
        let mut n = 0u64;
        while let [Action::SendData { block, offset, len }] = next[..] {
            assert_eq!(block, block_number(n));
            assert_eq!(offset, n * 8);
            n += 1;
            next = ack(&mut t, 0, block);
            if len < 8 {
                assert_eq!(next, vec![Action::Done { bytes: size }]);
                break;
            }
        }
        assert_eq!(n, 65537, "65536 full blocks and a short one");
    }

    // -----------------------------------------------------------------------------------
    // Properties
    // -----------------------------------------------------------------------------------

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

        /// The path check never yields anything absolute or with a `..` component.
        #[test]
        fn checked_paths_stay_beneath(name in "[a-z./\\\\]{0,30}") {
            if let Ok(p) = check_path(&name) {
                prop_assert!(!p.starts_with('/'));
                prop_assert!(p.split('/').all(|c| c != ".." && c != "." && !c.is_empty()));
            }
        }

        /// Under random loss and duplication in both directions and a client that follows
        /// RFC 7440, every byte arrives exactly once and in order, and the server finishes.
        #[test]
        fn delivers_every_byte_in_order(
            size in 0u64..40_000,
            blk in prop_oneof![Just(8u16), Just(64), Just(512), Just(1468)],
            window in 1u16..20,
            loss in 0u32..30,
            dup in 0u32..30,
            seed in any::<u64>(),
        ) {
            simulate(size, blk, window, loss, dup, seed)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4))]
        /// The same past a block-number rollover (more than 65535 blocks).
        #[test]
        fn delivers_past_rollover(extra in 0u64..3000, window in 1u16..20, seed in any::<u64>()) {
            simulate(8 * 65536 + extra, 8, window, 5, 5, seed)?;
        }
    }

    /// A tiny deterministic PRNG (xorshift), so the model needs no extra dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn percent(&mut self, p: u32) -> bool {
            self.next() % 100 < u64::from(p)
        }
    }

    /// A loopback world with a fake clock: the server machine, a lossy duplicating network
    /// and an RFC 7440 client that ACKs the end of each window, the last block, and (on its
    /// own timeout, or a block out of order) the last block it got in order.
    fn simulate(
        size: u64,
        blk: u16,
        window: u16,
        loss: u32,
        dup: u32,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        use std::collections::VecDeque;
        let file: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(7) ^ (i >> 8)).to_le_bytes()[0]).collect();
        let cfg = ServerConfig { retries: 1000, ..ServerConfig::default() };
        let (bs, ws) = (blk.to_string(), window.to_string());
        let req = rrq(&[("blksize", &bs), ("windowsize", &ws), ("tsize", "0")]);
        let mut t = ReadTransfer::new(req_options(&req), size, &cfg);
        let mut rng = Rng(seed | 1);
        let mut to_client: VecDeque<Action> = VecDeque::new();
        let mut to_server: VecDeque<u16> = VecDeque::new();
        let mut got: Vec<u8> = Vec::new();
        let (mut received, mut in_window, mut client_done) = (0u64, 0u16, false);
        let mut now = Duration::ZERO;
        let mut out = Vec::new();
        t.handle(now, Input::Start, &mut out);
        let mut done = None;
        for _step in 0..5_000_000u64 {
            for a in out.drain(..) {
                match a {
                    Action::Done { bytes } => done = Some(bytes),
                    Action::Failed(f) => return Err(TestCaseError::fail(format!("failed: {f}"))),
                    Action::SendError(..) => {}
                    send => {
                        if !rng.percent(loss) {
                            to_client.push_back(send.clone());
                        }
                        if rng.percent(dup) {
                            to_client.push_back(send);
                        }
                    }
                }
            }
            if done.is_some() && client_done {
                break;
            }
            if let Some(p) = to_client.pop_front() {
                let mut reply = None;
                match p {
                    Action::SendOack(a) => {
                        prop_assert_eq!(a.tsize, Some(size));
                        if received == 0 {
                            reply = Some(0);
                        }
                    }
                    Action::SendData { block, offset, len } => {
                        prop_assert!(len <= usize::from(blk));
                        if !client_done && block == block_number(received) {
                            let (o, l) = (usize::try_from(offset).unwrap(), len);
                            got.extend_from_slice(&file[o..o + l]);
                            received += 1;
                            in_window += 1;
                            if l < usize::from(blk) {
                                client_done = true;
                                reply = Some(block);
                            } else if in_window == window {
                                in_window = 0;
                                reply = Some(block);
                            }
                        } else if client_done && block == block_number(received - 1) {
                            reply = Some(block); // dallying: re-ACK a repeated last block
                        }
                    }
                    _ => {}
                }
                if let Some(b) = reply {
                    if !rng.percent(loss) {
                        to_server.push_back(b);
                    }
                    if rng.percent(dup) {
                        to_server.push_back(b);
                    }
                }
            } else if let Some(b) = to_server.pop_front() {
                t.handle(now, Input::Packet(Packet::Ack { block: b }), &mut out);
            } else if let Some(d) = t.deadline() {
                // Silence: the client's timer fires first half the time (it re-ACKs the last
                // block it has in order), else the server's.
                if !client_done && rng.percent(50) {
                    in_window = 0;
                    let b = if received == 0 { 0 } else { block_number(received - 1) };
                    if !rng.percent(loss) {
                        to_server.push_back(b);
                    }
                } else {
                    now = now.max(d);
                    t.handle(now, Input::Tick, &mut out);
                }
            } else if client_done && done.is_some() {
                break;
            } else {
                return Err(TestCaseError::fail("stuck: nothing in flight and no deadline"));
            }
        }
        prop_assert_eq!(done, Some(size), "server finished");
        prop_assert!(client_done);
        prop_assert!(got == file, "delivered bytes differ ({} vs {})", got.len(), file.len());
        Ok(())
    }
}
