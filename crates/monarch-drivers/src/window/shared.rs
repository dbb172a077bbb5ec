//! [`SharedBytes`]: a window's memory as this process may touch it, through atomics only.
//!
//! Every access this module makes to window memory is an atomic access of the width the
//! protocol gives that place: 32 or 64 bits for a register, 64 bits for every word of the
//! data area. Bulk copies are loops of Relaxed `AtomicU64` loads or stores over the
//! naturally aligned words a range covers; a range that starts or ends inside a word reads
//! that word whole, or changes only its own bytes of it with a compare-and-swap. So two
//! sides' accesses to the same word never differ in size, and a word the peer changes
//! mid-copy is copied as one of the values it held, never torn within the word. The
//! ordering between the data and the message that announces it comes from the registers'
//! Release stores and Acquire loads (see the `window` module).

use monarch_proto::checksum::crc32c_combine;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Bytes in a data-area word, the unit of every data-area access.
const WORD: usize = 8;

/// A window's bytes, register page then data area, as this process may touch them: through
/// atomics, never through a plain reference or a plain (or volatile) copy. This is how a
/// backend hands its memory to the `WindowMemory` methods; only a backend creates one, with
/// [`SharedBytes::new`].
#[derive(Debug, Clone, Copy)]
pub struct SharedBytes<'a> {
    base: *mut u8,
    len: usize,
    _memory: PhantomData<&'a [AtomicU64]>,
}

/// How a byte range falls on words: a partial first word, whole words, a partial last word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Split {
    /// Index of the word the range starts in.
    first: usize,
    /// Bytes of the first word before the range (0 when the range starts on a word).
    skip: usize,
    /// Bytes of the range in a partial first word (0 when the range starts on a word).
    head: usize,
    /// Whole words after the head.
    body: usize,
    /// Bytes of the range in a partial last word, after the body.
    tail: usize,
}

impl Split {
    fn of(at: usize, len: usize) -> Split {
        let skip = at % WORD;
        let head = if skip == 0 { 0 } else { (WORD - skip).min(len) };
        let body = (len - head) / WORD;
        Split { first: at / WORD, skip, head, body, tail: len - head - body * WORD }
    }

    /// Index of the first whole word.
    fn body_start(&self) -> usize {
        self.first + usize::from(self.head > 0)
    }
}

/// `bytes` (exactly [`WORD`] long) as a word.
fn word_of(bytes: &[u8]) -> u64 {
    let mut w = [0u8; WORD];
    w.copy_from_slice(bytes);
    u64::from_ne_bytes(w)
}

