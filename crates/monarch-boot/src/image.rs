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
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// The `tamper_image` fault asked of an image streamed from its file.
    #[error("fault tamper_image needs an image the monarch holds in memory (at most {} MiB)", IN_MEMORY_MAX >> 20)]
    NotInMemory,
}

/// Images up to this size are held in the monarch's memory once retrieved; larger ones are
/// streamed from their file.
pub const IN_MEMORY_MAX: u64 = 256 << 20;

/// Where a retrieved image's bytes are.
pub enum ImageData {
    /// In the monarch's memory (built images).
    Memory(Vec<u8>),
    /// Bytes shared by every secondary that boots the same image (read or built once), then
    /// this secondary's own tail: a built-in payload's last [`PAYLOAD_TAIL`] bytes (its
    /// banner and trailer), nothing for an image file. The image is `body ‖ tail`.
    Shared {
        /// The shared bytes.
        body: Arc<SharedBody>,
        /// This secondary's own last bytes.
        tail: Vec<u8>,
    },
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

/// Bytes at the end of a built-in payload that differ from one secondary to another: room
/// for the longest banner, and the trailer.
pub const PAYLOAD_TAIL: usize = BANNER_MAX + TRAILER_LEN;

/// Image bytes every secondary booting the same image shares — an image file's contents, or
/// a built-in payload's program and the zeroes after it — read or built once per monarch
/// process (while images hold them), and the digests of their whole chunks, taken once per
/// algorithm and chunk size.
pub struct SharedBody {
    bytes: Vec<u8>,
    /// Every byte from here on is zero (a built-in payload's padding; the length, for a
    /// file's contents, which are not looked at).
    zero_from: usize,
    digests: std::sync::Mutex<std::collections::HashMap<(Algo, u64), ChunkDigests>>,
}

/// The digests of a payload body's whole chunks, shared.
type ChunkDigests = Arc<Vec<Digest>>;

/// A built-in payload in two pieces: its shared body, and its own tail.
type PayloadParts = (Arc<SharedBody>, Vec<u8>);

impl SharedBody {
    /// The digest of each whole `step`-byte chunk of the body, computed on first use. The
    /// chunks of the zero padding all have the same digest: it is taken once.
    fn chunk_digests(&self, algo: Algo, step: u64) -> ChunkDigests {
        let mut cache = self.digests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(cache.entry((algo, step)).or_insert_with(|| {
            let step = idx(step);
            let mut zero_chunk = None;
            let digest = |(k, c): (usize, &[u8])| {
                if k * step >= self.zero_from {
                    *zero_chunk.get_or_insert_with(|| algo.digest(c))
                } else {
                    algo.digest(c)
                }
            };
            Arc::new(self.bytes.chunks_exact(step).enumerate().map(digest).collect())
        }))
    }
}

/// The bodies read or built so far, by (the file they come from, its length and modification
/// time, the body's length): held weakly, so a body goes when the last image using it does,
/// and a file changed on disk gets a new one.
type BodyKey = (PathBuf, u64, Option<std::time::SystemTime>, u64);
static BODIES: std::sync::Mutex<Vec<(BodyKey, std::sync::Weak<SharedBody>)>> =
    std::sync::Mutex::new(Vec::new());

/// The body for `key`, shared if one is alive, else made by `make` (its bytes, and where the
/// zeroes that end it start; `None`: do without a shared body). The lock is held while
/// making: the other secondaries' stages wait for this body rather than make their own.
fn shared_body(
    key: BodyKey,
    make: impl FnOnce() -> Result<Option<(Vec<u8>, usize)>, ImageError>,
) -> Result<Option<Arc<SharedBody>>, ImageError> {
    let mut bodies = BODIES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    bodies.retain(|(_, w)| w.strong_count() > 0);
    if let Some(b) = bodies.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade()) {
        return Ok(Some(b));
    }
    let Some((bytes, zero_from)) = make()? else { return Ok(None) };
    let b = Arc::new(SharedBody { bytes, zero_from, digests: Default::default() });
    bodies.push((key, Arc::downgrade(&b)));
    Ok(Some(b))
}

