//! The name of every metric floodgate emits, and the conventions they follow.
//!
//! Metrics go through the [`metrics`] facade crate, so they reach whichever exporter the
//! application installs (Prometheus, StatsD, …) and cost next to nothing without one.
//!
//! - A layer's metrics are named `floodgate_<layer>_<what>`; the few every layer shares
//!   (refusals, key errors) are `floodgate_<what>`. Counters end in `_total`.
//! - Labels are low-cardinality: a policy name, a reason, an error kind. Never a raw key (a
//!   client address or an API key), which would make one time series per client.
//! - Each decision is also a `tracing` event at debug level, under the target
//!   `floodgate::<layer>`.
//!
//! Call [`describe`] once after installing a recorder to give every metric its help text.
//!
//! # Example
//!
//! ```
//! use floodgate_core::metrics::{ALL, REJECTIONS_TOTAL};
//!
//! assert_eq!(REJECTIONS_TOTAL.name, "floodgate_rejections_total");
//! assert!(ALL.iter().all(|metric| metric.name.starts_with("floodgate_")));
//! ```

use crate::key::KeyError;
use crate::rejection::Rejection;

/// A metric's name, kind, labels and help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The name it is emitted under.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The label keys it carries.
    pub labels: &'static [&'static str],
    /// What it counts, for the exporter's help text.
    pub help: &'static str,
}

/// The kind of a [`Metric`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// A monotonically increasing count.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution of observed values.
    Histogram,
}

/// Label key: why a request was refused ([`Reason::as_str`](crate::rejection::Reason::as_str)).
pub const LABEL_REASON: &str = "reason";
/// Label key: the name of the policy (rate limit) a metric is about.
pub const LABEL_POLICY: &str = "policy";
/// Label key: what a layer did with a request or response.
pub const LABEL_OUTCOME: &str = "outcome";
/// Label key: what a key extractor could not find ([`KeyError`] kind).
pub const LABEL_ERROR: &str = "error";

/// Requests refused by any floodgate layer, by reason.
pub const REJECTIONS_TOTAL: Metric = Metric {
    name: "floodgate_rejections_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_REASON],
    help: "Requests refused by a floodgate layer, by reason.",
};

/// Requests whose key could not be extracted, by what was missing.
pub const KEY_ERRORS_TOTAL: Metric = Metric {
    name: "floodgate_key_errors_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_ERROR],
    help: "Requests whose rate-limit or concurrency key could not be read, by what was missing.",
};

/// Requests a rate-limit policy admitted.
pub const RATELIMIT_ADMITTED_TOTAL: Metric = Metric {
    name: "floodgate_ratelimit_admitted_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_POLICY],
    help: "Requests a rate-limit policy admitted.",
};

/// Requests a rate-limit policy refused (or delayed past its maximum wait).
pub const RATELIMIT_REJECTED_TOTAL: Metric = Metric {
    name: "floodgate_ratelimit_rejected_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_POLICY],
    help: "Requests a rate-limit policy refused.",
};

/// Requests a dry-run policy would have refused, and let through.
pub const RATELIMIT_DRY_RUN_REJECTED_TOTAL: Metric = Metric {
    name: "floodgate_ratelimit_dry_run_rejected_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_POLICY],
    help: "Requests a dry-run rate-limit policy would have refused, and let through.",
};

/// Requests a delay-mode policy held back until they fit the quota.
pub const RATELIMIT_DELAYED_TOTAL: Metric = Metric {
    name: "floodgate_ratelimit_delayed_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_POLICY],
    help: "Requests a delay-mode rate-limit policy held back until they fit the quota.",
};

/// New keys that found the policy's key table full (shared the overflow bucket, or were
/// refused).
pub const RATELIMIT_OVERFLOW_TOTAL: Metric = Metric {
    name: "floodgate_ratelimit_overflow_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_POLICY],
    help: "Requests whose key found the rate-limit key table full of active keys.",
};

/// Keys dropped from a policy's table because their state was fresh again.
pub const RATELIMIT_SWEPT_KEYS_TOTAL: Metric = Metric {
    name: "floodgate_ratelimit_swept_keys_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_POLICY],
    help: "Rate-limit keys dropped because their state was back to fresh.",
};

/// Keys a policy tracks now.
pub const RATELIMIT_TRACKED_KEYS: Metric = Metric {
    name: "floodgate_ratelimit_tracked_keys",
    kind: MetricKind::Gauge,
    labels: &[LABEL_POLICY],
    help: "Keys a rate-limit policy tracks.",
};

/// Requests whose rate-limit store (Redis) failed to decide in time, by what the layer did:
/// `fail_open` (admitted) or `fail_closed` (refused with 503).
pub const RATELIMIT_STORE_ERRORS_TOTAL: Metric = Metric {
    name: "floodgate_ratelimit_store_errors_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_OUTCOME],
    help: "Rate-limit decisions the shared store failed to make in time, by outcome.",
};

