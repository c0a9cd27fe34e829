//! The layer against a scripted origin, with paused time: one test per RFC 9111 rule the
//! layer implements.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use tower::{Layer, Service, ServiceExt};

use crate::{CacheHandle, CacheLayer, CacheLayerBuilder};

type RequestBody = http_body_util::Full<Bytes>;
type OriginBody = BoxBody<Bytes, Infallible>;

/// What the origin answers: the request it got and how many calls came before it.
type Script = dyn Fn(&Request<RequestBody>, usize) -> Result<Response<OriginBody>, &'static str>
    + Send
    + Sync;

/// A scripted origin that counts its calls and keeps the headers it was sent.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    script: Arc<Script>,
    delay: Duration,
}

impl Origin {
    fn new(
        script: impl Fn(&Request<RequestBody>, usize) -> Result<Response<OriginBody>, &'static str>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            calls: Arc::default(),
            seen: Arc::default(),
            script: Arc::new(script),
            delay: Duration::ZERO,
        }
    }

    /// Always the same 200 with these header fields and `body`.
    fn fixed(fields: &[(&'static str, &'static str)], body: &'static str) -> Self {
        let fields = fields.to_vec();
        Self::new(move |_, _| Ok(response(200, &fields, body)))
    }

    fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last_seen(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .cloned()
            .unwrap_or_default()
    }

    fn service(&self) -> Origin {
        self.clone()
    }
}

impl Service<Request<RequestBody>> for Origin {
    type Response = Response<OriginBody>;
    type Error = &'static str;
    type Future = Pin<
        Box<dyn std::future::Future<Output = Result<Response<OriginBody>, &'static str>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), &'static str>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request.headers().clone());
        let answer = (self.script)(&request, call);
        // Only reads are slow: a write can overtake a read in flight.
        let delay = if request.method() == Method::GET {
            self.delay
        } else {
            Duration::ZERO
        };
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer
        })
    }
}

fn response(
    status: u16,
    fields: &[(&'static str, &'static str)],
    body: &'static str,
) -> Response<OriginBody> {
    let mut response = Response::new(http_body_util::Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
    for (name, value) in fields {
        response
            .headers_mut()
            .append(*name, HeaderValue::from_static(value));
    }
    response
}

/// A reply, body read to the end (which is when a miss is stored).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    fn cache_status(&self) -> &str {
        self.header("cache-status")
    }
}

struct Client {
    service: crate::Cache<Origin>,
}

impl Client {
    async fn send(
        &self,
        method: Method,
        path: &str,
        fields: &[(&'static str, &'static str)],
    ) -> Result<Reply, &'static str> {
        let mut request = Request::new(RequestBody::default());
        *request.method_mut() = method;
        *request.uri_mut() = path.parse().expect("valid path");
        for (name, value) in fields {
            request
                .headers_mut()
                .append(*name, HeaderValue::from_static(value));
        }
        let response = self.service.clone().oneshot(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|_| "body failed")?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn get(&self, path: &str, fields: &[(&'static str, &'static str)]) -> Reply {
        self.send(Method::GET, path, fields)
            .await
            .expect("answered")
    }
}

fn client(origin: &Origin, builder: CacheLayerBuilder) -> Client {
    let layer = builder.build().expect("valid layer");
    Client {
        service: layer.layer(origin.service()),
    }
}

fn cache() -> CacheLayerBuilder {
    CacheLayer::builder()
}

/// A client, and the handle of its layer.
fn client_and_handle(origin: &Origin, builder: CacheLayerBuilder) -> (Client, CacheHandle) {
    let layer = builder.build().expect("valid layer");
    let handle = layer.handle();
    let client = Client {
        service: layer.layer(origin.service()),
    };
    (client, handle)
}

#[tokio::test(start_paused = true)]
async fn fresh_responses_are_served_with_their_age_until_they_go_stale() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "page");
    let client = client(&origin, cache());
    let miss = client.get("/items", &[]).await;
    assert_eq!(miss.body, "page");
    assert_eq!(
        miss.cache_status(),
        "floodgate; fwd=uri-miss; ttl=60; stored"
    );

    let hit = client.get("/items", &[]).await;
    assert_eq!(
        (hit.status, hit.body.as_ref()),
        (StatusCode::OK, &b"page"[..])
    );
    assert_eq!(hit.header("age"), "0");
    assert_eq!(hit.cache_status(), "floodgate; hit; ttl=60");
    assert!(
        hit.header("etag").starts_with("\"fg-"),
        "a generated strong ETag"
    );
    assert!(
        !hit.header("date").is_empty(),
        "a stored response always has a Date"
    );

    tokio::time::advance(Duration::from_secs(30)).await;
    let older = client.get("/items", &[]).await;
    assert_eq!(older.header("age"), "30");
    assert_eq!(older.cache_status(), "floodgate; hit; ttl=30");
    assert_eq!(origin.calls(), 1);

    tokio::time::advance(Duration::from_secs(30)).await;
    let stale = client.get("/items", &[]).await;
    // Stale, with no validator of the origin's and no stale window: nothing keeps it.
    assert!(
        stale.cache_status().starts_with("floodgate; fwd=uri-miss"),
        "{}",
        stale.cache_status()
    );
    assert_eq!(
        origin.calls(),
        2,
        "fresh means lifetime > age: at 60 s it is stale"
    );
}

#[tokio::test(start_paused = true)]
async fn ages_are_read_from_the_layer_clock() {
    // The origin sleeps 30 s of tokio's paused clock, which auto-advances: a fill timed on
    // it would arrive 30 s old.
    let origin =
        Origin::fixed(&[("cache-control", "max-age=60")], "page").delayed(Duration::from_secs(30));
    let counter = client(
        &origin,
        cache().clock(floodgate_core::clock::Clock::counter()),
    );
    let _ = counter.get("/items", &[]).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    // The CPU's counter follows neither the sleep nor the advance: of the 60 s, only the
    // moments this test really took count.
    let hit = counter.get("/items", &[]).await;
    assert!(
        hit.cache_status().starts_with("floodgate; hit;"),
        "{}",
        hit.cache_status()
    );
    let age: u64 = hit.header("age").parse().expect("an Age in seconds");
    assert!(age < 30, "age {age}");
    assert!(ttl(&hit) > 30, "{}", hit.cache_status());
    assert_eq!(origin.calls(), 1);
}

/// The `ttl` of a reply's `Cache-Status` member.
fn ttl(reply: &Reply) -> i64 {
    reply
        .cache_status()
        .split("; ")
        .find_map(|parameter| parameter.strip_prefix("ttl="))
        .and_then(|ttl| ttl.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {:?}", reply.cache_status()))
}

/// A case of `what_is_stored_and_what_is_not`: name, status, response fields, request
/// fields, and the `detail` of a refusal (`None`: stored).
type StoreCase<'a> = (
    &'a str,
    u16,
    &'a [(&'a str, &'a str)],
    &'a [(&'a str, &'a str)],
    Option<&'a str>,
);

