//! [`CompressionBody`]: the response body of a [`Compression`](crate::Compression) service.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::codec::Encoder;

/// The error type of [`CompressionBody`]: the inner body's error, or the compressor's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// A response body: passed through, compressed in one piece, or compressed as it streams.
    pub struct CompressionBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProjection]
    enum Kind<B> {
        Identity { #[pin] body: B },
        Whole { data: Option<Bytes>, trailers: Option<HeaderMap>, error: Option<BoxError> },
        Stream { #[pin] body: B, encoder: Box<Encoder>, flush: bool, stage: Stage },
    }
}

/// Where a streaming body is.
enum Stage {
    Reading,
    /// The encoder is finished; these trailers (if any) go last.
    Trailers(Option<HeaderMap>),
    Done,
}

impl<B> CompressionBody<B> {
    pub(crate) fn identity(body: B) -> Self {
        Self {
            kind: Kind::Identity { body },
        }
    }

    pub(crate) fn whole(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let data = Some(data).filter(|data| !data.is_empty());
        Self {
            kind: Kind::Whole {
                data,
                trailers,
                error: None,
            },
        }
    }

    /// A body that fails at once with `error` (the inner body failed while being collected).
    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            kind: Kind::Whole {
                data: None,
                trailers: None,
                error: Some(error),
            },
        }
    }

    /// Compresses `body` with `encoder` as it streams; with `flush`, every chunk is flushed
    /// (a sync flush), so an event stream's events reach the client when they are produced.
    pub(crate) fn stream(body: B, encoder: Encoder, flush: bool) -> Self {
        let encoder = Box::new(encoder);
        Self {
            kind: Kind::Stream {
                body,
                encoder,
                flush,
                stage: Stage::Reading,
            },
        }
    }
}

/// Polls an untouched body, converting its data to `Bytes` and its error to [`BoxError`].
pub(crate) fn pass_through<B>(
    body: Pin<&mut B>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    body.poll_frame(cx).map(|frame| {
        frame.map(|frame| {
            frame
                .map(|frame| frame.map_data(Into::into))
                .map_err(Into::into)
        })
    })
}

impl<B> Body for CompressionBody<B>
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
            KindProjection::Whole {
                data,
                trailers,
                error,
            } => {
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(
                    trailers
                        .take()
                        .map(|trailers| Ok(Frame::trailers(trailers))),
                )
            }
            KindProjection::Stream {
                mut body,
                encoder,
                flush,
                stage,
            } => loop {
                match stage {
                    Stage::Done => return Poll::Ready(None),
                    Stage::Trailers(trailers) => {
                        let trailers = trailers.take();
                        *stage = Stage::Done;
                        return Poll::Ready(trailers.map(|trailers| Ok(Frame::trailers(trailers))));
                    }
                    Stage::Reading => {}
                }
                match ready!(body.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            encoder.write_all(cx, &data.into())?;
                            if *flush {
                                encoder.flush(cx, false)?;
                            }
                        }
                        Err(frame) => {
                            *stage = Stage::Trailers(frame.into_trailers().ok());
                            encoder.flush(cx, true)?;
                        }
                    },
                    Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                    None => {
                        *stage = Stage::Trailers(None);
                        encoder.flush(cx, true)?;
                    }
                }
                let out = encoder.take_output();
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Identity { body } => body.is_end_stream(),
            Kind::Whole {
                data,
                trailers,
                error,
            } => data.is_none() && trailers.is_none() && error.is_none(),
            Kind::Stream { stage, .. } => matches!(stage, Stage::Done),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Identity { body } => body.size_hint(),
            Kind::Whole { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
            Kind::Stream { .. } => SizeHint::default(),
        }
    }
}

impl<B> fmt::Debug for CompressionBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Identity { .. } => "identity",
            Kind::Whole { .. } => "whole",
            Kind::Stream { .. } => "stream",
        };
        f.debug_struct("CompressionBody")
            .field("kind", &kind)
            .finish()
    }
}
