//! How the monarch starts and watches a secondary's window agent, by launch mode: every
//! decision of staging that depends on how a secondary is started is made here (the window
//! it gets, its doorbell, starting its agent or its VM, telling after a takeover whether the
//! agent still lives, what a dead child means). A secondary with no window (`netboot`) is
//! staged by the network stage instead.
use super::context::{StageCtx, log_tail, spawn_logged};
use crate::topology::{Launch, QemuSpec, Secondary};
use command_fds::{CommandFdExt, FdMapping};
use monarch_drivers::{Doorbell, Window, WindowError};
use monarch_proto::window::layout;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitStatus};
use std::time::Duration;

/// Descriptor number a memfd window gets in the agent (and, after exec, in its image).
const MEMFD_CHILD_FD: i32 = 3;

/// A started agent (or the VM it runs in).
pub(crate) struct Started {
    /// The process: the agent, or QEMU.
    pub(crate) child: Child,
    /// The agent's log (a VM's serial console).
    pub(crate) log: PathBuf,
    /// QEMU's own messages, for a VM.
    pub(crate) qemu_log: Option<PathBuf>,
    /// The serial console to show the user, for a VM.
    pub(crate) console: Option<PathBuf>,
}

/// Make the secondary's window for a staging from scratch: a memfd for the monarch's own
/// agent when asked, else the window file (`keep`: leave its registers as they are, when
/// several monarchs may share it).
pub(crate) fn create_window(sec: &Secondary, keep: bool) -> Result<Window, WindowError> {
    if sec.launch.memfd() {
        Window::create_memfd(&format!("monarch-window:{}", sec.id), sec.window.data_size)
    } else if keep {
        Window::create_keep(&sec.window.path, sec.window.data_size)
    } else {
        Window::create(&sec.window.path, sec.window.data_size)
    }
}

/// The doorbell this launch needs instead of the window's default, if any.
pub(crate) fn doorbell(launch: &Launch) -> Option<Doorbell> {
    match launch {
        // The agent is in another kernel: it cannot futex-wake us, and we cannot wake it.
        Launch::Qemu(_) => Some(Doorbell::Poll { max_sleep: Duration::from_millis(1) }),
        Launch::Process { .. } | Launch::External | Launch::Netboot(_) => None,
    }
}

/// The window is a file a new monarch can claim (not a memfd only its maker holds, and not
/// absent as for a network boot).
pub(crate) fn has_window_file(launch: &Launch) -> bool {
    match launch {
        Launch::Process { memfd } => !memfd,
        Launch::External | Launch::Qemu(_) => true,
        Launch::Netboot(_) => false,
    }
}

/// Whether the monarch starts this secondary's agent (else someone else does, and the agent
/// sees RELEASE by itself).
pub(crate) fn monarch_starts_it(launch: &Launch) -> bool {
    match launch {
        Launch::Process { .. } | Launch::Qemu(_) | Launch::Netboot(_) => true,
        Launch::External => false,
    }
}

/// Release the secondary: start its agent (a process, or a VM whose stage 1 runs it) on
/// `window`. `Ok(None)`: someone else starts it (external), there is nothing to start.
pub(crate) fn start(sec: &Secondary, ctx: &StageCtx<'_>, window: &Window) -> Result<Option<Started>, String> {
    match &sec.launch {
        Launch::Process { memfd } => start_agent(sec, ctx, window, *memfd).map(Some),
        Launch::Qemu(q) => start_vm(sec, ctx, window, q).map(Some),
        Launch::External => Ok(None),
        Launch::Netboot(_) => Err("internal: a netboot secondary has no window agent".into()),
    }
}

/// After a takeover, with its window claimed: does this secondary's agent still live, and is
/// it watched by the window's agent lock (`probe` tells whether someone holds it)?
pub(crate) fn liveness(
    sec: &Secondary,
    probe: &dyn Fn() -> Result<bool, String>,
) -> Result<(bool, bool), String> {
    Ok(match &sec.launch {
        Launch::Process { .. } => {
            let locked = probe()?;
            (locked, locked)
        }
        // The VM's agent cannot lock the host's file: its QEMU tells.
        Launch::Qemu(_) => (crate::vm::qemu::running_qemu(&qemu_pidfile(sec)).is_some(), false),
        // The operator's agent: it answers our RELEASE (or the rendezvous times out and says
        // so); we have nothing to start. On this host it holds the lock, and we watch it by
        // it; across kernels it cannot.
        Launch::External => (true, probe().unwrap_or(false)),
        Launch::Netboot(_) => (false, false),
    })
}

