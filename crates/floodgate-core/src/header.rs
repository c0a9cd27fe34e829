//! Total parsers for the pieces of HTTP header grammar that several layers read.
//!
//! Every function here takes raw bytes (`HeaderValue::as_bytes()`), because a client can send
//! any byte in a header; each one answers `None`, an empty iterator or a partial result on
//! malformed input and never panics. The grammar is RFC 9110 §5.6: comma-separated lists
//! (§5.6.1), tokens (§5.6.2), quoted strings (§5.6.4), parameters (§5.6.6) and q-values
//! (§12.4.2).
//!
//! # Example
//!
//! ```
//! use floodgate_core::header;
//!
//! let accept_encoding = b"gzip;q=0.8, br , identity;q=0";
//! let mut codings = Vec::new();
//! for element in header::list(accept_encoding) {
//!     let mut segments = header::params(element);
//!     let coding = segments.next().unwrap_or_default();
//!     let mut weight = 1000;
//!     for segment in segments {
//!         if let (b"q" | b"Q", Some(value)) = header::name_value(segment) {
//!             weight = header::qvalue(value).unwrap_or(0);
//!         }
//!     }
//!     codings.push((coding, weight));
//! }
//! assert_eq!(codings, [(&b"gzip"[..], 800), (&b"br"[..], 1000), (&b"identity"[..], 0)]);
//! ```

use std::borrow::Cow;

/// Splits a comma-separated list (RFC 9110 §5.6.1) into its elements, first to last.
///
/// Commas inside a quoted string (§5.6.4, where `\` escapes the next character) do not split.
/// Entity-tag lists (`If-None-Match`, §8.8.3) have no escapes, so `"a\", "b"` is two tags
/// there but one unterminated string here: split those with their own grammar. Each element is trimmed of optional white
/// space, and empty elements are skipped, as the RFC asks recipients to do.
pub fn list(value: &[u8]) -> Split<'_> {
    Split {
        rest: value,
        delimiter: b',',
    }
}

/// Splits a comma-separated list into its elements, last to first.
///
/// For a well-formed list this yields exactly the elements of [`list`] in reverse order;
/// proxies append to `X-Forwarded-For` and `Forwarded`, so the right end is the end a server
/// can trust, and reading from there stops before the part a client wrote.
pub fn list_rev(value: &[u8]) -> SplitRev<'_> {
    SplitRev { rest: value }
}

/// Splits a list element into its `;`-separated segments (RFC 9110 §5.6.6).
///
/// The first segment is the element's own value (`gzip` in `gzip;q=0.5`), possibly empty;
/// each later one is a parameter to read with [`name_value`]. Semicolons inside a quoted
/// string do not split; segments are trimmed, and empty ones after the first are skipped.
pub fn params(element: &[u8]) -> Params<'_> {
    Params {
        split: Split {
            rest: element,
            delimiter: b';',
        },
        first: true,
    }
}

/// Splits `name=value` at the first `=`, trimming both sides (more lenient than RFC 9110
/// §5.6.6, which allows no space around `=`); a segment without `=` is a bare name with no
/// value.
pub fn name_value(segment: &[u8]) -> (&[u8], Option<&[u8]>) {
    match segment.iter().position(|&byte| byte == b'=') {
        Some(at) => (trim(&segment[..at]), Some(trim(&segment[at + 1..]))),
        None => (trim(segment), None),
    }
}

