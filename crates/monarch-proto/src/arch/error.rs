//! Why a description or a boot info is refused: every error names the table, the descriptor
//! (its index and what identifies it) and the rule it breaks, so the operator can find it in
//! the topology the file was compiled from.

use std::fmt;

use super::model::ZoneKind;

/// The tables of `arch_info.bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Cluster descriptors.
    Clusters,
    /// Core descriptors.
    Cores,
    /// Memory bank descriptors.
    Banks,
    /// Device descriptors.
    Devices,
    /// Zone descriptors.
    Zones,
    /// The string table (the machine's name).
    Strings,
}

impl Table {
    /// The tables in header order.
    pub const ALL: [Table; 6] =
        [Table::Clusters, Table::Cores, Table::Banks, Table::Devices, Table::Zones, Table::Strings];

    /// `cluster`, `core`, `bank`, `device`, `zone`, `string`.
    pub fn name(self) -> &'static str {
        match self {
            Table::Clusters => "cluster",
            Table::Cores => "core",
            Table::Banks => "bank",
            Table::Devices => "device",
            Table::Zones => "zone",
            Table::Strings => "string",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The cluster ids of a description, shown in an error: `0..=3` when they are contiguous,
/// else a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterIds(pub Vec<u16>);

impl fmt::Display for ClusterIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids = self.0.clone();
        ids.sort_unstable();
        match (ids.first(), ids.last()) {
            (None, _) | (_, None) => f.write_str("none"),
            (Some(&a), Some(&b)) if usize::from(b - a) + 1 == ids.len() => write!(f, "{a}..={b}"),
            _ => {
                let shown: Vec<String> = ids.iter().take(16).map(u16::to_string).collect();
                let more = if ids.len() > 16 { ", …" } else { "" };
                write!(f, "{}{more}", shown.join(", "))
            }
        }
    }
}

