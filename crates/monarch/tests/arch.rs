//! `monarch arch show`: a description built through monarch_proto, shown; a corrupted one
//! refused with exit 2 and a message naming the problem.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use monarch_proto::arch::{ArchInfo, Bank, Cluster, Core, Device, DeviceKind, Zone, ZoneKind, encode};

mod common;
use common::monarch;

const MIB: u64 = 1 << 20;

fn machine() -> ArchInfo {
    let zone = |kind, base, max| Zone { kind, base, max };
    ArchInfo {
        name: "mesh-2x2".into(),
        x_size: 2,
        y_size: 2,
        clusters: (0..4u16)
            .map(|id| Cluster {
                id,
                x: u8::try_from(id / 2).unwrap(),
                y: u8::try_from(id % 2).unwrap(),
                failed: id == 3,
            })
            .collect(),
        cores: (0..8u32)
            .map(|gid| Core {
                gid: 100 + gid,
                cluster: u16::try_from(gid / 2).unwrap(),
                lid: u16::try_from(gid % 2).unwrap(),
                failed: gid == 1,
            })
            .collect(),
        banks: (0..4u16)
            .map(|c| Bank { cluster: c, base: u64::from(c) << 32, size: 64 * MIB, failed: c == 2 })
            .collect(),
        devices: vec![Device {
            cluster: 0,
            kind: DeviceKind::Tty,
            channels: 2,
            base: 0xf000_0000,
            size: 0x1000,
            failed: false,
        }],
        zones: vec![
            zone(ZoneKind::Kernel, 0, 2 * MIB),
            zone(ZoneKind::BootCode, 2 * MIB, MIB),
            zone(ZoneKind::ArchInfo, 3 * MIB, MIB),
            zone(ZoneKind::BootInfo, 4 * MIB, 0x1000),
            zone(ZoneKind::Stacks, 6 * MIB, MIB),
        ],
    }
}

#[test]
fn show_prints_clusters_zones_and_boot_infos() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("arch_info.bin");
    std::fs::write(&file, encode(&machine())).unwrap();
    let out = monarch(&["arch", "show", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "\"mesh-2x2\": arch_info.bin version 1.0",
        "cluster 0 at (0, 0)\n  core lid 0 gid 100\n  core lid 1 gid 101 FAILED\n  bank 0x0+0x4000000\n  device tty (2 channels) 0xf0000000+0x1000",
        "cluster 3 at (1, 1) FAILED",
        "  kernel     0x0..0x200000",
        "  cluster 0: 1 cores, memory 0x700000+0x3900000, 1 devices, 2 of 4 clusters boot\n    left out: core 101 (failed its self-test)",
        "  cluster 1: 2 cores, memory 0x100700000+0x3900000",
        "  cluster 2: does not boot: cluster 2 is left out of the boot: no memory bank passed its self-test",
        "  cluster 3: does not boot: cluster 3 is left out of the boot: failed its self-test",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let out = monarch(&["arch", "show", file.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clusters"][0]["boot_info"]["cores"], serde_json::json!([{"lid": 0, "gid": 100}]));
    assert_eq!(v["clusters"][2]["boots"], false);
}

#[test]
fn a_corrupted_or_wrong_file_exits_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("arch_info.bin");
    let mut bytes = encode(&machine());
    bytes[100] ^= 0x04;
    std::fs::write(&file, &bytes).unwrap();
    let out = monarch(&["arch", "show", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("arch_info.bin CRC-32C mismatch"), "{err}");

    let mut a = machine();
    a.cores[5].cluster = 9;
    std::fs::write(&file, encode(&a)).unwrap();
    let out = monarch(&["arch", "show", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("core descriptor 5 (gid 105): cluster 9 does not exist; clusters are 0..=3"),
        "{err}"
    );
}

#[test]
fn a_topology_of_clusters_compiles_to_a_description_show_reads() {
    let dir = tempfile::tempdir().unwrap();
    let t = common::write_topology(
        dir.path(),
        "[chassis]\nname = \"two\"\n[clusters]\nimage_size = \"12MiB\"\n\
         [[cluster]]\nid = 0\ncores = 2\nbanks = [\"32MiB\"]\n\
         [[cluster]]\nid = 1\ncores = 2\nbanks = [\"32MiB\"]\nself_test = { failed_cores = [1] }\n",
    );
    let out_file = dir.path().join("arch_info.bin");
    let out =
        monarch(&["arch", "compile", "--topology", t.to_str().unwrap(), "-o", out_file.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("2 clusters, 4 cores, 2 banks (1 failed their self-test"), "{said}");
    let out = monarch(&["arch", "show", out_file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "two", "{v}");
    // A topology without clusters: named, exit 2.
    let out = monarch(&["arch", "compile", "-o", out_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("describes no clusters"));
}
