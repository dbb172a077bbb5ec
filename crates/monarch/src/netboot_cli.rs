//! `monarch netboot …`: network boot for machines with no memory window.

use crate::exit::bad_input;
use clap::{Args, Subcommand};
use monarch_boot::cmdline::NetbootAgentArgs;
use monarch_boot::handoff::Handoff;
use monarch_boot::netboot::{self, Assign, DhcpChoice, ServeOptions};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum NetbootCmd {
    /// Serve DHCP/ProxyDHCP, TFTP, HTTP and the discovery service from one root.
    #[command(long_about = "Start the network boot services on one interface, all serving ROOT:\n\n\
- DHCP (--dhcp full): addresses from --range, leases kept in --leases (written atomically, read back at start); PXE clients get options 43/60/66/67 (and 97 echoed) with the boot file for their architecture (option 93); iPXE clients get the URL of their own iPXE script on the HTTP service;\n\
- ProxyDHCP (--dhcp proxy): beside an existing DHCP server, boot options only (ports 67 and 4011);\n\
- TFTP (port 69): read-only, confined to ROOT, with blksize/tsize/timeout/windowsize;\n\
- HTTP (port 8080): files from ROOT with Content-Length and Range, and /ipxe/MAC.ipxe scripts;\n\
- discovery (port 4012, UDP + TCP): the reference design's flow for `monarch netboot agent`: size and digest first, then the bulk transfer into the agent's pre-posted buffer.\n\n\
What each machine boots is ROOT/machines.toml:\n\n\
  [default]                       # every machine not listed\n  \
kernel = \"vmlinuz\"              # for iPXE: paths under ROOT, or tftp:// / http:// URLs\n  \
initrd = \"initrd.img\"\n  \
cmdline = \"console=ttyS0\"\n  \
image = \"images/os.img\"         # for monarch agents (discovery service)\n  \
[machine.\"52:54:00:12:34:56\"]\n  \
name = \"node1\"                  # any field of [default]\n\n\
`monarch netboot provision` and `repurpose` edit it. Runs until SIGINT/SIGTERM; --json prints one event per line (the first: `ready`, with where each service listens).")]
    Serve(ServeArgs),
    /// Give a machine its first OS image (edits ROOT/machines.toml).
    Provision(AssignArgs),
    /// Give a machine another OS image (edits ROOT/machines.toml).
    Repurpose(AssignArgs),
    /// The machine's side: discover a boot server, fetch and verify its image, then hand off
    /// (diskless) or install it in an A/B slot and boot from the disk.
    #[command(
        long_about = "The machine's side of the reference design's network boot (run from its firmware or initramfs).\n\n\
1. DISCOVER (UDP, --server: a boot server or a broadcast address), rebroadcast every --interval until --wait runs out;\n\
2. the server's OFFER says the image's size and digest; the agent pre-posts a buffer of exactly that size;\n\
3. DOWNLOAD over TCP: the server streams the image (sendfile) straight into the buffer;\n\
4. verify the buffer against the offered digest (nothing unverified is ever handed off);\n\
5. diskless: hand off to the image (--handoff exec runs it); with --disk: install it into the inactive A/B slot, commit record last (a power cut at any point leaves the previous image bootable), then restart as `monarch netboot boot-disk` and boot it from the disk.\n\n\
If the disk already holds the offered image (same digest), nothing is transferred. If no boot server answers within --wait, the machine boots the image it has, and says so.\n\n\
With --trust K.pub, every image this machine would boot (fetched, or already on the disk) must carry an attached signature by a trusted key (--signature optional: or none); the disk keeps the image with its signature, and the restart into the disk checks it again."
    )]
    Agent(NetbootAgentArgs),
    /// Re-provision a machine whose installed image fails verification (fetch, install, boot).
    Recover(NetbootAgentArgs),
    /// Boot the disk's image: the newest committed A/B slot that verifies (else the other);
    /// with --trust, only if its attached signature is by a trusted key.
    BootDisk(BootDiskArgs),
    /// Show both A/B slots of a disk and whether each verifies.
    Status(StatusArgs),
}

#[derive(Args)]
pub struct BootDiskArgs {
    /// The machine's disk.
    #[arg(long, value_name = "TARGET")]
    disk: PathBuf,
    /// What to do with the verified image.
    #[arg(long, value_enum, default_value = "exec")]
    handoff: Handoff,
    /// One JSON object on stdout before the handoff.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    trust: monarch_boot::signing::TrustArgs,
}

