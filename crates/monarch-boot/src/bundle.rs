//! Kernel bundles: a kernel, an initrd and a command line in one file, the image a `kexec`
//! handoff delivers.
//!
//! The format is the Unified Kernel Image (UKI) of the UAPI group's specification: a PE/COFF
//! file, normally systemd's EFI stub, with the kernel in section `.linux`, the initrd in
//! `.initrd` and the command line in `.cmdline`. An existing format rather than our own: the
//! same file boots under UEFI firmware, and `objdump -h`, `ukify inspect` or `objcopy
//! --dump-section` read it. The agent only reads the three sections (with the `object`
//! crate); it never runs the stub.
//!
//! The bytes are the peer's until verified, and even then the parser trusts nothing: a
//! missing or empty `.linux`, a section past the end of the file or a command line that is
//! not text is an error naming the section.

use object::read::pe::PeFile64;
use object::{Object as _, ObjectSection as _};
use std::path::Path;
use std::process::Command;
use thiserror::Error;

/// What is wrong with a bundle.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BundleError {
    /// Not a PE/COFF file at all.
    #[error(
        "not a kernel bundle (a UKI: PE file with .linux/.initrd/.cmdline sections): {0}; build one with `monarch vm prepare` or ukify"
    )]
    NotPe(String),
    /// A required section is missing or empty.
    #[error("the bundle has no {0} section (or it is empty); a UKI needs at least .linux")]
    Missing(&'static str),
    /// The command line is not UTF-8 text or contains a NUL.
    #[error("the bundle's .cmdline is not a text line (invalid UTF-8 or a NUL byte)")]
    BadCmdline,
}

/// The parts of a bundle, borrowed from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle<'a> {
    /// The kernel (`.linux`, a bzImage on x86-64).
    pub linux: &'a [u8],
    /// The initrd (`.initrd`; empty when absent).
    pub initrd: &'a [u8],
    /// The command line (`.cmdline`, trailing NULs and whitespace trimmed; empty when absent).
    pub cmdline: String,
}

/// Read a bundle's sections.
pub fn parse(bytes: &[u8]) -> Result<Bundle<'_>, BundleError> {
    let pe = PeFile64::parse(bytes).map_err(|e| BundleError::NotPe(e.to_string()))?;
    let section = |name: &str| -> Result<Option<&[u8]>, BundleError> {
        let Some(sec) = pe.section_by_name(name) else { return Ok(None) };
        // PE section data is at most the virtual size: file alignment pads the raw data.
        sec.data()
            .map(Some)
            .map_err(|e| BundleError::NotPe(format!("section {name} lies outside the file ({e})")))
    };
    let linux = section(".linux")?.filter(|s| !s.is_empty()).ok_or(BundleError::Missing(".linux"))?;
    let initrd = section(".initrd")?.unwrap_or_default();
    let cmdline = match section(".cmdline")? {
        None => String::new(),
        Some(raw) => {
            let text = std::str::from_utf8(raw).map_err(|_| BundleError::BadCmdline)?;
            let text = text.trim_end_matches('\0');
            if text.contains('\0') {
                return Err(BundleError::BadCmdline);
            }
            text.trim().to_string()
        }
    };
    Ok(Bundle { linux, initrd, cmdline })
}

/// Build a UKI at `out` from systemd's EFI stub and the three parts, with binutils'
/// `objcopy` (the recipe of the UKI specification, which `ukify` automates). Sections are
/// placed after the stub's last section, each on a 64 KiB boundary.
pub(crate) fn build(
    stub: &Path,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    out: &Path,
) -> Result<(), String> {
    let stub_bytes =
        std::fs::read(stub).map_err(|e| format!("cannot read the EFI stub {}: {e}", stub.display()))?;
    let pe = PeFile64::parse(&*stub_bytes).map_err(|e| {
        format!("{} is not a PE file ({e}); expected systemd's linuxx64.efi.stub", stub.display())
    })?;
    let base = pe.nt_headers().optional_header.image_base.get(object::LittleEndian);
    let end = pe
        .section_table()
        .iter()
        .map(|s| {
            u64::from(s.virtual_address.get(object::LittleEndian))
                + u64::from(s.virtual_size.get(object::LittleEndian))
        })
        .max()
        .unwrap_or(0);
    let tmp = out.with_extension("cmdline.tmp");
    std::fs::write(&tmp, format!("{cmdline}\0"))
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let size = |p: &Path| {
        std::fs::metadata(p).map(|m| m.len()).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    const ALIGN: u64 = 0x1_0000;
    let mut vma = end.next_multiple_of(ALIGN);
    let mut cmd = Command::new("objcopy");
    for (name, path, len) in [
        (".cmdline", tmp.as_path(), size(&tmp)?),
        (".linux", kernel, size(kernel)?),
        (".initrd", initrd, size(initrd)?),
    ] {
        cmd.arg("--add-section")
            .arg(format!("{name}={}", path.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={:#x}", base + vma));
        vma = (vma + len).next_multiple_of(ALIGN);
    }
    let result = cmd.arg(stub).arg(out).output();
    let _ = std::fs::remove_file(&tmp);
    match result {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("objcopy failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("cannot run objcopy ({e}); install binutils: apt-get install binutils")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_bundle_and_says_so() {
        for bytes in [&b""[..], b"MZ", &[0u8; 4096], b"\x7fELF\x02\x01\x01"] {
            match parse(bytes) {
                Err(BundleError::NotPe(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    }
}
