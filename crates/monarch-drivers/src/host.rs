//! The host's own tools: finding programs and installing the Debian packages that carry
//! them (benches and `monarch vm prepare` install what they use, as root, with apt-get).

use std::path::Path;
use std::process::{Command, Stdio};

/// Whether `tool` is on PATH (or in /usr/sbin, which root's PATH may lack).
pub fn have(tool: &str) -> bool {
    Path::new(&format!("/usr/sbin/{tool}")).exists()
        || Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// For each `(tool, package)` whose tool is missing, install the package with apt-get
/// (refreshing the package lists first). The error says what to run by hand.
pub fn ensure_packages(wanted: &[(&str, &str)], progress: &mut dyn FnMut(&str)) -> Result<(), String> {
    // One install at a time in this process (tests run in parallel threads, and may want
    // the same package): the second looks again once the first is done.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut missing: Vec<&str> = wanted.iter().filter(|(tool, _)| !have(tool)).map(|(_, pkg)| *pkg).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    progress(&format!("installing {} (apt-get)", missing.join(" ")));
    // Wait for another apt-get or dpkg (another test, a bench, the system's own updates)
    // rather than fail on its lock.
    let run = |args: &[&str]| {
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    let _ = run(&["update", "-qq"]);
    let said = match run(&[&["install", "-y", "-qq", "--no-install-recommends"], missing.as_slice()].concat())
    {
        Ok(out) if out.status.success() => return Ok(()),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            format!(
                "apt-get {}{}",
                out.status,
                if last.is_empty() { String::new() } else { format!(": {last}") }
            )
        }
        Err(e) => format!("cannot run apt-get: {e}"),
    };
    Err(format!(
        "could not install {} ({said}): run `apt-get install {}` as root and try again",
        missing.join(" "),
        missing.join(" ")
    ))
}

/// Whether process `pid` exists and is not a zombie (it may not be our child: a monarch
/// that took over watches processes another monarch started).
pub fn alive(pid: u32) -> bool {
    stat_field(pid, 3).is_some_and(|state| state != "Z")
}

/// Field `n` (1-based, as proc(5) numbers them; `n >= 3`) of `/proc/PID/stat`. The fields
/// from the state (3) on follow the command name, which is in parentheses and may contain
/// spaces and parentheses of its own.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().nth(n.checked_sub(3)?)?.to_string())
}

/// The arguments process `pid` was started with (`/proc/PID/cmdline`); empty when there is
/// no such process.
pub fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if raw.is_empty() {
        return Vec::new();
    }
    // Each argument ends with a NUL (an empty argument is kept, in its place).
    let args = raw.strip_suffix(&[0]).unwrap_or(&raw);
    args.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// When process `pid` started, in clock ticks after boot (field 22 of `/proc/PID/stat`):
/// with the pid, it names one process for the life of the boot, where a pid alone may be
/// reused. `None` when there is no such process.
pub fn start_ticks(pid: u32) -> Option<u64> {
    stat_field(pid, 22)?.parse().ok()
}

/// This boot's identity (`/proc/sys/kernel/random/boot_id`), if the kernel tells it.
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|s| !s.is_empty())
}

/// The pid namespace this process lives in (`pid:[INODE]`): pids from another one name
/// other processes, so they cannot be checked from here.
pub fn pid_namespace() -> Option<String> {
    Some(std::fs::read_link("/proc/self/ns/pid").ok()?.to_string_lossy().into_owned())
}

