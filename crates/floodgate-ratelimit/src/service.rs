//! [`RateLimit`], the service [`RateLimitLayer`](crate::RateLimitLayer) makes.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use floodgate_core::body::ResponseBody;
use floodgate_core::key::RequestHead;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::limiter::{Limiter, Verdict};

/// Applies a [`RateLimitLayer`](crate::RateLimitLayer)'s policies before calling the inner
/// service. Clones share the layer's state.
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

impl<S> RateLimit<S> {
    pub(crate) fn new(inner: S, limiter: Arc<Limiter>) -> Self {
        Self { inner, limiter }
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

// By hand: a derive would require `S: Clone` only through the `Arc`, which is always Clone.
impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policies", &self.limiter.policies)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Body,
    ResBody::Data: From<Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self
            .limiter
            .check(&RequestHead::new(&request), Duration::ZERO)
        {
            Verdict::Admit(fields) => ResponseFuture::called(self.inner.call(request), fields),
            Verdict::Reject(response) => ResponseFuture::rejected(response),
            verdict @ (Verdict::Wait(_) | Verdict::Consult(_)) => {
                // A fresh clone waits and asks for readiness once admitted; the ready one
                // stays here for the next call.
                let waiting = self.inner.clone();
                ResponseFuture::pending(waiting, request, Arc::clone(&self.limiter), verdict)
            }
        }
    }
}
