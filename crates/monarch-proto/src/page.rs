//! An in-memory register page: the reference model of the layout, used by the golden-byte
//! tests, the model checker and any test that needs a window without shared memory.

use crate::layout::{self, Reg, Width};
use crate::msg::Write;

/// A register page held in ordinary memory.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Page(Vec<u8>);

impl Default for Page {
    fn default() -> Self {
        Page::new()
    }
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Page({} bytes)", self.0.len())
    }
}

impl Page {
    /// An all-zero page.
    pub fn new() -> Page {
        Page(vec![0; layout::REGS_SIZE])
    }

    /// A page from raw bytes (shorter input is zero-extended, longer truncated).
    pub fn from_bytes(bytes: &[u8]) -> Page {
        let mut p = Page::new();
        let n = bytes.len().min(layout::REGS_SIZE);
        p.0[..n].copy_from_slice(&bytes[..n]);
        p
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Read a register (little-endian).
    pub fn read(&self, r: Reg) -> u64 {
        match r.width {
            Width::W32 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(&self.0[r.offset..r.offset + 4]);
                u64::from(u32::from_le_bytes(b))
            }
            Width::W64 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.0[r.offset..r.offset + 8]);
                u64::from_le_bytes(b)
            }
        }
    }

    /// Write a register (little-endian; a 32-bit register takes the low half of `v`).
    pub fn write(&mut self, r: Reg, v: u64) {
        match r.width {
            Width::W32 => self.0[r.offset..r.offset + 4].copy_from_slice(&v.to_le_bytes()[..4]),
            Width::W64 => self.0[r.offset..r.offset + 8].copy_from_slice(&v.to_le_bytes()),
        }
    }

    /// Apply writes in order.
    pub fn apply(&mut self, writes: &[Write]) {
        for (r, v) in writes {
            self.write(*r, *v);
        }
    }
}

#[cfg(test)]
mod golden {
    //! Golden bytes: the register page as another implementation (firmware, a C agent)
    //! must see it. If one of these fails, the wire format changed: bump `VERSION`.
    use super::*;
    use crate::checksum::{Algo, Digest};
    use crate::msg::*;

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
}
