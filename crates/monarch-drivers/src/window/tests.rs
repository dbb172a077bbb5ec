//! The protocol operations over both backends, and both sides of a handshake on two
//! threads over the in-memory one.

use super::{CHUNK, MemWindow, Poll, Window, WindowError, WindowMemory};
use crate::doorbell::Doorbell;
use monarch_proto::checksum::Algo;
use monarch_proto::window::layout::{self, Reg};
use monarch_proto::window::msg::{
    self, Command, RegisterError, Stamped, Status, encode_command, encode_status,
};
use std::fs::File;
use std::path::Path;
use std::thread;
use std::time::Duration;

/// A file window and an in-memory window, each with `data` bytes of data area.
fn backends(data: u64) -> (tempfile::TempDir, Window, MemWindow) {
    let dir = tempfile::tempdir().unwrap();
    let file = Window::create(&dir.path().join("w.win"), data).unwrap();
    (dir, file, MemWindow::new("test", data).unwrap())
}

/// Bytes that differ from their neighbours and from one `seed` to the next.
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| u8::try_from((i * 7 + seed * 13) % 251).unwrap()).collect()
}

/// A long wait: these tests never rely on a timeout expiring, only on a ring.
const LONG: Duration = Duration::from_secs(60);

fn busy_and_garbage_messages(w: &impl WindowMemory) {
    w.store(layout::ST_SEQ, u64::from(3 | msg::SEQ_BUSY));
    assert_eq!(w.read_message(layout::ST_SEQ, 0, msg::decode_status), Poll::Nothing);
    w.store(layout::ST_CODE, 0xdead_beef);
    w.store(layout::ST_SEQ, 1);
    assert_eq!(
        w.read_message(layout::ST_SEQ, 0, msg::decode_status),
        Poll::Garbage(1, RegisterError::UnknownStatus(0xdead_beef))
    );
}

#[test]
fn a_busy_publication_word_is_not_a_message_and_garbage_is_reported_not_panicked() {
    let (_d, f, m) = backends(4096);
    busy_and_garbage_messages(&f);
    busy_and_garbage_messages(&m);
}

fn bounds(w: &impl WindowMemory) {
    assert_eq!(w.data_size(), 100);
    assert!(w.write_data(0, &[1; 100]).is_ok());
    assert!(matches!(w.write_data(1, &[1; 100]), Err(WindowError::OutOfBounds { .. })));
    assert!(matches!(w.write_data(u64::MAX, &[1]), Err(WindowError::OutOfBounds { .. })));
    let mut buf = [0u8; 100];
    w.read_data(0, &mut buf).unwrap();
    assert_eq!(buf, [1; 100]);
    assert!(matches!(w.read_data(99, &mut [0; 2]), Err(WindowError::OutOfBounds { .. })));
    assert!(w.digest_data(50, 51, Algo::Crc32c, |_| {}).is_err());
    assert!(w.copy_out_digest(50, &mut [0; 51], Algo::Crc32c, |_| {}).is_err());
}

#[test]
fn data_access_is_bounds_checked() {
    let (_d, f, m) = backends(100);
    bounds(&f);
    bounds(&m);
}

fn digests(w: &impl WindowMemory) {
    let img = pattern(2 * CHUNK + 5, 1);
    w.write_data(9, &img).unwrap();
    for algo in Algo::ALL {
        let mut last = 0;
        let d = w.digest_data(9, img.len() as u64, algo, |n| last = n).unwrap();
        assert_eq!(d, algo.digest(&img));
        assert_eq!(last, img.len() as u64);
        let mut out = vec![0u8; img.len()];
        assert_eq!(w.copy_out_digest(9, &mut out, algo, |_| {}).unwrap(), algo.digest(&img));
        assert_eq!(out, img);
    }
    // From a word boundary, with a last piece of a few bytes: every byte copied and
    // checksummed once, the progress only ever growing, to the end.
    let img = pattern(3 * CHUNK + 17, 2);
    w.write_data(16, &img).unwrap();
    let mut out = vec![0u8; img.len()];
    let mut seen = Vec::new();
    assert_eq!(
        w.copy_out_digest(16, &mut out, Algo::Crc32c, |n| seen.push(n)).unwrap(),
        Algo::Crc32c.digest(&img)
    );
    assert_eq!(out, img);
    assert!(seen.windows(2).all(|p| p[0] < p[1]), "progress went back: {seen:?}");
    assert_eq!(seen.last(), Some(&(img.len() as u64)));
}

