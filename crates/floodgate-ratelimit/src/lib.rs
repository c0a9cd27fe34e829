//! Rate limiting as a tower layer: token bucket (GCRA) and sliding window, in memory, with
//! several policies per request, bounded memory and draft-11 `RateLimit` headers.
//!
//! One [`RateLimitLayer`] holds one or more [`Policy`]s. Each policy has a key (client IP,
//! API key, route, …), an [`Algorithm`] with a [`Quota`], and optionally the routes it applies
//! to. A request is admitted when every policy that applies admits it. A refusal by one
//! policy charges none of the others. This is the hybrid the NGINX + fastapi-limiter
//! deployment builds from two tools: per-IP limits for everything, per-key limits on
//! chosen routes.
//!
//! # Example
//!
//! ```
//! use floodgate_core::key::{ClientIp, Header};
//! use floodgate_ratelimit::{Policy, Quota, RateLimitLayer};
//! use http::{HeaderName, Method, Request, Response, StatusCode};
//! use std::{convert::Infallible, net::SocketAddr};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = RateLimitLayer::builder()
//!     .policy(Policy::token_bucket("per-ip", ClientIp::new(), Quota::per_second(10).burst(2)))
//!     .policy(
//!         Policy::sliding_window(
//!             "writes",
//!             Header::new(HeaderName::from_static("x-api-key")),
//!             Quota::per_minute(10),
//!         )
//!         .methods([Method::POST]),
//!     )
//!     .build()?;
//!
//! let mut service = ServiceBuilder::new().layer(layer).service_fn(|_: Request<String>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("hello")))
//! });
//!
//! let request = || {
//!     let mut request = Request::new(String::new());
//!     request.extensions_mut().insert(SocketAddr::from(([203, 0, 113, 9], 4711)));
//!     request
//! };
//! for _ in 0..2 {
//!     let response = service.ready().await?.call(request()).await?;
//!     assert_eq!(response.status(), StatusCode::OK);
//! }
//! let refused = service.ready().await?.call(request()).await?;
//! assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(refused.headers()["retry-after"], "1");
//! assert_eq!(refused.headers()["ratelimit-policy"], r#""per-ip";q=10;w=1"#);
//! assert_eq!(refused.headers()["ratelimit"], r#""per-ip";r=0;t=1"#);
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **Algorithms** have their contracts written as numbers in [`Algorithm`]. A token
//!   bucket keeps one `AtomicU64` per key and a sliding window one 128-bit atomic, each
//!   changed by compare-and-swap under its shard's shared read lock: no exclusive lock on
//!   the hot path.
//! - **Memory is bounded without a bypass.** Each policy tracks at most
//!   [`max_keys`](Policy::max_keys) keys. A key is dropped only when its state is
//!   equivalent to an absent key, by a sweeper that locks one of 128 shards at a time.
//!   When the table is full of active keys, new keys share an overflow state or are
//!   refused ([`OnFull`]). An active client is never reset.
//! - **The lookup allocates nothing.** A key is copied into the table only when first seen.
//! - **Time is tokio's** by default, so tests can `tokio::time::pause()` and `advance()`
//!   instead of sleeping. In production,
//!   [`RateLimitLayerBuilder::clock`]`(`[`Clock::counter()`](floodgate_core::clock::Clock::counter)`)`
//!   reads the CPU's counter instead, as governor does: a cheaper reading that does not
//!   pause.
//! - **Refusals are responses.** They carry exact headers: `Retry-After` is rounded up and
//!   at least 1, and remaining is never negative ([`HeaderStyle`]).

mod algorithm;
mod consult;
mod engine;
mod future;
mod keyed;
mod layer;
mod limit;
mod limiter;
mod policy;
mod quota;
mod remote;
#[cfg(test)]
mod remote_tests;
mod service;
mod store;
#[cfg(test)]
mod tests;

pub use algorithm::Algorithm;
pub use future::ResponseFuture;
pub use keyed::{KeyedLimiter, KeyedLimiterBuilder, Refusal};
pub use layer::{ConfigError, PolicyHandle, RateLimitLayer, RateLimitLayerBuilder};
pub use policy::{HeaderStyle, Mode, Policy};
pub use quota::{Quota, QuotaError};
pub use remote::{Check, OnStoreError, RateLimitStore, StoreDecision, StoreError, StoreFuture};
pub use service::RateLimit;
pub use store::OnFull;
