//! The management API's query parameters and request checks: each read and validated
//! before anything changes, a bad value answered with 400 naming the parameter.

use std::time::Duration;

use chrono::{DateTime, Utc};
use durable_core::{EntityId, InstanceFilter, RuntimeStatus};

use crate::request::{HttpError, HttpRequest};

/// A boolean query parameter: `true` or `false` in any case; absent or empty is the
/// default; anything else is 400.
pub(super) fn flag(req: &HttpRequest, name: &str, default: bool) -> Result<bool, HttpError> {
    match req.query(name).map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(HttpError::bad_request(format!(
            "invalid {name} '{v}': expected true or false"
        ))),
    }
}

pub(super) fn parse_time(
    req: &HttpRequest,
    name: &str,
) -> Result<Option<DateTime<Utc>>, HttpError> {
    let Some(v) = req.query(name).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, fmt) {
            return Ok(Some(t.and_utc()));
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()));
    }
    Err(HttpError::bad_request(format!(
        "invalid {name} '{v}': use an ISO 8601 time such as 2024-01-31T12:00:00Z"
    )))
}

/// The longest `timeout` or `pollingInterval` a start or restart may ask for.
pub(super) const MAX_WAIT_PARAM: Duration = Duration::from_secs(3600);

pub(super) fn seconds(req: &HttpRequest, name: &str) -> Result<Option<Duration>, HttpError> {
    req.query(name)
        .map(|v| {
            seconds_value(v).map_err(|()| {
                HttpError::bad_request(format!(
                    "invalid {name} '{v}': expected a number of seconds"
                ))
            })
        })
        .transpose()
}

/// A number of seconds from a query parameter, at most [`MAX_WAIT_PARAM`].
pub(super) fn seconds_value(v: &str) -> Result<Duration, ()> {
    v.trim()
        .parse::<f64>()
        .ok()
        .and_then(|s| crate::status::checked_seconds(s, MAX_WAIT_PARAM))
        .ok_or(())
}

/// The `timeout` and `pollingInterval` of a start or restart, checked before anything
/// changes: both (seconds) ask for the wait variant; an interval longer than the timeout
/// is refused as the reference system refuses it.
pub(super) fn wait_params(req: &HttpRequest) -> Result<Option<Duration>, HttpError> {
    let timeout = seconds(req, "timeout")?;
    let interval = seconds(req, "pollingInterval")?;
    match (timeout, interval) {
        (Some(t), Some(i)) if i > t => Err(HttpError::bad_request(format!(
            "pollingInterval ({}s) must not be greater than timeout ({}s)",
            i.as_secs_f64(),
            t.as_secs_f64()
        ))),
        (Some(t), Some(_)) => Ok(Some(t)),
        _ => Ok(None),
    }
}

/// `historyFormat=internal` (an extension of this host): the history as the engine
/// records it, every event with its inputs, results and sequence numbers, in
/// [`HistoryEvent`]'s own JSON, so a tool can replay the execution from it.
pub(super) fn internal_history(req: &HttpRequest) -> Result<bool, HttpError> {
    match req.query("historyFormat").map(str::trim) {
        None | Some("") => Ok(false),
        Some(f) if f.eq_ignore_ascii_case("internal") => Ok(true),
        Some(f) => Err(HttpError::bad_request(format!(
            "invalid historyFormat '{f}': the only format is 'internal'"
        ))),
    }
}

pub(super) fn filter_from(req: &HttpRequest) -> Result<InstanceFilter, HttpError> {
    Ok(InstanceFilter {
        statuses: statuses(req)?,
        created_from: parse_time(req, "createdTimeFrom")?,
        created_to: parse_time(req, "createdTimeTo")?,
        instance_id_prefix: req
            .query("instanceIdPrefix")
            .filter(|p| !p.is_empty())
            .map(str::to_string),
    })
}

/// `runtimeStatus`, comma-separated and/or repeated. An unknown value is 400: dropping it
/// would widen the filter (a bulk purge would delete more than was asked).
pub(super) fn statuses(req: &HttpRequest) -> Result<Vec<RuntimeStatus>, HttpError> {
    req.query_all("runtimeStatus")
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            RuntimeStatus::parse(v).ok_or_else(|| {
                let known: Vec<&str> = RuntimeStatus::ALL.iter().map(|s| s.as_str()).collect();
                HttpError::bad_request(format!(
                    "invalid runtimeStatus '{}': expected one of {}",
                    v.trim(),
                    known.join(", ")
                ))
            })
        })
        .collect()
}

pub(super) fn page_size(req: &HttpRequest) -> Result<usize, HttpError> {
    match req.query("top") {
        None => Ok(100),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .map(|n| n.min(1000))
            .ok_or_else(|| {
                HttpError::bad_request(format!("invalid top '{v}': expected a positive number"))
            }),
    }
}

/// The request's `x-ms-continuation-token` (first value; empty or `null` means none).
/// Tokens go out percent-encoded, so they are plain ASCII header values whatever the
/// instance ids contain, and come back decoded; the store refuses one it did not issue.
pub(super) fn continuation(req: &HttpRequest) -> Result<Option<String>, HttpError> {
    let Some(v) = req.headers.get("x-ms-continuation-token") else {
        return Ok(None);
    };
    let bad =
        || HttpError::bad_request("invalid x-ms-continuation-token: not a token this host issued");
    let t = v.to_str().map_err(|_| bad())?.trim();
    if t.is_empty() || t == "null" {
        return Ok(None);
    }
    crate::request::path_segment(t).map(Some).map_err(|_| bad())
}

pub(super) fn is_json(req: &HttpRequest) -> bool {
    req.header("content-type")
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false)
}

pub(super) fn valid_id(id: &str) -> Result<(), HttpError> {
    durable_core::client::validate_instance_id(id).map_err(HttpError::from)
}

pub(super) fn entity_id(name: &str, key: &str) -> Result<EntityId, HttpError> {
    let key = if key == "$" { "" } else { key };
    let id = EntityId::new(name, key);
    id.validate().map_err(HttpError::from)?;
    Ok(id)
}
