//! `monarch bench vm`: time from VM start to the delivered kernel running, through the
//! window (stage 1 + ivshmem + kexec) beside network boot of the same kernel and initrd by
//! QEMU's own iPXE over TFTP (`-netdev user,tftp=…,bootfile=…`), measured in one run.
//!
//! Both clocks start when QEMU is spawned and stop when the delivered initramfs says it
//! runs: through the window (RUNNING, the moment it prints its serial marker), and for the
//! network boot at the serial marker itself.

use monarch_boot::events::EventKind;
use monarch_boot::plan::Plan;
use monarch_boot::run::{self, UpOptions};
use monarch_boot::topology::Topology;
use monarch_boot::vm::{self, PAYLOAD_CMDLINE, PAYLOAD_MARKER, artifacts::Artifacts};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Longest wait for one network boot.
const NETBOOT_LIMIT: Duration = Duration::from_secs(300);

/// One window boot, broken down.
#[derive(Debug, Clone, Serialize)]
pub struct WindowBoot {
    /// QEMU start → RUNNING from the delivered kernel.
    pub total_s: f64,
    /// QEMU start → stage 1's agent READY (firmware, stage-1 kernel, init).
    pub stage1_s: f64,
    /// Copies into the window, all attempts.
    pub copy_s: f64,
    /// STAGED → written checksum (the agent in the VM reading and checking the BAR).
    pub verify_s: f64,
    /// OK → RUNNING (kexec, the delivered kernel's boot, its report).
    pub handoff_s: f64,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct VmBench {
    /// Guest kernel package.
    pub kernel_package: String,
    /// Bundle size (kernel + initrd + cmdline in a UKI).
    pub bundle_bytes: u64,
    /// QEMU accelerator.
    pub accel: String,
    /// Best window boot of the repetitions.
    pub window: WindowBoot,
    /// Best network boot (iPXE + TFTP): QEMU start → the same marker.
    pub ipxe_tftp_s: f64,
    /// `ipxe_tftp_s / window.total_s`.
    pub speedup: f64,
    /// Repetitions of each.
    pub reps: u32,
}

/// Run the comparison with the artifacts in `dir`.
pub fn vm_bench(
    dir: &Path,
    reps: u32,
    agent_exe: PathBuf,
    progress: &mut dyn FnMut(&str),
) -> Result<VmBench, String> {
    let art = Artifacts::at(dir);
    art.check().map_err(|e| e.to_string())?;
    // Windows, kernel copies and consoles go with the scratch folder, boots failed or not.
    let (window, best_net) =
        monarch_drivers::host::with_scratch(&std::env::temp_dir(), "bench-vm", |scratch| {
            measure(&art, scratch, reps, &agent_exe, progress)
        })?;
    Ok(VmBench {
        kernel_package: std::fs::read_to_string(dir.join("kernel.package")).unwrap_or_default().trim().into(),
        bundle_bytes: std::fs::metadata(&art.bundle).map_or(0, |m| m.len()),
        accel: "tcg".into(),
        speedup: best_net / window.total_s,
        window,
        ipxe_tftp_s: best_net,
        reps,
    })
}

/// The best window boot and the best network boot of `reps` each.
fn measure(
    art: &Artifacts,
    scratch: &Path,
    reps: u32,
    agent_exe: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(WindowBoot, f64), String> {
    let mut best: Option<WindowBoot> = None;
    let mut best_net = f64::INFINITY;
    for rep in 1..=reps {
        progress(&format!("window boot {rep}/{reps}: stage 1 → ivshmem → kexec"));
        let w = window_boot(art, &scratch.join(format!("w{rep}")), agent_exe)?;
        progress(&format!("  {:.2} s", w.total_s));
        if best.as_ref().is_none_or(|b| w.total_s < b.total_s) {
            best = Some(w);
        }
        progress(&format!("network boot {rep}/{reps}: QEMU's iPXE over TFTP"));
        let n = ipxe_boot(art, &scratch.join(format!("n{rep}")))?;
        progress(&format!("  {n:.2} s"));
        best_net = best_net.min(n);
    }
    Ok((best.ok_or("no repetitions")?, best_net))
}

fn window_boot(art: &Artifacts, dir: &Path, agent_exe: &Path) -> Result<WindowBoot, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let text = format!(
        "[chassis]\nname = \"bench-vm\"\nrun_dir = \"{}\"\nvm_dir = \"{}\"\n\
         [[processor]]\nid = \"mm\"\nrole = \"monarch\"\n\
         [[processor]]\nid = \"vm\"\nrole = \"secondary\"\nlaunch = \"qemu\"\nimage = \"vm:payload\"\n",
        dir.display(),
        art.dir.display()
    );
    let topo = Topology::parse(&text, &dir.join("bench.toml"), dir).map_err(|e| e.to_string())?;
    let plan = Plan::new(topo);
    let opts =
        UpOptions { agent_exe: agent_exe.to_path_buf(), shutdown_grace: Duration::from_secs(5), hold: None };
    let (mut launched, mut done) = (None, None);
    let summary = run::up(&plan, &opts, &mut |ev| match &ev.kind {
        EventKind::Launched { .. } => launched = Some(ev.t_ms),
        EventKind::Done { .. } => done = Some(ev.t_ms),
        _ => {}
    });
    let p = summary.processors.iter().find(|p| p.id == "vm").ok_or("no summary for the VM")?;
    if p.state != "running" {
        return Err(format!("the window boot failed: {}", p.error.clone().unwrap_or_default()));
    }
    let (Some(l), Some(d)) = (launched, done) else {
        return Err("the run reported no launch or no end".into());
    };
    let t = &p.timings_ms;
    Ok(WindowBoot {
        total_s: (d - l) / 1e3,
        stage1_s: t.rendezvous / 1e3,
        copy_s: t.copy / 1e3,
        verify_s: t.verify / 1e3,
        handoff_s: t.handoff / 1e3,
    })
}

fn ipxe_boot(art: &Artifacts, dir: &Path) -> Result<f64, String> {
    let root = dir.join("tftp");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    for (from, to) in [(&art.kernel, "vmlinuz"), (&art.initrd, "initrd.cpio")] {
        std::fs::copy(from, root.join(to)).map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
    }
    // The same kernel, initramfs and command line as the bundle's.
    let script = format!("#!ipxe\nkernel vmlinuz {PAYLOAD_CMDLINE}\ninitrd initrd.cpio\nboot\n");
    std::fs::write(root.join("boot.ipxe"), script).map_err(|e| e.to_string())?;
    let console = dir.join("console.log");
    let mut cmd = vm::qemu::qemu_machine(512, "tcg", &console);
    cmd.arg("-netdev")
        .arg(format!("user,id=net0,tftp={},bootfile=boot.ipxe", root.display()))
        .args(["-device", "virtio-net-pci,netdev=net0", "-boot", "n"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let result = loop {
        if std::fs::read_to_string(&console).is_ok_and(|c| c.contains(PAYLOAD_MARKER)) {
            break Ok(start.elapsed().as_secs_f64());
        }
        if let Ok(Some(st)) = child.try_wait() {
            break Err(format!(
                "the network-booting VM ended ({st}) before the marker; console: {}",
                console.display()
            ));
        }
        if start.elapsed() > NETBOOT_LIMIT {
            break Err(format!("no marker within {NETBOOT_LIMIT:?}; console: {}", console.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// `monarch bench vm` for people.
pub fn render(r: &VmBench) -> String {
    let w = &r.window;
    format!(
        "\nmonarch bench vm: QEMU ({}) start → delivered kernel running, best of {}\n\
         kernel {}, bundle {} bytes (UKI: kernel + initramfs + cmdline)\n\n  \
         window (stage 1 + ivshmem BAR + kexec)   {:>8.2} s\n    \
         stage-1 boot to READY                  {:>8.2} s\n    \
         copy into the window                   {:>8.3} s\n    \
         verify in the VM                       {:>8.2} s\n    \
         kexec + delivered kernel to RUNNING    {:>8.2} s\n  \
         network boot (QEMU's iPXE over TFTP)     {:>8.2} s\n\n  \
         {}\n",
        r.accel,
        r.reps,
        r.kernel_package,
        r.bundle_bytes,
        w.total_s,
        w.stage1_s,
        w.copy_s,
        w.verify_s,
        w.handoff_s,
        r.ipxe_tftp_s,
        if r.speedup >= 1.0 {
            format!("the window path is {:.2}x faster (speedup {:.2})", r.speedup, r.speedup)
        } else {
            format!(
                "the window path takes {:.2}x the network boot's time (speedup {:.2}): it boots two kernels",
                1.0 / r.speedup,
                r.speedup
            )
        }
    )
}
