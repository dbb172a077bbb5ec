//! DHCP and ProxyDHCP against clients nobody here wrote: busybox `udhcpc` (the client) and
//! busybox `udhcpd` (the "existing" DHCP server beside our proxy), in network namespaces
//! this test makes and removes ([`VethNs`]). Where a test needs to look at raw replies
//! (proxy offers, port 4011, malformed packets) a small client built on dhcproto sends from
//! *inside* the far namespace: a thread moves itself there, opens its socket, and hands the
//! socket back (a socket stays in the namespace it was made in).
//!
//! Subnets are 10.67.N.0/24, one per test: this machine's own uplink is 192.0.2.0/24, so a
//! veth there would steal its routes. Port-67 tests run one at a time ([`PORT67`]).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};
use monarch_drivers::host::{VethNs, ensure_packages, run};
use monarch_net::EventSink;
use monarch_net::dhcp::{DhcpConfig, DhcpEvent, DhcpMode, DhcpServer};
use monarch_proto::dhcp::pool::PoolConfig;
use monarch_proto::dhcp::wire::PXE_VENDOR_OPTIONS;
use monarch_proto::mac::Mac;
use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Serialises the tests that listen on port 67.
static PORT67: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous upper bound for anything to happen (a loaded 2-core machine).
const PATIENCE: Duration = Duration::from_secs(30);

fn tools() {
    ensure_packages(&[("busybox", "busybox")], &mut |m| eprintln!("{m}")).unwrap();
}

fn net(n: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 67, n, host)
}

/// A veth pair for test `n`: near end 10.67.n.1 here, far end in its namespace. With
/// `keep_far_address` false the far address is flushed, so the far end starts like a
/// machine that has just powered on.
fn veth(tag: &str, n: u8, keep_far_address: bool) -> VethNs {
    let v = VethNs::new(tag, &net(n, 1).to_string(), &net(n, 2).to_string(), 1500, false).unwrap();
    if !keep_far_address {
        run(
            Command::new("ip").args(["netns", "exec", &v.ns, "ip", "addr", "flush", "dev", &v.far_if]),
            "flush",
        )
        .unwrap();
    }
    v
}

fn far_mac(v: &VethNs) -> Mac {
    let out = run(
        Command::new("ip").args([
            "netns",
            "exec",
            &v.ns,
            "cat",
            &format!("/sys/class/net/{}/address", v.far_if),
        ]),
        "read far MAC",
    )
    .unwrap();
    out.trim().parse().unwrap()
}

/// Events collected from a server.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<DhcpEvent>>>);

