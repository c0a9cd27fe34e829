//! Where entries live: a `moka` cache bounded by bytes, one item per URI holding its
//! variants, plus what invalidation needs so that a response already on its way when its
//! URI was invalidated is not stored.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodgate_core::metrics::{CACHE_EVICTIONS_TOTAL, CACHE_STORED_BYTES};
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;
use tokio::time::Instant;

use crate::entry::{Entry, NotStored};
use crate::hot::{Heat, Hot};
use crate::key::{PrimaryKey, Secondary, Vary};

/// Variants kept per URI. A response that varies on `User-Agent` or `Cookie` would
/// otherwise fill the cache with copies of one page (Traffic Server's `max_alts`).
pub(crate) const MAX_VARIANTS: usize = 5;
/// How long an invalidation is remembered: a response that left the origin before it and
/// arrives after is not stored, if it arrives within this time.
const INVALIDATION_MEMORY: Duration = Duration::from_secs(300);
/// How long a URI whose response could not be stored, for a reason of the response's own,
/// is remembered as uncacheable (Varnish's hit-for-miss, for as long as its built-in
/// configuration keeps one).
const UNCACHEABLE_MEMORY: Duration = Duration::from_secs(120);
/// The longest any entry is kept, whatever its lifetime says.
const MAX_RETENTION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Hashes the key of the lookup every request makes. foldhash hashes a path some 200
/// instructions (15 ns) faster than the standard `SipHash`, a fifth of a bare moka lookup.
/// The paths come from clients: it is seeded per process and per cache (from address-layout
/// and clock entropy), so a set of colliding paths cannot be prepared in advance, and the quality variant mixes its output fully, as
/// moka's segment, bucket and frequency-sketch indexes all take bits of it. (foldhash does
/// not claim `SipHash`'s resistance to an attacker who learns the seed from timings.)
type KeyHasher = foldhash::quality::RandomState;

/// The variants of one URI, newest first.
#[derive(Debug)]
pub(crate) struct Resource {
    /// Its key, shared with the store's.
    pub(crate) key: PrimaryKey,
    /// The `Vary` of the newest response, which tells a request which variant it wants.
    pub(crate) vary: Vary,
    /// The variants, newest first.
    pub(crate) variants: Vec<Arc<Entry>>,
    /// When the longest-lived variant is past use (see [`Retention`]); a lookup from then
    /// on finds nothing.
    pub(crate) expires: Instant,
    /// Its store hits this second, which make it hot.
    pub(crate) heat: Heat,
}

impl Resource {
    pub(crate) fn variant(&self, secondary: &Secondary) -> Option<&Arc<Entry>> {
        self.variants
            .iter()
            .find(|entry| &entry.secondary == secondary)
    }

    fn weight(&self, key: &PrimaryKey) -> u32 {
        let key = u32::try_from(key.as_str().len()).unwrap_or(u32::MAX);
        self.variants
            .iter()
            .fold(key, |total, entry| total.saturating_add(entry.weight))
    }
}

/// The cache proper.
pub(crate) struct Store {
    entries: Cache<PrimaryKey, Arc<Resource>, KeyHasher>,
    /// The URIs hit most, read before `entries`.
    pub(crate) hot: Arc<Hot>,
    retention: Retention,
    /// URI → the epoch of its last invalidation.
    invalidated: Cache<u64, u64>,
    /// URIs whose last response could not be stored, for a reason of its own.
    uncacheable: Cache<u64, ()>,
    /// Both remember URIs by a hash of the key: 100 000 of them take a few MB whatever
    /// the URIs' length, and a collision only costs a fill its store, or a URI its
    /// coalescing, for a while.
    marks: foldhash::quality::RandomState,
    /// Counts invalidations; a fill remembers it when it starts.
    epoch: AtomicU64,
    /// The epoch of the last purge by prefix, which invalidates every fill in flight.
    purged: AtomicU64,
}

