//! DHCP and ProxyDHCP on tokio sockets: the network boot's address and boot-file service.
//!
//! Every decision — which address, which boot file, NAK or silence — is the sans-IO
//! [`monarch_proto::dhcp::server::Server`]; this module only:
//! - binds UDP `0.0.0.0:67` (and `SERVER_IP:4011` in proxy mode) with `SO_BROADCAST`, `SO_REUSEADDR`
//!   and `SO_BINDTODEVICE`, so the server hears broadcasts from clients that have no address
//!   yet but only on the boot network's interface: a DHCP server answering on the wrong
//!   interface takes over somebody else's network.
//! - sends each reply where RFC 2131 says ([`Destination`]): 255.255.255.255:68 when the
//!   client has no address (or for a NAK), the client's `ciaddr`, the relay's `giaddr`:67,
//!   or back to the sender for port-4011 requests.
//! - persists the lease table after every change that matters (bound, released, declined;
//!   a new binding before the ACK that announces it), and loads it at start, so a
//!   restarted server gives each machine the address it had.
//!   The file is replaced atomically (temp file in the same directory, fsync, rename, fsync
//!   of the directory): a crash leaves either the old table or the new one, never half.
//!
//! Replies on port 67 leave from the interface's primary address (the socket is bound to
//! 0.0.0.0 to hear broadcasts); clients go by option 54, which is always `server_ip`, so a
//! proxy on a secondary address works (the interop test runs one that way).
//!
//! Datagrams are untrusted: [`monarch_proto::dhcp::wire::decode`] refuses malformed ones, which
//! get an [`DhcpEvent::Ignored`] event and no reply.

use crate::EventSink;
use monarch_proto::dhcp::boot::{BootConfig, Bootfiles};
use monarch_proto::dhcp::pool::{LoadReport, PoolConfig};
use monarch_proto::dhcp::server::{Destination, Outcome, ReplyKind, Server, Via};
use monarch_proto::dhcp::wire;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;

/// A whole UDP datagram: a DHCP message larger than this cannot exist, and reading it whole
/// means an oversized one is refused by its content rather than silently truncated.
const RECV_BUF: usize = 65536;
/// A lease file larger than this is not ours (a /16 pool's table is about 3 MiB).
const MAX_LEASE_FILE: u64 = 16 << 20;

/// Full server or ProxyDHCP.
#[derive(Debug, Clone)]
pub enum DhcpMode {
    /// Hand out addresses from `pool`, persisting leases in `lease_file`.
    Full {
        /// The address pool.
        pool: PoolConfig,
        /// Where the lease table lives (created if missing; its directory must exist).
        lease_file: PathBuf,
    },
    /// ProxyDHCP beside an existing DHCP server: boot options only, ports 67 and 4011.
    Proxy,
}

/// UDP ports (the standard ones unless a test or an unusual network says otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpPorts {
    /// Where the server listens (67).
    pub server: u16,
    /// Where clients listen (68).
    pub client: u16,
    /// The PXE boot server port of proxy mode (4011).
    pub pxe: u16,
}

impl Default for DhcpPorts {
    fn default() -> Self {
        DhcpPorts { server: wire::SERVER_PORT, client: wire::CLIENT_PORT, pxe: wire::PXE_PORT }
    }
}

/// Everything the DHCP service needs.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    /// The boot network's interface (`SO_BINDTODEVICE`). `None` listens on every interface:
    /// only for a machine whose every interface is a boot network.
    pub interface: Option<String>,
    /// This server's address on that interface (option 54, the server identifier; proxy
    /// clients send their port-4011 requests to it).
    pub server_ip: Ipv4Addr,
    /// Full or proxy.
    pub mode: DhcpMode,
    /// The TFTP server given to PXE clients (`siaddr`, option 66).
    pub tftp_server: Ipv4Addr,
    /// The HTTP boot service's base URL (`http://10.0.0.1:8080`): iPXE clients get
    /// `{http_base}/ipxe/{mac}.ipxe`. Without it they get a plain lease.
    pub http_base: Option<String>,
    /// Boot file names per client architecture (option 93).
    pub bootfiles: Bootfiles,
    /// UDP ports.
    pub ports: DhcpPorts,
}

impl DhcpConfig {
    /// A config on `interface` with server (and TFTP) address `server_ip`, default boot
    /// files, no HTTP base URL and the standard ports.
    pub fn new(interface: Option<&str>, server_ip: Ipv4Addr, mode: DhcpMode) -> DhcpConfig {
        DhcpConfig {
            interface: interface.map(str::to_string),
            server_ip,
            mode,
            tftp_server: server_ip,
            http_base: None,
            bootfiles: Bootfiles::default(),
            ports: DhcpPorts::default(),
        }
    }
}

