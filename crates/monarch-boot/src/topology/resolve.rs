//! Resolving a topology: the file parsed against its schema, then each section resolved
//! into the model with its defaults, every problem collected with its line and field.
use super::env::{Environment, Host, ImageFileProblem, WindowFile};
use super::error::{Ctx, Problem, TopologyError};
use super::model::*;
use super::schema::*;
use crate::handoff::Handoff;
use crate::values::fmt_size;
use monarch_proto::{Algo, window::layout, window::msg::Mode, window::stream};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The built-in chassis (a PCIe switch in front of the management processor): a management processor, a route card and four
/// line cards, two on direct ports and two behind one switch.
pub const DEFAULT_TOPOLOGY: &str = include_str!("default-chassis.toml");

/// The smallest data area of at least `data` bytes that makes a PCI BAR: register page +
/// data area, a power of two in all (a VM's window is an ivshmem BAR).
fn bar_data_size(data: u64) -> u64 {
    (data + layout::REGS_SIZE as u64).next_power_of_two() - layout::REGS_SIZE as u64
}

impl Topology {
    /// The built-in default chassis.
    pub fn builtin() -> Result<Topology, TopologyError> {
        Topology::parse(DEFAULT_TOPOLOGY, Path::new("<built-in default chassis>"), Path::new("."))
    }

