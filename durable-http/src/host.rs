//! The host: runs the worker and serves start endpoints, the public status endpoint and the
//! management API over hyper, standalone or mounted inside another application.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use durable_core::store::sqlite::SqliteStore;
use durable_core::{DurableClient, Registry, Store, Worker, WorkerOptions};

use crate::app::{App, DurableService, Listener};
use crate::config::{PublicStatus, RequestConfig};
use crate::layers::{BodyLimitLayer, ManagementAuthLayer, TimeoutLayer};
use crate::management;
use crate::metrics::HostMetrics;
use crate::public_url::{parse_public_url, parse_trusted_proxies, BaseUrls};
use crate::request::HttpRequest;
use crate::router::{Handler, Router, Target};
use crate::server::ConnLimits;

/// The default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7071";
/// The default request body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// The default time a connection has to send a request's complete header: 10 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time a request has to send its whole body: 30 s.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The default time a handler has to answer a request once its body is read: 60 s
/// (long polls get their wait on top; see [`HostBuilder::request_timeout`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The default time a kept-alive connection may stay idle between requests: 30 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The default cap on open connections: 512.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// The default cap on request bodies being read at once: 64 (64 MiB at the default body
/// limit).
pub const DEFAULT_MAX_CONCURRENT_BODIES: usize = 64;
/// The longest timeout the settings accept: one day.
const MAX_SETTING_DURATION: Duration = Duration::from_secs(86_400);
/// The largest count the settings accept (1 GiB for the body limit).
const MAX_SETTING_COUNT: usize = 1 << 30;

/// Errors starting or running the host.
pub struct HostError(pub String);

/// The least number of characters a management key must have.
pub const MIN_KEY_LEN: usize = 16;

/// The message alone: `main` returning this error prints `Error: <message>`.
impl std::fmt::Debug for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HostError {}

impl From<durable_core::Error> for HostError {
    fn from(e: durable_core::Error) -> Self {
        HostError(e.to_string())
    }
}

/// Link-time registration of a start endpoint, emitted by `#[http_start]`.
pub struct HttpStartRegistration {
    /// Route pattern, e.g. `/api/hello` or `/api/status/{id}`.
    pub route: &'static str,
    /// Methods, e.g. `&["POST"]`.
    pub methods: &'static [&'static str],
    /// The endpoint.
    pub handler: fn(
        DurableClient,
        HttpRequest,
    ) -> durable_core::registry::BoxFuture<'static, crate::HttpResult>,
    /// `module::fn at file:line`, for collision errors.
    pub location: &'static str,
}

inventory::collect!(HttpStartRegistration);

/// Configures a [`Host`].
pub struct HostBuilder {
    addr: String,
    db: PathBuf,
    db_url: Option<String>,
    db_schema: Option<String>,
    db_poll: Option<Duration>,
    store: Option<Arc<dyn Store>>,
    key: Option<String>,
    status_prefix: String,
    body_limit: Option<usize>,
    retry_after: u64,
    public_url: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    public_status: Option<PublicStatus>,
    header_read_timeout: Option<Duration>,
    body_read_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    store_retry_after: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_concurrent_bodies: Option<usize>,
    registry: Option<Registry>,
    options: WorkerOptions,
    routes: Vec<(Vec<String>, String, Handler, String)>,
    mount_prefix: String,
    inventory_routes: bool,
    metrics_addr: Option<String>,
    dashboard: Option<bool>,
}

impl HostBuilder {
    /// The listen address (default `127.0.0.1:7071`, or `DURABLE_ADDR`).
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// The SQLite file (default `./durable.db`, or `DURABLE_DB` when it is not a
    /// PostgreSQL URL).
    pub fn db(mut self, path: impl Into<PathBuf>) -> Self {
        self.db = path.into();
        self.db_url = None;
        self
    }

    /// A PostgreSQL database instead of the SQLite file (default `DURABLE_DB` when it is a
    /// `postgres://` or `postgresql://` URL): any number of hosts share it. A management
    /// key is then required ([`key`](Self::key) or `DURABLE_KEY`): hosts sharing a
    /// database share one key, so none is generated.
    pub fn db_url(mut self, url: impl Into<String>) -> Self {
        self.db_url = Some(url.into());
        self
    }

