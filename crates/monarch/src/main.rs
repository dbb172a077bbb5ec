//! `monarch`: the command line. Thin: parse, wire, print. The work is in `monarch-boot`.
#![forbid(unsafe_code)]

mod arch_cli;
mod chassis_cli;
mod exit;
mod logs;
mod netboot_cli;
mod output;
mod simulate_cli;

use clap::{Args, Parser, Subcommand};
use exit::bad_input;
use monarch_boot::agent::{self, AgentOptions};
use monarch_boot::cmdline::{AgentArgs, CandidateArgs, CoreArgs, TopologyOpt};
use monarch_boot::election;
use monarch_boot::plan::Plan;
use monarch_boot::redfish::users::Role;
use monarch_boot::run::{self, UpOptions};
use monarch_boot::timeline;
use monarch_boot::topology::{self, Topology};
use monarch_boot::values;
use monarch_drivers::Doorbell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "monarch",
    version,
    about = "Multi-processor startup: the monarch stages every secondary's OS image through a memory window, proves it landed intact, then releases it",
    long_about = "Multi-processor startup system.\n\n\
One processor, the monarch, retrieves each secondary's OS image, copies it into that secondary's \
memory through a memory window (a PCIe NTB / ivshmem BAR, or shared memory on one Linux box), \
checks with a checksum/doorbell handshake that what landed is what was sent (rewriting it on a \
mismatch, aborting with a report after the configured attempts), and only then releases the \
secondary to jump into the image.\n\n\
Start here:\n  monarch up                      boot the built-in emulated chassis\n  \
monarch plan                    show what `up` would do, without booting\n  \
monarch topology default        print the built-in topology, to edit for your chassis",
    after_help = "Exit status: 0 every required secondary booted (with `up --hold`: and the chassis was shut down as asked, by `monarch shutdown` or a stop signal); 1 a secondary failed; 2 bad input (topology, arguments, no supervised chassis); 130/143 a boot stopped by SIGINT/SIGTERM."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    logs: logs::LogArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot the whole system: stage, verify and release every secondary.
    #[command(long_about = "Boot the whole system.\n\n\
Secondaries on direct ports are staged in parallel; those behind a switch take turns on its link \
(copy and verification), the highest priority first. Each secondary: retrieve the image (size + retrieved checksum) → configure \
its window (size limit, load offset) → release it (start its agent) → copy → the agent posts the \
written checksum → compare → OK (or rewrite, up to `attempts`) → the secondary hands off and the \
running image reports RUNNING. A failed secondary never stops the others.\n\n\
With two or more management processors (role = \"monarch\"), one candidate process each elects \
the monarch by the monarch election rules (self-test, --monarch pin, highest BOOT_ID, lowest slot) on a \
shared backplane, or on etcd ([election] etcd); if the monarch dies, a serf takes the boot over \
from the windows under a higher epoch, and secondaries ignore the old one (docs/election.md).\n\n\
Ctrl-C (SIGINT) or SIGTERM stops the boot cleanly: secondaries not yet released are aborted and \
reported `interrupted`, running images get SHUTDOWN and --shutdown-grace, the run folder is \
removed, the summary printed, and the exit status is 130 (143 for SIGTERM); a second Ctrl-C exits \
at once.\n\n\
With --hold, the chassis stays managed after the boot (docs/supervision.md): running images \
heartbeat through their windows, a crashed one is recovered within its restart limits and the \
processors that depend on it are told, ports follow their owner's readiness, and `monarch status`, \
`reboot`, `shutdown`, `startup`, `power` and `events` talk to it through RUN_DIR/control.sock. \
It ends with `monarch shutdown` (exit 0) or SIGINT/SIGTERM, which shut the chassis down in \
reverse dependency order (--deadline); a second signal exits at once.\n\n\
Without --topology, boots the built-in emulated chassis (`monarch topology default` prints it): \
two management processors, a route card and four line cards, two behind a switch, each a real \
process with a 30 MiB image in a shared-memory window.")]
    Up(UpArgs),
    /// Show the resolved plan: who is staged in parallel, who waits behind which switch; or
    /// (--simulate) a machine of clusters' predicted boot time, phased beside flat.
    #[command(
        long_about = "Show the resolved plan: who is staged in parallel, who waits behind which \
switch, each window, and for a machine of clusters the zone map of its banks.\n\n\
With --simulate, predict instead how long a machine of clusters takes to boot, phased beside flat \
(docs/scaling.md): each step is a set of equal tasks in parallel, as long as the longest of one task \
alone, the tasks' CPU time over the CPUs available, and the bytes that cross the shared link (out of \
cluster 0's bank when phased, out of the monarch when flat) at its bandwidth. The costs default to round \
figures of a server core, each core its own CPU; --measure measures them on this host and shares its CPUs \
among the cores, as `monarch up` does here; every cost can be set on its own.",
        after_help = "Examples:\n  monarch plan -t examples/clusters.toml\n  \
monarch plan --simulate -t examples/clusters.toml\n  \
monarch plan --simulate -t examples/clusters.toml --measure\n  \
monarch plan --simulate --clusters 256 --cores 64 --link-gbps 100\n  \
monarch plan --simulate --clusters 256 --cores 64 --json | jq '.phased_ms, .flat_ms'"
    )]
    Plan(PlanArgs),
    /// A supervised chassis (`monarch up --hold`): each processor's state, readiness, pid,
    /// restarts and reboot causes.
    #[command(
        long_about = "Show the state of a supervised chassis (`monarch up --hold`), through its control socket.\n\n\
Per processor: its state (booting, running, restarting, failed, shut_down, off), its admin state (down after \
`monarch shutdown ID`), whether its services are ready, the pid of its running image, how often it was restarted, \
its power domain, what it runs without (degraded), and its last reboot causes; --history prints every cause kept \
in the state folder, across runs of monarch.\n\n\
Examples:\n  monarch status\n  monarch status dpu1 --history\n  monarch status --chassis server-dpus --json"
    )]
    Status(chassis_cli::StatusArgs),
    /// Reboot a processor of a supervised chassis: negotiated, then delivered again.
    #[command(long_about = "Reboot one processor of a supervised chassis.\n\n\
