//! The hot set: a small index of the URIs hit most often this second, read before the
//! store so that most hits on them skip moka's lookup.
//!
//! A moka lookup costs some 1 000 instructions (110–150 ns here): the hash, the concurrent
//! map, the clock and, above all, recording the read for the eviction policy. A hot URI
//! takes thousands of hits a second, and the policy does not need to hear of each of
//! them; Caffeine's read buffer drops reads under load for the same reason. So a URI that
//! the store answers [`HOT_HITS`] times within one second enters a slot here, and from
//! then on about 1 hit in [`RECORD_EVERY`], drawn at random, goes to moka: that hit
//! records the read (a URI this hot still records two a second or more) and checks the
//! slot against the store. The other hits read the slot: a hash, the slot's generation and
//! tag, arc-swap's load of the resident, a comparison of keys, a random draw, and a count
//! on the resource's `Arc`. A lookup of a URI that is not hot stops at the slot's tag, a
//! hash of the key admitted last.
//!
//! A slot never answers with a resource the store has let go. The store calls
//! [`Hot::forget`] after each write that replaces or drops a URI, and before the write
//! returns; it moves the slot's generation on, and a resident admitted under another
//! generation is not served. A lookup that raced the write took the generation of before
//! it, so what it admits is not served either, and is taken out again at once. A purge by
//! prefix moves every slot on.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use crate::store::Resource;

/// Slots, 24 bytes each (24 KiB a cache), and 32 more for a resident, whose resource the
/// store holds anyway. A hot set larger than this is not a few hot URIs.
const SLOTS: usize = 1024;
/// Store hits within one second that make a URI hot.
pub(crate) const HOT_HITS: u32 = 16;
/// About one hit on a hot URI in this many goes to the store.
const RECORD_EVERY: u64 = 8;

thread_local! {
    /// This thread's draws of which hits go to the store (xorshift). Random rather than
    /// every n-th hit: a thread serving n hot URIs in turn would send the same one each time.
    static DRAWS: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) };
}

/// The hot set.
pub(crate) struct Hot {
    slots: Box<[Slot]>,
    /// Seeded per cache, like the store's: the paths come from clients.
    hasher: foldhash::quality::RandomState,
}

struct Slot {
    /// Moved on by every write to the store of a URI in this slot.
    generation: AtomicU64,
    /// The [`Tag`] of the last key admitted: a lookup of another key stops at it, without
    /// loading the resident.
    tag: AtomicU64,
    resident: ArcSwapOption<Resident>,
}

/// A key's hash, never 0 (an empty slot's tag).
type Tag = u64;

struct Resident {
    resource: Arc<Resource>,
    /// The slot's generation when the store's lookup began.
    generation: u64,
}

/// Where a lookup of one key reads and admits, with the slot's generation taken before
/// it went to the store.
pub(crate) struct Ticket<'a> {
    slot: &'a Slot,
    tag: Tag,
    generation: u64,
}

impl Hot {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..SLOTS)
                .map(|_| Slot {
                    generation: AtomicU64::new(0),
                    tag: AtomicU64::new(0),
                    resident: ArcSwapOption::empty(),
                })
                .collect(),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    fn slot(&self, key: &str) -> (&Slot, Tag) {
        let hash = self.hasher.hash_one(key);
        // The low bits: `SLOTS` is a power of two, and foldhash's quality variant mixes
        // them fully.
        #[allow(
            clippy::cast_possible_truncation,
            reason = "only the low bits index the slots"
        )]
        let index = hash as usize % SLOTS;
        (&self.slots[index], hash | 1)
    }

    /// `key`'s resource if it is hot and of use at `now`, unless this hit is one of those
    /// that go to the store; else a ticket for the store's lookup.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Result<Arc<Resource>, Ticket<'_>> {
        let (slot, tag) = self.slot(key);
        // Taken first: a write after it makes whatever this lookup admits unservable.
        let generation = slot.generation.load(Ordering::SeqCst);
        if slot.tag.load(Ordering::Relaxed) == tag {
            let resident = slot.resident.load();
            if let Some(resident) = resident.as_deref()
                && resident.generation == generation
                && resident.resource.key.as_str() == key
                && now < resident.resource.expires
                && !record_this_hit()
            {
                return Ok(Arc::clone(&resident.resource));
            }
        }
        Err(Ticket {
            slot,
            tag,
            generation,
        })
    }

    /// Called after each write that replaces or drops `key` in the store, before the
    /// write returns.
    pub(crate) fn forget(&self, key: &str) {
        let (slot, _) = self.slot(key);
        slot.generation.fetch_add(1, Ordering::SeqCst);
        // Let go of it now rather than at the next admission: it may be large.
        let resident = slot.resident.load();
        if resident
            .as_deref()
            .is_some_and(|resident| resident.resource.key.as_str() == key)
        {
            slot.resident.compare_and_swap(&*resident, None);
        }
    }

    /// Whether `key` has a servable resident.
    #[cfg(test)]
    pub(crate) fn has(&self, key: &str) -> bool {
        let (slot, _) = self.slot(key);
        slot.resident.load().as_deref().is_some_and(|resident| {
            resident.resource.key.as_str() == key
                && resident.generation == slot.generation.load(Ordering::SeqCst)
        })
    }

    /// Makes every slot unservable: a purge by prefix, whose removals moka applies
    /// lazily.
    pub(crate) fn forget_all(&self) {
        for slot in &*self.slots {
            slot.generation.fetch_add(1, Ordering::SeqCst);
            // Most slots are empty, and a load is far cheaper than a store.
            if slot.resident.load().is_some() {
                slot.resident.store(None);
            }
        }
    }
}