    /// The PostgreSQL schema holding durable's tables (default `durable`, or
    /// `DURABLE_DB_SCHEMA`); created at start-up when missing.
    pub fn db_schema(mut self, schema: impl Into<String>) -> Self {
        self.db_schema = Some(schema.into());
        self
    }

    /// With PostgreSQL, the longest an idle host waits without a notification before it
    /// looks for work anyway (default 5 s, or `DURABLE_DB_POLL`): the fallback for a
    /// notification lost while its connection was down.
    pub fn db_poll(mut self, interval: Duration) -> Self {
        self.db_poll = Some(interval);
        self
    }

    /// Uses this store instead of the SQLite file.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The management key (default `DURABLE_KEY`, else generated once and kept next to
    /// the database as `<db>.key`). It must be at least 16 characters long (surrounding
    /// whitespace is not counted); a shorter one makes [`build`](Self::build) fail.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The public status route prefix (default `/api/instances`).
    pub fn status_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.status_prefix = prefix.into().trim_end_matches('/').to_string();
        self
    }

    /// The request body limit (default 1 MiB, or `DURABLE_BODY_LIMIT` in bytes; larger
    /// bodies get 413). Payloads may be larger (16 MiB by default, see
    /// `WorkerOptions::max_payload_bytes`): raise this to start instances with larger
    /// inputs over HTTP, and lower [`max_concurrent_bodies`](Self::max_concurrent_bodies)
    /// to keep the memory bodies take bounded. The 1 MiB default keeps 64 bodies read at
    /// once within 64 MiB.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = Some(bytes);
        self
    }

    /// The URL at which clients reach this host (default `DURABLE_PUBLIC_URL`), e.g.
    /// `https://jobs.example.com` or, behind a proxy that maps a path,
    /// `https://example.com/jobs`: an absolute `http` or `https` URL without query or
    /// fragment (checked at [`build`](Self::build); a trailing slash is dropped). The
    /// mount prefix is added to it. Every URL the host hands out (`Location`,
    /// `statusQueryGetUri`, the management URLs) and [`HttpRequest::base_url`] start with
    /// it. Without it they start with the bound address (`http://127.0.0.1:7071`;
    /// loopback when bound to every interface), or with forwarded headers from a trusted
    /// proxy, or, for a mounted host, they are root-relative paths.
    pub fn public_url(mut self, url: impl Into<String>) -> Self {
        self.public_url = Some(url.into());
        self
    }

    /// Peers whose `Forwarded`, `X-Forwarded-Host`, `X-Forwarded-Proto` and `Host`
    /// headers say under which URL the host was reached: IP addresses or networks
    /// (`10.0.0.1`, `10.0.0.0/8`, `fd00::/8`; default `DURABLE_TRUSTED_PROXIES`,
    /// comma-separated; none by default). Used only when no public URL is set, only the
    /// last (nearest proxy's) value counts, and values that are not `host[:port]` or a
    /// scheme other than `http`/`https` are ignored. Headers from every other peer are
    /// never used in a URL.
    pub fn trusted_proxies<I>(mut self, proxies: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.trusted_proxies = Some(proxies.into_iter().map(Into::into).collect());
        self
    }

    /// What the public status endpoint shows (default [`PublicStatus::Minimal`], or
    /// `DURABLE_PUBLIC_STATUS=full|minimal|off`).
    pub fn public_status(mut self, mode: PublicStatus) -> Self {
        self.public_status = Some(mode);
        self
    }

    /// How long a connection may take to send a request's complete header, from its
    /// opening or from the first byte after an idle spell (default 10 s, or
    /// `DURABLE_HEADER_TIMEOUT`); then it is closed. Standalone server only.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = Some(timeout);
        self
    }

    /// How long a request may take to send its whole body (default 30 s, or
    /// `DURABLE_BODY_TIMEOUT`); then it gets 408 and its connection is closed.
    pub fn body_read_timeout(mut self, timeout: Duration) -> Self {
        self.body_read_timeout = Some(timeout);
        self
    }

    /// How long a handler may take to answer once the request's body is read (default
    /// 60 s, or `DURABLE_REQUEST_TIMEOUT`); then the request answers 504 `{"error": "the
    /// request was not answered within 60 s"}` and the handler is dropped (what it already
    /// committed, such as a started instance, stays). Long polls get the wait they ask
    /// for on top: `?wait=` on the public status (at most 120 s) and `timeout` on the
    /// management API's starts and restarts (at most 3600 s). Start endpoints that wait for
    /// their instance ([`ClientExt::wait_for_completion_or_check_status_response`](crate::ClientExt::wait_for_completion_or_check_status_response))
    /// should wait less than this. Applies to every route, mounted or standalone, and to
    /// the metrics listener ([`layers::TimeoutLayer`](crate::layers::TimeoutLayer)).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// The `Retry-After` of a 503 answered when the store is unavailable for a while
    /// (busy, disk full, the database unreachable): default 2 s, or
    /// `DURABLE_STORE_RETRY_AFTER`; whole seconds, rounded up. Raise it for a store that
    /// takes longer to come back (a PostgreSQL failover), so clients do not retry into it.
    pub fn store_retry_after(mut self, after: Duration) -> Self {
        self.store_retry_after = Some(after);
        self
    }

    /// How long a kept-alive connection may stay idle between requests (default 30 s, or
    /// `DURABLE_IDLE_TIMEOUT`); then it is closed. Standalone server only.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// How many connections may be open at once (default 512, or
    /// `DURABLE_MAX_CONNECTIONS`). At the cap the server stops accepting: new
    /// connections wait in the listen backlog, holding no file descriptor, until one
    /// closes. Keep it under the process's file descriptor limit (`ulimit -n`).
    /// Standalone server only.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// How many request bodies may be read at once (default 64, or `DURABLE_MAX_BODIES`);
    /// with the body limit this bounds the memory bodies take. A request with a body
    /// arriving when all are taken gets 503 with `Retry-After` at once.
    pub fn max_concurrent_bodies(mut self, n: usize) -> Self {
        self.max_concurrent_bodies = Some(n);
        self
    }

    /// The `Retry-After` seconds of 202 answers (default 1).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = seconds;
        self
    }

    /// Uses this registry instead of everything the macros registered.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Worker options.
    pub fn worker_options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// Serves everything under this path prefix (e.g. `/durable`) when mounted in another
    /// application.
    pub fn mount_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.mount_prefix = prefix.into().trim_end_matches('/').to_string();
        self
    }

    /// Also serves `GET /metrics` without a key on a separate listener at this address
    /// (default `DURABLE_METRICS_ADDR`; none by default), e.g. `127.0.0.1:9464` or an
    /// address on a private network only the Prometheus server reaches. The host's own
    /// listener serves `/metrics` in any case, with the management key. The separate
    /// listener answers through the same layers (its requests are counted in the metrics
    /// and traced, with the body limit and the request timeout) and has the same
    /// connection limits as the host's listener, with a cap of its own of the same size
    /// ([`max_connections`](Self::max_connections)).
    pub fn metrics_addr(mut self, addr: impl Into<String>) -> Self {
        self.metrics_addr = Some(addr.into());
        self
    }

    /// Whether the host serves the dashboard at `/dashboard/` (default on, or
    /// `DURABLE_DASHBOARD=on|off`). Off, its paths answer 404 like any unknown path (and
    /// stay reserved: no start endpoint may take them); the management API it uses is
    /// served either way.
    pub fn dashboard(mut self, on: bool) -> Self {
        self.dashboard = Some(on);
        self
    }

    /// Leaves out the `#[http_start]` endpoints registered by the macros.
    pub fn without_registered_routes(mut self) -> Self {
        self.inventory_routes = false;
        self
    }

    /// Adds a start endpoint by hand.
    pub fn route<F, Fut>(mut self, methods: &[&str], pattern: &str, handler: F) -> Self
    where
        F: Fn(DurableClient, HttpRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = crate::HttpResult> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |c, r| Box::pin(handler(c, r)));
        self.routes.push((
            methods.iter().map(|m| m.to_string()).collect(),
            pattern.to_string(),
            handler,
            format!("{pattern} (added with HostBuilder::route)"),
        ));
        self
    }

    /// Opens the store, starts the worker and builds the request handler (not listening
    /// yet: see [`Host::serve`] and [`Host::bind`]).
    ///
    /// Installs a `tracing` subscriber (stderr, filter from `RUST_LOG`, default `info`)
    /// unless the application has set one. Fails when the SQLite file cannot be used:
    /// damaged, not a durable database, not writable, or already open in another host;
    /// with PostgreSQL, when the server cannot be reached, a setting is malformed, the
    /// schema is not durable's or is newer than this build, or no key is set.
    pub fn build(self) -> Result<Host, HostError> {
        install_log_subscriber();
        let settings = Settings::resolve(&self)?;
        // With PostgreSQL the key is shared by every host: never generated.
        let key = match (self.key.clone(), &self.db_url) {
            (Some(k), _) => Some(k),
            (None, Some(_)) if self.store.is_none() => {
                Some(env("DURABLE_KEY").ok_or_else(|| {
                    HostError(
                        "with PostgreSQL (DURABLE_DB=postgres://...) set DURABLE_KEY (or \
                     HostBuilder::key): hosts sharing a database share one management key, \
                     so none is generated"
                            .into(),
                    )
                })?)
            }
            (None, _) => None,
        };
        let (store, sqlite, state): (Arc<dyn Store>, _, String) = match (&self.store, &self.db_url)
        {
            (Some(s), _) => (s.clone(), None, "the application's store".into()),
            (None, Some(url)) => {
                let (s, state) = open_postgres(url, &self)?;
                (s, None, state)
            }
            (None, None) => {
                let s =
                    Arc::new(SqliteStore::open(&self.db).map_err(|e| HostError(e.to_string()))?);
                let path = std::path::absolute(&self.db).unwrap_or_else(|_| self.db.clone());
                (s.clone(), Some(s), path.display().to_string())
            }
        };
        let key = match key {
            Some(k) => k.trim().to_string(),
            None => load_or_create_key(&self.db)?,
        };
        let key_len = key.chars().count();
        if key_len < MIN_KEY_LEN {
            return Err(HostError(format!(
                "the management key (DURABLE_KEY or HostBuilder::key) must be at least \
                 {MIN_KEY_LEN} characters; the one given has {key_len}"
            )));
        }
        // One table for every route: the host's own first, so a start route colliding
        // with one is refused naming it.
        let mut router = Router::default();
        let public_status = settings.public_status != PublicStatus::Off;
        let dashboard = [
            (crate::dashboard::PATH.to_string(), Target::Dashboard),
            (
                format!("{}/{{*file}}", crate::dashboard::PATH),
                Target::Dashboard,
            ),
        ];
        let dashboard = dashboard.into_iter().filter(|_| settings.dashboard);
        let host_routes = [
            (crate::metrics::PATH.to_string(), Target::Metrics),
            (management::BASE.to_string(), Target::Management),
            (
                format!("{}/{{*rest}}", management::BASE),
                Target::Management,
            ),
        ];
        for (pattern, target) in dashboard.chain(host_routes) {
            router.add_host_route(&pattern, target).map_err(HostError)?;
        }
        if public_status {
            router
                .add_host_route(&format!("{}/{{id}}", self.status_prefix), Target::Status)
                .map_err(|e| HostError(format!("the public status prefix: {e}")))?;
        }
        let mut start_routes: Vec<(Vec<String>, String, Handler, String)> = Vec::new();
        if self.inventory_routes {
            for r in inventory::iter::<HttpStartRegistration> {
                let f = r.handler;
                start_routes.push((
                    r.methods.iter().map(|m| m.to_string()).collect(),
                    r.route.to_string(),
                    Arc::new(f),
                    r.location.to_string(),
                ));
            }
        }
        start_routes.extend(self.routes);
        for (methods, pattern, handler, location) in start_routes {
            // Nothing under the management API, the dashboard or the metrics, even where
            // the table would prefer a literal route over the host's catch-all.
            let segments: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
            for reserved in [
                management::BASE,
                crate::dashboard::PATH,
                crate::metrics::PATH,
            ] {
                let prefix: Vec<&str> = reserved.split('/').filter(|s| !s.is_empty()).collect();
                if segments.starts_with(&prefix) {
                    return Err(HostError(format!(
                        "the start endpoint {pattern} ({location}) collides with the host's \
                         routes under {reserved}"
                    )));
                }
            }
            let m: Vec<&str> = methods.iter().map(String::as_str).collect();
            router
                .add(&m, &pattern, handler, &location)
                .map_err(HostError)?;
        }
        let mut builder = Worker::builder(store.clone()).options(self.options);
        if let Some(reg) = self.registry {
            builder = builder.registry(reg);
        }
        let runtime = builder.start()?;
        let client = runtime.client();
        let metrics = Arc::new(HostMetrics::new(runtime.metrics().clone(), store.clone()));
        let status_route: Arc<str> = format!("{}/{{id}}", self.status_prefix).into();
        Ok(Host {
            addr: self.addr,
            app: Arc::new_cyclic(|me| App {
                me: me.clone(),
                client,
                router,
                auth: ManagementAuthLayer::new(key),
                config: Arc::new(RequestConfig {
                    status_prefix: self.status_prefix,
                    retry_after: self.retry_after,
                    store_retry_after: settings.store_retry_after,
                    public_status: settings.public_status,
                }),
                body: BodyLimitLayer::with_slots(
                    settings.body_limit,
                    settings.body_read_timeout,
                    Arc::new(tokio::sync::Semaphore::new(settings.max_concurrent_bodies)),
                ),
                timeout: TimeoutLayer::new(settings.request_timeout),
                mount_prefix: self.mount_prefix,
                base: settings.base,
                metrics,
                status_route,
            }),
            metrics_addr: self.metrics_addr.or_else(|| env("DURABLE_METRICS_ADDR")),
            limits: settings.conn,
            runtime,
            state,
            sqlite,
        })
    }
}

