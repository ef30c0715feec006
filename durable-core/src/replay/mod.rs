//! The replay engine, pure: in, an instance's recorded history (or a cached live
//! execution), its stored state and its new messages ([`Inbox`]); out, the [`Episode`]
//! (new history, activities to schedule, messages, new instances, new state) and the live
//! execution to keep in the cache. It knows nothing of stores: the worker turns an episode
//! into a store commit. Entity batches are run here too ([`entity`]).
//!
//! History is applied one event at a time and the orchestrator is polled after each event
//! that woke it, so every replay makes the same decisions (including `when_any` winners).

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use chrono::{DateTime, Utc};

use crate::context::{Action, Completion, OrchestrationContext};
use crate::function::panic_message;
use crate::history::{
    ActivityCall, EntityRequest, EventKind, FailureDetails, HistoryEvent, HistoryUpdate,
    OrchestrationMessage, ParentInstance, ReplyTo,
};
use crate::instance::{random_id, InstanceState, NewInstance, RuntimeStatus};
use crate::registry::{BoxFuture, Outcome, Registry};

pub(crate) mod entity;

use entity::push_entity_message;

#[derive(Default)]
struct WakeFlag(AtomicBool);

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// A live orchestrator execution: its context, its suspended future and what replay
/// learned so far. Kept in the instance cache between episodes.
pub(crate) struct Execution {
    pub ctx: OrchestrationContext,
    future: Option<BoxFuture<'static, Outcome>>,
    pub result: Option<Outcome>,
    flag: Arc<WakeFlag>,
    waker: Waker,
    /// Events in the stored history this execution has applied.
    pub history_len: u64,
    pub suspended: bool,
    deferred: Vec<HistoryEvent>,
    pub terminated: Option<Option<String>>,
    pub started: bool,
    /// Actions known to be in the stored history.
    pub committed_actions: usize,
    /// The W3C `traceparent` from the execution's `ExecutionStarted` event.
    pub trace_parent: Option<String>,
}

impl Execution {
    fn new(ctx: OrchestrationContext) -> Self {
        let flag = Arc::new(WakeFlag::default());
        let waker = Waker::from(flag.clone());
        Self {
            ctx,
            future: None,
            result: None,
            flag,
            waker,
            history_len: 0,
            suspended: false,
            deferred: Vec::new(),
            terminated: None,
            started: false,
            committed_actions: 0,
            trace_parent: None,
        }
    }

    /// True when the orchestrator can make no more progress in this execution.
    pub fn is_finished(&self) -> bool {
        self.result.is_some() || self.terminated.is_some() || self.failure().is_some()
    }

    fn failure(&self) -> Option<FailureDetails> {
        let st = self.ctx.state();
        st.nondeterminism
            .as_ref()
            .map(|m| FailureDetails::new("NonDeterminism", m.clone()))
    }

