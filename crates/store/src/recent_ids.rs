//! Deduplication of `messageId`s within a window, in memory.
//!
//! A SQLite index on message ids took random inserts into a B-tree larger
//! than the page cache: every stored event dirtied a page of its own, so each
//! commit wrote several times more index pages than event data. Here the
//! recent ids are a hash table in the writer's memory, rebuilt from the event
//! log when the store opens; the log row a hash points at is read back to
//! compare the real id, so a hash collision never drops an event.
//!
//! The table is probed once per stored event at random places in tens of
//! megabytes, so its layout is what it costs: open addressing with linear
//! probing (one cache line per lookup, where `std`'s map reads its control
//! bytes and its bucket in two places), on transparent huge pages where the
//! system offers them (a lookup with 4 KiB pages also missed the TLB, which
//! in a virtual machine is a two-level page walk; it was a tenth of the CPU
//! of `/v1/batch`). It grows by doubling, so a quiet store stays small.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

/// A hash of `(source, messageId)`.
pub(crate) type IdHash = u64;

/// One slot of the table; `hash == 0` marks an empty one (a hash of 0 is
/// kept as 1: a collision like any other, settled by reading the row).
#[derive(Clone, Copy, Default, PartialEq, Debug)]
#[repr(C)]
struct Slot {
    hash: IdHash,
    seq: u64,
}

/// Fewest slots of a table (256 KiB): growing below this is not worth it.
const MIN_SLOTS: usize = 1 << 14;

/// Open addressing with linear probing, at most half full.
struct IdTable {
    slots: SlotBuf,
    len: usize,
    /// Slots it may grow to: twice the most ids it has to hold.
    max_slots: usize,
}

/// Where a probe for a hash ended.
enum Probe {
    Found(usize),
    Empty(usize),
}

impl IdTable {
    fn new(max_ids: usize) -> Self {
        let max_slots = (max_ids.max(1) * 2).next_power_of_two().max(MIN_SLOTS);
        IdTable {
            slots: SlotBuf::zeroed(MIN_SLOTS),
            len: 0,
            max_slots,
        }
    }

    /// Grows (never shrinks) to the size that holds `ids` ids at most
    /// half full, within its largest size: one step instead of a doubling
    /// per power of two, each of which held the old table and the new at
    /// once.
    fn reserve_for(&mut self, ids: usize) {
        let wanted = (ids.max(1) * 2)
            .next_power_of_two()
            .min(self.max_slots)
            .max(MIN_SLOTS);
        if wanted > self.slots.len() {
            self.rehash_into(SlotBuf::zeroed(wanted));
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn key(hash: IdHash) -> IdHash {
        hash.max(1)
    }

    fn probe(&self, hash: IdHash) -> Probe {
        let slots = self.slots.as_slice();
        let mask = self.mask();
        let mut i = hash as usize & mask;
        loop {
            let slot = slots[i];
            if slot.hash == hash {
                return Probe::Found(i);
            }
            if slot.hash == 0 {
                return Probe::Empty(i);
            }
            i = (i + 1) & mask;
        }
    }

    #[cfg(test)]
    fn get(&self, hash: IdHash) -> Option<u64> {
        match self.probe(Self::key(hash)) {
            Probe::Found(i) => Some(self.slots.as_slice()[i].seq),
            Probe::Empty(_) => None,
        }
    }

    /// Makes room for one more id: doubles while more than half full and
    /// below its largest size.
    fn reserve_one(&mut self) {
        if (self.len + 1) * 2 <= self.slots.len() || self.slots.len() >= self.max_slots {
            return;
        }
        self.rehash_into(SlotBuf::zeroed(self.slots.len() * 2));
    }

    fn rehash_into(&mut self, grown: SlotBuf) {
        let old = std::mem::replace(&mut self.slots, grown);
        let mask = self.mask();
        let slots = self.slots.as_mut_slice();
        for slot in old.as_slice().iter().filter(|s| s.hash != 0) {
            let mut i = slot.hash as usize & mask;
            while slots[i].hash != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = *slot;
        }
    }

    fn insert(&mut self, hash: IdHash, seq: u64) {
        self.reserve_one();
        let hash = Self::key(hash);
        match self.probe(hash) {
            Probe::Found(i) => self.slots.as_mut_slice()[i].seq = seq,
            Probe::Empty(i) => self.fill(i, hash, seq),
        }
    }

    fn fill(&mut self, i: usize, hash: IdHash, seq: u64) {
        self.slots.as_mut_slice()[i] = Slot { hash, seq };
        self.len += 1;
    }

    /// Removes `hash` if it still points at `seq`.
    fn remove_if(&mut self, hash: IdHash, seq: u64) {
        let Probe::Found(mut hole) = self.probe(Self::key(hash)) else {
            return;
        };
        if self.slots.as_slice()[hole].seq != seq {
            return;
        }
        // Backward-shift deletion: each later slot of the run moves into the
        // hole when the hole lies on its probe path, so no tombstones.
        let mask = self.mask();
        let slots = self.slots.as_mut_slice();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let slot = slots[j];
            if slot.hash == 0 {
                break;
            }
            let home = slot.hash as usize & mask;
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                slots[hole] = slot;
                hole = j;
            }
        }
        slots[hole] = Slot::default();
        self.len -= 1;
    }
}

