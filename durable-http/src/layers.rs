//! The host's cross-cutting request handling as tower layers, public so that an
//! application serving its own routes next to the host (or mounting the host in its own
//! axum or hyper server) gets the same behaviour:
//!
//! - [`MetricsLayer`]: counts requests by route pattern, method and status and times
//!   them, in the host's `/metrics` (`durable_http_requests_total`,
//!   `durable_http_request_duration_seconds`);
//! - [`TraceLayer`]: a `http_request` span per request, parented by the caller's W3C
//!   `traceparent`, which instances started inside it continue; a panic in the inner
//!   service answers 500 `{"error": ...}`;
//! - [`ManagementAuthLayer`]: the management key, in `x-functions-key`,
//!   `Authorization: Bearer` or the `code` query parameter, else 401;
//! - [`BodyLimitLayer`]: the body limit (413), the body read timeout (408) and the cap
//!   on bodies read at once (503); the inner service gets the body read in full;
//! - [`TimeoutLayer`]: the time a handler has to answer once the body is read, else 504
//!   `{"error": "the request was not answered within 60 s"}`; a long poll whose wait the
//!   request names (a [`LongPoll`] extension) gets that wait on top.
//!
//! The layers learn which route a request is for from its [`MatchedRoute`] extension:
//! the host's router adds it before the layers run; an application adds it in its own
//! routing (or a layer of its own) so that metrics count by pattern, never by raw path,
//! and so that the key is asked for only on the routes that need it. The host composes
//! them, outermost first, as metrics, trace, auth, body limit, timeout.
//!
//! Every error these layers answer is the host's JSON error body `{"error": "..."}`; the
//! response body type only needs `From<Bytes>` (hyper's `Full<Bytes>`, axum's `Body`).
//!
//! ```no_run
//! use durable_http::layers::{ManagementAuthLayer, TraceLayer};
//! use tower_layer::Layer;
//! # fn wrap<S>(app: &durable_http::App, inner: S) {
//! let service = app.metrics_layer().layer(
//!     TraceLayer::new().layer(ManagementAuthLayer::new("a-long-management-key").layer(
//!         app.body_limit_layer().layer(app.timeout_layer().layer(inner)),
//!     )),
//! );
//! # let _ = service;
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::metrics::HostMetrics;
use crate::request::{into_response_body, parse_query, HttpError, HttpResponse};

/// The future every layer's service returns.
pub type LayerFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

/// The route a request was matched to, as a request extension. Metrics label requests
/// with its pattern; [`ManagementAuthLayer`] asks for the key when it is `keyed` (or when
/// a request carries no `MatchedRoute` at all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchedRoute {
    /// The route's pattern (`/api/orders/{id}`), never the raw path; `unmatched` when no
    /// route matched.
    pub pattern: Arc<str>,
    /// Whether the route needs the management key.
    pub keyed: bool,
}

impl MatchedRoute {
    /// The route of a pattern, and whether it needs the management key.
    pub fn new(pattern: impl Into<Arc<str>>, keyed: bool) -> Self {
        MatchedRoute {
            pattern: pattern.into(),
            keyed,
        }
    }

    /// The label of requests that matched no route.
    pub const UNMATCHED: &'static str = "unmatched";
}

/// The pattern a request's [`MatchedRoute`] names, else `unmatched`.
fn pattern_of<B>(req: &Request<B>) -> Arc<str> {
    req.extensions()
        .get::<MatchedRoute>()
        .map_or_else(|| Arc::from(MatchedRoute::UNMATCHED), |r| r.pattern.clone())
}

/// Takes the ready service out of `slot`, leaving a clone in its place (the usual way to
/// call a cloned tower service from a `'static` future).
fn take<S: Clone>(slot: &mut S) -> S {
    let clone = slot.clone();
    std::mem::replace(slot, clone)
}

fn answer<ResBody, E>(r: HttpResponse) -> LayerFuture<Response<ResBody>, E>
where
    ResBody: From<Bytes> + Send + 'static,
    E: Send + 'static,
{
    let resp = into_response_body(r);
    Box::pin(async move { Ok(resp) })
}

// ---------------------------------------------------------------------------------------
// Management key

/// Asks for the management key: in `x-functions-key`, as `Authorization: Bearer <key>`
/// (what a Prometheus scrape configuration sends) or in the `code` query parameter.
/// Requests without it answer 401 `{"error": "missing or invalid key"}`. Requests whose
/// [`MatchedRoute`] is not `keyed` pass without one; requests with no `MatchedRoute`
/// need it. The key is compared in time that does not depend on where it differs.
#[derive(Clone)]
pub struct ManagementAuthLayer {
    key: Arc<str>,
}

impl std::fmt::Debug for ManagementAuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementAuthLayer")
            .finish_non_exhaustive()
    }
}

impl ManagementAuthLayer {
    /// A layer asking for `key`.
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        ManagementAuthLayer { key: key.into() }
    }
}

impl<S> Layer<S> for ManagementAuthLayer {
    type Service = ManagementAuth<S>;

