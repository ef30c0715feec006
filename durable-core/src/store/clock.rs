//! Time and identity for leases: the [`Clock`] a store reads lease expiries and timer due
//! times from, and the [`WorkerId`] it records as a lease's owner.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

/// The future [`Clock::sleep_until`] returns.
pub type ClockSleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where a store (and the worker running on it) reads the current time. Lease expiries,
/// timer due times and episode times all come from the store's clock, so hosts sharing one
/// database agree on them, and a test moving a [`ManualClock`] moves the whole engine.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once [`now`](Self::now) reads `at` or later. It may resolve early (callers
    /// read the clock again); waiting stores use it to sleep until their next timer comes
    /// due. The default sleeps for the wall-clock time between now and `at`.
    fn sleep_until(&self, at: DateTime<Utc>) -> ClockSleep<'_> {
        let wait = (at - self.now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to: virtual time for tests of leases and timers
/// (see `durable_core::testing`). Moving it wakes whoever sleeps on it
/// ([`Clock::sleep_until`]), so a store's waiting fetches see timers that came due at once.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    moved: Notify,
}

impl ManualClock {
    /// A clock that reads `start` until moved.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(start),
            moved: Notify::new(),
        }
    }

    /// Moves the clock forward by `by` (saturating).
    pub fn advance(&self, by: std::time::Duration) {
        {
            let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
            *now = after(*now, by);
        }
        self.moved.notify_waiters();
    }

    /// Sets the clock to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = at;
        self.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> ClockSleep<'_> {
        Box::pin(async move {
            loop {
                let moved = self.moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                if self.now() >= at {
                    return;
                }
                moved.await;
            }
        })
    }
}

/// `now + d`, saturating.
pub fn after(now: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Who holds a lease: one id per worker process, recorded with every lease it takes so it
/// can give them all back ([`Store::release_leases`](super::Store::release_leases)).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkerId(String);

impl WorkerId {
    /// The environment variable that names this process's worker.
    pub const ENV: &'static str = "DURABLE_WORKER_ID";

    /// A worker id with this text.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// A fresh random worker id.
    pub fn random() -> Self {
        Self(format!("worker-{}", super::random_id()))
    }

    /// `DURABLE_WORKER_ID` when set and not empty, a fresh random id otherwise. A stable id
    /// lets a restarted worker reclaim the leases its previous run held.
    pub fn from_env() -> Self {
        match std::env::var(Self::ENV) {
            Ok(v) if !v.trim().is_empty() => Self(v.trim().to_string()),
            _ => Self::random(),
        }
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
