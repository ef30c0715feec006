//! The activity dispatcher: fetches activity work items (and takes those a commit leased
//! to this worker), runs them with lease renewal, records their results, and on shutdown
//! gives running ones a grace period before releasing them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::*;
use crate::activity::ActivityContext;
use crate::history::{EventKind, FailureDetails, HistoryEvent, OrchestrationMessage};
use crate::store::{ActivityCall, ActivityWorkItem, OrchestrationWorkItem, StoreErrorKind};

pub(super) fn spawn_activity(
    shared: &Arc<Shared>,
    running: &mut JoinSet<()>,
    item: ActivityWorkItem,
    permit: OwnedSemaphorePermit,
) {
    shared
        .running_activities
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            item.id,
            Running {
                item: item.clone(),
                cancel: None,
            },
        );
    let shared = shared.clone();
    running.spawn(async move {
        run_activity(&shared, item).await;
        drop(permit);
    });
}

pub(super) async fn activity_loop(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    mut direct: mpsc::UnboundedReceiver<(ActivityWorkItem, OwnedSemaphorePermit)>,
) {
    let limit = shared.activity_limit.clone();
    let mut running = JoinSet::new();
    let mut failures = 0u32;
    let mut idle = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        while running.try_join_next().is_some() {}
        while let Ok((item, permit)) = direct.try_recv() {
            spawn_activity(&shared, &mut running, item, permit);
        }
        let first = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore is never closed"),
            Some((item, permit)) = direct.recv() => {
                spawn_activity(&shared, &mut running, item, permit);
                continue;
            }
            _ = shutdown.changed() => continue,
        };
        let mut permits = vec![first];
        while let Ok(p) = limit.clone().try_acquire_owned() {
            permits.push(p);
            if permits.len() >= 64 {
                break;
            }
        }
        // After a fetch that found work, take what is ready without waiting; after one that
        // found none, wait for work holding one permit (the others stay free for activities
        // commits lease to this worker). Activities leased by commits arrive while the fetch
        // waits; they come with their permits and do not mean the queue has work, so the
        // fetch keeps waiting. Dropping a waiting fetch takes nothing, so shutdown may
        // interrupt it.
        let wait = if idle {
            permits.truncate(1);
            shared.options.idle_poll
        } else {
            Duration::ZERO
        };
        let fetch = shared.store.fetch_activity_work(
            &shared.id,
            shared.options.activity_lease,
            permits.len(),
            wait,
        );
        tokio::pin!(fetch);
        let fetched = loop {
            tokio::select! {
                r = &mut fetch => break Some(r),
                Some((item, permit)) = direct.recv() => {
                    spawn_activity(&shared, &mut running, item, permit);
                    while running.try_join_next().is_some() {}
                }
                _ = shutdown.changed() => break None,
            }
        };
        let Some(fetched) = fetched else {
            continue;
        };
        idle = matches!(&fetched, Ok(items) if items.is_empty());
        match fetched {
            Ok(items) if !items.is_empty() => {
                for item in items {
                    let permit = permits.pop().expect("one permit per fetched item");
                    spawn_activity(&shared, &mut running, item, permit);
                }
            }
            Ok(_) => drop(permits),
            Err(e) => {
                drop(permits);
                failures += 1;
                store_failed(&e, "fetching activity work failed; retrying", failures);
                tokio::select! {
                    _ = tokio::time::sleep(fetch_backoff(failures)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        }
        if failures > 0 {
            tracing::info!(failures, "fetching activity work works again");
            failures = 0;
        }
    }
    // Graceful shutdown: let running activities finish within the grace period, then
    // release the leases of those still running so another worker picks them up.
    // Activities leased by episodes still finishing are run too.
    let grace = shared.options.shutdown_grace;
    let mut done = shared.orchestrations_done.subscribe();
    let drained = tokio::time::timeout(grace, async {
        loop {
            while let Ok((item, permit)) = direct.try_recv() {
                spawn_activity(&shared, &mut running, item, permit);
            }
            if running.join_next().await.is_some() {
                continue;
            }
            if *done.borrow() && direct.is_empty() {
                break;
            }
            tokio::select! {
                _ = done.wait_for(|d| *d) => {}
                Some((item, permit)) = direct.recv() => {
                    spawn_activity(&shared, &mut running, item, permit);
                }
            }
        }
    })
    .await;
    if drained.is_err() {
        running.abort_all();
        while running.join_next().await.is_some() {}
        let left: Vec<ActivityWorkItem> = shared
            .running_activities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, r)| r.item)
            .collect();
        for item in left {
            let _ = shared.store.abandon_activity(&item, Duration::ZERO).await;
        }
    }
    while let Ok((item, _permit)) = direct.try_recv() {
        let _ = shared.store.abandon_activity(&item, Duration::ZERO).await;
    }
}

