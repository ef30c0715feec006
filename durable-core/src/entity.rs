//! Durable entities: small pieces of state addressed by an id, changed by operations that
//! run one at a time. In: entity requests (operations, lock requests, lock releases) queued
//! for an entity instance. Out: the entity's new record (state, lock, queue), answers to
//! calling orchestrations, and signals or orchestration starts the operations asked for.
//!
//! An entity is stored as an instance whose id is `@{name}@{key}` (the name lower-cased):
//! it is created by its first message and never finishes; its record lives in the
//! instance's `output` column.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::history::{
    EntityRequest, EventKind, FailureDetails, HistoryEvent, OrchestrationMessage, ReplyTo,
};
use crate::instance::{InstanceState, NewInstance, RuntimeStatus};
use crate::registry::{BoxFuture, Outcome, Registry};
use crate::store::{random_id, HistoryUpdate, OrchestrationCommit, OrchestrationWorkItem};

/// The id of an entity: a name (case-insensitive, stored lower-cased) and a key
/// (case-sensitive).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityId {
    /// The entity name, lower-cased.
    pub name: String,
    /// The key.
    pub key: String,
}

impl EntityId {
    /// An entity id; the name is lower-cased.
    pub fn new(name: &str, key: impl Into<String>) -> Self {
        Self {
            name: name.to_lowercase(),
            key: key.into(),
        }
    }

    /// Checks the name and key: a non-empty name without `@`, and a key without control
    /// characters, at most 200 bytes, other than `.` and `..` (which URLs resolve as
    /// relative paths, so the HTTP API could not name the entity).
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.is_empty()
            || self.name.contains('@')
            || self.name.chars().any(char::is_control)
        {
            return Err(Error::InvalidArgument(format!(
                "invalid entity name '{}': it must be non-empty, without '@' or control characters",
                self.name
            )));
        }
        if self.key.len() > 200
            || self.key == "."
            || self.key == ".."
            || self
                .key
                .chars()
                .any(|c| c.is_control() || matches!(c, '/' | '\\' | '#' | '?'))
        {
            return Err(Error::InvalidArgument(format!(
                "invalid entity key '{}': at most 200 bytes, not '.' or '..', no control characters, '/', '\\\\', '#' or '?'",
                self.key
            )));
        }
        Ok(())
    }

    /// The instance id that stores this entity: `@name@key`.
    pub fn instance_id(&self) -> String {
        format!("@{}@{}", self.name, self.key)
    }

    /// Parses an instance id made by [`instance_id`](Self::instance_id).
    pub fn from_instance_id(id: &str) -> Option<Self> {
        let rest = id.strip_prefix('@')?;
        let (name, key) = rest.split_once('@')?;
        Some(Self {
            name: name.to_string(),
            key: key.to_string(),
        })
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}@{}", self.name, self.key)
    }
}

/// True when an instance id names an entity.
pub fn is_entity_instance(instance_id: &str) -> bool {
    instance_id.starts_with('@')
}

/// What an entity keeps between operations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityRecord {
    /// The user state as JSON; None when the entity does not exist (never set or deleted).
    pub state: Option<String>,
    /// The orchestration holding this entity's lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_owner: Option<String>,
    /// Requests waiting for the lock to be released.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub queue: VecDeque<EntityRequest>,
    /// Owners that released (or abandoned) a lock they did not hold yet; a late lock
    /// request from them is passed on without locking.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub released: VecDeque<String>,
}

impl EntityRecord {
    /// Decodes the record stored in an entity instance's output.
    pub fn from_state(state: &InstanceState) -> Self {
        state
            .output
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }
}

/// An entity's metadata, as returned by client queries.
#[derive(Clone, Debug, PartialEq)]
pub struct EntityMetadata {
    /// The id.
    pub id: EntityId,
    /// When an operation last ran.
    pub last_operation_time: DateTime<Utc>,
    /// The state as JSON (when requested).
    pub state: Option<String>,
    /// The orchestration holding its lock.
    pub locked_by: Option<String>,
    /// Requests waiting for the lock.
    pub backlog: usize,
}

/// An operation delivered to a function-style entity.
#[derive(Clone, Debug)]
pub struct Operation {
    /// The operation name.
    pub name: String,
    /// The JSON input.
    pub input: Option<String>,
}

impl Operation {
    /// Decodes the input (absent = `null`).
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, FailureDetails> {
        crate::payload::decode_input(&format!("operation '{}'", self.name), self.input.as_deref())
    }
}

