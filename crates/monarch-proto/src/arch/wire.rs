//! `arch_info.bin`, byte by byte: the header, the descriptor tables and the string table
//! (`docs/arch-info.md` is the normative description), [`encode`] from the owned model and
//! [`ArchView`], which checks a file and reads it in place, without copying.
//!
//! All integers are little-endian; every descriptor is a `#[repr(C)]` struct of
//! byte-aligned fields, so a table is a slice of descriptors straight over the file's bytes.

use std::collections::BTreeMap;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::{ArchError, ClusterIds, Problem, Table};
use super::model::{ArchInfo, Bank, Cluster, Core, Device, DeviceKind, Zone, ZoneKind};

/// The first 8 bytes of every `arch_info.bin`.
pub const MAGIC: [u8; 8] = *b"MNARCH\0\0";
/// The major format version written and read: a reader refuses any other major version.
pub const VERSION_MAJOR: u16 = 1;
/// The minor format version written. A reader reads any minor version of its major one:
/// a newer minor only adds what an older reader may ignore (see `docs/arch-info.md`).
pub const VERSION_MINOR: u16 = 0;
/// The header's size in version 1.0.
pub const HEADER_SIZE: usize = 80;
/// Byte offset of the CRC-32C field in the header.
pub const CRC_OFFSET: usize = 20;
/// Flag bit of a descriptor: the part failed its self-test.
pub const FLAG_FAILED: u8 = 0x01;
/// Device kind code of [`DeviceKind::Other`]; its number is in the descriptor's `other`.
pub const DEVICE_OTHER: u16 = DeviceKind::OTHER_CODE;
/// Where a file says what it is, in errors.
const WHAT: &str = "arch_info.bin";

/// Where a table is: byte offset from the start of the file, entry count and entry size.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct TableRef {
    /// Byte offset of the first entry.
    pub offset: U32,
    /// Number of entries (bytes, for the string table).
    pub count: U16,
    /// Size of one entry (1 for the string table).
    pub entry_size: U16,
}

/// The fixed header at offset 0 (80 bytes in version 1.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ArchHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// Major format version ([`VERSION_MAJOR`]).
    pub major: U16,
    /// Minor format version.
    pub minor: U16,
    /// Size of this header: 80 in version 1.0; a newer minor version may append fields.
    pub header_size: U16,
    /// Zero.
    pub reserved: [u8; 2],
    /// Size of the whole file.
    pub total_size: U32,
    /// CRC-32C of the whole file (`total_size` bytes), computed with this field zero.
    pub crc: U32,
    /// Mesh width.
    pub x_size: u8,
    /// Mesh height.
    pub y_size: u8,
    /// Length of the machine's name in bytes.
    pub name_len: U16,
    /// Offset of the machine's name in the string table.
    pub name_offset: U32,
    /// The tables, in [`Table::ALL`] order: clusters, cores, banks, devices, zones, strings.
    pub tables: [TableRef; 6],
}

/// A cluster (8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ClusterDesc {
    /// Cluster id.
    pub id: U16,
    /// Column.
    pub x: u8,
    /// Row.
    pub y: u8,
    /// [`FLAG_FAILED`].
    pub flags: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// A core (12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CoreDesc {
    /// Hardware id.
    pub gid: U32,
    /// Cluster id.
    pub cluster: U16,
    /// Local index in the cluster.
    pub lid: U16,
    /// [`FLAG_FAILED`].
    pub flags: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// A memory bank (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BankDesc {
    /// Cluster id.
    pub cluster: U16,
    /// [`FLAG_FAILED`].
    pub flags: u8,
    /// Zero.
    pub reserved: [u8; 5],
    /// Physical base address.
    pub base: U64,
    /// Size in bytes.
    pub size: U64,
}

/// A device (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DeviceDesc {
    /// Cluster id.
    pub cluster: U16,
    /// Kind code: 1 tty, 2 ioc, 3 nic, 4 icu, 5 dma, 6 mmc, [`DEVICE_OTHER`].
    pub kind: U16,
    /// With kind [`DEVICE_OTHER`]: the kind's number; else zero.
    pub other: U16,
    /// Channels.
    pub channels: U16,
    /// [`FLAG_FAILED`].
    pub flags: u8,
    /// Zero.
    pub reserved: [u8; 7],
    /// Physical base address of its registers.
    pub base: U64,
    /// Size of its registers.
    pub size: U64,
}

