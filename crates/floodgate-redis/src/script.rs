//! What goes into the Lua script and what comes out: keys, `ARGV`, the reply.

use std::time::Duration;

use floodgate_ratelimit::{Algorithm, Check, StoreDecision, StoreError};
use redis::{Script, ScriptInvocation};

use crate::error::failed;

/// The script: all checks of a request decided, and charged only if every enforced one fits.
const SOURCE: &str = include_str!("script.lua");

/// Integers per check in the script's reply.
const REPLY_PER_CHECK: usize = 4;

/// The script, hashed once for `EVALSHA`.
pub(crate) fn script() -> Script {
    Script::new(SOURCE)
}

/// One call: the time (`now`, µs since the UNIX epoch, or none for Redis's clock), then per
/// check its key and five arguments, as `script.lua` reads them.
pub(crate) fn invocation<'a>(
    script: &'a Script,
    now: Option<u64>,
    prefix: &str,
    checks: &[Check],
) -> Result<ScriptInvocation<'a>, StoreError> {
    let mut invocation = script.prepare_invoke();
    match now {
        Some(micros) => invocation.arg(micros),
        None => invocation.arg(""),
    };
    for check in checks {
        let arguments = Arguments::of(check)?;
        invocation
            .key(redis_key(prefix, check.policy(), check.key()))
            .arg(arguments.algorithm)
            .arg(check.cost())
            .arg(u8::from(check.enforced()))
            .arg(arguments.first)
            .arg(arguments.second);
    }
    Ok(invocation)
}

/// The key of `policy`'s state for `key`. The prefix in braces is the key's Redis Cluster
/// hash tag, whatever the key holds: only the first `{…}` counts.
pub(crate) fn redis_key(prefix: &str, policy: &str, key: &str) -> String {
    format!("{{{prefix}}}:{policy}:{key}")
}

/// A check's algorithm and quota as the script takes them.
#[derive(Debug, PartialEq, Eq)]
struct Arguments {
    algorithm: &'static str,
    /// Token bucket: the emission interval in nanoseconds. Window: its length in µs.
    first: u64,
    /// Token bucket: the tolerance (burst × emission) in nanoseconds. Window: the limit.
    second: u64,
}

impl Arguments {
    fn of(check: &Check) -> Result<Self, StoreError> {
        let quota = check.quota();
        let period = u64::try_from(quota.period().as_nanos()).unwrap_or(u64::MAX);
        if quota.count() == 0 || period == 0 {
            return Err(failed(format!(
                "policy {:?} has an unusable quota ({quota})",
                check.policy()
            )));
        }
        match check.algorithm() {
            // As gcra.rs: the interval rounded up to a whole nanosecond admits only less.
            Algorithm::TokenBucket => {
                let emission = period.div_ceil(u64::from(quota.count()));
                Ok(Self {
                    algorithm: "gcra",
                    first: emission,
                    second: emission.saturating_mul(u64::from(quota.burst_size())),
                })
            }
            // Redis's clock counts microseconds; a window of a fraction of one more is
            // counted as the next whole microsecond.
            Algorithm::SlidingWindow => Ok(Self {
                algorithm: "window",
                first: period.div_ceil(1_000),
                second: u64::from(quota.count()),
            }),
            other => Err(failed(format!(
                "policy {:?} uses {other:?}, which this version of floodgate-redis cannot count",
                check.policy()
            ))),
        }
    }
}

