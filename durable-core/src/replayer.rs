//! The replayer: checks recorded histories against the current code before it ships.
//!
//! A change to an orchestrator that reorders, adds or removes a durable call breaks every
//! instance already running: the next replay fails it with `NonDeterminism`. The
//! [`Replayer`] finds that in a test instead of in production. Export histories from
//! production, check them in, and replay them in CI:
//!
//! - over HTTP: `GET /runtime/webhooks/durabletask/instances/{id}?historyFormat=internal`
//!   (the status with the history as the engine records it, every event with its sequence
//!   number, inputs and results);
//! - with the command-line tool: `durable history export <id> > tests/histories/<id>.json`
//!   (the same JSON);
//! - straight from a store: [`Replayer::replay_instance`].
//!
//! ```
//! use durable_core::replayer::{ReplayError, Replayer};
//! use durable_core::{OrchestrationContext, Registry, TaskError};
//!
//! let recorded = r#"{"instanceId": "order-1", "historyEvents": [
//!   {"event_id": -1, "timestamp": "2025-01-06T09:00:00Z", "eventType": "OrchestratorStarted"},
//!   {"event_id": -1, "timestamp": "2025-01-06T09:00:00Z", "eventType": "ExecutionStarted", "name": "order", "input": "3"},
//!   {"event_id": 0, "timestamp": "2025-01-06T09:00:00Z", "eventType": "TaskScheduled", "name": "reserve", "input": "3"}
//! ]}"#;
//! let reordered = Registry::builder()
//!     .orchestrator("order", |ctx: OrchestrationContext, n: u32| async move {
//!         ctx.call_activity_by_name::<()>("charge", &n).await?;
//!         ctx.call_activity_by_name::<()>("reserve", &n).await
//!     })
//!     .build()
//!     .unwrap();
//! match Replayer::new(reordered).replay_json(recorded) {
//!     Err(ReplayError::NonDeterminism { message, .. }) => assert!(message.contains(
//!         "at sequence number 0 the history recorded TaskScheduled 'reserve' but the code now attempted call_activity 'charge'"
//!     )),
//!     other => panic!("{other:?}"),
//! }
//! ```

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::error::Error;
use crate::history::{EventKind, FailureDetails, HistoryEvent};
use crate::instance::{InstanceState, RuntimeStatus};
use crate::registry::Registry;
use crate::replay::rerun;
use crate::store::{Store, StoreError};

/// Replays recorded histories on the orchestrators of a [`Registry`], running nothing:
/// activities, timers and events come from the history.
#[derive(Clone, Debug)]
pub struct Replayer {
    registry: Arc<Registry>,
}

/// A history the current code replays without a difference.
#[derive(Clone, Debug, PartialEq)]
pub struct Replayed {
    /// The instance the history belongs to.
    pub instance_id: String,
    /// The orchestrator.
    pub name: String,
    /// The version the instance started with (and replayed on).
    pub version: Option<String>,
    /// Events in the history.
    pub events: usize,
    /// True when the history ends with the execution finished (the code finished the same
    /// way); false for a history of a running instance, which the code replayed up to its
    /// last event.
    pub finished: bool,
}

/// Why a recorded history does not replay on the current code.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplayError {
    /// The text is not a recorded history in the engine's form.
    InvalidHistory(String),
    /// The code makes different durable calls than the history recorded: the engine's
    /// `NonDeterminism` message, naming the sequence number, the recorded call and the
    /// attempted one (or the call the code no longer makes).
    NonDeterminism {
        /// The instance.
        instance_id: String,
        /// The message the instance would fail with.
        message: String,
    },
    /// The code made the same calls but ended differently than the history records (another
    /// output, a failure instead of success, or no end where the history has one).
    Diverged {
        /// The instance.
        instance_id: String,
        /// What the history recorded.
        recorded: String,
        /// What the code did.
        replayed: String,
    },
    /// The history could not be replayed at all (its orchestrator or version is not
    /// registered).
    Failed {
        /// The instance.
        instance_id: String,
        /// Why.
        failure: FailureDetails,
    },
    /// Reading the history from a store failed.
    Store(StoreError),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::InvalidHistory(m) => write!(f, "not a recorded history: {m}"),
            ReplayError::NonDeterminism {
                instance_id,
                message,
            } => write!(f, "instance '{instance_id}': {message}"),
            ReplayError::Diverged {
                instance_id,
                recorded,
                replayed,
            } => write!(
                f,
                "instance '{instance_id}': the history recorded {recorded}, but the code {replayed}"
            ),
            ReplayError::Failed {
                instance_id,
                failure,
            } => write!(f, "instance '{instance_id}': {failure}"),
            ReplayError::Store(e) => write!(f, "reading the history: {e}"),
        }
    }
}

