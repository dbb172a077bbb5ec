//! DHCP on the wire, through dhcproto: the ports and limits, [`decode`] with its pre-check,
//! [`encode`], reading a request's fields, and building requests as a client would.
//!
//! Messages are dhcproto's v4 types; nothing here parses a DHCP packet by hand. The one
//! exception is [`decode`]'s pre-check, which only *measures* the option list before dhcproto
//! sees it: dhcproto 0.15 has `debug_assert!`s and an unchecked `len - 1` on a few option
//! lengths (80, 81, 94, 151–155) and slices `chaddr` by the untrusted `hlen`, so a hostile
//! packet could panic a debug build or the fuzzer. The pre-check refuses those packets.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, OptionCode, UnknownOption};
use dhcproto::{Decodable, Encodable};

use crate::mac::Mac;

/// UDP port of DHCP servers (and relays).
pub const SERVER_PORT: u16 = 67;
/// UDP port of DHCP clients.
pub const CLIENT_PORT: u16 = 68;
/// UDP port of the PXE boot server (ProxyDHCP REQUESTs after the address is known).
pub const PXE_PORT: u16 = 4011;
/// BOOTP header (236 bytes) plus the magic cookie: the shortest packet worth decoding.
pub const MIN_MESSAGE_LEN: usize = 240;
/// Largest datagram decoded. Clients keep requests within 576 bytes unless told otherwise
/// (RFC 2131 §2) and firmware never fragments them; anything over this is not a DHCP
/// request, and refusing it bounds the work one datagram can cause.
pub const MAX_MESSAGE_LEN: usize = 8192;
/// Replies are padded to this size: some BOOTP-era firmware drops anything shorter.
pub const MIN_REPLY_LEN: usize = 300;
/// Option 43 for PXE clients: sub-option 6 PXE_DISCOVERY_CONTROL = 8 ("a boot file name is
/// given: download it, skip boot server discovery and menus"), then the end tag. Without it
/// some PXE ROMs wait for a boot server multicast that never comes.
pub const PXE_VENDOR_OPTIONS: [u8; 4] = [6, 1, 8, 255];
/// Option 175 (iPXE's encapsulated options): present only in requests from iPXE.
pub const IPXE_ENCAP_OPTION: u8 = 175;
/// The DHCP magic cookie (RFC 2131 §3).
const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// Why a datagram is not a DHCP message we will look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the BOOTP header plus magic cookie.
    #[error("truncated DHCP message: {0} bytes, a DHCP message has at least 240")]
    Truncated(usize),
    /// The four bytes after the BOOTP header are not the DHCP magic cookie.
    #[error("no DHCP magic cookie (a BOOTP-only or non-DHCP packet)")]
    NoMagicCookie,
    /// Longer than [`MAX_MESSAGE_LEN`].
    #[error("{0}-byte datagram is larger than any DHCP request ({MAX_MESSAGE_LEN} bytes at most)")]
    TooLong(usize),
    /// `hlen` larger than the 16-byte `chaddr` field.
    #[error("hardware address length {0} exceeds the 16-byte chaddr field")]
    BadHardwareLength(u8),
    /// An option whose length its definition forbids.
    #[error("option {code} has length {len}, which its definition forbids")]
    BadOptionLength {
        /// The option code.
        code: u8,
        /// The (concatenated) length found.
        len: usize,
    },
    /// An option whose length runs past the end of the datagram.
    #[error("option {code} claims {len} bytes but only {left} remain (truncated or corrupt packet)")]
    OptionOverrun {
        /// The option code.
        code: u8,
        /// Bytes left after its header.
        left: usize,
        /// The length it claims.
        len: usize,
    },
    /// dhcproto refused the message.
    #[error("malformed DHCP message: {0}")]
    Malformed(String),
}

/// An option dropped from a request because its length is not the one its definition fixes
/// (RFC 2132, RFC 4578): the request is decided as if the client had not sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOption {
    /// The option code.
    pub code: u8,
    /// Its (concatenated, RFC 3396) length.
    pub len: usize,
    /// What its definition says.
    pub rule: &'static str,
}

