//! `monarch netboot serve`: the network boot services started together on one
//! interface, for machines that have no memory window.
//!
//! One command starts any of DHCP (a full server with persisted leases, or ProxyDHCP beside
//! an existing DHCP server), TFTP, HTTP and the reference design's discovery service, all serving the
//! same root directory and the same [`Catalog`] (`ROOT/machines.toml`: what each machine
//! boots). Every service's events come out as one stream of JSON objects, each tagged with
//! its `service`, starting with a `ready` event that says where each service listens.

use monarch_net::EventSink;
use monarch_net::catalog::{CATALOG_FILE, Catalog, SharedCatalog};
use monarch_net::dhcp::{DhcpConfig, DhcpMode, DhcpServer};
use monarch_net::discovery::{DiscoveryConfig, DiscoveryServer};
use monarch_net::http::{HttpConfig, HttpServer};
use monarch_net::tftp::{TftpConfig, TftpServer};
use monarch_proto::dhcp::pool::PoolConfig;
use serde::Serialize;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

/// Which DHCP service to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpChoice {
    /// None: another DHCP server hands out addresses and boot options.
    Off,
    /// A full DHCP server: addresses from `range`, leases persisted in `leases`.
    Full {
        /// First and last address handed out.
        range: (Ipv4Addr, Ipv4Addr),
        /// The lease file (written atomically after every change, read at start).
        leases: PathBuf,
    },
    /// ProxyDHCP (PXE): boot options only, beside an existing DHCP server (ports 67 and 4011).
    Proxy,
}

/// Everything `monarch netboot serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The served directory (kernels, initrds, images, `machines.toml`).
    pub root: PathBuf,
    /// The interface to serve on (DHCP answers only there).
    pub interface: Option<String>,
    /// The server's address on that interface (found from the interface when not given).
    pub address: Option<Ipv4Addr>,
    /// DHCP service.
    pub dhcp: DhcpChoice,
    /// TFTP port (None: no TFTP).
    pub tftp_port: Option<u16>,
    /// How long a TFTP transfer polls for each ACK before sleeping
    /// ([`monarch_net::tftp::DEFAULT_SPIN`]; zero: never).
    pub tftp_spin: std::time::Duration,
    /// HTTP port (None: no HTTP).
    pub http_port: Option<u16>,
    /// How long an HTTP file transfer polls for room in its socket before sleeping
    /// ([`monarch_net::http::DEFAULT_SPIN`]; zero: never).
    pub http_spin: std::time::Duration,
    /// The discovery service's port, UDP for discovery and TCP for the bulk transfer
    /// (None: no discovery service).
    pub discovery_port: Option<u16>,
}

/// Where each service ended up listening (the `ready` event).
#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    /// The served root (canonical).
    pub root: PathBuf,
    /// The server address clients are told about.
    pub address: Option<Ipv4Addr>,
    /// The interface.
    pub interface: Option<String>,
    /// `full on IF`, `proxy on IF`, or absent.
    pub dhcp: Option<String>,
    /// TFTP listen address.
    pub tftp: Option<SocketAddr>,
    /// HTTP base URL.
    pub http: Option<String>,
    /// Discovery listen address (UDP and TCP).
    pub discovery: Option<SocketAddr>,
    /// Machines listed in the catalog, and whether there is a default.
    pub machines: usize,
    /// Whether unlisted machines boot the catalog's default.
    pub default: bool,
}

/// The IPv4 address of `interface`, as `ip -j -4 addr show dev IF` reports it.
pub(crate) fn interface_address(interface: &str) -> Result<Ipv4Addr, String> {
    let out = crate::host::run(
        Command::new("ip").args(["-j", "-4", "addr", "show", "dev", interface]),
        &format!("`ip addr show dev {interface}`"),
    )
    .map_err(|e| format!("{e}: is {interface} the name of an interface here (`ip link`)?"))?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("cannot read `ip -j addr` output: {e}"))?;
    v.get(0)
        .and_then(|i| i["addr_info"].get(0))
        .and_then(|a| a["local"].as_str())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("interface {interface} has no IPv4 address: add one or pass --address"))
}

fn sink<E: Serialize + 'static>(
    service: &'static str,
    emit: &Arc<dyn Fn(Value) + Send + Sync>,
) -> EventSink<E> {
    let emit = emit.clone();
    Arc::new(move |e: E| {
        let mut v = serde_json::to_value(&e).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("service".into(), Value::from(service));
        }
        emit(v);
    })
}

