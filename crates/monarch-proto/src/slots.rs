//! A/B slots on a disk target: the on-disk layout, the commit records and the install order.
//!
//! Network boot lets a machine with a disk install the delivered image and boot it from the disk.
//! The hard part is not writing bytes but surviving a power cut at any point of the write:
//! the machine must still boot *a* verified image — the previous one or the new one, never a
//! torn one. The classic answer, used here, is two slots (A and B) and a commit record per slot:
//!
//! ```text
//! offset 0        record A (one 4 KiB sector; only its first 512 bytes are meaningful)
//! offset 4 KiB    record B (its own sector, so writing one never tears the other)
//! ...             reserved up to HEADER_LEN (1 MiB: slot data stays 1 MiB-aligned)
//! HEADER_LEN      slot A data: slot_len bytes
//! + slot_len      slot B data: slot_len bytes
//! ```
//!
//! `slot_len` is derived from the target's size alone (half of what follows the header,
//! rounded down to a sector), so the offsets are fixed for a target and never depend on the
//! image. A record names its slot, a *generation* (bigger = newer), the image's length, name
//! and digest, and ends with a CRC-32C of itself; it is kept in the first 512 bytes of its
//! sector because 512 bytes is the smallest unit a disk writes atomically, so a record is
//! either the old bytes, the new bytes, or fails its CRC — never a plausible mixture.
//!
//! [`plan_install`] puts the writes in the only safe order (the record is the commit marker,
//! written last): invalidate the inactive slot's record, sync; write the image into the
//! inactive slot, sync; read it back and verify; write the new record, sync. The active slot
//! and its record are never touched. [`choose_boot`]/[`boot_order`] pick the newest valid
//! record, and the driver (`monarch_drivers::disk`) falls back to the other if the data does
//! not verify. Everything here is pure: the driver does the I/O, and the tests below crash
//! a simulated disk (with a volatile write cache that may drop or tear unsynced writes) at
//! every step of the plan.

use std::fmt;

use crate::checksum::{Algo, Digest};

/// Size of a record's sector and the alignment of slot data areas.
pub const SECTOR: u64 = 4096;
/// Bytes of a record that carry meaning (magic … CRC); the rest of its sector is zero.
/// 512 is the atomic write unit of every disk, so a torn record write fails the CRC.
pub const RECORD_LEN: usize = 512;
/// Size of the header area before slot A's data: two record sectors, the rest reserved.
/// 1 MiB keeps the data areas aligned the way partitioning tools align partitions.
pub const HEADER_LEN: u64 = 1 << 20;
/// The record magic: "MNRCSLOT".
pub const MAGIC: [u8; 8] = *b"MNRCSLOT";
/// Layout version written in every record; a reader rejects any other.
pub const VERSION: u32 = 1;
/// Longest image name a record holds, in UTF-8 bytes.
pub const MAX_NAME: usize = 128;

// Byte offsets inside a record.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_SLOT: usize = 12;
const OFF_GENERATION: usize = 16;
const OFF_DATA_OFFSET: usize = 24;
const OFF_IMAGE_LEN: usize = 32;
const OFF_ALGO: usize = 40;
const OFF_NAME_LEN: usize = 44;
const OFF_DIGEST: usize = 48;
const OFF_NAME: usize = 80;
const OFF_RESERVED: usize = OFF_NAME + MAX_NAME;
const OFF_CRC: usize = RECORD_LEN - 4;
// The sector is a fixed 4096 bytes; as usize for slicing.
const SECTOR_BYTES: usize = 4096;
const _: () = assert!(SECTOR_BYTES as u64 == SECTOR && OFF_RESERVED <= OFF_CRC);

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// The first slot (record at sector 0, data right after the header).
    A,
    /// The second slot (record at sector 1, data after slot A's).
    B,
}

impl Slot {
    /// Both slots, in on-disk order.
    pub const BOTH: [Slot; 2] = [Slot::A, Slot::B];

    /// 0 for A, 1 for B: the index into per-slot arrays and the code stored in a record.
    pub fn index(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// "A" or "B".
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    fn code(self) -> u32 {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    fn from_code(code: u32) -> Option<Slot> {
        match code {
            0 => Some(Slot::A),
            1 => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {}", self.name())
    }
}

/// Why a target cannot hold two slots of an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The target cannot even hold the header and two one-sector slots.
    #[error(
        "the target is {target_len} bytes, smaller than the {need} bytes the A/B layout needs \
         (a {HEADER_LEN}-byte header and two slots); use a bigger disk or file"
    )]
    TargetTooSmall {
        /// The target's size.
        target_len: u64,
        /// The smallest usable size.
        need: u64,
    },
    /// A slot of this target is smaller than the image.
    #[error(
        "the target is {target_len} bytes (slots of {slot_len} bytes): two slots of a {image_len}-byte image \
         need a target of at least {need} bytes; use a bigger disk or file"
    )]
    ImageTooBig {
        /// The image's length.
        image_len: u64,
        /// The target's size.
        target_len: u64,
        /// Each slot's size on this target.
        slot_len: u64,
        /// The smallest target that holds two slots of this image (`u64::MAX` if none can).
        need: u64,
    },
    /// An empty image: there is nothing to boot.
    #[error("the image is empty: there is nothing to install; check the image source")]
    EmptyImage,
}

