//! Transient store failures: the worker retries calls that fail with a retryable error
//! (with backoff) and keeps the episode's outcome and the activity's result, so nothing runs
//! twice and nothing is lost. The failures come from a store wrapper that fails chosen calls.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use durable_core::instance::{InstanceFilter, InstanceState, NewInstance, Page};
use durable_core::store::{
    ActivityWorkItem, Clock, DirectLease, FastPaths, OrchestrationCommit, OrchestrationWorkItem,
    StoreError, StoreResult,
};
use durable_core::{
    ActivityError, HistoryEvent, MemoryStore, OrchestrationContext, OrchestrationError, Registry,
    RuntimeStatus, Store, Worker, WorkerId,
};

const WAIT: Duration = Duration::from_secs(20);

/// Which calls fail, and how many times each before it works.
#[derive(Default)]
struct Failures {
    commits: AtomicU32,
    completions: AtomicU32,
    /// Calls refused so far.
    injected: AtomicU32,
}

impl Failures {
    /// Fails the call with a retryable error while `left` is above zero.
    fn check(&self, left: &AtomicU32) -> StoreResult<()> {
        let took = left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if took.is_ok() {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::unavailable("injected: the database is busy"));
        }
        Ok(())
    }
}

/// A memory store whose commits and activity completions fail with a retryable error the
/// first times they are called; with `fast`, it offers the memory store's fast paths (which
/// fail the same way).
struct Flaky {
    inner: MemoryStore,
    failures: Failures,
    fast: bool,
}

#[async_trait]
impl Store for Flaky {
    async fn create_instance(&self, instance: NewInstance) -> StoreResult<()> {
        self.inner.create_instance(instance).await
    }
    async fn send_message(
        &self,
        message: durable_core::history::OrchestrationMessage,
    ) -> StoreResult<()> {
        self.inner.send_message(message).await
    }
    async fn fetch_orchestration_work(
        &self,
        owner: &WorkerId,
        lease: Duration,
        max: usize,
        wait: Duration,
    ) -> StoreResult<Vec<OrchestrationWorkItem>> {
        self.inner
            .fetch_orchestration_work(owner, lease, max, wait)
            .await
    }
    async fn commit_orchestration(&self, commit: OrchestrationCommit) -> StoreResult<()> {
        self.failures.check(&self.failures.commits)?;
        self.inner.commit_orchestration(commit).await
    }
    async fn abandon_orchestration(
        &self,
        instance_id: &str,
        lease_token: &str,
        delay: Duration,
    ) -> StoreResult<()> {
        self.inner
            .abandon_orchestration(instance_id, lease_token, delay)
            .await
    }
    async fn renew_orchestration_lease(
        &self,
        instance_id: &str,
        lease_token: &str,
        lease: Duration,
    ) -> StoreResult<()> {
        self.inner
            .renew_orchestration_lease(instance_id, lease_token, lease)
            .await
    }
    async fn fetch_activity_work(
        &self,
        owner: &WorkerId,
        lease: Duration,
        max: usize,
        wait: Duration,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        self.inner
            .fetch_activity_work(owner, lease, max, wait)
            .await
    }
    async fn complete_activity(
        &self,
        item: &ActivityWorkItem,
        result: durable_core::history::OrchestrationMessage,
    ) -> StoreResult<()> {
        self.failures.check(&self.failures.completions)?;
        self.inner.complete_activity(item, result).await
    }
    async fn abandon_activity(&self, item: &ActivityWorkItem, delay: Duration) -> StoreResult<()> {
        self.inner.abandon_activity(item, delay).await
    }
    async fn renew_activity_lease(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
    ) -> StoreResult<()> {
        self.inner.renew_activity_lease(item, lease).await
    }
    async fn release_leases(&self, owner: &WorkerId) -> StoreResult<u64> {
        self.inner.release_leases(owner).await
    }
    async fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceState>> {
        self.inner.get_instance(instance_id).await
    }
    async fn read_history(&self, instance_id: &str) -> StoreResult<Vec<HistoryEvent>> {
        self.inner.read_history(instance_id).await
    }
    async fn list_instances(
        &self,
        filter: &InstanceFilter,
        page_size: usize,
        continuation_token: Option<&str>,
    ) -> StoreResult<Page<InstanceState>> {
        self.inner
            .list_instances(filter, page_size, continuation_token)
            .await
    }
    async fn purge_instance(&self, instance_id: &str) -> StoreResult<bool> {
        self.inner.purge_instance(instance_id).await
    }
    async fn purge_instances(&self, filter: &InstanceFilter) -> StoreResult<u64> {
        self.inner.purge_instances(filter).await
    }
    async fn wait_for_instance(
        &self,
        instance_id: &str,
        seen: Option<&InstanceState>,
        timeout: Duration,
    ) -> StoreResult<Option<InstanceState>> {
        self.inner
            .wait_for_instance(instance_id, seen, timeout)
            .await
    }
    fn clock(&self) -> &dyn Clock {
        self.inner.clock()
    }
    fn fast_paths(&self) -> Option<&dyn FastPaths> {
        if self.fast {
            Some(self)
        } else {
            None
        }
    }
}

