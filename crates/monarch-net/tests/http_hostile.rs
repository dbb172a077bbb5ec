//! The HTTP service against clients that bend the protocol or hold on to connections: range
//! requests by RFC 9110's letter (If-Range, unknown units, several ranges), a client that
//! trickles its request head, a client that never reads. Raw TCP on loopback, against a
//! server each test starts with short limits of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use monarch_net::catalog::Catalog;
use monarch_net::http::{HttpConfig, HttpEvent, HttpServer};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

struct Server {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<HttpEvent>>>,
    _rt: tokio::runtime::Runtime,
}

fn start(root: &Path, tweak: impl FnOnce(&mut HttpConfig)) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut cfg =
        HttpConfig::new("127.0.0.1:0".parse().unwrap(), root, Arc::new(Catalog::load(root).unwrap()));
    tweak(&mut cfg);
    let server = rt.block_on(HttpServer::bind(cfg)).unwrap();
    let addr = server.local_addr();
    let ev = events.clone();
    rt.spawn(server.run(Arc::new(move |e| ev.lock().unwrap().push(e))));
    Server { addr, events, _rt: rt }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| u8::try_from(i * 7 % 251).unwrap()).collect()
}

/// A root with `image.bin` (10 000 bytes, last changed an hour ago so its date is a strong
/// validator).
fn root() -> (tempfile::TempDir, Vec<u8>) {
    let root = tempfile::tempdir().unwrap();
    let image = pattern(10_000);
    let p = root.path().join("image.bin");
    std::fs::write(&p, &image).unwrap();
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
    (root, image)
}

struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One GET of `path` with `extra` header lines, on a connection of its own.
fn get(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Got {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    Got { status, headers, body: raw[end..].to_vec() }
}

#[test]
fn ranges_follow_rfc_9110() {
    let (root, image) = root();
    let s = start(root.path(), |_| {});
    let range = ("Range", "bytes=0-4");

    // The validators the server sends.
    let part = get(s.addr, "/image.bin", &[range]);
    assert_eq!((part.status, part.body.as_slice()), (206, &image[..5]));
    let etag = part.header("etag").expect("an ETag").to_string();
    let date = part.header("last-modified").expect("a Last-Modified").to_string();

    // If-Range that matches: the part; that does not: the whole file.
    for (cond, status) in [
        (etag.as_str(), 206),
        (date.as_str(), 206),
        ("\"some-other-version\"", 200),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 200),
        ("W/\"weak\"", 200),
        ("garbage", 200),
    ] {
        let g = get(s.addr, "/image.bin", &[range, ("If-Range", cond)]);
        assert_eq!(g.status, status, "If-Range: {cond}");
        let want = if status == 206 { &image[..5] } else { &image[..] };
        assert!(g.body == want, "If-Range: {cond}: {} bytes", g.body.len());
    }

    // An unknown unit, or a range that does not parse: ignored.
    for r in ["items=0-5", "bytes=5-1", "bytes=x-"] {
        let g = get(s.addr, "/image.bin", &[("Range", r)]);
        assert_eq!((g.status, g.body.len()), (200, image.len()), "Range: {r}");
    }

    // Several satisfiable ranges: the whole file (no multipart); one satisfiable among
    // unsatisfiable ones: that one; none: 416.
    let g = get(s.addr, "/image.bin", &[("Range", "bytes=0-0,5-9")]);
    assert_eq!(g.status, 200);
    assert!(g.body == image);
    let g = get(s.addr, "/image.bin", &[("Range", "bytes=20000-30000, 10-19")]);
    assert_eq!((g.status, g.body.as_slice()), (206, &image[10..20]));
    assert_eq!(g.header("content-range"), Some("bytes 10-19/10000"));
    let g = get(s.addr, "/image.bin", &[("Range", "bytes=20000-30000,40000-")]);
    assert_eq!(g.status, 416);
    assert_eq!(g.header("content-range"), Some("bytes */10000"));
}

/// Send a request head one header line every 100 ms for up to `lines` lines on `s`; true
/// when the server closed the connection before the head was complete.
fn trickle(mut s: TcpStream, first: &str, lines: usize) -> bool {
    let mut reader = s.try_clone().unwrap();
    let closed = std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        loop {
            match reader.read(&mut b) {
                Ok(0) | Err(_) => return true,
                Ok(_) => {} // a response would be a failure; keep reading to the close
            }
        }
    });
    let _ = s.write_all(first.as_bytes());
    for i in 0..lines {
        std::thread::sleep(Duration::from_millis(100));
        if closed.is_finished() || s.write_all(format!("X-Slow-{i}: x\r\n").as_bytes()).is_err() {
            return true;
        }
    }
    closed.is_finished()
}

#[test]
fn a_client_that_trickles_its_request_head_is_cut_off() {
    let (root, image) = root();
    let s = start(root.path(), |c| c.head_deadline = Duration::from_millis(500));
    // 100 lines at 100 ms: 10 s of trickling, far beyond the deadline, every read within it.
    let c = TcpStream::connect(s.addr).unwrap();
    assert!(trickle(c, "GET /image.bin HTTP/1.1\r\n", 100), "the first head was never cut off");

    // The same on a keep-alive connection that went through the general path (a range
    // request), for its next head.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"GET /image.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(&image[..10]) {
        let n = c.read(&mut b).unwrap();
        assert!(n > 0, "closed before the first answer");
        got.extend(&b[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 206"));
    assert!(trickle(c, "GET /image.bin HTTP/1.1\r\n", 100), "the keep-alive head was never cut off");
    let ev = s.events.lock().unwrap().clone();
    let dropped = ev
        .iter()
        .filter(|e| matches!(e, HttpEvent::Dropped { reason, .. } if reason.contains("head deadline")))
        .count();
    assert_eq!(dropped, 2, "{ev:#?}");
}

/// Ask for `path` with `extra` headers, read nothing for 2 s, then read to the end: the
/// body bytes that arrived.
fn stall_then_read(addr: SocketAddr, extra: &str) -> usize {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(format!("GET /big.bin HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got: Vec<u8> = Vec::new();
    let mut b = vec![0u8; 1 << 20];
    loop {
        match c.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend(&b[..n]),
        }
        if got.len() > (64 << 20) {
            break; // the whole file and more: the server kept going
        }
    }
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
    got.len() - end
}

#[test]
fn a_client_that_never_reads_is_dropped() {
    let root = tempfile::tempdir().unwrap();
    let size = 64u64 << 20;
    std::fs::File::create(root.path().join("big.bin")).unwrap().set_len(size).unwrap();
    let s = start(root.path(), |c| c.send_stall = Duration::from_millis(300));
    // The sendfile path (a plain GET) and the general one (a range).
    for extra in ["", "Range: bytes=0-\r\n"] {
        let got = stall_then_read(s.addr, extra);
        assert!((got as u64) < size, "{extra:?}: the server went on sending to a client that read nothing");
    }
    let ev = s.events.lock().unwrap().clone();
    let dropped = ev
        .iter()
        .filter(|e| matches!(e, HttpEvent::Dropped { reason, .. } if reason.contains("send stall")))
        .count();
    assert_eq!(dropped, 2, "{ev:#?}");
}
