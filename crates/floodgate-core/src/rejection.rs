//! The responses layers send when they refuse work.
//!
//! A layer describes a refusal as a [`Rejection`] (why, which status, how long to wait, extra
//! headers, a short message) and turns it into a response with a [`RenderRejection`], by
//! default [`ProblemJson`]: an RFC 9457 `application/problem+json` body. Status and headers
//! always come from the rejection, so a custom body cannot lose the `Retry-After` a client
//! needs. The rejection itself rides along in the response extensions, for an outer layer
//! or a test to inspect.
//!
//! # Example
//!
//! ```
//! use floodgate_core::rejection::{ProblemJson, Reason, Rejection};
//! use std::time::Duration;
//!
//! let rejection = Rejection::new(Reason::RateLimited, "10 requests per minute; slow down")
//!     .with_retry_after(Duration::from_millis(1_500));
//! let response = rejection.into_response(&ProblemJson);
//!
//! assert_eq!(response.status(), 429);
//! assert_eq!(response.headers()["retry-after"], "2"); // rounded up, never 0
//! assert_eq!(response.headers()["content-type"], "application/problem+json");
//! assert_eq!(
//!     response.body(),
//!     r#"{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"10 requests per minute; slow down"}"#
//! );
//! assert_eq!(response.extensions().get::<Rejection>().map(Rejection::reason), Some(Reason::RateLimited));
//! ```

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::key::KeyError;

/// Why a layer refused a request. Each layer adds the reasons it can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The key a limit needs could not be read from the request (see
    /// [`KeyError`]).
    KeyUnavailable,
    /// A rate limit's quota is used up for now (429).
    RateLimited,
    /// The service is over capacity (503).
    Overloaded,
    /// The request costs more than a rate limit ever admits at once (400): it can never
    /// succeed as sent, so retrying is pointless.
    CostExceedsQuota,
    /// The request body's `Content-Encoding` is not one the server decodes (415).
    UnsupportedEncoding,
    /// The request body is larger than the server accepts (413).
    PayloadTooLarge,
    /// Every slot is taken and the wait queue is full (503).
    QueueFull,
    /// The request waited in the queue for as long as it may (503).
    QueueTimeout,
    /// A rate limit's shared store (Redis) could not decide, and the limit fails closed
    /// (503).
    StoreUnavailable,
}

impl Reason {
    /// The status a rejection for this reason carries unless set otherwise.
    pub fn default_status(self) -> StatusCode {
        match self {
            Reason::KeyUnavailable | Reason::CostExceedsQuota => StatusCode::BAD_REQUEST,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::Overloaded
            | Reason::QueueFull
            | Reason::QueueTimeout
            | Reason::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reason::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reason::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// A stable `snake_case` name, used as the `reason` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::KeyUnavailable => "key_unavailable",
            Reason::RateLimited => "rate_limited",
            Reason::Overloaded => "overloaded",
            Reason::CostExceedsQuota => "cost_exceeds_quota",
            Reason::UnsupportedEncoding => "unsupported_encoding",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::QueueFull => "queue_full",
            Reason::QueueTimeout => "queue_timeout",
            Reason::StoreUnavailable => "store_unavailable",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: why, with which status, when to retry, and a short message for the client.
#[derive(Debug, Clone)]
pub struct Rejection {
    reason: Reason,
    status: StatusCode,
    detail: Cow<'static, str>,
    retry_after: Option<Duration>,
    headers: HeaderMap,
}

impl Rejection {
    /// A rejection for `reason` with its default status and a short human `detail` ("10
    /// requests per minute; slow down").
    pub fn new(reason: Reason, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason,
            status: reason.default_status(),
            detail: detail.into(),
            retry_after: None,
            headers: HeaderMap::new(),
        }
    }

    /// Uses `status` instead of the reason's default.
    #[must_use]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Tells the client to retry after `wait`, sent as `Retry-After` in whole seconds.
    #[must_use]
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// Sets a header on the response (rate-limit fields, for instance), replacing any
    /// earlier value of that header.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Why the request was refused.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The short message for the client.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// How long the client should wait, if the layer knows.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The extra headers the response carries.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The response: status, `Retry-After`, the extra headers, the body `renderer` makes,
    /// and this rejection in the extensions. Counted in
    /// [`REJECTIONS_TOTAL`](crate::metrics::REJECTIONS_TOTAL).
    pub fn into_response(self, renderer: &dyn RenderRejection) -> Response<Bytes> {
        crate::metrics::rejected(&self);
        let (content_type, body) = renderer.render(&self);
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, content_type);
        if let Some(wait) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_seconds(wait)));
        }
        for (name, value) in &self.headers {
            headers.insert(name, value.clone());
        }
        response.extensions_mut().insert(self);
        response
    }
}

