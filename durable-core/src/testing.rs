//! Testing workflows in virtual time (behind the `testing` feature).
//!
//! [`TestEnv`] runs the registered functions on a [`MemoryStore`] whose [`ManualClock`]
//! moves only when the test says so: a workflow that waits seven days for an approval is
//! tested in milliseconds. Durable timers fire when the test advances time
//! ([`TestEnv::advance`]) or skips to the next timer once the engine is idle
//! ([`TestEnv::skip_to_next_timer`], [`TestEnv::run_until_finished`]); activities can be
//! replaced per name with closures ([`TestEnvBuilder::activity`]) for orchestration unit
//! tests; status, custom status and history are read back directly.
//!
//! ```
//! use std::time::Duration;
//! use durable_core::testing::TestEnv;
//! use durable_core::{Registry, RuntimeStatus};
//!
//! # async fn run() -> Result<(), durable_core::Error> {
//! let registry = Registry::builder()
//!     .orchestrator("remind", |ctx: durable_core::OrchestrationContext, days: u64| async move {
//!         ctx.create_timer(Duration::from_secs(days * 86_400)).await;
//!         ctx.call_activity_by_name::<String>("send", &"reminder").await
//!     })
//!     .activity("send", |_ctx, what: String| async move { Ok::<_, String>(format!("sent {what}")) })
//!     .build()?;
//! let env = TestEnv::builder().registry(registry).start()?;
//! let id = env.client().start_by_name("remind", Some("7".into()), Default::default()).await?;
//! let started = env.now();
//! let done = env.run_until_finished(&id, Duration::from_secs(30 * 86_400)).await?;
//! assert_eq!(done.status(), RuntimeStatus::Completed);
//! assert_eq!(done.output::<String>().unwrap().as_deref(), Some("sent reminder"));
//! assert_eq!((env.now() - started).num_days(), 7);
//! env.shutdown().await;
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```
//!
//! A host (or any other code) on its own worker can be driven the same way through
//! [`VirtualTime`]: give it [`VirtualTime::store`] and move time with the same calls.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::de::DeserializeOwned;

use crate::activity::ActivityContext;
use crate::client::{DurableClient, OrchestrationStatus, StatusOptions};
use crate::error::Error;
use crate::history::HistoryEvent;
use crate::registry::{activity_entry, ActivityEntry, Registry, TaskOutcome};
use crate::store::memory::MemoryStore;
use crate::store::{Clock, ManualClock, Store};
use crate::worker::{Worker, WorkerOptions};

/// How long (real time) waiting for the engine to go idle may take before it is reported
/// as an error: a workflow that never settles (an activity that hangs) fails the test
/// instead of hanging it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A memory store on a manual clock, and the calls that move that clock the way a running
/// system would experience time: timer by timer, each once the engine has done everything
/// it could before it.
#[derive(Clone, Debug)]
pub struct VirtualTime {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
}

impl Default for VirtualTime {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtualTime {
    /// Virtual time starting at 2025-01-06 09:00 UTC (a Monday morning), so tests are
    /// reproducible.
    pub fn new() -> Self {
        let start = Utc
            .with_ymd_and_hms(2025, 1, 6, 9, 0, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        Self::starting_at(start)
    }

    /// Virtual time starting at `start`.
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        let clock = Arc::new(ManualClock::new(start));
        let store = Arc::new(MemoryStore::with_clock(clock.clone()));
        Self { store, clock }
    }

    /// The memory store reading this virtual time; give it to a worker or a host.
    pub fn store(&self) -> Arc<MemoryStore> {
        self.store.clone()
    }

    /// The clock itself.
    pub fn clock(&self) -> Arc<ManualClock> {
        self.clock.clone()
    }

    /// The current virtual time.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// When the next durable timer (or delayed retry) comes due, if any is pending.
    pub fn next_timer(&self) -> Option<DateTime<Utc>> {
        self.store.pending().next_due
    }

    /// Waits (real time, up to [`IDLE_TIMEOUT`]) until no work is visible or held: every
    /// episode and activity that could run at the current virtual time has run. Fails with
    /// [`Error::Timeout`] if that does not happen.
    pub async fn idle(&self) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
        // Idle must hold on two reads in a row a little apart: a worker that just fetched
        // work holds its lease, but one about to fetch sees visible work either way.
        let mut quiet = 0;
        loop {
            if self.store.pending().busy {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet >= 2 {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "the engine did not go idle within {IDLE_TIMEOUT:?} (an activity that never finishes?)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Moves virtual time forward by `by`, firing every timer due on the way in order: the
    /// clock stops at each one and the engine runs what it woke (which may start new timers
    /// inside the span) before time moves on. Returns how many times the clock stopped at a
    /// timer.
    pub async fn advance(&self, by: Duration) -> Result<usize, Error> {
        let target = crate::store::after(self.now(), by);
        let mut fired = 0;
        loop {
            self.idle().await?;
            match self.next_timer() {
                Some(t) if t <= target => {
                    self.clock.set(t.max(self.now()));
                    fired += 1;
                }
                _ => {
                    self.clock.set(target);
                    self.idle().await?;
                    return Ok(fired);
                }
            }
        }
    }

    /// Once the engine is idle, moves virtual time to the next timer and lets the engine
    /// run what it woke. Returns the time moved to, or None (time unchanged) when no timer
    /// is pending.
    pub async fn skip_to_next_timer(&self) -> Result<Option<DateTime<Utc>>, Error> {
        self.idle().await?;
        let Some(t) = self.next_timer() else {
            return Ok(None);
        };
        let t = t.max(self.now());
        self.clock.set(t);
        self.idle().await?;
        Ok(Some(t))
    }
}

/// Builds a [`TestEnv`].
pub struct TestEnvBuilder {
    registry: Option<Registry>,
    overrides: Vec<ActivityEntry>,
    time: VirtualTime,
    options: WorkerOptions,
}

impl std::fmt::Debug for TestEnvBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnvBuilder")
            .field("registry", &self.registry)
            .field(
                "overrides",
                &self.overrides.iter().map(|a| &a.name).collect::<Vec<_>>(),
            )
            .field("now", &self.time.now())
            .finish()
    }
}

impl TestEnvBuilder {
    /// Runs these functions instead of everything the attribute macros registered.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Starts virtual time at `start` (default 2025-01-06 09:00 UTC).
    pub fn start_at(mut self, start: DateTime<Utc>) -> Self {
        self.time = VirtualTime::starting_at(start);
        self
    }

    /// Sets the worker's options.
    pub fn worker_options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs `f` whenever the activity `name` is called, in place of the registered one
    /// (which need not exist): an orchestration unit test decides what each activity
    /// answers, or fails with, without its side effects.
    pub fn activity<I, R, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        R: TaskOutcome,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        self.overrides.push(activity_entry(name, f));
        self
    }

    /// Starts the worker on the current tokio runtime.
    pub fn start(self) -> Result<TestEnv, Error> {
        let mut registry = match self.registry {
            Some(r) => r,
            None => Registry::from_inventory()?,
        };
        for entry in self.overrides {
            registry.replace_activity(entry);
        }
        let store: Arc<dyn Store> = self.time.store();
        let worker = Worker::builder(store)
            .registry(registry)
            .options(self.options)
            .worker_id(crate::store::WorkerId::random())
            .start()?;
        Ok(TestEnv {
            time: self.time,
            worker,
        })
    }
}

/// The registered functions running on a memory store in virtual time. See the
/// [module documentation](self).
#[derive(Debug)]
pub struct TestEnv {
    time: VirtualTime,
    worker: Worker,
}

impl TestEnv {
    /// A builder: every function the macros registered, virtual time from
    /// 2025-01-06 09:00 UTC.
    pub fn builder() -> TestEnvBuilder {
        TestEnvBuilder {
            registry: None,
            overrides: Vec::new(),
            time: VirtualTime::new(),
            options: WorkerOptions::default(),
        }
    }

    /// A client to start instances, raise events and so on.
    pub fn client(&self) -> DurableClient {
        self.worker.client()
    }

    /// The virtual time the engine runs on.
    pub fn time(&self) -> &VirtualTime {
        &self.time
    }

    /// The current virtual time.
    pub fn now(&self) -> DateTime<Utc> {
        self.time.now()
    }

    /// See [`VirtualTime::idle`].
    pub async fn idle(&self) -> Result<(), Error> {
        self.time.idle().await
    }

    /// See [`VirtualTime::advance`].
    pub async fn advance(&self, by: Duration) -> Result<usize, Error> {
        self.time.advance(by).await
    }

    /// See [`VirtualTime::skip_to_next_timer`].
    pub async fn skip_to_next_timer(&self) -> Result<Option<DateTime<Utc>>, Error> {
        self.time.skip_to_next_timer().await
    }

    /// Lets the engine run `instance_id`, skipping from timer to timer while it waits, until
    /// it finishes or `within` of virtual time has passed; returns its status then (with
    /// its history). Waiting for an event nobody raises ends at `within`.
    pub async fn run_until_finished(
        &self,
        instance_id: &str,
        within: Duration,
    ) -> Result<OrchestrationStatus, Error> {
        let limit = crate::store::after(self.now(), within);
        loop {
            self.idle().await?;
            let status = self.status(instance_id).await?;
            if status.status().is_terminal() {
                return Ok(status);
            }
            match self.time.next_timer() {
                Some(t) if t <= limit => {
                    self.time.clock.set(t.max(self.now()));
                }
                _ => {
                    self.time.clock.set(limit.max(self.now()));
                    self.idle().await?;
                    return self.status(instance_id).await;
                }
            }
        }
    }

    /// The instance's status with its input and history; [`Error::InstanceNotFound`] when
    /// it does not exist.
    pub async fn status(&self, instance_id: &str) -> Result<OrchestrationStatus, Error> {
        let options = StatusOptions {
            show_input: true,
            show_history: true,
        };
        self.client()
            .get_status(instance_id, options)
            .await?
            .ok_or_else(|| Error::InstanceNotFound(instance_id.to_string()))
    }

    /// The instance's custom status, decoded.
    pub async fn custom_status<T: DeserializeOwned>(
        &self,
        instance_id: &str,
    ) -> Result<Option<T>, Error> {
        self.status(instance_id)
            .await?
            .custom_status()
            .map_err(|e| Error::InvalidArgument(format!("custom status: {e}")))
    }

    /// The history of the instance's current execution.
    pub async fn history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>, Error> {
        Ok(self.worker.store().read_history(instance_id).await?)
    }

    /// Stops the worker.
    pub async fn shutdown(self) {
        self.worker.shutdown().await;
    }
}
