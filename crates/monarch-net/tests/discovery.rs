//! The network boot discovery flow end to end on real sockets: our discovery server and our agent-side
//! `fetch`, over loopback (and, when network namespaces are available, by broadcast over a
//! veth pair from inside a namespace).
//!
//! `measure_sendfile_vs_copy` (ignored; run with
//! `cargo test -p monarch-net --test discovery -- --ignored --nocapture`) moves a 1 GiB image
//! once with sendfile and once with a read/write copy loop and prints both rates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)] // test code: a panic is the failure report

use monarch_net::catalog::{Catalog, Machine};
use monarch_net::discovery::{
    DiscoveryConfig, DiscoveryEvent, DiscoveryServer, FetchConfig, FetchError, Fetched, fetch,
};
use monarch_proto::checksum::Algo;
use monarch_proto::mac::Mac;
use monarch_proto::netboot::client::ClientFailure;
use monarch_proto::netboot::wire::{Discover, Download, Message, RefuseCode, Token, frame_len};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAC: Mac = Mac::new([0x52, 0x54, 0x00, 0xab, 0xcd, 0x01]);

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8).collect()
}

struct Server {
    udp: SocketAddr,
    tcp: SocketAddr,
    events: Arc<Mutex<Vec<DiscoveryEvent>>>,
    rt: tokio::runtime::Runtime,
}

impl Server {
    fn events(&self) -> Vec<DiscoveryEvent> {
        self.events.lock().unwrap().clone()
    }
}

fn start_with(cfg: DiscoveryConfig) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = rt.block_on(DiscoveryServer::bind(cfg)).unwrap();
    let (udp, tcp) = (server.local_udp(), server.local_tcp());
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    rt.spawn(server.run(Arc::new(move |e| ev.lock().unwrap().push(e))));
    Server { udp, tcp, events, rt }
}

fn start(root: &Path, udp: &str) -> Server {
    let catalog = Arc::new(Catalog::load(root).unwrap());
    start_with(DiscoveryConfig::new(udp.parse().unwrap(), "127.0.0.1:0".parse().unwrap(), catalog))
}

/// A root whose catalog gives MAC an image of `size` bytes.
fn root_with_image(size: usize) -> (tempfile::TempDir, Vec<u8>) {
    let root = tempfile::tempdir().unwrap();
    let image = pattern(size, 7);
    std::fs::write(root.path().join("payload.bin"), &image).unwrap();
    std::fs::write(
        root.path().join("machines.toml"),
        "[machine.\"52:54:00:ab:cd:01\"]\nname = \"agent1\"\nimage = \"payload.bin\"\n",
    )
    .unwrap();
    (root, image)
}

fn quick(server: SocketAddr) -> FetchConfig {
    FetchConfig {
        interval: Duration::from_millis(200),
        give_up_after: Duration::from_secs(20),
        ..FetchConfig::new(server, MAC)
    }
}

#[test]
fn a_30_mib_image_arrives_verified() {
    let (root, image) = root_with_image(30 << 20);
    let s = start(root.path(), "127.0.0.1:0");
    let got: Fetched = fetch(&quick(s.udp)).unwrap();
    assert_eq!(got.offer.size, image.len() as u64);
    assert_eq!(got.offer.name, "payload.bin");
    assert_eq!(got.offer.algo, Algo::Blake3);
    assert!(got.bytes == image, "content differs");
    // The pre-posted buffer was one allocation of exactly the offered size.
    assert_eq!(got.bytes.capacity(), image.len());
    assert_eq!(got.server, s.tcp);
    assert_eq!(got.discovers, 1);
    eprintln!("30 MiB: {:?}", got.timings);
    let ev = s.events();
    assert!(ev.iter().any(|e| matches!(e, DiscoveryEvent::Hashed { size, .. } if *size == 30 << 20)));
    assert!(
        ev.iter().any(|e| matches!(e, DiscoveryEvent::Offered { mac, .. } if mac == "52:54:00:ab:cd:01"))
    );
    assert!(
        ev.iter()
            .any(|e| matches!(e, DiscoveryEvent::Sent { bytes, zero_copy: true, .. } if *bytes == 30 << 20)),
        "{ev:?}"
    );

    // The same machine again: the digest is not computed a second time.
    assert!(fetch(&quick(s.udp)).unwrap().bytes == image);
    assert_eq!(s.events().iter().filter(|e| matches!(e, DiscoveryEvent::Hashed { .. })).count(), 1);

    // A machine that already has this image is told so and nothing is transferred.
    let cfg = FetchConfig { current: Some((got.offer.algo, got.offer.digest)), ..quick(s.udp) };
    let err = fetch(&cfg).unwrap_err();
    assert!(matches!(err, FetchError::UpToDate(_)) && err.keeps_local_image(), "{err}");
    assert_eq!(s.events().iter().filter(|e| matches!(e, DiscoveryEvent::Sent { .. })).count(), 2);
}

