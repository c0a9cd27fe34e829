//! The weighted two-window counter.

use std::sync::atomic::Ordering;

use floodgate_core::key::Key;
use portable_atomic::AtomicU128;

use super::{Decision, Remaining, State, Words};
use crate::quota::{Quota, QuotaError};
use crate::store::{Slot, Store};

/// A key's window state in one 128-bit atomic, changed by compare-and-swap under the
/// shard's shared read lock, as a token bucket is: requests for different keys of a shard
/// never wait on each other, and those for one key retry rather than queue.
#[derive(Debug, Default)]
pub(crate) struct Window {
    counts: AtomicU128,
}

/// A key's window: when the current one started and what the last two counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    start: u64,
    previous: u32,
    current: u32,
}

/// A sliding-window quota in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowParams {
    limit: u32,
    window: u64,
}

impl Words for WindowParams {
    fn to_words(self) -> [u64; 3] {
        [u64::from(self.limit), self.window, 0]
    }

    fn from_words([limit, window, _]: [u64; 3]) -> Self {
        Self {
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            window,
        }
    }
}

impl Counts {
    fn from_bits(bits: u128) -> Self {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "unpacking the fields `to_bits` packed"
        )]
        Self {
            start: (bits >> 64) as u64,
            previous: (bits >> 32) as u32,
            current: bits as u32,
        }
    }

    fn to_bits(self) -> u128 {
        (u128::from(self.start) << 64)
            | (u128::from(self.previous) << 32)
            | u128::from(self.current)
    }

    /// Moves the windows forward to `now`. A key whose counts are both zero starts a new
    /// window at `now`, exactly as an absent key would, so dropping it changes nothing.
    fn roll(&mut self, window: u64, now: u64) {
        let elapsed = now.saturating_sub(self.start);
        if elapsed >= window {
            let windows = elapsed / window;
            self.previous = if windows == 1 { self.current } else { 0 };
            self.current = 0;
            self.start += windows * window;
        }
        if self.previous == 0 && self.current == 0 {
            self.start = now;
        }
    }

    /// Whether these counts are equivalent to an absent key at `now`.
    fn is_fresh(mut self, params: &WindowParams, now: u64) -> bool {
        self.roll(params.window, now);
        self.previous == 0 && self.current == 0
    }

    fn decide(&mut self, params: &WindowParams, now: u64, cost: u32) -> Decision {
        let WindowParams { limit, window } = *params;
        self.roll(window, now);
        // A request that read the clock just before another started this window can be a
        // nanosecond behind it: count it as at the start.
        let now = now.max(self.start);
        let elapsed = now - self.start;
        // Everything is scaled by `window` to stay in whole numbers:
        // previous·(window − elapsed) + (current + cost)·window ≤ limit·window.
        let (limit_scaled, window_u) = (u128::from(limit) * u128::from(window), u128::from(window));
        let previous_weight = u128::from(self.previous) * u128::from(window - elapsed);
        let used = previous_weight + u128::from(self.current) * window_u;
        let wanted = used + u128::from(cost) * window_u;
        if wanted <= limit_scaled {
            self.current += cost;
            return Decision {
                allowed: true,
                remaining: Remaining::new(limit_scaled - wanted, window),
                reset_after: self.reset_after(window, now),
                retry_after: 0,
            };
        }
        Decision {
            allowed: false,
            remaining: Remaining::new(limit_scaled.saturating_sub(used), window),
            reset_after: self.reset_after(window, now),
            retry_after: self.wait_for(params, now, cost),
        }
    }

    /// Nanoseconds until both counts have aged out.
    fn reset_after(&self, window: u64, now: u64) -> u64 {
        let end = if self.current > 0 {
            self.start + 2 * window
        } else if self.previous > 0 {
            self.start + window
        } else {
            now
        };
        end.saturating_sub(now)
    }

    /// Nanoseconds until a request of `cost` would fit, if nothing else is admitted before.
    fn wait_for(&self, params: &WindowParams, now: u64, cost: u32) -> u64 {
        let WindowParams { limit, window } = *params;
        let elapsed = now.saturating_sub(self.start);
        // The earliest offset into a window whose previous count is `previous` at which
        // previous·(window − offset)/window ≤ room.
        let offset_for = |previous: u32, room: u32| -> u64 {
            if previous <= room {
                return 0;
            }
            let allowed_weight = u128::from(room) * u128::from(window) / u128::from(previous);
            window - saturating_u64(allowed_weight)
        };
        let wait = match limit.checked_sub(self.current.saturating_add(cost)) {
            // It fits in this window once enough of the previous one has slid out.
            Some(room) => offset_for(self.previous, room).saturating_sub(elapsed),
            // Next window, where this window's count is the previous one.
            None => (window - elapsed) + offset_for(self.current, limit - cost),
        };
        wait.max(1)
    }

    fn give_back(&mut self, params: &WindowParams, now: u64, cost: u32) {
        self.roll(params.window, now);
        // The charge sits in `current` unless the window turned since, moments ago.
        if self.current >= cost {
            self.current -= cost;
        } else {
            self.previous = self.previous.saturating_sub(cost - self.current);
            self.current = 0;
        }
    }
}

