//! [`CacheBody`]: a stored body, the inner body passed through, or the inner body copied
//! into the cache as it streams to the client.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use floodgate_core::metrics::{CACHE_MISSES_TOTAL, LABEL_OUTCOME};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::directives::ResponseDirectives;
use crate::entry::{Entry, NotStored};
use crate::flight::FlightGuard;
use crate::freshness::Timing;
use crate::key::{PrimaryKey, Secondary, Vary};
use crate::layer::Shared;

pin_project! {
    /// The response body of [`Cache`](crate::Cache).
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProjection]
    enum Kind<B> {
        Stored { bytes: Option<Bytes> },
        Inner { #[pin] body: B },
        Filling { #[pin] body: B, fill: Option<Box<Fill>> },
    }
}

/// A response on its way into the cache: everything but the body, and the body so far.
pub(crate) struct Fill {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: PrimaryKey,
    pub(crate) secondary: Secondary,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) timing: Timing,
    pub(crate) directives: ResponseDirectives,
    pub(crate) vary: Vary,
    /// The store's epoch when the request went out.
    pub(crate) started: u64,
    pub(crate) buffer: BytesMut,
    /// Ends the flight that other misses wait on, when the fill ends either way.
    pub(crate) guard: Option<FlightGuard>,
}

impl Fill {
    /// Stores the complete response.
    fn finish(self: Box<Self>) {
        let Fill {
            shared,
            key,
            secondary,
            status,
            headers,
            timing,
            directives,
            vary,
            started,
            buffer,
            guard,
        } = *self;
        let entry = Entry::new(
            secondary,
            status,
            headers,
            buffer.freeze(),
            timing,
            (directives, vary),
            shared.settings.generate_etag,
        );
        let outcome = match shared
            .store
            .insert(key, Arc::new(entry), started, shared.clock.now())
        {
            Ok(()) => "stored",
            Err(reason) => {
                tracing::debug!(target: "floodgate::cache", reason = reason.detail(), "not stored");
                "not_stored"
            }
        };
        metrics::counter!(CACHE_MISSES_TOTAL.name, LABEL_OUTCOME => outcome).increment(1);
        // The entry is in place before the followers look.
        drop(guard);
    }

    /// Gives up a fill, ending its flight, and says why.
    fn abandon(self: Box<Self>, reason: NotStored) {
        tracing::debug!(target: "floodgate::cache", reason = reason.detail(), "not stored");
        metrics::counter!(CACHE_MISSES_TOTAL.name, LABEL_OUTCOME => "not_stored").increment(1);
        if reason.lies_in_the_response() {
            self.shared.store.remember_uncacheable(&self.key);
        }
    }
}

impl<B> CacheBody<B> {
    pub(crate) fn stored(bytes: Option<Bytes>) -> Self {
        Self {
            kind: Kind::Stored {
                bytes: bytes.filter(|bytes| !bytes.is_empty()),
            },
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// `body` on its way to the client and into the cache. An empty body is stored at
    /// once: hyper never polls a body that is already at its end.
    pub(crate) fn filling(body: B, fill: Box<Fill>) -> Self
    where
        B: Body,
    {
        if body.is_end_stream() {
            fill.finish();
            return Self::inner(body);
        }
        Self {
            kind: Kind::Filling {
                body,
                fill: Some(fill),
            },
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProjection::Stored { bytes } => {
                Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes))))
            }
            KindProjection::Inner { body } => body.poll_frame(cx),
            KindProjection::Filling { mut body, fill } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                match &frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let fits = fill.as_ref().is_some_and(|fill| {
                                fill.buffer.len() + data.len()
                                    <= fill.shared.settings.max_entry_bytes
                            });
                            match fill {
                                Some(filling) if fits => filling.buffer.extend_from_slice(data),
                                _ => {
                                    if let Some(filling) = fill.take() {
                                        filling.abandon(NotStored::TooLarge);
                                    }
                                }
                            }
                            // hyper stops polling a body once it reports its end (a body of
                            // known length, after its last byte): store it now.
                            if body.is_end_stream()
                                && let Some(fill) = fill.take()
                            {
                                fill.finish();
                            }
                        } else if let Some(filling) = fill.take() {
                            filling.abandon(NotStored::Trailers);
                        }
                    }
                    // A body that fails is not stored; the client sees the error.
                    Some(Err(_)) => drop(fill.take()),
                    None => {
                        if let Some(fill) = fill.take() {
                            fill.finish();
                        }
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stored { bytes } => bytes.is_none(),
            Kind::Inner { body } | Kind::Filling { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stored { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |bytes| bytes.len() as u64))
            }
            Kind::Inner { body } | Kind::Filling { body, .. } => body.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Stored { .. } => "stored",
            Kind::Inner { .. } => "inner",
            Kind::Filling { .. } => "filling",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}
