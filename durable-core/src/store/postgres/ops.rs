//! The store's operations on one pooled connection: each takes its statements from
//! [`super::sql`] and sends independent ones together (pipelined), so most calls cost one
//! or two round trips and a commit one transaction.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::try_join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, Statement};

use super::error::{corrupt, pg};
use super::listen::Event;
use super::pool::Conn;
use super::sql;
use crate::history::{FailureDetails, HistoryEvent, ParentInstance};
use crate::instance::{InstanceState, NewInstance, RuntimeStatus};
use crate::store::activity_row::{self, ActivityRow, RowColumns};
use crate::store::episode::{self, Payload, Payloads};
use crate::store::{
    child_conflict_message, random_id, ActivityHeartbeat, ActivityWorkItem, HistoryUpdate,
    OrchestrationCommit, OrchestrationMessage, OrchestrationWorkItem, StoreError, StoreResult,
    WorkerId, MAX_MESSAGES_PER_WORK_ITEM,
};

/// A duration as whole microseconds for SQL (saturating).
pub(crate) fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128 / 4) as i64
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::failed(format!("cannot encode: {e}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| corrupt(format!("a stored value does not decode: {e}")))
}

/// Prepared statements by text, for a client or a transaction on a pooled connection.
pub(crate) struct Stmts<'a> {
    cache: &'a mut HashMap<&'static str, Statement>,
}

impl<'a> Stmts<'a> {
    pub fn new(cache: &'a mut HashMap<&'static str, Statement>) -> Self {
        Self { cache }
    }

    pub async fn get(
        &mut self,
        c: &impl GenericClient,
        text: &'static str,
    ) -> StoreResult<Statement> {
        if let Some(s) = self.cache.get(text) {
            return Ok(s.clone());
        }
        let s = c.prepare(text).await.map_err(pg)?;
        self.cache.insert(text, s.clone());
        Ok(s)
    }
}

/// The hand-out count a leasing statement returns after the state columns read from `at`.
pub(crate) fn dequeue_count(row: &Row, at: usize) -> u32 {
    let n: i32 = row.get(at + 13);
    u32::try_from(n).unwrap_or(0)
}

/// Decodes the state columns ([`sql::state_cols`]) starting at column `at`; returns the
/// state and the history length.
pub(crate) fn read_state(row: &Row, at: usize) -> StoreResult<(InstanceState, u64)> {
    let status: String = row.get(at + 4);
    let failure: Option<String> = row.get(at + 7);
    let parent: Option<String> = row.get(at + 11);
    let history_len: i64 = row.get(at + 12);
    Ok((
        InstanceState {
            instance_id: row.get(at),
            execution_id: row.get(at + 1),
            name: row.get(at + 2),
            version: row.get(at + 3),
            status: RuntimeStatus::parse(&status)
                .ok_or_else(|| corrupt(format!("unknown status '{status}'")))?,
            input: row.get(at + 5),
            output: row.get(at + 6),
            failure: failure
                .map(|f| from_json::<FailureDetails>(&f))
                .transpose()?,
            custom_status: row.get(at + 8),
            created_at: row.get(at + 9),
            last_updated_at: row.get(at + 10),
            parent: parent
                .map(|p| from_json::<ParentInstance>(&p))
                .transpose()?,
        },
        history_len as u64,
    ))
}

/// The owned parameters of an instance row ($1..$12 of CREATE, REPLACE and WRITE_STATE).
struct StateParams {
    id: String,
    execution_id: String,
    name: String,
    version: Option<String>,
    status: &'static str,
    input: Option<String>,
    output: Option<String>,
    failure: Option<String>,
    custom_status: Option<String>,
    created_at: DateTime<Utc>,
    last_updated_at: DateTime<Utc>,
    parent: Option<String>,
}

