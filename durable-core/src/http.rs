//! Durable HTTP calls from orchestrations. In: a [`DurableHttpRequest`]; out: the final
//! [`DurableHttpResponse`]. The request runs as the built-in activity
//! [`HTTP_ACTIVITY`] (provided by `durable-http`), so it is durable and replay-safe; while
//! the answer is `202 Accepted` with a `Location`, the orchestration waits `Retry-After` on
//! a durable timer and polls the location again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::context::OrchestrationContext;
use crate::error::{TaskError, TaskKind};
use crate::history::FailureDetails;
use crate::registry::BoxFuture;
use crate::retry::RetryPolicy;

/// The durable name of the built-in activity that performs HTTP requests.
pub const HTTP_ACTIVITY: &str = "durable::http";

/// Header names never forwarded to a polled `Location` (management keys).
pub const STRIPPED_ON_POLL: &[&str] = &["x-functions-key"];

/// An HTTP request made durably by an orchestration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DurableHttpRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Absolute URL (`http://` or `https://`).
    pub url: String,
    /// Request headers (names are compared case-insensitively).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Timeout of each attempt (default 100 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Follow the async 202 + `Location` pattern (default true).
    #[serde(default = "yes")]
    pub asynchronous_pattern: bool,
    /// Wait between polls when the 202 has no `Retry-After` (default 30 s).
    #[serde(default = "default_poll")]
    pub default_poll_interval: Duration,
    /// Name of a token source registered with the host; it adds an `Authorization`
    /// header at call time, so tokens are never stored in history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_source: Option<String>,
    /// Status codes that count as failures to retry (with `retry`), e.g. 500, 503.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_status_codes: Vec<u16>,
    /// Retries for transport failures, timeouts and `retry_status_codes`.
    #[serde(skip)]
    pub retry: Option<RetryPolicy>,
}

fn yes() -> bool {
    true
}

fn default_poll() -> Duration {
    Duration::from_secs(30)
}

impl DurableHttpRequest {
    /// A request with the given method and URL and default options.
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            url: url.into(),
            headers: BTreeMap::new(),
            body: None,
            timeout: None,
            asynchronous_pattern: true,
            default_poll_interval: default_poll(),
            token_source: None,
            retry_status_codes: Vec::new(),
            retry: None,
        }
    }

    /// A GET request.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A POST request with a JSON body.
    pub fn post_json(url: impl Into<String>, body: &impl Serialize) -> Self {
        let mut r = Self::new("POST", url);
        r.body = serde_json::to_string(body).ok();
        r.headers
            .insert("content-type".into(), "application/json".into());
        r
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.insert(name.to_ascii_lowercase(), value.into());
        self
    }

    /// Sets the per-attempt timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Turns the 202 polling pattern on or off.
    pub fn asynchronous_pattern(mut self, on: bool) -> Self {
        self.asynchronous_pattern = on;
        self
    }

    /// Sets the poll interval used when a 202 has no `Retry-After`.
    pub fn default_poll_interval(mut self, d: Duration) -> Self {
        self.default_poll_interval = d;
        self
    }

    /// Uses a token source registered with the host for the `Authorization` header.
    pub fn token_source(mut self, name: &str) -> Self {
        self.token_source = Some(name.to_string());
        self
    }

    /// Retries transport failures, timeouts and these status codes under `policy`.
    pub fn retry(mut self, policy: RetryPolicy, status_codes: &[u16]) -> Self {
        self.retry = Some(policy);
        self.retry_status_codes = status_codes.to_vec();
        self
    }

    /// The request that polls `location` after a 202: a GET with the same headers
    /// (management keys removed), timeout and token source.
    pub fn poll_request(&self, location: &str) -> Self {
        let mut r = self.clone();
        r.method = "GET".into();
        r.url = location.to_string();
        r.body = None;
        r.headers
            .retain(|k, _| !STRIPPED_ON_POLL.iter().any(|s| k.eq_ignore_ascii_case(s)));
        r.headers.remove("content-type");
        r
    }
}

