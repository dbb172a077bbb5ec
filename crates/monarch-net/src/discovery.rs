//! The network boot discovery flow for monarch agents, on real sockets: discovery → offer with size and
//! digest → the agent pre-posts a buffer of exactly that size → download request → bulk
//! transfer straight into the buffer → verify → hand over.
//!
//! Messages and the agent's decisions live in [`monarch_proto::netboot`]; this module is the
//! I/O around them:
//! - [`DiscoveryServer`] (tokio): answers DISCOVER datagrams for machines that have an
//!   `image` in the [`Catalog`](crate::catalog::Catalog) with an OFFER (size, digest — computed once per file version
//!   and cached — TCP port, a random token), and serves the download on TCP: it checks the
//!   token and streams exactly the offered number of bytes with `sendfile(2)` (the file's
//!   pages go from the page cache to the socket without a copy through this process; the
//!   reference design's RDMA offload is the hardware version of the same idea). A download
//!   holds one of [`DiscoveryConfig::max_transfers`] permits, so one whose client stops
//!   reading is cut off after [`DiscoveryConfig::send_stall`] without progress
//!   ([`DiscoveryEvent::Dropped`]) and gives its permit back.
//! - [`fetch`] (blocking, std sockets: the agent is a plain binary and needs no runtime):
//!   broadcasts/unicasts DISCOVER, rebroadcasting every `interval` until `give_up_after`,
//!   allocates one buffer of the offered size, reads the TCP stream straight into it,
//!   verifies, and returns the bytes; [`FetchError::NoServer`] when nobody answered in time,
//!   so the caller boots what it has.
//!
//! Both ends use port [`DEFAULT_PORT`] unless told otherwise (UDP for discovery, TCP for the
//! download).

use crate::EventSink;
use crate::catalog::SharedCatalog;
use crate::sendfile::{is_send_stall, send_stalled, sendfile_to};
use crate::spin::SpinSlot;
use monarch_proto::checksum::{Algo, Digest, Hasher};
use monarch_proto::fair::FairTable;
use monarch_proto::mac::Mac;
use monarch_proto::netboot::client::{
    Client, ClientAction, ClientConfig, ClientFailure, ClientInput, Outcome,
};
use monarch_proto::netboot::wire::{Download, MAX_MESSAGE, Message, Offer, RefuseCode, Token, frame_len};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OnceCell, Semaphore};

/// UDP port of the discovery service and TCP port of its downloads.
pub const DEFAULT_PORT: u16 = 4012;

/// Outstanding offers (tokens) kept at most by default; see [`DiscoveryConfig::max_offers`].
pub const DEFAULT_MAX_OFFERS: usize = 4096;
/// Outstanding offers one source may hold by default; see
/// [`DiscoveryConfig::max_offers_per_source`]. An agent takes the first offer it gets, so it
/// holds one or two (a rebroadcast crossing the offer); 16 leaves room for several agents
/// behind one address.
pub const DEFAULT_MAX_OFFERS_PER_SOURCE: usize = 16;
/// DISCOVERs handled at once (each may hash an image the first time); more are dropped and
/// the agent's rebroadcast tries again.
const MAX_PENDING_DISCOVERS: usize = 64;
/// How long a TCP client may take to send its DOWNLOAD request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a download may make no progress by default ([`DiscoveryConfig::send_stall`]):
/// the HTTP service's send stall. An agent reads straight into its pre-posted buffer, so
/// only a client that stopped reading (a hung or hostile one) gets near it.
pub const DEFAULT_SEND_STALL: Duration = Duration::from_secs(30);

