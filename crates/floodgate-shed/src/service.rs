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
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use crate::layer::Shared;
use crate::limit::Outcome;
use crate::limiter::Permit;
use crate::queue::{Wait, Waiter};
use crate::slots::{QueueTicket, SlotRef, SlotTable};

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
            .field("limit", &self.shared.limit())
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
        if self
            .shared
            .bypass
            .as_ref()
            .is_some_and(|bypass| bypass(&RequestHead::new(&request)))
        {
            return ResponseFuture {
                state: State::Called {
                    future: self.inner.call(request),
                    permit: None,
                },
            };
        }
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
        let slots: Arc<dyn SlotTable<E::Key>> = self.shared.slots.clone();
        let hold = SlotRef::new(slots, key, slot);
        if let Some(permit) = hold.slot().try_acquire() {
            let permit = Some(self.shared.limiter.admit(permit, hold));
            return ResponseFuture {
                state: State::Called {
                    future: self.inner.call(request),
                    permit,
                },
            };
        }
        let Ok(ticket) = QueueTicket::take(hold, self.shared.max_queue()) else {
            return rejected(&self.shared, Reason::QueueFull);
        };
        // The queue place is taken from the call, not from the first poll.
        let waiter = match ticket.slot().wait() {
            Wait::Queued(waiter) => waiter,
            Wait::Granted(permit) => {
                let permit = Some(self.shared.limiter.admit(permit, ticket.admit()));
                return ResponseFuture {
                    state: State::Called {
                        future: self.inner.call(request),
                        permit,
                    },
                };
            }
        };
        let queued = Queued {
            waiter: Some(waiter),
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

/// A request waiting for a slot, then for its service to be ready.
struct Queued<S, B, E: KeyExtractor> {
    /// Its place in the slot's queue, until granted.
    waiter: Option<Arc<Waiter>>,
    deadline: Pin<Box<Sleep>>,
    ticket: Option<QueueTicket<E::Key>>,
    /// The slot, once granted, until the service is ready.
    permit: Option<Permit<E::Key>>,
    /// An unpolled clone of the inner service: readiness is asked for only with a slot.
    service: S,
    request: Option<Request<B>>,
    shared: Arc<Shared<E>>,
}

impl<S, B, E: KeyExtractor> Queued<S, B, E> {
    /// Leaves the queue and gives the place back; a permit granted meanwhile goes on to
    /// the next waiter.
    fn leave(&mut self) {
        if let (Some(waiter), Some(ticket)) = (self.waiter.take(), &self.ticket) {
            ticket.slot().leave(&waiter);
        }
        self.ticket = None;
    }
}

impl<S, B, E: KeyExtractor> Drop for Queued<S, B, E> {
    fn drop(&mut self) {
        self.leave();
    }
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
                    let permit = permit.take();
                    let response = match response {
                        Ok(response) => response,
                        Err(error) => {
                            // The request is over: the slot goes back now.
                            if let Some(permit) = permit {
                                permit.end(Outcome::Dropped);
                            }
                            return Poll::Ready(Err(error));
                        }
                    };
                    let failed = signals_overload(response.status());
                    return Poll::Ready(Ok(response
                        .map(|body| LimitBody::new(ResponseBody::inner(body), permit, failed))));
                }
                StateProjection::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("a ResponseFuture is not polled after it completed");
                    return Poll::Ready(Ok(
                        response.map(|body| LimitBody::new(ResponseBody::full(body), None, false))
                    ));
                }
                StateProjection::Queued { queued } => 'queued: {
                    let queued = &mut **queued;
                    if queued.permit.is_none() {
                        let waiter = queued
                            .waiter
                            .as_ref()
                            .expect("a queued request waits until it has a slot");
                        match waiter.poll_permit(cx) {
                            Poll::Ready(permit) => {
                                queued.waiter = None;
                                let ticket = queued
                                    .ticket
                                    .take()
                                    .expect("a queued request is admitted once");
                                queued.permit = Some(
                                    queued.shared.limiter.admit(permit, ticket.admit_granted()),
                                );
                                tracing::debug!(target: "floodgate::shed", "admitted from the queue");
                                metrics::counter!(SHED_QUEUED_TOTAL.name).increment(1);
                            }
                            Poll::Pending => {
                                ready!(queued.deadline.as_mut().poll(cx));
                                // Leave the queue before answering.
                                queued.leave();
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

/// Whether a response from below says the service is overloaded: 5xx (a 503 from a limit
/// below, a 504 from a timeout), 429, or 408.
fn signals_overload(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

pin_project! {
    /// A response body that holds its request's slot until it ends, fails or is dropped.
    pub struct LimitBody<B, K: floodgate_core::key::Key> {
        #[pin]
        body: ResponseBody<B>,
        permit: Option<Permit<K>>,
        // The status said the service is overloaded.
        failed: bool,
    }
}

impl<B: Body, K: floodgate_core::key::Key> LimitBody<B, K>
where
    B::Data: From<Bytes>,
{
    fn new(body: ResponseBody<B>, permit: Option<Permit<K>>, failed: bool) -> Self {
        let mut body = Self {
            body,
            permit,
            failed,
        };
        // hyper never polls a body that is already at its end: the request ends here.
        if body.body.is_end_stream() {
            body.end();
        }
        body
    }

    fn end(&mut self) {
        if let Some(permit) = self.permit.take() {
            permit.end(outcome(self.failed));
        }
    }
}

/// Whether a response body's last poll ended it: `Some(true)` by an error, `Some(false)`
/// normally, `None` if more may come. hyper stops polling once `is_end_stream` says the
/// last frame is out, and after trailers, so those end it too.
pub(crate) fn body_ended<B: Body>(
    frame: Option<&Result<Frame<B::Data>, B::Error>>,
    body: &B,
) -> Option<bool> {
    match frame {
        None => Some(false),
        Some(Err(_)) => Some(true),
        Some(Ok(frame)) => (frame.is_trailers() || body.is_end_stream()).then_some(false),
    }
}

fn outcome(failed: bool) -> Outcome {
    if failed {
        Outcome::Dropped
    } else {
        Outcome::Success
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
        let mut this = self.project();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        // The end of the body or an error ends the request: the slot goes back now, not
        // when the connection gets around to dropping the body.
        if let Some(errored) = body_ended(frame.as_ref(), &*this.body)
            && let Some(permit) = this.permit.take()
        {
            permit.end(if errored {
                Outcome::Dropped
            } else {
                outcome(*this.failed)
            });
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
