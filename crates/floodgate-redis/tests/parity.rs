//! The script decides as the in-memory algorithms do.

mod support;

use std::time::Duration;

use floodgate_ratelimit::{Algorithm, Check, KeyedLimiter, Quota, RateLimitStore, Refusal};
use support::{RedisServer, TestClock};

/// A small deterministic generator, so a failure replays.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// The script decides as the in-memory algorithms do. The reference, a `KeyedLimiter`, runs
/// on its own runtime with paused tokio time; the store runs on a real one, with a client
/// clock moved by the same steps.
#[test]
fn decisions_are_those_of_the_in_memory_algorithms() {
    let Some(server) = RedisServer::new() else {
        return;
    };
    let real = tokio::runtime::Runtime::new().expect("a runtime");
    let paused = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a paused runtime");
    let clock = TestClock::new();
    let store = real.block_on(clock.store(&server));
    let cases = [
        (
            Algorithm::TokenBucket,
            Quota::per_second(10).burst(3),
            200_000,
            3,
        ),
        (
            Algorithm::TokenBucket,
            Quota::new(7, Duration::from_secs(3)).burst(2),
            900_000,
            2,
        ),
        (
            Algorithm::TokenBucket,
            Quota::per_second(5000).burst(20),
            1_000,
            8,
        ),
        (
            Algorithm::SlidingWindow,
            Quota::new(5, Duration::from_secs(2)),
            700_000,
            2,
        ),
        (Algorithm::SlidingWindow, Quota::per_second(3), 400_000, 1),
        (
            Algorithm::SlidingWindow,
            Quota::new(4, Duration::from_millis(10)),
            3_000,
            2,
        ),
    ];
    let mut random = XorShift(0x5eed_cafe_f00d_d00d);
    for (case, (algorithm, quota, max_gap_micros, max_cost)) in cases.into_iter().enumerate() {
        let reference = paused.block_on(async {
            KeyedLimiter::<String>::new(algorithm, quota).expect("a valid quota")
        });
        let key = format!("case-{case}");
        let (mut admitted, mut refused) = (0, 0);
        for step in 0..150 {
            let gap = random.below(max_gap_micros);
            let cost = 1 + u32::try_from(random.below(max_cost)).expect("small");
            clock.advance(gap);
            paused.block_on(tokio::time::advance(Duration::from_micros(gap)));
            let expected = paused.block_on(async { reference.check_cost(&key, cost) });
            let check = Check::new("parity", key.as_str(), algorithm, quota, cost);
            let decided = real
                .block_on(store.check(vec![check]))
                .expect("the store decides")[0];
            let context = format!("case {case} ({algorithm:?} {quota}), step {step}, cost {cost}");
            match expected {
                Ok(()) => {
                    assert!(decided.allowed, "{context}: admitted in memory");
                    admitted += 1;
                }
                Err(Refusal::RetryAfter(wait)) => {
                    assert!(!decided.allowed, "{context}: refused in memory");
                    refused += 1;
                    // Redis's clock ticks in microseconds: the wait rounded up to one.
                    let micros = wait.as_nanos().div_ceil(1_000);
                    assert_eq!(decided.retry_after.as_micros(), micros, "{context}");
                }
                Err(other) => panic!("{context}: {other:?}"),
            }
        }
        // Both outcomes, often: the sequence tested the boundary, not one side of it.
        assert!(
            admitted >= 30 && refused >= 30,
            "case {case}: {admitted} admitted, {refused} refused"
        );
    }
}
