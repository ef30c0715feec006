//! History events: the append-only log of one orchestration execution, and the
//! messages that deliver new events to an instance. Payloads are JSON text.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why a task, sub-orchestration or orchestration failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetails {
    /// A short classification, e.g. `ActivityError`, `Panic`, `NonDeterminism`, `Timeout`.
    pub error_type: String,
    /// The human-readable message.
    pub message: String,
    /// Optional longer details (never shown on the public status endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// When true, retry policies do not retry this failure.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_retriable: bool,
}

impl FailureDetails {
    /// A failure with a type and a message.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            message: message.into(),
            details: None,
            non_retriable: false,
        }
    }
}

impl std::fmt::Display for FailureDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

/// The parent of a sub-orchestration instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentInstance {
    /// The parent's instance id.
    pub instance_id: String,
    /// The parent's execution id when it scheduled this child.
    pub execution_id: String,
    /// The sequence number of the `SubOrchestrationInstanceCreated` event in the parent.
    #[serde(rename = "task_scheduled_id")]
    pub seq: u64,
    /// The parent's orchestrator name.
    pub name: String,
}

/// One event of an execution's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// For scheduling events, the sequence number of the durable call; otherwise -1.
    #[serde(rename = "event_id")]
    pub seq: i64,
    /// When the event was recorded.
    pub timestamp: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl HistoryEvent {
    /// An event that is not a scheduling event.
    pub fn new(timestamp: DateTime<Utc>, kind: EventKind) -> Self {
        Self {
            seq: -1,
            timestamp,
            kind,
        }
    }

    /// A scheduling event carrying the sequence number `seq`.
    pub fn scheduled(seq: u64, timestamp: DateTime<Utc>, kind: EventKind) -> Self {
        Self {
            seq: seq as i64,
            timestamp,
            kind,
        }
    }
}