/// Where the records and the two slots of a target are: derived from its size alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    target_len: u64,
    slot_len: u64,
}

impl Layout {
    /// The layout of a target of `target_len` bytes.
    pub fn for_target(target_len: u64) -> Result<Layout, LayoutError> {
        let need = HEADER_LEN + 2 * SECTOR;
        if target_len < need {
            return Err(LayoutError::TargetTooSmall { target_len, need });
        }
        let slot_len = (target_len - HEADER_LEN) / 2 / SECTOR * SECTOR;
        Ok(Layout { target_len, slot_len })
    }

    /// The smallest target that holds two slots of an `image_len`-byte image; `None` if the
    /// sum does not fit in a u64.
    pub fn min_target_len(image_len: u64) -> Option<u64> {
        let slot = image_len.max(1).checked_next_multiple_of(SECTOR)?;
        slot.checked_mul(2)?.checked_add(HEADER_LEN)
    }

    /// The target's size.
    pub fn target_len(&self) -> u64 {
        self.target_len
    }

    /// Each slot's data area size: the largest image this target holds.
    pub fn slot_len(&self) -> u64 {
        self.slot_len
    }

    /// Byte offset of `slot`'s record sector.
    pub fn record_offset(&self, slot: Slot) -> u64 {
        slot.index() as u64 * SECTOR
    }

    /// Byte offset of `slot`'s data area.
    pub fn slot_offset(&self, slot: Slot) -> u64 {
        HEADER_LEN + slot.index() as u64 * self.slot_len
    }

    /// Whether an `image_len`-byte image fits in a slot; the error says how big the target
    /// must be.
    pub fn check_image(&self, image_len: u64) -> Result<(), LayoutError> {
        if image_len == 0 {
            return Err(LayoutError::EmptyImage);
        }
        if image_len > self.slot_len {
            return Err(LayoutError::ImageTooBig {
                image_len,
                target_len: self.target_len,
                slot_len: self.slot_len,
                need: Layout::min_target_len(image_len).unwrap_or(u64::MAX),
            });
        }
        Ok(())
    }
}

/// Why a record sector does not hold a valid commit record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// All zeros: never written, or invalidated by an install that did not finish.
    #[error("no image committed (empty record)")]
    Empty,
    /// Not a whole sector.
    #[error("the record is {len} bytes, not a {SECTOR}-byte sector")]
    Truncated {
        /// Bytes given.
        len: usize,
    },
    /// Not a monarch slot record at all.
    #[error(
        "no monarch slot record here (bad magic): the target was never installed by monarch \
         or was overwritten"
    )]
    BadMagic,
    /// Written by another layout version.
    #[error(
        "record layout version {0}, this monarch reads version {VERSION}: install with a matching monarch"
    )]
    Version(u32),
    /// The CRC does not match: a torn or corrupted record.
    #[error("record CRC mismatch (stored {stored:08x}, computed {computed:08x}): torn write or corruption")]
    Crc {
        /// CRC stored in the record.
        stored: u32,
        /// CRC of the record's bytes.
        computed: u32,
    },
    /// Non-zero bytes where the layout has zeros.
    #[error("non-zero bytes in the record's reserved area at offset {0}")]
    Padding(usize),
    /// The slot code is neither A nor B.
    #[error("unknown slot code {0} in the record")]
    SlotCode(u32),
    /// The record sits in one slot's sector but names the other.
    #[error("the record in {stored_in}'s sector claims {claims}")]
    WrongSlot {
        /// Where it was read from.
        stored_in: Slot,
        /// What it says.
        claims: Slot,
    },
    /// Generation 0 and `u64::MAX` are never written (0 = nothing, MAX would not leave room for a newer one).
    #[error("impossible generation {0} in the record")]
    Generation(u64),
    /// The checksum algorithm code is unknown.
    #[error("unknown checksum algorithm code {0} in the record")]
    Algo(u32),
    /// The digest has bytes beyond its algorithm's length.
    #[error("digest bytes beyond the {0} digest's length are not zero")]
    DigestPadding(Algo),
    /// The name is too long to store.
    #[error("image name of {0} bytes is longer than the {MAX_NAME} bytes a record holds: use a shorter name")]
    NameTooLong(usize),
    /// The name is not UTF-8.
    #[error("the image name in the record is not UTF-8")]
    NameNotUtf8,
    /// The data offset is not where this target's layout puts the slot (e.g. a resized target).
    #[error(
        "the record's data offset {found} is not {slot}'s offset {expected} on this target (was it resized?)"
    )]
    Offset {
        /// The record's slot.
        slot: Slot,
        /// Where the layout puts the slot.
        expected: u64,
        /// What the record says.
        found: u64,
    },
    /// The image length is 0 or larger than the slot.
    #[error("image length {image_len} does not fit the {slot_len}-byte slot")]
    Length {
        /// What the record says.
        image_len: u64,
        /// The slot's size on this target.
        slot_len: u64,
    },
}

