//! TFTP against a client that misuses the protocol, on loopback: one that asks for the
//! longest retransmission timeout RFC 2349 allows (255 s) and then never acknowledges
//! anything. Without a cap it would hold a transfer slot for `retries + 1` of those timeouts
//! (25 minutes by default); the server declines the option and gives the transfer up on its
//! own timer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use monarch_net::tftp::{TftpConfig, TftpEvent, TftpServer};
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{rrq, tftp_get};

/// The options of an OACK, as (name, value) pairs.
fn oack_options(p: &[u8]) -> Vec<(String, String)> {
    assert_eq!(p[..2], [0, 6], "not an OACK: {p:?}");
    let fields: Vec<String> =
        p[2..].split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).into_owned()).collect();
    fields.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_asking_the_longest_timeout_is_given_up_and_its_slot_freed() {
    let root = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.path().join("boot.efi"), &content).unwrap();
    let mut cfg = TftpConfig::new("127.0.0.1:0".parse().unwrap(), root.path());
    // One slot, so the silent client holds the only one; short timers so the test is quick.
    cfg.max_transfers = 1;
    cfg.timeout = Duration::from_millis(100);
    cfg.retries = 2;
    cfg.max_timeout = Duration::from_secs(1);
    let server = TftpServer::bind(cfg).await.unwrap();
    let addr = server.local_addr();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = Arc::clone(&events);
    let task = tokio::spawn(server.run(Arc::new(move |e| ev.lock().unwrap().push(e))));

    let (oack, silent) = tokio::task::spawn_blocking(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.send_to(&rrq("boot.efi", &[("timeout", "255"), ("tsize", "0")]), addr).unwrap();
        let mut buf = [0u8; 1024];
        let (n, _) = s.recv_from(&mut buf).expect("an OACK");
        // Kept open and never answered.
        (oack_options(&buf[..n]), s)
    })
    .await
    .unwrap();
    assert_eq!(
        oack,
        vec![("tsize".to_string(), content.len().to_string())],
        "a timeout above the cap is left out of the OACK (RFC 2349: echoed as asked, or not at all)"
    );

    // The transfer is given up on the server's timer. (Waiting this long is only the test's
    // own bound: on the asked 255 s it would take 765 s; on the server's it takes 0.3 s.)
    let peer = silent.local_addr().unwrap();
    let waited = Instant::now();
    let failed = loop {
        let found = events.lock().unwrap().iter().find_map(|e| match e {
            TftpEvent::Failed { peer: p, reason, .. } if *p == peer => Some(reason.clone()),
            _ => None,
        });
        if let Some(reason) = found {
            break reason;
        }
        assert!(waited.elapsed() < Duration::from_secs(60), "never given up: {:#?}", events.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(failed.contains("no acknowledgement"), "{failed}");

    // Its slot is free again: another client gets the file.
    let got = tokio::task::spawn_blocking(move || tftp_get("127.0.0.1", addr, "boot.efi")).await.unwrap();
    assert_eq!(got.expect("the only slot is free once the silent transfer was given up"), content);
    drop(silent);
    task.abort();
}
