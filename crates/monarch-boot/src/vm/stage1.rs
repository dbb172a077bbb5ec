//! `monarch` as PID 1 inside a VM: stage 1 runs the agent on the ivshmem BAR and kexecs
//! the verified kernel; the delivered payload reports RUNNING through the same BAR.

use super::{PAYLOAD_MARKER, STAGE1_MARKER};
use crate::agent::{self, AgentOptions};
use crate::handoff::Handoff;
use crate::payload;
use monarch_drivers::host;
use monarch_drivers::{Doorbell, Window, kexec};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// PCI ids of QEMU's ivshmem device.
const IVSHMEM_VENDOR: &str = "0x1af4";
const IVSHMEM_DEVICE: &str = "0x1110";

/// The first ivshmem device in sysfs: its BAR2 (`resource2`), with memory decoding enabled.
pub fn find_ivshmem() -> Result<PathBuf, super::VmError> {
    let root = Path::new("/sys/bus/pci/devices");
    let mut devs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| {
            super::VmError::NoWindow(format!("cannot list {}: {e} (is sysfs mounted?)", root.display()))
        })?
        .flatten()
        .map(|e| e.path())
        .collect();
    devs.sort();
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
    let dev = devs
        .into_iter()
        .find(|d| read(d.join("vendor")) == IVSHMEM_VENDOR && read(d.join("device")) == IVSHMEM_DEVICE)
        .ok_or_else(|| {
            super::VmError::NoWindow(format!(
                "no ivshmem device (PCI {IVSHMEM_VENDOR}:{IVSHMEM_DEVICE}) in {}; start the VM with -device ivshmem-plain",
                root.display()
            ))
        })?;
    // Firmware usually leaves memory decoding on; make sure, since no driver binds it.
    let _ = std::fs::write(dev.join("enable"), "1");
    Ok(dev.join("resource2"))
}

fn say(line: &str) {
    // PID 1's stdout is /dev/console: the serial log the monarch keeps.
    println!("{line}");
    let _ = std::io::stdout().flush();
}

fn idle_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `monarch` as PID 1 of a VM. Never returns: PID 1 exiting panics the kernel.
pub fn init_main() -> ! {
    use rustix::mount::{MountFlags, mount};
    for (src, dst, fs) in
        [("proc", "/proc", "proc"), ("sysfs", "/sys", "sysfs"), ("devtmpfs", "/dev", "devtmpfs")]
    {
        let _ = std::fs::create_dir_all(dst);
        if let Err(e) = mount(src, dst, fs, MountFlags::empty(), None) {
            say(&format!("monarch init: cannot mount {fs} on {dst}: {e}"));
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let param = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
    };
    match param("monarch.role").as_deref() {
        Some("agent") => stage1(&param),
        Some("payload") => delivered(cmdline.trim()),
        other => {
            say(&format!("monarch init: no role for me (monarch.role={other:?} in the kernel command line)"))
        }
    }
    idle_forever()
}

fn kernel_release() -> String {
    rustix::system::uname().release().to_string_lossy().into_owned()
}

fn stage1(param: &dyn Fn(&str) -> Option<String>) {
    let id = param("monarch.id").unwrap_or_else(|| "vm".into());
    let timeout = param("monarch.timeout")
        .and_then(|t| humantime::parse_duration(&t).ok())
        .unwrap_or(Duration::from_secs(60));
    say(&format!("{STAGE1_MARKER} agent {id} on Linux {}, kernel up {} s", kernel_release(), host::uptime()));
    let window = match find_ivshmem() {
        Ok(w) => w,
        Err(e) => {
            say(&format!("{STAGE1_MARKER} {e}; staying in stage 1"));
            return;
        }
    };
    say(&format!("{STAGE1_MARKER} window {}", window.display()));
    // Which signatures to accept is this VM's own configuration (its kernel command line),
    // never the window's.
    let trust = match crate::signing::Trust::from_kernel_params(
        param("monarch.signature").as_deref(),
        param("monarch.trust").as_deref(),
    ) {
        Ok(t) => t,
        Err(e) => {
            say(&format!("{STAGE1_MARKER} {e}; refusing to run an agent, staying in stage 1"));
            return;
        }
    };
    let opts = AgentOptions {
        trust,
        window,
        id: id.clone(),
        handoff: Handoff::Kexec,
        timeout,
        doorbell: Doorbell::Poll { max_sleep: Duration::from_millis(1) },
        epoch: param("monarch.epoch").and_then(|e| e.parse().ok()),
    };
    match agent::run(&opts) {
        Ok(()) => say(&format!("{STAGE1_MARKER} agent {id} verified its image; staying in stage 1")),
        Err(e) => say(&format!("{STAGE1_MARKER} agent {id}: {e}; staying in stage 1")),
    }
}

/// The delivered kernel's initramfs: prove it runs (serial marker, and RUNNING with a report
/// through the window when there is one), then wait for SHUTDOWN and power off.
fn delivered(cmdline: &str) {
    let report = format!(
        "delivered kernel Linux {} running (up {} s); cmdline: {cmdline}",
        kernel_release(),
        host::uptime()
    );
    say(&format!("{PAYLOAD_MARKER} {report}"));
    let window = match find_ivshmem()
        .and_then(|p| Window::open(&p).map_err(|e| super::VmError::NoWindow(e.to_string())))
    {
        Ok(mut w) => {
            w.set_doorbell(Doorbell::Poll { max_sleep: Duration::from_millis(20) });
            w
        }
        Err(e) => {
            say(&format!(
                "monarch payload: no window to report through ({e}); the serial line above is the report"
            ));
            return;
        }
    };
    let since = match payload::announce(&window, &report) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("monarch payload: {e}"));
            return;
        }
    };
    let ended =
        payload::live(&window, &since, Duration::MAX, &payload::Behaviour::default(), &|| false, &mut |l| {
            say(&format!("monarch payload: {l}"))
        });
    say(&format!("monarch payload: {}; powering off", ended.describe()));
    let e = kexec::power_off();
    say(&format!("monarch payload: power off failed: {e}"));
}
