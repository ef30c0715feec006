//! The management API's JSON shapes, as serde structs. Durable Functions' clients read
//! these names, so they follow the reference system; fields are declared in the order of
//! their JSON names, which is the order the answers have always had.

use chrono::{DateTime, Utc};
use durable_core::history::{EventKind, HistoryEvent};
use durable_core::{FailureDetails, InstanceState, RuntimeStatus};
use serde::Serialize;
use serde_json::Value;

use crate::request::percent_encode;
use crate::status::{df_time, json_value};

use super::BASE;

/// A 4xx answer: `error`, plus `ExceptionMessage`, the field Durable Functions' clients
/// read from the reference system's error answers (the Python client's `start_new` raises
/// it).
#[derive(Serialize)]
pub(super) struct ErrorBody<'a> {
    #[serde(rename = "ExceptionMessage")]
    pub exception_message: &'a str,
    pub error: &'a str,
}

/// Management URLs of an instance, without any key: the reference system's 202 body (no
/// `rewindPostUri`, which only its `HttpManagementPayload` carries).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ManagementUrls<'a> {
    pub id: &'a str,
    pub purge_history_delete_uri: String,
    pub restart_post_uri: String,
    pub resume_post_uri: String,
    pub send_event_post_uri: String,
    pub status_query_get_uri: String,
    pub suspend_post_uri: String,
    pub terminate_post_uri: String,
}

impl<'a> ManagementUrls<'a> {
    /// The URLs of instance `id` under `base` (the host's public base URL).
    pub fn new(base: &str, id: &'a str) -> Self {
        let i = format!("{base}{BASE}/instances/{}", percent_encode(id));
        Self {
            id,
            purge_history_delete_uri: i.clone(),
            restart_post_uri: format!("{i}/restart"),
            resume_post_uri: format!("{i}/resume?reason={{text}}"),
            send_event_post_uri: format!("{i}/raiseEvent/{{eventName}}"),
            suspend_post_uri: format!("{i}/suspend?reason={{text}}"),
            terminate_post_uri: format!("{i}/terminate?reason={{text}}"),
            status_query_get_uri: i,
        }
    }
}

/// The history in a status answer: the reference system's shape, or the engine's own
/// (`historyFormat=internal`).
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum HistoryEvents {
    Internal(Value),
    Reference(Vec<EventWire>),
}

/// The latest heartbeat of one queued or running activity call (`showHeartbeats=true`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HeartbeatWire {
    pub name: String,
    /// The sequence number of its `TaskScheduled` event (`EventId` in the history).
    pub event_id: u64,
    pub attempt: u32,
    /// The details the activity passed to `heartbeat`, as JSON.
    pub details: Value,
}

impl From<durable_core::store::ActivityHeartbeat> for HeartbeatWire {
    fn from(h: durable_core::store::ActivityHeartbeat) -> Self {
        Self {
            name: h.name,
            event_id: h.seq,
            attempt: h.attempt,
            details: json_value(Some(&h.details)),
        }
    }
}

/// The status object of an instance (get status, list).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct InstanceStatus {
    pub created_time: String,
    pub custom_status: Value,
    /// The progress of the instance's running activities (`showHeartbeats=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeats: Option<Vec<HeartbeatWire>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_events: Option<HistoryEvents>,
    pub input: Value,
    pub instance_id: String,
    pub last_updated_time: String,
    pub name: String,
    /// The output; for a failed instance, its failure message.
    pub output: Value,
    pub runtime_status: &'static str,
}

impl InstanceStatus {
    /// The status of `state`; its input only with `show_input`.
    pub fn new(state: &InstanceState, show_input: bool) -> Self {
        let output = match state.status {
            RuntimeStatus::Failed => state
                .failure
                .as_ref()
                .map(|f| Value::String(f.message.clone()))
                .unwrap_or(Value::Null),
            _ => json_value(state.output.as_deref()),
        };
        Self {
            created_time: df_time(state.created_at),
            custom_status: json_value(state.custom_status.as_deref()),
            heartbeats: None,
            history_events: None,
            input: if show_input {
                json_value(state.input.as_deref())
            } else {
                Value::Null
            },
            instance_id: state.instance_id.clone(),
            last_updated_time: df_time(state.last_updated_at),
            name: state.name.clone(),
            output,
            runtime_status: state.status.as_str(),
        }
    }
}

/// `{"instancesDeleted": n}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Purged {
    pub instances_deleted: u64,
}

