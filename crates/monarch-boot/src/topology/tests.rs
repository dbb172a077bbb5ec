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

fn sec(id: &str, extra: &str) -> String {
    format!("[[processor]]\nid = \"{id}\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\n{extra}\n")
}

#[test]
fn a_secondary_without_lifecycle_fields_gets_the_defaults() {
    let t = parse(&format!("{HEAD}{}", sec("a", ""))).unwrap();
    let l = &t.secondaries[0].life;
    assert_eq!(*l, Lifecycle::default());
    assert_eq!(l.power, PowerDomain::Aux);
    assert_eq!((l.recovery, l.on_dependency_loss), (Recovery::Restart, OnDependencyLoss::Degrade));
    assert_eq!(l.wait, Duration::from_secs(30));
    assert_eq!((l.max_restarts, l.restart_window), (3, Duration::from_secs(60)));
    assert_eq!(l.restart_backoff, Duration::from_millis(100));
    assert_eq!((l.heartbeat, l.heartbeat_timeout), (Duration::from_millis(100), Duration::from_secs(1)));
    assert_eq!((l.ready_after, l.supervisor.as_deref()), (Duration::ZERO, None));
    assert!(l.requires.is_empty() && l.wants.is_empty() && l.ports.is_empty());
    assert!(!t.secondaries[0].faults.never_ready && t.secondaries[0].faults.defer_notices.is_none());
    assert_eq!((t.main_power, t.state_dir.as_deref()), (MainPower::Auto, None));
}

#[test]
fn lifecycle_fields_resolve_and_defaults_apply_to_them() {
    let src = format!(
        "[chassis]\nname = \"t\"\nmain_power = \"manual\"\nstate_dir = \"state\"\n\
         [defaults]\npower = \"main\"\nwait = \"5s\"\nrecovery = \"none\"\nmax_restarts = 7\nrestart_window = \"2m\"\n\
         restart_backoff = \"0s\"\non_dependency_loss = \"restart\"\nheartbeat = \"50ms\"\nheartbeat_timeout = \"300ms\"\n\
         [[processor]]\nid = \"bmc\"\nrole = \"monarch\"\n{}{}{}",
        sec("amc0", "power = \"aux\""),
        sec(
            "dpu0",
            "power = \"aux\"\nsupervisor = \"amc0\"\nports = [\"eth-dpu0\", \"enp3s0f1\"]\nready_after = \"200ms\"\nfault = { never_ready = true, defer_notices = \"flushing the NVMe write cache\" }"
        ),
        sec(
            "host",
            "requires = [\"dpu0\"]\nwants = [\"amc0\"]\nwait = \"2s\"\nmax_restarts = 1\nheartbeat = \"20ms\""
        ),
    );
    let t = parse(&src).unwrap();
    assert_eq!(t.main_power, MainPower::Manual);
    assert_eq!(t.state_dir.as_deref(), Some(Path::new("/nonexistent/state")), "relative to the file");
    let [amc0, dpu0, host] = &t.secondaries[..] else { panic!("three secondaries") };
    assert_eq!(amc0.life.power, PowerDomain::Aux, "its own value wins over [defaults]");
    assert_eq!(amc0.life.recovery, Recovery::None, "from [defaults]");
    assert_eq!(dpu0.life.supervisor.as_deref(), Some("amc0"));
    assert_eq!(dpu0.life.ports, ["eth-dpu0", "enp3s0f1"]);
    assert_eq!(dpu0.life.ready_after, Duration::from_millis(200));
    assert!(dpu0.faults.never_ready);
    assert_eq!(dpu0.faults.defer_notices.as_deref(), Some("flushing the NVMe write cache"));
    let l = &host.life;
    assert_eq!((l.power, l.wait, l.max_restarts), (PowerDomain::Main, Duration::from_secs(2), 1));
    assert_eq!((l.restart_window, l.restart_backoff), (Duration::from_secs(120), Duration::ZERO));
    assert_eq!(l.on_dependency_loss, OnDependencyLoss::Restart);
    assert_eq!((l.heartbeat, l.heartbeat_timeout), (Duration::from_millis(20), Duration::from_millis(300)));
    assert_eq!(l.requires, ["dpu0"]);
    assert_eq!(l.wants, ["amc0"]);
    assert_eq!(dpu0.life.depends_on().collect::<Vec<_>>(), ["amc0"]);
    assert_eq!(host.life.depends_on().collect::<Vec<_>>(), ["dpu0", "amc0"]);
}

