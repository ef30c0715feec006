//! The orchestration dispatcher: fetches instances with new messages, runs their episodes
//! (on the cached execution when it is in sync, else replaying the history), turns each
//! episode into a store commit, and fails instances whose outcome is over the payload
//! limit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::*;
use crate::history::{EventKind, FailureDetails, HistoryEvent, OrchestrationMessage};
use crate::instance::RuntimeStatus;
use crate::limits::PayloadTooLarge;
use crate::replay::{run_episode, Episode, Execution, Inbox, Source};
use crate::store::{ActivityWorkItem, HistoryUpdate, OrchestrationCommit, OrchestrationWorkItem};

/// Most activities one commit leases to this worker directly.
pub(super) const DIRECT_ACTIVITIES: usize = 64;

pub(super) async fn orchestration_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let limit = shared.orchestration_limit.clone();
    let mut running = JoinSet::new();
    let mut failures = 0u32;
    let mut idle = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        while running.try_join_next().is_some() {}
        let first = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = shutdown.changed() => continue,
        };
        let mut permits = vec![first];
        while let Ok(p) = limit.clone().try_acquire_owned() {
            permits.push(p);
            if permits.len() >= 32 {
                break;
            }
        }
        // After a fetch that found work, take what is ready without waiting; after one that
        // found none, wait for work holding one permit (the others stay free for episodes
        // run straight after activities). Dropping a waiting fetch takes nothing, so
        // shutdown may interrupt it.
        let wait = if idle {
            permits.truncate(1);
            shared.options.idle_poll
        } else {
            Duration::ZERO
        };
        let fetched = tokio::select! {
            r = shared.store.fetch_orchestration_work(
                &shared.id,
                shared.options.orchestration_lease,
                permits.len(),
                wait,
            ) => r,
            _ = shutdown.changed() => continue,
        };
        idle = matches!(&fetched, Ok(items) if items.is_empty());
        match fetched {
            Ok(items) if !items.is_empty() => {
                for item in items {
                    let permit = permits.pop().expect("one permit per fetched item");
                    let shared = shared.clone();
                    // Boxed: the episode's future is several kilobytes, and a task's future
                    // is moved on spawning.
                    running.spawn(async move {
                        Box::pin(process_orchestration(&shared, item)).await;
                        drop(permit);
                    });
                }
            }
            Ok(_) => drop(permits),
            Err(e) => {
                drop(permits);
                failures += 1;
                store_failed(&e, "fetching orchestration work failed; retrying", failures);
                tokio::select! {
                    _ = tokio::time::sleep(fetch_backoff(failures)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        }
        if failures > 0 {
            tracing::info!(failures, "fetching orchestration work works again");
            failures = 0;
        }
    }
    while running.join_next().await.is_some() {}
    shared.orchestrations_done.send_replace(true);
}

pub(super) async fn process_orchestration(shared: &Shared, item: OrchestrationWorkItem) {
    process_orchestration_with(shared, item, None).await;
}

/// Runs and commits one episode; with `completed`, the episode's messages include that
/// activity's result (not yet stored) and the commit deletes the activity. True when the
/// episode was committed.
pub(super) async fn process_orchestration_with(
    shared: &Shared,
    item: OrchestrationWorkItem,
    completed: Option<&ActivityWorkItem>,
) -> bool {
    let name = item
        .state
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let _lease = shared.metrics.orchestration_item(&item, shared.now());
    if crate::entity::is_entity_instance(&item.instance_id) {
        // A batch of operations, each a span in its sender's trace.
        let span = tracing::info_span!("episode", instance_id = %item.instance_id, name = %name);
        return async {
            shared.metrics.episode_source(true, None);
            let episode = match entity_poison(shared, &item) {
                Some(failure) => {
                    tracing::error!(%failure, dequeue_count = item.dequeue_count, "refusing a poison entity batch");
                    crate::replay::entity::refuse_operations(
                        &shared.registry,
                        &inbox(&item),
                        failure,
                        shared.now(),
                    )
                    .await
                }
                None => {
                    crate::replay::entity::run_entity_episode(
                        &shared.registry,
                        &inbox(&item),
                        shared.now(),
                    )
                    .await
                }
            };
            commit_episode(shared, &item, commit_of(&item, episode), None, completed).await
        }
        .instrument(span)
        .await;
    }
    if let Some(failure) = poison(shared, &item) {
        tracing::error!(instance_id = %item.instance_id, %failure, dequeue_count = item.dequeue_count, "failing a poison instance");
        fail_instance(shared, &item, failure).await;
        return false;
    }
    // `_taken` lives until the episode's commit is answered (and its execution put back).
    let (source, _taken) = match episode_source(shared, &item).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(instance_id = %item.instance_id, error = %e, "reading history failed");
            let _ = shared
                .store
                .abandon_orchestration(&item.instance_id, &item.lease_token, Duration::from_secs(1))
                .await;
            return false;
        }
    };
    // The span's trace parent must be set before it is entered: it comes from the
    // execution's start, in the messages, the cached execution or the history.
    let span = tracing::info_span!(
        "episode",
        instance_id = %item.instance_id,
        name = %name,
        trace_id = tracing::field::Empty
    );
    crate::trace::attach(&span, episode_trace(&item, source.as_ref()).as_ref());
    async {
        shared.metrics.episode_source(false, source.as_ref());
        let registry = shared.registry.clone();
        let result = run_episode(&registry, &inbox(&item), source, shared.now());
        let commit = commit_of(&item, result.episode);
        commit_episode(shared, &item, commit, result.execution, completed).await
    }
    .instrument(span)
    .await
}

