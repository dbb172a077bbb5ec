use super::*;
use crate::handoff::Handoff;
use monarch_proto::Algo;
use monarch_proto::mac::Mac;
use std::path::Path;
use std::time::Duration;

fn parse(src: &str) -> Result<Topology, TopologyError> {
    Topology::parse(src, Path::new("t.toml"), Path::new("/nonexistent"))
}

fn errors(src: &str) -> String {
    parse(src).unwrap_err().to_string()
}

const HEAD: &str = "[chassis]\nname = \"t\"\n[[processor]]\nid = \"mm\"\nrole = \"monarch\"\n";

#[test]
fn the_builtin_chassis_is_the_reference_design() {
    let t = Topology::builtin().unwrap();
    assert_eq!(t.managers.len(), 2, "two management modules (monarch election)");
    let table: Vec<_> = t.managers.iter().enumerate().map(|(i, m)| m.candidate(i)).collect();
    let v = monarch_proto::election::arbitrate(&table, t.election.pinned).unwrap();
    assert_eq!(t.managers[v.winner].id, "mgmt", "equal BOOT_IDs: the lowest slot wins");
    assert_eq!(t.secondaries.len(), 5);
    let direct = t.secondaries.iter().filter(|s| s.path == PortPath::Direct).count();
    assert_eq!(direct, 3, "route card + two line cards on direct ports");
    assert!(
        t.secondaries
            .iter()
            .all(|s| s.image == ImageSource::Builtin { size: 30 << 20, banner: s.image_banner() })
    );
    assert!(t.run_dir_is_temporary);
}

impl Secondary {
    fn image_banner(&self) -> String {
        match &self.image {
            ImageSource::Builtin { banner, .. } => banner.clone(),
            ImageSource::File(_) => String::new(),
        }
    }
}

#[test]
fn duplicate_ids_are_reported_with_their_line() {
    let e = errors(&format!(
        "{HEAD}[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\n[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\n"
    ));
    assert!(e.contains("t.toml:11: processor \"a\".id: duplicate processor id"), "{e}");
}

#[test]
fn unknown_switch_names_the_defined_ones() {
    let e = errors(&format!(
        "{HEAD}[[switch]]\nid = \"sw0\"\n[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nswitch = \"sw9\"\n"
    ));
    assert!(e.contains(":12: processor \"a\".switch: switch \"sw9\" is not defined (defined: sw0)"), "{e}");
}

#[test]
fn a_secondary_without_an_image_is_refused() {
    let e = errors(&format!("{HEAD}[[processor]]\nid = \"a\"\nrole = \"secondary\"\n"));
    assert!(e.contains("processor \"a\".image: a secondary needs an image"), "{e}");
}

#[test]
fn an_image_larger_than_its_window_is_refused_with_the_size_to_use() {
    let e = errors(&format!(
        "{HEAD}[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nimage_size = \"8MiB\"\nmode = \"pull\"\nwindow = {{ size = \"4MiB\" }}\n"
    ));
    assert!(e.contains("processor \"a\".window.size: the image is 8MiB but the window's data area is 4MiB; in pull mode the whole image sits in the window: make window.size at least 8MiB"), "{e}");
}

#[test]
fn unknown_fields_and_syntax_errors_have_lines() {
    let e = errors(&format!("{HEAD}colour = \"red\"\n"));
    assert!(e.contains("t.toml:6: syntax: unknown field `colour`"), "{e}");
    assert!(e.contains("docs/topology.md"), "{e}");
    let e = errors("[chassis\n");
    assert!(e.starts_with("t.toml:1: syntax:"), "{e}");
}

#[test]
fn external_agents_need_a_window_path() {
    let e = errors(&format!(
        "{HEAD}[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nlaunch = \"external\"\n"
    ));
    assert!(e.contains("processor \"a\".window.path: an external agent needs"), "{e}");
}

#[test]
fn bad_values_name_the_field_and_the_accepted_ones() {
    let e = errors(&format!(
        "{HEAD}[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nmode = \"shove\"\nchecksum = \"md5\"\nattempts = 0\ntimeouts = {{ verify = \"soon\" }}\nimage_size = \"lots\"\n"
    ));
    for needle in [
        "mode: unknown mode \"shove\"",
        "checksum: unknown checksum \"md5\"",
        "attempts: attempts must be at least 1",
        "timeouts.verify: \"soon\" is not a duration",
        "image_size: \"lots\" is not a size",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in\n{e}");
    }
}

