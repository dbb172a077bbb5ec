//! The machine's side of network boot: `monarch netboot agent` (and `recover`, `boot-disk`).
//!
//! Discovery → the server's offer (size + digest) → a buffer of exactly that size → the bulk
//! transfer into it → verify ([`monarch_net::discovery::fetch`]). Then, as the reference design's FIG. 4
//! branches:
//! - **diskless**: hand off to the verified bytes directly;
//! - **with a disk**: install them into the inactive A/B slot ([`monarch_drivers::disk`]: the
//!   commit record is written last), then restart and boot from the disk — the restart is an
//!   exec of this program as `monarch netboot boot-disk`, a fresh process that reads the image
//!   back from the disk and verifies it before handing off;
//! - **no boot server** within the bounded wait, or the server offers what the disk already
//!   holds: boot the installed image, and say so.
//!
//! A machine never hands off into bytes that did not verify: network bytes against the
//! offer's digest, disk bytes against their commit record's digest.

use crate::handoff::Handoff;
use monarch_drivers::disk::{BootImage, Target};
use monarch_net::discovery::{FetchConfig, fetch};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Why the network agent stopped before its handoff: the step that failed (discovery, transfer, verification, disk install, disk boot) and its cause.
#[derive(Debug, thiserror::Error)]
pub enum NetAgentError {
    /// The machine's disk could not be opened, created or read.
    #[error(transparent)]
    Disk(#[from] monarch_drivers::disk::DiskError),
    /// No image came from the network, and the disk holds none that verifies.
    #[error(
        "{why}; and disk {} holds no image that verifies: recover this machine from a boot server (`monarch netboot recover --disk {}` once one is reachable)",
        disk.display(),
        disk.display()
    )]
    NothingOnDisk {
        /// Why the network gave nothing.
        why: String,
        /// The disk.
        disk: PathBuf,
    },
    /// No image came from the network, and the machine has no disk.
    #[error("{why}; and this machine is diskless: nothing local to boot")]
    Diskless {
        /// Why the network gave nothing.
        why: String,
    },
    /// The fetched image's signature was refused: nothing installed, nothing run.
    #[error("{image}: signature refused: {why}; nothing was installed or run")]
    Signature {
        /// The image's name.
        image: String,
        /// Why.
        why: String,
    },
    /// The fetched, verified image could not be installed.
    #[error("installing {image} on {}: {source}", disk.display())]
    Install {
        /// The image's name.
        image: String,
        /// The disk.
        disk: PathBuf,
        /// What the disk said.
        source: monarch_drivers::disk::DiskError,
    },
}

/// Everything the agent needs.
#[derive(Debug, Clone)]
pub struct NetAgentOptions {
    /// Where to look for the boot server, how long, this machine's MAC.
    pub fetch: FetchConfig,
    /// The machine's disk (a block device or a file standing in for one); `None`: diskless.
    pub disk: Option<PathBuf>,
    /// Create the disk file with this size when it does not exist.
    pub disk_size: Option<u64>,
    /// Re-install even when the disk holds the offered image (`recover`).
    pub force: bool,
    /// What to do with the verified image.
    pub handoff: Handoff,
    /// Which image signatures this machine accepts (its own configuration). The signature
    /// travels attached to the image (`monarch_proto::sign::attach`).
    pub trust: crate::signing::Trust,
}

/// How the image that is about to run got here.
#[derive(Debug, Clone, Serialize)]
pub struct NetAgentReport {
    /// `network` (diskless, handed off from the buffer), `installed` (fetched, installed,
    /// restarting into the disk), `disk` (no new image: booting the installed one).
    pub source: &'static str,
    /// Why this path was taken, in words.
    pub reason: String,
    /// The image's name.
    pub image: String,
    /// Its size.
    pub bytes: u64,
    /// DISCOVERs sent.
    pub discovers: u32,
    /// Discovery, transfer and verification times (ms), when something was fetched.
    pub fetch_ms: Option<[f64; 3]>,
    /// The A/B slot installed or booted (`A`/`B`), with a disk.
    pub slot: Option<String>,
    /// That slot's generation.
    pub generation: Option<u64>,
}

/// What the caller does next.
pub enum Next {
    /// Hand off to these verified bytes (diskless).
    Run(Vec<u8>),
    /// Restart and boot from the disk.
    BootDisk(PathBuf),
}

fn open_target(path: &Path, size: Option<u64>) -> Result<Target, monarch_drivers::disk::DiskError> {
    match (Target::open(path), size) {
        (Ok(t), _) => Ok(t),
        (Err(_), Some(size)) if !path.exists() => Target::create_file(path, size),
        (Err(e), _) => Err(e),
    }
}

