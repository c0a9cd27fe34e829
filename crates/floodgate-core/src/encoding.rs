//! Content codings and `Accept-Encoding` negotiation (RFC 9110 §8.4, §12.5.3).
//!
//! The compression layer picks the coding it sends with [`negotiate`], and the cache layer
//! keys stored responses by the same result, so `gzip, deflate, br` and `br;q=1, gzip`
//! share one entry when the server only offers gzip.
//!
//! # Example
//!
//! ```
//! use floodgate_core::encoding::{negotiate, Encoding, Negotiated};
//! use http::HeaderMap;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("accept-encoding", "br;q=0.9, gzip, *;q=0.1".parse()?);
//! // The server offers gzip and deflate, preferring gzip.
//! let offered = [Encoding::Gzip, Encoding::Deflate];
//! assert_eq!(negotiate(&headers, &offered), Negotiated::Use(Encoding::Gzip));
//!
//! headers.insert("accept-encoding", "gzip;q=0, identity;q=0".parse()?);
//! assert_eq!(negotiate(&headers, &offered), Negotiated::NotAcceptable);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use http::HeaderMap;
use http::header::ACCEPT_ENCODING;

use crate::header;

/// A content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Encoding {
    /// No coding.
    Identity,
    /// `gzip` (also spelled `x-gzip`, RFC 9110 §8.4.1.3).
    Gzip,
    /// `deflate` (zlib format).
    Deflate,
    /// `br` (Brotli).
    Brotli,
    /// `zstd` (Zstandard).
    Zstd,
}