/// The table's memory: zeroed pages from the system, resident only once
/// touched, and on Linux advised for transparent huge pages.
struct SlotBuf {
    #[cfg(unix)]
    map: std::ptr::NonNull<Slot>,
    #[cfg(unix)]
    len: usize,
    #[cfg(not(unix))]
    vec: Vec<Slot>,
}

// The buffer is owned memory like a `Vec`'s.
#[cfg(unix)]
unsafe impl Send for SlotBuf {}

#[cfg(unix)]
impl SlotBuf {
    fn zeroed(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<Slot>();
        // SAFETY: an anonymous private mapping, checked below; it is zeroed
        // by the system and suitably aligned for `Slot` (page-aligned).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            // As `Vec` does when memory runs out.
            std::alloc::handle_alloc_error(
                std::alloc::Layout::array::<Slot>(len).unwrap_or(std::alloc::Layout::new::<Slot>()),
            );
        }
        #[cfg(target_os = "linux")]
        // SAFETY: advice on the mapping just made; failing it changes nothing.
        unsafe {
            libc::madvise(ptr, bytes, libc::MADV_HUGEPAGE);
        }
        SlotBuf {
            map: std::ptr::NonNull::new(ptr.cast()).unwrap_or(std::ptr::NonNull::dangling()),
            len,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn as_slice(&self) -> &[Slot] {
        // SAFETY: `len` slots mapped read-write for the life of `self`;
        // all-zero bytes are a valid `Slot`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [Slot] {
        // SAFETY: as in `as_slice`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr(), self.len) }
    }
}

#[cfg(unix)]
impl Drop for SlotBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `zeroed`, unmapped once.
        unsafe {
            libc::munmap(
                self.map.as_ptr().cast(),
                self.len * std::mem::size_of::<Slot>(),
            );
        }
    }
}

#[cfg(not(unix))]
impl SlotBuf {
    fn zeroed(len: usize) -> Self {
        SlotBuf {
            vec: vec![Slot::default(); len],
        }
    }
    fn len(&self) -> usize {
        self.vec.len()
    }
    fn as_slice(&self) -> &[Slot] {
        &self.vec
    }
    fn as_mut_slice(&mut self) -> &mut [Slot] {
        &mut self.vec
    }
}

/// Ids stored within the window: hash → seq of the event that carries it.
pub(crate) struct RecentIds {
    table: IdTable,
    /// Keys of the id hash, drawn at random per process: the table is
    /// rebuilt at each start, and ids chosen to collide cannot be guessed.
    hasher: RandomState,
    /// `(received_ms, seq, hash)` in the order stored, for expiry.
    order: VecDeque<(i64, u64, IdHash)>,
    window_ms: i64,
    capacity: usize,
}

