//! `DurableClient`: starts instances and manages them (status, events, terminate, suspend,
//! resume, rewind, restart, purge, list). Every operation validates its input first and
//! changes nothing when it fails.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::entity::{new_entity_instance, EntityId, EntityMetadata, EntityRecord};
use crate::error::Error;
use crate::history::{EntityRequest, EventKind, HistoryEvent, OrchestrationMessage};
use crate::instance::{InstanceFilter, InstanceState, NewInstance, Page, RuntimeStatus};
use crate::limits::DEFAULT_MAX_PAYLOAD_BYTES;
use crate::payload::check_json;
use crate::registry::{EntityEntry, Orchestrator, Registry};
use crate::store::{random_id, Store, StoreErrorKind};

/// The longest accepted instance id, in bytes.
pub const MAX_INSTANCE_ID_LEN: usize = 256;

/// Checks an instance id: 1 to 256 bytes, no control characters, none of `/ \ # ?`, and
/// not `.` or `..` (URLs normalize those path segments away, so no status URL could name
/// such an instance).
pub fn validate_instance_id(id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::InvalidArgument(
            "instance id must not be empty".into(),
        ));
    }
    if id == "." || id == ".." {
        return Err(Error::InvalidArgument(format!(
            "instance id must not be '{id}': URLs resolve it as a relative path"
        )));
    }
    if id.len() > MAX_INSTANCE_ID_LEN {
        return Err(Error::InvalidArgument(format!(
            "instance id is {} bytes, longer than {MAX_INSTANCE_ID_LEN}",
            id.len()
        )));
    }
    if id.starts_with('@') {
        return Err(Error::InvalidArgument(
            "instance id must not start with '@' (reserved for entities)".into(),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| c.is_control() || matches!(c, '/' | '\\' | '#' | '?'))
    {
        return Err(Error::InvalidArgument(format!(
            "instance id contains the character {c:?}, which is not allowed (no control characters, '/', '\\\\', '#' or '?')"
        )));
    }
    Ok(())
}

/// Options for starting an instance.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// The instance id (default: a random 128-bit id).
    pub instance_id: Option<String>,
    /// Do not run before this time.
    pub start_at: Option<DateTime<Utc>>,
    /// The orchestrator version (default: the newest registered, or the one the typed
    /// handle names).
    pub version: Option<String>,
    /// The trace the instance's spans continue (default: the [`trace::scope`] the start
    /// runs in, such as an HTTP request's `traceparent`).
    ///
    /// [`trace::scope`]: crate::trace::scope
    pub trace_parent: Option<crate::trace::TraceParent>,
}

impl StartOptions {
    /// Start with this instance id.
    pub fn with_instance_id(id: impl Into<String>) -> Self {
        Self {
            instance_id: Some(id.into()),
            ..Self::default()
        }
    }
}

/// What to include in a status query.
#[derive(Clone, Copy, Debug)]
pub struct StatusOptions {
    /// Include the input (default true).
    pub show_input: bool,
    /// Include the history of the current execution (default false).
    pub show_history: bool,
}

impl Default for StatusOptions {
    fn default() -> Self {
        Self {
            show_input: true,
            show_history: false,
        }
    }
}

/// An instance's status, as returned by [`DurableClient::get_status`].
#[derive(Clone, Debug, PartialEq)]
pub struct OrchestrationStatus {
    /// The stored state (input cleared unless asked for).
    pub state: InstanceState,
    /// The history, when asked for.
    pub history: Option<Vec<HistoryEvent>>,
}

impl OrchestrationStatus {
    /// The runtime status.
    pub fn status(&self) -> RuntimeStatus {
        self.state.status
    }

    /// Decodes the output as `T`.
    pub fn output<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        self.state
            .output
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
    }

    /// Decodes the custom status as `T`.
    pub fn custom_status<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        self.state
            .custom_status
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
    }
}

/// Starts and manages orchestration instances. Cheap to clone.
#[derive(Clone)]
pub struct DurableClient {
    store: Arc<dyn Store>,
    registry: Option<Arc<Registry>>,
    max_payload: usize,
}

impl std::fmt::Debug for DurableClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableClient").finish_non_exhaustive()
    }
}