#[test]
fn digests_in_place_and_while_copying_agree_with_the_one_shot_digest() {
    let (_d, f, m) = backends(4 * CHUNK as u64);
    digests(&f);
    digests(&m);
}

fn fill(w: &impl WindowMemory, dir: &Path) {
    let src = dir.join("src");
    let bytes = pattern(9000, 2);
    std::fs::write(&src, &bytes).unwrap();
    let f = File::open(&src).unwrap();
    w.fill_from_file(100, &f, 1000, 8000).unwrap();
    let mut out = vec![0u8; 8000];
    w.read_data(100, &mut out).unwrap();
    assert_eq!(out, &bytes[1000..9000]);
    assert!(w.fill_from_file(5000, &f, 0, 8000).is_err(), "past the data area");
    assert!(w.fill_from_file(0, &f, 8000, 2000).is_err(), "past the end of the file");
}

#[test]
fn filling_from_a_file_lands_the_file_bytes() {
    let (dir, f, m) = backends(10_000);
    fill(&f, dir.path());
    fill(&m, dir.path());
}

#[test]
fn in_memory_windows_have_a_lock_per_handle_that_goes_with_it() {
    let a = MemWindow::new("lock", 0).unwrap();
    let b = a.attach();
    let r = layout::ST_FENCED;
    assert_eq!(a.compare_exchange(r, 0, 7), Ok(0));
    assert_eq!(b.compare_exchange(r, 0, 9), Err(7), "only one of two claims wins");
    assert!(a.try_lock().unwrap());
    assert!(a.try_lock().unwrap(), "taking it again through the same handle");
    assert!(!b.try_lock().unwrap());
    a.unlock();
    assert!(b.try_lock().unwrap());
    let c = b.attach();
    drop(b);
    assert!(c.try_lock().unwrap(), "the lock goes with its holder");
    assert!(!a.try_lock().unwrap());
}

#[test]
fn an_in_memory_window_too_big_to_allocate_is_an_error() {
    let e = MemWindow::new("huge", u64::MAX / 2).unwrap_err();
    assert!(e.to_string().contains("memory:huge: allocate"), "{e}");
}

/// Wait for the next message in a block, as the agent and the monarch do: take the
/// doorbell, look, and sleep on the doorbell only when there is nothing new.
fn next<T>(
    w: &impl WindowMemory,
    bell: Reg,
    seq: Reg,
    last: &mut u32,
    decode: impl Fn(&dyn Fn(Reg) -> u64) -> Result<T, RegisterError> + Copy,
) -> T {
    loop {
        let rung = w.bell_value(bell);
        match w.read_message(seq, *last, decode) {
            Poll::Message(n, v) => {
                *last = n;
                return v;
            }
            Poll::Garbage(n, e) => panic!("message {n} does not decode: {e}"),
            Poll::Nothing => {
                w.wait_bell(bell, rung, LONG);
            }
        }
    }
}

fn command(w: &impl WindowMemory, last: &mut u32) -> Command {
    let dec = |r: &dyn Fn(Reg) -> u64| msg::decode_command(0, r);
    let Stamped { cmd, .. } = next(w, layout::DB_TO_SECONDARY, layout::cmd(0).seq, last, dec);
    cmd.unwrap()
}

fn status(w: &impl WindowMemory, last: &mut u32) -> Status {
    next(w, layout::DB_TO_PRIMARY, layout::ST_SEQ, last, msg::decode_status)
}

