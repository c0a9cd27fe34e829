//! What may be stored (RFC 9111 §3), what a stored response looks like, and how it answers
//! conditional requests (RFC 9110 §13) and is refreshed by a 304 (RFC 9111 §4.3.4).

use std::hash::BuildHasher;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_RANGE,
    DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, SET_COOKIE, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::directives::ResponseDirectives;
use crate::freshness::{self, Timing};
use crate::key::{Secondary, Vary};
use crate::served::Served;

/// Why a response was not stored; the `detail` of its `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    /// The request said `no-store`.
    RequestNoStore,
    /// A status this cache does not store (206, 304, 5xx, …).
    Status,
    NoStore,
    Private,
    /// The request carried `Authorization` and the response did not say it may be shared.
    Authorization,
    SetCookie,
    /// `Vary: *`, or a `Vary` that names something that is not a field.
    VaryAny,
    /// No freshness, no heuristic: nothing says it may be reused.
    NoFreshness,
    /// Stale on arrival with nothing to validate it by: it could never be reused.
    NoValidator,
    /// The body is larger than the per-entry limit.
    TooLarge,
    /// The body has trailers, which are not stored.
    Trailers,
    /// A newer write invalidated the URI while this response was on its way.
    Invalidated,
}

impl NotStored {
    /// Whether the reason lies in the response, and so is likely to hold for the URI's
    /// next responses too: misses of a URI refused for it go to the origin without waiting
    /// for one another (see `Store::remember_uncacheable`).
    pub(crate) fn lies_in_the_response(self) -> bool {
        match self {
            NotStored::NoStore
            | NotStored::Private
            | NotStored::SetCookie
            | NotStored::VaryAny
            | NotStored::NoFreshness
            | NotStored::NoValidator
            | NotStored::TooLarge
            | NotStored::Trailers => true,
            // The request's, or passing: an error status, a write in between.
            NotStored::RequestNoStore
            | NotStored::Authorization
            | NotStored::Status
            | NotStored::Invalidated => false,
        }
    }

    pub(crate) fn detail(self) -> &'static str {
        match self {
            NotStored::RequestNoStore => "request-no-store",
            NotStored::Status => "status",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryAny => "vary",
            NotStored::NoFreshness => "no-freshness",
            NotStored::NoValidator => "no-validator",
            NotStored::TooLarge => "too-large",
            NotStored::Trailers => "trailers",
            NotStored::Invalidated => "invalidated",
        }
    }
}

/// The statuses this cache stores: final, and with no semantics it would have to implement
/// (no 206 without range support, no 304 on its own).
fn storable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Whether a response with `directives` may be reused for requests that carry
/// `Authorization` (§3.5).
pub(crate) fn shareable_with_authorization(directives: &ResponseDirectives) -> bool {
    directives.public || directives.s_maxage.is_some() || directives.must_revalidate
}

/// The checks of §3 that the response head can answer.
pub(crate) fn check_storable(
    request_headers: &HeaderMap,
    status: StatusCode,
    headers: &HeaderMap,
    directives: &ResponseDirectives,
    store_set_cookie: bool,
) -> Result<Vary, NotStored> {
    if !storable_status(status) {
        return Err(NotStored::Status);
    }
    if directives.no_store {
        return Err(NotStored::NoStore);
    }
    if directives.private {
        return Err(NotStored::Private);
    }
    if request_headers.contains_key(AUTHORIZATION) && !shareable_with_authorization(directives) {
        return Err(NotStored::Authorization);
    }
    if headers.contains_key(SET_COOKIE) && !store_set_cookie {
        return Err(NotStored::SetCookie);
    }
    match Vary::parse(headers) {
        Vary::Any => Err(NotStored::VaryAny),
        vary => Ok(vary),
    }
}

/// A stored response: one variant of a URI.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) secondary: Secondary,
    pub(crate) status: StatusCode,
    /// As received, less hop-by-hop fields, `Age` and (if stored at all) `Set-Cookie`;
    /// with a `Date` and, when configured, a generated `ETag`.
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// `status` and `headers` as a hit sends them, with an `Age` and a `Cache-Status`.
    pub(crate) served: Served,
    pub(crate) timing: Timing,
    pub(crate) directives: ResponseDirectives,
    pub(crate) vary: Vary,
    /// `Last-Modified`, else `Date`: what `If-Modified-Since` is compared with.
    pub(crate) modified: SystemTime,
    /// Whether the `ETag` is this cache's own: it answers clients, but the origin never
    /// issued it, so it is not sent upstream.
    generated_etag: bool,
    /// Bytes this entry costs the cache, for the weigher.
    pub(crate) weight: u32,
}

