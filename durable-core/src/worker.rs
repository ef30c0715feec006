//! The worker: an orchestration dispatcher and an activity dispatcher pulling work items
//! from the store under leases, with concurrency limits, an instance cache, lease renewal
//! for long activities, waiting fetches instead of polling, retries of transient store
//! failures, and graceful shutdown. The store's fast paths are used when it offers them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::activity::ActivityContext;
use crate::client::DurableClient;
use crate::error::Error;
use crate::history::{EventKind, FailureDetails, HistoryEvent, OrchestrationMessage};
use crate::instance::{InstanceState, RuntimeStatus};
use crate::limits::{PayloadTooLarge, DEFAULT_MAX_PAYLOAD_BYTES};
use crate::registry::Registry;
use crate::replay::{run_episode, Episode, Execution, Inbox, Source};
use crate::store::{
    ActivityWorkItem, DirectLease, HistoryUpdate, OrchestrationCommit, OrchestrationWorkItem,
    Store, StoreError, StoreErrorKind, WorkerId,
};

/// Tuning knobs of a [`Worker`].
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Episodes run at once.
    pub orchestration_concurrency: usize,
    /// Activities run at once.
    pub activity_concurrency: usize,
    /// Lease on an orchestration work item; a crashed worker's items come back after it.
    pub orchestration_lease: Duration,
    /// Lease on an activity; renewed every third of it while the activity runs.
    pub activity_lease: Duration,
    /// Live executions kept between episodes (0 disables the cache: every episode replays
    /// the full history).
    pub cache_capacity: usize,
    /// Longest a fetch waits for work before the dispatcher checks in again.
    pub idle_poll: Duration,
    /// How long shutdown waits for running activities before releasing them.
    pub shutdown_grace: Duration,
    /// An activity work item handed out more often than this without completing (its
    /// worker died or lost the lease every time) is a poison message: it fails its task
    /// with a `Poison` failure instead of running again. 0 disables the check.
    pub max_activity_dequeues: u32,
    /// The largest payload (output, custom status, activity input and result, event data)
    /// an episode may store; over it, the instance fails with `PayloadTooLarge` (or the
    /// activity's task does). Default 16 MiB.
    pub max_payload_bytes: usize,
    /// Attempts at a commit that fails with a retryable store error before the episode is
    /// abandoned to run again later.
    pub store_retries: u32,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            orchestration_concurrency: 64,
            activity_concurrency: 128,
            orchestration_lease: Duration::from_secs(30),
            activity_lease: Duration::from_secs(60),
            cache_capacity: 10_000,
            idle_poll: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            max_activity_dequeues: 20,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            store_retries: 8,
        }
    }
}

/// Builds and starts a [`Worker`].
pub struct WorkerBuilder {
    store: Arc<dyn Store>,
    registry: Option<Registry>,
    options: WorkerOptions,
    id: Option<WorkerId>,
}

impl WorkerBuilder {
    /// Uses this registry instead of everything registered by the macros.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Sets the options.
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets the id this worker records as the owner of its leases (default:
    /// [`WorkerId::from_env`]).
    pub fn worker_id(mut self, id: WorkerId) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the instance cache capacity (0 disables it).
    pub fn cache_capacity(mut self, n: usize) -> Self {
        self.options.cache_capacity = n;
        self
    }

    /// Starts the dispatchers on the current tokio runtime.
    pub fn start(self) -> Result<Worker, Error> {
        let registry = Arc::new(match self.registry {
            Some(r) => r,
            None => Registry::from_inventory()?,
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (direct_tx, direct_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            id: self.id.unwrap_or_else(WorkerId::from_env),
            store: self.store,
            registry,
            orchestration_limit: Arc::new(Semaphore::new(
                self.options.orchestration_concurrency.max(1),
            )),
            activity_limit: Arc::new(Semaphore::new(self.options.activity_concurrency.max(1))),
            options: self.options,
            cache: Mutex::new(Cache::default()),
            running_activities: Mutex::new(HashMap::new()),
            direct_activities: direct_tx,
            shutdown: shutdown_rx.clone(),
            orchestrations_done: watch::channel(false).0,
        });
        let mut tasks = JoinSet::new();
        let s2 = shared.clone();
        tasks.spawn(async move {
            // A restarted worker with the same id takes back what its last run held at
            // once, instead of waiting for those leases to lapse. Before any fetch, so it
            // cannot give back leases of this run.
            match s2.store.release_leases(&s2.id).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(released = n, worker_id = %s2.id, "took back the leases of this worker's previous run"),
                Err(e) => tracing::warn!(error = %e, "could not release the leases of this worker's previous run; they lapse instead"),
            }
            tokio::join!(
                orchestration_loop(s2.clone(), shutdown_rx.clone()),
                activity_loop(s2, shutdown_rx, direct_rx),
            );
        });
        Ok(Worker {
            shared,
            shutdown: shutdown_tx,
            tasks,
        })
    }
}

/// A running worker: dispatches orchestration episodes and activities until shut down.
pub struct Worker {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.shared.id)
            .field("options", &self.shared.options)
            .finish()
    }
}