/// What the discovery service needs.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// UDP address for DISCOVERs (`0.0.0.0:4012` receives broadcasts too).
    pub udp: SocketAddr,
    /// TCP address for downloads (its port goes into every OFFER).
    pub tcp: SocketAddr,
    /// Which machine gets which image (`image` field).
    pub catalog: SharedCatalog,
    /// Digest algorithm offered to agents.
    pub algo: Algo,
    /// Bind the UDP socket to this interface only (SO_BINDTODEVICE), so the service never
    /// answers on another network.
    pub interface: Option<String>,
    /// Send with `sendfile` (default); false = a plain read/write copy loop (for the bench).
    pub zero_copy: bool,
    /// How long an offer's token stays valid.
    pub token_ttl: Duration,
    /// Downloads served at once; more are refused with "busy".
    pub max_transfers: usize,
    /// Longest a download may make no progress (the client reads nothing) before it is cut
    /// off and its place among `max_transfers` freed ([`DEFAULT_SEND_STALL`]); reported as
    /// [`DiscoveryEvent::Dropped`].
    pub send_stall: Duration,
    /// Outstanding offers (tokens) kept at most ([`DEFAULT_MAX_OFFERS`]). When the table is
    /// full, a new offer evicts the oldest offer of the source holding the most.
    pub max_offers: usize,
    /// Outstanding offers one source may hold ([`DEFAULT_MAX_OFFERS_PER_SOURCE`]); its next
    /// offer replaces its oldest. A source is the DISCOVER's sender address, or for a sender
    /// without one (0.0.0.0) the MAC it claims. So a DISCOVER flood evicts its own offers:
    /// to evict an agent's offer it must come from as many sources as the table holds
    /// offers, within the offers' lifetime.
    pub max_offers_per_source: usize,
}

impl DiscoveryConfig {
    /// Defaults: BLAKE3 digests, sendfile, tokens valid 60 s, 32 transfers at once, each cut
    /// off after 30 s without progress.
    pub fn new(udp: SocketAddr, tcp: SocketAddr, catalog: impl Into<SharedCatalog>) -> DiscoveryConfig {
        DiscoveryConfig {
            udp,
            tcp,
            catalog: catalog.into(),
            algo: Algo::Blake3,
            interface: None,
            zero_copy: true,
            token_ttl: Duration::from_secs(60),
            max_transfers: 32,
            send_stall: DEFAULT_SEND_STALL,
            max_offers: DEFAULT_MAX_OFFERS,
            max_offers_per_source: DEFAULT_MAX_OFFERS_PER_SOURCE,
        }
    }
}

