//! `SqliteStore`: the crash-safe embedded default. Everything lives in one SQLite file.
//!
//! # Durability
//! The file runs in WAL mode with `synchronous=FULL` (an explicit opt-in lowers it to
//! `NORMAL`); both are read back after opening and opening fails if they are not in
//! effect. A call returns only after its transaction has committed, so anything a caller
//! was told succeeded survives a process crash, and with `FULL` also a power loss.
//!
//! # Concurrency and group commit
//! One writer thread owns the only write connection. Every change (including fetches,
//! which take leases) is a request on its channel; the thread takes all requests waiting
//! (up to 256), applies them in one transaction with a savepoint each (a failing request
//! rolls back alone), commits once — one fsync for the whole batch — and only then answers
//! each caller. There is no lock contention and no `database is locked` retry loop.
//! Batches that only take or renew leases commit without waiting for the disk: a lost
//! lease is harmless, and the next durable commit syncs those pages too.
//! Reads use a separate read-only connection on the blocking thread pool.
//!
//! # Failures
//! Errors are classified ([`StoreErrorKind`]; `StoreError::is_retryable`): a full disk, a busy database and
//! failures to grow a file may pass on retry; corruption and a read-only file do not. When
//! SQLite rolls a transaction back on its own (a full disk mid-statement), the whole batch
//! fails and nothing of it is kept. The writer survives every failure: the next batch
//! starts a fresh transaction, so the store recovers by itself once space returns.
//!
//! # Opening
//! Opening takes `<db>.lock` (one store per file, across processes), then, before writing
//! anything, refuses a file that cannot be written, that is not durable's (its
//! `application_id`, or tables of its own) or that fails `PRAGMA quick_check`. Since the
//! lock proves that no other process has the file, every lease found in it was left by a
//! process that died: opening gives them all back, so a restart after a crash runs that
//! work at once instead of after the leases lapse. Closing (dropping the store)
//! checkpoints the WAL into the file and empties it.
//!
//! # Waiting and time
//! Waiting fetches and instance waiters wake on in-process signals the writer fires after
//! each commit (one process owns the file). Lease expiries and timer due times come from the
//! store's [`Clock`] (the system clock unless the builder is given another).
//!
//! # Layout
//! [`schema`] (opening checks, migrations), `writer` (the writer thread and its typed
//! requests), `ops` (the SQL of each operation), and this module (the [`Store`] and
//! [`FastPaths`] implementations).
//!
//! # Schema (version 7; `PRAGMA user_version`, `PRAGMA application_id` = "DRBL")
//! Times are Unix microseconds (UTC). JSON columns hold serde_json text. A history row
//! holds the events one episode appended (`seq` is the first one's position), in the
//! compact encoding of the `episode` module; rows written before version 6 hold one event
//! as JSON text and are read as they are.
//! ```sql
//! instances(id TEXT PRIMARY KEY, execution_id, name, version, status TEXT,  -- 'Running', ...
//!           input, output, failure JSON, custom_status, created_at, last_updated_at,
//!           parent JSON, lease_token, lease_expires_at, lease_owner, history_len,
//!           dequeue_count)                        -- hand-outs since the last commit
//! -- children by parent (purges follow the parent-close policy):
//! --   instances_parent ON instances(json_extract(parent, '$.instance_id')) WHERE parent IS NOT NULL
//! history(instance_id, seq, events)              -- the current execution's events, one row per episode
//! messages(id INTEGER PRIMARY KEY, instance_id, visible_at, message JSON)   -- inbox; timers have a future visible_at
//! activities(id INTEGER PRIMARY KEY, instance_id, item JSON, lease_token, lease_owner,
//!            visible_at, dequeue_count,           -- visible_at is also the lease expiry
//!            heartbeat_details)                   -- latest details, stored with lease renewals
//! ```
//! Inspect with e.g. `sqlite3 durable.db "select id, name, status from instances"`.
//! Entity instances have ids starting with `@`; their record (state, entity lock, queue) is the
//! `output` column.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, DatabaseName, OpenFlags};

use super::memory::{make_token, parse_token};
use super::signals::LocalSignals;
use super::*;

mod ops;
pub mod schema;
mod writer;

