//! The built-in activity behind `ctx.call_http`: performs one HTTP request with a real
//! client and returns status, headers and body.
//!
//! The client is hyper-util's connection-pooling client over HTTP/1.1. With the `tls`
//! cargo feature (on by default) it speaks `https://` through rustls with the *ring*
//! crypto provider, trusting the Mozilla roots of `webpki-roots` plus any added with
//! [`trust_root_certificate`]; without it, `https://` requests fail with a non-retriable
//! error saying so.
//!
//! Credentials come from token sources registered here ([`register_token_source`] for a
//! bearer token, [`register_header_source`] for any headers). A request names one; the
//! headers are produced when the request is sent, so they never reach the recorded
//! request, the history or the status.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;
use durable_core::http::{
    DurableHttpRequest, DurableHttpResponse, DEFAULT_TIMEOUT, HTTP_ACTIVITY, RETRIABLE_STATUS,
};
use durable_core::registry::{BoxFuture, Outcome};
use durable_core::trace::TraceParent;
use durable_core::{ActivityContext, FailureDetails};
use http::header::{HeaderName, HeaderValue};
use tracing::Instrument;

/// The W3C trace context header.
const TRACEPARENT: &str = "traceparent";
use http_body_util::{BodyExt, Full, Limited};

/// The largest response body the activity keeps: 8 MiB (bodies are recorded in history).
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Produces authentication headers for a request (its method and URL are given) when it
/// is sent. Errors fail the request with a `TokenSourceFailed` failure.
pub type TokenSource = Arc<
    dyn Fn(&str, &str) -> BoxFuture<'static, Result<Vec<(String, String)>, String>> + Send + Sync,
>;

fn sources() -> &'static RwLock<HashMap<String, TokenSource>> {
    static SOURCES: OnceLock<RwLock<HashMap<String, TokenSource>>> = OnceLock::new();
    SOURCES.get_or_init(Default::default)
}

/// Registers a bearer-token source under `name`: requests that use it with
/// `.token_source(name)` get `Authorization: Bearer <token>`, the token fetched (or
/// refreshed) by `f` each time a request is sent.
///
/// ```
/// # async fn fetch_token(scope: &str) -> Result<String, String> { Ok(format!("token-for-{scope}")) }
/// durable_http::activity::register_token_source("billing", || async {
///     fetch_token("https://billing.example/.default").await
/// });
/// ```
pub fn register_token_source<F, Fut>(name: &str, f: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<String, String>> + Send + 'static,
{
    let f = Arc::new(f);
    let source: TokenSource = Arc::new(move |_, _| {
        let f = f.clone();
        Box::pin(async move {
            let token = f().await?;
            Ok(vec![(
                "authorization".to_string(),
                format!("Bearer {token}"),
            )])
        })
    });
    insert_source(name, source);
}

/// Registers a source of arbitrary authentication headers under `name` (API keys,
/// signatures); `f` gets the method and URL of each request it authenticates. Headers
/// it returns replace those of the same name in the request.
pub fn register_header_source<F, Fut>(name: &str, f: F)
where
    F: Fn(String, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<(String, String)>, String>> + Send + 'static,
{
    let source: TokenSource =
        Arc::new(move |method, url| Box::pin(f(method.to_string(), url.to_string())));
    insert_source(name, source);
}

fn insert_source(name: &str, source: TokenSource) {
    sources()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string(), source);
}

#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;
#[cfg(not(feature = "tls"))]
type Connector = hyper_util::client::legacy::connect::HttpConnector;
type Client = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

#[derive(Default)]
struct ClientSlot {
    client: Option<Client>,
    #[cfg(feature = "tls")]
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

fn slot() -> &'static RwLock<ClientSlot> {
    static SLOT: OnceLock<RwLock<ClientSlot>> = OnceLock::new();
    SLOT.get_or_init(Default::default)
}

/// Adds a trusted root certificate (DER) for `https://` requests, e.g. a company CA or a
/// test certificate. Requests sent afterwards use it.
#[cfg(feature = "tls")]
pub fn trust_root_certificate(der: &[u8]) -> Result<(), String> {
    let cert = rustls::pki_types::CertificateDer::from(der.to_vec());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.clone())
        .map_err(|e| format!("not a usable root certificate: {e}"))?;
    let mut slot = slot().write().unwrap_or_else(|e| e.into_inner());
    slot.extra_roots.push(cert);
    slot.client = None;
    Ok(())
}

