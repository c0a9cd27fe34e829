//! Adaptive concurrency limits: the [`LimitAlgorithm`] trait and its two implementations,
//! [`Aimd`] and [`Gradient`].
//!
//! A concurrency limit told the true capacity of a service works; one told a round number
//! does not (at 4× overload a limit of 100 for a service that runs 8 at a time keeps almost
//! no request within its deadline). An adaptive limit finds the capacity itself: every
//! request that held a slot reports a [`Sample`] when its response ends, and the algorithm
//! answers with the next limit.
//!
//! - [`Gradient`] (the default choice) watches latency: it keeps the limit where latency is
//!   at most a quarter above the latency of an almost idle service, which it measures itself.
//! - [`Aimd`] watches failures: it backs off when requests fail or exceed a latency
//!   threshold you choose, and creeps up otherwise.

mod aimd;
mod gradient;

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use tokio::time::Instant;

pub use aimd::{Aimd, AimdBuilder};
pub use gradient::{Gradient, GradientBuilder};

use crate::ConfigError;

/// How a request that held a slot ended, as a limit algorithm sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The response ended normally with a status that says nothing about overload.
    Success,
    /// A sign of overload below the limit: the inner service or the response body failed,
    /// or the status was 5xx (a 503 from below, a 504 timeout), 429 or 408.
    Dropped,
    /// The response future or body was dropped before the end (the client went away, an
    /// outer timeout fired): it says nothing about capacity.
    Ignored,
}

/// What one request tells a [`LimitAlgorithm`] when it gives its slot back.
///
/// ```
/// use floodgate_shed::{Outcome, Sample};
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let sample = Sample::new(Instant::now(), Duration::from_millis(12), 7, Outcome::Success);
/// assert_eq!(sample.in_flight, 7);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sample {
    /// When the request got its slot (after any wait in the queue).
    pub started: Instant,
    /// From getting the slot to the end of the response body: the time the service spent
    /// on it, without the wait in the queue.
    pub latency: Duration,
    /// Requests holding a slot of this limit when this one got its own, itself included.
    pub in_flight: usize,
    /// How it ended.
    pub outcome: Outcome,
}

impl Sample {
    /// A sample (for testing an algorithm; the layer makes them itself).
    pub fn new(started: Instant, latency: Duration, in_flight: usize, outcome: Outcome) -> Self {
        Self {
            started,
            latency,
            in_flight,
            outcome,
        }
    }

    /// When the request ended.
    pub fn ended(&self) -> Instant {
        self.started + self.latency
    }
}

/// Chooses a concurrency limit from what finished requests report.
///
/// The layer calls [`start`](Self::start) once when it is built and
/// [`update`](Self::update) once for every request that held a slot, when its response
/// ends (or is dropped, with [`Outcome::Ignored`]). It clamps every answer into
/// [`bounds`](Self::bounds), read once when the layer is built, and resizes the limit:
/// growing releases permits at once; shrinking takes free permits back at once and the rest
/// as requests in flight finish, so no request is admitted above the new limit.
///
/// Calls are serialised by one lock per layer, held for the call only: keep `update` short
/// (the built-in algorithms do a few arithmetic operations, plus a partial sort of a
/// window's latencies every window for [`Gradient`]).
///
/// ```
/// use floodgate_shed::{LimitAlgorithm, Outcome, Sample};
/// use std::ops::RangeInclusive;
///
/// /// Halves on a failure, grows by one on a success.
/// #[derive(Debug)]
/// struct Halving;
///
/// impl LimitAlgorithm for Halving {
///     fn bounds(&self) -> RangeInclusive<usize> {
///         1..=64
///     }
///
///     fn update(&mut self, sample: &Sample, limit: usize) -> usize {
///         match sample.outcome {
///             Outcome::Dropped => limit / 2,
///             Outcome::Success => limit + 1,
///             _ => limit,
///         }
///     }
/// }
///
/// let layer = floodgate_shed::ConcurrencyLimitLayer::builder(8).adaptive(Halving).build()?;
/// assert_eq!(layer.limit(), 8);
/// # Ok::<(), floodgate_shed::ConfigError>(())
/// ```
pub trait LimitAlgorithm: fmt::Debug + Send + 'static {
    /// The smallest and largest limit this algorithm may choose; at least 1, and at most
    /// [`tokio::sync::Semaphore::MAX_PERMITS`].
    fn bounds(&self) -> RangeInclusive<usize>;

    /// The limit to begin with, given the `initial` one the layer was built with (within
    /// the bounds). The default keeps it; [`Gradient`] pins it low to measure the service's
    /// latency first.
    fn start(&mut self, now: Instant, initial: usize) -> usize {
        let _ = now;
        initial
    }

    /// The limit after `sample`, given the current `limit`.
    fn update(&mut self, sample: &Sample, limit: usize) -> usize;
}

