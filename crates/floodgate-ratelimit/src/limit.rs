//! A policy at run time: where it applies and whom it counts, over an [`Engine`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::clock::{Clock, duration_nanos};
use floodgate_core::key::{KeyError, KeyExtractor, OnKeyError, RequestHead};
use http::Method;

use crate::algorithm::{Decision, State};
use crate::engine::{Configured, Engine, EngineMetrics, Limits, Outcome};
use crate::policy::{CostFn, HeaderStyle, Mode, Policy, Predicate};
use crate::quota::{Quota, QuotaError};

/// A policy with its key and state types erased, as the limiter holds it.
pub(crate) trait Limit: Send + Sync + fmt::Debug {
    fn name(&self) -> &str;
    fn mode(&self) -> Mode;
    fn header_style(&self) -> HeaderStyle;
    fn configured(&self) -> Arc<Configured>;
    fn set_quota(&self, quota: Quota) -> Result<(), QuotaError>;
    /// Checks the request and charges it if it fits.
    fn evaluate(&self, request: &RequestHead<'_>, now: u64) -> Evaluation;
    /// Gives back what [`evaluate`](Limit::evaluate) charged for this request.
    fn refund(&self, request: &RequestHead<'_>, now: u64);
    fn tracked_keys(&self) -> usize;
    fn sweep(&self) -> usize;
    fn metrics(&self) -> &EngineMetrics;
    fn sweep_interval(&self) -> Duration;
}

/// What a policy made of a request.
#[derive(Debug)]
pub(crate) enum Evaluation {
    /// The policy does not apply: another route or method, exempt, free, or no key and
    /// [`OnKeyError::Unlimited`].
    Skip,
    /// The key could not be read and the policy refuses such requests.
    NoKey(KeyError),
    /// The request costs more than the quota ever admits at once.
    TooCostly { cost: u32, max: u32 },
    /// The key table is full of active keys and new keys are refused.
    Full,
    /// A decision (charged if `allowed`).
    Decided(Decision),
}

struct Runtime<E: KeyExtractor, S: State> {
    extractor: E,
    methods: Option<Vec<Method>>,
    path_prefix: Option<String>,
    exempt: Option<Predicate>,
    cost: Option<CostFn>,
    mode: Mode,
    header_style: HeaderStyle,
    on_key_error: OnKeyError,
    engine: Arc<Engine<E::Key, S>>,
}

/// Builds the run-time form of `policy`, checking its quota.
pub(crate) fn build<E: KeyExtractor, S: State>(
    policy: Policy<E>,
    clock: Clock,
) -> Result<Arc<dyn Limit>, QuotaError> {
    let limits = Limits {
        max_keys: policy.max_keys,
        on_full: policy.on_full,
        sweep_interval: policy.sweep_interval,
    };
    let engine = Engine::new(policy.name, policy.quota, limits, clock)?;
    Ok(Arc::new(Runtime::<E, S> {
        extractor: policy.extractor,
        methods: policy.methods,
        path_prefix: policy.path_prefix,
        exempt: policy.exempt,
        cost: policy.cost,
        mode: policy.mode,
        header_style: policy.headers,
        on_key_error: policy.on_key_error,
        engine,
    }))
}

impl<E: KeyExtractor, S: State> Runtime<E, S> {
    fn applies(&self, request: &RequestHead<'_>) -> bool {
        if self
            .methods
            .as_ref()
            .is_some_and(|methods| !methods.contains(request.method()))
        {
            return false;
        }
        if let Some(prefix) = &self.path_prefix {
            let below = request
                .uri()
                .path()
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/')
                });
            if !below {
                return false;
            }
        }
        !self.exempt.as_ref().is_some_and(|exempt| exempt(request))
    }

    fn cost_of(&self, request: &RequestHead<'_>) -> u32 {
        self.cost.as_ref().map_or(1, |cost| cost(request))
    }
}

impl<E: KeyExtractor, S: State> Limit for Runtime<E, S> {
    fn name(&self) -> &str {
        self.engine.name()
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn header_style(&self) -> HeaderStyle {
        self.header_style
    }

    fn configured(&self) -> Arc<Configured> {
        self.engine.configured()
    }

    fn set_quota(&self, quota: Quota) -> Result<(), QuotaError> {
        self.engine.set_quota(quota)
    }

    fn evaluate(&self, request: &RequestHead<'_>, now: u64) -> Evaluation {
        if !self.applies(request) {
            return Evaluation::Skip;
        }
        let key = match self.extractor.extract(request) {
            Ok(key) => key,
            Err(error) => {
                floodgate_core::metrics::key_error(&error);
                return match self.on_key_error {
                    OnKeyError::Unlimited => Evaluation::Skip,
                    _ => Evaluation::NoKey(error),
                };
            }
        };
        let cost = self.cost_of(request);
        if cost == 0 {
            return Evaluation::Skip;
        }
        match self.engine.acquire(&key, now, cost) {
            Outcome::Decided(decision) => Evaluation::Decided(decision),
            Outcome::TooCostly { max } => Evaluation::TooCostly { cost, max },
            Outcome::Full => Evaluation::Full,
        }
    }

    fn refund(&self, request: &RequestHead<'_>, now: u64) {
        // Reading the key again costs less than keeping it: no allocation on the hot path.
        if let Ok(key) = self.extractor.extract(request) {
            self.engine.refund(&key, now, self.cost_of(request));
        }
    }

    fn tracked_keys(&self) -> usize {
        self.engine.tracked_keys()
    }

    fn sweep(&self) -> usize {
        self.engine.sweep()
    }

    fn metrics(&self) -> &EngineMetrics {
        self.engine.metrics()
    }

    fn sweep_interval(&self) -> Duration {
        self.engine.sweep_interval()
    }
}

impl<E: KeyExtractor, S: State> fmt::Debug for Runtime<E, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("engine", &self.engine)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Nanoseconds as whole seconds, rounded up.
pub(crate) fn seconds_rounded_up(nanos: u64) -> u64 {
    nanos.div_ceil(duration_nanos(Duration::from_secs(1)))
}
