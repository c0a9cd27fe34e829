//! Deciding with a remote store: one round trip per request, a deadline, what to do when
//! the store fails, and local refusals while the store's last refusal of a key holds.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use floodgate_core::clock::duration_nanos;
use floodgate_core::key::RequestHead;
use floodgate_core::metrics::{
    LABEL_OUTCOME, LABEL_POLICY, RATELIMIT_LOCAL_REFUSALS_TOTAL, RATELIMIT_STORE_ERRORS_TOTAL,
};
use floodgate_core::rejection::{Reason, Rejection, RenderRejection};

use crate::algorithm::{Decision, Remaining};
use crate::limit::Evaluation;
use crate::limiter::{Fields, Limiter, Verdict};
use crate::policy::Mode;
use crate::remote::{Check, OnStoreError, RateLimitStore, StoreDecision, StoreError, StoreFuture};

/// Shards of each policy's table of recent refusals, so that requests for different keys
/// rarely meet on one lock.
const DENIAL_SHARDS: usize = 16;
/// Keys one shard remembers; past it, expired entries are dropped, and if none has expired
/// the new refusal is not remembered (the store is asked again, which is always correct).
const DENIALS_PER_SHARD: usize = 4096;
/// How long a store must answer without a failure to count as back after an outage.
const RECOVERY: Duration = Duration::from_secs(10);
/// How long a fail-closed refusal tells the client to wait.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A layer's remote store and how the layer uses it.
pub(crate) struct Remote {
    pub(crate) store: Arc<dyn RateLimitStore>,
    pub(crate) deadline: Duration,
    pub(crate) on_error: OnStoreError,
    /// Per policy: keys the store refused, and until when (nanoseconds on the layer's clock).
    denials: Box<[Denials]>,
    /// Whether the store is failing, so that an outage is logged once, not per request.
    down: AtomicBool,
    /// When it last failed (nanoseconds on the layer's clock): it counts as back only once
    /// it has answered for [`RECOVERY`], so a store that misses the deadline now and then
    /// is one outage in the log, not one per miss.
    last_failure: AtomicU64,
}

/// One checked policy of a consultation: which policy, and its key's hash for the table of
/// refusals.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked {
    pub(crate) policy: usize,
    key_hash: u64,
}

/// A request on its way to the store: the policies asked, in the order of the checks.
#[derive(Debug)]
pub(crate) struct Consultation {
    checked: Vec<Checked>,
    /// The checks to send; taken by [`Remote::ask`].
    checks: Vec<Check>,
}

impl Consultation {
    pub(crate) fn checked(&self) -> &[Checked] {
        &self.checked
    }
}

impl Remote {
    pub(crate) fn new(
        store: Arc<dyn RateLimitStore>,
        deadline: Duration,
        on_error: OnStoreError,
        policies: usize,
    ) -> Self {
        Self {
            store,
            deadline,
            on_error,
            denials: (0..policies).map(|_| Denials::default()).collect(),
            down: AtomicBool::new(false),
            last_failure: AtomicU64::new(0),
        }
    }

    /// Reads every policy's check of `request`. Refuses at once when a policy cannot
    /// decide (no key, too costly) or when the store refused the same key moments ago and
    /// its retry time has not passed; otherwise asks for a consultation.
    pub(crate) fn plan(&self, limiter: &Limiter, request: &RequestHead<'_>, now: u64) -> Verdict {
        let mut checked = Vec::new();
        let mut checks = Vec::new();
        for (index, policy) in limiter.policies.iter().enumerate() {
            let check = match policy.plan(request) {
                Ok(check) => check,
                Err(Evaluation::Skip) => continue,
                Err(other) => match limiter.unevaluated(&**policy, other) {
                    Some(refusal) => return refusal,
                    None => continue,
                },
            };
            let key_hash = self.denials[index].hash(check.key());
            if policy.mode() == Mode::Reject
                && let Some(retry_after) = self.denials[index].refused_for(key_hash, now)
            {
                policy.metrics().rejected.increment(1);
                metrics::counter!(RATELIMIT_LOCAL_REFUSALS_TOTAL.name, LABEL_POLICY => policy.name().to_owned())
                    .increment(1);
                let decision = Decision {
                    allowed: false,
                    remaining: Remaining::exact(0),
                    reset_after: retry_after,
                    retry_after,
                };
                let mut fields = Fields::default();
                fields.add(&**policy, &decision);
                return limiter.over_quota(&**policy, &decision, fields);
            }
            checked.push(Checked {
                policy: index,
                key_hash,
            });
            checks.push(check);
        }
        if checks.is_empty() {
            return Verdict::Admit(None);
        }
        Verdict::Consult(Box::new(Consultation { checked, checks }))
    }

    /// Sends the consultation's checks to the store. The caller bounds the wait by
    /// [`deadline`](Self::deadline).
    pub(crate) fn ask(&self, consultation: &mut Consultation) -> StoreFuture {
        self.store.check(std::mem::take(&mut consultation.checks))
    }

    /// The store answered at `now`: if it had been failing and has not failed for
    /// [`RECOVERY`], say it is back.
    pub(crate) fn answered(&self, now: u64) {
        let since_failure = now.saturating_sub(self.last_failure.load(Ordering::Relaxed));
        if self.down.load(Ordering::Relaxed)
            && since_failure >= duration_nanos(RECOVERY)
            && self.down.swap(false, Ordering::Relaxed)
        {
            tracing::info!(target: "floodgate::ratelimit", "the rate-limit store answers again");
        }
    }

