//! The replay state of one execution: the durable calls made so far (by sequence
//! number), their recorded completions, the events that arrived, and the flags replay
//! reads and sets. Shared by the context, its futures and the replay engine.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::task::Waker;

use chrono::{DateTime, Utc};

use crate::history::{EventKind, FailureDetails, HistoryEvent, ParentInstance, TaskOptions};

/// A durable call the orchestrator made, as recorded (or to be recorded) in history.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    Activity {
        name: String,
        input: Option<String>,
        attempt: u32,
        /// Start-to-close timeout of this attempt (recorded in history since
        /// [`TaskOptions`]).
        start_to_close: Option<std::time::Duration>,
        /// Heartbeat timeout of this attempt (likewise).
        heartbeat_timeout: Option<std::time::Duration>,
        /// The previous attempt's last heartbeat details (not recorded in history).
        heartbeat_details: Option<String>,
    },
    Timer {
        fire_at: DateTime<Utc>,
    },
    SubOrchestration {
        name: String,
        version: Option<String>,
        instance_id: String,
        input: Option<String>,
        /// Left running when the parent is terminated or purged.
        abandon_on_parent_close: bool,
    },
    SendEvent {
        instance_id: String,
        name: String,
        input: Option<String>,
    },
    CallEntity {
        entity_id: String,
        operation: String,
        input: Option<String>,
        /// Sent from inside a critical section (not recorded in history).
        in_critical_section: bool,
    },
    SignalEntity {
        entity_id: String,
        operation: String,
        input: Option<String>,
        at: Option<DateTime<Utc>>,
    },
    LockEntities {
        entity_ids: Vec<String>,
    },
    UnlockEntity {
        entity_id: String,
    },
}

impl Action {
    /// The action a scheduling history event records, if it is one.
    pub(crate) fn from_event(kind: &EventKind) -> Option<Action> {
        Some(match kind {
            EventKind::TaskScheduled {
                name,
                input,
                options,
            } => Action::Activity {
                name: name.clone(),
                input: input.clone(),
                attempt: options.as_ref().map_or(1, |o| o.attempt),
                start_to_close: options.as_ref().and_then(|o| o.start_to_close()),
                heartbeat_timeout: options.as_ref().and_then(|o| o.heartbeat_timeout()),
                heartbeat_details: None,
            },
            EventKind::TimerCreated { fire_at } => Action::Timer { fire_at: *fire_at },
            EventKind::SubOrchestrationInstanceCreated {
                name,
                version,
                instance_id,
                input,
                abandon_on_parent_close,
            } => Action::SubOrchestration {
                name: name.clone(),
                version: version.clone(),
                instance_id: instance_id.clone(),
                input: input.clone(),
                abandon_on_parent_close: *abandon_on_parent_close,
            },
            EventKind::EventSent {
                instance_id,
                name,
                input,
            } => Action::SendEvent {
                instance_id: instance_id.clone(),
                name: name.clone(),
                input: input.clone(),
            },
            EventKind::EntityOperationCalled {
                entity_id,
                operation,
                input,
            } => Action::CallEntity {
                entity_id: entity_id.clone(),
                operation: operation.clone(),
                input: input.clone(),
                in_critical_section: false,
            },
            EventKind::EntityOperationSignaled {
                entity_id,
                operation,
                input,
                scheduled_time,
            } => Action::SignalEntity {
                entity_id: entity_id.clone(),
                operation: operation.clone(),
                input: input.clone(),
                at: *scheduled_time,
            },
            EventKind::EntityLockRequested { entity_ids } => Action::LockEntities {
                entity_ids: entity_ids.clone(),
            },
            EventKind::EntityUnlockSent { entity_id } => Action::UnlockEntity {
                entity_id: entity_id.clone(),
            },
            _ => return None,
        })
    }

    /// The history event that records this action.
    pub(crate) fn to_event(&self, seq: u64, now: DateTime<Utc>) -> HistoryEvent {
        let kind = match self.clone() {
            Action::Activity {
                name,
                input,
                attempt,
                start_to_close,
                heartbeat_timeout,
                ..
            } => EventKind::TaskScheduled {
                name,
                input,
                options: TaskOptions::of(attempt, start_to_close, heartbeat_timeout),
            },
            Action::Timer { fire_at } => EventKind::TimerCreated { fire_at },
            Action::SubOrchestration {
                name,
                version,
                instance_id,
                input,
                abandon_on_parent_close,
            } => EventKind::SubOrchestrationInstanceCreated {
                name,
                version,
                instance_id,
                input,
                abandon_on_parent_close,
            },
            Action::SendEvent {
                instance_id,
                name,
                input,
            } => EventKind::EventSent {
                instance_id,
                name,
                input,
            },
            Action::CallEntity {
                entity_id,
                operation,
                input,
                ..
            } => EventKind::EntityOperationCalled {
                entity_id,
                operation,
                input,
            },
            Action::SignalEntity {
                entity_id,
                operation,
                input,
                at,
            } => EventKind::EntityOperationSignaled {
                entity_id,
                operation,
                input,
                scheduled_time: at,
            },
            Action::LockEntities { entity_ids } => EventKind::EntityLockRequested { entity_ids },
            Action::UnlockEntity { entity_id } => EventKind::EntityUnlockSent { entity_id },
        };
        HistoryEvent::scheduled(seq, now, kind)
    }

