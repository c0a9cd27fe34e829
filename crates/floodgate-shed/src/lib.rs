//! Overload protection as tower layers.
//!
//! - [`ConcurrencyLimitLayer`] keeps at most N requests in flight, for the whole service or
//!   per key (per client IP, per API key), with a bounded wait queue: first come, first
//!   served, or [adaptive LIFO](ConcurrencyLimitLayerBuilder::adaptive_lifo) once the queue
//!   goes stale. Requests beyond the queue, or that wait too long, get 503 with
//!   `Retry-After` at once, instead of an unbounded queue that grows until everything times
//!   out. A request holds its slot until its response body is done; requests it is told to
//!   [`bypass`](ConcurrencyLimitLayerBuilder::bypass) take none.
//! - With [`adaptive`](ConcurrencyLimitLayerBuilder::adaptive), the limit finds itself: a
//!   [`LimitAlgorithm`] ([`Gradient`] from latency, [`Aimd`] from failures) moves it as
//!   responses end. See the [`limit`] module.
//! - [`LoadShedLayer`] queues nothing: it refuses at once when too many requests are in
//!   flight or a standing queue has formed below it (`CoDel`'s minimum-sojourn signal), and
//!   never refuses exempt requests such as health checks.
//!
//! Every refusal is a response (503, `Retry-After`, RFC 9457 problem+json), and every
//! layer keeps its inner service's error type, so axum needs no `HandleErrorLayer`.
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
//! An adaptive limit that starts from a guess, with a load shedder in front that spares
//! health checks. The limit lets them [`bypass`](ConcurrencyLimitLayerBuilder::bypass) it
//! too: the shedder's `exempt` only covers the shedder, and a busy limit below it would
//! otherwise queue or refuse them.
//!
//! ```
//! use floodgate_shed::{ConcurrencyLimitLayer, Gradient, LoadShedLayer};
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//!
//! let stack = ServiceBuilder::new()
//!     .layer(
//!         LoadShedLayer::builder()
//!             .max_in_flight(1_024)
//!             .exempt(|request| request.uri().path() == "/health")
//!             .build()?,
//!     )
//!     .layer(
//!         ConcurrencyLimitLayer::builder(32)
//!             .adaptive(Gradient::new())
//!             .bypass(|request| request.uri().path() == "/health")
//!             .max_queue_time(Duration::from_millis(50))
//!             .build()?,
//!     );
//! # let _ = stack;
//! # Ok::<(), floodgate_shed::ConfigError>(())
//! ```

mod layer;
pub mod limit;
mod limiter;
pub mod load_shed;
mod queue;
mod service;
mod slots;
#[cfg(test)]
mod tests;

pub use layer::{ConcurrencyLimitLayer, ConcurrencyLimitLayerBuilder, ConfigError};
pub use limit::{Aimd, AimdBuilder, Gradient, GradientBuilder, LimitAlgorithm, Outcome, Sample};
pub use load_shed::{LoadShed, LoadShedLayer, LoadShedLayerBuilder};
pub use service::{ConcurrencyLimit, LimitBody, ResponseFuture};
