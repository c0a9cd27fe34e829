//! The gateway example in front of real `items_service` replicas over TCP: balancing,
//! failover, limits that hold across replicas, and the edge cache.

#[allow(dead_code, reason = "the gateway binary uses parts these tests do not")]
#[path = "../examples/gateway/edge/mod.rs"]
mod edge;
/// The Redis tests' harness, shared with floodgate-redis.
#[path = "../crates/floodgate-redis/tests/support/mod.rs"]
mod redis_support;
#[allow(
    dead_code,
    reason = "the items service's binary uses parts these tests do not"
)]
#[path = "../examples/items_service/service/mod.rs"]
mod service;
mod support;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use clap::Parser;

/// An `items_service` replica on its own runtime, so that killing it closes every
/// connection it has, as a crashed process would.
struct Replica {
    address: SocketAddr,
    arguments: Vec<String>,
    /// Requests it answered.
    calls: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Replica {
    fn new(arguments: &[&str]) -> Self {
        let port = port_outside_the_ephemeral_range();
        let mut replica = Self {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            arguments: arguments
                .iter()
                .map(|&argument| argument.to_owned())
                .collect(),
            calls: Arc::default(),
            runtime: None,
        };
        replica.start();
        replica
    }

    fn start(&mut self) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let mut arguments = vec!["items_service".to_owned()];
        arguments.extend(self.arguments.iter().cloned());
        let settings = service::Settings::parse_from(arguments);
        let (address, calls) = (self.address, Arc::clone(&self.calls));
        let (ready, listening) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let store = service::Store::open(&settings.database_url, 4)
                .await
                .expect("the database opens");
            let telemetry = service::Telemetry::install().expect("the recorder installs");
            let app = service::build(&settings, store, telemetry)
                .await
                .expect("the replica builds")
                .layer(axum::middleware::from_fn(
                    move |request: Request, next: Next| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        next.run(request)
                    },
                ));
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .expect("the replica's port is free again");
            let _ = ready.send(());
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        listening
            .recv_timeout(Duration::from_secs(10))
            .expect("the replica listens");
        self.runtime = Some(runtime);
    }

    /// Stops it at once: the listener and every connection close before this returns.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // A runtime cannot be shut down from within another's tasks: on a thread of
            // its own, waited for, so the port is closed when this returns.
            let _ =
                std::thread::spawn(move || runtime.shutdown_timeout(Duration::from_secs(5))).join();
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port below Linux's ephemeral range (32768 and up). A replica that is killed and
/// started again must find its port free, and an ephemeral one can meanwhile be taken as
/// the local end of some outgoing connection (the gateway's, say).
fn port_outside_the_ephemeral_range() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = 20_000 + (std::process::id() as usize * 97) % 10_000;
    for _ in 0..2_000 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 12_000;
        let port = u16::try_from(base + offset).unwrap_or(20_000).min(32_000);
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// Replicas sharing one SQLite file, and trusting the gateway (loopback) as their proxy.
fn replicas(directory: &tempfile::TempDir, extra: &[&str]) -> Vec<Replica> {
    let database = format!("sqlite://{}", directory.path().join("cluster.db").display());
    let mut arguments = vec![
        "--database-url",
        database.as_str(),
        "--trust-proxy",
        "127.0.0.1/32",
    ];
    arguments.extend_from_slice(extra);
    // The first creates the schema; the others find it.
    (0..3).map(|_| Replica::new(&arguments)).collect()
}

