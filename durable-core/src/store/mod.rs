//! The `Store` trait: the one seam between the engine and persistence. In go instances,
//! messages, activity work items and episode commits; out come work items under leases,
//! histories and query results. Waiting (for work, for an instance to change) is part of
//! the contract, so a provider shared by several processes wakes every one of them. Fast
//! paths for one process's instance cache are the optional [`FastPaths`] capability. Every
//! provider passes the conformance suite (`store::conformance`, behind the `testing`
//! feature), every method and every capability.

use std::time::Duration;

use async_trait::async_trait;

use crate::history::{EventKind, FailureDetails, HistoryEvent, OrchestrationMessage};
use crate::instance::{InstanceFilter, InstanceState, NewInstance, Page, RuntimeStatus};

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod activity_row;
mod clock;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod episode;
mod error;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
mod signals;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;

pub use clock::{after, Clock, ClockSleep, ManualClock, SystemClock, WorkerId};
pub use error::{StoreError, StoreErrorKind, StoreResult};
pub use signals::LocalSignals;

pub use crate::history::{ActivityCall, HistoryUpdate};
pub use crate::instance::random_id;

/// The most messages one orchestration work item carries. Messages past it stay queued
/// for the next episode, so an episode and its commit stay bounded however many messages
/// (events, entity operations) pile up for one instance.
pub const MAX_MESSAGES_PER_WORK_ITEM: usize = 1000;

/// A batch of messages for one instance, held under a lease.
#[derive(Clone, Debug)]
pub struct OrchestrationWorkItem {
    /// The instance.
    pub instance_id: String,
    /// Proves the lease; commits and abandons must present it.
    pub lease_token: String,
    /// The messages, in arrival order, with their store ids.
    pub messages: Vec<(u64, OrchestrationMessage)>,
    /// The instance's stored state, or None when the instance does not exist.
    pub state: Option<InstanceState>,
    /// Number of events in the current execution's history.
    pub history_len: u64,
    /// How many times the instance has been handed to a worker since its last commit, this
    /// time included; hand-outs given back by
    /// [`abandon_orchestration`](Store::abandon_orchestration) do not count. Above 1, the
    /// workers it went to died or lost the lease before committing (a poison candidate).
    pub dequeue_count: u32,
}

/// Everything one episode changes, committed atomically or not at all.
#[derive(Clone, Debug)]
pub struct OrchestrationCommit {
    /// The instance.
    pub instance_id: String,
    /// The lease's token; a stale token makes the commit fail with [`StoreErrorKind::LeaseLost`].
    pub lease_token: String,
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
    /// Activity calls of this instance whose results the orchestration no longer wants
    /// (it dropped the call, e.g. the losing branch of `when_any`, or the call's
    /// schedule-to-close timeout beat the attempt). Their work items stored before this
    /// commit are deleted, queued or running alike: a queued one is never handed out, and
    /// a running one's lease renewals and result then fail with
    /// [`StoreErrorKind::LeaseLost`], which tells its worker to cancel it. Calls without a
    /// work item (finished, or never stored) are skipped.
    pub cancelled_activities: Vec<ActivityCall>,
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
    pub seq: u64,
    /// Activity name.
    pub name: String,
    /// JSON input.
    pub input: Option<String>,
    /// Attempt number under a retry policy (1 for the first).
    pub attempt: u32,
    /// Lease token (empty before it is fetched).
    pub lease_token: String,
    /// How many times this item has been handed to a worker, this time included.
    pub dequeue_count: u32,
    /// The start-to-close timeout of this attempt: the worker running it stops it and
    /// fails the task with a `Timeout` failure once this much store-clock time has passed
    /// since it started. None: the activity's default (`#[activity(timeout = "...")]`), if
    /// any.
    pub start_to_close: Option<Duration>,
    /// The heartbeat timeout of this attempt: the worker stops it and fails the task with
    /// a `Timeout` failure once this much store-clock time passes without a heartbeat
    /// (`ActivityContext::heartbeat`). None: no limit.
    pub heartbeat_timeout: Option<Duration>,
    /// The heartbeat details (JSON) the previous attempt of this call left when it timed
    /// out, for this one to resume from (`ActivityContext::last_heartbeat_details`); on a
    /// later hand-out of the same item, the latest details stored with
    /// [`Store::renew_activity_lease_with_heartbeat`] instead, when there are some.
    pub heartbeat_details: Option<String>,
    /// The W3C `traceparent` of the instance that scheduled it.
    pub trace_parent: Option<String>,
    /// When the store stored it (the store's clock), for the schedule-to-start delay; None
    /// before it is stored, and for items stored by a build that did not record it.
    pub scheduled_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ActivityWorkItem {
    /// The call this item is an attempt of.
    pub fn call(&self) -> ActivityCall {
        ActivityCall {
            execution_id: self.execution_id.clone(),
            seq: self.seq,
        }
    }
}

/// The latest heartbeat details of one activity call that is queued or running, from
/// [`Store::activity_heartbeats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivityHeartbeat {
    /// Activity name.
    pub name: String,
    /// The sequence number of its `TaskScheduled` event.
    pub seq: u64,
    /// Attempt number under a retry policy (1 for the first).
    pub attempt: u32,
    /// The details (JSON): those a run of this attempt stored with a lease renewal, else
    /// those the previous attempt left when it timed out.
    pub details: String,
}