/// What the DHCP service did, for the event stream (`--json` prints them as they come).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DhcpEvent {
    /// A socket is listening.
    Listening {
        /// Its address.
        addr: SocketAddr,
        /// The interface it is bound to, if any.
        interface: Option<String>,
        /// `full` or `proxy`.
        mode: &'static str,
    },
    /// The lease table was loaded at start.
    LeasesLoaded {
        /// The lease file.
        path: PathBuf,
        /// Rows kept.
        loaded: usize,
        /// Rows dropped because they no longer fit the pool.
        dropped: usize,
    },
    /// An OFFER was sent (`ip` is `None` for a ProxyDHCP offer).
    Offer {
        /// The client's MAC.
        mac: String,
        /// The offered address.
        ip: Option<Ipv4Addr>,
        /// The client kind (`plain`, `pxe-bios`, `pxe-efi-x64`, `ipxe`, …).
        client: String,
        /// The boot file or URL given.
        bootfile: Option<String>,
        /// Where it went.
        to: SocketAddr,
    },
    /// An ACK was sent (`ip` is `None` for INFORM and port-4011 requests).
    Ack {
        /// The client's MAC.
        mac: String,
        /// The leased address.
        ip: Option<Ipv4Addr>,
        /// The client kind.
        client: String,
        /// The boot file or URL given.
        bootfile: Option<String>,
        /// Where it went.
        to: SocketAddr,
    },
    /// A NAK was sent.
    Nak {
        /// The client's MAC.
        mac: String,
        /// Why.
        reason: String,
        /// Where it went.
        to: SocketAddr,
    },
    /// A client released its lease.
    Released {
        /// The client's MAC.
        mac: String,
        /// The address.
        ip: Ipv4Addr,
    },
    /// A client declined an address (someone else uses it): out of the pool for a while.
    Declined {
        /// The client's MAC.
        mac: String,
        /// The address.
        ip: Ipv4Addr,
    },
    /// An option of a request was dropped because its length is not the one its definition
    /// fixes (RFC 2132, RFC 4578); the request is decided as if the client had not sent it.
    BadOption {
        /// The request's sender.
        from: SocketAddr,
        /// The option code.
        option: u8,
        /// What is wrong with it.
        reason: String,
    },
    /// A datagram got no reply.
    Ignored {
        /// Its sender.
        from: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The lease table was written.
    LeasesSaved {
        /// The lease file.
        path: PathBuf,
        /// Rows written.
        leases: usize,
    },
    /// The lease table could not be written (the server goes on; the next change retries).
    LeasesSaveFailed {
        /// The lease file.
        path: PathBuf,
        /// What went wrong and what to do.
        error: String,
    },
    /// A reply could not be sent.
    SendFailed {
        /// Its destination.
        to: SocketAddr,
        /// The error.
        error: String,
    },
    /// Receiving failed (the server goes on).
    RecvFailed {
        /// The error.
        error: String,
    },
}

