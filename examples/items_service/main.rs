//! The items service: the seeds' FastAPI items API (PostgreSQL, Gunicorn workers, NGINX,
//! Redis) as one Rust process, with every floodgate layer in front of a real database.
//!
//! ```sh
//! cargo run --release --example items_service            # http://127.0.0.1:8000, ./items.db
//! curl -i -X POST -H 'content-type: application/json' \
//!     -d '{"name":"x","description":"y","price":1.5}' http://127.0.0.1:8000/items
//! curl -i 'http://127.0.0.1:8000/items?limit=10&offset=0'
//! cargo run --release --example items_service -- --help  # every knob, with its variable
//! ```
//!
//! - `GET /items?limit=&offset=` (limit 1–100, default 20): a page and the total;
//!   `GET|PUT|DELETE /items/{id}`; `POST /items` (201 with `Location`).
//! - `GET /health` (never limited or shed) and `GET /metrics` (Prometheus text).
//! - Errors are RFC 9457 problem+json: 400 bad JSON or query, 404, 413 body too large,
//!   415 not JSON, 422 invalid fields (each named), 429 rate limited, 503 overloaded.
//!
//! Ctrl-C or SIGTERM stops accepting, lets requests in flight finish (10 s by default),
//! then closes the database.

mod service;

use std::time::Duration;

use clap::Parser;
use service::{Settings, Store, Telemetry};

fn main() -> Result<(), service::BoxError> {
    let settings = Settings::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=info,floodgate=info".into()),
        )
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = settings.workers {
        runtime.worker_threads(workers);
    }
    runtime.enable_all().build()?.block_on(run(settings))
}

async fn run(settings: Settings) -> Result<(), service::BoxError> {
    let telemetry = Telemetry::install()?;
    let store = Store::open(&settings.database_url, settings.database_max_connections).await?;
    let app = service::build(&settings, store.clone(), telemetry).await?;
    let listener = tokio::net::TcpListener::bind(settings.bind).await?;
    tracing::info!(
        address = %listener.local_addr()?,
        database = settings.database_url,
        rate_limits = settings.redis_url.as_deref().unwrap_or("in memory"),
        "items service listening"
    );
    service::serve(
        listener,
        app,
        shutdown_signal(),
        Duration::from_millis(settings.shutdown_grace_ms),
    )
    .await?;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C, or on SIGTERM (what `kill` and container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
