//! The event stream every front end reads, and the run summary.
//!
//! `monarch up --json` prints each [`Event`] as one JSON object per line; the last line is
//! the [`Summary`]. Field names are part of the CLI contract (see docs/cli.md).

use crate::values::fmt_size;
use serde::{Deserialize, Serialize};

/// One event, stamped with milliseconds since the run started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since `monarch up` started.
    pub t_ms: f64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The run starts.
    Start {
        /// Chassis name.
        chassis: String,
        /// The monarch.
        monarch: String,
        /// Number of secondaries.
        secondaries: usize,
    },
    /// An image was retrieved and its checksum computed.
    Retrieved {
        /// Secondary.
        id: String,
        /// Where from.
        image: String,
        /// Size in bytes.
        bytes: u64,
        /// Checksum algorithm.
        algo: String,
        /// Retrieved checksum (hex).
        checksum: String,
    },
    /// A secondary entered a phase of the handshake.
    Phase {
        /// Secondary.
        id: String,
        /// `configuring`, `launching`, `rendezvous`, `copying`, `verifying`, `handoff`.
        phase: String,
        /// Attempt (0 before the first copy).
        attempt: u32,
    },
    /// An agent process (or, for a VM, QEMU) was started.
    Launched {
        /// Secondary.
        id: String,
        /// Its pid.
        pid: u32,
        /// For a VM: the file its serial console goes to.
        #[serde(skip_serializing_if = "Option::is_none")]
        console: Option<String>,
    },
    /// An attempt's copy is complete.
    Copied {
        /// Secondary.
        id: String,
        /// Attempt.
        attempt: u32,
        /// Bytes copied.
        bytes: u64,
        /// Copy time.
        ms: f64,
    },
    /// A chunk failed its digest at the secondary and was re-sent alone.
    Repaired {
        /// Secondary.
        id: String,
        /// Attempt.
        attempt: u32,
        /// Chunk index (0-based).
        chunk: u64,
        /// Bytes re-sent.
        bytes: u64,
    },
    /// The written checksum of an attempt did not match; a rewrite follows if attempts remain.
    Mismatch {
        /// Secondary.
        id: String,
        /// Attempt.
        attempt: u32,
        /// Written checksum (hex).
        written: String,
        /// Retrieved checksum (hex).
        expected: String,
    },
    /// A secondary reached its final state.
    Done {
        /// Secondary.
        id: String,
        /// `running`, `released` or `failed`.
        state: String,
        /// Attempts used.
        attempts: u32,
        /// Bytes copied over all attempts.
        bytes: u64,
        /// Time from its first step to its final state.
        ms: f64,
        /// What the running image reported.
        #[serde(skip_serializing_if = "Option::is_none")]
        report: Option<String>,
        /// Why it failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A management processor published itself on the backplane.
    Candidate {
        /// Its id.
        id: String,
        /// Its slot.
        slot: u32,
        /// Its BOOT_ID.
        boot_id: u32,
        /// `healthy` or `failed self-test`.
        health: String,
        /// Its process id.
        pid: u32,
    },
    /// A candidate became monarch.
    Elected {
        /// The new monarch.
        monarch: String,
        /// Its epoch (1 for the first monarch, +1 for every failover).
        epoch: u32,
        /// Why it won.
        reason: String,
    },
    /// Serfs saw the monarch's heartbeat stall, or its process die, and deposed it.
    Stalled {
        /// The deposed monarch.
        monarch: String,
        /// Its epoch.
        epoch: u32,
        /// The serf that noticed.
        by: String,
        /// Time since the last heartbeat it saw move.
        silent_ms: f64,
        /// Its process is gone (the kernel said so), rather than silent.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dead: bool,
    },
    /// A new monarch took over the boot.
    Failover {
        /// The deposed monarch.
        from: String,
        /// The new one.
        to: String,
        /// The new epoch.
        epoch: u32,
        /// Why the new one won.
        reason: String,
        /// From the last heartbeat seen to the takeover: the new epoch claimed on the
        /// backplane and in every secondary's window.
        ms: f64,
    },
    /// A monarch found it was deposed (it had been paused, or lost etcd) and stopped acting.
    StoodDown {
        /// Its id.
        id: String,
        /// Its (old) epoch.
        epoch: u32,
        /// What it found.
        why: String,
        /// Secondaries it was staging when it stopped: its last command to each (ABORT, at
        /// its old epoch) is ignored by them.
        #[serde(default)]
        aborted: Vec<String>,
    },
    /// The monarch finished the boot and marked it done (on the backplane, or in etcd): the
    /// chassis' result is its summary.
    Finished {
        /// The monarch.
        id: String,
        /// Its epoch.
        epoch: u32,
        /// Every required secondary booted.
        ok: bool,
    },
    /// A candidate gave the boot up (etcd out of reach for too long, no candidate able to
    /// be monarch): the chassis reports why.
    GaveUp {
        /// The candidate.
        id: String,
        /// Why, with the fix where there is one.
        why: String,
    },
    /// A main-domain secondary waits for main power (it stays off until then).
    PoweredOff {
        /// Secondary.
        id: String,
    },
    /// A secondary is held at its rendezvous until its dependencies are ready (its agent sees
    /// configuration retry).
    Held {
        /// Secondary.
        id: String,
        /// The dependencies it waits for.
        waiting_for: Vec<String>,
    },
    /// A secondary's dependencies let it go: RELEASE follows.
    Released {
        /// Secondary.
        id: String,
        /// Wanted dependencies it goes on without (degraded).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        without: Vec<String>,
    },
    /// A running image said its services are up.
    Ready {
        /// Secondary.
        id: String,
    },
    /// A power domain was switched.
    Power {
        /// `aux` or `main`.
        domain: String,
        /// On or off.
        on: bool,
        /// Why (`auto: the aux domain is up`, `operator`, `the chassis shuts down`, `the
        /// chassis shut down`).
        why: String,
    },
    /// The chassis is supervised: where its control socket and state are.
    Supervising {
        /// Chassis name.
        chassis: String,
        /// The control socket (`monarch status`, `reboot`, …).
        socket: String,
        /// Where reboot causes are kept.
        state_dir: String,
        /// Where Prometheus metrics are served (`http://ADDR/metrics`), if they are.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metrics: Option<String>,
        /// Where the Redfish service answers (`https://ADDR/redfish/v1/`), if it does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        redfish: Option<String>,
    },
    /// A barrier of the phased boot was decided: released (with whoever was left out for
    /// missing it) or aborted.
    Barrier {
        /// Which: `heads` (one core per cluster), `cluster N` (a cluster's cores) or `final`.
        barrier: String,
        /// `released` or `aborted`.
        outcome: String,
        /// Who arrived.
        arrived: usize,
        /// Who did not, in time (left out, or the reason for the abort).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        missing: Vec<String>,
    },
    /// Hardware the phased boot goes on without: a core, a memory bank or a whole cluster
    /// that failed its self-test (in no boot info), or a core left out for missing a barrier.
    LeftOut {
        /// What: `c1-2` (a core), `bank 0 of cluster 1`, `cluster 3`.
        what: String,
        /// Why, for a person.
        why: String,
    },
    /// A head of a cluster booted over the network sent its kernel to one of its cores.
    Served {
        /// The head.
        id: String,
        /// The core's address.
        to: String,
        /// Bytes sent.
        bytes: u64,
        /// From the download request to the last byte.
        ms: f64,
    },
    /// A running secondary was lost; the reboot cause is recorded.
    Lost {
        /// Secondary.
        id: String,
        /// The reboot cause.
        cause: String,
    },
    /// A secondary is restarted after a crash (its image delivered and verified again).
    Restarting {
        /// Secondary.
        id: String,
        /// Restarts within its restart window, this one included.
        restart: u32,
        /// Back-off before the restart.
        after_ms: f64,
    },
    /// A secondary went down for good: failed (recovery off, or its restart limit hit), or
    /// shut down by the operator.
    Down {
        /// Secondary.
        id: String,
        /// `failed`, `shut_down` (the operator's shutdown) or `off` (main power off).
        state: String,
        /// Why.
        why: String,
    },
    /// The supervisor posted a notice into a secondary's window.
    Notice {
        /// Secondary.
        id: String,
        /// `shutdown`, `reboot`, `peer-reboot`, `dependency-lost`, `dependency-restored`,
        /// `dependency-leaving`.
        notice: String,
        /// Which processor it concerns, and why.
        about: String,
        /// How long it may take to answer (0: forced, not awaited).
        deadline_ms: u64,
    },
    /// A secondary answered a notice.
    Answer {
        /// Secondary.
        id: String,
        /// The notice answered.
        notice: String,
        /// `ack` or `defer`.
        answer: String,
        /// A deferral's reason.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A notice's deadline passed while it was deferred or unanswered, or the operator
    /// forced the operation: the supervisor goes on.
    Overridden {
        /// Secondary.
        id: String,
        /// The notice.
        notice: String,
        /// Why (`deadline`, `force`).
        why: String,
    },
    /// A secondary's host network interface was set administratively up or down.
    Port {
        /// Secondary that owns it.
        id: String,
        /// Interface name.
        port: String,
        /// Up or down.
        up: bool,
    },
    /// An operator's request through the control socket.
    Request {
        /// What (`reboot dpu0`, `shutdown`, `power on`, …).
        what: String,
    },
    /// The final line.
    Summary(Summary),
}

impl EventKind {
    /// The secondary an event is about.
    pub fn id(&self) -> Option<&str> {
        match self {
            EventKind::Retrieved { id, .. }
            | EventKind::Phase { id, .. }
            | EventKind::Launched { id, .. }
            | EventKind::Copied { id, .. }
            | EventKind::Served { id, .. }
            | EventKind::Mismatch { id, .. }
            | EventKind::Repaired { id, .. }
            | EventKind::Done { id, .. }
            | EventKind::PoweredOff { id }
            | EventKind::Held { id, .. }
            | EventKind::Released { id, .. }
            | EventKind::Ready { id }
            | EventKind::Lost { id, .. }
            | EventKind::Restarting { id, .. }
            | EventKind::Down { id, .. }
            | EventKind::Notice { id, .. }
            | EventKind::Answer { id, .. }
            | EventKind::Overridden { id, .. }
            | EventKind::Port { id, .. } => Some(id),
            EventKind::Start { .. }
            | EventKind::Candidate { .. }
            | EventKind::Elected { .. }
            | EventKind::Stalled { .. }
            | EventKind::Failover { .. }
            | EventKind::StoodDown { .. }
            | EventKind::Finished { .. }
            | EventKind::GaveUp { .. }
            | EventKind::Power { .. }
            | EventKind::Supervising { .. }
            | EventKind::Barrier { .. }
            | EventKind::LeftOut { .. }
            | EventKind::Request { .. }
            | EventKind::Summary(_) => None,
        }
    }

    /// The event as a line for a person (`monarch up`'s progress, Redfish log entries).
    pub fn describe(&self) -> String {
        match self {
            EventKind::Start { chassis, monarch, secondaries } => {
                format!("monarch {monarch} boots chassis \"{chassis}\": {secondaries} secondaries")
            }
            EventKind::Retrieved { image, bytes, algo, checksum, .. } => {
                format!("retrieved {image}: {} {algo} {checksum}", fmt_size(*bytes))
            }
            EventKind::Phase { phase, attempt, .. } if *attempt > 0 => format!("{phase}, attempt {attempt}"),
            EventKind::Phase { phase, .. } => phase.clone(),
            EventKind::Launched { pid, console: None, .. } => format!("agent started, pid {pid}"),
            EventKind::Launched { pid, console: Some(c), .. } => {
                format!("VM started, qemu pid {pid}, console {c}")
            }
            EventKind::Copied { attempt, bytes, ms, .. } => {
                format!(
                    "copied attempt {attempt}: {} in {ms:.1} ms ({:.0} MiB/s)",
                    fmt_size(*bytes),
                    mib_s(*bytes, *ms)
                )
            }
            EventKind::Repaired { attempt, chunk, bytes, .. } => {
                format!(
                    "chunk {chunk} failed its digest in attempt {attempt}: re-sent it alone ({})",
                    fmt_size(*bytes)
                )
            }
            EventKind::Mismatch { attempt, written, expected, .. } => {
                format!("CHECKSUM MISMATCH on attempt {attempt}: written {written}, retrieved {expected}")
            }
            EventKind::Done { state, attempts, ms, report, error, .. } => match (error, report) {
                (Some(e), _) => {
                    format!("{} after {attempts} attempt(s), {ms:.1} ms: {e}", state.to_uppercase())
                }
                (None, Some(r)) => {
                    format!("{} after {attempts} attempt(s), {ms:.1} ms: \"{r}\"", state.to_uppercase())
                }
                (None, None) => format!("{} after {attempts} attempt(s), {ms:.1} ms", state.to_uppercase()),
            },
            EventKind::Candidate { id, slot, boot_id, health, pid } => {
                format!("candidate {id} (slot {slot}, BOOT_ID {boot_id}, pid {pid}): {health}")
            }
            EventKind::Elected { monarch, epoch, reason } => {
                format!("{monarch} is monarch (epoch {epoch}): {reason}")
            }
            EventKind::Stalled { monarch, epoch, by, silent_ms, dead: false } => {
                format!("monarch {monarch} (epoch {epoch}) silent for {silent_ms:.0} ms: {by} deposes it")
            }
            EventKind::Stalled { monarch, epoch, by, silent_ms, dead: true } => format!(
                "monarch {monarch} (epoch {epoch}) died ({silent_ms:.0} ms after its last heartbeat): {by} deposes it"
            ),
            EventKind::Failover { from, to, epoch, reason, ms } => {
                format!(
                    "FAILOVER: {to} takes over from {from} (epoch {epoch}, {ms:.0} ms after it was last seen alive): {reason}"
                )
            }
            EventKind::StoodDown { id, epoch, why, aborted } if aborted.is_empty() => {
                format!("{id} (epoch {epoch}) stands down: {why}")
            }
            EventKind::StoodDown { id, epoch, why, aborted } => format!(
                "{id} (epoch {epoch}) stands down: {why}; its last commands (ABORT at epoch {epoch}) to {} are ignored by them",
                aborted.join(", ")
            ),
            EventKind::Finished { id, epoch, ok: true } => format!("{id} (epoch {epoch}) finished the boot"),
            EventKind::Finished { id, epoch, ok: false } => {
                format!("{id} (epoch {epoch}) finished the boot, with failed secondaries")
            }
            EventKind::GaveUp { id, why } => format!("{id} gives up: {why}"),
            EventKind::PoweredOff { .. } => "off: waits for main power".into(),
            EventKind::Held { waiting_for, .. } => {
                format!("held at its rendezvous (configuration retry): waits for {}", waiting_for.join(", "))
            }
            EventKind::Released { without, .. } if without.is_empty() => "released".into(),
            EventKind::Released { without, .. } => {
                format!("released DEGRADED: goes on without {} (not ready in time)", without.join(", "))
            }
            EventKind::Ready { .. } => "ready: its services are up".into(),
            EventKind::Power { domain, on, why } => {
                format!("{domain} power {} ({why})", if *on { "ON" } else { "OFF" })
            }
            EventKind::Supervising { chassis, socket, state_dir, metrics, redfish } => {
                let mut line = format!(
                    "supervising chassis \"{chassis}\": `monarch status` (control socket {socket}); reboot causes in {state_dir}"
                );
                if let Some(m) = metrics {
                    line.push_str(&format!("; metrics at http://{m}/metrics"));
                }
                if let Some(r) = redfish {
                    line.push_str(&format!("; Redfish at https://{r}/redfish/v1/"));
                }
                line
            }
            EventKind::Barrier { barrier, outcome, arrived, missing } if missing.is_empty() => {
                format!("{barrier} barrier {outcome}: all {arrived} arrived")
            }
            EventKind::Barrier { barrier, outcome, arrived, missing } => {
                format!("{barrier} barrier {outcome}: {arrived} arrived, {} missed it", missing.join(", "))
            }
            EventKind::LeftOut { what, why } => format!("{what} left out of the boot: {why}"),
            EventKind::Served { to, bytes, ms, .. } => {
                format!("served its kernel to {to}: {} in {ms:.1} ms", fmt_size(*bytes))
            }
            EventKind::Lost { cause, .. } => format!("LOST: {cause}"),
            EventKind::Restarting { restart, after_ms, .. } => {
                format!(
                    "restarting (restart {restart}) in {after_ms:.0} ms: its image is delivered and verified again"
                )
            }
            EventKind::Down { state, why, .. } => format!("{}: {why}", state.to_uppercase()),
            EventKind::Notice { notice, about, deadline_ms: 0, .. } => format!("told {notice}: {about}"),
            EventKind::Notice { notice, about, deadline_ms, .. } => {
                format!("told {notice}: {about} (answer within {deadline_ms} ms)")
            }
            EventKind::Answer { answer, reason: Some(r), notice, .. } => {
                format!("{answer}s the {notice}: {r}")
            }
            EventKind::Answer { answer, notice, .. } => format!("{answer}: {notice}"),
            EventKind::Overridden { notice, why, .. } => format!("{notice}: going on ({why})"),
            EventKind::Port { port, up, .. } => format!("port {port} {}", if *up { "up" } else { "down" }),
            EventKind::Request { what } => format!("operator: {what}"),
            EventKind::Summary(_) => String::new(),
        }
    }
}

fn mib_s(bytes: u64, ms: f64) -> f64 {
    if ms <= 0.0 { 0.0 } else { bytes as f64 / (1 << 20) as f64 / (ms / 1e3) }
}

/// Per-phase times of one secondary, in milliseconds (0 where a phase did not happen).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    /// Retrieving the image and computing its checksum.
    pub retrieve: f64,
    /// Creating and configuring the window.
    pub configure: f64,
    /// Release (and agent start) to READY.
    pub rendezvous: f64,
    /// Copying, all attempts.
    pub copy: f64,
    /// STAGED to written checksum, all attempts.
    pub verify: f64,
    /// OK to RUNNING (or HANDING_OFF for handoff `none`).
    pub handoff: f64,
    /// Waiting behind other secondaries on the same switch.
    pub queued: f64,
    /// First step to final state (without `queued`).
    pub total: f64,
}

