//! `monarch redfish useradd`: the real binary writes the Redfish users file from a password on
//! standard input, and refuses what would lose or weaken a user.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;
use common::MONARCH;

/// `monarch redfish useradd FILE NAME ARGS…` with `stdin` as its standard input.
fn useradd(file: &Path, name: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(MONARCH)
        .args(["redfish", "useradd", file.to_str().unwrap(), name])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run monarch");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn useradd_writes_a_private_argon2id_line_and_refuses_a_second_or_an_empty_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redfish-users");

    let out = useradd(&file, "admin", &["--role", "Administrator"], "s3cret pass\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("added user admin (Administrator)"), "{}", text(&out));
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.starts_with("admin:$argon2id$") && written.ends_with(":Administrator\n"), "{written}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let users = monarch_boot::redfish::users::Users::load(&file).unwrap();
    assert_eq!(users.check("admin", "s3cret pass"), Some(monarch_boot::redfish::users::Role::Administrator));

    let again = useradd(&file, "admin", &[], "other\n");
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("--replace"), "{}", text(&again));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written, "the refused add changed nothing");

    let empty = useradd(&file, "viewer", &[], "\n");
    assert_eq!(empty.status.code(), Some(2), "{}", text(&empty));
    assert!(text(&empty).contains("empty password"), "{}", text(&empty));

    let viewer = useradd(&file, "viewer", &[], "v\n");
    assert!(
        text(&viewer).contains("added user viewer (ReadOnly)"),
        "the default role is said: {}",
        text(&viewer)
    );
    let replaced = useradd(&file, "admin", &["--role", "operator", "--replace"], "new\n");
    assert!(text(&replaced).contains("replaced user admin (Operator)"), "{}", text(&replaced));
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(lines.lines().next().unwrap().ends_with(":Operator"), "the user keeps its line: {lines}");
}
