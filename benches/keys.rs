//! Cost of reading a request's key: what every limited request pays before any limit.
//!
//! `client_ip/peer` is a direct client; `client_ip/two_proxies` walks an `X-Forwarded-For`
//! chain through two trusted proxies past a forged entry; `header` reads an API key.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use floodgate::key::{ClientIp, Header, KeyExtractor, RequestHead};
use http::{HeaderName, Request};

fn request(peer: [u8; 4], headers: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::get("/items");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut request = builder.body(()).expect("valid request");
    request
        .extensions_mut()
        .insert(SocketAddr::from((peer, 40_000)));
    request
}

fn keys(c: &mut Criterion) {
    let client_ip = ClientIp::new()
        .trust_proxies(["10.0.0.0/8"])
        .expect("valid network");
    let api_key = Header::new(HeaderName::from_static("x-api-key"));
    let direct = request([203, 0, 113, 9], &[]);
    let proxied = request(
        [10, 0, 0, 2],
        &[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.3")],
    );
    let with_api_key = request([203, 0, 113, 9], &[("x-api-key", "k-0123456789abcdef")]);

    let mut group = c.benchmark_group("key_extraction");
    group.throughput(Throughput::Elements(1));
    group.bench_function("client_ip/peer", |b| {
        b.iter(|| client_ip.extract(&RequestHead::new(black_box(&direct))));
    });
    group.bench_function("client_ip/two_proxies", |b| {
        b.iter(|| client_ip.extract(&RequestHead::new(black_box(&proxied))));
    });
    group.bench_function("header", |b| {
        b.iter(|| api_key.extract(&RequestHead::new(black_box(&with_api_key))));
    });
    group.finish();
}

criterion_group!(benches, keys);
criterion_main!(benches);