/// The kinds of history events, with their fields (Durable Task Framework names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType")]
pub enum EventKind {
    /// Marks the start of an episode; its timestamp is `current_utc_datetime`.
    OrchestratorStarted,
    /// Marks the end of an episode.
    OrchestratorCompleted,
    /// The execution started with this input.
    ExecutionStarted {
        /// Orchestrator name.
        name: String,
        /// Orchestrator version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        /// JSON input.
        input: Option<String>,
        /// The parent, for a sub-orchestration.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentInstance>,
        /// The W3C `traceparent` of the start, parent of the instance's spans.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_parent: Option<String>,
    },
    /// The execution ended.
    ExecutionCompleted {
        /// Completed, Failed or Terminated.
        status: RuntimeStatus,
        /// JSON output on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
        /// The failure, when failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<FailureDetails>,
    },
    /// A terminate request was applied.
    ExecutionTerminated {
        /// Why.
        reason: Option<String>,
    },
    /// A suspend request was applied.
    ExecutionSuspended {
        /// Why.
        reason: Option<String>,
    },
    /// A resume request was applied.
    ExecutionResumed {
        /// Why.
        reason: Option<String>,
    },
    /// A failed execution was rewound: its failed work is run again.
    ExecutionRewound {
        /// Why.
        reason: Option<String>,
    },
    /// The execution continued as a new one with this input.
    ContinueAsNew {
        /// JSON input of the next execution.
        input: Option<String>,
    },
    /// An activity was scheduled.
    TaskScheduled {
        /// Activity name.
        name: String,
        /// JSON input.
        input: Option<String>,
        /// The attempt's number and timeouts, when the call gave any (absent from
        /// histories written before they were recorded): a rewind issues the attempt again
        /// with them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        options: Option<TaskOptions>,
    },
    /// An activity completed.
    TaskCompleted {
        /// Sequence number of the matching `TaskScheduled`.
        #[serde(rename = "task_scheduled_id")]
        seq: u64,
        /// JSON result.
        result: Option<String>,
    },
    /// An activity failed.
    TaskFailed {
        /// Sequence number of the matching `TaskScheduled`.
        #[serde(rename = "task_scheduled_id")]
        seq: u64,
        /// Why.
        failure: FailureDetails,
    },
    /// A sub-orchestration was started.
    SubOrchestrationInstanceCreated {
        /// Orchestrator name.
        name: String,
        /// Version requested.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        /// The child instance id.
        instance_id: String,
        /// JSON input.
        input: Option<String>,
        /// The child keeps running when this instance is terminated or purged
        /// ([`ParentClosePolicy::Abandon`](crate::context::ParentClosePolicy::Abandon)).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        abandon_on_parent_close: bool,
    },
    /// A sub-orchestration completed.
    SubOrchestrationInstanceCompleted {
        /// Sequence number of the matching `SubOrchestrationInstanceCreated`.
        #[serde(rename = "task_scheduled_id")]
        seq: u64,
        /// JSON result.
        result: Option<String>,
    },
    /// A sub-orchestration failed.
    SubOrchestrationInstanceFailed {
        /// Sequence number of the matching `SubOrchestrationInstanceCreated`.
        #[serde(rename = "task_scheduled_id")]
        seq: u64,
        /// Why.
        failure: FailureDetails,
    },
    /// A durable timer was created.
    TimerCreated {
        /// When it fires.
        fire_at: DateTime<Utc>,
    },
    /// A durable timer fired.
    TimerFired {
        /// Sequence number of the matching `TimerCreated`.
        #[serde(rename = "timer_id")]
        seq: u64,
        /// When it was due.
        fire_at: DateTime<Utc>,
    },
    /// An external event arrived.
    EventRaised {
        /// Event name.
        name: String,
        /// JSON payload.
        input: Option<String>,
    },
    /// This orchestration sent an event to another instance.
    EventSent {
        /// Target instance.
        instance_id: String,
        /// Event name.
        name: String,
        /// JSON payload.
        input: Option<String>,
    },
    /// This orchestration called an entity operation and waits for its result.
    EntityOperationCalled {
        /// The entity's instance id (`@name@key`).
        entity_id: String,
        /// Operation name.
        operation: String,
        /// JSON input.
        input: Option<String>,
    },
    /// This orchestration signalled an entity operation (no result).
    EntityOperationSignaled {
        /// The entity's instance id (`@name@key`).
        entity_id: String,
        /// Operation name.
        operation: String,
        /// JSON input.
        input: Option<String>,
        /// Deliver no earlier than this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduled_time: Option<DateTime<Utc>>,
    },
    /// This orchestration asked for the locks of these entities (a critical section).
    EntityLockRequested {
        /// Entity instance ids, in lock order.
        entity_ids: Vec<String>,
    },
    /// This orchestration released its lock on an entity.
    EntityUnlockSent {
        /// The entity's instance id.
        entity_id: String,
    },
    /// An entity operation called by this orchestration completed.
    EntityOperationCompleted {
        /// Sequence number of the matching `EntityOperationCalled`.
        #[serde(rename = "task_scheduled_id")]
        seq: u64,
        /// JSON result.
        result: Option<String>,
    },
    /// An entity operation called by this orchestration failed.
    EntityOperationFailed {
        /// Sequence number of the matching `EntityOperationCalled`.
        #[serde(rename = "task_scheduled_id")]
        seq: u64,
        /// Why.
        failure: FailureDetails,
    },
    /// All locks of a critical section were granted.
    EntityLockGranted {
        /// Sequence number of the matching `EntityLockRequested`.
        #[serde(rename = "task_scheduled_id")]
        seq: u64,
    },
    /// A message to an entity: an operation, a lock request or a lock release.
    EntityRequest {
        /// The request.
        request: EntityRequest,
    },
}

/// Where an entity sends the answer to a call or a lock request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    /// The orchestration instance.
    pub instance_id: String,
    /// Its execution.
    pub execution_id: String,
    /// The sequence number of the call in that execution.
    #[serde(rename = "task_scheduled_id")]
    pub seq: u64,
}

/// A message to an entity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EntityRequest {
    /// Run an operation.
    Operation {
        /// Operation name.
        operation: String,
        /// JSON input.
        input: Option<String>,
        /// Set for calls (two-way); None for signals.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<ReplyTo>,
        /// The sending orchestration, when it sends from inside a critical section.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lock_owner: Option<String>,
        /// The sender's W3C `traceparent`, parent of the operation's span.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_parent: Option<String>,
    },
    /// Acquire this entity's lock for `owner`, then pass the request on to the next entity
    /// of `entity_ids` (or grant the critical section when this is the last one).
    Lock {
        /// Who asks.
        owner: ReplyTo,
        /// Every entity of the critical section, in lock order.
        entity_ids: Vec<String>,
        /// This entity's index in `entity_ids`.
        position: usize,
    },
    /// Release the lock held by `owner`.
    Unlock {
        /// The orchestration instance that held the lock.
        owner: String,
    },
}

