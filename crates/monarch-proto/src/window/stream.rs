//! Push mode streams the image through a ring of chunks in the data area, so an image larger
//! than the window goes through, the secondary verifies chunk k while chunk k+1 is copied,
//! and a chunk that fails its digest is re-sent alone.
//!
//! ```text
//! data area: [ manifest: 32-byte digest per chunk ][ pad ][ ring: slots × chunk_size ]
//!            0                                           load_offset
//! ```
//!
//! Chunks are numbered over the whole handshake: chunk `i` of attempt `a` (1-based) has
//! position `p = (a-1)·chunks + i` and lives in slot `p mod slots`. `stream.produced` and
//! `stream.consumed` count positions. The primary may write position `p` only when
//! `p < consumed + slots` (a free slot: its previous occupant was verified and released); the
//! secondary may read position `p` only when `p < produced`. This module is the arithmetic;
//! the property test below checks that no interleaving of the two rules lets a chunk be
//! overwritten before it is consumed or read before it is written. A [`Geometry`] comes from
//! a config block through `Geometry::new`, written next to the config in `msg.rs` (which
//! checks a config's ring with this arithmetic).

/// Bytes of one manifest entry.
pub const DIGEST_LEN: u64 = 32;

/// The ring's arithmetic for one config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Image size.
    pub image_size: u64,
    /// Chunk size.
    pub chunk_size: u64,
    /// Ring size (a whole number of chunks).
    pub ring_size: u64,
    /// Ring offset in the data area.
    pub ring_offset: u64,
}

impl Geometry {
    /// Chunks in the image.
    pub fn chunks(&self) -> u64 {
        self.image_size.div_ceil(self.chunk_size.max(1))
    }

    /// Slots in the ring.
    pub fn slots(&self) -> u64 {
        (self.ring_size / self.chunk_size.max(1)).max(1)
    }

    /// Bytes of the manifest, or `None` on overflow.
    pub fn manifest_len(&self) -> Option<u64> {
        self.chunks().checked_mul(DIGEST_LEN)
    }

    /// Offset of chunk `i` in the image, and its length.
    pub fn chunk(&self, i: u64) -> (u64, u64) {
        let off = i * self.chunk_size;
        (off, self.chunk_size.min(self.image_size.saturating_sub(off)))
    }

    /// Position of chunk `i` of `attempt` (1-based).
    pub fn position(&self, attempt: u32, i: u64) -> u64 {
        u64::from(attempt.saturating_sub(1)) * self.chunks() + i
    }

    /// Data-area offset of the slot holding `position`.
    pub fn slot_offset(&self, position: u64) -> u64 {
        self.ring_offset + (position % self.slots()) * self.chunk_size
    }

    /// May the primary write `position`, with `consumed` positions released?
    pub fn may_produce(&self, position: u64, consumed: u64) -> bool {
        position < consumed.saturating_add(self.slots())
    }

    /// May the secondary read `position`, with `produced` positions published?
    pub fn may_consume(&self, position: u64, produced: u64) -> bool {
        position < produced
    }
}

/// A sensible ring for an image in a data area: chunks of `chunk_size` (or the whole image,
/// if smaller), the manifest at offset 0, the ring on the next 4 KiB boundary, as many slots
/// as fit. `None` if not even one chunk fits.
pub fn layout(image_size: u64, data_size: u64, chunk_size: u64) -> Option<(u64, u64, u64)> {
    let chunk = chunk_size.min(image_size.next_multiple_of(4096)).max(4096);
    let chunks = image_size.div_ceil(chunk);
    let manifest = chunks.checked_mul(DIGEST_LEN)?;
    let ring_offset = manifest.checked_next_multiple_of(4096)?;
    let room = data_size.checked_sub(ring_offset)?;
    let slots = (room / chunk).min(chunks);
    (slots >= 1).then_some((chunk, ring_offset, slots * chunk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn geo(image: u64, chunk: u64, slots: u64) -> Geometry {
        Geometry { image_size: image, chunk_size: chunk, ring_size: chunk * slots, ring_offset: 4096 }
    }

    #[test]
    fn chunks_cover_the_image_exactly() {
        let g = geo(10_000, 4096, 2);
        assert_eq!(g.chunks(), 3);
        assert_eq!(g.chunk(0), (0, 4096));
        assert_eq!(g.chunk(2), (8192, 1808));
        assert_eq!(g.slot_offset(g.position(1, 2)), 4096);
        assert_eq!(g.slot_offset(g.position(2, 0)), 4096 + 4096, "attempt 2 continues round the ring");
    }

    #[test]
    fn layout_fits_a_gib_through_64_mib() {
        let (chunk, off, ring) = layout(1 << 30, 64 << 20, 1 << 20).unwrap();
        assert_eq!(chunk, 1 << 20);
        assert_eq!(off, 32 << 10);
        assert_eq!(ring, 63 << 20);
        assert!(off + ring <= 64 << 20);
        let (chunk, off, ring) = layout(30 << 20, 30 << 20, 1 << 20).unwrap();
        assert_eq!((chunk, off), (1 << 20, 4096));
        assert_eq!(ring, 29 << 20, "30 MiB in a 30 MiB window: the manifest takes one slot's room");
        assert_eq!(layout(1 << 20, 4096, 1 << 20), None);
        let (chunk, _, ring) = layout(5000, 1 << 20, 1 << 20).unwrap();
        assert_eq!((chunk, ring), (8192, 8192), "a small image is one chunk");
    }

    proptest! {
        /// Run producer and consumer in any interleaving under the two rules; the ring never
        /// loses or tears a chunk: every slot read holds the chunk the reader expects, and no
        /// slot is overwritten before its chunk is consumed.
        #[test]
        fn the_ring_rules_never_overwrite_or_read_early(
            chunks in 1u64..20, slots in 1u64..6, attempts in 1u32..3,
            schedule in proptest::collection::vec(any::<bool>(), 0..400),
        ) {
            let g = geo(chunks * 4096, 4096, slots);
            let total = g.position(attempts, 0) + chunks; // positions over all attempts
            let mut ring: Vec<Option<u64>> = vec![None; usize::try_from(slots).unwrap()];
            let (mut produced, mut consumed) = (0u64, 0u64);
            let mut steps = schedule.into_iter().chain(std::iter::repeat_n(true, 0));
            let mut stalled = 0;
            while consumed < total && stalled < 10_000 {
                let producer_turn = steps.next().unwrap_or(stalled % 2 == 0);
                let slot = |p: u64| usize::try_from((g.slot_offset(p) - g.ring_offset) / g.chunk_size).unwrap();
                if producer_turn && produced < total && g.may_produce(produced, consumed) {
                    prop_assert!(ring[slot(produced)].is_none(), "overwrote unconsumed chunk");
                    ring[slot(produced)] = Some(produced);
                    produced += 1;
                    stalled = 0;
                } else if !producer_turn && g.may_consume(consumed, produced) {
                    prop_assert_eq!(ring[slot(consumed)], Some(consumed), "read a chunk that is not there");
                    ring[slot(consumed)] = None;
                    consumed += 1;
                    stalled = 0;
                } else {
                    stalled += 1;
                }
            }
            prop_assert_eq!(consumed, total, "the ring deadlocked");
        }
    }
}
