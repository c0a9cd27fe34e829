//! GCRA: a token bucket in one atomic timestamp.

use std::sync::atomic::{AtomicU64, Ordering};

use floodgate_core::key::Key;

use super::{Decision, Remaining, State, Words};
use crate::quota::{Quota, QuotaError};
use crate::store::{Slot, Store};

/// A key's theoretical arrival time (nanoseconds on the policy's clock): when its bucket
/// is full again. Zero, or any time in the past, is a full bucket.
#[derive(Debug, Default)]
pub(crate) struct Gcra {
    tat: AtomicU64,
}

/// A token-bucket quota in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GcraParams {
    /// The refill interval `e`: one unit every `emission` nanoseconds.
    emission: u64,
    /// `B·e`: how far ahead of now the TAT may run.
    tolerance: u64,
    burst: u32,
}

impl Words for GcraParams {
    fn to_words(self) -> [u64; 3] {
        [self.emission, self.tolerance, u64::from(self.burst)]
    }

    fn from_words([emission, tolerance, burst]: [u64; 3]) -> Self {
        Self {
            emission,
            tolerance,
            burst: u32::try_from(burst).unwrap_or(u32::MAX),
        }
    }
}

/// What one charge attempt did to a TAT.
#[derive(Debug, Clone, Copy)]
enum Charge {
    /// Admitted: the TAT moved to this.
    Admitted { next: u64 },
    /// Refused: the TAT (or now, if later) it was refused at, left unchanged, and where
    /// the charge would have moved it.
    Refused { base: u64, next: u64 },
}

impl Gcra {
    /// A charge and its decision at once, as the tests check them.
    #[cfg(test)]
    fn decide(&self, params: &GcraParams, now: u64, cost: u32) -> Decision {
        decision(params, now, self.charge(params, now, cost))
    }

    /// The compare-and-swap alone. It runs under the shard's lock, so what it does not
    /// need (the decision's numbers) is worked out after the lock is let go: each store
    /// made inside delays the unlocking atomic.
    #[inline]
    fn charge(&self, params: &GcraParams, now: u64, cost: u32) -> Charge {
        let increment = params.emission.saturating_mul(u64::from(cost));
        // Relaxed is enough: the TAT is the only data, and the compare-and-swap orders all
        // writes to it.
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now);
            let next = base.saturating_add(increment);
            if next - now > params.tolerance {
                return Charge::Refused { base, next };
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Charge::Admitted { next },
                Err(actual) => tat = actual,
            }
        }
    }

    fn give_back(&self, params: &GcraParams, cost: u32) {
        let increment = params.emission.saturating_mul(u64::from(cost));
        // A TAT moved into the past by the refund is a full bucket, as it would have been.
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.saturating_sub(increment))
            });
    }
}

/// The decision a charge made at `now` stands for.
#[inline]
fn decision(params: &GcraParams, now: u64, charge: Charge) -> Decision {
    match charge {
        Charge::Admitted { next } => {
            let ahead = next - now;
            Decision {
                allowed: true,
                remaining: Remaining::new(u128::from(params.tolerance - ahead), params.emission),
                reset_after: ahead,
                retry_after: 0,
            }
        }
        Charge::Refused { base, next } => {
            let ahead = base - now;
            Decision {
                allowed: false,
                remaining: Remaining::new(
                    u128::from(params.tolerance - ahead.min(params.tolerance)),
                    params.emission,
                ),
                reset_after: ahead,
                retry_after: next - now - params.tolerance,
            }
        }
    }
}

impl State for Gcra {
    type Params = GcraParams;

    fn params(quota: &Quota) -> Result<GcraParams, QuotaError> {
        let period = quota.period_nanos()?;
        let emission = period.div_ceil(u64::from(quota.count()));
        let burst = quota.burst_size();
        let tolerance = emission
            .checked_mul(u64::from(burst))
            .ok_or(QuotaError::PeriodTooLong)?;
        Ok(GcraParams {
            emission,
            tolerance,
            burst,
        })
    }

    fn max_cost(params: &GcraParams) -> u32 {
        params.burst
    }

    fn acquire<K: Key>(
        store: &Store<K, Self>,
        key: &K,
        params: &GcraParams,
        now: u64,
        cost: u32,
    ) -> Slot<Decision> {
        store
            .with_shared(key, |state| state.charge(params, now, cost))
            .map(|charge| decision(params, now, charge))
    }

    fn refund<K: Key>(store: &Store<K, Self>, key: &K, params: &GcraParams, _: u64, cost: u32) {
        let _ = store.with_shared(key, |state| state.give_back(params, cost));
    }

