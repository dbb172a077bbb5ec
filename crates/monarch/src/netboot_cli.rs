//! `monarch netboot …`: network boot for machines with no memory window (seed 001).

use clap::{Args, Subcommand};
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
- discovery (port 4012, UDP + TCP): the seed's flow for `monarch netboot agent`: size and digest first, then the bulk transfer into the agent's pre-posted buffer.\n\n\
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
    /// HTTP port (0: no HTTP).
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    http_port: u16,
    /// Discovery port, UDP and TCP (0: no discovery service).
    #[arg(long, value_name = "PORT", default_value_t = 4012)]
    discovery_port: u16,
    /// One JSON object per line on stdout.
    #[arg(long)]
    json: bool,
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
    }
}

fn bad_input(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("monarch: {e}");
    ExitCode::from(2)
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
        http_port: port(a.http_port),
        discovery_port: port(a.discovery_port),
    };
    let json = a.json;
    let emit: Arc<dyn Fn(Value) + Send + Sync> = Arc::new(move |v: Value| {
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
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
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