/// A signal an operation sends when it succeeds: target, operation, input, delivery time.
pub(crate) type PendingSignal = (EntityId, String, Option<String>, Option<DateTime<Utc>>);

#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub state: Option<String>,
    pub deleted: bool,
    pub signals: Vec<PendingSignal>,
    pub starts: Vec<(String, String, Option<String>)>,
}

/// The context of one entity operation: the entity's id and state, and signals or
/// orchestration starts to send when the operation succeeds.
pub struct EntityContext<S = serde_json::Value> {
    id: EntityId,
    shared: Arc<Mutex<Effects>>,
    _state: PhantomData<fn() -> S>,
}

impl<S> Clone for EntityContext<S> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            shared: self.shared.clone(),
            _state: PhantomData,
        }
    }
}

impl<S> fmt::Debug for EntityContext<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityContext")
            .field("id", &self.id)
            .finish()
    }
}

impl<S> EntityContext<S> {
    pub(crate) fn new(id: EntityId, state: Option<String>) -> Self {
        Self {
            id,
            shared: Arc::new(Mutex::new(Effects {
                state,
                ..Effects::default()
            })),
            _state: PhantomData,
        }
    }

    /// A context for calling an entity's operations directly, e.g. in a unit test.
    pub fn for_test(name: &str, key: &str) -> Self {
        Self::new(EntityId::new(name, key), None)
    }

    fn effects(&self) -> std::sync::MutexGuard<'_, Effects> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The same context viewed with another state type (used by generated code).
    pub fn retype<T>(self) -> EntityContext<T> {
        EntityContext {
            id: self.id,
            shared: self.shared,
            _state: PhantomData,
        }
    }

    pub(crate) fn into_effects(self) -> Effects {
        std::mem::take(&mut *self.effects())
    }

    /// This entity's id.
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// This entity's key.
    pub fn key(&self) -> &str {
        &self.id.key
    }

    /// True when the entity has state.
    pub fn has_state(&self) -> bool {
        self.effects().state.is_some()
    }

    /// Deletes the entity's state when the operation finishes (it stops existing until
    /// an operation sets state again).
    pub fn delete_state(&self) {
        let mut e = self.effects();
        e.state = None;
        e.deleted = true;
    }

    /// True when the current operation deleted the state.
    pub fn is_deleted(&self) -> bool {
        self.effects().deleted
    }

    /// The state as raw JSON.
    pub fn state_json(&self) -> Option<String> {
        self.effects().state.clone()
    }

    /// Signals an operation on another entity (sent when this operation succeeds).
    pub fn signal_entity(&self, id: &EntityId, operation: &str, input: &impl Serialize) {
        let input = serde_json::to_string(input).ok();
        self.effects()
            .signals
            .push((id.clone(), operation.to_string(), input, None));
    }

    /// Signals an operation on another entity for delivery at `at`.
    pub fn signal_entity_at(
        &self,
        id: &EntityId,
        operation: &str,
        input: &impl Serialize,
        at: DateTime<Utc>,
    ) {
        let input = serde_json::to_string(input).ok();
        self.effects()
            .signals
            .push((id.clone(), operation.to_string(), input, Some(at)));
    }

    /// Starts an orchestration (when this operation succeeds); returns its instance id.
    pub fn start_new_orchestration(&self, name: &str, input: &impl Serialize) -> String {
        let id = random_id();
        let input = serde_json::to_string(input).ok();
        self.effects()
            .starts
            .push((name.to_string(), id.clone(), input));
        id
    }
}

impl<S: Serialize + DeserializeOwned> EntityContext<S> {
    /// The state (None when the entity has none).
    pub fn get_state(&self) -> Result<Option<S>, FailureDetails> {
        self.effects()
            .state
            .as_deref()
            .map(|s| {
                serde_json::from_str(s).map_err(|e| {
                    FailureDetails::new(
                        "StateDecodeError",
                        format!("cannot decode the entity state: {e}"),
                    )
                })
            })
            .transpose()
    }

    /// The state, or `S::default()` when there is none.
    pub fn get_state_or_default(&self) -> Result<S, FailureDetails>
    where
        S: Default,
    {
        Ok(self.get_state()?.unwrap_or_default())
    }

    /// Replaces the state.
    pub fn set_state(&self, state: &S) {
        let mut e = self.effects();
        e.state = serde_json::to_string(state).ok();
        e.deleted = false;
    }
}

/// One operation to run, type-erased (what registrations receive).
#[derive(Debug)]
pub struct EntityInvocation {
    /// The entity.
    pub id: EntityId,
    /// The operation name.
    pub operation: String,
    /// JSON input.
    pub input: Option<String>,
    /// The state before the operation.
    pub state: Option<String>,
}