impl std::fmt::Display for BadOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "option {} ({}) has {} byte{}, but {}: ignored as if the client had not sent it",
            self.code,
            option_name(self.code),
            self.len,
            if self.len == 1 { "" } else { "s" },
            self.rule
        )
    }
}

fn option_name(code: u8) -> &'static str {
    match code {
        50 => "requested address",
        51 => "lease time",
        53 => "DHCP message type",
        54 => "server identifier",
        57 => "maximum message size",
        93 => "client architecture",
        97 => "client machine identifier",
        _ => "unnamed",
    }
}

/// The rule a request option's content breaks, for the options with a fixed length that
/// the server reads (53, the message type, is checked in [`decode_checked`]: without it
/// there is no message).
fn fixed_length_rule(code: u8, data: &[u8]) -> Option<&'static str> {
    let len = data.len();
    match code {
        50 | 54 if len != 4 => Some("RFC 2132 fixes it at 4 bytes (an IPv4 address)"),
        51 if len != 4 => Some("RFC 2132 fixes it at 4 bytes (seconds)"),
        57 if len != 2 => Some("RFC 2132 fixes it at 2 bytes"),
        93 if len == 0 || len % 2 != 0 => Some("RFC 4578 makes it a list of 2-byte types"),
        97 if len == 0 => Some("RFC 4578 starts it with a 1-byte type"),
        97 if data[0] == 0 && len != 17 => {
            Some("RFC 4578 makes type 0 a 16-byte UUID after the type byte (17 bytes)")
        }
        _ => None,
    }
}

/// Decode a datagram into a DHCP message, refusing what dhcproto would choke on (see the
/// module doc) and any option that runs past the end of the datagram. Options with a fixed
/// length that have another are dropped and reported ([`decode_checked`]).
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    decode_checked(bytes).map(|(m, _)| m)
}

/// [`decode`], also returning the options dropped for a length their definition forbids
/// ([`BadOption`]): 50, 51, 54, 57, 93 and 97 are removed before dhcproto sees them (it
/// would read a prefix of a long one, and end the option list at a short one, losing the
/// options after it). A message type (53) that is not exactly 1 byte refuses the message
/// ([`DecodeError::BadOptionLength`]): nothing can be decided without it.
pub fn decode_checked(bytes: &[u8]) -> Result<(Message, Vec<BadOption>), DecodeError> {
    if bytes.len() < MIN_MESSAGE_LEN {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLong(bytes.len()));
    }
    let hlen = bytes[2];
    if hlen > 16 {
        return Err(DecodeError::BadHardwareLength(hlen));
    }
    if bytes[236..240] != MAGIC {
        return Err(DecodeError::NoMagicCookie);
    }
    let groups = option_groups(&bytes[240..])?;
    let mut bad = Vec::new();
    let mut drop = Vec::new();
    for g in &groups {
        let data: Vec<u8> =
            g.spans.iter().flat_map(|&(a, b)| &bytes[240 + a + 2..240 + b]).copied().collect();
        if g.code == 53 && data.len() != 1 {
            return Err(DecodeError::BadOptionLength { code: 53, len: data.len() });
        }
        if let Some(rule) = fixed_length_rule(g.code, &data) {
            bad.push(BadOption { code: g.code, len: data.len(), rule });
            drop.extend(g.spans.iter().copied());
        }
    }
    let msg = if drop.is_empty() {
        Message::from_bytes(bytes)
    } else {
        let mut kept = bytes[..240].to_vec();
        let mut at = 0;
        for (a, b) in drop {
            kept.extend_from_slice(&bytes[240 + at..240 + a]);
            at = b;
        }
        kept.extend_from_slice(&bytes[240 + at..]);
        Message::from_bytes(&kept)
    };
    msg.map(|m| (m, bad)).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// One option as dhcproto sees it: adjacent instances of a code are one option (RFC 3396).
