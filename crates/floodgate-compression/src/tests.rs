//! The layer end to end.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt};

use crate::CompressionLayer;

fn json(bytes: usize) -> Bytes {
    let mut text = String::from("[");
    let mut i = 0;
    while text.len() < bytes {
        let _ = write!(
            text,
            "{{\"id\":{i},\"name\":\"item {i}\",\"price\":{}.5}},",
            i % 97
        );
        i += 1;
    }
    text.truncate(bytes);
    Bytes::from(text)
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

/// Sends `request` to a service answering `response()` through the default layer.
async fn through(
    layer: CompressionLayer,
    request: Request<()>,
    response: impl Fn() -> Response<Full<Bytes>> + Clone + Send + 'static,
) -> (http::response::Parts, Bytes) {
    let service = layer.layer(tower::service_fn(move |_: Request<()>| {
        let response = response.clone();
        async move { Ok::<_, Infallible>(response()) }
    }));
    let (parts, body) = service
        .oneshot(request)
        .await
        .expect("infallible")
        .into_parts();
    (
        parts,
        body.collect().await.expect("the body completes").to_bytes(),
    )
}

fn get(accept: Option<&str>) -> Request<()> {
    let mut request = Request::get("/items");
    if let Some(accept) = accept {
        request = request.header(ACCEPT_ENCODING, accept);
    }
    request.body(()).expect("valid request")
}

fn ok(body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[tokio::test]
async fn one_shot_bodies_round_trip_with_an_exact_length() {
    for size in [256, 1024, 16 * 1024, 256 * 1024] {
        let original = json(size);
        let body = original.clone();
        let (parts, compressed) = through(CompressionLayer::new(), get(Some("gzip")), move || {
            let mut response = ok(body.clone());
            response
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(size));
            response
        })
        .await;
        assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
        assert_eq!(
            parts.headers[CONTENT_LENGTH],
            compressed.len().to_string().as_str()
        );
        assert_eq!(gunzip(&compressed), original, "{size} bytes");
    }
}

/// A body of unknown size, sent in chunks.
fn chunked(chunks: Vec<Bytes>) -> StreamBody<futures_stream::Iter> {
    StreamBody::new(futures_stream::Iter(
        chunks
            .into_iter()
            .map(|chunk| Ok(Frame::data(chunk)))
            .collect(),
    ))
}

mod futures_stream {
    use super::*;
    /// A ready stream of frames.
    pub(super) struct Iter(pub(super) std::collections::VecDeque<Result<Frame<Bytes>, Infallible>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.0.pop_front())
        }
    }
}

#[tokio::test]
async fn streamed_bodies_round_trip_without_a_length() {
    let original = json(600 * 1024);
    let chunks: Vec<Bytes> = original.chunks(7_000).map(Bytes::copy_from_slice).collect();
    let service = CompressionLayer::new().layer(tower::service_fn(move |_: Request<()>| {
        let chunks = chunks.clone();
        async move { Ok::<_, Infallible>(Response::new(chunked(chunks))) }
    }));
    let (parts, body) = service
        .oneshot(get(Some("gzip")))
        .await
        .expect("infallible")
        .into_parts();
    assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
    assert!(!parts.headers.contains_key(CONTENT_LENGTH));
    let compressed = body.collect().await.expect("the body completes").to_bytes();
    assert_eq!(gunzip(&compressed), original);
}

#[tokio::test]
async fn headers_of_a_compressed_response() {
    let body = json(4096);
    let (parts, _) = through(CompressionLayer::new(), get(Some("gzip")), move || {
        let mut response = ok(body.clone());
        let headers = response.headers_mut();
        headers.insert(VARY, HeaderValue::from_static("origin"));
        headers.insert(ETAG, HeaderValue::from_static("\"v1\""));
        headers.insert(
            http::header::ACCEPT_RANGES,
            HeaderValue::from_static("bytes"),
        );
        response
    })
    .await;
    let vary: Vec<_> = parts
        .headers
        .get_all(VARY)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect();
    assert_eq!(vary, ["origin", "accept-encoding"]);
    assert_eq!(parts.headers[ETAG], "W/\"v1\"");
    assert!(!parts.headers.contains_key(http::header::ACCEPT_RANGES));
}

