//! The client's IP address, believing forwarding headers only from trusted proxies.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};

use super::cidr::{IpCidr, ParseCidrError, mask};
use super::forwarded;
use super::{KeyError, KeyExtractor, RequestHead};
use crate::header;

/// The client's IP address, as the key of a per-client limit.
///
/// # Where the address comes from
///
/// The TCP peer address is read from axum's `ConnectInfo<SocketAddr>` (serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`) or from a plain [`SocketAddr`]
/// request extension (insert it per connection under bare hyper). Without either, extraction
/// fails with [`KeyError::NoPeerAddress`].
///
/// The forwarding header ([`ForwardedHeader`]: `X-Forwarded-For` by default, or RFC 7239
/// `Forwarded`) is believed **only** when the peer is a trusted proxy. Its entries, from every
/// occurrence of the header, are walked from the right, the end the proxies appended: each
/// trusted address is a hop to look past, and the first untrusted one is the client (nginx's
/// `real_ip_recursive`). What a client writes on the left is never reached while a trusted
/// proxy sits between, so it cannot choose its own key. An entry that is not an address
/// (`unknown`, an obfuscated node, garbage) ends the walk at the last address known, the
/// proxy that wrote it: a conservative key, never the client's choice. A chain of trusted
/// addresses only ends at its left-most one.
///
/// Only one header is read: a proxy that appends to `X-Forwarded-For` passes a client's
/// `Forwarded` through untouched, so believing both would let the client pick its address.
///
/// # Normalisation
///
/// IPv4-mapped IPv6 addresses (`::ffff:203.0.113.9`) become the IPv4 address before anything
/// else, so one client cannot hold two keys, one per notation. IPv6 clients are grouped by
/// prefix, /56 by default ([`ipv6_prefix`](Self::ipv6_prefix), 32 to 64), because one host
/// owns at least a /64 and can rotate through it freely. An IP key allocates nothing.
///
/// If forwarding headers arrive while no proxy is trusted, a warning is logged once: behind a
/// proxy that is a misconfiguration in which every client shares the proxy's key.
///
/// # Example
///
/// ```
/// use floodgate_core::key::{ClientIp, ForwardedHeader};
/// use http::HeaderMap;
///
/// let client_ip = ClientIp::new()
///     .trust_proxies(["10.0.0.0/8", "fd00::/8"])?
///     .forwarded_header(ForwardedHeader::Forwarded)
///     .ipv6_prefix(64)?;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("forwarded", r#"for="[2001:db8:1:2::17]:4711", for=10.1.1.1"#.parse()?);
/// let key = client_ip.resolve("10.0.0.2".parse()?, &headers);
/// assert_eq!(key.to_string(), "2001:db8:1:2::");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ClientIp {
    trusted: Arc<[IpCidr]>,
    header: ForwardedHeader,
    ipv6_prefix: u8,
    warned_untrusted_header: Arc<AtomicBool>,
}

/// Which forwarding header [`ClientIp`] reads when the peer is a trusted proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default; what nginx, HAProxy and most
    /// load balancers append to).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// A [`ClientIp`] setting that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A trusted proxy network did not parse.
    Cidr(ParseCidrError),
    /// The IPv6 grouping prefix is outside 32..=64.
    Ipv6Prefix(u8),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Cidr(error) => write!(f, "invalid trusted proxy network: {error}"),
            ConfigError::Ipv6Prefix(prefix) => write!(
                f,
                "IPv6 client prefix /{prefix} is out of range: use 32 to 64 \
                 (a host owns at least a /64)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Cidr(error) => Some(error),
            ConfigError::Ipv6Prefix(_) => None,
        }
    }
}

/// Reads the address in one entry of a forwarding header.
type ParseEntry = fn(&[u8]) -> Option<IpAddr>;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

impl ClientIp {
    /// The default IPv6 grouping prefix: a /56, what one subscriber line is commonly given.
    pub const DEFAULT_IPV6_PREFIX: u8 = 56;

