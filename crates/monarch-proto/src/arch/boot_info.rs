//! A cluster's boot info: the fixed-size block ([`BOOT_INFO_SIZE`] bytes) the boot writes in
//! each cluster's boot-info zone, and every core of the cluster reads before it runs: which
//! cluster it is in, its index among the cluster's tested cores, how many there are, and the
//! memory the kernel may use. Only hardware that passed its self-test is in it; what was
//! left out is listed, with why.
//!
//! The block is one `#[repr(C)]` struct of byte-aligned little-endian fields, read in place
//! by [`BootInfoView`]; `docs/arch-info.md` lays it out byte by byte.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::{ArchError, Why};
use super::model::DeviceKind;

/// Size of a boot info block.
pub const BOOT_INFO_SIZE: usize = 4096;
/// The first 8 bytes of a boot info.
pub const BOOT_INFO_MAGIC: [u8; 8] = *b"MNBOOTI\0";
/// The major version of the boot info layout written and read.
pub const BOOT_INFO_MAJOR: u16 = 1;
/// The minor version written (a newer minor only adds what a reader may ignore).
pub const BOOT_INFO_MINOR: u16 = 0;
/// Size of the boot info's header.
pub const BOOT_INFO_HEADER_SIZE: usize = 80;
/// Byte offset of the CRC-32C field.
pub const BOOT_INFO_CRC_OFFSET: usize = 20;
/// The most tested cores a boot info lists.
pub const MAX_BOOT_CORES: usize = 64;
/// The most tested devices a boot info lists.
pub const MAX_BOOT_DEVICES: usize = 32;
/// The most excluded parts a boot info lists (clusters of the machine, and the cluster's
/// own cores, banks and devices).
pub const MAX_BOOT_EXCLUDED: usize = 256;
const WHAT: &str = "boot info";

/// The boot info's header (80 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BootInfoHeader {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: [u8; 8],
    /// [`BOOT_INFO_MAJOR`].
    pub major: U16,
    /// Minor version.
    pub minor: U16,
    /// [`BOOT_INFO_HEADER_SIZE`].
    pub header_size: U16,
    /// Zero.
    pub reserved: [u8; 2],
    /// [`BOOT_INFO_SIZE`].
    pub total_size: U32,
    /// CRC-32C of the whole block, computed with this field zero.
    pub crc: U32,
    /// This cluster's id.
    pub cluster: U16,
    /// This cluster's column.
    pub x: u8,
    /// This cluster's row.
    pub y: u8,
    /// Mesh width.
    pub x_size: u8,
    /// Mesh height.
    pub y_size: u8,
    /// How many clusters boot (this one included).
    pub cluster_count: U16,
    /// Entries used in `cores`.
    pub core_count: U16,
    /// Entries used in `devices`.
    pub device_count: U16,
    /// Entries used in `excluded`.
    pub excluded_count: U16,
    /// Zero.
    pub reserved2: [u8; 2],
    /// Physical base of the bank the cluster boots with.
    pub bank_base: U64,
    /// Its size.
    pub bank_size: U64,
    /// Physical base of the memory the kernel may use (the bank past the zones).
    pub memory_base: U64,
    /// Its size.
    pub memory_size: U64,
    /// The CRC-32C field of the `arch_info.bin` it was built from.
    pub arch_crc: U32,
    /// Zero.
    pub reserved3: [u8; 4],
}

/// A tested core (8 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct BootCoreDesc {
    /// Hardware id.
    pub gid: U32,
    /// Local index in the cluster (the hardware's: tested cores keep theirs).
    pub lid: U16,
    /// Zero.
    pub reserved: [u8; 2],
}

/// A tested device (24 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct BootDeviceDesc {
    /// Kind code (as in `arch_info.bin`).
    pub kind: U16,
    /// The number of an `other` kind.
    pub other: U16,
    /// Channels.
    pub channels: U16,
    /// Zero.
    pub reserved: [u8; 2],
    /// Physical base address.
    pub base: U64,
    /// Size.
    pub size: U64,
}

