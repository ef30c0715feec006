//! Entity batches: in, the requests queued for an entity instance (operations, lock
//! requests, lock releases) and its stored record; out, an [`Episode`]: the new record
//! (state, lock, queue), answers to calling orchestrations, and the signals and
//! orchestration starts the operations asked for. Operations run one at a time, in order.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

use super::{Episode, Inbox};
use crate::entity::{new_entity_instance, EntityContext, EntityId, EntityRecord, Operation};
use crate::history::{
    EntityRequest, EventKind, FailureDetails, HistoryEvent, OrchestrationMessage, ReplyTo,
};
use crate::instance::{random_id, NewInstance, RuntimeStatus};
use crate::registry::Registry;

/// Runs one entity episode: applies the work item's requests in order.
pub(crate) async fn run_entity_episode(
    registry: &Registry,
    inbox: &Inbox<'_>,
    now: DateTime<Utc>,
) -> Episode {
    let mut commit = Episode::default();
    let Some(mut state) = inbox.state.cloned() else {
        return commit;
    };
    let Some(id) = EntityId::from_instance_id(inbox.instance_id) else {
        return commit;
    };
    let mut record = EntityRecord::from_state(&state);
    let mut ran = false;
    let mut pending: VecDeque<EntityRequest> = inbox
        .messages
        .iter()
        .filter_map(|(_, m)| match &m.event.kind {
            EventKind::EntityRequest { request } => Some(request.clone()),
            _ => None,
        })
        .collect();
    while let Some(req) = pending.pop_front() {
        match req {
            EntityRequest::Operation { ref lock_owner, .. }
                if record.lock_owner.is_some() && *lock_owner != record.lock_owner =>
            {
                record.queue.push_back(req);
            }
            EntityRequest::Operation {
                operation,
                input,
                reply_to,
                trace_parent,
                ..
            } => {
                ran = true;
                run_operation(
                    registry,
                    &id,
                    &mut record,
                    Requested {
                        operation,
                        input,
                        reply_to,
                        trace_parent,
                    },
                    now,
                    &mut commit,
                )
                .await;
            }
            EntityRequest::Lock {
                owner,
                entity_ids,
                position,
            } => {
                if record.released.contains(&owner.instance_id) {
                    // The owner gave up before its request arrived: pass it on unlocked,
                    // so the rest of the chain sees it and nothing stays locked.
                    forward_lock(&owner, &entity_ids, position, now, &mut commit);
                } else if record.lock_owner.is_none()
                    || record.lock_owner.as_deref() == Some(&owner.instance_id)
                {
                    record.lock_owner = Some(owner.instance_id.clone());
                    forward_lock(&owner, &entity_ids, position, now, &mut commit);
                } else {
                    record.queue.push_back(EntityRequest::Lock {
                        owner,
                        entity_ids,
                        position,
                    });
                }
            }
            EntityRequest::Unlock { owner } => {
                if record.lock_owner.as_deref() == Some(&owner) {
                    record.lock_owner = None;
                    // Run what waited, in order, until someone takes the lock again.
                    let mut waiting = std::mem::take(&mut record.queue);
                    while let Some(r) = waiting.pop_back() {
                        pending.push_front(r);
                    }
                } else {
                    let before = record.queue.len();
                    record.queue.retain(|r| !matches!(r, EntityRequest::Lock { owner: o, .. } if o.instance_id == owner));
                    if record.queue.len() == before {
                        record.released.push_back(owner);
                        while record.released.len() > 64 {
                            record.released.pop_front();
                        }
                    }
                }
            }
        }
    }
    if ran {
        state.last_updated_at = now;
    }
    state.status = RuntimeStatus::Running;
    state.output = serde_json::to_string(&record).ok();
    commit.state = Some(state);
    commit
}

/// Passes a lock request to the next entity of the chain, or grants the critical section.
fn forward_lock(
    owner: &ReplyTo,
    entity_ids: &[String],
    position: usize,
    now: DateTime<Utc>,
    commit: &mut Episode,
) {
    match entity_ids.get(position + 1) {
        Some(next) => {
            let request = EntityRequest::Lock {
                owner: owner.clone(),
                entity_ids: entity_ids.to_vec(),
                position: position + 1,
            };
            push_entity_message(commit, next, request, None, now);
        }
        None => commit.messages.push(
            OrchestrationMessage::new(
                owner.instance_id.clone(),
                HistoryEvent::new(now, EventKind::EntityLockGranted { seq: owner.seq }),
            )
            .for_execution(owner.execution_id.clone()),
        ),
    }
}

