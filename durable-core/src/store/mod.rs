//! The `Store` trait: the one seam between the engine and persistence. In go instances,
//! messages, activity work items and episode commits; out come work items under leases,
//! histories and query results. Every provider passes the conformance suite
//! (`store::conformance`, behind the `testing` feature).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::history::{EventKind, FailureDetails, HistoryEvent, OrchestrationMessage};
use crate::instance::{InstanceFilter, InstanceState, NewInstance, Page, RuntimeStatus};

pub mod memory;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;

/// The default limit on one payload (input, output, event data, custom status): 16 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// The most messages one orchestration work item carries. Messages past it stay queued
/// for the next episode, so an episode and its commit stay bounded however many messages
/// (events, entity operations) pile up for one instance.
pub const MAX_MESSAGES_PER_WORK_ITEM: usize = 1000;

/// Errors a store reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The lease behind this lock token expired and was taken over by another worker;
    /// the commit was refused and nothing changed.
    LockLost,
    /// An instance with this id exists and has not finished.
    InstanceExists {
        /// The id.
        instance_id: String,
        /// Its current status.
        status: RuntimeStatus,
    },
    /// No instance with this id.
    NotFound(String),
    /// A payload is over the store's configured limit.
    PayloadTooLarge {
        /// What the payload is (e.g. "input of instance abc").
        what: String,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The request was malformed (e.g. a continuation token this store did not issue).
    Invalid(String),
    /// The backend failed (I/O, full disk, corruption, lost connection); says whether a
    /// retry can help and keeps the cause.
    Backend(BackendError),
}

impl StoreError {
    /// True when the same call may succeed if retried later without anyone acting on the
    /// store (busy, full disk, lost connection): callers answer "try again" rather than
    /// "failed".
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Backend(b) if b.is_retryable())
    }
}

/// A backend failure: what failed, whether a retry can help, and the cause.
#[derive(Clone, Debug)]
pub struct BackendError {
    message: String,
    retryable: bool,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    /// A failure that retrying will not cure (corruption, a bug, a closed store).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            source: None,
        }
    }

    /// A failure that may pass if the call is retried later (busy, full disk, lost
    /// connection).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            ..Self::permanent(message)
        }
    }

    /// Keeps `source` as the cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Puts what was being done in front of the message ("opening x.db: the disk is full").
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// Whether a retry can help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// What failed, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Equal when they say the same thing (the causes compared by their text).
impl PartialEq for BackendError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
            && self.retryable == other.retryable
            && self.source.as_ref().map(|s| s.to_string())
                == other.source.as_ref().map(|s| s.to_string())
    }
}

impl Eq for BackendError {}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::LockLost => f.write_str(
                "the work item's lease expired and another worker took it over; the commit was refused",
            ),
            StoreError::InstanceExists {
                instance_id,
                status,
            } => write!(
                f,
                "an instance with id '{instance_id}' already exists and is {status}"
            ),
            StoreError::NotFound(id) => write!(f, "no instance with id '{id}'"),
            StoreError::PayloadTooLarge { what, size, limit } => write!(
                f,
                "{what} is {size} bytes, over the limit of {limit} bytes"
            ),
            StoreError::Invalid(msg) => f.write_str(msg),
            StoreError::Backend(e) => write!(f, "store error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Backend(e) => std::error::Error::source(e),
            _ => None,
        }
    }
}

/// A shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// Fails with [`StoreError::PayloadTooLarge`] when `payload` is over `limit` bytes.
pub fn check_payload(
    what: impl FnOnce() -> String,
    payload: Option<&str>,
    limit: usize,
) -> StoreResult<()> {
    match payload {
        Some(p) if p.len() > limit => Err(StoreError::PayloadTooLarge {
            what: what(),
            size: p.len(),
            limit,
        }),
        _ => Ok(()),
    }
}

/// A batch of messages for one instance, held under a lease.
#[derive(Clone, Debug)]
pub struct OrchestrationWorkItem {
    /// The instance.
    pub instance_id: String,
    /// Proves the lease; commits and abandons must present it.
    pub lock_token: String,
    /// The messages, in arrival order, with their store ids.
    pub messages: Vec<(u64, OrchestrationMessage)>,
    /// The instance's stored state, or None when the instance does not exist.
    pub state: Option<InstanceState>,
    /// Number of events in the current execution's history.
    pub history_len: u64,
}