/// Why `monarch netboot serve` did not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The boot root's catalog does not load.
    #[error(transparent)]
    Catalog(#[from] monarch_net::catalog::CatalogError),
    /// `--interface` has no address to serve on.
    #[error("{0}")]
    Interface(String),
    /// The TFTP service could not start.
    #[error(transparent)]
    Tftp(#[from] monarch_net::tftp::TftpError),
    /// The HTTP service could not start.
    #[error(transparent)]
    Http(#[from] monarch_net::http::HttpError),
    /// The discovery service could not start.
    #[error(transparent)]
    Discovery(#[from] monarch_net::discovery::DiscoveryError),
    /// The DHCP service could not start.
    #[error(transparent)]
    Dhcp(#[from] monarch_net::dhcp::DhcpError),
    /// DHCP without an interface to answer on.
    #[error(
        "DHCP needs --interface (it answers on that interface only) and an IPv4 address on it (or --address)"
    )]
    DhcpNeedsInterface,
    /// Every service was turned off.
    #[error("no service chosen: enable at least one of DHCP, TFTP, HTTP, discovery")]
    NoService,
    /// A service's task ended abnormally.
    #[error("a network service stopped: {0}")]
    Stopped(tokio::task::JoinError),
}

/// Start every chosen service, emit `ready`, then serve until `stop` resolves (SIGINT or
/// SIGTERM for the command). Any service that cannot start is an error naming it and the
/// fix; nothing is left listening.
pub async fn serve(
    opts: &ServeOptions,
    emit: Arc<dyn Fn(Value) + Send + Sync>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let catalog = Arc::new(Catalog::load(&opts.root)?);
    let shared = SharedCatalog::from(catalog.clone());
    let address = match (opts.address, &opts.interface) {
        (Some(a), _) => Some(a),
        (None, Some(i)) => Some(interface_address(i).map_err(ServeError::Interface)?),
        (None, None) => None,
    };
    let bind_ip = IpAddr::V4(address.unwrap_or(Ipv4Addr::UNSPECIFIED));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ready = Ready {
        root: catalog.root().to_path_buf(),
        address,
        interface: opts.interface.clone(),
        dhcp: None,
        tftp: None,
        http: None,
        discovery: None,
        machines: catalog.machines().count(),
        default: catalog.default_machine().is_some(),
    };

    if let Some(port) = opts.tftp_port {
        let cfg = TftpConfig {
            spin: opts.tftp_spin,
            ..TftpConfig::new(SocketAddr::new(bind_ip, port), catalog.root())
        };
        let server = TftpServer::bind(cfg).await?;
        ready.tftp = Some(server.local_addr());
        tasks.spawn(server.run(sink("tftp", &emit)));
    }
    let mut http_base = None;
    if let Some(port) = opts.http_port {
        let cfg = HttpConfig {
            spin: opts.http_spin,
            ..HttpConfig::new(SocketAddr::new(bind_ip, port), catalog.root(), shared.clone())
        };
        let server = HttpServer::bind(cfg).await?;
        let local = server.local_addr();
        let host = address.map_or_else(|| local.ip().to_string(), |a| a.to_string());
        let base = format!("http://{host}:{}", local.port());
        http_base = Some(base.clone());
        ready.http = Some(base);
        let events = sink("http", &emit);
        tasks.spawn(async move {
            if let Err(e) = server.run(events).await {
                tracing::error!(service = "http", error = %e, "the HTTP service ended");
            }
        });
    }
    if let Some(port) = opts.discovery_port {
        // Discovery is broadcast: with an interface, listen on every address but only on that
        // interface; without one, on exactly the address asked for (broadcasts then reach it
        // only when that address is the unspecified one).
        let udp_ip = if opts.interface.is_some() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { bind_ip };
        let mut cfg = DiscoveryConfig::new(
            SocketAddr::new(udp_ip, port),
            SocketAddr::new(bind_ip, port),
            shared.clone(),
        );
        cfg.interface = opts.interface.clone();
        let server = DiscoveryServer::bind(cfg).await?;
        ready.discovery = Some(server.local_tcp());
        let events = sink("discovery", &emit);
        tasks.spawn(async move {
            if let Err(e) = server.run(events).await {
                tracing::error!(service = "discovery", error = %e, "the discovery service ended");
            }
        });
    }
    if opts.dhcp != DhcpChoice::Off {
        let (Some(interface), Some(server_ip)) = (opts.interface.clone(), address) else {
            return Err(ServeError::DhcpNeedsInterface);
        };
        let mode = match &opts.dhcp {
            DhcpChoice::Full { range, leases } => {
                DhcpMode::Full { pool: PoolConfig::new(range.0, range.1), lease_file: leases.clone() }
            }
            _ => DhcpMode::Proxy,
        };
        ready.dhcp = Some(format!(
            "{} on {interface}",
            if matches!(mode, DhcpMode::Proxy) { "proxy" } else { "full" }
        ));
        let mut cfg = DhcpConfig::new(Some(&interface), server_ip, mode);
        cfg.http_base = http_base.clone();
        let server = DhcpServer::bind(cfg).await?;
        let events = sink("dhcp", &emit);
        tasks.spawn(async move {
            if let Err(e) = server.run(events).await {
                tracing::error!(service = "dhcp", error = %e, "the DHCP service ended");
            }
        });
    }
    if tasks.is_empty() {
        return Err(ServeError::NoService);
    }
    tasks.spawn(watch_catalog(shared, emit.clone()));
    let mut r = serde_json::to_value(&ready).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut r {
        m.insert("service".into(), json!("netboot"));
        m.insert("event".into(), json!("ready"));
    }
    emit(r);
    tracing::info!(
        root = %catalog.root().display(),
        tftp = ready.tftp.map(tracing::field::display),
        http = ready.http.as_deref(),
        discovery = ready.discovery.map(tracing::field::display),
        dhcp = ready.dhcp.as_deref(),
        "network boot services ready"
    );
    tokio::select! {
        () = stop => {}
        Some(done) = tasks.join_next() => {
            if let Err(e) = done {
                return Err(ServeError::Stopped(e));
            }
        }
    }
    tasks.abort_all();
    Ok(())
}

/// Reload `machines.toml` when it changes (the operator commands replace it atomically), so a
/// provisioned or repurposed machine gets its new image on its next boot without restarting
/// the services. A catalog that does not load is reported and the previous one stays.
async fn watch_catalog(shared: SharedCatalog, emit: Arc<dyn Fn(Value) + Send + Sync>) {
    let root = shared.get().root().to_path_buf();
    let file = root.join(CATALOG_FILE);
    let stamp = |f: &std::path::Path| std::fs::metadata(f).and_then(|m| m.modified()).ok();
    let mut seen = stamp(&file);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = stamp(&file);
        if now == seen {
            continue;
        }
        seen = now;
        match Catalog::load(&root) {
            Ok(c) => {
                let machines = c.machines().count();
                shared.replace(c);
                emit(json!({"service": "netboot", "event": "catalog_reloaded", "machines": machines}));
            }
            Err(e) => {
                // The operator's edit did not take: say so in the logs too, not only in the
                // event stream, since nothing else will.
                tracing::warn!(catalog = %file.display(), error = %e, "the catalog does not load; still serving the previous one");
                emit(json!({
                    "service": "netboot", "event": "catalog_error",
                    "error": format!("{e}; still serving the previous catalog"),
                }));
            }
        }
    }
}

/// Which operator command edits the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assign {
    /// A machine's first OS: it must not be in the catalog with an image yet.
    Provision,
    /// Another image for a machine already in the catalog.
    Repurpose,
}

