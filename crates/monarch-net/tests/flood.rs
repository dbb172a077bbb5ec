//! Floods on loopback: many requests from one address must not starve a client at another.
//! TFTP read requests that never ACK hold transfers; discovery DISCOVERs hold offers
//! (tokens). The flood comes from 127.0.0.1, the real client from 127.0.0.2 (all of
//! 127.0.0.0/8 is loopback on Linux), bound explicitly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use monarch_net::catalog::Catalog;
use monarch_net::discovery::{DiscoveryConfig, DiscoveryServer};
use monarch_net::tftp::{TftpConfig, TftpServer};
use monarch_proto::mac::Mac;
use monarch_proto::netboot::wire::{Discover, Download, Message, Offer, frame_len};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

const OTHER: &str = "127.0.0.2";

mod common;
use common::{rrq, tftp_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tftp_flood_from_one_address_leaves_room_for_another() {
    let root = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.path().join("boot.efi"), &content).unwrap();
    let mut cfg = TftpConfig::new("127.0.0.1:0".parse().unwrap(), root.path());
    cfg.max_transfers = 16;
    let per_source = cfg.max_per_source;
    assert!(per_source < cfg.max_transfers);
    let server = TftpServer::bind(cfg).await.unwrap();
    let addr = server.local_addr();
    let task = tokio::spawn(server.run(std::sync::Arc::new(|_| {})));

    let verdicts = tokio::task::spawn_blocking(move || {
        // Twenty requests from twenty ports of 127.0.0.1 that never ACK.
        let flood: Vec<UdpSocket> = (0..20).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for s in &flood {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.send_to(&rrq("boot.efi", &[]), addr).unwrap();
        }
        // Each gets its first DATA (a transfer holds a slot) or an ERROR (busy).
        let mut buf = [0u8; 1024];
        let (mut data, mut busy) = (0, 0);
        for s in &flood {
            let (n, _) = s.recv_from(&mut buf).expect("an answer to every request");
            match buf[..2] {
                [0, 3] => data += 1,
                [0, 5] => {
                    assert!(String::from_utf8_lossy(&buf[4..n]).contains("busy"));
                    busy += 1;
                }
                _ => panic!("unexpected {:?}", &buf[..n]),
            }
        }
        let other = tftp_get(OTHER, addr, "boot.efi");
        drop(flood);
        (data, busy, other)
    })
    .await
    .unwrap();
    let (data, busy, other) = verdicts;
    assert_eq!((data, busy), (per_source, 20 - per_source), "transfers and refusals of the flood");
    assert_eq!(other.expect("the client at 127.0.0.2 is served during the flood"), content);
    task.abort();
}

/// Send a DISCOVER for `mac` from `sock` to `server`.
fn discover(sock: &UdpSocket, server: SocketAddr, mac: Mac, xid: u32) {
    sock.send_to(&Message::Discover(Discover { xid, mac, current: None }).encode(), server).unwrap();
}

/// The offers that arrive on `sock` until it stays quiet for its read timeout.
fn offers(sock: &UdpSocket) -> Vec<Offer> {
    let mut buf = [0u8; 600];
    let mut got = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        if let Ok(Message::Offer(o)) = Message::decode(&buf[..n]) {
            got.push(o);
        }
    }
    got
}

#[test]
fn a_discovery_flood_does_not_evict_another_agents_offer() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("os.img"), vec![7u8; 4096]).unwrap();
    std::fs::write(root.path().join("machines.toml"), "[default]\nimage = \"os.img\"\n").unwrap();
    let catalog = Arc::new(Catalog::load(root.path()).unwrap());
    let mut cfg =
        DiscoveryConfig::new("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap(), catalog);
    cfg.max_offers = 32;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = rt.block_on(DiscoveryServer::bind(cfg)).unwrap();
    let (udp, tcp) = (server.local_udp(), server.local_tcp());
    rt.spawn(server.run(Arc::new(|_| {})));

    // The real agent, at 127.0.0.2, gets its offer.
    let agent = UdpSocket::bind((OTHER, 0)).unwrap();
    agent.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    discover(&agent, udp, Mac::new([0x52, 0x54, 0, 0, 0, 1]), 1);
    let mine = offers(&agent).pop().expect("an offer for the agent");

    // Then 200 DISCOVERs from one address with made-up MACs, in batches the service takes
    // at once (it drops DISCOVERs beyond 64 in progress), each batch answered.
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    flood.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut answered = 0;
    for batch in 0..10u8 {
        for i in 0..20u8 {
            discover(&flood, udp, Mac::new([2, 0xee, 0, 0, batch, i]), u32::from(batch) * 100 + u32::from(i));
        }
        answered += offers(&flood).len();
    }
    assert!(answered > 32, "the flood got {answered} offers: not enough to fill the table");

    // The agent's token still works.
    let mut s = TcpStream::connect(tcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&Message::Download(Download { xid: mine.xid, token: mine.token, size: mine.size }).frame())
        .unwrap();
    let mut p = [0u8; 2];
    s.read_exact(&mut p).unwrap();
    let mut b = vec![0u8; frame_len(p).unwrap()];
    s.read_exact(&mut b).unwrap();
    assert_eq!(Message::decode(&b).unwrap(), Message::Accept { xid: mine.xid, size: mine.size });
}
