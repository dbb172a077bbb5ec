//! The plan: which secondaries are staged in parallel and which wait behind a switch.
//!
//! Window boot: secondaries on their own (direct) ports are staged in parallel; secondaries
//! that share a switch take turns on its link for their copy and verification, the higher
//! priority first (ties: lower slot, then file order). Each direct secondary is its own
//! *lane*; each switch is one lane.
//!
//! After the boot, the secondaries start in dependency *levels* ([`Plan::levels`]): what
//! depends on nothing first, then what depends only on those, and so on; the aux power
//! domain comes on with the chassis and the main domain after it.

use crate::topology::{Launch, MainPower, PortPath, PowerDomain, Secondary, Topology};
use crate::values::fmt_size;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;

/// A unit of parallelism: its secondaries take turns on one link (a switch's), in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Lane {
    /// One secondary on its own port.
    Direct {
        /// Index into `Topology::secondaries`.
        secondary: usize,
    },
    /// Secondaries behind one switch, in staging order.
    Switch {
        /// The switch.
        switch: String,
        /// Indices into `Topology::secondaries`, in order.
        order: Vec<usize>,
    },
}

impl Lane {
    /// The secondaries of this lane, in staging order.
    pub fn members(&self) -> Vec<usize> {
        match self {
            Lane::Direct { secondary } => vec![*secondary],
            Lane::Switch { order, .. } => order.clone(),
        }
    }
}

/// A resolved plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The topology it was made from.
    pub topology: Topology,
    /// Lanes, all run in parallel.
    pub lanes: Vec<Lane>,
}

impl Plan {
    /// Make the plan for a topology.
    pub fn new(topology: Topology) -> Plan {
        let mut lanes = Vec::new();
        for (i, s) in topology.secondaries.iter().enumerate() {
            if s.path == PortPath::Direct {
                lanes.push(Lane::Direct { secondary: i });
            }
        }
        for sw in &topology.switches {
            let mut order: Vec<usize> = (0..topology.secondaries.len())
                .filter(|i| topology.secondaries[*i].path == PortPath::Switch(sw.clone()))
                .collect();
            order.sort_by_key(|i| {
                let s = &topology.secondaries[*i];
                (std::cmp::Reverse(s.priority), s.slot.unwrap_or(u32::MAX), *i)
            });
            if !order.is_empty() {
                lanes.push(Lane::Switch { switch: sw.clone(), order });
            }
        }
        Plan { topology, lanes }
    }

