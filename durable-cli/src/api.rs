//! The management API over HTTP: one request in, the status, the JSON body and the
//! continuation token out; every failure becomes a [`CliError`] with its exit code. The
//! key travels only in the `x-functions-key` header and is never part of a message.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// The management API's path under the host's URL.
const BASE: &str = "/runtime/webhooks/durabletask";
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest error message printed from a server answer.
const MAX_MESSAGE: usize = 500;

/// What went wrong, and the exit code that says so.
#[derive(Debug)]
pub enum CliError {
    /// The work ran and did not succeed (an instance failed, a purge was not confirmed).
    Failed(String),
    /// Bad arguments or configuration.
    Usage(String),
    /// The host could not be reached.
    Connect(String),
    /// The host answered with an error status.
    Http {
        /// The status.
        status: StatusCode,
        /// The server's `error` message (or what the body said).
        message: String,
    },
}

impl CliError {
    /// The process exit code (documented in `durable --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Connect(_) => 3,
            CliError::Http { status, .. } => match status.as_u16() {
                401 | 403 => 4,
                404 => 5,
                400..=499 => 6,
                _ => 7,
            },
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Failed(m) | CliError::Usage(m) | CliError::Connect(m) => f.write_str(m),
            CliError::Http { status, message } => write!(f, "{status}: {message}"),
        }
    }
}

/// A successful answer.
#[derive(Debug)]
pub struct Answer {
    /// The JSON body (`null` when empty).
    pub body: Value,
    /// `x-ms-continuation-token`: absent, empty or `null` mean the last page.
    pub token: Option<String>,
}

#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;
#[cfg(not(feature = "tls"))]
type Connector = hyper_util::client::legacy::connect::HttpConnector;
type Client = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

/// A connection to one host's management API.
pub struct Api {
    base: String,
    key: String,
    client: Client,
}

impl Api {
    /// `url` is the host's base URL (scheme, authority and any mount prefix).
    pub fn new(url: &str, key: String) -> Result<Self, CliError> {
        let url = url.trim().trim_end_matches('/');
        let uri: http::Uri = url
            .parse()
            .map_err(|e| CliError::Usage(format!("invalid --url '{url}': {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") if cfg!(feature = "tls") => {}
            Some("https") => {
                return Err(CliError::Usage(
                    "https:// needs the `tls` feature, which this build leaves out".into(),
                ))
            }
            _ => {
                return Err(CliError::Usage(format!(
                    "invalid --url '{url}': expected http://host:port or https://host:port"
                )))
            }
        }
        if uri.authority().is_none() || uri.query().is_some() {
            return Err(CliError::Usage(format!(
                "invalid --url '{url}': expected http://host:port[/prefix]"
            )));
        }
        Ok(Self {
            base: format!("{url}{BASE}"),
            key,
            client: client(),
        })
    }

    /// Sends a request to `path` (relative to the management base, with its query). A
    /// body is sent as `application/json`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Result<Answer, CliError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}/{path}", self.base))
            .header("x-functions-key", &self.key)
            .header("accept", "application/json");
        if let Some(t) = token {
            req = req.header("x-ms-continuation-token", t);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
            .map_err(|e| CliError::Usage(format!("cannot build the request: {e}")))?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| CliError::Connect(format!("{} did not answer in time", self.base)))?
            .map_err(|e| CliError::Connect(format!("cannot reach {}: {}", self.base, cause(&e))))?;
        let status = resp.status();
        let token = resp
            .headers()
            .get("x-ms-continuation-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty() && *t != "null")
            .map(str::to_string);
        let bytes = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| CliError::Connect("the answer did not arrive in time".into()))?
            .map_err(|e| CliError::Connect(format!("the answer broke off: {e}")))?
            .to_bytes();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        if !status.is_success() {
            let message = body
                .as_ref()
                .and_then(|b| b.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(CliError::Http {
                status,
                message: one_line(&message),
            });
        }
        Ok(Answer {
            body: body.unwrap_or(Value::Null),
            token,
        })
    }

    /// `GET` of a list, following continuation tokens: every item, or the first `limit`.
    /// The bool says whether more were left.
    pub async fn list_all(
        &self,
        path: &str,
        limit: Option<usize>,
    ) -> Result<(Vec<Value>, bool), CliError> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.send(Method::GET, path, token.as_deref(), None).await?;
            match page.body {
                Value::Array(a) => items.extend(a),
                other => {
                    return Err(CliError::Http {
                        status: StatusCode::BAD_GATEWAY,
                        message: format!("expected a JSON array, got {}", kind(&other)),
                    })
                }
            }
            if limit.is_some_and(|l| items.len() >= l) {
                let more = items.len() > limit.unwrap_or(0) || page.token.is_some();
                items.truncate(limit.unwrap_or(0));
                return Ok((items, more));
            }
            match page.token {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                Some(_) => {
                    return Err(CliError::Http {
                        status: StatusCode::BAD_GATEWAY,
                        message: "the host sent the same continuation token twice".into(),
                    })
                }
                None => return Ok((items, false)),
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The innermost cause of a transport error ("Connection refused", not "client error").
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// A server message as one bounded line.
fn one_line(s: &str) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= MAX_MESSAGE {
        return flat;
    }
    let mut cut: String = flat.chars().take(MAX_MESSAGE).collect();
    cut.push('…');
    cut
}

/// A path segment: everything but unreserved characters escaped (the host decodes `+` as
/// a space, so it must not go out bare).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from pairs (values escaped; empty values left out).
pub fn query(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", segment(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(feature = "tls")]
fn client() -> Client {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the ring provider supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

#[cfg(not(feature = "tls"))]
fn client() -> Client {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries_escape_what_the_host_would_misread() {
        assert_eq!(segment("a b+c/d"), "a%20b%2Bc%2Fd");
        assert_eq!(
            query(&[("reason", "done & dusted"), ("x", "")]),
            "?reason=done%20%26%20dusted"
        );
        assert_eq!(query(&[("x", "")]), "");
    }

    #[test]
    fn urls_are_checked_and_codes_are_distinct() {
        assert!(Api::new("ftp://x", String::new()).is_err());
        assert!(Api::new("localhost:7071", String::new()).is_err());
        let api = Api::new("http://127.0.0.1:7071/durable/", String::new()).unwrap();
        assert_eq!(
            api.base,
            "http://127.0.0.1:7071/durable/runtime/webhooks/durabletask"
        );
        let http = |s: u16| CliError::Http {
            status: StatusCode::from_u16(s).unwrap(),
            message: String::new(),
        };
        let codes: Vec<u8> = [
            CliError::Failed(String::new()),
            CliError::Usage(String::new()),
            CliError::Connect(String::new()),
            http(401),
            http(404),
            http(400),
            http(500),
        ]
        .iter()
        .map(CliError::exit_code)
        .collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(one_line("a\n  b"), "a b");
    }
}