#[cfg(feature = "tls")]
fn build_client(slot: &ClientSlot) -> Client {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for c in &slot.extra_roots {
        // Checked when added.
        let _ = roots.add(c.clone());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the ring provider supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

#[cfg(not(feature = "tls"))]
fn build_client(_: &ClientSlot) -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

fn client() -> Client {
    if let Some(c) = &slot().read().unwrap_or_else(|e| e.into_inner()).client {
        return c.clone();
    }
    let mut slot = slot().write().unwrap_or_else(|e| e.into_inner());
    if slot.client.is_none() {
        slot.client = Some(build_client(&slot));
    }
    slot.client.clone().expect("just built")
}

fn fatal(error_type: &str, message: String) -> FailureDetails {
    FailureDetails {
        non_retriable: true,
        ..FailureDetails::new(error_type, message)
    }
}

/// An error and its sources, e.g. `client error (Connect): tcp connect error: Connection
/// refused (os error 111)`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), FailureDetails> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| fatal("InvalidArgument", format!("invalid header name '{name}'")))?;
    let v = HeaderValue::from_str(value).map_err(|_| {
        fatal(
            "InvalidArgument",
            format!("invalid value for header '{name}'"),
        )
    })?;
    Ok((n, v))
}

/// Performs one request (no polling, no retries: `ctx.call_http` does those); a relative
/// `Location` in the answer comes back resolved against the request URL. Failures:
/// `InvalidArgument`, `Unsupported`, `UnknownTokenSource` (not retriable),
/// `TokenSourceFailed`, `TransportError`, `Timeout`, `ResponseTooLarge`, and
/// [`RETRIABLE_STATUS`] for a status listed in the request's `retry_status_codes`.
pub async fn execute(req: DurableHttpRequest) -> Result<DurableHttpResponse, FailureDetails> {
    send(req, durable_core::trace::current()).await
}

/// [`execute`], sending `traceparent` on in `trace` (a child span of it) unless the
/// request sets that header itself.
async fn send(
    req: DurableHttpRequest,
    trace: Option<TraceParent>,
) -> Result<DurableHttpResponse, FailureDetails> {
    req.validate().map_err(|m| fatal("InvalidArgument", m))?;
    if cfg!(not(feature = "tls")) && req.url.starts_with("https://") {
        return Err(fatal(
            "Unsupported",
            "https:// needs durable-http's `tls` feature, which this build leaves out".into(),
        ));
    }
    let method = http::Method::from_bytes(req.method.as_bytes()).map_err(|_| {
        fatal(
            "InvalidArgument",
            format!("invalid method '{}'", req.method),
        )
    })?;
    let mut request = http::Request::builder()
        .method(method)
        .uri(&req.url)
        .body(Full::new(Bytes::from(req.body.clone().unwrap_or_default())))
        .map_err(|e| fatal("InvalidArgument", format!("invalid request: {e}")))?;
    for (k, v) in &req.headers {
        let (n, v) = header(k, v)?;
        request.headers_mut().insert(n, v);
    }
    if let Some(parent) = trace {
        if !request.headers().contains_key(TRACEPARENT) {
            let sent = durable_core::trace::outgoing(&tracing::Span::current(), &parent);
            if let Ok(v) = HeaderValue::from_str(&sent.to_string()) {
                request.headers_mut().insert(TRACEPARENT, v);
            }
        }
    }
    if let Some(name) = &req.token_source {
        let source = sources()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| {
                fatal(
                    "UnknownTokenSource",
                    format!("no token source named '{name}' is registered"),
                )
            })?;
        let headers = source(&req.method, &req.url).await.map_err(|e| {
            FailureDetails::new(
                "TokenSourceFailed",
                format!("token source '{name}' failed: {e}"),
            )
        })?;
        for (k, v) in headers {
            let (n, v) = header(&k, &v)?;
            request.headers_mut().insert(n, v);
        }
    }
    let timeout = req.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let call = async {
        let resp = client()
            .request(request)
            .await
            .map_err(|e| FailureDetails::new("TransportError", chain(&e)))?;
        let status = resp.status().as_u16();
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in resp.headers() {
            let Ok(v) = v.to_str() else { continue };
            headers
                .entry(k.as_str().to_string())
                .and_modify(|old| {
                    old.push_str(", ");
                    old.push_str(v);
                })
                .or_insert_with(|| v.to_string());
        }
        if let Some(location) = headers.get_mut("location") {
            *location = resolve_location(&req.url, location);
        }
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    fatal(
                        "ResponseTooLarge",
                        format!("the response body is over {MAX_RESPONSE_BYTES} bytes"),
                    )
                } else {
                    FailureDetails::new(
                        "TransportError",
                        format!("reading the body failed: {}", chain(&*e)),
                    )
                }
            })?
            .to_bytes();
        Ok::<_, FailureDetails>(DurableHttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    let resp = tokio::time::timeout(timeout, call).await.map_err(|_| {
        FailureDetails::new(
            "Timeout",
            format!("timed out: no response within {timeout:?} (the request's timeout)"),
        )
    })??;
    if req.retry_status_codes.contains(&resp.status) {
        return Err(FailureDetails {
            details: serde_json::to_string(&resp).ok(),
            ..FailureDetails::new(
                RETRIABLE_STATUS,
                format!("answered {}, a status chosen for retry", resp.status),
            )
        });
    }
    Ok(resp)
}

