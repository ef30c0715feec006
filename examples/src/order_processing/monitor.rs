//! Monitor: an eternal orchestration that watches a service's health endpoint.
//! `POST /api/monitors` with `{"url": ..., "intervalSeconds": 60}` starts `monitor`; each
//! cycle checks the URL with `ctx.call_http` (a 2xx answer is up, anything else or no
//! answer is down), sends an alert with the `SendAlert` activity when the service goes
//! down (and a note when it recovers), publishes what it saw as custom status, waits on a
//! durable timer and continues as new, so its history stays small however long it runs.
//! `POST /api/monitors/{id}/stop` ends it at the next wait.
//!
//! The endpoint is public, so a monitor may check only this host's own URLs (its
//! configured or bound base) and the URL prefixes listed in `MONITOR_ALLOWED_URLS`
//! (comma-separated, e.g. `https://status.example.com/,http://10.0.0.5:8080/health`):
//! never any URL a stranger names, which would make the server probe internal addresses
//! for them.
//!
//! For trying it here, the program serves demo services:
//! `GET /api/demo/services/{name}/health` answers 200 or 503, and
//! `PUT /api/demo/services/{name}/health` with `{"healthy": false}` breaks one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use durable_core::http::DurableHttpRequest;
use durable_core::{
    activity, orchestrator, race, ActivityError, Either, OrchestrationContext, OrchestrationError,
};
use durable_http::{
    http_start, ClientExt, DurableClient, HttpError, HttpRequest, HttpResponse, HttpResult,
};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::common::{deliver, raise_if_running, Email};

/// Where alerts go.
pub const OPS_ADDRESS: &str = "ops@example.com";
/// Longest interval between checks: one day.
pub const MAX_INTERVAL_SECONDS: u64 = 86_400;

/// What `POST /api/monitors` takes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MonitorRequest {
    /// The health endpoint (absolute http(s) URL).
    pub url: String,
    /// Seconds between checks, 1 to 86400 (default 60).
    #[serde(default = "default_interval")]
    pub interval_seconds: u64,
}

fn default_interval() -> u64 {
    60
}

/// The state carried from one cycle to the next (the input of each execution).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorState {
    /// The health endpoint.
    pub url: String,
    /// Seconds between checks.
    pub interval_seconds: u64,
    /// Checks made so far.
    pub checks: u64,
    /// Alerts sent so far.
    pub alerts: u64,
    /// "up" or "down" after the last check.
    pub last: Option<String>,
    /// What the last check saw, e.g. "answered 503".
    #[serde(default)]
    pub detail: Option<String>,
    /// When the last check ran (RFC 3339).
    #[serde(default)]
    pub checked_at: Option<String>,
}

impl MonitorState {
    /// The custom status: what the last check saw.
    fn status(&self) -> serde_json::Value {
        json!({
            "url": self.url,
            "checks": self.checks,
            "alerts": self.alerts,
            "lastCheck": self.last,
            "detail": self.detail,
            "checkedAt": self.checked_at,
        })
    }
}

impl From<MonitorRequest> for MonitorState {
    fn from(r: MonitorRequest) -> Self {
        MonitorState {
            url: r.url,
            interval_seconds: r.interval_seconds,
            checks: 0,
            alerts: 0,
            last: None,
            detail: None,
            checked_at: None,
        }
    }
}

/// A message to the operators.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Alert {
    /// The service.
    pub url: String,
    /// "down" or "recovered".
    pub state: String,
    /// What the check saw.
    pub detail: String,
}

/// `SendAlert`: tells the operators (the demo mailbox, address [`OPS_ADDRESS`]).
#[activity(name = "SendAlert")]
pub async fn send_alert(alert: Alert) -> Result<(), ActivityError> {
    deliver(Email {
        to: OPS_ADDRESS.into(),
        subject: format!("{} is {}", alert.url, alert.state),
        body: alert.detail,
        links: Vec::new(),
    });
    Ok(())
}

/// One cycle: check, alert on a change, wait (or stop), continue as new.
#[orchestrator]
pub async fn monitor(
    ctx: OrchestrationContext,
    mut state: MonitorState,
) -> Result<MonitorState, OrchestrationError> {
    // A new execution starts with no custom status: show the last check meanwhile.
    if state.checks > 0 {
        ctx.set_custom_status(state.status());
    }
    let check = ctx
        .call_http(
            DurableHttpRequest::get(state.url.clone())
                .asynchronous_pattern(false)
                .timeout(Duration::from_secs(10)),
        )
        .await;
    let (up, detail) = match check {
        Ok(r) if r.is_success() => (true, format!("answered {}", r.status)),
        Ok(r) => (false, format!("answered {}", r.status)),
        Err(e) => (false, e.failure.message),
    };
    state.checks += 1;
    let now = if up { "up" } else { "down" };
    let changed = state.last.as_deref() != Some(now);
    if changed && (!up || state.last.is_some()) {
        let alert = Alert {
            url: state.url.clone(),
            state: if up { "recovered" } else { "down" }.into(),
            detail: detail.clone(),
        };
        ctx.call_activity(send_alert, alert).await?;
        if !up {
            state.alerts += 1;
        }
    }
    state.last = Some(now.into());
    state.detail = Some(detail);
    state.checked_at = Some(ctx.current_utc_datetime().to_rfc3339());
    ctx.set_custom_status(state.status());
    let next = ctx.create_timer(Duration::from_secs(state.interval_seconds));
    let stop = ctx.wait_for_external_event::<serde_json::Value>("stop");
    match race(stop, next).await {
        Either::Left(_) => Ok(state),
        Either::Right(()) => ctx.continue_as_new(state).await,
    }
}

