//! A cluster booted over the network (`launch = "netboot"` on a `[[cluster]]`): its head,
//! once it has copied the kernel from cluster 0's bank into its own and checked it, serves
//! that kernel to its cluster's other cores with the network boot discovery service on its
//! cluster's network, instead of letting them read it from its bank; each of those cores runs
//! in the network namespace the topology names for it (`ip netns exec`), discovers its head,
//! has the kernel sent into a buffer of the offered size, and checks it against the handoff
//! record before it meets the others at its cluster's barrier and the final one and jumps.
//!
//! So the image crosses the boot server's network once per core, from its own cluster's head,
//! and leaves cluster 0's bank once per cluster. The description and the boot info stay in
//! the cluster's bank (the cluster's shared memory), where the kernel finds its boot info.
//!
//! What a core gets over the network is untrusted: the offer may name no larger size than the
//! handoff record's kernel length, and the bytes must have the record's length and BLAKE3
//! digest (besides the offer's digest, which the fetch checks).

use super::bank::Record;
use crate::cmdline::CoreArgs;
use crate::events::EventKind;
use crate::netboot::DiscoveryThread;
use crate::topology::{ClusterNet, Clusters, core_id, derived_mac};
use monarch_net::EventSink;
use monarch_net::catalog::{Catalog, Machine};
use monarch_net::discovery::{DiscoveryConfig, DiscoveryEvent, FetchConfig};
use monarch_proto::Algo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// The served copy's name in the head's served folder.
const KERNEL: &str = "kernel";

/// How often a core rediscovers while its head does not answer.
const REDISCOVER: Duration = Duration::from_millis(300);

/// `--netboot` for the cores of `cluster`: its network, as JSON, when it boots over one.
pub fn arg(c: &Clusters, cluster: u16) -> Option<String> {
    let net = c.clusters.iter().find(|s| s.id == cluster)?.net.as_ref()?;
    serde_json::to_string(net).ok()
}

/// The network of a core's cluster, when it boots over one.
fn net_of(a: &CoreArgs) -> Result<Option<ClusterNet>, String> {
    a.netboot
        .as_deref()
        .map(|j| serde_json::from_str(j).map_err(|e| format!("--netboot is not a cluster's network: {e}")))
        .transpose()
}

/// The command that starts core `args.lid`: in its network namespace when its cluster boots
/// over the network, else a plain process beside its head.
pub(crate) fn command(exe: &Path, args: &CoreArgs) -> Result<Command, String> {
    let ns = net_of(args)?.and_then(|n| n.namespace_of(args.lid).map(str::to_string));
    Ok(match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns]).arg(exe).args(args.to_args());
            c
        }
        None => {
            let mut c = Command::new(exe);
            c.args(args.to_args());
            c
        }
    })
}

/// Where `ip netns add` puts a named network namespace.
const NETNS_DIR: &str = "/run/netns";

/// The namespaces of `net` not under `dir`.
fn missing_namespaces<'n>(net: &'n ClusterNet, dir: &Path) -> Vec<&'n str> {
    net.namespaces.iter().map(String::as_str).filter(|n| !dir.join(n).exists()).collect()
}

/// A head's boot server for its cluster's cores; stopped (and its served copy removed) when
/// dropped.
pub struct Serving {
    server: Option<DiscoveryThread>,
    root: PathBuf,
}