/// A UDP port on loopback that nothing listens on (bound, read, released).
fn free_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[test]
fn no_server_means_no_server_within_the_bound() {
    let cfg = FetchConfig {
        interval: Duration::from_millis(200),
        give_up_after: Duration::from_secs(1),
        ..FetchConfig::new(free_udp_port(), MAC)
    };
    let t = Instant::now();
    let err = fetch(&cfg).unwrap_err();
    let took = t.elapsed();
    match &err {
        FetchError::NoServer { waited, discovers, .. } => {
            assert!(*waited >= Duration::from_secs(1));
            assert_eq!(*discovers, 5); // at 0, 200, 400, 600, 800 ms
        }
        e => panic!("{e}"),
    }
    assert!(err.keeps_local_image());
    assert!(err.to_string().contains("continuing with the local image"), "{err}");
    assert!(took < Duration::from_secs(30), "generous upper bound: {took:?}");
}

#[test]
fn a_server_started_late_is_found() {
    let (root, image) = root_with_image(1 << 20);
    // Stand in for the server's port ourselves until two DISCOVERs have arrived, then hand
    // the port to the real server: the agent's rebroadcast must find it.
    let port_holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = port_holder.local_addr().unwrap();
    port_holder.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let agent = std::thread::spawn(move || fetch(&quick(addr)));
    let mut xids = Vec::new();
    let mut buf = [0u8; 600];
    while xids.len() < 2 {
        let (n, _) = port_holder.recv_from(&mut buf).unwrap();
        match Message::decode(&buf[..n]).unwrap() {
            Message::Discover(Discover { xid, mac, .. }) => {
                assert_eq!(mac, MAC);
                xids.push(xid);
            }
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(xids[0], xids[1], "a rebroadcast keeps its transaction id");
    drop(port_holder);
    let s = start(root.path(), &addr.to_string());
    let got = agent.join().unwrap().unwrap();
    assert!(got.bytes == image);
    assert!(got.discovers >= 3, "{}", got.discovers);
    drop(s);
}

/// Ask the server for an offer by hand (our own DISCOVER datagram).
fn offer_by_hand(server: SocketAddr) -> monarch_proto::netboot::wire::Offer {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let d = Message::Discover(Discover { xid: 99, mac: MAC, current: None });
    sock.send_to(&d.encode(), server).unwrap();
    let mut buf = [0u8; 600];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    match Message::decode(&buf[..n]).unwrap() {
        Message::Offer(o) => o,
        m => panic!("{m:?}"),
    }
}

/// Send one DOWNLOAD frame; the reply frame.
fn download_by_hand(tcp: SocketAddr, req: Download) -> Message {
    let mut s = TcpStream::connect(tcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&Message::Download(req).frame()).unwrap();
    let mut p = [0u8; 2];
    s.read_exact(&mut p).unwrap();
    let mut b = vec![0u8; frame_len(p).unwrap()];
    s.read_exact(&mut b).unwrap();
    Message::decode(&b).unwrap()
}

#[test]
fn a_wrong_token_or_size_is_refused() {
    let (root, _) = root_with_image(4096);
    let s = start(root.path(), "127.0.0.1:0");
    let offer = offer_by_hand(s.udp);
    assert_eq!(offer.xid, 99);
    assert_eq!(offer.tcp_port, s.tcp.port());

    let wrong = Download { xid: 99, token: Token([0x5a; 16]), size: offer.size };
    match download_by_hand(s.tcp, wrong) {
        Message::Refuse { code: RefuseCode::BadToken, reason, .. } => {
            assert!(reason.contains("discover again"))
        }
        m => panic!("{m:?}"),
    }
    let wrong_size = Download { xid: 99, token: offer.token, size: offer.size + 1 };
    assert!(matches!(download_by_hand(s.tcp, wrong_size), Message::Refuse { code: RefuseCode::Changed, .. }));
    // The right token and size are accepted.
    let right = Download { xid: 99, token: offer.token, size: offer.size };
    assert_eq!(download_by_hand(s.tcp, right), Message::Accept { xid: 99, size: offer.size });

    // Garbage on TCP: an absurd frame length and a non-DOWNLOAD message get no transfer.
    let mut g = TcpStream::connect(s.tcp).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    g.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
    let mut rest = Vec::new();
    let _ = g.read_to_end(&mut rest);
    assert!(rest.is_empty());
    let ev = s.events();
    assert_eq!(ev.iter().filter(|e| matches!(e, DiscoveryEvent::Refused { .. })).count(), 3, "{ev:?}");
}

#[test]
fn garbage_datagrams_get_no_answer_and_break_nothing() {
    let (root, image) = root_with_image(8192);
    let s = start(root.path(), "127.0.0.1:0");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let good = Message::Discover(Discover { xid: 1, mac: MAC, current: None }).encode();
    let mut garbage: Vec<Vec<u8>> =
        vec![vec![], b"MNRB".to_vec(), vec![0xff; 1500], good[..good.len() - 1].to_vec()];
    let mut bad_version = good.clone();
    bad_version[4] = 2;
    garbage.push(bad_version);
    let mut trailing = good.clone();
    trailing.push(0);
    garbage.push(trailing);
    garbage.push(Message::Accept { xid: 1, size: 5 }.encode());
    for g in &garbage {
        sock.send_to(g, s.udp).unwrap();
    }
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 600];
    assert!(sock.recv_from(&mut buf).is_err(), "garbage got an answer");
    // Still serving.
    assert!(fetch(&quick(s.udp)).unwrap().bytes == image);
    let ignored = s.events().iter().filter(|e| matches!(e, DiscoveryEvent::Ignored { .. })).count();
    assert_eq!(ignored, garbage.len());
}

#[test]
fn an_unknown_machine_gets_no_answer() {
    let (root, _) = root_with_image(4096);
    let s = start(root.path(), "127.0.0.1:0");
    let cfg = FetchConfig {
        mac: Mac::new([2, 0, 0, 0, 0, 9]),
        interval: Duration::from_millis(100),
        give_up_after: Duration::from_millis(500),
        ..FetchConfig::new(s.udp, MAC)
    };
    assert!(matches!(fetch(&cfg), Err(FetchError::NoServer { .. })));
    assert!(s.events().iter().any(|e| matches!(e, DiscoveryEvent::Ignored { reason, .. }
        if reason.contains("no image for 02:00:00:00:00:09"))));
}

/// Honest corruption: the image's bytes change on the server's disk after its digest was
/// cached, with size and mtime left as they were (bit rot, a bad disk, a tampering hand). The
/// server cannot see it from metadata and offers the old digest; the agent verifies what
/// landed and hands nothing over.
#[test]
fn a_corrupted_byte_is_caught_and_nothing_is_handed_over() {
    let (root, image) = root_with_image(2 << 20);
    let s = start(root.path(), "127.0.0.1:0");
    assert!(fetch(&quick(s.udp)).unwrap().bytes == image);

    let path = root.path().join("payload.bin");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[image[1_000_000] ^ 0x40], 1_000_000).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let err = fetch(&quick(s.udp)).unwrap_err();
    match &err {
        FetchError::Failed(ClientFailure::DigestMismatch { name, .. }) => assert_eq!(name, "payload.bin"),
        e => panic!("{e}"),
    }
    assert!(!err.keeps_local_image());
    assert!(err.to_string().contains("nothing was handed over"), "{err}");
}

