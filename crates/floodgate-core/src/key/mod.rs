//! Request keys: what a limit counts per (a client address, an API key, a route, …).
//!
//! A [`KeyExtractor`] reads a key from a request's head. Built-ins cover the common cases:
//! [`Global`] (one key for everything), [`ClientIp`] (the client address, with trusted
//! proxies), [`Header`] (an API key or user id), `Route` (method and matched path, with the
//! `axum` feature), [`KeyFn`] (a closure), and any pair `(A, B)` of extractors (both keys at
//! once, e.g. per client per route).
//!
//! Keys compare exactly: two clients never share state because their keys hash alike.
//!
//! # Example
//!
//! ```
//! use floodgate_core::key::{ClientIp, Header, KeyExtractor, RequestHead};
//! use http::{HeaderName, Request};
//! use std::net::SocketAddr;
//!
//! // Behind one proxy at 10.0.0.2: believe what it appends to X-Forwarded-For.
//! let per_client = ClientIp::new().trust_proxies(["10.0.0.0/8"])?;
//! let per_api_key = Header::new(HeaderName::from_static("x-api-key"));
//!
//! let mut request = Request::builder()
//!     .header("x-forwarded-for", "203.0.113.9, 198.51.100.7")
//!     .header("x-api-key", "k-123")
//!     .body(())?;
//! request.extensions_mut().insert(SocketAddr::from(([10, 0, 0, 2], 41000)));
//!
//! let head = RequestHead::new(&request);
//! // The right-most address the trusted proxy saw is the client; the rest is the client's word.
//! assert_eq!(per_client.extract(&head)?.to_string(), "198.51.100.7");
//! let (ip, api_key) = (per_client, per_api_key).extract(&head)?;
//! assert_eq!((ip.to_string().as_str(), api_key.to_str()?), ("198.51.100.7", "k-123"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cidr;
mod client_ip;
mod forwarded;

use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use bytes::Bytes;
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};

pub use cidr::{IpCidr, ParseCidrError};
pub use client_ip::{ClientIp, ConfigError, ForwardedHeader, IpKey};

/// A borrowed view of the parts of a request that keys are read from.
///
/// It exists so that extractors, closures among them, need not be generic over the body type.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// Borrows the head of `request`.
    pub fn new<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request target.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request extensions (peer address, matched route, values set by earlier layers).
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }
}

/// A value that identifies whom a limit applies to.
///
/// Implemented for the standard types a key is usually made of; implement it for your own
/// type with `impl Key for MyKey {}`.
pub trait Key: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static {
    /// A copy that owns all its data, for a store to keep after the request is gone.
    ///
    /// Called once, when a key is first stored, never on a lookup. The default clones.
    /// Keys that can share a buffer with the request (a [`HeaderValue`] or [`Bytes`] parsed
    /// by hyper points into the connection's read buffer) copy their bytes, so a stored key
    /// does not keep kilobytes of someone's request alive.
    #[must_use]
    fn detach(&self) -> Self {
        self.clone()
    }
}

macro_rules! impl_key {
    ($($type:ty),* $(,)?) => { $(impl Key for $type {})* };
}

impl_key!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    &'static str,
    String,
    Box<str>,
    Arc<str>,
    IpAddr,
    Ipv4Addr,
    Ipv6Addr,
    Method,
);

impl Key for HeaderValue {
    fn detach(&self) -> Self {
        let mut value = HeaderValue::from_bytes(self.as_bytes())
            .expect("the bytes of a valid header value are a valid header value");
        value.set_sensitive(self.is_sensitive());
        value
    }
}

impl Key for Bytes {
    fn detach(&self) -> Self {
        Bytes::copy_from_slice(self)
    }
}

impl<A: Key, B: Key> Key for (A, B) {
    fn detach(&self) -> Self {
        (self.0.detach(), self.1.detach())
    }
}

/// Reads the key a limit applies to from a request.
///
/// Extraction must be cheap and must not panic on any request: a request without the
/// information gets a [`KeyError`], which the layer turns into the outcome configured with
/// [`OnKeyError`].
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key type.
    type Key: Key;

    /// Reads the key from `request`.
    ///
    /// # Errors
    ///
    /// A [`KeyError`] saying what the request lacks.
    fn extract(&self, request: &RequestHead<'_>) -> Result<Self::Key, KeyError>;
}

/// Why a request's key could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The request carries no peer address: the server was not set up to record it.
    NoPeerAddress,
    /// The header a key is read from is absent or empty.
    MissingHeader(HeaderName),
    /// The header a key is read from appears more than once, so which one counts is unclear.
    AmbiguousHeader(HeaderName),
    /// The request was not routed by axum, so it has no matched path.
    NoMatchedRoute,
    /// A custom extractor found no key; the text says what is missing.
    Missing(&'static str),
}

