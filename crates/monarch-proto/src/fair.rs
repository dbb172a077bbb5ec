//! Sharing what peers can take, so that one source cannot take it all: an [`Admission`]
//! counter for work that runs (TFTP transfers), and a [`FairTable`] of expiring entries in
//! which a full table evicts from its heaviest source (the discovery service's offers).
//!
//! A "source" is what the service can tell peers apart by: a UDP sender's IP address, which
//! an attacker on the segment can forge, so these bounds are per address and not per port
//! (many ports of one address are one source), and what they guarantee is stated in terms
//! of how many addresses a flood must use.

use std::collections::BTreeMap;
use std::fmt;

/// Why [`Admission::admit`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// `total` are running, the most at once.
    Full {
        /// The limit.
        total: usize,
    },
    /// This source has `per_source` running, the most one source may have.
    Source {
        /// The limit.
        per_source: usize,
    },
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Busy::Full { total } => write!(f, "server busy ({total} transfers running): try again shortly"),
            Busy::Source { per_source } => write!(
                f,
                "server busy: {per_source} transfers from this address are running, the most one address may have: \
                 try again when one ends"
            ),
        }
    }
}

/// Work admitted at most `total` at once, and at most `per_source` for any one source: a
/// flood from one source takes `per_source` slots and leaves the rest to others.
#[derive(Debug, Clone)]
pub struct Admission<S> {
    total: usize,
    per_source: usize,
    running: BTreeMap<S, usize>,
    in_use: usize,
}

impl<S: Ord + Clone> Admission<S> {
    /// A counter with these limits (each at least 1).
    pub fn new(total: usize, per_source: usize) -> Admission<S> {
        Admission { total: total.max(1), per_source: per_source.max(1), running: BTreeMap::new(), in_use: 0 }
    }

    /// Admit one more piece of work from `source`, or say which limit it hits. Every `Ok`
    /// must be matched by one [`Admission::release`].
    pub fn admit(&mut self, source: &S) -> Result<(), Busy> {
        let mine = self.running.get(source).copied().unwrap_or(0);
        if mine >= self.per_source {
            return Err(Busy::Source { per_source: self.per_source });
        }
        if self.in_use >= self.total {
            return Err(Busy::Full { total: self.total });
        }
        self.running.insert(source.clone(), mine + 1);
        self.in_use += 1;
        Ok(())
    }

    /// One piece of work from `source` ended.
    pub fn release(&mut self, source: &S) {
        if let Some(n) = self.running.get_mut(source) {
            *n -= 1;
            self.in_use -= 1;
            if *n == 0 {
                self.running.remove(source);
            }
        }
    }

    /// Work running now.
    pub fn running(&self) -> usize {
        self.in_use
    }

    /// Work running now for `source`.
    pub fn running_for(&self, source: &S) -> usize {
        self.running.get(source).copied().unwrap_or(0)
    }
}

/// Entries that expire, at most `capacity` of them and at most `per_source` per source. A
/// source at its share replaces its own oldest entry; a full table evicts the oldest entry of
/// the source that holds the most. So an entry is evicted by a flood only when every source
/// holds at least as many entries as its own: with one entry, only a flood from `capacity`
/// different sources within the entries' lifetime can evict it.
#[derive(Debug, Clone)]
pub struct FairTable<S, K, V, T> {
    capacity: usize,
    per_source: usize,
    entries: BTreeMap<K, Entry<S, V, T>>,
    counts: BTreeMap<S, usize>,
}

#[derive(Debug, Clone)]
struct Entry<S, V, T> {
    source: S,
    value: V,
    expires: T,
}

impl<S: Ord + Clone, K: Ord + Clone, V, T: Ord + Copy> FairTable<S, K, V, T> {
    /// An empty table (`capacity` and `per_source` at least 1).
    pub fn new(capacity: usize, per_source: usize) -> FairTable<S, K, V, T> {
        FairTable {
            capacity: capacity.max(1),
            per_source: per_source.max(1),
            entries: BTreeMap::new(),
            counts: BTreeMap::new(),
        }
    }