    /// Dependency levels (indices into `topology.secondaries`), each in file order: level 0
    /// depends on nothing; a secondary's level is 1 + the highest level of what it depends on
    /// (`requires`, `wants` and `supervisor`). A resolved topology has no dependency cycle;
    /// should one be given anyway, its members (and what depends on them) make the last level.
    pub fn levels(&self) -> Vec<Vec<usize>> {
        let secs = &self.topology.secondaries;
        let index: HashMap<&str, usize> = secs.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
        let deps: Vec<Vec<usize>> = secs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.life.depends_on().filter_map(|d| index.get(d).copied()).filter(|&j| j != i).collect()
            })
            .collect();
        let mut level: Vec<Option<usize>> = vec![None; secs.len()];
        loop {
            let mut progress = false;
            for i in 0..secs.len() {
                if level[i].is_none()
                    && let Some(known) = deps[i].iter().map(|&j| level[j]).collect::<Option<Vec<usize>>>()
                {
                    level[i] = Some(known.iter().max().map_or(0, |m| m + 1));
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        let last = level.iter().flatten().max().map_or(0, |m| m + 1);
        let mut out: Vec<Vec<usize>> = Vec::new();
        for (i, l) in level.iter().enumerate() {
            let l = l.unwrap_or(last);
            if out.len() <= l {
                out.resize(l + 1, Vec::new());
            }
            out[l].push(i);
        }
        out
    }

    /// Whether the start after the boot is more than "everything at once": some secondary
    /// depends on another, or is in the main power domain.
    pub fn has_start_order(&self) -> bool {
        self.topology
            .secondaries
            .iter()
            .any(|s| s.life.has_dependencies() || s.life.power == PowerDomain::Main)
    }

    /// The secondaries' ids in a power domain, in file order.
    pub fn in_domain(&self, power: PowerDomain) -> Vec<&str> {
        self.topology.secondaries.iter().filter(|s| s.life.power == power).map(|s| s.id.as_str()).collect()
    }

    /// The start order and power domains as `monarch plan` prints them (empty when
    /// [`Plan::has_start_order`] is false).
    pub fn render_start_order(&self) -> String {
        let t = &self.topology;
        let mut s = String::new();
        if !self.has_start_order() {
            return s;
        }
        let _ = writeln!(s, "\nStart order (dependency levels):");
        for (n, level) in self.levels().iter().enumerate() {
            let names: Vec<String> = level
                .iter()
                .map(|&i| format!("{} [{}]", t.secondaries[i].id, t.secondaries[i].life.power.name()))
                .collect();
            let _ = write!(s, "  {}. {}", n + 1, names.join(", "));
            match &level[..] {
                [one] => match dependencies(&t.secondaries[*one]) {
                    Some(d) => {
                        let _ = writeln!(s, "  {d}");
                    }
                    None => s.push('\n'),
                },
                many => {
                    s.push('\n');
                    for &i in many {
                        if let Some(d) = dependencies(&t.secondaries[i]) {
                            let _ = writeln!(s, "       {}: {d}", t.secondaries[i].id);
                        }
                    }
                }
            }
        }
        let mut domains = Vec::new();
        for (power, when) in [
            (PowerDomain::Aux, "on with the chassis".to_string()),
            (
                PowerDomain::Main,
                match t.main_power {
                    MainPower::Auto => "auto: on once aux is up".to_string(),
                    MainPower::Manual => "manual: on at `monarch power on`".to_string(),
                },
            ),
        ] {
            let ids = self.in_domain(power);
            if !ids.is_empty() {
                domains.push(format!("{} ({when}): {}", power.name(), ids.join(", ")));
            }
        }
        let _ = writeln!(s, "Power domains: {}", domains.join("; "));
        s
    }

    /// The monarch: the only management processor, or the one the monarch election rules would elect
    /// if every candidate shows up (the topology's pin, self-tests, BOOT_ID, slot).
    pub fn monarch(&self) -> &str {
        let t = &self.topology;
        self.verdict()
            .and_then(|v| t.managers.get(v.winner))
            .or(t.managers.first())
            .map_or("monarch", |m| m.id.as_str())
    }

    /// The monarch election's arbitration over every management processor, all present.
    fn verdict(&self) -> Option<monarch_proto::election::Verdict> {
        monarch_proto::election::arbitrate(&self.topology.candidates(), self.topology.election.pinned)
    }

    /// A human rendering, as `monarch plan` prints it.
    pub fn render(&self) -> String {
        let t = &self.topology;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "chassis \"{}\": monarch {}, {} secondaries",
            t.name,
            self.monarch(),
            t.secondaries.len()
        );
        if t.managers.len() > 1 {
            let name = |k: usize| t.manager_name(k);
            let why =
                self.verdict().map_or_else(|| "no candidate can be monarch".into(), |v| v.describe(&name));
            let on = match &t.election.backend {
                crate::topology::ElectionBackend::Backplane => format!(
                    "on the backplane (heartbeat {}, failover after {})",
                    humantime::format_duration(t.election.heartbeat),
                    humantime::format_duration(t.election.timeout)
                ),
                crate::topology::ElectionBackend::Etcd(e) => format!(
                    "on etcd {} (lease TTL {})",
                    e.endpoints.join(","),
                    humantime::format_duration(e.ttl)
                ),
            };
            let _ = writeln!(s, "election {on}: {why}");
            for (k, c) in t.candidates().iter().enumerate() {
                let _ = writeln!(
                    s,
                    "  {:<8} slot {:<3} BOOT_ID {:<3} {}",
                    name(k),
                    c.slot,
                    c.boot_id,
                    c.health.name()
                );
            }
        }
        let _ = writeln!(
            s,
            "windows in {}{}",
            t.run_dir.display(),
            if t.run_dir_is_temporary { " (created for the run, removed after)" } else { "" }
        );
        let direct: Vec<&Lane> = self.lanes.iter().filter(|l| matches!(l, Lane::Direct { .. })).collect();
        if !direct.is_empty() {
            let _ = writeln!(s, "\nstaged in parallel (direct ports):");
            for l in direct {
                for i in l.members() {
                    let _ = writeln!(s, "  {}", line(&t.secondaries[i]));
                }
            }
        }
        for l in &self.lanes {
            if let Lane::Switch { switch, order } = l {
                let _ = writeln!(
                    s,
                    "\nbehind switch {switch} (taking turns on its link, in parallel with the direct ports):"
                );
                for (n, i) in order.iter().enumerate() {
                    let _ = writeln!(s, "  {}. {}", n + 1, line(&t.secondaries[*i]));
                }
            }
        }
        s.push_str(&self.render_start_order());
        if let Some(c) = &t.clusters {
            s.push_str(&render_clusters(c));
        }
        s
    }
}