/// Resolves a `Location` header against the URL that answered (RFC 3986 reference
/// resolution: dot segments, query-only and network-path references), so the response
/// carries the absolute URL that `ctx.call_http` polls. A value that is not a URL
/// reference stays as it is.
fn resolve_location(base: &str, location: &str) -> String {
    url::Url::parse(base)
        .and_then(|b| b.join(location))
        .map(String::from)
        .unwrap_or_else(|_| location.to_string())
}

fn invoke(ctx: ActivityContext, input: Option<String>) -> BoxFuture<'static, Outcome> {
    Box::pin(async move {
        let req: DurableHttpRequest =
            durable_core::payload::decode_input("activity 'durable::http'", input.as_deref())?;
        // A span of its own in the instance's trace, child of the activity's; the URL's
        // host only (a query may carry secrets).
        let host = url::Url::parse(&req.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        let span = tracing::info_span!(
            "call_http",
            method = %req.method,
            host = %host,
            trace_id = tracing::field::Empty
        );
        let trace = ctx.trace_parent();
        if let Some(t) = &trace {
            span.record("trace_id", tracing::field::display(t.trace_id()));
        }
        let resp = send(req, trace).instrument(span).await?;
        durable_core::registry::encode(&resp)
    })
}

inventory::submit! {
    durable_core::registry::ActivityRegistration {
        name: HTTP_ACTIVITY,
        invoke,
        // The request's own `timeout` bounds the call.
        start_to_close_ms: None,
        location: "durable_http::activity (built in)",
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_location;

    #[test]
    fn locations_resolve_per_rfc_3986() {
        let base = "http://a:1/x/y/z?q=1";
        for (location, want) in [
            ("http://b/z", "http://b/z"),
            ("/s/1", "http://a:1/s/1"),
            ("s/1", "http://a:1/x/y/s/1"),
            ("../s", "http://a:1/x/s"),
            ("./s/../t", "http://a:1/x/y/t"),
            ("?page=2", "http://a:1/x/y/z?page=2"),
            ("//c:2/p", "http://c:2/p"),
            ("", "http://a:1/x/y/z?q=1"),
        ] {
            assert_eq!(resolve_location(base, location), want, "{location}");
        }
        assert_eq!(resolve_location("not a url", "/s"), "/s");
    }
}
