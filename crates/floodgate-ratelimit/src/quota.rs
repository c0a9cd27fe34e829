//! How much a policy admits: a count per period, and for token buckets a burst.

use std::fmt;
use std::time::Duration;

use floodgate_core::clock::duration_nanos;

/// A rate: `count` requests per `period`, and for a [token bucket](crate::Algorithm::TokenBucket)
/// how many may come at once (`burst`, by default `count`).
///
/// Constructors read as they are spoken: `Quota::per_second(100)` is 100 requests per second,
/// `Quota::per_minute(10).burst(3)` is ten a minute, at most three back to back.
///
/// Values are checked when the layer is built: a zero count, period or burst, or a rate
/// finer than one request per nanosecond, is refused with a [`QuotaError`].
///
/// ```
/// use floodgate_ratelimit::Quota;
/// use std::time::Duration;
///
/// let quota = Quota::per_second(100).burst(20);
/// assert_eq!((quota.count(), quota.period(), quota.burst_size()), (100, Duration::from_secs(1), 20));
///
/// // Never more than 10 in any 60 s window, whatever the timing: 5 at once, then one every 10 s.
/// let strict = Quota::strict(10, Duration::from_secs(60));
/// assert_eq!((strict.burst_size(), strict.count()), (5, 6));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    count: u32,
    period: Duration,
    burst: Option<u32>,
}

impl Quota {
    /// `count` requests per `period`.
    pub const fn new(count: u32, period: Duration) -> Self {
        Self {
            count,
            period,
            burst: None,
        }
    }

    /// `count` requests per second.
    pub const fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute.
    pub const fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` requests per hour.
    pub const fn per_hour(count: u32) -> Self {
        Self::new(count, Duration::from_secs(3600))
    }

    /// A token bucket that never admits more than `limit` requests in any window of length
    /// `period`, however they are timed.
    ///
    /// A token bucket of burst `B` refilling every `e` admits at most `B + ⌈W/e⌉ − 1` in a
    /// window of length `W` (see [`Algorithm::TokenBucket`](crate::Algorithm::TokenBucket)).
    /// This picks `B = ⌈limit/2⌉` and `limit − B + 1` refills per `period`, so that bound
    /// is exactly `limit` for `W = period`: half the limit can come at once, the rest is
    /// spread out. A `limit` of 0 gives an invalid quota, refused when the layer is built.
    pub const fn strict(limit: u32, period: Duration) -> Self {
        let burst = limit.div_ceil(2);
        Self {
            count: limit - burst + 1,
            period,
            burst: Some(burst),
        }
    }

    /// How many requests may come back to back (token buckets only; sliding windows refuse
    /// a burst when the layer is built).
    #[must_use]
    pub const fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The requests admitted per [`period`](Self::period).
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// The period the count is per.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The burst: as set, or the count.
    pub const fn burst_size(&self) -> u32 {
        match self.burst {
            Some(burst) => burst,
            None => self.count,
        }
    }

    /// Whether a burst was set explicitly.
    pub(crate) const fn has_burst(&self) -> bool {
        self.burst.is_some()
    }

    /// The period in nanoseconds, after checking the quota is usable.
    pub(crate) fn period_nanos(&self) -> Result<u64, QuotaError> {
        if self.count == 0 {
            return Err(QuotaError::ZeroCount);
        }
        if self.burst == Some(0) {
            return Err(QuotaError::ZeroBurst);
        }
        let period = duration_nanos(self.period);
        if period == 0 {
            return Err(QuotaError::ZeroPeriod);
        }
        if period == u64::MAX {
            return Err(QuotaError::PeriodTooLong);
        }
        if period < u64::from(self.count) {
            return Err(QuotaError::TooFine {
                count: self.count,
                period: self.period,
            });
        }
        Ok(period)
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {:?}", self.count, self.period)?;
        if let Some(burst) = self.burst {
            write!(f, ", burst {burst}")?;
        }
        Ok(())
    }
}

/// Why a [`Quota`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaError {
    /// The count is zero: nothing would ever be admitted. To block a route, route it to a
    /// handler that refuses.
    ZeroCount,
    /// The period is zero.
    ZeroPeriod,
    /// The burst is zero: nothing would ever be admitted.
    ZeroBurst,
    /// The period is too long to count in nanoseconds (over 584 years).
    PeriodTooLong,
    /// More than one request per nanosecond.
    TooFine {
        /// The count asked for.
        count: u32,
        /// The period asked for.
        period: Duration,
    },
    /// A sliding window has no burst: it admits its count in any window.
    BurstWithSlidingWindow,
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaError::ZeroCount => f.write_str("a quota's count must be at least 1"),
            QuotaError::ZeroPeriod => f.write_str("a quota's period must be longer than zero"),
            QuotaError::ZeroBurst => f.write_str("a quota's burst must be at least 1"),
            QuotaError::PeriodTooLong => f.write_str("a quota's period must be under 584 years"),
            QuotaError::TooFine { count, period } => write!(
                f,
                "{count} per {period:?} is more than one request per nanosecond; use a longer \
                 period"
            ),
            QuotaError::BurstWithSlidingWindow => f.write_str(
                "a sliding window has no burst (it admits its count in any window); use a token \
                 bucket for a burst",
            ),
        }
    }
}

impl std::error::Error for QuotaError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_mean_what_they_say() {
        assert_eq!(Quota::per_second(100).period_nanos(), Ok(1_000_000_000));
        assert_eq!(Quota::per_minute(10).period(), Duration::from_secs(60));
        assert_eq!(Quota::per_hour(1).period(), Duration::from_secs(3600));
        assert_eq!(Quota::per_second(100).burst_size(), 100);
        assert_eq!(Quota::per_second(100).burst(20).burst_size(), 20);
    }

    #[test]
    fn unusable_quotas_are_refused() {
        assert_eq!(
            Quota::per_second(0).period_nanos(),
            Err(QuotaError::ZeroCount)
        );
        assert_eq!(
            Quota::per_second(1).burst(0).period_nanos(),
            Err(QuotaError::ZeroBurst)
        );
        assert_eq!(
            Quota::new(1, Duration::ZERO).period_nanos(),
            Err(QuotaError::ZeroPeriod)
        );
        assert_eq!(
            Quota::new(1, Duration::MAX).period_nanos(),
            Err(QuotaError::PeriodTooLong)
        );
        assert!(matches!(
            Quota::new(10, Duration::from_nanos(9)).period_nanos(),
            Err(QuotaError::TooFine { .. })
        ));
        assert!(
            Quota::strict(0, Duration::from_secs(1))
                .period_nanos()
                .is_err()
        );
    }

    #[test]
    fn strict_splits_the_limit_between_burst_and_rate() {
        for (limit, burst, count) in [
            (1, 1, 1),
            (2, 1, 2),
            (3, 2, 2),
            (10, 5, 6),
            (u32::MAX, 1 << 31, 1 << 31),
        ] {
            let quota = Quota::strict(limit, Duration::from_secs(60));
            assert_eq!(
                (quota.burst_size(), quota.count()),
                (burst, count),
                "limit {limit}"
            );
            // B + ⌈T/e⌉ − 1 with e = T/count is B + count − 1.
            assert_eq!(u64::from(burst) + u64::from(count) - 1, u64::from(limit));
        }
    }
}
