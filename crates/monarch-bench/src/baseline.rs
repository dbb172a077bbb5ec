//! `monarch bench baseline`: the classic path (BIOS and TFTP) measured beside the window path.
//!
//! The same image is fetched over TFTP with 512-byte blocks (RFC 1350, no options: the
//! classic firmware path) from Debian's tftpd-hpa by a real client (atftp), on loopback and
//! over a veth pair with MTU 1500 between two network namespaces this bench creates (and
//! removes); then delivered and verified through a window. The tools are installed with
//! apt-get when missing.

use crate::netboot::{Guard, free_udp_port};
use crate::window::{WindowBenchOptions, deliver_once, pattern};
use monarch_boot::values::fmt_size;
use monarch_drivers::host;
use monarch_proto::Algo;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One TFTP transfer.
#[derive(Debug, Clone, Serialize)]
pub struct TftpFigure {
    /// `loopback` or `veth (MTU 1500, two network namespaces)`.
    pub path: String,
    /// Seconds for the whole file.
    pub seconds: f64,
    /// MiB/s.
    pub mib_s: f64,
    /// The window path's speed-up over it (window GiB/s measured in the same run).
    pub window_speedup: f64,
    /// memcpy's speed-up over it (the reference: the same bytes copied into a fresh shared
    /// mapping, same run): the most any window path on this host could gain.
    pub memcpy_speedup: f64,
    /// `window_speedup / memcpy_speedup` (1.0: the window path is as fast as memcpy).
    pub speedup_ratio: f64,
}

/// Everything `monarch bench baseline` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// Always `baseline`.
    pub bench: &'static str,
    /// Image size.
    pub size: u64,
    /// Window path: seconds to deliver and verify the image (best of the runs).
    pub window_seconds: f64,
    /// The reference: seconds to memcpy the image into a fresh shared mapping (best of the
    /// runs, measured just before the window path).
    pub memcpy_seconds: f64,
    /// TFTP transfers.
    pub tftp: Vec<TftpFigure>,
}

/// Install tftpd-hpa and atftp from Debian's repositories if they are missing.
pub fn ensure_tools(progress: &mut dyn FnMut(&str)) -> Result<(), String> {
    host::ensure_packages(&[("in.tftpd", "tftpd-hpa"), ("atftp", "atftp"), ("ip", "iproute2")], progress)
}

/// Network namespaces removed when dropped.
struct Netns(Vec<String>);
impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "delete", ns]).stderr(Stdio::null()).status();
        }
    }
}

fn sh(args: &[&str]) -> Result<(), String> {
    host::run(Command::new(args[0]).args(&args[1..]), &format!("`{}`", args.join(" "))).map(drop)
}