#[async_trait]
impl FastPaths for Flaky {
    async fn commit_orchestration_and_lease(
        &self,
        commit: OrchestrationCommit,
        completed: Option<&ActivityWorkItem>,
        direct: DirectLease<'_>,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        self.failures.check(&self.failures.commits)?;
        self.inner
            .commit_orchestration_and_lease(commit, completed, direct)
            .await
    }
    async fn commit_unleased(
        &self,
        commit: OrchestrationCommit,
        execution_id: &str,
        history_len: u64,
        completed: &ActivityWorkItem,
        direct: DirectLease<'_>,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        self.failures.check(&self.failures.commits)?;
        self.inner
            .commit_unleased(commit, execution_id, history_len, completed, direct)
            .await
    }
    async fn lease_instance_for_result(
        &self,
        item: &ActivityWorkItem,
        owner: &WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        self.inner
            .lease_instance_for_result(item, owner, lease)
            .await
    }
    async fn complete_activity_and_fetch(
        &self,
        item: &ActivityWorkItem,
        result: durable_core::history::OrchestrationMessage,
        owner: &WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        self.failures.check(&self.failures.completions)?;
        self.inner
            .complete_activity_and_fetch(item, result, owner, lease)
            .await
    }
}

/// Three steps, each an activity that counts its runs.
fn registry(runs: Arc<AtomicU32>) -> Registry {
    Registry::builder()
        .activity("step", move |_ctx, n: u32| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ActivityError>(n + 1)
            }
        })
        .orchestrator("steps", |ctx: OrchestrationContext, n: u32| async move {
            let mut v = n;
            for _ in 0..3 {
                v = ctx.call_activity_by_name::<u32>("step", &v).await?;
            }
            Ok::<_, OrchestrationError>(v)
        })
        .build()
        .unwrap()
}

async fn run(fast: bool, commits: u32, completions: u32, cache: usize, retries: u32) {
    let store = Arc::new(Flaky {
        inner: MemoryStore::new(),
        failures: Failures::default(),
        fast,
    });
    store.failures.commits.store(commits, Ordering::SeqCst);
    store
        .failures
        .completions
        .store(completions, Ordering::SeqCst);
    let runs = Arc::new(AtomicU32::new(0));
    let worker = Worker::builder(store.clone())
        .registry(registry(runs.clone()))
        .options(durable_core::WorkerOptions {
            store_retries: retries,
            cache_capacity: cache,
            ..Default::default()
        })
        .start()
        .unwrap();
    let client = worker.client();
    let id = client
        .start_by_name("steps", Some("0".into()), Default::default())
        .await
        .unwrap();
    let state = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(state.status, RuntimeStatus::Completed, "{state:?}");
    assert_eq!(state.output.as_deref(), Some("3"));
    // With fast paths, results mostly travel inside commits, so completions may never be
    // called; commits always are.
    let injected = store.failures.injected.load(Ordering::SeqCst);
    if fast {
        assert!(injected >= commits, "{injected} failures met");
    } else {
        assert_eq!(
            injected,
            commits + completions,
            "every injected failure was met"
        );
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "each activity ran once: no result and no episode was dropped and redone"
    );
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commits_are_retried_plain_paths() {
    run(false, 3, 0, 0, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_activity_completions_are_retried_plain_paths() {
    run(false, 0, 3, 0, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commits_and_completions_are_retried_with_fast_paths() {
    run(true, 3, 3, 100, 8).await;
}

/// A store that keeps failing: the worker gives up after its retries, abandons the work, and
/// the instance still completes once the store recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_episode_survives_a_store_outage_longer_than_the_retries() {
    // More failures than one call's retries: the first episode is abandoned and runs again
    // later.
    run(false, 4, 0, 0, 2).await;
}

/// A worker started with the id of a previous run takes back that run's leases at once
/// instead of waiting for them to lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_takes_back_its_own_leases() {
    let store = Arc::new(MemoryStore::new());
    let runs = Arc::new(AtomicU32::new(0));
    let id = WorkerId::new("worker-a");
    let client = durable_core::DurableClient::new(store.clone());
    let instance = client
        .start_by_name("steps", Some("0".into()), Default::default())
        .await
        .unwrap();
    // The previous run leased the instance for an hour and died.
    let held = store
        .fetch_orchestration_work(&id, Duration::from_secs(3600), 1, WAIT)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    let worker = Worker::builder(store.clone())
        .registry(registry(runs.clone()))
        .worker_id(id)
        .start()
        .unwrap();
    let state = client.wait_for_completion(&instance, WAIT).await.unwrap();
    assert_eq!(state.status, RuntimeStatus::Completed);
    worker.shutdown().await;
}