/// How an episode changes the history.
#[derive(Clone, Debug, PartialEq)]
pub enum HistoryUpdate {
    /// Append these events.
    Append(Vec<HistoryEvent>),
    /// Replace the whole history of the instance (continue-as-new, rewind).
    Replace(Vec<HistoryEvent>),
}

/// Everything one episode changes, committed atomically or not at all.
#[derive(Clone, Debug)]
pub struct OrchestrationCommit {
    /// The instance.
    pub instance_id: String,
    /// The lease's token; a stale token makes the commit fail with [`StoreError::LockLost`].
    pub lock_token: String,
    /// Ids of the messages this episode consumed.
    pub consumed: Vec<u64>,
    /// New history.
    pub history: HistoryUpdate,
    /// The instance's new state; None leaves the instance row as it is (or absent).
    pub state: Option<InstanceState>,
    /// Activities to schedule.
    pub activities: Vec<ActivityWorkItem>,
    /// Messages to this or other instances (timers carry `visible_at`). Messages to
    /// instances that do not exist are dropped.
    pub messages: Vec<OrchestrationMessage>,
    /// Sub-orchestrations to create. A child whose id belongs to a running instance is not
    /// created; its parent receives a `SubOrchestrationInstanceFailed` message instead.
    pub new_instances: Vec<NewInstance>,
}

/// An activity execution request, held under a lease once fetched.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivityWorkItem {
    /// Store-assigned id (0 before it is stored).
    pub id: u64,
    /// The orchestration instance waiting for the result.
    pub instance_id: String,
    /// Its execution.
    pub execution_id: String,
    /// The sequence number of the `TaskScheduled` event.
    pub task_scheduled_id: u64,
    /// Activity name.
    pub name: String,
    /// JSON input.
    pub input: Option<String>,
    /// Attempt number under a retry policy (1 for the first).
    pub attempt: u32,
    /// Lease token (empty before it is fetched).
    pub lock_token: String,
    /// How many times this item has been handed to a worker, this time included.
    pub dequeue_count: u32,
}

/// Wake-up signals a store fires when it commits, so idle workers and waiting clients
/// react at once instead of polling.
#[derive(Debug, Default)]
pub struct WorkSignals {
    /// Fired when orchestration messages become available, and also when a delayed
    /// message (timer) is stored, so idle dispatchers recompute their wake-up time.
    pub orchestrations: Notify,
    /// Fired when activity work items become available or a delayed retry is stored.
    pub activities: Notify,
    instance_waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

impl WorkSignals {
    /// A notifier fired when the stored state of `instance_id` changes.
    pub fn instance_waiter(&self, instance_id: &str) -> Arc<Notify> {
        let mut map = self
            .instance_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(instance_id.to_string()).or_default().clone()
    }

    /// Tells waiters of `instance_id` that its state changed.
    pub fn instance_changed(&self, instance_id: &str) {
        let notify = {
            let mut map = self
                .instance_waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            map.remove(instance_id)
        };
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }
}

/// Persistence for instances, histories, queues and leases.
///
/// Every method is atomic. Commits that present a lock token whose lease was taken over
/// fail with [`StoreError::LockLost`] and change nothing (fencing).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an instance and its `ExecutionStarted` message. An existing instance with the
    /// same id is replaced when it has finished, and refused with
    /// [`StoreError::InstanceExists`] otherwise.
    async fn create_instance(&self, instance: NewInstance) -> StoreResult<()>;

    /// Enqueues a message for an existing instance; [`StoreError::NotFound`] otherwise.
    async fn send_message(&self, message: OrchestrationMessage) -> StoreResult<()>;