impl<'a> SharedBytes<'a> {
    /// The `len` bytes at `base`.
    ///
    /// # Safety
    ///
    /// For all of `'a`:
    /// - `base` is non-null, 8-byte aligned, and valid for reads and writes of `len` bytes
    ///   rounded up to a whole number of 8-byte words (a copy that ends inside the last word
    ///   accesses that word whole); the memory stays allocated (mapped) and is not moved;
    /// - every access this process makes to that memory, on any thread, is atomic and of the
    ///   width the window's layout gives the place (through this type or an `AtomicU32` /
    ///   `AtomicU64` there), with one exception: the kernel, when a read(2) or similar into
    ///   it was asked for (see `WindowMemory::fill_from_file`). In particular no
    ///   `&[u8]`/`&mut [u8]` to it exists. Other processes (or devices) may do what they like
    ///   to it: they are not this program, and atomics are the accesses that tolerate that.
    pub unsafe fn new(base: *mut u8, len: usize) -> SharedBytes<'a> {
        debug_assert!(!base.is_null() && base.align_offset(WORD) == 0, "misaligned window memory");
        SharedBytes { base, len, _memory: PhantomData }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The 32-bit word at `offset` (4-byte aligned, inside). Panics otherwise.
    pub(crate) fn u32_at(&self, offset: usize) -> &'a AtomicU32 {
        assert!(offset % 4 == 0 && offset.checked_add(4).is_some_and(|end| end <= self.len), "bad word");
        // SAFETY: `offset..offset + 4` is inside the memory and 4-byte aligned (asserted; the
        // base is 8-byte aligned), valid for `'a` and only ever accessed atomically at this
        // width by this process (the contract of `new`). AtomicU32 has u32's size and
        // alignment, and a shared reference to one is the sanctioned way to share a word.
        unsafe { AtomicU32::from_ptr(self.base.add(offset).cast::<u32>()) }
    }

    /// The 64-bit word at `offset` (8-byte aligned, inside). Panics otherwise.
    pub(crate) fn u64_at(&self, offset: usize) -> &'a AtomicU64 {
        assert!(
            offset % WORD == 0 && offset.checked_add(WORD).is_some_and(|end| end <= self.len),
            "bad word"
        );
        // SAFETY: as in `u32_at`, 8 bytes, 8-byte aligned.
        unsafe { AtomicU64::from_ptr(self.base.add(offset).cast::<u64>()) }
    }

    /// Words `first .. first + n` (counted in words from the base). Panics when they are not
    /// all within the memory rounded up to whole words.
    fn words(&self, first: usize, n: usize) -> &'a [AtomicU64] {
        let end = first.checked_add(n).and_then(|e| e.checked_mul(WORD));
        assert!(end.is_some_and(|end| end <= self.len.next_multiple_of(WORD)), "words out of range");
        // SAFETY: the words are inside the memory rounded up to whole words (asserted), which
        // `new`'s contract makes valid for `'a`; the base is 8-byte aligned so every word is;
        // this process accesses them only atomically as 64-bit words. A slice of AtomicU64
        // is a run of atomics, each as sanctioned as one `AtomicU64::from_ptr`.
        unsafe { std::slice::from_raw_parts(self.base.add(first * WORD).cast::<AtomicU64>(), n) }
    }

    fn check(&self, at: usize, len: usize) {
        assert!(at.checked_add(len).is_some_and(|end| end <= self.len), "range out of bounds");
    }

    /// A raw pointer to byte `at`, with `len` bytes after it inside; for the kernel to copy
    /// into (read(2)), never to be dereferenced by this process.
    pub(crate) fn raw_at(&self, at: usize, len: usize) -> *mut u8 {
        self.check(at, len);
        self.base.wrapping_add(at)
    }

    /// Copy `src` to bytes `at..at + src.len()`: a Relaxed store per whole word, a
    /// compare-and-swap that changes only the range's bytes for a partial first or last
    /// word. Panics when out of bounds (callers check and report first).
    pub(crate) fn write(&self, at: usize, src: &[u8]) {
        self.check(at, src.len());
        let s = Split::of(at, src.len());
        let (head, rest) = src.split_at(s.head);
        let (body, tail) = rest.split_at(s.body * WORD);
        if s.head > 0 {
            merge(&self.words(s.first, 1)[0], s.skip, head);
        }
        for (word, bytes) in self.words(s.body_start(), s.body).iter().zip(body.chunks_exact(WORD)) {
            word.store(word_of(bytes), Ordering::Relaxed);
        }
        if s.tail > 0 {
            merge(&self.words(s.body_start() + s.body, 1)[0], 0, tail);
        }
    }

    /// Copy bytes `at..at + dst.len()` into `dst`: a Relaxed load per word covered.
    /// Panics when out of bounds (callers check and report first).
    pub(crate) fn read(&self, at: usize, dst: &mut [u8]) {
        self.check(at, dst.len());
        let s = Split::of(at, dst.len());
        let (head, rest) = dst.split_at_mut(s.head);
        let (body, tail) = rest.split_at_mut(s.body * WORD);
        if s.head > 0 {
            let w = self.words(s.first, 1)[0].load(Ordering::Relaxed).to_ne_bytes();
            head.copy_from_slice(&w[s.skip..s.skip + s.head]);
        }
        for (word, out) in self.words(s.body_start(), s.body).iter().zip(body.chunks_exact_mut(WORD)) {
            out.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        if s.tail > 0 {
            let w = self.words(s.body_start() + s.body, 1)[0].load(Ordering::Relaxed).to_ne_bytes();
            tail.copy_from_slice(&w[..s.tail]);
        }
    }
}

/// CRC-32C's update of three streams of words in lockstep, each word stored to its
/// destination as it goes: the copy and the checksum in one pass, and three independent
/// `crc32` chains so the instruction's latency is hidden. `s[0]`/`d0` and `s[1]`/`d1` have
/// the same length; `s[2]`/`d2` at least as long. Returns the three CRC-32Cs.
///
/// # Safety
///
/// The CPU has SSE 4.2 (checked by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn copy_crc32c_3(s: [&[AtomicU64]; 3], d0: &mut [u8], d1: &mut [u8], d2: &mut [u8]) -> [u32; 3] {
    use std::arch::x86_64::_mm_crc32_u64;
    let mut c = [u64::from(u32::MAX); 3];
    let n = s[0].len();
    let mut o2 = d2.chunks_exact_mut(WORD);
    let lockstep =
        s[0].iter().zip(s[1]).zip(&s[2][..n]).zip(d0.chunks_exact_mut(WORD)).zip(d1.chunks_exact_mut(WORD));
    for ((((w0, w1), w2), b0), b1) in lockstep {
        let (v0, v1, v2) =
            (w0.load(Ordering::Relaxed), w1.load(Ordering::Relaxed), w2.load(Ordering::Relaxed));
        c[0] = _mm_crc32_u64(c[0], v0);
        c[1] = _mm_crc32_u64(c[1], v1);
        c[2] = _mm_crc32_u64(c[2], v2);
        b0.copy_from_slice(&v0.to_ne_bytes());
        b1.copy_from_slice(&v1.to_ne_bytes());
        if let Some(b2) = o2.next() {
            b2.copy_from_slice(&v2.to_ne_bytes());
        }
    }
    for (w2, b2) in s[2][n..].iter().zip(o2) {
        let v2 = w2.load(Ordering::Relaxed);
        c[2] = _mm_crc32_u64(c[2], v2);
        b2.copy_from_slice(&v2.to_ne_bytes());
    }
    // The chains hold 32-bit values in 64-bit registers: the upper half is always zero.
    c.map(|x| !u32::try_from(x).unwrap_or(u32::MAX))
}

