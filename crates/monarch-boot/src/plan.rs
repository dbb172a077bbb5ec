//! The plan: which secondaries are staged in parallel and which wait behind a switch.
//!
//! Window boot: secondaries on their own (direct) ports are staged in parallel; secondaries
//! that share a switch go one after another, the higher priority first (ties: lower slot,
//! then file order). Each direct secondary is its own *lane*; each switch is one lane.

use crate::topology::{Launch, PortPath, Secondary, Topology};
use crate::values::fmt_size;
use serde::Serialize;
use std::fmt::Write as _;

/// A unit of parallelism: its secondaries are staged one after another.
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
                    "\nbehind switch {switch} (one after another, in parallel with the direct ports):"
                );
                for (n, i) in order.iter().enumerate() {
                    let _ = writeln!(s, "  {}. {}", n + 1, line(&t.secondaries[*i]));
                }
            }
        }
        s
    }
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
}