    /// Read and validate a topology file.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let src = std::fs::read_to_string(path)
            .map_err(|source| TopologyError::Read { path: path.into(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Topology::parse(&src, path, base)
    }

    /// Validate topology text; `path` names it in errors, `base` resolves relative paths.
    /// Files it names are looked up on this machine ([`Host`]).
    pub fn parse(src: &str, path: &Path, base: &Path) -> Result<Topology, TopologyError> {
        Topology::parse_in(src, path, base, &Host)
    }

    /// [`Topology::parse`] on the machine `env` describes.
    pub fn parse_in(
        src: &str,
        path: &Path,
        base: &Path,
        env: &dyn Environment,
    ) -> Result<Topology, TopologyError> {
        let invalid = |problems| TopologyError::Invalid { path: path.into(), problems };
        let mut file: FileDef = match toml::from_str(src) {
            Ok(f) => f,
            Err(e) => {
                let line = e.span().map(|s| src[..s.start.min(src.len())].matches('\n').count() + 1);
                let msg = e.message().to_string();
                let hint = if msg.contains("unknown field") {
                    "; see `monarch topology default` or docs/topology.md for the fields"
                } else if msg.contains("missing field") {
                    "; add it (see `monarch topology default` for an example)"
                } else {
                    ""
                };
                return Err(invalid(vec![Problem {
                    line,
                    field: "syntax".into(),
                    message: format!("{msg}{hint}"),
                }]));
            }
        };
        let mut cx = Ctx { src, problems: Vec::new() };
        let expanded = super::clusters::expand(&mut cx, &mut file);
        let d = &file.defaults;

        let mut switches = Vec::new();
        let mut switch_used: HashMap<String, bool> = HashMap::new();
        for s in &file.switches {
            if switch_used.insert(s.id.get_ref().clone(), false).is_some() {
                cx.push(
                    Some(s.id.span()),
                    format!("switch \"{}\"", s.id.get_ref()),
                    "duplicate switch id; give every [[switch]] its own id",
                );
            }
            switches.push(s.id.get_ref().clone());
        }

        let (run_dir, run_dir_is_temporary) = match &file.chassis.run_dir {
            Some(d) => (base.join(d), false),
            None => (
                PathBuf::from(format!(
                    "/dev/shm/monarch-{}-{}",
                    sanitize(&file.chassis.name),
                    std::process::id()
                )),
                true,
            ),
        };

        if file.chassis.run_dir.is_some() && env.exists(&run_dir) && !env.is_dir(&run_dir) {
            cx.push(None, "chassis.run_dir", format!("{} exists and is not a folder; run_dir is the folder monarch keeps this chassis' windows and logs in: name a folder, or leave run_dir out", run_dir.display()));
        }
        let vm_dir = file.chassis.vm_dir.as_ref().map_or_else(|| env.vm_dir(), |d| base.join(d));
        let vm_art = crate::vm::artifacts::Artifacts::at(&vm_dir);
        let chassis_keys = trust_keys(&mut cx, file.chassis.trust.as_ref(), "chassis.trust", base, env);
        let mut seen_ids: BTreeMap<String, ()> = BTreeMap::new();
        let mut seen_windows: HashMap<PathBuf, String> = HashMap::new();
        let mut seen = super::launch::Seen::default();
        let mut managers = Vec::new();
        let mut secondaries = Vec::new();
        let mut secondary_defs: Vec<&ProcessorDef> = Vec::new();
        let main_power = cx.choice(
            file.chassis.main_power.as_ref(),
            "chassis.main_power",
            "main_power",
            &[
                ("auto", MainPower::Auto, "on once the aux domain is up"),
                ("manual", MainPower::Manual, "main-domain processors wait for `monarch power on`"),
            ],
            MainPower::default(),
        );
        let state_dir = file.chassis.state_dir.as_ref().map(|d| base.join(d));
        let management = management(&mut cx, &file.management, base);
        for p in &file.processors {
            let id = p.id.get_ref().clone();
            let who = format!("processor \"{id}\"");
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                cx.push(
                    Some(p.id.span()),
                    format!("{who}.id"),
                    "ids use letters, digits, '-' and '_' only (they name window files)",
                );
            }
            if seen_ids.insert(id.clone(), ()).is_some() {
                cx.push(
                    Some(p.id.span()),
                    format!("{who}.id"),
                    "duplicate processor id; every [[processor]] needs its own id",
                );
            }
            if p.role != Role::Monarch && p.self_test.is_some() {
                cx.push(p.self_test.as_ref().map(Spanned::span), format!("{who}.self_test"), "only a management processor (role = \"monarch\") runs the election self-test; remove the field");
            }
            if p.role == Role::Monarch {
                managers.push(manager(&mut cx, p, &who, id));
                continue;
            }
            // --- a secondary ---
            let s = merge(&p.settings(), d);
            let path = match &p.switch {
                None => PortPath::Direct,
                Some(sw) => {
                    if let Some(used) = switch_used.get_mut(sw.get_ref()) {
                        *used = true;
                    } else {
                        let known = if switches.is_empty() {
                            "none are defined".to_string()
                        } else {
                            format!("defined: {}", switches.join(", "))
                        };
                        cx.push(Some(sw.span()), format!("{who}.switch"), format!("switch \"{}\" is not defined ({known}); add [[switch]] id = \"{}\" or fix the name; leave `switch` out for a direct port", sw.get_ref(), sw.get_ref()));
                    }
                    PortPath::Switch(sw.get_ref().clone())
                }
            };
            let image = image(&mut cx, p, &who, &id, base, &vm_art, env);
            let image_size = match &image {
                ImageSource::Builtin { size, .. } => Some(*size),
                ImageSource::File(f) => env.image_file(f).ok(),
            };
            let signing = signing(&mut cx, p, &file.chassis, &chassis_keys, &who, &image, (base, env));
            let launch_def = s.launch.unwrap_or(LaunchDef::Process);
            let net = launch_def == LaunchDef::Netboot;
            let vm = launch_def == LaunchDef::Qemu;
            let handoff = s.handoff.unwrap_or(if vm { Handoff::Kexec } else { Handoff::Exec });
            if vm && handoff == Handoff::Exec {
                cx.push(Some(p.id.span()), format!("{who}.handoff"), "a VM hands off with \"kexec\" (a kernel bundle) or \"none\"; \"exec\" runs a program in the monarch's own kernel");
            }
            if handoff == Handoff::Kexec && launch_def == LaunchDef::Process {
                cx.push(Some(p.id.span()), format!("{who}.handoff"), "kexec replaces the running kernel: use it with launch = \"qemu\" (or an external agent on its own machine), never with launch = \"process\"");
            }
            let (wpath, wsize, wspan) = match &p.window {
                Some(w) => {
                    let size =
                        w.get_ref().size.as_ref().and_then(|v| cx.size(v, &format!("{who}.window.size")));
                    (w.get_ref().path.as_ref().map(|x| base.join(x)), size, Some(w.span()))
                }
                None => (None, None, None),
            };
            let memfd = p.window.as_ref().is_some_and(|w| w.get_ref().memfd);
            if vm
                && let (Some(size), Some(span)) = (wsize, &wspan)
                && bar_data_size(size) != size
            {
                let fit = bar_data_size(size);
                cx.push(Some(span.clone()), format!("{who}.window.size"), format!("a VM's window is a PCI BAR, whose size (data area + the 4 KiB register page) is a power of two; use {fit} (or leave window.size out)"));
            }
            if memfd && (launch_def != LaunchDef::Process || wpath.is_some()) {
                cx.push(wspan.clone(), format!("{who}.window.memfd"), "a memfd window is handed to an agent the monarch starts: use it with launch = \"process\" and without window.path");
            }
            let wpath = match wpath {
                Some(p) => p,
                None => {
                    if launch_def == LaunchDef::External {
                        cx.push(wspan.clone().or(Some(p.id.span())), format!("{who}.window.path"), "an external agent needs to be told where the window is: set window = { path = \"/dev/shm/...\" } and start `monarch agent --window` on that path");
                    }
                    run_dir.join(format!("{id}.win"))
                }
            };
            if let Some(other) = seen_windows.insert(wpath.clone(), id.clone()) {
                cx.push(
                    wspan.clone().or(Some(p.id.span())),
                    format!("{who}.window.path"),
                    format!(
                        "window {} is already used by \"{other}\"; every secondary needs its own window",
                        wpath.display()
                    ),
                );
            }
            let mode = match &s.mode {
                None => Mode::Push,
                Some(m) if m.get_ref() == "push" => Mode::Push,
                Some(m) if m.get_ref() == "pull" => Mode::Pull,
                Some(m) => {
                    cx.push(Some(m.span()), format!("{who}.mode"), format!("unknown mode \"{}\"; use \"push\" (the monarch copies) or \"pull\" (the secondary copies)", m.get_ref()));
                    Mode::Push
                }
            };
            let chunk_size = match &s.chunk_size {
                None => defaults::CHUNK_SIZE,
                Some(v) => match cx.size(v, &format!("{who}.chunk_size")) {
                    Some(c) if c >= 4096 && c % 4096 == 0 => c,
                    Some(_) => {
                        cx.push(
                            Some(v.span()),
                            format!("{who}.chunk_size"),
                            "a chunk is a whole number of 4 KiB pages (e.g. \"1MiB\")",
                        );
                        defaults::CHUNK_SIZE
                    }
                    None => defaults::CHUNK_SIZE,
                },
            };
            let data_size = match (wsize, image_size) {
                (Some(0), _) => {
                    cx.push(
                        wspan.clone(),
                        format!("{who}.window.size"),
                        "a window needs a data area; give a size of at least the image size",
                    );
                    0
                }
                (Some(w), Some(img)) if mode == Mode::Pull && img > w => {
                    cx.push(
                        wspan.clone(),
                        format!("{who}.window.size"),
                        format!(
                            "the image is {} but the window's data area is {}; in pull mode the whole image sits in the window: make window.size at least {} (or use mode = \"push\", which streams)",
                            fmt_size(img),
                            fmt_size(w),
                            fmt_size(img)
                        ),
                    );
                    w
                }
                (Some(w), Some(img))
                    if mode == Mode::Push && stream::layout(img, w, chunk_size).is_none() =>
                {
                    let min = stream_window(img, chunk_size.min(img.next_multiple_of(4096)));
                    cx.push(
                        wspan.clone(),
                        format!("{who}.window.size"),
                        format!(
                            "the window's data area ({}) cannot hold the image's manifest and one {} chunk; make window.size at least {}",
                            fmt_size(w),
                            fmt_size(chunk_size),
                            fmt_size(min)
                        ),
                    );
                    w
                }
                (Some(w), _) => w,
                (None, Some(img)) => {
                    let data = match mode {
                        Mode::Pull => img.div_ceil(1 << 20) << 20,
                        Mode::Push => stream_window(img, chunk_size)
                            .next_multiple_of(1 << 20)
                            .max(stream_window(img, chunk_size)),
                    };
                    if vm { bar_data_size(data) } else { data }
                }
                (None, None) => 0,
            };
            let algo = match &s.checksum {
                None => Algo::Crc32c,
                Some(c) => Algo::from_name(c.get_ref()).unwrap_or_else(|| {
                    cx.push(
                        Some(c.span()),
                        format!("{who}.checksum"),
                        format!("unknown checksum \"{}\"; use crc32c, xxh3 or blake3", c.get_ref()),
                    );
                    Algo::Crc32c
                }),
            };
            let attempts = match &s.attempts {
                None => defaults::ATTEMPTS,
                Some(a) if *a.get_ref() == 0 => {
                    cx.push(
                        Some(a.span()),
                        format!("{who}.attempts"),
                        "attempts must be at least 1 (the first copy counts)",
                    );
                    1
                }
                Some(a) => *a.get_ref(),
            };
            let t = s.timeouts.clone().unwrap_or_default();
            // A VM boots a kernel before its agent answers, and again after the handoff.
            let slow = if vm { defaults::VM_SLOWDOWN } else { 1 };
            let timeouts = Timeouts {
                rendezvous: cx.duration(
                    &t.rendezvous,
                    &format!("{who}.timeouts.rendezvous"),
                    defaults::RENDEZVOUS * slow,
                ),
                verify: cx.duration(&t.verify, &format!("{who}.timeouts.verify"), defaults::VERIFY * slow),
                handoff: cx.duration(
                    &t.handoff,
                    &format!("{who}.timeouts.handoff"),
                    defaults::HANDOFF * slow,
                ),
                agent: cx.duration(&t.agent, &format!("{who}.timeouts.agent"), defaults::AGENT * slow),
            };
            let f = p.fault.clone().unwrap_or_default();
            let life = super::lifecycle::resolve(&mut cx, p, &s, &f, &who, net);
            // No window, and one attempt: the agent verifies and a mismatch is a failure.
            let (data_size, attempts) = if net { (0, 1) } else { (data_size, attempts) };
            if f.kill_agent_during_copy && launch_def == LaunchDef::External {
                cx.push(
                    Some(p.id.span()),
                    format!("{who}.fault.kill_agent_during_copy"),
                    "the monarch can only kill agents it launched; use launch = \"process\"",
                );
            }
            if let Some(given) = p.window.as_ref().and_then(|w| w.get_ref().path.as_ref()) {
                let span = wspan.clone().or(Some(p.id.span()));
                match env.window_file(&wpath, data_size) {
                    WindowFile::Absent | WindowFile::Window => {}
                    WindowFile::FolderMissing => cx.push(span, format!("{who}.window.path"), format!("the folder of {} does not exist; monarch creates windows, not folders: create it, or choose a path in an existing folder", wpath.display())),
                    WindowFile::NotAWindow(what) => cx.push(span, format!("{who}.window.path"), format!("{} ({given:?}) is {what}, not a monarch window; monarch will not overwrite it: choose another path, or remove it yourself", wpath.display())),
                }
            }
            let launch = super::launch::resolve(
                &mut cx,
                &super::launch::Given {
                    def: launch_def,
                    p,
                    fault: &f,
                    who: &who,
                    id: &id,
                    base,
                    image_size,
                    handoff,
                    memfd,
                    vm_art: &vm_art,
                    env,
                },
                &mut seen,
            );
            secondaries.push(Secondary {
                id,
                slot: p.slot,
                boot_id: p.boot_id,
                path,
                priority: p.priority.unwrap_or(0),
                image,
                window: WindowSpec { path: wpath, data_size },
                launch,
                handoff,
                mode,
                algo,
                attempts,
                timeouts,
                required: s.required.unwrap_or(true),
                faults: Faults {
                    corrupt_attempts: f.corrupt_attempts,
                    kill_agent_during_copy: f.kill_agent_during_copy,
                    corrupt_chunks: f.corrupt_chunks.clone(),
                    tamper_image: f.tamper_image,
                    never_ready: f.never_ready.as_ref().is_some_and(|v| *v.get_ref()),
                    defer_notices: f.defer_notices.as_ref().map(|v| v.get_ref().clone()),
                },
                chunk_size,
                signing,
                life,
            });
            secondary_defs.push(p);
        }
        if managers.is_empty() {
            cx.push(
                None,
                "processor",
                "no processor has role = \"monarch\"; add the management processor that runs `monarch up`",
            );
        }
        if secondaries.is_empty() {
            cx.push(None, "processor", "no processor has role = \"secondary\"; there is nothing to boot");
        }
        for s in &file.switches {
            if switch_used.get(s.id.get_ref()) == Some(&false) {
                cx.push(
                    Some(s.id.span()),
                    format!("switch \"{}\"", s.id.get_ref()),
                    "no secondary sits behind this switch; remove it or set switch = \"…\" on a secondary",
                );
            }
        }
        let election = election_spec(&mut cx, &file.election, &managers, &secondaries);
        super::lifecycle::check(&mut cx, &secondary_defs, &secondaries, &managers);
        let mut slots: HashMap<u32, &str> = HashMap::new();
        for (id, slot) in
            managers.iter().map(|m| (&m.id, m.slot)).chain(secondaries.iter().map(|s| (&s.id, s.slot)))
        {
            if let Some(slot) = slot
                && let Some(other) = slots.insert(slot, id)
            {
                let span = file.processors.iter().find(|p| p.id.get_ref() == id).map(|p| p.id.span());
                cx.push(span, format!("processor \"{id}\".slot"), format!("slot {slot} is already taken by \"{other}\"; slots are physical positions, one processor each"));
            }
        }
        let clusters = expanded.map(|(specs, policy, timeout)| {
            let image_size = secondaries.first().map_or(0, |s| match &s.image {
                ImageSource::Builtin { size, .. } => *size,
                ImageSource::File(p) => env.image_file(p).unwrap_or(0),
            });
            super::clusters::zones(&mut cx, file.clusters.as_ref(), specs, policy, timeout, image_size)
        });
        if cx.problems.is_empty() {
            Ok(Topology {
                name: file.chassis.name,
                run_dir,
                run_dir_is_temporary,
                managers,
                election,
                switches,
                secondaries,
                main_power,
                state_dir,
                management,
                clusters,
            })
        } else {
            Err(invalid(cx.problems))
        }
    }
}

/// The `[election]` table, and what failover needs of the secondaries: a new monarch must
/// be able to open every window by its path and tell whether its agent is alive (the agent
/// holds the window's lock), which rules out memfd windows (handed down by one monarch
/// process), VMs (their agent is in another kernel) and network boots (no window).
fn election_spec(
    cx: &mut Ctx<'_>,
    e: &ElectionDef,
    managers: &[Manager],
    secondaries: &[Secondary],
) -> Election {
    let heartbeat = cx.duration(&e.heartbeat, "election.heartbeat", defaults::HEARTBEAT);
    let timeout = cx.duration(&e.timeout, "election.timeout", defaults::FAILOVER);
    let rendezvous = cx.duration(&e.rendezvous, "election.rendezvous", defaults::ELECTION_RENDEZVOUS);
    if timeout < heartbeat * 3 {
        cx.push(e.timeout.as_ref().map(Spanned::span), "election.timeout", format!("the failover timeout ({}) must be at least 3 heartbeats ({}), or a busy monarch is deposed by mistake", humantime::format_duration(timeout), humantime::format_duration(heartbeat * 3)));
    }
    let pinned = e.monarch.as_ref().and_then(|m| {
        let i = managers.iter().position(|x| &x.id == m.get_ref());
        if i.is_none() {
            let known: Vec<&str> = managers.iter().map(|m| m.id.as_str()).collect();
            cx.push(
                Some(m.span()),
                "election.monarch",
                format!(
                    "\"{}\" is not a management processor; use one of: {}",
                    m.get_ref(),
                    known.join(", ")
                ),
            );
        }
        i
    });
    if managers.len() > monarch_proto::election::MAX_CANDIDATES {
        cx.push(
            None,
            "processor",
            format!(
                "{} management processors; a window has command blocks for at most {}",
                managers.len(),
                monarch_proto::election::MAX_CANDIDATES
            ),
        );
    }
    if managers.len() > 1 {
        for s in secondaries {
            if let Some(why) = s.launch.why_no_takeover() {
                cx.push(None, format!("processor \"{}\"", s.id), format!("it {why}, so a new monarch could not take it over; with two or more management processors every secondary needs a window file (launch = \"process\" or \"external\"), or keep one management processor"));
            }
        }
    }
    let backend = match &e.etcd {
        None => {
            for (v, f) in [(&e.ttl, "election.ttl"), (&e.etcd_timeout, "election.etcd_timeout")] {
                if let Some(v) = v {
                    cx.push(
                        Some(v.span()),
                        f,
                        "only an etcd election has it: set election.etcd, or remove the field",
                    );
                }
            }
            ElectionBackend::Backplane
        }
        Some(ep) => {
            let endpoints = match ep.get_ref() {
                EndpointsDef::One(u) => vec![u.clone()],
                EndpointsDef::Many(v) => v.clone(),
            };
            if endpoints.is_empty() || endpoints.iter().any(|u| u.trim().is_empty()) {
                cx.push(
                    Some(ep.span()),
                    "election.etcd",
                    "give etcd's client URLs, e.g. [\"http://10.0.0.1:2379\"]",
                );
            }
            if let Some(bad) = endpoints.iter().find(|u| u.starts_with("https://")) {
                cx.push(
                    Some(ep.span()),
                    "election.etcd",
                    format!("{bad}: TLS is not supported; use an http:// endpoint"),
                );
            }
            if !cfg!(feature = "etcd") {
                cx.push(Some(ep.span()), "election.etcd", "this monarch was built without etcd support: rebuild with `cargo build --release --features etcd` (its build needs `apt-get install protobuf-compiler libprotobuf-dev`)");
            }
            let ttl = cx.duration(&e.ttl, "election.ttl", defaults::ETCD_TTL);
            if ttl < Duration::from_secs(1) {
                cx.push(
                    e.ttl.as_ref().map(Spanned::span),
                    "election.ttl",
                    "etcd leases count whole seconds: use \"2s\" or more",
                );
            }
            let timeout = cx.duration(&e.etcd_timeout, "election.etcd_timeout", defaults::ETCD_TIMEOUT);
            if timeout < ttl {
                cx.push(e.etcd_timeout.as_ref().map(Spanned::span), "election.etcd_timeout", format!("must be at least the lease TTL ({}), or a candidate gives up before a dead monarch's lease can expire", humantime::format_duration(ttl)));
            }
            ElectionBackend::Etcd(EtcdElection { endpoints, ttl, timeout })
        }
    };
    Election { pinned, heartbeat, timeout, rendezvous, backend }
}

/// Data-area size that holds an image's manifest and the whole image as a ring of chunks.
fn stream_window(image: u64, chunk: u64) -> u64 {
    let chunk = chunk.max(4096);
    (image.div_ceil(chunk) * stream::DIGEST_LEN).next_multiple_of(4096) + image.next_multiple_of(chunk)
}

fn merge(p: &SettingsDef, d: &SettingsDef) -> SettingsDef {
    let t = match (&p.timeouts, &d.timeouts) {
        (Some(a), Some(b)) => Some(TimeoutsDef {
            rendezvous: a.rendezvous.clone().or_else(|| b.rendezvous.clone()),
            verify: a.verify.clone().or_else(|| b.verify.clone()),
            handoff: a.handoff.clone().or_else(|| b.handoff.clone()),
            agent: a.agent.clone().or_else(|| b.agent.clone()),
        }),
        (a, b) => a.clone().or_else(|| b.clone()),
    };
    SettingsDef {
        launch: p.launch.or(d.launch),
        handoff: p.handoff.or(d.handoff),
        mode: p.mode.clone().or_else(|| d.mode.clone()),
        checksum: p.checksum.clone().or_else(|| d.checksum.clone()),
        attempts: p.attempts.clone().or_else(|| d.attempts.clone()),
        timeouts: t,
        required: p.required.or(d.required),
        chunk_size: p.chunk_size.clone().or_else(|| d.chunk_size.clone()),
        power: p.power.clone().or_else(|| d.power.clone()),
        wait: p.wait.clone().or_else(|| d.wait.clone()),
        recovery: p.recovery.clone().or_else(|| d.recovery.clone()),
        max_restarts: p.max_restarts.clone().or_else(|| d.max_restarts.clone()),
        restart_window: p.restart_window.clone().or_else(|| d.restart_window.clone()),
        restart_backoff: p.restart_backoff.clone().or_else(|| d.restart_backoff.clone()),
        on_dependency_loss: p.on_dependency_loss.clone().or_else(|| d.on_dependency_loss.clone()),
        heartbeat: p.heartbeat.clone().or_else(|| d.heartbeat.clone()),
        heartbeat_timeout: p.heartbeat_timeout.clone().or_else(|| d.heartbeat_timeout.clone()),
    }
}

/// A chassis name as it appears in file names: its temporary run folder
/// (`/dev/shm/monarch-NAME-PID`, which `monarch status --chassis NAME` looks for) and its
/// default state folder. Every character but ASCII letters, digits and `-` becomes `_`.
pub fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// A management processor's table, resolved: its self-test result, and no field that only
/// a secondary has.
fn manager(cx: &mut Ctx<'_>, p: &ProcessorDef, who: &str, id: String) -> Manager {
    let fails_self_test = match p.self_test.as_ref().map(|t| (t.get_ref().as_str(), t.span())) {
        None | Some(("pass", _)) => false,
        Some(("fail", _)) => true,
        Some((other, span)) => {
            cx.push(
                Some(span),
                format!("{who}.self_test"),
                format!("unknown self_test \"{other}\"; use \"pass\" or \"fail\""),
            );
            false
        }
    };
    for (set, name) in [
        (p.switch.is_some(), "switch"),
        (p.image.is_some(), "image"),
        (p.window.is_some(), "window"),
        (p.fault.is_some(), "fault"),
        (p.mac.is_some(), "mac"),
        (p.disk.is_some(), "disk"),
        (p.disk_size.is_some(), "disk_size"),
        (p.trust.is_some(), "trust"),
        (p.signature.is_some(), "signature"),
        (p.requires.is_some(), "requires"),
        (p.wants.is_some(), "wants"),
        (p.wait.is_some(), "wait"),
        (p.power.is_some(), "power"),
        (p.supervisor.is_some(), "supervisor"),
        (p.ports.is_some(), "ports"),
        (p.recovery.is_some(), "recovery"),
        (p.max_restarts.is_some(), "max_restarts"),
        (p.restart_window.is_some(), "restart_window"),
        (p.restart_backoff.is_some(), "restart_backoff"),
        (p.on_dependency_loss.is_some(), "on_dependency_loss"),
        (p.heartbeat.is_some(), "heartbeat"),
        (p.heartbeat_timeout.is_some(), "heartbeat_timeout"),
        (p.ready_after.is_some(), "ready_after"),
    ] {
        if set {
            cx.push(
                Some(p.id.span()),
                format!("{who}.{name}"),
                format!(
                    "a monarch has no {name}; remove the field or make the processor role = \"secondary\""
                ),
            );
        }
    }
    Manager { id, slot: p.slot, boot_id: p.boot_id, fails_self_test }
}

/// Read the trusted public keys a `trust` list names (relative to the topology file), each
/// problem naming `field` and the file.
fn trust_keys(
    cx: &mut Ctx<'_>,
    list: Option<&Spanned<Vec<String>>>,
    field: &str,
    base: &Path,
    env: &dyn Environment,
) -> Option<(Vec<PathBuf>, Vec<monarch_proto::sign::PublicKey>)> {
    let list = list?;
    let (mut files, mut keys) = (Vec::new(), Vec::new());
    if list.get_ref().is_empty() {
        cx.push(Some(list.span()), field, "an empty trust list trusts nobody; name at least one NAME.pub (from `monarch image keygen -o NAME`), or leave `trust` out");
    }
    for f in list.get_ref() {
        let path = base.join(f);
        match crate::signing::public_key_from(&path, env.read_small(&path, crate::signing::PUB_MAX)) {
            Ok(k) => keys.push(k),
            Err(e) => cx.push(Some(list.span()), field, e.to_string()),
        }
        files.push(path);
    }
    Some((files, keys))
}

/// A secondary's signing: its policy and keys (its own, else the chassis'), and, when it
/// checks signatures, the image's `IMAGE.sig`: there when required, well-formed, by a trusted
/// key, of an image of this length. (The bytes are verified when the image is retrieved.)
fn signing(
    cx: &mut Ctx<'_>,
    p: &ProcessorDef,
    chassis: &ChassisDef,
    chassis_keys: &Option<(Vec<PathBuf>, Vec<monarch_proto::sign::PublicKey>)>,
    who: &str,
    image: &ImageSource,
    (base, env): (&Path, &dyn Environment),
) -> Signing {
    use crate::signing::{SignaturePolicy, Trust};
    let (policy, pspan) = match (&p.signature, &chassis.signature) {
        (Some(s), _) => (*s.get_ref(), Some(s.span())),
        (None, Some(s)) => (*s.get_ref(), Some(p.id.span())),
        (None, None) => (SignaturePolicy::Off, None),
    };
    let own = trust_keys(cx, p.trust.as_ref(), &format!("{who}.trust"), base, env);
    let (key_files, keys) = own.or_else(|| chassis_keys.clone()).unwrap_or_default();
    if policy == SignaturePolicy::Off {
        return Signing::default();
    }
    let field = format!("{who}.signature");
    if key_files.is_empty() {
        cx.push(pspan.clone(), &field, format!("signature = \"{}\" needs trusted keys: add trust = [\"NAME.pub\"] to [chassis] or to this processor (make a key pair with `monarch image keygen -o NAME`)", policy.name()));
    }
    match image {
        ImageSource::Builtin { .. } if policy == SignaturePolicy::Required => cx.push(
            pspan,
            &field,
            "the built-in payload is built at boot and cannot carry a signature; build it into a file (`monarch image build -o F`), sign it (`monarch image sign --key KEY.key F`) and name the file as the image",
        ),
        ImageSource::Builtin { .. } => {}
        ImageSource::File(f) => {
            let sig = crate::signing::sig_path(f);
            match crate::signing::signature_from(&sig, env.read_small(&sig, monarch_proto::sign::SIG_MAX)) {
                Err(e) => cx.push(pspan, format!("{who}.image"), e.to_string()),
                Ok(None) if policy == SignaturePolicy::Required => cx.push(
                    pspan,
                    format!("{who}.image"),
                    format!("signature = \"required\" but {} has no signature ({} does not exist); sign it: `monarch image sign --key KEY.key {}`", f.display(), sig.display(), f.display()),
                ),
                Ok(None) => {}
                Ok(Some((_, s))) => {
                    if !keys.iter().any(|k| k.id() == s.signer) && !keys.is_empty() {
                        let trusted: Vec<String> = keys.iter().map(|k| k.id().to_string()).collect();
                        cx.push(pspan.clone(), format!("{who}.image"), format!("{} is signed by key {}, which this processor does not trust (trusted: {}); sign the image with a trusted key, or add the signer's .pub to `trust`", sig.display(), s.signer, trusted.join(", ")));
                    }
                    if let Ok(len) = env.image_file(f)
                        && len != s.signed.len
                    {
                        cx.push(pspan, format!("{who}.image"), format!("{} is the signature of a {}-byte image, {} has {} bytes: a signature of another image; sign this one: `monarch image sign --key KEY.key {}`", sig.display(), s.signed.len, f.display(), len, f.display()));
                    }
                }
            }
        }
    }
    Signing { trust: Trust { policy, keys }, key_files }
}

/// A secondary's image, resolved: the built-in payload at its size, the prepared VM
/// payload, or a file that must be there and not empty.
fn image(
    cx: &mut Ctx<'_>,
    p: &ProcessorDef,
    who: &str,
    id: &str,
    base: &Path,
    vm_art: &crate::vm::artifacts::Artifacts,
    env: &dyn Environment,
) -> ImageSource {
    match &p.image {
        None => {
            cx.push(
                Some(p.id.span()),
                format!("{who}.image"),
                "a secondary needs an image: a file path, or \"builtin:payload\" for the demo payload",
            );
            ImageSource::Builtin { size: defaults::IMAGE_SIZE, banner: String::new() }
        }
        Some(i) if i.get_ref() == "builtin:payload" => {
            let size = match &p.image_size {
                Some(v) => cx.size(v, &format!("{who}.image_size")).unwrap_or(defaults::IMAGE_SIZE),
                None => defaults::IMAGE_SIZE,
            };
            let banner = p.banner.clone().unwrap_or_else(|| format!("{id} booted the delivered image"));
            if let Some(program) = env.payload_program_len() {
                let need = crate::builtin::payload_len(program, &banner);
                if need > size {
                    let at = p.image_size.as_ref().map_or_else(|| i.span(), toml::Spanned::span);
                    cx.push(
                        Some(at),
                        format!("{who}.image_size"),
                        format!(
                            "the demo payload program is {program} bytes, {need} with its banner and trailer, which does not fit in image_size = {}; use an image_size of at least {}",
                            fmt_size(size),
                            fmt_size(need.div_ceil(1 << 20) << 20)
                        ),
                    );
                }
            }
            ImageSource::Builtin { size, banner }
        }
        Some(i) if i.get_ref() == "vm:payload" => {
            if let Some(e) = vm_art.first_missing(&|f| env.is_file(f)) {
                cx.push(Some(i.span()), format!("{who}.image"), e.to_string());
            }
            ImageSource::File(vm_art.bundle.clone())
        }
        Some(i) if i.get_ref().starts_with("builtin:") => {
            cx.push(
                Some(i.span()),
                format!("{who}.image"),
                format!(
                    "unknown built-in image \"{}\"; the one built-in image is \"builtin:payload\"",
                    i.get_ref()
                ),
            );
            ImageSource::Builtin { size: defaults::IMAGE_SIZE, banner: String::new() }
        }
        Some(i) => {
            if p.image_size.is_some() || p.banner.is_some() {
                cx.push(Some(i.span()), format!("{who}.image_size"), "image_size and banner apply to \"builtin:payload\" only; a file image has the size of the file");
            }
            let f = i.get_ref().strip_prefix("file://").unwrap_or(i.get_ref());
            let f = base.join(f);
            match env.image_file(&f) {
                Ok(_) => {}
                Err(ImageFileProblem::EmptyOrNotRegular) => cx.push(
                    Some(i.span()),
                    format!("{who}.image"),
                    format!("{} is empty or not a regular file", f.display()),
                ),
                Err(ImageFileProblem::Unreadable(e)) => cx.push(
                    Some(i.span()),
                    format!("{who}.image"),
                    format!("cannot read {}: {e}; paths are relative to the topology file", f.display()),
                ),
            }
            ImageSource::File(f)
        }
    }
}

/// The `[management]` table.
fn management(cx: &mut Ctx<'_>, m: &ManagementDef, base: &Path) -> Management {
    let mut addr = |v: &Option<Spanned<String>>, key: &str, example: &str| {
        let v = v.as_ref()?;
        match v.get_ref().parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                cx.push(
                    Some(v.span()),
                    format!("management.{key}"),
                    format!("{:?} is not an address: give IP:PORT, like \"{example}\"", v.get_ref()),
                );
                None
            }
        }
    };
    let redfish = addr(&m.redfish, "redfish", "127.0.0.1:8443");
    let metrics = addr(&m.metrics, "metrics", "127.0.0.1:9464");
    let path = |p: &Option<String>| p.as_ref().map(|p| base.join(p));
    let (certificate, key) = (path(&m.certificate), path(&m.key));
    if certificate.is_some() != key.is_some() {
        let (given, missing) =
            if certificate.is_some() { ("certificate", "key") } else { ("key", "certificate") };
        cx.push(
            None,
            format!("management.{missing}"),
            format!("a {given} is given without its {missing}: give both, or neither (a self-signed certificate is then made at first start)"),
        );
    }
    Management { redfish, users: path(&m.users), certificate, key, metrics }
}
