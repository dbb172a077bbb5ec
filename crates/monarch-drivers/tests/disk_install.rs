//! Disk installs in A/B slots, with real processes and a real disk (a file, and a loop block
//! device): the installer (`examples/disk_install.rs`) is killed at random points many times
//! and the target must always boot exactly the previous image or exactly the new one.
//!
//! `MONARCH_DISK_TRIALS=500` runs more trials (default 40); `MONARCH_DISK_SEED=N` replays a run.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use monarch_drivers::disk::{DiskError, SlotState, Target, TargetKind};
use monarch_proto::checksum::Algo;
use monarch_proto::slots::{self, Slot};

const MIB: usize = 1 << 20;

/// Build the example installer (a no-op when it is fresh) and return its path.
fn installer() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--example", "disk_install", "--message-format=json", "--manifest-path"])
        .arg(&manifest);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd.stderr(Stdio::inherit()).output().expect("run cargo build --example disk_install");
    assert!(out.status.success(), "cargo build --example disk_install failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .filter(|l| l.contains("\"compiler-artifact\"") && l.contains("\"kind\":[\"example\"]"))
        .find(|l| l.contains("\"name\":\"disk_install\""))
        .expect("cargo reported no disk_install example artifact");
    let key = "\"executable\":\"";
    let start = line.find(key).expect("no executable in cargo's artifact line") + key.len();
    let end = start + line[start..].find('"').expect("unterminated executable path");
    PathBuf::from(&line[start..end])
}

fn image(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// Start the installer, wait for its `ready` line (image read, target opened).
fn start(exe: &Path, target: &Path, image: &Path, name: &str, cut_after: Option<u64>) -> Child {
    let mut cmd = Command::new(exe);
    cmd.arg(target).arg(image).arg(name).arg("blake3").stdout(Stdio::piped()).stderr(Stdio::inherit());
    match cut_after {
        Some(n) => cmd.env("MONARCH_DISK_CUT_AFTER", n.to_string()),
        None => cmd.env_remove("MONARCH_DISK_CUT_AFTER"),
    };
    let mut child = cmd.spawn().expect("start the installer");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("installer stdout");
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut line).expect("read the installer's ready line");
    assert_eq!(line.trim(), "ready", "the installer did not get ready");
    // Keep the pipe open (a closed pipe would make its last println fail, not kill it).
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    child
}

/// How one trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Old,
    New,
}