/// The URL prefixes a monitor may check: this host's own base and `MONITOR_ALLOWED_URLS`.
fn allowed_prefixes(req: &HttpRequest) -> Vec<String> {
    let own = req.configured_base_url().map(|b| format!("{b}/"));
    let listed = std::env::var("MONITOR_ALLOWED_URLS").unwrap_or_default();
    own.into_iter()
        .chain(
            listed
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string),
        )
        .collect()
}

/// `POST /api/monitors` with `{"url": "http://...", "intervalSeconds": 60}`: 202 with the
/// status URL (its custom status shows the last check); 400 for a URL outside the allowed
/// prefixes.
#[http_start(route = "/api/monitors", method = "POST")]
pub async fn start_monitor(client: DurableClient, req: HttpRequest) -> HttpResult {
    let r: MonitorRequest = req.json()?;
    DurableHttpRequest::get(r.url.clone())
        .validate()
        .map_err(HttpError::bad_request)?;
    let allowed = allowed_prefixes(&req);
    if !allowed.iter().any(|p| r.url.starts_with(p.as_str())) {
        let under = if allowed.is_empty() {
            "(none)".to_string()
        } else {
            allowed.join(", ")
        };
        return Err(HttpError::bad_request(format!(
            "a monitor may only check URLs under {under}; set MONITOR_ALLOWED_URLS to allow others"
        )));
    }
    if !(1..=MAX_INTERVAL_SECONDS).contains(&r.interval_seconds) {
        return Err(HttpError::bad_request(format!(
            "intervalSeconds must be 1 to {MAX_INTERVAL_SECONDS}"
        )));
    }
    let id = client.start(monitor, MonitorState::from(r)).await?;
    Ok(client.check_status_response(&req, &id))
}

/// `POST /api/monitors/{id}/stop`: 202 when the monitor will stop at its next wait; 404
/// for an unknown id, 410 when it has already ended.
#[http_start(route = "/api/monitors/{id}/stop", method = "POST")]
pub async fn stop_monitor(client: DurableClient, req: HttpRequest) -> HttpResult {
    let id = req.param("id").unwrap_or_default().to_string();
    raise_if_running(
        &client,
        monitor,
        &id,
        "monitor",
        "stop",
        &json!({"by": "api"}),
    )
    .await?;
    Ok(HttpResponse::json(
        StatusCode::ACCEPTED,
        &json!({"id": id, "stopping": true}),
    ))
}

fn health() -> &'static Mutex<HashMap<String, bool>> {
    static HEALTH: std::sync::OnceLock<Mutex<HashMap<String, bool>>> = std::sync::OnceLock::new();
    HEALTH.get_or_init(Default::default)
}

/// `GET /api/demo/services/{name}/health`: 200 `{"status":"healthy"}` or 503
/// `{"status":"unhealthy"}` (services are healthy until told otherwise).
#[http_start(route = "/api/demo/services/{name}/health", method = "GET")]
pub async fn demo_health(_client: DurableClient, req: HttpRequest) -> HttpResult {
    let name = req.param("name").unwrap_or_default();
    let healthy = *health()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .unwrap_or(&true);
    Ok(if healthy {
        HttpResponse::json(StatusCode::OK, &json!({"status": "healthy"}))
    } else {
        HttpResponse::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unhealthy"}),
        )
    })
}

/// What `PUT /api/demo/services/{name}/health` takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetHealth {
    healthy: bool,
}

/// `PUT /api/demo/services/{name}/health` with `{"healthy": false}`: breaks (or mends) a
/// demo service.
#[http_start(route = "/api/demo/services/{name}/health", method = "PUT")]
pub async fn set_demo_health(_client: DurableClient, req: HttpRequest) -> HttpResult {
    let name = req.param("name").unwrap_or_default().to_string();
    let set: SetHealth = req.json()?;
    health()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.clone(), set.healthy);
    Ok(HttpResponse::json(
        StatusCode::OK,
        &json!({"service": name, "healthy": set.healthy}),
    ))
}
