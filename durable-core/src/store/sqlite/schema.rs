//! The SQLite file itself: what opening checks (one store per file, durable's own file,
//! undamaged, writable, WAL with the chosen `synchronous`), the schema and its migrations,
//! and connection tuning. In: a path and options; out: a configured write connection.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{failed, sql, sql_in, Synchronous};
use crate::store::{StoreError, StoreResult};

/// The newest schema version this build understands.
pub const SCHEMA_VERSION: i64 = 8;

/// The tables of schema version 1 (leases were called locks then); version 2 migrates them.
pub(super) const SCHEMA_V1: &str = "CREATE TABLE instances(
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
            CREATE INDEX activities_instance ON activities(instance_id);";

/// Page cache of the writer connection, in KiB.
pub(super) const WRITER_CACHE_KIB: i64 = 8 * 1024;
/// Connections for point reads on the caller's thread.
pub(super) const POINT_READERS: usize = 2;
/// Page cache of each reader connection, in KiB.
pub(super) const READER_CACHE_KIB: i64 = 2 * 1024;
/// The writer checkpoints when the WAL reaches this many pages (SQLite's default). A
/// small WAL restarts from its beginning often, and overwriting WAL blocks makes each fsync
/// cheaper on ext4 than appending (new blocks, new size): measured 0.09 ms against 0.16-0.26
/// ms at the median here. (A separate checkpoint thread was tried and cost more than it
/// saved on two cores: its own fsyncs and CPU.)
pub(super) const AUTOCHECKPOINT_PAGES: u32 = 1000;

/// Performance settings that do not affect durability: page cache size and a statement
/// cache large enough for every statement the store uses.
pub(super) fn tune(conn: &Connection, cache_kib: i64) -> StoreResult<()> {
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(&format!("PRAGMA cache_size=-{cache_kib}"))
        .map_err(sql)
}

/// The `application_id` in the header of durable's databases ("DRBL").
pub const APPLICATION_ID: i32 = 0x4452_424c;

/// The tables of schema version 1, by which files from before the application id are known.
const TABLES: [&str; 4] = ["activities", "history", "instances", "messages"];

pub(super) fn unwritable(what: &str, why: impl std::fmt::Display) -> StoreError {
    failed(format!(
        "{what} cannot be written ({why}); durable needs to write the file, its -wal and -shm \
         files and their directory"
    ))
}