    /// True when `other` is the same call (kind and target; inputs may differ).
    fn same_call(&self, other: &Action) -> bool {
        match (self, other) {
            (Action::Activity { name: a, .. }, Action::Activity { name: b, .. }) => a == b,
            (Action::Timer { .. }, Action::Timer { .. }) => true,
            (
                Action::SubOrchestration {
                    name: a,
                    instance_id: ia,
                    ..
                },
                Action::SubOrchestration {
                    name: b,
                    instance_id: ib,
                    ..
                },
            ) => a == b && ia == ib,
            (
                Action::SendEvent {
                    instance_id: ia,
                    name: a,
                    ..
                },
                Action::SendEvent {
                    instance_id: ib,
                    name: b,
                    ..
                },
            ) => a == b && ia == ib,
            (
                Action::CallEntity {
                    entity_id: ia,
                    operation: a,
                    ..
                },
                Action::CallEntity {
                    entity_id: ib,
                    operation: b,
                    ..
                },
            )
            | (
                Action::SignalEntity {
                    entity_id: ia,
                    operation: a,
                    ..
                },
                Action::SignalEntity {
                    entity_id: ib,
                    operation: b,
                    ..
                },
            ) => a == b && ia == ib,
            (Action::LockEntities { entity_ids: a }, Action::LockEntities { entity_ids: b }) => {
                a == b
            }
            (Action::UnlockEntity { entity_id: a }, Action::UnlockEntity { entity_id: b }) => {
                a == b
            }
            _ => false,
        }
    }

    /// How the history names this action.
    pub(crate) fn recorded_name(&self) -> String {
        match self {
            Action::Activity { name, .. } => format!("TaskScheduled '{name}'"),
            Action::Timer { .. } => "TimerCreated".to_string(),
            Action::SubOrchestration {
                name, instance_id, ..
            } => format!("SubOrchestrationInstanceCreated '{name}' (instance '{instance_id}')"),
            Action::SendEvent {
                instance_id, name, ..
            } => format!("EventSent '{name}' to '{instance_id}'"),
            Action::CallEntity {
                entity_id,
                operation,
                ..
            } => format!("EntityOperationCalled '{operation}' on '{entity_id}'"),
            Action::SignalEntity {
                entity_id,
                operation,
                ..
            } => format!("EntityOperationSignaled '{operation}' on '{entity_id}'"),
            Action::LockEntities { entity_ids } => format!("EntityLockRequested {entity_ids:?}"),
            Action::UnlockEntity { entity_id } => format!("EntityUnlockSent '{entity_id}'"),
        }
    }

    /// How the code's call is described.
    pub(crate) fn attempted_name(&self) -> String {
        match self {
            Action::Activity { name, .. } => format!("call_activity '{name}'"),
            Action::Timer { .. } => "create_timer".to_string(),
            Action::SubOrchestration {
                name, instance_id, ..
            } => format!("call_sub_orchestrator '{name}' (instance '{instance_id}')"),
            Action::SendEvent {
                instance_id, name, ..
            } => format!("send_event '{name}' to '{instance_id}'"),
            Action::CallEntity {
                entity_id,
                operation,
                ..
            } => format!("call_entity '{operation}' on '{entity_id}'"),
            Action::SignalEntity {
                entity_id,
                operation,
                ..
            } => format!("signal_entity '{operation}' on '{entity_id}'"),
            Action::LockEntities { entity_ids } => format!("lock {entity_ids:?}"),
            Action::UnlockEntity { entity_id } => format!("unlock '{entity_id}'"),
        }
    }

    /// The completion event kinds that may complete this action.
    pub(crate) fn accepts(&self, kind: &EventKind) -> bool {
        matches!(
            (self, kind),
            (Action::Activity { .. }, EventKind::TaskCompleted { .. })
                | (Action::Activity { .. }, EventKind::TaskFailed { .. })
                | (Action::Timer { .. }, EventKind::TimerFired { .. })
                | (
                    Action::SubOrchestration { .. },
                    EventKind::SubOrchestrationInstanceCompleted { .. }
                )
                | (
                    Action::SubOrchestration { .. },
                    EventKind::SubOrchestrationInstanceFailed { .. }
                )
                | (
                    Action::CallEntity { .. },
                    EventKind::EntityOperationCompleted { .. }
                )
                | (
                    Action::CallEntity { .. },
                    EventKind::EntityOperationFailed { .. }
                )
                | (
                    Action::LockEntities { .. },
                    EventKind::EntityLockGranted { .. }
                )
        )
    }
}

/// The result of a durable call as delivered by a completion event.
#[derive(Clone, Debug)]
pub(crate) enum Completion {
    Ok(Option<String>),
    Failed(FailureDetails),
}

/// Continue-as-new request.
#[derive(Clone, Debug)]
pub(crate) struct ContinueAsNewRequest {
    pub input: Option<String>,
    pub preserve_unprocessed_events: bool,
}

