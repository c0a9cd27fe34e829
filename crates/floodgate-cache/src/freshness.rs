//! How long a stored response stays fresh, and how old it is (RFC 9111 §4.2).

use std::time::{Duration, SystemTime};

use floodgate_core::clock::Clock;
use http::header::{AGE, DATE, EXPIRES, LAST_MODIFIED};
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use crate::directives::ResponseDirectives;

/// The heuristic lifetime is this fraction of the time since `Last-Modified` (§4.2.2).
const HEURISTIC_FRACTION: u32 = 10;
/// ... and at most a day, as Apache and Traffic Server cap it.
const HEURISTIC_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// The layer's time: instants from its [`Clock`], and the wall-clock time they stand for.
#[derive(Debug, Clone)]
pub(crate) struct WallClock {
    clock: Clock,
    system: SystemTime,
    instant: Instant,
}

impl WallClock {
    pub(crate) fn new(clock: Clock) -> Self {
        Self {
            system: SystemTime::now(),
            instant: clock.now(),
            clock,
        }
    }

    /// Now, on the layer's clock.
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The wall-clock time at `at`, an instant of this clock a moment ago.
    ///
    /// On tokio's clock, the system time when the layer was built plus tokio's time since,
    /// so that `Date`, `Expires` and `Age` agree with paused tests. On the CPU's counter,
    /// the system time now less the counter's time since `at`: anchored at build, the
    /// counter's calibration error would add up over the life of the process (a few parts
    /// per million is seconds a day) and skew every apparent age.
    pub(crate) fn at(&self, at: Instant) -> SystemTime {
        if self.clock.follows_tokio() {
            self.system + at.saturating_duration_since(self.instant)
        } else {
            let since = self.clock.now().saturating_duration_since(at);
            SystemTime::now()
                .checked_sub(since)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }
}

/// A stored response's age and lifetime, measured from when it was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// `corrected_initial_age` (§4.2.3): how old the response already was on arrival.
    initial_age: Duration,
    /// When it arrived, on the layer's clock.
    received: Instant,
    /// Its freshness lifetime.
    pub(crate) lifetime: Duration,
    /// Whether the lifetime came from the heuristic or the layer's default rather than
    /// from the response.
    pub(crate) guessed: bool,
}

impl Timing {
    /// The timing of a response with `headers`, requested at `requested` and received at
    /// `received`; `None` when it carries no freshness at all and none may be guessed.
    ///
    /// The lifetime is the first of (§4.2.1): `s-maxage`, `max-age`, `Expires − Date`,
    /// 10 % of `Date − Last-Modified` (at most a day; only for the statuses RFC 9110
    /// §15.1 calls heuristically cacheable, or `public`), and `default_ttl` for a 200 with
    /// neither `Cache-Control` nor `Expires`. `date` is the response's `Date`, already
    /// parsed (or the receipt time).
    pub(crate) fn new(
        status: StatusCode,
        headers: &HeaderMap,
        directives: &ResponseDirectives,
        date: SystemTime,
        (requested, received): (Instant, Instant),
        clock: &WallClock,
        default_ttl: Option<Duration>,
    ) -> Option<Self> {
        // §4.2.3: apparent_age = max(0, response_time − date_value); response_delay =
        // response_time − request_time; corrected_initial_age =
        // max(apparent_age, age_value + response_delay).
        let apparent_age = clock
            .at(received)
            .duration_since(date)
            .unwrap_or(Duration::ZERO);
        let age_value = age(headers);
        let response_delay = received.saturating_duration_since(requested);
        let initial_age = apparent_age.max(age_value.saturating_add(response_delay));
        let (lifetime, guessed) = if let Some(lifetime) = directives.s_maxage.or(directives.max_age)
        {
            (lifetime, false)
        } else if let Some(expires) = headers.get(EXPIRES) {
            // An invalid date, `0` especially, means already expired (§5.3).
            let expires = expires
                .to_str()
                .ok()
                .and_then(|value| httpdate::parse_http_date(value).ok());
            let lifetime = expires
                .and_then(|expires| expires.duration_since(date).ok())
                .unwrap_or(Duration::ZERO);
            (lifetime, false)
        } else if let Some(lifetime) = heuristic(status, headers, directives, date) {
            (lifetime, true)
        } else if status == StatusCode::OK
            && !headers.contains_key(http::header::CACHE_CONTROL)
            && let Some(lifetime) = default_ttl
        {
            (lifetime, true)
        } else if directives.public || heuristically_cacheable(status) {
            // Storable, but stale at once: reusable only after validation.
            (Duration::ZERO, true)
        } else {
            return None;
        };
        Some(Self {
            initial_age,
            received,
            lifetime,
            guessed,
        })
    }

