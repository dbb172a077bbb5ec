//! DHCP and ProxyDHCP decisions, sans-IO: who gets which address, which boot file, and
//! what goes back on the wire (issue 5, item 3).
//!
//! Messages are dhcproto's v4 types; nothing here parses a DHCP packet by hand. The one
//! exception is [`decode`]'s pre-check, which only *measures* the option list before dhcproto
//! sees it: dhcproto 0.15 has `debug_assert!`s and an unchecked `len - 1` on a few option
//! lengths (80, 81, 94, 151–155) and slices `chaddr` by the untrusted `hlen`, so a hostile
//! packet could panic a debug build or the fuzzer. The pre-check refuses those packets.
//!
//! Two modes, one [`Server`]:
//! - **Full**: a [`Pool`] of addresses with lease times, static reservations by MAC, and a
//!   lease table that the I/O layer persists ([`Pool::to_text`] / [`Pool::load_text`]).
//! - **Proxy** (PXE spec 2.1, §2.2.3): coexists with an existing DHCP server and never
//!   hands out an address; it answers PXE DISCOVERs on port 67 with boot options only, and
//!   REQUESTs on port 4011 with an ACK that carries the boot file.
//!
//! Boot decisions ([`BootConfig::choose`]): option 93 picks the boot file (BIOS, EFI ia32,
//! EFI x64, EFI x64 HTTP), iPXE clients (user class `iPXE` or option 175) get an HTTP URL to
//! their per-machine script `{http_base}/ipxe/{mac}.ipxe`, and clients that are not PXE get a
//! plain lease.
//!
//! Time is an explicit `now` in seconds. The I/O layer passes Unix time, so the expiry
//! stamps in a persisted lease table stay meaningful across a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Decodable, Encodable};

use crate::mac::{Mac, MacParseError};

/// UDP port of DHCP servers (and relays).
pub const SERVER_PORT: u16 = 67;
/// UDP port of DHCP clients.
pub const CLIENT_PORT: u16 = 68;
/// UDP port of the PXE boot server (ProxyDHCP REQUESTs after the address is known).
pub const PXE_PORT: u16 = 4011;
/// How long an OFFERed address stays set aside for its client before anyone may have it.
pub const OFFER_HOLD_SECS: u64 = 60;
/// How long an address a client DECLINEd (someone else answers ARP for it) stays out of the
/// pool: long enough for the operator to notice, short enough that a transient conflict does
/// not shrink the pool for good.
pub const DECLINE_HOLD_SECS: u64 = 600;
/// Largest pool accepted: allocation scans the range, so it must stay small enough to scan
/// per DISCOVER (a /16).
pub const MAX_POOL_SIZE: u32 = 65_536;
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

// ----------------------------------------------------------------------------------------
// Wire: decode and encode through dhcproto
// ----------------------------------------------------------------------------------------

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

fn opt_bytes(msg: &Message, code: u8) -> Option<&[u8]> {
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

fn opt_ip(msg: &Message, code: OptionCode) -> Option<Ipv4Addr> {
    match msg.opts().get(code)? {
        DhcpOption::RequestedIpAddress(ip) | DhcpOption::ServerIdentifier(ip) => Some(*ip),
        _ => None,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ----------------------------------------------------------------------------------------
// Clients and boot decisions
// ----------------------------------------------------------------------------------------

/// Client architectures (option 93, RFC 4578 / IANA) monarch has default boot files for.
pub mod arch {
    /// x86 BIOS.
    pub const BIOS: u16 = 0;
    /// EFI ia32.
    pub const EFI_IA32: u16 = 6;
    /// EFI x86-64.
    pub const EFI_X64: u16 = 7;
    /// EFI byte code (in practice x86-64 firmware that says so).
    pub const EFI_BC: u16 = 9;
    /// EFI x86-64 HTTP boot: the boot file is a URL, fetched by the firmware itself.
    pub const EFI_X64_HTTP: u16 = 16;
    /// Architectures whose firmware boots over HTTP (x86, x64, BC): they get a URL.
    pub const HTTP: [u16; 3] = [15, 16, 17];
}

/// What kind of client sent a message, as far as booting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Not a network-boot client (an OS's DHCP client): address only.
    Plain,
    /// PXE or UEFI HTTP-boot firmware (option 60 `PXEClient…` / `HTTPClient…`).
    Pxe {
        /// Option 93 (or the `Arch:` field of option 60; BIOS when absent, as PXE says).
        arch: u16,
    },
    /// iPXE (user class `iPXE` or option 175): it gets its per-machine HTTP script.
    Ipxe {
        /// Its architecture, as for [`ClientKind::Pxe`].
        arch: u16,
    },
}

impl ClientKind {
    /// Classify a request.
    pub fn of(msg: &Message) -> ClientKind {
        let class = opt_bytes(msg, 60).unwrap_or_default();
        let pxe = class.starts_with(b"PXEClient") || class.starts_with(b"HTTPClient");
        let ipxe = opt_bytes(msg, 77).is_some_and(|u| contains(u, b"iPXE"))
            || msg.opts().contains(OptionCode::from(IPXE_ENCAP_OPTION));
        let arch = match msg.opts().get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => a.0,
            // "PXEClient:Arch:00007:UNDI:003016": five decimal digits after "Arch:".
            _ => class
                .windows(5)
                .position(|w| w == b"Arch:")
                .and_then(|i| class.get(i + 5..i + 10))
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse().ok())
                .unwrap_or(arch::BIOS),
        };
        if ipxe {
            ClientKind::Ipxe { arch }
        } else if pxe {
            ClientKind::Pxe { arch }
        } else {
            ClientKind::Plain
        }
    }

    /// A short name for events and logs: `plain`, `pxe-bios`, `pxe-efi-x64`, `ipxe`, ….
    pub fn label(&self) -> String {
        let a = |arch: u16| match arch {
            arch::BIOS => "bios".to_string(),
            arch::EFI_IA32 => "efi-ia32".to_string(),
            arch::EFI_X64 => "efi-x64".to_string(),
            arch::EFI_BC => "efi-bc".to_string(),
            arch::EFI_X64_HTTP => "efi-x64-http".to_string(),
            other => format!("arch{other}"),
        };
        match self {
            ClientKind::Plain => "plain".into(),
            ClientKind::Pxe { arch } => format!("pxe-{}", a(*arch)),
            ClientKind::Ipxe { .. } => "ipxe".into(),
        }
    }
}

/// Boot file names by client architecture (option 93). A name that is already a URL
/// (`http://…`) is sent as is; for HTTP-boot architectures ([`arch::HTTP`]) a plain name is
/// joined to [`BootConfig::http_base`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootfiles(pub BTreeMap<u16, String>);

impl Default for Bootfiles {
    /// iPXE's own images, so PXE firmware chain-loads iPXE, which then asks again as iPXE
    /// and gets its HTTP script: BIOS `undionly.kpxe`, EFI ia32 `ipxe-ia32.efi`, EFI x64 /
    /// BC / x64 HTTP `ipxe.efi`.
    fn default() -> Self {
        Bootfiles(BTreeMap::from([
            (arch::BIOS, "undionly.kpxe".to_string()),
            (arch::EFI_IA32, "ipxe-ia32.efi".to_string()),
            (arch::EFI_X64, "ipxe.efi".to_string()),
            (arch::EFI_BC, "ipxe.efi".to_string()),
            (arch::EFI_X64_HTTP, "ipxe.efi".to_string()),
        ]))
    }
}

/// What to tell boot clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// The TFTP server: `siaddr` and option 66.
    pub tftp_server: Ipv4Addr,
    /// Base URL of the HTTP boot service (`http://10.0.0.1:8080`), for iPXE scripts and
    /// HTTP-boot firmware. Without it iPXE clients get a plain lease: handing them the PXE
    /// boot file instead would make iPXE chain-load itself forever.
    pub http_base: Option<String>,
    /// Boot file names per architecture.
    pub bootfiles: Bootfiles,
}

/// The boot options chosen for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// Boot file name or URL (option 67 and the `file` field when it fits).
    pub bootfile: String,
    /// Option 60 in the reply: `PXEClient`, or `HTTPClient` for UEFI HTTP boot (the
    /// firmware only accepts a URL from a reply that says so).
    pub vendor_class: &'static str,
}

impl BootConfig {
    fn base(&self) -> Option<&str> {
        self.http_base.as_deref().map(|b| b.trim_end_matches('/'))
    }

