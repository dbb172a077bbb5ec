//! A read-only TFTP server on tokio: RFC 1350 octet mode with the options of RFC 2347/2348/2349
//! (blksize, tsize, timeout) and RFC 7440 (windowsize), confined to one root directory.
//!
//! All protocol decisions (parsing, negotiation, windows, retransmission, rollover) are the
//! sans-IO [`monarch_proto::tftp`]; this module only moves its actions onto sockets and files:
//! - One listening socket (async, on tokio) takes requests and checks them
//!   ([`check_read_request`]: octet mode, no absolute path, no `..`); a bad one is answered
//!   with a TFTP ERROR from the service port and costs nothing more.
//! - Each accepted read gets a fresh UDP socket (a new transfer ID, RFC 1350), connected to
//!   the client so the kernel drops datagrams from anyone else, and runs on tokio's blocking
//!   pool: a transfer is a strict send/wait-for-ACK loop, and a thread blocked in `recv` is
//!   woken directly by the kernel, where an async task paid an epoll round and often a
//!   cross-thread wake-up per ACK (slower than tftpd-hpa at window 1). Transfers are tracked
//!   in a `JoinSet` owned by [`TftpServer::run`]; dropping `run` raises a stop flag that every
//!   transfer checks at least every 100 ms (it then sends ERROR "shutting down").
//! - Confinement: the path is resolved with `canonicalize` and must lie inside the
//!   canonical root, so a symlink pointing out is refused (error 2) while symlinks within the
//!   root work; it is then opened with `openat2(RESOLVE_NO_SYMLINKS)`, so a symlink swapped in
//!   between the check and the open is refused rather than followed. Only regular files.
//! - Speed: the file is read with `preadv` straight into a row of ready-made DATA packets
//!   (see `Source`; up to ~2 MiB at a time, or a few windows ahead while the client is busy
//!   with the last one), so a packet is never copied in user space; a window goes out in one
//!   `send` with UDP segmentation offload (GSO) where the kernel allows it. The steady state
//!   makes one `recv` and one `send` per window and allocates nothing. Requests beyond
//!   `max_transfers` running, or beyond `max_per_source` running for the requester's address
//!   (any port: a flood of RRQs that never ACK takes at most that many slots), get
//!   "server busy" ([`monarch_proto::fair::Admission`]). A transfer that is never
//!   acknowledged gives its slot back after `retries + 1` timeouts, and a client cannot
//!   stretch that with the `timeout` option beyond [`TftpConfig::max_timeout`].
//! - Latency: after sending, a transfer polls its socket for the ACK for a moment
//!   ([`DEFAULT_SPIN`], at most `max_spinning` transfers at once) before sleeping, so it is
//!   already awake when the ACK lands; on a VM that halves the wake-ups of a lock-step
//!   transfer, which is what bounds it.
//!
//! What the server does is reported through an [`EventSink`] of [`TftpEvent`]s.

use crate::EventSink;
use crate::spin::{Backoff, SpinSlots};
use monarch_proto::fair::Admission;
use monarch_proto::tftp::negotiate::ServerConfig;
use monarch_proto::tftp::request::{Refusal, check_read_request};
use monarch_proto::tftp::transfer::{Action, Input, ReadTransfer};
use monarch_proto::tftp::wire::{self as proto, ErrorCode, Packet};
use serde::Serialize;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

/// A progress event after this long without one (if bytes moved)…
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// …or after this many bytes since the last, whichever comes first: a few events per
/// image at hundreds of MiB/s, and a sign of life each second on a slow link.
const PROGRESS_BYTES: u64 = 16 << 20;
/// Receive buffer for the listener: a whole UDP datagram, so an oversized request is seen
/// whole (and refused by its length) rather than truncated into something else.
const LISTEN_BUF: usize = 65536;
/// Receive buffer of a transfer: clients only send ACKs and ERRORs; a longer datagram is
/// truncated, which at worst cuts an ERROR's message.
const TRANSFER_BUF: usize = 2048;

/// How to run the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpConfig {
    /// Where requests arrive (the standard port is 69). Transfers use fresh ports on the
    /// same address.
    pub bind: SocketAddr,
    /// The directory served; nothing outside it is ever read.
    pub root: PathBuf,
    /// Largest block size granted (RFC 2348 allows 8..=65464).
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440); clients that ask for more get this.
    pub max_windowsize: u16,
    /// Retransmission timeout when the client does not negotiate one (or asks for more than
    /// `max_timeout`).
    pub timeout: Duration,
    /// Longest retransmission timeout a client may negotiate (RFC 2349 `timeout` option);
    /// a request for more is declined (the option is left out of the OACK, whose value must
    /// match the client's) and runs on `timeout`. See
    /// [`DEFAULT_MAX_TIMEOUT`](monarch_proto::tftp::negotiate::DEFAULT_MAX_TIMEOUT).
    pub max_timeout: Duration,
    /// Retransmissions of one window before a transfer is abandoned. With the timeouts
    /// above, a transfer whose client stops answering ends (event `failed`, its slot freed)
    /// `retries + 1` timeouts after its last progress: at most
    /// `(retries + 1) × max(timeout, max_timeout)`.
    pub retries: u32,
    /// Transfers running at once; more requests get TFTP error 0 "server busy".
    pub max_transfers: usize,
    /// Transfers running at once for one client address (any of its ports), so a flood of
    /// requests that never ACK — from one address, or forged as one — cannot take every
    /// slot of `max_transfers`; more from that address get "server busy". See
    /// [`DEFAULT_MAX_PER_SOURCE`].
    pub max_per_source: usize,
    /// How long a transfer polls its socket for the client's ACK before sleeping in `recv`
    /// (zero: never poll). See [`DEFAULT_SPIN`].
    pub spin: Duration,
    /// Transfers that may poll at the same time; the others sleep in `recv` from the start.
    /// Default: one less than the cores (at least one), so the clients and the rest of the
    /// machine keep a core.
    pub max_spinning: usize,
}