/// The `Poison` failure of a running orchestration whose work item was handed out more
/// than [`WorkerOptions::max_orchestration_dequeues`] times since its last commit.
fn poison(shared: &Shared, item: &OrchestrationWorkItem) -> Option<FailureDetails> {
    let state = item.state.as_ref()?;
    if !handed_out_too_often(shared, item) || state.status.is_terminal() {
        return None;
    }
    Some(FailureDetails::new(
        "Poison",
        format!(
            "the episode of orchestration '{}' was handed to a worker {} times without \
             committing (the worker died, hung past its lease or lost it each time); the \
             instance is failed instead of run again",
            state.name, item.dequeue_count
        ),
    ))
}

/// Whether the work item was handed out more than
/// [`WorkerOptions::max_orchestration_dequeues`] times since its instance's last commit
/// (never, when the check is off).
fn handed_out_too_often(shared: &Shared, item: &OrchestrationWorkItem) -> bool {
    let max = shared.options.max_orchestration_dequeues;
    max > 0 && item.dequeue_count > max
}

/// The `Poison` failure of an entity's batch of operations that was handed out more than
/// [`WorkerOptions::max_orchestration_dequeues`] times since the entity's last commit: its
/// operations are refused instead of run again.
fn entity_poison(shared: &Shared, item: &OrchestrationWorkItem) -> Option<FailureDetails> {
    if !handed_out_too_often(shared, item) {
        return None;
    }
    Some(FailureDetails::new(
        "Poison",
        format!(
            "the batch of operations of entity '{}' was handed to a worker {} times without \
             committing (the worker died, hung past its lease or lost it each time); its \
             operations are failed instead of run again",
            crate::entity::EntityId::from_instance_id(&item.instance_id)
                .map(|e| e.to_string())
                .unwrap_or_else(|| item.instance_id.clone()),
            item.dequeue_count
        ),
    ))
}

/// The trace context of an episode: from the `ExecutionStarted` among its messages (a
/// new execution), else from the execution it continues (cached or replayed).
fn episode_trace(
    item: &crate::store::OrchestrationWorkItem,
    source: Option<&crate::replay::Source>,
) -> Option<crate::trace::TraceParent> {
    use crate::history::EventKind;
    let started = |e: &crate::history::HistoryEvent| match &e.kind {
        EventKind::ExecutionStarted { trace_parent, .. } => Some(trace_parent.clone()),
        _ => None,
    };
    let value = item
        .messages
        .iter()
        .rev()
        .find_map(|(_, m)| started(&m.event))
        .or_else(|| match source {
            Some(crate::replay::Source::Cached(exec)) => Some(exec.trace_parent.clone()),
            Some(crate::replay::Source::History(h)) => h.iter().find_map(started),
            None => None,
        })
        .flatten();
    crate::trace::stored(value.as_deref())
}

/// What the replay engine sees of a work item.
pub(super) fn inbox(item: &OrchestrationWorkItem) -> Inbox<'_> {
    Inbox {
        instance_id: &item.instance_id,
        state: item.state.as_ref(),
        messages: &item.messages,
    }
}