impl<T: LimitAlgorithm + ?Sized> LimitAlgorithm for Box<T> {
    fn bounds(&self) -> RangeInclusive<usize> {
        (**self).bounds()
    }

    fn start(&mut self, now: Instant, initial: usize) -> usize {
        (**self).start(now, initial)
    }

    fn update(&mut self, sample: &Sample, limit: usize) -> usize {
        (**self).update(sample, limit)
    }
}

/// Checks the bounds an algorithm builder was given.
pub(crate) fn check_bounds(min: usize, max: usize) -> Result<(), ConfigError> {
    if min == 0 || min > max || max > tokio::sync::Semaphore::MAX_PERMITS {
        return Err(ConfigError::Bounds { min, max });
    }
    Ok(())
}

/// The `share` percentile (0 < share ≤ 1) of `latencies`, by the nearest-rank method:
/// the smallest value at least `share` of them do not exceed. Reorders `latencies`.
fn percentile(latencies: &mut [Duration], share: f64) -> Option<Duration> {
    if latencies.is_empty() {
        return None;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank within a slice, from a share validated to lie in (0, 1]"
    )]
    let rank = ((latencies.len() as f64 * share).ceil() as usize).clamp(1, latencies.len());
    let (_, value, _) = latencies.select_nth_unstable(rank - 1);
    Some(*value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_the_nearest_rank() {
        let mut values: Vec<Duration> = (1..=10).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut values, 0.9), Some(Duration::from_millis(9)));
        assert_eq!(
            percentile(&mut values, 1.0),
            Some(Duration::from_millis(10))
        );
        assert_eq!(
            percentile(&mut values, 0.01),
            Some(Duration::from_millis(1))
        );
        assert_eq!(percentile(&mut [], 0.5), None);
    }

    use proptest::prelude::*;

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Success),
            Just(Outcome::Dropped),
            Just(Outcome::Ignored)
        ]
    }

    /// Samples of up to 200 ms, started 0–20 ms apart, with any in-flight count.
    fn samples() -> impl Strategy<Value = Vec<(u64, u64, usize, Outcome)>> {
        prop::collection::vec((0_u64..20, 0_u64..200, 0_usize..2_000, outcome()), 1..400)
    }

    /// Feeds `samples` to `algorithm` from a limit inside its bounds, as the layer does;
    /// every answer must be inside them too.
    fn stays_within(
        mut algorithm: impl LimitAlgorithm,
        samples: &[(u64, u64, usize, Outcome)],
    ) -> Result<(), TestCaseError> {
        let bounds = algorithm.bounds();
        let mut now = Instant::now();
        let mut limit = algorithm.start(now, *bounds.start());
        prop_assert!(bounds.contains(&limit));
        for &(gap, latency, in_flight, outcome) in samples {
            now += Duration::from_millis(gap);
            let sample = Sample::new(now, Duration::from_millis(latency), in_flight, outcome);
            limit = algorithm.update(&sample, limit);
            prop_assert!(bounds.contains(&limit), "{limit} outside {bounds:?}");
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn aimd_never_leaves_its_bounds(
            min in 1_usize..50,
            span in 0_usize..100,
            backoff in 0.5_f64..0.99,
            samples in samples(),
        ) {
            let aimd = Aimd::builder()
                .min_limit(min)
                .max_limit(min + span)
                .backoff(backoff)
                .latency_threshold(Duration::from_millis(100))
                .build()
                .expect("valid");
            stays_within(aimd, &samples)?;
        }

        #[test]
        fn gradient_never_leaves_its_bounds(
            min in 1_usize..50,
            span in 0_usize..100,
            probe_samples in 1_usize..20,
            samples in samples(),
        ) {
            let gradient = Gradient::builder()
                .min_limit(min)
                .max_limit(min + span)
                .probe_samples(probe_samples)
                .probe_interval(Duration::from_secs(1))
                .build()
                .expect("valid");
            stays_within(gradient, &samples)?;
        }
    }

    #[test]
    fn bounds_must_hold_at_least_one_slot_and_be_ordered() {
        assert!(check_bounds(1, 1).is_ok());
        assert_eq!(
            check_bounds(0, 5),
            Err(ConfigError::Bounds { min: 0, max: 5 })
        );
        assert_eq!(
            check_bounds(6, 5),
            Err(ConfigError::Bounds { min: 6, max: 5 })
        );
        assert!(check_bounds(1, usize::MAX).is_err());
    }
}
