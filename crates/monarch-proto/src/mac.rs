//! MAC addresses: the one type every protocol here names a machine's Ethernet address with
//! (DHCP leases and reservations, the netboot discovery, the boot catalog's keys, iPXE
//! script URLs).
//!
//! Three text forms: [`Display`](std::fmt::Display) writes `52:54:00:12:34:56` (lowercase,
//! colons, as `ip link` prints it); [`Mac::for_url`] writes `52-54-00-12-34-56`, the form in
//! URLs; [`FromStr`] reads either, in either case.

use std::fmt;
use std::str::FromStr;

/// An Ethernet hardware address (six bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac([u8; 6]);

impl Mac {
    /// The address with these six bytes, first byte first.
    pub const fn new(octets: [u8; 6]) -> Mac {
        Mac(octets)
    }

    /// The six bytes, first byte first (as they go on the wire).
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Lowercase hex joined by `-` (`52-54-00-12-34-56`): the form in URLs such as the iPXE
    /// script's `/ipxe/{mac}.ipxe`, which needs no escaping in a path and is what iPXE's
    /// `${mac:hexhyp}` prints.
    pub fn for_url(&self) -> String {
        self.join('-')
    }

    fn join(&self, sep: char) -> String {
        let mut s = String::with_capacity(17);
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(sep);
            }
            s.push(hex_digit(b >> 4));
            s.push(hex_digit(b & 0xf));
        }
        s
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
}

impl From<[u8; 6]> for Mac {
    fn from(octets: [u8; 6]) -> Mac {
        Mac(octets)
    }
}

impl From<Mac> for [u8; 6] {
    fn from(mac: Mac) -> [u8; 6] {
        mac.0
    }
}

impl fmt::Display for Mac {
    /// Lowercase hex joined by `:` (`52:54:00:12:34:56`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.join(':'))
    }
}

/// Text that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error(
    "`{text}` is not a MAC address: write six two-digit hex bytes separated by `:` (or all by `-`), like 52:54:00:12:34:56"
)]
pub struct MacParseError {
    /// The text as given.
    pub text: String,
}

impl FromStr for Mac {
    type Err = MacParseError;

    /// Six bytes of two hex digits each (either case), separated all by `:` or all by `-`.
    fn from_str(s: &str) -> Result<Mac, MacParseError> {
        let bad = || MacParseError { text: s.to_string() };
        let sep = if s.contains(':') { ':' } else { '-' };
        let mut octets = [0u8; 6];
        let mut parts = s.split(sep);
        for b in &mut octets {
            let part = parts.next().ok_or_else(bad)?;
            // from_str_radix alone would take a sign ("+a"): check the digits first.
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            None => Ok(Mac(octets)),
            Some(_) => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC: Mac = Mac::new([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    #[test]
    fn mac_formats_and_parses() {
        assert_eq!(MAC.to_string(), "52:54:00:12:34:56");
        assert_eq!(MAC.for_url(), "52-54-00-12-34-56");
        assert_eq!(Mac::new([0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF]).for_url(), "aa-bb-cc-dd-ee-ff");
        assert_eq!("52-54-00-12-34-56".parse::<Mac>().unwrap(), MAC);
        assert_eq!("52:54:00:12:34:56".parse::<Mac>().unwrap(), MAC);
        assert_eq!(
            "AA:BB:CC:DD:EE:FF".parse::<Mac>().unwrap().octets(),
            [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:5G",
            "525:4:00:12:34:56",
            "5:54:00:12:34:56",
            "52:54:00:12:34:56:78",
            "52:54:00-12:34:56",
            "+a:bb:cc:dd:ee:ff",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_errors_name_the_text_and_the_form() {
        let e = "nope".parse::<Mac>().unwrap_err();
        assert_eq!(e.text, "nope");
        assert!(e.to_string().contains("`nope` is not a MAC address"), "{e}");
        assert!(e.to_string().contains("52:54:00:12:34:56"), "{e}");
    }

    #[test]
    fn converts_to_and_from_bytes() {
        let b = [2, 0, 0, 0, 0, 1];
        assert_eq!(Mac::from(b).octets(), b);
        assert_eq!(<[u8; 6]>::from(Mac::from(b)), b);
    }

    proptest! {
        #[test]
        fn both_text_forms_read_back(b in any::<[u8; 6]>()) {
            let mac = Mac::new(b);
            prop_assert_eq!(mac.to_string().parse::<Mac>(), Ok(mac));
            prop_assert_eq!(mac.for_url().parse::<Mac>(), Ok(mac));
            prop_assert_eq!(mac.to_string().to_uppercase().parse::<Mac>(), Ok(mac));
        }
    }
}
