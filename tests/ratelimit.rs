//! `RateLimitLayer` in an axum `Router` over real TCP. The router takes the layer with
//! `Router::layer` and no `HandleErrorLayer`: refusals are responses, so the service stays
//! infallible, as axum requires.

mod support;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use floodgate::key::{ClientIp, Header};
use floodgate::ratelimit::{Mode, Policy, Quota, RateLimitLayer};
use http::{HeaderName, Method};

fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route(
            "/items",
            get(|| async { "items" }).post(|| async { "created" }),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(layer)
}

fn per_ip(quota: Quota) -> Policy<ClientIp> {
    Policy::token_bucket("per-ip", ClientIp::new(), quota)
        .exempt(|request| request.uri().path() == "/health")
}

#[tokio::test]
async fn over_quota_gets_a_429_problem_with_exact_headers() {
    let layer = RateLimitLayer::builder()
        .policy(per_ip(Quota::per_hour(2)))
        .build()
        .expect("valid");
    let address = support::serve(app(layer)).await;
    for remaining in ["1", "0"] {
        let reply = support::send(address, "GET", "/items", &[]).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "items"));
        assert_eq!(
            reply.header("ratelimit"),
            Some(
                format!(
                    r#""per-ip";r={remaining};t={}"#,
                    if remaining == "1" { 1800 } else { 3600 }
                )
                .as_str()
            )
        );
    }
    let refused = support::send(address, "GET", "/items", &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(refused.header("retry-after"), Some("1800"));
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some(r#""per-ip";q=2;w=3600"#)
    );
    assert_eq!(refused.header("ratelimit"), Some(r#""per-ip";r=0;t=3600"#));
    assert!(refused.body.contains(r#""status":429"#), "{}", refused.body);
    assert!(refused.body.contains("per-ip"), "{}", refused.body);
}

#[tokio::test]
async fn the_health_route_is_never_limited() {
    let layer = RateLimitLayer::builder()
        .policy(per_ip(Quota::per_hour(1)))
        .build()
        .expect("valid");
    let address = support::serve(app(layer)).await;
    assert_eq!(
        support::send(address, "GET", "/items", &[]).await.status,
        200
    );
    assert_eq!(
        support::send(address, "GET", "/items", &[]).await.status,
        429
    );
    for _ in 0..5 {
        assert_eq!(
            support::send(address, "GET", "/health", &[]).await.status,
            200
        );
    }
}

#[tokio::test]
async fn dry_run_never_refuses() {
    let layer = RateLimitLayer::builder()
        .policy(per_ip(Quota::per_hour(1)).mode(Mode::DryRun))
        .build()
        .expect("valid");
    let address = support::serve(app(layer)).await;
    for _ in 0..5 {
        let reply = support::send(address, "GET", "/items", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("ratelimit"), Some(r#""per-ip";r=0;t=3600"#));
    }
}

#[tokio::test(start_paused = true)]
async fn delay_mode_holds_a_request_then_admits_it() {
    let layer = RateLimitLayer::builder()
        .policy(per_ip(Quota::per_second(2).burst(1)).mode(Mode::Delay {
            max_wait: Duration::from_secs(1),
        }))
        .build()
        .expect("valid");
    let address = support::serve(app(layer)).await;
    let start = tokio::time::Instant::now();
    assert_eq!(
        support::send(address, "GET", "/items", &[]).await.status,
        200
    );
    assert_eq!(
        support::send(address, "GET", "/items", &[]).await.status,
        200
    );
    // The second waited for the next token, 500 ms later on the paused clock.
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn writes_are_limited_per_api_key_and_reads_per_ip() {
    let api_key = HeaderName::from_static("x-api-key");
    let layer = RateLimitLayer::builder()
        .policy(per_ip(Quota::per_hour(100)))
        .policy(
            Policy::sliding_window("writes", Header::new(api_key), Quota::per_hour(1))
                .methods([Method::POST])
                .path_prefix("/items"),
        )
        .build()
        .expect("valid");
    let address = support::serve(app(layer)).await;
    assert_eq!(
        support::send(address, "POST", "/items", &[("x-api-key", "a")])
            .await
            .status,
        200
    );
    assert_eq!(
        support::send(address, "POST", "/items", &[("x-api-key", "a")])
            .await
            .status,
        429
    );
    assert_eq!(
        support::send(address, "POST", "/items", &[("x-api-key", "b")])
            .await
            .status,
        200
    );
    let missing = support::send(address, "POST", "/items", &[]).await;
    assert_eq!(missing.status, 400);
    assert!(missing.body.contains("x-api-key"), "{}", missing.body);
    assert_eq!(
        support::send(address, "GET", "/items", &[]).await.status,
        200
    );
}
