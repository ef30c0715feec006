//! The request handler every connection shares: in, an HTTP request (and the peer it
//! came from); out, the answer of the route it names: the dashboard, the keyed
//! management API, the public status endpoint or a generated start endpoint. Also the
//! handler as a hyper service ([`DurableService`]) for mounting in another server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use durable_core::DurableClient;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::RequestConfig;
use crate::layers::{
    BodyLimit, BodyLimitLayer, LayerFuture, LongPoll, ManagementAuth, ManagementAuthLayer,
    MatchedRoute, MetricsLayer, MetricsService, Timeout, TimeoutLayer, Trace, TraceLayer,
};
use crate::management;
use crate::metrics::HostMetrics;
use crate::public_url::{BaseUrls, PeerAddr};
use crate::request::{into_hyper, parse_query, HttpError, HttpRequest, HttpResponse};
use crate::router::{Match, Router, Target};

/// The request handler shared by every connection.
pub struct App {
    /// This handler, for the innermost service of its layer stack.
    pub(crate) me: Weak<App>,
    pub(crate) client: DurableClient,
    pub(crate) router: Router,
    /// The management key on the management API and `/metrics`.
    pub(crate) auth: ManagementAuthLayer,
    /// The body limit, read timeout and cap on bodies read at once.
    pub(crate) body: BodyLimitLayer,
    /// The time handlers have to answer.
    pub(crate) timeout: TimeoutLayer,
    pub(crate) config: Arc<RequestConfig>,
    pub(crate) mount_prefix: String,
    pub(crate) base: BaseUrls,
    pub(crate) metrics: Arc<HostMetrics>,
    /// The public status route's pattern, for the metrics.
    pub(crate) status_route: Arc<str>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("routes", &self.router.describe())
            .finish()
    }
}