/// The builder's limits and URL settings, each from the builder, else its environment
/// variable, else the default; all checked.
struct Settings {
    public_status: PublicStatus,
    dashboard: bool,
    body_limit: usize,
    body_read_timeout: Duration,
    request_timeout: Duration,
    store_retry_after: u64,
    max_concurrent_bodies: usize,
    base: BaseUrls,
    conn: ConnLimits,
}

impl Settings {
    fn resolve(b: &HostBuilder) -> Result<Settings, HostError> {
        // Errors name where the value came from: the builder or the variable.
        let public_url = match (&b.public_url, env("DURABLE_PUBLIC_URL")) {
            (Some(url), _) => Some(parse_public_url(url).map_err(HostError)?),
            (None, Some(url)) => Some(
                parse_public_url(&url)
                    .map_err(|e| HostError(format!("DURABLE_PUBLIC_URL: {e}")))?,
            ),
            (None, None) => None,
        };
        let trusted_proxies = match &b.trusted_proxies {
            Some(list) => parse_trusted_proxies(&list.join(","))
                .map_err(|e| HostError(format!("trusted proxies: {e}")))?,
            None => parse_trusted_proxies(&env("DURABLE_TRUSTED_PROXIES").unwrap_or_default())
                .map_err(|e| HostError(format!("DURABLE_TRUSTED_PROXIES: {e}")))?,
        };
        let public_status = setting(
            b.public_status,
            "DURABLE_PUBLIC_STATUS",
            PublicStatus::parse,
            "full, minimal or off",
        )?
        .unwrap_or_default();
        let duration = |set: Option<Duration>, var: &str, what: &str, default: Duration| {
            let d = setting(
                set,
                var,
                |v| crate::status::parse_duration(v, Duration::MAX),
                "a duration such as 10s, 500ms or 2m",
            )?
            .unwrap_or(default);
            if d.is_zero() || d > MAX_SETTING_DURATION {
                return Err(HostError(format!(
                    "the {what} ({var} or the builder) must be more than 0 and at most one day"
                )));
            }
            Ok(d)
        };
        let count = |set: Option<usize>, var: &str, what: &str, default: usize| {
            let n =
                setting(set, var, |v| v.trim().parse().ok(), "a whole number")?.unwrap_or(default);
            if n == 0 || n > MAX_SETTING_COUNT {
                return Err(HostError(format!(
                    "the {what} ({var} or the builder) must be 1 to {MAX_SETTING_COUNT}"
                )));
            }
            Ok(n)
        };
        let dashboard = setting(
            b.dashboard,
            "DURABLE_DASHBOARD",
            |v| match v.trim().to_ascii_lowercase().as_str() {
                "on" | "true" | "1" => Some(true),
                "off" | "false" | "0" => Some(false),
                _ => None,
            },
            "on or off",
        )?
        .unwrap_or(true);
        Ok(Settings {
            public_status,
            dashboard,
            body_limit: count(
                b.body_limit,
                "DURABLE_BODY_LIMIT",
                "body limit",
                DEFAULT_BODY_LIMIT,
            )?,
            body_read_timeout: duration(
                b.body_read_timeout,
                "DURABLE_BODY_TIMEOUT",
                "body read timeout",
                DEFAULT_BODY_READ_TIMEOUT,
            )?,
            request_timeout: duration(
                b.request_timeout,
                "DURABLE_REQUEST_TIMEOUT",
                "request timeout",
                DEFAULT_REQUEST_TIMEOUT,
            )?,
            store_retry_after: {
                let d = duration(
                    b.store_retry_after,
                    "DURABLE_STORE_RETRY_AFTER",
                    "store Retry-After",
                    Duration::from_secs(2),
                )?;
                // Whole seconds, rounded up (at most a day: checked above).
                d.as_secs() + u64::from(d.subsec_nanos() > 0)
            },
            max_concurrent_bodies: count(
                b.max_concurrent_bodies,
                "DURABLE_MAX_BODIES",
                "cap on bodies read at once",
                DEFAULT_MAX_CONCURRENT_BODIES,
            )?,
            base: BaseUrls {
                public_url,
                trusted_proxies,
                ..BaseUrls::default()
            },
            conn: ConnLimits {
                header_read_timeout: duration(
                    b.header_read_timeout,
                    "DURABLE_HEADER_TIMEOUT",
                    "header read timeout",
                    DEFAULT_HEADER_READ_TIMEOUT,
                )?,
                idle_timeout: duration(
                    b.idle_timeout,
                    "DURABLE_IDLE_TIMEOUT",
                    "idle timeout",
                    DEFAULT_IDLE_TIMEOUT,
                )?,
                max_connections: count(
                    b.max_connections,
                    "DURABLE_MAX_CONNECTIONS",
                    "connection cap",
                    DEFAULT_MAX_CONNECTIONS,
                )?,
            },
        })
    }
}