    /// The boot options for a client, or `None` (plain lease / nothing to boot).
    pub fn choose(&self, kind: ClientKind, mac: Mac) -> Option<Boot> {
        match kind {
            ClientKind::Plain => None,
            ClientKind::Ipxe { .. } => Some(Boot {
                bootfile: format!("{}/ipxe/{}.ipxe", self.base()?, mac.for_url()),
                vendor_class: "PXEClient",
            }),
            ClientKind::Pxe { arch } => {
                let file = self.bootfiles.0.get(&arch)?;
                let is_url = file.starts_with("http://") || file.starts_with("https://");
                if arch::HTTP.contains(&arch) {
                    let url = if is_url { file.clone() } else { format!("{}/{}", self.base()?, file) };
                    Some(Boot { bootfile: url, vendor_class: "HTTPClient" })
                } else {
                    Some(Boot { bootfile: file.clone(), vendor_class: "PXEClient" })
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------------------
// The pool and its lease table
// ----------------------------------------------------------------------------------------

/// The address pool of a full DHCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// First address handed out.
    pub start: Ipv4Addr,
    /// Last address handed out (inclusive).
    pub end: Ipv4Addr,
    /// Subnet mask (option 1).
    pub subnet_mask: Ipv4Addr,
    /// Default gateway (option 3), if any.
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Lease time in seconds (option 51; T1/T2 at 1/2 and 7/8 of it).
    pub lease_secs: u32,
    /// Static reservations: this MAC always gets this address (it may lie outside
    /// `start..=end`; no other MAC gets it).
    pub reservations: Vec<(Mac, Ipv4Addr)>,
}

impl PoolConfig {
    /// A pool `start..=end` in a /24, one-hour leases, no router, DNS or reservations.
    pub fn new(start: Ipv4Addr, end: Ipv4Addr) -> PoolConfig {
        PoolConfig {
            start,
            end,
            subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: Vec::new(),
            lease_secs: 3600,
            reservations: Vec::new(),
        }
    }

    /// Check the pool; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        let (s, e) = (u32::from(self.start), u32::from(self.end));
        if s > e {
            return Err(format!("DHCP pool start {} is after its end {}: swap them", self.start, self.end));
        }
        if e - s >= MAX_POOL_SIZE {
            return Err(format!(
                "DHCP pool {}-{} has {} addresses; the most is {MAX_POOL_SIZE} (a /16): make it smaller",
                self.start,
                self.end,
                u64::from(e - s) + 1
            ));
        }
        if self.lease_secs == 0 {
            return Err("DHCP lease time is 0: give leases at least a few minutes".into());
        }
        let mut macs = BTreeSet::new();
        let mut ips = BTreeSet::new();
        for (mac, ip) in &self.reservations {
            if !macs.insert(*mac) {
                return Err(format!("MAC {mac} has two DHCP reservations: keep one"));
            }
            if !ips.insert(*ip) {
                return Err(format!("address {ip} is reserved for two MACs: keep one"));
            }
        }
        Ok(())
    }
}

/// Who holds an address in the lease table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Offered to this MAC, not yet requested.
    Offered(Mac),
    /// Leased to this MAC (an expired lease still remembers its MAC, so the same machine
    /// gets the same address back while nobody else needed it).
    Bound(Mac),
    /// A client declined it (someone else answers for it): out of the pool until expiry.
    Declined,
}

impl Holder {
    /// The MAC holding it, if any.
    pub fn mac(&self) -> Option<Mac> {
        match self {
            Holder::Offered(m) | Holder::Bound(m) => Some(*m),
            Holder::Declined => None,
        }
    }
}

/// One row of the lease table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The address.
    pub ip: Ipv4Addr,
    /// Who holds it.
    pub holder: Holder,
    /// Until when (seconds, the same clock as `now`).
    pub expires: u64,
}

/// Why a REQUEST is refused (the NAK's message, option 56).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NakReason {
    /// The address is outside this server's pool and reservations.
    NotOurs,
    /// Another machine holds the address (or it is reserved for one, or declined).
    InUse,
    /// This machine has a reserved address and asked for another one.
    Reserved(Ipv4Addr),
}

impl fmt::Display for NakReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NakReason::NotOurs => f.write_str("address not in this server's pool"),
            NakReason::InUse => f.write_str("address held by another client"),
            NakReason::Reserved(ip) => write!(f, "this client's reserved address is {ip}"),
        }
    }
}

/// A bad line in a lease file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease table line {line}: {reason}")]
pub struct LeaseFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// What [`Pool::load_text`] kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// Rows now in the table.
    pub loaded: usize,
    /// Rows dropped: outside the (possibly changed) pool, reserved for another MAC, or
    /// conflicting with an earlier row.
    pub dropped: usize,
}

/// The address pool and its lease table. At most one row per address and per MAC, so the
/// table never grows beyond the pool plus reservations, whatever clients send.
#[derive(Debug, Clone)]
pub struct Pool {
    cfg: PoolConfig,
    slots: BTreeMap<Ipv4Addr, Slot>,
    by_mac: BTreeMap<Mac, Ipv4Addr>,
    reserved_ip: BTreeMap<Ipv4Addr, Mac>,
    reserved_mac: BTreeMap<Mac, Ipv4Addr>,
    excluded: BTreeSet<Ipv4Addr>,
    dirty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    holder: Holder,
    expires: u64,
}

/// First line of a lease file.
const LEASE_HEADER: &str =
    "# monarch DHCP leases: STATE MAC IP EXPIRES (Unix seconds); written by monarch, safe to delete";

