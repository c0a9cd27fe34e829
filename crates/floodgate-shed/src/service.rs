//! [`ConcurrencyLimit`], its response future and its response body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use floodgate_core::body::ResponseBody;
use floodgate_core::key::{KeyExtractor, OnKeyError, RequestHead};
use floodgate_core::metrics::{LABEL_REASON, SHED_QUEUED_TOTAL, SHED_REJECTED_TOTAL};
use floodgate_core::rejection::{Reason, Rejection};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{AcquireError, OwnedSemaphorePermit};
use tokio::time::Sleep;
use tower_service::Service;

use crate::layer::Shared;
use crate::slots::{Permit, QueueTicket, SlotRef, SlotTable};

/// The service [`ConcurrencyLimitLayer`](crate::ConcurrencyLimitLayer) makes. Clones share
/// the layer's slots.
pub struct ConcurrencyLimit<S, E: KeyExtractor> {
    inner: S,
    shared: Arc<Shared<E>>,
}

impl<S, E: KeyExtractor> ConcurrencyLimit<S, E> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<E>>) -> Self {
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

fn rejected<S, B, E>(shared: &Shared<E>, reason: Reason) -> ResponseFuture<S, B, E>
where
    S: Service<Request<B>>,
    E: KeyExtractor,
{
    let detail = if reason == Reason::QueueTimeout {
        "the server is at capacity and the request waited too long"
    } else {
        "the server is at capacity; try again shortly"
    };
    tracing::debug!(target: "floodgate::shed", reason = reason.as_str(), "refused");
    metrics::counter!(SHED_REJECTED_TOTAL.name, LABEL_REASON => reason.as_str()).increment(1);
    // A refused client should come back after about the longest a request waits.
    let retry = shared.max_queue_time.max(Duration::from_secs(1));
    let response = Rejection::new(reason, detail)
        .with_retry_after(retry)
        .into_response(&*shared.renderer);
    ResponseFuture {
        state: State::Rejected {
            response: Some(response),
        },
    }
}

impl<S: Clone, E: KeyExtractor> Clone for ConcurrencyLimit<S, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, E: KeyExtractor> fmt::Debug for ConcurrencyLimit<S, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .field("max_in_flight", &self.shared.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl<S, E, ReqBody, ResBody> Service<Request<ReqBody>> for ConcurrencyLimit<S, E>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    E: KeyExtractor,
    ResBody: Body,
    ResBody::Data: From<Bytes>,
{
    type Response = Response<LimitBody<ResBody, E::Key>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, E>;

    /// Forwards the inner service's readiness; no slot is taken here, so a service polled
    /// ready and never called holds nothing.
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let key = match self.shared.extractor.extract(&RequestHead::new(&request)) {
            Ok(key) => key,
            Err(error) => {
                floodgate_core::metrics::key_error(&error);
                if self.shared.on_key_error == OnKeyError::Unlimited {
                    return ResponseFuture {
                        state: State::Called {
                            future: self.inner.call(request),
                            permit: None,
                        },
                    };
                }
                let response = Rejection::from(&error).into_response(&*self.shared.renderer);
                return ResponseFuture {
                    state: State::Rejected {
                        response: Some(response),
                    },
                };
            }
        };
        let slot = self.shared.slots.get(&key);
        let semaphore = Arc::clone(&slot.semaphore);
        let slots: Arc<dyn SlotTable<E::Key>> = self.shared.slots.clone();
        let hold = SlotRef::new(slots, key, slot);
        if let Ok(permit) = Arc::clone(&semaphore).try_acquire_owned() {
            let permit = Some(Permit::new(permit, hold));
            return ResponseFuture {
                state: State::Called {
                    future: self.inner.call(request),
                    permit,
                },
            };
        }
        let Ok(ticket) = QueueTicket::take(hold, self.shared.max_queue) else {
            return rejected(&self.shared, Reason::QueueFull);
        };
        // tokio's semaphore serves waiters first come, first served, from when each first
        // polls its acquire (here, on the future's first poll).
        let queued = Queued {
            acquire: Box::pin(semaphore.acquire_owned()),
            deadline: Box::pin(tokio::time::sleep(self.shared.max_queue_time)),
            ticket: Some(ticket),
            permit: None,
            service: self.inner.clone(),
            request: Some(request),
            shared: Arc::clone(&self.shared),
        };
        ResponseFuture {
            state: State::Queued {
                queued: Box::new(queued),
            },
        }
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A request waiting for a slot, then for its service to be ready.
struct Queued<S, B, E: KeyExtractor> {
    acquire: Acquire,
    deadline: Pin<Box<Sleep>>,
    ticket: Option<QueueTicket<E::Key>>,
    /// The slot, once granted, until the service is ready.
    permit: Option<Permit<E::Key>>,
    /// An unpolled clone of the inner service: readiness is asked for only with a slot.
    service: S,
    request: Option<Request<B>>,
    shared: Arc<Shared<E>>,
}

pin_project! {
    /// The response future of [`ConcurrencyLimit`].
    pub struct ResponseFuture<S, B, E>
    where
        S: Service<Request<B>>,
        E: KeyExtractor,
    {
        #[pin]
        state: State<S, B, E>,
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<S, B, E>
    where
        S: Service<Request<B>>,
        E: KeyExtractor,
    {
        Called { #[pin] future: S::Future, permit: Option<Permit<E::Key>> },
        Rejected { response: Option<Response<Bytes>> },
        Queued { queued: Box<Queued<S, B, E>> },
    }
}

impl<S, B, E, ResBody> Future for ResponseFuture<S, B, E>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    E: KeyExtractor,
    ResBody: Body,
    ResBody::Data: From<Bytes>,
{
    type Output = Result<Response<LimitBody<ResBody, E::Key>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProjection::Called { future, permit } => {
                    let response = ready!(future.poll(cx));
                    // The request is over on an error too: the slot goes back now.
                    let permit = permit.take();
                    let response = response?;
                    return Poll::Ready(Ok(
                        response.map(|body| LimitBody::new(ResponseBody::inner(body), permit))
                    ));
                }
                StateProjection::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("a ResponseFuture is not polled after it completed");
                    return Poll::Ready(Ok(
                        response.map(|body| LimitBody::new(ResponseBody::full(body), None))
                    ));
                }
                StateProjection::Queued { queued } => 'queued: {
                    let queued = &mut **queued;
                    if queued.permit.is_none() {
                        match queued.acquire.as_mut().poll(cx) {
                            Poll::Ready(granted) => {
                                let permit = granted
                                    .expect("the semaphore is never closed while the layer exists");
                                let ticket = queued
                                    .ticket
                                    .take()
                                    .expect("a queued request is admitted once");
                                queued.permit = Some(ticket.admit(permit));
                                tracing::debug!(target: "floodgate::shed", "admitted from the queue");
                                metrics::counter!(SHED_QUEUED_TOTAL.name).increment(1);
                            }
                            Poll::Pending => {
                                ready!(queued.deadline.as_mut().poll(cx));
                                // Leave the queue before answering: the ticket goes now.
                                queued.ticket = None;
                                break 'queued rejected::<S, B, E>(
                                    &queued.shared,
                                    Reason::QueueTimeout,
                                )
                                .state;
                            }
                        }
                    }
                    // Readiness is asked for only now, holding a slot; an error ends the
                    // request and gives the slot back with the future.
                    ready!(queued.service.poll_ready(cx))?;
                    let request = queued
                        .request
                        .take()
                        .expect("the request is held until it is called");
                    State::Called {
                        future: queued.service.call(request),
                        permit: queued.permit.take(),
                    }
                }
            };
            state.set(next);
        }
    }
}

impl<S, B, E> fmt::Debug for ResponseFuture<S, B, E>
where
    S: Service<Request<B>>,
    E: KeyExtractor,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Rejected { .. } => "rejected",
            State::Queued { .. } => "queued",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

pin_project! {
    /// A response body that holds its request's slot until it ends, fails or is dropped.
    pub struct LimitBody<B, K: floodgate_core::key::Key> {
        #[pin]
        body: ResponseBody<B>,
        permit: Option<Permit<K>>,
    }
}

impl<B, K: floodgate_core::key::Key> LimitBody<B, K> {
    fn new(body: ResponseBody<B>, permit: Option<Permit<K>>) -> Self {
        Self { body, permit }
    }
}

impl<B, K> Body for LimitBody<B, K>
where
    B: Body,
    B::Data: From<Bytes>,
    K: floodgate_core::key::Key,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        // The end of the body or an error ends the request: the slot goes back now, not
        // when the connection gets around to dropping the body.
        if !matches!(frame, Some(Ok(_))) {
            this.permit.take();
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

impl<B, K: floodgate_core::key::Key> fmt::Debug for LimitBody<B, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitBody")
            .field("holds_slot", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}
