//! Response compression as a tower layer: gzip always, deflate, br and zstd with their
//! features. Also request decompression with a hard limit on decoded bytes
//! ([`RequestDecompressionLayer`]).
//!
//! [`CompressionLayer`] negotiates `Accept-Encoding` (RFC 9110 §12.5.3, through
//! [`floodgate_core::encoding`]) and compresses what is worth it, in one of two ways:
//!
//! - **One shot**: a body whose exact size is known and at most
//!   [`one_shot_max_bytes`](CompressionLayer::one_shot_max_bytes) (256 KiB by default) is
//!   gathered and compressed in one call, with a compressor state each thread keeps and
//!   resets. The response gets its compressed `Content-Length`.
//! - **Streaming**: other bodies, and every coding but gzip, go through async-compression's
//!   encoders as they arrive: gzip and deflate at the configured level, br at quality 4,
//!   zstd at level 3.
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
//! # Features
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `deflate` | no | `deflate` (zlib format), both ways |
//! | `br` | no | `br` (Brotli), both ways |
//! | `zstd` | no | `zstd` (Zstandard), both ways |
//!
//! Among the codings a client weighs alike, the server prefers gzip, then zstd, br and
//! deflate; [`CompressionLayer::codings`] changes the order or the set.
//!
//! # Defaults, and the measurements behind them
//!
//! **Level 2** ([`CompressionLayer::DEFAULT_LEVEL`]). Each level below compressed 16 KiB of
//! item JSON through the layer, with flate2 on zlib-rs. Instructions per response are counted
//! by callgrind, which is deterministic where wall time on the measuring VM was not:
//!
//! | level | instructions | compressed size |
//! |---|---|---|
//! | 1 | 574 k | 5252 B (32 %) |
//! | **2** | **898 k** | **3591 B (22 %)** |
//! | 3 | 1241 k | 3581 B |
//! | 4 | 1218 k | 3443 B |
//! | 5 | 1329 k | 3377 B |
//! | 6 | 1335 k | 3378 B (21 %) |
//! | 7 | 1668 k | 3339 B |
//! | 8 | 1967 k | 3341 B |
//! | 9 | 2011 k | 3452 B |
//!
//! Level 2 costs two thirds of level 6 for 6 % more bytes. Level 1 is zlib-rs's
//! `deflate_quick`, which uses static Huffman codes only and sends 46 % more bytes.
//!
//! **Minimum size 256 bytes** ([`CompressionLayer::DEFAULT_MIN_BYTES`]). gzip adds 18 bytes
//! of framing, so JSON grows below about 64 bytes. 32 B of JSON became 46 B, 64 B became
//! 57 B, 128 B became 109 B and 256 B became 176 B. Below 256 B the saving is under 80
//! bytes, less than a TCP/IP header pair, and not worth a compressor call.
//!
//! **One shot up to 256 KiB.** Against tower-http's `CompressionLayer` at the same level
//! and engine, in instructions per response, with the same output size:
//! - 1 KiB: 340 k against 605 k (0.56×);
//! - 16 KiB: 898 k against 1147 k (0.78×);
//! - 256 KiB: 9.95 M against 10.11 M (0.98×).
//!
//! At 1 KiB most of the saving is the per-thread compressor state, which is reset rather
//! than allocated and cleared for each response.
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
mod codec;
mod decompression;
mod future;
mod gzip;
mod layer;
mod settings;
#[cfg(test)]
mod tests;

pub use body::{BoxError, CompressionBody};
pub use decompression::{
    DecompressionBody, DecompressionFuture, RequestDecompression, RequestDecompressionLayer,
};
pub use future::ResponseFuture;
pub use layer::{Compression, CompressionLayer, ConfigError};
