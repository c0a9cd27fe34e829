//! The layer end to end, with paused time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floodgate_core::key::{ClientIp, Global, Header, OnKeyError};
use floodgate_core::rejection::{Reason, Rejection};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

use crate::{HeaderStyle, Mode, OnFull, Policy, Quota, RateLimitLayer};

pub(crate) type Body = http_body_util::Full<bytes::Bytes>;

/// A service that answers 200 and counts its calls.
pub(crate) fn counting_service(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |_: Request<Body>| {
        calls.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, Infallible>(Response::new(Body::from("ok"))) }
    })
}

pub(crate) fn request_from(ip: [u8; 4]) -> Request<Body> {
    request(Method::GET, "/", ip)
}

pub(crate) fn request(method: Method, path: &str, ip: [u8; 4]) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::default())
        .expect("valid");
    request
        .extensions_mut()
        .insert(SocketAddr::from((ip, 4711)));
    request
}

/// The response `service` gives `request`.
pub(crate) async fn respond<S>(
    service: &mut S,
    request: Request<Body>,
) -> Response<floodgate_core::body::ResponseBody<Body>>
where
    S: Service<
            Request<Body>,
            Response = Response<floodgate_core::body::ResponseBody<Body>>,
            Error = Infallible,
        >,
{
    service
        .ready()
        .await
        .expect("ready")
        .call(request)
        .await
        .expect("infallible")
}

pub(crate) async fn status<S>(service: &mut S, request: Request<Body>) -> StatusCode
where
    S: Service<
            Request<Body>,
            Response = Response<floodgate_core::body::ResponseBody<Body>>,
            Error = Infallible,
        >,
{
    respond(service, request).await.status()
}

fn per_ip(quota: Quota) -> RateLimitLayer {
    RateLimitLayer::builder()
        .policy(Policy::token_bucket("per-ip", ClientIp::new(), quota))
        .build()
        .expect("valid layer")
}

#[tokio::test(start_paused = true)]
async fn burst_then_refill_with_exact_retry_after() {
    let mut service = per_ip(Quota::per_second(2).burst(3)).layer(counting_service(Arc::default()));
    for _ in 0..3 {
        assert_eq!(
            status(&mut service, request_from([192, 0, 2, 1])).await,
            StatusCode::OK
        );
    }
    let refused = service
        .ready()
        .await
        .expect("ready")
        .call(request_from([192, 0, 2, 1]))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The next token comes in 500 ms: rounded up to 1 s.
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["ratelimit"], r#""per-ip";r=0;t=2"#);
    assert_eq!(
        refused
            .extensions()
            .get::<Rejection>()
            .map(Rejection::reason),
        Some(Reason::RateLimited)
    );
    let body = refused
        .into_body()
        .collect()
        .await
        .expect("infallible")
        .to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).expect("problem+json");
    assert_eq!(problem["status"], 429);

    tokio::time::advance(Duration::from_millis(499)).await;
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 1])).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 1])).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 1])).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client has its own bucket.
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 2])).await,
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_the_true_wait_rounded_up() {
    let mut service = per_ip(Quota::per_minute(1)).layer(counting_service(Arc::default()));
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 1])).await,
        StatusCode::OK
    );
    tokio::time::advance(Duration::from_millis(20_500)).await;
    let refused = service
        .ready()
        .await
        .expect("ready")
        .call(request_from([192, 0, 2, 1]))
        .await
        .expect("infallible");
    // 39.5 s left: 40.
    assert_eq!(refused.headers()["retry-after"], "40");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_key_admit_exactly_the_burst() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = per_ip(Quota::per_hour(50).burst(50)).layer(counting_service(Arc::clone(&calls)));
    let tasks: Vec<_> = (0..400)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                service
                    .oneshot(request_from([192, 0, 2, 1]))
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        if task.await.expect("no panic") == Ok(StatusCode::OK) {
            ok += 1;
        }
    }
    assert_eq!((ok, calls.load(Ordering::Relaxed)), (50, 50));
}