impl Pool {
    /// An empty pool; the config is validated.
    pub fn new(cfg: PoolConfig) -> Result<Pool, String> {
        cfg.validate()?;
        Ok(Pool {
            reserved_ip: cfg.reservations.iter().map(|(m, ip)| (*ip, *m)).collect(),
            reserved_mac: cfg.reservations.iter().copied().collect(),
            cfg,
            slots: BTreeMap::new(),
            by_mac: BTreeMap::new(),
            excluded: BTreeSet::new(),
            dirty: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Never hand out `ip` (the server's own address, a router inside the range…).
    pub fn exclude(&mut self, ip: Ipv4Addr) {
        self.excluded.insert(ip);
    }

    fn in_range(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.cfg.start)..=u32::from(self.cfg.end)).contains(&u32::from(ip))
    }

    /// May `mac` have `ip` now?
    fn usable(&self, ip: Ipv4Addr, mac: Mac, now: u64) -> bool {
        let reserved_for = self.reserved_ip.get(&ip);
        if !(self.in_range(ip) || reserved_for == Some(&mac)) || self.excluded.contains(&ip) {
            return false;
        }
        if reserved_for.is_some_and(|m| *m != mac) {
            return false;
        }
        match self.slots.get(&ip) {
            None => true,
            Some(s) => s.holder.mac() == Some(mac) || s.expires <= now,
        }
    }

    /// Give `ip` to `holder`: drop the MAC's other row and whoever held `ip` before.
    fn assign(&mut self, ip: Ipv4Addr, holder: Holder, expires: u64) {
        let mac = holder.mac();
        let old = mac.and_then(|m| self.by_mac.get(&m).copied()).filter(|old| *old != ip);
        if let Some(s) = old.and_then(|old| self.slots.remove(&old)) {
            self.dirty |= !matches!(s.holder, Holder::Offered(_));
        }
        if let Some(prev) = self.slots.get(&ip).copied() {
            match prev.holder.mac() {
                Some(pm) if Some(pm) != mac => {
                    self.by_mac.remove(&pm);
                }
                _ => {}
            }
            self.dirty |= !matches!(prev.holder, Holder::Offered(_));
        }
        self.slots.insert(ip, Slot { holder, expires });
        if let Some(m) = mac {
            self.by_mac.insert(m, ip);
        }
        self.dirty |= !matches!(holder, Holder::Offered(_));
    }

    /// DISCOVER: the address to offer `mac` (its reservation, its current or past address,
    /// the address it asked for, a never-used one, then the longest-expired one), set aside
    /// for [`OFFER_HOLD_SECS`]. `None` when the pool is exhausted.
    pub fn offer(&mut self, mac: Mac, requested: Option<Ipv4Addr>, now: u64) -> Option<Ipv4Addr> {
        let ip = self.pick(mac, requested, now)?;
        let current = self.slots.get(&ip).copied();
        let active_bound = current.is_some_and(|s| s.holder == Holder::Bound(mac) && s.expires > now);
        if !active_bound {
            self.assign(ip, Holder::Offered(mac), now.saturating_add(OFFER_HOLD_SECS));
        }
        Some(ip)
    }

    fn pick(&self, mac: Mac, requested: Option<Ipv4Addr>, now: u64) -> Option<Ipv4Addr> {
        let known = [self.reserved_mac.get(&mac).copied(), self.by_mac.get(&mac).copied(), requested];
        if let Some(ip) = known.into_iter().flatten().find(|ip| self.usable(*ip, mac, now)) {
            return Some(ip);
        }
        let range = u32::from(self.cfg.start)..=u32::from(self.cfg.end);
        let fresh = range.map(Ipv4Addr::from).find(|ip| {
            !self.slots.contains_key(ip) && !self.reserved_ip.contains_key(ip) && !self.excluded.contains(ip)
        });
        fresh.or_else(|| {
            self.slots
                .iter()
                .filter(|(ip, s)| s.expires <= now && self.usable(**ip, mac, now))
                .min_by_key(|(_, s)| s.expires)
                .map(|(ip, _)| *ip)
        })
    }

    /// REQUEST (selecting, init-reboot, renewing or rebinding): bind `ip` to `mac` for the
    /// lease time, or say why not.
    pub fn request(&mut self, mac: Mac, ip: Ipv4Addr, now: u64) -> Result<Lease, NakReason> {
        if let Some(r) = self.reserved_mac.get(&mac).copied() {
            if r != ip && self.usable(r, mac, now) {
                return Err(NakReason::Reserved(r));
            }
        }
        if !self.in_range(ip) && self.reserved_mac.get(&mac) != Some(&ip) {
            return Err(NakReason::NotOurs);
        }
        if !self.usable(ip, mac, now) {
            return Err(NakReason::InUse);
        }
        let expires = now.saturating_add(u64::from(self.cfg.lease_secs));
        self.assign(ip, Holder::Bound(mac), expires);
        Ok(Lease { ip, holder: Holder::Bound(mac), expires })
    }

    /// RELEASE: the lease ends now, but the row keeps the MAC so the machine gets the same
    /// address next time unless someone else needed it. `false` if `mac` did not hold `ip`.
    pub fn release(&mut self, mac: Mac, ip: Ipv4Addr, now: u64) -> bool {
        match self.slots.get_mut(&ip) {
            Some(s) if s.holder.mac() == Some(mac) => {
                s.holder = Holder::Bound(mac);
                s.expires = s.expires.min(now);
                self.dirty = true;
                true
            }
            _ => false,
        }
    }

    /// DECLINE: `mac` found `ip` in use by someone else; keep it out of the pool for
    /// [`DECLINE_HOLD_SECS`]. `false` if `mac` did not hold `ip`.
    pub fn decline(&mut self, mac: Mac, ip: Ipv4Addr, now: u64) -> bool {
        match self.slots.get(&ip) {
            Some(s) if s.holder.mac() == Some(mac) => {
                self.by_mac.remove(&mac);
                self.assign(ip, Holder::Declined, now.saturating_add(DECLINE_HOLD_SECS));
                true
            }
            _ => false,
        }
    }

    /// The client chose another server's offer: free the address we set aside for it
    /// (a bound lease stays).
    pub fn forget_offer(&mut self, mac: Mac) {
        let ip = self.by_mac.get(&mac).copied();
        if let Some(ip) = ip.filter(|ip| self.slots.get(ip).is_some_and(|s| s.holder == Holder::Offered(mac)))
        {
            self.slots.remove(&ip);
            self.by_mac.remove(&mac);
        }
    }

    /// The row of `mac`, if it has one (active or expired).
    pub fn lease_of(&self, mac: Mac) -> Option<Lease> {
        let ip = *self.by_mac.get(&mac)?;
        self.slots.get(&ip).map(|s| Lease { ip, holder: s.holder, expires: s.expires })
    }

    /// Every row, by address.
    pub fn leases(&self) -> impl Iterator<Item = Lease> + '_ {
        self.slots.iter().map(|(ip, s)| Lease { ip: *ip, holder: s.holder, expires: s.expires })
    }

    /// Whether the persisted part of the table (bound and declined rows) changed since the
    /// last call; clears the flag. Offers alone do not count: they last a minute, and a
    /// DISCOVER flood must not turn into a flood of fsyncs.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Mark the table as changed, so the next [`Pool::take_dirty`] says so (after a failed
    /// save, to retry).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The table as text, one `STATE MAC IP EXPIRES` row per line (`-` for no MAC).
    pub fn to_text(&self) -> String {
        let mut out = String::from(LEASE_HEADER);
        out.push('\n');
        for l in self.leases() {
            let (state, mac) = match l.holder {
                Holder::Offered(m) => ("offered", m.to_string()),
                Holder::Bound(m) => ("bound", m.to_string()),
                Holder::Declined => ("declined", "-".to_string()),
            };
            out.push_str(&format!("{state} {mac} {} {}\n", l.ip, l.expires));
        }
        out
    }

    /// Replace the table with the rows of `text` (as written by [`Pool::to_text`]). A line
    /// that does not parse is an error (with its number) and leaves the table unchanged;
    /// rows that no longer fit the configuration are dropped and counted.
    pub fn load_text(&mut self, text: &str) -> Result<LoadReport, LeaseFileError> {
        let rows = parse_leases(text)?;
        self.slots.clear();
        self.by_mac.clear();
        let mut report = LoadReport::default();
        for row in rows {
            let fits = match row.holder.mac() {
                Some(m) => {
                    self.usable(row.ip, m, 0)
                        && !self.slots.contains_key(&row.ip)
                        && !self.by_mac.contains_key(&m)
                }
                None => {
                    self.in_range(row.ip)
                        && !self.reserved_ip.contains_key(&row.ip)
                        && !self.slots.contains_key(&row.ip)
                }
            };
            if !fits {
                report.dropped += 1;
                continue;
            }
            self.slots.insert(row.ip, Slot { holder: row.holder, expires: row.expires });
            if let Some(m) = row.holder.mac() {
                self.by_mac.insert(m, row.ip);
            }
            report.loaded += 1;
        }
        self.dirty = report.dropped > 0;
        Ok(report)
    }
}

/// Parse a lease table's text: blank lines and `#` comments are skipped; every other line
/// is `STATE MAC IP EXPIRES`.
pub fn parse_leases(text: &str) -> Result<Vec<Lease>, LeaseFileError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| LeaseFileError { line: i + 1, reason };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [state, mac, ip, expires] = fields[..] else {
            return Err(err(format!("expected `STATE MAC IP EXPIRES`, found {} fields", fields.len())));
        };
        let ip: Ipv4Addr = ip.parse().map_err(|_| err(format!("`{ip}` is not an IPv4 address")))?;
        let expires: u64 =
            expires.parse().map_err(|_| err(format!("`{expires}` is not a time in seconds")))?;
        let holder = match (state, mac) {
            ("declined", "-") => Holder::Declined,
            ("offered", m) => Holder::Offered(m.parse().map_err(|e: MacParseError| err(e.to_string()))?),
            ("bound", m) => Holder::Bound(m.parse().map_err(|e: MacParseError| err(e.to_string()))?),
            _ => {
                return Err(err(format!(
                    "unknown state `{state}` (with MAC `{mac}`): expected bound, offered or declined"
                )));
            }
        };
        rows.push(Lease { ip, holder, expires });
    }
    Ok(rows)
}

// ----------------------------------------------------------------------------------------
// The server
// ----------------------------------------------------------------------------------------

/// Which socket a message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Port 67: DHCP (and the ProxyDHCP offer).
    Dhcp,
    /// Port 4011: the PXE boot server (ProxyDHCP REQUEST once the client has an address).
    PxeBoot,
}

/// Where a reply goes (RFC 2131 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255 port 68: the client has no address yet (or a NAK).
    Broadcast,
    /// The client's own address (`ciaddr`), port 68.
    Unicast(Ipv4Addr),
    /// The relay agent (`giaddr`), port 67.
    Relay(Ipv4Addr),
    /// Back to the datagram's source address and port (port 4011 requests).
    Sender,
}

/// Which reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// DHCPOFFER (with no address from a proxy).
    Offer,
    /// DHCPACK.
    Ack,
    /// DHCPNAK.
    Nak,
}

/// A message to send, where to, and what it says (for events).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The message.
    pub msg: Message,
    /// Where to send it.
    pub to: Destination,
    /// OFFER, ACK or NAK.
    pub kind: ReplyKind,
    /// The client.
    pub mac: Mac,
    /// The address offered or acknowledged (`None` from a proxy, for INFORM and NAK).
    pub ip: Option<Ipv4Addr>,
    /// What the client is.
    pub client: ClientKind,
    /// The boot file or URL given, if any.
    pub bootfile: Option<String>,
    /// Why, for a NAK.
    pub nak_reason: Option<NakReason>,
}

impl Reply {
    /// The reply's bytes ([`encode`]).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        encode(&self.msg)
    }
}

