//! Messages carried in the register page, and their encoding into register writes.
//!
//! Encoding is pure: [`encode_command`] / [`encode_status`] return the ordered list of
//! register writes, *publication word last*; decoding takes a register-read function, so the
//! same code serves the memory-mapped driver, the in-memory page of the tests and the model
//! checker. Everything decoded here comes from the other side and is validated: unknown
//! codes, impossible sizes and zero attempts are [`RegisterError`]s, never panics.

use crate::checksum::{Algo, Digest};
use crate::window::layout::{self, Reg, Write};
use crate::window::stream::Geometry;
use thiserror::Error;

/// Who copies the image across the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The primary copies the image into the secondary's memory (the reference design's main path).
    Push,
    /// The primary exposes the image; the secondary copies it into its own memory.
    Pull,
}

impl Mode {
    /// Register code.
    pub fn code(self) -> u32 {
        match self {
            Mode::Push => 0,
            Mode::Pull => 1,
        }
    }
    /// Name used in topology files and output.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Push => "push",
            Mode::Pull => "pull",
        }
    }
}

/// The config block: written by the primary before it releases the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowConfig {
    /// Size limit: the image size in bytes.
    pub image_size: u64,
    /// Offset of the image in the data area.
    pub load_offset: u64,
    /// Algorithm of the written checksum.
    pub algo: Algo,
    /// Who copies.
    pub mode: Mode,
    /// Monarch epoch.
    pub epoch: u32,
    /// Push: chunk size (bytes); 0 in pull mode.
    pub chunk_size: u64,
    /// Push: ring size (bytes) at `load_offset`; 0 in pull mode.
    pub ring_size: u64,
}

/// Why the primary aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbortReason {
    /// Every attempt's written checksum differed from the retrieved one.
    ChecksumMismatch,
    /// The secondary did not answer in time.
    Timeout,
    /// The secondary posted something that breaks the protocol.
    ProtocolError,
    /// The secondary reported a failure.
    SecondaryFailed,
    /// The operator (or the monarch shutting down) stopped the boot.
    Stopped,
    /// A code this version does not know (read from the peer).
    Unknown(u32),
}

impl AbortReason {
    /// Register code.
    pub fn code(self) -> u32 {
        match self {
            AbortReason::ChecksumMismatch => 1,
            AbortReason::Timeout => 2,
            AbortReason::ProtocolError => 3,
            AbortReason::SecondaryFailed => 4,
            AbortReason::Stopped => 5,
            AbortReason::Unknown(c) => c,
        }
    }
    /// Decode; unknown codes are kept so they can be reported.
    pub fn from_code(c: u32) -> AbortReason {
        match c {
            1 => AbortReason::ChecksumMismatch,
            2 => AbortReason::Timeout,
            3 => AbortReason::ProtocolError,
            4 => AbortReason::SecondaryFailed,
            5 => AbortReason::Stopped,
            other => AbortReason::Unknown(other),
        }
    }
}

/// Why the secondary failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailCode {
    /// The header or config block was invalid.
    BadConfig,
    /// The primary posted something that breaks the protocol.
    ProtocolError,
    /// The primary did not answer in time.
    Timeout,
    /// The primary said OK for a checksum or attempt that is not what this side verified.
    OkMismatch,
    /// The image changed between verification and handoff.
    ImageChanged,
    /// The handoff itself failed (exec/kexec refused the image).
    HandoffFailed,
    /// The primary aborted.
    Aborted,
    /// The image's signature did not verify with the keys the secondary trusts (or a
    /// signature it requires was missing): it was never handed off.
    SignatureRefused,
    /// A code this version does not know (read from the peer).
    Unknown(u32),
}

impl FailCode {
    /// Register code.
    pub fn code(self) -> u32 {
        match self {
            FailCode::BadConfig => 1,
            FailCode::ProtocolError => 2,
            FailCode::Timeout => 3,
            FailCode::OkMismatch => 4,
            FailCode::ImageChanged => 5,
            FailCode::HandoffFailed => 6,
            FailCode::Aborted => 7,
            FailCode::SignatureRefused => 8,
            FailCode::Unknown(c) => c,
        }
    }
    /// Decode; unknown codes are kept so they can be reported.
    pub fn from_code(c: u32) -> FailCode {
        match c {
            1 => FailCode::BadConfig,
            2 => FailCode::ProtocolError,
            3 => FailCode::Timeout,
            4 => FailCode::OkMismatch,
            5 => FailCode::ImageChanged,
            6 => FailCode::HandoffFailed,
            7 => FailCode::Aborted,
            8 => FailCode::SignatureRefused,
            other => FailCode::Unknown(other),
        }
    }
    /// A short human description.
    pub fn describe(self) -> String {
        match self {
            FailCode::BadConfig => "invalid window header or config".into(),
            FailCode::ProtocolError => "the monarch posted an invalid command".into(),
            FailCode::Timeout => "timed out waiting for the monarch".into(),
            FailCode::OkMismatch => "the monarch's OK did not match the verified checksum".into(),
            FailCode::ImageChanged => "the image changed after verification".into(),
            FailCode::HandoffFailed => "handoff into the image failed".into(),
            FailCode::Aborted => "aborted by the monarch".into(),
            FailCode::SignatureRefused => {
                "the secondary refused the image's signature (not signed by a key it trusts, or not over these bytes); never handed off".into()
            }
            FailCode::Unknown(c) => format!("unknown failure code {c}"),
        }
    }
}