#[tokio::test(start_paused = true)]
#[allow(clippy::too_many_lines, reason = "one table of cases")]
async fn what_is_stored_and_what_is_not() {
    let cases: &[StoreCase<'_>] = &[
        (
            "max-age",
            200,
            &[("cache-control", "max-age=60")],
            &[],
            None,
        ),
        (
            "s-maxage beats max-age",
            200,
            &[("cache-control", "max-age=0, s-maxage=60")],
            &[],
            None,
        ),
        (
            "Expires",
            200,
            &[("expires", "Thu, 01 Jan 2099 00:00:00 GMT")],
            &[],
            None,
        ),
        (
            "a 404 with max-age",
            404,
            &[("cache-control", "max-age=60")],
            &[],
            None,
        ),
        (
            "no-store",
            200,
            &[("cache-control", "no-store, max-age=60")],
            &[],
            Some("no-store"),
        ),
        (
            "private",
            200,
            &[("cache-control", "private, max-age=60")],
            &[],
            Some("private"),
        ),
        (
            "set-cookie",
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            &[],
            Some("set-cookie"),
        ),
        (
            "vary: *",
            200,
            &[("cache-control", "max-age=60"), ("vary", "*")],
            &[],
            Some("vary"),
        ),
        ("nothing to go on", 200, &[], &[], Some("no-validator")),
        (
            "a 500",
            500,
            &[("cache-control", "max-age=60")],
            &[],
            Some("status"),
        ),
        (
            "a 206",
            206,
            &[("cache-control", "max-age=60")],
            &[],
            Some("status"),
        ),
        (
            "authorization",
            200,
            &[("cache-control", "max-age=60")],
            &[("authorization", "Bearer x")],
            Some("authorization"),
        ),
        (
            "authorization, public",
            200,
            &[("cache-control", "public, max-age=60")],
            &[("authorization", "Bearer x")],
            None,
        ),
        (
            "request no-store",
            200,
            &[("cache-control", "max-age=60")],
            &[("cache-control", "no-store")],
            Some("request-no-store"),
        ),
    ];
    for &(name, status, fields, request, refused) in cases {
        let fields: Vec<(&'static str, &'static str)> = fields
            .iter()
            .map(|&(name, value)| (leak(name), leak(value)))
            .collect();
        let request: Vec<(&'static str, &'static str)> = request
            .iter()
            .map(|&(name, value)| (leak(name), leak(value)))
            .collect();
        let origin = Origin::new(move |_, _| Ok(response(status, &fields, "body")));
        let client = client(&origin, cache());
        let first = client.get("/r", &request).await;
        match refused {
            None => assert!(
                first.cache_status().ends_with("; stored"),
                "{name}: {}",
                first.cache_status()
            ),
            Some(detail) => assert!(
                first
                    .cache_status()
                    .ends_with(&format!("stored=?0; detail={detail}")),
                "{name}: {}",
                first.cache_status()
            ),
        }
        let _ = client.get("/r", &request).await;
        let expected_calls = if refused.is_some() { 2 } else { 1 };
        assert_eq!(origin.calls(), expected_calls, "{name}");
    }
}

fn leak(text: &str) -> &'static str {
    Box::leak(text.to_owned().into_boxed_str())
}

#[tokio::test(start_paused = true)]
async fn set_cookie_responses_can_be_stored_without_their_cookie() {
    let origin = Origin::fixed(
        &[
            ("cache-control", "max-age=60"),
            ("set-cookie", "session=alice"),
        ],
        "page",
    );
    let client = client(&origin, cache().store_set_cookie(true));
    let first = client.get("/", &[]).await;
    assert_eq!(
        first.header("set-cookie"),
        "session=alice",
        "the first client gets its cookie"
    );
    let second = client.get("/", &[]).await;
    assert_eq!(second.cache_status(), "floodgate; hit; ttl=60");
    assert_eq!(second.header("set-cookie"), "", "nobody else gets it");
}

#[tokio::test(start_paused = true)]
async fn no_cache_responses_are_revalidated_before_every_use() {
    let origin = Origin::new(|request, _| {
        if request
            .headers()
            .get("if-none-match")
            .is_some_and(|tag| tag == "\"v1\"")
        {
            Ok(response(
                304,
                &[("etag", "\"v1\""), ("cache-control", "no-cache")],
                "",
            ))
        } else {
            Ok(response(
                200,
                &[("etag", "\"v1\""), ("cache-control", "no-cache")],
                "body v1",
            ))
        }
    });
    let client = client(&origin, cache());
    assert!(
        client
            .get("/doc", &[])
            .await
            .cache_status()
            .ends_with("; stored")
    );
    let revalidated = client.get("/doc", &[]).await;
    assert_eq!(origin.calls(), 2);
    assert_eq!(origin.last_seen()["if-none-match"], "\"v1\"");
    assert_eq!(
        (revalidated.status, revalidated.body.as_ref()),
        (StatusCode::OK, &b"body v1"[..])
    );
    assert_eq!(
        revalidated.cache_status(),
        "floodgate; fwd=stale; fwd-status=304; ttl=0; stored"
    );
    assert_eq!(
        revalidated.header("etag"),
        "\"v1\"",
        "the origin's ETag is kept"
    );
}

#[tokio::test(start_paused = true)]
async fn a_304_refreshes_a_stale_entry_and_its_headers() {
    let origin = Origin::new(|request, _| {
        if request.headers().contains_key("if-none-match") {
            Ok(response(
                304,
                &[("cache-control", "max-age=100"), ("x-version", "2")],
                "",
            ))
        } else {
            Ok(response(
                200,
                &[
                    ("cache-control", "max-age=10"),
                    ("etag", "W/\"a\""),
                    ("x-version", "1"),
                ],
                "stored body",
            ))
        }
    });
    let client = client(&origin, cache());
    let _ = client.get("/p", &[]).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    let refreshed = client.get("/p", &[]).await;
    assert_eq!(refreshed.body, "stored body");
    assert_eq!(
        refreshed.header("x-version"),
        "2",
        "fields of the 304 replace stored ones"
    );
    tokio::time::advance(Duration::from_secs(50)).await;
    let hit = client.get("/p", &[]).await;
    assert_eq!(
        hit.cache_status(),
        "floodgate; hit; ttl=50",
        "re-timed by the 304"
    );
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn fresh_entries_answer_conditional_requests_with_304() {
    let origin = Origin::fixed(
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"v7\""),
            ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ],
        "body",
    );
    let client = client(&origin, cache());
    let _ = client.get("/c", &[]).await;
    let matched = client
        .get("/c", &[("if-none-match", "\"x\", W/\"v7\"")])
        .await;
    assert_eq!(matched.status, StatusCode::NOT_MODIFIED);
    assert!(matched.body.is_empty());
    assert_eq!(matched.header("etag"), "\"v7\"");
    let other = client.get("/c", &[("if-none-match", "\"v8\"")]).await;
    assert_eq!(
        other.status,
        StatusCode::OK,
        "If-None-Match decides when present"
    );
    let since = client
        .get(
            "/c",
            &[("if-modified-since", "Tue, 01 Dec 2026 10:00:00 GMT")],
        )
        .await;
    assert_eq!(since.status, StatusCode::NOT_MODIFIED);
    let before = client
        .get(
            "/c",
            &[("if-modified-since", "Tue, 01 Dec 2026 09:59:59 GMT")],
        )
        .await;
    assert_eq!(before.status, StatusCode::OK);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn request_directives_are_obeyed() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=60"), ("etag", "\"e\"")],
        "body",
    );
    let client = client(&origin, cache());
    let empty = client
        .get("/d", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(empty.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.calls(), 0);
    let _ = client.get("/d", &[]).await;
    assert_eq!(
        client
            .get("/d", &[("cache-control", "only-if-cached")])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(origin.calls(), 1);

    for (directive, forwarded) in [
        ("max-age=30", false),
        ("max-age=10", true),
        ("min-fresh=30", false),
        ("min-fresh=50", true),
        ("no-cache", true),
    ] {
        // A stored response 20 s old with 40 s left.
        let origin = Origin::fixed(&[("cache-control", "max-age=60")], "body");
        let client = self::client(&origin, cache());
        let _ = client.get("/d", &[]).await;
        tokio::time::advance(Duration::from_secs(20)).await;
        let reply = client
            .get("/d", &[("cache-control", leak(directive))])
            .await;
        assert_eq!(origin.calls() - 1, usize::from(forwarded), "{directive}");
        if forwarded {
            assert!(
                reply.cache_status().contains("fwd=request"),
                "{directive}: {}",
                reply.cache_status()
            );
        }
    }
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "body");
    let client = self::client(&origin, cache());
    let _ = client.get("/d", &[]).await;
    let pragma = client.get("/d", &[("pragma", "no-cache")]).await;
    assert_eq!(origin.calls(), 2, "Pragma: no-cache without Cache-Control");
    assert!(pragma.cache_status().contains("fwd=request"));
}

/// Retention runs on the cache's clock, which the test pauses: a stale entry with a
/// validator is kept `keep_stale` for revalidation, and then is gone.
#[tokio::test(start_paused = true)]
async fn a_stale_entry_is_kept_for_revalidation_then_dropped() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
        "body",
    );
    let client = client(&origin, cache().keep_stale(Duration::from_secs(30)));
    let _ = client.get("/k", &[]).await;
    tokio::time::advance(Duration::from_secs(39)).await;
    let kept = client.get("/k", &[]).await;
    assert!(
        kept.cache_status().starts_with("floodgate; fwd=stale"),
        "29 s stale, within keep_stale: {}",
        kept.cache_status()
    );
    // That revalidation stored a fresh copy; let it go stale past keep_stale.
    tokio::time::advance(Duration::from_secs(41)).await;
    let gone = client.get("/k", &[]).await;
    assert!(
        gone.cache_status().starts_with("floodgate; fwd=uri-miss"),
        "31 s stale: {}",
        gone.cache_status()
    );
}