#[test]
fn depends_on_yields_each_id_once() {
    let l = Lifecycle {
        requires: vec!["a".into(), "b".into()],
        wants: vec!["c".into()],
        supervisor: Some("a".into()),
        ..Lifecycle::default()
    };
    assert_eq!(l.depends_on().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert!(!Lifecycle::default().has_dependencies());
}

#[test]
fn unknown_lifecycle_values_name_the_line_the_field_and_the_allowed_ones() {
    let e = errors(&format!(
        "[chassis]\nname = \"t\"\nmain_power = \"later\"\n[[processor]]\nid = \"mm\"\nrole = \"monarch\"\n{}",
        sec(
            "a",
            "power = \"battery\"\nrecovery = \"pray\"\non_dependency_loss = \"panic\"\nwait = \"soon\"\nrestart_window = \"2000000h\""
        )
    ));
    for needle in [
        "t.toml:3: chassis.main_power: unknown main_power \"later\"; use \"auto\" (on once the aux domain is up) or \"manual\"",
        "t.toml:11: processor \"a\".power: unknown power domain \"battery\"; use \"aux\" (on with the chassis) or \"main\"",
        "t.toml:12: processor \"a\".recovery: unknown recovery \"pray\"; use \"restart\" (boot it again) or \"none\" (leave it down)",
        "t.toml:13: processor \"a\".on_dependency_loss: unknown on_dependency_loss \"panic\"; use \"degrade\"",
        "t.toml:14: processor \"a\".wait: \"soon\" is not a duration",
        "t.toml:15: processor \"a\".restart_window: \"2000000h\" is longer than a day",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in\n{e}");
    }
}

#[test]
fn dependencies_must_name_other_secondaries_once() {
    let e = errors(&format!(
        "{HEAD}{}{}",
        sec("a", "requires = [\"a\", \"nope\", \"mm\", \"b\", \"b\"]\nwants = [\"b\"]\nsupervisor = \"mm\""),
        sec("b", "supervisor = \"ghost\"")
    ));
    for needle in [
        "t.toml:10: processor \"a\".requires: a processor cannot depend on itself; remove it",
        "processor \"a\".requires: \"nope\" is not a secondary of this topology (secondaries: a, b); fix the id or remove it",
        "processor \"a\".requires: \"mm\" is a management processor (role = \"monarch\"); the monarch is always there: remove it",
        "processor \"a\".requires: \"b\" is listed twice; name each secondary once",
        "t.toml:11: processor \"a\".wants: \"b\" is also in requires; a dependency is either hard (requires) or soft (wants): remove it from one of them",
        "t.toml:12: processor \"a\".supervisor: \"mm\" is a management processor (role = \"monarch\"); the monarch supervises every secondary that names no supervisor: leave supervisor out",
        "processor \"b\".supervisor: \"ghost\" is not a secondary of this topology (secondaries: a, b)",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in\n{e}");
    }
}

#[test]
fn a_dependency_cycle_is_named_in_order() {
    let e = errors(&format!(
        "{HEAD}{}{}{}",
        sec("host", "requires = [\"dpu0\"]"),
        sec("dpu0", "wants = [\"dpu1\"]"),
        sec("dpu1", "supervisor = \"host\"")
    ));
    assert!(
        e.contains("t.toml:10: processor \"host\".requires: dependency cycle: host → dpu0 → dpu1 → host; none of them could start first: remove one of these dependencies"),
        "{e}"
    );
    assert_eq!(e.matches("dependency cycle").count(), 1, "one cycle, reported once: {e}");
    let e = errors(&format!("{HEAD}{}{}", sec("a", "wants = [\"b\"]"), sec("b", "requires = [\"a\"]")));
    assert!(e.contains("processor \"a\".wants: dependency cycle: a → b → a"), "{e}");
}

#[test]
fn an_aux_processor_may_not_wait_on_a_main_one_and_a_supervisor_is_aux() {
    let e = errors(&format!(
        "{HEAD}{}{}{}",
        sec("host", "power = \"main\""),
        sec("dpu0", "requires = [\"host\"]"),
        sec("dpu1", "power = \"main\"\nsupervisor = \"host\"")
    ));
    assert!(e.contains("processor \"dpu0\".requires: \"host\" is in the main power domain, which comes on after the aux domain: this aux processor would wait on one still off; set power = \"main\" on \"dpu0\" too, or remove the dependency"), "{e}");
    assert!(e.contains("processor \"dpu1\".supervisor: \"host\" is in the main power domain; a supervisor must be in the aux domain (up before what it supervises, and up while main power is off): set power = \"aux\" on \"host\""), "{e}");
    // The other way round is the normal case.
    assert!(
        parse(&format!(
            "{HEAD}{}{}",
            sec("dpu0", ""),
            sec("host", "power = \"main\"\nrequires = [\"dpu0\"]")
        ))
        .is_ok()
    );
}

#[test]
fn ports_are_interface_names_each_owned_once() {
    let e = errors(&format!(
        "{HEAD}{}{}",
        sec("a", "ports = [\"eth0\", \"\", \"a-name-far-too-long\", \"a/b\", \"eth0:1\", \"e th\", \"..\"]"),
        sec("b", "ports = [\"eth0\", \"eth1\", \"eth1\"]")
    ));
    for needle in [
        "processor \"a\".ports: \"\" is not a network interface name: it is empty; use the name `ip link` shows",
        "\"a-name-far-too-long\" is not a network interface name: it is longer than 15 bytes",
        "\"a/b\" is not a network interface name: it contains '/'",
        "\"eth0:1\" is not a network interface name: it contains ':'",
        "\"e th\" is not a network interface name: it contains whitespace",
        "\"..\" is not a network interface name: \".\" and \"..\" are not allowed",
        "processor \"b\".ports: port \"eth0\" is already owned by \"a\"; an interface belongs to one processor",
        "processor \"b\".ports: port \"eth1\" is already owned by this processor",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in\n{e}");
    }
}

#[test]
fn heartbeats_and_the_restart_window_are_bounded() {
    let e = errors(&format!(
        "{HEAD}{}{}{}",
        sec("a", "heartbeat = \"5ms\""),
        sec("b", "heartbeat = \"100ms\"\nheartbeat_timeout = \"150ms\""),
        sec("c", "restart_window = \"0s\"\nfault = { defer_notices = \" \" }")
    ));
    for needle in [
        "t.toml:10: processor \"a\".heartbeat: a heartbeat of 5ms is too often to watch; use at least 10ms",
        "t.toml:16: processor \"b\".heartbeat_timeout: heartbeat_timeout (150ms) must be at least 2 heartbeats (200ms), or one late beat counts as a stall; raise heartbeat_timeout or lower heartbeat",
        "processor \"c\".restart_window: the restart window is the time max_restarts are counted in and must be longer than 0",
        "processor \"c\".fault.defer_notices: the payload defers notices with this reason",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in\n{e}");
    }
    assert!(!e.contains("processor \"a\".heartbeat_timeout"), "5ms × 2 fits in 1s: {e}");
}

#[test]
fn a_netboot_secondary_refuses_only_what_needs_watching_after_its_boot() {
    let e = errors(&format!(
        "{HEAD}[defaults]\nheartbeat = \"50ms\"\nheartbeat_timeout = \"500ms\"\n{}{}",
        sec("dpu0", ""),
        netboot(
            "nb",
            "requires = [\"dpu0\"]\nwait = \"1s\"\npower = \"main\"\nports = [\"eth1\"]\nheartbeat = \"20ms\"\nheartbeat_timeout = \"1s\"\nready_after = \"1s\"\nfault = { never_ready = true, defer_notices = \"busy\" }"
        ),
    ));
    for name in
        ["ports", "heartbeat", "heartbeat_timeout", "ready_after", "fault.never_ready", "fault.defer_notices"]
    {
        let needle = format!(
            "processor \"nb\".{name}: a netboot secondary has no window to report through, so nothing watches it after its boot; remove {name}"
        );
        assert!(e.contains(&needle), "missing {needle:?} in\n{e}");
    }
    assert!(!e.contains(".requires") && !e.contains(".wait") && !e.contains(".power"), "{e}");
    // Dependencies, power, values from [defaults], and being named as a supervisor are fine.
    let t = parse(&format!(
        "{HEAD}[defaults]\nheartbeat = \"50ms\"\nready_after = \"1s\"\n{}{}",
        netboot("nb", "wait = \"1s\"\npower = \"aux\""),
        sec("b", "requires = [\"nb\"]\nsupervisor = \"nb\"")
    ));
    assert!(t.is_err(), "ready_after is a processor's own field, not a setting for [defaults]");
    let t = parse(&format!(
        "{HEAD}[defaults]\nheartbeat = \"50ms\"\n{}{}",
        netboot("nb", "wait = \"1s\"\npower = \"aux\""),
        sec("b", "requires = [\"nb\"]\nsupervisor = \"nb\"")
    ))
    .unwrap();
    assert_eq!(t.secondaries[0].life.heartbeat, Duration::from_millis(50));
    assert_eq!(t.secondaries[1].life.supervisor.as_deref(), Some("nb"));
}

#[test]
fn a_monarch_has_no_lifecycle_fields() {
    let e =
        errors(&format!("{HEAD}requires = [\"a\"]\npower = \"main\"\nheartbeat = \"1s\"\n{}", sec("a", "")));
    for name in ["requires", "power", "heartbeat"] {
        let needle = format!("processor \"mm\".{name}: a monarch has no {name}; remove the field");
        assert!(e.contains(&needle), "missing {needle:?} in\n{e}");
    }
}

/// The examples in `examples/` that describe a server and its DPUs.
#[test]
fn the_server_examples_resolve_with_their_start_order() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    for (file, levels, main) in [
        ("server-dpus.toml", vec![vec!["dpu0", "dpu1"], vec!["host"]], vec!["host"]),
        ("server-dpu-amc.toml", vec![vec!["amc0"], vec!["dpu0"], vec!["host"]], vec!["host"]),
    ] {
        let t = Topology::load(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let plan = crate::plan::Plan::new(t);
        let ids: Vec<Vec<&str>> = plan
            .levels()
            .iter()
            .map(|l| l.iter().map(|&i| plan.topology.secondaries[i].id.as_str()).collect())
            .collect();
        assert_eq!(ids, levels, "{file}");
        assert_eq!(plan.in_domain(PowerDomain::Main), main, "{file}");
        assert!(plan.topology.secondaries.iter().all(|s| s.life.ports.is_empty()), "{file}: no ports");
        assert!(plan.topology.managers.len() == 1, "{file}: one BMC");
    }
}

#[test]
fn the_management_table_resolves_its_addresses_and_paths() {
    let src = format!(
        "[chassis]\nname = \"t\"\n[management]\nredfish = \"127.0.0.1:8443\"\nusers = \"redfish-users\"\n\
         certificate = \"/etc/monarch/cert.pem\"\nkey = \"key.pem\"\nmetrics = \"[::1]:9464\"\n\
         [[processor]]\nid = \"bmc\"\nrole = \"monarch\"\n{}",
        sec("a", "")
    );
    let m = parse(&src).unwrap().management;
    assert_eq!(m.redfish, Some("127.0.0.1:8443".parse().unwrap()));
    assert_eq!(m.metrics, Some("[::1]:9464".parse().unwrap()));
    assert_eq!(m.users.as_deref(), Some(Path::new("/nonexistent/redfish-users")), "relative to the file");
    assert_eq!(m.certificate.as_deref(), Some(Path::new("/etc/monarch/cert.pem")));
    assert_eq!(m.key.as_deref(), Some(Path::new("/nonexistent/key.pem")));
    let none = parse(&format!(
        "[chassis]\nname = \"t\"\n[[processor]]\nid = \"bmc\"\nrole = \"monarch\"\n{}",
        sec("a", "")
    ));
    assert_eq!(none.unwrap().management, Management::default(), "off unless asked");
}

#[test]
fn a_bad_management_address_or_half_a_certificate_is_named_with_the_fix() {
    let e = errors(&format!(
        "[chassis]\nname = \"t\"\n[management]\nredfish = \"localhost\"\ncertificate = \"c.pem\"\n\
         [[processor]]\nid = \"bmc\"\nrole = \"monarch\"\n{}",
        sec("a", "")
    ));
    for needle in [
        "t.toml:4: management.redfish: \"localhost\" is not an address: give IP:PORT, like \"127.0.0.1:8443\"",
        "management.key: a certificate is given without its key: give both, or neither",
    ] {
        assert!(e.contains(needle), "{needle}\nin:\n{e}");
    }
}

const CLUSTERS: &str = "[chassis]\nname = \"m\"\n[clusters]\nimage_size = \"2MiB\"\nbarrier_policy = \"abort\"\nbarrier_timeout = \"3s\"\n\
     [[cluster]]\nid = 0\ncores = 2\nbanks = [\"16MiB\"]\n\
     [[cluster]]\nid = 1\ncores = 3\nbanks = [\"16MiB\", \"8MiB\"]\nself_test = { failed_cores = [2], failed_banks = [1] }\n";

#[test]
fn clusters_become_processors_core_0_of_cluster_0_the_monarch() {
    let t = parse(CLUSTERS).unwrap();
    let managers: Vec<&str> = t.managers.iter().map(|m| m.id.as_str()).collect();
    let secondaries: Vec<&str> = t.secondaries.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(managers, ["c0-0"]);
    assert_eq!(secondaries, ["c0-1", "c1-0", "c1-1"], "c1-2 failed its self-test: not booted");
    let c = t.clusters.as_ref().expect("clusters");
    assert_eq!((c.barrier_policy, c.barrier_timeout), (BarrierPolicy::Abort, Duration::from_secs(3)));
    assert_eq!(c.clusters[1].cores[2], CoreSpec { lid: 2, processor: "c1-2".into(), failed: true });
    assert_eq!(
        c.clusters[1].banks,
        [BankSpec { size: 16 << 20, failed: false }, BankSpec { size: 8 << 20, failed: true }]
    );
    // The zones, in bank order, each after the other on a page boundary; the kernel's holds the image.
    let kinds: Vec<&str> = c.zones.iter().map(|z| crate::topology::zone_field(z.kind)).collect();
    assert_eq!(kinds, ["boot_code", "arch_info", "kernel", "boot_info", "stacks"]);
    for w in c.zones.windows(2) {
        assert!(w[0].end() <= w[1].base && w[1].base % 4096 == 0, "{w:?}");
    }
    assert_eq!(c.zones[2].max, 2 << 20);
    assert_eq!(c.zones[4].max, 3 * STACK, "one stack per core of the largest cluster");
    // Every core boots the same image: one banner.
    assert!(t.secondaries.iter().all(|s| s.image == t.secondaries[0].image));
}

#[test]
fn cluster_mistakes_name_the_cluster_and_the_fix() {
    let e = errors(
        "[chassis]\nname = \"m\"\n[[cluster]]\nid = 0\ncores = 2\nself_test = { failed_cores = [0, 5] }\n\
         [[cluster]]\nid = 2\ncores = 0\n[[cluster]]\nid = 0\ncores = 1\n",
    );
    for needle in [
        "cluster 0.self_test.failed_cores: there is no core 5: the cluster's cores are 0..1",
        "cluster 2.cores: a cluster needs at least one core",
        "t.toml:11: cluster 0.id: two clusters have this id",
        "cluster 0.self_test: core 0 of cluster 0 is the monarch",
    ] {
        assert!(e.contains(needle), "{needle}\nin:\n{e}");
    }
    let e =
        errors("[chassis]\nname = \"m\"\n[[cluster]]\nid = 0\ncores = 2\n[[cluster]]\nid = 2\ncores = 2\n");
    assert!(e.contains("cluster ids run from 0 without gaps; there is no cluster 1"), "{e}");
    let e = errors(&format!("{HEAD}[[cluster]]\nid = 0\ncores = 2\n"));
    assert!(e.contains("takes its processors from its [[cluster]] tables"), "{e}");
    let e = errors(
        "[chassis]\nname = \"m\"\n[[cluster]]\nid = 0\ncores = 3\nself_test = { failed_cores = [2] }\n\
         fault = { killed_before_barrier = [0, 2, 7] }\n",
    );
    for needle in [
        "cluster 0.fault.killed_before_barrier: core 0 of cluster 0 is the monarch, which owns the barriers",
        "cluster 0.fault.killed_before_barrier: core 2 failed its self-test, so it is never started",
        "cluster 0.fault.killed_before_barrier: there is no core 7: the cluster's cores are 0..2",
    ] {
        assert!(e.contains(needle), "{needle}\nin:\n{e}");
    }
}

#[test]
fn zones_must_fit_the_bank_hold_their_content_and_not_overlap() {
    let e = errors(
        "[chassis]\nname = \"m\"\n[clusters]\nimage_size = \"4MiB\"\n\
         zones = { kernel = \"1MiB\", boot_info = { base = \"1MiB\", max = \"4KiB\" } }\n\
         [[cluster]]\nid = 0\ncores = 2\nbanks = [\"2MiB\"]\n",
    );
    for needle in [
        "clusters.zones.kernel: the kernel image takes 4MiB and zone kernel holds at most 1MiB: raise [clusters] zones.kernel to 4MiB or more",
        "clusters.zones.boot_info: zone boot_info (0x100000..0x101000) overlaps zone arch_info",
        "cluster 0.banks: zone ",
        "does not fit the cluster's memory bank (2MiB)",
    ] {
        assert!(e.contains(needle), "{needle}\nin:\n{e}");
    }
}
