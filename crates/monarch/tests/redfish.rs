//! The Redfish service of a supervised chassis, checked by the tools operators run: DMTF's
//! Redfish Service Validator over the whole tree, OpenStack's sushy (what Ironic uses) for
//! power states and resets, redfishtool, and plain HTTP clients for the authentication rules.
//! The Python tools are installed with pip into a virtual environment this test makes (in
//! Cargo's target folder, once); the schemas the validator needs are DMTF's (DSP8010 2025.4,
//! `tests/redfish/csdl`, BSD-3-Clause).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use serde_json::Value;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

mod common;
use common::{Chassis, MONARCH, dump, find, is};

/// The Python tools, pinned.
const TOOLS: &[&str] = &["redfish-service-validator==3.1.8", "sushy==5.14.0", "redfishtool==1.1.8"];

static VENV: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The virtual environment with [`TOOLS`] (made on first use).
fn venv() -> PathBuf {
    let mut made = VENV.lock().unwrap();
    if let Some(v) = &*made {
        return v.clone();
    }
    monarch_drivers::host::ensure_packages(&[("python3", "python3")], &mut |l| eprintln!("{l}")).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("redfish-venv");
    let marker = dir.join(TOOLS.join(" ").replace(['=', ' '], "_"));
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let venv = Command::new("python3").args(["-m", "venv"]).arg(&dir).output().unwrap();
        if !venv.status.success() {
            // Debian's python3 keeps venv in a package of its own.
            monarch_drivers::host::ensure_packages(&[("python3-venv-marker", "python3-venv")], &mut |l| {
                eprintln!("{l}")
            })
            .ok();
            let again = Command::new("python3").args(["-m", "venv"]).arg(&dir).output().unwrap();
            assert!(again.status.success(), "python3 -m venv: {}", String::from_utf8_lossy(&again.stderr));
        }
        let pip = Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(TOOLS)
            .output()
            .unwrap();
        assert!(pip.status.success(), "pip install {TOOLS:?}: {}", String::from_utf8_lossy(&pip.stderr));
        std::fs::write(&marker, "").unwrap();
    }
    *made = Some(dir.clone());
    dir
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// One of `tests/redfish/clients.py`'s subcommands, its JSON answer.
fn client(venv: &Path, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/redfish/clients.py");
    let out = Command::new(venv.join("bin/python")).arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "clients.py {args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("clients.py {args:?}: {e}: {}", text(&out)))
}

fn useradd(file: &Path, name: &str, password: &str, role: &str) {
    use std::io::Write as _;
    let mut child = Command::new(MONARCH)
        .args(["redfish", "useradd"])
        .arg(file)
        .args([name, "--role", role])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "useradd {name}: {}", text(&out));
}

/// A server (`common::server`) whose host defers every notice.
fn server() -> String {
    common::server(
        "rf-server",
        "ready_after = \"200ms\"",
        "",
        "fault = { defer_notices = \"I/O in flight\" }",
    )
}

