//! The writer thread: the only write connection, fed requests through a channel. In: typed
//! requests (a closure over the connection and the answer channel of its own type); out:
//! each request's own result, sent only after the batch's transaction committed, and the
//! wake-ups the commit calls for.
//!
//! Group commit: the thread takes every request waiting (up to [`GROUP_LIMIT`]), applies
//! them in one transaction, commits once (one fsync for the whole batch) and then answers.

use std::sync::mpsc;
use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{micros, sql, sql_in, Synchronous};
use crate::store::signals::LocalSignals;
use crate::store::{Clock, StoreError, StoreErrorKind, StoreResult};

/// How many requests at most share one transaction.
const GROUP_LIMIT: usize = 256;

/// What a committed request should wake.
#[derive(Default)]
pub(super) struct Wake {
    pub orchestrations: bool,
    pub activities: bool,
    pub instances: Vec<String>,
}

impl Wake {
    fn merge(&mut self, other: Wake) {
        self.orchestrations |= other.orchestrations;
        self.activities |= other.activities;
        self.instances.extend(other.instances);
    }
}

/// Whether a request's effects must reach the disk before its caller hears of them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    /// Acknowledged state: waits for the disk.
    Durable,
    /// Lease bookkeeping only: losing it in a power cut is harmless (leases would lapse
    /// anyway), so a batch of such requests commits without waiting for the disk.
    LeaseOnly,
}

/// One request on the writer's channel.
pub(super) trait Job: Send {
    fn durability(&self) -> Durability;
    /// Applies the request in the batch's open transaction at store-clock time `now`
    /// (Unix microseconds) and keeps its outcome; returns the error, if any. May run twice
    /// when the batch is applied again with savepoints.
    fn apply(&mut self, conn: &Connection, now: i64, w: &mut Wake) -> Option<StoreError>;
    /// Sends the kept outcome (the batch committed).
    fn answer(self: Box<Self>);
    /// Sends `e` instead (the batch failed as a whole).
    fn fail(self: Box<Self>, e: StoreError);
}

/// A request whose closure computes a `T` and whose caller waits for exactly that.
pub(super) struct Typed<T, F> {
    durability: Durability,
    f: F,
    outcome: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Typed<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection, i64, &mut Wake) -> StoreResult<T> + Send + 'static,
{
    /// The request and the receiver of its answer.
    pub(super) fn request(
        durability: Durability,
        f: F,
    ) -> (Box<dyn Job>, oneshot::Receiver<StoreResult<T>>) {
        let (reply, rx) = oneshot::channel();
        (
            Box::new(Self {
                durability,
                f,
                outcome: None,
                reply,
            }),
            rx,
        )
    }
}

impl<T, F> Job for Typed<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection, i64, &mut Wake) -> StoreResult<T> + Send + 'static,
{
    fn durability(&self) -> Durability {
        self.durability
    }

    fn apply(&mut self, conn: &Connection, now: i64, w: &mut Wake) -> Option<StoreError> {
        let r = (self.f)(conn, now, w);
        let err = r.as_ref().err().cloned();
        self.outcome = Some(r);
        err
    }

    fn answer(self: Box<Self>) {
        let outcome = self
            .outcome
            .unwrap_or_else(|| Err(StoreError::failed("the request was not applied")));
        let _ = self.reply.send(outcome);
    }

    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }
}

/// A failure of the backend itself (I/O, corruption), as opposed to a refusal of the
/// request's own (lease lost, unknown or existing instance), which writes nothing.
fn is_backend_error(e: &StoreError) -> bool {
    matches!(
        e.kind(),
        StoreErrorKind::Unavailable | StoreErrorKind::Corrupt | StoreErrorKind::Failed
    )
}

