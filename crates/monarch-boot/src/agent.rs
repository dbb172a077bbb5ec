//! The secondary's side: `monarch agent`. Rendezvous → receive → verify → report → wait for
//! OK → hand off, driving [`monarch_proto::window::secondary::Secondary`] with the real window.
//!
//! The agent trusts nothing in the window: the header is validated against the mapping, the
//! config is bounds-checked, commands are decoded strictly, and the handoff loads only bytes
//! whose checksum it computed itself and the monarch confirmed.

use crate::handoff::Handoff;
use crate::signing::{Trust, Verdict};
use monarch_drivers::memimage::MemImage;
use monarch_drivers::{Doorbell, Poll, Window, WindowError, WindowMemory};
use monarch_proto::Digest;
use monarch_proto::checksum::{Algo, Hasher};
use monarch_proto::sign::{ImageDigest, ImageHasher};
use monarch_proto::window::layout;
use monarch_proto::window::msg::{self, Command, FailCode, Mode, RegisterError, Status, WindowConfig};
use monarch_proto::window::secondary::{
    Admit, Fence, Secondary, SecondaryAction, SecondaryFailure, SecondaryInput,
};
use monarch_proto::window::stream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The window file.
    pub window: PathBuf,
    /// This secondary's id (for messages and the image's name).
    pub id: String,
    /// What to do after OK.
    pub handoff: Handoff,
    /// Longest wait for each step of the monarch (and for the window to appear).
    pub timeout: Duration,
    /// Doorbell kind.
    pub doorbell: Doorbell,
    /// The epoch of the monarch that started this agent (`monarch up` passes it). If the
    /// window has been claimed by a newer monarch by the time the agent holds it, that
    /// monarch was deposed while starting us: leave the window alone
    /// ([`AgentError::Superseded`]). `None` (an agent started by hand): obey whoever
    /// configured the window.
    pub epoch: Option<u32>,
    /// Whether the image must be signed, and by whom (this secondary's own configuration:
    /// the signature comes through the window, the keys never do).
    pub trust: Trust,
}

/// Why the agent stopped without handing off.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The window could not be opened or mapped.
    #[error("{0}")]
    Window(#[from] WindowError),
    /// The window never got a valid header.
    #[error(
        "window {path}: no monarch initialised it within {timeout:?} (register hdr.magic still {found:#x}); start `monarch up` or check the path"
    )]
    NoMonarch {
        /// Window.
        path: PathBuf,
        /// Wait.
        timeout: Duration,
        /// Last magic value.
        found: u64,
    },
    /// The header is invalid.
    #[error("window {path}: {source}")]
    Header {
        /// Window.
        path: PathBuf,
        /// What is wrong.
        source: RegisterError,
    },
    /// Another agent holds the window.
    #[error(
        "window {path}: another agent holds it (a secondary has exactly one agent); stop that agent or use another window"
    )]
    Busy {
        /// Window.
        path: PathBuf,
    },
    /// The monarch that started this agent was deposed before the agent got going: the
    /// window belongs to a newer monarch, which runs (or ran) its own agent.
    #[error(
        "window {path}: started by the monarch of epoch {started_by}, but the window is claimed by epoch {claimed}; this agent leaves it to the newer monarch's agent (nothing to do)"
    )]
    Superseded {
        /// Window.
        path: PathBuf,
        /// The epoch that started this agent.
        started_by: u32,
        /// The epoch that holds the window now.
        claimed: u32,
    },
    /// Another agent already handed this secondary off to its image (it holds the window
    /// no longer, so the lock was free): the image owns the window now.
    #[error(
        "window {path}: this secondary was already handed off to its image (status {status}); a second agent must not touch it"
    )]
    AlreadyHandedOff {
        /// Window.
        path: PathBuf,
        /// The status found.
        status: &'static str,
    },
    /// The handshake failed.
    #[error("secondary {id}: {failure}")]
    Failed {
        /// Id.
        id: String,
        /// What happened.
        failure: SecondaryFailure,
    },
}

/// How long the agent looks for what it awaits before it sleeps on the doorbell: about the
/// time the monarch takes to write one 256 KiB chunk.
const SPIN: Duration = Duration::from_micros(50);

