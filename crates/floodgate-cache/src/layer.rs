//! [`CacheLayer`], its builder and [`CacheHandle`].

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use floodgate_core::clock::Clock;
use floodgate_core::encoding::Encoding;
use tower::Layer;

use crate::flight::Flights;
use crate::freshness::WallClock;
use crate::key::PrimaryKey;
use crate::service::Cache;
use crate::store::{Retention, Store};

/// The settings every service of a layer reads.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// This cache's name in `Cache-Status`.
    pub(crate) name: &'static str,
    pub(crate) max_entry_bytes: usize,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) key_by_host: bool,
    pub(crate) store_set_cookie: bool,
    pub(crate) generate_etag: bool,
    pub(crate) codings: Arc<[Encoding]>,
    pub(crate) coalesce_timeout: Duration,
    pub(crate) revalidation_timeout: Duration,
}

/// The state every service of one layer shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) flights: Arc<Flights>,
    pub(crate) settings: Settings,
    pub(crate) clock: WallClock,
    /// The hit counter's handle, made on first use so that it binds to the recorder the
    /// application installed by then, and not looked up on every hit.
    hits: OnceLock<metrics::Counter>,
}

impl Shared {
    pub(crate) fn hits(&self) -> &metrics::Counter {
        self.hits
            .get_or_init(|| metrics::counter!(floodgate_core::metrics::CACHE_HITS_TOTAL.name))
    }
}

/// A shared HTTP cache (RFC 9111) in front of a service.
///
/// It stores responses to GET that say they may be reused (`max-age`, `s-maxage`,
/// `Expires`, or a heuristic from `Last-Modified`), answers later GET and HEAD requests for
/// the same URI from them while they are fresh, and sends every other request on.
///
/// - **Variants.** A response with `Vary` is stored per value of the fields it names
///   (at most 5 per URI). `Accept-Encoding` counts as the coding the compression layer
///   would choose, so put this layer *outside* the compression layer: it then stores each
///   compressed body once and serves it to every client that accepts it.
/// - **Coalescing.** Concurrent misses for one URI make one call to the inner service; the
///   others wait for it (at most [`coalesce_timeout`](CacheLayerBuilder::coalesce_timeout))
///   and are answered from what it stored. A URI whose response could not be stored for a
///   reason of its own (`no-store`, `private`, too large, …) is remembered for two minutes
///   (Varnish's hit-for-miss): while nothing of it is stored, its misses go to the inner
///   service without waiting for one another, and the first of its responses that may be
///   stored is stored as ever.
/// - **Ranges.** A fresh stored 200 answers a GET for one byte range with a 206 (or a 416
///   when the range is past its end), honouring `If-Range`; a `Range` with `If-Match` or
///   `If-Unmodified-Since` goes to the inner service.
/// - **Validation.** A fresh entry answers `If-None-Match` and `If-Modified-Since` with
///   304. A stale one with a validator is revalidated with a conditional request, and a
///   304 refreshes it.
/// - **Stale serving** by `stale-while-revalidate` (served at once, refreshed once in the
///   background) and `stale-if-error` (served when the inner service fails or answers
///   5xx), from the response or the layer's defaults — never for a response that says
///   `no-cache`, `must-revalidate`, `proxy-revalidate` or `s-maxage`.
/// - **Invalidation.** A successful POST, PUT, PATCH or DELETE drops the entries of its URI
///   and of its same-origin `Location` and `Content-Location` (§4.4); a [`CacheHandle`]
///   drops others.
/// - **Limits.** At most [`max_bytes`](CacheLayerBuilder::max_bytes) in all, by a weigher;
///   bodies over [`max_entry_bytes`](CacheLayerBuilder::max_entry_bytes) stream through
///   unstored, never buffered past the limit.
///
/// Each response it touches carries a `Cache-Status` member (RFC 9211):
/// `floodgate; hit; ttl=42`, `floodgate; fwd=uri-miss; stored`, `floodgate; fwd=stale;
/// fwd-status=304; stored`, `floodgate; fwd=uri-miss; stored=?0; detail=set-cookie`.
///
/// The state lives behind one `Arc` made when the layer is built: every service, clone and
/// route shares one cache.
#[derive(Clone)]
#[must_use]
pub struct CacheLayer {
    shared: Arc<Shared>,
}

