//! The VM artifacts: a guest kernel from Debian's packages, the stage-1 initramfs around a
//! static `monarch`, and the demo payload bundle, built by [`prepare`] and cached in
//! [`default_dir`].

use monarch_drivers::host;
use monarch_proto::Algo;
use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Debian's meta-package whose dependency is the guest kernel: the cloud flavour, small and
/// quick to boot, with everything used here built in (PCI, 8250 console, devtmpfs,
/// `CONFIG_KEXEC_FILE`).
const KERNEL_META: &str = "linux-image-cloud-amd64";

/// Where prepared artifacts live: `$MONARCH_VM_DIR`, else `/var/cache/monarch/vm`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("MONARCH_VM_DIR").map_or_else(|| PathBuf::from("/var/cache/monarch/vm"), PathBuf::from)
}

/// The prepared files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    /// The folder.
    pub dir: PathBuf,
    /// Guest kernel (bzImage).
    pub kernel: PathBuf,
    /// Stage-1 initramfs (newc cpio, `/init` = static monarch).
    pub initrd: PathBuf,
    /// Demo payload bundle (UKI).
    pub bundle: PathBuf,
}

impl Artifacts {
    /// The artifact paths inside `dir` (whether or not they exist yet).
    pub fn at(dir: &Path) -> Artifacts {
        Artifacts {
            dir: dir.to_path_buf(),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("stage1.cpio"),
            bundle: dir.join("payload.efi"),
        }
    }

    /// The first missing artifact, if any, as an error that says how to make it.
    pub fn check(&self) -> Result<(), super::VmError> {
        self.first_missing(&|p| p.is_file()).map_or(Ok(()), Err)
    }

    /// The first artifact that `is_file` says is not there, as [`Artifacts::check`] reports
    /// it: for a caller that asks another machine than this one.
    pub fn first_missing(&self, is_file: &dyn Fn(&Path) -> bool) -> Option<super::VmError> {
        [&self.kernel, &self.initrd, &self.bundle]
            .into_iter()
            .find(|p| !is_file(p))
            .map(|p| super::VmError::Missing { path: p.clone(), dir: self.dir.clone() })
    }
}

/// Options of [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Output (and cache) folder.
    pub dir: PathBuf,
    /// A statically linked `monarch` to put in the initramfs; default: this executable if
    /// it is static, else one built from the source tree this executable was built in.
    pub agent: Option<PathBuf>,
    /// Rebuild everything, ignoring the cache.
    pub force: bool,
}

/// What [`prepare`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prepared {
    /// Kernel package (name and version).
    pub kernel_package: String,
    /// The static agent used.
    pub agent: PathBuf,
    /// Sizes of the artifacts.
    pub kernel_bytes: u64,
    /// Stage-1 initramfs size.
    pub initrd_bytes: u64,
    /// Bundle size.
    pub bundle_bytes: u64,
    /// Steps that were taken from the cache.
    pub cached: Vec<String>,
}