/// A command: the primary's message to the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// The config block is valid: the secondary is out of reset and may rendezvous.
    Release,
    /// The image for `attempt` is in the window: verify it and post the written checksum.
    Staged {
        /// 1-based attempt.
        attempt: u32,
    },
    /// The written checksum of `attempt` matched: hand off into the image.
    Ok {
        /// The attempt that matched.
        attempt: u32,
        /// The checksum the primary accepted (must equal the secondary's written checksum).
        digest: Digest,
    },
    /// Give up on this secondary.
    Abort {
        /// Why.
        reason: AbortReason,
    },
    /// The running image should stop (end of an emulated run).
    Shutdown,
}

/// Command codes in `cmd.code`.
pub mod command_code {
    /// [`super::Command::Release`]
    pub const RELEASE: u32 = 1;
    /// [`super::Command::Staged`]
    pub const STAGED: u32 = 2;
    /// [`super::Command::Ok`]
    pub const OK: u32 = 3;
    /// [`super::Command::Abort`]
    pub const ABORT: u32 = 4;
    /// [`super::Command::Shutdown`]
    pub const SHUTDOWN: u32 = 5;
}

/// Status codes in `status.code`.
pub mod status_code {
    /// [`super::Status::Ready`]
    pub const READY: u32 = 1;
    /// [`super::Status::Verified`]
    pub const VERIFIED: u32 = 2;
    /// [`super::Status::Failed`]
    pub const FAILED: u32 = 3;
    /// [`super::Status::HandingOff`]
    pub const HANDING_OFF: u32 = 4;
    /// [`super::Status::Running`]
    pub const RUNNING: u32 = 5;
}

/// A status: the secondary's message to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Rendezvous: the secondary has validated the window and waits for the image.
    Ready {
        /// The agent's process id.
        pid: u64,
    },
    /// The written checksum of `attempt`.
    Verified {
        /// The attempt verified.
        attempt: u32,
        /// The written checksum.
        digest: Digest,
    },
    /// The secondary gave up.
    Failed {
        /// The attempt it was in (0 before the first).
        attempt: u32,
        /// Why.
        error: FailCode,
    },
    /// OK received and accepted: the secondary is jumping into the image.
    HandingOff {
        /// The attempt handed off into.
        attempt: u32,
    },
    /// The delivered image runs (posted by the image itself).
    Running {
        /// Process id of the running image.
        pid: u64,
    },
}