/// How long a transfer polls for an ACK before it sleeps: a little more than a fast client
/// takes to answer a window (atftp: ~60–120 µs for 16 blocks here).
///
/// Why poll at all: a lock-step transfer is two wake-ups per block (or per window), one on
/// each side, and on a virtual machine a vCPU that went idle takes 20–40 µs to wake (it
/// halts, and the hypervisor must deliver an interrupt): that, not CPU, bounded both this
/// server and tftpd-hpa at window 1. A transfer that keeps polling for a moment sees the
/// ACK the instant the client's `sendto` queues it and sends the next block without
/// sleeping, so only the client's wake-up is left. The price is the polling core, which is
/// why the time is short, the number of polling transfers is capped
/// ([`TftpConfig::max_spinning`]), and a transfer whose client is slower than the budget
/// (8 polls in a row that missed) sleeps as before, polling again only now and then.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(DEFAULT_SPIN_MICROS);
/// [`DEFAULT_SPIN`] in microseconds (the command line's unit).
pub const DEFAULT_SPIN_MICROS: u64 = 250;
/// Transfers one client address may run at once: firmware fetches one file at a time (a
/// boot loader and then its kernel, or a few machines behind one NAT), so 8 is plenty for
/// real clients and keeps a flood from one address to 8 of the 128 slots.
pub const DEFAULT_MAX_PER_SOURCE: usize = 8;

impl TftpConfig {
    /// Serve `root` on `bind` with the defaults of [`ServerConfig`] (blksize up to 65464,
    /// windows up to 64, 1 s timeout, clients may ask for up to 10 s, 5 retries), at most
    /// 128 transfers at once and
    /// [`DEFAULT_MAX_PER_SOURCE`] per client address.
    pub fn new(bind: SocketAddr, root: impl Into<PathBuf>) -> TftpConfig {
        let d = ServerConfig::default();
        TftpConfig {
            bind,
            root: root.into(),
            max_blksize: d.max_blksize,
            max_windowsize: d.max_windowsize,
            timeout: d.timeout,
            max_timeout: d.max_timeout,
            retries: d.retries,
            max_transfers: 128,
            max_per_source: DEFAULT_MAX_PER_SOURCE,
            spin: DEFAULT_SPIN,
            max_spinning: crate::spin::default_max_spinning(),
        }
    }

    fn proto(&self) -> ServerConfig {
        ServerConfig {
            max_blksize: self.max_blksize,
            max_windowsize: self.max_windowsize,
            timeout: self.timeout,
            max_timeout: self.max_timeout,
            retries: self.retries,
        }
    }
}

