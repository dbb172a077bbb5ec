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

/// Decode a datagram into a DHCP message, refusing what dhcproto would choke on (see the
/// module doc) and any option that runs past the end of the datagram. An option whose
/// content does not fit its type (option 93 of one byte, say) ends dhcproto's option list
/// there: the options before it are kept, which is why a message type after it is not seen.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
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
    check_option_lengths(&bytes[240..])?;
    Message::from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Walk the option list the way dhcproto does (RFC 3396: adjacent options with the same code
/// are one option) and refuse lengths that trip dhcproto's assertions or underflow.
fn check_option_lengths(mut rest: &[u8]) -> Result<(), DecodeError> {
    let mut group: Option<(u8, usize)> = None;
    let check = |(code, len): (u8, usize)| -> Result<(), DecodeError> {
        let ok = match code {
            80 => len == 0,
            94 => len == 3,
            81 => len >= 3,
            151 => len >= 1,
            152..=155 => len == 4,
            _ => true,
        };
        if ok { Ok(()) } else { Err(DecodeError::BadOptionLength { code, len }) }
    };
    while let Some(&code) = rest.first() {
        if code == 0 || code == 255 {
            if let Some(g) = group.take() {
                check(g)?;
            }
            if code == 255 {
                return Ok(());
            }
            rest = &rest[1..];
            continue;
        }
        // An option that runs past the end of the datagram: a truncated or lying packet.
        // dhcproto would keep the options before it; we refuse it whole, so a reply never
        // rests on a half-read request.
        let len = usize::from(rest.get(1).copied().unwrap_or(0));
        if rest.len() < 2 + len {
            return Err(DecodeError::OptionOverrun { code, left: rest.len().saturating_sub(2), len });
        }
        group = match group {
            Some((c, total)) if c == code => Some((c, total + len)),
            Some(g) => {
                check(g)?;
                Some((code, len))
            }
            None => Some((code, len)),
        };
        rest = &rest[2 + len..];
    }
    match group {
        Some(g) => check(g),
        None => Ok(()),
    }
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
}