#[test]
fn installs_killed_at_random_points_always_boot_the_old_or_the_new_image() {
    let trials = env_number("MONARCH_DISK_TRIALS").unwrap_or(40);
    let seed = env_number("MONARCH_DISK_SEED").unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let exe = installer();
    let dir = tempfile::tempdir().unwrap();
    // Two images of different sizes and contents, alternately the old and the new one.
    let images = [image(1, 3 * MIB + 4321), image(2, 5 * MIB + 777)];
    let files = [dir.path().join("image-0"), dir.path().join("image-1")];
    for (f, i) in files.iter().zip(&images) {
        std::fs::File::create(f).unwrap().write_all(i).unwrap();
    }
    let path = dir.path().join("disk.img");
    drop(Target::create_file(&path, 16 * MIB as u64).unwrap());

    // The first install, uninterrupted: also times an install, to spread the kills over it.
    let mut child = start(&exe, &path, &files[0], "image-0", None);
    let t0 = Instant::now();
    let status = child.wait().unwrap();
    let mut install_time = t0.elapsed().max(Duration::from_millis(1));
    assert!(status.success(), "the first install failed: {status}");
    let first = Target::open(&path).unwrap().boot().unwrap();
    assert_eq!((first.slot, first.generation, first.fell_back_from.clone()), (Slot::A, 1, None));
    assert_eq!(first.bytes, images[0]);

    let (mut current, mut slot, mut generation) = (0usize, first.slot, first.generation);
    let (mut old, mut new, mut failures) = (0u32, 0u32, 0u32);
    let (mut kills, mut finished_before_kill, mut cuts) = (0u32, 0u32, 0u32);
    let mut killed_mid_install = [0u32; 2]; // [booted OLD, booted NEW] after a SIGKILL mid-install
    for trial in 0..trials {
        let next = 1 - current;
        let len = images[next].len() as u64;
        // Bytes the install writes: the invalidated record, the image, the commit record.
        let total = slots::SECTOR + len + slots::SECTOR;
        let commit_at = slots::SECTOR + len;
        let cut = match (trial, rng.u32(0..6)) {
            (0, _) => Some(total),                                      // never reached: completes
            (1, _) => Some(rng.u64(0..commit_at)),                      // before the commit record
            (_, 0 | 1) => Some(rng.u64(0..=total)),                     // anywhere
            (_, 2) => Some(rng.u64(commit_at - slots::SECTOR..=total)), // around the commit
            _ => None,                                                  // SIGKILL at a random time
        };
        let mut child = start(&exe, &path, &files[next], &format!("image-{next}"), cut);
        let mut killed_mid = false;
        if cut.is_some() {
            cuts += 1;
            let t0 = Instant::now();
            let status = child.wait().unwrap();
            if trial == 0 {
                // A full install over an existing image (it also verifies the active slot).
                install_time = install_time.max(t0.elapsed());
            }
            assert!(matches!(status.code(), Some(0 | 3)), "trial {trial}: installer failed: {status}");
        } else {
            kills += 1;
            let max = u64::try_from(install_time.as_micros() * 3 / 2).unwrap_or(u64::MAX);
            std::thread::sleep(Duration::from_micros(rng.u64(0..=max)));
            child.kill().unwrap();
            let status = child.wait().unwrap();
            if status.success() {
                finished_before_kill += 1;
            } else {
                killed_mid = true;
            }
        }

        let outcome = match Target::open(&path).and_then(|t| t.boot()) {
            Ok(b) if b.fell_back_from.is_some() => {
                eprintln!("trial {trial}: boot had to fall back: {:?}", b.fell_back_from);
                None
            }
            Ok(b) if b.bytes == images[current] && (b.slot, b.generation) == (slot, generation) => {
                Some(Outcome::Old)
            }
            Ok(b) if b.bytes == images[next] && b.slot == slot.other() && b.generation == generation + 1 => {
                Some(Outcome::New)
            }
            Ok(b) => {
                eprintln!(
                    "trial {trial}: booted {} generation {} ({} bytes): neither the old nor the new image",
                    b.slot,
                    b.generation,
                    b.bytes.len()
                );
                None
            }
            Err(e) => {
                eprintln!("trial {trial}: nothing boots: {e}");
                None
            }
        };
        // Where the cut fell decides the outcome, except inside the commit record's 512
        // bytes: a record whose missing tail happens to be zeros is a whole record.
        let expected = match cut {
            Some(n) if n < commit_at + 8 => Some(Outcome::Old),
            Some(n) if n >= commit_at + slots::RECORD_LEN as u64 => Some(Outcome::New),
            _ => None,
        };
        match outcome {
            Some(o) if expected.is_some_and(|e| e != o) => {
                eprintln!("trial {trial}: cut after {cut:?} bytes booted {o:?}, expected {expected:?}");
                failures += 1;
            }
            Some(Outcome::Old) => {
                old += 1;
                killed_mid_install[0] += u32::from(killed_mid);
            }
            Some(Outcome::New) => {
                new += 1;
                killed_mid_install[1] += u32::from(killed_mid);
                current = next;
                slot = slot.other();
                generation += 1;
            }
            None => failures += 1,
        }
    }
    println!(
        "disk install crash test (seed {seed}): {trials} trials, {cuts} power cuts and {kills} SIGKILLs \
         ({finished_before_kill} finished first; killed mid-install then booted OLD {} / NEW {}; \
         an install takes \
         ~{install_time:?}): booted OLD {old}, \
         NEW {new}, anything else {failures}; generations reached {generation}",
        killed_mid_install[0], killed_mid_install[1]
    );
    assert_eq!(failures, 0, "some trials booted neither the old nor the new image (seed {seed})");
    if trials >= 20 {
        assert!(old > 0 && new > 0, "both outcomes must be seen: old {old}, new {new} (seed {seed})");
    }
}

#[test]
fn a_corrupt_active_slot_falls_back_and_both_corrupt_asks_for_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let mut t = Target::create_file(&path, 4 * MIB as u64).unwrap();
    let (one, two, three) = (image(11, 300_000), image(12, 400_000), image(13, 500_000));
    assert_eq!(t.install(&one, "one", Algo::Xxh3).unwrap().slot, Slot::A);
    let installed = t.install(&two, "two", Algo::Blake3).unwrap();
    assert_eq!((installed.slot, installed.generation), (Slot::B, 2));
    let b = t.boot().unwrap();
    assert_eq!((b.slot, b.generation, b.name.as_str(), b.fell_back_from), (Slot::B, 2, "two", None));
    assert_eq!(b.bytes, two);

    // Flip a byte in the active slot's data.
    let flip = |t: &Target, slot: Slot| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(t.path()).unwrap();
        let at = t.layout().slot_offset(slot) + 1234;
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    };
    flip(&t, Slot::B);
    let b = t.boot().unwrap();
    assert_eq!((b.slot, b.generation, b.name.as_str()), (Slot::A, 1, "one"));
    assert_eq!(b.bytes, one);
    let fb = b.fell_back_from.expect("the fallback is reported");
    assert_eq!((fb.slot, fb.generation), (Slot::B, 2));
    let said = fb.to_string();
    println!("fallback: {said}");
    assert!(said.contains("slot B") && said.contains("digest mismatch") && said.contains("booted slot A"));
    let status = t.verify_all();
    assert!(matches!(&status[0].state, SlotState::Verified(r) if r.generation == 1));
    assert!(matches!(&status[1].state, SlotState::Corrupt { record, .. } if record.generation == 2));
    println!("status: {}; {}", status[0], status[1]);

    // The next install keeps A (the only good image) and repairs B, above B's generation.
    let installed = t.install(&three, "three", Algo::Crc32c).unwrap();
    assert_eq!((installed.slot, installed.generation), (Slot::B, 3));
    let b = t.boot().unwrap();
    assert_eq!((b.slot, b.fell_back_from), (Slot::B, None));
    assert_eq!(b.bytes, three);

    // Both bad: a clear error asking for recovery.
    flip(&t, Slot::A);
    flip(&t, Slot::B);
    let err = t.boot().unwrap_err();
    let said = err.to_string();
    println!("both bad: {said}");
    assert!(matches!(err, DiskError::NothingBootable { .. }));
    assert!(said.contains("recover: re-provision this machine"), "{said}");
    assert!(said.contains("slot A") && said.contains("slot B") && said.contains(&path.display().to_string()));
    assert!(t.verify_all().iter().all(|s| !s.is_bootable()));
}