/// What the server reports. Serialized with an `"event"` tag, for `--json` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TftpEvent {
    /// A transfer began (after the file was opened and options negotiated).
    Started {
        /// The client.
        peer: SocketAddr,
        /// The file, relative to the root.
        file: String,
        /// Its size in bytes.
        size: u64,
        /// Negotiated block size.
        blksize: u16,
        /// Negotiated window size.
        windowsize: u16,
    },
    /// Bytes acknowledged so far: after every 16 MiB, or after 1 s, whichever comes first.
    Progress {
        /// The client.
        peer: SocketAddr,
        /// The file.
        file: String,
        /// Bytes acknowledged.
        bytes: u64,
        /// The file's size.
        total: u64,
    },
    /// The client acknowledged the whole file.
    Finished {
        /// The client.
        peer: SocketAddr,
        /// The file.
        file: String,
        /// Bytes delivered.
        bytes: u64,
        /// Time from the request to the last ACK.
        millis: u64,
    },
    /// A transfer that had started ended without success.
    Failed {
        /// The client.
        peer: SocketAddr,
        /// The file.
        file: String,
        /// Bytes acknowledged before it ended.
        bytes: u64,
        /// Why (a client ERROR, a timeout, a read error).
        reason: String,
    },
    /// A request was answered with a TFTP error and no transfer.
    Refused {
        /// The client.
        peer: SocketAddr,
        /// The file asked for (as sent; empty if the request did not parse).
        file: String,
        /// The error sent, with its code.
        reason: String,
    },
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// The listening socket.
    #[error(
        "cannot bind the TFTP server to {addr}: {source} (port 69 needs root or CAP_NET_BIND_SERVICE; \
         is another TFTP server running? choose another address or port)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The root directory.
    #[error("TFTP root {}: {source} (create the directory, or serve another one)", path.display())]
    Root {
        /// The root as configured.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// A bound, not yet running, TFTP server.
#[derive(Debug)]
pub struct TftpServer {
    socket: UdpSocket,
    local: SocketAddr,
    root: Arc<PathBuf>,
    cfg: TftpConfig,
    /// The transfers' polling ([`TftpConfig::spin`], [`TftpConfig::max_spinning`]).
    spinning: SpinSlots,
}

impl TftpServer {
    /// Check the root (it must be a directory) and bind the listening socket.
    pub async fn bind(cfg: TftpConfig) -> Result<TftpServer, TftpError> {
        let root = std::fs::canonicalize(&cfg.root)
            .and_then(|r| {
                if r.is_dir() {
                    Ok(r)
                } else {
                    Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"))
                }
            })
            .map_err(|source| TftpError::Root { path: cfg.root.clone(), source })?;
        let socket =
            UdpSocket::bind(cfg.bind).await.map_err(|source| TftpError::Bind { addr: cfg.bind, source })?;
        let local = socket.local_addr().map_err(|source| TftpError::Bind { addr: cfg.bind, source })?;
        let spinning = SpinSlots::new(cfg.spin, cfg.max_spinning);
        Ok(TftpServer { socket, local, root: Arc::new(root), cfg, spinning })
    }

    /// The address requests go to (with the port the OS chose, if the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serve until this future is dropped or its task aborted (which also ends every
    /// transfer in flight).
    pub async fn run(self, events: EventSink<TftpEvent>) {
        let mut transfers = JoinSet::new();
        // Transfers run on blocking threads, which an abort cannot interrupt: they watch this
        // flag, raised when `run` is dropped, and end within one tick.
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let mut buf = vec![0u8; LISTEN_BUF];
        let mut reply = Vec::with_capacity(512);
        let admission = Arc::new(Mutex::new(Admission::new(self.cfg.max_transfers, self.cfg.max_per_source)));
        loop {
            let (n, peer) = match self.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(_) => {
                    // Transient (e.g. an ICMP error surfacing on the socket, ENOMEM): wait a
                    // moment so a persistent one cannot spin a core.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            while transfers.try_join_next().is_some() {}
            let datagram = &buf[..n];
            let refusal = match proto::parse(datagram) {
                // The request is checked here so a bad one costs no task or socket.
                Ok(p @ (Packet::Rrq(_) | Packet::Wrq(_))) => match check_read_request(&p) {
                    Ok(path) => match Slot::take(&admission, peer.ip()) {
                        Ok(slot) => {
                            let t = Transfer {
                                peer,
                                path,
                                request: datagram.to_vec(),
                                root: Arc::clone(&self.root),
                                cfg: self.cfg.clone(),
                                local_ip: self.local.ip(),
                                events: Arc::clone(&events),
                                spinning: self.spinning.clone(),
                                _slot: slot,
                            };
                            let stop = Arc::clone(&stop.0);
                            transfers.spawn_blocking(move || t.run(stop));
                            None
                        }
                        Err(busy) => Some((
                            requested_name(&p),
                            Refusal { code: ErrorCode::NotDefined, message: busy.to_string() },
                        )),
                    },
                    Err(r) => Some((requested_name(&p), r)),
                },
                // DATA, ACK, ERROR or OACK to the service port belong to no transfer; answering
                // them could start an error ping-pong with another server.
                Ok(_) => None,
                // A request that does not parse gets an ERROR saying what is wrong; other
                // garbage gets nothing.
                Err(e) if matches!(datagram, [0, 1 | 2, ..]) => Some((
                    String::new(),
                    Refusal { code: ErrorCode::IllegalOperation, message: format!("malformed request: {e}") },
                )),
                Err(_) => None,
            };
            if let Some((file, r)) = refusal {
                reply.clear();
                proto::encode_error(r.code, &r.message, &mut reply);
                let _ = self.socket.send_to(&reply, peer).await;
                events(TftpEvent::Refused { peer, file, reason: r.to_string() });
            }
        }
    }
}

/// A transfer's place in the [`Admission`] count, given back when the transfer ends (or its
/// thread unwinds).
struct Slot {
    admission: Arc<Mutex<Admission<IpAddr>>>,
    source: IpAddr,
}

impl Slot {
    /// Take a place for a transfer to `peer` (IPv4-mapped IPv6 addresses count as IPv4).
    fn take(
        admission: &Arc<Mutex<Admission<IpAddr>>>,
        peer: IpAddr,
    ) -> Result<Slot, monarch_proto::fair::Busy> {
        let source = peer.to_canonical();
        admission.lock().unwrap_or_else(|p| p.into_inner()).admit(&source)?;
        Ok(Slot { admission: Arc::clone(admission), source })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.lock().unwrap_or_else(|p| p.into_inner()).release(&self.source);
    }
}

/// Raises its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn requested_name(p: &Packet<'_>) -> String {
    match p {
        Packet::Rrq(r) | Packet::Wrq(r) => r.filename.to_string(),
        _ => String::new(),
    }
}

/// One read transfer, from opening the file to the last ACK.
struct Transfer {
    peer: SocketAddr,
    path: String,
    request: Vec<u8>,
    root: Arc<PathBuf>,
    cfg: TftpConfig,
    local_ip: IpAddr,
    events: EventSink<TftpEvent>,
    spinning: SpinSlots,
    /// Released when the transfer ends.
    _slot: Slot,
}

/// Resolve `rel` beneath `root` and open it for reading, or say which TFTP error to send.
fn open_beneath(root: &Path, rel: &str) -> Result<(std::fs::File, u64), Refusal> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let refuse = |code, message: String| Refusal { code, message };
    let full = root.join(rel);
    let canon = std::fs::canonicalize(&full).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
            refuse(ErrorCode::FileNotFound, format!("{rel}: no such file under the TFTP root"))
        }
        io::ErrorKind::PermissionDenied => {
            refuse(ErrorCode::AccessViolation, format!("{rel}: permission denied"))
        }
        _ => refuse(ErrorCode::NotDefined, format!("{rel}: {e}")),
    })?;
    if !canon.starts_with(root) {
        return Err(refuse(
            ErrorCode::AccessViolation,
            format!("{rel}: resolves outside the TFTP root (a symlink pointing out?); refused"),
        ));
    }
    if canon == root.join(crate::catalog::CATALOG_FILE) {
        return Err(refuse(ErrorCode::FileNotFound, format!("{rel}: the boot catalog, which is not served")));
    }
    // NONBLOCK so a FIFO planted in the root cannot hang the open; the type is checked next.
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd =
        match rustix::fs::openat2(rustix::fs::CWD, &canon, flags, Mode::empty(), ResolveFlags::NO_SYMLINKS) {
            // Kernels before 5.6: the canonical path had no symlinks a moment ago; NOFOLLOW at
            // least keeps the last component from becoming one.
            Err(rustix::io::Errno::NOSYS) => {
                rustix::fs::openat(rustix::fs::CWD, &canon, flags | OFlags::NOFOLLOW, Mode::empty())
            }
            r => r,
        }
        .map_err(|e| match e {
            rustix::io::Errno::NOENT => refuse(ErrorCode::FileNotFound, format!("{rel}: no such file")),
            rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => refuse(
                ErrorCode::AccessViolation,
                format!("{rel}: a symlink appeared while opening; refused"),
            ),
            rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => {
                refuse(ErrorCode::AccessViolation, format!("{rel}: permission denied"))
            }
            e => refuse(ErrorCode::NotDefined, format!("{rel}: cannot open: {e}")),
        })?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| refuse(ErrorCode::NotDefined, format!("{rel}: {e}")))?;
    if !meta.is_file() {
        return Err(refuse(ErrorCode::AccessViolation, format!("{rel}: not a regular file")));
    }
    Ok((file, meta.len()))
}