/// One entity in a listing.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EntityEntry {
    pub entity_id: EntityIdWire,
    pub last_operation_time: String,
    pub state: Value,
}

/// An entity id: `{"key", "name"}`.
#[derive(Serialize)]
pub(super) struct EntityIdWire {
    pub key: String,
    pub name: String,
}

/// A failure inside a history event.
#[derive(Serialize)]
pub(super) struct FailureWire {
    #[serde(rename = "ErrorMessage")]
    pub error_message: String,
    #[serde(rename = "ErrorType")]
    pub error_type: String,
}

impl From<&FailureDetails> for FailureWire {
    fn from(f: &FailureDetails) -> Self {
        Self {
            error_message: f.message.clone(),
            error_type: f.error_type.clone(),
        }
    }
}

/// One history event as the reference system shows it. A field is left out when the
/// event has no such field (`Some(None)` is an explicit null).
#[derive(Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct EventWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    pub event_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_details: Option<FailureWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fire_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orchestration_status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<String>,
    pub timestamp: String,
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The history of an execution as the reference system shows it (`showHistory=true`):
/// no `OrchestratorStarted`/`OrchestratorCompleted` episode markers; a completion absorbs
/// the event that scheduled it (`TaskCompleted`/`TaskFailed` carry the activity's
/// `FunctionName` and `ScheduledTime`, and the `TaskScheduled` disappears; the same for
/// sub-orchestrations and entity calls); no `EventId`/`TaskScheduledId`/`TimerId`;
/// orchestration and event inputs are left out; `Result`s only with `with_output`
/// (`showHistoryOutput=true`).
pub(super) fn history_events(history: &[HistoryEvent], with_output: bool) -> Vec<EventWire> {
    use std::collections::{HashMap, HashSet};
    // Scheduling events by (kind, sequence number): index and event.
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
    // Adds the scheduling event's name and time to a completion and hides it.
    let mut absorb = |w: &mut EventWire, kind: &str, seq: u64| {
        let Some((idx, s)) = i64::try_from(seq)
            .ok()
            .and_then(|seq| scheduled.get(&(kind, seq)))
        else {
            return;
        };
        absorbed.insert(*idx);
        match &s.kind {
            EventKind::TaskScheduled { name, .. }
            | EventKind::SubOrchestrationInstanceCreated { name, .. } => {
                w.function_name = Some(name.clone())
            }
            EventKind::EntityOperationCalled {
                entity_id,
                operation,
                ..
            } => {
                w.entity_id = Some(entity_id.clone());
                w.operation = Some(operation.clone());
            }
            _ => {}
        }
        w.scheduled_time = Some(ts(&s.timestamp));
    };
    let result = |r: &Option<String>| with_output.then(|| json_value(r.as_deref()));
    let mut out: Vec<(usize, EventWire)> = Vec::with_capacity(history.len());
    for (i, e) in history.iter().enumerate() {
        let mut w = EventWire {
            event_type: e.kind.type_name(),
            timestamp: ts(&e.timestamp),
            ..EventWire::default()
        };
        match &e.kind {
            EventKind::OrchestratorStarted | EventKind::OrchestratorCompleted => continue,
            EventKind::ExecutionStarted { name, .. } => w.function_name = Some(name.clone()),
            EventKind::ExecutionCompleted {
                status,
                result: r,
                failure,
            } => {
                w.orchestration_status = Some(status.as_str());
                w.result = result(r);
                w.failure_details = failure.as_ref().map(FailureWire::from);
            }
            EventKind::TaskScheduled { name, .. } => w.name = Some(name.clone()),
            EventKind::SubOrchestrationInstanceCreated {
                name, instance_id, ..
            } => {
                w.name = Some(name.clone());
                w.instance_id = Some(instance_id.clone());
            }
            EventKind::EntityOperationCalled {
                entity_id,
                operation,
                ..
            } => {
                w.entity_id = Some(entity_id.clone());
                w.operation = Some(operation.clone());
            }
            EventKind::TaskCompleted { seq, result: r }
            | EventKind::SubOrchestrationInstanceCompleted { seq, result: r }
            | EventKind::EntityOperationCompleted { seq, result: r } => {
                let kind = match &e.kind {
                    EventKind::TaskCompleted { .. } => "task",
                    EventKind::SubOrchestrationInstanceCompleted { .. } => "sub",
                    _ => "entity",
                };
                absorb(&mut w, kind, *seq);
                w.result = result(r);
            }
            EventKind::TaskFailed { seq, failure }
            | EventKind::SubOrchestrationInstanceFailed { seq, failure }
            | EventKind::EntityOperationFailed { seq, failure } => {
                let kind = match &e.kind {
                    EventKind::TaskFailed { .. } => "task",
                    EventKind::SubOrchestrationInstanceFailed { .. } => "sub",
                    _ => "entity",
                };
                absorb(&mut w, kind, *seq);
                w.reason = Some(Some(failure.message.clone()));
                w.failure_details = Some(FailureWire::from(failure));
            }
            EventKind::TimerCreated { fire_at } | EventKind::TimerFired { fire_at, .. } => {
                w.fire_at = Some(ts(fire_at))
            }
            EventKind::EventRaised { name, .. } => w.name = Some(name.clone()),
            EventKind::EventSent {
                instance_id,
                name,
                input,
            } => {
                w.instance_id = Some(instance_id.clone());
                w.name = Some(name.clone());
                w.input = result(input);
            }
            EventKind::ExecutionTerminated { reason }
            | EventKind::ExecutionSuspended { reason }
            | EventKind::ExecutionResumed { reason }
            | EventKind::ExecutionRewound { reason } => w.reason = Some(reason.clone()),
            _ => {}
        }
        out.push((i, w));
    }
    out.into_iter()
        .filter(|(i, _)| !absorbed.contains(i))
        .map(|(_, w)| w)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use durable_core::history::HistoryEvent;

    /// The text of `v` equals that of its `serde_json::Value` (whose maps sort their
    /// keys): the answers keep the bytes they had when they were built as JSON maps.
    fn same_as_a_map<T: Serialize>(v: &T) {
        let direct = serde_json::to_string(v).unwrap();
        let via_map = serde_json::to_value(v).unwrap().to_string();
        assert_eq!(direct, via_map);
    }

    #[test]
    fn answers_keep_the_key_order_of_json_maps() {
        same_as_a_map(&ErrorBody {
            exception_message: "m",
            error: "m",
        });
        same_as_a_map(&ManagementUrls::new("http://h", "id"));
        same_as_a_map(&Purged {
            instances_deleted: 2,
        });
        same_as_a_map(&EntityEntry {
            entity_id: EntityIdWire {
                key: "k".into(),
                name: "n".into(),
            },
            last_operation_time: "t".into(),
            state: Value::Null,
        });
        let t = chrono::Utc::now();
        let state = InstanceState {
            instance_id: "i".into(),
            execution_id: "e".into(),
            name: "n".into(),
            version: None,
            status: RuntimeStatus::Failed,
            input: Some("1".into()),
            output: None,
            failure: Some(FailureDetails::new("E", "boom")),
            custom_status: Some("\"s\"".into()),
            created_at: t,
            last_updated_at: t,
            parent: None,
        };
        let failure = FailureDetails::new("E", "boom");
        let history = vec![
            HistoryEvent::new(
                t,
                EventKind::ExecutionStarted {
                    name: "n".into(),
                    version: None,
                    input: None,
                    parent: None,
                    trace_parent: None,
                },
            ),
            HistoryEvent::scheduled(
                0,
                t,
                EventKind::TaskScheduled {
                    name: "a".into(),
                    input: None,
                    options: None,
                },
            ),
            HistoryEvent::new(
                t,
                EventKind::TaskFailed {
                    seq: 0,
                    failure: failure.clone(),
                },
            ),
            HistoryEvent::new(
                t,
                EventKind::EventSent {
                    instance_id: "o".into(),
                    name: "x".into(),
                    input: Some("2".into()),
                },
            ),
            HistoryEvent::new(t, EventKind::ExecutionTerminated { reason: None }),
            HistoryEvent::new(
                t,
                EventKind::ExecutionCompleted {
                    status: RuntimeStatus::Failed,
                    result: None,
                    failure: Some(failure),
                },
            ),
        ];
        let events = history_events(&history, true);
        assert_eq!(
            events.len(),
            history.len() - 1,
            "the TaskScheduled is absorbed"
        );
        for e in &events {
            same_as_a_map(e);
        }
        let mut status = InstanceStatus::new(&state, true);
        same_as_a_map(&status);
        status.history_events = Some(HistoryEvents::Reference(events));
        same_as_a_map(&status);
    }
}