#[tokio::test]
async fn vary_is_not_repeated_and_star_covers_it() {
    for existing in ["Accept-Encoding", "origin, accept-encoding", "*"] {
        let body = json(4096);
        let (parts, _) = through(CompressionLayer::new(), get(Some("gzip")), move || {
            let mut response = ok(body.clone());
            response
                .headers_mut()
                .insert(VARY, HeaderValue::from_static(existing));
            response
        })
        .await;
        assert_eq!(parts.headers.get_all(VARY).iter().count(), 1, "{existing}");
    }
}

#[tokio::test]
async fn an_eligible_response_the_client_did_not_want_compressed_still_varies() {
    for accept in [
        None,
        Some("identity"),
        Some("compress"),
        Some("gzip;q=0, *;q=0"),
    ] {
        let original = json(4096);
        let body = original.clone();
        let (parts, sent) = through(CompressionLayer::new(), get(accept), move || {
            ok(body.clone())
        })
        .await;
        assert!(!parts.headers.contains_key(CONTENT_ENCODING), "{accept:?}");
        assert_eq!(parts.headers[VARY], "accept-encoding", "{accept:?}");
        assert_eq!(sent, original);
    }
}

/// Each rule that leaves a response alone, as (what, request, response), and whether the
/// response should still say `Vary: Accept-Encoding`.
#[tokio::test]
#[allow(clippy::too_many_lines, reason = "a table of cases, one per row")]
async fn skip_rules() {
    type Case = (&'static str, Method, fn(&mut Response<Full<Bytes>>), bool);
    let cases: Vec<Case> = vec![
        (
            "already encoded",
            Method::GET,
            |r| {
                r.headers_mut()
                    .insert(CONTENT_ENCODING, HeaderValue::from_static("br"));
            },
            false,
        ),
        (
            "204",
            Method::GET,
            |r| *r.status_mut() = StatusCode::NO_CONTENT,
            false,
        ),
        (
            "206",
            Method::GET,
            |r| *r.status_mut() = StatusCode::PARTIAL_CONTENT,
            false,
        ),
        (
            "content-range",
            Method::GET,
            |r| {
                r.headers_mut()
                    .insert(CONTENT_RANGE, HeaderValue::from_static("bytes 0-9/100"));
            },
            false,
        ),
        (
            "no-transform",
            Method::GET,
            |r| {
                r.headers_mut().insert(
                    CACHE_CONTROL,
                    HeaderValue::from_static("public, No-Transform"),
                );
            },
            false,
        ),
        (
            "png",
            Method::GET,
            |r| {
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("image/png"));
            },
            false,
        ),
        (
            "video",
            Method::GET,
            |r| {
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
            },
            false,
        ),
        (
            "zip",
            Method::GET,
            |r| {
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/zip"));
            },
            false,
        ),
        (
            "grpc",
            Method::GET,
            |r| {
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc+proto"),
                );
            },
            false,
        ),
        (
            "event stream without flushing",
            Method::GET,
            |r| {
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            },
            false,
        ),
    ];
    for (what, method, change, _) in cases {
        let original = json(4096);
        let body = original.clone();
        let request = Request::builder()
            .method(method)
            .uri("/")
            .header(ACCEPT_ENCODING, "gzip")
            .body(())
            .expect("valid");
        let (parts, sent) = through(CompressionLayer::new(), request, move || {
            let mut response = ok(body.clone());
            change(&mut response);
            response
        })
        .await;
        let coding = parts
            .headers
            .get(CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").to_owned());
        assert_ne!(coding.as_deref(), Some("gzip"), "{what}");
        assert!(!parts.headers.contains_key(VARY), "{what}");
        assert_eq!(sent, original, "{what}");
    }
}

