//! [`Cache`], the service [`CacheLayer`](crate::CacheLayer) makes: the lookup on every
//! request, and what happens when it has to go to the inner service.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use floodgate_core::metrics::{
    CACHE_COALESCED_TOTAL, CACHE_MISSES_TOTAL, CACHE_STALE_TOTAL, LABEL_OUTCOME,
};
use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_RANGE, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LOCATION, PRAGMA, RANGE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use crate::body::{CacheBody, Fill};
use crate::directives::{RequestDirectives, ResponseDirectives};
use crate::entry::{self, Entry, NotStored};
use crate::flight::{self, FlightGuard, Role};
use crate::freshness::{self, Timing, WallClock};
use crate::future::ResponseFuture;
use crate::key::{self, PrimaryKey, Secondary, Vary};
use crate::layer::Shared;
use crate::range::{self, Selected};
use crate::served::Stamp;
use crate::status::{CACHE_STATUS, CacheStatus, Forward};

/// Answers from the cache what it can and sends the rest to the inner service. Clones
/// share the layer's cache.
#[derive(Clone)]
pub struct Cache<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Cache<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("store", &self.shared.store)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    /// Always ready: a hit needs nothing from the inner service, and a request that goes
    /// to it takes a clone and waits for that clone's readiness then, so no capacity is
    /// reserved here that a hit would leave unused.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match lookup(&self.shared, &request) {
            Lookup::Serve(response) => ResponseFuture::ready(response),
            Lookup::ServeAndRefresh(response, stale) => {
                refresh_in_background(&self.shared, self.inner.clone(), &request, &stale);
                ResponseFuture::ready(response)
            }
            Lookup::Forward(plan) => {
                // A clone not yet polled: it asks for readiness only when it is its turn,
                // so a follower waiting for another's miss holds nothing downstream.
                let inner = self.inner.clone();
                ResponseFuture::forward(Box::pin(forward(
                    Arc::clone(&self.shared),
                    inner,
                    request,
                    plan,
                )))
            }
        }
    }
}

/// What the lookup decided.
enum Lookup<B> {
    /// Answer with this (a hit, a 304, a 504 for `only-if-cached`).
    Serve(Response<CacheBody<B>>),
    /// Answer with this stale copy and refresh it in the background.
    ServeAndRefresh(Response<CacheBody<B>>, Arc<Entry>),
    /// Go to the inner service.
    Forward(Plan),
}

/// A request the inner service must answer.
enum Plan {
    /// Not a request the cache answers (another method, a `Range`); if unsafe,
    /// invalidate its URIs on success.
    Pass { invalidates: bool, forward: Forward },
    /// A GET or HEAD the cache could not answer.
    Fill {
        key: PrimaryKey,
        /// The stored variant, stale or not usable for this request.
        stored: Option<Arc<Entry>>,
        forward: Forward,
        directives: RequestDirectives,
    },
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn primary_key<B>(shared: &Shared, request: &Request<B>) -> PrimaryKey {
    let host = shared
        .settings
        .key_by_host
        .then(|| key::request_host(request.uri(), request.headers()))
        .flatten();
    PrimaryKey::new(request.uri(), host)
}

/// The fields of a request that the lookup acts on, found in one pass over its head.
///
/// Most requests carry none of them, and a pass over a request's few fields costs less
/// than the hashed look-up each of the six would take (some 80 instructions apiece).
#[derive(Debug, Clone, Copy, Default)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "one flag per field, or pair of fields, the lookup reads"
)]
struct Carried {
    /// `Range`.
    range: bool,
    /// `Cache-Control` or `Pragma`.
    directives: bool,
    /// `Authorization`.
    authorization: bool,
    /// `If-None-Match` or `If-Modified-Since`.
    conditions: bool,
}

impl Carried {
    /// Which of the fields `headers` has.
    fn of(headers: &HeaderMap) -> Self {
        let mut carried = Self::default();
        for name in headers.keys() {
            if name == RANGE {
                carried.range = true;
            } else if name == CACHE_CONTROL || name == PRAGMA {
                carried.directives = true;
            } else if name == AUTHORIZATION {
                carried.authorization = true;
            } else if name == IF_NONE_MATCH || name == IF_MODIFIED_SINCE {
                carried.conditions = true;
            }
        }
        carried
    }
}