/// What the discovery service reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DiscoveryEvent {
    /// An image's digest was computed (once per file version).
    Hashed {
        /// Image path relative to the root.
        image: String,
        /// Bytes.
        size: u64,
        /// Time taken.
        millis: u64,
    },
    /// A DISCOVER was answered.
    Offered {
        /// The machine's address.
        peer: SocketAddr,
        /// Its MAC.
        mac: String,
        /// The image offered.
        image: String,
        /// Its size.
        size: u64,
        /// The transaction id.
        xid: u32,
    },
    /// A datagram got no answer (garbage, no image for this machine, busy…).
    Ignored {
        /// Sender.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A download request was refused.
    Refused {
        /// Sender.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A download completed.
    Sent {
        /// The machine.
        peer: SocketAddr,
        /// The image.
        image: String,
        /// Bytes sent.
        bytes: u64,
        /// From the request to the last byte.
        millis: u64,
        /// Sent with sendfile.
        zero_copy: bool,
    },
    /// A download was cut off because its client stopped reading: no progress for the send
    /// stall. Its transfer permit is free again when this is reported.
    Dropped {
        /// The machine.
        peer: SocketAddr,
        /// The image.
        image: String,
        /// Bytes sent before it stalled.
        bytes: u64,
        /// Which limit it hit.
        reason: String,
    },
    /// A download broke off.
    Failed {
        /// The machine.
        peer: SocketAddr,
        /// The image.
        image: String,
        /// Bytes sent before it broke off.
        bytes: u64,
        /// Why.
        reason: String,
    },
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A socket could not be set up.
    #[error("discovery service: cannot {what}: {error}: {fix}")]
    Socket {
        /// What was being done.
        what: String,
        /// The I/O error.
        error: io::Error,
        /// What to do about it.
        fix: &'static str,
    },
}

/// Who asked for an offer, as far as the service can tell: the sender's address, and for a
/// sender without one (0.0.0.0, an agent that has no address yet) the MAC it claims.
type Source = (IpAddr, Option<Mac>);

/// An offer's capability: what the token lets its holder download.
struct Grant {
    path: PathBuf,
    name: String,
    size: u64,
}

/// Cache key: a file version as far as metadata can tell. In-place corruption that keeps
/// size and mtime is not seen here — the agent's verification catches it.
type DigestKey = (PathBuf, u64, Option<SystemTime>, Algo);

struct Shared {
    catalog: SharedCatalog,
    algo: Algo,
    zero_copy: bool,
    ttl: Duration,
    send_stall: Duration,
    tcp_port: u16,
    events: EventSink<DiscoveryEvent>,
    digests: Mutex<HashMap<DigestKey, Arc<OnceCell<Digest>>>>,
    grants: Mutex<FairTable<Source, Token, Grant, Instant>>,
    transfers: Semaphore,
    pending: Semaphore,
}

/// A bound, not yet running discovery service.
pub struct DiscoveryServer {
    udp: UdpSocket,
    tcp: tokio::net::TcpListener,
    cfg: DiscoveryConfig,
}

impl DiscoveryServer {
    /// Bind both sockets (so [`DiscoveryServer::local_udp`]/[`DiscoveryServer::local_tcp`]
    /// are known before [`DiscoveryServer::run`]).
    pub async fn bind(cfg: DiscoveryConfig) -> Result<DiscoveryServer, DiscoveryError> {
        let udp = udp_socket(cfg.udp, cfg.interface.as_deref())
            .map_err(|(what, error, fix)| DiscoveryError::Socket { what, error, fix })?;
        let udp = UdpSocket::from_std(udp).map_err(|error| DiscoveryError::Socket {
            what: format!("register UDP {} with tokio", cfg.udp),
            error,
            fix: "this needs a tokio runtime with I/O enabled",
        })?;
        let tcp = tokio::net::TcpListener::bind(cfg.tcp).await.map_err(|error| DiscoveryError::Socket {
            what: format!("listen on TCP {}", cfg.tcp),
            error,
            fix: "choose another address/port or stop what uses it",
        })?;
        Ok(DiscoveryServer { udp, tcp, cfg })
    }

    /// The bound UDP address.
    pub fn local_udp(&self) -> SocketAddr {
        self.udp.local_addr().unwrap_or(self.cfg.udp)
    }

    /// The bound TCP address.
    pub fn local_tcp(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap_or(self.cfg.tcp)
    }

    /// Serve until the task is dropped.
    pub async fn run(self, events: EventSink<DiscoveryEvent>) -> io::Result<()> {
        let tcp_port = self.local_tcp().port();
        let st = Arc::new(Shared {
            catalog: self.cfg.catalog,
            algo: self.cfg.algo,
            zero_copy: self.cfg.zero_copy,
            ttl: self.cfg.token_ttl,
            send_stall: self.cfg.send_stall,
            tcp_port,
            events,
            digests: Mutex::new(HashMap::new()),
            grants: Mutex::new(FairTable::new(self.cfg.max_offers, self.cfg.max_offers_per_source)),
            transfers: Semaphore::new(self.cfg.max_transfers.max(1)),
            pending: Semaphore::new(MAX_PENDING_DISCOVERS),
        });
        let udp = Arc::new(self.udp);
        tokio::select! {
            r = udp_loop(udp, st.clone()) => r,
            r = tcp_loop(self.tcp, st) => r,
        }
    }
}

fn udp_socket(
    addr: SocketAddr,
    interface: Option<&str>,
) -> Result<std::net::UdpSocket, (String, io::Error, &'static str)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |what: String, fix| move |e| (what, e, fix);
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(err("create a UDP socket".into(), "check the system's socket limits"))?;
    let _ = s.set_reuse_address(true);
    s.set_broadcast(true).map_err(err("enable broadcast".into(), "check the system"))?;
    if let Some(i) = interface {
        s.bind_device(Some(i.as_bytes())).map_err(err(
            format!("bind to interface {i}"),
            "check the interface name (ip link) and run as root (SO_BINDTODEVICE)",
        ))?;
    }
    s.bind(&addr.into())
        .map_err(err(format!("bind UDP {addr}"), "choose another address/port or stop what uses it"))?;
    s.set_nonblocking(true).map_err(err("make the socket non-blocking".into(), "check the system"))?;
    Ok(s.into())
}

async fn udp_loop(udp: Arc<UdpSocket>, st: Arc<Shared>) -> io::Result<()> {
    // One byte more than any valid message, so an oversized datagram is seen as such.
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    loop {
        let (n, peer) = match udp.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors from earlier replies surface here on some systems: not fatal.
            Err(_) => continue,
        };
        let ignore = |reason: String| (st.events)(DiscoveryEvent::Ignored { peer, reason });
        match Message::decode(&buf[..n]) {
            Ok(Message::Discover(d)) => match st.pending.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    let (st, udp) = (st.clone(), udp.clone());
                    tokio::spawn(async move {
                        answer(&st, &udp, peer, d).await;
                        st.pending.add_permits(1);
                    });
                }
                Err(_) => ignore("too many discoveries in progress; the agent will rebroadcast".into()),
            },
            Ok(other) => ignore(format!("not a DISCOVER: {other:?}")),
            Err(e) => ignore(e.to_string()),
        }
    }
}

