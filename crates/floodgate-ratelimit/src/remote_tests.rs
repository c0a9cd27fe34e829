//! The layer with a remote store, against a scripted store: one call per request, local
//! refusals, deadlines and the failure policy. The store's own exactness is tested where
//! a store is implemented (`floodgate-redis`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use floodgate_core::key::{ClientIp, Header};
use http::{HeaderName, Method, Request, StatusCode};
use tower::Layer;

use crate::tests::{Body, counting_service, request_from, respond, status};
use crate::{
    Check, Mode, OnStoreError, Policy, Quota, RateLimitLayer, RateLimitStore, StoreDecision,
    StoreError, StoreFuture,
};

/// What the scripted store answers to one call.
type Answer = Box<dyn Fn(&[Check]) -> Result<Vec<StoreDecision>, StoreError> + Send + Sync>;

/// A store that records every call and answers as its script says, or never.
#[derive(Clone)]
struct ScriptedStore {
    calls: Arc<Mutex<Vec<Vec<Check>>>>,
    answer: Option<Arc<Answer>>,
}

impl std::fmt::Debug for ScriptedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedStore").finish_non_exhaustive()
    }
}

impl ScriptedStore {
    fn answering(
        answer: impl Fn(&[Check]) -> Result<Vec<StoreDecision>, StoreError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            calls: Arc::default(),
            answer: Some(Arc::new(Box::new(answer))),
        }
    }

    /// A store that never answers.
    fn silent() -> Self {
        Self {
            calls: Arc::default(),
            answer: None,
        }
    }

    fn calls(&self) -> Vec<Vec<Check>> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl RateLimitStore for ScriptedStore {
    fn check(&self, checks: Vec<Check>) -> StoreFuture {
        let answer = self.answer.as_ref().map(|answer| answer(&checks));
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(checks);
        Box::pin(async move {
            match answer {
                Some(answer) => answer,
                None => std::future::pending().await,
            }
        })
    }
}

fn allowed(remaining: u64) -> StoreDecision {
    StoreDecision {
        allowed: true,
        remaining,
        reset_after: Duration::from_secs(1),
        retry_after: Duration::ZERO,
    }
}

fn refused(retry_after: Duration) -> StoreDecision {
    StoreDecision {
        allowed: false,
        remaining: 0,
        reset_after: retry_after,
        retry_after,
    }
}

fn api_key() -> Header {
    Header::new(HeaderName::from_static("x-api-key"))
}

fn with_key(mut request: Request<Body>, key: &'static str) -> Request<Body> {
    request
        .headers_mut()
        .insert("x-api-key", http::HeaderValue::from_static(key));
    request
}

fn per_ip_layer(store: ScriptedStore, on_error: OnStoreError) -> RateLimitLayer {
    RateLimitLayer::builder()
        .policy(Policy::token_bucket(
            "per-ip",
            ClientIp::new(),
            Quota::per_second(10),
        ))
        .store(store)
        .on_store_error(on_error)
        .build()
        .expect("valid layer")
}