/// Each cluster's cores, banks and zone map, as `monarch plan` prints them.
fn render_clusters(c: &crate::topology::Clusters) -> String {
    let mut s = String::new();
    let policy = match c.barrier_policy {
        monarch_proto::barrier::Policy::Exclude => "exclude a core that misses a barrier",
        monarch_proto::barrier::Policy::Abort => "abort the boot when a core misses a barrier",
    };
    let _ = writeln!(
        s,
        "
{} clusters (barriers wait {}, then {policy}):",
        c.clusters.len(),
        humantime::format_duration(c.barrier_timeout)
    );
    for cl in &c.clusters {
        let failed: Vec<String> = cl
            .cores
            .iter()
            .filter(|k| k.failed)
            .map(|k| format!("core {}", k.lid))
            .chain(cl.banks.iter().enumerate().filter(|(_, b)| b.failed).map(|(i, _)| format!("bank {i}")))
            .collect();
        let banks: Vec<String> = cl.banks.iter().map(|b| crate::values::fmt_size(b.size)).collect();
        let _ = writeln!(
            s,
            "  cluster {} ({},{}): {} cores (head {}), banks {}{}",
            cl.id,
            cl.x,
            cl.y,
            cl.cores.len(),
            cl.cores.first().map_or("none", |k| k.processor.as_str()),
            banks.join(", "),
            if failed.is_empty() {
                String::new()
            } else {
                format!("; failed its self-test, left out: {}", failed.join(", "))
            }
        );
        if let Some(n) = &cl.net {
            let _ = writeln!(
                s,
                "    its other cores boot over the network: served by its head on {} ({}:{}), in namespaces {}",
                n.interface,
                n.address,
                n.port,
                n.namespaces.join(", ")
            );
        }
        let bank = cl.banks.iter().find(|b| !b.failed).map_or(0, |b| b.size);
        for z in &c.zones {
            let _ = writeln!(
                s,
                "    {:<10} {:#010x}..{:#010x}  max {}",
                crate::topology::zone_field(z.kind),
                z.base,
                z.end(),
                crate::values::fmt_size(z.max)
            );
        }
        let used = c.zones.iter().map(crate::topology::ZoneSpec::end).max().unwrap_or(0);
        let _ = writeln!(
            s,
            "    {:<10} {:#010x}..{:#010x}  {}",
            "usable",
            used,
            bank,
            crate::values::fmt_size(bank.saturating_sub(used))
        );
    }
    s
}

