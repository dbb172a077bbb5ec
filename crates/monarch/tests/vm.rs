//! End-to-end tests on virtual hardware: secondaries that are QEMU VMs (software
//! emulation), windows that are ivshmem PCI BARs, and a real kexec into the delivered kernel.
//!
//! They prepare their own artifacts with `monarch vm prepare` (Debian packages + a static
//! build of this tree, cached in /var/cache/monarch/vm or $MONARCH_VM_DIR), and each runs
//! its windows and serial consoles in its own temporary folder.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::{Run, monarch, up_json};
use std::path::Path;
use std::sync::OnceLock;

const PAYLOAD_MARKER: &str = "MONARCH-PAYLOAD RUNNING";
const STAGE1_MARKER: &str = "monarch stage 1:";

/// `monarch vm prepare`, once per test binary (it also serialises with a lock file).
fn prepared() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = monarch(&["vm", "prepare"]);
        assert!(
            out.status.success(),
            "monarch vm prepare failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A copy of the prepared payload bundle in `dir`, signed with a key pair made there
/// (`ops.key`, `ops.pub`): `dir/payload.efi` and `dir/payload.efi.sig`.
fn signed_bundle(dir: &Path) {
    let vm_dir = std::env::var_os("MONARCH_VM_DIR")
        .map_or_else(|| "/var/cache/monarch/vm".into(), std::path::PathBuf::from);
    std::fs::copy(vm_dir.join("payload.efi"), dir.join("payload.efi")).unwrap();
    let s = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
    for args in [
        vec!["image".to_string(), "keygen".into(), "-o".into(), s(dir.join("ops"))],
        vec![
            "image".into(),
            "sign".into(),
            "--key".into(),
            s(dir.join("ops.key")),
            s(dir.join("payload.efi")),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = monarch(&args);
        assert!(out.status.success(), "monarch {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn console(dir: &Path, id: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{id}.console.log"))).unwrap_or_default()
}

#[test]
fn the_qemu_example_boots_both_vms_into_the_delivered_kernel_with_a_visible_retry() {
    prepared();
    // The example as shipped, with its windows and consoles kept in a folder of ours.
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/qemu-chassis.toml"),
    )
    .unwrap();
    // vm1 boots a signed copy of the bundle, which its stage 1 checks with its own key.
    signed_bundle(dir.path());
    let text =
        example.replacen("[chassis]\n", &format!("[chassis]\nrun_dir = \"{}\"\n", dir.path().display()), 1);
    let vm1 = "id = \"vm1\"\nrole = \"secondary\"\nslot = 1\nimage = \"vm:payload\"\n";
    assert!(text.contains(vm1), "the example's vm1 changed: {text}");
    let text = text.replacen(
        vm1,
        "id = \"vm1\"\nrole = \"secondary\"\nslot = 1\nimage = \"payload.efi\"\ntrust = [\"ops.pub\"]\nsignature = \"required\"\n",
        1,
    );
    let topo = dir.path().join("qemu-chassis.toml");
    std::fs::write(&topo, text).unwrap();
    let run: Run = up_json(Some(&topo));
    assert_eq!(run.code, 0, "{}\n{}", run.summary, run.stderr);
    for id in ["vm1", "vm2"] {
        let p = run.processor(id);
        assert_eq!(p["state"], "running", "{p}");
        assert_eq!(run.events_of(id, "launched").len(), 1, "one VM started for {id}");
        let report = p["report"].as_str().unwrap_or_default();
        assert!(
            report.contains("delivered kernel Linux") && report.contains("monarch.role=payload"),
            "{report}"
        );
        // The delivered kernel runs: its initramfs printed the marker on the serial console,
        // after stage 1 had loaded it with kexec.
        let log = console(dir.path(), id);
        let kexec =
            log.find("kexec: loading the verified kernel").unwrap_or_else(|| panic!("no kexec in:\n{log}"));
        let marker = log.find(PAYLOAD_MARKER).unwrap_or_else(|| panic!("no payload marker in:\n{log}"));
        assert!(kexec < marker, "{log}");
    }
    let log = console(dir.path(), "vm1");
    assert!(log.contains("signed by trusted key"), "stage 1 checked vm1's signature itself:\n{log}");
    // The corrupted first copy of vm2 was caught by the written checksum and rewritten.
    assert_eq!(run.processor("vm2")["attempts"], 2);
    assert_eq!(run.events_of("vm2", "mismatch").len(), 1);
    assert_eq!(run.processor("vm1")["attempts"], 1);
    assert_eq!(run.processor("lc3")["state"], "running");
}