/// A register page value the other side wrote that this side cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Error)]
pub enum RegisterError {
    /// `hdr.magic` is not `MNRCHWIN`.
    #[error(
        "register hdr.magic at 0x000 holds {found:#018x}, not a monarch window (expected {:#018x}); is this the right window file, and did the monarch initialise it?",
        layout::MAGIC
    )]
    BadMagic {
        /// What was there.
        found: u64,
    },
    /// Unsupported protocol version.
    #[error(
        "register hdr.version at 0x008 holds {found}, this build speaks version {}; run the same monarch version on both sides",
        layout::VERSION
    )]
    BadVersion {
        /// What was there.
        found: u32,
    },
    /// Register page size other than [`layout::REGS_SIZE`].
    #[error("register hdr.regs_size at 0x00c holds {found}, expected {}", layout::REGS_SIZE)]
    BadRegsSize {
        /// What was there.
        found: u32,
    },
    /// Header's data size disagrees with the mapping.
    #[error(
        "register hdr.data_size at 0x010 says {header} bytes but the window maps {actual} bytes of data area; the window file was resized or belongs to another run"
    )]
    DataSizeMismatch {
        /// Header's value.
        header: u64,
        /// Mapped size.
        actual: u64,
    },
    /// Image does not fit the data area at its load offset.
    #[error(
        "config: image of {image_size} bytes at load offset {load_offset} does not fit the {data_size}-byte data area (registers cfg.image_size 0x040, cfg.load_offset 0x048)"
    )]
    ImageOutOfBounds {
        /// cfg.image_size.
        image_size: u64,
        /// cfg.load_offset.
        load_offset: u64,
        /// Data area size.
        data_size: u64,
    },
    /// A zero-length image.
    #[error("config: register cfg.image_size at 0x040 is 0; an image must not be empty")]
    EmptyImage,
    /// Unknown algorithm code.
    #[error("config: register cfg.algo at 0x050 holds unknown checksum algorithm {0}")]
    UnknownAlgo(u32),
    /// Unknown mode code.
    #[error("config: register cfg.mode at 0x054 holds unknown transfer mode {0}")]
    UnknownMode(u32),
    /// Unknown command code.
    #[error("register cmd.code at 0x084 holds unknown command {0}")]
    UnknownCommand(u32),
    /// Unknown status code.
    #[error("register status.code at 0x104 holds unknown status {0}")]
    UnknownStatus(u32),
    /// Unknown notice code.
    #[error("register notice.code at 0xb0c holds unknown notice {0}")]
    UnknownNotice(u32),
    /// Unknown answer code.
    #[error("register answer.code at 0xa18 holds unknown answer {0}")]
    UnknownAnswer(u32),
    /// The streaming ring does not fit.
    #[error(
        "config: ring of {ring_size} bytes in chunks of {chunk_size} at load offset {load_offset} in a {data_size}-byte data area: {why} (registers cfg.chunk_size 0x060, cfg.ring_size 0x068)"
    )]
    BadRing {
        /// cfg.chunk_size.
        chunk_size: u64,
        /// cfg.ring_size.
        ring_size: u64,
        /// cfg.load_offset.
        load_offset: u64,
        /// Data area size.
        data_size: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The signature block claims more bytes than it holds.
    #[error("register sig.len at 0x800 holds {0}; a signature record is at most 256 bytes")]
    SignatureTooLong(u32),
    /// Attempt 0 where an attempt is required.
    #[error("register {0} holds attempt 0; attempts start at 1")]
    ZeroAttempt(&'static str),
    /// The peer kept rewriting the message while it was being read.
    #[error("register {0} changed on every read: the peer is rewriting its message block continuously")]
    Unstable(&'static str),
}

/// Set in a publication word while its block is being rewritten (seqlock "odd" state).
///
/// A side posts a message as: publication word = `seq | SEQ_BUSY`, then the payload
/// registers, then publication word = `seq`. A reader reads the word, the payload, and the
/// word again, and accepts the payload only if both reads are the same `seq` without the
/// busy bit. Without the busy marker a reader can pair the old `seq` with a half-written
/// new payload (the model check found exactly that).
pub const SEQ_BUSY: u32 = 1 << 31;

/// Sequence numbers wrap below [`SEQ_BUSY`], skipping 0 (0 means "nothing posted yet").
pub fn next_seq(seq: u32) -> u32 {
    let n = (seq & !SEQ_BUSY).wrapping_add(1) & !SEQ_BUSY;
    if n == 0 { 1 } else { n }
}

/// A publication word as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeqWord {
    /// Nothing was ever posted.
    Empty,
    /// A message is being written; read again after the next doorbell.
    Busy,
    /// Message number `n` is complete.
    Published(u32),
}

impl SeqWord {
    /// Classify a raw publication word.
    pub fn from_raw(raw: u32) -> SeqWord {
        if raw & SEQ_BUSY != 0 {
            SeqWord::Busy
        } else if raw == 0 {
            SeqWord::Empty
        } else {
            SeqWord::Published(raw)
        }
    }
}

pub(crate) fn publish(seq_reg: Reg, seq: u32, payload: Vec<Write>) -> Vec<Write> {
    let seq = seq & !SEQ_BUSY;
    let mut w = Vec::with_capacity(payload.len() + 2);
    w.push((seq_reg, u64::from(seq | SEQ_BUSY)));
    w.extend(payload);
    w.push((seq_reg, u64::from(seq)));
    w
}

/// The header and config block writes (done once, before release).
pub fn encode_config(data_size: u64, cfg: &WindowConfig) -> Vec<Write> {
    vec![
        (layout::HDR_VERSION, u64::from(layout::VERSION)),
        (layout::HDR_REGS_SIZE, layout::REGS_SIZE as u64),
        (layout::HDR_DATA_SIZE, data_size),
        (layout::CFG_IMAGE_SIZE, cfg.image_size),
        (layout::CFG_LOAD_OFFSET, cfg.load_offset),
        (layout::CFG_ALGO, u64::from(cfg.algo.code())),
        (layout::CFG_MODE, u64::from(cfg.mode.code())),
        (layout::CFG_EPOCH, u64::from(cfg.epoch)),
        (layout::CFG_CHUNK_SIZE, cfg.chunk_size),
        (layout::CFG_RING_SIZE, cfg.ring_size),
        // Magic last: a window with a valid magic has a complete header.
        (layout::HDR_MAGIC, layout::MAGIC),
    ]
}

/// Validate the header against the mapped data-area size; returns the data size.
pub fn decode_header(read: &dyn Fn(Reg) -> u64, mapped_data_size: u64) -> Result<u64, RegisterError> {
    let magic = read(layout::HDR_MAGIC);
    if magic != layout::MAGIC {
        return Err(RegisterError::BadMagic { found: magic });
    }
    let version = read32(read, layout::HDR_VERSION);
    if version != layout::VERSION {
        return Err(RegisterError::BadVersion { found: version });
    }
    let regs = read32(read, layout::HDR_REGS_SIZE);
    if regs as usize != layout::REGS_SIZE {
        return Err(RegisterError::BadRegsSize { found: regs });
    }
    let header = read(layout::HDR_DATA_SIZE);
    if header != mapped_data_size {
        return Err(RegisterError::DataSizeMismatch { header, actual: mapped_data_size });
    }
    Ok(header)
}

/// Decode and bounds-check the config block against the data area.
///
/// Pull: the whole image sits at `load_offset`. Push (streaming): the manifest (32 bytes per
/// chunk) sits at data offset 0, the ring of `ring_size` bytes at `load_offset` after it; the
/// image may be larger than the window.
pub fn decode_config(read: &dyn Fn(Reg) -> u64, data_size: u64) -> Result<WindowConfig, RegisterError> {
    let image_size = read(layout::CFG_IMAGE_SIZE);
    let load_offset = read(layout::CFG_LOAD_OFFSET);
    if image_size == 0 {
        return Err(RegisterError::EmptyImage);
    }
    let algo_code = read32(read, layout::CFG_ALGO);
    let algo = Algo::from_code(algo_code).ok_or(RegisterError::UnknownAlgo(algo_code))?;
    let mode = match read32(read, layout::CFG_MODE) {
        0 => Mode::Push,
        1 => Mode::Pull,
        other => return Err(RegisterError::UnknownMode(other)),
    };
    let epoch = read32(read, layout::CFG_EPOCH);
    let chunk_size = read(layout::CFG_CHUNK_SIZE);
    let ring_size = read(layout::CFG_RING_SIZE);
    let cfg = WindowConfig { image_size, load_offset, algo, mode, epoch, chunk_size, ring_size };
    match mode {
        Mode::Pull => match load_offset.checked_add(image_size) {
            Some(end) if end <= data_size => {}
            _ => return Err(RegisterError::ImageOutOfBounds { image_size, load_offset, data_size }),
        },
        Mode::Push => {
            let geometry = Geometry::new(&cfg);
            let bad = |why: &'static str| RegisterError::BadRing {
                chunk_size,
                ring_size,
                load_offset,
                data_size,
                why,
            };
            if chunk_size == 0 || ring_size < chunk_size || ring_size % chunk_size != 0 {
                return Err(bad("the ring must be a whole number (at least 1) of non-empty chunks"));
            }
            match load_offset.checked_add(ring_size) {
                Some(end) if end <= data_size => {}
                _ => return Err(bad("the ring does not fit the data area")),
            }
            match geometry.manifest_len() {
                Some(m) if m <= load_offset => {}
                _ => {
                    return Err(bad("the manifest (32 bytes per chunk, at data offset 0) overlaps the ring"));
                }
            }
        }
    }
    Ok(cfg)
}

