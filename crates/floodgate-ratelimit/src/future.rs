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

use crate::limiter::{Fields, Limiter, Verdict};

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
        // Boxed: only delayed requests pay for the timer and the request they hold.
        Waiting { waiting: Box<Waiting<S, B>> },
    }
}

/// A request held until its delay-mode policies admit it, then until its service is ready.
struct Waiting<S, B> {
    /// Boxed on its own: `Sleep` must not move once polled, and the state is moved.
    sleep: Pin<Box<Sleep>>,
    /// A clone of the inner service, not yet polled: readiness is asked for only once the
    /// request is admitted, so nothing downstream is held while it waits.
    service: S,
    request: Option<Request<B>>,
    limiter: Arc<Limiter>,
    since: Instant,
    /// Whether the policies admitted the request.
    admitted: bool,
    /// The rate-limit fields for the response, once admitted.
    fields: Option<Box<Fields>>,
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

    pub(crate) fn waiting(
        service: S,
        request: Request<B>,
        limiter: Arc<Limiter>,
        wait: Duration,
    ) -> Self {
        let since = Instant::now();
        let waiting = Waiting {
            sleep: Box::pin(tokio::time::sleep_until(since + wait)),
            service,
            request: Some(request),
            limiter,
            since,
            admitted: false,
            fields: None,
        };
        Self {
            state: State::Waiting {
                waiting: Box::new(waiting),
            },
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
        loop {
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
                StateProjection::Waiting { waiting } => {
                    let waiting = &mut **waiting;
                    if !waiting.admitted {
                        ready!(waiting.sleep.as_mut().poll(cx));
                        let request = waiting
                            .request
                            .as_ref()
                            .expect("the request is held until it is admitted");
                        match waiting
                            .limiter
                            .check(&RequestHead::new(request), waiting.since.elapsed())
                        {
                            Verdict::Admit(fields) => {
                                waiting.admitted = true;
                                waiting.fields = fields;
                            }
                            Verdict::Reject(response) => {
                                state.set(State::Rejected {
                                    response: Some(response),
                                });
                                continue;
                            }
                            Verdict::Wait(wait) => {
                                waiting.sleep.as_mut().reset(Instant::now() + wait);
                                continue;
                            }
                        }
                    }
                    ready!(waiting.service.poll_ready(cx))?;
                    let request = waiting
                        .request
                        .take()
                        .expect("the request is held until it is admitted");
                    let fields = waiting.fields.take();
                    State::Called {
                        future: waiting.service.call(request),
                        fields,
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
            State::Waiting { .. } => "waiting",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