/// What is wrong with one descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// It names a cluster the description does not have.
    #[error("cluster {cluster} does not exist; clusters are {known}")]
    NoSuchCluster {
        /// The cluster it names.
        cluster: u16,
        /// The clusters there are.
        known: ClusterIds,
    },
    /// Two cluster descriptors with one id.
    #[error("cluster id {id} is also cluster descriptor {other}'s")]
    DuplicateClusterId {
        /// The id.
        id: u16,
        /// The first descriptor with it.
        other: usize,
    },
    /// Two clusters at one mesh position.
    #[error("position ({x}, {y}) is also cluster descriptor {other}'s")]
    DuplicatePosition {
        /// Column.
        x: u8,
        /// Row.
        y: u8,
        /// The first descriptor there.
        other: usize,
    },
    /// A cluster outside the mesh.
    #[error("position ({x}, {y}) is outside the {x_size}×{y_size} mesh")]
    OutsideMesh {
        /// Column.
        x: u8,
        /// Row.
        y: u8,
        /// Mesh width.
        x_size: u8,
        /// Mesh height.
        y_size: u8,
    },
    /// Two cores with one gid.
    #[error("gid {gid} is also core descriptor {other}'s")]
    DuplicateGid {
        /// The gid.
        gid: u32,
        /// The first descriptor with it.
        other: usize,
    },
    /// Two cores of a cluster with one lid.
    #[error("lid {lid} in cluster {cluster} is also core descriptor {other}'s")]
    DuplicateLid {
        /// The lid.
        lid: u16,
        /// Its cluster.
        cluster: u16,
        /// The first descriptor with it.
        other: usize,
    },
    /// A cluster's lids are not 0, 1, …, n-1.
    #[error("its {count} cores' lids are not 0..={last}: lid {lid} is beyond them (lid {missing} is missing)", last = count - 1)]
    LidGap {
        /// How many cores the cluster has.
        count: usize,
        /// A lid not below `count`.
        lid: u16,
        /// The smallest lid no core has.
        missing: u16,
    },
    /// A cluster without any core descriptor.
    #[error("it has no core (a failed core would still count)")]
    NoCore,
    /// A cluster without any bank descriptor.
    #[error("it has no memory bank (a failed bank would still count)")]
    NoBank,
    /// `base + size` does not fit 64 bits.
    #[error("base {base:#x} + size {size:#x} overflows 64 bits")]
    Overflow {
        /// Base.
        base: u64,
        /// Size.
        size: u64,
    },
    /// A tested bank too small for the zone map.
    #[error("its {size:#x} bytes cannot hold the zones, which end at {need:#x}")]
    BankTooSmall {
        /// The bank's size.
        size: u64,
        /// The end of the highest zone.
        need: u64,
    },
    /// An unknown kind code.
    #[error("unknown kind code {0}")]
    UnknownKind(u16),
    /// A device of a known kind with a non-zero `other` code.
    #[error("kind {kind} with other code {other} (only kind `other` has one)")]
    OtherCode {
        /// The kind.
        kind: u16,
        /// The other code.
        other: u16,
    },
    /// Flag bits this version does not define.
    #[error("unknown flag bits {0:#04x}")]
    Flags(u8),
    /// Non-zero reserved bytes.
    #[error("reserved byte {0} of the descriptor is not zero")]
    Reserved(usize),
    /// A zone kind given twice.
    #[error("zone descriptor {other} is also a {kind} zone")]
    DuplicateZone {
        /// The kind.
        kind: ZoneKind,
        /// The first descriptor of the kind.
        other: usize,
    },
    /// Two zones overlap.
    #[error("overlaps zone {other} ({other_kind}) at {start:#x}..{end:#x}")]
    ZoneOverlap {
        /// The zone it overlaps.
        other: usize,
        /// That zone's kind.
        other_kind: ZoneKind,
        /// Start of the overlap.
        start: u64,
        /// End of the overlap.
        end: u64,
    },
    /// A zone too small for what it must hold.
    #[error("{max:#x} bytes cannot hold {what} ({need:#x} bytes)")]
    ZoneTooSmall {
        /// The zone's size.
        max: u64,
        /// What it must hold.
        what: &'static str,
        /// Its size.
        need: u64,
    },
}

/// Why a cluster has no boot info.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Why {
    /// It failed its self-test.
    SelfTest,
    /// It is a cluster none of whose cores passed the self-test.
    NoTestedCore,
    /// It is a cluster none of whose banks passed the self-test.
    NoTestedBank,
}

impl Why {
    /// The code stored in a boot info.
    pub fn code(self) -> u8 {
        match self {
            Why::SelfTest => 1,
            Why::NoTestedCore => 2,
            Why::NoTestedBank => 3,
        }
    }

    /// The reason for a code.
    pub fn from_code(code: u8) -> Option<Why> {
        match code {
            1 => Some(Why::SelfTest),
            2 => Some(Why::NoTestedCore),
            3 => Some(Why::NoTestedBank),
            _ => None,
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::SelfTest => "failed its self-test",
            Why::NoTestedCore => "no core passed its self-test",
            Why::NoTestedBank => "no memory bank passed its self-test",
        })
    }
}

