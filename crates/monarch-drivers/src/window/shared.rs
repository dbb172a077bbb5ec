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