/// The built-in payload of `size` bytes carrying `banner`, as a shared body and its own tail:
/// byte for byte what [`build_payload`] builds. `None` when the program would reach into the
/// tail (an image barely larger than the program): build it whole then.
fn payload_parts(program: &Path, size: u64, banner: &str) -> Result<Option<PayloadParts>, ImageError> {
    let no_payload = |source| ImageError::NoPayload { path: program.into(), source };
    let meta = std::fs::metadata(program).map_err(no_payload)?;
    let need = payload_len(meta.len(), banner);
    if need > size {
        return Err(ImageError::TooSmall { size, program: need });
    }
    let Some(body_len) = size.checked_sub(PAYLOAD_TAIL as u64).filter(|b| *b >= meta.len()) else {
        return Ok(None);
    };
    let key: BodyKey = (program.to_path_buf(), meta.len(), meta.modified().ok(), body_len);
    let body = shared_body(key, || {
        // Zeroed by the allocator (fresh anonymous memory for a body this large), then the
        // program read over its start: the padding after it is never written, so its pages
        // stay the kernel's shared zero page — no memory to clear, fault in or free, and
        // reading it (checksums, copies into windows) stays in the cache.
        let mut bytes = vec![0u8; idx(body_len)];
        let mut f = File::open(program).map_err(no_payload)?;
        let n = idx(meta.len());
        // Changed while we looked (shrank, or grew): build it whole.
        match f.read_exact(&mut bytes[..n]) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            r => r.map_err(no_payload)?,
        }
        if f.read(&mut [0u8; 1]).map_err(no_payload)? != 0 {
            return Ok(None);
        }
        Ok(Some((bytes, n)))
    })?;
    let Some(body) = body else { return Ok(None) };
    let banner = truncate(banner, BANNER_MAX);
    let mut tail = vec![0u8; PAYLOAD_TAIL - TRAILER_LEN - banner.len()];
    tail.extend_from_slice(banner.as_bytes());
    tail.extend_from_slice(&u32::try_from(banner.len()).unwrap_or(0).to_le_bytes());
    tail.extend_from_slice(&[0; 4]);
    tail.extend_from_slice(TRAILER_MAGIC);
    Ok(Some((body, tail)))
}

impl ImageData {
    /// The bytes held in memory, as one or two pieces to be read one after the other
    /// (`None` for an image in a file).
    fn pieces(&self) -> Option<[&[u8]; 2]> {
        match self {
            ImageData::Memory(b) => Some([b, &[]]),
            ImageData::Shared { body, tail } => Some([&body.bytes, tail]),
            ImageData::File { .. } => None,
        }
    }

    /// The bytes held in memory in one piece (a payload's two pieces put together).
    pub fn contiguous(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        match self {
            ImageData::Memory(b) => Some(std::borrow::Cow::Borrowed(b)),
            ImageData::Shared { body, tail } => {
                Some(std::borrow::Cow::Owned([body.bytes.as_slice(), tail].concat()))
            }
            ImageData::File { .. } => None,
        }
    }
}