    fn poll(&mut self) {
        loop {
            if !self.flag.0.swap(false, Ordering::AcqRel) {
                return;
            }
            let Some(fut) = self.future.as_mut() else {
                return;
            };
            let mut cx = Context::from_waker(&self.waker);
            match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
                Ok(Poll::Ready(out)) => {
                    self.result = Some(out);
                    self.future = None;
                    return;
                }
                Ok(Poll::Pending) => {}
                Err(panic) => {
                    let msg = panic_message(&panic);
                    self.result = Some(Err(FailureDetails::new(
                        "Panic",
                        format!("orchestrator '{}' panicked: {msg}", self.ctx.name()),
                    )));
                    self.future = None;
                    return;
                }
            }
            let st = self.ctx.state();
            if st.nondeterminism.is_some() || st.continue_as_new.is_some() {
                return;
            }
        }
    }

    /// Applies one event (from history or new) to the execution.
    fn apply(&mut self, registry: &Registry, event: &HistoryEvent) {
        if self.is_finished() {
            return;
        }
        match &event.kind {
            EventKind::OrchestratorStarted => {
                self.ctx.state().current_time = event.timestamp;
            }
            EventKind::ExecutionStarted {
                name,
                version,
                input,
                trace_parent,
                ..
            } => {
                if self.started {
                    return;
                }
                self.started = true;
                self.trace_parent.clone_from(trace_parent);
                match registry.recorded_orchestrator(name, version.as_deref()) {
                    Some(entry) => {
                        self.future = Some((entry.invoke)(self.ctx.clone(), input.clone()));
                        self.flag.0.store(true, Ordering::Release);
                        self.poll();
                    }
                    None => {
                        let what = match version {
                            Some(v) => format!("orchestrator '{name}' version '{v}'"),
                            None => format!("orchestrator '{name}'"),
                        };
                        self.result = Some(Err(FailureDetails::new(
                            "UnknownOrchestrator",
                            format!("{what} is not registered in this worker"),
                        )));
                    }
                }
            }
            EventKind::ExecutionTerminated { reason } => {
                self.terminated = Some(reason.clone());
            }
            EventKind::ExecutionSuspended { .. } => self.suspended = true,
            EventKind::ExecutionResumed { .. } => {
                self.suspended = false;
                for e in std::mem::take(&mut self.deferred) {
                    self.apply(registry, &e);
                }
            }
            EventKind::EventRaised { name, input } => {
                if self.suspended {
                    self.deferred.push(event.clone());
                    return;
                }
                self.ctx.state().deliver_event(name, input.clone());
                self.poll();
            }
            kind => {
                let Some(seq) = kind.completes() else {
                    return;
                };
                if self.suspended {
                    self.deferred.push(event.clone());
                    return;
                }
                let completion = match kind {
                    EventKind::TaskFailed { failure, .. }
                    | EventKind::SubOrchestrationInstanceFailed { failure, .. }
                    | EventKind::EntityOperationFailed { failure, .. } => {
                        Completion::Failed(failure.clone())
                    }
                    EventKind::TaskCompleted { result, .. }
                    | EventKind::SubOrchestrationInstanceCompleted { result, .. }
                    | EventKind::EntityOperationCompleted { result, .. } => {
                        Completion::Ok(result.clone())
                    }
                    _ => Completion::Ok(None),
                };
                {
                    let mut st = self.ctx.state();
                    if seq >= st.next_seq {
                        if st.nondeterminism.is_none() {
                            let recorded = st
                                .actions
                                .get(seq as usize)
                                .map(|a| a.recorded_name())
                                .unwrap_or_else(|| "a call".to_string());
                            st.nondeterminism = Some(format!(
                                "non-deterministic orchestration '{}': the history recorded {} completing sequence number {seq} ({recorded}), but the code did not make that call; was the orchestrator changed while this instance was running?",
                                self.ctx.name(),
                                kind.type_name()
                            ));
                        }
                        return;
                    }
                    st.complete(seq, completion);
                }
                self.poll();
            }
        }
    }

    /// Replays a recorded history into a fresh execution.
    pub fn replay(
        registry: &Registry,
        state: &InstanceState,
        history: &[HistoryEvent],
    ) -> Execution {
        let ctx = OrchestrationContext::new(
            state.instance_id.clone(),
            state.execution_id.clone(),
            state.name.clone(),
            state.version.clone(),
            state.parent.clone(),
            history
                .first()
                .map(|e| e.timestamp)
                .unwrap_or(state.created_at),
        );
        {
            let mut st = ctx.state();
            for e in history {
                if let Some(a) = Action::from_event(&e.kind) {
                    if e.seq >= 0 && e.seq as usize == st.actions.len() {
                        st.actions.push(a);
                    }
                }
            }
        }
        let mut exec = Execution::new(ctx);
        exec.committed_actions = exec.ctx.state().actions.len();
        for e in history {
            exec.apply(registry, e);
        }
        exec.history_len = history.len() as u64;
        exec
    }

    /// Checks that replay re-made every recorded call; a shortfall is nondeterminism.
    fn check_replayed_all(&self) {
        let mut st = self.ctx.state();
        if st.nondeterminism.is_some() || self.result.is_none() {
            return;
        }
        // Code that is not registered made no calls: say that, not that it skipped them.
        if matches!(&self.result, Some(Err(f)) if f.error_type == "UnknownOrchestrator") {
            return;
        }
        let made = st.next_seq as usize;
        if made < self.committed_actions {
            let missing = st.actions[made].recorded_name();
            st.nondeterminism = Some(format!(
                "non-deterministic orchestration '{}': the history recorded {missing} at sequence number {made}, but the code finished without making that call; was the orchestrator changed while this instance was running?",
                self.ctx.name()
            ));
        }
    }
}

