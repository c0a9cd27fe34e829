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
use crate::limit::{Evaluation, Limit, seconds_rounded_up};
use crate::policy::Mode;

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The policies of one layer, with the clock and the rejection body they share.
pub(crate) struct Limiter {
    pub(crate) policies: Box<[Arc<dyn Limit>]>,
    pub(crate) clock: Clock,
    pub(crate) renderer: Box<dyn RenderRejection>,
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
}

impl Limiter {
    /// Checks `request` against every policy; `waited` is how long it has been held already.
    ///
    /// A request is admitted only if every policy that applies admits it; if one refuses, the
    /// policies that had admitted it get their charge back, so refused work costs nothing.
    pub(crate) fn check(&self, request: &RequestHead<'_>, waited: Duration) -> Verdict {
        let now = self.clock.now_nanos();
        let mut charged = 0_u64;
        let mut fields = Fields::default();
        let mut wait: Option<u64> = None;
        for (index, policy) in self.policies.iter().enumerate() {
            let decision = match policy.evaluate(request, now) {
                Evaluation::Skip => continue,
                Evaluation::Decided(decision) => decision,
                Evaluation::NoKey(error) if policy.mode() != Mode::DryRun => {
                    self.refund(request, now, charged);
                    policy.metrics().rejected.increment(1);
                    return Verdict::Reject(Box::new(
                        Rejection::from(&error).into_response(&*self.renderer),
                    ));
                }
                Evaluation::TooCostly { cost, max } if policy.mode() != Mode::DryRun => {
                    self.refund(request, now, charged);
                    policy.metrics().rejected.increment(1);
                    let detail = format!(
                        "this request costs {cost} units and the `{}` limit never admits more than \
                         {max} at once; send smaller requests",
                        policy.name()
                    );
                    let rejection = Rejection::new(Reason::CostExceedsQuota, detail);
                    return Verdict::Reject(Box::new(rejection.into_response(&*self.renderer)));
                }
                Evaluation::Full if policy.mode() != Mode::DryRun => {
                    self.refund(request, now, charged);
                    policy.metrics().rejected.increment(1);
                    let rejection = Rejection::new(
                        Reason::Overloaded,
                        "too many clients are being rate limited at once; try again shortly",
                    )
                    .with_retry_after(policy.sweep_interval());
                    return Verdict::Reject(Box::new(rejection.into_response(&*self.renderer)));
                }
                // A dry run only reports: no key, too costly or no room, it lets the request by.
                Evaluation::NoKey(_) | Evaluation::TooCostly { .. } | Evaluation::Full => {
                    policy.metrics().dry_run_rejected.increment(1);
                    continue;
                }
            };
            fields.add(&**policy, &decision);
            if decision.allowed {
                charged |= 1 << index;
                continue;
            }
            match policy.mode() {
                Mode::DryRun => {
                    policy.metrics().dry_run_rejected.increment(1);
                    tracing::debug!(target: "floodgate::ratelimit", policy = policy.name(), "dry run: would refuse");
                }
                Mode::Delay { max_wait }
                    if waited + Duration::from_nanos(decision.retry_after) <= max_wait =>
                {
                    if waited.is_zero() {
                        policy.metrics().delayed.increment(1);
                    }
                    wait = Some(wait.unwrap_or(0).max(decision.retry_after));
                }
                Mode::Reject | Mode::Delay { .. } => {
                    self.refund(request, now, charged);
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
                    return Verdict::Reject(Box::new(response));
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

    fn refund(&self, request: &RequestHead<'_>, now: u64, charged: u64) {
        for (index, policy) in self.policies.iter().enumerate() {
            if charged & (1 << index) != 0 {
                policy.refund(request, now);
            }
        }
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
    fn add(&mut self, policy: &dyn Limit, decision: &Decision) {
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
                decision.remaining
            );
        }
        if style.legacy()
            && self
                .legacy
                .is_none_or(|(_, remaining, _)| decision.remaining <= remaining)
        {
            self.legacy = Some((configured.quota.count(), decision.remaining, reset));
        }
    }

    fn into_box(self) -> Option<Box<Fields>> {
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
