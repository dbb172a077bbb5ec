//! `monarch bench netboot`: our network boot servers against the references everybody
//! uses, with the same client and the same file, all measured in one run.
//!
//! - TFTP: our server ([`monarch_net::tftp`]) against Debian's tftpd-hpa, both fetched by
//!   atftp at blksize 1468 (the largest block that fits a 1500-byte MTU unfragmented), once
//!   with window 1 (RFC 1350's lock-step: the per-packet cost decides) and once with
//!   `windowsize 16` (RFC 7440). tftpd-hpa does not know windowsize and ignores the option,
//!   so it runs lock-step for the same client command: that is the gap the option closes.
//!   Our server's own report says which options were negotiated, so a client that silently
//!   dropped `windowsize` would show up as an error, not as a flattering figure.
//! - HTTP: our server ([`monarch_net::http`]) against nginx (`sendfile on`), both fetched by
//!   curl, a file of real bytes (a sparse file would let either side skip the disk cache).
//! - Paths: loopback, and a veth pair with MTU 1500 whose far end lives in a network
//!   namespace made here (the client runs there, the servers on the near end).
//!
//! Reading the figures: lock-step TFTP (window 1) is bound by wake-up latency, two per
//! block (client and server each sleep until the other's packet arrives), not by CPU; on a
//! virtual machine whose vCPUs idle, each wake-up goes through the hypervisor, so tftpd-hpa
//! measures anywhere from ~50 to ~140 MiB/s on the same box depending on what else runs.
//! With a window of 16 the wake-ups happen once per window and the client's own per-packet
//! work (atftp: `pselect` + `recvmsg` per block, a `write` per 4 KiB) becomes the ceiling.
//! The bench measures that ceiling rather than asserting it: each transfer's client CPU
//! time (its rusage), and from the least of them the fastest this client could fetch on
//! this host if the server cost nothing, beside the reference as the highest reachable
//! ratio. A target above that is marked client-bound: out of reach at the client CPU
//! observed. It is an observed limit, not a proof: what the client spends depends a little
//! on the server (which side's core runs the network stack's work, how often the client
//! sleeps). The CPU times assume nothing else in this process reaps children meanwhile
//! (true of the bench: its servers are reaped only when it ends).
//!
//! Each figure is the median of `reps` transfers, alternating ours and the reference so that
//! neither gets the quieter moments of a shared machine. The median, not the best: on this
//! kind of shared VM a server's fastest run is a lucky moment of the host (nginx fetched the
//! same 1 GiB at 1.1 to 3.8 GiB/s in 30 runs, median 1.9), so the ratio of two bests is a
//! ratio of two outliers and swung ±30% between runs of the bench, while the ratio of the
//! medians of 7 stays within a few percent. Every run's figure is in the JSON, and the best
//! is printed beside the median. Every transfer is checked: atftp's
//! output byte for byte against the served file, curl's downloaded size. Missing tools are
//! installed with apt-get; servers, the namespace and the scratch folder are removed however
//! the bench ends.

use crate::window::pattern;
use monarch_boot::values::fmt_size;
use monarch_drivers::host::{self, VethNs};
use monarch_net::catalog::Catalog;
use monarch_net::http::{HttpConfig, HttpServer};
use monarch_net::tftp::{TftpConfig, TftpEvent, TftpServer};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Runs per server and figure by default: an odd number, so the median is a run.
pub const DEFAULT_REPS: u32 = 7;
/// The block size of every TFTP figure: 1468 + 4 (TFTP) + 8 (UDP) + 20 (IPv4) = 1500.
pub const BLKSIZE: u16 = 1468;
/// The window of the windowed TFTP figure.
pub const WINDOW: u16 = 16;
/// Target: our TFTP at least as fast as tftpd-hpa in lock-step.
pub const TARGET_TFTP_WINDOW_1: f64 = 1.0;
/// Target: our TFTP with `windowsize 16` at least 10× tftpd-hpa (which ignores it).
pub const TARGET_TFTP_WINDOWED: f64 = 10.0;
/// Target: our HTTP at least as fast as nginx.
pub const TARGET_HTTP: f64 = 1.0;

/// The veth path's label (also its key in the JSON).
const VETH: &str = "veth (MTU 1500)";
const TFTP_FILE: &str = "tftp.img";
const HTTP_FILE: &str = "http.img";
/// The veth pair's addresses (a /24 of their own). Not TEST-NET-1 (192.0.2.0/24): hosts
/// like the one this bench was written on use that for their real uplink, and the near end
/// would then take over their default gateway's address. [`check_subnet_unused`] refuses to
/// start when something here already routes this /24.
const VETH_NEAR: [u8; 4] = [10, 231, 9, 1];
const VETH_FAR: [u8; 4] = [10, 231, 9, 2];
/// A tiny file fetched (untimed) until a server answers, so start-up is never timed.
const PROBE: &str = "probe.bin";
/// How long a server may take to answer its first probe.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// What to measure.
#[derive(Debug, Clone)]
pub struct NetbenchOptions {
    /// Size of the file fetched over TFTP.
    pub tftp_size: u64,
    /// Size of the file fetched over HTTP.
    pub http_size: u64,
    /// Transfers per server and figure (the median counts).
    pub reps: u32,
    /// Parent of the scratch folder (which holds both files: about `tftp_size + http_size`
    /// of disk, plus one fetched TFTP copy at a time).
    pub dir: PathBuf,
}

