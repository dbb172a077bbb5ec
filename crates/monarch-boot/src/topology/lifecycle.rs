//! How a secondary lives after its boot, as the topology says it ([`Lifecycle`]): each
//! processor's fields resolved with their defaults (`resolve`), then what can only be checked
//! across the chassis (`check`): the ids dependencies name, power domains, supervisors, ports
//! owned twice, dependency cycles.
use super::error::Ctx;
use super::model::*;
use super::schema::{FaultDef, ProcessorDef, SettingsDef};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use toml::Spanned;

/// A secondary's lifecycle fields, resolved: `s` is its settings merged with `[defaults]`,
/// `p` its own table (for the lists, which `[defaults]` cannot hold). A netboot secondary
/// (`netboot`) is not watched after its boot: the fields that only mean something for a
/// watched image are refused when set on it.
pub(super) fn resolve(
    cx: &mut Ctx<'_>,
    p: &ProcessorDef,
    s: &SettingsDef,
    fault: &FaultDef,
    who: &str,
    netboot: bool,
) -> Lifecycle {
    let d = Lifecycle::default();
    let f = |name: &str| format!("{who}.{name}");
    let power = cx.choice(
        s.power.as_ref(),
        &f("power"),
        "power domain",
        &[
            ("aux", PowerDomain::Aux, "on with the chassis"),
            ("main", PowerDomain::Main, "on once the aux domain is up"),
        ],
        d.power,
    );
    let recovery = cx.choice(
        s.recovery.as_ref(),
        &f("recovery"),
        "recovery",
        &[("restart", Recovery::Restart, "boot it again"), ("none", Recovery::None, "leave it down")],
        d.recovery,
    );
    let on_dependency_loss = cx.choice(
        s.on_dependency_loss.as_ref(),
        &f("on_dependency_loss"),
        "on_dependency_loss",
        &[
            ("degrade", OnDependencyLoss::Degrade, "keep it running, marked degraded"),
            ("restart", OnDependencyLoss::Restart, "restart it once the dependency is back"),
        ],
        d.on_dependency_loss,
    );
    let wait = cx.duration_or_zero(&s.wait, &f("wait"), d.wait);
    let restart_window = cx.duration_or_zero(&s.restart_window, &f("restart_window"), d.restart_window);
    if restart_window.is_zero() {
        cx.push(
            span(&s.restart_window),
            f("restart_window"),
            "the restart window is the time max_restarts are counted in and must be longer than 0; write e.g. \"60s\"",
        );
    }
    let restart_backoff = cx.duration_or_zero(&s.restart_backoff, &f("restart_backoff"), d.restart_backoff);
    let heartbeat = cx.duration_or_zero(&s.heartbeat, &f("heartbeat"), d.heartbeat);
    if heartbeat < defaults::LIFE_HEARTBEAT_MIN {
        cx.push(
            span(&s.heartbeat),
            f("heartbeat"),
            format!(
                "a heartbeat of {} is too often to watch; use at least {}",
                humantime::format_duration(heartbeat),
                humantime::format_duration(defaults::LIFE_HEARTBEAT_MIN)
            ),
        );
    }
    let heartbeat_timeout =
        cx.duration_or_zero(&s.heartbeat_timeout, &f("heartbeat_timeout"), d.heartbeat_timeout);
    if heartbeat_timeout < heartbeat.saturating_mul(2) {
        cx.push(
            span(&s.heartbeat_timeout).or_else(|| span(&s.heartbeat)).or(Some(p.id.span())),
            f("heartbeat_timeout"),
            format!(
                "heartbeat_timeout ({}) must be at least 2 heartbeats ({}), or one late beat counts as a stall; raise heartbeat_timeout or lower heartbeat",
                humantime::format_duration(heartbeat_timeout),
                humantime::format_duration(heartbeat.saturating_mul(2))
            ),
        );
    }
    let ready_after = cx.duration_or_zero(&p.ready_after, &f("ready_after"), d.ready_after);
    let ports = list(&p.ports);
    for port in p.ports.iter().flat_map(|l| l.get_ref()) {
        if let Some(why) = bad_interface_name(port.get_ref()) {
            cx.push(Some(port.span()), f("ports"), format!("\"{}\" is not a network interface name: {why}; use the name `ip link` shows, e.g. \"eth1\" or \"enp3s0f1\"", port.get_ref().escape_debug()));
        }
    }
    if let Some(r) = &fault.defer_notices
        && r.get_ref().trim().is_empty()
    {
        cx.push(Some(r.span()), f("fault.defer_notices"), "the payload defers notices with this reason, which the supervisor reports: write one, e.g. \"flushing the NVMe write cache\"");
    }
    if netboot {
        // Set on the processor itself; from [defaults] they are simply not used.
        for (at, name) in [
            (p.ports.as_ref().map(Spanned::span), "ports"),
            (span(&p.heartbeat), "heartbeat"),
            (span(&p.heartbeat_timeout), "heartbeat_timeout"),
            (span(&p.ready_after), "ready_after"),
            (fault.never_ready.as_ref().filter(|v| *v.get_ref()).map(Spanned::span), "fault.never_ready"),
            (fault.defer_notices.as_ref().map(Spanned::span), "fault.defer_notices"),
        ] {
            if at.is_some() {
                cx.push(at, f(name), format!("a netboot secondary has no window to report through, so nothing watches it after its boot; remove {name}"));
            }
        }
    }
    Lifecycle {
        requires: list(&p.requires),
        wants: list(&p.wants),
        wait,
        power,
        supervisor: p.supervisor.as_ref().map(|v| v.get_ref().clone()),
        ports,
        recovery,
        max_restarts: s.max_restarts.as_ref().map_or(d.max_restarts, |v| *v.get_ref()),
        restart_window,
        restart_backoff,
        on_dependency_loss,
        heartbeat,
        heartbeat_timeout,
        ready_after,
    }
}

