//! Loadgen: the two load tests of the `FastAPI` tutorial, without `wrk` or `hey`.
//!
//! ```sh
//! cargo run --release --example items_service                      # in one terminal
//! cargo run --release --example loadgen                            # get, then post
//! cargo run --release --example loadgen -- --workload get --duration 10
//! cargo run --release --example loadgen -- --workload post --requests 1000 --concurrency 100
//! cargo run --release --example loadgen -- --header 'x-api-key: secret'
//! ```
//!
//! Two workloads against `{url}/items`:
//! - `get` is `wrk -t10 -c100 -d30s http://localhost:8000/items`: `--connections` workers,
//!   each sending `GET /items` one after another over a kept-alive connection until
//!   `--duration` seconds have passed. The tokio runtime uses one thread per core where
//!   `wrk -t` picks the thread count.
//! - `post` is `hey -n 1000 -c 100 -m POST`: exactly `--requests` `POST /items`, spread
//!   evenly over `--concurrency` workers, each with a JSON item of its own name.
//!
//! For each workload it prints the requests sent, the time taken, completed responses per
//! second, the p50, p90, p99 and max latency of the completed responses (body read to the
//! end), the status codes, the connection errors and timeouts, and (`get` only) the
//! requests in flight when the time ran out, normally one per connection, which wrk drops
//! without a word.
//!
//! It only talks to loopback (`127.0.0.1`, `::1`, `localhost`) unless given
//! `--allow-remote`, speaks plain HTTP/1.1, gives every request `--timeout` seconds, and
//! stops by itself. Every flag can also be set from the environment (`LOADGEN_URL`, ...).

use std::collections::BTreeMap;
use std::iter::StepBy;
use std::net::IpAddr;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{CommandFactory, Parser, ValueEnum};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

/// The longest `--duration`, so a typo cannot keep a server busy for hours.
const MAX_DURATION_SECS: u64 = 300;
/// The longest `--timeout`; it bounds how long a `post` run can take.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Load-test the items service: wrk's GET test and hey's POST test."
)]
struct Args {
    /// Which test to run; `both` runs `get`, then `post`.
    #[arg(long, value_enum, default_value_t = Workload::Both, env = "LOADGEN_WORKLOAD")]
    workload: Workload,
    /// Base URL of the service; requests go to `{url}/items`. Only `http://` is supported.
    #[arg(long, default_value = "http://127.0.0.1:8000", env = "LOADGEN_URL")]
    url: String,
    /// `get`: concurrent workers, each on its own kept-alive connection (wrk's `-c`).
    #[arg(long, default_value_t = 100, env = "LOADGEN_CONNECTIONS",
          value_parser = clap::value_parser!(u16).range(1..))]
    connections: u16,
    /// `get`: seconds to run (wrk's `-d`), at most 300.
    #[arg(long, default_value_t = 10, env = "LOADGEN_DURATION",
          value_parser = clap::value_parser!(u64).range(1..=MAX_DURATION_SECS))]
    duration: u64,
    /// `post`: requests to send in all (hey's `-n`).
    #[arg(long, default_value_t = 1000, env = "LOADGEN_REQUESTS",
          value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,
    /// `post`: concurrent workers (hey's `-c`).
    #[arg(long, default_value_t = 100, env = "LOADGEN_CONCURRENCY",
          value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Seconds each request may take, body included, before it counts as a timeout.
    #[arg(long, default_value = "5", env = "LOADGEN_TIMEOUT", value_parser = parse_timeout)]
    timeout: Duration,
    /// A header added to every request, as `name: value`; repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE", env = "LOADGEN_HEADER",
          value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Allow a URL whose host is not loopback.
    #[arg(long, env = "LOADGEN_ALLOW_REMOTE")]
    allow_remote: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Get,
    Post,
    Both,
}

fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not `name: value`"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|err| format!("bad header name in `{text}`: {err}"))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|err| format!("bad header value in `{text}`: {err}"))?;
    Ok((name, value))
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    match Duration::try_from_secs_f64(seconds) {
        Ok(timeout) if !timeout.is_zero() && timeout <= MAX_TIMEOUT => Ok(timeout),
        _ => Err(format!(
            "the timeout must be more than 0 and at most {} s",
            MAX_TIMEOUT.as_secs()
        )),
    }
}

