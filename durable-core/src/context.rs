//! `OrchestrationContext`: the replay-safe API an orchestrator uses for every durable call
//! (activities, sub-orchestrations, timers, external events, time, ids, status). Each call
//! gets a sequence number and is matched against the recorded history on replay.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::entity::EntityId;
use crate::error::{TaskError, TaskKind, DECODE_ERROR};
use crate::function::{Activity, BoxFuture, Orchestrator};
use crate::history::{EventKind, FailureDetails, HistoryEvent, ParentInstance};
use crate::retry::RetryPolicy;

/// A durable call the orchestrator made, as recorded (or to be recorded) in history.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    Activity {
        name: String,
        input: Option<String>,
        attempt: u32,
    },
    Timer {
        fire_at: DateTime<Utc>,
    },
    SubOrchestration {
        name: String,
        version: Option<String>,
        instance_id: String,
        input: Option<String>,
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
            EventKind::TaskScheduled { name, input } => Action::Activity {
                name: name.clone(),
                input: input.clone(),
                attempt: 1,
            },
            EventKind::TimerCreated { fire_at } => Action::Timer { fire_at: *fire_at },
            EventKind::SubOrchestrationInstanceCreated {
                name,
                version,
                instance_id,
                input,
            } => Action::SubOrchestration {
                name: name.clone(),
                version: version.clone(),
                instance_id: instance_id.clone(),
                input: input.clone(),
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
            Action::Activity { name, input, .. } => EventKind::TaskScheduled { name, input },
            Action::Timer { fire_at } => EventKind::TimerCreated { fire_at },
            Action::SubOrchestration {
                name,
                version,
                instance_id,
                input,
            } => EventKind::SubOrchestrationInstanceCreated {
                name,
                version,
                instance_id,
                input,
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
}

impl ExecutionState {
    fn new(now: DateTime<Utc>) -> Self {
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
    fn schedule(&mut self, orchestration: &str, action: Action) -> Option<u64> {
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

/// The orchestration context: every durable operation of an orchestrator goes through it.
///
/// Cheap to clone; clones share the same execution. All methods are replay-safe: on
/// replay they return the recorded results instead of doing the work again.
#[derive(Clone)]
pub struct OrchestrationContext {
    pub(crate) inner: Arc<ContextInner>,
}

impl std::fmt::Debug for OrchestrationContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestrationContext")
            .field("instance_id", &self.inner.instance_id)
            .field("name", &self.inner.name)
            .finish()
    }
}

/// When a durable timer fires: after a duration, or at a point in time.
#[derive(Clone, Copy, Debug)]
pub enum TimerTarget {
    /// After this long, measured from `current_utc_datetime`.
    After(Duration),
    /// At this time.
    At(DateTime<Utc>),
}

impl From<Duration> for TimerTarget {
    fn from(d: Duration) -> Self {
        TimerTarget::After(d)
    }
}

impl From<DateTime<Utc>> for TimerTarget {
    fn from(t: DateTime<Utc>) -> Self {
        TimerTarget::At(t)
    }
}

impl OrchestrationContext {
    pub(crate) fn new(
        instance_id: String,
        execution_id: String,
        name: String,
        version: Option<String>,
        parent: Option<ParentInstance>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                instance_id,
                execution_id,
                name,
                version,
                parent,
                state: Mutex::new(ExecutionState::new(now)),
            }),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, ExecutionState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The instance id.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// The current execution's id (new after continue-as-new).
    pub fn execution_id(&self) -> &str {
        &self.inner.execution_id
    }

    /// The orchestrator's durable name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The version this instance was started with.
    pub fn version(&self) -> Option<&str> {
        self.inner.version.as_deref()
    }

    /// The parent instance id, for a sub-orchestration.
    pub fn parent_instance_id(&self) -> Option<&str> {
        self.inner.parent.as_ref().map(|p| p.instance_id.as_str())
    }

    /// The replay-safe current time: the time the current episode started, the same on
    /// every replay.
    pub fn current_utc_datetime(&self) -> DateTime<Utc> {
        self.state().current_time
    }

    /// True while the orchestrator is re-running recorded history. Guard side effects
    /// such as logging with it (see [`replay_safe!`](crate::replay_safe)).
    pub fn is_replaying(&self) -> bool {
        self.state().is_replaying
    }

    /// A deterministic UUID (name-based, v5): the same on every replay, unique per call.
    pub fn new_guid(&self) -> uuid::Uuid {
        let mut st = self.state();
        let counter = st.guid_counter;
        st.guid_counter += 1;
        let name = format!(
            "{}_{}_{}",
            self.inner.instance_id,
            st.current_time
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            counter
        );
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes())
    }

    fn schedule(&self, action: Action) -> Option<u64> {
        self.state().schedule(&self.inner.name, action)
    }

    fn task<T>(
        &self,
        action: Action,
        kind: TaskKind,
        name: &str,
        decode: fn(Completion, TaskKind, &str) -> T,
    ) -> DurableFuture<T> {
        match self.schedule(action) {
            Some(seq) => DurableFuture::pending(self.clone(), seq, kind, name, decode),
            None => DurableFuture::never(self.clone()),
        }
    }

    /// Calls an activity with typed input and output.
    ///
    /// ```
    /// # use durable_core::{activity, orchestrator, OrchestrationContext, OrchestrationError};
    /// # #[activity]
    /// # async fn say_hello(city: String) -> String { format!("Hello {city}!") }
    /// # #[orchestrator]
    /// # async fn greet(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    /// let greeting: String = ctx.call_activity(say_hello, "Tokyo".to_string()).await?;
    /// # Ok(greeting) }
    /// ```
    pub fn call_activity<A: Activity>(
        &self,
        _activity: A,
        input: A::Input,
    ) -> DurableFuture<Result<A::Output, TaskError>> {
        self.call_activity_attempt(A::NAME, &input, 1)
    }

    /// Calls an activity by durable name (for dynamic cases).
    pub fn call_activity_by_name<O: DeserializeOwned>(
        &self,
        name: &str,
        input: &impl Serialize,
    ) -> DurableFuture<Result<O, TaskError>> {
        self.call_activity_attempt(name, input, 1)
    }

    pub(crate) fn call_activity_attempt<O: DeserializeOwned>(
        &self,
        name: &str,
        input: &(impl Serialize + ?Sized),
        attempt: u32,
    ) -> DurableFuture<Result<O, TaskError>> {
        let input = match serialize(TaskKind::Activity, name, input) {
            Ok(i) => i,
            Err(e) => return DurableFuture::ready(self.clone(), Err(e)),
        };
        self.task(
            Action::Activity {
                name: name.to_string(),
                input,
                attempt,
            },
            TaskKind::Activity,
            name,
            decode_task::<O>,
        )
    }

    /// Calls an activity, retrying failures according to `policy`. Waits between attempts
    /// are durable timers.
    pub fn call_activity_with_retry<A: Activity>(
        &self,
        _activity: A,
        policy: &RetryPolicy,
        input: A::Input,
    ) -> BoxFuture<'static, Result<A::Output, TaskError>> {
        self.call_activity_by_name_with_retry(A::NAME, policy, &input)
    }

    /// Calls an activity by name, with retries.
    pub fn call_activity_by_name_with_retry<O: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
        policy: &RetryPolicy,
        input: &impl Serialize,
    ) -> BoxFuture<'static, Result<O, TaskError>> {
        let ctx = self.clone();
        let name = name.to_string();
        let policy = policy.clone();
        let input = serde_json::to_value(input);
        Box::pin(async move {
            let input = input.map_err(|e| serialize_error(TaskKind::Activity, &name, e))?;
            run_with_retry(&ctx, &policy, |attempt| {
                ctx.call_activity_attempt::<O>(&name, &input, attempt)
            })
            .await
        })
    }

    /// Starts a sub-orchestration and waits for its output. Its instance id is derived
    /// from this instance's id and the call's sequence number.
    pub fn call_sub_orchestrator<O: Orchestrator>(
        &self,
        _orchestrator: O,
        input: O::Input,
    ) -> DurableFuture<Result<O::Output, TaskError>> {
        self.sub_orchestration(O::NAME, O::VERSION, None, &input)
    }

    /// Starts a sub-orchestration with a chosen instance id.
    pub fn call_sub_orchestrator_with_id<O: Orchestrator>(
        &self,
        _orchestrator: O,
        instance_id: &str,
        input: O::Input,
    ) -> DurableFuture<Result<O::Output, TaskError>> {
        self.sub_orchestration(O::NAME, O::VERSION, Some(instance_id), &input)
    }

    /// Starts a sub-orchestration by name (optionally with an instance id).
    pub fn call_sub_orchestrator_by_name<T: DeserializeOwned>(
        &self,
        name: &str,
        instance_id: Option<&str>,
        input: &impl Serialize,
    ) -> DurableFuture<Result<T, TaskError>> {
        self.sub_orchestration(name, None, instance_id, input)
    }

    /// Starts a sub-orchestration, retrying failures according to `policy`. Each attempt
    /// is a new child instance.
    pub fn call_sub_orchestrator_with_retry<O: Orchestrator>(
        &self,
        _orchestrator: O,
        policy: &RetryPolicy,
        input: O::Input,
    ) -> BoxFuture<'static, Result<O::Output, TaskError>> {
        let ctx = self.clone();
        let policy = policy.clone();
        let input = serde_json::to_value(&input);
        Box::pin(async move {
            let input =
                input.map_err(|e| serialize_error(TaskKind::SubOrchestration, O::NAME, e))?;
            run_with_retry(&ctx, &policy, |_| {
                ctx.sub_orchestration::<O::Output>(O::NAME, O::VERSION, None, &input)
            })
            .await
        })
    }

    fn sub_orchestration<T: DeserializeOwned>(
        &self,
        name: &str,
        version: Option<&str>,
        instance_id: Option<&str>,
        input: &(impl Serialize + ?Sized),
    ) -> DurableFuture<Result<T, TaskError>> {
        if self.state().critical_section.is_some() {
            return DurableFuture::ready(
                self.clone(),
                Err(locking_violation(
                    TaskKind::SubOrchestration,
                    name,
                    "sub-orchestrations cannot be called inside a critical section",
                )),
            );
        }
        let input = match serialize(TaskKind::SubOrchestration, name, input) {
            Ok(i) => i,
            Err(e) => return DurableFuture::ready(self.clone(), Err(e)),
        };
        let child_id = match instance_id {
            Some(id) => id.to_string(),
            None => {
                let seq = self.state().next_seq;
                format!("{}:{seq:04X}", self.inner.instance_id)
            }
        };
        self.task(
            Action::SubOrchestration {
                name: name.to_string(),
                version: version.map(str::to_string),
                instance_id: child_id,
                input,
            },
            TaskKind::SubOrchestration,
            name,
            decode_task::<T>,
        )
    }

    /// A durable timer: completes after a duration or at a time. Drop it to cancel it
    /// (e.g. when it lost a race); a dropped timer never delays completion.
    pub fn create_timer(&self, when: impl Into<TimerTarget>) -> DurableFuture<()> {
        let fire_at = match when.into() {
            TimerTarget::At(t) => t,
            TimerTarget::After(d) => {
                self.current_utc_datetime()
                    + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
            }
        };
        self.task(
            Action::Timer { fire_at },
            TaskKind::Activity,
            "timer",
            |_, _, _| (),
        )
    }

    /// Waits for an external event raised on this instance. Events that arrived before
    /// the wait are buffered and delivered first-in first-out per name. The data decodes
    /// by the rule of [`payload`](crate::payload) (a JSON value of `T`, or a JSON string
    /// holding one). Data that does not decode consumes the event and fails the wait with
    /// a [`TaskError`] whose [`is_decode_error`](TaskError::is_decode_error) is true: wait
    /// again to keep waiting for a well-formed one.
    pub fn wait_for_external_event<T: DeserializeOwned>(&self, name: &str) -> EventFuture<T> {
        let mut st = self.state();
        let id = st.next_waiter;
        st.next_waiter += 1;
        let buffered = st.event_buffers.get_mut(name).and_then(|b| b.pop_front());
        match buffered {
            Some(input) => {
                st.event_results.insert(id, input);
            }
            None => st
                .event_waiters
                .entry(name.to_string())
                .or_default()
                .push_back(id),
        }
        drop(st);
        EventFuture {
            ctx: self.clone(),
            id,
            name: name.to_string(),
            done: false,
            _out: PhantomData,
        }
    }

    /// Waits for an external event for at most `timeout` (a durable timer). On timeout it
    /// fails with a [`TaskError`] whose [`is_timeout`](TaskError::is_timeout) is true, and
    /// later events of that name stay buffered for the next wait.
    pub fn wait_for_external_event_with_timeout<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<T, TaskError>> {
        let event = self.wait_for_external_event::<T>(name);
        let timer = self.create_timer(timeout);
        let name = name.to_string();
        Box::pin(async move {
            match crate::join::race(event, timer).await {
                crate::join::Either::Left(v) => v,
                crate::join::Either::Right(()) => Err(TaskError {
                    kind: TaskKind::ExternalEvent,
                    name: name.clone(),
                    failure: FailureDetails::new(
                        "Timeout",
                        format!("event '{name}' not received within {timeout:?}"),
                    ),
                }),
            }
        })
    }

    /// Sends an event to another instance (fire and forget; recorded as `EventSent`).
    pub fn send_event(&self, instance_id: &str, name: &str, data: &impl Serialize) {
        let input = serde_json::to_string(data).ok();
        self.schedule(Action::SendEvent {
            instance_id: instance_id.to_string(),
            name: name.to_string(),
            input,
        });
    }

    /// Sets the custom status shown by status queries (any serializable value).
    pub fn set_custom_status(&self, status: &impl Serialize) {
        let json = serde_json::to_string(status).ok();
        self.state().custom_status = json;
    }

    /// Ends this execution and starts a new one of the same orchestrator with `input`,
    /// resetting the history. Unconsumed buffered events are carried over. Await it and
    /// return its value: `return ctx.continue_as_new(next).await;`
    pub fn continue_as_new<T>(&self, input: impl Serialize) -> ContinueAsNew<T> {
        self.continue_as_new_with(input, true)
    }

    /// Like [`continue_as_new`](Self::continue_as_new), choosing whether buffered events
    /// that no wait consumed are carried into the new execution.
    pub fn continue_as_new_with<T>(
        &self,
        input: impl Serialize,
        preserve_unprocessed_events: bool,
    ) -> ContinueAsNew<T> {
        let input = serde_json::to_string(&input).ok();
        self.state().continue_as_new = Some(ContinueAsNewRequest {
            input,
            preserve_unprocessed_events,
        });
        ContinueAsNew { _out: PhantomData }
    }

    /// Calls an entity operation and waits for its result. Inside a critical section,
    /// only locked entities may be called, one call per entity at a time.
    pub fn call_entity<T: DeserializeOwned>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &impl Serialize,
    ) -> DurableFuture<Result<T, TaskError>> {
        let label = format!("{id}.{operation}");
        if let Err(e) = id.validate() {
            return DurableFuture::ready(self.clone(), Err(invalid(TaskKind::Entity, &label, e)));
        }
        let entity_id = id.instance_id();
        let in_cs = {
            let mut st = self.state();
            match &st.critical_section {
                Some(locked) if !locked.contains(&entity_id) => {
                    drop(st);
                    return DurableFuture::ready(
                        self.clone(),
                        Err(locking_violation(
                            TaskKind::Entity,
                            &label,
                            &format!("entity '{id}' is not locked by this critical section; only locked entities may be called inside it"),
                        )),
                    );
                }
                Some(_) => {
                    if !st.entity_calls_in_flight.insert(entity_id.clone()) {
                        drop(st);
                        return DurableFuture::ready(
                            self.clone(),
                            Err(locking_violation(
                                TaskKind::Entity,
                                &label,
                                &format!("a call to entity '{id}' is already in flight; calls to one entity inside a critical section must not overlap"),
                            )),
                        );
                    }
                    true
                }
                None => false,
            }
        };
        let input = match serialize(TaskKind::Entity, &label, input) {
            Ok(i) => i,
            Err(e) => return DurableFuture::ready(self.clone(), Err(e)),
        };
        self.task(
            Action::CallEntity {
                entity_id,
                operation: operation.to_string(),
                input,
                in_critical_section: in_cs,
            },
            TaskKind::Entity,
            &label,
            decode_task::<T>,
        )
    }

    /// Signals an entity operation (one-way). Inside a critical section, entities it has
    /// locked cannot be signalled (call them instead).
    pub fn signal_entity(
        &self,
        id: &EntityId,
        operation: &str,
        input: &impl Serialize,
    ) -> Result<(), TaskError> {
        self.signal_entity_inner(id, operation, input, None)
    }

    /// Signals an entity operation for delivery at `at`.
    pub fn signal_entity_at(
        &self,
        id: &EntityId,
        operation: &str,
        input: &impl Serialize,
        at: DateTime<Utc>,
    ) -> Result<(), TaskError> {
        self.signal_entity_inner(id, operation, input, Some(at))
    }

    fn signal_entity_inner(
        &self,
        id: &EntityId,
        operation: &str,
        input: &impl Serialize,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), TaskError> {
        let label = format!("{id}.{operation}");
        id.validate()
            .map_err(|e| invalid(TaskKind::Entity, &label, e))?;
        let entity_id = id.instance_id();
        if self
            .state()
            .critical_section
            .as_ref()
            .is_some_and(|locked| locked.contains(&entity_id))
        {
            return Err(locking_violation(
                TaskKind::Entity,
                &label,
                &format!("entity '{id}' is locked by this critical section; call it instead of signalling it"),
            ));
        }
        let input = serialize(TaskKind::Entity, &label, input)?;
        self.schedule(Action::SignalEntity {
            entity_id,
            operation: operation.to_string(),
            input,
            at,
        });
        Ok(())
    }

    /// Enters a critical section: acquires the locks of `entities` (in one global order,
    /// so critical sections never deadlock) and returns a guard that releases them when
    /// dropped. Locks are also released when the orchestration ends. Critical sections do
    /// not nest.
    pub fn lock(&self, entities: &[EntityId]) -> LockFuture {
        let mut ids: Vec<String> = entities.iter().map(EntityId::instance_id).collect();
        ids.sort();
        ids.dedup();
        let label = ids.join(",");
        let error = if ids.is_empty() {
            Some("a critical section needs at least one entity".to_string())
        } else if let Some(e) = entities.iter().find_map(|e| e.validate().err()) {
            Some(e.to_string())
        } else {
            let st = self.state();
            (st.critical_section.is_some() || !st.lock_requests.is_empty())
                .then(|| "critical sections cannot be nested".to_string())
        };
        if let Some(msg) = error {
            return LockFuture {
                ctx: self.clone(),
                inner: DurableFuture::ready(
                    self.clone(),
                    Err(locking_violation(TaskKind::Entity, &label, &msg)),
                ),
                ids,
            };
        }
        self.state().lock_requests.extend(ids.iter().cloned());
        let inner = self.task(
            Action::LockEntities {
                entity_ids: ids.clone(),
            },
            TaskKind::Entity,
            &label,
            decode_task::<()>,
        );
        LockFuture {
            ctx: self.clone(),
            inner,
            ids,
        }
    }

    /// The entities locked by the current critical section, if any.
    pub fn critical_section(&self) -> Option<Vec<EntityId>> {
        self.state().critical_section.as_ref().map(|ids| {
            ids.iter()
                .filter_map(|i| EntityId::from_instance_id(i))
                .collect()
        })
    }

    fn release_locks(&self, ids: &[String]) {
        {
            let mut st = self.state();
            st.critical_section = None;
            st.lock_requests.retain(|i| !ids.contains(i));
            st.entity_calls_in_flight.clear();
        }
        for id in ids {
            self.schedule(Action::UnlockEntity {
                entity_id: id.clone(),
            });
        }
    }

    /// Waits for all futures; outputs in input order.
    pub fn when_all<F: Future>(
        &self,
        futures: impl IntoIterator<Item = F>,
    ) -> crate::join::WhenAll<F> {
        crate::join::when_all(futures)
    }

    /// Waits for the first future to finish; returns its index and output. Ties are
    /// broken by history order, so replay picks the same winner. The others are dropped.
    pub fn when_any<F: Future + Unpin>(
        &self,
        futures: impl IntoIterator<Item = F>,
    ) -> crate::join::WhenAny<F> {
        crate::join::when_any(futures)
    }
}

