//! The concurrency limit in an axum `Router` over real TCP: overload gets a 503 at once
//! while the routes outside the limit still answer.

mod support;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use floodgate::shed::ConcurrencyLimitLayer;

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
