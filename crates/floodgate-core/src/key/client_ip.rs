//! The client's IP address, believing forwarding headers only from trusted proxies.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};

use super::cidr::{IpCidr, ParseCidrError, mask};
use super::forwarded;
use super::{Key, KeyError, KeyExtractor, RequestHead};
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
/// Trust only proxies that *append* to the configured header: one that passes it through
/// untouched lets the client write the whole list. Only one header is read: a proxy that
/// appends to `X-Forwarded-For` passes a client's `Forwarded` through untouched, so believing
/// both would let the client pick its address.
///
/// # Normalisation
///
/// IPv4-mapped IPv6 addresses (`::ffff:203.0.113.9`) become the IPv4 address before anything
/// else, so one client cannot hold two keys, one per notation. IPv6 clients are grouped by
/// prefix, /56 by default ([`ipv6_prefix`](Self::ipv6_prefix), 32 to 64), because one host
/// owns at least a /64 and can rotate through it freely. An IP key allocates nothing.
///
/// A warning is logged once when forwarding headers arrive while no proxy is trusted, and once
/// when a trusted proxy sends the other forwarding header but not the configured one: either
/// way every client behind the proxy shares the proxy's key.
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
    warned: Arc<Warned>,
}

/// The misconfiguration warnings already logged, each at most once.
#[derive(Debug, Default)]
struct Warned {
    no_trusted_proxy: AtomicBool,
    other_header: AtomicBool,
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
            warned: Arc::default(),
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
        let (configured, other) = match self.header {
            ForwardedHeader::XForwardedFor => (&X_FORWARDED_FOR, &FORWARDED),
            ForwardedHeader::Forwarded => (&FORWARDED, &X_FORWARDED_FOR),
        };
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
            if !headers.contains_key(configured) && headers.contains_key(other) {
                warn_once(&self.warned.other_header, || {
                    tracing::warn!(
                        "a trusted proxy sent `{other}` but ClientIp reads `{configured}`: keying \
                         by the proxy's address, shared by every client behind it. Set \
                         `ClientIp::forwarded_header` to the header the proxy appends to"
                    );
                });
            }
        } else if self.trusted.is_empty()
            && (headers.contains_key(configured) || headers.contains_key(other))
        {
            warn_once(&self.warned.no_trusted_proxy, || {
                tracing::warn!(
                    "a request carries X-Forwarded-For or Forwarded, but ClientIp trusts no \
                     proxy: keying by the peer address. Behind a proxy every client then shares \
                     the proxy's key; configure it with `ClientIp::trust_proxies`"
                );
            });
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
            ForwardedHeader::XForwardedFor => (&X_FORWARDED_FOR, forwarded::node),
            ForwardedHeader::Forwarded => (&FORWARDED, forwarded::forwarded_for),
        };
        headers
            .get_all(name)
            .iter()
            .rev()
            .flat_map(|value| header::list_rev(value.as_bytes()))
            .map(parse)
    }
}

/// Runs `warn` the first time `flag` is seen unset.
fn warn_once(flag: &AtomicBool, warn: impl FnOnce()) {
    if !flag.load(Ordering::Relaxed) && !flag.swap(true, Ordering::Relaxed) {
        warn();
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
    type Key = IpKey;

    fn extract(&self, request: &RequestHead<'_>) -> Result<IpKey, KeyError> {
        let peer = peer_address(request).ok_or(KeyError::NoPeerAddress)?;
        Ok(IpKey::from(self.resolve(peer, request.headers())))
    }
}

/// The key [`ClientIp`] extracts: an IPv4 address, or an IPv6 prefix of at most 64 bits.
///
/// Sixteen bytes, against seventeen for an `IpAddr`. The difference decides whether a
/// limiter entry pads to 24 or to 32 bytes, so it is a third of a limiter's memory per
/// client.
///
/// ```
/// use floodgate_core::key::IpKey;
/// use std::net::IpAddr;
///
/// let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse()?;
/// assert_eq!(IpKey::from(v6).to_string(), "2001:db8:1:2::"); // the /64 it is in
/// assert_eq!(IpKey::from("192.0.2.1".parse::<IpAddr>()?).to_string(), "192.0.2.1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    /// The IPv4 address, or the first 64 bits of the IPv6 address.
    bits: u64,
    ipv6: bool,
}

impl IpKey {
    /// The address this key stands for (for IPv6, the /64 network address).
    pub fn addr(&self) -> IpAddr {
        if self.ipv6 {
            IpAddr::V6(Ipv6Addr::from(u128::from(self.bits) << 64))
        } else {
            // Only IPv4 keys are built with `ipv6: false`, from 32 bits.
            IpAddr::V4(Ipv4Addr::from(u32::try_from(self.bits).unwrap_or(u32::MAX)))
        }
    }
}

impl From<IpAddr> for IpKey {
    /// The key of `address`: IPv4 as it is (after canonicalising `::ffff:a.b.c.d`), IPv6 by
    /// the /64 it is in.
    fn from(address: IpAddr) -> Self {
        match address.to_canonical() {
            IpAddr::V4(v4) => Self {
                bits: u64::from(u32::from(v4)),
                ipv6: false,
            },
            IpAddr::V6(v6) => {
                let prefix = u64::try_from(u128::from(v6) >> 64).unwrap_or(u64::MAX);
                Self {
                    bits: prefix,
                    ipv6: true,
                }
            }
        }
    }
}

impl From<IpKey> for IpAddr {
    fn from(key: IpKey) -> Self {
        key.addr()
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr().fmt(f)
    }
}

impl fmt::Debug for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IpKey({})", self.addr())
    }
}

impl Key for IpKey {}

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