/// Logs only when the orchestrator is not replaying, so each line appears once.
///
/// ```
/// # use durable_core::{orchestrator, replay_safe, OrchestrationContext, OrchestrationError};
/// # #[orchestrator]
/// # async fn greet(ctx: OrchestrationContext, city: String) -> Result<(), OrchestrationError> {
/// replay_safe!(ctx, println!("greeting {city}"));
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! replay_safe {
    ($ctx:expr, $($log:tt)+) => {
        if !$ctx.is_replaying() {
            $($log)+;
        }
    };
}

fn locking_violation(kind: TaskKind, name: &str, message: &str) -> TaskError {
    TaskError {
        kind,
        name: name.to_string(),
        failure: FailureDetails {
            error_type: "LockingRulesViolation".into(),
            message: message.to_string(),
            details: None,
            non_retriable: true,
        },
    }
}

fn invalid(kind: TaskKind, name: &str, e: crate::error::Error) -> TaskError {
    TaskError {
        kind,
        name: name.to_string(),
        failure: FailureDetails::new("InvalidArgument", e.to_string()),
    }
}

/// The future of [`OrchestrationContext::lock`]: resolves to the critical section once
/// every lock is held.
pub struct LockFuture {
    ctx: OrchestrationContext,
    inner: DurableFuture<Result<(), TaskError>>,
    ids: Vec<String>,
}

