//! A machine of clusters booted in phases, with real processes: the monarch writes the kernel
//! once into cluster 0's bank, one head per cluster copies it into its own and checks it, the
//! heads meet, each head starts its cluster's cores, and all meet before they jump.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use serde_json::Value;
use std::path::Path;

mod common;
use common::{Run, monarch, t_of, up_json};

/// `monarch arch show --json` of the description `monarch arch compile` writes for `topology`.
fn described(topology: &Path, dir: &Path) -> Value {
    let bin = dir.join("arch_info.bin");
    let out = monarch(&["arch", "compile", "-t", topology.to_str().unwrap(), "-o", bin.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = monarch(&["arch", "show", "--json", bin.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every running core's report against its cluster's boot info in the description: its
/// cluster, its index among the cluster's tested cores, their count, its memory.
fn check_reports(summary: &Value, arch: &Value) {
    for p in summary["processors"].as_array().unwrap().iter().filter(|p| p["state"] == "running") {
        let id = p["id"].as_str().unwrap();
        let (c, l) = id[1..].split_once('-').unwrap();
        let cluster =
            arch["clusters"].as_array().unwrap().iter().find(|k| k["id"].as_u64() == c.parse().ok()).unwrap();
        let info = &cluster["boot_info"];
        let cores = info["cores"].as_array().unwrap();
        let index = cores
            .iter()
            .position(|k| k["lid"].as_u64() == l.parse().ok())
            .expect("a running core is in its boot info");
        let want = format!(
            "cluster {c} core {index} of {}, memory {:#x}+{:#x}",
            cores.len(),
            info["memory"]["base"].as_u64().unwrap(),
            info["memory"]["size"].as_u64().unwrap()
        );
        let report = p["report"].as_str().unwrap();
        assert!(report.ends_with(&want), "{id} reported \"{report}\", its boot info says \"{want}\"");
    }
}

fn events(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn sixteen_cores_boot_in_phases_each_reporting_what_its_boot_info_gave_it() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clusters.toml");
    let dir = tempfile::tempdir().unwrap();
    let arch = described(&example, dir.path());
    let out = monarch(&["up", "--json", "--topology", example.to_str().unwrap()]);
    let ev = events(&out);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), common::dump(&ev));
    let summary = ev.last().unwrap();
    assert_eq!(summary["event"], "summary");
    let procs = summary["processors"].as_array().unwrap();
    assert_eq!(procs.len(), 16, "{summary}");
    let kernel = 16u64 << 20;
    // Every core runs its kernel, the monarch's own (c0-0) too.
    for p in procs {
        assert_eq!(p["state"], "running", "{p}");
        let id = p["id"].as_str().unwrap();
        let (c, l) = id[1..].split_once('-').unwrap();
        let report = p["report"].as_str().unwrap();
        assert!(report.contains(&format!("cluster {c} core {l} of 4, memory ")), "{id}: {report}");
    }
    check_reports(summary, &arch);
    // The monarch wrote the kernel once (with the description and cluster 0's boot info).
    let written = procs[0]["bytes"].as_u64().unwrap();
    assert!(written > kernel && written < kernel + (1 << 20), "{}", procs[0]);
    let mut copied: Vec<&str> =
        ev.iter().filter(|e| e["event"] == "copied").map(|e| e["id"].as_str().unwrap()).collect();
    copied.sort_unstable();
    assert_eq!(copied, ["c0-0", "c1-0", "c2-0", "c3-0"], "the monarch once, then each head for its cluster");
    // Phase order, by the events' times.
    let at = |pred: &dyn Fn(&Value) -> bool| ev.iter().filter(|e| pred(e)).map(t_of).collect::<Vec<f64>>();
    let boot_info_0 = at(&|e| e["event"] == "phase" && e["id"] == "c0-0" && e["phase"] == "boot-info")[0];
    let heads_started =
        at(&|e| e["event"] == "launched" && e["id"] != "c0-0" && e["id"].as_str().unwrap().ends_with("-0"));
    assert_eq!(heads_started.len(), 3);
    assert!(heads_started.iter().all(|t| *t > boot_info_0), "no head before cluster 0's boot info");
    let heads_arrived = at(&|e| e["event"] == "phase" && e["phase"] == "heads-barrier");
    let others_first = at(&|e| {
        e["event"] == "phase" && e["phase"] == "verifying" && !e["id"].as_str().unwrap().ends_with("-0")
    });
    assert_eq!(others_first.len(), 12);
    let last_head = heads_arrived.iter().cloned().fold(f64::MIN, f64::max);
    assert!(others_first.iter().all(|t| *t > last_head), "no other core before the heads barrier");
    let final_arrived = at(&|e| e["event"] == "phase" && e["phase"] == "final-barrier");
    assert_eq!(final_arrived.len(), 16);
    let jumps = at(&|e| e["event"] == "phase" && e["phase"] == "handoff");
    assert_eq!(jumps.len(), 16);
    let last_arrival = final_arrived.iter().cloned().fold(f64::MIN, f64::max);
    // The monarch's own core is started with cluster 0's others, once the heads have met.
    let monarch_core = at(&|e| e["event"] == "launched" && e["id"] == "c0-0");
    assert!(
        monarch_core.len() == 1 && monarch_core[0] > last_head,
        "the monarch's core after the heads barrier"
    );
    assert!(jumps.iter().all(|t| *t >= last_arrival), "no jump before everyone reached the final barrier");
    for b in ["heads", "cluster 0", "cluster 1", "cluster 2", "cluster 3", "final"] {
        assert!(
            ev.iter().any(|e| e["event"] == "barrier" && e["barrier"] == b && e["outcome"] == "released"),
            "{b} barrier released"
        );
    }
}

/// Two clusters of three cores: cluster 0's core 1 and cluster 1's first bank fail their
/// self-test; cluster 1's core 2 is killed just before its cluster's barrier.
const FAULTY: &str = r#"
[chassis]
name = "faulty"
[clusters]
image_size = "16MiB"
barrier_timeout = "1s"
barrier_policy = "POLICY"
[[cluster]]
id = 0
cores = 3
banks = ["32MiB"]
self_test = { failed_cores = [1] }
[[cluster]]
id = 1
cores = 3
banks = ["16MiB", "32MiB"]
self_test = { failed_banks = [0] }
fault = { killed_before_barrier = [2] }
"#;

fn faulty(policy: &str, dir: &Path) -> (Run, Value) {
    let t = common::write_topology(dir, &FAULTY.replace("POLICY", policy));
    let arch = described(&t, dir);
    (up_json(Some(&t)), arch)
}

#[test]
fn untested_hardware_is_in_no_boot_info_and_a_core_killed_before_its_barrier_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let (run, arch) = faulty("exclude", dir.path());
    let all = common::dump(&run.events);
    assert_eq!(run.code, 0, "{}\n{all}", run.stderr);
    // The self-test: the failed core and bank are named, and no boot info has them.
    for what in ["c0-1", "bank 0 of cluster 1"] {
        assert!(
            run.events
                .iter()
                .any(|e| e["event"] == "left_out" && e["what"] == what && e["why"] == "failed its self-test"),
            "{what} named as left out: {all}"
        );
    }
    assert_eq!(run.processor("c0-1")["state"], "left-out");
    assert!(
        run.events_of("c0-1", "launched").is_empty(),
        "a core that failed its self-test is never started"
    );
    let clusters = arch["clusters"].as_array().unwrap();
    let lids: Vec<u64> = clusters[0]["boot_info"]["cores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["lid"].as_u64().unwrap())
        .collect();
    assert_eq!(lids, [0, 2], "cluster 0's boot info leaves out core 1");
    let second_bank = clusters[1]["banks"][1]["base"].as_u64().unwrap();
    let memory = clusters[1]["boot_info"]["memory"]["base"].as_u64().unwrap();
    assert!(memory > second_bank, "cluster 1's memory is in its tested bank: {}", clusters[1]);
    // The killed core: reported at its cluster's barrier, left out; the others boot.
    assert!(
        run.events.iter().any(|e| e["event"] == "barrier"
            && e["barrier"] == "cluster 1"
            && e["outcome"] == "released"
            && e["missing"] == serde_json::json!(["c1-2"])),
        "{all}"
    );
    let killed = run.processor("c1-2");
    assert_eq!(killed["state"], "left-out", "{killed}");
    assert!(killed["error"].as_str().unwrap().contains("missed the cluster 1 barrier"), "{killed}");
    for id in ["c0-2", "c1-0", "c1-1"] {
        assert_eq!(run.processor(id)["state"], "running", "{all}");
    }
    check_reports(&run.summary, &arch);
}

#[test]
fn a_core_killed_before_its_barrier_fails_the_boot_under_abort() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = faulty("abort", dir.path());
    let all = common::dump(&run.events);
    assert_eq!(run.code, 1, "the boot fails: {}\n{all}", run.stderr);
    assert!(
        run.events.iter().any(|e| e["event"] == "barrier"
            && e["barrier"] == "cluster 1"
            && e["outcome"] == "aborted"
            && e["missing"] == serde_json::json!(["c1-2"])),
        "{all}"
    );
    assert!(run.summary["error"].as_str().unwrap().contains("barrier"), "{}", run.summary);
    let killed = run.processor("c1-2");
    assert!(killed["error"].as_str().unwrap().contains("missed the cluster 1 barrier"), "{killed}");
    assert!(
        run.summary["processors"].as_array().unwrap().iter().all(|p| p["state"] != "running"),
        "nobody jumps: {}",
        run.summary
    );
}

#[test]
fn a_machine_boots_from_its_binary_description_alone() {
    let dir = tempfile::tempdir().unwrap();
    let t = common::write_topology(dir.path(), &FAULTY.replace("POLICY", "exclude"));
    let arch = described(&t, dir.path());
    let bin = dir.path().join("arch_info.bin");
    let out = monarch(&["up", "--json", "--arch", bin.to_str().unwrap()]);
    let ev = events(&out);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), common::dump(&ev));
    let summary = ev.last().unwrap();
    let state = |id: &str| {
        summary["processors"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap()["state"].clone()
    };
    // The description knows what failed its self-test; fault injection is not hardware.
    assert_eq!(state("c0-1"), "left-out");
    for id in ["c0-2", "c1-0", "c1-1", "c1-2"] {
        assert_eq!(state(id), "running", "{summary}");
    }
    check_reports(summary, &arch);
    // A damaged description is refused, naming what is wrong.
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &bytes[..bytes.len() / 2]).unwrap();
    let out = monarch(&["up", "--arch", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a valid arch_info.bin") && err.contains("truncated"), "{err}");
}

/// `monarch plan --simulate --json`: the model's prediction of the example, phased beside flat.
#[test]
fn plan_simulate_predicts_phased_beside_flat() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clusters.toml");
    let out = monarch(&["plan", "--simulate", "--json", "--topology", example.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clusters"], 4);
    assert_eq!(v["cores"], 16);
    assert_eq!(v["image_bytes"], 16u64 << 20);
    for f in ["phased_ms", "flat_ms", "ratio"] {
        assert!(v[f].as_f64().unwrap() > 0.0, "{f}: {v}");
    }
    assert_eq!(v["phased"]["monarch_bytes"], 16u64 << 20);
    assert_eq!(v["flat"]["monarch_bytes"], 15 * (16u64 << 20));
    assert!(!v["phased"]["steps"].as_array().unwrap().is_empty());
    // A machine given by its size, and a slower link makes neither boot faster.
    let at = |gbps: &str| {
        let out = monarch(&[
            "plan",
            "--simulate",
            "--json",
            "--clusters",
            "256",
            "--cores",
            "64",
            "--link-gbps",
            gbps,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let (slow, fast) = (at("10"), at("100"));
    assert_eq!(fast["cores"], 256 * 64);
    assert!(fast["phased_ms"].as_f64().unwrap() < fast["flat_ms"].as_f64().unwrap(), "{fast}");
    assert!(slow["phased_ms"].as_f64().unwrap() >= fast["phased_ms"].as_f64().unwrap());
    // Not a machine of clusters: bad input.
    let out = monarch(&["plan", "--simulate"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `monarch bench clusters`, one boot of each kind: the four figures, sensible (no times
/// compared: only that they were measured).
#[test]
fn bench_clusters_measures_phased_beside_flat() {
    let out = monarch(&["bench", "clusters", "--runs", "1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bench"], "clusters");
    let (phased, flat) = (v["phased_ms"].as_f64().unwrap(), v["flat_ms"].as_f64().unwrap());
    assert!(phased > 0.0 && flat > 0.0, "{v}");
    let (bp, bf) = (v["monarch_bytes_phased"].as_u64().unwrap(), v["monarch_bytes_flat"].as_u64().unwrap());
    let kernel = 16u64 << 20;
    assert!(bp > kernel && bp < kernel + (1 << 20), "the kernel once: {v}");
    assert_eq!(bf, 15 * kernel, "the kernel to every core: {v}");
    assert!(bp < bf);
    assert_eq!(v["phased_samples"].as_array().unwrap().len(), 1);
    assert_eq!(v["flat_samples"].as_array().unwrap().len(), 1);
    assert!(v["memcpy_gib_s"].as_f64().unwrap() > 0.0);
    assert!(v["prediction"]["phased_ms"].as_f64().unwrap() > 0.0);
    assert!(v["phased_error_pct"].as_f64().unwrap().is_finite());
}