#[tokio::test(start_paused = true)]
async fn max_stale_serves_stale_only_where_the_response_allows_it() {
    // Each has a validator, so it is kept past freshness for revalidation (`keep_stale`).
    for (fields, served_stale) in [
        (
            &[("cache-control", "max-age=1"), ("etag", "\"v1\"")][..],
            true,
        ),
        (
            &[
                ("cache-control", "max-age=1, must-revalidate"),
                ("etag", "\"v1\""),
            ][..],
            false,
        ),
        (
            &[("cache-control", "s-maxage=1"), ("etag", "\"v1\"")][..],
            false,
        ),
    ] {
        let origin = Origin::fixed(fields, "body");
        let client = client(&origin, cache());
        let _ = client.get("/s", &[]).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        let reply = client.get("/s", &[("cache-control", "max-stale=60")]).await;
        assert_eq!(
            origin.calls() == 1,
            served_stale,
            "{fields:?}: {}",
            reply.cache_status()
        );
        if served_stale {
            assert_eq!(
                reply.cache_status(),
                "floodgate; hit; ttl=-9; detail=max-stale"
            );
            let _ = client.get("/s", &[("cache-control", "max-stale=5")]).await;
            assert_eq!(origin.calls(), 2, "9 s stale is more than the 5 s accepted");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn variants_are_kept_per_vary_and_accept_encoding_is_normalised() {
    let origin = Origin::new(|request, _| {
        let gzip = request
            .headers()
            .get("accept-encoding")
            .is_some_and(|value| {
                value
                    .as_bytes()
                    .windows(4)
                    .any(|w| w.eq_ignore_ascii_case(b"gzip"))
            });
        let fields = [
            ("cache-control", "max-age=60"),
            ("vary", "accept-encoding, x-tenant"),
        ];
        Ok(response(
            200,
            &fields,
            if gzip { "gzipped" } else { "plain" },
        ))
    });
    let client = client(&origin, cache());
    let first = client
        .get("/v", &[("accept-encoding", "gzip, deflate, br")])
        .await;
    assert_eq!(first.body, "gzipped");
    let same = client
        .get("/v", &[("accept-encoding", "br;q=1, GZIP")])
        .await;
    assert_eq!(
        (same.body.as_ref(), same.cache_status()),
        (&b"gzipped"[..], "floodgate; hit; ttl=60")
    );
    let plain = client.get("/v", &[]).await;
    assert_eq!(plain.body, "plain");
    assert!(
        plain.cache_status().starts_with("floodgate; fwd=vary-miss"),
        "{}",
        plain.cache_status()
    );
    let refused = client.get("/v", &[("accept-encoding", "gzip;q=0")]).await;
    assert_eq!(
        (refused.body.as_ref(), refused.cache_status()),
        (&b"plain"[..], "floodgate; hit; ttl=60")
    );
    let tenant = client.get("/v", &[("x-tenant", "b")]).await;
    assert!(tenant.cache_status().contains("vary-miss"));
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn head_is_answered_from_a_stored_get() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=60"), ("content-length", "4")],
        "body",
    );
    let client = client(&origin, cache());
    let _ = client.get("/h", &[]).await;
    let head = client
        .send(Method::HEAD, "/h", &[])
        .await
        .expect("answered");
    assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
    assert_eq!(head.header("content-length"), "4");
    assert_eq!(head.cache_status(), "floodgate; hit; ttl=60");
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_stale_and_refreshes_exactly_once() {
    let origin = Origin::new(|_, call| {
        let body = if call == 0 { "old" } else { "new" };
        Ok(response(
            200,
            &[("cache-control", "max-age=1, stale-while-revalidate=30")],
            body,
        ))
    })
    .delayed(Duration::from_millis(100));
    let client = client(&origin, cache());
    let _ = client.get("/w", &[]).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..5 {
        let stale = client.get("/w", &[]).await;
        assert_eq!(stale.body, "old");
        // 1.1 s stale (the first fetch took 0.1 s, counted in its age), rounded down.
        assert_eq!(
            stale.cache_status(),
            "floodgate; hit; ttl=-2; detail=stale-while-revalidate"
        );
    }
    // Let the one background refresh finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(origin.calls(), 2, "five stale hits, one refresh");
    let fresh = client.get("/w", &[]).await;
    // Refreshed 0.1 s after the stale hits, and read 0.1 s later: under a second left.
    assert_eq!(
        (fresh.body.as_ref(), fresh.cache_status()),
        (&b"new"[..], "floodgate; hit; ttl=0")
    );
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_covers_5xx_and_failures_unless_revalidation_is_required() {
    for (fields, serves_stale) in [
        (
            &[("cache-control", "max-age=1, stale-if-error=60")][..],
            true,
        ),
        (
            &[(
                "cache-control",
                "max-age=1, stale-if-error=60, must-revalidate",
            )][..],
            false,
        ),
    ] {
        let origin = Origin::new(move |_, call| match call {
            0 => Ok(response(200, fields, "kept")),
            1 => Ok(response(503, &[], "down")),
            _ => Err("connection refused"),
        });
        let client = client(&origin, cache());
        let _ = client.get("/e", &[]).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        let on_503 = client.get("/e", &[]).await;
        let on_error = client.send(Method::GET, "/e", &[]).await;
        if serves_stale {
            assert_eq!(
                (on_503.status, on_503.body.as_ref()),
                (StatusCode::OK, &b"kept"[..])
            );
            assert_eq!(
                on_503.cache_status(),
                "floodgate; fwd=stale; fwd-status=503; ttl=-4; detail=stale-if-error"
            );
            let on_error = on_error.expect("served stale");
            assert_eq!(on_error.body, "kept");
        } else {
            assert_eq!(on_503.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(on_error.err(), Some("connection refused"));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn writes_invalidate_their_uri_and_same_origin_locations() {
    let origin = Origin::new(|request, _| {
        if request.method() == Method::POST {
            let status = if request.uri().path() == "/bad" {
                400
            } else {
                201
            };
            Ok(response(
                status,
                &[
                    ("location", "/items/9"),
                    ("content-location", "http://elsewhere.example/x"),
                ],
                "",
            ))
        } else {
            Ok(response(200, &[("cache-control", "max-age=60")], "page"))
        }
    });
    let client = client(&origin, cache());
    for path in ["/items", "/items/9", "/bad", "/x"] {
        let _ = client.get(path, &[]).await;
    }
    assert_eq!(origin.calls(), 4);
    let failed = client
        .send(Method::POST, "/bad", &[])
        .await
        .expect("answered");
    assert_eq!(failed.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        client.get("/bad", &[]).await.cache_status(),
        "floodgate; hit; ttl=60",
        "a 4xx invalidates nothing"
    );
    let written = client
        .send(Method::POST, "/items", &[])
        .await
        .expect("answered");
    assert_eq!(written.cache_status(), "floodgate; fwd=method");
    for path in ["/items", "/items/9"] {
        assert!(
            client
                .get(path, &[])
                .await
                .cache_status()
                .contains("uri-miss"),
            "{path}"
        );
    }
    assert_eq!(
        client.get("/x", &[]).await.cache_status(),
        "floodgate; hit; ttl=60",
        "another origin's URI is kept"
    );
}

#[tokio::test(start_paused = true)]
async fn the_handle_invalidates_one_uri_or_a_prefix() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "page");
    let (client, handle) = client_and_handle(&origin, cache());
    for path in ["/a", "/a/1", "/a?q=1", "/ab", "/b"] {
        let _ = client.get(path, &[]).await;
    }
    handle.invalidate("/a/1");
    assert!(
        client
            .get("/a/1", &[])
            .await
            .cache_status()
            .contains("miss")
    );
    assert!(client.get("/a", &[]).await.cache_status().contains("hit"));
    handle.purge_prefix("/a");
    for path in ["/a", "/a?q=1"] {
        assert!(
            client.get(path, &[]).await.cache_status().contains("miss"),
            "{path}"
        );
    }
    assert!(client.get("/b", &[]).await.cache_status().contains("hit"));
    assert!(
        client.get("/ab", &[]).await.cache_status().contains("hit"),
        "by whole segments"
    );
    handle.purge_prefix("/");
    assert!(client.get("/b", &[]).await.cache_status().contains("miss"));
}

#[tokio::test(start_paused = true)]
async fn a_hundred_concurrent_misses_make_one_inner_call() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "page")
        .delayed(Duration::from_millis(50));
    let client = Arc::new(client(&origin, cache()));
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let client = Arc::clone(&client);
            tokio::spawn(async move { client.get("/hot", &[]).await })
        })
        .collect();
    let mut collapsed = 0;
    for request in requests {
        let reply = request.await.expect("no panic");
        assert_eq!(reply.body, "page");
        if reply.cache_status().ends_with("; collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(origin.calls(), 1);
    assert_eq!(collapsed, 99);
}

#[tokio::test(start_paused = true)]
async fn every_outcome_is_counted_in_the_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let big = "x".repeat(5000);
    let big: &'static str = Box::leak(big.into_boxed_str());
    let origin = Origin::new(move |request, _| {
        Ok(match request.uri().path() {
            "/page" => response(
                200,
                &[("cache-control", "max-age=1, stale-while-revalidate=60")],
                "page",
            ),
            "/private" => response(200, &[("cache-control", "no-store")], "secret"),
            _ => response(200, &[("cache-control", "max-age=60")], big),
        })
    })
    .delayed(Duration::from_millis(50));
    let client = Arc::new(client(
        &origin,
        cache().max_bytes(8 * 1024).max_entry_bytes(6000),
    ));

    let _ = client.get("/page", &[]).await;
    let _ = client.get("/page", &[]).await;
    let _ = client.get("/private", &[]).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    // Stale, served while it is refreshed in the background.
    let _ = client.get("/page", &[]).await;
    // Two at once: one waits for the other's miss.
    let both = [
        tokio::spawn({
            let client = Arc::clone(&client);
            async move { client.get("/big-1", &[]).await }
        }),
        tokio::spawn({
            let client = Arc::clone(&client);
            async move { client.get("/big-1", &[]).await }
        }),
    ];
    for request in both {
        request.await.expect("no panic");
    }
    // A second 5 KB page does not fit beside the first in 8 KiB.
    let _ = client.get("/big-2", &[]).await;

    let snapshot = snapshotter.snapshot().into_vec();
    let value = |name: &str, outcome: Option<&str>| {
        snapshot
            .iter()
            .filter(|(key, _, _, _)| {
                key.key().name() == name
                    && outcome.is_none_or(|outcome| {
                        key.key()
                            .labels()
                            .any(|label| label.key() == "outcome" && label.value() == outcome)
                    })
            })
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(count) => *count,
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "a gauge of bytes"
                )]
                DebugValue::Gauge(bytes) => bytes.into_inner() as u64,
                DebugValue::Histogram(_) => 0,
            })
            .sum::<u64>()
    };
    // The fresh hit, the stale one, and the follower served from what the leader stored.
    assert_eq!(value("floodgate_cache_hits_total", None), 3);
    assert_eq!(
        value("floodgate_cache_misses_total", Some("not_stored")),
        1,
        "no-store"
    );
    assert!(value("floodgate_cache_misses_total", Some("stored")) >= 3);
    assert_eq!(
        value(
            "floodgate_cache_stale_total",
            Some("stale_while_revalidate")
        ),
        1
    );
    assert_eq!(value("floodgate_cache_coalesced_total", Some("served")), 1);
    assert!(value("floodgate_cache_evictions_total", None) >= 1);
    let stored = value("floodgate_cache_stored_bytes", None);
    assert!(
        (5000..=8 * 1024).contains(&stored),
        "one big page fits: {stored} bytes"
    );
}