/// Takes `<db>.lock` for the store's life, so a second store on the same file, in this
/// process or another, is refused instead of running a second writer beside the first.
pub(super) fn lock(path: &Path, what: &str) -> StoreResult<std::fs::File> {
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
        Err(std::fs::TryLockError::WouldBlock) => Err(failed(format!(
            "{what} is already open in another durable host or store (its lock file {} is \
             held); one database file serves one host at a time",
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(failed(format!(
            "cannot open {what}: cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

/// Refuses a file that is not durable's: another application's database (its
/// `application_id`, or tables of its own) is left exactly as it was.
pub(super) fn check_owner(conn: &Connection, what: &str) -> StoreResult<()> {
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
    Err(failed(format!(
        "{what} is not a durable database (application_id {app_id}, user_version {version}, \
         tables: {shown}); it was left unchanged"
    )))
}

/// Refuses a damaged file at start rather than failing calls one by one later.
/// `quick_check` reads every page once (its time grows with the file) but skips
/// `integrity_check`'s index cross-checks.
pub(super) fn check_integrity(conn: &Connection, what: &str) -> StoreResult<()> {
    let damaged = |detail: String| {
        StoreError::corrupt(format!(
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

pub(super) fn configure(conn: &Connection, sync: Synchronous, what: &str) -> StoreResult<()> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| sql_in(format!("cannot switch {what} to WAL"), e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(failed(format!(
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
        return Err(failed(format!(
            "{what}: synchronous is {got}, expected {value} ({name})"
        )));
    }
    Ok(())
}

pub(super) fn migrate(conn: &mut Connection, what: &str) -> StoreResult<()> {
    let setup = |e| sql_in(format!("cannot set up {what}"), e);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(setup)?;
    if version > SCHEMA_VERSION {
        return Err(failed(format!(
            "{what} has schema version {version}; this build understands up to {SCHEMA_VERSION}. Upgrade durable to open it (the file was left unchanged)"
        )));
    }
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(setup)?;
    if version == SCHEMA_VERSION && app_id == APPLICATION_ID {
        return Ok(());
    }
    let tx = conn.transaction().map_err(setup)?;
    upgrade(&tx, version, SCHEMA_VERSION).map_err(setup)?;
    tx.execute_batch(&format!(
        "PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version={SCHEMA_VERSION}"
    ))
    .map_err(setup)?;
    tx.commit().map_err(setup)
}

/// Applies the schema changes after `version` up to and including version `to`.
pub(super) fn upgrade(tx: &Connection, version: i64, to: i64) -> rusqlite::Result<()> {
    if version < 1 && to >= 1 {
        tx.execute_batch(SCHEMA_V1)?;
    }
    if version < 2 && to >= 2 {
        // Version 2: a worker's hold on a work item is a lease, recorded with its owner.
        // No index on the owner: only `release_leases` (start-up and shutdown) looks
        // leases up by owner, and an index would cost every lease taken and given back.
        tx.execute_batch(
            "ALTER TABLE instances RENAME COLUMN lock_token TO lease_token;
            ALTER TABLE instances RENAME COLUMN locked_until TO lease_expires_at;
            ALTER TABLE instances ADD COLUMN lease_owner TEXT;
            DROP INDEX instances_locked;
            CREATE INDEX instances_leased ON instances(lease_expires_at)
                WHERE lease_expires_at IS NOT NULL;
            ALTER TABLE activities RENAME COLUMN lock_token TO lease_token;
            ALTER TABLE activities ADD COLUMN lease_owner TEXT;",
        )?;
    }
    if version < 3 && to >= 3 {
        // Version 3: instances count their hand-outs since the last commit (poison
        // episodes); a commit resets the count.
        tx.execute_batch(
            "ALTER TABLE instances ADD COLUMN dequeue_count INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    if version < 4 && to >= 4 {
        // Version 4: listings filtered by status read the index in their order
        // (`ORDER BY created_at, id`) and stop after a page, instead of sorting every
        // instance with that status; the index replaces the one on status alone. Creating
        // it reads the table once.
        tx.execute_batch(
            "CREATE INDEX IF NOT EXISTS instances_status_created
                ON instances(status, created_at, id);
            DROP INDEX IF EXISTS instances_status;",
        )?;
    }
    if version < 5 && to >= 5 {
        // Version 5: a running activity's latest heartbeat details, written with its lease
        // renewals (a column of their own, so frequent writes do not rewrite the item and
        // its input); a later hand-out of the item prefers them to the item's own.
        tx.execute_batch("ALTER TABLE activities ADD COLUMN heartbeat_details TEXT;")?;
    }
    if version < 6 && to >= 6 {
        // Version 6: one history row per episode, its events in a compact encoding (a
        // blob), instead of one JSON row per event. Existing rows stay as they are (a
        // JSON text value is one event) and are read in order with the new ones, so
        // migrating rewrites nothing, whatever the file's size.
        tx.execute_batch("ALTER TABLE history RENAME COLUMN event TO events;")?;
    }
    if version < 7 && to >= 7 {
        // Version 7: children by their parent's instance id, so a purge by filter finds
        // the sub-orchestrations of the instances it deletes (parent-close policy) with
        // one index probe each. Partial: only sub-orchestrations have a parent, so
        // top-level instances cost the index nothing. Creating it reads the table once.
        tx.execute_batch(
            "CREATE INDEX IF NOT EXISTS instances_parent
                ON instances(json_extract(parent, '$.instance_id')) WHERE parent IS NOT NULL;",
        )?;
    }
    if version < 8 && to >= 8 {
        // Version 8: a listing with an id prefix reads the ids, statuses and creation times
        // of the instances with that prefix from one index (a range of it, in id order),
        // filters and sorts them there, and reads only the page's rows from the table;
        // before, every instance with the prefix was read from the table. A status change
        // that keeps the creation time updates this index instead of `instances_created`.
        // Creating it reads the table once.
        tx.execute_batch(
            "CREATE INDEX IF NOT EXISTS instances_id_status_created
                ON instances(id, status, created_at);",
        )?;
    }
    Ok(())
}
