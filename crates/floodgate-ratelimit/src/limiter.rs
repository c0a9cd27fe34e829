//! Every policy of a layer, checked together for each request.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use floodgate_core::clock::Clock;
use floodgate_core::key::RequestHead;
use floodgate_core::rejection::{Reason, Rejection, RenderRejection};
use http::{HeaderMap, HeaderName, HeaderValue, Response};

use crate::algorithm::Decision;
use crate::consult::{Consultation, Remote, decision_of};
use crate::limit::{Evaluation, Limit, seconds_rounded_up};
use crate::policy::Mode;
use crate::remote::{StoreDecision, StoreError};

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The policies of one layer, with the clock, the rejection body and (when the counts are
/// shared) the store they share.
pub(crate) struct Limiter {
    pub(crate) policies: Box<[Arc<dyn Limit>]>,
    pub(crate) clock: Clock,
    pub(crate) renderer: Box<dyn RenderRejection>,
    /// Where the counts live when not in this process's memory.
    pub(crate) remote: Option<Remote>,
}

/// What to do with a request.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Pass it on, adding these header fields (if any) to the response.
    Admit(Option<Box<Fields>>),
    /// Answer with this refusal. Boxed, like the fields: the common verdict stays two words.
    Reject(Box<Response<Bytes>>),
    /// Check again after this long (a delay-mode policy is over quota).
    Wait(Duration),
    /// Ask the remote store, then [`conclude`](Limiter::conclude).
    Consult(Box<Consultation>),
}

/// What a policy's refusal means for the request.
enum Refusal {
    /// Nothing: a dry run only reports.
    Ignore,
    /// Hold the request and check again (a delay-mode policy within its wait).
    Wait(u64),
    /// Refuse the request.
    Refuse,
}

impl Limiter {
    /// Checks `request` against every policy; `waited` is how long it has been held already.
    ///
    /// A request is admitted only if every policy that applies admits it; if one refuses, the
    /// policies that had admitted it get their charge back, so refused work costs nothing.
    /// With a remote store, the verdict is to consult it, unless a policy refuses at once.
    pub(crate) fn check(&self, request: &RequestHead<'_>, waited: Duration) -> Verdict {
        let now = self.clock.now_nanos();
        if let Some(remote) = &self.remote {
            return remote.plan(self, request, now);
        }
        let mut charged = 0_u64;
        let mut fields = Fields::default();
        let mut wait: Option<u64> = None;
        for (index, policy) in self.policies.iter().enumerate() {
            let decision = match policy.evaluate(request, now) {
                Evaluation::Skip => continue,
                Evaluation::Decided(decision) => decision,
                other => match self.unevaluated(&**policy, other) {
                    Some(refusal) => {
                        self.refund(request, now, charged);
                        return refusal;
                    }
                    None => continue,
                },
            };
            fields.add(&**policy, &decision);
            if decision.allowed {
                charged |= 1 << index;
                continue;
            }
            match refusal(&**policy, &decision, waited) {
                Refusal::Ignore => {}
                Refusal::Wait(nanos) => wait = Some(wait.unwrap_or(0).max(nanos)),
                Refusal::Refuse => {
                    self.refund(request, now, charged);
                    return self.over_quota(&**policy, &decision, fields);
                }
            }
        }
        if let Some(wait) = wait {
            self.refund(request, now, charged);
            return Verdict::Wait(Duration::from_nanos(wait));
        }
        for (index, policy) in self.policies.iter().enumerate() {
            if charged & (1 << index) != 0 {
                policy.metrics().admitted.increment(1);
            }
        }
        Verdict::Admit(fields.into_box())
    }

    /// Turns a store's answer into a verdict. The store charged the request only if every
    /// enforced policy admitted it, so unlike [`check`](Self::check) nothing is refunded.
    pub(crate) fn conclude(
        &self,
        consultation: &Consultation,
        answer: Result<Vec<StoreDecision>, StoreError>,
        waited: Duration,
    ) -> Verdict {
        let remote = self
            .remote
            .as_ref()
            .expect("only a layer with a remote store consults one");
        let now = self.clock.now_nanos();
        let decisions = match answer {
            Ok(decisions) if decisions.len() == consultation.checked().len() => {
                remote.answered(now);
                decisions.iter().map(decision_of).collect::<Vec<_>>()
            }
            Ok(decisions) => {
                let error = StoreError::Failed(
                    format!(
                        "{} decisions for {} checks",
                        decisions.len(),
                        consultation.checked().len()
                    )
                    .into(),
                );
                return remote.failed(&error, now, &*self.renderer);
            }
            Err(error) => return remote.failed(&error, now, &*self.renderer),
        };
        let mut fields = Fields::default();
        let mut wait: Option<u64> = None;
        for (&checked, decision) in consultation.checked().iter().zip(&decisions) {
            let policy = &*self.policies[checked.policy];
            fields.add(policy, decision);
            if decision.allowed {
                continue;
            }
            match refusal(policy, decision, waited) {
                Refusal::Ignore => {}
                Refusal::Wait(nanos) => wait = Some(wait.unwrap_or(0).max(nanos)),
                Refusal::Refuse => {
                    remote.remember_refusal(checked, now, decision.retry_after);
                    return self.over_quota(policy, decision, fields);
                }
            }
        }
        if let Some(wait) = wait {
            return Verdict::Wait(Duration::from_nanos(wait));
        }
        for (checked, decision) in consultation.checked().iter().zip(&decisions) {
            if decision.allowed {
                self.policies[checked.policy]
                    .metrics()
                    .admitted
                    .increment(1);
            }
        }
        Verdict::Admit(fields.into_box())
    }

