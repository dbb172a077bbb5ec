//! The window register page: offsets, widths and constants (protocol version 2).
//!
//! A window is a register page of [`REGS_SIZE`] bytes followed by the data area. All
//! registers are little-endian, naturally aligned 32- or 64-bit words. The primary (monarch)
//! owns the header, config and command blocks; the secondary owns the status and report
//! blocks. Each side writes only its own registers. `docs/window-protocol.md` is the
//! normative description; the golden-byte tests at the bottom of `msg.rs` pin it down.
//!
//! This file knows registers only: which values go in them (message codes, the config
//! block) is the messages' business, one level up in `msg.rs`.

/// `b"MNRCHWIN"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MNRCHWIN");
/// Protocol version this crate speaks.
pub const VERSION: u32 = 2;
/// Size of the register page; the data area starts at this offset in the window.
pub const REGS_SIZE: usize = 4096;

/// Width of a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Width {
    /// A 32-bit word, 4-byte aligned.
    W32,
    /// A 64-bit word, 8-byte aligned.
    W64,
}

/// A register: its offset in the register page, its width and its name (for errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reg {
    /// Byte offset from the start of the register page.
    pub offset: usize,
    /// Width of the word.
    pub width: Width,
    /// Name used in error messages and docs.
    pub name: &'static str,
}

pub(crate) const fn r32(offset: usize, name: &'static str) -> Reg {
    Reg { offset, width: Width::W32, name }
}
pub(crate) const fn r64(offset: usize, name: &'static str) -> Reg {
    Reg { offset, width: Width::W64, name }
}

// --- Header block (primary, written once before release) ---------------------------------
/// Magic, [`MAGIC`].
pub const HDR_MAGIC: Reg = r64(0x000, "hdr.magic");
/// Protocol version, [`VERSION`].
pub const HDR_VERSION: Reg = r32(0x008, "hdr.version");
/// Size of the register page = offset of the data area.
pub const HDR_REGS_SIZE: Reg = r32(0x00C, "hdr.regs_size");
/// Size of the data area in bytes.
pub const HDR_DATA_SIZE: Reg = r64(0x010, "hdr.data_size");

// --- Config block (primary, written before the secondary is released) -------------------
/// Size limit: the image size in bytes (the reference design's BAR size).
pub const CFG_IMAGE_SIZE: Reg = r64(0x040, "cfg.image_size");
/// Load offset of the image inside the data area (the reference design's address translation).
pub const CFG_LOAD_OFFSET: Reg = r64(0x048, "cfg.load_offset");
/// Checksum algorithm the secondary must use for the written checksum.
pub const CFG_ALGO: Reg = r32(0x050, "cfg.algo");
/// Transfer mode: 0 push (primary copies), 1 pull (secondary copies).
pub const CFG_MODE: Reg = r32(0x054, "cfg.mode");
/// Monarch epoch (generation); 0 until election lands.
pub const CFG_EPOCH: Reg = r32(0x058, "cfg.epoch");
/// Push (streaming): bytes per chunk; every chunk has its own digest in the manifest.
pub const CFG_CHUNK_SIZE: Reg = r64(0x060, "cfg.chunk_size");
/// Push (streaming): bytes of ring at `cfg.load_offset`, a whole number of chunks.
pub const CFG_RING_SIZE: Reg = r64(0x068, "cfg.ring_size");

// --- Command blocks: one per monarch candidate ------------------------------------------
// Version 2 gives every candidate its own command block so that each register still has one
// writer when a new monarch takes over while the old one is only paused (monarch election): a
// seqlock with two writers can tear. Every command carries the writer's epoch; a secondary
// follows the block of the highest epoch it has seen and ignores (fences) the others.

/// Number of command blocks, i.e. of monarch candidates a window can serve.
pub const CMD_BLOCKS: usize = 8;
/// Offset of command block 0.
pub const CMD_BLOCK_BASE: usize = 0x400;
/// Bytes between command blocks.
pub const CMD_BLOCK_STRIDE: usize = 0x80;

