//! The load shedder with paused time.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use floodgate_core::rejection::{Reason, Rejection};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::{ConfigError, LoadShedLayer};

/// Runs `capacity` requests at a time, each taking `work`; the others queue inside.
fn pool(
    capacity: usize,
    work: Duration,
) -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let slots = Arc::new(Semaphore::new(capacity));
    tower::service_fn(move |_: Request<()>| {
        let slots = Arc::clone(&slots);
        async move {
            let _slot = slots.acquire().await;
            tokio::time::sleep(work).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
        }
    })
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).expect("valid")
}

#[tokio::test(start_paused = true)]
async fn over_max_in_flight_a_request_is_refused_at_once() {
    let layer = LoadShedLayer::builder()
        .max_in_flight(2)
        .build()
        .expect("valid");
    let service = layer.layer(pool(10, Duration::from_secs(1)));
    let running: Vec<_> = (0..2)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/"))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 2);
    let start = Instant::now();
    let refused = service.clone().oneshot(get("/")).await.expect("infallible");
    assert_eq!(start.elapsed(), Duration::ZERO, "refused at once");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        refused
            .extensions()
            .get::<Rejection>()
            .map(Rejection::reason),
        Some(Reason::Overloaded)
    );
    for request in running {
        let response = request.await.expect("no panic").expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        // Still counted until the body ends.
        drop(response.into_body().collect().await);
    }
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn exempt_requests_pass_under_full_load_and_are_not_counted() {
    let layer = LoadShedLayer::builder()
        .max_in_flight(1)
        .exempt(|request| request.uri().path() == "/health")
        .build()
        .expect("valid");
    let service = layer.layer(pool(100, Duration::from_secs(1)));
    let busy = tokio::spawn(service.clone().oneshot(get("/work")));
    tokio::task::yield_now().await;
    let refused = service
        .clone()
        .oneshot(get("/work"))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/health"))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 1, "health checks are not counted");
    for check in health {
        let response = check.await.expect("no panic").expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }
    drop(busy.await);
}

#[tokio::test(start_paused = true)]
async fn a_critical_class_keeps_its_reserved_share() {
    let layer = LoadShedLayer::builder()
        .max_in_flight(10)
        .critical(|request| request.uri().path() == "/checkout", 0.2)
        .build()
        .expect("valid");
    let service = layer.layer(pool(100, Duration::from_secs(1)));
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::spawn(service.clone().oneshot(get("/browse"))));
    }
    tokio::task::yield_now().await;
    let refused = service
        .clone()
        .oneshot(get("/browse"))
        .await
        .expect("infallible");
    assert_eq!(
        refused.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "8 of 10 are others'"
    );
    for _ in 0..2 {
        held.push(tokio::spawn(service.clone().oneshot(get("/checkout"))));
    }
    tokio::task::yield_now().await;
    assert_eq!(
        layer.in_flight(),
        10,
        "the reserved two went to critical requests"
    );
    let refused = service
        .clone()
        .oneshot(get("/checkout"))
        .await
        .expect("infallible");
    assert_eq!(
        refused.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the limit holds for all"
    );
    for request in held {
        let response = request.await.expect("no panic").expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// What [`offer`] saw.
#[derive(Debug, Default)]
struct Run {
    ok: Vec<Duration>,
    /// The successful ones due from the second second on.
    settled: Vec<Duration>,
    refused: usize,
}

/// Sends `rate` requests a second for `seconds` (open loop) and times each.
async fn offer<S>(service: &S, rate: u32, seconds: u32) -> Run
where
    S: Service<Request<()>, Error = Infallible> + Clone + Send + 'static,
    S::Response: Into<Response<crate::load_shed::LoadShedBody<Full<Bytes>>>>,
    S::Future: Send,
{
    let interval = Duration::from_secs(1) / rate;
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds.into());
    let mut tasks = JoinSet::new();
    let mut due = start;
    while due < end {
        tokio::time::sleep_until(due).await;
        let service = service.clone();
        tasks.spawn(async move {
            let response: Response<_> = service.oneshot(get("/")).await?.into();
            let status = response.status();
            drop(response.into_body().collect().await);
            Ok::<_, Infallible>((status, due.elapsed(), due - start >= Duration::from_secs(1)))
        });
        due += interval;
    }
    let mut run = Run::default();
    while let Some(done) = tasks.join_next().await {
        match done.expect("no panic").expect("infallible") {
            (StatusCode::OK, latency, settled) => {
                run.ok.push(latency);
                if settled {
                    run.settled.push(latency);
                }
            }
            (StatusCode::SERVICE_UNAVAILABLE, _, _) => run.refused += 1,
            (other, _, _) => panic!("unexpected {other}"),
        }
    }
    run.ok.sort();
    run.settled.sort();
    run
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() * 99 / 100]
}

