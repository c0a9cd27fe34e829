//! The in-memory key table: sharded, hashed once per lookup, and bounded.
//!
//! `max_keys` is a hard cap: a slot is reserved before a key is inserted, so the table never
//! holds more. Keys are only ever removed by [`Store::sweep_shard`] when their state is fresh
//! again, that is, equivalent to an absent key. An active client is never reset to gain room.
//! When the table is full of active keys, new keys share one overflow state or are refused
//! ([`OnFull`]).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};

use floodgate_core::key::Key;
use hashbrown::HashTable;

/// Shards in a table. Enough that a sweep holds one shard's lock for well under a
/// millisecond at a million keys (~8 000 entries a shard), and that two threads rarely meet.
const SHARDS: usize = 128;

/// What happens to a new key when the table holds `max_keys` active keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnFull {
    /// New keys share one extra state with the policy's quota until room frees up (the
    /// default). Those clients limit each other, but nobody is reset and memory stays
    /// bounded.
    #[default]
    Overflow,
    /// New keys are refused with 503 until room frees up.
    Reject,
}

/// Where a lookup found its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot<R> {
    /// The key's own state.
    Key(R),
    /// The shared overflow state: the table was full.
    Overflow(R),
    /// The table was full and new keys are refused.
    Full,
}

impl<R> Slot<R> {
    /// The same slot with `f` applied to what was found.
    #[inline]
    pub(crate) fn map<T>(self, f: impl FnOnce(R) -> T) -> Slot<T> {
        match self {
            Slot::Key(found) => Slot::Key(f(found)),
            Slot::Overflow(found) => Slot::Overflow(f(found)),
            Slot::Full => Slot::Full,
        }
    }
}

/// One shard on its own cache lines, so neighbouring locks do not share one.
#[repr(align(128))]
#[derive(Debug)]
struct Shard<K, S> {
    table: RwLock<HashTable<(K, S)>>,
}

/// A bounded map from keys to per-key states.
#[derive(Debug)]
pub(crate) struct Store<K, S> {
    shards: Box<[Shard<K, S>]>,
    hasher: foldhash::quality::RandomState,
    len: AtomicUsize,
    max_keys: usize,
    on_full: OnFull,
    overflow: S,
}

impl<K, S> Store<K, S> {
    /// Keys in the table.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// The number of shards, for sweeping them one at a time.
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }
}