use ops::{Direct, Fence};
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
use writer::{Durability, Job, Typed};

/// How many instances one transaction of a purge by filter deletes at most: enough to
/// share a commit's fsync among many, few enough that the writer serves other work between
/// batches within milliseconds and the WAL stays small.
const PURGE_BATCH: usize = 5000;

/// SQLite's `synchronous` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync on every commit: survives power loss (the default).
    Full,
    /// fsync at checkpoints: survives process crashes; a power loss may lose the last
    /// commits.
    Normal,
}

/// Builder for [`SqliteStore`].
#[derive(Clone, Debug)]
pub struct SqliteStoreBuilder {
    path: PathBuf,
    synchronous: Synchronous,
    check_on_open: bool,
    clock: Arc<dyn Clock>,
}

impl SqliteStoreBuilder {
    /// Sets the durability level.
    pub fn synchronous(mut self, s: Synchronous) -> Self {
        self.synchronous = s;
        self
    }

    /// Whether opening runs `PRAGMA quick_check` and refuses a damaged file (default on).
    /// The check reads the whole file once: measured here 0.4 s for a 230 MB file of
    /// 100,000 instances in the page cache, 5 s from a cold disk. Turn it off only for
    /// files so large that this matters.
    pub fn check_on_open(mut self, check: bool) -> Self {
        self.check_on_open = check;
        self
    }

    /// Reads lease and timer times from `clock` (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Opens (or creates) the file, applies migrations and starts the writer.
    pub fn open(self) -> StoreResult<SqliteStore> {
        SqliteStore::open_with(self)
    }
}

/// A [`Store`] in one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<mpsc::Sender<Box<dyn Job>>>,
    /// Joined on drop, after the writer has checkpointed and closed the file.
    writer_thread: Option<std::thread::JoinHandle<()>>,
    reader: Arc<Mutex<Connection>>,
    /// Connections for short point reads run on the caller's thread.
    point_readers: Vec<Mutex<Connection>>,
    signals: Arc<LocalSignals>,
    clock: Arc<dyn Clock>,
    /// `<db>.lock`, held until every connection has closed (the last field dropped).
    _lock: std::fs::File,
}

impl Drop for SqliteStore {
    /// Stops the writer, which checkpoints the WAL into the database file before it closes
    /// (so the file alone is complete), and waits for it.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        let writer = self.writer.get_mut().unwrap_or_else(|e| e.into_inner());
        drop(std::mem::replace(writer, closed));
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// A failure retrying will not cure (bad data, a stopped writer, a refused file).
fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::failed(e.to_string())
}

/// A SQLite failure, classified. A full disk, a busy or locked database, memory and the
/// failures to grow a file (how full disks and quotas show in the WAL and its index) may
/// pass on retry; corruption, a read-only file, other I/O errors (a failing device, a
/// failed fsync) and misuse need someone to act.
fn classify(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi;
    use rusqlite::ErrorCode as C;
    let (what, kind) = match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::DiskFull => ("the disk is full", StoreErrorKind::Unavailable),
            C::DatabaseBusy | C::DatabaseLocked => {
                ("the database is busy", StoreErrorKind::Unavailable)
            }
            C::OutOfMemory => ("out of memory", StoreErrorKind::Unavailable),
            C::SystemIoFailure => (
                "I/O error",
                if matches!(
                    f.extended_code,
                    ffi::SQLITE_IOERR_WRITE
                        | ffi::SQLITE_IOERR_TRUNCATE
                        | ffi::SQLITE_IOERR_SHMSIZE
                        | ffi::SQLITE_IOERR_SHMMAP
                        | ffi::SQLITE_IOERR_NOMEM
                        | ffi::SQLITE_IOERR_LOCK
                        | ffi::SQLITE_IOERR_RDLOCK
                        | ffi::SQLITE_IOERR_SHMLOCK
                ) {
                    StoreErrorKind::Unavailable
                } else {
                    StoreErrorKind::Failed
                },
            ),
            C::DatabaseCorrupt | C::NotADatabase => {
                ("the database file is corrupt", StoreErrorKind::Corrupt)
            }
            C::ReadOnly => (
                "the database file cannot be written",
                StoreErrorKind::Failed,
            ),
            _ => ("SQLite failed", StoreErrorKind::Failed),
        },
        _ => ("SQLite failed", StoreErrorKind::Failed),
    };
    StoreError::new(kind, what).with_source(e)
}

