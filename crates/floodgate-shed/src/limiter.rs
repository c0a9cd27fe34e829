//! What a layer counts about its slots: requests in flight, and, for an adaptive limit, the
//! algorithm and the resizing of the semaphore it drives.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use floodgate_core::key::Key;
use floodgate_core::metrics::{SHED_IN_FLIGHT, SHED_LIMIT};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::limit::{LimitAlgorithm, Outcome, Sample};
use crate::queue::Slot;
use crate::slots::SlotRef;

/// The in-flight count of one layer, and its adaptive limit if it has one.
pub(crate) struct Limiter {
    in_flight: AtomicUsize,
    adaptive: Option<Adaptive>,
}

impl Limiter {
    pub(crate) fn fixed() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            adaptive: None,
        }
    }

    /// An adaptive limit over `slot`, which holds `initial` permits, within `min..=max`
    /// (checked by the layer's builder).
    pub(crate) fn adaptive(
        slot: Arc<Slot>,
        initial: usize,
        mut algorithm: Box<dyn LimitAlgorithm>,
        (min, max): (usize, usize),
    ) -> Self {
        let adaptive = Adaptive {
            slot,
            limit: AtomicUsize::new(initial),
            min,
            max,
            algorithm: Mutex::new(None),
        };
        let start = algorithm.start(Instant::now(), initial).clamp(min, max);
        adaptive.resize(initial, start);
        *adaptive
            .algorithm
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(algorithm);
        Self {
            in_flight: AtomicUsize::new(0),
            adaptive: Some(adaptive),
        }
    }

    /// The current limit of an adaptive limiter.
    pub(crate) fn limit(&self) -> Option<usize> {
        self.adaptive
            .as_ref()
            .map(|adaptive| adaptive.limit.load(Ordering::Relaxed))
    }

    /// Requests holding a slot now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A request got `permit` of `slot`: it holds it until the returned permit is dropped.
    pub(crate) fn admit<K: Key>(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        slot: SlotRef<K>,
    ) -> Permit<K> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(SHED_IN_FLIGHT.name).increment(1.0);
        Permit {
            held: Some(permit),
            started: self.adaptive.as_ref().map(|_| Instant::now()),
            in_flight,
            outcome: Outcome::Ignored,
            limiter: Arc::clone(self),
            slot,
        }
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("in_flight", &self.in_flight())
            .field("limit", &self.limit())
            .finish()
    }
}

/// An adaptive limit: the algorithm, and the slot whose size it sets.
///
/// The slot's permits, free plus held, minus its debt, always equal `limit`. Shrinking
/// takes free permits back at once and records the rest as debt; a permit given back while
/// there is debt is forgotten instead of freed. Growing pays debt first, then adds permits.
/// So a free permit exists only while there is no debt, and no request is admitted above
/// the current limit; requests admitted before a shrink finish normally.
struct Adaptive {
    slot: Arc<Slot>,
    limit: AtomicUsize,
    min: usize,
    max: usize,
    /// `None` only while the layer is being built. The lock also serialises resizing.
    algorithm: Mutex<Option<Box<dyn LimitAlgorithm>>>,
}

impl Adaptive {
    /// Resizes from `from` permits to `to`; called under the algorithm lock (or before the
    /// layer is shared).
    fn resize(&self, from: usize, to: usize) {
        if to > from {
            self.slot.grow(to - from);
        } else if to < from {
            self.slot.shrink(from - to);
        }
        self.limit.store(to, Ordering::Relaxed);
        #[allow(
            clippy::cast_precision_loss,
            reason = "a gauge of a limit far below 2^52"
        )]
        metrics::gauge!(SHED_LIMIT.name).set(to as f64);
    }

    fn record(&self, sample: &Sample) {
        let mut algorithm = self
            .algorithm
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(algorithm) = algorithm.as_mut() else {
            return;
        };
        let limit = self.limit.load(Ordering::Relaxed);
        let next = algorithm.update(sample, limit).clamp(self.min, self.max);
        if next != limit {
            tracing::debug!(target: "floodgate::shed", from = limit, to = next, "limit changed");
            self.resize(limit, next);
        }
    }
}

/// A slot held by a request: a semaphore permit and the hold on the slot's table entry,
/// given back when dropped, reporting a [`Sample`] to an adaptive limit.
pub(crate) struct Permit<K: Key> {
    /// `None` only while being given back.
    held: Option<OwnedSemaphorePermit>,
    /// When the request got its slot, for an adaptive limit.
    started: Option<Instant>,
    in_flight: usize,
    outcome: Outcome,
    limiter: Arc<Limiter>,
    // Dropped after `drop` gave the permit back, so the entry of a per-key slot outlives it.
    slot: SlotRef<K>,
}

impl<K: Key> Permit<K> {
    /// Gives the slot back now, the request having ended with `outcome`.
    pub(crate) fn end(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl<K: Key> Drop for Permit<K> {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(SHED_IN_FLIGHT.name).decrement(1.0);
        let Some(permit) = self.held.take() else {
            return;
        };
        self.slot.slot().release(permit);
        match &self.limiter.adaptive {
            None => {}
            Some(adaptive) => {
                if let Some(started) = self.started {
                    let sample =
                        Sample::new(started, started.elapsed(), self.in_flight, self.outcome);
                    adaptive.record(&sample);
                }
            }
        }
    }
}