/// `{url}/items`, once the URL is known to be plain HTTP to loopback (or remote is allowed).
fn items_uri(url: &str, allow_remote: bool) -> Result<Uri, String> {
    let base: Uri = url
        .parse()
        .map_err(|err| format!("`{url}` is not a URL: {err}"))?;
    match base.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err("https is not supported: loadgen speaks plain http:// only".into());
        }
        _ => return Err(format!("`{url}` must start with http://")),
    }
    let (Some(host), Some(authority)) = (base.host(), base.authority()) else {
        return Err(format!("`{url}` has no host"));
    };
    // `Uri::host` keeps the brackets around an IPv6 address.
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare_host.eq_ignore_ascii_case("localhost")
        || bare_host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback && !allow_remote {
        return Err(format!(
            "`{host}` is not loopback; pass --allow-remote to load-test another machine"
        ));
    }
    let target = format!(
        "http://{authority}{}/items",
        base.path().trim_end_matches('/')
    );
    target
        .parse()
        .map_err(|err| format!("`{target}` is not a URL: {err}"))
}

/// What every request of a run shares.
#[derive(Debug, Clone)]
struct Target {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    headers: HeaderMap,
    timeout: Duration,
}

/// What one worker saw, merged into one per workload at the end.
#[derive(Debug, Default)]
struct Report {
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, u64>,
    body_bytes: u64,
    connection_errors: u64,
    timeouts: u64,
    /// `get` only: requests still in flight when the run ended, abandoned as wrk does.
    in_flight_at_end: u64,
}

impl Report {
    fn sent(&self) -> u64 {
        self.latencies.len() as u64 + self.connection_errors + self.timeouts + self.in_flight_at_end
    }

    fn merge(&mut self, other: Report) {
        self.latencies.extend(other.latencies);
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.body_bytes += other.body_bytes;
        self.connection_errors += other.connection_errors;
        self.timeouts += other.timeouts;
        self.in_flight_at_end += other.in_flight_at_end;
    }
}

/// Sends one request, reads its body to the end and records the outcome.
async fn send(target: &Target, method: Method, body: Bytes, report: &mut Report) {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = target.uri.clone();
    *request.headers_mut() = target.headers.clone();
    let started = Instant::now();
    let exchange = async {
        let response = target.client.request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body.len()))
    };
    match tokio::time::timeout(target.timeout, exchange).await {
        Ok(Ok((status, body_len))) => {
            report.latencies.push(started.elapsed());
            *report.statuses.entry(status).or_default() += 1;
            report.body_bytes += body_len as u64;
        }
        // Refused, reset or closed mid-body: the connection failed, not the server's answer.
        Ok(Err(_)) => report.connection_errors += 1,
        Err(_) => report.timeouts += 1,
    }
}

/// wrk's test: each worker sends GETs back to back until the run's end, when it drops the
/// request in flight, so the run lasts `--duration` even against a stalled server.
async fn get_worker(target: Target, end: Instant) -> Report {
    let mut report = Report::default();
    while Instant::now() < end {
        let request = send(&target, Method::GET, Bytes::new(), &mut report);
        if tokio::time::timeout_at(end, request).await.is_err() {
            report.in_flight_at_end += 1;
        }
    }
    report
}

/// hey's test: each worker sends one POST for each of its `indexes`, one after another.
async fn post_worker(target: Target, indexes: StepBy<Range<u32>>, run_id: u128) -> Report {
    let mut report = Report::default();
    for index in indexes {
        let item = serde_json::json!({
            "name": format!("loadgen-{run_id}-{index}"),
            "description": "created by the loadgen example",
            "price": 1.5,
        });
        let body = Bytes::from(item.to_string());
        send(&target, Method::POST, body, &mut report).await;
    }
    report
}