#[tokio::test(start_paused = true)]
async fn a_refusal_by_one_policy_charges_none_of_the_others() {
    // 2 per minute and 1 per second: the second request in a second is refused by the
    // per-second policy and must leave the per-minute quota untouched.
    let layer = RateLimitLayer::builder()
        .policy(Policy::sliding_window(
            "per-minute",
            Global,
            Quota::per_minute(2),
        ))
        .policy(Policy::token_bucket(
            "per-second",
            Global,
            Quota::per_second(1),
        ))
        .build()
        .expect("valid layer");
    let mut service = layer.layer(counting_service(Arc::default()));
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 1])).await,
        StatusCode::OK
    );
    for _ in 0..5 {
        assert_eq!(
            status(&mut service, request_from([192, 0, 2, 1])).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 1])).await,
        StatusCode::OK
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 1])).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_second_policy_refunds_the_first_token_bucket() {
    let api_key = HeaderName::from_static("x-api-key");
    let layer = RateLimitLayer::builder()
        .policy(Policy::token_bucket(
            "per-ip",
            ClientIp::new(),
            Quota::per_hour(3),
        ))
        .policy(Policy::token_bucket(
            "per-key",
            Header::new(api_key.clone()),
            Quota::per_hour(1),
        ))
        .build()
        .expect("valid layer");
    let mut service = layer.layer(counting_service(Arc::default()));
    let with_key = |key: &'static str| {
        let mut request = request_from([192, 0, 2, 1]);
        request
            .headers_mut()
            .insert(api_key.clone(), http::HeaderValue::from_static(key));
        request
    };
    assert_eq!(status(&mut service, with_key("a")).await, StatusCode::OK);
    for _ in 0..10 {
        assert_eq!(
            status(&mut service, with_key("a")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    // The per-IP bucket paid for one request only: two more keys fit.
    assert_eq!(status(&mut service, with_key("b")).await, StatusCode::OK);
    assert_eq!(status(&mut service, with_key("c")).await, StatusCode::OK);
    assert_eq!(
        status(&mut service, with_key("d")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn the_limit_holds_across_clones_and_routes() {
    let layer = per_ip(Quota::per_hour(4));
    let calls = Arc::new(AtomicUsize::new(0));
    // As axum applies a layer per route and clones per request.
    let mut route_a = layer.layer(counting_service(Arc::clone(&calls)));
    let mut route_b = layer.clone().layer(counting_service(Arc::clone(&calls)));
    for attempt in 0..10 {
        let mut clone = if attempt % 2 == 0 {
            route_a.clone()
        } else {
            route_b.clone()
        };
        let _ = status(&mut clone, request_from([192, 0, 2, 1])).await;
    }
    assert_eq!(
        status(&mut route_a, request_from([192, 0, 2, 1])).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(&mut route_b, request_from([192, 0, 2, 1])).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(calls.load(Ordering::Relaxed), 4);
}

#[tokio::test(start_paused = true)]
async fn dry_run_never_refuses_but_reports() {
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("shadow", ClientIp::new(), Quota::per_hour(1)).mode(Mode::DryRun),
        )
        .build()
        .expect("valid layer");
    let calls = Arc::new(AtomicUsize::new(0));
    let mut service = layer.layer(counting_service(Arc::clone(&calls)));
    for _ in 0..5 {
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(request_from([192, 0, 2, 1]))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().contains_key("ratelimit"));
    }
    assert_eq!(calls.load(Ordering::Relaxed), 5);
}

#[tokio::test(start_paused = true)]
async fn delay_mode_holds_requests_until_they_fit_then_refuses_past_max_wait() {
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("smooth", Global, Quota::per_second(10).burst(1)).mode(
                Mode::Delay {
                    max_wait: Duration::from_millis(250),
                },
            ),
        )
        .build()
        .expect("valid layer");
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer.layer(counting_service(Arc::clone(&calls)));
    let start = tokio::time::Instant::now();
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                let status = service
                    .oneshot(request_from([192, 0, 2, 1]))
                    .await
                    .map(|r| r.status());
                (status, start.elapsed())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(handle.await.expect("no panic"));
    }
    outcomes.sort_by_key(|(_, elapsed)| *elapsed);
    let admitted: Vec<Duration> = outcomes
        .iter()
        .filter(|(status, _)| *status == Ok(StatusCode::OK))
        .map(|(_, at)| *at)
        .collect();
    // One at once, then one every 100 ms while the wait stays within 250 ms.
    assert_eq!(
        admitted,
        [
            Duration::ZERO,
            Duration::from_millis(100),
            Duration::from_millis(200)
        ]
    );
    let refused = outcomes
        .iter()
        .filter(|(status, _)| *status == Ok(StatusCode::TOO_MANY_REQUESTS))
        .count();
    assert_eq!((refused, calls.load(Ordering::Relaxed)), (2, 3));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiting_request_leaves_nothing_charged() {
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("smooth", Global, Quota::per_second(1).burst(1)).mode(
                Mode::Delay {
                    max_wait: Duration::from_secs(5),
                },
            ),
        )
        .build()
        .expect("valid layer");
    let mut service = layer.layer(counting_service(Arc::default()));
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 1])).await,
        StatusCode::OK
    );
    for _ in 0..1_000 {
        let waiting = service
            .ready()
            .await
            .expect("ready")
            .call(request_from([192, 0, 2, 1]));
        drop(waiting);
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    let response = service
        .ready()
        .await
        .expect("ready")
        .call(request_from([192, 0, 2, 1]));
    let at_once = tokio::time::timeout(Duration::ZERO, response).await;
    assert_eq!(
        at_once
            .expect("admitted without waiting")
            .map(|r| r.status()),
        Ok(StatusCode::OK)
    );
}