impl std::fmt::Debug for LockFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockFuture")
            .field("entities", &self.ids)
            .finish()
    }
}

impl Future for LockFuture {
    type Output = Result<CriticalSection, TaskError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                this.ctx.state().critical_section = Some(this.ids.clone());
                Poll::Ready(Ok(CriticalSection {
                    ctx: this.ctx.clone(),
                    ids: std::mem::take(&mut this.ids),
                    released: false,
                }))
            }
        }
    }
}

/// Holds entity locks; dropping it (or calling [`release`](Self::release)) releases them.
pub struct CriticalSection {
    ctx: OrchestrationContext,
    ids: Vec<String>,
    released: bool,
}

impl std::fmt::Debug for CriticalSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriticalSection")
            .field("entities", &self.ids)
            .finish()
    }
}

impl CriticalSection {
    /// Releases the locks now.
    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        if !self.released {
            self.released = true;
            self.ctx.release_locks(&self.ids);
        }
    }
}

impl Drop for CriticalSection {
    fn drop(&mut self) {
        self.release_now();
    }
}

fn serialize_error(kind: TaskKind, name: &str, e: serde_json::Error) -> TaskError {
    TaskError {
        kind,
        name: name.to_string(),
        failure: FailureDetails::new("SerializationError", format!("cannot serialize input: {e}")),
    }
}