/// Persistence for instances, histories, queues and leases.
///
/// Every method is atomic. Calls that present a lease token whose lease lapsed and was
/// taken over fail with [`StoreErrorKind::LeaseLost`] and change nothing (fencing). Lease
/// expiries and timer due times are read from [`clock`](Self::clock). Payload sizes are the
/// engine's business (`durable_core::limits`), not the store's.
///
/// Waiting is part of the contract: [`fetch_orchestration_work`](Self::fetch_orchestration_work),
/// [`fetch_activity_work`](Self::fetch_activity_work) and
/// [`wait_for_instance`](Self::wait_for_instance) wake for changes committed by any process
/// sharing the store (a local notify, `LISTEN/NOTIFY`, polling: the provider chooses).
/// Dropping one of those futures while it waits takes nothing; leases a dropped fetch took
/// anyway are given back by [`release_leases`](Self::release_leases).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an instance and its `ExecutionStarted` message. An existing instance with the
    /// same id is replaced when it has finished, and refused with
    /// [`StoreErrorKind::AlreadyExists`] otherwise.
    async fn create_instance(&self, instance: NewInstance) -> StoreResult<()>;

    /// Enqueues a message for an existing instance; [`StoreErrorKind::NotFound`] otherwise.
    /// A message with `visible_at` in the future is delivered then (durable timers).
    async fn send_message(&self, message: OrchestrationMessage) -> StoreResult<()>;

    /// Leases up to `max` instances with visible messages to `owner` for `lease`, each with
    /// its visible messages in arrival order (at most [`MAX_MESSAGES_PER_WORK_ITEM`]). When
    /// there are none, waits up to `wait` for some (new messages, a timer coming due, a
    /// lapsed lease) and returns an empty list if none came. `Duration::ZERO` does not wait.
    async fn fetch_orchestration_work(
        &self,
        owner: &WorkerId,
        lease: Duration,
        max: usize,
        wait: Duration,
    ) -> StoreResult<Vec<OrchestrationWorkItem>>;

    /// Applies one episode's outcome and releases the instance's lease, atomically; fenced
    /// by `commit.lease_token`.
    async fn commit_orchestration(&self, commit: OrchestrationCommit) -> StoreResult<()>;

    /// Releases an instance's lease without consuming anything; its messages become visible
    /// again after `delay`. The hand-out does not count in the next work item's
    /// `dequeue_count`. Fenced by `lease_token`.
    async fn abandon_orchestration(
        &self,
        instance_id: &str,
        lease_token: &str,
        delay: Duration,
    ) -> StoreResult<()>;

    /// Extends an instance's lease to `lease` from now. Fenced by `lease_token`.
    async fn renew_orchestration_lease(
        &self,
        instance_id: &str,
        lease_token: &str,
        lease: Duration,
    ) -> StoreResult<()>;

    /// Leases up to `max` visible activity work items to `owner` for `lease`; when there are
    /// none, waits up to `wait` for some like
    /// [`fetch_orchestration_work`](Self::fetch_orchestration_work).
    async fn fetch_activity_work(
        &self,
        owner: &WorkerId,
        lease: Duration,
        max: usize,
        wait: Duration,
    ) -> StoreResult<Vec<ActivityWorkItem>>;

    /// Deletes the activity work item and enqueues its result message, atomically. Fenced by
    /// `item.lease_token`.
    async fn complete_activity(
        &self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
    ) -> StoreResult<()>;

    /// Releases an activity's lease; it becomes visible again after `delay`. Fenced.
    async fn abandon_activity(&self, item: &ActivityWorkItem, delay: Duration) -> StoreResult<()>;

    /// Extends an activity's lease to `lease` from now. Fenced.
    async fn renew_activity_lease(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
    ) -> StoreResult<()>;

    /// Extends an activity's lease like [`renew_activity_lease`](Self::renew_activity_lease)
    /// and stores `details` (JSON) as the latest heartbeat details of its call, atomically.
    /// A later hand-out of the same work item (after a crash or a lost lease) carries them
    /// in [`ActivityWorkItem::heartbeat_details`], replacing those it was scheduled with.
    /// Fenced. The default only renews the lease (the details are not kept).
    async fn renew_activity_lease_with_heartbeat(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
        details: &str,
    ) -> StoreResult<()> {
        let _ = details;
        self.renew_activity_lease(item, lease).await
    }

    /// The activity calls of `instance_id` still queued or running that have heartbeat
    /// details ([`ActivityWorkItem::heartbeat_details`], or those a lease renewal stored),
    /// ordered by sequence number; for showing progress in the instance's status. The
    /// default returns none.
    async fn activity_heartbeats(&self, instance_id: &str) -> StoreResult<Vec<ActivityHeartbeat>> {
        let _ = instance_id;
        Ok(Vec::new())
    }

    /// Gives back every lease `owner` holds (instances and activities), making their work
    /// visible at once; returns how many. For graceful shutdown, and for a restarted worker
    /// reclaiming what its previous run held.
    async fn release_leases(&self, owner: &WorkerId) -> StoreResult<u64>;

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

    /// Deletes every finished instance matching `filter` and, by the parent-close policy,
    /// the sub-orchestrations their current executions started, finished or not and
    /// whether or not they match (and theirs in turn), except those started with
    /// [`ParentClosePolicy::Abandon`](crate::ParentClosePolicy::Abandon) and ids that now
    /// belong to an instance of another parent: what
    /// [`DurableClient::purge`](crate::DurableClient::purge) does for one instance. Returns
    /// how many instances it deleted, each counted once. A provider may delete them in
    /// several transactions (each one atomic, a parent with its children, so other work
    /// goes on between them); the count is exactly the instances it deleted.
    async fn purge_instances(&self, filter: &InstanceFilter) -> StoreResult<u64>;

    /// Waits until the stored state of `instance_id` differs from `seen` (the state the
    /// caller last read; None for "no such instance") or `timeout` passes, and returns the
    /// state then stored. Sees changes committed by any process sharing the store.
    async fn wait_for_instance(
        &self,
        instance_id: &str,
        seen: Option<&InstanceState>,
        timeout: Duration,
    ) -> StoreResult<Option<InstanceState>>;

    /// Waits until `done` holds for the stored state of `instance_id` or `timeout` passes,
    /// and returns the state then stored (check `done` again to tell which).
    async fn wait_for_instance_until(
        &self,
        instance_id: &str,
        timeout: Duration,
        done: &(dyn for<'s> Fn(Option<&'s InstanceState>) -> bool + Send + Sync),
    ) -> StoreResult<Option<InstanceState>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut state = self.get_instance(instance_id).await?;
        loop {
            let now = tokio::time::Instant::now();
            if done(state.as_ref()) || now >= deadline {
                return Ok(state);
            }
            state = self
                .wait_for_instance(instance_id, state.as_ref(), deadline - now)
                .await?;
        }
    }

    /// Flushes and releases what the store holds (files, connections). Later calls may
    /// fail. The default does nothing.
    async fn close(&self) -> StoreResult<()> {
        Ok(())
    }

    /// The clock lease expiries and timer due times are read from.
    fn clock(&self) -> &dyn Clock;

    /// The store's fast paths, when it offers them.
    fn fast_paths(&self) -> Option<&dyn FastPaths> {
        None
    }

    /// How much work is due now and not leased by any worker, for the
    /// `durable_pending_work_items` metric; `None` (the default) when the store does not
    /// count it.
    async fn pending_work(&self) -> StoreResult<Option<PendingWork>> {
        Ok(None)
    }
}

