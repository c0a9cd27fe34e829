//! Monotonic time for limiter state: tokio's clock by default, or the CPU's counter.
//!
//! Layers keep timestamps as nanoseconds since a [`Clock`]'s origin in plain `u64`s, which fit
//! an atomic and cover 584 years. By default the time comes from [`tokio::time::Instant`], so
//! a test that calls `tokio::time::pause()` and `advance()` moves every layer's clock without
//! sleeping. [`Clock::counter`] reads the CPU's time-stamp counter instead: cheaper per
//! reading, for production, but it does not follow a paused tokio clock.
//!
//! # Example
//!
//! ```
//! use floodgate_core::clock::Clock;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let clock = Clock::new();
//! let start = clock.now_nanos();
//! tokio::time::advance(Duration::from_millis(1500)).await;
//! assert_eq!(clock.now_nanos() - start, 1_500_000_000);
//! # }
//! ```

use std::time::Duration;

use tokio::time::Instant;

/// A monotonic clock counting nanoseconds from the moment it was made.
///
/// Clones share the origin, so their readings compare.
#[derive(Debug, Clone)]
pub struct Clock {
    /// The origin on tokio's clock, which timers sleep on whatever the source.
    origin: Instant,
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    Tokio,
    /// The CPU's counter, and its raw reading at the origin.
    Counter {
        clock: quanta::Clock,
        origin: u64,
    },
}

impl Clock {
    /// A clock on tokio's time, whose origin is now: it follows `tokio::time::pause()`.
    ///
    /// Outside a paused test it reads [`std::time::Instant`], which costs a system clock
    /// read (33 ns on the 2-core VM floodgate is benchmarked on).
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            source: Source::Tokio,
        }
    }

    /// A clock on the CPU's time-stamp counter, through `quanta` (what `governor` reads by
    /// default), whose origin is now: 13 ns a reading on the same VM. Where the counter is
    /// not invariant, `quanta` falls back to the system's monotonic clock.
    ///
    /// It does **not** follow `tokio::time::pause()`: use [`Clock::new`] in tests that
    /// pause time. Waits computed from it are slept on tokio's timer, which runs on the
    /// system clock; `quanta` calibrates the counter against that clock when the first
    /// counter clock is made, so the two drift apart only by the calibration's error.
    pub fn counter() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self {
            origin: Instant::now(),
            source: Source::Counter { clock, origin },
        }
    }

    /// Nanoseconds since the origin.
    pub fn now_nanos(&self) -> u64 {
        match &self.source {
            Source::Tokio => duration_nanos(Instant::now().saturating_duration_since(self.origin)),
            Source::Counter { clock, origin } => clock.delta_as_nanos(*origin, clock.raw()),
        }
    }

    /// The current time as a tokio instant, for code that keeps [`Instant`]s: tokio's own
    /// reading for [`Clock::new`], the origin plus the counter's reading for
    /// [`Clock::counter`].
    pub fn now(&self) -> Instant {
        match &self.source {
            Source::Tokio => Instant::now(),
            Source::Counter { clock, origin } => {
                self.origin + Duration::from_nanos(clock.delta_as_nanos(*origin, clock.raw()))
            }
        }
    }

    /// Whether this clock reads tokio's time ([`Clock::new`]), and so follows
    /// `tokio::time::pause()`.
    pub fn follows_tokio(&self) -> bool {
        matches!(self.source, Source::Tokio)
    }

    /// The instant `nanos` nanoseconds after the origin, to sleep until.
    pub fn instant_at_nanos(&self, nanos: u64) -> Instant {
        self.origin + Duration::from_nanos(nanos)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A duration in whole nanoseconds, saturating at `u64::MAX` (584 years).
pub fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let clock = Clock::new();
        assert_eq!(clock.now_nanos(), 0);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(clock.now_nanos(), 3_000_000_000);
        assert_eq!(clock.instant_at_nanos(clock.now_nanos()), Instant::now());
        assert_eq!(clock.now(), Instant::now());
        assert!(clock.follows_tokio());
    }

    #[tokio::test(start_paused = true)]
    async fn counter_runs_on_real_time() {
        let clock = Clock::counter();
        assert!(!clock.follows_tokio());
        let start = clock.now_nanos();
        // A paused tokio clock does not move it; real time does, and it never goes back.
        tokio::time::advance(Duration::from_secs(3600)).await;
        let later = clock.now_nanos();
        assert!(later >= start && later < 3_600_000_000_000);
        // As an instant it is the origin plus its reading: an hour of paused time is not
        // in it.
        assert!(clock.now() < Instant::now());
        assert!(clock.now() >= clock.instant_at_nanos(later));
        // Its waits are instants on tokio's clock, from the same origin.
        assert_eq!(
            clock.instant_at_nanos(5) - clock.instant_at_nanos(0),
            Duration::from_nanos(5)
        );
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(duration_nanos(Duration::from_nanos(7)), 7);
        assert_eq!(duration_nanos(Duration::MAX), u64::MAX);
    }
}
