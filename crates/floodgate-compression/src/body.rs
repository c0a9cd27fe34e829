//! [`CompressionBody`]: the response body of a [`Compression`](crate::Compression) service.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_compression::Level;
use async_compression::tokio::write::GzipEncoder;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::AsyncWrite;

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
        Gzip { #[pin] body: B, encoder: Box<GzipEncoder<Vec<u8>>>, flush: bool, stage: Stage },
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
        Self {
            kind: Kind::Whole {
                data: Some(data).filter(|data| !data.is_empty()),
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

    /// Compresses `body` as it streams, at `level`; with `flush`, every chunk is flushed
    /// (a sync flush), so an event stream's events reach the client when they are produced.
    pub(crate) fn gzip(body: B, level: u32, flush: bool) -> Self {
        let level = Level::Precise(i32::try_from(level).unwrap_or(6));
        let encoder = Box::new(GzipEncoder::with_quality(Vec::new(), level));
        Self {
            kind: Kind::Gzip {
                body,
                encoder,
                flush,
                stage: Stage::Reading,
            },
        }
    }
}

/// Writes all of `data` into the encoder. Its sink is a `Vec`, which never waits, so the
/// encoder never returns `Pending`; if it did, that would be a bug, reported as an error.
fn write_all(
    encoder: &mut GzipEncoder<Vec<u8>>,
    cx: &mut Context<'_>,
    mut data: &[u8],
) -> std::io::Result<()> {
    while !data.is_empty() {
        match Pin::new(&mut *encoder).poll_write(cx, data) {
            Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(written)) => data = &data[written..],
            Poll::Ready(Err(error)) => return Err(error),
            Poll::Pending => return Err(stalled()),
        }
    }
    Ok(())
}

fn finish(
    encoder: &mut GzipEncoder<Vec<u8>>,
    cx: &mut Context<'_>,
    shutdown: bool,
) -> std::io::Result<Bytes> {
    let polled = if shutdown {
        Pin::new(&mut *encoder).poll_shutdown(cx)
    } else {
        Pin::new(&mut *encoder).poll_flush(cx)
    };
    match polled {
        Poll::Ready(result) => result?,
        Poll::Pending => return Err(stalled()),
    }
    Ok(Bytes::from(std::mem::take(encoder.get_mut())))
}

fn stalled() -> std::io::Error {
    std::io::Error::other("the gzip encoder waited on an in-memory buffer")
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
            KindProjection::Identity { body } => body.poll_frame(cx).map(|frame| {
                frame.map(|frame| {
                    frame
                        .map(|frame| frame.map_data(Into::into))
                        .map_err(Into::into)
                })
            }),
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
            KindProjection::Gzip {
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
                let out = match ready!(body.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            let data: Bytes = data.into();
                            write_all(encoder, cx, &data)?;
                            if *flush {
                                finish(encoder, cx, false)?
                            } else {
                                Bytes::from(std::mem::take(encoder.get_mut()))
                            }
                        }
                        Err(frame) => {
                            *stage = Stage::Trailers(frame.into_trailers().ok());
                            finish(encoder, cx, true)?
                        }
                    },
                    Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                    None => {
                        *stage = Stage::Trailers(None);
                        finish(encoder, cx, true)?
                    }
                };
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(out))));
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
            Kind::Gzip { stage, .. } => matches!(stage, Stage::Done),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Identity { body } => body.size_hint(),
            Kind::Whole { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
            Kind::Gzip { .. } => SizeHint::default(),
        }
    }
}

impl<B> fmt::Debug for CompressionBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Identity { .. } => "identity",
            Kind::Whole { .. } => "whole",
            Kind::Gzip { .. } => "gzip",
        };
        f.debug_struct("CompressionBody")
            .field("kind", &kind)
            .finish()
    }
}