#[tokio::test]
async fn not_modified_and_head_carry_the_headers_of_the_compressed_response() {
    let (parts, _) = through(CompressionLayer::new(), get(Some("gzip")), || {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
            .headers_mut()
            .insert(ETAG, HeaderValue::from_static("\"v1\""));
        response
    })
    .await;
    assert_eq!(parts.headers[ETAG], "W/\"v1\"");
    assert_eq!(parts.headers[VARY], "accept-encoding");
    assert!(!parts.headers.contains_key(CONTENT_ENCODING));

    let body = json(4096);
    let head = Request::head("/items")
        .header(ACCEPT_ENCODING, "gzip")
        .body(())
        .expect("valid");
    let (parts, sent) = through(CompressionLayer::new(), head, move || {
        let mut response = ok(body.clone());
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(4096));
        response
    })
    .await;
    assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
    assert_eq!(parts.headers[VARY], "accept-encoding");
    assert!(!parts.headers.contains_key(CONTENT_LENGTH));
    // The body is the handler's: hyper sends none for HEAD.
    assert_eq!(sent.len(), 4096);
}

/// A body whose exact size hint is smaller than what it sends.
struct Liar(Option<Bytes>);

impl Body for Liar {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|data| Ok(Frame::data(data))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(1024)
    }
}

#[tokio::test]
async fn a_body_longer_than_its_size_hint_is_not_buffered_past_the_limit() {
    let layer = CompressionLayer::new().one_shot_max_bytes(64 * 1024);
    let service = layer.layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Liar(Some(json(1024 * 1024)))))
    }));
    let body = service
        .oneshot(get(Some("gzip")))
        .await
        .expect("infallible")
        .into_body();
    assert!(body.collect().await.is_err());
}

#[tokio::test]
async fn small_bodies_stay_uncompressed_and_svg_is_compressed() {
    let small = json(100);
    let body = small.clone();
    let (parts, sent) = through(CompressionLayer::new(), get(Some("gzip")), move || {
        ok(body.clone())
    })
    .await;
    assert!(!parts.headers.contains_key(CONTENT_ENCODING));
    assert_eq!(sent, small);

    let svg = Bytes::from("<svg>".to_owned() + &"<rect width=\"1\"/>".repeat(100) + "</svg>");
    let (parts, _) = through(CompressionLayer::new(), get(Some("gzip")), move || {
        let mut response = Response::new(Full::new(svg.clone()));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
        response
    })
    .await;
    assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
}

#[tokio::test]
async fn a_predicate_replaces_the_content_rules() {
    let layer =
        CompressionLayer::new().predicate(|parts, _| parts.headers.contains_key("x-compress"));
    let small = json(100);
    let (parts, sent) = through(layer.clone(), get(Some("gzip")), move || {
        let mut response = ok(small.clone());
        response
            .headers_mut()
            .insert("x-compress", HeaderValue::from_static("1"));
        response
    })
    .await;
    assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
    assert_eq!(gunzip(&sent), json(100));
    let large = json(8192);
    let (parts, _) = through(layer, get(Some("gzip")), move || ok(large.clone())).await;
    assert!(!parts.headers.contains_key(CONTENT_ENCODING));
}

#[tokio::test]
async fn the_offered_codings_and_their_order_are_configurable() {
    use floodgate_core::encoding::Encoding;
    let none = CompressionLayer::new()
        .codings([])
        .expect("an empty list is valid");
    let body = json(4096);
    let (parts, _) = through(none, get(Some("gzip")), move || ok(body.clone())).await;
    assert!(!parts.headers.contains_key(CONTENT_ENCODING));
    assert_eq!(parts.headers[VARY], "accept-encoding");
    assert!(
        CompressionLayer::new()
            .codings([Encoding::Identity])
            .is_err()
    );
}