#[derive(Args)]
pub struct StatusArgs {
    /// The machine's disk.
    #[arg(long, value_name = "TARGET")]
    disk: PathBuf,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Directory served (kernels, initrds, images, machines.toml).
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Interface of the boot network (DHCP answers only there).
    #[arg(long, value_name = "IF")]
    interface: Option<String>,
    /// This server's IPv4 address on that network [default: the interface's].
    #[arg(long, value_name = "IP")]
    address: Option<Ipv4Addr>,
    /// DHCP service: off, full (hands out addresses) or proxy (beside another DHCP server).
    #[arg(long, value_name = "MODE", default_value = "off", value_parser = ["off", "full", "proxy"])]
    dhcp: String,
    /// Addresses handed out by --dhcp full, e.g. 10.0.0.100-10.0.0.199.
    #[arg(long, value_name = "FIRST-LAST")]
    range: Option<String>,
    /// Lease file of --dhcp full [default: ROOT/../dhcp.leases].
    #[arg(long, value_name = "FILE")]
    leases: Option<PathBuf>,
    /// TFTP port (0: no TFTP).
    #[arg(long, value_name = "PORT", default_value_t = 69)]
    tftp_port: u16,
    /// How long, in microseconds, a TFTP transfer polls for each ACK before it sleeps (0:
    /// never). Polling saves a wake-up per block or window, which on a VM is most of a
    /// lock-step transfer's time; it costs a core while a transfer runs, and only one less
    /// than the cores' count of transfers poll at once.
    #[arg(long, value_name = "US", default_value_t = monarch_net::tftp::DEFAULT_SPIN_MICROS)]
    tftp_spin_us: u64,
    /// HTTP port (0: no HTTP).
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    http_port: u16,
    /// How long, in microseconds, an HTTP file transfer polls for room in its socket before
    /// it sleeps (0: never), keeping at most 256 KiB queued unsent meanwhile. Measured on a
    /// 2-core VM with curl: 0.82–1.24× nginx's rate (12 of 14 figures ≥ 1), against
    /// 0.68–1.03× (3 of 10) without; it costs a core while a transfer runs, and only one less
    /// than the cores' count of transfers poll at once.
    #[arg(long, value_name = "US", default_value_t = monarch_net::http::DEFAULT_SPIN_MICROS)]
    http_spin_us: u64,
    /// Discovery port, UDP and TCP (0: no discovery service).
    #[arg(long, value_name = "PORT", default_value_t = 4012)]
    discovery_port: u16,
    /// One JSON object per line on stdout.
    #[arg(long)]
    json: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics: transfers, bytes and errors per
    /// protocol (e.g. 127.0.0.1:9465; the `ready` event names the address).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

#[derive(Args)]
pub struct AssignArgs {
    /// The boot server's root (where machines.toml is).
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// The machine's MAC address (aa:bb:cc:dd:ee:ff).
    #[arg(long, value_name = "MAC")]
    machine: String,
    /// The OS image (copied into ROOT/images/ when it is outside ROOT).
    #[arg(long, value_name = "FILE")]
    image: PathBuf,
    /// A name for the machine (events, scripts).
    #[arg(long)]
    name: Option<String>,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: NetbootCmd) -> ExitCode {
    match cmd {
        NetbootCmd::Serve(a) => serve(a),
        NetbootCmd::Provision(a) => assign(a, Assign::Provision),
        NetbootCmd::Repurpose(a) => assign(a, Assign::Repurpose),
        NetbootCmd::Agent(a) => agent(a, false),
        NetbootCmd::Recover(a) => agent(a, true),
        NetbootCmd::BootDisk(a) => boot_disk(&a),
        NetbootCmd::Status(a) => status(&a.disk, a.json),
    }
}

fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let bad = || format!("--range {s:?}: write FIRST-LAST, e.g. 10.0.0.100-10.0.0.199");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    Ok((a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?))
}

