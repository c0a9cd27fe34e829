//! The two counting algorithms and what they promise.

mod gcra;
mod window;

use floodgate_core::key::Key;

pub(crate) use gcra::Gcra;
pub(crate) use window::Window;

use crate::quota::{Quota, QuotaError};
use crate::store::{Slot, Store};

/// How a policy counts requests against its [`Quota`].
///
/// | | memory per key | admits in any window of length `W` | cost per decision |
/// |---|---|---|---|
/// | `TokenBucket` | 8 bytes (one `AtomicU64`) | at most `B + ⌈W/e⌉ − 1 ≤ B + r·W` | one compare-and-swap |
/// | `SlidingWindow` | 16 bytes (one 128-bit atomic) | `L` for even traffic; up to `2L − 1` under adversarial timing | one 128-bit compare-and-swap |
///
/// `r = count / period` is the rate, `e = 1/r` its refill interval (rounded up to a whole
/// nanosecond, which only ever admits less), `B` the burst and `L` the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// A token bucket, implemented as GCRA (the generic cell rate algorithm).
    ///
    /// Each key holds one timestamp, its *theoretical arrival time* (TAT): when its bucket
    /// will be full again. A request of cost `k` is admitted if
    /// `max(TAT, now) + k·e − now ≤ B·e`, and then moves TAT to that value in one
    /// compare-and-swap, so there is no lock on the hot path. A full bucket admits `B`
    /// requests at once, then one every `e`. In any window of length `W` at most
    /// `B + ⌈W/e⌉ − 1` are admitted: a rate contract, not a window one. Use
    /// [`Quota::strict`] when you mean "never more than L in any T".
    TokenBucket,
    /// The weighted two-window counter (as in Cloudflare's and NGINX Plus's limiters).
    ///
    /// Each key holds the count of its current window and of the previous one. A request of
    /// cost `k` is admitted if `previous · (1 − elapsed/W) + current + k ≤ L`, where
    /// `elapsed` is the time since the current window started. Windows start at a key's first
    /// request, not on the clock's minute, so clients do not all reset at the same instant.
    ///
    /// The estimate assumes the previous window's requests were spread evenly. It is exact
    /// for even traffic and errs by a few percent on ordinary traffic (Cloudflare measured
    /// 0.003 % wrong decisions). A client that packs `L` requests at the end of one window
    /// and nearly `L` more at the end of the next (when the previous count has almost slid
    /// out) gets up to `2L − 1` within the span of one window; an exact log would admit `L`.
    /// Counts are per window, so a limit can be any `u32`.
    ///
    /// The window's start and both counts share one 128-bit atomic, changed by
    /// compare-and-swap like the token bucket's TAT (`cmpxchg16b` on x86-64).
    SlidingWindow,
}

/// Unit requests a key could still make, kept as a quotient until a header asks for it:
/// the division costs more than the rest of an admitted decision, and most decisions are
/// never reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Remaining {
    room: u128,
    per_unit: u64,
}

impl Remaining {
    /// `room` measured in `per_unit`s (rounded down); a zero `per_unit` counts as one.
    pub(crate) fn new(room: u128, per_unit: u64) -> Self {
        Self { room, per_unit }
    }

    /// Exactly `units`.
    pub(crate) fn exact(units: u64) -> Self {
        Self::new(u128::from(units), 1)
    }

    /// The whole units, saturating at `u64::MAX`.
    pub(crate) fn units(self) -> u64 {
        u64::try_from(self.room / u128::from(self.per_unit.max(1))).unwrap_or(u64::MAX)
    }
}

/// What one decision found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Whether the request was admitted (and charged).
    pub(crate) allowed: bool,
    /// Unit requests the key could still make right now, after this one.
    pub(crate) remaining: Remaining,
    /// Nanoseconds until the key's quota is whole again.
    pub(crate) reset_after: u64,
    /// Nanoseconds until this request would be admitted (0 when it was).
    pub(crate) retry_after: u64,
}

/// A quota's numbers as three words, so a policy can swap them without a lock
/// (see `engine::ParamCell`).
pub(crate) trait Words: Copy {
    fn to_words(self) -> [u64; 3];
    fn from_words(words: [u64; 3]) -> Self;
}

/// A per-key state, and the algorithm that reads and charges it.
pub(crate) trait State: Default + Send + Sync + 'static {
    /// The quota in the form the algorithm computes with.
    type Params: Words + Send + Sync + 'static;

    /// Checks and converts a quota.
    fn params(quota: &Quota) -> Result<Self::Params, QuotaError>;

    /// The largest cost a request can have and still ever be admitted.
    fn max_cost(params: &Self::Params) -> u32;

    /// Charges `cost` to `key` if the quota allows it, at time `now` (nanoseconds).
    fn acquire<K: Key>(
        store: &Store<K, Self>,
        key: &K,
        params: &Self::Params,
        now: u64,
        cost: u32,
    ) -> Slot<Decision>;

    /// Gives back a charge made by [`acquire`](State::acquire) moments ago, because another
    /// policy refused the same request.
    fn refund<K: Key>(store: &Store<K, Self>, key: &K, params: &Self::Params, now: u64, cost: u32);

    /// Whether the state is equivalent to an absent key at `now`, so dropping it changes no
    /// decision.
    fn is_fresh(&self, params: &Self::Params, now: u64) -> bool;
}
