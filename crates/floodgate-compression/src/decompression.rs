//! [`RequestDecompressionLayer`]: gzip request bodies decoded as they stream, with a hard cap
//! on decoded bytes.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use floodgate_core::body::ResponseBody;
use floodgate_core::rejection::{ProblemJson, Reason, Rejection};
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Limited;
use pin_project_lite::pin_project;
use tokio_util::io::StreamReader;
use tower::Layer;
use tower_service::Service;

use crate::body::{BoxError, pass_through};
use crate::codec::{self, SUPPORTED, supported_list};
use floodgate_core::encoding::Encoding;

/// How much decoded data one frame of a decoded body carries at most.
const CHUNK: usize = 32 * 1024;

/// Decodes request bodies in gzip (`Content-Encoding: gzip` or `x-gzip`), and with their
/// features deflate, br and zstd, as they stream, and stops at a limit on decoded bytes.
///
/// A small upload can inflate about a thousandfold, so a 1 MiB body can decode to 1 GiB.
/// Past [`max_decoded_bytes`](Self::max_decoded_bytes), 10 MiB by default, the body fails
/// with [`http_body_util::LengthLimitError`], which axum answers with 413. No more than the
/// limit plus one 32 KiB chunk is ever decoded. Corrupt or truncated data fails with an I/O
/// error, which axum answers with 400. A request in any other coding, or in several, is
/// refused here with 415 and an `Accept-Encoding` listing the codings this build decodes. Bodies without a coding pass untouched, with no limit:
/// bound those with `RequestBodyLimit` or axum's `DefaultBodyLimit`.
///
/// ```
/// use floodgate_compression::RequestDecompressionLayer;
///
/// let layer = RequestDecompressionLayer::new().max_decoded_bytes(1024 * 1024);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct RequestDecompressionLayer {
    max_decoded_bytes: usize,
}

impl RequestDecompressionLayer {
    /// The default cap on decoded bytes: 10 MiB.
    pub const DEFAULT_MAX_DECODED_BYTES: usize = 10 * 1024 * 1024;

    /// Decodes gzip with the default cap.
    pub fn new() -> Self {
        Self {
            max_decoded_bytes: Self::DEFAULT_MAX_DECODED_BYTES,
        }
    }

    /// Fails a decoded body past `bytes`.
    pub fn max_decoded_bytes(mut self, bytes: usize) -> Self {
        self.max_decoded_bytes = bytes;
        self
    }
}

impl Default for RequestDecompressionLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for RequestDecompressionLayer {
    type Service = RequestDecompression<S>;

    fn layer(&self, inner: S) -> RequestDecompression<S> {
        RequestDecompression {
            inner,
            max_decoded_bytes: self.max_decoded_bytes,
        }
    }
}

/// The service [`RequestDecompressionLayer`] makes.
#[derive(Debug, Clone)]
pub struct RequestDecompression<S> {
    inner: S,
    max_decoded_bytes: usize,
}

/// What a request body's `Content-Encoding` asks of the layer.
enum RequestCoding {
    /// No coding, or `identity`: pass the body on.
    Identity,
    /// A coding this build decodes.
    Decode(Encoding),
    /// A coding this build does not decode, or several.
    Unsupported,
}

fn coding<B>(request: &Request<B>) -> RequestCoding {
    let mut values = request.headers().get_all(CONTENT_ENCODING).iter();
    let Some(value) = values.next() else {
        return RequestCoding::Identity;
    };
    if values.next().is_some() {
        return RequestCoding::Unsupported;
    }
    match Encoding::from_token(floodgate_core::header::trim(value.as_bytes())) {
        Some(Encoding::Identity) => RequestCoding::Identity,
        Some(encoding) if SUPPORTED.contains(&encoding) => RequestCoding::Decode(encoding),
        _ => RequestCoding::Unsupported,
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestDecompression<S>
where
    S: Service<Request<DecompressionBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Into<Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body,
    ResBody::Data: From<Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = DecompressionFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match coding(&request) {
            RequestCoding::Identity => DecompressionFuture::called(
                self.inner.call(request.map(DecompressionBody::identity)),
            ),
            RequestCoding::Decode(encoding) => {
                let (mut parts, body) = request.into_parts();
                // The headers now describe the decoded body, whose length is unknown.
                parts.headers.remove(CONTENT_ENCODING);
                parts.headers.remove(CONTENT_LENGTH);
                let body = DecompressionBody::decoded(encoding, body, self.max_decoded_bytes);
                DecompressionFuture::called(self.inner.call(Request::from_parts(parts, body)))
            }
            RequestCoding::Unsupported => {
                let supported = supported_list();
                let rejection = Rejection::new(
                    Reason::UnsupportedEncoding,
                    format!("the request body's Content-Encoding is not supported; send one of {supported}, or none"),
                )
                .with_header(ACCEPT_ENCODING, HeaderValue::try_from(supported).unwrap_or(HeaderValue::from_static("gzip")));
                DecompressionFuture::rejected(rejection.into_response(&ProblemJson))
            }
        }
    }
}