/// A part left out of the boot (8 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ExcludedDesc {
    /// [`Part::code`].
    pub what: u8,
    /// [`Why::code`].
    pub why: u8,
    /// The cluster it is in (for a cluster: its id).
    pub cluster: U16,
    /// A core's gid, a cluster's id, a bank's or device's index in `arch_info.bin`'s table.
    pub id: U32,
}

/// The whole block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BootInfoBlock {
    /// Offset 0.
    pub header: BootInfoHeader,
    /// Offset 80: the first `core_count` are used, the rest zero.
    pub cores: [BootCoreDesc; MAX_BOOT_CORES],
    /// Offset 592: the first `device_count` are used, the rest zero.
    pub devices: [BootDeviceDesc; MAX_BOOT_DEVICES],
    /// Offset 1360: the first `excluded_count` are used, the rest zero.
    pub excluded: [ExcludedDesc; MAX_BOOT_EXCLUDED],
    /// Offset 3408 to the end: zero.
    pub reserved: [u8; BOOT_INFO_SIZE - 3408],
}

const _: () = assert!(
    size_of::<BootInfoHeader>() == BOOT_INFO_HEADER_SIZE
        && size_of::<BootCoreDesc>() == 8
        && size_of::<BootDeviceDesc>() == 24
        && size_of::<ExcludedDesc>() == 8
        && BOOT_INFO_HEADER_SIZE + MAX_BOOT_CORES * 8 + MAX_BOOT_DEVICES * 24 + MAX_BOOT_EXCLUDED * 8 == 3408
        && size_of::<BootInfoBlock>() == BOOT_INFO_SIZE
);

/// What kind of part was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// A cluster of the machine (any cluster: every boot info lists them all).
    Cluster,
    /// A core of this cluster.
    Core,
    /// A memory bank of this cluster.
    Bank,
    /// A device of this cluster.
    Device,
}

impl Part {
    /// Its code in the block.
    pub fn code(self) -> u8 {
        match self {
            Part::Cluster => 1,
            Part::Core => 2,
            Part::Bank => 3,
            Part::Device => 4,
        }
    }
    /// The part of a code.
    pub fn from_code(code: u8) -> Option<Part> {
        [Part::Cluster, Part::Core, Part::Bank, Part::Device].into_iter().find(|p| p.code() == code)
    }
    /// `cluster`, `core`, `bank`, `device`.
    pub fn name(self) -> &'static str {
        match self {
            Part::Cluster => "cluster",
            Part::Core => "core",
            Part::Bank => "bank",
            Part::Device => "device",
        }
    }
}

/// A range of physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// Physical base address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A tested core of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootCore {
    /// Its hardware local index.
    pub lid: u16,
    /// Its hardware id.
    pub gid: u32,
}

/// A tested device of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootDevice {
    /// What it is.
    pub kind: DeviceKind,
    /// Channels.
    pub channels: u16,
    /// Physical base address.
    pub base: u64,
    /// Size.
    pub size: u64,
}

/// A part left out of the boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Excluded {
    /// What kind of part.
    pub what: Part,
    /// The cluster it is in (a cluster's own id).
    pub cluster: u16,
    /// A core's gid, a cluster's id, a bank's or device's index in `arch_info.bin`.
    pub id: u32,
    /// Why.
    pub why: Why,
}

/// One cluster's boot info, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// The layout's major version ([`BOOT_INFO_MAJOR`]).
    pub version: u16,
    /// This cluster's id.
    pub cluster: u16,
    /// Its column.
    pub x: u8,
    /// Its row.
    pub y: u8,
    /// Mesh width.
    pub x_size: u8,
    /// Mesh height.
    pub y_size: u8,
    /// How many clusters boot, this one included (the barrier's count).
    pub cluster_count: u16,
    /// The tested cores, by lid; a core's index here is its core index.
    pub cores: Vec<BootCore>,
    /// The bank the cluster boots with (its first tested one).
    pub bank: Span,
    /// The memory the kernel may use: the bank from the end of the highest zone.
    pub memory: Span,
    /// The tested devices.
    pub devices: Vec<BootDevice>,
    /// What was left out, and why.
    pub excluded: Vec<Excluded>,
    /// The CRC-32C of the `arch_info.bin` it was built from.
    pub arch_crc: u32,
}

