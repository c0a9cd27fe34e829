//! [`ConcurrencyLimitLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::key::{Global, KeyExtractor, OnKeyError, RequestHead};
use floodgate_core::rejection::{ProblemJson, RenderRejection};
use tower::Layer;

use crate::limit::{LimitAlgorithm, check_bounds};
use crate::limiter::Limiter;
use crate::load_shed::Predicate;
use crate::service::ConcurrencyLimit;
use crate::slots::Slots;

/// The state every service of one layer shares.
pub(crate) struct Shared<E: KeyExtractor> {
    pub(crate) extractor: E,
    pub(crate) slots: Arc<Slots<E::Key>>,
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) max_in_flight: usize,
    /// `None`: half the current limit.
    pub(crate) max_queue: Option<usize>,
    pub(crate) max_queue_time: Duration,
    pub(crate) on_key_error: OnKeyError,
    pub(crate) renderer: Box<dyn RenderRejection>,
    /// Requests that go straight through: no slot, no queue, no sample.
    pub(crate) bypass: Option<Predicate>,
}

impl<E: KeyExtractor> Shared<E> {
    /// The limit now: the adaptive limit's current value, or the fixed one (per key, for a
    /// per-key limit).
    pub(crate) fn limit(&self) -> usize {
        self.limiter.limit().unwrap_or(self.max_in_flight)
    }

    /// How many requests may wait now.
    pub(crate) fn max_queue(&self) -> usize {
        self.max_queue.unwrap_or_else(|| self.limit() / 2)
    }
}

/// At most N requests in flight, globally or per key, with a bounded wait queue.
///
/// - A request that finds every slot taken waits in a FIFO queue. The queue holds at most
///   [`max_queue`](ConcurrencyLimitLayerBuilder::max_queue) requests, and none waits longer
///   than [`max_queue_time`](ConcurrencyLimitLayerBuilder::max_queue_time). Past either,
///   the request gets a 503 with `Retry-After` and an RFC 9457 problem+json body, which
///   the layer makes itself, so axum needs no `HandleErrorLayer`.
/// - A request holds its slot until its response body ends, fails or is dropped (a client
///   going away), so a streaming response counts for as long as it streams. Nothing is
///   held by a future or a body that is dropped.
/// - A queued request takes an unpolled clone of the inner service and asks it for
///   readiness only once it has a slot, so while it waits it holds nothing downstream.
/// - With [`adaptive`](ConcurrencyLimitLayerBuilder::adaptive), a [`LimitAlgorithm`]
///   ([`Gradient`](crate::Gradient), [`Aimd`](crate::Aimd)) moves the limit of a global
///   limit as it learns what the service can take; see the [`limit`](crate::limit) module.
///
/// The state lives behind one `Arc` made when the layer is built. Every service the layer
/// makes, every clone and every route share the same slots.
///
/// Metrics: [`floodgate_shed_in_flight`](floodgate_core::metrics::SHED_IN_FLIGHT) (slots
/// held), [`floodgate_shed_limit`](floodgate_core::metrics::SHED_LIMIT) (the adaptive limit
/// now), refusals in
/// [`floodgate_shed_rejected_total`](floodgate_core::metrics::SHED_REJECTED_TOTAL).
///
/// ```
/// use floodgate_core::key::ClientIp;
/// use floodgate_shed::ConcurrencyLimitLayer;
/// use std::time::Duration;
///
/// // 64 requests at a time in all; 32 may wait, for 250 ms at most.
/// let global = ConcurrencyLimitLayer::builder(64)
///     .max_queue(32)
///     .max_queue_time(Duration::from_millis(250))
///     .build()?;
/// // And no client more than 4 at a time.
/// let per_client = ConcurrencyLimitLayer::builder(4).per_key(ClientIp::new()).build()?;
/// # let _ = (global, per_client);
/// # Ok::<(), floodgate_shed::ConfigError>(())
/// ```
#[must_use]
pub struct ConcurrencyLimitLayer<E: KeyExtractor = Global> {
    shared: Arc<Shared<E>>,
}