#[test]
fn operators_tools_read_and_reset_a_chassis_through_redfish() {
    let venv = venv();
    let keys = tempfile::tempdir().unwrap();
    let users = keys.path().join("redfish-users");
    useradd(&users, "admin", "s3cret pass", "Administrator");
    useradd(&users, "viewer", "look only", "ReadOnly");
    let c = Chassis::start_with(
        &server(),
        &[],
        &["--redfish", "127.0.0.1:0", "--redfish-users", users.to_str().unwrap(), "--deadline", "1s"],
    );
    let (_, sup) = c.wait_for("the supervisor", &|e| e["event"] == "supervising");
    let addr = sup["redfish"].as_str().expect("the Redfish address in the supervising event").to_string();
    let url = format!("https://{addr}/redfish/v1");
    c.wait_for("host ready", &|e| is(e, "ready", "host"));
    // The certificate was made in the state folder.
    assert!(c.dir.path().join("state/redfish-cert.pem").exists());

    // Authentication: every resource but the documents that describe the service answers 401
    // without credentials and with a wrong password.
    let crawl = client(&venv, &["crawl", &url, "admin", "s3cret pass"]);
    let codes = crawl.as_object().unwrap();
    for must in ["/redfish/v1/Systems/dpu0", "/redfish/v1/Chassis/rf-server", "/redfish/v1/Managers/bmc"] {
        assert!(codes.contains_key(must), "{must} not reached: {crawl}");
    }
    assert!(
        codes.keys().any(|p| p.starts_with("/redfish/v1/Systems/host/LogServices/Log/Entries")),
        "{crawl}"
    );
    let open = ["/redfish", "/redfish/v1/", "/redfish/v1/odata", "/redfish/v1/$metadata"];
    for (path, got) in codes {
        let got: Vec<u64> = got.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        if open.contains(&path.as_str()) {
            assert_eq!(got, [200, 200, 200], "{path}: open to all");
        } else {
            assert_eq!(got, [401, 401, 200], "{path}: no credentials, wrong password, right one");
        }
    }

    // Limits: one user's sessions never end another's; a trailing slash is the same resource;
    // bad bodies get Redfish errors.
    let limits = client(&venv, &["limits", &url, "admin", "s3cret pass", "viewer", "look only"]);
    assert_eq!(limits["admin_login"], 201, "{limits}");
    assert_eq!(
        limits["user_logins"],
        serde_json::json!([201]),
        "a user's oldest session makes room: {limits}"
    );
    assert_eq!(limits["admin_session_after"], 200, "{limits}");
    assert_eq!(limits["trailing_slash"], 200, "{limits}");
    assert_eq!(
        limits["wrong_type"],
        serde_json::json!([400, "Base.1.22.ActionParameterValueTypeError"]),
        "{limits}"
    );
    assert_eq!(limits["huge_body"][0], 413, "{limits}");
    assert!(limits["huge_body"][1].as_str().unwrap().contains("json"), "{limits}");

    // DMTF's validator over the whole tree.
    let schemas = tempfile::tempdir().unwrap();
    let csdl = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/redfish/csdl");
    for f in std::fs::read_dir(&csdl).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, schemas.path().join(f.file_name().unwrap())).unwrap();
    }
    let report = tempfile::tempdir().unwrap();
    let out = Command::new(venv.join("bin/rf_service_validator"))
        .args(["-u", "admin", "-p", "s3cret pass", "-r", &format!("https://{addr}")])
        .arg("--schema_directory")
        .arg(schemas.path())
        .arg("--logdir")
        .arg(report.path())
        .output()
        .unwrap();
    let said = text(&out);
    let table = said.lines().skip_while(|l| !l.contains("FAIL")).nth(2).unwrap_or_default().to_string();
    let counts: Vec<u64> = table.split('|').filter_map(|x| x.trim().parse().ok()).collect();
    assert_eq!(counts.len(), 4, "no result table:\n{said}");
    let (pass, warn, fail) = (counts[0], counts[1], counts[2]);
    assert!(out.status.success() && fail == 0, "validator: {fail} failures:\n{said}");
    assert_eq!(warn, 0, "validator warnings:\n{said}");
    assert!(pass > 500, "the validator checked the whole tree ({pass} properties):\n{said}");
    assert!(said.contains("Validating /redfish/v1/Systems/host/LogServices/Log/Entries"), "{said}");

    // redfishtool lists the systems.
    let out = Command::new(venv.join("bin/redfishtool"))
        .args(["-r", &addr, "-u", "viewer", "-p", "look only", "-S", "Always", "Systems", "list"])
        .output()
        .unwrap();
    let listed = text(&out);
    assert!(out.status.success(), "redfishtool: {listed}");
    for id in ["dpu0", "dpu1", "host"] {
        assert!(listed.contains(&format!("/redfish/v1/Systems/{id}")), "{listed}");
    }

    // sushy: the systems and their power states.
    let systems = client(&venv, &["systems", &url, "viewer", "look only"]);
    for id in ["dpu0", "dpu1", "host"] {
        assert_eq!(systems[format!("/redfish/v1/Systems/{id}")], "PowerState.ON", "{systems}");
    }

    // A read-only user may not reset.
    let denied = client(&venv, &["reset", &url, "viewer", "look only", "dpu1", "ForceRestart"]);
    let why = denied["error"].as_str().expect("refused");
    assert!(why.contains("403") || why.contains("ConfigureComponents"), "{denied}");

    // ForceRestart of a DPU: it comes back On, its image delivered and verified afresh. The
    // event stream follows it, from its loss to its being ready again.
    let mut stream = Command::new(venv.join("bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/redfish/clients.py"))
        .args(["sse", &url, "viewer", "look only", "dpu1", "ready"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(stream.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "connected");
    let before = c.events().len();
    let reset = client(&venv, &["reset", &url, "admin", "s3cret pass", "dpu1", "ForceRestart"]);
    assert_eq!(reset["error"], Value::Null, "{reset}");
    assert_eq!(reset["power_state"], "PowerState.ON", "{reset}");
    let allowed: Vec<&str> =
        reset["allowed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(allowed.len(), 5, "{reset}");
    // Its boot progress says so: OS running again, since a later time.
    let (was, now) = (&reset["boot_progress_before"], &reset["boot_progress"]);
    assert_eq!(
        (&was[0], &now[0]),
        (&Value::from("BootProgressStates.OS_RUNNING"), &Value::from("BootProgressStates.OS_RUNNING")),
        "{reset}"
    );
    assert!(now[1].as_str() > was[1].as_str(), "running since a later time: {reset}");
    let ev = c.events();
    let copied = find(&ev, before, &|e| is(e, "copied", "dpu1"))
        .unwrap_or_else(|| panic!("dpu1's image delivered again:\n{}", dump(&ev)));
    let done = find(&ev, copied, &|e| is(e, "done", "dpu1") && e["state"] == "running")
        .unwrap_or_else(|| panic!("dpu1 running again:\n{}", dump(&ev)));
    assert!(ev[done]["report"].as_str().unwrap_or_default().contains("dpu1 up"), "{}", dump(&ev));

    let streamed: Value = serde_json::from_str(&lines.next().expect("the stream's events").unwrap()).unwrap();
    assert!(stream.wait().unwrap().success());
    assert_eq!(streamed["status"], 200);
    assert!(streamed["content_type"].as_str().unwrap().starts_with("text/event-stream"), "{streamed}");
    let kinds: Vec<&str> = streamed["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["Events"][0]["OriginOfCondition"]["@odata.id"] == "/redfish/v1/Systems/dpu1")
        .map(|e| e["Events"][0]["Oem"]["Monarch"]["event"].as_str().unwrap())
        .collect();
    let at =
        |k: &str| kinds.iter().position(|x| *x == k).unwrap_or_else(|| panic!("no {k} streamed: {kinds:?}"));
    assert!(at("copied") < at("done") && at("done") < at("ready"), "{kinds:?}");
    assert_eq!(streamed["events"][0]["@odata.type"], "#Event.v1_13_0.Event");

    // GracefulShutdown of dpu0, which the host requires: the host is told, defers (until the
    // 1 s deadline), and only then does dpu0 go down.
    let before = c.events().len();
    let shut = client(&venv, &["reset", &url, "admin", "s3cret pass", "dpu0", "GracefulShutdown"]);
    assert_eq!(shut["error"], Value::Null, "{shut}");
    assert_eq!(shut["power_state"], "PowerState.OFF", "{shut}");
    let ev = c.events();
    let defer = find(&ev, before, &|e| is(e, "answer", "host") && e["answer"] == "defer")
        .unwrap_or_else(|| panic!("the host deferred:\n{}", dump(&ev)));
    assert_eq!(ev[defer]["reason"], "I/O in flight");
    let over = find(&ev, defer, &|e| is(e, "overridden", "host") && e["why"] == "deadline")
        .unwrap_or_else(|| panic!("its deadline honoured:\n{}", dump(&ev)));
    let down =
        find(&ev, before, &|e| is(e, "down", "dpu0")).unwrap_or_else(|| panic!("dpu0 down:\n{}", dump(&ev)));
    assert!(defer < over && over < down, "deferral honoured before dpu0 went down:\n{}", dump(&ev));

    // On: back up.
    let on = client(&venv, &["reset", &url, "admin", "s3cret pass", "dpu0", "On"]);
    assert_eq!(
        (on["error"].clone(), on["power_state"].clone()),
        (Value::Null, "PowerState.ON".into()),
        "{on}"
    );

    let (code, _) = c.shut_down();
    assert_eq!(code, 0);
}

#[test]
fn a_redfish_service_without_a_users_file_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let t = common::write_topology(dir.path(), &server());
    let out = Command::new(MONARCH)
        .args(["up", "--hold", "--redfish", "127.0.0.1:0", "--topology"])
        .arg(&t)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("--redfish-users") && said.contains("monarch redfish useradd"), "{said}");
}