fn serialize(
    kind: TaskKind,
    name: &str,
    input: &(impl Serialize + ?Sized),
) -> Result<Option<String>, TaskError> {
    serde_json::to_string(input)
        .map(Some)
        .map_err(|e| serialize_error(kind, name, e))
}

fn decode_task<O: DeserializeOwned>(
    c: Completion,
    kind: TaskKind,
    name: &str,
) -> Result<O, TaskError> {
    match c {
        Completion::Ok(json) => crate::payload::decode(json.as_deref()).map_err(|e| {
            let what = match kind {
                TaskKind::ExternalEvent => "the event data",
                _ => "the result",
            };
            TaskError {
                kind,
                name: name.to_string(),
                failure: FailureDetails::new(
                    DECODE_ERROR,
                    format!(
                        "{what} does not decode as {}: {e}",
                        crate::payload::short_type_name(std::any::type_name::<O>())
                    ),
                ),
            }
        }),
        Completion::Failed(failure) => Err(TaskError {
            kind,
            name: name.to_string(),
            failure,
        }),
    }
}

enum FutureState<T> {
    Pending { seq: u64 },
    Ready(Option<T>),
    Never,
}

/// The future of one durable call (activity, sub-orchestration, timer). The call is
/// recorded when the future is created, so several can run in parallel (fan-out).
pub struct DurableFuture<T> {
    ctx: OrchestrationContext,
    state: FutureState<T>,
    kind: TaskKind,
    name: String,
    decode: fn(Completion, TaskKind, &str) -> T,
}