impl ConcurrencyLimitLayer<Global> {
    /// Starts a limit of `max_in_flight` requests at once, one limit for every request.
    pub fn builder(max_in_flight: usize) -> ConcurrencyLimitLayerBuilder<Global> {
        ConcurrencyLimitLayerBuilder {
            extractor: Global,
            per_key: false,
            max_in_flight,
            max_queue: None,
            max_queue_time: ConcurrencyLimitLayerBuilder::<Global>::DEFAULT_MAX_QUEUE_TIME,
            on_key_error: OnKeyError::default(),
            renderer: Box::new(ProblemJson),
            algorithm: None,
            lifo_after: None,
            bypass: None,
        }
    }
}

impl<E: KeyExtractor> ConcurrencyLimitLayer<E> {
    /// Keys with a slot table entry now: those with a request in flight or queued (1 for a
    /// global limit).
    pub fn active_keys(&self) -> usize {
        self.shared.slots.keys()
    }

    /// The limit now: an adaptive limit's current value, or the fixed limit (per key, for a
    /// per-key limit).
    pub fn limit(&self) -> usize {
        self.shared.limit()
    }

    /// Requests holding a slot now (over every key, for a per-key limit).
    pub fn in_flight(&self) -> usize {
        self.shared.limiter.in_flight()
    }
}

impl<E: KeyExtractor> Clone for ConcurrencyLimitLayer<E> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, E: KeyExtractor> Layer<S> for ConcurrencyLimitLayer<E> {
    type Service = ConcurrencyLimit<S, E>;

    fn layer(&self, inner: S) -> ConcurrencyLimit<S, E> {
        ConcurrencyLimit::new(inner, Arc::clone(&self.shared))
    }
}

