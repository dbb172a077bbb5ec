//! End-to-end: the picture of a real boot (`monarch up --timeline`, `monarch timeline`),
//! parsed back as XML and counted against the events it was drawn from.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use serde_json::Value;
use std::io::Write as _;
use std::process::{Command, Stdio};

mod common;
use common::{MONARCH, monarch, write_topology};

/// Every element with this class among its classes.
fn with_class<'a>(d: &'a roxmltree::Document<'a>, class: &str) -> Vec<roxmltree::Node<'a, 'a>> {
    d.descendants()
        .filter(|n| n.attribute("class").is_some_and(|c| c.split(' ').any(|x| x == class)))
        .collect()
}

fn ids_of<'a>(nodes: &[roxmltree::Node<'a, 'a>]) -> Vec<&'a str> {
    nodes.iter().filter_map(|n| n.attribute("data-id")).collect()
}

/// Copies whose verification the picture implies: push mode sends no `verifying` phase
/// after the copy (the documented mapping in monarch_boot::timeline).
fn implied_verifications(events: &[Value]) -> usize {
    let mut n = 0;
    for (i, e) in events.iter().enumerate() {
        if e["event"] != "copied" {
            continue;
        }
        let next = events[i + 1..].iter().find(|f| {
            f["id"] == e["id"] && matches!(f["event"].as_str(), Some("phase" | "done" | "retrieved"))
        });
        if !next.is_some_and(|f| f["event"] == "phase" && f["phase"] == "verifying") {
            n += 1;
        }
    }
    n
}