/// The script's reply, four integers per check, as decisions.
pub(crate) fn decisions(reply: &[i64], checks: usize) -> Result<Vec<StoreDecision>, StoreError> {
    let bad = |what: String| {
        failed(format!(
            "unexpected reply from the rate-limit script: {what}"
        ))
    };
    if reply.len() != checks * REPLY_PER_CHECK {
        return Err(bad(format!("{} integers for {checks} checks", reply.len())));
    }
    reply
        .chunks_exact(REPLY_PER_CHECK)
        .map(|decision| {
            let [allowed, remaining, reset_after, retry_after] = *decision else {
                return Err(bad(format!("{decision:?}")));
            };
            let non_negative = |value: i64| {
                u64::try_from(value).map_err(|_| bad(format!("negative value in {decision:?}")))
            };
            let allowed = match allowed {
                0 => false,
                1 => true,
                _ => return Err(bad(format!("allowed is {allowed}"))),
            };
            let mut retry_after = Duration::from_micros(non_negative(retry_after)?);
            if !allowed {
                // A refusal always has a wait; Redis's clock ticks in microseconds.
                retry_after = retry_after.max(Duration::from_micros(1));
            }
            Ok(StoreDecision {
                allowed,
                remaining: non_negative(remaining)?,
                reset_after: Duration::from_micros(non_negative(reset_after)?),
                retry_after,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_ratelimit::Quota;

    #[test]
    fn keys_share_the_prefix_as_their_hash_tag() {
        assert_eq!(
            redis_key("floodgate", "per-ip", "203.0.113.9"),
            "{floodgate}:per-ip:203.0.113.9"
        );
        // A client's key cannot move its state to another slot: only the first `{…}` counts.
        assert_eq!(redis_key("app", "api", "{x}"), "{app}:api:{x}");
    }

    #[test]
    fn token_bucket_arguments_are_nanoseconds() {
        let check = Check::new(
            "p",
            "k",
            Algorithm::TokenBucket,
            Quota::per_second(3).burst(2),
            1,
        );
        // 1 s / 3 rounded up to a whole nanosecond, as in memory.
        assert_eq!(
            Arguments::of(&check).ok(),
            Some(Arguments {
                algorithm: "gcra",
                first: 333_333_334,
                second: 666_666_668,
            })
        );
        let fast = Check::new("p", "k", Algorithm::TokenBucket, Quota::per_second(5000), 1);
        assert_eq!(Arguments::of(&fast).ok().map(|a| a.first), Some(200_000));
    }

    #[test]
    fn window_arguments_are_microseconds_and_the_limit() {
        let check = Check::new(
            "p",
            "k",
            Algorithm::SlidingWindow,
            Quota::per_minute(100),
            1,
        );
        assert_eq!(
            Arguments::of(&check).ok(),
            Some(Arguments {
                algorithm: "window",
                first: 60_000_000,
                second: 100,
            })
        );
    }

    #[test]
    fn unusable_quotas_fail_instead_of_dividing_by_zero() {
        let zero = Check::new("p", "k", Algorithm::TokenBucket, Quota::per_second(0), 1);
        assert!(matches!(Arguments::of(&zero), Err(StoreError::Failed(_))));
        let empty = Check::new(
            "p",
            "k",
            Algorithm::SlidingWindow,
            Quota::new(1, Duration::ZERO),
            1,
        );
        assert!(matches!(Arguments::of(&empty), Err(StoreError::Failed(_))));
    }

    #[test]
    fn replies_become_decisions() {
        let decided = decisions(&[1, 4, 1_500, 0, 0, 0, 2_000_000, 0], 2);
        let Ok([admitted, refused]) = decided.as_deref() else {
            panic!("two decisions expected, got {decided:?}");
        };
        assert_eq!(
            *admitted,
            StoreDecision {
                allowed: true,
                remaining: 4,
                reset_after: Duration::from_micros(1_500),
                retry_after: Duration::ZERO,
            }
        );
        assert!(!refused.allowed);
        assert_eq!(refused.reset_after, Duration::from_secs(2));
        // A refusal never says "retry now".
        assert_eq!(refused.retry_after, Duration::from_micros(1));
    }

    #[test]
    fn malformed_replies_are_failures() {
        for (reply, checks) in [
            (&[1, 0, 0][..], 1),
            (&[1, 0, 0, 0][..], 2),
            (&[2, 0, 0, 0][..], 1),
            (&[1, -1, 0, 0][..], 1),
        ] {
            assert!(
                matches!(decisions(reply, checks), Err(StoreError::Failed(_))),
                "{reply:?}"
            );
        }
    }
}