pub(super) async fn run_activity(shared: &Shared, item: ActivityWorkItem) {
    let span = tracing::info_span!(
        "activity",
        instance_id = %item.instance_id,
        name = %item.name,
        attempt = item.attempt,
        dequeue_count = item.dequeue_count,
        trace_id = tracing::field::Empty
    );
    crate::trace::attach(
        &span,
        crate::trace::stored(item.trace_parent.as_deref()).as_ref(),
    );
    async {
        let lease = shared.metrics.activity_item(&item, shared.now());
        let started = std::time::Instant::now();
        let max = shared.options.max_activity_dequeues;
        let outcome = match shared.registry.activity(&item.name) {
            _ if max > 0 && item.dequeue_count > max => Err(FailureDetails::new(
                "Poison",
                format!(
                    "activity '{}' was handed to a worker {} times without completing (the worker died or lost its lease each time); it is failed instead of run again",
                    item.name, item.dequeue_count
                ),
            )),
            None => Err(FailureDetails::new(
                "UnknownActivity",
                format!("activity '{}' is not registered in this worker", item.name),
            )),
            Some(entry) => {
                let (cancel, cancelled) = tokio::sync::watch::channel(false);
                if let Some(r) = shared
                    .running_activities
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(&item.id)
                {
                    r.cancel = Some(cancel.clone());
                }
                let (beat_tx, mut beats) = tokio::sync::watch::channel(crate::activity::Beat::default());
                let ctx = ActivityContext {
                    instance_id: item.instance_id.clone(),
                    execution_id: item.execution_id.clone(),
                    name: item.name.clone(),
                    seq: item.seq,
                    attempt: item.attempt,
                    dequeue_count: item.dequeue_count,
                    cancel: Some(cancelled),
                    beats: Some(std::sync::Arc::new(beat_tx)),
                    previous_details: item.heartbeat_details.clone(),
                    trace_parent: crate::trace::stored(item.trace_parent.as_deref()),
                };
                // The start-to-close deadline (the call's, else the activity's default) is
                // on the store's clock, looked at often; it and the heartbeat deadline count
                // from before the activity's code runs.
                let limit = item.start_to_close.or(entry.start_to_close);
                let started_at = shared.now();
                let deadline = limit.map(|d| crate::store::after(started_at, d));
                // The heartbeat deadline moves with each heartbeat.
                let beat_limit = item.heartbeat_timeout;
                let mut last_beat = started_at;
                let fut = (entry.invoke)(ctx, item.input.clone());
                // In the activity's span, so what it logs and calls is in its trace.
                let handle = tokio::spawn(fut.in_current_span());
                let renew_every = (shared.options.activity_lease / 3).max(Duration::from_millis(1));
                let poll = shared.options.activity_cancel_poll;
                let start = tokio::time::Instant::now();
                let mut renew = tokio::time::interval_at(start + renew_every, renew_every);
                renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let every = poll.max(Duration::from_millis(1));
                let mut check = tokio::time::interval_at(start + every, every);
                check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // The heartbeat details last stored with a lease renewal.
                let mut written: Option<String> = None;
                let step = limit
                    .unwrap_or(DEADLINE_CHECK)
                    .min(beat_limit.unwrap_or(DEADLINE_CHECK))
                    .min(DEADLINE_CHECK)
                    .max(Duration::from_millis(1));
                let mut timer = tokio::time::interval_at(start + step, step);
                timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tokio::pin!(handle);
                loop {
                    tokio::select! {
                        r = &mut handle => break match r {
                            Ok(outcome) => outcome,
                            Err(e) if e.is_panic() => {
                                let msg = crate::function::panic_message(&e.into_panic());
                                Err(FailureDetails::new("Panic", format!("activity '{}' panicked: {msg}", item.name)))
                            }
                            Err(_) => Err(FailureDetails::new("Canceled", format!("activity '{}' was cancelled", item.name))),
                        },
                        _ = renew.tick() => {
                            // The renewal carries the latest heartbeat details when they
                            // changed since the last write: at most one write per renewal,
                            // however often the activity beats.
                            let fresh = beats
                                .borrow()
                                .details
                                .clone()
                                .filter(|d| written.as_deref() != Some(d.as_str()));
                            let lease = shared.options.activity_lease;
                            let renewed = match &fresh {
                                Some(d) => shared.store.renew_activity_lease_with_heartbeat(&item, lease, d).await,
                                None => shared.store.renew_activity_lease(&item, lease).await,
                            };
                            if renewed.is_ok() && fresh.is_some() {
                                written = fresh;
                            }
                            if let Err(e) = renewed {
                                tracing::warn!(error = %e, "could not renew the activity lease");
                                if e.is_lease_lost() && !*cancel.borrow() {
                                    tracing::info!("the activity's lease was lost; telling it its result is no longer wanted");
                                    cancel.send_replace(true);
                                }
                            }
                        }
                        _ = timer.tick(), if deadline.is_some() || beat_limit.is_some() => {
                            let now = shared.now();
                            if beats.has_changed().unwrap_or(false) {
                                beats.borrow_and_update();
                                last_beat = now;
                            }
                            if let Some(h) = beat_limit.filter(|h| now >= crate::store::after(last_beat, *h)) {
                                tracing::warn!(timeout = ?h, "the activity went past its heartbeat timeout; stopping it");
                                cancel.send_replace(true);
                                handle.abort();
                                let mut failure = FailureDetails::new(
                                    "Timeout",
                                    format!(
                                        "activity '{}' sent no heartbeat for {h:?} (its heartbeat timeout; attempt {})",
                                        item.name, item.attempt
                                    ),
                                );
                                failure.details = beats.borrow().details.clone();
                                break Err(failure);
                            }
                            if deadline.is_some_and(|t| now >= t) {
                                tracing::warn!(timeout = ?limit, "the activity ran past its start-to-close timeout; stopping it");
                                cancel.send_replace(true);
                                handle.abort();
                                let mut failure = FailureDetails::new(
                                    "Timeout",
                                    format!(
                                        "activity '{}' did not finish within {:?} of starting (its start-to-close timeout; attempt {})",
                                        item.name,
                                        limit.unwrap_or_default(),
                                        item.attempt
                                    ),
                                );
                                failure.details = beats.borrow().details.clone();
                                break Err(failure);
                            }
                        }
                        _ = check.tick(), if !poll.is_zero() && !*cancel.borrow() => {
                            if !still_wanted(shared, &item).await {
                                tracing::info!("the instance no longer runs this execution; telling the activity its result is no longer wanted");
                                cancel.send_replace(true);
                            }
                        }
                    }
                }
            }
        };
        shared.metrics.activity(
            &shared.registry,
            &item.name,
            outcome.is_ok(),
            started.elapsed(),
        );
        // Boxed, here and below: inline, these futures would make every activity task several
        // kilobytes, copied on each move of the task.
        let next = Box::pin(finish_activity(shared, &item, outcome)).await;
        drop(lease);
        shared
            .running_activities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&item.id);
        // The result's episode, when this worker got its instance in the same transaction.
        if let Some((work, permit)) = next {
            Box::pin(process_orchestration(shared, work)).await;
            drop(permit);
        }
    }
    .instrument(span)
    .await
}

