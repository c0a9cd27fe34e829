//! `Cache-Control` parsing (RFC 9111 §5.2), for responses and for requests.
//!
//! Every `Cache-Control` line counts, as one list. Names are matched case-insensitively;
//! values may be tokens or quoted strings (§5.2: recipients ought to accept both). The
//! first occurrence of a directive wins (§4.2.1). A duration that is not delta-seconds
//! makes the response stale rather than fresh for longer (§1.2.2); an overflowing one
//! saturates at 2³¹ seconds. Unknown directives are ignored (§5.2.3).

use std::time::Duration;

use floodgate_core::header;
use http::HeaderMap;
use http::header::{CACHE_CONTROL, PRAGMA};

/// A delta-seconds value that did not parse: treated as zero, so the response is stale.
const INVALID: Duration = Duration::ZERO;

/// The directives of a response that decide storing and reuse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "one flag per directive of RFC 9111 §5.2.2"
)]
pub(crate) struct ResponseDirectives {
    pub(crate) no_store: bool,
    /// Stored, but validated before every reuse (§5.2.2.4). A qualified `no-cache="f"` is
    /// treated as unqualified: stricter, and always allowed.
    pub(crate) no_cache: bool,
    /// Unqualified or qualified: a shared cache does not store it (§5.2.2.7).
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) max_age: Option<Duration>,
    pub(crate) s_maxage: Option<Duration>,
    /// RFC 5861 §3.
    pub(crate) stale_while_revalidate: Option<Duration>,
    /// RFC 5861 §4.
    pub(crate) stale_if_error: Option<Duration>,
}

impl ResponseDirectives {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut directives = Self::default();
        let mut buffer = [0; NAME_BUFFER];
        for (name, value) in each(headers) {
            match lowercase(name, &mut buffer) {
                "no-store" => directives.no_store = true,
                "no-cache" => directives.no_cache = true,
                "private" => directives.private = true,
                "public" => directives.public = true,
                "must-revalidate" => directives.must_revalidate = true,
                "proxy-revalidate" => directives.proxy_revalidate = true,
                "max-age" => first(&mut directives.max_age, value),
                "s-maxage" => first(&mut directives.s_maxage, value),
                "stale-while-revalidate" => first(&mut directives.stale_while_revalidate, value),
                "stale-if-error" => first(&mut directives.stale_if_error, value),
                _ => {}
            }
        }
        directives
    }

    /// Whether a stale copy may be served without validating it first, by
    /// stale-while-revalidate, stale-if-error or a request's `max-stale`.
    ///
    /// Never with `no-cache`, `must-revalidate`, `proxy-revalidate`, or `s-maxage`, which
    /// implies `proxy-revalidate` for a shared cache (§5.2.2.10).
    pub(crate) fn allows_stale(&self) -> bool {
        !(self.no_cache || self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some())
    }
}

/// How stale a response a request accepts (`max-stale`, §5.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaxStale {
    /// `max-stale` without a value.
    Any,
    /// `max-stale=N`.
    AtMost(Duration),
}

impl MaxStale {
    pub(crate) fn accepts(self, staleness: Duration) -> bool {
        match self {
            MaxStale::Any => true,
            MaxStale::AtMost(limit) => staleness <= limit,
        }
    }
}

/// The directives of a request (§5.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) max_age: Option<Duration>,
    pub(crate) max_stale: Option<MaxStale>,
    pub(crate) min_fresh: Option<Duration>,
    pub(crate) only_if_cached: bool,
}

impl RequestDirectives {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut directives = Self::default();
        let mut any = false;
        let mut buffer = [0; NAME_BUFFER];
        for (name, value) in each(headers) {
            any = true;
            match lowercase(name, &mut buffer) {
                "no-store" => directives.no_store = true,
                "no-cache" => directives.no_cache = true,
                "only-if-cached" => directives.only_if_cached = true,
                "max-age" => first(&mut directives.max_age, value),
                "min-fresh" => first(&mut directives.min_fresh, value),
                "max-stale" if directives.max_stale.is_none() => {
                    // A bare `max-stale` accepts any staleness; a bad value accepts none.
                    directives.max_stale = Some(value.map_or(MaxStale::Any, |value| {
                        MaxStale::AtMost(seconds(value).unwrap_or(INVALID))
                    }));
                }
                _ => {}
            }
        }
        // `Pragma: no-cache` counts only without `Cache-Control` (§5.4).
        if !any
            && headers
                .get_all(PRAGMA)
                .iter()
                .flat_map(|value| header::list(value.as_bytes()))
                .any(|element| element.eq_ignore_ascii_case(b"no-cache"))
        {
            directives.no_cache = true;
        }
        directives
    }
}