/// Run the agent. Returns `Ok(())` after a handoff `none`; an `exec` handoff does not return.
pub fn run(opts: &AgentOptions) -> Result<(), AgentError> {
    let start = Instant::now();
    // Another process of this user must not reach into the agent's memory through /proc
    // (its private copy of the image, between the signature check and the exec): a process
    // that is not dumpable is not ptrace-attachable, nor are its /proc/PID/fd and mem open to
    // its peers. The image it executes is dumpable again (exec resets it).
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let mut window = open_when_ready(opts, start)?;
    window.set_doorbell(opts.doorbell);
    run_on(opts, window, start)
}

/// Run the agent on a window already open (any [`WindowMemory`] backend: a mapped file, or
/// memory shared with a monarch thread in a test); `start` is when the agent started waiting.
pub fn run_on<W: WindowMemory>(opts: &AgentOptions, window: W, start: Instant) -> Result<(), AgentError> {
    if let Err(source) = msg::decode_header(&|r| window.load(r), window.data_size()) {
        return Err(AgentError::Header { path: opts.window.clone(), source });
    }
    lock(&window, opts, start)?;
    // Read only now that we hold the lock: a new monarch raises cfg.epoch *before* it probes
    // the lock, so either it saw us alive (and kept us), or we see its claim here.
    let claimed = window.load32(layout::CFG_EPOCH);
    if let Some(started_by) = opts.epoch
        && claimed > started_by
    {
        return Err(AgentError::Superseded { path: opts.window.clone(), started_by, claimed });
    }
    if let Some(status) = handed_off(&window) {
        return Err(AgentError::AlreadyHandedOff { path: opts.window.clone(), status });
    }
    // The epoch that configured the window: no older monarch is ever obeyed.
    let fence = Fence::with_floor(claimed.max(opts.epoch.unwrap_or(0)));
    let mut agent = Agent {
        opts,
        window,
        status_seq: 0,
        staged: None,
        held: None,
        fence,
        block_seq: [0; BLOCKS],
        on_hold: false,
    };
    agent.handshake()
}