/// Answer one DISCOVER (or say why not in an event).
async fn answer(st: &Shared, udp: &UdpSocket, peer: SocketAddr, d: monarch_proto::netboot::wire::Discover) {
    let ignore = |reason: String| (st.events)(DiscoveryEvent::Ignored { peer, reason });
    let mac = d.mac.to_string();
    let catalog = st.catalog.get();
    let Some(image) = catalog.lookup(Some(d.mac)).and_then(|m| m.image.clone()) else {
        // Seed: a server with no data block for this machine stays silent.
        return ignore(format!("no image for {mac} in the catalog"));
    };
    let path = match catalog.resolve(&image) {
        Ok(p) => p,
        Err(e) => return ignore(format!("image {image} for {mac}: {e}")),
    };
    let (size, digest) = match digest_of(st, &image, &path).await {
        Ok(x) => x,
        Err(e) => return ignore(format!("image {image} for {mac}: cannot read: {e}")),
    };
    let token = match random::<16>() {
        Ok(t) => Token(t),
        Err(e) => return ignore(format!("no randomness for a token (/dev/urandom): {e}")),
    };
    {
        let mut grants = st.grants.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let ip = peer.ip().to_canonical();
        let source = (ip, ip.is_unspecified().then_some(d.mac));
        let expires = now + st.ttl;
        grants.insert(source, token, Grant { path, name: image.clone(), size }, now, expires);
    }
    let offer =
        Offer { xid: d.xid, name: image.clone(), size, algo: st.algo, digest, tcp_port: st.tcp_port, token };
    // A machine without an address yet sends from 0.0.0.0: answer by broadcast.
    let to = if peer.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), peer.port())
    } else {
        peer
    };
    match udp.send_to(&Message::Offer(offer).encode(), to).await {
        Ok(_) => (st.events)(DiscoveryEvent::Offered { peer, mac, image, size, xid: d.xid }),
        Err(e) => ignore(format!("cannot send the offer to {to}: {e}")),
    }
}

/// The size and digest of the file at `path`, hashed once per (path, size, mtime, algo).
async fn digest_of(st: &Shared, image: &str, path: &PathBuf) -> io::Result<(u64, Digest)> {
    let meta = std::fs::metadata(path)?;
    let key = (path.clone(), meta.len(), meta.modified().ok(), st.algo);
    let cell = st.digests.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone();
    let digest = cell
        .get_or_try_init(|| async {
            let (path, algo, start) = (path.clone(), st.algo, Instant::now());
            let d = tokio::task::spawn_blocking(move || hash_file(&path, algo))
                .await
                .map_err(|e| io::Error::other(format!("hashing task failed: {e}")))??;
            (st.events)(DiscoveryEvent::Hashed {
                image: image.to_string(),
                size: meta.len(),
                millis: ms(start),
            });
            Ok::<_, io::Error>(d)
        })
        .await?;
    Ok((meta.len(), *digest))
}