/// A zone (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ZoneDesc {
    /// Kind code: 1 boot-code, 2 arch-info, 3 kernel, 4 boot-info, 5 stacks.
    pub kind: U16,
    /// Zero.
    pub reserved: [u8; 6],
    /// Offset in every cluster's bank.
    pub base: U64,
    /// Size.
    pub max: U64,
}

const _: () = assert!(
    size_of::<ArchHeader>() == HEADER_SIZE
        && size_of::<ClusterDesc>() == 8
        && size_of::<CoreDesc>() == 12
        && size_of::<BankDesc>() == 24
        && size_of::<DeviceDesc>() == 32
        && size_of::<ZoneDesc>() == 24
);

fn flags(failed: bool) -> u8 {
    if failed { FLAG_FAILED } else { 0 }
}

/// The device kind of a code, or why there is none.
pub fn device_kind(kind: u16, other: u16) -> Result<DeviceKind, Problem> {
    DeviceKind::from_code(kind, other).ok_or(if DeviceKind::from_code(kind, 0).is_some() {
        Problem::OtherCode { kind, other }
    } else {
        Problem::UnknownKind(kind)
    })
}

impl ClusterDesc {
    /// The descriptor of a cluster.
    pub fn new(c: &Cluster) -> ClusterDesc {
        ClusterDesc { id: c.id.into(), x: c.x, y: c.y, flags: flags(c.failed), reserved: [0; 3] }
    }
    /// Its id.
    pub fn id(&self) -> u16 {
        self.id.get()
    }
    /// It failed its self-test.
    pub fn failed(&self) -> bool {
        self.flags & FLAG_FAILED != 0
    }
    /// As the owned model.
    pub fn to_model(&self) -> Cluster {
        Cluster { id: self.id(), x: self.x, y: self.y, failed: self.failed() }
    }
}

impl CoreDesc {
    /// The descriptor of a core.
    pub fn new(c: &Core) -> CoreDesc {
        CoreDesc {
            gid: c.gid.into(),
            cluster: c.cluster.into(),
            lid: c.lid.into(),
            flags: flags(c.failed),
            reserved: [0; 3],
        }
    }
    /// Its hardware id.
    pub fn gid(&self) -> u32 {
        self.gid.get()
    }
    /// Its cluster.
    pub fn cluster(&self) -> u16 {
        self.cluster.get()
    }
    /// Its local index.
    pub fn lid(&self) -> u16 {
        self.lid.get()
    }
    /// It failed its self-test.
    pub fn failed(&self) -> bool {
        self.flags & FLAG_FAILED != 0
    }
    /// As the owned model.
    pub fn to_model(&self) -> Core {
        Core { gid: self.gid(), cluster: self.cluster(), lid: self.lid(), failed: self.failed() }
    }
}

impl BankDesc {
    /// The descriptor of a bank.
    pub fn new(b: &Bank) -> BankDesc {
        BankDesc {
            cluster: b.cluster.into(),
            flags: flags(b.failed),
            reserved: [0; 5],
            base: b.base.into(),
            size: b.size.into(),
        }
    }
    /// Its cluster.
    pub fn cluster(&self) -> u16 {
        self.cluster.get()
    }
    /// Physical base address.
    pub fn base(&self) -> u64 {
        self.base.get()
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size.get()
    }
    /// It failed its self-test.
    pub fn failed(&self) -> bool {
        self.flags & FLAG_FAILED != 0
    }
    /// As the owned model.
    pub fn to_model(&self) -> Bank {
        Bank { cluster: self.cluster(), base: self.base(), size: self.size(), failed: self.failed() }
    }
}

