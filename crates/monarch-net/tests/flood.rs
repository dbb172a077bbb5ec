//! Floods on loopback: many requests from one address must not starve a client at another.
//! TFTP read requests that never ACK hold transfers; discovery DISCOVERs hold offers
//! (tokens). The flood comes from 127.0.0.1, the real client from 127.0.0.2 (all of
//! 127.0.0.0/8 is loopback on Linux), bound explicitly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use monarch_net::tftp::{TftpConfig, TftpServer};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

const OTHER: &str = "127.0.0.2";

/// A read request for `file`, octet mode, no options.
fn rrq(file: &str) -> Vec<u8> {
    let mut v = vec![0, 1];
    v.extend(file.as_bytes());
    v.push(0);
    v.extend(b"octet");
    v.push(0);
    v
}

/// Download `file` from `server` lock-step from a socket bound to `from`: the bytes, or the
/// server's ERROR message.
fn tftp_get(from: &str, server: SocketAddr, file: &str) -> Result<Vec<u8>, String> {
    let s = UdpSocket::bind((from, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(&rrq(file), server).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let mut want = 1u16;
    loop {
        let (n, tid) = s.recv_from(&mut buf).map_err(|e| format!("no answer: {e}"))?;
        match buf[..2] {
            [0, 3] if u16::from_be_bytes([buf[2], buf[3]]) == want => {
                got.extend(&buf[4..n]);
                s.send_to(&[0, 4, buf[2], buf[3]], tid).unwrap();
                if n - 4 < 512 {
                    return Ok(got);
                }
                want += 1;
            }
            [0, 3] => {}
            [0, 5] => return Err(String::from_utf8_lossy(&buf[4..n - 1]).into_owned()),
            _ => return Err(format!("unexpected packet {:?}", &buf[..n])),
        }
    }
}

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
            s.send_to(&rrq("boot.efi"), addr).unwrap();
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