fn hash_file(path: &PathBuf, algo: Algo) -> io::Result<Digest> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Hasher::new(algo);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(h.finish()),
            n => h.update(&buf[..n]),
        }
    }
}

async fn tcp_loop(listener: tokio::net::TcpListener, st: Arc<Shared>) -> io::Result<()> {
    loop {
        let (stream, peer) = crate::accept(&listener).await;
        let st = st.clone();
        tokio::spawn(async move { download(&st, stream, peer).await });
    }
}

async fn read_frame(stream: &mut TcpStream) -> Result<Message, String> {
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).await.map_err(|e| format!("no request: {e}"))?;
    let len = frame_len(prefix).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| format!("truncated request: {e}"))?;
    Message::decode(&body).map_err(|e| e.to_string())
}

/// Serve one download connection.
async fn download(st: &Shared, mut stream: TcpStream, peer: SocketAddr) {
    let refused = |reason: String| (st.events)(DiscoveryEvent::Refused { peer, reason });
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut stream)).await {
        Ok(Ok(Message::Download(d))) => d,
        Ok(Ok(other)) => return refused(format!("not a DOWNLOAD: {other:?}")),
        Ok(Err(e)) => return refused(e),
        Err(_) => return refused(format!("no DOWNLOAD request within {REQUEST_TIMEOUT:?}")),
    };
    let Download { xid, token, size } = req;
    let mut refuse = async |code: RefuseCode, reason: String| {
        let _ = stream.write_all(&Message::Refuse { xid, code, reason: reason.clone() }.frame()).await;
        refused(reason);
    };
    let grant = {
        let grants = st.grants.lock().unwrap_or_else(|p| p.into_inner());
        grants.get(&token, Instant::now()).map(|g| (g.path.clone(), g.name.clone(), g.size))
    };
    let Some((path, name, granted)) = grant else {
        return refuse(RefuseCode::BadToken, "unknown or expired token: discover again".into()).await;
    };
    if size != granted {
        let why = format!("{name}: request for {size} bytes, the offer was {granted}: discover again");
        return refuse(RefuseCode::Changed, why).await;
    }
    let Ok(permit) = st.transfers.try_acquire() else {
        return refuse(RefuseCode::Busy, "too many transfers in progress: try again shortly".into()).await;
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => return refuse(RefuseCode::Unavailable, format!("{name}: cannot open: {e}")).await,
    };
    match file.metadata() {
        Ok(m) if m.len() == size => {}
        Ok(m) => {
            let why = format!("{name} is now {} bytes, the offer was {size}: discover again", m.len());
            return refuse(RefuseCode::Changed, why).await;
        }
        Err(e) => return refuse(RefuseCode::Unavailable, format!("{name}: {e}")).await,
    }
    let start = Instant::now();
    let stall = st.send_stall;
    let accept = Message::Accept { xid, size }.frame();
    let sent = match tokio::time::timeout(stall, stream.write_all(&accept)).await {
        Ok(Ok(())) if st.zero_copy => sendfile_to(&stream, &file, 0, size, stall, &SpinSlot::never()).await,
        Ok(Ok(())) => copy_to(&mut stream, file, size, stall).await,
        Ok(Err(e)) => Err((0, e)),
        Err(_) => Err((0, send_stalled(stall))),
    };
    let event = match sent {
        Ok(bytes) if bytes == size => {
            DiscoveryEvent::Sent { peer, image: name, bytes, millis: ms(start), zero_copy: st.zero_copy }
        }
        Ok(bytes) => DiscoveryEvent::Failed {
            peer,
            image: name,
            bytes,
            reason: "the file shrank during the transfer".into(),
        },
        Err((bytes, e)) if is_send_stall(&e) => {
            DiscoveryEvent::Dropped { peer, image: name, bytes, reason: e.to_string() }
        }
        Err((bytes, e)) => DiscoveryEvent::Failed { peer, image: name, bytes, reason: e.to_string() },
    };
    let _ = stream.shutdown().await;
    drop(stream);
    // Free before reporting, so whoever sees the event finds the permit back.
    drop(permit);
    (st.events)(event);
}