In reverse dependency order: the processors that depend on it are told it is leaving and may defer (until \
--deadline); it is told to reboot and may defer too; the processors it depends on are told to clean up its \
context (a host reboot: its DPUs stay up). Then its image is stopped, delivered and verified again (a fresh \
copy, a fresh checksum), and its dependents get it back once it is ready. --force skips the waiting.\n\n\
Examples:\n  monarch reboot dpu0\n  monarch reboot host --deadline 30s\n  monarch reboot dpu1 --force")]
    Reboot(chassis_cli::RebootArgs),
    /// Shut down one processor, or the whole supervised chassis (then `up --hold` exits 0).
    #[command(long_about = "Shut down one processor of a supervised chassis, or the whole chassis.\n\n\
Without an ID: every processor, in reverse dependency order (the main power domain first, then main power off, \
then the aux domain); each level is told and acknowledges (or defers until --deadline) before it is stopped; \
then `monarch up --hold` exits 0. With an ID: the processors that depend on it are told it is leaving, it is \
told to shut down, then stopped; it stays down (admin down) until `monarch startup ID`. --force skips the \
waiting.\n\nExamples:\n  monarch shutdown\n  monarch shutdown dpu1 --deadline 5s")]
    Shutdown(chassis_cli::ShutdownArgs),
    /// Bring a processor that was shut down (or failed) up again.
    Startup(chassis_cli::StartupArgs),
    /// Switch the main power domain of a supervised chassis (the host CPUs).
    #[command(long_about = "Switch the main power domain of a supervised chassis.\n\n\
Processors with power = \"main\" (the host CPUs) run only while main power is on. With [chassis] \
main_power = \"auto\" it comes on once the aux domain (the BMC's side, the DPUs) is up; with \"manual\" it waits \
for `monarch power on`. `monarch power off` shuts the main domain down first (negotiated, as `monarch shutdown`).")]
    Power(chassis_cli::PowerArgs),
    /// Follow the events of a supervised chassis.
    Events(chassis_cli::EventsArgs),
    /// The secondary's side: wait on a window, verify the image, hand off.
    #[command(long_about = "The secondary's side of the handshake, run by the secondary (from its \
firmware or initramfs), or started by `monarch up` for launch = \"process\".\n\n\
Maps the window, waits for the monarch to configure and release it, posts READY, verifies each \
copy (written checksum) and posts it, and on the monarch's OK hands off: `exec` runs the \
delivered bytes themselves (sealed memfd, fexecve); `none` exits 0 for firmware that jumps by \
itself. It never hands off into an image whose checksum it did not compute and the monarch did \
not confirm.")]
    Agent(AgentArgs),
    /// One management processor of a chassis with several (started by `monarch up`).
    #[command(hide = true)]
    Candidate(CandidateArgs),
    /// One core of a machine of clusters in the phased boot (started by `monarch up` and by
    /// the cluster heads).
    #[command(hide = true)]
    Core(CoreArgs),
    /// Topology helpers.
    #[command(subcommand)]
    Topology(TopologyCmd),
    /// Image helpers.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Measurements, each printed beside a reference measured in the same run.
    #[command(subcommand)]
    Bench(monarch_bench::cli::BenchCmd),
    /// Secondaries that are QEMU VMs (launch = "qemu"): prepare their kernel and initramfs.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Network boot for machines with no window: DHCP/ProxyDHCP, TFTP, HTTP, discovery.
    #[command(subcommand)]
    Netboot(netboot_cli::NetbootCmd),
    /// Draw a saved `monarch up --json` stream as a picture: an SVG timeline of the boot.
    #[command(
        long_about = "Draw a saved `monarch up --json` stream as a picture of the boot: an SVG timeline to open in a browser.\n\n\
One row per secondary, in the order they appear, under a row that says who was monarch; a time axis in ms since \
the run started. Each secondary's boot is a bar per phase, each phase its own colour: retrieve, configure, \
launching, rendezvous, copy, verify, handoff, then running (to the end of the picture, or until it was lost). \
Small symbols mark what an operator looks for: a checksum mismatch (red) and the new attempt after it, a chunk \
re-sent, held and released at a rendezvous, a deferred notice, a lost image and its restart, a failed secondary; \
a failover is a dashed line across every row, labelled `from → to`. Hover over a bar or a symbol for its \
details (times, attempt, checksums, reasons).\n\n\
Lines of the file that are not events (a newer monarch's kinds of events, text around the JSON) are ignored, \
and counted in a warning on stderr. `monarch up --timeline FILE.svg` draws the same picture at the end of a run.",
        after_help = "Examples:\n  monarch up --json > boot.jsonl && monarch timeline boot.jsonl -o boot.svg\n  \
monarch up --json | tee boot.jsonl | monarch timeline - -o boot.svg\n  \
monarch up --timeline boot.svg                  # the same picture, without saving the events\n\n\
Exit status: 0 the picture was written; 2 the file cannot be read, holds no event at all, or the picture \
cannot be written (the message names the file, and the line)."
    )]
    Timeline(TimelineArgs),
    /// The Redfish management service of `monarch up --hold --redfish`: its users file.
    #[command(subcommand)]
    Redfish(RedfishCmd),
    /// Multi-cluster machines: their hardware description (arch_info.bin) and each cluster's
    /// boot info.
    #[command(subcommand)]
    Arch(arch_cli::ArchCmd),
}