impl<K: Key, S: Default> Store<K, S> {
    pub(crate) fn new(max_keys: usize, on_full: OnFull) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    table: RwLock::new(HashTable::new()),
                })
                .collect(),
            hasher: foldhash::quality::RandomState::default(),
            len: AtomicUsize::new(0),
            max_keys,
            on_full,
            overflow: S::default(),
        }
    }

    fn shard(&self, hash: u64) -> &Shard<K, S> {
        // hashbrown keys its control bytes on the top 7 bits; picking the shard from the bits
        // below keeps them varied inside each shard.
        let index = (hash << 7) >> (64 - SHARDS.trailing_zeros());
        &self.shards[usize::try_from(index).unwrap_or_default()]
    }

    /// Runs `f` on the state of `key` under the shard's read lock (states have interior
    /// mutability), inserting a fresh state the first time the key is seen.
    pub(crate) fn with_shared<R>(&self, key: &K, f: impl FnOnce(&S) -> R) -> Slot<R> {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        {
            let table = shard.table.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, state)) = table.find(hash, |(stored, _)| stored == key) {
                return Slot::Key(f(state));
            }
        }
        self.insert(hash, shard, key, f)
    }

    /// The first sight of `key` (or a race with another insert of it): under the shard's
    /// write lock, its state if another request inserted it meanwhile, else a fresh one if
    /// the cap allows, else the overflow state or nothing.
    fn insert<R>(
        &self,
        hash: u64,
        shard: &Shard<K, S>,
        key: &K,
        f: impl FnOnce(&S) -> R,
    ) -> Slot<R> {
        let mut table = shard.table.write().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, state)) = table.find(hash, |(stored, _)| stored == key) {
            return Slot::Key(f(state));
        }
        let reserved = self
            .len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |len| {
                (len < self.max_keys).then_some(len + 1)
            })
            .is_ok();
        if reserved {
            // The one place a key is copied: `detach` so the table owns no request buffer.
            let entry = table.insert_unique(hash, (key.detach(), S::default()), |(stored, _)| {
                self.hasher.hash_one(stored)
            });
            return Slot::Key(f(&entry.get().1));
        }
        drop(table);
        match self.on_full {
            OnFull::Overflow => Slot::Overflow(f(&self.overflow)),
            OnFull::Reject => Slot::Full,
        }
    }

    /// Drops the keys of shard `index` whose state `is_fresh`, under that shard's lock only.
    /// Returns how many were dropped.
    pub(crate) fn sweep_shard(&self, index: usize, mut is_fresh: impl FnMut(&S) -> bool) -> usize {
        let Some(shard) = self.shards.get(index) else {
            return 0;
        };
        let mut table = shard.table.write().unwrap_or_else(PoisonError::into_inner);
        let before = table.len();
        table.retain(|(_, state)| !is_fresh(state));
        let dropped = before - table.len();
        self.len.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn the_cap_holds_and_new_keys_overflow_into_one_shared_state() {
        let store: Store<u32, AtomicU64> = Store::new(10, OnFull::Overflow);
        for key in 0..10 {
            assert!(matches!(
                store.with_shared(&key, |s| s.fetch_add(1, Ordering::Relaxed)),
                Slot::Key(0)
            ));
        }
        for key in 10..1_000 {
            assert!(matches!(
                store.with_shared(&key, |s| s.fetch_add(1, Ordering::Relaxed)),
                Slot::Overflow(_)
            ));
        }
        assert_eq!(store.len(), 10);
        // Existing keys keep their own state.
        assert!(matches!(
            store.with_shared(&3, |s| s.load(Ordering::Relaxed)),
            Slot::Key(1)
        ));
        assert!(matches!(
            store.with_shared(&999, |s| s.load(Ordering::Relaxed)),
            Slot::Overflow(990)
        ));
    }

    #[test]
    fn a_full_table_refuses_new_keys_when_told_to() {
        let store: Store<u32, AtomicU64> = Store::new(1, OnFull::Reject);
        assert!(matches!(store.with_shared(&1, |_| ()), Slot::Key(())));
        assert!(matches!(store.with_shared(&2, |_| ()), Slot::Full));
        assert!(matches!(store.with_shared(&1, |_| ()), Slot::Key(())));
    }

    #[test]
    fn sweeping_drops_only_what_is_fresh_and_frees_room() {
        let store: Store<u32, AtomicU64> = Store::new(100, OnFull::Reject);
        for key in 0..100 {
            let _ = store.with_shared(&key, |s| s.store(u64::from(key), Ordering::Relaxed));
        }
        let dropped: usize = (0..store.shard_count())
            .map(|shard| store.sweep_shard(shard, |s| s.load(Ordering::Relaxed) < 50))
            .sum();
        assert_eq!((dropped, store.len()), (50, 50));
        for key in 50..100 {
            assert!(
                matches!(store.with_shared(&key, |s| s.load(Ordering::Relaxed)), Slot::Key(v) if v == u64::from(key))
            );
        }
        assert!(matches!(store.with_shared(&1_000, |_| ()), Slot::Key(())));
    }

    #[test]
    fn racing_inserts_never_pass_the_cap() {
        let store: Store<u64, AtomicU64> = Store::new(1_000, OnFull::Overflow);
        std::thread::scope(|scope| {
            for thread in 0..4u64 {
                let store = &store;
                scope.spawn(move || {
                    for key in 0..10_000u64 {
                        let _ = store.with_shared(&(key * 4 + thread), |_| ());
                    }
                });
            }
        });
        let in_table: usize = store
            .shards
            .iter()
            .map(|s| s.table.read().map_or(0, |t| t.len()))
            .sum();
        assert_eq!((store.len(), in_table), (1_000, 1_000));
    }
}