/// The open file, read straight into DATA packets: `buf` is a row of packet slots of
/// `4 + blksize` bytes, and one `preadv` fills the data part of up to [`MAX_SLOTS`] slots
/// (the 4-byte headers are left as gaps and written just before sending). So the file's
/// bytes are copied once, from the page cache into the slot, and every packet — one block
/// or a whole window — is already a contiguous run of `buf`: no per-block read and no copy
/// in user space.
struct Source {
    file: std::fs::File,
    size: u64,
    blksize: usize,
    /// Blocks in the file (the last one short, possibly empty).
    blocks: u64,
    /// The block index held in slot 0.
    first: u64,
    /// Slots holding data.
    loaded: usize,
    buf: Vec<u8>,
}

/// Most slots read at once (the kernel's `IOV_MAX` is 1024).
const MAX_SLOTS: usize = 1024;
/// Bytes of slots per transfer: refills are rare, and a hundred transfers stay in a few
/// hundred MiB.
const SLOT_BYTES: usize = 2 << 20;

impl Source {
    fn new(file: std::fs::File, size: u64, blksize: u16) -> Source {
        let blksize = usize::from(blksize);
        let blocks = size / blksize as u64 + 1;
        let slots = (SLOT_BYTES / (4 + blksize)).clamp(1, MAX_SLOTS);
        let slots = slots.min(usize::try_from(blocks).unwrap_or(usize::MAX));
        Source { file, size, blksize, blocks, first: 0, loaded: 0, buf: vec![0; slots * (4 + blksize)] }
    }

    fn seg(&self) -> usize {
        4 + self.blksize
    }

    /// Data bytes of block `i`.
    fn len_of(&self, i: u64) -> usize {
        let start = i * self.blksize as u64;
        usize::try_from(self.size.saturating_sub(start)).unwrap_or(usize::MAX).min(self.blksize)
    }

    fn has(&self, i: u64) -> bool {
        i >= self.first && i - self.first < self.loaded as u64
    }

    /// Make block `i` available, refilling the slots from it if needed.
    fn load(&mut self, i: u64) -> io::Result<()> {
        if self.has(i) {
            return Ok(());
        }
        self.fill(i, usize::MAX)
    }

