//! The DHCP service on loopback, against hostile or unusual clients: a DISCOVER flood, options
//! of the wrong length, ARM64 UEFI firmware. The test plays a relay agent (RFC 1542) on
//! 127.0.0.2, so every reply is unicast back to it: nothing is broadcast and no traffic leaves
//! loopback; no root, namespace or interface is needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};
use monarch_net::dhcp::{DhcpConfig, DhcpEvent, DhcpMode, DhcpPorts, DhcpServer};
use monarch_proto::dhcp::pool::PoolConfig;
use monarch_proto::dhcp::wire::request;
use monarch_proto::mac::Mac;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn pool_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, last)
}

struct Setup {
    relay: UdpSocket,
    server: SocketAddr,
    events: Arc<Mutex<Vec<DhcpEvent>>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A full server on a free port of 0.0.0.0 with the pool 10.77.0.100-107 and `lease_secs`,
/// and the test's relay socket on 127.0.0.2 at the same port (where replies to a relay go).
async fn start(lease_secs: u32) -> Setup {
    let port = UdpSocket::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut pool = PoolConfig::new(pool_ip(100), pool_ip(107));
    pool.lease_secs = lease_secs;
    let mode = DhcpMode::Full { pool, lease_file: dir.path().join("leases") };
    let mut cfg = DhcpConfig::new(None, SERVER, mode);
    cfg.ports = DhcpPorts { server: port, client: port + 1, pxe: 0 };
    let server = DhcpServer::bind(cfg).await.expect("bind the DHCP server");
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let task = tokio::spawn(async move {
        let _ = server.run(Arc::new(move |e| sink.lock().unwrap().push(e))).await;
    });
    let relay = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    relay.set_reuse_address(true).unwrap();
    relay.bind(&SocketAddr::from((RELAY, port)).into()).unwrap();
    let relay: UdpSocket = relay.into();
    relay.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    Setup { relay, server: SocketAddr::from((SERVER, port)), events, task, _dir: dir }
}

fn relayed(mtype: MessageType, mac: Mac, xid: u32) -> Message {
    let mut m = request(mtype, mac, xid);
    m.set_giaddr(RELAY);
    m
}

impl Setup {
    fn send(&self, bytes: &[u8]) {
        self.relay.send_to(bytes, self.server).unwrap();
    }

    /// The reply with this `xid`, if one comes within a second.
    fn reply(&self, xid: u32) -> Option<Message> {
        let until = Instant::now() + Duration::from_secs(1);
        let mut buf = [0u8; 1500];
        while Instant::now() < until {
            if let Ok(n) = self.relay.recv(&mut buf) {
                let m = Message::from_bytes(&buf[..n]).unwrap();
                if m.xid() == xid {
                    return Some(m);
                }
            }
        }
        None
    }

    fn ask(&self, msg: &Message) -> Option<Message> {
        self.send(&msg.to_vec().unwrap());
        self.reply(msg.xid())
    }

    fn lease(&self, mac: Mac, xid: u32) -> Ipv4Addr {
        let offer = self.ask(&relayed(MessageType::Discover, mac, xid)).expect("an offer");
        let mut req = relayed(MessageType::Request, mac, xid + 1);
        req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        let ack = self.ask(&req).expect("an ACK");
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        ack.yiaddr()
    }

    fn events(&self) -> Vec<DhcpEvent> {
        self.events.lock().unwrap().clone()
    }
}

fn bootfile(m: &Message) -> Option<String> {
    match m.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discover_flood_leaves_a_returning_machine_its_address() {
    let s = start(1).await;
    let returning = Mac::new([0x52, 0x54, 0, 0, 0, 1]);
    let first = tokio::task::block_in_place(|| s.lease(returning, 1));
    // Its one-second lease expires; the table still remembers it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut offers = 0;
    tokio::task::block_in_place(|| {
        for i in 0..100u32 {
            let b = i.to_be_bytes();
            let xid = 1000 + i;
            s.send(
                &relayed(MessageType::Discover, Mac::new([2, 0xee, b[0], b[1], b[2], b[3]]), xid)
                    .to_vec()
                    .unwrap(),
            );
        }
        let mut buf = [0u8; 1500];
        while let Ok(n) = s.relay.recv(&mut buf) {
            offers += usize::from(
                Message::from_bytes(&buf[..n]).unwrap().opts().msg_type() == Some(MessageType::Offer),
            );
        }
    });
    // Eight addresses, a quarter kept from unknown machines: the flood gets six.
    assert_eq!(offers, 6, "offers to the flood");
    let share_full = s
        .events()
        .iter()
        .filter(
            |e| matches!(e, DhcpEvent::Ignored { reason, .. } if reason.contains("offers to new machines")),
        )
        .count();
    assert_eq!(share_full, 94, "{:#?}", s.events());
    let again = tokio::task::block_in_place(|| s.lease(returning, 5000));
    assert_eq!(again, first, "the returning machine got another address after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_of_the_wrong_length_are_reported_and_the_rest_is_read() {
    let s = start(3600).await;
    let mac = Mac::new([0x52, 0x54, 0, 0, 0, 2]);
    // Option 93 of one byte, then the vendor class that also says the architecture (11).
    let mut raw = relayed(MessageType::Discover, mac, 77).to_vec().unwrap()[..240].to_vec();
    raw.extend([53, 1, 1, 93, 1, 11]);
    let class = b"PXEClient:Arch:00011:UNDI:003016";
    raw.extend([60, u8::try_from(class.len()).unwrap()]);
    raw.extend(class);
    raw.push(255);
    let offer = tokio::task::block_in_place(|| {
        s.send(&raw);
        s.reply(77)
    })
    .expect("an offer");
    assert_eq!(bootfile(&offer).as_deref(), Some("ipxe-arm64.efi"), "{offer:?}");
    let ev = s.events();
    let bad = ev.iter().find_map(|e| match e {
        DhcpEvent::BadOption { option: 93, reason, .. } => Some(reason.clone()),
        _ => None,
    });
    let reason = bad.unwrap_or_else(|| panic!("no bad_option event: {ev:#?}"));
    assert!(
        reason.contains("option 93 (client architecture) has 1 byte") && reason.contains("RFC 4578"),
        "{reason}"
    );

    // A message type of two bytes: no reply, and the event says why.
    let mut raw = relayed(MessageType::Discover, mac, 78).to_vec().unwrap()[..240].to_vec();
    raw.extend([53, 2, 1, 1, 255]);
    let got = tokio::task::block_in_place(|| {
        s.send(&raw);
        s.reply(78)
    });
    assert!(got.is_none());
    assert!(
        s.events().iter().any(
            |e| matches!(e, DhcpEvent::Ignored { reason, .. } if reason.contains("option 53 has length 2"))
        ),
        "{:#?}",
        s.events()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm64_uefi_firmware_gets_an_arm64_boot_file() {
    let s = start(3600).await;
    for (arch, want) in [(11u8, "ipxe-arm64.efi"), (10, "ipxe-arm32.efi"), (7, "ipxe.efi")] {
        let mut m = relayed(MessageType::Discover, Mac::new([0x52, 0x54, 0, 0, 1, arch]), u32::from(arch));
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            format!("PXEClient:Arch:{arch:05}:UNDI:003016").into_bytes(),
        ));
        m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture(u16::from(arch))));
        let offer = tokio::task::block_in_place(|| s.ask(&m)).expect("an offer");
        assert_eq!(bootfile(&offer).as_deref(), Some(want), "arch {arch}");
    }
}
