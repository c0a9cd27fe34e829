//! The seeds' NGINX edge in Rust: a gateway that balances over `items_service` replicas
//! (tower's power-of-two-choices over peak-EWMA latency), with passive health checks, one
//! retry of idempotent requests on another replica, and floodgate's per-IP rate limit,
//! response cache, gzip and concurrency limit at the edge.
//!
//! ```sh
//! cargo run --release --example gateway -- \
//!     --upstream 127.0.0.1:8001 --upstream 127.0.0.1:8002 --upstream 127.0.0.1:8003
//! ```
//!
//! `examples/cluster.sh` starts the whole picture: Redis, three replicas sharing one SQLite
//! file and one Redis, and this gateway on port 8000. The replicas must trust the gateway's
//! `X-Forwarded-For` (`--trust-proxy 127.0.0.1/32`); clients' own forwarding headers are
//! never believed here.

mod edge;

use clap::Parser;
use edge::Settings;

fn main() -> Result<(), tower::BoxError> {
    let settings = Settings::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let app = edge::build(&settings).await?;
            let listener = tokio::net::TcpListener::bind(settings.bind).await?;
            tracing::info!(address = %listener.local_addr()?, upstreams = ?settings.upstreams, "gateway listening");
            edge::serve(listener, app, shutdown_signal()).await?;
            Ok(())
        })
}

/// Resolves on Ctrl-C, or on SIGTERM (what `kill` and container runtimes send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
