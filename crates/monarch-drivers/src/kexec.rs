//! The `kexec` handoff: load a verified kernel + initrd with `kexec_file_load(2)` and reboot
//! into it, replacing the running kernel (the secondary's stage 1) without firmware.
//!
//! `kexec_file_load` takes file descriptors, so the kernel and the initrd are put in memfds
//! first: the bytes the kernel loads are exactly the bytes given here (the ones the agent
//! verified), never re-read from a path someone could swap. rustix has `reboot(2)` but no
//! `kexec_file_load`, and the libc crate has only the syscall number: the call is the one
//! raw syscall here.

use rustix::fs::MemfdFlags;
use rustix::system::RebootCommand;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};

/// Flag of `kexec_file_load`: the image has no initrd.
const KEXEC_FILE_NO_INITRAMFS: libc::c_ulong = 0x4;

fn memfd_with(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?;
    let mut f = File::from(fd);
    f.write_all(bytes)?;
    Ok(f.into())
}

/// Load `kernel` (a bzImage) with `initrd` (may be empty) and `cmdline` as the kernel to
/// boot on the next `reboot(LINUX_REBOOT_CMD_KEXEC)`. Needs CAP_SYS_BOOT and a kernel with
/// `CONFIG_KEXEC_FILE`; a kernel in lockdown also wants a signed image.
pub fn load(kernel: &[u8], initrd: &[u8], cmdline: &str) -> io::Result<()> {
    let kfd = memfd_with("monarch-kexec-kernel", kernel)?;
    let ifd = if initrd.is_empty() { None } else { Some(memfd_with("monarch-kexec-initrd", initrd)?) };
    let cmd = CString::new(cmdline)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the command line contains a NUL byte"))?;
    let flags = if ifd.is_none() { KEXEC_FILE_NO_INITRAMFS } else { 0 };
    let initrd_fd = ifd.as_ref().map_or(-1, AsRawFd::as_raw_fd);
    // SAFETY: kexec_file_load(kernel_fd, initrd_fd, cmdline_len, cmdline, flags) reads the two
    // descriptors (open for the whole call, owned above) and `cmdline_len` bytes at `cmdline`,
    // which is a live NUL-terminated buffer of exactly that length including the NUL. It
    // writes no memory of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kfd.as_raw_fd(),
            initrd_fd,
            cmd.as_bytes_with_nul().len(),
            cmd.as_ptr(),
            flags,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reboot into the kernel loaded by [`load`]. Returns only on failure.
pub fn reboot_into_loaded() -> io::Error {
    reboot(RebootCommand::Kexec, "LINUX_REBOOT_CMD_KEXEC")
}

/// Power the machine off (the delivered image's answer to SHUTDOWN when it is PID 1 of a
/// VM). Returns only on failure.
pub fn power_off() -> io::Error {
    reboot(RebootCommand::PowerOff, "LINUX_REBOOT_CMD_POWER_OFF")
}

/// Flush the file systems, then `reboot(2)` with `cmd`; returns only on failure.
fn reboot(cmd: RebootCommand, name: &str) -> io::Error {
    rustix::fs::sync();
    match rustix::system::reboot(cmd) {
        Ok(()) => io::Error::other(format!("reboot({name}) returned")),
        Err(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_with_a_nul_is_refused_before_any_syscall() {
        let e = load(b"kernel", b"", "a\0b").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
