//! [`Aimd`]: additive increase, multiplicative decrease.

use std::ops::RangeInclusive;
use std::time::Duration;

use tokio::time::Instant;

use super::{LimitAlgorithm, Outcome, Sample, check_bounds};
use crate::ConfigError;

/// Additive increase, multiplicative decrease: backs off when requests fail or are slow,
/// creeps up while they succeed under load.
///
/// Per [`Sample`], with `L` the current limit:
///
/// | sample | new limit |
/// |---|---|
/// | [`Dropped`](Outcome::Dropped), or latency ≥ [`latency_threshold`](AimdBuilder::latency_threshold) | `max(min, ⌊L · backoff⌋)`, at most once per round trip (below) |
/// | [`Success`](Outcome::Success) under the threshold, started with `in_flight ≥ L/2` | `min(max, L + 1)` |
/// | anything else (a lightly loaded service, [`Ignored`](Outcome::Ignored)) | `L` |
///
/// - A backoff always lowers the limit by at least 1 (`⌊L · b⌋ < L` for `b < 1`) and by at
///   most half (`b ≥ 0.5`).
/// - Once per round trip: a drop from a request that started before the last backoff does
///   not back off again. A burst of timeouts is one congestion event, as TCP counts one
///   loss per window; without this, 20 requests timing out together would cut a limit of
///   100 to 12.
/// - The increase needs load: a limit far above what is used (`in_flight < L/2`) says
///   nothing about whether more would be fine, so it does not grow.
///
/// AIMD sees only what it is told is a failure. Without drops and with a threshold above
/// every latency, it climbs to `max`. Set [`latency_threshold`](AimdBuilder::latency_threshold)
/// to the latency that means "overloaded" for your service: about twice its healthy p99.
/// Under steady overload the limit then saws between the concurrency at which latency
/// reaches the threshold and `backoff` times that. For a limit that finds its own target,
/// use [`Gradient`](crate::Gradient).
///
/// Defaults, after Netflix's `AIMDLimit`: backoff 0.9, latency threshold 5 s, bounds
/// 1..=200.
///
/// ```
/// use floodgate_shed::{Aimd, ConcurrencyLimitLayer};
/// use std::time::Duration;
///
/// let aimd = Aimd::builder()
///     .backoff(0.8)
///     .latency_threshold(Duration::from_millis(250))
///     .min_limit(4)
///     .max_limit(500)
///     .build()?;
/// let layer = ConcurrencyLimitLayer::builder(20).adaptive(aimd).build()?;
/// # let _ = layer;
/// # Ok::<(), floodgate_shed::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Aimd {
    backoff: f64,
    latency_threshold: Duration,
    min: usize,
    max: usize,
    /// When the limit last backed off.
    backed_off: Option<Instant>,
}

impl Aimd {
    /// AIMD with the default settings.
    pub fn new() -> Self {
        Self {
            backoff: 0.9,
            latency_threshold: Duration::from_secs(5),
            min: 1,
            max: 200,
            backed_off: None,
        }
    }

    /// Starts from the defaults.
    pub fn builder() -> AimdBuilder {
        AimdBuilder { aimd: Self::new() }
    }
}

impl Default for Aimd {
    fn default() -> Self {
        Self::new()
    }
}

impl LimitAlgorithm for Aimd {
    fn bounds(&self) -> RangeInclusive<usize> {
        self.min..=self.max
    }

    fn update(&mut self, sample: &Sample, limit: usize) -> usize {
        let dropped = match sample.outcome {
            Outcome::Success => sample.latency >= self.latency_threshold,
            Outcome::Dropped => true,
            Outcome::Ignored => return limit,
        };
        if dropped {
            if self
                .backed_off
                .is_some_and(|backed_off| sample.started < backed_off)
            {
                return limit;
            }
            self.backed_off = Some(sample.ended());
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "a limit below 2^53 times a factor in [0.5, 1), floored"
            )]
            let lower = (limit as f64 * self.backoff).floor() as usize;
            return lower.max(self.min);
        }
        if sample.in_flight.saturating_mul(2) >= limit {
            return limit.saturating_add(1).min(self.max);
        }
        limit
    }
}

