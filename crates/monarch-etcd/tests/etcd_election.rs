//! Monarch election against a real etcd (Debian's etcd-server) that each test starts on
//! loopback with free ports and a temporary data directory, and kills when it ends. Tests 3
//! and 5 take etcd away mid-leadership (SIGSTOP: a hung server; SIGKILL and restart: a crashed
//! one).
//!
//! Timing: bounds are generous (the point is the order of events, not speed), and the
//! safety assertion is on the order of recorded instants: the intervals during which each
//! candidate's `check()` said Ok never overlap.

use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use monarch_etcd::server::LocalEtcd;
use monarch_etcd::{Candidate, Config, Error, Leadership, RecordError};

/// The test's etcd: [`LocalEtcd`] with the tests' own shorthands.
struct Etcd(LocalEtcd);

impl Etcd {
    /// Start one. etcd itself is installed by the test command (`scripts/test`); without it,
    /// this says which package to install.
    fn start() -> Etcd {
        Etcd(LocalEtcd::start().unwrap_or_else(|e| panic!("{e}")))
    }

    fn kill(&mut self) {
        self.0.kill();
    }

    fn restart(&mut self) {
        self.0.restart().expect("etcd restarts");
    }

    fn signal(&self, signal: rustix::process::Signal) {
        self.0.signal(signal).expect("signal etcd");
    }