#[tokio::test(start_paused = true)]
async fn exempt_and_unmatched_requests_are_never_limited() {
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("writes", ClientIp::new(), Quota::per_hour(1))
                .methods([Method::POST])
                .path_prefix("/items")
                .exempt(|request| request.headers().contains_key("x-admin")),
        )
        .build()
        .expect("valid layer");
    let mut service = layer.layer(counting_service(Arc::default()));
    let ip = [192, 0, 2, 1];
    assert_eq!(
        status(&mut service, request(Method::POST, "/items", ip)).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut service, request(Method::POST, "/items/7", ip)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..3 {
        assert_eq!(
            status(&mut service, request(Method::GET, "/items", ip)).await,
            StatusCode::OK
        );
        assert_eq!(
            status(&mut service, request(Method::POST, "/itemsets", ip)).await,
            StatusCode::OK
        );
        assert_eq!(
            status(&mut service, request(Method::POST, "/health", ip)).await,
            StatusCode::OK
        );
        let mut admin = request(Method::POST, "/items", ip);
        admin
            .headers_mut()
            .insert("x-admin", http::HeaderValue::from_static("1"));
        assert_eq!(status(&mut service, admin).await, StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn missing_keys_are_refused_or_let_through_as_configured() {
    let api_key = || Header::new(HeaderName::from_static("x-api-key"));
    let strict = RateLimitLayer::builder()
        .policy(Policy::token_bucket(
            "per-key",
            api_key(),
            Quota::per_hour(1),
        ))
        .build()
        .expect("valid layer");
    let lenient = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("per-key", api_key(), Quota::per_hour(1))
                .on_key_error(OnKeyError::Unlimited),
        )
        .build()
        .expect("valid layer");
    let mut strict = strict.layer(counting_service(Arc::default()));
    let mut lenient = lenient.layer(counting_service(Arc::default()));
    assert_eq!(
        status(&mut strict, request_from([192, 0, 2, 1])).await,
        StatusCode::BAD_REQUEST
    );
    for _ in 0..3 {
        assert_eq!(
            status(&mut lenient, request_from([192, 0, 2, 1])).await,
            StatusCode::OK
        );
    }
    // No peer address at all: a 500 that says nothing about the server's set-up.
    let mut per_ip = per_ip(Quota::per_hour(1)).layer(counting_service(Arc::default()));
    let bare = Request::new(Body::default());
    assert_eq!(
        status(&mut per_ip, bare).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test(start_paused = true)]
async fn costs_are_charged_and_a_cost_above_the_burst_is_refused_distinctly() {
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("weighted", Global, Quota::per_hour(10)).cost(|request| {
                request
                    .headers()
                    .get("x-cost")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(1)
            }),
        )
        .build()
        .expect("valid layer");
    let mut service = layer.layer(counting_service(Arc::default()));
    let costing = |cost: &'static str| {
        let mut request = request_from([192, 0, 2, 1]);
        request
            .headers_mut()
            .insert("x-cost", http::HeaderValue::from_static(cost));
        request
    };
    let too_big = service
        .ready()
        .await
        .expect("ready")
        .call(costing("11"))
        .await
        .expect("infallible");
    assert_eq!(too_big.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        too_big
            .extensions()
            .get::<Rejection>()
            .map(Rejection::reason),
        Some(Reason::CostExceedsQuota)
    );
    assert_eq!(status(&mut service, costing("7")).await, StatusCode::OK);
    assert_eq!(
        status(&mut service, costing("4")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status(&mut service, costing("3")).await, StatusCode::OK);
    assert_eq!(status(&mut service, costing("0")).await, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_full_key_table_never_resets_an_active_client() {
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("per-ip", ClientIp::new(), Quota::per_hour(2))
                .max_keys(1_000, OnFull::Overflow)
                // Swept by hand below, so the background sweep must not run first.
                .sweep_interval(Duration::from_secs(86_400 * 365)),
        )
        .build()
        .expect("valid layer");
    let handle = layer.policy("per-ip").expect("the policy exists");
    let mut service = layer.layer(counting_service(Arc::default()));
    let victim = [10, 0, 0, 1];
    assert_eq!(
        status(&mut service, request_from(victim)).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut service, request_from(victim)).await,
        StatusCode::OK
    );
    // A flood of distinct addresses: far more than fit.
    for i in 0..1_000_000_u32 {
        let _ = status(&mut service, request_from((0x0b00_0000 + i).to_be_bytes())).await;
    }
    assert_eq!(handle.tracked_keys(), 1_000);
    assert_eq!(
        status(&mut service, request_from(victim)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Only fresh keys go, and only after their quota has refilled (the sweep judges
    // freshness a second in the past).
    assert_eq!(handle.sweep(), 0);
    tokio::time::advance(Duration::from_secs(3601)).await;
    assert_eq!(handle.sweep(), 1_000);
    assert_eq!(
        status(&mut service, request_from(victim)).await,
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_key_table_can_refuse_new_keys_instead() {
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("per-ip", ClientIp::new(), Quota::per_hour(2))
                .max_keys(1, OnFull::Reject),
        )
        .build()
        .expect("valid layer");
    let mut service = layer.layer(counting_service(Arc::default()));
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 1])).await,
        StatusCode::OK
    );
    let refused = service
        .ready()
        .await
        .expect("ready")
        .call(request_from([192, 0, 2, 2]))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "10");
}

#[tokio::test(start_paused = true)]
async fn the_background_sweep_drops_fresh_keys_and_stops_with_the_layer() {
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("per-ip", ClientIp::new(), Quota::per_second(1))
                .sweep_interval(Duration::from_secs(5)),
        )
        .build()
        .expect("valid layer");
    let handle = layer.policy("per-ip").expect("the policy exists");
    let mut service = layer.layer(counting_service(Arc::default()));
    for i in 0..100_u8 {
        let _ = status(&mut service, request_from([192, 0, 2, i])).await;
    }
    assert_eq!(handle.tracked_keys(), 100);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(handle.tracked_keys(), 0);
    drop((service, layer));
    let policy = Arc::downgrade(&handle.policy_arc());
    drop(handle);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        policy.upgrade().is_none(),
        "the sweeper keeps nothing alive"
    );
}

