//! `RedisStore` against a real `redis-server` started by each test (see `support`).

mod support;

use std::time::Duration;

use floodgate_ratelimit::{Algorithm, Check, Quota, RateLimitStore, StoreDecision, StoreError};
use floodgate_redis::{RedisStore, RedisStoreError};
use support::{RedisServer, SECOND, TestClock, command_calls};

/// Decisions measured by `each_decision_is_one_evalsha`.
const CALLS: u64 = 25;

/// Starts this test's Redis, or skips the test (returns) when there is none.
macro_rules! redis_server {
    () => {
        match RedisServer::new() {
            Some(server) => server,
            None => return,
        }
    };
}

fn token_bucket(key: &str, quota: Quota, cost: u32) -> Check {
    Check::new("bucket", key, Algorithm::TokenBucket, quota, cost)
}

fn window(key: &str, quota: Quota, cost: u32) -> Check {
    Check::new("window", key, Algorithm::SlidingWindow, quota, cost)
}

async fn decide(store: &RedisStore, checks: Vec<Check>) -> Vec<StoreDecision> {
    store.check(checks).await.expect("the store decides")
}

async fn decide_one(store: &RedisStore, check: Check) -> StoreDecision {
    decide(store, vec![check]).await[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_together_admit_exactly_the_quota() {
    let server = redis_server!();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(
            RedisStore::connect(&server.url())
                .await
                .expect("Redis is up"),
        );
    }
    for check in [
        token_bucket("shared-client", Quota::per_hour(100), 1),
        window("shared-client", Quota::per_hour(100), 1),
    ] {
        let mut tasks = Vec::new();
        for replica in &replicas {
            for _ in 0..50 {
                let (replica, check) = (replica.clone(), check.clone());
                tasks.push(tokio::spawn(async move {
                    decide_one(&replica, check).await.allowed
                }));
            }
        }
        let mut admitted = 0;
        for task in tasks {
            if task.await.expect("the task ran") {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 100, "{:?}", check.algorithm());
        let after = decide_one(&replicas[0], check.clone()).await;
        assert!(!after.allowed);
        assert_eq!(after.remaining, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_check_charges_no_other_check_of_the_request() {
    let server = redis_server!();
    let store = RedisStore::connect(&server.url())
        .await
        .expect("Redis is up");
    for (first, second) in [
        (
            token_bucket("ip-1", Quota::per_hour(10), 1),
            Check::new(
                "api-key",
                "key-1",
                Algorithm::TokenBucket,
                Quota::per_hour(1),
                1,
            ),
        ),
        (
            window("ip-1", Quota::per_hour(10), 1),
            Check::new(
                "api-key",
                "key-1",
                Algorithm::SlidingWindow,
                Quota::per_hour(1),
                1,
            ),
        ),
    ] {
        // Use up the second policy's quota.
        assert!(decide_one(&store, second.clone()).await.allowed);
        let both = decide(&store, vec![first.clone(), second.clone()]).await;
        assert!(both[0].allowed, "the first check fits");
        assert!(!both[1].allowed, "the second is over quota");
        // The request was refused, so the first policy was not charged: alone, it still
        // finds its whole quota, and this check takes the first unit of it.
        let alone = decide_one(&store, first).await;
        assert!(alone.allowed);
        assert_eq!(alone.remaining, 9, "{:?}", second.algorithm());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_checked_twice_in_one_request_sees_its_own_charge() {
    let server = redis_server!();
    let clock = TestClock::new();
    let store = clock.store(&server).await;
    for check in [
        token_bucket("twice", Quota::per_hour(3), 2),
        window("twice", Quota::per_hour(3), 2),
    ] {
        let decisions = decide(&store, vec![check.clone(), check.clone()]).await;
        assert!(decisions[0].allowed);
        assert!(!decisions[1].allowed, "2 + 2 > 3: {:?}", check.algorithm());
        // Refused together, so neither was charged.
        assert_eq!(decide_one(&store, check).await.remaining, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_that_is_not_floodgate_s_fails_instead_of_resetting() {
    let server = redis_server!();
    let store = RedisStore::connect(&server.url())
        .await
        .expect("Redis is up");
    let mut redis = server.connection();
    let set = |redis: &mut redis::Connection, key: String, value: &str| {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query(redis)
            .expect("SET");
    };
    set(
        &mut redis,
        store.key_for("bucket", "garbled"),
        "g:not-a-time",
    );
    let answer = store
        .check(vec![token_bucket("garbled", Quota::per_hour(3), 1)])
        .await;
    assert!(matches!(answer, Err(StoreError::Failed(_))), "{answer:?}");
    let _: () = redis::cmd("HSET")
        .arg(store.key_for("window", "hash"))
        .arg("f")
        .arg("v")
        .query(&mut redis)
        .expect("HSET");
    let answer = store
        .check(vec![window("hash", Quota::per_hour(3), 1)])
        .await;
    assert!(matches!(answer, Err(StoreError::Failed(_))), "{answer:?}");
    // A policy that changed algorithm finds the other algorithm's state: it starts afresh.
    set(&mut redis, store.key_for("bucket", "changed"), "w:1:3:3");
    let fresh = decide_one(&store, token_bucket("changed", Quota::per_hour(3), 1)).await;
    assert!(fresh.allowed);
    assert_eq!(fresh.remaining, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_refusal_refuses_nothing_and_is_not_charged() {
    let server = redis_server!();
    let clock = TestClock::new();
    let store = clock.store(&server).await;
    let enforced = token_bucket("ip-2", Quota::per_hour(10), 1);
    let trial = Check::new(
        "trial",
        "ip-2",
        Algorithm::SlidingWindow,
        Quota::per_hour(2),
        1,
    );
    // The dry run fits twice: it is charged like any check.
    for remaining in [1, 0] {
        let decisions = decide(&store, vec![enforced.clone(), trial.clone().dry_run()]).await;
        assert!(decisions[0].allowed && decisions[1].allowed);
        assert_eq!(decisions[1].remaining, remaining);
    }
    // Then it is over quota, and the enforced check is still admitted and charged.
    let decisions = decide(&store, vec![enforced.clone(), trial.clone().dry_run()]).await;
    assert!(decisions[0].allowed);
    assert_eq!(decisions[0].remaining, 7);
    assert!(!decisions[1].allowed);
    assert_eq!(decisions[1].remaining, 0);
    // The refused dry run wrote nothing: one window on, the previous window holds two, not
    // three, so a request fits once 2·(1 − x) + 1 ≤ 2, at x = ½ (three would need x = ⅔).
    clock.advance(3_600 * SECOND);
    let next = decide_one(&store, trial).await;
    assert!(!next.allowed);
    assert_eq!(next.retry_after, Duration::from_secs(1_800));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_above_one_per_millisecond_keep_their_precision() {
    let server = redis_server!();
    let clock = TestClock::new();
    let store = clock.store(&server).await;

    // 5000 per second: one every 200 µs, and a burst of 5000.
    let quota = Quota::per_second(5000);
    let burst = decide_one(&store, token_bucket("fast", quota, 5000)).await;
    assert!(burst.allowed);
    assert_eq!(burst.remaining, 0);
    assert_eq!(burst.reset_after, Duration::from_secs(1));
    let refused = decide_one(&store, token_bucket("fast", quota, 1)).await;
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after, Duration::from_micros(200));
    clock.advance(199);
    let almost = decide_one(&store, token_bucket("fast", quota, 1)).await;
    assert!(!almost.allowed);
    assert_eq!(almost.retry_after, Duration::from_micros(1));
    clock.advance(1);
    assert!(
        decide_one(&store, token_bucket("fast", quota, 1))
            .await
            .allowed
    );
    // A millisecond refills five.
    clock.advance(1_000);
    let five = decide_one(&store, token_bucket("fast", quota, 5)).await;
    assert!(five.allowed);
    assert_eq!(five.remaining, 0);
    assert!(
        !decide_one(&store, token_bucket("fast", quota, 1))
            .await
            .allowed
    );

    // A million per second is one per microsecond, not zero per millisecond.
    let quota = Quota::per_second(1_000_000).burst(1);
    for _ in 0..10 {
        assert!(
            decide_one(&store, token_bucket("faster", quota, 1))
                .await
                .allowed
        );
        let again = decide_one(&store, token_bucket("faster", quota, 1)).await;
        assert!(!again.allowed);
        assert_eq!(again.retry_after, Duration::from_micros(1));
        clock.advance(1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_expires_when_its_state_is_fresh_again() {
    let server = redis_server!();
    let clock = TestClock::new();
    let store = clock.store(&server).await;
    let mut redis = server.connection();
    let pttl = |redis: &mut redis::Connection, key: String| -> i64 {
        redis::cmd("PTTL").arg(key).query(redis).expect("PTTL")
    };

    // A token bucket refilling one a second: full again one second after a unit request.
    let bucket = token_bucket("ttl", Quota::per_minute(60).burst(10), 1);
    assert!(decide_one(&store, bucket.clone()).await.allowed);
    let ttl = pttl(&mut redis, store.key_for("bucket", "ttl"));
    // Each TTL is the time until fresh plus a second's margin for clock skew.
    assert!(ttl > 1_000 && ttl <= 2_000, "token bucket PTTL {ttl}");
    // Three more: three seconds ahead.
    assert!(
        decide_one(
            &store,
            token_bucket("ttl", Quota::per_minute(60).burst(10), 3)
        )
        .await
        .allowed
    );
    let ttl = pttl(&mut redis, store.key_for("bucket", "ttl"));
    assert!(ttl > 2_000 && ttl <= 5_000, "token bucket PTTL {ttl}");

    // A one-minute window: both counts slid out two minutes after it started.
    clock.advance(10 * SECOND);
    assert!(
        decide_one(&store, window("ttl", Quota::per_minute(10), 1))
            .await
            .allowed
    );
    let ttl = pttl(&mut redis, store.key_for("window", "ttl"));
    assert!(ttl > 1_000 && ttl <= 121_000, "window PTTL {ttl}");
    // Later charges in the same window keep its end.
    clock.advance(30 * SECOND);
    assert!(
        decide_one(&store, window("ttl", Quota::per_minute(10), 1))
            .await
            .allowed
    );
    let ttl = pttl(&mut redis, store.key_for("window", "ttl"));
    assert!(ttl > 1_000 && ttl <= 91_000, "window PTTL {ttl}");

    // A refused request writes nothing: no key for a cost that does not fit.
    let refused = decide_one(&store, token_bucket("never", Quota::per_minute(1), 2)).await;
    assert!(!refused.allowed);
    let exists: bool = redis::cmd("EXISTS")
        .arg(store.key_for("bucket", "never"))
        .query(&mut redis)
        .expect("EXISTS");
    assert!(!exists);

    // Nothing immortal.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{floodgate}:*")
        .query(&mut redis)
        .expect("KEYS");
    assert_eq!(keys.len(), 2);
    for key in keys {
        let ttl = pttl(&mut redis, key.clone());
        assert!(ttl > 0, "{key} has PTTL {ttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_cache_is_reloaded_by_itself() {
    let server = redis_server!();
    let store = RedisStore::connect(&server.url())
        .await
        .expect("Redis is up");
    let mut redis = server.connection();
    let check = window("flush", Quota::per_hour(10), 1);
    assert_eq!(decide_one(&store, check.clone()).await.remaining, 9);
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut redis)
        .expect("SCRIPT FLUSH");
    // NOSCRIPT, then SCRIPT LOAD and EVALSHA again, inside this one call.
    let after = decide_one(&store, check.clone()).await;
    assert!(after.allowed);
    assert_eq!(after.remaining, 8, "the count went on");
    assert_eq!(decide_one(&store, check).await.remaining, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_decision_is_one_evalsha() {
    let server = redis_server!();
    let store = RedisStore::connect(&server.url())
        .await
        .expect("Redis is up");
    let mut redis = server.connection();
    let check = token_bucket("counted", Quota::per_hour(1_000), 1);
    // The first call loads the script (NOSCRIPT, SCRIPT LOAD, EVALSHA).
    assert!(decide_one(&store, check.clone()).await.allowed);

    let before = command_calls(&mut redis);
    for _ in 0..CALLS {
        assert!(decide_one(&store, check.clone()).await.allowed);
    }
    let after = command_calls(&mut redis);
    let mut delta: Vec<(String, u64)> = after
        .iter()
        .map(|(name, calls)| (name.clone(), calls - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, calls)| *calls > 0)
        .collect();
    delta.sort();
    // Redis counts the commands a script runs too: each EVALSHA reads the clock (TIME), the
    // key (GET) and writes it (SET). The only other command is the first INFO itself.
    let expected: Vec<(String, u64)> = [
        ("evalsha", CALLS),
        ("get", CALLS),
        ("info", 1),
        ("set", CALLS),
        ("time", CALLS),
    ]
    .into_iter()
    .map(|(name, calls)| (name.to_owned(), calls))
    .collect();
    assert_eq!(delta, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_fast_and_the_store_recovers_when_redis_is_back() {
    let mut server = redis_server!();
    let store = RedisStore::connect(&server.url())
        .await
        .expect("Redis is up");
    let check = token_bucket("outage", Quota::per_hour(100), 1);
    assert!(decide_one(&store, check.clone()).await.allowed);

    server.stop();
    for attempt in 0..3 {
        let answer = tokio::time::timeout(Duration::from_secs(5), store.check(vec![check.clone()]))
            .await
            .unwrap_or_else(|_| panic!("check {attempt} hung while Redis was down"));
        assert!(
            matches!(answer, Err(StoreError::Unavailable(_))),
            "check {attempt} while Redis was down: {answer:?}"
        );
    }

    server.start();
    let mut recovered = None;
    for _ in 0..50 {
        match tokio::time::timeout(Duration::from_secs(5), store.check(vec![check.clone()])).await {
            Ok(Ok(decisions)) => {
                recovered = Some(decisions);
                break;
            }
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(elapsed) => panic!("a check hung after Redis came back: {elapsed}"),
        }
    }
    let decisions = recovered.expect("the store reconnects within 50 tries");
    // The new Redis is empty (no persistence), and the script was loaded again.
    assert!(decisions[0].allowed);
    assert_eq!(decisions[0].remaining, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_fails_to_connect_with_a_typed_error() {
    let server = redis_server!();
    let url = server.url();
    drop(server);
    let started = tokio::time::timeout(Duration::from_secs(10), RedisStore::builder(url).build())
        .await
        .expect("connecting to a dead Redis gives up");
    assert!(
        matches!(started, Err(RedisStoreError::Connect(_))),
        "{started:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_are_refused_before_connecting() {
    for prefix in ["", "a{b", "c}"] {
        let built = RedisStore::builder("redis://127.0.0.1:1")
            .prefix(prefix)
            .build()
            .await;
        assert!(
            matches!(built, Err(RedisStoreError::InvalidPrefix { .. })),
            "{prefix:?}"
        );
    }
    let built = RedisStore::builder("redis://127.0.0.1:1")
        .response_timeout(Duration::ZERO)
        .build()
        .await;
    assert!(matches!(
        built,
        Err(RedisStoreError::ZeroTimeout { which: "response" })
    ));
    let built = RedisStore::builder("http://example.invalid").build().await;
    assert!(
        matches!(built, Err(RedisStoreError::InvalidUrl(_))),
        "{built:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_clock_behind_the_state_refunds_nothing() {
    let server = redis_server!();
    let clock = TestClock::new();
    let store = clock.store(&server).await;
    let start = clock.now();

    // A token bucket of two, refilling one a second, emptied at `start`.
    let quota = Quota::per_minute(60).burst(2);
    assert!(
        decide_one(&store, token_bucket("skew", quota, 2))
            .await
            .allowed
    );
    // A replica whose clock is 30 s behind sees a bucket further from full, not a full one.
    clock.set(start - 30 * SECOND);
    let behind = decide_one(&store, token_bucket("skew", quota, 1)).await;
    assert!(!behind.allowed);
    assert_eq!(behind.retry_after, Duration::from_secs(31));
    // Back in step, the state is as if that check never happened: one refilled a second on.
    clock.set(start + SECOND);
    assert!(
        decide_one(&store, token_bucket("skew", quota, 1))
            .await
            .allowed
    );
    assert!(
        !decide_one(&store, token_bucket("skew", quota, 1))
            .await
            .allowed
    );

    // A one-minute window of ten, filled at `start`.
    let start = clock.now();
    let quota = Quota::per_minute(10);
    assert!(decide_one(&store, window("skew", quota, 10)).await.allowed);
    // Even two windows behind, the window neither rolls nor moves back: still full.
    clock.set(start - 120 * SECOND);
    assert!(!decide_one(&store, window("skew", quota, 1)).await.allowed);
    // One window after `start`, the ten weigh fully: 10·(60 − x)/60 + 1 ≤ 10 once x ≥ 6 s.
    clock.set(start + 60 * SECOND);
    let next = decide_one(&store, window("skew", quota, 1)).await;
    assert!(!next.allowed);
    assert_eq!(next.retry_after, Duration::from_secs(6));
}
