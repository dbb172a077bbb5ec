//! A cluster whose cores boot over the network from their head (`launch = "netboot"` on a
//! `[[cluster]]`, with its `network`): the head serves the kernel it copied into its own bank
//! on its cluster's network, and each other core is a network boot agent in the network
//! namespace the topology names for it (docs/topology.md, "Clusters booted over the network").

use super::error::Ctx;
use super::model::{ClusterNet, DISCOVERY_PORT};
use super::schema::{ClusterNetDef, LaunchDef};
use std::net::Ipv4Addr;
use toml::Spanned;

/// Longest interface name Linux takes (`IFNAMSIZ` less the terminating NUL).
const IFNAMSIZ: usize = 15;

/// Check a cluster's `launch` and `network`; the network when its cores boot over it.
pub(super) fn resolve(
    cx: &mut Ctx<'_>,
    who: &str,
    id: u16,
    cores: u16,
    launch: Option<&Spanned<LaunchDef>>,
    network: Option<&Spanned<ClusterNetDef>>,
) -> Option<ClusterNet> {
    let netboot = match launch.map(|l| (l.span(), *l.get_ref())) {
        None | Some((_, LaunchDef::Process)) => false,
        Some((_, LaunchDef::Netboot)) if id == 0 => {
            cx.push(
                launch.map(Spanned::span),
                format!("{who}.launch"),
                "cluster 0's head is the monarch, which starts cluster 0's cores from its own bank: only the other clusters can boot their cores over the network; remove launch from cluster 0",
            );
            return None;
        }
        Some((_, LaunchDef::Netboot)) => true,
        Some((span, _)) => {
            cx.push(
                Some(span),
                format!("{who}.launch"),
                "a cluster's cores are started by its head as processes (launch = \"process\", the default) or booted over the network from their head (launch = \"netboot\")",
            );
            return None;
        }
    };
    let Some(net) = network else {
        if netboot {
            cx.push(
                launch.map(Spanned::span),
                format!("{who}.network"),
                format!("a cluster booted over the network needs the network its head serves on and a namespace for each of its {} other core(s): network = {{ interface = \"br{id}\", address = \"10.0.{id}.1\", namespaces = [\"c{id}-1\", …] }}", cores.saturating_sub(1)),
            );
        }
        return None;
    };
    let span = Some(net.span());
    let def = net.get_ref();
    if !netboot {
        cx.push(
            span,
            format!("{who}.network"),
            "network applies to a cluster whose cores boot over the network: set launch = \"netboot\" or remove network",
        );
        return None;
    }
    let mut ok = true;
    if def.interface.is_empty() || def.interface.len() > IFNAMSIZ || def.interface.contains(['/', ' ']) {
        cx.push(
            span.clone(),
            format!("{who}.network.interface"),
            format!("\"{}\" is not an interface name (1 to {IFNAMSIZ} characters, no '/' or space): name the interface the head serves its cores on", def.interface),
        );
        ok = false;
    }
    let address = def.address.parse::<Ipv4Addr>().ok().filter(|a| !a.is_unspecified() && !a.is_broadcast());
    if address.is_none() {
        cx.push(
            span.clone(),
            format!("{who}.network.address"),
            format!("\"{}\" is not the head's IPv4 address on its interface: give it, e.g. address = \"10.0.{id}.1\"", def.address),
        );
        ok = false;
    }
    if def.port == Some(0) {
        cx.push(
            span.clone(),
            format!("{who}.network.port"),
            format!("the cores send their discoveries to this port: give one, or leave port out for {DISCOVERY_PORT}"),
        );
        ok = false;
    }
    let others = usize::from(cores.saturating_sub(1));
    if def.namespaces.len() != others {
        cx.push(
            span.clone(),
            format!("{who}.network.namespaces"),
            format!(
                "{} namespace(s) for {others} core(s) other than the head: name one network namespace per core, core 1 first",
                def.namespaces.len()
            ),
        );
        ok = false;
    }
    for (k, ns) in def.namespaces.iter().enumerate() {
        if ns.is_empty() || ns.starts_with(['-', '.']) || ns.contains(['/', ' ']) {
            cx.push(
                span.clone(),
                format!("{who}.network.namespaces"),
                format!("\"{ns}\" (core {}) is not a network namespace name (`ip netns add NAME`): no '/', space or leading '-' or '.'", k + 1),
            );
            ok = false;
        } else if def.namespaces[..k].contains(ns) {
            cx.push(
                span.clone(),
                format!("{who}.network.namespaces"),
                format!("namespace \"{ns}\" is named for two cores: give each core its own"),
            );
            ok = false;
        }
    }
    (ok && address.is_some()).then(|| ClusterNet {
        interface: def.interface.clone(),
        address: address.unwrap_or(Ipv4Addr::UNSPECIFIED),
        port: def.port.unwrap_or(DISCOVERY_PORT),
        namespaces: def.namespaces.clone(),
    })
}