fn sql(e: rusqlite::Error) -> StoreError {
    classify(e)
}

/// Like [`sql`], saying what was being done (and on which file).
fn sql_in(what: impl std::fmt::Display, e: rusqlite::Error) -> StoreError {
    classify(e).context(what)
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(m: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_micros(m).unwrap_or_default()
}

fn to_json<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v)
        .map_err(|e| StoreError::failed("cannot encode a record").with_source(e))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> StoreResult<T> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::corrupt("a stored record does not decode").with_source(e))
}

impl SqliteStore {
    /// Opens `path` with the defaults (WAL, synchronous=FULL, the system clock).
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        Self::builder(path).open()
    }

    /// Opens the file named by `DURABLE_DB`, or `./durable.db`.
    pub fn open_default() -> StoreResult<Self> {
        Self::open(Self::default_path())
    }

    /// The file `open_default` uses: `DURABLE_DB`, or `./durable.db`.
    pub fn default_path() -> PathBuf {
        std::env::var_os("DURABLE_DB")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("durable.db"))
    }

    /// A builder for `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.as_ref().to_path_buf(),
            synchronous: Synchronous::Full,
            check_on_open: true,
            clock: Arc::new(SystemClock),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies the WAL into the database file and empties it, so the file alone holds every
    /// commit (for a copy or a backup). The store stays open; closing it (dropping the
    /// last reference) does the same.
    pub async fn checkpoint(&self) -> StoreResult<()> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let what = path.display().to_string();
            let failed_in = |e| sql_in(format!("cannot checkpoint {what}"), e);
            let conn = Connection::open(&path).map_err(failed_in)?;
            conn.busy_timeout(Duration::from_secs(5))
                .map_err(failed_in)?;
            let busy: i64 = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .map_err(failed_in)?;
            if busy != 0 {
                return Err(StoreError::unavailable(format!(
                    "cannot checkpoint {what}: readers or a writer kept it busy"
                )));
            }
            Ok(())
        })
        .await
        .map_err(failed)?
    }

    fn open_with(b: SqliteStoreBuilder) -> StoreResult<Self> {
        let what = b.path.display().to_string();
        let lock = schema::lock(&b.path, &what)?;
        let mut conn =
            Connection::open(&b.path).map_err(|e| sql_in(format!("cannot open {what}"), e))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        // Up to the first write, opening only reads: a file that is not ours, is damaged or
        // cannot be written is refused as it was found.
        if conn.is_readonly(DatabaseName::Main).map_err(sql)? {
            return Err(schema::unwritable(
                &what,
                "the file or its directory is read-only",
            ));
        }
        schema::check_owner(&conn, &what)?;
        if b.check_on_open {
            schema::check_integrity(&conn, &what)?;
        }
        schema::configure(&conn, b.synchronous, &what)?;
        // A read-only -wal or -shm (or their directory) shows only when writing.
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK")
            .map_err(|e| match classify(e) {
                busy if busy.is_retryable() => busy.context(format!("cannot open {what}")),
                e => schema::unwritable(&what, e),
            })?;
        let sync = b.synchronous;
        schema::migrate(&mut conn, &what)?;
        // `<db>.lock` proves no other process has the file, so every lease in it was left
        // by one that is gone (killed, crashed): its work is given back at once instead of
        // waiting for the leases to lapse.
        let released = ops::release_all_leases(&conn, micros(b.clock.now()))
            .map_err(|e| e.context(format!("cannot release the leases left in {what}")))?;
        if released > 0 {
            tracing::info!(released, file = %what, "gave back the leases a previous process left behind");
        }
        let open_reader = || -> StoreResult<Connection> {
            let reader = Connection::open_with_flags(
                &b.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(|e| sql_in(format!("cannot open {what} for reading"), e))?;
            reader.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
            schema::tune(&reader, schema::READER_CACHE_KIB)?;
            Ok(reader)
        };
        let reader = open_reader()?;
        let point_readers = (0..schema::POINT_READERS)
            .map(|_| open_reader().map(Mutex::new))
            .collect::<StoreResult<Vec<_>>>()?;
        schema::tune(&conn, schema::WRITER_CACHE_KIB)?;
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint={}",
            schema::AUTOCHECKPOINT_PAGES
        ))
        .map_err(sql)?;
        let signals = Arc::new(LocalSignals::default());
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let (s2, c2) = (signals.clone(), b.clock.clone());
        let writer_thread = std::thread::Builder::new()
            .name("durable-sqlite-writer".into())
            .spawn(move || writer::writer_loop(conn, rx, s2, c2, sync))
            .map_err(failed)?;
        Ok(Self {
            path: b.path,
            writer: Mutex::new(tx),
            writer_thread: Some(writer_thread),
            reader: Arc::new(Mutex::new(reader)),
            point_readers,
            signals,
            clock: b.clock,
            _lock: lock,
        })
    }

    /// Runs `f` on the writer thread inside a batch's transaction, at store-clock time
    /// `now`; answers once the batch has committed.
    async fn write<T, F>(&self, durability: Durability, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection, i64, &mut writer::Wake) -> StoreResult<T> + Send + 'static,
    {
        self.submit(durability, f)?
            .await
            .map_err(|_| failed("the SQLite writer has stopped"))?
    }

    /// Queues `f` for the writer thread; the receiver gets its answer once its batch has
    /// committed.
    fn submit<T, F>(
        &self,
        durability: Durability,
        f: F,
    ) -> StoreResult<tokio::sync::oneshot::Receiver<StoreResult<T>>>
    where
        T: Send + 'static,
        F: FnMut(&Connection, i64, &mut writer::Wake) -> StoreResult<T> + Send + 'static,
    {
        let (job, rx) = Typed::request(durability, f);
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| failed("the SQLite writer has stopped"))?;
        Ok(rx)
    }

    /// Purges the finished instances matching `filter`, up to `batch` per transaction
    /// (each with the sub-orchestrations the parent-close policy takes with it); the next
    /// batch is queued only once the previous one has committed, so requests queued
    /// meanwhile go first. `between` is called after each full batch with the count so
    /// far. Returns how many were purged.
    async fn purge_in_batches(
        &self,
        filter: &InstanceFilter,
        batch: usize,
        mut between: impl FnMut(u64) + Send,
    ) -> StoreResult<u64> {
        let batch = batch.max(1);
        let mut total = 0u64;
        loop {
            let filter = filter.clone();
            let (matched, n) = self
                .write(Durability::Durable, move |conn, _, w| {
                    ops::purge_batch(conn, &filter, batch, w)
                })
                .await?;
            total += n;
            if matched < batch as u64 {
                return Ok(total);
            }
            between(total);
        }
    }

    /// Runs a short read (one indexed row) on the calling thread when a point-read
    /// connection is free, saving the hop to the blocking pool; otherwise like `read`.
    async fn read_point<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        for m in &self.point_readers {
            match m.try_lock() {
                Ok(conn) => return f(&conn),
                Err(std::sync::TryLockError::Poisoned(p)) => return f(&p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        self.read(f).await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(failed)?
    }

    /// The earliest time delayed work or a lapsing lease makes work visible.
    async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let now = micros(self.clock.now());
        self.read_point(move |conn| ops::next_due(conn, now)).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_instance(&self, instance: NewInstance) -> StoreResult<()> {
        self.write(Durability::Durable, move |conn, _, w| {
            ops::create(conn, &instance, w)
        })
        .await
    }

    async fn send_message(&self, message: OrchestrationMessage) -> StoreResult<()> {
        self.write(Durability::Durable, move |conn, _, w| {
            ops::send(conn, &message, w)
        })
        .await
    }

    async fn fetch_orchestration_work(
        &self,
        owner: &WorkerId,
        lease: Duration,
        max: usize,
        wait: Duration,
    ) -> StoreResult<Vec<OrchestrationWorkItem>> {
        self.signals
            .fetch_orchestrations(self.clock.as_ref(), wait, || async {
                let owner = owner.clone();
                let items = self
                    .write(Durability::LeaseOnly, move |conn, now, _| {
                        ops::fetch_orchestrations(conn, now, &owner, lease, max)
                    })
                    .await?;
                let due = if items.is_empty() && !wait.is_zero() {
                    self.next_due().await?
                } else {
                    None
                };
                Ok((items, due))
            })
            .await
    }

    async fn commit_orchestration(&self, commit: OrchestrationCommit) -> StoreResult<()> {
        self.write(Durability::Durable, move |conn, now, w| {
            ops::commit(conn, &commit, w, now, None, None, Fence::Token).map(|_| ())
        })
        .await
    }

    async fn abandon_orchestration(
        &self,
        instance_id: &str,
        lease_token: &str,
        delay: Duration,
    ) -> StoreResult<()> {
        let (id, token) = (instance_id.to_string(), lease_token.to_string());
        self.write(Durability::Durable, move |conn, now, w| {
            ops::abandon_orchestration(conn, now, &id, &token, delay, w)
        })
        .await
    }

    async fn renew_orchestration_lease(
        &self,
        instance_id: &str,
        lease_token: &str,
        lease: Duration,
    ) -> StoreResult<()> {
        let (id, token) = (instance_id.to_string(), lease_token.to_string());
        self.write(Durability::LeaseOnly, move |conn, now, _| {
            ops::renew_orchestration(conn, now, &id, &token, lease)
        })
        .await
    }

    async fn fetch_activity_work(
        &self,
        owner: &WorkerId,
        lease: Duration,
        max: usize,
        wait: Duration,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        self.signals
            .fetch_activities(self.clock.as_ref(), wait, || async {
                let owner = owner.clone();
                let items = self
                    .write(Durability::LeaseOnly, move |conn, now, _| {
                        ops::fetch_activities(conn, now, &owner, lease, max)
                    })
                    .await?;
                let due = if items.is_empty() && !wait.is_zero() {
                    self.next_due().await?
                } else {
                    None
                };
                Ok((items, due))
            })
            .await
    }

    async fn complete_activity(
        &self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
    ) -> StoreResult<()> {
        let item = item.clone();
        self.write(Durability::Durable, move |conn, now, w| {
            ops::complete_activity(conn, now, &item, &result, None, w).map(|_| ())
        })
        .await
    }

    async fn abandon_activity(&self, item: &ActivityWorkItem, delay: Duration) -> StoreResult<()> {
        let item = item.clone();
        self.write(Durability::Durable, move |conn, now, w| {
            ops::abandon_activity(conn, now, &item, delay, w)
        })
        .await
    }

    async fn renew_activity_lease(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
    ) -> StoreResult<()> {
        let item = item.clone();
        self.write(Durability::LeaseOnly, move |conn, now, _| {
            ops::renew_activity(conn, now, &item, lease)
        })
        .await
    }

    async fn renew_activity_lease_with_heartbeat(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
        details: &str,
    ) -> StoreResult<()> {
        let item = item.clone();
        let details = details.to_string();
        // Lease bookkeeping durability: the details survive a process crash (the OS has
        // them) but not always a power cut, like the lease itself.
        self.write(Durability::LeaseOnly, move |conn, now, _| {
            ops::renew_activity_with_heartbeat(conn, now, &item, lease, &details)
        })
        .await
    }

    async fn activity_heartbeats(&self, instance_id: &str) -> StoreResult<Vec<ActivityHeartbeat>> {
        let id = instance_id.to_string();
        self.read(move |conn| ops::activity_heartbeats(conn, &id))
            .await
    }

    async fn release_leases(&self, owner: &WorkerId) -> StoreResult<u64> {
        let owner = owner.clone();
        self.write(Durability::LeaseOnly, move |conn, now, w| {
            ops::release_leases(conn, now, &owner, w)
        })
        .await
    }

    async fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceState>> {
        let id = instance_id.to_string();
        self.read_point(move |conn| Ok(ops::get_state(conn, &id)?.map(|(s, _)| s)))
            .await
    }

    async fn read_history(&self, instance_id: &str) -> StoreResult<Vec<HistoryEvent>> {
        let id = instance_id.to_string();
        self.read(move |conn| ops::read_history(conn, &id)).await
    }

    async fn list_instances(
        &self,
        filter: &InstanceFilter,
        page_size: usize,
        continuation_token: Option<&str>,
    ) -> StoreResult<Page<InstanceState>> {
        let token = continuation_token.map(parse_token).transpose()?;
        let filter = filter.clone();
        self.read(move |conn| {
            let (items, more) = ops::list(conn, &filter, page_size, token)?;
            let continuation_token = if more {
                items
                    .last()
                    .map(|s| make_token(s.created_at, &s.instance_id))
            } else {
                None
            };
            Ok(Page {
                items,
                continuation_token,
            })
        })
        .await
    }

    async fn purge_instance(&self, instance_id: &str) -> StoreResult<bool> {
        let id = instance_id.to_string();
        self.write(Durability::Durable, move |conn, _, w| {
            let purged = ops::purge(conn, &id)?;
            if purged {
                w.instances.push(id.clone());
            }
            Ok(purged)
        })
        .await
    }

    /// Purges in batches of 5,000 matching instances (`PURGE_BATCH`), one transaction
    /// each with the sub-orchestrations they take with them, so the writer serves other
    /// requests between batches and the WAL stays bounded. Children are found through the
    /// index `instances_parent`; only parents that have children have their history read.
    async fn purge_instances(&self, filter: &InstanceFilter) -> StoreResult<u64> {
        self.purge_in_batches(filter, PURGE_BATCH, |_| {}).await
    }

    async fn wait_for_instance(
        &self,
        instance_id: &str,
        seen: Option<&InstanceState>,
        timeout: Duration,
    ) -> StoreResult<Option<InstanceState>> {
        self.signals
            .wait_for_instance(instance_id, seen, timeout, || {
                self.get_instance(instance_id)
            })
            .await
    }

    async fn wait_for_instance_until(
        &self,
        instance_id: &str,
        timeout: Duration,
        done: &(dyn for<'s> Fn(Option<&'s InstanceState>) -> bool + Send + Sync),
    ) -> StoreResult<Option<InstanceState>> {
        self.signals
            .wait_for_instance_until(instance_id, timeout, done, || {
                self.get_instance(instance_id)
            })
            .await
    }

    async fn close(&self) -> StoreResult<()> {
        self.checkpoint().await
    }

    fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    async fn pending_work(&self) -> StoreResult<Option<PendingWork>> {
        let now = micros(self.clock.now());
        self.read(move |conn| ops::pending_work(conn, now).map(Some))
            .await
    }

    fn fast_paths(&self) -> Option<&dyn FastPaths> {
        Some(self)
    }
}

