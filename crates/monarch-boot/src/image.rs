//! Image retrieval (the reference design's "retrieve the OS image, determine its size and checksum") and
//! the built-in demo payload.
//!
//! The demo payload is the small `monarch-payload` program padded to the requested size,
//! followed by a trailer holding a banner text. Padding after an ELF file does not change
//! what it runs; the program reads its own bytes when it runs (from `/proc/self/exe`, i.e.
//! the delivered memfd) and reports the banner and its own checksum, which proves that what
//! runs is what was delivered.

use crate::builtin::truncate;
pub use crate::builtin::{BANNER_MAX, TRAILER_LEN, TRAILER_MAGIC, payload_len, payload_program, read_banner};
use crate::topology::ImageSource;
use crate::values::fmt_size;
use monarch_drivers::{SourceFile, Window, WindowError};
use monarch_proto::checksum::Hasher;
use monarch_proto::{Algo, Digest};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

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

/// Images up to this size are held in the monarch's memory once retrieved; larger ones are
/// streamed from their file.
pub const IN_MEMORY_MAX: u64 = 256 << 20;

/// Where a retrieved image's bytes are.
pub enum ImageData {
    /// In the monarch's memory (built images).
    Memory(Vec<u8>),
    /// In a file, mapped read-only and copied from the page cache chunk by chunk (the
    /// monarch holds no private copy of it).
    File {
        /// The open file (read again to tell whether it changed).
        file: File,
        /// Its mapping, which copies read.
        map: SourceFile,
    },
}

/// A retrieved image: its size, retrieved checksum and per-chunk manifest.
pub struct Image {
    /// The bytes.
    pub data: ImageData,
    /// Size in bytes.
    pub len: u64,
    /// The retrieved checksum.
    pub digest: Digest,
    /// Its algorithm.
    pub algo: Algo,
    /// Chunk size of the manifest (0: no manifest).
    pub chunk_size: u64,
    /// Digest of every chunk (push mode's manifest).
    pub manifest: Vec<Digest>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({} bytes, {} {})", self.len, self.algo, self.digest.to_hex(self.algo))
    }
}

impl Image {
    /// Copy `len` bytes at `image_offset` into the window's data area at `window_offset`.
    pub fn copy_into(
        &self,
        w: &Window,
        window_offset: u64,
        image_offset: u64,
        len: u64,
    ) -> Result<(), WindowError> {
        match &self.data {
            ImageData::File { map, .. } => w.copy_from_source(window_offset, map, image_offset, len),
            ImageData::Memory(b) => {
                let (start, end) = (idx(image_offset), idx(image_offset + len));
                w.write_data(window_offset, &b[start.min(b.len())..end.min(b.len())])
            }
        }
    }

    /// Whether the `len` bytes at `offset` (chunk `k` of the manifest) still have the digest
    /// retrieval took. Only a file image can change under the monarch (someone else writes
    /// it during the boot); one in memory cannot.
    pub fn chunk_unchanged(&self, k: u64, offset: u64, len: u64) -> std::io::Result<bool> {
        let ImageData::File { .. } = &self.data else { return Ok(true) };
        let Some(want) = usize::try_from(k).ok().and_then(|k| self.manifest.get(k)) else { return Ok(true) };
        let mut buf = vec![0u8; idx(len)];
        self.read_at(offset, &mut buf)?;
        Ok(self.algo.digest(&buf) == *want)
    }

    /// Whether the whole image still has the checksum retrieval took (a file image is read
    /// again; one in memory cannot have changed).
    pub fn unchanged(&self) -> std::io::Result<bool> {
        let ImageData::File { file: f, .. } = &self.data else { return Ok(true) };
        let mut digests = Digests::new(self.algo, self.chunk_size);
        digests.absorb_file(f, self.len)?;
        Ok(f.metadata()?.len() == self.len && digests.finish().0 == self.digest)
    }

    /// This image with its middle byte changed, and its checksum and manifest taken again
    /// over the changed bytes (the `tamper_image` fault: every checksum agrees, only a
    /// signature can tell). Only an image held in memory can be changed.
    pub fn tampered(self) -> Result<Image, String> {
        let ImageData::Memory(mut b) = self.data else {
            return Err(format!(
                "fault tamper_image needs an image the monarch holds in memory (at most {} MiB)",
                IN_MEMORY_MAX >> 20
            ));
        };
        let mid = b.len() / 2;
        if let Some(x) = b.get_mut(mid) {
            *x ^= 0x5a;
        }
        let mut digests = Digests::new(self.algo, self.chunk_size);
        digests.absorb_all(&b);
        let (digest, manifest) = digests.finish();
        Ok(Image { data: ImageData::Memory(b), digest, manifest, ..self })
    }