/// The secondary's side of a pull-mode handshake: READY, then for every STAGED copy the image
/// out (at the configured offset and size) while checksumming it and post VERIFIED; on OK,
/// hand back the copy that was verified.
fn secondary(w: MemWindow) -> Vec<u8> {
    let (mut cmd_seq, mut st_seq) = (0, 0);
    let mut post = |st: Status| {
        st_seq = msg::next_seq(st_seq);
        w.post(&encode_status(st_seq, 1, &st), layout::DB_TO_PRIMARY);
    };
    assert!(w.try_lock().unwrap());
    post(Status::Ready { pid: 42 });
    let mut copy = Vec::new();
    loop {
        match command(&w, &mut cmd_seq) {
            Command::Staged { attempt } => {
                let offset = w.load(layout::CFG_LOAD_OFFSET);
                copy = vec![0u8; usize::try_from(w.load(layout::CFG_IMAGE_SIZE)).unwrap()];
                let digest = w
                    .copy_out_digest(offset, &mut copy, Algo::Xxh3, |n| w.store(layout::ST_PROGRESS, n))
                    .unwrap();
                post(Status::Verified { attempt, digest });
            }
            Command::Ok { attempt, .. } => {
                post(Status::HandingOff { attempt });
                return copy;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_primary_and_a_secondary_thread_stage_and_verify_an_image() {
    for bell in [Doorbell::Futex, Doorbell::Poll { max_sleep: Duration::from_millis(1) }] {
        let mut w = MemWindow::new("handshake", 1 << 20).unwrap();
        w.set_doorbell(bell);
        let agent = {
            let w = w.attach();
            thread::spawn(move || secondary(w))
        };
        let (mut cmd_seq, mut st_seq) = (0, 0);
        let mut post = |cmd: Command| {
            cmd_seq = msg::next_seq(cmd_seq);
            w.post(&encode_command(0, cmd_seq, 1, &cmd), layout::DB_TO_SECONDARY);
        };
        assert_eq!(status(&w, &mut st_seq), Status::Ready { pid: 42 });
        assert!(!w.try_lock().unwrap(), "the agent holds the lock");
        // An odd size at an odd offset: partial words at both ends of the copy.
        let image = pattern(300_001, 3);
        let (offset, want) = (4099u64, Algo::Xxh3.digest(&image));
        w.store(layout::CFG_IMAGE_SIZE, image.len() as u64);
        w.store(layout::CFG_LOAD_OFFSET, offset);
        // Attempt 1 lands damaged: the secondary's written checksum disagrees.
        let mut damaged = image.clone();
        damaged[150_000] ^= 0x40;
        w.write_data(offset, &damaged).unwrap();
        post(Command::Staged { attempt: 1 });
        let Status::Verified { attempt: 1, digest } = status(&w, &mut st_seq) else { panic!("not VERIFIED") };
        assert_ne!(digest, want);
        // Attempt 2 repairs the one word, and verifies.
        w.write_data(offset + 150_000, &image[150_000..150_001]).unwrap();
        post(Command::Staged { attempt: 2 });
        assert_eq!(status(&w, &mut st_seq), Status::Verified { attempt: 2, digest: want });
        assert_eq!(w.load(layout::ST_PROGRESS), image.len() as u64);
        post(Command::Ok { attempt: 2, digest: want });
        assert_eq!(status(&w, &mut st_seq), Status::HandingOff { attempt: 2 });
        assert_eq!(agent.join().unwrap(), image, "{bell:?}: the secondary holds exactly the image");
        assert!(w.try_lock().unwrap(), "the agent's lock went with it");
    }
}

#[test]
fn data_published_by_a_release_store_is_what_the_other_thread_copies_out() {
    // Each round the primary rewrites a region (a different size and alignment every time)
    // and publishes it; the secondary copies it out, checks every byte, writes its answer
    // into a region of its own and publishes that. A byte of a previous round seen after the
    // publication would fail the round.
    const ROUNDS: usize = 400;
    let w = MemWindow::new("rounds", 64 << 10).unwrap();
    let region = |round: usize| (u64::try_from(round % 61).unwrap(), 1000 + (round * 97) % 20_000);
    let answer_at = 40 << 10;
    let peer = {
        let w = w.attach();
        thread::spawn(move || {
            let (mut cmd_seq, mut st_seq) = (0, 0);
            for round in 1..=ROUNDS {
                let Command::Staged { attempt } = command(&w, &mut cmd_seq) else { panic!("not STAGED") };
                assert_eq!(attempt as usize, round);
                let (offset, len) = region(round);
                let mut got = vec![0u8; len];
                w.read_data(offset, &mut got).unwrap();
                assert!(got == pattern(len, round), "round {round}: stale or torn bytes");
                got.reverse();
                w.write_data(answer_at + offset, &got).unwrap();
                st_seq = msg::next_seq(st_seq);
                let st = Status::Verified { attempt, digest: Algo::Crc32c.digest(&got) };
                w.post(&encode_status(st_seq, 1, &st), layout::DB_TO_PRIMARY);
            }
        })
    };
    let (mut cmd_seq, mut st_seq) = (0, 0);
    for round in 1..=ROUNDS {
        let (offset, len) = region(round);
        w.write_data(offset, &pattern(len, round)).unwrap();
        cmd_seq = msg::next_seq(cmd_seq);
        let attempt = u32::try_from(round).unwrap();
        w.post(&encode_command(0, cmd_seq, 1, &Command::Staged { attempt }), layout::DB_TO_SECONDARY);
        let Status::Verified { attempt: a, digest } = status(&w, &mut st_seq) else { panic!("not VERIFIED") };
        assert_eq!(a, attempt);
        let mut answer = vec![0u8; len];
        w.read_data(answer_at + offset, &mut answer).unwrap();
        assert_eq!(Algo::Crc32c.digest(&answer), digest, "round {round}");
        answer.reverse();
        assert!(answer == pattern(len, round), "round {round}: the answer is not the data reversed");
    }
    peer.join().unwrap();
}

#[test]
fn a_doorbell_wait_on_an_in_memory_window_returns_when_rung_and_not_before() {
    let w = MemWindow::new("bell", 0).unwrap();
    let seen = w.bell_value(layout::DB_TO_PRIMARY);
    assert!(!w.wait_bell(layout::DB_TO_PRIMARY, seen, Duration::from_millis(1)), "nobody rang");
    let ringer = {
        let w = w.attach();
        // Rings once the main thread has said (through a register) that it is about to wait.
        thread::spawn(move || {
            loop {
                let rung = w.bell_value(layout::DB_TO_SECONDARY);
                if w.load(layout::STREAM_NAK) != 0 {
                    break;
                }
                w.wait_bell(layout::DB_TO_SECONDARY, rung, LONG);
            }
            w.ring(layout::DB_TO_PRIMARY);
        })
    };
    w.store(layout::STREAM_NAK, 1);
    w.ring(layout::DB_TO_SECONDARY);
    assert!(w.wait_bell(layout::DB_TO_PRIMARY, seen, LONG));
    assert_eq!(w.bell_value(layout::DB_TO_PRIMARY), seen + 1);
    ringer.join().unwrap();
}

#[test]
fn a_window_is_never_created_over_a_file_that_is_not_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "the operator's notes\n").unwrap();
    let e = Window::create(&text, 4096).unwrap_err();
    assert!(matches!(e, WindowError::NotAWindow { .. }), "{e}");
    assert!(e.to_string().contains("monarch will not overwrite it"), "{e}");
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "the operator's notes\n", "untouched");
    assert!(matches!(Window::create(dir.path(), 4096).unwrap_err(), WindowError::NotAWindow { .. }));
    // Nothing there, an empty file, or a window an earlier run left: those are windows.
    let win = dir.path().join("old.win");
    let w = Window::create(&win, 4096).unwrap();
    w.store(layout::HDR_MAGIC, layout::MAGIC);
    drop(w);
    assert!(Window::create(&win, 8192).is_ok(), "a window left by a run is reused");
    let empty = dir.path().join("empty.win");
    std::fs::write(&empty, b"").unwrap();
    assert!(Window::create(&empty, 4096).is_ok());
}

/// A peer that truncates the window file under us: the accesses that meet the missing pages
/// complete (on private zeroes) instead of killing the process with SIGBUS, the window says
/// it vanished, and another window is untouched.
#[test]
fn a_window_truncated_under_its_mapping_vanishes_without_a_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shrunk.win");
    let w = Window::create(&path, 1 << 20).unwrap();
    let (_d, other, _) = backends(4096);
    other.store(layout::CFG_IMAGE_SIZE, 42);
    w.write_data(0, &[7u8; 4096]).unwrap();
    assert!(!w.vanished() && w.check_intact().is_ok());
    // The peer's side: another descriptor, the file cut to nothing.
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    w.store(layout::CFG_IMAGE_SIZE, 5);
    w.write_data(4096, &[1u8; 8192]).unwrap();
    let mut back = [9u8; 16];
    w.read_data(0, &mut back).unwrap();
    assert!(w.vanished());
    assert_eq!(back, [0u8; 16], "what the peer held is gone, not read from stale memory");
    let e = w.check_intact().unwrap_err().to_string();
    assert!(e.contains("shrunk.win") && e.contains("truncated"), "{e}");
    assert!(!other.vanished());
    assert_eq!(other.load(layout::CFG_IMAGE_SIZE), 42);
    // The file itself is the peer's business: nothing of ours is written to it any more.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

/// The guard only takes SIGBUS of windows: a SIGBUS on any other mapping still kills the
/// process, as it did before (run in a child process, which must die of signal 7).
#[test]
fn a_sigbus_outside_every_window_still_kills() {
    use std::os::unix::process::ExitStatusExt;
    if std::env::var_os("MONARCH_SIGBUS_CHILD").is_some() {
        let dir = tempfile::tempdir().unwrap();
        let _w = Window::create(&dir.path().join("w.win"), 4096).unwrap(); // the handler is in
        let path = dir.path().join("plain");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(1 << 16).unwrap();
        let map = memmap2::MmapOptions::new().map_raw(&f).unwrap();
        f.set_len(0).unwrap();
        // SAFETY: in bounds of the mapping; the page behind it is gone, which is the point.
        unsafe { map.as_mut_ptr().write_volatile(1) };
        std::process::exit(0); // not reached when SIGBUS kills, as it must
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "window::tests::a_sigbus_outside_every_window_still_kills", "--nocapture"])
        .env("MONARCH_SIGBUS_CHILD", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(7), "{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// A window whose file was cut short is not intact even before any access met the gap: the
/// kernel's own copies into it (read(2) of an image file) fail with EFAULT, not SIGBUS, so
/// the guard never sees them.
#[test]
fn a_shrunk_window_is_not_intact_before_any_access_meets_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.win");
    let w = Window::create(&path, 1 << 20).unwrap();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(4096).unwrap();
    assert!(!w.vanished());
    let e = w.check_intact().unwrap_err().to_string();
    assert!(e.contains("cut.win") && e.contains("truncated"), "{e}");
}

/// A mapped image file copies into a window exactly, and one cut short under the copy reads
/// zeroes past its new end instead of killing the process.
#[test]
fn an_image_file_copies_from_its_mapping_and_a_cut_one_reads_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.bin");
    let bytes: Vec<u8> = (0..(3 << 16) + 5).map(|i: u32| (i % 253).to_le_bytes()[0]).collect();
    std::fs::write(&path, &bytes).unwrap();
    let f = File::open(&path).unwrap();
    let src = super::SourceFile::map(&f, &path, bytes.len() as u64).unwrap();
    let w = Window::create(&dir.path().join("w.win"), 1 << 18).unwrap();
    w.copy_from_source(0, &src, 0, bytes.len() as u64).unwrap();
    let mut out = vec![0u8; bytes.len()];
    w.read_data(0, &mut out).unwrap();
    assert_eq!(out, bytes);
    // An unaligned piece, and one past the end (refused, naming the file).
    w.copy_from_source(4096 + 3, &src, 77, 1000).unwrap();
    let mut piece = vec![0u8; 1000];
    w.read_data(4096 + 3, &mut piece).unwrap();
    assert_eq!(piece, bytes[77..1077]);
    let e = w.copy_from_source(0, &src, bytes.len() as u64 - 4, 8).unwrap_err().to_string();
    assert!(e.contains("image.bin"), "{e}");
    // Cut short by someone else: the pages past the new end read as zeroes.
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(4096).unwrap();
    let mut tail = vec![1u8; 4096];
    src.read_at(1 << 16, &mut tail).unwrap();
    assert!(src.vanished(), "the guard saw the cut");
    assert!(tail.iter().all(|b| *b == 0));
}