impl SharedBytes<'_> {
    /// Copy `len` bytes at `src_at` of `src` to `at` here: a Relaxed load and a Relaxed
    /// store per word when both ends start on a word, through a small bounce buffer
    /// otherwise. Panics when out of bounds (callers check and report first).
    pub(crate) fn copy_from(&self, at: usize, src: &SharedBytes<'_>, src_at: usize, len: usize) {
        self.check(at, len);
        src.check(src_at, len);
        let words = len / WORD;
        if at % WORD == 0 && src_at % WORD == 0 {
            let from = src.words(src_at / WORD, words);
            for (to, word) in self.words(at / WORD, words).iter().zip(from) {
                to.store(word.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            let done = words * WORD;
            let mut tail = [0u8; WORD];
            let tail = &mut tail[..len - done];
            src.read(src_at + done, tail);
            self.write(at + done, tail);
            return;
        }
        let mut buf = [0u8; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len());
            src.read(src_at + done, &mut buf[..n]);
            self.write(at + done, &buf[..n]);
            done += n;
        }
    }

    /// Copy bytes `at..at + dst.len()` into `dst`, then return the CRC-32C of the copy.
    #[cfg(target_arch = "x86_64")]
    fn read_then_crc32c(&self, at: usize, dst: &mut [u8]) -> u32 {
        self.read(at, dst);
        let d = monarch_proto::Algo::Crc32c.digest(dst);
        u32::from_le_bytes([d.0[0], d.0[1], d.0[2], d.0[3]])
    }

    /// Copy bytes `at..at + dst.len()` into `dst` and return the CRC-32C of what was copied,
    /// in one pass: each word is loaded once (Relaxed), checksummed and stored (a range of
    /// fewer than three words is copied, then checksummed). `None` when this CPU or range
    /// cannot take the fast path (no SSE 4.2, or a start off a word boundary): the caller
    /// copies, then checksums the copy.
    pub(crate) fn read_crc32c(&self, at: usize, dst: &mut [u8]) -> Option<u32> {
        #[cfg(target_arch = "x86_64")]
        {
            let words = dst.len() / WORD;
            if at % WORD != 0 || !std::arch::is_x86_feature_detected!("sse4.2") {
                return None;
            }
            self.check(at, dst.len());
            if words < 3 {
                return Some(self.read_then_crc32c(at, dst));
            }
            let third = words / 3;
            let src = self.words(at / WORD, words);
            let (s0, rest) = src.split_at(third);
            let (s1, s2) = rest.split_at(third);
            let (body, tail) = dst.split_at_mut(words * WORD);
            let (d0, rest) = body.split_at_mut(third * WORD);
            let (d1, d2) = rest.split_at_mut(third * WORD);
            // SAFETY: SSE 4.2 is present (detected just above).
            let [c0, c1, c2] = unsafe { copy_crc32c_3([s0, s1, s2], d0, d1, d2) };
            let part = (third * WORD) as u64;
            let mut crc =
                crc32c_combine(crc32c_combine(c0, c1, part), c2, ((words - 2 * third) * WORD) as u64);
            if !tail.is_empty() {
                let t = self.read_then_crc32c(at + words * WORD, tail);
                crc = crc32c_combine(crc, t, tail.len() as u64);
            }
            Some(crc)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (at, dst);
            None
        }
    }
}

