//! The response cache's hit ratio under a Zipf workload larger than the cache: what its
//! eviction policy keeps, hot set included.
//!
//! One client sends GETs for URIs drawn from a Zipf distribution over `KEYS` URIs, one at a
//! time, through a `CacheLayer` holding about `CAPACITY` of their 2 KB pages, and counts
//! the calls that reached the origin. The draws come from a fixed seed, so every run sends
//! the same requests; moka's own seeds still move the ratio by about 0.0005.
//!
//! ```sh
//! cargo run --release --example cache_hit_ratio -- [KEYS] [SKEW] [REQUESTS] [CAPACITY]
//! ```
//!
//! The defaults, 100 000 URIs, skew 1.1, 1 000 000 requests and a cache of 1 000 pages,
//! take a few seconds.

#![allow(
    clippy::cast_precision_loss,
    reason = "ranks, counts and random bits as fractions, far below 2^52"
)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use floodgate_cache::CacheLayer;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};

/// A page's body.
const PAGE_BYTES: usize = 2_000;

fn argument<T: std::str::FromStr>(position: usize, default: T) -> T {
    let Some(value) = std::env::args().nth(position) else {
        return default;
    };
    if let Ok(parsed) = value.parse() {
        return parsed;
    }
    eprintln!(
        "usage: cache_hit_ratio [KEYS] [SKEW] [REQUESTS] [CAPACITY]; argument {position} is \
         not a number: {value}"
    );
    std::process::exit(2);
}

/// Draws ranks `0..keys` with probability proportional to `1 / (rank + 1)^skew`.
struct Zipf {
    cumulative: Vec<f64>,
    state: u64,
}

impl Zipf {
    fn new(keys: usize, skew: f64) -> Self {
        let weights: Vec<f64> = (1..=keys).map(|rank| (rank as f64).powf(-skew)).collect();
        let total: f64 = weights.iter().sum();
        let mut sum = 0.0;
        let cumulative = weights
            .iter()
            .map(|weight| {
                sum += weight / total;
                sum
            })
            .collect();
        Self {
            cumulative,
            state: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn draw(&mut self) -> usize {
        // xorshift64, then the top 53 bits as a fraction.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let unit = (self.state >> 11) as f64 / (1_u64 << 53) as f64;
        self.cumulative
            .partition_point(|&below| below < unit)
            .min(self.cumulative.len() - 1)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let keys: usize = argument(1, 100_000);
    let skew: f64 = argument(2, 1.1);
    let requests: usize = argument(3, 1_000_000);
    let capacity: u64 = argument(4, 1_000);
    if keys == 0 || requests == 0 || capacity == 0 {
        eprintln!("cache_hit_ratio: KEYS, REQUESTS and CAPACITY must be at least 1");
        std::process::exit(2);
    }

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let page = Bytes::from(vec![b'x'; PAGE_BYTES]);
    // A page weighs its body, its head and its key: about 2 100 bytes.
    let layer = CacheLayer::builder()
        .max_bytes(capacity * 2_100)
        .build()
        .expect("a valid cache");
    let mut cached = layer.layer(tower::service_fn(move |_: Request<Full<Bytes>>| {
        counted.fetch_add(1, Ordering::Relaxed);
        let page = page.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=3600")
                    .body(Full::new(page))
                    .expect("a valid response"),
            )
        }
    }));

    let mut zipf = Zipf::new(keys, skew);
    let started = Instant::now();
    for _ in 0..requests {
        // Scattered, so that popular URIs are not neighbours.
        let path = format!(
            "/items/{}",
            zipf.draw().wrapping_mul(2_654_435_761) % 1_000_003
        );
        let request = Request::get(path)
            .body(Full::default())
            .expect("a valid request");
        let ready = cached.ready().await.expect("infallible");
        let response = ready.call(request).await.expect("infallible");
        // Read to its end: that is when a miss is stored.
        let _ = response.into_body().collect().await;
    }
    let misses = calls.load(Ordering::Relaxed);
    println!(
        "{keys} URIs, skew {skew}, {requests} requests, room for {capacity}: hit ratio {:.4} \
         ({misses} misses) in {:.1} s",
        1.0 - misses as f64 / requests as f64,
        started.elapsed().as_secs_f64()
    );
}