#[derive(Subcommand)]
enum RedfishCmd {
    /// Add a user to a Redfish users file, or with --replace set its password and role.
    #[command(
        long_about = "Add a user to a Redfish users file (made with mode 0600 if missing), or with --replace \
set a user's new password and role.\n\n\
The password is the first line of standard input (its newline is not part of it); typed at a terminal, \
it is asked for on stderr and not echoed. It is stored as an argon2id hash, never as text. The file is \
the operator's: one user a line, `NAME:HASH:ROLE`, comments (#) and blank lines kept as they are; \
bcrypt lines written by `htpasswd -B FILE NAME` are accepted too (a line without a role is ReadOnly). \
The file is replaced atomically and keeps its mode; a running `monarch up --hold --redfish` re-reads it \
within a second of the change.\n\n\
Roles (Redfish's standard ones): Administrator (everything, users included), Operator (read, and \
reset or power the chassis), ReadOnly (read only).",
        after_help = "Examples:\n  printf '%s\\n' \"$PASS\" | monarch redfish useradd /etc/monarch/redfish-users admin --role Administrator\n  \
monarch redfish useradd users viewer                 # asks for the password; ReadOnly\n  \
monarch redfish useradd users ops --role Operator --replace   # a new password\n\n\
Exit status: 0 the user was written; 2 bad input: a bad name, an empty password, a name already there \
without --replace, a users file that cannot be read or written (the message says which)."
    )]
    Useradd(UseraddArgs),
}

#[derive(Args)]
struct UseraddArgs {
    /// The users file (made if missing).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The user's name: 1 to 64 of A-Z a-z 0-9 . _ -
    #[arg(value_name = "NAME")]
    name: String,
    /// What the user may do.
    #[arg(long, value_enum, ignore_case = true, default_value = "ReadOnly")]
    role: Role,
    /// Set the password and role of a user already in the file.
    #[arg(long)]
    replace: bool,
}

#[derive(Args)]
struct TimelineArgs {
    /// The saved output of `monarch up --json`, one event per line (`-`: standard input).
    #[arg(value_name = "EVENTS.jsonl")]
    events: PathBuf,
    /// Where to write the picture (`-`: standard output).
    #[arg(long, short = 'o', value_name = "FILE.svg")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum VmCmd {
    /// Build the VM artifacts from Debian's packages and a static monarch: guest kernel,
    /// stage-1 initramfs, demo payload bundle.
    #[command(
        long_about = "Build everything a VM secondary needs, from Debian's packages and this project's own static binary, into --dir (a cache: later runs rebuild only what changed).\n\n\
- installs qemu-system-x86, ipxe-qemu and binutils with apt-get when missing (needs root);\n\
- the guest kernel: `apt-get download` of the kernel behind linux-image-cloud-amd64, unpacked with `dpkg -x` (vmlinuz);\n\
- the stage-1 initramfs (stage1.cpio): /init is a statically linked monarch, which as PID 1 runs the agent on the VM's ivshmem BAR and hands off with kexec;\n\
- the demo payload bundle (payload.efi): a UKI (systemd's EFI stub from systemd-boot-efi, with .linux/.initrd/.cmdline sections added by objcopy) holding the same kernel and initramfs with monarch.role=payload, which reports RUNNING through the window.\n\n\
The static monarch is --agent, else this executable if it is static, else one built with cargo from the source tree this executable was built in (target/static).\n\n\
Then: monarch up --topology examples/qemu-chassis.toml"
    )]
    Prepare(VmPrepareArgs),
}

#[derive(Args)]
struct VmPrepareArgs {
    /// Output and cache folder [default: $MONARCH_VM_DIR, else /var/cache/monarch/vm].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// A statically linked monarch to put in the initramfs.
    #[arg(long, value_name = "FILE")]
    agent: Option<PathBuf>,
    /// Rebuild everything, ignoring the cache.
    #[arg(long)]
    force: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    topo: TopologyOpt,
    /// One JSON object per line on stdout (events); the last line is the summary.
    #[arg(long)]
    json: bool,
    /// How long running images get to stop at the end of the run.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = values::parse_duration)]
    shutdown_grace: Duration,
    #[arg(
        long,
        value_name = "ID",
        help = "Pin the monarch: this management processor wins the election if it passes its \
self-test (overrides the topology's [election] monarch; the operator's choice)"
    )]
    monarch: Option<String>,
    /// At the end of the run (with --hold: once the chassis is shut down), write a picture
    /// of it to FILE: an SVG timeline, as `monarch timeline` draws.
    #[arg(long, value_name = "FILE.svg")]
    timeline: Option<PathBuf>,
    /// Keep the chassis managed after the boot, until `monarch shutdown` or SIGINT/SIGTERM:
    /// heartbeats, crash recovery, reboots, power (see `monarch status`).
    #[arg(long)]
    hold: bool,
    /// With --hold: where reboot causes are kept across runs [default: the topology's
    /// state_dir, else $STATE_DIRECTORY, else /var/lib/monarch/CHASSIS].
    #[arg(long, value_name = "DIR", requires = "hold")]
    state_dir: Option<PathBuf>,
    /// With --hold: how long processors may defer the shutdown that SIGINT/SIGTERM starts.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = values::parse_duration, requires = "hold")]
    deadline: Duration,
    /// A machine of clusters: boot it flat (the monarch delivers to every core through its
    /// own window) instead of in phases.
    #[arg(long)]
    flat: bool,
    /// Boot the machine of clusters a binary hardware description describes
    /// (`monarch arch compile` writes one; docs/arch-info.md), from the description alone:
    /// its clusters, cores, banks and zones, what failed its self-test left out, every core
    /// booting the built-in demo kernel sized to the kernel zone.
    #[arg(long, value_name = "ARCH_INFO.bin", conflicts_with = "topology")]
    arch: Option<PathBuf>,
    /// With --hold: serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464;
    /// port 0 picks one, named in the `supervising` event).
    #[arg(long, value_name = "ADDR", requires = "hold")]
    metrics: Option<std::net::SocketAddr>,
    /// With --hold: serve Redfish over HTTPS at ADDR (e.g. 127.0.0.1:8443; port 0 picks one,
    /// named in the `supervising` event) [default: the topology's `[management]` redfish].
    #[arg(long, value_name = "ADDR", requires = "hold")]
    redfish: Option<std::net::SocketAddr>,
    /// With --redfish: the users file (`NAME:HASH[:ROLE]` lines; make one with `monarch redfish
    /// useradd`) [default: the topology's `[management]` users].
    #[arg(long, value_name = "FILE", requires = "hold")]
    redfish_users: Option<PathBuf>,
    /// With --redfish: its certificate (PEM) [default: `[management]` certificate, else one made
    /// at first start and kept in the state folder].
    #[arg(long, value_name = "FILE", requires_all = ["hold", "redfish_key"])]
    redfish_cert: Option<PathBuf>,
    /// With --redfish-cert: its private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["hold", "redfish_cert"])]
    redfish_key: Option<PathBuf>,
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    topo: TopologyOpt,
    #[command(flatten)]
    sim: simulate_cli::SimulateArgs,
}