    fn layer(&self, inner: S) -> ManagementAuth<S> {
        ManagementAuth {
            inner,
            key: self.key.clone(),
        }
    }
}

/// The service of [`ManagementAuthLayer`].
#[derive(Clone)]
pub struct ManagementAuth<S> {
    inner: S,
    key: Arc<str>,
}

impl<S> std::fmt::Debug for ManagementAuth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementAuth").finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for ManagementAuth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = LayerFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let keyed = req
            .extensions()
            .get::<MatchedRoute>()
            .is_none_or(|r| r.keyed);
        if keyed && !key_matches(&self.key, req.headers(), req.uri().query()) {
            return answer(
                HttpError::new(StatusCode::UNAUTHORIZED, "missing or invalid key").into_response(),
            );
        }
        Box::pin(take(&mut self.inner).call(req))
    }
}

/// True when the request carries `key`: in `x-functions-key`, as `Authorization: Bearer
/// <key>`, or in the `code` query parameter.
fn key_matches(key: &str, headers: &http::HeaderMap, query: Option<&str>) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let given = header("x-functions-key")
        .map(str::to_string)
        .or_else(|| {
            header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|k| k.trim().to_string())
        })
        .or_else(|| {
            parse_query(query.unwrap_or(""))
                .into_iter()
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v)
        });
    given.is_some_and(|k| constant_time_eq(&k, key))
}

/// Compares two strings in time that depends only on their lengths.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

// ---------------------------------------------------------------------------------------
// Body limit

/// Reads the request body in full before the inner service sees it (as a
/// `Full<Bytes>`), within a size limit, a read timeout and a cap on bodies read at once:
/// a `Content-Length` or a body over the limit answers 413, a body that does not arrive
/// in time 408 (with `Connection: close`), a request that finds every read slot taken
/// 503 with `Retry-After: 1`, an unreadable body 400; all with a JSON error body.
#[derive(Clone, Debug)]
pub struct BodyLimitLayer {
    limit: usize,
    read_timeout: Duration,
    slots: Arc<tokio::sync::Semaphore>,
}

impl BodyLimitLayer {
    /// A limit of `limit` bytes, with the host's default read timeout
    /// ([`DEFAULT_BODY_READ_TIMEOUT`](crate::DEFAULT_BODY_READ_TIMEOUT)) and cap on
    /// bodies read at once ([`DEFAULT_MAX_CONCURRENT_BODIES`](crate::DEFAULT_MAX_CONCURRENT_BODIES)).
    pub fn new(limit: usize) -> Self {
        BodyLimitLayer {
            limit,
            read_timeout: crate::DEFAULT_BODY_READ_TIMEOUT,
            slots: Arc::new(tokio::sync::Semaphore::new(
                crate::DEFAULT_MAX_CONCURRENT_BODIES,
            )),
        }
    }

    /// How long a body may take to arrive.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// How many bodies this layer (and its clones) reads at once.
    pub fn max_concurrent(mut self, bodies: usize) -> Self {
        self.slots = Arc::new(tokio::sync::Semaphore::new(bodies));
        self
    }

    pub(crate) fn with_slots(
        limit: usize,
        read_timeout: Duration,
        slots: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        BodyLimitLayer {
            limit,
            read_timeout,
            slots,
        }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit {
            inner,
            config: self.clone(),
        }
    }
}

/// The service of [`BodyLimitLayer`].
#[derive(Clone, Debug)]
pub struct BodyLimit<S> {
    inner: S,
    config: BodyLimitLayer,
}

impl<S, B, ResBody> Service<Request<B>> for BodyLimit<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = LayerFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = self.config.limit;
        if let Some(len) = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
        {
            if len > limit {
                return answer(too_large(len, limit).into_response());
            }
        }
        let mut inner = take(&mut self.inner);
        let config = self.config.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            match read_body(&config, body).await {
                Ok(body) => {
                    inner
                        .call(Request::from_parts(parts, Full::new(body)))
                        .await
                }
                Err(resp) => Ok(into_response_body(resp)),
            }
        })
    }
}

/// The request body, read within the body limit, the body read timeout and the cap on
/// bodies read at once.
async fn read_body<B>(config: &BodyLimitLayer, body: B) -> Result<Bytes, HttpResponse>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let Ok(_permit) = config.slots.try_acquire() else {
        tracing::warn!("refused a request body: all body read slots are taken");
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests are sending bodies right now; try again",
        )
        .into_response()
        .with_header("retry-after", "1"));
    };
    let read = Limited::new(body, config.limit).collect();
    match tokio::time::timeout(config.read_timeout, read).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(too_large(config.limit.saturating_add(1), config.limit).into_response());
            }
            Err(
                HttpError::bad_request(format!("could not read the request body: {e}"))
                    .into_response(),
            )
        }
        Err(_) => Err(HttpError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                config.read_timeout.as_secs_f64()
            ),
        )
        .into_response()
        .with_header("connection", "close")),
    }
}

fn too_large(size: usize, limit: usize) -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is {size} bytes or more, over the limit of {limit} bytes"),
    )
}

// ---------------------------------------------------------------------------------------
// Timeout

