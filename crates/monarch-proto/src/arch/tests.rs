//! The formats pinned by golden bytes, round trips of arbitrary descriptions, every rule
//! with its message, and corrupted files.

use proptest::prelude::*;

use super::boot_info::{
    BOOT_INFO_SIZE, BootCore, BootDevice, BootInfo, BootInfoView, Excluded, MAX_BOOT_CORES, Part, Span,
};
use super::error::{ArchError, Why};
use super::model::{ArchInfo, Bank, Cluster, Core, Device, DeviceKind, Zone, ZoneKind};
use super::select::{boot_info, booting_clusters};
use super::wire::{ArchView, CRC_OFFSET, crc_without_field, encode, encode_checked};

const MIB: u64 = 1 << 20;

/// The golden description: 2 clusters × 2 cores (core gid 1 failed its self-test), one
/// 256 MiB bank each, a TTY in cluster 0, the five zones.
fn golden() -> ArchInfo {
    let core = |gid, cluster, lid, failed| Core { gid, cluster, lid, failed };
    let zone = |kind, base, max| Zone { kind, base, max };
    ArchInfo {
        name: "tsar2".into(),
        x_size: 2,
        y_size: 1,
        clusters: vec![
            Cluster { id: 0, x: 0, y: 0, failed: false },
            Cluster { id: 1, x: 1, y: 0, failed: false },
        ],
        cores: vec![core(0, 0, 0, false), core(1, 0, 1, true), core(16, 1, 0, false), core(17, 1, 1, false)],
        banks: vec![
            Bank { cluster: 0, base: 0, size: 256 * MIB, failed: false },
            Bank { cluster: 1, base: 1 << 32, size: 256 * MIB, failed: false },
        ],
        devices: vec![Device {
            cluster: 0,
            kind: DeviceKind::Tty,
            channels: 4,
            base: 0xf000_0000,
            size: 0x1000,
            failed: false,
        }],
        zones: vec![
            zone(ZoneKind::BootCode, 0x20_0000, MIB),
            zone(ZoneKind::ArchInfo, 0x30_0000, MIB),
            zone(ZoneKind::Kernel, 0, 0x20_0000),
            zone(ZoneKind::BootInfo, 0x40_0000, 0x1000),
            zone(ZoneKind::Stacks, 0x60_0000, MIB),
        ],
    }
}

/// `encode(golden())`, written by hand from the format (docs/arch-info.md); only the CRC
/// was taken from a run (and checked against an independent CRC-32C below).
const GOLDEN_HEX: &str = concat!(
    // header: magic, version 1.0, header size 80, reserved, total 349, CRC
    "4d4e415243480000",
    "0100",
    "0000",
    "5000",
    "0000",
    "5d010000",
    "de0eef11",
    // x_size 2, y_size 1, name 5 bytes at string offset 0
    "02",
    "01",
    "0500",
    "00000000",
    // tables (offset, count, entry size): clusters, cores, banks, devices, zones, strings
    "50000000",
    "0200",
    "0800",
    "60000000",
    "0400",
    "0c00",
    "90000000",
    "0200",
    "1800",
    "c0000000",
    "0100",
    "2000",
    "e0000000",
    "0500",
    "1800",
    "58010000",
    "0500",
    "0100",
    // clusters: id, x, y, flags, reserved
    "0000",
    "00",
    "00",
    "00",
    "000000",
    "0100",
    "01",
    "00",
    "00",
    "000000",
    // cores: gid, cluster, lid, flags (gid 1 failed), reserved
    "00000000",
    "0000",
    "0000",
    "00",
    "000000",
    "01000000",
    "0000",
    "0100",
    "01",
    "000000",
    "10000000",
    "0100",
    "0000",
    "00",
    "000000",
    "11000000",
    "0100",
    "0100",
    "00",
    "000000",
    // banks: cluster, flags, reserved, base, size
    "0000",
    "00",
    "0000000000",
    "0000000000000000",
    "0000001000000000",
    "0100",
    "00",
    "0000000000",
    "0000000001000000",
    "0000001000000000",
    // device: cluster 0, kind tty, other 0, 4 channels, flags, reserved, base, size
    "0000",
    "0100",
    "0000",
    "0400",
    "00",
    "00000000000000",
    "000000f000000000",
    "0010000000000000",
    // zones: kind, reserved, base, max
    "0100",
    "000000000000",
    "0000200000000000",
    "0000100000000000",
    "0200",
    "000000000000",
    "0000300000000000",
    "0000100000000000",
    "0300",
    "000000000000",
    "0000000000000000",
    "0000200000000000",
    "0400",
    "000000000000",
    "0000400000000000",
    "0010000000000000",
    "0500",
    "000000000000",
    "0000600000000000",
    "0000100000000000",
    // strings: "tsar2"
    "7473617232",
);