/// True for `postgres://` and `postgresql://` URLs, which select PostgreSQL.
fn is_postgres_url(s: &str) -> bool {
    let s = s.trim_start();
    let lower = s.get(..13).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// Opens the PostgreSQL store the builder's settings name (schema, fallback polling);
/// returns it with a description for the start-up message.
#[cfg(feature = "postgres")]
fn open_postgres(url: &str, b: &HostBuilder) -> Result<(Arc<dyn Store>, String), HostError> {
    use durable_core::store::postgres::PostgresStore;
    let schema = match &b.db_schema {
        Some(s) => s.clone(),
        None => env("DURABLE_DB_SCHEMA").unwrap_or_else(|| "durable".into()),
    };
    let poll = setting(
        b.db_poll,
        "DURABLE_DB_POLL",
        |v| crate::status::parse_duration(v, MAX_SETTING_DURATION),
        "a duration such as 5s, 500ms or 1m",
    )?;
    let mut builder = PostgresStore::builder(url).schema(schema);
    if let Some(p) = poll {
        if p.is_zero() {
            return Err(HostError(
                "the PostgreSQL poll interval (DURABLE_DB_POLL or the builder) must be more \
                 than 0"
                    .into(),
            ));
        }
        builder = builder.poll_interval(p);
    }
    let store = builder
        .open()
        .map_err(|e| HostError(format!("cannot use the PostgreSQL database: {e}")))?;
    let state = store.describe();
    Ok((Arc::new(store), state))
}

#[cfg(not(feature = "postgres"))]
fn open_postgres(_url: &str, _b: &HostBuilder) -> Result<(Arc<dyn Store>, String), HostError> {
    Err(HostError(
        "DURABLE_DB is a PostgreSQL URL, but this build has no PostgreSQL support (enable \
         durable-http's `postgres` feature)"
            .into(),
    ))
}

/// A non-empty environment variable.
fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// The builder's value, else the environment variable parsed, else `None`; a variable
/// that does not parse is an error naming it.
fn setting<T>(
    set: Option<T>,
    var: &str,
    parse: impl Fn(&str) -> Option<T>,
    expected: &str,
) -> Result<Option<T>, HostError> {
    if set.is_some() {
        return Ok(set);
    }
    match env(var) {
        Some(v) => parse(&v)
            .map(Some)
            .ok_or_else(|| HostError(format!("{var}='{v}' is not {expected}"))),
        None => Ok(None),
    }
}

/// Logs to stderr when the application has no `tracing` subscriber of its own, so store
/// failures and warnings are seen; `RUST_LOG` chooses what (default `info`).
fn install_log_subscriber() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Fails when a subscriber is already set: the application's wins.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load_or_create_key(db: &std::path::Path) -> Result<String, HostError> {
    if let Ok(k) = std::env::var("DURABLE_KEY") {
        if !k.trim().is_empty() {
            return Ok(k.trim().to_string());
        }
    }
    let mut path = db.as_os_str().to_owned();
    path.push(".key");
    let path = PathBuf::from(path);
    if let Ok(k) = std::fs::read_to_string(&path) {
        let k = k.trim().to_string();
        if !k.is_empty() {
            return Ok(k);
        }
    }
    let key = format!(
        "{}{}",
        durable_core::store::random_id(),
        durable_core::store::random_id()
    );
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(|e| {
        HostError(format!(
            "cannot store the management key in {}: {e}",
            path.display()
        ))
    })?;
    std::io::Write::write_all(&mut f, key.as_bytes()).map_err(|e| HostError(e.to_string()))?;
    eprintln!(
        "durable: generated a management key (kept in {}; set DURABLE_KEY to choose one):\n  {key}",
        path.display()
    );
    Ok(key)
}

