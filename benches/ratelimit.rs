//! floodgate's rate limiter side by side with governor, the crate a Rust user picks today.
//!
//! `keyed`: one admitted check of an IPv4 key, against governor's `DefaultKeyedRateLimiter`
//! at the same quota and with the same key type. Each floodgate algorithm runs on its default
//! clock (tokio's, which reads `std::time::Instant` outside paused tests) and on
//! `Clock::counter()`, the CPU's counter through quanta, which is governor's default clock.
//! `governor_std_clock` is governor on `std::time::Instant`. So each clock is compared with
//! the same clock. The quota is large, so every check is admitted and charged (the write
//! path). Keys are inserted before timing, so the hit path
//! is measured. Cases:
//! - one hot key;
//! - 10 000 keys round-robin;
//! - 1 000 000 keys round-robin;
//! - each again with two threads contending (time per check across both threads).
//!
//! `layer`: one request through `RateLimitLayer` keyed by client IP around a service that
//! answers at once, against `tower_governor`'s `GovernorLayer` with its peer-IP key, each
//! admitting every timed request. Both run without rate-limit headers;
//! `floodgate_counter_clock` is floodgate on the counter clock and `floodgate_draft_headers`
//! adds draft-11 headers.
//!
//! Run: `cargo bench --bench ratelimit`.

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::ready;

use axum::body::Body;
use axum::extract::ConnectInfo;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use floodgate::clock::Clock;
use floodgate::key::{ClientIp, IpKey};
use floodgate::ratelimit::{Algorithm, HeaderStyle, KeyedLimiter, Policy, Quota, RateLimitLayer};
use governor::DefaultKeyedRateLimiter;
use http::{Request, Response};
use tower::{Layer, Service};

/// Large enough that no check in a run is refused: one unit per nanosecond.
const PER_SECOND: u32 = 1_000_000_000;

fn keys(count: u32) -> Vec<IpKey> {
    (0..count)
        .map(|i| IpKey::from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))))
        .collect()
}

trait Check: Sync {
    fn check(&self, key: &IpKey) -> bool;
}

impl Check for KeyedLimiter<IpKey> {
    fn check(&self, key: &IpKey) -> bool {
        KeyedLimiter::check(self, key).is_ok()
    }
}

impl Check for DefaultKeyedRateLimiter<IpKey> {
    fn check(&self, key: &IpKey) -> bool {
        self.check_key(key).is_ok()
    }
}

/// governor on `std::time::Instant`, the clock tokio reads outside tests, to separate the
/// cost of the clock from the cost of the limiter.
type GovernorStdClock = governor::RateLimiter<
    IpKey,
    governor::state::keyed::DashMapStateStore<IpKey>,
    governor::clock::MonotonicClock,
    governor::middleware::NoOpMiddleware<std::time::Instant>,
>;

impl Check for GovernorStdClock {
    fn check(&self, key: &IpKey) -> bool {
        self.check_key(key).is_ok()
    }
}

fn floodgate(algorithm: Algorithm, clock: Clock) -> KeyedLimiter<IpKey> {
    let quota = match algorithm {
        Algorithm::TokenBucket => Quota::per_second(PER_SECOND).burst(PER_SECOND),
        _ => Quota::per_second(PER_SECOND),
    };
    KeyedLimiter::builder(algorithm, quota)
        .max_keys(2_000_000, floodgate::ratelimit::OnFull::Overflow)
        .clock(clock)
        .build()
        .expect("a valid quota")
}

fn governor_quota() -> governor::Quota {
    let rate = NonZeroU32::new(PER_SECOND).expect("non-zero");
    governor::Quota::per_second(rate).allow_burst(rate)
}

/// Times `iters` checks over `keys` round-robin on `threads` threads, each starting at its
/// own offset.
fn run(limiter: &dyn Check, keys: &[IpKey], threads: u64, iters: u64) -> Duration {
    let per_thread = iters.div_ceil(threads);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            scope.spawn(move || {
                let len = keys.len();
                let mut index = usize::try_from(thread).unwrap_or(0) * len / 2;
                for _ in 0..per_thread {
                    index = if index + 1 == len { 0 } else { index + 1 };
                    black_box(limiter.check(black_box(&keys[index])));
                }
            });
        }
    });
    start.elapsed()
}

