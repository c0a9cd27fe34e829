//! Helpers the bench binaries share.

#![allow(dead_code, reason = "each bench binary uses part of the helpers")]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use serde_json::json;

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

/// The URI of the cache's hot page.
pub(crate) const PATH: &str = "/items?limit=50";

/// The items handler's work, which a cache hit saves: a page of 50 items serialised to
/// JSON, fresh for an hour.
pub(crate) fn page() -> Response<Full<Bytes>> {
    let items: Vec<_> = (0..50)
        .map(|id| {
            json!({
                "id": id,
                "name": format!("item {id}"),
                "description": "a fine item, in stock and ready to ship",
                "price": 9.5 + f64::from(id),
            })
        })
        .collect();
    let body =
        serde_json::to_vec(&json!({"items": items, "total": 1000, "limit": 50, "offset": 0}))
            .expect("a JSON value serialises");
    Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", "max-age=3600")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// A GET of the page, from a client that accepts gzip.
pub(crate) fn request() -> Request<Full<Bytes>> {
    Request::get(PATH)
        .header("accept-encoding", "gzip")
        .body(Full::default())
        .expect("a valid request")
}