/// Longer than every directive name this module knows.
const NAME_BUFFER: usize = 32;

/// Every directive of every `Cache-Control` line: its name and raw value.
fn each(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .flat_map(|value| header::list(value.as_bytes()))
        .map(header::name_value)
}

/// `name` in lower case, in `buffer`; empty (no directive) when too long or not ASCII.
fn lowercase<'b>(name: &[u8], buffer: &'b mut [u8; NAME_BUFFER]) -> &'b str {
    let Some(buffer) = buffer.get_mut(..name.len()) else {
        return "";
    };
    for (to, from) in buffer.iter_mut().zip(name) {
        *to = from.to_ascii_lowercase();
    }
    std::str::from_utf8(buffer).unwrap_or("")
}

/// Sets `slot` from `value` unless an earlier occurrence did.
fn first(slot: &mut Option<Duration>, value: Option<&[u8]>) {
    if slot.is_none() {
        *slot = Some(value.and_then(seconds).unwrap_or(INVALID));
    }
}

/// Delta-seconds, as a token or a quoted string.
fn seconds(value: &[u8]) -> Option<Duration> {
    let value = header::unquote(value)?;
    header::delta_seconds(&value).map(|seconds| Duration::from_secs(u64::from(seconds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(lines: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(CACHE_CONTROL, HeaderValue::from_static(line));
        }
        headers
    }

    #[allow(
        clippy::unnecessary_wraps,
        reason = "compared with optional directives"
    )]
    fn secs(seconds: u64) -> Option<Duration> {
        Some(Duration::from_secs(seconds))
    }

    #[test]
    fn response_directives_in_every_form() {
        let parsed = ResponseDirectives::parse(&headers(&[
            "Public, MAX-AGE=\"60\"",
            "s-maxage=30, max-age=5, stale-while-revalidate=10",
            "stale-if-error=99999999999999999999",
        ]));
        assert!(parsed.public);
        assert_eq!(
            parsed.max_age,
            secs(60),
            "quoted, and the first occurrence wins"
        );
        assert_eq!(parsed.s_maxage, secs(30));
        assert_eq!(parsed.stale_while_revalidate, secs(10));
        assert_eq!(
            parsed.stale_if_error,
            secs(1 << 31),
            "overflow saturates at 2^31"
        );
        assert!(!parsed.allows_stale(), "s-maxage forbids serving stale");
    }

    #[test]
    fn malformed_durations_make_a_response_stale_not_fresh() {
        for line in [
            "max-age=1.5",
            "max-age=-1",
            "max-age=abc",
            "max-age=",
            "max-age",
        ] {
            let parsed = ResponseDirectives::parse(&headers(&[line]));
            assert_eq!(parsed.max_age, Some(Duration::ZERO), "{line}");
        }
    }

    #[test]
    fn quoted_commas_do_not_split_and_qualified_forms_count() {
        let parsed =
            ResponseDirectives::parse(&headers(&[r#"no-cache="set-cookie, x-a", private="x-b""#]));
        assert!(parsed.no_cache && parsed.private);
        assert_eq!(parsed.max_age, None);
        assert!(!parsed.allows_stale());
    }

    #[test]
    fn request_directives_and_pragma() {
        let parsed = RequestDirectives::parse(&headers(&[
            "max-stale, min-fresh=5, only-if-cached, max-age=0",
        ]));
        assert_eq!(parsed.max_stale, Some(MaxStale::Any));
        assert_eq!(parsed.min_fresh, secs(5));
        assert_eq!(parsed.max_age, secs(0));
        assert!(parsed.only_if_cached);
        assert_eq!(
            RequestDirectives::parse(&headers(&["max-stale=7"])).max_stale,
            Some(MaxStale::AtMost(Duration::from_secs(7)))
        );

        let mut pragma = HeaderMap::new();
        pragma.insert(PRAGMA, HeaderValue::from_static("No-Cache"));
        assert!(RequestDirectives::parse(&pragma).no_cache);
        pragma.insert(CACHE_CONTROL, HeaderValue::from_static("max-stale"));
        assert!(
            !RequestDirectives::parse(&pragma).no_cache,
            "Pragma counts only without Cache-Control"
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let mut headers = HeaderMap::new();
                headers.insert(CACHE_CONTROL, value);
                let _ = ResponseDirectives::parse(&headers);
                let _ = RequestDirectives::parse(&headers);
            }
        }
    }
}