impl Geometry {
    /// The ring of a (validated) config. It lives here, beside the config block, so that the
    /// ring's arithmetic in `stream.rs` needs nothing of the messages.
    pub fn new(cfg: &WindowConfig) -> Geometry {
        Geometry {
            image_size: cfg.image_size,
            chunk_size: cfg.chunk_size,
            ring_size: cfg.ring_size,
            ring_offset: cfg.load_offset,
        }
    }
}

/// Read a 32-bit register through the width-agnostic reader: only the low half is the register.
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn read32(read: &dyn Fn(Reg) -> u64, r: Reg) -> u32 {
    read(r) as u32
}

fn digest_writes(regs: [Reg; 4], d: &Digest) -> impl Iterator<Item = Write> {
    regs.into_iter().zip(d.words())
}

fn read_digest(read: &dyn Fn(Reg) -> u64, regs: [Reg; 4]) -> Digest {
    Digest::from_words(regs.map(read))
}

/// The writes that post `cmd` as message number `seq` in command block `block`, stamped
/// with the writer's `epoch` (seqlock order, see [`SEQ_BUSY`]).
pub fn encode_command(block: usize, seq: u32, epoch: u32, cmd: &Command) -> Vec<Write> {
    use command_code as c;
    let b = layout::cmd(block);
    let mut w: Vec<Write> = Vec::with_capacity(9);
    let (code, attempt, reason, digest) = match *cmd {
        Command::Release => (c::RELEASE, 0, 0, Digest::default()),
        Command::Staged { attempt } => (c::STAGED, attempt, 0, Digest::default()),
        Command::Ok { attempt, digest } => (c::OK, attempt, 0, digest),
        Command::Abort { reason } => (c::ABORT, 0, reason.code(), Digest::default()),
        Command::Shutdown => (c::SHUTDOWN, 0, 0, Digest::default()),
    };
    w.push((b.code, u64::from(code)));
    w.push((b.attempt, u64::from(attempt)));
    w.push((b.reason, u64::from(reason)));
    w.push((b.epoch, u64::from(epoch)));
    w.extend(digest_writes(b.digest, &digest));
    publish(b.seq, seq, w)
}

/// A command with the epoch of the monarch that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stamped {
    /// The writer's epoch.
    pub epoch: u32,
    /// The command, or why it does not decode (the epoch decodes whatever the code says, so
    /// garbage from a deposed monarch's block can be fenced like any of its commands).
    pub cmd: Result<Command, RegisterError>,
}