#[tokio::test(start_paused = true)]
async fn changing_the_quota_keeps_each_clients_state() {
    let layer = per_ip(Quota::per_hour(2));
    let handle = layer.policy("per-ip").expect("the policy exists");
    let mut service = layer.layer(counting_service(Arc::default()));
    let ip = [192, 0, 2, 1];
    assert_eq!(status(&mut service, request_from(ip)).await, StatusCode::OK);
    assert_eq!(status(&mut service, request_from(ip)).await, StatusCode::OK);
    handle.set_quota(Quota::per_hour(4)).expect("a valid quota");
    // Still empty: the change gives nobody a fresh bucket...
    assert_eq!(
        status(&mut service, request_from(ip)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...and it refills at the new rate, one every 900 s rather than 1800 s.
    tokio::time::advance(Duration::from_secs(900)).await;
    assert_eq!(status(&mut service, request_from(ip)).await, StatusCode::OK);
    assert_eq!(
        status(&mut service, request_from(ip)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // An idle client gets the new, larger burst.
    for _ in 0..4 {
        assert_eq!(
            status(&mut service, request_from([192, 0, 2, 2])).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        handle.set_quota(Quota::per_hour(0)),
        Err(crate::QuotaError::ZeroCount)
    );
    assert_eq!(handle.quota(), Quota::per_hour(4));
}

#[tokio::test(start_paused = true)]
async fn legacy_and_draft_headers_on_admitted_responses() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::token_bucket("a", Global, Quota::per_minute(10)).headers(HeaderStyle::Both))
        .policy(
            Policy::sliding_window("b", Global, Quota::per_minute(3)).headers(HeaderStyle::Both),
        )
        .policy(
            Policy::token_bucket("hidden", Global, Quota::per_minute(100))
                .headers(HeaderStyle::None),
        )
        .build()
        .expect("valid layer");
    let mut service = layer.layer(counting_service(Arc::default()));
    let response = service
        .ready()
        .await
        .expect("ready")
        .call(request_from([192, 0, 2, 1]))
        .await
        .expect("infallible");
    let header = |name: &str| response.headers()[name].to_str().expect("ascii").to_owned();
    assert_eq!(header("ratelimit-policy"), r#""a";q=10;w=60, "b";q=3;w=60"#);
    assert_eq!(header("ratelimit"), r#""a";r=9;t=6, "b";r=2;t=120"#);
    assert_eq!(
        (
            header("x-ratelimit-limit"),
            header("x-ratelimit-remaining"),
            header("x-ratelimit-reset")
        ),
        ("3".into(), "2".into(), "120".into())
    );
}

#[test]
fn invalid_layers_are_refused_when_built() {
    use crate::ConfigError;
    let bad_name = RateLimitLayer::builder()
        .policy(Policy::token_bucket("per ip", Global, Quota::per_second(1)))
        .build();
    assert_eq!(bad_name.err(), Some(ConfigError::Name("per ip".into())));
    let zero = RateLimitLayer::builder()
        .policy(Policy::token_bucket("zero", Global, Quota::per_second(0)))
        .build();
    assert!(matches!(zero, Err(ConfigError::Quota { .. })));
    let burst = RateLimitLayer::builder()
        .policy(Policy::sliding_window(
            "w",
            Global,
            Quota::per_second(1).burst(3),
        ))
        .build();
    assert!(matches!(
        burst,
        Err(ConfigError::Quota {
            error: crate::QuotaError::BurstWithSlidingWindow,
            ..
        })
    ));
    let twice = RateLimitLayer::builder()
        .policy(Policy::token_bucket("x", Global, Quota::per_second(1)))
        .policy(Policy::token_bucket("x", Global, Quota::per_second(1)))
        .build();
    assert_eq!(twice.err(), Some(ConfigError::DuplicateName("x".into())));
    // The first policy refused is the one named, even when a later one is refused too.
    let first = RateLimitLayer::builder()
        .policy(Policy::token_bucket("zero", Global, Quota::per_second(0)))
        .policy(Policy::token_bucket(
            "bad name",
            Global,
            Quota::per_second(1),
        ))
        .build();
    assert!(matches!(first, Err(ConfigError::Quota { policy, .. }) if policy == "zero"));
    assert_eq!(
        RateLimitLayer::builder().build().err(),
        Some(ConfigError::NoPolicies)
    );
    assert!(
        ConfigError::NoPolicies
            .to_string()
            .contains("at least one policy")
    );
}

/// The counter clock does not follow paused time, so only what needs no time to pass is
/// checked: the burst is admitted and the next request refused, with the true wait.
#[tokio::test]
async fn a_layer_on_the_counter_clock_enforces_its_quota() {
    let layer = RateLimitLayer::builder()
        .clock(floodgate_core::clock::Clock::counter())
        .policy(Policy::token_bucket(
            "per-ip",
            ClientIp::new(),
            Quota::per_hour(1).burst(2),
        ))
        .build()
        .expect("valid layer");
    let mut service = layer.layer(counting_service(Arc::default()));
    for _ in 0..2 {
        assert_eq!(
            status(&mut service, request_from([192, 0, 2, 1])).await,
            StatusCode::OK
        );
    }
    let refused = respond(&mut service, request_from([192, 0, 2, 1])).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("seconds");
    // One token an hour: the wait is within a second or so of the full hour.
    assert!((3598..=3600).contains(&retry_after), "{retry_after}");
}

#[tokio::test(start_paused = true)]
async fn decisions_are_counted_per_policy() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut service = per_ip(Quota::per_hour(2)).layer(counting_service(Arc::default()));
    for _ in 0..5 {
        let _ = status(&mut service, request_from([192, 0, 2, 1])).await;
    }
    let counters: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(count) => Some((key.key().name().to_owned(), count)),
            _ => None,
        })
        .filter(|(name, _)| name.starts_with("floodgate_ratelimit_"))
        .collect();
    let count = |name: &str| {
        counters
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| *c)
    };
    assert_eq!(count("floodgate_ratelimit_admitted_total"), 2);
    assert_eq!(count("floodgate_ratelimit_rejected_total"), 3);
}

#[tokio::test(start_paused = true)]
async fn dry_run_lets_requests_through_even_without_a_key_or_room() {
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket(
                "shadow",
                Header::new(HeaderName::from_static("x-api-key")),
                Quota::per_hour(1),
            )
            .mode(Mode::DryRun)
            .max_keys(1, OnFull::Reject),
        )
        .build()
        .expect("valid layer");
    let mut service = layer.layer(counting_service(Arc::default()));
    // No key at all.
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 1])).await,
        StatusCode::OK
    );
    // A key, then a second one that finds the table full.
    for key in ["a", "b", "b"] {
        let mut request = request_from([192, 0, 2, 1]);
        request
            .headers_mut()
            .insert("x-api-key", http::HeaderValue::from_static(key));
        assert_eq!(status(&mut service, request).await, StatusCode::OK);
    }
}

