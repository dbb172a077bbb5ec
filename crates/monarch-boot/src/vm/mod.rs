//! Secondaries that are QEMU virtual machines: the window is an `ivshmem-plain` PCI device
//! whose memory is the window file, the agent runs as PID 1 of a stage-1 initramfs, and the
//! handoff is a real `kexec` into the delivered kernel.
//!
//! - `artifacts`: its `prepare` builds everything from Debian's packages and the
//!   project's own static binary: a guest kernel (`apt-get download` + `dpkg -x`), systemd's
//!   EFI stub (for the bundle), the stage-1 initramfs (`/init` = the static `monarch`), and
//!   the demo payload bundle (a UKI: that kernel, that initramfs, a command line saying
//!   `monarch.role=payload`). It caches in its `default_dir` and rebuilds only what
//!   changed.
//! - `qemu`: how the monarch starts one VM (`qemu_command`) and finds the ones a
//!   killed monarch left running.
//! - `stage1`: its `init_main` is the static binary's life as PID 1 inside a VM:
//!   stage 1 (the agent on the ivshmem BAR) or the delivered payload (reports RUNNING
//!   through the same BAR and on the serial console, powers off on SHUTDOWN).

pub mod artifacts;
pub mod qemu;
pub mod stage1;

/// Why a VM secondary cannot be had: an artifact missing, a step of `monarch vm prepare`
/// that failed, or (inside the VM) no window to find.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A prepared artifact is not there.
    #[error(
        "{} is missing; run `monarch vm prepare` (add --dir {} if that is not the default) to build the VM artifacts",
        path.display(),
        dir.display()
    )]
    Missing {
        /// The artifact.
        path: std::path::PathBuf,
        /// The artifacts folder.
        dir: std::path::PathBuf,
    },
    /// A step of preparing the artifacts failed (a download, a tool, a write), as it said.
    #[error("{0}")]
    Prepare(String),
    /// Inside the VM: no ivshmem window, or one that cannot be mapped.
    #[error("{0}")]
    NoWindow(String),
}

impl From<String> for VmError {
    /// A failed step of `monarch vm prepare`.
    fn from(message: String) -> VmError {
        VmError::Prepare(message)
    }
}

/// Command line of the demo payload bundle's kernel.
pub const PAYLOAD_CMDLINE: &str = "console=ttyS0 quiet panic=-1 monarch.role=payload";

/// The line the delivered payload prints on the serial console once it runs.
pub const PAYLOAD_MARKER: &str = "MONARCH-PAYLOAD RUNNING";

/// Prefix of every line stage 1 prints on the serial console.
pub const STAGE1_MARKER: &str = "monarch stage 1:";