#[test]
fn no_monarch_no_secondaries_unused_switch_and_shared_slots() {
    let e = errors("[chassis]\nname = \"t\"\n[[switch]]\nid = \"s\"\n");
    assert!(e.contains("no processor has role = \"monarch\""), "{e}");
    assert!(e.contains("nothing to boot"), "{e}");
    assert!(e.contains("switch \"s\": no secondary sits behind this switch"), "{e}");
    let e = errors(&format!(
        "{HEAD}slot = 1\n[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nslot = 1\n"
    ));
    assert!(e.contains("slot 1 is already taken by \"mm\""), "{e}");
}

#[test]
fn election_settings_are_checked() {
    const TWO: &str = "[chassis]\nname = \"t\"\n[[processor]]\nid = \"m0\"\nrole = \"monarch\"\nslot = 0\n[[processor]]\nid = \"m1\"\nrole = \"monarch\"\nslot = 1\nboot_id = 5\nself_test = \"fail\"\n";
    let sec = "[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\n";
    let t = parse(&format!(
        "{TWO}{sec}[election]\nmonarch = \"m1\"\nheartbeat = \"20ms\"\ntimeout = \"100ms\"\n"
    ))
    .unwrap();
    assert_eq!(t.election.pinned, Some(1));
    assert_eq!(t.election.heartbeat, Duration::from_millis(20));
    assert!(t.managers[1].fails_self_test);
    let table: Vec<_> = t.managers.iter().enumerate().map(|(i, m)| m.candidate(i)).collect();
    let v = monarch_proto::election::arbitrate(&table, t.election.pinned).unwrap();
    assert_eq!(v.winner, 0, "the pinned candidate failed its self-test");

    let e = errors(&format!(
        "{TWO}{sec}[election]\nmonarch = \"nope\"\ntimeout = \"60ms\"\nheartbeat = \"50ms\"\n"
    ));
    assert!(
        e.contains("election.monarch: \"nope\" is not a management processor; use one of: m0, m1"),
        "{e}"
    );
    assert!(e.contains("must be at least 3 heartbeats"), "{e}");
    let e = errors(&format!("{TWO}{sec}self_test = \"fail\"\n"));
    assert!(e.contains("only a management processor"), "{e}");
    let e = errors(&format!("{TWO}{sec}window = {{ memfd = true }}\n"));
    assert!(e.contains("a new monarch could not take it over"), "{e}");
    let e = errors(&format!("{HEAD}self_test = \"maybe\"\n{sec}"));
    assert!(e.contains("unknown self_test \"maybe\""), "{e}");
}

#[test]
fn missing_image_file_is_reported() {
    let e = errors(&format!("{HEAD}[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"nope.img\"\n"));
    assert!(e.contains("processor \"a\".image: cannot read /nonexistent/nope.img"), "{e}");
}

fn netboot(id: &str, extra: &str) -> String {
    format!(
        "[[processor]]\nid = \"{id}\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nimage_size = \"8MiB\"\nlaunch = \"netboot\"\n{extra}\n"
    )
}

#[test]
fn a_netboot_secondary_has_a_stable_mac_an_optional_disk_and_no_window() {
    let dir = tempfile::tempdir().unwrap();
    let src = format!(
        "{HEAD}[defaults]\nmode = \"pull\"\nattempts = 3\n{}{}{}",
        netboot("nb0", ""),
        netboot("nb1", "mac = \"52:54:00:AA:bb:01\"\ndisk = \"disks/nb1.img\"\ndisk_size = \"64MiB\""),
        "[[processor]]\nid = \"w\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\n"
    );
    let t = Topology::parse(&src, Path::new("t.toml"), dir.path()).unwrap();
    let [nb0, nb1, w] = &t.secondaries[..] else { panic!("three secondaries") };
    let Launch::Netboot(spec0) = &nb0.launch else { panic!("nb0 is booted over the network") };
    assert_eq!(spec0.mac, derived_mac("nb0"));
    assert_eq!(&spec0.mac.octets()[..3], &[0x52, 0x54, 0x00]);
    assert_ne!(derived_mac("nb0"), derived_mac("nb1"));
    assert_eq!((spec0.disk.as_ref(), spec0.disk_size), (None, None));
    assert_eq!((nb0.launch.name(), nb0.handoff), ("netboot", Handoff::Exec));
    assert_eq!((nb0.window.data_size, nb0.attempts), (0, 1), "no window, one attempt");
    assert_eq!(nb0.window.path.with_extension("log"), t.run_dir.join("nb0.log"));
    let Launch::Netboot(spec1) = &nb1.launch else { panic!("nb1 is booted over the network") };
    assert_eq!(spec1.mac, Mac::new([0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01]));
    assert_eq!(
        spec1.disk.as_deref(),
        Some(dir.path().join("disks/nb1.img").as_path()),
        "relative to the file"
    );
    assert_eq!(spec1.disk_size, Some(64 << 20));
    assert_eq!(w.launch, Launch::Process { memfd: false });
}

