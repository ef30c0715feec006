//! The public status endpoint and the async request-reply helpers start endpoints use:
//! `202 Accepted` with `Location` and `Retry-After` while an instance runs, `200` when it
//! is done. Nothing here reveals inputs, histories, management URLs or keys.

use std::time::Duration;

use chrono::{DateTime, Utc};
use durable_core::{
    DurableClient, InstanceState, OrchestrationStatus, RuntimeStatus, StatusOptions,
};
use http::StatusCode;
use serde_json::{json, Value};

use crate::config::PublicStatus;
use crate::request::{percent_encode, HttpError, HttpRequest, HttpResponse, HttpResult};

/// The longest `?wait=` a status request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(120);

/// Formats a time as Durable Functions does: `YYYY-MM-DDTHH:MM:SSZ`.
pub fn df_time(t: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // chrono's own rendering of years outside four digits (a sign, more digits).
        return t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    }
    // Written directly: parsing chrono's format string on each call cost more than the
    // rest of a status answer's JSON.
    format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses stored JSON text as a value (null when absent).
pub(crate) fn json_value(s: Option<&str>) -> Value {
    s.and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null)
}

/// The public URL of an instance's status.
pub(crate) fn status_url(base: &str, prefix: &str, id: &str) -> String {
    format!("{base}{prefix}/{}", percent_encode(id))
}

/// Seconds from a request as a `Duration`, checked before converting: `None` for NaN,
/// infinite or negative values; anything over `max` (1e20 included) is `max`.
pub(crate) fn checked_seconds(secs: f64, max: Duration) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max)))
}

/// Parses `30s`, `500ms`, `2m` or plain seconds, up to `max` (larger values are `max`).
pub(crate) fn parse_duration(s: &str, max: Duration) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    checked_seconds(v * unit, max)
}

/// Parses `30s`, `500ms`, `2m` or plain seconds; waits over 120 s are capped at 120 s.
pub fn parse_wait(s: &str) -> Result<Duration, HttpError> {
    parse_duration(s, MAX_WAIT).ok_or_else(|| {
        HttpError::bad_request(format!(
            "invalid wait '{}': use e.g. 30s, 500ms, 2m or a number of seconds",
            s.trim()
        ))
    })
}

/// The wait a public status request asks for with `?wait=` (at most [`MAX_WAIT`]), from
/// its raw query: the time its long poll gets on top of the request timeout. `None`
/// without one or for a wait the handler refuses.
pub(crate) fn long_poll(query: &str) -> Option<Duration> {
    if !query.contains("wait") {
        return None;
    }
    crate::request::parse_query(query)
        .iter()
        .find(|(k, _)| k == "wait")
        .and_then(|(_, v)| parse_wait(v).ok())
}

/// The reason a failed or terminated instance shows publicly: fixed texts unless the
/// app chose [`PublicStatus::Full`].
fn reason(state: &InstanceState, mode: PublicStatus) -> Option<String> {
    let full = mode == PublicStatus::Full;
    let text = match state.status {
        RuntimeStatus::Failed if full => state
            .failure
            .as_ref()
            .map(|f| f.message.clone())
            .unwrap_or_else(|| "failed".into()),
        RuntimeStatus::Failed => "the orchestration failed".into(),
        RuntimeStatus::Terminated if full => match json_value(state.output.as_deref()) {
            Value::String(s) => s,
            _ => "terminated".into(),
        },
        RuntimeStatus::Terminated => "terminated".into(),
        _ => return None,
    };
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    Some(short)
}

/// The public status body.
pub(crate) fn public_body(state: &InstanceState, mode: PublicStatus) -> Value {
    let mut body = json!({
        "id": state.instance_id,
        "name": state.name,
        "runtimeStatus": state.status.as_str(),
        "customStatus": json_value(state.custom_status.as_deref()),
        "output": if state.status == RuntimeStatus::Completed { json_value(state.output.as_deref()) } else { Value::Null },
        "createdTime": df_time(state.created_at),
        "lastUpdatedTime": df_time(state.last_updated_at),
    });
    if let Some(r) = reason(state, mode) {
        body["reason"] = Value::String(r);
    }
    body
}

