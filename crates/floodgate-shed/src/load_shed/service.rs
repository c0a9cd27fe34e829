//! [`LoadShed`], its response future and its response body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use floodgate_core::body::ResponseBody;
use floodgate_core::key::RequestHead;
use floodgate_core::metrics::{LABEL_OUTCOME, SHED_LOAD_SHED_REQUESTS_TOTAL};
use floodgate_core::rejection::{Reason, Rejection};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::layer::{InFlight, Shared};
use crate::service::body_ended;

/// The service [`LoadShedLayer`](super::LoadShedLayer) makes. Clones share the layer's
/// count and signal.
pub struct LoadShed<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> LoadShed<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for LoadShed<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for LoadShed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShed")
            .field("inner", &self.inner)
            .field("in_flight", &self.shared.in_flight())
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LoadShed<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
    ResBody::Data: From<Bytes>,
{
    type Response = Response<LoadShedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    /// Forwards the inner service's readiness. The decision to shed is made in `call`,
    /// from the layer's own signals, never from readiness.
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let head = RequestHead::new(&request);
        if self
            .shared
            .exempt
            .as_ref()
            .is_some_and(|exempt| exempt(&head))
        {
            metrics::counter!(SHED_LOAD_SHED_REQUESTS_TOTAL.name, LABEL_OUTCOME => "exempt")
                .increment(1);
            return ResponseFuture {
                state: State::Called {
                    future: self.inner.call(request),
                    in_flight: None,
                },
            };
        }
        let critical = self.shared.is_critical(&head);
        let now = Instant::now();
        if let Some(sojourn) = &self.shared.sojourn {
            sojourn.tick(now, self.shared.awaiting_head());
        }
        match self.shared.admit(critical, now) {
            Ok(in_flight) => {
                metrics::counter!(SHED_LOAD_SHED_REQUESTS_TOTAL.name, LABEL_OUTCOME => "admitted")
                    .increment(1);
                ResponseFuture {
                    state: State::Called {
                        future: self.inner.call(request),
                        in_flight: Some(in_flight),
                    },
                }
            }
            Err(signal) => {
                tracing::debug!(target: "floodgate::shed", signal = signal.as_str(), critical, "shed");
                metrics::counter!(SHED_LOAD_SHED_REQUESTS_TOTAL.name, LABEL_OUTCOME => signal.as_str())
                    .increment(1);
                let response = Rejection::new(
                    Reason::Overloaded,
                    "the server is over capacity; try again shortly",
                )
                .with_retry_after(self.shared.retry_after)
                .into_response(&*self.shared.renderer);
                ResponseFuture {
                    state: State::Rejected {
                        response: Some(response),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`LoadShed`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<F> {
        Called { #[pin] future: F, in_flight: Option<InFlight> },
        Rejected { response: Option<Response<Bytes>> },
    }
}

impl<F, ResBody, Error> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, Error>>,
    ResBody: Body,
    ResBody::Data: From<Bytes>,
{
    type Output = Result<Response<LoadShedBody<ResBody>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProjection::Called { future, in_flight } => {
                let response = ready!(future.poll(cx));
                let mut in_flight = in_flight.take();
                if let Some(in_flight) = &mut in_flight {
                    in_flight.responded();
                }
                // An error ends the request: its place goes back with `in_flight`.
                let response = response?;
                Poll::Ready(Ok(response.map(|body| {
                    LoadShedBody::new(ResponseBody::inner(body), in_flight)
                })))
            }
            StateProjection::Rejected { response } => {
                let response = response
                    .take()
                    .expect("a ResponseFuture is not polled after it completed");
                Poll::Ready(Ok(
                    response.map(|body| LoadShedBody::new(ResponseBody::full(body), None))
                ))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

pin_project! {
    /// A response body that counts its request in flight until it ends, fails or is
    /// dropped.
    pub struct LoadShedBody<B> {
        #[pin]
        body: ResponseBody<B>,
        in_flight: Option<InFlight>,
    }
}

impl<B: Body> LoadShedBody<B>
where
    B::Data: From<Bytes>,
{
    fn new(body: ResponseBody<B>, in_flight: Option<InFlight>) -> Self {
        // hyper never polls a body that is already at its end.
        let in_flight = in_flight.filter(|_| !body.is_end_stream());
        Self { body, in_flight }
    }
}

impl<B> Body for LoadShedBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        if body_ended(frame.as_ref(), &*this.body).is_some() {
            this.in_flight.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> fmt::Debug for LoadShedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedBody")
            .field("in_flight", &self.in_flight.is_some())
            .finish_non_exhaustive()
    }
}
