//! `monarch arch …`: the hardware description of a multi-cluster machine (`arch_info.bin`,
//! docs/arch-info.md) and the boot info each cluster gets from it.

use crate::exit::bad_input;
use clap::{Args, Subcommand};
use monarch_proto::arch::boot_info::BootInfo;
use monarch_proto::arch::select::exclusion;
use monarch_proto::arch::{ArchView, boot_info};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ArchCmd {
    /// Check an arch_info.bin and show what it describes and what each cluster boots with.
    #[command(
        long_about = "Check an arch_info.bin (every rule of docs/arch-info.md: magic, version, sizes, \
table bounds, CRC-32C, and the description's own rules) and show it: the header, each cluster with its \
cores, memory banks and devices (those that failed their self-test marked FAILED), the zone map every \
cluster's bank follows, and each cluster's boot info as the boot would build it: its tested cores, the \
memory its kernel may use (its first tested bank, past the zones), and what is left out and why. A \
cluster that failed its self-test, or has no tested core or no tested bank, boots not at all.",
        after_help = "Examples:\n  monarch arch show arch_info.bin\n  monarch arch show arch_info.bin --json | jq '.clusters[] | select(.boots | not)'\n\n\
Exit status: 0 the file is a valid description; 2 it cannot be read or breaks a rule (the message names \
the descriptor and the rule)."
    )]
    Show(ShowArgs),
    /// Compile a topology's clusters into an arch_info.bin.
    #[command(
        long_about = "Compile the [[cluster]] tables of a topology into a binary hardware description \
(arch_info.bin, docs/arch-info.md): one descriptor per cluster, core (numbered globally, cluster after \
cluster), memory bank (placed one after another in one address space) and zone (the same map in every \
cluster's bank). Hardware that fails its self-test (`self_test` in a [[cluster]]) is described and marked \
failed, so that every boot info leaves it out. The description is checked against every rule of the format \
before it is written.",
        after_help = "Examples:\n  monarch arch compile --topology examples/clusters.toml -o arch_info.bin\n  \
monarch arch compile -t examples/clusters.toml -o arch_info.bin && monarch arch show arch_info.bin\n\n\
Exit status: 0 written; 2 the topology cannot be read, describes no clusters or breaks a rule of the format; \
1 the file cannot be written."
    )]
    Compile(CompileArgs),
}

#[derive(Args)]
pub struct CompileArgs {
    #[command(flatten)]
    topo: monarch_boot::cmdline::TopologyOpt,
    /// Where to write the description (replaced if it exists).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
}

#[derive(Args)]
pub struct ShowArgs {
    /// The arch_info.bin file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: ArchCmd) -> ExitCode {
    match cmd {
        ArchCmd::Show(a) => show(&a),
        ArchCmd::Compile(a) => compile(&a),
    }
}

fn compile(a: &CompileArgs) -> ExitCode {
    let t = match a.topo.load() {
        Ok(t) => t,
        Err(e) => return bad_input(&e),
    };
    let (info, bytes) = match monarch_boot::phased::describe::describe(&t) {
        Ok(d) => d,
        Err(e) => return bad_input(&e),
    };
    if let Err(e) = std::fs::write(&a.output, &bytes) {
        eprintln!("monarch: cannot write {}: {e}; choose another file with -o", a.output.display());
        return ExitCode::from(crate::exit::BOOT_FAILED);
    }
    let failed =
        info.cores.iter().filter(|c| c.failed).count() + info.banks.iter().filter(|b| b.failed).count();
    println!(
        "wrote {}: {} bytes, {} clusters, {} cores, {} banks{}",
        a.output.display(),
        bytes.len(),
        info.clusters.len(),
        info.cores.len(),
        info.banks.len(),
        if failed > 0 {
            format!(" ({failed} failed their self-test: left out of every boot info)")
        } else {
            String::new()
        }
    );
    ExitCode::SUCCESS
}

fn show(a: &ShowArgs) -> ExitCode {
    let bytes = match std::fs::read(&a.file) {
        Ok(b) => b,
        Err(e) => return bad_input(&format!("{}: {e}", a.file.display())),
    };
    let view = match ArchView::parse(&bytes) {
        Ok(v) => v,
        Err(e) => return bad_input(&format!("{}: {e}", a.file.display())),
    };
    let infos: Vec<(u16, Result<BootInfo, String>)> = view
        .clusters()
        .iter()
        .map(|c| (c.id(), boot_info(&view, c.id()).map_err(|e| e.to_string())))
        .collect();
    if a.json {
        println!("{}", to_json(&view, &infos));
    } else {
        print!("{}", render(&view, &infos));
    }
    ExitCode::SUCCESS
}

fn failed(f: bool) -> &'static str {
    if f { " FAILED" } else { "" }
}