impl Ticket<'_> {
    /// Puts `resource`, which the store just gave for the ticket's key, in the slot if it
    /// is hot at `now`, is not there already, and would not push out a resident still hot.
    pub(crate) fn admit(self, resource: &Arc<Resource>, now: Instant) {
        if !resource.heat.hit(resource.expires, now) {
            return;
        }
        let slot = self.slot;
        let current = slot.resident.load();
        if let Some(resident) = current.as_deref()
            && resident.generation == self.generation
        {
            if Arc::ptr_eq(&resident.resource, resource) {
                // Two admissions racing may have left the other's tag.
                if slot.tag.load(Ordering::Relaxed) != self.tag {
                    slot.tag.store(self.tag, Ordering::Relaxed);
                }
                return;
            }
            if resident
                .resource
                .heat
                .is_warm(resident.resource.expires, now)
            {
                return;
            }
        }
        if slot.generation.load(Ordering::SeqCst) != self.generation {
            return;
        }
        let admitted = Some(Arc::new(Resident {
            resource: Arc::clone(resource),
            generation: self.generation,
        }));
        slot.resident.store(admitted.clone());
        slot.tag.store(self.tag, Ordering::Relaxed);
        // A write between the check above and the store moved the generation on, and may
        // have looked at the slot before this resident was in it: take it out again.
        if slot.generation.load(Ordering::SeqCst) != self.generation {
            slot.resident.compare_and_swap(&admitted, None);
        }
    }
}

/// Whether this hit on a hot URI goes to the store: about one in [`RECORD_EVERY`].
fn record_this_hit() -> bool {
    DRAWS.with(|draws| {
        let mut x = draws.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        draws.set(x);
        x % RECORD_EVERY == 0
    })
}

/// A resource's store hits in the current second. Updated without a read-modify-write: two
/// hits racing may count once, which only delays a URI's admission.
#[derive(Debug, Default)]
pub(crate) struct Heat(AtomicU64);

impl Heat {
    /// The second of `now`, counted down to `expires`, which is fixed for the resource.
    fn second(expires: Instant, now: Instant) -> u64 {
        expires.saturating_duration_since(now).as_secs()
    }

    /// Counts a store hit at `now` and says whether the resource is hot: [`HOT_HITS`] of
    /// them within one second.
    fn hit(&self, expires: Instant, now: Instant) -> bool {
        let second = Self::second(expires, now);
        let last = self.0.load(Ordering::Relaxed);
        let hits = if last >> 32 == second {
            (last & u64::from(u32::MAX)) + 1
        } else {
            1
        };
        self.0.store(second << 32 | hits, Ordering::Relaxed);
        hits >= u64::from(HOT_HITS)
    }