fn too_many(cluster: u16, what: &'static str, count: usize, max: usize) -> Result<u16, ArchError> {
    if count > max {
        return Err(ArchError::TooMany { cluster, what, count, max });
    }
    u16::try_from(count).map_err(|_| ArchError::TooMany { cluster, what, count, max })
}

impl BootInfo {
    /// The [`BOOT_INFO_SIZE`]-byte block, or which list is too long for it.
    pub fn encode(&self) -> Result<Vec<u8>, ArchError> {
        let c = self.cluster;
        let core_count = too_many(c, "tested cores", self.cores.len(), MAX_BOOT_CORES)?;
        let device_count = too_many(c, "tested devices", self.devices.len(), MAX_BOOT_DEVICES)?;
        let excluded_count = too_many(c, "excluded parts", self.excluded.len(), MAX_BOOT_EXCLUDED)?;
        let mut block = BootInfoBlock::new_zeroed();
        let h = &mut block.header;
        h.magic = BOOT_INFO_MAGIC;
        h.major = BOOT_INFO_MAJOR.into();
        h.minor = BOOT_INFO_MINOR.into();
        h.header_size = 80.into();
        h.total_size = 4096.into();
        h.cluster = c.into();
        (h.x, h.y, h.x_size, h.y_size) = (self.x, self.y, self.x_size, self.y_size);
        h.cluster_count = self.cluster_count.into();
        h.core_count = core_count.into();
        h.device_count = device_count.into();
        h.excluded_count = excluded_count.into();
        h.bank_base = self.bank.base.into();
        h.bank_size = self.bank.size.into();
        h.memory_base = self.memory.base.into();
        h.memory_size = self.memory.size.into();
        h.arch_crc = self.arch_crc.into();
        for (d, core) in block.cores.iter_mut().zip(&self.cores) {
            *d = BootCoreDesc { gid: core.gid.into(), lid: core.lid.into(), reserved: [0; 2] };
        }
        for (d, dev) in block.devices.iter_mut().zip(&self.devices) {
            let (kind, other) = dev.kind.code();
            *d = BootDeviceDesc {
                kind: kind.into(),
                other: other.into(),
                channels: dev.channels.into(),
                reserved: [0; 2],
                base: dev.base.into(),
                size: dev.size.into(),
            };
        }
        for (d, x) in block.excluded.iter_mut().zip(&self.excluded) {
            *d = ExcludedDesc {
                what: x.what.code(),
                why: x.why.code(),
                cluster: x.cluster.into(),
                id: x.id.into(),
            };
        }
        let mut out = block.as_bytes().to_vec();
        let crc = crc32c::crc32c(&out);
        out[BOOT_INFO_CRC_OFFSET..BOOT_INFO_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }
}

/// CRC-32C of `bytes` with the 4 bytes at `at` taken as zero.
fn crc_without_field(bytes: &[u8], at: usize) -> u32 {
    let crc = crc32c::crc32c(&bytes[..at]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &bytes[at + 4..])
}

fn bad(msg: String) -> ArchError {
    ArchError::BootInfo(msg)
}

/// A checked boot info, read in place. What a core needs at its entry is one call away:
/// [`cluster`](Self::cluster), [`core_index`](Self::core_index),
/// [`core_count`](Self::core_count), [`memory`](Self::memory).
#[derive(Debug, Clone, Copy)]
pub struct BootInfoView<'a> {
    block: &'a BootInfoBlock,
}