/// Put `bytes` into `word` at byte `skip`, leaving its other bytes as they are (even if the
/// peer changes them meanwhile: compare-and-swap, retried).
fn merge(word: &AtomicU64, skip: usize, bytes: &[u8]) {
    let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        let mut w = old.to_ne_bytes();
        w[skip..skip + bytes.len()].copy_from_slice(bytes);
        Some(u64::from_ne_bytes(w))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory of `words` words, zeroed.
    fn memory(words: usize) -> Vec<AtomicU64> {
        (0..words).map(|_| AtomicU64::new(0)).collect()
    }

    fn view(mem: &[AtomicU64], len: usize) -> SharedBytes<'_> {
        assert!(len.div_ceil(WORD) <= mem.len());
        // SAFETY: `mem` is a slice of atomics covering `len` rounded up to whole words,
        // borrowed for the view's lifetime, and only touched through the view.
        unsafe { SharedBytes::new(mem.as_ptr().cast::<u8>().cast_mut(), len) }
    }

    #[test]
    fn ranges_split_into_head_body_and_tail() {
        assert_eq!(Split::of(0, 16), Split { first: 0, skip: 0, head: 0, body: 2, tail: 0 });
        assert_eq!(Split::of(3, 2), Split { first: 0, skip: 3, head: 2, body: 0, tail: 0 });
        assert_eq!(Split::of(3, 5), Split { first: 0, skip: 3, head: 5, body: 0, tail: 0 });
        assert_eq!(Split::of(13, 20), Split { first: 1, skip: 5, head: 3, body: 2, tail: 1 });
        assert_eq!(Split::of(16, 0), Split { first: 2, skip: 0, head: 0, body: 0, tail: 0 });
    }

    #[test]
    fn every_alignment_and_length_copies_exactly_its_bytes() {
        const LEN: usize = 45; // not a whole number of words: the last word is partial
        let mem = memory(LEN.div_ceil(WORD));
        let v = view(&mem, LEN);
        for at in 0..LEN {
            for len in 0..=LEN - at {
                let before: Vec<u8> = (0..LEN).map(|i| u8::try_from(i).unwrap() | 0x80).collect();
                v.write(0, &before);
                let src: Vec<u8> = (0..len).map(|i| u8::try_from(i + 1).unwrap()).collect();
                v.write(at, &src);
                let mut all = vec![0u8; LEN];
                v.read(0, &mut all);
                let mut want = before.clone();
                want[at..at + len].copy_from_slice(&src);
                assert_eq!(all, want, "write of {len} at {at}");
                let mut part = vec![0u8; len];
                v.read(at, &mut part);
                assert_eq!(part, src, "read of {len} at {at}");
            }
        }
    }

    #[test]
    fn copies_between_two_memories_carry_exactly_their_bytes_at_every_alignment() {
        let from = memory(64);
        let src = view(&from, 64 * WORD);
        let bytes: Vec<u8> = (0..64 * WORD).map(|i| (i % 251).to_le_bytes()[0]).collect();
        src.write(0, &bytes);
        for (at, src_at, len) in [(0, 0, 512), (8, 16, 100), (3, 5, 77), (0, 7, 9), (16, 8, 0), (1, 0, 400)] {
            let to = memory(64);
            let dst = view(&to, 64 * WORD);
            dst.copy_from(at, &src, src_at, len);
            let mut out = vec![0u8; 64 * WORD];
            dst.read(0, &mut out);
            let mut want = vec![0u8; 64 * WORD];
            want[at..at + len].copy_from_slice(&bytes[src_at..src_at + len]);
            assert_eq!(out, want, "{len} bytes from {src_at} to {at}");
        }
    }

    #[test]
    fn the_one_pass_copy_and_crc32c_agree_with_a_copy_then_a_checksum() {
        let mem = memory(600);
        let v = view(&mem, 600 * WORD);
        let bytes: Vec<u8> = (0..600 * WORD).map(|i| ((i * 7 + i / 251) % 256).to_le_bytes()[0]).collect();
        v.write(0, &bytes);
        for (at, len) in [(0, 4800), (8, 24), (16, 23), (40, 1001), (8 * 17, 3 * 8 * 33 + 5), (0, 17)] {
            let mut dst = vec![0u8; len];
            let Some(crc) = v.read_crc32c(at, &mut dst) else {
                assert!(!std::arch::is_x86_feature_detected!("sse4.2"), "no fast path for {at}+{len}");
                continue;
            };
            assert_eq!(dst, bytes[at..at + len], "copy of {at}+{len}");
            let want = monarch_proto::Algo::Crc32c.digest(&bytes[at..at + len]);
            assert_eq!(crc.to_le_bytes(), want.0[..4], "checksum of {at}+{len}");
        }
        let mut dst = vec![0u8; 64];
        assert_eq!(v.read_crc32c(3, &mut dst), None, "a start off a word boundary takes the slow path");
    }

    #[test]
    #[should_panic(expected = "range out of bounds")]
    fn a_copy_past_the_end_panics() {
        let mem = memory(2);
        view(&mem, 12).write(5, &[0; 8]);
    }

    #[test]
    fn registers_are_the_words_at_their_offsets() {
        let mem = memory(2);
        let v = view(&mem, 16);
        v.u64_at(8).store(u64::from_le_bytes(*b"01234567"), Ordering::Release);
        v.u32_at(4).store(u32::from_le_bytes(*b"abcd"), Ordering::Release);
        let mut out = [0u8; 16];
        v.read(0, &mut out);
        assert_eq!(&out, b"\0\0\0\0abcd01234567");
    }
}
