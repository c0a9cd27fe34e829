//! [`CompressionLayer`] and [`Compression`].

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use floodgate_core::encoding::{Encoding, negotiate};
use http::{Request, Response, response};
use http_body::Body;
use tower::Layer;
use tower_service::Service;

use crate::body::{BoxError, CompressionBody};
use crate::codec::SUPPORTED;
use crate::future::ResponseFuture;
use crate::settings::Settings;

/// Compresses responses with gzip for clients that accept it.
///
/// See the [crate documentation](crate) for what is compressed, the two paths and the
/// defaults. Cloning the layer shares its settings.
#[derive(Clone, Debug)]
#[must_use]
pub struct CompressionLayer {
    settings: Arc<Settings>,
}

/// A setting [`CompressionLayer`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The level is above 9.
    Level(u32),
    /// A coding this build does not support.
    Coding(Encoding),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Level(level) => {
                write!(f, "gzip level {level} is out of range: use 0 to 9")
            }
            ConfigError::Coding(Encoding::Identity) => {
                f.write_str("identity is not a coding to compress with; leave it out of the list")
            }
            ConfigError::Coding(coding) => write!(
                f,
                "{coding} is not compiled in: enable the crate feature `{coding}` (the facade's \
                 `compression-{coding}`)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl CompressionLayer {
    /// The default level, chosen by measurement (see the crate documentation).
    pub const DEFAULT_LEVEL: u32 = 2;
    /// Bodies smaller than this are sent as they are, by default: below it gzip's 18 bytes
    /// of framing eat the saving (see the crate documentation).
    pub const DEFAULT_MIN_BYTES: u64 = 256;
    /// Bodies of known size up to this are compressed in one call, by default.
    pub const DEFAULT_ONE_SHOT_MAX_BYTES: u64 = 256 * 1024;

    /// gzip at the default level, for bodies of at least the default minimum size.
    pub fn new() -> Self {
        Self {
            settings: Arc::new(Settings {
                codings: SUPPORTED.to_vec(),
                level: Self::DEFAULT_LEVEL,
                min_bytes: Self::DEFAULT_MIN_BYTES,
                one_shot_max_bytes: Self::DEFAULT_ONE_SHOT_MAX_BYTES,
                flush_streams: false,
                predicate: None,
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        change(Arc::make_mut(&mut self.settings));
        self
    }

    /// The gzip level: 0 (stored) to 9 (smallest, slowest).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Level`] above 9.
    pub fn level(self, level: u32) -> Result<Self, ConfigError> {
        if level > 9 {
            return Err(ConfigError::Level(level));
        }
        Ok(self.with(|settings| settings.level = level))
    }

    /// Offers exactly `codings`, preferring earlier ones when a client weighs several alike
    /// (default: gzip, then zstd, br and deflate as their features allow). Gzip first keeps
    /// small responses on the one-shot path. An empty list turns compression off, though
    /// eligible responses still say `Vary: Accept-Encoding`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Coding`] for a coding this build does not support (enable its
    /// feature), or for identity.
    pub fn codings(self, codings: impl IntoIterator<Item = Encoding>) -> Result<Self, ConfigError> {
        let codings: Vec<Encoding> = codings.into_iter().collect();
        if let Some(&unsupported) = codings.iter().find(|coding| !SUPPORTED.contains(coding)) {
            return Err(ConfigError::Coding(unsupported));
        }
        Ok(self.with(|settings| settings.codings = codings))
    }

    /// Sends bodies of known size below `bytes` uncompressed.
    pub fn min_bytes(self, bytes: u64) -> Self {
        self.with(|settings| settings.min_bytes = bytes)
    }

    /// Compresses bodies of known size up to `bytes` in one call (and sends their compressed
    /// `Content-Length`); larger or unsized bodies stream.
    pub fn one_shot_max_bytes(self, bytes: u64) -> Self {
        self.with(|settings| settings.one_shot_max_bytes = bytes)
    }

    /// Compresses `text/event-stream` too, flushing after every chunk so each event reaches
    /// the client when it is produced (off by default: event streams are sent as they are).
    pub fn flush_streams(self, flush: bool) -> Self {
        self.with(|settings| settings.flush_streams = flush)
    }

    /// Replaces the content rules (type, size, `no-transform`, event streams) with
    /// `predicate(response head, exact body size)`. Responses that cannot be compressed at
    /// all (no content, ranges, already encoded, HEAD) stay uncompressed whatever it says.
    pub fn predicate(
        self,
        predicate: impl Fn(&response::Parts, Option<u64>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.with(|settings| settings.predicate = Some(Arc::new(predicate)))
    }
}

impl Default for CompressionLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for CompressionLayer {
    type Service = Compression<S>;

    fn layer(&self, inner: S) -> Compression<S> {
        Compression {
            inner,
            settings: Arc::clone(&self.settings),
        }
    }
}

/// The service [`CompressionLayer`] makes.
#[derive(Clone, Debug)]
pub struct Compression<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> Compression<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Compression<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
    ResBody::Data: Into<Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CompressionBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let negotiated = negotiate(request.headers(), &self.settings.codings);
        let method = request.method().clone();
        ResponseFuture::new(
            self.inner.call(request),
            Arc::clone(&self.settings),
            negotiated,
            method,
        )
    }
}