/// The non-zero parts of cluster 0's boot info (offset, bytes); every other byte is zero.
const GOLDEN_BOOT_INFO: [(usize, &str); 4] = [
    (
        0,
        concat!(
            // magic, version 1.0, header size 80, reserved, total 4096, CRC
            "4d4e424f4f544900",
            "0100",
            "0000",
            "5000",
            "0000",
            "00100000",
            "297e120d",
            // cluster 0 at (0, 0), mesh 2×1, 2 clusters boot, 1 core, 1 device, 1 excluded
            "0000",
            "00",
            "00",
            "02",
            "01",
            "0200",
            "0100",
            "0100",
            "0100",
            "0000",
            // bank 0 + 256 MiB; memory past the zones (0x700000) to the bank's end
            "0000000000000000",
            "0000001000000000",
            "0000700000000000",
            "0000900f00000000",
            // the arch_info.bin's CRC, reserved
            "de0eef11",
            "00000000",
        ),
    ),
    // the core: gid 0, lid 0 (gid 1 failed)
    (80, "0000000000000000"),
    // the TTY
    (592, concat!("0100", "0000", "0400", "0000", "000000f000000000", "0010000000000000")),
    // excluded: a core (2), failed its self-test (1), cluster 0, gid 1
    (1360, concat!("02", "01", "0000", "01000000")),
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

/// CRC-32C, bit by bit (Castagnoli, reflected 0x82f63b78): an independent check of the
/// CRCs the golden bytes hold.
fn crc32c_slow(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

fn refresh_crc(bytes: &mut [u8]) {
    let crc = crc_without_field(bytes, CRC_OFFSET);
    bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

fn err(arch: &ArchInfo) -> String {
    ArchView::parse(&encode(arch)).unwrap_err().to_string()
}

fn patched(at: usize, with: &[u8]) -> String {
    let mut bytes = encode(&golden());
    bytes[at..at + with.len()].copy_from_slice(with);
    refresh_crc(&mut bytes);
    ArchView::parse(&bytes).unwrap_err().to_string()
}

#[test]
fn golden_arch_info_bytes() {
    let bytes = encode(&golden());
    assert_eq!(hex(&bytes), GOLDEN_HEX.replace(' ', ""));
    let mut zeroed = bytes.clone();
    zeroed[CRC_OFFSET..CRC_OFFSET + 4].fill(0);
    assert_eq!(crc32c_slow(&zeroed), u32::from_le_bytes(bytes[20..24].try_into().unwrap()));
    let view = ArchView::parse(&bytes).unwrap();
    assert_eq!(view.to_owned(), golden());
    assert_eq!(
        (view.name(), view.clusters().len(), view.cores().len(), view.zones_end()),
        ("tsar2", 2, 4, 0x70_0000)
    );
    assert_eq!(view.cores()[3].gid(), 17);
    assert!(view.cores()[1].failed());
}

#[test]
fn golden_boot_info_bytes() {
    let golden_bytes = unhex(GOLDEN_HEX);
    let view = ArchView::parse(&golden_bytes).unwrap();
    let info = boot_info(&view, 0).unwrap();
    assert_eq!(
        info,
        BootInfo {
            version: 1,
            cluster: 0,
            x: 0,
            y: 0,
            x_size: 2,
            y_size: 1,
            cluster_count: 2,
            cores: vec![BootCore { lid: 0, gid: 0 }],
            bank: Span { base: 0, size: 256 * MIB },
            memory: Span { base: 0x70_0000, size: 256 * MIB - 0x70_0000 },
            devices: vec![BootDevice { kind: DeviceKind::Tty, channels: 4, base: 0xf000_0000, size: 0x1000 }],
            excluded: vec![Excluded { what: Part::Core, cluster: 0, id: 1, why: Why::SelfTest }],
            arch_crc: 0x11ef_0ede,
        }
    );
    let bytes = info.encode().unwrap();
    let mut expected = vec![0u8; BOOT_INFO_SIZE];
    for (at, h) in GOLDEN_BOOT_INFO {
        let b = unhex(h);
        expected[at..at + b.len()].copy_from_slice(&b);
    }
    assert_eq!(hex(&bytes), hex(&expected));
    let mut zeroed = bytes.clone();
    zeroed[20..24].fill(0);
    assert_eq!(crc32c_slow(&zeroed), u32::from_le_bytes(bytes[20..24].try_into().unwrap()));
    // What a core reads at its entry.
    let b = BootInfoView::parse(&bytes).unwrap();
    assert_eq!((b.cluster(), b.core_count(), b.core_index(0), b.core_index(1)), (0, 1, Some(0), None));
    assert_eq!(b.memory(), Span { base: 0x70_0000, size: 0x0f90_0000 });
    assert_eq!(b.to_owned(), info);
    // Cluster 1: both cores, no device, nothing excluded.
    let one = boot_info(&view, 1).unwrap();
    assert_eq!(one.cores, vec![BootCore { lid: 0, gid: 16 }, BootCore { lid: 1, gid: 17 }]);
    assert_eq!(one.memory, Span { base: (1 << 32) + 0x70_0000, size: 256 * MIB - 0x70_0000 });
    assert!(one.devices.is_empty() && one.excluded.is_empty());
}

#[test]
fn a_file_in_a_bigger_zone_is_read_to_its_total_size() {
    let mut bytes = encode(&golden());
    bytes.extend_from_slice(&[0xa5; 100]);
    assert_eq!(ArchView::parse(&bytes).unwrap().as_bytes().len(), 349);
}

#[test]
fn every_bit_flip_and_truncation_is_refused() {
    let bytes = encode(&golden());
    for bit in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(ArchView::parse(&b).is_err(), "bit {bit} flipped was accepted");
    }
    for len in 0..bytes.len() {
        assert!(ArchView::parse(&bytes[..len]).is_err(), "truncated to {len} was accepted");
    }
    let info = boot_info(&ArchView::parse(&bytes).unwrap(), 0).unwrap().encode().unwrap();
    for bit in 0..info.len() * 8 {
        let mut b = info.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(BootInfoView::parse(&b).is_err(), "boot info bit {bit} flipped was accepted");
    }
    assert!(BootInfoView::parse(&info[..BOOT_INFO_SIZE - 1]).is_err());
}

#[test]
fn header_errors_say_what_is_wrong() {
    let bytes = encode(&golden());
    assert_eq!(
        ArchView::parse(&bytes[..10]).unwrap_err().to_string(),
        "arch_info.bin is 10 bytes, shorter than the 80 bytes it needs at least"
    );
    let e = ArchView::parse(&bytes[..300]).unwrap_err().to_string();
    assert_eq!(e, "arch_info.bin says it is 349 bytes, but 300 bytes are given (truncated?)");
    let mut b = bytes.clone();
    b[100] ^= 0x10;
    assert!(
        ArchView::parse(&b)
            .unwrap_err()
            .to_string()
            .starts_with("arch_info.bin CRC-32C mismatch (stored 11ef0ede, computed ")
    );
    assert_eq!(
        patched(0, b"\0ELF"),
        r#"not arch_info.bin: it starts with "\x00ELFCH\x00\x00", not "MNARCH\0\0""#
    );
    assert_eq!(
        patched(8, &[2, 0, 3, 0]),
        "arch_info.bin format version 2.3 is not readable by this monarch, which reads version 1.x: use a monarch that reads version 2"
    );
    assert_eq!(
        patched(12, &[72, 0]),
        "arch_info.bin header size 72 is impossible for version 1.0 (version 1.0's header is 80 bytes; a newer minor version's may only be longer)"
    );
    assert_eq!(patched(14, &[1]), "arch_info.bin header byte 14 is reserved and not zero");
    assert_eq!(
        patched(40, &[0x50, 0, 0, 0]),
        "the core table (4 entries of 12 bytes at offset 80): overlaps the cluster table"
    );
    assert_eq!(
        patched(40, &[0x50, 1, 0, 0]),
        "the core table (4 entries of 12 bytes at offset 336): ends at 384, past the end of the 349-byte file"
    );
    assert_eq!(
        patched(46, &[16, 0]),
        "the core table (4 entries of 16 bytes at offset 96): version 1's entries are 12 bytes"
    );
    assert_eq!(patched(344, &[0xff]), "the machine's name (5 bytes at string offset 0): not UTF-8");
    assert_eq!(
        patched(26, &[6, 0]),
        "the machine's name (6 bytes at string offset 0): not inside the string table"
    );
}

#[test]
fn a_newer_minor_version_is_read_and_what_it_added_ignored() {
    // Minor 1 put a reserved byte and a flag bit to use: a 1.0 reader reads on.
    let mut b = encode(&golden());
    b[10] = 1;
    b[14] = 7; // header reserved
    b[80 + 4] = 0x80; // cluster 0's flags: an unknown bit
    b[80 + 5] = 1; // cluster 0's reserved
    refresh_crc(&mut b);
    let view = ArchView::parse(&b).unwrap();
    assert_eq!(view.version(), (1, 1));
    assert_eq!(view.to_owned(), golden());
    // The same in a 1.0 file is refused.
    assert_eq!(patched(84, &[0x80]), "cluster descriptor 0 (id 0): unknown flag bits 0x80");
    assert_eq!(
        patched(85, &[0, 1]),
        "cluster descriptor 0 (id 0): reserved byte 6 of the descriptor is not zero"
    );
}

#[test]
fn descriptor_kinds_are_checked() {
    // device 0's kind at 192 + 2, its other at 192 + 4; zone 0's kind at 224
    assert_eq!(patched(194, &[9, 0]), "device descriptor 0 (kind code 9, cluster 0): unknown kind code 9");
    assert_eq!(
        patched(196, &[3, 0]),
        "device descriptor 0 (tty, cluster 0): kind 1 with other code 3 (only kind `other` has one)"
    );
    assert_eq!(patched(224, &[9, 0]), "zone descriptor 0 (kind code 9): unknown kind code 9");
    let mut a = golden();
    a.devices[0].kind = DeviceKind::Other(300);
    assert_eq!(ArchView::parse(&encode(&a)).unwrap().to_owned(), a);
}

#[test]
fn every_rule_has_its_message() {
    type Change = Box<dyn Fn(&mut ArchInfo)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "core descriptor 3 (gid 17): cluster 9 does not exist; clusters are 0..=1",
            Box::new(|a| a.cores[3].cluster = 9),
        ),
        (
            "bank descriptor 1 (cluster 5): cluster 5 does not exist; clusters are 0..=1",
            Box::new(|a| a.banks[1].cluster = 5),
        ),
        (
            "device descriptor 0 (tty, cluster 4): cluster 4 does not exist; clusters are 0, 3",
            Box::new(|a| {
                a.devices[0].cluster = 4;
                a.clusters[1].id = 3;
                a.cores[2].cluster = 3;
                a.cores[3].cluster = 3;
                a.banks[1].cluster = 3;
            }),
        ),
        (
            "cluster descriptor 1 (id 0): cluster id 0 is also cluster descriptor 0's",
            Box::new(|a| a.clusters[1].id = 0),
        ),
        (
            "cluster descriptor 1 (id 1): position (0, 0) is also cluster descriptor 0's",
            Box::new(|a| a.clusters[1].x = 0),
        ),
        ("cluster descriptor 1 (id 1): position (1, 0) is outside the 1×1 mesh", Box::new(|a| a.x_size = 1)),
        (
            "the description has no cluster",
            Box::new(|a| {
                a.clusters.clear();
                a.cores.clear();
                a.banks.clear();
                a.devices.clear();
            }),
        ),
        ("core descriptor 2 (gid 0): gid 0 is also core descriptor 0's", Box::new(|a| a.cores[2].gid = 0)),
        (
            "core descriptor 1 (gid 1): lid 0 in cluster 0 is also core descriptor 0's",
            Box::new(|a| a.cores[1].lid = 0),
        ),
        (
            "cluster descriptor 1 (id 1): its 2 cores' lids are not 0..=1: lid 2 is beyond them (lid 1 is missing)",
            Box::new(|a| a.cores[3].lid = 2),
        ),
        (
            "cluster descriptor 1 (id 1): it has no core (a failed core would still count)",
            Box::new(|a| a.cores.truncate(2)),
        ),
        (
            "cluster descriptor 1 (id 1): it has no memory bank (a failed bank would still count)",
            Box::new(|a| a.banks.truncate(1)),
        ),
        (
            "bank descriptor 1 (cluster 1): base 0xffffffffffffff00 + size 0x10000000 overflows 64 bits",
            Box::new(|a| a.banks[1].base = !0xff),
        ),
        (
            "bank descriptor 0 (cluster 0): its 0x100000 bytes cannot hold the zones, which end at 0x700000",
            Box::new(|a| a.banks[0].size = MIB),
        ),
        (
            "device descriptor 0 (tty, cluster 0): base 0xffffffffffffffff + size 0x1000 overflows 64 bits",
            Box::new(|a| a.devices[0].base = u64::MAX),
        ),
        (
            "zone descriptor 2 (kernel): overlaps zone 1 (arch-info) at 0x300000..0x400000",
            Box::new(|a| a.zones[2] = Zone { kind: ZoneKind::Kernel, base: 0x30_0000, max: MIB }),
        ),
        (
            "zone descriptor 4 (stacks): base 0xfffffffffffff000 + size 0x100000 overflows 64 bits",
            Box::new(|a| a.zones[4].base = !0xfff),
        ),
        (
            "zone descriptor 4 (kernel): zone descriptor 2 is also a kernel zone",
            Box::new(|a| a.zones[4].kind = ZoneKind::Kernel),
        ),
        (
            "the description has no stacks zone",
            Box::new(|a| {
                a.zones.pop();
            }),
        ),
        (
            "zone descriptor 3 (boot-info): 0x10 bytes cannot hold a boot info (0x1000 bytes)",
            Box::new(|a| a.zones[3].max = 16),
        ),
        (
            "zone descriptor 1 (arch-info): 0x100 bytes cannot hold this description (0x15d bytes)",
            Box::new(|a| a.zones[1].max = 256),
        ),
    ];
    for (expected, change) in cases {
        let mut a = golden();
        change(&mut a);
        assert_eq!(err(&a), expected);
        assert_eq!(encode_checked(&a).unwrap_err().to_string(), expected);
    }
    // Failed parts still count as present; a failed bank may be any size.
    let mut a = golden();
    a.cores[2].failed = true;
    a.cores[3].failed = true;
    a.banks[0].failed = true;
    a.banks[0].size = 0;
    ArchView::parse(&encode(&a)).unwrap();
}

