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
