//! The demo payload: the program a secondary runs after an `exec` handoff.
//!
//! It proves it is the delivered image: it reads its own bytes (`/proc/self/exe`, which is
//! the sealed memfd the agent executed), computes their CRC-32C, reads the banner from its
//! trailer, writes both into the window's report block and posts RUNNING. Then it lives like
//! a booted OS ([`live`]): it beats, says when its services are up, and answers the
//! supervisor's notices, until it is shut down (or its parent is gone).

use crate::image;
use monarch_drivers::{Poll, Window};
use monarch_proto::Algo;
use monarch_proto::window::layout;
use monarch_proto::window::life::{self, Answer, NoticeKind};
use monarch_proto::window::msg::{self, Command, Status};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the payload prints on standard output when it runs without a window (after a
/// network boot), followed by its report.
pub const NETBOOT_MARKER: &str = "MONARCH-PAYLOAD RUNNING";

/// Why the demo payload could not report: no window, or a window it could not use.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Its own executable could not be read (for its report's checksum).
    #[error("cannot read my own image: {0}")]
    OwnImage(std::io::Error),
    /// The window named by `MONARCH_WINDOW` could not be mapped.
    #[error(transparent)]
    Window(#[from] monarch_drivers::WindowError),
    /// The window would not take the report.
    #[error("{0}")]
    Report(String),
}

/// What the payload knows of its own bytes.
struct OwnImage {
    /// Length in bytes.
    len: u64,
    /// CRC-32C of all of them.
    digest: monarch_proto::Digest,
    /// The last bytes, where the banner and trailer are.
    tail: Vec<u8>,
}

/// Our own executable's checksum, length and last bytes. Only the runs that hold data are
/// read; the holes between them are checksummed as the zeroes they read as, without reading
/// them (the agent leaves an image's pages of zeroes unwritten, and a read of a hole costs
/// a copy of the zero page: the default image is two thirds padding).
///
/// The delivered image is a sealed memfd, which nothing can change: its data is checksummed
/// where it lies, through a mapping that faults in only the pages read. Any other
/// executable (a network boot's, on disk) is read a piece at a time.
fn own_image() -> std::io::Result<OwnImage> {
    use std::os::unix::fs::FileExt as _;
    const KEEP: u64 = (image::TRAILER_LEN + image::BANNER_MAX) as u64;
    const PIECE: usize = 256 << 10;
    let exe = std::path::Path::new("/proc/self/exe");
    if let Ok(img) = monarch_drivers::memimage::SealedImage::view(exe) {
        let bytes = img.bytes();
        let len = bytes.len() as u64;
        let digest = sparse_crc(len, img.data_ranges()?, |h, run| {
            let (Ok(start), Ok(end)) = (usize::try_from(run.start), usize::try_from(run.end)) else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "an image larger than memory",
                ));
            };
            h.update(&bytes[start..end]);
            Ok(())
        })?;
        let tail = bytes[bytes.len() - usize::try_from(len.min(KEEP)).unwrap_or(0)..].to_vec();
        return Ok(OwnImage { len, digest, tail });
    }
    let f = std::fs::File::open(exe)?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; PIECE];
    let digest = sparse_crc(len, monarch_drivers::memimage::data_ranges(&f, len)?, |h, run| {
        let mut pos = run.start;
        while pos < run.end {
            let piece = &mut buf[..usize::try_from(run.end - pos).unwrap_or(PIECE).min(PIECE)];
            f.read_exact_at(piece, pos)?;
            h.update(piece);
            pos += piece.len() as u64;
        }
        Ok(())
    })?;
    let keep = len.min(KEEP);
    let mut tail = vec![0u8; usize::try_from(keep).unwrap_or(0)];
    f.read_exact_at(&mut tail, len - keep)?;
    Ok(OwnImage { len, digest, tail })
}

/// The CRC-32C of `len` bytes of which only `runs` (in order, within `len`) may hold data:
/// `feed` hashes the bytes of one run; the holes around the runs are hashed as zeroes,
/// arithmetically.
fn sparse_crc(
    len: u64,
    runs: Vec<std::ops::Range<u64>>,
    mut feed: impl FnMut(&mut monarch_proto::checksum::Hasher, std::ops::Range<u64>) -> std::io::Result<()>,
) -> std::io::Result<monarch_proto::Digest> {
    let mut h = monarch_proto::checksum::Hasher::new(Algo::Crc32c);
    let mut pos = 0u64;
    for run in runs {
        h.update_zeros(run.start - pos);
        pos = run.end;
        feed(&mut h, run)?;
    }
    h.update_zeros(len - pos);
    Ok(h.finish())
}