async fn gateway(replicas: &[Replica], extra: &[&str]) -> SocketAddr {
    let upstreams: Vec<String> = replicas
        .iter()
        .map(|replica| replica.address.to_string())
        .collect();
    let mut arguments = vec!["gateway".to_owned()];
    for upstream in &upstreams {
        arguments.extend(["--upstream".to_owned(), upstream.clone()]);
    }
    arguments.extend(extra.iter().map(|&argument| argument.to_owned()));
    let settings = edge::Settings::parse_from(arguments);
    support::serve(edge::build(&settings).await.expect("the gateway builds")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_the_replicas_and_survive_one_going_away() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let mut replicas = replicas(&directory, &[]);
    let gateway = gateway(&replicas, &[]).await;
    for _ in 0..60 {
        assert_eq!(
            support::send(gateway, "GET", "/health", &[]).await.status,
            200
        );
    }
    for replica in &replicas {
        assert!(
            replica.calls() > 0,
            "every healthy replica is used: {}",
            replica.calls()
        );
    }

    // Killed while requests are in flight.
    let load: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..40 {
                    statuses.push(support::send(gateway, "GET", "/health", &[]).await.status);
                }
                statuses
            })
        })
        .collect();
    // Kill it only once the load reaches it, so requests are in flight to it.
    let before_kill = replicas[1].calls();
    for _ in 0..500 {
        if replicas[1].calls() > before_kill {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    replicas[1].kill();
    for statuses in load {
        let statuses = statuses.await.expect("no panic");
        assert!(
            statuses.iter().all(|&status| status == 200),
            "none lost: {statuses:?}"
        );
    }

    let before = replicas[1].calls();
    replicas[1].start();
    let mut used_again = false;
    // Its back-off is at most 5 s; give it a bounded while.
    for _ in 0..300 {
        assert_eq!(
            support::send(gateway, "GET", "/health", &[]).await.status,
            200
        );
        if replicas[1].calls() > before {
            used_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(used_again, "a replica that comes back is used again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_cache_hit_reaches_no_replica() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let replicas = replicas(&directory, &[]);
    let gateway = gateway(&replicas, &[]).await;
    let first = support::send(gateway, "GET", "/items?limit=3", &[]).await;
    assert_eq!(first.status, 200);
    let total = || replicas.iter().map(Replica::calls).sum::<usize>();
    let before = total();
    let second = support::send(gateway, "GET", "/items?limit=3", &[]).await;
    assert_eq!(second.body, first.body);
    let status = second.header("cache-status").unwrap_or_default();
    assert!(status.contains("floodgate-edge; hit"), "{status}");
    assert_eq!(total(), before, "answered at the edge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_limit_holds_across_replicas_and_spoofing_changes_nothing() {
    let Some(redis) = redis_support::RedisServer::new() else {
        return;
    };
    let directory = tempfile::tempdir().expect("a temporary directory");
    let url = redis.url();
    let replicas = replicas(
        &directory,
        &[
            "--redis-url",
            &url,
            "--redis-deadline-ms",
            "500",
            "--ip-rate-per-second",
            "1",
            "--ip-burst",
            "3",
        ],
    );
    let gateway = gateway(&replicas, &[]).await;
    let mut statuses = Vec::new();
    for index in 0..6 {
        // A different page each time, so the edge cache answers none of them, and a
        // different forged client address each time.
        let path = format!("/items?limit={}", index + 1);
        let forged = format!("6.6.6.{index}");
        // From 127.0.0.1, inside the network the replicas trust (the gateway's): the
        // gateway must not pass the forged address on.
        let headers = [("x-forwarded-for", forged.as_str())];
        let reply = support::send(gateway, "GET", &path, &headers).await;
        statuses.push(reply.status);
    }
    let admitted = statuses.iter().filter(|&&status| status == 200).count();
    // A burst of 3, plus at most one more if the run spans a refill second.
    assert!((3..=4).contains(&admitted), "{statuses:?}");
    assert!(
        statuses[..3].iter().all(|&status| status == 200),
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_limits_a_client_before_any_replica_sees_it() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let replicas = replicas(&directory, &[]);
    let gateway = gateway(&replicas, &["--ip-rate-per-second", "1", "--ip-burst", "2"]).await;
    assert_eq!(
        support::send(gateway, "GET", "/health", &[]).await.status,
        200
    );
    assert_eq!(
        support::send(gateway, "GET", "/health", &[]).await.status,
        200
    );
    let before: usize = replicas.iter().map(Replica::calls).sum();
    let refused = support::send(gateway, "GET", "/health", &[("x-forwarded-for", "1.2.3.4")]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(replicas.iter().map(Replica::calls).sum::<usize>(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_replica_at_all_is_a_502_problem() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let mut replicas = replicas(&directory, &[]);
    let gateway = gateway(&replicas, &["--ready-timeout-ms", "300"]).await;
    for replica in &mut replicas {
        replica.kill();
    }
    // The first requests find the replicas gone and put them in back-off; then the gateway
    // answers at once, without waiting for one.
    let mut last = String::new();
    for _ in 0..4 {
        let reply = tokio::time::timeout(
            Duration::from_secs(3),
            support::send(gateway, "GET", "/health", &[]),
        )
        .await
        .expect("a 502 comes without waiting for a replica");
        assert_eq!(reply.status, 502, "{}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        last = reply.body;
    }
    assert!(last.contains("no replica is available"), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_the_gateway_is_read_back_at_once() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let replicas = replicas(&directory, &[]);
    // One replica: several without Redis would each keep their own copy of the page (that
    // is what `--redis-url` is for); here only the edge cache is under test.
    let gateway = gateway(&replicas[..1], &[]).await;
    let total = |reply: &support::Reply| {
        serde_json::from_str::<serde_json::Value>(&reply.body).expect("JSON")["total"].as_u64()
    };
    let before = support::send(gateway, "GET", "/items?limit=2", &[]).await;
    let cached = support::send(gateway, "GET", "/items?limit=2", &[]).await;
    assert!(
        cached
            .header("cache-status")
            .is_some_and(|status| status.contains("floodgate-edge; hit"))
    );
    let created = support::send_body(
        gateway,
        "POST",
        "/items",
        &[("content-type", "application/json")],
        br#"{"name":"new"}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let after = support::send(gateway, "GET", "/items?limit=2", &[]).await;
    assert_eq!(total(&after), total(&before).map(|count| count + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_straight_to_a_replica_reaches_the_edge_cache_over_redis() {
    let Some(redis) = redis_support::RedisServer::new() else {
        return;
    };
    let directory = tempfile::tempdir().expect("a temporary directory");
    let url = redis.url();
    let replicas = replicas(
        &directory,
        &["--redis-url", &url, "--redis-deadline-ms", "500"],
    );
    let gateway = gateway(&replicas, &["--redis-url", &url]).await;
    let _ = support::send(gateway, "GET", "/items?limit=2", &[]).await;
    let created = support::send_body(
        replicas[0].address,
        "POST",
        "/items",
        &[("content-type", "application/json")],
        br#"{"name":"behind the gateway's back"}"#,
    )
    .await;
    assert_eq!(created.status, 201);
    // Delivery goes through Redis: look again, boundedly.
    let mut fresh = false;
    for _ in 0..100 {
        let reply = support::send(gateway, "GET", "/items?limit=2", &[]).await;
        if reply.body.contains("behind the gateway") {
            fresh = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(fresh, "the edge cache dropped the stale page");
}
