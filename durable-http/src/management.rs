//! The keyed management API under `/runtime/webhooks/durabletask/`, in Durable Functions'
//! shapes: routes, parameters, status codes and JSON field names follow the reference
//! system, so clients written for it work unchanged. The URLs it returns never carry the
//! key: callers add their own.

use std::time::Duration;

use chrono::{DateTime, Utc};
use durable_core::history::{EventKind, HistoryEvent};
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

fn truthy(req: &HttpRequest, name: &str, default: bool) -> bool {
    match req.query(name).map(str::to_ascii_lowercase).as_deref() {
        Some("true") => true,
        Some("false") => false,
        _ => default,
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

fn seconds(req: &HttpRequest, name: &str) -> Result<Option<Duration>, HttpError> {
    req.query(name)
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(3600.0)))
                .ok_or_else(|| {
                    HttpError::bad_request(format!(
                        "invalid {name} '{v}': expected a number of seconds"
                    ))
                })
        })
        .transpose()
}

/// Management URLs of an instance, without any key.
fn management_payload(base: &str, id: &str) -> Value {
    let i = format!("{base}{BASE}/instances/{}", percent_encode(id));
    json!({
        "id": id,
        "statusQueryGetUri": i,
        "sendEventPostUri": format!("{i}/raiseEvent/{{eventName}}"),
        "terminatePostUri": format!("{i}/terminate?reason={{text}}"),
        "rewindPostUri": format!("{i}/rewind?reason={{text}}"),
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

/// A history event in the reference system's PascalCase shape.
fn history_event(e: &HistoryEvent, with_output: bool) -> Value {
    let mut m = Map::new();
    m.insert("EventType".into(), json!(e.kind.type_name()));
    if e.event_id >= 0 {
        m.insert("EventId".into(), json!(e.event_id));
    }
    m.insert(
        "Timestamp".into(),
        json!(e
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    );
    let mut put = |k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    match &e.kind {
        EventKind::ExecutionStarted { name, input, .. } => {
            put("FunctionName", json!(name));
            if with_output {
                put("Input", json_value(input.as_deref()));
            }
        }
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
                put(
                    "FailureDetails",
                    json!({"ErrorType": f.error_type, "ErrorMessage": f.message}),
                );
            }
        }
        EventKind::TaskScheduled { name, input }
        | EventKind::SubOrchestrationInstanceCreated { name, input, .. } => {
            put("FunctionName", json!(name));
            if with_output {
                put("Input", json_value(input.as_deref()));
            }
        }
        EventKind::TaskCompleted {
            task_scheduled_id,
            result,
        }
        | EventKind::SubOrchestrationInstanceCompleted {
            task_scheduled_id,
            result,
        }
        | EventKind::EntityOperationCompleted {
            task_scheduled_id,
            result,
        } => {
            put("TaskScheduledId", json!(task_scheduled_id));
            if with_output {
                put("Result", json_value(result.as_deref()));
            }
        }
        EventKind::TaskFailed {
            task_scheduled_id,
            failure,
        }
        | EventKind::SubOrchestrationInstanceFailed {
            task_scheduled_id,
            failure,
        }
        | EventKind::EntityOperationFailed {
            task_scheduled_id,
            failure,
        } => {
            put("TaskScheduledId", json!(task_scheduled_id));
            put("Reason", json!(failure.message));
        }
        EventKind::TimerCreated { fire_at } => put("FireAt", json!(fire_at)),
        EventKind::TimerFired { timer_id, fire_at } => {
            put("TimerId", json!(timer_id));
            put("FireAt", json!(fire_at));
        }
        EventKind::EventRaised { name, input } | EventKind::EventSent { name, input, .. } => {
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
    Value::Object(m)
}

fn valid_id(id: &str) -> Result<(), HttpError> {
    durable_core::client::validate_instance_id(id).map_err(HttpError::from)
}

/// Routes a management request (the key was already checked). `rest` is the path after
/// the base, without leading slash.
pub(crate) async fn handle(client: &DurableClient, req: &HttpRequest, rest: &str) -> HttpResult {
    let parts: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(crate::request::percent_decode)
        .collect();
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    let m = req.method().clone();
    match (p.as_slice(), &m) {
        (["orchestrators", name], &Method::POST) => start(client, req, name, None).await,
        (["orchestrators", name, id], &Method::POST) => start(client, req, name, Some(id)).await,
        (["orchestrators", ..], _) => Err(method_not_allowed("POST")),
        (["instances"], &Method::GET) => list(client, req).await,
        (["instances"], &Method::DELETE) => purge_many(client, req).await,
        (["instances"], _) => Err(method_not_allowed("GET, DELETE")),
        (["instances", id], &Method::GET) => get_status(client, req, id).await,
        (["instances", id], &Method::DELETE) => purge_one(client, id).await,
        (["instances", _], _) => Err(method_not_allowed("GET, DELETE")),
        (["instances", id, "raiseEvent", event], &Method::POST) => {
            raise_event(client, req, id, event).await
        }
        (["instances", id, op], &Method::POST) => operation(client, req, id, op).await,
        (["instances", _, _], _) | (["instances", _, "raiseEvent", _], _) => {
            Err(method_not_allowed("POST"))
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
        (["entities", ..], _) => Err(method_not_allowed("GET, POST, DELETE")),
        _ => Err(HttpError::not_found(format!(
            "no management route {} /{rest}",
            req.method()
        ))),
    }
}

fn method_not_allowed(allow: &str) -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed here; allowed: {allow}"),
    )
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
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map_err(|e| HttpError::bad_request(format!("Invalid JSON content: {e}")))?;
        Some(text.to_string())
    };
    let timeout = seconds(req, "timeout")?;
    let interval = seconds(req, "pollingInterval")?;
    let instance_id = client
        .start_by_name(
            name,
            input,
            StartOptions {
                instance_id: id.map(str::to_string),
                ..StartOptions::default()
            },
        )
        .await?;
    respond_started(client, req, &instance_id, timeout, interval).await
}

async fn respond_started(
    client: &DurableClient,
    req: &HttpRequest,
    id: &str,
    timeout: Option<Duration>,
    interval: Option<Duration>,
) -> HttpResult {
    match (timeout, interval) {
        (Some(timeout), Some(interval)) => {
            if interval > timeout {
                return Err(HttpError::bad_request(
                    "pollingInterval must not be greater than timeout",
                ));
            }
            match client.wait_for_completion(id, timeout).await {
                Ok(state) if state.status == RuntimeStatus::Completed => Ok(HttpResponse::json(
                    StatusCode::OK,
                    &json_value(state.output.as_deref()),
                )),
                Ok(state) => Ok(HttpResponse::json(
                    StatusCode::OK,
                    &Value::Object(status_object(&state, true)),
                )),
                Err(durable_core::Error::Timeout(_)) => Ok(check_status(req, id)),
                Err(e) => Err(e.into()),
            }
        }
        _ => Ok(check_status(req, id)),
    }
}

async fn get_status(client: &DurableClient, req: &HttpRequest, id: &str) -> HttpResult {
    valid_id(id)?;
    let show_history = truthy(req, "showHistory", false);
    let show_history_output = truthy(req, "showHistoryOutput", false);
    let show_input = truthy(req, "showInput", true);
    let internal_error_on_failure = truthy(req, "returnInternalServerErrorOnFailure", false);
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
            Value::Array(
                history
                    .iter()
                    .map(|e| history_event(e, show_history_output))
                    .collect(),
            ),
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
            .with_header(
                "location",
                format!("{}{BASE}/instances/{}", req.base_url(), percent_encode(id)),
            )
            .with_header("retry-after", "5");
    }
    Ok(resp)
}

fn filter_from(req: &HttpRequest) -> Result<InstanceFilter, HttpError> {
    let statuses = req
        .query_all("runtimeStatus")
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(RuntimeStatus::parse)
        .collect();
    Ok(InstanceFilter {
        statuses,
        created_from: parse_time(req, "createdTimeFrom")?,
        created_to: parse_time(req, "createdTimeTo")?,
        instance_id_prefix: req
            .query("instanceIdPrefix")
            .filter(|p| !p.is_empty())
            .map(str::to_string),
    })
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

fn continuation(req: &HttpRequest) -> Option<String> {
    req.header("x-ms-continuation-token")
        .filter(|t| !t.is_empty() && *t != "null")
        .map(str::to_string)
}

async fn list(client: &DurableClient, req: &HttpRequest) -> HttpResult {
    let filter = filter_from(req)?;
    let show_input = truthy(req, "showInput", false);
    let page = client
        .list_instances(&filter, page_size(req)?, continuation(req).as_deref())
        .await?;
    let items: Vec<Value> = page
        .items
        .iter()
        .filter(|s| !durable_core::entity::is_entity_instance(&s.instance_id))
        .map(|s| Value::Object(status_object(s, show_input)))
        .collect();
    Ok(HttpResponse::json(StatusCode::OK, &items).with_header(
        "x-ms-continuation-token",
        page.continuation_token.unwrap_or_else(|| "null".into()),
    ))
}

async fn purge_one(client: &DurableClient, id: &str) -> HttpResult {
    valid_id(id)?;
    if client.purge(id).await? {
        Ok(HttpResponse::json(
            StatusCode::OK,
            &json!({ "instancesDeleted": 1 }),
        ))
    } else {
        Err(HttpError::not_found(format!("no instance with id '{id}'")))
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
        filter.created_to = Some(Utc::now());
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

async fn raise_event(
    client: &DurableClient,
    req: &HttpRequest,
    id: &str,
    event: &str,
) -> HttpResult {
    valid_id(id)?;
    if !is_json(req) {
        return Err(HttpError::bad_request(
            "Only application/json request content is supported",
        ));
    }
    let text = req.text()?;
    let input = if text.trim().is_empty() {
        None
    } else {
        serde_json::from_str::<serde::de::IgnoredAny>(text)
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
        "rewind" => {
            match client.rewind(id, reason).await {
                Err(durable_core::Error::InvalidStatus { status, .. }) if !status.is_terminal() || status == RuntimeStatus::Failed => {
                    return Err(HttpError::bad_request(format!("instance '{id}' is {status}; only failed instances can be rewound")));
                }
                Err(durable_core::Error::InvalidStatus { status, .. }) => {
                    return Err(HttpError::new(StatusCode::GONE, format!("instance '{id}' is {status}; only failed instances can be rewound")));
                }
                other => other?,
            }
        }
        "restart" => {
            let new_id = truthy(req, "restartWithNewInstanceId", true);
            let restarted = match client.restart(id, new_id).await {
                Err(durable_core::Error::InstanceNotFound(_)) => {
                    return Err(HttpError::bad_request("InstanceId does not match a valid orchestration instance."))
                }
                other => other?,
            };
            let timeout = seconds(req, "timeout")?;
            let interval = seconds(req, "pollingInterval")?;
            return respond_started(client, req, &restarted, timeout, interval).await;
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
    let fetch_state = truthy(req, "fetchState", false);
    let from = parse_time(req, "lastOperationTimeFrom")?;
    let to = parse_time(req, "lastOperationTimeTo")?;
    let page = client
        .list_entities(
            name,
            fetch_state,
            page_size(req)?,
            continuation(req).as_deref(),
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
            let mut v = json!({
                "entityId": { "name": m.id.name, "key": m.id.key },
                "lastOperationTime": df_time(m.last_operation_time),
            });
            if fetch_state {
                v["state"] = json_value(m.state.as_deref());
            }
            v
        })
        .collect();
    Ok(HttpResponse::json(StatusCode::OK, &items).with_header(
        "x-ms-continuation-token",
        page.continuation_token.unwrap_or_else(|| "null".into()),
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
        serde_json::from_str::<serde::de::IgnoredAny>(text)
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