impl StateParams {
    fn new(s: &InstanceState) -> StoreResult<Self> {
        Ok(Self {
            id: s.instance_id.clone(),
            execution_id: s.execution_id.clone(),
            name: s.name.clone(),
            version: s.version.clone(),
            status: s.status.as_str(),
            input: s.input.clone(),
            output: s.output.clone(),
            failure: s.failure.as_ref().map(to_json).transpose()?,
            custom_status: s.custom_status.clone(),
            created_at: s.created_at,
            last_updated_at: s.last_updated_at,
            parent: s.parent.as_ref().map(to_json).transpose()?,
        })
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.id,
            &self.execution_id,
            &self.name,
            &self.version,
            &self.status,
            &self.input,
            &self.output,
            &self.failure,
            &self.custom_status,
            &self.created_at,
            &self.last_updated_at,
            &self.parent,
        ]
    }
}

/// What a create did.
pub(crate) enum Created {
    /// Created; `delayed` when its start message waits for `start_at`.
    Yes { delayed: bool },
    /// An unfinished instance has the id.
    Exists(RuntimeStatus),
}

/// Creates `n` (replacing a finished instance with its id) on `c`, inside the caller's
/// transaction when `c` is one.
pub(crate) async fn create(
    c: &impl GenericClient,
    st: &mut Stmts<'_>,
    n: &NewInstance,
    in_tx: bool,
    now: DateTime<Utc>,
) -> StoreResult<Created> {
    let state = StateParams::new(&n.initial_state())?;
    let start = n.start_message();
    let msg = to_json(&start)?;
    let delayed = start.visible_at.is_some_and(|t| t > now);
    let create = st.get(c, sql::CREATE).await?;
    let mut p = state.params();
    p.push(&start.visible_at);
    p.push(&msg);
    if !c.query(&create, &p).await.map_err(pg)?.is_empty() {
        return Ok(Created::Yes { delayed });
    }
    // The id is taken: refuse it, or replace the finished instance under its row lock.
    if !in_tx {
        return Ok(Created::Exists(RuntimeStatus::Pending));
    }
    let status_stmt = st.get(c, sql::STATUS_FOR_UPDATE).await?;
    let row = c
        .query_opt(&status_stmt, &[&n.instance_id])
        .await
        .map_err(pg)?;
    let Some(row) = row else {
        // Purged in between: the row lock found nothing; the caller retries.
        return Err(StoreError::unavailable(
            "the instance was purged while being replaced",
        ));
    };
    let status: String = row.get(0);
    let status = RuntimeStatus::parse(&status)
        .ok_or_else(|| corrupt(format!("unknown status '{status}'")))?;
    if !status.is_terminal() {
        return Ok(Created::Exists(status));
    }
    let (dh, dm, rep, send) = (
        st.get(c, sql::DELETE_HISTORY).await?,
        st.get(c, sql::DELETE_MESSAGES).await?,
        st.get(c, sql::REPLACE).await?,
        st.get(c, sql::SEND).await?,
    );
    let id = &n.instance_id;
    let p = state.params();
    let send_p: [&(dyn ToSql + Sync); 3] = [id, &start.visible_at, &msg];
    let id_p: [&(dyn ToSql + Sync); 1] = [id];
    tokio::try_join!(
        c.execute(&dh, &id_p),
        c.execute(&dm, &id_p),
        c.execute(&rep, &p),
        c.execute(&send, &send_p),
    )
    .map_err(pg)?;
    Ok(Created::Yes { delayed })
}

/// Builds work items from leased rows (token, state columns from column 1 on, hand-out
/// count) and their messages.
pub(crate) fn work_items(
    leased: Vec<(String, InstanceState, u64, u32)>,
    messages: Vec<Row>,
) -> StoreResult<Vec<OrchestrationWorkItem>> {
    let mut by_id: HashMap<String, Vec<(u64, OrchestrationMessage)>> = HashMap::new();
    for r in messages {
        let id: String = r.get(0);
        let mid: i64 = r.get(1);
        let m: String = r.get(2);
        by_id
            .entry(id)
            .or_default()
            .push((mid as u64, from_json(&m)?));
    }
    let mut out: Vec<OrchestrationWorkItem> = leased
        .into_iter()
        .map(
            |(token, state, history_len, dequeue_count)| OrchestrationWorkItem {
                instance_id: state.instance_id.clone(),
                lease_token: token,
                messages: by_id.remove(&state.instance_id).unwrap_or_default(),
                state: Some(state),
                history_len,
                dequeue_count,
            },
        )
        .collect();
    // Oldest first, like the order they were picked in.
    out.sort_by_key(|w| w.messages.first().map(|(id, _)| *id).unwrap_or(u64::MAX));
    Ok(out)
}

