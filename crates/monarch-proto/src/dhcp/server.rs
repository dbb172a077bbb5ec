//! The DHCP / ProxyDHCP server's decisions: [`Server::decide`] takes a decoded request and
//! says what to send where (or why nothing), using the pool for addresses and the boot
//! configuration for boot files.

use std::fmt;
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};

use crate::dhcp::boot::{Boot, BootConfig, ClientKind};
use crate::dhcp::pool::{NakReason, NoOffer, Pool, PoolConfig};
use crate::dhcp::wire::{PXE_VENDOR_OPTIONS, client_mac, encode, opt_ip};
use crate::mac::Mac;

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
    /// An unknown MAC, while unknown MACs hold their share of offers already (a DISCOVER
    /// flood, or a crowd of new machines: they retry).
    OfferShareFull {
        /// The share.
        share: u32,
    },
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
            Ignore::OfferShareFull { share } => write!(
                f,
                "{share} offers to new machines are outstanding already, the most at once (a quarter of the pool is kept for known machines): \
                 a DISCOVER flood, or more new machines at once than that (they retry); enlarge the pool if it recurs"
            ),
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
                let ip =
                    pool.offer(mac, opt_ip(msg, OptionCode::RequestedIpAddress), now).map_err(
                        |e| match e {
                            NoOffer::Exhausted => Ignore::PoolExhausted,
                            NoOffer::ShareFull { share } => Ignore::OfferShareFull { share },
                        },
                    )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::boot::{Bootfiles, arch};
    use crate::dhcp::pool::{DECLINE_HOLD_SECS, Holder, LoadReport, OFFER_HOLD_SECS};
    use crate::dhcp::wire::tests::{MAC, discover, pxe, raw_discover};
    use crate::dhcp::wire::{MIN_REPLY_LEN, decode, ipxe_encap_option, opt_bytes, request};
    use dhcproto::Encodable;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

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
    fn unknown_architecture_gets_a_plain_lease() {
        let mut s = full(100, 110);
        // 12: PowerPC Open Firmware, for which nothing is configured.
        let r = s.handle(&pxe(discover(MAC), 12), Via::Dhcp, 0).unwrap();
        assert_eq!(r.bootfile, None);
        assert!(!r.msg.opts().contains(OptionCode::BootfileName));
        assert!(r.ip.is_some());
    }

    #[test]
    fn arm64_uefi_firmware_gets_its_boot_file() {
        let mut s = full(100, 110);
        let r = s.handle(&pxe(discover(MAC), 11), Via::Dhcp, 0).unwrap();
        assert_eq!(r.bootfile.as_deref(), Some("ipxe-arm64.efi"));
        assert_eq!(opt(&r.msg, 67), Some(&b"ipxe-arm64.efi"[..]));
        assert_eq!(r.client.label(), "pxe-efi-arm64");
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