/// Send `sig` to process `pid` (best effort: a pid that names no process is ignored).
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Start `cmd`'s program with SIGINT ignored: the terminal's Ctrl-C, which reaches the whole
/// foreground process group, then leaves it alone (SIGTERM and SIGKILL still end it). An
/// ignored signal stays ignored across `exec` — the program's and any it executes in turn,
/// such as an agent's handoff to its image — where a handler would be reset to the default.
pub fn ignore_sigint_in(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before `exec`, where only
    // async-signal-safe calls are allowed: `signal` is one, and nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            if libc::signal(libc::SIGINT, libc::SIG_IGN) == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Send `sig` to every process of process group `pgid` (best effort).
pub fn signal_group(pgid: u32, sig: rustix::process::Signal) {
    if let Some(p) = i32::try_from(pgid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

/// The processes whose parent is `parent` (read from /proc; processes that vanish while
/// it is read are skipped).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_field(pid, 4).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(parent))
        .collect()
}

/// Run `cmd` (stdin closed) to completion; its stdout, or an error naming `what`, the exit
/// status and what it printed on stderr.
pub fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// This process's peak resident memory (VmHWM) in bytes; unlike getrusage's, it starts
/// afresh at exec, so an agent's figure is its own and not its parent's.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .unwrap_or(0)
        * 1024
}

/// CPU time (user + system) used so far by this process's children that have ended and been
/// waited for, and by their own waited-for descendants (`getrusage(RUSAGE_CHILDREN)`). The
/// difference across one child's wait is that child's CPU time, when no other child is
/// reaped meanwhile. (libc, not rustix: rustix has no `getrusage`.)
pub fn reaped_children_cpu() -> std::time::Duration {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` writes a whole `rusage` into the pointer it is given, which
    // points at one; on failure (impossible for RUSAGE_CHILDREN) the zeroed value stays.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, u.as_mut_ptr());
        u.assume_init()
    };
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + std::time::Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Seconds since this machine's kernel started, as `/proc/uptime` prints them (for console
/// lines that show where a VM's boot time goes); `?` if unknown.
pub fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Run `work` in a scratch folder `PARENT/monarch-NAME-PID` made for it, and remove the
/// folder afterwards, whether the work succeeded or not.
pub fn with_scratch<T>(
    parent: &Path,
    name: &str,
    work: impl FnOnce(&Path) -> Result<T, String>,
) -> Result<T, String> {
    let dir = parent.join(format!("monarch-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = work(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A veth pair between the current network namespace (or a second namespace) and a network
/// namespace made for it, with addresses and MTU; everything is deleted on drop. Tests and
/// benches put network traffic only here or on loopback.
#[derive(Debug)]
pub struct VethNs {
    /// The namespace made for the far end (`ip netns exec NAME …` runs inside it).
    pub ns: String,
    /// The near end's interface name (in the current namespace, or in `near_ns`).
    pub near_if: String,
    /// The far end's interface name, inside [`VethNs::ns`].
    pub far_if: String,
    /// The near end's namespace, when it is not the current one.
    pub near_ns: Option<String>,
}

impl VethNs {
    /// Make namespace `monarch-TAG-PID` (and, with `near_in_ns`, a second one `…-n` for the
    /// near end), a veth pair between them with `mtu`, address `near/24` on the near end and
    /// `far/24` on the far end, both up (loopback inside the namespaces too).
    /// `tag` is at most 5 characters (interface names are limited to 15).
    pub fn new(tag: &str, near: &str, far: &str, mtu: u32, near_in_ns: bool) -> Result<Self, String> {
        if !near_in_ns {
            refuse_overlap(near)?;
        }
        let pid = std::process::id() % 100_000;
        let ns = format!("monarch-{tag}-{pid}");
        let me = VethNs {
            near_ns: near_in_ns.then(|| format!("{ns}-n")),
            near_if: format!("mn{tag}{pid}a"),
            far_if: format!("mn{tag}{pid}b"),
            ns,
        };
        let ip = |args: &[&str]| run(Command::new("ip").args(args), &format!("ip {}", args.join(" ")));
        let in_near = |args: &[&str]| match &me.near_ns {
            Some(n) => ip(&[&["netns", "exec", n, "ip"], args].concat()),
            None => ip(args),
        };
        let in_far = |args: &[&str]| ip(&[&["netns", "exec", &me.ns, "ip"], args].concat());
        let mtu = mtu.to_string();
        (|| {
            ip(&["netns", "add", &me.ns])?;
            if let Some(n) = &me.near_ns {
                ip(&["netns", "add", n])?;
            }
            ip(&["link", "add", &me.near_if, "type", "veth", "peer", "name", &me.far_if])?;
            ip(&["link", "set", &me.far_if, "netns", &me.ns])?;
            if let Some(n) = &me.near_ns {
                ip(&["link", "set", &me.near_if, "netns", n])?;
                in_near(&["link", "set", "lo", "up"])?;
            }
            in_near(&["addr", "add", &format!("{near}/24"), "dev", &me.near_if])?;
            in_near(&["link", "set", &me.near_if, "mtu", &mtu, "up"])?;
            in_far(&["link", "set", "lo", "up"])?;
            in_far(&["addr", "add", &format!("{far}/24"), "dev", &me.far_if])?;
            in_far(&["link", "set", &me.far_if, "mtu", &mtu, "up"])?;
            Ok(())
        })()
        .map(|()| me)
        .map_err(|e: String| format!("{e} (network namespaces need root and iproute2)"))
    }

    /// A command that runs `program` inside the far namespace.
    pub fn far(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    /// A command that runs `program` on the near end (inside `near_ns` when there is one).
    pub fn near(&self, program: &str) -> Command {
        match &self.near_ns {
            Some(n) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", n, program]);
                c
            }
            None => Command::new(program),
        }
    }
}

/// Refuse a near-end address whose /24 is already on one of this namespace's interfaces:
/// adding it would shadow the machine's own route (e.g. its uplink) and cut it off.
fn refuse_overlap(near: &str) -> Result<(), String> {
    let prefix = |a: &str| a.rsplit_once('.').map(|(p, _)| p.to_string());
    let out = run(Command::new("ip").args(["-4", "-o", "addr", "show"]), "`ip -4 addr show`")?;
    for line in out.lines() {
        let mut words = line.split_whitespace();
        let (Some(ifname), Some(addr)) = (words.nth(1), words.nth(1)) else { continue };
        let addr = addr.split('/').next().unwrap_or(addr);
        if ifname != "lo" && prefix(addr).is_some() && prefix(addr) == prefix(near) {
            return Err(format!(
                "{near}/24 overlaps {ifname}'s address {addr} on this machine: adding it would take over \
                 that network's route; choose another subnet for the test network (e.g. 10.67.x.0/24)"
            ));
        }
    }
    Ok(())
}

impl Drop for VethNs {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the peer.
        let del = |ns: &str| {
            let _ = Command::new("ip").args(["netns", "delete", ns]).stderr(Stdio::null()).status();
        };
        del(&self.ns);
        if let Some(n) = &self.near_ns {
            del(n);
        }
        let _ = Command::new("ip").args(["link", "delete", &self.near_if]).stderr(Stdio::null()).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_as_proc_shows_it() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(start_ticks(me).is_some());
        let args = cmdline(me);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            args.first().map(std::path::Path::new).and_then(|p| p.file_name()),
            exe.file_name(),
            "{args:?}"
        );
        assert_eq!(args.len(), std::env::args().count(), "{args:?}");
        // pid_max is at most 2^22 on Linux: this pid cannot be running.
        assert!(!alive(4_194_399) && start_ticks(4_194_399).is_none() && cmdline(4_194_399).is_empty());
        let child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(children_of(me).contains(&child.id()));
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_reaped_childs_cpu_time_is_counted() {
        // The child spins until its own clock says it used 50 ms of CPU: however slow or
        // busy the machine, its CPU time is at least that once it is reaped.
        let before = reaped_children_cpu();
        let st = std::process::Command::new("python3")
            .args(["-c", "import time\ns = time.process_time()\nwhile time.process_time() - s < 0.05: pass"])
            .status()
            .unwrap();
        assert!(st.success());
        let used = reaped_children_cpu() - before;
        assert!(used >= std::time::Duration::from_millis(50), "{used:?}");
    }
}