/// The registers of one command block (candidate `k` writes block `k`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CmdBlock {
    /// Publication word: incremented (never 0 once posted) after the rest of the block is written.
    pub seq: Reg,
    /// Command code (one of the messages' `command_code`s).
    pub code: Reg,
    /// Attempt number the command refers to (1-based).
    pub attempt: Reg,
    /// Reason code for ABORT.
    pub reason: Reg,
    /// The writer's monarch epoch (generation); part of every command.
    pub epoch: Reg,
    /// Accepted checksum (OK only): 4 little-endian u64 words, 32 bytes.
    pub digest: [Reg; 4],
    /// Push: chunk positions this writer published into the ring.
    pub produced: Reg,
    /// Push: repairs this writer did (incremented after re-writing a refused chunk).
    pub repaired: Reg,
}

/// Command block `k` (`k < CMD_BLOCKS`; larger values wrap, so a bad index from a peer can
/// never address outside the page).
pub const fn cmd(k: usize) -> CmdBlock {
    let b = CMD_BLOCK_BASE + (k % CMD_BLOCKS) * CMD_BLOCK_STRIDE;
    CmdBlock {
        seq: r32(b, "cmd.seq"),
        code: r32(b + 0x04, "cmd.code"),
        attempt: r32(b + 0x08, "cmd.attempt"),
        reason: r32(b + 0x0C, "cmd.reason"),
        epoch: r32(b + 0x10, "cmd.epoch"),
        digest: [
            r64(b + 0x18, "cmd.digest[0]"),
            r64(b + 0x20, "cmd.digest[1]"),
            r64(b + 0x28, "cmd.digest[2]"),
            r64(b + 0x30, "cmd.digest[3]"),
        ],
        produced: r64(b + 0x40, "stream.produced"),
        repaired: r64(b + 0x48, "stream.repaired"),
    }
}

impl CmdBlock {
    /// Every register of the block.
    pub const fn regs(&self) -> [Reg; 11] {
        let d = self.digest;
        [
            self.seq,
            self.code,
            self.attempt,
            self.reason,
            self.epoch,
            d[0],
            d[1],
            d[2],
            d[3],
            self.produced,
            self.repaired,
        ]
    }
}

// --- Status block: the secondary's message register --------------------------------------
/// Publication word, as a command block's [`CmdBlock::seq`].
pub const ST_SEQ: Reg = r32(0x100, "status.seq");
/// Status code (one of the messages' `status_code`s).
pub const ST_CODE: Reg = r32(0x104, "status.code");
/// Attempt the status refers to.
pub const ST_ATTEMPT: Reg = r32(0x108, "status.attempt");
/// Failure code for FAILED.
pub const ST_ERROR: Reg = r32(0x10C, "status.error");
/// Process id (or any id) of the secondary's agent or running image.
pub const ST_PID: Reg = r64(0x110, "status.pid");
/// Written checksum (VERIFIED): 32 bytes.
pub const ST_DIGEST: [Reg; 4] = [
    r64(0x118, "status.digest[0]"),
    r64(0x120, "status.digest[1]"),
    r64(0x128, "status.digest[2]"),
    r64(0x130, "status.digest[3]"),
];
/// Progress: bytes of the current attempt verified so far (advisory, not sequenced).
pub const ST_PROGRESS: Reg = r64(0x138, "status.progress");
/// The epoch of the monarch this status answers (part of every status).
pub const ST_EPOCH: Reg = r32(0x140, "status.epoch");
/// Commands ignored because they came from an older epoch or a deposed monarch's block
/// (advisory counter, not sequenced).
pub const ST_FENCED: Reg = r64(0x148, "status.fenced");

// --- Report block: free text from the running image (secondary) -------------------------
/// Length in bytes of the report text (at most [`REPORT_MAX`]).
pub const REPORT_LEN: Reg = r32(0x180, "report.len");
/// First word of the report text; [`REPORT_MAX`] bytes follow as u64 words.
pub const REPORT_TEXT: usize = 0x188;
/// Maximum report length in bytes.
pub const REPORT_MAX: usize = 256;

// --- Stream block (push mode): the ring's consumer counters (the producer's are in each
// command block) ---------------------------------------------------------------------------
/// Secondary: chunks verified and released (their ring slots are free again), counted over
/// the whole handshake.
pub const STREAM_CONSUMED: Reg = r64(0x380, "stream.consumed");
/// Secondary: 1 + index of the chunk that failed its digest (valid when `nak_seq` changes).
pub const STREAM_NAK: Reg = r64(0x388, "stream.nak");
/// Secondary: incremented after each `stream.nak` is written.
pub const STREAM_NAK_SEQ: Reg = r64(0x390, "stream.nak_seq");

