//! Durable HTTP calls from orchestrations. In: a [`DurableHttpRequest`]; out: the final
//! [`DurableHttpResponse`].
//!
//! - Each request runs as the built-in activity [`HTTP_ACTIVITY`] (provided by
//!   `durable-http`, which performs it with a real client), so its response is recorded in
//!   history and replays never repeat it.
//! - Asynchronous pattern (on by default, off per request with
//!   [`DurableHttpRequest::asynchronous_pattern`]): while the answer is `202 Accepted` with
//!   a `Location`, the orchestration waits on a durable timer and GETs the location again
//!   (the activity resolves a relative `Location` against the request URL, per RFC 3986),
//!   until the answer is something else. The wait is the response's `Retry-After` (seconds
//!   or an HTTP date), else the request's `default_poll_interval`, else the process-wide
//!   default ([`set_default_poll_interval`], 30 s). A `202` without `Location` is returned
//!   as the final response. Polls carry the same headers, token source, timeout and retry
//!   options, but never the management key headers ([`STRIPPED_ON_POLL`]).
//! - Failures: a transport error or a request that exceeds its `timeout` fails the task
//!   ([`TaskError::is_timeout`] tells timeouts apart). With a retry policy
//!   ([`DurableHttpRequest::retry`]) they are retried on durable timers, and so are the
//!   chosen status codes; when those attempts run out, the last response is returned.
//! - Credentials: a request names a token source registered with the host
//!   (`durable_http::activity::register_token_source`); the activity asks it for headers
//!   when it sends the request, so tokens are never part of the recorded request, the
//!   history or the status. Do not put secrets in `headers`: they are recorded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
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

/// The failure type the HTTP activity reports for a status code listed in
/// [`DurableHttpRequest::retry_status_codes`]; its `details` hold the response as JSON.
pub const RETRIABLE_STATUS: &str = "RetriableStatus";

/// The timeout of one request when the request sets none: 100 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(100);

static DEFAULT_POLL_MS: AtomicU64 = AtomicU64::new(30_000);

/// Sets the process-wide wait between polls of a `202` that has no `Retry-After`, for
/// requests that do not set [`DurableHttpRequest::default_poll_interval`] (30 s unless
/// changed). Only waits scheduled afterwards use it; recorded timers keep their time.
pub fn set_default_poll_interval(d: Duration) {
    DEFAULT_POLL_MS.store(
        d.as_millis().min(u64::MAX as u128) as u64,
        Ordering::Relaxed,
    );
}

/// The process-wide default wait between polls (see [`set_default_poll_interval`]).
pub fn default_poll_interval() -> Duration {
    Duration::from_millis(DEFAULT_POLL_MS.load(Ordering::Relaxed))
}

/// An HTTP request made durably by an orchestration.
///
/// Build it with [`DurableHttpRequest::get`], [`post_json`](Self::post_json) or
/// [`new`](Self::new) and the builder methods, or as a struct literal with
/// `..Default::default()`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DurableHttpRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Absolute URL (`http://`, or `https://` with `durable-http`'s `tls` feature).
    pub url: String,
    /// Request headers (names are compared case-insensitively). Recorded in history:
    /// use a token source for credentials.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Limit of the whole call, polling included, as in Durable Functions: each request
    /// (the first one and each poll) must answer within it, and no poll is scheduled past
    /// it. Unset: [`DEFAULT_TIMEOUT`] per request and no limit on polling. Over it, the
    /// task fails with a `Timeout` failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Follow the async `202` + `Location` pattern (default true).
    #[serde(default = "yes")]
    pub asynchronous_pattern: bool,
    /// Wait between polls when a `202` has no `Retry-After`; unset: the process-wide
    /// [`default_poll_interval`] (30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_poll_interval: Option<Duration>,
    /// Name of a token source registered with the host; it adds authentication headers
    /// when the request is sent, so tokens are never stored in history or status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_source: Option<String>,
    /// Status codes retried under [`retry`](Self::retry), e.g. 429, 503. When the
    /// attempts run out, the last such response is returned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_status_codes: Vec<u16>,
    /// Retries (on durable timers) for transport failures, timeouts and
    /// `retry_status_codes`. Without it, nothing is retried.
    #[serde(skip)]
    pub retry: Option<RetryPolicy>,
}

fn yes() -> bool {
    true
}