/// Decode command block `block` (the caller has read its `seq` before and after).
pub fn decode_command(block: usize, read: &dyn Fn(Reg) -> u64) -> Result<Stamped, RegisterError> {
    use command_code as c;
    let b = layout::cmd(block);
    let epoch = read32(read, b.epoch);
    let code = read32(read, b.code);
    let attempt = read32(read, b.attempt);
    let need_attempt =
        || if attempt == 0 { Err(RegisterError::ZeroAttempt(b.attempt.name)) } else { Ok(attempt) };
    let cmd = (|| {
        Ok(match code {
            c::RELEASE => Command::Release,
            c::STAGED => Command::Staged { attempt: need_attempt()? },
            c::OK => Command::Ok { attempt: need_attempt()?, digest: read_digest(read, b.digest) },
            c::ABORT => Command::Abort { reason: AbortReason::from_code(read32(read, b.reason)) },
            c::SHUTDOWN => Command::Shutdown,
            other => return Err(RegisterError::UnknownCommand(other)),
        })
    })();
    Ok(Stamped { epoch, cmd })
}

/// The writes that post `st` as message number `seq`, answering the monarch of `epoch`
/// (seqlock order, see [`SEQ_BUSY`]).
pub fn encode_status(seq: u32, epoch: u32, st: &Status) -> Vec<Write> {
    use status_code as s;
    let (code, attempt, error, pid, digest) = match *st {
        Status::Ready { pid } => (s::READY, 0, 0, pid, Digest::default()),
        Status::Verified { attempt, digest } => (s::VERIFIED, attempt, 0, 0, digest),
        Status::Failed { attempt, error } => (s::FAILED, attempt, error.code(), 0, Digest::default()),
        Status::HandingOff { attempt } => (s::HANDING_OFF, attempt, 0, 0, Digest::default()),
        Status::Running { pid } => (s::RUNNING, 0, 0, pid, Digest::default()),
    };
    let mut w: Vec<Write> = vec![
        (layout::ST_CODE, u64::from(code)),
        (layout::ST_ATTEMPT, u64::from(attempt)),
        (layout::ST_ERROR, u64::from(error)),
        (layout::ST_PID, pid),
        (layout::ST_EPOCH, u64::from(epoch)),
    ];
    w.extend(digest_writes(layout::ST_DIGEST, &digest));
    publish(layout::ST_SEQ, seq, w)
}

/// Decode the status block (the caller has read `status.seq` before and after).
pub fn decode_status(read: &dyn Fn(Reg) -> u64) -> Result<Status, RegisterError> {
    use status_code as s;
    let code = read32(read, layout::ST_CODE);
    let attempt = read32(read, layout::ST_ATTEMPT);
    let need_attempt = || {
        if attempt == 0 { Err(RegisterError::ZeroAttempt(layout::ST_ATTEMPT.name)) } else { Ok(attempt) }
    };
    Ok(match code {
        s::READY => Status::Ready { pid: read(layout::ST_PID) },
        s::VERIFIED => {
            Status::Verified { attempt: need_attempt()?, digest: read_digest(read, layout::ST_DIGEST) }
        }
        s::FAILED => Status::Failed { attempt, error: FailCode::from_code(read32(read, layout::ST_ERROR)) },
        s::HANDING_OFF => Status::HandingOff { attempt: need_attempt()? },
        s::RUNNING => Status::Running { pid: read(layout::ST_PID) },
        other => return Err(RegisterError::UnknownStatus(other)),
    })
}

/// The signature block writes for a `.sig` record (`None`: unsigned, `sig.len` 0). A record
/// longer than [`layout::SIG_MAX`] bytes is no valid record; `None` is returned for it, and
/// the caller refuses the image before it comes to that.
pub fn encode_signature(record: Option<&[u8]>) -> Option<Vec<Write>> {
    let bytes = record.unwrap_or_default();
    if bytes.len() > layout::SIG_MAX {
        return None;
    }
    let mut w: Vec<Write> = Vec::new();
    for i in 0..layout::SIG_MAX / 8 {
        let mut b = [0u8; 8];
        let chunk = bytes.get(8 * i..).unwrap_or_default();
        let n = chunk.len().min(8);
        b[..n].copy_from_slice(&chunk[..n]);
        w.push((signature_word(i), u64::from_le_bytes(b)));
    }
    w.push((layout::SIG_LEN, bytes.len() as u64));
    Some(w)
}

fn signature_word(i: usize) -> Reg {
    Reg { offset: layout::SIG_RECORD + 8 * i, width: layout::Width::W64, name: "sig.record" }
}

