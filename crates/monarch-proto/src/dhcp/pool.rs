//! The address pool of a full DHCP server and its lease table: which address a machine is
//! offered and bound to, reservations, RELEASE and DECLINE, and the table's text form that
//! the I/O layer persists ([`Pool::to_text`] / [`Pool::load_text`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use crate::mac::{Mac, MacParseError};

/// How long an OFFERed address stays set aside for its client before anyone may have it.
pub const OFFER_HOLD_SECS: u64 = 60;
/// How long an address a client DECLINEd (someone else answers ARP for it) stays out of the
/// pool: long enough for the operator to notice, short enough that a transient conflict does
/// not shrink the pool for good.
pub const DECLINE_HOLD_SECS: u64 = 600;
/// The pool's size divided by this (rounded down) is kept from offers to machines the table
/// does not know (no binding, live or expired, and no reservation): those hold at most the
/// rest at once ([`Pool::offer_share`]). A DISCOVER flood from made-up MACs gets offers up to
/// that share and then none ([`NoOffer::ShareFull`]); known machines still get their own
/// address, and since never-used and expired-offer addresses are handed out before a
/// remembered binding, a flood takes a machine's remembered address only when bindings
/// fill more than the kept part of the pool.
pub const OFFER_RESERVE_DIVISOR: u32 = 4;
/// Largest pool accepted: allocation scans the range, so it must stay small enough to scan
/// per DISCOVER (a /16).
pub const MAX_POOL_SIZE: u32 = 65_536;

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