/// Leases up to `max` instances with visible messages, and reads their messages in a
/// second statement sent with it (one round trip): it runs after the leases committed, so
/// it sees every message an earlier holder consumed as gone (never hands one out twice).
pub(crate) async fn lease_orchestrations(
    conn: &mut Conn,
    owner: &WorkerId,
    lease: Duration,
    max: usize,
) -> StoreResult<Vec<OrchestrationWorkItem>> {
    let Conn {
        client, statements, ..
    } = conn;
    let mut st = Stmts::new(statements);
    let lease_stmt = st.get(client, sql::LEASE_INSTANCES).await?;
    let msg_stmt = st.get(client, sql::MESSAGES_OF_LEASED).await?;
    let prefix = random_id();
    let (max, owner, lease, per) = (
        max.clamp(1, 1000) as i64,
        owner.as_str(),
        micros(lease),
        MAX_MESSAGES_PER_WORK_ITEM as i64,
    );
    let lease_p: [&(dyn ToSql + Sync); 4] = [&max, &owner, &lease, &prefix];
    let msg_p: [&(dyn ToSql + Sync); 3] = [&owner, &prefix, &per];
    let (rows, messages) = tokio::try_join!(
        client.query(&lease_stmt, &lease_p),
        client.query(&msg_stmt, &msg_p)
    )
    .map_err(pg)?;
    let mut leased = Vec::with_capacity(rows.len());
    for r in &rows {
        let token: String = r.get(0);
        let (state, len) = read_state(r, 1)?;
        leased.push((token, state, len, dequeue_count(r, 1)));
    }
    work_items(leased, messages)
}

/// How a commit proves it may change the instance.
#[derive(Clone, Copy)]
pub(crate) enum Fence<'a> {
    /// The lease's token.
    Token,
    /// No lease: the instance must be free, on this execution, with this many events and
    /// no visible messages.
    Unleased {
        execution_id: &'a str,
        history_len: u64,
    },
}

/// Activities a commit leases straight to its worker.
#[derive(Clone, Copy)]
pub(crate) struct Direct<'a> {
    pub owner: &'a str,
    pub lease: Duration,
    pub max: usize,
}

/// Applies a commit in one transaction: `BEGIN` goes out with the fence check, the
/// independent writes together, `COMMIT` with the check for messages that came meanwhile,
/// so a commit costs three round trips (four with sub-orchestrations). Returns the
/// activities leased directly and the notifications to send.
pub(crate) async fn commit(
    conn: &mut Conn,
    c: &OrchestrationCommit,
    completed: Option<&ActivityWorkItem>,
    direct: Direct<'_>,
    fence: Fence<'_>,
    now: DateTime<Utc>,
) -> StoreResult<(Vec<ActivityWorkItem>, Vec<Event>)> {
    // The schema's commit function knows no cancellations: a commit with some (rare: a
    // call the orchestration dropped) takes the transaction's path.
    if c.new_instances.is_empty() && c.cancelled_activities.is_empty() {
        if let Some(done) = commit_in_one(conn, c, completed, direct, fence, now).await? {
            return Ok(done);
        }
        // It would change the payloads its kept history refers to (rare: an execution's
        // input stays, its output is set once): the transaction's path writes them into
        // the rows first.
    }
    let Conn {
        client,
        statements,
        in_tx,
    } = conn;
    let mut st = Stmts::new(statements);
    // Every statement is prepared (cached) before the transaction starts.
    let p = Prepared {
        now,
        fence: st.get(client, sql::FENCE).await?,
        has_visible: st.get(client, sql::HAS_VISIBLE).await?,
        del_act: st.get(client, sql::DELETE_ACTIVITY).await?,
        cancel_act: st.get(client, sql::CANCEL_ACTIVITIES).await?,
        del_consumed: st.get(client, sql::DELETE_CONSUMED).await?,
        del_history: st.get(client, sql::DELETE_HISTORY).await?,
        append: st.get(client, sql::APPEND_HISTORY).await?,
        write_state: st.get(client, sql::WRITE_STATE).await?,
        release: st.get(client, sql::RELEASE).await?,
        ins_act: st.get(client, sql::INSERT_ACTIVITIES).await?,
        ins_msg: st.get(client, sql::INSERT_MESSAGES).await?,
    };
    *in_tx = true;
    match apply(client, &mut st, &p, c, completed, direct, fence).await {
        Ok((leased, mut events)) => {
            let id_p: [&(dyn ToSql + Sync); 1] = [&c.instance_id];
            let (committed, more) = tokio::join!(
                client.batch_execute("COMMIT"),
                client.query_one(&p.has_visible, &id_p)
            );
            committed.map_err(pg)?;
            *in_tx = false;
            // On a snapshot after the commit: messages that came while the instance was
            // leased (their senders' wake-ups found it held) need a worker now.
            if more.map(|r| r.get::<_, bool>(0)).unwrap_or(true) {
                events.push(Event::Orchestrations);
            }
            Ok((leased, events))
        }
        Err(e) => {
            if client.batch_execute("ROLLBACK").await.is_ok() {
                *in_tx = false;
            }
            Err(e)
        }
    }
}

