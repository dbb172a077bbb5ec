//! A cluster's memory bank, emulated by a file in the run folder (`bank-<cluster>`) that the
//! cluster's cores map shared; its zones hold what the boot puts there. The boot-code zone
//! starts with a small header, the *handoff record*: the kernel's length and BLAKE3 digest
//! and the description's length and CRC-32C, written by whoever filled the bank (the
//! monarch for cluster 0, a head for its cluster) and checked by every core against what it
//! finds (the checksum handshake of the phased boot).

use memmap2::MmapMut;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

/// The handoff record's magic.
pub const MAGIC: [u8; 8] = *b"MNRCHBC1";
/// The handoff record's size.
pub const RECORD: usize = 64;

/// A zone's place in a bank: (offset, maximum size).
pub type Span = (u64, u64);

/// A mapped bank.
pub struct Bank {
    map: MmapMut,
    path: PathBuf,
}

/// The bank file of `cluster` in `run_dir`.
pub fn path(run_dir: &Path, cluster: u16) -> PathBuf {
    run_dir.join(format!("bank-{cluster}"))
}

impl Bank {
    /// Create (or reuse, zeroed) the bank file of `size` bytes and map it.
    pub fn create(path: &Path, size: u64) -> std::io::Result<Bank> {
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        f.set_len(size)?;
        Self::map(&f, path)
    }

    /// Map an existing bank file.
    pub fn open(path: &Path) -> std::io::Result<Bank> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Self::map(&f, path)
    }

    fn map(f: &std::fs::File, path: &Path) -> std::io::Result<Bank> {
        let map = monarch_drivers::memimage::map_shared(f)?;
        Ok(Bank { map, path: path.to_path_buf() })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `len` bytes of a zone (checked against the bank and the zone).
    pub fn read(&self, zone: Span, len: u64) -> Result<&[u8], BankError> {
        let (base, max) = zone;
        let misfit = BankError::DoesNotFit { len, base, max, bank: self.len() };
        if len > max || base.saturating_add(len) > self.len() {
            return Err(misfit);
        }
        let (Ok(a), Ok(b)) = (usize::try_from(base), usize::try_from(base + len)) else { return Err(misfit) };
        Ok(&self.map[a..b])
    }

    /// Write `bytes` at the start of a zone.
    pub fn write(&mut self, zone: Span, bytes: &[u8]) -> Result<(), BankError> {
        let (base, max) = zone;
        let len = bytes.len() as u64;
        let misfit = BankError::WriteDoesNotFit { len, base, max, bank: self.len() };
        if len > max || base.saturating_add(len) > self.len() {
            return Err(misfit);
        }
        let Ok(a) = usize::try_from(base) else { return Err(misfit) };
        self.map[a..a + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
}

/// A bank's contents that are not what they should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BankError {
    /// Bytes to read that would not fit their zone or the bank.
    #[error("{len} bytes at {base:#x} do not fit the zone (max {max}) or the bank ({bank} bytes)")]
    DoesNotFit {
        /// How many bytes.
        len: u64,
        /// The zone's offset in the bank.
        base: u64,
        /// The zone's maximum.
        max: u64,
        /// The bank's size.
        bank: u64,
    },
    /// Bytes to write that would not fit their zone or the bank.
    #[error("{len} bytes do not fit the zone at {base:#x} (max {max}) of a {bank}-byte bank")]
    WriteDoesNotFit {
        /// How many bytes.
        len: u64,
        /// The zone's offset in the bank.
        base: u64,
        /// The zone's maximum.
        max: u64,
        /// The bank's size.
        bank: u64,
    },
    /// The boot-code zone holds no record.
    #[error("no handoff record in the boot-code zone: the bank was not filled")]
    NoRecord,
    /// The kernel is not the one the record names.
    #[error(
        "kernel mismatch: {len} bytes, BLAKE3 {digest}…, where the record says {want_len} bytes, BLAKE3 {want_digest}…"
    )]
    Kernel {
        /// Its length.
        len: u64,
        /// The first bytes of its digest, in hex.
        digest: String,
        /// The length the record names.
        want_len: u64,
        /// The first bytes of the digest the record names.
        want_digest: String,
    },
    /// The description is not the one the record names.
    #[error("description mismatch: CRC-32C {crc:08x}, where the record says {want:08x}")]
    Description {
        /// Its CRC-32C.
        crc: u32,
        /// The record's.
        want: u32,
    },
}