fn lookup<B, R>(shared: &Shared, request: &Request<R>) -> Lookup<B> {
    let method = request.method();
    if !(method == Method::GET || method == Method::HEAD) {
        return Lookup::Forward(Plan::Pass {
            invalidates: !is_safe(method),
            forward: Forward::Method,
        });
    }
    let headers = request.headers();
    let carried = Carried::of(headers);
    let directives = if carried.directives {
        RequestDirectives::parse(headers)
    } else {
        RequestDirectives::default()
    };
    // Keyed by path alone, the lookup borrows the request's path: no key is built.
    let host_key = shared
        .settings
        .key_by_host
        .then(|| primary_key(shared, request));
    let key = host_key
        .as_ref()
        .map_or_else(|| key::path_of(request.uri()), PrimaryKey::as_str);
    let now = shared.clock.now();
    let resource = shared.store.get(key, now);
    let (stored, mut forward) = match &resource {
        None => (None, Forward::UriMiss),
        Some(resource) => {
            let secondary = resource.vary.secondary(headers, &shared.settings.codings);
            match resource.variant(&secondary) {
                Some(entry) => (Some(entry), Forward::Stale),
                None => (None, Forward::VaryMiss),
            }
        }
    };
    // §3.5: a request with credentials is answered only by a response that said it may be.
    let stored = stored.filter(|entry| {
        let allowed =
            !carried.authorization || entry::shareable_with_authorization(&entry.directives);
        if !allowed {
            forward = Forward::Request;
        }
        allowed
    });
    if let Some(entry) = &stored {
        let age = entry.timing.age(now);
        let left = entry.timing.fresh_at(age);
        let fresh = left.is_fresh() && !entry.directives.no_cache;
        if fresh {
            let wanted = !directives.no_cache
                && directives.max_age.is_none_or(|max| age <= max)
                && directives.min_fresh.is_none_or(|min| left.magnitude >= min);
            // A client resuming a download with `If-Match` or `If-Unmodified-Since` wants
            // the origin's 412 if it changed, not a part of another version.
            let resuming = carried.range
                && (headers.contains_key(IF_MATCH) || headers.contains_key(IF_UNMODIFIED_SINCE));
            if wanted && !resuming {
                let status = CacheStatus::hit(left.seconds());
                let response = hit(shared, entry, request, carried.conditions, status, age);
                if carried.range {
                    return Lookup::Serve(ranged(entry, request, response));
                }
                return Lookup::Serve(response);
            }
            forward = Forward::Request;
        } else if !carried.range
            && let Some(stale) =
                stale_hit(shared, entry, request, carried.conditions, &directives, age)
        {
            return stale;
        }
    }
    // Ranges are served only from a fresh stored response, and a partial response is
    // never stored.
    if carried.range {
        return Lookup::Forward(Plan::Pass {
            invalidates: false,
            forward: Forward::Bypass,
        });
    }
    if directives.only_if_cached {
        // §5.2.1.7: nothing suitable is stored.
        return Lookup::Serve(plain(StatusCode::GATEWAY_TIMEOUT));
    }
    Lookup::Forward(Plan::Fill {
        key: match &host_key {
            Some(host_key) => host_key.clone(),
            None => PrimaryKey::from_path(key),
        },
        stored: stored.cloned(),
        forward,
        directives,
    })
}

