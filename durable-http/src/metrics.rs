//! `/metrics`: the worker's metrics and the host's HTTP metrics in the OpenMetrics text
//! format Prometheus scrapes. Served on the host's listener with the management key, or
//! without one on a separate listener the application chooses
//! ([`HostBuilder::metrics_addr`]).
//!
//! [`HostBuilder::metrics_addr`]: crate::HostBuilder::metrics_addr

use std::sync::Arc;
use std::time::Duration;

use durable_core::metrics::{Metrics, Registry, WorkKind};
use durable_core::Store;
use http::{Method, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::request::HttpResponse;

/// The path metrics are served at.
pub(crate) const PATH: &str = "/metrics";

/// The content type of the OpenMetrics text format, which Prometheus scrapes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scrape waits for the store's count of pending work.
const PENDING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
}

fn duration_histogram() -> Histogram {
    // 0.5 ms to about 65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// The host's metrics: the worker's and its own HTTP instruments, in one registry.
pub(crate) struct HostMetrics {
    registry: Registry,
    worker: Metrics,
    store: Arc<dyn Store>,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for HostMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMetrics").finish_non_exhaustive()
    }
}

impl HostMetrics {
    pub(crate) fn new(worker: Metrics, store: Arc<dyn Store>) -> Self {
        let mut registry = Registry::default();
        worker.register(&mut registry);
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let http = registry.sub_registry_with_prefix("durable_http");
        http.register(
            "requests",
            "HTTP requests answered, by route pattern, method and status",
            requests.clone(),
        );
        http.register(
            "request_duration_seconds",
            "Time to answer HTTP requests, by route pattern",
            durations.clone(),
        );
        HostMetrics {
            registry,
            worker,
            store,
            requests,
            durations,
        }
    }

    /// Records an answered request. `route` is the route's pattern (never the raw path),
    /// so the label values stay bounded. The labels share `route` (nothing is copied for
    /// a series that exists).
    pub(crate) fn request(
        &self,
        route: &Arc<str>,
        method: &Method,
        status: StatusCode,
        took: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                method: method_label(method),
                status: status.as_u16(),
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(took.as_secs_f64());
    }

    /// The metrics in the Prometheus text format, with the pending work read from the
    /// store now (when it can count it, within a short timeout).
    pub(crate) async fn render(&self) -> String {
        match tokio::time::timeout(PENDING_TIMEOUT, self.store.pending_work()).await {
            Ok(Ok(Some(p))) => {
                self.worker
                    .set_pending(WorkKind::Orchestration, p.orchestrations);
                self.worker.set_pending(WorkKind::Activity, p.activities);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "could not count pending work"),
            Err(_) => tracing::debug!("counting pending work timed out"),
        }
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "could not encode the metrics");
        }
        out
    }

    /// The `/metrics` answer.
    pub(crate) async fn response(&self) -> HttpResponse {
        HttpResponse::empty(StatusCode::OK)
            .with_header("content-type", CONTENT_TYPE)
            .with_header("cache-control", "no-store")
            .with_body(self.render().await)
    }
}

/// A bounded label for a method: the standard ones by name, anything else as `other`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}