/// What replaying a recorded history re-made, for the replayer (`crate::replayer`).
pub(crate) struct Rerun {
    /// The nondeterminism replay detected, in the engine's own words.
    pub nondeterminism: Option<String>,
    /// The orchestrator's outcome when the code finished within the history.
    pub result: Option<Outcome>,
    /// The code continued as new within the history.
    pub continued_as_new: bool,
    /// The history ends in a termination (the code was stopped, not finished).
    pub terminated: bool,
}

/// Replays `history` of the execution described by `state` on `registry`'s code, as a
/// worker would before an episode, and reports what it found.
pub(crate) fn rerun(registry: &Registry, state: &InstanceState, history: &[HistoryEvent]) -> Rerun {
    let exec = Execution::replay(registry, state, history);
    exec.check_replayed_all();
    let st = exec.ctx.state();
    Rerun {
        nondeterminism: st.nondeterminism.clone(),
        result: exec.result.clone(),
        continued_as_new: st.continue_as_new.is_some(),
        terminated: exec.terminated.is_some(),
    }
}

/// What an episode runs on: the instance, its stored state (None when it does not exist)
/// and its new messages with their ids (which replay ignores).
#[derive(Clone, Copy)]
pub(crate) struct Inbox<'a> {
    pub instance_id: &'a str,
    pub state: Option<&'a InstanceState>,
    pub messages: &'a [(u64, OrchestrationMessage)],
}

/// An activity an episode schedules.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ScheduledActivity {
    /// The execution waiting for the result.
    pub execution_id: String,
    /// The sequence number of its `TaskScheduled` event.
    pub seq: u64,
    pub name: String,
    pub input: Option<String>,
    /// Attempt number under a retry policy (1 for the first).
    pub attempt: u32,
    /// Start-to-close timeout of the attempt.
    pub start_to_close: Option<std::time::Duration>,
    /// Heartbeat timeout of the attempt.
    pub heartbeat_timeout: Option<std::time::Duration>,
    /// The previous attempt's last heartbeat details.
    pub heartbeat_details: Option<String>,
    /// The W3C `traceparent` of the scheduling instance.
    pub trace_parent: Option<String>,
}

/// Everything one episode changes; it consumes every message of its inbox.
#[derive(Debug, Default)]
pub(crate) struct Episode {
    pub history: HistoryUpdate,
    /// The instance's new state; None leaves it as it is.
    pub state: Option<InstanceState>,
    pub activities: Vec<ScheduledActivity>,
    /// Messages to this or other instances (timers carry `visible_at`).
    pub messages: Vec<OrchestrationMessage>,
    /// Sub-orchestrations and entities to create.
    pub new_instances: Vec<NewInstance>,
    /// Activity calls made in earlier episodes that this one dropped before they
    /// completed: their work is cancelled.
    pub cancelled_activities: Vec<ActivityCall>,
}

/// What an episode produced.
pub(crate) struct EpisodeResult {
    pub episode: Episode,
    /// The live execution, when it is still running and may be cached.
    pub execution: Option<Execution>,
}

/// Where the history to replay comes from.
pub(crate) enum Source {
    /// A cached execution already in sync with the stored history.
    Cached(Execution),
    /// The stored history, to replay from scratch.
    History(Vec<HistoryEvent>),
}

/// The message telling a parent its child finished.
fn parent_message(
    parent: &ParentInstance,
    now: DateTime<Utc>,
    outcome: &Result<Option<String>, FailureDetails>,
) -> OrchestrationMessage {
    let kind = match outcome {
        Ok(result) => EventKind::SubOrchestrationInstanceCompleted {
            seq: parent.seq,
            result: result.clone(),
        },
        Err(failure) => EventKind::SubOrchestrationInstanceFailed {
            seq: parent.seq,
            failure: failure.clone(),
        },
    };
    OrchestrationMessage::new(parent.instance_id.clone(), HistoryEvent::new(now, kind))
        .for_execution(parent.execution_id.clone())
}

