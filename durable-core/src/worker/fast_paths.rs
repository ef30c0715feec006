//! The fast paths, used when the store offers [`FastPaths`](crate::store::FastPaths): an
//! activity's result goes straight into the next episode on the cached execution (an
//! unleased compare-and-set commit, or a leased one), so a sequential step costs one
//! durable commit.

use tokio::sync::OwnedSemaphorePermit;

use super::*;
use crate::history::FailureDetails;
use crate::replay::{run_episode, Source};
use crate::store::{ActivityWorkItem, OrchestrationWorkItem};

/// Runs the episode for an activity's result on the cached execution and commits it
/// without taking the instance's lease first (the store checks nobody else moved the
/// instance). True when committed; false leaves the result to be recorded as usual (the
/// execution, which may have advanced in memory, is dropped from the cache).
pub(super) async fn run_unleased(
    shared: &Shared,
    fast: &dyn crate::store::FastPaths,
    item: &ActivityWorkItem,
    outcome: &Result<Option<String>, FailureDetails>,
) -> bool {
    let Ok(permit) = shared.orchestration_limit.clone().try_acquire_owned() else {
        return false;
    };
    let Some((
        Cached {
            exec,
            state: Some(state),
        },
        _taken,
    )) = try_take_cached(shared, &item.instance_id)
    else {
        return false;
    };
    if exec.ctx.execution_id() != item.execution_id
        || state.execution_id != item.execution_id
        || state.status.is_terminal()
    {
        return false;
    }
    if outstanding(&exec) > 1 {
        // A fan-in (the execution came back after the caller looked): the result is
        // recorded to gather with the others; the execution stays cached.
        shared.cache_put(
            item.instance_id.clone(),
            Cached {
                exec,
                state: Some(state),
            },
        );
        return false;
    }
    let history_len = exec.history_len;
    let work = OrchestrationWorkItem {
        instance_id: item.instance_id.clone(),
        lease_token: String::new(),
        // Not a stored message: its id matches no row.
        messages: vec![(u64::MAX, completion_message(shared, item, outcome.clone()))],
        state: Some(state),
        history_len,
        // The instance was not handed out: this worker ran it from its cache.
        dequeue_count: 0,
    };
    let span = tracing::info_span!(
        "episode",
        instance_id = %work.instance_id,
        trace_id = tracing::field::Empty
    );
    crate::trace::attach(
        &span,
        crate::trace::stored(exec.trace_parent.as_deref()).as_ref(),
    );
    let _enter = span.enter();
    shared
        .metrics
        .episode(false, crate::metrics::EpisodeSource::Cached, 0);
    let result = run_episode(
        &shared.registry,
        &inbox(&work),
        Some(Source::Cached(exec)),
        shared.now(),
    );
    drop(_enter);
    let commit = commit_of(&work, result.episode);
    if crate::limits::check_commit(&commit, shared.options.max_payload_bytes).is_err() {
        // The leased path fails the instance for it.
        return false;
    }
    let new_state = result.execution.as_ref().and(commit.state.clone());
    let cancelled = commit.cancelled_activities.clone();
    let mut permits = activity_permits(shared, &commit);
    let execution_id = item.execution_id.clone();
    let measured = shared.metrics.episode_commit(&shared.registry, &commit);
    let committed = fast
        .commit_unleased(
            commit,
            &execution_id,
            history_len,
            item,
            shared.direct(permits.len()),
        )
        .await;
    match &committed {
        Ok(_) => shared.metrics.committed(measured),
        Err(_) => shared.metrics.commit_failed(measured),
    }
    match committed {
        Ok(leased) => {
            if let Some(exec) = result.execution {
                shared.cache_put(
                    item.instance_id.clone(),
                    Cached {
                        exec,
                        state: new_state,
                    },
                );
            }
            dispatch_leased(shared, leased, &mut permits);
            drop(permit);
            cancel_running(shared, &item.instance_id, &cancelled);
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "unleased commit refused; recording the result instead");
            false
        }
    }
}

/// Hands an activity's outcome on. When an episode slot is free and the store can lease the
/// instance while the activity's lease holds, the result goes straight into the next
/// episode and is stored by that episode's commit (one durable commit per step); if that
/// commit fails, the result is recorded as usual.
pub(super) async fn finish_activity(
    shared: &Shared,
    item: &ActivityWorkItem,
    outcome: Result<Option<String>, FailureDetails>,
) -> Option<(OrchestrationWorkItem, OwnedSemaphorePermit)> {
    let outcome = within_limit(shared, item, outcome);
    let Some(fast) = shared.store.fast_paths() else {
        return complete_activity(shared, item, outcome, false).await;
    };
    if waits_for_many(shared, &item.instance_id) {
        // A fan-in: let results gather so one episode takes many of them.
        return complete_activity(shared, item, outcome, false).await;
    }
    // Only successful results take the direct paths.
    if shared.shutting_down() || outcome.is_err() {
        return complete_activity(shared, item, outcome, true).await;
    }
    if run_unleased(shared, fast, item, &outcome).await {
        return None;
    }
    if waits_for_many(shared, &item.instance_id) {
        return complete_activity(shared, item, outcome, false).await;
    }
    if let Ok(permit) = shared.orchestration_limit.clone().try_acquire_owned() {
        match fast
            .lease_instance_for_result(item, &shared.id, shared.options.orchestration_lease)
            .await
        {
            Ok(Some(mut work)) => {
                let message = completion_message(shared, item, outcome.clone());
                // Not a stored message: its id matches no row.
                work.messages.push((u64::MAX, message));
                let committed = process_orchestration_with(shared, work, Some(item)).await;
                drop(permit);
                if !committed {
                    return complete_activity(shared, item, outcome, true).await;
                }
                return None;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "could not lease the instance for the result");
            }
        }
    }
    complete_activity(shared, item, outcome, true).await
}

/// True when the instance's cached execution waits for more than one durable call, so one
/// result alone is unlikely to move it.
pub(super) fn waits_for_many(shared: &Shared, instance_id: &str) -> bool {
    let cache = shared.cache.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entries
        .get(instance_id)
        .is_some_and(|(_, c)| outstanding(&c.exec) > 1)
}

/// How many durable calls the execution waits for.
fn outstanding(exec: &crate::replay::Execution) -> usize {
    let st = exec.ctx.state();
    st.actions.len().saturating_sub(st.completed.len())
}
