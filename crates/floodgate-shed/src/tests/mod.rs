//! The layers end to end, with paused time.

mod adaptive;
mod queue;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use floodgate_core::key::ClientIp;
use floodgate_core::rejection::{Reason, Rejection};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt};

use crate::ConcurrencyLimitLayer;

/// A service that takes `work` of (paused) time per request and records how many run at once.
#[derive(Clone)]
struct Worker {
    work: Duration,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Worker {
    fn new(work: Duration) -> Self {
        Self {
            work,
            running: Arc::default(),
            most: Arc::default(),
        }
    }
}

impl Service<Request<()>> for Worker {
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
            let now = this.running.fetch_add(1, Ordering::SeqCst) + 1;
            this.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(this.work).await;
            this.running.fetch_sub(1, Ordering::SeqCst);
            Ok(Response::new(Full::new(Bytes::from_static(b"done"))))
        })
    }
}

fn from(ip: [u8; 4]) -> Request<()> {
    let mut request = Request::new(());
    request.extensions_mut().insert(SocketAddr::from((ip, 1)));
    request
}

#[tokio::test(start_paused = true)]
async fn in_flight_never_exceeds_the_limit() {
    let worker = Worker::new(Duration::from_millis(10));
    let layer = ConcurrencyLimitLayer::builder(5)
        .max_queue(1_000)
        .max_queue_time(Duration::from_secs(60))
        .build()
        .expect("valid");
    let service = layer.layer(worker.clone());
    let tasks: Vec<_> = (0..100)
        .map(|_| tokio::spawn(service.clone().oneshot(Request::new(()))))
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.expect("no panic").expect("infallible").status(),
            StatusCode::OK
        );
    }
    assert_eq!(worker.most.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn the_queue_is_bounded_in_length() {
    let layer = ConcurrencyLimitLayer::builder(1)
        .max_queue(2)
        .max_queue_time(Duration::from_secs(60))
        .build()
        .expect("valid");
    let service = layer.layer(Worker::new(Duration::from_secs(1)));
    let waiting: Vec<_> = (0..3)
        .map(|_| tokio::spawn(service.clone().oneshot(Request::new(()))))
        .collect();
    tokio::task::yield_now().await;
    // One running, two queued: the fourth is refused at once.
    let refused = service
        .clone()
        .oneshot(Request::new(()))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused
            .extensions()
            .get::<Rejection>()
            .map(Rejection::reason),
        Some(Reason::QueueFull)
    );
    assert_eq!(refused.headers()["retry-after"], "60");
    for task in waiting {
        assert_eq!(
            task.await.expect("no panic").expect("infallible").status(),
            StatusCode::OK
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_queue_is_bounded_in_time() {
    let layer = ConcurrencyLimitLayer::builder(1)
        .max_queue(10)
        .max_queue_time(Duration::from_millis(100))
        .build()
        .expect("valid");
    let service = layer.layer(Worker::new(Duration::from_secs(1)));
    let running = tokio::spawn(service.clone().oneshot(Request::new(())));
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    let refused = service
        .clone()
        .oneshot(Request::new(()))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused
            .extensions()
            .get::<Rejection>()
            .map(Rejection::reason),
        Some(Reason::QueueTimeout)
    );
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(
        running
            .await
            .expect("no panic")
            .expect("infallible")
            .status(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn a_million_dropped_requests_leave_no_slot_held() {
    let keys = 7_u8;
    let layer = ConcurrencyLimitLayer::builder(1)
        .per_key(ClientIp::new())
        .max_queue(1)
        .build()
        .expect("valid");
    let mut service = layer.layer(Worker::new(Duration::from_secs(1)));
    // Each key's one slot is taken for a second, so what follows queues or is refused.
    let blockers: Vec<_> = (0..keys)
        .map(|k| tokio::spawn(service.clone().oneshot(from([10, 0, k, 1]))))
        .collect();
    tokio::task::yield_now().await;
    let mut polled = 0;
    for i in 0..1_000_000_u32 {
        let ip = [10, 0, u8::try_from(i % u32::from(keys)).unwrap_or(0), 1];
        let mut future = Box::pin(service.ready().await.expect("ready").call(from(ip)));
        if i % 3 == 0 {
            // Registered as a waiter on the semaphore, or answered 503, then dropped.
            if futures_poll_once(future.as_mut()).await.is_pending() {
                polled += 1;
            }
        }
    }
    assert!(
        polled > 0,
        "some requests really waited in the queue before being dropped"
    );
    for blocker in blockers {
        assert_eq!(
            blocker
                .await
                .expect("no panic")
                .expect("infallible")
                .status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        layer.active_keys(),
        0,
        "every slot and queue place went back, and every key entry"
    );
    // The limit admits at once again: no waiter or queue place was left behind.
    let response = service
        .ready()
        .await
        .expect("ready")
        .call(from([10, 0, 0, 1]))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    assert_eq!(layer.active_keys(), 0);
}

/// Polls a future once.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut future: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx))).await
}

/// A body that yields what a channel sends, and is pending in between.
pub(crate) struct Channel(pub(crate) mpsc::Receiver<Bytes>);

impl Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| Ok(Frame::data(chunk))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_streaming_response_holds_its_slot_until_the_body_ends() {
    let (sender, receiver) = mpsc::channel(1);
    let receiver = Arc::new(std::sync::Mutex::new(Some(receiver)));
    let layer = ConcurrencyLimitLayer::builder(1)
        .max_queue(0)
        .build()
        .expect("valid");
    let service = layer.layer(tower::service_fn(move |_: Request<()>| {
        let body = receiver.lock().expect("not poisoned").take().map(Channel);
        async move {
            match body {
                Some(body) => {
                    Ok::<_, Infallible>(Response::new(http_body_util::Either::Left(body)))
                }
                None => Ok(Response::new(http_body_util::Either::Right(Full::new(
                    Bytes::new(),
                )))),
            }
        }
    }));
    let streaming = service
        .clone()
        .oneshot(Request::new(()))
        .await
        .expect("infallible");
    // Headers are out, the body is not: the slot is still taken.
    let refused = service
        .clone()
        .oneshot(Request::new(()))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    sender
        .send(Bytes::from_static(b"chunk"))
        .await
        .expect("listening");
    drop(sender);
    let body = streaming
        .into_body()
        .collect()
        .await
        .expect("infallible")
        .to_bytes();
    assert_eq!(body, "chunk");
    let next = service
        .clone()
        .oneshot(Request::new(()))
        .await
        .expect("infallible");
    assert_eq!(next.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn per_key_limits_keep_one_client_from_taking_every_slot() {
    let layer = ConcurrencyLimitLayer::builder(1)
        .per_key(ClientIp::new())
        .max_queue(0)
        .build()
        .expect("valid");
    let service = layer.layer(Worker::new(Duration::from_secs(1)));
    let busy = tokio::spawn(service.clone().oneshot(from([192, 0, 2, 1])));
    tokio::task::yield_now().await;
    let same = service
        .clone()
        .oneshot(from([192, 0, 2, 1]))
        .await
        .expect("infallible");
    assert_eq!(same.status(), StatusCode::SERVICE_UNAVAILABLE);
    let other = service
        .clone()
        .oneshot(from([192, 0, 2, 2]))
        .await
        .expect("infallible");
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(
        busy.await.expect("no panic").expect("infallible").status(),
        StatusCode::OK
    );
    // A request without a peer address is refused with the key error's status.
    let bare = service
        .clone()
        .oneshot(Request::new(()))
        .await
        .expect("infallible");
    assert_eq!(bare.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[test]
fn a_limit_of_zero_is_refused() {
    assert_eq!(
        ConcurrencyLimitLayer::builder(0).build().err(),
        Some(crate::ConfigError::NoSlots)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_released_at_once_on_several_threads_leave_no_entry() {
    let layer = ConcurrencyLimitLayer::builder(1_000)
        .per_key(ClientIp::new())
        .build()
        .expect("valid");
    let service = layer.layer(tower::service_fn(|_: Request<()>| async {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let tasks: Vec<_> = (0..20_000_u32)
        .map(|i| {
            let service = service.clone();
            tokio::spawn(async move {
                let ip = [10, 0, 0, u8::try_from(i % 8).unwrap_or(0)];
                service
                    .oneshot(from(ip))
                    .await
                    .map(|response| response.status())
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("no panic"), Ok(StatusCode::OK));
    }
    assert_eq!(layer.active_keys(), 0);
}

#[tokio::test(start_paused = true)]
async fn waiters_granted_but_not_yet_polled_do_not_fill_the_queue() {
    use http_body_util::Either;

    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..4 {
        let (sender, receiver) = mpsc::channel::<Bytes>(1);
        senders.push(sender);
        receivers.push(receiver);
    }
    let receivers = Arc::new(std::sync::Mutex::new(receivers));
    let layer = ConcurrencyLimitLayer::builder(4)
        .max_queue(2)
        .max_queue_time(Duration::from_secs(60))
        .build()
        .expect("valid");
    let service = layer.layer(tower::service_fn(move |_: Request<()>| {
        let body = receivers.lock().expect("not poisoned").pop().map(Channel);
        async move {
            Ok::<_, Infallible>(Response::new(match body {
                Some(body) => Either::Left(body),
                None => Either::Right(Full::new(Bytes::new())),
            }))
        }
    }));
    // Four streaming bodies hold the four slots.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let response = service
            .clone()
            .oneshot(Request::new(()))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(response);
    }
    // Two wait in the queue.
    let mut queued: Vec<_> = (0..2)
        .map(|_| Box::pin(service.clone().oneshot(Request::new(()))))
        .collect();
    for future in &mut queued {
        assert!(futures_poll_once(future.as_mut()).await.is_pending());
    }
    // The streams end: two slots go to the waiters (not yet polled), two are free.
    drop(streams);
    let newcomer = service
        .clone()
        .oneshot(Request::new(()))
        .await
        .expect("infallible");
    assert_eq!(
        newcomer.status(),
        StatusCode::OK,
        "a free slot admits while granted waiters have yet to run"
    );
    let newcomer = service
        .clone()
        .oneshot(Request::new(()))
        .await
        .expect("infallible");
    assert_eq!(newcomer.status(), StatusCode::OK);
    for future in queued {
        assert_eq!(future.await.expect("infallible").status(), StatusCode::OK);
    }
    drop(senders);
}

#[tokio::test(start_paused = true)]
async fn bypassed_requests_pass_a_full_limit_and_take_no_slot() {
    let layer = ConcurrencyLimitLayer::builder(1)
        .max_queue(0)
        .bypass(|request| request.uri().path() == "/health")
        .build()
        .expect("valid");
    let worker = Worker::new(Duration::from_secs(1));
    // Behind a load shedder that exempts the same route, as the crate docs show.
    let shed = crate::LoadShedLayer::builder()
        .max_in_flight(1_024)
        .exempt(|request| request.uri().path() == "/health")
        .build()
        .expect("valid");
    let service = shed.layer(layer.layer(worker.clone()));
    let get = |path: &str| Request::get(path).body(()).expect("valid");
    let busy = tokio::spawn(service.clone().oneshot(get("/work")));
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 1);
    let refused = service
        .clone()
        .oneshot(get("/work"))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let checks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/health"))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 1, "health checks take no slot");
    for check in checks {
        let response = check.await.expect("no panic").expect("infallible");
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the slot is busy, /health passes"
        );
    }
    assert_eq!(
        busy.await.expect("no panic").expect("infallible").status(),
        StatusCode::OK
    );
    assert_eq!(worker.most.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn waiters_granted_then_dropped_before_polling_give_their_slots_back() {
    let layer = ConcurrencyLimitLayer::builder(3)
        .max_queue(2)
        .max_queue_time(Duration::from_secs(60))
        .build()
        .expect("valid");
    let worker = Worker::new(Duration::from_secs(1));
    let service = layer.layer(worker.clone());
    for _round in 0..3 {
        let blockers: Vec<_> = (0..3)
            .map(|_| tokio::spawn(service.clone().oneshot(Request::new(()))))
            .collect();
        tokio::task::yield_now().await;
        let mut queued: Vec<_> = (0..2)
            .map(|_| Box::pin(service.clone().oneshot(Request::new(()))))
            .collect();
        for future in &mut queued {
            assert!(futures_poll_once(future.as_mut()).await.is_pending());
        }
        // Time passes: the blockers end and their slots are granted to the waiters...
        for blocker in blockers {
            let response = blocker.await.expect("no panic").expect("infallible");
            assert_eq!(response.status(), StatusCode::OK);
        }
        // ...which are dropped before they are polled again.
        drop(queued);
        assert_eq!(layer.in_flight(), 0);
    }
    // Exactly the limit is admitted, exactly `max_queue` wait, and the next is refused.
    let running: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot(Request::new(()))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 3);
    let refused = service
        .clone()
        .oneshot(Request::new(()))
        .await
        .expect("infallible");
    assert_eq!(
        refused
            .extensions()
            .get::<Rejection>()
            .map(Rejection::reason),
        Some(Reason::QueueFull)
    );
    for request in running {
        let response = request.await.expect("no panic").expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(worker.most.load(Ordering::SeqCst), 3);
}