/// Run the payload; the error is printed by the binary.
pub fn run() -> Result<(), PayloadError> {
    let me = own_image().map_err(PayloadError::OwnImage)?;
    let banner = image::read_banner(&me.tail).unwrap_or_else(|| "(no banner)".into());
    let mut report = format!("{banner} [image {} bytes, crc32c {}]", me.len, me.digest.to_hex(Algo::Crc32c));
    if let Ok(spec) = std::env::var("MONARCH_BOOT_INFO") {
        // Booted in phases (a machine of clusters): its cluster's boot info says who it is.
        println!("{}", phased_report(&spec, &report, me.len)?);
        return Ok(());
    }
    let Some(path) = std::env::var_os("MONARCH_WINDOW").map(PathBuf::from) else {
        // Booted over the network (`monarch netboot agent`): no window to report through;
        // standard output is the report.
        println!("{NETBOOT_MARKER} {report}");
        return Ok(());
    };
    let linger = std::env::var("MONARCH_LINGER")
        .ok()
        .and_then(|s| humantime::parse_duration(&s).ok())
        .unwrap_or(Duration::from_secs(3600));
    let w = Window::open_registers(&path)?;
    let missing = life::decode_missing(&|r| w.load(r));
    if !missing.is_empty() {
        report.push_str(&format!(" (degraded: without {})", missing.join(", ")));
    }
    let since = announce(&w, &report).map_err(PayloadError::Report)?;
    // Stop when the chassis goes away: the process named by MONARCH_SUPERVISOR (`monarch up`
    // when several candidates may take turns as monarch), else the parent that started us.
    let supervisor = std::env::var("MONARCH_SUPERVISOR").ok().and_then(|p| p.parse::<u32>().ok());
    let parent = rustix::process::getppid();
    let id = std::env::var("MONARCH_ID").unwrap_or_else(|_| "payload".into());
    let ended = live(
        &w,
        &since,
        linger,
        &Behaviour::from_env(),
        &|| match supervisor {
            Some(pid) => !monarch_drivers::host::alive(pid),
            None => rustix::process::getppid() != parent,
        },
        &mut |line| eprintln!("image {id}: {line}"),
    );
    eprintln!("image {id}: stopping ({})", ended.describe());
    Ok(())
}

/// The RUNNING report of a core booted in phases, as an event line: what its cluster's boot
/// info (`MONARCH_BOOT_INFO` = `BANK@OFFSET`) gives it: its cluster, its index among the
/// cluster's cores, their count, and the memory its kernel may use.
fn phased_report(spec: &str, report: &str, bytes: u64) -> Result<String, PayloadError> {
    use std::os::unix::fs::FileExt as _;
    let bad = |why: String| PayloadError::Report(format!("boot info {spec}: {why}"));
    let (path, offset) = spec.rsplit_once('@').ok_or_else(|| bad("not BANK@OFFSET".into()))?;
    let offset: u64 = offset.parse().map_err(|_| bad("the offset is not a number".into()))?;
    let f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut raw = vec![0u8; monarch_proto::arch::BOOT_INFO_SIZE];
    f.read_exact_at(&mut raw, offset).map_err(|e| bad(e.to_string()))?;
    let info = monarch_proto::arch::BootInfoView::parse(&raw).map_err(|e| bad(e.to_string()))?;
    let gid: u32 = std::env::var("MONARCH_CORE_GID")
        .ok()
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| bad("no MONARCH_CORE_GID".into()))?;
    let index = info.core_index(gid).ok_or_else(|| bad(format!("core gid {gid} has no entry")))?;
    let memory = info.memory();
    let id = std::env::var("MONARCH_ID").unwrap_or_else(|_| format!("gid{gid}"));
    // Event times count from the boot's start.
    let t0 = std::env::var("MONARCH_T0_UNIX_NS").ok().and_then(|t| t.parse::<u128>().ok()).unwrap_or(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let report = format!(
        "{report} cluster {} core {index} of {}, memory {:#x}+{:#x}",
        info.cluster(),
        info.core_count(),
        memory.base,
        memory.size
    );
    let ev = crate::events::Event {
        t_ms: now.saturating_sub(t0) as f64 / 1e6,
        kind: crate::events::EventKind::Done {
            id,
            state: "running".into(),
            attempts: 1,
            bytes,
            ms: 0.0,
            report: Some(report),
            error: None,
        },
    };
    serde_json::to_string(&ev).map_err(|e| bad(e.to_string()))
}