/// Take the window's lock: one agent per window, and the sign a new monarch reads to know
/// this secondary's agent is alive. A monarch probing the lock holds it for an instant, so
/// retry briefly before calling the window taken.
fn lock(window: &impl WindowMemory, opts: &AgentOptions, start: Instant) -> Result<(), AgentError> {
    loop {
        match window.try_lock() {
            Ok(true) => return Ok(()),
            // A window the kernel cannot lock (a PCI BAR resource file) has no rival agent here.
            Err(_) => return Ok(()),
            Ok(false) if start.elapsed() >= opts.timeout.min(Duration::from_secs(2)) => {
                return Err(AgentError::Busy { path: opts.window.clone() });
            }
            Ok(false) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The status an earlier agent (or the image it handed off to) left, if it says the
/// secondary is past its handshake. A status caught mid-write is read again; one that never
/// settles says nothing (the handshake's own checks deal with it).
fn handed_off(window: &impl WindowMemory) -> Option<&'static str> {
    match window.read_message(layout::ST_SEQ, 0, msg::decode_status) {
        Poll::Message(_, Status::HandingOff { .. }) => Some("HANDING_OFF"),
        Poll::Message(_, Status::Running { .. }) => Some("RUNNING"),
        _ => None,
    }
}

const BLOCKS: usize = layout::CMD_BLOCKS;

/// Exit status of an agent that leaves the window to someone else (EX_TEMPFAIL): another
/// agent holds it, a newer monarch claimed it, or the secondary already runs its image.
pub const EXIT_BUSY: i32 = 75;

/// One new command read from one block.
enum Heard {
    /// From the monarch followed (or the first to speak, or a newer one taking over).
    Command(Admit, Result<Command, RegisterError>),
    /// Ignored: an older epoch, or a block that is not the one followed.
    Fenced { block: usize, epoch: u32 },
    /// Nothing new anywhere.
    Nothing,
}

fn open_when_ready(opts: &AgentOptions, start: Instant) -> Result<Window, AgentError> {
    // The window may not exist yet, or not be initialised yet (an external agent may start
    // before the monarch): wait, bounded.
    let mut last_magic = 0;
    loop {
        match Window::open(&opts.window) {
            Ok(w) => {
                last_magic = w.load(layout::HDR_MAGIC);
                if last_magic == layout::MAGIC {
                    return Ok(w);
                }
                if last_magic != 0 && (0..BLOCKS).any(|k| w.load32(layout::cmd(k).seq) != 0) {
                    // Not zero, not ours, and a command posted: garbage, say so now.
                    return Err(AgentError::Header {
                        path: opts.window.clone(),
                        source: RegisterError::BadMagic { found: last_magic },
                    });
                }
            }
            Err(WindowError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e @ WindowError::TooSmall { .. }) if start.elapsed() >= opts.timeout => return Err(e.into()),
            Err(WindowError::TooSmall { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if start.elapsed() >= opts.timeout {
            if last_magic != 0 {
                return Err(AgentError::Header {
                    path: opts.window.clone(),
                    source: RegisterError::BadMagic { found: last_magic },
                });
            }
            return Err(AgentError::NoMonarch {
                path: opts.window.clone(),
                timeout: opts.timeout,
                found: last_magic,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Agent<'a, W: WindowMemory> {
    opts: &'a AgentOptions,
    window: W,
    status_seq: u32,
    /// Pull mode: the image copied into our own memory during verification.
    staged: Option<MemImage>,
    /// The signed digest of the bytes the last attempt took into our memory (hashed only
    /// when signatures are checked).
    held: Option<ImageDigest>,
    /// Which monarch this secondary obeys (monarch fencing).
    fence: Fence,
    /// Last message taken from each command block.
    block_seq: [u32; BLOCKS],
    /// The monarch held us at the rendezvous (said once in the log).
    on_hold: bool,
}

impl<W: WindowMemory> Agent<'_, W> {
    fn post(&mut self, st: &Status) {
        self.status_seq = msg::next_seq(self.status_seq);
        self.window.post(&msg::encode_status(self.status_seq, self.fence.epoch(), st), layout::DB_TO_PRIMARY);
    }

    /// The next new command in any block, through the fence: the followed monarch's block
    /// first, then the others (a newer epoch takes over; anything else is fenced).
    fn hear(&mut self) -> Heard {
        let first = self.fence.followed().map_or(0, |(b, _)| b);
        for k in (0..BLOCKS).map(|i| (first + i) % BLOCKS) {
            let dec = |r: &dyn Fn(layout::Reg) -> u64| msg::decode_command(k, r);
            let (seq, stamped) = match self.window.read_message(layout::cmd(k).seq, self.block_seq[k], dec) {
                Poll::Nothing => continue,
                Poll::Message(seq, s) => (seq, s),
                // Garbage still comes from some epoch: the block's own register says which,
                // so a deposed monarch's garbage is fenced and the followed one's reported.
                Poll::Garbage(seq, e) => {
                    (seq, msg::Stamped { epoch: self.window.load32(layout::cmd(k).epoch), cmd: Err(e) })
                }
            };
            self.block_seq[k] = seq;
            // Read after the command: a window claimed by a newer monarch (cfg.epoch raised)
            // before this command was read fences its older writers, the one followed too.
            self.fence.raise_floor(self.window.load32(layout::CFG_EPOCH));
            return match self.fence.admit(k, stamped.epoch) {
                Admit::Stale => {
                    self.window.store(layout::ST_FENCED, self.fence.fenced());
                    Heard::Fenced { block: k, epoch: stamped.epoch }
                }
                admit => Heard::Command(admit, stamped.cmd),
            };
        }
        Heard::Nothing
    }

    /// A new command was posted in the followed block, or a newer monarch spoke: whatever
    /// this side is waiting for in the ring will not come.
    fn interrupted(&self) -> bool {
        let followed = self.fence.followed();
        (0..BLOCKS).any(|k| {
            let b = layout::cmd(k);
            let seq = self.window.load32(b.seq);
            seq != self.block_seq[k]
                && match followed {
                    Some((f, _)) if f == k => true,
                    _ => self.window.load32(b.epoch) > self.fence.epoch(),
                }
        })
    }

    fn handshake(&mut self) -> Result<(), AgentError> {
        let pid = u64::from(std::process::id());
        let mut fsm = Secondary::new(pid, self.opts.timeout);
        let clock = Instant::now();
        let mut inputs = vec![SecondaryInput::Start];
        loop {
            for input in std::mem::take(&mut inputs) {
                for action in fsm.handle(clock.elapsed(), input) {
                    match action {
                        SecondaryAction::Post(st) => self.post(&st),
                        SecondaryAction::Verify { attempt, config } => {
                            let digest = self.verify(&config, attempt);
                            inputs.push(SecondaryInput::Verified { attempt, digest });
                            if let Err(why) = self.judge_signature(attempt) {
                                eprintln!(
                                    "agent {}: attempt {attempt}: signature refused: {why}; this image will not be handed off",
                                    self.opts.id
                                );
                                inputs.push(SecondaryInput::SignatureRefused { attempt });
                            }
                        }
                        SecondaryAction::Handoff { config, attempt, digest } => {
                            self.record_release(attempt, &digest, &config);
                            let handed = self.handoff();
                            match handed {
                                Ok(()) => {
                                    for a in fsm.handed_off() {
                                        if let SecondaryAction::Exit(Ok(())) = a {
                                            return Ok(());
                                        }
                                    }
                                }
                                Err(code) => inputs.push(SecondaryInput::HandoffFailed(code)),
                            }
                        }
                        SecondaryAction::Exit(Ok(())) => return Ok(()),
                        SecondaryAction::Exit(Err(failure)) => {
                            return Err(AgentError::Failed { id: self.opts.id.clone(), failure });
                        }
                    }
                }
            }
            if !inputs.is_empty() {
                continue;
            }
            let seen = self.window.bell_value(layout::DB_TO_SECONDARY);
            match self.hear() {
                Heard::Command(admit, Ok(Command::Release)) => {
                    let cfg = msg::decode_config(&|r| self.window.load(r), self.window.data_size());
                    // Every handshake's ring counts from zero; this window may have served
                    // an agent before (a new monarch restarting it with a new agent: the
                    // old count would let it overwrite chunks nobody has read).
                    self.window.store(layout::STREAM_CONSUMED, 0);
                    if admit == Admit::Takeover {
                        eprintln!(
                            "agent {}: a new monarch (epoch {}) released this secondary again; starting over with it",
                            self.opts.id,
                            self.fence.epoch()
                        );
                        inputs.push(SecondaryInput::Restart(cfg));
                    } else {
                        inputs.push(SecondaryInput::Release(cfg));
                    }
                }
                Heard::Command(admit, Ok(c)) => {
                    if admit == Admit::Takeover {
                        eprintln!(
                            "agent {}: a new monarch (epoch {}) took over",
                            self.opts.id,
                            self.fence.epoch()
                        );
                    }
                    inputs.push(SecondaryInput::Command(c));
                }
                Heard::Command(_, Err(e)) => inputs.push(SecondaryInput::Garbage(e)),
                Heard::Fenced { block, epoch } if epoch < self.fence.floor() => eprintln!(
                    "agent {}: ignored a command of epoch {epoch} (command block {block}): the window is claimed by epoch {}",
                    self.opts.id,
                    self.fence.floor()
                ),
                Heard::Fenced { block, epoch } => eprintln!(
                    "agent {}: ignored a command of epoch {epoch} (command block {block}): this secondary follows epoch {} in block {}",
                    self.opts.id,
                    self.fence.epoch(),
                    self.fence.followed().map_or(0, |(b, _)| b)
                ),
                Heard::Nothing => {
                    if self.window.load32(layout::LIFE_HOLD) != 0 {
                        // Configuration retry: the monarch holds us until our dependencies
                        // are ready; our wait for RELEASE starts over while it does.
                        if !std::mem::replace(&mut self.on_hold, true) {
                            eprintln!(
                                "agent {}: held at the rendezvous (configuration retry): the monarch waits for this secondary's dependencies",
                                self.opts.id
                            );
                        }
                        inputs.push(SecondaryInput::Held);
                    }
                    let left = fsm
                        .deadline()
                        .map_or(Duration::from_millis(100), |d| d.saturating_sub(clock.elapsed()));
                    self.window.wait_bell(
                        layout::DB_TO_SECONDARY,
                        seen,
                        left.min(Duration::from_millis(100)),
                    );
                    inputs.push(SecondaryInput::Tick);
                }
            }
        }
    }

    /// The written checksum of what landed.
    ///
    /// Push: consume the ring chunk by chunk as the monarch produces it — copy each chunk
    /// into our own memory (the image, for `exec`; a chunk-sized buffer, for `none`), check
    /// it against its manifest digest, ask for it again if it does not match, release its
    /// slot — while the monarch is already copying the next ones. Pull: copy the whole image
    /// into our own memory and checksum the copy.
    fn verify(&mut self, cfg: &WindowConfig, attempt: u32) -> Digest {
        const UNUSABLE: Digest = Digest([0xEE; 32]);
        // Nothing of an earlier attempt survives a new one: an OK for this attempt can only
        // hand off what this attempt took.
        self.held = None;
        self.staged = None;
        let result = match cfg.mode {
            Mode::Push => self.consume_stream(cfg, attempt),
            Mode::Pull => self.pull(cfg),
        };
        result.unwrap_or_else(|e| {
            // A checksum that cannot match: the monarch sees a mismatch and retries or aborts.
            eprintln!("agent {}: attempt {attempt}: {e}", self.opts.id);
            UNUSABLE
        })
    }

    /// Judge the signature that came through the window over the bytes this attempt took
    /// into our memory, with the keys this agent was configured with.
    fn judge_signature(&self, attempt: u32) -> Result<(), String> {
        if !self.opts.trust.checks() {
            return Ok(());
        }
        let held = self.held.ok_or("the image's bytes never all arrived")?;
        let record = msg::decode_signature(&|r| self.window.load(r)).map_err(|e| e.to_string())?;
        match self.opts.trust.check(record.as_deref(), &held).map_err(|e| e.to_string())? {
            Verdict::Signed(key) => {
                eprintln!("agent {}: attempt {attempt}: signed by trusted key {key}", self.opts.id);
            }
            Verdict::Unsigned => {
                eprintln!("agent {}: attempt {attempt}: unsigned (signature = optional)", self.opts.id);
            }
            Verdict::Unchecked => {}
        }
        Ok(())
    }

    /// Pull: take the whole image out of the window a piece at a time — each piece copied
    /// into a buffer that stays in the cache and checksummed in the same pass, then landed
    /// in our own image (pages of zeroes are not written: see [`MemImage::land`]).
    fn pull(&mut self, cfg: &WindowConfig) -> Result<Digest, String> {
        /// A piece: small enough to stay in the core's cache between the copy and the landing.
        const PIECE: u64 = 256 << 10;
        let name = format!("monarch-image:{}", self.opts.id);
        let mut img = MemImage::new(&name, cfg.image_size)
            .map_err(|e| format!("cannot allocate {} bytes for the image: {e}", cfg.image_size))?;
        let mut buf = vec![0u8; usize::try_from(PIECE.min(cfg.image_size)).map_err(|e| e.to_string())?];
        let mut whole = Hasher::new(cfg.algo);
        let mut signed = self.opts.trust.checks().then(ImageHasher::default);
        let mut off = 0u64;
        while off < cfg.image_size {
            let piece =
                &mut buf[..usize::try_from(PIECE.min(cfg.image_size - off)).map_err(|e| e.to_string())?];
            if cfg.algo == Algo::Crc32c {
                // CRC-32C's copy checksums as it copies; the pieces' checksums combine.
                let d = self
                    .window
                    .copy_out_digest(cfg.load_offset + off, piece, cfg.algo, |_| {})
                    .map_err(|e| e.to_string())?;
                whole.absorb(piece, &d);
            } else {
                self.window.read_data(cfg.load_offset + off, piece).map_err(|e| e.to_string())?;
                whole.update(piece);
            }
            if let Some(h) = &mut signed {
                h.update(piece);
            }
            img.land(off, piece).map_err(|e| format!("cannot write the image into memory: {e}"))?;
            off += piece.len() as u64;
            self.window.store(layout::ST_PROGRESS, off);
        }
        self.held = signed.map(|h| h.finish());
        self.staged = Some(img);
        Ok(whole.finish())
    }

    fn consume_stream(&mut self, cfg: &WindowConfig, attempt: u32) -> Result<Digest, String> {
        let geo = stream::Geometry::new(cfg);
        let chunks = geo.chunks();
        let block = layout::cmd(self.fence.followed().map_or(0, |(b, _)| b));
        // The manifest, read once into our memory (the monarch wrote it before STAGED).
        let mlen = usize::try_from(chunks * stream::DIGEST_LEN).map_err(|e| e.to_string())?;
        let mut raw = vec![0u8; mlen];
        self.window.read_data(0, &mut raw).map_err(|e| e.to_string())?;
        let manifest: Vec<Digest> = raw
            .chunks_exact(32)
            .map(|c| {
                let mut d = [0u8; 32];
                d.copy_from_slice(c);
                Digest(d)
            })
            .collect();
        let mut image = if self.opts.handoff != Handoff::None {
            let name = format!("monarch-image:{}", self.opts.id);
            Some(
                MemImage::new(&name, cfg.image_size)
                    .map_err(|e| format!("cannot allocate the image: {e}"))?,
            )
        } else {
            None
        };
        // Each chunk is copied here (and checksummed as it is), then landed in the image once
        // its digest matches: the buffer stays in the cache between the two.
        let mut bounce = vec![0u8; usize::try_from(geo.chunk_size).map_err(|e| e.to_string())?];
        let mut whole = Hasher::new(cfg.algo);
        let mut signed = self.opts.trust.checks().then(ImageHasher::default);
        for i in 0..chunks {
            let pos = geo.position(attempt, i);
            let (off, len) = geo.chunk(i);
            let n = usize::try_from(len).map_err(|e| e.to_string())?;
            self.wait_for("chunk", |w| geo.may_consume(pos, w.load(block.produced)))?;
            loop {
                let dst = &mut bounce[..n];
                let d = self
                    .window
                    .copy_out_digest(geo.slot_offset(pos), dst, cfg.algo, |_| {})
                    .map_err(|e| e.to_string())?;
                if manifest.get(usize::try_from(i).map_err(|e| e.to_string())?) == Some(&d) {
                    whole.absorb(dst, &d);
                    if let Some(h) = &mut signed {
                        h.update(dst);
                    }
                    if let Some(img) = &mut image {
                        img.land(off, dst).map_err(|e| format!("cannot write the image into memory: {e}"))?;
                    }
                    break;
                }
                // Ask for this chunk alone again, and wait for the repair.
                eprintln!("agent {}: chunk {i} failed its digest; asking for it again", self.opts.id);
                let repaired = self.window.load(block.repaired);
                self.window.store(layout::STREAM_NAK, i + 1);
                let seq = self.window.load(layout::STREAM_NAK_SEQ);
                self.window.store(layout::STREAM_NAK_SEQ, seq.wrapping_add(1));
                self.window.ring(layout::DB_TO_PRIMARY);
                self.wait_for("repair", |w| w.load(block.repaired) != repaired)?;
            }
            self.window.store(layout::STREAM_CONSUMED, pos + 1);
            self.window.store(layout::ST_PROGRESS, off + len);
            self.window.ring(layout::DB_TO_PRIMARY);
        }
        self.staged = image;
        self.held = signed.map(|h| h.finish());
        Ok(whole.finish())
    }

    /// Wait (doorbell, bounded by the agent timeout) until `ready` holds; give up if the
    /// monarch posts a new command meanwhile (an ABORT, typically), or a newer one speaks.
    /// Looks for it for [`SPIN`] first: while the monarch streams, the next chunk is a few
    /// tens of microseconds away, and sleeping would cost the monarch a futex wake per
    /// chunk and this side a wake-up (measured in docs/performance.md).
    fn wait_for(&self, what: &str, ready: impl Fn(&W) -> bool) -> Result<(), String> {
        let spin_until = Instant::now() + SPIN;
        while Instant::now() < spin_until {
            if ready(&self.window) {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            let seen = self.window.bell_value(layout::DB_TO_SECONDARY);
            if ready(&self.window) {
                return Ok(());
            }
            if self.interrupted() {
                return Err(format!("the monarch posted a new command while this side waited for a {what}"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("no {what} from the monarch within {:?}", self.opts.timeout));
            }
            self.window.wait_bell(
                layout::DB_TO_SECONDARY,
                seen,
                (deadline - now).min(Duration::from_millis(100)),
            );
        }
    }

    /// Append this release to the file named by `MONARCH_RELEASE_LOG`, if any: one line per
    /// handoff (`id epoch attempt checksum pid`), so a test can prove that no secondary was
    /// released twice, nor into anything but the image it verified.
    fn record_release(&self, attempt: u32, digest: &Digest, cfg: &WindowConfig) {
        use std::io::Write as _;
        let Some(path) = std::env::var_os("MONARCH_RELEASE_LOG") else { return };
        let line = format!(
            "{} {} {attempt} {} {}\n",
            self.opts.id,
            self.fence.epoch(),
            digest.to_hex(cfg.algo),
            std::process::id()
        );
        // One write(2) on an O_APPEND file: lines from agents running at once never interleave.
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = r {
            eprintln!(
                "agent {}: cannot append to MONARCH_RELEASE_LOG {}: {e}",
                self.opts.id,
                Path::new(&path).display()
            );
        }
    }

    fn handoff(&mut self) -> Result<(), FailCode> {
        let id = &self.opts.id;
        if self.opts.handoff == Handoff::None {
            return Ok(());
        }
        // The image is in our own memory already: filled during verification, each byte of
        // it checked (push: chunk digests and the whole-image checksum the monarch
        // confirmed; pull: the whole-image checksum).
        let Some(image) = self.staged.take() else {
            eprintln!("agent {id}: no verified image in memory to hand off into");
            return Err(FailCode::HandoffFailed);
        };
        let env = vec![
            ("MONARCH_WINDOW".to_string(), self.opts.window.display().to_string()),
            ("MONARCH_ID".to_string(), id.clone()),
        ];
        let r = self
            .opts
            .handoff
            .run(image, &format!("monarch-image:{id}"), &env, &mut |line| eprintln!("agent {id}: {line}"));
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                eprintln!("agent {id}: {e}");
                Err(FailCode::HandoffFailed)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A window as a monarch of `epoch` configures it, with `cmd` posted in command block 0.
    fn configured(dir: &Path, epoch: u32, cmd: &Command) -> (PathBuf, Window) {
        let path = dir.join("sec.win");
        let w = Window::create(&path, 1 << 16).unwrap();
        let cfg = WindowConfig {
            image_size: 4096,
            load_offset: 0,
            algo: Algo::Crc32c,
            mode: Mode::Pull,
            epoch,
            chunk_size: 0,
            ring_size: 0,
        };
        w.apply(&msg::encode_config(w.data_size(), &cfg));
        w.post(&msg::encode_command(0, 1, epoch, cmd), layout::DB_TO_SECONDARY);
        (path, w)
    }

    fn opts(window: PathBuf, epoch: Option<u32>) -> AgentOptions {
        AgentOptions {
            window,
            id: "t".into(),
            handoff: Handoff::None,
            timeout: Duration::from_millis(300),
            doorbell: Doorbell::Poll { max_sleep: Duration::from_millis(1) },
            epoch,
            trust: Trust::default(),
        }
    }

    /// The registers an agent could write: the status block and its fence counter.
    fn agent_side(w: &Window) -> (u32, u64) {
        (w.load32(layout::ST_SEQ), w.load(layout::ST_FENCED))
    }

    #[test]
    fn an_agent_started_by_a_deposed_monarch_leaves_the_window_to_the_newer_one() {
        // Regression (CI, a loaded host): a monarch deposed while spawning an agent got
        // that agent running after the new monarch's own agent had handed off; it took
        // the free lock, read the new monarch's OK as its first command and failed the
        // secondary with "the monarch posted an invalid command".
        let dir = tempfile::tempdir().unwrap();
        let (path, w) = configured(dir.path(), 2, &Command::Release);
        match run(&opts(path.clone(), Some(1))) {
            Err(AgentError::Superseded { started_by: 1, claimed: 2, .. }) => {}
            other => panic!("expected Superseded, got {other:?}"),
        }
        assert_eq!(agent_side(&w), (0, 0), "a superseded agent posts nothing");
        assert!(w.try_lock().unwrap(), "and it let go of the lock");
        w.unlock();

        // The claiming monarch's own agent does take it: it answers RELEASE with READY.
        match run(&opts(path, Some(2))) {
            Err(AgentError::Failed { failure: SecondaryFailure::Failed(FailCode::Timeout), .. }) => {}
            other => panic!("expected the handshake to run (and time out), got {other:?}"),
        }
        assert_ne!(agent_side(&w).0, 0, "it posted READY");
    }

    #[test]
    fn a_second_agent_on_a_window_whose_image_runs_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::default();
        let (path, w) = configured(dir.path(), 1, &Command::Ok { attempt: 1, digest });
        for (seq, st, name) in [
            (5, Status::HandingOff { attempt: 1 }, "HANDING_OFF"),
            (7, Status::Running { pid: 4242 }, "RUNNING"),
        ] {
            w.post(&msg::encode_status(seq, 1, &st), layout::DB_TO_PRIMARY);
            for epoch in [None, Some(1)] {
                match run(&opts(path.clone(), epoch)) {
                    Err(AgentError::AlreadyHandedOff { status, .. }) => assert_eq!(status, name),
                    other => panic!("expected AlreadyHandedOff, got {other:?}"),
                }
                assert_eq!(agent_side(&w), (seq, 0), "the image's status is left as it was");
            }
        }
    }

    /// The monarch's side, by hand: the next status the secondary posts.
    fn status(w: &impl WindowMemory, last: &mut u32) -> Status {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rung = w.bell_value(layout::DB_TO_PRIMARY);
            match w.read_message(layout::ST_SEQ, *last, msg::decode_status) {
                Poll::Message(n, st) => {
                    *last = n;
                    return st;
                }
                Poll::Garbage(n, e) => panic!("status {n} does not decode: {e}"),
                Poll::Nothing => {
                    assert!(Instant::now() < deadline, "the agent posted nothing");
                    w.wait_bell(layout::DB_TO_PRIMARY, rung, Duration::from_millis(100));
                }
            }
        }
    }

    #[test]
    fn the_agent_verifies_what_a_monarch_thread_staged_in_memory_and_refuses_a_damaged_copy() {
        // No process and no file: the agent runs on a thread over an in-memory window, and
        // this thread plays the monarch of the pull handshake.
        let image: Vec<u8> =
            (0..300_007u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0]).collect();
        let algo = Algo::Crc32c;
        let want = algo.digest(&image);
        let w = monarch_drivers::MemWindow::new("agent", 1 << 20).unwrap();
        let cfg = WindowConfig {
            image_size: image.len() as u64,
            load_offset: 0,
            algo,
            mode: Mode::Pull,
            epoch: 1,
            chunk_size: 0,
            ring_size: 0,
        };
        w.apply(&msg::encode_config(w.data_size(), &cfg));
        let mut damaged = image.clone();
        damaged[123_457] ^= 0x10;
        w.write_data(0, &damaged).unwrap();
        let agent = {
            let theirs = w.attach();
            std::thread::spawn(move || {
                let o = AgentOptions {
                    window: "memory:agent".into(),
                    id: "mem".into(),
                    handoff: Handoff::None,
                    timeout: Duration::from_secs(30),
                    doorbell: Doorbell::detect(),
                    epoch: Some(1),
                    trust: Trust::default(),
                };
                run_on(&o, theirs, Instant::now())
            })
        };
        let (mut cmd_seq, mut st_seq) = (0, 0);
        let mut post = |cmd: Command| {
            cmd_seq = msg::next_seq(cmd_seq);
            w.post(&msg::encode_command(0, cmd_seq, 1, &cmd), layout::DB_TO_SECONDARY);
        };
        post(Command::Release);
        assert!(matches!(status(&w, &mut st_seq), Status::Ready { .. }));
        assert!(!w.try_lock().unwrap(), "the agent holds the window's lock");
        post(Command::Staged { attempt: 1 });
        let Status::Verified { attempt: 1, digest } = status(&w, &mut st_seq) else { panic!("no VERIFIED") };
        assert_ne!(digest, want, "the damaged copy must not verify");
        w.write_data(123_457, &image[123_457..123_458]).unwrap();
        post(Command::Staged { attempt: 2 });
        assert_eq!(status(&w, &mut st_seq), Status::Verified { attempt: 2, digest: want });
        post(Command::Ok { attempt: 2, digest: want });
        assert_eq!(status(&w, &mut st_seq), Status::HandingOff { attempt: 2 });
        agent.join().unwrap().unwrap();
        assert!(w.try_lock().unwrap(), "the agent let go of the window");
    }
}
