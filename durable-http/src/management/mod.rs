//! The keyed management API under `/runtime/webhooks/durabletask/`, in Durable Functions'
//! shapes: routes, parameters, status codes and JSON field names follow the reference
//! system, so clients written for it work unchanged. The URLs it returns never carry the
//! key: callers add their own. Here: the routes and their handlers; the query parameters
//! are read in `params`, the JSON answers are the serde structs of `wire`.

use std::time::Duration;

use durable_core::payload::check_json;
use durable_core::{DurableClient, RuntimeStatus, StartOptions, StatusOptions};
use http::{Method, StatusCode};
use serde_json::Value;

use crate::request::{percent_encode, HttpError, HttpRequest, HttpResponse, HttpResult};
use crate::status::{df_time, json_value};

mod params;
mod wire;

use params::*;
use wire::*;

/// The management API's base path.
pub const BASE: &str = "/runtime/webhooks/durabletask";

fn check_status(req: &HttpRequest, id: &str) -> HttpResponse {
    let url = format!("{}{BASE}/instances/{}", req.base_url(), percent_encode(id));
    HttpResponse::json(
        StatusCode::ACCEPTED,
        &ManagementUrls::new(req.base_url(), id),
    )
    .with_header("location", url)
    .with_header("retry-after", "10")
}

pub(crate) async fn handle(client: &DurableClient, req: &HttpRequest, rest: &str) -> HttpResult {
    match route(client, req, rest).await {
        Err(e) if e.status.is_client_error() => Ok(error_response(e)),
        other => other,
    }
}

/// The pattern of the management route `rest` (the path after [`BASE`]) names, for the
/// metrics: a fixed string, never taken from the path.
pub(crate) fn route_pattern(rest: &str) -> &'static str {
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let first = parts.first().map(|s| s.to_ascii_lowercase());
    match (first.as_deref(), parts.len()) {
        (Some("orchestrators"), 2) => "/runtime/webhooks/durabletask/orchestrators/{name}",
        (Some("orchestrators"), 3) => "/runtime/webhooks/durabletask/orchestrators/{name}/{id}",
        (Some("instances"), 1) => "/runtime/webhooks/durabletask/instances",
        (Some("instances"), 2) => "/runtime/webhooks/durabletask/instances/{id}",
        (Some("instances"), 3) => "/runtime/webhooks/durabletask/instances/{id}/{operation}",
        (Some("instances"), 4) if parts[2].eq_ignore_ascii_case("raiseEvent") => {
            "/runtime/webhooks/durabletask/instances/{id}/raiseEvent/{event}"
        }
        (Some("entities"), 1) => "/runtime/webhooks/durabletask/entities",
        (Some("entities"), 2) => "/runtime/webhooks/durabletask/entities/{name}",
        (Some("entities"), 3) => "/runtime/webhooks/durabletask/entities/{name}/{key}",
        _ => "/runtime/webhooks/durabletask/unmatched",
    }
}

/// The wait a start or restart asks for (`timeout` with `pollingInterval`, read as
/// [`wait_params`] reads them) from the request's method, path under [`BASE`] and raw
/// query: the time its long poll gets on top of the request timeout. `None` for every
/// other request and for parameters the handler refuses.
pub(crate) fn long_poll(method: &Method, rest: &str, query: &str) -> Option<Duration> {
    if method != Method::POST || !query.contains("timeout") {
        return None;
    }
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let waits = match parts.as_slice() {
        [first, _] | [first, _, _] if first.eq_ignore_ascii_case("orchestrators") => true,
        [first, _, op] => {
            first.eq_ignore_ascii_case("instances") && op.eq_ignore_ascii_case("restart")
        }
        _ => false,
    };
    if !waits {
        return None;
    }
    let query = crate::request::parse_query(query);
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let seconds = |name: &str| get(name).and_then(|v| seconds_value(v).ok());
    match (seconds("timeout"), seconds("pollingInterval")) {
        (Some(t), Some(i)) if i <= t => Some(t),
        _ => None,
    }
}

/// A 4xx as `{"error": "..."}`, plus `ExceptionMessage`: the field Durable Functions'
/// clients read from the reference system's error answers (the Python client's
/// `start_new` raises it). Server errors take the host's usual path.
fn error_response(e: HttpError) -> HttpResponse {
    HttpResponse::json(
        e.status,
        &ErrorBody {
            exception_message: &e.message,
            error: &e.message,
        },
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
    let show_heartbeats = flag(req, "showHeartbeats", false)?;
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
    let mut body = InstanceStatus::new(&status.state, show_input);
    body.history_events = status.history.as_ref().map(|history| {
        if internal_history {
            HistoryEvents::Internal(serde_json::to_value(history).unwrap_or(Value::Null))
        } else {
            HistoryEvents::Reference(history_events(history, show_history_output))
        }
    });
    if show_heartbeats {
        let beats = client.activity_heartbeats(id).await?;
        body.heartbeats = Some(beats.into_iter().map(HeartbeatWire::from).collect());
    }
    let code = match status.state.status {
        RuntimeStatus::Failed if internal_error_on_failure => StatusCode::INTERNAL_SERVER_ERROR,
        s if s.is_terminal() => StatusCode::OK,
        _ => StatusCode::ACCEPTED,
    };
    let mut resp = HttpResponse::json(code, &body);
    if code == StatusCode::ACCEPTED {
        resp = resp
            .with_header("location", request_url_without_key(req))
            .with_header("retry-after", "5");
    }
    Ok(resp)
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
    let items: Vec<InstanceStatus> = page
        .items
        .iter()
        .filter(|s| !durable_core::entity::is_entity_instance(&s.instance_id))
        .map(|s| InstanceStatus::new(s, show_input))
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
            &Purged {
                instances_deleted: 1,
            },
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
        &Purged {
            instances_deleted: n,
        },
    ))
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
    let items: Vec<EntityEntry> = page
        .items
        .iter()
        .filter(|m| {
            from.is_none_or(|f| m.last_operation_time >= f)
                && to.is_none_or(|t| m.last_operation_time <= t)
        })
        .map(|m| EntityEntry {
            entity_id: EntityIdWire {
                key: m.id.key.clone(),
                name: m.id.name.clone(),
            },
            last_operation_time: df_time(m.last_operation_time),
            state: if fetch_state {
                json_value(m.state.as_deref())
            } else {
                Value::Null
            },
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
