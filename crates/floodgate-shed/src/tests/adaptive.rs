//! Adaptive limits against a simulated service on tokio's paused clock: the service runs a
//! hidden number of requests at a time and queues the rest inside itself, so latency grows
//! past its capacity, as a thread pool or a database pool does.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::{Aimd, ConcurrencyLimitLayer, Gradient, LimitAlgorithm, Sample};

/// Runs `capacity` requests at a time, each taking `work`; the others wait inside.
#[derive(Clone)]
struct Pool {
    slots: Arc<Semaphore>,
    work: Duration,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Pool {
    fn new(capacity: usize, work: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(capacity)),
            work,
            running: Arc::default(),
            most: Arc::default(),
        }
    }

    /// Takes `slots` of its capacity away for good, as soon as they come free.
    fn lose(&self, slots: u32) {
        let semaphore = Arc::clone(&self.slots);
        tokio::spawn(async move {
            if let Ok(lost) = semaphore.acquire_many_owned(slots).await {
                lost.forget();
            }
        });
    }
}

impl Service<Request<()>> for Pool {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let _running = Running::new(&this.running, &this.most);
            let slot = this.slots.acquire().await;
            tokio::time::sleep(this.work).await;
            drop(slot);
            Ok(Response::new(Full::new(Bytes::from_static(b"done"))))
        })
    }
}

/// Counts a request as running until dropped, so a dropped future counts out too.
pub(super) struct Running<'a>(&'a AtomicUsize);

impl<'a> Running<'a> {
    pub(super) fn new(running: &'a AtomicUsize, most: &AtomicUsize) -> Self {
        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        Self(running)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a run of [`offer`] saw.
#[derive(Debug, Default)]
struct Run {
    /// The layer's limit every 100 ms.
    limits: Vec<usize>,
    ok: usize,
    refused: usize,
}

impl Run {
    /// The limits sampled from `from` seconds into the run to `to`.
    fn limits_between(&self, from: usize, to: usize) -> &[usize] {
        &self.limits[from * 10..to * 10]
    }
}

/// Sends `rate` requests a second through `layer` to `pool` for `seconds`, on schedule
/// whatever the answers (open loop), each read to the end of its body; `at_half` runs once
/// halfway through.
async fn offer(
    layer: &ConcurrencyLimitLayer,
    pool: &Pool,
    rate: u32,
    seconds: u32,
    at_half: impl FnOnce(),
) -> Run {
    let service = layer.layer(pool.clone());
    let interval = Duration::from_secs(1) / rate;
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds.into());
    let half = start + Duration::from_secs(seconds.into()) / 2;
    let mut at_half = Some(at_half);
    let mut next_look = start;
    let mut run = Run::default();
    let mut tasks = JoinSet::new();
    let mut due = start;
    let count = |run: &mut Run, status: StatusCode| match status {
        StatusCode::OK => run.ok += 1,
        StatusCode::SERVICE_UNAVAILABLE => run.refused += 1,
        other => panic!("unexpected status {other}"),
    };
    while due < end {
        tokio::time::sleep_until(due).await;
        while due >= next_look {
            run.limits.push(layer.limit());
            next_look += Duration::from_millis(100);
        }
        if due >= half
            && let Some(at_half) = at_half.take()
        {
            at_half();
        }
        let service = service.clone();
        tasks.spawn(async move {
            let response = service.oneshot(Request::new(())).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, Infallible>(status)
        });
        while let Some(done) = tasks.try_join_next() {
            count(&mut run, done.expect("no panic").expect("infallible"));
        }
        due += interval;
    }
    while let Some(done) = tasks.join_next().await {
        count(&mut run, done.expect("no panic").expect("infallible"));
    }
    run
}

fn mean(values: &[usize]) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "a few small numbers")]
    let mean = values.iter().sum::<usize>() as f64 / values.len() as f64;
    mean
}

/// Capacity 10, each request 10 ms: 1 000 a second.
const CAPACITY: usize = 10;
const WORK: Duration = Duration::from_millis(10);

#[tokio::test(start_paused = true)]
async fn gradient_converges_to_the_capacity_and_follows_it_down() {
    let gradient = Gradient::builder()
        .probe_jitter(0.0)
        .build()
        .expect("valid");
    let layer = ConcurrencyLimitLayer::builder(50)
        .adaptive(gradient)
        .build()
        .expect("valid");
    let pool = Pool::new(CAPACITY, WORK);
    // Twice the capacity for 6 s, then the service loses half its capacity for 6 s.
    let run = offer(&layer, &pool, 2_000, 12, || pool.lose(5)).await;
    // It settles between the capacity N and the fixed point of its update for a service
    // whose latency grows smoothly, 1.25·N + √(1.25·N): 16 for N = 10, 8.8 for N = 5.
    // (Here latency grows in steps of a whole service time, so it stays nearer N.)
    let before = run.limits_between(2, 6);
    assert!(
        before.iter().all(|limit| (CAPACITY..=16).contains(limit)),
        "{:?}",
        run.limits
    );
    let after = run.limits_between(8, 12);
    assert!(
        after.iter().all(|limit| (CAPACITY / 2..=9).contains(limit)),
        "{:?}",
        run.limits
    );
    // Goodput stays near capacity: 6 000 in the first half, 3 000 in the second.
    assert!(run.ok > 8_500, "{run:?}");
}

