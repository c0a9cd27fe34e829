//! The items service, as a library the binary and the tests share: its settings, the
//! composition of every layer around the API, and serving with graceful shutdown.

mod api;
mod problem;
mod storage;
mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use floodgate::key::{ClientIp, Header, IpCidr, OnKeyError};
use floodgate_cache::CacheLayer;
use floodgate_compression::{CompressionLayer, RequestDecompressionLayer};
use floodgate_ratelimit::{OnStoreError, Policy, Quota, RateLimitLayer};
use floodgate_redis::{Broadcast, Heard, RedisStore};
use floodgate_shed::{ConcurrencyLimitLayer, LoadShedLayer};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub(crate) use storage::Store;
pub(crate) use telemetry::Telemetry;

/// Every knob of the service, from flags or the environment. The defaults serve a laptop.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "items_service",
    about = "The items API behind every floodgate layer."
)]
pub(crate) struct Settings {
    /// Address to listen on.
    #[arg(long, env = "BIND", default_value = "127.0.0.1:8000")]
    pub(crate) bind: SocketAddr,
    /// Database URL: a SQLite file (created if missing) or `sqlite::memory:`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://items.db")]
    pub(crate) database_url: String,
    /// Database connections in the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 8)]
    pub(crate) database_max_connections: u32,
    /// Tokio worker threads (the answer to `gunicorn -w`); default: one per core.
    #[arg(long, env = "WORKERS")]
    pub(crate) workers: Option<usize>,
    /// Requests per second each client IP may sustain.
    #[arg(long, env = "IP_RATE_PER_SECOND", default_value_t = 100)]
    pub(crate) ip_rate_per_second: u32,
    /// Requests a client IP may send at once on top of its rate.
    #[arg(long, env = "IP_BURST", default_value_t = 200)]
    pub(crate) ip_burst: u32,
    /// Proxy networks whose `X-Forwarded-For` is believed (CIDR, repeatable), such as the
    /// gateway in front of the replicas.
    #[arg(long = "trust-proxy", env = "TRUST_PROXIES", value_delimiter = ',')]
    pub(crate) trust_proxies: Vec<IpCidr>,
    /// Writes (POST, PUT, DELETE) a minute per API key (`x-api-key`); writes without a key
    /// are limited by IP only.
    #[arg(long, env = "WRITES_PER_MINUTE_PER_KEY", default_value_t = 60)]
    pub(crate) writes_per_minute_per_key: u32,
    /// Share this Redis (`redis://host:port`) with the other replicas: the rate limits are
    /// kept there instead of in this process, and every write tells the other replicas'
    /// caches what it made stale.
    #[arg(long, env = "REDIS_URL")]
    pub(crate) redis_url: Option<String>,
    /// Longest wait for Redis's decision, in milliseconds; past it the request is admitted
    /// (or refused, with `--redis-fail-closed`).
    #[arg(long, env = "REDIS_DEADLINE_MS", default_value_t = 5)]
    pub(crate) redis_deadline_ms: u64,
    /// Refuse requests with 503 while Redis cannot decide, instead of admitting them.
    #[arg(long, env = "REDIS_FAIL_CLOSED")]
    pub(crate) redis_fail_closed: bool,
    /// Refuse new requests at once (503) while this many are in flight below the cache.
    #[arg(long, env = "SHED_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub(crate) shed_max_in_flight: usize,
    /// Refuse new requests at once (503) while, for 100 ms, every request took longer than
    /// this many milliseconds to get its response head: a standing queue.
    #[arg(long, env = "SHED_SOJOURN_MS", default_value_t = 100)]
    pub(crate) shed_sojourn_ms: u64,
    /// Requests handled at once; more wait in the queue.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 64)]
    pub(crate) max_in_flight: usize,
    /// Requests that may wait for a slot; more get 503 at once.
    #[arg(long, env = "MAX_QUEUE", default_value_t = 128)]
    pub(crate) max_queue: usize,
    /// Longest wait for a slot, in milliseconds, before a 503.
    #[arg(long, env = "MAX_QUEUE_MS", default_value_t = 500)]
    pub(crate) max_queue_ms: u64,
    /// Longest time a request may take, in milliseconds, before a 503.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub(crate) request_timeout_ms: u64,
    /// How long this service's cache keeps a read, in seconds (`s-maxage`); every write
    /// drops what it stored at once.
    #[arg(long, env = "CACHE_TTL_SECS", default_value_t = 30)]
    pub(crate) cache_ttl_secs: u32,
    /// Most bytes the response cache holds.
    #[arg(long, env = "CACHE_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub(crate) cache_max_bytes: u64,
    /// Largest request body, in bytes, before and after decompression.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub(crate) max_body_bytes: usize,
    /// gzip level of responses, 1 (fast) to 9 (small).
    #[arg(long, env = "GZIP_LEVEL", default_value_t = 2)]
    pub(crate) gzip_level: u32,
    /// How long in-flight requests may finish after Ctrl-C or SIGTERM, in milliseconds.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub(crate) shutdown_grace_ms: u64,
}