/// Adds a message to an entity and makes sure the entity instance exists.
pub(crate) fn push_entity_message(
    commit: &mut Episode,
    entity_instance_id: &str,
    request: EntityRequest,
    at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) {
    if let Some(id) = EntityId::from_instance_id(entity_instance_id) {
        commit.new_instances.push(new_entity_instance(&id, now));
    }
    let mut msg = OrchestrationMessage::new(
        entity_instance_id.to_string(),
        HistoryEvent::new(now, EventKind::EntityRequest { request }),
    );
    msg.visible_at = at;
    commit.messages.push(msg);
}

/// An operation request, as the entity runs it.
struct Requested {
    operation: String,
    input: Option<String>,
    reply_to: Option<ReplyTo>,
    /// The sender's W3C `traceparent`.
    trace_parent: Option<String>,
}

async fn run_operation(
    registry: &Registry,
    id: &EntityId,
    record: &mut EntityRecord,
    request: Requested,
    now: DateTime<Utc>,
    commit: &mut Episode,
) {
    let Requested {
        operation,
        input,
        reply_to,
        trace_parent,
    } = request;
    let span = tracing::info_span!(
        "entity_operation",
        entity = %id,
        operation = %operation,
        trace_id = tracing::field::Empty
    );
    crate::trace::attach(
        &span,
        crate::trace::stored(trace_parent.as_deref()).as_ref(),
    );
    let _enter = span.enter();
    let outcome = match registry.entity(&id.name) {
        None => Err(FailureDetails::new(
            "UnknownEntity",
            format!("entity '{}' is not registered in this worker", id.name),
        )),
        Some(entry) => {
            let ctx = EntityContext::new(id.clone(), record.state.clone());
            let op = Operation {
                name: operation.clone(),
                input,
            };
            let fut = (entry.invoke)(ctx, op);
            drop(_enter);
            match tokio::spawn(fut).await {
                Ok((ctx, outcome)) => {
                    let effects = ctx.into_effects();
                    if outcome.is_ok() {
                        record.state = effects.state;
                        for (target, op, input, at) in effects.signals {
                            push_entity_message(
                                commit,
                                &target.instance_id(),
                                EntityRequest::Operation {
                                    operation: op,
                                    input,
                                    reply_to: None,
                                    lock_owner: None,
                                    trace_parent: trace_parent.clone(),
                                },
                                at,
                                now,
                            );
                        }
                        for (name, instance_id, input) in effects.starts {
                            commit.new_instances.push(NewInstance {
                                instance_id,
                                execution_id: random_id(),
                                name,
                                version: None,
                                input,
                                parent: None,
                                created_at: now,
                                start_at: None,
                                trace_parent: trace_parent.clone(),
                            });
                        }
                    }
                    outcome
                }
                Err(e) if e.is_panic() => Err(FailureDetails::new(
                    "Panic",
                    format!(
                        "operation '{operation}' of entity '{}' panicked: {}",
                        id.name,
                        crate::function::panic_message(&e.into_panic())
                    ),
                )),
                Err(_) => Err(FailureDetails::new("Canceled", "operation was cancelled")),
            }
        }
    };
    if let Err(f) = &outcome {
        tracing::debug!(failure = %f, "entity operation failed; state unchanged");
    }
    if let Some(reply) = reply_to {
        let kind = match outcome {
            Ok(result) => EventKind::EntityOperationCompleted {
                seq: reply.seq,
                result,
            },
            Err(failure) => EventKind::EntityOperationFailed {
                seq: reply.seq,
                failure,
            },
        };
        commit.messages.push(
            OrchestrationMessage::new(reply.instance_id.clone(), HistoryEvent::new(now, kind))
                .for_execution(reply.execution_id.clone()),
        );
    }
}

/// The fallback when an entity batch cannot be stored (a state over the payload limit):
/// its operations are dropped, calls are answered with `failure`, and lock requests and
/// releases are still applied.
pub(crate) async fn refuse_operations(
    registry: &Registry,
    inbox: &Inbox<'_>,
    failure: FailureDetails,
    now: DateTime<Utc>,
) -> Episode {
    let mut replies = Vec::new();
    let mut kept: Vec<(u64, OrchestrationMessage)> = inbox.messages.to_vec();
    kept.retain(|(_, m)| match &m.event.kind {
        EventKind::EntityRequest {
            request: EntityRequest::Operation { reply_to, .. },
        } => {
            if let Some(r) = reply_to {
                replies.push(
                    OrchestrationMessage::new(
                        r.instance_id.clone(),
                        HistoryEvent::new(
                            now,
                            EventKind::EntityOperationFailed {
                                seq: r.seq,
                                failure: failure.clone(),
                            },
                        ),
                    )
                    .for_execution(r.execution_id.clone()),
                );
            }
            false
        }
        _ => true,
    });
    let kept = Inbox {
        messages: &kept,
        ..*inbox
    };
    let mut commit = run_entity_episode(registry, &kept, now).await;
    commit.messages.extend(replies);
    commit
}
