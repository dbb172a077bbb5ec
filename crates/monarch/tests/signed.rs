//! Signed images, end to end: the `monarch image keygen|sign|verify` commands, `monarch up`
//! with `signature = "required"`, and — what protects a secondary — the agent's own refusal
//! of bytes that do not match a signature by a key it trusts, with a hostile monarch side
//! that stages whatever it likes and says OK to it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)] // test code: a panic is the failure report

use monarch_drivers::{Poll, Window};
use monarch_proto::window::layout;
use monarch_proto::window::msg::{self, Command, FailCode, Mode, Status, WindowConfig};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{MONARCH, monarch, up_json};

fn ok(out: &std::process::Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A folder with two key pairs (`ops`, `rogue`) and a signed 16 MiB payload image `lc.img`.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        for k in ["ops", "rogue"] {
            ok(&monarch(&["image", "keygen", "-o", s(&dir.path().join(k))]));
        }
        let img = dir.path().join("lc.img");
        ok(&monarch(&["image", "build", "--size", "24MiB", "--banner", "signed lc", "-o", s(&img)]));
        ok(&monarch(&["image", "sign", "--key", s(&dir.path().join("ops.key")), s(&img)]));
        Keys { dir }
    }
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// A topology trusting `ops.pub`, signatures required, with `processors` below it.
    fn topology(&self, processors: &str) -> PathBuf {
        let text = format!(
            "[chassis]\nname = \"signed\"\nrun_dir = \"win\"\ntrust = [\"ops.pub\"]\nsignature = \"required\"\n\n\
             [defaults]\ntimeouts = {{ rendezvous = \"20s\", verify = \"20s\", handoff = \"20s\", agent = \"20s\" }}\n\n\
             [[processor]]\nid = \"mm\"\nrole = \"monarch\"\n\n{processors}"
        );
        let p = self.file("t.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites_and_verify_says_why() {
    let k = Keys::new();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(k.file("ops.key")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let before = std::fs::read(k.file("ops.key")).unwrap();
    let again = monarch(&["image", "keygen", "-o", s(&k.file("ops"))]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("ops.key exists"), "{again:?}");
    assert_eq!(std::fs::read(k.file("ops.key")).unwrap(), before, "the key was not touched");

    let img = k.file("lc.img");
    let good = ok(&monarch(&["image", "verify", "--trust", s(&k.file("ops.pub")), s(&img)]));
    assert!(good.contains("signed by trusted key"), "{good}");
    // The wrong key: exit 1, saying which key signed.
    let wrong = monarch(&["image", "verify", "--trust", s(&k.file("rogue.pub")), s(&img)]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("not trusted"), "{wrong:?}");
    // Several trusted keys (rotation): either may have signed.
    ok(&monarch(&[
        "image",
        "verify",
        "--trust",
        s(&k.file("rogue.pub")),
        "--trust",
        s(&k.file("ops.pub")),
        s(&img),
    ]));
    // A secret key handed over as a public one is bad input, naming the file.
    let secret = monarch(&["image", "verify", "--trust", s(&k.file("ops.key")), s(&img)]);
    assert_eq!(secret.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&secret.stderr).contains("ops.key"), "{secret:?}");
    // Tampered after signing.
    let mut b = std::fs::read(&img).unwrap();
    b[1 << 20] ^= 0x01;
    std::fs::write(&img, &b).unwrap();
    let t = monarch(&["image", "verify", "--trust", s(&k.file("ops.pub")), s(&img)]);
    assert_eq!(t.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&t.stderr).contains("changed after it was signed"), "{t:?}");
    for sub in ["keygen", "sign", "verify"] {
        let help = ok(&monarch(&["image", sub, "--help"]));
        assert!(help.contains("Example:"), "`image {sub} --help` must teach: {help}");
    }
}