/// A stale `entry` served anyway, if the client accepts it (`max-stale`, §5.2.1.2) or
/// while it may be refreshed in the background (`stale-while-revalidate`, RFC 5861 §3).
/// Never for a response that forbids serving it stale, nor for a client that wants it
/// validated. `conditions` is false when the request is known to carry none.
fn stale_hit<B, R>(
    shared: &Shared,
    entry: &Arc<Entry>,
    request: &Request<R>,
    conditions: bool,
    directives: &RequestDirectives,
    age: Duration,
) -> Option<Lookup<B>> {
    if !entry.directives.allows_stale() || directives.no_cache {
        return None;
    }
    let left = entry.timing.fresh_at(age);
    let staleness = left.staleness();
    if directives
        .max_stale
        .is_some_and(|max_stale| max_stale.accepts(staleness))
    {
        let status = CacheStatus {
            detail: Some("max-stale"),
            ..CacheStatus::hit(left.seconds())
        };
        let response = hit(shared, entry, request, conditions, status, age);
        return Some(Lookup::Serve(response));
    }
    let window = entry
        .directives
        .stale_while_revalidate
        .unwrap_or(shared.settings.stale_while_revalidate);
    if staleness < window && directives.max_age.is_none() && directives.min_fresh.is_none() {
        metrics::counter!(CACHE_STALE_TOTAL.name, LABEL_OUTCOME => "stale_while_revalidate")
            .increment(1);
        let status = CacheStatus {
            detail: Some("stale-while-revalidate"),
            ..CacheStatus::hit(left.seconds())
        };
        let response = hit(shared, entry, request, conditions, status, age);
        return Some(Lookup::ServeAndRefresh(response, Arc::clone(entry)));
    }
    None
}

/// The response `entry` gives `request`, `age` old: the stored one, or a 304 when the
/// request's conditions say the client has it (RFC 9110 §13.2.2). `conditions` is false
/// when the request is known to carry none.
fn hit<B, R>(
    shared: &Shared,
    entry: &Entry,
    request: &Request<R>,
    conditions: bool,
    status: CacheStatus,
    age: Duration,
) -> Response<CacheBody<B>> {
    shared.hits().increment(1);
    tracing::debug!(target: "floodgate::cache", uri = %request.uri(), "hit");
    // §4: a response reused without validation carries its current age.
    let age_seconds = age.as_secs();
    // After the members of caches nearer the origin, as the origin sent them.
    let values = || {
        let upstream = entry.headers.get_all(&CACHE_STATUS);
        (
            HeaderValue::from(age_seconds),
            status.render(shared.settings.name, upstream),
        )
    };
    if conditions && entry.not_modified_for(request.method(), request.headers()) {
        let mut headers = entry.not_modified_headers();
        let (age_value, cache_status) = values();
        headers.insert(AGE, age_value);
        headers.insert(CACHE_STATUS.clone(), cache_status);
        let mut response = plain(StatusCode::NOT_MODIFIED);
        *response.headers_mut() = headers;
        return response;
    }
    let body = (request.method() != Method::HEAD).then(|| entry.body.clone());
    let stamp = Stamp {
        age_seconds,
        status,
    };
    Response::from_parts(entry.served.head(stamp, values), CacheBody::stored(body))
}

const CONTENT_DIGEST: HeaderName = HeaderName::from_static("content-digest");
const CONTENT_MD5: HeaderName = HeaderName::from_static("content-md5");

/// A fresh hit's answer to a GET with `Range` (RFC 9110 §14): one range of a stored 200 as
/// a 206, or a 416 when no byte of it is in the range; `response`, the whole hit,
/// otherwise (a 304, another status, a `Range` to ignore, an `If-Range` that does not
/// match).
fn ranged<B, R>(
    entry: &Entry,
    request: &Request<R>,
    mut response: Response<CacheBody<B>>,
) -> Response<CacheBody<B>> {
    if request.method() != Method::GET
        || response.status() != StatusCode::OK
        || !range::if_range_allows(request.headers(), &entry.headers)
    {
        return response;
    }
    let Some(value) = request.headers().get(RANGE) else {
        return response;
    };
    let len = entry.body.len();
    match range::select(value.as_bytes(), len) {
        Selected::Whole => response,
        Selected::Part { start, end } => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let headers = response.headers_mut();
            let content_range = format!("bytes {start}-{end}/{len}");
            if let Ok(content_range) = HeaderValue::try_from(content_range) {
                headers.insert(CONTENT_RANGE, content_range);
            }
            headers.insert(CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            // Digests of the whole content do not describe a part (`Repr-Digest`, of the
            // representation, still does).
            headers.remove(CONTENT_DIGEST);
            headers.remove(CONTENT_MD5);
            *response.body_mut() = CacheBody::stored(Some(entry.body.slice(start..=end)));
            response
        }
        Selected::Unsatisfiable => {
            let mut refused = plain(StatusCode::RANGE_NOT_SATISFIABLE);
            let headers = refused.headers_mut();
            if let Ok(content_range) = HeaderValue::try_from(format!("bytes */{len}")) {
                headers.insert(CONTENT_RANGE, content_range);
            }
            if let Some(status) = response.headers().get(&CACHE_STATUS) {
                headers.insert(CACHE_STATUS.clone(), status.clone());
            }
            refused
        }
    }
}