    /// The store could not decide: admit or refuse as configured, count it, and log the
    /// first failure of an outage.
    pub(crate) fn failed(
        &self,
        error: &StoreError,
        now: u64,
        renderer: &dyn RenderRejection,
    ) -> Verdict {
        self.last_failure.store(now, Ordering::Relaxed);
        let outcome = match self.on_error {
            OnStoreError::FailOpen => "fail_open",
            OnStoreError::FailClosed => "fail_closed",
        };
        metrics::counter!(RATELIMIT_STORE_ERRORS_TOTAL.name, LABEL_OUTCOME => outcome).increment(1);
        if self.down.swap(true, Ordering::Relaxed) {
            tracing::debug!(target: "floodgate::ratelimit", %error, outcome, "the rate-limit store failed");
        } else {
            tracing::warn!(target: "floodgate::ratelimit", %error, outcome, "the rate-limit store failed; until it answers again, requests are decided by the failure policy");
        }
        match self.on_error {
            OnStoreError::FailOpen => Verdict::Admit(None),
            OnStoreError::FailClosed => {
                let rejection = Rejection::new(
                    Reason::StoreUnavailable,
                    "the rate limiter cannot decide right now; try again shortly",
                )
                .with_retry_after(STORE_RETRY_AFTER);
                Verdict::Reject(Box::new(rejection.into_response(renderer)))
            }
        }
    }

    /// Remembers that the store refused `checked`'s key for `retry_after` nanoseconds.
    pub(crate) fn remember_refusal(&self, checked: Checked, now: u64, retry_after: u64) {
        self.denials[checked.policy].remember(
            checked.key_hash,
            now.saturating_add(retry_after),
            now,
        );
    }
}

/// Converts a store's decision into the layer's own, in nanoseconds. A refusal always has
/// a wait of at least a nanosecond, so it is remembered and retried after it.
pub(crate) fn decision_of(decision: &StoreDecision) -> Decision {
    let retry_after = duration_nanos(decision.retry_after);
    Decision {
        allowed: decision.allowed,
        remaining: Remaining::exact(decision.remaining),
        reset_after: duration_nanos(decision.reset_after),
        retry_after: if decision.allowed {
            0
        } else {
            retry_after.max(1)
        },
    }
}

/// One policy's recent refusals by the store: key hash → refused until (nanoseconds).
///
/// Keys are remembered by a 64-bit hash: a collision could only refuse another key
/// locally until the remembered refusal ends, and at a few thousand keys per shard its
/// odds are below one in 10^12.
#[derive(Default)]
struct Denials {
    hasher: foldhash::quality::RandomState,
    shards: [Mutex<HashMap<u64, u64>>; DENIAL_SHARDS],
}

impl Denials {
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, key_hash: u64) -> &Mutex<HashMap<u64, u64>> {
        // The top bits: the low ones also pick the hash map's own buckets.
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the top four bits, below DENIAL_SHARDS"
        )]
        &self.shards[(key_hash >> 60) as usize % DENIAL_SHARDS]
    }

    /// How long the store's refusal of this key still holds, if it does.
    fn refused_for(&self, key_hash: u64, now: u64) -> Option<u64> {
        let shard = self
            .shard(key_hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard
            .get(&key_hash)
            .and_then(|&until| until.checked_sub(now))
            .filter(|&left| left > 0)
    }

    fn remember(&self, key_hash: u64, until: u64, now: u64) {
        let mut shard = self
            .shard(key_hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= DENIALS_PER_SHARD && !shard.contains_key(&key_hash) {
            shard.retain(|_, &mut expiry| expiry > now);
            if shard.len() >= DENIALS_PER_SHARD {
                return;
            }
        }
        shard.insert(key_hash, until);
    }
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("store", &self.store)
            .field("deadline", &self.deadline)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::Check;
    use floodgate_core::rejection::ProblemJson;

    #[derive(Debug)]
    struct Unreachable;

    impl RateLimitStore for Unreachable {
        fn check(&self, _: Vec<Check>) -> StoreFuture {
            Box::pin(async { Err(StoreError::Timeout(Duration::ZERO)) })
        }
    }

    #[test]
    fn a_store_that_misses_now_and_then_is_one_outage_until_it_has_answered_for_a_while() {
        let remote = Remote::new(
            Arc::new(Unreachable),
            Duration::from_millis(5),
            OnStoreError::FailOpen,
            1,
        );
        let second = duration_nanos(Duration::from_secs(1));
        let error = StoreError::Timeout(Duration::from_millis(5));
        let _ = remote.failed(&error, 0, &ProblemJson);
        assert!(remote.down.load(Ordering::Relaxed));
        // Answers and misses in turn: still the same outage.
        remote.answered(second);
        let _ = remote.failed(&error, 2 * second, &ProblemJson);
        remote.answered(11 * second);
        assert!(
            remote.down.load(Ordering::Relaxed),
            "9 s since the last miss"
        );
        remote.answered(12 * second);
        assert!(
            !remote.down.load(Ordering::Relaxed),
            "10 s without a miss: back"
        );
    }
}
