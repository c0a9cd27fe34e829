//! Compression and request decompression in an axum `Router` over real TCP.

mod support;

use std::io::{Read, Write};

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use floodgate::compression::{CompressionLayer, RequestDecompressionLayer};

fn page() -> String {
    let items: Vec<String> = (0..200)
        .map(|i| format!("{{\"id\":{i},\"name\":\"item {i}\"}}"))
        .collect();
    format!("[{}]", items.join(","))
}

fn app() -> Router {
    Router::new()
        .route(
            "/items",
            get(|| async { ([("content-type", "application/json")], page()) }),
        )
        .route(
            "/upload",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .layer(RequestDecompressionLayer::new().max_decoded_bytes(1 << 20))
        .layer(CompressionLayer::new())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    encoder.write_all(data).expect("in memory");
    encoder.finish().expect("in memory")
}

#[tokio::test]
async fn responses_are_gzipped_when_asked_and_plain_when_refused() {
    let address = support::serve(app()).await;
    let gzipped = support::send(address, "GET", "/items", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(gzipped.status, 200);
    assert_eq!(gzipped.header("content-encoding"), Some("gzip"));
    assert_eq!(gzipped.header("vary"), Some("accept-encoding"));
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(&gzipped.raw_body[..])
        .read_to_string(&mut decoded)
        .expect("valid gzip");
    assert_eq!(decoded, page());
    assert_eq!(
        gzipped.header("content-length"),
        Some(gzipped.raw_body.len().to_string().as_str())
    );

    for refused in [
        vec![],
        vec![("accept-encoding", "identity")],
        vec![("accept-encoding", "compress")],
    ] {
        let plain = support::send(address, "GET", "/items", &refused).await;
        assert_eq!(plain.header("content-encoding"), None, "{refused:?}");
        assert_eq!(plain.body, page());
    }
}

#[tokio::test]
async fn gzip_uploads_are_decoded_and_bombs_and_garbage_refused() {
    let address = support::serve(app()).await;
    let ok = support::send_body(
        address,
        "POST",
        "/upload",
        &[("content-encoding", "gzip")],
        &gzip(&[b'a'; 5000]),
    )
    .await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "5000"));

    // 64 MiB of zeros in a few dozen KiB, against a 1 MiB limit.
    let bomb = gzip(&vec![0_u8; 64 << 20]);
    let refused = support::send_body(
        address,
        "POST",
        "/upload",
        &[("content-encoding", "gzip")],
        &bomb,
    )
    .await;
    assert_eq!(refused.status, 413, "{}", refused.body);

    let garbage = support::send_body(
        address,
        "POST",
        "/upload",
        &[("content-encoding", "gzip")],
        b"not gzip",
    )
    .await;
    assert_eq!(garbage.status, 400, "{}", garbage.body);

    let unknown = support::send_body(
        address,
        "POST",
        "/upload",
        &[("content-encoding", "compress")],
        b"x",
    )
    .await;
    assert_eq!(unknown.status, 415);
    assert!(
        unknown
            .header("accept-encoding")
            .is_some_and(|codings| codings.starts_with("gzip"))
    );
    assert_eq!(
        unknown.header("content-type"),
        Some("application/problem+json")
    );
}
