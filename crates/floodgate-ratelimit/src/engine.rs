//! The keyed counting engine under every policy: quota, key table, sweeper, metrics.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use floodgate_core::clock::Clock;
use floodgate_core::key::Key;
use floodgate_core::metrics::{
    LABEL_POLICY, RATELIMIT_ADMITTED_TOTAL, RATELIMIT_DELAYED_TOTAL,
    RATELIMIT_DRY_RUN_REJECTED_TOTAL, RATELIMIT_OVERFLOW_TOTAL, RATELIMIT_REJECTED_TOTAL,
    RATELIMIT_SWEPT_KEYS_TOTAL, RATELIMIT_TRACKED_KEYS,
};
use http::HeaderValue;
use metrics::{Counter, Gauge};

use crate::algorithm::{Decision, State, Words};
use crate::quota::{Quota, QuotaError};
use crate::store::{OnFull, Slot, Store};

/// A quota in force: as given, and its `RateLimit-Policy` item.
#[derive(Debug)]
pub(crate) struct Configured {
    pub(crate) quota: Quota,
    /// `"name";q=100;w=60`, made once per quota rather than per response.
    pub(crate) policy_item: HeaderValue,
}

/// What one charge attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A decision (charged if allowed).
    Decided(Decision),
    /// The cost is above what the quota ever admits at once.
    TooCostly { max: u32 },
    /// The key table is full of active keys and new keys are refused.
    Full,
}

/// Handles to an engine's metrics, made on first use so they bind to the recorder the
/// application installed by then.
#[derive(Debug)]
pub(crate) struct EngineMetrics {
    pub(crate) admitted: Counter,
    pub(crate) rejected: Counter,
    pub(crate) dry_run_rejected: Counter,
    pub(crate) delayed: Counter,
    overflow: Counter,
    swept: Counter,
    tracked: Gauge,
}

/// How an engine's key table is bounded and swept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_keys: usize,
    pub(crate) on_full: OnFull,
    pub(crate) sweep_interval: Duration,
}

/// A quota's numbers behind a sequence lock. Readers, one per decision, take no lock and
/// write nothing shared; they retry only while a quota change (rare) is half written.
/// Writers are serialised by the engine's `changing` lock.
#[derive(Debug)]
struct ParamCell {
    sequence: AtomicU64,
    words: [AtomicU64; 3],
}

impl ParamCell {
    fn new(words: [u64; 3]) -> Self {
        Self {
            sequence: AtomicU64::new(0),
            words: words.map(AtomicU64::new),
        }
    }

    #[inline]
    fn load(&self) -> [u64; 3] {
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            let words = [
                self.words[0].load(Ordering::Relaxed),
                self.words[1].load(Ordering::Relaxed),
                self.words[2].load(Ordering::Relaxed),
            ];
            // Orders the word loads before the second read of the sequence.
            fence(Ordering::Acquire);
            if before.is_multiple_of(2) && self.sequence.load(Ordering::Relaxed) == before {
                return words;
            }
            std::hint::spin_loop();
        }
    }

    fn store(&self, words: [u64; 3]) {
        self.sequence.fetch_add(1, Ordering::Relaxed);
        // Orders the odd sequence before the word stores.
        fence(Ordering::Release);
        for (cell, word) in self.words.iter().zip(words) {
            cell.store(word, Ordering::Relaxed);
        }
        self.sequence.fetch_add(1, Ordering::Release);
    }
}

/// How far in the past the sweep judges freshness.
const SWEEP_MARGIN_NANOS: u64 = 1_000_000_000;

pub(crate) struct Engine<K, S: State> {
    name: String,
    configured: ArcSwap<Configured>,
    params: ParamCell,
    changing: Mutex<()>,
    store: Store<K, S>,
    clock: Clock,
    sweep_interval: Duration,
    sweeper_started: AtomicBool,
    this: Weak<Self>,
    metrics: OnceLock<EngineMetrics>,
}