    /// `current_age` at `now` (§4.2.3).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.received)
    }

    /// How long the response stays fresh after `now`; negative when stale, by how much.
    pub(crate) fn fresh_for(&self, now: Instant) -> SignedDuration {
        self.fresh_at(self.age(now))
    }

    /// How long the response stays fresh once it is `age` old: [`fresh_for`](Self::fresh_for)
    /// for a caller that has the age already.
    pub(crate) fn fresh_at(&self, age: Duration) -> SignedDuration {
        SignedDuration::between(self.lifetime, age)
    }
}

/// A duration that can be negative: freshness left, or staleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SignedDuration {
    pub(crate) magnitude: Duration,
    pub(crate) negative: bool,
}

impl SignedDuration {
    /// `a − b`.
    fn between(a: Duration, b: Duration) -> Self {
        match a.checked_sub(b) {
            Some(magnitude) => Self {
                magnitude,
                negative: false,
            },
            None => Self {
                magnitude: b.saturating_sub(a),
                negative: true,
            },
        }
    }

    /// Fresh: `lifetime > age` (§4.2), so zero left is stale.
    pub(crate) fn is_fresh(&self) -> bool {
        !self.negative && !self.magnitude.is_zero()
    }

    /// How stale: zero while fresh.
    pub(crate) fn staleness(&self) -> Duration {
        if self.is_fresh() {
            Duration::ZERO
        } else {
            self.magnitude
        }
    }

    /// Whole seconds of freshness left, rounded down: negative as soon as the response
    /// is stale (`Cache-Status` `ttl`).
    pub(crate) fn seconds(&self) -> i64 {
        let seconds = i64::try_from(self.magnitude.as_secs()).unwrap_or(i64::MAX);
        if !self.negative {
            seconds
        } else if self.magnitude.subsec_nanos() > 0 {
            -seconds - 1
        } else {
            -seconds
        }
    }
}

/// The first member of `Age`, ignored when invalid (§5.1).
fn age(headers: &HeaderMap) -> Duration {
    headers
        .get(AGE)
        .and_then(|value| floodgate_core::header::list(value.as_bytes()).next())
        .and_then(floodgate_core::header::delta_seconds)
        .map_or(Duration::ZERO, |seconds| {
            Duration::from_secs(u64::from(seconds))
        })
}

/// The response's `Date`, when present and valid.
pub(crate) fn date(headers: &HeaderMap) -> Option<SystemTime> {
    parse_date(headers, DATE)
}

/// The response's `Last-Modified`, when present and valid.
pub(crate) fn last_modified(headers: &HeaderMap) -> Option<SystemTime> {
    parse_date(headers, LAST_MODIFIED)
}

fn parse_date(headers: &HeaderMap, name: http::HeaderName) -> Option<SystemTime> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .and_then(|value| httpdate::parse_http_date(value).ok())
}

/// RFC 9110 §15.1: the statuses a cache may give a heuristic lifetime.
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