impl DeviceDesc {
    /// The descriptor of a device.
    pub fn new(d: &Device) -> DeviceDesc {
        let (kind, other) = d.kind.code();
        DeviceDesc {
            cluster: d.cluster.into(),
            kind: kind.into(),
            other: other.into(),
            channels: d.channels.into(),
            flags: flags(d.failed),
            reserved: [0; 7],
            base: d.base.into(),
            size: d.size.into(),
        }
    }
    /// Its cluster.
    pub fn cluster(&self) -> u16 {
        self.cluster.get()
    }
    /// Its kind (`Other(0xffff)` for a code a validated view never holds).
    pub fn kind(&self) -> DeviceKind {
        device_kind(self.kind.get(), self.other.get()).unwrap_or(DeviceKind::Other(u16::MAX))
    }
    /// Channels.
    pub fn channels(&self) -> u16 {
        self.channels.get()
    }
    /// Physical base address.
    pub fn base(&self) -> u64 {
        self.base.get()
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size.get()
    }
    /// It failed its self-test.
    pub fn failed(&self) -> bool {
        self.flags & FLAG_FAILED != 0
    }
    /// As the owned model.
    pub fn to_model(&self) -> Device {
        Device {
            cluster: self.cluster(),
            kind: self.kind(),
            channels: self.channels(),
            base: self.base(),
            size: self.size(),
            failed: self.failed(),
        }
    }
}

impl ZoneDesc {
    /// The descriptor of a zone.
    pub fn new(z: &Zone) -> ZoneDesc {
        ZoneDesc { kind: z.kind.code().into(), reserved: [0; 6], base: z.base.into(), max: z.max.into() }
    }
    /// Its kind (`None` for a code a validated view never holds).
    pub fn kind(&self) -> Option<ZoneKind> {
        ZoneKind::from_code(self.kind.get())
    }
    /// Offset in every cluster's bank.
    pub fn base(&self) -> u64 {
        self.base.get()
    }
    /// Size.
    pub fn max(&self) -> u64 {
        self.max.get()
    }
    /// Offset of its end (saturating; a validated view never overflows).
    pub fn end(&self) -> u64 {
        self.base().saturating_add(self.max())
    }
    /// As the owned model (`None` for an unknown kind).
    pub fn to_model(&self) -> Option<Zone> {
        Some(Zone { kind: self.kind()?, base: self.base(), max: self.max() })
    }
}

fn too_big(what: &str, n: usize) -> ArchError {
    ArchError::TooBig(format!("{n} {what}; the format holds at most 65535"))
}

fn count16(what: &str, n: usize) -> Result<u16, ArchError> {
    u16::try_from(n).map_err(|_| too_big(what, n))
}

