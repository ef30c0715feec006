//! Time and identity for leases: the [`Clock`] a store reads lease expiries and timer due
//! times from, and the [`WorkerId`] it records as a lease's owner.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// Where a store (and the worker running on it) reads the current time. Lease expiries,
/// timer due times and episode times all come from the store's clock, so hosts sharing one
/// database agree on them.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to (tests of leases and timers).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock that reads `start` until moved.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
    }

    /// Sets the clock to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
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
