//! The network boot discovery flow end to end with real processes on loopback: `monarch netboot serve`
//! (discovery service) and `monarch netboot agent` machines — diskless handoff, A/B disk
//! installs that restart into the disk, no transfer when the disk is current, booting the
//! installed image when no server answers, repurpose, fallback from a corrupted slot, and
//! recover.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::{MONARCH, monarch};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const MAC: &str = "52:54:00:aa:bb:01";
const MARKER: &str = "MONARCH-PAYLOAD RUNNING";

struct Server {
    child: Child,
    port: u16,
    events: std::sync::mpsc::Receiver<Value>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP on loopback: bind both to learn one, then hand it over.
fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            break p;
        }
    }
}

impl Server {
    fn start(root: &Path) -> Server {
        let port = free_port();
        let mut child = Command::new(MONARCH)
            .args(["netboot", "serve", "--root"])
            .arg(root)
            .args(["--tftp-port", "0", "--http-port", "0", "--discovery-port", &port.to_string(), "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str::<Value>(&line).unwrap());
            }
        });
        let server = Server { child, port, events: rx };
        loop {
            let e =
                server.events.recv_timeout(Duration::from_secs(30)).expect("netboot serve never got ready");
            if e["event"] == "ready" {
                break;
            }
        }
        server
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Events so far.
    fn drain(&self) -> Vec<Value> {
        self.events.try_iter().collect()
    }

    /// Wait until the catalog was reloaded after an operator command.
    fn await_reload(&self) {
        loop {
            let e = self.events.recv_timeout(Duration::from_secs(10)).expect("the catalog was not reloaded");
            if e["event"] == "catalog_reloaded" {
                return;
            }
        }
    }
}