/// A server (hand-made here from the protocol's messages) that offers an image, accepts the
/// download and then dies half-way: the agent reports the broken transfer and hands nothing over.
#[test]
fn a_transfer_that_breaks_off_hands_nothing_over() {
    let data = pattern(1 << 20, 5);
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (server, tcp_port) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap().port());
    let agent = std::thread::spawn(move || fetch(&quick(server)));
    let mut buf = [0u8; 600];
    let (n, from) = udp.recv_from(&mut buf).unwrap();
    let Message::Discover(d) = Message::decode(&buf[..n]).unwrap() else { panic!() };
    let offer = monarch_proto::netboot::wire::Offer {
        xid: d.xid,
        name: "half.img".into(),
        size: data.len() as u64,
        algo: Algo::Blake3,
        digest: Algo::Blake3.digest(&data),
        tcp_port,
        token: Token([1; 16]),
    };
    udp.send_to(&Message::Offer(offer).encode(), from).unwrap();
    let (mut c, _) = tcp.accept().unwrap();
    let mut p = [0u8; 2];
    c.read_exact(&mut p).unwrap();
    let mut req = vec![0u8; frame_len(p).unwrap()];
    c.read_exact(&mut req).unwrap();
    assert!(
        matches!(Message::decode(&req).unwrap(), Message::Download(Download { size, .. }) if size == 1 << 20)
    );
    c.write_all(&Message::Accept { xid: d.xid, size: data.len() as u64 }.frame()).unwrap();
    c.write_all(&data[..data.len() / 2]).unwrap();
    drop(c);
    let err = agent.join().unwrap().unwrap_err();
    assert!(matches!(err, FetchError::Failed(ClientFailure::Transfer { .. })), "{err}");
    assert!(err.to_string().contains("after 524288 of 1048576 bytes"), "{err}");
    assert!(!err.keeps_local_image());
}