/// Tells the attempts of `calls` (activity calls of `instance_id`) running in this worker
/// that their results are no longer wanted: a committed episode cancelled them (their work
/// items are gone, so elsewhere the next lease renewal tells them).
pub(super) fn cancel_running(shared: &Shared, instance_id: &str, calls: &[ActivityCall]) {
    if calls.is_empty() {
        return;
    }
    let running = shared
        .running_activities
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for r in running.values() {
        if r.item.instance_id != instance_id || !calls.contains(&r.item.call()) {
            continue;
        }
        if let Some(cancel) = &r.cancel {
            tracing::info!(
                instance_id,
                "the orchestration no longer wants this activity's result; telling it"
            );
            cancel.send_replace(true);
        }
    }
}

/// How often a running activity with a start-to-close timeout compares the store's clock
/// with its deadline (at most; sooner for shorter timeouts).
const DEADLINE_CHECK: Duration = Duration::from_millis(50);

/// False when the instance no longer runs the execution that scheduled `item` (it
/// finished, continued as new or was purged). A failed read says nothing: true.
async fn still_wanted(shared: &Shared, item: &ActivityWorkItem) -> bool {
    match shared.store.get_instance(&item.instance_id).await {
        Ok(Some(st)) => st.execution_id == item.execution_id && !st.status.is_terminal(),
        Ok(None) => false,
        Err(_) => true,
    }
}