impl KeyError {
    /// A stable `snake_case` name for the kind of error, used as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            KeyError::NoPeerAddress => "no_peer_address",
            KeyError::MissingHeader(_) => "missing_header",
            KeyError::AmbiguousHeader(_) => "ambiguous_header",
            KeyError::NoMatchedRoute => "no_matched_route",
            KeyError::Missing(_) => "missing",
        }
    }

    /// The status a rejection for this error carries: 500 when the server is misconfigured
    /// (no peer address, no route), 400 when the request lacks what the key needs.
    pub fn status(&self) -> StatusCode {
        match self {
            KeyError::NoPeerAddress | KeyError::NoMatchedRoute => StatusCode::INTERNAL_SERVER_ERROR,
            KeyError::MissingHeader(_) | KeyError::AmbiguousHeader(_) | KeyError::Missing(_) => {
                StatusCode::BAD_REQUEST
            }
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NoPeerAddress => f.write_str(
                "the request has no client address: serve with \
                 `into_make_service_with_connect_info::<SocketAddr>()` (axum) or insert the \
                 peer `SocketAddr` into the request extensions (hyper)",
            ),
            KeyError::MissingHeader(name) => write!(f, "the request has no `{name}` header"),
            KeyError::AmbiguousHeader(name) => {
                write!(
                    f,
                    "the request has more than one `{name}` header; send exactly one"
                )
            }
            KeyError::NoMatchedRoute => f.write_str(
                "the request has no matched route: add the layer to an axum `Router` \
                 (`Router::layer` or `route_layer`)",
            ),
            KeyError::Missing(what) => write!(f, "the request has no {what}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// What a layer does with a request whose key cannot be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnKeyError {
    /// Refuse the request with [`KeyError::status`] and the error's message (the default:
    /// a misconfiguration shows up at once instead of silently turning a limit off).
    #[default]
    Reject,
    /// Let the request through without applying the limit that needed the key.
    Unlimited,
}

/// One key for every request: a limit on the whole service.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl KeyExtractor for Global {
    type Key = ();

    fn extract(&self, _: &RequestHead<'_>) -> Result<(), KeyError> {
        Ok(())
    }
}

/// The value of one request header: an API key, a user or tenant id set by an auth proxy.
///
/// The header must appear exactly once and be non-empty; otherwise extraction fails with
/// [`KeyError::MissingHeader`] or [`KeyError::AmbiguousHeader`] (two `X-Api-Key` headers
/// could otherwise pick whichever quota suits the client).
#[derive(Debug, Clone)]
pub struct Header {
    name: HeaderName,
}

impl Header {
    /// Keys requests by the value of the header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self { name }
    }
}

impl KeyExtractor for Header {
    type Key = HeaderValue;

    fn extract(&self, request: &RequestHead<'_>) -> Result<HeaderValue, KeyError> {
        let mut values = request.headers().get_all(&self.name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) if !value.is_empty() => Ok(value.clone()),
            (Some(_), Some(_)) => Err(KeyError::AmbiguousHeader(self.name.clone())),
            _ => Err(KeyError::MissingHeader(self.name.clone())),
        }
    }
}

/// The route a request matched: its method and axum's matched path pattern
/// (`GET /items/{id}`), so that every item shares one key, not one key per id.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct Route;

/// The key [`Route`] extracts.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Debug, Clone)]
pub struct RouteKey {
    method: Method,
    path: axum::extract::MatchedPath,
}

#[cfg(feature = "axum")]
impl RouteKey {
    /// The request method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The matched path pattern, e.g. `/items/{id}`.
    pub fn path(&self) -> &str {
        self.path.as_str()
    }
}

#[cfg(feature = "axum")]
impl PartialEq for RouteKey {
    fn eq(&self, other: &Self) -> bool {
        self.method == other.method && self.path() == other.path()
    }
}

#[cfg(feature = "axum")]
impl Eq for RouteKey {}

#[cfg(feature = "axum")]
impl Hash for RouteKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.method.hash(state);
        self.path().hash(state);
    }
}

#[cfg(feature = "axum")]
impl Key for RouteKey {}

#[cfg(feature = "axum")]
impl KeyExtractor for Route {
    type Key = RouteKey;

    fn extract(&self, request: &RequestHead<'_>) -> Result<RouteKey, KeyError> {
        let path = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .ok_or(KeyError::NoMatchedRoute)?;
        Ok(RouteKey {
            method: request.method().clone(),
            path: path.clone(),
        })
    }
}

/// A key computed by a closure; `None` means the request has no key.
///
/// Built with [`key_fn`].
#[derive(Clone)]
pub struct KeyFn<F> {
    function: F,
    missing: &'static str,
}

/// Keys requests with `function`; a request for which it returns `None` fails with
/// [`KeyError::Missing`]`(missing)`, so `missing` should name what the request lacks
/// ("session cookie").
///
/// ```
/// use floodgate_core::key::{key_fn, KeyExtractor, RequestHead};
///
/// // Per tenant, from the first path segment of `/t/{tenant}/...`.
/// let per_tenant = key_fn("tenant in the path", |request: &RequestHead<'_>| {
///     let mut segments = request.uri().path().split('/').skip(1);
///     (segments.next() == Some("t")).then(|| segments.next()).flatten().map(str::to_owned)
/// });
/// let request = http::Request::get("/t/acme/items").body(())?;
/// assert_eq!(per_tenant.extract(&RequestHead::new(&request))?, "acme");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn key_fn<F, K>(missing: &'static str, function: F) -> KeyFn<F>
where
    F: Fn(&RequestHead<'_>) -> Option<K> + Send + Sync + 'static,
    K: Key,
{
    KeyFn { function, missing }
}

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFn")
            .field("missing", &self.missing)
            .finish_non_exhaustive()
    }
}

impl<F, K> KeyExtractor for KeyFn<F>
where
    F: Fn(&RequestHead<'_>) -> Option<K> + Send + Sync + 'static,
    K: Key,
{
    type Key = K;

    fn extract(&self, request: &RequestHead<'_>) -> Result<K, KeyError> {
        (self.function)(request).ok_or(KeyError::Missing(self.missing))
    }
}

/// Both keys at once: `(ClientIp::new(), Route)` limits each client on each route.
impl<A: KeyExtractor, B: KeyExtractor> KeyExtractor for (A, B) {
    type Key = (A::Key, B::Key);

    fn extract(&self, request: &RequestHead<'_>) -> Result<Self::Key, KeyError> {
        Ok((self.0.extract(request)?, self.1.extract(request)?))
    }
}

#[cfg(test)]
mod tests;