/// What `provision` / `repurpose` changed.
#[derive(Debug, Clone, Serialize)]
pub struct Assigned {
    /// `aa:bb:cc:dd:ee:ff`.
    pub machine: String,
    /// The image now assigned (relative to the root).
    pub image: String,
    /// The image it had before (repurpose).
    pub previous: Option<String>,
    /// Set when the image was copied into the root first.
    pub copied_from: Option<PathBuf>,
    /// The catalog file written.
    pub catalog: PathBuf,
}

/// `monarch netboot provision|repurpose`: assign `image` to machine `mac` in
/// `ROOT/machines.toml` (kept as written: comments and order stay; replaced atomically).
/// An image outside the root is copied into `ROOT/images/` first. The new catalog is loaded
/// before it replaces the old one: a change that would not load is refused and the old file
/// stays. The machine gets the image the next time it asks the discovery service.
pub fn assign(
    root: &std::path::Path,
    mac: &str,
    image: &std::path::Path,
    name: Option<&str>,
    how: Assign,
) -> Result<Assigned, AssignError> {
    use monarch_net::catalog::CATALOG_FILE;
    use monarch_proto::mac::Mac;
    let mac =
        mac.parse::<Mac>().ok().map(|m| m.to_string()).ok_or_else(|| AssignError::Mac(mac.to_string()))?;
    let root =
        std::fs::canonicalize(root).map_err(|e| AssignError::Root { path: root.to_path_buf(), source: e })?;
    let file = root.join(CATALOG_FILE);
    let old = match std::fs::read_to_string(&file) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(AssignError::Read { path: file, source: e }),
    };
    let mut doc: toml_edit::DocumentMut = old
        .as_deref()
        .unwrap_or("")
        .parse()
        .map_err(|e| AssignError::Parse { path: file.clone(), source: Box::new(e) })?;
    let previous = doc
        .get("machine")
        .and_then(|t| t.get(&mac))
        .and_then(|m| m.get("image"))
        .and_then(|i| i.as_str())
        .map(str::to_string);
    let listed = doc.get("machine").and_then(|t| t.get(&mac)).is_some();
    match how {
        Assign::Provision if previous.is_some() => {
            return Err(AssignError::Provisioned { mac, image: previous.unwrap_or_default() });
        }
        Assign::Repurpose if !listed => {
            return Err(AssignError::NotListed { mac, catalog: file });
        }
        _ => {}
    }
    let (rel, copied_from) = image_in_root(&root, image)?;
    let machines = doc
        .entry("machine")
        .or_insert_with(|| {
            let mut t = toml_edit::Table::new();
            t.set_implicit(true);
            toml_edit::Item::Table(t)
        })
        .as_table_mut()
        .ok_or_else(|| AssignError::Shape {
            path: file.clone(),
            what: "`machine` must be a table of machines".into(),
        })?;
    let entry = machines
        .entry(&mac)
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()))
        .as_table_mut()
        .ok_or_else(|| AssignError::Shape {
            path: file.clone(),
            what: format!("machine.\"{mac}\" must be a table"),
        })?;
    if let Some(n) = name {
        entry["name"] = toml_edit::value(n);
    }
    entry["image"] = toml_edit::value(rel.as_str());
    let text = doc.to_string();
    monarch_drivers::fs::write_atomically(&file, text.as_bytes())
        .map_err(|e| AssignError::Write { path: file.clone(), source: e })?;
    if let Err(e) = Catalog::load(&root) {
        // Put the old catalog back: a change that does not load must not stay.
        let _ = match &old {
            Some(o) => monarch_drivers::fs::write_atomically(&file, o.as_bytes()),
            None => std::fs::remove_file(&file),
        };
        return Err(AssignError::NotLoaded(e));
    }
    Ok(Assigned { machine: mac, image: rel, previous, copied_from, catalog: file })
}