/// The episode's events as one history row, referring to the instance row's payloads
/// (those of `c.state`) where they are equal; `None` without events.
fn history_row(c: &OrchestrationCommit, events: &[HistoryEvent]) -> StoreResult<Option<Vec<u8>>> {
    if events.is_empty() {
        return Ok(None);
    }
    let refs = match &c.state {
        Some(s) if episode::refers_to_payloads(&c.instance_id) => Payloads {
            input: s.input.as_deref(),
            output: s.output.as_deref(),
        },
        _ => Payloads::default(),
    };
    episode::encode(events, refs).map(Some)
}

/// A commit without children to create: one call of the schema's `commit_episode`
/// function (its own transaction), sent with the check for messages that came while the
/// instance was leased, which runs after it committed: one round trip, two statements.
/// `None`, having changed nothing, when the commit must take the transaction's path.
async fn commit_in_one(
    conn: &mut Conn,
    c: &OrchestrationCommit,
    completed: Option<&ActivityWorkItem>,
    direct: Direct<'_>,
    fence: Fence<'_>,
    now: DateTime<Utc>,
) -> StoreResult<Option<(Vec<ActivityWorkItem>, Vec<Event>)>> {
    let Conn {
        client, statements, ..
    } = conn;
    let mut st = Stmts::new(statements);
    let commit_stmt = st.get(client, sql::COMMIT_EPISODE).await?;
    let has_visible = st.get(client, sql::HAS_VISIBLE).await?;
    let id = &c.instance_id;
    let (token, exec, hlen) = match fence {
        Fence::Token => (Some(c.lease_token.as_str()), "", 0i64),
        Fence::Unleased {
            execution_id,
            history_len,
        } => (None, execution_id, history_len as i64),
    };
    let done_id = completed.map(|a| a.id as i64);
    let done_token = completed.map(|a| a.lease_token.as_str());
    let consumed: Vec<i64> = c.consumed.iter().map(|m| *m as i64).collect();
    let (replace, new_events) = match &c.history {
        HistoryUpdate::Append(e) => (false, e),
        HistoryUpdate::Replace(e) => (true, e),
    };
    let events_row = history_row(c, new_events)?;
    let count = new_events.len() as i64;
    let refers = c.state.is_some() && episode::refers_to_payloads(id);
    let state = c.state.as_ref().map(StateParams::new).transpose()?;
    let status = state.as_ref().map(|s| s.status);
    let field = |f: fn(&StateParams) -> Option<String>| state.as_ref().and_then(f);
    let (execution_id, name, version, input, output, failure, custom, parent) = (
        field(|s| Some(s.execution_id.clone())),
        field(|s| Some(s.name.clone())),
        field(|s| s.version.clone()),
        field(|s| s.input.clone()),
        field(|s| s.output.clone()),
        field(|s| s.failure.clone()),
        field(|s| s.custom_status.clone()),
        field(|s| s.parent.clone()),
    );
    let created = state.as_ref().map(|s| s.created_at);
    let updated = state.as_ref().map(|s| s.last_updated_at);
    let mut tokens: Vec<Option<String>> = Vec::with_capacity(c.activities.len());
    let mut items: Vec<String> = Vec::with_capacity(c.activities.len());
    for (i, a) in c.activities.iter().enumerate() {
        items.push(to_json(&ActivityRow::scheduled(a, now))?);
        tokens.push((i < direct.max).then(random_id));
    }
    let owner = direct.owner.to_string();
    let lease = micros(direct.lease);
    let msgs = MessageParams::new(&c.messages)?;
    let p: [&(dyn ToSql + Sync); 29] = [
        id,
        &token,
        &exec,
        &hlen,
        &done_id,
        &done_token,
        &consumed,
        &replace,
        &events_row,
        &count,
        &refers,
        &status,
        &execution_id,
        &name,
        &version,
        &input,
        &output,
        &failure,
        &custom,
        &created,
        &updated,
        &parent,
        &items,
        &tokens,
        &owner,
        &lease,
        &msgs.targets,
        &msgs.at,
        &msgs.bodies,
    ];
    let id_p: [&(dyn ToSql + Sync); 1] = [id];
    let (row, more) = tokio::join!(
        client.query_one(&commit_stmt, &p),
        client.query_one(&has_visible, &id_p)
    );
    let row = row.map_err(pg)?;
    if !row.get::<_, bool>(0) {
        if row.get::<_, Option<bool>>(5) == Some(true) {
            return Ok(None);
        }
        return Err(StoreError::lease_lost());
    }
    let mut events = Vec::new();
    if state.is_some() {
        events.push(Event::Instance(id.clone()));
    }
    let act_ids: Option<Vec<i64>> = row.get(1);
    let act_tokens: Option<Vec<Option<String>>> = row.get(2);
    let by_token: HashMap<String, i64> = act_tokens
        .unwrap_or_default()
        .into_iter()
        .zip(act_ids.unwrap_or_default())
        .filter_map(|(t, i)| t.map(|t| (t, i)))
        .collect();
    let mut leased = Vec::new();
    for (a, tok) in c.activities.iter().zip(&tokens) {
        match tok {
            Some(t) => leased.push(ActivityWorkItem {
                id: by_token.get(t).copied().unwrap_or_default() as u64,
                lease_token: t.clone(),
                dequeue_count: 1,
                scheduled_at: Some(now),
                ..a.clone()
            }),
            None => {
                if !events.contains(&Event::Activities) {
                    events.push(Event::Activities);
                }
            }
        }
    }
    let sent_to: Option<Vec<String>> = row.get(3);
    let sent_delayed: Option<Vec<bool>> = row.get(4);
    for (target, delayed) in sent_to
        .unwrap_or_default()
        .into_iter()
        .zip(sent_delayed.unwrap_or_default())
    {
        let e = if delayed {
            Event::Timer
        } else if &target == id {
            continue;
        } else {
            Event::Orchestrations
        };
        if !events.contains(&e) {
            events.push(e);
        }
    }
    // On a snapshot after the commit: messages that came while the instance was leased
    // (their senders' wake-ups found it held) need a worker now.
    if more.map(|r| r.get::<_, bool>(0)).unwrap_or(true) && !events.contains(&Event::Orchestrations)
    {
        events.push(Event::Orchestrations);
    }
    Ok(Some((leased, events)))
}