struct Group {
    code: u8,
    /// Where each instance lies, code and length bytes included (start, end: offsets into
    /// the option area); its data starts 2 bytes in.
    spans: Vec<(usize, usize)>,
}

/// Walk the option list the way dhcproto does (RFC 3396: adjacent options with the same code
/// are one option), refuse lengths that trip dhcproto's assertions or underflow, and return
/// the options found.
fn option_groups(opts: &[u8]) -> Result<Vec<Group>, DecodeError> {
    let check = |g: &Group| -> Result<(), DecodeError> {
        let len: usize = g.spans.iter().map(|(a, b)| b - a - 2).sum();
        let ok = match g.code {
            80 => len == 0,
            94 => len == 3,
            81 => len >= 3,
            151 => len >= 1,
            152..=155 => len == 4,
            _ => true,
        };
        if ok { Ok(()) } else { Err(DecodeError::BadOptionLength { code: g.code, len }) }
    };
    let mut groups: Vec<Group> = Vec::new();
    let mut open = false;
    let mut at = 0;
    while let Some(&code) = opts.get(at) {
        if code == 0 || code == 255 {
            open = false;
            if code == 255 {
                break;
            }
            at += 1;
            continue;
        }
        // An option that runs past the end of the datagram: a truncated or lying packet.
        // dhcproto would keep the options before it; we refuse it whole, so a reply never
        // rests on a half-read request.
        let len = usize::from(opts.get(at + 1).copied().unwrap_or(0));
        let left = opts.len() - at;
        if left < 2 + len {
            return Err(DecodeError::OptionOverrun { code, left: left.saturating_sub(2), len });
        }
        match groups.last_mut() {
            Some(g) if open && g.code == code => g.spans.push((at, at + 2 + len)),
            _ => groups.push(Group { code, spans: vec![(at, at + 2 + len)] }),
        }
        open = true;
        at += 2 + len;
    }
    for g in &groups {
        check(g)?;
    }
    Ok(groups)
}

/// Encode a message for the wire, zero-padded to [`MIN_REPLY_LEN`].
pub fn encode(msg: &Message) -> Result<Vec<u8>, String> {
    let mut out = msg.to_vec().map_err(|e| format!("cannot encode DHCP message: {e}"))?;
    if out.len() < MIN_REPLY_LEN {
        out.resize(MIN_REPLY_LEN, 0);
    }
    Ok(out)
}

/// The client's MAC from `chaddr`, when the message is Ethernet with a 6-byte address.
/// `hlen` is checked first: dhcproto slices `chaddr` by it.
pub fn client_mac(msg: &Message) -> Option<Mac> {
    if msg.htype() != HType::Eth || msg.hlen() != 6 {
        return None;
    }
    <[u8; 6]>::try_from(msg.chaddr()).ok().map(Mac::new)
}

/// The bytes of option `code`, for the options that are bytes (or unknown to dhcproto).
pub(super) fn opt_bytes(msg: &Message, code: u8) -> Option<&[u8]> {
    match msg.opts().get(OptionCode::from(code))? {
        DhcpOption::ClassIdentifier(v)
        | DhcpOption::UserClass(v)
        | DhcpOption::ClientMachineIdentifier(v)
        | DhcpOption::VendorExtensions(v)
        | DhcpOption::BootfileName(v)
        | DhcpOption::TFTPServerName(v) => Some(v),
        DhcpOption::Unknown(u) => Some(u.data()),
        _ => None,
    }
}

/// The address in option 50 (requested address) or 54 (server identifier).
pub(super) fn opt_ip(msg: &Message, code: OptionCode) -> Option<Ipv4Addr> {
    match msg.opts().get(code)? {
        DhcpOption::RequestedIpAddress(ip) | DhcpOption::ServerIdentifier(ip) => Some(*ip),
        _ => None,
    }
}

/// Whether `needle` occurs in `hay`.
pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A request as a client would send it: for tests here and in `monarch-net`, and for tools
/// that probe a server (the flags, `ciaddr` and options are the caller's to add).
pub fn request(mtype: MessageType, mac: Mac, xid: u32) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.octets(),
    );
    m.opts_mut().insert(DhcpOption::MessageType(mtype));
    m
}