/// Build (or reuse) every VM artifact in `opts.dir`. Installs QEMU, iPXE's ROMs and
/// binutils with apt-get when missing. Serialised with a lock file, so parallel tests share
/// one preparation.
pub fn prepare(opts: &PrepareOptions, progress: &mut dyn FnMut(&str)) -> Result<Prepared, super::VmError> {
    let dir = &opts.dir;
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create {}: {e}; run as root, or choose another folder with --dir or MONARCH_VM_DIR",
            dir.display()
        )
    })?;
    let lock = std::fs::File::create(dir.join(".lock"))
        .map_err(|e| format!("cannot lock {}: {e}", dir.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| format!("cannot lock {}: {e}", dir.display()))?;
    host::ensure_packages(
        &[("qemu-system-x86_64", "qemu-system-x86"), ("objcopy", "binutils"), ("dpkg-deb", "dpkg")],
        progress,
    )?;
    if !Path::new("/usr/lib/ipxe/qemu/efi-virtio.rom").exists() {
        host::ensure_packages(&[("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu")], progress)?;
    }
    let art = Artifacts::at(dir);
    let mut cached = Vec::new();
    // 1. The guest kernel, from Debian's package.
    let kernel_pkg_file = dir.join("kernel.package");
    let kernel_package = match std::fs::read_to_string(&kernel_pkg_file) {
        Ok(p) if !opts.force && art.kernel.is_file() => {
            cached.push("kernel".into());
            p.trim().to_string()
        }
        _ => {
            let pkg = resolve_dependency(KERNEL_META)?;
            progress(&format!("fetching the guest kernel: {pkg} (apt-get download)"));
            let x = fetch_deb(&pkg, dir)?;
            let boot = x.join("boot");
            let vmlinuz = std::fs::read_dir(&boot)
                .map_err(|e| format!("{pkg} has no /boot ({e})"))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
                .ok_or(format!("{pkg} has no /boot/vmlinuz-*"))?;
            replace_file(&vmlinuz, &art.kernel)?;
            let _ = std::fs::remove_dir_all(&x);
            let version = deb_version(&pkg).unwrap_or_default();
            let label = format!("{pkg} {version}").trim().to_string();
            std::fs::write(&kernel_pkg_file, &label).map_err(|e| e.to_string())?;
            label
        }
    };
    // 2. systemd's EFI stub, the base of the bundle.
    let stub = dir.join("linuxx64.efi.stub");
    if stub.is_file() && !opts.force {
        cached.push("stub".into());
    } else {
        progress("fetching systemd's EFI stub: systemd-boot-efi (apt-get download)");
        let x = fetch_deb("systemd-boot-efi", dir)?;
        replace_file(&x.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub"), &stub)?;
        let _ = std::fs::remove_dir_all(&x);
    }
    // 3. The static agent, and from it the initramfs and the bundle.
    let agent = find_static_agent(opts.agent.as_deref(), progress)?;
    let agent_bytes = std::fs::read(&agent).map_err(|e| format!("cannot read {}: {e}", agent.display()))?;
    let b3 = |b: &[u8]| Algo::Blake3.digest(b).to_hex(Algo::Blake3);
    let key = format!("{} {kernel_package} {}", b3(&agent_bytes), b3(super::PAYLOAD_CMDLINE.as_bytes()));
    let key_file = dir.join("artifacts.key");
    if !opts.force
        && std::fs::read_to_string(&key_file).is_ok_and(|k| k == key)
        && art.initrd.is_file()
        && art.bundle.is_file()
    {
        cached.push("initramfs".into());
        cached.push("bundle".into());
    } else {
        progress(&format!("building the stage-1 initramfs around {}", agent.display()));
        let cpio = initramfs(&agent_bytes).map_err(|e| format!("cannot build the initramfs: {e}"))?;
        written(&art.initrd, monarch_drivers::fs::write_atomically(&art.initrd, &cpio))?;
        progress("building the demo payload bundle (UKI: kernel + initramfs + command line)");
        let tmp = art.bundle.with_extension("efi.tmp");
        crate::bundle::build(&stub, &art.kernel, &art.initrd, super::PAYLOAD_CMDLINE, &tmp)?;
        std::fs::rename(&tmp, &art.bundle)
            .map_err(|e| format!("cannot write {}: {e}", art.bundle.display()))?;
        written(&key_file, monarch_drivers::fs::write_atomically(&key_file, key.as_bytes()))?;
    }
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    Ok(Prepared {
        kernel_package,
        agent,
        kernel_bytes: len(&art.kernel),
        initrd_bytes: len(&art.initrd),
        bundle_bytes: len(&art.bundle),
        cached,
    })
}

/// A write's outcome as this module reports it.
fn written(path: &Path, r: std::io::Result<()>) -> Result<(), String> {
    r.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn replace_file(from: &Path, to: &Path) -> Result<(), String> {
    monarch_drivers::fs::copy_atomically(from, to)
        .map(drop)
        .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
}

/// The real package a Debian meta-package depends on (`linux-image-cloud-amd64` →
/// `linux-image-6.1.0-NN-cloud-amd64`).
fn resolve_dependency(meta: &str) -> Result<String, String> {
    let mut out = host::run(Command::new("apt-cache").args(["depends", meta]), "apt-cache depends");
    if out.as_ref().map_or(true, |o| !o.contains("Depends:")) {
        let _ = host::run(Command::new("apt-get").args(["update", "-qq"]), "apt-get update");
        out = host::run(Command::new("apt-cache").args(["depends", meta]), "apt-cache depends");
    }
    out?.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or(format!("apt-cache knows no kernel behind {meta}; check /etc/apt/sources.list"))
}

fn deb_version(pkg: &str) -> Option<String> {
    let out = host::run(Command::new("apt-cache").args(["show", "--no-all-versions", pkg]), "apt-cache show")
        .ok()?;
    out.lines().find_map(|l| l.strip_prefix("Version: ")).map(str::to_string)
}

/// `apt-get download PKG` into a scratch folder of `dir`, then `dpkg -x` it; returns the
/// extracted tree.
fn fetch_deb(pkg: &str, dir: &Path) -> Result<PathBuf, String> {
    let scratch = dir.join(format!("fetch-{pkg}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    // Private to us (root extracts from it); apt is told not to drop to _apt, which could
    // not write here, rather than opening the folder to everyone.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    host::run(
        Command::new("apt-get")
            .args(["download", "-qq", "-o", "APT::Sandbox::User=root", pkg])
            .current_dir(&scratch),
        "apt-get download",
    )
    .map_err(|e| {
        format!(
            "{e}; the guest kernel and stub come from Debian's repositories: check network access to them"
        )
    })?;
    let deb = std::fs::read_dir(&scratch)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "deb")
                && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
        })
        .ok_or(format!("apt-get download {pkg} left no {pkg}_*.deb in {}", scratch.display()))?;
    let x = scratch.join("x");
    host::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&x), "dpkg -x")?;
    Ok(x)
}

