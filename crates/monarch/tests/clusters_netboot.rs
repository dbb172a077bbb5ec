//! A machine of clusters whose cores boot over the network from their head: the monarch
//! writes the kernel once into cluster 0's bank; the head of each cluster with
//! `launch = "netboot"` copies it into its own bank once, checks it, and serves it with the
//! network boot discovery service on its cluster's network (a bridge), and each of its other
//! cores runs in a network namespace of its own, linked to that bridge by a veth pair: it
//! fetches the kernel from its head, checks it against the handoff record, meets the others
//! and jumps. The test makes the namespaces, bridges and veth pairs itself — the monarch runs
//! in a namespace of its own too, so nothing touches the host's network — and removes them
//! whatever happens.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

mod common;
use common::{MONARCH, t_of};

/// The netboot clusters, and the cores of each one other than its head.
const NET_CLUSTERS: [u16; 2] = [1, 2];
const NET_CORES: u16 = 3;

/// Network namespaces made by this test, deleted on drop (deleting a namespace deletes the
/// veth ends and bridges inside it, and with them their peers).
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn add(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.names.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "delete", n]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The namespace of core `k` of cluster `c`.
fn core_ns(prefix: &str, c: u16, k: u16) -> String {
    format!("{prefix}-{c}-{k}")
}

/// The machine's namespace (where `monarch up` and the heads run) with one bridge per netboot
/// cluster, `10.232.C.1/24`, and a namespace per netboot core, `10.232.C.(10+K)/24`, linked
/// to its cluster's bridge by a veth pair.
fn network(prefix: &str) -> Namespaces {
    monarch_drivers::host::ensure_packages(&[("ip", "iproute2")], &mut |l| eprintln!("{l}")).unwrap();
    let mut ns = Namespaces { names: Vec::new() };
    let machine = prefix.to_string();
    ns.add(&machine);
    for c in NET_CLUSTERS {
        let br = format!("cnbbr{c}");
        ip(&["-n", &machine, "link", "add", &br, "type", "bridge"]);
        ip(&["-n", &machine, "addr", "add", &format!("10.232.{c}.1/24"), "dev", &br]);
        ip(&["-n", &machine, "link", "set", &br, "up"]);
        for k in 1..=NET_CORES {
            let name = core_ns(prefix, c, k);
            ns.add(&name);
            let near = format!("cnb{c}v{k}");
            ip(&[
                "-n", &machine, "link", "add", &near, "type", "veth", "peer", "name", "nb0", "netns", &name,
            ]);
            ip(&["-n", &machine, "link", "set", &near, "master", &br, "up"]);
            ip(&["-n", &name, "addr", "add", &format!("10.232.{c}.{}/24", 10 + k), "dev", "nb0"]);
            ip(&["-n", &name, "link", "set", "nb0", "up"]);
        }
    }
    ns
}

fn topology(prefix: &str, timeout: &str, policy: &str) -> String {
    let mut t = format!(
        "[chassis]\nname = \"clusters-netboot\"\nrun_dir = \"run\"\n\n\
         [clusters]\nimage = \"builtin:payload\"\nimage_size = \"16MiB\"\nbarrier_timeout = \"{timeout}\"\nbarrier_policy = \"{policy}\"\n\n\
         [[cluster]]\nid = 0\ncores = 2\nbanks = [\"64MiB\"]\n\n",
    );
    for c in NET_CLUSTERS {
        let names: Vec<String> = (1..=NET_CORES).map(|k| format!("\"{}\"", core_ns(prefix, c, k))).collect();
        t.push_str(&format!(
            "[[cluster]]\nid = {c}\ncores = {}\nbanks = [\"64MiB\"]\nlaunch = \"netboot\"\n\
             network = {{ interface = \"cnbbr{c}\", address = \"10.232.{c}.1\", namespaces = [{}] }}\n\n",
            NET_CORES + 1,
            names.join(", ")
        ));
    }
    t
}

