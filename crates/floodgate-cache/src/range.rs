//! Byte ranges (RFC 9110 §14): which part of a stored 200 a `Range` request gets.
//!
//! One range is served, as a 206. A `Range` of several ranges, of another unit, or that
//! does not parse is ignored, as §14.2 allows: the whole response is sent.

use std::time::Duration;

use floodgate_core::header;
use http::HeaderMap;
use http::header::{DATE, ETAG, IF_RANGE, LAST_MODIFIED};

/// What a `Range` selects from a representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selected {
    /// The whole representation: the field is ignored.
    Whole,
    /// Bytes `start..=end`.
    Part { start: usize, end: usize },
    /// No byte of the representation is in the range (416).
    Unsatisfiable,
}

/// One `range-spec` (§14.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-last`, or `first-` (to the end).
    From { first: u64, last: Option<u64> },
    /// `-length`: the last `length` bytes.
    Suffix(u64),
}

/// What the `Range` field `value` selects from a representation of `len` bytes.
pub(crate) fn select(value: &[u8], len: usize) -> Selected {
    let Some(spec) = single_byte_range(value) else {
        return Selected::Whole;
    };
    let Ok(len64) = u64::try_from(len) else {
        return Selected::Whole;
    };
    let (start, end) = match spec {
        Spec::From { first, .. } if first >= len64 => return Selected::Unsatisfiable,
        Spec::From { first, last } => (first, last.map_or(len64 - 1, |last| last.min(len64 - 1))),
        Spec::Suffix(0) => return Selected::Unsatisfiable,
        // §14.1.2: satisfiable, but no 206 can carry none of nothing.
        Spec::Suffix(_) if len64 == 0 => return Selected::Whole,
        Spec::Suffix(length) => (len64 - length.min(len64), len64 - 1),
    };
    // Both are below `len`, a `usize`.
    match (usize::try_from(start), usize::try_from(end)) {
        (Ok(start), Ok(end)) => Selected::Part { start, end },
        _ => Selected::Whole,
    }
}

/// The one byte range `value` names, if it is a valid `Range` of the `bytes` unit with
/// exactly one range in it.
fn single_byte_range(value: &[u8]) -> Option<Spec> {
    let value = header::trim(value);
    let equals = value.iter().position(|&byte| byte == b'=')?;
    let (unit, set) = (&value[..equals], &value[equals + 1..]);
    if !unit.eq_ignore_ascii_case(b"bytes") {
        return None;
    }
    let mut specs = header::list(set);
    let spec = specs.next()?;
    if specs.next().is_some() {
        return None;
    }
    let dash = spec.iter().position(|&byte| byte == b'-')?;
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    if first.is_empty() {
        return Some(Spec::Suffix(digits(last)?));
    }
    let first = digits(first)?;
    let last = if last.is_empty() {
        None
    } else {
        Some(digits(last)?)
    };
    // §14.1.1: a last position before the first makes the range invalid.
    if last.is_some_and(|last| last < first) {
        return None;
    }
    Some(Spec::From { first, last })
}

/// A run of decimal digits that fits a `u64`.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0_u64, |number, &byte| {
        let digit = byte.checked_sub(b'0').filter(|digit| *digit <= 9)?;
        number.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Whether the request's `If-Range` (§13.1.5) lets a range of the stored response with
/// `stored` fields be sent: there is none, or it is an entity tag strongly equal to the
/// stored `ETag`, or a date equal to a strong stored `Last-Modified` (one at least a
/// second before the stored `Date`, §8.8.2.2). Otherwise the whole response is sent.
pub(crate) fn if_range_allows(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(condition) = request.get(IF_RANGE) else {
        return true;
    };
    let condition = header::trim(condition.as_bytes());
    if condition.starts_with(b"W/") {
        return false;
    }
    if condition.starts_with(b"\"") {
        return stored
            .get(ETAG)
            .is_some_and(|etag| header::trim(etag.as_bytes()) == condition);
    }
    let date_of = |value: &[u8]| {
        std::str::from_utf8(value)
            .ok()
            .and_then(|value| httpdate::parse_http_date(value).ok())
    };
    let field = |name| stored.get(name).and_then(|value| date_of(value.as_bytes()));
    let (Some(asked), Some(modified)) = (date_of(condition), field(LAST_MODIFIED)) else {
        return false;
    };
    let strong = field(DATE).is_some_and(|date| {
        date.duration_since(modified)
            .is_ok_and(|gap| gap >= Duration::from_secs(1))
    });
    strong && asked == modified
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    #[test]
    fn one_range_of_bytes_is_selected() {
        let part = |start, end| Selected::Part { start, end };
        for (value, selected) in [
            ("bytes=0-3", part(0, 3)),
            ("bytes=5-", part(5, 9)),
            ("bytes=-3", part(7, 9)),
            ("bytes=8-100", part(8, 9)),
            ("bytes=-100", part(0, 9)),
            (" BYTES = 2-2 ", Selected::Whole),
            ("Bytes=2-2", part(2, 2)),
            ("bytes= 1-2 ,", part(1, 2)),
            ("bytes=10-", Selected::Unsatisfiable),
            ("bytes=10-20", Selected::Unsatisfiable),
            ("bytes=-0", Selected::Unsatisfiable),
        ] {
            assert_eq!(select(value.as_bytes(), 10), selected, "{value}");
        }
        assert_eq!(select(b"bytes=-5", 0), Selected::Whole);
        assert_eq!(select(b"bytes=0-", 0), Selected::Unsatisfiable);
    }

    #[test]
    fn anything_but_one_valid_byte_range_is_ignored() {
        for value in [
            "bytes=0-1,3-4",
            "bytes=5-2",
            "items=0-1",
            "bytes=abc",
            "bytes=-",
            "bytes=",
            "bytes",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes=99999999999999999999-",
            "",
        ] {
            assert_eq!(select(value.as_bytes(), 10), Selected::Whole, "{value}");
        }
    }

    fn fields(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        lines
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let stored = fields(&[
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ("date", "Tue, 01 Dec 2026 10:00:05 GMT"),
        ]);
        let allows = |condition| if_range_allows(&fields(&[("if-range", condition)]), &stored);
        assert!(if_range_allows(&HeaderMap::new(), &stored));
        assert!(allows("\"v1\""));
        assert!(!allows("\"v2\""));
        assert!(!allows("W/\"v1\""));
        assert!(allows("Tue, 01 Dec 2026 10:00:00 GMT"));
        assert!(!allows("Tue, 01 Dec 2026 10:00:01 GMT"));
        assert!(!allows("not a date"));
        // A Last-Modified less than a second before Date is weak.
        let weak = fields(&[
            ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ("date", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ]);
        let condition = fields(&[("if-range", "Tue, 01 Dec 2026 10:00:00 GMT")]);
        assert!(!if_range_allows(&condition, &weak));
    }

    proptest! {
        #[test]
        fn any_bytes_select_within_the_representation(
            value in proptest::collection::vec(any::<u8>(), 0..40),
            len in 0_usize..64,
        ) {
            if let Selected::Part { start, end } = select(&value, len) {
                prop_assert!(start <= end && end < len);
            }
        }
    }
}
