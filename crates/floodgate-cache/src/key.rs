//! Cache keys: the primary key of a URI (RFC 9111 §2) and the secondary key of a variant,
//! from the request fields its `Vary` names (§4.1).

use std::fmt::Write as _;
use std::sync::Arc;

use floodgate_core::encoding::{self, Encoding, Negotiated};
use floodgate_core::header;
use http::header::{ACCEPT_ENCODING, HOST, VARY};
use http::{HeaderMap, HeaderName, Uri};

/// The primary key: path and query as sent, after the host when the layer keys by host.
///
/// The method is not part of it: GET fills an entry and HEAD reads it. Host and path are
/// separated by a space, which neither can contain, so two keys never alias.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PrimaryKey(Arc<str>);

// A lookup by `&str` finds a `PrimaryKey`: the hit path builds no key.
impl std::borrow::Borrow<str> for PrimaryKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The path and query of `uri`, the whole primary key of a layer that does not key by
/// host.
pub(crate) fn path_of(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |path| path.as_str())
}

impl PrimaryKey {
    /// The key of `uri`, with `host` (lower-cased) in front when given.
    pub(crate) fn new(uri: &Uri, host: Option<&str>) -> Self {
        let path = path_of(uri);
        match host {
            Some(host) => {
                let mut key = host.to_ascii_lowercase();
                key.push(' ');
                key.push_str(path);
                Self(key.into())
            }
            None => Self::from_path(path),
        }
    }

    /// The key of `path_and_query` for a layer that does not key by host.
    pub(crate) fn from_path(path_and_query: &str) -> Self {
        Self(path_and_query.into())
    }

    /// The key's path and query.
    pub(crate) fn path(&self) -> &str {
        self.0.split_once(' ').map_or(&self.0, |(_, path)| path)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The host a request names: `Host`, or the URI's authority (HTTP/2).
pub(crate) fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    headers
        .get(HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| uri.authority().map(http::uri::Authority::as_str))
}

/// The request fields a response varies on, as `Vary` nominates them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Vary {
    /// No `Vary`: one variant for every request.
    #[default]
    None,
    /// These fields, lower-cased, in the order given.
    Fields(Arc<[HeaderName]>),
    /// `Vary: *`, or a field name that does not parse: matches no request (§4.1), so the
    /// response is never stored.
    Any,
}

impl Vary {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut fields: Vec<HeaderName> = Vec::new();
        for element in headers
            .get_all(VARY)
            .iter()
            .flat_map(|value| header::list(value.as_bytes()))
        {
            if element == b"*" {
                return Vary::Any;
            }
            let Ok(name) = HeaderName::from_bytes(element) else {
                return Vary::Any;
            };
            if !fields.contains(&name) {
                fields.push(name);
            }
        }
        if fields.is_empty() {
            Vary::None
        } else {
            Vary::Fields(fields.into())
        }
    }

    /// The secondary key of a request with `headers`: each nominated field's normalised
    /// value, length-prefixed so that values never run into one another. An absent field
    /// matches only an absent field.
    ///
    /// `Accept-Encoding` is reduced to the coding the compression layer would choose among
    /// `codings`, so `gzip, deflate, br` and `br;q=1, gzip` share an entry.
    pub(crate) fn secondary(&self, headers: &HeaderMap, codings: &[Encoding]) -> Secondary {
        let Vary::Fields(fields) = self else {
            return Secondary::default();
        };
        let mut key = String::new();
        for field in fields.iter() {
            if field == ACCEPT_ENCODING {
                let chosen = match encoding::negotiate(headers, codings) {
                    Negotiated::Use(coding) => coding.as_str(),
                    Negotiated::NotAcceptable => "!",
                };
                let _ = write!(key, "{}:{chosen}", chosen.len());
                continue;
            }
            let mut values = headers.get_all(field).iter().peekable();
            if values.peek().is_none() {
                key.push('-');
                continue;
            }
            // Lines joined with `, ` and whitespace around elements dropped (§4.1).
            let mut joined = String::new();
            for element in values.flat_map(|value| header::list(value.as_bytes())) {
                if !joined.is_empty() {
                    joined.push_str(", ");
                }
                joined.push_str(&String::from_utf8_lossy(element));
            }
            let _ = write!(key, "{}:{joined}", joined.len());
        }
        Secondary(key.into())
    }

    /// The nominated fields, if any.
    pub(crate) fn fields(&self) -> &[HeaderName] {
        match self {
            Vary::Fields(fields) => fields,
            Vary::None | Vary::Any => &[],
        }
    }
}

