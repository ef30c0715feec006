//! The keyed management API under `/runtime/webhooks/durabletask/`, in Durable Functions'
//! shapes: routes, parameters, status codes and JSON field names follow the reference
//! system, so clients written for it work unchanged. The URLs it returns never carry the
//! key: callers add their own.

use std::time::Duration;

use chrono::{DateTime, Utc};
use durable_core::history::{EventKind, HistoryEvent};
use durable_core::payload::check_json;
use durable_core::{
    DurableClient, EntityId, InstanceFilter, InstanceState, RuntimeStatus, StartOptions,
    StatusOptions,
};
use http::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::request::{percent_encode, HttpError, HttpRequest, HttpResponse, HttpResult};
use crate::status::{df_time, json_value};

/// The management API's base path.
pub const BASE: &str = "/runtime/webhooks/durabletask";

/// A boolean query parameter: `true` or `false` in any case; absent or empty is the
/// default; anything else is 400.
fn flag(req: &HttpRequest, name: &str, default: bool) -> Result<bool, HttpError> {
    match req.query(name).map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(HttpError::bad_request(format!(
            "invalid {name} '{v}': expected true or false"
        ))),
    }
}

fn parse_time(req: &HttpRequest, name: &str) -> Result<Option<DateTime<Utc>>, HttpError> {
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
const MAX_WAIT_PARAM: Duration = Duration::from_secs(3600);

fn seconds(req: &HttpRequest, name: &str) -> Result<Option<Duration>, HttpError> {
    req.query(name)
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .ok()
                .and_then(|s| crate::status::checked_seconds(s, MAX_WAIT_PARAM))
                .ok_or_else(|| {
                    HttpError::bad_request(format!(
                        "invalid {name} '{v}': expected a number of seconds"
                    ))
                })
        })
        .transpose()
}

/// Management URLs of an instance, without any key: the reference system's 202 body
/// (`id`, `statusQueryGetUri`, `sendEventPostUri`, `terminatePostUri`,
/// `purgeHistoryDeleteUri`, `restartPostUri`, `suspendPostUri`, `resumePostUri`; no
/// `rewindPostUri`, which only its `HttpManagementPayload` carries).
fn management_payload(base: &str, id: &str) -> Value {
    let i = format!("{base}{BASE}/instances/{}", percent_encode(id));
    json!({
        "id": id,
        "statusQueryGetUri": i,
        "sendEventPostUri": format!("{i}/raiseEvent/{{eventName}}"),
        "terminatePostUri": format!("{i}/terminate?reason={{text}}"),
        "purgeHistoryDeleteUri": i,
        "restartPostUri": format!("{i}/restart"),
        "suspendPostUri": format!("{i}/suspend?reason={{text}}"),
        "resumePostUri": format!("{i}/resume?reason={{text}}"),
    })
}

fn check_status(req: &HttpRequest, id: &str) -> HttpResponse {
    let url = format!("{}{BASE}/instances/{}", req.base_url(), percent_encode(id));
    HttpResponse::json(
        StatusCode::ACCEPTED,
        &management_payload(req.base_url(), id),
    )
    .with_header("location", url)
    .with_header("retry-after", "10")
}

/// The DF status object.
fn status_object(state: &InstanceState, show_input: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), json!(state.name));
    m.insert("instanceId".into(), json!(state.instance_id));
    m.insert("runtimeStatus".into(), json!(state.status.as_str()));
    m.insert(
        "input".into(),
        if show_input {
            json_value(state.input.as_deref())
        } else {
            Value::Null
        },
    );
    m.insert(
        "customStatus".into(),
        json_value(state.custom_status.as_deref()),
    );
    let output = match state.status {
        RuntimeStatus::Failed => state
            .failure
            .as_ref()
            .map(|f| json!(f.message))
            .unwrap_or(Value::Null),
        _ => json_value(state.output.as_deref()),
    };
    m.insert("output".into(), output);
    m.insert("createdTime".into(), json!(df_time(state.created_at)));
    m.insert(
        "lastUpdatedTime".into(),
        json!(df_time(state.last_updated_at)),
    );
    m
}