    fn is_fresh(&self, _: &GcraParams, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const SECOND: u64 = 1_000_000_000;

    fn params(quota: Quota) -> GcraParams {
        Gcra::params(&quota).expect("a valid quota")
    }

    #[test]
    fn a_full_bucket_admits_the_burst_then_one_per_interval() {
        let params = params(Quota::per_second(10).burst(3));
        let state = Gcra::default();
        let start = 5 * SECOND;
        let admitted: Vec<bool> = (0..4)
            .map(|_| state.decide(&params, start, 1).allowed)
            .collect();
        assert_eq!(admitted, [true, true, true, false]);
        let refused = state.decide(&params, start, 1);
        assert_eq!(refused.retry_after, SECOND / 10);
        assert_eq!(refused.remaining.units(), 0);
        assert!(!state.decide(&params, start + SECOND / 10 - 1, 1).allowed);
        let next = state.decide(&params, start + SECOND / 10, 1);
        assert!(next.allowed);
        assert_eq!(next.remaining.units(), 0);
        // After a full refill (3 intervals) the whole burst is back.
        let later = start + SECOND / 10 + 3 * SECOND / 10;
        assert!(state.is_fresh(&params, later));
        assert_eq!(state.decide(&params, later, 1).remaining.units(), 2);
    }

    #[test]
    fn remaining_and_reset_count_down_with_use() {
        let params = params(Quota::per_minute(60).burst(10));
        let state = Gcra::default();
        let first = state.decide(&params, 0, 1);
        assert_eq!((first.remaining.units(), first.reset_after), (9, SECOND));
        let second = state.decide(&params, 0, 4);
        assert_eq!(
            (second.remaining.units(), second.reset_after),
            (5, 5 * SECOND)
        );
    }

    #[test]
    fn a_refused_request_changes_nothing() {
        let params = params(Quota::per_second(1).burst(2));
        let state = Gcra::default();
        assert!(state.decide(&params, 0, 2).allowed);
        for _ in 0..100 {
            assert!(!state.decide(&params, 0, 1).allowed);
        }
        assert!(state.decide(&params, SECOND, 1).allowed);
    }

    #[test]
    fn refund_restores_the_bucket() {
        let params = params(Quota::per_second(1).burst(2));
        let state = Gcra::default();
        assert!(state.decide(&params, 0, 2).allowed);
        state.give_back(&params, 2);
        assert!(state.is_fresh(&params, 0));
        assert_eq!(state.decide(&params, 0, 2).remaining.units(), 0);
    }

    #[test]
    fn rates_above_one_per_millisecond_keep_their_precision() {
        let params = params(Quota::per_second(1_000_000).burst(1));
        let state = Gcra::default();
        let admitted = (0..10_000u64)
            .filter(|i| state.decide(&params, i * 1_000, 1).allowed)
            .count();
        assert_eq!(admitted, 10_000);
    }

    /// The most admitted in any half-open window `[t, t + W)` of the admitted timestamps.
    fn most_in_any_window(admitted: &[u64], window: u64) -> usize {
        let mut most = 0;
        let mut start = 0;
        for end in 0..admitted.len() {
            while admitted[end] - admitted[start] >= window {
                start += 1;
            }
            most = most.max(end - start + 1);
        }
        most
    }

    proptest! {
        #[test]
        fn never_admits_more_than_burst_plus_rate_times_window(
            count in 1u32..20,
            burst in 1u32..20,
            period_ms in 1u64..2_000,
            gaps in proptest::collection::vec(0u64..300_000_000, 1..300),
            window_ms in 1u64..5_000,
        ) {
            let quota = Quota::new(count, Duration::from_millis(period_ms)).burst(burst);
            let params = params(quota);
            let state = Gcra::default();
            let mut now = 0;
            let mut admitted = Vec::new();
            for gap in gaps {
                now += gap;
                if state.decide(&params, now, 1).allowed {
                    admitted.push(now);
                }
            }
            let window = window_ms * 1_000_000;
            let bound = u64::from(burst) + window.div_ceil(params.emission) - 1;
            prop_assert!(most_in_any_window(&admitted, window) as u64 <= bound);
        }

        #[test]
        fn cost_k_behaves_as_k_unit_requests(
            cost in 1u32..5,
            gaps in proptest::collection::vec(0u64..100_000_000, 1..100),
        ) {
            let params = params(Quota::per_second(20).burst(8));
            let (weighted, units) = (Gcra::default(), Gcra::default());
            let mut now = 0;
            for gap in gaps {
                now += gap;
                let one = weighted.decide(&params, now, cost);
                // k unit requests, all or nothing, as one request of cost k is.
                let fits = units.decide(&params, now, cost).allowed;
                if fits {
                    units.give_back(&params, cost);
                    for _ in 0..cost {
                        prop_assert!(units.decide(&params, now, 1).allowed);
                    }
                }
                prop_assert_eq!(one.allowed, fits);
                prop_assert_eq!(weighted.tat.load(Ordering::Relaxed), units.tat.load(Ordering::Relaxed));
            }
        }
    }
}