/// The store commit of an episode run for `item`: fenced by its lease, consuming every
/// message it carried.
pub(super) fn commit_of(item: &OrchestrationWorkItem, episode: Episode) -> OrchestrationCommit {
    OrchestrationCommit {
        instance_id: item.instance_id.clone(),
        lease_token: item.lease_token.clone(),
        consumed: item.messages.iter().map(|(id, _)| *id).collect(),
        history: episode.history,
        state: episode.state,
        activities: episode
            .activities
            .into_iter()
            .map(|a| ActivityWorkItem {
                id: 0,
                instance_id: item.instance_id.clone(),
                execution_id: a.execution_id,
                seq: a.seq,
                name: a.name,
                input: a.input,
                attempt: a.attempt,
                lease_token: String::new(),
                dequeue_count: 0,
                start_to_close: a.start_to_close,
                heartbeat_timeout: a.heartbeat_timeout,
                heartbeat_details: a.heartbeat_details,
                trace_parent: a.trace_parent,
                scheduled_at: None,
            })
            .collect(),
        messages: episode.messages,
        new_instances: episode.new_instances,
        cancelled_activities: episode.cancelled_activities,
    }
}

/// Commits an episode; keeps the live execution in the cache when the commit succeeded.
/// Payloads over the limit fail the instance (or the entity batch's operations) instead;
/// a failed commit is abandoned, and the episode runs again. True when the episode was
/// committed.
pub(super) async fn commit_episode(
    shared: &Shared,
    item: &OrchestrationWorkItem,
    commit: OrchestrationCommit,
    execution: Option<Execution>,
    completed: Option<&ActivityWorkItem>,
) -> bool {
    if let Err(too_large) = crate::limits::check_commit(&commit, shared.options.max_payload_bytes) {
        refuse_episode(shared, item, too_large).await;
        return false;
    }
    let status = commit.state.as_ref().map(|s| s.status);
    let state = execution.as_ref().and(commit.state.clone());
    let cancelled = commit.cancelled_activities.clone();
    let fast = shared.store.fast_paths();
    let mut permits = match fast {
        Some(_) => activity_permits(shared, &commit),
        None => Vec::new(),
    };
    // One attempt: keeping a copy of every commit for a retry in place would cost a clone
    // of its payloads per episode. A commit that fails is abandoned below and the episode
    // runs again from its stored messages, to the same effect.
    let direct = shared.direct(permits.len());
    let measured = shared.metrics.episode_commit(&shared.registry, &commit);
    let committed = match fast {
        Some(fast) if completed.is_some() || direct.max > 0 => {
            fast.commit_orchestration_and_lease(commit, completed, direct)
                .await
        }
        _ => shared
            .store
            .commit_orchestration(commit)
            .await
            .map(|()| Vec::new()),
    };
    match &committed {
        Ok(_) => shared.metrics.committed(measured),
        Err(_) => shared.metrics.commit_failed(measured),
    }
    match committed {
        Ok(leased) => {
            // Cache first: the leased activities may finish at once and look for it.
            if let Some(exec) = execution {
                shared.cache_put(item.instance_id.clone(), Cached { exec, state });
            }
            dispatch_leased(shared, leased, &mut permits);
            drop(permits);
            cancel_running(shared, &item.instance_id, &cancelled);
            if let Some(status) = status.filter(|s| s.is_terminal()) {
                tracing::debug!(%status, "instance finished");
            }
            true
        }
        Err(e) if e.is_lease_lost() => {
            tracing::debug!("lease lost; another worker owns this instance now");
            false
        }
        Err(e) => {
            store_failed(&e, "commit failed; the episode runs again shortly", 1);
            // A transient failure is tried again soon; the dispatcher's fetches back off
            // for as long as the store keeps failing.
            let delay = if e.is_retryable() {
                retry_backoff(1)
            } else {
                Duration::from_secs(1)
            };
            let _ = shared
                .store
                .abandon_orchestration(&item.instance_id, &item.lease_token, delay)
                .await;
            false
        }
    }
}

/// An episode whose outcome is over the payload limit: the instance fails (an entity's
/// batch fails its operations) with a `PayloadTooLarge` failure.
pub(super) async fn refuse_episode(
    shared: &Shared,
    item: &OrchestrationWorkItem,
    too_large: PayloadTooLarge,
) {
    let failure = FailureDetails::new("PayloadTooLarge", too_large.to_string());
    if crate::entity::is_entity_instance(&item.instance_id) {
        tracing::warn!(%failure, "entity batch refused; failing its operations");
        let commit = crate::replay::entity::refuse_operations(
            &shared.registry,
            &inbox(item),
            failure,
            shared.now(),
        )
        .await;
        let commit = commit_of(item, commit);
        if let Err(e) = with_retries(
            shared,
            "recording refused operations failed; retrying",
            || shared.store.commit_orchestration(commit.clone()),
        )
        .await
        {
            tracing::warn!(error = %e, "could not record the refused operations");
        }
    } else {
        tracing::warn!(%failure, "failing instance");
        fail_instance(shared, item, failure).await;
    }
}