fn ts(t: &DateTime<Utc>) -> Value {
    json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn failure_json(f: &durable_core::FailureDetails) -> Value {
    json!({"ErrorType": f.error_type, "ErrorMessage": f.message})
}

/// The history of an execution as the reference system shows it (`showHistory=true`):
/// PascalCase keys; no `OrchestratorStarted`/`OrchestratorCompleted` episode markers; a
/// completion absorbs the event that scheduled it (`TaskCompleted`/`TaskFailed` carry
/// the activity's `FunctionName` and `ScheduledTime`, and the `TaskScheduled` disappears;
/// the same for sub-orchestrations and entity calls); no `EventId`/`TaskScheduledId`/
/// `TimerId`; orchestration and event inputs are left out; `Result`s only with
/// `showHistoryOutput=true`.
fn history_events(history: &[HistoryEvent], with_output: bool) -> Vec<Value> {
    use std::collections::{HashMap, HashSet};
    // Scheduling events by (kind, sequence number): index, name, time.
    let mut scheduled: HashMap<(&str, i64), (usize, &HistoryEvent)> = HashMap::new();
    for (i, e) in history.iter().enumerate() {
        let kind = match &e.kind {
            EventKind::TaskScheduled { .. } => "task",
            EventKind::SubOrchestrationInstanceCreated { .. } => "sub",
            EventKind::EntityOperationCalled { .. } => "entity",
            _ => continue,
        };
        if e.seq >= 0 {
            scheduled.insert((kind, e.seq), (i, e));
        }
    }
    let mut absorbed: HashSet<usize> = HashSet::new();
    let mut out: Vec<(usize, Value)> = Vec::with_capacity(history.len());
    for (i, e) in history.iter().enumerate() {
        let mut m = Map::new();
        m.insert("EventType".into(), json!(e.kind.type_name()));
        let mut put = |k: &str, v: Value| {
            m.insert(k.into(), v);
        };
        // Adds the scheduling event's name and time to a completion and hides it.
        let mut absorb = |put: &mut dyn FnMut(&str, Value), kind: &str, id: u64| {
            if let Some((idx, s)) = i64::try_from(id)
                .ok()
                .and_then(|id| scheduled.get(&(kind, id)))
            {
                absorbed.insert(*idx);
                match &s.kind {
                    EventKind::TaskScheduled { name, .. }
                    | EventKind::SubOrchestrationInstanceCreated { name, .. } => {
                        put("FunctionName", json!(name))
                    }
                    EventKind::EntityOperationCalled {
                        entity_id,
                        operation,
                        ..
                    } => {
                        put("EntityId", json!(entity_id));
                        put("Operation", json!(operation));
                    }
                    _ => {}
                }
                put("ScheduledTime", ts(&s.timestamp));
            }
        };
        match &e.kind {
            EventKind::OrchestratorStarted | EventKind::OrchestratorCompleted => continue,
            EventKind::ExecutionStarted { name, .. } => put("FunctionName", json!(name)),
            EventKind::ExecutionCompleted {
                status,
                result,
                failure,
            } => {
                put("OrchestrationStatus", json!(status.as_str()));
                if with_output {
                    put("Result", json_value(result.as_deref()));
                }
                if let Some(f) = failure {
                    put("FailureDetails", failure_json(f));
                }
            }
            EventKind::TaskScheduled { name, .. } => put("Name", json!(name)),
            EventKind::SubOrchestrationInstanceCreated {
                name, instance_id, ..
            } => {
                put("Name", json!(name));
                put("InstanceId", json!(instance_id));
            }
            EventKind::EntityOperationCalled {
                entity_id,
                operation,
                ..
            } => {
                put("EntityId", json!(entity_id));
                put("Operation", json!(operation));
            }
            EventKind::TaskCompleted { seq, result }
            | EventKind::SubOrchestrationInstanceCompleted { seq, result }
            | EventKind::EntityOperationCompleted { seq, result } => {
                let kind = match &e.kind {
                    EventKind::TaskCompleted { .. } => "task",
                    EventKind::SubOrchestrationInstanceCompleted { .. } => "sub",
                    _ => "entity",
                };
                absorb(&mut put, kind, *seq);
                if with_output {
                    put("Result", json_value(result.as_deref()));
                }
            }
            EventKind::TaskFailed { seq, failure }
            | EventKind::SubOrchestrationInstanceFailed { seq, failure }
            | EventKind::EntityOperationFailed { seq, failure } => {
                let kind = match &e.kind {
                    EventKind::TaskFailed { .. } => "task",
                    EventKind::SubOrchestrationInstanceFailed { .. } => "sub",
                    _ => "entity",
                };
                absorb(&mut put, kind, *seq);
                put("Reason", json!(failure.message));
                put("FailureDetails", failure_json(failure));
            }
            EventKind::TimerCreated { fire_at } | EventKind::TimerFired { fire_at, .. } => {
                put("FireAt", ts(fire_at))
            }
            EventKind::EventRaised { name, .. } => put("Name", json!(name)),
            EventKind::EventSent {
                instance_id,
                name,
                input,
            } => {
                put("InstanceId", json!(instance_id));
                put("Name", json!(name));
                if with_output {
                    put("Input", json_value(input.as_deref()));
                }
            }
            EventKind::ExecutionTerminated { reason }
            | EventKind::ExecutionSuspended { reason }
            | EventKind::ExecutionResumed { reason }
            | EventKind::ExecutionRewound { reason } => put("Reason", json!(reason)),
            _ => {}
        }
        m.insert("Timestamp".into(), ts(&e.timestamp));
        out.push((i, Value::Object(m)));
    }
    out.into_iter()
        .filter(|(i, _)| !absorbed.contains(i))
        .map(|(_, v)| v)
        .collect()
}

fn valid_id(id: &str) -> Result<(), HttpError> {
    durable_core::client::validate_instance_id(id).map_err(HttpError::from)
}

/// Routes a management request (the key was already checked). `rest` is the path after
/// the base, without leading slash. The literal segments (`orchestrators`, `instances`,
/// `raiseEvent`, `entities`) match case-insensitively, as the reference system's route
/// templates do; operation names too.
pub(crate) async fn handle(client: &DurableClient, req: &HttpRequest, rest: &str) -> HttpResult {
    match route(client, req, rest).await {
        Err(e) if e.status.is_client_error() => Ok(error_response(e)),
        other => other,
    }
}

/// A 4xx as `{"error": "..."}`, plus `ExceptionMessage`: the field Durable Functions'
/// clients read from the reference system's error answers (the Python client's
/// `start_new` raises it). Server errors take the host's usual path.
fn error_response(e: HttpError) -> HttpResponse {
    HttpResponse::json(
        e.status,
        &json!({ "error": e.message, "ExceptionMessage": e.message }),
    )
}

async fn route(client: &DurableClient, req: &HttpRequest, rest: &str) -> HttpResult {
    let mut parts: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(crate::request::path_segment)
        .collect::<Result<_, _>>()?;
    if let Some(first) = parts.first_mut() {
        first.make_ascii_lowercase();
    }
    if parts.len() == 4 && parts[0] == "instances" && parts[2].eq_ignore_ascii_case("raiseEvent") {
        parts[2] = "raiseEvent".into();
    }
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    let m = req.method().clone();
    match (p.as_slice(), &m) {
        (["orchestrators", name], &Method::POST) => start(client, req, name, None).await,
        (["orchestrators", name, id], &Method::POST) => start(client, req, name, Some(id)).await,
        (["orchestrators", _] | ["orchestrators", _, _], _) => method_not_allowed("POST"),
        (["instances"], &Method::GET) => list(client, req).await,
        (["instances"], &Method::DELETE) => purge_many(client, req).await,
        (["instances"], _) => method_not_allowed("GET, DELETE"),
        (["instances", id], &Method::GET) => get_status(client, req, id, None).await,
        (["instances", id], &Method::DELETE) => purge_one(client, id).await,
        (["instances", _], _) => method_not_allowed("GET, DELETE"),
        (["instances", id, "raiseEvent", event], &Method::POST) => {
            raise_event(client, req, id, event).await
        }
        (["instances", id, op], &Method::POST) => operation(client, req, id, op).await,
        (["instances", _, _], _) | (["instances", _, "raiseEvent", _], _) => {
            method_not_allowed("POST")
        }
        (["entities"], &Method::GET) => list_entities(client, req, None).await,
        (["entities", name], &Method::GET) => list_entities(client, req, Some(name)).await,
        (["entities", name, key], &Method::GET) => get_entity(client, name, key).await,
        (["entities", name, key], &Method::POST) => {
            signal_entity(client, req, name, key, None).await
        }
        (["entities", name, key], &Method::DELETE) => {
            signal_entity(client, req, name, key, Some("delete")).await
        }
        (["entities"] | ["entities", _], _) => method_not_allowed("GET"),
        (["entities", _, _], _) => method_not_allowed("GET, POST, DELETE"),
        _ => Err(HttpError::not_found(format!(
            "no management route {} /{rest}",
            req.method()
        ))),
    }
}

/// 405 with the `Allow` header HTTP requires.
fn method_not_allowed(allow: &str) -> HttpResult {
    Ok(error_response(HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed here; allowed: {allow}"),
    ))
    .with_header("allow", allow))
}