#[test]
fn levels_above_nine_are_refused() {
    assert!(CompressionLayer::new().level(10).is_err());
    assert!(CompressionLayer::new().level(0).is_ok());
}

/// A body that yields each chunk sent on a channel, and is pending in between.
struct Channel(mpsc::Receiver<Bytes>);

impl Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[tokio::test]
async fn an_event_stream_gets_each_event_before_the_next_is_produced() {
    let (events, channel) = mpsc::channel(1);
    let channel = std::sync::Mutex::new(Some(channel));
    let service = CompressionLayer::new()
        .flush_streams(true)
        .layer(tower::service_fn(move |_: Request<()>| {
            let taken = channel
                .lock()
                .expect("not poisoned")
                .take()
                .expect("one request");
            async move {
                let mut response = Response::new(Channel(taken));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                Ok::<_, Infallible>(response)
            }
        }));
    let response = service
        .oneshot(get(Some("gzip")))
        .await
        .expect("infallible");
    assert_eq!(response.headers()[CONTENT_ENCODING], "gzip");
    let mut body = response.into_body();
    let mut received = Vec::new();
    for n in 0..3 {
        let event = format!("data: event {n}\n\n");
        events
            .send(Bytes::from(event.clone()))
            .await
            .expect("the body is listening");
        // The compressed bytes of this event arrive before the next one exists.
        let frame = body.frame().await.expect("a frame").expect("no error");
        received.extend_from_slice(&frame.into_data().expect("data"));
        let mut decoder = flate2::write::GzDecoder::new(Vec::new());
        std::io::Write::write_all(&mut decoder, &received).expect("decodes");
        std::io::Write::flush(&mut decoder).expect("decodes");
        let so_far = String::from_utf8(decoder.get_ref().clone()).expect("text");
        assert!(so_far.ends_with(&event), "after event {n}: {so_far:?}");
    }
    drop(events);
    while let Some(frame) = body.frame().await {
        received.extend_from_slice(&frame.expect("no error").into_data().unwrap_or_default());
    }
    assert_eq!(
        String::from_utf8(gunzip(&received)).expect("text"),
        "data: event 0\n\ndata: event 1\n\ndata: event 2\n\n"
    );
}

#[tokio::test]
async fn trailers_pass_through_a_compressed_stream() {
    let service =
        CompressionLayer::new().layer(tower::service_fn(move |_: Request<()>| {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let frames: std::collections::VecDeque<_> =
                [Frame::data(json(50_000)), Frame::trailers(trailers)]
                    .into_iter()
                    .map(Ok)
                    .collect();
            async move {
                Ok::<_, Infallible>(Response::new(StreamBody::new(futures_stream::Iter(frames))))
            }
        }));
    let body = service
        .oneshot(get(Some("gzip")))
        .await
        .expect("infallible")
        .into_body();
    let collected = body.collect().await.expect("completes");
    assert_eq!(
        collected.trailers().map(|t| t["grpc-status"].clone()),
        Some(HeaderValue::from_static("0"))
    );
    assert_eq!(gunzip(&collected.to_bytes()), json(50_000));
}

#[tokio::test]
async fn the_service_is_cloneable_and_ready_forwarding() {
    let mut service = CompressionLayer::new().layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let response = service
        .ready()
        .await
        .expect("ready")
        .call(get(Some("gzip")))
        .await
        .expect("infallible");
    assert!(!response.headers().contains_key(CONTENT_ENCODING));
}