/// A response the cache makes itself, with no body.
fn plain<B>(status: StatusCode) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::stored(None));
    *response.status_mut() = status;
    response
}

/// Conditional fields a client may send, which the cache replaces with its own when it
/// revalidates a stored response.
const CONDITIONALS: [http::HeaderName; 5] = [
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
];

async fn forward<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    request: Request<ReqBody>,
    plan: Plan,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send,
    S::Future: Send,
    ReqBody: Default,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    match plan {
        Plan::Pass {
            invalidates,
            forward,
        } => {
            let uri = request.uri().clone();
            let host = key::request_host(&uri, request.headers()).map(str::to_owned);
            let mut response = inner.oneshot(request).await?;
            let status = response.status();
            // §4.4: a non-error response to an unsafe method invalidates its URIs.
            if invalidates && (status.is_success() || status.is_redirection()) {
                invalidate_after_write(&shared, &uri, host.as_deref(), response.headers());
            }
            CacheStatus::forwarded(forward).append_to(shared.settings.name, response.headers_mut());
            Ok(response.map(CacheBody::inner))
        }
        Plan::Fill {
            key,
            stored,
            forward,
            directives,
        } => fill(shared, inner, request, (key, stored, forward, directives)).await,
    }
}

/// Drops the entries of a written URI and of the same-origin URIs its response names.
fn invalidate_after_write(shared: &Shared, uri: &Uri, host: Option<&str>, headers: &HeaderMap) {
    let key_host = shared.settings.key_by_host.then_some(host).flatten();
    shared.store.invalidate(&PrimaryKey::new(uri, key_host));
    for name in [LOCATION, CONTENT_LOCATION] {
        let Some(target) = headers
            .get(&name)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<Uri>().ok())
        else {
            continue;
        };
        // §4.4: only the same origin. A relative reference is; an absolute one must name
        // the request's host.
        let same_origin = match target.authority() {
            None => true,
            Some(authority) => {
                host.is_some_and(|host| authority.as_str().eq_ignore_ascii_case(host))
            }
        };
        if same_origin && target.path().starts_with('/') {
            shared.store.invalidate(&PrimaryKey::new(&target, key_host));
        }
    }
}

