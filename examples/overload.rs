//! Overload: how much useful work a service still does when offered more than it can take.
//!
//! ```sh
//! cargo run --release --example overload --features full            # 3 s per load point
//! cargo run --release --example overload --features full -- 10      # 10 s per load point
//! cargo run --release --example overload --features full -- 3 adapt # rows whose name has "adapt"
//! cargo run --release --example overload --features full -- 3 "" cpu # CPU work instead
//! ```
//!
//! An axum server on 127.0.0.1 has a hidden capacity: 8 requests at a time, each taking
//! 10 ms of (asynchronous) work; with `cpu`, 2 at a time (the cores), each spinning a core
//! for 5 ms on tokio's blocking pool, which the load generator competes with. That is about 715 requests a second, since tokio's timer
//! makes a 10 ms sleep last about 11 ms; the program measures it first. The middleware is
//! not told the capacity, except where a row says so. An open-loop client sends requests
//! at a fixed rate, 0.5×, 1×, 2× and 4× capacity, one load point after the other on the
//! same server. It sends on schedule, whatever the server does, as real users arrive, and
//! times each request from when it was due. Each request has a 1 s deadline.
//!
//! For each protection it prints:
//! - goodput: 200s completed within the deadline, per second, and as a share of capacity;
//! - refusals per second;
//! - timeouts per second;
//! - p50 and p99 of the successful responses.
//!
//! Protections:
//! - none;
//! - tower's `LoadShed` + `ConcurrencyLimit(8)` through `HandleErrorLayer`, as axum users
//!   write it (`route_layer`), and wrapped around the whole app;
//! - floodgate's `ConcurrencyLimitLayer` at 8 and at 10, each with a queue of half its
//!   limit that waits at most 20 ms. Both are told the true capacity, which in practice is
//!   not known;
//! - floodgate's adaptive limits, which find it: AIMD (a request slower than 20 ms counts
//!   as dropped) and the gradient (defaults), both starting from a guess of 20, with the
//!   same queue (half the current limit, 20 ms); and the gradient again with adaptive LIFO
//!   (newest first once the oldest waiter has waited 5 ms);
//! - floodgate's `LoadShedLayer`, which queues nothing: a sojourn target of 15 ms (1.5×
//!   the service time, which, unlike capacity, a service owner knows) and a round
//!   `max_in_flight` of 64 as a backstop.
//!
//! Everything runs on this machine's loopback, bounded in time, and stops by itself.

// Rates, shares and percentile indexes are printed figures over counts far below 2^52.
#![allow(
    clippy::cast_precision_loss,
    reason = "printed figures over small counts"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::routing::get;
use bytes::Bytes;
use floodgate::shed::{Aimd, ConcurrencyLimitLayer, Gradient, LoadShedLayer};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceBuilder;

/// The hidden service: how many requests it works on at once, and how long each takes.
#[derive(Debug, Clone, Copy)]
struct Work {
    /// CPU work (a busy loop on tokio's blocking pool) rather than an asynchronous wait.
    cpu: bool,
    slots: usize,
    time: Duration,
}

/// The default: 8 at a time, 10 ms of waiting each (a database, another service).
const WAIT: Work = Work {
    cpu: false,
    slots: 8,
    time: Duration::from_millis(10),
};
/// `cpu`: 2 at a time (this machine's cores), 5 ms of computing each.
const CPU: Work = Work {
    cpu: true,
    slots: 2,
    time: Duration::from_millis(5),
};

/// Spins for `time`: work that holds a core.
fn burn(time: Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < time {
        std::hint::spin_loop();
    }
}
/// How long a client waits for an answer.
const DEADLINE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum Protection {
    None,
    /// tower's layers as `route_layer`, where axum users put them.
    TowerRouteLayer,
    /// tower's layers around the whole app, where they work.
    TowerOutside,
    /// floodgate's limit at the true capacity.
    Floodgate,
    /// floodgate's limit a quarter above it.
    FloodgateAbove,
    /// floodgate's adaptive limit, AIMD, starting from 20.
    FloodgateAimd,
    /// floodgate's adaptive limit, gradient, starting from 20.
    FloodgateGradient,
    /// The same with adaptive LIFO.
    FloodgateGradientLifo,
    /// floodgate's load shedder.
    FloodgateLoadShed,
}