// --- Signature block (primary, written with the config, before RELEASE) -----------------
// An image's detached signature (`crate::sign`'s `.sig` record) travels here. It sits in
// space versions 2 left reserved and zero: a secondary that does not know it ignores it,
// which is safe because whether a signature is required is the secondary's own
// configuration, never the window's; a secondary that requires one finds `sig.len` 0 on
// an older monarch and refuses the image.
/// Length in bytes of the `.sig` record (0: the image comes unsigned; at most [`SIG_MAX`]).
pub const SIG_LEN: Reg = r32(0x800, "sig.len");
/// First word of the `.sig` record; [`SIG_MAX`] bytes follow as u64 words.
pub const SIG_RECORD: usize = 0x808;
/// Longest record the block holds (`crate::sign::SIG_MAX`).
pub const SIG_MAX: usize = 256;

// --- Life block: after the handoff, while the chassis is supervised ----------------------
// In space version 2 left reserved and zero. A monarch that does not supervise leaves
// `life.beat_period` 0, and an image that does not know the block never looks at it.
/// Secondary (the running image): heartbeat counter, incremented every `life.beat_period`.
pub const LIFE_BEAT: Reg = r64(0xA00, "life.beat");
/// Secondary (the running image): bit 0 ready (its services are up), bit 1 fault (it
/// reports a failure it cannot recover from by itself).
pub const LIFE_FLAGS: Reg = r32(0xA08, "life.flags");
/// Secondary: publication word of the answer block (seqlock, as `status.seq`).
pub const ANSWER_SEQ: Reg = r32(0xA10, "answer.seq");
/// Secondary: the `notice.seq` this answer is for.
pub const ANSWER_NOTICE: Reg = r32(0xA14, "answer.notice");
/// Secondary: 1 ACK (done: go on), 2 DEFER (not yet, see the reason).
pub const ANSWER_CODE: Reg = r32(0xA18, "answer.code");
/// Secondary: bytes of the answer's reason text.
pub const ANSWER_LEN: Reg = r32(0xA1C, "answer.len");
/// Secondary: first word of the answer's reason text (UTF-8, [`LIFE_TEXT_MAX`] bytes).
pub const ANSWER_TEXT: usize = 0xA20;
/// Primary: how often the running image must beat, in milliseconds (0: not supervised).
pub const LIFE_BEAT_PERIOD: Reg = r32(0xB00, "life.beat_period");
/// Primary: non-zero while the monarch holds this secondary at its rendezvous (configuration
/// retry: its dependencies are not ready yet); the agent keeps waiting for RELEASE.
pub const LIFE_HOLD: Reg = r32(0xB04, "life.hold");
/// Primary: publication word of the notice block (seqlock, as a command block's `seq`).
pub const NOTICE_SEQ: Reg = r32(0xB08, "notice.seq");
/// Primary: notice code (`life::notice_code`).
pub const NOTICE_CODE: Reg = r32(0xB0C, "notice.code");
/// Primary: milliseconds the secondary has to answer before the supervisor goes on anyway
/// (0: forced, no answer is awaited).
pub const NOTICE_DEADLINE: Reg = r64(0xB10, "notice.deadline");
/// Primary: the writer's epoch, as in every command.
pub const NOTICE_EPOCH: Reg = r32(0xB18, "notice.epoch");
/// Primary: bytes of the notice's text.
pub const NOTICE_LEN: Reg = r32(0xB1C, "notice.len");
/// Primary: first word of the notice's text (which processor, why).
pub const NOTICE_TEXT: usize = 0xB20;
/// Primary: bytes of the list of missing dependencies.
pub const MISSING_LEN: Reg = r32(0xBA0, "life.missing_len");
/// Primary: first word of the comma-separated ids of the dependencies this secondary runs
/// without (degraded), kept current while it runs.
pub const MISSING_TEXT: usize = 0xBA8;
/// Longest text of the life block's text fields.
pub const LIFE_TEXT_MAX: usize = 128;

// --- Doorbells: each on its own cache line ------------------------------------------------
/// Rung (incremented) by the primary after posting a command.
pub const DB_TO_SECONDARY: Reg = r32(0x300, "doorbell.to_secondary");
/// Rung by the secondary after posting a status.
pub const DB_TO_PRIMARY: Reg = r32(0x340, "doorbell.to_primary");