#[test]
fn a_bundle_that_never_verifies_or_is_forged_is_never_kexecd_and_the_vm_stays_in_stage_1() {
    prepared();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[chassis]\nname = \"vm-corrupt\"\nrun_dir = \"{}\"\n\n\
         [[processor]]\nid = \"mm\"\nrole = \"monarch\"\n\n\
         [[processor]]\nid = \"vmbad\"\nrole = \"secondary\"\nlaunch = \"qemu\"\nimage = \"vm:payload\"\n\
         attempts = 2\nfault = {{ corrupt_attempts = 2 }}\n\n\
         [[processor]]\nid = \"vmforged\"\nrole = \"secondary\"\nlaunch = \"qemu\"\nimage = \"payload.efi\"\n\
         trust = [\"ops.pub\"]\nsignature = \"required\"\nfault = {{ tamper_image = true }}\n",
        dir.path().display()
    );
    // vmforged: a signed bundle delivered with one byte changed and every checksum taken
    // again over the change; only stage 1's own signature check can refuse it.
    signed_bundle(dir.path());
    let topo = dir.path().join("t.toml");
    std::fs::write(&topo, text).unwrap();
    let run = up_json(Some(&topo));
    assert_eq!(run.code, 1, "{}\n{}", run.summary, run.stderr);
    let p = run.processor("vmbad");
    assert_eq!(p["state"], "failed", "{p}");
    assert_eq!(p["attempts"], 2);
    let error = p["error"].as_str().unwrap_or_default();
    assert!(error.contains("never matched the retrieved checksum in 2 attempt(s)"), "{error}");
    assert_eq!(run.events_of("vmbad", "mismatch").len(), 2);
    assert!(run.events_of("vmbad", "phase").iter().all(|e| e["phase"] != "handoff"), "no handoff phase");
    let log = console(dir.path(), "vmbad");
    assert!(log.contains(STAGE1_MARKER), "stage 1 ran:\n{log}");
    assert!(!log.contains("kexec"), "never kexec'd:\n{log}");
    assert!(!log.contains(PAYLOAD_MARKER), "the delivered kernel never ran:\n{log}");
    let f = run.processor("vmforged");
    assert_eq!(f["state"], "failed", "{f}");
    assert_eq!(f["attempts"], 1, "the copy verified: {f}");
    assert!(f["error"].as_str().unwrap_or_default().contains("refused the image's signature"), "{f}");
    assert!(run.events_of("vmforged", "mismatch").is_empty(), "the checksums agreed");
    let log = console(dir.path(), "vmforged");
    assert!(log.contains("signature refused"), "stage 1 refused it:\n{log}");
    assert!(!log.contains("kexec") && !log.contains(PAYLOAD_MARKER), "never kexec'd:\n{log}");
}

#[test]
fn the_prepared_bundle_is_a_uki_holding_the_prepared_kernel_and_initramfs() {
    prepared();
    let dir = std::env::var_os("MONARCH_VM_DIR")
        .map_or_else(|| "/var/cache/monarch/vm".into(), std::path::PathBuf::from);
    let bytes = std::fs::read(dir.join("payload.efi")).unwrap();
    let b = monarch_boot::bundle::parse(&bytes).unwrap();
    assert_eq!(b.linux, std::fs::read(dir.join("vmlinuz")).unwrap());
    assert_eq!(b.initrd, std::fs::read(dir.join("stage1.cpio")).unwrap());
    assert_eq!(b.cmdline, monarch_boot::vm::PAYLOAD_CMDLINE);
    // What the agent refuses: a bundle without its kernel section.
    assert!(monarch_boot::bundle::parse(&bytes[..4096]).is_err());
}