impl Protection {
    fn name(self, work: Work) -> String {
        let (slots, above) = (work.slots, above(work.slots));
        match self {
            Protection::None => "none".into(),
            Protection::TowerRouteLayer => format!("tower shed+limit {slots}, route_layer"),
            Protection::TowerOutside => format!("tower shed+limit {slots}, around app"),
            Protection::Floodgate => format!("floodgate limit {slots} + queue"),
            Protection::FloodgateAbove => format!("floodgate limit {above} + queue"),
            Protection::FloodgateAimd => "floodgate AIMD + queue".into(),
            Protection::FloodgateGradient => "floodgate gradient + queue".into(),
            Protection::FloodgateGradientLifo => "floodgate gradient + LIFO queue".into(),
            Protection::FloodgateLoadShed => {
                format!("floodgate load shed, sojourn {:?}", work.time * 3 / 2)
            }
        }
    }
}

/// A limit a quarter above the true capacity (at least one more).
fn above(slots: usize) -> usize {
    slots + (slots / 4).max(1)
}

fn floodgate(
    limit: usize,
    work: Work,
) -> Result<ConcurrencyLimitLayer, floodgate::shed::ConfigError> {
    ConcurrencyLimitLayer::builder(limit)
        .max_queue((limit / 2).max(1))
        .max_queue_time(2 * work.time)
        .build()
}

/// The limit adaptive layers start from: a guess, as in practice.
const ADAPTIVE_START: usize = 20;

fn adaptive(
    algorithm: impl floodgate::shed::LimitAlgorithm,
    lifo: bool,
    work: Work,
) -> Result<ConcurrencyLimitLayer, floodgate::shed::ConfigError> {
    let builder = ConcurrencyLimitLayer::builder(ADAPTIVE_START)
        .adaptive(algorithm)
        .max_queue_time(2 * work.time);
    if lifo {
        builder.adaptive_lifo(work.time / 2).build()
    } else {
        builder.build()
    }
}

fn app(protection: Protection, work: Work) -> Result<Router, Box<dyn std::error::Error>> {
    let capacity = Arc::new(Semaphore::new(work.slots));
    let router = Router::new().route(
        "/work",
        get(move || {
            let capacity = Arc::clone(&capacity);
            async move {
                let _slot = capacity.acquire().await;
                if work.cpu {
                    let _ = tokio::task::spawn_blocking(move || burn(work.time)).await;
                } else {
                    tokio::time::sleep(work.time).await;
                }
                "done"
            }
        }),
    );
    Ok(match protection {
        Protection::None | Protection::TowerOutside => router,
        Protection::TowerRouteLayer => router.route_layer(tower_layers(work.slots)),
        Protection::Floodgate => router.route_layer(floodgate(work.slots, work)?),
        Protection::FloodgateAbove => router.route_layer(floodgate(above(work.slots), work)?),
        Protection::FloodgateAimd => router.route_layer(adaptive(
            Aimd::builder().latency_threshold(2 * work.time).build()?,
            false,
            work,
        )?),
        Protection::FloodgateGradient => {
            router.route_layer(adaptive(Gradient::new(), false, work)?)
        }
        Protection::FloodgateGradientLifo => {
            router.route_layer(adaptive(Gradient::new(), true, work)?)
        }
        Protection::FloodgateLoadShed => router.route_layer(
            LoadShedLayer::builder()
                .sojourn_target(work.time * 3 / 2)
                .max_in_flight(64)
                .build()?,
        ),
    })
}

/// tower's recipe: shed when the limit is not ready, and turn the error into a 503.
fn tower_layers(
    slots: usize,
) -> impl tower::Layer<
    axum::routing::Route,
    Service: tower::Service<
        axum::extract::Request,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
                 + Send
                 + Sync
                 + 'static,
> + Clone {
    ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            StatusCode::SERVICE_UNAVAILABLE
        }))
        .load_shed()
        .concurrency_limit(slots)
}

/// What one load point measured.
struct Outcome {
    offered: f64,
    ok: Vec<Duration>,
    refused: usize,
    failed: usize,
    seconds: f64,
}