/// Why the DHCP service cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The configuration is wrong.
    #[error("DHCP configuration: {0}")]
    Config(String),
    /// A socket could not be set up.
    #[error(
        "cannot listen on UDP {addr}{}: {source} (DHCP needs root or CAP_NET_RAW + CAP_NET_BIND_SERVICE, \
         an existing interface that has the server address, and no other DHCP server on that port and \
         interface)",
        .interface.as_deref().map(|i| format!(" on {i}")).unwrap_or_default()
    )]
    Bind {
        /// The address.
        addr: SocketAddrV4,
        /// The interface.
        interface: Option<String>,
        /// The system's error.
        source: io::Error,
    },
    /// The lease file cannot be read or parsed.
    #[error("lease file {}: {reason}", .path.display())]
    LeaseFile {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// A bound DHCP / ProxyDHCP server; [`DhcpServer::run`] serves.
#[derive(Debug)]
pub struct DhcpServer {
    proto: Server,
    dhcp: UdpSocket,
    pxe: Option<UdpSocket>,
    lease_file: Option<PathBuf>,
    loaded: Option<LoadReport>,
    cfg: DhcpConfig,
}

impl DhcpServer {
    /// Check the config, load the lease table (full mode) and bind the sockets.
    pub async fn bind(cfg: DhcpConfig) -> Result<DhcpServer, DhcpError> {
        let boot = BootConfig {
            tftp_server: cfg.tftp_server,
            http_base: cfg.http_base.clone(),
            bootfiles: cfg.bootfiles.clone(),
        };
        if let Some(base) =
            cfg.http_base.as_ref().filter(|b| !(b.starts_with("http://") || b.starts_with("https://")))
        {
            return Err(DhcpError::Config(format!(
                "HTTP base URL `{base}` must start with http:// (e.g. http://{}:8080)",
                cfg.server_ip
            )));
        }
        let (mut proto, lease_file) = match &cfg.mode {
            DhcpMode::Full { pool, lease_file } => (
                Server::full(cfg.server_ip, pool.clone(), boot).map_err(DhcpError::Config)?,
                Some(lease_file.clone()),
            ),
            DhcpMode::Proxy => (Server::proxy(cfg.server_ip, boot), None),
        };
        let mut loaded = None;
        if let (Some(path), Some(pool)) = (&lease_file, proto.pool_mut()) {
            let p = path.clone();
            let text = tokio::task::spawn_blocking(move || read_lease_file(&p))
                .await
                .map_err(|e| DhcpError::LeaseFile { path: path.clone(), reason: e.to_string() })??;
            if let Some(text) = text {
                let report = pool.load_text(&text).map_err(|e| DhcpError::LeaseFile {
                    path: path.clone(),
                    reason: format!("{e}: fix that line, or delete the file to start with no leases"),
                })?;
                loaded = Some(report);
            }
        }
        let iface = cfg.interface.as_deref();
        let dhcp = bind_udp(Ipv4Addr::UNSPECIFIED, cfg.ports.server, iface)?;
        let pxe = match cfg.mode {
            // Port 4011 requests are unicast to our server identifier; binding that address
            // (not 0.0.0.0) makes our replies come from it, which PXE clients check.
            DhcpMode::Proxy => Some(bind_udp(cfg.server_ip, cfg.ports.pxe, iface)?),
            DhcpMode::Full { .. } => None,
        };
        Ok(DhcpServer { proto, dhcp, pxe, lease_file, loaded, cfg })
    }

    /// The bound addresses: port 67's socket, then port 4011's in proxy mode.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        [Some(&self.dhcp), self.pxe.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Serve until the task is dropped or aborted (every await point is cancel-safe; a
    /// lease-file write in flight finishes on its own thread).
    pub async fn run(mut self, events: EventSink<DhcpEvent>) -> Result<(), DhcpError> {
        let mode = if self.pxe.is_some() { "proxy" } else { "full" };
        for addr in self.local_addrs() {
            events(DhcpEvent::Listening { addr, interface: self.cfg.interface.clone(), mode });
        }
        if let (Some(path), Some(r)) = (&self.lease_file, self.loaded) {
            events(DhcpEvent::LeasesLoaded { path: path.clone(), loaded: r.loaded, dropped: r.dropped });
        }
        // Rows dropped at load (the pool changed) are saved away at once.
        self.save_if_dirty(&events).await;
        let mut buf67 = vec![0u8; RECV_BUF];
        let mut buf4011 = vec![0u8; if self.pxe.is_some() { RECV_BUF } else { 0 }];
        loop {
            let (via, got) = tokio::select! {
                r = self.dhcp.recv_from(&mut buf67) => (Via::Dhcp, r),
                r = recv_opt(self.pxe.as_ref(), &mut buf4011) => (Via::PxeBoot, r),
            };
            let (n, from) = match got {
                Ok(x) => x,
                Err(e) => {
                    events(DhcpEvent::RecvFailed { error: e.to_string() });
                    // A persistent error must not spin a core.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let bytes = match via {
                Via::Dhcp => &buf67[..n],
                Via::PxeBoot => &buf4011[..n],
            };
            self.serve(bytes, from, via, &events).await;
            self.save_if_dirty(&events).await;
        }
    }

    async fn serve(&mut self, bytes: &[u8], from: SocketAddr, via: Via, events: &EventSink<DhcpEvent>) {
        let msg = match wire::decode_checked(bytes) {
            Ok((m, bad)) => {
                for b in bad {
                    events(DhcpEvent::BadOption { from, option: b.code, reason: b.to_string() });
                }
                m
            }
            Err(e) => {
                events(DhcpEvent::Ignored { from, reason: e.to_string() });
                return;
            }
        };
        let reply = match self.proto.decide(&msg, via, unix_now()) {
            Outcome::Reply(r) => r,
            Outcome::Released { mac, ip } => {
                events(DhcpEvent::Released { mac: mac.to_string(), ip });
                return;
            }
            Outcome::Declined { mac, ip } => {
                events(DhcpEvent::Declined { mac: mac.to_string(), ip });
                return;
            }
            Outcome::Ignored(why) => {
                events(DhcpEvent::Ignored { from, reason: why.to_string() });
                return;
            }
        };
        let p = self.cfg.ports;
        let to = match reply.to {
            Destination::Broadcast => SocketAddr::from((Ipv4Addr::BROADCAST, p.client)),
            Destination::Unicast(ip) => SocketAddr::from((ip, p.client)),
            Destination::Relay(ip) => SocketAddr::from((ip, p.server)),
            Destination::Sender => from,
        };
        let bytes = match reply.encode() {
            Ok(b) => b,
            Err(error) => {
                events(DhcpEvent::SendFailed { to, error });
                return;
            }
        };
        // A binding is on disk before the client hears of it: a server restarted right
        // after its ACK must not hand the same address to another machine.
        self.save_if_dirty(events).await;
        let sock = match (via, &self.pxe) {
            (Via::PxeBoot, Some(s)) => s,
            _ => &self.dhcp,
        };
        if let Err(e) = sock.send_to(&bytes, to).await {
            events(DhcpEvent::SendFailed { to, error: e.to_string() });
            return;
        }
        let (mac, client) = (reply.mac.to_string(), reply.client.label());
        let (ip, bootfile) = (reply.ip, reply.bootfile.clone());
        events(match reply.kind {
            ReplyKind::Offer => DhcpEvent::Offer { mac, ip, client, bootfile, to },
            ReplyKind::Ack => DhcpEvent::Ack { mac, ip, client, bootfile, to },
            ReplyKind::Nak => DhcpEvent::Nak {
                mac,
                reason: reply.nak_reason.map(|r| r.to_string()).unwrap_or_default(),
                to,
            },
        });
    }

    async fn save_if_dirty(&mut self, events: &EventSink<DhcpEvent>) {
        let (Some(path), Some(pool)) = (&self.lease_file, self.proto.pool_mut()) else { return };
        if !pool.take_dirty() {
            return;
        }
        let text = pool.to_text();
        let leases = pool.leases().count();
        let p = path.clone();
        let result =
            tokio::task::spawn_blocking(move || monarch_drivers::fs::write_atomically(&p, text.as_bytes()))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        match result {
            Ok(()) => events(DhcpEvent::LeasesSaved { path: path.clone(), leases }),
            Err(e) => {
                // Retry at the next change: mark the table dirty again.
                pool.mark_dirty();
                events(DhcpEvent::LeasesSaveFailed {
                    path: path.clone(),
                    error: format!(
                        "{e}: check that the directory exists and is writable, and the disk has room"
                    ),
                })
            }
        }
    }
}

/// Receive on an optional socket; without one, never resolve (so `select!` ignores it).
async fn recv_opt(sock: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Seconds since the Unix epoch: lease expiries are stored in it so they survive restarts.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A UDP socket on `ip:port`, broadcast-capable, address-reusable, bound to `iface`.
/// Broadcasts (clients without an address) only reach a socket bound to 0.0.0.0.
fn bind_udp(ip: Ipv4Addr, port: u16, iface: Option<&str>) -> Result<UdpSocket, DhcpError> {
    let addr = SocketAddrV4::new(ip, port);
    let err = |source: io::Error| DhcpError::Bind { addr, interface: iface.map(str::to_string), source };
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    sock.set_broadcast(true).map_err(err)?;
    if let Some(i) = iface {
        sock.bind_device(Some(i.as_bytes())).map_err(err)?;
    }
    sock.set_nonblocking(true).map_err(err)?;
    sock.bind(&addr.into()).map_err(err)?;
    UdpSocket::from_std(sock.into()).map_err(err)
}

/// The lease file's text, `None` if it does not exist yet.
fn read_lease_file(path: &Path) -> Result<Option<String>, DhcpError> {
    let err = |reason: String| DhcpError::LeaseFile { path: path.to_path_buf(), reason };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    if !meta.is_file() || meta.len() > MAX_LEASE_FILE {
        return Err(err(format!(
            "not a lease file (not a regular file, or over {} MiB): point the lease file elsewhere",
            MAX_LEASE_FILE >> 20
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| err("not UTF-8 text: delete it to start with no leases".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_file_reading_is_defensive() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_lease_file(&dir.path().join("none")).unwrap().is_none());
        assert!(read_lease_file(dir.path()).unwrap_err().to_string().contains("not a regular file"));
        let bad = dir.path().join("bad");
        std::fs::write(&bad, [0xff, 0xfe]).unwrap();
        assert!(read_lease_file(&bad).unwrap_err().to_string().contains("UTF-8"));
    }

    #[tokio::test]
    async fn a_broken_lease_file_stops_the_start_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let lease_file = dir.path().join("leases");
        std::fs::write(&lease_file, "bound nonsense\n").unwrap();
        let pool = PoolConfig::new(Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 20));
        let mut cfg = DhcpConfig::new(Some("lo"), Ipv4Addr::LOCALHOST, DhcpMode::Full { pool, lease_file });
        cfg.ports.server = 0;
        let e = DhcpServer::bind(cfg.clone()).await.unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("delete the file"), "{e}");
        cfg.http_base = Some("10.0.0.1:8080".into());
        let e = DhcpServer::bind(cfg).await.unwrap_err().to_string();
        assert!(e.contains("http://"), "{e}");
    }
}