/// Encode a description, or say which of the format's limits it exceeds (more than 65 535
/// entries in a table or bytes in the name, or a file over 4 GiB). The description's rules
/// are not checked: [`ArchView::parse`] of the bytes does (see [`encode_checked`]).
pub fn try_encode(arch: &ArchInfo) -> Result<Vec<u8>, ArchError> {
    let counts = [
        count16("clusters", arch.clusters.len())?,
        count16("cores", arch.cores.len())?,
        count16("banks", arch.banks.len())?,
        count16("devices", arch.devices.len())?,
        count16("zones", arch.zones.len())?,
        count16("bytes of name", arch.name.len())?,
    ];
    let sizes = [
        size_of::<ClusterDesc>(),
        size_of::<CoreDesc>(),
        size_of::<BankDesc>(),
        size_of::<DeviceDesc>(),
        size_of::<ZoneDesc>(),
        1,
    ];
    let mut tables = [TableRef::default(); 6];
    let mut at = HEADER_SIZE;
    for (t, (count, size)) in tables.iter_mut().zip(counts.into_iter().zip(sizes)) {
        let offset = u32::try_from(at).map_err(|_| ArchError::TooBig(format!("a table at offset {at}")))?;
        let entry_size =
            u16::try_from(size).map_err(|_| ArchError::TooBig(format!("{size}-byte entries")))?;
        *t = TableRef { offset: offset.into(), count: count.into(), entry_size: entry_size.into() };
        at += usize::from(count) * size;
    }
    let total = u32::try_from(at).map_err(|_| ArchError::TooBig(format!("{at} bytes in all")))?;
    let header_size = u16::try_from(HEADER_SIZE).map_err(|_| ArchError::TooBig("the header".into()))?;
    let header = ArchHeader {
        magic: MAGIC,
        major: VERSION_MAJOR.into(),
        minor: VERSION_MINOR.into(),
        header_size: header_size.into(),
        reserved: [0; 2],
        total_size: total.into(),
        crc: 0.into(),
        x_size: arch.x_size,
        y_size: arch.y_size,
        name_len: counts[5].into(),
        name_offset: 0.into(),
        tables,
    };
    let mut out = Vec::with_capacity(at);
    out.extend_from_slice(header.as_bytes());
    arch.clusters.iter().for_each(|c| out.extend_from_slice(ClusterDesc::new(c).as_bytes()));
    arch.cores.iter().for_each(|c| out.extend_from_slice(CoreDesc::new(c).as_bytes()));
    arch.banks.iter().for_each(|b| out.extend_from_slice(BankDesc::new(b).as_bytes()));
    arch.devices.iter().for_each(|d| out.extend_from_slice(DeviceDesc::new(d).as_bytes()));
    arch.zones.iter().for_each(|z| out.extend_from_slice(ZoneDesc::new(z).as_bytes()));
    out.extend_from_slice(arch.name.as_bytes());
    debug_assert_eq!(out.len(), at);
    let crc = crc32c::crc32c(&out);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Encode a description as `arch_info.bin`. The description's rules are not checked (a
/// test can write a wrong file): [`ArchView::parse`] of the result does.
///
/// # Panics
/// If the description exceeds the format's limits (65 535 entries in a table, 65 535 bytes
/// of name): [`try_encode`] says so as an error instead.
pub fn encode(arch: &ArchInfo) -> Vec<u8> {
    match try_encode(arch) {
        Ok(bytes) => bytes,
        Err(e) => panic!("{e}"),
    }
}

/// Encode a description and check every rule of the format, as a reader would.
pub fn encode_checked(arch: &ArchInfo) -> Result<Vec<u8>, ArchError> {
    let bytes = try_encode(arch)?;
    ArchView::parse(&bytes)?;
    Ok(bytes)
}

/// A checked `arch_info.bin`, read in place: every table is a slice of descriptors over the
/// file's own bytes. Whatever [`ArchView::parse`] accepts follows every rule of the format
/// (`docs/arch-info.md`), so the accessors never fail.
#[derive(Debug, Clone, Copy)]
pub struct ArchView<'a> {
    bytes: &'a [u8],
    header: &'a ArchHeader,
    clusters: &'a [ClusterDesc],
    cores: &'a [CoreDesc],
    banks: &'a [BankDesc],
    devices: &'a [DeviceDesc],
    zones: &'a [ZoneDesc],
    name: &'a str,
}

fn table_err(table: Table, r: &TableRef, problem: String) -> ArchError {
    ArchError::Table {
        table,
        offset: r.offset.get(),
        count: r.count.get(),
        entry_size: r.entry_size.get(),
        problem,
    }
}

fn desc_err(table: Table, index: usize, label: String, problem: Problem) -> ArchError {
    ArchError::Descriptor { table, index, label, problem }
}

/// The table's bytes as a slice of `T`, checked against the file's bounds.
fn slice<'a, T: FromBytes + KnownLayout + Immutable + Unaligned>(
    bytes: &'a [u8],
    header_size: usize,
    table: Table,
    r: &TableRef,
) -> Result<&'a [T], ArchError> {
    let size = size_of::<T>();
    if usize::from(r.entry_size.get()) != size {
        return Err(table_err(table, r, format!("version 1's entries are {size} bytes")));
    }
    let start = usize::try_from(r.offset.get()).unwrap_or(usize::MAX);
    let len = usize::from(r.count.get()) * size;
    if start < header_size && len > 0 {
        return Err(table_err(table, r, format!("starts inside the {header_size}-byte header")));
    }
    let end = start.saturating_add(len);
    let Some(raw) = bytes.get(start..end) else {
        return Err(table_err(
            table,
            r,
            format!("ends at {end}, past the end of the {}-byte file", bytes.len()),
        ));
    };
    <[T]>::ref_from_bytes(raw).map_err(|_| table_err(table, r, "is not a whole number of entries".into()))
}

