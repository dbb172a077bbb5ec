//! Helpers shared by the end-to-end tests: run the real `monarch` binary and read its JSON.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses some of them

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

pub const MONARCH: &str = env!("CARGO_BIN_EXE_monarch");

pub struct Run {
    pub code: i32,
    pub events: Vec<Value>,
    pub summary: Value,
    pub stderr: String,
}

impl Run {
    pub fn processor(&self, id: &str) -> &Value {
        self.summary["processors"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["id"] == id))
            .unwrap_or_else(|| panic!("no processor {id} in {}", self.summary))
    }
    pub fn events_of(&self, id: &str, event: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["id"] == id && e["event"] == event).collect()
    }
}

pub fn monarch(args: &[&str]) -> Output {
    Command::new(MONARCH).args(args).output().expect("run monarch")
}

pub fn up_json(topology: Option<&Path>) -> Run {
    let mut args = vec!["up", "--json"];
    let t;
    if let Some(p) = topology {
        t = p.display().to_string();
        args.push("--topology");
        args.push(&t);
    }
    let out = monarch(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let summary = events.last().cloned().unwrap_or(Value::Null);
    assert_eq!(summary["event"], "summary", "last line must be the summary: {stdout}");
    Run {
        code: out.status.code().unwrap_or(-1),
        events,
        summary,
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}
