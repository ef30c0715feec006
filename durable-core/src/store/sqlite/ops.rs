//! The store's operations as SQL, each a function over a connection: run by the writer
//! thread inside a batch's transaction (writes, which report what they woke in a [`Wake`])
//! or on a reader connection (reads). Times are store-clock Unix microseconds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use rusqlite::types::ValueRef;

use super::writer::{exec_cached, Wake};
use super::{from_json, from_micros, micros, sql, to_json};
use crate::history::{FailureDetails, HistoryEvent, OrchestrationMessage, ParentInstance};
use crate::instance::{InstanceFilter, InstanceState, NewInstance, RuntimeStatus};
use crate::store::activity_row::{self, ActivityRow, RowColumns};
use crate::store::episode;
use crate::store::{
    child_conflict_message, purged_with_parents, random_id, ActivityCall, ActivityHeartbeat,
    ActivityWorkItem, HistoryUpdate, OrchestrationCommit, OrchestrationWorkItem, PendingWork,
    StoreError, StoreResult, WorkerId, MAX_MESSAGES_PER_WORK_ITEM,
};

/// `now + d` in microseconds, saturating.
pub(super) fn plus(now: i64, d: Duration) -> i64 {
    now.saturating_add(d.as_micros().min(i64::MAX as u128 / 2) as i64)
}

/// Where a commit's new activities go: up to `max` leased to `owner` for `lease`.
pub(super) struct Direct {
    pub owner: WorkerId,
    pub lease: Duration,
    pub max: usize,
}

/// How a commit proves it may change the instance.
pub(super) enum Fence<'a> {
    /// The lease's token.
    Token,
    /// No lease: the instance must be free, on this execution, with this many events and
    /// no waiting messages.
    Unleased {
        execution_id: &'a str,
        history_len: u64,
    },
}