pub(super) fn completion_message(
    shared: &Shared,
    item: &ActivityWorkItem,
    outcome: Result<Option<String>, FailureDetails>,
) -> OrchestrationMessage {
    let kind = match outcome {
        Ok(result) => EventKind::TaskCompleted {
            seq: item.seq,
            result,
        },
        Err(failure) => EventKind::TaskFailed {
            seq: item.seq,
            failure,
        },
    };
    OrchestrationMessage::new(
        item.instance_id.clone(),
        HistoryEvent::new(shared.now(), kind),
    )
    .for_execution(item.execution_id.clone())
}

/// The outcome, or a `PayloadTooLarge` failure when the result is over the limit.
pub(super) fn within_limit(
    shared: &Shared,
    item: &ActivityWorkItem,
    outcome: Result<Option<String>, FailureDetails>,
) -> Result<Option<String>, FailureDetails> {
    if let Ok(result) = &outcome {
        if let Err(too_large) = crate::limits::check_payload(
            || format!("result of activity '{}'", item.name),
            result.as_deref(),
            shared.options.max_payload_bytes,
        ) {
            return Err(FailureDetails::new(
                "PayloadTooLarge",
                too_large.to_string(),
            ));
        }
    }
    outcome
}

/// Records an activity's outcome (within the payload limit), retrying retryable store
/// failures with backoff. With `fetch`, when an episode slot is free and the store has
/// fast paths, the instance is leased in the same transaction (if no one holds it) and
/// returned, so the caller runs the episode at once instead of waking the orchestration
/// dispatcher.
pub(super) async fn complete_activity(
    shared: &Shared,
    item: &ActivityWorkItem,
    outcome: Result<Option<String>, FailureDetails>,
    fetch: bool,
) -> Option<(OrchestrationWorkItem, OwnedSemaphorePermit)> {
    let fast = shared.store.fast_paths().filter(|_| fetch);
    let permit = match fast {
        Some(_) if !shared.shutting_down() => {
            shared.orchestration_limit.clone().try_acquire_owned().ok()
        }
        _ => None,
    };
    let message = completion_message(shared, item, within_limit(shared, item, outcome));
    let has_permit = permit.is_some();
    let started = std::time::Instant::now();
    let result = with_retries(
        shared,
        "recording an activity result failed; retrying",
        || {
            let message = message.clone();
            async move {
                match (fast, has_permit) {
                    (Some(fast), true) => {
                        fast.complete_activity_and_fetch(
                            item,
                            message,
                            &shared.id,
                            shared.options.orchestration_lease,
                        )
                        .await
                    }
                    _ => shared
                        .store
                        .complete_activity(item, message)
                        .await
                        .map(|()| None),
                }
            }
        },
    )
    .await;
    shared.metrics.commit(
        crate::metrics::CommitOp::ActivityResult,
        started.elapsed(),
        0,
    );
    match result {
        Ok(next) => return next.zip(permit),
        Err(e) if e.kind() == StoreErrorKind::LeaseLost => {
            tracing::debug!(
                "activity lease lost; its result was discarded (another worker ran it)"
            );
        }
        Err(e) => {
            store_failed(
                &e,
                "could not record the activity result; it will run again",
                1,
            );
            let _ = shared
                .store
                .abandon_activity(item, Duration::from_secs(1))
                .await;
        }
    }
    None
}