async fn fill<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    request: Request<ReqBody>,
    (key, stored, forward, directives): (
        PrimaryKey,
        Option<Arc<Entry>>,
        Forward,
        RequestDirectives,
    ),
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send,
    S::Future: Send,
    ReqBody: Default,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let head = request.method() == Method::HEAD;
    // The head alone while waiting: the body need not be shared across threads.
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, ());
    let mut collapsed = None;
    let mut guard = None;
    // HEAD only reads the cache, a request that may not be stored has nothing to share,
    // and a URI with nothing stored whose responses could not be would only make its
    // misses wait in turn. (A URI with a stale entry or other variants still coalesces:
    // a refusal for one client, a logged-in one say, does not stop the others sharing.)
    let uncacheable = forward == Forward::UriMiss && shared.store.is_uncacheable(&key);
    if !head && !directives.no_store && !uncacheable {
        match coalesce(&shared, &key, &request, forward).await {
            Coalesced::Lead(leading) => guard = Some(leading),
            Coalesced::Served(response) => return Ok(response),
            Coalesced::Alone => collapsed = Some(false),
        }
    }

    let (mut parts, ()) = request.into_parts();
    let client = Client {
        method: parts.method.clone(),
        headers: parts.headers.clone(),
    };
    // Revalidate a stored response with its own validators (§4.3.1), not the client's.
    let revalidating = stored
        .as_ref()
        .filter(|entry| entry.has_validator() && !head);
    // The request as the client made it, and a service to send it with, in case the
    // origin's 304 turns out to be about another representation.
    let mut unconditional = None;
    if let Some(entry) = revalidating {
        unconditional = Some((inner.clone(), parts.clone()));
        ask_with_validators(&mut parts.headers, entry);
    }
    let started = shared.store.epoch();
    let (result, mut requested, mut received) =
        timed(&shared.clock, inner, Request::from_parts(parts, body)).await;

    let stale_if_error =
        |entry: &&Arc<Entry>| stale_if_error_allows(&shared, entry, &directives, received);
    // A failure, or a 5xx, is answered stale where that is allowed.
    let failed = match &result {
        Err(_) => Some(None),
        Ok(response) if response.status().is_server_error() => Some(Some(response.status())),
        Ok(_) => None,
    };
    if let Some(status) = failed
        && let Some(entry) = stored.as_ref().filter(stale_if_error)
    {
        return Ok(serve_stale_on_error(
            &shared, entry, &client, status, received,
        ));
    }
    let mut response = result?;
    let status = response.status();

    if status == StatusCode::NOT_MODIFIED
        && let Some(entry) = revalidating
    {
        if entry.selected_by(response.headers()) {
            let times = (started, requested, received);
            // A request that says `no-store` refreshes nothing (§5.2.1.5).
            let key = (!directives.no_store).then_some(key);
            let answer = answer_revalidated(&shared, key, entry, response.headers(), client, times);
            // Only now, with the refreshed entry in place, do the followers look.
            drop(guard);
            return Ok(answer);
        }
        // §4.3.4: a 304 naming other validators refreshes nothing, and is no answer to a
        // client that asked without them. Ask once more, as the client did.
        if let Some((retry, parts)) = unconditional {
            let again;
            (again, requested, received) = timed(
                &shared.clock,
                retry,
                Request::from_parts(parts, ReqBody::default()),
            )
            .await;
            response = again?;
        }
    }
    let status = response.status();

    let status_member = CacheStatus {
        collapsed,
        ..CacheStatus::forwarded(forward)
    };
    let admitted = if head {
        Err(None)
    } else if directives.no_store {
        Err(Some(NotStored::RequestNoStore))
    } else {
        let (head, body) = (response.headers(), response.body());
        admit(
            &shared,
            &client.headers,
            status,
            head,
            body,
            (requested, received),
        )
        .map_err(Some)
    };
    Ok(store_as_it_streams(
        &shared,
        key,
        response,
        admitted,
        status_member,
        (started, received),
        guard,
    ))
}

/// The inner service's response on its way to the client: copied into the cache as it
/// streams when `admitted`, passed through otherwise. Either way with its `Cache-Status`.
fn store_as_it_streams<B: Body>(
    shared: &Arc<Shared>,
    key: PrimaryKey,
    response: Response<B>,
    admitted: Result<Admitted, Option<NotStored>>,
    mut status_member: CacheStatus,
    (started, received): (u64, Instant),
    guard: Option<FlightGuard>,
) -> Response<CacheBody<B>> {
    let (parts, body) = response.into_parts();
    let mut response = match admitted {
        Ok(admitted) => {
            status_member.stored = Some(true);
            status_member.ttl = Some(admitted.timing.fresh_for(received).seconds());
            let fill = admitted.into_fill(shared, key, &parts, started, guard);
            Response::from_parts(parts, CacheBody::filling(body, fill))
        }
        Err(reason) => {
            if let Some(reason) = reason {
                if reason.lies_in_the_response() {
                    shared.store.remember_uncacheable(&key);
                }
                status_member.stored = Some(false);
                status_member.detail = Some(reason.detail());
                metrics::counter!(CACHE_MISSES_TOTAL.name, LABEL_OUTCOME => "not_stored")
                    .increment(1);
            }
            Response::from_parts(parts, CacheBody::inner(body))
        }
    };
    status_member.append_to(shared.settings.name, response.headers_mut());
    response
}

/// Replaces a request's conditions with the ones that revalidate `entry` (§4.3.1).
fn ask_with_validators(headers: &mut HeaderMap, entry: &Entry) {
    for name in &CONDITIONALS {
        headers.remove(name);
    }
    for (name, value) in entry.validators() {
        headers.insert(name, value);
    }
}

