//! `monarch up` with secondaries that have no window (`launch = "netboot"`): booted over the
//! network with the network boot flow (real discovery service on loopback, real `monarch netboot
//! agent` processes, real A/B disk file), side by side with a window secondary, with the same
//! events and summary — and a failing one that never affects the others.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::{Run, up_json};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A topology in a temporary folder (run_dir there too), one window secondary plus `extra`.
fn topology(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "[chassis]\nname = \"nbup\"\nrun_dir = \"run\"\n\n\
         [defaults]\ntimeouts = {{ rendezvous = \"30s\", verify = \"30s\", handoff = \"30s\", agent = \"30s\" }}\n\n\
         [[processor]]\nid = \"mm\"\nrole = \"monarch\"\n\n\
         [[processor]]\nid = \"win\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nimage_size = \"24MiB\"\nbanner = \"window card up\"\n\n\
         {extra}"
    );
    let p = dir.join("t.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn netboot(id: &str, size: &str, banner: &str, extra: &str) -> String {
    format!(
        "[[processor]]\nid = \"{id}\"\nrole = \"secondary\"\nlaunch = \"netboot\"\nimage = \"builtin:payload\"\nimage_size = \"{size}\"\nbanner = \"{banner}\"\n{extra}\n"
    )
}

fn phases(r: &Run, id: &str) -> Vec<String> {
    r.events_of(id, "phase").iter().map(|e| e["phase"].as_str().unwrap().to_string()).collect()
}

/// Every process the run launched is gone once `monarch up` has returned.
fn assert_no_strays(r: &Run) {
    for e in r.events.iter().filter(|e| e["event"] == "launched") {
        let pid = e["pid"].as_u64().unwrap();
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let until = Instant::now() + Duration::from_secs(10);
        while proc.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!proc.exists(), "process {pid} of {} outlived monarch up", e["id"]);
    }
}

fn assert_running_netboot(r: &Run, id: &str, bytes: u64, banner: &str) {
    let p = r.processor(id);
    assert_eq!(p["state"], "running", "{p}\n{}", r.stderr);
    assert_eq!(p["mode"], "netboot", "{p}");
    assert_eq!(
        (p["attempts"].as_u64(), p["bytes"].as_u64(), p["image_bytes"].as_u64()),
        (Some(1), Some(bytes), Some(bytes)),
        "{p}"
    );
    let report = p["report"].as_str().unwrap();
    assert!(report.starts_with(banner), "{report}");
    assert!(
        report.contains(&format!("[image {bytes} bytes, crc32c {}]", p["checksum"].as_str().unwrap())),
        "{report}"
    );
    for t in ["retrieve", "configure", "rendezvous", "copy", "handoff", "total"] {
        assert!(p["timings_ms"][t].as_f64().unwrap() > 0.0, "timing {t} of {id}: {p}");
    }
    assert!(p["timings_ms"]["verify"].as_f64().unwrap() >= 0.0, "{p}");
    assert_eq!(
        phases(r, id),
        ["configuring", "launching", "rendezvous", "copying", "verifying", "handoff"],
        "{:#?}",
        r.events
    );
    let retrieved = r.events_of(id, "retrieved");
    assert_eq!((retrieved.len(), retrieved[0]["bytes"].as_u64()), (1, Some(bytes)));
    assert_eq!(r.events_of(id, "launched").len(), 1);
    let copied = r.events_of(id, "copied");
    assert_eq!((copied.len(), copied[0]["bytes"].as_u64()), (1, Some(bytes)), "{copied:?}");
    let done = r.events_of(id, "done");
    assert_eq!((done.len(), done[0]["state"].as_str()), (1, Some("running")));
    assert_eq!(done[0]["report"], p["report"]);
}

#[test]
fn netboot_secondaries_boot_beside_a_window_one_with_the_same_events_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disks/nb-disk.img");
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    let topo = topology(
        dir.path(),
        &format!(
            "{}{}",
            netboot("nb-diskless", "20MiB", "diskless node up", ""),
            netboot(
                "nb-disk",
                "24MiB",
                "disk node up",
                "mac = \"52:54:00:6e:62:02\"\ndisk = \"disks/nb-disk.img\"\ndisk_size = \"64MiB\""
            ),
        ),
    );
    let r = up_json(Some(&topo));
    assert_eq!(r.code, 0, "{}\n{}", r.summary, r.stderr);
    assert_eq!(r.summary["ok"], true);
    assert_eq!(r.processor("win")["state"], "running");
    assert!(r.processor("win")["report"].as_str().unwrap().starts_with("window card up"));
    assert_running_netboot(&r, "nb-diskless", 20 << 20, "diskless node up");
    assert_running_netboot(&r, "nb-disk", 24 << 20, "disk node up");
    // The disk machine installed the image A/B and booted it from the disk.
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 64 << 20);
    let status = common::monarch(&["netboot", "status", "--disk", disk.to_str().unwrap(), "--json"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let slots: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(slots.as_array().unwrap().iter().filter(|s| s["bootable"] == true).count(), 1, "{slots}");
    let log = std::fs::read_to_string(dir.path().join("run/nb-disk.log")).unwrap();
    assert!(log.contains("installed into slot A") && log.contains("booting"), "{log}");
    // Nothing is left behind: no agent, no payload, no served copy.
    assert_no_strays(&r);
    assert!(!dir.path().join("run/nb-diskless.netboot").exists());
}

#[test]
fn a_netboot_secondary_whose_image_fails_verification_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let topo = topology(
        dir.path(),
        &format!(
            "{}{}",
            netboot("nb-ok", "24MiB", "good node up", ""),
            // A byte of the served image flips after the server hashed it: the agent's
            // verification against the offered digest must refuse it.
            netboot("nb-bad", "24MiB", "must never run", "fault = { corrupt_attempts = 1 }"),
        ),
    );
    let r = up_json(Some(&topo));
    assert_eq!(r.code, 1, "{}\n{}", r.summary, r.stderr);
    assert_eq!(r.summary["ok"], false);
    assert_eq!(r.processor("win")["state"], "running");
    assert_running_netboot(&r, "nb-ok", 24 << 20, "good node up");
    let bad = r.processor("nb-bad");
    assert_eq!(bad["state"], "failed", "{bad}");
    assert!(bad["report"].is_null(), "the corrupted image never ran: {bad}");
    let error = bad["error"].as_str().unwrap();
    assert!(
        error.contains("netboot agent") && error.contains("without the image reporting running"),
        "{error}"
    );
    assert!(error.contains("agent said:") && error.contains("digest"), "{error}");
    assert!(!r.events.iter().any(|e| e["report"].as_str().is_some_and(|t| t.contains("must never run"))));
    assert_no_strays(&r);
}