/// Fetch `file` from a tftpd-hpa serving `dir` on `addr:port`, server and client optionally in
/// network namespaces; returns the transfer time after checking the bytes.
fn tftp_fetch(
    dir: &Path,
    file: &str,
    expect: &[u8],
    addr: &str,
    server_ns: Option<&str>,
    client_ns: Option<&str>,
) -> Result<Duration, String> {
    let port = free_udp_port()?;
    let in_ns = |ns: Option<&str>, prog: &str| {
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, prog]);
                c
            }
            None => Command::new(prog),
        };
        c.stdin(Stdio::null());
        c
    };
    let server = in_ns(server_ns, "in.tftpd")
        .args(["-L", "-u", "root", "-s"])
        .arg(dir)
        .arg("-a")
        .arg(format!("{addr}:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start in.tftpd: {e}"))?;
    let _server = Guard(server);
    let out = dir.join(format!("fetched-{port}"));
    let fetch = |name: &str| -> Result<(bool, Duration), String> {
        let _ = std::fs::remove_file(&out);
        let t = Instant::now();
        let status = in_ns(client_ns, "atftp")
            .args(["-g", "-r", name, "-l"])
            .arg(&out)
            .arg(addr)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run atftp: {e}"))?;
        Ok((status.success(), t.elapsed()))
    };
    // Wait until the server answers (a tiny file), so its start-up is not in the timing.
    let start_wait = Instant::now();
    while !fetch(PROBE)?.0 {
        if start_wait.elapsed() > Duration::from_secs(10) {
            return Err(format!("tftpd-hpa on {addr}:{port} never answered"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, took) = fetch(file)?;
    if !ok {
        return Err(format!("atftp could not fetch {file} from {addr}:{port}"));
    }
    let got = std::fs::read(&out).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&out);
    if got != expect {
        return Err("the TFTP transfer delivered different bytes".into());
    }
    Ok(took)
}

/// A one-block file fetched to know the server is up.
const PROBE: &str = "probe.bin";

/// Run the baseline bench.
pub fn baseline(
    size: u64,
    reps: u32,
    agent_exe: PathBuf,
    progress: &mut dyn FnMut(&str),
) -> Result<Baseline, String> {
    ensure_tools(progress)?;
    host::with_scratch(Path::new("/tmp"), "baseline", |dir| {
        use std::os::unix::fs::PermissionsExt;
        let n = usize::try_from(size).map_err(|e| e.to_string())?;
        let image = pattern(n, 0x0062_6173_656c_696e);
        let img = dir.join("image.bin");
        std::fs::write(&img, &image).map_err(|e| e.to_string())?;
        std::fs::write(dir.join(PROBE), b"probe").map_err(|e| e.to_string())?;
        let _ = std::fs::set_permissions(dir.join(PROBE), std::fs::Permissions::from_mode(0o644));
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644));

        progress(&format!("window path: delivering and verifying {} ({} runs)", fmt_size(size), reps));
        let opts = WindowBenchOptions {
            size,
            secondaries: 1,
            window: size.next_multiple_of(1 << 20) + (1 << 20),
            algo: Algo::Crc32c,
            chunk: None,
            reps,
            agent_exe,
            signed: false,
        };
        // Windows live in RAM (/dev/shm), as they would in a secondary's memory.
        let shm = PathBuf::from(format!("/dev/shm/monarch-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&shm).map_err(|e| format!("cannot create {}: {e}", shm.display()))?;
        progress("memcpy of the same bytes into a fresh shared mapping (the reference)");
        let memcpy_gib_s = crate::window::memcpy_reference(&shm, &image, size, opts.window, reps)?;
        let memcpy = size as f64 / (1u64 << 30) as f64 / memcpy_gib_s.max(1e-9);
        let mut window = f64::MAX;
        let mut failure = None;
        for _ in 0..reps.max(1) {
            match deliver_once(&opts, &shm, &img) {
                Ok((seconds, _)) => window = window.min(seconds),
                Err(e) => failure = Some(e),
            }
        }
        let _ = std::fs::remove_dir_all(&shm);
        if let Some(e) = failure {
            return Err(e);
        }

        progress("TFTP, 512-byte blocks, tftpd-hpa -> atftp over loopback");
        let lo = tftp_fetch(dir, "image.bin", &image, "127.0.0.1", None, None)?;
        let mut tftp = vec![figure("loopback", size, lo, window, memcpy)];

        progress("TFTP over a veth pair (MTU 1500) between two network namespaces");
        let id = std::process::id();
        let (srv, cli) = (format!("monarch-bl-srv-{id}"), format!("monarch-bl-cli-{id}"));
        let _ns = Netns(vec![srv.clone(), cli.clone()]);
        let (va, vb) = (format!("mbl{id}a"), format!("mbl{id}b"));
        let va = &va[..va.len().min(15)];
        let vb = &vb[..vb.len().min(15)];
        sh(&["ip", "netns", "add", &srv])?;
        sh(&["ip", "netns", "add", &cli])?;
        sh(&["ip", "link", "add", va, "type", "veth", "peer", "name", vb])?;
        sh(&["ip", "link", "set", va, "netns", &srv])?;
        sh(&["ip", "link", "set", vb, "netns", &cli])?;
        // TEST-NET-1 (RFC 5737) addresses, only inside the two namespaces made here.
        for (ns, dev, addr) in [(&srv, va, "192.0.2.1/30"), (&cli, vb, "192.0.2.2/30")] {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "mtu", "1500", "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        let veth = tftp_fetch(dir, "image.bin", &image, "192.0.2.1", Some(&srv), Some(&cli))?;
        tftp.push(figure("veth (MTU 1500, two network namespaces)", size, veth, window, memcpy));
        Ok(Baseline { bench: "baseline", size, window_seconds: window, memcpy_seconds: memcpy, tftp })
    })
}

fn figure(path: &str, size: u64, took: Duration, window_seconds: f64, memcpy_seconds: f64) -> TftpFigure {
    let s = took.as_secs_f64();
    let window_speedup = s / window_seconds.max(1e-9);
    let memcpy_speedup = s / memcpy_seconds.max(1e-9);
    TftpFigure {
        path: path.into(),
        seconds: s,
        mib_s: size as f64 / (1u64 << 20) as f64 / s.max(1e-9),
        window_speedup,
        memcpy_speedup,
        speedup_ratio: window_speedup / memcpy_speedup.max(1e-9),
    }
}

/// `monarch bench baseline` for people.
pub fn render(r: &Baseline) -> String {
    let mut out = format!("\nmonarch bench baseline: {} image\n\n", fmt_size(r.size));
    out.push_str(&format!(
        "  window path (delivered + verified, crc32c)   {:>10.2} ms\n",
        r.window_seconds * 1e3
    ));
    out.push_str(&format!(
        "  reference: memcpy into a fresh shared mapping {:>9.2} ms\n\n",
        r.memcpy_seconds * 1e3
    ));
    for t in &r.tftp {
        out.push_str(&format!(
            "  TFTP 512-byte blocks, {:<40} {:>10.2} ms  ({:.1} MiB/s)\n      window is {:.0}x faster, memcpy {:.0}x: the window gets {:.2} of memcpy's speed-up\n\n",
            t.path,
            t.seconds * 1e3,
            t.mib_s,
            t.window_speedup,
            t.memcpy_speedup,
            t.speedup_ratio
        ));
    }
    out
}
