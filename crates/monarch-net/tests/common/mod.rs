//! A minimal TFTP client shared by the tests that misuse or flood the server: built by hand,
//! so a test controls every packet (which options, whether it ever ACKs, which address).
#![allow(dead_code, clippy::unwrap_used)] // each test file uses some of it

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// A read request for `file` in octet mode with `options`.
pub fn rrq(file: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![0, 1];
    for s in [file, "octet"].into_iter().chain(options.iter().flat_map(|(k, v)| [*k, *v])) {
        v.extend(s.as_bytes());
        v.push(0);
    }
    v
}

/// Download `file` from `server` lock-step without options, from a socket bound to `from`:
/// the bytes, or the server's ERROR message.
pub fn tftp_get(from: &str, server: SocketAddr, file: &str) -> Result<Vec<u8>, String> {
    let s = UdpSocket::bind((from, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(&rrq(file, &[]), server).unwrap();
    let (mut got, mut buf, mut want) = (Vec::new(), [0u8; 1024], 1u16);
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
