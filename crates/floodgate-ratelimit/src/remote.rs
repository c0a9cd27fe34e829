//! Counts kept outside the process, shared by every replica: the [`RateLimitStore`] trait.
//!
//! A layer keeps its counts in memory unless it is given a store with
//! [`RateLimitLayerBuilder::store`](crate::RateLimitLayerBuilder::store). In memory, each
//! replica enforces its own copy of every quota, so N replicas admit N times the quota
//! together. A store such as `floodgate-redis`'s `RedisStore` keeps one count for all of
//! them.
//!
//! The layer asks the store once per request, with every policy that applies to the
//! request, and the store must decide them together (see [`RateLimitStore::check`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::algorithm::Algorithm;
use crate::quota::Quota;

/// One policy's part of a request, as a store receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    policy: Arc<str>,
    key: String,
    algorithm: Algorithm,
    quota: Quota,
    cost: u32,
    enforced: bool,
}

impl Check {
    /// Policy `policy` charging `cost` to `key` under `quota`, counted by `algorithm`; its
    /// refusal refuses the request.
    pub fn new(
        policy: impl Into<Arc<str>>,
        key: impl Into<String>,
        algorithm: Algorithm,
        quota: Quota,
        cost: u32,
    ) -> Self {
        Self {
            policy: policy.into(),
            key: key.into(),
            algorithm,
            quota,
            cost,
            enforced: true,
        }
    }

    /// The same check as a dry run: charged when it fits, but its refusal refuses nothing.
    #[must_use]
    pub fn dry_run(mut self) -> Self {
        self.enforced = false;
        self
    }

    /// The policy's name; with [`key`](Self::key) it names the state to charge.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// Whom the policy counts (a client IP, an API key …), as text.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How the policy counts.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The quota in force.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Units this request costs (at least 1, and at most what the quota admits at once).
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// Whether a refusal of this check refuses the request (false for a dry run).
    pub fn enforced(&self) -> bool {
        self.enforced
    }
}

/// What a store decided for one [`Check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreDecision {
    /// Whether the check fits its quota now.
    pub allowed: bool,
    /// Unit requests the key could still make now, after this one if it was charged.
    pub remaining: u64,
    /// How long until the key's quota is whole again.
    pub reset_after: Duration,
    /// How long until this check would fit (zero when it fits now).
    pub retry_after: Duration,
}

/// What a layer does with a request when its store cannot decide in time (unreachable,
/// slow past the deadline, or failing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnStoreError {
    /// Admit the request unlimited (the default): an outage of the limiter does not become
    /// an outage of the service.
    #[default]
    FailOpen,
    /// Refuse the request with 503 and `Retry-After: 1`: for limits that protect something
    /// that must not be overrun.
    FailClosed,
}

/// Why a store could not decide. The layer then admits or refuses the request as set with
/// [`on_store_error`](crate::RateLimitLayerBuilder::on_store_error).
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The store did not answer within the layer's deadline.
    Timeout(Duration),
    /// The store cannot be reached, or its connection broke.
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
    /// The store answered with an error or with something that is not a decision.
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(deadline) => {
                write!(f, "the rate-limit store did not answer within {deadline:?}")
            }
            Self::Unavailable(error) => write!(f, "the rate-limit store is unreachable: {error}"),
            Self::Failed(error) => write!(f, "the rate-limit store failed: {error}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Timeout(_) => None,
            Self::Unavailable(error) | Self::Failed(error) => Some(&**error),
        }
    }
}

/// A store's answer to one request: a decision per check, in order.
pub type StoreFuture = Pin<Box<dyn Future<Output = Result<Vec<StoreDecision>, StoreError>> + Send>>;

/// Keeps rate-limit state where several processes can share it.
///
/// Implementations must give every replica the same answer a single process would give:
///
/// - **All or nothing.** [`check`](Self::check) decides every check of a request at once.
///   If every *enforced* check fits, each check that fits is charged (a dry-run check that
///   does not fit is not); otherwise nothing is charged. No other request may see a state
///   between the two.
/// - **Same contracts.** A token bucket and a sliding window admit what
///   [`Algorithm`] documents for them in memory.
/// - **Time moves forward.** Whatever clock the store reads, a key's state never moves
///   back in time.
///
/// The layer bounds each call with its own deadline, so an implementation need not.
pub trait RateLimitStore: Send + Sync + fmt::Debug + 'static {
    /// Decides `checks` together and charges them if they fit (see the trait docs).
    fn check(&self, checks: Vec<Check>) -> StoreFuture;
}
