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
//! Errors are classified (`StoreError::is_retryable`): a full disk, a busy database and
//! failures to grow a file may pass on retry; corruption and a read-only file do not. When
//! SQLite rolls a transaction back on its own (a full disk mid-statement), the whole batch
//! fails and nothing of it is kept. The writer survives every failure: the next batch
//! starts a fresh transaction, so the store recovers by itself once space returns.
//!
//! # Opening
//! Opening takes `<db>.lock` (one store per file, across processes), then, before writing
//! anything, refuses a file that cannot be written, that is not durable's (its
//! `application_id`, or tables of its own) or that fails `PRAGMA quick_check`. Closing
//! (dropping the store) checkpoints the WAL into the file and empties it.
//!
//! # Schema (version 1; `PRAGMA user_version`, `PRAGMA application_id` = "DRBL")
//! Times are Unix microseconds (UTC). JSON columns hold serde_json text.
//! ```sql
//! instances(id TEXT PRIMARY KEY, execution_id, name, version, status TEXT,  -- 'Running', ...
//!           input, output, failure JSON, custom_status, created_at, last_updated_at,
//!           parent JSON, lock_token, locked_until, history_len)
//! history(instance_id, seq, event JSON)           -- the current execution's events, in order
//! messages(id INTEGER PRIMARY KEY, instance_id, visible_at, message JSON)   -- inbox; timers have a future visible_at
//! activities(id INTEGER PRIMARY KEY, instance_id, item JSON, lock_token,
//!            visible_at, dequeue_count)           -- visible_at is also the lease expiry
//! ```
//! Inspect with e.g. `sqlite3 durable.db "select id, name, status from instances"`.
//! Entity instances have ids starting with `@`; their record (state, lock, queue) is the
//! `output` column.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, DatabaseName, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::memory::{make_token, parse_token};
use super::*;
use crate::history::{FailureDetails, ParentInstance};

/// The newest schema version this build understands.
pub const SCHEMA_VERSION: i64 = 1;

/// How many requests at most share one transaction.
const GROUP_LIMIT: usize = 256;

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
    max_payload: usize,
    check_on_open: bool,
}

impl SqliteStoreBuilder {
    /// Sets the durability level.
    pub fn synchronous(mut self, s: Synchronous) -> Self {
        self.synchronous = s;
        self
    }

    /// Sets the largest accepted payload in bytes (default 16 MiB).
    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        self.max_payload = n;
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

    /// Opens (or creates) the file, applies migrations and starts the writer.
    pub fn open(self) -> StoreResult<SqliteStore> {
        SqliteStore::open_with(self)
    }
}

/// A [`Store`] in one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<mpsc::Sender<Request>>,
    /// Joined on drop, after the writer has checkpointed and closed the file.
    writer_thread: Option<std::thread::JoinHandle<()>>,
    reader: Arc<Mutex<Connection>>,
    /// Connections for short point reads run on the caller's thread.
    point_readers: Vec<Mutex<Connection>>,
    shared: Arc<Shared>,
    max_payload: usize,
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

#[derive(Default)]
struct Shared {
    signals: WorkSignals,
}

/// A failure retrying will not cure (bad data, a stopped writer, a refused file).
fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(BackendError::permanent(e.to_string()))
}

/// A SQLite failure, classified. A full disk, a busy or locked database, memory and the
/// failures to grow a file (how full disks and quotas show in the WAL and its index) may
/// pass on retry; corruption, a read-only file, other I/O errors (a failing device, a
/// failed fsync) and misuse need someone to act.
fn classify(e: rusqlite::Error) -> BackendError {
    use rusqlite::ffi;
    use rusqlite::ErrorCode as C;
    let (what, retryable) = match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::DiskFull => ("the disk is full", true),
            C::DatabaseBusy | C::DatabaseLocked => ("the database is busy", true),
            C::OutOfMemory => ("out of memory", true),
            C::SystemIoFailure => (
                "I/O error",
                matches!(
                    f.extended_code,
                    ffi::SQLITE_IOERR_WRITE
                        | ffi::SQLITE_IOERR_TRUNCATE
                        | ffi::SQLITE_IOERR_SHMSIZE
                        | ffi::SQLITE_IOERR_SHMMAP
                        | ffi::SQLITE_IOERR_NOMEM
                        | ffi::SQLITE_IOERR_LOCK
                        | ffi::SQLITE_IOERR_RDLOCK
                        | ffi::SQLITE_IOERR_SHMLOCK
                ),
            ),
            C::DatabaseCorrupt | C::NotADatabase => ("the database file is corrupt", false),
            C::ReadOnly => ("the database file cannot be written", false),
            _ => ("SQLite failed", false),
        },
        _ => ("SQLite failed", false),
    };
    let b = if retryable {
        BackendError::retryable(what)
    } else {
        BackendError::permanent(what)
    };
    b.with_source(e)
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(classify(e))
}

/// Like [`sql`], saying what was being done (and on which file).
fn sql_in(what: impl std::fmt::Display, e: rusqlite::Error) -> StoreError {
    StoreError::Backend(classify(e).context(what))
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(m: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_micros(m).unwrap_or_default()
}

fn after(d: Duration) -> i64 {
    micros(Utc::now()) + d.as_micros().min(i64::MAX as u128 / 2) as i64
}

fn to_json<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(backend)
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(backend)
}

impl SqliteStore {
    /// Opens `path` with the defaults (WAL, synchronous=FULL, 16 MiB payloads).
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
            max_payload: DEFAULT_MAX_PAYLOAD_BYTES,
            check_on_open: true,
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
            let failed = |e| sql_in(format!("cannot checkpoint {what}"), e);
            let conn = Connection::open(&path).map_err(failed)?;
            conn.busy_timeout(Duration::from_secs(5)).map_err(failed)?;
            let busy: i64 = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .map_err(failed)?;
            if busy != 0 {
                return Err(StoreError::Backend(BackendError::retryable(format!(
                    "cannot checkpoint {what}: readers or a writer kept it busy"
                ))));
            }
            Ok(())
        })
        .await
        .map_err(backend)?
    }

    fn open_with(b: SqliteStoreBuilder) -> StoreResult<Self> {
        let what = b.path.display().to_string();
        let lock = lock(&b.path, &what)?;
        let mut conn =
            Connection::open(&b.path).map_err(|e| sql_in(format!("cannot open {what}"), e))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        // Up to the first write, opening only reads: a file that is not ours, is damaged or
        // cannot be written is refused as it was found.
        if conn.is_readonly(DatabaseName::Main).map_err(sql)? {
            return Err(unwritable(&what, "the file or its directory is read-only"));
        }
        check_owner(&conn, &what)?;
        if b.check_on_open {
            check_integrity(&conn, &what)?;
        }
        configure(&conn, b.synchronous, &what)?;
        // A read-only -wal or -shm (or their directory) shows only when writing.
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK")
            .map_err(|e| match classify(e) {
                busy if busy.is_retryable() => {
                    StoreError::Backend(busy.context(format!("cannot open {what}")))
                }
                e => unwritable(&what, e),
            })?;
        let sync = b.synchronous;
        migrate(&mut conn, &what)?;
        let open_reader = || -> StoreResult<Connection> {
            let reader = Connection::open_with_flags(
                &b.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(|e| sql_in(format!("cannot open {what} for reading"), e))?;
            reader.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
            tune(&reader, READER_CACHE_KIB)?;
            Ok(reader)
        };
        let reader = open_reader()?;
        let point_readers = (0..POINT_READERS)
            .map(|_| open_reader().map(Mutex::new))
            .collect::<StoreResult<Vec<_>>>()?;
        tune(&conn, WRITER_CACHE_KIB)?;
        conn.execute_batch(&format!("PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}"))
            .map_err(sql)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel::<Request>();
        let s2 = shared.clone();
        let writer_thread = std::thread::Builder::new()
            .name("durable-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, s2, sync))
            .map_err(backend)?;
        Ok(Self {
            path: b.path,
            writer: Mutex::new(tx),
            writer_thread: Some(writer_thread),
            reader: Arc::new(Mutex::new(reader)),
            point_readers,
            shared,
            max_payload: b.max_payload,
            _lock: lock,
        })
    }

    async fn write(&self, op: Op) -> StoreResult<Reply> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Request { op, reply: tx })
            .map_err(|_| backend("the SQLite writer has stopped"))?;
        rx.await
            .map_err(|_| backend("the SQLite writer has stopped"))?
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
        .map_err(backend)?
    }
}