/// A commit record: what the slot holds and how to verify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The slot the record describes (and whose sector it lives in).
    pub slot: Slot,
    /// Install counter: the newest valid record boots.
    pub generation: u64,
    /// Byte offset of the slot's data on the target (fixed by the layout; stored so a
    /// resized target is detected instead of read at the wrong place).
    pub data_offset: u64,
    /// The image's length in bytes.
    pub image_len: u64,
    /// Checksum algorithm of `digest`.
    pub algo: Algo,
    /// Digest of the image's `image_len` bytes.
    pub digest: Digest,
    /// The image's name, for people (at most [`MAX_NAME`] UTF-8 bytes).
    pub name: String,
}

impl Record {
    /// Check the record against itself and the target's layout: what [`Record::decode`]
    /// checks after the CRC, and what [`Record::encode`] refuses to write.
    pub fn validate(&self, layout: &Layout) -> Result<(), RecordError> {
        if self.generation == 0 || self.generation == u64::MAX {
            return Err(RecordError::Generation(self.generation));
        }
        if self.digest.0[self.algo.digest_len()..].iter().any(|b| *b != 0) {
            return Err(RecordError::DigestPadding(self.algo));
        }
        if self.name.len() > MAX_NAME {
            return Err(RecordError::NameTooLong(self.name.len()));
        }
        let expected = layout.slot_offset(self.slot);
        if self.data_offset != expected {
            return Err(RecordError::Offset { slot: self.slot, expected, found: self.data_offset });
        }
        if self.image_len == 0 || self.image_len > layout.slot_len() {
            return Err(RecordError::Length { image_len: self.image_len, slot_len: layout.slot_len() });
        }
        Ok(())
    }

    /// The record's sector: [`SECTOR`] bytes, zero after the first [`RECORD_LEN`].
    pub fn encode(&self, layout: &Layout) -> Result<Vec<u8>, RecordError> {
        self.validate(layout)?;
        let mut s = vec![0u8; SECTOR_BYTES];
        s[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&MAGIC);
        put_u32(&mut s, OFF_VERSION, VERSION);
        put_u32(&mut s, OFF_SLOT, self.slot.code());
        put_u64(&mut s, OFF_GENERATION, self.generation);
        put_u64(&mut s, OFF_DATA_OFFSET, self.data_offset);
        put_u64(&mut s, OFF_IMAGE_LEN, self.image_len);
        put_u32(&mut s, OFF_ALGO, self.algo.code());
        // validate() bounded the name to MAX_NAME bytes.
        put_u32(&mut s, OFF_NAME_LEN, u32::try_from(self.name.len()).unwrap_or(u32::MAX));
        s[OFF_DIGEST..OFF_DIGEST + 32].copy_from_slice(&self.digest.0);
        s[OFF_NAME..OFF_NAME + self.name.len()].copy_from_slice(self.name.as_bytes());
        let crc = crc32c::crc32c(&s[..OFF_CRC]);
        put_u32(&mut s, OFF_CRC, crc);
        Ok(s)
    }

    /// Read the record in `slot`'s sector. Never panics; rejects anything that is not
    /// exactly what [`Record::encode`] writes for this layout.
    pub fn decode(sector: &[u8], slot: Slot, layout: &Layout) -> Result<Record, RecordError> {
        if sector.len() != SECTOR_BYTES {
            return Err(RecordError::Truncated { len: sector.len() });
        }
        if sector.iter().all(|b| *b == 0) {
            return Err(RecordError::Empty);
        }
        if sector[OFF_MAGIC..OFF_MAGIC + 8] != MAGIC {
            return Err(RecordError::BadMagic);
        }
        let version = get_u32(sector, OFF_VERSION);
        if version != VERSION {
            return Err(RecordError::Version(version));
        }
        let stored = get_u32(sector, OFF_CRC);
        let computed = crc32c::crc32c(&sector[..OFF_CRC]);
        if stored != computed {
            return Err(RecordError::Crc { stored, computed });
        }
        if let Some(p) = sector[OFF_RESERVED..OFF_CRC].iter().position(|b| *b != 0) {
            return Err(RecordError::Padding(OFF_RESERVED + p));
        }
        if let Some(p) = sector[RECORD_LEN..].iter().position(|b| *b != 0) {
            return Err(RecordError::Padding(RECORD_LEN + p));
        }
        let code = get_u32(sector, OFF_SLOT);
        let claims = Slot::from_code(code).ok_or(RecordError::SlotCode(code))?;
        if claims != slot {
            return Err(RecordError::WrongSlot { stored_in: slot, claims });
        }
        let algo_code = get_u32(sector, OFF_ALGO);
        let algo = Algo::from_code(algo_code).ok_or(RecordError::Algo(algo_code))?;
        let name_len = get_u32(sector, OFF_NAME_LEN) as usize;
        if name_len > MAX_NAME {
            return Err(RecordError::NameTooLong(name_len));
        }
        if let Some(p) = sector[OFF_NAME + name_len..OFF_RESERVED].iter().position(|b| *b != 0) {
            return Err(RecordError::Padding(OFF_NAME + name_len + p));
        }
        let name = std::str::from_utf8(&sector[OFF_NAME..OFF_NAME + name_len])
            .map_err(|_| RecordError::NameNotUtf8)?
            .to_string();
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&sector[OFF_DIGEST..OFF_DIGEST + 32]);
        let record = Record {
            slot,
            generation: get_u64(sector, OFF_GENERATION),
            data_offset: get_u64(sector, OFF_DATA_OFFSET),
            image_len: get_u64(sector, OFF_IMAGE_LEN),
            algo,
            digest: Digest(digest),
            name,
        };
        record.validate(layout)?;
        Ok(record)
    }
}

