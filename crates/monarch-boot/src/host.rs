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
    let mut missing: Vec<&str> = wanted.iter().filter(|(tool, _)| !have(tool)).map(|(_, pkg)| *pkg).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    progress(&format!("installing {} (apt-get)", missing.join(" ")));
    let run = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    let _ = run(&["update", "-qq"]);
    match run(&[&["install", "-y", "-qq", "--no-install-recommends"], missing.as_slice()].concat()) {
        Ok(s) if s.success() => Ok(()),
        _ => Err(format!(
            "could not install {}: run `apt-get install {}` as root and try again",
            missing.join(" "),
            missing.join(" ")
        )),
    }
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