/// Why a message gets no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignore {
    /// A BOOTREPLY (another server's answer, or a spoof).
    NotARequest,
    /// Not Ethernet with a 6-byte MAC.
    NotEthernet,
    /// No option 53 (plain BOOTP, which monarch does not serve).
    NoMessageType,
    /// A message type this server does not answer (the type's number).
    Unsupported(u8),
    /// The client chose another server's offer.
    OtherServerChosen,
    /// No free address left.
    PoolExhausted,
    /// A REQUEST naming no address (no option 50, no ciaddr).
    NoAddressRequested,
    /// RELEASE or DECLINE of an address the client did not hold.
    NotHeld,
    /// INFORM without ciaddr.
    NoClientAddress,
    /// ProxyDHCP only serves PXE / iPXE clients.
    NotABootClient,
    /// A boot client with no boot file configured for its architecture (or iPXE / HTTP
    /// boot with no HTTP base URL).
    NoBootfile(ClientKind),
    /// ProxyDHCP: address REQUESTs on port 67 are for the real DHCP server.
    ProxyLeavesToDhcpServer,
}

impl fmt::Display for Ignore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ignore::NotARequest => f.write_str("a BOOTREPLY, not a request"),
            Ignore::NotEthernet => f.write_str("not Ethernet with a 6-byte hardware address"),
            Ignore::NoMessageType => f.write_str("no DHCP message type (plain BOOTP is not served)"),
            Ignore::Unsupported(t) => write!(f, "DHCP message type {t} is not served"),
            Ignore::OtherServerChosen => f.write_str("the client chose another server"),
            Ignore::PoolExhausted => {
                f.write_str("no free address in the pool: enlarge the pool or shorten the lease time")
            }
            Ignore::NoAddressRequested => f.write_str("REQUEST without option 50 or ciaddr"),
            Ignore::NotHeld => f.write_str("RELEASE/DECLINE of an address the client does not hold"),
            Ignore::NoClientAddress => f.write_str("INFORM without ciaddr"),
            Ignore::NotABootClient => f.write_str("not a PXE/iPXE client (ProxyDHCP serves only those)"),
            Ignore::NoBootfile(k) => write!(
                f,
                "no boot file for a {} client: configure one for its architecture (and an HTTP base URL for iPXE/HTTP boot)",
                k.label()
            ),
            Ignore::ProxyLeavesToDhcpServer => {
                f.write_str("ProxyDHCP leaves address requests to the DHCP server")
            }
        }
    }
}

/// What [`Server::decide`] did with a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Send this.
    Reply(Box<Reply>),
    /// A RELEASE was applied (no reply, by protocol).
    Released {
        /// The client.
        mac: Mac,
        /// The released address.
        ip: Ipv4Addr,
    },
    /// A DECLINE was applied (no reply, by protocol).
    Declined {
        /// The client.
        mac: Mac,
        /// The declined address, now out of the pool for a while.
        ip: Ipv4Addr,
    },
    /// No reply, and why.
    Ignored(Ignore),
}

/// Full server or proxy.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Hands out addresses from a pool.
    Full(Pool),
    /// ProxyDHCP: boot options only, beside an existing DHCP server.
    Proxy,
}

/// The DHCP / ProxyDHCP server's decisions.
#[derive(Debug, Clone)]
pub struct Server {
    /// This server's address (option 54, the server identifier); excluded from the pool.
    pub server_ip: Ipv4Addr,
    /// What boot clients are told.
    pub boot: BootConfig,
    /// Full or proxy.
    pub mode: Mode,
}

impl Server {
    /// A full server; the pool config is validated.
    pub fn full(server_ip: Ipv4Addr, pool: PoolConfig, boot: BootConfig) -> Result<Server, String> {
        let mut pool = Pool::new(pool)?;
        pool.exclude(server_ip);
        Ok(Server { server_ip, boot, mode: Mode::Full(pool) })
    }

    /// A ProxyDHCP server.
    pub fn proxy(server_ip: Ipv4Addr, boot: BootConfig) -> Server {
        Server { server_ip, boot, mode: Mode::Proxy }
    }

    /// The pool of a full server.
    pub fn pool(&self) -> Option<&Pool> {
        match &self.mode {
            Mode::Full(p) => Some(p),
            Mode::Proxy => None,
        }
    }

    /// The pool of a full server, mutably (to load a lease table, take the dirty flag).
    pub fn pool_mut(&mut self) -> Option<&mut Pool> {
        match &mut self.mode {
            Mode::Full(p) => Some(p),
            Mode::Proxy => None,
        }
    }

    /// The reply to `msg`, if any (see [`Server::decide`] for why not).
    pub fn handle(&mut self, msg: &Message, via: Via, now: u64) -> Option<Reply> {
        match self.decide(msg, via, now) {
            Outcome::Reply(r) => Some(*r),
            _ => None,
        }
    }

    /// Decide what to do with `msg`, which arrived on `via` at `now` (seconds).
    pub fn decide(&mut self, msg: &Message, via: Via, now: u64) -> Outcome {
        match self.decide_inner(msg, via, now) {
            Ok(o) => o,
            Err(i) => Outcome::Ignored(i),
        }
    }

    fn decide_inner(&mut self, msg: &Message, via: Via, now: u64) -> Result<Outcome, Ignore> {
        if msg.opcode() != Opcode::BootRequest {
            return Err(Ignore::NotARequest);
        }
        let mac = client_mac(msg).ok_or(Ignore::NotEthernet)?;
        let mtype = msg.opts().msg_type().ok_or(Ignore::NoMessageType)?;
        let kind = ClientKind::of(msg);
        let server_ip = self.server_ip;

        if via == Via::PxeBoot {
            // PXE boot server / ProxyDHCP port 4011: the client has its address already.
            if !matches!(mtype, MessageType::Request | MessageType::Inform) {
                return Err(Ignore::Unsupported(u8::from(mtype)));
            }
            if kind == ClientKind::Plain {
                return Err(Ignore::NotABootClient);
            }
            let boot = self.boot.choose(kind, mac).ok_or(Ignore::NoBootfile(kind))?;
            let mut r = reply_to(msg, MessageType::Ack, server_ip);
            r.set_ciaddr(msg.ciaddr());
            add_boot(&mut r, msg, &boot, self.boot.tftp_server);
            return Ok(self.out(r, Destination::Sender, ReplyKind::Ack, mac, None, kind, Some(boot)));
        }

        let pool = match &mut self.mode {
            Mode::Proxy => {
                return match mtype {
                    MessageType::Discover => {
                        if kind == ClientKind::Plain {
                            return Err(Ignore::NotABootClient);
                        }
                        let boot = self.boot.choose(kind, mac).ok_or(Ignore::NoBootfile(kind))?;
                        let mut r = reply_to(msg, MessageType::Offer, server_ip);
                        add_boot(&mut r, msg, &boot, self.boot.tftp_server);
                        let to = destination(msg, false);
                        Ok(self.out(r, to, ReplyKind::Offer, mac, None, kind, Some(boot)))
                    }
                    MessageType::Request => Err(Ignore::ProxyLeavesToDhcpServer),
                    other => Err(Ignore::Unsupported(u8::from(other))),
                };
            }
            Mode::Full(pool) => pool,
        };

        match mtype {
            MessageType::Discover => {
                let ip = pool
                    .offer(mac, opt_ip(msg, OptionCode::RequestedIpAddress), now)
                    .ok_or(Ignore::PoolExhausted)?;
                let mut r = reply_to(msg, MessageType::Offer, server_ip);
                r.set_yiaddr(ip);
                add_lease_options(&mut r, pool.config());
                let boot = self.boot.choose(kind, mac);
                if let Some(b) = &boot {
                    add_boot(&mut r, msg, b, self.boot.tftp_server);
                }
                let to = destination(msg, false);
                Ok(self.out(r, to, ReplyKind::Offer, mac, Some(ip), kind, boot))
            }
            MessageType::Request => {
                if opt_ip(msg, OptionCode::ServerIdentifier).is_some_and(|sid| sid != server_ip) {
                    pool.forget_offer(mac);
                    return Err(Ignore::OtherServerChosen);
                }
                let ciaddr = Some(msg.ciaddr()).filter(|a| !a.is_unspecified());
                let ip = opt_ip(msg, OptionCode::RequestedIpAddress)
                    .or(ciaddr)
                    .ok_or(Ignore::NoAddressRequested)?;
                match pool.request(mac, ip, now) {
                    Ok(_) => {
                        let mut r = reply_to(msg, MessageType::Ack, server_ip);
                        r.set_yiaddr(ip).set_ciaddr(msg.ciaddr());
                        add_lease_options(&mut r, pool.config());
                        let boot = self.boot.choose(kind, mac);
                        if let Some(b) = &boot {
                            add_boot(&mut r, msg, b, self.boot.tftp_server);
                        }
                        let to = destination(msg, false);
                        Ok(self.out(r, to, ReplyKind::Ack, mac, Some(ip), kind, boot))
                    }
                    Err(why) => {
                        pool.forget_offer(mac);
                        let mut r = reply_to(msg, MessageType::Nak, server_ip);
                        r.opts_mut().insert(DhcpOption::Message(why.to_string()));
                        let mut out =
                            self.out(r, destination(msg, true), ReplyKind::Nak, mac, None, kind, None);
                        if let Outcome::Reply(rep) = &mut out {
                            rep.nak_reason = Some(why);
                        }
                        Ok(out)
                    }
                }
            }
            MessageType::Release => {
                let ip = msg.ciaddr();
                if pool.release(mac, ip, now) {
                    Ok(Outcome::Released { mac, ip })
                } else {
                    Err(Ignore::NotHeld)
                }
            }
            MessageType::Decline => {
                let ip = opt_ip(msg, OptionCode::RequestedIpAddress).ok_or(Ignore::NoAddressRequested)?;
                if pool.decline(mac, ip, now) {
                    Ok(Outcome::Declined { mac, ip })
                } else {
                    Err(Ignore::NotHeld)
                }
            }
            MessageType::Inform => {
                if msg.ciaddr().is_unspecified() {
                    return Err(Ignore::NoClientAddress);
                }
                let mut r = reply_to(msg, MessageType::Ack, server_ip);
                r.set_ciaddr(msg.ciaddr());
                let cfg = pool.config();
                r.opts_mut().insert(DhcpOption::SubnetMask(cfg.subnet_mask));
                let boot = self.boot.choose(kind, mac);
                if let Some(b) = &boot {
                    add_boot(&mut r, msg, b, self.boot.tftp_server);
                }
                let to = destination(msg, false);
                Ok(self.out(r, to, ReplyKind::Ack, mac, None, kind, boot))
            }
            other => Err(Ignore::Unsupported(u8::from(other))),
        }
    }

