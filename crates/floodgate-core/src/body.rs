//! The response body of a layer that either passes the inner service's response on or
//! answers itself (a rejection, a cached response).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's body, or a complete body the layer made.
    ///
    /// ```
    /// use floodgate_core::body::ResponseBody;
    /// use http_body::Body;
    ///
    /// let body = ResponseBody::<http_body_util::Empty<bytes::Bytes>>::full("refused".into());
    /// assert_eq!(body.size_hint().exact(), Some(7));
    /// ```
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProjection]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { bytes: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// Passes the inner service's `body` through untouched.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A body of exactly `bytes`, sent in one frame.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                bytes: Some(bytes).filter(|bytes| !bytes.is_empty()),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProjection::Inner { body } => body.poll_frame(cx),
            KindProjection::Full { bytes } => {
                Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes.into()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn full_body_sends_its_bytes_once_then_ends() {
        let mut body = ResponseBody::<Full<Bytes>>::full(Bytes::from_static(b"refused"));
        assert!(!body.is_end_stream());
        let frame = body.frame().await.expect("one frame").expect("infallible");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"refused")));
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn empty_full_body_is_at_its_end_at_once() {
        let body = ResponseBody::<Full<Bytes>>::full(Bytes::new());
        assert!(body.is_end_stream());
        assert!(
            body.collect()
                .await
                .expect("infallible")
                .to_bytes()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn inner_body_passes_through() {
        let body = ResponseBody::inner(Full::new(Bytes::from_static(b"hello")));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(
            body.collect().await.expect("infallible").to_bytes(),
            "hello"
        );
    }
}
