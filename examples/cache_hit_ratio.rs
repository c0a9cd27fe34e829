//! The response cache's hit ratio under a Zipf workload larger than the cache: what its
//! eviction policy keeps, hot set included.
//!
//! One client sends GETs for URIs drawn from a Zipf distribution over `KEYS` URIs, one at a
//! time, through a `CacheLayer` with room for `CAPACITY` of their 2 KB pages (as weighed
//! by the cache itself), and counts the calls that reached the origin. Time is tokio's,
//! paused, and moves on by the same step each request, `RATE` requests a second whatever
//! the machine, so which URIs are hot (16 hits within a second) is the same on every
//! machine. The draws come from a fixed seed, so every run sends the same requests; moka's
//! own seeds still move the ratio by about 0.0005.
//!
//! ```sh
//! cargo run --release --example cache_hit_ratio -- [KEYS] [SKEW] [REQUESTS] [CAPACITY] [RATE]
//! ```
//!
//! The defaults, 100 000 URIs, skew 1.1, 1 000 000 requests, room for 1 000 pages and
//! 100 000 requests a second, take a few seconds.

#![allow(
    clippy::cast_precision_loss,
    reason = "ranks, counts and random bits as fractions, far below 2^52"
)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use floodgate_cache::{Cache, CacheLayer};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};

/// A page's body.
const PAGE_BYTES: usize = 2_000;

fn usage(problem: &str) -> ! {
    eprintln!("usage: cache_hit_ratio [KEYS] [SKEW] [REQUESTS] [CAPACITY] [RATE]: {problem}");
    std::process::exit(2);
}

fn argument<T: std::str::FromStr>(position: usize, default: T) -> T {
    let Some(value) = std::env::args().nth(position) else {
        return default;
    };
    value
        .parse()
        .unwrap_or_else(|_| usage(&format!("argument {position} is not a number: {value}")))
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

/// The origin: a 2 KB page fresh for an hour, counting its calls.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    page: Bytes,
}

impl Origin {
    fn new(calls: &Arc<AtomicUsize>) -> Self {
        Self {
            calls: Arc::clone(calls),
            page: Bytes::from(vec![b'x'; PAGE_BYTES]),
        }
    }
}

impl Service<Request<Full<Bytes>>> for Origin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(Response::builder()
            .header("cache-control", "max-age=3600")
            .body(Full::new(self.page.clone()))
            .expect("a valid response")))
    }
}

/// Sends a GET for `path` and reads the answer to its end (that is when a miss is stored).
async fn get(cached: &mut Cache<Origin>, path: String) {
    let request = Request::get(path)
        .body(Full::default())
        .expect("a valid request");
    let ready = cached.ready().await.expect("infallible");
    let response = ready.call(request).await.expect("infallible");
    let _ = response.into_body().collect().await;
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    let keys: usize = argument(1, 100_000);
    let skew: f64 = argument(2, 1.1);
    let requests: usize = argument(3, 1_000_000);
    let capacity: u64 = argument(4, 1_000);
    let rate: u32 = argument(5, 100_000);
    if keys == 0 || requests == 0 || capacity == 0 || rate == 0 {
        usage("KEYS, REQUESTS, CAPACITY and RATE must be at least 1");
    }
    let pace = Duration::from_secs(1) / rate;
    if !(skew.is_finite() && skew >= 0.0) {
        usage("SKEW must be a number of at least 0");
    }

    // What one page weighs in the cache, key and head included.
    let probe = CacheLayer::builder().build().expect("a valid cache");
    let weigh = probe.handle();
    let mut weighed = probe.layer(Origin::new(&Arc::default()));
    get(&mut weighed, format!("/items/{keys}")).await;
    let page_weight = weigh.stored_bytes();
    let Some(max_bytes) = capacity.checked_mul(page_weight) else {
        usage("CAPACITY pages are more bytes than a u64 holds");
    };

    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::builder()
        .max_bytes(max_bytes)
        .max_entry_bytes(PAGE_BYTES)
        .build()
        .expect("a valid cache");
    let mut cached = layer.layer(Origin::new(&calls));
    let mut zipf = Zipf::new(keys, skew);
    let started = Instant::now();
    for _ in 0..requests {
        get(&mut cached, format!("/items/{}", zipf.draw())).await;
        tokio::time::advance(pace).await;
    }
    let misses = calls.load(Ordering::Relaxed);
    println!(
        "{keys} URIs, skew {skew}, {requests} requests at {rate} a second, room for \
         {capacity} pages of {page_weight} bytes: hit ratio {:.4} ({misses} misses) in {:.1} s",
        1.0 - misses as f64 / requests as f64,
        started.elapsed().as_secs_f64()
    );
}