/// The outcome a finished instance reports to its parent.
fn terminal_outcome(state: &InstanceState) -> Result<Option<String>, FailureDetails> {
    match state.status {
        RuntimeStatus::Completed => Ok(state.output.clone()),
        RuntimeStatus::Terminated => Err(FailureDetails::new(
            "Terminated",
            format!(
                "sub-orchestration '{}' was terminated{}",
                state.instance_id,
                state
                    .output
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        )),
        _ => Err(state.failure.clone().unwrap_or_else(|| {
            FailureDetails::new(
                "Failed",
                format!("sub-orchestration '{}' failed", state.instance_id),
            )
        })),
    }
}

/// Runs one episode for a work item.
pub(crate) fn run_episode(
    registry: &Registry,
    item: &Inbox<'_>,
    source: Option<Source>,
    now: DateTime<Utc>,
) -> EpisodeResult {
    let mut commit = Episode::default();
    let Some(state) = item.state.cloned() else {
        // Messages for an instance that does not exist (purged): drop them.
        return EpisodeResult {
            episode: commit,
            execution: None,
        };
    };

    if state.status.is_terminal() {
        return terminal_episode(registry, item, state, source, now, commit);
    }
    let mut state = state;
    let starting = match &source {
        Some(Source::Cached(_)) => false,
        Some(Source::History(h)) => !h
            .iter()
            .any(|e| matches!(e.kind, EventKind::ExecutionStarted { .. })),
        None => true,
    };
    if starting && state.version.is_none() {
        // Started without a version (by a client that knows no registry): the execution
        // runs on the newest version and records it, so it keeps replaying on that one
        // after newer versions are registered.
        state.version = registry
            .orchestrator(&state.name, None)
            .and_then(|e| e.version.clone());
    }

    let (mut exec, replaced) = match source {
        Some(Source::Cached(exec)) => (exec, None),
        Some(Source::History(history)) => (Execution::replay(registry, &state, &history), None),
        None => (
            Execution::replay(registry, &state, &[]),
            None::<Vec<HistoryEvent>>,
        ),
    };
    let new_events = apply_messages(registry, &mut exec, item, &state, now);
    finish_episode(
        registry,
        exec,
        state,
        new_events,
        replaced,
        now,
        &mut commit,
    )
}

/// Applies the work item's messages to a running execution; returns the events to append.
fn apply_messages(
    registry: &Registry,
    exec: &mut Execution,
    item: &Inbox<'_>,
    state: &InstanceState,
    now: DateTime<Utc>,
) -> Vec<HistoryEvent> {
    let mut new_events = vec![HistoryEvent::new(now, EventKind::OrchestratorStarted)];
    {
        let mut st = exec.ctx.state();
        st.is_replaying = false;
        st.current_time = now;
    }
    let mut seen_completions: HashSet<u64> = HashSet::new();
    for (_, msg) in item.messages {
        if msg
            .execution_id
            .as_deref()
            .is_some_and(|e| e != state.execution_id)
        {
            continue;
        }
        let ev = &msg.event;
        let accept = match &ev.kind {
            EventKind::ExecutionStarted { .. } => !exec.started,
            EventKind::ExecutionSuspended { .. } => !exec.suspended,
            EventKind::ExecutionResumed { .. } => exec.suspended,
            EventKind::ExecutionTerminated { .. } | EventKind::EventRaised { .. } => true,
            kind => match kind.completes() {
                Some(seq) => {
                    let st = exec.ctx.state();
                    let known = st.actions.get(seq as usize).is_some_and(|a| {
                        (seq as usize) < exec.committed_actions && a.accepts(kind)
                    });
                    known && !st.completed.contains(&seq) && seen_completions.insert(seq)
                }
                None => false,
            },
        };
        if !accept {
            continue;
        }
        let mut ev = ev.clone();
        ev.timestamp = now;
        if let EventKind::ExecutionStarted { version, .. } = &mut ev.kind {
            if version.is_none() {
                version.clone_from(&state.version);
            }
        }
        if let EventKind::ExecutionTerminated { .. } = ev.kind {
            new_events.push(ev.clone());
            exec.apply(registry, &ev);
            break;
        }
        new_events.push(ev.clone());
        exec.apply(registry, &ev);
    }
    new_events
}

/// Turns the execution's state after the new events into the commit.
fn finish_episode(
    _registry: &Registry,
    mut exec: Execution,
    mut state: InstanceState,
    mut new_events: Vec<HistoryEvent>,
    replaced: Option<Vec<HistoryEvent>>,
    now: DateTime<Utc>,
    commit: &mut Episode,
) -> EpisodeResult {
    exec.check_replayed_all();
    let failure = exec.failure();
    let (custom_status, continue_as_new, actions, dropped) = {
        let mut st = exec.ctx.state();
        (
            st.custom_status.clone(),
            st.continue_as_new.clone(),
            st.actions[exec.committed_actions..].to_vec(),
            std::mem::take(&mut st.newly_dropped),
        )
    };
    // Calls stored by earlier episodes are cancelled; calls this episode made and dropped
    // at once are recorded but never scheduled.
    let stored = exec.committed_actions as u64;
    let unwanted = |seq: u64| seq >= stored && dropped.contains(&seq);
    commit.cancelled_activities = dropped
        .iter()
        .filter(|seq| **seq < stored)
        .map(|&seq| ActivityCall {
            execution_id: state.execution_id.clone(),
            seq,
        })
        .collect();
    state.custom_status = custom_status;
    state.last_updated_at = now;

    let mut finished = true;
    let mut record_actions = true;
    let mut schedule_timers = false;
    let mut parent_outcome = None;
    if let Some(reason) = exec.terminated.clone() {
        record_actions = false;
        state.status = RuntimeStatus::Terminated;
        state.output = reason
            .as_ref()
            .map(|r| serde_json::Value::String(r.clone()).to_string());
        state.failure = None;
        new_events.push(HistoryEvent::new(
            now,
            EventKind::ExecutionCompleted {
                status: RuntimeStatus::Terminated,
                result: state.output.clone(),
                failure: None,
            },
        ));
        parent_outcome = Some(terminal_outcome(&state));
        terminate_children(&exec, &state, reason.as_deref(), now, commit);
    } else if let Some(f) = failure {
        record_actions = false;
        state.status = RuntimeStatus::Failed;
        state.failure = Some(f.clone());
        new_events.push(HistoryEvent::new(
            now,
            EventKind::ExecutionCompleted {
                status: RuntimeStatus::Failed,
                result: None,
                failure: Some(f.clone()),
            },
        ));
        parent_outcome = Some(Err(f));
    } else if let Some(result) = exec.result.clone() {
        match result {
            Ok(output) => {
                state.status = RuntimeStatus::Completed;
                state.output = output.clone();
                state.failure = None;
                new_events.push(HistoryEvent::new(
                    now,
                    EventKind::ExecutionCompleted {
                        status: RuntimeStatus::Completed,
                        result: output.clone(),
                        failure: None,
                    },
                ));
                parent_outcome = Some(Ok(output));
            }
            Err(f) => {
                state.status = RuntimeStatus::Failed;
                state.failure = Some(f.clone());
                new_events.push(HistoryEvent::new(
                    now,
                    EventKind::ExecutionCompleted {
                        status: RuntimeStatus::Failed,
                        result: None,
                        failure: Some(f.clone()),
                    },
                ));
                parent_outcome = Some(Err(f));
            }
        }
    } else if let Some(can) = continue_as_new {
        // End this execution and queue the start of the next one.
        let next_execution = random_id();
        let mut carried = Vec::new();
        if can.preserve_unprocessed_events {
            let st = exec.ctx.state();
            let mut names: Vec<&String> = st.event_buffers.keys().collect();
            names.sort();
            for name in names {
                for input in &st.event_buffers[name] {
                    carried.push((name.clone(), input.clone()));
                }
            }
        }
        for (seq, a) in actions.iter().enumerate() {
            let seq = (exec.committed_actions + seq) as u64;
            if unwanted(seq) {
                continue;
            }
            side_effects(
                &state,
                exec.trace_parent.as_deref(),
                a,
                seq,
                now,
                commit,
                false,
            );
        }
        let start = NewInstance {
            instance_id: state.instance_id.clone(),
            execution_id: next_execution.clone(),
            name: state.name.clone(),
            version: state.version.clone(),
            input: can.input.clone(),
            parent: state.parent.clone(),
            created_at: now,
            start_at: None,
            trace_parent: exec.trace_parent.clone(),
        };
        commit.messages.push(start.start_message());
        for (name, input) in carried {
            commit.messages.push(OrchestrationMessage::new(
                state.instance_id.clone(),
                HistoryEvent::new(now, EventKind::EventRaised { name, input }),
            ));
        }
        release_held_locks(&exec, &state, now, commit);
        state.status = RuntimeStatus::Running;
        state.execution_id = next_execution;
        state.input = can.input;
        state.output = None;
        state.failure = None;
        commit.history = HistoryUpdate::Replace(Vec::new());
        commit.state = Some(state);
        return EpisodeResult {
            episode: std::mem::take(commit),
            execution: None,
        };
    } else {
        finished = false;
        schedule_timers = true;
        state.status = if !exec.started {
            RuntimeStatus::Pending
        } else if exec.suspended {
            RuntimeStatus::Suspended
        } else {
            RuntimeStatus::Running
        };
    }

    if record_actions {
        for (i, a) in actions.iter().enumerate() {
            let seq = (exec.committed_actions + i) as u64;
            new_events.push(a.to_event(seq, now));
            if unwanted(seq) {
                continue;
            }
            side_effects(
                &state,
                exec.trace_parent.as_deref(),
                a,
                seq,
                now,
                commit,
                schedule_timers,
            );
        }
    }
    new_events.push(HistoryEvent::new(now, EventKind::OrchestratorCompleted));
    if finished {
        release_held_locks(&exec, &state, now, commit);
        if !record_actions {
            // Unlocks the code made on its way out (a dropped critical section) were not
            // recorded; send them anyway so no entity stays locked.
            for a in &actions {
                if let Action::UnlockEntity { entity_id } = a {
                    push_unlock(commit, &state, entity_id, now);
                }
            }
        }
    }
    if let (Some(parent), Some(outcome)) = (&state.parent, &parent_outcome) {
        commit.messages.push(parent_message(parent, now, outcome));
    }

    let appended = new_events.len() as u64;
    commit.history = match replaced {
        Some(mut kept) => {
            kept.extend(new_events);
            exec.history_len = kept.len() as u64;
            HistoryUpdate::Replace(kept)
        }
        None => {
            exec.history_len += appended;
            HistoryUpdate::Append(new_events)
        }
    };
    commit.state = Some(state);
    exec.committed_actions += if record_actions { actions.len() } else { 0 };
    let commit = std::mem::take(commit);
    EpisodeResult {
        episode: commit,
        execution: if finished { None } else { Some(exec) },
    }
}

/// Parent-close policy on termination: every sub-orchestration this execution started
/// (recorded in history) that has not finished and was not started with
/// [`ParentClosePolicy::Abandon`](crate::context::ParentClosePolicy::Abandon) is sent a
/// termination; each terminated child does the same for its own children.
fn terminate_children(
    exec: &Execution,
    state: &InstanceState,
    reason: Option<&str>,
    now: DateTime<Utc>,
    commit: &mut Episode,
) {
    let st = exec.ctx.state();
    for (seq, a) in st.actions[..exec.committed_actions].iter().enumerate() {
        let Action::SubOrchestration {
            instance_id,
            abandon_on_parent_close: false,
            ..
        } = a
        else {
            continue;
        };
        if st.completed.contains(&(seq as u64)) {
            continue;
        }
        let why = match reason {
            Some(r) => format!(
                "parent instance '{}' was terminated: {r}",
                state.instance_id
            ),
            None => format!("parent instance '{}' was terminated", state.instance_id),
        };
        commit.messages.push(OrchestrationMessage::new(
            instance_id.clone(),
            HistoryEvent::new(now, EventKind::ExecutionTerminated { reason: Some(why) }),
        ));
    }
}

/// Releases every entity lock the execution requested and still holds (or may yet be
/// granted), because the execution ended.
fn release_held_locks(
    exec: &Execution,
    state: &InstanceState,
    now: DateTime<Utc>,
    commit: &mut Episode,
) {
    let mut ids = exec.ctx.state().lock_requests.clone();
    ids.sort();
    ids.dedup();
    for id in ids {
        push_unlock(commit, state, &id, now);
    }
}

/// The work, messages and instances a new action causes.
#[allow(clippy::too_many_arguments)]
fn side_effects(
    state: &InstanceState,
    trace_parent: Option<&str>,
    action: &Action,
    seq: u64,
    now: DateTime<Utc>,
    commit: &mut Episode,
    schedule_timers: bool,
) {
    match action {
        Action::Activity {
            name,
            input,
            attempt,
            start_to_close,
            heartbeat_timeout,
            heartbeat_details,
        } => commit.activities.push(ScheduledActivity {
            execution_id: state.execution_id.clone(),
            seq,
            name: name.clone(),
            input: input.clone(),
            attempt: *attempt,
            start_to_close: *start_to_close,
            heartbeat_timeout: *heartbeat_timeout,
            heartbeat_details: heartbeat_details.clone(),
            trace_parent: trace_parent.map(str::to_string),
        }),
        Action::Timer { fire_at } => {
            if schedule_timers {
                commit.messages.push(
                    OrchestrationMessage::new(
                        state.instance_id.clone(),
                        HistoryEvent::new(
                            now,
                            EventKind::TimerFired {
                                seq,
                                fire_at: *fire_at,
                            },
                        ),
                    )
                    .for_execution(state.execution_id.clone())
                    .visible_at(*fire_at),
                );
            }
        }
        Action::SubOrchestration {
            name,
            version,
            instance_id,
            input,
            ..
        } => commit.new_instances.push(NewInstance {
            instance_id: instance_id.clone(),
            execution_id: random_id(),
            name: name.clone(),
            version: version.clone(),
            input: input.clone(),
            parent: Some(ParentInstance {
                instance_id: state.instance_id.clone(),
                execution_id: state.execution_id.clone(),
                seq,
                name: state.name.clone(),
            }),
            created_at: now,
            start_at: None,
            trace_parent: trace_parent.map(str::to_string),
        }),
        Action::SendEvent {
            instance_id,
            name,
            input,
        } => commit.messages.push(OrchestrationMessage::new(
            instance_id.clone(),
            HistoryEvent::new(
                now,
                EventKind::EventRaised {
                    name: name.clone(),
                    input: input.clone(),
                },
            ),
        )),
        Action::CallEntity {
            entity_id,
            operation,
            input,
            in_critical_section,
        } => push_entity_message(
            commit,
            entity_id,
            EntityRequest::Operation {
                operation: operation.clone(),
                input: input.clone(),
                reply_to: Some(reply_to(state, seq)),
                lock_owner: in_critical_section.then(|| state.instance_id.clone()),
                trace_parent: trace_parent.map(str::to_string),
            },
            None,
            now,
        ),
        Action::SignalEntity {
            entity_id,
            operation,
            input,
            at,
        } => push_entity_message(
            commit,
            entity_id,
            EntityRequest::Operation {
                operation: operation.clone(),
                input: input.clone(),
                reply_to: None,
                lock_owner: None,
                trace_parent: trace_parent.map(str::to_string),
            },
            *at,
            now,
        ),
        Action::LockEntities { entity_ids } => push_entity_message(
            commit,
            &entity_ids[0],
            EntityRequest::Lock {
                owner: reply_to(state, seq),
                entity_ids: entity_ids.clone(),
                position: 0,
            },
            None,
            now,
        ),
        Action::UnlockEntity { entity_id } => push_unlock(commit, state, entity_id, now),
    }
}

fn reply_to(state: &InstanceState, seq: u64) -> ReplyTo {
    ReplyTo {
        instance_id: state.instance_id.clone(),
        execution_id: state.execution_id.clone(),
        seq,
    }
}

fn push_unlock(commit: &mut Episode, state: &InstanceState, entity_id: &str, now: DateTime<Utc>) {
    commit.messages.push(OrchestrationMessage::new(
        entity_id.to_string(),
        HistoryEvent::new(
            now,
            EventKind::EntityRequest {
                request: EntityRequest::Unlock {
                    owner: state.instance_id.clone(),
                },
            },
        ),
    ));
}

/// An episode for a finished instance: only a rewind (of a failed instance) does anything;
/// a completed child asked to rewind reports its result to its parent again.
fn terminal_episode(
    registry: &Registry,
    item: &Inbox<'_>,
    state: InstanceState,
    source: Option<Source>,
    now: DateTime<Utc>,
    mut commit: Episode,
) -> EpisodeResult {
    let rewind = item.messages.iter().find_map(|(_, m)| match &m.event.kind {
        EventKind::ExecutionRewound { reason } => Some(reason.clone()),
        _ => None,
    });
    let Some(reason) = rewind else {
        return EpisodeResult {
            episode: commit,
            execution: None,
        };
    };
    if state.status != RuntimeStatus::Failed {
        if let Some(parent) = &state.parent {
            commit
                .messages
                .push(parent_message(parent, now, &terminal_outcome(&state)));
        }
        return EpisodeResult {
            episode: commit,
            execution: None,
        };
    }
    let history = match source {
        Some(Source::History(h)) => h,
        _ => Vec::new(),
    };
    // Cut the history at the first failed call (or at the end of the execution), so the
    // failed work runs again; events raised after the cut are delivered again.
    let cut = history
        .iter()
        .position(|e| {
            matches!(
                e.kind,
                EventKind::TaskFailed { .. }
                    | EventKind::SubOrchestrationInstanceFailed { .. }
                    | EventKind::ExecutionCompleted { .. }
            )
        })
        .unwrap_or(history.len());
    let kept: Vec<HistoryEvent> = history[..cut].to_vec();
    for e in &history[cut..] {
        if let EventKind::EventRaised { .. } = e.kind {
            commit.messages.push(OrchestrationMessage::new(
                state.instance_id.clone(),
                e.clone(),
            ));
        }
    }
    let mut running = state.clone();
    running.status = RuntimeStatus::Running;
    running.failure = None;
    running.output = None;
    let mut exec = Execution::replay(registry, &running, &kept);
    let trace_parent = exec.trace_parent.clone();
    // Re-issue every recorded call that has no completion in the kept history.
    {
        let st = exec.ctx.state();
        for (seq, a) in st.actions[..exec.committed_actions].iter().enumerate() {
            // Completed calls, and activity calls the code dropped (their results are
            // not wanted), are not issued again.
            if st.completed.contains(&(seq as u64)) || st.dropped_activities.contains(&(seq as u64))
            {
                continue;
            }
            match a {
                Action::SubOrchestration { instance_id, .. } => {
                    commit.messages.push(OrchestrationMessage::new(
                        instance_id.clone(),
                        HistoryEvent::new(
                            now,
                            EventKind::ExecutionRewound {
                                reason: reason.clone(),
                            },
                        ),
                    ));
                }
                Action::SendEvent { .. } => {}
                other => side_effects(
                    &running,
                    trace_parent.as_deref(),
                    other,
                    seq as u64,
                    now,
                    &mut commit,
                    true,
                ),
            }
        }
    }
    {
        let mut st = exec.ctx.state();
        st.is_replaying = false;
        st.current_time = now;
    }
    let new_events = vec![
        HistoryEvent::new(now, EventKind::OrchestratorStarted),
        HistoryEvent::new(now, EventKind::ExecutionRewound { reason }),
    ];
    exec.history_len = 0;
    finish_episode(
        registry,
        exec,
        running,
        new_events,
        Some(kept),
        now,
        &mut commit,
    )
}