fn reserved_err(reserved: &[u8], at: usize) -> Option<Problem> {
    reserved.iter().position(|b| *b != 0).map(|i| Problem::Reserved(at + i))
}

impl<'a> ArchView<'a> {
    /// Check `bytes` as an `arch_info.bin` and read it in place. `bytes` may be longer than
    /// the file (a zone read whole): only the header's `total_size` bytes are looked at.
    pub fn parse(bytes: &'a [u8]) -> Result<ArchView<'a>, ArchError> {
        let Ok((header, _)) = ArchHeader::ref_from_prefix(bytes) else {
            return Err(ArchError::TooShort { what: WHAT, len: bytes.len(), need: HEADER_SIZE });
        };
        if header.magic != MAGIC {
            return Err(ArchError::BadMagic { what: WHAT, found: header.magic, expected: "MNARCH\\0\\0" });
        }
        let (major, minor) = (header.major.get(), header.minor.get());
        if major != VERSION_MAJOR {
            return Err(ArchError::Version { what: WHAT, major, minor, supported: VERSION_MAJOR });
        }
        // Of a minor version this code knows, everything is checked; of a newer one, what
        // it added (a longer header, reserved bytes and flag bits put to use) is ignored.
        #[allow(clippy::absurd_extreme_comparisons)] // true only of 0 today; stays right when the minor grows
        let known = minor <= VERSION_MINOR;
        let header_size = usize::from(header.header_size.get());
        if header_size < HEADER_SIZE || (known && header_size != HEADER_SIZE) {
            return Err(ArchError::HeaderSize {
                what: WHAT,
                size: u32::from(header.header_size.get()),
                major,
                minor,
                need: HEADER_SIZE,
            });
        }
        let total = usize::try_from(header.total_size.get()).unwrap_or(usize::MAX);
        if total > bytes.len() || total < header_size {
            return Err(ArchError::TotalSize {
                what: WHAT,
                total: header.total_size.get().into(),
                len: bytes.len(),
            });
        }
        let bytes = &bytes[..total];
        let computed = crc_without_field(bytes, CRC_OFFSET);
        if computed != header.crc.get() {
            return Err(ArchError::Crc { what: WHAT, stored: header.crc.get(), computed });
        }
        if known && header.reserved != [0; 2] {
            return Err(ArchError::HeaderReserved { what: WHAT, offset: 14 });
        }
        let t = &header.tables;
        let clusters = slice::<ClusterDesc>(bytes, header_size, Table::Clusters, &t[0])?;
        let cores = slice::<CoreDesc>(bytes, header_size, Table::Cores, &t[1])?;
        let banks = slice::<BankDesc>(bytes, header_size, Table::Banks, &t[2])?;
        let devices = slice::<DeviceDesc>(bytes, header_size, Table::Devices, &t[3])?;
        let zones = slice::<ZoneDesc>(bytes, header_size, Table::Zones, &t[4])?;
        let strings = slice::<u8>(bytes, header_size, Table::Strings, &t[5])?;
        check_overlaps(t)?;
        let name_err = |problem| ArchError::Name {
            offset: header.name_offset.get(),
            len: header.name_len.get(),
            problem,
        };
        let name_start = usize::try_from(header.name_offset.get()).unwrap_or(usize::MAX);
        let name_end = name_start.saturating_add(usize::from(header.name_len.get()));
        let name =
            strings.get(name_start..name_end).ok_or_else(|| name_err("not inside the string table"))?;
        let name = std::str::from_utf8(name).map_err(|_| name_err("not UTF-8"))?;
        let view = ArchView { bytes, header, clusters, cores, banks, devices, zones, name };
        view.check(known)?;
        Ok(view)
    }

    /// The rules of the description itself.
    fn check(&self, known: bool) -> Result<(), ArchError> {
        // Reserved bytes and flag bits, in the versions that define them all.
        if known {
            let flag_err = |f: u8| (f & !FLAG_FAILED != 0).then_some(Problem::Flags(f));
            for (i, c) in self.clusters.iter().enumerate() {
                if let Some(p) = flag_err(c.flags).or_else(|| reserved_err(&c.reserved, 5)) {
                    return Err(desc_err(Table::Clusters, i, cluster_label(c), p));
                }
            }
            for (i, c) in self.cores.iter().enumerate() {
                if let Some(p) = flag_err(c.flags).or_else(|| reserved_err(&c.reserved, 9)) {
                    return Err(desc_err(Table::Cores, i, core_label(c), p));
                }
            }
            for (i, b) in self.banks.iter().enumerate() {
                if let Some(p) = flag_err(b.flags).or_else(|| reserved_err(&b.reserved, 3)) {
                    return Err(desc_err(Table::Banks, i, bank_label(b), p));
                }
            }
            for (i, d) in self.devices.iter().enumerate() {
                if let Some(p) = flag_err(d.flags).or_else(|| reserved_err(&d.reserved, 9)) {
                    return Err(desc_err(Table::Devices, i, device_label(d), p));
                }
            }
            for (i, z) in self.zones.iter().enumerate() {
                if let Some(p) = reserved_err(&z.reserved, 2) {
                    return Err(desc_err(Table::Zones, i, zone_label(z), p));
                }
            }
        }

        // Clusters: at least one, unique ids and positions, inside the mesh.
        if self.clusters.is_empty() {
            return Err(ArchError::NoCluster);
        }
        let mut ids: BTreeMap<u16, usize> = BTreeMap::new();
        let mut places: BTreeMap<(u8, u8), usize> = BTreeMap::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let err = |p| desc_err(Table::Clusters, i, cluster_label(c), p);
            if c.x >= self.header.x_size || c.y >= self.header.y_size {
                return Err(err(Problem::OutsideMesh {
                    x: c.x,
                    y: c.y,
                    x_size: self.header.x_size,
                    y_size: self.header.y_size,
                }));
            }
            if let Some(&other) = ids.get(&c.id()) {
                return Err(err(Problem::DuplicateClusterId { id: c.id(), other }));
            }
            if let Some(&other) = places.get(&(c.x, c.y)) {
                return Err(err(Problem::DuplicatePosition { x: c.x, y: c.y, other }));
            }
            ids.insert(c.id(), i);
            places.insert((c.x, c.y), i);
        }
        let known_ids = || ClusterIds(self.clusters.iter().map(ClusterDesc::id).collect());
        let exists = |cluster: u16| {
            if ids.contains_key(&cluster) {
                Ok(())
            } else {
                Err(Problem::NoSuchCluster { cluster, known: known_ids() })
            }
        };

        // Zones: known kinds, each once, no overflow, no overlap, big enough.
        let mut kinds: BTreeMap<ZoneKind, usize> = BTreeMap::new();
        for (i, z) in self.zones.iter().enumerate() {
            let err = |p| desc_err(Table::Zones, i, zone_label(z), p);
            let Some(kind) = z.kind() else { return Err(err(Problem::UnknownKind(z.kind.get()))) };
            if let Some(&other) = kinds.get(&kind) {
                return Err(err(Problem::DuplicateZone { kind, other }));
            }
            kinds.insert(kind, i);
            if z.base().checked_add(z.max()).is_none() {
                return Err(err(Problem::Overflow { base: z.base(), size: z.max() }));
            }
            for (j, o) in self.zones[..i].iter().enumerate() {
                let (start, end) = (z.base().max(o.base()), z.end().min(o.end()));
                if start < end {
                    let other_kind = o.kind().unwrap_or(ZoneKind::BootCode);
                    return Err(err(Problem::ZoneOverlap { other: j, other_kind, start, end }));
                }
            }
        }
        for kind in ZoneKind::ALL {
            let Some(&i) = kinds.get(&kind) else { return Err(ArchError::MissingZone(kind)) };
            let z = &self.zones[i];
            let need = match kind {
                ZoneKind::ArchInfo => Some(("this description", self.bytes.len())),
                ZoneKind::BootInfo => Some(("a boot info", super::boot_info::BOOT_INFO_SIZE)),
                _ => None,
            };
            if let Some((what, need)) = need {
                let need = u64::try_from(need).unwrap_or(u64::MAX);
                if z.max() < need {
                    return Err(desc_err(
                        Table::Zones,
                        i,
                        zone_label(z),
                        Problem::ZoneTooSmall { max: z.max(), what, need },
                    ));
                }
            }
        }
        let zones_end = self.zones_end();

        // Cores: in a cluster, unique gids, lids unique in their cluster.
        let mut gids: BTreeMap<u32, usize> = BTreeMap::new();
        let mut lids: BTreeMap<(u16, u16), usize> = BTreeMap::new();
        for (i, c) in self.cores.iter().enumerate() {
            let err = |p| desc_err(Table::Cores, i, core_label(c), p);
            exists(c.cluster()).map_err(err)?;
            if let Some(&other) = gids.get(&c.gid()) {
                return Err(err(Problem::DuplicateGid { gid: c.gid(), other }));
            }
            if let Some(&other) = lids.get(&(c.cluster(), c.lid())) {
                return Err(err(Problem::DuplicateLid { lid: c.lid(), cluster: c.cluster(), other }));
            }
            gids.insert(c.gid(), i);
            lids.insert((c.cluster(), c.lid()), i);
        }

        // Banks: in a cluster, no overflow, the tested ones big enough for the zones.
        for (i, b) in self.banks.iter().enumerate() {
            let err = |p| desc_err(Table::Banks, i, bank_label(b), p);
            exists(b.cluster()).map_err(err)?;
            if b.base().checked_add(b.size()).is_none() {
                return Err(err(Problem::Overflow { base: b.base(), size: b.size() }));
            }
            if !b.failed() && b.size() < zones_end {
                return Err(err(Problem::BankTooSmall { size: b.size(), need: zones_end }));
            }
        }

        // Devices: known kinds, in a cluster, no overflow.
        for (i, d) in self.devices.iter().enumerate() {
            let err = |p| desc_err(Table::Devices, i, device_label(d), p);
            device_kind(d.kind.get(), d.other.get()).map_err(err)?;
            exists(d.cluster()).map_err(err)?;
            if d.base().checked_add(d.size()).is_none() {
                return Err(err(Problem::Overflow { base: d.base(), size: d.size() }));
            }
        }

        // Every cluster: a core and a bank (failed ones count), lids 0..n. One pass over
        // each table: a file of 65 535 cores must not cost 65 535² steps.
        let mut lids_of: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
        for c in self.cores {
            lids_of.entry(c.cluster()).or_default().push(c.lid());
        }
        let banked: std::collections::BTreeSet<u16> = self.banks.iter().map(BankDesc::cluster).collect();
        for (i, c) in self.clusters.iter().enumerate() {
            let err = |p| desc_err(Table::Clusters, i, cluster_label(c), p);
            let Some(mine) = lids_of.get_mut(&c.id()) else { return Err(err(Problem::NoCore)) };
            if !banked.contains(&c.id()) {
                return Err(err(Problem::NoBank));
            }
            let count = mine.len();
            if let Some(&lid) = mine.iter().find(|l| usize::from(**l) >= count) {
                mine.sort_unstable();
                let missing = mine.iter().zip(0u16..).find(|(l, i)| *l != i).map_or(0, |(_, i)| i);
                return Err(err(Problem::LidGap { count, lid, missing }));
            }
        }
        Ok(())
    }