impl Drop for Serving {
    fn drop(&mut self) {
        // Stopped before its served copy goes.
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Start serving `kernel` (the checked copy in the head's bank) to the cluster's other cores,
/// when the cluster boots over the network; `None` when it does not. Every download the
/// server completes is a `served` event of the head, given to `emit` (from the server's thread).
pub(crate) fn start(
    a: &CoreArgs,
    kernel: &[u8],
    emit: impl Fn(EventKind) + Send + Sync + 'static,
) -> Result<Option<Serving>, String> {
    let Some(net) = net_of(a)? else { return Ok(None) };
    let head = core_id(a.cluster, 0);
    // Before anything is served or started: every core's namespace is there.
    let missing = missing_namespaces(&net, Path::new(NETNS_DIR));
    if !missing.is_empty() {
        return Err(format!(
            "cluster {}'s cores are to run in network namespaces that do not exist: {}; create them (ip netns add NAME, linked to {}) or fix the cluster's network.namespaces",
            a.cluster,
            missing.join(", "),
            net.interface
        ));
    }
    // The served folder: the discovery service serves files, so the kernel is written out of
    // the bank once, into the run folder.
    let root = a.run_dir.join(format!("c{}.netboot", a.cluster));
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .map_err(|e| format!("cannot clear {}: {e}; remove it", root.display()))?;
    }
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let mut serving = Serving { server: None, root: root.clone() };
    std::fs::write(root.join(KERNEL), kernel)
        .map_err(|e| format!("cannot write the served kernel in {}: {e}", root.display()))?;
    let machines = (1..=u16::try_from(net.namespaces.len()).unwrap_or(u16::MAX)).map(|lid| {
        let id = core_id(a.cluster, lid);
        (derived_mac(&id), Machine { name: Some(id), image: Some(KERNEL.into()), ..Machine::default() })
    });
    let catalog =
        Catalog::from_parts(&root, None, machines).map_err(|e| format!("cannot serve the kernel: {e}"))?;
    let udp = SocketAddr::from((net.address, net.port));
    let tcp = SocketAddr::from((net.address, 0));
    let cfg = DiscoveryConfig {
        algo: Algo::Blake3,
        interface: Some(net.interface.clone()),
        ..DiscoveryConfig::new(udp, tcp, catalog)
    };
    let sink: EventSink<DiscoveryEvent> = Arc::new(move |e| match e {
        DiscoveryEvent::Sent { peer, bytes, millis, .. } => {
            emit(EventKind::Served { id: head.clone(), to: peer.ip().to_string(), bytes, ms: millis as f64 })
        }
        DiscoveryEvent::Refused { .. } | DiscoveryEvent::Dropped { .. } | DiscoveryEvent::Failed { .. } => {
            eprintln!("monarch core {head}: boot server: {}", serde_json::json!(e));
        }
        _ => {}
    });
    let what = format!("serve its cluster's cores on {} ({udp})", net.interface);
    serving.server = Some(
        DiscoveryThread::start(format!("serve-c{}", a.cluster), &what, cfg, sink, |r| {
            if let Err(e) = r {
                eprintln!("monarch core: the boot server stopped: {e}");
            }
        })
        .map_err(|e| e.to_string())?,
    );
    Ok(Some(serving))
}

/// A core of a cluster booted over the network: its kernel, fetched from its head and checked
/// against the handoff record (and `arch`, the description, against it too); `None` when its
/// cluster does not boot over the network (the kernel is in its bank).
pub(crate) fn fetch(
    a: &CoreArgs,
    record: &Record,
    arch: &[u8],
    emit: &dyn Fn(EventKind),
    id: &str,
) -> Result<Option<Vec<u8>>, String> {
    let Some(net) = net_of(a)? else { return Ok(None) };
    let phase = |p: &str| emit(EventKind::Phase { id: id.to_string(), phase: p.into(), attempt: 0 });
    let server = SocketAddr::from((net.address, net.port));
    phase("fetching");
    // A core that cannot reach its head gives up well before its cluster's barrier is
    // decided (it started after the barrier's deadline was set), so that its own reason
    // reaches the monarch before the barrier leaves it out.
    let cfg = FetchConfig {
        interval: REDISCOVER,
        give_up_after: a.barrier_timeout / 2,
        max_size: record.kernel_len,
        io_timeout: a.barrier_timeout,
        ..FetchConfig::new(server, derived_mac(id))
    };
    let got = monarch_net::discovery::fetch(&cfg)
        .map_err(|e| format!("cannot fetch its kernel from its head at {server}: {e}"))?;
    emit(EventKind::Retrieved {
        id: id.to_string(),
        image: format!("{} from {}", got.offer.name, got.server),
        bytes: got.bytes.len() as u64,
        algo: "blake3".into(),
        checksum: blake3::hash(&got.bytes).to_hex().to_string(),
    });
    phase("verifying");
    record.check(&got.bytes, arch).map_err(|e| format!("the kernel its head served: {e}"))?;
    Ok(Some(got.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cores_namespace_that_is_not_there_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("here"), b"").unwrap();
        let net = ClusterNet {
            interface: "br1".into(),
            address: std::net::Ipv4Addr::new(10, 0, 1, 1),
            port: 4012,
            namespaces: vec!["here".into(), "gone".into()],
        };
        assert_eq!(missing_namespaces(&net, dir.path()), ["gone"]);
        assert_eq!(
            (net.namespace_of(0), net.namespace_of(2), net.namespace_of(3)),
            (None, Some("gone"), None)
        );
    }

    #[test]
    fn the_network_goes_to_a_core_on_its_command_line() {
        let net = ClusterNet {
            interface: "br1".into(),
            address: std::net::Ipv4Addr::new(10, 0, 1, 1),
            port: 4012,
            namespaces: vec!["ns a".into()],
        };
        let a = CoreArgs {
            run_dir: "/run/x".into(),
            cluster: 1,
            lid: 1,
            arch_base: 0,
            arch_max: 1,
            barrier_timeout: Duration::from_secs(1),
            barrier_policy: monarch_proto::barrier::Policy::Exclude,
            killed_before_barrier: Vec::new(),
            t0_unix_ns: 0,
            netboot: serde_json::to_string(&net).ok(),
            monarch_core: false,
            kernel: None,
        };
        assert_eq!(net_of(&a).unwrap(), Some(net));
        let c = command(Path::new("/bin/monarch"), &a).unwrap();
        let args: Vec<String> = c.get_args().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(c.get_program(), "ip");
        assert_eq!(&args[..4], ["netns", "exec", "ns a", "/bin/monarch"]);
        assert!(args.contains(&"--netboot".to_string()));
        let head = CoreArgs { lid: 0, ..a.clone() };
        assert_eq!(command(Path::new("/bin/monarch"), &head).unwrap().get_program(), "/bin/monarch");
        let bad = CoreArgs { netboot: Some("{".into()), ..a };
        assert!(net_of(&bad).unwrap_err().contains("--netboot"));
    }
}