    /// Leases the next instance with visible messages, with its visible messages in arrival
    /// order, at most [`MAX_MESSAGES_PER_WORK_ITEM`] of them.
    async fn fetch_orchestration_work_item(
        &self,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>>;

    /// Leases up to `max` instances with visible messages (each as
    /// [`fetch_orchestration_work_item`](Self::fetch_orchestration_work_item) does). Stores
    /// override this to take them in one round trip.
    async fn fetch_orchestration_work_items(
        &self,
        lease: Duration,
        max: usize,
    ) -> StoreResult<Vec<OrchestrationWorkItem>> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.fetch_orchestration_work_item(lease).await? {
                Some(item) => out.push(item),
                None => break,
            }
        }
        Ok(out)
    }

    /// Applies one episode's outcome and releases the lease.
    async fn commit_orchestration(&self, commit: OrchestrationCommit) -> StoreResult<()>;

    /// Commits like [`commit_orchestration`](Self::commit_orchestration) and, in the same
    /// transaction, leases up to `max_activities` of the activities the commit schedules to
    /// the caller, who runs them at once (they skip the activity queue's round trip). The
    /// default leases none.
    ///
    /// With `completed`, the commit also deletes that activity work item (fenced by its
    /// lock token: a lost lease fails the commit with [`StoreError::LockLost`]); the
    /// episode consumed its result in memory after
    /// [`lease_instance_for_result`](Self::lease_instance_for_result). A store that
    /// implements that method implements this one too; the default refuses `completed`.
    async fn commit_orchestration_and_lease(
        &self,
        commit: OrchestrationCommit,
        activity_lease: Duration,
        max_activities: usize,
        completed: Option<&ActivityWorkItem>,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let _ = (activity_lease, max_activities);
        if completed.is_some() {
            return Err(StoreError::Invalid(
                "this store does not take activity results inside a commit".into(),
            ));
        }
        self.commit_orchestration(commit).await.map(|()| Vec::new())
    }

    /// True when the store implements
    /// [`commit_unleased`](Self::commit_unleased).
    fn supports_unleased_commit(&self) -> bool {
        false
    }

    /// Commits an episode that ran on a cached execution without the instance's lease,
    /// consuming only the result of `completed` (an activity whose lease the caller holds
    /// and whose work item the commit deletes). It applies only when no one holds the
    /// instance, its current execution is `execution_id` with exactly `history_len`
    /// events, and no other message is waiting for it; otherwise it fails with
    /// [`StoreError::LockLost`] and nothing changes. Leases up to `max_activities` of the
    /// new activities like [`commit_orchestration_and_lease`](Self::commit_orchestration_and_lease).
    /// The default refuses.
    async fn commit_unleased(
        &self,
        commit: OrchestrationCommit,
        execution_id: &str,
        history_len: u64,
        completed: &ActivityWorkItem,
        activity_lease: Duration,
        max_activities: usize,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let _ = (
            commit,
            execution_id,
            history_len,
            completed,
            activity_lease,
            max_activities,
        );
        Err(StoreError::Invalid(
            "this store does not take unleased commits".into(),
        ))
    }

    /// Leases the instance an activity belongs to, when the activity's lease is still held
    /// and no one holds the instance, without recording the result: the caller runs the
    /// episode with the result and commits both at once with
    /// [`commit_orchestration_and_lease`](Self::commit_orchestration_and_lease), so a
    /// sequential step costs one durable commit. Lease bookkeeping only; nothing changes if
    /// the caller dies (the activity runs again after its lease lapses). The default
    /// declines (None), and the caller completes the activity as usual.
    async fn lease_instance_for_result(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        let _ = (item, lease);
        Ok(None)
    }

    /// Releases a lease without consuming anything; the messages become visible again
    /// after `delay`.
    async fn abandon_orchestration_work_item(
        &self,
        instance_id: &str,
        lock_token: &str,
        delay: Duration,
    ) -> StoreResult<()>;

    /// Leases up to `max` activity work items.
    async fn fetch_activity_work_items(
        &self,
        lease: Duration,
        max: usize,
    ) -> StoreResult<Vec<ActivityWorkItem>>;

    /// Deletes the activity work item and enqueues its result message, atomically.
    async fn complete_activity(
        &self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
    ) -> StoreResult<()>;

    /// Completes the activity like [`complete_activity`](Self::complete_activity) and, in
    /// the same transaction, leases its instance's work item (with every visible message,
    /// the result included) to the caller when no one holds the instance; the caller runs
    /// the episode at once. The default leases nothing.
    async fn complete_activity_and_fetch(
        &self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        let _ = lease;
        self.complete_activity(item, result).await.map(|()| None)
    }

    /// Extends an activity's lease.
    async fn renew_activity_lease(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
    ) -> StoreResult<()>;

    /// Releases an activity's lease; it becomes visible again after `delay`.
    async fn abandon_activity(&self, item: &ActivityWorkItem, delay: Duration) -> StoreResult<()>;

    /// The earliest time a delayed message or expired lease makes work visible, if any.
    async fn next_wakeup(&self) -> StoreResult<Option<DateTime<Utc>>>;

    /// The stored state of an instance.
    async fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceState>>;

    /// The history of the instance's current execution.
    async fn read_history(&self, instance_id: &str) -> StoreResult<Vec<HistoryEvent>>;

    /// Lists instances matching `filter`, ordered by creation time then id.
    async fn list_instances(
        &self,
        filter: &InstanceFilter,
        page_size: usize,
        continuation_token: Option<&str>,
    ) -> StoreResult<Page<InstanceState>>;

    /// Deletes an instance with its history and pending work. Returns false when absent.
    async fn purge_instance(&self, instance_id: &str) -> StoreResult<bool>;

    /// Deletes every finished instance matching `filter`; returns how many.
    async fn purge_instances(&self, filter: &InstanceFilter) -> StoreResult<u64>;

    /// The wake-up signals of this store.
    fn signals(&self) -> &WorkSignals;

    /// The largest payload this store accepts, in bytes.
    fn max_payload_bytes(&self) -> usize {
        DEFAULT_MAX_PAYLOAD_BYTES
    }
}