/// The host's layers around its routes, outermost first.
type Stack = MetricsService<Trace<ManagementAuth<BodyLimit<Timeout<Dispatch>>>>>;

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

    /// A [`MetricsLayer`] that counts requests in this host's metrics, for an
    /// application's own routes next to the host's.
    pub fn metrics_layer(&self) -> MetricsLayer {
        MetricsLayer::new(self.metrics.clone())
    }

    /// A [`ManagementAuthLayer`] asking for this host's management key.
    pub fn auth_layer(&self) -> ManagementAuthLayer {
        self.auth.clone()
    }

    /// A [`BodyLimitLayer`] with this host's body limit and read timeout, sharing its
    /// cap on bodies read at once.
    pub fn body_limit_layer(&self) -> BodyLimitLayer {
        self.body.clone()
    }

    /// A [`TimeoutLayer`] with this host's request timeout
    /// ([`HostBuilder::request_timeout`](crate::HostBuilder::request_timeout)).
    pub fn timeout_layer(&self) -> TimeoutLayer {
        self.timeout
    }

    /// The host's layers around its routes, composed in this one place: metrics, trace,
    /// management key, body limit, timeout, then the route's handler.
    fn stack(&self, me: Arc<App>) -> Stack {
        let routes = Dispatch(me);
        MetricsLayer::new(self.metrics.clone()).layer(
            TraceLayer::new().layer(
                self.auth
                    .clone()
                    .layer(self.body.clone().layer(self.timeout.layer(routes))),
            ),
        )
    }

    /// Handles one request. Mount it inside another hyper or axum application by calling
    /// this from a handler; paths outside the mount prefix answer 404. A panic while
    /// handling it answers 500 `{"error": ...}` and is logged.
    ///
    /// The request is matched to a route first (its pattern goes in a [`MatchedRoute`]
    /// extension; a long poll also gets a [`LongPoll`] with the wait it asks for), then it
    /// passes the layers of [`crate::layers`]: metrics, trace, management key (on the
    /// management API and `/metrics`), body limit, timeout.
    ///
    /// URLs in the answers start with the public URL when one is configured, else the
    /// bound address ([`Host::bind`](crate::Host::bind)), else they are root-relative paths. Forwarded
    /// headers count only when the request carries a [`PeerAddr`] extension naming a
    /// trusted proxy ([`HostBuilder::trusted_proxies`](crate::HostBuilder::trusted_proxies)); add it from your server's peer
    /// address to honour them.
    pub async fn handle<B>(&self, mut req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.route(&mut req);
        self.through_stack(req).await
    }

    /// Handles one request on the listener `on`: the host's own serves every route (as
    /// [`handle`](Self::handle)), the separate metrics listener only `/metrics`, without
    /// the key; both through the same layers.
    pub(crate) async fn handle_on<B>(
        &self,
        on: Listener,
        mut req: Request<B>,
    ) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match on {
            Listener::Host => self.route(&mut req),
            Listener::Metrics => Self::route_metrics_listener(&mut req),
        }
        self.through_stack(req).await
    }

    /// Answers a routed request through the host's layers.
    async fn through_stack<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(me) = self.me.upgrade() else {
            // Only reachable while the host is being dropped.
            return into_hyper(
                HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "the host is shutting down")
                    .into_response(),
            );
        };
        let mut stack = self.stack(me);
        let ready = std::future::poll_fn(|cx| Service::<Request<B>>::poll_ready(&mut stack, cx));
        let result = match ready.await {
            Ok(()) => stack.call(req).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }

    /// Routes a request of the separate metrics listener: `/metrics` without the key,
    /// nothing else.
    fn route_metrics_listener<B>(req: &mut Request<B>) {
        let path = req.uri().path().to_string();
        let (matched, to) = if path == crate::metrics::PATH {
            (
                MatchedRoute::new(crate::metrics::PATH, false),
                RoutedTo::Found(Target::Metrics, HashMap::new()),
            )
        } else {
            (
                MatchedRoute::new(MatchedRoute::UNMATCHED, false),
                RoutedTo::None,
            )
        };
        req.extensions_mut().insert(matched);
        req.extensions_mut().insert(Routed { path, to });
    }

    /// Matches the request to a route: puts its [`MatchedRoute`] and what answers it in
    /// its extensions.
    fn route<B>(&self, req: &mut Request<B>) {
        let raw_path = req.uri().path();
        let stripped = raw_path
            .strip_prefix(self.mount_prefix.as_str())
            .map(|p| if p.is_empty() { "/" } else { p })
            .filter(|p| p.starts_with('/'));
        let Some(path) = stripped else {
            req.extensions_mut()
                .insert(MatchedRoute::new(MatchedRoute::UNMATCHED, false));
            req.extensions_mut().insert(Routed {
                path: String::new(),
                to: RoutedTo::OutsidePrefix,
            });
            return;
        };
        let path = path.to_string();
        let query = req.uri().query().unwrap_or("");
        let mut long_poll = None;
        let (matched, to) = match self.router.find(req.method(), &path) {
            Match::Found(r, params) => {
                let matched = match r.target {
                    Target::Start(_) => MatchedRoute::new(r.label.clone(), false),
                    Target::Status => {
                        long_poll = crate::status::long_poll(query);
                        MatchedRoute::new(self.status_route.clone(), false)
                    }
                    Target::Management => {
                        let rest = params.get("rest").map_or("", String::as_str);
                        long_poll = management::long_poll(req.method(), rest, query);
                        MatchedRoute::new(management::route_pattern(rest), true)
                    }
                    Target::Dashboard => MatchedRoute::new("/dashboard/{file}", false),
                    Target::Metrics => MatchedRoute::new(crate::metrics::PATH, true),
                };
                (matched, RoutedTo::Found(r.target.clone(), params))
            }
            Match::WrongMethod(allowed, pattern) => (
                MatchedRoute::new(pattern, false),
                RoutedTo::WrongMethod(allowed),
            ),
            Match::None => (
                MatchedRoute::new(MatchedRoute::UNMATCHED, false),
                RoutedTo::None,
            ),
        };
        req.extensions_mut().insert(matched);
        if let Some(wait) = long_poll {
            req.extensions_mut().insert(LongPoll(wait));
        }
        req.extensions_mut().insert(Routed { path, to });
    }

    /// Answers a routed request whose body has been read.
    async fn answer(&self, req: Request<Full<Bytes>>) -> Result<HttpResponse, HttpError> {
        let (mut parts, body) = req.into_parts();
        let Some(routed) = parts.extensions.remove::<Routed>() else {
            return Err(HttpError::not_found(format!(
                "no route for {}",
                parts.uri.path()
            )));
        };
        let Routed { path, to } = routed;
        let raw_path = parts.uri.path();
        let body = full_bytes(body);
        match &to {
            RoutedTo::OutsidePrefix => {
                return Err(HttpError::not_found(format!("no route for {raw_path}")));
            }
            RoutedTo::Found(Target::Dashboard, _) => {
                return crate::dashboard::serve(&parts.method, &path).unwrap_or_else(|| {
                    Err(HttpError::not_found(format!("no route for {raw_path}")))
                });
            }
            RoutedTo::Found(Target::Metrics, _) => {
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
        let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0);
        let base = self.base.for_request(peer, &parts.headers);
        let mut req = HttpRequest {
            method: parts.method.clone(),
            path,
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
        match to {
            RoutedTo::Found(target, mut params) => match target {
                Target::Management => {
                    // The key was checked by the management key layer.
                    let rest = params.remove("rest").unwrap_or_default();
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
                    handler(self.client.clone(), req).await
                }
                // Answered above.
                Target::Dashboard | Target::Metrics => Err(HttpError::not_found(format!(
                    "no route for {} {}",
                    req.method, req.path
                ))),
            },
            RoutedTo::WrongMethod(allowed) => {
                let allow: Vec<String> = allowed.iter().map(|m| m.to_string()).collect();
                Ok(HttpError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("method {} is not allowed here", req.method),
                )
                .into_response()
                .with_header("allow", allow.join(", ")))
            }
            RoutedTo::None | RoutedTo::OutsidePrefix => Err(HttpError::not_found(format!(
                "no route for {} {}",
                req.method, req.path
            ))),
        }
    }
}