/// Fields a cache must not store or forward from a stored response (§3.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// A response head as it will be stored: hop-by-hop fields and `Age` removed, a `Date`
/// added if it had none, `Set-Cookie` stripped.
pub(crate) fn stored_headers(mut headers: HeaderMap, date: SystemTime) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    headers.remove(http::header::AGE);
    headers.remove(SET_COOKIE);
    // A missing or invalid `Date` becomes the time of receipt (§4.2.3): `If-Modified-Since`
    // and the age computation then have a real date to work with.
    if freshness::date(&headers).is_none()
        && let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(date))
    {
        headers.insert(DATE, value);
    }
    headers
}

/// Removes the fields that belong to one connection (§3.1): the hop-by-hop fields and the
/// ones `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| floodgate_core::header::list(value.as_bytes()))
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    headers.remove(http::header::PROXY_AUTHENTICATE);
}

impl Entry {
    pub(crate) fn new(
        secondary: Secondary,
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        timing: Timing,
        (directives, vary): (ResponseDirectives, Vary),
        generate_etag: bool,
    ) -> Self {
        let generated = generate_etag && !headers.contains_key(ETAG);
        if generated {
            headers.insert(ETAG, self::generated_etag(&body));
        }
        let modified = freshness::last_modified(&headers)
            .or_else(|| freshness::date(&headers))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let served = Served::new(status, &headers);
        let header_bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum();
        // Both header maps, and the fixed part: the entry, its key, the maps' bookkeeping.
        let weight = body.len() + 2 * header_bytes + 256;
        Self {
            secondary,
            status,
            headers,
            body,
            served,
            timing,
            directives,
            vary,
            modified,
            generated_etag: generated,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        }
    }

    /// The stored `ETag`.
    pub(crate) fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(ETAG)
    }

    /// Whether the origin gave it something to validate it by.
    pub(crate) fn has_validator(&self) -> bool {
        (self.headers.contains_key(ETAG) && !self.generated_etag)
            || self.headers.contains_key(LAST_MODIFIED)
    }

    /// Whether a 304 with `not_modified` fields, answering this entry's revalidation, is
    /// about this entry (RFC 9111 §4.3.4): a strong `ETag` in it must equal this entry's
    /// strong one; else a weak one must match this entry's weakly; else a `Last-Modified`
    /// must equal this entry's. A 304 that names no validator is about the one entry the
    /// cache asked about.
    pub(crate) fn selected_by(&self, not_modified: &HeaderMap) -> bool {
        let own_etag = self.etag().filter(|_| !self.generated_etag);
        if let Some(etag) = not_modified.get(ETAG) {
            let (etag, weak) = (etag.as_bytes(), etag.as_bytes().starts_with(b"W/"));
            return own_etag.is_some_and(|own| {
                let own = own.as_bytes();
                // Weakly when the 304's tag is weak, else both must be strong.
                (weak || !own.starts_with(b"W/"))
                    && opaque(etag).is_some_and(|tag| opaque(own) == Some(tag))
            });
        }
        match not_modified.get(LAST_MODIFIED) {
            Some(modified) => self.headers.get(LAST_MODIFIED) == Some(modified),
            None => true,
        }
    }

    /// The conditional fields that ask the origin whether this entry is still current
    /// (§4.3.1): its own validators, never the cache's generated tag (with it, the origin
    /// would ignore `If-Modified-Since`, RFC 9110 §13.1.3).
    pub(crate) fn validators(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let etag = self
            .etag()
            .filter(|_| !self.generated_etag)
            .map(|etag| (IF_NONE_MATCH, etag.clone()));
        let modified = self
            .headers
            .get(LAST_MODIFIED)
            .map(|modified| (IF_MODIFIED_SINCE, modified.clone()));
        etag.into_iter().chain(modified)
    }

    /// Whether a request with `headers` is answered 304 by this entry (RFC 9110 §13.2.2):
    /// `If-None-Match` decides when present, else `If-Modified-Since`.
    pub(crate) fn not_modified_for(&self, method: &Method, headers: &HeaderMap) -> bool {
        if !(method == Method::GET || method == Method::HEAD) || self.status != StatusCode::OK {
            return false;
        }
        if headers.contains_key(IF_NONE_MATCH) {
            let Some(etag) = self.etag() else {
                return false;
            };
            return headers
                .get_all(IF_NONE_MATCH)
                .iter()
                .any(|value| etag_list_matches(value.as_bytes(), etag.as_bytes()));
        }
        headers
            .get(IF_MODIFIED_SINCE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| httpdate::parse_http_date(value).ok())
            .is_some_and(|since| self.modified <= since)
    }

    /// The header fields a 304 carries (RFC 9110 §15.4.5).
    pub(crate) fn not_modified_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for name in [
            CONTENT_LOCATION,
            DATE,
            ETAG,
            VARY,
            http::header::CACHE_CONTROL,
            EXPIRES,
        ] {
            for value in self.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers
    }

    /// This entry's head updated by a 304 from the origin (§3.2): each field of the 304
    /// replaces the stored field of that name, except those the stored body depends on.
    pub(crate) fn merged_headers(&self, not_modified: &HeaderMap) -> HeaderMap {
        let mut not_modified = not_modified.clone();
        strip_hop_by_hop(&mut not_modified);
        let mut headers = self.headers.clone();
        let kept = [CONTENT_LENGTH, CONTENT_ENCODING, CONTENT_RANGE, ETAG];
        let mut replaced: Vec<&HeaderName> = Vec::new();
        for (name, value) in &not_modified {
            if kept.contains(name) {
                continue;
            }
            if !replaced.contains(&name) {
                headers.remove(name);
                replaced.push(name);
            }
            headers.append(name.clone(), value.clone());
        }
        headers
    }
}