/// The mutable replay state of one execution, shared by the context and its futures.
#[derive(Debug)]
pub(crate) struct ExecutionState {
    pub current_time: DateTime<Utc>,
    pub is_replaying: bool,
    pub next_seq: u64,
    /// Every known action by sequence number: recorded ones, then new ones.
    pub actions: Vec<Action>,
    pub completions: HashMap<u64, Completion>,
    pub completed: HashSet<u64>,
    pub wakers: HashMap<u64, Waker>,
    pub event_buffers: HashMap<String, VecDeque<Option<String>>>,
    pub event_waiters: HashMap<String, VecDeque<u64>>,
    pub event_results: HashMap<u64, Option<String>>,
    pub event_wakers: HashMap<u64, Waker>,
    pub next_waiter: u64,
    pub custom_status: Option<String>,
    pub continue_as_new: Option<ContinueAsNewRequest>,
    pub nondeterminism: Option<String>,
    pub guid_counter: u64,
    /// Entities locked by the current critical section (once granted).
    pub critical_section: Option<Vec<String>>,
    /// Entities of every lock request made, granted or not, still to release at the end.
    pub lock_requests: Vec<String>,
    /// Entities with a call in flight inside the critical section.
    pub entity_calls_in_flight: HashSet<String>,
    /// Activity calls whose futures were dropped before they completed (a `when_any`
    /// loser, a call its schedule-to-close timeout beat), by sequence number: their
    /// results are no longer wanted.
    pub dropped_activities: BTreeSet<u64>,
    /// Those of them dropped while running new events (not replaying): the episode cancels
    /// their work. Taken by the episode.
    pub newly_dropped: Vec<u64>,
}

impl ExecutionState {
    pub(crate) fn new(now: DateTime<Utc>) -> Self {
        Self {
            current_time: now,
            is_replaying: true,
            next_seq: 0,
            actions: Vec::new(),
            completions: HashMap::new(),
            completed: HashSet::new(),
            wakers: HashMap::new(),
            event_buffers: HashMap::new(),
            event_waiters: HashMap::new(),
            event_results: HashMap::new(),
            event_wakers: HashMap::new(),
            next_waiter: 0,
            custom_status: None,
            continue_as_new: None,
            nondeterminism: None,
            guid_counter: 0,
            critical_section: None,
            lock_requests: Vec::new(),
            entity_calls_in_flight: HashSet::new(),
            dropped_activities: BTreeSet::new(),
            newly_dropped: Vec::new(),
        }
    }

    /// Notes that the future of call `seq` was dropped; an activity call that has not
    /// completed is no longer wanted.
    pub(crate) fn dropped(&mut self, seq: u64) {
        if self.completed.contains(&seq)
            || !matches!(
                self.actions.get(seq as usize),
                Some(Action::Activity { .. })
            )
        {
            return;
        }
        if self.dropped_activities.insert(seq) && !self.is_replaying {
            self.newly_dropped.push(seq);
        }
    }

    /// Delivers an external event to the oldest waiter for its name, or buffers it.
    pub(crate) fn deliver_event(&mut self, name: &str, input: Option<String>) {
        let key = name.to_string();
        if let Some(waiters) = self.event_waiters.get_mut(&key) {
            if let Some(w) = waiters.pop_front() {
                self.event_results.insert(w, input);
                if let Some(waker) = self.event_wakers.remove(&w) {
                    waker.wake();
                }
                return;
            }
        }
        self.event_buffers.entry(key).or_default().push_back(input);
    }

    /// Delivers a completion for `seq`.
    pub(crate) fn complete(&mut self, seq: u64, c: Completion) {
        if let Some(Action::CallEntity { entity_id, .. }) = self.actions.get(seq as usize) {
            self.entity_calls_in_flight.remove(entity_id);
        }
        self.completed.insert(seq);
        self.completions.insert(seq, c);
        if let Some(w) = self.wakers.remove(&seq) {
            w.wake();
        }
    }

    /// Records a durable call, checking it against the history. Returns its sequence
    /// number, or None when the call diverges from the history (nondeterminism).
    pub(crate) fn schedule(&mut self, orchestration: &str, action: Action) -> Option<u64> {
        if self.nondeterminism.is_some() {
            return None;
        }
        let seq = self.next_seq;
        if let Some(recorded) = self.actions.get(seq as usize) {
            if !recorded.same_call(&action) {
                self.nondeterminism = Some(format!(
                    "non-deterministic orchestration '{orchestration}': at sequence number {seq} the history recorded {} but the code now attempted {}; was the orchestrator changed while this instance was running? Deploy changed code under a new orchestrator version instead",
                    recorded.recorded_name(),
                    action.attempted_name()
                ));
                return None;
            }
        } else {
            self.actions.push(action);
        }
        self.next_seq += 1;
        Some(seq)
    }
}

pub(crate) struct ContextInner {
    pub instance_id: String,
    pub execution_id: String,
    pub name: String,
    pub version: Option<String>,
    pub parent: Option<ParentInstance>,
    pub state: Mutex<ExecutionState>,
}