#[test]
fn a_signed_image_boots_when_signatures_are_required() {
    let k = Keys::new();
    let t = k.topology("[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"lc.img\"\n");
    ok(&monarch(&["plan", "--topology", s(&t)]));
    let r = up_json(Some(&t));
    assert_eq!(r.code, 0, "{}\n{}", r.summary, r.stderr);
    let a = r.processor("a");
    assert_eq!(a["state"], "running", "{a}");
    assert!(a["report"].as_str().unwrap().contains("signed lc"), "{a}");
    let log = std::fs::read_to_string(k.file("win/a.log")).unwrap();
    assert!(log.contains("signed by trusted key"), "the agent checked the signature itself:\n{log}");
}

#[test]
fn plan_refuses_an_unsigned_image_a_wrong_key_a_signature_of_another_image_and_a_bad_key_file() {
    let k = Keys::new();
    let other = k.file("other.img");
    ok(&monarch(&["image", "build", "--size", "20MiB", "-o", s(&other)]));
    // Signed by the rogue key, which the topology does not trust.
    let rogue = k.file("rogue.img");
    std::fs::copy(k.file("lc.img"), &rogue).unwrap();
    ok(&monarch(&["image", "sign", "--key", s(&k.file("rogue.key")), s(&rogue)]));
    // The signature of lc.img beside an image of another length.
    let moved = k.file("moved.img");
    std::fs::copy(&other, &moved).unwrap();
    std::fs::copy(k.file("lc.img.sig"), k.file("moved.img.sig")).unwrap();
    std::fs::write(k.file("broken.pub"), "monarch-pub v1 ed25519 nothex\n").unwrap();
    let cases = [
        ("image = \"other.img\"", "has no signature", "processor \"x\".image"),
        ("image = \"rogue.img\"", "does not trust", "processor \"x\".image"),
        ("image = \"moved.img\"", "a signature of another image", "processor \"x\".image"),
        ("image = \"lc.img\"\ntrust = [\"broken.pub\"]", "broken.pub", "processor \"x\".trust"),
        ("image = \"lc.img\"\ntrust = [\"missing.pub\"]", "missing.pub", "processor \"x\".trust"),
        ("image = \"builtin:payload\"", "cannot carry a signature", "processor \"x\".signature"),
    ];
    for (extra, says, field) in cases {
        let t = k.topology(&format!("[[processor]]\nid = \"x\"\nrole = \"secondary\"\n{extra}\n"));
        for cmd in [vec!["plan", "--topology", s(&t)], vec!["topology", "check", s(&t)]] {
            let out = monarch(&cmd);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{extra}: {err}");
            assert!(err.contains(says) && err.contains(field) && err.contains("t.toml"), "{extra}: {err}");
        }
    }
}

#[test]
fn a_tampered_image_is_refused_by_the_monarch_before_anything_is_released() {
    let k = Keys::new();
    let img = k.file("lc.img");
    let mut b = std::fs::read(&img).unwrap();
    b[2 << 20] ^= 0x40; // the same length: only the bytes tell
    std::fs::write(&img, &b).unwrap();
    let t = k.topology(&format!(
        "[[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"lc.img\"\n\n\
         [[processor]]\nid = \"b\"\nrole = \"secondary\"\nimage = \"good.img\"\n{}",
        ""
    ));
    std::fs::copy(k.file("lc.img.sig"), k.file("good.img.sig")).unwrap();
    let mut good = b.clone();
    good[2 << 20] ^= 0x40;
    std::fs::write(k.file("good.img"), &good).unwrap();
    let r = up_json(Some(&t));
    assert_eq!(r.code, 1, "{}", r.summary);
    let a = r.processor("a");
    assert_eq!(a["state"], "failed");
    let e = a["error"].as_str().unwrap();
    assert!(e.contains("lc.img.sig refused") && e.contains("changed after it was signed"), "{e}");
    assert!(r.events_of("a", "launched").is_empty(), "no agent was started for a refused image");
    // The other secondary is not affected.
    assert_eq!(r.processor("b")["state"], "running", "{}", r.summary);
}

