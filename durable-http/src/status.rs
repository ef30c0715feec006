//! The public status endpoint and the async request-reply helpers start endpoints use:
//! `202 Accepted` with `Location` and `Retry-After` while an instance runs, `200` when it
//! is done. Nothing here reveals inputs, histories, management URLs or keys.

use std::time::Duration;

use chrono::{DateTime, Utc};
use durable_core::{DurableClient, InstanceState, RuntimeStatus};
use http::StatusCode;
use serde_json::{json, Value};

use crate::request::{percent_encode, HttpError, HttpRequest, HttpResponse, HttpResult};

/// The longest `?wait=` a status request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(120);

/// Formats a time as Durable Functions does: `YYYY-MM-DDTHH:MM:SSZ`.
pub fn df_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
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

/// Parses `30s`, `500ms`, `2m` or plain seconds.
pub fn parse_wait(s: &str) -> Result<Duration, HttpError> {
    let s = s.trim();
    let bad = || {
        HttpError::bad_request(format!(
            "invalid wait '{s}': use e.g. 30s, 500ms, 2m or a number of seconds"
        ))
    };
    let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(v * unit).min(MAX_WAIT))
}

/// A short, non-leaking reason for a failed or terminated instance.
fn reason(state: &InstanceState) -> Option<String> {
    let text = match state.status {
        RuntimeStatus::Failed => state
            .failure
            .as_ref()
            .map(|f| f.message.clone())
            .unwrap_or_else(|| "failed".into()),
        RuntimeStatus::Terminated => match json_value(state.output.as_deref()) {
            Value::String(s) => s,
            _ => "terminated".into(),
        },
        _ => return None,
    };
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    Some(short)
}

/// The public status body.
pub(crate) fn public_body(state: &InstanceState) -> Value {
    let mut body = json!({
        "id": state.instance_id,
        "name": state.name,
        "runtimeStatus": state.status.as_str(),
        "customStatus": json_value(state.custom_status.as_deref()),
        "output": if state.status == RuntimeStatus::Completed { json_value(state.output.as_deref()) } else { Value::Null },
        "createdTime": df_time(state.created_at),
        "lastUpdatedTime": df_time(state.last_updated_at),
    });
    if let Some(r) = reason(state) {
        body["reason"] = Value::String(r);
    }
    body
}

/// Answers a public status request.
pub(crate) async fn public_status(
    client: &DurableClient,
    req: &HttpRequest,
    prefix: &str,
    id: &str,
    retry_after: u64,
) -> HttpResult {
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
    let body = public_body(&state);
    if state.status.is_terminal() {
        Ok(HttpResponse::json(StatusCode::OK, &body))
    } else {
        let url = status_url(req.base_url(), prefix, id);
        Ok(HttpResponse::json(StatusCode::ACCEPTED, &body)
            .with_header("location", url)
            .with_header("retry-after", retry_after.to_string()))
    }
}

/// The async request-reply answers for start endpoints.
pub trait ClientExt {
    /// `202 Accepted` with `Location` (the public status URL), `Retry-After` and a body
    /// `{"id", "statusQueryGetUri"}`. Never management URLs or keys.
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
}

impl ClientExt for DurableClient {
    fn check_status_response(&self, req: &HttpRequest, instance_id: &str) -> HttpResponse {
        let cfg = crate::host::request_config(req);
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
            Ok(state) => Ok(HttpResponse::json(StatusCode::OK, &public_body(&state))),
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

    #[test]
    fn waits_parse_and_cap() {
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_wait("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_wait("10").unwrap(), Duration::from_secs(10));
        assert!(parse_wait("1h").is_err());
        assert!(parse_wait("-1").is_err());
        assert_eq!(parse_wait("9999").unwrap(), MAX_WAIT);
    }
}
