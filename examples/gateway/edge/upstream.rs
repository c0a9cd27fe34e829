//! One upstream replica as a tower service, with passive health: a replica that refuses
//! connections, or breaks them before answering, is left alone for a back-off, then tried
//! again by the next request.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, Sleep};
use tower::Service;

/// The first back-off after a failed connection; each failure in a row doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest back-off: a replica that comes back is used again within this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a request to an upstream failed.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// No connection could be made: the request was never sent, so it may be retried
    /// elsewhere.
    Connect(hyper_util::client::legacy::Error),
    /// The request was sent, and the exchange failed after.
    Exchange(hyper_util::client::legacy::Error),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(error) => write!(f, "cannot connect: {error}"),
            Self::Exchange(error) => write!(f, "the exchange failed: {error}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// When an upstream may be tried again, and how long the next back-off is.
#[derive(Debug)]
pub(crate) struct Health {
    down_until: Option<Instant>,
    backoff: Duration,
}

impl Health {
    /// Whether the upstream is backing off at `now`.
    pub(crate) fn is_down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|until| until > now)
    }

    /// Starts (or lengthens) a back-off after a failure.
    fn failed(&mut self, address: SocketAddr, error: &dyn std::error::Error) {
        tracing::warn!(%address, backoff = ?self.backoff, %error, "upstream failed; backing off");
        self.down_until = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// A replica at one address, reached through a pooled HTTP/1.1 client.
///
/// While it is backing off, `poll_ready` is pending (with a timer to wake it), so the
/// balancer picks among the others; then it is ready again, and the next request probes
/// it. A success resets the back-off.
pub(crate) struct Upstream {
    address: SocketAddr,
    client: Client<HttpConnector, Body>,
    health: Arc<Mutex<Health>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Upstream {
    /// Its health, shared with the gateway's check that some upstream is up.
    pub(crate) fn health(&self) -> Arc<Mutex<Health>> {
        Arc::clone(&self.health)
    }

    pub(crate) fn new(address: SocketAddr, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            address,
            client,
            health: Arc::new(Mutex::new(Health {
                down_until: None,
                backoff: FIRST_BACKOFF,
            })),
            sleep: None,
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("address", &self.address)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        let down_until = self
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .down_until;
        match down_until {
            Some(until) if until > Instant::now() => {
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                if sleep.deadline() != until {
                    sleep.as_mut().reset(until);
                }
                // Pending until the back-off ends; then the next request probes it.
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => Poll::Ready(Ok(())),
                }
            }
            _ => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str());
        if let Ok(uri) = format!("http://{}{path}", self.address).parse::<Uri>() {
            *request.uri_mut() = uri;
        }
        let health = Arc::clone(&self.health);
        let address = self.address;
        let sent = self.client.request(request);
        Box::pin(async move {
            match sent.await {
                Ok(response) => {
                    let mut health = health.lock().unwrap_or_else(PoisonError::into_inner);
                    if health.down_until.take().is_some() {
                        tracing::info!(%address, "upstream is back");
                    }
                    health.backoff = FIRST_BACKOFF;
                    Ok(response.map(Body::new))
                }
                // A replica that breaks connections before answering is as unusable as one
                // that refuses them (and, failing fast, would look attractive to peak-EWMA).
                Err(error) => {
                    let mut health = health.lock().unwrap_or_else(PoisonError::into_inner);
                    health.failed(address, &error);
                    if error.is_connect() {
                        Err(UpstreamError::Connect(error))
                    } else {
                        Err(UpstreamError::Exchange(error))
                    }
                }
            }
        })
    }
}