#[test]
fn an_agent_that_trusts_another_key_refuses_and_the_summary_says_why() {
    // The monarch's check passes (it trusts ops.pub); the secondary's agent was configured
    // with rogue.pub only: its own check, over the bytes it received, decides.
    let k = Keys::new();
    let t = k.topology(
        "[[processor]]\nid = \"ext\"\nrole = \"secondary\"\nimage = \"lc.img\"\nlaunch = \"external\"\nwindow = { path = \"ext.win\" }\n",
    );
    let agent = Process::new(MONARCH)
        .args(["agent", "--window", s(&k.file("ext.win")), "--id", "ext", "--timeout", "20s"])
        .args(["--trust", s(&k.file("rogue.pub"))])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = up_json(Some(&t));
    let out = agent.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("signature refused") && log.contains("not trusted"), "{log}");
    assert!(!log.contains("handing off"), "{log}");
    assert_eq!(r.code, 1, "{}", r.summary);
    let ext = r.processor("ext");
    assert_eq!(ext["state"], "failed");
    assert!(ext["error"].as_str().unwrap().contains("refused the image's signature"), "{ext}");
    assert!(ext.get("report").is_none(), "no image ran: {ext}");
}

/// The monarch's side played by hand: the next status.
fn status(w: &Window, last: &mut u32) -> Status {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rung = w.bell_value(layout::DB_TO_PRIMARY);
        match w.read_message(layout::ST_SEQ, *last, msg::decode_status) {
            Poll::Message(n, st) => {
                *last = n;
                return st;
            }
            Poll::Garbage(n, e) => panic!("status {n} does not decode: {e}"),
            Poll::Nothing => {
                assert!(Instant::now() < deadline, "the agent posted nothing");
                w.wait_bell(layout::DB_TO_PRIMARY, rung, Duration::from_millis(100));
            }
        }
    }
}