impl Default for NetbenchOptions {
    /// 64 MiB over TFTP, 1 GiB over HTTP, median of 7, scratch in the system's temp dir.
    fn default() -> Self {
        NetbenchOptions {
            tftp_size: 64 << 20,
            http_size: 1 << 30,
            reps: DEFAULT_REPS,
            dir: std::env::temp_dir(),
        }
    }
}

/// Our server against its reference on one figure: the fields both kinds of figure share
/// (flattened into their JSON objects).
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Our server's speed, MiB/s (median of the runs).
    pub monarch_mib_s: f64,
    /// Our server's fastest run, MiB/s.
    pub monarch_best_mib_s: f64,
    /// Every run of ours, MiB/s, in order.
    pub monarch_runs_mib_s: Vec<f64>,
    /// `tftpd-hpa` or `nginx`.
    pub reference: &'static str,
    /// The reference's speed, MiB/s (median of the runs).
    pub reference_mib_s: f64,
    /// The reference's fastest run, MiB/s.
    pub reference_best_mib_s: f64,
    /// Every run of the reference, MiB/s, in order.
    pub reference_runs_mib_s: Vec<f64>,
    /// `monarch_mib_s / reference_mib_s` (the medians).
    pub ratio: f64,
    /// The client's own CPU time (user + system) per transfer from our server, ms (median).
    pub monarch_client_cpu_ms: f64,
    /// The client's own CPU time per transfer from the reference, ms (median).
    pub reference_client_cpu_ms: f64,
    /// The client's limit on this host: the bytes of one transfer over the least CPU time
    /// the client spent on one (from either server), MiB/s: what a server that cost nothing
    /// and never kept the client waiting would reach, at the client CPU observed.
    pub client_bound_mib_s: f64,
    /// `client_bound_mib_s / reference_mib_s`: the highest ratio a server could show against
    /// this reference with this client on this host, at the client CPU observed.
    pub ceiling: f64,
    /// The ratio wanted.
    pub target: f64,
    /// `ratio >= target`.
    pub met: bool,
}

impl Comparison {
    /// The figure of `runs`, each a transfer of `size` bytes.
    fn new(runs: Runs, size: u64, reference: &'static str, target: f64) -> Comparison {
        let speeds = |v: &[Sample]| v.iter().map(|s| s.mib_s).collect::<Vec<_>>();
        let cpu_ms = |v: &[Sample]| v.iter().map(|s| s.client_cpu.as_secs_f64() * 1e3).collect::<Vec<_>>();
        let (ours, theirs) = (speeds(&runs.ours), speeds(&runs.reference));
        let reference_mib_s = median(&theirs);
        let ratio = median(&ours) / reference_mib_s.max(1e-9);
        let least_cpu =
            runs.ours.iter().chain(&runs.reference).map(|s| s.client_cpu).min().unwrap_or_default();
        let client_bound_mib_s = mib_s(size, least_cpu.as_secs_f64());
        Comparison {
            monarch_mib_s: median(&ours),
            monarch_best_mib_s: best(&ours),
            monarch_runs_mib_s: ours,
            reference,
            reference_mib_s,
            reference_best_mib_s: best(&theirs),
            reference_runs_mib_s: theirs,
            ratio,
            monarch_client_cpu_ms: median(&cpu_ms(&runs.ours)),
            reference_client_cpu_ms: median(&cpu_ms(&runs.reference)),
            client_bound_mib_s,
            ceiling: client_bound_mib_s / reference_mib_s.max(1e-9),
            target,
            met: ratio >= target,
        }
    }

    /// Whether the target is above what this client allows on this host (see `ceiling`).
    pub fn client_bound(&self) -> bool {
        self.ceiling < self.target
    }

    /// The table's last columns: both speeds as `median [best]`, the ratio, the client's
    /// ceiling, the target and the verdict.
    fn cells(&self) -> String {
        format!(
            "{} {} {:>6.2}x {:>6.1}x {:>5.1}x {}",
            speed(self.monarch_mib_s, self.monarch_best_mib_s),
            speed(self.reference_mib_s, self.reference_best_mib_s),
            self.ratio,
            self.ceiling,
            self.target,
            match (self.met, self.client_bound()) {
                (true, _) => "met",
                (false, false) => "NOT MET",
                (false, true) => "NOT MET (client-bound)",
            }
        )
    }
}

/// One TFTP comparison.
#[derive(Debug, Clone, Serialize)]
pub struct TftpFigure {
    /// `loopback` or `veth (MTU 1500)`.
    pub path: String,
    /// Block size asked for (and granted by both servers).
    pub blksize: u16,
    /// Window size the client asked for (tftpd-hpa ignores it and runs with 1).
    pub windowsize: u16,
    /// Window size our server reports it negotiated with the client.
    pub monarch_windowsize: u16,
    /// Ours against tftpd-hpa.
    #[serde(flatten)]
    pub cmp: Comparison,
}

