//! Durable entities: small pieces of state addressed by an id, changed by operations that
//! run one at a time. Here: the model (ids, the stored record, metadata) and the API an
//! operation sees ([`EntityContext`]). Running a batch of operations is the replay
//! engine's (`replay::entity`); the typed proxies are in [`typed_entity`](crate::typed_entity).
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
use crate::function::{BoxFuture, Outcome};
use crate::history::{EntityRequest, FailureDetails};
use crate::instance::random_id;
use crate::instance::{InstanceState, NewInstance};

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
        trace_parent: None,
    }
}