/// Permits for the activities a commit schedules: those get leased to this worker in the
/// same transaction and start at once, without a trip through the activity queue.
pub(super) fn activity_permits(
    shared: &Shared,
    commit: &OrchestrationCommit,
) -> Vec<OwnedSemaphorePermit> {
    let mut permits = Vec::new();
    if !commit.activities.is_empty() && !shared.shutting_down() {
        let want = commit.activities.len().min(DIRECT_ACTIVITIES);
        while permits.len() < want {
            match shared.activity_limit.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
    }
    permits
}

/// Hands activities leased by a commit to the activity dispatcher, each with a permit.
pub(super) fn dispatch_leased(
    shared: &Shared,
    leased: Vec<ActivityWorkItem>,
    permits: &mut Vec<OwnedSemaphorePermit>,
) {
    for item in leased {
        let permit = permits.pop().expect("one permit per leased activity");
        let _ = shared.direct_activities.send((item, permit));
    }
}

/// Picks the cached execution when it is in sync with the store; otherwise loads history.
/// With it comes the [`Taken`] mark of the instance's execution, to keep until the
/// episode's commit is answered (and its execution put in the cache).
pub(super) async fn episode_source<'a>(
    shared: &'a Shared,
    item: &OrchestrationWorkItem,
) -> Result<(Option<Source>, Taken<'a>), StoreError> {
    let (cached, taken) = take_cached(shared, &item.instance_id).await;
    let Some(state) = &item.state else {
        return Ok((None, taken));
    };
    if let Some(Cached { exec, .. }) = cached {
        if exec.history_len == item.history_len && exec.ctx.execution_id() == state.execution_id {
            return Ok((Some(Source::Cached(exec)), taken));
        }
    }
    let needs_history = if state.status.is_terminal() {
        item.messages
            .iter()
            .any(|(_, m)| matches!(m.event.kind, EventKind::ExecutionRewound { .. }))
    } else {
        item.history_len > 0
    };
    if !needs_history {
        return Ok((None, taken));
    }
    Ok((
        Some(Source::History(
            shared.store.read_history(&item.instance_id).await?,
        )),
        taken,
    ))
}

/// Commits a failure for an instance whose episode could not be stored.
pub(super) async fn fail_instance(
    shared: &Shared,
    item: &OrchestrationWorkItem,
    failure: FailureDetails,
) {
    let Some(mut state) = item.state.clone() else {
        return;
    };
    let now = shared.now();
    state.status = RuntimeStatus::Failed;
    state.failure = Some(failure.clone());
    state.output = None;
    state.custom_status = None;
    state.last_updated_at = now;
    let mut messages = Vec::new();
    if let Some(parent) = &state.parent {
        messages.push(
            OrchestrationMessage::new(
                parent.instance_id.clone(),
                HistoryEvent::new(
                    now,
                    EventKind::SubOrchestrationInstanceFailed {
                        seq: parent.seq,
                        failure: failure.clone(),
                    },
                ),
            )
            .for_execution(parent.execution_id.clone()),
        );
    }
    let commit = OrchestrationCommit {
        instance_id: item.instance_id.clone(),
        lease_token: item.lease_token.clone(),
        consumed: item.messages.iter().map(|(id, _)| *id).collect(),
        history: HistoryUpdate::Append(vec![
            HistoryEvent::new(now, EventKind::OrchestratorStarted),
            HistoryEvent::new(
                now,
                EventKind::ExecutionCompleted {
                    status: RuntimeStatus::Failed,
                    result: None,
                    failure: Some(failure),
                },
            ),
            HistoryEvent::new(now, EventKind::OrchestratorCompleted),
        ]),
        state: Some(state),
        activities: Vec::new(),
        messages,
        new_instances: Vec::new(),
        cancelled_activities: Vec::new(),
    };
    if let Err(e) = with_retries(shared, "recording a failure failed; retrying", || {
        shared.store.commit_orchestration(commit.clone())
    })
    .await
    {
        tracing::warn!(error = %e, "could not record the failure; retrying later");
        let _ = shared
            .store
            .abandon_orchestration(&item.instance_id, &item.lease_token, Duration::from_secs(5))
            .await;
    }
}
