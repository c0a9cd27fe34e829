//! The hot set: a small index of the URIs hit most often this second, read before the
//! store so that most hits on them skip moka's lookup.
//!
//! A moka lookup costs some 1 000 instructions (140 ns here): the hash, the concurrent
//! map, the clock and, above all, recording the read for the eviction policy. A hot URI
//! takes thousands of hits a second, and the policy does not need to hear of each of
//! them. So a URI that the store answers [`HOT_HITS`] times within one second enters a
//! slot here, and from then on 1 hit in [`RECORD_EVERY`] goes to moka: that hit records
//! the read (a URI this hot still records several a second, enough to stay most recently
//! used and at the top of the frequency sketch, whose counters stop at 15), and checks the
//! slot against the store. The other hits read the slot: a hash, one load, a comparison.
//! Caffeine's read buffer drops reads under load for the same reason.
//!
//! A slot never answers with a resource the store has let go. Every removal from the
//! store (replaced by a new response, invalidated, evicted) reaches [`Hot::forget`]
//! through the store's eviction listener, which moka calls before the write returns; it
//! moves the slot's generation on, and a resident admitted under an older generation is
//! not served. A URI admitted from a lookup that raced a removal holds the generation of
//! before it, and is never served either. A purge by prefix moves every slot on.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use crate::store::Resource;

/// Slots, 16 bytes each: 16 KiB a cache. A hot set larger than this is not a few hot URIs.
const SLOTS: usize = 1024;
/// Store hits within one second that make a URI hot.
pub(crate) const HOT_HITS: u32 = 16;
/// One hit on a hot URI in this many goes to the store, on each thread.
pub(crate) const RECORD_EVERY: u32 = 16;

thread_local! {
    /// Hits on this thread until the next one goes to the store.
    static UNTIL_RECORDED: Cell<u32> = const { Cell::new(RECORD_EVERY) };
}

/// The hot set.
pub(crate) struct Hot {
    slots: Box<[Slot]>,
    /// Seeded per cache, like the store's: the paths come from clients.
    hasher: foldhash::quality::RandomState,
}

struct Slot {
    /// Moved on by every removal from the store of a URI in this slot.
    generation: AtomicU64,
    resident: ArcSwapOption<Resident>,
}

struct Resident {
    key: Box<str>,
    resource: Arc<Resource>,
    /// The slot's generation when the store's lookup began.
    generation: u64,
}

/// Where a lookup of one key reads and admits, with the slot's generation taken before
/// it went to the store.
pub(crate) struct Ticket<'a> {
    slot: &'a Slot,
    generation: u64,
}

impl Hot {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..SLOTS)
                .map(|_| Slot {
                    generation: AtomicU64::new(0),
                    resident: ArcSwapOption::empty(),
                })
                .collect(),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    fn slot(&self, key: &str) -> &Slot {
        // The low bits: `SLOTS` is a power of two, and foldhash's quality variant mixes
        // them fully.
        #[allow(
            clippy::cast_possible_truncation,
            reason = "only the low bits index the slots"
        )]
        let index = self.hasher.hash_one(key) as usize % SLOTS;
        &self.slots[index]
    }

    /// `key`'s resource if it is hot and of use at `now`, unless this hit is the one in
    /// [`RECORD_EVERY`] that goes to the store; else a ticket for the store's lookup.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Result<Arc<Resource>, Ticket<'_>> {
        let slot = self.slot(key);
        // Taken first: a removal after it makes whatever this lookup admits unservable.
        let generation = slot.generation.load(Ordering::Acquire);
        let resident = slot.resident.load();
        if let Some(resident) = resident.as_deref()
            && resident.generation == generation
            && *resident.key == *key
            && now < resident.resource.expires
            && !record_this_hit()
        {
            return Ok(Arc::clone(&resident.resource));
        }
        Err(Ticket { slot, generation })
    }

    /// Called for every resource the store removes, before the removal returns.
    pub(crate) fn forget(&self, key: &str, resource: &Arc<Resource>) {
        let slot = self.slot(key);
        slot.generation.fetch_add(1, Ordering::AcqRel);
        // Drop it now rather than at the next admission: it may be large.
        let resident = slot.resident.load();
        if resident
            .as_deref()
            .is_some_and(|resident| Arc::ptr_eq(&resident.resource, resource))
        {
            slot.resident.compare_and_swap(&*resident, None);
        }
    }

    /// Makes every slot unservable: a purge by prefix, whose removals moka may apply
    /// lazily.
    pub(crate) fn forget_all(&self) {
        for slot in &*self.slots {
            slot.generation.fetch_add(1, Ordering::AcqRel);
            slot.resident.store(None);
        }
    }
}

impl Ticket<'_> {
    /// Puts `resource`, which the store just gave for `key`, in the slot if it is hot at
    /// `now` and not there already.
    pub(crate) fn admit(self, key: &str, resource: &Arc<Resource>, now: Instant) {
        if !resource.heat.hit(resource.expires, now) {
            return;
        }
        let resident = self.slot.resident.load();
        if resident.as_deref().is_some_and(|resident| {
            resident.generation == self.generation && Arc::ptr_eq(&resident.resource, resource)
        }) {
            return;
        }
        self.slot.resident.store(Some(Arc::new(Resident {
            key: key.into(),
            resource: Arc::clone(resource),
            generation: self.generation,
        })));
    }
}