/// Why `monarch netboot provision|repurpose` changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    /// The machine is not named by a MAC address.
    #[error("{0:?} is not a MAC address: write it as aa:bb:cc:dd:ee:ff (or with dashes)")]
    Mac(String),
    /// The boot root is not there.
    #[error("boot root {}: {source}: create it or pass another --root", path.display())]
    Root {
        /// The root given.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The catalog could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The catalog file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The catalog is not TOML.
    #[error("{}: {source}: fix the file first", path.display())]
    Parse {
        /// The catalog file.
        path: PathBuf,
        /// What the TOML parser said.
        source: Box<toml_edit::TomlError>,
    },
    /// The catalog's shape is not a catalog's.
    #[error("{}: {what}", path.display())]
    Shape {
        /// The catalog file.
        path: PathBuf,
        /// What must be a table.
        what: String,
    },
    /// `provision` of a machine that already has an image.
    #[error(
        "machine {mac} is already provisioned with {image}: use `monarch netboot repurpose` to give it another image"
    )]
    Provisioned {
        /// The machine.
        mac: String,
        /// Its image now.
        image: String,
    },
    /// `repurpose` of a machine the catalog does not list.
    #[error("machine {mac} is not in {}: use `monarch netboot provision` for its first OS", catalog.display())]
    NotListed {
        /// The machine.
        mac: String,
        /// The catalog file.
        catalog: PathBuf,
    },
    /// The image cannot be found.
    #[error("image {}: {source}", path.display())]
    Image {
        /// The image given.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The image is not a regular file.
    #[error("image {} is not a file", .0.display())]
    NotAFile(PathBuf),
    /// The image's path names no file.
    #[error("image {} names no file", .0.display())]
    NoFileName(PathBuf),
    /// `ROOT/images` could not be made.
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// `images/` already holds a different file of the image's name.
    #[error("{} exists and differs from {}: rename the image or remove the old one", dest.display(), image.display())]
    Differs {
        /// The file in the root.
        dest: PathBuf,
        /// The image given.
        image: PathBuf,
    },
    /// The image could not be copied into the root.
    #[error("cannot copy {} into {}: {source}", image.display(), dir.display())]
    Copy {
        /// The image given.
        image: PathBuf,
        /// `ROOT/images`.
        dir: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The catalog could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// What was written.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The changed catalog would not load; the old one was put back.
    #[error("the change was not made: {0}")]
    NotLoaded(monarch_net::catalog::CatalogError),
}

/// Why the discovery service's thread did not start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The runtime could not start, or the service could not bind (`what` it was to do).
    #[error("cannot {what}: {why}")]
    Bind {
        /// What it was started to do.
        what: String,
        /// Why not.
        why: String,
    },
    /// No thread could be started.
    #[error("cannot start the boot server's thread: {0}")]
    Thread(std::io::Error),
    /// The thread died before it said whether it serves.
    #[error("the boot server's thread died while starting")]
    Died,
}