/// `monarch up --json` of `topology` in the machine's namespace: whether it succeeded, its
/// events, its standard error.
fn up(prefix: &str, dir: &std::path::Path, topology: &str) -> (bool, Vec<Value>, String) {
    let topo = dir.join("t.toml");
    std::fs::write(&topo, topology).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", prefix, MONARCH, "up", "--json", "--topology"])
        .arg(&topo)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ev: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (out.status.success(), ev, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn prefix(test: &str) -> String {
    format!("monarch-cnb{test}-{}", std::process::id() % 100_000)
}

#[test]
fn each_netboot_clusters_head_serves_its_cores_the_kernel_it_copied_once() {
    let prefix = prefix("a");
    let net = network(&prefix);
    let dir = tempfile::tempdir().unwrap();
    let (ok, ev, stderr) = up(&prefix, dir.path(), &topology(&prefix, "15s", "abort"));
    assert!(ok, "{stderr}\n{}", common::dump(&ev));
    let summary = ev.last().unwrap();
    let procs = summary["processors"].as_array().unwrap();
    assert_eq!(procs.len(), 2 + NET_CLUSTERS.len() * usize::from(NET_CORES + 1), "{summary}");
    for p in procs {
        assert_eq!(p["state"], "running", "{p}\n{stderr}");
        let id = p["id"].as_str().unwrap();
        let (c, l) = id[1..].split_once('-').unwrap();
        let of = if c == "0" { 2 } else { NET_CORES + 1 };
        let report = p["report"].as_str().unwrap();
        assert!(report.contains(&format!("cluster {c} core {l} of {of}, memory ")), "{id}: {report}");
    }
    let kernel = 16u64 << 20;
    // The monarch wrote the kernel once (with the description and cluster 0's boot info).
    let written = procs[0]["bytes"].as_u64().unwrap();
    assert!(written > kernel && written < kernel + (1 << 20), "{}", procs[0]);
    // Each head copied it out of cluster 0's bank once.
    let mut copied: Vec<&str> =
        ev.iter().filter(|e| e["event"] == "copied").map(|e| e["id"].as_str().unwrap()).collect();
    copied.sort_unstable();
    assert_eq!(copied, ["c0-0", "c1-0", "c2-0"], "the monarch once, then each head once for its cluster");
    let heads_released = ev
        .iter()
        .find(|e| e["event"] == "barrier" && e["barrier"] == "heads" && e["outcome"] == "released")
        .map(t_of)
        .expect("the heads barrier released");
    let mut digests = BTreeSet::new();
    for c in NET_CLUSTERS {
        let head = format!("c{c}-0");
        // The head served the kernel once to each of its cores, at their addresses on its
        // cluster's network (reachable only from their namespaces).
        let served: Vec<&Value> = ev.iter().filter(|e| e["event"] == "served" && e["id"] == head).collect();
        assert_eq!(served.len(), usize::from(NET_CORES), "{served:?}\n{stderr}");
        assert!(served.iter().all(|e| e["bytes"] == kernel), "{served:?}");
        let to: BTreeSet<&str> = served.iter().map(|e| e["to"].as_str().unwrap()).collect();
        let want: BTreeSet<String> = (1..=NET_CORES).map(|k| format!("10.232.{c}.{}", 10 + k)).collect();
        assert_eq!(to, want.iter().map(String::as_str).collect(), "{served:?}");
        assert!(served.iter().all(|e| t_of(e) > heads_released), "no serving before the heads barrier");
        // Each core fetched it once and checked it before its barriers.
        for k in 1..=NET_CORES {
            let id = format!("c{c}-{k}");
            let retrieved: Vec<&Value> =
                ev.iter().filter(|e| e["event"] == "retrieved" && e["id"] == id).collect();
            assert_eq!(retrieved.len(), 1, "{id}: {retrieved:?}");
            assert_eq!(retrieved[0]["bytes"], kernel, "{id}");
            assert!(retrieved[0]["image"].as_str().unwrap().contains(&format!("10.232.{c}.1:")), "{id}");
            digests.insert(retrieved[0]["checksum"].as_str().unwrap().to_string());
            let phases: Vec<&str> = ev
                .iter()
                .filter(|e| e["event"] == "phase" && e["id"] == id)
                .map(|e| e["phase"].as_str().unwrap())
                .collect();
            assert_eq!(
                phases,
                ["fetching", "verifying", "cluster-barrier", "final-barrier", "handoff"],
                "{id}"
            );
        }
        // The served copy is gone once the cluster's cores have met.
        assert!(!dir.path().join(format!("run/c{c}.netboot")).exists());
    }
    assert_eq!(digests.len(), 1, "every core got the same kernel: {digests:?}");
    // Cluster 0's other core read the kernel from the monarch's bank, as before.
    assert!(!ev.iter().any(|e| e["event"] == "retrieved" && e["id"] == "c0-1"));
    for b in ["heads", "cluster 0", "cluster 1", "cluster 2", "final"] {
        assert!(
            ev.iter().any(|e| e["event"] == "barrier" && e["barrier"] == b && e["outcome"] == "released"),
            "{b} barrier released"
        );
    }
    // The namespaces go with the guard.
    drop(net);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&prefix), "namespaces left behind");
}

