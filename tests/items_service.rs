//! The items service example over real TCP: the API, its errors, the layers composed in
//! front of it, durability across a restart and graceful shutdown.

/// The Redis tests' harness, shared with floodgate-redis.
#[path = "../crates/floodgate-redis/tests/support/mod.rs"]
mod redis_support;
#[allow(
    dead_code,
    reason = "the binary's entry point uses parts of the service these tests do not"
)]
#[path = "../examples/items_service/service/mod.rs"]
mod service;
mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use service::{Settings, Store, Telemetry};
use support::Reply;

const JSON: (&str, &str) = ("content-type", "application/json");

/// The service's settings from its flags, with an in-memory database unless `extra` names
/// one.
fn settings(extra: &[&str]) -> Settings {
    let mut arguments = vec!["items_service"];
    if !extra.contains(&"--database-url") {
        arguments.extend(["--database-url", "sqlite::memory:"]);
    }
    arguments.extend_from_slice(extra);
    Settings::parse_from(arguments)
}

async fn start_with(settings: &Settings) -> (SocketAddr, Store) {
    let store = Store::open(&settings.database_url, settings.database_max_connections)
        .await
        .expect("the database opens");
    let telemetry = Telemetry::install().expect("the recorder installs");
    let app = service::build(settings, store.clone(), telemetry)
        .await
        .expect("valid settings, and Redis up if named");
    (support::serve(app).await, store)
}

async fn start(extra: &[&str]) -> SocketAddr {
    start_with(&settings(extra)).await.0
}

async fn post(address: SocketAddr, body: &Value) -> Reply {
    support::send_body(
        address,
        "POST",
        "/items",
        &[JSON],
        body.to_string().as_bytes(),
    )
    .await
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|error| panic!("{error}: {}", reply.body))
}

fn assert_problem(reply: &Reply, status: u16) -> Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{}",
        reply.body
    );
    let problem = json_of(reply);
    assert_eq!(problem["status"], status);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|detail| !detail.is_empty())
    );
    problem
}

async fn total(address: SocketAddr) -> u64 {
    let reply = support::send(address, "GET", "/items", &[]).await;
    json_of(&reply)["total"].as_u64().expect("a total")
}

