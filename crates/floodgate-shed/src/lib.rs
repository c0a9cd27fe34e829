//! Overload protection as tower layers.
//!
//! [`ConcurrencyLimitLayer`] keeps at most N requests in flight, for the whole service or per
//! key (per client IP, per API key), with a bounded FIFO wait queue. Requests beyond the
//! queue, or that wait too long, get 503 with `Retry-After` at once, instead of an
//! unbounded queue that grows until everything times out. A request holds its slot until its
//! response body is done.
//!
//! # Example
//!
//! ```
//! use floodgate_shed::ConcurrencyLimitLayer;
//! use http::{Request, Response, StatusCode};
//! use std::{convert::Infallible, time::Duration};
//! use tower::{Service, ServiceExt, Layer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = ConcurrencyLimitLayer::builder(1).max_queue(0).build()?;
//! let mut service = layer.layer(tower::service_fn(|_: Request<()>| async {
//!     tokio::time::sleep(Duration::from_secs(1)).await;
//!     Ok::<_, Infallible>(Response::new(String::from("done")))
//! }));
//!
//! // The first request takes the only slot...
//! let first = service.ready().await?.call(Request::new(()));
//! let first = tokio::spawn(first);
//! tokio::task::yield_now().await;
//! // ...so the second, with no queue, is refused at once.
//! let second = service.ready().await?.call(Request::new(())).await?;
//! assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(second.headers()["retry-after"], "1");
//! assert_eq!(first.await??.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```
//!
//! Not yet here: adaptive LIFO queueing, a `LoadShedLayer` that sheds by queueing delay,
//! and adaptive limits (AIMD, gradient).

mod layer;
mod service;
mod slots;
#[cfg(test)]
mod tests;

pub use layer::{ConcurrencyLimitLayer, ConcurrencyLimitLayerBuilder, ConfigError};
pub use service::{ConcurrencyLimit, LimitBody, ResponseFuture};