    /// Read blocks from `i` on (at most `count`) ahead of need, while the client is busy
    /// with the window just sent, so the next window leaves as soon as its ACK arrives
    /// instead of after a large read. A failure is left for [`Source::load`] to report.
    fn prefetch(&mut self, i: u64, count: usize) {
        if i < self.blocks && !self.has(i) {
            let _ = self.fill(i, count);
        }
    }

    /// Read up to `count` blocks (and at most the slots) from block `i` on.
    fn fill(&mut self, i: u64, count: usize) -> io::Result<()> {
        let slots = self.buf.len() / self.seg();
        let n = usize::try_from(self.blocks.saturating_sub(i)).unwrap_or(usize::MAX).min(slots).min(count);
        if n == 0 {
            return Err(io::Error::other(format!("block {i} is past the end of the file (a bug)")));
        }
        let offset = i * self.blksize as u64;
        let want =
            usize::try_from(self.size.saturating_sub(offset)).unwrap_or(usize::MAX).min(n * self.blksize);
        self.loaded = 0;
        let seg = self.seg();
        let mut iov: Vec<io::IoSliceMut<'_>> =
            self.buf.chunks_mut(seg).take(n).map(|slot| io::IoSliceMut::new(&mut slot[4..])).collect();
        let got = loop {
            match rustix::io::preadv(&self.file, &mut iov, offset) {
                Err(rustix::io::Errno::INTR) => {}
                r => break r.map_err(io::Error::from)?,
            }
        };
        drop(iov);
        // A regular file reads short only at its end (or on a signal): finish block by block.
        let mut done = got;
        while done < want {
            let (b, within) = (done / self.blksize, done % self.blksize);
            let at = b * seg + 4 + within;
            let end = b * seg + 4 + self.blksize;
            match self.file.read_at(&mut self.buf[at..end], offset + done as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank during the transfer; serve files that are not being rewritten",
                    ));
                }
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.first = i;
        self.loaded = n;
        Ok(())
    }

    /// The packets of the consecutive loaded blocks `run` (block number, index), headers
    /// written: one contiguous slice.
    fn packets(&mut self, run: &[(u16, u64)]) -> &[u8] {
        let seg = self.seg();
        let (Some(&(_, a)), Some(&(_, z))) = (run.first(), run.last()) else { return &[] };
        for &(block, i) in run {
            let at = usize::try_from(i - self.first).unwrap_or(usize::MAX) * seg;
            self.buf[at..at + 4].copy_from_slice(&proto::data_header(block));
        }
        let start = usize::try_from(a - self.first).unwrap_or(usize::MAX) * seg;
        let end = usize::try_from(z - self.first).unwrap_or(usize::MAX) * seg + 4 + self.len_of(z);
        &self.buf[start..end]
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

const CLIENT_GONE: &str = "the client's port is closed (it gave up or exited)";

/// Send one datagram; `Err` only when the client is gone. Other errors (ENOBUFS…) are a
/// lost packet, which the retransmission timer covers.
fn send(sock: &std::net::UdpSocket, pkt: &[u8]) -> Result<(), String> {
    match sock.send(pkt) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(CLIENT_GONE.into()),
        _ => Ok(()),
    }
}

/// Most segments in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send: the whole must fit one IP datagram.
const GSO_MAX_BYTES: usize = 65000;

/// How DATA leaves the socket.
struct Sender {
    /// Blocks per GSO send, when UDP segmentation offload is on (0 = off).
    gso_batch: usize,
    /// The segment size of a GSO send: one DATA packet.
    gso_seg: u16,
    /// The run being sent: (block number, block index).
    run: Vec<(u16, u64)>,
}

impl Sender {
    /// Use UDP GSO (`UDP_SEGMENT`, Linux ≥ 4.18) with one segment per DATA packet, so a
    /// whole window goes out in one `send` and crosses the IP stack once: on this machine
    /// that halves the kernel's cost per packet, which is what a windowed transfer spends
    /// its time on. Off for windows of one, blocks too big to batch, packets larger than the
    /// path MTU (GSO cannot fragment; plain sends can), or where the kernel refuses.
    ///
    /// The segment size goes with each batched DATA send (a control message), never on the
    /// socket: OACK, ERROR and lone DATA packets must leave as one datagram each, whatever
    /// their size against a small block's.
    fn new(sock: &std::net::UdpSocket, blksize: u16, windowsize: u16) -> Sender {
        use nix::sys::socket::{getsockopt, setsockopt, sockopt};
        let seg = 4 + usize::from(blksize);
        let batch = usize::from(windowsize).min(GSO_MAX_SEGMENTS).min(GSO_MAX_BYTES / seg);
        // IPv4 tells the path MTU of the connected socket up front (20 + 8 header bytes);
        // elsewhere the first refused send turns GSO off.
        let fits = getsockopt(sock, sockopt::IpMtu)
            .map_or(true, |mtu| seg + 28 <= usize::try_from(mtu).unwrap_or(0));
        // The kernel says whether it knows the option; the socket keeps no segment size.
        let on = batch >= 2
            && fits
            && setsockopt(sock, sockopt::UdpGsoSegment, &(i32::from(blksize) + 4)).is_ok()
            && setsockopt(sock, sockopt::UdpGsoSegment, &0).is_ok();
        Sender {
            gso_batch: if on { batch } else { 0 },
            gso_seg: blksize.saturating_add(4),
            run: Vec::with_capacity(usize::from(windowsize)),
        }
    }