    #[allow(clippy::too_many_arguments)] // one private constructor, called with named locals
    fn out(
        &self,
        msg: Message,
        to: Destination,
        kind: ReplyKind,
        mac: Mac,
        ip: Option<Ipv4Addr>,
        client: ClientKind,
        boot: Option<Boot>,
    ) -> Outcome {
        Outcome::Reply(Box::new(Reply {
            msg,
            to,
            kind,
            mac,
            ip,
            client,
            bootfile: boot.map(|b| b.bootfile),
            nak_reason: None,
        }))
    }
}

/// RFC 2131 §4.1: to the relay if there is one; a NAK is broadcast; to `ciaddr` when the
/// client has an address; else broadcast. (Unicasting to `yiaddr` before the client has
/// configured it needs an ARP entry injected by hand; broadcasting is what every client
/// accepts, so we always do that.)
fn destination(req: &Message, nak: bool) -> Destination {
    if !req.giaddr().is_unspecified() {
        Destination::Relay(req.giaddr())
    } else if nak || req.ciaddr().is_unspecified() {
        Destination::Broadcast
    } else {
        Destination::Unicast(req.ciaddr())
    }
}

/// The fixed part of a reply: the request's xid, flags, giaddr and chaddr, message type and
/// server identifier.
fn reply_to(req: &Message, mtype: MessageType, server_ip: Ipv4Addr) -> Message {
    let mut r = Message::new_with_id(
        req.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        req.chaddr(),
    );
    r.set_opcode(Opcode::BootReply).set_htype(req.htype()).set_flags(if req.flags().broadcast() {
        Flags::default().set_broadcast()
    } else {
        Flags::default()
    });
    r.opts_mut().insert(DhcpOption::MessageType(mtype));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(server_ip));
    r
}

fn add_lease_options(r: &mut Message, cfg: &PoolConfig) {
    let t = cfg.lease_secs;
    let o = r.opts_mut();
    o.insert(DhcpOption::AddressLeaseTime(t));
    o.insert(DhcpOption::Renewal(t / 2));
    o.insert(DhcpOption::Rebinding(t / 8 * 7 + (t % 8) * 7 / 8));
    o.insert(DhcpOption::SubnetMask(cfg.subnet_mask));
    if let Some(gw) = cfg.router {
        o.insert(DhcpOption::Router(vec![gw]));
    }
    if !cfg.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(cfg.dns.clone()));
    }
}