impl CacheLayer {
    /// Starts a cache; see [`CacheLayerBuilder`] for the settings and their defaults.
    pub fn builder() -> CacheLayerBuilder {
        CacheLayerBuilder {
            max_bytes: 64 * 1024 * 1024,
            max_entry_bytes: None,
            keep_stale: Duration::from_secs(60),
            clock: Clock::new(),
            settings: Settings {
                name: "floodgate",
                max_entry_bytes: 0,
                default_ttl: None,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                key_by_host: false,
                store_set_cookie: false,
                generate_etag: true,
                codings: Arc::from([Encoding::Gzip]),
                coalesce_timeout: Duration::from_secs(5),
                revalidation_timeout: Duration::from_secs(10),
            },
        }
    }

    /// A handle to drop entries from this cache.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Cache<S> {
        Cache::new(inner, Arc::clone(&self.shared))
    }
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("store", &self.shared.store)
            .field("settings", &self.shared.settings)
            .finish()
    }
}

/// Builds a [`CacheLayer`].
#[derive(Debug)]
#[must_use]
pub struct CacheLayerBuilder {
    max_bytes: u64,
    max_entry_bytes: Option<usize>,
    keep_stale: Duration,
    clock: Clock,
    settings: Settings,
}

impl CacheLayerBuilder {
    /// This cache's name in `Cache-Status` (default `floodgate`), to tell it from other
    /// caches on the path: an edge cache in front of replicas that cache too, say. It must
    /// be a token (letters, digits and ``!#$%&'*+-.^_`|~``).
    pub fn name(mut self, name: &'static str) -> Self {
        self.settings.name = name;
        self
    }

    /// The most the cache holds, in bytes of bodies and headers (default 64 MiB). Least
    /// recently used entries go first; moka's `TinyLFU` admission keeps one-off URIs from
    /// pushing out popular ones.
    ///
    /// A URI hit 16 times within a second is hot: about 7 of its hits in 8 are answered
    /// from a small index in front of moka, and only the others tell moka's policy of the
    /// read. A hit on a hot URI costs about 80 ns less for it. Over 100 000
    /// Zipf-distributed URIs the hit ratio moved by 0.0025 at most either way, and down
    /// only when the cache held 0.3 % of them (`examples/cache_hit_ratio`).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The largest body stored (default 1/64 of [`max_bytes`](Self::max_bytes), at most
    /// 8 MiB). A larger body, or one whose size turns out larger while it streams, goes to
    /// the client untouched and is not stored.
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.max_entry_bytes = Some(bytes);
        self
    }

    /// How long a 200 without `Cache-Control`, `Expires` or a `Last-Modified` to guess
    /// from stays fresh (default: not at all, so such responses are reused only after
    /// validation). Set it for an application whose handlers say nothing about caching.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.settings.default_ttl = Some(ttl);
        self
    }

    /// For how long past freshness a stale entry is served while one background request
    /// refreshes it, for responses that do not say (`stale-while-revalidate`, RFC 5861);
    /// default zero.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.settings.stale_while_revalidate = window;
        self
    }

    /// For how long past freshness a stale entry is served when the inner service fails
    /// or answers 5xx, for responses that do not say (`stale-if-error`, RFC 5861); default
    /// zero.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.settings.stale_if_error = window;
        self
    }

    /// How long a stale entry with a validator is kept for revalidation (default 60 s).
    pub fn keep_stale(mut self, keep: Duration) -> Self {
        self.keep_stale = keep;
        self
    }

    /// Also keys entries by `Host` (default: path and query only, for a service that
    /// answers one host).
    pub fn key_by_host(mut self, key_by_host: bool) -> Self {
        self.settings.key_by_host = key_by_host;
        self
    }

    /// Stores responses that set cookies, with `Set-Cookie` removed from the stored copy
    /// so that no client is handed another's cookie (default: not stored).
    pub fn store_set_cookie(mut self, store: bool) -> Self {
        self.settings.store_set_cookie = store;
        self
    }

    /// Gives stored bodies without an `ETag` a strong one made from the body, so clients
    /// can revalidate them with `If-None-Match` (default on).
    pub fn generate_etag(mut self, generate: bool) -> Self {
        self.settings.generate_etag = generate;
        self
    }

    /// The codings the compression layer inside this cache offers, in its order (default
    /// gzip), so that `Accept-Encoding` values that get the same coding share an entry.
    pub fn codings(mut self, codings: impl IntoIterator<Item = Encoding>) -> Self {
        self.settings.codings = codings.into_iter().collect();
        self
    }

    /// How long a miss waits for an identical one in flight before going to the inner
    /// service itself (default 5 s).
    pub fn coalesce_timeout(mut self, timeout: Duration) -> Self {
        self.settings.coalesce_timeout = timeout;
        self
    }

    /// How long a background revalidation may take (default 10 s).
    pub fn revalidation_timeout(mut self, timeout: Duration) -> Self {
        self.settings.revalidation_timeout = timeout;
        self
    }

    /// Reads time from `clock` instead of tokio's. [`Clock::counter`] reads the CPU's
    /// counter, which is cheaper (13 ns against 33 ns a lookup on the VM floodgate is
    /// benchmarked on) but does not follow `tokio::time::pause()`: keep the default in
    /// tests that pause time. Ages, freshness, retention and how long a fill in flight is
    /// waited for are all measured on it; timeouts are slept on tokio's timer either way.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Capacity`] for a zero capacity.
    pub fn build(mut self) -> Result<CacheLayer, ConfigError> {
        if self.max_bytes == 0 {
            return Err(ConfigError::Capacity);
        }
        if !floodgate_core::header::is_token(self.settings.name.as_bytes()) {
            return Err(ConfigError::Name(self.settings.name));
        }
        let by_share = usize::try_from(self.max_bytes / 64).unwrap_or(usize::MAX);
        self.settings.max_entry_bytes = self
            .max_entry_bytes
            .unwrap_or(by_share.min(8 * 1024 * 1024));
        Ok(CacheLayer {
            shared: Arc::new(Shared {
                store: Store::new(
                    self.max_bytes,
                    Retention {
                        keep: self.keep_stale,
                        stale_while_revalidate: self.settings.stale_while_revalidate,
                        stale_if_error: self.settings.stale_if_error,
                    },
                ),
                flights: Arc::new(Flights::new(self.settings.coalesce_timeout)),
                settings: self.settings,
                clock: WallClock::new(self.clock),
                hits: OnceLock::new(),
            }),
        })
    }
}