impl DurableClient {
    /// A client over `store` that does not check orchestrator names (another process may
    /// host them).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            registry: None,
            max_payload: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    /// A client that refuses to start orchestrators missing from `registry`.
    pub fn with_registry(store: Arc<dyn Store>, registry: Arc<Registry>) -> Self {
        Self {
            store,
            registry: Some(registry),
            max_payload: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    /// Refuses inputs and event data over `limit` bytes with [`Error::PayloadTooLarge`]
    /// (default 16 MiB), before anything reaches the store.
    pub fn with_max_payload_bytes(mut self, limit: usize) -> Self {
        self.max_payload = limit;
        self
    }

    /// The payload limit this client checks.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload
    }

    /// Fails when `payload` is over the limit.
    fn check_payload(
        &self,
        what: impl FnOnce() -> String,
        payload: Option<&str>,
    ) -> Result<(), Error> {
        crate::limits::check_payload(what, payload, self.max_payload).map_err(Error::from)
    }

    /// The store clock's current time.
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.store.clock().now()
    }

    /// The store this client uses.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The registry this client checks names against, if any.
    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.registry.as_ref()
    }

    /// Starts an orchestration with typed input; returns the new instance id.
    pub async fn start<O: Orchestrator>(
        &self,
        _orchestrator: O,
        input: O::Input,
    ) -> Result<String, Error> {
        self.start_with::<O>(_orchestrator, input, StartOptions::default())
            .await
    }

    /// Starts an orchestration with options (instance id, start time).
    pub async fn start_with<O: Orchestrator>(
        &self,
        _orchestrator: O,
        input: O::Input,
        mut options: StartOptions,
    ) -> Result<String, Error> {
        let json = serde_json::to_string(&input)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialize the input: {e}")))?;
        if options.version.is_none() {
            options.version = O::VERSION.map(str::to_string);
        }
        self.start_by_name(O::NAME, Some(json), options).await
    }

    /// Starts an orchestration by name with JSON input. With a registry, the orchestrator
    /// must be registered and the input must decode as its input type (by the rule of
    /// [`payload`](crate::payload); an input that decodes only as a JSON string holding
    /// JSON is stored as that JSON); otherwise nothing is stored and the error names the
    /// orchestrator, the expected type and what did not match.
    pub async fn start_by_name(
        &self,
        name: &str,
        mut input_json: Option<String>,
        options: StartOptions,
    ) -> Result<String, Error> {
        let instance_id = match options.instance_id {
            Some(id) => {
                validate_instance_id(&id)?;
                id
            }
            None => random_id(),
        };
        if let Some(json) = &input_json {
            check_json(json)
                .map_err(|e| Error::InvalidArgument(format!("input is not valid JSON: {e}")))?;
        }
        let mut version = options.version.clone();
        if let Some(reg) = &self.registry {
            let entry =
                reg.orchestrator(name, version.as_deref())
                    .ok_or_else(|| Error::UnknownName {
                        kind: "orchestrator",
                        name: match &version {
                            Some(v) => format!("{name}' version '{v}"),
                            None => name.to_string(),
                        },
                    })?;
            version = entry.version.clone();
            match entry.input.check(input_json.as_deref()) {
                Ok(None) => {}
                Ok(Some(inner)) => input_json = Some(inner),
                Err(e) => {
                    return Err(Error::InvalidArgument(format!(
                        "input of orchestrator '{name}' does not match its input type {}: {e}",
                        entry.input.name()
                    )))
                }
            }
        }
        self.check_payload(
            || format!("input of instance '{instance_id}'"),
            input_json.as_deref(),
        )?;
        let now = self.now();
        self.store
            .create_instance(NewInstance {
                instance_id: instance_id.clone(),
                execution_id: random_id(),
                name: name.to_string(),
                version,
                input: input_json,
                parent: None,
                created_at: now,
                start_at: options.start_at,
                trace_parent: options
                    .trace_parent
                    .or_else(crate::trace::current)
                    .map(|t| t.to_string()),
            })
            .await?;
        tracing::debug!(instance_id = %instance_id, name, "instance started");
        Ok(instance_id)
    }

    /// The status of an instance, or None when it does not exist.
    pub async fn get_status(
        &self,
        instance_id: &str,
        options: StatusOptions,
    ) -> Result<Option<OrchestrationStatus>, Error> {
        let Some(mut state) = self.store.get_instance(instance_id).await? else {
            return Ok(None);
        };
        if !options.show_input {
            state.input = None;
        }
        let history = if options.show_history {
            Some(self.store.read_history(instance_id).await?)
        } else {
            None
        };
        Ok(Some(OrchestrationStatus { state, history }))
    }

    /// The latest heartbeat details of the instance's activity calls that are queued or
    /// running (`ActivityContext::heartbeat`), by sequence number: its progress. Details
    /// reach the store with the running worker's lease renewals, so they trail the
    /// activity by up to a third of `WorkerOptions::activity_lease`. Empty when there are
    /// none, and for stores that do not keep them.
    pub async fn activity_heartbeats(
        &self,
        instance_id: &str,
    ) -> Result<Vec<crate::store::ActivityHeartbeat>, Error> {
        Ok(self.store.activity_heartbeats(instance_id).await?)
    }

    /// The stored state of an instance (with input), or None.
    pub async fn get_state(&self, instance_id: &str) -> Result<Option<InstanceState>, Error> {
        Ok(self.store.get_instance(instance_id).await?)
    }

    async fn existing(&self, instance_id: &str) -> Result<InstanceState, Error> {
        self.store
            .get_instance(instance_id)
            .await?
            .ok_or_else(|| Error::InstanceNotFound(instance_id.to_string()))
    }

    /// Waits until the instance reaches a terminal status (Completed, Failed, Terminated)
    /// and returns its state; [`Error::Timeout`] when `timeout` passes first. Wakes on the
    /// store's change signal, not by polling in a loop.
    pub async fn wait_for_completion(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<InstanceState, Error> {
        let finished = |s: Option<&InstanceState>| s.is_none_or(|s| s.status.is_terminal());
        let state = self
            .store
            .wait_for_instance_until(instance_id, timeout, &finished)
            .await?
            .ok_or_else(|| Error::InstanceNotFound(instance_id.to_string()))?;
        if state.status.is_terminal() {
            return Ok(state);
        }
        Err(Error::Timeout(format!(
            "instance '{instance_id}' did not finish within {timeout:?}; it is {}",
            state.status
        )))
    }

    /// Waits for completion and decodes the output; a failed or terminated instance is an
    /// error carrying its failure message.
    pub async fn wait_for_output<T: DeserializeOwned>(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<T, Error> {
        let state = self.wait_for_completion(instance_id, timeout).await?;
        match state.status {
            RuntimeStatus::Completed => crate::payload::decode(state.output.as_deref())
                .map_err(|e| Error::InvalidArgument(format!("cannot decode the output: {e}"))),
            status => Err(Error::InvalidStatus {
                instance_id: instance_id.to_string(),
                status,
                operation: "read the output of",
            }),
        }
    }

    async fn send_control(
        &self,
        instance_id: &str,
        operation: &'static str,
        allowed: impl Fn(RuntimeStatus) -> bool,
        kind: EventKind,
    ) -> Result<(), Error> {
        let state = self.existing(instance_id).await?;
        if !allowed(state.status) {
            return Err(Error::InvalidStatus {
                instance_id: instance_id.to_string(),
                status: state.status,
                operation,
            });
        }
        let event = HistoryEvent::new(self.now(), kind);
        crate::limits::check_event(
            || format!("message to instance '{instance_id}'"),
            &event,
            self.max_payload,
        )?;
        self.store
            .send_message(OrchestrationMessage::new(instance_id, event))
            .await?;
        Ok(())
    }

    /// Raises an external event on a running instance. Events that arrive before the
    /// orchestrator waits are buffered.
    pub async fn raise_event(
        &self,
        instance_id: &str,
        name: &str,
        data: &impl Serialize,
    ) -> Result<(), Error> {
        let input = serde_json::to_string(data)
            .map_err(|e| Error::InvalidArgument(format!("cannot serialize the event data: {e}")))?;
        self.raise_event_json(instance_id, name, Some(input)).await
    }

    /// Raises an external event with a JSON payload.
    pub async fn raise_event_json(
        &self,
        instance_id: &str,
        name: &str,
        input: Option<String>,
    ) -> Result<(), Error> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "event name must not be empty".into(),
            ));
        }
        if let Some(json) = &input {
            check_json(json).map_err(|e| {
                Error::InvalidArgument(format!("event data is not valid JSON: {e}"))
            })?;
        }
        self.send_control(
            instance_id,
            "raise an event on",
            |s| !s.is_terminal(),
            EventKind::EventRaised {
                name: name.to_string(),
                input,
            },
        )
        .await
    }

    /// Terminates a running, pending or suspended instance.
    ///
    /// Parent-close policy: its episode that records the termination also terminates the
    /// sub-orchestrations it started that have not finished (and they theirs), except those
    /// started with [`ParentClosePolicy::Abandon`](crate::ParentClosePolicy::Abandon).
    pub async fn terminate(&self, instance_id: &str, reason: Option<&str>) -> Result<(), Error> {
        self.send_control(
            instance_id,
            "terminate",
            |s| !s.is_terminal(),
            EventKind::ExecutionTerminated {
                reason: reason.map(str::to_string),
            },
        )
        .await
    }

    /// Suspends a running instance: new events are kept until it is resumed.
    pub async fn suspend(&self, instance_id: &str, reason: Option<&str>) -> Result<(), Error> {
        self.send_control(
            instance_id,
            "suspend",
            |s| !s.is_terminal(),
            EventKind::ExecutionSuspended {
                reason: reason.map(str::to_string),
            },
        )
        .await
    }

    /// Resumes a suspended instance.
    pub async fn resume(&self, instance_id: &str, reason: Option<&str>) -> Result<(), Error> {
        self.send_control(
            instance_id,
            "resume",
            |s| !s.is_terminal(),
            EventKind::ExecutionResumed {
                reason: reason.map(str::to_string),
            },
        )
        .await
    }

    /// Rewinds a failed instance: its failed activities and sub-orchestrations run again
    /// and the orchestration continues from there.
    pub async fn rewind(&self, instance_id: &str, reason: Option<&str>) -> Result<(), Error> {
        self.send_control(
            instance_id,
            "rewind",
            |s| s == RuntimeStatus::Failed,
            EventKind::ExecutionRewound {
                reason: reason.map(str::to_string),
            },
        )
        .await
    }

    /// Starts the instance's orchestrator again with its original input, under a new id
    /// (`new_instance_id = true`) or the same one (the instance must have finished).
    /// Returns the id of the restarted instance.
    pub async fn restart(&self, instance_id: &str, new_instance_id: bool) -> Result<String, Error> {
        let state = self.existing(instance_id).await?;
        let id = if new_instance_id {
            None
        } else {
            Some(instance_id.to_string())
        };
        self.start_by_name(
            &state.name,
            state.input.clone(),
            StartOptions {
                instance_id: id,
                start_at: None,
                version: state.version.clone(),
                trace_parent: None,
            },
        )
        .await
    }

    /// Deletes a finished instance and its history. Returns false when it does not exist.
    ///
    /// Parent-close policy: the sub-orchestrations its current execution started go with
    /// it, finished or not (and theirs in turn), except those started with
    /// [`ParentClosePolicy::Abandon`](crate::ParentClosePolicy::Abandon) and ids that now
    /// belong to an instance of another parent.
    pub async fn purge(&self, instance_id: &str) -> Result<bool, Error> {
        let Some(state) = self.store.get_instance(instance_id).await? else {
            return Ok(false);
        };
        if !state.status.is_terminal() {
            return Err(Error::InvalidStatus {
                instance_id: instance_id.to_string(),
                status: state.status,
                operation: "purge",
            });
        }
        let mut pending = self.children_to_purge(instance_id).await?;
        let purged = self.store.purge_instance(instance_id).await?;
        let mut seen = std::collections::HashSet::from([instance_id.to_string()]);
        while let Some((parent, child)) = pending.pop() {
            if !seen.insert(child.clone()) {
                continue;
            }
            let Some(st) = self.store.get_instance(&child).await? else {
                continue;
            };
            if st.parent.as_ref().is_none_or(|p| p.instance_id != parent) {
                continue;
            }
            pending.extend(self.children_to_purge(&child).await?);
            self.store.purge_instance(&child).await?;
        }
        Ok(purged)
    }

    /// (parent, child) for each sub-orchestration the current execution of `parent`
    /// started without [`ParentClosePolicy::Abandon`](crate::ParentClosePolicy::Abandon).
    async fn children_to_purge(&self, parent: &str) -> Result<Vec<(String, String)>, Error> {
        Ok(self
            .store
            .read_history(parent)
            .await?
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::SubOrchestrationInstanceCreated {
                    instance_id,
                    abandon_on_parent_close: false,
                    ..
                } => Some((parent.to_string(), instance_id)),
                _ => None,
            })
            .collect())
    }

    /// Deletes every finished instance matching the filter; returns how many instances
    /// were deleted, children included, each once.
    ///
    /// Parent-close policy, as for [`purge`](Self::purge): each deleted instance takes the
    /// sub-orchestrations its current execution started with it (finished or not, matching
    /// the filter or not, and theirs in turn), except those started with
    /// [`ParentClosePolicy::Abandon`](crate::ParentClosePolicy::Abandon) and ids that now
    /// belong to an instance of another parent. The store finds them set-based, through an
    /// index of children by parent.
    pub async fn purge_instances(&self, filter: &InstanceFilter) -> Result<u64, Error> {
        Ok(self.store.purge_instances(filter).await?)
    }

    /// Signals an entity operation (one-way, delivered exactly once, in order per sender).
    /// The entity is created by its first operation.
    pub async fn signal_entity(
        &self,
        id: &EntityId,
        operation: &str,
        input: &impl Serialize,
    ) -> Result<(), Error> {
        let input = serde_json::to_string(input).map_err(|e| {
            Error::InvalidArgument(format!("cannot serialize the operation input: {e}"))
        })?;
        self.signal_entity_json(id, operation, Some(input), None)
            .await
    }

    /// Signals an entity operation for delivery at `at`.
    pub async fn signal_entity_at(
        &self,
        id: &EntityId,
        operation: &str,
        input: &impl Serialize,
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        let input = serde_json::to_string(input).map_err(|e| {
            Error::InvalidArgument(format!("cannot serialize the operation input: {e}"))
        })?;
        self.signal_entity_json(id, operation, Some(input), Some(at))
            .await
    }

    /// Signals an entity operation with a JSON input.
    pub async fn signal_entity_json(
        &self,
        id: &EntityId,
        operation: &str,
        input: Option<String>,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), Error> {
        id.validate()?;
        let mut input = input;
        if let Some(json) = &input {
            check_json(json)
                .map_err(|e| Error::InvalidArgument(format!("input is not valid JSON: {e}")))?;
        }
        if let Some(reg) = &self.registry {
            let entry = reg.entity(&id.name).ok_or_else(|| Error::UnknownName {
                kind: "entity",
                name: id.name.clone(),
            })?;
            if let Some(inner) = check_operation(entry, operation, input.as_deref())? {
                input = Some(inner);
            }
        }
        self.check_payload(
            || {
                format!(
                    "input of operation '{operation}' on entity '{}'",
                    id.instance_id()
                )
            },
            input.as_deref(),
        )?;
        let now = self.now();
        match self
            .store
            .create_instance(new_entity_instance(id, now))
            .await
        {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), StoreErrorKind::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let mut msg = OrchestrationMessage::new(
            id.instance_id(),
            HistoryEvent::new(
                now,
                EventKind::EntityRequest {
                    request: EntityRequest::Operation {
                        operation: operation.to_string(),
                        input,
                        reply_to: None,
                        lock_owner: None,
                        trace_parent: crate::trace::current().map(|t| t.to_string()),
                    },
                },
            ),
        );
        msg.visible_at = at;
        self.store.send_message(msg).await?;
        Ok(())
    }

    /// An entity's metadata and state (a possibly stale snapshot), or None when it does
    /// not exist (never created, or deleted).
    pub async fn get_entity(&self, id: &EntityId) -> Result<Option<EntityMetadata>, Error> {
        id.validate()?;
        let Some(state) = self.store.get_instance(&id.instance_id()).await? else {
            return Ok(None);
        };
        Ok(entity_metadata(&state, true))
    }

    /// Reads an entity's state as `T` (a possibly stale snapshot).
    pub async fn read_entity_state<T: DeserializeOwned>(
        &self,
        id: &EntityId,
    ) -> Result<Option<T>, Error> {
        let Some(meta) = self.get_entity(id).await? else {
            return Ok(None);
        };
        meta.state
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| Error::InvalidArgument(format!("cannot decode the entity state: {e}")))
    }

    /// Lists existing entities (of one name, or all), a page at a time.
    pub async fn list_entities(
        &self,
        name: Option<&str>,
        fetch_state: bool,
        page_size: usize,
        continuation_token: Option<&str>,
    ) -> Result<Page<EntityMetadata>, Error> {
        let prefix = match name {
            Some(n) => format!("@{}@", n.to_lowercase()),
            None => "@".to_string(),
        };
        let filter = InstanceFilter {
            instance_id_prefix: Some(prefix),
            ..InstanceFilter::default()
        };
        let page = self
            .store
            .list_instances(&filter, page_size, continuation_token)
            .await?;
        Ok(Page {
            items: page
                .items
                .iter()
                .filter_map(|s| entity_metadata(s, fetch_state))
                .collect(),
            continuation_token: page.continuation_token,
        })
    }

    /// Storage cleanup: removes entities that have no state, no lock and no waiting
    /// requests, and releases locks held by orchestrations that no longer run. Returns
    /// (entities removed, locks released).
    pub async fn clean_entity_storage(
        &self,
        remove_empty: bool,
        release_orphaned_locks: bool,
    ) -> Result<(u64, u64), Error> {
        let filter = InstanceFilter {
            instance_id_prefix: Some("@".into()),
            ..InstanceFilter::default()
        };
        let (mut removed, mut released) = (0, 0);
        let mut token: Option<String> = None;
        loop {
            let page = self
                .store
                .list_instances(&filter, 500, token.as_deref())
                .await?;
            for st in &page.items {
                let record = EntityRecord::from_state(st);
                if release_orphaned_locks {
                    if let Some(owner) = &record.lock_owner {
                        let alive = self
                            .store
                            .get_instance(owner)
                            .await?
                            .is_some_and(|o| !o.status.is_terminal());
                        if !alive {
                            self.store
                                .send_message(OrchestrationMessage::new(
                                    st.instance_id.clone(),
                                    HistoryEvent::new(
                                        self.now(),
                                        EventKind::EntityRequest {
                                            request: EntityRequest::Unlock {
                                                owner: owner.clone(),
                                            },
                                        },
                                    ),
                                ))
                                .await?;
                            released += 1;
                        }
                    }
                }
                if remove_empty
                    && record.state.is_none()
                    && record.lock_owner.is_none()
                    && record.queue.is_empty()
                    && self.store.purge_instance(&st.instance_id).await?
                {
                    removed += 1;
                }
            }
            match page.continuation_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        Ok((removed, released))
    }

    /// Lists instances matching the filter, a page at a time.
    pub async fn list_instances(
        &self,
        filter: &InstanceFilter,
        page_size: usize,
        continuation_token: Option<&str>,
    ) -> Result<Page<InstanceState>, Error> {
        Ok(self
            .store
            .list_instances(filter, page_size, continuation_token)
            .await?)
    }
}