fn agent(args: &[&str]) -> Output {
    Command::new(MONARCH).args(["netboot", "agent", "--mac", MAC]).args(args).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn build_image(dir: &Path, name: &str, size: &str, banner: &str) -> PathBuf {
    let p = dir.join(name);
    let out = monarch(&["image", "build", "--size", size, "--banner", banner, "--out", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    p
}

#[test]
fn a_diskless_machine_runs_the_image_from_its_pre_posted_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let img = build_image(&root, "os.img", "24MiB", "diskless demo");
    provision(&root, &img);
    let server = Server::start(&root);
    let out = agent(&["--server", &server.addr(), "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(report["source"], "network", "{report}");
    assert_eq!(report["bytes"], 24 << 20);
    // The delivered bytes ran: the payload prints its own banner and size.
    assert!(stdout.contains(&format!("{MARKER} diskless demo [image {} bytes", 24 << 20)), "{stdout}");
    let events = server.drain();
    assert!(events.iter().any(|e| e["event"] == "sent" && e["bytes"] == 24 << 20), "{events:#?}");
}

#[test]
fn with_no_boot_server_a_diskless_machine_says_it_has_nothing_to_boot() {
    // A port nobody listens on (bound and released).
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = agent(&["--server", &format!("127.0.0.1:{port}"), "--wait", "1s", "--interval", "300ms"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no boot server answered"), "{stderr}");
    assert!(stderr.contains("diskless: nothing local to boot"), "{stderr}");
}

#[test]
fn a_disk_machine_installs_restarts_into_the_disk_and_survives_repurpose_outage_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let v1 = build_image(dir.path(), "os-v1.img", "24MiB", "disk demo v1");
    let v2 = build_image(dir.path(), "os-v2.img", "20MiB", "disk demo v2");
    let disk = dir.path().join("disk.img");
    let r = root.to_str().unwrap();
    let d = disk.to_str().unwrap();
    let ok = |o: Output| {
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}{err}");
        (out, err)
    };
    ok(monarch(&["netboot", "provision", "--root", r, "--machine", MAC, "--image", v1.to_str().unwrap()]));
    // Provisioning twice is refused and names the right command.
    let again =
        monarch(&["netboot", "provision", "--root", r, "--machine", MAC, "--image", v2.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again).1.contains("use `monarch netboot repurpose`"), "{}", text(&again).1);
    let unknown = monarch(&[
        "netboot",
        "repurpose",
        "--root",
        r,
        "--machine",
        "52:54:00:00:00:09",
        "--image",
        v2.to_str().unwrap(),
    ]);
    assert!(text(&unknown).1.contains("use `monarch netboot provision`"), "{}", text(&unknown).1);

    let server = Server::start(&root);
    let srv = server.addr();
    // First boot: fetched, installed in slot A, restarted into the disk, which runs it.
    let (out, err) = ok(agent(&["--server", &srv, "--disk", d, "--disk-size", "96MiB", "--json"]));
    let mut lines = out.lines();
    let report: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(
        (report["source"].as_str(), report["slot"].as_str()),
        (Some("installed"), Some("A")),
        "{report}"
    );
    let booted: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!((booted["source"].as_str(), booted["slot"].as_str()), (Some("disk"), Some("A")), "{err}");
    assert!(out.contains(&format!("{MARKER} disk demo v1")), "{out}");
    assert_eq!(server.drain().iter().filter(|e| e["event"] == "sent").count(), 1);

    // Second boot: the disk holds what the server offers: nothing is transferred.
    let (out, err) = ok(agent(&["--server", &srv, "--disk", d, "--json"]));
    assert!(err.contains("already has"), "{err}");
    assert!(out.contains(&format!("{MARKER} disk demo v1")), "{out}");
    assert_eq!(server.drain().iter().filter(|e| e["event"] == "sent").count(), 0, "no transfer");

    // Repurpose: the running server picks up the new catalog; the machine installs v2 in B.
    ok(monarch(&["netboot", "repurpose", "--root", r, "--machine", MAC, "--image", v2.to_str().unwrap()]));
    server.await_reload();
    let (out, _) = ok(agent(&["--server", &srv, "--disk", d, "--json"]));
    let report: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!((report["slot"].as_str(), report["generation"].as_u64()), (Some("B"), Some(2)), "{report}");
    assert!(out.contains(&format!("{MARKER} disk demo v2")), "{out}");
    let (status, _) = ok(monarch(&["netboot", "status", "--disk", d]));
    assert_eq!(status.matches("verified").count(), 2, "both slots hold verified images: {status}");

    // The boot server goes away: the machine boots what it has, and says so.
    drop(server);
    let (out, err) = ok(agent(&["--server", &srv, "--disk", d, "--wait", "1s", "--interval", "300ms"]));
    assert!(err.contains("no boot server answered"), "{err}");
    assert!(out.contains(&format!("{MARKER} disk demo v2")), "{out}");

    // Slot B rots: the disk boots slot A (v1) instead, saying why.
    let len = std::fs::metadata(&disk).unwrap().len();
    let layout = monarch_proto::slots::Layout::for_target(len).unwrap();
    let at = layout.slot_offset(monarch_proto::slots::Slot::B) + 4096;
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[usize::try_from(at).unwrap()] ^= 0x5a;
    std::fs::write(&disk, bytes).unwrap();
    let (out, err) = ok(agent(&["--server", &srv, "--disk", d, "--wait", "1s", "--interval", "300ms"]));
    assert!(err.contains("does not verify") && err.contains("booting slot A instead"), "{err}");
    assert!(out.contains(&format!("{MARKER} disk demo v1")), "{out}");

    // Recover with the server back: v2 is fetched again and installed over the rotten slot.
    let server = Server::start(&root);
    let (out, err) =
        ok(monarch(&["netboot", "recover", "--mac", MAC, "--server", &server.addr(), "--disk", d]));
    assert!(err.contains("before: slot B") && err.contains("installed into slot B"), "{err}");
    assert!(out.contains(&format!("{MARKER} disk demo v2")), "{out}");
    let (status, _) = ok(monarch(&["netboot", "status", "--disk", d]));
    assert_eq!(status.matches("verified").count(), 2, "{status}");
}

/// The UDP sockets of the process bound to `port`, as `/proc/net/udp` lists them: their
/// local IPv4 addresses.
fn udp_binds(port: u16) -> Vec<std::net::Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let local = l.split_whitespace().nth(1)?;
            let (ip, p) = local.split_once(':')?;
            let ip = std::net::Ipv4Addr::from(u32::from_be(u32::from_str_radix(ip, 16).ok()?));
            (u16::from_str_radix(p, 16).ok()? == port).then_some(ip)
        })
        .collect()
}

/// `--address 127.0.0.1` without `--interface`: discovery listens on that address only, not
/// on every address of the machine.
#[test]
fn an_address_without_an_interface_binds_discovery_to_that_address() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(MONARCH)
        .args(["netboot", "serve", "--root"])
        .arg(root.path())
        .args(["--address", "127.0.0.1", "--tftp-port", "0", "--http-port", "0"])
        .args(["--discovery-port", &port.to_string(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let ready = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| serde_json::from_str::<Value>(&l).is_ok_and(|e| e["event"] == "ready"));
    let binds = udp_binds(port);
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "netboot serve never got ready");
    assert_eq!(binds, vec![std::net::Ipv4Addr::LOCALHOST], "discovery's UDP socket");
}

/// A key pair `ops` (and `rogue`) in `dir`, and `img`'s signature by `ops` attached to a copy
/// of it, `signed` (`image ‖ .sig record ‖ len ‖ "MNRCHSIG"`: what a boot server serves).
fn keys_and_signed_copy(dir: &Path, img: &Path, signed: &Path) {
    for k in ["ops", "rogue"] {
        let out = monarch(&["image", "keygen", "-o", dir.join(k).to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out).1);
    }
    let out =
        monarch(&["image", "sign", "--key", dir.join("ops.key").to_str().unwrap(), img.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    let mut bytes = std::fs::read(img).unwrap();
    let mut record = img.as_os_str().to_owned();
    record.push(".sig");
    bytes.extend(monarch_proto::sign::attach(&std::fs::read(record).unwrap()));
    std::fs::write(signed, bytes).unwrap();
}

fn provision(root: &Path, img: &Path) {
    let out = monarch(&[
        "netboot",
        "provision",
        "--root",
        root.to_str().unwrap(),
        "--machine",
        MAC,
        "--image",
        img.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
}

/// A port nobody listens on (bound and released).
fn dead_server() -> String {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

/// `--signature required` holds for the disk's image too: an unsigned image installed
/// earlier (without `--trust`) is refused when no server answers, when the server offers
/// that same image (up to date), and by `boot-disk`; nothing runs, exit 1, and the message
/// names the image, the disk, the slot and the fix.
#[test]
fn signatures_required_refuse_an_unsigned_image_already_on_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let img = build_image(&root, "os.img", "24MiB", "unsigned on disk");
    // Keys only: this image stays unsigned (its .sig is removed).
    keys_and_signed_copy(dir.path(), &img, &dir.path().join("unused.img"));
    std::fs::remove_file(root.join("os.img.sig")).unwrap();
    provision(&root, &img);
    let disk = dir.path().join("disk.img");
    let d = disk.to_str().unwrap();
    let ops = dir.path().join("ops.pub");
    let ops = ops.to_str().unwrap();
    let server = Server::start(&root);
    let srv = server.addr();
    // Installed with no trust configured: it boots.
    let out = agent(&["--server", &srv, "--disk", d, "--disk-size", "96MiB"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("{MARKER} unsigned on disk")), "{stdout}");
    server.drain();

    let refused = |out: &Output, how: &str| {
        let (stdout, stderr) = text(out);
        assert_eq!(out.status.code(), Some(1), "{how}: {stderr}");
        assert!(!stdout.contains(MARKER), "{how}: nothing ran: {stdout}");
        assert!(
            stderr.contains("os.img on disk")
                && stderr.contains(d)
                && stderr.contains("slot A")
                && stderr.contains("without a signature")
                && stderr.contains("nothing was booted")
                && stderr.contains("monarch netboot recover --disk"),
            "{how}: {stderr}"
        );
    };
    let required = ["--trust", ops, "--signature", "required"];
    // The server offers the image the disk holds: up to date, and still refused.
    let out = agent(&[&["--server", &srv, "--disk", d][..], &required].concat());
    refused(&out, "up to date");
    assert!(text(&out).1.contains("already has"), "{}", text(&out).1);
    assert_eq!(server.drain().iter().filter(|e| e["event"] == "sent").count(), 0, "no transfer");
    // No server answers.
    let dead = dead_server();
    let out = agent(
        &[&["--server", &dead, "--disk", d, "--wait", "1s", "--interval", "300ms"][..], &required].concat(),
    );
    refused(&out, "no server");
    assert!(text(&out).1.contains("no boot server answered"), "{}", text(&out).1);
    // `boot-disk`, as a restart runs it.
    let out = monarch(&[&["netboot", "boot-disk", "--disk", d][..], &required].concat());
    refused(&out, "boot-disk");
    // Optional accepts it unsigned, saying so; with no trust it boots as before.
    let out = monarch(&["netboot", "boot-disk", "--disk", d, "--trust", ops, "--signature", "optional"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success() && stderr.contains("unsigned (signature = optional)"), "{stderr}");
    assert!(stdout.contains(&format!("{MARKER} unsigned on disk")), "{stdout}");
}

/// A signed image served with its signature attached is installed as served (trailer
/// included), so the next boot finds the disk up to date and transfers nothing; every boot
/// from the disk still checks the signature, and what runs is the image without its trailer.
#[test]
fn a_signed_image_is_installed_once_and_checked_at_every_boot_from_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let img = build_image(dir.path(), "plain.img", "24MiB", "signed on disk");
    keys_and_signed_copy(dir.path(), &img, &root.join("os.img"));
    provision(&root, &root.join("os.img"));
    let disk = dir.path().join("disk.img");
    let d = disk.to_str().unwrap();
    let ops = dir.path().join("ops.pub");
    let ops = ops.to_str().unwrap();
    let server = Server::start(&root);
    let srv = server.addr();
    let ran = format!("{MARKER} signed on disk [image {} bytes", 24 << 20);
    let required = ["--trust", ops, "--signature", "required"];

    let out =
        agent(&[&["--server", &srv, "--disk", d, "--disk-size", "96MiB", "--json"][..], &required].concat());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        (report["source"].as_str(), report["slot"].as_str()),
        (Some("installed"), Some("A")),
        "{report}"
    );
    // Checked once on the fetched bytes, once more by the restart into the disk.
    assert_eq!(stderr.matches("signed by trusted key").count(), 2, "{stderr}");
    assert!(stdout.contains(&ran), "the image ran without its trailer: {stdout}");
    assert_eq!(server.drain().iter().filter(|e| e["event"] == "sent").count(), 1);

    // Second boot: the disk's digest is the offer's: no transfer, no reinstall, still checked.
    let out = agent(&[&["--server", &srv, "--disk", d, "--json"][..], &required].concat());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("already has"), "{stderr}");
    let report: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!((report["source"].as_str(), report["slot"].as_str()), (Some("disk"), Some("A")), "{report}");
    assert_eq!(report["bytes"], 24 << 20, "{report}");
    assert!(stderr.matches("signed by trusted key").count() >= 2, "{stderr}");
    assert!(stdout.contains(&ran), "{stdout}");
    assert_eq!(server.drain().iter().filter(|e| e["event"] == "sent").count(), 0, "no transfer");
    let (status, _) = text(&monarch(&["netboot", "status", "--disk", d]));
    assert_eq!(status.matches("verified").count(), 1, "slot B was never written: {status}");

    // `boot-disk` with the trusted key boots it; with another key it refuses.
    let out = monarch(&[&["netboot", "boot-disk", "--disk", d][..], &required].concat());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success() && stderr.contains("signed by trusted key"), "{stderr}");
    assert!(stdout.contains(&ran), "{stdout}");
    let rogue = dir.path().join("rogue.pub");
    let out = monarch(&["netboot", "boot-disk", "--disk", d, "--trust", rogue.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not trusted") && stderr.contains("slot A"), "{stderr}");
    assert!(!stdout.contains(MARKER), "{stdout}");
    // Without trust the trailer is still split off before the handoff.
    let out = monarch(&["netboot", "boot-disk", "--disk", d]);
    assert!(text(&out).0.contains(&ran), "{}", text(&out).1);
}
