//! `OrchestrationContext`: the replay-safe API an orchestrator uses for every durable call
//! (activities, sub-orchestrations, timers, external events, time, ids, status). Each call
//! gets a sequence number and is matched against the recorded history on replay. The API
//! is here; the futures it returns are in `futures`, the replay state they share in `state`.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::entity::EntityId;
use crate::error::{TaskError, TaskKind, DECODE_ERROR};
use crate::function::{Activity, BoxFuture, Orchestrator};
use crate::history::{FailureDetails, ParentInstance};
use crate::retry::RetryPolicy;

mod futures;
mod state;

pub use futures::{ContinueAsNew, CriticalSection, DurableFuture, EventFuture, LockFuture};

/// Options of one activity call
/// ([`OrchestrationContext::call_activity_with_options`]).
#[derive(Clone, Debug, Default)]
pub struct ActivityOptions {
    /// Longest an attempt may run, from when a worker starts it, measured on the store's
    /// clock. When it passes, the worker stops the activity (its `cancelled()` resolves,
    /// then it is aborted at its next await; code that blocks a thread cannot be stopped)
    /// and the attempt fails with a `Timeout` failure ([`TaskError::is_timeout`]), which
    /// `retry` retries like any failure. None: the activity's default
    /// (`#[activity(timeout = "30s")]`), else no limit.
    pub start_to_close: Option<std::time::Duration>,
    /// Longest an attempt may go without a heartbeat (`ActivityContext::heartbeat`), from
    /// when it starts or its last heartbeat, on the store's clock. When it passes, the
    /// attempt is stopped like at its `start_to_close` and fails with a `Timeout` failure
    /// whose `details` are the last heartbeat's; the call's next attempt reads them with
    /// `ActivityContext::last_heartbeat_details`. None: no limit.
    pub heartbeat_timeout: Option<std::time::Duration>,
    /// Longest the whole call may take, every attempt and the waits between them
    /// included, from when the orchestration makes it; measured with a durable timer (on
    /// the store's clock). When it passes first, the call fails with a `Timeout` failure
    /// ([`TaskError::is_timeout`]), not retried. The attempt then running is cancelled:
    /// its `ActivityContext::cancelled()` resolves and its result is ignored, but only an
    /// activity that watches for that stops (give it a `start_to_close` too to stop it
    /// for sure). None: no limit.
    pub schedule_to_close: Option<std::time::Duration>,
    /// Retries of failed attempts (timeouts included); None: one attempt.
    pub retry: Option<RetryPolicy>,
}

impl ActivityOptions {
    /// One attempt, with this start-to-close timeout.
    pub fn start_to_close(timeout: std::time::Duration) -> Self {
        Self {
            start_to_close: Some(timeout),
            ..Self::default()
        }
    }

    /// The same options, with a heartbeat timeout on each attempt.
    pub fn with_heartbeat_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.heartbeat_timeout = Some(timeout);
        self
    }

    /// The same options, with a schedule-to-close timeout on the whole call.
    pub fn with_schedule_to_close(mut self, timeout: std::time::Duration) -> Self {
        self.schedule_to_close = Some(timeout);
        self
    }

    /// The same options, retrying under `policy`.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
}

/// The limits one activity attempt is scheduled with.
#[derive(Clone, Debug, Default)]
struct AttemptLimits {
    start_to_close: Option<std::time::Duration>,
    heartbeat_timeout: Option<std::time::Duration>,
    heartbeat_details: Option<String>,
}

/// What happens to a running sub-orchestration when its parent is terminated or purged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ParentClosePolicy {
    /// Terminating the parent terminates the child (and so on down its own children);
    /// purging the parent purges the child. The default.
    #[default]
    Terminate,
    /// The child is left alone: it runs on when the parent is terminated and stays when
    /// the parent is purged. Its outcome then goes nowhere.
    Abandon,
}

/// Options of one sub-orchestration call
/// ([`OrchestrationContext::call_sub_orchestrator_with_options`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubOrchestrationOptions {
    /// The child's instance id (default: derived from this instance's id and the call's
    /// sequence number).
    pub instance_id: Option<String>,
    /// What happens to the child when this instance is terminated or purged.
    pub parent_close: ParentClosePolicy,
}

