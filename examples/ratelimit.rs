//! The seeds' hybrid rate limit on an axum app: every client 10 requests a second (burst
//! 20) by IP, and writes 10 a minute per API key, as NGINX `limit_req` plus fastapi-limiter
//! would give. `/health` is never limited.
//!
//! ```sh
//! cargo run --example ratelimit --features ratelimit
//! for i in $(seq 25); do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:3000/items; done
//! curl -i -X POST -H 'x-api-key: demo' http://127.0.0.1:3000/items
//! ```
//!
//! Set `BIND` to listen elsewhere (default `127.0.0.1:3000`). Stop with Ctrl-C.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use floodgate::key::{ClientIp, Header};
use floodgate::ratelimit::{Policy, Quota, RateLimitLayer};
use http::{HeaderName, Method};

fn app() -> Result<Router, floodgate::ratelimit::ConfigError> {
    let limits = RateLimitLayer::builder()
        .policy(
            Policy::token_bucket("per-ip", ClientIp::new(), Quota::per_second(10).burst(20))
                .exempt(|request| request.uri().path() == "/health"),
        )
        .policy(
            Policy::sliding_window(
                "writes",
                Header::new(HeaderName::from_static("x-api-key")),
                Quota::per_minute(10),
            )
            .methods([Method::POST, Method::PUT, Method::DELETE]),
        )
        .build()?;
    Ok(Router::new()
        .route(
            "/items",
            get(|| async { "[]" }).post(|| async { "created" }),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(limits))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,floodgate=debug".into()),
        )
        .init();
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app()?.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