#[test]
fn failed_hardware_is_left_out_of_every_boot_info() {
    let mut a = golden();
    // Cluster 1 loses its cores: every boot info lists it, its own boot info is refused.
    a.cores[2].failed = true;
    a.cores[3].failed = true;
    a.devices[0].failed = true;
    a.banks.push(Bank { cluster: 0, base: 0x8000_0000, size: 0, failed: true });
    a.banks.push(Bank { cluster: 0, base: 0x9000_0000, size: 256 * MIB, failed: false });
    let bytes = encode(&a);
    let view = ArchView::parse(&bytes).unwrap();
    assert_eq!(booting_clusters(&view), vec![0]);
    assert_eq!(
        boot_info(&view, 1).unwrap_err().to_string(),
        "cluster 1 is left out of the boot: no core passed its self-test"
    );
    assert_eq!(boot_info(&view, 7).unwrap_err().to_string(), "cluster 7 does not exist; clusters are 0..=1");
    let info = boot_info(&view, 0).unwrap();
    assert_eq!(info.cluster_count, 1);
    assert_eq!(info.bank, Span { base: 0, size: 256 * MIB }, "the first tested bank");
    assert!(info.devices.is_empty());
    assert_eq!(
        info.excluded,
        vec![
            Excluded { what: Part::Cluster, cluster: 1, id: 1, why: Why::NoTestedCore },
            Excluded { what: Part::Core, cluster: 0, id: 1, why: Why::SelfTest },
            Excluded { what: Part::Bank, cluster: 0, id: 2, why: Why::SelfTest },
            Excluded { what: Part::Device, cluster: 0, id: 0, why: Why::SelfTest },
        ]
    );
    assert_eq!(BootInfoView::parse(&info.encode().unwrap()).unwrap().to_owned(), info);
    // A failed cluster, and one whose only bank failed.
    let mut a = golden();
    a.clusters[1].failed = true;
    let view_bytes = encode(&a);
    let view = ArchView::parse(&view_bytes).unwrap();
    assert_eq!(
        boot_info(&view, 1).unwrap_err().to_string(),
        "cluster 1 is left out of the boot: failed its self-test"
    );
    let mut a = golden();
    a.banks[1].failed = true;
    let view_bytes = encode(&a);
    let view = ArchView::parse(&view_bytes).unwrap();
    assert_eq!(boot_info(&view, 1).unwrap_err(), ArchError::Excluded { cluster: 1, why: Why::NoTestedBank });
}