/// The plain alternative to [`sendfile_to`]: read 1 MiB, write it, repeat (two copies per
/// byte through this process). Kept for the bench's comparison. The same send stall: each
/// write must take some bytes within `stall`.
async fn copy_to(
    stream: &mut TcpStream,
    mut file: std::fs::File,
    size: u64,
    stall: Duration,
) -> Result<u64, (u64, io::Error)> {
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    while sent < size {
        let want = usize::try_from(size - sent).unwrap_or(usize::MAX).min(buf.len());
        let n = file.read(&mut buf[..want]).map_err(|e| (sent, e))?;
        if n == 0 {
            break;
        }
        let mut at = 0;
        while at < n {
            let w = tokio::time::timeout(stall, stream.write(&buf[at..n]))
                .await
                .map_err(|_| (sent, send_stalled(stall)))?
                .map_err(|e| (sent, e))?;
            if w == 0 {
                return Err((sent, io::ErrorKind::WriteZero.into()));
            }
            at += w;
            sent += w as u64;
        }
    }
    Ok(sent)
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// `N` random bytes from the kernel.
fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

// ---------------------------------------------------------------------------------------
// The agent side.
// ---------------------------------------------------------------------------------------

/// What the agent fetches, from where, and how long it waits.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Where DISCOVERs go: a server's address, or a broadcast address
    /// (`255.255.255.255:4012`, sent with SO_BROADCAST).
    pub server: SocketAddr,
    /// Send and receive on this interface only (SO_BINDTODEVICE; needed for
    /// `255.255.255.255` on a machine with several interfaces).
    pub interface: Option<String>,
    /// This machine's MAC (the catalog key).
    pub mac: Mac,
    /// The image the machine already has: an offer of the same digest ends the fetch with
    /// [`FetchError::UpToDate`] and nothing is transferred.
    pub current: Option<(Algo, Digest)>,
    /// Rebroadcast every this long while nobody answers.
    pub interval: Duration,
    /// Give up this long after the first DISCOVER.
    pub give_up_after: Duration,
    /// Refuse offers above this size (the buffer is one allocation of the offered size).
    pub max_size: u64,
    /// Bound on every TCP wait (connect, each read).
    pub io_timeout: Duration,
}

impl FetchConfig {
    /// Rebroadcast every second, give up after 10 s, images up to 4 GiB, 30 s I/O timeout.
    pub fn new(server: SocketAddr, mac: Mac) -> FetchConfig {
        FetchConfig {
            server,
            interface: None,
            mac,
            current: None,
            interval: Duration::from_secs(1),
            give_up_after: Duration::from_secs(10),
            max_size: 4 << 30,
            io_timeout: Duration::from_secs(30),
        }
    }
}

/// Where the time went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct FetchTimings {
    /// First DISCOVER to the OFFER.
    pub discover: Duration,
    /// Buffer posted and download requested, to the last byte in the buffer.
    pub transfer: Duration,
    /// Computing the digest of the buffer.
    pub verify: Duration,
}

/// A verified image, in the buffer that was pre-posted for it.
#[derive(Debug)]
pub struct Fetched {
    /// What the server offered (name, size, digest…).
    pub offer: Offer,
    /// The server's download address.
    pub server: SocketAddr,
    /// The image: exactly `offer.size` bytes, verified against `offer.digest`.
    pub bytes: Vec<u8>,
    /// DISCOVERs sent before the offer.
    pub discovers: u32,
    /// Timings.
    pub timings: FetchTimings,
}