/// A core that cannot reach its head (its namespace has lost its link) gets no kernel: it
/// fails saying so, its cluster's barrier leaves it out, and every other core boots.
#[test]
fn a_core_cut_off_from_its_head_is_left_out_and_the_others_boot() {
    let prefix = prefix("b");
    let net = network(&prefix);
    ip(&["-n", &core_ns(&prefix, 1, 3), "link", "delete", "nb0"]);
    let dir = tempfile::tempdir().unwrap();
    let (ok, ev, stderr) = up(&prefix, dir.path(), &topology(&prefix, "5s", "exclude"));
    // Under `exclude` the boot goes on without it, and succeeds.
    assert!(ok, "{stderr}\n{}", common::dump(&ev));
    let summary = ev.last().unwrap();
    for p in &summary["processors"].as_array().unwrap()[1..] {
        if p["id"] == "c1-3" {
            assert_eq!(p["state"], "left-out", "{p}");
            let error = p["error"].as_str().unwrap();
            assert!(error.contains("cannot fetch its kernel from its head at 10.232.1.1:4012"), "{error}");
            assert!(error.contains("missed the cluster 1 barrier's deadline"), "{error}");
        } else {
            assert_eq!(p["state"], "running", "{p}\n{stderr}");
        }
    }
    let served = |head: &str| ev.iter().filter(|e| e["event"] == "served" && e["id"] == head).count();
    assert_eq!((served("c1-0"), served("c2-0")), (2, 3), "{stderr}");
    let cluster1 = ev.iter().find(|e| e["event"] == "barrier" && e["barrier"] == "cluster 1").unwrap();
    assert_eq!(
        (&cluster1["outcome"], &cluster1["missing"]),
        (&Value::from("released"), &serde_json::json!(["c1-3"]))
    );
    drop(net);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&prefix), "namespaces left behind");
}

/// Topology errors name the cluster and the fix (no network needed).
#[test]
fn a_netboot_cluster_is_checked_and_its_errors_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, clusters: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!("[chassis]\nname = \"x\"\n\n[clusters]\nimage_size = \"16MiB\"\n\n[[cluster]]\nid = 0\ncores = 2\n\n{clusters}"),
        )
        .unwrap();
        let out = common::monarch(&["topology", "check", p.to_str().unwrap()]);
        assert!(!out.status.success(), "{name} must be refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = check("no-network.toml", "[[cluster]]\nid = 1\ncores = 3\nlaunch = \"netboot\"\n");
    assert!(e.contains("cluster 1.network") && e.contains("namespaces = ["), "{e}");
    let e = check(
        "short.toml",
        "[[cluster]]\nid = 1\ncores = 3\nlaunch = \"netboot\"\nnetwork = { interface = \"br1\", address = \"10.0.1.1\", namespaces = [\"a\"] }\n",
    );
    assert!(e.contains("cluster 1.network.namespaces") && e.contains("1 namespace(s) for 2 core(s)"), "{e}");
    let e = check(
        "no-launch.toml",
        "[[cluster]]\nid = 1\ncores = 2\nnetwork = { interface = \"br1\", address = \"10.0.1.1\", namespaces = [\"a\"] }\n",
    );
    assert!(e.contains("cluster 1.network") && e.contains("set launch = \"netboot\""), "{e}");
    let e = check(
        "bad-address.toml",
        "[[cluster]]\nid = 1\ncores = 2\nlaunch = \"netboot\"\nnetwork = { interface = \"br1\", address = \"nowhere\", namespaces = [\"a\"] }\n",
    );
    assert!(e.contains("cluster 1.network.address"), "{e}");
    // Cluster 0's head is the monarch: its cores are not served over the network.
    let p = dir.path().join("zero.toml");
    std::fs::write(
        &p,
        "[chassis]\nname = \"x\"\n\n[[cluster]]\nid = 0\ncores = 2\nlaunch = \"netboot\"\nnetwork = { interface = \"br0\", address = \"10.0.0.1\", namespaces = [\"a\"] }\n",
    )
    .unwrap();
    let out = common::monarch(&["topology", "check", p.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("cluster 0.launch") && e.contains("remove launch from cluster 0"),
        "{e}"
    );
}