/// Where every command block and the notice block stood just before RUNNING was posted:
/// messages after it are for the running image (see [`live`]).
pub struct Since {
    commands: Vec<u32>,
    notice: u32,
}

/// Check the window's header, write `report` into its report block and post RUNNING.
pub(crate) fn announce(w: &Window, report: &str) -> Result<Since, String> {
    msg::decode_header(&|r| w.load(r), w.data_size())
        .map_err(|e| format!("window {}: {e}", w.path().display()))?;
    // Taken before RUNNING: a monarch that sees it may post SHUTDOWN at once (regression:
    // taken after, under load, that SHUTDOWN was counted as already seen, and the image
    // idled until the monarch's grace ran out and it was killed).
    let since = Since {
        commands: (0..layout::CMD_BLOCKS).map(|k| w.load32(layout::cmd(k).seq)).collect(),
        notice: w.load32(layout::NOTICE_SEQ) & !msg::SEQ_BUSY,
    };
    w.apply(&msg::encode_report(report));
    // A fresh life: no beat, not ready yet.
    w.store(layout::LIFE_BEAT, 0);
    w.apply(&[life::encode_flags(false, false)]);
    let seq = msg::next_seq(w.load32(layout::ST_SEQ));
    // RUNNING answers the monarch the agent handed off under (its last status's epoch).
    let epoch = w.load32(layout::ST_EPOCH);
    w.post(
        &msg::encode_status(seq, epoch, &Status::Running { pid: u64::from(std::process::id()) }),
        layout::DB_TO_PRIMARY,
    );
    Ok(since)
}

/// How a running image behaves under supervision. The demo payload takes it from its
/// environment, which the monarch sets from the topology: `MONARCH_READY_AFTER` (a
/// duration), `MONARCH_NEVER_READY=1`, `MONARCH_DEFER` (the reason it defers shutdown and
/// reboot notices with).
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Its services take this long to come up after RUNNING.
    pub ready_after: Duration,
    /// Its services never come up.
    pub never_ready: bool,
    /// It cannot let go: every notice that awaits an answer is deferred with this reason.
    pub defer: Option<String>,
}

impl Behaviour {
    /// From the environment (see [`Behaviour`]).
    pub fn from_env() -> Behaviour {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Behaviour {
            ready_after: var("MONARCH_READY_AFTER")
                .and_then(|s| humantime::parse_duration(&s).ok())
                .unwrap_or_default(),
            never_ready: var("MONARCH_NEVER_READY").is_some_and(|v| v == "1"),
            defer: var("MONARCH_DEFER"),
        }
    }

    /// The environment that gives an exec'd demo payload this behaviour.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![(
            "MONARCH_READY_AFTER".to_string(),
            humantime::format_duration(self.ready_after).to_string(),
        )];
        if self.never_ready {
            env.push(("MONARCH_NEVER_READY".into(), "1".into()));
        }
        if let Some(why) = &self.defer {
            env.push(("MONARCH_DEFER".into(), why.clone()));
        }
        env
    }
}

/// Why a running image stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The monarch's SHUTDOWN command (the end of a boot that is not held).
    Shutdown,
    /// A shutdown or reboot notice, acknowledged.
    Notice(NoticeKind),
    /// The chassis went away.
    Gone,
    /// The linger time passed (no supervisor).
    Lingered,
}

impl Ended {
    /// For the log.
    pub fn describe(&self) -> String {
        match self {
            Ended::Shutdown => "SHUTDOWN received".into(),
            Ended::Notice(k) => format!("{} notice acknowledged", k.name()),
            Ended::Gone => "the chassis is gone".into(),
            Ended::Lingered => "lingered long enough".into(),
        }
    }
}

