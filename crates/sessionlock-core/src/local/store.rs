//! The session map: a sharded hash table of `key -> (value, created, last access)`.
//!
//! Pure Rust and generic over the value, so `cargo test` covers it without Python. It is our
//! own sharding (rather than `DashMap`) because expiry and approximate-LRU eviction need to
//! scan or sample one shard at a time, which `DashMap`'s public API does not offer.
//!
//! Invariants:
//! - A shard lock is held only for the table operation itself. No method calls back into
//!   the caller's code while holding it except the `held` predicate, which may only take the
//!   key-lock table's shard mutex (keylock.rs). Lock order: shard -> key-lock table, never the
//!   reverse (keylock.rs never touches the store).
//! - Values that leave the map (replaced, removed, expired, evicted) are *returned* to the
//!   caller, never dropped here: for `Py` values a drop can run `__del__`, which must happen
//!   after every lock is released.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use parking_lot::RwLock;

use crate::local::key::{Key, Loc};

const SHARDS: usize = 16;
/// Entries looked at per eviction (Redis uses 5; more gets closer to true LRU).
const EVICTION_SAMPLES: usize = 8;
/// Shards sampled per eviction; the oldest candidate among them is evicted.
const EVICTION_SHARDS: usize = 4;

/// Monotonic nanoseconds since the first call in this process.
#[must_use]
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // +1 so that 0 can mean "never" in the slots' timestamps.
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX) + 1
}

/// Expiry rule of a store; `0` disables a limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ttl {
    pub idle_ns: u64,
    pub absolute_ns: u64,
}

impl Ttl {
    #[must_use]
    pub fn is_enabled(self) -> bool {
        self.idle_ns != 0 || self.absolute_ns != 0
    }

    fn expired<V>(self, slot: &Slot<V>, now: u64) -> bool {
        (self.idle_ns != 0
            && now.saturating_sub(slot.accessed.load(Ordering::Relaxed)) >= self.idle_ns)
            || (self.absolute_ns != 0 && now.saturating_sub(slot.created) >= self.absolute_ns)
    }
}

struct Slot<V> {
    key: Key,
    value: V,
    created: u64,
    /// Updated under the shard's *read* lock, hence atomic.
    accessed: AtomicU64,
}

/// Result of a lookup. `Expired` still hands out the value so that the caller can decide
/// (a session held under `lock()` does not expire).
pub enum Get<R> {
    Hit(R),
    Expired(R),
    Miss,
}

pub enum Insert<V> {
    /// Stored. `expired` is a previous, expired occupant that was replaced.
    Inserted { expired: Option<(Box<str>, V)> },
    /// Not stored because the key is live: the offered value is given back.
    Present { rejected: V },
    /// Overwrote a live value (only when overwriting was asked for).
    Replaced { previous: V },
}

pub enum Remove<V> {
    Removed(V),
    Expired(Box<str>, V),
    Missing,
}

