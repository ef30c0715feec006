//! The worker: an orchestration dispatcher (`orchestrations`) and an activity dispatcher
//! (`activities`) pulling work items from the store under leases, with concurrency
//! limits, an instance cache (`cache`), lease renewal for long activities, waiting
//! fetches instead of polling, retries of transient store failures, and graceful
//! shutdown. The store's fast paths (`fast_paths`) are used when it offers them. This
//! module holds the options, the builder, the running [`Worker`] and what the dispatchers
//! share.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::client::DurableClient;
use crate::error::Error;
use crate::instance::InstanceState;
use crate::limits::DEFAULT_MAX_PAYLOAD_BYTES;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{ActivityWorkItem, DirectLease, Store, StoreError, WorkerId};

mod activities;
mod cache;
mod fast_paths;
mod orchestrations;

use activities::{
    activity_loop, cancel_running, complete_activity, completion_message, within_limit,
};
use cache::{take_cached, try_take_cached, Cache, Cached, Taken};
use fast_paths::finish_activity;
use orchestrations::{
    activity_permits, commit_of, dispatch_leased, inbox, orchestration_loop, process_orchestration,
    process_orchestration_with,
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
    /// How often a running activity's worker checks that its result is still wanted (the
    /// instance still runs the execution that scheduled it), telling the activity through
    /// [`ActivityContext::cancelled`](crate::ActivityContext::cancelled) when not. One
    /// instance read per running activity per interval; `Duration::ZERO` disables the
    /// check (a lost lease still cancels). Default 2 s.
    pub activity_cancel_poll: Duration,
    /// How long shutdown waits for running activities before releasing them.
    pub shutdown_grace: Duration,
    /// An activity work item handed out more often than this without completing (its
    /// worker died or lost the lease every time) is a poison message: it fails its task
    /// with a `Poison` failure instead of running again. 0 disables the check.
    pub max_activity_dequeues: u32,
    /// An orchestration work item handed out more often than this since its instance's last
    /// commit (its episode took the worker down, hung past its lease or lost it every
    /// time) is a poison message: the instance fails with a `Poison` failure instead of
    /// running the episode again. Work items given back on purpose (a failed commit,
    /// shutdown) do not count. An entity's batch of operations handed out more often
    /// than this is not run either: its calls are answered with a `Poison` failure, its
    /// signals dropped (logged), and the entity's state stays as it was. 0 disables the
    /// check.
    pub max_orchestration_dequeues: u32,
    /// The largest payload (output, custom status, activity input and result, event data)
    /// an episode may store; over it, the instance fails with `PayloadTooLarge` (or the
    /// activity's task does). Default 16 MiB.
    pub max_payload_bytes: usize,
    /// Retries of recording an activity's result (or an instance's failure) that fails
    /// with a retryable store error, with backoff from 50 ms, before giving up (the
    /// activity then runs again). The result is kept meanwhile, so the activity does not
    /// run twice. An episode whose commit fails is not retried in place: it is abandoned
    /// and runs again from its stored messages shortly after.
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
            activity_cancel_poll: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            max_activity_dequeues: 20,
            max_orchestration_dequeues: 20,
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
    metrics: Option<Metrics>,
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

    /// Records into these metrics (default: the worker's own, see [`Worker::metrics`]).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
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
            cache_back: tokio::sync::Notify::new(),
            running_activities: Mutex::new(HashMap::new()),
            direct_activities: direct_tx,
            shutdown: shutdown_rx.clone(),
            orchestrations_done: watch::channel(false).0,
            metrics: self.metrics.unwrap_or_default(),
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
            metrics: None,
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

    /// The metrics this worker records (register them in a
    /// [`metrics::Registry`](crate::metrics::Registry) to export them).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
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
    /// Notified when an execution taken out of the cache comes back (or is dropped).
    cache_back: tokio::sync::Notify,
    /// The activities running here, by work item id.
    running_activities: Mutex<HashMap<u64, Running>>,
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
    metrics: Metrics,
}

/// An activity running in this worker.
struct Running {
    item: ActivityWorkItem,
    /// Tells its code that its result is no longer wanted; set once its code runs.
    cancel: Option<watch::Sender<bool>>,
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
