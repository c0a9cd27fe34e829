use std::net::SocketAddr;

use http::{HeaderName, Request};

use super::*;

/// How a case's key is read.
enum Extractor {
    /// `ClientIp` trusting these networks.
    Ip(&'static [&'static str]),
    /// `ClientIp` trusting these networks and reading RFC 7239 `Forwarded`.
    IpForwarded(&'static [&'static str]),
    /// `ClientIp` trusting nothing, grouping IPv6 by this prefix.
    IpPrefix(u8),
    /// `Header(x-api-key)`.
    ApiKey,
}

struct Case {
    name: &'static str,
    extractor: Extractor,
    peer: Option<&'static str>,
    headers: &'static [(&'static str, &'static str)],
    expected: Result<&'static str, KeyError>,
}

fn key(case: &Case) -> Result<String, KeyError> {
    let mut request = Request::builder();
    for (name, value) in case.headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(()).expect("the test headers are valid");
    if let Some(peer) = case.peer {
        let peer: SocketAddr = peer.parse().expect("the test peer is a socket address");
        request.extensions_mut().insert(peer);
    }
    let head = RequestHead::new(&request);
    let client_ip = |trusted: &[&str]| {
        ClientIp::new()
            .trust_proxies(trusted.iter().copied())
            .expect("the test networks parse")
    };
    match case.extractor {
        Extractor::Ip(trusted) => client_ip(trusted).extract(&head).map(|ip| ip.to_string()),
        Extractor::IpForwarded(trusted) => client_ip(trusted)
            .forwarded_header(ForwardedHeader::Forwarded)
            .extract(&head)
            .map(|ip| ip.to_string()),
        Extractor::IpPrefix(bits) => ClientIp::new()
            .ipv6_prefix(bits)
            .expect("the test prefix is in range")
            .extract(&head)
            .map(|ip| ip.to_string()),
        Extractor::ApiKey => Header::new(HeaderName::from_static("x-api-key"))
            .extract(&head)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
    }
}

const PROXIES: &[&str] = &["10.0.0.0/8", "fd00::/8"];
const XFF: &str = "x-forwarded-for";