/// Requests refused without asking the store, because the store had refused the same key
/// moments before and its retry time has not passed.
pub const RATELIMIT_LOCAL_REFUSALS_TOTAL: Metric = Metric {
    name: "floodgate_ratelimit_local_refusals_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_POLICY],
    help: "Requests refused locally while the store's last refusal of their key holds.",
};

/// Responses the compression layer saw, by outcome: `one_shot` and `stream` (compressed,
/// by path), `identity` (eligible, but the client wanted no coding we offer), `skipped`
/// (not worth compressing, or must not be).
pub const COMPRESSION_RESPONSES_TOTAL: Metric = Metric {
    name: "floodgate_compression_responses_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_OUTCOME],
    help: "Responses the compression layer saw, by outcome.",
};

/// Encoded request bodies the decompression layer saw, by outcome: `decoded`,
/// `unsupported` (415), `too_large` (413 on the declared length).
pub const DECOMPRESSION_REQUESTS_TOTAL: Metric = Metric {
    name: "floodgate_decompression_requests_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_OUTCOME],
    help: "Encoded request bodies the decompression layer saw, by outcome.",
};

/// Requests the response cache answered from a stored response (fresh, stale, or a 304
/// built from one).
pub const CACHE_HITS_TOTAL: Metric = Metric {
    name: "floodgate_cache_hits_total",
    kind: MetricKind::Counter,
    labels: &[],
    help: "Requests the response cache answered from a stored response.",
};

/// Cacheable requests the response cache forwarded, by `outcome`: `stored` or
/// `not_stored`.
pub const CACHE_MISSES_TOTAL: Metric = Metric {
    name: "floodgate_cache_misses_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_OUTCOME],
    help: "Cacheable requests the response cache forwarded, by whether it stored the response.",
};

/// Stale responses served, by `outcome`: `stale_while_revalidate` or `stale_if_error`.
pub const CACHE_STALE_TOTAL: Metric = Metric {
    name: "floodgate_cache_stale_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_OUTCOME],
    help: "Stale responses the response cache served, by why it could.",
};

/// Requests that waited for another request's identical miss instead of forwarding, by
/// `outcome`: `served` (from what it stored) or `forwarded` (it could not be used).
pub const CACHE_COALESCED_TOTAL: Metric = Metric {
    name: "floodgate_cache_coalesced_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_OUTCOME],
    help: "Requests that waited for an identical miss in flight, by what came of it.",
};

/// Bytes the response cache holds, by its weigher.
pub const CACHE_STORED_BYTES: Metric = Metric {
    name: "floodgate_cache_stored_bytes",
    kind: MetricKind::Gauge,
    labels: &[],
    help: "Bytes the response cache holds.",
};

/// Entries the response cache evicted to stay within its capacity.
pub const CACHE_EVICTIONS_TOTAL: Metric = Metric {
    name: "floodgate_cache_evictions_total",
    kind: MetricKind::Counter,
    labels: &[],
    help: "Entries the response cache evicted to stay within its capacity.",
};

/// Requests a concurrency limit refused, by reason (`queue_full`, `queue_timeout`).
pub const SHED_REJECTED_TOTAL: Metric = Metric {
    name: "floodgate_shed_rejected_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_REASON],
    help: "Requests a concurrency limit refused, by reason.",
};

/// Requests a concurrency limit admitted after waiting in its queue.
pub const SHED_QUEUED_TOTAL: Metric = Metric {
    name: "floodgate_shed_queued_total",
    kind: MetricKind::Counter,
    labels: &[],
    help: "Requests a concurrency limit admitted after waiting in its queue.",
};

/// Requests holding a slot of a concurrency limit (over every layer in the process).
pub const SHED_IN_FLIGHT: Metric = Metric {
    name: "floodgate_shed_in_flight",
    kind: MetricKind::Gauge,
    labels: &[],
    help: "Requests holding a concurrency-limit slot, until their response body ends.",
};

/// The current limit of an adaptive concurrency limit.
pub const SHED_LIMIT: Metric = Metric {
    name: "floodgate_shed_limit",
    kind: MetricKind::Gauge,
    labels: &[],
    help: "The current limit of an adaptive concurrency limit.",
};

/// Requests a load shedder saw, by `outcome`: `admitted`, `exempt`, `shed_in_flight` (over
/// its in-flight limit) or `shed_sojourn` (over the ceiling a standing queue set).
pub const SHED_LOAD_SHED_REQUESTS_TOTAL: Metric = Metric {
    name: "floodgate_shed_load_shed_requests_total",
    kind: MetricKind::Counter,
    labels: &[LABEL_OUTCOME],
    help: "Requests a load shedder saw, by whether it admitted or shed them and why.",
};

