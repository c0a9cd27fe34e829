//! [`LoadShedLayer`], its builder, and the admission decision its services share.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floodgate_core::key::RequestHead;
use floodgate_core::metrics::SHED_LOAD_SHED_IN_FLIGHT;
use floodgate_core::rejection::{ProblemJson, RenderRejection};
use tokio::time::Instant;
use tower::Layer;

use super::service::LoadShed;
use super::sojourn::{NONE, Sojourn};
use crate::ConfigError;

/// A predicate over a request's head.
pub(crate) type Predicate = Box<dyn Fn(&RequestHead<'_>) -> bool + Send + Sync>;

/// What refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// `max_in_flight` (or its share left to non-critical requests).
    InFlight,
    /// The sojourn ceiling.
    Sojourn,
}

impl Signal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Signal::InFlight => "shed_in_flight",
            Signal::Sojourn => "shed_sojourn",
        }
    }
}

/// The state every service of one layer shares.
pub(crate) struct Shared {
    /// Admitted requests until their response body ends: what `max_in_flight` bounds.
    in_flight: AtomicUsize,
    /// Admitted requests until their response head: what the sojourn ceiling bounds and
    /// the "nothing finished" rule looks at. A streaming body (SSE, a long download) is
    /// in flight but queues nothing below the layer, so it must not count here.
    awaiting_head: AtomicUsize,
    max_in_flight: usize,
    pub(crate) sojourn: Option<Sojourn>,
    pub(crate) exempt: Option<Predicate>,
    critical: Option<(Predicate, f64)>,
    pub(crate) retry_after: Duration,
    pub(crate) renderer: Box<dyn RenderRejection>,
}

impl Shared {
    pub(crate) fn is_critical(&self, request: &RequestHead<'_>) -> bool {
        self.critical
            .as_ref()
            .is_some_and(|(critical, _)| critical(request))
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Admitted requests whose response head has not come back yet.
    pub(crate) fn awaiting_head(&self) -> usize {
        self.awaiting_head.load(Ordering::Relaxed)
    }

    /// `limit`, less the share reserved for critical requests if the request is not one.
    fn share(&self, limit: usize, critical: bool) -> usize {
        match &self.critical {
            Some((_, reserved)) if !critical && limit != NONE => {
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss,
                    reason = "a limit below 2^53 times a share in [0, 1), floored"
                )]
                let left = (limit as f64 * (1.0 - reserved)).floor() as usize;
                left
            }
            _ => limit,
        }
    }

    /// Takes an in-flight place, or says what refused it. Never admits above either limit:
    /// each check and its increment are one compare-and-swap, and a place taken under
    /// `max_in_flight` is given back if the ceiling then refuses.
    pub(crate) fn admit(
        self: &Arc<Self>,
        critical: bool,
        now: Instant,
    ) -> Result<InFlight, Signal> {
        let max_in_flight = self.share(self.max_in_flight, critical);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_in_flight).then_some(n + 1)
            })
            .map_err(|_| Signal::InFlight)?;
        // The ceiling (λ · target) estimates how many may wait for their head without a
        // standing queue forming, so it bounds those, not bodies still streaming.
        let ceiling = self.share(
            self.sojourn.as_ref().map_or(NONE, Sojourn::ceiling),
            critical,
        );
        if self
            .awaiting_head
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < ceiling).then_some(n + 1)
            })
            .is_err()
        {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            if let Some(sojourn) = &self.sojourn {
                sojourn.note_shed();
            }
            return Err(Signal::Sojourn);
        }
        metrics::gauge!(SHED_LOAD_SHED_IN_FLIGHT.name).increment(1.0);
        Ok(InFlight {
            shared: Arc::clone(self),
            called: now,
            awaiting_head: true,
        })
    }
}

/// An admitted request's place in the in-flight count, given back when dropped.
pub(crate) struct InFlight {
    shared: Arc<Shared>,
    /// When the layer was called.
    called: Instant,
    /// Counted in `awaiting_head`: the response head has not come back.
    awaiting_head: bool,
}