/// A configured host: the worker is running; call [`serve`](Self::serve) or
/// [`bind`](Self::bind) to listen.
pub struct Host {
    addr: String,
    metrics_addr: Option<String>,
    app: Arc<App>,
    limits: ConnLimits,
    runtime: Worker,
    /// Where the state lives, for the start-up message.
    state: String,
    /// The store when the host opened the SQLite file itself (checkpointed on shutdown).
    sqlite: Option<Arc<SqliteStore>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("addr", &self.addr).finish()
    }
}

impl Host {
    /// A builder with defaults from the environment (`DURABLE_ADDR`, `DURABLE_DB`,
    /// `DURABLE_KEY`, and the `DURABLE_*` variables each setter names).
    pub fn builder() -> HostBuilder {
        let env_db = env("DURABLE_DB");
        HostBuilder {
            addr: std::env::var("DURABLE_ADDR").unwrap_or_else(|_| DEFAULT_ADDR.to_string()),
            db: match &env_db {
                Some(url) if is_postgres_url(url) => PathBuf::from("durable.db"),
                _ => SqliteStore::default_path(),
            },
            db_url: env_db.filter(|v| is_postgres_url(v)),
            db_schema: None,
            db_poll: None,
            store: None,
            key: None,
            status_prefix: "/api/instances".into(),
            body_limit: None,
            retry_after: 1,
            public_url: None,
            trusted_proxies: None,
            public_status: None,
            header_read_timeout: None,
            body_read_timeout: None,
            request_timeout: None,
            store_retry_after: None,
            idle_timeout: None,
            max_connections: None,
            max_concurrent_bodies: None,
            registry: None,
            options: WorkerOptions::default(),
            routes: Vec::new(),
            mount_prefix: String::new(),
            inventory_routes: true,
            metrics_addr: None,
            dashboard: None,
        }
    }

