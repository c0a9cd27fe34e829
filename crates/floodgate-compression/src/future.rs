//! The response future of [`Compression`](crate::Compression).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use floodgate_core::encoding::{Encoding, Negotiated};
use floodgate_core::header;
use floodgate_core::metrics::{COMPRESSION_RESPONSES_TOTAL, LABEL_OUTCOME};
use http::header::{ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, ETAG, VARY};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, response};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::{BoxError, CompressionBody};
use crate::codec::Encoder;
use crate::gzip;
use crate::settings::{Eligibility, Settings};

pin_project! {
    /// The response future of [`Compression`](crate::Compression).
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        settings: Arc<Settings>,
        negotiated: Negotiated,
        method: Method,
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<F, B> {
        Waiting { #[pin] future: F },
        // A small body of known size, gathered to be compressed in one call.
        Collecting {
            parts: Option<response::Parts>,
            #[pin]
            body: B,
            collected: BytesMut,
            trailers: Option<HeaderMap>,
        },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn new(
        future: F,
        settings: Arc<Settings>,
        negotiated: Negotiated,
        method: Method,
    ) -> Self {
        Self {
            state: State::Waiting { future },
            settings,
            negotiated,
            method,
        }
    }
}

/// The coding to apply, if any: what the client accepted, unless identity.
fn chosen(negotiated: Negotiated) -> Option<Encoding> {
    match negotiated {
        Negotiated::Use(Encoding::Identity) | Negotiated::NotAcceptable => None,
        Negotiated::Use(encoding) => Some(encoding),
    }
}

fn counted(outcome: &'static str) {
    tracing::debug!(target: "floodgate::compression", outcome, "response");
    metrics::counter!(COMPRESSION_RESPONSES_TOTAL.name, LABEL_OUTCOME => outcome).increment(1);
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<CompressionBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProjection::Waiting { future } => {
                    let (mut parts, body) = ready!(future.poll(cx))?.into_parts();
                    let size = body.size_hint().exact();
                    let coding = chosen(*this.negotiated);
                    let stream = match this.settings.eligibility(this.method, &parts, size) {
                        Eligibility::Never => {
                            headers_without_content(this.method, &mut parts, coding);
                            counted("skipped");
                            return Poll::Ready(Ok(identity(parts, body)));
                        }
                        Eligibility::Skip => {
                            counted("skipped");
                            return Poll::Ready(Ok(identity(parts, body)));
                        }
                        Eligibility::Compress { stream } => stream,
                    };
                    // The content depends on Accept-Encoding from here on, whatever the
                    // client chose (RFC 9110 §12.5.5).
                    add_vary(&mut parts.headers);
                    let Some(encoding) = coding else {
                        // Nothing acceptable but identity, or not even that: identity, as
                        // RFC 9110 §12.5.3 prefers to a 406.
                        counted("identity");
                        return Poll::Ready(Ok(identity(parts, body)));
                    };
                    mark_encoded(&mut parts.headers, encoding);
                    let max = this.settings.one_shot_max_bytes;
                    if encoding == Encoding::Gzip && !stream && size.is_some_and(|size| size <= max)
                    {
                        let capacity = usize::try_from(size.unwrap_or(0)).unwrap_or(0);
                        this.state.set(State::Collecting {
                            parts: Some(parts),
                            body,
                            collected: BytesMut::with_capacity(capacity),
                            trailers: None,
                        });
                        continue;
                    }
                    parts.headers.remove(CONTENT_LENGTH);
                    counted("stream");
                    let encoder = Encoder::new(encoding, this.settings.level)
                        .expect("negotiation picks only codings this build supports");
                    let body = CompressionBody::stream(body, encoder, stream);
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                StateProjection::Collecting {
                    parts,
                    mut body,
                    collected,
                    trailers,
                } => {
                    let max =
                        usize::try_from(this.settings.one_shot_max_bytes).unwrap_or(usize::MAX);
                    let finished: Result<(), BoxError> = loop {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => match frame.into_data() {
                                Ok(data) => collected.extend_from_slice(&data.into()),
                                Err(frame) => *trailers = frame.into_trailers().ok(),
                            },
                            Some(Err(error)) => break Err(error.into()),
                            None => break Ok(()),
                        }
                        // A body longer than its exact size hint breaks the Body contract;
                        // stop there rather than buffer whatever it sends.
                        if collected.len() > max {
                            break Err(
                                "the response body is longer than its exact size hint".into()
                            );
                        }
                    };
                    let mut parts = parts
                        .take()
                        .expect("the head is taken once, when the body ends");
                    let compressed = finished.and_then(|()| {
                        gzip::compress(collected, this.settings.level).map_err(BoxError::from)
                    });
                    let body = match compressed {
                        Ok(compressed) => {
                            counted("one_shot");
                            parts
                                .headers
                                .insert(CONTENT_LENGTH, HeaderValue::from(compressed.len()));
                            CompressionBody::whole(compressed, trailers.take())
                        }
                        Err(error) => {
                            parts.headers.remove(CONTENT_LENGTH);
                            CompressionBody::failed(error)
                        }
                    };
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
            }
        }
    }
}

fn identity<B>(parts: response::Parts, body: B) -> Response<CompressionBody<B>> {
    Response::from_parts(parts, CompressionBody::identity(body))
}

/// Headers of responses that carry no content but describe content that would be encoded.
///
/// - A 304 carries the `ETag` and `Vary` its 200 would have (RFC 9110 §15.4.5). Weakening
///   the strong tag lets a cache match it to the stored compressed response (RFC 9111
///   §4.3.4; a weak tag matches either).
/// - A HEAD response carries the headers of the GET (RFC 9110 §9.3.2): the coding, and no
///   length, which would only be known by compressing.
fn headers_without_content(method: &Method, parts: &mut response::Parts, coding: Option<Encoding>) {
    let Some(coding) = coding else { return };
    if parts.status == StatusCode::NOT_MODIFIED {
        add_vary(&mut parts.headers);
        weaken_etag(&mut parts.headers);
    } else if method == Method::HEAD
        && parts.status.is_success()
        && !parts.headers.contains_key(CONTENT_ENCODING)
    {
        add_vary(&mut parts.headers);
        mark_encoded(&mut parts.headers, coding);
        parts.headers.remove(CONTENT_LENGTH);
    }
}

/// Adds `Accept-Encoding` to `Vary` unless it, or `*`, is already there.
fn add_vary(headers: &mut HeaderMap) {
    let covered = headers.get_all(VARY).iter().any(|value| {
        header::list(value.as_bytes())
            .any(|name| name == b"*" || name.eq_ignore_ascii_case(b"accept-encoding"))
    });
    if !covered {
        headers.append(VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// Headers of a response whose content is now encoded: the coding, no byte ranges of it, and
/// a weak validator, because a strong `ETag` names exact bytes (RFC 9110 §8.8.1).
fn mark_encoded(headers: &mut HeaderMap, encoding: Encoding) {
    headers.insert(
        CONTENT_ENCODING,
        HeaderValue::from_static(encoding.as_str()),
    );
    headers.remove(ACCEPT_RANGES);
    weaken_etag(headers);
}

fn weaken_etag(headers: &mut HeaderMap) {
    if let Some(etag) = headers.get(ETAG)
        && etag.as_bytes().starts_with(b"\"")
        && let Ok(weak) = HeaderValue::from_bytes(&[&b"W/"[..], etag.as_bytes()].concat())
    {
        headers.insert(ETAG, weak);
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("negotiated", &self.negotiated)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}