impl InFlight {
    /// The inner service answered: the sojourn is over.
    pub(crate) fn responded(&mut self) {
        if std::mem::take(&mut self.awaiting_head) {
            self.shared.awaiting_head.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(sojourn) = &self.shared.sojourn {
            let now = Instant::now();
            sojourn.record(now, now.saturating_duration_since(self.called));
            sojourn.tick(now, self.shared.awaiting_head());
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.awaiting_head {
            // Dropped before its head came back.
            self.shared.awaiting_head.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(SHED_LOAD_SHED_IN_FLIGHT.name).decrement(1.0);
    }
}

/// Refuses requests at once with 503 when the service is over capacity, judged by the
/// number of requests in flight and by how long requests take below it.
///
/// Nothing waits here: a request is admitted or refused when the layer is called, with a
/// compare-and-swap on the in-flight count. The decision does not depend on `poll_ready`
/// (tower's `LoadShed` sheds whenever its inner service is not ready, which behind
/// axum's router is never, and needs `HandleErrorLayer`): the layer answers refusals
/// itself, with 503, `Retry-After` and an RFC 9457 problem+json body, and keeps the inner
/// service's error type.
///
/// # Signals
///
/// - **In flight** ([`max_in_flight`](LoadShedLayerBuilder::max_in_flight)): at most N
///   requests between the call and the end of their response body.
/// - **Sojourn** ([`sojourn_target`](LoadShedLayerBuilder::sojourn_target)), after `CoDel`
///   (RFC 8289). The *sojourn* of a request is the time from this layer's `call` to its
///   inner response future resolving (the response head): the time it spent below this
///   layer, queueing included, wherever the queue is (a concurrency limit's queue, a
///   database pool, a thread pool, a downstream service). Per interval (100 ms by
///   default), the layer keeps the *minimum* sojourn of the requests that finished in it.
///   Bursts make some requests wait and pass; only a standing queue makes *every* request
///   wait, so an interval whose minimum is above the target, or in which nothing finished
///   while requests awaited their response head all along, means overload. Then, for the
///   next interval, at most `λ · target` requests may await their response head (a
///   streaming body whose head is out does not count), where `λ` is the throughput of the
///   interval just ended (Little's law: that many in flight keeps the sojourn near the
///   target), and more are refused. After an interval with no standing queue the ceiling
///   grows by a quarter if it refused anyone, and is lifted if it did not.
///
///   The target is a sojourn, service time included: set it above the latency of the
///   fastest requests through the layer when the service is healthy (a route that always
///   takes 200 ms would look like a standing queue to a 50 ms target; exempt it or give
///   it a layer of its own).
/// - **Exempt** requests ([`exempt`](LoadShedLayerBuilder::exempt), health checks) are
///   never refused, counted or measured.
/// - **Critical** requests ([`critical`](LoadShedLayerBuilder::critical)) may use a
///   reserved share of the in-flight limit that others may not.
///
/// Metrics: [`floodgate_shed_load_shed_requests_total`](floodgate_core::metrics::SHED_LOAD_SHED_REQUESTS_TOTAL)
/// by outcome, the in-flight count and the ceiling as gauges.
///
/// ```
/// use floodgate_shed::LoadShedLayer;
/// use std::time::Duration;
///
/// let layer = LoadShedLayer::builder()
///     .max_in_flight(512)
///     .sojourn_target(Duration::from_millis(50))
///     .exempt(|request| request.uri().path() == "/health")
///     .critical(|request| request.headers().contains_key("x-admin"), 0.1)
///     .build()?;
/// # let _ = layer;
/// # Ok::<(), floodgate_shed::ConfigError>(())
/// ```
#[must_use]
pub struct LoadShedLayer {
    shared: Arc<Shared>,
}

impl LoadShedLayer {
    /// Starts a layer that sheds by nothing yet: give it `max_in_flight`, a sojourn
    /// target, or both.
    pub fn builder() -> LoadShedLayerBuilder {
        LoadShedLayerBuilder {
            max_in_flight: None,
            sojourn: None,
            interval: Duration::from_millis(100),
            exempt: None,
            critical: None,
            retry_after: Duration::from_secs(1),
            renderer: Box::new(ProblemJson),
        }
    }

    /// Requests in flight now (exempt ones are not counted).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Admitted requests still waiting for their response head.
    #[cfg(test)]
    pub(crate) fn awaiting_head(&self) -> usize {
        self.shared.awaiting_head()
    }

    /// The in-flight ceiling the sojourn signal sets now, if there is a standing queue.
    pub fn ceiling(&self) -> Option<usize> {
        self.shared
            .sojourn
            .as_ref()
            .map(Sojourn::ceiling)
            .filter(|&ceiling| ceiling != NONE)
    }
}

impl Clone for LoadShedLayer {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> LoadShed<S> {
        LoadShed::new(inner, Arc::clone(&self.shared))
    }
}

impl fmt::Debug for LoadShedLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedLayer")
            .field("max_in_flight", &self.shared.max_in_flight)
            .field("in_flight", &self.in_flight())
            .field("ceiling", &self.ceiling())
            .finish_non_exhaustive()
    }
}

/// Builds a [`LoadShedLayer`]; settings are checked by [`build`](Self::build).
#[must_use]
pub struct LoadShedLayerBuilder {
    max_in_flight: Option<usize>,
    sojourn: Option<Duration>,
    interval: Duration,
    exempt: Option<Predicate>,
    critical: Option<(Predicate, f64)>,
    retry_after: Duration,
    renderer: Box<dyn RenderRejection>,
}

impl LoadShedLayerBuilder {
    /// Refuses requests while `max_in_flight` are in flight.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = Some(max_in_flight);
        self
    }