impl RecentIds {
    pub(crate) fn new(window_ms: i64, capacity: usize) -> Self {
        RecentIds {
            table: IdTable::new(capacity),
            hasher: RandomState::new(),
            order: VecDeque::new(),
            window_ms,
            capacity: capacity.max(1),
        }
    }

    /// The hash of a message id within its source.
    pub(crate) fn id_hash(&self, source_id: i64, message_id: &str) -> IdHash {
        let mut h = self.hasher.build_hasher();
        source_id.hash(&mut h);
        message_id.hash(&mut h);
        h.finish()
    }

    /// Starts loading the slot `hash` is probed at into the cache, so that
    /// the probes of a batch overlap their memory reads instead of waiting
    /// for each in turn. A hint only: it changes no result.
    pub(crate) fn prefetch(&self, hash: IdHash) {
        #[cfg(target_arch = "x86_64")]
        {
            let i = IdTable::key(hash) as usize & self.table.mask();
            let slot: *const Slot = &self.table.slots.as_slice()[i];
            // SAFETY: a prefetch reads nothing and cannot fault; the address
            // is of a slot in the table anyway.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(slot.cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
    }

    /// The seq of the event last stored under `hash`, if within the window.
    #[cfg(test)]
    pub(crate) fn get(&self, hash: IdHash) -> Option<u64> {
        self.table.get(hash)
    }

    /// Stores an event unless it is a duplicate, with one probe of the
    /// table: `is_duplicate` is asked about the event last stored under the
    /// same hash, if any; `store` stores the event and gives its seq.
    /// Returns that seq, or `None` for a duplicate.
    pub(crate) fn store_once<E>(
        &mut self,
        hash: IdHash,
        received_ms: i64,
        is_duplicate: impl FnOnce(u64) -> Result<bool, E>,
        store: impl FnOnce() -> Result<u64, E>,
    ) -> Result<Option<u64>, E> {
        self.table.reserve_one();
        let key = IdTable::key(hash);
        let seq = match self.table.probe(key) {
            Probe::Found(i) => {
                if is_duplicate(self.table.slots.as_slice()[i].seq)? {
                    return Ok(None);
                }
                let seq = store()?;
                self.table.slots.as_mut_slice()[i].seq = seq;
                seq
            }
            Probe::Empty(i) => {
                let seq = store()?;
                self.table.fill(i, key, seq);
                seq
            }
        };
        self.remember(hash, seq, received_ms);
        Ok(Some(seq))
    }

    /// Loads the ids of a log read newest first (`(received_ms, seq,
    /// hash)`), into a store that remembers none yet: the table is sized
    /// once for all of them, and the list becomes the expiry order in place.
    /// The newest `capacity` are kept.
    pub(crate) fn load_newest_first(&mut self, mut ids: Vec<(i64, u64, IdHash)>) {
        debug_assert!(self.order.is_empty(), "loaded into an empty store only");
        ids.truncate(self.capacity);
        ids.reverse();
        self.table.reserve_for(ids.len());
        for &(_, seq, hash) in &ids {
            self.table.insert(hash, seq);
        }
        self.order = VecDeque::from(ids);
    }

    /// Records an event just stored (the store itself goes through
    /// [`Self::store_once`]).
    #[cfg(test)]
    pub(crate) fn insert(&mut self, hash: IdHash, seq: u64, received_ms: i64) {
        self.table.insert(hash, seq);
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
        }
        expired
    }

