//! The response future of [`Cache`](crate::Cache).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use crate::body::CacheBody;

type Forwarding<B, E> = Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

/// The response future of [`Cache`](crate::Cache): an answer from the cache, ready at
/// once, or the way through the inner service (boxed: it goes to the network anyway).
pub struct ResponseFuture<B, E> {
    state: State<B, E>,
}

enum State<B, E> {
    Ready(Option<Response<CacheBody<B>>>),
    Forward(Forwarding<B, E>),
}

impl<B, E> ResponseFuture<B, E> {
    pub(crate) fn ready(response: Response<CacheBody<B>>) -> Self {
        Self {
            state: State::Ready(Some(response)),
        }
    }

    pub(crate) fn forward(future: Forwarding<B, E>) -> Self {
        Self {
            state: State::Forward(future),
        }
    }
}

// Nothing is pinned in place: the ready response moves out, the forward future is boxed.
impl<B, E> Unpin for ResponseFuture<B, E> {}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Ready(response) => Poll::Ready(Ok(response
                .take()
                .expect("a ResponseFuture is not polled after it completed"))),
            State::Forward(future) => future.as_mut().poll(cx),
        }
    }
}

impl<B, E> std::fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Ready(_) => "ready",
            State::Forward(_) => "forward",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
