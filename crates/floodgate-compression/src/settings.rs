//! What a [`CompressionLayer`](crate::CompressionLayer) compresses, and how.

use std::fmt;
use std::sync::Arc;

use floodgate_core::encoding::Encoding;
use floodgate_core::header;
use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_RANGE, CONTENT_TYPE};
use http::{Method, StatusCode, response};

/// A user's own test of whether a response may be compressed; see
/// [`CompressionLayer::predicate`](crate::CompressionLayer::predicate).
pub(crate) type Predicate = Arc<dyn Fn(&response::Parts, Option<u64>) -> bool + Send + Sync>;

/// The layer's settings, shared by every service it makes.
#[derive(Clone)]
pub(crate) struct Settings {
    /// The codings offered, in the server's order of preference.
    pub(crate) codings: Vec<Encoding>,
    pub(crate) level: u32,
    pub(crate) min_bytes: u64,
    pub(crate) one_shot_max_bytes: u64,
    pub(crate) flush_streams: bool,
    pub(crate) predicate: Option<Predicate>,
}

/// Why a response is sent as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eligibility {
    /// It may be compressed, if the client accepts a coding; `stream` when it is an event
    /// stream that must be flushed after each chunk.
    Compress { stream: bool },
    /// Its content could never be compressed by this layer: no body, a range, already
    /// encoded. Not varying by `Accept-Encoding`, it gets no `Vary`.
    Never,
    /// Its content is not worth compressing (type, size, `no-transform`, the predicate).
    Skip,
}

impl Settings {
    /// Whether the response to a `method` request with head `parts` and exact body size
    /// `size` may be compressed.
    pub(crate) fn eligibility(
        &self,
        method: &Method,
        parts: &response::Parts,
        size: Option<u64>,
    ) -> Eligibility {
        // RFC 9110: no content (1xx, 204, 304, HEAD), a range of the identity content
        // (206, Content-Range), or a coding already applied.
        let status = parts.status;
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status == StatusCode::PARTIAL_CONTENT
            || method == Method::HEAD
            || parts.headers.contains_key(CONTENT_RANGE)
            || parts
                .headers
                .get(CONTENT_ENCODING)
                .is_some_and(|coding| !coding.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            return Eligibility::Never;
        }
        let stream =
            content_type(parts).is_some_and(|kind| kind.eq_ignore_ascii_case(b"text/event-stream"));
        if let Some(predicate) = &self.predicate {
            return if predicate(parts, size) {
                Eligibility::Compress { stream }
            } else {
                Eligibility::Skip
            };
        }
        let no_transform = parts.headers.get_all(CACHE_CONTROL).iter().any(|value| {
            header::list(value.as_bytes())
                .any(|directive| directive.eq_ignore_ascii_case(b"no-transform"))
        });
        if no_transform
            || size.is_some_and(|size| size < self.min_bytes)
            || (stream && !self.flush_streams)
            || content_type(parts).is_some_and(is_incompressible)
        {
            return Eligibility::Skip;
        }
        Eligibility::Compress { stream }
    }
}

/// The media type of the response, without parameters.
fn content_type(parts: &response::Parts) -> Option<&[u8]> {
    let value = parts.headers.get(CONTENT_TYPE)?;
    header::params(value.as_bytes()).next()
}

/// Media types that are already compressed, or that must not be buffered.
fn is_incompressible(media_type: &[u8]) -> bool {
    let lower = media_type.to_ascii_lowercase();
    let starts = |prefix: &[u8]| lower.starts_with(prefix);
    (starts(b"image/") && lower != b"image/svg+xml")
        || starts(b"audio/")
        || starts(b"video/")
        || starts(b"font/woff")
        || starts(b"application/grpc")
        || [
            &b"application/zip"[..],
            b"application/gzip",
            b"application/x-gzip",
            b"application/zstd",
            b"application/x-bzip2",
            b"application/x-xz",
            b"application/x-7z-compressed",
            b"application/x-rar-compressed",
            b"application/vnd.rar",
            b"application/wasm",
        ]
        .contains(&lower.as_slice())
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("codings", &self.codings)
            .field("level", &self.level)
            .field("min_bytes", &self.min_bytes)
            .field("one_shot_max_bytes", &self.one_shot_max_bytes)
            .field("flush_streams", &self.flush_streams)
            .field("predicate", &self.predicate.as_ref().map(|_| ".."))
            .finish()
    }
}