/// What the end of our child means when it is not an agent's exit: a VM that ended.
pub(crate) fn ended(sec: &Secondary, started: Option<&Path>, status: ExitStatus, pid: u32) -> Option<String> {
    match &sec.launch {
        Launch::Qemu(_) => {
            let said = started.and_then(log_tail).map(|t| format!(": {t}")).unwrap_or_default();
            Some(format!("the VM (qemu pid {pid}) ended ({status}){said}"))
        }
        Launch::Process { .. } | Launch::External | Launch::Netboot(_) => None,
    }
}

/// Who wrote the log a failure quotes.
pub(crate) fn log_name(launch: &Launch) -> &'static str {
    match launch {
        Launch::Qemu(_) => "VM console",
        Launch::Process { .. } | Launch::External | Launch::Netboot(_) => "agent",
    }
}

/// Where the QEMU of VM secondary `sec` writes its pid (`-pidfile`): what a new monarch
/// reads to tell whether the VM is still there, and what `vm::qemu::kill_orphans` cleans up.
fn qemu_pidfile(sec: &Secondary) -> PathBuf {
    sec.window.path.with_extension("qemu.pid")
}

/// Where the agent a monarch starts for secondary `sec` (process or network boot) writes its
/// log: a monarch that takes the boot over quotes the agent it found from there.
pub(crate) fn agent_log(sec: &Secondary) -> PathBuf {
    sec.window.path.with_extension("log")
}

fn start_agent(sec: &Secondary, ctx: &StageCtx<'_>, window: &Window, memfd: bool) -> Result<Started, String> {
    let log = agent_log(sec);
    let mut cmd = Process::new(ctx.agent_exe);
    let window_path = if memfd {
        // The child inherits the window as descriptor 3 and opens it by its /proc path.
        let fd =
            window.fd().try_clone_to_owned().map_err(|e| format!("cannot share the memfd window: {e}"))?;
        cmd.fd_mappings(vec![FdMapping { parent_fd: fd, child_fd: MEMFD_CHILD_FD }])
            .map_err(|e| format!("cannot hand the memfd window to the agent: {e}"))?;
        PathBuf::from(format!("/proc/self/fd/{MEMFD_CHILD_FD}"))
    } else {
        sec.window.path.clone()
    };
    // The terminal's Ctrl-C is ours to act on, not the agent's (crate::interrupt).
    monarch_drivers::host::ignore_sigint_in(&mut cmd);
    let args = crate::cmdline::AgentArgs {
        window: window_path,
        id: sec.id.clone(),
        handoff: sec.handoff,
        timeout: sec.timeouts.agent,
        poll: false,
        // Spawning can take long on a loaded host; if we are deposed meanwhile, the agent
        // sees the newer claim and leaves the window to the new monarch's agent.
        epoch: Some(ctx.authority.epoch),
        trust: sec.signing.agent_args(),
    };
    cmd.args(args.to_args());
    // How the demo payload behaves once it runs (it inherits the agent's environment).
    let behaviour = crate::payload::Behaviour {
        ready_after: sec.life.ready_after,
        never_ready: sec.faults.never_ready,
        defer: sec.faults.defer_notices.clone(),
    };
    cmd.envs(behaviour.env());
    crate::logs::inherit(&mut cmd);
    let child = spawn_logged(&mut cmd, &log, "agent log")
        .map_err(|e| format!("cannot start agent {}: {e}", ctx.agent_exe.display()))?;
    Ok(Started { child, log, qemu_log: None, console: None })
}

/// Start the secondary's VM: stage 1 boots, finds the window on its ivshmem BAR and runs
/// the agent; its serial console is the log.
fn start_vm(sec: &Secondary, ctx: &StageCtx<'_>, window: &Window, q: &QemuSpec) -> Result<Started, String> {
    let console = sec.window.path.with_extension("console.log");
    let len = window.data_size() + layout::REGS_SIZE as u64;
    let spec = crate::vm::qemu::VmSpec {
        memory_mib: q.memory_mib,
        accel: q.accel.clone(),
        kernel: q.kernel.clone(),
        initrd: q.initrd.clone(),
        cmdline: crate::vm::qemu::stage1_cmdline(
            &sec.id,
            sec.timeouts.agent,
            ctx.authority.epoch,
            &sec.signing.trust,
        ),
        window: Some((sec.window.path.clone(), len)),
        console: console.clone(),
    };
    let qemu_log = sec.window.path.with_extension("qemu.log");
    let mut cmd = crate::vm::qemu::qemu_command(&spec);
    cmd.arg("-pidfile").arg(qemu_pidfile(sec));
    // Out of the terminal's process group: its Ctrl-C is ours to act on (QEMU would quit on
    // it); the stage and the run folder's pid files stop the VM.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = spawn_logged(&mut cmd, &qemu_log, "QEMU log").map_err(|e| {
        format!("cannot start qemu-system-x86_64 ({e}); run `monarch vm prepare`, which installs QEMU")
    })?;
    Ok(Started { child, log: console.clone(), qemu_log: Some(qemu_log), console: Some(console) })
}