/// One HTTP comparison.
#[derive(Debug, Clone, Serialize)]
pub struct HttpFigure {
    /// `loopback` or `veth (MTU 1500)`.
    pub path: String,
    /// Bytes fetched.
    pub size: u64,
    /// Ours against nginx.
    #[serde(flatten)]
    pub cmp: Comparison,
}

/// Everything `monarch bench netboot` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Netbench {
    /// Always `netboot`.
    pub bench: &'static str,
    /// Size of the TFTP file.
    pub tftp_size: u64,
    /// Size of the HTTP file.
    pub http_size: u64,
    /// Transfers per server and figure.
    pub reps: u32,
    /// The TFTP client used for both servers.
    pub tftp_client: String,
    /// The HTTP client used for both servers.
    pub http_client: String,
    /// TFTP figures: per path, window 1 then window 16.
    pub tftp: Vec<TftpFigure>,
    /// HTTP figures: per path.
    pub http: Vec<HttpFigure>,
    /// Every target met.
    pub all_met: bool,
}

/// A process killed (and reaped) when dropped: servers the bench started never outlive it.
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A UDP port free on loopback right now (for a server that wants its port on the command
/// line; the tiny race with other programs is acceptable in a bench).
pub(crate) fn free_udp_port() -> Result<u16, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("no free UDP port: {e}"))?;
    s.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// A TCP port free on `ip` right now (same race as [`free_udp_port`]).
fn free_tcp_port(ip: IpAddr) -> Result<u16, String> {
    let s = TcpListener::bind((ip, 0)).map_err(|e| format!("no free TCP port on {ip}: {e}"))?;
    s.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// How long a client ran, and how much CPU it used doing so.
#[derive(Debug, Clone, Copy)]
struct Took {
    /// From spawn to exit.
    wall: Duration,
    /// User + system time of the client (and of anything it ran and waited for).
    cpu: Duration,
}

/// Run `cmd` to its end with stdin closed and output captured, killing it after `limit` (a
/// generous upper bound, so a stuck client cannot hang the bench); its output, and how long
/// it ran and on how much CPU. (Hand-written: std has no wait-with-timeout, and these
/// dozen lines do not justify a dependency.) The CPU time is the growth of the reaped
/// children's across this child's wait: the bench reaps no other child meanwhile (its
/// servers run until it ends).
fn run_timed(cmd: &mut Command, what: &str, limit: Duration) -> Result<(Output, Took), String> {
    let cpu_before = host::reaped_children_cpu();
    let t = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    // A pidfd taken before the child can be reaped names this process and no later one
    // with the same pid, so the watchdog can never kill a stranger.
    let pidfd = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok());
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let expired = watch.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout);
        if let (true, Some(fd)) = (expired, &pidfd) {
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
        }
        expired
    });
    let out = child.wait_with_output();
    let took = Took { wall: t.elapsed(), cpu: host::reaped_children_cpu().saturating_sub(cpu_before) };
    let _ = done.send(());
    let killed = watchdog.join().unwrap_or(false);
    let out = out.map_err(|e| format!("{what}: {e}"))?;
    if killed {
        return Err(format!("{what} did not finish within {} s and was killed", limit.as_secs()));
    }
    Ok((out, took))
}

/// Whether a command's output says it succeeded; else an error with what it printed.
fn succeeded(out: &Output, what: &str) -> Result<(), String> {
    if out.status.success() {
        return Ok(());
    }
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Err(format!("{what} failed ({}): {}", out.status, text.trim()))
}

/// Where a client runs: on this host (loopback) or in the veth pair's far namespace.
#[derive(Clone, Copy)]
enum Net<'a> {
    Loopback,
    Veth(&'a VethNs),
}

impl Net<'_> {
    fn label(self) -> &'static str {
        match self {
            Net::Loopback => "loopback",
            Net::Veth(_) => VETH,
        }
    }

    /// The servers' address on this path.
    fn server_ip(self) -> IpAddr {
        match self {
            Net::Loopback => IpAddr::from([127, 0, 0, 1]),
            Net::Veth(_) => IpAddr::from(VETH_NEAR),
        }
    }

    /// A command running `program` where the client lives.
    fn client(self, program: &str) -> Command {
        match self {
            Net::Loopback => Command::new(program),
            Net::Veth(v) => v.far(program),
        }
    }
}

/// The served files.
struct Files {
    root: PathBuf,
    /// Where atftp writes (removed after each check, and when dropped).
    out: PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.out);
    }
}

/// Where atftp writes what it fetched: in RAM (`/dev/shm`) when there is one, as a booting
/// machine would, so that neither server's figure carries the cost of the client's file
/// system (ext4 block allocation, and writeback of gigabytes of copies disturbing the runs
/// that follow); else in the scratch folder.
fn fetch_target(scratch: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.join(format!("monarch-netbench-{}.img", std::process::id()))
    } else {
        scratch.join("fetched.img")
    }
}