fn keyed(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _inside = runtime.enter();
    let cases = [("hot_key", 1), ("10k_keys", 10_000), ("1m_keys", 1_000_000)];
    let mut group = c.benchmark_group("ratelimit_keyed");
    group.throughput(Throughput::Elements(1));
    for (case, count) in cases {
        let keys = keys(count);
        let limiters: [(&str, Box<dyn Check>); 6] = [
            (
                "floodgate_token_bucket",
                Box::new(floodgate(Algorithm::TokenBucket, Clock::new())),
            ),
            (
                "floodgate_token_bucket_counter_clock",
                Box::new(floodgate(Algorithm::TokenBucket, Clock::counter())),
            ),
            (
                "floodgate_sliding_window",
                Box::new(floodgate(Algorithm::SlidingWindow, Clock::new())),
            ),
            (
                "floodgate_sliding_window_counter_clock",
                Box::new(floodgate(Algorithm::SlidingWindow, Clock::counter())),
            ),
            (
                "governor",
                Box::new(DefaultKeyedRateLimiter::keyed(governor_quota())),
            ),
            (
                "governor_std_clock",
                Box::new(GovernorStdClock::dashmap_with_clock(
                    governor_quota(),
                    governor::clock::MonotonicClock,
                )),
            ),
        ];
        for (name, limiter) in &limiters {
            for key in &keys {
                limiter.check(key);
            }
            for threads in [1, 2] {
                let case = if threads == 1 {
                    case.to_owned()
                } else {
                    format!("{case}_2_threads")
                };
                group.bench_function(BenchmarkId::new(*name, case), |b| {
                    b.iter_custom(|iters| run(&**limiter, &keys, threads, iters));
                });
            }
        }
    }
    group.finish();
}

fn request() -> Request<Body> {
    let mut request = Request::get("/items")
        .body(Body::empty())
        .expect("valid request");
    let peer = SocketAddr::from(([203, 0, 113, 9], 4711));
    // Where each layer looks for the peer: floodgate takes either, tower_governor's peer-IP
    // key only axum's `ConnectInfo`.
    request.extensions_mut().insert(peer);
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

fn call<S>(service: &mut S, request: Request<Body>) -> u16
where
    S: Service<Request<Body>>,
    S::Response: StatusOf,
{
    ready(service.call(request)).map_or(0, |response| response.status_code())
}

/// Times calls of `service`, with each request built outside the timed part.
fn bench_calls<S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut service: S,
) where
    S: Service<Request<Body>>,
    S::Response: StatusOf,
{
    // Every timed call is an admitted request, not a refusal or an error.
    assert_eq!(call(&mut service, request()), 200, "{name} admits");
    group.bench_function(name, |b| {
        b.iter_batched(
            request,
            |request| call(&mut service, request),
            criterion::BatchSize::SmallInput,
        );
    });
}

/// The status of either layer's response type.
trait StatusOf {
    fn status_code(&self) -> u16;
}

impl<B> StatusOf for Response<B> {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _inside = runtime.enter();
    let inner = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let floodgate_layer = |headers, clock| {
        RateLimitLayer::builder()
            .clock(clock)
            .policy(
                Policy::token_bucket(
                    "per-ip",
                    ClientIp::new(),
                    Quota::per_second(PER_SECOND).burst(PER_SECOND),
                )
                .headers(headers),
            )
            .build()
            .expect("a valid layer")
    };
    let governor_config = Arc::new(
        tower_governor::governor::GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(PER_SECOND)
            .finish()
            .expect("a valid governor config"),
    );

    let mut group = c.benchmark_group("ratelimit_layer");
    group.throughput(Throughput::Elements(1));
    bench_calls(
        &mut group,
        "floodgate",
        floodgate_layer(HeaderStyle::None, Clock::new()).layer(inner),
    );
    bench_calls(
        &mut group,
        "floodgate_counter_clock",
        floodgate_layer(HeaderStyle::None, Clock::counter()).layer(inner),
    );
    bench_calls(
        &mut group,
        "floodgate_draft_headers",
        floodgate_layer(HeaderStyle::Draft, Clock::new()).layer(inner),
    );
    bench_calls(
        &mut group,
        "tower_governor",
        tower_governor::GovernorLayer::new(governor_config).layer(inner),
    );
    group.finish();
}

criterion_group!(benches, keyed, layer);
criterion_main!(benches);