/// Work due now and waiting for a worker, from [`Store::pending_work`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingWork {
    /// Instances (orchestrations and entities) with a due message and no lease.
    pub orchestrations: u64,
    /// Activities due and not leased.
    pub activities: u64,
}

/// Where activities a commit leases straight to the committing worker go: up to `max` of
/// them, leased to `owner` for `lease`.
#[derive(Clone, Copy, Debug)]
pub struct DirectLease<'a> {
    /// The worker taking the leases.
    pub owner: &'a WorkerId,
    /// How long the leases last.
    pub lease: Duration,
    /// The most activities to lease (0: none).
    pub max: usize,
}

/// Optional capability: shortcuts for a worker that keeps executions in memory between
/// episodes, so a sequential step costs one durable commit instead of three. The worker
/// uses them when [`Store::fast_paths`] offers them and the plain trait otherwise; each has
/// conformance cases.
#[async_trait]
pub trait FastPaths: Send + Sync {
    /// Commits like [`Store::commit_orchestration`] and, in the same transaction, leases up
    /// to `direct.max` of the activities the commit schedules to `direct.owner`, who runs
    /// them at once (they skip the activity queue's round trip); returns them.
    ///
    /// With `completed`, the commit also deletes that activity work item (fenced by its
    /// lease token: a lost lease fails the whole commit with
    /// [`StoreErrorKind::LeaseLost`]); the episode consumed its result in memory after
    /// [`lease_instance_for_result`](Self::lease_instance_for_result).
    async fn commit_orchestration_and_lease(
        &self,
        commit: OrchestrationCommit,
        completed: Option<&ActivityWorkItem>,
        direct: DirectLease<'_>,
    ) -> StoreResult<Vec<ActivityWorkItem>>;

