//! `RateLimitLayer` on a `RedisStore`, against a real `redis-server`: the acceptance of the
//! Redis issue at the layer, where replicas meet their users.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use floodgate_core::key::ClientIp;
use floodgate_ratelimit::{OnStoreError, Policy, Quota, RateLimitLayer};
use floodgate_redis::RedisStore;
use http::{Request, Response, StatusCode};
use support::{RedisServer, command_calls};
use tower::{Layer, Service, ServiceExt};

type Body = http_body_util::Full<bytes::Bytes>;
/// Makes a replica's policy (a `Policy` is not `Clone`: it may hold closures).
type MakePolicy = fn() -> Policy<ClientIp>;

macro_rules! redis_server {
    () => {
        match RedisServer::new() {
            Some(server) => server,
            None => return,
        }
    };
}

/// A replica: its own store (its own connection) and its own layer, in front of a service
/// that always answers 200.
async fn replica(
    server: &RedisServer,
    policy: MakePolicy,
    on_error: OnStoreError,
) -> impl Service<
    Request<Body>,
    Response = Response<floodgate_core::body::ResponseBody<Body>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    let store = RedisStore::connect(&server.url())
        .await
        .expect("Redis is up");
    RateLimitLayer::builder()
        .policy(policy())
        .store(store)
        // Generous: this machine runs the suite on two cores. The outage test shortens it.
        .store_deadline(Duration::from_millis(500))
        .on_store_error(on_error)
        .build()
        .expect("valid layer")
        .layer(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::from("ok")))
        }))
}

fn from(ip: [u8; 4]) -> Request<Body> {
    let mut request = Request::new(Body::default());
    request
        .extensions_mut()
        .insert(SocketAddr::from((ip, 4711)));
    request
}

async fn status<S>(service: &S, request: Request<Body>) -> StatusCode
where
    S: Service<
            Request<Body>,
            Response = Response<floodgate_core::body::ResponseBody<Body>>,
            Error = Infallible,
        > + Clone,
{
    service
        .clone()
        .oneshot(request)
        .await
        .expect("infallible")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_enforce_one_quota_exactly_for_both_algorithms() {
    let server = redis_server!();
    let policies: [(&str, MakePolicy); 2] = [
        ("token bucket", || {
            Policy::token_bucket("per-ip", ClientIp::new(), Quota::per_hour(100))
        }),
        ("sliding window", || {
            Policy::sliding_window("window", ClientIp::new(), Quota::per_hour(100))
        }),
    ];
    for (name, policy) in policies {
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(replica(&server, policy, OnStoreError::FailClosed).await);
        }
        let mut requests = Vec::new();
        for replica in &replicas {
            for _ in 0..60 {
                let replica = replica.clone();
                requests.push(tokio::spawn(async move {
                    status(&replica, from([203, 0, 113, 7])).await
                }));
            }
        }
        let mut admitted = 0;
        let mut refused = 0;
        for request in requests {
            match request.await.expect("no panic") {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => refused += 1,
                other => panic!("{name}: unexpected {other}"),
            }
        }
        assert_eq!((admitted, refused), (100, 80), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_costs_redis_nothing_while_the_refusal_holds() {
    let server = redis_server!();
    let mut redis = server.connection();
    let service = replica(
        &server,
        || Policy::token_bucket("per-ip", ClientIp::new(), Quota::per_hour(2)),
        OnStoreError::FailOpen,
    )
    .await;
    // Loads the script, so that the counts below are of steady-state calls only.
    assert_eq!(status(&service, from([192, 0, 2, 1])).await, StatusCode::OK);
    let before = command_calls(&mut redis);
    assert_eq!(status(&service, from([192, 0, 2, 1])).await, StatusCode::OK);
    assert_eq!(
        status(&service, from([192, 0, 2, 1])).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..50 {
        assert_eq!(
            status(&service, from([192, 0, 2, 1])).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let after = command_calls(&mut redis);
    let evalsha =
        |calls: &std::collections::HashMap<String, u64>| calls.get("evalsha").copied().unwrap_or(0);
    assert_eq!(
        evalsha(&after) - evalsha(&before),
        2,
        "one call per decision, none while the refusal holds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_open_or_closed_then_decisions_resume() {
    let mut server = redis_server!();
    let _ = new_store_errors();
    let policy = || Policy::token_bucket("per-ip", ClientIp::new(), Quota::per_hour(1000));
    let open = replica(&server, policy, OnStoreError::FailOpen).await;
    let closed = replica(&server, policy, OnStoreError::FailClosed).await;
    assert_eq!(status(&open, from([192, 0, 2, 1])).await, StatusCode::OK);
    assert_eq!(status(&closed, from([192, 0, 2, 1])).await, StatusCode::OK);

    server.stop();
    // The layer's deadline bounds every request; this bound only stops a hang.
    let bounded = |service, request| async move {
        tokio::time::timeout(Duration::from_secs(3), status(service, request))
            .await
            .expect("no request hangs past the store's deadline")
    };
    for _ in 0..5 {
        assert_eq!(bounded(&open, from([192, 0, 2, 1])).await, StatusCode::OK);
        let refused = closed
            .clone()
            .oneshot(from([192, 0, 2, 1]))
            .await
            .expect("infallible");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["retry-after"], "1");
    }

    server.start();
    // The connection comes back by itself; give it a bounded number of tries.
    let mut resumed = false;
    for _ in 0..100 {
        let response = closed
            .clone()
            .oneshot(from([192, 0, 2, 1]))
            .await
            .expect("infallible");
        if response.status() == StatusCode::OK && response.headers().contains_key("ratelimit") {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed, "decisions resume once Redis is back");
    // Once back, every request is decided by Redis again, and the error count stops rising.
    let errors = new_store_errors();
    assert!(errors >= 10, "the outage was counted: {errors}");
    for _ in 0..10 {
        let response = closed
            .clone()
            .oneshot(from([192, 0, 2, 1]))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().contains_key("ratelimit"));
    }
    assert_eq!(new_store_errors(), 0, "no errors once Redis is back");
}

/// `floodgate_ratelimit_store_errors_total` counted since the last call (a snapshot of the
/// debugging recorder drains its counters), all outcomes. Only the outage test makes the
/// store fail.
fn new_store_errors() -> u64 {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    static SNAPSHOTTER: std::sync::OnceLock<Snapshotter> = std::sync::OnceLock::new();
    let snapshotter = SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::set_global_recorder(recorder).expect("the only recorder of this binary");
        snapshotter
    });
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "floodgate_ratelimit_store_errors_total")
        .map(|(_, _, _, value)| match value {
            DebugValue::Counter(count) => count,
            _ => 0,
        })
        .sum()
}