/// A client that takes a download and then reads nothing holds one of the service's transfer
/// permits; the send stall cuts it off and frees the permit. With one permit, a second agent
/// gets its image only once the first client was dropped. Both send paths (sendfile and the
/// copy loop).
#[test]
fn a_client_that_stops_reading_is_dropped_and_frees_its_permit() {
    let root = tempfile::tempdir().unwrap();
    // Far more than the loopback socket buffers of both ends hold, so the send blocks.
    let size = 64u64 << 20;
    std::fs::File::create(root.path().join("payload.bin")).unwrap().set_len(size).unwrap();
    std::fs::write(
        root.path().join("machines.toml"),
        "[machine.\"52:54:00:ab:cd:01\"]\nname = \"agent1\"\nimage = \"payload.bin\"\n",
    )
    .unwrap();
    for zero_copy in [true, false] {
        let catalog = Arc::new(Catalog::load(root.path()).unwrap());
        let mut cfg =
            DiscoveryConfig::new("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap(), catalog);
        cfg.max_transfers = 1;
        cfg.send_stall = Duration::from_millis(300);
        cfg.zero_copy = zero_copy;
        let s = start_with(cfg);

        // Take the only permit: request the download, read the ACCEPT, then nothing more.
        let offer = offer_by_hand(s.udp);
        let mut hog = TcpStream::connect(s.tcp).unwrap();
        hog.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let req = Download { xid: offer.xid, token: offer.token, size: offer.size };
        hog.write_all(&Message::Download(req).frame()).unwrap();
        let mut p = [0u8; 2];
        hog.read_exact(&mut p).unwrap();
        let mut b = vec![0u8; frame_len(p).unwrap()];
        hog.read_exact(&mut b).unwrap();
        assert_eq!(Message::decode(&b).unwrap(), Message::Accept { xid: offer.xid, size });
        let hog_addr = hog.local_addr().unwrap();

        // Dropped on the send stall. (The wait is only the test's own bound: without the
        // stall the client holds the permit for as long as it keeps the connection.)
        let waited = Instant::now();
        let (bytes, reason) = loop {
            let found = s.events().into_iter().find_map(|e| match e {
                DiscoveryEvent::Dropped { peer, bytes, reason, .. } if peer == hog_addr => {
                    Some((bytes, reason))
                }
                _ => None,
            });
            if let Some(f) = found {
                break f;
            }
            assert!(waited.elapsed() < Duration::from_secs(60), "never dropped: {:#?}", s.events());
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(bytes < size, "zero_copy {zero_copy}: {bytes} bytes sent to a client that read nothing");
        assert!(reason.contains("send stall"), "{reason}");

        // The permit is free: an agent gets the whole image while the hog still holds its
        // (cut off) connection.
        let got = fetch(&quick(s.udp)).unwrap();
        assert_eq!(got.bytes.len() as u64, size);
        assert!(
            s.events().iter().any(|e| matches!(e, DiscoveryEvent::Sent { bytes, .. } if *bytes == size)),
            "{:#?}",
            s.events()
        );
        drop(hog);
    }
}

#[test]
fn a_catalog_built_from_parts_and_the_copy_loop_also_work() {
    let (root, image) = root_with_image(3 << 20);
    let catalog = Catalog::from_parts(
        root.path(),
        Some(Machine { image: Some("payload.bin".into()), ..Machine::default() }),
        [],
    )
    .unwrap();
    let mut cfg = DiscoveryConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(catalog),
    );
    cfg.zero_copy = false;
    cfg.algo = Algo::Crc32c;
    let s = start_with(cfg);
    let got = fetch(&FetchConfig { mac: Mac::new([2, 0, 0, 0, 0, 1]), ..quick(s.udp) }).unwrap();
    assert!(got.bytes == image);
    assert_eq!(got.offer.algo, Algo::Crc32c);
    assert!(s.events().iter().any(|e| matches!(e, DiscoveryEvent::Sent { zero_copy: false, .. })));
    // An offer above the agent's limit is refused before any allocation.
    let err = fetch(&FetchConfig { mac: Mac::new([2, 0, 0, 0, 0, 1]), max_size: 1 << 20, ..quick(s.udp) })
        .unwrap_err();
    assert!(matches!(err, FetchError::Failed(ClientFailure::TooLarge { .. })), "{err}");
}

/// The agent inside a network namespace broadcasts to 255.255.255.255 on its veth end; the
/// server listens on the other end (bound to that interface only) and the download runs over
/// the veth pair.
#[test]
fn broadcast_discovery_across_a_veth_pair() {
    use monarch_drivers::host::VethNs;
    let veth = match VethNs::new("disc", "198.51.100.1", "198.51.100.2", 1500, false) {
        Ok(v) => v,
        Err(e) if !monarch_drivers::host::have("ip") => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let (root, image) = root_with_image(5 << 20);
    let catalog = Arc::new(Catalog::load(root.path()).unwrap());
    let mut cfg =
        DiscoveryConfig::new("0.0.0.0:0".parse().unwrap(), "198.51.100.1:0".parse().unwrap(), catalog);
    cfg.interface = Some(veth.near_if.clone());
    let s = start_with(cfg);
    let port = s.udp.port();
    let (ns, far_if) = (veth.ns.clone(), veth.far_if.clone());
    let agent = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&f),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        fetch(&FetchConfig {
            interface: Some(far_if),
            ..quick(SocketAddr::from(([255, 255, 255, 255], port)))
        })
    });
    let got = agent.join().unwrap().unwrap();
    assert!(got.bytes == image);
    assert_eq!(got.server.ip().to_string(), "198.51.100.1");
    assert!(s.events().iter().any(|e| matches!(e, DiscoveryEvent::Offered { peer, .. }
        if peer.ip().to_string() == "198.51.100.2")));
    drop(s);
    drop(veth);
}

