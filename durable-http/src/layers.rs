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
//! Each layer's future is a named type wrapping the inner service's future, never a box,
//! so a stack of them costs one future however many layers it has.
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

/// A boxed response future, for a service whose future has no name (an `async` block):
/// the host's route handlers. The layers themselves return named futures.
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
/// call a cloned tower service later, from a future).
fn take<S: Clone>(slot: &mut S) -> S {
    let clone = slot.clone();
    std::mem::replace(slot, clone)
}

pin_project_lite::pin_project! {
    /// The future of a layer that either answers at once (a refused key) or passes the
    /// request on: the inner service's future, unboxed.
    pub struct OrAnswer<F, R> {
        #[pin]
        state: OrAnswerState<F, R>,
    }
}

pin_project_lite::pin_project! {
    #[project = OrAnswerProj]
    enum OrAnswerState<F, R> {
        // The inner service's answer.
        Inner {
            #[pin]
            inner: F,
        },
        // The layer's own answer.
        Answer {
            response: Option<R>,
        },
    }
}

impl<F, R> OrAnswer<F, R> {
    fn inner(inner: F) -> Self {
        OrAnswer {
            state: OrAnswerState::Inner { inner },
        }
    }

    fn answer(response: R) -> Self {
        OrAnswer {
            state: OrAnswerState::Answer {
                response: Some(response),
            },
        }
    }
}

impl<F, R> std::fmt::Debug for OrAnswer<F, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.state {
            OrAnswerState::Inner { .. } => "OrAnswer::Inner",
            OrAnswerState::Answer { .. } => "OrAnswer::Answer",
        })
    }
}

impl<F, R, E> Future for OrAnswer<F, R>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            OrAnswerProj::Inner { inner } => inner.poll(cx),
            OrAnswerProj::Answer { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => panic!("OrAnswer polled after it completed"),
            },
        }
    }
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
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = OrAnswer<S::Future, Response<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let keyed = req
            .extensions()
            .get::<MatchedRoute>()
            .is_none_or(|r| r.keyed);
        if keyed && !key_matches(&self.key, req.headers(), req.uri().query()) {
            return OrAnswer::answer(into_response_body(
                HttpError::new(StatusCode::UNAUTHORIZED, "missing or invalid key").into_response(),
            ));
        }
        OrAnswer::inner(self.inner.call(req))
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
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BodyLimitFuture<S, B>;

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
                return BodyLimitFuture::answer(too_large(len, limit).into_response());
            }
        }
        let (parts, body) = req.into_parts();
        // No body (most GETs, many starts): nothing to read, no slot taken.
        if body.is_end_stream() {
            let req = Request::from_parts(parts, Full::new(Bytes::new()));
            return BodyLimitFuture::inner(self.inner.call(req));
        }
        let Ok(permit) = self.config.slots.clone().try_acquire_owned() else {
            tracing::warn!("refused a request body: all body read slots are taken");
            return BodyLimitFuture::answer(
                HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many requests are sending bodies right now; try again",
                )
                .into_response()
                .with_header("retry-after", "1"),
            );
        };
        BodyLimitFuture {
            state: BodyLimitState::Reading {
                read: tokio::time::timeout(
                    self.config.read_timeout,
                    Limited::new(body, limit).collect(),
                ),
                then: Some((parts, take(&mut self.inner), permit)),
                limit,
                read_timeout: self.config.read_timeout,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`BodyLimit`]: reads the body within the limits, then awaits the
    /// inner service's future; no box in between.
    pub struct BodyLimitFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        #[pin]
        state: BodyLimitState<S, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = BodyLimitProj]
    enum BodyLimitState<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Reading the body; then the request's head, the service to call and the body
        // read slot (held until the body is read).
        Reading {
            #[pin]
            read: tokio::time::Timeout<http_body_util::combinators::Collect<Limited<B>>>,
            then: Option<(http::request::Parts, S, tokio::sync::OwnedSemaphorePermit)>,
            limit: usize,
            read_timeout: Duration,
        },
        // The inner service's answer.
        Inner {
            #[pin]
            inner: S::Future,
        },
        // The layer's own answer (413, 408, 503, 400).
        Answer {
            response: Option<HttpResponse>,
        },
    }
}

impl<S, B> BodyLimitFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn inner(inner: S::Future) -> Self {
        BodyLimitFuture {
            state: BodyLimitState::Inner { inner },
        }
    }

    fn answer(response: HttpResponse) -> Self {
        BodyLimitFuture {
            state: BodyLimitState::Answer {
                response: Some(response),
            },
        }
    }
}