#[tokio::test(start_paused = true)]
async fn misses_of_a_uri_whose_responses_are_not_stored_stop_waiting_for_one_another() {
    let origin = Origin::new(|_, call| {
        Ok(if call < 10 {
            response(200, &[("cache-control", "private")], "mine")
        } else {
            response(200, &[("cache-control", "max-age=60")], "shared")
        })
    })
    .delayed(Duration::from_millis(50));
    let client = Arc::new(client(&origin, cache()));
    // The first five learn it: four wait for the first's head, then ask themselves.
    assert_eq!(
        wave(&client, "/mine").await,
        (Duration::from_millis(100), 4)
    );
    // The next five go at once.
    assert_eq!(wave(&client, "/mine").await, (Duration::from_millis(50), 0));
    assert_eq!(origin.calls(), 10);
    // A response that may be stored still is, and is then served.
    let stored = client.get("/mine", &[]).await;
    assert!(
        stored.cache_status().ends_with("; stored"),
        "{}",
        stored.cache_status()
    );
    let hit = client.get("/mine", &[]).await;
    assert_eq!(hit.body, "shared");
    assert!(hit.cache_status().starts_with("floodgate; hit"));
}

/// Five GETs of `path` at once: how long the last took, and how many waited for another's
/// miss.
async fn wave(client: &Arc<Client>, path: &'static str) -> (Duration, usize) {
    let start = tokio::time::Instant::now();
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let client = Arc::clone(client);
            tokio::spawn(async move { client.get(path, &[]).await })
        })
        .collect();
    let mut waited = 0;
    for request in requests {
        let reply = request.await.expect("no panic");
        if reply.cache_status().contains("collapsed") {
            waited += 1;
        }
    }
    (start.elapsed(), waited)
}

#[tokio::test(start_paused = true)]
async fn a_write_makes_an_uncacheable_uri_coalesce_again() {
    let origin =
        Origin::fixed(&[("cache-control", "private")], "mine").delayed(Duration::from_millis(50));
    let client = Arc::new(client(&origin, cache()));
    assert_eq!(wave(&client, "/mine").await.1, 4, "learnt");
    assert_eq!(wave(&client, "/mine").await.1, 0, "remembered");
    let _ = client.send(Method::POST, "/mine", &[]).await;
    assert_eq!(wave(&client, "/mine").await.1, 4, "forgotten by the write");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_for_one_client_does_not_stop_the_others_coalescing() {
    let origin = Origin::new(|request, _| {
        Ok(if request.headers().contains_key("authorization") {
            response(200, &[("cache-control", "private")], "yours")
        } else {
            response(
                200,
                &[("cache-control", "max-age=1"), ("etag", "\"v\"")],
                "ours",
            )
        })
    })
    .delayed(Duration::from_millis(50));
    let client = Arc::new(client(&origin, cache()));
    let _ = client.get("/page", &[]).await;
    // A logged-in client's answer is private, and is not stored.
    let _ = client.get("/page", &[("authorization", "Bearer x")]).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    // The stored entry is stale: its revalidation still makes the others wait.
    assert_eq!(wave(&client, "/page").await.1, 4);
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn followers_go_to_the_origin_when_the_leaders_response_is_not_stored() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "secret")
        .delayed(Duration::from_millis(50));
    let client = Arc::new(client(&origin, cache()));
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let client = Arc::clone(&client);
            tokio::spawn(async move { client.get("/private", &[]).await })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.expect("no panic").body, "secret");
    }
    assert_eq!(
        origin.calls(),
        5,
        "no client is handed another's unstorable response"
    );
}

#[tokio::test(start_paused = true)]
async fn the_byte_capacity_holds() {
    let origin = Origin::new(|_, _| {
        Ok(response(
            200,
            &[("cache-control", "max-age=600")],
            leak(&"x".repeat(4096)),
        ))
    });
    let (client, handle) =
        client_and_handle(&origin, cache().max_bytes(64 * 1024).max_entry_bytes(8192));
    for index in 0..100 {
        let _ = client.get(leak(&format!("/item/{index}")), &[]).await;
    }
    let stored = handle.stored_bytes();
    assert!(stored <= 64 * 1024, "{stored} bytes stored");
    assert!(stored > 32 * 1024, "{stored}: the cache is used");
}

/// A body of `count` chunks of `size` bytes, with no size hint: a stream.
struct Chunks {
    left: usize,
    size: usize,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'z'; self.size])))))
    }
}