    /// A host configured from the environment only. Must be called inside a tokio runtime.
    pub fn from_env() -> Result<Host, HostError> {
        Self::builder().build()
    }

    /// The request handler, to mount in another application.
    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    /// A client for this host's store.
    pub fn client(&self) -> DurableClient {
        self.app.client.clone()
    }

    /// The request handler as a hyper service.
    pub fn service(&self) -> DurableService {
        DurableService(self.app.clone())
    }

    /// Listens and serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn serve(self) -> Result<(), HostError> {
        let running = self.bind().await?;
        eprintln!(
            "durable: listening on http://{} (routes: {})",
            running.addr,
            running.routes.join(", ")
        );
        eprintln!("durable: state in {}", running.state);
        shutdown_signal().await;
        eprintln!("durable: shutting down");
        running.shutdown().await;
        Ok(())
    }

    /// Binds the address (port 0 picks a free one) and serves in the background, within
    /// the connection limits ([`HostBuilder::max_connections`],
    /// [`HostBuilder::header_read_timeout`], [`HostBuilder::idle_timeout`]).
    pub async fn bind(self) -> Result<RunningHost, HostError> {
        let listener = tokio::net::TcpListener::bind(&self.addr)
            .await
            .map_err(|e| HostError(format!("cannot listen on {}: {e}", self.addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HostError(e.to_string()))?;
        self.app.base.set_bound(addr);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let metrics = match &self.metrics_addr {
            Some(at) => {
                let listener = tokio::net::TcpListener::bind(at)
                    .await
                    .map_err(|e| HostError(format!("cannot listen for metrics on {at}: {e}")))?;
                let bound = listener
                    .local_addr()
                    .map_err(|e| HostError(e.to_string()))?;
                let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let task = tokio::spawn(crate::server::serve(
                    listener,
                    self.app.clone(),
                    Listener::Metrics,
                    self.limits,
                    open.clone(),
                    stop_rx.clone(),
                ));
                Some((bound, (task, open)))
            }
            None => None,
        };
        let server = tokio::spawn(crate::server::serve(
            listener,
            self.app.clone(),
            Listener::Host,
            self.limits,
            open.clone(),
            stop_rx,
        ));
        let (metrics_addr, metrics_server) = metrics.unzip();
        let (metrics_server, open_metrics) = metrics_server.unzip();
        Ok(RunningHost {
            addr,
            metrics_addr,
            metrics_server,
            open_metrics,
            routes: self.app.router.describe(),
            app: self.app,
            runtime: self.runtime,
            stop: stop_tx,
            server,
            open,
            state: self.state,
            sqlite: self.sqlite,
        })
    }
}

/// A host serving in the background.
pub struct RunningHost {
    /// The bound address.
    pub addr: SocketAddr,
    /// The bound address of the separate metrics listener, when one was configured
    /// ([`HostBuilder::metrics_addr`]).
    pub metrics_addr: Option<SocketAddr>,
    metrics_server: Option<tokio::task::JoinHandle<()>>,
    open_metrics: Option<Arc<std::sync::atomic::AtomicUsize>>,
    routes: Vec<String>,
    app: Arc<App>,
    runtime: Worker,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    state: String,
    sqlite: Option<Arc<SqliteStore>>,
}

impl std::fmt::Debug for RunningHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningHost")
            .field("addr", &self.addr)
            .finish()
    }
}

impl RunningHost {
    /// A client for the host's store.
    pub fn client(&self) -> DurableClient {
        self.app.client.clone()
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base of the URLs this host hands out: the public URL when one is configured,
    /// else `http://` and the bound address (loopback when bound to every interface),
    /// with the mount prefix.
    pub fn base_url(&self) -> String {
        format!(
            "{}{}",
            self.app.base.configured().unwrap_or_default(),
            self.app.mount_prefix
        )
    }

    /// How many connections are open now (never more than
    /// [`HostBuilder::max_connections`]).
    pub fn open_connections(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many connections the separate metrics listener has open now (0 without one;
    /// never more than [`HostBuilder::max_connections`], counted apart from the host's).
    pub fn open_metrics_connections(&self) -> usize {
        self.open_metrics
            .as_ref()
            .map_or(0, |o| o.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Stops accepting, finishes in-flight requests, stops the worker, then checkpoints the
    /// SQLite file the host opened, so the database file alone holds everything.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        if let Some(metrics) = self.metrics_server {
            let _ = metrics.await;
        }
        self.runtime.shutdown().await;
        if let Some(store) = self.sqlite {
            if let Err(e) = store.checkpoint().await {
                tracing::warn!(error = %e, "could not checkpoint the database at shutdown");
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