fn render(view: &ArchView<'_>, infos: &[(u16, Result<BootInfo, String>)]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let (major, minor) = view.version();
    let crc = view.header().crc.get();
    let _ = writeln!(
        s,
        "{:?}: arch_info.bin version {major}.{minor}, {} bytes, CRC-32C {crc:08x}, {}×{} mesh",
        view.name(),
        view.as_bytes().len(),
        view.x_size(),
        view.y_size()
    );
    let _ = writeln!(
        s,
        "{} clusters, {} cores, {} banks, {} devices",
        view.clusters().len(),
        view.cores().len(),
        view.banks().len(),
        view.devices().len()
    );
    for c in view.clusters() {
        let _ = writeln!(s, "\ncluster {} at ({}, {}){}", c.id(), c.x, c.y, failed(c.failed()));
        for core in view.cores_of(c.id()) {
            let _ = writeln!(s, "  core lid {} gid {}{}", core.lid(), core.gid(), failed(core.failed()));
        }
        for b in view.banks_of(c.id()) {
            let _ = writeln!(s, "  bank {:#x}+{:#x}{}", b.base(), b.size(), failed(b.failed()));
        }
        for d in view.devices_of(c.id()) {
            let _ = writeln!(
                s,
                "  device {} ({} channels) {:#x}+{:#x}{}",
                d.kind(),
                d.channels(),
                d.base(),
                d.size(),
                failed(d.failed())
            );
        }
    }
    let _ = writeln!(s, "\nzones (offsets in every cluster's bank):");
    let mut zones: Vec<_> = view.zones().iter().collect();
    zones.sort_by_key(|z| z.base());
    for z in zones {
        let kind = z.kind().map_or("?", |k| k.name());
        let _ = writeln!(s, "  {kind:<10} {:#x}..{:#x}", z.base(), z.end());
    }
    let _ = writeln!(s, "\nboot info per cluster:");
    for (id, info) in infos {
        match info {
            Ok(b) => {
                let _ = writeln!(
                    s,
                    "  cluster {id}: {} cores, memory {:#x}+{:#x}, {} devices, {} of {} clusters boot",
                    b.cores.len(),
                    b.memory.base,
                    b.memory.size,
                    b.devices.len(),
                    b.cluster_count,
                    view.clusters().len()
                );
                for x in b.excluded.iter().filter(|x| x.what.name() != "cluster") {
                    let _ = writeln!(s, "    left out: {} {} ({})", x.what.name(), x.id, x.why);
                }
            }
            Err(e) => {
                let _ = writeln!(s, "  cluster {id}: does not boot: {e}");
            }
        }
    }
    s
}

fn to_json(view: &ArchView<'_>, infos: &[(u16, Result<BootInfo, String>)]) -> Value {
    let (major, minor) = view.version();
    let clusters: Vec<Value> = view
        .clusters()
        .iter()
        .zip(infos)
        .map(|(c, (_, info))| {
            let boot = match info {
                Ok(b) => json!({
                    "cores": b.cores.iter().map(|c| json!({"lid": c.lid, "gid": c.gid})).collect::<Vec<_>>(),
                    "memory": {"base": b.memory.base, "size": b.memory.size},
                    "devices": b.devices.len(),
                    "cluster_count": b.cluster_count,
                    "excluded": b.excluded.iter().map(|x| json!({
                        "what": x.what.name(), "cluster": x.cluster, "id": x.id, "why": x.why.to_string(),
                    })).collect::<Vec<_>>(),
                }),
                Err(e) => json!({"error": e}),
            };
            json!({
                "id": c.id(), "x": c.x, "y": c.y, "failed": c.failed(),
                "boots": exclusion(view, c).is_none(),
                "cores": view.cores_of(c.id()).map(|k| json!({"lid": k.lid(), "gid": k.gid(), "failed": k.failed()})).collect::<Vec<_>>(),
                "banks": view.banks_of(c.id()).map(|b| json!({"base": b.base(), "size": b.size(), "failed": b.failed()})).collect::<Vec<_>>(),
                "devices": view.devices_of(c.id()).map(|d| json!({
                    "kind": d.kind().to_string(), "channels": d.channels(), "base": d.base(), "size": d.size(), "failed": d.failed(),
                })).collect::<Vec<_>>(),
                "boot_info": boot,
            })
        })
        .collect();
    json!({
        "name": view.name(),
        "version": format!("{major}.{minor}"),
        "size": view.as_bytes().len(),
        "crc32c": format!("{:08x}", view.header().crc.get()),
        "x_size": view.x_size(),
        "y_size": view.y_size(),
        "zones": view.zones().iter().map(|z| json!({
            "kind": z.kind().map_or("?", |k| k.name()), "base": z.base(), "max": z.max(),
        })).collect::<Vec<_>>(),
        "clusters": clusters,
    })
}