impl Worker {
    /// A builder over `store`, using every orchestrator and activity the macros registered.
    pub fn builder(store: Arc<dyn Store>) -> WorkerBuilder {
        WorkerBuilder {
            store,
            registry: None,
            options: WorkerOptions::default(),
            id: None,
        }
    }

    /// A client bound to this worker's store and registry, with its payload limit.
    pub fn client(&self) -> DurableClient {
        DurableClient::with_registry(self.shared.store.clone(), self.shared.registry.clone())
            .with_max_payload_bytes(self.shared.options.max_payload_bytes)
    }

    /// The id this worker records as the owner of its leases.
    pub fn id(&self) -> &WorkerId {
        &self.shared.id
    }

    /// The registry in use.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.shared.registry
    }

    /// The store in use.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Stops fetching work, lets running episodes finish, waits up to the shutdown grace
    /// period for running activities, then gives back every lease this worker still holds.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        if let Err(e) = self.shared.store.release_leases(&self.shared.id).await {
            tracing::warn!(error = %e, "could not release this worker's leases; they lapse instead");
        }
    }
}

struct Shared {
    /// The owner recorded with this worker's leases.
    id: WorkerId,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    options: WorkerOptions,
    cache: Mutex<Cache>,
    running_activities: Mutex<HashMap<u64, ActivityWorkItem>>,
    /// Episodes run at once (dispatched or run straight after an activity).
    orchestration_limit: Arc<Semaphore>,
    /// Activities run at once (dispatched or leased by the commit that scheduled them).
    activity_limit: Arc<Semaphore>,
    /// Activities leased by an episode's commit, handed to the activity dispatcher with
    /// their permits.
    direct_activities: mpsc::UnboundedSender<(ActivityWorkItem, OwnedSemaphorePermit)>,
    shutdown: watch::Receiver<bool>,
    /// Set when the orchestration dispatcher has stopped and its episodes have finished.
    orchestrations_done: watch::Sender<bool>,
}

impl Shared {
    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The store clock's current time: episodes, failures and results are stamped with it.
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.store.clock().now()
    }

    /// Activities a commit leases to this worker: up to `max`.
    fn direct(&self, max: usize) -> DirectLease<'_> {
        DirectLease {
            owner: &self.id,
            lease: self.options.activity_lease,
            max,
        }
    }
}

/// Most activities one commit leases to this worker directly.
const DIRECT_ACTIVITIES: usize = 64;

/// Live executions by instance id, least recently used evicted first.
#[derive(Default)]
struct Cache {
    tick: u64,
    entries: HashMap<String, (u64, Cached)>,
    order: BTreeMap<u64, String>,
}

/// A live execution with the instance state its last commit stored.
struct Cached {
    exec: Execution,
    state: Option<InstanceState>,
}

impl Cache {
    fn take(&mut self, id: &str) -> Option<Cached> {
        let (tick, cached) = self.entries.remove(id)?;
        self.order.remove(&tick);
        Some(cached)
    }

    fn put(&mut self, id: String, exec: Cached, capacity: usize) {
        if capacity == 0 {
            return;
        }
        self.take(&id);
        while self.entries.len() >= capacity {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&victim);
        }
        self.tick += 1;
        self.order.insert(self.tick, id.clone());
        self.entries.insert(id, (self.tick, exec));
    }
}