impl Window {
    /// Charges `cost` at `now` if the window allows it. A refusal stores nothing: the
    /// windows it rolled forward roll the same way from the stored state next time.
    fn decide(&self, params: &WindowParams, now: u64, cost: u32) -> Decision {
        let mut bits = self.counts.load(Ordering::Relaxed);
        loop {
            let mut counts = Counts::from_bits(bits);
            let decision = counts.decide(params, now, cost);
            if !decision.allowed {
                return decision;
            }
            match self.counts.compare_exchange_weak(
                bits,
                counts.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return decision,
                Err(actual) => bits = actual,
            }
        }
    }

    fn give_back(&self, params: &WindowParams, now: u64, cost: u32) {
        let _ = self
            .counts
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let mut counts = Counts::from_bits(bits);
                counts.give_back(params, now, cost);
                Some(counts.to_bits())
            });
    }
}

fn saturating_u64(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

impl State for Window {
    type Params = WindowParams;

    fn params(quota: &Quota) -> Result<WindowParams, QuotaError> {
        if quota.has_burst() {
            return Err(QuotaError::BurstWithSlidingWindow);
        }
        let window = quota.period_nanos()?;
        // Counts double-window spans; keep `start + 2·window` representable.
        if window > u64::MAX / 4 {
            return Err(QuotaError::PeriodTooLong);
        }
        Ok(WindowParams {
            limit: quota.count(),
            window,
        })
    }

    fn max_cost(params: &WindowParams) -> u32 {
        params.limit
    }

    fn acquire<K: Key>(
        store: &Store<K, Self>,
        key: &K,
        params: &WindowParams,
        now: u64,
        cost: u32,
    ) -> Slot<Decision> {
        store.with_shared(key, |state| state.decide(params, now, cost))
    }

    fn refund<K: Key>(store: &Store<K, Self>, key: &K, params: &WindowParams, now: u64, cost: u32) {
        let _ = store.with_shared(key, |state| state.give_back(params, now, cost));
    }

    fn is_fresh(&self, params: &WindowParams, now: u64) -> bool {
        Counts::from_bits(self.counts.load(Ordering::Relaxed)).is_fresh(params, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const SECOND: u64 = 1_000_000_000;

    fn params(limit: u32, window_secs: u64) -> WindowParams {
        Window::params(&Quota::new(limit, Duration::from_secs(window_secs))).expect("valid")
    }

    #[test]
    fn admits_the_limit_in_a_window_then_refuses() {
        let params = params(10, 60);
        let mut state = Counts::default();
        let admitted = (0..15)
            .filter(|i| state.decide(&params, 100 * SECOND + i, 1).allowed)
            .count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn the_previous_window_slides_out_linearly() {
        let params = params(10, 60);
        let mut state = Counts::default();
        for _ in 0..10 {
            assert!(state.decide(&params, 0, 1).allowed);
        }
        // 15 s into the next window, 10·45/60 = 7.5 of the previous count remains: 2 fit.
        let at = 75 * SECOND;
        assert!(state.decide(&params, at, 1).allowed);
        assert!(state.decide(&params, at, 1).allowed);
        let refused = state.decide(&params, at, 1);
        assert!(!refused.allowed);
        // 10·(60 − x)/60 + 2 + 1 ≤ 10 once x ≥ 18 s: 3 s from now.
        assert_eq!(refused.retry_after, 3 * SECOND);
        assert!(!state.decide(&params, at + 3 * SECOND - 1, 1).allowed);
        assert!(state.decide(&params, at + 3 * SECOND, 1).allowed);
    }

    #[test]
    fn a_full_current_window_waits_into_the_next() {
        let params = params(4, 10);
        let mut state = Counts::default();
        for _ in 0..4 {
            assert!(state.decide(&params, 0, 1).allowed);
        }
        let refused = state.decide(&params, 2 * SECOND, 1);
        // Next window starts in 8 s; there 4·(10 − x)/10 + 1 ≤ 4 once x ≥ 2.5 s.
        assert_eq!(refused.retry_after, 8 * SECOND + 2_500_000_000);
        assert!(
            !state
                .decide(&params, 2 * SECOND + refused.retry_after - 1, 1)
                .allowed
        );
        assert!(
            state
                .decide(&params, 2 * SECOND + refused.retry_after, 1)
                .allowed
        );
    }

    #[test]
    fn adversarial_timing_gets_just_under_twice_the_limit_in_one_window() {
        let params = params(100, 60);
        let mut state = Counts::default();
        // One request starts the key's window at 0; 99 more at its very end.
        assert!(state.decide(&params, 0, 1).allowed);
        let late = (0..99)
            .filter(|_| state.decide(&params, 60 * SECOND - 1, 1).allowed)
            .count();
        // Just before the next window ends, the previous 100 weigh 100·2ns/60s ≈ 0.
        let early = (0..200)
            .filter(|_| state.decide(&params, 120 * SECOND - 2, 1).allowed)
            .count();
        assert_eq!((late, early), (99, 99));
        // 198 = 2L − 2 admitted within [60 s − 1 ns, 120 s − 1 ns), a span of one window.
    }

    #[test]
    fn freshness_means_both_counts_aged_out() {
        let params = params(5, 10);
        let mut state = Counts::default();
        assert!(state.is_fresh(&params, 0));
        assert!(state.decide(&params, SECOND, 1).allowed);
        assert!(!state.is_fresh(&params, SECOND));
        assert!(!state.is_fresh(&params, 11 * SECOND));
        assert!(state.is_fresh(&params, 21 * SECOND));
    }

    #[test]
    fn refund_undoes_a_charge() {
        let params = params(2, 10);
        let mut state = Counts::default();
        assert!(state.decide(&params, 0, 2).allowed);
        state.give_back(&params, 0, 2);
        assert!(state.is_fresh(&params, 0));
        assert!(state.decide(&params, 0, 2).allowed);
    }

    #[test]
    fn burst_is_refused_for_sliding_windows() {
        assert_eq!(
            Window::params(&Quota::per_minute(10).burst(5)),
            Err(QuotaError::BurstWithSlidingWindow)
        );
    }

    proptest! {
        #[test]
        fn retry_after_is_exactly_the_wait(
            limit in 1u32..20,
            gaps in proptest::collection::vec(0u64..3 * SECOND, 1..60),
            cost in 1u32..3,
        ) {
            let params = params(limit, 10);
            let cost = cost.min(limit);
            let mut state = Counts::default();
            let mut now = 0;
            for gap in gaps {
                now += gap;
                let decision = state.decide(&params, now, cost);
                if !decision.allowed {
                    let mut probe = state;
                    prop_assert!(!probe.decide(&params, now + decision.retry_after - 1, cost).allowed);
                    let mut probe = state;
                    prop_assert!(probe.decide(&params, now + decision.retry_after, cost).allowed);
                }
            }
        }

        #[test]
        fn a_dropped_fresh_key_decides_exactly_as_a_kept_one(
            gaps in proptest::collection::vec(0u64..25 * SECOND, 1..80),
        ) {
            let params = params(3, 10);
            let (mut kept, mut dropped) = (Counts::default(), Counts::default());
            let mut now = 0;
            for gap in gaps {
                now += gap;
                if dropped.is_fresh(&params, now) {
                    dropped = Counts::default();
                }
                prop_assert_eq!(kept.decide(&params, now, 1), dropped.decide(&params, now, 1));
            }
        }
    }
}