    /// Read `buf.len()` bytes at `image_offset` into `buf`.
    pub fn read_at(&self, image_offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match &self.data {
            ImageData::File { file, .. } => file.read_exact_at(buf, image_offset),
            ImageData::Memory(b) => {
                let start = idx(image_offset);
                let src = b.get(start..start + buf.len()).ok_or(std::io::ErrorKind::UnexpectedEof)?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

fn idx(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Size of an image source without retrieving it.
pub fn source_len(source: &ImageSource) -> Result<u64, ImageError> {
    match source {
        ImageSource::File(path) => std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|source| ImageError::Read { path: path.clone(), source }),
        ImageSource::Builtin { size, .. } => Ok(*size),
    }
}

/// Build a demo payload image of exactly `size` bytes carrying `banner`.
pub fn build_payload(program: &Path, size: u64, banner: &str) -> Result<Vec<u8>, ImageError> {
    let mut bytes =
        std::fs::read(program).map_err(|source| ImageError::NoPayload { path: program.into(), source })?;
    let need = payload_len(bytes.len() as u64, banner);
    let banner = truncate(banner, BANNER_MAX);
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

/// The checksum of an image and, with `chunk_size > 0`, the digest of every chunk, taken as
/// the chunks go by (retrieval, and taking them again of changed bytes).
struct Digests {
    algo: Algo,
    chunk_size: u64,
    whole: Hasher,
    manifest: Vec<Digest>,
}

impl Digests {
    fn new(algo: Algo, chunk_size: u64) -> Digests {
        Digests { algo, chunk_size, whole: Hasher::new(algo), manifest: Vec::new() }
    }

    /// The size of the pieces to feed: a chunk, or 1 MiB when there is no manifest.
    fn step(&self) -> u64 {
        if self.chunk_size > 0 { self.chunk_size } else { 1 << 20 }
    }

    fn absorb(&mut self, chunk: &[u8]) {
        let d = self.algo.digest(chunk);
        self.whole.absorb(chunk, &d);
        if self.chunk_size > 0 {
            self.manifest.push(d);
        }
    }

    /// Feed `bytes` in steps.
    fn absorb_all(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(idx(self.step())) {
            self.absorb(c);
        }
    }

    /// Feed the first `len` bytes of `f`, a step at a time (memory bounded by the step).
    fn absorb_file(&mut self, f: &File, len: u64) -> std::io::Result<()> {
        let step = self.step();
        let mut buf = vec![0u8; idx(step)];
        let mut off = 0u64;
        while off < len {
            let n = idx(step.min(len - off));
            f.read_exact_at(&mut buf[..n], off)?;
            self.absorb(&buf[..n]);
            off += n as u64;
        }
        Ok(())
    }

    fn finish(self) -> (Digest, Vec<Digest>) {
        (self.whole.finish(), self.manifest)
    }
}

/// Retrieve an image: its size, its retrieved checksum and, with `chunk_size > 0`, the
/// digest of every chunk. Files are read once, a chunk at a time.
pub fn retrieve(source: &ImageSource, algo: Algo, chunk_size: u64) -> Result<Image, ImageError> {
    let mut digests = Digests::new(algo, chunk_size);
    let (data, len) = match source {
        ImageSource::File(path) => {
            let read_err = |source| ImageError::Read { path: path.clone(), source };
            let f = File::open(path).map_err(read_err)?;
            let len = f.metadata().map_err(read_err)?.len();
            if len == 0 {
                return Err(ImageError::Empty { path: path.clone() });
            }
            if len <= IN_MEMORY_MAX {
                // The reference design's way: the image is stored in the monarch's memory, and copied from
                // there at memory speed.
                let mut b = vec![0u8; idx(len)];
                f.read_exact_at(&mut b, 0).map_err(read_err)?;
                digests.absorb_all(&b);
                (ImageData::Memory(b), len)
            } else {
                // Larger images stay in their file, mapped: copies read the page cache,
                // and the monarch's own memory does not grow with the image.
                digests.absorb_file(&f, len).map_err(read_err)?;
                let map = SourceFile::map(&f, path, len).map_err(|e| ImageError::Read {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                (ImageData::File { file: f, map }, len)
            }
        }
        ImageSource::Builtin { size, banner } => {
            let b = build_payload(&payload_program(), *size, banner)?;
            digests.absorb_all(&b);
            let len = b.len() as u64;
            (ImageData::Memory(b), len)
        }
    };
    let (digest, manifest) = digests.finish();
    Ok(Image { data, len, digest, algo, chunk_size, manifest })
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
    fn retrieval_computes_the_whole_checksum_and_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("img");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| u8::try_from(i % 241).unwrap()).collect();
        std::fs::write(&f, &bytes).unwrap();
        for algo in Algo::ALL {
            let img = retrieve(&ImageSource::File(f.clone()), algo, 4096).unwrap();
            assert_eq!(img.len, 10_000);
            assert_eq!(img.digest, algo.digest(&bytes));
            assert_eq!(img.manifest, bytes.chunks(4096).map(|c| algo.digest(c)).collect::<Vec<_>>());
            let mut b = [0u8; 10];
            img.read_at(9990, &mut b).unwrap();
            assert_eq!(b, bytes[9990..]);
        }
        let img = retrieve(&ImageSource::File(f), Algo::Crc32c, 0).unwrap();
        assert!(img.manifest.is_empty());
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