fn put_u32(s: &mut [u8], at: usize, v: u32) {
    s[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(s: &mut [u8], at: usize, v: u64) {
    s[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

// Callers pass offsets that are constants inside a SECTOR_BYTES-long slice.
fn get_u32(s: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&s[at..at + 4]);
    u32::from_le_bytes(b)
}

fn get_u64(s: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The slots with a valid record, newest (highest generation) first. Two records with the
/// same generation never come from [`plan_install`]; if corruption makes them, A goes first
/// so the order is still deterministic.
pub fn boot_order(records: &[Option<Record>; 2]) -> Vec<Slot> {
    let mut valid: Vec<&Record> = records.iter().flatten().collect();
    valid.sort_by_key(|r| (std::cmp::Reverse(r.generation), r.slot));
    valid.into_iter().map(|r| r.slot).collect()
}

/// The slot to boot: the valid record with the highest generation (the driver still
/// verifies its data and falls back to the next in [`boot_order`] if it does not verify).
pub fn choose_boot(records: &[Option<Record>; 2]) -> Option<Slot> {
    boot_order(records).first().copied()
}

/// Where the next install goes: the slot that does not boot, with a generation above every
/// valid record's. On a blank target: slot A, generation 1.
pub fn next_install(records: &[Option<Record>; 2]) -> (Slot, u64) {
    let slot = choose_boot(records).map_or(Slot::A, Slot::other);
    (slot, next_generation(records))
}

/// Like [`next_install`], but keeping `keep` (the slot that actually boots after
/// verification, which is not the newest record when the newest one's data is corrupt).
pub fn next_install_keeping(records: &[Option<Record>; 2], keep: Slot) -> (Slot, u64) {
    (keep.other(), next_generation(records))
}

fn next_generation(records: &[Option<Record>; 2]) -> u64 {
    // Decoded records never hold u64::MAX, so this does not overflow; saturate anyway.
    records.iter().flatten().map(|r| r.generation).max().unwrap_or(0).saturating_add(1)
}

/// One step of an install, carried out in order by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write `bytes` (one whole sector) at `offset`: `slot`'s record sector. All zeros
    /// invalidates the slot; a record commits it.
    WriteRecord {
        /// The slot whose record this is.
        slot: Slot,
        /// Byte offset of the sector.
        offset: u64,
        /// The sector's bytes ([`SECTOR`] of them).
        bytes: Vec<u8>,
    },
    /// Write the whole image at `offset` (the slot's data area).
    WriteImage {
        /// Byte offset of the slot's data.
        offset: u64,
        /// The image's length.
        len: u64,
    },
    /// A barrier: everything written so far must be on stable storage (fsync) before the
    /// next step starts.
    Sync,
    /// Read back `len` bytes at `offset` and check them against `digest`; on a mismatch the
    /// install stops before committing.
    Verify {
        /// Byte offset of the slot's data.
        offset: u64,
        /// The image's length.
        len: u64,
        /// The algorithm of `digest`.
        algo: Algo,
        /// The image's digest.
        digest: Digest,
    },
}

/// An install: where it goes, the record that will commit it, and the steps in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPlan {
    /// The slot being written (never the one that boots now).
    pub slot: Slot,
    /// The new record's generation.
    pub generation: u64,
    /// The commit record written by the last [`Step::WriteRecord`].
    pub record: Record,
    /// The steps, in the order that keeps the previous image bootable throughout.
    pub steps: Vec<Step>,
}

/// Why an install cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The image does not fit.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The record cannot be written (e.g. the name is too long).
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Plan installing an `image_len`-byte image with `digest` (by `algo`) named `name`.
/// `records` are the target's valid records; `keep` is the slot that boots after
/// verification (`None` if none does), which the install never touches.
pub fn plan_install(
    layout: &Layout,
    records: &[Option<Record>; 2],
    keep: Option<Slot>,
    image_len: u64,
    algo: Algo,
    digest: Digest,
    name: &str,
) -> Result<InstallPlan, PlanError> {
    layout.check_image(image_len)?;
    let (slot, generation) = match keep {
        Some(k) => next_install_keeping(records, k),
        None => next_install(records),
    };
    let record = Record {
        slot,
        generation,
        data_offset: layout.slot_offset(slot),
        image_len,
        algo,
        digest,
        name: name.to_string(),
    };
    let commit = record.encode(layout)?;
    let record_offset = layout.record_offset(slot);
    let data_offset = layout.slot_offset(slot);
    let steps = vec![
        // 1. From here on the inactive slot is not bootable, so a torn image in it can
        //    never be chosen, even by a fallback.
        Step::WriteRecord { slot, offset: record_offset, bytes: vec![0; SECTOR_BYTES] },
        Step::Sync,
        // 2. The image; the barrier makes it durable before anything can commit it.
        Step::WriteImage { offset: data_offset, len: image_len },
        Step::Sync,
        Step::Verify { offset: data_offset, len: image_len, algo, digest },
        // 3. The commit marker, last.
        Step::WriteRecord { slot, offset: record_offset, bytes: commit },
        Step::Sync,
    ];
    Ok(InstallPlan { slot, generation, record, steps })
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // the simulated disk indexes a small Vec by u64 offsets
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TARGET: u64 = HEADER_LEN + 2 * 64 * 1024;

    fn layout() -> Layout {
        Layout::for_target(TARGET).unwrap()
    }

    fn record(slot: Slot, generation: u64, image: &[u8], algo: Algo, name: &str) -> Record {
        let l = layout();
        Record {
            slot,
            generation,
            data_offset: l.slot_offset(slot),
            image_len: image.len() as u64,
            algo,
            digest: algo.digest(image),
            name: name.into(),
        }
    }

    #[test]
    fn layout_offsets() {
        let l = Layout::for_target(HEADER_LEN + 10 * SECTOR + 123).unwrap();
        assert_eq!(l.slot_len(), 5 * SECTOR);
        assert_eq!(l.record_offset(Slot::A), 0);
        assert_eq!(l.record_offset(Slot::B), SECTOR);
        assert_eq!(l.slot_offset(Slot::A), HEADER_LEN);
        assert_eq!(l.slot_offset(Slot::B), HEADER_LEN + 5 * SECTOR);
        assert!(l.slot_offset(Slot::B) + l.slot_len() <= l.target_len());
        assert!(matches!(Layout::for_target(HEADER_LEN), Err(LayoutError::TargetTooSmall { .. })));
        assert_eq!(l.check_image(5 * SECTOR), Ok(()));
        let err = l.check_image(5 * SECTOR + 1).unwrap_err();
        assert_eq!(
            err,
            LayoutError::ImageTooBig {
                image_len: 5 * SECTOR + 1,
                target_len: l.target_len(),
                slot_len: 5 * SECTOR,
                need: HEADER_LEN + 12 * SECTOR
            }
        );
        assert!(err.to_string().contains("at least 1097728 bytes"), "{err}");
        assert_eq!(l.check_image(0), Err(LayoutError::EmptyImage));
        assert_eq!(Layout::min_target_len(u64::MAX), None);
        // The minimum target really holds the image.
        let need = Layout::min_target_len(5 * SECTOR + 1).unwrap();
        assert_eq!(Layout::for_target(need).unwrap().check_image(5 * SECTOR + 1), Ok(()));
    }

    #[test]
    fn round_trip_and_layout_of_a_record() {
        let l = layout();
        let r = record(Slot::B, 7, b"kernel", Algo::Blake3, "debian-13");
        let s = r.encode(&l).unwrap();
        assert_eq!(s.len(), SECTOR_BYTES);
        assert_eq!(&s[..8], b"MNRCSLOT");
        assert!(s[RECORD_LEN..].iter().all(|b| *b == 0));
        assert_eq!(Record::decode(&s, Slot::B, &l), Ok(r));
    }

    #[test]
    fn decode_rejects_what_is_inconsistent() {
        let l = layout();
        let good = record(Slot::A, 3, b"image", Algo::Crc32c, "img");
        let enc = |r: &Record| {
            // Encode bypassing validation, to craft inconsistent-but-CRC-correct records.
            let mut s = Record { generation: 1, ..good.clone() }.encode(&l).unwrap();
            s[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&MAGIC);
            put_u32(&mut s, OFF_SLOT, r.slot.code());
            put_u64(&mut s, OFF_GENERATION, r.generation);
            put_u64(&mut s, OFF_DATA_OFFSET, r.data_offset);
            put_u64(&mut s, OFF_IMAGE_LEN, r.image_len);
            s[OFF_DIGEST..OFF_DIGEST + 32].copy_from_slice(&r.digest.0);
            let crc = crc32c::crc32c(&s[..OFF_CRC]);
            put_u32(&mut s, OFF_CRC, crc);
            s
        };
        let reseal = |s: &mut Vec<u8>| {
            let crc = crc32c::crc32c(&s[..OFF_CRC]);
            put_u32(s, OFF_CRC, crc);
        };
        assert_eq!(Record::decode(&enc(&good), Slot::A, &l), Ok(good.clone()));
        assert_eq!(Record::decode(&[0; SECTOR_BYTES], Slot::A, &l), Err(RecordError::Empty));
        assert_eq!(Record::decode(&[0; 100], Slot::A, &l), Err(RecordError::Truncated { len: 100 }));
        assert_eq!(Record::decode(&[0xff; SECTOR_BYTES], Slot::A, &l), Err(RecordError::BadMagic));
        assert!(matches!(
            Record::decode(&enc(&good), Slot::B, &l),
            Err(RecordError::WrongSlot { stored_in: Slot::B, claims: Slot::A })
        ));
        for g in [0, u64::MAX] {
            let r = Record { generation: g, ..good.clone() };
            assert_eq!(Record::decode(&enc(&r), Slot::A, &l), Err(RecordError::Generation(g)));
        }
        let r = Record { data_offset: l.slot_offset(Slot::B), ..good.clone() };
        assert!(matches!(Record::decode(&enc(&r), Slot::A, &l), Err(RecordError::Offset { .. })));
        for len in [0, l.slot_len() + 1, u64::MAX] {
            let r = Record { image_len: len, ..good.clone() };
            assert!(matches!(Record::decode(&enc(&r), Slot::A, &l), Err(RecordError::Length { .. })));
        }
        let mut d = good.digest;
        d.0[4] = 1; // beyond a CRC-32C's 4 bytes
        let r = Record { digest: d, ..good.clone() };
        assert_eq!(Record::decode(&enc(&r), Slot::A, &l), Err(RecordError::DigestPadding(Algo::Crc32c)));
        // Fields only reachable by hand.
        let mut s = enc(&good);
        put_u32(&mut s, OFF_VERSION, 2);
        assert_eq!(Record::decode(&s, Slot::A, &l), Err(RecordError::Version(2)));
        let mut s = enc(&good);
        put_u32(&mut s, OFF_SLOT, 9);
        reseal(&mut s);
        assert_eq!(Record::decode(&s, Slot::A, &l), Err(RecordError::SlotCode(9)));
        let mut s = enc(&good);
        put_u32(&mut s, OFF_ALGO, 0);
        reseal(&mut s);
        assert_eq!(Record::decode(&s, Slot::A, &l), Err(RecordError::Algo(0)));
        let mut s = enc(&good);
        put_u32(&mut s, OFF_NAME_LEN, u32::MAX);
        reseal(&mut s);
        assert_eq!(Record::decode(&s, Slot::A, &l), Err(RecordError::NameTooLong(u32::MAX as usize)));
        let mut s = enc(&good);
        s[OFF_NAME] = 0xff;
        reseal(&mut s);
        assert_eq!(Record::decode(&s, Slot::A, &l), Err(RecordError::NameNotUtf8));
        let mut s = enc(&good);
        s[OFF_NAME + 10] = b'x'; // after the 3-byte name
        reseal(&mut s);
        assert_eq!(Record::decode(&s, Slot::A, &l), Err(RecordError::Padding(OFF_NAME + 10)));
        let mut s = enc(&good);
        s[OFF_RESERVED] = 1;
        reseal(&mut s);
        assert_eq!(Record::decode(&s, Slot::A, &l), Err(RecordError::Padding(OFF_RESERVED)));
        let mut s = enc(&good);
        s[SECTOR_BYTES - 1] = 1;
        assert_eq!(Record::decode(&s, Slot::A, &l), Err(RecordError::Padding(SECTOR_BYTES - 1)));
        // encode refuses too long a name and says how long it may be.
        let r = Record { name: "x".repeat(MAX_NAME + 1), ..good.clone() };
        let err = r.encode(&l).unwrap_err();
        assert_eq!(err, RecordError::NameTooLong(MAX_NAME + 1));
        assert!(err.to_string().contains("use a shorter name"));
        let r = Record { name: "é".repeat(MAX_NAME / 2), ..good };
        assert_eq!(Record::decode(&r.encode(&l).unwrap(), Slot::A, &l), Ok(r));
    }

    #[test]
    fn choosing_slots() {
        let a = |g| Some(record(Slot::A, g, b"a", Algo::Xxh3, "a"));
        let b = |g| Some(record(Slot::B, g, b"b", Algo::Xxh3, "b"));
        assert_eq!(choose_boot(&[None, None]), None);
        assert_eq!(next_install(&[None, None]), (Slot::A, 1));
        assert_eq!(choose_boot(&[a(1), None]), Some(Slot::A));
        assert_eq!(next_install(&[a(1), None]), (Slot::B, 2));
        assert_eq!(choose_boot(&[a(1), b(2)]), Some(Slot::B));
        assert_eq!(next_install(&[a(1), b(2)]), (Slot::A, 3));
        assert_eq!(boot_order(&[a(1), b(2)]), vec![Slot::B, Slot::A]);
        assert_eq!(boot_order(&[a(9), b(2)]), vec![Slot::A, Slot::B]);
        assert_eq!(boot_order(&[a(4), b(4)]), vec![Slot::A, Slot::B]);
        assert_eq!(next_install(&[None, b(5)]), (Slot::A, 6));
        // The newest (B) is corrupt and A boots: keep A, install into B above B's generation.
        assert_eq!(next_install_keeping(&[a(4), b(5)], Slot::A), (Slot::B, 6));
    }

    #[test]
    fn plan_writes_the_commit_record_last_and_never_touches_the_active_slot() {
        let l = layout();
        let old = record(Slot::A, 4, b"old", Algo::Blake3, "old");
        let records = [Some(old), None];
        let d = Algo::Blake3.digest(b"new image");
        let p = plan_install(&l, &records, Some(Slot::A), 9, Algo::Blake3, d, "new").unwrap();
        assert_eq!((p.slot, p.generation), (Slot::B, 5));
        let rb = l.record_offset(Slot::B);
        let db = l.slot_offset(Slot::B);
        assert_eq!(p.steps.len(), 7);
        assert!(matches!(&p.steps[0], Step::WriteRecord { slot: Slot::B, offset, bytes }
                if *offset == rb && bytes.iter().all(|b| *b == 0)));
        assert_eq!(p.steps[1], Step::Sync);
        assert_eq!(p.steps[2], Step::WriteImage { offset: db, len: 9 });
        assert_eq!(p.steps[3], Step::Sync);
        assert!(matches!(p.steps[4], Step::Verify { offset, len: 9, .. } if offset == db));
        assert!(matches!(&p.steps[5], Step::WriteRecord { slot: Slot::B, offset, bytes }
                if *offset == rb && Record::decode(bytes, Slot::B, &l).as_ref() == Ok(&p.record)));
        assert_eq!(p.steps[6], Step::Sync);
        assert!(matches!(
            plan_install(&l, &records, Some(Slot::A), l.slot_len() + 1, Algo::Blake3, d, "x"),
            Err(PlanError::Layout(LayoutError::ImageTooBig { .. }))
        ));
        assert!(matches!(
            plan_install(&l, &records, Some(Slot::A), 9, Algo::Blake3, d, &"n".repeat(200)),
            Err(PlanError::Record(RecordError::NameTooLong(200)))
        ));
    }

    /// A disk with a volatile write cache: writes since the last sync may reach the media
    /// in any order, partly (in 512-byte units), or not at all when the power goes.
    struct SimDisk {
        media: Vec<u8>,
        cache: Vec<(u64, Vec<u8>)>,
    }

    impl SimDisk {
        fn read(&self, off: u64, len: u64) -> Vec<u8> {
            let mut out = self.media[off as usize..(off + len) as usize].to_vec();
            for (o, b) in &self.cache {
                for (i, byte) in b.iter().enumerate() {
                    let p = *o as usize + i;
                    if p >= off as usize && p < (off + len) as usize {
                        out[p - off as usize] = *byte;
                    }
                }
            }
            out
        }

        fn write(&mut self, off: u64, bytes: &[u8]) {
            // Split into 512-byte units so each can be lost or kept independently.
            for (i, c) in bytes.chunks(512).enumerate() {
                self.cache.push((off + (i * 512) as u64, c.to_vec()));
            }
        }

        fn sync(&mut self) {
            for (o, b) in std::mem::take(&mut self.cache) {
                self.media[o as usize..o as usize + b.len()].copy_from_slice(&b);
            }
        }

        /// The power goes: each cached unit reaches the media or not, per `keep`, in an
        /// order given by `order` (later units win where they overlap).
        fn power_cut(&mut self, keep: &[bool], order_seed: u64) {
            let mut units = std::mem::take(&mut self.cache);
            let n = units.len();
            if n > 1 {
                units.rotate_left((order_seed as usize) % n);
            }
            for (i, (o, b)) in units.into_iter().enumerate() {
                if keep.get(i).copied().unwrap_or(i % 2 == 0) {
                    self.media[o as usize..o as usize + b.len()].copy_from_slice(&b);
                }
            }
        }

        /// What the driver's boot does: newest valid record whose data verifies; and
        /// whether it had to fall back from a newer record whose data did not.
        fn boot(&self, l: &Layout) -> Option<(Vec<u8>, bool)> {
            let records =
                Slot::BOTH.map(|s| Record::decode(&self.read(l.record_offset(s), SECTOR), s, l).ok());
            boot_order(&records).into_iter().enumerate().find_map(|(i, s)| {
                let r = records[s.index()].as_ref()?;
                let data = self.read(r.data_offset, r.image_len);
                (r.algo.digest(&data) == r.digest).then_some((data, i > 0))
            })
        }

        /// Run `plan` with the image, stopping dead after `stop` steps (`stop` = steps.len()
        /// = completed), the last started write torn after `torn` bytes.
        fn run(&mut self, plan: &InstallPlan, image: &[u8], stop: usize, torn: usize) {
            for (i, step) in plan.steps.iter().enumerate() {
                let last = i == stop;
                if i > stop {
                    return;
                }
                match step {
                    Step::WriteRecord { offset, bytes, .. } => {
                        self.write(*offset, if last { &bytes[..torn.min(bytes.len())] } else { bytes })
                    }
                    Step::WriteImage { offset, .. } => {
                        self.write(*offset, if last { &image[..torn.min(image.len())] } else { image })
                    }
                    Step::Sync if !last => self.sync(),
                    Step::Sync => {}
                    Step::Verify { offset, len, algo, digest } => {
                        assert_eq!(algo.digest(&self.read(*offset, *len)), *digest, "verify failed");
                    }
                }
                if last {
                    return;
                }
            }
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..5000),
            slot in any::<bool>(),
        ) {
            let slot = if slot { Slot::B } else { Slot::A };
            let _ = Record::decode(&bytes, slot, &layout());
        }

        #[test]
        fn decode_never_panics_on_a_sealed_sector(
            mut head in proptest::collection::vec(any::<u8>(), OFF_CRC),
        ) {
            // Random fields behind a right magic, version and CRC reach every later check.
            head[..8].copy_from_slice(&MAGIC);
            head[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
            let mut s = head.clone();
            s.resize(SECTOR_BYTES, 0);
            let crc = crc32c::crc32c(&s[..OFF_CRC]);
            put_u32(&mut s, OFF_CRC, crc);
            if let Ok(r) = Record::decode(&s, Slot::A, &layout()) {
                prop_assert_eq!(r.encode(&layout()).unwrap(), s);
            }
        }

        #[test]
        fn records_round_trip(
            slot in any::<bool>(),
            generation in 1u64..u64::MAX,
            len in 1u64..=64 * 1024,
                              algo in 0usize..3, name in "\\PC{0,40}", digest in any::<[u8; 32]>()) {
            let l = layout();
            let slot = if slot { Slot::B } else { Slot::A };
            let algo = Algo::ALL[algo];
            let mut digest = digest;
            digest[algo.digest_len()..].fill(0);
            let mut bytes = 0;
            let name: String = name
                .chars()
                .take_while(|c| {
                    bytes += c.len_utf8();
                    bytes <= MAX_NAME
                })
                .collect();
            let r = Record {
                slot,
                generation,
                data_offset: l.slot_offset(slot),
                image_len: len.min(l.slot_len()),
                algo,
                digest: Digest(digest),
                name,
            };
            let s = r.encode(&l).unwrap();
            prop_assert_eq!(Record::decode(&s, slot, &l), Ok(r));
        }

        #[test]
        fn any_changed_byte_is_rejected(at in 0usize..SECTOR_BYTES, x in 1u8..=255) {
            let l = layout();
            let mut s = record(Slot::A, 12, b"some image", Algo::Blake3, "name").encode(&l).unwrap();
            s[at] ^= x;
            prop_assert!(Record::decode(&s, Slot::A, &l).is_err());
        }

        #[test]
        fn boot_picks_the_newest_and_install_goes_elsewhere(
            ga in proptest::option::of(1u64..1000),
            gb in proptest::option::of(1u64..1000),
        ) {
            let records = [
                ga.map(|g| record(Slot::A, g, b"a", Algo::Crc32c, "a")),
                gb.map(|g| record(Slot::B, g, b"b", Algo::Crc32c, "b")),
            ];
            let newest = records.iter().flatten().map(|r| r.generation).max();
            let boot = choose_boot(&records);
            let booted_generation = boot.map(|s| records[s.index()].as_ref().map(|r| r.generation));
            prop_assert_eq!(booted_generation, newest.map(Some));
            let (slot, generation) = next_install(&records);
            prop_assert_eq!(generation, newest.unwrap_or(0) + 1);
            if let Some(b) = boot { prop_assert_ne!(slot, b); }
        }

        /// The whole point: install NEW over OLD on a disk with a volatile cache, lose power
        /// after any step with any part of the unsynced writes lost, torn or reordered: the
        /// disk boots exactly OLD or exactly NEW, and NEW once the plan completed.
        #[test]
        fn a_power_cut_anywhere_boots_old_or_new(
            old in proptest::collection::vec(any::<u8>(), 1..9000),
            new in proptest::collection::vec(any::<u8>(), 1..9000),
            old_in_b in any::<bool>(),
            stop in 0usize..8,
            torn in 0usize..10_000,
            keep in proptest::collection::vec(any::<bool>(), 0..40),
            order in any::<u64>(),
            algo in 0usize..3,
        ) {
            let l = layout();
            let algo = Algo::ALL[algo];
            let mut disk = SimDisk { media: vec![0; TARGET as usize], cache: vec![] };
            // Install OLD (completely) first, into A or B.
            let start =
                if old_in_b { [Some(record(Slot::A, 1, b"x", algo, "x")), None] } else { [None, None] };
            let keep_first = start[0].as_ref().map(|r| r.slot);
            let p = plan_install(&l, &start, keep_first, old.len() as u64, algo, algo.digest(&old), "old")
                .unwrap();
            disk.run(&p, &old, p.steps.len(), 0);
            disk.sync();
            prop_assert_eq!(disk.boot(&l), Some((old.clone(), false)));
            let records =
                Slot::BOTH.map(|s| Record::decode(&disk.read(l.record_offset(s), SECTOR), s, &l).ok());
            let p = plan_install(&l, &records, Some(p.slot), new.len() as u64, algo, algo.digest(&new), "new")
                .unwrap();
            disk.run(&p, &new, stop, torn);
            disk.power_cut(&keep, order);
            let (booted, fell_back) = disk.boot(&l).expect("nothing boots");
            prop_assert!(booted == old || booted == new, "booted neither OLD nor NEW");
            // The order alone keeps the newest record's data whole: the digest check is a
            // second line of defence, never needed after a power cut.
            prop_assert!(!fell_back, "the newest record's data did not verify");
            if stop >= p.steps.len() {
                prop_assert_eq!(booted, new);
            }
        }
    }
}