    /// The whole file (`total_size` bytes).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// The header.
    pub fn header(&self) -> &'a ArchHeader {
        self.header
    }
    /// The file's format version, `(major, minor)`.
    pub fn version(&self) -> (u16, u16) {
        (self.header.major.get(), self.header.minor.get())
    }
    /// The machine's name.
    pub fn name(&self) -> &'a str {
        self.name
    }
    /// Mesh width.
    pub fn x_size(&self) -> u8 {
        self.header.x_size
    }
    /// Mesh height.
    pub fn y_size(&self) -> u8 {
        self.header.y_size
    }
    /// The cluster table.
    pub fn clusters(&self) -> &'a [ClusterDesc] {
        self.clusters
    }
    /// The core table.
    pub fn cores(&self) -> &'a [CoreDesc] {
        self.cores
    }
    /// The bank table.
    pub fn banks(&self) -> &'a [BankDesc] {
        self.banks
    }
    /// The device table.
    pub fn devices(&self) -> &'a [DeviceDesc] {
        self.devices
    }
    /// The zone table.
    pub fn zones(&self) -> &'a [ZoneDesc] {
        self.zones
    }
    /// The cluster with this id.
    pub fn cluster(&self, id: u16) -> Option<&'a ClusterDesc> {
        self.clusters.iter().find(|c| c.id() == id)
    }
    /// The cores of a cluster, in file order.
    pub fn cores_of(&self, cluster: u16) -> impl Iterator<Item = &'a CoreDesc> + use<'a> {
        self.cores.iter().filter(move |c| c.cluster() == cluster)
    }
    /// The banks of a cluster, in file order.
    pub fn banks_of(&self, cluster: u16) -> impl Iterator<Item = &'a BankDesc> + use<'a> {
        self.banks.iter().filter(move |b| b.cluster() == cluster)
    }
    /// The devices of a cluster, in file order.
    pub fn devices_of(&self, cluster: u16) -> impl Iterator<Item = &'a DeviceDesc> + use<'a> {
        self.devices.iter().filter(move |d| d.cluster() == cluster)
    }
    /// The zone of a kind (every checked description has each once).
    pub fn zone(&self, kind: ZoneKind) -> Option<&'a ZoneDesc> {
        self.zones.iter().find(|z| z.kind() == Some(kind))
    }
    /// The end of the highest zone: where a bank's memory is free for the kernel.
    pub fn zones_end(&self) -> u64 {
        self.zones.iter().map(ZoneDesc::end).max().unwrap_or(0)
    }
    /// The description as the owned model.
    pub fn to_owned(&self) -> ArchInfo {
        ArchInfo {
            name: self.name.to_owned(),
            x_size: self.x_size(),
            y_size: self.y_size(),
            clusters: self.clusters.iter().map(ClusterDesc::to_model).collect(),
            cores: self.cores.iter().map(CoreDesc::to_model).collect(),
            banks: self.banks.iter().map(BankDesc::to_model).collect(),
            devices: self.devices.iter().map(DeviceDesc::to_model).collect(),
            zones: self.zones.iter().filter_map(ZoneDesc::to_model).collect(),
        }
    }
}