/// Requests a load shedder counts in flight (exempt ones are not counted).
pub const SHED_LOAD_SHED_IN_FLIGHT: Metric = Metric {
    name: "floodgate_shed_load_shed_in_flight",
    kind: MetricKind::Gauge,
    labels: &[],
    help: "Requests a load shedder counts in flight, until their response body ends.",
};

/// The in-flight ceiling a load shedder's sojourn signal sets; 0 while there is none.
pub const SHED_LOAD_SHED_CEILING: Metric = Metric {
    name: "floodgate_shed_load_shed_ceiling",
    kind: MetricKind::Gauge,
    labels: &[],
    help: "The in-flight ceiling a standing queue made a load shedder set; 0 while there is none.",
};

/// Every metric floodgate emits.
pub const ALL: &[Metric] = &[
    REJECTIONS_TOTAL,
    KEY_ERRORS_TOTAL,
    RATELIMIT_ADMITTED_TOTAL,
    RATELIMIT_REJECTED_TOTAL,
    RATELIMIT_DRY_RUN_REJECTED_TOTAL,
    RATELIMIT_DELAYED_TOTAL,
    RATELIMIT_OVERFLOW_TOTAL,
    RATELIMIT_SWEPT_KEYS_TOTAL,
    RATELIMIT_TRACKED_KEYS,
    RATELIMIT_STORE_ERRORS_TOTAL,
    RATELIMIT_LOCAL_REFUSALS_TOTAL,
    COMPRESSION_RESPONSES_TOTAL,
    DECOMPRESSION_REQUESTS_TOTAL,
    CACHE_HITS_TOTAL,
    CACHE_MISSES_TOTAL,
    CACHE_STALE_TOTAL,
    CACHE_COALESCED_TOTAL,
    CACHE_STORED_BYTES,
    CACHE_EVICTIONS_TOTAL,
    SHED_REJECTED_TOTAL,
    SHED_QUEUED_TOTAL,
    SHED_IN_FLIGHT,
    SHED_LIMIT,
    SHED_LOAD_SHED_REQUESTS_TOTAL,
    SHED_LOAD_SHED_IN_FLIGHT,
    SHED_LOAD_SHED_CEILING,
];

/// Registers the help text of every metric with the installed recorder.
pub fn describe() {
    for metric in ALL {
        match metric.kind {
            MetricKind::Counter => metrics::describe_counter!(metric.name, metric.help),
            MetricKind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            MetricKind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

/// Counts a refusal in [`REJECTIONS_TOTAL`] and logs it at debug level.
pub(crate) fn rejected(rejection: &Rejection) {
    let reason = rejection.reason().as_str();
    let status = rejection.status();
    tracing::debug!(target: "floodgate::rejection", reason, status = status.as_u16(), detail = rejection.detail(), "request refused");
    metrics::counter!(REJECTIONS_TOTAL.name, LABEL_REASON => reason).increment(1);
}

/// Counts a key extraction failure in [`KEY_ERRORS_TOTAL`] and logs it at debug level.
///
/// Layers call it wherever they meet a [`KeyError`], whatever they do with the request next.
pub fn key_error(error: &KeyError) {
    let kind = error.kind();
    tracing::debug!(target: "floodgate::key", error = kind, "request key unavailable: {error}");
    metrics::counter!(KEY_ERRORS_TOTAL.name, LABEL_ERROR => kind).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejection::{ProblemJson, Reason};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// Each counter as `name{label=value,…} count`, sorted.
    fn counters(recorder: &DebuggingRecorder) -> Vec<String> {
        let mut counters: Vec<String> = recorder
            .snapshotter()
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| {
                let DebugValue::Counter(count) = value else {
                    return None;
                };
                let key = key.key();
                let labels: Vec<String> = key
                    .labels()
                    .map(|label| format!("{}={}", label.key(), label.value()))
                    .collect();
                Some(format!("{}{{{}}} {count}", key.name(), labels.join(",")))
            })
            .collect();
        counters.sort();
        counters
    }

    #[test]
    fn rejections_and_key_errors_are_counted_with_low_cardinality_labels() {
        let recorder = DebuggingRecorder::new();
        metrics::with_local_recorder(&recorder, || {
            for _ in 0..2 {
                drop(Rejection::new(Reason::RateLimited, "slow down").into_response(&ProblemJson));
            }
            key_error(&KeyError::NoPeerAddress);
        });
        assert_eq!(
            counters(&recorder),
            [
                "floodgate_key_errors_total{error=no_peer_address} 1",
                "floodgate_rejections_total{reason=rate_limited} 2",
            ]
        );
    }

    #[test]
    fn every_name_follows_the_convention() {
        for metric in ALL {
            assert!(metric.name.starts_with("floodgate_"), "{}", metric.name);
            assert_eq!(
                metric.kind == MetricKind::Counter,
                metric.name.ends_with("_total"),
                "{}",
                metric.name
            );
        }
        let recorder = DebuggingRecorder::new();
        metrics::with_local_recorder(&recorder, describe);
    }
}