mod decompression {
    use super::*;
    use crate::RequestDecompressionLayer;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        std::io::Write::write_all(&mut encoder, data).expect("in memory");
        encoder.finish().expect("in memory")
    }

    /// What the inner service saw: the decoded body, or the body error.
    async fn upload(
        coding: Option<&str>,
        body: Bytes,
        limit: usize,
    ) -> (StatusCode, Result<Bytes, BoxError>) {
        let seen = Arc::new(std::sync::Mutex::new(None));
        let record = Arc::clone(&seen);
        let service = RequestDecompressionLayer::new()
            .max_decoded_bytes(limit)
            .layer(tower::service_fn(
                move |request: Request<crate::DecompressionBody<Full<Bytes>>>| {
                    let record = Arc::clone(&record);
                    async move {
                        let coding = request.headers().get(CONTENT_ENCODING);
                        assert!(
                            coding.is_none_or(|coding| coding == "identity"),
                            "{coding:?}"
                        );
                        let collected = request
                            .into_body()
                            .collect()
                            .await
                            .map(http_body_util::Collected::to_bytes);
                        *record.lock().expect("not poisoned") = Some(collected);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                },
            ));
        let mut request = Request::post("/items")
            .body(Full::new(body))
            .expect("valid");
        if let Some(coding) = coding {
            request.headers_mut().insert(
                CONTENT_ENCODING,
                HeaderValue::from_str(coding).expect("valid"),
            );
        }
        let response = service.oneshot(request).await.expect("infallible");
        let status = response.status();
        let seen = seen.lock().expect("not poisoned").take();
        (
            status,
            seen.unwrap_or_else(|| Err("the inner service was not called".into())),
        )
    }

    use crate::BoxError;

    #[tokio::test]
    async fn gzip_bodies_are_decoded_in_any_spelling() {
        let original = json(100_000);
        for coding in ["gzip", "GZIP", "x-gzip", " gzip "] {
            let (status, seen) = upload(Some(coding), Bytes::from(gzip(&original)), 1 << 20).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(seen.expect("decoded"), original, "{coding}");
        }
        let (_, seen) = upload(None, original.clone(), 10).await;
        assert_eq!(seen.expect("passed through"), original);
        let (_, seen) = upload(Some("identity"), original.clone(), 10).await;
        assert_eq!(seen.expect("passed through"), original);
    }

    #[tokio::test]
    async fn other_codings_get_415_with_accept_encoding() {
        for coding in ["compress", "gzip, br", "x-unknown"] {
            let service = RequestDecompressionLayer::new().layer(tower::service_fn(
                |_: Request<crate::DecompressionBody<Full<Bytes>>>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                },
            ));
            let mut request = Request::post("/")
                .body(Full::new(Bytes::from_static(b"x")))
                .expect("valid");
            request
                .headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static(coding));
            let response = service.oneshot(request).await.expect("infallible");
            assert_eq!(
                response.status(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{coding}"
            );
            let accepted = response.headers()[ACCEPT_ENCODING]
                .to_str()
                .expect("ascii")
                .to_owned();
            assert!(accepted.starts_with("gzip"), "{accepted}");
        }
    }

    /// A body that counts how many bytes the service pulled from it.
    struct Counted {
        chunks: std::collections::VecDeque<Bytes>,
        read: Arc<AtomicUsize>,
    }

    impl Body for Counted {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let chunk = self.chunks.pop_front();
            if let Some(chunk) = &chunk {
                self.read.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            Poll::Ready(chunk.map(|chunk| Ok(Frame::data(chunk))))
        }
    }

    #[tokio::test]
    async fn a_gigabyte_bomb_stops_at_the_limit_having_read_a_sliver() {
        // 1 024 gzip members of 1 MiB of zeros each: about 1 MiB that decodes to 1 GiB.
        let member = Bytes::from(gzip(&vec![0_u8; 1 << 20]));
        let chunks: std::collections::VecDeque<Bytes> = (0..1024).map(|_| member.clone()).collect();
        let total: usize = chunks.iter().map(Bytes::len).sum();
        let read = Arc::new(AtomicUsize::new(0));
        let limit = 10 << 20;
        let service = RequestDecompressionLayer::new()
            .max_decoded_bytes(limit)
            .layer(tower::service_fn(
                |request: Request<crate::DecompressionBody<Counted>>| async move {
                    let error = request
                        .into_body()
                        .collect()
                        .await
                        .map(|_| ())
                        .expect_err("over the limit");
                    let limit = error
                        .downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(if limit {
                        "limit"
                    } else {
                        "other"
                    }))))
                },
            ));
        let mut request = Request::post("/")
            .body(Counted {
                chunks,
                read: Arc::clone(&read),
            })
            .expect("valid");
        request
            .headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let response = service.oneshot(request).await.expect("infallible");
        let verdict = response
            .into_body()
            .collect()
            .await
            .expect("infallible")
            .to_bytes();
        assert_eq!(
            verdict, "limit",
            "the error is a LengthLimitError, which axum answers with 413"
        );
        // Decoding stopped at 10 MiB of 1 GiB: about 11 of the 1 024 members were read.
        let read = read.load(Ordering::Relaxed);
        assert!(read * 50 < total, "read {read} of {total} compressed bytes");
    }

    #[tokio::test]
    async fn encoded_bodies_over_their_limit_are_refused() {
        // Declared too large: 413 before the service is called.
        let service = RequestDecompressionLayer::new()
            .max_encoded_bytes(100)
            .layer(tower::service_fn(
                |_: Request<crate::DecompressionBody<Full<Bytes>>>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                },
            ));
        let mut request = Request::post("/")
            .body(Full::new(Bytes::from(gzip(&json(10_000)))))
            .expect("valid");
        request
            .headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        request
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(3_000));
        let response = service.oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

        // Undeclared: endless empty gzip members decode to nothing, so only the encoded
        // limit stops them; the error is the LengthLimitError itself.
        let empty = Bytes::from(gzip(b""));
        let chunks: std::collections::VecDeque<Bytes> =
            (0..100_000).map(|_| empty.clone()).collect();
        let read = Arc::new(AtomicUsize::new(0));
        let service = RequestDecompressionLayer::new()
            .max_encoded_bytes(64 * 1024)
            .layer(tower::service_fn(
                |request: Request<crate::DecompressionBody<Counted>>| async move {
                    let error = request
                        .into_body()
                        .collect()
                        .await
                        .map(|_| ())
                        .expect_err("over the limit");
                    let limit = error
                        .downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(if limit {
                        "limit"
                    } else {
                        "other"
                    }))))
                },
            ));
        let mut request = Request::post("/")
            .body(Counted {
                chunks,
                read: Arc::clone(&read),
            })
            .expect("valid");
        request
            .headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let response = service.oneshot(request).await.expect("infallible");
        let verdict = response
            .into_body()
            .collect()
            .await
            .expect("infallible")
            .to_bytes();
        assert_eq!(verdict, "limit");
        assert!(read.load(Ordering::Relaxed) <= 64 * 1024 + empty.len());
    }

    #[tokio::test]
    async fn corrupt_and_truncated_bodies_fail_with_an_io_error() {
        let good = gzip(&json(10_000));
        let truncated = Bytes::copy_from_slice(&good[..good.len() / 2]);
        let mut flipped = good.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0xff;
        for body in [
            truncated,
            Bytes::from(flipped),
            Bytes::from_static(b"not gzip at all"),
        ] {
            let (status, seen) = upload(Some("gzip"), body, 1 << 20).await;
            assert_eq!(status, StatusCode::OK);
            let error = seen.expect_err("undecodable");
            assert!(
                error
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_none()
            );
        }
    }
}