/// Why bytes are not a valid `arch_info.bin` or boot info, or why a boot info cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchError {
    /// Shorter than the fixed header.
    #[error("{what} is {len} bytes, shorter than the {need} bytes it needs at least")]
    TooShort {
        /// `arch_info.bin` or `boot info`.
        what: &'static str,
        /// Bytes given.
        len: usize,
        /// The header's size.
        need: usize,
    },
    /// Not the expected magic.
    #[error("not {what}: it starts with \"{}\", not \"{expected}\"", found.escape_ascii())]
    BadMagic {
        /// `arch_info.bin` or `boot info`.
        what: &'static str,
        /// The first 8 bytes.
        found: [u8; 8],
        /// The magic expected.
        expected: &'static str,
    },
    /// A major version this code does not read.
    #[error(
        "{what} format version {major}.{minor} is not readable by this monarch, which reads version {supported}.x: \
         use a monarch that reads version {major}"
    )]
    Version {
        /// `arch_info.bin` or `boot info`.
        what: &'static str,
        /// The file's major version.
        major: u16,
        /// The file's minor version.
        minor: u16,
        /// The major version this code reads.
        supported: u16,
    },
    /// A header size impossible for the version.
    #[error(
        "{what} header size {size} is impossible for version {major}.{minor} \
         (version {major}.0's header is {need} bytes; a newer minor version's may only be longer)"
    )]
    HeaderSize {
        /// `arch_info.bin` or `boot info`.
        what: &'static str,
        /// The header size field.
        size: u32,
        /// The file's major version.
        major: u16,
        /// The file's minor version.
        minor: u16,
        /// The header size of version `major`.0.
        need: usize,
    },
    /// The total size field does not match the bytes given.
    #[error("{what} says it is {total} bytes, but {len} bytes are given (truncated?)")]
    TotalSize {
        /// `arch_info.bin` or `boot info`.
        what: &'static str,
        /// The total size field.
        total: u64,
        /// Bytes given.
        len: usize,
    },
    /// The CRC does not match.
    #[error("{what} CRC-32C mismatch (stored {stored:08x}, computed {computed:08x}): corrupted")]
    Crc {
        /// `arch_info.bin` or `boot info`.
        what: &'static str,
        /// CRC stored.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// A table's reference in the header is wrong.
    #[error("the {table} table ({count} entries of {entry_size} bytes at offset {offset}): {problem}")]
    Table {
        /// The table.
        table: Table,
        /// Its offset.
        offset: u32,
        /// Its entries.
        count: u16,
        /// Its entry size.
        entry_size: u16,
        /// What is wrong.
        problem: String,
    },
    /// Non-zero reserved bytes in a header.
    #[error("{what} header byte {offset} is reserved and not zero")]
    HeaderReserved {
        /// `arch_info.bin` or `boot info`.
        what: &'static str,
        /// Offset of the byte.
        offset: usize,
    },
    /// The name is not within the string table, or not UTF-8.
    #[error("the machine's name ({len} bytes at string offset {offset}): {problem}")]
    Name {
        /// Its offset in the string table.
        offset: u32,
        /// Its length.
        len: u16,
        /// What is wrong.
        problem: &'static str,
    },
    /// No cluster at all.
    #[error("the description has no cluster")]
    NoCluster,
    /// A zone every description must have is missing.
    #[error("the description has no {0} zone")]
    MissingZone(ZoneKind),
    /// One descriptor is wrong.
    #[error("{table} descriptor {index} ({label}): {problem}")]
    Descriptor {
        /// Its table.
        table: Table,
        /// Its index in the table.
        index: usize,
        /// What identifies it (`gid 17`, `kernel`, `cluster 2`, …).
        label: String,
        /// What is wrong.
        problem: Problem,
    },
    /// A boot info was asked for a cluster the description does not have.
    #[error("cluster {cluster} does not exist; clusters are {known}")]
    NoSuchCluster {
        /// The cluster asked for.
        cluster: u16,
        /// The clusters there are.
        known: ClusterIds,
    },
    /// A boot info was asked for a cluster that cannot boot.
    #[error("cluster {cluster} is left out of the boot: {why}")]
    Excluded {
        /// The cluster.
        cluster: u16,
        /// Why.
        why: Why,
    },
    /// More entries than a boot info holds.
    #[error("cluster {cluster} has {count} {what}; a boot info holds at most {max}")]
    TooMany {
        /// The cluster.
        cluster: u16,
        /// `tested cores`, `tested devices`, `excluded parts`.
        what: &'static str,
        /// How many.
        count: usize,
        /// The most a boot info holds.
        max: usize,
    },
    /// A boot info field out of its range.
    #[error("boot info: {0}")]
    BootInfo(String),
    /// A description too big for the format's fields (encoding).
    #[error("the description cannot be encoded: {0}")]
    TooBig(String),
}
