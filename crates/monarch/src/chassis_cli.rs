//! `monarch status`, `reboot`, `shutdown`, `startup`, `power`, `events`: the operator's side
//! of a supervised chassis (`monarch up --hold`), through its control socket.
use crate::exit;
use clap::{Args, ValueEnum};
use monarch_boot::supervise::control::{self, ControlError, Reply, Request};
use monarch_boot::values;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Which chassis: the only one running, or the one named.
#[derive(Args, Debug, Clone)]
pub struct Which {
    /// The chassis's name (its `[chassis] name`), when several are supervised on this host.
    #[arg(long, value_name = "NAME")]
    pub chassis: Option<String>,
    /// The control socket itself (RUN_DIR/control.sock), for a chassis with its own run_dir.
    #[arg(long, value_name = "PATH", conflicts_with = "chassis")]
    pub socket: Option<PathBuf>,
}

impl Which {
    fn socket(&self) -> Result<PathBuf, ControlError> {
        match &self.socket {
            Some(p) => Ok(p.clone()),
            None => control::find(self.chassis.as_deref()),
        }
    }
}

#[derive(Args)]
pub struct StatusArgs {
    /// One processor only.
    pub id: Option<String>,
    #[command(flatten)]
    pub which: Which,
    /// Every reboot cause kept for each processor (across runs), not only the last ones.
    #[arg(long)]
    pub history: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RebootArgs {
    /// The processor to reboot.
    pub id: String,
    #[command(flatten)]
    pub which: Which,
    /// Do not wait for acknowledgements or deferrals: reboot at once.
    #[arg(long)]
    pub force: bool,
    /// How long the processors told may defer.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = values::parse_duration)]
    pub deadline: Duration,
}

#[derive(Args)]
pub struct ShutdownArgs {
    /// The processor to shut down (none: the whole chassis, after which `monarch up --hold`
    /// exits).
    pub id: Option<String>,
    #[command(flatten)]
    pub which: Which,
    /// Do not wait for acknowledgements or deferrals.
    #[arg(long)]
    pub force: bool,
    /// How long the processors told may defer.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = values::parse_duration)]
    pub deadline: Duration,
}

#[derive(Args)]
pub struct StartupArgs {
    /// The processor to bring up again.
    pub id: String,
    #[command(flatten)]
    pub which: Which,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OnOff {
    /// Turn main power on: the main domain's processors boot.
    On,
    /// Turn main power off: the main domain's processors are shut down first.
    Off,
}

#[derive(Args)]
pub struct PowerArgs {
    /// On or off.
    pub state: OnOff,
    #[command(flatten)]
    pub which: Which,
    /// Powering off: do not wait for acknowledgements or deferrals.
    #[arg(long)]
    pub force: bool,
    /// Powering off: how long the processors told may defer.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = values::parse_duration)]
    pub deadline: Duration,
}

#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub which: Which,
    /// Keep printing events as they happen until the chassis stops (or Ctrl-C).
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per line (as `monarch up --json` prints them).
    #[arg(long)]
    pub json: bool,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Send a request, print its progress, and turn its end into an exit status.
fn run(which: &Which, request: &Request, json: bool, print: &dyn Fn(&Value)) -> ExitCode {
    let socket = match which.socket() {
        Ok(s) => s,
        Err(e) => return exit::bad_input(&e),
    };
    let done = control::call(&socket, request, &mut |r| match r {
        Reply::Progress { line } => eprintln!("monarch: {line}"),
        Reply::Event { event } => println!("{}", serde_json::to_string(event).unwrap_or_default()),
        Reply::Done { .. } => {}
    });
    match done {
        Ok(Reply::Done { ok: true, body, .. }) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
            } else {
                print(&body);
            }
            ExitCode::SUCCESS
        }
        Ok(Reply::Done { error, .. }) => {
            eprintln!("monarch: {}", error.unwrap_or_else(|| "the request failed".into()));
            ExitCode::from(exit::BOOT_FAILED)
        }
        Ok(_) => ExitCode::from(exit::BOOT_FAILED),
        Err(e) => {
            eprintln!("monarch: {e}");
            ExitCode::from(exit::BOOT_FAILED)
        }
    }
}

fn said_done(body: &Value) {
    if let Some(what) = body.get("done").and_then(Value::as_str) {
        println!("{what}: done");
    }
}