/// Why no new image was fetched. [`FetchError::keeps_local_image`] tells the caller whether
/// booting the image it already has is the right next step.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Nobody answered in time.
    #[error(
        "no boot server answered {discovers} discoveries sent to {server} in {waited:?}: continuing with the local image"
    )]
    NoServer {
        /// Where the DISCOVERs went.
        server: SocketAddr,
        /// From the first DISCOVER to giving up.
        waited: Duration,
        /// DISCOVERs sent.
        discovers: u32,
    },
    /// The server offers the image this machine already has.
    #[error("the boot server offers {}, which this machine already has: continuing with the local image", .0.name)]
    UpToDate(Offer),
    /// The flow failed (refused, broken transfer, corrupted data…); nothing is handed over.
    #[error(transparent)]
    Failed(#[from] ClientFailure),
    /// A local socket could not be set up.
    #[error("cannot {what}: {error}: {fix}")]
    Socket {
        /// What was being done.
        what: String,
        /// The I/O error.
        error: io::Error,
        /// What to do about it.
        fix: &'static str,
    },
}

impl FetchError {
    /// True when the caller should go on with the image it has (no server, or already current).
    pub fn keeps_local_image(&self) -> bool {
        matches!(self, FetchError::NoServer { .. } | FetchError::UpToDate(_))
    }
}

/// Run the reference design's flow as the agent: discover, pre-post a buffer of the offered size, download
/// straight into it, verify. Blocking (std sockets, no runtime): call it from a plain binary,
/// or from `spawn_blocking`.
pub fn fetch(cfg: &FetchConfig) -> Result<Fetched, FetchError> {
    let sock = client_socket(cfg)?;
    let xid = random::<4>().map(u32::from_le_bytes).unwrap_or_else(|_| {
        // No /dev/urandom: any value distinct per process and boot attempt will do.
        std::process::id()
            ^ SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
    });
    let mut client = Client::new(ClientConfig {
        xid,
        mac: cfg.mac,
        current: cfg.current,
        interval: cfg.interval,
        give_up_after: cfg.give_up_after,
        max_size: cfg.max_size,
    });
    let t0 = Instant::now();
    let mut offer_from: Option<SocketAddr> = None;
    let mut buf: Vec<u8> = Vec::new();
    let mut conn: Option<std::net::TcpStream> = None;
    let mut discovers = 0u32;
    let mut timings = FetchTimings::default();
    let mut mark = t0;
    let mut dgram = vec![0u8; MAX_MESSAGE + 1];
    let mut pending: std::collections::VecDeque<ClientAction> =
        client.handle(t0.elapsed(), ClientInput::Start).into();
    loop {
        let Some(action) = pending.pop_front() else {
            // Nothing to do but wait for an answer (or the next rebroadcast).
            let deadline = client.deadline().unwrap_or(Duration::ZERO);
            let wait = deadline.saturating_sub(t0.elapsed()).max(Duration::from_millis(1));
            let _ = sock.set_read_timeout(Some(wait));
            let actions = match sock.recv_from(&mut dgram) {
                Ok((n, from)) => {
                    let a = client.handle(t0.elapsed(), ClientInput::Datagram(&dgram[..n]));
                    if !a.is_empty() {
                        offer_from = Some(from);
                    }
                    a
                }
                Err(_) => client.handle(t0.elapsed(), ClientInput::Tick),
            };
            pending.extend(actions);
            continue;
        };
        let why: String;
        let next = match action {
            ClientAction::SendDiscover(b) => {
                // A failed send (no route yet…) is like an unanswered one: the client rebroadcasts.
                let _ = sock.send_to(&b, cfg.server);
                discovers += 1;
                continue;
            }
            ClientAction::PostBuffer { size } => {
                timings.discover = t0.elapsed();
                mark = Instant::now();
                // The reference design's pre-posted buffer: one allocation of exactly the offered size,
                // made before the download is requested (try_reserve: a failure is an error,
                // not an abort).
                match usize::try_from(size).ok().filter(|s| buf.try_reserve_exact(*s).is_ok()) {
                    Some(_) => ClientInput::BufferPosted,
                    None => ClientInput::BufferFailed,
                }
            }
            ClientAction::RequestDownload { tcp_port, frame } => {
                // The offer came from somewhere: it was a datagram we received.
                let from = offer_from.map_or(cfg.server.ip(), |a| a.ip());
                let addr = SocketAddr::new(from, tcp_port);
                match request(addr, &frame, cfg.io_timeout) {
                    Ok((stream, reply)) => {
                        conn = Some(stream);
                        let a = client.handle(t0.elapsed(), ClientInput::Reply(&reply));
                        pending.extend(a);
                        continue;
                    }
                    Err(e) => {
                        why = format!("download request to {addr}: {e}");
                        ClientInput::TransferFailed(&why)
                    }
                }
            }
            ClientAction::Receive { size } => match conn.take() {
                // Straight into the posted buffer: `take` stops at exactly `size` bytes, and
                // with the capacity reserved above `read_to_end` never reallocates.
                Some(stream) => match stream.take(size).read_to_end(&mut buf) {
                    Ok(_) if buf.len() as u64 == size => {
                        timings.transfer = mark.elapsed();
                        ClientInput::Received
                    }
                    Ok(_) => {
                        why = format!("the server closed the connection after {} of {size} bytes", buf.len());
                        ClientInput::TransferFailed(&why)
                    }
                    Err(e) => {
                        why = match e.kind() {
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                                "no data for {:?} after {} of {size} bytes",
                                cfg.io_timeout,
                                buf.len()
                            ),
                            _ => format!("after {} of {size} bytes: {e}", buf.len()),
                        };
                        ClientInput::TransferFailed(&why)
                    }
                },
                None => ClientInput::TransferFailed("no connection"),
            },
            ClientAction::Verify { algo } => {
                let start = Instant::now();
                let d = algo.digest(&buf);
                timings.verify = start.elapsed();
                ClientInput::Verified(d)
            }
            ClientAction::Finish(outcome) => {
                return match outcome {
                    Outcome::Delivered(offer) => {
                        let server = SocketAddr::new(
                            offer_from.map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |a| a.ip()),
                            offer.tcp_port,
                        );
                        Ok(Fetched { offer, server, bytes: buf, discovers, timings })
                    }
                    Outcome::UpToDate(offer) => Err(FetchError::UpToDate(offer)),
                    Outcome::NoServer { waited, discovers } => {
                        Err(FetchError::NoServer { server: cfg.server, waited, discovers })
                    }
                    Outcome::Failed(f) => Err(FetchError::Failed(f)),
                };
            }
        };
        pending.extend(client.handle(t0.elapsed(), next));
    }
}