/// Whether a key is pinned (held under a session lock): pinned entries neither expire
/// nor get evicted.
pub type Held<'a> = &'a dyn Fn(&Loc<'_>) -> bool;

pub struct Store<V> {
    shards: Box<[RwLock<HashTable<Slot<V>>>]>,
    len: AtomicUsize,
    rng: AtomicU64,
}

impl<V> Default for Store<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Store<V> {
    #[must_use]
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            len: AtomicUsize::new(0),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    #[must_use]
    pub fn shard_count(&self) -> usize {
        SHARDS
    }

    #[inline]
    fn shard(&self, k: &Loc<'_>) -> &RwLock<HashTable<Slot<V>>> {
        // Bits the shard's own table does not use: hashbrown takes the low bits for the
        // position and the top seven for its tag (sharding on those would leave the tags of
        // one shard with three bits of entropy, and lookups comparing more keys).
        &self.shards[(k.hash >> 44) as usize % SHARDS]
    }

    /// Number of stored entries, including expired ones not yet reclaimed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Looks `key` up and maps its value with `f` under the shard's read lock (`f` must not
    /// run foreign code; an incref is fine). `touch` refreshes the idle clock on a hit.
    pub fn get<R>(
        &self,
        k: &Loc<'_>,
        now: u64,
        ttl: Ttl,
        touch: bool,
        f: impl FnOnce(&V) -> R,
    ) -> Get<R> {
        let table = self.shard(k).read();
        match table.find(k.hash, |s| s.key.matches(k.key)) {
            None => Get::Miss,
            Some(slot) if ttl.is_enabled() && ttl.expired(slot, now) => {
                Get::Expired(f(&slot.value))
            }
            Some(slot) => {
                // now == 0: the manager keeps no clock (no TTL, no LRU), so don't dirty the line.
                if touch && now != 0 {
                    slot.accessed.store(now, Ordering::Relaxed);
                }
                Get::Hit(f(&slot.value))
            }
        }
    }

    /// Stores `value` under `key` if the key is absent or expired (and not held); with
    /// `overwrite`, also replaces a live value.
    pub fn insert(
        &self,
        k: &Loc<'_>,
        value: V,
        now: u64,
        ttl: Ttl,
        held: Held<'_>,
        overwrite: bool,
    ) -> Insert<V> {
        let mut table = self.shard(k).write();
        let hasher = |s: &Slot<V>| s.key.as_ref().hash();
        match table.entry(k.hash, |s| s.key.matches(k.key), hasher) {
            Entry::Occupied(mut e) => {
                let slot = e.get_mut();
                if ttl.is_enabled() && ttl.expired(slot, now) && !held(k) {
                    let old = std::mem::replace(&mut slot.value, value);
                    slot.created = now;
                    *slot.accessed.get_mut() = now;
                    Insert::Inserted {
                        expired: Some((slot.key.clone().into_box(), old)),
                    }
                } else if overwrite {
                    *slot.accessed.get_mut() = now;
                    Insert::Replaced {
                        previous: std::mem::replace(&mut slot.value, value),
                    }
                } else {
                    Insert::Present { rejected: value }
                }
            }
            Entry::Vacant(e) => {
                e.insert(Slot {
                    key: Key::from_ref(k.key),
                    value,
                    created: now,
                    accessed: AtomicU64::new(now),
                });
                self.len.fetch_add(1, Ordering::Relaxed);
                Insert::Inserted { expired: None }
            }
        }
    }

    /// Replaces the value of a live entry, giving back the old one, if `expected` accepts the
    /// current value (a compare-and-swap; `expected` must not run foreign code).
    ///
    /// # Errors
    ///
    /// `Err(value)` (the value given back) if the key is absent (or expired and not held) or
    /// holds another value, in which case nothing changes.
    pub fn replace_existing(
        &self,
        k: &Loc<'_>,
        value: V,
        now: u64,
        ttl: Ttl,
        held: Held<'_>,
        expected: impl FnOnce(&V) -> bool,
    ) -> Result<V, V> {
        let mut table = self.shard(k).write();
        match table.find_mut(k.hash, |s| s.key.matches(k.key)) {
            Some(slot)
                if !(ttl.is_enabled() && ttl.expired(slot, now) && !held(k))
                    && expected(&slot.value) =>
            {
                *slot.accessed.get_mut() = now;
                Ok(std::mem::replace(&mut slot.value, value))
            }
            _ => Err(value),
        }
    }

    pub fn remove(&self, k: &Loc<'_>, now: u64, ttl: Ttl, held: Held<'_>) -> Remove<V> {
        let mut table = self.shard(k).write();
        let Ok(entry) = table.find_entry(k.hash, |s| s.key.matches(k.key)) else {
            return Remove::Missing;
        };
        let expired = ttl.is_enabled() && ttl.expired(entry.get(), now) && !held(k);
        let (slot, _) = entry.remove();
        self.len.fetch_sub(1, Ordering::Relaxed);
        if expired {
            Remove::Expired(slot.key.into_box(), slot.value)
        } else {
            Remove::Removed(slot.value)
        }
    }

    /// Removes `key` only if it is (still) expired and not held.
    pub fn remove_if_expired(
        &self,
        k: &Loc<'_>,
        now: u64,
        ttl: Ttl,
        held: Held<'_>,
    ) -> Option<(Box<str>, V)> {
        if !ttl.is_enabled() {
            return None;
        }
        let mut table = self.shard(k).write();
        let entry = table.find_entry(k.hash, |s| s.key.matches(k.key)).ok()?;
        if !ttl.expired(entry.get(), now) || held(k) {
            return None;
        }
        let (slot, _) = entry.remove();
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some((slot.key.into_box(), slot.value))
    }

    /// Refreshes the idle clock of `key`.
    pub fn touch(&self, k: &Loc<'_>, now: u64, ttl: Ttl) -> Get<()> {
        self.get(k, now, ttl, true, |_| ())
    }

    /// Removes every expired, unheld entry of shard `index` and returns them.
    pub fn purge_shard(
        &self,
        index: usize,
        now: u64,
        ttl: Ttl,
        held: Held<'_>,
    ) -> Vec<(Box<str>, V)> {
        if !ttl.is_enabled() {
            return Vec::new();
        }
        let shard = &self.shards[index % SHARDS];
        // Scan under the read lock first: most sweeps find nothing and must not stall writers.
        if !shard.read().iter().any(|s| ttl.expired(s, now)) {
            return Vec::new();
        }
        let mut table = shard.write();
        let out: Vec<_> = table
            .extract_if(|s| ttl.expired(s, now) && !held(&s.key.loc()))
            .map(|s| (s.key.into_box(), s.value))
            .collect();
        self.len.fetch_sub(out.len(), Ordering::Relaxed);
        out
    }

    /// Removes an approximately least-recently-used entry that is not held: samples a few
    /// entries at a random position in each of several random shards (Redis-style sampled
    /// LRU) and evicts the oldest of them, if nobody touched it since it was sampled.
    pub fn evict_one(&self, held: Held<'_>) -> Option<(Box<str>, V)> {
        // A few sampled rounds, then one pass over every shard so that an entry is found
        // whenever an unheld one exists.
        for round in 0..=SHARDS {
            let full = round == SHARDS;
            let mut best: Option<(usize, Key, u64)> = None;
            for probe in 0..(if full { SHARDS } else { EVICTION_SHARDS }) {
                let r = self.next_random();
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "r is a random sample: keeping its low bits (on a 32-bit target) is fine"
                )]
                let index = if full { probe } else { (r as usize) % SHARDS };
                let table = self.shards[index].read();
                let n = table.len();
                if n == 0 {
                    continue;
                }
                let start = ((r >> 32) as usize) % n;
                let candidate = table
                    .iter()
                    .skip(start)
                    .chain(table.iter())
                    .take(EVICTION_SAMPLES.min(n))
                    .filter(|s| !held(&s.key.loc()))
                    .map(|s| (s.accessed.load(Ordering::Relaxed), s))
                    .min_by_key(|(seen, _)| *seen);
                if let Some((seen, slot)) = candidate {
                    if best.as_ref().is_none_or(|(_, _, b)| seen < *b) {
                        best = Some((index, slot.key.clone(), seen));
                    }
                }
            }
            let Some((index, key, seen)) = best else {
                continue;
            };
            let k = key.loc();
            let mut table = self.shards[index].write();
            if let Ok(entry) = table.find_entry(k.hash, |s| s.key == key) {
                if entry.get().accessed.load(Ordering::Relaxed) == seen && !held(&k) {
                    let (slot, _) = entry.remove();
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    return Some((slot.key.into_box(), slot.value));
                }
            }
        }
        None
    }

    /// Keys of the live (unexpired or held) entries.
    pub fn keys(&self, now: u64, ttl: Ttl, held: Held<'_>) -> Vec<String> {
        let mut out = Vec::with_capacity(self.len());
        for shard in &*self.shards {
            let table = shard.read();
            out.extend(
                table
                    .iter()
                    .filter(|s| !(ttl.is_enabled() && ttl.expired(s, now)) || held(&s.key.loc()))
                    .map(|s| s.key.with_str(str::to_owned)),
            );
        }
        out
    }

    /// Takes every entry out (for `clear()` and GC's `__clear__`).
    pub fn drain(&self) -> Vec<(Box<str>, V)> {
        let mut out = Vec::with_capacity(self.len());
        for shard in &*self.shards {
            let taken = std::mem::take(&mut *shard.write());
            self.len.fetch_sub(taken.len(), Ordering::Relaxed);
            out.extend(taken.into_iter().map(|s| (s.key.into_box(), s.value)));
        }
        out
    }

    /// Visits every value with the shards read-locked; a shard that is write-locked right now
    /// is skipped (for GC traversal, which must never block: skipping only makes the
    /// collector more conservative).
    ///
    /// # Errors
    ///
    /// The first error `f` returns; the values after it are not visited.
    pub fn try_for_each_value<E>(&self, mut f: impl FnMut(&V) -> Result<(), E>) -> Result<(), E> {
        for shard in &*self.shards {
            if let Some(table) = shard.try_read() {
                for slot in table.iter() {
                    f(&slot.value)?;
                }
            }
        }
        Ok(())
    }

    fn next_random(&self) -> u64 {
        // xorshift64*: eviction sampling only needs cheap, well-spread numbers. One atomic
        // step (not a load and a store), so two threads never draw the same sample, with or
        // without a GIL serializing them.
        let step = |mut x: u64| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x
        };
        let prev = self
            .rng
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(step(x)))
            .expect("the update always succeeds");
        step(prev).wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::key::Loc;

    const NONE: Ttl = Ttl {
        idle_ns: 0,
        absolute_ns: 0,
    };
    fn never(_: &Loc<'_>) -> bool {
        false
    }

    fn is(name: &str) -> impl Fn(&Loc<'_>) -> bool + '_ {
        move |k: &Loc<'_>| *k == Loc::new(name)
    }

    #[test]
    fn insert_get_remove() {
        let s: Store<u32> = Store::new();
        assert!(matches!(
            s.insert(&Loc::new("a"), 1, 1, NONE, &never, false),
            Insert::Inserted { expired: None }
        ));
        assert!(matches!(
            s.insert(&Loc::new("a"), 2, 1, NONE, &never, false),
            Insert::Present { rejected: 2 }
        ));
        assert!(matches!(
            s.get(&Loc::new("a"), 1, NONE, true, |v| *v),
            Get::Hit(1)
        ));
        assert!(matches!(
            s.insert(&Loc::new("a"), 3, 1, NONE, &never, true),
            Insert::Replaced { previous: 1 }
        ));
        assert_eq!(s.len(), 1);
        assert!(matches!(
            s.remove(&Loc::new("a"), 1, NONE, &never),
            Remove::Removed(3)
        ));
        assert!(matches!(
            s.remove(&Loc::new("a"), 1, NONE, &never),
            Remove::Missing
        ));
        assert!(s.is_empty());
    }

    #[test]
    fn idle_expiry_and_held_pin() {
        let s: Store<u32> = Store::new();
        let ttl = Ttl {
            idle_ns: 10,
            absolute_ns: 0,
        };
        s.insert(&Loc::new("a"), 1, 100, ttl, &never, false);
        assert!(matches!(
            s.get(&Loc::new("a"), 105, ttl, true, |v| *v),
            Get::Hit(1)
        ));
        // touched at 105, so alive at 114, expired at 115
        assert!(matches!(
            s.get(&Loc::new("a"), 114, ttl, false, |v| *v),
            Get::Hit(1)
        ));
        assert!(matches!(
            s.get(&Loc::new("a"), 115, ttl, false, |v| *v),
            Get::Expired(1)
        ));
        let pinned = is("a");
        assert!(s
            .remove_if_expired(&Loc::new("a"), 200, ttl, &pinned)
            .is_none());
        assert!(s
            .replace_existing(&Loc::new("a"), 8, 200, ttl, &pinned, |v| *v == 2)
            .is_err());
        assert!(s
            .replace_existing(&Loc::new("a"), 7, 200, ttl, &pinned, |v| *v == 1)
            .is_ok());
        assert_eq!(s.purge_shard(0, 400, ttl, &pinned).len() + s.len(), 1);
        let mut purged = 0;
        for i in 0..s.shard_count() {
            purged += s.purge_shard(i, 400, ttl, &never).len();
        }
        assert_eq!((purged, s.len()), (1, 0));
    }

    #[test]
    fn absolute_expiry_ignores_access() {
        let s: Store<u32> = Store::new();
        let ttl = Ttl {
            idle_ns: 0,
            absolute_ns: 10,
        };
        s.insert(&Loc::new("a"), 1, 100, ttl, &never, false);
        assert!(matches!(s.touch(&Loc::new("a"), 109, ttl), Get::Hit(())));
        assert!(matches!(
            s.get(&Loc::new("a"), 110, ttl, true, |v| *v),
            Get::Expired(1)
        ));
        // an expired occupant counts as absent for insert, and is handed back
        match s.insert(&Loc::new("a"), 2, 111, ttl, &never, false) {
            Insert::Inserted {
                expired: Some((k, 1)),
            } => assert_eq!(&*k, "a"),
            _ => panic!("expected replacement of the expired value"),
        }
    }

    #[test]
    fn eviction_prefers_old_and_skips_held() {
        let s: Store<u32> = Store::new();
        for i in 0..4u32 {
            s.insert(
                &Loc::new(&format!("k{i}")),
                i,
                u64::from(i) + 1,
                NONE,
                &never,
                false,
            );
        }
        let held = is("k0");
        let (k, _) = s.evict_one(&held).expect("an entry to evict");
        assert_ne!(&*k, "k0");
        assert_eq!(s.len(), 3);
        let all_held = |_: &Loc<'_>| true;
        assert!(s.evict_one(&all_held).is_none());
    }

    #[test]
    fn uuid_keys_round_trip_and_stay_distinct_from_other_forms() {
        let s: Store<u32> = Store::new();
        let canon = "0b9d7c3e-4f1a-4c2b-9d8e-7f6a5b4c3d2e";
        let upper = "0B9D7C3E-4F1A-4C2B-9D8E-7F6A5B4C3D2E";
        s.insert(&Loc::new(canon), 1, 1, NONE, &never, false);
        s.insert(&Loc::new(upper), 2, 1, NONE, &never, false);
        assert!(matches!(
            s.get(&Loc::new(canon), 1, NONE, false, |v| *v),
            Get::Hit(1)
        ));
        assert!(matches!(
            s.get(&Loc::new(upper), 1, NONE, false, |v| *v),
            Get::Hit(2)
        ));
        let mut keys = s.keys(1, NONE, &never);
        keys.sort();
        assert_eq!(keys, vec![upper.to_string(), canon.to_string()]);
        let seen = std::cell::RefCell::new(Vec::new());
        let held = |k: &Loc<'_>| {
            seen.borrow_mut().push(k.hash);
            true
        };
        assert!(s.evict_one(&held).is_none());
        assert!(
            seen.borrow().contains(&Loc::new(canon).hash),
            "held() sees the original key"
        );
    }

    #[test]
    fn keys_and_drain() {
        let s: Store<u32> = Store::new();
        for i in 0..100u32 {
            s.insert(&Loc::new(&i.to_string()), i, 1, NONE, &never, false);
        }
        let mut keys = s.keys(1, NONE, &never);
        keys.sort_by_key(|k| k.parse::<u32>().unwrap());
        assert_eq!(keys.len(), 100);
        assert_eq!(s.drain().len(), 100);
        assert!(s.is_empty());
    }
}
