//! An RFC 9111 shared HTTP cache as a tower layer, in the process: what NGINX
//! `proxy_cache` or fastapi-cache's `@cache(expire=60)` give a service, with the HTTP
//! semantics done properly.
//!
//! # Example
//!
//! ```
//! use floodgate_cache::CacheLayer;
//! use http::{Request, Response, StatusCode};
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counted = Arc::clone(&calls);
//! let mut service = ServiceBuilder::new()
//!     .layer(CacheLayer::builder().max_bytes(16 << 20).build()?)
//!     .service_fn(move |_: Request<http_body_util::Empty<bytes::Bytes>>| {
//!         counted.fetch_add(1, Ordering::Relaxed);
//!         async {
//!             let response = Response::builder()
//!                 .header("cache-control", "max-age=60")
//!                 .body(http_body_util::Full::new(bytes::Bytes::from("[1, 2, 3]")))?;
//!             Ok::<_, http::Error>(response)
//!         }
//!     });
//!
//! for _ in 0..3 {
//!     let request = Request::get("/items").body(Default::default())?;
//!     let response = service.ready().await?.call(request).await?;
//!     assert_eq!(response.status(), StatusCode::OK);
//!     // Read the body to its end: that is when a miss is stored.
//!     let body = http_body_util::BodyExt::collect(response.into_body()).await?;
//!     assert_eq!(body.to_bytes(), "[1, 2, 3]");
//! }
//! assert_eq!(calls.load(Ordering::Relaxed), 1, "one miss, two hits");
//! # Ok(())
//! # }
//! ```
//!
//! # What it follows
//!
//! See [`CacheLayer`] for the behaviour. The RFC 9111 rules, in short:
//!
//! - **Stored:** responses to GET with a status it understands (200, 203, 204, 300, 301,
//!   302, 303, 307, 308, 404, 405, 410, 414, 501), unless `no-store` (response or request),
//!   `private`, `Vary: *`, `Set-Cookie` (unless configured), or a request with
//!   `Authorization` whose response does not say `public`, `s-maxage` or
//!   `must-revalidate` (§3, §3.5).
//! - **Fresh** for the first of `s-maxage`, `max-age`, `Expires − Date`, 10 % of
//!   `Date − Last-Modified` (at most a day), or the layer's default TTL for a 200 without
//!   `Cache-Control` or `Expires` (§4.2.1). Age counts the `Age` it arrived with and the
//!   time in transit and in the cache (§4.2.3); every reuse sends it.
//! - **Request directives:** `no-store`, `no-cache` (validate first), `max-age`,
//!   `min-fresh`, `max-stale`, `only-if-cached` (504 when nothing suitable is stored), and
//!   `Pragma: no-cache` without `Cache-Control` (§5.2.1, §5.4).
//! - **Validation:** a stale entry is revalidated with its own validators, and a 304
//!   refreshes it only if the 304's validators match it (§4.3.4); one naming another
//!   representation refreshes nothing, and the request is sent again as the client made it.
//! - **`no-cache`** responses are stored and validated before each use;
//!   `must-revalidate`, `proxy-revalidate` and `s-maxage` forbid any stale serving.
//! - **Malformed** `Cache-Control` values never panic: a bad duration makes a response
//!   stale, an overflowing one saturates at 2³¹ seconds (§1.2.2).
//!
//! # What it does not do (yet)
//!
//! - Only one byte range is served from storage (a 206); several get the whole response,
//!   as RFC 9110 §14.2 allows. A `Range` with no fresh stored response, or with `If-Match`
//!   or `If-Unmodified-Since`, is forwarded (`fwd=bypass`), and its answer never stored.
//! - `no-cache="field"` and `private="field"` are treated as their unqualified forms: both
//!   stricter, both allowed.
//! - A HEAD response does not refresh stored GETs (§4.3.5).
//! - A 304 that brings a new `Vary` keeps the refreshed entry's variant.
//! - Coalescing is per URI, not per variant. The first time a URI's response may not be
//!   stored, the misses that followed it have waited for it (at most `coalesce_timeout`)
//!   before going to the origin themselves; from then on, while it has nothing stored and
//!   for two minutes (of real time, on moka's clock) or until a response of it is stored
//!   or a write invalidates it, its misses do not wait.
//! - Stale-while-revalidate refreshes one variant of a URI at a time; a refresh that
//!   cannot be stored leaves the stale copy to be served until its window ends.
//! - `max_entry_bytes` bounds each fill in flight; there is no budget for all of them
//!   together.
//! - Hits on a URI hit 16 times a second are mostly answered from a hot set in front of
//!   moka, so moka's eviction policy hears of about 1 in 8 of them (see
//!   [`CacheLayerBuilder::max_bytes`]).
//! - `Cache-Status: …; stored` is written with the response head. A body that then turns
//!   out longer than `max_entry_bytes`, has trailers or fails is not stored after all.

mod body;
mod directives;
mod entry;
mod flight;
mod freshness;
mod future;
mod hot;
mod key;
mod layer;
mod range;
mod served;
mod service;
mod status;
mod store;
#[cfg(test)]
mod tests;

pub use body::CacheBody;
pub use future::ResponseFuture;
pub use layer::{CacheHandle, CacheLayer, CacheLayerBuilder, ConfigError};
pub use service::Cache;