    /// Add `key` → `value` for `source`, valid until `expires`; expired entries go first, then
    /// whichever entry the limits say (returned, if one was evicted).
    pub fn insert(&mut self, source: S, key: K, value: V, now: T, expires: T) -> Option<K> {
        self.expire(now);
        let mut evicted = None;
        let mine = self.counts.get(&source).copied().unwrap_or(0);
        let victim = if self.entries.contains_key(&key) {
            None
        } else if mine >= self.per_source {
            Some(source.clone())
        } else if self.entries.len() >= self.capacity {
            // The heaviest source (ties: the one holding the oldest entry among them).
            let most = self.counts.values().copied().max().unwrap_or(0);
            self.entries
                .values()
                .filter(|e| self.counts.get(&e.source).copied() == Some(most))
                .min_by_key(|e| e.expires)
                .map(|e| e.source.clone())
        } else {
            None
        };
        if let Some(victim) = victim {
            let key = self.entries.iter().filter(|(_, e)| e.source == victim).min_by_key(|(_, e)| e.expires);
            if let Some(k) = key.map(|(k, _)| k.clone()) {
                self.remove(&k);
                evicted = Some(k);
            }
        }
        if let Some(old) = self.entries.remove(&key) {
            self.uncount(&old.source);
        }
        *self.counts.entry(source.clone()).or_insert(0) += 1;
        self.entries.insert(key, Entry { source, value, expires });
        evicted
    }

    /// The value of `key`, if it has not expired.
    pub fn get(&self, key: &K, now: T) -> Option<&V> {
        self.entries.get(key).filter(|e| e.expires > now).map(|e| &e.value)
    }

    /// Forget entries that expired by `now`.
    pub fn expire(&mut self, now: T) {
        let gone: Vec<K> =
            self.entries.iter().filter(|(_, e)| e.expires <= now).map(|(k, _)| k.clone()).collect();
        for k in gone {
            self.remove(&k);
        }
    }

    fn remove(&mut self, key: &K) {
        if let Some(e) = self.entries.remove(key) {
            self.uncount(&e.source);
        }
    }

    fn uncount(&mut self, source: &S) {
        if let Some(n) = self.counts.get_mut(source) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(source);
            }
        }
    }

    /// Entries held (expired ones included until the next insert or [`FairTable::expire`]).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries held by `source`.
    pub fn held_by(&self, source: &S) -> usize {
        self.counts.get(source).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_caps_each_source_and_the_total() {
        let mut a = Admission::new(4, 2);
        assert_eq!(a.admit(&1), Ok(()));
        assert_eq!(a.admit(&1), Ok(()));
        assert_eq!(a.admit(&1), Err(Busy::Source { per_source: 2 }));
        assert_eq!(a.admit(&2), Ok(()));
        assert_eq!(a.admit(&3), Ok(()));
        assert_eq!(a.admit(&4), Err(Busy::Full { total: 4 }));
        a.release(&1);
        assert_eq!((a.running(), a.running_for(&1)), (3, 1));
        assert_eq!(a.admit(&4), Ok(()));
        a.release(&9); // never admitted: nothing changes
        assert_eq!(a.running(), 4);
        assert!(Busy::Source { per_source: 8 }.to_string().contains("8 transfers from this address"));
    }

    #[test]
    fn a_flood_from_one_source_evicts_only_itself() {
        let mut t: FairTable<u8, u32, (), u64> = FairTable::new(8, 3);
        t.insert(1, 1, (), 0, 100);
        for k in 100..200 {
            t.insert(9, k, (), 1, 100);
        }
        assert_eq!(t.held_by(&9), 3);
        assert!(t.get(&1, 2).is_some());
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_full_table_evicts_from_the_heaviest_source() {
        let mut t: FairTable<u8, u32, (), u64> = FairTable::new(8, 4);
        t.insert(1, 1, (), 0, 100);
        // Spread over five sources, fewer than the capacity, a flood fills the table and then
        // evicts its own.
        for (i, k) in (100..200u32).enumerate() {
            let src = 10 + u8::try_from(i % 5).unwrap();
            t.insert(src, k, (), 1, 100 + u64::try_from(i).unwrap());
        }
        assert_eq!(t.len(), 8);
        assert!(t.get(&1, 2).is_some(), "the lone entry was evicted");
        // Expired entries go first; an entry is not found after it expires.
        assert!(t.get(&1, 100).is_none());
        t.expire(1000);
        assert!(t.is_empty());
        // Re-inserting a key replaces it without evicting anyone.
        t.insert(1, 5, (), 0, 10);
        assert_eq!(t.insert(1, 5, (), 0, 20), None);
        assert_eq!(t.len(), 1);
    }
}