/// Whether `entry` may be served stale at `now` because the inner service failed
/// (RFC 5861 §4): within its `stale-if-error` window, or the layer's. Not for a client
/// that asked for validation, or for a younger or fresher response than a stale one
/// (`max-age`, `min-fresh`), as for stale-while-revalidate.
fn stale_if_error_allows(
    shared: &Shared,
    entry: &Entry,
    directives: &RequestDirectives,
    now: Instant,
) -> bool {
    if directives.no_cache || directives.max_age.is_some() || directives.min_fresh.is_some() {
        return false;
    }
    let window = entry
        .directives
        .stale_if_error
        .unwrap_or(shared.settings.stale_if_error);
    entry.directives.allows_stale() && entry.timing.fresh_for(now).staleness() < window
}

/// Sends `request` to `inner`; with when it went and when the answer's head came back.
async fn timed<S: Service<Request<B>>, B>(
    clock: &WallClock,
    inner: S,
    request: Request<B>,
) -> (Result<S::Response, S::Error>, Instant, Instant) {
    let requested = clock.now();
    let result = inner.oneshot(request).await;
    (result, requested, clock.now())
}

/// What became of a miss that looked for an identical one in flight.
enum Coalesced<B> {
    /// None was in flight: this one fills the cache, and ends the flight when done.
    Lead(FlightGuard),
    /// One was, and what it stored answers this request too.
    Served(Response<CacheBody<B>>),
    /// One was, but its response could not serve this request (not stored, another
    /// variant, or too slow): go to the inner service alone.
    Alone,
}

/// Leads the fill of `key`, or waits (bounded) for the one in flight and looks again.
async fn coalesce<B, R>(
    shared: &Shared,
    key: &PrimaryKey,
    request: &Request<R>,
    forward: Forward,
) -> Coalesced<B> {
    let flight = match shared.flights.join(key, shared.clock.now()) {
        Role::Lead(guard) => return Coalesced::Lead(guard),
        Role::Follow(flight) => flight,
    };
    let landed = tokio::time::timeout(shared.settings.coalesce_timeout, flight::landed(flight))
        .await
        .is_ok();
    if landed && let Lookup::Serve(mut response) = lookup::<B, _>(shared, request) {
        metrics::counter!(CACHE_COALESCED_TOTAL.name, LABEL_OUTCOME => "served").increment(1);
        mark_collapsed(shared.settings.name, response.headers_mut(), forward);
        return Coalesced::Served(response);
    }
    metrics::counter!(CACHE_COALESCED_TOTAL.name, LABEL_OUTCOME => "forwarded").increment(1);
    Coalesced::Alone
}

/// The answer after the origin said 304 to a revalidation (§4.3.4): the stored response,
/// refreshed and stored again when it still may be, judged against the client's own
/// conditions.
fn answer_revalidated<B>(
    shared: &Shared,
    key: Option<PrimaryKey>,
    entry: &Arc<Entry>,
    not_modified: &HeaderMap,
    client: Client,
    (started, requested, received): (u64, Instant, Instant),
) -> Response<CacheBody<B>> {
    let refreshed = refreshed(
        shared,
        entry,
        not_modified,
        &client.headers,
        (requested, received),
    );
    let stored = refreshed.as_ref().zip(key).map(|(fresh, key)| {
        shared
            .store
            .insert(key, Arc::clone(fresh), started, received)
            .is_ok()
    });
    let served = refreshed.as_ref().unwrap_or(entry);
    let status = CacheStatus {
        forward_status: Some(304),
        stored,
        ttl: Some(served.timing.fresh_for(received).seconds()),
        ..CacheStatus::forwarded(Forward::Stale)
    };
    // The client asked without the cache's validators: answer its own question.
    let request = Request::from_parts(client.into_parts(), ());
    let age = served.timing.age(received);
    hit(shared, served, &request, true, status, age)
}

/// What the client sent, kept while its request is rewritten and forwarded.
struct Client {
    method: Method,
    headers: HeaderMap,
}

impl Client {
    fn into_parts(self) -> http::request::Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method;
        parts.headers = self.headers;
        parts
    }
}

