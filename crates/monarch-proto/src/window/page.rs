//! An in-memory register page: the reference model of the layout, used by the golden-byte
//! tests, the model checker and any test that needs a window without shared memory.

use crate::window::layout::{self, Reg, Width, Write};

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