#[derive(Subcommand)]
enum TopologyCmd {
    /// Print the built-in emulated chassis as a topology file to start from.
    Default,
    /// Validate a topology file and print every problem.
    Check {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Write a demo payload image (the monarch-payload program, a banner, padding).
    Build {
        /// Total size, e.g. 30MiB.
        #[arg(long, default_value = "30MiB")]
        size: String,
        /// Text the payload reports when it runs.
        #[arg(long, default_value = "hello from the delivered image")]
        banner: String,
        /// Output file.
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
    /// Make an Ed25519 key pair for signing images: NAME.key (secret, mode 0600) and NAME.pub.
    #[command(
        after_help = "Example:\n  monarch image keygen -o ops          # writes ops.key (keep it secret) and ops.pub\n  \
        monarch image sign --key ops.key lc.img\n\n\
        Give ops.pub to the secondaries (`trust = [\"ops.pub\"]` in the topology, or `monarch agent \
        --trust ops.pub`). Neither file is ever overwritten: an existing NAME.key or NAME.pub is \
        an error. Format: one line, `monarch-pub v1 ed25519 <64 hex digits>` (docs/topology.md)."
    )]
    Keygen {
        /// NAME of the pair: writes NAME.key and NAME.pub.
        #[arg(long, short = 'o', value_name = "NAME")]
        out: PathBuf,
    },
    /// Sign an image: writes the detached signature IMAGE.sig beside it.
    #[command(
        after_help = "Example:\n  monarch image sign --key ops.key images/lc.img   # writes images/lc.img.sig\n\n\
        The signature is Ed25519 over the image's length and BLAKE3 digest, one line of text \
        (`monarch-sig v1 ed25519 <key id> <length> <blake3> <signature>`). monarch looks for \
        IMAGE.sig beside each image; sign again after any change to the image. An existing \
        IMAGE.sig is replaced only if it is a signature."
    )]
    Sign {
        /// The secret key (NAME.key from `monarch image keygen`).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// The image to sign.
        image: PathBuf,
    },
    /// Check an image against IMAGE.sig with trusted public keys, as a secondary would.
    #[command(
        after_help = "Example:\n  monarch image verify --trust ops.pub --trust ops-2027.pub images/lc.img\n\n\
        Exit 0 when IMAGE.sig is a signature of exactly these bytes by one of the trusted keys; \
        1 when it is not (the reason is printed); 2 when a file cannot be read."
    )]
    Verify {
        /// A trusted public key (NAME.pub); repeat for several.
        #[arg(long = "trust", value_name = "FILE", required = true)]
        trust: Vec<PathBuf>,
        /// The image to check.
        image: PathBuf,
    },
}

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::process::id() == 1 && std::path::Path::new(&argv0).file_name().is_some_and(|n| n == "init") {
        // PID 1 of a VM's initramfs: stage 1 or the delivered payload (docs/vm.md).
        monarch_boot::vm::stage1::init_main();
    }
    let cli = Cli::parse();
    logs::install(&cli.logs);
    match cli.cmd {
        Cmd::Up(a) => cmd_up(a),
        Cmd::Status(a) => chassis_cli::status(a),
        Cmd::Reboot(a) => chassis_cli::reboot(a),
        Cmd::Shutdown(a) => chassis_cli::shutdown(a),
        Cmd::Startup(a) => chassis_cli::startup(a),
        Cmd::Power(a) => chassis_cli::power(a),
        Cmd::Events(a) => chassis_cli::events(a),
        Cmd::Plan(a) if a.sim.simulate => simulate_cli::run(&a.sim, &a.topo),
        Cmd::Plan(a) => match a.topo.load() {
            Ok(t) => {
                print!("{}", Plan::new(t).render());
                ExitCode::SUCCESS
            }
            Err(e) => bad_input(&e),
        },
        Cmd::Agent(a) => cmd_agent(a),
        Cmd::Candidate(a) => cmd_candidate(a),
        Cmd::Core(a) => {
            let exe = match own_exe() {
                Ok(p) => p,
                Err(code) => return code,
            };
            let why = monarch_boot::phased::core::run(&a, &exe);
            eprintln!("monarch core: {why}");
            ExitCode::from(exit::BOOT_FAILED)
        }
        Cmd::Topology(TopologyCmd::Default) => {
            print!("{}", topology::DEFAULT_TOPOLOGY);
            ExitCode::SUCCESS
        }
        Cmd::Topology(TopologyCmd::Check { file }) => match Topology::load(&file) {
            Ok(t) => {
                println!("{}: ok ({} secondaries)", file.display(), t.secondaries.len());
                ExitCode::SUCCESS
            }
            Err(e) => bad_input(&e),
        },
        Cmd::Image(ImageCmd::Build { size, banner, out }) => cmd_image_build(&size, &banner, &out),
        Cmd::Image(ImageCmd::Keygen { out }) => match monarch_boot::signing::keygen(&out) {
            Ok(k) => {
                println!(
                    "{}: secret key (mode 0600; keep it off the secondaries)\n{}: public key {} (give it to the secondaries)",
                    k.secret.display(),
                    k.public.display(),
                    k.id
                );
                ExitCode::SUCCESS
            }
            Err(e) => bad_input(&e),
        },
        Cmd::Image(ImageCmd::Sign { key, image }) => match monarch_boot::signing::sign_file(&key, &image) {
            Ok((out, s)) => {
                println!("{}: signed by key {} ({} bytes)", out.display(), s.signer, s.signed.len);
                ExitCode::SUCCESS
            }
            Err(e) => bad_input(&e),
        },
        Cmd::Image(ImageCmd::Verify { trust, image }) => cmd_image_verify(&trust, &image),
        Cmd::Bench(c) => cmd_bench(c),
        Cmd::Vm(VmCmd::Prepare(a)) => cmd_vm_prepare(a),
        Cmd::Netboot(c) => netboot_cli::run(c),
        Cmd::Timeline(a) => cmd_timeline(&a),
        Cmd::Redfish(RedfishCmd::Useradd(a)) => cmd_redfish_useradd(&a),
        Cmd::Arch(c) => arch_cli::run(c),
    }
}

