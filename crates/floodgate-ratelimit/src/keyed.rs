//! [`KeyedLimiter`]: the counting engine of a policy, without HTTP.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::clock::Clock;
use floodgate_core::key::Key;

use crate::algorithm::{Algorithm, Gcra, Window};
use crate::engine::{Engine, Limits, Outcome};
use crate::quota::{Quota, QuotaError};
use crate::store::OnFull;

/// A rate limiter keyed by any [`Key`], for work that is not an HTTP request: jobs,
/// messages, connections, login attempts.
///
/// It is the engine a [`Policy`](crate::Policy) runs on, with the same algorithms, the same
/// bounded key table and the same sweeper.
///
/// ```
/// use floodgate_ratelimit::{Algorithm, KeyedLimiter, Quota};
/// use std::time::Duration;
///
/// let logins: KeyedLimiter<String> = KeyedLimiter::new(Algorithm::TokenBucket, Quota::per_minute(5))?;
/// for _ in 0..5 {
///     assert!(logins.check(&"ana".to_owned()).is_ok());
/// }
/// let refusal = logins.check(&"ana".to_owned()).unwrap_err();
/// // One login every 12 s refills the bucket.
/// assert!(refusal.retry_after() > Duration::from_secs(11) && refusal.retry_after() <= Duration::from_secs(12));
/// assert!(logins.check(&"bo".to_owned()).is_ok());
/// # Ok::<(), floodgate_ratelimit::QuotaError>(())
/// ```
pub struct KeyedLimiter<K> {
    engine: Engines<K>,
}

enum Engines<K> {
    TokenBucket(Arc<Engine<K, Gcra>>),
    SlidingWindow(Arc<Engine<K, Window>>),
}

/// How often a [`KeyedLimiter`] drops fresh keys.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Why [`KeyedLimiter::check`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Over quota: the same check succeeds after this long, if nothing else is admitted
    /// first.
    RetryAfter(Duration),
    /// The cost is above what the quota ever admits at once.
    CostExceedsQuota {
        /// The largest cost that can be admitted.
        max: u32,
    },
    /// The key table is full of active keys, and new keys are refused until the next sweep.
    Full,
}

impl Refusal {
    /// How long to wait before trying again: the wait for [`RetryAfter`](Self::RetryAfter),
    /// `Duration::MAX` for a cost that never fits, the sweep interval (10 s) when the table
    /// was full.
    pub fn retry_after(&self) -> Duration {
        match self {
            Refusal::RetryAfter(wait) => *wait,
            Refusal::CostExceedsQuota { .. } => Duration::MAX,
            Refusal::Full => SWEEP_INTERVAL,
        }
    }
}

impl<K: Key> KeyedLimiter<K> {
    /// A limiter tracking up to a million keys, new keys sharing an overflow state beyond,
    /// on tokio's clock.
    ///
    /// # Errors
    ///
    /// The [`QuotaError`] if `quota` is not valid for `algorithm`.
    pub fn new(algorithm: Algorithm, quota: Quota) -> Result<Self, QuotaError> {
        Self::builder(algorithm, quota).build()
    }

    /// Starts a limiter with other bounds or another clock.
    pub fn builder(algorithm: Algorithm, quota: Quota) -> KeyedLimiterBuilder<K> {
        KeyedLimiterBuilder {
            algorithm,
            quota,
            max_keys: 1_000_000,
            on_full: OnFull::Overflow,
            clock: Clock::new(),
            key: PhantomData,
        }
    }

    /// Admits one unit for `key` if its quota allows, and charges it.
    ///
    /// # Errors
    ///
    /// A [`Refusal`] when over quota; nothing is charged.
    pub fn check(&self, key: &K) -> Result<(), Refusal> {
        self.check_cost(key, 1)
    }