    /// Whether `e` is the kernel refusing a GSO send: EMSGSIZE or EINVAL (a segment larger
    /// than the path MTU), EIO (no checksum offload on the route).
    fn gso_refused(&self, e: &io::Error) -> bool {
        use rustix::io::Errno;
        self.gso_batch > 0
            && [Errno::MSGSIZE, Errno::INVAL, Errno::IO]
                .iter()
                .any(|x| e.raw_os_error() == Some(x.raw_os_error()))
    }

    /// GSO was refused: send one datagram per block from now on.
    fn gso_off(&mut self) {
        self.gso_batch = 0;
    }

    /// One send of `pkts`: segmented into DATA packets of `gso_seg` bytes when it holds
    /// several, else one plain datagram.
    fn send_run(&self, sock: &std::net::UdpSocket, pkts: &[u8]) -> io::Result<usize> {
        use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
        use std::os::fd::AsRawFd;
        if self.run.len() < 2 {
            return sock.send(pkts);
        }
        let iov = [std::io::IoSlice::new(pkts)];
        let cmsg = [ControlMessage::UdpGsoSegments(&self.gso_seg)];
        sendmsg::<SockaddrStorage>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .map_err(io::Error::from)
    }

    /// Send DATA `blocks` (block number, offset), reading the file as needed.
    fn send(
        &mut self,
        sock: &std::net::UdpSocket,
        src: &mut Source,
        blocks: &[(u16, u64)],
    ) -> Result<(), String> {
        let mut k = 0;
        while k < blocks.len() {
            let i = blocks[k].1 / src.blksize as u64;
            src.load(i).map_err(|e| format!("cannot read the file at offset {}: {e}", blocks[k].1))?;
            self.run.clear();
            self.run.push((blocks[k].0, i));
            let limit = self.gso_batch.max(1);
            let mut m = k + 1;
            while m < blocks.len() && m - k < limit {
                let j = blocks[m].1 / src.blksize as u64;
                if j != i + (m - k) as u64 || !src.has(j) {
                    break;
                }
                self.run.push((blocks[m].0, j));
                m += 1;
            }
            let seg = src.seg();
            let pkts = src.packets(&self.run);
            match self.send_run(sock, pkts) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(CLIENT_GONE.into()),
                Err(e) if self.gso_refused(&e) => {
                    self.gso_off();
                    for p in pkts.chunks(seg) {
                        send(sock, p)?;
                    }
                }
                Err(_) => {} // lost (ENOBUFS…); the timer resends it
            }
            k = m;
        }
        Ok(())
    }
}

impl Transfer {
    /// Run on a blocking thread. A transfer is a strict request/response loop on one
    /// socket; on the async runtime every ACK cost an epoll round and often a cross-thread
    /// wake-up, which made window-1 transfers slower than tftpd-hpa. A thread blocked in
    /// `recv` is woken directly by the kernel, like tftpd-hpa's forked process.
    fn run(self, stop: Arc<AtomicBool>) {
        let begun = std::time::Instant::now();
        let events = Arc::clone(&self.events);
        let (peer, file) = (self.peer, self.path.clone());
        let refused = |reason: String| events(TftpEvent::Refused { peer, file: file.clone(), reason });
        // A fresh socket on the listener's address: the new transfer ID.
        let sock = match std::net::UdpSocket::bind(SocketAddr::new(self.local_ip, 0)).and_then(|s| {
            s.connect(peer)?;
            s.set_read_timeout(Some(tick(self.cfg.timeout)))?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => return refused(format!("cannot open a transfer socket towards the client: {e}")),
        };
        let (f, size) = match open_beneath(&self.root, &self.path) {
            Ok(x) => x,
            Err(r) => {
                let mut buf = Vec::new();
                proto::encode_error(r.code, &r.message, &mut buf);
                let _ = sock.send(&buf);
                return refused(r.to_string());
            }
        };
        let options = match proto::parse(&self.request) {
            Ok(Packet::Rrq(r)) => r.options,
            _ => proto::Options::default(), // checked by the listener; cannot happen
        };
        let mut fsm = ReadTransfer::new(options, size, &self.cfg.proto());
        events(TftpEvent::Started {
            peer,
            file: file.clone(),
            size,
            blksize: fsm.blksize(),
            windowsize: fsm.windowsize(),
        });
        let mut src = Source::new(f, size, fsm.blksize());
        let spin = self.spinning.take();
        let outcome = drive(&sock, &mut fsm, &mut src, begun, &stop, spin.budget(), |bytes| {
            events(TftpEvent::Progress { peer, file: file.clone(), bytes, total: size })
        });
        let bytes = fsm.acked_bytes();
        events(match outcome {
            Ok(bytes) => TftpEvent::Finished {
                peer,
                file,
                bytes,
                millis: u64::try_from(begun.elapsed().as_millis()).unwrap_or(u64::MAX),
            },
            Err(reason) => TftpEvent::Failed { peer, file, bytes, reason },
        });
    }
}

/// How often a blocked transfer wakes up to check its deadline and the stop flag, without
/// a `setsockopt` per packet: a fraction of the retransmission timeout, 10..=100 ms.
fn tick(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(100))
}