#[test]
fn the_picture_of_a_boot_with_a_corrupted_copy_shows_every_phase_and_the_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let topology = write_topology(
        dir.path(),
        "[chassis]\nname = \"pictured\"\nrun_dir = \"win\"\n\n\
         [defaults]\ntimeouts = { rendezvous = \"20s\", verify = \"20s\", handoff = \"20s\", agent = \"20s\" }\n\n\
         [[processor]]\nid = \"mm\"\nrole = \"monarch\"\n\n\
         [[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nimage_size = \"24MiB\"\nfault = { corrupt_attempts = 1 }\n\n\
         [[processor]]\nid = \"b\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nimage_size = \"24MiB\"\nmode = \"pull\"\n\n\
         [[processor]]\nid = \"c\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nimage_size = \"24MiB\"\n",
    );
    let from_up = dir.path().join("up.svg");
    let out = monarch(&[
        "up",
        "--json",
        "--topology",
        topology.to_str().unwrap(),
        "--timeline",
        from_up.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let events: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let saved = dir.path().join("boot.jsonl");
    std::fs::write(&saved, &stdout).unwrap();

    // `monarch timeline` of the saved stream.
    let drawn = dir.path().join("boot.svg");
    let t = monarch(&["timeline", saved.to_str().unwrap(), "-o", drawn.to_str().unwrap()]);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    assert!(t.stderr.is_empty(), "no warning for a clean stream: {}", String::from_utf8_lossy(&t.stderr));
    let svg = std::fs::read_to_string(&drawn).unwrap();
    let d = roxmltree::Document::parse(&svg).expect("the picture is XML");
    assert!(d.root_element().has_tag_name("svg"));

    // One row per secondary, in the order they first appear.
    let mut order: Vec<&str> = Vec::new();
    for e in &events {
        if let Some(id) = e["id"].as_str()
            && ["a", "b", "c"].contains(&id)
            && !order.contains(&id)
        {
            order.push(id);
        }
    }
    assert_eq!(ids_of(&with_class(&d, "row-label")), order);

    // A bar per phase event, plus the documented ones: retrieve, running, implied verify.
    let count = |pred: &dyn Fn(&Value) -> bool| events.iter().filter(|e| pred(e)).count();
    for phase in ["configuring", "launching", "rendezvous", "copying", "verifying", "handoff"] {
        let bars = with_class(&d, &format!("phase-{phase}"))
            .into_iter()
            .filter(|n| n.attribute("data-implied").is_none())
            .count();
        assert_eq!(bars, count(&|e| e["event"] == "phase" && e["phase"] == phase), "{phase}");
    }
    let phases = count(&|e| e["event"] == "phase");
    let retrieved = count(&|e| e["event"] == "retrieved");
    let running = count(&|e| e["event"] == "done" && e["state"] == "running");
    assert_eq!(with_class(&d, "phase-retrieve").len(), retrieved);
    assert_eq!(with_class(&d, "phase-running").len(), running);
    assert_eq!(running, 3);
    assert_eq!(with_class(&d, "phase").len(), phases + retrieved + running + implied_verifications(&events));

    // a: its first copy was corrupted, so two copying bars, the mismatch in red and the retry.
    let copies: Vec<_> = with_class(&d, "phase-copying")
        .into_iter()
        .filter(|n| n.attribute("data-id") == Some("a"))
        .filter_map(|n| n.attribute("data-attempt"))
        .collect();
    assert_eq!(copies, ["1", "2"]);
    let mismatch = with_class(&d, "mark-mismatch");
    assert_eq!(ids_of(&mismatch), ["a"]);
    let tip = mismatch[0].children().find(|c| c.has_tag_name("title")).and_then(|t| t.text()).unwrap();
    assert!(tip.contains("checksum mismatch on attempt 1"), "{tip}");
    assert_eq!(ids_of(&with_class(&d, "mark-retry")), ["a"]);

    // `monarch up --timeline` drew the same events: the same picture.
    let up_svg = std::fs::read_to_string(&from_up).unwrap();
    roxmltree::Document::parse(&up_svg).expect("up's picture is XML");
    assert_eq!(up_svg, svg, "up --timeline and timeline of its stream draw the same picture");

    // From standard input to standard output.
    let mut child = Command::new(MONARCH)
        .args(["timeline", "-", "-o", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdout.as_bytes()).unwrap();
    let piped = child.wait_with_output().unwrap();
    assert!(piped.status.success());
    assert_eq!(String::from_utf8(piped.stdout).unwrap(), svg);
}

#[test]
fn lines_that_are_not_events_are_counted_and_a_file_without_events_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mixed = dir.path().join("mixed.jsonl");
    std::fs::write(
        &mixed,
        "$ monarch up --json\n\
         {\"t_ms\":1.0,\"event\":\"retrieved\",\"id\":\"x\",\"image\":\"i\",\"bytes\":1,\"algo\":\"crc32c\",\"checksum\":\"00\"}\n\
         {\"t_ms\":2.0,\"event\":\"from_the_future\",\"id\":\"x\"}\n\
         {\"t_ms\":3.0,\"event\":\"phase\",\"id\":\"x\",\"phase\":\"configuring\",\"attempt\":0}\n",
    )
    .unwrap();
    let svg = dir.path().join("m.svg");
    let out = monarch(&["timeline", mixed.to_str().unwrap(), "-o", svg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("ignored 2 of 4 lines that are not monarch events (line 1: not JSON"), "{err}");
    assert!(err.contains("also line 3"), "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    let d = roxmltree::Document::parse(&text).unwrap();
    assert_eq!(with_class(&d, "phase").len(), 2);

    let table = dir.path().join("table.txt");
    std::fs::write(&table, "\nOK: chassis \"default\" booted in 480.8 ms\n").unwrap();
    let out = monarch(&["timeline", table.to_str().unwrap(), "-o", svg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}: none of its 1 lines is a monarch event (line 2:", table.display())),
        "{err}"
    );

    let missing = dir.path().join("nope.jsonl");
    let out = monarch(&["timeline", missing.to_str().unwrap(), "-o", svg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.jsonl: cannot open"));

    // `up --timeline` into a folder that does not exist: said before anything boots.
    let nowhere = dir.path().join("no/such/folder/boot.svg");
    let out = monarch(&["up", "--timeline", nowhere.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(out.stdout.is_empty(), "nothing booted: {}", String::from_utf8_lossy(&out.stdout));
}