impl Events {
    fn sink(&self) -> EventSink<DhcpEvent> {
        let me = self.clone();
        Arc::new(move |e| me.0.lock().unwrap().push(e))
    }
    fn all(&self) -> Vec<DhcpEvent> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, f: impl Fn(&DhcpEvent) -> bool) -> usize {
        self.all().iter().filter(|e| f(e)).count()
    }
    /// Wait (bounded) until `f` holds for `n` events.
    async fn wait_for(&self, n: usize, f: impl Fn(&DhcpEvent) -> bool) {
        let t0 = Instant::now();
        while self.count(&f) < n {
            assert!(t0.elapsed() < PATIENCE, "expected {n} matching events; got {:#?}", self.all());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn full_config(v: &VethNs, n: u8, lease_file: &Path) -> DhcpConfig {
    let pool = PoolConfig::new(net(n, 100), net(n, 120));
    let mut cfg = DhcpConfig::new(
        Some(&v.near_if),
        net(n, 1),
        DhcpMode::Full { pool, lease_file: lease_file.to_path_buf() },
    );
    cfg.http_base = Some(format!("http://{}:8080", net(n, 1)));
    cfg
}

async fn start(cfg: DhcpConfig, events: &Events) -> JoinHandle<()> {
    let server = DhcpServer::bind(cfg).await.unwrap();
    let sink = events.sink();
    let h = tokio::spawn(async move {
        server.run(sink).await.unwrap();
    });
    events.wait_for(1, |e| matches!(e, DhcpEvent::Listening { .. })).await;
    h
}

async fn stop(h: JoinHandle<()>) {
    h.abort();
    let r = h.await;
    assert!(r.as_ref().is_err_and(|e| e.is_cancelled()), "the server ended on its own: {r:?}");
}

/// Run busybox udhcpc in the far namespace with `extra` arguments; the variables its script
/// saw on `bound` (ip, siaddr, boot_file, tftp, bootfile, optNN…).
async fn udhcpc(v: &VethNs, dir: &Path, extra: &[&str]) -> BTreeMap<String, String> {
    let out = dir.join("bound.env");
    let _ = std::fs::remove_file(&out);
    let script = dir.join("udhcpc.sh");
    std::fs::write(&script, format!("#!/bin/sh\n[ \"$1\" = bound ] && env > '{}'\nexit 0\n", out.display()))
        .unwrap();
    run(Command::new("chmod").args(["755", &script.to_string_lossy()]), "chmod").unwrap();
    let mut cmd = v.far("busybox");
    cmd.args(["udhcpc", "-i", &v.far_if, "-f", "-q", "-n", "-t", "5", "-T", "2", "-s"])
        .arg(&script)
        .args(["-O", "66", "-O", "67", "-O", "43", "-O", "60"])
        .args(extra);
    let log = tokio::task::spawn_blocking(move || run(&mut cmd, "busybox udhcpc")).await.unwrap();
    let log = log.unwrap_or_else(|e| panic!("udhcpc got no lease: {e}"));
    let env =
        std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("no bound env ({e}); udhcpc said: {log}"));
    env.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const PXE_BIOS: [&str; 4] = ["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"];
const PXE_EFI: [&str; 4] = ["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007"];

fn in_pool(ip: &str, n: u8) -> Ipv4Addr {
    let ip: Ipv4Addr = ip.parse().unwrap();
    assert!((net(n, 100)..=net(n, 120)).contains(&ip), "{ip} is not from the pool");
    ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udhcpc_gets_a_lease_and_the_pxe_options_for_its_architecture() {
    let _serial = PORT67.lock().await;
    tools();
    let n = 1;
    let v = veth("dhcpa", n, false);
    let mac = far_mac(&v);
    let dir = tempfile::tempdir().unwrap();
    let events = Events::default();
    let server = start(full_config(&v, n, &dir.path().join("leases")), &events).await;
    let server_ip = net(n, 1).to_string();

    // PXE BIOS firmware.
    let bios = udhcpc(&v, dir.path(), &PXE_BIOS).await;
    let ip = in_pool(&bios["ip"], n);
    assert_eq!(bios["siaddr"], server_ip);
    assert_eq!(bios["boot_file"], "undionly.kpxe");
    assert_eq!(bios["bootfile"], "undionly.kpxe", "option 67");
    assert_eq!(bios["tftp"], server_ip, "option 66");
    assert_eq!(bios.get("opt43").map(String::as_str), Some(hex(&PXE_VENDOR_OPTIONS).as_str()), "{bios:?}");
    assert_eq!(bios["vendor"], "PXEClient", "option 60");
    assert_eq!(bios["subnet"], "255.255.255.0");
    assert_eq!(bios["serverid"], server_ip);

    // EFI x64 firmware: same machine, same address, its own boot file.
    let efi = udhcpc(&v, dir.path(), &PXE_EFI).await;
    assert_eq!(efi["ip"].parse::<Ipv4Addr>().unwrap(), ip);
    assert_eq!(efi["bootfile"], "ipxe.efi");
    assert_eq!(efi["boot_file"], "ipxe.efi");

    // iPXE (user class "iPXE"): its per-machine script over HTTP.
    let mut ipxe_args = PXE_EFI.to_vec();
    ipxe_args.extend(["-x", "0x4d:69505845"]);
    let ipxe = udhcpc(&v, dir.path(), &ipxe_args).await;
    let url = format!("http://{server_ip}:8080/ipxe/{}.ipxe", mac.for_url());
    assert_eq!(ipxe["bootfile"], url);
    assert_eq!(ipxe["ip"].parse::<Ipv4Addr>().unwrap(), ip);

    // A plain client (an OS's DHCP client): an address, no boot options.
    let plain = udhcpc(&v, dir.path(), &[]).await;
    assert_eq!(plain["ip"].parse::<Ipv4Addr>().unwrap(), ip);
    for key in ["bootfile", "tftp", "opt43", "vendor", "boot_file", "siaddr"] {
        assert!(!plain.contains_key(key), "plain client got {key}: {plain:?}");
    }

    let clients: Vec<String> = events
        .all()
        .into_iter()
        .filter_map(|e| match e {
            DhcpEvent::Ack { client, .. } => Some(client),
            _ => None,
        })
        .collect();
    assert_eq!(clients, ["pxe-bios", "pxe-efi-x64", "ipxe", "plain"]);
    assert!(events.count(|e| matches!(e, DhcpEvent::LeasesSaved { .. })) >= 1);
    stop(server).await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A DHCP client socket inside `v`'s far namespace: 0.0.0.0:68, bound to the far
/// interface, broadcast on.
fn far_socket(v: &VethNs) -> UdpSocket {
    let (ns, iface) = (v.ns.clone(), v.far_if.clone());
    std::thread::spawn(move || {
        let nsf = File::open(Path::new("/run/netns").join(&ns)).unwrap();
        rustix::thread::move_into_link_name_space(
            nsf.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        let s =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
                .unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_broadcast(true).unwrap();
        s.bind_device(Some(iface.as_bytes())).unwrap();
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into()).unwrap();
        UdpSocket::from(s)
    })
    .join()
    .unwrap()
}

fn pxe_discover(mac: Mac, xid: u32, arch: u16) -> Message {
    let mut m = monarch_proto::dhcp::wire::request(MessageType::Discover, mac, xid);
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut()
        .insert(DhcpOption::ClassIdentifier(format!("PXEClient:Arch:{arch:05}:UNDI:003016").into_bytes()));
    m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture(arch)));
    m
}

fn send(sock: &UdpSocket, msg: &Message, to: SocketAddr) {
    sock.send_to(&msg.to_vec().unwrap(), to).unwrap();
}

const BROADCAST67: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::BROADCAST, 67));