/// Why a [`CacheLayer`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_bytes` is zero: nothing could ever be stored.
    Capacity,
    /// The name is not a token, so it cannot appear in `Cache-Status`.
    Name(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Capacity => f.write_str(
                "a cache of zero bytes stores nothing: give max_bytes at least a few KiB",
            ),
            ConfigError::Name(name) => write!(
                f,
                "the cache name {name:?} must be a token: letters, digits and !#$%&'*+-.^_`|~"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Drops entries from a [`CacheLayer`]'s cache, for changes the cache cannot see (an
/// update by another process, an admin purge).
///
/// Dropping an entry also keeps a response to that URI already on its way from being
/// stored, so a purge is never undone by a fill that started before it.
#[derive(Clone)]
pub struct CacheHandle {
    shared: Arc<Shared>,
}

#[cfg(test)]
impl CacheHandle {
    /// Whether the hot set answers the URI whose key is `key`.
    pub(crate) fn is_hot(&self, key: &str) -> bool {
        self.shared.store.hot.has(key)
    }
}

impl CacheHandle {
    /// Drops every variant stored for `path_and_query` (`/items?limit=5`), for every host
    /// when the layer keys by host.
    pub fn invalidate(&self, path_and_query: &str) {
        if self.shared.settings.key_by_host {
            let wanted = path_and_query.to_owned();
            self.shared
                .store
                .invalidate_where(move |path| path == wanted);
        } else {
            self.shared
                .store
                .invalidate(&PrimaryKey::from_path(path_and_query));
        }
    }

    /// Drops every entry whose path lies under `prefix`, by whole segments: `/items`
    /// drops `/items`, `/items/7` and `/items?limit=5`, not `/itemsets`; `/` drops
    /// everything.
    pub fn purge_prefix(&self, prefix: &str) {
        let prefix = prefix.to_owned();
        self.shared.store.invalidate_where(move |path| {
            path.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                rest.is_empty()
                    || prefix.ends_with('/')
                    || rest.starts_with('/')
                    || rest.starts_with('?')
            })
        });
    }

    /// Bytes the cache holds now, by its weigher.
    pub fn stored_bytes(&self) -> u64 {
        self.shared.store.weighted_bytes()
    }
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("store", &self.shared.store)
            .finish()
    }
}