/// Builds an [`Aimd`]; settings are checked by [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use]
pub struct AimdBuilder {
    aimd: Aimd,
}

impl AimdBuilder {
    /// What the limit is multiplied by on a drop, in [0.5, 1) (default 0.9).
    pub fn backoff(mut self, backoff: f64) -> Self {
        self.aimd.backoff = backoff;
        self
    }

    /// A successful request at least this slow counts as dropped (default 5 s).
    pub fn latency_threshold(mut self, latency_threshold: Duration) -> Self {
        self.aimd.latency_threshold = latency_threshold;
        self
    }

    /// The lowest the limit goes (default 1).
    pub fn min_limit(mut self, min: usize) -> Self {
        self.aimd.min = min;
        self
    }

    /// The highest the limit goes (default 200).
    pub fn max_limit(mut self, max: usize) -> Self {
        self.aimd.max = max;
        self
    }

    /// The algorithm.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Setting`] for a backoff outside [0.5, 1) or a zero latency threshold;
    /// [`ConfigError::Bounds`] for bounds that are not `1 ≤ min ≤ max ≤ MAX_PERMITS`.
    pub fn build(self) -> Result<Aimd, ConfigError> {
        let aimd = self.aimd;
        if !(0.5..1.0).contains(&aimd.backoff) {
            return Err(ConfigError::Setting {
                setting: "Aimd::backoff",
                expected: "a factor in [0.5, 1), such as 0.9",
            });
        }
        if aimd.latency_threshold.is_zero() {
            return Err(ConfigError::Setting {
                setting: "Aimd::latency_threshold",
                expected: "a latency above zero, about twice the healthy p99",
            });
        }
        check_bounds(aimd.min, aimd.max)?;
        Ok(aimd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, latency_ms: u64, in_flight: usize, outcome: Outcome) -> Sample {
        Sample::new(at, Duration::from_millis(latency_ms), in_flight, outcome)
    }

    #[test]
    fn grows_by_one_under_load_and_not_when_idle() {
        let mut aimd = Aimd::new();
        let now = Instant::now();
        assert_eq!(aimd.update(&sample(now, 10, 5, Outcome::Success), 10), 11);
        assert_eq!(aimd.update(&sample(now, 10, 4, Outcome::Success), 10), 10);
        assert_eq!(aimd.update(&sample(now, 10, 10, Outcome::Ignored), 10), 10);
        assert_eq!(
            aimd.update(&sample(now, 10, 200, Outcome::Success), 200),
            200
        );
    }

    #[test]
    fn backs_off_once_per_round_trip() {
        let mut aimd = Aimd::builder()
            .latency_threshold(Duration::from_millis(100))
            .build()
            .expect("valid");
        let start = Instant::now();
        // Started together, dropped together: one backoff.
        assert_eq!(
            aimd.update(&sample(start, 50, 100, Outcome::Dropped), 100),
            90
        );
        assert_eq!(
            aimd.update(&sample(start, 60, 100, Outcome::Dropped), 90),
            90
        );
        // A request that started after the backoff and is too slow backs off again.
        let later = start + Duration::from_millis(51);
        assert_eq!(
            aimd.update(&sample(later, 100, 90, Outcome::Success), 90),
            81
        );
        // Never below the floor, and always by at least one.
        assert_eq!(
            aimd.update(
                &sample(later + Duration::from_secs(1), 1, 1, Outcome::Dropped),
                1
            ),
            1
        );
        assert_eq!(
            aimd.update(
                &sample(later + Duration::from_secs(2), 1, 5, Outcome::Dropped),
                5
            ),
            4
        );
    }

    #[test]
    fn settings_are_checked() {
        for backoff in [0.49, 1.0, f64::NAN] {
            assert!(matches!(
                Aimd::builder().backoff(backoff).build(),
                Err(ConfigError::Setting { .. })
            ));
        }
        assert!(Aimd::builder().backoff(0.5).build().is_ok());
        assert!(matches!(
            Aimd::builder().latency_threshold(Duration::ZERO).build(),
            Err(ConfigError::Setting { .. })
        ));
        assert_eq!(
            Aimd::builder().min_limit(10).max_limit(5).build().err(),
            Some(ConfigError::Bounds { min: 10, max: 5 })
        );
    }
}