fn cmd_redfish_useradd(a: &UseraddArgs) -> ExitCode {
    let password = match read_password(&format!("password for {}: ", a.name)) {
        Ok(p) => p,
        Err(e) => return bad_input(&format!("cannot read the password from standard input: {e}")),
    };
    match monarch_boot::redfish::users::add(&a.file, &a.name, &password, a.role, a.replace) {
        Ok(added) => {
            let verb = if added.replaced { "replaced" } else { "added" };
            let made = if added.created { " (a new file, mode 0600)" } else { "" };
            println!("{verb} user {} ({}) in {}{made}", added.name, added.role, added.path.display());
            ExitCode::SUCCESS
        }
        Err(e) => bad_input(&e),
    }
}

/// The first line of standard input, without its line end; at a terminal, asked for on stderr
/// with echo off (and echo restored after).
fn read_password(prompt: &str) -> std::io::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        let mut stderr = std::io::stderr();
        write!(stderr, "{prompt}")?;
        stderr.flush()?;
        let saved = rustix::termios::tcgetattr(&stdin)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Flush, &quiet)?;
        let read = stdin.lock().read_line(&mut line);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved)?;
        writeln!(stderr)?;
        read?;
    } else {
        stdin.lock().read_line(&mut line)?;
    }
    let end = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(end);
    Ok(line)
}

fn cmd_timeline(a: &TimelineArgs) -> ExitCode {
    let stream = match timeline::load(&a.events) {
        Ok(s) => s,
        Err(e) => return bad_input(&e),
    };
    if let Some(w) = stream.warning() {
        eprintln!("monarch timeline: warning: {w}");
    }
    match timeline::save(&a.out, &timeline::render(&stream.events)) {
        Ok(()) if a.out.as_os_str() == "-" => ExitCode::SUCCESS,
        Ok(()) => {
            println!("{}: a picture of {} events from {}", a.out.display(), stream.events.len(), stream.file);
            ExitCode::SUCCESS
        }
        Err(e) => bad_input(&e),
    }
}

fn cmd_bench(c: monarch_bench::cli::BenchCmd) -> ExitCode {
    let exe = match own_exe() {
        Ok(p) => p,
        Err(code) => return code,
    };
    match monarch_bench::cli::run(c, &exe) {
        Ok(()) => ExitCode::SUCCESS,
        Err(monarch_bench::cli::BenchError::BadInput(e)) => bad_input(&e),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(exit::BOOT_FAILED)
        }
    }
}

/// The Redfish service `up --hold` is asked for: its flags, else the topology's `[management]`.
fn redfish_options(
    a: &UpArgs,
    m: &topology::Management,
) -> Result<Option<monarch_boot::redfish::RedfishOptions>, String> {
    let Some(addr) = a.redfish.or(m.redfish) else {
        return Ok(None);
    };
    let users = a.redfish_users.clone().or_else(|| m.users.clone()).ok_or_else(|| {
        format!(
            "the Redfish service at {addr} needs a users file: give --redfish-users FILE (or [management] users), made with `monarch redfish useradd FILE admin --role Administrator`"
        )
    })?;
    let (certificate, key) = match (&a.redfish_cert, &a.redfish_key) {
        (Some(c), Some(k)) => (Some(c.clone()), Some(k.clone())),
        _ => (m.certificate.clone(), m.key.clone()),
    };
    Ok(Some(monarch_boot::redfish::RedfishOptions { addr, users, certificate, key }))
}

