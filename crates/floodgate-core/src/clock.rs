//! Monotonic time for limiter state, read from tokio's clock.
//!
//! Layers keep timestamps as nanoseconds since a [`Clock`]'s origin in plain `u64`s, which fit
//! an atomic and cover 584 years. The time comes from [`tokio::time::Instant`], so a test
//! that calls `tokio::time::pause()` and `advance()` moves every layer's clock without
//! sleeping.
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
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// Nanoseconds since the origin.
    pub fn now_nanos(&self) -> u64 {
        duration_nanos(Instant::now().saturating_duration_since(self.origin))
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
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(duration_nanos(Duration::from_nanos(7)), 7);
        assert_eq!(duration_nanos(Duration::MAX), u64::MAX);
    }
}
