//! [`RedisStore`]: every check of a request decided by one Lua script call.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floodgate_ratelimit::{Check, RateLimitStore, StoreFuture};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::io::tcp::socket2::TcpKeepalive;
use redis::{Client, ErrorKind, IntoConnectionInfo, RedisError, Script};

use crate::error::{RedisStoreError, store_error};
use crate::script;

const DEFAULT_PREFIX: &str = "floodgate";
/// Long enough for a Redis across a data centre, short enough that a dead one fails fast.
const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// The layer bounds every call with its own, shorter deadline; this one only keeps a command
/// to a hung server from occupying the connection for long.
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// A reconnection is two attempts, the second 50–100 ms after the first fails. While Redis
/// is down each check waits for at most that (plus the connection timeouts) instead of
/// queueing behind a long backoff, and reconnections stay at about a dozen a second.
const RECONNECT_RETRIES: usize = 1;
const RECONNECT_DELAY: Duration = Duration::from_millis(50);
/// A response timeout leaves the connection in place (the server may only be slow), so a
/// peer that vanished without a reset (a dead host, a partition) could hold it for the
/// kernel's retransmission timeout (minutes). Instead the kernel closes a connection whose
/// data stays unacknowledged this long (`TCP_USER_TIMEOUT`, Linux) and probes one idle this
/// long (keepalive), and the store reconnects.
const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Which clock a [`RedisStore`] decides with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisClock {
    /// Redis's own clock (`TIME` inside the script, in microseconds): one clock for every
    /// replica, so their clocks' skew does not matter. Redis 5 and later allow it in a
    /// script that writes; on 3.2 and 4 the script asks for effects replication itself.
    #[default]
    Server,
    /// Each replica's wall clock ([`SystemTime`]), sent with every call, for a managed Redis
    /// that refuses `TIME` in scripts. Replicas' clocks should agree to well under the
    /// quotas' refill intervals: a replica whose clock runs `δ` ahead sees buckets refill
    /// early and may admit up to `δ × rate` more; one whose clock runs behind refuses more,
    /// but never moves a key's state back (the refund a script that stores `now + e` would
    /// give it).
    Client,
}

/// Reads the client's time, for [`RedisClock::Client`].
type TimeSource = Arc<dyn Fn() -> SystemTime + Send + Sync>;

#[derive(Clone)]
enum Clock {
    Server,
    Client(TimeSource),
}

impl Clock {
    /// The script's first argument: microseconds since the UNIX epoch, or empty for Redis's
    /// clock.
    fn now_argument(&self) -> Option<u64> {
        match self {
            Clock::Server => None,
            Clock::Client(now) => Some(now().duration_since(UNIX_EPOCH).map_or(0, |since| {
                u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
            })),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Clock::Server => "Server",
            Clock::Client(_) => "Client",
        })
    }
}

/// A [`RateLimitStore`] in Redis: the same policies, one limit across every replica.
///
/// Each request costs one `EVALSHA` of one Lua script, which decides every policy's check
/// and charges them only if every enforced one fits (see the [crate docs](crate) for the
/// guarantees). Cloning is cheap: clones share one multiplexed connection, which reconnects
/// by itself when Redis comes back.
///
/// ```no_run
/// use floodgate_redis::{RedisClock, RedisStore};
/// use std::time::Duration;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .prefix("shop")
///     .clock(RedisClock::Server)
///     .connection_timeout(Duration::from_millis(500))
///     .build()
///     .await?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    script: Arc<Script>,
    prefix: Arc<str>,
    clock: Clock,
}

impl RedisStore {
    /// Connects to the Redis at `url` with the defaults: prefix `floodgate`, Redis's clock,
    /// a 1 s connection timeout and a 500 ms response timeout.
    ///
    /// # Errors
    ///
    /// The [`RedisError`] if `url` is not a Redis URL or Redis cannot be reached now (the
    /// first connection is made here; later ones are made again by themselves).
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        match Self::builder(url).build().await {
            Ok(store) => Ok(store),
            Err(RedisStoreError::InvalidUrl(error) | RedisStoreError::Connect(error)) => Err(error),
            Err(other) => Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "invalid default settings",
                other.to_string(),
            ))),
        }
    }

    /// A builder for a store connecting to the Redis at `url`
    /// (`redis://[user:password@]host[:port][/db]`, or `rediss://` with a TLS feature of
    /// redis-rs enabled).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            clock: Clock::Server,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }

    /// The prefix of every key this store writes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key holding `policy`'s state for `key`: `{prefix}:policy:key`. The braces
    /// make the prefix the key's Redis Cluster hash tag.
    pub fn key_for(&self, policy: &str, key: &str) -> String {
        script::redis_key(&self.prefix, policy, key)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("connection", &self.connection)
            .field("script", &self.script.get_hash())
            .field("prefix", &self.prefix)
            .field("clock", &self.clock)
            .finish()
    }
}