/// Option 175 as iPXE sends it (its content does not matter here, only its presence).
pub fn ipxe_encap_option() -> DhcpOption {
    DhcpOption::Unknown(UnknownOption::new(
        OptionCode::from(IPXE_ENCAP_OPTION),
        vec![177, 5, 1, 0x80, 0x86, 0x10, 0x0e],
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use dhcproto::v4::Architecture;

    pub(in crate::dhcp) const MAC: Mac = Mac::new([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    pub(in crate::dhcp) fn pxe(mut m: Message, arch: u16) -> Message {
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            format!("PXEClient:Arch:{arch:05}:UNDI:002001").into_bytes(),
        ));
        m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture(arch)));
        m
    }

    pub(in crate::dhcp) fn discover(mac: Mac) -> Message {
        request(MessageType::Discover, mac, 7)
    }

    pub(in crate::dhcp) fn raw_discover() -> Vec<u8> {
        pxe(discover(MAC), 0).to_vec().unwrap()
    }

    #[test]
    fn decode_refuses_what_dhcproto_would_choke_on() {
        let good = raw_discover();
        assert!(decode(&good).is_ok());
        assert_eq!(decode(&good[..239]), Err(DecodeError::Truncated(239)));
        let mut long = good.clone();
        long.resize(MAX_MESSAGE_LEN + 1, 0);
        assert_eq!(decode(&long), Err(DecodeError::TooLong(MAX_MESSAGE_LEN + 1)));
        let mut bad_hlen = good.clone();
        bad_hlen[2] = 17;
        assert_eq!(decode(&bad_hlen), Err(DecodeError::BadHardwareLength(17)));
        let mut no_cookie = good.clone();
        no_cookie[236] = 0;
        assert_eq!(decode(&no_cookie), Err(DecodeError::NoMagicCookie));
        // Options whose length dhcproto asserts on or underflows with.
        for (code, body) in
            [(80u8, vec![1u8]), (94, vec![1]), (81, vec![1, 2]), (151, vec![]), (152, vec![1])]
        {
            let mut m = good[..240].to_vec();
            m.extend([53, 1, 1, code, u8::try_from(body.len()).unwrap()]);
            m.extend(&body);
            m.push(255);
            assert_eq!(decode(&m), Err(DecodeError::BadOptionLength { code, len: body.len() }), "{code}");
        }
        // RFC 3396: split option 94 (2 + 1 bytes) is 3 bytes together, which is fine.
        let mut m = good[..240].to_vec();
        m.extend([53, 1, 1, 94, 2, 1, 2, 94, 1, 3, 255]);
        assert!(decode(&m).is_ok());
        // Truncated option list: refused whole.
        let mut m = good[..240].to_vec();
        m.extend([53, 1, 1, 60, 200, 1]);
        assert_eq!(decode(&m), Err(DecodeError::OptionOverrun { code: 60, left: 1, len: 200 }));
        m.truncate(244);
        assert_eq!(decode(&m), Err(DecodeError::OptionOverrun { code: 60, left: 0, len: 0 }));
        // No end option, but every option whole: accepted (some clients omit it).
        let mut m = good[..240].to_vec();
        m.extend([53, 1, 1]);
        assert_eq!(decode(&m).unwrap().opts().msg_type(), Some(MessageType::Discover));
    }

    /// `options` (code, body) between a DISCOVER's message type and a trailing option 60.
    fn with_options(options: &[(u8, &[u8])]) -> Vec<u8> {
        let mut m = raw_discover()[..240].to_vec();
        m.extend([53, 1, 1]);
        for (code, body) in options {
            m.extend([*code, u8::try_from(body.len()).unwrap()]);
            m.extend(*body);
        }
        m.extend([60, 9]);
        m.extend(b"PXEClient");
        m.push(255);
        m
    }

    #[test]
    fn fixed_length_options_of_another_length_are_dropped_and_named() {
        let cases: [(u8, &[u8]); 12] = [
            (50, &[10, 0, 0]),
            (50, &[10, 0, 0, 5, 6]),
            (54, &[10, 0, 0]),
            (51, &[0, 0, 1]),
            (51, &[0, 0, 0, 0, 1]),
            (57, &[2]),
            (57, &[2, 64, 0]),
            (93, &[]),
            (93, &[7]),
            (93, &[0, 7, 0]),
            (97, &[]),
            (97, &[0, 1, 2, 3]),
        ];
        for (code, body) in cases {
            let (m, bad) = decode_checked(&with_options(&[(code, body)])).unwrap();
            assert_eq!(bad.len(), 1, "option {code} of {} bytes kept", body.len());
            assert_eq!((bad[0].code, bad[0].len), (code, body.len()));
            let text = bad[0].to_string();
            assert!(text.contains(&format!("option {code} (")) && text.contains("RFC"), "{text}");
            assert!(!m.opts().contains(OptionCode::from(code)), "option {code} still there");
            // The options after it are still read (dhcproto would have stopped at a short one).
            assert_eq!(opt_bytes(&m, 60), Some(&b"PXEClient"[..]), "option {code}");
            assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
        }
    }

    #[test]
    fn fixed_length_options_of_the_right_length_are_kept() {
        let uuid = [0u8; 17];
        let cases: [(u8, &[u8]); 7] = [
            (50, &[10, 0, 0, 5]),
            (54, &[10, 0, 0, 1]),
            (51, &[0, 0, 14, 16]),
            (57, &[5, 192]),
            (93, &[0, 11]),
            (93, &[0, 7, 0, 9]),
            (97, &uuid),
        ];
        for (code, body) in cases {
            let (m, bad) = decode_checked(&with_options(&[(code, body)])).unwrap();
            assert!(bad.is_empty(), "{code}: {bad:?}");
            assert!(m.opts().contains(OptionCode::from(code)), "option {code} dropped");
        }
        // A type other than 0 in option 97 has no length RFC 4578 fixes.
        let (_, bad) = decode_checked(&with_options(&[(97, &[3, 1, 2])])).unwrap();
        assert!(bad.is_empty());
        // Split in two (RFC 3396), option 50 is 4 bytes together.
        let (m, bad) = decode_checked(&with_options(&[(50, &[10, 0]), (50, &[0, 5])])).unwrap();
        assert!(bad.is_empty());
        assert_eq!(opt_ip(&m, OptionCode::RequestedIpAddress), Some(Ipv4Addr::new(10, 0, 0, 5)));
    }

    #[test]
    fn a_message_type_of_another_length_refuses_the_message() {
        for body in [&[][..], &[1, 1][..], &[3, 0, 0, 0][..]] {
            let mut m = raw_discover()[..240].to_vec();
            m.extend([53, u8::try_from(body.len()).unwrap()]);
            m.extend(body);
            m.push(255);
            assert_eq!(decode(&m), Err(DecodeError::BadOptionLength { code: 53, len: body.len() }));
        }
    }

    proptest::proptest! {
        /// Any length for the fixed-length options: kept exactly when it is the right one,
        /// else dropped and named; the options around it are always read.
        #[test]
        fn fixed_length_options_are_kept_exactly_when_well_formed(
            code in proptest::sample::select(vec![50u8, 51, 54, 57, 93, 97]),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let (m, bad) = decode_checked(&with_options(&[(code, &body)])).unwrap();
            let well_formed = match code {
                50 | 51 | 54 => body.len() == 4,
                57 => body.len() == 2,
                93 => !body.is_empty() && body.len() % 2 == 0,
                _ => !body.is_empty() && (body[0] != 0 || body.len() == 17),
            };
            proptest::prop_assert_eq!(m.opts().contains(OptionCode::from(code)), well_formed);
            proptest::prop_assert_eq!(bad.is_empty(), well_formed);
            proptest::prop_assert_eq!(opt_bytes(&m, 60), Some(&b"PXEClient"[..]));
            proptest::prop_assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
        }
    }
}