#[test]
fn a_boot_info_holds_at_most_its_maximum() {
    let mut a = golden();
    a.cores[1].failed = false;
    for lid in 2..=u16::try_from(MAX_BOOT_CORES).unwrap() {
        a.cores.push(Core { gid: 1000 + u32::from(lid), cluster: 0, lid, failed: false });
    }
    let bytes = encode(&a);
    let view = ArchView::parse(&bytes).unwrap();
    assert_eq!(
        boot_info(&view, 0).unwrap_err().to_string(),
        "cluster 0 has 65 tested cores; a boot info holds at most 64"
    );
    a.cores[1].failed = true;
    let bytes = encode(&a);
    let view = ArchView::parse(&bytes).unwrap();
    assert_eq!(boot_info(&view, 0).unwrap().cores.len(), MAX_BOOT_CORES);
}

#[test]
fn boot_info_header_errors() {
    let view_bytes = encode(&golden());
    let view = ArchView::parse(&view_bytes).unwrap();
    let good = boot_info(&view, 0).unwrap().encode().unwrap();
    let patch = |at: usize, with: &[u8]| {
        let mut b = good.clone();
        b[at..at + with.len()].copy_from_slice(with);
        let crc = crc_without_field(&b, 20);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        BootInfoView::parse(&b).unwrap_err().to_string()
    };
    assert_eq!(
        patch(8, &[2, 0]),
        "boot info format version 2.0 is not readable by this monarch, which reads version 1.x: use a monarch that reads version 2"
    );
    assert_eq!(patch(32, &[65, 0]), "boot info: 65 cores, more than the 64 a boot info holds");
    assert_eq!(patch(88, &[1]), "boot info: byte 88 is past the used entries and not zero");
    assert_eq!(patch(1360, &[9]), "boot info: excluded entry 0: unknown part 9 or reason 1");
    assert_eq!(
        patch(64, &[0, 0, 0, 0x20]),
        "boot info: memory 0x700000+0x20000000 is not inside its bank 0x0+0x10000000"
    );
    assert_eq!(
        BootInfoView::parse(&view_bytes).unwrap_err().to_string(),
        r#"not boot info: it starts with "MNARCH\x00\x00", not "MNBOOTI\0""#
    );
    assert_eq!(
        BootInfoView::parse(&good[..4095]).unwrap_err().to_string(),
        "boot info is 4095 bytes, shorter than the 4096 bytes it needs at least"
    );
}