#[tokio::test(start_paused = true)]
async fn every_policy_of_a_request_goes_to_the_store_in_one_call() {
    let store = ScriptedStore::answering(|checks| Ok(checks.iter().map(|_| allowed(7)).collect()));
    let layer = RateLimitLayer::builder()
        .policy(Policy::token_bucket(
            "per-ip",
            ClientIp::new(),
            Quota::per_second(10),
        ))
        .policy(
            Policy::sliding_window("writes", api_key(), Quota::per_minute(5))
                .methods([Method::POST]),
        )
        .policy(Policy::token_bucket("audit", api_key(), Quota::per_hour(1)).mode(Mode::DryRun))
        .store(store.clone())
        .build()
        .expect("valid layer");
    let mut service = layer.layer(counting_service(Arc::default()));
    let post = with_key(
        crate::tests::request(Method::POST, "/items", [192, 0, 2, 1]),
        "team-a",
    );
    let response = respond(&mut service, post).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["ratelimit"],
        r#""per-ip";r=7;t=1, "writes";r=7;t=1, "audit";r=7;t=1"#
    );

    let calls = store.calls();
    assert_eq!(calls.len(), 1, "one call for the whole request");
    let seen: Vec<(&str, &str, u32, bool)> = calls[0]
        .iter()
        .map(|check| (check.policy(), check.key(), check.cost(), check.enforced()))
        .collect();
    assert_eq!(
        seen,
        [
            ("per-ip", "IpKey(192.0.2.1)", 1, true),
            ("writes", "\"team-a\"", 1, true),
            ("audit", "\"team-a\"", 1, false),
        ]
    );
    assert_eq!(calls[0][1].quota(), Quota::per_minute(5));

    // A GET meets only the policies that apply to it.
    let _ = status(&mut service, request_from([192, 0, 2, 1])).await;
    assert_eq!(store.calls()[1].len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_store_refusal_holds_locally_until_its_retry_time() {
    let store = ScriptedStore::answering(|checks| {
        Ok(checks
            .iter()
            .map(|check| {
                if check.key().contains("192.0.2.1") {
                    refused(Duration::from_millis(1500))
                } else {
                    allowed(1)
                }
            })
            .collect())
    });
    let mut service =
        per_ip_layer(store.clone(), OnStoreError::FailOpen).layer(counting_service(Arc::default()));
    let refusal = respond(&mut service, request_from([192, 0, 2, 1])).await;
    assert_eq!(refusal.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refusal.headers()["retry-after"], "2");
    assert_eq!(refusal.headers()["ratelimit"], r#""per-ip";r=0;t=2"#);
    assert_eq!(store.calls().len(), 1);

    // The flood from that client costs the store nothing while the refusal holds ...
    for _ in 0..10 {
        assert_eq!(
            status(&mut service, request_from([192, 0, 2, 1])).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(store.calls().len(), 1);
    // ... other clients are asked about as usual ...
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 2])).await,
        StatusCode::OK
    );
    assert_eq!(store.calls().len(), 2);
    // ... and once the retry time has passed, the store is asked again.
    tokio::time::advance(Duration::from_millis(1500)).await;
    let _ = status(&mut service, request_from([192, 0, 2, 1])).await;
    assert_eq!(store.calls().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_admits_or_refuses_as_configured_and_is_counted() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let failing = || {
        ScriptedStore::answering(|_| {
            Err(StoreError::Unavailable(
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
            ))
        })
    };

    let mut open =
        per_ip_layer(failing(), OnStoreError::FailOpen).layer(counting_service(Arc::default()));
    let admitted = respond(&mut open, request_from([192, 0, 2, 1])).await;
    assert_eq!(admitted.status(), StatusCode::OK);
    assert!(
        admitted.headers().get("ratelimit").is_none(),
        "no decision, no numbers"
    );

    let mut closed =
        per_ip_layer(failing(), OnStoreError::FailClosed).layer(counting_service(Arc::default()));
    for _ in 0..2 {
        let refused = respond(&mut closed, request_from([192, 0, 2, 1])).await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["retry-after"], "1");
    }

    let errors: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "floodgate_ratelimit_store_errors_total")
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(count) => {
                let outcome = key
                    .key()
                    .labels()
                    .next()
                    .map(|label| label.value().to_owned());
                Some((outcome.unwrap_or_default(), count))
            }
            _ => None,
        })
        .collect();
    assert!(errors.contains(&("fail_open".to_owned(), 1)), "{errors:?}");
    assert!(
        errors.contains(&("fail_closed".to_owned(), 2)),
        "{errors:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_slower_than_the_deadline_has_failed() {
    for (on_error, expected) in [
        (OnStoreError::FailOpen, StatusCode::OK),
        (OnStoreError::FailClosed, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let layer = RateLimitLayer::builder()
            .policy(Policy::token_bucket(
                "per-ip",
                ClientIp::new(),
                Quota::per_second(10),
            ))
            .store(ScriptedStore::silent())
            .store_deadline(Duration::from_millis(20))
            .on_store_error(on_error)
            .build()
            .expect("valid layer");
        let mut service = layer.layer(counting_service(Arc::default()));
        let start = tokio::time::Instant::now();
        assert_eq!(
            status(&mut service, request_from([192, 0, 2, 1])).await,
            expected
        );
        assert_eq!(start.elapsed(), Duration::from_millis(20));
    }
}

#[tokio::test(start_paused = true)]
async fn delay_mode_waits_out_a_store_refusal_and_asks_again() {
    let store = ScriptedStore::answering({
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        move |checks| {
            let call = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(checks
                .iter()
                .map(|_| {
                    if call == 0 {
                        refused(Duration::from_millis(300))
                    } else {
                        allowed(0)
                    }
                })
                .collect())
        }
    });
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("per-ip", ClientIp::new(), Quota::per_second(10)).mode(
                Mode::Delay {
                    max_wait: Duration::from_secs(1),
                },
            ),
        )
        .store(store.clone())
        .build()
        .expect("valid layer");
    let mut service = layer.layer(counting_service(Arc::default()));
    let start = tokio::time::Instant::now();
    assert_eq!(
        status(&mut service, request_from([192, 0, 2, 1])).await,
        StatusCode::OK
    );
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(store.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_request_no_policy_counts_never_reaches_the_store() {
    let store = ScriptedStore::silent();
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("per-ip", ClientIp::new(), Quota::per_second(10))
                .exempt(|request| request.uri().path() == "/health"),
        )
        .store(store.clone())
        .build()
        .expect("valid layer");
    let mut service = layer.layer(counting_service(Arc::default()));
    let health = crate::tests::request(Method::GET, "/health", [192, 0, 2, 1]);
    assert_eq!(status(&mut service, health).await, StatusCode::OK);
    assert!(store.calls().is_empty());
}

#[test]
fn a_zero_store_deadline_is_refused() {
    let built = RateLimitLayer::builder()
        .policy(Policy::token_bucket(
            "per-ip",
            ClientIp::new(),
            Quota::per_second(10),
        ))
        .store(ScriptedStore::silent())
        .store_deadline(Duration::ZERO)
        .build();
    assert_eq!(built.err(), Some(crate::ConfigError::StoreDeadline));
}
