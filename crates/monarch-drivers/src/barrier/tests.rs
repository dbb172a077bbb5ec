//! Barriers between threads, and between real processes: children re-executed from this
//! test binary meet at a barrier in a `/dev/shm` file; the test is the owner.

use super::{Barrier, BarrierFile, SharedBlock, monotonic_ns};
use crate::doorbell::Doorbell;
use monarch_proto::barrier::{BLOCK_SIZE, Header, Outcome, Policy, State, reason};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// A generous upper bound: a broken barrier makes a test fail after this, never hang.
const BOUND: Duration = Duration::from_secs(60);
const GENERATION: u32 = 3;
const POLL: Doorbell = Doorbell::Poll { max_sleep: Duration::from_millis(2) };

fn bound() -> u64 {
    monotonic_ns() + u64::try_from(BOUND.as_nanos()).unwrap()
}

fn block() -> [AtomicU64; BLOCK_SIZE / 8] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

#[test]
fn threads_meet_and_the_owner_wait_ends_at_the_deadline() {
    for bell in [Doorbell::Futex, POLL] {
        let mem = block();
        let b = SharedBlock::of_atomics(&mem);
        // The deadline is in the past: the owner's wait returns at once, undecided.
        let h = Header { participants: 3, generation: GENERATION, policy: Policy::Exclude, deadline_ns: 0 };
        let owner = Barrier::create(b, h, None, bell);
        assert!(matches!(owner.wait(bound()), Outcome::TimedOut { missing, .. } if missing == [0, 1, 2]));
        // A far deadline: the participants release each other.
        let h = Header { deadline_ns: bound(), ..h };
        let owner = Barrier::create(b, h, Some(0), bell);
        let outcomes = std::thread::scope(|s| {
            let others: Vec<_> = (1..3)
                .map(|me| {
                    s.spawn(move || {
                        let p = Barrier::attach(b, GENERATION, me, bell).unwrap();
                        p.arrive();
                        p.wait(bound())
                    })
                })
                .collect();
            let mine = owner.own(bound());
            let mut all: Vec<Outcome> = others.into_iter().map(|t| t.join().unwrap()).collect();
            all.push(mine);
            all
        });
        for o in outcomes {
            assert_eq!(o, Outcome::Released { excluded: vec![] }, "{bell:?}");
        }
    }
}

#[test]
fn attaching_checks_the_block() {
    let mem = block();
    let b = SharedBlock::of_atomics(&mem);
    assert!(Barrier::attach(b, GENERATION, 0, Doorbell::Futex).is_err(), "zeroed block");
    let h = Header { participants: 2, generation: GENERATION, policy: Policy::Abort, deadline_ns: 0 };
    let owner = Barrier::create(b, h, None, Doorbell::Futex);
    assert!(Barrier::attach(b, GENERATION + 1, 0, Doorbell::Futex).is_err(), "stale generation");
    assert!(Barrier::attach(b, GENERATION, 2, Doorbell::Futex).is_err(), "participant 2 of 2");
    let p = Barrier::attach(b, GENERATION, 1, Doorbell::Futex).unwrap();
    assert_eq!(owner.abort(reason::STOPPED), State::Aborted(reason::STOPPED));
    p.arrive();
    assert_eq!(p.wait(bound()), Outcome::Aborted { reason: reason::STOPPED, missing: vec![] });
}

// --- Real processes -------------------------------------------------------------------

const CHILD: &str = "MONARCH_BARRIER_CHILD";

/// The role of a child process: attach, arrive (or hang, to be killed), wait, print the
/// outcome. A no-op when run as an ordinary test.
#[test]
fn child_role() {
    let Ok(spec) = std::env::var(CHILD) else { return };
    let mut f = spec.split(',');
    let (path, me, bell, hang) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
    let bell = if bell == "futex" { Doorbell::Futex } else { POLL };
    let file = BarrierFile::open(path.as_ref()).unwrap();
    let b = Barrier::attach(file.block(), GENERATION, me.parse().unwrap(), bell).unwrap();
    if hang == "hang" {
        // Attached, never arrives: the test kills it.
        std::thread::sleep(BOUND);
        std::process::exit(3);
    }
    b.arrive();
    let o = b.wait(bound());
    println!("OUTCOME {o:?}");
}