impl Store {
    /// A store of at most `max_bytes`, keeping each entry for its freshness plus the
    /// longest it could still be served stale or revalidated (see [`Retention`]).
    ///
    /// Retention is checked by each lookup, on the layer's clock like freshness, rather
    /// than by moka's per-entry expiry, which reads the system clock on every read and so
    /// disagreed with paused tests. An entry past use stays in memory until a fill
    /// replaces it or the byte bound evicts it.
    pub(crate) fn new(max_bytes: u64, retention: Retention) -> Self {
        let hot = Arc::new(Hot::new());
        let forget = Arc::clone(&hot);
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &PrimaryKey, resource: &Arc<Resource>| resource.weight(key))
            // Writes forget their URIs in the hot set themselves; evictions happen in moka's
            // upkeep, on whichever thread runs it.
            .eviction_listener(move |key: Arc<PrimaryKey>, _, cause| {
                if cause == RemovalCause::Size {
                    forget.forget(key.as_str());
                    metrics::counter!(CACHE_EVICTIONS_TOTAL.name).increment(1);
                }
            })
            .support_invalidation_closures()
            .build_with_hasher(KeyHasher::default());
        // LRU, not TinyLFU: a new invalidation must always be admitted.
        let invalidated = Cache::builder()
            .max_capacity(100_000)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .time_to_live(INVALIDATION_MEMORY)
            .build();
        let uncacheable = Cache::builder()
            .max_capacity(100_000)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .time_to_live(UNCACHEABLE_MEMORY)
            .build();
        Self {
            entries,
            hot,
            retention,
            invalidated,
            uncacheable,
            marks: foldhash::quality::RandomState::default(),
            epoch: AtomicU64::new(0),
            purged: AtomicU64::new(0),
        }
    }

    /// The variants stored under the key whose text is `key`, unless they are past use
    /// at `now`.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Option<Arc<Resource>> {
        let ticket = match self.hot.get(key, now) {
            Ok(hot) => return Some(hot),
            Err(ticket) => ticket,
        };
        let resource = self
            .entries
            .get(key)
            .filter(|resource| now < resource.expires)?;
        ticket.admit(&resource, now);
        Some(resource)
    }

    /// Remembers that `key`'s response could not be stored for a reason of its own, so
    /// that the URI's next misses do not wait for one another's (they would only learn
    /// the same): each goes to the origin, and the first storable response is stored as
    /// ever. A URI already remembered is not written again: a hot one would otherwise
    /// cost a write per request, and it is found out again when the memory lapses.
    /// The memory is two minutes of real time, on moka's clock.
    pub(crate) fn remember_uncacheable(&self, key: &PrimaryKey) {
        let mark = self.marks.hash_one(key);
        if !self.uncacheable.contains_key(&mark) {
            self.uncacheable.insert(mark, ());
        }
    }

    /// Whether `key`'s last response could not be stored for a reason of its own.
    pub(crate) fn is_uncacheable(&self, key: &PrimaryKey) -> bool {
        self.uncacheable.contains_key(&self.marks.hash_one(key))
    }

    fn forget_uncacheable(&self, key: &PrimaryKey) {
        self.uncacheable.invalidate(&self.marks.hash_one(key));
    }

    /// The epoch a fill starting now records.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Stores `entry` as a variant of `key` at `now`, unless the URI was invalidated since
    /// `started`. A variant with the same secondary key is replaced; past [`MAX_VARIANTS`]
    /// the oldest goes; a new `Vary` drops the variants keyed by the old one.
    pub(crate) fn insert(
        &self,
        key: PrimaryKey,
        entry: Arc<Entry>,
        started: u64,
        now: Instant,
    ) -> Result<(), NotStored> {
        // Checked inside the compute, which holds the key: an invalidation either comes
        // before (and is seen here) or removes what this puts.
        let mut invalidated = false;
        let check = key.clone();
        self.entries.entry(key).and_compute_with(|existing| {
            if self.was_invalidated(&check, started) {
                invalidated = true;
                return Op::Nop;
            }
            let vary = entry.vary.clone();
            let secondary = entry.secondary.clone();
            let mut variants = vec![entry];
            if let Some(existing) = existing {
                let existing = existing.into_value();
                if existing.vary == vary {
                    variants.extend(
                        existing
                            .variants
                            .iter()
                            .filter(|old| {
                                old.secondary != secondary && !self.retention.of(old, now).is_zero()
                            })
                            .take(MAX_VARIANTS - 1)
                            .cloned(),
                    );
                }
            }
            let lifetime = variants
                .iter()
                .map(|variant| self.retention.of(variant, now))
                .max()
                .unwrap_or_default();
            Op::Put(Arc::new(Resource {
                key: check.clone(),
                vary,
                variants,
                expires: now + lifetime,
                heat: Heat::default(),
            }))
        });
        if invalidated {
            return Err(NotStored::Invalidated);
        }
        self.hot.forget(check.as_str());
        self.forget_uncacheable(&check);
        self.record_size();
        Ok(())
    }

    fn was_invalidated(&self, key: &PrimaryKey, started: u64) -> bool {
        self.purged.load(Ordering::Acquire) > started
            || self
                .invalidated
                .get(&self.marks.hash_one(key))
                .is_some_and(|epoch| epoch > started)
    }

    fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Drops every variant of `key`, and keeps responses already on their way from being
    /// stored.
    pub(crate) fn invalidate(&self, key: &PrimaryKey) {
        let epoch = self.next_epoch();
        self.invalidated.insert(self.marks.hash_one(key), epoch);
        self.entries.invalidate(key);
        self.hot.forget(key.as_str());
        // A write may have changed what the URI answers.
        self.forget_uncacheable(key);
        self.record_size();
    }

    /// Drops every URI whose path and query satisfy `matches`. Every fill in flight is
    /// kept from being stored: the store does not know which of them match.
    pub(crate) fn invalidate_where(&self, matches: impl Fn(&str) -> bool + Send + Sync + 'static) {
        let epoch = self.next_epoch();
        self.purged.store(epoch, Ordering::Release);
        // Only fails without `support_invalidation_closures`, which `new` sets.
        let _ = self
            .entries
            .invalidate_entries_if(move |key, _| matches(key.path()));
        // moka's reads skip what the closure matches at once, and its upkeep removes them a
        // batch at a time; the hot set cannot tell which of its URIs match.
        self.entries.run_pending_tasks();
        self.hot.forget_all();
        self.record_size();
    }

    /// Bytes stored now, by the weigher.
    pub(crate) fn weighted_bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    fn record_size(&self) {
        // moka counts weights lazily: settle them so the gauge tells the truth.
        self.entries.run_pending_tasks();
        #[allow(
            clippy::cast_precision_loss,
            reason = "a gauge of bytes, far below 2^52"
        )]
        metrics::gauge!(CACHE_STORED_BYTES.name).set(self.entries.weighted_size() as f64);
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("uris", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .finish_non_exhaustive()
    }
}

