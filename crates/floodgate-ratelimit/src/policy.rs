//! One rate limit: whom it counts (a key), how much it admits (a quota), where it applies.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::key::{KeyExtractor, OnKeyError, RequestHead};
use http::Method;

use crate::algorithm::Algorithm;
use crate::quota::Quota;
use crate::store::OnFull;

/// A predicate on a request.
pub(crate) type Predicate = Arc<dyn Fn(&RequestHead<'_>) -> bool + Send + Sync>;
/// A request's cost in quota units.
pub(crate) type CostFn = Arc<dyn Fn(&RequestHead<'_>) -> u32 + Send + Sync>;

/// What a policy does with a request over its quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Refuse it with 429 and `Retry-After` (the default).
    #[default]
    Reject,
    /// Hold it (asynchronously; no thread waits) until it fits the quota, if that is at most
    /// `max_wait` away, else refuse it. Like NGINX `limit_req burst=…` without `nodelay`:
    /// traffic is smoothed to the rate instead of refused. A waiting request holds no quota;
    /// when its client goes away, nothing is left behind.
    Delay {
        /// The longest a request is held before it is refused instead.
        max_wait: Duration,
    },
    /// Count, log and send headers as if enforcing, but let every request through, to try a
    /// limit on real traffic before turning it on. Refusals are counted in
    /// `floodgate_ratelimit_dry_run_rejected_total`.
    DryRun,
}

/// Which rate-limit header fields a policy adds to responses.
///
/// The IETF fields (draft-ietf-httpapi-ratelimit-headers-11) are structured fields with one
/// item per policy that applied:
///
/// ```text
/// RateLimit-Policy: "per-ip";q=100;w=60
/// RateLimit: "per-ip";r=42;t=17
/// ```
///
/// `q` requests per `w` seconds; `r` remaining now; `t` seconds until the quota is whole again.
/// The legacy fields describe the policy with the fewest remaining:
///
/// ```text
/// X-RateLimit-Limit: 100
/// X-RateLimit-Remaining: 42
/// X-RateLimit-Reset: 17
/// ```
///
/// Seconds are rounded up; remaining is never negative. Turn headers off for a policy whose
/// limits should not be disclosed (draft-11 §8.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (the default).
    #[default]
    Draft,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Legacy,
    /// Both sets.
    Both,
    /// No rate-limit fields (refusals still carry `Retry-After`).
    None,
}

impl HeaderStyle {
    pub(crate) fn draft(self) -> bool {
        matches!(self, HeaderStyle::Draft | HeaderStyle::Both)
    }

    pub(crate) fn legacy(self) -> bool {
        matches!(self, HeaderStyle::Legacy | HeaderStyle::Both)
    }
}

/// One rate limit: a name, a [key](floodgate_core::key), an [`Algorithm`] with its
/// [`Quota`], and where it applies.
///
/// ```
/// use floodgate_core::key::{ClientIp, Header};
/// use floodgate_ratelimit::{Mode, Policy, Quota};
/// use http::{HeaderName, Method};
/// use std::time::Duration;
///
/// // NGINX `limit_req zone=ip rate=10r/s burst=20`, without `nodelay`.
/// let per_ip = Policy::token_bucket("per-ip", ClientIp::new(), Quota::per_second(10).burst(20))
///     .mode(Mode::Delay { max_wait: Duration::from_secs(2) })
///     .exempt(|request| request.uri().path() == "/health");
///
/// // fastapi-limiter's `times=10, minutes=1` per API key, on writes to /items only.
/// let writes = Policy::sliding_window(
///     "writes",
///     Header::new(HeaderName::from_static("x-api-key")),
///     Quota::per_minute(10),
/// )
/// .methods([Method::POST, Method::PUT, Method::DELETE])
/// .path_prefix("/items");
/// # let _ = (per_ip, writes);
/// ```
#[must_use]
pub struct Policy<E> {
    pub(crate) name: String,
    pub(crate) extractor: E,
    pub(crate) algorithm: Algorithm,
    pub(crate) quota: Quota,
    pub(crate) methods: Option<Vec<Method>>,
    pub(crate) path_prefix: Option<String>,
    pub(crate) exempt: Option<Predicate>,
    pub(crate) cost: Option<CostFn>,
    pub(crate) mode: Mode,
    pub(crate) headers: HeaderStyle,
    pub(crate) on_key_error: OnKeyError,
    pub(crate) max_keys: usize,
    pub(crate) on_full: OnFull,
    pub(crate) sweep_interval: Duration,
}