impl From<&KeyError> for Rejection {
    /// A 400 tells the client what its request lacks. A 500 says only that the server cannot
    /// identify clients: the operator's half of the message (how to configure the server)
    /// goes to the log through [`metrics::key_error`](crate::metrics::key_error), not to
    /// clients (RFC 9457 §5).
    fn from(error: &KeyError) -> Self {
        let status = error.status();
        let detail = if status.is_server_error() {
            Cow::Borrowed("the server cannot identify clients to apply its limits")
        } else {
            Cow::Owned(error.to_string())
        };
        Rejection::new(Reason::KeyUnavailable, detail).with_status(status)
    }
}

/// `Retry-After` for a wait: whole seconds rounded up, and at least 1, because a client told
/// 0 retries at once and is refused again.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let seconds = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    seconds.max(1)
}

/// Makes the body of a rejection response: its content type and bytes.
///
/// Implemented by [`ProblemJson`] (the default) and by any
/// `Fn(&Rejection) -> (HeaderValue, Bytes)` closure:
///
/// ```
/// use bytes::Bytes;
/// use floodgate_core::rejection::{Reason, Rejection};
/// use http::HeaderValue;
///
/// let plain = |rejection: &Rejection| {
///     (HeaderValue::from_static("text/plain"), Bytes::from(rejection.detail().to_owned()))
/// };
/// let response = Rejection::new(Reason::Overloaded, "busy, try again").into_response(&plain);
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.body(), "busy, try again");
/// ```
pub trait RenderRejection: Send + Sync + 'static {
    /// The `Content-Type` and body for `rejection`.
    fn render(&self, rejection: &Rejection) -> (HeaderValue, Bytes);
}

impl<F> RenderRejection for F
where
    F: Fn(&Rejection) -> (HeaderValue, Bytes) + Send + Sync + 'static,
{
    fn render(&self, rejection: &Rejection) -> (HeaderValue, Bytes) {
        self(rejection)
    }
}

/// An RFC 9457 problem details body: `type` `about:blank`, `title` the status's reason
/// phrase (as §4.2.1 asks for that type), `status`, and the rejection's `detail`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemJson;

impl RenderRejection for ProblemJson {
    fn render(&self, rejection: &Rejection) -> (HeaderValue, Bytes) {
        // Members in the order RFC 9457 §3.1 lists them; serde_json escapes the strings.
        let status = rejection.status();
        let title = serde_json::Value::from(status.canonical_reason().unwrap_or("Error"));
        let detail = serde_json::Value::from(rejection.detail());
        let problem = format!(
            r#"{{"type":"about:blank","title":{title},"status":{},"detail":{detail}}}"#,
            status.as_u16()
        );
        (
            HeaderValue::from_static("application/problem+json"),
            Bytes::from(problem),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let cases = [
            (Duration::ZERO, 1),
            (Duration::from_nanos(1), 1),
            (Duration::from_millis(999), 1),
            (Duration::from_secs(1), 1),
            (Duration::from_millis(1_001), 2),
            (Duration::from_secs(60), 60),
            (Duration::MAX, u64::MAX),
        ];
        for (wait, seconds) in cases {
            assert_eq!(retry_after_seconds(wait), seconds, "{wait:?}");
        }
    }

    #[test]
    fn problem_json_escapes_the_detail() {
        let rejection = Rejection::new(Reason::Overloaded, r#"a "quoted" \ detail"#);
        let response = rejection.into_response(&ProblemJson);
        let body: serde_json::Value =
            serde_json::from_slice(response.body()).expect("the body is JSON");
        assert_eq!(body["detail"], r#"a "quoted" \ detail"#);
        assert_eq!(body["title"], "Service Unavailable");
        assert_eq!(body["status"], 503);
    }

    #[test]
    fn status_and_headers_come_from_the_rejection_whatever_the_renderer() {
        let empty = |_: &Rejection| (HeaderValue::from_static("text/plain"), Bytes::new());
        let response = Rejection::new(Reason::RateLimited, "slow down")
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .with_retry_after(Duration::from_secs(3))
            .with_header(
                HeaderName::from_static("ratelimit"),
                HeaderValue::from_static("x"),
            )
            .into_response(&empty);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "3");
        assert_eq!(response.headers()["ratelimit"], "x");
        assert_eq!(response.headers()[CONTENT_TYPE], "text/plain");
    }

    #[test]
    fn key_errors_become_rejections_with_their_status_and_message() {
        let response = Rejection::from(&KeyError::NoPeerAddress).into_response(&ProblemJson);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(RETRY_AFTER).is_none());
        let body: serde_json::Value =
            serde_json::from_slice(response.body()).expect("the body is JSON");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            !detail.contains("connect_info"),
            "server internals leaked: {detail}"
        );
        let missing = KeyError::MissingHeader(HeaderName::from_static("x-api-key"));
        let response = Rejection::from(&missing).into_response(&ProblemJson);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value =
            serde_json::from_slice(response.body()).expect("the body is JSON");
        assert_eq!(body["detail"], "the request has no `x-api-key` header");
    }
}