/// The statements of a commit, and the store-clock time it is made at.
struct Prepared {
    now: DateTime<Utc>,
    fence: Statement,
    has_visible: Statement,
    del_act: Statement,
    cancel_act: Statement,
    del_consumed: Statement,
    del_history: Statement,
    append: Statement,
    write_state: Statement,
    release: Statement,
    ins_act: Statement,
    ins_msg: Statement,
}

/// A commit's statements, inside the transaction it begins.
async fn apply(
    tx: &tokio_postgres::Client,
    st: &mut Stmts<'_>,
    p: &Prepared,
    c: &OrchestrationCommit,
    completed: Option<&ActivityWorkItem>,
    direct: Direct<'_>,
    fence: Fence<'_>,
) -> StoreResult<(Vec<ActivityWorkItem>, Vec<Event>)> {
    let id = &c.instance_id;
    let id_p: [&(dyn ToSql + Sync); 1] = [id];
    let (replace, new_events) = match &c.history {
        HistoryUpdate::Append(e) => (false, e),
        HistoryUpdate::Replace(e) => (true, e),
    };
    // Whether the stored payloads must stay as they are for the kept history's rows.
    let check = c.state.is_some() && !replace && episode::refers_to_payloads(id);
    let (new_input, new_output) = match &c.state {
        Some(s) => (s.input.as_deref(), s.output.as_deref()),
        None => (None, None),
    };
    let fence_p: [&(dyn ToSql + Sync); 4] = [id, &new_input, &new_output, &check];
    let (row, waiting) = match fence {
        Fence::Token => {
            let (_, row) =
                tokio::try_join!(tx.batch_execute("BEGIN"), tx.query_opt(&p.fence, &fence_p))
                    .map_err(pg)?;
            (row, false)
        }
        Fence::Unleased { .. } => {
            // The visibility check runs after the row lock is held, on a fresh snapshot.
            let (_, row, w) = tokio::try_join!(
                tx.batch_execute("BEGIN"),
                tx.query_opt(&p.fence, &fence_p),
                tx.query_one(&p.has_visible, &id_p)
            )
            .map_err(pg)?;
            (row, w.get::<_, bool>(0))
        }
    };
    let Some(row) = row else {
        return Err(StoreError::lease_lost());
    };
    let token: Option<String> = row.get(0);
    let mut history_len: i64 = row.get(1);
    let execution: String = row.get(2);
    let free: bool = row.get(3);
    let kept: bool = row.get(4);
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
            if !free || waiting || execution != execution_id || history_len as u64 != expected {
                return Err(StoreError::lease_lost());
            }
        }
    }
    if !kept && history_len > 0 {
        // The payloads change under a kept history: rows referring to the old ones get
        // their values first.
        materialize(tx, st, id).await?;
    }
    let mut events = Vec::new();
    // The statements below do not depend on each other's results: sent together.
    let (del_act, del_consumed, del_history, append, write_state, release, ins_act) = (
        &p.del_act,
        &p.del_consumed,
        &p.del_history,
        &p.append,
        &p.write_state,
        &p.release,
        &p.ins_act,
    );

    let completed_p = completed.map(|a| (a.id as i64, a.lease_token.clone()));
    let consumed: Vec<i64> = c.consumed.iter().map(|m| *m as i64).collect();
    let first_seq = if replace { 0 } else { history_len };
    let events_row = history_row(c, new_events)?;
    history_len = first_seq + new_events.len() as i64;
    let state = c.state.as_ref().map(StateParams::new).transpose()?;
    let mut tokens: Vec<Option<String>> = Vec::with_capacity(c.activities.len());
    let mut items: Vec<String> = Vec::with_capacity(c.activities.len());
    for (i, a) in c.activities.iter().enumerate() {
        items.push(to_json(&ActivityRow::scheduled(a, p.now))?);
        tokens.push((i < direct.max).then(random_id));
    }
    let owner = direct.owner.to_string();
    let lease = micros(direct.lease);

    let state_p: Option<Vec<&(dyn ToSql + Sync)>> = state.as_ref().map(|s| {
        let mut p = s.params();
        p.push(&history_len);
        p
    });
    let mut jobs: Vec<(&Statement, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
    if let Some((aid, atok)) = &completed_p {
        jobs.push((del_act, vec![aid, atok]));
    }
    if !consumed.is_empty() {
        jobs.push((del_consumed, vec![id, &consumed]));
    }
    if replace {
        jobs.push((del_history, vec![id]));
    }
    if let Some(row) = &events_row {
        jobs.push((append, vec![id, &first_seq, row]));
    }
    let cancel_execs: Vec<&str> = c
        .cancelled_activities
        .iter()
        .map(|a| a.execution_id.as_str())
        .collect();
    let cancel_seqs: Vec<i64> = c
        .cancelled_activities
        .iter()
        .map(|a| i64::try_from(a.seq).unwrap_or(i64::MAX))
        .collect();
    if !cancel_seqs.is_empty() {
        jobs.push((&p.cancel_act, vec![id, &cancel_execs, &cancel_seqs]));
    }
    match state_p {
        Some(p) => {
            jobs.push((write_state, p));
            events.push(Event::Instance(id.clone()));
        }
        None => jobs.push((release, vec![id, &history_len])),
    }
    let act_p: Vec<&(dyn ToSql + Sync)> = vec![id, &items, &tokens, &owner, &lease];
    let act_fut = async {
        if items.is_empty() {
            Ok(Vec::new())
        } else {
            tx.query(ins_act, &act_p).await
        }
    };
    // Without children to create first, the messages go out with the rest.
    let early = MessageParams::new(if c.new_instances.is_empty() {
        &c.messages[..]
    } else {
        &[]
    })?;
    let early_p = early.params();
    let msg_fut = async {
        if early.targets.is_empty() {
            Ok(Vec::new())
        } else {
            tx.query(&p.ins_msg, &early_p).await
        }
    };
    let (counts, act_rows, msg_rows) = tokio::try_join!(
        try_join_all(jobs.iter().map(|(s, p)| tx.execute(*s, p))),
        act_fut,
        msg_fut
    )
    .map_err(pg)?;
    if completed_p.is_some() && counts[0] == 0 {
        // The completed activity's lease is gone: nothing of this commit may stay.
        return Err(StoreError::lease_lost());
    }
    let mut leased = Vec::new();
    let by_token: HashMap<String, i64> = act_rows
        .iter()
        .filter_map(|r| {
            r.get::<_, Option<String>>(1)
                .map(|t| (t, r.get::<_, i64>(0)))
        })
        .collect();
    for (a, tok) in c.activities.iter().zip(&tokens) {
        match tok {
            Some(t) => leased.push(ActivityWorkItem {
                id: by_token.get(t).copied().unwrap_or_default() as u64,
                lease_token: t.clone(),
                dequeue_count: 1,
                scheduled_at: Some(p.now),
                ..a.clone()
            }),
            None => {
                if !events.contains(&Event::Activities) {
                    events.push(Event::Activities);
                }
            }
        }
    }
    // Children before their messages, so a message to a new child finds it.
    let mut messages: Vec<OrchestrationMessage> = Vec::new();
    for child in &c.new_instances {
        match create(tx, st, child, true, p.now).await? {
            Created::Yes { delayed } => {
                events.push(if delayed {
                    Event::Timer
                } else {
                    Event::Orchestrations
                });
                events.push(Event::Instance(child.instance_id.clone()));
            }
            Created::Exists(status) => {
                if let Some(m) = child_conflict_message(child, status, p.now) {
                    messages.push(m);
                }
            }
        }
    }
    let mut sent = msg_rows;
    if !c.new_instances.is_empty() {
        messages.extend(c.messages.iter().cloned());
        let late = MessageParams::new(&messages)?;
        if !late.targets.is_empty() {
            sent = tx.query(&p.ins_msg, &late.params()).await.map_err(pg)?;
        }
    }
    for r in sent {
        let target: String = r.get(0);
        let delayed: bool = r.get(1);
        let e = if delayed {
            Event::Timer
        } else if &target == id {
            // Covered by the check after the commit.
            continue;
        } else {
            Event::Orchestrations
        };
        if !events.contains(&e) {
            events.push(e);
        }
    }
    Ok((leased, events))
}