impl std::error::Error for ReplayError {}

impl From<StoreError> for ReplayError {
    fn from(e: StoreError) -> Self {
        ReplayError::Store(e)
    }
}

/// The id given to a history that names no instance (a bare array of events).
pub const UNNAMED_INSTANCE: &str = "replayed-instance";

impl Replayer {
    /// A replayer for the orchestrators in `registry`.
    pub fn new(registry: Registry) -> Self {
        Self {
            registry: Arc::new(registry),
        }
    }

    /// A replayer for every orchestrator the attribute macros registered in this binary.
    pub fn from_inventory() -> Result<Self, Error> {
        Ok(Self::new(Registry::from_inventory()?))
    }

    /// Replays a history exported as JSON: a status object with `historyEvents` in the
    /// engine's form (`historyFormat=internal`, `durable history export`), whose
    /// `instanceId` names the instance, or a bare array of such events.
    pub fn replay_json(&self, json: &str) -> Result<Replayed, ReplayError> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| ReplayError::InvalidHistory(format!("not JSON: {e}")))?;
        let (instance_id, events) =
            match value {
                Value::Array(events) => (UNNAMED_INSTANCE.to_string(), events),
                Value::Object(mut status) => {
                    let id = match status.get("instanceId") {
                        Some(Value::String(id)) => id.clone(),
                        None => UNNAMED_INSTANCE.to_string(),
                        Some(other) => {
                            return Err(ReplayError::InvalidHistory(format!(
                                "instanceId is {other}, not a string"
                            )))
                        }
                    };
                    match status.remove("historyEvents") {
                        Some(Value::Array(events)) => (id, events),
                        _ => return Err(ReplayError::InvalidHistory(
                            "no historyEvents array: export the status with historyFormat=internal"
                                .into(),
                        )),
                    }
                }
                _ => {
                    return Err(ReplayError::InvalidHistory(
                        "expected a status object with historyEvents or an array of events".into(),
                    ))
                }
            };
        let mut history = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            if event.get("EventType").is_some() {
                return Err(ReplayError::InvalidHistory(format!(
                    "event {i} is in Durable Functions' display form, which omits sequence numbers and inputs: export with historyFormat=internal"
                )));
            }
            let event: HistoryEvent = serde_json::from_value(event)
                .map_err(|e| ReplayError::InvalidHistory(format!("event {i}: {e}")))?;
            history.push(event);
        }
        self.replay(&instance_id, &history)
    }

    /// Replays the history in the JSON file at `path` (see [`replay_json`](Self::replay_json)).
    pub fn replay_file(&self, path: impl AsRef<Path>) -> Result<Replayed, ReplayError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ReplayError::InvalidHistory(format!("{}: {e}", path.display())))?;
        self.replay_json(&text).map_err(|e| match e {
            ReplayError::InvalidHistory(m) => {
                ReplayError::InvalidHistory(format!("{}: {m}", path.display()))
            }
            e => e,
        })
    }

    /// Replays the current execution of `instance_id` as `store` holds it.
    pub async fn replay_instance(
        &self,
        store: &dyn Store,
        instance_id: &str,
    ) -> Result<Replayed, ReplayError> {
        let history = store.read_history(instance_id).await?;
        self.replay(instance_id, &history)
    }

    /// Replays the events of one execution of `instance_id`, from its `ExecutionStarted`.
    pub fn replay(
        &self,
        instance_id: &str,
        history: &[HistoryEvent],
    ) -> Result<Replayed, ReplayError> {
        let started = history.iter().find_map(|e| match &e.kind {
            EventKind::ExecutionStarted {
                name,
                version,
                input,
                parent,
                ..
            } => Some((e.timestamp, name, version, input, parent)),
            _ => None,
        });
        let Some((at, name, version, input, parent)) = started else {
            return Err(ReplayError::InvalidHistory(
                "the history has no ExecutionStarted event".into(),
            ));
        };
        let state = InstanceState {
            instance_id: instance_id.to_string(),
            execution_id: "replay".to_string(),
            name: name.clone(),
            version: version.clone(),
            status: RuntimeStatus::Running,
            input: input.clone(),
            output: None,
            failure: None,
            custom_status: None,
            created_at: at,
            last_updated_at: at,
            parent: parent.clone(),
        };
        let run = rerun(&self.registry, &state, history);
        if let Some(message) = run.nondeterminism {
            return Err(ReplayError::NonDeterminism {
                instance_id: instance_id.to_string(),
                message,
            });
        }
        if let Some(Err(f)) = &run.result {
            if f.error_type == "UnknownOrchestrator" {
                return Err(ReplayError::Failed {
                    instance_id: instance_id.to_string(),
                    failure: f.clone(),
                });
            }
        }
        let recorded_end = history.iter().rev().find_map(|e| match &e.kind {
            EventKind::ExecutionCompleted {
                status,
                result,
                failure,
            } => Some((*status, result.clone(), failure.clone())),
            _ => None,
        });
        let diverged = |recorded: String, replayed: String| ReplayError::Diverged {
            instance_id: instance_id.to_string(),
            recorded,
            replayed,
        };
        let finished = recorded_end.is_some();
        let outcome_text = |o: &Result<Option<String>, FailureDetails>| match o {
            Ok(output) => format!("returned {}", output.as_deref().unwrap_or("null")),
            Err(f) => format!("failed with {f}"),
        };
        match recorded_end {
            // Stopped from outside: the code had no say in the end.
            Some((RuntimeStatus::Terminated, ..)) => {}
            Some((status, result, failure)) => match &run.result {
                None if run.continued_as_new || run.terminated => {}
                None => {
                    return Err(diverged(
                        format!("the end {status}"),
                        "did not finish".into(),
                    ))
                }
                Some(outcome) => {
                    let same = match (status, outcome) {
                        (RuntimeStatus::Completed, Ok(output)) => {
                            same_json(result.as_deref(), output.as_deref())
                        }
                        (RuntimeStatus::Failed, Err(f)) => failure.as_ref().is_some_and(|r| {
                            r.error_type == f.error_type && r.message == f.message
                        }),
                        _ => false,
                    };
                    if !same {
                        let recorded = match (status, &result, &failure) {
                            (RuntimeStatus::Completed, r, _) => {
                                format!("the output {}", r.as_deref().unwrap_or("null"))
                            }
                            (_, _, Some(f)) => format!("the failure {f}"),
                            _ => format!("the end {status}"),
                        };
                        return Err(diverged(recorded, outcome_text(outcome)));
                    }
                }
            },
            None => {
                if let Some(outcome) = &run.result {
                    return Err(diverged(
                        "a running instance".into(),
                        format!("finished within its history: it {}", outcome_text(outcome)),
                    ));
                }
            }
        }
        Ok(Replayed {
            instance_id: instance_id.to_string(),
            name: name.clone(),
            version: version.clone(),
            events: history.len(),
            finished,
        })
    }
}

/// True when two JSON payloads are the same value (formatting aside).
fn same_json(a: Option<&str>, b: Option<&str>) -> bool {
    let value = |s: Option<&str>| match s {
        None => Some(Value::Null),
        Some(s) => serde_json::from_str::<Value>(s).ok(),
    };
    a == b || matches!((value(a), value(b)), (Some(x), Some(y)) if x == y)
}