impl<S, B> std::fmt::Debug for BodyLimitFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.state {
            BodyLimitState::Reading { .. } => "BodyLimitFuture::Reading",
            BodyLimitState::Inner { .. } => "BodyLimitFuture::Inner",
            BodyLimitState::Answer { .. } => "BodyLimitFuture::Answer",
        })
    }
}

impl<S, B, ResBody> Future for BodyLimitFuture<S, B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                BodyLimitProj::Inner { inner } => return inner.poll(cx),
                BodyLimitProj::Answer { response } => {
                    return match response.take() {
                        Some(r) => Poll::Ready(Ok(into_response_body(r))),
                        None => panic!("BodyLimitFuture polled after it completed"),
                    };
                }
                BodyLimitProj::Reading {
                    read,
                    then,
                    limit,
                    read_timeout,
                } => {
                    let read = match read.poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(r) => r,
                    };
                    let Some((parts, mut inner, _permit)) = then.take() else {
                        panic!("BodyLimitFuture polled after it completed");
                    };
                    match read_outcome(read, *limit, *read_timeout) {
                        Ok(body) => BodyLimitState::Inner {
                            inner: inner.call(Request::from_parts(parts, Full::new(body))),
                        },
                        Err(response) => BodyLimitState::Answer {
                            response: Some(response),
                        },
                    }
                }
            };
            state.set(next);
        }
    }
}

/// The body read within the limit and the read timeout, or the answer to give instead.
fn read_outcome<E>(
    read: Result<Result<http_body_util::Collected<Bytes>, E>, tokio::time::error::Elapsed>,
    limit: usize,
    read_timeout: Duration,
) -> Result<Bytes, HttpResponse>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match read {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => {
            let e: Box<dyn std::error::Error + Send + Sync> = e.into();
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(too_large(limit.saturating_add(1), limit).into_response());
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
                read_timeout.as_secs_f64()
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
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = req.method().clone();
        let uri = req.uri().clone();
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
        // The inner service's own call runs in the span too, and a panic in it answers 500
        // as one in its future does.
        let called = {
            let _entered = span.enter();
            let inner = &mut self.inner;
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.call(req))) {
                Ok(inner) => CatchUnwind::Running { inner },
                Err(panic) => CatchUnwind::Panicked { panic: Some(panic) },
            }
        };
        TraceFuture {
            inner: durable_core::trace::scope(trace, called).instrument(span),
            method,
            uri,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Trace`]: the inner service's future in the request's span and
    /// trace scope, a panic in it turned into a 500; no box.
    pub struct TraceFuture<F> {
        #[pin]
        inner: tracing::instrument::Instrumented<
            tokio::task::futures::TaskLocalFuture<
                Option<durable_core::trace::TraceParent>,
                CatchUnwind<F>,
            >,
        >,
        method: http::Method,
        uri: http::Uri,
    }
}

impl<F> std::fmt::Debug for TraceFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceFuture")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let outcome = match this.inner.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(o) => o,
        };
        let method = &*this.method;
        let path = this.uri.path();
        let resp = match outcome {
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
        this.inner
            .as_ref()
            .get_ref()
            .span()
            .record("status", resp.status().as_u16());
        Poll::Ready(Ok(resp))
    }
}

pin_project_lite::pin_project! {
    /// Runs a future and turns a panic inside it (or in the call that made it) into an
    /// `Err` with the panic's payload, so a handler's panic answers 500 instead of
    /// dropping the connection.
    #[project = CatchUnwindProj]
    enum CatchUnwind<F> {
        // The inner service's future.
        Running {
            #[pin]
            inner: F,
        },
        // The inner service panicked when called.
        Panicked {
            panic: Option<Box<dyn std::any::Any + Send>>,
        },
    }
}

impl<F> std::fmt::Debug for CatchUnwind<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CatchUnwind::Running { .. } => "CatchUnwind::Running",
            CatchUnwind::Panicked { .. } => "CatchUnwind::Panicked",
        })
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CatchUnwindProj::Running { inner } => {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
                    Err(panic) => Poll::Ready(Err(panic)),
                }
            }
            CatchUnwindProj::Panicked { panic } => match panic.take() {
                Some(p) => Poll::Ready(Err(p)),
                None => panic!("CatchUnwind polled after it completed"),
            },
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
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = req.method().clone();
        let route = pattern_of(&req);
        MetricsFuture {
            inner: self.inner.call(req),
            started,
            method,
            route,
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`MetricsService`]: the inner service's answer, counted and timed
    /// when it arrives; no box.
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        method: http::Method,
        route: Arc<str>,
        metrics: Arc<HostMetrics>,
    }
}

impl<F> std::fmt::Debug for MetricsFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsFuture")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r?,
        };
        this.metrics.request(
            this.route,
            this.method,
            resp.status(),
            this.started.elapsed(),
        );
        Poll::Ready(Ok(resp))
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