impl<K: Key, S: State> Engine<K, S> {
    pub(crate) fn new(
        name: String,
        quota: Quota,
        limits: Limits,
        clock: Clock,
    ) -> Result<Arc<Self>, QuotaError> {
        let (configured, params) = configure::<S>(&name, quota)?;
        Ok(Arc::new_cyclic(|this| Engine {
            configured: ArcSwap::from_pointee(configured),
            params: ParamCell::new(params.to_words()),
            changing: Mutex::new(()),
            store: Store::new(limits.max_keys, limits.on_full),
            name,
            clock,
            sweep_interval: limits.sweep_interval,
            sweeper_started: AtomicBool::new(false),
            this: this.clone(),
            metrics: OnceLock::new(),
        }))
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    pub(crate) fn sweep_interval(&self) -> Duration {
        self.sweep_interval
    }

    pub(crate) fn configured(&self) -> Arc<Configured> {
        self.configured.load_full()
    }

    #[inline]
    fn params(&self) -> S::Params {
        S::Params::from_words(self.params.load())
    }

    pub(crate) fn set_quota(&self, quota: Quota) -> Result<(), QuotaError> {
        let (configured, params) = configure::<S>(&self.name, quota)?;
        // One change at a time, so the numbers enforced and the quota reported always match.
        let _changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        self.params.store(params.to_words());
        self.configured.store(Arc::new(configured));
        tracing::info!(target: "floodgate::ratelimit", policy = %self.name, %quota, "quota changed");
        Ok(())
    }

    /// The largest cost a request may have and ever be admitted.
    pub(crate) fn max_cost(&self) -> u32 {
        S::max_cost(&self.params())
    }

    /// Charges `cost` to `key` at `now` if the quota allows it.
    pub(crate) fn acquire(&self, key: &K, now: u64, cost: u32) -> Outcome {
        let params = self.params();
        let max = S::max_cost(&params);
        if cost > max {
            return Outcome::TooCostly { max };
        }
        self.ensure_sweeper();
        match S::acquire(&self.store, key, &params, now, cost) {
            Slot::Key(decision) => Outcome::Decided(decision),
            Slot::Overflow(decision) => {
                self.metrics().overflow.increment(1);
                Outcome::Decided(decision)
            }
            Slot::Full => {
                self.metrics().overflow.increment(1);
                Outcome::Full
            }
        }
    }

    /// Gives back a charge [`acquire`](Self::acquire) made moments ago.
    pub(crate) fn refund(&self, key: &K, now: u64, cost: u32) {
        S::refund(&self.store, key, &self.params(), now, cost);
    }

    pub(crate) fn tracked_keys(&self) -> usize {
        self.store.len()
    }

    /// Drops every fresh key now; returns how many.
    pub(crate) fn sweep(&self) -> usize {
        let dropped = (0..self.store.shard_count())
            .map(|shard| self.sweep_shard(shard))
            .sum();
        self.record_tracked_keys();
        dropped
    }

    pub(crate) fn metrics(&self) -> &EngineMetrics {
        self.metrics.get_or_init(|| {
            let counter = |name: &'static str| metrics::counter!(name, LABEL_POLICY => self.name.clone());
            EngineMetrics {
                admitted: counter(RATELIMIT_ADMITTED_TOTAL.name),
                rejected: counter(RATELIMIT_REJECTED_TOTAL.name),
                dry_run_rejected: counter(RATELIMIT_DRY_RUN_REJECTED_TOTAL.name),
                delayed: counter(RATELIMIT_DELAYED_TOTAL.name),
                overflow: counter(RATELIMIT_OVERFLOW_TOTAL.name),
                swept: counter(RATELIMIT_SWEPT_KEYS_TOTAL.name),
                tracked: metrics::gauge!(RATELIMIT_TRACKED_KEYS.name, LABEL_POLICY => self.name.clone()),
            }
        })
    }

    /// Starts the sweeper the first time the engine is used inside a tokio runtime. It holds
    /// only a weak reference, so it ends once the engine is dropped.
    fn ensure_sweeper(&self) {
        if self.sweeper_started.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.sweeper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let this = self.this.clone();
        let interval = self.sweep_interval;
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(shards) = this.upgrade().map(|engine| engine.store.shard_count()) else {
                    return;
                };
                for shard in 0..shards {
                    // One shard per upgrade: the task lets go between shards.
                    let Some(engine) = this.upgrade() else { return };
                    engine.sweep_shard(shard);
                    drop(engine);
                    tokio::task::yield_now().await;
                }
                if let Some(engine) = this.upgrade() {
                    engine.record_tracked_keys();
                }
            }
        });
    }

    fn sweep_shard(&self, shard: usize) -> usize {
        // Judge freshness a second in the past: a request that read the clock before the
        // sweep but reaches the key after it must find the same state it would have found.
        let now = self.clock.now_nanos().saturating_sub(SWEEP_MARGIN_NANOS);
        let params = self.params();
        let dropped = self
            .store
            .sweep_shard(shard, |state| state.is_fresh(&params, now));
        if dropped > 0 {
            self.metrics().swept.increment(dropped as u64);
            tracing::debug!(target: "floodgate::ratelimit", policy = %self.name, dropped, "swept fresh keys");
        }
        dropped
    }

    fn record_tracked_keys(&self) {
        #[allow(
            clippy::cast_precision_loss,
            reason = "a gauge; key counts are far below 2^52"
        )]
        self.metrics().tracked.set(self.store.len() as f64);
    }
}

fn configure<S: State>(name: &str, quota: Quota) -> Result<(Configured, S::Params), QuotaError> {
    let params = S::params(&quota)?;
    let window = quota.period().as_secs() + u64::from(quota.period().subsec_nanos() > 0);
    // Policy names are checked to be tokens when the layer is built, so this is visible
    // ASCII; a failure would be a bug, and then the policy just sends no item.
    let policy_item = HeaderValue::try_from(format!("\"{name}\";q={};w={window}", quota.count()))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    Ok((Configured { quota, policy_item }, params))
}

impl<K, S: State> fmt::Debug for Engine<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.name)
            .field("quota", &self.configured.load().quota)
            .field("tracked_keys", &self.store.len())
            .finish_non_exhaustive()
    }
}