/// Time a request may take beyond [`TimeoutLayer`]'s timeout, as a request extension: for
/// a long poll whose wait the request itself names, so that the wait bounds it rather than
/// the timeout. The host's router adds it for `?wait=` on the public status route and for
/// `timeout` on the management API's starts and restarts (each already capped by its
/// route); an application adds it in its own routing for long polls of its own. It is
/// trusted as given: derive it from a bounded parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongPoll(pub Duration);

/// Gives the inner service a time to answer, counted from the call (inside
/// [`BodyLimitLayer`], that is once the body has been read): a request not answered in
/// time is dropped (the handler's future with it: work it committed stays committed) and
/// answers 504 `{"error": "the request was not answered within 60 s"}`, and a warning is
/// logged. A request with a [`LongPoll`] extension gets its time on top of the timeout.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// A layer giving handlers `timeout` to answer (the host's is
    /// [`DEFAULT_REQUEST_TIMEOUT`](crate::DEFAULT_REQUEST_TIMEOUT) unless configured:
    /// [`HostBuilder::request_timeout`](crate::HostBuilder::request_timeout)).
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }

    /// The time handlers have to answer, long polls aside.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service of [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B, ResBody> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let long_poll = req
            .extensions()
            .get::<LongPoll>()
            .map_or(Duration::ZERO, |l| l.0);
        let limit = self.timeout.saturating_add(long_poll);
        TimeoutFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep(limit),
            limit,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Timeout`]: the inner service's answer, or 504 when its time is up.
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: tokio::time::Sleep,
        limit: Duration,
    }
}

impl<F> std::fmt::Debug for TimeoutFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutFuture")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => {
                tracing::warn!(
                    limit_ms = u64::try_from(this.limit.as_millis()).unwrap_or(u64::MAX),
                    "a request was not answered in time"
                );
                Poll::Ready(Ok(into_response_body(timed_out(*this.limit))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The answer to a request its handler did not answer within `limit`.
fn timed_out(limit: Duration) -> HttpResponse {
    HttpError::new(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "the request was not answered within {} s",
            limit.as_secs_f64()
        ),
    )
    .into_response()
}

// ---------------------------------------------------------------------------------------
// Tracing

/// A `http_request` span around each request (fields `method`, `route` from the
/// request's [`MatchedRoute`], `status`, `trace_id`), parented by the request's W3C
/// `traceparent` when it sends a valid one; instances started while the request is
/// handled continue that trace. A panic in the inner service is logged and answers 500
/// `{"error": "the request failed inside the server"}` instead of dropping the
/// connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer {
    _private: (),
}

impl TraceLayer {
    /// The layer.
    pub fn new() -> Self {
        TraceLayer::default()
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner }
    }
}

/// The service of [`TraceLayer`].
#[derive(Clone, Debug)]
pub struct Trace<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = LayerFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let route = pattern_of(&req);
        // Instances this request starts continue its trace; a malformed header is ignored.
        let trace = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(durable_core::trace::TraceParent::parse);
        let span = tracing::info_span!(
            "http_request",
            method = %method,
            route = &*route,
            status = tracing::field::Empty,
            trace_id = tracing::field::Empty
        );
        durable_core::trace::attach(&span, trace.as_ref());
        let mut inner = take(&mut self.inner);
        let called = CatchUnwind(Box::pin(async move { inner.call(req).await }));
        let scoped = durable_core::trace::scope(trace, called).instrument(span.clone());
        Box::pin(async move {
            let resp = match scoped.await {
                Ok(r) => r?,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a non-text panic".into());
                    tracing::error!(%method, %path, panic = %what, "a request handler panicked");
                    into_response_body(
                        HttpError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the request failed inside the server",
                        )
                        .into_response(),
                    )
                }
            };
            tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
            span.record("status", resp.status().as_u16());
            Ok(resp)
        })
    }
}

/// Runs a future and turns a panic inside it into an `Err` with the panic's payload, so a
/// handler's panic answers 500 instead of dropping the connection.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.get_mut().0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Metrics

/// Counts and times requests in the host's metrics (`durable_http_requests_total` by
/// route pattern, method and status; `durable_http_request_duration_seconds` by route
/// pattern), labelled with the request's [`MatchedRoute`] pattern or `unmatched`. Get it
/// from [`App::metrics_layer`](crate::App::metrics_layer): the requests it counts show in
/// the host's `/metrics`.
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<HostMetrics>,
}

impl std::fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsLayer").finish_non_exhaustive()
    }
}

impl MetricsLayer {
    pub(crate) fn new(metrics: Arc<HostMetrics>) -> Self {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> MetricsService<S> {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<HostMetrics>,
}

impl<S> std::fmt::Debug for MetricsService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsService").finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = LayerFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = req.method().clone();
        let route = pattern_of(&req);
        let metrics = self.metrics.clone();
        let called = take(&mut self.inner).call(req);
        Box::pin(async move {
            let resp = called.await?;
            metrics.request(&route, &method, resp.status(), started.elapsed());
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
        assert!(!constant_time_eq("", "a"));
    }
}