    fn pop_oldest(&mut self) {
        if let Some((_, seq, hash)) = self.order.pop_front() {
            // Only if no newer event took the same hash since.
            self.table.remove_if(hash, seq);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_by_window_and_capacity() {
        let mut ids = RecentIds::new(1000, 3);
        let (a, b, c, d) = (
            ids.id_hash(1, "a"),
            ids.id_hash(1, "b"),
            ids.id_hash(1, "c"),
            ids.id_hash(1, "d"),
        );
        assert_ne!(
            ids.id_hash(1, "a"),
            ids.id_hash(2, "a"),
            "sources are kept apart"
        );
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
        let h = ids.id_hash(1, "a");
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
        let failed = ids.store_once(ids.id_hash(1, "b"), 3, |_| Ok(false), || Err("disk full"));
        assert_eq!(failed, Err("disk full"));
    }

    /// The table against `std`'s map, with hashes that crowd a few home
    /// slots (long runs, wrap-around at the end) and enough ids to grow.
    #[test]
    fn table_matches_a_map_through_inserts_removals_and_growth() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut table = IdTable::new(50_000);
        let mut model = std::collections::HashMap::new();
        for step in 0..200_000u64 {
            // Hashes whose low bits (the home slot) repeat: every run is long.
            let hash = match rng.random_range(0..3) {
                0 => rng.random_range(0..64u64) << 40 | rng.random_range(0..8u64),
                1 => u64::MAX - rng.random_range(0..16u64),
                _ => rng.random::<u64>(),
            };
            if rng.random_bool(0.6) || model.len() < 10 {
                if model.len() < 50_000 {
                    table.insert(hash, step);
                    model.insert(hash.max(1), step);
                }
            } else {
                let seq = model.get(&hash.max(1)).copied().unwrap_or(step);
                table.remove_if(hash, seq);
                model.remove(&hash.max(1));
            }
            if step % 20_000 == 0 {
                for (h, seq) in &model {
                    assert_eq!(table.get(*h), Some(*seq), "step {step}");
                }
            }
            assert_eq!(table.len, model.len());
        }
        for (h, seq) in &model {
            assert_eq!(table.get(*h), Some(*seq));
        }
        assert!(table.slots.len() >= 2 * table.len);
        // A removal asked for an older seq leaves the newer one in place.
        table.insert(42, 1);
        table.insert(42, 2);
        table.remove_if(42, 1);
        assert_eq!(table.get(42), Some(2));
        // Hash 0 is a key like any other.
        table.insert(0, 9);
        assert_eq!(table.get(0), Some(9));
    }

    #[test]
    fn loading_newest_first_sizes_the_table_once_and_keeps_the_order() {
        let mut ids = RecentIds::new(1000, 50_000);
        let mut hashes: Vec<IdHash> = (0..60_000u64)
            .map(|i| ids.id_hash(1, &i.to_string()))
            .collect();
        // An id stored twice (the older copy past the window then): the
        // newer seq must win.
        hashes[10_500] = hashes[59_999];
        let newest_first = (0..60_000u64)
            .rev()
            .map(|seq| (seq as i64 / 100, seq, hashes[seq as usize]))
            .collect();
        ids.load_newest_first(newest_first);
        assert_eq!(ids.table.slots.len(), 131_072, "sized once for 50,000 ids");
        assert_eq!(ids.order.len(), 50_000, "the newest capacity ids are kept");
        assert_eq!(ids.len(), 49_999, "one hash twice");
        assert_eq!(ids.get(hashes[59_999]), Some(59_999), "the newest seq wins");
        assert_eq!(ids.get(hashes[10_000]), Some(10_000));
        assert_eq!(ids.get(hashes[9_999]), None, "past the capacity");
        // Expiry goes oldest first (received_ms = seq / 100, window 1 s),
        // and the older copy's expiry leaves the newer one in place.
        assert_eq!(ids.expire(200 + 1000), 10_000);
        assert_eq!(ids.get(hashes[19_999]), None);
        assert_eq!(ids.get(hashes[20_000]), Some(20_000));
        assert_eq!(ids.get(hashes[59_999]), Some(59_999));
    }

    #[test]
    fn the_table_stops_growing_at_twice_its_capacity() {
        let mut ids = RecentIds::new(i64::MAX, 40_000);
        for i in 0..100_000u64 {
            let h = ids.id_hash(1, &i.to_string());
            ids.insert(h, i, 0);
        }
        assert_eq!(ids.len(), 40_000, "the oldest ids went");
        assert_eq!(ids.table.slots.len(), 131_072);
        let newest = ids.id_hash(1, "99999");
        assert_eq!(ids.get(newest), Some(99_999));
        let oldest = ids.id_hash(1, "0");
        assert_eq!(ids.get(oldest), None);
    }
}
