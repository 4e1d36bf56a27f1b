//! Deduplication of `messageId`s within a window, in memory.
//!
//! A SQLite index on message ids took random inserts into a B-tree larger
//! than the page cache: every stored event dirtied a page of its own, so each
//! commit wrote several times more index pages than event data. Here the
//! recent ids are a hash map in the writer's memory, rebuilt from the event
//! log when the store opens; the log row a hash points at is read back to
//! compare the real id, so a hash collision never drops an event.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// A hash of `(source, messageId)`.
pub(crate) type IdHash = u64;

/// The keys are already hashes: the map uses them as they are.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for `IdHash` keys; fold anything else.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The hash of a message id within its source.
pub(crate) fn id_hash(source_id: i64, message_id: &str) -> IdHash {
    let mut h = std::hash::DefaultHasher::new();
    source_id.hash(&mut h);
    message_id.hash(&mut h);
    h.finish()
}

/// Ids stored within the window: hash → seq of the event that carries it.
pub(crate) struct RecentIds {
    by_hash: HashMap<IdHash, u64, BuildHasherDefault<PassThrough>>,
    /// `(received_ms, seq, hash)` in the order stored, for expiry.
    order: VecDeque<(i64, u64, IdHash)>,
    window_ms: i64,
    capacity: usize,
}

impl RecentIds {
    pub(crate) fn new(window_ms: i64, capacity: usize) -> Self {
        // Sized once: growing a large map rehashes it on the writer's thread.
        // Untouched capacity costs address space, not resident memory.
        RecentIds {
            by_hash: HashMap::with_capacity_and_hasher(capacity, Default::default()),
            order: VecDeque::with_capacity(capacity),
            window_ms,
            capacity: capacity.max(1),
        }
    }

    /// The seq of the event last stored under `hash`, if within the window.
    #[cfg(test)]
    pub(crate) fn get(&self, hash: IdHash) -> Option<u64> {
        self.by_hash.get(&hash).copied()
    }

    /// Stores an event unless it is a duplicate, with one lookup of the map
    /// (it is large, and each lookup is a cache miss): `is_duplicate` is
    /// asked about the event last stored under the same hash, if any;
    /// `store` stores the event and gives its seq. Returns that seq, or
    /// `None` for a duplicate.
    pub(crate) fn store_once<E>(
        &mut self,
        hash: IdHash,
        received_ms: i64,
        is_duplicate: impl FnOnce(u64) -> Result<bool, E>,
        store: impl FnOnce() -> Result<u64, E>,
    ) -> Result<Option<u64>, E> {
        let seq = match self.by_hash.entry(hash) {
            Entry::Occupied(mut slot) => {
                if is_duplicate(*slot.get())? {
                    return Ok(None);
                }
                let seq = store()?;
                slot.insert(seq);
                seq
            }
            Entry::Vacant(slot) => *slot.insert(store()?),
        };
        self.remember(hash, seq, received_ms);
        Ok(Some(seq))
    }

    /// Records an event just stored.
    pub(crate) fn insert(&mut self, hash: IdHash, seq: u64, received_ms: i64) {
        self.by_hash.insert(hash, seq);
        self.remember(hash, seq, received_ms);
    }

    fn remember(&mut self, hash: IdHash, seq: u64, received_ms: i64) {
        self.order.push_back((received_ms, seq, hash));
        if self.order.len() > self.capacity {
            self.pop_oldest();
        }
    }

    /// Forgets ids older than the window; returns how many.
    pub(crate) fn expire(&mut self, now_ms: i64) -> u64 {
        let cutoff = now_ms - self.window_ms;
        let mut expired = 0;
        while self.order.front().is_some_and(|(at, _, _)| *at < cutoff) {
            self.pop_oldest();
            expired += 1;
        }
        if self.order.capacity() > 4 * self.order.len().max(1024) {
            self.order.shrink_to_fit();
            self.by_hash.shrink_to_fit();
        }
        expired
    }

    fn pop_oldest(&mut self) {
        if let Some((_, seq, hash)) = self.order.pop_front() {
            // Only if no newer event took the same hash since.
            if self.by_hash.get(&hash) == Some(&seq) {
                self.by_hash.remove(&hash);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_hash.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_by_window_and_capacity() {
        let mut ids = RecentIds::new(1000, 3);
        let (a, b, c, d) = (
            id_hash(1, "a"),
            id_hash(1, "b"),
            id_hash(1, "c"),
            id_hash(1, "d"),
        );
        assert_ne!(id_hash(1, "a"), id_hash(2, "a"), "sources are kept apart");
        ids.insert(a, 1, 0);
        ids.insert(b, 2, 500);
        ids.insert(c, 3, 900);
        assert_eq!(ids.get(a), Some(1));
        ids.insert(d, 4, 950);
        assert_eq!(ids.get(a), None, "over capacity: the oldest goes");
        assert_eq!(ids.expire(1600), 1, "b is older than the window");
        assert_eq!(
            (ids.get(b), ids.get(c), ids.get(d)),
            (None, Some(3), Some(4))
        );
        // A hash stored again keeps its newest seq when the old entry expires.
        ids.insert(c, 9, 1700);
        assert_eq!(ids.expire(1950), 1);
        assert_eq!(ids.get(c), Some(9));
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn store_once_asks_only_about_a_known_hash() {
        let mut ids = RecentIds::new(1000, 10);
        let h = id_hash(1, "a");
        let stored = ids.store_once(
            h,
            0,
            |_| -> Result<bool, ()> { panic!("new hash") },
            || Ok(7),
        );
        assert_eq!(stored, Ok(Some(7)));
        let dup = ids.store_once(
            h,
            1,
            |seq| Ok::<_, ()>(seq == 7),
            || panic!("a duplicate is not stored"),
        );
        assert_eq!(dup, Ok(None));
        // Same hash, different id (a collision, or the row is gone): stored.
        let again = ids.store_once(h, 2, |_| Ok::<_, ()>(false), || Ok(9));
        assert_eq!((again, ids.get(h)), (Ok(Some(9)), Some(9)));
        let failed = ids.store_once(id_hash(1, "b"), 3, |_| Ok(false), || Err("disk full"));
        assert_eq!(failed, Err("disk full"));
    }
}