#[tokio::test(start_paused = true)]
async fn a_standing_queue_below_is_shed_until_admitted_requests_are_fast_again() {
    // 4 at a time, 10 ms each: 400 a second, queueing inside beyond that.
    let layer = LoadShedLayer::builder()
        .sojourn_target(Duration::from_millis(15))
        .build()
        .expect("valid");
    let service = layer.layer(pool(4, Duration::from_millis(10)));
    // 4× the capacity for 3 s.
    let overload = offer(&service, 1_600, 3).await;
    // Without shedding, the 3 600 requests above capacity would queue and wait seconds.
    // With it, the queue is seen one interval after it forms, cut, and then held near the
    // target (measured: p50 20 ms, p99 29 ms from the second second on).
    assert!(
        overload.ok.len() > 1_150,
        "goodput near 1 200: {}",
        overload.ok.len()
    );
    assert!(overload.refused > 3_000, "{}", overload.refused);
    assert!(
        p99(&overload.settled) < Duration::from_millis(45),
        "p99 {:?}",
        p99(&overload.settled)
    );
    assert!(layer.ceiling().is_some(), "still overloaded at the end");
    // Half the capacity: the ceiling lifts and nothing is refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calm = offer(&service, 200, 2).await;
    assert!(calm.refused < 10, "{}", calm.refused);
    assert_eq!(layer.ceiling(), None);
    assert!(
        p99(&calm.ok) <= Duration::from_millis(11),
        "{:?}",
        p99(&calm.ok)
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_that_drains_within_an_interval_is_not_shed() {
    let layer = LoadShedLayer::builder()
        .sojourn_target(Duration::from_millis(15))
        .build()
        .expect("valid");
    let service = layer.layer(pool(4, Duration::from_millis(10)));
    for _ in 0..5 {
        // 20 at once: the last wait 40 ms, but the first ones do not wait at all.
        let burst: Vec<_> = (0..20)
            .map(|_| tokio::spawn(service.clone().oneshot(get("/"))))
            .collect();
        for request in burst {
            let response = request.await.expect("no panic").expect("infallible");
            assert_eq!(response.status(), StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(layer.ceiling(), None);
}

#[tokio::test(start_paused = true)]
async fn dropped_futures_and_bodies_leave_nothing_counted() {
    let layer = LoadShedLayer::builder()
        .max_in_flight(3)
        .sojourn_target(Duration::from_millis(15))
        .build()
        .expect("valid");
    let mut service = layer.layer(pool(2, Duration::from_millis(10)));
    for i in 0..100_000_u32 {
        let future = service.ready().await.expect("ready").call(get("/"));
        match i % 3 {
            0 => drop(future),
            1 => drop(tokio::time::timeout(Duration::from_millis(1), future).await),
            _ => drop(future.await),
        }
    }
    assert_eq!(layer.in_flight(), 0);
    assert_eq!(layer.awaiting_head(), 0);
}

#[test]
fn settings_are_checked() {
    assert_eq!(
        LoadShedLayer::builder().build().err(),
        Some(ConfigError::NoSignal)
    );
    assert_eq!(
        LoadShedLayer::builder().max_in_flight(0).build().err(),
        Some(ConfigError::NoSlots)
    );
    let bad = [
        LoadShedLayer::builder().sojourn_target(Duration::ZERO),
        LoadShedLayer::builder()
            .sojourn_target(Duration::from_millis(200))
            .sojourn_interval(Duration::from_millis(100)),
        LoadShedLayer::builder()
            .max_in_flight(10)
            .critical(|_| true, 1.0),
    ];
    for builder in bad {
        assert!(matches!(builder.build(), Err(ConfigError::Setting { .. })));
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_streaming_response_does_not_make_the_ceiling_refuse_light_requests() {
    use http_body_util::Either;

    let layer = LoadShedLayer::builder()
        .sojourn_target(Duration::from_millis(20))
        .build()
        .expect("valid");
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let receiver = Arc::new(std::sync::Mutex::new(Some(receiver)));
    let mut service = layer.layer(tower::service_fn(move |request: Request<()>| {
        let path = request.uri().path().to_owned();
        let stream = if path == "/stream" {
            receiver.lock().expect("not poisoned").take()
        } else {
            None
        };
        async move {
            if path == "/slow" {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            let body = match stream {
                Some(receiver) => Either::Left(crate::tests::Channel(receiver)),
                None => Either::Right(Full::new(Bytes::from_static(b"done"))),
            };
            Ok::<_, Infallible>(Response::new(body))
        }
    }));
    // An SSE-like stream: its head is out at once, its body stays open.
    let stream = service
        .ready()
        .await
        .expect("ready")
        .call(get("/stream"))
        .await
        .expect("infallible");
    assert_eq!(stream.status(), StatusCode::OK);
    // One slow request that ends after an interval boundary...
    let slow = service
        .ready()
        .await
        .expect("ready")
        .call(get("/slow"))
        .await
        .expect("infallible");
    assert_eq!(slow.status(), StatusCode::OK);
    drop(slow.into_body().collect().await);
    // ...then a quiet spell: nothing awaits a head, so nothing is standing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..20 {
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(get("/"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK, "light requests pass");
        drop(response.into_body().collect().await);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(layer.ceiling(), None);
    assert_eq!(
        layer.in_flight(),
        1,
        "the stream is still counted in flight"
    );
    drop(sender);
    drop(stream);
    assert_eq!(layer.in_flight(), 0);
}