#[test]
fn a_zero_sweep_interval_is_refused() {
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("p", Global, Quota::per_second(1)).sweep_interval(Duration::ZERO),
        )
        .build();
    assert_eq!(
        layer.err(),
        Some(crate::ConfigError::SweepInterval("p".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contended_sliding_window_admits_exactly_its_limit() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::builder()
        .policy(Policy::sliding_window(
            "window",
            Global,
            Quota::per_hour(100),
        ))
        .build()
        .expect("valid layer");
    let service = layer.layer(counting_service(Arc::clone(&calls)));
    let tasks: Vec<_> = (0..1_000_u32)
        .map(|i| {
            let service = service.clone();
            tokio::spawn(async move {
                service
                    .oneshot(request_from([
                        192,
                        0,
                        2,
                        u8::try_from(i % 200).unwrap_or(0),
                    ]))
                    .await
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.expect("no panic").is_ok());
    }
    assert_eq!(calls.load(Ordering::Relaxed), 100);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_request_holds_nothing_downstream_while_it_waits() {
    // Behind a concurrency limit of 1, a request waiting for its quota must not keep the
    // permit that a ready service holds, or every other client would wait with it.
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("per-ip", ClientIp::new(), Quota::per_second(1)).mode(
                Mode::Delay {
                    max_wait: Duration::from_secs(5),
                },
            ),
        )
        .build()
        .expect("valid layer");
    let limited =
        tower::limit::ConcurrencyLimitLayer::new(1).layer(counting_service(Arc::default()));
    let mut service = layer.layer(limited);
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 1])).await,
        StatusCode::OK
    );
    let waiting = service
        .ready()
        .await
        .expect("ready")
        .call(request_from([192, 0, 2, 1]));
    let waiting = tokio::spawn(waiting);
    let start = tokio::time::Instant::now();
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 2])).await,
        StatusCode::OK
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the other client waited {:?}",
        start.elapsed()
    );
    let delayed = waiting.await.expect("no panic").expect("infallible");
    assert_eq!(delayed.status(), StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_secs(1));
}

/// Two threads hammering one key, with no runtime between them: each algorithm's
/// compare-and-swap admits exactly the quota, never one more.
#[test]
fn two_threads_on_one_key_admit_exactly_the_quota() {
    use crate::{Algorithm, KeyedLimiter};
    for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingWindow] {
        let limiter: KeyedLimiter<u32> =
            KeyedLimiter::new(algorithm, Quota::new(5_000, Duration::from_secs(86_400)))
                .expect("valid quota");
        let admitted = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for _ in 0..20_000 {
                        if limiter.check(&7).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 5_000, "{algorithm:?}");
    }
}