/// Replies with transaction id `xid` received within `wait`.
fn replies(sock: &UdpSocket, xid: u32, wait: Duration) -> Vec<(Message, SocketAddr)> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Some(left) = wait.checked_sub(t0.elapsed()).filter(|d| !d.is_zero()) {
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv_from(&mut buf) {
            Ok((len, from)) => {
                let reply = Message::from_bytes(&buf[..len])
                    .ok()
                    .filter(|m| m.xid() == xid && m.opcode() == dhcproto::v4::Opcode::BootReply);
                got.extend(reply.map(|m| (m, from)));
            }
            Err(_) => break,
        }
    }
    got
}

fn opt(m: &Message, code: u8) -> Option<Vec<u8>> {
    match m.opts().get(OptionCode::from(code))? {
        DhcpOption::ClassIdentifier(v)
        | DhcpOption::BootfileName(v)
        | DhcpOption::VendorExtensions(v)
        | DhcpOption::ClientMachineIdentifier(v)
        | DhcpOption::TFTPServerName(v) => Some(v.clone()),
        DhcpOption::ServerIdentifier(ip) => Some(ip.octets().to_vec()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_gives_the_same_machine_the_same_address() {
    let _serial = PORT67.lock().await;
    tools();
    let n = 2;
    let v = veth("dhcpr", n, false);
    let mac = far_mac(&v);
    let dir = tempfile::tempdir().unwrap();
    let lease_file = dir.path().join("leases");
    let events = Events::default();
    let server = start(full_config(&v, n, &lease_file), &events).await;
    let first = udhcpc(&v, dir.path(), &[]).await["ip"].parse::<Ipv4Addr>().unwrap();
    stop(server).await;
    let table = std::fs::read_to_string(&lease_file).unwrap();
    assert!(table.contains(&format!("bound {mac} {first} ")), "{table}");

    // Restart on the same file. Another machine asks first: it must not get `first`,
    // which a server that forgot its leases would hand out again.
    let events = Events::default();
    let server = start(full_config(&v, n, &lease_file), &events).await;
    assert!(events.all().iter().any(|e| matches!(e, DhcpEvent::LeasesLoaded { loaded: 1, dropped: 0, .. })));
    let sock = far_socket(&v);
    let other = Mac::new([0x02, 0x67, 0, 0, 0, 9]);
    let xid = 0x6702;
    let mut offers = Vec::new();
    for _ in 0..10 {
        send(&sock, &pxe_discover(other, xid, 0), BROADCAST67);
        offers = replies(&sock, xid, Duration::from_secs(2));
        if !offers.is_empty() {
            break;
        }
    }
    let offered = offers.first().expect("no offer for the second machine").0.yiaddr();
    assert_ne!(offered, first);
    drop(sock);
    let again = udhcpc(&v, dir.path(), &[]).await["ip"].parse::<Ipv4Addr>().unwrap();
    assert_eq!(again, first);
    stop(server).await;
}

/// busybox udhcpd as the network's DHCP server, started on `iface`; killed on drop.
struct Udhcpd(std::process::Child);

impl Udhcpd {
    fn start(iface: &str, dir: &Path, first: Ipv4Addr, last: Ipv4Addr) -> Udhcpd {
        let conf = dir.join("udhcpd.conf");
        std::fs::write(
            &conf,
            format!(
                "start {first}\nend {last}\ninterface {iface}\nlease_file {}\npidfile {}\n\
                 option subnet 255.255.255.0\noption lease 600\n",
                dir.join("udhcpd.leases").display(),
                dir.join("udhcpd.pid").display()
            ),
        )
        .unwrap();
        std::fs::write(dir.join("udhcpd.leases"), b"").unwrap();
        let child = Command::new("busybox")
            .args(["udhcpd", "-f"])
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Udhcpd(child)
    }
}

impl Drop for Udhcpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_dhcp_beside_an_existing_dhcp_server() {
    let _serial = PORT67.lock().await;
    tools();
    let n = 3;
    let v = veth("dhcpx", n, true);
    // The proxy gets its own address next to udhcpd's (10.67.3.1), as on a real network.
    let proxy_ip = net(n, 3);
    run(
        Command::new("ip").args(["addr", "add", &format!("{proxy_ip}/24"), "dev", &v.near_if]),
        "ip addr add",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _udhcpd = Udhcpd::start(&v.near_if, dir.path(), net(n, 100), net(n, 110));
    let events = Events::default();
    let mut cfg = DhcpConfig::new(Some(&v.near_if), proxy_ip, DhcpMode::Proxy);
    cfg.http_base = Some(format!("http://{proxy_ip}:8080"));
    let server = start(cfg, &events).await;
    events.wait_for(2, |e| matches!(e, DhcpEvent::Listening { .. })).await;

    let sock = far_socket(&v);
    let mac = Mac::new([0x02, 0x67, 0, 0, 3, 1]);
    let uuid: Vec<u8> = (0..17).collect();
    let xid = 0x6703;
    let mut discover = pxe_discover(mac, xid, 7);
    discover.opts_mut().insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
    // Rebroadcast until both servers have answered (udhcpd may still be starting).
    let (mut pool_offer, mut proxy_offer) = (None, None);
    let t0 = Instant::now();
    while (pool_offer.is_none() || proxy_offer.is_none()) && t0.elapsed() < PATIENCE {
        send(&sock, &discover, BROADCAST67);
        for (m, _) in replies(&sock, xid, Duration::from_secs(1)) {
            if m.opts().msg_type() != Some(MessageType::Offer) {
                continue;
            }
            if m.yiaddr().is_unspecified() {
                proxy_offer = Some(m);
            } else {
                pool_offer = Some(m);
            }
        }
    }
    let pool_offer = pool_offer.expect("no offer from udhcpd");
    let proxy_offer = proxy_offer.expect("no ProxyDHCP offer");
    assert!((net(n, 100)..=net(n, 110)).contains(&pool_offer.yiaddr()));
    assert_eq!(opt(&pool_offer, 54), Some(net(n, 1).octets().to_vec()), "udhcpd's server id");
    assert_eq!(opt(&proxy_offer, 54), Some(proxy_ip.octets().to_vec()));
    assert_eq!(opt(&proxy_offer, 60), Some(b"PXEClient".to_vec()));
    assert_eq!(opt(&proxy_offer, 43), Some(PXE_VENDOR_OPTIONS.to_vec()));
    assert_eq!(opt(&proxy_offer, 67), Some(b"ipxe.efi".to_vec()));
    assert_eq!(opt(&proxy_offer, 97), Some(uuid.clone()));
    assert!(proxy_offer.opts().get(OptionCode::AddressLeaseTime).is_none());

    // Port 4011: the client (now with its address) asks the proxy for the boot file.
    let mut req = monarch_proto::dhcp::wire::request(MessageType::Request, mac, xid + 1);
    req.set_ciaddr(net(n, 2));
    req.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec()));
    req.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture(7)));
    req.opts_mut().insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
    let mut acks = Vec::new();
    for _ in 0..10 {
        send(&sock, &req, SocketAddr::from((proxy_ip, 4011)));
        acks = replies(&sock, xid + 1, Duration::from_secs(2));
        if !acks.is_empty() {
            break;
        }
    }
    let (ack, from) = acks.first().expect("no ACK from port 4011");
    assert_eq!(*from, SocketAddr::from((proxy_ip, 4011)));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(opt(ack, 67), Some(b"ipxe.efi".to_vec()));
    assert_eq!(opt(ack, 97), Some(uuid));
    assert!(ack.yiaddr().is_unspecified());

    // A plain client: udhcpd answers, the proxy stays silent (and says why).
    let plain_xid = 0x6704;
    let mut plain = monarch_proto::dhcp::wire::request(
        MessageType::Discover,
        Mac::new([0x02, 0x67, 0, 0, 3, 2]),
        plain_xid,
    );
    plain.set_flags(Flags::default().set_broadcast());
    let ignored_before =
        events.count(|e| matches!(e, DhcpEvent::Ignored { reason, .. } if reason.contains("not a PXE")));
    send(&sock, &plain, BROADCAST67);
    events
        .wait_for(
            ignored_before + 1,
            |e| matches!(e, DhcpEvent::Ignored { reason, .. } if reason.contains("not a PXE")),
        )
        .await;
    let answers = replies(&sock, plain_xid, Duration::from_secs(2));
    assert!(answers.iter().all(|(m, _)| !m.yiaddr().is_unspecified()), "the proxy answered a plain client");
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_get_no_reply_and_the_server_keeps_serving() {
    let _serial = PORT67.lock().await;
    tools();
    let n = 4;
    let v = veth("dhcpm", n, true);
    let dir = tempfile::tempdir().unwrap();
    let events = Events::default();
    let server = start(full_config(&v, n, &dir.path().join("leases")), &events).await;
    let sock = far_socket(&v);
    let mac = Mac::new([0x02, 0x67, 0, 0, 4, 1]);
    let good = pxe_discover(mac, 0x6705, 0).to_vec().unwrap();

    let header = |op: u8, hlen: u8| {
        let mut b = good[..240].to_vec();
        b[0] = op;
        b[2] = hlen;
        b
    };
    let with_opts = |opts: &[u8]| {
        let mut b = header(1, 6);
        b.extend(opts);
        b
    };
    let mut huge_list = header(1, 6);
    huge_list.extend([53, 1, 1]);
    for i in 0..20_000u32 {
        huge_list.extend([u8::try_from(100 + i % 100).unwrap(), 1, 0]);
    }
    huge_list.push(255);
    // Many options within one frame, none of them the message type (the decoder stops at
    // the first option it cannot read, so the type after it is never seen).
    let mut many = header(1, 6);
    for i in 0..400u32 {
        many.extend([u8::try_from(100 + i % 20).unwrap(), 1, 0]);
    }
    many.extend([53, 1, 1, 255]);
    let mut op_reply = good.clone();
    op_reply[0] = 2;
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one byte", vec![1]),
        ("truncated header", good[..120].to_vec()),
        ("header without cookie", good[..239].to_vec()),
        ("bad cookie", {
            let mut b = good.clone();
            b[237] ^= 0xff;
            b
        }),
        ("hlen 200", header(1, 200)),
        ("no message type", with_opts(&[255])),
        ("option longer than the packet", with_opts(&[53, 1, 1, 60, 250, b'P', b'X'])),
        ("rapid commit with a body", with_opts(&[53, 1, 1, 80, 1, 0, 255])),
        ("client interface of 1 byte", with_opts(&[53, 1, 1, 94, 1, 1, 255])),
        ("bulk lease query status of 0 bytes", with_opts(&[53, 1, 1, 151, 0, 255])),
        ("message type of 0 bytes", with_opts(&[53, 0, 255])),
        ("unknown message type", with_opts(&[53, 1, 99, 255])),
        ("huge option list (60 KB)", huge_list),
        ("many options in one frame, no readable message type", many),
        ("a reply, not a request", op_reply),
        ("not Ethernet", header(1, 16).into_iter().chain([53, 1, 1, 255]).collect()),
    ];
    for (_, b) in &bad {
        sock.send_to(b, BROADCAST67).unwrap();
    }
    events.wait_for(bad.len(), |e| matches!(e, DhcpEvent::Ignored { .. })).await;
    let ignored: Vec<String> = events
        .all()
        .into_iter()
        .filter_map(|e| match e {
            DhcpEvent::Ignored { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(ignored.len(), bad.len(), "{ignored:#?}");
    assert!(
        events
            .count(|e| matches!(e, DhcpEvent::Offer { .. } | DhcpEvent::Ack { .. } | DhcpEvent::Nak { .. }))
            == 0
    );

    // Still serving: a good DISCOVER gets its OFFER, and nothing else came back before it.
    sock.send_to(&good, BROADCAST67).unwrap();
    let t0 = Instant::now();
    let mut buf = vec![0u8; 65536];
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let (len, _) = sock.recv_from(&mut buf).unwrap();
    let first = Message::from_bytes(&buf[..len]).unwrap();
    assert_eq!(first.xid(), 0x6705, "a reply to a malformed packet arrived");
    assert_eq!(first.opts().msg_type(), Some(MessageType::Offer));
    assert!((net(n, 100)..=net(n, 120)).contains(&first.yiaddr()));
    assert!(t0.elapsed() < PATIENCE);
    assert!(!server.is_finished());
    for (what, _) in &bad {
        eprintln!("refused: {what}");
    }
    eprintln!("reasons: {ignored:#?}");
    stop(server).await;
}
