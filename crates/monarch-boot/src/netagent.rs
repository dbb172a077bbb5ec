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
//! offer's digest, disk bytes against their commit record's digest. When its trust policy
//! checks signatures, it also never hands off into an image whose attached signature it did
//! not accept itself, wherever the image comes from: the network, the disk after a failed
//! discovery, the disk when the server offers what it holds, or `boot-disk`.
//!
//! The disk holds exactly the bytes that were served — the image with its attached signature
//! trailer, when it has one — so the disk's digest equals the offer's and an up-to-date
//! machine transfers nothing; the trailer is split off ([`image_part`]) before every handoff.

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
    /// The disk's image (no new one, or `boot-disk`) has a signature this machine refuses:
    /// nothing was booted.
    #[error(
        "{image} on disk {} (slot {slot}, generation {generation}): signature refused: {why}; nothing was booted: install an image signed by a trusted key: serve it with its signature attached and run `monarch netboot recover --disk {} --trust KEY.pub …`{}",
        disk.display(),
        disk.display(),
        if *unsigned { " (or accept unsigned images: --signature optional)" } else { "" }
    )]
    DiskSignature {
        /// The image's name.
        image: String,
        /// The disk.
        disk: PathBuf,
        /// The slot it is in (`A`/`B`).
        slot: &'static str,
        /// That slot's generation.
        generation: u64,
        /// Why.
        why: String,
        /// The image carries no signature (rather than one that does not verify).
        unsigned: bool,
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

/// What is handed off of `bytes` (as served, or as installed on the disk): the image without
/// its attached signature trailer, once `trust` accepts that signature (`progress` says by
/// which key, or that the image is unsigned and the policy optional).
///
/// With signatures off nothing is checked, but a trailer that parses is still split off, so
/// the same image runs whatever the policy; bytes whose trailer does not parse are handed
/// off as they are.
pub fn image_part<'a>(
    trust: &crate::signing::Trust,
    bytes: &'a [u8],
    progress: &mut dyn FnMut(&str),
) -> Result<&'a [u8], crate::signing::Refusal> {
    use crate::signing::{Refusal, Verdict};
    if !trust.checks() {
        return Ok(match monarch_proto::sign::detach(bytes) {
            Ok((image, Some(_))) => image,
            _ => bytes,
        });
    }
    let (image, record) = monarch_proto::sign::detach(bytes).map_err(Refusal::Malformed)?;
    let held = monarch_proto::sign::ImageDigest::of(image);
    match trust.check(record, &held)? {
        Verdict::Signed(k) => progress(&format!("signed by trusted key {k}")),
        _ => progress("unsigned (signature = optional)"),
    }
    Ok(image)
}