#[test]
fn window_fields_on_a_netboot_secondary_and_netboot_fields_elsewhere_are_refused() {
    let e = errors(&format!(
        "{HEAD}mac = \"52:54:00:00:00:01\"\n{}{}{}{}[[processor]]\nid = \"w\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\ndisk = \"x.img\"\n",
        netboot("a", "window = { size = \"64MiB\" }\nmode = \"push\"\nattempts = 2\nhandoff = \"kexec\""),
        netboot("b", "mac = \"01:00:5e:00:00:01\"\nfault = { kill_agent_during_copy = true }"),
        netboot("c", "mac = \"nope\"\ndisk_size = \"64MiB\""),
        netboot("d", "disk = \"missing.img\""),
    ));
    for needle in [
        "processor \"mm\".mac: a monarch has no mac",
        "processor \"a\".window: a netboot secondary has no window",
        "processor \"a\".mode: a netboot secondary has no window",
        "processor \"a\".attempts: a netboot secondary makes one attempt",
        "processor \"a\".handoff: a netboot secondary hands off with \"exec\"",
        "processor \"b\".mac: \"01:00:5e:00:00:01\" is a multicast",
        "processor \"b\".fault: a netboot secondary supports fault = { corrupt_attempts = 1 } only",
        "processor \"c\".mac: \"nope\" is not a MAC address",
        "processor \"c\".disk_size: disk_size is the size of the machine's disk file: set disk",
        "processor \"d\".disk: /nonexistent/missing.img does not exist; give disk_size",
        "processor \"w\".disk: disk applies to a secondary booted over the network: set launch = \"netboot\"",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in\n{e}");
    }
    assert!(!e.contains("kexec replaces the running kernel"), "{e}");
}

#[test]
fn netboot_macs_and_disks_are_one_per_machine_and_a_disk_must_hold_two_slots() {
    let e = errors(&format!(
        "{HEAD}{}{}{}",
        netboot("a", "mac = \"52:54:00:00:00:01\"\ndisk = \"d.img\"\ndisk_size = \"64MiB\""),
        netboot("b", "mac = \"52:54:00:00:00:01\"\ndisk = \"d.img\"\ndisk_size = \"64MiB\""),
        netboot("c", "disk = \"c.img\"\ndisk_size = \"4MiB\""),
    ));
    for needle in [
        "processor \"b\".mac: MAC 52:54:00:00:00:01 is already used by \"a\"",
        "processor \"b\".disk: disk /nonexistent/d.img is already used by \"a\"",
        "processor \"c\".disk_size: 4MiB cannot hold two A/B slots of a 8MiB image",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in\n{e}");
    }
}

#[test]
fn defaults_apply_and_processors_override_them() {
    let t = parse(&format!("{HEAD}[defaults]\nattempts = 5\nchecksum = \"blake3\"\ntimeouts = {{ verify = \"2s\" }}\n[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nattempts = 2\ntimeouts = {{ handoff = \"1s\" }}\n")).unwrap();
    let a = &t.secondaries[0];
    assert_eq!(a.attempts, 2);
    assert_eq!(a.algo, Algo::Blake3);
    assert_eq!(a.timeouts.verify, Duration::from_secs(2));
    assert_eq!(a.timeouts.handoff, Duration::from_secs(1));
    assert_eq!(a.window.data_size, 31 << 20, "push: the whole image as a ring, plus the manifest");
}

/// A machine that is not there: one image file of 8 MiB, VM files and disks nowhere.
struct Elsewhere;

