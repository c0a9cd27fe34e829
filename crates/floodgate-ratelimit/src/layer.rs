//! [`RateLimitLayer`], its builder, and handles to its policies.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::clock::Clock;
use floodgate_core::header::is_token;
use floodgate_core::key::KeyExtractor;
use floodgate_core::rejection::{ProblemJson, RenderRejection};
use tower::Layer;

use crate::algorithm::{Algorithm, Gcra, State, Window};
use crate::consult::Remote;
use crate::limit::{self, Limit};
use crate::limiter::Limiter;
use crate::policy::Policy;
use crate::quota::{Quota, QuotaError};
use crate::remote::{OnStoreError, RateLimitStore};
use crate::service::RateLimit;

/// The most policies one layer holds (one bit each in a per-request mask).
const MAX_POLICIES: usize = 64;

/// Makes a policy's run-time form on the layer's clock.
type BuildLimit = Box<dyn FnOnce(Clock) -> Result<Arc<dyn Limit>, QuotaError> + Send>;

/// A policy checked and waiting for [`RateLimitLayerBuilder::build`], which gives it the
/// layer's clock.
struct Pending {
    name: String,
    build: BuildLimit,
}

/// Applies rate-limit policies to every request of the service it wraps.
///
/// All state lives behind one `Arc` made when the layer is built: every service this layer
/// makes, every clone of those services (axum clones per request) and every route it is
/// applied to shares the same counters. Cloning the layer does not create new limits.
///
/// Refusals are responses (429 with `Retry-After`, or as configured), never errors, so no
/// `HandleErrorLayer` is needed in axum.
///
/// See the [crate documentation](crate) for an example.
#[derive(Clone)]
#[must_use]
pub struct RateLimitLayer {
    limiter: Arc<Limiter>,
}

impl RateLimitLayer {
    /// Starts a layer; add policies with [`RateLimitLayerBuilder::policy`].
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayerBuilder {
            policies: Vec::new(),
            renderer: Box::new(ProblemJson),
            clock: Clock::new(),
            store: None,
            store_deadline: RateLimitLayerBuilder::DEFAULT_STORE_DEADLINE,
            on_store_error: OnStoreError::default(),
            error: None,
        }
    }

    /// A handle to the policy named `name`, to read or change it at run time.
    pub fn policy(&self, name: &str) -> Option<PolicyHandle> {
        self.limiter
            .policies
            .iter()
            .find(|policy| policy.name() == name)
            .map(|policy| PolicyHandle {
                policy: Arc::clone(policy),
            })
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit::new(inner, Arc::clone(&self.limiter))
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policies", &self.limiter.policies)
            .finish()
    }
}

/// Builds a [`RateLimitLayer`]; every setting is checked by [`build`](Self::build).
#[must_use]
pub struct RateLimitLayerBuilder {
    policies: Vec<Pending>,
    renderer: Box<dyn RenderRejection>,
    clock: Clock,
    store: Option<Arc<dyn RateLimitStore>>,
    store_deadline: Duration,
    on_store_error: OnStoreError,
    error: Option<ConfigError>,
}

impl RateLimitLayerBuilder {
    /// How long a request waits for a remote store's decision unless set otherwise: on
    /// loopback or in one data centre a Redis round trip takes well under a millisecond.
    pub const DEFAULT_STORE_DEADLINE: Duration = Duration::from_millis(5);