/// What a secondary waits for before it starts: `requires dpu0; wants dpu1 (waits 2s);
/// supervised by amc0`, or `None` when it depends on nothing.
fn dependencies(s: &Secondary) -> Option<String> {
    let l = &s.life;
    let mut parts = Vec::new();
    if !l.requires.is_empty() {
        parts.push(format!("requires {}", l.requires.join(", ")));
    }
    if !l.wants.is_empty() {
        parts.push(format!("wants {} (waits {})", l.wants.join(", "), humantime::format_duration(l.wait)));
    }
    if let Some(sup) = &l.supervisor {
        parts.push(format!("supervised by {sup}"));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn line(s: &Secondary) -> String {
    let how = match &s.launch {
        // No window: the image goes over the network (launch = "netboot").
        Launch::Netboot(nb) => format!(
            "netboot mac {}{}  {} {}",
            nb.mac,
            nb.disk.as_ref().map_or(String::new(), |d| format!(" disk {}", d.display())),
            s.algo,
            s.handoff.name(),
        ),
        // Every other launch mode has a window.
        _ => format!(
            "window {} ({})  {} {}  {} x{}",
            s.window.path.display(),
            fmt_size(s.window.data_size),
            s.mode.name(),
            s.algo,
            s.handoff.name(),
            s.attempts,
        ),
    };
    format!(
        "{:<8} slot {:<3} prio {:<3} {:<34} {how}  launch {}{}",
        s.id,
        s.slot.map_or("-".into(), |v| v.to_string()),
        s.priority,
        s.image.to_string(),
        s.launch.name(),
        if s.required { "" } else { "  (optional)" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn default_chassis_plan_has_three_parallel_lanes_and_one_switch_in_priority_order() {
        let p = Plan::new(Topology::builtin().unwrap());
        let direct = p.lanes.iter().filter(|l| matches!(l, Lane::Direct { .. })).count();
        assert_eq!(direct, 3);
        let sw: Vec<&Lane> = p.lanes.iter().filter(|l| matches!(l, Lane::Switch { .. })).collect();
        assert_eq!(sw.len(), 1);
        let ids: Vec<&str> = sw[0].members().iter().map(|i| p.topology.secondaries[*i].id.as_str()).collect();
        assert_eq!(ids, ["lc3", "lc4"]);
        let r = p.render();
        assert!(r.contains("behind switch pcie-sw0"), "{r}");
        assert!(r.contains("  1. lc3"), "{r}");
        assert!(r.contains("  2. lc4"), "{r}");
    }

    #[test]
    fn switch_order_is_priority_then_slot_then_file_order() {
        let src = "[chassis]\nname = \"t\"\n[[switch]]\nid = \"s\"\n[[processor]]\nid = \"m\"\nrole = \"monarch\"\n\
            [[processor]]\nid = \"a\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nswitch = \"s\"\nslot = 9\n\
            [[processor]]\nid = \"b\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nswitch = \"s\"\nslot = 3\n\
            [[processor]]\nid = \"c\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\nswitch = \"s\"\npriority = 1\n";
        let p = Plan::new(Topology::parse(src, Path::new("t"), Path::new(".")).unwrap());
        let ids: Vec<&str> =
            p.lanes[0].members().iter().map(|i| p.topology.secondaries[*i].id.as_str()).collect();
        assert_eq!(ids, ["c", "b", "a"]);
    }

    fn plan(processors: &str, chassis: &str) -> Plan {
        let src = format!(
            "[chassis]\nname = \"t\"\n{chassis}[[processor]]\nid = \"m\"\nrole = \"monarch\"\n{processors}"
        );
        Plan::new(Topology::parse(&src, Path::new("t"), Path::new(".")).unwrap())
    }

    fn sec(id: &str, extra: &str) -> String {
        format!("[[processor]]\nid = \"{id}\"\nrole = \"secondary\"\nimage = \"builtin:payload\"\n{extra}\n")
    }

    fn level_ids(p: &Plan) -> Vec<Vec<&str>> {
        p.levels()
            .iter()
            .map(|l| l.iter().map(|&i| p.topology.secondaries[i].id.as_str()).collect())
            .collect()
    }

    #[test]
    fn levels_follow_the_longest_chain_of_dependencies_in_file_order() {
        let p = plan(
            &[
                sec("host", "power = \"main\"\nrequires = [\"dpu0\", \"nic\"]"),
                sec("nic", "wants = [\"dpu1\"]"),
                sec("dpu1", ""),
                sec("dpu0", "supervisor = \"amc\""),
                sec("amc", ""),
                sec("lone", ""),
            ]
            .concat(),
            "",
        );
        assert_eq!(level_ids(&p), [vec!["dpu1", "amc", "lone"], vec!["nic", "dpu0"], vec!["host"]]);
    }

    #[test]
    fn the_default_chassis_is_one_level_and_its_plan_shows_no_start_order() {
        let p = Plan::new(Topology::builtin().unwrap());
        assert_eq!(p.levels(), [vec![0, 1, 2, 3, 4]]);
        assert!(!p.has_start_order());
        let r = p.render();
        assert!(!r.contains("Start order") && !r.contains("Power domains"), "{r}");
    }

    #[test]
    fn the_plan_shows_the_start_order_and_the_power_domains() {
        let p = plan(
            &[
                sec("dpu0", ""),
                sec("dpu1", ""),
                sec("host", "power = \"main\"\nrequires = [\"dpu0\"]\nwants = [\"dpu1\"]\nwait = \"2s\""),
            ]
            .concat(),
            "",
        );
        let r = p.render();
        assert!(
            r.ends_with(
                "\nStart order (dependency levels):\n  \
                 1. dpu0 [aux], dpu1 [aux]\n  \
                 2. host [main]  requires dpu0; wants dpu1 (waits 2s)\n\
                 Power domains: aux (on with the chassis): dpu0, dpu1; main (auto: on once aux is up): host\n"
            ),
            "{r}"
        );
        // Several on one level with dependencies: one line each; manual main power.
        let p = plan(
            &[
                sec("amc", ""),
                sec("a", "supervisor = \"amc\""),
                sec("b", "power = \"main\"\nrequires = [\"amc\"]"),
                sec("c", "power = \"main\"\nwants = [\"amc\"]"),
            ]
            .concat(),
            "main_power = \"manual\"\n",
        );
        let r = p.render_start_order();
        assert!(
            r.contains("  2. a [aux], b [main], c [main]\n       a: supervised by amc\n       b: requires amc\n       c: wants amc (waits 30s)\n"),
            "{r}"
        );
        assert!(r.contains("main (manual: on at `monarch power on`): b, c"), "{r}");
        // A main-domain processor alone is enough to show the domains.
        let r = plan(&[sec("a", ""), sec("b", "power = \"main\"")].concat(), "").render();
        assert!(r.contains("  1. a [aux], b [main]\nPower domains: "), "{r}");
    }
}
