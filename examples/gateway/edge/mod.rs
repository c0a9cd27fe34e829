//! The edge gateway, as a library the binary and the tests share: its settings, the
//! balancer over the replicas, the proxy, and the floodgate layers in front of it.

mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    CONNECTION, CONTENT_TYPE, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use floodgate::key::ClientIp;
use floodgate_cache::{CacheHandle, CacheLayer};
use floodgate_compression::CompressionLayer;
use floodgate_ratelimit::{Policy, Quota, RateLimitLayer};
use floodgate_redis::{Broadcast, Heard};
use floodgate_shed::ConcurrencyLimitLayer;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma};
use tower::{BoxError, Service, ServiceExt};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub(crate) use upstream::{Health, Upstream, UpstreamError};

/// Every knob of the gateway, from flags or the environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "gateway",
    about = "An edge gateway over items_service replicas."
)]
pub(crate) struct Settings {
    /// Address to listen on.
    #[arg(long, env = "GATEWAY_BIND", default_value = "127.0.0.1:8000")]
    pub(crate) bind: SocketAddr,
    /// A replica to balance over (`host:port`); repeat for each.
    #[arg(
        long = "upstream",
        env = "GATEWAY_UPSTREAMS",
        value_delimiter = ',',
        required = true
    )]
    pub(crate) upstreams: Vec<SocketAddr>,
    /// Longest wait for a connection to a replica, in milliseconds.
    #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT_MS", default_value_t = 250)]
    pub(crate) connect_timeout_ms: u64,
    /// Longest wait for a replica's response head, in milliseconds, before a 504.
    #[arg(long, env = "GATEWAY_UPSTREAM_TIMEOUT_MS", default_value_t = 10_000)]
    pub(crate) upstream_timeout_ms: u64,
    /// Longest wait for any replica to be available, in milliseconds, before a 502.
    #[arg(long, env = "GATEWAY_READY_TIMEOUT_MS", default_value_t = 1_000)]
    pub(crate) ready_timeout_ms: u64,
    /// Requests per second each client IP may sustain at the edge.
    #[arg(long, env = "GATEWAY_IP_RATE_PER_SECOND", default_value_t = 200)]
    pub(crate) ip_rate_per_second: u32,
    /// Requests a client IP may send at once at the edge, on top of its rate.
    #[arg(long, env = "GATEWAY_IP_BURST", default_value_t = 400)]
    pub(crate) ip_burst: u32,
    /// Requests in flight through the gateway at once; past it, and a short queue, 503.
    #[arg(long, env = "GATEWAY_MAX_IN_FLIGHT", default_value_t = 256)]
    pub(crate) max_in_flight: usize,
    /// Most bytes the edge cache holds.
    #[arg(long, env = "GATEWAY_CACHE_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub(crate) cache_max_bytes: u64,
    /// The replicas' Redis: the edge cache hears there what their writes made stale.
    #[arg(long, env = "REDIS_URL")]
    pub(crate) redis_url: Option<String>,
}

/// What the proxy handler shares.
#[derive(Clone)]
struct Edge {
    replicas: Buffer<Request, <Balancer as tower::Service<Request>>::Future>,
    upstream_timeout: Duration,
    ready_timeout: Duration,
    /// Every upstream's health: when all are backing off, a request gets its 502 at once
    /// instead of queueing behind the balancer.
    health: Arc<[Arc<Mutex<Health>>]>,
    /// Drops what a write through the gateway made stale at the edge, at once.
    cache: CacheHandle,
    /// Keeps the edge cache listening to the replicas' invalidations while the gateway
    /// runs.
    _invalidations: Option<Broadcast>,
}

impl Edge {
    fn all_down(&self) -> bool {
        let now = tokio::time::Instant::now();
        self.health.iter().all(|health| {
            health
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_down(now)
        })
    }
}

type Balancer = Balance<ServiceList<Vec<PeakEwma<Upstream, CompleteOnResponse>>>, Request>;

/// The channel the items service's replicas publish their invalidations on.
const INVALIDATIONS: &str = "floodgate:items:invalidate";

/// The gateway for `settings`: the floodgate layers in front of a power-of-two-choices
/// balancer (tower's, on peak-EWMA latency) over the replicas.
///
/// From the outside in: a request id and tracing; a per-IP rate limit (the client's
/// address as the gateway sees it: it trusts no forwarding header, so a client cannot
/// choose its key); the edge cache, which hears the replicas' invalidations over Redis;
/// a concurrency limit; gzip for what the replicas did not compress; the proxy.
pub(crate) async fn build(settings: &Settings) -> Result<Router, BoxError> {
    let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
    let replicas: Vec<Upstream> = settings
        .upstreams
        .iter()
        .map(|&address| Upstream::new(address, connect_timeout))
        .collect();
    let health = replicas.iter().map(Upstream::health).collect();
    let upstreams: Vec<_> = replicas
        .into_iter()
        .map(|upstream| {
            PeakEwma::new(
                upstream,
                Duration::from_millis(5),
                // Latency estimates decay over 10 s, so a replica that recovers is trusted
                // again within seconds.
                10e9,
                CompleteOnResponse::default(),
            )
        })
        .collect();
    let balancer: Balancer = Balance::new(ServiceList::new(upstreams));
    let cache = CacheLayer::builder()
        .name("floodgate-edge")
        .max_bytes(settings.cache_max_bytes)
        .build()?;
    let invalidations = match &settings.redis_url {
        None => None,
        Some(url) => {
            let handle = cache.handle();
            let listener = move |heard: Heard<'_>| match heard {
                Heard::Message(prefix) => handle.purge_prefix(prefix),
                _ => handle.purge_prefix("/"),
            };
            Some(Broadcast::connect(url, INVALIDATIONS, listener).await?)
        }
    };
    let edge = Edge {
        replicas: Buffer::new(balancer, 1024),
        upstream_timeout: Duration::from_millis(settings.upstream_timeout_ms),
        ready_timeout: Duration::from_millis(settings.ready_timeout_ms),
        health,
        cache: cache.handle(),
        _invalidations: invalidations,
    };

    let rate_limits = RateLimitLayer::builder()
        .policy(Policy::token_bucket(
            "edge-per-ip",
            ClientIp::new(),
            Quota::per_second(settings.ip_rate_per_second).burst(settings.ip_burst),
        ))
        .build()?;
    let concurrency = ConcurrencyLimitLayer::builder(settings.max_in_flight).build()?;

    Ok(Router::new()
        .fallback(proxy)
        .with_state(edge)
        .layer(CompressionLayer::new())
        .layer(concurrency)
        .layer(cache)
        .layer(rate_limits)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid)))
}