impl<'a> BootInfoView<'a> {
    /// Check `bytes` (at least [`BOOT_INFO_SIZE`]; only the first that many are looked at)
    /// as a boot info and read it in place.
    pub fn parse(bytes: &'a [u8]) -> Result<BootInfoView<'a>, ArchError> {
        let Ok((block, _)) = BootInfoBlock::ref_from_prefix(bytes) else {
            if let Ok((h, _)) = BootInfoHeader::ref_from_prefix(bytes)
                && h.magic != BOOT_INFO_MAGIC
            {
                return Err(ArchError::BadMagic { what: WHAT, found: h.magic, expected: "MNBOOTI\\0" });
            }
            return Err(ArchError::TooShort { what: WHAT, len: bytes.len(), need: BOOT_INFO_SIZE });
        };
        let h = &block.header;
        if h.magic != BOOT_INFO_MAGIC {
            return Err(ArchError::BadMagic { what: WHAT, found: h.magic, expected: "MNBOOTI\\0" });
        }
        let (major, minor) = (h.major.get(), h.minor.get());
        if major != BOOT_INFO_MAJOR {
            return Err(ArchError::Version { what: WHAT, major, minor, supported: BOOT_INFO_MAJOR });
        }
        #[allow(clippy::absurd_extreme_comparisons)] // true only of 0 today; stays right when the minor grows
        let known = minor <= BOOT_INFO_MINOR;
        let header_size = usize::from(h.header_size.get());
        if header_size < BOOT_INFO_HEADER_SIZE || (known && header_size != BOOT_INFO_HEADER_SIZE) {
            return Err(ArchError::HeaderSize {
                what: WHAT,
                size: u32::from(h.header_size.get()),
                major,
                minor,
                need: BOOT_INFO_HEADER_SIZE,
            });
        }
        if usize::try_from(h.total_size.get()).ok() != Some(BOOT_INFO_SIZE) {
            return Err(ArchError::TotalSize {
                what: WHAT,
                total: h.total_size.get().into(),
                len: BOOT_INFO_SIZE,
            });
        }
        let bytes = block.as_bytes();
        let computed = crc_without_field(bytes, BOOT_INFO_CRC_OFFSET);
        if computed != h.crc.get() {
            return Err(ArchError::Crc { what: WHAT, stored: h.crc.get(), computed });
        }
        let counts = [
            ("cores", usize::from(h.core_count.get()), MAX_BOOT_CORES),
            ("devices", usize::from(h.device_count.get()), MAX_BOOT_DEVICES),
            ("excluded parts", usize::from(h.excluded_count.get()), MAX_BOOT_EXCLUDED),
        ];
        for (what, n, max) in counts {
            if n > max {
                return Err(bad(format!("{n} {what}, more than the {max} a boot info holds")));
            }
        }
        if known {
            // Version 1.0 defines every byte: reserved ones and unused entries are zero.
            let reserved = [(14, &h.reserved[..]), (38, &h.reserved2[..]), (76, &h.reserved3[..])];
            for (at, r) in reserved {
                if let Some(i) = r.iter().position(|b| *b != 0) {
                    return Err(ArchError::HeaderReserved { what: WHAT, offset: at + i });
                }
            }
            let used_end = [
                80 + 8 * counts[0].1..592,
                592 + 24 * counts[1].1..1360,
                1360 + 8 * counts[2].1..BOOT_INFO_SIZE,
            ];
            for range in used_end {
                if let Some(i) = bytes[range.clone()].iter().position(|b| *b != 0) {
                    return Err(bad(format!(
                        "byte {} is past the used entries and not zero",
                        range.start + i
                    )));
                }
            }
            for (i, c) in block.cores[..counts[0].1].iter().enumerate() {
                if c.reserved != [0; 2] {
                    return Err(bad(format!("core entry {i} has non-zero reserved bytes")));
                }
            }
            for (i, d) in block.devices[..counts[1].1].iter().enumerate() {
                if d.reserved != [0; 2] {
                    return Err(bad(format!("device entry {i} has non-zero reserved bytes")));
                }
            }
        }
        for (i, d) in block.devices[..counts[1].1].iter().enumerate() {
            if DeviceKind::from_code(d.kind.get(), d.other.get()).is_none() {
                return Err(bad(format!(
                    "device entry {i}: unknown kind code {} (other {})",
                    d.kind, d.other
                )));
            }
        }
        for (i, x) in block.excluded[..counts[2].1].iter().enumerate() {
            if Part::from_code(x.what).is_none() || Why::from_code(x.why).is_none() {
                return Err(bad(format!("excluded entry {i}: unknown part {} or reason {}", x.what, x.why)));
            }
        }
        let (bank, mem) =
            ((h.bank_base.get(), h.bank_size.get()), (h.memory_base.get(), h.memory_size.get()));
        let inside = bank.0.checked_add(bank.1).is_some_and(|bank_end| {
            mem.0 >= bank.0 && mem.0.checked_add(mem.1).is_some_and(|mem_end| mem_end <= bank_end)
        });
        if !inside {
            return Err(bad(format!(
                "memory {:#x}+{:#x} is not inside its bank {:#x}+{:#x}",
                mem.0, mem.1, bank.0, bank.1
            )));
        }
        Ok(BootInfoView { block })
    }

    /// The whole block.
    pub fn block(&self) -> &'a BootInfoBlock {
        self.block
    }
    /// The header.
    pub fn header(&self) -> &'a BootInfoHeader {
        &self.block.header
    }
    /// This cluster's id.
    pub fn cluster(&self) -> u16 {
        self.block.header.cluster.get()
    }
    /// How many clusters boot.
    pub fn cluster_count(&self) -> u16 {
        self.block.header.cluster_count.get()
    }
    /// How many tested cores the cluster has.
    pub fn core_count(&self) -> usize {
        usize::from(self.block.header.core_count.get())
    }
    /// The tested cores, by lid.
    pub fn cores(&self) -> &'a [BootCoreDesc] {
        &self.block.cores[..self.core_count()]
    }
    /// The index among the tested cores of the core with this gid (`None`: not a tested
    /// core of this cluster).
    pub fn core_index(&self, gid: u32) -> Option<usize> {
        self.cores().iter().position(|c| c.gid.get() == gid)
    }
    /// The memory the kernel may use.
    pub fn memory(&self) -> Span {
        Span { base: self.block.header.memory_base.get(), size: self.block.header.memory_size.get() }
    }
    /// The bank the cluster boots with.
    pub fn bank(&self) -> Span {
        Span { base: self.block.header.bank_base.get(), size: self.block.header.bank_size.get() }
    }
    /// The tested devices.
    pub fn devices(&self) -> &'a [BootDeviceDesc] {
        &self.block.devices[..usize::from(self.block.header.device_count.get())]
    }
    /// What was left out.
    pub fn excluded(&self) -> &'a [ExcludedDesc] {
        &self.block.excluded[..usize::from(self.block.header.excluded_count.get())]
    }
    /// The boot info, owned.
    pub fn to_owned(&self) -> BootInfo {
        let h = &self.block.header;
        BootInfo {
            version: h.major.get(),
            cluster: h.cluster.get(),
            x: h.x,
            y: h.y,
            x_size: h.x_size,
            y_size: h.y_size,
            cluster_count: h.cluster_count.get(),
            cores: self.cores().iter().map(|c| BootCore { lid: c.lid.get(), gid: c.gid.get() }).collect(),
            bank: self.bank(),
            memory: self.memory(),
            devices: self
                .devices()
                .iter()
                .map(|d| BootDevice {
                    kind: DeviceKind::from_code(d.kind.get(), d.other.get())
                        .unwrap_or(DeviceKind::Other(u16::MAX)),
                    channels: d.channels.get(),
                    base: d.base.get(),
                    size: d.size.get(),
                })
                .collect(),
            excluded: self
                .excluded()
                .iter()
                .map(|x| Excluded {
                    what: Part::from_code(x.what).unwrap_or(Part::Cluster),
                    cluster: x.cluster.get(),
                    id: x.id.get(),
                    why: Why::from_code(x.why).unwrap_or(Why::SelfTest),
                })
                .collect(),
            arch_crc: h.arch_crc.get(),
        }
    }
}