/// A variant's secondary key (empty without `Vary`).
#[derive(Debug, Clone, Eq, Default)]
pub(crate) struct Secondary(Box<str>);

// By hand, so that two empty keys, which every lookup of a URI without `Vary` compares,
// never reach `memcmp`. glibc's EVEX `memcmp` (2.36, chosen on AVX-512 machines) loads
// short inputs with a masked load even when the length is zero, here from an empty
// string's dangling pointer; suppressing that load's fault took 160 ns on an AMD EPYC VM,
// more than the whole moka lookup, against 2 ns for two short non-empty keys.
impl PartialEq for Secondary {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && (self.0.is_empty() || self.0 == other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn primary_keys_keep_the_query_and_never_alias() {
        let uri: Uri = "/items?limit=5".parse().expect("valid");
        assert_eq!(PrimaryKey::new(&uri, None).as_str(), "/items?limit=5");
        let with_host = PrimaryKey::new(&uri, Some("Example.COM"));
        assert_eq!(with_host.as_str(), "example.com /items?limit=5");
        assert_eq!(with_host.path(), "/items?limit=5");
        assert_ne!(
            PrimaryKey::new(&"/a?q=1".parse().expect("valid"), None),
            PrimaryKey::new(&"/a?q=2".parse().expect("valid"), None)
        );
    }

    #[test]
    fn vary_star_and_bad_names_match_nothing() {
        assert_eq!(
            Vary::parse(&headers(&[("vary", "accept-encoding, *")])),
            Vary::Any
        );
        assert_eq!(Vary::parse(&headers(&[("vary", "bad name")])), Vary::Any);
        assert_eq!(Vary::parse(&headers(&[])), Vary::None);
        assert_eq!(
            Vary::parse(&headers(&[
                ("vary", "Accept-Encoding"),
                ("vary", "x-a, accept-encoding")
            ]))
            .fields(),
            [
                HeaderName::from_static("accept-encoding"),
                HeaderName::from_static("x-a")
            ]
        );
    }

    #[test]
    fn secondary_keys_are_equal_only_with_the_same_text() {
        let key = |text: &str| Secondary(text.into());
        assert_eq!(key(""), Secondary::default());
        assert_eq!(key("4:gzip"), key("4:gzip"));
        assert_ne!(key(""), key("-"));
        assert_ne!(key("4:gzip"), key("4:gzap"));
    }

    #[test]
    fn accept_encoding_is_reduced_to_the_chosen_coding() {
        let vary = Vary::parse(&headers(&[("vary", "accept-encoding")]));
        let key = |lines| vary.secondary(&headers(lines), &[Encoding::Gzip]);
        assert_eq!(
            key(&[("accept-encoding", "gzip, deflate, br")]),
            key(&[("accept-encoding", "br;q=1, GZIP")])
        );
        assert_eq!(key(&[]), key(&[("accept-encoding", "identity")]));
        assert_ne!(key(&[]), key(&[("accept-encoding", "gzip")]));
        assert_eq!(key(&[("accept-encoding", "gzip;q=0")]), key(&[]));
    }

    #[test]
    fn other_fields_compare_after_joining_lines_and_absent_matches_only_absent() {
        let vary = Vary::parse(&headers(&[("vary", "x-a, x-b")]));
        let key = |lines| vary.secondary(&headers(lines), &[]);
        assert_eq!(
            key(&[("x-a", "1,2"), ("x-b", "z")]),
            key(&[("x-a", "1"), ("x-a", " 2 "), ("x-b", "z")])
        );
        assert_ne!(key(&[("x-a", "")]), key(&[]));
        assert_ne!(
            key(&[("x-a", "1"), ("x-b", "")]),
            key(&[("x-a", ""), ("x-b", "1")])
        );
    }
}