/// Final state of one processor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessorSummary {
    /// Processor id.
    pub id: String,
    /// `monarch` or `secondary`.
    pub role: String,
    /// `running`, `released`, `failed`, `shut_down` (a supervised chassis the operator shut
    /// down) (secondaries); `monarch` for the monarch.
    pub state: String,
    /// `direct` or `switch` (secondaries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The switch, when behind one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch: Option<String>,
    /// Copies made.
    pub attempts: u32,
    /// Bytes copied over all attempts.
    pub bytes: u64,
    /// Image size.
    pub image_bytes: u64,
    /// `push`, `pull` or `netboot`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Checksum algorithm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algo: Option<String>,
    /// Retrieved checksum (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Phase timings.
    pub timings_ms: Timings,
    /// Text the running image reported through the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether `monarch up` fails when this one does.
    pub required: bool,
    /// Push: chunks re-sent alone after failing their digest.
    pub repairs: u64,
    /// Push: bytes re-sent by those repairs (included in `bytes`).
    pub bytes_resent: u64,
    /// After a failover: what the new monarch found and did (`left running`, `adopted
    /// verified attempt N (not staged again)`, `restarted …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<String>,
    /// Commands this secondary ignored because they came from a deposed monarch (older
    /// epoch), as its window counted them (`status.fenced`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fenced: u64,
    /// This monarch was deposed while staging it and still posted its stopping ABORT (at
    /// its old epoch) into the window: the secondary must have ignored it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late_command: bool,
    /// Wanted dependencies it was released without (it runs degraded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub without: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ProcessorSummary {
    /// A summary with only identity and state; the rest empty.
    pub fn new(id: &str, role: &str, state: &str) -> ProcessorSummary {
        ProcessorSummary {
            id: id.into(),
            role: role.into(),
            state: state.into(),
            path: None,
            switch: None,
            attempts: 0,
            bytes: 0,
            image_bytes: 0,
            mode: None,
            algo: None,
            checksum: None,
            timings_ms: Timings::default(),
            report: None,
            error: None,
            required: true,
            repairs: 0,
            bytes_resent: 0,
            resumed: None,
            fenced: 0,
            late_command: false,
            without: Vec::new(),
        }
    }
}

/// The run's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// True when every required secondary booted.
    pub ok: bool,
    /// Chassis name.
    pub chassis: String,
    /// Wall time of the boot.
    pub total_ms: f64,
    /// Every processor, the monarch first.
    pub processors: Vec<ProcessorSummary>,
    /// With two or more management processors: who won, why, and every failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election: Option<ElectionSummary>,
    /// Why the boot as a whole did not finish (no monarch could finish it), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The election of a run with several management processors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ElectionSummary {
    /// The monarch that finished the boot.
    pub monarch: String,
    /// Its epoch.
    pub epoch: u32,
    /// Why it won (its last election).
    pub reason: String,
    /// Every failover, in order.
    pub failovers: Vec<FailoverSummary>,
}

/// One failover.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverSummary {
    /// The deposed monarch.
    pub from: String,
    /// The new one.
    pub to: String,
    /// The new epoch.
    pub epoch: u32,
    /// When the new monarch claimed, since the run started.
    pub t_ms: f64,
    /// From the last heartbeat seen to the claim.
    pub ms: f64,
}