/// The `timeout` and `pollingInterval` of a start or restart, checked before anything
/// changes: both (seconds) ask for the wait variant; an interval longer than the timeout
/// is refused as the reference system refuses it.
fn wait_params(req: &HttpRequest) -> Result<Option<Duration>, HttpError> {
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

async fn start(
    client: &DurableClient,
    req: &HttpRequest,
    name: &str,
    id: Option<&str>,
) -> HttpResult {
    if let Some(id) = id {
        valid_id(id)?;
    }
    let input = if req.body().is_empty() {
        None
    } else {
        let text = req.text()?;
        check_json(text)
            .map_err(|e| HttpError::bad_request(format!("Invalid JSON content: {e}")))?;
        Some(text.to_string())
    };
    let wait = wait_params(req)?;
    let version = req
        .query("version")
        .filter(|v| !v.trim().is_empty())
        .map(str::to_string);
    let instance_id = client
        .start_by_name(
            name,
            input,
            StartOptions {
                instance_id: id.map(str::to_string),
                version,
                ..StartOptions::default()
            },
        )
        .await?;
    respond_started(client, req, &instance_id, wait).await
}

/// WaitForCompletionOrCreateCheckStatusResponse: 200 with the output alone when the
/// instance completes within the timeout; a failed, canceled or terminated one answers as
/// the status route does (200, never 500 here); still running: the 202.
async fn respond_started(
    client: &DurableClient,
    req: &HttpRequest,
    id: &str,
    wait: Option<Duration>,
) -> HttpResult {
    let Some(timeout) = wait else {
        return Ok(check_status(req, id));
    };
    match client.wait_for_completion(id, timeout).await {
        Ok(state) if state.status == RuntimeStatus::Completed => Ok(HttpResponse::json(
            StatusCode::OK,
            &json_value(state.output.as_deref()),
        )),
        Ok(_) => get_status(client, req, id, Some(false)).await,
        Err(durable_core::Error::Timeout(_)) => Ok(check_status(req, id)),
        Err(e) => Err(e.into()),
    }
}

/// The URL of this request with its query, minus the key (`code`): the `Location` of a
/// 202 status answer, as the reference system answers with the request URI.
fn request_url_without_key(req: &HttpRequest) -> String {
    let query: Vec<String> = req
        .query
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("code"))
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    let mut url = format!("{}{}", req.base_url(), req.path());
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    url
}