/// Checks an operation against an entity whose operations are known: the name must be one
/// of them and the input must decode as its input type. `Some(inner)`: store `inner` (see
/// [`InputType::check`](crate::payload::InputType::check)).
fn check_operation(
    entry: &EntityEntry,
    operation: &str,
    input: Option<&str>,
) -> Result<Option<String>, Error> {
    let Some(ops) = entry.operations else {
        return Ok(None);
    };
    let Some(op) = ops.iter().find(|o| o.name == operation) else {
        let names: Vec<&str> = ops.iter().map(|o| o.name).collect();
        return Err(Error::InvalidArgument(format!(
            "entity '{}' has no operation '{operation}'; it has: {}",
            entry.name,
            names.join(", ")
        )));
    };
    let Some(ty) = op.input else {
        return Ok(None);
    };
    ty.check(input).map_err(|e| {
        Error::InvalidArgument(format!(
            "input of operation '{operation}' of entity '{}' does not match its input type {}: {e}",
            entry.name,
            ty.name()
        ))
    })
}

/// An entity instance's metadata; None when the entity has no state.
fn entity_metadata(state: &InstanceState, fetch_state: bool) -> Option<EntityMetadata> {
    let record = EntityRecord::from_state(state);
    record.state.as_ref()?;
    Some(EntityMetadata {
        id: EntityId::from_instance_id(&state.instance_id)?,
        last_operation_time: state.last_updated_at,
        state: if fetch_state { record.state } else { None },
        locked_by: record.lock_owner,
        backlog: record.queue.len(),
    })
}
