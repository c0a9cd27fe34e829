//! The pieces every floodgate layer shares.
//!
//! - [`key`]: what a limit counts per. The client IP (trusting `X-Forwarded-For` or
//!   `Forwarded` only from configured proxies), a header, the matched route, a closure, or a
//!   pair of these.
//! - [`rejection`]: the 429/503/… responses a layer sends when it refuses work. They carry
//!   `Retry-After` and an RFC 9457 problem+json body.
//! - [`body`]: the response body of a layer that can answer by itself.
//! - [`encoding`]: content codings and `Accept-Encoding` negotiation.
//! - [`header`]: total parsers for header lists, parameters, q-values and quoted strings.
//! - [`metrics`]: the name of every metric, emitted through the `metrics` facade.
//! - [`clock`]: monotonic nanoseconds from tokio's clock, which tests can pause, or from the
//!   CPU's counter.
//!
//! Users reach these through the `floodgate` crate; layer authors depend on this one.
//!
//! # Example
//!
//! What every layer does with a request: read its key, and refuse with a proper response
//! when it cannot.
//!
//! ```
//! use floodgate_core::key::{ClientIp, KeyExtractor, OnKeyError, RequestHead};
//! use floodgate_core::rejection::{ProblemJson, Rejection};
//!
//! let extractor = ClientIp::new();
//! let on_key_error = OnKeyError::Reject;
//!
//! // No peer address recorded: the server was not served with connect info.
//! let request = http::Request::get("/items").body(())?;
//! let response = match extractor.extract(&RequestHead::new(&request)) {
//!     Ok(key) => unreachable!("no peer address, so no key: {key}"),
//!     Err(error) => {
//!         floodgate_core::metrics::key_error(&error);
//!         assert_eq!(on_key_error, OnKeyError::Reject);
//!         Rejection::from(&error).into_response(&ProblemJson)
//!     }
//! };
//! assert_eq!(response.status(), 500);
//! assert_eq!(response.headers()["content-type"], "application/problem+json");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `axum` | yes | reading axum's `ConnectInfo` in [`key::ClientIp`] and the `key::Route` key |
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod clock;
pub mod encoding;
pub mod header;
pub mod key;
pub mod metrics;
pub mod rejection;