/// A strong `ETag` for a stored body that came without one: a 64-bit hash of the body and
/// its length, the same in every process.
fn generated_etag(body: &[u8]) -> HeaderValue {
    let hash = foldhash::quality::FixedState::with_seed(0x666c_6f6f_6467_6174).hash_one(body);
    HeaderValue::try_from(format!("\"fg-{hash:016x}-{:x}\"", body.len()))
        .unwrap_or_else(|_| HeaderValue::from_static("\"fg\""))
}

/// Whether an `If-None-Match` value (`*` or a list of entity tags) matches `etag` by the
/// weak comparison (RFC 9110 §8.8.3.2).
fn etag_list_matches(list: &[u8], etag: &[u8]) -> bool {
    let wanted = opaque(etag);
    if floodgate_core::header::trim(list) == b"*" {
        return true;
    }
    let mut rest = list;
    loop {
        rest = rest.trim_ascii_start();
        rest = rest.strip_prefix(b",").unwrap_or(rest).trim_ascii_start();
        if rest.is_empty() {
            return false;
        }
        let tag_start = rest.strip_prefix(b"W/").unwrap_or(rest);
        let Some(quoted) = tag_start.strip_prefix(b"\"") else {
            return false;
        };
        let Some(end) = quoted.iter().position(|&byte| byte == b'"') else {
            return false;
        };
        if Some(&quoted[..end]) == wanted {
            return true;
        }
        rest = &quoted[end + 1..];
    }
}

/// The opaque part of an entity tag, without `W/` and quotes.
fn opaque(etag: &[u8]) -> Option<&[u8]> {
    let etag = etag.strip_prefix(b"W/").unwrap_or(etag);
    etag.strip_prefix(b"\"")?.strip_suffix(b"\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_uses_the_weak_comparison_over_a_list() {
        assert!(etag_list_matches(br#""a", W/"b""#, br#""b""#));
        assert!(etag_list_matches(br#"W/"b""#, br#"W/"b""#));
        assert!(etag_list_matches(b" * ", br#""x""#));
        assert!(!etag_list_matches(br#""a", "c""#, br#""b""#));
        for malformed in [&b"a, b"[..], b"\"unterminated", b"W/", b",,,", b""] {
            assert!(!etag_list_matches(malformed, br#""a""#), "{malformed:?}");
        }
    }

    #[test]
    fn stored_heads_lose_hop_by_hop_fields_and_gain_a_date() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("x-hop, close"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(http::header::AGE, HeaderValue::from_static("5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        let stored = stored_headers(headers, SystemTime::UNIX_EPOCH);
        let names: Vec<&str> = stored.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept", "date"]);
        assert_eq!(stored[DATE], "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn generated_etags_depend_on_the_body_only() {
        assert_eq!(generated_etag(b"abc"), generated_etag(b"abc"));
        assert_ne!(generated_etag(b"abc"), generated_etag(b"abd"));
        assert!(
            opaque(generated_etag(b"").as_bytes()).is_some(),
            "a valid strong tag"
        );
    }
}
