//! Instances: runtime status, the stored state of an instance, and query filters.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::history::{FailureDetails, HistoryEvent, ParentInstance};

/// Re-exported here, where instances are: the status lives with the events that set it.
pub use crate::history::RuntimeStatus;

/// The stored state of an orchestration instance, as returned by status queries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceState {
    /// The instance id.
    pub instance_id: String,
    /// The current execution id (changes on continue-as-new and restart).
    pub execution_id: String,
    /// Orchestrator name.
    pub name: String,
    /// Orchestrator version, when one was given.
    pub version: Option<String>,
    /// Runtime status.
    pub status: RuntimeStatus,
    /// JSON input of the current execution.
    pub input: Option<String>,
    /// JSON output when Completed.
    pub output: Option<String>,
    /// The failure when Failed (or the reason when Terminated).
    pub failure: Option<FailureDetails>,
    /// JSON custom status set by the orchestrator.
    pub custom_status: Option<String>,
    /// When the instance was created.
    pub created_at: DateTime<Utc>,
    /// When its state last changed.
    pub last_updated_at: DateTime<Utc>,
    /// The parent, for a sub-orchestration.
    pub parent: Option<ParentInstance>,
}

/// A new instance to create.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewInstance {
    /// Instance id.
    pub instance_id: String,
    /// Execution id of the first execution.
    pub execution_id: String,
    /// Orchestrator name.
    pub name: String,
    /// Orchestrator version.
    pub version: Option<String>,
    /// JSON input.
    pub input: Option<String>,
    /// The parent, for a sub-orchestration.
    pub parent: Option<ParentInstance>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Do not run before this time (scheduled start).
    pub start_at: Option<DateTime<Utc>>,
    /// The W3C `traceparent` the instance's spans continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

impl NewInstance {
    /// The `ExecutionStarted` message that runs the first episode.
    pub fn start_message(&self) -> crate::history::OrchestrationMessage {
        let event = HistoryEvent::new(
            self.created_at,
            crate::history::EventKind::ExecutionStarted {
                name: self.name.clone(),
                version: self.version.clone(),
                input: self.input.clone(),
                parent: self.parent.clone(),
                trace_parent: self.trace_parent.clone(),
            },
        );
        let mut msg = crate::history::OrchestrationMessage::new(self.instance_id.clone(), event)
            .for_execution(self.execution_id.clone());
        msg.visible_at = self.start_at;
        msg
    }

    /// The state an instance has right after it is created.
    pub fn initial_state(&self) -> InstanceState {
        InstanceState {
            instance_id: self.instance_id.clone(),
            execution_id: self.execution_id.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
            status: RuntimeStatus::Pending,
            input: self.input.clone(),
            output: None,
            failure: None,
            custom_status: None,
            created_at: self.created_at,
            last_updated_at: self.created_at,
            parent: self.parent.clone(),
        }
    }
}

/// Filters for listing and bulk-purging instances. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceFilter {
    /// Only these statuses (empty: any).
    pub statuses: Vec<RuntimeStatus>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created at or before.
    pub created_to: Option<DateTime<Utc>>,
    /// Instance id starts with.
    pub instance_id_prefix: Option<String>,
}

impl InstanceFilter {
    /// True when `state` passes the filter.
    pub fn matches(&self, state: &InstanceState) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&state.status))
            && self.created_from.is_none_or(|t| state.created_at >= t)
            && self.created_to.is_none_or(|t| state.created_at <= t)
            && self
                .instance_id_prefix
                .as_deref()
                .is_none_or(|p| state.instance_id.starts_with(p))
    }
}

/// One page of a listing, with the token for the next page (None when done).
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass this back to get the next page; None when there are no more.
    pub continuation_token: Option<String>,
}

/// A random 128-bit token as 32 hex characters (instance ids, lease tokens).
pub fn random_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
