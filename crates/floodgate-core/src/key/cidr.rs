//! An IP network in CIDR notation, for the list of trusted proxies.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network: an address and a prefix length (`10.0.0.0/8`, `fd00::/8`).
///
/// Parsed from CIDR notation; a bare address is a single host (`/32` or `/128`). Host bits
/// are cleared (`10.1.2.3/8` is `10.0.0.0/8`), and an IPv4-mapped IPv6 network
/// (`::ffff:10.0.0.0/104`) is stored as the IPv4 network it maps, so it matches the
/// canonical addresses [`ClientIp`](super::ClientIp) compares. An IPv6 network shorter than
/// /96 that covers mapped addresses (`::/0`) does not match IPv4 clients written in mapped
/// form, because they are compared as IPv4: list `0.0.0.0/0` too if you mean them. An IPv6 network shorter than
/// /96 that covers mapped addresses (`::/0`) does not match IPv4 clients written in mapped
/// form, because they are compared as IPv4: list `0.0.0.0/0` too if you mean them.
///
/// ```
/// use floodgate_core::key::IpCidr;
///
/// let proxies: IpCidr = "10.0.0.0/8".parse()?;
/// assert!(proxies.contains("10.20.30.40".parse()?));
/// assert!(!proxies.contains("11.0.0.1".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    network: IpAddr,
    prefix: u8,
}

impl IpCidr {
    /// The network of `address` with the first `prefix` bits kept.
    ///
    /// # Errors
    ///
    /// [`ParseCidrError::Prefix`] when `prefix` is longer than the address (32 or 128 bits).
    pub fn new(address: IpAddr, prefix: u8) -> Result<Self, ParseCidrError> {
        let (address, prefix) = match address {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
                _ => (address, prefix),
            },
            IpAddr::V4(_) => (address, prefix),
        };
        let bits = if address.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(ParseCidrError::Prefix { prefix, bits });
        }
        Ok(Self {
            network: mask(address, prefix),
            prefix,
        })
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `address` is inside this network. IPv4-mapped IPv6 addresses are compared as
    /// the IPv4 address they map.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        address.is_ipv4() == self.network.is_ipv4() && mask(address, self.prefix) == self.network
    }
}

/// `address` with all but the first `prefix` bits cleared; `prefix` is at most the width.
pub(crate) fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

impl FromStr for IpCidr {
    type Err = ParseCidrError;

    fn from_str(text: &str) -> Result<Self, ParseCidrError> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| ParseCidrError::Address(text.to_owned()))?;
        let prefix = match prefix {
            Some(prefix) if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()) => {
                prefix
                    .parse()
                    .map_err(|_| ParseCidrError::Syntax(text.to_owned()))?
            }
            Some(_) => return Err(ParseCidrError::Syntax(text.to_owned())),
            None if address.is_ipv4() => 32,
            None => 128,
        };
        Self::new(address, prefix)
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Why a CIDR could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseCidrError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    Address(String),
    /// The part after `/` is not a number.
    Syntax(String),
    /// The prefix is longer than the address.
    Prefix {
        /// The prefix length given.
        prefix: u8,
        /// The address width: 32 or 128.
        bits: u8,
    },
}

impl fmt::Display for ParseCidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseCidrError::Address(text) => {
                write!(
                    f,
                    "`{text}` does not start with an IP address (expected e.g. 10.0.0.0/8)"
                )
            }
            ParseCidrError::Syntax(text) => {
                write!(
                    f,
                    "`{text}` has no valid prefix length after `/` (expected e.g. /8)"
                )
            }
            ParseCidrError::Prefix { prefix, bits } => {
                write!(
                    f,
                    "prefix /{prefix} is longer than the address ({bits} bits)"
                )
            }
        }
    }
}

impl std::error::Error for ParseCidrError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> IpCidr {
        text.parse()
            .unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[test]
    fn parses_networks_hosts_and_clears_host_bits() {
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("192.0.2.1").to_string(), "192.0.2.1/32");
        assert_eq!(cidr("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").to_string(), "::/0");
    }

    #[test]
    fn mapped_networks_become_ipv4() {
        assert_eq!(cidr("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
        assert!(cidr("10.0.0.0/8").contains(ip("::ffff:10.9.9.9")));
    }

    #[test]
    fn refuses_malformed_text() {
        assert!(matches!(
            "10.0.0.0/33".parse::<IpCidr>(),
            Err(ParseCidrError::Prefix { .. })
        ));
        assert!(matches!(
            "::/129".parse::<IpCidr>(),
            Err(ParseCidrError::Prefix { .. })
        ));
        assert!(matches!(
            "10.0.0/8".parse::<IpCidr>(),
            Err(ParseCidrError::Address(_))
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<IpCidr>(),
            Err(ParseCidrError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/-1".parse::<IpCidr>(),
            Err(ParseCidrError::Syntax(_))
        ));
        assert!(matches!(
            "".parse::<IpCidr>(),
            Err(ParseCidrError::Address(_))
        ));
        for text in ["10.0.0.0/+8", "10.0.0.0/", "10.0.0.0/300"] {
            assert!(
                matches!(text.parse::<IpCidr>(), Err(ParseCidrError::Syntax(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn families_never_match_each_other() {
        assert!(!cidr("::/0").contains(ip("10.0.0.1")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(cidr("0.0.0.0/0").contains(ip("10.0.0.1")));
    }
}
