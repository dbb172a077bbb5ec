//! The owned model of a machine's hardware: what `arch_info.bin` describes, as plain Rust
//! values to build, compare and print. It imports nothing from its siblings: the binary
//! format and the boot info are built on it.

use std::fmt;

/// A whole machine: a mesh of clusters, each with cores, memory banks and devices, and the
/// zone map every cluster's bank follows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchInfo {
    /// The machine's name (UTF-8, at most 65 535 bytes).
    pub name: String,
    /// Width of the cluster mesh: every cluster's `x` is below it.
    pub x_size: u8,
    /// Height of the cluster mesh: every cluster's `y` is below it.
    pub y_size: u8,
    /// The clusters, in file order.
    pub clusters: Vec<Cluster>,
    /// Every core of every cluster.
    pub cores: Vec<Core>,
    /// Every memory bank of every cluster.
    pub banks: Vec<Bank>,
    /// Every device of every cluster.
    pub devices: Vec<Device>,
    /// The zone map: the same offsets in every cluster's bank.
    pub zones: Vec<Zone>,
}

/// A cluster of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cluster {
    /// Its identifier, unique in the machine; cores, banks and devices name it.
    pub id: u16,
    /// Column in the mesh.
    pub x: u8,
    /// Row in the mesh.
    pub y: u8,
    /// It failed its self-test: described, left out of every boot info.
    pub failed: bool,
}

/// A core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Core {
    /// Hardware identifier, unique in the machine (what the core reads from its own register).
    pub gid: u32,
    /// The cluster it belongs to.
    pub cluster: u16,
    /// Local index in its cluster: a cluster's lids are 0, 1, … without a gap.
    pub lid: u16,
    /// It failed its self-test: described, left out of every boot info.
    pub failed: bool,
}

/// A physical memory bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bank {
    /// The cluster it belongs to.
    pub cluster: u16,
    /// Physical base address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// It failed its self-test: described, left out of every boot info.
    pub failed: bool,
}

/// A device (a peripheral with registers at `base`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Device {
    /// The cluster it belongs to.
    pub cluster: u16,
    /// What it is.
    pub kind: DeviceKind,
    /// How many channels it has (TTY lines, disk queues, …).
    pub channels: u16,
    /// Physical base address of its registers.
    pub base: u64,
    /// Size of its register window in bytes.
    pub size: u64,
    /// It failed its self-test: described, left out of every boot info.
    pub failed: bool,
}

/// The kinds of devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// A text terminal.
    Tty,
    /// A block device controller (the disk).
    Ioc,
    /// A network controller.
    Nic,
    /// An interrupt controller.
    Icu,
    /// A DMA engine.
    Dma,
    /// A memory cache controller.
    Mmc,
    /// Any other kind, by a number the machine's software agrees on.
    Other(u16),
}

impl DeviceKind {
    /// The kind code of [`DeviceKind::Other`] in the binary formats; its number goes beside it.
    pub const OTHER_CODE: u16 = 0xffff;

    /// Its code in the binary formats, `(kind, other)`: 1 tty, 2 ioc, 3 nic, 4 icu, 5 dma,
    /// 6 mmc with other 0, or [`DeviceKind::OTHER_CODE`] with the kind's number.
    pub fn code(self) -> (u16, u16) {
        match self {
            DeviceKind::Tty => (1, 0),
            DeviceKind::Ioc => (2, 0),
            DeviceKind::Nic => (3, 0),
            DeviceKind::Icu => (4, 0),
            DeviceKind::Dma => (5, 0),
            DeviceKind::Mmc => (6, 0),
            DeviceKind::Other(n) => (Self::OTHER_CODE, n),
        }
    }

    /// The kind of a code; `None` for an unknown kind, or a known one with a non-zero other.
    pub fn from_code(kind: u16, other: u16) -> Option<DeviceKind> {
        let k = match kind {
            1 => DeviceKind::Tty,
            2 => DeviceKind::Ioc,
            3 => DeviceKind::Nic,
            4 => DeviceKind::Icu,
            5 => DeviceKind::Dma,
            6 => DeviceKind::Mmc,
            Self::OTHER_CODE => return Some(DeviceKind::Other(other)),
            _ => return None,
        };
        (other == 0).then_some(k)
    }

    /// Short lower-case name: `tty`, `ioc`, …, `other(N)`.
    pub fn name(self) -> String {
        match self {
            DeviceKind::Tty => "tty".into(),
            DeviceKind::Ioc => "ioc".into(),
            DeviceKind::Nic => "nic".into(),
            DeviceKind::Icu => "icu".into(),
            DeviceKind::Dma => "dma".into(),
            DeviceKind::Mmc => "mmc".into(),
            DeviceKind::Other(n) => format!("other({n})"),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The fixed zones of every cluster's bank (offsets from the bank's base).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ZoneKind {
    /// The boot loader's code and data.
    BootCode,
    /// The copy of `arch_info.bin`.
    ArchInfo,
    /// The kernel's code and data.
    Kernel,
    /// The cluster's boot info (one fixed-size block).
    BootInfo,
    /// One boot stack per core.
    Stacks,
}

impl ZoneKind {
    /// Every kind, in code order.
    pub const ALL: [ZoneKind; 5] =
        [ZoneKind::BootCode, ZoneKind::ArchInfo, ZoneKind::Kernel, ZoneKind::BootInfo, ZoneKind::Stacks];

    /// Its code in the binary format: 1 boot-code, 2 arch-info, 3 kernel, 4 boot-info, 5 stacks.
    pub fn code(self) -> u16 {
        match self {
            ZoneKind::BootCode => 1,
            ZoneKind::ArchInfo => 2,
            ZoneKind::Kernel => 3,
            ZoneKind::BootInfo => 4,
            ZoneKind::Stacks => 5,
        }
    }

    /// The kind of a code.
    pub fn from_code(code: u16) -> Option<ZoneKind> {
        ZoneKind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// `boot-code`, `arch-info`, `kernel`, `boot-info`, `stacks`.
    pub fn name(self) -> &'static str {
        match self {
            ZoneKind::BootCode => "boot-code",
            ZoneKind::ArchInfo => "arch-info",
            ZoneKind::Kernel => "kernel",
            ZoneKind::BootInfo => "boot-info",
            ZoneKind::Stacks => "stacks",
        }
    }
}

impl fmt::Display for ZoneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A zone: the same offset range in every cluster's bank (as TSAR's boot loader keeps one
/// memory map for all clusters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Zone {
    /// What it holds.
    pub kind: ZoneKind,
    /// Offset from the start of a cluster's bank.
    pub base: u64,
    /// Its size: the most it may hold.
    pub max: u64,
}