impl Default for DurableHttpRequest {
    /// A `GET` with no URL yet and default options.
    fn default() -> Self {
        Self {
            method: "GET".into(),
            url: String::new(),
            headers: BTreeMap::new(),
            body: None,
            timeout: None,
            asynchronous_pattern: true,
            default_poll_interval: None,
            token_source: None,
            retry_status_codes: Vec::new(),
            retry: None,
        }
    }
}

impl DurableHttpRequest {
    /// A request with the given method and URL and default options.
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            url: url.into(),
            ..Self::default()
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

    /// Sets the body.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sets the limit of each request (the first one and each poll).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Turns the `202` polling pattern on or off.
    pub fn asynchronous_pattern(mut self, on: bool) -> Self {
        self.asynchronous_pattern = on;
        self
    }

    /// Sets the poll interval used when a `202` has no `Retry-After`.
    pub fn default_poll_interval(mut self, d: Duration) -> Self {
        self.default_poll_interval = Some(d);
        self
    }

    /// Uses a token source registered with the host for authentication headers.
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

    /// The wait between polls when a `202` has no `Retry-After`.
    pub fn poll_interval(&self) -> Duration {
        self.default_poll_interval
            .unwrap_or_else(default_poll_interval)
    }

    /// The request that polls `location` after a 202: a GET with the same headers
    /// (management keys and content type removed), timeout, token source and retries.
    pub fn poll_request(&self, location: &str) -> Self {
        let mut r = self.clone();
        r.method = "GET".into();
        r.url = location.to_string();
        r.body = None;
        r.headers.retain(|k, _| {
            !STRIPPED_ON_POLL.iter().any(|s| k.eq_ignore_ascii_case(s))
                && !k.eq_ignore_ascii_case("content-type")
        });
        r
    }

    /// Checks what can be checked before sending: an absolute http(s) URL, a method.
    pub fn validate(&self) -> Result<(), String> {
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') => {}
            _ => return Err(format!("'{}' is not an absolute http(s) URL", self.url)),
        }
        if self.method.is_empty() || !self.method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!("'{}' is not an HTTP method", self.method));
        }
        Ok(())
    }
}

/// The response of a durable HTTP call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableHttpResponse {
    /// Status code.
    pub status: u16,
    /// Response headers (lower-case names; repeated headers joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// Body as text (invalid UTF-8 replaced).
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

    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// How long the response asks the client to wait, when `Retry-After` is a number
    /// of seconds.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }

    /// When the response asks the client to come back, from `Retry-After` as seconds
    /// after `now` or as an HTTP date (a past date means now).
    pub fn retry_after_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Some(d) = self.retry_after() {
            return Some(now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX));
        }
        let v = self.header("retry-after")?.trim();
        let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
        Some(at.max(now))
    }
}