/// CRC-32C of `bytes` with the 4 bytes at `at` taken as zero.
pub fn crc_without_field(bytes: &[u8], at: usize) -> u32 {
    let crc = crc32c::crc32c(&bytes[..at]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &bytes[at + 4..])
}

fn check_overlaps(t: &[TableRef; 6]) -> Result<(), ArchError> {
    let span = |r: &TableRef| {
        let start = u64::from(r.offset.get());
        (start, start + u64::from(r.count.get()) * u64::from(r.entry_size.get()))
    };
    for (i, a) in t.iter().enumerate() {
        for (j, b) in t[..i].iter().enumerate() {
            let ((s1, e1), (s2, e2)) = (span(a), span(b));
            if s1.max(s2) < e1.min(e2) {
                return Err(table_err(Table::ALL[i], a, format!("overlaps the {} table", Table::ALL[j])));
            }
        }
    }
    Ok(())
}

fn cluster_label(c: &ClusterDesc) -> String {
    format!("id {}", c.id())
}
fn core_label(c: &CoreDesc) -> String {
    format!("gid {}", c.gid())
}
fn bank_label(b: &BankDesc) -> String {
    format!("cluster {}", b.cluster())
}
fn device_label(d: &DeviceDesc) -> String {
    match DeviceKind::from_code(d.kind.get(), d.other.get()).or(DeviceKind::from_code(d.kind.get(), 0)) {
        Some(k) => format!("{k}, cluster {}", d.cluster()),
        None => format!("kind code {}, cluster {}", d.kind.get(), d.cluster()),
    }
}
fn zone_label(z: &ZoneDesc) -> String {
    match z.kind() {
        Some(k) => k.name().into(),
        None => format!("kind code {}", z.kind.get()),
    }
}