/// Whether `bytes` are an ELF executable without a program interpreter (statically linked).
pub fn is_static_elf(bytes: &[u8]) -> bool {
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    let Ok(elf) = ElfFile64::<object::LittleEndian>::parse(bytes) else { return false };
    let e = elf.endian();
    elf.elf_header().e_machine.get(e) == object::elf::EM_X86_64
        && !elf.elf_program_headers().iter().any(|p| p.p_type(e) == object::elf::PT_INTERP)
}

fn find_static_agent(given: Option<&Path>, progress: &mut dyn FnMut(&str)) -> Result<PathBuf, String> {
    let check = |p: &Path| -> Result<PathBuf, String> {
        let bytes = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        if is_static_elf(&bytes) {
            Ok(p.to_path_buf())
        } else {
            Err(format!(
                "{} is not a statically linked executable; build one with RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --target x86_64-unknown-linux-gnu",
                p.display()
            ))
        }
    };
    if let Some(p) = given {
        return check(p);
    }
    let me = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    if check(&me).is_ok() {
        return Ok(me);
    }
    // Built from a source tree (target/{debug,release}/monarch): build the static one there.
    let ws = me
        .ancestors()
        .find(|d| d.join("Cargo.toml").is_file() && d.join("crates/monarch").is_dir())
        .ok_or(format!(
            "{} is dynamically linked and not inside a monarch source tree; pass --agent with a static monarch",
            me.display()
        ))?;
    let target_dir = ws.join("target/static");
    progress(
        "building a static monarch for the initramfs (cargo build --release, crt-static; first time takes minutes)",
    );
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--locked", "--quiet", "-p", "monarch", "--bin", "monarch"])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .current_dir(ws)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cargo to build the static agent: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of the static agent failed ({status})"));
    }
    check(&target_dir.join("x86_64-unknown-linux-gnu/release/monarch"))
}

/// The stage-1 initramfs: `/dev`, `/proc`, `/sys`, `/dev/console` and `/init` (the agent).
pub fn initramfs(init: &[u8]) -> std::io::Result<Vec<u8>> {
    use cpio::newc::{Builder, ModeFileType, trailer};
    let mut out = Vec::with_capacity(init.len() + 4096);
    let entry = |out: Vec<u8>, b: Builder, data: &[u8]| -> std::io::Result<Vec<u8>> {
        let len = u32::try_from(data.len()).map_err(std::io::Error::other)?;
        let mut w = b.uid(0).gid(0).nlink(1).write(out, len);
        w.write_all(data)?;
        w.finish()
    };
    for (ino, d) in (1..).zip(["dev", "proc", "sys", "run"]) {
        out = entry(
            out,
            Builder::new(d).ino(ino).mode(0o755).set_mode_file_type(ModeFileType::Directory),
            &[],
        )?;
    }
    out = entry(
        out,
        Builder::new("dev/console")
            .ino(10)
            .mode(0o600)
            .set_mode_file_type(ModeFileType::Char)
            .rdev_major(5)
            .rdev_minor(1),
        &[],
    )?;
    out =
        entry(out, Builder::new("init").ino(11).mode(0o755).set_mode_file_type(ModeFileType::Regular), init)?;
    trailer(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_initramfs_holds_init_and_a_console_and_reads_back_with_a_cpio_reader() {
        let cpio = initramfs(b"\x7fELF fake init").unwrap();
        let mut r = std::io::Cursor::new(cpio);
        let mut seen = Vec::new();
        loop {
            let e = cpio::NewcReader::new(r).unwrap();
            if e.entry().is_trailer() {
                break;
            }
            let (name, mode, major, minor) = (
                e.entry().name().to_string(),
                e.entry().mode(),
                e.entry().rdev_major(),
                e.entry().rdev_minor(),
            );
            let mut data = Vec::new();
            let mut e = e;
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            seen.push((name, mode, major, minor, data));
            r = e.finish().unwrap();
        }
        let init = seen.iter().find(|s| s.0 == "init").unwrap();
        assert_eq!(init.1, 0o100_755);
        assert_eq!(init.4, b"\x7fELF fake init");
        let console = seen.iter().find(|s| s.0 == "dev/console").unwrap();
        assert_eq!((console.1, console.2, console.3), (0o020_600, 5, 1));
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are built without crt-static.
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }
}