/// `historyFormat=internal` (an extension of this host): the history as the engine
/// records it, every event with its inputs, results and sequence numbers, in
/// [`HistoryEvent`]'s own JSON, so a tool can replay the execution from it.
fn internal_history(req: &HttpRequest) -> Result<bool, HttpError> {
    match req.query("historyFormat").map(str::trim) {
        None | Some("") => Ok(false),
        Some(f) if f.eq_ignore_ascii_case("internal") => Ok(true),
        Some(f) => Err(HttpError::bad_request(format!(
            "invalid historyFormat '{f}': the only format is 'internal'"
        ))),
    }
}

/// Get status. `internal_error_on_failure` overrides the query parameter (the wait
/// variant never answers 500).
async fn get_status(
    client: &DurableClient,
    req: &HttpRequest,
    id: &str,
    internal_error_on_failure: Option<bool>,
) -> HttpResult {
    valid_id(id)?;
    let internal_history = internal_history(req)?;
    let show_history = internal_history || flag(req, "showHistory", false)?;
    let show_history_output = flag(req, "showHistoryOutput", false)?;
    let show_input = flag(req, "showInput", true)?;
    let internal_error_on_failure = match internal_error_on_failure {
        Some(v) => v,
        None => flag(req, "returnInternalServerErrorOnFailure", false)?,
    };
    let Some(status) = client
        .get_status(
            id,
            StatusOptions {
                show_input,
                show_history,
            },
        )
        .await?
    else {
        return Err(HttpError::not_found(format!("no instance with id '{id}'")));
    };
    let mut body = status_object(&status.state, show_input);
    if let Some(history) = &status.history {
        body.insert(
            "historyEvents".into(),
            if internal_history {
                serde_json::to_value(history).unwrap_or(Value::Null)
            } else {
                Value::Array(history_events(history, show_history_output))
            },
        );
    }
    let code = match status.state.status {
        RuntimeStatus::Failed if internal_error_on_failure => StatusCode::INTERNAL_SERVER_ERROR,
        s if s.is_terminal() => StatusCode::OK,
        _ => StatusCode::ACCEPTED,
    };
    let mut resp = HttpResponse::json(code, &Value::Object(body));
    if code == StatusCode::ACCEPTED {
        resp = resp
            .with_header("location", request_url_without_key(req))
            .with_header("retry-after", "5");
    }
    Ok(resp)
}