    /// Commits an episode that ran on a cached execution without the instance's lease,
    /// consuming only the result of `completed` (an activity whose lease the caller holds
    /// and whose work item the commit deletes). It applies only when no one holds the
    /// instance, its current execution is `execution_id` with exactly `history_len`
    /// events, and no other message is visible for it; otherwise it fails with
    /// [`StoreErrorKind::LeaseLost`] and nothing changes (compare-and-set). Leases new
    /// activities like [`commit_orchestration_and_lease`](Self::commit_orchestration_and_lease).
    async fn commit_unleased(
        &self,
        commit: OrchestrationCommit,
        execution_id: &str,
        history_len: u64,
        completed: &ActivityWorkItem,
        direct: DirectLease<'_>,
    ) -> StoreResult<Vec<ActivityWorkItem>>;

    /// Leases the instance an activity belongs to, to `owner` for `lease`, when the
    /// activity's lease is still held and no one holds the instance, without recording the
    /// result: the caller runs the episode with the result and commits both at once with
    /// [`commit_orchestration_and_lease`](Self::commit_orchestration_and_lease). Lease
    /// bookkeeping only; nothing changes if the caller dies (the activity runs again after
    /// its lease lapses). None when it cannot.
    async fn lease_instance_for_result(
        &self,
        item: &ActivityWorkItem,
        owner: &WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>>;

    /// Completes the activity like [`Store::complete_activity`] and, in the same
    /// transaction, leases its instance (with every visible message, the result included)
    /// to `owner` for `lease` when no one holds the instance; the caller runs the episode
    /// at once. None when the instance was not free.
    async fn complete_activity_and_fetch(
        &self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
        owner: &WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>>;
}

/// The least string greater than every string that starts with `prefix`, in byte order
/// (which is code point order for UTF-8): the prefix with its last character raised by
/// one, dropping trailing characters that cannot be raised. `None` when there is no such
/// bound (an empty prefix, or one made of U+10FFFF only). With it a prefix filter becomes
/// the index range `id >= prefix AND id < bound`.
pub(crate) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 + 1 {
            0xD800 => Some('\u{E000}'),
            n => char::from_u32(n),
        };
        if let Some(c) = next {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The instances a purge of `purged` takes with it by the parent-close policy: the
/// sub-orchestrations that the current execution of a purged instance started without
/// [`ParentClosePolicy::Abandon`](crate::ParentClosePolicy::Abandon), finished or not, and
/// theirs in turn; a child whose row names another parent (its id was reused) stays.
/// Returns each such instance once, none of `purged`.
///
/// `children(level)` gives `(child, parent)` for every stored instance whose parent is one
/// of `level` (a provider answers it from an index on the parent's id); `history(parent)`
/// gives a parent's current history, read only for parents that have children.
pub(crate) fn purged_with_parents<E>(
    purged: &[String],
    mut children: impl FnMut(&[String]) -> Result<Vec<(String, String)>, E>,
    mut history: impl FnMut(&str) -> Result<Vec<HistoryEvent>, E>,
) -> Result<Vec<String>, E> {
    let mut found = children(purged)?;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen: std::collections::HashSet<String> = purged.iter().cloned().collect();
    let mut out = Vec::new();
    loop {
        found.sort_by(|a, b| a.1.cmp(&b.1));
        let mut level = Vec::new();
        for group in found.chunk_by(|a, b| a.1 == b.1) {
            let history = history(&group[0].1)?;
            let started = started_children(&history);
            for (child, _) in group {
                if started.contains(child.as_str()) && seen.insert(child.clone()) {
                    level.push(child.clone());
                }
            }
        }
        if level.is_empty() {
            return Ok(out);
        }
        found = children(&level)?;
        out.append(&mut level);
    }
}

/// The ids of the sub-orchestrations `history` started that go with it when it is purged
/// (all but those started with `ParentClosePolicy::Abandon`).
pub(crate) fn started_children(history: &[HistoryEvent]) -> std::collections::HashSet<&str> {
    history
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::SubOrchestrationInstanceCreated {
                instance_id,
                abandon_on_parent_close: false,
                ..
            } => Some(instance_id.as_str()),
            _ => None,
        })
        .collect()
}

/// The `SubOrchestrationInstanceFailed` message a parent receives when its child could not be
/// created because an instance with the child's id is still running.
pub fn child_conflict_message(
    child: &NewInstance,
    existing: RuntimeStatus,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<OrchestrationMessage> {
    let parent = child.parent.as_ref()?;
    let event = HistoryEvent::new(
        now,
        EventKind::SubOrchestrationInstanceFailed {
            seq: parent.seq,
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

#[cfg(test)]
mod prefix_tests {
    use super::prefix_upper_bound;

    #[test]
    fn prefix_upper_bounds() {
        assert_eq!(prefix_upper_bound("abc").as_deref(), Some("abd"));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(
            prefix_upper_bound("a\u{D7FF}").as_deref(),
            Some("a\u{E000}")
        );
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("\u{10FFFF}\u{10FFFF}"), None);
        // Every string with the prefix sorts below the bound, in byte order.
        let bound = prefix_upper_bound("ab").unwrap();
        for s in ["ab", "ab\u{10FFFF}\u{10FFFF}", "abzzzz", "ab\u{7F}"] {
            assert!(s.as_bytes() < bound.as_bytes(), "{s:?}");
        }
        assert!("ac".as_bytes() >= bound.as_bytes());
    }
}