fn cmd_up(a: UpArgs) -> ExitCode {
    let loaded = match &a.arch {
        Some(f) => monarch_boot::phased::describe::booted_from(f).map_err(|e| e.to_string()),
        None => a.topo.load().map_err(|e| e.to_string()),
    };
    let topology = match loaded {
        Ok(t) => t,
        Err(e) => return bad_input(&e),
    };
    let plan = Plan::new(topology);
    let agent_exe = match own_exe() {
        Ok(p) => p,
        Err(code) => return code,
    };
    if plan.topology.clusters.is_some() && !a.flat && !a.hold {
        // A machine of clusters: booted in phases (heads copy for their clusters, barriers).
        let mut out = output::Output::new(a.json, &plan);
        let summary = monarch_boot::phased::boot::run(&plan, &agent_exe, &mut |ev| out.event(ev));
        out.finish(&summary);
        if a.json {
            println!(
                "{}",
                serde_json::to_string(&monarch_boot::events::Event {
                    t_ms: summary.total_ms,
                    kind: monarch_boot::events::EventKind::Summary(summary.clone())
                })
                .unwrap_or_default()
            );
        }
        return if summary.ok { ExitCode::SUCCESS } else { ExitCode::from(exit::BOOT_FAILED) };
    }
    let hold = if a.hold {
        let state_dir = a
            .state_dir
            .clone()
            .or_else(|| plan.topology.state_dir.clone())
            .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
            .unwrap_or_else(|| {
                PathBuf::from("/var/lib/monarch").join(topology::sanitize(&plan.topology.name))
            });
        let redfish = match redfish_options(&a, &plan.topology.management) {
            Ok(r) => r,
            Err(e) => return bad_input(&e),
        };
        let metrics = a.metrics.or(plan.topology.management.metrics);
        Some(run::HoldOptions { state_dir, deadline: a.deadline, metrics, redfish })
    } else {
        if plan.topology.main_power == topology::MainPower::Manual
            && plan.topology.secondaries.iter().any(|s| s.life.power == topology::PowerDomain::Main)
        {
            return bad_input(
                &"main_power = \"manual\": the main domain waits for `monarch power on`, which needs a supervised chassis; run `monarch up --hold`",
            );
        }
        let m = &plan.topology.management;
        if m.redfish.is_some() || m.metrics.is_some() {
            tracing::warn!(
                "the topology's [management] services (Redfish, metrics) are served only by a supervised chassis: run `monarch up --hold` to have them"
            );
        }
        None
    };
    if let Some(f) = &a.timeline
        && let Err(e) = timeline::check_destination(f)
    {
        return bad_input(&e);
    }
    let opts = UpOptions { agent_exe, shutdown_grace: a.shutdown_grace, hold };
    let managers = &plan.topology.managers;
    let pinned = match pinned_manager(&plan.topology, a.monarch.as_deref()) {
        Ok(p) => p,
        Err(e) => return bad_input(&e),
    };
    // Ctrl-C / SIGTERM: stop staging, shut down what runs, report (a second one: at once).
    if let Err(e) = monarch_boot::interrupt::install(true) {
        tracing::warn!(error = %e, "cannot catch SIGINT/SIGTERM: an interruption will not be clean");
    }
    let mut out = output::Output::new(a.json, &plan);
    // With --timeline, the run's events are kept for its picture.
    let mut seen = Vec::new();
    let mut on_event = |ev: &monarch_boot::events::Event| {
        out.event(ev);
        if a.timeline.is_some() {
            seen.push(ev.clone());
        }
    };
    let summary = if managers.len() > 1 {
        let source = match &a.topo.topology {
            Some(f) => election::TopologySource::File(f.clone()),
            None => election::TopologySource::Builtin,
        };
        election::up(&plan, &source, &opts, pinned, &mut on_event)
    } else {
        run::up(&plan, &opts, &mut on_event)
    };
    out.finish(&summary);
    if let Some(f) = &a.timeline {
        // The boot's own outcome decides the exit status; a picture that cannot be written
        // is said, not a failed boot.
        match timeline::save(f, &timeline::render(&seen)) {
            Ok(()) => tracing::info!(file = %f.display(), "the picture of this run is written"),
            Err(e) => tracing::warn!(error = %e, "the picture of this run is not written"),
        }
    }
    if a.hold && !summary.processors.iter().any(|p| p.state == "interrupted") {
        // A supervised chassis shut down as asked (by `monarch shutdown` or a stop signal,
        // which is not a boot cut short): 0, or 1 if a required secondary had failed for good.
        return if summary.ok { ExitCode::SUCCESS } else { ExitCode::from(exit::BOOT_FAILED) };
    }
    if let Some(code) = monarch_boot::interrupt::exit_status() {
        // Interrupted: 128 + the signal's number, as a shell reports a program it stopped.
        return ExitCode::from(code);
    }
    if summary.ok { ExitCode::SUCCESS } else { ExitCode::from(exit::BOOT_FAILED) }
}

/// `--monarch ID` as the index of that management processor (`None` without the option).
fn pinned_manager(t: &monarch_boot::topology::Topology, id: Option<&str>) -> Result<Option<usize>, String> {
    let Some(m) = id else { return Ok(None) };
    match t.managers.iter().position(|x| x.id == m) {
        Some(i) => Ok(Some(i)),
        None => {
            let known: Vec<&str> = t.managers.iter().map(|m| m.id.as_str()).collect();
            Err(format!(
                "--monarch {m}: no management processor has that id; use one of: {}",
                known.join(", ")
            ))
        }
    }
}