#[rustfmt::skip]
#[allow(clippy::too_many_lines, reason = "a table of cases, one per row")]
fn cases() -> Vec<Case> { vec![
    Case { name: "no proxy trusted: XFF from the peer is ignored",
        extractor: Extractor::Ip(&[]), peer: Some("198.51.100.7:5000"),
        headers: &[(XFF, "1.2.3.4")], expected: Ok("198.51.100.7") },
    Case { name: "spoofed XFF from an untrusted peer is ignored",
        extractor: Extractor::Ip(PROXIES), peer: Some("198.51.100.7:5000"),
        headers: &[(XFF, "10.0.0.5")], expected: Ok("198.51.100.7") },
    Case { name: "one trusted proxy: the entry it appended is the client",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "203.0.113.9")], expected: Ok("203.0.113.9") },
    Case { name: "chain through two trusted proxies resolves the client",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "203.0.113.9, 10.0.0.3")], expected: Ok("203.0.113.9") },
    Case { name: "forged left-most entry behind a trusted proxy is ignored",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "1.1.1.1, 203.0.113.9")], expected: Ok("203.0.113.9") },
    Case { name: "forged trusted-looking entry on the left is still passed over",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "10.9.9.9, 203.0.113.9")], expected: Ok("203.0.113.9") },
    Case { name: "several XFF headers are one list, the last header right-most",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "1.1.1.1"), (XFF, "203.0.113.9, 10.0.0.3")], expected: Ok("203.0.113.9") },
    Case { name: "several XFF headers: a chain of trusted hops spans them",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "203.0.113.9"), (XFF, "10.0.0.4"), (XFF, "10.0.0.3")], expected: Ok("203.0.113.9") },
    Case { name: "`unknown` right of the client stops at the proxy that wrote it",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "203.0.113.9, unknown")], expected: Ok("10.0.0.2") },
    Case { name: "garbage behind a trusted hop stops at that hop",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "203.0.113.9, <script>, 10.0.0.3")], expected: Ok("10.0.0.3") },
    Case { name: "empty list elements are skipped",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, " , 203.0.113.9 ,, ")], expected: Ok("203.0.113.9") },
    Case { name: "an empty XFF header leaves the trusted peer",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "")], expected: Ok("10.0.0.2") },
    Case { name: "only trusted hops: the left-most one",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "10.0.0.5, 10.0.0.3")], expected: Ok("10.0.0.5") },
    Case { name: "IPv4 entry with a port",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "203.0.113.9:4711")], expected: Ok("203.0.113.9") },
    Case { name: "bracketed IPv6 entry with a port, grouped by /56",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "[2001:db8:aa:bbcc::1]:443")], expected: Ok("2001:db8:aa:bb00::") },
    Case { name: "IPv6 entry with a zone id",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "fe80::1%eth0")], expected: Ok("fe80::") },
    Case { name: "IPv4-mapped entry is the IPv4 client",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "::ffff:203.0.113.9")], expected: Ok("203.0.113.9") },
    Case { name: "IPv4-mapped trusted proxy in a chain is looked past",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "203.0.113.9, ::ffff:10.0.0.3")], expected: Ok("203.0.113.9") },
    Case { name: "IPv4-mapped peer is canonicalised before the trust check",
        extractor: Extractor::Ip(PROXIES), peer: Some("[::ffff:10.0.0.2]:5000"),
        headers: &[(XFF, "203.0.113.9")], expected: Ok("203.0.113.9") },
    Case { name: "IPv4-mapped untrusted peer keys as IPv4",
        extractor: Extractor::Ip(&[]), peer: Some("[::ffff:198.51.100.7]:5000"),
        headers: &[], expected: Ok("198.51.100.7") },
    Case { name: "IPv6 peers in one /56 share a key",
        extractor: Extractor::Ip(&[]), peer: Some("[2001:db8:1:20ff:aaaa::1]:5000"),
        headers: &[], expected: Ok("2001:db8:1:2000::") },
    Case { name: "IPv6 prefix grouping is configurable",
        extractor: Extractor::IpPrefix(64), peer: Some("[2001:db8:1:20ff:aaaa::1]:5000"),
        headers: &[], expected: Ok("2001:db8:1:20ff::") },
    Case { name: "trusted IPv6 proxy",
        extractor: Extractor::Ip(PROXIES), peer: Some("[fd00::2]:5000"),
        headers: &[(XFF, "203.0.113.9")], expected: Ok("203.0.113.9") },
    Case { name: "Forwarded with quoted IPv6 and port",
        extractor: Extractor::IpForwarded(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[("forwarded", r#"for="[2001:db8:cafe::17]:4711";proto=https"#)], expected: Ok("2001:db8:cafe::") },
    Case { name: "Forwarded chain, case-insensitive parameter names",
        extractor: Extractor::IpForwarded(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[("forwarded", "for=1.1.1.1, FOR=203.0.113.9;by=10.0.0.2, for=10.0.0.3")], expected: Ok("203.0.113.9") },
    Case { name: "Forwarded `for=unknown` stops at the hop that wrote it",
        extractor: Extractor::IpForwarded(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[("forwarded", "for=203.0.113.9, for=unknown")], expected: Ok("10.0.0.2") },
    Case { name: "Forwarded obfuscated node stops the walk",
        extractor: Extractor::IpForwarded(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[("forwarded", "for=203.0.113.9, for=_hidden, for=10.0.0.3")], expected: Ok("10.0.0.3") },
    Case { name: "reading Forwarded ignores X-Forwarded-For",
        extractor: Extractor::IpForwarded(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[(XFF, "1.1.1.1"), ("forwarded", "for=203.0.113.9")], expected: Ok("203.0.113.9") },
    Case { name: "reading X-Forwarded-For ignores a client's Forwarded",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[("forwarded", "for=1.1.1.1"), (XFF, "203.0.113.9")], expected: Ok("203.0.113.9") },
    Case { name: "Forwarded with bare IPv6 from a hand-written proxy setting",
        extractor: Extractor::IpForwarded(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[("forwarded", "for=2001:db8:cafe::17")], expected: Ok("2001:db8:cafe::") },
    Case { name: "trusted proxy sending only the other header keys by the proxy",
        extractor: Extractor::Ip(PROXIES), peer: Some("10.0.0.2:5000"),
        headers: &[("forwarded", "for=203.0.113.9")], expected: Ok("10.0.0.2") },
    Case { name: "missing peer address is an error, not a panic",
        extractor: Extractor::Ip(PROXIES), peer: None,
        headers: &[(XFF, "203.0.113.9")], expected: Err(KeyError::NoPeerAddress) },
    Case { name: "API key header",
        extractor: Extractor::ApiKey, peer: None,
        headers: &[("x-api-key", "k-123")], expected: Ok("k-123") },
    Case { name: "missing API key header",
        extractor: Extractor::ApiKey, peer: None,
        headers: &[], expected: Err(KeyError::MissingHeader(HeaderName::from_static("x-api-key"))) },
    Case { name: "empty API key header counts as missing",
        extractor: Extractor::ApiKey, peer: None,
        headers: &[("x-api-key", "")], expected: Err(KeyError::MissingHeader(HeaderName::from_static("x-api-key"))) },
    Case { name: "two API key headers are refused",
        extractor: Extractor::ApiKey, peer: None,
        headers: &[("x-api-key", "a"), ("x-api-key", "b")], expected: Err(KeyError::AmbiguousHeader(HeaderName::from_static("x-api-key"))) },
]}

#[test]
fn spoofing_and_parsing_table() {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let actual = key(case);
        let expected = case.expected.clone().map(str::to_owned);
        if actual != expected {
            failures.push(format!(
                "{}: expected {expected:?}, got {actual:?}",
                case.name
            ));
        }
    }
    assert!(cases.len() >= 20);
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn key_errors_carry_a_status_and_a_message_that_says_what_to_do() {
    assert_eq!(
        KeyError::NoPeerAddress.status(),
        http::StatusCode::INTERNAL_SERVER_ERROR
    );
    assert!(
        KeyError::NoPeerAddress
            .to_string()
            .contains("into_make_service_with_connect_info")
    );
    let missing = KeyError::MissingHeader(HeaderName::from_static("x-api-key"));
    assert_eq!(missing.status(), http::StatusCode::BAD_REQUEST);
    assert_eq!(missing.to_string(), "the request has no `x-api-key` header");
}

#[test]
fn ipv6_prefix_outside_32_to_64_is_refused() {
    assert_eq!(
        ClientIp::new().ipv6_prefix(31).err(),
        Some(ConfigError::Ipv6Prefix(31))
    );
    assert_eq!(
        ClientIp::new().ipv6_prefix(65).err(),
        Some(ConfigError::Ipv6Prefix(65))
    );
    assert!(ClientIp::new().ipv6_prefix(32).is_ok());
    assert!(
        ClientIp::new()
            .trust_proxies(["10.0.0.0/8", "nonsense"])
            .is_err()
    );
}

#[test]
fn pairs_combine_keys_and_fail_on_either_side() {
    let mut request = Request::builder()
        .header("x-api-key", "k")
        .body(())
        .expect("valid");
    let pair = (
        ClientIp::new(),
        Header::new(HeaderName::from_static("x-api-key")),
    );
    assert_eq!(
        pair.extract(&RequestHead::new(&request)),
        Err(KeyError::NoPeerAddress)
    );
    request
        .extensions_mut()
        .insert(SocketAddr::from(([192, 0, 2, 1], 1)));
    let (ip, api_key) = pair
        .extract(&RequestHead::new(&request))
        .expect("both keys present");
    assert_eq!(
        (ip.to_string(), api_key),
        ("192.0.2.1".to_owned(), HeaderValue::from_static("k"))
    );
    assert_eq!(Global.extract(&RequestHead::new(&request)), Ok(()));
}

#[test]
fn closure_keys_name_what_is_missing() {
    let by_query = key_fn("`user` query parameter", |request: &RequestHead<'_>| {
        request
            .uri()
            .query()?
            .split('&')
            .find_map(|pair| pair.strip_prefix("user="))
            .map(str::to_owned)
    });
    let with = Request::get("/?user=ana").body(()).expect("valid");
    let without = Request::get("/").body(()).expect("valid");
    assert_eq!(
        by_query.extract(&RequestHead::new(&with)),
        Ok("ana".to_owned())
    );
    let error = by_query
        .extract(&RequestHead::new(&without))
        .expect_err("no user");
    assert_eq!(
        error.to_string(),
        "the request has no `user` query parameter"
    );
    assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
}

#[test]
fn detached_header_keys_equal_the_original_and_own_their_bytes() {
    let buffer = bytes::Bytes::from_static(b"x-api-key: secret-123");
    let shared = HeaderValue::from_maybe_shared(buffer.slice(11..)).expect("valid value");
    let detached = shared.detach();
    assert_eq!(detached, shared);
    assert_ne!(detached.as_bytes().as_ptr(), shared.as_bytes().as_ptr());
    let key = (shared.clone(), 7_u32).detach();
    assert_eq!(key, (shared, 7));
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn route_keys_by_method_and_matched_path() {
    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt;

    let app = Router::new().route(
        "/items/{id}",
        get(|request: axum::extract::Request| async move {
            match Route.extract(&RequestHead::new(&request)) {
                Ok(key) => format!("{} {}", key.method(), key.path()),
                Err(error) => error.to_string(),
            }
        }),
    );
    let request = Request::get("/items/42")
        .body(axum::body::Body::empty())
        .expect("valid");
    let response = app.oneshot(request).await.expect("infallible");
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body");
    assert_eq!(body.to_bytes(), "GET /items/{id}");

    let unrouted = Request::get("/items/42").body(()).expect("valid");
    assert_eq!(
        Route.extract(&RequestHead::new(&unrouted)),
        Err(KeyError::NoMatchedRoute)
    );
}