fn span<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
    v.as_ref().map(Spanned::span)
}

fn list(v: &Option<Spanned<Vec<Spanned<String>>>>) -> Vec<String> {
    v.iter().flat_map(|l| l.get_ref()).map(|s| s.get_ref().clone()).collect()
}

/// Why `name` cannot be a Linux network interface name, if it cannot (the kernel's
/// `dev_valid_name`: 1 to 15 bytes, no '/', ':' or whitespace, not "." or "..").
fn bad_interface_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are not allowed")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.contains(':') {
        Some("it contains ':'")
    } else if name.chars().any(char::is_whitespace) {
        Some("it contains whitespace")
    } else {
        None
    }
}

/// One dependency as written: which field, the id, where.
struct Edge<'a> {
    field: &'static str,
    id: &'a str,
    at: Range<usize>,
}

fn edges(p: &ProcessorDef) -> Vec<Edge<'_>> {
    let mut out = Vec::new();
    for (field, l) in [("requires", &p.requires), ("wants", &p.wants)] {
        for v in l.iter().flat_map(|l| l.get_ref()) {
            out.push(Edge { field, id: v.get_ref(), at: v.span() });
        }
    }
    if let Some(v) = &p.supervisor {
        out.push(Edge { field: "supervisor", id: v.get_ref(), at: v.span() });
    }
    out
}