#[tokio::test]
async fn items_are_created_read_listed_replaced_and_deleted() {
    let address = start(&[]).await;
    let created = post(
        address,
        &json!({"name": "lamp", "description": "bright", "price": 12.5}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let item = json_of(&created);
    let id = item["id"].as_i64().expect("an id");
    assert_eq!(
        created.header("location"),
        Some(format!("/items/{id}").as_str())
    );
    assert_eq!(
        item,
        json!({"id": id, "name": "lamp", "description": "bright", "price": 12.5})
    );

    // The seeds' load-test body has no price.
    let seeds = post(address, &json!({"name": "x", "description": "y"})).await;
    assert_eq!(seeds.status, 201, "{}", seeds.body);

    let read = support::send(address, "GET", &format!("/items/{id}"), &[]).await;
    assert_eq!((read.status, json_of(&read)), (200, item.clone()));

    let page = json_of(&support::send(address, "GET", "/items?limit=1", &[]).await);
    assert_eq!(page["total"], 2);
    assert_eq!(page["limit"], 1);
    assert_eq!(page["items"], json!([item]));
    let second = json_of(&support::send(address, "GET", "/items?limit=1&offset=1", &[]).await);
    assert_eq!(second["items"][0]["name"], "x");

    let replaced = support::send_body(
        address,
        "PUT",
        &format!("/items/{id}"),
        &[JSON],
        json!({"name": "lamp", "price": 10}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert_eq!(
        json_of(&replaced),
        json!({"id": id, "name": "lamp", "description": null, "price": 10.0})
    );

    let deleted = support::send(address, "DELETE", &format!("/items/{id}"), &[]).await;
    assert_eq!(deleted.status, 204);
    assert_problem(
        &support::send(address, "GET", &format!("/items/{id}"), &[]).await,
        404,
    );
    assert_problem(
        &support::send(address, "DELETE", &format!("/items/{id}"), &[]).await,
        404,
    );
    assert_eq!(total(address).await, 1);
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_changes_nothing() {
    let address = start(&["--max-body-bytes", "2048"]).await;
    let invalid = assert_problem(
        &post(
            address,
            &json!({"name": "", "description": "d".repeat(1001), "price": -1}),
        )
        .await,
        422,
    );
    let fields: Vec<&str> = invalid["errors"]
        .as_array()
        .expect("the failing fields")
        .iter()
        .filter_map(|error| error["field"].as_str())
        .collect();
    assert_eq!(fields, ["name", "description", "price"]);

    let not_json = support::send_body(address, "POST", "/items", &[JSON], b"{\"name\": ").await;
    assert_problem(&not_json, 400);
    let wrong_shape = post(address, &json!({"name": 5})).await;
    assert_problem(&wrong_shape, 422);
    let unknown_field = post(address, &json!({"name": "x", "colour": "red"})).await;
    assert_problem(&unknown_field, 422);
    let no_content_type =
        support::send_body(address, "POST", "/items", &[], b"{\"name\":\"x\"}").await;
    assert_problem(&no_content_type, 415);
    let huge = json!({"name": "x", "description": "d".repeat(4000)});
    assert_problem(&post(address, &huge).await, 413);

    assert_problem(&support::send(address, "GET", "/items/abc", &[]).await, 400);
    assert_problem(
        &support::send(address, "GET", "/items?limit=101", &[]).await,
        422,
    );
    assert_problem(
        &support::send(address, "GET", "/items?limit=0", &[]).await,
        422,
    );
    assert_problem(
        &support::send(address, "GET", "/items?offset=-1", &[]).await,
        400,
    );
    assert_problem(
        &support::send(address, "GET", "/nothing/here", &[]).await,
        404,
    );
    let put_invalid =
        support::send_body(address, "PUT", "/items/1", &[JSON], b"{\"name\":\"\"}").await;
    assert_problem(&put_invalid, 422);

    assert_eq!(total(address).await, 0);
}

#[tokio::test]
async fn gzip_goes_out_and_gzip_uploads_come_in_within_the_body_limit() {
    let address = start(&["--max-body-bytes", "4096"]).await;
    for i in 0..30 {
        let created = post(
            address,
            &json!({"name": format!("item {i}"), "description": "a fine item"}),
        )
        .await;
        assert_eq!(created.status, 201);
    }
    let listed = support::send(address, "GET", "/items", &[("accept-encoding", "gzip")]).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.header("content-encoding"), Some("gzip"));
    let mut page = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&listed.raw_body[..]),
        &mut page,
    )
    .expect("valid gzip");
    assert_eq!(
        serde_json::from_str::<Value>(&page).expect("json")["total"],
        30
    );

    let gzip = |data: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).expect("in memory");
        encoder.finish().expect("in memory")
    };
    let upload = json!({"name": "zipped"}).to_string();
    let zipped = support::send_body(
        address,
        "POST",
        "/items",
        &[JSON, ("content-encoding", "gzip")],
        &gzip(upload.as_bytes()),
    )
    .await;
    assert_eq!(zipped.status, 201, "{}", zipped.body);
    // Small on the wire, too large once decoded.
    let bomb = json!({"name": "x", "description": " ".repeat(100_000)}).to_string();
    let refused = support::send_body(
        address,
        "POST",
        "/items",
        &[JSON, ("content-encoding", "gzip")],
        &gzip(bomb.as_bytes()),
    )
    .await;
    assert_problem(&refused, 413);
    assert_eq!(total(address).await, 31);
}