/// The `.sig` record in the signature block, copied out (`None`: `sig.len` is 0). A length
/// over [`layout::SIG_MAX`] is an error naming the register; the record itself is parsed,
/// strictly, by `crate::sign`.
pub fn decode_signature(read: &dyn Fn(Reg) -> u64) -> Result<Option<Vec<u8>>, RegisterError> {
    let len = read32(read, layout::SIG_LEN);
    let n = usize::try_from(len).unwrap_or(usize::MAX);
    if n == 0 {
        return Ok(None);
    }
    if n > layout::SIG_MAX {
        return Err(RegisterError::SignatureTooLong(len));
    }
    let mut bytes = Vec::with_capacity(n + 8);
    for i in 0..n.div_ceil(8) {
        bytes.extend_from_slice(&read(signature_word(i)).to_le_bytes());
    }
    bytes.truncate(n);
    Ok(Some(bytes))
}

/// The report block writes for a report text (truncated to [`layout::REPORT_MAX`] bytes).
pub fn encode_report(text: &str) -> Vec<Write> {
    text_writes(layout::REPORT_LEN, layout::REPORT_TEXT, "report.text", layout::REPORT_MAX, text)
}

/// Decode the report text as the peer wrote it; the length is clamped and invalid UTF-8
/// replaced. It is peer data: show it through [`crate::text::printable`].
pub fn decode_report(read: &dyn Fn(Reg) -> u64) -> String {
    read_text(read, layout::REPORT_LEN, layout::REPORT_TEXT, "report.text", layout::REPORT_MAX)
}

/// The writes of a text field: its words from `base` (`text` truncated to `max` bytes at a
/// character boundary), then its length in `len`.
pub(crate) fn text_writes(len: Reg, base: usize, name: &'static str, max: usize, text: &str) -> Vec<Write> {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &text.as_bytes()[..end];
    let mut w: Vec<Write> = Vec::new();
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        w.push((text_word(base, name, i), u64::from_le_bytes(b)));
    }
    w.push((len, bytes.len() as u64));
    w
}

fn text_word(base: usize, name: &'static str, i: usize) -> Reg {
    Reg { offset: base + 8 * i, width: layout::Width::W64, name }
}