/// Writes the instance's current input and output into the history rows that refer to
/// them, before a commit changes them under a kept history (inside its transaction, the
/// instance row locked).
async fn materialize(c: &tokio_postgres::Client, st: &mut Stmts<'_>, id: &str) -> StoreResult<()> {
    let payloads = st.get(c, sql::PAYLOADS).await?;
    let encoded = st.get(c, sql::ENCODED_HISTORY).await?;
    let rewrite = st.get(c, sql::REWRITE_HISTORY_ROW).await?;
    let id_p: [&(dyn ToSql + Sync); 1] = [&id];
    let (current, rows) =
        tokio::try_join!(c.query_one(&payloads, &id_p), c.query(&encoded, &id_p)).map_err(pg)?;
    let (input, output): (Option<String>, Option<String>) = (current.get(0), current.get(1));
    let mut rewritten: Vec<(i64, Vec<u8>)> = Vec::new();
    for r in &rows {
        if let Some(row) = episode::without_references(r.get(1), &input, &output)? {
            rewritten.push((r.get(0), row));
        }
    }
    let params: Vec<[&(dyn ToSql + Sync); 3]> = rewritten
        .iter()
        .map(|(seq, row)| [&id as &(dyn ToSql + Sync), seq, row])
        .collect();
    try_join_all(params.iter().map(|p| c.execute(&rewrite, p)))
        .await
        .map_err(pg)?;
    Ok(())
}

