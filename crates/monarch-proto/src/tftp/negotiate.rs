//! TFTP option negotiation for a read: which `blksize` (RFC 2348), `timeout` and `tsize`
//! (RFC 2349) and `windowsize` (RFC 7440) a request gets, within the server's limits, and
//! the OACK that grants them.

use std::time::Duration;

use crate::tftp::wire::{MAX_BLKSIZE, MIN_BLKSIZE, OP_OACK, Options, push_str};

/// The largest window this implementation uses, whatever is asked and configured. RFC 7440
/// allows 65535, but a window of more than half the 16-bit block space makes a stale ACK
/// (from before a rollover) indistinguishable from a fresh one.
pub const MAX_WINDOWSIZE: u16 = 32768;

/// The longest retransmission timeout a client may negotiate by default
/// ([`ServerConfig::max_timeout`]). RFC 2349 lets a client ask for up to 255 s, and a
/// transfer that is never acknowledged lives `retries + 1` timeouts: 25 minutes of a transfer
/// slot at 255 s and 5 retries, for one datagram. Clients that send the option ask for a few
/// seconds (U-Boot asks for 5; iPXE, GRUB and PXE ROMs do not send it), so 10 s serves every
/// one of them and keeps a silent transfer to a minute.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's limits and defaults for transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest block size granted (clamped to [`MIN_BLKSIZE`]..=[`MAX_BLKSIZE`]).
    pub max_blksize: u16,
    /// Largest window granted (clamped to 1..=[`MAX_WINDOWSIZE`]).
    pub max_windowsize: u16,
    /// Retransmission timeout when the client negotiates none (or asks for more than
    /// `max_timeout`).
    pub timeout: Duration,
    /// Longest retransmission timeout a client may ask for with the RFC 2349 `timeout`
    /// option ([`DEFAULT_MAX_TIMEOUT`]). A request for more is declined, not capped: RFC 2349
    /// says the value in the OACK must match the client's, so the option is left out of the
    /// OACK and the transfer runs on `timeout`.
    pub max_timeout: Duration,
    /// Retransmissions of the same window before the transfer is abandoned.
    pub retries: u32,
}

impl Default for ServerConfig {
    /// Every block size RFC 2348 allows, windows up to 64 blocks, 1 s timeout (clients may
    /// ask for up to [`DEFAULT_MAX_TIMEOUT`]), 5 retries.
    fn default() -> Self {
        ServerConfig {
            max_blksize: MAX_BLKSIZE,
            max_windowsize: 64,
            timeout: Duration::from_secs(1),
            max_timeout: DEFAULT_MAX_TIMEOUT,
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
/// the config, timeout 1..=255 s granted as asked up to the config's `max_timeout` and
/// declined above it, tsize answered with the size, windowsize 1..=65535 capped by the
/// config; unknown or invalid options are ignored (and so left out of the OACK).
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
    // RFC 2349: "If the server is willing to accept the timeout option, it sends an OACK
    // to the client. The specified timeout value must match the value specified by the
    // client." So a timeout above the cap is declined (left out), never lowered.
    if let Some(t) = num("timeout")
        .and_then(|t| u8::try_from(t).ok())
        .filter(|&t| t >= 1 && Duration::from_secs(u64::from(t)) <= cfg.max_timeout)
    {
        acc.timeout = Some(t);
    }
    if let Some(w) = num("windowsize").filter(|w| (1..=65535).contains(w)) {
        acc.windowsize = Some(u16::try_from(w).unwrap_or(u16::MAX).min(max_win));
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::wire::tests::{req_options, rrq};
    use crate::tftp::wire::{Packet, parse};

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
        // A timeout above the cap is declined, not lowered (RFC 2349: the OACK echoes the
        // client's value or leaves the option out); up to the cap it is granted as asked.
        let capped = ServerConfig { max_timeout: Duration::from_secs(10), ..cfg };
        for (asked, granted) in [("255", None), ("11", None), ("10", Some(10)), ("1", Some(1))] {
            let b = rrq(&[("timeout", asked), ("tsize", "0")]);
            assert_eq!(negotiate(req_options(&b), 5, &capped).timeout, granted, "timeout {asked}");
        }
        let b = rrq(&[("timeout", "1")]);
        let none = ServerConfig { max_timeout: Duration::ZERO, ..cfg };
        assert!(negotiate(req_options(&b), 5, &none).is_empty(), "a zero cap declines every timeout");
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
}
