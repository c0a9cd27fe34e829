//! A cache hit through `CacheLayer` against a bare `moka` lookup of the same key, measured
//! in alternation.
//!
//! Separate criterion runs of the same code differ by up to 40 % on a shared VM, and so do
//! processes. This program times the hit, on each of floodgate's clocks, and the lookup in
//! turns inside one process, several rounds each (in a different order each round), and
//! repeats that in several child processes. It prints the median time of each, and the
//! median, lowest and highest of the ratios of hit to lookup, each ratio taken within one
//! round. The lookup is timed twice: on moka's default hasher (`SipHash`), and on foldhash,
//! the hasher the layer's own store uses.
//!
//! A hit is timed as `benches/cache.rs` times it: requests are built before the clock
//! starts, and the responses are dropped after it stops. The stored page is the bench's:
//! 50 items of JSON with `Cache-Control: max-age=3600`.
//!
//! ```sh
//! cargo run --release --example cache_ab
//! ```
//!
//! It takes about 30 seconds on 2 cores, one thread at a time, and stops by itself.

use std::convert::Infallible;
use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use floodgate::clock::Clock;
use floodgate_cache::CacheLayer;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use support::{PATH, page, ready, request};
use tower::{Layer, Service};

// The bench's page, request and `ready`, so that both time the same hit.
#[path = "../benches/support/mod.rs"]
mod support;

const PROCESSES: usize = 8;
const ROUNDS: usize = 3;
/// Requests are built, and responses kept, this many at a time, as in `benches/cache.rs`.
const BATCH: usize = 64;
const BATCHES: usize = 10_000;

/// What each round times, in this order in the first round.
const COLUMNS: [&str; 4] = [
    "hit, tokio's clock",
    "hit, Clock::counter()",
    "moka get",
    "moka get, foldhash",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("child") {
        for round in measure()? {
            let line: Vec<String> = round.iter().map(f64::to_string).collect();
            println!("{}", line.join(" "));
        }
        return Ok(());
    }
    let program = std::env::current_exe()?;
    let mut samples: Vec<[f64; 4]> = Vec::new();
    for _ in 0..PROCESSES {
        let output = Command::new(&program).arg("child").output()?;
        if !output.status.success() {
            return Err(format!(
                "a child failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        for line in String::from_utf8(output.stdout)?.lines() {
            let numbers: Vec<f64> = line.split(' ').filter_map(|n| n.parse().ok()).collect();
            if let Ok(round) = <[f64; 4]>::try_from(numbers) {
                samples.push(round);
            }
        }
    }
    let column = |index: usize| median(samples.iter().map(|sample| sample[index]).collect());
    println!("median time of {} rounds:", samples.len());
    for (index, name) in COLUMNS.iter().enumerate() {
        println!("  {name:<22} {:>6.1} ns", column(index));
    }
    println!("hit / lookup, per round: median (lowest–highest)");
    for hit in 0..2 {
        for floor in 2..4 {
            let mut ratios: Vec<f64> = samples.iter().map(|s| s[hit] / s[floor]).collect();
            ratios.sort_by(f64::total_cmp);
            println!(
                "  {:<22} / {:<19} {:.2} ({:.2}–{:.2})",
                COLUMNS[hit],
                COLUMNS[floor],
                median(ratios.clone()),
                ratios.first().copied().unwrap_or_default(),
                ratios.last().copied().unwrap_or_default(),
            );
        }
    }
    Ok(())
}

/// `ROUNDS` rounds of nanoseconds per call, one for each of [`COLUMNS`].
fn measure() -> Result<Vec<[f64; 4]>, Box<dyn std::error::Error>> {
    let mut on_tokio = cached(Clock::new())?;
    let mut on_counter = cached(Clock::counter())?;
    let key: Arc<str> = Arc::from(PATH);
    let value = Arc::new(Bytes::from_static(b"page"));
    let sip: moka::sync::Cache<Arc<str>, Arc<Bytes>> = moka::sync::Cache::new(10_000);
    sip.insert(Arc::clone(&key), Arc::clone(&value));
    let fold = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .build_with_hasher(foldhash::quality::RandomState::default());
    fold.insert(Arc::clone(&key), value);
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let mut times = [0.0; 4];
        // Each round starts one further along, so no column always runs first.
        for turn in 0..COLUMNS.len() {
            let index = (round + turn) % COLUMNS.len();
            times[index] = match index {
                0 => time_batches(|| hits(&mut on_tokio)),
                1 => time_batches(|| hits(&mut on_counter)),
                2 => time_batches(|| gets(&sip, &key)),
                _ => time_batches(|| gets(&fold, &key)),
            };
        }
        rounds.push(times);
    }
    Ok(rounds)
}

/// The time of `BATCH` lookups of `key`.
fn gets<S>(moka: &moka::sync::Cache<Arc<str>, Arc<Bytes>, S>, key: &Arc<str>) -> Duration
where
    S: std::hash::BuildHasher + Clone + Send + Sync + 'static,
{
    let start = Instant::now();
    for _ in 0..BATCH {
        black_box(moka.get(black_box(key)));
    }
    start.elapsed()
}

type Cached = floodgate_cache::Cache<
    tower::util::ServiceFn<
        fn(Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>,
    >,
>;

/// A layer on `clock` in front of the page handler, with the page stored.
fn cached(clock: Clock) -> Result<Cached, Box<dyn std::error::Error>> {
    let layer = CacheLayer::builder().clock(clock).build()?;
    let handler: fn(_) -> _ = |_| std::future::ready(Ok(page()));
    let mut cached = layer.layer(tower::service_fn(handler));
    // The miss stores the page once its body is read to the end.
    let miss = ready(cached.call(request()))?;
    let _ = ready(miss.into_body().collect());
    let hit = ready(cached.call(request()))?;
    let status = hit.headers()["cache-status"].to_str()?;
    if !status.starts_with("floodgate; hit;") {
        return Err(format!("the timed calls would not be hits: {status}").into());
    }
    Ok(cached)
}

/// The time of `BATCH` hits, with the requests built before and the responses dropped
/// after.
fn hits(cached: &mut Cached) -> Duration {
    let requests: Vec<_> = (0..BATCH).map(|_| request()).collect();
    let mut responses = Vec::with_capacity(BATCH);
    let start = Instant::now();
    for request in requests {
        responses.push(black_box(ready(cached.call(request))));
    }
    let elapsed = start.elapsed();
    drop(responses);
    elapsed
}

/// Nanoseconds per call over `BATCHES` batches of `BATCH` calls each.
fn time_batches(mut batch: impl FnMut() -> Duration) -> f64 {
    let total: Duration = (0..BATCHES).map(|_| batch()).sum();
    #[allow(clippy::cast_precision_loss, reason = "a count far below 2^52")]
    let calls = (BATCH * BATCHES) as f64;
    total.as_secs_f64() * 1e9 / calls
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}
