//! Disk installs in A/B slots: the write-to-disk handoff of network boot.
//!
//! A machine with a disk installs the delivered image, restarts and boots it from the disk.
//! A [`Target`] is the disk (a block device, or a regular file standing in for one) laid out
//! by [`monarch_proto::slots`]: a commit record per slot, then slot A and slot B. The
//! protocol core decides the order of the writes ([`slots::plan_install`]); this module
//! carries it out with `pwrite` and `fsync` and reads the slots back:
//!
//! 1. invalidate the inactive slot's record, fsync;
//! 2. write the image into the inactive slot, fsync, read it back and verify it;
//! 3. write the new commit record, fsync — the record is the commit marker, written last.
//!
//! The slot that boots now and its record are never written, so a power cut (or the
//! installer being killed) at any point leaves the previous image bootable; once step 3 is on
//! the disk the new one boots. [`Target::boot`] takes the newest committed slot whose data
//! verifies against its record's digest, falls back to the other one (and says so) if it does
//! not, and asks for a re-provision when neither does. [`Target::verify_all`] reports both
//! slots for an operator's `recover` command.
//!
//! Writes go through the page cache and are made durable by `fsync`: on a block device that
//! also flushes the disk's own write cache, which is what orders the steps on real media.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use monarch_proto::checksum::{Algo, Digest, Hasher};
use monarch_proto::slots::{self, Layout, LayoutError, Record, RecordError, Slot, Step};

/// Images are written and read in chunks of this size: large enough for full-speed I/O,
/// small enough that verifying a slot does not need the whole image in memory.
const CHUNK: usize = 1 << 20;
/// A record sector's length, for buffers.
const SECTOR_BYTES: usize = 4096;
const _: () = assert!(SECTOR_BYTES as u64 == slots::SECTOR);

/// What went wrong with a disk target; every message names the target and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The target cannot be opened.
    #[error(
        "cannot open disk target {path}: {source} (check the path, and that you may write it: \
         a block device needs root)"
    )]
    Open {
        /// The target.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The path is neither a block device nor a regular file.
    #[error("{path} is {what}, not a disk target: name a block device (e.g. /dev/sdb) or a regular file")]
    NotATarget {
        /// The path.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// `create_file` would overwrite something.
    #[error("{path} already exists: open it as a target, or remove it to start from a blank one")]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// Another process has the target open as a target.
    #[error("disk target {path} is in use by another process (locked): wait for its install to finish")]
    Locked {
        /// The target.
        path: PathBuf,
    },
    /// The block device is mounted or held exclusively by someone else.
    #[error(
        "block device {path} is busy (mounted, or held by another program): unmount it or stop its user, \
         then install"
    )]
    Busy {
        /// The device.
        path: PathBuf,
    },
    /// The target's size does not fit the layout or the image.
    #[error("disk target {path}: {source}")]
    Layout {
        /// The target.
        path: PathBuf,
        /// What does not fit.
        source: LayoutError,
    },
    /// The image's commit record cannot be written (e.g. too long a name).
    #[error("cannot install {name:?} on {path}: {source}")]
    Record {
        /// The target.
        path: PathBuf,
        /// The image's name.
        name: String,
        /// What is wrong.
        source: RecordError,
    },
    /// A read, write or sync failed.
    #[error("{what} on disk target {path} failed: {source}")]
    Io {
        /// The target.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The image just written reads back differently: the previous image still boots.
    #[error(
        "the image written to {slot} of {path} reads back differently ({problem}): the disk may be failing; \
         the previous image still boots, nothing was committed"
    )]
    ReadBack {
        /// The target.
        path: PathBuf,
        /// The slot written.
        slot: Slot,
        /// What did not match.
        problem: String,
    },
    /// Fault injection ([`Target::set_write_limit`]): the power went after this many bytes.
    #[error("power cut (fault injection) after {written} bytes written to {path}")]
    PowerCut {
        /// The target.
        path: PathBuf,
        /// Bytes written before the cut.
        written: u64,
    },
    /// No slot holds a verified image.
    #[error("no bootable image on {path} ({slots}); recover: re-provision this machine from the boot server")]
    NothingBootable {
        /// The target.
        path: PathBuf,
        /// Each slot's state.
        slots: String,
    },
}