impl Encoding {
    /// The token sent in `Content-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
        }
    }

    /// Parses a coding token, case-insensitively; `None` for codings floodgate does not
    /// know.
    pub fn from_token(token: &[u8]) -> Option<Self> {
        [
            (&b"identity"[..], Encoding::Identity),
            (b"gzip", Encoding::Gzip),
            (b"x-gzip", Encoding::Gzip),
            (b"deflate", Encoding::Deflate),
            (b"br", Encoding::Brotli),
            (b"zstd", Encoding::Zstd),
        ]
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(token))
        .map(|(_, encoding)| encoding)
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of [`negotiate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Negotiated {
    /// Send the response with this coding (possibly [`Encoding::Identity`]).
    Use(Encoding),
    /// The client refuses identity and every coding offered. RFC 9110 §12.5.3 lets the
    /// server answer 406 or send identity anyway; it prefers the latter.
    NotAcceptable,
}

/// Chooses a coding for a response to a request with `headers`, among `offered` (the
/// server's order of preference, used to break ties in q-value).
///
/// RFC 9110 §12.5.3:
/// - No `Accept-Encoding` means no preference, and identity is chosen. An empty one means
///   identity only.
/// - q-values weigh codings, and `q=0` refuses one.
/// - `*` stands for every coding not listed.
/// - Identity is acceptable unless refused by `identity;q=0`, or by `*;q=0` without an
///   `identity` entry.
///
/// Codings are case-insensitive and `x-gzip` is `gzip`. Every `Accept-Encoding` header
/// counts. A malformed element, for example a bad q-value, is ignored rather than guessed
/// at.
pub fn negotiate(headers: &HeaderMap, offered: &[Encoding]) -> Negotiated {
    let mut values = headers.get_all(ACCEPT_ENCODING).iter().peekable();
    if values.peek().is_none() {
        return Negotiated::Use(Encoding::Identity);
    }
    // Weights in thousandths; `None` when not listed.
    let mut star: Option<u16> = None;
    let mut identity: Option<u16> = None;
    let mut weights: [Option<u16>; 5] = [None; 5];
    for value in values {
        for element in header::list(value.as_bytes()) {
            let mut segments = header::params(element);
            let coding = segments.next().unwrap_or_default();
            let mut weight = Some(1000);
            for segment in segments {
                if let (name, Some(value)) = header::name_value(segment)
                    && name.eq_ignore_ascii_case(b"q")
                {
                    weight = header::qvalue(value);
                }
            }
            let Some(weight) = weight else { continue };
            if coding == b"*" {
                star = Some(star.map_or(weight, |old| old.max(weight)));
            } else if let Some(encoding) = Encoding::from_token(coding) {
                let slot = if encoding == Encoding::Identity {
                    &mut identity
                } else {
                    &mut weights[index(encoding)]
                };
                *slot = Some(slot.map_or(weight, |old| old.max(weight)));
            }
        }
    }
    let mut best: Option<(u16, Encoding)> = None;
    for &encoding in offered
        .iter()
        .filter(|&&encoding| encoding != Encoding::Identity)
    {
        let weight = weights[index(encoding)].or(star).unwrap_or(0);
        if weight > 0 && best.is_none_or(|(best_weight, _)| weight > best_weight) {
            best = Some((weight, encoding));
        }
    }
    let identity_weight = identity.unwrap_or(match star {
        Some(0) => 0,
        _ => 1,
    });
    match best {
        // A coding beats identity unless identity is weighted strictly higher.
        Some((weight, encoding)) if identity.is_none_or(|identity| weight >= identity) => {
            Negotiated::Use(encoding)
        }
        _ if identity_weight > 0 => Negotiated::Use(Encoding::Identity),
        Some((_, encoding)) => Negotiated::Use(encoding),
        None => Negotiated::NotAcceptable,
    }
}

fn index(encoding: Encoding) -> usize {
    match encoding {
        Encoding::Identity => 0,
        Encoding::Gzip => 1,
        Encoding::Deflate => 2,
        Encoding::Brotli => 3,
        Encoding::Zstd => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Encoding; 4] = [
        Encoding::Gzip,
        Encoding::Brotli,
        Encoding::Zstd,
        Encoding::Deflate,
    ];

    fn with(values: &[&str], offered: &[Encoding]) -> Negotiated {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                ACCEPT_ENCODING,
                value.parse().expect("a valid header value"),
            );
        }
        negotiate(&headers, offered)
    }

    #[test]
    fn negotiation_table() {
        use Encoding::{Brotli, Deflate, Gzip, Identity, Zstd};
        use Negotiated::{NotAcceptable, Use};
        let gzip_only = &[Gzip][..];
        let cases: &[(&[&str], &[Encoding], Negotiated)] = &[
            (&[], &ALL, Use(Identity)),
            (&[""], &ALL, Use(Identity)),
            (&["gzip"], &ALL, Use(Gzip)),
            (&["GZIP"], &ALL, Use(Gzip)),
            (&["x-gzip"], &ALL, Use(Gzip)),
            (&["gzip, deflate, br"], &ALL, Use(Gzip)),
            (&["gzip, deflate, br"], &[Brotli, Gzip], Use(Brotli)),
            (&["br;q=1, gzip"], gzip_only, Use(Gzip)),
            (&["gzip;q=0.5, br;q=0.8"], &ALL, Use(Brotli)),
            (&["gzip;q=0"], &ALL, Use(Identity)),
            (&["gzip;q=0, *"], &ALL, Use(Brotli)),
            (&["*"], &ALL, Use(Gzip)),
            (&["*;q=0"], &ALL, NotAcceptable),
            (&["*;q=0, identity"], &ALL, Use(Identity)),
            (&["identity;q=0"], &ALL, NotAcceptable),
            (&["identity;q=0, gzip"], &ALL, Use(Gzip)),
            (&["identity;q=0, zstd;q=0.1"], &ALL, Use(Zstd)),
            (&["identity, gzip;q=0.5"], &ALL, Use(Identity)),
            (&["gzip;q=0.5, identity;q=0.5"], &ALL, Use(Gzip)),
            (&["deflate"], gzip_only, Use(Identity)),
            (&["gzip;q=2"], &ALL, Use(Identity)),
            (&["gzip;q=abc, deflate"], &ALL, Use(Deflate)),
            (&["gzip ; Q=0.3 , deflate;q=0.2"], &ALL, Use(Gzip)),
            (&["compress, gzip"], &ALL, Use(Gzip)),
            (&["deflate;q=0.1", "gzip"], &ALL, Use(Gzip)),
            (&["gzip;q=0", "gzip"], &ALL, Use(Gzip)),
            (&["gzip"], &[], Use(Identity)),
            (&["identity;q=0"], &[], NotAcceptable),
        ];
        for (values, offered, expected) in cases {
            assert_eq!(
                with(values, offered),
                *expected,
                "{values:?} offered {offered:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn negotiation_is_total_and_picks_only_what_is_offered(value in "[ -~]{0,40}") {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                let mut headers = HeaderMap::new();
                headers.insert(ACCEPT_ENCODING, value);
                if let Negotiated::Use(encoding) = negotiate(&headers, &[Encoding::Gzip]) {
                    prop_assert!(matches!(encoding, Encoding::Gzip | Encoding::Identity));
                }
            }
        }
    }
}