impl SubOrchestrationOptions {
    /// Options that leave the child running when the parent is terminated or purged.
    pub fn abandon_on_parent_close() -> Self {
        Self {
            parent_close: ParentClosePolicy::Abandon,
            ..Self::default()
        }
    }
}
pub(crate) use state::{Action, Completion, ContextInner, ContinueAsNewRequest, ExecutionState};

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
        self.call_activity_attempt_within(name, input, attempt, AttemptLimits::default())
    }

    fn call_activity_attempt_within<O: DeserializeOwned>(
        &self,
        name: &str,
        input: &(impl Serialize + ?Sized),
        attempt: u32,
        limits: AttemptLimits,
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
                start_to_close: limits.start_to_close,
                heartbeat_timeout: limits.heartbeat_timeout,
                heartbeat_details: limits.heartbeat_details,
            },
            TaskKind::Activity,
            name,
            decode_task::<O>,
        )
    }

    /// Calls an activity with [`ActivityOptions`]: a start-to-close timeout per attempt, a
    /// schedule-to-close timeout on the whole call (either fails with a `Timeout`
    /// failure, [`TaskError::is_timeout`]) and retries.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use durable_core::{activity, orchestrator, ActivityOptions, OrchestrationContext, OrchestrationError};
    /// # #[activity]
    /// # async fn charge(order: String) -> String { order }
    /// # #[orchestrator]
    /// # async fn pay(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    /// let options = ActivityOptions::start_to_close(Duration::from_secs(30));
    /// match ctx.call_activity_with_options(charge, "A1".to_string(), &options).await {
    ///     Ok(receipt) => Ok(receipt),
    ///     Err(e) if e.is_timeout() => Ok("charge pending".to_string()),
    ///     Err(e) => Err(e.into()),
    /// }
    /// # }
    /// ```
    pub fn call_activity_with_options<A: Activity>(
        &self,
        _activity: A,
        input: A::Input,
        options: &ActivityOptions,
    ) -> BoxFuture<'static, Result<A::Output, TaskError>> {
        self.call_activity_by_name_with_options(A::NAME, &input, options)
    }

    /// Calls an activity by name with [`ActivityOptions`].
    pub fn call_activity_by_name_with_options<O: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
        input: &impl Serialize,
        options: &ActivityOptions,
    ) -> BoxFuture<'static, Result<O, TaskError>> {
        let ctx = self.clone();
        let name = name.to_string();
        let options = options.clone();
        let input = serde_json::to_value(input);
        Box::pin(async move {
            let input = input.map_err(|e| serialize_error(TaskKind::Activity, &name, e))?;
            let (start_to_close, heartbeat_timeout) =
                (options.start_to_close, options.heartbeat_timeout);
            let call: BoxFuture<'static, Result<O, TaskError>> = {
                let (ctx, name, retry) = (ctx.clone(), name.clone(), options.retry.clone());
                Box::pin(async move {
                    // The heartbeat details a timed-out attempt left, for the next one.
                    let left = Arc::new(Mutex::new(None::<String>));
                    let attempt_fn = |attempt: u32| {
                        let limits = AttemptLimits {
                            start_to_close,
                            heartbeat_timeout,
                            heartbeat_details: left
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .clone(),
                        };
                        let call =
                            ctx.call_activity_attempt_within::<O>(&name, &input, attempt, limits);
                        let left = left.clone();
                        async move {
                            let r = call.await;
                            if let Err(e) = &r {
                                if e.is_timeout() {
                                    *left.lock().unwrap_or_else(|e| e.into_inner()) =
                                        e.failure.details.clone();
                                }
                            }
                            r
                        }
                    };
                    match &retry {
                        Some(policy) => run_with_retry(&ctx, policy, attempt_fn).await,
                        None => attempt_fn(1).await,
                    }
                })
            };
            let Some(limit) = options.schedule_to_close else {
                return call.await;
            };
            match crate::join::race(call, ctx.create_timer(limit)).await {
                crate::join::Either::Left(r) => r,
                crate::join::Either::Right(()) => Err(TaskError {
                    kind: TaskKind::Activity,
                    name: name.clone(),
                    failure: FailureDetails::new(
                        "Timeout",
                        format!(
                            "activity '{name}' did not finish within {limit:?} of being \
                             scheduled (its schedule-to-close timeout)"
                        ),
                    ),
                }),
            }
        })
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

    /// Starts a sub-orchestration with [`SubOrchestrationOptions`] (its instance id, what
    /// happens to it when this instance is terminated or purged) and waits for its output.
    pub fn call_sub_orchestrator_with_options<O: Orchestrator>(
        &self,
        _orchestrator: O,
        input: O::Input,
        options: &SubOrchestrationOptions,
    ) -> DurableFuture<Result<O::Output, TaskError>> {
        self.sub_orchestration_with(O::NAME, O::VERSION, options, &input)
    }

    /// Starts a sub-orchestration by name with [`SubOrchestrationOptions`].
    pub fn call_sub_orchestrator_by_name_with_options<T: DeserializeOwned>(
        &self,
        name: &str,
        input: &impl Serialize,
        options: &SubOrchestrationOptions,
    ) -> DurableFuture<Result<T, TaskError>> {
        self.sub_orchestration_with(name, None, options, input)
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
        let options = SubOrchestrationOptions {
            instance_id: instance_id.map(str::to_string),
            ..SubOrchestrationOptions::default()
        };
        self.sub_orchestration_with(name, version, &options, input)
    }

    fn sub_orchestration_with<T: DeserializeOwned>(
        &self,
        name: &str,
        version: Option<&str>,
        options: &SubOrchestrationOptions,
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
        let child_id = match &options.instance_id {
            Some(id) => id.clone(),
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
                abandon_on_parent_close: options.parent_close == ParentClosePolicy::Abandon,
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

    /// Sets the custom status shown by status queries (any serializable value, by value
    /// or by reference):
    ///
    /// ```
    /// # use durable_core::OrchestrationContext;
    /// # fn stages(ctx: &OrchestrationContext, stage: String) {
    /// ctx.set_custom_status("Received");
    /// ctx.set_custom_status(format!("processing {stage}"));
    /// ctx.set_custom_status(&stage);
    /// ctx.set_custom_status(serde_json::json!({ "stage": stage }));
    /// # }
    /// ```
    pub fn set_custom_status(&self, status: impl Serialize) {
        let json = serde_json::to_string(&status).ok();
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

pub(crate) fn decode_task<O: DeserializeOwned>(
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
