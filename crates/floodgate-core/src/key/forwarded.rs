//! Addresses in `X-Forwarded-For` entries and RFC 7239 `Forwarded` elements.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::header;

/// The address in the `for` parameter of one `Forwarded` element (RFC 7239 §5.2),
/// `for=192.0.2.60;proto=http` or `For="[2001:db8:cafe::17]:4711"`.
///
/// `None` when the element has no `for`, has it twice (§4 allows each parameter once), or
/// names an obfuscated or `unknown` node (§6): there is no address to believe.
pub(crate) fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    let mut found = None;
    for segment in header::params(element) {
        let (name, value) = header::name_value(segment);
        if name.eq_ignore_ascii_case(b"for") {
            if found.is_some() {
                return None;
            }
            found = Some(value?);
        }
    }
    let value = found?;
    // RFC 7239 wants IPv6 quoted, but hand-written proxy settings (`for=$remote_addr`) send
    // it bare; the proxy is trusted, so read what it meant.
    match header::unquote(value) {
        Some(unquoted) => node(&unquoted),
        None => node(value),
    }
}

/// The address in one `X-Forwarded-For` entry (`203.0.113.9`, `203.0.113.9:4711`,
/// `2001:db8::1`, `[2001:db8::1]:443`, `fe80::1%eth0`) or `Forwarded` node: RFC 7239 §6
/// `node`, plus the forms real proxies write into `X-Forwarded-For`: bare IPv6
/// without brackets and IPv6 zone ids. The address comes back canonical: an IPv4-mapped
/// IPv6 address is the IPv4 address it maps.
pub(crate) fn node(text: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(text).ok()?;
    let address = if let Some(bracketed) = text.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        if !after.is_empty() && !is_port(after.strip_prefix(':')?) {
            return None;
        }
        IpAddr::V6(ipv6_without_zone(host)?)
    } else if text.bytes().filter(|&byte| byte == b':').count() > 1 {
        IpAddr::V6(ipv6_without_zone(text)?)
    } else {
        let (host, port) = text.split_once(':').unwrap_or((text, "0"));
        if !is_port(port) {
            return None;
        }
        IpAddr::V4(host.parse::<Ipv4Addr>().ok()?)
    };
    Some(address.to_canonical())
}

/// An IPv6 address with an optional zone id (`%eth0`, or `%25eth0` as URIs escape it), which
/// names a local interface and says nothing about the client.
fn ipv6_without_zone(text: &str) -> Option<Ipv6Addr> {
    let address = text
        .split_once('%')
        .map_or(text, |(address, _zone)| address);
    address.parse().ok()
}

/// RFC 7239 §6 `node-port`: up to five digits no larger than 65535, or an obfuscated port.
fn is_port(text: &str) -> bool {
    if let Some(obfuscated) = text.strip_prefix('_') {
        return !obfuscated.is_empty()
            && obfuscated
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
    }
    (1..=5).contains(&text.len())
        && text.bytes().all(|byte| byte.is_ascii_digit())
        && text.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Option<String> {
        node(text.as_bytes()).map(|address| address.to_string())
    }

    fn parsed_forwarded(text: &str) -> Option<String> {
        forwarded_for(text.as_bytes()).map(|address| address.to_string())
    }

    #[test]
    fn reads_every_address_form_proxies_write() {
        let cases = [
            ("203.0.113.9", Some("203.0.113.9")),
            ("203.0.113.9:4711", Some("203.0.113.9")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
            ("fe80::1%eth0", Some("fe80::1")),
            ("[fe80::1%25eth0]:80", Some("fe80::1")),
            ("::ffff:203.0.113.9", Some("203.0.113.9")),
            ("[::ffff:203.0.113.9]:80", Some("203.0.113.9")),
            ("::ffff:cb00:7109", Some("203.0.113.9")),
            ("203.0.113.9:_abc", Some("203.0.113.9")),
        ];
        for (text, expected) in cases {
            assert_eq!(parsed(text).as_deref(), expected, "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        let cases = [
            "unknown",
            "_hidden",
            "",
            "example.com",
            "203.0.113",
            "203.0.113.9:",
            "203.0.113.9:65536",
            "203.0.113.9:123456",
            "203.0.113.9:port",
            "203.0.113.9%eth0",
            "[2001:db8::1]443",
            "[2001:db8::1",
            "[203.0.113.9]",
            "2001:db8::g",
            "203.0.113.9:_",
            "203.0.113.9:+80",
        ];
        for text in cases {
            assert_eq!(parsed(text), None, "{text}");
        }
        assert_eq!(node(b"\xff\xfe"), None);
    }

    #[test]
    fn reads_the_for_parameter_of_a_forwarded_element() {
        let cases = [
            (
                "for=192.0.2.60;proto=http;by=203.0.113.43",
                Some("192.0.2.60"),
            ),
            (
                "For=\"[2001:db8:cafe::17]:4711\"",
                Some("2001:db8:cafe::17"),
            ),
            ("proto=https; for = 192.0.2.60", Some("192.0.2.60")),
            ("for=\"192.0.2.60:8080\"", Some("192.0.2.60")),
            ("for=2001:db8::17", Some("2001:db8::17")),
            ("for=unknown", None),
            ("for=_hidden", None),
            ("proto=http", None),
            ("for=192.0.2.60;for=198.51.100.1", None),
            ("for=\"[2001:db8::1]", None),
            ("for=", None),
            ("for", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parsed_forwarded(text).as_deref(), expected, "{text}");
        }
    }
}
