//! The request handler every connection shares: in, an HTTP request (and the peer it
//! came from); out, the answer of the route it names: the dashboard, the keyed
//! management API, the public status endpoint or a generated start endpoint. Also the
//! handler as a hyper service ([`DurableService`]) for mounting in another server.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use durable_core::DurableClient;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use tracing::Instrument;

use crate::config::RequestConfig;
use crate::management;
use crate::metrics::HostMetrics;
use crate::public_url::{BaseUrls, PeerAddr};
use crate::request::{into_hyper, parse_query, HttpError, HttpRequest, HttpResponse};
use crate::router::{Match, Router, Target};

/// The request handler shared by every connection.
pub struct App {
    pub(crate) client: DurableClient,
    pub(crate) router: Router,
    pub(crate) key: String,
    pub(crate) config: Arc<RequestConfig>,
    pub(crate) body_limit: usize,
    pub(crate) body_read_timeout: Duration,
    /// Permits for request bodies being read at once.
    pub(crate) bodies: tokio::sync::Semaphore,
    pub(crate) mount_prefix: String,
    pub(crate) base: BaseUrls,
    pub(crate) metrics: Arc<HostMetrics>,
    /// The public status route's pattern, for the metrics.
    pub(crate) status_route: String,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("routes", &self.router.describe())
            .finish()
    }
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

impl App {
    /// The client this host uses.
    pub fn client(&self) -> &DurableClient {
        &self.client
    }

    /// The host's metrics in the Prometheus text format, as `/metrics` answers them: for
    /// an application that serves them on a route of its own choosing.
    pub async fn metrics_text(&self) -> String {
        self.metrics.render().await
    }

    /// Handles one request. Mount it inside another hyper or axum application by calling
    /// this from a handler; paths outside the mount prefix answer 404. A panic while
    /// handling it answers 500 `{"error": ...}` and is logged.
    ///
    /// URLs in the answers start with the public URL when one is configured, else the
    /// bound address ([`Host::bind`](crate::Host::bind)), else they are root-relative paths. Forwarded
    /// headers count only when the request carries a [`PeerAddr`] extension naming a
    /// trusted proxy ([`HostBuilder::trusted_proxies`](crate::HostBuilder::trusted_proxies)); add it from your server's peer
    /// address to honour them.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = std::time::Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let mut route = RouteName::Unmatched;
        // Instances this request starts continue its trace; a malformed header is ignored.
        let trace = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(durable_core::trace::TraceParent::parse);
        // A span per request, in the caller's trace when it sent one.
        let span = tracing::info_span!(
            "http_request",
            method = %method,
            route = tracing::field::Empty,
            status = tracing::field::Empty,
            trace_id = tracing::field::Empty
        );
        durable_core::trace::attach(&span, trace.as_ref());
        let routed = CatchUnwind(Box::pin(self.route(req, &mut route)));
        let scoped = durable_core::trace::scope(trace, routed).instrument(span.clone());
        let resp = match scoped.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => e.into_response(),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-text panic".into());
                tracing::error!(%method, %path, panic = %what, "a request handler panicked");
                HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the request failed inside the server",
                )
                .into_response()
            }
        };
        tracing::debug!(%method, %path, status = resp.status.as_u16(), "request");
        let route = match &route {
            RouteName::Static(s) => s,
            RouteName::Status => self.status_route.as_str(),
            RouteName::Start(p) => p.as_str(),
            RouteName::Unmatched => "unmatched",
        };
        span.record("route", route);
        span.record("status", resp.status.as_u16());
        self.metrics
            .request(route, &method, resp.status, started.elapsed());
        into_hyper(resp)
    }

    /// The request body, read within the body limit, the body read timeout and the cap
    /// on bodies read at once.
    async fn read_body<B>(&self, body: B) -> Result<Bytes, HttpResponse>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if body.is_end_stream() {
            return Ok(Bytes::new());
        }
        let Ok(_permit) = self.bodies.try_acquire() else {
            tracing::warn!("refused a request body: all body read slots are taken");
            return Err(HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests are sending bodies right now; try again",
            )
            .into_response()
            .with_header("retry-after", "1"));
        };
        let read = Limited::new(body, self.body_limit).collect();
        match tokio::time::timeout(self.body_read_timeout, read).await {
            Ok(Ok(b)) => Ok(b.to_bytes()),
            Ok(Err(e)) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    return Err(
                        too_large(self.body_limit.saturating_add(1), self.body_limit)
                            .into_response(),
                    );
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
                    self.body_read_timeout.as_secs_f64()
                ),
            )
            .into_response()
            .with_header("connection", "close")),
        }
    }

    async fn route<B>(
        &self,
        req: Request<B>,
        route: &mut RouteName,
    ) -> Result<HttpResponse, HttpError>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let raw_path = parts.uri.path();
        let Some(path) = raw_path.strip_prefix(self.mount_prefix.as_str()) else {
            return Err(HttpError::not_found(format!("no route for {raw_path}")));
        };
        let path = if path.is_empty() { "/" } else { path };
        if !path.starts_with('/') {
            return Err(HttpError::not_found(format!("no route for {raw_path}")));
        }
        let found = self.router.find(&parts.method, path);
        *route = match &found {
            Match::Found(r, params) => match r.target {
                Target::Start(_) => RouteName::Start(r.pattern.clone()),
                Target::Status => RouteName::Status,
                Target::Management => RouteName::Static(management::route_pattern(
                    params.get("rest").map_or("", String::as_str),
                )),
                Target::Dashboard => RouteName::Static("/dashboard/{file}"),
                Target::Metrics => RouteName::Static(crate::metrics::PATH),
            },
            Match::WrongMethod(_, pattern) => RouteName::Start(pattern.clone()),
            Match::None => RouteName::Unmatched,
        };
        // The routes that answer without reading a body.
        if let Match::Found(r, _) = &found {
            match r.target {
                Target::Dashboard => {
                    return crate::dashboard::serve(&parts.method, path).unwrap_or_else(|| {
                        Err(HttpError::not_found(format!("no route for {raw_path}")))
                    });
                }
                Target::Metrics => {
                    if !self.key_matches(&parts.headers, parts.uri.query()) {
                        return Err(HttpError::new(
                            StatusCode::UNAUTHORIZED,
                            "missing or invalid key",
                        ));
                    }
                    if parts.method != Method::GET {
                        return Ok(HttpError::new(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "only GET is allowed here",
                        )
                        .into_response()
                        .with_header("allow", "GET"));
                    }
                    return Ok(self.metrics.response().await);
                }
                _ => {}
            }
        }
        if let Some(len) = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
        {
            if len > self.body_limit {
                return Err(too_large(len, self.body_limit));
            }
        }
        let body = match self.read_body(body).await {
            Ok(b) => b,
            Err(resp) => return Ok(resp),
        };
        let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0);
        let base = self.base.for_request(peer, &parts.headers);
        let mut req = HttpRequest {
            method: parts.method.clone(),
            path: path.to_string(),
            params: Default::default(),
            query: parse_query(parts.uri.query().unwrap_or("")),
            headers: parts.headers,
            body,
            base_url: format!("{base}{}", self.mount_prefix),
            configured_base_url: self
                .base
                .configured()
                .map(|b| format!("{b}{}", self.mount_prefix)),
            config: self.config.clone(),
        };
        match found {
            Match::Found(found, mut params) => match &found.target {
                Target::Management => {
                    let rest = params.remove("rest").unwrap_or_default();
                    let given = req
                        .header("x-functions-key")
                        .map(str::to_string)
                        .or_else(|| req.query("code").map(str::to_string));
                    match given {
                        Some(k) if constant_time_eq(&k, &self.key) => {}
                        _ => {
                            return Err(HttpError::new(
                                StatusCode::UNAUTHORIZED,
                                "missing or invalid key",
                            ))
                        }
                    }
                    management::handle(&self.client, &req, &rest).await
                }
                Target::Status => {
                    if req.method != Method::GET {
                        return Ok(HttpError::new(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "only GET is allowed here",
                        )
                        .into_response()
                        .with_header("allow", "GET"));
                    }
                    let id = params.remove("id").unwrap_or_default();
                    crate::status::public_status(&self.client, &req, &id).await
                }
                Target::Start(handler) => {
                    req.params = params;
                    let handler = handler.clone();
                    handler(self.client.clone(), req).await
                }
                // Answered above.
                Target::Dashboard | Target::Metrics => Err(HttpError::not_found(format!(
                    "no route for {} {path}",
                    req.method
                ))),
            },
            Match::WrongMethod(allowed, _) => {
                let allow: Vec<String> = allowed.iter().map(|m| m.to_string()).collect();
                Ok(HttpError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("method {} is not allowed here", req.method),
                )
                .into_response()
                .with_header("allow", allow.join(", ")))
            }
            Match::None => Err(HttpError::not_found(format!(
                "no route for {} {path}",
                req.method
            ))),
        }
    }
}

