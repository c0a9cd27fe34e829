//! The slots requests take: one semaphore for a global limit, or one per key.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use floodgate_core::key::Key;

use crate::queue::Slot;

/// Shards of the per-key table: enough that requests for different keys rarely wait on the
/// same lock.
const SHARDS: usize = 64;

type Table<K> = Mutex<HashMap<K, Arc<Slot>, foldhash::quality::RandomState>>;

/// Where the slot for a request comes from.
#[derive(Debug)]
pub(crate) enum Slots<K> {
    /// One limit for everything: no table, no lock.
    One(Arc<Slot>),
    /// A limit per key. A key's entry exists while a request for it is in flight or queued.
    PerKey {
        shards: Box<[Table<K>]>,
        hasher: foldhash::quality::RandomState,
        permits: usize,
        lifo_after: Option<Duration>,
    },
}

impl<K: Key> Slots<K> {
    pub(crate) fn one(permits: usize, lifo_after: Option<Duration>) -> Self {
        Slots::One(Slot::new(permits, lifo_after))
    }

    pub(crate) fn per_key(permits: usize, lifo_after: Option<Duration>) -> Self {
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(HashMap::default()))
            .collect();
        Slots::PerKey {
            shards,
            hasher: foldhash::quality::RandomState::default(),
            permits,
            lifo_after,
        }
    }

    fn shard(&self, key: &K) -> Option<&Table<K>> {
        match self {
            Slots::One(_) => None,
            Slots::PerKey { shards, hasher, .. } => {
                let index = usize::try_from(hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
                shards.get(index)
            }
        }
    }

    /// The slot of `key`, made on first use.
    pub(crate) fn get(&self, key: &K) -> Arc<Slot> {
        match self {
            Slots::One(slot) => Arc::clone(slot),
            Slots::PerKey {
                permits,
                lifo_after,
                ..
            } => {
                let table = self.shard(key).expect("a per-key table has shards");
                let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(slot) = table.get(key) {
                    return Arc::clone(slot);
                }
                let slot = Slot::new(*permits, *lifo_after);
                table.insert(key.detach(), Arc::clone(&slot));
                slot
            }
        }
    }

    /// Gives back a user's reference to the slot of `key`, and drops the entry if that was
    /// the last user.
    fn release(&self, key: &K, slot: Arc<Slot>) {
        let Some(table) = self.shard(key) else { return };
        let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
        // The table holds one reference and the caller one: nobody else is in flight or
        // queued. New users take theirs under this lock, and the caller's goes under it
        // too, so two users releasing at once cannot both see the other still there.
        let last = Arc::strong_count(&slot) == 2;
        drop(slot);
        if last {
            table.remove(key);
        }
    }

    /// The slot of a global limit.
    pub(crate) fn global(&self) -> Option<&Arc<Slot>> {
        match self {
            Slots::One(slot) => Some(slot),
            Slots::PerKey { .. } => None,
        }
    }

    /// Keys with an entry now.
    pub(crate) fn keys(&self) -> usize {
        match self {
            Slots::One(_) => 1,
            Slots::PerKey { shards, .. } => shards
                .iter()
                .map(|table| table.lock().unwrap_or_else(PoisonError::into_inner).len())
                .sum(),
        }
    }
}

/// A request's hold on its slot; the last holder of a per-key slot removes the entry.
pub(crate) struct SlotRef<K: Key> {
    slots: Arc<dyn SlotTable<K>>,
    key: K,
    /// `None` only while being given back.
    slot: Option<Arc<Slot>>,
}

impl<K: Key> SlotRef<K> {
    pub(crate) fn new(slots: Arc<dyn SlotTable<K>>, key: K, slot: Arc<Slot>) -> Self {
        Self {
            slots,
            key,
            slot: Some(slot),
        }
    }

    pub(crate) fn slot(&self) -> &Slot {
        self.slot
            .as_ref()
            .expect("a slot reference holds its slot until dropped")
    }
}

/// The table a [`SlotRef`] goes back to.
pub(crate) trait SlotTable<K>: Send + Sync {
    fn release(&self, key: &K, slot: Arc<Slot>);
}

impl<K: Key> SlotTable<K> for Slots<K> {
    fn release(&self, key: &K, slot: Arc<Slot>) {
        Slots::release(self, key, slot);
    }
}

impl<K: Key> Drop for SlotRef<K> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.slots.release(&self.key, slot);
        }
    }
}

/// A place in a slot's queue, given back when dropped unless the request was admitted.
pub(crate) struct QueueTicket<K: Key> {
    slot: Option<SlotRef<K>>,
}

impl<K: Key> QueueTicket<K> {
    /// A place in the queue of `slot`, if fewer than `max` wait.
    pub(crate) fn take(slot: SlotRef<K>, max: usize) -> Result<Self, SlotRef<K>> {
        let taken = slot
            .slot()
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                (slot.slot().waiting(queued) < max).then_some(queued + 1)
            })
            .is_ok();
        if taken {
            Ok(Self { slot: Some(slot) })
        } else {
            Err(slot)
        }
    }

    /// The slot whose queue this is.
    pub(crate) fn slot(&self) -> &Slot {
        self.slot
            .as_ref()
            .expect("a ticket holds its slot until admitted or dropped")
            .slot()
    }

    /// Leaves the queue, keeping the hold on the slot.
    pub(crate) fn admit(mut self) -> SlotRef<K> {
        let slot = self.slot.take().expect("a ticket is admitted once");
        slot.slot().queued.fetch_sub(1, Ordering::Relaxed);
        slot
    }

    /// Leaves the queue with the permit a waiter was granted, keeping the hold on the slot.
    pub(crate) fn admit_granted(self) -> SlotRef<K> {
        let slot = self.admit();
        slot.slot().granted_taken();
        slot
    }
}

impl<K: Key> Drop for QueueTicket<K> {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.slot().queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
