//! The `Cache-Status` field (RFC 9211) on every response the cache touched.

use http::header::GetAll;
use http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a request went to the inner service (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forward {
    /// The method is not one the cache answers.
    Method,
    /// Nothing stored for the URI.
    UriMiss,
    /// Something stored for the URI, but not for this request's variant.
    VaryMiss,
    /// Stored and usable, but the request's directives asked for a fresher one.
    Request,
    /// Stored but stale: validated or replaced.
    Stale,
    /// The cache does not answer this request: a `Range` with no fresh stored response.
    Bypass,
}

impl Forward {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Forward::Method => "method",
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Request => "request",
            Forward::Stale => "stale",
            Forward::Bypass => "bypass",
        }
    }
}

/// One `Cache-Status` member for this cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheStatus {
    pub(crate) forward: Option<Forward>,
    pub(crate) forward_status: Option<u16>,
    /// Freshness left, in seconds; negative when stale.
    pub(crate) ttl: Option<i64>,
    pub(crate) stored: Option<bool>,
    pub(crate) collapsed: Option<bool>,
    pub(crate) detail: Option<&'static str>,
}

impl CacheStatus {
    pub(crate) fn hit(ttl: i64) -> Self {
        Self {
            ttl: Some(ttl),
            ..Self::default()
        }
    }

    pub(crate) fn forwarded(forward: Forward) -> Self {
        Self {
            forward: Some(forward),
            ..Self::default()
        }
    }

    /// Appends the member to `headers`' `Cache-Status`, after the members of caches
    /// nearer the origin.
    pub(crate) fn append_to(&self, name: &str, headers: &mut HeaderMap) {
        let value = self.render(name, headers.get_all(&CACHE_STATUS));
        headers.insert(CACHE_STATUS.clone(), value);
    }

    /// The field's value: the members of caches nearer the origin (`upstream`, every line
    /// of it, in order: RFC 9110 §5.3), then this cache's, named `name`. Built by hand
    /// rather than with `format!`. A line that is not visible ASCII is left out.
    pub(crate) fn render(&self, name: &str, upstream: GetAll<'_, HeaderValue>) -> HeaderValue {
        let mut value = String::with_capacity(64);
        for line in upstream.into_iter().filter_map(|line| line.to_str().ok()) {
            value.push_str(line);
            value.push_str(", ");
        }
        value.push_str(name);
        match self.forward {
            None => value.push_str("; hit"),
            Some(forward) => {
                value.push_str("; fwd=");
                value.push_str(forward.as_str());
            }
        }
        if let Some(status) = self.forward_status {
            value.push_str("; fwd-status=");
            push_number(&mut value, i64::from(status));
        }
        if let Some(ttl) = self.ttl {
            value.push_str("; ttl=");
            push_number(&mut value, ttl);
        }
        for (name, flag) in [("stored", self.stored), ("collapsed", self.collapsed)] {
            if let Some(flag) = flag {
                value.push_str("; ");
                value.push_str(name);
                if !flag {
                    value.push_str("=?0");
                }
            }
        }
        if let Some(detail) = self.detail {
            value.push_str("; detail=");
            value.push_str(detail);
        }
        // Visible ASCII throughout: the upstream part was a valid value, the rest is ours.
        HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static("floodgate"))
    }
}

/// Appends `number` in decimal.
fn push_number(text: &mut String, number: i64) {
    if number < 0 {
        text.push('-');
    }
    let mut digits = [0_u8; 20];
    let mut rest = number.unsigned_abs();
    let mut start = digits.len();
    loop {
        start -= 1;
        // The last digit of `rest`: below 10, so it fits a byte.
        digits[start] = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    text.push_str(std::str::from_utf8(&digits[start..]).unwrap_or("0"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(status: CacheStatus, existing: Option<&'static str>) -> String {
        let mut headers = HeaderMap::new();
        if let Some(existing) = existing {
            headers.insert(&CACHE_STATUS, HeaderValue::from_static(existing));
        }
        status.append_to("floodgate", &mut headers);
        headers[&CACHE_STATUS].to_str().expect("ascii").to_owned()
    }

    #[test]
    fn every_upstream_line_is_kept_in_order() {
        let mut headers = HeaderMap::new();
        headers.append(&CACHE_STATUS, HeaderValue::from_static("origin; hit"));
        headers.append(
            &CACHE_STATUS,
            HeaderValue::from_static("edge; fwd=uri-miss"),
        );
        CacheStatus::hit(5).append_to("floodgate", &mut headers);
        assert_eq!(
            headers.get_all(&CACHE_STATUS).iter().collect::<Vec<_>>(),
            ["origin; hit, edge; fwd=uri-miss, floodgate; hit; ttl=5"]
        );
    }

    #[test]
    fn members_follow_rfc_9211() {
        assert_eq!(
            rendered(CacheStatus::hit(376), None),
            "floodgate; hit; ttl=376"
        );
        let stored = CacheStatus {
            stored: Some(true),
            ..CacheStatus::forwarded(Forward::UriMiss)
        };
        assert_eq!(rendered(stored, None), "floodgate; fwd=uri-miss; stored");
        let refused = CacheStatus {
            stored: Some(false),
            detail: Some("set-cookie"),
            collapsed: Some(false),
            ..CacheStatus::forwarded(Forward::UriMiss)
        };
        assert_eq!(
            rendered(refused, Some("origin; hit")),
            "origin; hit, floodgate; fwd=uri-miss; stored=?0; collapsed=?0; detail=set-cookie"
        );
        let revalidated = CacheStatus {
            forward_status: Some(304),
            stored: Some(true),
            ..CacheStatus::forwarded(Forward::Stale)
        };
        assert_eq!(
            rendered(revalidated, None),
            "floodgate; fwd=stale; fwd-status=304; stored"
        );
    }
}