/// Every register, for checks and documentation.
pub const ALL: &[Reg] = &[
    HDR_MAGIC,
    HDR_VERSION,
    HDR_REGS_SIZE,
    HDR_DATA_SIZE,
    CFG_IMAGE_SIZE,
    CFG_LOAD_OFFSET,
    CFG_ALGO,
    CFG_MODE,
    CFG_EPOCH,
    CFG_CHUNK_SIZE,
    CFG_RING_SIZE,
    ST_SEQ,
    ST_CODE,
    ST_ATTEMPT,
    ST_ERROR,
    ST_PID,
    ST_DIGEST[0],
    ST_DIGEST[1],
    ST_DIGEST[2],
    ST_DIGEST[3],
    ST_PROGRESS,
    ST_EPOCH,
    ST_FENCED,
    REPORT_LEN,
    SIG_LEN,
    STREAM_CONSUMED,
    STREAM_NAK,
    STREAM_NAK_SEQ,
    DB_TO_SECONDARY,
    DB_TO_PRIMARY,
    LIFE_BEAT,
    LIFE_FLAGS,
    ANSWER_SEQ,
    ANSWER_NOTICE,
    ANSWER_CODE,
    ANSWER_LEN,
    LIFE_BEAT_PERIOD,
    LIFE_HOLD,
    NOTICE_SEQ,
    NOTICE_CODE,
    NOTICE_DEADLINE,
    NOTICE_EPOCH,
    NOTICE_LEN,
    MISSING_LEN,
];

/// One register write: the register and the value (a 32-bit register takes the low half).
pub type Write = (Reg, u64);

/// Total window length for a data area of `data_size` bytes, or `None` on overflow.
pub fn window_len(data_size: u64) -> Option<u64> {
    data_size.checked_add(REGS_SIZE as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_are_aligned_inside_the_page_and_disjoint() {
        let mut used = [false; REGS_SIZE];
        let blocks: Vec<Reg> = (0..CMD_BLOCKS).flat_map(|k| cmd(k).regs()).collect();
        for r in ALL.iter().chain(&blocks) {
            let w = match r.width {
                Width::W32 => 4,
                Width::W64 => 8,
            };
            assert_eq!(r.offset % w, 0, "{} misaligned", r.name);
            assert!(r.offset + w <= REGS_SIZE, "{} outside the page", r.name);
            for b in &mut used[r.offset..r.offset + w] {
                assert!(!*b, "{} overlaps another register", r.name);
                *b = true;
            }
        }
        const { assert!(REPORT_TEXT + REPORT_MAX <= DB_TO_SECONDARY.offset) };
        const { assert!(CMD_BLOCK_BASE + CMD_BLOCKS * CMD_BLOCK_STRIDE <= REGS_SIZE) };
        assert_eq!(cmd(CMD_BLOCKS), cmd(0), "a block index from a peer wraps inside the page");
        assert_eq!(REPORT_TEXT % 8, 0);
        const { assert!(SIG_RECORD + SIG_MAX <= REGS_SIZE) };
        const { assert!(CMD_BLOCK_BASE + CMD_BLOCKS * CMD_BLOCK_STRIDE <= SIG_LEN.offset) };
        assert_eq!(SIG_RECORD % 8, 0);
        assert_eq!(SIG_MAX, crate::sign::SIG_MAX);
        const { assert!(SIG_RECORD + SIG_MAX <= LIFE_BEAT.offset) };
        const { assert!(ANSWER_TEXT + LIFE_TEXT_MAX <= LIFE_BEAT_PERIOD.offset) };
        const { assert!(NOTICE_TEXT + LIFE_TEXT_MAX <= MISSING_LEN.offset) };
        const { assert!(MISSING_TEXT + LIFE_TEXT_MAX <= REGS_SIZE) };
    }

    #[test]
    fn doorbells_sit_on_their_own_cache_lines() {
        assert_eq!(DB_TO_SECONDARY.offset % 64, 0);
        assert_eq!(DB_TO_PRIMARY.offset % 64, 0);
        assert_ne!(DB_TO_SECONDARY.offset / 64, DB_TO_PRIMARY.offset / 64);
    }

    #[test]
    fn magic_reads_as_ascii_in_memory() {
        assert_eq!(&MAGIC.to_le_bytes(), b"MNRCHWIN");
    }
}
