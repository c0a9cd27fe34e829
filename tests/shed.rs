//! The concurrency limit and the load shedder in an axum `Router` over real TCP: overload
//! gets a 503 at once while health checks still answer.

mod support;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use floodgate::shed::{ConcurrencyLimitLayer, Gradient, LoadShedLayer};
use tokio::sync::{mpsc, watch};

/// A handler that says when it starts and answers once `release` turns true.
fn held(started: mpsc::Sender<()>, release: watch::Receiver<bool>) -> axum::routing::MethodRouter {
    get(move || {
        let (started, mut release) = (started.clone(), release.clone());
        async move {
            let _ = started.send(()).await;
            let _ = release.wait_for(|released| *released).await;
            "items"
        }
    })
}

#[tokio::test]
async fn overload_gets_a_503_while_health_still_answers() {
    let limit = ConcurrencyLimitLayer::builder(1)
        .max_queue(0)
        .build()
        .expect("valid");
    let (started, mut started_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (release, release_rx) = tokio::sync::watch::channel(false);
    let app = Router::new()
        .route(
            "/items",
            get(move || {
                let (started, mut release) = (started.clone(), release_rx.clone());
                async move {
                    let _ = started.send(()).await;
                    let _ = release.wait_for(|released| *released).await;
                    "items"
                }
            }),
        )
        .route_layer(limit)
        .route("/health", get(|| async { "ok" }));
    let address = support::serve(app).await;
    let slow = tokio::spawn(support::send(address, "GET", "/items", &[]));
    started_rx.recv().await.expect("the first request started");
    let refused = support::send(address, "GET", "/items", &[]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        support::send(address, "GET", "/health", &[]).await.status,
        200
    );
    release.send(true).expect("the handler listens");
    let done = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("finishes")
        .expect("no panic");
    assert_eq!(done.status, 200);
}

#[tokio::test]
async fn load_shedding_around_the_router_refuses_at_once_and_never_sheds_health() {
    let shed = LoadShedLayer::builder()
        .max_in_flight(2)
        .exempt(|request| request.uri().path() == "/health")
        .build()
        .expect("valid");
    let (started, mut started_rx) = mpsc::channel::<()>(2);
    let (release, release_rx) = watch::channel(false);
    // Around the whole router, where axum needs `Error = Infallible`: no HandleErrorLayer.
    let app = Router::new()
        .route("/items", held(started, release_rx))
        .route("/health", get(|| async { "ok" }))
        .layer(shed);
    let address = support::serve(app).await;
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(support::send(address, "GET", "/items", &[])))
        .collect();
    for _ in 0..2 {
        started_rx.recv().await.expect("a request started");
    }
    let refused = support::send(address, "GET", "/items", &[]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert!(refused.body.contains("\"status\":503"), "{}", refused.body);
    for _ in 0..3 {
        assert_eq!(
            support::send(address, "GET", "/health", &[]).await.status,
            200
        );
    }
    release.send(true).expect("the handlers listen");
    for request in slow {
        let done = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("finishes")
            .expect("no panic");
        assert_eq!(done.status, 200);
    }
}

#[tokio::test]
async fn an_adaptive_limit_as_route_layer_is_one_limit_for_every_route() {
    // The gradient starts by measuring latency at 3 requests at a time.
    let limit = ConcurrencyLimitLayer::builder(20)
        .adaptive(Gradient::new())
        .max_queue(0)
        .build()
        .expect("valid");
    assert_eq!(limit.limit(), 3);
    let (started, mut started_rx) = mpsc::channel::<()>(3);
    let (release, release_rx) = watch::channel(false);
    let app = Router::new()
        .route("/a", held(started.clone(), release_rx.clone()))
        .route("/b", held(started, release_rx))
        .route_layer(limit.clone());
    let address = support::serve(app).await;
    let slow: Vec<_> = ["/a", "/b", "/a"]
        .into_iter()
        .map(|path| tokio::spawn(support::send(address, "GET", path, &[])))
        .collect();
    for _ in 0..3 {
        started_rx.recv().await.expect("a request started");
    }
    assert_eq!(limit.in_flight(), 3);
    let refused = support::send(address, "GET", "/b", &[]).await;
    assert_eq!(refused.status, 503, "both routes share the 3 slots");
    release.send(true).expect("the handlers listen");
    for request in slow {
        let done = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("finishes")
            .expect("no panic");
        assert_eq!(done.status, 200);
    }
    assert_eq!(limit.in_flight(), 0);
}