/// Fields that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
];

/// Removes the hop-by-hop fields and those `Connection` names. `Upgrade` goes too: the
/// gateway does not tunnel protocol switches.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| floodgate::header::list(value.as_bytes()))
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named).chain([&UPGRADE]) {
        headers.remove(name);
    }
}

/// Says who the client is to the replicas, in `X-Forwarded-For` and `Forwarded`.
///
/// The gateway is the edge: what a client wrote in those fields is dropped, not appended
/// to. Appending would let a client that happens to sit in a network the replicas trust
/// (every client on loopback, in the cluster script) choose its own key.
fn set_forwarding(headers: &mut HeaderMap, client: IpAddr) {
    let node = match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let fields = [
        (
            HeaderName::from_static("x-forwarded-for"),
            client.to_string(),
        ),
        (
            HeaderName::from_static("forwarded"),
            format!("for={node};proto=http"),
        ),
    ];
    for (name, value) in fields {
        headers.remove(&name);
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
}

/// Methods that change nothing (RFC 9110 §9.2.1).
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The URI prefixes a successful write to `path` makes stale at the edge: the path itself
/// (with everything below and every query of it) and its parent collection, whose
/// listing pages may show what changed: `/items/7` → `/items/7` and `/items`.
fn stale_after_write(path: &str) -> impl Iterator<Item = &str> {
    let parent = path
        .rsplit_once('/')
        .map(|(parent, _)| parent)
        .filter(|parent| !parent.is_empty());
    std::iter::once(path).chain(parent)
}

/// Sends the request to a replica. When no response comes back (the connection failed, or
/// broke before the response, as when a replica dies mid-request), an idempotent request
/// without a body is sent once more, to another replica if the failed one is backing off:
/// sending it twice is safe by definition (RFC 9110 §9.2.2). Other requests get a 502.
/// Safe is not the same as the same answer: a DELETE whose first attempt was carried out
/// before its replica died answers 404 the second time.
async fn proxy(
    State(edge): State<Edge>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    // Judged on the body itself, before any framing field is stripped: a chunked PUT is
    // not bodiless.
    let retryable = idempotent(request.method()) && request.body().is_end_stream();
    let written = (!is_safe(request.method())).then(|| request.uri().path().to_owned());
    strip_hop_by_hop(request.headers_mut());
    set_forwarding(request.headers_mut(), peer.ip().to_canonical());
    let retry = retryable.then(|| {
        let mut copy = Request::new(());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.headers_mut() = request.headers().clone();
        copy
    });
    let mut outcome = forward(edge.clone(), request).await;
    let unanswered = matches!(outcome, Err(Failure::Connect(_) | Failure::Exchange(_)));
    if unanswered && let Some(again) = retry {
        outcome = forward(edge.clone(), again.map(|()| Body::empty())).await;
    }
    match outcome {
        Ok(mut response) => {
            strip_hop_by_hop(response.headers_mut());
            // Read your own writes at the edge at once; other replicas' writes arrive over
            // Redis.
            let status = response.status();
            if let Some(path) = written
                && (status.is_success() || status.is_redirection())
            {
                for prefix in stale_after_write(&path) {
                    edge.cache.purge_prefix(prefix);
                }
            }
            response
        }
        Err(Failure::Connect(detail) | Failure::Exchange(detail)) => {
            problem(StatusCode::BAD_GATEWAY, &detail)
        }
        Err(Failure::NoUpstream) => problem(
            StatusCode::BAD_GATEWAY,
            "no replica is available; try again shortly",
        ),
        Err(Failure::Timeout) => problem(
            StatusCode::GATEWAY_TIMEOUT,
            "the replica did not answer in time",
        ),
    }
}

/// Why a forward failed.
enum Failure {
    Connect(String),
    Exchange(String),
    NoUpstream,
    Timeout,
}

async fn forward(edge: Edge, request: Request) -> Result<Response, Failure> {
    if edge.all_down() {
        return Err(Failure::NoUpstream);
    }
    let mut replicas = edge.replicas;
    let ready = tokio::time::timeout(edge.ready_timeout, replicas.ready()).await;
    let Ok(Ok(replica)) = ready else {
        return Err(Failure::NoUpstream);
    };
    match tokio::time::timeout(edge.upstream_timeout, replica.call(request)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(match error.downcast_ref::<UpstreamError>() {
            Some(UpstreamError::Connect(_)) => Failure::Connect(error.to_string()),
            _ => Failure::Exchange(error.to_string()),
        }),
    }
}

/// An RFC 9457 problem the gateway sends itself.
fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// Serves the gateway on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