/// Nearest-rank percentile of `sorted` (ascending): the smallest value with at least
/// `percent`% of the values at or below it. `None` when there are no values.
fn percentile(sorted: &[Duration], percent: usize) -> Option<Duration> {
    let rank = (percent.min(100) * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

fn milliseconds(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "-".into(),
        |d| format!("{:.2}", d.as_secs_f64() * 1000.0),
    )
}

#[allow(
    clippy::cast_precision_loss,
    reason = "a printed rate over counts far below 2^52"
)]
fn print_report(title: &str, mut report: Report, elapsed: Duration) {
    report.latencies.sort_unstable();
    let latency = |percent| milliseconds(percentile(&report.latencies, percent));
    let rate = report.latencies.len() as f64 / elapsed.as_secs_f64();
    let rows = [
        ("requests sent", report.sent().to_string()),
        ("responses", report.latencies.len().to_string()),
        ("duration (s)", format!("{:.2}", elapsed.as_secs_f64())),
        ("requests/s", format!("{rate:.2}")),
        ("latency p50 (ms)", latency(50)),
        ("latency p90 (ms)", latency(90)),
        ("latency p99 (ms)", latency(99)),
        ("latency max (ms)", latency(100)),
        ("body bytes", report.body_bytes.to_string()),
        ("connection errors", report.connection_errors.to_string()),
        ("timeouts", report.timeouts.to_string()),
        ("in flight at end", report.in_flight_at_end.to_string()),
    ];
    println!("{title}");
    for (label, value) in rows {
        println!("  {label:<20}{value:>12}");
    }
    println!("  status codes");
    if report.statuses.is_empty() {
        println!("    (none)");
    }
    for (status, count) in &report.statuses {
        println!("    {status:<18}{count:>12}");
    }
    println!();
}

/// Runs the workers to completion and merges what they saw.
async fn run(
    workers: Vec<tokio::task::JoinHandle<Report>>,
) -> Result<(Report, Duration), tokio::task::JoinError> {
    let started = Instant::now();
    let mut total = Report::default();
    for worker in workers {
        total.merge(worker.await?);
    }
    Ok((total, started.elapsed()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let uri = items_uri(&args.url, args.allow_remote).unwrap_or_else(|message| {
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, message)
            .exit()
    });

    // `HeaderMap` collects with `append`, so a repeated header is sent repeatedly.
    let headers: HeaderMap = args.headers.iter().cloned().collect();
    let mut connector = HttpConnector::new();
    // wrk and hey both disable Nagle's algorithm; small requests would otherwise wait.
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(usize::from(args.connections.max(args.concurrency)))
        .build(connector);
    let target = Target {
        client,
        uri,
        headers,
        timeout: args.timeout,
    };

    if matches!(args.workload, Workload::Get | Workload::Both) {
        let duration = Duration::from_secs(args.duration);
        let end = Instant::now() + duration;
        let workers = (0..args.connections)
            .map(|_| tokio::spawn(get_worker(target.clone(), end)))
            .collect();
        let (report, elapsed) = run(workers).await?;
        let title = format!(
            "get: GET {}, {} connections, {} s",
            target.uri, args.connections, args.duration
        );
        print_report(&title, report, elapsed);
    }

    if matches!(args.workload, Workload::Post | Workload::Both) {
        let mut post = target.clone();
        post.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // Names stay unique across runs against the same service, too.
        let run_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis());
        // Worker `first` sends requests `first`, `first + concurrency`, ...: `--requests` in all.
        let workers = u32::from(args.concurrency).min(args.requests);
        let indexes = |first| (first..args.requests).step_by(usize::from(args.concurrency));
        let handles = (0..workers)
            .map(|first| tokio::spawn(post_worker(post.clone(), indexes(first), run_id)))
            .collect();
        let (report, elapsed) = run(handles).await?;
        let title = format!(
            "post: POST {}, {} requests, {workers} workers",
            post.uri, args.requests
        );
        print_report(&title, report, elapsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().copied().map(Duration::from_millis).collect()
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let sorted = millis(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&sorted, 50), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&sorted, 90), Some(Duration::from_millis(9)));
        assert_eq!(percentile(&sorted, 99), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&sorted, 100), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&sorted, 0), Some(Duration::from_millis(1)));
    }

    #[test]
    fn percentile_of_one_value_is_that_value_and_of_none_is_none() {
        assert_eq!(
            percentile(&millis(&[7]), 99),
            Some(Duration::from_millis(7))
        );
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn only_plain_http_to_loopback_is_accepted_by_default() {
        for (url, items) in [
            ("http://127.0.0.1:8000", "http://127.0.0.1:8000/items"),
            ("http://[::1]:8000/", "http://[::1]:8000/items"),
            ("http://localhost/api", "http://localhost/api/items"),
        ] {
            assert_eq!(
                items_uri(url, false).map(|uri| uri.to_string()),
                Ok(items.into())
            );
        }
        assert!(items_uri("http://example.com", false).is_err());
        assert!(items_uri("https://127.0.0.1", false).is_err());
        assert!(items_uri("http://example.com", true).is_ok());
    }
}
