//! [`ConcurrencyLimitLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::key::{Global, KeyExtractor, OnKeyError};
use floodgate_core::rejection::{ProblemJson, RenderRejection};
use tower::Layer;

use crate::service::ConcurrencyLimit;
use crate::slots::Slots;

/// The state every service of one layer shares.
pub(crate) struct Shared<E: KeyExtractor> {
    pub(crate) extractor: E,
    pub(crate) slots: Arc<Slots<E::Key>>,
    pub(crate) max_in_flight: usize,
    pub(crate) max_queue: usize,
    pub(crate) max_queue_time: Duration,
    pub(crate) on_key_error: OnKeyError,
    pub(crate) renderer: Box<dyn RenderRejection>,
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
///
/// The state lives behind one `Arc` made when the layer is built. Every service the layer
/// makes, every clone and every route share the same slots.
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
            max_queue: max_in_flight / 2,
            max_queue_time: ConcurrencyLimitLayerBuilder::<Global>::DEFAULT_MAX_QUEUE_TIME,
            on_key_error: OnKeyError::default(),
            renderer: Box::new(ProblemJson),
        }
    }
}

impl<E: KeyExtractor> ConcurrencyLimitLayer<E> {
    /// Keys with a slot table entry now: those with a request in flight or queued (1 for a
    /// global limit).
    pub fn active_keys(&self) -> usize {
        self.shared.slots.keys()
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
            .field("max_in_flight", &self.shared.max_in_flight)
            .field("max_queue", &self.shared.max_queue)
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
    max_queue: usize,
    max_queue_time: std::time::Duration,
    on_key_error: OnKeyError,
    renderer: Box<dyn RenderRejection>,
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
        }
    }

    /// How many requests may wait for a slot (per key, for a per-key limit); 0 refuses at
    /// once. Default: half the slots, as a queue longer than that mostly adds latency.
    pub fn max_queue(mut self, max_queue: usize) -> Self {
        self.max_queue = max_queue;
        self
    }

    /// The longest a request waits for a slot (default 1 s).
    pub fn max_queue_time(mut self, max_queue_time: Duration) -> Self {
        self.max_queue_time = max_queue_time;
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
    /// [`ConfigError::NoSlots`] when `max_in_flight` is 0.
    pub fn build(self) -> Result<ConcurrencyLimitLayer<E>, ConfigError> {
        if self.max_in_flight == 0 {
            return Err(ConfigError::NoSlots);
        }
        let slots = if self.per_key {
            Slots::per_key(self.max_in_flight)
        } else {
            Slots::one(self.max_in_flight)
        };
        Ok(ConcurrencyLimitLayer {
            shared: Arc::new(Shared {
                extractor: self.extractor,
                slots: Arc::new(slots),
                max_in_flight: self.max_in_flight,
                max_queue: self.max_queue,
                max_queue_time: self.max_queue_time,
                on_key_error: self.on_key_error,
                renderer: self.renderer,
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
            .finish_non_exhaustive()
    }
}

/// Why a [`ConcurrencyLimitLayer`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_in_flight` is 0: no request could ever run.
    NoSlots,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoSlots => f.write_str("a concurrency limit needs at least one slot"),
        }
    }
}

impl std::error::Error for ConfigError {}
