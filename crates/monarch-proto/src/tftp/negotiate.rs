//! TFTP option negotiation for a read: which `blksize` (RFC 2348), `timeout` and `tsize`
//! (RFC 2349) and `windowsize` (RFC 7440) a request gets, within the server's limits, and
//! the OACK that grants them.

use std::time::Duration;

use crate::tftp::wire::{MAX_BLKSIZE, MIN_BLKSIZE, OP_OACK, Options, push_str};

/// The largest window this implementation uses, whatever is asked and configured. RFC 7440
/// allows 65535, but a window of more than half the 16-bit block space makes a stale ACK
/// (from before a rollover) indistinguishable from a fresh one.
pub const MAX_WINDOWSIZE: u16 = 32768;

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