/// The listeners of a standalone host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listener {
    /// The host's own: every route.
    Host,
    /// The separate metrics listener ([`HostBuilder::metrics_addr`](crate::HostBuilder::metrics_addr)):
    /// `/metrics` without the key.
    Metrics,
}

/// The bytes of a `Full` body: its one data frame, there at once (no collecting).
fn full_bytes(body: Full<Bytes>) -> Bytes {
    let mut body = std::pin::pin!(body);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match body.as_mut().poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        Poll::Ready(Some(Err(never))) => match never {},
        Poll::Ready(None) | Poll::Pending => Bytes::new(),
    }
}

/// Where the router sent a request, as a request extension for [`Dispatch`].
#[derive(Clone)]
struct Routed {
    /// The path under the mount prefix.
    path: String,
    to: RoutedTo,
}

#[derive(Clone)]
enum RoutedTo {
    /// The path is not under the mount prefix.
    OutsidePrefix,
    /// A route, with its parameters.
    Found(Target, HashMap<String, String>),
    /// The path exists, but not for this method; the methods it allows.
    WrongMethod(Vec<Method>),
    /// No route.
    None,
}

/// The innermost service of the host's stack: answers a routed request with its route's
/// handler.
#[derive(Clone)]
struct Dispatch(Arc<App>);

impl Service<Request<Full<Bytes>>> for Dispatch {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = LayerFuture<Response<Full<Bytes>>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let app = self.0.clone();
        Box::pin(async move {
            let resp = match app.answer(req).await {
                Ok(r) => r,
                Err(e) => e
                    .with_store_retry_after(app.config.store_retry_after)
                    .into_response(),
            };
            Ok(into_hyper(resp))
        })
    }
}

/// The host as a hyper service (and a tower one), for mounting in an existing hyper or
/// axum server (use
/// [`HostBuilder::mount_prefix`](crate::HostBuilder::mount_prefix) when it serves under a path prefix). It answers as
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