/// A text field as the peer wrote it: the length clamped to `max`, invalid UTF-8 replaced.
pub(crate) fn read_text(
    read: &dyn Fn(Reg) -> u64,
    len: Reg,
    base: usize,
    name: &'static str,
    max: usize,
) -> String {
    let n = usize::try_from(read32(read, len)).unwrap_or(usize::MAX).min(max);
    let mut bytes = Vec::with_capacity(n + 8);
    for i in 0..n.div_ceil(8) {
        bytes.extend_from_slice(&read(text_word(base, name, i)).to_le_bytes());
    }
    bytes.truncate(n);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::page::Page;
    use proptest::prelude::*;

    fn arb_digest() -> impl Strategy<Value = Digest> {
        any::<[u8; 32]>().prop_map(Digest)
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            Just(Command::Release),
            (1u32..).prop_map(|attempt| Command::Staged { attempt }),
            ((1u32..), arb_digest()).prop_map(|(attempt, digest)| Command::Ok { attempt, digest }),
            (1u32..=5).prop_map(|c| Command::Abort { reason: AbortReason::from_code(c) }),
            Just(Command::Shutdown),
        ]
    }

    fn arb_status() -> impl Strategy<Value = Status> {
        prop_oneof![
            any::<u64>().prop_map(|pid| Status::Ready { pid }),
            ((1u32..), arb_digest()).prop_map(|(attempt, digest)| Status::Verified { attempt, digest }),
            (any::<u32>(), 1u32..=7)
                .prop_map(|(attempt, c)| Status::Failed { attempt, error: FailCode::from_code(c) }),
            (1u32..).prop_map(|attempt| Status::HandingOff { attempt }),
            any::<u64>().prop_map(|pid| Status::Running { pid }),
        ]
    }

    proptest! {
        #[test]
        fn commands_round_trip(cmd in arb_command(), seq in 1u32..SEQ_BUSY, block in 0..layout::CMD_BLOCKS, epoch in any::<u32>()) {
            let mut p = Page::new();
            p.apply(&encode_command(block, seq, epoch, &cmd));
            prop_assert_eq!(p.read(layout::cmd(block).seq), u64::from(seq));
            prop_assert_eq!(decode_command(block, &|r| p.read(r)), Ok(Stamped { epoch, cmd: Ok(cmd) }));
            // The other blocks are untouched: one writer per block.
            for other in (0..layout::CMD_BLOCKS).filter(|k| *k != block) {
                prop_assert!(layout::cmd(other).regs().iter().all(|r| p.read(*r) == 0));
            }
        }

        #[test]
        fn statuses_round_trip(st in arb_status(), seq in 1u32..SEQ_BUSY) {
            let mut p = Page::new();
            p.apply(&encode_status(seq, 4, &st));
            prop_assert_eq!(decode_status(&|r| p.read(r)), Ok(st));
            prop_assert_eq!(p.read(layout::ST_EPOCH), 4);
        }

        #[test]
        fn garbage_pages_decode_to_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), layout::REGS_SIZE), data_size in any::<u64>()) {
            let p = Page::from_bytes(&bytes);
            let read = |r| p.read(r);
            let _ = decode_header(&read, data_size);
            if let Ok(cfg) = decode_config(&read, data_size) {
                prop_assert!(cfg.load_offset + cfg.image_size <= data_size);
                prop_assert!(cfg.image_size > 0);
            }
            for k in 0..layout::CMD_BLOCKS {
                let _ = decode_command(k, &read);
            }
            let _ = decode_status(&read);
            prop_assert!(decode_report(&read).len() <= 3 * layout::REPORT_MAX);
        }

        #[test]
        fn reports_round_trip(text in "[ -~]{0,300}") {
            let mut p = Page::new();
            p.apply(&encode_report(&text));
            let expect = &text[..text.len().min(layout::REPORT_MAX)];
            prop_assert_eq!(decode_report(&|r| p.read(r)), expect);
        }
    }

    #[test]
    fn publication_word_is_marked_busy_first_and_published_last() {
        let w = encode_command(1, 7, 1, &Command::Staged { attempt: 1 });
        assert_eq!(w.first(), Some(&(layout::cmd(1).seq, u64::from(7 | SEQ_BUSY))));
        assert_eq!(w.last(), Some(&(layout::cmd(1).seq, 7)));
        let w = encode_status(7, 1, &Status::Ready { pid: 1 });
        assert_eq!(w.first(), Some(&(layout::ST_SEQ, u64::from(7 | SEQ_BUSY))));
        assert_eq!(w.last(), Some(&(layout::ST_SEQ, 7)));
        let w = encode_config(
            1,
            &WindowConfig {
                image_size: 1,
                load_offset: 0,
                algo: Algo::Crc32c,
                mode: Mode::Pull,
                epoch: 0,
                chunk_size: 0,
                ring_size: 0,
            },
        );
        assert_eq!(w.last().map(|(r, _)| *r), Some(layout::HDR_MAGIC));
        let w = encode_report("x");
        assert_eq!(w.last().map(|(r, _)| *r), Some(layout::REPORT_LEN));
    }

    #[test]
    fn sequence_numbers_skip_zero_and_the_busy_bit() {
        assert_eq!(next_seq(0), 1);
        assert_eq!(next_seq(1), 2);
        assert_eq!(next_seq(SEQ_BUSY - 1), 1);
        assert_eq!(SeqWord::from_raw(0), SeqWord::Empty);
        assert_eq!(SeqWord::from_raw(5 | SEQ_BUSY), SeqWord::Busy);
        assert_eq!(SeqWord::from_raw(5), SeqWord::Published(5));
    }

    #[test]
    fn config_bounds_are_checked_without_overflow() {
        let mut p = Page::new();
        let cfg = WindowConfig {
            image_size: u64::MAX,
            load_offset: 2,
            algo: Algo::Crc32c,
            mode: Mode::Pull,
            epoch: 0,
            chunk_size: 0,
            ring_size: 0,
        };
        p.apply(&encode_config(100, &cfg));
        assert!(matches!(decode_config(&|r| p.read(r), 100), Err(RegisterError::ImageOutOfBounds { .. })));
        let cfg = WindowConfig { image_size: 98, ..cfg };
        p.apply(&encode_config(100, &cfg));
        assert_eq!(decode_config(&|r| p.read(r), 100), Ok(cfg));
        let cfg = WindowConfig { image_size: 99, ..cfg };
        p.apply(&encode_config(100, &cfg));
        assert!(decode_config(&|r| p.read(r), 100).is_err());
    }

    #[test]
    fn ring_config_is_checked_against_the_data_area() {
        let mut p = Page::new();
        // 3 chunks of 16 bytes: manifest 96 bytes at 0, ring of 32 bytes at 96.
        let cfg = WindowConfig {
            image_size: 48,
            load_offset: 96,
            algo: Algo::Crc32c,
            mode: Mode::Push,
            epoch: 0,
            chunk_size: 16,
            ring_size: 32,
        };
        p.apply(&encode_config(128, &cfg));
        assert_eq!(decode_config(&|r| p.read(r), 128), Ok(cfg));
        for (bad, size) in [
            (WindowConfig { ring_size: 33, ..cfg }, 200),
            (WindowConfig { chunk_size: 0, ..cfg }, 200),
            (WindowConfig { ring_size: 8, ..cfg }, 200),
            (WindowConfig { load_offset: 95, ..cfg }, 200),
            (WindowConfig { load_offset: u64::MAX - 8, ..cfg }, 200),
            (cfg, 127),
        ] {
            p.apply(&encode_config(size, &bad));
            let e = decode_config(&|r| p.read(r), size).unwrap_err();
            assert!(matches!(e, RegisterError::BadRing { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn header_errors_name_the_register_and_the_fix() {
        let p = Page::new();
        let e = decode_header(&|r| p.read(r), 10).unwrap_err();
        assert!(e.to_string().contains("hdr.magic"), "{e}");
        assert!(e.to_string().contains("right window file"), "{e}");
    }
}

#[cfg(test)]
mod golden {
    //! Golden bytes: the register page as another implementation (firmware, a C agent)
    //! must see it. If one of these fails, the wire format changed: bump `VERSION`.
    use super::*;
    use crate::window::page::Page;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn header_and_config_block() {
        let mut p = Page::new();
        let cfg = WindowConfig {
            image_size: 0x01E0_0000, // 30 MiB
            load_offset: 0x1000,
            algo: Algo::Crc32c,
            mode: Mode::Pull,
            epoch: 3,
            chunk_size: 0x10_0000,
            ring_size: 0x40_0000,
        };
        p.apply(&encode_config(0x0400_0000, &cfg));
        assert_eq!(
            hex(&p.bytes()[0x00..0x18]),
            "4d 4e 52 43 48 57 49 4e 02 00 00 00 00 10 00 00 00 00 00 04 00 00 00 00"
        );
        assert_eq!(
            hex(&p.bytes()[0x40..0x5c]),
            "00 00 e0 01 00 00 00 00 00 10 00 00 00 00 00 00 01 00 00 00 01 00 00 00 03 00 00 00"
        );
        assert_eq!(hex(&p.bytes()[0x60..0x70]), "00 00 10 00 00 00 00 00 00 00 40 00 00 00 00 00");
    }

    #[test]
    fn ok_command_block() {
        let mut p = Page::new();
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&[0xe3, 0x06, 0x92, 0x83]);
        // Candidate 1's block (0x480), epoch 7.
        p.apply(&encode_command(1, 5, 7, &Command::Ok { attempt: 2, digest: Digest(d) }));
        assert_eq!(
            hex(&p.bytes()[0x480..0x4a0]),
            "05 00 00 00 03 00 00 00 02 00 00 00 00 00 00 00 07 00 00 00 00 00 00 00 e3 06 92 83 00 00 00 00"
        );
        assert!(p.bytes()[0x4a0..0x4b8].iter().all(|b| *b == 0));
        assert!(p.bytes()[..0x480].iter().all(|b| *b == 0), "only block 1 is written");
    }

    #[test]
    fn abort_command_block() {
        let mut p = Page::new();
        p.apply(&encode_command(0, 9, 1, &Command::Abort { reason: AbortReason::ChecksumMismatch }));
        assert_eq!(
            hex(&p.bytes()[0x400..0x414]),
            "09 00 00 00 04 00 00 00 00 00 00 00 01 00 00 00 01 00 00 00"
        );
    }

    #[test]
    fn verified_status_block() {
        let mut p = Page::new();
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        p.apply(&encode_status(2, 3, &Status::Verified { attempt: 1, digest: Digest(d) }));
        assert_eq!(hex(&p.bytes()[0x140..0x144]), "03 00 00 00");
        assert_eq!(
            hex(&p.bytes()[0x100..0x120]),
            "02 00 00 00 02 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 88 77 66 55 44 33 22 11"
        );
    }

    #[test]
    fn ready_and_failed_status_blocks() {
        let mut p = Page::new();
        p.apply(&encode_status(1, 0, &Status::Ready { pid: 0x1234 }));
        assert_eq!(
            hex(&p.bytes()[0x100..0x118]),
            "01 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 34 12 00 00 00 00 00 00"
        );
        p.apply(&encode_status(2, 0, &Status::Failed { attempt: 3, error: FailCode::OkMismatch }));
        assert_eq!(hex(&p.bytes()[0x100..0x110]), "02 00 00 00 03 00 00 00 03 00 00 00 04 00 00 00");
    }

    #[test]
    fn report_block() {
        let mut p = Page::new();
        p.apply(&encode_report("hello, monarch"));
        assert_eq!(hex(&p.bytes()[0x180..0x184]), "0e 00 00 00");
        assert_eq!(&p.bytes()[0x188..0x188 + 14], b"hello, monarch");
    }

    #[test]
    fn signature_block() {
        let mut p = Page::new();
        p.apply(&encode_signature(Some(b"monarch-sig v1 x\n")).unwrap());
        assert_eq!(hex(&p.bytes()[0x800..0x804]), "11 00 00 00");
        assert_eq!(&p.bytes()[0x808..0x808 + 17], b"monarch-sig v1 x\n");
        assert_eq!(decode_signature(&|r| p.read(r)).unwrap().as_deref(), Some(&b"monarch-sig v1 x\n"[..]));
        // Unsigned: the whole block is cleared, so an earlier record never lingers.
        p.apply(&encode_signature(None).unwrap());
        assert!(p.bytes()[0x800..0x908].iter().all(|b| *b == 0));
        assert_eq!(decode_signature(&|r| p.read(r)).unwrap(), None);
        assert!(encode_signature(Some(&[b'x'; 257])).is_none());
        // A peer's length beyond the block is refused, naming the register.
        p.apply(&[(layout::SIG_LEN, 257)]);
        let e = decode_signature(&|r| p.read(r)).unwrap_err();
        assert!(e.to_string().contains("sig.len"), "{e}");
    }
}