/// Every optional coding, both ways: responses decode with an independent decoder, uploads
/// decode to what was sent.
#[cfg(any(feature = "deflate", feature = "br", feature = "zstd"))]
mod codings {
    use super::*;
    use crate::RequestDecompressionLayer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn enabled() -> Vec<&'static str> {
        let mut codings = Vec::new();
        if cfg!(feature = "deflate") {
            codings.push("deflate");
        }
        if cfg!(feature = "br") {
            codings.push("br");
        }
        if cfg!(feature = "zstd") {
            codings.push("zstd");
        }
        codings
    }

    async fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
        use async_compression::tokio::bufread;
        let mut out = Vec::new();
        match coding {
            // deflate is the zlib format: flate2 decodes it on its own.
            "deflate" => {
                flate2::read::ZlibDecoder::new(data).read_to_end_sync(&mut out);
            }
            #[cfg(feature = "br")]
            "br" => {
                bufread::BrotliDecoder::new(data)
                    .read_to_end(&mut out)
                    .await
                    .expect("valid br");
            }
            #[cfg(feature = "zstd")]
            "zstd" => {
                bufread::ZstdDecoder::new(data)
                    .read_to_end(&mut out)
                    .await
                    .expect("valid zstd");
            }
            other => panic!("no decoder for {other}"),
        }
        out
    }

    async fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
        use async_compression::tokio::write;
        match coding {
            "deflate" => {
                let mut encoder =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
                std::io::Write::write_all(&mut encoder, data).expect("in memory");
                encoder.finish().expect("in memory")
            }
            #[cfg(feature = "br")]
            "br" => {
                let mut encoder = write::BrotliEncoder::new(Vec::new());
                encoder.write_all(data).await.expect("in memory");
                encoder.shutdown().await.expect("in memory");
                encoder.into_inner()
            }
            #[cfg(feature = "zstd")]
            "zstd" => {
                let mut encoder = write::ZstdEncoder::new(Vec::new());
                encoder.write_all(data).await.expect("in memory");
                encoder.shutdown().await.expect("in memory");
                encoder.into_inner()
            }
            other => panic!("no encoder for {other}"),
        }
    }

    trait ReadToEndSync {
        fn read_to_end_sync(self, out: &mut Vec<u8>);
    }

    impl<R: Read> ReadToEndSync for R {
        fn read_to_end_sync(mut self, out: &mut Vec<u8>) {
            self.read_to_end(out).expect("valid data");
        }
    }

    #[tokio::test]
    async fn responses_in_each_coding_decode_to_the_original() {
        for coding in enabled() {
            for size in [4096, 300 * 1024] {
                let original = json(size);
                let body = original.clone();
                let (parts, sent) =
                    through(CompressionLayer::new(), get(Some(coding)), move || {
                        ok(body.clone())
                    })
                    .await;
                assert_eq!(parts.headers[CONTENT_ENCODING], coding);
                assert_eq!(
                    decode(coding, &sent).await,
                    original,
                    "{coding}, {size} bytes"
                );
            }
        }
    }

    #[tokio::test]
    async fn uploads_in_each_coding_are_decoded() {
        for coding in enabled() {
            let original = json(100_000);
            let encoded = Bytes::from(encode(coding, &original).await);
            let service = RequestDecompressionLayer::new().layer(tower::service_fn(
                |request: Request<crate::DecompressionBody<Full<Bytes>>>| async move {
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(http_body_util::Collected::to_bytes);
                    Ok::<_, Infallible>(Response::new(Full::new(body.unwrap_or_default())))
                },
            ));
            let mut request = Request::post("/").body(Full::new(encoded)).expect("valid");
            request
                .headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static(coding));
            let response = service.oneshot(request).await.expect("infallible");
            let decoded = response
                .into_body()
                .collect()
                .await
                .expect("infallible")
                .to_bytes();
            assert_eq!(decoded, original, "{coding}");
        }
    }

    #[tokio::test]
    async fn gzip_stays_preferred_on_ties() {
        let body = json(4096);
        let (parts, _) = through(
            CompressionLayer::new(),
            get(Some("br, zstd, deflate, gzip")),
            move || ok(body.clone()),
        )
        .await;
        assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
    }
}