/// Write `size` bytes of a non-repeating pattern to `path`, 1 MiB at a time (a 1 GiB file
/// never sits in memory).
fn write_pattern(path: &Path, size: u64, seed: u64) -> Result<(), String> {
    let err =
        |e: std::io::Error| format!("cannot write {}: {e} (is there room in its folder?)", path.display());
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    let mut left = size;
    let mut i = 0u64;
    while left > 0 {
        let n = left.min(1 << 20);
        // n <= 1 MiB, so it fits any usize.
        let chunk =
            pattern(usize::try_from(n).unwrap_or(1 << 20), seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        f.write_all(&chunk).map_err(err)?;
        left -= n;
        i += 1;
    }
    f.into_inner().map_err(|e| err(e.into_error()))?.sync_all().map_err(err)
}

/// Whether two files hold the same bytes (compared 1 MiB at a time).
fn same_bytes(a: &Path, b: &Path) -> Result<bool, String> {
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| format!("{}: {e}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| format!("{}: {e}", b.display()))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Our two servers, running on a tokio runtime's threads; stopped when dropped.
struct Ours {
    tftp: SocketAddr,
    http: SocketAddr,
    /// `(blksize, windowsize)` of every transfer our TFTP server started, in order.
    negotiated: Arc<Mutex<Vec<(u16, u16)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Ours {
    fn start(rt: &tokio::runtime::Runtime, ip: IpAddr, root: &Path) -> Result<Ours, String> {
        let negotiated = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&negotiated);
        let events: monarch_net::EventSink<TftpEvent> = Arc::new(move |e| {
            if let TftpEvent::Started { blksize, windowsize, .. } = e {
                seen.lock().unwrap_or_else(PoisonError::into_inner).push((blksize, windowsize));
            }
        });
        let tftp = rt
            .block_on(TftpServer::bind(TftpConfig::new(SocketAddr::new(ip, 0), root)))
            .map_err(|e| e.to_string())?;
        let catalog = Catalog::load(root).map_err(|e| e.to_string())?;
        let http = rt
            .block_on(HttpServer::bind(HttpConfig::new(SocketAddr::new(ip, 0), root, Arc::new(catalog))))
            .map_err(|e| e.to_string())?;
        let (tftp_addr, http_addr) = (tftp.local_addr(), http.local_addr());
        let tasks = vec![
            rt.spawn(tftp.run(events)),
            rt.spawn(async move {
                let _ = http.run(monarch_net::discard()).await;
            }),
        ];
        Ok(Ours { tftp: tftp_addr, http: http_addr, negotiated, tasks })
    }

    /// The options of the last transfer our TFTP server started.
    fn last_negotiated(&self) -> Option<(u16, u16)> {
        self.negotiated.lock().unwrap_or_else(PoisonError::into_inner).last().copied()
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        // Aborting the TFTP server's task raises its stop flag: transfers end within a tick.
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The references, as separate processes; killed when dropped.
struct References {
    tftp: SocketAddr,
    http: SocketAddr,
    _tftpd: Guard,
    _nginx: Guard,
}

impl References {
    fn start(ip: IpAddr, root: &Path, scratch: &Path) -> Result<References, String> {
        let tftp = SocketAddr::new(ip, free_udp_port()?);
        let tftpd = Command::new("in.tftpd")
            .args(["-L", "-u", "root", "-s"])
            .arg(root)
            .arg("-a")
            .arg(tftp.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start in.tftpd (tftpd-hpa): {e}"))?;
        let tftpd = Guard(tftpd);
        let http = SocketAddr::new(ip, free_tcp_port(ip)?);
        let nginx = start_nginx(http, root, scratch)?;
        Ok(References { tftp, http, _tftpd: tftpd, _nginx: nginx })
    }
}

/// nginx as a single foreground process (no master, one worker) serving `root` on `addr`,
/// with everything it writes (pid, logs, temp files) in a folder of `scratch`; ready (it
/// accepts connections) when this returns.
fn start_nginx(addr: SocketAddr, root: &Path, scratch: &Path) -> Result<Guard, String> {
    let d = scratch.join(format!("nginx-{}", addr.port()));
    std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    let conf = d.join("nginx.conf");
    let log = d.join("error.log");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n\
             sendfile on;\n  tcp_nopush on;\n  default_type application/octet-stream;\n\
             client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n\
             uwsgi_temp_path {d};\n  scgi_temp_path {d};\n\
             server {{ listen {addr}; root {r}; }}\n}}\n",
            d = d.display(),
            r = root.display(),
        ),
    )
    .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
    // `-e`: the error log before the config is read (else nginx tries /var/log/nginx).
    let child = Command::new("nginx")
        .arg("-e")
        .arg(&log)
        .arg("-p")
        .arg(&d)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start nginx: {e}"))?;
    let mut nginx = Guard(child);
    let t = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(nginx);
        }
        let exited = nginx.0.try_wait().ok().flatten();
        if exited.is_some() || t.elapsed() > READY_WITHIN {
            let why = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "nginx did not start on {addr} ({}): {} (config {})",
                exited.map_or_else(|| "no answer within 10 s".into(), |s| s.to_string()),
                why.trim(),
                conf.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `atftp -g` of `file` from `server`, with blksize 1468 and, when `window > 1`, that
/// windowsize; writes to `out`. `Ok(what it took)` when atftp succeeded.
fn atftp(net: Net<'_>, server: SocketAddr, file: &str, out: &Path, window: u16) -> Result<Took, String> {
    let mut c = net.client("atftp");
    c.args(["--option", &format!("blksize {BLKSIZE}")]);
    if window > 1 {
        c.args(["--option", &format!("windowsize {window}")]);
    }
    c.args(["-g", "-r", file, "-l"]).arg(out).arg(server.ip().to_string()).arg(server.port().to_string());
    let what = format!("atftp fetching {file} from {server} ({})", net.label());
    let (o, took) = run_timed(&mut c, &what, Duration::from_secs(300))?;
    succeeded(&o, &what)?;
    Ok(took)
}

/// Fetch the probe file until the TFTP server at `server` answers.
fn tftp_ready(net: Net<'_>, server: SocketAddr, out: &Path, name: &str) -> Result<(), String> {
    let t = Instant::now();
    loop {
        match atftp(net, server, PROBE, out, 1) {
            Ok(_) => return Ok(()),
            Err(e) if t.elapsed() > READY_WITHIN => {
                return Err(format!("{name} on {server} never answered over {}: {e}", net.label()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One timed TFTP fetch of the big file, its bytes checked.
fn tftp_once(
    net: Net<'_>,
    server: SocketAddr,
    files: &Files,
    size: u64,
    window: u16,
) -> Result<Sample, String> {
    let _ = std::fs::remove_file(&files.out);
    let took = atftp(net, server, TFTP_FILE, &files.out, window)?;
    let same = same_bytes(&files.root.join(TFTP_FILE), &files.out)?;
    let _ = std::fs::remove_file(&files.out);
    if !same {
        return Err(format!(
            "atftp received different bytes from {server} ({}, window {window}): the figure would be meaningless",
            net.label()
        ));
    }
    Ok(Sample { mib_s: mib_s(size, took.wall.as_secs_f64()), client_cpu: took.cpu })
}

/// `curl` of `url` to /dev/null: (bytes, seconds) as curl reports them, and curl's CPU time.
fn curl(net: Net<'_>, url: &str) -> Result<(u64, f64, Duration), String> {
    let mut c = net.client("curl");
    // --noproxy: a proxy from the environment must not stand between client and server.
    c.args([
        "-s",
        "-S",
        "-f",
        "--noproxy",
        "*",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{time_total}",
        url,
    ]);
    let what = format!("curl {url} ({})", net.label());
    let (o, took) = run_timed(&mut c, &what, Duration::from_secs(600))?;
    succeeded(&o, &what)?;
    let text = String::from_utf8_lossy(&o.stdout);
    let mut it = text.split_whitespace();
    match (it.next().map(str::parse::<u64>), it.next().map(str::parse::<f64>)) {
        (Some(Ok(n)), Some(Ok(s))) => Ok((n, s, took.cpu)),
        _ => Err(format!("{what}: cannot read curl's `size time` report {:?}", text.trim())),
    }
}

/// Fetch the probe file until the HTTP server at `server` answers.
fn http_ready(net: Net<'_>, server: SocketAddr, name: &str) -> Result<(), String> {
    let t = Instant::now();
    loop {
        match curl(net, &format!("http://{server}/{PROBE}")) {
            Ok(_) => return Ok(()),
            Err(e) if t.elapsed() > READY_WITHIN => {
                return Err(format!("{name} on {server} never answered over {}: {e}", net.label()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One timed HTTP fetch of the big file, its size checked.
fn http_once(net: Net<'_>, server: SocketAddr, size: u64) -> Result<Sample, String> {
    let (n, s, cpu) = curl(net, &format!("http://{server}/{HTTP_FILE}"))?;
    if n != size {
        return Err(format!(
            "curl received {n} bytes from {server} ({}) instead of {size}: the figure would be meaningless",
            net.label()
        ));
    }
    Ok(Sample { mib_s: mib_s(size, s), client_cpu: cpu })
}

fn mib_s(size: u64, seconds: f64) -> f64 {
    size as f64 / f64::from(1u32 << 20) / seconds.max(1e-9)
}

/// One transfer: its speed, and the client's CPU time for it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    mib_s: f64,
    client_cpu: Duration,
}

/// The runs of one figure, each server's in the order they ran.
struct Runs {
    ours: Vec<Sample>,
    reference: Vec<Sample>,
}

impl Runs {
    /// `reps` runs of ours and of the reference, alternating which goes first.
    fn alternate(
        reps: u32,
        mut ours: impl FnMut() -> Result<Sample, String>,
        mut reference: impl FnMut() -> Result<Sample, String>,
    ) -> Result<Runs, String> {
        let mut r = Runs { ours: Vec::new(), reference: Vec::new() };
        for i in 0..reps {
            if i % 2 == 0 {
                r.ours.push(ours()?);
                r.reference.push(reference()?);
            } else {
                r.reference.push(reference()?);
                r.ours.push(ours()?);
            }
        }
        Ok(r)
    }
}

/// The median (the mean of the middle two for an even count; 0 for none).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// Measure one path: TFTP window 1 and 16, then HTTP.
fn measure_path(
    rt: &tokio::runtime::Runtime,
    net: Net<'_>,
    opts: &NetbenchOptions,
    files: &Files,
    scratch: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<TftpFigure>, HttpFigure), String> {
    let ip = net.server_ip();
    let ours = Ours::start(rt, ip, &files.root)?;
    let refs = References::start(ip, &files.root, scratch)?;
    tftp_ready(net, ours.tftp, &files.out, "our TFTP server")?;
    tftp_ready(net, refs.tftp, &files.out, "tftpd-hpa")?;
    http_ready(net, ours.http, "our HTTP server")?;
    http_ready(net, refs.http, "nginx")?;
    let reps = opts.reps.max(1);

    let mut tftp = Vec::new();
    for (window, target) in [(1, TARGET_TFTP_WINDOW_1), (WINDOW, TARGET_TFTP_WINDOWED)] {
        progress(&format!(
            "TFTP over {}: {} with blksize {BLKSIZE}, window {window}: monarch vs tftpd-hpa, {reps} runs each",
            net.label(),
            fmt_size(opts.tftp_size)
        ));
        let mut negotiated = (0, 0);
        let runs = Runs::alternate(
            reps,
            || {
                let speed = tftp_once(net, ours.tftp, files, opts.tftp_size, window)?;
                negotiated = ours.last_negotiated().unwrap_or((0, 0));
                if negotiated != (BLKSIZE, window) {
                    return Err(format!(
                        "atftp asked our server for blksize {BLKSIZE} window {window} but negotiated \
                         blksize {} window {}: check that atftp is 0.8 or later (windowsize is RFC 7440)",
                        negotiated.0, negotiated.1
                    ));
                }
                Ok(speed)
            },
            || tftp_once(net, refs.tftp, files, opts.tftp_size, window),
        )?;
        tftp.push(TftpFigure {
            path: net.label().into(),
            blksize: BLKSIZE,
            windowsize: window,
            monarch_windowsize: negotiated.1,
            cmp: Comparison::new(runs, opts.tftp_size, "tftpd-hpa", target),
        });
    }

    progress(&format!(
        "HTTP over {}: {} with curl: monarch vs nginx, {reps} runs each",
        net.label(),
        fmt_size(opts.http_size)
    ));
    let runs = Runs::alternate(
        reps,
        || http_once(net, ours.http, opts.http_size),
        || http_once(net, refs.http, opts.http_size),
    )?;
    let http = HttpFigure {
        path: net.label().into(),
        size: opts.http_size,
        cmp: Comparison::new(runs, opts.http_size, "nginx", TARGET_HTTP),
    };
    Ok((tftp, http))
}

/// A tokio runtime shut down with a bound when dropped (plain `Drop` would wait for the
/// blocking threads of TFTP transfers without limit).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Run the bench: both servers against their references over loopback and a veth pair.
pub fn netboot_bench(opts: &NetbenchOptions, progress: &mut dyn FnMut(&str)) -> Result<Netbench, String> {
    if opts.tftp_size == 0 || opts.http_size == 0 {
        return Err("--tftp-size and --http-size must be at least 1 byte".into());
    }
    host::ensure_packages(
        &[
            ("in.tftpd", "tftpd-hpa"),
            ("atftp", "atftp"),
            ("curl", "curl"),
            ("nginx", "nginx"),
            ("ip", "iproute2"),
        ],
        progress,
    )?;
    host::with_scratch(&opts.dir, "netbench", |dir| {
        use std::os::unix::fs::PermissionsExt;
        // The namespace first: without root (or iproute2) the bench fails before writing a GiB.
        progress("making a veth pair (MTU 1500) to a network namespace for the client");
        check_subnet_unused(IpAddr::from(VETH_NEAR))?;
        let veth = VethNs::new(
            "nb",
            &IpAddr::from(VETH_NEAR).to_string(),
            &IpAddr::from(VETH_FAR).to_string(),
            1500,
            false,
        )?;
        let files = Files { root: dir.join("root"), out: fetch_target(dir) };
        std::fs::create_dir_all(&files.root)
            .map_err(|e| format!("cannot create {}: {e}", files.root.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        progress(&format!(
            "writing the files: {} for TFTP, {} for HTTP in {}",
            fmt_size(opts.tftp_size),
            fmt_size(opts.http_size),
            files.root.display()
        ));
        write_pattern(&files.root.join(TFTP_FILE), opts.tftp_size, 0x6e65_7462_656e_6368)?;
        write_pattern(&files.root.join(HTTP_FILE), opts.http_size, 0x6874_7470_626f_6f74)?;
        std::fs::write(files.root.join(PROBE), b"probe")
            .map_err(|e| format!("cannot write the probe: {e}"))?;

        let rt = Runtime(Some(
            // As `#[tokio::main]` would run the servers: one worker per core.
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("netbench")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))?,
        ));
        let Some(handle) = rt.0.as_ref() else { return Err("no runtime".into()) };

        let mut tftp = Vec::new();
        let mut http = Vec::new();
        for net in [Net::Loopback, Net::Veth(&veth)] {
            let (t, h) = measure_path(handle, net, opts, &files, dir, progress)?;
            tftp.extend(t);
            http.push(h);
        }
        drop(veth);

        let all_met = tftp.iter().all(|f| f.cmp.met) && http.iter().all(|f| f.cmp.met);
        Ok(Netbench {
            bench: "netboot",
            tftp_size: opts.tftp_size,
            http_size: opts.http_size,
            reps: opts.reps.max(1),
            tftp_client: tool_version("atftp", &["--version"], 1),
            http_client: tool_version("curl", &["--version"], 2),
            tftp,
            http,
            all_met,
        })
    })
}

/// Refuse to put `ip` on a veth end when this namespace already routes it somewhere (other
/// than by the default route): the bench would steal real traffic.
fn check_subnet_unused(ip: IpAddr) -> Result<(), String> {
    let routes = host::run(
        Command::new("ip").args(["-4", "-o", "route", "show", "table", "all", "match", &ip.to_string()]),
        "`ip route show`",
    )?;
    let used: Vec<&str> =
        routes.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("default")).collect();
    if used.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the bench's veth address {ip}/24 is already routed on this host ({}): remove that route or \
         interface (a veth `mnnb*` left by a killed bench: `ip link delete IFACE`) and try again",
        used.join("; ")
    ))
}

/// The first `words` words of what `tool ARGS` prints first (its name and version), or the
/// tool's name.
fn tool_version(tool: &str, args: &[&str], words: usize) -> String {
    Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let all = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&all).split_whitespace().take(words).collect::<Vec<_>>().join(" ")
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| tool.to_string())
}

/// The human table: medians, the ratio of the medians, and each side's best run.
pub fn render(b: &Netbench) -> String {
    let mut s = format!(
        "netboot bench: median of {} runs per server, ours and the reference alternating \
         (best run in brackets)\n\
         TFTP: {} fetched by {}, blksize {BLKSIZE}\n",
        b.reps,
        fmt_size(b.tftp_size),
        b.tftp_client
    );
    s += &format!(
        "  {:<16} {:<11} {:>23} {:>23} {:>7} {:>7} {:>6}\n",
        "path", "window", "monarch MiB/s", "tftpd-hpa MiB/s", "ratio", "ceiling", "target"
    );
    for f in &b.tftp {
        let window = if f.windowsize == 1 { "1".to_string() } else { format!("{} (asked)", f.windowsize) };
        s += &format!("  {:<16} {:<11} {}\n", f.path, window, f.cmp.cells());
    }
    s += "  (tftpd-hpa ignores windowsize: it is fetched with the same command and runs with window 1)\n";
    s += &format!("HTTP: {} fetched by {}\n", fmt_size(b.http_size), b.http_client);
    s += &format!(
        "  {:<28} {:>23} {:>23} {:>7} {:>7} {:>6}\n",
        "path", "monarch MiB/s", "nginx MiB/s", "ratio", "ceiling", "target"
    );
    for f in &b.http {
        s += &format!("  {:<28} {}\n", f.path, f.cmp.cells());
    }
    s += "client's CPU per transfer, ms (median, from ours / from the reference), and the client's limit:\n";
    let figures = b.tftp.iter().map(|f| (format!("TFTP {} window {}", f.path, f.windowsize), &f.cmp));
    for (name, c) in figures.chain(b.http.iter().map(|f| (format!("HTTP {}", f.path), &f.cmp))) {
        s += &format!(
            "  {name:<30} {:>8.1} / {:<8.1} -> at most {:.1} MiB/s\n",
            c.monarch_client_cpu_ms, c.reference_client_cpu_ms, c.client_bound_mib_s
        );
    }
    s += "  (ceiling: the ratio a server costing nothing would reach, the client's least CPU time per\n   \
          transfer being all it took; a target above it is out of reach with this client on this host)\n";
    s += if b.all_met { "all targets met\n" } else { "some targets NOT met\n" };
    s
}

/// `median [best]`, 23 columns wide.
fn speed(median: f64, best: f64) -> String {
    format!("{:>23}", format!("{median:.1} [{best:.1}]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_compare_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_pattern(&a, (3 << 20) + 5, 7).unwrap();
        write_pattern(&b, (3 << 20) + 5, 7).unwrap();
        assert!(same_bytes(&a, &b).unwrap());
        assert_eq!(std::fs::metadata(&a).unwrap().len(), (3 << 20) + 5);
        let mut bytes = std::fs::read(&b).unwrap();
        bytes[2 << 20] ^= 1;
        std::fs::write(&b, &bytes).unwrap();
        assert!(!same_bytes(&a, &b).unwrap());
        bytes.truncate(100);
        std::fs::write(&b, &bytes).unwrap();
        assert!(!same_bytes(&a, &b).unwrap());
    }

    #[test]
    fn a_stuck_client_is_killed() {
        let e = run_timed(Command::new("sleep").arg("30"), "sleep", Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
        let (o, _) = run_timed(Command::new("true").arg("x"), "true", Duration::from_secs(30)).unwrap();
        assert!(o.status.success());
    }

    #[test]
    fn render_names_every_figure() {
        let b = Netbench {
            bench: "netboot",
            tftp_size: 64 << 20,
            http_size: 1 << 30,
            reps: 3,
            tftp_client: "atftp".into(),
            http_client: "curl".into(),
            tftp: vec![TftpFigure {
                path: "loopback".into(),
                blksize: BLKSIZE,
                windowsize: 16,
                monarch_windowsize: 16,
                cmp: Comparison {
                    monarch_mib_s: 600.0,
                    monarch_best_mib_s: 610.0,
                    monarch_runs_mib_s: vec![590.0, 600.0, 610.0],
                    reference: "tftpd-hpa",
                    reference_mib_s: 100.0,
                    reference_best_mib_s: 120.0,
                    reference_runs_mib_s: vec![120.0, 100.0, 90.0],
                    ratio: 6.0,
                    monarch_client_cpu_ms: 90.0,
                    reference_client_cpu_ms: 120.0,
                    client_bound_mib_s: 711.1,
                    ceiling: 7.11,
                    target: 5.0,
                    met: true,
                },
            }],
            http: vec![HttpFigure {
                path: VETH.into(),
                size: 1 << 30,
                cmp: Comparison {
                    monarch_mib_s: 800.0,
                    monarch_best_mib_s: 800.0,
                    monarch_runs_mib_s: vec![800.0],
                    reference: "nginx",
                    reference_mib_s: 1000.0,
                    reference_best_mib_s: 1000.0,
                    reference_runs_mib_s: vec![1000.0],
                    ratio: 0.8,
                    monarch_client_cpu_ms: 1000.0,
                    reference_client_cpu_ms: 990.0,
                    client_bound_mib_s: 1034.3,
                    ceiling: 1.03,
                    target: 1.1,
                    met: false,
                },
            }],
            all_met: false,
        };
        let t = render(&b);
        assert!(t.contains("600.0 [610.0]") && t.contains("6.00x") && t.contains("7.1x"), "{t}");
        // HTTP misses a target above its client's ceiling: the verdict says so.
        assert!(t.contains("NOT MET (client-bound)") && t.contains("at most 1034.3 MiB/s"), "{t}");
        let j = serde_json::to_value(&b).unwrap();
        assert_eq!(j["bench"], "netboot");
        assert_eq!(j["tftp"][0]["ratio"], 6.0);
        assert_eq!(j["http"][0]["reference"], "nginx");
        assert_eq!(j["tftp"][0]["reference_runs_mib_s"][2], 90.0);
    }

    #[test]
    fn the_ratio_is_of_the_medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        // One lucky run of the reference does not decide the figure.
        let runs = |v: &[(f64, u64)]| {
            v.iter().map(|&(mib_s, ms)| Sample { mib_s, client_cpu: Duration::from_millis(ms) }).collect()
        };
        let r = Runs {
            ours: runs(&[(10.0, 300), (11.0, 200), (12.0, 250)]),
            reference: runs(&[(9.0, 400), (30.0, 500), (10.0, 450)]),
        };
        let c = Comparison::new(r, 5 << 20, "nginx", 0.9);
        assert!((c.ratio - 1.1).abs() < 1e-9);
        assert_eq!(c.reference_best_mib_s, 30.0);
        // The client's limit comes from its least CPU time on a transfer (200 ms for 5 MiB),
        // the ceiling from that beside the reference's median.
        assert_eq!((c.monarch_client_cpu_ms, c.reference_client_cpu_ms), (250.0, 450.0));
        assert!((c.client_bound_mib_s - 25.0).abs() < 1e-9 && (c.ceiling - 2.5).abs() < 1e-9, "{c:?}");
        assert!(c.met && !c.client_bound());
    }

    /// The real bench, by hand (as root):
    /// `cargo test -p monarch-bench --lib netboot::tests::run_the_bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement (needs root, network namespaces, ~2 min): run by hand"]
    fn run_the_bench() {
        let mut opts = NetbenchOptions::default();
        // NETBENCH_REPS=5 steadies the figures on a noisy machine.
        if let Some(r) = std::env::var("NETBENCH_REPS").ok().and_then(|r| r.parse().ok()) {
            opts.reps = r;
        }
        let b = netboot_bench(&opts, &mut |m| eprintln!("{m}")).unwrap();
        println!("{}", render(&b));
        println!("{}", serde_json::to_string(&b).unwrap());
    }
}