/// Live like a booted OS until the monarch posts SHUTDOWN, a shutdown or reboot notice is
/// acknowledged, `gone()` says to stop, or (unsupervised) `linger` has passed: beat every
/// `life.beat_period`, say ready once its services are up, answer the supervisor's notices.
///
/// SHUTDOWN and notices are taken from any writer whose epoch is at least the one the image
/// was released under (and the window's claim, `cfg.epoch`): the monarch that supervises the
/// image may not be the one that released it. Messages are counted from `since`, what
/// `announce` saw before it posted RUNNING.
pub fn live(
    w: &Window,
    since: &Since,
    linger: Duration,
    behaviour: &Behaviour,
    gone: &dyn Fn() -> bool,
    say: &mut dyn FnMut(&str),
) -> Ended {
    let mut seqs = since.commands.clone();
    let mut notice_seq = since.notice;
    let mut answer_seq = w.load32(layout::ANSWER_SEQ) & !msg::SEQ_BUSY;
    let released = w.load32(layout::ST_EPOCH);
    let start = Instant::now();
    let period = Duration::from_millis(u64::from(w.load32(layout::LIFE_BEAT_PERIOD)));
    let supervised = !period.is_zero();
    let mut beats = 0u64;
    let mut next_beat = start;
    let mut ready = false;
    let fenced = |epoch: u32| epoch < released.max(w.load32(layout::CFG_EPOCH));
    let count_fenced = || w.store(layout::ST_FENCED, w.load(layout::ST_FENCED) + 1);
    loop {
        let now = Instant::now();
        if !supervised && now.duration_since(start) >= linger {
            return Ended::Lingered;
        }
        if supervised && now >= next_beat {
            beats += 1;
            w.store(layout::LIFE_BEAT, beats);
            next_beat = now + period;
        }
        if !ready && !behaviour.never_ready && now.duration_since(start) >= behaviour.ready_after {
            ready = true;
            w.apply(&[life::encode_flags(true, false)]);
            say("services up: ready");
        }
        let seen = w.bell_value(layout::DB_TO_SECONDARY);
        for (k, last) in seqs.iter_mut().enumerate() {
            let dec = |r: &dyn Fn(layout::Reg) -> u64| msg::decode_command(k, r);
            if let Poll::Message(seq, stamped) = w.read_message(layout::cmd(k).seq, *last, dec) {
                *last = seq;
                if fenced(stamped.epoch) {
                    // A deposed monarch: ignored, and counted like the agent counts them.
                    count_fenced();
                } else if stamped.cmd == Ok(Command::Shutdown) {
                    return Ended::Shutdown;
                }
            }
        }
        match w.read_message(layout::NOTICE_SEQ, notice_seq, life::decode_notice) {
            Poll::Message(seq, n) if fenced(n.epoch) => {
                notice_seq = seq;
                count_fenced();
            }
            Poll::Message(seq, n) => {
                notice_seq = seq;
                let kind = n.notice.kind;
                say(&format!(
                    "notice: {} ({}), deadline {} ms",
                    kind.name(),
                    n.notice.text,
                    n.notice.deadline_ms
                ));
                let answer = match (&behaviour.defer, kind.awaits_answer()) {
                    (Some(why), true) => Answer::Defer(why.clone()),
                    _ => Answer::Ack,
                };
                answer_seq = msg::next_seq(answer_seq);
                w.post(&life::encode_answer(answer_seq, seq, &answer), layout::DB_TO_PRIMARY);
                match (&answer, kind) {
                    (Answer::Defer(why), _) => say(&format!("deferred: {why}")),
                    (Answer::Ack, NoticeKind::Shutdown | NoticeKind::Reboot) => {
                        say("cleaned up; acknowledged");
                        return Ended::Notice(kind);
                    }
                    (Answer::Ack, NoticeKind::PeerReboot) => {
                        say("context of the rebooting processor cleaned up; acknowledged")
                    }
                    (Answer::Ack, _) => say("acknowledged"),
                }
            }
            Poll::Garbage(seq, e) => {
                notice_seq = seq;
                say(&format!("ignored an unreadable notice: {e}"));
            }
            Poll::Nothing => {}
        }
        if gone() {
            return Ended::Gone;
        }
        let mut wait = Duration::from_millis(500);
        if supervised {
            wait = wait.min(next_beat.saturating_duration_since(Instant::now()));
        }
        if !ready && !behaviour.never_ready {
            wait = wait.min((start + behaviour.ready_after).saturating_duration_since(Instant::now()));
        }
        w.wait_bell(layout::DB_TO_SECONDARY, seen, wait.max(Duration::from_millis(1)));
    }
}