/// Whether this hit on a hot URI goes to the store: one in [`RECORD_EVERY`] on each
/// thread.
fn record_this_hit() -> bool {
    UNTIL_RECORDED.with(|left| {
        let now = left.get() - 1;
        if now == 0 {
            left.set(RECORD_EVERY);
            true
        } else {
            left.set(now);
            false
        }
    })
}

/// A resource's store hits in the current second. Updated without a read-modify-write: two
/// hits racing may count once, which only delays a URI's admission.
#[derive(Debug, Default)]
pub(crate) struct Heat(AtomicU64);

impl Heat {
    /// Counts a store hit at `now` and says whether the resource is hot: [`HOT_HITS`] of
    /// them within one second. The seconds are counted down to `expires`, which is fixed
    /// for the resource.
    fn hit(&self, expires: Instant, now: Instant) -> bool {
        let second = expires.saturating_duration_since(now).as_secs();
        let last = self.0.load(Ordering::Relaxed);
        let hits = if last >> 32 == second {
            (last & u64::from(u32::MAX)) + 1
        } else {
            1
        };
        self.0.store(second << 32 | hits, Ordering::Relaxed);
        hits >= u64::from(HOT_HITS)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::key::Vary;

    fn resource(now: Instant) -> Arc<Resource> {
        Arc::new(Resource {
            vary: Vary::None,
            variants: Vec::new(),
            expires: now + Duration::from_secs(60),
            heat: Heat::default(),
        })
    }

    /// Looks `key` up `times` times, admitting `resource` on each store hit; how many hits
    /// the hot set answered.
    fn hits(hot: &Hot, key: &str, resource: &Arc<Resource>, now: Instant, times: u32) -> u32 {
        let mut answered = 0;
        for _ in 0..times {
            match hot.get(key, now) {
                Ok(found) => {
                    assert!(Arc::ptr_eq(&found, resource));
                    answered += 1;
                }
                Err(ticket) => ticket.admit(key, resource, now),
            }
        }
        answered
    }

    #[test]
    fn a_uri_is_hot_after_enough_store_hits_in_one_second() {
        let hot = Hot::new();
        let now = Instant::now();
        let page = resource(now);
        assert_eq!(hits(&hot, "/page", &page, now, HOT_HITS - 1), 0);
        assert_eq!(hits(&hot, "/other", &resource(now), now, 1), 0);
        // The `HOT_HITS`th store hit admits it.
        assert_eq!(hits(&hot, "/page", &page, now, 1), 0);
        let answered = hits(&hot, "/page", &page, now, 100 * RECORD_EVERY);
        assert_eq!(
            answered,
            100 * (RECORD_EVERY - 1),
            "one hit in RECORD_EVERY goes to the store"
        );
        assert!(hot.get("/pag", now).is_err(), "another key, another slot");
        let past_use = page.expires;
        assert!(hot.get("/page", past_use).is_err(), "never past use");
    }

    #[test]
    fn store_hits_count_within_one_second() {
        let hot = Hot::new();
        let start = Instant::now();
        let page = resource(start);
        let mut now = start;
        for _ in 0..8 {
            // Spread over seconds, no second has enough.
            assert_eq!(hits(&hot, "/page", &page, now, HOT_HITS / 2), 0);
            now += Duration::from_secs(1);
        }
        assert_eq!(hits(&hot, "/page", &page, now, HOT_HITS), 0);
        assert!(hits(&hot, "/page", &page, now, RECORD_EVERY) > 0);
    }

    #[test]
    fn a_removal_makes_the_slot_unservable_even_for_a_lookup_racing_it() {
        let hot = Hot::new();
        let now = Instant::now();
        let page = resource(now);
        let _ = hits(&hot, "/page", &page, now, HOT_HITS);
        assert!(hits(&hot, "/page", &page, now, RECORD_EVERY) > 0);

        hot.forget("/page", &page);
        assert!(hot.get("/page", now).is_err(), "forgotten at once");

        // A lookup that took its ticket before a removal, and admits after it.
        let Err(ticket) = hot.get("/page", now) else {
            panic!("forgotten");
        };
        hot.forget("/page", &page);
        ticket.admit("/page", &page, now);
        for _ in 0..RECORD_EVERY {
            assert!(
                hot.get("/page", now).is_err(),
                "admitted under the generation before the removal: never served"
            );
        }
    }

    #[test]
    fn a_purge_forgets_every_slot() {
        let hot = Hot::new();
        let now = Instant::now();
        let pages: Vec<_> = (0..8).map(|_| resource(now)).collect();
        for (n, page) in pages.iter().enumerate() {
            let _ = hits(&hot, &format!("/{n}"), page, now, HOT_HITS);
        }
        hot.forget_all();
        for n in 0..8 {
            assert!(hot.get(&format!("/{n}"), now).is_err());
        }
    }
}