#[tokio::test]
async fn clients_are_limited_by_ip_and_writes_by_api_key_but_health_never() {
    let address = start(&[
        "--ip-rate-per-second",
        "1",
        "--ip-burst",
        "5",
        "--writes-per-minute-per-key",
        "2",
    ])
    .await;
    let key = ("x-api-key", "team-a");
    let write = |address| async move {
        support::send_body(address, "POST", "/items", &[JSON, key], br#"{"name":"x"}"#).await
    };
    assert_eq!(write(address).await.status, 201);
    assert_eq!(write(address).await.status, 201);
    let refused = write(address).await;
    let problem = assert_problem(&refused, 429);
    assert!(refused.header("retry-after").is_some());
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("writes-per-key")),
        "{problem}"
    );
    // The refused write cost the client nothing of its per-IP burst: 3 requests so far,
    // one of them refused before charging, leaves 3 of 5.
    for _ in 0..3 {
        assert_eq!(
            support::send(address, "GET", "/items", &[]).await.status,
            200
        );
    }
    assert_problem(&support::send(address, "GET", "/items", &[]).await, 429);
    for _ in 0..20 {
        let health = support::send(address, "GET", "/health", &[]).await;
        assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    }
}

#[tokio::test]
async fn excess_concurrency_gets_a_503_while_health_answers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let address = start(&["--max-in-flight", "1", "--max-queue", "0"]).await;
    // A write whose body is still arriving holds the only slot.
    let mut slow = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    let body = br#"{"name":"slow"}"#;
    let head = format!(
        "POST /items HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.expect("sent");
    slow.write_all(&body[..4]).await.expect("sent");
    // Wait until the slow request holds the slot: then plain reads are refused.
    let mut refused = None;
    for _ in 0..1000 {
        let reply = support::send(address, "GET", "/items", &[]).await;
        if reply.status != 200 {
            refused = Some(reply);
            break;
        }
        tokio::task::yield_now().await;
    }
    let refused = refused.expect("the slow write takes the slot");
    assert_problem(&refused, 503);
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        support::send(address, "GET", "/health", &[]).await.status,
        200
    );

    slow.write_all(&body[4..]).await.expect("sent");
    let mut response = Vec::new();
    slow.read_to_end(&mut response).await.expect("answered");
    assert!(
        response.starts_with(b"HTTP/1.1 201"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(
        support::send(address, "GET", "/items", &[]).await.status,
        200
    );
}

#[tokio::test]
async fn metrics_show_floodgate_and_request_series_and_request_ids_travel() {
    let address = start(&["--ip-rate-per-second", "1", "--ip-burst", "1"]).await;
    let first = support::send(address, "GET", "/items", &[("x-request-id", "abc-123")]).await;
    assert_eq!(first.header("x-request-id"), Some("abc-123"));
    let limited = support::send(address, "GET", "/items", &[]).await;
    assert_eq!(limited.status, 429);
    assert!(
        limited
            .header("x-request-id")
            .is_some_and(|id| id.len() == 36),
        "a UUID"
    );
    let metrics = support::send(address, "GET", "/metrics", &[]).await;
    assert_eq!(metrics.status, 200);
    for series in [
        "floodgate_ratelimit_admitted_total",
        "floodgate_ratelimit_rejected_total",
        "http_requests_total{method=\"GET\",route=\"/items\",status=\"429\"}",
        "http_request_duration_seconds_bucket{method=\"GET\",route=\"/items\"",
    ] {
        assert!(
            metrics.body.contains(series),
            "{series} missing from:\n{}",
            metrics.body
        );
    }
}

#[tokio::test]
async fn writes_survive_a_restart() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", directory.path().join("items.db").display());
    let settings = settings(&["--database-url", &url]);
    let (address, store) = start_with(&settings).await;
    let created = post(address, &json!({"name": "kept", "price": 3})).await;
    assert_eq!(created.status, 201);
    store.close().await;

    let (address, store) = start_with(&settings).await;
    let read = support::send(address, "GET", "/items/1", &[]).await;
    assert_eq!(json_of(&read)["name"], "kept");
    store.close().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns() {
    let settings = settings(&[]);
    let store = Store::open(&settings.database_url, 1)
        .await
        .expect("the database opens");
    let app = service::build(&settings, store, Telemetry::install().expect("recorder"))
        .await
        .expect("valid");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("an address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(service::serve(
        listener,
        app,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    assert_eq!(
        support::send(address, "GET", "/health", &[]).await.status,
        200
    );
    stop.send(()).expect("the server waits for the signal");
    server
        .await
        .expect("no panic")
        .expect("served without error");
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn two_replicas_on_one_redis_share_the_write_limit() {
    let Some(redis) = redis_support::RedisServer::new() else {
        return;
    };
    let url = redis.url();
    let replica = || {
        settings(&[
            "--redis-url",
            &url,
            "--writes-per-minute-per-key",
            "3",
            "--redis-deadline-ms",
            "500",
        ])
    };
    let (first, _) = start_with(&replica()).await;
    let (second, _) = start_with(&replica()).await;
    let key = ("x-api-key", "shared-team");
    let mut statuses = Vec::new();
    for address in [first, second, first, second, first] {
        let reply =
            support::send_body(address, "POST", "/items", &[JSON, key], br#"{"name":"x"}"#).await;
        statuses.push(reply.status);
    }
    assert_eq!(
        statuses,
        [201, 201, 201, 429, 429],
        "one limit of 3 for both replicas"
    );
}

#[tokio::test]
async fn reads_are_cached_and_every_write_drops_them() {
    let address = start(&[]).await;
    let status = |reply: &Reply| reply.header("cache-status").unwrap_or_default().to_owned();
    let first = support::send(address, "GET", "/items?limit=5", &[]).await;
    assert!(
        status(&first).contains("fwd=uri-miss"),
        "{}",
        status(&first)
    );
    assert_eq!(first.header("cache-control"), Some("s-maxage=30"));
    let second = support::send(address, "GET", "/items?limit=5", &[]).await;
    assert!(status(&second).contains("hit"), "{}", status(&second));

    let created = post(address, &json!({"name": "new"})).await;
    assert_eq!(created.status, 201);
    let listed = support::send(address, "GET", "/items?limit=5", &[]).await;
    assert!(
        status(&listed).contains("fwd=uri-miss"),
        "{}",
        status(&listed)
    );
    assert_eq!(json_of(&listed)["total"], 1, "the write is visible at once");

    let _ = support::send(address, "GET", "/items/1", &[]).await;
    let replaced = support::send_body(
        address,
        "PUT",
        "/items/1",
        &[JSON],
        br#"{"name":"renamed"}"#,
    )
    .await;
    assert_eq!(replaced.status, 200);
    let read = support::send(address, "GET", "/items/1", &[]).await;
    assert_eq!(json_of(&read)["name"], "renamed");
}

#[tokio::test]
async fn a_write_through_one_replica_is_read_through_another() {
    let Some(redis) = redis_support::RedisServer::new() else {
        return;
    };
    let directory = tempfile::tempdir().expect("a temporary directory");
    let database = format!("sqlite://{}", directory.path().join("shared.db").display());
    let url = redis.url();
    let replica = || {
        settings(&[
            "--database-url",
            &database,
            "--redis-url",
            &url,
            "--redis-deadline-ms",
            "500",
        ])
    };
    let (a, _) = start_with(&replica()).await;
    let (b, _) = start_with(&replica()).await;

    let created = post(a, &json!({"name": "first"})).await;
    assert_eq!(created.status, 201);
    let id = json_of(&created)["id"].as_i64().expect("an id");
    let path = format!("/items/{id}");
    // B reads it, and now holds it in its cache.
    assert_eq!(
        json_of(&support::send(b, "GET", &path, &[]).await)["name"],
        "first"
    );
    let cached = support::send(b, "GET", &path, &[]).await;
    assert!(
        cached
            .header("cache-status")
            .is_some_and(|status| status.contains("hit"))
    );

    let renamed = support::send_body(a, "PUT", &path, &[JSON], br#"{"name":"second"}"#).await;
    assert_eq!(renamed.status, 200);
    // Delivery goes through Redis: wait for B to hear it, boundedly.
    let mut name = Value::Null;
    for _ in 0..100 {
        name = json_of(&support::send(b, "GET", &path, &[]).await)["name"].clone();
        if name == "second" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        name, "second",
        "B no longer serves the old item from its cache"
    );
}
