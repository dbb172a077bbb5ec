//! The monarch's side of a VM: the QEMU command that starts one, with its window as an
//! ivshmem device, and the pid files that find VMs a killed monarch left running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One VM to start.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// QEMU accelerator (`tcg`, or `kvm` where it works).
    pub accel: String,
    /// Kernel and initramfs of stage 1.
    pub kernel: PathBuf,
    /// Stage-1 initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// The window file that backs the ivshmem BAR (`None`: no window, e.g. for netboot).
    pub window: Option<(PathBuf, u64)>,
    /// Where the serial console goes.
    pub console: PathBuf,
}

/// Kill the QEMU processes whose pid files (`*.qemu.pid`) are in `run_dir`: VMs a killed
/// monarch left running. A pid is killed only if it still is a QEMU whose command line
/// names a file in `run_dir` (its console, its window): after the pid was reused, another
/// QEMU — a user's VM, or another monarch's — is left alone.
pub fn kill_orphans(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else { return };
    let folder = format!("{}/", run_dir.display());
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().ends_with(".qemu.pid") {
            continue;
        }
        let Some(pid) = running_qemu(&e.path()) else { continue };
        let ours = u32::try_from(pid)
            .is_ok_and(|p| monarch_drivers::host::cmdline(p).iter().any(|arg| arg.contains(&folder)));
        if let (true, Some(pid)) = (ours, rustix::process::Pid::from_raw(pid)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// The pid in QEMU pid file `pidfile`, if that process still is a QEMU (a pid file outlives
/// its VM, and its number may have been reused).
pub fn running_qemu(pidfile: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(pidfile).ok()?.trim().parse::<i32>().ok()?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    exe.file_name().is_some_and(|n| n.to_string_lossy().starts_with("qemu-system")).then_some(pid)
}

/// QEMU escapes commas in option values by doubling them.
fn qemu_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The QEMU command line for one VM: no default devices, serial console to a file, the
/// window as an `ivshmem-plain` device backed by the window file (`share=on`: the VM and
/// the monarch see the same pages), and no reboot (a panicking guest ends QEMU).
pub fn qemu_command(spec: &VmSpec) -> Command {
    let mut cmd = qemu_machine(spec.memory_mib, &spec.accel, &spec.console);
    cmd.arg("-kernel").arg(&spec.kernel).arg("-initrd").arg(&spec.initrd).arg("-append").arg(&spec.cmdline);
    if let Some((path, len)) = &spec.window {
        cmd.arg("-object")
            .arg(format!("memory-backend-file,id=window,mem-path={},size={len},share=on", qemu_escape(path)))
            .args(["-device", "ivshmem-plain,memdev=window"]);
    }
    cmd
}

/// A one-CPU machine with no default devices, its serial console in `console`, that ends
/// instead of rebooting. What boots in it is up to the caller.
pub fn qemu_machine(memory_mib: u64, accel: &str, console: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", accel, "-cpu", "max", "-smp", "1"])
        .args(["-m", &format!("{memory_mib}M")])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .arg("-serial")
        // (`-serial file:` takes the rest of the argument literally: no comma escaping.)
        .arg(format!("file:{}", console.display()));
    cmd
}

/// The stage-1 command line for secondary `id`; `trust` (which signatures it accepts)
/// travels as its parameters, since the VM has none of the host's files.
pub fn stage1_cmdline(
    id: &str,
    agent_timeout: Duration,
    epoch: u32,
    trust: &crate::signing::Trust,
) -> String {
    format!(
        "console=ttyS0 quiet panic=-1 monarch.role=agent monarch.id={id} monarch.timeout={}s monarch.epoch={epoch}{}",
        agent_timeout.as_secs().max(1),
        trust.kernel_params()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn orphan_cleanup_kills_only_qemu_processes() {
        let dir = tempfile::tempdir().unwrap();
        // A live process that is not QEMU (this test), and a pid that is not running.
        std::fs::write(dir.path().join("a.qemu.pid"), format!("{}\n", std::process::id())).unwrap();
        std::fs::write(dir.path().join("b.qemu.pid"), "4194399\n").unwrap();
        let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
        std::fs::write(dir.path().join("c.qemu.pid"), sleeper.id().to_string()).unwrap();
        // And one that is a QEMU by its executable's name.
        let fake = dir.path().join("qemu-system-x86_64");
        std::fs::copy("/bin/sleep", &fake).unwrap();
        let mut qemu = Command::new(&fake).arg("30").spawn().unwrap();
        std::fs::write(dir.path().join("d.qemu.pid"), qemu.id().to_string()).unwrap();
        // A process fresh from exec shows its arguments a moment after its executable: wait
        // for them, as a QEMU a monarch left behind has long had them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while monarch_drivers::host::cmdline(qemu.id()).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        kill_orphans(dir.path());
        let status = qemu.wait().unwrap();
        assert!(!status.success(), "the orphaned QEMU was killed: {status}");
        assert!(sleeper.try_wait().unwrap().is_none(), "`sleep` is no QEMU: left alone");
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }

    #[test]
    fn qemu_gets_the_window_as_a_shared_ivshmem_backend_and_escapes_commas() {
        let spec = VmSpec {
            memory_mib: 256,
            accel: "tcg".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: stage1_cmdline("lc,1", Duration::from_secs(60), 3, &Default::default()),
            window: Some(("/dev/shm/a,b.win".into(), 1 << 25)),
            console: "/tmp/c.log".into(),
        };
        let args: Vec<String> =
            qemu_command(&spec).get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let joined = args.join(" ");
        assert!(
            joined
                .contains("memory-backend-file,id=window,mem-path=/dev/shm/a,,b.win,size=33554432,share=on")
        );
        assert!(joined.contains("-device ivshmem-plain,memdev=window"));
        assert!(joined.contains("-serial file:/tmp/c.log"));
        assert!(joined.contains("monarch.role=agent monarch.id=lc,1 monarch.timeout=60s monarch.epoch=3"));
        assert!(args.contains(&"-no-reboot".to_string()));
    }
}