/// Page cache of the writer connection, in KiB.
const WRITER_CACHE_KIB: i64 = 8 * 1024;
/// Connections for point reads on the caller's thread.
const POINT_READERS: usize = 2;
/// Page cache of each reader connection, in KiB.
const READER_CACHE_KIB: i64 = 2 * 1024;
/// The writer checkpoints when the WAL reaches this many pages (SQLite's default). A
/// small WAL restarts from its beginning often, and overwriting WAL blocks makes each fsync
/// cheaper on ext4 than appending (new blocks, new size): measured 0.09 ms against 0.16-0.26
/// ms at the median here. (A separate checkpoint thread was tried and cost more than it
/// saved on two cores: its own fsyncs and CPU.)
const AUTOCHECKPOINT_PAGES: u32 = 1000;

/// Performance settings that do not affect durability: page cache size and a statement
/// cache large enough for every statement the store uses.
fn tune(conn: &Connection, cache_kib: i64) -> StoreResult<()> {
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(&format!("PRAGMA cache_size=-{cache_kib}"))
        .map_err(sql)
}

/// The `application_id` in the header of durable's databases ("DRBL").
pub const APPLICATION_ID: i32 = 0x4452_424c;

/// The tables of schema version 1, by which files from before the application id are known.
const TABLES: [&str; 4] = ["activities", "history", "instances", "messages"];

fn unwritable(what: &str, why: impl std::fmt::Display) -> StoreError {
    backend(format!(
        "{what} cannot be written ({why}); durable needs to write the file, its -wal and -shm \
         files and their directory"
    ))
}