    /// Whether the store has answered the resource within the second of `now`. A resident
    /// hit [`HOT_HITS`] times a second sends it about two of them a second.
    fn is_warm(&self, expires: Instant, now: Instant) -> bool {
        now < expires && self.0.load(Ordering::Relaxed) >> 32 == Self::second(expires, now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::key::{PrimaryKey, Vary};

    fn resource(key: &str, now: Instant) -> Arc<Resource> {
        Arc::new(Resource {
            key: PrimaryKey::from_path(key),
            vary: Vary::None,
            variants: Vec::new(),
            expires: now + Duration::from_secs(60),
            heat: Heat::default(),
        })
    }

    /// Looks `key` up `times` times, admitting `resource` on each store hit; how many hits
    /// the hot set answered.
    fn hits(hot: &Hot, key: &str, resource: &Arc<Resource>, now: Instant, times: u64) -> u64 {
        let mut answered = 0;
        for _ in 0..times {
            match hot.get(key, now) {
                Ok(found) => {
                    assert!(Arc::ptr_eq(&found, resource), "{key}: another's resource");
                    answered += 1;
                }
                Err(ticket) => ticket.admit(resource, now),
            }
        }
        answered
    }

    /// A key other than `key` in the same slot.
    fn neighbour(hot: &Hot, key: &str) -> String {
        (0..100_000)
            .map(|n| format!("/n{n}"))
            .find(|other| std::ptr::eq(hot.slot(other).0, hot.slot(key).0))
            .expect("some key shares the slot")
    }

    #[test]
    fn a_uri_is_hot_after_enough_store_hits_in_one_second() {
        let hot = Hot::new();
        let now = Instant::now();
        let page = resource("/page", now);
        let hot_hits = u64::from(HOT_HITS);
        assert_eq!(hits(&hot, "/page", &page, now, hot_hits - 1), 0);
        assert_eq!(hits(&hot, "/other", &resource("/other", now), now, 1), 0);
        // The `HOT_HITS`th store hit admits it.
        assert_eq!(hits(&hot, "/page", &page, now, 1), 0);
        let answered = hits(&hot, "/page", &page, now, 100 * RECORD_EVERY);
        let expected = 100 * (RECORD_EVERY - 1);
        assert!(
            answered.abs_diff(expected) < 50,
            "about one hit in RECORD_EVERY goes to the store: {answered} of {}",
            100 * RECORD_EVERY
        );
        assert!(hot.get("/page", page.expires).is_err(), "never past use");
    }

    #[test]
    fn store_hits_count_within_one_second() {
        let hot = Hot::new();
        let start = Instant::now();
        let page = resource("/page", start);
        let mut now = start;
        for _ in 0..8 {
            // Spread over seconds, no second has enough.
            assert_eq!(hits(&hot, "/page", &page, now, u64::from(HOT_HITS / 2)), 0);
            now += Duration::from_secs(1);
        }
        assert_eq!(hits(&hot, "/page", &page, now, u64::from(HOT_HITS)), 0);
        assert!(hits(&hot, "/page", &page, now, RECORD_EVERY) > 0);
    }

    #[test]
    fn a_slot_answers_only_its_own_key_and_keeps_a_resident_still_hot() {
        let hot = Hot::new();
        let now = Instant::now();
        let neighbour = neighbour(&hot, "/page");
        let (page, other) = (resource("/page", now), resource(&neighbour, now));
        let _ = hits(&hot, "/page", &page, now, u64::from(HOT_HITS));
        assert_eq!(
            hits(&hot, &neighbour, &other, now, 4 * u64::from(HOT_HITS)),
            0,
            "the resident is answered by the store this second: it stays"
        );
        assert!(hits(&hot, "/page", &page, now, RECORD_EVERY) > 0);
        // A second later the resident has had no store hit yet: a hotter URI takes the slot.
        let later = now + Duration::from_secs(1);
        let _ = hits(&hot, &neighbour, &other, later, u64::from(HOT_HITS));
        assert!(hits(&hot, &neighbour, &other, later, RECORD_EVERY) > 0);
        assert_eq!(hits(&hot, "/page", &page, later, 1), 0);
    }

    #[test]
    fn a_write_makes_the_slot_unservable_even_for_a_lookup_racing_it() {
        let hot = Hot::new();
        let now = Instant::now();
        let page = resource("/page", now);
        let _ = hits(&hot, "/page", &page, now, u64::from(HOT_HITS));
        assert!(hits(&hot, "/page", &page, now, RECORD_EVERY) > 0);

        hot.forget("/page");
        assert!(hot.get("/page", now).is_err(), "forgotten at once");
        assert_eq!(Arc::strong_count(&page), 1, "and let go of");

        // A lookup that took its ticket before a write, and admits after it.
        let Err(ticket) = hot.get("/page", now) else {
            panic!("forgotten");
        };
        hot.forget("/page");
        ticket.admit(&page, now);
        assert_eq!(Arc::strong_count(&page), 1, "not admitted");
        for _ in 0..RECORD_EVERY {
            assert!(hot.get("/page", now).is_err());
        }
    }

    #[test]
    fn a_purge_forgets_every_slot() {
        let hot = Hot::new();
        let now = Instant::now();
        let pages: Vec<_> = (0..8).map(|n| resource(&format!("/{n}"), now)).collect();
        for (n, page) in pages.iter().enumerate() {
            let _ = hits(&hot, &format!("/{n}"), page, now, u64::from(HOT_HITS));
        }
        hot.forget_all();
        for (n, page) in pages.iter().enumerate() {
            assert!(hot.get(&format!("/{n}"), now).is_err());
            assert_eq!(Arc::strong_count(page), 1);
        }
    }
}