/// The type-erased entry point of an entity: runs one operation, returning the result
/// and the context (whose state is the new state).
pub type EntityFn = Arc<
    dyn Fn(EntityContext, Operation) -> BoxFuture<'static, (EntityContext, Outcome)> + Send + Sync,
>;

/// A typed entity, implemented by `#[entity]`: its durable name, its state type and the
/// generated proxies that make calls and signals type-checked.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an entity",
    note = "annotate the state type's `impl` block (or the entity function) with `#[durable_core::entity]`"
)]
pub trait Entity: 'static {
    /// The durable name (lower-case).
    const NAME: &'static str;
    /// The state type, as clients read it.
    type State: Serialize + DeserializeOwned;
    /// Typed calls from an orchestration: one method per operation.
    type Calls: From<(crate::context::OrchestrationContext, EntityId)>;
    /// Typed signals from a client: one async method per operation.
    type Signals: From<(crate::client::DurableClient, EntityId)>;
}

/// A client's handle to one entity of type `E` (see [`DurableClient::entity`](crate::DurableClient::entity)).
pub struct EntityHandle<E: Entity> {
    client: crate::client::DurableClient,
    id: EntityId,
    _e: PhantomData<fn() -> E>,
}

impl<E: Entity> fmt::Debug for EntityHandle<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl<E: Entity> EntityHandle<E> {
    pub(crate) fn new(client: crate::client::DurableClient, key: String) -> Self {
        Self {
            client,
            id: EntityId::new(E::NAME, key),
            _e: PhantomData,
        }
    }

    /// The entity id.
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// Typed signals: `client.entity::<Counter>("c").signal().add(5).await?`.
    pub fn signal(&self) -> E::Signals {
        E::Signals::from((self.client.clone(), self.id.clone()))
    }

    /// Reads the state (a possibly stale snapshot); None when the entity does not exist.
    pub async fn read_state(&self) -> Result<Option<E::State>, Error> {
        self.client.read_entity_state(&self.id).await
    }
}

/// Runs one entity episode: applies the work item's requests in order.
pub(crate) async fn run_entity_episode(
    registry: &Registry,
    item: &OrchestrationWorkItem,
    now: DateTime<Utc>,
) -> OrchestrationCommit {
    let mut commit = OrchestrationCommit {
        instance_id: item.instance_id.clone(),
        lease_token: item.lease_token.clone(),
        consumed: item.messages.iter().map(|(id, _)| *id).collect(),
        history: HistoryUpdate::Append(Vec::new()),
        state: None,
        activities: Vec::new(),
        messages: Vec::new(),
        new_instances: Vec::new(),
    };
    let Some(mut state) = item.state.clone() else {
        return commit;
    };
    let Some(id) = EntityId::from_instance_id(&item.instance_id) else {
        return commit;
    };
    let mut record = EntityRecord::from_state(&state);
    let mut ran = false;
    let mut pending: VecDeque<EntityRequest> = item
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
                ..
            } => {
                ran = true;
                run_operation(
                    registry,
                    &id,
                    &mut record,
                    operation,
                    input,
                    reply_to,
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
    commit: &mut OrchestrationCommit,
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
    commit: &mut OrchestrationCommit,
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

/// The instance that stores an entity (created on its first message).
pub(crate) fn new_entity_instance(id: &EntityId, now: DateTime<Utc>) -> NewInstance {
    NewInstance {
        instance_id: id.instance_id(),
        execution_id: random_id(),
        name: id.name.clone(),
        version: None,
        input: None,
        parent: None,
        created_at: now,
        start_at: None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_operation(
    registry: &Registry,
    id: &EntityId,
    record: &mut EntityRecord,
    operation: String,
    input: Option<String>,
    reply_to: Option<ReplyTo>,
    now: DateTime<Utc>,
    commit: &mut OrchestrationCommit,
) {
    let span = tracing::info_span!("entity_operation", entity = %id, operation = %operation);
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
                        crate::replay::panic_message(&e.into_panic())
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
    item: &OrchestrationWorkItem,
    failure: FailureDetails,
    now: DateTime<Utc>,
) -> OrchestrationCommit {
    let mut replies = Vec::new();
    let mut kept = item.clone();
    kept.messages.retain(|(_, m)| match &m.event.kind {
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
    let mut commit = run_entity_episode(registry, &kept, now).await;
    commit.consumed = item.messages.iter().map(|(id, _)| *id).collect();
    commit.messages.extend(replies);
    commit
}
