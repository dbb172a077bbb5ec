//! The systemd units in `packaging/systemd/`: systemd itself accepts them
//! (`systemd-analyze verify`), and the command line each one runs is one the real `monarch`
//! parses. The shipped units run `/usr/local/bin/monarch`; these tests run copies that point
//! at the binary under test instead (`systemd-analyze verify` checks that ExecStart's program
//! exists).
#![allow(clippy::unwrap_used)] // a test says what broke by panicking

use std::path::{Path, PathBuf};
use std::process::Command;

const MONARCH: &str = env!("CARGO_BIN_EXE_monarch");
/// Where the shipped units expect the binary (docs/operations.md installs it there).
const INSTALLED: &str = "/usr/local/bin/monarch";
const UNITS: [&str; 2] = ["monarch.service", "monarch-netboot.service"];

fn shipped(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The values of `key=` in the unit, in order (comments and sections ignored).
fn values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .collect()
}

/// The unit's ExecStart as the words systemd would pass, for a test run: `%S` is `state`,
/// and `${VAR}` / `$VAR` take the unit's own `Environment=` defaults (the optional
/// EnvironmentFile is absent here), `$VAR` split into words as systemd does.
fn exec_start(unit: &str, state: &Path) -> Vec<String> {
    let lines = values(unit, "ExecStart");
    assert_eq!(lines.len(), 1, "one ExecStart expected: {lines:?}");
    let mut env = std::collections::HashMap::new();
    for e in values(unit, "Environment") {
        let e = e.trim_matches('"');
        let (k, v) = e.split_once('=').unwrap_or_else(|| panic!("Environment={e}: no ="));
        env.insert(format!("${{{k}}}"), vec![v.to_string()]);
        env.insert(format!("${k}"), v.split_whitespace().map(String::from).collect());
    }
    let mut words = Vec::new();
    for w in lines[0].split_whitespace() {
        match env.get(w) {
            Some(vs) => words.extend(vs.iter().cloned()),
            None => {
                assert!(!w.contains('$'), "{w}: a variable the unit does not define, or one inside a word");
                words.push(w.replace("%S", &state.display().to_string()));
            }
        }
    }
    words
}

/// The long options `monarch ARGS --help` lists.
fn options_of(args: &[&str]) -> Vec<String> {
    let out = Command::new(MONARCH).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "monarch {args:?} --help failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix('-')
                .filter(|r| r.chars().nth(1) == Some(','))
                .map_or(l, |r| r[2..].trim_start());
            let name = l.strip_prefix("--")?.split([' ', '=']).next()?;
            Some(format!("--{name}"))
        })
        .collect()
}

#[test]
fn systemd_analyze_verify_accepts_both_units() {
    monarch_drivers::host::ensure_packages(&[("systemd-analyze", "systemd")], &mut |m| eprintln!("{m}"))
        .expect("systemd-analyze installed");
    let dir = tempfile::tempdir().unwrap();
    let mut paths: Vec<PathBuf> = Vec::new();
    for name in UNITS {
        let text = shipped(name);
        let exec = values(&text, "ExecStart");
        assert!(
            exec.iter().all(|e| e.starts_with(&format!("{INSTALLED} "))),
            "{name}: ExecStart must run {INSTALLED}: {exec:?}"
        );
        let p = dir.path().join(name);
        std::fs::write(&p, text.replace(INSTALLED, MONARCH)).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze").arg("verify").arg("--man=no").args(&paths).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // It reports unknown keys and values it cannot parse ("…, ignoring") with exit status 0:
    // any line about our units is a complaint.
    let complaints: Vec<&str> = said.lines().filter(|l| UNITS.iter().any(|u| l.contains(u))).collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify complains (exit {:?}):\n{said}",
        out.status.code()
    );
}

/// Run `monarch` with the unit's arguments, but the files they name replaced by missing
/// ones: the command line must get past the argument parser (clap's errors start with
/// `error:`) and stop at the missing file with monarch's own bad-input error.
fn parses(words: &[String], missing: &str) {
    let out = Command::new(MONARCH).args(words).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "monarch {words:?}: {stderr}");
    assert!(
        stderr.starts_with("monarch: ") && stderr.contains(missing),
        "monarch {words:?} must parse and then miss {missing}: {stderr}"
    );
}

#[test]
fn monarch_service_runs_a_command_line_that_monarch_up_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let words = exec_start(&shipped("monarch.service"), dir.path());
    assert_eq!(words[0], INSTALLED);
    assert_eq!(&words[1..3], ["up", "--hold"], "{words:?}");
    let known = options_of(&["up"]);
    for w in words.iter().filter(|w| w.starts_with("--")) {
        assert!(known.contains(w), "{w} (monarch.service) is not an option of `monarch up`: {known:?}");
    }
    // The state folder is systemd's StateDirectory (%S/monarch), whatever the topology says.
    let state = words.iter().position(|w| w == "--state-dir").expect("monarch.service names --state-dir");
    assert_eq!(words[state + 1], dir.path().join("monarch").display().to_string());
    assert_eq!(values(&shipped("monarch.service"), "StateDirectory"), ["monarch"]);
    // The topology the unit names, replaced by a missing file.
    let missing = dir.path().join("missing/chassis.toml").display().to_string();
    let args: Vec<String> = words[1..]
        .iter()
        .map(|w| if w == "/etc/monarch/chassis.toml" { missing.clone() } else { w.clone() })
        .collect();
    assert!(args.contains(&missing), "monarch.service must run /etc/monarch/chassis.toml: {words:?}");
    parses(&args, &missing);
}

#[test]
fn monarch_netboot_service_runs_a_command_line_that_netboot_serve_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let unit = shipped("monarch-netboot.service");
    let missing = dir.path().join("missing-root").display().to_string();
    // The unit's defaults, and the options its header and docs/operations.md give as an example.
    let example = "--interface br0 --dhcp full --range 10.0.0.100-10.0.0.199";
    assert!(
        unit.contains(&format!("MONARCH_NETBOOT_OPTS={example}")),
        "the unit's example changed: update this test"
    );
    for opts in [None, Some(example)] {
        let mut text = unit
            .replace("MONARCH_NETBOOT_ROOT=/srv/monarch/boot", &format!("MONARCH_NETBOOT_ROOT={missing}"));
        if let Some(o) = opts {
            text =
                text.replace("\"MONARCH_NETBOOT_OPTS=--dhcp off\"", &format!("\"MONARCH_NETBOOT_OPTS={o}\""));
        }
        let words = exec_start(&text, dir.path());
        assert_eq!(words[0], INSTALLED);
        assert_eq!(&words[1..3], ["netboot", "serve"], "{words:?}");
        let known = options_of(&["netboot", "serve"]);
        for w in words.iter().filter(|w| w.starts_with("--")) {
            assert!(
                known.contains(w),
                "{w} (monarch-netboot.service) is not an option of `monarch netboot serve`"
            );
        }
        let leases = words.iter().position(|w| w == "--leases").expect("the unit names --leases");
        assert_eq!(words[leases + 1], dir.path().join("monarch-netboot/dhcp.leases").display().to_string());
        parses(&words[1..], &missing);
    }
}