pin_project! {
    /// The response future of [`RequestDecompression`].
    pub struct DecompressionFuture<F> {
        #[pin]
        future: Option<F>,
        rejected: Option<Response<Bytes>>,
    }
}

impl<F> DecompressionFuture<F> {
    fn called(future: F) -> Self {
        Self {
            future: Some(future),
            rejected: None,
        }
    }

    fn rejected(response: Response<Bytes>) -> Self {
        Self {
            future: None,
            rejected: Some(response),
        }
    }
}

impl<F, B, E> std::future::Future for DecompressionFuture<F>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
    B: Body,
    B::Data: From<Bytes>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(future) = this.future.as_pin_mut() {
            return future
                .poll(cx)
                .map_ok(|response| response.map(ResponseBody::inner));
        }
        let response = this
            .rejected
            .take()
            .expect("a DecompressionFuture is not polled after it completed");
        Poll::Ready(Ok(response.map(ResponseBody::full)))
    }
}

impl<F> fmt::Debug for DecompressionFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecompressionFuture")
            .field("rejected", &self.rejected.is_some())
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// A request body as the inner service sees it: as sent, or decoded and capped.
    pub struct DecompressionBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProjection]
    enum Kind<B> {
        Identity { #[pin] body: B },
        Decoded { #[pin] body: Limited<Decoded> },
    }
}

impl<B> DecompressionBody<B>
where
    B: Body,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    fn identity(body: B) -> Self {
        Self {
            kind: Kind::Identity { body },
        }
    }

    /// `body` decoded from `encoding`, one of the supported codings.
    fn decoded(encoding: Encoding, body: B, max_decoded_bytes: usize) -> Self
    where
        B: Send + 'static,
    {
        let reader = StreamReader::new(DataStream { body });
        let decoder = codec::decoder(encoding, reader).expect("only supported codings are decoded");
        let output = Decoded {
            decoder,
            buffer: BytesMut::new(),
        };
        Self {
            kind: Kind::Decoded {
                body: Limited::new(output, max_decoded_bytes),
            },
        }
    }
}

impl<B> Body for DecompressionBody<B>
where
    B: Body,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProjection::Identity { body } => pass_through(body, cx),
            KindProjection::Decoded { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Identity { body } => body.is_end_stream(),
            Kind::Decoded { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Identity { body } => body.size_hint(),
            Kind::Decoded { .. } => SizeHint::default(),
        }
    }
}

impl<B> fmt::Debug for DecompressionBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Identity { .. } => "identity",
            Kind::Decoded { .. } => "decoded",
        };
        f.debug_struct("DecompressionBody")
            .field("kind", &kind)
            .finish()
    }
}

pin_project! {
    /// A body's data frames as a stream of byte chunks, for the decoder's reader.
    struct DataStream<B> {
        #[pin]
        body: B,
    }
}

impl<B> futures_core::Stream for DataStream<B>
where
    B: Body,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let mut body = self.project().body;
        loop {
            return Poll::Ready(match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Some(Ok(data.into())),
                    // Trailers of the encoded body say nothing about the decoded one.
                    Err(_) => continue,
                },
                Some(Err(error)) => Some(Err(io::Error::other(error.into()))),
                None => None,
            });
        }
    }
}

/// The decoded data, at most one chunk at a time.
struct Decoded {
    decoder: codec::Decoder,
    buffer: BytesMut,
}

impl Body for Decoded {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        this.buffer.reserve(CHUNK);
        let read = ready!(tokio_util::io::poll_read_buf(
            this.decoder.as_mut(),
            cx,
            &mut this.buffer
        ))?;
        if read == 0 {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(this.buffer.split().freeze()))))
    }
}