fn filter_from(req: &HttpRequest) -> Result<InstanceFilter, HttpError> {
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
fn statuses(req: &HttpRequest) -> Result<Vec<RuntimeStatus>, HttpError> {
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

fn page_size(req: &HttpRequest) -> Result<usize, HttpError> {
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
fn continuation(req: &HttpRequest) -> Result<Option<String>, HttpError> {
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

/// The response's `x-ms-continuation-token`, only when there is a next page: Durable
/// Functions' clients follow any token they get, so the last page carries none.
fn continuation_header(resp: HttpResponse, token: Option<String>) -> HttpResponse {
    match token {
        Some(t) => resp.with_header("x-ms-continuation-token", percent_encode(&t)),
        None => resp,
    }
}

async fn list(client: &DurableClient, req: &HttpRequest) -> HttpResult {
    let filter = filter_from(req)?;
    let show_input = flag(req, "showInput", true)?;
    let page = client
        .list_instances(&filter, page_size(req)?, continuation(req)?.as_deref())
        .await?;
    let items: Vec<Value> = page
        .items
        .iter()
        .filter(|s| !durable_core::entity::is_entity_instance(&s.instance_id))
        .map(|s| Value::Object(status_object(s, show_input)))
        .collect();
    Ok(continuation_header(
        HttpResponse::json(StatusCode::OK, &items),
        page.continuation_token,
    ))
}

async fn purge_one(client: &DurableClient, id: &str) -> HttpResult {
    valid_id(id)?;
    match client.purge(id).await {
        Ok(true) => Ok(HttpResponse::json(
            StatusCode::OK,
            &json!({ "instancesDeleted": 1 }),
        )),
        Ok(false) => Err(HttpError::not_found(format!("no instance with id '{id}'"))),
        Err(durable_core::Error::InvalidStatus { status, .. }) => Err(HttpError::new(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "Only orchestrations in a terminal state can be purged, but the orchestration with instance ID {id} has status {status}"
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

async fn purge_many(client: &DurableClient, req: &HttpRequest) -> HttpResult {
    let mut filter = filter_from(req)?;
    if filter.created_from.is_none() {
        return Err(HttpError::bad_request(
            "Please provide value for 'createdTimeFrom' parameter.",
        ));
    }
    if filter.created_to.is_none() {
        filter.created_to = Some(client.store().clock().now());
    }
    let n = client.purge_instances(&filter).await?;
    if n == 0 {
        return Err(HttpError::not_found("no instances matched the filter"));
    }
    Ok(HttpResponse::json(
        StatusCode::OK,
        &json!({ "instancesDeleted": n }),
    ))
}

fn is_json(req: &HttpRequest) -> bool {
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

/// 404 for an unknown instance, 410 for a finished one: checked before the request's
/// content, in the reference system's order.
async fn existing_running(client: &DurableClient, id: &str, what: &str) -> Result<(), HttpError> {
    match client.get_state(id).await? {
        None => Err(HttpError::not_found(format!("no instance with id '{id}'"))),
        Some(s) if s.status.is_terminal() => Err(HttpError::new(
            StatusCode::GONE,
            format!("instance '{id}' is {}; cannot {what} it", s.status),
        )),
        Some(_) => Ok(()),
    }
}

async fn raise_event(
    client: &DurableClient,
    req: &HttpRequest,
    id: &str,
    event: &str,
) -> HttpResult {
    valid_id(id)?;
    existing_running(client, id, "raise an event on").await?;
    if !is_json(req) {
        return Err(HttpError::bad_request(
            "Only application/json request content is supported",
        ));
    }
    let text = req.text()?;
    let input = if text.trim().is_empty() {
        None
    } else {
        check_json(text)
            .map_err(|e| HttpError::bad_request(format!("Invalid JSON content: {e}")))?;
        Some(text.to_string())
    };
    client.raise_event_json(id, event, input).await?;
    Ok(HttpResponse::empty(StatusCode::ACCEPTED))
}

async fn operation(client: &DurableClient, req: &HttpRequest, id: &str, op: &str) -> HttpResult {
    valid_id(id)?;
    let reason = req.query("reason");
    match op.to_ascii_lowercase().as_str() {
        "terminate" => client.terminate(id, reason).await?,
        "suspend" => client.suspend(id, reason).await?,
        "resume" => client.resume(id, reason).await?,
        "rewind" => match client.rewind(id, reason).await {
            Err(durable_core::Error::InvalidStatus { status, .. })
                if !status.is_terminal() || status == RuntimeStatus::Failed =>
            {
                return Err(HttpError::bad_request(format!(
                    "instance '{id}' is {status}; only failed instances can be rewound"
                )));
            }
            Err(durable_core::Error::InvalidStatus { status, .. }) => {
                return Err(HttpError::new(
                    StatusCode::GONE,
                    format!("instance '{id}' is {status}; only failed instances can be rewound"),
                ));
            }
            other => other?,
        },
        "restart" => {
            let new_id = flag(req, "restartWithNewInstanceId", true)?;
            let wait = wait_params(req)?;
            let restarted = match client.restart(id, new_id).await {
                Err(durable_core::Error::InstanceNotFound(_)) => {
                    return Err(HttpError::bad_request(
                        "InstanceId does not match a valid orchestration instance.",
                    ))
                }
                Err(durable_core::Error::InstanceExists { .. }) => {
                    return Err(HttpError::new(
                        StatusCode::CONFLICT,
                        "A non-terminal instance with this instance ID already exists.",
                    ))
                }
                other => other?,
            };
            return respond_started(client, req, &restarted, wait).await;
        }
        other => {
            return Err(HttpError::not_found(format!(
                "unknown instance operation '{other}'; expected terminate, suspend, resume, rewind, restart or raiseEvent"
            )))
        }
    }
    Ok(HttpResponse::empty(StatusCode::ACCEPTED))
}

fn entity_id(name: &str, key: &str) -> Result<EntityId, HttpError> {
    let key = if key == "$" { "" } else { key };
    let id = EntityId::new(name, key);
    id.validate().map_err(HttpError::from)?;
    Ok(id)
}

async fn get_entity(client: &DurableClient, name: &str, key: &str) -> HttpResult {
    let id = entity_id(name, key)?;
    match client.get_entity(&id).await? {
        Some(meta) => Ok(HttpResponse::json(
            StatusCode::OK,
            &json_value(meta.state.as_deref()),
        )),
        None => Err(HttpError::not_found(format!("entity {id} does not exist"))),
    }
}

async fn list_entities(
    client: &DurableClient,
    req: &HttpRequest,
    name: Option<&str>,
) -> HttpResult {
    let fetch_state = flag(req, "fetchState", false)?;
    let from = parse_time(req, "lastOperationTimeFrom")?;
    let to = parse_time(req, "lastOperationTimeTo")?;
    let page = client
        .list_entities(
            name,
            fetch_state,
            page_size(req)?,
            continuation(req)?.as_deref(),
        )
        .await?;
    let items: Vec<Value> = page
        .items
        .iter()
        .filter(|m| {
            from.is_none_or(|f| m.last_operation_time >= f)
                && to.is_none_or(|t| m.last_operation_time <= t)
        })
        .map(|m| {
            json!({
                "entityId": { "name": m.id.name, "key": m.id.key },
                "lastOperationTime": df_time(m.last_operation_time),
                "state": if fetch_state { json_value(m.state.as_deref()) } else { Value::Null },
            })
        })
        .collect();
    Ok(continuation_header(
        HttpResponse::json(StatusCode::OK, &items),
        page.continuation_token,
    ))
}

async fn signal_entity(
    client: &DurableClient,
    req: &HttpRequest,
    name: &str,
    key: &str,
    op: Option<&str>,
) -> HttpResult {
    let id = entity_id(name, key)?;
    let op = op
        .map(str::to_string)
        .unwrap_or_else(|| req.query("op").unwrap_or("").to_string());
    let input = if req.body().is_empty() {
        None
    } else if is_json(req) {
        let text = req.text()?;
        check_json(text)
            .map_err(|e| HttpError::bad_request(format!("Could not parse JSON content: {e}")))?;
        Some(text.to_string())
    } else {
        Some(Value::String(req.text()?.to_string()).to_string())
    };
    match client.signal_entity_json(&id, &op, input, None).await {
        Err(durable_core::Error::UnknownName { name, .. }) => {
            return Err(HttpError::not_found(format!(
                "no entity named '{name}' is registered"
            )));
        }
        other => other?,
    }
    Ok(HttpResponse::empty(StatusCode::ACCEPTED))
}