/// Logs a store failure the worker retries, with its cause: a warning when a retry may pass
/// (busy, full disk), an error when someone must act. A fetch that keeps failing logs its
/// first failures and then every tenth, not every retry.
fn store_failed(e: &StoreError, what: &str, failures: u32) {
    if failures > 3 && !failures.is_multiple_of(10) {
        return;
    }
    if e.is_retryable() {
        tracing::warn!(error = %e, failures, "{what}");
    } else {
        tracing::error!(error = %e, failures, "{what}");
    }
}

/// The wait before fetching again after `failures` failed fetches in a row: 200 ms, doubling
/// up to 5 s.
fn fetch_backoff(failures: u32) -> Duration {
    Duration::from_millis(200 << failures.saturating_sub(1).min(5)).min(Duration::from_secs(5))
}

async fn orchestration_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let limit = shared.orchestration_limit.clone();
    let mut running = JoinSet::new();
    let mut failures = 0u32;
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
        // Dropping a waiting fetch takes nothing, so shutdown may interrupt it.
        let fetched = tokio::select! {
            r = shared.store.fetch_orchestration_work(
                &shared.id,
                shared.options.orchestration_lease,
                permits.len(),
                shared.options.idle_poll,
            ) => r,
            _ = shutdown.changed() => continue,
        };
        match fetched {
            Ok(items) if !items.is_empty() => {
                for item in items {
                    let permit = permits.pop().expect("one permit per fetched item");
                    let shared = shared.clone();
                    running.spawn(async move {
                        process_orchestration(&shared, item).await;
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

async fn process_orchestration(shared: &Shared, item: OrchestrationWorkItem) {
    process_orchestration_with(shared, item, None).await;
}

/// Runs and commits one episode; with `completed`, the episode's messages include that
/// activity's result (not yet stored) and the commit deletes the activity. True when the
/// episode was committed.
async fn process_orchestration_with(
    shared: &Shared,
    item: OrchestrationWorkItem,
    completed: Option<&ActivityWorkItem>,
) -> bool {
    let name = item
        .state
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let span = tracing::info_span!("episode", instance_id = %item.instance_id, name = %name);
    async {
        if crate::entity::is_entity_instance(&item.instance_id) {
            let episode = crate::replay::entity::run_entity_episode(
                &shared.registry,
                &inbox(&item),
                shared.now(),
            )
            .await;
            return commit_episode(shared, &item, commit_of(&item, episode), None, completed).await;
        }
        let source = match episode_source(shared, &item).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading history failed");
                let _ = shared
                    .store
                    .abandon_orchestration(
                        &item.instance_id,
                        &item.lease_token,
                        Duration::from_secs(1),
                    )
                    .await;
                return false;
            }
        };
        let registry = shared.registry.clone();
        let result = run_episode(&registry, &inbox(&item), source, shared.now());
        let commit = commit_of(&item, result.episode);
        commit_episode(shared, &item, commit, result.execution, completed).await
    }
    .instrument(span)
    .await
}

/// What the replay engine sees of a work item.
fn inbox(item: &OrchestrationWorkItem) -> Inbox<'_> {
    Inbox {
        instance_id: &item.instance_id,
        state: item.state.as_ref(),
        messages: &item.messages,
    }
}

/// The store commit of an episode run for `item`: fenced by its lease, consuming every
/// message it carried.
fn commit_of(item: &OrchestrationWorkItem, episode: Episode) -> OrchestrationCommit {
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
            })
            .collect(),
        messages: episode.messages,
        new_instances: episode.new_instances,
    }
}

/// Commits an episode; keeps the live execution in the cache when the commit succeeded.
/// Payloads over the limit fail the instance (or the entity batch's operations) instead;
/// retryable store failures are retried with backoff. True when the episode was committed.
async fn commit_episode(
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
    let fast = shared.store.fast_paths();
    let mut permits = match fast {
        Some(_) => activity_permits(shared, &commit),
        None => Vec::new(),
    };
    let committed = with_retries(shared, "committing an episode failed; retrying", || {
        let commit = commit.clone();
        let direct = shared.direct(permits.len());
        async move {
            match fast {
                Some(fast) if completed.is_some() || direct.max > 0 => {
                    fast.commit_orchestration_and_lease(commit, completed, direct)
                        .await
                }
                _ => shared
                    .store
                    .commit_orchestration(commit)
                    .await
                    .map(|()| Vec::new()),
            }
        }
    })
    .await;
    match committed {
        Ok(leased) => {
            // Cache first: the leased activities may finish at once and look for it.
            if let Some(exec) = execution {
                let mut cache = shared.cache.lock().unwrap_or_else(|e| e.into_inner());
                cache.put(
                    item.instance_id.clone(),
                    Cached { exec, state },
                    shared.options.cache_capacity,
                );
            }
            dispatch_leased(shared, leased, &mut permits);
            drop(permits);
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
            store_failed(&e, "commit failed; the episode runs again later", 1);
            let _ = shared
                .store
                .abandon_orchestration(&item.instance_id, &item.lease_token, Duration::from_secs(1))
                .await;
            false
        }
    }
}