/// Takes `<db>.lock` for the store's life, so a second store on the same file, in this
/// process or another, is refused instead of running a second writer beside the first.
fn lock(path: &Path, what: &str) -> StoreResult<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| {
            unwritable(
                what,
                format_args!("cannot create its lock file {}: {e}", lock_path.display()),
            )
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(backend(format!(
            "{what} is already open in another durable host or store (its lock file {} is \
             held); one database file serves one host at a time",
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(backend(format!(
            "cannot open {what}: cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

/// Refuses a file that is not durable's: another application's database (its
/// `application_id`, or tables of its own) is left exactly as it was.
fn check_owner(conn: &Connection, what: &str) -> StoreResult<()> {
    let read = |e| sql_in(format!("cannot read {what}"), e);
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(read)?;
    if app_id == APPLICATION_ID {
        return Ok(());
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(read)?;
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             ORDER BY name",
        )
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(read)?;
    let empty = tables.is_empty() && version == 0;
    // Version 1 files written before the application id was set.
    let ours_v1 = version == 1 && TABLES.iter().all(|t| tables.iter().any(|n| n == t));
    if app_id == 0 && (empty || ours_v1) {
        return Ok(());
    }
    let mut shown = tables
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if tables.len() > 5 {
        shown.push_str(", ...");
    }
    Err(backend(format!(
        "{what} is not a durable database (application_id {app_id}, user_version {version}, \
         tables: {shown}); it was left unchanged"
    )))
}

/// Refuses a damaged file at start rather than failing calls one by one later.
/// `quick_check` reads every page once (its time grows with the file) but skips
/// `integrity_check`'s index cross-checks.
fn check_integrity(conn: &Connection, what: &str) -> StoreResult<()> {
    let damaged = |detail: String| {
        backend(format!(
            "{what} is damaged (PRAGMA quick_check: {detail}); restore it from a backup"
        ))
    };
    let rows: Vec<String> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| damaged(e.to_string()))?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(());
    }
    Err(damaged(rows.join("; ")))
}

fn configure(conn: &Connection, sync: Synchronous, what: &str) -> StoreResult<()> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| sql_in(format!("cannot switch {what} to WAL"), e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(backend(format!(
            "{what}: journal_mode is '{mode}', WAL could not be enabled"
        )));
    }
    let (value, name) = match sync {
        Synchronous::Full => (2, "FULL"),
        Synchronous::Normal => (1, "NORMAL"),
    };
    conn.execute_batch(&format!("PRAGMA synchronous={name}"))
        .map_err(sql)?;
    let got: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .map_err(sql)?;
    if got != value {
        return Err(backend(format!(
            "{what}: synchronous is {got}, expected {value} ({name})"
        )));
    }
    Ok(())
}

fn migrate(conn: &mut Connection, what: &str) -> StoreResult<()> {
    let failed = |e| sql_in(format!("cannot set up {what}"), e);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(failed)?;
    if version > SCHEMA_VERSION {
        return Err(backend(format!(
            "{what} has schema version {version}; this build understands up to {SCHEMA_VERSION}. Upgrade durable to open it (the file was left unchanged)"
        )));
    }
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(failed)?;
    if version == SCHEMA_VERSION && app_id == APPLICATION_ID {
        return Ok(());
    }
    let tx = conn.transaction().map_err(failed)?;
    if version < 1 {
        tx.execute_batch(
            "CREATE TABLE instances(
                id TEXT PRIMARY KEY,
                execution_id TEXT NOT NULL,
                name TEXT NOT NULL,
                version TEXT,
                status TEXT NOT NULL,
                input TEXT,
                output TEXT,
                failure TEXT,
                custom_status TEXT,
                created_at INTEGER NOT NULL,
                last_updated_at INTEGER NOT NULL,
                parent TEXT,
                lock_token TEXT,
                locked_until INTEGER,
                history_len INTEGER NOT NULL DEFAULT 0
            );
            CREATE INDEX instances_created ON instances(created_at, id);
            CREATE INDEX instances_status ON instances(status);
            CREATE INDEX instances_locked ON instances(locked_until) WHERE locked_until IS NOT NULL;
            CREATE TABLE history(
                instance_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                event TEXT NOT NULL,
                PRIMARY KEY(instance_id, seq)
            ) WITHOUT ROWID;
            CREATE TABLE messages(
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                instance_id TEXT NOT NULL,
                visible_at INTEGER NOT NULL,
                message TEXT NOT NULL
            );
            CREATE INDEX messages_instance ON messages(instance_id, id);
            CREATE INDEX messages_visible ON messages(visible_at, id);
            CREATE TABLE activities(
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                instance_id TEXT NOT NULL,
                item TEXT NOT NULL,
                lock_token TEXT,
                visible_at INTEGER NOT NULL,
                dequeue_count INTEGER NOT NULL DEFAULT 0
            );
            CREATE INDEX activities_visible ON activities(visible_at, id);
            CREATE INDEX activities_instance ON activities(instance_id);",
        )
        .map_err(failed)?;
    }
    tx.execute_batch(&format!(
        "PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version={SCHEMA_VERSION}"
    ))
    .map_err(failed)?;
    tx.commit().map_err(failed)
}

enum Op {
    Create(NewInstance),
    Send(OrchestrationMessage),
    FetchOrchestration(Duration, usize),
    /// A commit, leasing up to `usize` of its new activities for the given lease, and
    /// deleting the activity whose result the episode consumed in memory.
    Commit(
        Box<OrchestrationCommit>,
        Duration,
        usize,
        Option<Box<ActivityWorkItem>>,
    ),
    /// A commit without the instance's lease, checked against the expected execution
    /// and history length.
    CommitUnleased(Box<Unleased>),
    /// Leases the instance of a still-leased activity (lease bookkeeping only).
    LeaseForResult(ActivityWorkItem, Duration),
    AbandonOrchestration(String, String, Duration),
    FetchActivities(Duration, usize),
    /// Completes an activity; with a lease, also leases its instance when it is free.
    CompleteActivity(ActivityWorkItem, OrchestrationMessage, Option<Duration>),
    RenewActivity(ActivityWorkItem, Duration),
    AbandonActivity(ActivityWorkItem, Duration),
    Purge(String),
    PurgeMany(InstanceFilter),
}

struct Unleased {
    commit: OrchestrationCommit,
    execution_id: String,
    history_len: u64,
    completed: ActivityWorkItem,
    lease: Duration,
    max: usize,
}

/// How a commit proves it may change the instance.
enum Fence<'a> {
    /// The lease's lock token.
    Token,
    /// No lease: the instance must be free, on this execution, with this many events and
    /// no waiting messages.
    Unleased {
        execution_id: &'a str,
        history_len: u64,
    },
}

enum Reply {
    Unit,
    Items(Vec<OrchestrationWorkItem>),
    Activities(Vec<ActivityWorkItem>),
    Bool(bool),
    Count(u64),
}

struct Request {
    op: Op,
    reply: oneshot::Sender<StoreResult<Reply>>,
}

/// What a committed request should wake.
#[derive(Default)]
struct Wake {
    orchestrations: bool,
    activities: bool,
    instances: Vec<String>,
}

impl Op {
    /// Lease bookkeeping only: losing it in a power cut is harmless (leases would lapse
    /// anyway), so such batches commit without waiting for the disk.
    fn lease_only(&self) -> bool {
        matches!(
            self,
            Op::FetchOrchestration(..)
                | Op::FetchActivities(..)
                | Op::RenewActivity(..)
                | Op::LeaseForResult(..)
        )
    }
}

fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
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
        let lease_only = batch.iter().all(|r| r.op.lease_only());
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
        // Fast path: no savepoints. A request refused for a reason of its own (lease lost,
        // unknown or existing instance) is refused before it writes anything, so it cannot
        // leave a partial change behind. Only a backend error (I/O, corruption) can stop a
        // request half-way; then the whole batch is rolled back and applied again with one
        // savepoint per request, so the failing request rolls back alone.
        let mut outcome = apply_batch(&conn, &batch, false);
        if outcome
            .as_ref()
            .is_ok_and(|(results, _)| results.iter().any(is_backend_error))
        {
            let _ = exec_cached(&conn, "ROLLBACK");
            outcome = apply_batch(&conn, &batch, true);
        }
        let (results, wake) = match outcome {
            Ok(r) => r,
            Err(e) => {
                let _ = exec_cached(&conn, "ROLLBACK");
                for r in batch {
                    let _ = r.reply.send(Err(e.clone()));
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
                let _ = r.reply.send(Err(e.clone()));
            }
            continue;
        }
        // Durable now: answer the callers, then wake whoever waits for this work.
        for (req, res) in batch.into_iter().zip(results) {
            let _ = req.reply.send(res);
        }
        if wake.orchestrations {
            shared.signals.orchestrations.notify_one();
        }
        if wake.activities {
            shared.signals.activities.notify_one();
        }
        for id in wake.instances {
            shared.signals.instance_changed(&id);
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
fn exec_cached(conn: &Connection, text: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(text)?.raw_execute().map(|_| ())
}

fn is_backend_error(r: &StoreResult<Reply>) -> bool {
    matches!(r, Err(StoreError::Backend(_)))
}

/// Begins a transaction and applies every request of the batch in it (not committed yet).
/// With `savepoints`, each request runs in a savepoint of its own and a failing request is
/// rolled back alone.
/// Fails as a whole when SQLite rolled the transaction back on its own (it does on a full
/// disk or an I/O error in some statements): what went before in the batch is gone too, and
/// going on would run the rest outside any transaction.
fn apply_batch(
    conn: &Connection,
    batch: &[Request],
    savepoints: bool,
) -> StoreResult<(Vec<StoreResult<Reply>>, Wake)> {
    exec_cached(conn, "BEGIN IMMEDIATE").map_err(|e| sql_in("cannot begin a transaction", e))?;
    let mut results = Vec::with_capacity(batch.len());
    let mut wake = Wake::default();
    for req in batch {
        if savepoints {
            let _ = exec_cached(conn, "SAVEPOINT op");
        }
        let mut w = Wake::default();
        let res = apply(conn, &req.op, &mut w);
        if let Err(e @ StoreError::Backend(_)) = &res {
            if conn.is_autocommit() {
                return Err(e.clone());
            }
        }
        if res.is_ok() {
            if savepoints {
                let _ = exec_cached(conn, "RELEASE op");
            }
            wake.orchestrations |= w.orchestrations;
            wake.activities |= w.activities;
            wake.instances.extend(w.instances);
        } else if savepoints {
            let _ = exec_cached(conn, "ROLLBACK TO op");
            let _ = exec_cached(conn, "RELEASE op");
        } else if is_backend_error(&res) {
            // The caller rolls back and retries with savepoints.
            results.push(res);
            return Ok((results, wake));
        }
        results.push(res);
    }
    Ok((results, wake))
}

fn apply(conn: &Connection, op: &Op, w: &mut Wake) -> StoreResult<Reply> {
    let now = micros(Utc::now());
    match op {
        Op::Create(n) => {
            create(conn, n, w)?;
            Ok(Reply::Unit)
        }
        Op::Send(m) => {
            if !exists(conn, &m.instance_id)? {
                return Err(StoreError::NotFound(m.instance_id.clone()));
            }
            insert_message(conn, m, w)?;
            Ok(Reply::Unit)
        }
        Op::FetchOrchestration(lease, max) => {
            let mut items = Vec::new();
            while items.len() < *max {
                match fetch_orchestration(conn, now, *lease)? {
                    Some(i) => items.push(i),
                    None => break,
                }
            }
            Ok(Reply::Items(items))
        }
        Op::Commit(c, lease, max, completed) => commit(
            conn,
            c,
            w,
            now,
            (*lease, *max),
            completed.as_deref(),
            Fence::Token,
        )
        .map(Reply::Activities),
        Op::CommitUnleased(u) => commit(
            conn,
            &u.commit,
            w,
            now,
            (u.lease, u.max),
            Some(&u.completed),
            Fence::Unleased {
                execution_id: &u.execution_id,
                history_len: u.history_len,
            },
        )
        .map(Reply::Activities),
        Op::LeaseForResult(item, lease) => {
            let held = conn
                .prepare_cached("SELECT 1 FROM activities WHERE id = ?1 AND lock_token = ?2")
                .and_then(|mut s| s.exists(params![item.id as i64, item.lock_token]))
                .map_err(sql)?;
            if !held {
                return Ok(Reply::Items(Vec::new()));
            }
            Ok(Reply::Items(
                lease_instance(conn, &item.instance_id, now, *lease)?
                    .into_iter()
                    .collect(),
            ))
        }
        Op::AbandonOrchestration(id, token, delay) => {
            let until: Option<i64> = if delay.is_zero() {
                None
            } else {
                Some(after(*delay))
            };
            let new_token: Option<String> = until.map(|_| random_id());
            let n = conn
                .prepare_cached(
                    "UPDATE instances SET lock_token = ?1, locked_until = ?2 WHERE id = ?3 AND lock_token = ?4",
                )
                .and_then(|mut s| s.execute(params![new_token, until, id, token]))
                .map_err(sql)?;
            if n == 0 {
                return Err(StoreError::LockLost);
            }
            w.orchestrations = true;
            Ok(Reply::Unit)
        }
        Op::FetchActivities(lease, max) => {
            fetch_activities(conn, now, *lease, *max).map(Reply::Activities)
        }
        Op::CompleteActivity(item, msg, fetch) => {
            let n = conn
                .prepare_cached("DELETE FROM activities WHERE id = ?1 AND lock_token = ?2")
                .and_then(|mut s| s.execute(params![item.id as i64, item.lock_token]))
                .map_err(sql)?;
            if n == 0 {
                return Err(StoreError::LockLost);
            }
            if !exists(conn, &msg.instance_id)? {
                return Ok(Reply::Items(Vec::new()));
            }
            insert_message(conn, msg, w)?;
            if let Some(lease) = fetch {
                if let Some(work) = lease_instance(conn, &msg.instance_id, now, *lease)? {
                    // The caller runs the episode; no dispatcher needs waking for it.
                    w.orchestrations = false;
                    return Ok(Reply::Items(vec![work]));
                }
            }
            Ok(Reply::Items(Vec::new()))
        }
        Op::RenewActivity(item, lease) => {
            let n = conn
                .prepare_cached(
                    "UPDATE activities SET visible_at = ?1 WHERE id = ?2 AND lock_token = ?3",
                )
                .and_then(|mut s| {
                    s.execute(params![after(*lease), item.id as i64, item.lock_token])
                })
                .map_err(sql)?;
            if n == 0 {
                return Err(StoreError::LockLost);
            }
            Ok(Reply::Unit)
        }
        Op::AbandonActivity(item, delay) => {
            let n = conn
                .prepare_cached(
                    "UPDATE activities SET visible_at = ?1, lock_token = NULL WHERE id = ?2 AND lock_token = ?3",
                )
                .and_then(|mut s| s.execute(params![after(*delay), item.id as i64, item.lock_token]))
                .map_err(sql)?;
            if n == 0 {
                return Err(StoreError::LockLost);
            }
            w.activities = true;
            Ok(Reply::Unit)
        }
        Op::Purge(id) => Ok(Reply::Bool(purge(conn, id)?)),
        Op::PurgeMany(filter) => {
            let ids: Vec<String> = list(conn, filter, usize::MAX / 2, None)?
                .0
                .into_iter()
                .filter(|s| s.status.is_terminal())
                .map(|s| s.instance_id)
                .collect();
            for id in &ids {
                purge(conn, id)?;
            }
            Ok(Reply::Count(ids.len() as u64))
        }
    }
}

fn exists(conn: &Connection, id: &str) -> StoreResult<bool> {
    conn.prepare_cached("SELECT 1 FROM instances WHERE id = ?1")
        .and_then(|mut s| s.exists(params![id]))
        .map_err(sql)
}

fn status_of(conn: &Connection, id: &str) -> StoreResult<Option<RuntimeStatus>> {
    let s: Option<String> = conn
        .prepare_cached("SELECT status FROM instances WHERE id = ?1")
        .and_then(|mut s| s.query_row(params![id], |r| r.get(0)).optional())
        .map_err(sql)?;
    Ok(s.and_then(|s| RuntimeStatus::parse(&s)))
}

fn purge(conn: &Connection, id: &str) -> StoreResult<bool> {
    let n = conn
        .execute("DELETE FROM instances WHERE id = ?1", params![id])
        .map_err(sql)?;
    conn.execute("DELETE FROM history WHERE instance_id = ?1", params![id])
        .map_err(sql)?;
    conn.execute("DELETE FROM messages WHERE instance_id = ?1", params![id])
        .map_err(sql)?;
    conn.execute("DELETE FROM activities WHERE instance_id = ?1", params![id])
        .map_err(sql)?;
    Ok(n > 0)
}

fn create(conn: &Connection, n: &NewInstance, w: &mut Wake) -> StoreResult<()> {
    if let Some(status) = status_of(conn, &n.instance_id)? {
        if !status.is_terminal() {
            return Err(StoreError::InstanceExists {
                instance_id: n.instance_id.clone(),
                status,
            });
        }
        conn.execute(
            "DELETE FROM history WHERE instance_id = ?1",
            params![n.instance_id],
        )
        .map_err(sql)?;
        conn.execute(
            "DELETE FROM messages WHERE instance_id = ?1",
            params![n.instance_id],
        )
        .map_err(sql)?;
        conn.execute(
            "DELETE FROM instances WHERE id = ?1",
            params![n.instance_id],
        )
        .map_err(sql)?;
    }
    write_state(conn, &n.initial_state(), 0, WriteState::Insert)?;
    insert_message(conn, &n.start_message(), w)?;
    w.instances.push(n.instance_id.clone());
    Ok(())
}

/// Inserts or updates an instance row; a new row has no lease.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteState {
    Insert,
    /// Every column.
    Update,
    /// Every column but the indexed `status` and `created_at`, which did not change (their
    /// index entries stay untouched).
    UpdateUnindexed,
}

fn write_state(
    conn: &Connection,
    s: &InstanceState,
    history_len: i64,
    mode: WriteState,
) -> StoreResult<()> {
    let failure = s.failure.as_ref().map(to_json).transpose()?;
    let parent = s.parent.as_ref().map(to_json).transpose()?;
    let sql_text = match mode {
        WriteState::Insert => "INSERT INTO instances(id, execution_id, name, version, status, input, output, failure, custom_status,
            created_at, last_updated_at, parent, lock_token, locked_until, history_len)
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL, NULL, ?13)",
        WriteState::Update => "UPDATE instances SET execution_id = ?2, name = ?3, version = ?4, status = ?5, input = ?6, output = ?7,
            failure = ?8, custom_status = ?9, created_at = ?10, last_updated_at = ?11, parent = ?12,
            lock_token = NULL, locked_until = NULL, history_len = ?13
         WHERE id = ?1",
        WriteState::UpdateUnindexed => "UPDATE instances SET execution_id = ?2, name = ?3, version = ?4, input = ?6, output = ?7,
            failure = ?8, custom_status = ?9, last_updated_at = ?11, parent = ?12,
            lock_token = NULL, locked_until = NULL, history_len = ?13
         WHERE id = ?1",
    };
    conn.prepare_cached(sql_text)
        .and_then(|mut st| {
            st.execute(params![
                s.instance_id,
                s.execution_id,
                s.name,
                s.version,
                s.status.as_str(),
                s.input,
                s.output,
                failure,
                s.custom_status,
                micros(s.created_at),
                micros(s.last_updated_at),
                parent,
                history_len,
            ])
        })
        .map_err(sql)?;
    Ok(())
}

fn insert_message(conn: &Connection, m: &OrchestrationMessage, w: &mut Wake) -> StoreResult<()> {
    let visible = m.visible_at.map(micros).unwrap_or(0);
    conn.prepare_cached(
        "INSERT INTO messages(instance_id, visible_at, message) VALUES(?1, ?2, ?3)",
    )
    .and_then(|mut s| {
        s.execute(params![
            m.instance_id,
            visible,
            to_json(m).unwrap_or_default()
        ])
    })
    .map_err(sql)?;
    w.orchestrations = true;
    Ok(())
}

fn read_state(row: &rusqlite::Row<'_>) -> rusqlite::Result<(InstanceState, i64)> {
    let status: String = row.get(4)?;
    let failure: Option<String> = row.get(7)?;
    let parent: Option<String> = row.get(11)?;
    Ok((
        InstanceState {
            instance_id: row.get(0)?,
            execution_id: row.get(1)?,
            name: row.get(2)?,
            version: row.get(3)?,
            status: RuntimeStatus::parse(&status).unwrap_or(RuntimeStatus::Running),
            input: row.get(5)?,
            output: row.get(6)?,
            failure: failure.and_then(|f| serde_json::from_str::<FailureDetails>(&f).ok()),
            custom_status: row.get(8)?,
            created_at: from_micros(row.get(9)?),
            last_updated_at: from_micros(row.get(10)?),
            parent: parent.and_then(|p| serde_json::from_str::<ParentInstance>(&p).ok()),
        },
        row.get(12)?,
    ))
}

const STATE_COLUMNS: &str = "id, execution_id, name, version, status, input, output, failure, custom_status, created_at, last_updated_at, parent, history_len";

fn get_state(conn: &Connection, id: &str) -> StoreResult<Option<(InstanceState, i64)>> {
    conn.prepare_cached(&format!(
        "SELECT {STATE_COLUMNS} FROM instances WHERE id = ?1"
    ))
    .and_then(|mut s| s.query_row(params![id], read_state).optional())
    .map_err(sql)
}

fn fetch_orchestration(
    conn: &Connection,
    now: i64,
    lease: Duration,
) -> StoreResult<Option<OrchestrationWorkItem>> {
    let id: Option<String> = conn
        .prepare_cached(
            "SELECT m.instance_id FROM messages m JOIN instances i ON i.id = m.instance_id
             WHERE m.visible_at <= ?1 AND (i.locked_until IS NULL OR i.locked_until <= ?1)
             ORDER BY m.visible_at, m.id LIMIT 1",
        )
        .and_then(|mut s| s.query_row(params![now], |r| r.get(0)).optional())
        .map_err(sql)?;
    let Some(id) = id else {
        return Ok(None);
    };
    lease_instance(conn, &id, now, lease)
}

/// Leases an instance that no one holds, with all its visible messages.
fn lease_instance(
    conn: &Connection,
    id: &str,
    now: i64,
    lease: Duration,
) -> StoreResult<Option<OrchestrationWorkItem>> {
    let token = random_id();
    let n = conn
        .prepare_cached(
            "UPDATE instances SET lock_token = ?1, locked_until = ?2
             WHERE id = ?3 AND (locked_until IS NULL OR locked_until <= ?4)",
        )
        .and_then(|mut s| s.execute(params![token, now + lease.as_micros() as i64, id, now]))
        .map_err(sql)?;
    if n == 0 {
        return Ok(None);
    }
    let mut stmt = conn
        .prepare_cached("SELECT id, message FROM messages WHERE instance_id = ?1 AND visible_at <= ?2 ORDER BY id LIMIT ?3")
        .map_err(sql)?;
    let rows = stmt
        .query_map(params![id, now, MAX_MESSAGES_PER_WORK_ITEM as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(sql)?;
    let mut messages = Vec::new();
    for row in rows {
        let (mid, json) = row.map_err(sql)?;
        messages.push((mid as u64, from_json::<OrchestrationMessage>(&json)?));
    }
    let (state, history_len) = match get_state(conn, id)? {
        Some((s, n)) => (Some(s), n),
        None => (None, 0),
    };
    Ok(Some(OrchestrationWorkItem {
        instance_id: id.to_string(),
        lock_token: token,
        messages,
        state,
        history_len: history_len as u64,
    }))
}

/// Applies a commit; leases up to `max_leased` of its new activities to the caller.
fn commit(
    conn: &Connection,
    c: &OrchestrationCommit,
    w: &mut Wake,
    now: i64,
    (lease, max_leased): (Duration, usize),
    completed: Option<&ActivityWorkItem>,
    fence: Fence<'_>,
) -> StoreResult<Vec<ActivityWorkItem>> {
    type Current = (Option<String>, i64, String, i64, Option<i64>, String);
    let current: Option<Current> = conn
        .prepare_cached(
            "SELECT lock_token, history_len, status, created_at, locked_until, execution_id
             FROM instances WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![c.instance_id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .optional()
        })
        .map_err(sql)?;
    let Some((token, mut history_len, old_status, old_created, locked_until, execution)) = current
    else {
        return Err(StoreError::LockLost);
    };
    match fence {
        Fence::Token => {
            if token.as_deref() != Some(c.lock_token.as_str()) {
                return Err(StoreError::LockLost);
            }
        }
        Fence::Unleased {
            execution_id,
            history_len: expected,
        } => {
            let free = token.is_none() || locked_until.is_none_or(|t| t <= now);
            let waiting = conn
                .prepare_cached(
                    "SELECT 1 FROM messages WHERE instance_id = ?1 AND visible_at <= ?2 LIMIT 1",
                )
                .and_then(|mut s| s.exists(params![c.instance_id, now]))
                .map_err(sql)?;
            if !free || waiting || execution != execution_id || history_len as u64 != expected {
                return Err(StoreError::LockLost);
            }
        }
    }
    if let Some(a) = completed {
        // The first write: refused with nothing written when the activity's lease is gone.
        let n = conn
            .prepare_cached("DELETE FROM activities WHERE id = ?1 AND lock_token = ?2")
            .and_then(|mut s| s.execute(params![a.id as i64, a.lock_token]))
            .map_err(sql)?;
        if n == 0 {
            return Err(StoreError::LockLost);
        }
    }
    {
        let mut del = conn
            .prepare_cached("DELETE FROM messages WHERE id = ?1 AND instance_id = ?2")
            .map_err(sql)?;
        for id in &c.consumed {
            del.execute(params![*id as i64, c.instance_id])
                .map_err(sql)?;
        }
    }
    let events = match &c.history {
        HistoryUpdate::Append(e) => e,
        HistoryUpdate::Replace(e) => {
            conn.execute(
                "DELETE FROM history WHERE instance_id = ?1",
                params![c.instance_id],
            )
            .map_err(sql)?;
            history_len = 0;
            e
        }
    };
    {
        let mut ins = conn
            .prepare_cached("INSERT INTO history(instance_id, seq, event) VALUES(?1, ?2, ?3)")
            .map_err(sql)?;
        for e in events {
            ins.execute(params![c.instance_id, history_len, to_json(e)?])
                .map_err(sql)?;
            history_len += 1;
        }
    }
    match &c.state {
        Some(state) => {
            let mode =
                if state.status.as_str() == old_status && micros(state.created_at) == old_created {
                    WriteState::UpdateUnindexed
                } else {
                    WriteState::Update
                };
            write_state(conn, state, history_len, mode)?;
            w.instances.push(c.instance_id.clone());
        }
        None => {
            conn.prepare_cached(
                "UPDATE instances SET lock_token = NULL, locked_until = NULL, history_len = ?1 WHERE id = ?2",
            )
            .and_then(|mut s| s.execute(params![history_len, c.instance_id]))
            .map_err(sql)?;
        }
    }
    let has_more = conn
        .prepare_cached("SELECT 1 FROM messages WHERE instance_id = ?1 LIMIT 1")
        .and_then(|mut s| s.exists(params![c.instance_id]))
        .map_err(sql)?;
    w.orchestrations |= has_more;
    let mut leased = Vec::new();
    {
        let mut ins = conn
            .prepare_cached("INSERT INTO activities(instance_id, item, lock_token, visible_at, dequeue_count) VALUES(?1, ?2, ?3, ?4, ?5)")
            .map_err(sql)?;
        let until = now + lease.as_micros().min(i64::MAX as u128 / 2) as i64;
        for a in &c.activities {
            let row = to_json(&ActivityRow::from(a))?;
            if leased.len() < max_leased {
                let token = random_id();
                ins.execute(params![a.instance_id, row, token, until, 1])
                    .map_err(sql)?;
                leased.push(ActivityWorkItem {
                    id: conn.last_insert_rowid() as u64,
                    lock_token: token,
                    dequeue_count: 1,
                    ..a.clone()
                });
            } else {
                ins.execute(params![a.instance_id, row, None::<String>, 0, 0])
                    .map_err(sql)?;
                w.activities = true;
            }
        }
    }
    for child in &c.new_instances {
        match status_of(conn, &child.instance_id)? {
            Some(status) if !status.is_terminal() => {
                if let Some(msg) = child_conflict_message(child, status) {
                    if exists(conn, &msg.instance_id)? {
                        insert_message(conn, &msg, w)?;
                    }
                }
            }
            _ => create(conn, child, w)?,
        }
    }
    for m in &c.messages {
        if exists(conn, &m.instance_id)? {
            insert_message(conn, m, w)?;
        }
    }
    Ok(leased)
}

/// The stored form of an activity work item (lease fields live in their own columns).
#[derive(serde::Serialize, serde::Deserialize)]
struct ActivityRow {
    execution_id: String,
    task_scheduled_id: u64,
    name: String,
    input: Option<String>,
    attempt: u32,
}

impl From<&ActivityWorkItem> for ActivityRow {
    fn from(a: &ActivityWorkItem) -> Self {
        Self {
            execution_id: a.execution_id.clone(),
            task_scheduled_id: a.task_scheduled_id,
            name: a.name.clone(),
            input: a.input.clone(),
            attempt: a.attempt,
        }
    }
}

fn fetch_activities(
    conn: &Connection,
    now: i64,
    lease: Duration,
    max: usize,
) -> StoreResult<Vec<ActivityWorkItem>> {
    let rows: Vec<(i64, String, String, i64)> = {
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, instance_id, item, dequeue_count FROM activities WHERE visible_at <= ?1 ORDER BY visible_at, id LIMIT ?2",
            )
            .map_err(sql)?;
        let it = stmt
            .query_map(params![now, max as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(sql)?;
        it.collect::<Result<_, _>>().map_err(sql)?
    };
    let until = now + lease.as_micros() as i64;
    let mut out = Vec::with_capacity(rows.len());
    let mut upd = conn
        .prepare_cached("UPDATE activities SET lock_token = ?1, visible_at = ?2, dequeue_count = ?3 WHERE id = ?4")
        .map_err(sql)?;
    for (id, instance_id, item, dequeue) in rows {
        let row: ActivityRow = from_json(&item)?;
        let token = random_id();
        let dequeue_count = dequeue as u32 + 1;
        upd.execute(params![token, until, dequeue_count, id])
            .map_err(sql)?;
        out.push(ActivityWorkItem {
            id: id as u64,
            instance_id,
            execution_id: row.execution_id,
            task_scheduled_id: row.task_scheduled_id,
            name: row.name,
            input: row.input,
            attempt: row.attempt,
            lock_token: token,
            dequeue_count,
        });
    }
    Ok(out)
}

fn list(
    conn: &Connection,
    filter: &InstanceFilter,
    page_size: usize,
    token: Option<(DateTime<Utc>, String)>,
) -> StoreResult<(Vec<InstanceState>, bool)> {
    let mut clauses = Vec::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if !filter.statuses.is_empty() {
        let marks: Vec<String> = filter
            .statuses
            .iter()
            .map(|s| {
                args.push(s.as_str().to_string().into());
                format!("?{}", args.len())
            })
            .collect();
        clauses.push(format!("status IN ({})", marks.join(",")));
    }
    if let Some(t) = filter.created_from {
        args.push(micros(t).into());
        clauses.push(format!("created_at >= ?{}", args.len()));
    }
    if let Some(t) = filter.created_to {
        args.push(micros(t).into());
        clauses.push(format!("created_at <= ?{}", args.len()));
    }
    if let Some(p) = &filter.instance_id_prefix {
        args.push(p.clone().into());
        let n = args.len();
        clauses.push(format!("substr(id, 1, length(?{n})) = ?{n}"));
    }
    if let Some((t, id)) = token {
        args.push(micros(t).into());
        let a = args.len();
        args.push(id.into());
        let b = args.len();
        clauses.push(format!(
            "(created_at > ?{a} OR (created_at = ?{a} AND id > ?{b}))"
        ));
    }
    let limit = page_size.max(1).saturating_add(1).min(i64::MAX as usize);
    let where_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let text = format!(
        "SELECT {STATE_COLUMNS} FROM instances {where_sql} ORDER BY created_at, id LIMIT {limit}"
    );
    let mut stmt = conn.prepare(&text).map_err(sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), read_state)
        .map_err(sql)?;
    let mut items: Vec<InstanceState> = Vec::new();
    for r in rows {
        items.push(r.map_err(sql)?.0);
    }
    let more = items.len() > page_size.max(1);
    items.truncate(page_size.max(1));
    Ok((items, more))
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_instance(&self, instance: NewInstance) -> StoreResult<()> {
        check_payload(
            || format!("input of instance '{}'", instance.instance_id),
            instance.input.as_deref(),
            self.max_payload,
        )?;
        self.write(Op::Create(instance)).await.map(|_| ())
    }

    async fn send_message(&self, message: OrchestrationMessage) -> StoreResult<()> {
        check_payload(
            || format!("message to instance '{}'", message.instance_id),
            message_payload(&message.event),
            self.max_payload,
        )?;
        self.write(Op::Send(message)).await.map(|_| ())
    }

    async fn fetch_orchestration_work_item(
        &self,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        Ok(self.fetch_orchestration_work_items(lease, 1).await?.pop())
    }

    async fn fetch_orchestration_work_items(
        &self,
        lease: Duration,
        max: usize,
    ) -> StoreResult<Vec<OrchestrationWorkItem>> {
        match self.write(Op::FetchOrchestration(lease, max)).await? {
            Reply::Items(i) => Ok(i),
            _ => Err(backend("unexpected reply")),
        }
    }

    async fn commit_orchestration(&self, commit: OrchestrationCommit) -> StoreResult<()> {
        check_commit_payloads(&commit, self.max_payload)?;
        self.write(Op::Commit(Box::new(commit), Duration::ZERO, 0, None))
            .await
            .map(|_| ())
    }

    async fn commit_orchestration_and_lease(
        &self,
        commit: OrchestrationCommit,
        activity_lease: Duration,
        max_activities: usize,
        completed: Option<&ActivityWorkItem>,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        check_commit_payloads(&commit, self.max_payload)?;
        match self
            .write(Op::Commit(
                Box::new(commit),
                activity_lease,
                max_activities,
                completed.map(|a| Box::new(a.clone())),
            ))
            .await?
        {
            Reply::Activities(a) => Ok(a),
            _ => Err(backend("unexpected reply")),
        }
    }

    fn supports_unleased_commit(&self) -> bool {
        true
    }

    async fn commit_unleased(
        &self,
        commit: OrchestrationCommit,
        execution_id: &str,
        history_len: u64,
        completed: &ActivityWorkItem,
        activity_lease: Duration,
        max_activities: usize,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        check_commit_payloads(&commit, self.max_payload)?;
        let op = Op::CommitUnleased(Box::new(Unleased {
            commit,
            execution_id: execution_id.to_string(),
            history_len,
            completed: completed.clone(),
            lease: activity_lease,
            max: max_activities,
        }));
        match self.write(op).await? {
            Reply::Activities(a) => Ok(a),
            _ => Err(backend("unexpected reply")),
        }
    }

    async fn lease_instance_for_result(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        match self.write(Op::LeaseForResult(item.clone(), lease)).await? {
            Reply::Items(mut i) => Ok(i.pop()),
            _ => Err(backend("unexpected reply")),
        }
    }

    async fn abandon_orchestration_work_item(
        &self,
        instance_id: &str,
        lock_token: &str,
        delay: Duration,
    ) -> StoreResult<()> {
        self.write(Op::AbandonOrchestration(
            instance_id.to_string(),
            lock_token.to_string(),
            delay,
        ))
        .await
        .map(|_| ())
    }

    async fn fetch_activity_work_items(
        &self,
        lease: Duration,
        max: usize,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        match self.write(Op::FetchActivities(lease, max)).await? {
            Reply::Activities(a) => Ok(a),
            _ => Err(backend("unexpected reply")),
        }
    }

    async fn complete_activity(
        &self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
    ) -> StoreResult<()> {
        check_payload(
            || format!("result of activity '{}'", item.name),
            message_payload(&result.event),
            self.max_payload,
        )?;
        self.write(Op::CompleteActivity(item.clone(), result, None))
            .await
            .map(|_| ())
    }

    async fn complete_activity_and_fetch(
        &self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        check_payload(
            || format!("result of activity '{}'", item.name),
            message_payload(&result.event),
            self.max_payload,
        )?;
        match self
            .write(Op::CompleteActivity(item.clone(), result, Some(lease)))
            .await?
        {
            Reply::Items(mut i) => Ok(i.pop()),
            _ => Err(backend("unexpected reply")),
        }
    }

    async fn renew_activity_lease(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
    ) -> StoreResult<()> {
        self.write(Op::RenewActivity(item.clone(), lease))
            .await
            .map(|_| ())
    }

    async fn abandon_activity(&self, item: &ActivityWorkItem, delay: Duration) -> StoreResult<()> {
        self.write(Op::AbandonActivity(item.clone(), delay))
            .await
            .map(|_| ())
    }

    async fn next_wakeup(&self) -> StoreResult<Option<DateTime<Utc>>> {
        self.read_point(|conn| {
            let now = micros(Utc::now());
            let t: Option<i64> = conn
                .prepare_cached(
                    "SELECT MIN(t) FROM (
                        SELECT MIN(visible_at) AS t FROM messages WHERE visible_at > ?1
                        UNION ALL SELECT MIN(locked_until) FROM instances WHERE locked_until > ?1
                        UNION ALL SELECT MIN(visible_at) FROM activities WHERE visible_at > ?1)",
                )
                .and_then(|mut s| s.query_row(params![now], |r| r.get(0)))
                .map_err(sql)?;
            Ok(t.map(from_micros))
        })
        .await
    }

    async fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceState>> {
        let id = instance_id.to_string();
        self.read_point(move |conn| Ok(get_state(conn, &id)?.map(|(s, _)| s)))
            .await
    }

    async fn read_history(&self, instance_id: &str) -> StoreResult<Vec<HistoryEvent>> {
        let id = instance_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT event FROM history WHERE instance_id = ?1 ORDER BY seq")
                .map_err(sql)?;
            let rows = stmt
                .query_map(params![id], |r| r.get::<_, String>(0))
                .map_err(sql)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(from_json(&r.map_err(sql)?)?);
            }
            Ok(out)
        })
        .await
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
            let (items, more) = list(conn, &filter, page_size, token)?;
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
        match self.write(Op::Purge(instance_id.to_string())).await? {
            Reply::Bool(b) => Ok(b),
            _ => Err(backend("unexpected reply")),
        }
    }

    async fn purge_instances(&self, filter: &InstanceFilter) -> StoreResult<u64> {
        match self.write(Op::PurgeMany(filter.clone())).await? {
            Reply::Count(n) => Ok(n),
            _ => Err(backend("unexpected reply")),
        }
    }

    fn signals(&self) -> &WorkSignals {
        &self.shared.signals
    }

    fn max_payload_bytes(&self) -> usize {
        self.max_payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("durable-sqlite-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("t.db")
    }

    #[test]
    fn pragmas_are_in_effect_and_newer_schemas_refused() {
        let path = temp("pragmas");
        let store = SqliteStore::open(&path).unwrap();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        let err = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("schema version 99"), "{err}");
        assert!(err.contains("up to 1"), "{err}");
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 99, "a newer file is left unaltered");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_survives_reopening() {
        let path = temp("reopen");
        {
            let store = SqliteStore::open(&path).unwrap();
            store
                .create_instance(NewInstance {
                    instance_id: "keep".into(),
                    execution_id: "e".into(),
                    name: "orch".into(),
                    version: Some("2".into()),
                    input: Some("[1,2]".into()),
                    parent: None,
                    created_at: Utc::now(),
                    start_at: None,
                })
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let st = store.get_instance("keep").await.unwrap().unwrap();
        assert_eq!(st.input.as_deref(), Some("[1,2]"));
        assert_eq!(st.version.as_deref(), Some("2"));
        let item = store
            .fetch_orchestration_work_item(Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(item.messages.len(), 1);
    }

    fn new_instance(id: &str) -> NewInstance {
        NewInstance {
            instance_id: id.into(),
            execution_id: random_id(),
            name: "orch".into(),
            version: None,
            input: None,
            parent: None,
            created_at: Utc::now(),
            start_at: None,
        }
    }

    fn step(instance_id: &str, lock_token: &str, state: &InstanceState) -> OrchestrationCommit {
        OrchestrationCommit {
            instance_id: instance_id.into(),
            lock_token: lock_token.into(),
            consumed: Vec::new(),
            history: HistoryUpdate::Append(vec![HistoryEvent::new(
                Utc::now(),
                EventKind::OrchestratorStarted,
            )]),
            state: Some(state.clone()),
            activities: Vec::new(),
            messages: Vec::new(),
            new_instances: Vec::new(),
        }
    }

    fn result_of(a: &ActivityWorkItem) -> OrchestrationMessage {
        OrchestrationMessage::new(
            a.instance_id.clone(),
            HistoryEvent::new(
                Utc::now(),
                EventKind::TaskCompleted {
                    task_scheduled_id: a.task_scheduled_id,
                    result: None,
                },
            ),
        )
    }

    /// Activities leased by the commit that schedules them, results leased with their
    /// instance, and unleased commits: each is fenced and a refusal changes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_dispatch_is_fenced() {
        let store = SqliteStore::open(temp("direct")).unwrap();
        let lease = Duration::from_secs(30);
        store.create_instance(new_instance("i")).await.unwrap();
        let item = store
            .fetch_orchestration_work_item(lease)
            .await
            .unwrap()
            .unwrap();
        let mut state = item.state.clone().unwrap();
        state.status = RuntimeStatus::Running;
        let mut c = step("i", &item.lock_token, &state);
        c.consumed = item.messages.iter().map(|(id, _)| *id).collect();
        for seq in 0..2 {
            c.activities.push(ActivityWorkItem {
                id: 0,
                instance_id: "i".into(),
                execution_id: state.execution_id.clone(),
                task_scheduled_id: seq,
                name: "act".into(),
                input: None,
                attempt: 1,
                lock_token: String::new(),
                dequeue_count: 0,
            });
        }
        let leased = store
            .commit_orchestration_and_lease(c, lease, 1, None)
            .await
            .unwrap();
        assert_eq!(leased.len(), 1, "as many as asked for");
        assert_eq!(leased[0].dequeue_count, 1);
        let queued = store.fetch_activity_work_items(lease, 10).await.unwrap();
        assert_eq!(queued.len(), 1, "the leased one is not in the queue");
        assert_eq!(queued[0].task_scheduled_id, 1);
        let a = leased[0].clone();
        let mut stale = a.clone();
        stale.lock_token = "stale".into();
        let len = |s: &SqliteStore| {
            let id = "i".to_string();
            let s = s.reader.clone();
            move || {
                let conn = s.lock().unwrap();
                conn.query_row(
                    "SELECT COUNT(*) FROM history WHERE instance_id = ?1",
                    params![id],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap() as u64
            }
        };
        let history_len = len(&store);
        let exec = state.execution_id.clone();

        // A result whose activity lease is gone is not leased with its instance.
        assert!(store
            .lease_instance_for_result(&stale, lease)
            .await
            .unwrap()
            .is_none());
        // Unleased commits are refused on a stale activity token or a history length
        // that moved, and change nothing.
        let n = history_len();
        for (act, expected) in [(&stale, n), (&a, n + 1)] {
            let r = store
                .commit_unleased(step("i", "", &state), &exec, expected, act, lease, 0)
                .await;
            assert_eq!(r, Err(StoreError::LockLost));
        }
        assert_eq!(history_len(), n);
        // ... or while a message waits for the instance, or while someone holds it.
        store
            .send_message(OrchestrationMessage::new(
                "i",
                HistoryEvent::new(Utc::now(), EventKind::OrchestratorStarted),
            ))
            .await
            .unwrap();
        let r = store
            .commit_unleased(step("i", "", &state), &exec, n, &a, lease, 0)
            .await;
        assert_eq!(r, Err(StoreError::LockLost));
        let held = store
            .fetch_orchestration_work_item(lease)
            .await
            .unwrap()
            .unwrap();
        let r = store
            .commit_unleased(step("i", "", &state), &exec, n, &a, lease, 0)
            .await;
        assert_eq!(r, Err(StoreError::LockLost));
        let mut c = step("i", &held.lock_token, &state);
        c.consumed = held.messages.iter().map(|(id, _)| *id).collect();
        store.commit_orchestration(c).await.unwrap();

        // Accepted when the instance is free and as expected; the activity is gone.
        let n = history_len();
        store
            .commit_unleased(step("i", "", &state), &exec, n, &a, lease, 0)
            .await
            .unwrap();
        assert_eq!(history_len(), n + 1);
        assert_eq!(
            store.complete_activity(&a, result_of(&a)).await,
            Err(StoreError::LockLost)
        );

        // A result leased with its instance; the commit deletes the activity.
        let b = queued[0].clone();
        let work = store
            .lease_instance_for_result(&b, lease)
            .await
            .unwrap()
            .expect("the instance is free");
        assert!(work.messages.is_empty());
        assert!(
            store
                .lease_instance_for_result(&b, lease)
                .await
                .unwrap()
                .is_none(),
            "the instance is held now"
        );
        store
            .commit_orchestration_and_lease(step("i", &work.lock_token, &state), lease, 0, Some(&b))
            .await
            .unwrap();
        assert_eq!(
            store.complete_activity(&b, result_of(&b)).await,
            Err(StoreError::LockLost)
        );
        assert!(store
            .fetch_activity_work_items(lease, 10)
            .await
            .unwrap()
            .is_empty());
    }

    /// SQLite rolls the whole transaction back when a statement finds the database full:
    /// the batch then fails as a whole, and no request of it runs outside the transaction
    /// (committed while its caller hears of a failure).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_sqlite_rolled_back_fails_as_a_whole() {
        let path = temp("rolled-back");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.execute_batch(&format!("PRAGMA max_page_count={}", pages + 4))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let mut replies = Vec::new();
        for (id, size) in [("a", 10), ("big", 200_000), ("c", 10)] {
            let (reply, answer) = oneshot::channel();
            let mut n = new_instance(id);
            n.input = Some("x".repeat(size));
            tx.send(Request {
                op: Op::Create(n),
                reply,
            })
            .unwrap();
            replies.push(answer);
        }
        // All three are waiting: the writer takes them as one batch.
        let writer = std::thread::spawn(move || {
            writer_loop(conn, rx, Arc::new(Shared::default()), Synchronous::Full)
        });
        for answer in replies {
            let e = answer.await.unwrap().err().expect("the batch failed");
            assert!(e.is_retryable(), "{e}");
            assert!(e.to_string().contains("full"), "{e}");
        }
        drop(tx);
        writer.join().unwrap();
        let conn = Connection::open(&path).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "nothing of the failed batch was committed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits() {
        let path = temp("group");
        let store = Arc::new(
            SqliteStore::builder(&path)
                .synchronous(Synchronous::Normal)
                .open()
                .unwrap(),
        );
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.create_instance(NewInstance {
                    instance_id: format!("i{i}"),
                    execution_id: "e".into(),
                    name: "orch".into(),
                    version: None,
                    input: None,
                    parent: None,
                    created_at: Utc::now(),
                    start_at: None,
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let page = store
            .list_instances(&InstanceFilter::default(), 1000, None)
            .await
            .unwrap();
        assert_eq!(page.items.len(), 200);
    }
}
