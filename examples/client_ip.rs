//! Shows which key `ClientIp` gives each request, with loopback trusted as a proxy.
//!
//! ```sh
//! cargo run --example client_ip
//! curl http://127.0.0.1:3000/                                  # your peer address
//! curl -H 'X-Forwarded-For: 6.6.6.6, 203.0.113.9' http://127.0.0.1:3000/   # 203.0.113.9
//! ```
//!
//! Set `BIND` to listen elsewhere (default `127.0.0.1:3000`). Stop with Ctrl-C.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use floodgate::key::{ClientIp, KeyExtractor, RequestHead};

fn app(client_ip: ClientIp) -> Router {
    Router::new().route(
        "/",
        get(move |request: Request| async move {
            match client_ip.extract(&RequestHead::new(&request)) {
                Ok(address) => format!("your key: {address}\n"),
                Err(error) => format!("no key: {error}\n"),
            }
        }),
    )
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
    // This demo trusts loopback as a proxy, so curl from the same machine can play one.
    let client_ip = ClientIp::new().trust_proxies(["127.0.0.0/8", "::1"])?;
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app(client_ip).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
