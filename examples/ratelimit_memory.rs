//! Memory per tracked key: inserts 1 000 000 distinct IPv4 keys into a floodgate token
//! bucket and into governor's keyed limiter, and prints resident memory per key for each,
//! and how long floodgate's sweep of the full table holds each shard's lock.
//!
//! ```sh
//! cargo run --release --example ratelimit_memory --features ratelimit
//! ```
//!
//! Each limiter runs in its own child process, so one's freed memory cannot hide the other's.
//! The figure includes everything the table costs: keys, states, hash-table control bytes
//! and spare capacity.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::process::Command;

use floodgate::key::IpKey;
use floodgate::ratelimit::{Algorithm, KeyedLimiter, OnFull, Quota};

const KEYS: u32 = 1_000_000;

/// Resident memory in bytes, from `/proc/self/status`.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn keys() -> impl Iterator<Item = IpKey> {
    (0..KEYS).map(|i| IpKey::from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))))
}

fn measure(which: &str) -> Result<(), Box<dyn std::error::Error>> {
    let keys: Vec<IpKey> = keys().collect();
    let before = resident_bytes();
    let tracked = match which {
        "floodgate" => {
            // Hourly, so every key is still active when the sweep runs.
            let limiter = KeyedLimiter::builder(Algorithm::TokenBucket, Quota::per_hour(10))
                .max_keys(2_000_000, OnFull::Overflow)
                .build()?;
            for key in &keys {
                let _ = limiter.check(key);
            }
            let tracked = limiter.tracked_keys();
            let after = resident_bytes();
            // Every key is still active, so the sweep visits all of them and drops none:
            // its longest possible pass. It locks one of 128 shards at a time.
            let start = std::time::Instant::now();
            let dropped = limiter.sweep();
            let elapsed = start.elapsed();
            println!(
                "floodgate  sweep of {tracked} active keys: dropped {dropped} in {elapsed:.2?}, \
                 {:.0?} per shard lock on average",
                elapsed / 128
            );
            std::mem::forget(limiter);
            (tracked, after)
        }
        "governor" => {
            let rate = NonZeroU32::new(10).ok_or("10 is not zero")?;
            let limiter =
                governor::DefaultKeyedRateLimiter::<IpKey>::keyed(governor::Quota::per_hour(rate));
            for key in &keys {
                let _ = limiter.check_key(key);
            }
            let tracked = limiter.len();
            let after = resident_bytes();
            std::mem::forget(limiter);
            (tracked, after)
        }
        other => return Err(format!("unknown limiter {other:?}: floodgate or governor").into()),
    };
    let (tracked, after) = tracked;
    let grown = after.saturating_sub(before);
    #[allow(
        clippy::cast_precision_loss,
        reason = "printed figures, far below 2^52"
    )]
    let (mebibytes, per_key) = (grown as f64 / 1_048_576.0, grown as f64 / f64::from(KEYS));
    println!("{which:<10} {tracked:>9} keys  {mebibytes:>7.1} MiB  {per_key:>6.1} bytes/key");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(which) = std::env::args().nth(1) {
        return measure(&which);
    }
    println!("limiter         keys   resident   per key ({KEYS} distinct IPv4 keys)");
    let this = std::env::current_exe()?;
    for which in ["floodgate", "governor"] {
        let status = Command::new(&this).arg(which).status()?;
        if !status.success() {
            return Err(format!("measuring {which} failed: {status}").into());
        }
    }
    Ok(())
}