/// The `SubOrchestrationInstanceFailed` message a parent receives when its child could not be
/// created because an instance with the child's id is still running.
pub fn child_conflict_message(
    child: &NewInstance,
    existing: RuntimeStatus,
) -> Option<OrchestrationMessage> {
    let parent = child.parent.as_ref()?;
    let event = HistoryEvent::new(
        Utc::now(),
        EventKind::SubOrchestrationInstanceFailed {
            task_scheduled_id: parent.task_scheduled_id,
            failure: FailureDetails::new(
                "InstanceExists",
                format!(
                    "cannot start sub-orchestration: an instance with id '{}' already exists and is {existing}",
                    child.instance_id
                ),
            ),
        },
    );
    Some(
        OrchestrationMessage::new(parent.instance_id.clone(), event)
            .for_execution(parent.execution_id.clone()),
    )
}

/// Checks every payload of a commit against `limit`.
pub fn check_commit_payloads(commit: &OrchestrationCommit, limit: usize) -> StoreResult<()> {
    let id = &commit.instance_id;
    if let Some(state) = &commit.state {
        check_payload(
            || format!("output of instance '{id}'"),
            state.output.as_deref(),
            limit,
        )?;
        check_payload(
            || format!("custom status of instance '{id}'"),
            state.custom_status.as_deref(),
            limit,
        )?;
    }
    for a in &commit.activities {
        check_payload(
            || format!("input of activity '{}' in instance '{id}'", a.name),
            a.input.as_deref(),
            limit,
        )?;
    }
    for m in &commit.messages {
        check_payload(
            || format!("message to instance '{}'", m.instance_id),
            message_payload(&m.event),
            limit,
        )?;
    }
    for c in &commit.new_instances {
        check_payload(
            || format!("input of sub-orchestration '{}'", c.instance_id),
            c.input.as_deref(),
            limit,
        )?;
    }
    Ok(())
}

/// The JSON payload an event carries, if any.
pub fn message_payload(event: &HistoryEvent) -> Option<&str> {
    match &event.kind {
        EventKind::ExecutionStarted { input, .. }
        | EventKind::TaskScheduled { input, .. }
        | EventKind::EventRaised { input, .. }
        | EventKind::EventSent { input, .. }
        | EventKind::ContinueAsNew { input }
        | EventKind::SubOrchestrationInstanceCreated { input, .. } => input.as_deref(),
        EventKind::EntityOperationCalled { input, .. }
        | EventKind::EntityOperationSignaled { input, .. } => input.as_deref(),
        EventKind::EntityRequest {
            request: crate::history::EntityRequest::Operation { input, .. },
        } => input.as_deref(),
        EventKind::EntityOperationCompleted { result, .. }
        | EventKind::TaskCompleted { result, .. }
        | EventKind::SubOrchestrationInstanceCompleted { result, .. }
        | EventKind::ExecutionCompleted { result, .. } => result.as_deref(),
        _ => None,
    }
}

/// A random 128-bit token as 32 hex characters (instance ids, lock tokens).
pub fn random_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