/// Why a DISCOVER gets no offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoOffer {
    /// No address is free.
    Exhausted,
    /// The client is unknown to the table and unknown clients already hold their share of
    /// offers ([`Pool::offer_share`]).
    ShareFull {
        /// The share.
        share: u32,
    },
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
    /// for [`OFFER_HOLD_SECS`]. Refused when the pool is exhausted, or when the MAC is
    /// unknown and unknown MACs hold their share of offers already ([`Pool::offer_share`]).
    pub fn offer(&mut self, mac: Mac, requested: Option<Ipv4Addr>, now: u64) -> Result<Ipv4Addr, NoOffer> {
        let row = self.lease_of(mac);
        let known = self.reserved_mac.contains_key(&mac)
            || row.is_some_and(|l| matches!(l.holder, Holder::Bound(_)))
            || row.is_some_and(|l| l.holder == Holder::Offered(mac) && l.expires > now);
        let ip = self.pick(mac, requested, now).ok_or(NoOffer::Exhausted)?;
        if !known {
            let share = self.offer_share();
            if self.strangers_offered(now) >= share {
                return Err(NoOffer::ShareFull { share });
            }
        }
        // A MAC with an unexpired binding keeps it until it is ACKed another address: an
        // OFFER does not make the client stop using the address it has, so that row must not
        // be dropped (the one-row-per-MAC table would free it for someone else). Only its
        // reservation can be picked over its binding, and a reservation needs no hold.
        let bound_here = self.lease_of(mac).filter(|l| l.holder == Holder::Bound(mac) && l.expires > now);
        if bound_here.is_none() {
            self.assign(ip, Holder::Offered(mac), now.saturating_add(OFFER_HOLD_SECS));
        }
        Ok(ip)
    }

    /// How many unexpired offers MACs without a binding or reservation may hold at once:
    /// the pool less its [`OFFER_RESERVE_DIVISOR`]th part (at least one).
    pub fn offer_share(&self) -> u32 {
        let size = u32::from(self.cfg.end) - u32::from(self.cfg.start) + 1;
        (size - size / OFFER_RESERVE_DIVISOR).max(1)
    }

    /// Unexpired offers held by MACs without a binding or reservation (an offered row is a
    /// MAC's only row, so its MAC has no binding).
    fn strangers_offered(&self, now: u64) -> u32 {
        let n = self
            .slots
            .values()
            .filter(|s| s.expires > now)
            .filter(|s| matches!(s.holder, Holder::Offered(m) if !self.reserved_mac.contains_key(&m)))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
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
        // Then an expired row: offers and declines before bindings (a binding remembers its
        // machine, which gets the address back when it returns), each the longest-expired
        // first.
        fresh.or_else(|| {
            self.slots
                .iter()
                .filter(|(ip, s)| s.expires <= now && self.usable(**ip, mac, now))
                .min_by_key(|(_, s)| (matches!(s.holder, Holder::Bound(_)), s.expires))
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
                // A declined address stays out for its hold even when it is reserved: the
                // conflict is on the wire, whoever the reservation is for.
                None => {
                    (self.in_range(row.ip) || self.reserved_ip.contains_key(&row.ip))
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

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac::new([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn pool_cfg(first: u8, last: u8) -> PoolConfig {
        PoolConfig::new(ip(first), ip(last))
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

    #[test]
    fn a_discover_flood_leaves_known_machines_their_addresses() {
        let mut p = Pool::new(pool_cfg(100, 107)).unwrap();
        assert_eq!(p.offer_share(), 6);
        // A machine whose lease has expired, one that is bound, one with an offer out.
        let (gone, bound, offered) = (Mac::new([1; 6]), Mac::new([2; 6]), Mac::new([3; 6]));
        p.request(gone, ip(100), 0).unwrap();
        let now = 2 * 3600;
        p.request(bound, ip(101), now).unwrap();
        let o = p.offer(offered, None, now).unwrap();
        // The flood: a thousand made-up MACs.
        let mut refused = 0;
        for i in 0..1000u32 {
            let b = i.to_be_bytes();
            match p.offer(Mac::new([0x02, 0xff, b[0], b[1], b[2], b[3]]), None, now + u64::from(i % 3)) {
                Ok(a) => assert!(![ip(100), ip(101), o].contains(&a), "flood got {a}"),
                Err(NoOffer::ShareFull { share: 6 }) => refused += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(refused, 1000 - 5, "five free addresses for the flood, then its share is full");
        assert_eq!(p.request(offered, o, now + 5).map(|l| l.ip), Ok(o));
        assert_eq!(p.offer(bound, None, now + 5), Ok(ip(101)));
        assert_eq!(p.offer(gone, None, now + 5), Ok(ip(100)), "the returning machine's address");
        assert_eq!(p.request(gone, ip(100), now + 5).map(|l| l.ip), Ok(ip(100)));
        assert_eq!(p.offer(Mac::new([4; 6]), None, now + 5), Err(NoOffer::Exhausted));
    }

    #[test]
    fn a_declined_reservation_stays_out_across_a_restart() {
        let mut cfg = pool_cfg(100, 110);
        cfg.reservations = vec![(MAC, ip(50))];
        let mut p = Pool::new(cfg.clone()).unwrap();
        assert_eq!(p.offer(MAC, None, 1000), Ok(ip(50)));
        p.request(MAC, ip(50), 1000).unwrap();
        assert!(p.decline(MAC, ip(50), 1001));
        let text = p.to_text();
        assert!(text.contains("declined - 10.0.0.50 "), "{text}");
        let mut again = Pool::new(cfg).unwrap();
        assert_eq!(again.load_text(&text).unwrap(), LoadReport { loaded: 1, dropped: 0 });
        assert_ne!(again.offer(MAC, None, 1002), Ok(ip(50)), "declined address offered again");
        assert_eq!(again.request(MAC, ip(50), 1002), Err(NakReason::InUse));
    }

    #[test]
    fn an_offer_never_frees_an_address_its_client_still_holds() {
        // The MAC's reservation was declined, so it was bound to a pool address; once the
        // decline expires it is offered its reservation again, and keeps its binding until
        // it is ACKed the reservation.
        let mut cfg = pool_cfg(100, 101);
        cfg.reservations = vec![(MAC, ip(50))];
        let mut p = Pool::new(cfg).unwrap();
        p.request(MAC, ip(50), 0).unwrap();
        assert!(p.decline(MAC, ip(50), 0));
        let lease = p.request(MAC, ip(100), 1).unwrap();
        let later = 1 + DECLINE_HOLD_SECS;
        assert!(lease.expires > later);
        assert_eq!(p.offer(MAC, None, later), Ok(ip(50)));
        let other = Mac::new([9; 6]);
        assert_eq!(p.request(other, ip(100), later), Err(NakReason::InUse), "still held by {MAC}");
        assert_eq!(p.offer(other, None, later), Ok(ip(101)));
        // Once the MAC takes its reservation, its old address is free.
        p.request(MAC, ip(50), later).unwrap();
        assert!(p.request(other, ip(100), later).is_ok());
    }
}