/// Appends one stored history row's events to `out`: `event` (one JSON event, from before
/// schema version 6) or `events` (an episode's, in the `episode` encoding, whose
/// references `payload` resolves).
pub(crate) fn decode_history_row(
    event: Option<&str>,
    events: Option<&[u8]>,
    out: &mut Vec<HistoryEvent>,
    payload: &mut dyn FnMut(Payload) -> StoreResult<Option<String>>,
) -> StoreResult<()> {
    match (event, events) {
        (Some(json), _) => {
            out.push(from_json(json)?);
            Ok(())
        }
        (None, Some(bytes)) => episode::decode(bytes, out, payload),
        (None, None) => Err(corrupt("a history row holds no events")),
    }
}

/// The history [`sql::READ_HISTORY`] returned: the instance's payloads, then its rows.
pub(crate) fn history(rows: &[Row]) -> StoreResult<Vec<HistoryEvent>> {
    let mut input: Option<String> = None;
    let mut output: Option<String> = None;
    let mut out = Vec::new();
    for r in rows {
        if r.get::<_, i64>(4) < 0 {
            (input, output) = (r.get(2), r.get(3));
            continue;
        }
        decode_history_row(r.get(0), r.get(1), &mut out, &mut |which| {
            Ok(which.of(&input, &output))
        })?;
    }
    Ok(out)
}