    /// The refusal for a policy that could not decide: no key, too costly, no room. A dry
    /// run reports it and lets the request by (`None`).
    pub(crate) fn unevaluated(
        &self,
        policy: &dyn Limit,
        evaluation: Evaluation,
    ) -> Option<Verdict> {
        if policy.mode() == Mode::DryRun {
            policy.metrics().dry_run_rejected.increment(1);
            return None;
        }
        let rejection = match evaluation {
            Evaluation::Skip | Evaluation::Decided(_) => return None,
            Evaluation::NoKey(error) => Rejection::from(&error),
            Evaluation::TooCostly { cost, max } => {
                let detail = format!(
                    "this request costs {cost} units and the `{}` limit never admits more than \
                     {max} at once; send smaller requests",
                    policy.name()
                );
                Rejection::new(Reason::CostExceedsQuota, detail)
            }
            Evaluation::Full => Rejection::new(
                Reason::Overloaded,
                "too many clients are being rate limited at once; try again shortly",
            )
            .with_retry_after(policy.sweep_interval()),
        };
        policy.metrics().rejected.increment(1);
        Some(Verdict::Reject(Box::new(
            rejection.into_response(&*self.renderer),
        )))
    }

    /// The 429 for a request over `policy`'s quota, with the header fields so far.
    pub(crate) fn over_quota(
        &self,
        policy: &dyn Limit,
        decision: &Decision,
        fields: Fields,
    ) -> Verdict {
        policy.metrics().rejected.increment(1);
        tracing::debug!(target: "floodgate::ratelimit", policy = policy.name(), retry_after_ns = decision.retry_after, "refused");
        let detail = format!(
            "rate limit `{}` exceeded: {}",
            policy.name(),
            policy.configured().quota
        );
        let rejection = Rejection::new(Reason::RateLimited, detail)
            .with_retry_after(Duration::from_nanos(decision.retry_after));
        let mut response = rejection.into_response(&*self.renderer);
        fields.apply(response.headers_mut());
        Verdict::Reject(Box::new(response))
    }

    fn refund(&self, request: &RequestHead<'_>, now: u64, charged: u64) {
        for (index, policy) in self.policies.iter().enumerate() {
            if charged & (1 << index) != 0 {
                policy.refund(request, now);
            }
        }
    }
}

/// What `policy`'s refusal `decision` means, for a request held `waited` so far.
fn refusal(policy: &dyn Limit, decision: &Decision, waited: Duration) -> Refusal {
    match policy.mode() {
        Mode::DryRun => {
            policy.metrics().dry_run_rejected.increment(1);
            tracing::debug!(target: "floodgate::ratelimit", policy = policy.name(), "dry run: would refuse");
            Refusal::Ignore
        }
        Mode::Delay { max_wait }
            if waited + Duration::from_nanos(decision.retry_after) <= max_wait =>
        {
            if waited.is_zero() {
                policy.metrics().delayed.increment(1);
            }
            Refusal::Wait(decision.retry_after)
        }
        Mode::Reject | Mode::Delay { .. } => Refusal::Refuse,
    }
}

/// The rate-limit header fields of one response, built as policies are checked.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    /// `RateLimit-Policy`: one item per policy, joined with `, `.
    policy: Option<HeaderValue>,
    /// `RateLimit`: one item per policy, joined with `, `.
    ratelimit: String,
    /// `(limit, remaining, reset seconds)` of the legacy policy with the fewest remaining; on
    /// a tie the later one, so a refusal describes the policy that refused.
    legacy: Option<(u32, u64, u64)>,
}

impl Fields {
    pub(crate) fn add(&mut self, policy: &dyn Limit, decision: &Decision) {
        let style = policy.header_style();
        if !style.draft() && !style.legacy() {
            return;
        }
        let configured = policy.configured();
        let reset = seconds_rounded_up(decision.reset_after);
        if style.draft() {
            self.policy = Some(match self.policy.take() {
                None => configured.policy_item.clone(),
                Some(items) => {
                    let joined =
                        [items.as_bytes(), b", ", configured.policy_item.as_bytes()].concat();
                    HeaderValue::from_bytes(&joined).unwrap_or(items)
                }
            });
            if !self.ratelimit.is_empty() {
                self.ratelimit.push_str(", ");
            }
            let _ = write!(
                self.ratelimit,
                "\"{}\";r={};t={reset}",
                policy.name(),
                decision.remaining.units()
            );
        }
        if style.legacy() {
            let remaining = decision.remaining.units();
            if self.legacy.is_none_or(|(_, least, _)| remaining <= least) {
                self.legacy = Some((configured.quota.count(), remaining, reset));
            }
        }
    }

    pub(crate) fn into_box(self) -> Option<Box<Fields>> {
        (self.policy.is_some() || self.legacy.is_some()).then(|| Box::new(self))
    }

    /// Adds the fields to a response's headers.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        if let Some(policy) = self.policy {
            headers.insert(RATELIMIT_POLICY.clone(), policy);
            // Policy names are tokens (checked when the layer is built): visible ASCII.
            if let Ok(ratelimit) = HeaderValue::try_from(self.ratelimit) {
                headers.insert(RATELIMIT.clone(), ratelimit);
            }
        }
        if let Some((limit, remaining, reset)) = self.legacy {
            headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(limit));
            headers.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from(remaining));
            headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(reset));
        }
    }
}