/// A hostile monarch side: it stages `bytes` with `record` in the signature block, computes
/// the checksum over what it staged (so the checksum agrees), and says OK. The real `monarch
/// agent`, trusting ops.pub, must judge the bytes it received by itself.
fn hostile(
    k: &Keys,
    name: &str,
    bytes: &[u8],
    record: Option<&[u8]>,
    handoff: &str,
) -> (Status, i32, String) {
    let path = k.file(&format!("{name}.win"));
    let w = Window::create(&path, 24 << 20).unwrap();
    let algo = monarch_proto::Algo::Crc32c;
    let cfg = WindowConfig {
        image_size: bytes.len() as u64,
        load_offset: 0,
        algo,
        mode: Mode::Pull,
        epoch: 1,
        chunk_size: 0,
        ring_size: 0,
    };
    w.apply(&msg::encode_config(w.data_size(), &cfg));
    w.apply(&msg::encode_signature(record).unwrap());
    w.write_data(0, bytes).unwrap();
    let agent = Process::new(MONARCH)
        .args(["agent", "--window", s(&path), "--id", name, "--handoff", handoff, "--timeout", "20s"])
        .args(["--epoch", "1", "--trust", s(&k.file("ops.pub"))])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut cmd_seq, mut st_seq) = (0, 0);
    let mut post = |cmd: Command| {
        cmd_seq = msg::next_seq(cmd_seq);
        w.post(&msg::encode_command(0, cmd_seq, 1, &cmd), layout::DB_TO_SECONDARY);
    };
    post(Command::Release);
    assert!(matches!(status(&w, &mut st_seq), Status::Ready { .. }));
    post(Command::Staged { attempt: 1 });
    let Status::Verified { attempt: 1, digest } = status(&w, &mut st_seq) else { panic!("no VERIFIED") };
    assert_eq!(digest, algo.digest(bytes), "the checksum agrees with what was staged");
    post(Command::Ok { attempt: 1, digest });
    let last = status(&w, &mut st_seq);
    let out = agent.wait_with_output().unwrap();
    (last, out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_agent_itself_refuses_bytes_that_do_not_match_a_trusted_signature_even_after_an_ok() {
    let k = Keys::new();
    let image = std::fs::read(k.file("lc.img")).unwrap();
    let record = std::fs::read(k.file("lc.img.sig")).unwrap();
    // Control: the genuine image and its signature are accepted (handoff none: no exec).
    let (st, code, log) = hostile(&k, "genuine", &image, Some(&record), "none");
    assert_eq!(st, Status::HandingOff { attempt: 1 }, "{log}");
    assert_eq!(code, 0, "{log}");

    let mut flipped = image.clone();
    flipped[3 << 20] ^= 0x08; // a bit flip on the monarch's side, after any check it made
    let other =
        monarch(&["image", "build", "--size", "24MiB", "--banner", "another", "-o", s(&k.file("o.img"))]);
    ok(&other);
    ok(&monarch(&["image", "sign", "--key", s(&k.file("ops.key")), s(&k.file("o.img"))]));
    let other_record = std::fs::read(k.file("o.img.sig")).unwrap();
    ok(&monarch(&["image", "sign", "--key", s(&k.file("rogue.key")), s(&k.file("lc.img"))]));
    let rogue_record = std::fs::read(k.file("lc.img.sig")).unwrap();
    type Case<'a> = (&'a str, &'a [u8], Option<&'a [u8]>, &'a str);
    let cases: [Case<'_>; 5] = [
        ("tampered", &flipped, Some(&record), "changed after it was signed"),
        ("unsigned", &image, None, "without a signature"),
        ("truncated", &image, Some(&record[..record.len() - 9]), "malformed"),
        (
            "other",
            &image,
            Some(&other_record),
            "changed after it was signed, or the signature is of another image",
        ),
        ("rogue", &image, Some(&rogue_record), "not trusted"),
    ];
    for (name, bytes, rec, says) in cases {
        let (st, code, log) = hostile(&k, name, bytes, rec, "exec");
        assert_eq!(st, Status::Failed { attempt: 1, error: FailCode::SignatureRefused }, "{name}: {log}");
        assert_eq!(code, 1, "{name}: {log}");
        assert!(log.contains("signature refused") && log.contains(says), "{name}: {log}");
        assert!(!log.contains("handing off"), "{name}: the agent never exec'd the image: {log}");
    }
}

#[test]
fn a_signed_image_boots_over_the_network_with_its_signature_attached() {
    let k = Keys::new();
    let t = k.topology(
        "[[processor]]\nid = \"n\"\nrole = \"secondary\"\nimage = \"lc.img\"\nlaunch = \"netboot\"\n",
    );
    let r = up_json(Some(&t));
    assert_eq!(r.code, 0, "{}\n{}", r.summary, r.stderr);
    let n = r.processor("n");
    assert_eq!(n["state"], "running", "{n}");
    let log = std::fs::read_to_string(k.file("win/n.log")).unwrap();
    assert!(log.contains("signed by trusted key"), "the network agent checked the signature:\n{log}");
}

/// A monarch that delivers forged bytes with checksums that agree (the `tamper_image`
/// fault: one byte changed after the monarch's own check, every digest taken again): the
/// copy verifies, and only the agent's signature check stands between it and an exec.
#[test]
fn forged_bytes_whose_checksums_agree_are_refused_by_the_agent_itself() {
    let k = Keys::new();
    let t = k.topology(
        "[[processor]]\nid = \"forged\"\nrole = \"secondary\"\nimage = \"lc.img\"\nfault = { tamper_image = true }\n\n\
         [[processor]]\nid = \"b\"\nrole = \"secondary\"\nimage = \"lc.img\"\n",
    );
    let r = up_json(Some(&t));
    assert_eq!(r.code, 1, "{}\n{}", r.summary, r.stderr);
    let f = r.processor("forged");
    assert_eq!(f["state"], "failed", "{f}");
    assert!(f["error"].as_str().unwrap().contains("refused the image's signature"), "{f}");
    assert!(f.get("report").is_none(), "no image ran: {f}");
    assert!(
        r.events_of("forged", "mismatch").is_empty(),
        "the checksums agreed: only the signature caught it"
    );
    let log = std::fs::read_to_string(k.file("win/forged.log")).unwrap();
    assert!(log.contains("signature refused") && !log.contains("handing off"), "{log}");
    assert_eq!(r.processor("b")["state"], "running");
}