/// An error to report and stop on: a setting a layer refused, a database that cannot open.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the replicas of one service share through Redis.
#[derive(Debug, Clone)]
struct Replicas {
    limits: RedisStore,
    invalidations: Broadcast,
}

/// The channel on which replicas tell each other which cached paths a write made stale.
const INVALIDATIONS: &str = "floodgate:items:invalidate";

/// The service for `settings`: connects to Redis first when `--redis-url` is given.
pub(crate) async fn build(
    settings: &Settings,
    store: Store,
    telemetry: Telemetry,
) -> Result<Router, BoxError> {
    let cache = CacheLayer::builder()
        .max_bytes(settings.cache_max_bytes)
        .build()
        .map_err(|error| format!("cache settings: {error}"))?;
    let replicas = match &settings.redis_url {
        None => None,
        Some(url) => {
            let handle = cache.handle();
            let invalidations = Broadcast::connect(url, INVALIDATIONS, move |heard| match heard {
                Heard::Message(prefix) => handle.purge_prefix(prefix),
                // Whatever was published while this replica was away is unknown.
                _ => handle.purge_prefix("/"),
            })
            .await?;
            Some(Replicas {
                limits: RedisStore::connect(url).await?,
                invalidations,
            })
        }
    };
    app(settings, store, telemetry, cache, replicas)
}