/// `image` as a path relative to `root`: as it is when it already lies inside the root,
/// else copied into `root/images/` (refusing to replace a different file of that name).
fn image_in_root(
    root: &std::path::Path,
    image: &std::path::Path,
) -> Result<(String, Option<PathBuf>), AssignError> {
    let canon = std::fs::canonicalize(image)
        .map_err(|e| AssignError::Image { path: image.to_path_buf(), source: e })?;
    if !canon.is_file() {
        return Err(AssignError::NotAFile(image.to_path_buf()));
    }
    if let Ok(rel) = canon.strip_prefix(root) {
        return Ok((rel.to_string_lossy().into_owned(), None));
    }
    let name = canon.file_name().ok_or_else(|| AssignError::NoFileName(image.to_path_buf()))?;
    let dir = root.join("images");
    std::fs::create_dir_all(&dir).map_err(|e| AssignError::CreateDir { path: dir.clone(), source: e })?;
    let dest = dir.join(name);
    if dest.exists() {
        let same = std::fs::read(&dest).ok() == std::fs::read(&canon).ok();
        if !same {
            return Err(AssignError::Differs { dest, image: image.to_path_buf() });
        }
    } else {
        monarch_drivers::fs::copy_atomically(&canon, &dest).map_err(|e| AssignError::Copy {
            image: image.to_path_buf(),
            dir: dir.clone(),
            source: e,
        })?;
    }
    Ok((format!("images/{}", name.to_string_lossy()), Some(canon)))
}

/// The discovery service on a thread of its own, running a current-thread tokio runtime, for
/// the synchronous code that serves one image for a while (a network-booted secondary's
/// monarch, a netbooted cluster's head). Dropping it stops the service and joins the thread,
/// so its sockets are closed.
pub struct DiscoveryThread {
    udp: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiscoveryThread {
    /// Bind `cfg` on a thread named `name` and serve until dropped, every event to `sink`;
    /// `ended` is told how the service ended if it ends by itself. A bind failure reads
    /// "cannot `what`: why".
    pub fn start(
        name: String,
        what: &str,
        cfg: DiscoveryConfig,
        sink: EventSink<monarch_net::discovery::DiscoveryEvent>,
        ended: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Result<DiscoveryThread, StartError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start the boot server's runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let server = match DiscoveryServer::bind(cfg).await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(server.local_udp()));
                    tokio::select! {
                        r = server.run(sink) => ended(r.map_err(|e| e.to_string())),
                        _ = stopped => {}
                    }
                });
            })
            .map_err(StartError::Thread)?;
        let mut t = DiscoveryThread {
            udp: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            stop: Some(stop),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(udp)) => {
                t.udp = udp;
                Ok(t)
            }
            Ok(Err(why)) => Err(StartError::Bind { what: what.to_string(), why }),
            Err(_) => Err(StartError::Died),
        }
    }

    /// Where its discovery (UDP) socket is bound.
    pub fn udp(&self) -> SocketAddr {
        self.udp
    }
}

impl Drop for DiscoveryThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