impl RateLimitStore for RedisStore {
    fn check(&self, checks: Vec<Check>) -> StoreFuture {
        if checks.is_empty() {
            return Box::pin(async { Ok(Vec::new()) });
        }
        // Read the client's clock now, when the request is decided, not when first polled.
        let now = self.clock.now_argument();
        let mut connection = self.connection.clone();
        let script = Arc::clone(&self.script);
        let prefix = Arc::clone(&self.prefix);
        Box::pin(async move {
            let invocation = script::invocation(&script, now, &prefix, &checks)?;
            // EVALSHA; only after a NOSCRIPT (a restart, failover or `SCRIPT FLUSH`) does
            // redis-rs load the script and send EVALSHA again.
            let reply: Vec<i64> = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(store_error)?;
            script::decisions(&reply, checks.len())
        })
    }
}

/// Builds a [`RedisStore`]: see [`RedisStore::builder`].
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    clock: Clock,
    connection_timeout: Duration,
    response_timeout: Duration,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &without_credentials(&self.url))
            .field("prefix", &self.prefix)
            .field("clock", &self.clock)
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// `url` with its user and password (`redis://user:password@host`) hidden, for logs.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>{}", &rest[at..]),
        None => url.to_owned(),
    }
}

impl RedisStoreBuilder {
    /// The prefix of every key (default `floodgate`): non-empty, without `{` or `}`. Give
    /// each application sharing a Redis its own.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Which clock decides (default [`RedisClock::Server`]).
    pub fn clock(mut self, clock: RedisClock) -> Self {
        self.clock = match clock {
            RedisClock::Server => Clock::Server,
            RedisClock::Client => Clock::Client(Arc::new(SystemTime::now)),
        };
        self
    }

    /// [`RedisClock::Client`] with the time read from `now` instead of [`SystemTime::now`]:
    /// a clock you keep in step across replicas yourself, or a test's clock.
    pub fn client_clock(mut self, now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Clock::Client(Arc::new(now));
        self
    }

    /// How long one connection attempt may take (default 1 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// How long Redis may take to answer one call (default 500 ms). The layer's own
    /// deadline is usually shorter; this one frees the connection from a hung server.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Checks the settings and connects.
    ///
    /// # Errors
    ///
    /// A [`RedisStoreError`] for an invalid prefix, a zero timeout, a URL that is not a
    /// Redis URL, or a Redis that cannot be reached now. Once built, a store reconnects by
    /// itself whenever the connection breaks.
    pub async fn build(self) -> Result<RedisStore, RedisStoreError> {
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(RedisStoreError::InvalidPrefix {
                prefix: self.prefix,
            });
        }
        for (timeout, which) in [
            (self.connection_timeout, "connection"),
            (self.response_timeout, "response"),
        ] {
            if timeout.is_zero() {
                return Err(RedisStoreError::ZeroTimeout { which });
            }
        }
        let info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(RedisStoreError::InvalidUrl)?;
        let client = Client::open(info.set_tcp_settings(tcp_settings()))
            .map_err(RedisStoreError::InvalidUrl)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(RECONNECT_DELAY);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(RedisStoreError::Connect)?;
        Ok(RedisStore {
            connection,
            script: Arc::new(script::script()),
            prefix: self.prefix.into(),
            clock: self.clock,
        })
    }
}

/// Small commands from many requests share one connection: without `TCP_NODELAY`, Nagle's
/// algorithm holds each behind the previous one's acknowledgement.
fn tcp_settings() -> TcpSettings {
    let keepalive = TcpKeepalive::new().with_time(DEAD_PEER_TIMEOUT);
    #[cfg(any(
        target_os = "android",
        target_os = "freebsd",
        target_os = "fuchsia",
        target_os = "ios",
        target_os = "linux",
        target_os = "macos",
        target_os = "windows",
    ))]
    let keepalive = keepalive.with_interval(Duration::from_secs(1));
    let settings = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    let settings = settings.set_user_timeout(DEAD_PEER_TIMEOUT);
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_credentials() {
        assert_eq!(
            without_credentials("redis://user:secret@cache:6379/2"),
            "redis://<redacted>@cache:6379/2"
        );
        assert_eq!(
            without_credentials("rediss://:p@ss@cache"),
            "rediss://<redacted>@cache"
        );
        assert_eq!(
            without_credentials("redis://cache:6379"),
            "redis://cache:6379"
        );
        assert_eq!(
            without_credentials("redis://cache/0?x=a@b"),
            "redis://cache/0?x=a@b"
        );
        let builder = RedisStore::builder("redis://user:secret@cache:6379");
        assert!(!format!("{builder:?}").contains("secret"));
    }

    #[test]
    fn a_client_clock_sends_microseconds_since_the_epoch() {
        let clock = Clock::Client(Arc::new(|| UNIX_EPOCH + Duration::from_nanos(1_234_567)));
        assert_eq!(clock.now_argument(), Some(1_234));
        assert_eq!(Clock::Server.now_argument(), None);
        let before_epoch = Clock::Client(Arc::new(|| UNIX_EPOCH - Duration::from_secs(1)));
        assert_eq!(before_epoch.now_argument(), Some(0));
    }
}