#[test]
#[ignore = "a measurement (1 GiB over loopback, sendfile vs copy loop); run by hand"]
fn measure_sendfile_vs_copy() {
    let root = tempfile::tempdir().unwrap();
    {
        let mut f = std::fs::File::create(root.path().join("payload.bin")).unwrap();
        let block = pattern(1 << 20, 3);
        for _ in 0..1024 {
            f.write_all(&block).unwrap();
        }
    }
    std::fs::write(root.path().join("machines.toml"), "[default]\nimage = \"payload.bin\"\n").unwrap();
    let catalog = Arc::new(Catalog::load(root.path()).unwrap());
    let mut lines = Vec::new();
    for zero_copy in [true, false, true, false] {
        let mut cfg = DiscoveryConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            catalog.clone(),
        );
        cfg.zero_copy = zero_copy;
        cfg.algo = Algo::Xxh3;
        let s = start_with(cfg);
        let got = fetch(&FetchConfig { give_up_after: Duration::from_secs(120), ..quick(s.udp) }).unwrap();
        let t = got.timings;
        lines.push(format!(
            "{}: transfer {:.0} MiB/s ({:?}), verify xxh3 {:?}, discover (incl. first hash) {:?}",
            if zero_copy { "sendfile " } else { "copy loop" },
            1024.0 / t.transfer.as_secs_f64(),
            t.transfer,
            t.verify,
            t.discover
        ));
        // The server's side alone: a reader that discards into one reused 1 MiB buffer, so
        // the agent's page faults on its fresh 1 GiB buffer do not hide the difference.
        let offer = offer_by_hand(s.udp);
        let mut c = TcpStream::connect(s.tcp).unwrap();
        c.write_all(&Message::Download(Download { xid: 99, token: offer.token, size: offer.size }).frame())
            .unwrap();
        let mut p = [0u8; 2];
        c.read_exact(&mut p).unwrap();
        let mut b = vec![0u8; frame_len(p).unwrap()];
        c.read_exact(&mut b).unwrap();
        let cpu = || {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
            Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
        };
        let (t, cpu0, mut left, mut sink) = (Instant::now(), cpu(), offer.size, vec![0u8; 1 << 20]);
        while left > 0 {
            let n = c.read(&mut sink).unwrap();
            assert!(n > 0);
            left -= n as u64;
        }
        lines.push(format!(
            "    server side alone (discarding reader): {:.0} MiB/s, process CPU {:?} (server + reader)",
            1024.0 / t.elapsed().as_secs_f64(),
            cpu() - cpu0
        ));
        s.rt.shutdown_background();
    }
    for l in lines {
        println!("{l}");
    }
}