/// Run the flow up to the handoff; `progress` gets one line per step.
pub fn run(
    opts: &NetAgentOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(NetAgentReport, Next), NetAgentError> {
    let mut target = match &opts.disk {
        Some(p) => Some(open_target(p, opts.disk_size)?),
        None => None,
    };
    // What the disk holds now, verified (an unverifiable disk holds nothing usable).
    let installed: Option<BootImage> = match &target {
        Some(t) => match t.boot() {
            Ok(b) => {
                progress(&format!(
                    "disk {}: slot {} holds {} (generation {}), verified",
                    t.path().display(),
                    b.slot.name(),
                    b.name,
                    b.generation
                ));
                Some(b)
            }
            Err(e) => {
                progress(&format!("disk {}: {e}", t.path().display()));
                None
            }
        },
        None => None,
    };
    let mut cfg = opts.fetch.clone();
    cfg.current = if opts.force { None } else { installed.as_ref().map(|b| (b.algo, b.digest)) };
    progress(&format!("discovering a boot server at {} (up to {:?})", cfg.server, cfg.give_up_after));
    let boot_installed =
        |installed: Option<BootImage>, why: String| -> Result<(NetAgentReport, Next), NetAgentError> {
            match (installed, &opts.disk) {
                (Some(b), Some(disk)) => Ok((
                    NetAgentReport {
                        source: "disk",
                        reason: why,
                        image: b.name.clone(),
                        bytes: b.bytes.len() as u64,
                        discovers: 0,
                        fetch_ms: None,
                        slot: Some(b.slot.name().to_string()),
                        generation: Some(b.generation),
                    },
                    Next::BootDisk(disk.clone()),
                )),
                (None, Some(disk)) => Err(NetAgentError::NothingOnDisk { why, disk: disk.clone() }),
                (_, None) => Err(NetAgentError::Diskless { why }),
            }
        };
    let fetched = match fetch(&cfg) {
        Ok(f) => f,
        Err(e) if e.keeps_local_image() => return boot_installed(installed, e.to_string()),
        Err(e) => {
            let why = format!("the boot server's image could not be fetched: {e}");
            progress(&why);
            return boot_installed(installed, why);
        }
    };
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    progress(&format!(
        "{} ({} bytes, {}) from {}: discovered in {:.0} ms, transferred in {:.0} ms, verified in {:.0} ms",
        fetched.offer.name,
        fetched.offer.size,
        fetched.offer.algo.name(),
        fetched.server,
        ms(fetched.timings.discover),
        ms(fetched.timings.transfer),
        ms(fetched.timings.verify)
    ));
    let mut report = NetAgentReport {
        source: "network",
        reason: "diskless: handing off from the pre-posted buffer".into(),
        image: fetched.offer.name.clone(),
        bytes: fetched.offer.size,
        discovers: fetched.discovers,
        fetch_ms: Some([
            ms(fetched.timings.discover),
            ms(fetched.timings.transfer),
            ms(fetched.timings.verify),
        ]),
        slot: None,
        generation: None,
    };
    // The signature, over the bytes this machine holds, before any install or handoff.
    let mut fetched = fetched;
    if opts.trust.checks() {
        let refuse = |why: String| NetAgentError::Signature { image: fetched.offer.name.clone(), why };
        let (image, record) =
            monarch_proto::sign::detach(&fetched.bytes).map_err(|e| refuse(e.to_string()))?;
        let held = monarch_proto::sign::ImageDigest::of(image);
        match opts.trust.check(record, &held).map_err(|e| refuse(e.to_string()))? {
            crate::signing::Verdict::Signed(k) => progress(&format!("signed by trusted key {k}")),
            _ => progress("unsigned (signature = optional)"),
        }
        // What runs or is installed is the image alone, without its signature trailer.
        let len = image.len();
        fetched.bytes.truncate(len);
        report.bytes = len as u64;
    }
    let Some(t) = target.as_mut() else {
        return Ok((report, Next::Run(fetched.bytes)));
    };
    let done = t.install(&fetched.bytes, &fetched.offer.name, fetched.offer.algo).map_err(|source| {
        NetAgentError::Install { image: fetched.offer.name.clone(), disk: t.path().to_path_buf(), source }
    })?;
    progress(&format!(
        "installed into slot {} (generation {}); restarting to boot from the disk",
        done.slot.name(),
        done.generation
    ));
    report.source = "installed";
    report.reason = format!(
        "{} the disk's image: installed, committed, restarting into the disk",
        if installed.is_some() { "replaces" } else { "is" }
    );
    report.slot = Some(done.slot.name().to_string());
    report.generation = Some(done.generation);
    Ok((report, Next::BootDisk(t.path().to_path_buf())))
}

/// `boot-disk`: the verified image the disk boots (newest committed slot that verifies,
/// else the other, saying so).
pub fn boot_disk(disk: &Path, progress: &mut dyn FnMut(&str)) -> Result<BootImage, NetAgentError> {
    let t = Target::open(disk)?;
    let b = t.boot()?;
    if let Some(f) = &b.fell_back_from {
        progress(&format!(
            "slot {} ({}, generation {}) does not verify ({}): booting slot {} instead",
            f.slot.name(),
            f.name,
            f.generation,
            f.problem,
            b.slot.name()
        ));
    }
    progress(&format!(
        "booting {} from disk {} slot {} (generation {}, {} bytes, verified)",
        b.name,
        disk.display(),
        b.slot.name(),
        b.generation,
        b.bytes.len()
    ));
    Ok(b)
}
