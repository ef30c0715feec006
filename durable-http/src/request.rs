//! Requests and responses as start endpoints see them: `HttpRequest` in, `HttpResult`
//! out, with `HttpError` mapping every failure to a status code and a JSON body.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An HTTP request routed to a start endpoint.
#[derive(Clone, Debug)]
pub struct HttpRequest {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) params: HashMap<String, String>,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) base_url: String,
    pub(crate) configured_base_url: Option<String>,
    pub(crate) config: std::sync::Arc<crate::config::RequestConfig>,
}

impl HttpRequest {
    /// A request built by hand (for unit tests of handlers).
    pub fn new(method: Method, path_and_query: &str, body: impl Into<Bytes>) -> Self {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        Self {
            method,
            path: path.to_string(),
            params: HashMap::new(),
            query: parse_query(query),
            headers: HeaderMap::new(),
            body: body.into(),
            base_url: "http://localhost".into(),
            configured_base_url: Some("http://localhost".into()),
            config: Default::default(),
        }
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path (without the mount prefix and query).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A `{param}` segment of the route.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The first value of a query parameter.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a query parameter.
    pub fn query_all(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A header value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The raw body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as UTF-8 text; 400 when it is not.
    pub fn text(&self) -> Result<&str, HttpError> {
        std::str::from_utf8(&self.body)
            .map_err(|_| HttpError::bad_request("the request body is not valid UTF-8"))
    }

    /// Decodes the JSON body as `T`; malformed JSON or wrong types answer 400 with a
    /// message saying what is wrong and where.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        if self.body.is_empty() {
            return Err(HttpError::bad_request(
                "the request body is empty; expected JSON",
            ));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            let what = if e.is_syntax() || e.is_eof() {
                "malformed JSON"
            } else {
                "JSON of the wrong shape"
            };
            HttpError::bad_request(format!("{what} in the request body: {e}"))
        })
    }

    /// The base URL clients reach this host under (scheme, authority and mount prefix),
    /// for links handed to clients. Only trusted data: the configured public URL
    /// ([`HostBuilder::public_url`](crate::HostBuilder::public_url)), else, for a request
    /// that came through a trusted proxy, the host it names in valid forwarded headers,
    /// else the bound address; a host mounted without a public URL gives just the mount
    /// prefix (root-relative URLs). `Host` and `X-Forwarded-*` headers from anyone else
    /// never reach it.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The base URL from configuration alone: the public URL, else the bound address,
    /// with the mount prefix; never anything a request says, not even through a trusted
    /// proxy. Build URLs the server itself will call (`ctx.call_http` targets) from this.
    /// `None` for a host mounted in another application without a public URL.
    pub fn configured_base_url(&self) -> Option<&str> {
        self.configured_base_url.as_deref()
    }
}

/// Splits and decodes a query string as HTML forms encode it (`%XX` escapes, `+` for a
/// space).
pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Decodes the `%XX` escapes of a path segment (`+` stays a plus sign); bytes that are not
/// UTF-8 become U+FFFD. Where a segment names something to create or change, use
/// [`path_segment`], which refuses them.
pub(crate) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Decodes a path segment like [`percent_decode`], with 400 when it is not UTF-8.
pub(crate) fn path_segment(s: &str) -> Result<String, HttpError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| {
            HttpError::bad_request(format!(
                "the path segment '{s}' does not decode to UTF-8 text"
            ))
        })
}

/// What [`percent_encode`] leaves as it is: RFC 3986's unreserved characters plus `:` and
/// `@`, which path segments allow.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b':')
    .remove(b'@');

/// Percent-encodes a path segment or query value.
pub(crate) fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// A response from a start endpoint. The status type is re-exported as
/// [`durable_http::StatusCode`](crate::StatusCode) (and the whole `http` crate as
/// [`durable_http::http`](crate::http)), so no direct `http` dependency is needed:
///
/// ```
/// use durable_http::{HttpResponse, StatusCode};
///
/// let resp = HttpResponse::json(StatusCode::CONFLICT, &serde_json::json!({ "error": "busy" }))
///     .with_header("retry-after", "5");
/// assert_eq!(resp.status(), StatusCode::CONFLICT);
/// assert_eq!(resp.status(), durable_http::http::StatusCode::CONFLICT);
/// ```
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
}