impl EventKind {
    /// The event type name, as in the Durable Task Framework.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::OrchestratorStarted => "OrchestratorStarted",
            EventKind::OrchestratorCompleted => "OrchestratorCompleted",
            EventKind::ExecutionStarted { .. } => "ExecutionStarted",
            EventKind::ExecutionCompleted { .. } => "ExecutionCompleted",
            EventKind::ExecutionTerminated { .. } => "ExecutionTerminated",
            EventKind::ExecutionSuspended { .. } => "ExecutionSuspended",
            EventKind::ExecutionResumed { .. } => "ExecutionResumed",
            EventKind::ExecutionRewound { .. } => "ExecutionRewound",
            EventKind::ContinueAsNew { .. } => "ContinueAsNew",
            EventKind::TaskScheduled { .. } => "TaskScheduled",
            EventKind::TaskCompleted { .. } => "TaskCompleted",
            EventKind::TaskFailed { .. } => "TaskFailed",
            EventKind::SubOrchestrationInstanceCreated { .. } => "SubOrchestrationInstanceCreated",
            EventKind::SubOrchestrationInstanceCompleted { .. } => {
                "SubOrchestrationInstanceCompleted"
            }
            EventKind::SubOrchestrationInstanceFailed { .. } => "SubOrchestrationInstanceFailed",
            EventKind::TimerCreated { .. } => "TimerCreated",
            EventKind::TimerFired { .. } => "TimerFired",
            EventKind::EventRaised { .. } => "EventRaised",
            EventKind::EventSent { .. } => "EventSent",
            EventKind::EntityOperationCalled { .. } => "EntityOperationCalled",
            EventKind::EntityOperationSignaled { .. } => "EntityOperationSignaled",
            EventKind::EntityLockRequested { .. } => "EntityLockRequested",
            EventKind::EntityUnlockSent { .. } => "EntityUnlockSent",
            EventKind::EntityOperationCompleted { .. } => "EntityOperationCompleted",
            EventKind::EntityOperationFailed { .. } => "EntityOperationFailed",
            EventKind::EntityLockGranted { .. } => "EntityLockGranted",
            EventKind::EntityRequest { .. } => "EntityRequest",
        }
    }

    /// For completion events, the sequence number of the call they complete.
    pub fn completes(&self) -> Option<u64> {
        match self {
            EventKind::TaskCompleted { seq, .. }
            | EventKind::TaskFailed { seq, .. }
            | EventKind::SubOrchestrationInstanceCompleted { seq, .. }
            | EventKind::SubOrchestrationInstanceFailed { seq, .. } => Some(*seq),
            EventKind::EntityOperationCompleted { seq, .. }
            | EventKind::EntityOperationFailed { seq, .. }
            | EventKind::EntityLockGranted { seq } => Some(*seq),
            EventKind::TimerFired { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

/// A message addressed to an orchestration instance: one new event for its next episode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrchestrationMessage {
    /// The target instance.
    pub instance_id: String,
    /// When set, the message is only for this execution; it is dropped if the instance
    /// has moved on (continue-as-new, restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// The event to apply.
    pub event: HistoryEvent,
    /// Not delivered before this time (durable timers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible_at: Option<DateTime<Utc>>,
}

impl OrchestrationMessage {
    /// A message delivered as soon as possible.
    pub fn new(instance_id: impl Into<String>, event: HistoryEvent) -> Self {
        Self {
            instance_id: instance_id.into(),
            execution_id: None,
            event,
            visible_at: None,
        }
    }

    /// Restricts the message to one execution.
    pub fn for_execution(mut self, execution_id: impl Into<String>) -> Self {
        self.execution_id = Some(execution_id.into());
        self
    }

    /// Delays the message until `at`.
    pub fn visible_at(mut self, at: DateTime<Utc>) -> Self {
        self.visible_at = Some(at);
        self
    }
}

/// How an episode changes the history.
#[derive(Clone, Debug, PartialEq)]
pub enum HistoryUpdate {
    /// Append these events.
    Append(Vec<HistoryEvent>),
    /// Replace the whole history of the instance (continue-as-new, rewind).
    Replace(Vec<HistoryEvent>),
}

impl Default for HistoryUpdate {
    /// Appends nothing.
    fn default() -> Self {
        HistoryUpdate::Append(Vec::new())
    }
}

/// The runtime status of an orchestration instance (Durable Functions names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuntimeStatus {
    /// Created, first episode not yet run.
    Pending,
    /// Running (possibly waiting for timers, events or tasks).
    Running,
    /// Finished with an output.
    Completed,
    /// Transient: the execution is being replaced by a new one.
    ContinuedAsNew,
    /// Finished with a failure.
    Failed,
    /// Kept for Durable Functions API compatibility; not produced by this engine.
    Canceled,
    /// Stopped by a terminate request.
    Terminated,
    /// Paused by a suspend request; resumes on a resume request.
    Suspended,
}

impl RuntimeStatus {
    /// All statuses, in Durable Functions' enum order.
    pub const ALL: [RuntimeStatus; 8] = [
        RuntimeStatus::Running,
        RuntimeStatus::Completed,
        RuntimeStatus::ContinuedAsNew,
        RuntimeStatus::Failed,
        RuntimeStatus::Canceled,
        RuntimeStatus::Terminated,
        RuntimeStatus::Pending,
        RuntimeStatus::Suspended,
    ];

    /// True for Completed, Failed, Terminated and Canceled: the instance will not run again
    /// unless it is rewound, restarted or replaced.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RuntimeStatus::Completed
                | RuntimeStatus::Failed
                | RuntimeStatus::Terminated
                | RuntimeStatus::Canceled
        )
    }

    /// The Durable Functions name, e.g. `"Running"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeStatus::Pending => "Pending",
            RuntimeStatus::Running => "Running",
            RuntimeStatus::Completed => "Completed",
            RuntimeStatus::ContinuedAsNew => "ContinuedAsNew",
            RuntimeStatus::Failed => "Failed",
            RuntimeStatus::Canceled => "Canceled",
            RuntimeStatus::Terminated => "Terminated",
            RuntimeStatus::Suspended => "Suspended",
        }
    }

    /// Parses a Durable Functions status name, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl std::fmt::Display for RuntimeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One activity call of an instance: the execution that made it and the sequence number