/// A small deterministic generator (SplitMix64): proptest picks the seed.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn coin(&mut self) -> bool {
        self.below(4) == 0
    }
}

/// An arbitrary description that follows every rule, in shuffled table orders.
fn arbitrary_arch(seed: u64, name: String) -> ArchInfo {
    let mut g = Gen(seed);
    let x_size = 1 + g.below(4) as u8;
    let y_size = 1 + g.below(4) as u8;
    let mut places: Vec<(u8, u8)> = (0..x_size).flat_map(|x| (0..y_size).map(move |y| (x, y))).collect();
    let salt = g.next() as u16;
    let gid_salt = g.next() as u32;
    let mut zones = Vec::new();
    let mut at = 0;
    for kind in ZoneKind::ALL {
        at += g.below(0x1000);
        let max = match kind {
            ZoneKind::ArchInfo => MIB + g.below(MIB),
            ZoneKind::BootInfo => 4096 + g.below(4096),
            _ => g.below(MIB),
        };
        zones.push(Zone { kind, base: at, max });
        at += max;
    }
    let mut a = ArchInfo { name, x_size, y_size, zones, ..ArchInfo::default() };
    let clusters = 1 + g.below(places.len() as u64) as usize;
    for _ in 0..clusters {
        let (x, y) = places.swap_remove(g.below(places.len() as u64) as usize);
        let id = (u16::from(x) << 4 | u16::from(y)) ^ salt;
        a.clusters.push(Cluster { id, x, y, failed: g.coin() });
        for lid in 0..1 + g.below(4) as u16 {
            let gid = (u32::from(id) << 8 | u32::from(lid)) ^ gid_salt;
            a.cores.push(Core { gid, cluster: id, lid, failed: g.coin() });
        }
        for _ in 0..1 + g.below(2) {
            let failed = g.coin();
            let size = if failed { g.below(u64::MAX >> 20) } else { at + g.below(1 << 40) };
            a.banks.push(Bank { cluster: id, base: g.below(1 << 48), size, failed });
        }
        for _ in 0..g.below(3) {
            let kind = match g.below(7) {
                0 => DeviceKind::Tty,
                1 => DeviceKind::Ioc,
                2 => DeviceKind::Nic,
                3 => DeviceKind::Icu,
                4 => DeviceKind::Dma,
                5 => DeviceKind::Mmc,
                _ => DeviceKind::Other(g.next() as u16),
            };
            let (base, size) = (g.below(1 << 48), g.below(1 << 20));
            a.devices.push(Device {
                cluster: id,
                kind,
                channels: g.next() as u16,
                base,
                size,
                failed: g.coin(),
            });
        }
    }
    for table in 0..3 {
        let n = [a.cores.len(), a.banks.len(), a.devices.len()][table];
        for i in (1..n).rev() {
            let j = g.below(i as u64 + 1) as usize;
            match table {
                0 => a.cores.swap(i, j),
                1 => a.banks.swap(i, j),
                _ => a.devices.swap(i, j),
            }
        }
    }
    let n = a.zones.len();
    for i in (1..n).rev() {
        let j = g.below(i as u64 + 1) as usize;
        a.zones.swap(i, j);
    }
    a
}

