//! A policy at run time: where it applies and whom it counts, over an [`Engine`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::clock::{Clock, duration_nanos};
use floodgate_core::key::{KeyError, KeyExtractor, OnKeyError, RequestHead};
use http::Method;

use crate::algorithm::{Algorithm, Decision, State};
use crate::engine::{Configured, Engine, EngineMetrics, Limits, Outcome};
use crate::policy::{CostFn, HeaderStyle, Mode, Policy, Predicate};
use crate::quota::{Quota, QuotaError};
use crate::remote::Check;

/// A policy with its key and state types erased, as the limiter holds it.
pub(crate) trait Limit: Send + Sync + fmt::Debug {
    fn name(&self) -> &str;
    fn mode(&self) -> Mode;
    fn header_style(&self) -> HeaderStyle;
    fn configured(&self) -> Arc<Configured>;
    fn set_quota(&self, quota: Quota) -> Result<(), QuotaError>;
    /// Checks the request and charges it if it fits.
    fn evaluate(&self, request: &RequestHead<'_>, now: u64) -> Evaluation;
    /// What to ask a remote store about the request; `Err` when there is nothing to ask
    /// (`Skip`, `NoKey` or `TooCostly`).
    fn plan(&self, request: &RequestHead<'_>) -> Result<Check, Evaluation>;
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
    /// The policy's name, shared with every remote check rather than copied into each.
    name: Arc<str>,
    algorithm: Algorithm,
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
    let name = Arc::from(policy.name.as_str());
    let engine = Engine::new(policy.name, policy.quota, limits, clock)?;
    Ok(Arc::new(Runtime::<E, S> {
        name,
        algorithm: policy.algorithm,
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

    /// The key and cost of a request the policy counts, or why it counts nothing.
    fn key_and_cost(&self, request: &RequestHead<'_>) -> Result<(E::Key, u32), Evaluation> {
        if !self.applies(request) {
            return Err(Evaluation::Skip);
        }
        let key = self.extractor.extract(request).map_err(|error| {
            floodgate_core::metrics::key_error(&error);
            match self.on_key_error {
                OnKeyError::Unlimited => Evaluation::Skip,
                _ => Evaluation::NoKey(error),
            }
        })?;
        match self.cost_of(request) {
            0 => Err(Evaluation::Skip),
            cost => Ok((key, cost)),
        }
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
        let (key, cost) = match self.key_and_cost(request) {
            Ok(counted) => counted,
            Err(evaluation) => return evaluation,
        };
        match self.engine.acquire(&key, now, cost) {
            Outcome::Decided(decision) => Evaluation::Decided(decision),
            Outcome::TooCostly { max } => Evaluation::TooCostly { cost, max },
            Outcome::Full => Evaluation::Full,
        }
    }

    fn plan(&self, request: &RequestHead<'_>) -> Result<Check, Evaluation> {
        let (key, cost) = self.key_and_cost(request)?;
        let max = self.engine.max_cost();
        if cost > max {
            return Err(Evaluation::TooCostly { cost, max });
        }
        // Debug text is unambiguous for every key type (strings are quoted and escaped,
        // pairs are parenthesised), so two keys never share a store entry.
        let check = Check::new(
            Arc::clone(&self.name),
            format!("{key:?}"),
            self.algorithm,
            self.engine.configured().quota,
            cost,
        );
        Ok(if self.mode == Mode::DryRun {
            check.dry_run()
        } else {
            check
        })
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