/// What kind of target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A block device (its size from the device itself).
    BlockDevice,
    /// A regular file standing in for a disk.
    File,
}

/// A finished install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The slot the image went to.
    pub slot: Slot,
    /// Its commit record's generation (the newest on the target).
    pub generation: u64,
    /// The checksum algorithm of `digest`.
    pub algo: Algo,
    /// The image's digest, as recorded.
    pub digest: Digest,
}

/// The newest slot that fell back because its data did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// The slot that did not verify.
    pub slot: Slot,
    /// Its record's generation.
    pub generation: u64,
    /// Its image's name.
    pub name: String,
    /// Why it did not verify.
    pub problem: String,
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (generation {}, {:?}) failed verification: {}; booted {} instead (re-install to repair it)",
            self.slot,
            self.generation,
            self.name,
            self.problem,
            self.slot.other()
        )
    }
}

/// A verified image read from the target, ready for the handoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage {
    /// The slot it came from.
    pub slot: Slot,
    /// Its record's generation.
    pub generation: u64,
    /// Its name.
    pub name: String,
    /// The algorithm of `digest`.
    pub algo: Algo,
    /// Its digest (verified against `bytes`).
    pub digest: Digest,
    /// The image.
    pub bytes: Vec<u8>,
    /// Set when the newest committed slot did not verify and this is the other one.
    pub fell_back_from: Option<Fallback>,
}

/// One slot's state, for status and `recover`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// Nothing committed: never installed, or an install into it that did not finish.
    Empty,
    /// The record cannot be read or is not a valid record (torn, corrupt, foreign).
    BadRecord(String),
    /// A valid record whose data does not verify.
    Corrupt {
        /// The record.
        record: Record,
        /// Why the data does not verify.
        problem: String,
    },
    /// A valid record and data that verifies: bootable.
    Verified(Record),
}

/// One slot's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    /// The slot.
    pub slot: Slot,
    /// What it holds.
    pub state: SlotState,
}

impl SlotStatus {
    /// Whether it holds a verified image.
    pub fn is_bootable(&self) -> bool {
        matches!(self.state, SlotState::Verified(_))
    }
}

impl std::fmt::Display for SlotStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            SlotState::Empty => write!(f, "{}: empty", self.slot),
            SlotState::BadRecord(why) => write!(f, "{}: bad record: {why}", self.slot),
            SlotState::Corrupt { record, problem } => write!(
                f,
                "{}: {:?} generation {} does not verify: {problem}",
                self.slot, record.name, record.generation
            ),
            SlotState::Verified(r) => write!(
                f,
                "{}: {:?} generation {}, {} bytes, {} {} verified",
                self.slot,
                r.name,
                r.generation,
                r.image_len,
                r.algo,
                r.digest.to_hex(r.algo)
            ),
        }
    }
}

/// A disk target laid out in A/B slots, opened (and `flock`ed) for exclusive use.
#[derive(Debug)]
pub struct Target {
    file: File,
    path: PathBuf,
    kind: TargetKind,
    layout: Layout,
    /// Fault injection: bytes still allowed to be written (None = no limit).
    write_limit: Option<u64>,
    written: u64,
}