    /// Sheds when the minimum sojourn over an interval exceeds `target` (see the
    /// [layer's docs](LoadShedLayer#signals)).
    pub fn sojourn_target(mut self, target: Duration) -> Self {
        self.sojourn = Some(target);
        self
    }

    /// The interval the minimum sojourn is taken over (default 100 ms, as `CoDel`): about the
    /// longest a burst should take to drain. At least the target.
    pub fn sojourn_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Never sheds, counts or measures requests for which `exempt` is true (health checks,
    /// metrics scrapes, admin).
    pub fn exempt(
        mut self,
        exempt: impl Fn(&RequestHead<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.exempt = Some(Box::new(exempt));
        self
    }

    /// Keeps `reserved` (in [0, 1)) of the in-flight limit for requests for which
    /// `critical` is true: others are refused once `⌊limit · (1 − reserved)⌋` are in
    /// flight, critical ones only at the limit. The limit is `max_in_flight` or the
    /// sojourn ceiling, whichever is lower.
    pub fn critical(
        mut self,
        critical: impl Fn(&RequestHead<'_>) -> bool + Send + Sync + 'static,
        reserved: f64,
    ) -> Self {
        self.critical = Some((Box::new(critical), reserved));
        self
    }

    /// The `Retry-After` of a refusal (default 1 s).
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
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
    /// [`ConfigError::NoSignal`] with neither `max_in_flight` nor a sojourn target;
    /// [`ConfigError::NoSlots`] for `max_in_flight(0)`; [`ConfigError::Setting`] for a zero
    /// target, an interval shorter than the target, or a reserved share outside [0, 1).
    pub fn build(self) -> Result<LoadShedLayer, ConfigError> {
        if self.max_in_flight.is_none() && self.sojourn.is_none() {
            return Err(ConfigError::NoSignal);
        }
        if self.max_in_flight == Some(0) {
            return Err(ConfigError::NoSlots);
        }
        if let Some(target) = self.sojourn {
            if target.is_zero() {
                return Err(ConfigError::Setting {
                    setting: "LoadShedLayerBuilder::sojourn_target",
                    expected: "a duration above zero, above the healthy latency",
                });
            }
            if self.interval < target {
                return Err(ConfigError::Setting {
                    setting: "LoadShedLayerBuilder::sojourn_interval",
                    expected: "at least the sojourn target, such as 100 ms",
                });
            }
        }
        if let Some((_, reserved)) = &self.critical
            && !(0.0..1.0).contains(reserved)
        {
            return Err(ConfigError::Setting {
                setting: "LoadShedLayerBuilder::critical",
                expected: "a reserved share in [0, 1), such as 0.1",
            });
        }
        Ok(LoadShedLayer {
            shared: Arc::new(Shared {
                in_flight: AtomicUsize::new(0),
                awaiting_head: AtomicUsize::new(0),
                max_in_flight: self.max_in_flight.unwrap_or(NONE),
                sojourn: self
                    .sojourn
                    .map(|target| Sojourn::new(target, self.interval)),
                exempt: self.exempt,
                critical: self.critical,
                retry_after: self.retry_after,
                renderer: self.renderer,
            }),
        })
    }
}

impl fmt::Debug for LoadShedLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedLayerBuilder")
            .field("max_in_flight", &self.max_in_flight)
            .field("sojourn_target", &self.sojourn)
            .field("sojourn_interval", &self.interval)
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}