/// A barrier file that goes away with the test.
struct ShmFile(PathBuf);

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn shm(name: &str) -> ShmFile {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    ShmFile(dir.join(format!("monarch-barrier-{}-{name}", std::process::id())))
}

fn spawn(path: &std::path::Path, me: u16, bell: &str, hang: bool) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "barrier::tests::child_role", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{},{me},{bell},{}", path.display(), if hang { "hang" } else { "arrive" }))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What a child printed as its outcome.
fn outcome(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}: {text} {}", out.status, String::from_utf8_lossy(&out.stderr));
    text.lines()
        .find_map(|l| l.split_once("OUTCOME ").map(|(_, o)| o))
        .unwrap_or_else(|| panic!("no outcome: {text}"))
        .to_owned()
}

/// `n` children meet at a barrier the test owns; child `victim` (if any) attaches, never
/// arrives and is killed. Returns the owner's outcome and the survivors'.
fn meet(name: &str, n: u16, policy: Policy, bell: &str, victim: Option<u16>) -> (Outcome, Vec<String>) {
    let f = shm(name);
    let file = BarrierFile::create(&f.0).unwrap();
    let doorbell = if bell == "futex" { Doorbell::Futex } else { POLL };
    // The deadline is only an upper bound here: with a victim the owner decides as soon as
    // every survivor arrived (deciding is what makes the deadline pass).
    let h = Header { participants: n, generation: GENERATION, policy, deadline_ns: bound() };
    let owner = Barrier::create(file.block(), h, None, doorbell);
    let mut children: Vec<(u16, Child)> =
        (0..n).map(|me| (me, spawn(&f.0, me, bell, victim == Some(me)))).collect();
    let mine = match victim {
        None => owner.own(bound()),
        Some(v) => {
            let (_, mut dead) = children.remove(children.iter().position(|(me, _)| *me == v).unwrap());
            dead.kill().unwrap();
            dead.wait().unwrap();
            let give_up = bound();
            while owner.arrived() < u32::from(n - 1) {
                assert!(monotonic_ns() < give_up, "the survivors never arrived");
                std::thread::sleep(Duration::from_millis(5));
            }
            owner.decide()
        }
    };
    (mine, children.into_iter().map(|(_, c)| outcome(c)).collect())
}

#[test]
fn processes_are_all_released() {
    for bell in ["futex", "poll"] {
        let (mine, theirs) = meet(&format!("all-{bell}"), 4, Policy::Exclude, bell, None);
        assert_eq!(mine, Outcome::Released { excluded: vec![] });
        assert_eq!(theirs, vec!["Released { excluded: [] }"; 4], "{bell}");
    }
}

#[test]
fn a_killed_process_is_excluded_and_named() {
    let (mine, theirs) = meet("exclude", 3, Policy::Exclude, "futex", Some(1));
    assert_eq!(mine, Outcome::Released { excluded: vec![1] });
    assert_eq!(theirs, vec!["Released { excluded: [1] }"; 2]);
}

#[test]
fn a_killed_process_aborts_everyone_under_abort() {
    let (mine, theirs) = meet("abort", 3, Policy::Abort, "poll", Some(2));
    assert_eq!(mine, Outcome::Aborted { reason: reason::TIMEOUT, missing: vec![2] });
    assert_eq!(theirs, vec!["Aborted { reason: 1, missing: [2] }"; 2]);
}

#[test]
fn a_late_arrival_after_exclusion_learns_it_is_excluded() {
    let f = shm("late");
    let file = BarrierFile::create(&f.0).unwrap();
    let h = Header { participants: 2, generation: GENERATION, policy: Policy::Exclude, deadline_ns: 0 };
    let owner = Barrier::create(file.block(), h, None, Doorbell::Futex);
    let first = spawn(&f.0, 0, "futex", false);
    let give_up = bound();
    while owner.arrived() < 1 {
        assert!(monotonic_ns() < give_up, "child 0 never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(owner.wait(bound()), Outcome::TimedOut { missing, .. } if missing == [1]));
    assert_eq!(owner.decide(), Outcome::Released { excluded: vec![1] });
    assert_eq!(outcome(first), "Released { excluded: [1] }");
    assert_eq!(outcome(spawn(&f.0, 1, "futex", false)), "Excluded");
}