/// PXE options: siaddr + 66 (TFTP server), 67 + `file` (boot file), 60 (vendor class), 43
/// (discovery control), and 97 (client UUID) echoed when the client sent it, as the PXE
/// spec requires.
fn add_boot(r: &mut Message, req: &Message, boot: &Boot, tftp: Ipv4Addr) {
    r.set_siaddr(tftp);
    // The `file` field holds 128 bytes including its NUL; longer URLs live in option 67 only.
    if boot.bootfile.len() < 128 {
        r.set_fname(boot.bootfile.as_bytes());
    }
    let o = r.opts_mut();
    o.insert(DhcpOption::TFTPServerName(tftp.to_string().into_bytes()));
    o.insert(DhcpOption::BootfileName(boot.bootfile.clone().into_bytes()));
    o.insert(DhcpOption::ClassIdentifier(boot.vendor_class.as_bytes().to_vec()));
    o.insert(DhcpOption::VendorExtensions(PXE_VENDOR_OPTIONS.to_vec()));
    if let Some(DhcpOption::ClientMachineIdentifier(uuid)) =
        req.opts().get(OptionCode::ClientMachineIdentifier)
    {
        o.insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
    }
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
mod tests {
    use super::*;
    use dhcproto::v4::Architecture;
    use proptest::prelude::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const MAC: Mac = Mac::new([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn boot() -> BootConfig {
        BootConfig {
            tftp_server: SERVER,
            http_base: Some("http://10.0.0.1:8080/".into()),
            bootfiles: Bootfiles::default(),
        }
    }

    fn pool_cfg(first: u8, last: u8) -> PoolConfig {
        PoolConfig::new(ip(first), ip(last))
    }

    fn full(first: u8, last: u8) -> Server {
        Server::full(SERVER, pool_cfg(first, last), boot()).unwrap()
    }

    fn pxe(mut m: Message, arch: u16) -> Message {
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            format!("PXEClient:Arch:{arch:05}:UNDI:002001").into_bytes(),
        ));
        m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture(arch)));
        m
    }

    fn discover(mac: Mac) -> Message {
        request(MessageType::Discover, mac, 7)
    }

    fn select(mac: Mac, offered: Ipv4Addr) -> Message {
        let mut m = request(MessageType::Request, mac, 7);
        m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(offered));
        m
    }

    fn opt(m: &Message, code: u8) -> Option<&[u8]> {
        opt_bytes(m, code)
    }

    fn lease_dance(s: &mut Server, mac: Mac, now: u64) -> Ipv4Addr {
        let offer = s.handle(&discover(mac), Via::Dhcp, now).unwrap();
        let ack = s.handle(&select(mac, offer.ip.unwrap()), Via::Dhcp, now).unwrap();
        assert_eq!(ack.kind, ReplyKind::Ack);
        ack.ip.unwrap()
    }

    #[test]
    fn plain_discover_gets_a_plain_offer_from_the_pool() {
        let mut s = full(100, 110);
        let r = s.handle(&discover(MAC), Via::Dhcp, 1000).unwrap();
        assert_eq!(r.kind, ReplyKind::Offer);
        assert_eq!(r.msg.opcode(), Opcode::BootReply);
        assert_eq!(r.msg.xid(), 7);
        assert_eq!(r.msg.yiaddr(), ip(100));
        assert_eq!(r.to, Destination::Broadcast);
        assert_eq!(r.client, ClientKind::Plain);
        assert_eq!(r.bootfile, None);
        for code in [43, 60, 66, 67, 97] {
            assert!(!r.msg.opts().contains(OptionCode::from(code)), "option {code} in a plain offer");
        }
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(opt_ip(&r.msg, OptionCode::ServerIdentifier), Some(SERVER));
        assert_eq!(r.msg.opts().get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(3600)));
        assert_eq!(r.msg.opts().get(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
        assert_eq!(r.msg.opts().get(OptionCode::Rebinding), Some(&DhcpOption::Rebinding(3150)));
        assert!(r.encode().unwrap().len() >= MIN_REPLY_LEN);
    }

    #[test]
    fn server_address_is_never_handed_out() {
        let mut s = full(1, 2);
        let r = s.handle(&discover(MAC), Via::Dhcp, 0).unwrap();
        assert_eq!(r.ip, Some(ip(2)));
    }

    #[test]
    fn bios_efi_and_http_boot_get_their_bootfiles() {
        let mut s = full(100, 110);
        let cases = [
            (arch::BIOS, "undionly.kpxe", "PXEClient"),
            (arch::EFI_IA32, "ipxe-ia32.efi", "PXEClient"),
            (arch::EFI_X64, "ipxe.efi", "PXEClient"),
            (arch::EFI_BC, "ipxe.efi", "PXEClient"),
            (arch::EFI_X64_HTTP, "http://10.0.0.1:8080/ipxe.efi", "HTTPClient"),
        ];
        for (a, file, class) in cases {
            let r = s.handle(&pxe(discover(MAC), a), Via::Dhcp, 0).unwrap();
            assert_eq!(r.client, ClientKind::Pxe { arch: a });
            assert_eq!(r.bootfile.as_deref(), Some(file));
            assert_eq!(opt(&r.msg, 67), Some(file.as_bytes()));
            assert_eq!(r.msg.fname().map(|f| f.to_vec()), Some(file.as_bytes().to_vec()));
            assert_eq!(opt(&r.msg, 60), Some(class.as_bytes()));
            assert_eq!(opt(&r.msg, 66), Some(&b"10.0.0.1"[..]));
            assert_eq!(opt(&r.msg, 43), Some(&PXE_VENDOR_OPTIONS[..]));
            assert_eq!(r.msg.siaddr(), SERVER);
            assert!(r.ip.is_some());
        }
    }

    #[test]
    fn arch_comes_from_the_vendor_class_when_option_93_is_missing() {
        let mut m = discover(MAC);
        m.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec()));
        assert_eq!(ClientKind::of(&m), ClientKind::Pxe { arch: 7 });
        m.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        assert_eq!(ClientKind::of(&m), ClientKind::Pxe { arch: 0 });
    }

    #[test]
    fn unknown_architecture_gets_a_plain_lease() {
        let mut s = full(100, 110);
        let r = s.handle(&pxe(discover(MAC), 11), Via::Dhcp, 0).unwrap();
        assert_eq!(r.bootfile, None);
        assert!(!r.msg.opts().contains(OptionCode::BootfileName));
        assert!(r.ip.is_some());
    }

    #[test]
    fn ipxe_gets_its_script_url_by_user_class_or_option_175() {
        let mut s = full(100, 110);
        let url = "http://10.0.0.1:8080/ipxe/52-54-00-12-34-56.ipxe";
        let mut by_class = pxe(discover(MAC), 7);
        by_class.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        let mut by_175 = pxe(discover(MAC), 0);
        by_175.opts_mut().insert(ipxe_encap_option());
        for m in [by_class, by_175] {
            let r = s.handle(&m, Via::Dhcp, 0).unwrap();
            assert!(matches!(r.client, ClientKind::Ipxe { .. }));
            assert_eq!(r.bootfile.as_deref(), Some(url));
            assert_eq!(opt(&r.msg, 67), Some(url.as_bytes()));
        }
        // No HTTP base: a plain lease, not a chain-load loop.
        s.boot.http_base = None;
        let mut m = discover(MAC);
        m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        let r = s.handle(&m, Via::Dhcp, 0).unwrap();
        assert_eq!(r.bootfile, None);
        assert!(r.ip.is_some());
    }

    #[test]
    fn client_uuid_is_echoed_only_when_sent() {
        let mut s = full(100, 110);
        let uuid = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
        let mut m = pxe(discover(MAC), 0);
        m.opts_mut().insert(DhcpOption::ClientMachineIdentifier(uuid.to_vec()));
        let r = s.handle(&m, Via::Dhcp, 0).unwrap();
        assert_eq!(opt(&r.msg, 97), Some(&uuid[..]));
        let r = s.handle(&pxe(discover(MAC), 0), Via::Dhcp, 0).unwrap();
        assert_eq!(opt(&r.msg, 97), None);
    }

    #[test]
    fn discover_request_ack_and_the_same_address_again() {
        let mut s = full(100, 110);
        let a = lease_dance(&mut s, MAC, 0);
        assert_eq!(a, ip(100));
        assert!(s.pool_mut().unwrap().take_dirty());
        let l = s.pool().unwrap().lease_of(MAC).unwrap();
        assert_eq!((l.holder, l.expires), (Holder::Bound(MAC), 3600));
        // Renewing (ciaddr, unicast, no option 50 or 54).
        let mut renew = request(MessageType::Request, MAC, 9);
        renew.set_ciaddr(a);
        let r = s.handle(&renew, Via::Dhcp, 2000).unwrap();
        assert_eq!((r.kind, r.ip, r.to), (ReplyKind::Ack, Some(a), Destination::Unicast(a)));
        assert_eq!(r.msg.ciaddr(), a);
        assert_eq!(s.pool().unwrap().lease_of(MAC).unwrap().expires, 5600);
        // Long after expiry, nobody else needed it: the same address.
        assert_eq!(lease_dance(&mut s, MAC, 100_000), a);
        // A second machine gets another one.
        assert_ne!(lease_dance(&mut s, Mac::new([2; 6]), 100_000), a);
    }

    #[test]
    fn request_for_someone_elses_address_is_nakked() {
        let mut s = full(100, 110);
        let a = lease_dance(&mut s, MAC, 0);
        let other = Mac::new([2; 6]);
        let r = s.handle(&select(other, a), Via::Dhcp, 10).unwrap();
        assert_eq!(
            (r.kind, r.nak_reason, r.to),
            (ReplyKind::Nak, Some(NakReason::InUse), Destination::Broadcast)
        );
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
        // Outside the pool: NAK (init-reboot on the wrong network).
        let mut reboot = request(MessageType::Request, other, 1);
        reboot.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 1, 5)));
        let r = s.handle(&reboot, Via::Dhcp, 10).unwrap();
        assert_eq!(r.nak_reason, Some(NakReason::NotOurs));
    }

    #[test]
    fn request_for_another_server_frees_our_offer() {
        let mut s = full(100, 100);
        let r = s.handle(&discover(MAC), Via::Dhcp, 0).unwrap();
        assert_eq!(r.ip, Some(ip(100)));
        assert!(s.handle(&discover(Mac::new([2; 6])), Via::Dhcp, 1).is_none(), "held for the first client");
        let mut m = select(MAC, ip(100));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(ip(200)));
        assert_eq!(s.decide(&m, Via::Dhcp, 2), Outcome::Ignored(Ignore::OtherServerChosen));
        assert_eq!(s.handle(&discover(Mac::new([2; 6])), Via::Dhcp, 3).unwrap().ip, Some(ip(100)));
    }

    #[test]
    fn offers_expire_and_exhaustion_is_reported() {
        let mut s = full(100, 101);
        s.handle(&discover(Mac::new([1; 6])), Via::Dhcp, 0).unwrap();
        s.handle(&discover(Mac::new([2; 6])), Via::Dhcp, 0).unwrap();
        assert_eq!(
            s.decide(&discover(Mac::new([3; 6])), Via::Dhcp, 1),
            Outcome::Ignored(Ignore::PoolExhausted)
        );
        let r = s.handle(&discover(Mac::new([3; 6])), Via::Dhcp, OFFER_HOLD_SECS + 1).unwrap();
        assert!(r.ip.is_some());
        assert!(!s.pool_mut().unwrap().take_dirty(), "offers alone are not persisted");
    }

    #[test]
    fn release_frees_the_address_but_remembers_the_machine() {
        let mut s = full(100, 100);
        let a = lease_dance(&mut s, MAC, 0);
        let mut rel = request(MessageType::Release, MAC, 3);
        rel.set_ciaddr(a);
        assert_eq!(s.decide(&rel, Via::Dhcp, 10), Outcome::Released { mac: MAC, ip: a });
        assert_eq!(s.decide(&rel, Via::Dhcp, 10), Outcome::Released { mac: MAC, ip: a });
        let mut stranger = rel.clone();
        stranger.set_chaddr(&[9; 6]);
        assert_eq!(s.decide(&stranger, Via::Dhcp, 10), Outcome::Ignored(Ignore::NotHeld));
        // Free for others now.
        assert_eq!(lease_dance(&mut s, Mac::new([2; 6]), 11), a);
    }

    #[test]
    fn declined_address_leaves_the_pool_for_a_while() {
        let mut s = full(100, 101);
        let a = lease_dance(&mut s, MAC, 0);
        let mut dec = request(MessageType::Decline, MAC, 3);
        dec.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
        assert_eq!(s.decide(&dec, Via::Dhcp, 10), Outcome::Declined { mac: MAC, ip: a });
        assert_eq!(s.handle(&discover(MAC), Via::Dhcp, 11).unwrap().ip, Some(ip(101)));
        assert_ne!(s.handle(&discover(Mac::new([2; 6])), Via::Dhcp, 11).map(|r| r.ip), Some(Some(a)));
        // After the hold, it is back in the pool.
        let later = 11 + DECLINE_HOLD_SECS + OFFER_HOLD_SECS;
        let got: BTreeSet<_> = [3, 4]
            .map(|i| s.handle(&discover(Mac::new([i; 6])), Via::Dhcp, later).unwrap().ip.unwrap())
            .into();
        assert_eq!(got, BTreeSet::from([ip(100), ip(101)]));
    }

    #[test]
    fn reservations_win_and_are_kept_from_others() {
        let mut cfg = pool_cfg(100, 101);
        cfg.reservations = vec![(MAC, ip(50)), (Mac::new([7; 6]), ip(100))];
        let mut s = Server::full(SERVER, cfg, boot()).unwrap();
        assert_eq!(lease_dance(&mut s, MAC, 0), ip(50), "reserved address outside the range");
        assert_eq!(lease_dance(&mut s, Mac::new([2; 6]), 0), ip(101), "reserved 100 skipped");
        assert!(s.handle(&discover(Mac::new([3; 6])), Via::Dhcp, 0).is_none());
        let r = s.handle(&select(MAC, ip(101)), Via::Dhcp, 0).unwrap();
        assert_eq!(r.nak_reason, Some(NakReason::Reserved(ip(50))));
        let r = s.handle(&select(Mac::new([3; 6]), ip(100)), Via::Dhcp, 0).unwrap();
        assert_eq!(r.nak_reason, Some(NakReason::InUse));
    }

    #[test]
    fn pool_config_is_validated() {
        assert!(PoolConfig::new(ip(10), ip(5)).validate().unwrap_err().contains("swap"));
        assert!(PoolConfig::new(Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(10, 2, 0, 0)).validate().is_err());
        let mut c = pool_cfg(1, 2);
        c.lease_secs = 0;
        assert!(c.validate().is_err());
        c.lease_secs = 60;
        c.reservations = vec![(MAC, ip(3)), (MAC, ip(4))];
        assert!(c.validate().unwrap_err().contains("two DHCP reservations"));
        c.reservations = vec![(MAC, ip(3)), (Mac::new([1; 6]), ip(3))];
        assert!(c.validate().unwrap_err().contains("two MACs"));
    }

    #[test]
    fn destinations_follow_rfc_2131() {
        let mut s = full(100, 110);
        let mut relayed = discover(MAC);
        relayed.set_giaddr(Ipv4Addr::new(10, 9, 9, 1));
        let r = s.handle(&relayed, Via::Dhcp, 0).unwrap();
        assert_eq!(r.to, Destination::Relay(Ipv4Addr::new(10, 9, 9, 1)));
        assert_eq!(r.msg.giaddr(), Ipv4Addr::new(10, 9, 9, 1));
        let mut bcast = discover(MAC);
        bcast.set_flags(Flags::default().set_broadcast());
        let r = s.handle(&bcast, Via::Dhcp, 0).unwrap();
        assert!(r.msg.flags().broadcast());
        assert_eq!(r.to, Destination::Broadcast);
    }

    #[test]
    fn inform_gets_boot_options_without_an_address() {
        let mut s = full(100, 110);
        let mut m = pxe(request(MessageType::Inform, MAC, 5), 7);
        assert_eq!(s.decide(&m, Via::Dhcp, 0), Outcome::Ignored(Ignore::NoClientAddress));
        m.set_ciaddr(ip(42));
        let r = s.handle(&m, Via::Dhcp, 0).unwrap();
        assert_eq!((r.kind, r.ip, r.to), (ReplyKind::Ack, None, Destination::Unicast(ip(42))));
        assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(!r.msg.opts().contains(OptionCode::AddressLeaseTime));
        assert_eq!(r.bootfile.as_deref(), Some("ipxe.efi"));
    }

    #[test]
    fn garbage_kinds_are_ignored_with_a_reason() {
        let mut s = full(100, 110);
        let mut reply = discover(MAC);
        reply.set_opcode(Opcode::BootReply);
        assert_eq!(s.decide(&reply, Via::Dhcp, 0), Outcome::Ignored(Ignore::NotARequest));
        let mut token_ring = discover(MAC);
        token_ring.set_chaddr(&[1, 2, 3, 4]);
        assert_eq!(s.decide(&token_ring, Via::Dhcp, 0), Outcome::Ignored(Ignore::NotEthernet));
        let mut bootp = discover(MAC);
        bootp.opts_mut().clear();
        assert_eq!(s.decide(&bootp, Via::Dhcp, 0), Outcome::Ignored(Ignore::NoMessageType));
        let ack = request(MessageType::Ack, MAC, 1);
        assert_eq!(s.decide(&ack, Via::Dhcp, 0), Outcome::Ignored(Ignore::Unsupported(5)));
        let bare = request(MessageType::Request, MAC, 1);
        assert_eq!(s.decide(&bare, Via::Dhcp, 0), Outcome::Ignored(Ignore::NoAddressRequested));
        assert!(!Ignore::PoolExhausted.to_string().is_empty());
    }

    #[test]
    fn proxy_offers_boot_options_and_no_address() {
        let mut s = Server::proxy(SERVER, boot());
        let uuid = vec![0u8; 17];
        let mut m = pxe(discover(MAC), 0);
        m.opts_mut().insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
        let r = s.handle(&m, Via::Dhcp, 0).unwrap();
        assert_eq!((r.kind, r.ip, r.to), (ReplyKind::Offer, None, Destination::Broadcast));
        assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(opt(&r.msg, 60), Some(&b"PXEClient"[..]));
        assert_eq!(opt_ip(&r.msg, OptionCode::ServerIdentifier), Some(SERVER));
        assert_eq!(opt(&r.msg, 43), Some(&PXE_VENDOR_OPTIONS[..]));
        assert_eq!(opt(&r.msg, 67), Some(&b"undionly.kpxe"[..]));
        assert_eq!(opt(&r.msg, 97), Some(&uuid[..]));
        for code in [51, 1, 58, 59] {
            assert!(!r.msg.opts().contains(OptionCode::from(code)), "proxy sent option {code}");
        }
        assert!(s.pool().is_none());
    }

    #[test]
    fn proxy_ignores_plain_clients_and_address_requests() {
        let mut s = Server::proxy(SERVER, boot());
        assert_eq!(s.decide(&discover(MAC), Via::Dhcp, 0), Outcome::Ignored(Ignore::NotABootClient));
        let r = pxe(select(MAC, ip(5)), 0);
        assert_eq!(s.decide(&r, Via::Dhcp, 0), Outcome::Ignored(Ignore::ProxyLeavesToDhcpServer));
        let unknown = pxe(discover(MAC), 30);
        assert_eq!(
            s.decide(&unknown, Via::Dhcp, 0),
            Outcome::Ignored(Ignore::NoBootfile(ClientKind::Pxe { arch: 30 }))
        );
    }

    #[test]
    fn port_4011_request_gets_an_ack_with_the_bootfile() {
        for mut s in [Server::proxy(SERVER, boot()), full(100, 110)] {
            let mut m = pxe(request(MessageType::Request, MAC, 11), 7);
            m.set_ciaddr(Ipv4Addr::new(192, 0, 2, 77));
            let r = s.handle(&m, Via::PxeBoot, 0).unwrap();
            assert_eq!((r.kind, r.ip, r.to), (ReplyKind::Ack, None, Destination::Sender));
            assert_eq!(r.msg.ciaddr(), Ipv4Addr::new(192, 0, 2, 77));
            assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
            assert_eq!(opt(&r.msg, 67), Some(&b"ipxe.efi"[..]));
            assert_eq!(r.msg.xid(), 11);
            let plain = request(MessageType::Request, MAC, 1);
            assert_eq!(s.decide(&plain, Via::PxeBoot, 0), Outcome::Ignored(Ignore::NotABootClient));
            let disc = pxe(discover(MAC), 0);
            assert_eq!(s.decide(&disc, Via::PxeBoot, 0), Outcome::Ignored(Ignore::Unsupported(1)));
        }
    }

    #[test]
    fn lease_table_round_trips_and_a_restart_keeps_addresses() {
        let mut s = full(100, 110);
        let a = lease_dance(&mut s, MAC, 1_700_000_000);
        let b = lease_dance(&mut s, Mac::new([2; 6]), 1_700_000_000);
        let mut dec = request(MessageType::Decline, Mac::new([2; 6]), 3);
        dec.opts_mut().insert(DhcpOption::RequestedIpAddress(b));
        s.decide(&dec, Via::Dhcp, 1_700_000_001);
        s.handle(&discover(Mac::new([3; 6])), Via::Dhcp, 1_700_000_001).unwrap();
        let text = s.pool().unwrap().to_text();
        assert!(text.starts_with("# monarch DHCP leases"));
        assert!(text.contains(&format!("bound 52:54:00:12:34:56 {a} 1700003600\n")));
        assert!(text.contains(&format!("declined - {b} ")));
        assert!(text.contains("offered 03:03:03:03:03:03 "));

        let mut again = full(100, 110);
        let rep = again.pool_mut().unwrap().load_text(&text).unwrap();
        assert_eq!(rep, LoadReport { loaded: 3, dropped: 0 });
        assert_eq!(again.pool().unwrap().to_text(), text);
        assert_eq!(again.handle(&discover(MAC), Via::Dhcp, 1_700_000_100).unwrap().ip, Some(a));
        // A shrunken pool drops rows that no longer fit, and says how many.
        let mut small = full(101, 110);
        let rep = small.pool_mut().unwrap().load_text(&text).unwrap();
        assert_eq!(rep.dropped, 1);
    }

    #[test]
    fn lease_file_errors_name_the_line() {
        let mut p = Pool::new(pool_cfg(100, 110)).unwrap();
        let cases = [
            ("bound 52:54:00:12:34:56 10.0.0.100\n", 1, "3 fields"),
            ("# c\n\nbound zz 10.0.0.100 5\n", 3, "MAC"),
            ("bound 52:54:00:12:34:56 10.0.0.300 5\n", 1, "IPv4"),
            ("bound 52:54:00:12:34:56 10.0.0.100 -5\n", 1, "seconds"),
            ("leased 52:54:00:12:34:56 10.0.0.100 5\n", 1, "unknown state"),
            ("declined 52:54:00:12:34:56 10.0.0.100 5\n", 1, "unknown state"),
        ];
        for (text, line, word) in cases {
            let e = p.load_text(text).unwrap_err();
            assert_eq!(e.line, line, "{text}");
            assert!(e.to_string().contains(word), "{e} lacks {word}");
        }
        // Duplicates: the first row wins.
        let dup = "bound 01:01:01:01:01:01 10.0.0.100 5\nbound 02:02:02:02:02:02 10.0.0.100 5\nbound 01:01:01:01:01:01 10.0.0.101 5\n";
        assert_eq!(p.load_text(dup).unwrap(), LoadReport { loaded: 1, dropped: 2 });
    }

    fn raw_discover() -> Vec<u8> {
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

    #[test]
    fn decoded_replies_read_back() {
        let mut s = full(100, 110);
        let r = s.handle(&decode(&raw_discover()).unwrap(), Via::Dhcp, 0).unwrap();
        let back = decode(&r.encode().unwrap()).unwrap();
        assert_eq!(back.opcode(), Opcode::BootReply);
        assert_eq!(back.yiaddr(), ip(100));
        assert_eq!(opt(&back, 67), Some(&b"undionly.kpxe"[..]));
    }

    fn servers() -> [Server; 2] {
        let mut cfg = pool_cfg(100, 103);
        cfg.reservations = vec![(Mac::new([1; 6]), ip(103))];
        [Server::full(SERVER, cfg, boot()).unwrap(), Server::proxy(SERVER, boot())]
    }

    fn hammer(bytes: &[u8]) {
        if let Ok(msg) = decode(bytes) {
            for mut s in servers() {
                for via in [Via::Dhcp, Via::PxeBoot] {
                    if let Some(r) = s.handle(&msg, via, 1000) {
                        let _ = r.encode();
                    }
                }
            }
        }
    }

    fn arb_mac() -> impl Strategy<Value = Mac> {
        (0u8..6).prop_map(|i| Mac::new([2, 0, 0, 0, 0, i]))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Discover(Mac),
        Select(Mac, u8),
        Reboot(Mac, u8),
        Release(Mac),
        Decline(Mac),
        Wait(u64),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            arb_mac().prop_map(Op::Discover),
            (arb_mac(), 98u8..106).prop_map(|(m, i)| Op::Select(m, i)),
            (arb_mac(), 98u8..106).prop_map(|(m, i)| Op::Reboot(m, i)),
            arb_mac().prop_map(Op::Release),
            arb_mac().prop_map(Op::Decline),
            (0u64..5000).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Any bytes: decode, then every server in every mode, on every port: no panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            hammer(&bytes);
        }

        /// A valid header followed by arbitrary option bytes (the decoder's hard part).
        #[test]
        fn arbitrary_options_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..1200), op in 0u8..3, hlen in 0u8..20) {
            let mut b = raw_discover()[..240].to_vec();
            b[0] = op;
            b[2] = hlen;
            b.extend(&tail);
            hammer(&b);
        }

        /// Known options with arbitrary lengths and contents.
        #[test]
        fn arbitrary_known_options_never_panic(opts in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..30)) {
            let mut b = raw_discover()[..240].to_vec();
            b.extend([53, 1, 1]);
            for (code, body) in opts {
                b.push(code);
                b.push(u8::try_from(body.len()).unwrap());
                b.extend(body);
            }
            b.push(255);
            hammer(&b);
        }

        /// DISCOVER then REQUEST of the offer always ends in an ACK for an address in the pool.
        #[test]
        fn discover_request_yields_an_address_in_the_pool(mac in any::<[u8; 6]>(), first in 2u8..200, size in 1u8..50, asked in any::<Option<u8>>(), arch in prop_oneof![Just(None), Just(Some(0u16)), Just(Some(7u16))], now in any::<u32>()) {
            let last = first.saturating_add(size - 1);
            let mut s = full(first, last);
            let mac = Mac::new(mac);
            let mut d = discover(mac);
            if let Some(a) = asked {
                d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip(a)));
            }
            if let Some(a) = arch {
                d = pxe(d, a);
            }
            let now = u64::from(now);
            let offer = s.handle(&decode(&d.to_vec().unwrap()).unwrap(), Via::Dhcp, now).unwrap();
            let got = offer.ip.unwrap();
            prop_assert!((ip(first)..=ip(last)).contains(&got) && got != SERVER);
            let ack = s.handle(&select(mac, got), Via::Dhcp, now).unwrap();
            prop_assert_eq!(ack.kind, ReplyKind::Ack);
            prop_assert_eq!(ack.ip, Some(got));
            prop_assert_eq!(ack.msg.yiaddr(), got);
        }

        /// Whatever clients do and whenever, no two MACs ever hold unexpired ACKs for the same
        /// address, and every ACKed address is in the pool or the MAC's reservation.
        #[test]
        fn two_macs_never_hold_the_same_address(ops in proptest::collection::vec(arb_op(), 0..80), reload in any::<bool>()) {
            let mut cfg = pool_cfg(100, 103);
            cfg.lease_secs = 3000;
            cfg.reservations = vec![(Mac::new([2, 0, 0, 0, 0, 1]), ip(50)), (Mac::new([2, 0, 0, 0, 0, 2]), ip(101))];
            let mut s = Server::full(SERVER, cfg.clone(), boot()).unwrap();
            let mut granted: BTreeMap<Ipv4Addr, (Mac, u64)> = BTreeMap::new();
            let mut now = 1000u64;
            for (i, op) in ops.into_iter().enumerate() {
                let held = |granted: &BTreeMap<Ipv4Addr, (Mac, u64)>, mac: Mac| {
                    granted.iter().find(|(_, (m, e))| *m == mac && *e > now).map(|(ip, _)| *ip)
                };
                let reply = match op {
                    Op::Discover(m) => s.handle(&discover(m), Via::Dhcp, now),
                    Op::Select(m, i) => s.handle(&select(m, ip(i)), Via::Dhcp, now),
                    Op::Reboot(m, i) => {
                        let mut r = request(MessageType::Request, m, 1);
                        r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip(i)));
                        s.handle(&r, Via::Dhcp, now)
                    }
                    Op::Release(m) => {
                        if let Some(a) = held(&granted, m) {
                            let mut r = request(MessageType::Release, m, 1);
                            r.set_ciaddr(a);
                            s.handle(&r, Via::Dhcp, now);
                            granted.remove(&a);
                        }
                        None
                    }
                    Op::Decline(m) => {
                        if let Some(a) = held(&granted, m) {
                            let mut r = request(MessageType::Decline, m, 1);
                            r.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
                            s.handle(&r, Via::Dhcp, now);
                            granted.remove(&a);
                        }
                        None
                    }
                    Op::Wait(dt) => {
                        now += dt;
                        None
                    }
                };
                if let Some(r) = reply.filter(|r| r.kind == ReplyKind::Ack) {
                    let a = r.ip.unwrap();
                    let reserved = cfg.reservations.iter().any(|(m, rip)| *m == r.mac && *rip == a);
                    prop_assert!((ip(100)..=ip(103)).contains(&a) || reserved, "{a} outside the pool");
                    if let Some((m, e)) = granted.get(&a) {
                        prop_assert!(*m == r.mac || *e <= now, "{a} ACKed to {} while {m} holds it until {e} (now {now})", r.mac);
                    }
                    // One address per MAC: a new ACK replaces its other grants.
                    granted.retain(|_, (m, _)| *m != r.mac);
                    granted.insert(a, (r.mac, now + u64::from(cfg.lease_secs)));
                }
                if reload && i % 7 == 6 {
                    // A restart from the persisted table changes nothing.
                    let text = s.pool().unwrap().to_text();
                    let mut fresh = Server::full(SERVER, cfg.clone(), boot()).unwrap();
                    fresh.pool_mut().unwrap().load_text(&text).unwrap();
                    s = fresh;
                }
            }
        }
    }
}