    fn config(&self, election: &str, candidate: &str, ttl: Duration) -> Config {
        Config::new(vec![self.0.endpoint().to_string()], election, candidate).with_ttl(ttl)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().expect("local addr").port()
}

/// The instants around the calls to `check()` that said Ok: from just before the first to
/// just after the last.
#[derive(Debug, Clone)]
struct Reign {
    who: &'static str,
    epoch: u64,
    first_ok: Instant,
    last_ok: Instant,
    /// When `check()` first said Err (None if we resigned while still Ok).
    lost_at: Option<Instant>,
}

/// Act as monarch: check every 10 ms until lost or `max` passes, then resign if still ours.
fn reign(who: &'static str, l: Leadership, max: Option<Duration>) -> Reign {
    let start = Instant::now();
    let (mut first_ok, mut last_ok, mut lost_at) = (None, start, None);
    loop {
        let before = Instant::now();
        match l.check() {
            Ok(epoch) => {
                assert_eq!(epoch, l.epoch());
                first_ok.get_or_insert(before);
                last_ok = Instant::now();
            }
            Err(lost) => {
                eprintln!("{who}: {lost}");
                lost_at = Some(Instant::now());
                break;
            }
        }
        if max.is_some_and(|m| start.elapsed() >= m) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let epoch = l.epoch();
    if lost_at.is_none() {
        l.resign().expect("resign");
    }
    Reign { who, epoch, first_ok: first_ok.expect("check() was Ok at least once"), last_ok, lost_at }
}

/// Print each reign relative to `origin` (when etcd went away).
fn print_reigns(reigns: &[Reign], origin: Instant) {
    for r in reigns {
        eprintln!(
            "{} epoch {}: Ok from +{:?} to +{:?}, lost at {:?}",
            r.who,
            r.epoch,
            r.first_ok.saturating_duration_since(origin),
            r.last_ok.saturating_duration_since(origin),
            r.lost_at.map(|t| t.saturating_duration_since(origin))
        );
    }
}

fn assert_never_two_monarchs(reigns: &[Reign]) {
    let mut sorted = reigns.to_vec();
    sorted.sort_by_key(|r| r.first_ok);
    for pair in sorted.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(a.last_ok < b.first_ok, "two monarchs at once: {a:?} and {b:?}");
        assert!(a.epoch < b.epoch, "epochs must increase from one monarch to the next: {a:?} then {b:?}");
    }
}

#[test]
fn one_leader_and_handover_on_resign() {
    let etcd = Etcd::start();
    let ttl = Duration::from_secs(3);
    let a = Candidate::connect(etcd.config("monarch/chassis-1", "a", ttl)).expect("connect a");
    let b = Candidate::connect(etcd.config("monarch/chassis-1", "b", ttl)).expect("connect b");
    assert_eq!(a.leader().expect("leader"), None);

    let la = a.campaign(Some(Duration::from_secs(10))).expect("a campaigns");
    let epoch_a = la.check().expect("a leads");
    assert_eq!(a.leader().expect("leader"), Some(("a".to_string(), epoch_a)));

    let (won_tx, won_rx) = mpsc::channel();
    let b_thread = thread::spawn(move || {
        let r = b.campaign(Some(Duration::from_secs(20)));
        won_tx.send(Instant::now()).expect("send");
        (b, r)
    });
    assert!(won_rx.recv_timeout(Duration::from_millis(1500)).is_err(), "b won while a leads");
    la.check().expect("a still leads while b waits");

    let resigned_at = Instant::now();
    la.resign().expect("a resigns");
    let won_at = won_rx.recv_timeout(Duration::from_secs(10)).expect("b wins after a resigns");
    let (b, lb) = b_thread.join().expect("b thread");
    let lb = lb.expect("b leads");
    assert!(won_at > resigned_at);
    let epoch_b = lb.check().expect("b leads");
    assert!(epoch_b > epoch_a, "epoch {epoch_b} after {epoch_a}");
    assert_eq!(a.leader().expect("leader"), Some(("b".to_string(), epoch_b)));

    // A bounded campaign gives up and names the monarch.
    let gave_up = a.campaign(Some(Duration::from_millis(500))).expect_err("b still leads");
    assert!(matches!(&gave_up, Error::GaveUp { leader: Some((who, e)), .. } if who == "b" && *e == epoch_b));
    assert!(gave_up.to_string().contains("b is monarch"), "{gave_up}");

    // The same candidate campaigns again and wins after b hands over.
    lb.resign().expect("b resigns");
    let la2 = a.campaign(Some(Duration::from_secs(10))).expect("a again");
    assert!(la2.epoch() > epoch_b);
    drop(b);
    la2.resign().expect("resign");
    assert_eq!(a.leader().expect("leader"), None);
}

#[test]
fn dead_leader_is_usurped_after_the_ttl() {
    let etcd = Etcd::start();

    // etcd's floor on lease TTLs: ask for 1 s and see what it grants.
    let probe =
        Candidate::connect(etcd.config("monarch/ttl-probe", "p", Duration::from_secs(1))).expect("probe");
    let granted = probe.granted_ttl().expect("idle lease");
    eprintln!("etcd granted a {granted:?} lease when asked for 1s");
    assert!(granted >= Duration::from_secs(1));
    drop(probe);

    let ttl = Duration::from_secs(2);
    let a = Candidate::connect(etcd.config("monarch/chassis-2", "a", ttl)).expect("connect a");
    let b = Candidate::connect(etcd.config("monarch/chassis-2", "b", ttl)).expect("connect b");
    let la = a.campaign(Some(Duration::from_secs(10))).expect("a campaigns");
    let epoch_a = la.epoch();

    let b_thread = thread::spawn(move || {
        let lb = b.campaign(Some(Duration::from_secs(20)));
        (Instant::now(), lb)
    });
    thread::sleep(Duration::from_millis(800));
    assert!(!b_thread.is_finished(), "b won while a leads");

    // a's process is gone: no resign, no revoke, its keep-alives just stop.
    let died_at = Instant::now();
    drop(la);
    drop(a);
    let (won_at, lb) = b_thread.join().expect("b thread");
    let lb = lb.expect("b usurps");
    let waited = won_at - died_at;
    eprintln!("b took over {waited:?} after a died (TTL {ttl:?})");
    assert!(lb.epoch() > epoch_a);
    // a's last keep-alive was at most TTL/3 before it died; etcd checks expiry every 500 ms.
    assert!(waited >= ttl / 2, "b won after {waited:?}: before a's lease could expire");
    assert!(waited <= ttl + Duration::from_secs(3), "b won only after {waited:?}");
    lb.resign().expect("resign");
}

/// a leads, b waits; etcd goes away (`outage` returns when it went and when it was back);
/// then a campaigns again. a must stand down while etcd is away, nobody may win before it is
/// back, and no two reigns overlap.
fn etcd_away_mid_leadership(election: &str, outage: impl FnOnce(&mut Etcd) -> (Instant, Instant)) {
    let mut etcd = Etcd::start();
    let ttl = Duration::from_secs(2);
    let a = Candidate::connect(etcd.config(election, "a", ttl)).expect("connect a");
    let b = Candidate::connect(etcd.config(election, "b", ttl)).expect("connect b");
    let la = a.campaign(Some(Duration::from_secs(10))).expect("a campaigns");

    // a reigns until it loses leadership, then campaigns again and reigns briefly.
    let a_thread = thread::spawn(move || {
        let first = reign("a", la, None);
        let again = a.campaign(Some(Duration::from_secs(30))).expect("a campaigns again");
        vec![first, reign("a", again, Some(Duration::from_millis(700)))]
    });
    let b_thread = thread::spawn(move || {
        let lb = b.campaign(Some(Duration::from_secs(30))).expect("b campaigns");
        vec![reign("b", lb, Some(Duration::from_millis(700)))]
    });

    thread::sleep(Duration::from_millis(1000));
    let (away_at, back_at) = outage(&mut etcd);

    let mut reigns = a_thread.join().expect("a thread");
    reigns.extend(b_thread.join().expect("b thread"));
    print_reigns(&reigns, away_at);
    let lost_at = reigns[0].lost_at.expect("a lost leadership while etcd was away");
    assert!(lost_at > away_at);
    assert!(
        lost_at - away_at <= ttl + Duration::from_secs(1),
        "a stood down only after {:?}",
        lost_at - away_at
    );
    assert!(lost_at < back_at, "a must stand down while etcd is still away");
    for later in &reigns[1..] {
        assert!(later.first_ok > back_at, "nobody may win while etcd is away: {later:?}");
    }
    assert_never_two_monarchs(&reigns);
}

#[test]
fn etcd_stopped_mid_leadership_never_two_monarchs() {
    etcd_away_mid_leadership("monarch/chassis-3", |etcd| {
        let stopped_at = Instant::now();
        etcd.signal(rustix::process::Signal::STOP);
        thread::sleep(Duration::from_secs(3));
        let continued_at = Instant::now();
        etcd.signal(rustix::process::Signal::CONT);
        (stopped_at, continued_at)
    });
}

#[test]
fn etcd_killed_and_restarted_mid_leadership_never_two_monarchs() {
    etcd_away_mid_leadership("monarch/chassis-5", |etcd| {
        let killed_at = Instant::now();
        etcd.kill();
        thread::sleep(Duration::from_millis(2500));
        let restarting_at = Instant::now();
        etcd.restart();
        (killed_at, restarting_at)
    });
}

#[test]
fn unreachable_etcd_names_the_endpoint_and_the_fix() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let mut cfg = Config::new(vec![endpoint.clone()], "monarch/chassis-4", "a");
    cfg.connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = Candidate::connect(cfg).expect_err("nothing listens there");
    let msg = err.to_string();
    eprintln!("{msg} (after {:?})", started.elapsed());
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(msg.contains(&endpoint), "{msg}");
    assert!(msg.contains("start etcd"), "{msg}");
    assert!(msg.contains("--etcd"), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A configuration mistake is caught before any network traffic, naming the fix.
    let bad = Config::new(vec![endpoint], "monarch/", "a");
    let err = Candidate::connect(bad).expect_err("trailing slash");
    assert!(err.to_string().contains("must not end in '/'"), "{err}");
}

#[test]
fn only_the_leader_writes_records() {
    let etcd = Etcd::start();
    let ttl = Duration::from_secs(2);
    let a = Candidate::connect(etcd.config("monarch/chassis-6/election", "a", ttl)).expect("connect a");
    let b = Candidate::connect(etcd.config("monarch/chassis-6/election", "b", ttl)).expect("connect b");
    let la = a.campaign(Some(Duration::from_secs(10))).expect("a campaigns");
    la.record("monarch/chassis-6/monarch", "a 1").expect("the leader records");
    assert_eq!(b.read("monarch/chassis-6/monarch").expect("read").as_deref(), Some("a 1"));
    assert_eq!(b.read("monarch/chassis-6/nothing").expect("read"), None);

    // a's lease runs out on the server while a still holds its Leadership (a process that
    // was paused): b leads, and a's record is refused by etcd itself.
    let b_thread = thread::spawn(move || b.campaign(Some(Duration::from_secs(20))).map(|l| (b, l)));
    etcd.signal(rustix::process::Signal::STOP);
    thread::sleep(ttl + Duration::from_millis(500));
    assert!(la.check().is_err(), "a cannot prove its lease while etcd is stopped");
    etcd.signal(rustix::process::Signal::CONT);
    let (b, lb) = b_thread.join().expect("b thread").expect("b leads");
    match la.record("monarch/chassis-6/monarch", "a again") {
        Err(RecordError::Lost(_)) => {}
        other => panic!("a deposed leader wrote a record: {other:?}"),
    }
    lb.record("monarch/chassis-6/monarch", "b 2").expect("the new leader records");
    assert_eq!(a.read("monarch/chassis-6/monarch").expect("read").as_deref(), Some("b 2"));
    drop(b);
}