async fn load(address: SocketAddr, rate: f64, seconds: f64) -> Outcome {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build_http();
    let uri: http::Uri = format!("http://{address}/work")
        .parse()
        .expect("a valid URI");
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a small positive count"
    )]
    let total = (rate * seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = tokio::task::JoinSet::new();
    for sent in 0..total {
        let due = start + interval.mul_f64(sent as f64);
        tokio::time::sleep_until(due).await;
        let (client, uri) = (client.clone(), uri.clone());
        tasks.spawn(async move {
            let request = Request::get(uri)
                .body(Empty::new())
                .expect("a valid request");
            let answer = tokio::time::timeout(DEADLINE, async {
                let response = client.request(request).await.ok()?;
                let status = response.status();
                response.into_body().collect().await.ok()?;
                Some(status)
            })
            .await;
            (answer.ok().flatten(), due.elapsed())
        });
    }
    let mut outcome = Outcome {
        offered: rate,
        ok: Vec::new(),
        refused: 0,
        failed: 0,
        seconds,
    };
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok((Some(StatusCode::OK), latency)) if latency <= DEADLINE => outcome.ok.push(latency),
            Ok((Some(StatusCode::SERVICE_UNAVAILABLE), _)) => outcome.refused += 1,
            _ => outcome.failed += 1,
        }
    }
    outcome.ok.sort();
    outcome
}

fn percentile(sorted: &[Duration], share: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "an index into the slice"
    )]
    let index = ((sorted.len() - 1) as f64 * share).round() as usize;
    sorted[index]
}

/// The service's true capacity, requests per second, measured as it runs here.
///
/// A 10 ms sleep takes longer (tokio's timer ticks in whole milliseconds), and CPU work
/// shares the cores with everything else, so both are measured rather than computed.
async fn calibrate(work: Work) -> f64 {
    let start = Instant::now();
    if work.cpu {
        // Every slot busy for a second, as under full load.
        let mut done = 0_u32;
        while start.elapsed() < Duration::from_secs(1) {
            let batch: Vec<_> = (0..work.slots)
                .map(|_| tokio::task::spawn_blocking(move || burn(work.time)))
                .collect();
            for task in batch {
                let _ = task.await;
                done += 1;
            }
        }
        f64::from(done) / start.elapsed().as_secs_f64()
    } else {
        for _ in 0..50 {
            tokio::time::sleep(work.time).await;
        }
        work.slots as f64 / (start.elapsed() / 50).as_secs_f64()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = std::env::args().nth(1).map_or(Ok(3.0), |arg| arg.parse())?;
    let only = std::env::args().nth(2).unwrap_or_default();
    let work = match std::env::args().nth(3).as_deref() {
        Some("cpu") => CPU,
        _ => WAIT,
    };
    let capacity = calibrate(work).await;
    println!(
        "{} work: capacity {capacity:.0}/s ({} at a time, {:?} each, measured); {seconds} s \
         per point; deadline {DEADLINE:?}",
        if work.cpu { "CPU" } else { "waiting" },
        work.slots,
        work.time,
    );
    println!(
        "{:<34} {:>5} {:>9} {:>14} {:>10} {:>10} {:>9} {:>9}",
        "protection", "load", "offered/s", "goodput/s", "refused/s", "failed/s", "p50", "p99"
    );
    let protections = [
        Protection::None,
        Protection::TowerRouteLayer,
        Protection::TowerOutside,
        Protection::Floodgate,
        Protection::FloodgateAbove,
        Protection::FloodgateAimd,
        Protection::FloodgateGradient,
        Protection::FloodgateGradientLifo,
        Protection::FloodgateLoadShed,
    ];
    for protection in protections {
        if !protection.name(work).contains(only.as_str()) {
            continue;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let app = app(protection, work)?;
        let server = if let Protection::TowerOutside = protection {
            let service = ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    StatusCode::SERVICE_UNAVAILABLE
                }))
                .load_shed()
                .concurrency_limit(work.slots)
                .service(app);
            tokio::spawn(
                axum::serve(
                    listener,
                    axum::ServiceExt::<axum::extract::Request>::into_make_service(service),
                )
                .into_future(),
            )
        } else {
            tokio::spawn(axum::serve(listener, app).into_future())
        };
        for factor in [0.5, 1.0, 2.0, 4.0] {
            let outcome = load(address, capacity * factor, seconds).await;
            let goodput = outcome.ok.len() as f64 / outcome.seconds;
            println!(
                "{:<34} {:>4.1}x {:>9.0} {:>8.0} ({:>3.0}%) {:>10.0} {:>10.0} {:>9.1?} {:>9.1?}",
                protection.name(work),
                factor,
                outcome.offered,
                goodput,
                100.0 * goodput / capacity,
                outcome.refused as f64 / outcome.seconds,
                outcome.failed as f64 / outcome.seconds,
                percentile(&outcome.ok, 0.5),
                percentile(&outcome.ok, 0.99),
            );
            // Let the last point's stragglers finish before the next starts.
            tokio::time::sleep(DEADLINE).await;
        }
        server.abort();
    }
    Ok(())
}