impl<E: KeyExtractor> Policy<E> {
    /// The default cap on tracked keys: a million, about 50 MB for IP keys.
    pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
    /// How often keys whose state is fresh again are dropped, by default.
    pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

    /// A policy named `name` (letters, digits, `-`, `_`, `.`: it appears in headers and
    /// metric labels) counting with `algorithm` per key of `extractor`.
    pub fn new(name: impl Into<String>, extractor: E, algorithm: Algorithm, quota: Quota) -> Self {
        Self {
            name: name.into(),
            extractor,
            algorithm,
            quota,
            methods: None,
            path_prefix: None,
            exempt: None,
            cost: None,
            mode: Mode::default(),
            headers: HeaderStyle::default(),
            on_key_error: OnKeyError::default(),
            max_keys: Self::DEFAULT_MAX_KEYS,
            on_full: OnFull::default(),
            sweep_interval: Self::DEFAULT_SWEEP_INTERVAL,
        }
    }

    /// A [token bucket](Algorithm::TokenBucket) policy.
    pub fn token_bucket(name: impl Into<String>, extractor: E, quota: Quota) -> Self {
        Self::new(name, extractor, Algorithm::TokenBucket, quota)
    }

    /// A [sliding window](Algorithm::SlidingWindow) policy.
    pub fn sliding_window(name: impl Into<String>, extractor: E, quota: Quota) -> Self {
        Self::new(name, extractor, Algorithm::SlidingWindow, quota)
    }

    /// Applies only to requests with one of these methods.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// Applies only to paths equal to `prefix` or below it, by whole segments: `/items`
    /// matches `/items` and `/items/7`, not `/itemsets`.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Never limits requests for which `exempt` is true (health checks, admin).
    pub fn exempt(
        mut self,
        exempt: impl Fn(&RequestHead<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.exempt = Some(Arc::new(exempt));
        self
    }

    /// Charges each request `cost(request)` units instead of 1. `cost` must depend only on
    /// the request: a refusal by another policy gives back what it computes again. A cost of 0 is free; a cost
    /// above the burst (token bucket) or the count (sliding window) can never be admitted
    /// and is refused with 400 and its own reason,
    /// [`Reason::CostExceedsQuota`](floodgate_core::rejection::Reason::CostExceedsQuota).
    pub fn cost(mut self, cost: impl Fn(&RequestHead<'_>) -> u32 + Send + Sync + 'static) -> Self {
        self.cost = Some(Arc::new(cost));
        self
    }

    /// What to do with requests over the quota (default [`Mode::Reject`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Which rate-limit header fields to send (default [`HeaderStyle::Draft`]).
    pub fn headers(mut self, headers: HeaderStyle) -> Self {
        self.headers = headers;
        self
    }

    /// What to do with requests whose key cannot be read (default: refuse them).
    pub fn on_key_error(mut self, on_key_error: OnKeyError) -> Self {
        self.on_key_error = on_key_error;
        self
    }

    /// The most keys tracked at once (default [`DEFAULT_MAX_KEYS`](Self::DEFAULT_MAX_KEYS)),
    /// and what new keys get when all are active (default [`OnFull::Overflow`]).
    pub fn max_keys(mut self, max_keys: usize, on_full: OnFull) -> Self {
        self.max_keys = max_keys;
        self.on_full = on_full;
        self
    }

    /// How often fresh keys are dropped (default 10 s). The sweep runs on the tokio runtime
    /// the layer first serves on, one shard at a time, and stops when the layer is dropped.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }
}

impl<E: fmt::Debug> fmt::Debug for Policy<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("extractor", &self.extractor)
            .field("algorithm", &self.algorithm)
            .field("quota", &self.quota)
            .field("methods", &self.methods)
            .field("path_prefix", &self.path_prefix)
            .field("mode", &self.mode)
            .field("headers", &self.headers)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}