#[tokio::test(start_paused = true)]
async fn bodies_over_the_entry_limit_stream_through_unstored() {
    let origin = Origin::new(|request, _| {
        let mut streamed = Response::new(if request.uri().path() == "/stream" {
            Chunks {
                left: 10,
                size: 512,
            }
            .boxed()
        } else {
            http_body_util::Full::new(Bytes::from(vec![b'k'; 2048])).boxed()
        });
        streamed
            .headers_mut()
            .insert("cache-control", HeaderValue::from_static("max-age=60"));
        Ok(streamed)
    });
    let client = client(&origin, cache().max_entry_bytes(1024));
    let streamed = client.get("/stream", &[]).await;
    assert_eq!(streamed.body.len(), 5120, "the client gets the whole body");
    let again = client.get("/stream", &[]).await;
    assert_eq!(again.body.len(), 5120);
    assert_eq!(origin.calls(), 2, "nothing stored past the limit");

    let known = client.get("/known", &[]).await;
    assert_eq!(known.body.len(), 2048);
    assert!(
        known
            .cache_status()
            .ends_with("stored=?0; detail=too-large"),
        "{}",
        known.cache_status()
    );
}

#[tokio::test(start_paused = true)]
async fn a_fill_overtaken_by_a_write_is_not_stored() {
    let origin = Origin::new(|request, _| {
        if request.method() == Method::PUT {
            Ok(response(204, &[], ""))
        } else {
            Ok(response(
                200,
                &[("cache-control", "max-age=60")],
                "before the write",
            ))
        }
    })
    .delayed(Duration::from_millis(100));
    let client = Arc::new(client(&origin, cache()));
    let reader = {
        let client = Arc::clone(&client);
        tokio::spawn(async move { client.get("/doc", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let writer = client
        .send(Method::PUT, "/doc", &[])
        .await
        .expect("answered");
    assert_eq!(writer.status, StatusCode::NO_CONTENT);
    let read = reader.await.expect("no panic");
    assert_eq!(
        read.body, "before the write",
        "the reader still gets its answer"
    );
    let next = client.get("/doc", &[]).await;
    assert!(
        next.cache_status().contains("uri-miss"),
        "{}",
        next.cache_status()
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_of_known_length_is_stored_when_its_last_byte_is_read() {
    // hyper stops polling a body once it says it has ended: the fill must not wait for a
    // poll that returns `None`.
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "sized");
    let client = client(&origin, cache());
    let response = client
        .service
        .clone()
        .oneshot(get_request("/sized"))
        .await
        .expect("answered");
    let mut body = response.into_body();
    let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
    assert!(frame.is_some_and(|frame| frame.is_ok()));
    assert!(body.is_end_stream());
    drop(body);
    assert_eq!(
        client.get("/sized", &[]).await.cache_status(),
        "floodgate; hit; ttl=60"
    );

    let empty = Origin::fixed(&[("cache-control", "max-age=60")], "");
    let client = self::client(&empty, cache());
    let response = client
        .service
        .clone()
        .oneshot(get_request("/empty"))
        .await
        .expect("answered");
    assert!(response.body().is_end_stream(), "never polled by hyper");
    drop(response);
    assert_eq!(
        client.get("/empty", &[]).await.cache_status(),
        "floodgate; hit; ttl=60"
    );
}

fn get_request(path: &str) -> Request<RequestBody> {
    Request::get(path)
        .body(RequestBody::default())
        .expect("valid")
}

#[tokio::test(start_paused = true)]
async fn the_layer_reserves_nothing_downstream_in_poll_ready() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "page");
    let layer = cache().build().expect("valid");
    let mut service = tower::ServiceBuilder::new()
        .layer(layer)
        .concurrency_limit(1)
        .service(origin.service());
    for _ in 0..3 {
        let response = tokio::time::timeout(Duration::from_secs(1), async {
            service.ready().await?.call(get_request("/p")).await
        })
        .await
        .expect("a ready cache does not hold the only permit while a clone waits for it")
        .expect("answered");
        let _ = response.into_body().collect().await;
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn revalidation_sends_the_origins_validators_only_and_no_store_refreshes_nothing() {
    let origin = Origin::new(|request, _| {
        if request.headers().contains_key("if-modified-since") {
            Ok(response(304, &[("cache-control", "max-age=100")], ""))
        } else {
            let fields = [
                ("cache-control", "max-age=1"),
                ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ];
            Ok(response(200, &fields, "page"))
        }
    });
    let client = client(&origin, cache());
    let first = client.get("/r", &[]).await;
    assert!(
        first.header("etag").is_empty(),
        "the generated tag is for hits"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    let no_store = client.get("/r", &[("cache-control", "no-store")]).await;
    assert_eq!(no_store.status, StatusCode::OK);
    let sent = origin.last_seen();
    assert!(sent.contains_key("if-modified-since"));
    assert!(
        !sent.contains_key("if-none-match"),
        "the origin never issued the cache's own tag"
    );
    assert!(
        !no_store.cache_status().contains("; stored"),
        "{}",
        no_store.cache_status()
    );
    let next = client.get("/r", &[]).await;
    assert!(
        next.cache_status().starts_with("floodgate; fwd=stale"),
        "{}",
        next.cache_status()
    );
    assert_eq!(origin.calls(), 3);
}

/// RFC 9111 §4.3.4: a 304 whose `ETag` is not the stored one's is about another
/// representation. It refreshes nothing, and the client gets the origin's full answer to
/// its own, unconditional request.
#[tokio::test(start_paused = true)]
async fn a_304_for_another_representation_refreshes_nothing() {
    let origin = Origin::new(|request, call| {
        let revalidation = request.headers().contains_key("if-none-match");
        Ok(match (call, revalidation) {
            (0, _) => response(
                200,
                &[("cache-control", "max-age=1"), ("etag", "\"v1\"")],
                "one",
            ),
            // Asked about v1, the origin answers 304 naming v2.
            (_, true) => response(
                304,
                &[("cache-control", "max-age=100"), ("etag", "\"v2\"")],
                "",
            ),
            (_, false) => response(
                200,
                &[("cache-control", "max-age=100"), ("etag", "\"v2\"")],
                "two",
            ),
        })
    });
    let client = client(&origin, cache());
    assert_eq!(client.get("/v", &[]).await.body, "one");
    tokio::time::advance(Duration::from_secs(2)).await;
    let answer = client.get("/v", &[]).await;
    assert_eq!(
        (answer.status, answer.body.as_ref()),
        (StatusCode::OK, &b"two"[..])
    );
    assert_eq!(answer.header("etag"), "\"v2\"");
    assert_eq!(
        origin.calls(),
        3,
        "the fill, the revalidation, the request as the client sent it"
    );
    assert!(
        !origin.last_seen().contains_key("if-none-match"),
        "the last request carries no validator"
    );
    // What the last answer stored serves the next request.
    assert_eq!(client.get("/v", &[]).await.body, "two");
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_slow_leader_holds_followers_back_only_until_the_coalesce_timeout() {
    let origin =
        Origin::fixed(&[("cache-control", "max-age=60")], "page").delayed(Duration::from_secs(30));
    let client = Arc::new(client(
        &origin,
        cache().coalesce_timeout(Duration::from_secs(1)),
    ));
    let leader = {
        let client = Arc::clone(&client);
        tokio::spawn(async move { client.get("/slow", &[]).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = tokio::time::Instant::now();
    let late = {
        let client = Arc::clone(&client);
        tokio::spawn(async move { client.get("/slow", &[]).await })
    };
    let _ = late.await.expect("no panic");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(30),
        "no wait for the stale flight first"
    );
    let _ = leader.await.expect("no panic");
}

#[tokio::test(start_paused = true)]
async fn a_fresh_entry_answers_one_byte_range_with_a_206() {
    let origin = Origin::fixed(
        &[
            ("cache-control", "max-age=60"),
            ("content-digest", "sha-256=:x:"),
        ],
        "0123456789",
    );
    let client = client(&origin, cache());
    let _ = client.get("/r", &[]).await;
    for (range, status, content_range, body) in [
        ("bytes=0-3", 206, "bytes 0-3/10", "0123"),
        ("bytes=-3", 206, "bytes 7-9/10", "789"),
        ("bytes=8-100", 206, "bytes 8-9/10", "89"),
        ("bytes=10-", 416, "bytes */10", ""),
        // Several ranges, or one that is not valid: the whole response (§14.2).
        ("bytes=0-1,4-5", 200, "", "0123456789"),
        ("bytes=5-2", 200, "", "0123456789"),
    ] {
        let reply = client.get("/r", &[("range", range)]).await;
        assert_eq!(reply.status.as_u16(), status, "{range}");
        assert_eq!(reply.header("content-range"), content_range, "{range}");
        assert_eq!(reply.body, body, "{range}");
        assert!(
            reply.cache_status().starts_with("floodgate; hit;"),
            "{range}: {}",
            reply.cache_status()
        );
    }
    let part = client.get("/r", &[("range", "bytes=2-5")]).await;
    assert_eq!(part.header("content-length"), "4");
    assert!(
        part.header("etag").starts_with("\"fg-"),
        "the stored fields stay"
    );
    assert_eq!(
        part.header("content-digest"),
        "",
        "a digest of the whole is dropped"
    );
    let head = client
        .send(Method::HEAD, "/r", &[("range", "bytes=0-3")])
        .await;
    assert_eq!(
        head.expect("answered").status,
        StatusCode::OK,
        "HEAD ignores Range"
    );
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn if_range_and_conditions_decide_what_a_range_request_gets() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
        "0123456789",
    );
    let client = client(&origin, cache());
    let _ = client.get("/r", &[]).await;
    let range = ("range", "bytes=0-1");
    let same = client.get("/r", &[range, ("if-range", "\"v1\"")]).await;
    assert_eq!(
        (same.status, same.body.as_ref()),
        (StatusCode::PARTIAL_CONTENT, &b"01"[..])
    );
    let changed = client.get("/r", &[range, ("if-range", "\"v0\"")]).await;
    assert_eq!(
        (changed.status, changed.body.len()),
        (StatusCode::OK, 10),
        "another representation: the whole of this one"
    );
    let weak = client.get("/r", &[range, ("if-range", "W/\"v1\"")]).await;
    assert_eq!(weak.status, StatusCode::OK, "a weak tag never matches");
    // A condition the client's copy meets comes first (RFC 9110 §13.2.2).
    let unchanged = client
        .get("/r", &[range, ("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert_eq!(origin.calls(), 1);
    // A client resuming with a precondition gets the origin's answer to it.
    for precondition in [
        ("if-match", "\"v1\""),
        ("if-unmodified-since", "Tue, 01 Dec 2026 10:00:00 GMT"),
    ] {
        let resumed = client.get("/r", &[range, precondition]).await;
        assert_eq!(resumed.cache_status(), "floodgate; fwd=bypass");
    }
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn range_requests_the_cache_cannot_answer_fresh_go_to_the_origin_unstored() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=1, stale-while-revalidate=60")],
        "0123456789",
    );
    let client = client(&origin, cache());
    let missed = client.get("/r", &[("range", "bytes=0-1")]).await;
    assert_eq!(missed.cache_status(), "floodgate; fwd=bypass");
    assert_eq!(origin.last_seen()["range"], "bytes=0-1", "sent on as asked");
    let first = client.get("/r", &[]).await;
    assert!(
        first.cache_status().contains("fwd=uri-miss"),
        "the ranged answer was not stored: {}",
        first.cache_status()
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    // Stale: served whole to a plain GET while refreshed, but a range goes on.
    let stale = client.get("/r", &[("range", "bytes=0-1")]).await;
    assert_eq!(stale.cache_status(), "floodgate; fwd=bypass");
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_layers_stale_while_revalidate_window_serves_stale_and_refreshes_once() {
    let origin = Origin::new(|_, call| {
        let (max_age, body) = if call == 0 {
            ("max-age=1", "old")
        } else {
            ("max-age=60", "new")
        };
        Ok(response(
            200,
            &[("cache-control", max_age), ("etag", "\"v1\"")],
            body,
        ))
    });
    let client = client(
        &origin,
        cache().stale_while_revalidate(Duration::from_secs(30)),
    );
    let _ = client.get("/w", &[]).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..3 {
        let stale = client.get("/w", &[]).await;
        assert_eq!(
            (stale.body.as_ref(), stale.cache_status()),
            (
                &b"old"[..],
                "floodgate; hit; ttl=-4; detail=stale-while-revalidate"
            )
        );
    }
    // Let the background refresh run.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(origin.calls(), 2, "three stale hits, one refresh");
    assert_eq!(origin.last_seen()["if-none-match"], "\"v1\"");
    let fresh = client.get("/w", &[]).await;
    assert_eq!(
        (fresh.body.as_ref(), fresh.cache_status()),
        (&b"new"[..], "floodgate; hit; ttl=59")
    );
    // 31 s stale: past the window, the client waits for the origin.
    tokio::time::advance(Duration::from_secs(91)).await;
    let late = client.get("/w", &[]).await;
    assert!(
        late.cache_status().starts_with("floodgate; fwd=stale;"),
        "{}",
        late.cache_status()
    );
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_layers_stale_if_error_window_covers_500s_and_failures_within_it_only() {
    let origin = Origin::new(|_, call| match call {
        0 => Ok(response(
            200,
            &[("cache-control", "max-age=1"), ("etag", "\"v1\"")],
            "kept",
        )),
        odd if odd % 2 == 1 => Ok(response(500, &[], "down")),
        _ => Err("connection refused"),
    });
    let client = client(&origin, cache().stale_if_error(Duration::from_secs(10)));
    let _ = client.get("/e", &[]).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let on_500 = client.get("/e", &[]).await;
    assert_eq!(
        (on_500.status, on_500.body.as_ref()),
        (StatusCode::OK, &b"kept"[..])
    );
    assert_eq!(
        on_500.cache_status(),
        "floodgate; fwd=stale; fwd-status=500; ttl=-4; detail=stale-if-error"
    );
    let on_error = client
        .send(Method::GET, "/e", &[])
        .await
        .expect("served stale");
    assert_eq!(
        (on_error.body.as_ref(), on_error.cache_status()),
        (
            &b"kept"[..],
            "floodgate; fwd=stale; ttl=-4; detail=stale-if-error"
        )
    );
    // 14 s stale, still kept for revalidation by its ETag, but past the 10 s window.
    tokio::time::advance(Duration::from_secs(10)).await;
    let on_500 = client.get("/e", &[]).await;
    assert_eq!(
        (on_500.status, on_500.body.as_ref()),
        (StatusCode::INTERNAL_SERVER_ERROR, &b"down"[..])
    );
    let on_error = client.send(Method::GET, "/e", &[]).await;
    assert_eq!(on_error.err(), Some("connection refused"));
    assert_eq!(origin.calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_is_not_used_for_a_client_that_wants_validation_or_a_fresh_response() {
    for (request, serves_stale) in [
        (&[][..], true),
        (&[("cache-control", "no-cache")][..], false),
        (&[("pragma", "no-cache")][..], false),
        // Older than the client accepts.
        (&[("cache-control", "max-age=2")][..], false),
        // Young enough, but `max-age` without `max-stale` asks for a fresh response (RFC
        // 9111 §5.2.1.1): the implemented rule is any request `max-age`.
        (&[("cache-control", "max-age=600")][..], false),
        // Fresher than a stale response can be.
        (&[("cache-control", "min-fresh=1")][..], false),
    ] {
        let origin = Origin::new(|_, call| {
            Ok(if call == 0 {
                response(
                    200,
                    &[("cache-control", "max-age=1, stale-if-error=60")],
                    "kept",
                )
            } else {
                response(500, &[], "down")
            })
        });
        let client = client(&origin, cache());
        let _ = client.get("/e", &[]).await;
        // 5 s old, 4 s stale.
        tokio::time::advance(Duration::from_secs(5)).await;
        let reply = client.get("/e", request).await;
        assert_eq!(origin.calls(), 2, "{request:?}");
        let expected = if serves_stale {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        assert_eq!(
            reply.status,
            expected,
            "{request:?}: {}",
            reply.cache_status()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_with_authorization_is_served_only_what_says_it_may_be_shared() {
    for (cache_control, shared) in [
        ("max-age=60", false),
        ("public, max-age=60", true),
        ("s-maxage=60", true),
        ("max-age=60, must-revalidate", true),
    ] {
        let origin =
            Origin::new(move |_, _| Ok(response(200, &[("cache-control", cache_control)], "page")));
        let client = client(&origin, cache());
        // Stored from a request without credentials.
        let _ = client.get("/a", &[]).await;
        let reply = client.get("/a", &[("authorization", "Bearer x")]).await;
        let expected = if shared {
            "floodgate; hit; ttl=60"
        } else {
            "floodgate; fwd=request; stored=?0; detail=authorization"
        };
        assert_eq!(reply.cache_status(), expected, "{cache_control}");
        assert_eq!(
            origin.calls(),
            if shared { 1 } else { 2 },
            "{cache_control}"
        );
    }
}

/// A case of `successful_writes_invalidate_their_uri_and_same_origin_locations`: method,
/// status and fields of the answer to a write to `/w`, the paths it invalidates and the
/// ones it leaves.
type WriteCase = (
    Method,
    u16,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
    &'static [&'static str],
);

#[tokio::test(start_paused = true)]
async fn successful_writes_invalidate_their_uri_and_same_origin_locations() {
    // Every request says `Host: shop.example`, so an absolute URI can be judged.
    const HOST: &[(&str, &str)] = &[("host", "shop.example")];
    let cases: Vec<WriteCase> = vec![
        (
            Method::POST,
            201,
            &[("content-location", "/a")],
            &["/w", "/a"],
            &["/b"],
        ),
        (
            Method::POST,
            201,
            &[
                ("location", "http://shop.example/a"),
                ("content-location", "http://SHOP.example/b?q=1"),
            ],
            &["/w", "/a", "/b?q=1"],
            &["/c"],
        ),
        (
            Method::POST,
            201,
            &[
                ("location", "http://elsewhere.example/a"),
                ("content-location", "http://elsewhere.example/b"),
            ],
            &["/w"],
            &["/a", "/b"],
        ),
        (
            Method::PATCH,
            200,
            &[("content-location", "/a")],
            &["/w", "/a"],
            &["/b"],
        ),
        (
            Method::DELETE,
            204,
            &[("location", "/a")],
            &["/w", "/a"],
            &["/b"],
        ),
        (Method::POST, 409, &[("location", "/a")], &[], &["/w", "/a"]),
        (
            Method::POST,
            500,
            &[("content-location", "/a")],
            &[],
            &["/w", "/a"],
        ),
    ];
    for (method, status, fields, invalidated, kept) in cases {
        let origin = Origin::new(move |request, _| {
            Ok(if request.method() == Method::GET {
                response(200, &[("cache-control", "max-age=60")], "page")
            } else {
                response(status, fields, "")
            })
        });
        let client = client(&origin, cache());
        for path in invalidated.iter().chain(kept) {
            let _ = client.get(path, HOST).await;
        }
        let written = client
            .send(method.clone(), "/w", HOST)
            .await
            .expect("answered");
        assert_eq!(written.status.as_u16(), status);
        for path in invalidated {
            let reply = client.get(path, HOST).await;
            assert!(
                reply.cache_status().starts_with("floodgate; fwd=uri-miss"),
                "{method} {status} {fields:?}: {path} {}",
                reply.cache_status()
            );
        }
        for path in kept {
            assert_eq!(
                client.get(path, HOST).await.cache_status(),
                "floodgate; hit; ttl=60",
                "{method} {status} {fields:?}: {path}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_follower_stops_waiting_at_the_coalesce_timeout_and_asks_the_origin_itself() {
    let origin =
        Origin::fixed(&[("cache-control", "max-age=60")], "page").delayed(Duration::from_secs(5));
    let client = Arc::new(client(
        &origin,
        cache().coalesce_timeout(Duration::from_secs(1)),
    ));
    let spawn = |client: &Arc<Client>| {
        let client = Arc::clone(client);
        tokio::spawn(async move { client.get("/slow", &[]).await })
    };
    let leader = spawn(&client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let follower = spawn(&client);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(origin.calls(), 1, "at 1.4 s the follower still waits");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(origin.calls(), 2, "at 1.6 s it has asked the origin");
    assert!(!leader.is_finished(), "before the leader's answer");

    let follower = follower.await.expect("no panic");
    assert_eq!(follower.body, "page");
    // Forwarded, not collapsed; 5 s on the way, so 55 s left.
    assert_eq!(
        follower.cache_status(),
        "floodgate; fwd=uri-miss; ttl=55; stored; collapsed=?0"
    );
    let leader = leader.await.expect("no panic");
    assert_eq!(
        leader.cache_status(),
        "floodgate; fwd=uri-miss; ttl=55; stored"
    );
}

#[tokio::test(start_paused = true)]
async fn only_if_cached_answers_504_for_a_stale_entry_it_may_not_serve() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
        "body",
    );
    let client = client(&origin, cache());
    let _ = client.get("/o", &[]).await;
    tokio::time::advance(Duration::from_secs(20)).await;
    let refused = client
        .get("/o", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(refused.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.calls(), 1);
    // It is stored all the same: a client that takes it stale is served it.
    let accepted = client
        .get("/o", &[("cache-control", "only-if-cached, max-stale")])
        .await;
    assert_eq!(
        (accepted.status, accepted.cache_status()),
        (StatusCode::OK, "floodgate; hit; ttl=-10; detail=max-stale")
    );
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn proxy_revalidate_entries_are_served_fresh_and_revalidated_once_stale() {
    let origin = Origin::new(|request, _| {
        let fields = [
            ("cache-control", "max-age=1, proxy-revalidate"),
            ("etag", "\"v1\""),
        ];
        Ok(if request.headers().contains_key("if-none-match") {
            response(304, &fields, "")
        } else {
            response(200, &fields, "body")
        })
    });
    // A layer that would serve other stale entries while refreshing them.
    let client = client(
        &origin,
        cache().stale_while_revalidate(Duration::from_secs(60)),
    );
    let _ = client.get("/p", &[]).await;
    assert_eq!(
        client.get("/p", &[]).await.cache_status(),
        "floodgate; hit; ttl=1"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    let stale = client.get("/p", &[("cache-control", "max-stale=60")]).await;
    assert_eq!(
        origin.calls(),
        2,
        "not served stale, even to a client that takes it"
    );
    assert_eq!(origin.last_seen()["if-none-match"], "\"v1\"");
    assert_eq!(
        (stale.body.as_ref(), stale.cache_status()),
        (
            &b"body"[..],
            "floodgate; fwd=stale; fwd-status=304; ttl=1; stored"
        )
    );
}

#[tokio::test(start_paused = true)]
async fn default_ttl_keeps_a_200_without_cache_headers_fresh_for_that_long() {
    let origin = Origin::fixed(&[], "page");
    let client = client(&origin, cache().default_ttl(Duration::from_secs(10)));
    assert_eq!(
        client.get("/t", &[]).await.cache_status(),
        "floodgate; fwd=uri-miss; ttl=10; stored"
    );
    tokio::time::advance(Duration::from_secs(9)).await;
    let hit = client.get("/t", &[]).await;
    assert_eq!(
        (hit.body.as_ref(), hit.cache_status()),
        (&b"page"[..], "floodgate; hit; ttl=1")
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let expired = client.get("/t", &[]).await;
    assert!(
        expired
            .cache_status()
            .starts_with("floodgate; fwd=uri-miss"),
        "{}",
        expired.cache_status()
    );
    assert_eq!(origin.calls(), 2);

    let origin = Origin::fixed(&[], "page");
    let client = self::client(&origin, cache());
    assert_eq!(
        client.get("/t", &[]).await.cache_status(),
        "floodgate; fwd=uri-miss; stored=?0; detail=no-validator"
    );
    let _ = client.get("/t", &[]).await;
    assert_eq!(origin.calls(), 2, "without default_ttl, not stored");
}

#[tokio::test(start_paused = true)]
async fn last_modified_without_cache_control_gives_a_heuristic_lifetime() {
    for (fields, lifetime) in [
        // A tenth of Date − Last-Modified. (A Date ahead of the cache's clock gives the
        // response no apparent age.)
        (
            &[
                ("date", "Fri, 01 Jan 2100 00:00:00 GMT"),
                ("last-modified", "Thu, 31 Dec 2099 23:43:20 GMT"),
            ][..],
            100,
        ),
        // At most a day.
        (
            &[("last-modified", "Thu, 01 Jan 2015 00:00:00 GMT")][..],
            86_400,
        ),
    ] {
        let origin = Origin::fixed(fields, "page");
        let client = client(&origin, cache());
        assert_eq!(
            client.get("/h", &[]).await.cache_status(),
            format!("floodgate; fwd=uri-miss; ttl={lifetime}; stored")
        );
        tokio::time::advance(Duration::from_secs(lifetime - 1)).await;
        assert_eq!(
            client.get("/h", &[]).await.cache_status(),
            "floodgate; hit; ttl=1"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let _ = client.get("/h", &[]).await;
        assert!(
            origin.last_seen().contains_key("if-modified-since"),
            "{fields:?}: revalidated once stale"
        );
        assert_eq!(origin.calls(), 2, "{fields:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_age_from_upstream_counts_against_the_lifetime() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60"), ("age", "20")], "page");
    let client = client(&origin, cache());
    assert_eq!(
        client.get("/a", &[]).await.cache_status(),
        "floodgate; fwd=uri-miss; ttl=40; stored"
    );
    let hit = client.get("/a", &[]).await;
    assert_eq!(
        (hit.header("age"), hit.cache_status()),
        ("20", "floodgate; hit; ttl=40")
    );
    tokio::time::advance(Duration::from_secs(40)).await;
    let _ = client.get("/a", &[]).await;
    assert_eq!(origin.calls(), 2, "stale at 40 s in the cache");
}

#[tokio::test(start_paused = true)]
async fn generated_etags_can_be_turned_off() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "page");
    let client = client(&origin, cache().generate_etag(false));
    let _ = client.get("/g", &[]).await;
    let hit = client.get("/g", &[]).await;
    assert_eq!(hit.cache_status(), "floodgate; hit; ttl=60");
    assert!(!hit.headers.contains_key("etag"), "{:?}", hit.headers);
    // With no tag, `If-None-Match: *` matches nothing.
    let any = client.get("/g", &[("if-none-match", "*")]).await;
    assert_eq!(
        (any.status, any.body.as_ref()),
        (StatusCode::OK, &b"page"[..])
    );
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn keyed_by_host_two_hosts_with_one_path_get_their_own_entries() {
    for (key_by_host, calls, for_b) in [(true, 2, "for b"), (false, 1, "for a")] {
        let origin = Origin::new(|request, _| {
            let body = if request.headers()["host"] == "a.example" {
                "for a"
            } else {
                "for b"
            };
            Ok(response(200, &[("cache-control", "max-age=60")], body))
        });
        let client = client(&origin, cache().key_by_host(key_by_host));
        for _ in 0..2 {
            let a = client.get("/p", &[("host", "a.example")]).await;
            let b = client.get("/p", &[("host", "b.example")]).await;
            assert_eq!(
                (a.body.as_ref(), b.body.as_ref()),
                (&b"for a"[..], for_b.as_bytes()),
                "key_by_host({key_by_host})"
            );
        }
        assert_eq!(origin.calls(), calls, "key_by_host({key_by_host})");
    }
}

/// A streamed body of these chunks, with no size hint.
struct Pieces(std::collections::VecDeque<Bytes>);

impl Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

/// Four chunks of 512 bytes, each of its own letter.
fn pieces() -> Vec<Bytes> {
    (b'a'..=b'd')
        .map(|byte| Bytes::from(vec![byte; 512]))
        .collect()
}

async fn next_chunk(body: &mut crate::CacheBody<OriginBody>) -> Bytes {
    body.frame()
        .await
        .expect("a frame")
        .expect("no error")
        .into_data()
        .expect("data")
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_leaves_its_fill_at_the_first_chunk_over_the_entry_limit() {
    let origin = Origin::new(|_, _| {
        let mut streamed = Response::new(Pieces(pieces().into()).boxed());
        streamed
            .headers_mut()
            .insert("cache-control", HeaderValue::from_static("max-age=60"));
        Ok(streamed)
    });
    let client = client(&origin, cache().max_entry_bytes(1024));
    let response = client
        .service
        .clone()
        .oneshot(get_request("/big"))
        .await
        .expect("answered");
    let mut body = response.into_body();
    let mut read = vec![next_chunk(&mut body).await, next_chunk(&mut body).await];
    // 1024 bytes, within the limit: the fill goes on, and another miss waits for it.
    let waiting = tokio::time::timeout(Duration::from_secs(1), client.get("/big", &[])).await;
    assert!(waiting.is_err(), "a follower waits while the fill goes on");
    read.push(next_chunk(&mut body).await);
    // 1536 bytes: the fill is dropped, buffer and all, and its flight ends with it.
    let start = tokio::time::Instant::now();
    let alone = client.get("/big", &[]).await;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no flight left to wait for"
    );
    assert!(
        alone.cache_status().starts_with("floodgate; fwd=uri-miss")
            && !alone.cache_status().contains("collapsed"),
        "{}",
        alone.cache_status()
    );
    assert_eq!(alone.body, pieces().concat());
    read.push(next_chunk(&mut body).await);
    assert!(body.frame().await.is_none());
    assert_eq!(read, pieces(), "every chunk reaches the reader unchanged");

    let again = client.get("/big", &[]).await;
    assert!(
        again.cache_status().starts_with("floodgate; fwd=uri-miss"),
        "nothing stored: {}",
        again.cache_status()
    );
    assert_eq!(origin.calls(), 3);
}

/// Gets `path` until the hot set answers it, and some more.
async fn heat(client: &Client, handle: &crate::CacheHandle, path: &str) -> Bytes {
    let mut body = Bytes::new();
    for _ in 0..2 * crate::hot::HOT_HITS {
        let hit = client.get(path, &[]).await;
        assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
        body = hit.body;
    }
    assert!(handle.is_hot(path), "{path} is hot");
    body
}

#[tokio::test(start_paused = true)]
async fn a_hot_uri_is_not_answered_once_the_store_lets_it_go() {
    const BODIES: [&str; 8] = ["v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7"];
    let origin = Origin::new(|request, call| {
        if request.method() == Method::POST {
            return Ok(response(204, &[], ""));
        }
        Ok(response(
            200,
            &[("cache-control", "max-age=60")],
            BODIES[call % BODIES.len()],
        ))
    });
    let (client, handle) = client_and_handle(&origin, cache());
    let mut last = client.get("/hot", &[]).await.body;
    assert_eq!(heat(&client, &handle, "/hot").await, last);

    // Each way the store lets a URI go: the next request misses, and its answer is the one
    // served after.
    let mut expect_new = async |how: &str, reply: Reply, missed: &str| {
        assert!(
            reply.cache_status().contains(missed),
            "{how}: {}",
            reply.cache_status()
        );
        assert_ne!(reply.body, last, "{how}");
        last = reply.body;
        assert_eq!(heat(&client, &handle, "/hot").await, last, "{how}");
    };
    let _ = client.send(Method::POST, "/hot", &[]).await;
    let reply = client.get("/hot", &[]).await;
    expect_new("a write", reply, "uri-miss").await;

    let reply = client.get("/hot", &[("cache-control", "no-cache")]).await;
    expect_new("a replacement", reply, "fwd=request").await;

    handle.invalidate("/hot");
    let reply = client.get("/hot", &[]).await;
    expect_new("the handle", reply, "uri-miss").await;

    handle.purge_prefix("/");
    let reply = client.get("/hot", &[]).await;
    expect_new("a purge", reply, "uri-miss").await;

    tokio::time::advance(Duration::from_secs(60)).await;
    let reply = client.get("/hot", &[]).await;
    expect_new("past use", reply, "uri-miss").await;
}

#[tokio::test(start_paused = true)]
async fn a_hot_uri_evicted_for_room_leaves_the_hot_set() {
    let page = leak(&"x".repeat(1_000));
    let origin =
        Origin::new(move |_, _| Ok(response(200, &[("cache-control", "max-age=60")], page)));
    // Room for about three pages.
    let (client, handle) =
        client_and_handle(&origin, cache().max_bytes(5_000).max_entry_bytes(2_000));
    let _ = client.get("/a", &[]).await;
    let _ = heat(&client, &handle, "/a").await;
    // Pages read since moka's frequency sketch started (at half full) outweigh `/a`, read
    // before it, and push it out.
    let mut others = 0;
    while handle.is_hot("/a") {
        others += 1;
        assert!(others <= 20, "/a is still hot after 20 other pages");
        let path = format!("/page/{others}");
        let _ = client.get(&path, &[]).await;
        let _ = client.get(&path, &[]).await;
    }
    assert!(
        client
            .get("/a", &[])
            .await
            .cache_status()
            .contains("uri-miss"),
        "evicted, and not answered from the hot set"
    );
}
