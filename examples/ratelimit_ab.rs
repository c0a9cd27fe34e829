//! A keyed check, floodgate's token bucket and sliding window against governor, measured in
//! alternation.
//!
//! On a shared VM, separate criterion runs of the same code differ by up to 40 %, and so do
//! processes: where the allocator and the hash seeds put a table changes its speed. This
//! program measures the limiters in turns inside one process, several rounds each, and
//! repeats that in several child processes, then prints the median time per check and the
//! median, lowest and highest floodgate/governor ratio for each case and algorithm. All
//! read the CPU's counter (floodgate's `Clock::counter()`, governor's default clock), with
//! quotas so large that every check is admitted and charged.
//!
//! ```sh
//! cargo run --release --example ratelimit_ab --features ratelimit
//! ```
//!
//! It takes about two minutes on 2 cores, one thread at a time, and stops by itself.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::process::Command;
use std::time::Instant;

use floodgate::clock::Clock;
use floodgate::key::IpKey;
use floodgate::ratelimit::{Algorithm, KeyedLimiter, OnFull, Quota};
use governor::DefaultKeyedRateLimiter;

/// One unit per nanosecond: nothing in a run is refused.
const PER_SECOND: u32 = 1_000_000_000;
const CASES: [(&str, u32); 3] = [
    ("hot key", 1),
    ("10 000 keys", 10_000),
    ("1 000 000 keys", 1_000_000),
];
const PROCESSES: usize = 8;
const ROUNDS: usize = 3;
const CHECKS: u32 = 5_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(case) = std::env::args().nth(1) {
        let count = CASES
            .iter()
            .find(|(name, _)| *name == case)
            .map(|&(_, count)| count)
            .ok_or("unknown case")?;
        for [bucket, window, governor] in measure(count)? {
            println!("{bucket} {window} {governor}");
        }
        return Ok(());
    }
    let program = std::env::current_exe()?;
    println!(
        "case            algorithm       floodgate  governor  ratio: median (lowest–highest) of {}",
        PROCESSES * ROUNDS
    );
    for (case, _) in CASES {
        let mut samples: Vec<[f64; 3]> = Vec::new();
        for _ in 0..PROCESSES {
            let output = Command::new(&program).arg(case).output()?;
            if !output.status.success() {
                return Err(format!("the child for {case} failed").into());
            }
            for line in String::from_utf8(output.stdout)?.lines() {
                let numbers: Vec<f64> = line.split(' ').filter_map(|n| n.parse().ok()).collect();
                if let [bucket, window, governor] = numbers[..] {
                    samples.push([bucket, window, governor]);
                }
            }
        }
        let governor = median(samples.iter().map(|sample| sample[2]).collect());
        for (column, algorithm) in ["token bucket", "sliding window"].into_iter().enumerate() {
            let floodgate = median(samples.iter().map(|sample| sample[column]).collect());
            let mut ratios: Vec<f64> = samples.iter().map(|s| s[column] / s[2]).collect();
            ratios.sort_by(f64::total_cmp);
            println!(
                "{case:<15} {algorithm:<15} {floodgate:>6.1} ns {governor:>6.1} ns  {:.2} ({:.2}–{:.2})",
                median(ratios.clone()),
                ratios.first().copied().unwrap_or_default(),
                ratios.last().copied().unwrap_or_default(),
            );
        }
    }
    Ok(())
}

/// `ROUNDS` rounds of nanoseconds per check over `count` keys: floodgate's token bucket,
/// its sliding window, then governor.
fn measure(count: u32) -> Result<Vec<[f64; 3]>, Box<dyn std::error::Error>> {
    // Inside a runtime, as in a server: floodgate's sweeper starts on it (and never runs
    // here, as nothing drives this runtime).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let _inside = runtime.enter();
    let keys: Vec<IpKey> = (0..count)
        .map(|i| IpKey::from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))))
        .collect();
    let limiter = |algorithm, quota| {
        KeyedLimiter::<IpKey>::builder(algorithm, quota)
            .max_keys(2_000_000, OnFull::Overflow)
            .clock(Clock::counter())
            .build()
    };
    let bucket = limiter(
        Algorithm::TokenBucket,
        Quota::per_second(PER_SECOND).burst(PER_SECOND),
    )?;
    let window = limiter(Algorithm::SlidingWindow, Quota::per_second(PER_SECOND))?;
    let rate = NonZeroU32::new(PER_SECOND).ok_or("a zero rate")?;
    let governor = DefaultKeyedRateLimiter::<IpKey>::keyed(
        governor::Quota::per_second(rate).allow_burst(rate),
    );
    // Keys are inserted before timing: the hit path is measured.
    for key in &keys {
        let _ = bucket.check(key);
        let _ = window.check(key);
        let _ = governor.check_key(key);
    }
    let time = |check: &dyn Fn(&IpKey) -> bool| {
        let start = Instant::now();
        let mut index = 0;
        for _ in 0..CHECKS {
            index = if index + 1 == keys.len() {
                0
            } else {
                index + 1
            };
            black_box(check(black_box(&keys[index])));
        }
        start.elapsed().as_secs_f64() * 1e9 / f64::from(CHECKS)
    };
    Ok((0..ROUNDS)
        .map(|_| {
            [
                time(&|key| bucket.check(key).is_ok()),
                time(&|key| window.check(key).is_ok()),
                time(&|key| governor.check_key(key).is_ok()),
            ]
        })
        .collect())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}