impl<T> std::fmt::Debug for DurableFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableFuture")
            .field("name", &self.name)
            .finish()
    }
}

impl<T> DurableFuture<T> {
    fn pending(
        ctx: OrchestrationContext,
        seq: u64,
        kind: TaskKind,
        name: &str,
        decode: fn(Completion, TaskKind, &str) -> T,
    ) -> Self {
        Self {
            ctx,
            state: FutureState::Pending { seq },
            kind,
            name: name.to_string(),
            decode,
        }
    }

    fn ready(ctx: OrchestrationContext, value: T) -> Self {
        Self {
            ctx,
            state: FutureState::Ready(Some(value)),
            kind: TaskKind::Activity,
            name: String::new(),
            decode: |_, _, _| unreachable!("a ready future is never decoded"),
        }
    }

    fn never(ctx: OrchestrationContext) -> Self {
        Self {
            ctx,
            state: FutureState::Never,
            kind: TaskKind::Activity,
            name: String::new(),
            decode: |_, _, _| unreachable!("a diverged call never completes"),
        }
    }

    /// The sequence number of this call, when it was recorded.
    pub fn sequence_number(&self) -> Option<u64> {
        match self.state {
            FutureState::Pending { seq } => Some(seq),
            _ => None,
        }
    }
}