/// The phased boot's processes report a failure as one line of text.
impl From<BankError> for String {
    fn from(e: BankError) -> String {
        e.to_string()
    }
}

/// What a filled bank holds: its kernel and description, by length and digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The kernel's length.
    pub kernel_len: u64,
    /// Its BLAKE3 digest.
    pub kernel_digest: [u8; 32],
    /// The description's length.
    pub arch_len: u32,
    /// Its CRC-32C.
    pub arch_crc: u32,
}

impl Record {
    /// The record of a kernel and a description.
    pub fn of(kernel: &[u8], arch: &[u8]) -> Record {
        Record {
            kernel_len: kernel.len() as u64,
            kernel_digest: *blake3::hash(kernel).as_bytes(),
            arch_len: u32::try_from(arch.len()).unwrap_or(u32::MAX),
            arch_crc: crc32c::crc32c(arch),
        }
    }

    /// Its bytes.
    pub fn encode(&self) -> [u8; RECORD] {
        let mut b = [0u8; RECORD];
        b[..8].copy_from_slice(&MAGIC);
        b[8..16].copy_from_slice(&self.kernel_len.to_le_bytes());
        b[16..48].copy_from_slice(&self.kernel_digest);
        b[48..52].copy_from_slice(&self.arch_len.to_le_bytes());
        b[52..56].copy_from_slice(&self.arch_crc.to_le_bytes());
        b
    }

    /// Read one (untrusted: another process wrote it).
    pub fn decode(b: &[u8]) -> Result<Record, BankError> {
        if b.len() < RECORD || b[..8] != MAGIC {
            return Err(BankError::NoRecord);
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let mut kernel_digest = [0u8; 32];
        kernel_digest.copy_from_slice(&b[16..48]);
        Ok(Record { kernel_len: u64_at(8), kernel_digest, arch_len: u32_at(48), arch_crc: u32_at(52) })
    }

    /// Whether `kernel` and `arch` are what the record names; the mismatch, if not.
    pub fn check(&self, kernel: &[u8], arch: &[u8]) -> Result<(), BankError> {
        let got = Record::of(kernel, arch);
        if got.kernel_digest != self.kernel_digest || got.kernel_len != self.kernel_len {
            return Err(BankError::Kernel {
                len: got.kernel_len,
                digest: hex(&got.kernel_digest[..8]),
                want_len: self.kernel_len,
                want_digest: hex(&self.kernel_digest[..8]),
            });
        }
        if got.arch_crc != self.arch_crc || got.arch_len != self.arch_len {
            return Err(BankError::Description { crc: got.arch_crc, want: self.arch_crc });
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_catches_a_changed_kernel() {
        let r = Record::of(b"kernel", b"arch");
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert!(r.check(b"kernel", b"arch").is_ok());
        assert!(r.check(b"kernal", b"arch").unwrap_err().to_string().contains("kernel mismatch"));
        assert!(r.check(b"kernel", b"arcH").unwrap_err().to_string().contains("description mismatch"));
        assert!(Record::decode(&[0u8; RECORD]).is_err());
    }

    #[test]
    fn a_bank_file_holds_zones() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Bank::create(&dir.path().join("bank-0"), 1 << 20).unwrap();
        b.write((4096, 16), b"hello").unwrap();
        assert!(b.write((4096, 4), b"hello").is_err(), "larger than its zone");
        assert!(b.write(((1 << 20) - 2, 16), b"hello").is_err(), "past the bank");
        let again = Bank::open(b.path()).unwrap();
        assert_eq!(again.read((4096, 16), 5).unwrap(), b"hello");
    }
}