/// Answers a public status request.
pub(crate) async fn public_status(
    client: &DurableClient,
    req: &HttpRequest,
    id: &str,
) -> HttpResult {
    let cfg = crate::request::request_config(req);
    durable_core::client::validate_instance_id(id).map_err(HttpError::from)?;
    let wait = req.query("wait").map(parse_wait).transpose()?;
    let mut state = client
        .get_state(id)
        .await?
        .ok_or_else(|| HttpError::not_found(format!("no instance with id '{id}'")))?;
    if let Some(wait) = wait {
        if !state.status.is_terminal() {
            match client.wait_for_completion(id, wait).await {
                Ok(s) => state = s,
                Err(durable_core::Error::Timeout(_)) => {
                    state = client.get_state(id).await?.unwrap_or(state);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let body = public_body(&state, cfg.public_status);
    if state.status.is_terminal() {
        Ok(HttpResponse::json(StatusCode::OK, &body))
    } else {
        let url = status_url(req.base_url(), &cfg.status_prefix, id);
        Ok(HttpResponse::json(StatusCode::ACCEPTED, &body)
            .with_header("location", url)
            .with_header("retry-after", cfg.retry_after.to_string()))
    }
}

/// The async request-reply answers for start endpoints.
pub trait ClientExt {
    /// `202 Accepted` with `Location` (the public status URL), `Retry-After` and a body
    /// `{"id", "statusQueryGetUri"}`. Never management URLs or keys. The URL starts with
    /// [`HttpRequest::base_url`]. With [`PublicStatus::Off`] the body is `{"id"}` alone.
    fn check_status_response(&self, req: &HttpRequest, instance_id: &str) -> HttpResponse;

    /// `200` with the output when the instance completes within `timeout`; otherwise the
    /// same `202` as [`check_status_response`](Self::check_status_response). A failed or
    /// terminated instance answers `200` with its public status.
    fn wait_for_completion_or_check_status_response(
        &self,
        req: &HttpRequest,
        instance_id: &str,
        timeout: Duration,
    ) -> impl std::future::Future<Output = HttpResult> + Send;

    /// The instance's status for a custom status route: `?` on the result answers `404`
    /// when no instance has this id, including an id no instance could have (empty, too
    /// long, control characters), and the store's errors as the host does (`503` when
    /// retrying may help, `500` otherwise).
    ///
    /// ```no_run
    /// # use durable_core::{DurableClient, StatusOptions};
    /// # use durable_http::{ClientExt, HttpRequest, HttpResponse, HttpResult, StatusCode};
    /// async fn order_status(client: DurableClient, req: HttpRequest) -> HttpResult {
    ///     let id = req.param("id").unwrap_or_default();
    ///     let status = client.status_or_not_found(id, StatusOptions::default()).await?;
    ///     let progress = status.custom_status::<serde_json::Value>().ok().flatten();
    ///     Ok(HttpResponse::json(StatusCode::OK, &progress))
    /// }
    /// ```
    fn status_or_not_found(
        &self,
        instance_id: &str,
        options: StatusOptions,
    ) -> impl std::future::Future<Output = Result<OrchestrationStatus, HttpError>> + Send;
}

impl ClientExt for DurableClient {
    async fn status_or_not_found(
        &self,
        instance_id: &str,
        options: StatusOptions,
    ) -> Result<OrchestrationStatus, HttpError> {
        match self.get_status(instance_id, options).await {
            Ok(Some(status)) => Ok(status),
            Ok(None) | Err(durable_core::Error::InvalidArgument(_)) => {
                Err(HttpError::not_found("no instance has this id"))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn check_status_response(&self, req: &HttpRequest, instance_id: &str) -> HttpResponse {
        let cfg = crate::request::request_config(req);
        if cfg.public_status == PublicStatus::Off {
            return HttpResponse::json(StatusCode::ACCEPTED, &json!({ "id": instance_id }));
        }
        let url = status_url(req.base_url(), &cfg.status_prefix, instance_id);
        HttpResponse::json(
            StatusCode::ACCEPTED,
            &json!({ "id": instance_id, "statusQueryGetUri": url }),
        )
        .with_header("location", url)
        .with_header("retry-after", cfg.retry_after.to_string())
    }

    async fn wait_for_completion_or_check_status_response(
        &self,
        req: &HttpRequest,
        instance_id: &str,
        timeout: Duration,
    ) -> HttpResult {
        match self.wait_for_completion(instance_id, timeout).await {
            Ok(state) if state.status == RuntimeStatus::Completed => Ok(HttpResponse::json(
                StatusCode::OK,
                &json_value(state.output.as_deref()),
            )),
            Ok(state) => Ok(HttpResponse::json(
                StatusCode::OK,
                &public_body(&state, crate::request::request_config(req).public_status),
            )),
            Err(durable_core::Error::Timeout(_)) => {
                Ok(self.check_status_response(req, instance_id))
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_or_impossible_instance_id_is_a_404() {
        let store = std::sync::Arc::new(durable_core::MemoryStore::new());
        let client = DurableClient::new(store);
        for id in ["no-such-instance", "", "bad\nid"] {
            let err = client
                .status_or_not_found(id, StatusOptions::default())
                .await
                .unwrap_err();
            assert_eq!(err.status, StatusCode::NOT_FOUND, "{id:?}");
        }
    }

    #[test]
    fn times_format_as_chrono_does() {
        use chrono::TimeZone;
        for (y, mo, d, h, mi, s) in [
            (2024, 1, 31, 12, 0, 5),
            (1970, 1, 1, 0, 0, 0),
            (9999, 12, 31, 23, 59, 59),
            (0, 2, 29, 1, 2, 3),
            (10000, 1, 1, 0, 0, 0),
            (-1, 6, 15, 7, 8, 9),
        ] {
            let t = Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap();
            let t = t + chrono::Duration::milliseconds(789);
            assert_eq!(
                df_time(t),
                t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "{t:?}"
            );
        }
        let t = Utc.with_ymd_and_hms(2024, 1, 31, 12, 0, 5).unwrap();
        assert_eq!(df_time(t), "2024-01-31T12:00:05Z");
    }

    #[test]
    fn waits_parse_and_cap() {
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_wait("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_wait("10").unwrap(), Duration::from_secs(10));
        assert!(parse_wait("1h").is_err());
        assert!(parse_wait("-1").is_err());
        assert_eq!(parse_wait("9999").unwrap(), MAX_WAIT);
        // Huge values are capped before any conversion; non-numbers are refused.
        for huge in ["1e20", "1e20ms", "1e300m", "18446744073709551616"] {
            assert_eq!(parse_wait(huge).unwrap(), MAX_WAIT, "{huge}");
        }
        for bad in ["NaN", "inf", "-inf", "-0.5s", "1e999", ""] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
        assert_eq!(
            checked_seconds(1e20, Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(checked_seconds(f64::NAN, Duration::from_secs(5)), None);
    }
}