    /// Keeps every policy's counts in `store` (such as `floodgate-redis`'s `RedisStore`)
    /// instead of this process's memory, so that every replica using the same store
    /// enforces one quota together.
    ///
    /// Each request then costs one call to the store, for all its policies together, bounded
    /// by [`store_deadline`](Self::store_deadline). While the store's refusal of a key
    /// holds, further requests for that key (under [`Mode::Reject`](crate::Mode::Reject)
    /// policies) are refused locally, without a call. The policies' in-memory options
    /// ([`max_keys`](Policy::max_keys), sweeping) do not apply: the store expires idle keys.
    pub fn store(mut self, store: impl RateLimitStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The longest a request waits for the store (default
    /// [`DEFAULT_STORE_DEADLINE`](Self::DEFAULT_STORE_DEADLINE)); past it the store has
    /// failed, and [`on_store_error`](Self::on_store_error) decides.
    pub fn store_deadline(mut self, deadline: Duration) -> Self {
        self.store_deadline = deadline;
        self
    }

    /// What to do with a request when the store cannot decide in time: admit it (the
    /// default) or refuse it with 503. Either way it is counted in
    /// `floodgate_ratelimit_store_errors_total`. The first failure of an outage is logged
    /// at warning level, and its end (10 s without a failure) at info level.
    pub fn on_store_error(mut self, on_store_error: OnStoreError) -> Self {
        self.on_store_error = on_store_error;
        self
    }

    /// Adds a policy. A request is admitted only if every policy that applies to it admits
    /// it, and a policy that refuses leaves the others uncharged.
    pub fn policy<E: KeyExtractor>(mut self, policy: Policy<E>) -> Self {
        if self.error.is_some() {
            return self;
        }
        let name = policy.name.clone();
        if !is_token(name.as_bytes()) {
            self.error = Some(ConfigError::Name(name));
            return self;
        }
        if self.policies.iter().any(|existing| existing.name == name) {
            self.error = Some(ConfigError::DuplicateName(name));
            return self;
        }
        if policy.max_keys == 0 {
            self.error = Some(ConfigError::NoKeys(name));
            return self;
        }
        if policy.sweep_interval.is_zero() {
            self.error = Some(ConfigError::SweepInterval(name));
            return self;
        }
        let checked = match policy.algorithm {
            Algorithm::TokenBucket => Gcra::params(&policy.quota).map(drop),
            Algorithm::SlidingWindow => Window::params(&policy.quota).map(drop),
        };
        if let Err(error) = checked {
            self.error = Some(ConfigError::Quota {
                policy: name,
                error,
            });
            return self;
        }
        let build: BuildLimit = match policy.algorithm {
            Algorithm::TokenBucket => Box::new(move |clock| limit::build::<E, Gcra>(policy, clock)),
            Algorithm::SlidingWindow => {
                Box::new(move |clock| limit::build::<E, Window>(policy, clock))
            }
        };
        self.policies.push(Pending { name, build });
        self
    }

    /// Reads time from `clock` instead of tokio's. [`Clock::counter`] reads the CPU's
    /// counter, which is cheaper (13 ns against 33 ns a request on the VM floodgate is
    /// benchmarked on) but does not follow `tokio::time::pause()`: keep the default in
    /// tests that pause time.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Makes refusal bodies with `renderer` instead of RFC 9457 problem+json.
    pub fn render_rejection(mut self, renderer: impl RenderRejection) -> Self {
        self.renderer = Box::new(renderer);
        self
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first policy that was refused, or saying there is none.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.policies.is_empty() {
            return Err(ConfigError::NoPolicies);
        }
        if self.policies.len() > MAX_POLICIES {
            return Err(ConfigError::TooManyPolicies(self.policies.len()));
        }
        if self.store.is_some() && self.store_deadline.is_zero() {
            return Err(ConfigError::StoreDeadline);
        }
        let remote = self.store.map(|store| {
            Remote::new(
                store,
                self.store_deadline,
                self.on_store_error,
                self.policies.len(),
            )
        });
        let policies = self
            .policies
            .into_iter()
            .map(|Pending { name, build }| {
                build(self.clock.clone()).map_err(|error| ConfigError::Quota {
                    policy: name,
                    error,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(RateLimitLayer {
            limiter: Arc::new(Limiter {
                policies,
                clock: self.clock,
                renderer: self.renderer,
                remote,
            }),
        })
    }
}

impl fmt::Debug for RateLimitLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field(
                "policies",
                &self
                    .policies
                    .iter()
                    .map(|policy| &policy.name)
                    .collect::<Vec<_>>(),
            )
            .field("store", &self.store)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// A handle to one policy of a built layer: read its quota and key count, change its quota.
#[derive(Clone)]
pub struct PolicyHandle {
    policy: Arc<dyn Limit>,
}

impl PolicyHandle {
    /// The policy's name.
    pub fn name(&self) -> &str {
        self.policy.name()
    }

    /// The quota in force.
    pub fn quota(&self) -> Quota {
        self.policy.configured().quota
    }

    /// Replaces the quota from the next request on, keeping every key's state.
    ///
    /// Nobody gets a fresh quota from a change.
    ///
    /// - **Token bucket.** Each key keeps its TAT, the time at which its bucket is full
    ///   again. A client that emptied its bucket is still empty and refills at the new
    ///   rate; one that was idle has a full bucket of the new size.
    /// - **Sliding window.** Each key keeps its counts, and the new count applies to what
    ///   the current and previous windows already counted. A new period applies from the
    ///   next request.
    ///
    /// # Errors
    ///
    /// The [`QuotaError`] if `quota` is not valid for the policy's algorithm; the old quota
    /// stays.
    pub fn set_quota(&self, quota: Quota) -> Result<(), QuotaError> {
        self.policy.set_quota(quota)
    }

    /// How many keys the policy tracks now.
    pub fn tracked_keys(&self) -> usize {
        self.policy.tracked_keys()
    }

    /// Drops every key whose state is fresh again, now, rather than at the next sweep;
    /// returns how many were dropped. No decision changes because of it.
    pub fn sweep(&self) -> usize {
        self.policy.sweep()
    }

    #[cfg(test)]
    pub(crate) fn policy_arc(&self) -> Arc<dyn Limit> {
        Arc::clone(&self.policy)
    }
}

impl fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.policy.fmt(f)
    }
}

/// Why a [`RateLimitLayer`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No policy was added.
    NoPolicies,
    /// More policies than one layer holds.
    TooManyPolicies(usize),
    /// A policy name is empty or has characters other than letters, digits and
    /// ``!#$%&'*+-.^_`|~`` (it appears in headers and metric labels).
    Name(String),
    /// Two policies share a name.
    DuplicateName(String),
    /// A policy allows zero keys.
    NoKeys(String),
    /// A policy's sweep interval is zero.
    SweepInterval(String),
    /// The store deadline is zero: no store could ever answer in time.
    StoreDeadline,
    /// A policy's quota is not valid for its algorithm.
    Quota {
        /// The policy's name.
        policy: String,
        /// What is wrong with the quota.
        error: QuotaError,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoPolicies => f.write_str("a rate-limit layer needs at least one policy"),
            ConfigError::TooManyPolicies(count) => {
                write!(f, "{count} policies in one layer; at most {MAX_POLICIES}")
            }
            ConfigError::Name(name) => write!(
                f,
                "policy name {name:?} must be non-empty and made of letters, digits and -_.~ \
                 (it appears in headers and metric labels)"
            ),
            ConfigError::DuplicateName(name) => write!(f, "two policies are named {name:?}"),
            ConfigError::NoKeys(name) => {
                write!(
                    f,
                    "policy {name:?} allows no keys: max_keys must be at least 1"
                )
            }
            ConfigError::SweepInterval(name) => {
                write!(
                    f,
                    "policy {name:?} has a zero sweep interval: use at least a millisecond"
                )
            }
            ConfigError::StoreDeadline => {
                f.write_str("the store deadline is zero: give the store at least a millisecond")
            }
            ConfigError::Quota { policy, error } => write!(f, "policy {policy:?}: {error}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Quota { error, .. } => Some(error),
            _ => None,
        }
    }
}