/// Visit the bytes `offset..offset + len` of `pieces` (read one after the other) as the
/// slices they fall in, each with its offset from `offset`.
fn each_slice<E>(
    pieces: [&[u8]; 2],
    offset: u64,
    len: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let (mut start, end) = (offset, offset + len);
    let mut base = 0u64;
    for p in pieces {
        let p_end = base + p.len() as u64;
        if start < p_end && start < end {
            let stop = end.min(p_end);
            f(start - offset, &p[idx(start - base)..idx(stop - base)])?;
            start = stop;
        }
        base = p_end;
    }
    Ok(())
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
            data => {
                let pieces = data.pieces().unwrap_or([&[], &[]]);
                each_slice(pieces, image_offset, len, |at, bytes| w.write_data(window_offset + at, bytes))
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
    pub fn tampered(self) -> Result<Image, ImageError> {
        let data = match self.data {
            ImageData::Shared { body, tail } => ImageData::Memory([body.bytes.as_slice(), &tail].concat()),
            other => other,
        };
        let ImageData::Memory(mut b) = data else {
            return Err(ImageError::NotInMemory);
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
            data => {
                let n = buf.len() as u64;
                if image_offset.checked_add(n).is_none_or(|end| end > self.len) {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                let pieces = data.pieces().unwrap_or([&[], &[]]);
                each_slice(pieces, image_offset, n, |at, bytes| {
                    buf[idx(at)..idx(at) + bytes.len()].copy_from_slice(bytes);
                    Ok::<(), std::io::Error>(())
                })
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
        self.absorb_known(chunk, &d);
    }

    /// Feed a chunk whose digest is known already.
    fn absorb_known(&mut self, chunk: &[u8], d: &Digest) {
        let d = *d;
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
        self.absorb_read(len, |off, buf| f.read_exact_at(buf, off))
    }

    /// Feed `len` bytes that `read(offset, buf)` fills, a step at a time (memory bounded by
    /// the step).
    fn absorb_read(
        &mut self,
        len: u64,
        mut read: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let step = self.step();
        let mut buf = vec![0u8; idx(step)];
        let mut off = 0u64;
        while off < len {
            let n = idx(step.min(len - off));
            read(off, &mut buf[..n])?;
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
            let meta = f.metadata().map_err(read_err)?;
            let len = meta.len();
            if len == 0 {
                return Err(ImageError::Empty { path: path.clone() });
            }
            if len <= IN_MEMORY_MAX {
                // The reference design's way: the image is stored in the monarch's memory, and
                // copied from there at memory speed; once for every secondary that boots it.
                let key: BodyKey = (path.clone(), len, meta.modified().ok(), len);
                let body = shared_body(key, || {
                    let mut b = vec![0u8; idx(len)];
                    f.read_exact_at(&mut b, 0).map_err(read_err)?;
                    let n = b.len();
                    Ok(Some((b, n)))
                })?;
                let body = body.ok_or_else(|| read_err(std::io::ErrorKind::UnexpectedEof.into()))?;
                absorb_body(&mut digests, &body, &[]);
                (ImageData::Shared { body, tail: Vec::new() }, len)
            } else {
                // Larger images stay in their file, mapped: copies read the page cache,
                // and the monarch's own memory does not grow with the image. The mapping
                // reads the file in once; the checksums are taken from it.
                let mapped_err =
                    |e: monarch_drivers::WindowError| read_err(std::io::Error::other(e.to_string()));
                let map = SourceFile::map(&f, path, len).map_err(mapped_err)?;
                digests
                    .absorb_read(len, |off, buf| {
                        map.read_at(off, buf).map_err(|e| std::io::Error::other(e.to_string()))
                    })
                    .map_err(read_err)?;
                if map.vanished() {
                    // Cut short while it was read: what was checksummed past the cut is zeroes.
                    return Err(read_err(std::io::ErrorKind::UnexpectedEof.into()));
                }
                (ImageData::File { file: f, map }, len)
            }
        }
        ImageSource::Builtin { size, banner } => {
            return retrieve_payload(&payload_program(), *size, banner, algo, chunk_size);
        }
    };
    let (digest, manifest) = digests.finish();
    Ok(Image { data, len, digest, algo, chunk_size, manifest })
}

/// Feed `body ‖ tail` to `digests`. The body's whole chunks have digests already (or get
/// them once, for every secondary); only the rest, which holds this secondary's own tail, is
/// read here.
fn absorb_body(digests: &mut Digests, body: &SharedBody, tail: &[u8]) {
    let step = digests.step();
    let known = body.chunk_digests(digests.algo, step);
    for (chunk, d) in body.bytes.chunks_exact(idx(step)).zip(known.iter()) {
        digests.absorb_known(chunk, d);
    }
    let rest = [&body.bytes[known.len() * idx(step)..], tail].concat();
    digests.absorb_all(&rest);
}

/// [`retrieve`] of the built-in payload made of `program`.
fn retrieve_payload(
    program: &Path,
    size: u64,
    banner: &str,
    algo: Algo,
    chunk_size: u64,
) -> Result<Image, ImageError> {
    let mut digests = Digests::new(algo, chunk_size);
    let data = match payload_parts(program, size, banner)? {
        Some((body, tail)) => {
            absorb_body(&mut digests, &body, &tail);
            ImageData::Shared { body, tail }
        }
        None => {
            let b = build_payload(program, size, banner)?;
            digests.absorb_all(&b);
            ImageData::Memory(b)
        }
    };
    let (digest, manifest) = digests.finish();
    Ok(Image { data, len: size, digest, algo, chunk_size, manifest })
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
    fn a_payload_with_a_shared_body_is_byte_for_byte_the_one_built_whole() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("prog");
        std::fs::write(&prog, b"\x7fELF pretend program, a little longer than its name").unwrap();
        let size = 40_000;
        for algo in Algo::ALL {
            for chunk in [0, 4096, 8192] {
                let whole = build_payload(&prog, size, "line card lc1: ports up").unwrap();
                let a = retrieve_payload(&prog, size, "line card lc1: ports up", algo, chunk).unwrap();
                let b = retrieve_payload(&prog, size, "route card rc0", algo, chunk).unwrap();
                let (ImageData::Shared { body: ba, .. }, ImageData::Shared { body: bb, .. }) =
                    (&a.data, &b.data)
                else {
                    panic!("not built from a shared body")
                };
                assert!(Arc::ptr_eq(ba, bb), "the body is built once");
                assert_eq!(a.data.contiguous().unwrap().as_ref(), whole.as_slice());
                assert_eq!(a.digest, algo.digest(&whole), "{algo} over {chunk}");
                let step = if chunk == 0 { whole.len() } else { idx(chunk) };
                let manifest: Vec<Digest> = if chunk == 0 {
                    Vec::new()
                } else {
                    whole.chunks(step).map(|c| algo.digest(c)).collect()
                };
                assert_eq!(a.manifest, manifest);
                // Reads across the body's end, as copies and repairs do.
                let at = size - PAYLOAD_TAIL as u64 - 10;
                let mut buf = [0u8; 40];
                a.read_at(at, &mut buf).unwrap();
                assert_eq!(buf, whole[idx(at)..idx(at) + 40]);
                assert!(a.read_at(size - 4, &mut buf).is_err(), "a read past the end");
                assert_eq!(read_banner(&b.data.contiguous().unwrap()).as_deref(), Some("route card rc0"));
            }
        }
        // Too small for a separate tail: built whole, still exact.
        let small = retrieve_payload(&prog, 200, "x", Algo::Crc32c, 0).unwrap();
        assert!(matches!(small.data, ImageData::Memory(_)));
        assert_eq!(
            small.data.contiguous().unwrap().as_ref(),
            build_payload(&prog, 200, "x").unwrap().as_slice()
        );
    }

    #[test]
    fn an_image_too_large_for_memory_is_checksummed_from_its_mapping() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big");
        let len = IN_MEMORY_MAX + 4096 + 3;
        let file = File::create(&f).unwrap();
        file.set_len(len).unwrap();
        file.write_all_at(b"head", 0).unwrap();
        file.write_all_at(b"the end", len - 7).unwrap();
        let chunk = 1 << 20;
        let img = retrieve(&ImageSource::File(f.clone()), Algo::Crc32c, chunk).unwrap();
        assert!(matches!(img.data, ImageData::File { .. }));
        let bytes = std::fs::read(&f).unwrap();
        assert_eq!(img.digest, Algo::Crc32c.digest(&bytes));
        let manifest: Vec<Digest> = bytes.chunks(idx(chunk)).map(|c| Algo::Crc32c.digest(c)).collect();
        assert_eq!(img.manifest, manifest);
        let mut end = [0u8; 7];
        img.read_at(len - 7, &mut end).unwrap();
        assert_eq!(&end, b"the end");
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
        let img = retrieve(&ImageSource::File(f.clone()), Algo::Crc32c, 0).unwrap();
        assert!(img.manifest.is_empty());
        // Every secondary that boots the file shares one copy of it, while one is alive; a
        // file changed on disk is read again.
        let again = retrieve(&ImageSource::File(f.clone()), Algo::Xxh3, 4096).unwrap();
        let (ImageData::Shared { body: a, .. }, ImageData::Shared { body: b, .. }) = (&img.data, &again.data)
        else {
            panic!("not shared")
        };
        assert!(Arc::ptr_eq(a, b));
        std::fs::write(&f, [&bytes[..], b"more"].concat()).unwrap();
        let changed = retrieve(&ImageSource::File(f), Algo::Crc32c, 0).unwrap();
        assert_eq!(changed.len, 10_004);
        assert_eq!(changed.data.contiguous().unwrap().len(), 10_004);
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