/// The disk's verified image `b`, cut to what is handed off once `trust` accepts its
/// signature; refused: an error naming the image, the disk, the slot and the fix.
fn check_disk_image(
    trust: &crate::signing::Trust,
    disk: &Path,
    mut b: BootImage,
    progress: &mut dyn FnMut(&str),
) -> Result<BootImage, NetAgentError> {
    let len = match image_part(trust, &b.bytes, progress) {
        Ok(image) => image.len(),
        Err(refusal) => {
            return Err(NetAgentError::DiskSignature {
                image: b.name,
                disk: disk.to_path_buf(),
                slot: b.slot.name(),
                generation: b.generation,
                why: refusal.to_string(),
                unsigned: refusal == crate::signing::Refusal::Unsigned,
            });
        }
    };
    b.bytes.truncate(len);
    Ok(b)
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
    // No new image: boot the installed one, once its signature passes this machine's policy
    // (the restart into the disk checks it again, over the bytes it reads back).
    let boot_installed = |installed: Option<BootImage>,
                          why: String,
                          progress: &mut dyn FnMut(&str)|
     -> Result<(NetAgentReport, Next), NetAgentError> {
        match (installed, &opts.disk) {
            (Some(b), Some(disk)) => {
                let b = check_disk_image(&opts.trust, disk, b, progress)?;
                Ok((
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
                ))
            }
            (None, Some(disk)) => Err(NetAgentError::NothingOnDisk { why, disk: disk.clone() }),
            (_, None) => Err(NetAgentError::Diskless { why }),
        }
    };
    let fetched = match fetch(&cfg) {
        Ok(f) => f,
        Err(e) => {
            let why = if e.keeps_local_image() {
                e.to_string()
            } else {
                format!("the boot server's image could not be fetched: {e}")
            };
            progress(&why);
            return boot_installed(installed, why, progress);
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
    let image_len = image_part(&opts.trust, &fetched.bytes, progress)
        .map_err(|e| NetAgentError::Signature { image: fetched.offer.name.clone(), why: e.to_string() })?
        .len();
    // What runs is the image alone, without its signature trailer.
    report.bytes = image_len as u64;
    let Some(t) = target.as_mut() else {
        fetched.bytes.truncate(image_len);
        return Ok((report, Next::Run(fetched.bytes)));
    };
    // The disk gets exactly the served bytes, trailer included: its digest is then the
    // offer's (the next boot transfers nothing), and the signature stays with the image for
    // every later boot from the disk to check.
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
/// else the other, saying so), cut to the image without its signature trailer once `trust`
/// accepts the signature. A refused signature boots nothing (no fallback to the other slot:
/// the policy applies to what the disk says is current).
pub fn boot_disk(
    disk: &Path,
    trust: &crate::signing::Trust,
    progress: &mut dyn FnMut(&str),
) -> Result<BootImage, NetAgentError> {
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
    let b = check_disk_image(trust, disk, b, progress)?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::signing::{Refusal, SignaturePolicy, Trust};
    use monarch_proto::sign::{ImageDigest, SecretKey, attach};

    #[test]
    fn the_image_part_is_the_image_without_its_trailer_once_the_signature_is_accepted() {
        let k = SecretKey::from_seed(&[5; 32]);
        let image = vec![0x42u8; 3000];
        let record = k.sign(&ImageDigest::of(&image)).to_record().into_bytes();
        let mut signed = image.clone();
        signed.extend(attach(&record));
        let trust = |policy| Trust { policy, keys: vec![k.public()] };
        let mut said = Vec::new();
        let mut progress = |m: &str| said.push(m.to_string());
        for policy in [SignaturePolicy::Off, SignaturePolicy::Optional, SignaturePolicy::Required] {
            assert_eq!(image_part(&trust(policy), &signed, &mut progress).unwrap(), &image[..], "{policy:?}");
        }
        // Unsigned: as it is, unless required.
        assert_eq!(image_part(&trust(SignaturePolicy::Off), &image, &mut progress).unwrap(), &image[..]);
        assert_eq!(image_part(&trust(SignaturePolicy::Optional), &image, &mut progress).unwrap(), &image[..]);
        assert_eq!(
            image_part(&trust(SignaturePolicy::Required), &image, &mut progress),
            Err(Refusal::Unsigned)
        );
        // A trailer that does not fit: refused when checked, handed off as it is when off.
        let mut bad = image.clone();
        bad.extend(u32::MAX.to_le_bytes());
        bad.extend(monarch_proto::sign::ATTACHED_MAGIC);
        assert!(matches!(
            image_part(&trust(SignaturePolicy::Optional), &bad, &mut progress),
            Err(Refusal::Malformed(_))
        ));
        assert_eq!(image_part(&trust(SignaturePolicy::Off), &bad, &mut progress).unwrap(), &bad[..]);
        // Another image's signature attached: refused even when optional.
        let mut other = vec![0x43u8; 3000];
        other.extend(attach(&record));
        assert!(matches!(
            image_part(&trust(SignaturePolicy::Optional), &other, &mut progress),
            Err(Refusal::Verify(_))
        ));
        // Only the accepted signed image was announced as signed (optional and required).
        assert_eq!(said.iter().filter(|m| m.starts_with("signed by trusted key")).count(), 2, "{said:?}");
    }
}
