//! The response future of [`RateLimit`](crate::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use floodgate_core::body::ResponseBody;
use floodgate_core::key::RequestHead;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::consult::Consultation;
use crate::limiter::{Fields, Limiter, Verdict};
use crate::remote::{StoreError, StoreFuture};

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit): the inner service's response
    /// with rate-limit headers added, a refusal, or a request held by a delay-mode policy.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Called { #[pin] future: S::Future, fields: Option<Box<Fields>> },
        Rejected { response: Option<Box<Response<Bytes>>> },
        // Boxed: only held requests pay for the timer and the request they hold.
        Pending { pending: Box<Pending<S, B>> },
    }
}

/// A request held by a delay-mode policy or waiting for the remote store's answer, then for
/// its service to be ready.
struct Pending<S, B> {
    /// Until when the request is delayed, or the store's deadline. Boxed on its own:
    /// `Sleep` must not move once polled, and the state is moved.
    sleep: Pin<Box<Sleep>>,
    /// A clone of the inner service, not yet polled: readiness is asked for only once the
    /// request is admitted, so nothing downstream is held while it waits.
    service: S,
    request: Option<Request<B>>,
    limiter: Arc<Limiter>,
    since: Instant,
    step: Step,
}

enum Step {
    /// Held until `sleep` fires, then checked again.
    Delayed,
    /// Waiting for the store's answer, at most until `sleep` fires.
    Consulting {
        answer: StoreFuture,
        consultation: Box<Consultation>,
    },
    /// Admitted, with these fields for the response: waiting for the service.
    Admitted(Option<Box<Fields>>),
}

impl<S, B> Pending<S, B> {
    /// Moves on to what `verdict` says; a refusal is handed back.
    fn apply(&mut self, verdict: Verdict) -> Result<(), Box<Response<Bytes>>> {
        self.step = match verdict {
            Verdict::Admit(fields) => Step::Admitted(fields),
            Verdict::Reject(response) => return Err(response),
            Verdict::Wait(wait) => {
                self.sleep.as_mut().reset(Instant::now() + wait);
                Step::Delayed
            }
            Verdict::Consult(mut consultation) => {
                let remote = self
                    .limiter
                    .remote
                    .as_ref()
                    .expect("only a layer with a remote store consults one");
                self.sleep.as_mut().reset(Instant::now() + remote.deadline);
                Step::Consulting {
                    answer: remote.ask(&mut consultation),
                    consultation,
                }
            }
        };
        Ok(())
    }
}

impl<S: Service<Request<B>>, B> ResponseFuture<S, B> {
    pub(crate) fn called(future: S::Future, fields: Option<Box<Fields>>) -> Self {
        Self {
            state: State::Called { future, fields },
        }
    }

    pub(crate) fn rejected(response: Box<Response<Bytes>>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }

    /// A request to hold (`Verdict::Wait`) or to decide with the store (`Verdict::Consult`).
    pub(crate) fn pending(
        service: S,
        request: Request<B>,
        limiter: Arc<Limiter>,
        verdict: Verdict,
    ) -> Self {
        let since = Instant::now();
        let mut pending = Box::new(Pending {
            sleep: Box::pin(tokio::time::sleep_until(since)),
            service,
            request: Some(request),
            limiter,
            since,
            step: Step::Delayed,
        });
        match pending.apply(verdict) {
            Ok(()) => Self {
                state: State::Pending { pending },
            },
            Err(response) => Self::rejected(response),
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
    ResBody::Data: From<Bytes>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        'states: loop {
            let next = match state.as_mut().project() {
                StateProjection::Called { future, fields } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(fields) = fields.take() {
                        fields.apply(response.headers_mut());
                    }
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProjection::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("a ResponseFuture is not polled after it completed");
                    return Poll::Ready(Ok((*response).map(ResponseBody::full)));
                }
                StateProjection::Pending { pending } => 'pending: {
                    let pending = &mut **pending;
                    let request = pending
                        .request
                        .as_ref()
                        .expect("the request is held until it is admitted");
                    let verdict = match &mut pending.step {
                        Step::Delayed => {
                            ready!(pending.sleep.as_mut().poll(cx));
                            pending
                                .limiter
                                .check(&RequestHead::new(request), pending.since.elapsed())
                        }
                        Step::Consulting {
                            answer,
                            consultation,
                        } => {
                            let answer = match answer.as_mut().poll(cx) {
                                Poll::Ready(answer) => answer,
                                Poll::Pending => {
                                    ready!(pending.sleep.as_mut().poll(cx));
                                    let deadline = pending
                                        .limiter
                                        .remote
                                        .as_ref()
                                        .map_or(Duration::ZERO, |remote| remote.deadline);
                                    Err(StoreError::Timeout(deadline))
                                }
                            };
                            pending
                                .limiter
                                .conclude(consultation, answer, pending.since.elapsed())
                        }
                        Step::Admitted(fields) => {
                            ready!(pending.service.poll_ready(cx))?;
                            let fields = fields.take();
                            let request = pending
                                .request
                                .take()
                                .expect("the request is held until it is admitted");
                            break 'pending State::Called {
                                future: pending.service.call(request),
                                fields,
                            };
                        }
                    };
                    match pending.apply(verdict) {
                        Ok(()) => continue 'states,
                        Err(response) => State::Rejected {
                            response: Some(response),
                        },
                    }
                }
            };
            state.set(next);
        }
    }
}

impl<S: Service<Request<B>>, B> fmt::Debug for ResponseFuture<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Rejected { .. } => "rejected",
            State::Pending { .. } => "pending",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