impl<E: KeyExtractor + fmt::Debug> fmt::Debug for ConcurrencyLimitLayer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("extractor", &self.shared.extractor)
            .field("limit", &self.shared.limit())
            .field("in_flight", &self.shared.limiter.in_flight())
            .field("max_queue", &self.shared.max_queue())
            .field("max_queue_time", &self.shared.max_queue_time)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ConcurrencyLimitLayer`]; settings are checked by [`build`](Self::build).
#[must_use]
pub struct ConcurrencyLimitLayerBuilder<E> {
    extractor: E,
    per_key: bool,
    max_in_flight: usize,
    max_queue: Option<usize>,
    max_queue_time: std::time::Duration,
    on_key_error: OnKeyError,
    renderer: Box<dyn RenderRejection>,
    algorithm: Option<Box<dyn LimitAlgorithm>>,
    lifo_after: Option<Duration>,
    bypass: Option<Predicate>,
}

impl<E: KeyExtractor> ConcurrencyLimitLayerBuilder<E> {
    /// The default longest wait in the queue: past a second, most clients have given up.
    pub const DEFAULT_MAX_QUEUE_TIME: Duration = Duration::from_secs(1);

    /// Limits each key of `extractor` separately, `max_in_flight` each (one client cannot
    /// take every slot).
    pub fn per_key<E2: KeyExtractor>(self, extractor: E2) -> ConcurrencyLimitLayerBuilder<E2> {
        ConcurrencyLimitLayerBuilder {
            extractor,
            per_key: true,
            max_in_flight: self.max_in_flight,
            max_queue: self.max_queue,
            max_queue_time: self.max_queue_time,
            on_key_error: self.on_key_error,
            renderer: self.renderer,
            algorithm: self.algorithm,
            lifo_after: self.lifo_after,
            bypass: self.bypass,
        }
    }

    /// How many requests may wait for a slot (per key, for a per-key limit); 0 refuses at
    /// once. Default: half the slots (of the current limit, for an adaptive one), as a
    /// queue longer than that mostly adds latency.
    pub fn max_queue(mut self, max_queue: usize) -> Self {
        self.max_queue = Some(max_queue);
        self
    }

    /// Lets `algorithm` move the limit, starting from the one the builder was given, within
    /// the algorithm's bounds. Global limits only: a per-key limit is fixed.
    ///
    /// Every request that held a slot reports a [`Sample`](crate::Sample) when its
    /// response body ends (or fails, or is dropped: [`Outcome`](crate::Outcome) says which).
    /// Its latency runs from getting the slot to the end of the body, so time in the queue
    /// does not count: the queue is the limit's own doing, not the service's.
    ///
    /// ```
    /// use floodgate_shed::{ConcurrencyLimitLayer, Gradient};
    ///
    /// let layer = ConcurrencyLimitLayer::builder(20).adaptive(Gradient::new()).build()?;
    /// // The gradient first measures the service's latency at 3 requests at a time.
    /// assert_eq!(layer.limit(), 3);
    /// # Ok::<(), floodgate_shed::ConfigError>(())
    /// ```
    pub fn adaptive(mut self, algorithm: impl LimitAlgorithm) -> Self {
        self.algorithm = Some(Box::new(algorithm));
        self
    }

    /// The longest a request waits for a slot (default 1 s).
    pub fn max_queue_time(mut self, max_queue_time: Duration) -> Self {
        self.max_queue_time = max_queue_time;
        self
    }

    /// Adaptive LIFO: serve the queue first come, first served while it drains, and newest
    /// first once its oldest waiter has waited `threshold` (default: always first come,
    /// first served).
    ///
    /// A queue whose oldest entry is that old is standing, not absorbing a burst. First
    /// come, first served then gives every request the whole wait, so all of them are
    /// slow; newest first serves the requests most likely still wanted with little wait,
    /// and lets the oldest, whose clients are giving up, reach
    /// [`max_queue_time`](Self::max_queue_time) and get their 503. Facebook runs its
    /// services this way ("Fail at Scale", ACM Queue 2015). Choose a threshold of about the
    /// service's typical latency: shorter queues stay fair.
    ///
    /// ```
    /// use floodgate_shed::ConcurrencyLimitLayer;
    /// use std::time::Duration;
    ///
    /// let layer = ConcurrencyLimitLayer::builder(32)
    ///     .max_queue_time(Duration::from_millis(100))
    ///     .adaptive_lifo(Duration::from_millis(10))
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), floodgate_shed::ConfigError>(())
    /// ```
    pub fn adaptive_lifo(mut self, threshold: Duration) -> Self {
        self.lifo_after = Some(threshold);
        self
    }

    /// Lets requests for which `bypass` is true (health checks, metrics scrapes) through
    /// without a slot: they never queue or get a 503 from this layer, are not counted in
    /// [`in_flight`](ConcurrencyLimitLayer::in_flight), and report no sample to an
    /// adaptive limit. Their key is not read. Mirror a
    /// [`LoadShedLayer`](crate::LoadShedLayer)'s `exempt` here when both are stacked, or a
    /// busy limit refuses what the shedder spared.
    ///
    /// ```
    /// use floodgate_shed::ConcurrencyLimitLayer;
    ///
    /// let layer = ConcurrencyLimitLayer::builder(32)
    ///     .bypass(|request| request.uri().path() == "/health")
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), floodgate_shed::ConfigError>(())
    /// ```
    pub fn bypass(
        mut self,
        bypass: impl Fn(&RequestHead<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.bypass = Some(Box::new(bypass));
        self
    }

    /// What to do with requests whose key cannot be read (default: refuse them).
    pub fn on_key_error(mut self, on_key_error: OnKeyError) -> Self {
        self.on_key_error = on_key_error;
        self
    }

    /// Makes refusal bodies with `renderer` instead of RFC 9457 problem+json.
    pub fn render_rejection(mut self, renderer: impl RenderRejection) -> Self {
        self.renderer = Box::new(renderer);
        self
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoSlots`] when `max_in_flight` is 0; for an adaptive limit,
    /// [`ConfigError::AdaptivePerKey`] on a per-key limit, [`ConfigError::Bounds`] when the
    /// algorithm's bounds are empty or too large, and [`ConfigError::InitialOutsideBounds`]
    /// when the starting limit is outside them.
    pub fn build(self) -> Result<ConcurrencyLimitLayer<E>, ConfigError> {
        if self.max_in_flight == 0 {
            return Err(ConfigError::NoSlots);
        }
        let slots = if self.per_key {
            Slots::per_key(self.max_in_flight, self.lifo_after)
        } else {
            Slots::one(self.max_in_flight, self.lifo_after)
        };
        let limiter = match (self.algorithm, slots.global()) {
            (None, _) => Limiter::fixed(),
            (Some(_), None) => return Err(ConfigError::AdaptivePerKey),
            (Some(algorithm), Some(slot)) => {
                let bounds = algorithm.bounds();
                let (min, max) = (*bounds.start(), *bounds.end());
                check_bounds(min, max)?;
                if !bounds.contains(&self.max_in_flight) {
                    return Err(ConfigError::InitialOutsideBounds {
                        initial: self.max_in_flight,
                        min,
                        max,
                    });
                }
                Limiter::adaptive(Arc::clone(slot), self.max_in_flight, algorithm, (min, max))
            }
        };
        Ok(ConcurrencyLimitLayer {
            shared: Arc::new(Shared {
                extractor: self.extractor,
                slots: Arc::new(slots),
                limiter: Arc::new(limiter),
                max_in_flight: self.max_in_flight,
                max_queue: self.max_queue,
                max_queue_time: self.max_queue_time,
                on_key_error: self.on_key_error,
                renderer: self.renderer,
                bypass: self.bypass,
            }),
        })
    }
}

impl<E: fmt::Debug> fmt::Debug for ConcurrencyLimitLayerBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayerBuilder")
            .field("extractor", &self.extractor)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_queue", &self.max_queue)
            .field("max_queue_time", &self.max_queue_time)
            .field("algorithm", &self.algorithm)
            .field("lifo_after", &self.lifo_after)
            .field("bypass", &self.bypass.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a layer or a limit algorithm could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_in_flight` is 0: no request could ever run.
    NoSlots,
    /// An adaptive limit was asked of a per-key limit; only a global limit adapts.
    AdaptivePerKey,
    /// A load shedder was given nothing to shed by: neither `max_in_flight` nor a sojourn
    /// target.
    NoSignal,
    /// A limit algorithm's bounds are not `1 ≤ min ≤ max ≤ Semaphore::MAX_PERMITS`.
    Bounds {
        /// The lowest limit asked for.
        min: usize,
        /// The highest limit asked for.
        max: usize,
    },
    /// The limit an adaptive layer starts from is outside its algorithm's bounds.
    InitialOutsideBounds {
        /// The starting limit (the builder's `max_in_flight`).
        initial: usize,
        /// The algorithm's lowest limit.
        min: usize,
        /// The algorithm's highest limit.
        max: usize,
    },
    /// A setting is outside its range.
    Setting {
        /// Which setting (`"Aimd::backoff"`).
        setting: &'static str,
        /// What it must be.
        expected: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoSlots => f.write_str("a concurrency limit needs at least one slot"),
            ConfigError::AdaptivePerKey => f.write_str(
                "only a global concurrency limit can be adaptive; put a fixed per-key limit \
                 behind an adaptive global one",
            ),
            ConfigError::NoSignal => f.write_str(
                "a load shedder needs max_in_flight, a sojourn target, or both; without them \
                 it would never shed",
            ),
            ConfigError::Bounds { min, max } => write!(
                f,
                "limit bounds {min}..={max} are invalid: the lowest limit must be at least 1 \
                 and at most the highest"
            ),
            ConfigError::InitialOutsideBounds { initial, min, max } => write!(
                f,
                "the starting limit {initial} is outside the algorithm's bounds {min}..={max}"
            ),
            ConfigError::Setting { setting, expected } => {
                write!(f, "{setting} must be {expected}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}