impl Target {
    /// Open an existing target: a block device or a regular file. Its size comes from the
    /// device or the file; it must hold the header and two slots.
    /// A block device is opened with `O_EXCL`, which Linux refuses while the device is
    /// mounted or held by another exclusive user: installing under a mounted filesystem
    /// would corrupt both.
    pub fn open(path: impl AsRef<Path>) -> Result<Target, DiskError> {
        let path = path.as_ref().to_path_buf();
        let block = std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_block_device());
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if block {
            options.custom_flags(libc::O_EXCL);
        }
        let file = options.open(&path).map_err(|source| {
            if block && source.raw_os_error() == Some(libc::EBUSY) {
                DiskError::Busy { path: path.clone() }
            } else {
                DiskError::Open { path: path.clone(), source }
            }
        })?;
        Target::from_file(file, path)
    }

    /// Create a regular file of `size` bytes standing in for a blank disk (both slots
    /// empty). Refuses to overwrite an existing file.
    pub fn create_file(path: impl AsRef<Path>, size: u64) -> Result<Target, DiskError> {
        let path = path.as_ref().to_path_buf();
        Layout::for_target(size).map_err(|source| DiskError::Layout { path: path.clone(), source })?;
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    DiskError::Exists { path: path.clone() }
                } else {
                    DiskError::Open { path: path.clone(), source }
                }
            })?;
        let io = |what: &str, source| DiskError::Io { path: path.clone(), what: what.into(), source };
        // A sparse file reads as zeros: both records start empty.
        file.set_len(size).map_err(|e| io("setting the size", e))?;
        file.sync_all().map_err(|e| io("fsync", e))?;
        // Make the new file's directory entry durable too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("fsync of the directory", e))?;
        }
        Target::from_file(file, path)
    }

    fn from_file(mut file: File, path: PathBuf) -> Result<Target, DiskError> {
        let meta = file.metadata().map_err(|source| DiskError::Open { path: path.clone(), source })?;
        let ft = meta.file_type();
        let kind = if ft.is_block_device() {
            TargetKind::BlockDevice
        } else if ft.is_file() {
            TargetKind::File
        } else {
            let what = if ft.is_dir() {
                "a directory"
            } else if ft.is_char_device() {
                "a character device"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            };
            return Err(DiskError::NotATarget { path, what });
        };
        // One installer at a time: a second one would pick the same inactive slot.
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| DiskError::Locked { path: path.clone() })?;
        let len = match kind {
            TargetKind::File => meta.len(),
            // lseek(SEEK_END) on a block device gives its size (what BLKGETSIZE64 returns)
            // without an ioctl.
            TargetKind::BlockDevice => file.seek(SeekFrom::End(0)).map_err(|source| DiskError::Io {
                path: path.clone(),
                what: "reading the device size".into(),
                source,
            })?,
        };
        let layout =
            Layout::for_target(len).map_err(|source| DiskError::Layout { path: path.clone(), source })?;
        Ok(Target { file, path, kind, layout, write_limit: None, written: 0 })
    }

    /// The target's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Block device or file.
    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    /// Where the records and slots are.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Fault injection for tests, modelling a power cut mid-write: after `limit` more bytes
    /// of writes, the write in progress stops short (its first bytes written, the rest not)
    /// and the install fails with [`DiskError::PowerCut`] without writing or syncing
    /// anything else. What it models honestly: the installer dying at any byte of any write,
    /// with what was written before reaching the disk in order (the page cache survives a
    /// process death). What it does not model: a disk cache that loses or reorders unsynced
    /// writes — `monarch_proto::slots`' tests crash a simulated cache for that.
    pub fn set_write_limit(&mut self, limit: Option<u64>) {
        self.write_limit = limit;
    }

    /// Bytes written to the device through this handle so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Read both slots' records: the valid ones, and each slot's problem if not.
    fn records(&self) -> [Result<Record, SlotState>; 2] {
        Slot::BOTH.map(|slot| {
            let mut sector = vec![0u8; SECTOR_BYTES];
            self.file
                .read_exact_at(&mut sector, self.layout.record_offset(slot))
                .map_err(|e| SlotState::BadRecord(format!("cannot read the record: {e}")))?;
            Record::decode(&sector, slot, &self.layout).map_err(|e| match e {
                RecordError::Empty => SlotState::Empty,
                e => SlotState::BadRecord(e.to_string()),
            })
        })
    }

    /// Hash `len` bytes at `offset` chunk by chunk; with `keep`, also collect them.
    fn hash_range(
        &self,
        offset: u64,
        len: u64,
        algo: Algo,
        mut keep: Option<&mut Vec<u8>>,
    ) -> Result<Digest, io::Error> {
        let mut h = Hasher::new(algo);
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from(len - done).unwrap_or(CHUNK).min(CHUNK);
            self.file.read_exact_at(&mut buf[..n], offset + done)?;
            h.update(&buf[..n]);
            if let Some(v) = keep.as_deref_mut() {
                v.extend_from_slice(&buf[..n]);
            }
            done += n as u64;
        }
        Ok(h.finish())
    }

    /// Check a committed slot's data against its record; the problem if it does not verify.
    fn check(&self, r: &Record, keep: Option<&mut Vec<u8>>) -> Result<(), String> {
        match self.hash_range(r.data_offset, r.image_len, r.algo, keep) {
            Ok(d) if d == r.digest => Ok(()),
            Ok(d) => Err(format!(
                "{} digest mismatch: the record says {}, the data hashes to {}",
                r.algo,
                r.digest.to_hex(r.algo),
                d.to_hex(r.algo)
            )),
            Err(e) => Err(format!("cannot read the image: {e}")),
        }
    }

    /// Both slots' status: record and data checked (reads both images once).
    pub fn verify_all(&self) -> [SlotStatus; 2] {
        let records = self.records();
        Slot::BOTH.map(|slot| {
            let state = match &records[slot.index()] {
                Err(state) => state.clone(),
                Ok(r) => match self.check(r, None) {
                    Ok(()) => SlotState::Verified(r.clone()),
                    Err(problem) => SlotState::Corrupt { record: r.clone(), problem },
                },
            };
            SlotStatus { slot, state }
        })
    }

    /// The verified image to boot: the newest committed slot whose data verifies; the other
    /// committed slot if the newest does not (with `fell_back_from` saying why); an error
    /// asking for a re-provision if none does.
    pub fn boot(&self) -> Result<BootImage, DiskError> {
        let records = self.records();
        let valid = records.clone().map(Result::ok);
        let mut fell_back_from = None;
        let mut problems: [Option<String>; 2] = [None, None];
        for slot in slots::boot_order(&valid) {
            let Some(r) = valid[slot.index()].as_ref() else { continue };
            let mut bytes = Vec::new();
            let len = usize::try_from(r.image_len).unwrap_or(usize::MAX);
            if bytes.try_reserve_exact(len).is_err() {
                problems[slot.index()] =
                    Some(format!("cannot allocate {} bytes to hold the image in memory", r.image_len));
                continue;
            }
            match self.check(r, Some(&mut bytes)) {
                Ok(()) => {
                    return Ok(BootImage {
                        slot,
                        generation: r.generation,
                        name: r.name.clone(),
                        algo: r.algo,
                        digest: r.digest,
                        bytes,
                        fell_back_from,
                    });
                }
                Err(problem) => {
                    problems[slot.index()] = Some(problem.clone());
                    fell_back_from =
                        Some(Fallback { slot, generation: r.generation, name: r.name.clone(), problem });
                }
            }
        }
        let slots = Slot::BOTH
            .map(|s| match (&records[s.index()], &problems[s.index()]) {
                (_, Some(p)) => format!("{s}: {p}"),
                (Err(SlotState::Empty), _) => format!("{s}: empty"),
                (Err(SlotState::BadRecord(why)), _) => format!("{s}: bad record: {why}"),
                _ => format!("{s}: not bootable"),
            })
            .join("; ");
        Err(DiskError::NothingBootable { path: self.path.clone(), slots })
    }

    /// Install `image` named `name` (checksummed with `algo`) into the slot that does not
    /// boot, in the order of [`slots::plan_install`]; the slot that boots now is never
    /// written. On success the new image is the one [`Target::boot`] returns.
    pub fn install(&mut self, image: &[u8], name: &str, algo: Algo) -> Result<Installed, DiskError> {
        let image_len = image.len() as u64;
        self.layout
            .check_image(image_len)
            .map_err(|source| DiskError::Layout { path: self.path.clone(), source })?;
        let digest = algo.digest(image);
        let valid = self.records().map(Result::ok);
        // Keep the slot that boots after verification (not merely the newest record): if the
        // newest is corrupt, the older verified one is the only good image and must survive.
        let keep = slots::boot_order(&valid)
            .into_iter()
            .find(|s| valid[s.index()].as_ref().is_some_and(|r| self.check(r, None).is_ok()));
        let plan =
            slots::plan_install(&self.layout, &valid, keep, image_len, algo, digest, name).map_err(|e| {
                match e {
                    slots::PlanError::Layout(source) => DiskError::Layout { path: self.path.clone(), source },
                    slots::PlanError::Record(source) => {
                        DiskError::Record { path: self.path.clone(), name: name.to_string(), source }
                    }
                }
            })?;
        for step in &plan.steps {
            match step {
                Step::WriteRecord { offset, bytes, .. } => self.write_at(*offset, bytes)?,
                Step::WriteImage { offset, .. } => {
                    for (i, chunk) in image.chunks(CHUNK).enumerate() {
                        self.write_at(offset + (i * CHUNK) as u64, chunk)?;
                    }
                }
                Step::Sync => self.file.sync_data().map_err(|source| DiskError::Io {
                    path: self.path.clone(),
                    what: "fsync".into(),
                    source,
                })?,
                Step::Verify { offset, len, algo, digest } => {
                    let got =
                        self.hash_range(*offset, *len, *algo, None).map_err(|source| DiskError::Io {
                            path: self.path.clone(),
                            what: format!("reading back {}", plan.slot),
                            source,
                        })?;
                    if got != *digest {
                        return Err(DiskError::ReadBack {
                            path: self.path.clone(),
                            slot: plan.slot,
                            problem: format!(
                                "{algo} {} instead of {}",
                                got.to_hex(*algo),
                                digest.to_hex(*algo)
                            ),
                        });
                    }
                }
            }
        }
        Ok(Installed { slot: plan.slot, generation: plan.generation, algo, digest })
    }

    /// `pwrite` the whole buffer, unless the fault-injection limit cuts it short.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), DiskError> {
        let io = |source| DiskError::Io { path: self.path.clone(), what: "writing".into(), source };
        if let Some(left) = self.write_limit {
            if (bytes.len() as u64) > left {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                self.file.write_all_at(&bytes[..n], offset).map_err(io)?;
                self.written += n as u64;
                self.write_limit = Some(0);
                return Err(DiskError::PowerCut { path: self.path.clone(), written: self.written });
            }
            self.write_limit = Some(left - bytes.len() as u64);
        }
        self.file.write_all_at(bytes, offset).map_err(io)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_limit_cuts_the_write_short_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Target::create_file(dir.path().join("t"), 4 << 20).unwrap();
        let image = vec![7u8; 100_000];
        // Invalidation sector + 1000 bytes of the image, then the cut.
        t.set_write_limit(Some(slots::SECTOR + 1000));
        let err = t.install(&image, "x", Algo::Crc32c).unwrap_err();
        assert!(matches!(err, DiskError::PowerCut { written, .. } if written == slots::SECTOR + 1000));
        assert_eq!(t.bytes_written(), slots::SECTOR + 1000);
        let mut probe = [0u8; 2];
        t.file.read_exact_at(&mut probe, t.layout.slot_offset(Slot::A) + 999).unwrap();
        assert_eq!(probe, [7, 0]);
        t.set_write_limit(None);
        assert!(matches!(t.boot(), Err(DiskError::NothingBootable { .. })));
        assert_eq!(t.install(&image, "x", Algo::Crc32c).unwrap().slot, Slot::A);
        assert_eq!(t.boot().unwrap().bytes, image);
    }
}