impl App {
    /// True when the request carries the management key: in `x-functions-key`, as
    /// `Authorization: Bearer <key>` (what a Prometheus scrape configuration sends), or in
    /// the `code` query parameter.
    fn key_matches(&self, headers: &http::HeaderMap, query: Option<&str>) -> bool {
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
        given.is_some_and(|k| constant_time_eq(&k, &self.key))
    }
}

/// Which route answered a request, for the metrics: a pattern, never the raw path.
#[derive(Debug)]
pub(crate) enum RouteName {
    /// A fixed route of the host (dashboard, metrics, a management route).
    Static(&'static str),
    /// The public status endpoint.
    Status,
    /// A start endpoint, by its pattern.
    Start(String),
    /// No route.
    Unmatched,
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

fn too_large(size: usize, limit: usize) -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is {size} bytes or more, over the limit of {limit} bytes"),
    )
}

/// The host as a hyper service (and a tower one), for mounting in an existing hyper or
/// axum server (use
/// [`HostBuilder::mount_prefix`] when it serves under a path prefix). It answers as
/// [`App::handle`] does: it knows no peer address unless the request carries a
/// [`PeerAddr`] extension, and the connection limits are the server's own.
#[derive(Clone, Debug)]
pub struct DurableService(pub Arc<App>);

impl<B> hyper::service::Service<Request<B>> for DurableService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn call(&self, req: Request<B>) -> Self::Future {
        let app = self.0.clone();
        Box::pin(async move { Ok(app.handle(req).await) })
    }
}

/// The same service for tower stacks (axum's `Router::nest_service` or
/// `fallback_service`, tower layers of the application's own): always ready, never fails.
impl<B> tower_service::Service<Request<B>> for DurableService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        hyper::service::Service::call(self, req)
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