/// of its `TaskScheduled` event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ActivityCall {
    /// The execution that made the call.
    pub execution_id: String,
    /// The sequence number of its `TaskScheduled` event.
    pub seq: u64,
}

/// How one activity attempt was scheduled beyond its name and input, recorded in its
/// `TaskScheduled` event. Retries are not here: the orchestration's code drives them, and
/// replays them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOptions {
    /// Attempt number under a retry policy (1 for the first).
    #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
    pub attempt: u32,
    /// The attempt's start-to-close timeout, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_to_close_us: Option<u64>,
    /// The attempt's heartbeat timeout, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_us: Option<u64>,
}

fn first_attempt() -> u32 {
    1
}

fn is_first_attempt(n: &u32) -> bool {
    *n == 1
}

impl TaskOptions {
    /// The options of an attempt, or None when they are all defaults (nothing to record).
    pub fn of(
        attempt: u32,
        start_to_close: Option<std::time::Duration>,
        heartbeat_timeout: Option<std::time::Duration>,
    ) -> Option<Self> {
        let us = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let o = Self {
            attempt,
            start_to_close_us: start_to_close.map(us),
            heartbeat_timeout_us: heartbeat_timeout.map(us),
        };
        (o != Self {
            attempt: 1,
            ..Self::default()
        })
        .then_some(o)
    }

    /// The start-to-close timeout.
    pub fn start_to_close(&self) -> Option<std::time::Duration> {
        self.start_to_close_us.map(std::time::Duration::from_micros)
    }

    /// The heartbeat timeout.
    pub fn heartbeat_timeout(&self) -> Option<std::time::Duration> {
        self.heartbeat_timeout_us
            .map(std::time::Duration::from_micros)
    }
}

#[cfg(test)]
mod task_options_tests {
    use super::*;

    #[test]
    fn old_histories_read_and_plain_calls_record_nothing_new() {
        let old = r#"{"eventType":"TaskScheduled","name":"a","input":null}"#;
        let kind: EventKind = serde_json::from_str(old).unwrap();
        assert!(matches!(
            kind,
            EventKind::TaskScheduled { options: None, .. }
        ));
        let plain = EventKind::TaskScheduled {
            name: "a".into(),
            input: None,
            options: TaskOptions::of(1, None, None),
        };
        assert_eq!(serde_json::to_string(&plain).unwrap(), old);
        let timed = EventKind::TaskScheduled {
            name: "a".into(),
            input: None,
            options: TaskOptions::of(2, Some(std::time::Duration::from_millis(5)), None),
        };
        let json = serde_json::to_string(&timed).unwrap();
        assert_eq!(
            json,
            r#"{"eventType":"TaskScheduled","name":"a","input":null,"options":{"attempt":2,"start_to_close_us":5000}}"#
        );
        assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), timed);
    }
}