fn serve(a: ServeArgs) -> ExitCode {
    let dhcp = match a.dhcp.as_str() {
        "full" => {
            let Some(range) = a.range.as_deref() else {
                return bad_input(&"--dhcp full needs --range FIRST-LAST (the addresses to hand out)");
            };
            let range = match parse_range(range) {
                Ok(r) => r,
                Err(e) => return bad_input(&e),
            };
            let leases = a.leases.clone().unwrap_or_else(|| {
                a.root.canonicalize().unwrap_or_else(|_| a.root.clone()).with_file_name("dhcp.leases")
            });
            DhcpChoice::Full { range, leases }
        }
        "proxy" => DhcpChoice::Proxy,
        _ => DhcpChoice::Off,
    };
    let port = |p: u16| (p != 0).then_some(p);
    let opts = ServeOptions {
        root: a.root,
        interface: a.interface,
        address: a.address,
        dhcp,
        tftp_port: port(a.tftp_port),
        tftp_spin: std::time::Duration::from_micros(a.tftp_spin_us),
        http_port: port(a.http_port),
        http_spin: std::time::Duration::from_micros(a.http_spin_us),
        discovery_port: port(a.discovery_port),
    };
    let json = a.json;
    let metrics = match a.metrics {
        Some(addr) => {
            let m = Arc::new(monarch_boot::metrics::NetbootMetrics::default());
            match monarch_boot::metrics::serve(addr, m.clone()) {
                Ok(bound) => {
                    let v = serde_json::json!({"service": "netboot", "event": "metrics", "address": bound.to_string()});
                    if json {
                        println!("{v}")
                    } else {
                        println!("{}", human(&v))
                    }
                    Some(m)
                }
                Err(e) => return bad_input(&e),
            }
        }
        None => None,
    };
    let emit: Arc<dyn Fn(Value) + Send + Sync> = Arc::new(move |v: Value| {
        if let Some(m) = &metrics {
            m.observe(&v);
        }
        if json {
            println!("{v}");
        } else {
            println!("{}", human(&v));
        }
    });
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return bad_input(&format!("cannot start the async runtime: {e}")),
    };
    let result = rt.block_on(netboot::serve(&opts, emit, stop_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => bad_input(&e),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// One line for people: `service event key=value …`.
fn human(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut line = format!("{:<9} {:<10}", s("service"), s("event"));
    if let Value::Object(m) = v {
        for (k, val) in m {
            if k == "service" || k == "event" || val.is_null() {
                continue;
            }
            match val {
                Value::String(t) => line.push_str(&format!(" {k}={t}")),
                other => line.push_str(&format!(" {k}={other}")),
            }
        }
    }
    line
}

fn assign(a: AssignArgs, how: Assign) -> ExitCode {
    match netboot::assign(&a.root, &a.machine, &a.image, a.name.as_deref(), how) {
        Ok(r) if a.json => {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(r) => {
            let verb = if how == Assign::Provision { "provisioned" } else { "repurposed" };
            println!("{} {verb}: image {} (in {})", r.machine, r.image, r.catalog.display());
            if let Some(p) = &r.previous {
                println!("  previous image: {p}");
            }
            if let Some(f) = &r.copied_from {
                println!("  copied from {}", f.display());
            }
            println!("  it gets the image the next time it boots from the network (`monarch netboot agent`)");
            ExitCode::SUCCESS
        }
        Err(e) => bad_input(&e),
    }
}

fn mac_of(a: &NetbootAgentArgs) -> Result<monarch_proto::mac::Mac, String> {
    let text = match (&a.mac, &a.interface) {
        (Some(m), _) => m.clone(),
        (None, Some(i)) => std::fs::read_to_string(format!("/sys/class/net/{i}/address"))
            .map_err(|e| format!("cannot read the MAC of interface {i}: {e}: check the name or pass --mac"))?
            .trim()
            .to_string(),
        (None, None) => {
            return Err(
                "give --mac MAC or --interface IF (this machine's identity for the boot server)".into()
            );
        }
    };
    text.parse().map_err(|_| format!("{text:?} is not a MAC address: write aa:bb:cc:dd:ee:ff"))
}

fn agent(a: NetbootAgentArgs, recover: bool) -> ExitCode {
    use monarch_boot::netagent::{self, NetAgentOptions, Next};
    let parsed = (|| -> Result<NetAgentOptions, String> {
        let mut fetch = monarch_net::discovery::FetchConfig::new(a.server, mac_of(&a)?);
        fetch.interface = a.interface.clone();
        fetch.give_up_after = a.wait;
        fetch.interval = a.interval;
        fetch.max_size = a.max_size;
        if recover && a.disk.is_none() {
            return Err("recover needs --disk: it re-provisions the image installed on that disk".into());
        }
        Ok(NetAgentOptions {
            fetch,
            disk: a.disk.clone(),
            disk_size: a.disk_size,
            force: recover,
            handoff: a.handoff,
            trust: a.trust.load().map_err(|e| e.to_string())?,
        })
    })();
    let opts = match parsed {
        Ok(o) => o,
        Err(e) => return bad_input(&e),
    };
    if recover && let Some(disk) = &opts.disk {
        if let Ok(t) = monarch_drivers::disk::Target::open(disk) {
            for s in t.verify_all() {
                eprintln!("netboot recover: before: {s}");
            }
        }
    }
    let mut progress = |m: &str| eprintln!("netboot agent: {m}");
    match netagent::run(&opts, &mut progress) {
        Ok((report, next)) => {
            eprintln!("netboot agent: {} ({})", report.image, report.reason);
            if a.json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            }
            match next {
                Next::Run(bytes) => handoff(&report.image, &bytes, a.handoff),
                // The restart: a fresh process that reads the image back from the disk.
                Next::BootDisk(disk) => restart_into_disk(&disk, &a),
            }
        }
        Err(e) => {
            eprintln!("monarch: netboot agent: {e}");
            ExitCode::from(crate::exit::BOOT_FAILED)
        }
    }
}

fn handoff(name: &str, bytes: &[u8], how: Handoff) -> ExitCode {
    if how == Handoff::None {
        eprintln!("netboot agent: {name} verified; handoff none: exiting");
        return ExitCode::SUCCESS;
    }
    let e = match monarch_drivers::memimage::MemImage::of(name, bytes) {
        Ok(image) => match how.run(image, name, &[], &mut |line| eprintln!("netboot agent: {line}")) {
            Ok(()) => return ExitCode::SUCCESS,
            Err(e) => e.to_string(),
        },
        Err(e) => format!("cannot hold the image in memory: {e}"),
    };
    eprintln!("monarch: netboot agent: {e}");
    ExitCode::from(crate::exit::BOOT_FAILED)
}

/// The restart: `boot-disk` with this agent's handoff, output and trust (the fresh process
/// checks the disk image's signature with the same keys and policy).
fn restart_into_disk(disk: &std::path::Path, a: &NetbootAgentArgs) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0("monarch").args(["netboot", "boot-disk", "--disk"]).arg(disk);
    cmd.args(["--handoff", a.handoff.name()]);
    if a.json {
        cmd.arg("--json");
    }
    cmd.args(a.trust.to_args());
    let e = cmd.exec();
    eprintln!("monarch: netboot agent: cannot restart into the disk: {e}");
    ExitCode::from(crate::exit::BOOT_FAILED)
}

fn boot_disk(a: &BootDiskArgs) -> ExitCode {
    let trust = match a.trust.load() {
        Ok(t) => t,
        Err(e) => return bad_input(&e),
    };
    let mut progress = |m: &str| eprintln!("netboot boot-disk: {m}");
    match monarch_boot::netagent::boot_disk(&a.disk, &trust, &mut progress) {
        Ok(b) => {
            if a.json {
                let v = serde_json::json!({
                    "source": "disk", "image": b.name, "bytes": b.bytes.len(), "slot": b.slot.name(),
                    "generation": b.generation, "fell_back": b.fell_back_from.is_some(),
                });
                println!("{v}");
            }
            handoff(&b.name, &b.bytes, a.handoff)
        }
        Err(e) => {
            eprintln!("monarch: netboot boot-disk: {e}");
            ExitCode::from(crate::exit::BOOT_FAILED)
        }
    }
}

fn status(disk: &std::path::Path, json: bool) -> ExitCode {
    let t = match monarch_drivers::disk::Target::open(disk) {
        Ok(t) => t,
        Err(e) => return bad_input(&e),
    };
    let all = t.verify_all();
    if json {
        let v: Vec<Value> = all
            .iter()
            .map(|s| serde_json::json!({"slot": s.slot.name(), "bootable": s.is_bootable(), "state": s.to_string()}))
            .collect();
        println!("{}", Value::Array(v));
    } else {
        for s in &all {
            println!("{s}");
        }
    }
    if all.iter().any(monarch_drivers::disk::SlotStatus::is_bootable) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::BOOT_FAILED)
    }
}
