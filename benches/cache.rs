//! The response cache's hit path, side by side with its floor and with what it saves.
//!
//! `cache_hit/floodgate_hit`: a GET answered from the cache through `CacheLayer`, request
//! in, response with its `Age` and `Cache-Status` out, on the layer's default clock
//! (tokio's); `cache_hit/floodgate_hit_counter_clock`: the same on `Clock::counter()`. The
//! page is hot, as any page hit thousands of times a second is: most hits are answered by
//! the layer's hot set without a moka lookup, and 1 in 8 goes to moka.
//! `cache_hit/moka_get`: a bare `moka` lookup of the same key, the floor under any
//! moka-based cache; `cache_hit/moka_get_foldhash`: the same with the hasher the layer's
//! store uses (foldhash, not moka's default `SipHash`). `cache_hit/uncached_handler`: what a
//! hit saves, the handler building its 50-item JSON page with `serde_json`.
//!
//! Run: `cargo bench --bench cache`. For ratios steadier than separate runs give on a
//! shared machine: `cargo run --release --example cache_ab`.

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use floodgate::clock::Clock;
use floodgate_cache::CacheLayer;
use http::Request;
use http_body_util::Full;
use support::{PATH, drain, page, ready, request};
use tower::{Layer, Service};

fn cache_hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("cache_hit");

    for (name, clock) in [
        ("floodgate_hit", Clock::new()),
        ("floodgate_hit_counter_clock", Clock::counter()),
    ] {
        let layer = CacheLayer::builder()
            .clock(clock)
            .build()
            .expect("a valid cache");
        let mut cached = layer.layer(tower::service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(page())
        }));
        // The miss that stores the page: the body is read to its end.
        let _ = drain(
            ready(cached.call(request()))
                .expect("infallible")
                .into_body(),
        );
        let hit = ready(cached.call(request())).expect("infallible");
        let status = hit.headers()["cache-status"].to_str().expect("ASCII");
        assert!(
            status.starts_with("floodgate; hit;"),
            "the timed calls are hits: {status}"
        );
        // Batches of 64: a server's request is in the cache from parsing, and criterion's
        // `SmallInput` would build thousands at once (megabytes), timing memory misses on
        // them and on their responses instead of the hit.
        group.bench_function(name, |b| {
            b.iter_batched(
                request,
                |request| black_box(ready(cached.call(request))),
                BatchSize::NumIterations(64),
            );
        });
    }

    let key: Arc<str> = Arc::from(PATH);
    let moka: moka::sync::Cache<Arc<str>, Arc<Bytes>> = moka::sync::Cache::new(10_000);
    moka.insert(Arc::clone(&key), Arc::new(Bytes::from_static(b"page")));
    group.bench_function("moka_get", |b| {
        b.iter(|| black_box(moka.get(black_box(&key))));
    });
    // With the hasher the layer's store uses: the floor under this layer's own lookup.
    let moka = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .build_with_hasher(foldhash::quality::RandomState::default());
    moka.insert(Arc::clone(&key), Arc::new(Bytes::from_static(b"page")));
    group.bench_function("moka_get_foldhash", |b| {
        b.iter(|| black_box(moka.get(black_box(&key))));
    });

    group.bench_function("uncached_handler", |b| b.iter(|| black_box(page())));
    group.finish();
}

criterion_group!(benches, cache_hit);
criterion_main!(benches);
