//! What the service tells its operators: Prometheus metrics (floodgate's, plus a count and
//! a latency histogram of every request), tracing spans with the request id, and the
//! response sent when a handler panics.

use std::any::Any;
use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::time::Instant;

const REQUESTS_TOTAL: &str = "http_requests_total";
const REQUEST_DURATION: &str = "http_request_duration_seconds";
/// Histogram buckets from 100 µs to 10 s: a cached GET takes well under a millisecond, a
/// request that waited in the queue or timed out takes seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process's metrics recorder, rendered by `GET /metrics`.
#[derive(Debug, Clone)]
pub(crate) struct Telemetry {
    handle: PrometheusHandle,
}

impl Telemetry {
    /// Installs the Prometheus recorder as the process's `metrics` recorder, the first time;
    /// later calls (several apps in one test process) share it.
    pub(crate) fn install() -> Result<Self, String> {
        static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
        HANDLE
            .get_or_init(|| install_recorder().map_err(|error| error.to_string()))
            .clone()
            .map(|handle| Self { handle })
    }

    /// Every metric, in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        self.handle.render()
    }
}

fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_owned()), DURATION_BUCKETS)?
        .install_recorder()?;
    floodgate::metrics::describe();
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "HTTP requests answered, by route and status."
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from a request's arrival to its response head, by route."
    );
    Ok(handle)
}

/// Counts each request and records its latency, labelled by method, matched route (never
/// the raw path, whose ids would make a series per item) and status.
pub(crate) async fn record(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_str().to_owned();
    metrics::histogram!(REQUEST_DURATION, "method" => method.clone(), "route" => route.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!(REQUESTS_TOTAL, "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// The tracing span of a request: method, path and the id `SetRequestIdLayer` gave it.
pub(crate) fn span_for(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", method = %request.method(), path = request.uri().path(), request_id)
}

/// A handler panicked: the client gets a 500 problem; the panic message goes only to the
/// log, since it may hold internals.
#[allow(
    clippy::needless_pass_by_value,
    reason = "tower-http's `ResponseForPanic` hands the panic over by value"
)]
pub(crate) fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(not a string)");
    tracing::error!(panic = message, "a handler panicked");
    super::problem::problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The server failed to answer this request.".to_owned(),
        &[],
    )
}