/// Serves `entry` stale because the inner service failed (RFC 5861 §4).
fn serve_stale_on_error<B>(
    shared: &Shared,
    entry: &Entry,
    client: &Client,
    failed_status: Option<StatusCode>,
    now: Instant,
) -> Response<CacheBody<B>> {
    metrics::counter!(CACHE_STALE_TOTAL.name, LABEL_OUTCOME => "stale_if_error").increment(1);
    // It went forward, and what came back was not used (RFC 9211 §2.2).
    let status = CacheStatus {
        forward_status: failed_status.map(|status| status.as_u16()),
        ttl: Some(entry.timing.fresh_for(now).seconds()),
        detail: Some("stale-if-error"),
        ..CacheStatus::forwarded(Forward::Stale)
    };
    let request = Request::from_parts(
        Client {
            method: client.method.clone(),
            headers: client.headers.clone(),
        }
        .into_parts(),
        (),
    );
    hit(shared, entry, &request, true, status, entry.timing.age(now))
}

/// Turns the lookup's `hit` member into a collapsed forward: the request went forward,
/// together with another, and was answered by what that one stored (RFC 9211 §2.2).
fn mark_collapsed(name: &str, headers: &mut HeaderMap, forward: Forward) {
    let hit = format!("{name}; hit");
    if let Some(value) = headers.get_mut(&CACHE_STATUS)
        && let Ok(text) = value.to_str()
        && let Some((upstream, ours)) = text.rsplit_once(hit.as_str())
    {
        let member = format!(
            "{upstream}{name}; fwd={}{ours}; collapsed",
            forward.as_str()
        );
        if let Ok(collapsed) = HeaderValue::try_from(member) {
            *value = collapsed;
        }
    }
}

/// A response the cache may store, with what storing it needs.
struct Admitted {
    secondary: Secondary,
    timing: Timing,
    directives: ResponseDirectives,
    vary: Vary,
    date: std::time::SystemTime,
}

impl Admitted {
    /// The fill that stores the response with head `parts` once its body has arrived.
    fn into_fill(
        self,
        shared: &Arc<Shared>,
        key: PrimaryKey,
        parts: &http::response::Parts,
        started: u64,
        guard: Option<FlightGuard>,
    ) -> Box<Fill> {
        Box::new(Fill {
            shared: Arc::clone(shared),
            key,
            secondary: self.secondary,
            status: parts.status,
            headers: entry::stored_headers(parts.headers.clone(), self.date),
            timing: self.timing,
            directives: self.directives,
            vary: self.vary,
            started,
            buffer: BytesMut::new(),
            guard,
        })
    }
}

/// Whether a response (head and body size) may be stored, and how.
fn admit<B: Body>(
    shared: &Shared,
    request_headers: &HeaderMap,
    status: StatusCode,
    headers: &HeaderMap,
    body: &B,
    times: (Instant, Instant),
) -> Result<Admitted, NotStored> {
    let directives = ResponseDirectives::parse(headers);
    let vary = entry::check_storable(
        request_headers,
        status,
        headers,
        &directives,
        shared.settings.store_set_cookie,
    )?;
    let max = shared.settings.max_entry_bytes as u64;
    let size = body.size_hint();
    if size.lower() > max || size.exact().is_some_and(|exact| exact > max) {
        return Err(NotStored::TooLarge);
    }
    let date = freshness::date(headers).unwrap_or_else(|| shared.clock.at(times.1));
    let timing = Timing::new(
        status,
        headers,
        &directives,
        date,
        times,
        &shared.clock,
        shared.settings.default_ttl,
    )
    .ok_or(NotStored::NoFreshness)?;
    // Stale on arrival and nothing to revalidate it by: it could never be reused. (A
    // generated ETag does not count: the origin does not know it.)
    let origin_validator = headers.contains_key(http::header::ETAG)
        || headers.contains_key(http::header::LAST_MODIFIED);
    if timing.lifetime.is_zero() && !origin_validator {
        return Err(NotStored::NoValidator);
    }
    Ok(Admitted {
        secondary: vary.secondary(request_headers, &shared.settings.codings),
        timing,
        directives,
        vary,
        date,
    })
}