fn heuristic(
    status: StatusCode,
    headers: &HeaderMap,
    directives: &ResponseDirectives,
    date: SystemTime,
) -> Option<Duration> {
    if !(heuristically_cacheable(status) || directives.public) {
        return None;
    }
    // A `Last-Modified` after `Date` counts as `Date`: zero.
    let since = date
        .duration_since(last_modified(headers)?)
        .unwrap_or(Duration::ZERO);
    Some((since / HEURISTIC_FRACTION).min(HEURISTIC_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn wall_time_follows_paused_tokio_time_or_the_system_clock_for_the_counter() {
        let tokio = WallClock::new(Clock::new());
        let start = tokio.now();
        tokio::time::advance(90 * SECOND).await;
        assert_eq!(
            tokio.at(tokio.now()).duration_since(tokio.at(start)).ok(),
            Some(90 * SECOND)
        );

        // The counter's wall time is read from the system clock at each call, not carried
        // from when the layer was built.
        let counter = WallClock::new(Clock::counter());
        let before = SystemTime::now();
        let at = counter.at(counter.now());
        let after = SystemTime::now();
        assert!(at <= after, "{at:?} is not after {after:?}");
        assert!(
            at + Duration::from_millis(1) >= before,
            "{at:?} is before {before:?}"
        );
    }

    fn timing(
        status: u16,
        lines: &[(&'static str, String)],
        default_ttl: Option<Duration>,
    ) -> Option<Timing> {
        let clock = WallClock::new(Clock::new());
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(*name, HeaderValue::from_str(value).expect("valid"));
        }
        let now = Instant::now();
        let date = date(&headers).unwrap_or_else(|| clock.at(now));
        Timing::new(
            StatusCode::from_u16(status).expect("valid"),
            &headers,
            &ResponseDirectives::parse(&headers),
            date,
            (now, now),
            &clock,
            default_ttl,
        )
    }

    fn http_date(offset: i64) -> String {
        let now = SystemTime::now();
        let at = if offset >= 0 {
            now + Duration::from_secs(offset.unsigned_abs())
        } else {
            now - Duration::from_secs(offset.unsigned_abs())
        };
        httpdate::fmt_http_date(at)
    }

    #[test]
    fn lifetime_comes_from_the_first_source_present() {
        let explicit =
            |lines: &[(&'static str, String)]| timing(200, lines, None).map(|t| t.lifetime);
        let expires = ("expires", http_date(100));
        let last_modified = ("last-modified", http_date(-1000));
        assert_eq!(
            explicit(&[
                ("cache-control", "max-age=5, s-maxage=7".into()),
                expires.clone()
            ]),
            Some(7 * SECOND)
        );
        assert_eq!(
            explicit(&[("cache-control", "max-age=5".into()), expires.clone()]),
            Some(5 * SECOND)
        );
        let from_expires = explicit(&[expires.clone(), ("date", http_date(0))]).expect("stored");
        assert!(
            (99 * SECOND..=101 * SECOND).contains(&from_expires),
            "{from_expires:?}"
        );
        assert_eq!(explicit(&[("expires", "0".into())]), Some(Duration::ZERO));
        let heuristic = explicit(&[last_modified.clone(), ("date", http_date(0))]).expect("stored");
        assert!(
            (99 * SECOND..=101 * SECOND).contains(&heuristic),
            "{heuristic:?}"
        );
        assert_eq!(
            explicit(&[]),
            Some(Duration::ZERO),
            "a 200 is storable but stale"
        );
        assert_eq!(
            timing(200, &[], Some(30 * SECOND)).map(|t| t.lifetime),
            Some(30 * SECOND)
        );
        assert_eq!(
            timing(302, &[], Some(30 * SECOND)),
            None,
            "302 needs explicit freshness"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn age_counts_the_age_header_and_time_in_the_cache() {
        let stored = timing(
            200,
            &[
                ("cache-control", "max-age=60".into()),
                ("age", "10, 99".into()),
            ],
            None,
        )
        .expect("stored");
        let now = Instant::now();
        assert_eq!(stored.age(now), 10 * SECOND);
        tokio::time::advance(45 * SECOND).await;
        assert_eq!(stored.fresh_for(Instant::now()).seconds(), 5);
        tokio::time::advance(5 * SECOND).await;
        let left = stored.fresh_for(Instant::now());
        assert!(!left.is_fresh(), "fresh means lifetime > age");
        tokio::time::advance(3 * SECOND).await;
        assert_eq!(stored.fresh_for(Instant::now()).seconds(), -3);
        assert_eq!(stored.fresh_for(Instant::now()).staleness(), 3 * SECOND);
    }

    #[test]
    fn an_invalid_age_is_ignored() {
        for value in ["abc", "-7200", "7200.0"] {
            let stored = timing(
                200,
                &[
                    ("cache-control", "max-age=60".into()),
                    ("age", value.into()),
                ],
                None,
            )
            .expect("stored");
            assert_eq!(stored.age(stored.received), Duration::ZERO, "{value}");
        }
    }
}