/// An episode whose outcome is over the payload limit: the instance fails (an entity's
/// batch fails its operations) with a `PayloadTooLarge` failure.
async fn refuse_episode(shared: &Shared, item: &OrchestrationWorkItem, too_large: PayloadTooLarge) {
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

/// Runs `op` until it succeeds, fails for good, or [`WorkerOptions::store_retries`]
/// retryable failures have passed, waiting with backoff between attempts. The calls it
/// retries are fenced by leases, so a retry after the lease lapsed is refused, never
/// applied twice.
async fn with_retries<T, F, Fut>(shared: &Shared, what: &str, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut failures = 0u32;
    loop {
        match op().await {
            Err(e) if e.is_retryable() && failures < shared.options.store_retries => {
                failures += 1;
                store_failed(&e, what, failures);
                tokio::time::sleep(retry_backoff(failures)).await;
            }
            r => return r,
        }
    }
}

/// The wait before retrying a call after `failures` retryable failures in a row: 50 ms,
/// doubling up to 2 s.
fn retry_backoff(failures: u32) -> Duration {
    Duration::from_millis(50 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(2))
}

/// Permits for the activities a commit schedules: those get leased to this worker in the
/// same transaction and start at once, without a trip through the activity queue.
fn activity_permits(shared: &Shared, commit: &OrchestrationCommit) -> Vec<OwnedSemaphorePermit> {
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
fn dispatch_leased(
    shared: &Shared,
    leased: Vec<ActivityWorkItem>,
    permits: &mut Vec<OwnedSemaphorePermit>,
) {
    for item in leased {
        let permit = permits.pop().expect("one permit per leased activity");
        let _ = shared.direct_activities.send((item, permit));
    }
}

/// Runs the episode for an activity's result on the cached execution and commits it
/// without taking the instance's lease first (the store checks nobody else moved the
/// instance). True when committed; false leaves the result to be recorded as usual (the
/// execution, which may have advanced in memory, is dropped from the cache).
async fn run_unleased(
    shared: &Shared,
    fast: &dyn crate::store::FastPaths,
    item: &ActivityWorkItem,
    outcome: &Result<Option<String>, FailureDetails>,
) -> bool {
    let Ok(permit) = shared.orchestration_limit.clone().try_acquire_owned() else {
        return false;
    };
    let cached = shared
        .cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(&item.instance_id);
    let Some(Cached {
        exec,
        state: Some(state),
    }) = cached
    else {
        return false;
    };
    if exec.ctx.execution_id() != item.execution_id
        || state.execution_id != item.execution_id
        || state.status.is_terminal()
    {
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
    };
    let span = tracing::info_span!("episode", instance_id = %work.instance_id);
    let _enter = span.enter();
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
    let mut permits = activity_permits(shared, &commit);
    let execution_id = item.execution_id.clone();
    match fast
        .commit_unleased(
            commit,
            &execution_id,
            history_len,
            item,
            shared.direct(permits.len()),
        )
        .await
    {
        Ok(leased) => {
            if let Some(exec) = result.execution {
                shared.cache.lock().unwrap_or_else(|e| e.into_inner()).put(
                    item.instance_id.clone(),
                    Cached {
                        exec,
                        state: new_state,
                    },
                    shared.options.cache_capacity,
                );
            }
            dispatch_leased(shared, leased, &mut permits);
            drop(permit);
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "unleased commit refused; recording the result instead");
            false
        }
    }
}

/// Picks the cached execution when it is in sync with the store; otherwise loads history.
async fn episode_source(
    shared: &Shared,
    item: &OrchestrationWorkItem,
) -> Result<Option<Source>, StoreError> {
    let Some(state) = &item.state else {
        return Ok(None);
    };
    let cached = shared
        .cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(&item.instance_id);
    if let Some(Cached { exec, .. }) = cached {
        if exec.history_len == item.history_len && exec.ctx.execution_id() == state.execution_id {
            return Ok(Some(Source::Cached(exec)));
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
        return Ok(None);
    }
    Ok(Some(Source::History(
        shared.store.read_history(&item.instance_id).await?,
    )))
}

/// Commits a failure for an instance whose episode could not be stored.
async fn fail_instance(shared: &Shared, item: &OrchestrationWorkItem, failure: FailureDetails) {
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

fn spawn_activity(
    shared: &Arc<Shared>,
    running: &mut JoinSet<()>,
    item: ActivityWorkItem,
    permit: OwnedSemaphorePermit,
) {
    shared
        .running_activities
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(item.id, item.clone());
    let shared = shared.clone();
    running.spawn(async move {
        run_activity(&shared, item).await;
        drop(permit);
    });
}

async fn activity_loop(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    mut direct: mpsc::UnboundedReceiver<(ActivityWorkItem, OwnedSemaphorePermit)>,
) {
    let limit = shared.activity_limit.clone();
    let mut running = JoinSet::new();
    let mut failures = 0u32;
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
        // Activities leased by commits arrive while the fetch waits; they come with their
        // permits and do not mean the queue has work, so the fetch keeps waiting. Dropping a
        // waiting fetch takes nothing, so shutdown may interrupt it.
        let fetch = shared.store.fetch_activity_work(
            &shared.id,
            shared.options.activity_lease,
            permits.len(),
            shared.options.idle_poll,
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
            .map(|(_, v)| v)
            .collect();
        for item in left {
            let _ = shared.store.abandon_activity(&item, Duration::ZERO).await;
        }
    }
    while let Ok((item, _permit)) = direct.try_recv() {
        let _ = shared.store.abandon_activity(&item, Duration::ZERO).await;
    }
}

async fn run_activity(shared: &Shared, item: ActivityWorkItem) {
    let span = tracing::info_span!(
        "activity",
        instance_id = %item.instance_id,
        name = %item.name,
        attempt = item.attempt,
        dequeue_count = item.dequeue_count
    );
    async {
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
                let ctx = ActivityContext {
                    instance_id: item.instance_id.clone(),
                    execution_id: item.execution_id.clone(),
                    name: item.name.clone(),
                    seq: item.seq,
                    attempt: item.attempt,
                    dequeue_count: item.dequeue_count,
                };
                let fut = (entry.invoke)(ctx, item.input.clone());
                let handle = tokio::spawn(fut);
                let renew_every = shared.options.activity_lease / 3;
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
                        _ = tokio::time::sleep(renew_every) => {
                            if let Err(e) = shared.store.renew_activity_lease(&item, shared.options.activity_lease).await {
                                tracing::warn!(error = %e, "could not renew the activity lease");
                            }
                        }
                    }
                }
            }
        };
        let next = finish_activity(shared, &item, outcome).await;
        shared
            .running_activities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&item.id);
        // The result's episode, when this worker got its instance in the same transaction.
        if let Some((work, permit)) = next {
            process_orchestration(shared, work).await;
            drop(permit);
        }
    }
    .instrument(span)
    .await
}

fn completion_message(
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
fn within_limit(
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

/// Hands an activity's outcome on. When an episode slot is free and the store can lease the
/// instance while the activity's lease holds, the result goes straight into the next
/// episode and is stored by that episode's commit (one durable commit per step); if that
/// commit fails, the result is recorded as usual.
async fn finish_activity(
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
fn waits_for_many(shared: &Shared, instance_id: &str) -> bool {
    let cache = shared.cache.lock().unwrap_or_else(|e| e.into_inner());
    cache.entries.get(instance_id).is_some_and(|(_, c)| {
        let st = c.exec.ctx.state();
        st.actions.len().saturating_sub(st.completed.len()) > 1
    })
}

/// Records an activity's outcome (within the payload limit), retrying retryable store
/// failures with backoff. With `fetch`, when an episode slot is free and the store has
/// fast paths, the instance is leased in the same transaction (if no one holds it) and
/// returned, so the caller runs the episode at once instead of waking the orchestration
/// dispatcher.
async fn complete_activity(
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