/// What only the whole chassis can tell: that every dependency and supervisor names another
/// secondary of this topology (once), that no aux processor waits on a main one and every
/// supervisor is in the aux domain, that no port is owned twice, and that the dependencies
/// have no cycle. `defs[i]` is the table of `secondaries[i]`.
pub(super) fn check(
    cx: &mut Ctx<'_>,
    defs: &[&ProcessorDef],
    secondaries: &[Secondary],
    managers: &[Manager],
) {
    let index: HashMap<&str, usize> =
        secondaries.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let known = secondaries.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", ");
    // Edges that name another secondary: the dependency graph.
    let mut graph: Vec<Vec<(usize, &'static str, Range<usize>)>> = vec![Vec::new(); secondaries.len()];
    for (i, (p, s)) in defs.iter().zip(secondaries).enumerate() {
        let who = format!("processor \"{}\"", s.id);
        let mut listed: HashSet<(&str, &str)> = HashSet::new();
        for e in edges(p) {
            let field = format!("{who}.{}", e.field);
            let at = Some(e.at.clone());
            if e.field != "supervisor" && !listed.insert((e.field, e.id)) {
                cx.push(at, field, format!("\"{}\" is listed twice; name each secondary once", e.id));
                continue;
            }
            if e.field == "wants" && listed.contains(&("requires", e.id)) {
                cx.push(at.clone(), &field, format!("\"{}\" is also in requires; a dependency is either hard (requires) or soft (wants): remove it from one of them", e.id));
            }
            if e.id == s.id {
                let fix = if e.field == "supervisor" {
                    "leave supervisor out (the monarch supervises it) or name another secondary"
                } else {
                    "remove it"
                };
                cx.push(at, field, format!("a processor cannot depend on itself; {fix}"));
                continue;
            }
            if managers.iter().any(|m| m.id == e.id) {
                let fix = if e.field == "supervisor" {
                    "the monarch supervises every secondary that names no supervisor: leave supervisor out"
                } else {
                    "the monarch is always there: remove it"
                };
                cx.push(
                    at,
                    field,
                    format!("\"{}\" is a management processor (role = \"monarch\"); {fix}", e.id),
                );
                continue;
            }
            let Some(&j) = index.get(e.id) else {
                cx.push(at, field, format!("\"{}\" is not a secondary of this topology (secondaries: {known}); fix the id or remove it", e.id));
                continue;
            };
            let target = &secondaries[j];
            if e.field == "supervisor" {
                if target.life.power != PowerDomain::Aux {
                    cx.push(at.clone(), field, format!("\"{}\" is in the main power domain; a supervisor must be in the aux domain (up before what it supervises, and up while main power is off): set power = \"aux\" on \"{}\"", e.id, e.id));
                }
            } else if s.life.power == PowerDomain::Aux && target.life.power == PowerDomain::Main {
                cx.push(at.clone(), field, format!("\"{}\" is in the main power domain, which comes on after the aux domain: this aux processor would wait on one still off; set power = \"main\" on \"{}\" too, or remove the dependency", e.id, s.id));
            }
            if !graph[i].iter().any(|(k, ..)| *k == j) {
                graph[i].push((j, e.field, e.at));
            }
        }
    }
    let mut owner: HashMap<&str, &str> = HashMap::new();
    for (p, s) in defs.iter().zip(secondaries) {
        for port in p.ports.iter().flat_map(|l| l.get_ref()) {
            if let Some(other) = owner.insert(port.get_ref(), &s.id) {
                let whose = if other == s.id { "this processor".to_string() } else { format!("\"{other}\"") };
                cx.push(Some(port.span()), format!("processor \"{}\".ports", s.id), format!("port \"{}\" is already owned by {whose}; an interface belongs to one processor: remove it from one of them", port.get_ref()));
            }
        }
    }
    for cycle in cycles(&graph) {
        let names: Vec<&str> =
            cycle.iter().chain(cycle.first()).map(|&i| secondaries[i].id.as_str()).collect();
        let (first, next) = (cycle[0], cycle.get(1).copied().unwrap_or(cycle[0]));
        let Some((_, field, at)) = graph[first].iter().find(|(k, ..)| *k == next) else { continue };
        cx.push(
            Some(at.clone()),
            format!("processor \"{}\".{field}", secondaries[first].id),
            format!("dependency cycle: {}; none of them could start first: remove one of these dependencies (requires, wants or supervisor)", names.join(" → ")),
        );
    }
}

/// The dependency cycles found by a depth-first search (one per edge that closes one), each
/// in dependency order and starting at its processor earliest in the file, each reported once.
fn cycles(graph: &[Vec<(usize, &'static str, Range<usize>)>]) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; graph.len()];
    let mut found: Vec<Vec<usize>> = Vec::new();
    for root in 0..graph.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // The path from the root, each node with the next of its edges to follow.
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        while let Some(top) = path.last_mut() {
            let (u, next) = *top;
            let Some(&(v, ..)) = graph[u].get(next) else {
                mark[u] = Mark::Done;
                path.pop();
                continue;
            };
            top.1 += 1;
            match mark[v] {
                Mark::New => {
                    mark[v] = Mark::OnPath;
                    path.push((v, 0));
                }
                Mark::OnPath => {
                    let from = path.iter().position(|&(w, _)| w == v).unwrap_or(0);
                    let mut cycle: Vec<usize> = path[from..].iter().map(|&(w, _)| w).collect();
                    let start = cycle.iter().enumerate().min_by_key(|&(_, w)| *w).map_or(0, |(k, _)| k);
                    cycle.rotate_left(start);
                    if !found.contains(&cycle) {
                        found.push(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
    }
    found
}