fn client_socket(cfg: &FetchConfig) -> Result<std::net::UdpSocket, FetchError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |what: String, fix| move |error| FetchError::Socket { what, error, fix };
    let s = Socket::new(Domain::for_address(cfg.server), Type::DGRAM, Some(Protocol::UDP))
        .map_err(err("create a UDP socket".into(), "check the system's socket limits"))?;
    s.set_broadcast(true).map_err(err("enable broadcast".into(), "check the system"))?;
    if let Some(i) = &cfg.interface {
        s.bind_device(Some(i.as_bytes())).map_err(err(
            format!("bind to interface {i}"),
            "check the interface name (ip link) and run as root (SO_BINDTODEVICE)",
        ))?;
    }
    let any: SocketAddr = match cfg.server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    s.bind(&any.into()).map_err(err("bind a UDP port".into(), "check the system"))?;
    Ok(s.into())
}

/// Connect, send the DOWNLOAD frame, read the reply frame.
fn request(addr: SocketAddr, frame: &[u8], timeout: Duration) -> io::Result<(std::net::TcpStream, Vec<u8>)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(frame)?;
    let mut prefix = [0u8; 2];
    s.read_exact(&mut prefix)?;
    let len = frame_len(prefix).map_err(io::Error::other)?;
    let mut reply = vec![0u8; len];
    s.read_exact(&mut reply)?;
    Ok((s, reply))
}