/// How a transfer waits for the client: it polls for up to its budget before sleeping in
/// `recv` (see [`DEFAULT_SPIN`]), unless polling keeps missing ([`Backoff`]).
struct Waiter {
    backoff: Backoff,
}

impl Waiter {
    fn new(budget: Duration) -> Waiter {
        Waiter { backoff: Backoff::new(budget) }
    }

    /// Receive one datagram (until the socket's read timeout).
    fn recv(&mut self, sock: &std::net::UdpSocket, buf: &mut [u8]) -> io::Result<usize> {
        let budget = self.backoff.poll_for();
        if !budget.is_zero() {
            match poll(sock, buf, budget) {
                Some(r) => {
                    self.backoff.hit();
                    return r;
                }
                None => self.backoff.miss(),
            }
        }
        sock.recv(buf)
    }
}

/// Poll `sock` for a datagram for up to `budget` (one look at least: a zero budget reads
/// what is queued): `None` if none came.
fn poll(sock: &std::net::UdpSocket, buf: &mut [u8], budget: Duration) -> Option<io::Result<usize>> {
    let t = std::time::Instant::now();
    loop {
        match rustix::net::recv(sock, &mut *buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((n, _)) => return Some(Ok(n)),
            Err(rustix::io::Errno::INTR) => continue, // not an answer: look again
            Err(rustix::io::Errno::AGAIN) => {}
            Err(e) => return Some(Err(e.into())),
        }
        if t.elapsed() >= budget {
            return None;
        }
        std::hint::spin_loop();
    }
}

/// Run the machine to its end: `Ok(bytes)` when the client acknowledged everything.
fn drive(
    sock: &std::net::UdpSocket,
    fsm: &mut ReadTransfer,
    src: &mut Source,
    begun: std::time::Instant,
    stop: &AtomicBool,
    spin: Duration,
    progress: impl FnMut(u64),
) -> Result<u64, String> {
    match run_transfer(sock, fsm, src, begun, stop, spin, progress) {
        Err(e) if e == CLIENT_GONE => last_word(sock, fsm, begun),
        r => r,
    }
}

