//! # durable-http
//!
//! The HTTP host for durable: it runs the worker and serves
//! - the start endpoints written with `#[http_start]` (found at link time, no list to
//!   maintain), which answer with the async request-reply pattern: `202 Accepted`,
//!   `Location` and `Retry-After`;
//! - the public status endpoint `GET /api/instances/{id}` (202 while running, 200 when
//!   done, `?wait=30s` long-polls), which reveals no input, history or keys;
//! - the keyed management API under `/runtime/webhooks/durabletask/` in Durable Functions'
//!   shapes (instances and entities);
//! - the operator dashboard at `/dashboard/` (assets embedded in the binary; the page
//!   signs in with the management key and uses only the management API);
//! - the metrics at `/metrics` in the OpenMetrics text format Prometheus scrapes (keyed,
//!   or without a key on a listener of its own: [`HostBuilder::metrics_addr`]), with the
//!   worker's instruments ([`durable_core::metrics`]) and requests by route pattern and
//!   status;
//! - the built-in activity behind `ctx.call_http` ([`activity`]). Its HTTP client is
//!   hyper-util's pooled HTTP/1.1 client; `https://` goes through rustls with the *ring*
//!   provider and the Mozilla roots of `webpki-roots` (cargo feature `tls`, on by
//!   default; without it `https://` calls fail with a non-retriable error).
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     durable_http::Host::from_env()?.serve().await?;
//!     Ok(())
//! }
//! ```
//!
//! What it trusts and what it bounds: the URLs it hands out start with a configured
//! public URL ([`HostBuilder::public_url`]) or the bound address, never a request's `Host`
//! or forwarded headers unless they come from a configured trusted proxy
//! ([`HostBuilder::trusted_proxies`]); the public status shows fixed reasons for failures
//! ([`PublicStatus`]); the standalone server caps connections, header, idle and body
//! times and the bodies read at once ([`HostBuilder::max_connections`] and its
//! neighbours); every request has a time to be answered in
//! ([`HostBuilder::request_timeout`], 504 after it); a panic in a handler answers 500.
//!
//! To mount it inside another application, build the host with
//! [`HostBuilder::mount_prefix`], then either serve [`Host::service`] (a
//! `hyper::service::Service` and a `tower_service::Service`) on your own connections, or call [`App::handle`] (from
//! [`Host::app`]) from an axum or hyper handler for the paths under the prefix. The
//! host's key check, body limit, request timeout, request span and HTTP metrics are tower
//! layers ([`layers`]) that an application can also put around handlers of its own.

#![warn(missing_docs)]

pub mod activity;
mod app;
mod config;
mod dashboard;
mod host;
pub mod layers;
mod management;
mod metrics;
mod public_url;
mod request;
mod router;
mod server;
mod status;

pub use app::{App, DurableService};
pub use config::PublicStatus;
pub use durable_core::DurableClient;
pub use durable_macros::http_start;
pub use host::{
    Host, HostBuilder, HostError, HttpStartRegistration, RunningHost, DEFAULT_ADDR,
    DEFAULT_BODY_LIMIT, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONCURRENT_BODIES, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT, MIN_KEY_LEN,
};
/// The `http` crate this host is built on, for custom responses and requests.
pub use http;
/// HTTP status codes, for [`HttpResponse`] and [`HttpError`].
pub use http::StatusCode;
pub use management::BASE as MANAGEMENT_BASE;
pub use public_url::PeerAddr;
pub use request::{HttpError, HttpRequest, HttpResponse, HttpResult, IntoHttpResult};
pub use status::{df_time, parse_wait, ClientExt};

/// Items used by code `#[http_start]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::host::HttpStartRegistration;
    pub use crate::request::{HttpRequest, HttpResult, IntoHttpResult};
    pub use durable_core::registry::BoxFuture;
    pub use durable_core::DurableClient;
    pub use inventory;
}