/// The whole service: the API behind every layer, with `/health` and `/metrics` beside it.
///
/// Read from the outside in, a request meets:
/// 1. a request id (`x-request-id`, made unless the client sent one, echoed back) and a
///    tracing span that carries it;
/// 2. request metrics, panic catching (500 problem) and a request timeout (503);
/// 3. the rate limits: per client IP (token bucket), and per API key on writes (sliding
///    window): the seeds' NGINX `limit_req` plus fastapi-limiter; in Redis with the other
///    `replicas`, so that they enforce one limit together;
/// 4. the response cache: a hit is answered here, without a slot of the concurrency
///    limit; reads say `s-maxage`, and every write drops what this replica's cache and
///    (through Redis) the other replicas' caches hold under `/items`;
/// 5. load shedding (503 at once past an in-flight bound or on a standing queue), then the
///    concurrency limit with its bounded queue (503 past it);
/// 6. gzip of responses (so the cache stores each page compressed, once), and decoding of
///    compressed uploads, both with size limits;
/// 7. the body limit, then the handlers and the database.
///
/// `/health` and `/metrics` sit outside the limits and the cache (steps 3–7), so an
/// overloaded or limited service still answers its probes.
fn app(
    settings: &Settings,
    store: Store,
    telemetry: Telemetry,
    cache: CacheLayer,
    replicas: Option<Replicas>,
) -> Result<Router, BoxError> {
    let client_ip = ClientIp::new();
    let client_ip = settings
        .trust_proxies
        .iter()
        .fold(client_ip, |client_ip, network| {
            client_ip.trust_proxy(*network)
        });
    let mut rate_limits = RateLimitLayer::builder();
    if let Some(replicas) = &replicas {
        rate_limits = rate_limits
            .store(replicas.limits.clone())
            .store_deadline(Duration::from_millis(settings.redis_deadline_ms))
            .on_store_error(if settings.redis_fail_closed {
                OnStoreError::FailClosed
            } else {
                OnStoreError::FailOpen
            });
    }
    let rate_limits = rate_limits
        .policy(Policy::token_bucket(
            "per-ip",
            client_ip,
            Quota::per_second(settings.ip_rate_per_second).burst(settings.ip_burst),
        ))
        .policy(
            Policy::sliding_window(
                "writes-per-key",
                Header::new(HeaderName::from_static("x-api-key")),
                Quota::per_minute(settings.writes_per_minute_per_key),
            )
            .methods([Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .on_key_error(OnKeyError::Unlimited),
        )
        .build()
        .map_err(|error| format!("rate limit settings: {error}"))?;
    let sojourn = Duration::from_millis(settings.shed_sojourn_ms);
    let shedding = LoadShedLayer::builder()
        .max_in_flight(settings.shed_max_in_flight)
        .sojourn_target(sojourn)
        // CoDel's 100 ms, or the target if longer: the interval must hold one.
        .sojourn_interval(sojourn.max(Duration::from_millis(100)))
        .build()
        .map_err(|error| format!("load shedding settings: {error}"))?;
    let concurrency = ConcurrencyLimitLayer::builder(settings.max_in_flight)
        .max_queue(settings.max_queue)
        .max_queue_time(Duration::from_millis(settings.max_queue_ms))
        .build()
        .map_err(|error| format!("concurrency limit settings: {error}"))?;
    let app = api::App {
        store: store.clone(),
        cache: cache.handle(),
        invalidations: replicas.map(|replicas| replicas.invalidations),
        cache_control: HeaderValue::try_from(format!("s-maxage={}", settings.cache_ttl_secs))?,
    };
    let compression = CompressionLayer::new()
        .level(settings.gzip_level)
        .map_err(|error| format!("--gzip-level: {error}"))?;
    let decompression = RequestDecompressionLayer::new()
        .max_decoded_bytes(settings.max_body_bytes)
        .max_encoded_bytes(settings.max_body_bytes);

    let api = Router::new()
        .route("/items", get(api::list).post(api::create))
        .route(
            "/items/{id}",
            get(api::get).put(api::replace).delete(api::delete),
        )
        .fallback(api::no_route)
        .with_state(app)
        // Layers added later wrap the ones before: the last `.layer` is the outermost.
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(decompression)
        .layer(compression)
        .layer(concurrency)
        .layer(shedding)
        .layer(cache)
        .layer(rate_limits);

    let probes = Router::new()
        .route("/health", get(health))
        .with_state(store)
        .route("/metrics", get(move || async move { telemetry.render() }));

    Ok(probes
        .merge(api)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(settings.request_timeout_ms),
        ))
        .layer(CatchPanicLayer::custom(telemetry::panic_response))
        .layer(axum::middleware::from_fn(telemetry::record))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(telemetry::span_for))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid)))
}

/// `GET /health`: 200 when the database answers, 503 when it does not.
async fn health(State(store): State<Store>) -> Response {
    match store.ping().await {
        Ok(()) => "ok".into_response(),
        Err(error) => {
            tracing::warn!(%error, "health check: the database does not answer");
            problem::problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "The database does not answer.".to_owned(),
                &[],
            )
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and lets the
/// requests in flight finish for up to `grace`. Returns when every connection is closed or
/// the grace period is over, whichever comes first.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (started, stopping) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        let _ = started.send(());
    });
    let deadline = async move {
        // Never fires unless shutdown began (a dropped sender means the server ended).
        if stopping.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!(?grace, "shutdown grace period over: dropping the requests still in flight");
            Ok(())
        }
    }
}