#[async_trait]
impl FastPaths for SqliteStore {
    async fn commit_orchestration_and_lease(
        &self,
        commit: OrchestrationCommit,
        completed: Option<&ActivityWorkItem>,
        direct: DirectLease<'_>,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let completed = completed.cloned();
        let direct = Direct {
            owner: direct.owner.clone(),
            lease: direct.lease,
            max: direct.max,
        };
        self.write(Durability::Durable, move |conn, now, w| {
            ops::commit(
                conn,
                &commit,
                w,
                now,
                Some(&direct),
                completed.as_ref(),
                Fence::Token,
            )
        })
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
        let completed = completed.clone();
        let execution_id = execution_id.to_string();
        let direct = Direct {
            owner: direct.owner.clone(),
            lease: direct.lease,
            max: direct.max,
        };
        self.write(Durability::Durable, move |conn, now, w| {
            ops::commit(
                conn,
                &commit,
                w,
                now,
                Some(&direct),
                Some(&completed),
                Fence::Unleased {
                    execution_id: &execution_id,
                    history_len,
                },
            )
        })
        .await
    }

    async fn lease_instance_for_result(
        &self,
        item: &ActivityWorkItem,
        owner: &WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        let (item, owner) = (item.clone(), owner.clone());
        self.write(Durability::LeaseOnly, move |conn, now, _| {
            ops::lease_for_result(conn, now, &item, &owner, lease)
        })
        .await
    }

    async fn complete_activity_and_fetch(
        &self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
        owner: &WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        let (item, owner) = (item.clone(), owner.clone());
        self.write(Durability::Durable, move |conn, now, w| {
            ops::complete_activity(conn, now, &item, &result, Some((&owner, lease)), w)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
