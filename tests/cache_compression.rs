//! The cache outside the compression layer: a body is compressed once, stored once, and
//! served to every client that gets the same coding.

use std::convert::Infallible;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use floodgate_cache::CacheLayer;
use floodgate_compression::CompressionLayer;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};

/// Some 5 KiB of JSON.
fn page() -> String {
    let items: Vec<String> = (0..200)
        .map(|i| format!("{{\"id\":{i},\"name\":\"item {i}\"}}"))
        .collect();
    format!("[{}]", items.join(","))
}

/// A GET of `/items`, with this `Accept-Encoding` if any: the head and the whole body.
async fn get<S, B>(service: &S, accept_encoding: Option<&'static str>) -> (HeaderMap, Bytes)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let mut request = Request::get("/items");
    if let Some(accept_encoding) = accept_encoding {
        request = request.header("accept-encoding", accept_encoding);
    }
    let request = request.body(Full::default()).expect("valid request");
    let response = service.clone().oneshot(request).await.expect("answered");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body read").to_bytes();
    (parts.headers, body)
}

fn field<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(start_paused = true)]
async fn a_compressed_body_is_made_once_and_served_to_every_client_of_its_coding() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = Arc::clone(&calls);
        tower::service_fn(move |_: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                let response = Response::builder()
                    .header("content-type", "application/json")
                    .header("cache-control", "max-age=60")
                    .body(Full::new(Bytes::from(page())))
                    .expect("valid response");
                Ok::<_, Infallible>(response)
            }
        })
    };
    let service = ServiceBuilder::new()
        .layer(CacheLayer::builder().build().expect("valid cache"))
        .layer(CompressionLayer::new())
        .service(handler);

    let (first, gzipped) = get(&service, Some("gzip, deflate, br")).await;
    assert_eq!(field(&first, "content-encoding"), "gzip");
    assert_eq!(
        field(&first, "cache-status"),
        "floodgate; fwd=uri-miss; ttl=60; stored"
    );
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(&gzipped[..])
        .read_to_string(&mut decoded)
        .expect("valid gzip");
    assert_eq!(decoded, page());

    let (second, body) = get(&service, Some("br;q=1, gzip")).await;
    assert_eq!(field(&second, "content-encoding"), "gzip");
    assert_eq!(field(&second, "cache-status"), "floodgate; hit; ttl=60");
    assert_eq!(body, gzipped, "the stored bytes");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let (plain, body) = get(&service, None).await;
    assert_eq!(field(&plain, "content-encoding"), "");
    assert!(
        field(&plain, "cache-status").starts_with("floodgate; fwd=vary-miss"),
        "{}",
        field(&plain, "cache-status")
    );
    assert_eq!(body, page());
    assert_eq!(calls.load(Ordering::SeqCst), 2, "identity is its own entry");

    // Both variants stay.
    for accept_encoding in [None, Some("gzip")] {
        let (again, _) = get(&service, accept_encoding).await;
        assert_eq!(
            field(&again, "cache-status"),
            "floodgate; hit; ttl=60",
            "{accept_encoding:?}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