impl<T> Unpin for DurableFuture<T> {}

impl<T> Future for DurableFuture<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        match &mut this.state {
            FutureState::Ready(v) => {
                Poll::Ready(v.take().expect("DurableFuture polled after completion"))
            }
            FutureState::Never => Poll::Pending,
            FutureState::Pending { seq } => {
                let seq = *seq;
                let mut st = this.ctx.state();
                match st.completions.remove(&seq) {
                    Some(c) => {
                        drop(st);
                        this.state = FutureState::Ready(None);
                        Poll::Ready((this.decode)(c, this.kind, &this.name))
                    }
                    None => {
                        st.wakers.insert(seq, cx.waker().clone());
                        Poll::Pending
                    }
                }
            }
        }
    }
}

impl<T> Drop for DurableFuture<T> {
    fn drop(&mut self) {
        if let FutureState::Pending { seq } = self.state {
            let mut st = self.ctx.state();
            st.wakers.remove(&seq);
        }
    }
}

/// The future of an external event wait. Dropping it before it completes withdraws the
/// wait; an event it had already received goes back to the front of the buffer.
pub struct EventFuture<T> {
    ctx: OrchestrationContext,
    id: u64,
    name: String,
    done: bool,
    _out: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for EventFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFuture")
            .field("name", &self.name)
            .finish()
    }
}

