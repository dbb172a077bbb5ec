//! The secondary's side: `monarch agent`. Rendezvous → receive → verify → report → wait for
//! OK → hand off, driving [`monarch_proto::secondary::Secondary`] with the real window.
//!
//! The agent trusts nothing in the window: the header is validated against the mapping, the
//! config is bounds-checked, commands are decoded strictly, and the handoff loads only bytes
//! whose checksum it computed itself and the monarch confirmed.

use crate::topology::Handoff;
use monarch_drivers::memimage::MemImage;
use monarch_drivers::{Doorbell, Poll, Window, WindowError};
use monarch_proto::layout;
use monarch_proto::msg::{self, Command, FailCode, Mode, RegisterError, Status, WindowConfig};
use monarch_proto::secondary::{Secondary, SecondaryAction, SecondaryFailure, SecondaryInput};
use monarch_proto::{Algo, Digest};
use std::path::PathBuf;
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
    /// The handshake failed.
    #[error("secondary {id}: {failure}")]
    Failed {
        /// Id.
        id: String,
        /// What happened.
        failure: SecondaryFailure,
    },
}

/// Run the agent. Returns `Ok(())` after a handoff `none`; an `exec` handoff does not return.
pub fn run(opts: &AgentOptions) -> Result<(), AgentError> {
    let start = Instant::now();
    let mut window = open_when_ready(opts, start)?;
    window.set_doorbell(opts.doorbell);
    if let Err(source) = msg::decode_header(&|r| window.load(r), window.data_size()) {
        return Err(AgentError::Header { path: opts.window.clone(), source });
    }
    let mut agent = Agent { opts, window, status_seq: 0, staged: None };
    agent.handshake()
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
                if last_magic != 0 && w.load(layout::CMD_SEQ) != 0 {
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

struct Agent<'a> {
    opts: &'a AgentOptions,
    window: Window,
    status_seq: u32,
    /// Pull mode: the image copied into our own memory during verification.
    staged: Option<MemImage>,
}

impl Agent<'_> {
    fn post(&mut self, st: &Status) {
        self.status_seq = msg::next_seq(self.status_seq);
        self.window.post(&msg::encode_status(self.status_seq, st), layout::DB_TO_PRIMARY);
    }

    fn handshake(&mut self) -> Result<(), AgentError> {
        let pid = u64::from(std::process::id());
        let mut fsm = Secondary::new(pid, self.opts.timeout);
        let clock = Instant::now();
        let mut cmd_seq = 0u32;
        let mut inputs = vec![SecondaryInput::Start];
        loop {
            for input in std::mem::take(&mut inputs) {
                for action in fsm.handle(clock.elapsed(), input) {
                    match action {
                        SecondaryAction::Post(st) => self.post(&st),
                        SecondaryAction::Verify { attempt, config } => {
                            let digest = self.verify(&config);
                            inputs.push(SecondaryInput::Verified { attempt, digest });
                        }
                        SecondaryAction::Handoff { digest, config, .. } => {
                            match self.handoff(&config, digest) {
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
            match self.window.read_message(layout::CMD_SEQ, cmd_seq, msg::decode_command) {
                Poll::Message(seq, Command::Release) => {
                    cmd_seq = seq;
                    let cfg = msg::decode_config(&|r| self.window.load(r), self.window.data_size());
                    inputs.push(SecondaryInput::Release(cfg));
                }
                Poll::Message(seq, c) => {
                    cmd_seq = seq;
                    inputs.push(SecondaryInput::Command(c));
                }
                Poll::Garbage(seq, e) => {
                    cmd_seq = seq;
                    inputs.push(SecondaryInput::Garbage(e));
                }
                Poll::Nothing => {
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

    /// The written checksum of what landed. Push: hashed in the window (through a bounce
    /// buffer). Pull: copied into our own memory first, and that copy is hashed and kept.
    fn verify(&mut self, cfg: &WindowConfig) -> Digest {
        let w = &self.window;
        let progress = |n: u64| w.store(layout::ST_PROGRESS, n);
        let result = match cfg.mode {
            Mode::Push => w.digest_data(cfg.load_offset, cfg.image_size, cfg.algo, progress),
            Mode::Pull => {
                let name = format!("monarch-image:{}", self.opts.id);
                match MemImage::new(&name, cfg.image_size) {
                    Ok(mut img) => {
                        let r = w.copy_out_digest(cfg.load_offset, img.bytes_mut(), cfg.algo, progress);
                        self.staged = Some(img);
                        r
                    }
                    Err(e) => {
                        eprintln!(
                            "agent {}: cannot allocate {} bytes for the image: {e}",
                            self.opts.id, cfg.image_size
                        );
                        // A digest that cannot match: the monarch sees a mismatch and retries/aborts.
                        return Digest([0xEE; 32]);
                    }
                }
            }
        };
        result.unwrap_or_else(|e| {
            eprintln!("agent {}: {e}", self.opts.id);
            Digest([0xEE; 32])
        })
    }

    fn handoff(&mut self, cfg: &WindowConfig, verified: Digest) -> Result<(), FailCode> {
        match self.opts.handoff {
            Handoff::None => Ok(()),
            Handoff::Exec => {
                let image = match self.staged.take() {
                    Some(img) => img,
                    None => self.load_verified(cfg, verified)?,
                };
                let id = &self.opts.id;
                let env = vec![
                    ("MONARCH_WINDOW".to_string(), self.opts.window.display().to_string()),
                    ("MONARCH_ID".to_string(), id.clone()),
                ];
                eprintln!("agent {id}: handing off into the verified image ({} bytes)", cfg.image_size);
                let e = image.exec(&format!("monarch-image:{id}"), &[], &env);
                eprintln!("agent {id}: exec of the delivered image failed: {e}");
                Err(FailCode::HandoffFailed)
            }
        }
    }

    /// Push mode: load the image from the window into our own memory, hashing what was
    /// loaded, and refuse it unless it is exactly what was verified.
    fn load_verified(&self, cfg: &WindowConfig, verified: Digest) -> Result<MemImage, FailCode> {
        let name = format!("monarch-image:{}", self.opts.id);
        let mut img = MemImage::new(&name, cfg.image_size).map_err(|e| {
            eprintln!("agent {}: cannot allocate the image: {e}", self.opts.id);
            FailCode::HandoffFailed
        })?;
        let d = self
            .window
            .copy_out_digest(cfg.load_offset, img.bytes_mut(), cfg.algo, |_| {})
            .map_err(|_| FailCode::HandoffFailed)?;
        if d != verified {
            eprintln!(
                "agent {}: the image changed after verification ({} {} != verified {}); refusing to run it",
                self.opts.id,
                cfg.algo,
                d.to_hex(cfg.algo),
                verified.to_hex(cfg.algo)
            );
            return Err(FailCode::ImageChanged);
        }
        Ok(img)
    }
}

/// The algorithm names accepted on command lines.
pub fn algo_names() -> Vec<&'static str> {
    Algo::ALL.iter().map(|a| a.name()).collect()
}