/// `entry` refreshed by a 304 with `not_modified` headers; `None` when the merged head may
/// not be stored any more (the 304 said `no-store`, for one).
fn refreshed(
    shared: &Shared,
    entry: &Entry,
    not_modified: &HeaderMap,
    request_headers: &HeaderMap,
    times: (Instant, Instant),
) -> Option<Arc<Entry>> {
    let mut merged = entry.merged_headers(not_modified);
    // The old `Age` and `Date` describe the old response; the 304's replace them, or the
    // time it arrived does (§4.3.4).
    if !not_modified.contains_key(http::header::DATE) {
        merged.remove(http::header::DATE);
    }
    let directives = ResponseDirectives::parse(&merged);
    let vary = entry::check_storable(
        request_headers,
        entry.status,
        &merged,
        &directives,
        shared.settings.store_set_cookie,
    )
    .ok()?;
    let date = freshness::date(&merged).unwrap_or_else(|| shared.clock.at(times.1));
    let timing = Timing::new(
        entry.status,
        &merged,
        &directives,
        date,
        times,
        &shared.clock,
        shared.settings.default_ttl,
    )?;
    let headers = entry::stored_headers(merged, date);
    Some(Arc::new(Entry::new(
        entry.secondary.clone(),
        entry.status,
        headers,
        entry.body.clone(),
        timing,
        (directives, vary),
        shared.settings.generate_etag,
    )))
}

/// Starts one background revalidation of `stale` (RFC 5861 §3), unless one is in flight
/// or there is no runtime to run it on.
///
/// The request is built from the stored response's `Vary` fields of the request that
/// triggered it, never its credentials: a response that varies on `Authorization` or
/// `Cookie` is not refreshed in the background.
fn refresh_in_background<S, ReqBody, ResBody, R>(
    shared: &Arc<Shared>,
    inner: S,
    trigger: &Request<R>,
    stale: &Arc<Entry>,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let fields = stale.vary.fields();
    if fields
        .iter()
        .any(|field| field == AUTHORIZATION || field == http::header::COOKIE)
    {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let key = primary_key(shared, trigger);
    let Role::Lead(guard) = shared.flights.join(&key, shared.clock.now()) else {
        return;
    };
    let mut request = Request::new(ReqBody::default());
    *request.uri_mut() = trigger.uri().clone();
    for field in fields.iter().chain([&http::header::HOST]) {
        for value in trigger.headers().get_all(field) {
            request.headers_mut().append(field.clone(), value.clone());
        }
    }
    let request_headers = request.headers().clone();
    for (name, value) in stale.validators() {
        request.headers_mut().insert(name, value);
    }
    let shared = Arc::clone(shared);
    let stale = Arc::clone(stale);
    let timeout = shared.settings.revalidation_timeout;
    runtime.spawn(async move {
        let refresh = revalidate(&shared, inner, request, &stale, key, request_headers, guard);
        if tokio::time::timeout(timeout, refresh).await.is_err() {
            tracing::debug!(target: "floodgate::cache", "background revalidation timed out");
        }
    });
}

/// The background revalidation: a 304 refreshes the entry, a storable 200 replaces it,
/// anything else leaves it to expire.
async fn revalidate<S, ReqBody, ResBody>(
    shared: &Arc<Shared>,
    inner: S,
    request: Request<ReqBody>,
    stale: &Entry,
    key: PrimaryKey,
    request_headers: HeaderMap,
    guard: FlightGuard,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send,
    ResBody: Body<Data = Bytes> + Send,
{
    let started = shared.store.epoch();
    let requested = shared.clock.now();
    let Ok(response) = inner.oneshot(request).await else {
        return;
    };
    let received = shared.clock.now();
    let times = (requested, received);
    if response.status() == StatusCode::NOT_MODIFIED {
        if let Some(entry) = refreshed(shared, stale, response.headers(), &request_headers, times) {
            let _ = shared.store.insert(key, entry, started, received);
        }
        return;
    }
    let (parts, body) = response.into_parts();
    let Ok(admitted) = admit(
        shared,
        &request_headers,
        parts.status,
        &parts.headers,
        &body,
        times,
    ) else {
        return;
    };
    // Drained as a client would read it: the fill stores it at the end, within the size
    // limit, and ends the flight.
    let fill = admitted.into_fill(shared, key, &parts, started, Some(guard));
    let mut body = std::pin::pin!(CacheBody::filling(body, fill));
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if frame.is_err() {
            return;
        }
    }
}