impl<T> Unpin for EventFuture<T> {}

impl<T: DeserializeOwned> Future for EventFuture<T> {
    type Output = Result<T, TaskError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.done {
            return Poll::Pending;
        }
        let mut st = this.ctx.state();
        match st.event_results.remove(&this.id) {
            Some(input) => {
                drop(st);
                this.done = true;
                Poll::Ready(decode_task(
                    Completion::Ok(input),
                    TaskKind::ExternalEvent,
                    &this.name,
                ))
            }
            None => {
                st.event_wakers.insert(this.id, cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for EventFuture<T> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.ctx.state();
        st.event_wakers.remove(&self.id);
        if let Some(input) = st.event_results.remove(&self.id) {
            st.event_buffers
                .entry(self.name.clone())
                .or_default()
                .push_front(input);
        } else if let Some(waiters) = st.event_waiters.get_mut(&self.name) {
            waiters.retain(|w| *w != self.id);
        }
    }
}

/// The future returned by [`OrchestrationContext::continue_as_new`]: it never completes;
/// the engine ends the execution and starts the next one.
pub struct ContinueAsNew<T> {
    _out: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for ContinueAsNew<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContinueAsNew")
    }
}

impl<T> Future for ContinueAsNew<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<T> {
        Poll::Pending
    }
}

/// Runs `attempt_fn(attempt)` until it succeeds or the policy gives up.
async fn run_with_retry<T, F, Fut>(
    ctx: &OrchestrationContext,
    policy: &RetryPolicy,
    attempt_fn: F,
) -> Result<T, TaskError>
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<T, TaskError>>,
{
    let started = ctx.current_utc_datetime();
    let mut attempt = 1u32;
    loop {
        let err = match attempt_fn(attempt).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if let Err(msg) = policy.validate() {
            return Err(TaskError {
                failure: FailureDetails::new("InvalidRetryPolicy", msg),
                ..err
            });
        }
        if attempt >= policy.max_attempts || !policy.should_retry(&err) {
            return Err(err);
        }
        if let Some(timeout) = policy.retry_timeout {
            let deadline =
                started + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
            if ctx.current_utc_datetime() >= deadline {
                return Err(err);
            }
        }
        ctx.create_timer(policy.delay_after(attempt)).await;
        attempt += 1;
    }
}
