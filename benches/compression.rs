//! floodgate's gzip layer side by side with tower-http's `CompressionLayer`, the crate a Rust
//! user picks today, on the same JSON bodies at the same level.
//!
//! `compression_gzip/{floodgate,tower_http}/{1KiB,16KiB,256KiB}`: one request through the
//! layer around a service answering a `Full` JSON body, including collecting the compressed
//! body. `compression_levels/{1..9}`: floodgate on 16 KiB at each gzip level, to choose the
//! default. Compressed sizes are printed before the timings.
//!
//! Both use flate2 on zlib-rs: enabling it for floodgate enables it for every flate2 user in
//! the binary, tower-http's async-compression included (Cargo unifies features), so this
//! compares the layers on the same engine.
//!
//! Run: `cargo bench --bench compression --features compression`.

mod support;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::hint::black_box;
use support::{drain, ready};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use floodgate::compression::CompressionLayer;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service};

/// A page of items as an API returns it, `size` bytes long.
fn json(size: usize) -> Bytes {
    let mut text = String::from("{\"items\":[");
    let mut id = 0_u64;
    while text.len() < size {
        let _ = write!(
            text,
            "{{\"id\":{id},\"uuid\":\"{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}\",\"name\":\"item {}\",\
             \"price\":{}.{:02},\"stock\":{},\"status\":\"{}\",\"created\":\"2026-11-{:02}T{:02}:{:02}:00Z\"}},",
            id.wrapping_mul(2_654_435_761) & 0xffff_ffff,
            id.wrapping_mul(40_503) & 0xffff,
            id.wrapping_mul(977) & 0xfff,
            id.wrapping_mul(331) & 0xfff,
            id.wrapping_mul(11_400_714_819_323_198_485) & 0xffff_ffff_ffff,
            ["bolt", "widget", "gear", "spring", "nut"][usize::try_from(id % 5).unwrap_or(0)],
            id % 500,
            id % 100,
            id % 1_000,
            ["active", "archived", "draft"][usize::try_from(id % 3).unwrap_or(0)],
            1 + id % 28,
            id % 24,
            id % 60,
        );
        id += 1;
    }
    text.truncate(size);
    Bytes::from(text)
}

fn request() -> Request<()> {
    Request::get("/items")
        .header("accept-encoding", "gzip")
        .body(())
        .expect("valid request")
}

/// One request through `service`: the compressed size.
fn round<S, B>(service: &mut S) -> usize
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
{
    drain(
        ready(service.call(request()))
            .expect("the service answers")
            .into_body(),
    )
}

fn responder(
    body: Bytes,
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(move |_: Request<()>| {
        let mut response = Response::new(Full::new(body.clone()));
        response.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

fn gzip(c: &mut Criterion) {
    let level = CompressionLayer::DEFAULT_LEVEL;
    let mut group = c.benchmark_group("compression_gzip");
    for (name, size) in [("1KiB", 1024), ("16KiB", 16 * 1024), ("256KiB", 256 * 1024)] {
        let body = json(size);
        group.throughput(Throughput::Bytes(size as u64));
        let mut ours = CompressionLayer::new()
            .level(level)
            .expect("a valid level")
            .layer(responder(body.clone()));
        let quality = tower_http::CompressionLevel::Precise(i32::try_from(level).unwrap_or(6));
        let mut theirs = tower_http::compression::CompressionLayer::new()
            .quality(quality)
            .layer(responder(body.clone()));
        let (ours_size, theirs_size) = (round(&mut ours), round(&mut theirs));
        println!(
            "compressed {name}: floodgate {ours_size} B ({:.3}), tower-http {theirs_size} B ({:.3}), level {level}",
            ratio(ours_size, size),
            ratio(theirs_size, size)
        );
        group.bench_function(BenchmarkId::new("floodgate", name), |b| {
            b.iter(|| black_box(round(&mut ours)));
        });
        group.bench_function(BenchmarkId::new("tower_http", name), |b| {
            b.iter(|| black_box(round(&mut theirs)));
        });
    }
    group.finish();
}

fn levels(c: &mut Criterion) {
    let size = 16 * 1024;
    let body = json(size);
    let mut group = c.benchmark_group("compression_levels");
    group.throughput(Throughput::Bytes(size as u64));
    for level in 1..=9 {
        let mut service = CompressionLayer::new()
            .level(level)
            .expect("a valid level")
            .layer(responder(body.clone()));
        println!(
            "level {level}: 16 KiB JSON to {:.3} of its size",
            ratio(round(&mut service), size)
        );
        group.bench_function(BenchmarkId::from_parameter(level), |b| {
            b.iter(|| black_box(round(&mut service)));
        });
    }
    group.finish();
    // Where gzip starts to pay: the smallest JSON body it makes smaller.
    for size in [32, 64, 96, 128, 160, 192, 256, 384, 512] {
        let mut service = CompressionLayer::new()
            .min_bytes(0)
            .layer(responder(json(size)));
        println!("{size} B of JSON gzips to {} B", round(&mut service));
    }
}

#[allow(clippy::cast_precision_loss, reason = "a printed ratio of small sizes")]
fn ratio(compressed: usize, original: usize) -> f64 {
    compressed as f64 / original as f64
}

criterion_group!(benches, gzip, levels);
criterion_main!(benches);