/// Parses a q-value (RFC 9110 §12.4.2) into thousandths: `1` is 1000, `0.5` is 500.
///
/// `None` when the text is not a q-value (more than three decimals, above 1, a sign, …).
pub fn qvalue(value: &[u8]) -> Option<u16> {
    let (whole, fraction) = match value.iter().position(|&byte| byte == b'.') {
        Some(at) => (&value[..at], &value[at + 1..]),
        None => (value, &b""[..]),
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for place in 0..3 {
        let digit = fraction
            .get(place)
            .map_or(0, |digit| u16::from(digit - b'0'));
        thousandths = thousandths * 10 + digit;
    }
    match whole {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Parses delta-seconds (RFC 9111 §1.2.2): a non-negative whole number of seconds.
///
/// Values above 2³¹ saturate at 2³¹, as the RFC requires; anything that is not all digits is
/// `None`.
pub fn delta_seconds(value: &[u8]) -> Option<u32> {
    const SATURATED: u32 = 1 << 31;
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut seconds: u32 = 0;
    for digit in value {
        seconds = match seconds
            .checked_mul(10)
            .and_then(|s| s.checked_add(u32::from(digit - b'0')))
        {
            Some(seconds) if seconds <= SATURATED => seconds,
            _ => return Some(SATURATED),
        };
    }
    Some(seconds)
}

/// Whether `value` is a token (RFC 9110 §5.6.2): one or more `tchar`.
pub fn is_token(value: &[u8]) -> bool {
    !value.is_empty() && value.iter().all(|&byte| is_tchar(byte))
}

/// The value of a parameter that is a token or a quoted string, with quoting removed.
///
/// A token is returned as it is (borrowed); a quoted string (RFC 9110 §5.6.4) has its
/// quotes removed and its `\`-escapes resolved. `None` when the value is neither, for
/// example an unterminated quote or a token with a space in it.
pub fn unquote(value: &[u8]) -> Option<Cow<'_, [u8]>> {
    let Some(inner) = value.strip_prefix(b"\"") else {
        return is_token(value).then_some(Cow::Borrowed(value));
    };
    let inner = inner.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return inner
            .iter()
            .all(|&byte| is_qdtext(byte))
            .then_some(Cow::Borrowed(inner));
    }
    let mut unescaped = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&byte) = bytes.next() {
        if byte == b'\\' {
            // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
            let &escaped = bytes.next().filter(|&&next| is_quoted_pair_char(next))?;
            unescaped.push(escaped);
        } else if is_qdtext(byte) {
            unescaped.push(byte);
        } else {
            return None;
        }
    }
    Some(Cow::Owned(unescaped))
}

/// Trims optional white space (space and horizontal tab, RFC 9110 §5.6.3) from both ends.
pub fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&byte| !is_ows(byte))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&byte| !is_ows(byte))
        .map_or(start, |at| at + 1);
    &value[start..end]
}

/// Iterator over the elements of a list or the segments of an element; see [`list`].
#[derive(Debug, Clone)]
pub struct Split<'a> {
    rest: &'a [u8],
    delimiter: u8,
}

impl<'a> Split<'a> {
    /// The next piece, trimmed, possibly empty; `None` at the end of the input.
    fn next_piece(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let mut in_quotes = false;
        let mut escaped = false;
        let mut end = self.rest.len();
        for (at, &byte) in self.rest.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if in_quotes && byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_quotes = !in_quotes;
            } else if !in_quotes && byte == self.delimiter {
                end = at;
                break;
            }
        }
        let piece = &self.rest[..end];
        self.rest = self.rest.get(end + 1..).unwrap_or_default();
        Some(trim(piece))
    }
}

impl<'a> Iterator for Split<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let piece = self.next_piece()?;
            if !piece.is_empty() {
                return Some(piece);
            }
        }
    }
}

/// Iterator over the elements of a list from the last one; see [`list_rev`].
#[derive(Debug, Clone)]
pub struct SplitRev<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SplitRev<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while !self.rest.is_empty() {
            let mut in_quotes = false;
            let mut start = 0;
            for at in (0..self.rest.len()).rev() {
                let byte = self.rest[at];
                // A quote preceded by an odd number of backslashes is escaped.
                if byte == b'"' && !(in_quotes && preceded_by_odd_backslashes(self.rest, at)) {
                    in_quotes = !in_quotes;
                } else if !in_quotes && byte == b',' {
                    start = at + 1;
                    break;
                }
            }
            let piece = trim(&self.rest[start..]);
            self.rest = &self.rest[..start.saturating_sub(1)];
            if !piece.is_empty() {
                return Some(piece);
            }
        }
        None
    }
}