#[tokio::test(start_paused = true)]
async fn aimd_saws_around_its_latency_threshold_and_backs_off_when_the_service_slows() {
    let aimd = Aimd::builder()
        .latency_threshold(WORK * 3 / 2)
        .build()
        .expect("valid");
    let layer = ConcurrencyLimitLayer::builder(CAPACITY)
        .adaptive(aimd)
        .build()
        .expect("valid");
    let pool = Pool::new(CAPACITY, WORK);
    let run = offer(&layer, &pool, 2_000, 12, || pool.lose(5)).await;
    // Latency reaches 15 ms at 15 in flight for N = 10, at 7.5 for N = 5.
    let before = run.limits_between(2, 6);
    assert!(
        before.iter().all(|limit| (10..=20).contains(limit)),
        "{:?}",
        run.limits
    );
    let after = run.limits_between(8, 12);
    assert!(
        after.iter().all(|limit| (4..=10).contains(limit)),
        "{:?}",
        run.limits
    );
    assert!(mean(after) < mean(before) * 0.7, "{:?}", run.limits);
    assert!(run.ok > 8_500, "{run:?}");
}

/// Jumps to a pseudo-random limit on every sample until frozen, then keeps it.
#[derive(Debug)]
struct Chaos {
    frozen: Arc<AtomicBool>,
    state: u64,
}

impl LimitAlgorithm for Chaos {
    fn bounds(&self) -> std::ops::RangeInclusive<usize> {
        2..=12
    }

    fn update(&mut self, _: &Sample, limit: usize) -> usize {
        if self.frozen.load(Ordering::SeqCst) {
            return limit;
        }
        self.state = self
            .state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Out of bounds on purpose, half the time: the layer clamps.
        usize::try_from(self.state >> 59).unwrap_or(0)
    }
}

#[tokio::test(start_paused = true)]
async fn a_limit_that_moves_under_dropped_futures_and_bodies_leaks_no_permit() {
    let frozen = Arc::new(AtomicBool::new(false));
    let chaos = Chaos {
        frozen: Arc::clone(&frozen),
        state: 7,
    };
    let layer = ConcurrencyLimitLayer::builder(6)
        .max_queue(4)
        .adaptive(chaos)
        .build()
        .expect("valid");
    let pool = Pool::new(1_000, WORK);
    let service = layer.layer(pool.clone());
    let mut tasks = JoinSet::new();
    for i in 0..20_000_u32 {
        let service = service.clone();
        tasks.spawn(async move {
            let call = service.oneshot(Request::new(()));
            match i % 4 {
                // Dropped while queued or running.
                0 => drop(tokio::time::timeout(Duration::from_millis(3), call).await),
                // Body dropped before its end.
                1 => drop(call.await),
                // Read to the end.
                _ => {
                    let response = call.await.expect("infallible");
                    drop(response.into_body().collect().await);
                }
            }
        });
        if i % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let limit = layer.limit();
        assert!((2..=12).contains(&limit), "{limit}");
    }
    while tasks.join_next().await.is_some() {}
    assert!(
        pool.most.load(Ordering::SeqCst) <= 12,
        "never more in flight than the highest limit"
    );
    assert_eq!(layer.in_flight(), 0);
    frozen.store(true, Ordering::SeqCst);
    // Exactly `limit` requests fit at once now: every permit came back, and no debt is left.
    let limit = layer.limit();
    let held: Vec<_> = {
        let mut held = Vec::new();
        for _ in 0..limit {
            held.push(tokio::spawn(service.clone().oneshot(Request::new(()))));
        }
        held
    };
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), limit);
    let mut over = Box::pin(service.clone().oneshot(Request::new(())));
    assert!(super::futures_poll_once(over.as_mut()).await.is_pending());
    assert_eq!(
        layer.in_flight(),
        limit,
        "one above the limit waits in the queue"
    );
    drop(over);
    for request in held {
        let response = request.await.expect("no panic").expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_empty_or_ended_body_reports_a_sample_without_being_polled() {
    #[derive(Debug)]
    struct Count(Arc<AtomicUsize>);
    impl LimitAlgorithm for Count {
        fn bounds(&self) -> std::ops::RangeInclusive<usize> {
            1..=10
        }
        fn update(&mut self, sample: &Sample, limit: usize) -> usize {
            if sample.outcome == crate::Outcome::Success {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
            limit
        }
    }
    let successes = Arc::new(AtomicUsize::new(0));
    let layer = ConcurrencyLimitLayer::builder(2)
        .adaptive(Count(Arc::clone(&successes)))
        .build()
        .expect("valid");
    let service = layer.layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    // hyper drops a body that says it is at its end without polling it.
    let response = service.oneshot(Request::new(())).await.expect("infallible");
    assert_eq!(successes.load(Ordering::SeqCst), 1);
    assert_eq!(layer.in_flight(), 0, "the slot went back with the headers");
    drop(response);
    assert_eq!(successes.load(Ordering::SeqCst), 1);
}