/// One candidate of a chassis: events as JSON lines on stdout for `monarch up` to relay.
/// Exit status: 0 the boot finished (as monarch, or by another), 1 it finished with a
/// failed secondary, 3 it stood down (deposed), 4 deconfigured, 2 bad input or no monarch.
fn cmd_candidate(a: CandidateArgs) -> ExitCode {
    let mut topology = match a.topo.load() {
        Ok(t) => t,
        Err(e) => return bad_input(&e),
    };
    // A candidate lives as long as its chassis (`monarch up`): if that dies, a stop signal
    // ends this one cleanly (a held chassis is shut down) instead of leaving it orphaned.
    if !election::candidate::bind_to_chassis() {
        tracing::warn!("its chassis is gone already; stopping");
        return ExitCode::from(exit::BOOT_FAILED);
    }
    topology.relocate(&a.run_dir);
    // The chassis owns the run folder; the candidates only use it.
    topology.run_dir_is_temporary = false;
    let agent_exe = match own_exe() {
        Ok(p) => p,
        Err(code) => return code,
    };
    let pinned = match pinned_manager(&topology, a.monarch.as_deref()) {
        Ok(p) => p,
        Err(e) => return bad_input(&e),
    };
    // Stopped by `monarch up` (or the terminal) with SIGINT/SIGTERM: stop cleanly. No exit
    // on a second signal: from a terminal the candidate gets the Ctrl-C and `monarch up`'s
    // relay of it.
    if let Err(e) = monarch_boot::interrupt::install(false) {
        tracing::warn!(error = %e, "cannot catch SIGINT/SIGTERM");
    }
    let o = election::CandidateOptions {
        plan: Plan::new(topology),
        index: a.index,
        pinned,
        backplane: a.backplane,
        session: a.session,
        up: UpOptions {
            agent_exe,
            shutdown_grace: a.shutdown_grace,
            hold: a.hold_state_dir.clone().map(|state_dir| run::HoldOptions {
                state_dir,
                deadline: a.hold_deadline,
                metrics: a.hold_metrics,
                redfish: a.hold_redfish.zip(a.hold_redfish_users.clone()).map(|(addr, users)| {
                    monarch_boot::redfish::RedfishOptions {
                        addr,
                        users,
                        certificate: a.hold_redfish_certificate.clone(),
                        key: a.hold_redfish_key.clone(),
                    }
                }),
            }),
        },
        clock: election::instant_at(a.t0_unix_ns),
    };
    let outcome = election::run_candidate(&o, &mut |ev| {
        if let Ok(line) = serde_json::to_string(ev) {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    });
    match outcome {
        election::CandidateOutcome::Finished { ok: true } | election::CandidateOutcome::Serf => {
            ExitCode::SUCCESS
        }
        election::CandidateOutcome::Finished { ok: false } => ExitCode::from(exit::BOOT_FAILED),
        election::CandidateOutcome::StoodDown => ExitCode::from(exit::STOOD_DOWN),
        election::CandidateOutcome::Deconfigured => ExitCode::from(exit::DECONFIGURED),
        election::CandidateOutcome::Failed(e) => {
            tracing::error!(error = %e, "the candidate failed");
            ExitCode::from(exit::BAD_INPUT)
        }
    }
}

fn cmd_agent(a: AgentArgs) -> ExitCode {
    let ivshmem = a.window.as_os_str() == "ivshmem";
    let window = if ivshmem {
        match monarch_boot::vm::stage1::find_ivshmem() {
            Ok(p) => p,
            Err(e) => return bad_input(&e),
        }
    } else {
        a.window
    };
    let trust = match a.trust.load() {
        Ok(t) => t,
        Err(e) => return bad_input(&e),
    };
    let opts = AgentOptions {
        trust,
        window,
        id: a.id,
        handoff: a.handoff,
        timeout: a.timeout,
        doorbell: if a.poll || ivshmem {
            Doorbell::Poll { max_sleep: Duration::from_millis(1) }
        } else {
            Doorbell::detect()
        },
        epoch: a.epoch,
    };
    match agent::run(&opts) {
        Ok(()) => {
            eprintln!("agent {}: verified and released (handoff none)", opts.id);
            eprintln!("agent {}: peak memory {} kB", opts.id, monarch_drivers::host::peak_rss_bytes() / 1024);
            ExitCode::SUCCESS
        }
        Err(
            e @ (agent::AgentError::Busy { .. }
            | agent::AgentError::Superseded { .. }
            | agent::AgentError::AlreadyHandedOff { .. }),
        ) => {
            eprintln!("agent: {e}");
            ExitCode::from(exit::LEFT_ALONE)
        }
        Err(e) => {
            eprintln!("agent: {e}");
            ExitCode::from(exit::BOOT_FAILED)
        }
    }
}

fn cmd_image_verify(trust: &[PathBuf], image: &std::path::Path) -> ExitCode {
    use monarch_boot::signing::{self, SigningError};
    let keys = match trust.iter().map(|f| signing::read_public_key(f)).collect::<Result<Vec<_>, _>>() {
        Ok(k) => k,
        Err(e) => return bad_input(&e),
    };
    match signing::verify_file(&keys, image) {
        Ok(id) => {
            println!("{}: signed by trusted key {id}", image.display());
            ExitCode::SUCCESS
        }
        Err(
            e @ (SigningError::Unsigned { .. } | SigningError::Refused { .. } | SigningError::Format { .. }),
        ) => {
            eprintln!("monarch: {e}");
            ExitCode::from(exit::BOOT_FAILED)
        }
        Err(e) => bad_input(&e),
    }
}

fn cmd_image_build(size: &str, banner: &str, out: &PathBuf) -> ExitCode {
    let size = match size.parse::<bytesize::ByteSize>() {
        Ok(s) => s.as_u64(),
        Err(_) => return bad_input(&format!("--size {size:?} is not a size; write e.g. 30MiB")),
    };
    let program = monarch_boot::image::payload_program();
    match monarch_boot::image::build_payload(&program, size, banner) {
        Ok(bytes) => match std::fs::write(out, &bytes) {
            Ok(()) => {
                println!("{}: {} bytes, banner {banner:?}", out.display(), bytes.len());
                ExitCode::SUCCESS
            }
            Err(e) => bad_input(&format!("cannot write {}: {e}", out.display())),
        },
        Err(e) => bad_input(&e),
    }
}

fn cmd_vm_prepare(a: VmPrepareArgs) -> ExitCode {
    let opts = monarch_boot::vm::artifacts::PrepareOptions {
        dir: a.dir.unwrap_or_else(monarch_boot::vm::artifacts::default_dir),
        agent: a.agent,
        force: a.force,
    };
    let mut progress = |m: &str| eprintln!("vm prepare: {m}");
    match monarch_boot::vm::artifacts::prepare(&opts, &mut progress) {
        Ok(p) if a.json => {
            println!("{}", serde_json::to_string(&p).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(p) => {
            let art = monarch_boot::vm::artifacts::Artifacts::at(&opts.dir);
            println!("VM artifacts in {}:", opts.dir.display());
            println!("  kernel   {} ({}, {} bytes)", art.kernel.display(), p.kernel_package, p.kernel_bytes);
            println!(
                "  stage 1  {} ({} bytes; /init = {})",
                art.initrd.display(),
                p.initrd_bytes,
                p.agent.display()
            );
            println!(
                "  payload  {} ({} bytes; UKI, image = \"vm:payload\")",
                art.bundle.display(),
                p.bundle_bytes
            );
            if !p.cached.is_empty() {
                println!("  reused from the cache: {}", p.cached.join(", "));
            }
            println!("next: monarch up --topology examples/qemu-chassis.toml");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("monarch vm prepare: {e}");
            ExitCode::from(exit::BOOT_FAILED)
        }
    }
}

/// The monarch binary itself, which agents are started with.
fn own_exe() -> Result<PathBuf, ExitCode> {
    std::env::current_exe()
        .map_err(|e| bad_input(&format!("cannot find my own executable to start agents: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The monarch writes the command lines of the processes it starts with the same types
    //! this parser reads them into: what it writes must parse back into an equal value.
    use super::*;
    use monarch_boot::cmdline::NetbootAgentArgs;
    use monarch_boot::handoff::Handoff;
    use std::ffi::OsString;

    fn parse(args: Vec<OsString>) -> Cmd {
        let mut argv = vec![OsString::from("monarch")];
        argv.extend(args);
        match Cli::try_parse_from(&argv) {
            Ok(c) => c.cmd,
            Err(e) => panic!("{argv:?} does not parse: {e}"),
        }
    }

    #[test]
    fn the_agent_command_line_the_monarch_writes_parses_back() {
        for (handoff, poll, epoch) in [(Handoff::Exec, false, Some(3)), (Handoff::Kexec, true, None)] {
            let a = AgentArgs {
                window: "/dev/shm/a b,c.win".into(),
                id: "lc-1".into(),
                handoff,
                timeout: Duration::from_millis(1500),
                poll,
                epoch,
                trust: monarch_boot::signing::TrustArgs {
                    trust: if poll { vec![] } else { vec!["/k/ops 1.pub".into(), "old.pub".into()] },
                    signature: epoch.map(|_| monarch_boot::signing::SignaturePolicy::Optional),
                },
            };
            let Cmd::Agent(back) = parse(a.to_args()) else { panic!("not `agent`") };
            assert_eq!(back, a);
        }
    }

    #[test]
    fn the_candidate_command_line_the_monarch_writes_parses_back() {
        for (topology, backplane, monarch) in [
            (None, Some(PathBuf::from("/run/m/backplane.bp")), None),
            (Some("c.toml".into()), None, Some("mgmt1")),
        ] {
            let a = CandidateArgs {
                topo: TopologyOpt { topology },
                index: 1,
                backplane,
                session: "1765000000000000000".into(),
                monarch: monarch.map(String::from),
                run_dir: "/tmp/monarch-run".into(),
                t0_unix_ns: 1_765_000_000_123_456_789,
                shutdown_grace: Duration::from_secs(3),
                hold_state_dir: monarch.map(|_| PathBuf::from("/var/lib/monarch/c")),
                hold_deadline: Duration::from_secs(10),
                hold_metrics: monarch.map(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 9100))),
                hold_redfish: monarch.map(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 8443))),
                hold_redfish_users: monarch.map(|_| PathBuf::from("/etc/monarch/users")),
                hold_redfish_certificate: monarch.map(|_| PathBuf::from("/etc/monarch/cert.pem")),
                hold_redfish_key: monarch.map(|_| PathBuf::from("/etc/monarch/key.pem")),
            };
            let Cmd::Candidate(back) = parse(a.to_args()) else { panic!("not `candidate`") };
            assert_eq!(back, a);
        }
    }

    #[test]
    fn the_netboot_agent_command_line_the_monarch_writes_parses_back() {
        for (disk, disk_size, json) in
            [(None, None, false), (Some(PathBuf::from("d.img")), Some(64 << 20), true)]
        {
            let a = NetbootAgentArgs {
                server: "127.0.0.1:40123".parse().unwrap(),
                interface: None,
                mac: Some("52:54:00:12:34:56".into()),
                wait: Duration::from_secs(10),
                interval: Duration::from_millis(250),
                disk,
                disk_size,
                max_size: 30 << 20,
                handoff: Handoff::None,
                json,
                trust: monarch_boot::signing::TrustArgs {
                    trust: vec!["ops.pub".into()],
                    signature: json.then_some(monarch_boot::signing::SignaturePolicy::Required),
                },
            };
            let Cmd::Netboot(netboot_cli::NetbootCmd::Agent(back)) = parse(a.to_args()) else {
                panic!("not `netboot agent`")
            };
            assert_eq!(back, a);
        }
    }

    #[test]
    fn the_core_command_line_the_monarch_writes_parses_back() {
        for (policy, killed, monarch_core) in [
            (monarch_proto::barrier::Policy::Exclude, vec![], false),
            (monarch_proto::barrier::Policy::Abort, vec![1, 3], true),
        ] {
            let a = CoreArgs {
                run_dir: "/tmp/monarch run".into(),
                cluster: 2,
                lid: 3,
                arch_base: 0x10_0000,
                arch_max: 0x1_0000,
                barrier_timeout: Duration::from_millis(1500),
                barrier_policy: policy,
                killed_before_barrier: killed,
                netboot: None,
                t0_unix_ns: 1_765_000_000_000_000_000,
                monarch_core,
                kernel: monarch_core.then(|| "/proc/1/fd/3".into()),
            };
            let Cmd::Core(back) = parse(a.to_args()) else { panic!("not `core`") };
            assert_eq!(back, a);
        }
    }
}