/// How long moka keeps a URI: until its longest-lived variant is past use.
pub(crate) struct Retention {
    /// How long a stale entry with a validator is kept for revalidation.
    pub(crate) keep: Duration,
    /// The layer's stale-while-revalidate and stale-if-error windows, for responses that
    /// do not give their own.
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
}

impl Retention {
    /// How much longer `entry` is of use at `now`: its freshness left, plus the longest it
    /// may then still be served stale or revalidated. Zero once it is past use.
    fn of(&self, entry: &Entry, now: Instant) -> Duration {
        let left = entry.timing.fresh_for(now);
        let directives = &entry.directives;
        let serve_stale = if directives.allows_stale() {
            let window = directives
                .stale_while_revalidate
                .unwrap_or(self.stale_while_revalidate);
            window.max(directives.stale_if_error.unwrap_or(self.stale_if_error))
        } else {
            Duration::ZERO
        };
        let revalidate = if entry.has_validator() {
            self.keep
        } else {
            Duration::ZERO
        };
        let use_after_fresh = serve_stale.max(revalidate);
        let left = if left.negative {
            use_after_fresh.saturating_sub(left.magnitude)
        } else {
            left.magnitude.saturating_add(use_after_fresh)
        };
        left.min(MAX_RETENTION)
    }
}