/// The parameters of [`sql::INSERT_MESSAGES`].
struct MessageParams {
    targets: Vec<String>,
    at: Vec<Option<DateTime<Utc>>>,
    bodies: Vec<String>,
}

impl MessageParams {
    fn new(messages: &[OrchestrationMessage]) -> StoreResult<Self> {
        Ok(Self {
            targets: messages.iter().map(|m| m.instance_id.clone()).collect(),
            at: messages.iter().map(|m| m.visible_at).collect(),
            bodies: messages
                .iter()
                .map(to_json)
                .collect::<StoreResult<Vec<String>>>()?,
        })
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 3] {
        [&self.targets, &self.at, &self.bodies]
    }
}

/// Decodes (item, heartbeat_details) rows into the activities with heartbeat details, by
/// sequence.
pub(crate) fn activity_heartbeats(rows: Vec<Row>) -> StoreResult<Vec<ActivityHeartbeat>> {
    let rows = rows
        .iter()
        .map(|r| Ok((from_json::<ActivityRow>(r.get(0))?, r.get(1))))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(activity_row::heartbeats(rows))
}

/// Decodes leased activity rows (id, instance_id, item, lease_token, dequeue_count,
/// heartbeat_details).
pub(crate) fn activity_items(rows: Vec<Row>) -> StoreResult<Vec<ActivityWorkItem>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: i64 = r.get(0);
        let item: String = r.get(2);
        let row: ActivityRow = from_json(&item)?;
        let dequeue: i32 = r.get(4);
        // The latest heartbeat of an earlier hand-out, else the details it was scheduled with.
        let beat: Option<String> = r.get(5);
        out.push(row.into_item(RowColumns {
            id: id as u64,
            instance_id: r.get(1),
            lease_token: r.get(3),
            dequeue_count: dequeue as u32,
            heartbeat_details: beat,
        }));
    }
    out.sort_by_key(|a| a.id);
    Ok(out)
}
