//! [`RequestDecompressionLayer`]: request bodies decoded as they stream, with hard caps on
//! encoded and decoded bytes.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use floodgate_core::body::ResponseBody;
use floodgate_core::encoding::Encoding;
use floodgate_core::metrics::{DECOMPRESSION_REQUESTS_TOTAL, LABEL_OUTCOME};
use floodgate_core::rejection::{ProblemJson, Reason, Rejection};
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tokio_util::io::StreamReader;
use tower::Layer;
use tower_service::Service;

use crate::body::{BoxError, pass_through};
use crate::codec::{self, SUPPORTED, supported_list};

/// The most decoded data one read produces, and the size of the one buffer it reuses.
const CHUNK: usize = 32 * 1024;

/// Decodes request bodies in gzip (`Content-Encoding: gzip` or `x-gzip`), and with their
/// features deflate, br and zstd, as they stream, within two limits.
///
/// - **Decoded bytes**, [`max_decoded_bytes`](Self::max_decoded_bytes), 10 MiB by default.
///   A small upload can inflate about a thousandfold, so 1 MiB can decode to 1 GiB. Past the
///   limit the body fails with [`http_body_util::LengthLimitError`], which axum answers with
///   413. At most the limit plus one 32 KiB read is ever decoded, and the data the service
///   holds is no more than what it was handed.
/// - **Encoded bytes**, [`max_encoded_bytes`](Self::max_encoded_bytes), 10 MiB by default.
///   This bounds the work on input that decodes to nothing, such as endless empty gzip
///   members or zstd skippable frames. A declared `Content-Length` above it is refused at
///   once with 413; a body that grows past it fails with `LengthLimitError`.
///
/// Corrupt or truncated data fails with an I/O error, which axum answers with 400. A request
/// in any other coding, or in several, is refused here with 415 and an `Accept-Encoding`
/// listing the codings this build decodes. Bodies without a coding pass untouched and
/// unlimited: bound those with `RequestBodyLimit` or axum's `DefaultBodyLimit`.
///
/// ```
/// use floodgate_compression::RequestDecompressionLayer;
///
/// let layer = RequestDecompressionLayer::new()
///     .max_decoded_bytes(1024 * 1024)
///     .max_encoded_bytes(256 * 1024);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct RequestDecompressionLayer {
    limits: Limits,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    decoded: usize,
    encoded: usize,
}

impl RequestDecompressionLayer {
    /// The default cap on decoded bytes: 10 MiB.
    pub const DEFAULT_MAX_DECODED_BYTES: usize = 10 * 1024 * 1024;
    /// The default cap on encoded bytes: 10 MiB.
    pub const DEFAULT_MAX_ENCODED_BYTES: usize = 10 * 1024 * 1024;

    /// Decodes every supported coding with the default caps.
    pub fn new() -> Self {
        Self {
            limits: Limits {
                decoded: Self::DEFAULT_MAX_DECODED_BYTES,
                encoded: Self::DEFAULT_MAX_ENCODED_BYTES,
            },
        }
    }

    /// Fails a decoded body past `bytes`.
    pub fn max_decoded_bytes(mut self, bytes: usize) -> Self {
        self.limits.decoded = bytes;
        self
    }

    /// Refuses an encoded body past `bytes`.
    pub fn max_encoded_bytes(mut self, bytes: usize) -> Self {
        self.limits.encoded = bytes;
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
            limits: self.limits,
        }
    }
}

/// The service [`RequestDecompressionLayer`] makes.
#[derive(Debug, Clone)]
pub struct RequestDecompression<S> {
    inner: S,
    limits: Limits,
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

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn counted(outcome: &'static str) {
    tracing::debug!(target: "floodgate::decompression", outcome, "request body");
    metrics::counter!(DECOMPRESSION_REQUESTS_TOTAL.name, LABEL_OUTCOME => outcome).increment(1);
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
        let encoding = match coding(&request) {
            RequestCoding::Identity => {
                let request = request.map(DecompressionBody::identity);
                return DecompressionFuture::called(self.inner.call(request));
            }
            RequestCoding::Decode(encoding) => encoding,
            RequestCoding::Unsupported => {
                counted("unsupported");
                let supported = supported_list();
                let detail = format!(
                    "the request body's Content-Encoding is not supported; send one of \
                     {supported}, or none"
                );
                let accepted =
                    HeaderValue::try_from(supported).unwrap_or(HeaderValue::from_static("gzip"));
                let rejection = Rejection::new(Reason::UnsupportedEncoding, detail)
                    .with_header(ACCEPT_ENCODING, accepted);
                return DecompressionFuture::rejected(rejection.into_response(&ProblemJson));
            }
        };
        let encoded = self.limits.encoded;
        if declared_length(&request).is_some_and(|length| length > encoded as u64) {
            counted("too_large");
            let detail = format!("the encoded request body is over {encoded} bytes");
            let rejection = Rejection::new(Reason::PayloadTooLarge, detail);
            return DecompressionFuture::rejected(rejection.into_response(&ProblemJson));
        }
        counted("decoded");
        let (mut parts, body) = request.into_parts();
        // The headers now describe the decoded body, whose length is unknown.
        parts.headers.remove(CONTENT_ENCODING);
        parts.headers.remove(CONTENT_LENGTH);
        let body = DecompressionBody::decoded(encoding, body, self.limits);
        DecompressionFuture::called(self.inner.call(Request::from_parts(parts, body)))
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

    /// `body` decoded from `encoding`, one of the supported codings, within `limits`.
    fn decoded(encoding: Encoding, body: B, limits: Limits) -> Self
    where
        B: Send + 'static,
    {
        let encoded = Limited::new(body, limits.encoded);
        let reader = StreamReader::new(DataStream { body: encoded });
        let decoder = codec::decoder(encoding, reader).expect("only supported codings are decoded");
        let output = Decoded {
            decoder,
            buffer: BytesMut::with_capacity(CHUNK),
        };
        Self {
            kind: Kind::Decoded {
                body: Limited::new(output, limits.decoded),
            },
        }
    }
}

/// The error a decoded body fails with: a limit on either side surfaces as the
/// `LengthLimitError` itself (axum answers it with 413), not wrapped in the I/O error the
/// decoder reports it in.
fn surface_limit(error: BoxError) -> BoxError {
    let wraps_limit = error
        .downcast_ref::<io::Error>()
        .and_then(io::Error::get_ref)
        .is_some_and(<dyn std::error::Error + Send + Sync>::is::<LengthLimitError>);
    if !wraps_limit {
        return error;
    }
    match error.downcast::<io::Error>() {
        Ok(io) => io
            .into_inner()
            .unwrap_or_else(|| Box::new(io::Error::other("limit"))),
        Err(error) => error,
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
            KindProjection::Decoded { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(surface_limit))),
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
    /// One buffer, reused: each frame is a copy of exactly what was decoded, so a trickle of
    /// small frames holds no more memory than the data itself.
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
        this.buffer.clear();
        let read = ready!(tokio_util::io::poll_read_buf(
            this.decoder.as_mut(),
            cx,
            &mut this.buffer
        ))?;
        if read == 0 {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(&this.buffer)))))
    }
}