/// Iterator over the segments of a list element; see [`params`].
#[derive(Debug, Clone)]
pub struct Params<'a> {
    split: Split<'a>,
    first: bool,
}

impl<'a> Iterator for Params<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if std::mem::take(&mut self.first) {
            // The element's own value keeps its place even when empty (`;q=1`).
            return Some(self.split.next_piece().unwrap_or_default());
        }
        self.split.next()
    }
}

fn preceded_by_odd_backslashes(bytes: &[u8], at: usize) -> bool {
    bytes[..at]
        .iter()
        .rev()
        .take_while(|&&byte| byte == b'\\')
        .count()
        % 2
        == 1
}

fn is_ows(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn is_qdtext(byte: u8) -> bool {
    // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
    matches!(byte, b'\t' | b' ' | 0x21 | 0x23..=0x5B | 0x5D..=0x7E | 0x80..=0xFF)
}

fn is_quoted_pair_char(byte: u8) -> bool {
    matches!(byte, b'\t' | b' ' | 0x21..=0x7E | 0x80..=0xFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect<'a>(iter: impl Iterator<Item = &'a [u8]>) -> Vec<&'a str> {
        iter.map(|piece| std::str::from_utf8(piece).unwrap_or("<not utf-8>"))
            .collect()
    }

    #[test]
    fn list_splits_trims_and_skips_empty_elements() {
        assert_eq!(collect(list(b" a ,b,, ,\tc\t")), ["a", "b", "c"]);
        assert_eq!(collect(list(b"")), Vec::<&str>::new());
        assert_eq!(collect(list(b",,,")), Vec::<&str>::new());
    }

    #[test]
    fn list_keeps_commas_inside_quoted_strings() {
        assert_eq!(collect(list(br#"a="x,y", b"#)), [r#"a="x,y""#, "b"]);
        assert_eq!(collect(list(br#"a="x\",y", b"#)), [r#"a="x\",y""#, "b"]);
    }

    #[test]
    fn list_rev_is_list_reversed() {
        let value = br#"for="[2001:db8::1]:80", for=1.2.3.4 ,, by="a,\"b", x"#;
        let mut forward = collect(list(value));
        forward.reverse();
        assert_eq!(collect(list_rev(value)), forward);
    }

    #[test]
    fn params_keep_an_empty_first_segment() {
        assert_eq!(collect(params(b"gzip ; q=0.5;;x")), ["gzip", "q=0.5", "x"]);
        assert_eq!(collect(params(b";q=1")), ["", "q=1"]);
        assert_eq!(
            collect(params(br#"for="a;b";proto=http"#)),
            [r#"for="a;b""#, "proto=http"]
        );
    }

    #[test]
    fn name_value_splits_at_the_first_equals() {
        assert_eq!(name_value(b" q = 0.5 "), (&b"q"[..], Some(&b"0.5"[..])));
        assert_eq!(name_value(b"no-store"), (&b"no-store"[..], None));
        assert_eq!(name_value(b"a=b=c"), (&b"a"[..], Some(&b"b=c"[..])));
    }

    #[test]
    fn qvalue_follows_the_rfc_grammar() {
        let cases: &[(&[u8], Option<u16>)] = &[
            (b"1", Some(1000)),
            (b"1.", Some(1000)),
            (b"1.000", Some(1000)),
            (b"0", Some(0)),
            (b"0.5", Some(500)),
            (b"0.05", Some(50)),
            (b"0.001", Some(1)),
            (b"1.001", None),
            (b"0.0001", None),
            (b"2", None),
            (b"-0", None),
            (b"+1", None),
            (b".5", None),
            (b"", None),
            (b"0.5x", None),
            (b"01", None),
        ];
        for &(input, expected) in cases {
            assert_eq!(
                qvalue(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn delta_seconds_saturates_and_refuses_non_digits() {
        assert_eq!(delta_seconds(b"0"), Some(0));
        assert_eq!(delta_seconds(b"60"), Some(60));
        assert_eq!(delta_seconds(b"2147483648"), Some(1 << 31));
        assert_eq!(delta_seconds(b"99999999999999999999"), Some(1 << 31));
        assert_eq!(delta_seconds(b"-1"), None);
        assert_eq!(delta_seconds(b"1.5"), None);
        assert_eq!(delta_seconds(b""), None);
    }

    #[test]
    fn unquote_reads_tokens_and_quoted_strings() {
        assert_eq!(unquote(b"gzip").as_deref(), Some(&b"gzip"[..]));
        assert_eq!(unquote(br#""[::1]:80""#).as_deref(), Some(&b"[::1]:80"[..]));
        assert_eq!(unquote(br#""a\"b\\c""#).as_deref(), Some(&br#"a"b\c"#[..]));
        assert_eq!(unquote(br#""unterminated"#), None);
        assert_eq!(unquote(br#""dangling\""#), None);
        assert_eq!(unquote(b"two words"), None);
        assert_eq!(unquote(b""), None);
        assert_eq!(unquote(br#""""#).as_deref(), Some(&b""[..]));
    }

    /// A list element: a token or a `name="quoted string"` pair, as a well-formed sender writes.
    fn element() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,8}",
            ("[a-z]{1,5}", r"([ -!#-\[\]-~]|\\[ -~]){0,8}")
                .prop_map(|(name, quoted)| format!(r#"{name}="{quoted}""#)),
        ]
    }

    proptest! {
        #[test]
        fn every_helper_is_total_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            for piece in list(&bytes).chain(list_rev(&bytes)) {
                prop_assert!(!piece.is_empty());
                prop_assert_eq!(trim(piece), piece);
                for segment in params(piece) {
                    let (name, value) = name_value(segment);
                    let _ = unquote(name);
                    if let Some(value) = value {
                        let _ = unquote(value);
                        let _ = qvalue(value);
                        let _ = delta_seconds(value);
                    }
                }
            }
            let _ = unquote(&bytes);
            if let Some(q) = qvalue(&bytes) {
                prop_assert!(q <= 1000);
            }
            let _ = delta_seconds(&bytes);
            let _ = is_token(&bytes);
        }

        #[test]
        fn list_rev_reverses_any_well_formed_list(
            elements in proptest::collection::vec(element(), 0..8),
            separators in proptest::collection::vec("[ \t]{0,2},[ \t]{0,2}(,[ \t]{0,2}){0,1}", 8),
        ) {
            let mut value = String::new();
            for (element, separator) in elements.iter().zip(&separators) {
                value.push_str(element);
                value.push_str(separator);
            }
            let forward: Vec<&[u8]> = list(value.as_bytes()).collect();
            let mut backward: Vec<&[u8]> = list_rev(value.as_bytes()).collect();
            backward.reverse();
            prop_assert_eq!(&forward, &backward);
            let expected: Vec<&[u8]> = elements.iter().map(String::as_bytes).collect();
            prop_assert_eq!(forward, expected);
        }

        #[test]
        fn qvalue_reads_what_it_formats(thousandths in 0u16..=1000) {
            let text = format!("{}.{:03}", thousandths / 1000, thousandths % 1000);
            prop_assert_eq!(qvalue(text.as_bytes()), Some(thousandths));
        }

        #[test]
        fn unquote_inverts_quoting(text in "[ -~\t]{0,16}") {
            let mut quoted = String::from("\"");
            for character in text.chars() {
                if character == '"' || character == '\\' {
                    quoted.push('\\');
                }
                quoted.push(character);
            }
            quoted.push('"');
            let unquoted = unquote(quoted.as_bytes());
            prop_assert_eq!(unquoted.as_deref(), Some(text.as_bytes()));
        }
    }
}