pub(super) fn exists(conn: &Connection, id: &str) -> StoreResult<bool> {
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

pub(super) fn purge(conn: &Connection, id: &str) -> StoreResult<bool> {
    let delete = |text: &str| {
        conn.prepare_cached(text)
            .and_then(|mut s| s.execute(params![id]))
            .map_err(sql)
    };
    let n = delete("DELETE FROM instances WHERE id = ?1")?;
    delete("DELETE FROM history WHERE instance_id = ?1")?;
    delete("DELETE FROM messages WHERE instance_id = ?1")?;
    delete("DELETE FROM activities WHERE instance_id = ?1")?;
    Ok(n > 0)
}

pub(super) fn create(conn: &Connection, n: &NewInstance, w: &mut Wake) -> StoreResult<()> {
    if let Some(status) = status_of(conn, &n.instance_id)? {
        if !status.is_terminal() {
            return Err(StoreError::already_exists(n.instance_id.clone(), status));
        }
        for text in [
            "DELETE FROM history WHERE instance_id = ?1",
            "DELETE FROM messages WHERE instance_id = ?1",
            "DELETE FROM instances WHERE id = ?1",
        ] {
            conn.prepare_cached(text)
                .and_then(|mut s| s.execute(params![n.instance_id]))
                .map_err(sql)?;
        }
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
    /// Every column but `created_at`, which did not change (the index on
    /// `(created_at, id)` stays untouched).
    UpdateStatus,
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
            created_at, last_updated_at, parent, lease_token, lease_expires_at, lease_owner, history_len)
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL, NULL, NULL, ?13)",
        WriteState::Update => "UPDATE instances SET execution_id = ?2, name = ?3, version = ?4, status = ?5, input = ?6, output = ?7,
            failure = ?8, custom_status = ?9, created_at = ?10, last_updated_at = ?11, parent = ?12,
            lease_token = NULL, lease_expires_at = NULL, lease_owner = NULL, history_len = ?13,
            dequeue_count = 0
         WHERE id = ?1",
        WriteState::UpdateStatus => "UPDATE instances SET execution_id = ?2, name = ?3, version = ?4, status = ?5, input = ?6, output = ?7,
            failure = ?8, custom_status = ?9, last_updated_at = ?11, parent = ?12,
            lease_token = NULL, lease_expires_at = NULL, lease_owner = NULL, history_len = ?13,
            dequeue_count = 0
         WHERE id = ?1",
        WriteState::UpdateUnindexed => "UPDATE instances SET execution_id = ?2, name = ?3, version = ?4, input = ?6, output = ?7,
            failure = ?8, custom_status = ?9, last_updated_at = ?11, parent = ?12,
            lease_token = NULL, lease_expires_at = NULL, lease_owner = NULL, history_len = ?13,
            dequeue_count = 0
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

pub(super) fn insert_message(
    conn: &Connection,
    m: &OrchestrationMessage,
    w: &mut Wake,
) -> StoreResult<()> {
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

pub(super) fn get_state(conn: &Connection, id: &str) -> StoreResult<Option<(InstanceState, i64)>> {
    conn.prepare_cached(&format!(
        "SELECT {STATE_COLUMNS} FROM instances WHERE id = ?1"
    ))
    .and_then(|mut s| s.query_row(params![id], read_state).optional())
    .map_err(sql)
}

/// Instances with a due message and no live lease, and activities due and not leased (a
/// leased activity is visible again only when its lease expires).
pub(super) fn pending_work(conn: &Connection, now: i64) -> StoreResult<PendingWork> {
    let count = |query: &str| -> StoreResult<u64> {
        let n: i64 = conn
            .prepare_cached(query)
            .and_then(|mut s| s.query_row(params![now], |r| r.get(0)))
            .map_err(sql)?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    Ok(PendingWork {
        orchestrations: count(
            "SELECT COUNT(DISTINCT m.instance_id) FROM messages m JOIN instances i ON i.id = m.instance_id
             WHERE m.visible_at <= ?1 AND (i.lease_expires_at IS NULL OR i.lease_expires_at <= ?1)",
        )?,
        activities: count("SELECT COUNT(*) FROM activities WHERE visible_at <= ?1")?,
    })
}

/// Leases an instance that no one holds, with all its visible messages.
pub(super) fn lease_instance(
    conn: &Connection,
    id: &str,
    now: i64,
    owner: &WorkerId,
    lease: Duration,
) -> StoreResult<Option<OrchestrationWorkItem>> {
    let token = random_id();
    let dequeue_count: Option<i64> = conn
        .prepare_cached(
            "UPDATE instances SET lease_token = ?1, lease_expires_at = ?2, lease_owner = ?5,
                dequeue_count = dequeue_count + 1
             WHERE id = ?3 AND (lease_expires_at IS NULL OR lease_expires_at <= ?4)
             RETURNING dequeue_count",
        )
        .and_then(|mut s| {
            s.query_row(
                params![token, plus(now, lease), id, now, owner.as_str()],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(sql)?;
    let Some(dequeue_count) = dequeue_count else {
        return Ok(None);
    };
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
        lease_token: token,
        messages,
        state,
        history_len: history_len as u64,
        dequeue_count: u32::try_from(dequeue_count).unwrap_or(u32::MAX),
    }))
}

/// Applies a commit; leases up to `max_leased` of its new activities to the caller.
pub(super) fn commit(
    conn: &Connection,
    c: &OrchestrationCommit,
    w: &mut Wake,
    now: i64,
    direct: Option<&Direct>,
    completed: Option<&ActivityWorkItem>,
    fence: Fence<'_>,
) -> StoreResult<Vec<ActivityWorkItem>> {
    type Current = (
        Option<String>,
        i64,
        String,
        i64,
        Option<i64>,
        String,
        bool,
        bool,
    );
    let (new_input, new_output) = match &c.state {
        Some(s) => (s.input.as_deref(), s.output.as_deref()),
        None => (None, None),
    };
    // The last two: whether the stored input and output stay as they are (or are absent),
    // so the history rows that refer to them stay true.
    let current: Option<Current> = conn
        .prepare_cached(
            "SELECT lease_token, history_len, status, created_at, lease_expires_at, execution_id,
                input IS NULL OR input IS ?2, output IS NULL OR output IS ?3
             FROM instances WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![c.instance_id, new_input, new_output], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })
            .optional()
        })
        .map_err(sql)?;
    let Some((
        token,
        mut history_len,
        old_status,
        old_created,
        lease_expires_at,
        execution,
        input_kept,
        output_kept,
    )) = current
    else {
        return Err(StoreError::lease_lost());
    };
    match fence {
        Fence::Token => {
            if token.as_deref() != Some(c.lease_token.as_str()) {
                return Err(StoreError::lease_lost());
            }
        }
        Fence::Unleased {
            execution_id,
            history_len: expected,
        } => {
            let free = token.is_none() || lease_expires_at.is_none_or(|t| t <= now);
            let waiting = conn
                .prepare_cached(
                    "SELECT 1 FROM messages WHERE instance_id = ?1 AND visible_at <= ?2 LIMIT 1",
                )
                .and_then(|mut s| s.exists(params![c.instance_id, now]))
                .map_err(sql)?;
            if !free || waiting || execution != execution_id || history_len as u64 != expected {
                return Err(StoreError::lease_lost());
            }
        }
    }
    if let Some(a) = completed {
        // The first write: refused with nothing written when the activity's lease is gone.
        let n = conn
            .prepare_cached("DELETE FROM activities WHERE id = ?1 AND lease_token = ?2")
            .and_then(|mut s| s.execute(params![a.id as i64, a.lease_token]))
            .map_err(sql)?;
        if n == 0 {
            return Err(StoreError::lease_lost());
        }
    }
    cancel_activities(conn, &c.instance_id, &c.cancelled_activities)?;
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
        HistoryUpdate::Append(e) => {
            if c.state.is_some()
                && !(input_kept && output_kept)
                && history_len > 0
                && episode::refers_to_payloads(&c.instance_id)
            {
                // The payloads change under a kept history: rows referring to the old
                // ones get their values first.
                materialize(conn, &c.instance_id)?;
            }
            e
        }
        HistoryUpdate::Replace(e) => {
            conn.prepare_cached("DELETE FROM history WHERE instance_id = ?1")
                .and_then(|mut s| s.execute(params![c.instance_id]))
                .map_err(sql)?;
            history_len = 0;
            e
        }
    };
    if !events.is_empty() {
        // One row for the episode's events. Entities' records change every episode, so
        // their rows never refer to the instance row.
        let refs = match &c.state {
            Some(_) if episode::refers_to_payloads(&c.instance_id) => episode::Payloads {
                input: new_input,
                output: new_output,
            },
            _ => episode::Payloads::default(),
        };
        let row = episode::encode(events, refs)?;
        conn.prepare_cached("INSERT INTO history(instance_id, seq, events) VALUES(?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![c.instance_id, history_len, row]))
            .map_err(sql)?;
        history_len += events.len() as i64;
    }
    match &c.state {
        Some(state) => {
            let same_status = state.status.as_str() == old_status;
            let mode = match (same_status, micros(state.created_at) == old_created) {
                (true, true) => WriteState::UpdateUnindexed,
                (false, true) => WriteState::UpdateStatus,
                _ => WriteState::Update,
            };
            write_state(conn, state, history_len, mode)?;
            w.instances.push(c.instance_id.clone());
        }
        None => {
            conn.prepare_cached(
                "UPDATE instances SET lease_token = NULL, lease_expires_at = NULL, lease_owner = NULL, history_len = ?1, dequeue_count = 0 WHERE id = ?2",
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
            .prepare_cached("INSERT INTO activities(instance_id, item, lease_token, lease_owner, visible_at, dequeue_count) VALUES(?1, ?2, ?3, ?4, ?5, ?6)")
            .map_err(sql)?;
        for a in &c.activities {
            let row = to_json(&ActivityRow::scheduled(a, from_micros(now)))?;
            match direct {
                Some(d) if leased.len() < d.max => {
                    let token = random_id();
                    ins.execute(params![
                        a.instance_id,
                        row,
                        token,
                        d.owner.as_str(),
                        plus(now, d.lease),
                        1
                    ])
                    .map_err(sql)?;
                    leased.push(ActivityWorkItem {
                        id: conn.last_insert_rowid() as u64,
                        lease_token: token,
                        dequeue_count: 1,
                        scheduled_at: Some(from_micros(now)),
                        ..a.clone()
                    });
                }
                _ => {
                    ins.execute(params![
                        a.instance_id,
                        row,
                        None::<String>,
                        None::<String>,
                        0,
                        0
                    ])
                    .map_err(sql)?;
                    w.activities = true;
                }
            }
        }
    }
    for child in &c.new_instances {
        match status_of(conn, &child.instance_id)? {
            Some(status) if !status.is_terminal() => {
                if let Some(msg) = child_conflict_message(child, status, from_micros(now)) {
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

/// Deletes the work items of `calls` (activity calls of `instance_id`), queued or
/// running: the item's sequence number and execution are in its stored form, so the
/// instance's items are read and matched.
fn cancel_activities(
    conn: &Connection,
    instance_id: &str,
    calls: &[ActivityCall],
) -> StoreResult<()> {
    if calls.is_empty() {
        return Ok(());
    }
    let rows: Vec<(i64, String)> = conn
        .prepare_cached("SELECT id, item FROM activities WHERE instance_id = ?1")
        .and_then(|mut s| {
            s.query_map(params![instance_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(sql)?;
    let mut del = conn
        .prepare_cached("DELETE FROM activities WHERE id = ?1")
        .map_err(sql)?;
    for (id, item) in rows {
        let row: ActivityRow = from_json(&item)?;
        if calls
            .iter()
            .any(|c| c.seq == row.seq && c.execution_id == row.execution_id)
        {
            del.execute(params![id]).map_err(sql)?;
        }
    }
    Ok(())
}

pub(super) fn fetch_activities(
    conn: &Connection,
    now: i64,
    owner: &WorkerId,
    lease: Duration,
    max: usize,
) -> StoreResult<Vec<ActivityWorkItem>> {
    type Fetched = (i64, String, String, i64, Option<String>);
    let rows: Vec<Fetched> = {
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, instance_id, item, dequeue_count, heartbeat_details FROM activities WHERE visible_at <= ?1 ORDER BY visible_at, id LIMIT ?2",
            )
            .map_err(sql)?;
        let it = stmt
            .query_map(params![now, max as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(sql)?;
        it.collect::<Result<_, _>>().map_err(sql)?
    };
    let until = plus(now, lease);
    let mut out = Vec::with_capacity(rows.len());
    let mut upd = conn
        .prepare_cached("UPDATE activities SET lease_token = ?1, lease_owner = ?5, visible_at = ?2, dequeue_count = ?3 WHERE id = ?4")
        .map_err(sql)?;
    for (id, instance_id, item, dequeue, beat) in rows {
        let row: ActivityRow = from_json(&item)?;
        let token = random_id();
        let dequeue_count = dequeue as u32 + 1;
        upd.execute(params![token, until, dequeue_count, id, owner.as_str()])
            .map_err(sql)?;
        out.push(row.into_item(RowColumns {
            id: id as u64,
            instance_id,
            lease_token: token,
            dequeue_count,
            heartbeat_details: beat,
        }));
    }
    Ok(out)
}

/// The WHERE clause (`WHERE ...` or empty) and arguments of a listing filter, after the
/// continuation token. With an id prefix the prefix is a range of the index on
/// `(id, status, created_at)`, which also holds what the other conditions and the order
/// need (kept off their own indexes with `+column`), so the cost follows the instances
/// with that prefix, not all those stored, and no row is read to find the page; without
/// one, status and creation
/// time use the index on `(status, created_at, id)` or `(created_at, id)`, read in the
/// listing's order.
pub(super) fn filter_sql(
    filter: &InstanceFilter,
    token: Option<(DateTime<Utc>, String)>,
) -> (String, Vec<rusqlite::types::Value>) {
    let mut clauses = Vec::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let off = if filter.instance_id_prefix.is_some() {
        "+"
    } else {
        ""
    };
    if !filter.statuses.is_empty() {
        let marks: Vec<String> = filter
            .statuses
            .iter()
            .map(|s| {
                args.push(s.as_str().to_string().into());
                format!("?{}", args.len())
            })
            .collect();
        clauses.push(format!("{off}status IN ({})", marks.join(",")));
    }
    if let Some(t) = filter.created_from {
        args.push(micros(t).into());
        clauses.push(format!("{off}created_at >= ?{}", args.len()));
    }
    if let Some(t) = filter.created_to {
        args.push(micros(t).into());
        clauses.push(format!("{off}created_at <= ?{}", args.len()));
    }
    if let Some(p) = &filter.instance_id_prefix {
        args.push(p.clone().into());
        let n = args.len();
        clauses.push(format!("id >= ?{n} AND substr(id, 1, length(?{n})) = ?{n}"));
        if let Some(upper) = crate::store::prefix_upper_bound(p) {
            args.push(upper.into());
            clauses.push(format!("id < ?{}", args.len()));
        }
    }
    if let Some((t, id)) = token {
        args.push(micros(t).into());
        let a = args.len();
        args.push(id.into());
        let b = args.len();
        clauses.push(format!("({off}created_at, id) > (?{a}, ?{b})"));
    }
    let where_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    (where_sql, args)
}

/// The query of a listing page (one row more than the page, to tell whether there is a
/// next one) and its arguments.
pub(super) fn list_sql(
    filter: &InstanceFilter,
    page_size: usize,
    token: Option<(DateTime<Utc>, String)>,
) -> (String, Vec<rusqlite::types::Value>) {
    let (where_sql, args) = filter_sql(filter, token);
    let limit = page_size.max(1).saturating_add(1).min(i64::MAX as usize);
    let text = if filter.instance_id_prefix.is_some() {
        // Every instance with the prefix is sorted to find the page: their row ids,
        // statuses and creation times come from the index on `(id, status, created_at)`
        // (no table reads), then only the page's rows are read.
        format!(
            "SELECT {STATE_COLUMNS} FROM instances WHERE rowid IN (
                 SELECT rowid FROM instances {where_sql} ORDER BY created_at, id LIMIT {limit})
             ORDER BY created_at, id"
        )
    } else {
        format!(
            "SELECT {STATE_COLUMNS} FROM instances {where_sql} ORDER BY created_at, id LIMIT {limit}"
        )
    };
    (text, args)
}

pub(super) fn list(
    conn: &Connection,
    filter: &InstanceFilter,
    page_size: usize,
    token: Option<(DateTime<Utc>, String)>,
) -> StoreResult<(Vec<InstanceState>, bool)> {
    let (text, args) = list_sql(filter, page_size, token);
    let mut stmt = conn.prepare_cached(&text).map_err(sql)?;
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

/// Enqueues a message for an existing instance.
pub(super) fn send(conn: &Connection, m: &OrchestrationMessage, w: &mut Wake) -> StoreResult<()> {
    if !exists(conn, &m.instance_id)? {
        return Err(StoreError::not_found(m.instance_id.clone()));
    }
    insert_message(conn, m, w)
}

/// Leases up to `max` instances with visible messages, oldest message first.
///
/// One scan of the visible messages finds the instances (messages of instances held by a
/// lease are passed over once, not once per instance leased), then each is leased.
pub(super) fn fetch_orchestrations(
    conn: &Connection,
    now: i64,
    owner: &WorkerId,
    lease: Duration,
    max: usize,
) -> StoreResult<Vec<OrchestrationWorkItem>> {
    let mut ids: Vec<String> = Vec::new();
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT m.instance_id FROM messages m JOIN instances i ON i.id = m.instance_id
                 WHERE m.visible_at <= ?1 AND (i.lease_expires_at IS NULL OR i.lease_expires_at <= ?1)
                 ORDER BY m.visible_at, m.id",
            )
            .map_err(sql)?;
        let mut rows = stmt.query(params![now]).map_err(sql)?;
        while ids.len() < max {
            let Some(row) = rows.next().map_err(sql)? else {
                break;
            };
            let id: String = row.get(0).map_err(sql)?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let mut items = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(item) = lease_instance(conn, &id, now, owner, lease)? {
            items.push(item);
        }
    }
    Ok(items)
}

/// Leases the instance of a still-leased activity (lease bookkeeping only).
pub(super) fn lease_for_result(
    conn: &Connection,
    now: i64,
    item: &ActivityWorkItem,
    owner: &WorkerId,
    lease: Duration,
) -> StoreResult<Option<OrchestrationWorkItem>> {
    let held = conn
        .prepare_cached("SELECT 1 FROM activities WHERE id = ?1 AND lease_token = ?2")
        .and_then(|mut s| s.exists(params![item.id as i64, item.lease_token]))
        .map_err(sql)?;
    if !held {
        return Ok(None);
    }
    lease_instance(conn, &item.instance_id, now, owner, lease)
}

/// Releases an instance's lease; with a delay, the instance stays held (by no one) until
/// then.
pub(super) fn abandon_orchestration(
    conn: &Connection,
    now: i64,
    id: &str,
    token: &str,
    delay: Duration,
    w: &mut Wake,
) -> StoreResult<()> {
    let until: Option<i64> = (!delay.is_zero()).then(|| plus(now, delay));
    let new_token: Option<String> = until.map(|_| random_id());
    let n = conn
        .prepare_cached(
            "UPDATE instances SET lease_token = ?1, lease_expires_at = ?2, lease_owner = NULL,
                dequeue_count = max(dequeue_count - 1, 0)
             WHERE id = ?3 AND lease_token = ?4 AND lease_owner IS NOT NULL",
        )
        .and_then(|mut s| s.execute(params![new_token, until, id, token]))
        .map_err(sql)?;
    if n == 0 {
        return Err(StoreError::lease_lost());
    }
    w.orchestrations = true;
    Ok(())
}

/// Extends an instance's lease.
pub(super) fn renew_orchestration(
    conn: &Connection,
    now: i64,
    id: &str,
    token: &str,
    lease: Duration,
) -> StoreResult<()> {
    let n = conn
        .prepare_cached(
            "UPDATE instances SET lease_expires_at = ?1
             WHERE id = ?2 AND lease_token = ?3 AND lease_owner IS NOT NULL",
        )
        .and_then(|mut s| s.execute(params![plus(now, lease), id, token]))
        .map_err(sql)?;
    if n == 0 {
        return Err(StoreError::lease_lost());
    }
    Ok(())
}

/// Deletes a leased activity and enqueues its result; with `fetch`, also leases its
/// instance when it is free.
pub(super) fn complete_activity(
    conn: &Connection,
    now: i64,
    item: &ActivityWorkItem,
    msg: &OrchestrationMessage,
    fetch: Option<(&WorkerId, Duration)>,
    w: &mut Wake,
) -> StoreResult<Option<OrchestrationWorkItem>> {
    let n = conn
        .prepare_cached("DELETE FROM activities WHERE id = ?1 AND lease_token = ?2")
        .and_then(|mut s| s.execute(params![item.id as i64, item.lease_token]))
        .map_err(sql)?;
    if n == 0 {
        return Err(StoreError::lease_lost());
    }
    if !exists(conn, &msg.instance_id)? {
        return Ok(None);
    }
    insert_message(conn, msg, w)?;
    if let Some((owner, lease)) = fetch {
        if let Some(work) = lease_instance(conn, &msg.instance_id, now, owner, lease)? {
            // The caller runs the episode; no dispatcher needs waking for it.
            w.orchestrations = false;
            return Ok(Some(work));
        }
    }
    Ok(None)
}

/// Extends an activity's lease.
pub(super) fn renew_activity(
    conn: &Connection,
    now: i64,
    item: &ActivityWorkItem,
    lease: Duration,
) -> StoreResult<()> {
    let n = conn
        .prepare_cached("UPDATE activities SET visible_at = ?1 WHERE id = ?2 AND lease_token = ?3")
        .and_then(|mut s| s.execute(params![plus(now, lease), item.id as i64, item.lease_token]))
        .map_err(sql)?;
    if n == 0 {
        return Err(StoreError::lease_lost());
    }
    Ok(())
}

/// The queued or running activities of `instance_id` with heartbeat details, by sequence.
pub(super) fn activity_heartbeats(
    conn: &Connection,
    instance_id: &str,
) -> StoreResult<Vec<ActivityHeartbeat>> {
    let mut stmt = conn
        .prepare_cached("SELECT item, heartbeat_details FROM activities WHERE instance_id = ?1")
        .map_err(sql)?;
    let rows: Vec<(String, Option<String>)> = stmt
        .query_map(params![instance_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)?;
    let rows = rows
        .into_iter()
        .map(|(item, beat)| Ok((from_json::<ActivityRow>(&item)?, beat)))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(activity_row::heartbeats(rows))
}

/// Extends an activity's lease and stores its latest heartbeat details. Fenced.
pub(super) fn renew_activity_with_heartbeat(
    conn: &Connection,
    now: i64,
    item: &ActivityWorkItem,
    lease: Duration,
    details: &str,
) -> StoreResult<()> {
    let n = conn
        .prepare_cached(
            "UPDATE activities SET visible_at = ?1, heartbeat_details = ?4 WHERE id = ?2 AND lease_token = ?3",
        )
        .and_then(|mut s| {
            s.execute(params![
                plus(now, lease),
                item.id as i64,
                item.lease_token,
                details
            ])
        })
        .map_err(sql)?;
    if n == 0 {
        return Err(StoreError::lease_lost());
    }
    Ok(())
}

/// Releases an activity's lease; visible again after `delay`.
pub(super) fn abandon_activity(
    conn: &Connection,
    now: i64,
    item: &ActivityWorkItem,
    delay: Duration,
    w: &mut Wake,
) -> StoreResult<()> {
    let n = conn
        .prepare_cached(
            "UPDATE activities SET visible_at = ?1, lease_token = NULL, lease_owner = NULL
             WHERE id = ?2 AND lease_token = ?3",
        )
        .and_then(|mut s| s.execute(params![plus(now, delay), item.id as i64, item.lease_token]))
        .map_err(sql)?;
    if n == 0 {
        return Err(StoreError::lease_lost());
    }
    w.activities = true;
    Ok(())
}

/// Gives back every lease `owner` holds; returns how many.
pub(super) fn release_leases(
    conn: &Connection,
    now: i64,
    owner: &WorkerId,
    w: &mut Wake,
) -> StoreResult<u64> {
    let instances = conn
        .prepare_cached(
            "UPDATE instances SET lease_token = NULL, lease_expires_at = NULL, lease_owner = NULL
             WHERE lease_owner = ?1",
        )
        .and_then(|mut s| s.execute(params![owner.as_str()]))
        .map_err(sql)?;
    let activities = conn
        .prepare_cached(
            "UPDATE activities SET lease_token = NULL, lease_owner = NULL, visible_at = ?2
             WHERE lease_owner = ?1",
        )
        .and_then(|mut s| s.execute(params![owner.as_str(), now]))
        .map_err(sql)?;
    w.orchestrations |= instances > 0;
    w.activities |= activities > 0;
    Ok((instances + activities) as u64)
}

/// Gives back every lease anyone holds (not the holds of delayed abandons, which have no
/// owner); returns how many. For opening: the store holds the file alone, so every lease
/// found then was left by a process that is gone.
pub(super) fn release_all_leases(conn: &Connection, now: i64) -> StoreResult<u64> {
    let instances = conn
        .execute(
            "UPDATE instances SET lease_token = NULL, lease_expires_at = NULL, lease_owner = NULL
             WHERE lease_owner IS NOT NULL",
            [],
        )
        .map_err(sql)?;
    let activities = conn
        .execute(
            "UPDATE activities SET lease_token = NULL, lease_owner = NULL, visible_at = ?1
             WHERE lease_owner IS NOT NULL",
            params![now],
        )
        .map_err(sql)?;
    Ok((instances + activities) as u64)
}

/// Deletes up to `batch` finished instances matching `filter` and, by the parent-close
/// policy, the sub-orchestrations they started (see `purged_with_parents`), with their
/// history, messages and activities, set-based. Returns how many matched the filter and
/// how many were deleted in all. Run again until fewer than `batch` match: each run reads
/// only instances still stored, so no continuation is kept, and an instance deleted as a
/// child is not found (nor counted) again.
pub(super) fn purge_batch(
    conn: &Connection,
    filter: &InstanceFilter,
    batch: usize,
    w: &mut Wake,
) -> StoreResult<(u64, u64)> {
    // Finished statuses only, in the query itself: every instance it returns is deleted,
    // and `(status, created_at, id)` serves a time range without reading the rows.
    let finished: Vec<RuntimeStatus> = RuntimeStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .filter(|s| filter.statuses.is_empty() || filter.statuses.contains(s))
        .collect();
    if finished.is_empty() || batch == 0 {
        return Ok((0, 0));
    }
    let filter = InstanceFilter {
        statuses: finished,
        ..filter.clone()
    };
    let (where_sql, args) = filter_sql(&filter, None);
    let mut ids: Vec<String> = conn
        .prepare_cached(&format!(
            "SELECT id FROM instances {where_sql} LIMIT {}",
            batch.min(i64::MAX as usize)
        ))
        .and_then(|mut s| {
            s.query_map(rusqlite::params_from_iter(args), |r| r.get(0))?
                .collect()
        })
        .map_err(sql)?;
    if ids.is_empty() {
        return Ok((0, 0));
    }
    let matched = ids.len() as u64;
    let children = purged_with_parents(
        &ids,
        |level| children_of(conn, level),
        |parent| read_history_in(conn, parent),
    )?;
    ids.extend(children);
    let list = to_json(&ids)?;
    for text in [
        "DELETE FROM history WHERE instance_id IN (SELECT value FROM json_each(?1))",
        "DELETE FROM messages WHERE instance_id IN (SELECT value FROM json_each(?1))",
        "DELETE FROM activities WHERE instance_id IN (SELECT value FROM json_each(?1))",
        "DELETE FROM instances WHERE id IN (SELECT value FROM json_each(?1))",
    ] {
        conn.prepare_cached(text)
            .and_then(|mut s| s.execute(params![list]))
            .map_err(sql)?;
    }
    let n = ids.len() as u64;
    w.instances.extend(ids);
    Ok((matched, n))
}

/// The statement finding the instances whose parent is one of a JSON array of ids,
/// through the index `instances_parent`: `(child id, parent id)` rows.
pub(super) const CHILDREN_OF: &str =
    "SELECT id, json_extract(parent, '$.instance_id') FROM instances
     WHERE parent IS NOT NULL
       AND json_extract(parent, '$.instance_id') IN (SELECT value FROM json_each(?1))";

/// `(child, parent)` for every instance whose parent is one of `parents`.
fn children_of(conn: &Connection, parents: &[String]) -> StoreResult<Vec<(String, String)>> {
    let list = to_json(&parents)?;
    conn.prepare_cached(CHILDREN_OF)
        .and_then(|mut s| {
            s.query_map(params![list], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(sql)
}

/// The earliest store-clock time after `now` at which delayed work or a lapsing lease
/// makes work visible.
pub(super) fn next_due(conn: &Connection, now: i64) -> StoreResult<Option<DateTime<Utc>>> {
    let t: Option<i64> = conn
        .prepare_cached(
            "SELECT MIN(t) FROM (
                SELECT MIN(visible_at) AS t FROM messages WHERE visible_at > ?1
                UNION ALL SELECT MIN(lease_expires_at) FROM instances WHERE lease_expires_at > ?1
                UNION ALL SELECT MIN(visible_at) FROM activities WHERE visible_at > ?1)",
        )
        .and_then(|mut s| s.query_row(params![now], |r| r.get(0)))
        .map_err(sql)?;
    Ok(t.map(from_micros))
}

/// The history of the instance's current execution, in order.
pub(super) fn read_history(conn: &Connection, id: &str) -> StoreResult<Vec<HistoryEvent>> {
    // One snapshot for the rows and the instance payloads they refer to.
    exec_cached(conn, "BEGIN").map_err(sql)?;
    let out = read_history_in(conn, id);
    let end = exec_cached(conn, "COMMIT").map_err(sql);
    let out = out?;
    end?;
    Ok(out)
}

fn read_history_in(conn: &Connection, id: &str) -> StoreResult<Vec<HistoryEvent>> {
    let mut payloads: Option<(Option<String>, Option<String>)> = None;
    let mut payload = |which: episode::Payload| -> StoreResult<Option<String>> {
        if payloads.is_none() {
            payloads = conn
                .prepare_cached("SELECT input, output FROM instances WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(sql)?;
        }
        Ok(payloads
            .as_ref()
            .and_then(|(input, output)| which.of(input, output)))
    };
    let mut stmt = conn
        .prepare_cached("SELECT events FROM history WHERE instance_id = ?1 ORDER BY seq")
        .map_err(sql)?;
    let mut rows = stmt.query(params![id]).map_err(sql)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        match row.get_ref(0).map_err(sql)? {
            // Schema version 5 and before: one event as JSON.
            ValueRef::Text(t) => {
                let text = std::str::from_utf8(t).map_err(|e| {
                    StoreError::corrupt("a stored event is not UTF-8").with_source(e)
                })?;
                out.push(from_json(text)?);
            }
            ValueRef::Blob(b) => episode::decode(b, &mut out, &mut payload)?,
            _ => return Err(StoreError::corrupt("a history row holds no events")),
        }
    }
    Ok(out)
}

/// Writes the instance's current input and output into the history rows that refer to
/// them, before a commit changes them under a kept history. Rare: an orchestration's
/// input does not change within an execution, nor its output once it is set.
fn materialize(conn: &Connection, id: &str) -> StoreResult<()> {
    let (input, output): (Option<String>, Option<String>) = conn
        .prepare_cached("SELECT input, output FROM instances WHERE id = ?1")
        .and_then(|mut s| s.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(sql)?;
    let rows: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT seq, events FROM history WHERE instance_id = ?1 AND typeof(events) = 'blob'",
        )
        .and_then(|mut s| {
            s.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(sql)?;
    for (seq, bytes) in rows {
        if let Some(row) = episode::without_references(&bytes, &input, &output)? {
            conn.prepare_cached(
                "UPDATE history SET events = ?3 WHERE instance_id = ?1 AND seq = ?2",
            )
            .and_then(|mut s| s.execute(params![id, seq, row]))
            .map_err(sql)?;
        }
    }
    Ok(())
}