/// The client's port is closed, but it may have said its last word first: the kernel
/// reports the ICMP error of a send to the closed port ahead of datagrams already queued,
/// and a client that got the whole file sends its final ACK and exits. That is routine with
/// windows: the client acknowledges a gap, then the retransmission, and is gone by the time
/// the server answers the first ACK with a window nobody receives. So what is queued is
/// read (and nothing more sent) before the transfer is called failed.
fn last_word(
    sock: &std::net::UdpSocket,
    fsm: &mut ReadTransfer,
    begun: std::time::Instant,
) -> Result<u64, String> {
    let mut buf = [0u8; TRANSFER_BUF];
    let mut actions = Vec::new();
    // Bounded: each datagram or error is reported once, but a flood must not hold us here.
    for _ in 0..1024 {
        match poll(sock, &mut buf, Duration::ZERO) {
            Some(Ok(n)) => {
                let Ok(p) = proto::parse(&buf[..n]) else { continue };
                actions.clear();
                fsm.handle(begun.elapsed(), Input::Packet(p), &mut actions);
                // Only the end counts: windows answering older ACKs would go nowhere.
                for a in actions.drain(..) {
                    match a {
                        Action::Done { bytes } => return Ok(bytes),
                        Action::Failed(f) => return Err(f.to_string()),
                        _ => {}
                    }
                }
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            _ => break, // nothing more queued
        }
    }
    Err(CLIENT_GONE.into())
}

/// [`drive`] until the end or the first error.
fn run_transfer(
    sock: &std::net::UdpSocket,
    fsm: &mut ReadTransfer,
    src: &mut Source,
    begun: std::time::Instant,
    stop: &AtomicBool,
    spin: Duration,
    mut progress: impl FnMut(u64),
) -> Result<u64, String> {
    let mut actions: Vec<Action> = Vec::with_capacity(usize::from(fsm.windowsize()) + 2);
    let mut blocks: Vec<(u16, u64)> = Vec::with_capacity(usize::from(fsm.windowsize()));
    let mut sender = Sender::new(sock, fsm.blksize(), fsm.windowsize());
    let window = usize::from(fsm.windowsize());
    let mut pkt: Vec<u8> = Vec::with_capacity(512);
    let mut rbuf = vec![0u8; TRANSFER_BUF];
    let mut waiter = Waiter::new(spin);
    let (mut last_report, mut reported) = (begun, 0u64);
    // Tell the client why before giving up on a read error or a stop.
    let abort = |why: &str, pkt: &mut Vec<u8>| {
        pkt.clear();
        proto::encode_error(ErrorCode::NotDefined, why, pkt);
        let _ = sock.send(pkt);
    };
    fsm.handle(begun.elapsed(), Input::Start, &mut actions);
    loop {
        for a in actions.drain(..) {
            match a {
                Action::SendData { block, offset, .. } => blocks.push((block, offset)),
                other => {
                    if !blocks.is_empty() {
                        sender
                            .send(sock, src, &blocks)
                            .inspect_err(|_| abort("server read error", &mut pkt))?;
                        blocks.clear();
                    }
                    pkt.clear();
                    match other {
                        Action::SendOack(acc) => acc.encode_oack(&mut pkt),
                        Action::SendError(code, msg) => proto::encode_error(code, msg, &mut pkt),
                        Action::Done { bytes } => return Ok(bytes),
                        Action::Failed(f) => return Err(f.to_string()),
                        Action::SendData { .. } => {}
                    }
                    send(sock, &pkt)?;
                }
            }
        }
        if let Some(&(_, last)) = blocks.last() {
            sender.send(sock, src, &blocks).inspect_err(|_| abort("server read error", &mut pkt))?;
            blocks.clear();
            if window > 1 {
                // A few windows' worth: small enough to finish before the client has
                // processed the window in flight.
                src.prefetch(last / src.blksize as u64 + 1, 4 * window);
            }
        }
        if stop.load(Ordering::Relaxed) {
            abort("the server is shutting down", &mut pkt);
            return Err("the server stopped".into());
        }
        match waiter.recv(sock, &mut rbuf) {
            // Garbage from the client's own port is ignored; the timer covers it.
            Ok(n) => {
                if let Ok(p) = proto::parse(&rbuf[..n]) {
                    fsm.handle(begun.elapsed(), Input::Packet(p), &mut actions);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(CLIENT_GONE.into()),
            Err(e) if is_timeout(&e) => {}
            Err(_) => {}
        }
        let now = begun.elapsed();
        if fsm.deadline().is_some_and(|d| now >= d) {
            fsm.handle(now, Input::Tick, &mut actions);
        }
        let bytes = fsm.acked_bytes();
        if bytes > reported && bytes < fsm.size() {
            let now = std::time::Instant::now();
            if now.duration_since(last_report) >= PROGRESS_EVERY || bytes - reported >= PROGRESS_BYTES {
                progress(bytes);
                (last_report, reported) = (now, bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_polling_receive_gets_what_arrives_and_then_sleeps_to_the_timeout() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        a.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut buf = [0u8; 16];
        let mut w = Waiter::new(Duration::from_micros(200));
        // Nothing comes: the poll gives up and the blocking recv times out.
        let e = w.recv(&a, &mut buf).unwrap_err();
        assert!(is_timeout(&e), "{e}");
        assert_eq!(w.backoff.misses(), 1);
        // Already queued: seen by the first poll.
        b.send(b"ack").unwrap();
        assert_eq!(w.recv(&a, &mut buf).unwrap(), 3);
        assert_eq!(w.backoff.misses(), 0, "a hit forgives the misses");
        // Arrives while sleeping after a short poll.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            b.send(b"late").unwrap();
        });
        a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = Waiter::new(Duration::from_micros(10));
        assert_eq!(w.recv(&a, &mut buf).unwrap(), 4);
        sender.join().unwrap();
        assert_eq!(&buf[..4], b"late");
    }

    /// The client took the whole window, sent an ACK for an early block and then its final
    /// ACK, and exited before the server read either: the server's answer to the first hits
    /// the closed port, and the kernel reports that ahead of the final ACK (regression: such
    /// transfers were reported failed although the client had everything; seen in CI).
    #[test]
    fn a_final_ack_queued_behind_the_closed_port_error_completes_the_transfer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 1100]).unwrap(); // blocks 1, 2, 3 at 512 bytes
        let mut rrq = Vec::new();
        proto::encode_request(false, "f", proto::Mode::Octet, &[("windowsize", "4")], &mut rrq);
        let Ok(Packet::Rrq(req)) = proto::parse(&rrq) else { panic!("not an RRQ") };
        // The client's ACKs, queued at the server before it reads any; then it is gone.
        let transfer = |acks: &[u16]| {
            let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            server.connect(client.local_addr().unwrap()).unwrap();
            server.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            client.connect(server.local_addr().unwrap()).unwrap();
            for &block in acks {
                let mut ack = Vec::new();
                Packet::Ack { block }.encode(&mut ack);
                client.send(&ack).unwrap();
            }
            drop(client);
            let mut fsm = ReadTransfer::new(req.options, 1100, &ServerConfig::default());
            let mut src = Source::new(std::fs::File::open(&path).unwrap(), 1100, fsm.blksize());
            let stop = AtomicBool::new(false);
            drive(&server, &mut fsm, &mut src, std::time::Instant::now(), &stop, Duration::ZERO, |_| {})
        };
        // OACK acknowledged (0), a gap acknowledged (1), then everything (3).
        assert_eq!(transfer(&[0, 1, 3]), Ok(1100));
        // Without the final ACK it is a client that went away.
        assert_eq!(transfer(&[0, 1]), Err(CLIENT_GONE.to_string()));
    }
}
