//! floodgate: the scaling pieces of an HTTP service as tower layers.
//!
//! A service under heavy traffic usually gets rate limits, a response cache, gzip and
//! overload protection from NGINX (`limit_req`, `proxy_cache`, `gzip`), a Redis-backed
//! limiter and hand-written code. floodgate provides them as tower layers that go into an
//! axum `Router` or a bare hyper service.
//!
//! This crate is the one dependency a user adds. It re-exports the shared pieces from
//! `floodgate-core`, and each layer crate behind a feature of the same name.
//!
//! # Example
//!
//! Every layer keys its limits with the same extractors. Behind a load balancer at
//! `10.0.0.2`, the client is the right-most address the balancer appended, not whatever the
//! client wrote on the left:
//!
//! ```
//! use floodgate::key::{ClientIp, KeyExtractor, RequestHead};
//! use std::net::SocketAddr;
//!
//! let client_ip = ClientIp::new().trust_proxies(["10.0.0.0/8"])?;
//!
//! let mut request = http::Request::get("/items")
//!     .header("x-forwarded-for", "6.6.6.6, 203.0.113.9")
//!     .body(())?;
//! request.extensions_mut().insert(SocketAddr::from(([10, 0, 0, 2], 50_000)));
//!
//! let key = client_ip.extract(&RequestHead::new(&request))?;
//! assert_eq!(key.to_string(), "203.0.113.9");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `axum` | yes | reading axum's `ConnectInfo` (peer address) and `MatchedPath` (`key::Route`) |
//! | `ratelimit` | no | [`ratelimit`]: token-bucket and sliding-window rate limiting |
//! | `redis` | no | [`redis`]: rate limits kept in Redis, one limit across replicas (turns on `ratelimit`) |
//! | `cache` | no | [`cache`]: an RFC 9111 shared response cache |
//! | `compression` | no | [`compression`]: response compression (gzip) and bounded request decompression |
//! | `compression-deflate`, `compression-br`, `compression-zstd` | no | those codings as well |
//! | `shed` | no | [`shed`]: concurrency limits (fixed or adaptive) with a bounded queue, and load shedding |
//! | `full` | no | every feature |
#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc(inline)]
pub use floodgate_core::{body, clock, encoding, header, key, metrics, rejection};

#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
#[doc(inline)]
pub use floodgate_cache as cache;

#[cfg(feature = "compression")]
#[cfg_attr(docsrs, doc(cfg(feature = "compression")))]
#[doc(inline)]
pub use floodgate_compression as compression;

#[cfg(feature = "ratelimit")]
#[cfg_attr(docsrs, doc(cfg(feature = "ratelimit")))]
#[doc(inline)]
pub use floodgate_ratelimit as ratelimit;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[doc(inline)]
pub use floodgate_redis as redis;

#[cfg(feature = "shed")]
#[cfg_attr(docsrs, doc(cfg(feature = "shed")))]
#[doc(inline)]
pub use floodgate_shed as shed;

/// The README's examples, compiled and run as doc tests.
#[cfg(all(doctest, feature = "ratelimit", feature = "redis", feature = "shed"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
