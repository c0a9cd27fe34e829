//! Helpers the bench binaries share.

#![allow(dead_code, reason = "each bench binary uses part of the helpers")]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use http_body::Body;

/// Polls a future that completes without waiting (every benchmarked service here does), with
/// no runtime in the timed loop.
pub(crate) fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benchmarked services answer without waiting"),
    }
}

/// Drains a body that never waits, returning how many bytes it sent.
pub(crate) fn drain<B: Body + Unpin>(mut body: B) -> usize {
    let mut sent = 0;
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    sent += bytes::Buf::remaining(data);
                }
            }
            Poll::Ready(Some(Err(_))) => panic!("the body failed"),
            Poll::Ready(None) => return sent,
            Poll::Pending => panic!("the body waited"),
        }
    }
}
