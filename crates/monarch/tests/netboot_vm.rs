//! End to end with a network-boot client nobody here wrote: a QEMU VM whose built-in iPXE
//! boots from `monarch netboot serve` over a tap device on a bridge, both inside a network
//! namespace this test creates (and deletes): DHCP gives it an address and, because it is
//! iPXE, an HTTP URL for its script; the script loads the kernel over TFTP and the initrd
//! over HTTP (both services in one boot); the initrd's marker must appear on the serial
//! console. The kernel and initramfs are the ones `monarch vm prepare` makes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::{MONARCH, monarch};
use monarch_boot::vm::{self, PAYLOAD_CMDLINE, PAYLOAD_MARKER, artifacts::Artifacts};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MAC: &str = "52:54:00:6d:6e:01";
const SERVER: &str = "10.67.200.1";

/// A network namespace with a bridge (the server's side, `SERVER/24`) and a tap device on it
/// for QEMU; deleting the namespace deletes both.
struct PxeNet {
    ns: String,
}

impl PxeNet {
    fn new() -> PxeNet {
        let ns = format!("monarch-pxe-{}", std::process::id());
        let net = PxeNet { ns };
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {}", args.join(" "));
        };
        ip(&["netns", "add", &net.ns]);
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "add", "br0", "type", "bridge"],
            &["addr", "add", &format!("{SERVER}/24"), "dev", "br0"],
            &["link", "set", "br0", "up"],
            &["tuntap", "add", "dev", "tap0", "mode", "tap"],
            &["link", "set", "tap0", "master", "br0"],
            &["link", "set", "tap0", "up"],
        ] {
            ip(&[&["netns", "exec", &net.ns, "ip"], args].concat());
        }
        net
    }

    fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }
}

impl Drop for PxeNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.ns]).status();
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn qemu_ipxe_boots_the_initrd_over_dhcp_tftp_and_http_from_netboot_serve() {
    let out = monarch(&["vm", "prepare"]);
    assert!(out.status.success(), "monarch vm prepare: {}", String::from_utf8_lossy(&out.stderr));
    let art = Artifacts::at(&vm::artifacts::default_dir());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::copy(&art.kernel, root.join("vmlinuz")).unwrap();
    std::fs::copy(&art.initrd, root.join("initrd.cpio")).unwrap();
    // The kernel over TFTP, the initrd over HTTP: one boot exercises both services.
    std::fs::write(
        root.join("machines.toml"),
        format!(
            "[machine.\"{MAC}\"]\nname = \"pxe1\"\nkernel = \"tftp://{SERVER}/vmlinuz\"\n\
             initrd = \"initrd.cpio\"\ncmdline = \"{PAYLOAD_CMDLINE}\"\n"
        ),
    )
    .unwrap();

    let net = PxeNet::new();
    let mut serve = net.exec(MONARCH);
    serve
        .args(["netboot", "serve", "--root"])
        .arg(&root)
        .args(["--interface", "br0", "--address", SERVER, "--dhcp", "full"])
        .args(["--range", "10.67.200.100-10.67.200.120", "--leases"])
        .arg(dir.path().join("leases"))
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = Killed(serve.spawn().unwrap());
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout = server.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let mut events = Vec::new();
    loop {
        let ev = rx.recv_timeout(Duration::from_secs(30)).expect("netboot serve never said `ready`");
        let ready = ev["event"] == "ready";
        events.push(ev);
        if ready {
            break;
        }
    }

    let console = dir.path().join("console.log");
    let machine = vm::qemu::qemu_machine(512, "tcg", &console);
    let mut qemu = net.exec("qemu-system-x86_64");
    qemu.args(machine.get_args())
        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={MAC}"), "-boot", "n"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut vm = Killed(qemu.spawn().unwrap());

    let start = Instant::now();
    let limit = Duration::from_secs(240);
    loop {
        while let Ok(v) = rx.try_recv() {
            events.push(v);
        }
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        // The marker's whole line: the slow serial console may be caught mid-line.
        if let Some(at) = text.find(PAYLOAD_MARKER)
            && text[at..].contains('\n')
        {
            let line = text[at..].lines().next().unwrap_or_default();
            assert!(line.contains("monarch.role=payload"), "{text}");
            break;
        }
        if let Ok(Some(st)) = vm.0.try_wait() {
            panic!("QEMU ended ({st}) before the marker; console:\n{text}\nserver events: {events:#?}");
        }
        assert!(
            start.elapsed() < limit,
            "no marker within {limit:?}; console:\n{text}\nserver events: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(vm);
    // Give the server a moment to report the last transfers it finished.
    std::thread::sleep(Duration::from_millis(300));
    while let Ok(v) = rx.try_recv() {
        events.push(v);
    }
    let has = |service: &str, pred: &dyn Fn(&Value) -> bool| {
        events.iter().any(|e| e["service"] == service && pred(e))
    };
    assert!(has("dhcp", &|e| e.to_string().contains(MAC)), "a DHCP lease for the VM: {events:#?}");
    assert!(
        has("http", &|e| e["path"].as_str().is_some_and(|p| p.contains("52-54-00-6d-6e-01.ipxe"))),
        "the VM's iPXE script over HTTP: {events:#?}"
    );
    let kernel_len = std::fs::metadata(root.join("vmlinuz")).unwrap().len();
    let initrd_len = std::fs::metadata(root.join("initrd.cpio")).unwrap().len();
    assert!(
        has("tftp", &|e| e["event"] == "finished" && e["bytes"].as_u64() == Some(kernel_len)),
        "the whole kernel over TFTP: {events:#?}"
    );
    assert!(
        has("http", &|e| e["path"].as_str().is_some_and(|p| p.ends_with("initrd.cpio"))
            && e["bytes"].as_u64() == Some(initrd_len)),
        "the whole initrd over HTTP: {events:#?}"
    );
    drop(server);
}