proptest! {
    #[test]
    fn round_trip(seed in any::<u64>(), name in "\\PC{0,12}") {
        let a = arbitrary_arch(seed, name);
        let bytes = encode_checked(&a).unwrap();
        let view = ArchView::parse(&bytes).unwrap();
        prop_assert_eq!(view.to_owned(), a);
        for c in view.clusters() {
            match boot_info(&view, c.id()) {
                Ok(info) => {
                    let block = info.encode().unwrap();
                    let b = BootInfoView::parse(&block).unwrap();
                    prop_assert_eq!(b.to_owned(), info.clone());
                    prop_assert_eq!(usize::from(b.cluster_count()), booting_clusters(&view).len());
                    prop_assert!(info.cores.iter().all(|core| view.cores().iter().any(|d| d.gid() == core.gid && !d.failed())));
                    prop_assert_eq!(info.memory.base + info.memory.size, info.bank.base + info.bank.size);
                }
                Err(ArchError::Excluded { .. }) => prop_assert!(!booting_clusters(&view).contains(&c.id())),
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}

#[test]
fn a_huge_cluster_is_checked_without_quadratic_work() {
    // 65 000 cores in one cluster, the last lid off by one: the error comes at once.
    let mut a = golden();
    a.cores.retain(|c| c.cluster == 1);
    a.cores.extend((2..65_000u16).map(|lid| Core {
        gid: 100_000 + u32::from(lid),
        cluster: 1,
        lid,
        failed: false,
    }));
    a.cores.extend([Core { gid: 0, cluster: 0, lid: 0, failed: false }]);
    a.cores[64_999].lid = 65_000;
    let start = std::time::Instant::now();
    assert_eq!(
        err(&a),
        "cluster descriptor 1 (id 1): its 65000 cores' lids are not 0..=64999: lid 65000 is beyond them (lid 64999 is missing)"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}
