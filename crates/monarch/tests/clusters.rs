//! A machine of clusters booted in phases, with real processes: the monarch writes the kernel
//! once into cluster 0's bank, one head per cluster copies it into its own and checks it, the
//! heads meet, each head starts its cluster's cores, and all meet before they jump.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use serde_json::Value;
use std::path::Path;

mod common;
use common::{monarch, t_of};

fn events(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn sixteen_cores_boot_in_phases_each_reporting_what_its_boot_info_gave_it() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clusters.toml");
    let out = monarch(&["up", "--json", "--topology", example.to_str().unwrap()]);
    let ev = events(&out);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), common::dump(&ev));
    let summary = &ev.last().unwrap()["summary"];
    let summary = if summary.is_null() { ev.last().unwrap() } else { summary };
    let procs = summary["processors"].as_array().unwrap();
    assert_eq!(procs.len(), 16, "{summary}");
    let kernel = 16u64 << 20;
    for p in &procs[1..] {
        assert_eq!(p["state"], "running", "{p}");
        let id = p["id"].as_str().unwrap();
        let (c, l) = id[1..].split_once('-').unwrap();
        let report = p["report"].as_str().unwrap();
        assert!(report.contains(&format!("cluster {c} core {l} of 4, memory ")), "{id}: {report}");
    }
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
    let heads_started = at(&|e| e["event"] == "launched" && e["id"].as_str().unwrap().ends_with("-0"));
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
    assert_eq!(final_arrived.len(), 15);
    let jumps = at(&|e| e["event"] == "phase" && e["phase"] == "handoff");
    assert_eq!(jumps.len(), 15);
    let last_arrival = final_arrived.iter().cloned().fold(f64::MIN, f64::max);
    assert!(jumps.iter().all(|t| *t >= last_arrival), "no jump before everyone reached the final barrier");
    for b in ["heads", "cluster 0", "cluster 1", "cluster 2", "cluster 3", "final"] {
        assert!(
            ev.iter().any(|e| e["event"] == "barrier" && e["barrier"] == b && e["outcome"] == "released"),
            "{b} barrier released"
        );
    }
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