impl HttpResponse {
    /// An empty response with a status.
    pub fn empty(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A JSON response.
    pub fn json(status: StatusCode, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
        Self::empty(status)
            .with_header("content-type", "application/json; charset=utf-8")
            .with_body(body)
    }

    /// A plain-text response.
    pub fn text(status: StatusCode, text: impl Into<String>) -> Self {
        Self::empty(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(text.into())
    }

    /// A 200 HTML response.
    pub fn html(html: impl Into<String>) -> Self {
        Self::empty(StatusCode::OK)
            .with_header("content-type", "text/html; charset=utf-8")
            .with_body(html.into())
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// An error answered as `{"error": "..."}` with a status code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    /// The status code.
    pub status: StatusCode,
    /// What was wrong.
    pub message: String,
    retry_after: Option<u64>,
    /// A store failure that may pass: the host sets its `Retry-After` from
    /// [`HostBuilder::store_retry_after`](crate::HostBuilder::store_retry_after).
    store_unavailable: bool,
}

/// The `Retry-After` seconds of a 503 for a store failure that may pass (busy, full
/// disk) when nothing else chose them.
const STORE_RETRY_AFTER_SECS: u64 = 2;

impl HttpError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            store_unavailable: false,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// Answers with a `Retry-After` header of `seconds`.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// For a store failure that may pass, the same error answering with `Retry-After:
    /// seconds`; any other error unchanged.
    pub(crate) fn with_store_retry_after(self, seconds: u64) -> Self {
        if self.store_unavailable {
            self.with_retry_after(seconds)
        } else {
            self
        }
    }

    /// The JSON response for this error.
    pub fn into_response(self) -> HttpResponse {
        let r = HttpResponse::json(self.status, &serde_json::json!({ "error": self.message }));
        match self.retry_after {
            Some(s) => r.with_header("retry-after", s.to_string()),
            None => r,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for HttpError {}

impl From<durable_core::Error> for HttpError {
    /// Store failures are logged here with their cause, the one place that sees them for a
    /// request; the client is told only whether to come back: 503 with `Retry-After` when a
    /// retry may pass, else a generic 500.
    fn from(e: durable_core::Error) -> Self {
        use durable_core::Error as E;
        let status = match &e {
            E::UnknownName { .. } | E::InvalidArgument(_) | E::DuplicateName(_) => {
                StatusCode::BAD_REQUEST
            }
            E::InstanceNotFound(_) => StatusCode::NOT_FOUND,
            E::InstanceExists { .. } => StatusCode::CONFLICT,
            E::InvalidStatus { .. } => StatusCode::GONE,
            E::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            E::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            E::Store(_) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            E::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        match &e {
            E::Store(_) if e.is_retryable() => {
                tracing::warn!(error = %e, "store unavailable while serving a request; answered 503");
                let mut e = Self::new(
                    status,
                    "storage is temporarily unavailable; try again after the Retry-After delay",
                )
                .with_retry_after(STORE_RETRY_AFTER_SECS);
                e.store_unavailable = true;
                e
            }
            E::Store(_) => {
                tracing::error!(error = %e, "store failure while serving a request; answered 500");
                Self::new(status, "internal error: the store failed")
            }
            _ => Self::new(status, e.to_string()),
        }
    }
}

/// What a start endpoint returns.
pub type HttpResult = Result<HttpResponse, HttpError>;

/// Converts what a start endpoint returns into an [`HttpResult`] (used by generated code).
pub trait IntoHttpResult {
    /// The conversion.
    fn into_http_result(self) -> HttpResult;
}

impl IntoHttpResult for HttpResult {
    fn into_http_result(self) -> HttpResult {
        self
    }
}

impl IntoHttpResult for HttpResponse {
    fn into_http_result(self) -> HttpResult {
        Ok(self)
    }
}

/// The host settings a request carries.
pub(crate) fn request_config(req: &HttpRequest) -> &crate::config::RequestConfig {
    &req.config
}

/// The response as hyper sends it; headers whose name or value is not valid HTTP are left
/// out.
pub(crate) fn into_hyper(r: HttpResponse) -> http::Response<http_body_util::Full<Bytes>> {
    into_response_body(r)
}

/// The response as an `http::Response` with any body type made from bytes.
pub(crate) fn into_response_body<B: From<Bytes>>(r: HttpResponse) -> http::Response<B> {
    let mut resp = http::Response::new(B::from(r.body));
    *resp.status_mut() = r.status;
    for (k, v) in r.headers {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(k.as_bytes()),
            http::header::HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let q = parse_query("s=01%2F02%2F2024&e=a+b&x&runtimeStatus=Running&runtimeStatus=Failed");
        assert_eq!(q[0], ("s".into(), "01/02/2024".into()));
        assert_eq!(q[1], ("e".into(), "a b".into()));
        assert_eq!(q[2], ("x".into(), String::new()));
        assert_eq!(
            parse_query("t=2024-01-01T00:00:00%2B01:00")[0].1,
            "2024-01-01T00:00:00+01:00"
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
        assert_eq!(percent_encode("a+b:c@d"), "a%2Bb:c@d");
    }

    #[test]
    fn path_segments_keep_plus_signs() {
        assert_eq!(percent_decode("a+b"), "a+b");
        assert_eq!(percent_decode("a%2Bb%20c"), "a+b c");
        assert_eq!(path_segment("caf%C3%A9+1").unwrap(), "café+1");
        let e = path_segment("%FF%FE").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        for id in ["a+b", "a b", "x%y", "ü/?#"] {
            assert_eq!(percent_decode(&percent_encode(id)), id);
        }
    }

    #[test]
    fn json_errors_say_what_is_wrong() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct In {
            n: u32,
        }
        let r = HttpRequest::new(Method::POST, "/x", "{\"n\": \"seven\"}");
        let e = r.json::<In>().unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("wrong shape"), "{}", e.message);
        assert!(e.message.contains("expected u32"), "{}", e.message);
        let r = HttpRequest::new(Method::POST, "/x", "{\"n\": ");
        assert!(r
            .json::<In>()
            .unwrap_err()
            .message
            .contains("malformed JSON"));
    }

    /// A store failure that may pass is a 503 with `Retry-After`; any other is a 500. Neither
    /// shows the cause (it goes to the log).
    #[test]
    fn store_failures_answer_503_when_a_retry_may_pass_and_500_otherwise() {
        use durable_core::store::StoreError;
        for (backend, status, retry) in [
            (StoreError::unavailable("the disk is full"), 503, Some("2")),
            (
                StoreError::corrupt("the database file is corrupt"),
                500,
                None,
            ),
        ] {
            let store =
                backend.with_source(std::io::Error::other("/var/lib/app/durable.db: I/O error"));
            let e = HttpError::from(durable_core::Error::from(store));
            assert_eq!(e.status.as_u16(), status);
            assert!(!e.message.contains("durable.db"), "{}", e.message);
            let resp = e.into_response();
            assert_eq!(resp.header("retry-after"), retry);
            let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
            assert!(body["error"].is_string(), "{body}");
        }
    }
}