    /// Admits `cost` units for `key` if its quota allows, and charges them.
    ///
    /// # Errors
    ///
    /// A [`Refusal`] when over quota or when `cost` can never fit; nothing is charged.
    pub fn check_cost(&self, key: &K, cost: u32) -> Result<(), Refusal> {
        let outcome = match &self.engine {
            Engines::TokenBucket(engine) => engine.acquire(key, engine.clock().now_nanos(), cost),
            Engines::SlidingWindow(engine) => engine.acquire(key, engine.clock().now_nanos(), cost),
        };
        match outcome {
            Outcome::Decided(decision) if decision.allowed => Ok(()),
            Outcome::Decided(decision) => Err(Refusal::RetryAfter(Duration::from_nanos(
                decision.retry_after,
            ))),
            Outcome::TooCostly { max } => Err(Refusal::CostExceedsQuota { max }),
            Outcome::Full => Err(Refusal::Full),
        }
    }

    /// Keys tracked now.
    pub fn tracked_keys(&self) -> usize {
        match &self.engine {
            Engines::TokenBucket(engine) => engine.tracked_keys(),
            Engines::SlidingWindow(engine) => engine.tracked_keys(),
        }
    }

    /// Drops every key whose state is fresh again; returns how many. No decision changes.
    pub fn sweep(&self) -> usize {
        match &self.engine {
            Engines::TokenBucket(engine) => engine.sweep(),
            Engines::SlidingWindow(engine) => engine.sweep(),
        }
    }
}

/// Builds a [`KeyedLimiter`].
///
/// ```
/// use floodgate_core::clock::Clock;
/// use floodgate_ratelimit::{Algorithm, KeyedLimiter, OnFull, Quota};
///
/// let jobs: KeyedLimiter<u64> = KeyedLimiter::builder(Algorithm::TokenBucket, Quota::per_second(50))
///     .max_keys(10_000, OnFull::Reject)
///     .clock(Clock::counter())
///     .build()?;
/// assert!(jobs.check(&7).is_ok());
/// # Ok::<(), floodgate_ratelimit::QuotaError>(())
/// ```
#[must_use]
#[derive(Debug)]
pub struct KeyedLimiterBuilder<K> {
    algorithm: Algorithm,
    quota: Quota,
    max_keys: usize,
    on_full: OnFull,
    clock: Clock,
    key: PhantomData<fn() -> K>,
}

impl<K: Key> KeyedLimiterBuilder<K> {
    /// Tracks up to `max_keys` keys (default a million), with `on_full` (default
    /// [`OnFull::Overflow`]) for new keys beyond, as [`Policy::max_keys`](crate::Policy::max_keys).
    pub fn max_keys(mut self, max_keys: usize, on_full: OnFull) -> Self {
        self.max_keys = max_keys;
        self.on_full = on_full;
        self
    }

    /// Reads time from `clock` (default tokio's, which tests can pause;
    /// [`Clock::counter`] is cheaper and does not pause).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The limiter.
    ///
    /// # Errors
    ///
    /// The [`QuotaError`] if the quota is not valid for the algorithm.
    pub fn build(self) -> Result<KeyedLimiter<K>, QuotaError> {
        let limits = Limits {
            max_keys: self.max_keys,
            on_full: self.on_full,
            sweep_interval: SWEEP_INTERVAL,
        };
        let name = "keyed".to_owned();
        let engine = match self.algorithm {
            Algorithm::TokenBucket => {
                Engines::TokenBucket(Engine::new(name, self.quota, limits, self.clock)?)
            }
            Algorithm::SlidingWindow => {
                Engines::SlidingWindow(Engine::new(name, self.quota, limits, self.clock)?)
            }
        };
        Ok(KeyedLimiter { engine })
    }
}

impl<K> fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.engine {
            Engines::TokenBucket(engine) => f.debug_tuple("KeyedLimiter").field(engine).finish(),
            Engines::SlidingWindow(engine) => f.debug_tuple("KeyedLimiter").field(engine).finish(),
        }
    }
}
