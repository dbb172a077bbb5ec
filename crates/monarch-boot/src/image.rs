//! Image retrieval (the seed's "retrieve the OS image, determine its size and checksum") and
//! the built-in demo payload.
//!
//! The demo payload is the small `monarch-payload` program padded to the requested size,
//! followed by a trailer holding a banner text. Padding after an ELF file does not change
//! what it runs; the program reads its own bytes when it runs (from `/proc/self/exe`, i.e.
//! the delivered memfd) and reports the banner and its own checksum, which proves that what
//! runs is what was delivered.

use crate::topology::{ImageSource, fmt_size};
use monarch_proto::{Algo, Digest};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Last 8 bytes of a payload image.
pub const TRAILER_MAGIC: &[u8; 8] = b"MNRCHPLD";
/// Trailer length: banner length (u32 LE), reserved (u32), magic.
pub const TRAILER_LEN: usize = 16;
/// Longest banner.
pub const BANNER_MAX: usize = 160;

/// Errors retrieving an image.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("image {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The payload program is missing.
    #[error("the demo payload program {} is missing ({source}); build it with `cargo build --release` (it is the monarch-payload binary, installed next to monarch), or set MONARCH_PAYLOAD to its path", path.display())]
    NoPayload {
        /// Where it was looked for.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The payload does not fit the requested size.
    #[error("the demo payload program is {program} bytes and cannot be padded to image_size = {}; use an image_size of at least {}", fmt_size(*size), fmt_size(program.div_ceil(1 << 20) << 20))]
    TooSmall {
        /// Requested size.
        size: u64,
        /// Program size plus trailer.
        program: u64,
    },
    /// An empty image.
    #[error("image {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// A retrieved image, held in the monarch's memory.
#[derive(Clone)]
pub struct Image {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The retrieved checksum.
    pub digest: Digest,
    /// Its algorithm.
    pub algo: Algo,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({} bytes, {} {})", self.bytes.len(), self.algo, self.digest.to_hex(self.algo))
    }
}

/// Where the demo payload program is: `$MONARCH_PAYLOAD`, or next to the running binary.
pub fn payload_program() -> PathBuf {
    if let Some(p) = std::env::var_os("MONARCH_PAYLOAD") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("monarch"));
    exe.with_file_name("monarch-payload")
}

/// Build a demo payload image of exactly `size` bytes carrying `banner`.
pub fn build_payload(program: &Path, size: u64, banner: &str) -> Result<Vec<u8>, ImageError> {
    let mut bytes =
        std::fs::read(program).map_err(|source| ImageError::NoPayload { path: program.into(), source })?;
    let banner = truncate(banner, BANNER_MAX);
    let need = (bytes.len() + banner.len() + TRAILER_LEN) as u64;
    if need > size {
        return Err(ImageError::TooSmall { size, program: need });
    }
    let pad = usize::try_from(size - need).map_err(|_| ImageError::TooSmall { size, program: need })?;
    bytes.resize(bytes.len() + pad, 0);
    bytes.extend_from_slice(banner.as_bytes());
    bytes.extend_from_slice(&u32::try_from(banner.len()).unwrap_or(0).to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(TRAILER_MAGIC);
    Ok(bytes)
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The banner in a payload image's trailer, if it has one (input is untrusted).
pub fn read_banner(image: &[u8]) -> Option<String> {
    let t = image.len().checked_sub(TRAILER_LEN)?;
    if &image[t + 8..] != TRAILER_MAGIC {
        return None;
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&image[t..t + 4]);
    let len = usize::try_from(u32::from_le_bytes(len)).ok()?.min(BANNER_MAX);
    let start = t.checked_sub(len)?;
    Some(String::from_utf8_lossy(&image[start..t]).into_owned())
}

/// Retrieve an image and compute its retrieved checksum.
pub fn retrieve(source: &ImageSource, algo: Algo) -> Result<Image, ImageError> {
    let bytes = match source {
        ImageSource::File(path) => {
            let b = std::fs::read(path).map_err(|source| ImageError::Read { path: path.clone(), source })?;
            if b.is_empty() {
                return Err(ImageError::Empty { path: path.clone() });
            }
            b
        }
        ImageSource::Builtin { size, banner } => build_payload(&payload_program(), *size, banner)?,
    };
    let digest = algo.digest(&bytes);
    Ok(Image { bytes, digest, algo })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_images_have_the_exact_size_and_a_readable_banner() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("prog");
        std::fs::write(&prog, b"\x7fELF pretend program").unwrap();
        let img = build_payload(&prog, 4096, "hello from lc1").unwrap();
        assert_eq!(img.len(), 4096);
        assert!(img.starts_with(b"\x7fELF pretend program"));
        assert_eq!(read_banner(&img).as_deref(), Some("hello from lc1"));
        let e = build_payload(&prog, 10, "x").unwrap_err();
        assert!(e.to_string().contains("use an image_size of at least 1MiB"), "{e}");
        let e = build_payload(&dir.path().join("missing"), 10, "x").unwrap_err();
        assert!(e.to_string().contains("MONARCH_PAYLOAD"), "{e}");
    }

    #[test]
    fn banners_from_untrusted_bytes_never_panic() {
        assert_eq!(read_banner(b""), None);
        assert_eq!(read_banner(b"MNRCHPLD"), None);
        let mut evil = vec![0xffu8; 4];
        evil.extend_from_slice(&[0; 4]);
        evil.extend_from_slice(TRAILER_MAGIC);
        assert_eq!(read_banner(&evil), None, "length beyond the start");
    }
}
