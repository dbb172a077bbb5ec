//! The window register page: offsets, widths and constants (protocol version 1).
//!
//! A window is a register page of [`REGS_SIZE`] bytes followed by the data area. All
//! registers are little-endian, naturally aligned 32- or 64-bit words. The primary (monarch)
//! owns the header, config and command blocks; the secondary owns the status and report
//! blocks. Each side writes only its own registers. `docs/window-protocol.md` is the
//! normative description; the golden-byte tests at the bottom of this file pin it down.

/// `b"MNRCHWIN"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MNRCHWIN");
/// Protocol version this crate speaks.
pub const VERSION: u32 = 1;
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

const fn r32(offset: usize, name: &'static str) -> Reg {
    Reg { offset, width: Width::W32, name }
}
const fn r64(offset: usize, name: &'static str) -> Reg {
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
/// Size limit: the image size in bytes (the seed's BAR size).
pub const CFG_IMAGE_SIZE: Reg = r64(0x040, "cfg.image_size");
/// Load offset of the image inside the data area (the seed's address translation).
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

// --- Command block: the primary's message register ---------------------------------------
/// Publication word: incremented (never 0 once posted) after the rest of the block is written.
pub const CMD_SEQ: Reg = r32(0x080, "cmd.seq");
/// Command code, see [`crate::msg::command_code`].
pub const CMD_CODE: Reg = r32(0x084, "cmd.code");
/// Attempt number the command refers to (1-based).
pub const CMD_ATTEMPT: Reg = r32(0x088, "cmd.attempt");
/// Reason code for ABORT.
pub const CMD_REASON: Reg = r32(0x08C, "cmd.reason");
/// Accepted checksum (OK only): 4 little-endian u64 words, 32 bytes.
pub const CMD_DIGEST: [Reg; 4] = [
    r64(0x090, "cmd.digest[0]"),
    r64(0x098, "cmd.digest[1]"),
    r64(0x0A0, "cmd.digest[2]"),
    r64(0x0A8, "cmd.digest[3]"),
];

// --- Status block: the secondary's message register --------------------------------------
/// Publication word, as [`CMD_SEQ`].
pub const ST_SEQ: Reg = r32(0x100, "status.seq");
/// Status code, see [`crate::msg::status_code`].
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

// --- Report block: free text from the running image (secondary) -------------------------
/// Length in bytes of the report text (at most [`REPORT_MAX`]).
pub const REPORT_LEN: Reg = r32(0x180, "report.len");
/// First word of the report text; [`REPORT_MAX`] bytes follow as u64 words.
pub const REPORT_TEXT: usize = 0x188;
/// Maximum report length in bytes.
pub const REPORT_MAX: usize = 256;

// --- Stream block (push mode): the ring's producer and consumer counters -----------------
/// Primary: chunks published into the ring, counted over the whole handshake.
pub const STREAM_PRODUCED: Reg = r64(0x2C0, "stream.produced");
/// Primary: repairs done (incremented after re-writing a chunk the secondary refused).
pub const STREAM_REPAIRED: Reg = r64(0x2C8, "stream.repaired");
/// Secondary: chunks verified and released (their ring slots are free again), counted over
/// the whole handshake.
pub const STREAM_CONSUMED: Reg = r64(0x380, "stream.consumed");
/// Secondary: 1 + index of the chunk that failed its digest (valid when `nak_seq` changes).
pub const STREAM_NAK: Reg = r64(0x388, "stream.nak");
/// Secondary: incremented after each `stream.nak` is written.
pub const STREAM_NAK_SEQ: Reg = r64(0x390, "stream.nak_seq");

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
    CMD_SEQ,
    CMD_CODE,
    CMD_ATTEMPT,
    CMD_REASON,
    CMD_DIGEST[0],
    CMD_DIGEST[1],
    CMD_DIGEST[2],
    CMD_DIGEST[3],
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
    REPORT_LEN,
    STREAM_PRODUCED,
    STREAM_REPAIRED,
    STREAM_CONSUMED,
    STREAM_NAK,
    STREAM_NAK_SEQ,
    DB_TO_SECONDARY,
    DB_TO_PRIMARY,
];

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
        for r in ALL {
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
        const { assert!(REPORT_TEXT + REPORT_MAX <= STREAM_PRODUCED.offset) };
        assert_eq!(REPORT_TEXT % 8, 0);
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
