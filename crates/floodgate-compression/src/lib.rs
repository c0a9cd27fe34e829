//! gzip response compression as a tower layer.
//!
//! [`CompressionLayer`] negotiates `Accept-Encoding` (RFC 9110 §12.5.3, through
//! [`floodgate_core::encoding`]) and compresses what is worth it, in one of two ways:
//!
//! - **One shot**: a body whose exact size is known and at most
//!   [`one_shot_max_bytes`](CompressionLayer::one_shot_max_bytes) (256 KiB by default) is
//!   gathered and compressed in one call, with a compressor state each thread keeps and
//!   resets. The response gets its compressed `Content-Length`.
//! - **Streaming**: other bodies go through async-compression's gzip encoder as they arrive.
//!   Event streams (`text/event-stream`, with [`flush_streams`](CompressionLayer::flush_streams))
//!   are flushed after every chunk, so each event reaches the client when it is produced.
//!
//! # What is left alone
//!
//! - Responses without content: 1xx, 204, 304, and replies to HEAD.
//! - Ranges (206, `Content-Range`).
//! - Responses that already have a `Content-Encoding`.
//! - `Cache-Control: no-transform`.
//! - Bodies smaller than [`min_bytes`](CompressionLayer::min_bytes).
//! - Already-compressed media: images other than SVG, audio, video, archives, WOFF fonts,
//!   gRPC.
//! - Event streams, unless flushing is on.
//!
//! A [`predicate`](CompressionLayer::predicate) can replace the content rules.
//!
//! A compressed response gets:
//! - `Content-Encoding: gzip`;
//! - `Vary: Accept-Encoding`, merged into any `Vary`;
//! - no `Accept-Ranges`;
//! - a weakened strong `ETag`, since the bytes differ.
//!
//! An eligible response that the client did not want compressed still gets the `Vary`.
//!
//! # Example
//!
//! ```
//! use floodgate_compression::CompressionLayer;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let json = "[".to_owned() + &"{\"id\":1,\"name\":\"widget\"},".repeat(100) + "{}]";
//! let service = ServiceBuilder::new()
//!     .layer(CompressionLayer::new())
//!     .service_fn(move |_: Request<()>| {
//!         let json = json.clone();
//!         async move { Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from(json)))) }
//!     });
//!
//! let request = Request::get("/items").header("accept-encoding", "gzip, br").body(())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.headers()["content-encoding"], "gzip");
//! assert_eq!(response.headers()["vary"], "accept-encoding");
//! let length: usize = response.headers()["content-length"].to_str()?.parse()?;
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(body.len(), length);
//! assert!(length < 200);
//! # Ok(())
//! # }
//! ```

mod body;
mod future;
mod gzip;
mod layer;
mod settings;
#[cfg(test)]
mod tests;

pub use body::{BoxError, CompressionBody};
pub use future::ResponseFuture;
pub use layer::{Compression, CompressionLayer, ConfigError};
