//! The wait queue: adaptive LIFO order, and no lost wake-up across threads.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt};

use super::adaptive::Running;
use crate::ConcurrencyLimitLayer;

type Log = Arc<Mutex<Vec<u32>>>;

/// A service taking `work` per request that logs in `log` the order it starts them in (by
/// the request's `x-n` header).
fn logging(
    work: Duration,
    log: &Log,
) -> impl tower::Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    let log = Arc::clone(log);
    tower::service_fn(move |request: Request<()>| {
        let n = request
            .headers()
            .get("x-n")
            .and_then(|n| n.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        log.lock().expect("not poisoned").push(n);
        async move {
            tokio::time::sleep(work).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    })
}

fn numbered(n: u32) -> Request<()> {
    Request::get("/").header("x-n", n).body(()).expect("valid")
}

#[tokio::test(start_paused = true)]
async fn a_fresh_queue_is_first_come_first_served_and_a_stale_one_newest_first() {
    let log = Log::default();
    let inner = logging(Duration::from_millis(10), &log);
    let layer = ConcurrencyLimitLayer::builder(1)
        .max_queue(10)
        .max_queue_time(Duration::from_secs(1))
        .adaptive_lifo(Duration::from_millis(15))
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    // 0 runs; 1, 2 and 3 queue at once.
    let requests: Vec<_> = (0..4)
        .map(|n| tokio::spawn(service.clone().oneshot(numbered(n))))
        .collect();
    for request in requests {
        let response = request.await.expect("no panic").expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }
    // At 10 ms the oldest (1) has waited 10 ms: first come. At 20 ms the oldest (2) has
    // waited 20 ms, past 15: the newest (3) goes before it.
    assert_eq!(*log.lock().expect("not poisoned"), [0, 1, 3, 2]);
}

#[tokio::test(start_paused = true)]
async fn without_the_option_the_queue_stays_first_come_first_served() {
    let log = Log::default();
    let inner = logging(Duration::from_millis(10), &log);
    let layer = ConcurrencyLimitLayer::builder(1)
        .max_queue(10)
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    let requests: Vec<_> = (0..6)
        .map(|n| tokio::spawn(service.clone().oneshot(numbered(n))))
        .collect();
    for request in requests {
        request.await.expect("no panic").expect("infallible");
    }
    assert_eq!(*log.lock().expect("not poisoned"), [0, 1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_on_several_threads_are_all_woken() {
    for lifo in [None, Some(Duration::ZERO)] {
        let mut builder = ConcurrencyLimitLayer::builder(3)
            .max_queue(100_000)
            // Far longer than the test takes: a lost wake-up shows as a 503.
            .max_queue_time(Duration::from_secs(30));
        if let Some(threshold) = lifo {
            builder = builder.adaptive_lifo(threshold);
        }
        let layer = builder.build().expect("valid");
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let service = layer.layer(tower::service_fn({
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            move |_: Request<()>| {
                let (running, most) = (Arc::clone(&running), Arc::clone(&most));
                async move {
                    let _running = Running::new(&running, &most);
                    tokio::task::yield_now().await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }
            }
        }));
        let tasks: Vec<_> = (0..20_000)
            .map(|i| {
                let service = service.clone();
                tokio::spawn(async move {
                    let call = service.oneshot(Request::new(()));
                    if i % 5 == 0 {
                        // Some leave the queue early, perhaps just as they are granted.
                        let _ = tokio::time::timeout(Duration::from_micros(50), call).await;
                        None
                    } else {
                        Some(call.await.map(|response| response.status()))
                    }
                })
            })
            .collect();
        for task in tasks {
            let status = task.await.expect("no panic");
            assert!(
                matches!(status, None | Some(Ok(StatusCode::OK))),
                "{status:?}"
            );
        }
        assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 3);
        assert_eq!(layer.in_flight(), 0);
    }
}