pub fn status(a: StatusArgs) -> ExitCode {
    let req = Request::Status { id: a.id.clone(), history: a.history };
    run(&a.which, &req, a.json, &|body| print_status(body, a.history))
}

fn print_status(body: &Value, history: bool) {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    println!(
        "chassis {}  main power {} ({})  state {}",
        s(body, "chassis"),
        s(body, "main_power"),
        s(body, "main_power_mode"),
        s(body, "state_dir")
    );
    println!(
        "{:<10} {:<11} {:<6} {:<6} {:>8} {:>8} {:<5}  last reboot cause",
        "id", "state", "admin", "ready", "pid", "restarts", "power"
    );
    let empty = Vec::new();
    for p in body.get("processors").and_then(Value::as_array).unwrap_or(&empty) {
        let pid = p.get("pid").and_then(Value::as_u64).map_or("-".into(), |x| x.to_string());
        let ready = if p.get("ready").and_then(Value::as_bool) == Some(true) { "yes" } else { "no" };
        let last = p
            .get("last_causes")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .map(|c| format!("{} ({}, {})", s(c, "cause"), s(c, "action"), s(c, "time")))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<10} {:<11} {:<6} {:<6} {:>8} {:>8} {:<5}  {last}",
            s(p, "id"),
            s(p, "state"),
            s(p, "admin"),
            ready,
            pid,
            p.get("restarts").and_then(Value::as_u64).unwrap_or(0),
            s(p, "power"),
        );
        let without: Vec<&str> = p
            .get("without")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if !without.is_empty() {
            println!("{:<10} degraded: runs without {}", "", without.join(", "));
        }
        if let Some(why) = p.get("why").and_then(Value::as_str) {
            println!("{:<10} why: {why}", "");
        }
        if history {
            for c in p.get("history").and_then(Value::as_array).unwrap_or(&empty) {
                println!("{:<10} {}  {}  -> {}", "", s(c, "time"), s(c, "cause"), s(c, "action"));
            }
        }
    }
}

pub fn reboot(a: RebootArgs) -> ExitCode {
    let req = Request::Reboot { id: a.id, force: a.force, deadline_ms: ms(a.deadline) };
    run(&a.which, &req, false, &said_done)
}

pub fn shutdown(a: ShutdownArgs) -> ExitCode {
    let req = Request::Shutdown { id: a.id, force: a.force, deadline_ms: ms(a.deadline) };
    run(&a.which, &req, false, &said_done)
}

pub fn startup(a: StartupArgs) -> ExitCode {
    run(&a.which, &Request::Startup { id: a.id }, false, &said_done)
}

pub fn power(a: PowerArgs) -> ExitCode {
    let on = matches!(a.state, OnOff::On);
    run(&a.which, &Request::Power { on, force: a.force, deadline_ms: ms(a.deadline) }, false, &said_done)
}

pub fn events(a: EventsArgs) -> ExitCode {
    if !a.follow {
        return exit::bad_input(
            &"monarch events shows the events of a supervised chassis as they happen: add --follow (past events: the `monarch up --json` stream)",
        );
    }
    let socket = match a.which.socket() {
        Ok(s) => s,
        Err(e) => return exit::bad_input(&e),
    };
    let r = control::call(&socket, &Request::Events, &mut |r| {
        if let Reply::Event { event } = r {
            if a.json {
                println!("{}", serde_json::to_string(event).unwrap_or_default());
            } else {
                println!("{:>10.1} ms  {}", event.t_ms, describe(&event.kind));
            }
        }
    });
    match r {
        Ok(_) => ExitCode::SUCCESS,
        // The chassis stopped: the stream ends with it.
        Err(ControlError::Closed { .. }) => {
            eprintln!("monarch: the supervisor stopped; no more events");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("monarch: {e}");
            ExitCode::from(exit::BOOT_FAILED)
        }
    }
}

/// One event as a line for a person.
fn describe(kind: &monarch_boot::events::EventKind) -> String {
    let v = serde_json::to_value(kind).unwrap_or(Value::Null);
    let name = v.get("event").and_then(Value::as_str).unwrap_or("event").to_string();
    let id = v.get("id").and_then(Value::as_str).map(|s| format!(" {s}")).unwrap_or_default();
    let mut rest = Vec::new();
    if let Value::Object(m) = &v {
        for (k, x) in m {
            if k == "event" || k == "id" {
                continue;
            }
            let x = match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            rest.push(format!("{k}={x}"));
        }
    }
    format!("{name}{id}  {}", rest.join(" "))
}