    /// Keys by the peer address, trusting no proxy; IPv6 grouped by /56.
    pub fn new() -> Self {
        Self {
            trusted: Arc::from([]),
            header: ForwardedHeader::default(),
            ipv6_prefix: Self::DEFAULT_IPV6_PREFIX,
            warned_untrusted_header: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Also trusts the proxies in `network`.
    #[must_use]
    pub fn trust_proxy(mut self, network: IpCidr) -> Self {
        let mut trusted = self.trusted.to_vec();
        trusted.push(network);
        self.trusted = trusted.into();
        self
    }

    /// Also trusts the proxies in each network, written in CIDR notation (`10.0.0.0/8`,
    /// `::1`).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Cidr`] naming the first network that does not parse.
    pub fn trust_proxies<'a>(
        self,
        networks: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ConfigError> {
        networks.into_iter().try_fold(self, |client_ip, network| {
            Ok(client_ip.trust_proxy(network.parse().map_err(ConfigError::Cidr)?))
        })
    }

    /// Reads `header` from trusted proxies (default `X-Forwarded-For`).
    #[must_use]
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Groups IPv6 clients by their first `bits` bits, 32 to 64 (default 56).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Ipv6Prefix`] outside 32..=64: a longer prefix lets one host rotate
    /// through keys, a shorter one lumps whole providers together.
    pub fn ipv6_prefix(mut self, bits: u8) -> Result<Self, ConfigError> {
        if !(32..=64).contains(&bits) {
            return Err(ConfigError::Ipv6Prefix(bits));
        }
        self.ipv6_prefix = bits;
        Ok(self)
    }

    /// The client key for a request from `peer` with `headers`: the address the trusted
    /// proxy chain vouches for, canonical and with IPv6 grouped by prefix.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if self.is_trusted(client) {
            for entry in self.entries_from_the_right(headers) {
                // An entry that is not an address leaves `client` at the hop that wrote it.
                let Some(address) = entry else { break };
                client = address;
                if !self.is_trusted(client) {
                    break;
                }
            }
        } else if self.trusted.is_empty() {
            self.warn_once_if_forwarded(headers);
        }
        match client {
            IpAddr::V4(_) => client,
            IpAddr::V6(_) => mask(client, self.ipv6_prefix),
        }
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted.iter().any(|network| network.contains(address))
    }

    /// The addresses in the configured header, right-most entry of the last header first;
    /// `None` for an entry that is not an address.
    fn entries_from_the_right<'h>(
        &self,
        headers: &'h HeaderMap,
    ) -> impl Iterator<Item = Option<IpAddr>> + 'h {
        let (name, parse): (&HeaderName, ParseEntry) = match self.header {
            ForwardedHeader::XForwardedFor => (&X_FORWARDED_FOR, forwarded::x_forwarded_for),
            ForwardedHeader::Forwarded => (&FORWARDED, forwarded::forwarded_for),
        };
        headers
            .get_all(name)
            .iter()
            .rev()
            .flat_map(|value| header::list_rev(value.as_bytes()))
            .map(parse)
    }

    fn warn_once_if_forwarded(&self, headers: &HeaderMap) {
        let forwarded = headers.contains_key(&X_FORWARDED_FOR) || headers.contains_key(FORWARDED);
        if forwarded
            && !self.warned_untrusted_header.load(Ordering::Relaxed)
            && !self.warned_untrusted_header.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "a request carries X-Forwarded-For or Forwarded, but ClientIp trusts no proxy: \
                 keying by the peer address. Behind a proxy every client then shares the \
                 proxy's key; configure it with `ClientIp::trust_proxies`"
            );
        }
    }
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIp")
            .field("trusted", &self.trusted)
            .field("header", &self.header)
            .field("ipv6_prefix", &self.ipv6_prefix)
            .finish_non_exhaustive()
    }
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn extract(&self, request: &RequestHead<'_>) -> Result<IpAddr, KeyError> {
        let peer = peer_address(request).ok_or(KeyError::NoPeerAddress)?;
        Ok(self.resolve(peer, request.headers()))
    }
}

/// The TCP peer address recorded for the connection: axum's `ConnectInfo`, else a plain
/// `SocketAddr` extension.
fn peer_address(request: &RequestHead<'_>) -> Option<IpAddr> {
    let extensions = request.extensions();
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(address)) =
        extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(address.ip());
    }
    extensions.get::<SocketAddr>().map(SocketAddr::ip)
}