#[test]
fn errors_name_the_target_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.img");
    let mut t = Target::create_file(&path, 2 * MIB as u64).unwrap();
    assert_eq!(t.kind(), TargetKind::File);

    // Nothing installed yet.
    let said = t.boot().unwrap_err().to_string();
    assert!(said.contains("slot A: empty") && said.contains("recover: re-provision"), "{said}");

    // Too big an image: say how big the target must be.
    let said = t.install(&vec![1u8; MIB], "big", Algo::Crc32c).unwrap_err().to_string();
    let need = slots::Layout::min_target_len(MIB as u64).unwrap();
    println!("too big: {said}");
    assert!(said.contains(&format!("at least {need} bytes")) && said.contains("small.img"), "{said}");

    let said = t.install(b"x", &"n".repeat(300), Algo::Crc32c).unwrap_err().to_string();
    assert!(said.contains("shorter name"), "{said}");
    let said = t.install(b"", "empty", Algo::Crc32c).unwrap_err().to_string();
    assert!(said.contains("empty"), "{said}");

    // One installer at a time.
    let said = Target::open(&path).unwrap_err().to_string();
    assert!(said.contains("in use by another process"), "{said}");
    drop(t);
    assert!(Target::open(&path).is_ok());

    let said = Target::create_file(&path, 4 * MIB as u64).unwrap_err().to_string();
    assert!(said.contains("already exists"), "{said}");
    let said = Target::create_file(dir.path().join("tiny"), 1000).unwrap_err().to_string();
    assert!(said.contains("smaller than") && said.contains("bigger disk or file"), "{said}");
    let said = Target::open(dir.path()).unwrap_err().to_string();
    assert!(said.contains("a directory") && said.contains("block device"), "{said}");
    let said = Target::open(dir.path().join("missing")).unwrap_err().to_string();
    assert!(said.contains("missing") && said.contains("cannot open"), "{said}");
    let said = Target::open("/dev/null").unwrap_err().to_string();
    assert!(said.contains("character device"), "{said}");
}

/// A loop device: a real block device, whose size comes from the device.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn installs_and_boots_on_a_block_device() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing.img");
    std::fs::File::create(&backing).unwrap().set_len(8 * MIB as u64).unwrap();
    let dev = match monarch_drivers::host::run(
        Command::new("losetup").args(["--find", "--show"]).arg(&backing),
        "losetup",
    ) {
        Ok(out) => Loop(out.trim().to_string()),
        Err(e) => {
            eprintln!("SKIPPED: no loop device here ({e})");
            return;
        }
    };
    let mut t = Target::open(&dev.0).unwrap();
    assert_eq!(t.kind(), TargetKind::BlockDevice);
    // Held exclusively while open (as a mounted device would be): a second open is refused.
    let said = Target::open(&dev.0).unwrap_err().to_string();
    assert!(said.contains("busy") && said.contains("unmount"), "{said}");
    assert_eq!(t.layout().target_len(), 8 * MIB as u64);
    let (one, two) = (image(21, MIB + 5), image(22, 2 * MIB + 7));
    t.install(&one, "one", Algo::Blake3).unwrap();
    t.install(&two, "two", Algo::Blake3).unwrap();
    drop(t);
    let t = Target::open(&dev.0).unwrap();
    let b = t.boot().unwrap();
    assert_eq!((b.slot, b.generation, b.name.as_str()), (Slot::B, 2, "two"));
    assert_eq!(b.bytes, two);
    assert!(t.verify_all().iter().all(|s| s.is_bootable()));
}
