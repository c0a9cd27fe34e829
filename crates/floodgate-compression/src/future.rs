//! The response future of [`Compression`](crate::Compression).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use floodgate_core::encoding::{Encoding, Negotiated};
use floodgate_core::header;
use http::header::{ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, ETAG, VARY};
use http::{HeaderMap, HeaderValue, Method, Response, response};
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
        Collecting { parts: Option<response::Parts>, #[pin] body: B, collected: BytesMut, trailers: Option<HeaderMap> },
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
                    let stream = match this.settings.eligibility(this.method, &parts, size) {
                        Eligibility::Never | Eligibility::Skip => {
                            return Poll::Ready(Ok(Response::from_parts(
                                parts,
                                CompressionBody::identity(body),
                            )));
                        }
                        Eligibility::Compress { stream } => stream,
                    };
                    // The content depends on Accept-Encoding from here on, whatever the
                    // client chose (RFC 9110 §12.5.5).
                    add_vary(&mut parts.headers);
                    let Negotiated::Use(encoding) = *this.negotiated else {
                        // Nothing acceptable: identity anyway, as RFC 9110 §12.5.3 prefers.
                        return Poll::Ready(Ok(Response::from_parts(
                            parts,
                            CompressionBody::identity(body),
                        )));
                    };
                    if encoding == Encoding::Identity {
                        return Poll::Ready(Ok(Response::from_parts(
                            parts,
                            CompressionBody::identity(body),
                        )));
                    }
                    mark_encoded(&mut parts.headers, encoding);
                    let one_shot =
                        size.is_some_and(|size| size <= this.settings.one_shot_max_bytes);
                    if encoding == Encoding::Gzip && !stream && one_shot {
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
                    let finished = loop {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => match frame.into_data() {
                                Ok(data) => collected.extend_from_slice(&data.into()),
                                Err(frame) => *trailers = frame.into_trailers().ok(),
                            },
                            Some(Err(error)) => break Err(error.into()),
                            None => break Ok(()),
                        }
                    };
                    let mut parts = parts
                        .take()
                        .expect("the head is taken once, when the body ends");
                    let body = match finished {
                        Ok(()) => {
                            let compressed = gzip::compress(collected, this.settings.level);
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

/// Headers of a response whose content is now encoded: the coding, no byte ranges of it, and a
/// weak validator, because a strong `ETag` names exact bytes (RFC 9110 §8.8.1).
fn mark_encoded(headers: &mut HeaderMap, encoding: Encoding) {
    headers.insert(
        CONTENT_ENCODING,
        HeaderValue::from_static(encoding.as_str()),
    );
    headers.remove(ACCEPT_RANGES);
    if let Some(etag) = headers.get(ETAG)
        && etag.as_bytes().starts_with(b"\"")
        && let Ok(weak) = HeaderValue::from_bytes(&[&b"W/"[..], etag.as_bytes()].concat())
    {
        headers.insert(ETAG, weak);
    }
}