impl Environment for Elsewhere {
    fn image_file(&self, path: &Path) -> Result<u64, ImageFileProblem> {
        if path == Path::new("/images/os.bin") {
            Ok(8 << 20)
        } else {
            Err(ImageFileProblem::EmptyOrNotRegular)
        }
    }
    fn is_file(&self, _: &Path) -> bool {
        false
    }
    fn exists(&self, _: &Path) -> bool {
        false
    }
    fn is_dir(&self, path: &Path) -> bool {
        path == Path::new("/")
    }
    fn vm_dir(&self) -> std::path::PathBuf {
        "/elsewhere/vm".into()
    }
    fn payload_program_len(&self) -> Option<u64> {
        Some(3 << 20)
    }
    fn read_small(&self, _: &Path, _: usize) -> std::io::Result<Vec<u8>> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn window_file(&self, path: &Path, _: u64) -> WindowFile {
        match path.to_str() {
            Some("/images/os.bin") => WindowFile::NotAWindow("a regular file"),
            Some("/old/run.win") => WindowFile::Window,
            Some(p) if p.starts_with("/nowhere/") => WindowFile::FolderMissing,
            _ => WindowFile::Absent,
        }
    }
}

#[test]
fn a_window_path_may_not_name_a_file_that_is_not_a_window_nor_a_missing_folder() {
    let sec = |id: &str, path: &str| {
        format!(
            "[[processor]]\nid = \"{id}\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nwindow = {{ path = \"{path}\" }}\n"
        )
    };
    let src = format!(
        "{HEAD}{}{}{}{}",
        sec("a", "/images/os.bin"),
        sec("b", "/nowhere/b.win"),
        sec("c", "/old/run.win"),
        sec("d", "/dev/shm/d.win")
    );
    let e =
        Topology::parse_in(&src, Path::new("t.toml"), Path::new("/"), &Elsewhere).unwrap_err().to_string();
    assert!(e.contains("processor \"a\".window.path: /images/os.bin (\"/images/os.bin\") is a regular file, not a monarch window; monarch will not overwrite it"), "{e}");
    assert!(e.contains("processor \"b\".window.path: the folder of /nowhere/b.win does not exist"), "{e}");
    assert!(
        !e.contains("processor \"c\"") && !e.contains("processor \"d\""),
        "a window left by a run, or nothing, is fine: {e}"
    );
}

#[test]
fn resolving_asks_the_machine_it_is_given_not_this_one() {
    let sec = |id: &str, image: &str| {
        format!(
            "[[processor]]\nid = \"{id}\"\nrole = \"secondary\"\nimage = \"{image}\"\nmode = \"pull\"\nwindow = {{ size = \"4MiB\" }}\n"
        )
    };
    let src = format!("{HEAD}{}{}", sec("a", "/images/os.bin"), sec("b", "/images/none.bin"));
    let e =
        Topology::parse_in(&src, Path::new("t.toml"), Path::new("/"), &Elsewhere).unwrap_err().to_string();
    assert!(e.contains("processor \"b\".image: /images/none.bin is empty or not a regular file"), "{e}");
    // The 8 MiB that machine reports for a's image, against its 4 MiB pull window.
    assert!(e.contains("processor \"a\".window.size"), "a's image size came from the environment: {e}");
    let ok = Topology::parse_in(
        &format!("{HEAD}{}", sec("a", "/images/os.bin").replace("4MiB", "8MiB")),
        Path::new("t.toml"),
        Path::new("/"),
        &Elsewhere,
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn a_builtin_payload_larger_than_its_image_size_is_bad_input() {
    let sec = |id: &str, size: &str| {
        format!(
            "[[processor]]\nid = \"{id}\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nimage_size = \"{size}\"\n"
        )
    };
    // The program is 3 MiB on this machine: 3 MiB leaves no room for the banner and trailer.
    let src = format!("{HEAD}{}{}", sec("small", "3MiB"), sec("fits", "4MiB"));
    let e =
        Topology::parse_in(&src, Path::new("t.toml"), Path::new("/"), &Elsewhere).unwrap_err().to_string();
    assert!(
        e.contains("processor \"small\".image_size")
            && e.contains("demo payload program is 3145728 bytes")
            && e.contains("use an image_size of at least 4MiB"),
        "{e}"
    );
    assert!(!e.contains("processor \"fits\""), "{e}");
}

/// Found by fuzzing: a duration of millennia overflowed the arithmetic done with it.
#[test]
fn a_duration_longer_than_a_day_is_bad_input_not_a_panic() {
    let src = format!(
        "{HEAD}[election]\nheartbeat = \"20000112743y\"\n[[processor]]\nid = \"m2\"\nrole = \"monarch\"\n"
    );
    let e =
        Topology::parse_in(&src, Path::new("t.toml"), Path::new("/"), &Elsewhere).unwrap_err().to_string();
    assert!(e.contains("election.heartbeat") && e.contains("longer than a day"), "{e}");
}