/// The response of a durable HTTP call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableHttpResponse {
    /// Status code.
    pub status: u16,
    /// Response headers (lower-case names).
    pub headers: BTreeMap<String, String>,
    /// Body as text.
    pub body: String,
}

impl DurableHttpResponse {
    /// A header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Decodes the body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.body)
    }

    /// How long a 202 asks the client to wait, if it says.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }
}

impl OrchestrationContext {
    /// Makes an HTTP request durably (as a built-in activity). With the asynchronous
    /// pattern on (the default), a `202 Accepted` with a `Location` is polled on durable
    /// timers until the answer is not 202; the final response is returned whatever its
    /// status. Transport failures and timeouts fail the task (retried under the request's
    /// retry policy, as are its chosen status codes).
    pub fn call_http(
        &self,
        request: DurableHttpRequest,
    ) -> BoxFuture<'static, Result<DurableHttpResponse, TaskError>> {
        let ctx = self.clone();
        Box::pin(async move {
            if !(request.url.starts_with("http://") || request.url.starts_with("https://")) {
                return Err(TaskError {
                    kind: TaskKind::Http,
                    name: request.url.clone(),
                    failure: FailureDetails::new(
                        "InvalidArgument",
                        format!("'{}' is not an absolute http(s) URL", request.url),
                    ),
                });
            }
            let mut response = ctx.http_once(&request).await?;
            let mut current = request;
            while current.asynchronous_pattern && response.status == 202 {
                let Some(location) = response.header("location").map(str::to_string) else {
                    break;
                };
                let location = resolve_location(&current.url, &location);
                let wait = response
                    .retry_after()
                    .unwrap_or(current.default_poll_interval);
                ctx.create_timer(wait).await;
                current = current.poll_request(&location);
                response = ctx.http_once(&current).await?;
            }
            Ok(response)
        })
    }

    async fn http_once(
        &self,
        request: &DurableHttpRequest,
    ) -> Result<DurableHttpResponse, TaskError> {
        let map = |e: TaskError| TaskError {
            kind: TaskKind::Http,
            name: format!("{} {}", request.method, request.url),
            ..e
        };
        match &request.retry {
            Some(policy) => self
                .call_activity_by_name_with_retry::<DurableHttpResponse>(
                    HTTP_ACTIVITY,
                    policy,
                    request,
                )
                .await
                .map_err(map),
            None => self
                .call_activity_by_name::<DurableHttpResponse>(HTTP_ACTIVITY, request)
                .await
                .map_err(map),
        }
    }
}

/// Resolves a `Location` header against the request URL (absolute, or absolute path).
pub fn resolve_location(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    if location.starts_with('/') {
        format!("{}{location}", &base[..host_end])
    } else {
        let dir_end = base
            .rfind('/')
            .filter(|&i| i >= host_end)
            .unwrap_or(host_end);
        format!("{}/{location}", &base[..dir_end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_request_url() {
        assert_eq!(
            resolve_location("http://a:1/x/y", "http://b/z"),
            "http://b/z"
        );
        assert_eq!(resolve_location("http://a:1/x/y", "/s/1"), "http://a:1/s/1");
        assert_eq!(
            resolve_location("http://a:1/x/y", "s/1"),
            "http://a:1/x/s/1"
        );
        assert_eq!(resolve_location("http://a:1", "/s"), "http://a:1/s");
    }

    #[test]
    fn polling_drops_management_keys() {
        let r = DurableHttpRequest::post_json("http://h/start", &1)
            .header("x-functions-key", "secret")
            .header("x-trace", "t");
        let p = r.poll_request("http://h/status/1");
        assert_eq!(p.method, "GET");
        assert!(p.body.is_none());
        assert!(!p.headers.contains_key("x-functions-key"));
        assert_eq!(p.headers.get("x-trace").map(String::as_str), Some("t"));
    }
}