/// Runs until every sender is gone, then checkpoints the WAL into the file.
pub(super) fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<Box<dyn Job>>,
    signals: Arc<LocalSignals>,
    clock: Arc<dyn Clock>,
    sync: Synchronous,
) {
    let durable_sync = match sync {
        Synchronous::Full => "PRAGMA synchronous=FULL",
        Synchronous::Normal => "PRAGMA synchronous=NORMAL",
    };
    let mut relaxed = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_LIMIT {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // Every commit that carries acknowledged state waits for the disk; a batch of
        // lease bookkeeping alone does not (the next durable commit syncs it too).
        let lease_only = batch
            .iter()
            .all(|r| r.durability() == Durability::LeaseOnly);
        if lease_only != relaxed {
            let pragma = if lease_only {
                "PRAGMA synchronous=OFF"
            } else {
                durable_sync
            };
            if exec_cached(&conn, pragma).is_ok() {
                relaxed = lease_only;
            }
        }
        let now = micros(clock.now());
        // Fast path: no savepoints. A request refused for a reason of its own (lease lost,
        // unknown or existing instance) is refused before it writes anything, so it cannot
        // leave a partial change behind. Only a backend error (I/O, corruption) can stop a
        // request half-way; then the whole batch is rolled back and applied again with one
        // savepoint per request, so the failing request rolls back alone.
        let mut outcome = apply_batch(&conn, &mut batch, now, false);
        if matches!(outcome, Ok((_, true))) {
            let _ = exec_cached(&conn, "ROLLBACK");
            outcome = apply_batch(&conn, &mut batch, now, true);
        }
        let wake = match outcome {
            Ok((w, _)) => w,
            Err(e) => {
                let _ = exec_cached(&conn, "ROLLBACK");
                for r in batch {
                    r.fail(e.clone());
                }
                continue;
            }
        };
        // A failed commit (a full disk, an I/O error) fails this batch only: SQLite rolls
        // it back, and the next batch starts a fresh transaction.
        if let Err(e) = exec_cached(&conn, "COMMIT") {
            let _ = exec_cached(&conn, "ROLLBACK");
            let e = sql_in("commit failed", e);
            for r in batch {
                r.fail(e.clone());
            }
            continue;
        }
        // Durable now: answer the callers, then wake whoever waits for this work.
        for r in batch {
            r.answer();
        }
        if wake.orchestrations {
            signals.orchestrations_changed();
        }
        if wake.activities {
            signals.activities_changed();
        }
        for id in wake.instances {
            signals.instance_changed(&id);
        }
    }
    // The store is closing: copy the WAL into the database file and empty it, so the file
    // alone is complete (for a copy or a backup).
    match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(0) => {}
        Ok(_) => {
            tracing::warn!("closing the SQLite store: readers kept the WAL from being checkpointed")
        }
        Err(e) => {
            tracing::warn!(error = %sql(e), "closing the SQLite store: the WAL checkpoint failed")
        }
    }
}

/// Runs a statement without parameters through the statement cache.
pub(super) fn exec_cached(conn: &Connection, text: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(text)?.raw_execute().map(|_| ())
}

/// Begins a transaction and applies every request of the batch in it (not committed yet);
/// returns the wake-ups and whether a request stopped on a backend error without
/// savepoints (the caller rolls back and applies the batch again with them). With
/// `savepoints`, each request runs in a savepoint of its own and a failing request is
/// rolled back alone.
/// Fails as a whole when SQLite rolled the transaction back on its own (it does on a full
/// disk or an I/O error in some statements): what went before in the batch is gone too, and
/// going on would run the rest outside any transaction.
fn apply_batch(
    conn: &Connection,
    batch: &mut [Box<dyn Job>],
    now: i64,
    savepoints: bool,
) -> StoreResult<(Wake, bool)> {
    exec_cached(conn, "BEGIN IMMEDIATE").map_err(|e| sql_in("cannot begin a transaction", e))?;
    let mut wake = Wake::default();
    for req in batch.iter_mut() {
        if savepoints {
            let _ = exec_cached(conn, "SAVEPOINT op");
        }
        let mut w = Wake::default();
        match req.apply(conn, now, &mut w) {
            None => {
                if savepoints {
                    let _ = exec_cached(conn, "RELEASE op");
                }
                wake.merge(w);
            }
            Some(e) => {
                if is_backend_error(&e) && conn.is_autocommit() {
                    return Err(e);
                }
                if savepoints {
                    let _ = exec_cached(conn, "ROLLBACK TO op");
                    let _ = exec_cached(conn, "RELEASE op");
                } else if is_backend_error(&e) {
                    return Ok((wake, true));
                }
            }
        }
    }
    Ok((wake, false))
}