impl OrchestrationContext {
    /// Makes an HTTP request durably (as a built-in activity). With the asynchronous
    /// pattern on (the default), a `202 Accepted` with a `Location` is polled on durable
    /// timers until the answer is not 202; the final response is returned whatever its
    /// status. Transport failures and timeouts fail the task (retried under the request's
    /// retry policy, as are its chosen status codes). See the [module](crate::http) docs.
    ///
    /// ```
    /// # use durable_core::{orchestrator, DurableHttpRequest, OrchestrationContext, OrchestrationError};
    /// # #[orchestrator]
    /// # async fn job(ctx: OrchestrationContext) -> Result<Option<String>, OrchestrationError> {
    /// let resp = ctx.call_http(DurableHttpRequest::get("https://example.com/jobs/7")).await?;
    /// let body = resp.is_success().then_some(resp.body);
    /// # Ok(body) }
    /// ```
    pub fn call_http(
        &self,
        request: DurableHttpRequest,
    ) -> BoxFuture<'static, Result<DurableHttpResponse, TaskError>> {
        let ctx = self.clone();
        Box::pin(async move {
            if let Err(msg) = request.validate() {
                return Err(TaskError {
                    kind: TaskKind::Http,
                    name: format!("{} {}", request.method, request.url),
                    failure: FailureDetails {
                        non_retriable: true,
                        ..FailureDetails::new("InvalidArgument", msg)
                    },
                });
            }
            // Replay-safe: the deadline comes from the orchestration's clock.
            let deadline = request.timeout.map(|t| {
                ctx.current_utc_datetime()
                    + chrono::Duration::from_std(t).unwrap_or(chrono::Duration::MAX)
            });
            let mut response = ctx.http_once(&request).await?;
            let mut current = request;
            while current.asynchronous_pattern && response.status == 202 {
                let Some(location) = response.header("location").map(str::to_string) else {
                    break;
                };
                let now = ctx.current_utc_datetime();
                let at = response.retry_after_at(now).unwrap_or_else(|| {
                    now + chrono::Duration::from_std(current.poll_interval())
                        .unwrap_or(chrono::Duration::MAX)
                });
                if let (Some(deadline), Some(limit)) = (deadline, current.timeout) {
                    if at >= deadline {
                        return Err(TaskError {
                            kind: TaskKind::Http,
                            name: format!("{} {}", current.method, current.url),
                            failure: FailureDetails {
                                non_retriable: true,
                                ..FailureDetails::new(
                                    "Timeout",
                                    format!(
                                        "timed out: still 202 Accepted at {location}, and the next poll would come after the request's timeout of {limit:?}"
                                    ),
                                )
                            },
                        });
                    }
                }
                ctx.create_timer(at).await;
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
        let name = format!("{} {}", request.method, request.url);
        let result = match &request.retry {
            Some(policy) => {
                self.call_activity_by_name_with_retry::<DurableHttpResponse>(
                    HTTP_ACTIVITY,
                    policy,
                    request,
                )
                .await
            }
            None if !request.retry_status_codes.is_empty() => {
                // Nothing retries them: do not turn them into failures.
                let mut r = request.clone();
                r.retry_status_codes.clear();
                self.call_activity_by_name::<DurableHttpResponse>(HTTP_ACTIVITY, &r)
                    .await
            }
            None => {
                self.call_activity_by_name::<DurableHttpResponse>(HTTP_ACTIVITY, request)
                    .await
            }
        };
        match result {
            Ok(r) => Ok(r),
            // The attempts ran out on a chosen status code: that answer is the response.
            Err(e) if e.failure.error_type == RETRIABLE_STATUS => {
                let last: Option<DurableHttpResponse> = e
                    .failure
                    .details
                    .as_deref()
                    .and_then(|d| serde_json::from_str(d).ok());
                match last {
                    Some(r) => Ok(r),
                    None => Err(TaskError {
                        kind: TaskKind::Http,
                        name,
                        ..e
                    }),
                }
            }
            Err(e) => Err(TaskError {
                kind: TaskKind::Http,
                name,
                ..e
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!p.headers.contains_key("content-type"));
        let upper = DurableHttpRequest {
            headers: [("X-Functions-Key".to_string(), "k".to_string())].into(),
            ..DurableHttpRequest::get("http://h/a")
        };
        assert!(upper.poll_request("http://h/b").headers.is_empty());
    }

    #[test]
    fn retry_after_as_seconds_or_date() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let resp = |v: &str| DurableHttpResponse {
            status: 202,
            headers: [("Retry-After".to_string(), v.to_string())].into(),
            body: String::new(),
        };
        assert_eq!(resp("7").retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(
            resp("7").retry_after_at(now),
            Some(now + chrono::Duration::seconds(7))
        );
        assert_eq!(
            resp("Wed, 01 May 2024 10:01:30 GMT").retry_after_at(now),
            Some(now + chrono::Duration::seconds(90))
        );
        assert_eq!(
            resp("Tue, 30 Apr 2024 10:00:00 GMT").retry_after_at(now),
            Some(now)
        );
        assert_eq!(resp("soon").retry_after_at(now), None);
        assert_eq!(resp("-3").retry_after_at(now), None);
    }

    #[test]
    fn requests_are_checked_before_sending() {
        assert!(DurableHttpRequest::get("http://h:1/x").validate().is_ok());
        assert!(DurableHttpRequest::get("https://h").validate().is_ok());
        for bad in ["ftp://h", "h/x", "http://", "http:///x", ""] {
            let e = DurableHttpRequest::get(bad).validate().unwrap_err();
            assert!(e.contains("not an absolute http(s) URL"), "{bad}: {e}");
        }
        let e = DurableHttpRequest::new("GE T", "http://h")
            .validate()
            .unwrap_err();
        assert!(e.contains("not an HTTP method"), "{e}");
        let d = DurableHttpRequest::default();
        assert!(d.asynchronous_pattern);
        assert_eq!(d.method, "GET");
        assert_eq!(d.poll_interval(), default_poll_interval());
        assert_eq!(
            d.clone()
                .default_poll_interval(Duration::from_secs(2))
                .poll_interval(),
            Duration::from_secs(2)
        );
    }
}