#[test]
fn an_image_that_is_not_a_kernel_bundle_is_refused_before_any_vm_starts() {
    prepared();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-uki.img"), vec![0x42u8; 1 << 20]).unwrap();
    let text = format!(
        "[chassis]\nname = \"vm-notuki\"\nrun_dir = \"{}\"\n\
         [[processor]]\nid = \"mm\"\nrole = \"monarch\"\n\
         [[processor]]\nid = \"v\"\nrole = \"secondary\"\nlaunch = \"qemu\"\nimage = \"not-a-uki.img\"\n",
        dir.path().display()
    );
    let topo = dir.path().join("t.toml");
    std::fs::write(&topo, text).unwrap();
    let run = up_json(Some(&topo));
    assert_eq!(run.code, 1, "{}", run.summary);
    let error = run.processor("v")["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("cannot be booted by kexec: not a kernel bundle"), "{error}");
    assert!(run.events_of("v", "launched").is_empty(), "no VM was started");
}

#[test]
fn vm_topology_mistakes_are_named_with_their_fix() {
    prepared();
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("t.toml");
    std::fs::write(
        &topo,
        "[chassis]\nname = \"x\"\n[[processor]]\nid = \"mm\"\nrole = \"monarch\"\n\
         [[processor]]\nid = \"v\"\nrole = \"secondary\"\nlaunch = \"qemu\"\nimage = \"vm:payload\"\nhandoff = \"exec\"\n\
         window = { size = \"20MiB\" }\nqemu = { accel = \"hvf\" }\n\
         [[processor]]\nid = \"p\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nhandoff = \"kexec\"\n",
    )
    .unwrap();
    let out = monarch(&["plan", "--topology", topo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "processor \"v\".handoff: a VM hands off with \"kexec\"",
        "processor \"v\".window.size: a VM's window is a PCI BAR",
        "use 33550336",
        "processor \"v\".qemu.accel: unknown accelerator \"hvf\"",
        "processor \"p\".handoff: kexec replaces the running kernel",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn a_supervised_vm_beats_through_its_bar_and_answers_the_shutdown_notice() {
    prepared();
    let text = "[chassis]\nname = \"vm-held\"\nrun_dir = \"win\"\nstate_dir = \"state\"\n\n\
         [[processor]]\nid = \"mm\"\nrole = \"monarch\"\n\n\
         [[processor]]\nid = \"vm1\"\nrole = \"secondary\"\nlaunch = \"qemu\"\nimage = \"vm:payload\"\n\
         heartbeat = \"200ms\"\nheartbeat_timeout = \"30s\"\n";
    let c = common::Chassis::start(text, &[]);
    c.wait_for("vm1 ready", &|e| common::is(e, "ready", "vm1"));
    // The delivered kernel's payload beats into the ivshmem BAR; the monarch's side of the
    // window file sees the counter move.
    let w = monarch_drivers::Window::open(&c.dir.path().join("win/vm1.win")).unwrap();
    let first = w.load(monarch_proto::window::layout::LIFE_BEAT);
    let start = std::time::Instant::now();
    while w.load(monarch_proto::window::layout::LIFE_BEAT) <= first + 2 {
        assert!(start.elapsed() < common::WAIT, "vm1 does not beat (still {first})");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let st = c.status("vm1");
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["ready"], true, "{st}");
    let (code, ev) = c.shut_down();
    assert_eq!(code, 0);
    let ack = ev
        .iter()
        .find(|e| common::is(e, "answer", "vm1") && e["notice"] == "shutdown")
        .expect("vm1 answered");
    assert_eq!(ack["answer"], "ack");
    assert!(ev.iter().any(|e| common::is(e, "down", "vm1") && e["state"] == "shut_down"));
    assert!(!ev.iter().any(|e| common::is(e, "lost", "vm1")), "never counted as a crash");
}
