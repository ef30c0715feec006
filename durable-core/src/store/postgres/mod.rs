//! `PostgresStore`: many hosts on one PostgreSQL database. In go the same calls as every
//! store; out come work items leased across processes.
//!
//! # How hosts share the database
//! - **Leases.** Fetches lease rows with `FOR UPDATE SKIP LOCKED` (hosts never wait for
//!   each other's fetches) and record a lease token, owner and expiry in the row. Every
//!   commit checks the token under a row lock: a host whose lease lapsed and was taken over
//!   changes nothing and gets `LeaseLost` (fencing). Lease expiries and due times are
//!   compared with the database's `now()`, never a host's clock.
//! - **One transaction per commit**, its independent statements sent together (pipelined);
//!   most other calls are one statement. Lease bookkeeping (taking, renewing, giving back
//!   leases) commits without waiting for the disk (`synchronous_commit=off` on connections
//!   of its own): losing it in a server crash only makes leases lapse, and the next
//!   durable commit flushes it anyway. Everything acknowledged to a caller is durable.
//! - **Wake-ups.** Commits announce new work, new timers and instance state changes with
//!   `NOTIFY` on the schema's channel (sent after the commit, batched per host); each host
//!   `LISTEN`s on a dedicated connection, reconnecting with backoff. Idle fetches also
//!   sleep only until the next due time; polling (`poll_interval`, `DURABLE_DB_POLL`) is
//!   only a fallback for lost notifications.
//! - **Schema.** Tables live in their own PostgreSQL schema (default `durable`); versioned
//!   migrations run at start-up under an advisory lock, so hosts may start together.
//!
//! # Tables (schema version 6)
//! ```sql
//! instances(id PRIMARY KEY, execution_id, name, version, status, input, output, failure,
//!           custom_status, created_at, last_updated_at, parent, lease_token, lease_owner,
//!           lease_expires_at, history_len, dequeue_count)  -- hand-outs since the last commit
//! history(instance_id, seq, event, events)  -- the current execution's events: one row per
//!                         -- episode (`events`, the `episode` encoding; `seq` is its first
//!                         -- event's position), or before version 6 one JSON event (`event`)
//! messages(id identity, instance_id, visible_at, message)     -- inbox; timers are future visible_at
//! activities(id identity, instance_id, item, lease_token, lease_owner, visible_at, dequeue_count,
//!            heartbeat_details)              -- latest details, stored with lease renewals
//! schema_migrations(version, applied_at)
//! ```
//! Inspect with e.g. `psql -c "select id, name, status from durable.instances"`.

mod error;
mod listen;
mod ops;
mod pool;
mod schema;
mod sql;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{watch, Notify};
use tokio_postgres::types::ToSql;
use tokio_postgres::Config;

use self::error::pg;
use self::listen::{Event, Wakers};
use self::ops::{micros, Created, Direct, Fence, Stmts};
use self::pool::Pool;
pub use self::schema::{check_schema_name, SCHEMA_VERSION};
use super::memory::{make_token, parse_token};
use super::*;
use crate::instance::{InstanceFilter, InstanceState, NewInstance, Page};

/// The default PostgreSQL schema.
pub const DEFAULT_SCHEMA: &str = "durable";
/// The default number of pooled connections per store.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// The default fallback polling interval: how long an idle fetch sleeps at most when no
/// notification arrives.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// The default time to wait for a connection to open.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// True for `postgres://` and `postgresql://` URLs (what selects this store).
pub fn is_postgres_url(s: &str) -> bool {
    let s = s.trim_start();
    let lower = s.get(..13).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// Builder for [`PostgresStore`].
#[derive(Clone, Debug)]
pub struct PostgresStoreBuilder {
    url: String,
    schema: String,
    pool_size: usize,
    poll_interval: Duration,
    connect_timeout: Duration,
    drop_schema_on_drop: bool,
}

impl PostgresStoreBuilder {
    /// Drops the whole schema, data included, when the last handle to the store is
    /// dropped: for tests and benchmarks that use a throw-away schema each.
    pub fn drop_schema_on_drop(mut self, drop: bool) -> Self {
        self.drop_schema_on_drop = drop;
        self
    }

    /// The PostgreSQL schema holding the tables (default `durable`); created when missing.
    /// Hosts sharing work use the same schema; different schemas in one database are
    /// separate systems.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections the store opens for durable calls (default 16); lease
    /// bookkeeping has up to half as many of its own, and notifications one.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// The longest an idle fetch or instance wait sleeps without a notification (default
    /// 5 s): the fallback when a notification is lost.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// How long opening a connection may take (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    fn config(&self) -> StoreResult<Config> {
        check_schema_name(&self.schema).map_err(StoreError::invalid)?;
        if self.pool_size == 0 || self.pool_size > 1000 {
            return Err(StoreError::invalid(format!(
                "the PostgreSQL pool size must be 1 to 1000, not {}",
                self.pool_size
            )));
        }
        if self.poll_interval.is_zero() {
            return Err(StoreError::invalid(
                "the PostgreSQL poll interval must be more than 0",
            ));
        }
        let mut config = Config::from_str(self.url.trim()).map_err(|e| {
            StoreError::invalid(format!(
                "'{}' is not a usable PostgreSQL URL: {e}",
                redact(&self.url)
            ))
        })?;
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} -c search_path={}", self.schema),
            _ => format!("-c search_path={}", self.schema),
        };
        config.options(&options);
        if config.get_application_name().is_none() {
            config.application_name("durable");
        }
        config.connect_timeout(self.connect_timeout);
        Ok(config)
    }

    /// Connects, creates or upgrades the schema, and starts listening for other hosts'
    /// notifications. Fails with a message naming the server when it cannot be reached or
    /// the schema cannot be used.
    pub async fn connect(self) -> StoreResult<PostgresStore> {
        let config = self.config()?;
        let mut client = pool::connect(&config, self.connect_timeout).await?;
        schema::migrate(&mut client, &self.schema).await?;
        drop(client);
        Ok(self.start(config))
    }

    /// Like [`connect`](Self::connect) for synchronous start-up code running inside a
    /// tokio runtime: checks the server and migrates on a helper thread, then starts the
    /// store on the current runtime (its connections open on first use).
    pub fn open(self) -> StoreResult<PostgresStore> {
        let config = self.config()?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::failed("the PostgreSQL store must be opened inside a tokio runtime")
        })?;
        let (cfg, schema, timeout) = (config.clone(), self.schema.clone(), self.connect_timeout);
        std::thread::scope(|s| {
            s.spawn(move || -> StoreResult<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| StoreError::failed(format!("cannot start a runtime: {e}")))?;
                rt.block_on(async {
                    let mut client = pool::connect(&cfg, timeout).await?;
                    schema::migrate(&mut client, &schema).await
                })
            })
            .join()
            .unwrap_or_else(|_| Err(StoreError::failed("opening the PostgreSQL store panicked")))
        })?;
        let _guard = handle.enter();
        Ok(self.start(config))
    }

    fn start(self, config: Config) -> PostgresStore {
        // Lease bookkeeping (taking, renewing and giving back leases) commits without
        // waiting for the WAL to reach the disk: losing it in a server crash only makes the
        // leases lapse or reappear, and the next durable commit flushes it anyway.
        let mut lease_config = config.clone();
        let options = format!(
            "{} -c synchronous_commit=off",
            lease_config.get_options().unwrap_or_default()
        );
        lease_config.options(&options);
        let wakers = Arc::new(Wakers::default());
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(listen::run(
            config.clone(),
            self.schema.clone(),
            wakers.clone(),
            self.connect_timeout,
            stop_rx,
        ));
        PostgresStore {
            inner: Arc::new(Inner {
                pool: Pool::new(config.clone(), self.pool_size, self.connect_timeout),
                leases: Pool::new(
                    lease_config,
                    self.pool_size.div_ceil(2).max(2),
                    self.connect_timeout,
                ),
                clock: PgClock {
                    wakers: wakers.clone(),
                },
                wakers,
                schema: self.schema,
                poll: self.poll_interval,
                stop,
                describe: pool::describe(&config),
                drop_schema: self.drop_schema_on_drop.then(|| config.clone()),
            }),
        }
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The database's clock as seen from this process: the local clock plus the offset
/// measured against `clock_timestamp()` on every (re)connect and every minute.
#[derive(Clone)]
struct PgClock {
    wakers: Arc<Wakers>,
}

impl std::fmt::Debug for PgClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgClock").finish()
    }
}

impl Clock for PgClock {
    fn now(&self) -> DateTime<Utc> {
        self.wakers.db_now()
    }
}

struct Inner {
    /// Connections for durable calls (`synchronous_commit` as the server has it).
    pool: Pool,
    /// Connections for lease bookkeeping (`synchronous_commit=off`).
    leases: Pool,
    wakers: Arc<Wakers>,
    clock: PgClock,
    schema: String,
    poll: Duration,
    stop: watch::Sender<bool>,
    describe: String,
    /// Set when the schema goes with the store.
    drop_schema: Option<Config>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.pool.close();
        self.leases.close();
        if let Some(config) = self.drop_schema.take() {
            // On a thread of its own: drop may run inside or outside a runtime.
            let schema = self.schema.clone();
            let dropped = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let client = pool::connect(&config, DEFAULT_CONNECT_TIMEOUT).await.ok()?;
                    client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await
                        .ok()
                })
            })
            .join();
            if !matches!(dropped, Ok(Some(()))) {
                tracing::warn!(schema = %self.schema, "could not drop the PostgreSQL schema");
            }
        }
    }
}

/// A [`Store`] in a PostgreSQL database, shared by any number of hosts.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("server", &self.inner.describe)
            .field("schema", &self.inner.schema)
            .finish()
    }
}

impl PostgresStore {
    /// A builder for the database at `url` (`postgres://user@host:port/db`, or key=value
    /// pairs).
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: url.into(),
            schema: DEFAULT_SCHEMA.into(),
            pool_size: DEFAULT_POOL_SIZE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            drop_schema_on_drop: false,
        }
    }

    /// Connects to `url` with the defaults (schema `durable`).
    pub async fn connect(url: impl Into<String>) -> StoreResult<Self> {
        Self::builder(url).connect().await
    }

    /// `PostgreSQL at host:port/database, schema name` (never the password).
    pub fn describe(&self) -> String {
        format!(
            "PostgreSQL at {}, schema {}",
            self.inner.describe, self.inner.schema
        )
    }

    /// The PostgreSQL schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Deletes the schema with every table and all data in it (tests, benchmarks). Other
    /// hosts using the schema fail from then on.
    pub async fn drop_schema(&self) -> StoreResult<()> {
        let conn = self.inner.pool.get().await?;
        conn.client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                self.inner.schema
            ))
            .await
            .map_err(pg)
    }

    /// Runs a statement fenced by a lease on the lease connection: no row changed means
    /// the lease was taken over.
    async fn fenced_update(
        &self,
        statement: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<()> {
        let mut conn = self.inner.leases.get().await?;
        let s = conn.prepare(statement).await?;
        let n = conn.client.execute(&s, params).await.map_err(pg)?;
        if n == 0 {
            return Err(StoreError::lease_lost());
        }
        Ok(())
    }

    fn announce(&self, events: Vec<Event>) {
        self.inner.wakers.announce(events);
    }

    /// Waits for `notify` (or the poll interval, `due` or `deadline`).
    async fn nap(
        &self,
        notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
        deadline: tokio::time::Instant,
        due: Option<Duration>,
    ) {
        let mut until = deadline.min(tokio::time::Instant::now() + self.inner.poll);
        if let Some(d) = due {
            // A little after the due time, so the database's now() has passed it.
            until = until.min(tokio::time::Instant::now() + d + Duration::from_millis(1));
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(until) => {}
        }
    }

    async fn next_due(&self, text: &'static str) -> StoreResult<Option<Duration>> {
        let mut conn = self.inner.leases.get().await?;
        let s = conn.prepare(text).await?;
        let secs: Option<f64> = conn.client.query_one(&s, &[]).await.map_err(pg)?.get(0);
        Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }

    /// Runs `attempt` until it returns something or `wait` passes, sleeping on `notify`
    /// and until the next due time in between. The due time is read again only when a
    /// timer was stored, it passed, or the poll interval ran out (not on every wake-up).
    async fn waiting<T, F, Fut>(
        &self,
        notify: &Notify,
        due_sql: &'static str,
        wait: Duration,
        mut attempt: F,
    ) -> StoreResult<Vec<T>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = StoreResult<Vec<T>>>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        let mut due_at: Option<tokio::time::Instant> = None;
        let mut read_due = true;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let timer = self.inner.wakers.timers.notified();
            tokio::pin!(timer);
            timer.as_mut().enable();
            let items = attempt().await?;
            let now = tokio::time::Instant::now();
            if !items.is_empty() || now >= deadline {
                return Ok(items);
            }
            if read_due || due_at.is_some_and(|d| d <= now) {
                due_at = self
                    .next_due(due_sql)
                    .await?
                    // A little after, so the database's now() has passed it.
                    .map(|d| tokio::time::Instant::now() + d + Duration::from_millis(1));
                read_due = false;
            }
            let mut until = deadline.min(now + self.inner.poll);
            if let Some(d) = due_at {
                until = until.min(d);
            }
            // A stored timer wakes both: the timer branch first, so the due time is read.
            tokio::select! {
                biased;
                _ = &mut timer => read_due = true,
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => read_due = true,
            }
        }
    }

    async fn lease_for_result(
        &self,
        item: &ActivityWorkItem,
        owner: &WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        let mut conn = self.inner.leases.get().await?;
        let lease_stmt = conn.prepare(sql::LEASE_FOR_RESULT).await?;
        let msg_stmt = conn.prepare(sql::MESSAGES_IF_LEASED).await?;
        let token = random_id();
        let c = &conn.client;
        let (aid, owner, lease, max) = (
            item.id as i64,
            owner.as_str(),
            micros(lease),
            MAX_MESSAGES_PER_WORK_ITEM as i64,
        );
        let lease_p: [&(dyn ToSql + Sync); 6] = [
            &item.instance_id,
            &aid,
            &item.lease_token,
            &token,
            &owner,
            &lease,
        ];
        let msg_p: [&(dyn ToSql + Sync); 3] = [&item.instance_id, &token, &max];
        let (rows, messages) =
            tokio::try_join!(c.query(&lease_stmt, &lease_p), c.query(&msg_stmt, &msg_p))
                .map_err(pg)?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let (state, history_len) = ops::read_state(row, 0)?;
        let dequeue_count = ops::dequeue_count(row, 0);
        Ok(Some(leased_item(
            state,
            history_len,
            dequeue_count,
            token,
            messages,
        )?))
    }
}

/// A work item from a state row leased with `token` and the messages read under it.
fn leased_item(
    state: InstanceState,
    history_len: u64,
    dequeue_count: u32,
    token: String,
    messages: Vec<tokio_postgres::Row>,
) -> StoreResult<OrchestrationWorkItem> {
    let mut out = Vec::with_capacity(messages.len());
    for r in messages {
        let id: i64 = r.get(0);
        let m: String = r.get(1);
        out.push((id as u64, ops::from_json(&m)?));
    }
    Ok(OrchestrationWorkItem {
        instance_id: state.instance_id.clone(),
        lease_token: token,
        messages: out,
        state: Some(state),
        history_len,
        dequeue_count,
    })
}

/// The WHERE clause and parameters of a listing filter.
fn filter_sql(
    filter: &InstanceFilter,
    after: Option<&(DateTime<Utc>, String)>,
) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut clauses = Vec::new();
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    if !filter.statuses.is_empty() {
        let s: Vec<String> = filter
            .statuses
            .iter()
            .map(|s| s.as_str().to_string())
            .collect();
        args.push(Box::new(s));
        clauses.push(format!("status = ANY(${})", args.len()));
    }
    if let Some(t) = filter.created_from {
        args.push(Box::new(t));
        clauses.push(format!("created_at >= ${}", args.len()));
    }
    if let Some(t) = filter.created_to {
        args.push(Box::new(t));
        clauses.push(format!("created_at <= ${}", args.len()));
    }
    if let Some(p) = &filter.instance_id_prefix {
        args.push(Box::new(p.clone()));
        let n = args.len();
        clauses.push(format!(
            "id COLLATE \"C\" >= ${n} AND left(id, length(${n})) = ${n}"
        ));
        if let Some(upper) = crate::store::prefix_upper_bound(p) {
            args.push(Box::new(upper));
            clauses.push(format!("id COLLATE \"C\" < ${}", args.len()));
        }
    }
    if let Some((t, id)) = after {
        args.push(Box::new(*t));
        let a = args.len();
        args.push(Box::new(id.clone()));
        let b = args.len();
        clauses.push(format!("(created_at, id) > (${a}, ${b})"));
    }
    let w = if clauses.is_empty() {
        "TRUE".to_string()
    } else {
        clauses.join(" AND ")
    };
    (w, args)
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_instance(&self, instance: NewInstance) -> StoreResult<()> {
        let mut conn = self.inner.pool.get().await?;
        let id = instance.instance_id.clone();
        let outcome = {
            let pool::Conn {
                client, statements, ..
            } = &mut *conn;
            let mut st = Stmts::new(statements);
            match ops::create(&*client, &mut st, &instance, false, self.inner.clock.now()).await? {
                Created::Yes { delayed } => Created::Yes { delayed },
                Created::Exists(_) => {
                    // Taken: decide under the row lock whether it may be replaced.
                    let tx = client.transaction().await.map_err(pg)?;
                    let out =
                        ops::create(&tx, &mut st, &instance, true, self.inner.clock.now()).await?;
                    if let Created::Yes { .. } = out {
                        tx.commit().await.map_err(pg)?;
                    }
                    out
                }
            }
        };
        match outcome {
            Created::Yes { delayed } => {
                self.announce(vec![
                    if delayed {
                        Event::Timer
                    } else {
                        Event::Orchestrations
                    },
                    Event::Instance(id),
                ]);
                Ok(())
            }
            Created::Exists(status) => Err(StoreError::already_exists(id, status)),
        }
    }

    async fn send_message(&self, message: OrchestrationMessage) -> StoreResult<()> {
        let body = ops::to_json(&message)?;
        let mut conn = self.inner.pool.get().await?;
        let s = conn.prepare(sql::SEND).await?;
        let row = conn
            .client
            .query_opt(&s, &[&message.instance_id, &message.visible_at, &body])
            .await
            .map_err(pg)?;
        match row {
            None => Err(StoreError::not_found(message.instance_id)),
            Some(r) => {
                let delayed: bool = r.get(0);
                self.announce(vec![if delayed {
                    Event::Timer
                } else {
                    Event::Orchestrations
                }]);
                Ok(())
            }
        }
    }

    async fn fetch_orchestration_work(
        &self,
        owner: &WorkerId,
        lease: Duration,
        max: usize,
        wait: Duration,
    ) -> StoreResult<Vec<OrchestrationWorkItem>> {
        self.waiting(
            &self.inner.wakers.orchestrations,
            sql::NEXT_DUE_ORCHESTRATIONS,
            wait,
            || async {
                let mut conn = self.inner.leases.get().await?;
                ops::lease_orchestrations(&mut conn, owner, lease, max).await
            },
        )
        .await
    }

    async fn commit_orchestration(&self, commit: OrchestrationCommit) -> StoreResult<()> {
        let mut conn = self.inner.pool.get().await?;
        let direct = Direct {
            owner: "",
            lease: Duration::ZERO,
            max: 0,
        };
        let (_, events) = ops::commit(
            &mut conn,
            &commit,
            None,
            direct,
            Fence::Token,
            self.inner.clock.now(),
        )
        .await?;
        drop(conn);
        self.announce(events);
        Ok(())
    }

    async fn abandon_orchestration(
        &self,
        instance_id: &str,
        lease_token: &str,
        delay: Duration,
    ) -> StoreResult<()> {
        self.fenced_update(
            sql::ABANDON_INSTANCE,
            &[&instance_id, &lease_token, &micros(delay)],
        )
        .await?;
        self.announce(vec![if delay.is_zero() {
            Event::Orchestrations
        } else {
            Event::Timer
        }]);
        Ok(())
    }

    async fn renew_orchestration_lease(
        &self,
        instance_id: &str,
        lease_token: &str,
        lease: Duration,
    ) -> StoreResult<()> {
        self.fenced_update(
            sql::RENEW_INSTANCE,
            &[&instance_id, &lease_token, &micros(lease)],
        )
        .await?;
        Ok(())
    }

    async fn fetch_activity_work(
        &self,
        owner: &WorkerId,
        lease: Duration,
        max: usize,
        wait: Duration,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        self.waiting(
            &self.inner.wakers.activities,
            sql::NEXT_DUE_ACTIVITIES,
            wait,
            || async {
                let mut conn = self.inner.leases.get().await?;
                let s = conn.prepare(sql::LEASE_ACTIVITIES).await?;
                let rows = conn
                    .client
                    .query(
                        &s,
                        &[
                            &(max.clamp(1, 10_000) as i64),
                            &owner.as_str(),
                            &micros(lease),
                        ],
                    )
                    .await
                    .map_err(pg)?;
                ops::activity_items(rows)
            },
        )
        .await
    }

    async fn complete_activity(
        &self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
    ) -> StoreResult<()> {
        let body = ops::to_json(&result)?;
        let mut conn = self.inner.pool.get().await?;
        let s = conn.prepare(sql::COMPLETE).await?;
        let row = conn
            .client
            .query_one(
                &s,
                &[
                    &(item.id as i64),
                    &item.lease_token,
                    &result.instance_id,
                    &result.visible_at,
                    &body,
                ],
            )
            .await
            .map_err(pg)?;
        let deleted: i64 = row.get(0);
        let queued: i64 = row.get(1);
        if deleted == 0 {
            return Err(StoreError::lease_lost());
        }
        if queued > 0 {
            self.announce(vec![Event::Orchestrations]);
        }
        Ok(())
    }

    async fn abandon_activity(&self, item: &ActivityWorkItem, delay: Duration) -> StoreResult<()> {
        self.fenced_update(
            sql::ABANDON_ACTIVITY,
            &[&(item.id as i64), &item.lease_token, &micros(delay)],
        )
        .await?;
        self.announce(vec![if delay.is_zero() {
            Event::Activities
        } else {
            Event::Timer
        }]);
        Ok(())
    }

    async fn renew_activity_lease(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
    ) -> StoreResult<()> {
        self.fenced_update(
            sql::RENEW_ACTIVITY,
            &[&(item.id as i64), &item.lease_token, &micros(lease)],
        )
        .await?;
        Ok(())
    }

    async fn renew_activity_lease_with_heartbeat(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
        details: &str,
    ) -> StoreResult<()> {
        self.fenced_update(
            sql::RENEW_ACTIVITY_HEARTBEAT,
            &[
                &(item.id as i64),
                &item.lease_token,
                &micros(lease),
                &details,
            ],
        )
        .await?;
        Ok(())
    }

    async fn activity_heartbeats(&self, instance_id: &str) -> StoreResult<Vec<ActivityHeartbeat>> {
        let mut conn = self.inner.pool.get().await?;
        let s = conn.prepare(sql::ACTIVITY_HEARTBEATS).await?;
        let rows = conn.client.query(&s, &[&instance_id]).await.map_err(pg)?;
        ops::activity_heartbeats(rows)
    }

    async fn release_leases(&self, owner: &WorkerId) -> StoreResult<u64> {
        let mut conn = self.inner.leases.get().await?;
        let s = conn.prepare(sql::RELEASE_OWNER).await?;
        let n: i64 = conn
            .client
            .query_one(&s, &[&owner.as_str()])
            .await
            .map_err(pg)?
            .get(0);
        if n > 0 {
            self.announce(vec![Event::Orchestrations, Event::Activities]);
        }
        Ok(n as u64)
    }

    async fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceState>> {
        let mut conn = self.inner.pool.get().await?;
        let s = conn.prepare(sql::GET_STATE).await?;
        let row = conn
            .client
            .query_opt(&s, &[&instance_id])
            .await
            .map_err(pg)?;
        row.map(|r| ops::read_state(&r, 0).map(|(s, _)| s))
            .transpose()
    }

    async fn read_history(&self, instance_id: &str) -> StoreResult<Vec<HistoryEvent>> {
        let mut conn = self.inner.pool.get().await?;
        let s = conn.prepare(sql::READ_HISTORY).await?;
        let refers = super::episode::refers_to_payloads(instance_id);
        let rows = conn
            .client
            .query(&s, &[&instance_id, &refers])
            .await
            .map_err(pg)?;
        ops::history(&rows)
    }

    async fn list_instances(
        &self,
        filter: &InstanceFilter,
        page_size: usize,
        continuation_token: Option<&str>,
    ) -> StoreResult<Page<InstanceState>> {
        let token = continuation_token.map(parse_token).transpose()?;
        let (w, args) = filter_sql(filter, token.as_ref());
        let size = page_size.clamp(1, 100_000);
        let text = format!(
            "SELECT {} FROM instances WHERE {w} ORDER BY created_at, id LIMIT {}",
            sql::state_cols!(),
            size + 1
        );
        let conn = self.inner.pool.get().await?;
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
        let rows = conn.client.query(&text, &params).await.map_err(pg)?;
        let mut items = rows
            .iter()
            .map(|r| ops::read_state(r, 0).map(|(s, _)| s))
            .collect::<StoreResult<Vec<_>>>()?;
        let more = items.len() > size;
        items.truncate(size);
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
    }

    async fn purge_instance(&self, instance_id: &str) -> StoreResult<bool> {
        let mut conn = self.inner.pool.get().await?;
        let s = conn.prepare(sql::PURGE).await?;
        let n: i64 = conn
            .client
            .query_one(&s, &[&instance_id])
            .await
            .map_err(pg)?
            .get(0);
        if n > 0 {
            self.announce(vec![Event::Instance(instance_id.to_string())]);
        }
        Ok(n > 0)
    }

    /// One transaction: the finished instances matching `filter`, then level by level the
    /// children the parent-close policy takes with them, each level one statement that
    /// also returns the next level's candidates (through the index `instances_parent`)
    /// and the histories of only those parents that have children.
    async fn purge_instances(&self, filter: &InstanceFilter) -> StoreResult<u64> {
        let (w, args) = filter_sql(filter, None);
        let first = format!(
            "WITH i AS (DELETE FROM instances WHERE {w}
                 AND status IN ('Completed', 'Failed', 'Terminated', 'Canceled') RETURNING id),
             {}",
            sql::purge_level_tail!()
        );
        let mut conn = self.inner.pool.get().await?;
        let tx = conn.client.transaction().await.map_err(pg)?;
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
        let mut rows = tx.query(&first, &params).await.map_err(pg)?;
        let mut purged: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut found: Vec<(String, String)> = Vec::new();
            let mut histories: std::collections::HashMap<String, Vec<HistoryEvent>> =
                std::collections::HashMap::new();
            for r in &rows {
                let id: String = r.get(1);
                match r.get::<_, i32>(0) {
                    0 => purged.push(id),
                    1 => found.push((id, r.get(2))),
                    // Only the children started are read from these events, never the
                    // payloads a row refers to: those read as empty.
                    _ => ops::decode_history_row(
                        r.get(2),
                        r.get(3),
                        histories.entry(id).or_default(),
                        &mut |_| Ok(Some(String::new())),
                    )?,
                }
            }
            if found.is_empty() {
                break;
            }
            if seen.is_empty() {
                seen.extend(purged.iter().cloned());
            }
            let started: std::collections::HashMap<&str, std::collections::HashSet<&str>> =
                histories
                    .iter()
                    .map(|(parent, h)| (parent.as_str(), started_children(h)))
                    .collect();
            let mut next = (Vec::new(), Vec::new());
            for (child, parent) in found {
                let started = started
                    .get(parent.as_str())
                    .is_some_and(|s| s.contains(child.as_str()));
                if started && seen.insert(child.clone()) {
                    next.0.push(child);
                    next.1.push(parent);
                }
            }
            if next.0.is_empty() {
                break;
            }
            let s = tx.prepare(sql::PURGE_CHILDREN).await.map_err(pg)?;
            rows = tx.query(&s, &[&next.0, &next.1]).await.map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        drop(conn);
        let n = purged.len() as u64;
        self.announce(purged.into_iter().map(Event::Instance).collect());
        Ok(n)
    }

    async fn wait_for_instance(
        &self,
        instance_id: &str,
        seen: Option<&InstanceState>,
        timeout: Duration,
    ) -> StoreResult<Option<InstanceState>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let waiter = self.inner.wakers.instance_waiter(instance_id);
            let notified = waiter.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let state = self.get_instance(instance_id).await?;
            if state.as_ref() != seen || tokio::time::Instant::now() >= deadline {
                return Ok(state);
            }
            self.nap(notified, deadline, None).await;
        }
    }

    /// Reads the state once per change (the default reads it twice: once to return it,
    /// once more to start the next wait).
    async fn wait_for_instance_until(
        &self,
        instance_id: &str,
        timeout: Duration,
        done: &(dyn for<'s> Fn(Option<&'s InstanceState>) -> bool + Send + Sync),
    ) -> StoreResult<Option<InstanceState>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let waiter = self.inner.wakers.instance_waiter(instance_id);
            let notified = waiter.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let state = self.get_instance(instance_id).await?;
            if done(state.as_ref()) || tokio::time::Instant::now() >= deadline {
                return Ok(state);
            }
            self.nap(notified, deadline, None).await;
        }
    }

    async fn close(&self) -> StoreResult<()> {
        let _ = self.inner.stop.send(true);
        self.inner.pool.close();
        self.inner.leases.close();
        Ok(())
    }

    fn clock(&self) -> &dyn Clock {
        &self.inner.clock
    }

    async fn pending_work(&self) -> StoreResult<Option<PendingWork>> {
        let mut conn = self.inner.pool.get().await?;
        let s = conn.prepare(sql::PENDING_WORK).await?;
        let row = conn.client.query_one(&s, &[]).await.map_err(pg)?;
        let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(Some(PendingWork {
            orchestrations: count(0),
            activities: count(1),
        }))
    }

    fn fast_paths(&self) -> Option<&dyn FastPaths> {
        Some(self)
    }
}

#[async_trait]
impl FastPaths for PostgresStore {
    async fn commit_orchestration_and_lease(
        &self,
        commit: OrchestrationCommit,
        completed: Option<&ActivityWorkItem>,
        direct: DirectLease<'_>,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let mut conn = self.inner.pool.get().await?;
        let d = Direct {
            owner: direct.owner.as_str(),
            lease: direct.lease,
            max: direct.max,
        };
        let (leased, events) = ops::commit(
            &mut conn,
            &commit,
            completed,
            d,
            Fence::Token,
            self.inner.clock.now(),
        )
        .await?;
        drop(conn);
        self.announce(events);
        Ok(leased)
    }

    async fn commit_unleased(
        &self,
        commit: OrchestrationCommit,
        execution_id: &str,
        history_len: u64,
        completed: &ActivityWorkItem,
        direct: DirectLease<'_>,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let mut conn = self.inner.pool.get().await?;
        let d = Direct {
            owner: direct.owner.as_str(),
            lease: direct.lease,
            max: direct.max,
        };
        let fence = Fence::Unleased {
            execution_id,
            history_len,
        };
        let (leased, events) = ops::commit(
            &mut conn,
            &commit,
            Some(completed),
            d,
            fence,
            self.inner.clock.now(),
        )
        .await?;
        drop(conn);
        self.announce(events);
        Ok(leased)
    }

    async fn lease_instance_for_result(
        &self,
        item: &ActivityWorkItem,
        owner: &WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        self.lease_for_result(item, owner, lease).await
    }

    async fn complete_activity_and_fetch(
        &self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
        owner: &WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        let body = ops::to_json(&result)?;
        let token = random_id();
        let mut conn = self.inner.pool.get().await?;
        let s = conn.prepare(sql::COMPLETE_AND_LEASE).await?;
        let msg_stmt = conn.prepare(sql::MESSAGES_IF_LEASED).await?;
        let c = &conn.client;
        let (aid, owner, lease, max) = (
            item.id as i64,
            owner.as_str(),
            micros(lease),
            MAX_MESSAGES_PER_WORK_ITEM as i64,
        );
        let p: [&(dyn ToSql + Sync); 8] = [
            &aid,
            &item.lease_token,
            &result.instance_id,
            &result.visible_at,
            &body,
            &token,
            &owner,
            &lease,
        ];
        let msg_p: [&(dyn ToSql + Sync); 3] = [&result.instance_id, &token, &max];
        let (row, messages) =
            tokio::try_join!(c.query_one(&s, &p), c.query(&msg_stmt, &msg_p)).map_err(pg)?;
        let deleted: i64 = row.get(0);
        let queued: i64 = row.get(1);
        if deleted == 0 {
            return Err(StoreError::lease_lost());
        }
        let leased: Option<String> = row.get(2);
        if leased.is_none() {
            if queued > 0 {
                self.announce(vec![Event::Orchestrations]);
            }
            return Ok(None);
        }
        let (state, history_len) = ops::read_state(&row, 2)?;
        let dequeue_count = ops::dequeue_count(&row, 2);
        Ok(Some(leased_item(
            state,
            history_len,
            dequeue_count,
            token,
            messages,
        )?))
    }
}

/// The database the tests use: `DURABLE_TEST_PG`, or the local server's `test` database.
#[cfg(test)]
pub(crate) fn test_url() -> String {
    std::env::var("DURABLE_TEST_PG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "postgres://root@127.0.0.1:5432/test".into())
}

/// A schema name no other test uses.
#[cfg(test)]
pub(crate) fn test_schema() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod conformance_tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::conformance::Harness;

    /// Each case gets a fresh schema, dropped with the store; the peer is a second store
    /// on the same schema, as another host would open it.
    #[derive(Default)]
    struct Pg {
        schema: Mutex<Option<String>>,
    }

    #[async_trait]
    impl Harness for Pg {
        async fn store(&self) -> Arc<dyn Store> {
            let schema = test_schema();
            *self.schema.lock().unwrap() = Some(schema.clone());
            Arc::new(
                PostgresStore::builder(test_url())
                    .schema(schema)
                    .pool_size(4)
                    .drop_schema_on_drop(true)
                    .connect()
                    .await
                    .expect("the test database is reachable (DURABLE_TEST_PG)"),
            )
        }

        async fn peer(&self, _store: &Arc<dyn Store>) -> Arc<dyn Store> {
            let schema = self.schema.lock().unwrap().clone().expect("store() first");
            Arc::new(
                PostgresStore::builder(test_url())
                    .schema(schema)
                    .pool_size(2)
                    .connect()
                    .await
                    .expect("the test database is reachable"),
            )
        }
    }

    crate::store_conformance_tests!(Pg::default());
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::history::EventKind;

    async fn open(schema: &str, drop: bool) -> Arc<PostgresStore> {
        Arc::new(
            PostgresStore::builder(test_url())
                .schema(schema)
                .pool_size(4)
                .drop_schema_on_drop(drop)
                .connect()
                .await
                .expect("the test database is reachable (DURABLE_TEST_PG)"),
        )
    }

    fn new_instance(id: &str) -> NewInstance {
        NewInstance {
            instance_id: id.into(),
            execution_id: "e".into(),
            name: "orch".into(),
            version: None,
            input: None,
            parent: None,
            created_at: Utc::now(),
            start_at: None,
            trace_parent: None,
        }
    }

    /// Hosts racing for the same instances, with leases so short that they lapse while
    /// episodes run and are taken over, never get a message twice: every message sent
    /// ends up in its instance's history exactly once. (Reading the messages with the
    /// snapshot of the statement that takes the lease fails this: a holder whose commit
    /// lands between that snapshot and the row lock consumed messages the snapshot
    /// still shows.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_hosts_apply_every_message_exactly_once() {
        let schema = test_schema();
        let first = open(&schema, true).await;
        const INSTANCES: usize = 5;
        const PER_INSTANCE: usize = 200;
        for i in 0..INSTANCES {
            first
                .create_instance(new_instance(&format!("r{i}")))
                .await
                .unwrap();
        }
        let mut hosts = vec![first.clone()];
        for _ in 0..5 {
            hosts.push(open(&schema, false).await);
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Vec::new();
        for (h, store) in hosts.iter().enumerate() {
            let store = store.clone();
            let stop = stop.clone();
            workers.push(tokio::spawn(async move {
                let owner = WorkerId::new(format!("host-{h}"));
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let items = store
                        .fetch_orchestration_work(
                            &owner,
                            Duration::from_millis(3),
                            2,
                            Duration::from_millis(50),
                        )
                        .await
                        .unwrap();
                    for item in items {
                        n += 1;
                        // Every few episodes outlast their lease.
                        if n.is_multiple_of(4) {
                            tokio::time::sleep(Duration::from_millis(4)).await;
                        }
                        let events = item.messages.iter().map(|(_, m)| m.event.clone()).collect();
                        let commit = OrchestrationCommit {
                            instance_id: item.instance_id.clone(),
                            lease_token: item.lease_token.clone(),
                            consumed: item.messages.iter().map(|(id, _)| *id).collect(),
                            history: HistoryUpdate::Append(events),
                            state: None,
                            activities: Vec::new(),
                            messages: Vec::new(),
                            new_instances: Vec::new(),
                            cancelled_activities: Vec::new(),
                        };
                        match store.commit_orchestration(commit).await {
                            Ok(()) => {}
                            Err(e) if e.is_lease_lost() => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            }));
        }
        for k in 0..PER_INSTANCE {
            for i in 0..INSTANCES {
                let store = &hosts[(i + k) % hosts.len()];
                let event = HistoryEvent::new(
                    Utc::now(),
                    EventKind::EventRaised {
                        name: format!("m{k}"),
                        input: None,
                    },
                );
                store
                    .send_message(OrchestrationMessage::new(format!("r{i}"), event))
                    .await
                    .unwrap();
            }
            if k.is_multiple_of(10) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Until every message has been applied (or the deadline).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut counts: HashMap<String, usize> = HashMap::new();
        loop {
            let mut total = 0;
            for i in 0..INSTANCES {
                let id = format!("r{i}");
                let history = first.read_history(&id).await.unwrap();
                let mut seen = HashMap::new();
                for e in &history {
                    if let EventKind::EventRaised { name, .. } = &e.kind {
                        *seen.entry(name.clone()).or_insert(0) += 1;
                    }
                }
                for (name, n) in &seen {
                    assert_eq!(*n, 1, "{id}: message {name} applied {n} times");
                }
                counts.insert(id, seen.len());
                total += seen.len();
            }
            if total == INSTANCES * PER_INSTANCE {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "applied {counts:?} of {PER_INSTANCE} each"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            w.await.unwrap();
        }
    }

    /// A host whose listening connection is cut reconnects and hears other hosts'
    /// changes again, without falling back to polling.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waits_that_end_without_a_change_leave_no_waiter_behind() {
        let schema = test_schema();
        let store = open(&schema, true).await;
        let never = |_: Option<&InstanceState>| false;
        let got = store
            .wait_for_instance_until("nobody", Duration::from_millis(50), &never)
            .await
            .unwrap();
        assert!(got.is_none());
        let got = store
            .wait_for_instance("nobody", None, Duration::from_millis(50))
            .await
            .unwrap();
        assert!(got.is_none());
        assert_eq!(store.inner.wakers.waited_instances(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_listener_reconnects_after_its_connection_is_cut() {
        let schema = test_schema();
        let a = open(&schema, true).await;
        let b = Arc::new(
            PostgresStore::builder(test_url())
                .schema(&schema)
                .pool_size(2)
                .poll_interval(Duration::from_secs(600))
                .connect()
                .await
                .unwrap(),
        );
        a.create_instance(new_instance("x")).await.unwrap();
        let seen = b.get_instance("x").await.unwrap();
        let conn = a.inner.pool.get().await.unwrap();
        let listener = listen::listener_name(&schema);
        // Until B listens, then cut every listening connection of the schema.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let cut = loop {
            let n: i64 = conn
                .client
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = $1",
                    &[&listener],
                )
                .await
                .unwrap()
                .get(0);
            if n >= 2 || tokio::time::Instant::now() > deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(cut >= 2, "both stores listen ({cut} connections found)");
        drop(conn);
        // A commits once both listen again; B's wait (polling every 10 minutes) hears it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !(a
            .inner
            .wakers
            .listening
            .load(std::sync::atomic::Ordering::Relaxed)
            && b.inner
                .wakers
                .listening
                .load(std::sync::atomic::Ordering::Relaxed))
        {
            assert!(tokio::time::Instant::now() < deadline, "listening again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let waiting = {
            let b = b.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                b.wait_for_instance("x", seen.as_ref(), Duration::from_secs(60))
                    .await
                    .unwrap()
            })
        };
        let owner = WorkerId::new("a");
        let item = a
            .fetch_orchestration_work(&owner, Duration::from_secs(5), 1, Duration::from_secs(5))
            .await
            .unwrap()
            .pop()
            .unwrap();
        let mut state = item.state.clone().unwrap();
        state.status = crate::instance::RuntimeStatus::Running;
        a.commit_orchestration(OrchestrationCommit {
            instance_id: "x".into(),
            lease_token: item.lease_token.clone(),
            consumed: item.messages.iter().map(|(id, _)| *id).collect(),
            history: HistoryUpdate::Append(Vec::new()),
            state: Some(state),
            activities: Vec::new(),
            messages: Vec::new(),
            new_instances: Vec::new(),
            cancelled_activities: Vec::new(),
        })
        .await
        .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("B hears the change well before its 10-minute poll")
            .unwrap();
        assert_eq!(
            got.map(|s| s.status),
            Some(crate::instance::RuntimeStatus::Running)
        );
    }

    /// Start-ups racing to create the schema both succeed, and a schema with another
    /// application's tables or from a newer build is refused and left as it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrations_are_safe_and_refuse_foreign_or_newer_schemas() {
        let schema = test_schema();
        let (a, b, c) = tokio::join!(
            open(&schema, true),
            open(&schema, false),
            open(&schema, false)
        );
        a.create_instance(new_instance("x")).await.unwrap();
        assert!(b.get_instance("x").await.unwrap().is_some());
        drop((b, c));
        let conn = a.inner.pool.get().await.unwrap();
        conn.client
            .batch_execute("INSERT INTO schema_migrations(version) VALUES (99)")
            .await
            .unwrap();
        let err = PostgresStore::builder(test_url())
            .schema(&schema)
            .connect()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("has version 99"), "{err}");
        assert!(err.contains(&format!("up to {SCHEMA_VERSION}")), "{err}");
        drop(conn);
        let foreign = test_schema();
        let conn = a.inner.pool.get().await.unwrap();
        conn.client
            .batch_execute(&format!(
                "CREATE SCHEMA {foreign}; CREATE TABLE {foreign}.customers(id int)"
            ))
            .await
            .unwrap();
        let err = PostgresStore::builder(test_url())
            .schema(&foreign)
            .connect()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not durable's (customers)"), "{err}");
        let left: i64 = conn
            .client
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
                &[&foreign],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 1, "the foreign schema is left as it was");
        conn.client
            .batch_execute(&format!("DROP SCHEMA {foreign} CASCADE"))
            .await
            .unwrap();
    }

    fn raised(id: &str, name: &str) -> OrchestrationMessage {
        OrchestrationMessage::new(
            id,
            HistoryEvent::new(
                Utc::now(),
                EventKind::EventRaised {
                    name: name.into(),
                    input: None,
                },
            ),
        )
    }

    async fn fetch_one(store: &PostgresStore) -> OrchestrationWorkItem {
        store
            .fetch_orchestration_work(
                &WorkerId::new("w"),
                Duration::from_secs(60),
                1,
                Duration::from_secs(10),
            )
            .await
            .unwrap()
            .pop()
            .expect("a work item")
    }

    fn commit_with(
        item: &OrchestrationWorkItem,
        history: HistoryUpdate,
        state: InstanceState,
    ) -> OrchestrationCommit {
        OrchestrationCommit {
            instance_id: item.instance_id.clone(),
            lease_token: item.lease_token.clone(),
            consumed: item.messages.iter().map(|(id, _)| *id).collect(),
            history,
            state: Some(state),
            activities: Vec::new(),
            messages: Vec::new(),
            new_instances: Vec::new(),
            cancelled_activities: Vec::new(),
        }
    }

    /// Whether each stored history row of `id` is one JSON event (from before migration
    /// 6; else an episode's encoded events), in order.
    async fn json_rows(store: &PostgresStore, id: &str) -> Vec<bool> {
        let conn = store.inner.pool.get().await.unwrap();
        conn.client
            .query(
                "SELECT event IS NOT NULL FROM history WHERE instance_id = $1 ORDER BY seq",
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    fn started(t: DateTime<Utc>, input: &str) -> HistoryEvent {
        HistoryEvent::new(
            t,
            EventKind::ExecutionStarted {
                name: "orch".into(),
                version: None,
                input: Some(input.into()),
                parent: None,
                trace_parent: None,
            },
        )
    }

    /// A schema at version 5 (one JSON row per event) migrates to 6 without rewriting
    /// anything: its history reads as it was, and episodes appended after it (through the
    /// commit function and through a commit's transaction) are one row each, read in
    /// order after the old ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_5_schema_is_migrated_and_its_history_kept() {
        let schema = test_schema();
        let t0 = Utc::now();
        let old = vec![
            HistoryEvent::new(t0, EventKind::OrchestratorStarted),
            started(t0, "\"in\""),
            HistoryEvent::scheduled(
                0,
                t0,
                EventKind::TaskScheduled {
                    name: "act".into(),
                    input: None,
                    options: None,
                },
            ),
            HistoryEvent::new(t0, EventKind::OrchestratorCompleted),
        ];
        {
            let config = PostgresStore::builder(test_url()).config().unwrap();
            let mut client = pool::connect(&config, DEFAULT_CONNECT_TIMEOUT)
                .await
                .unwrap();
            schema::migrate_to(&mut client, &schema, 5).await.unwrap();
            client
                .execute(
                    &format!(
                        "INSERT INTO {schema}.instances(id, execution_id, name, status, input,
                            created_at, last_updated_at, history_len)
                         VALUES ('old', 'e', 'orch', 'Running', '\"in\"', now(), now(), 4)"
                    ),
                    &[],
                )
                .await
                .unwrap();
            for (seq, e) in old.iter().enumerate() {
                client
                    .execute(
                        &format!(
                            "INSERT INTO {schema}.history(instance_id, seq, event)
                             VALUES ('old', $1, $2)"
                        ),
                        &[&(seq as i64), &serde_json::to_string(e).unwrap()],
                    )
                    .await
                    .unwrap();
            }
        }
        let store = open(&schema, true).await;
        assert_eq!(store.read_history("old").await.unwrap(), old);
        store.send_message(raised("old", "go")).await.unwrap();
        let item = fetch_one(&store).await;
        assert_eq!(item.history_len, 4);
        let t1 = Utc::now();
        let second = vec![
            HistoryEvent::new(t1, EventKind::OrchestratorStarted),
            HistoryEvent::new(
                t1,
                EventKind::TaskCompleted {
                    seq: 0,
                    result: Some("1".into()),
                },
            ),
            HistoryEvent::new(t1, EventKind::OrchestratorCompleted),
        ];
        let state = item.state.clone().unwrap();
        store
            .commit_orchestration(commit_with(
                &item,
                HistoryUpdate::Append(second.clone()),
                state.clone(),
            ))
            .await
            .unwrap();
        let mut all = old.clone();
        all.extend(second);
        assert_eq!(store.read_history("old").await.unwrap(), all);
        // A commit starting a child takes the transaction's path.
        store.send_message(raised("old", "child")).await.unwrap();
        let item = fetch_one(&store).await;
        let third = vec![
            HistoryEvent::new(t1, EventKind::OrchestratorStarted),
            HistoryEvent::scheduled(
                1,
                t1,
                EventKind::SubOrchestrationInstanceCreated {
                    name: "orch".into(),
                    version: None,
                    instance_id: "kid".into(),
                    input: None,
                    abandon_on_parent_close: false,
                },
            ),
            HistoryEvent::new(t1, EventKind::OrchestratorCompleted),
        ];
        let mut commit = commit_with(&item, HistoryUpdate::Append(third.clone()), state);
        let mut kid = new_instance("kid");
        kid.parent = Some(crate::history::ParentInstance {
            instance_id: "old".into(),
            execution_id: "e".into(),
            seq: 1,
            name: "orch".into(),
        });
        commit.new_instances.push(kid);
        store.commit_orchestration(commit).await.unwrap();
        all.extend(third);
        assert_eq!(store.read_history("old").await.unwrap(), all);
        assert_eq!(
            json_rows(&store, "old").await,
            [true, true, true, true, false, false]
        );
        let conn = store.inner.pool.get().await.unwrap();
        let (version, len): (i32, i64) = {
            let r = conn
                .client
                .query_one(
                    "SELECT (SELECT max(version) FROM schema_migrations),
                        (SELECT history_len FROM instances WHERE id = 'old')",
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!((version, len), (SCHEMA_VERSION, 10));
        drop(conn);
        // The parent finishes; a purge by filter reads its mixed rows to find the child.
        let item = fetch_one(&store).await;
        assert_eq!(item.instance_id, "kid");
        store.send_message(raised("old", "end")).await.unwrap();
        let item = fetch_one(&store).await;
        let mut state = item.state.clone().unwrap();
        state.status = RuntimeStatus::Completed;
        store
            .commit_orchestration(commit_with(&item, HistoryUpdate::Append(Vec::new()), state))
            .await
            .unwrap();
        let purged = store
            .purge_instances(&InstanceFilter {
                instance_id_prefix: Some("old".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(purged >= 1, "{purged}");
        assert!(store.get_instance("old").await.unwrap().is_none());
        assert!(
            store.get_instance("kid").await.unwrap().is_none(),
            "the child goes with its parent"
        );
        assert!(store.read_history("old").await.unwrap().is_empty());
    }

    /// After migration 6 an episode is one history row; the input and output are stored
    /// once (the rows refer to the instance row) and stay what they were in the history
    /// when a later commit changes the instance row's, on either commit path; a new
    /// execution's history replaces the rows, and a purge deletes them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn history_rows_refer_to_the_payloads_and_stay_exact() {
        let schema = test_schema();
        let store = open(&schema, true).await;
        let input = format!("\"{}\"", "i".repeat(500));
        let output = format!("\"{}\"", "o".repeat(500));
        let mut n = new_instance("r");
        n.input = Some(input.clone());
        store.create_instance(n).await.unwrap();
        let item = fetch_one(&store).await;
        let t = Utc::now();
        let first = vec![
            HistoryEvent::new(t, EventKind::OrchestratorStarted),
            started(t, &input),
            HistoryEvent::new(t, EventKind::OrchestratorCompleted),
        ];
        let mut state = item.state.clone().unwrap();
        state.status = RuntimeStatus::Running;
        store
            .commit_orchestration(commit_with(
                &item,
                HistoryUpdate::Append(first.clone()),
                state.clone(),
            ))
            .await
            .unwrap();
        store.send_message(raised("r", "done")).await.unwrap();
        let item = fetch_one(&store).await;
        let second = vec![
            HistoryEvent::new(t, EventKind::OrchestratorStarted),
            HistoryEvent::new(
                t,
                EventKind::ExecutionCompleted {
                    status: RuntimeStatus::Completed,
                    result: Some(output.clone()),
                    failure: None,
                },
            ),
            HistoryEvent::new(t, EventKind::OrchestratorCompleted),
        ];
        state.status = RuntimeStatus::Completed;
        state.output = Some(output.clone());
        store
            .commit_orchestration(commit_with(
                &item,
                HistoryUpdate::Append(second.clone()),
                state.clone(),
            ))
            .await
            .unwrap();
        let mut all = first.clone();
        all.extend(second);
        assert_eq!(store.read_history("r").await.unwrap(), all);
        assert_eq!(json_rows(&store, "r").await, [false, false]);
        let stored = |store: Arc<PostgresStore>| async move {
            let conn = store.inner.pool.get().await.unwrap();
            let n: i64 = conn
                .client
                .query_one(
                    "SELECT sum(octet_length(events))::bigint FROM history
                     WHERE instance_id = 'r'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            n
        };
        let bytes = stored(store.clone()).await;
        assert!(bytes < 200, "the payloads are not repeated: {bytes} bytes");
        // A commit that changes both payloads under the kept history (the commit
        // function hands it to the transaction's path).
        store.send_message(raised("r", "more")).await.unwrap();
        let item = fetch_one(&store).await;
        state.input = Some("\"changed\"".into());
        state.output = Some("\"changed too\"".into());
        store
            .commit_orchestration(commit_with(
                &item,
                HistoryUpdate::Append(Vec::new()),
                state.clone(),
            ))
            .await
            .unwrap();
        assert_eq!(store.read_history("r").await.unwrap(), all);
        assert!(
            stored(store.clone()).await > 1000,
            "the payloads were written"
        );
        // Again with a child to create (the transaction's path from the start), after an
        // episode whose rows refer to the new payloads.
        store.send_message(raised("r", "again")).await.unwrap();
        let item = fetch_one(&store).await;
        let third = vec![
            HistoryEvent::new(t, EventKind::OrchestratorStarted),
            HistoryEvent::new(
                t,
                EventKind::ExecutionCompleted {
                    status: RuntimeStatus::Completed,
                    result: Some("\"changed too\"".into()),
                    failure: None,
                },
            ),
        ];
        store
            .commit_orchestration(commit_with(
                &item,
                HistoryUpdate::Append(third.clone()),
                state.clone(),
            ))
            .await
            .unwrap();
        all.extend(third);
        assert_eq!(store.read_history("r").await.unwrap(), all);
        store.send_message(raised("r", "child")).await.unwrap();
        let item = fetch_one(&store).await;
        state.output = None;
        let mut commit = commit_with(&item, HistoryUpdate::Append(Vec::new()), state.clone());
        let mut kid = new_instance("r-kid");
        kid.start_at = Some(Utc::now() + chrono::Duration::hours(1));
        commit.new_instances.push(kid);
        store.commit_orchestration(commit).await.unwrap();
        assert_eq!(store.read_history("r").await.unwrap(), all);
        // A new execution replaces the history; its rows refer to its own input.
        store.send_message(raised("r", "new")).await.unwrap();
        let item = fetch_one(&store).await;
        let fresh = vec![
            HistoryEvent::new(t, EventKind::OrchestratorStarted),
            started(t, "\"next\""),
        ];
        state.input = Some("\"next\"".into());
        state.execution_id = "e2".into();
        state.status = RuntimeStatus::Running;
        store
            .commit_orchestration(commit_with(
                &item,
                HistoryUpdate::Replace(fresh.clone()),
                state.clone(),
            ))
            .await
            .unwrap();
        assert_eq!(store.read_history("r").await.unwrap(), fresh);
        assert_eq!(json_rows(&store, "r").await, [false]);
        assert!(store.purge_instance("r").await.unwrap());
        assert!(json_rows(&store, "r").await.is_empty());
        assert!(store.read_history("r").await.unwrap().is_empty());
    }

    /// An entity's record (its `output`) changes with every operation: its history rows
    /// never refer to it, and read back exactly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entity_history_rows_hold_their_payloads() {
        let schema = test_schema();
        let store = open(&schema, true).await;
        let mut n = new_instance("@counter@a");
        n.input = Some("1".into());
        store.create_instance(n).await.unwrap();
        let mut all = Vec::new();
        for i in 0..3 {
            let item = fetch_one(&store).await;
            let mut state = item.state.clone().unwrap();
            state.status = RuntimeStatus::Running;
            state.output = Some(i.to_string());
            let events = vec![HistoryEvent::new(
                Utc::now(),
                EventKind::ExecutionCompleted {
                    status: RuntimeStatus::Running,
                    result: Some(i.to_string()),
                    failure: None,
                },
            )];
            store
                .commit_orchestration(commit_with(
                    &item,
                    HistoryUpdate::Append(events.clone()),
                    state,
                ))
                .await
                .unwrap();
            all.extend(events);
            assert_eq!(store.read_history("@counter@a").await.unwrap(), all);
            store
                .send_message(raised("@counter@a", "op"))
                .await
                .unwrap();
        }
    }

    /// Through the worker: an orchestration fails, is rewound and completes, then is
    /// restarted under its id and completes again; each time its history (rows of one
    /// episode, referring to the instance's input and output) reads back whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_fails_is_rewound_restarted_and_its_history_reads_back() {
        use std::sync::atomic::{AtomicBool, Ordering};

        use crate::{
            ActivityError, OrchestrationContext, OrchestrationError, Registry, StartOptions,
        };
        let schema = test_schema();
        let store = open(&schema, true).await;
        let fail = Arc::new(AtomicBool::new(true));
        let f = fail.clone();
        let registry = Registry::builder()
            .activity("step", move |_ctx, s: String| {
                let f = f.clone();
                async move {
                    if f.swap(false, Ordering::SeqCst) {
                        return Err(ActivityError::new("once"));
                    }
                    Ok::<_, ActivityError>(format!("{s}!"))
                }
            })
            .orchestrator(
                "twice",
                |ctx: OrchestrationContext, input: String| async move {
                    let a: String = ctx.call_activity_by_name("step", &input).await?;
                    let b: String = ctx.call_activity_by_name("step", &a).await?;
                    Ok::<_, OrchestrationError>(b)
                },
            )
            .build()
            .unwrap();
        let rt = crate::Worker::builder(store.clone() as Arc<dyn Store>)
            .registry(registry)
            .start()
            .unwrap();
        let client = rt.client();
        let input = format!("\"{}\"", "x".repeat(300));
        let id = client
            .start_by_name(
                "twice",
                Some(input.clone()),
                StartOptions {
                    instance_id: Some("tw".into()),
                    ..StartOptions::default()
                },
            )
            .await
            .unwrap();
        let wait = Duration::from_secs(60);
        let state = client.wait_for_completion(&id, wait).await.unwrap();
        assert_eq!(state.status, RuntimeStatus::Failed);
        client.rewind(&id, Some("again")).await.unwrap();
        let deadline = tokio::time::Instant::now() + wait;
        let state = loop {
            let s = client.get_state(&id).await.unwrap().unwrap();
            if s.status == RuntimeStatus::Completed {
                break s;
            }
            assert!(tokio::time::Instant::now() < deadline, "{s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let expected = format!("\"{}!!\"", "x".repeat(300));
        assert_eq!(state.output.as_deref(), Some(expected.as_str()));
        let payloads = |h: &[HistoryEvent]| {
            let started = h.iter().find_map(|e| match &e.kind {
                EventKind::ExecutionStarted { input, .. } => input.clone(),
                _ => None,
            });
            let completed = h.iter().rev().find_map(|e| match &e.kind {
                EventKind::ExecutionCompleted { status, result, .. } => {
                    Some((*status, result.clone()))
                }
                _ => None,
            });
            (started, completed)
        };
        let history = store.read_history(&id).await.unwrap();
        assert!(history
            .iter()
            .any(|e| matches!(e.kind, EventKind::ExecutionRewound { .. })));
        assert_eq!(
            payloads(&history),
            (
                Some(input.clone()),
                Some((RuntimeStatus::Completed, Some(expected.clone())))
            )
        );
        assert!(json_rows(&store, &id).await.iter().all(|json| !json));
        let again = client.restart(&id, false).await.unwrap();
        assert_eq!(again, id);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let s = client.get_state(&id).await.unwrap().unwrap();
            if s.status == RuntimeStatus::Completed && s.execution_id != state.execution_id {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let history = store.read_history(&id).await.unwrap();
        assert!(!history
            .iter()
            .any(|e| matches!(e.kind, EventKind::ExecutionRewound { .. })));
        assert_eq!(
            payloads(&history),
            (
                Some(input),
                Some((RuntimeStatus::Completed, Some(expected)))
            )
        );
        rt.shutdown().await;
        assert!(client.purge(&id).await.unwrap());
        assert!(json_rows(&store, &id).await.is_empty());
    }

    /// Bad settings are refused with a message that says what is wrong, before anything
    /// is written; the password never shows.
    #[tokio::test]
    async fn bad_settings_are_refused_clearly() {
        let err = |r: StoreResult<PostgresStore>| r.unwrap_err().to_string();
        let e = err(PostgresStore::builder("postgres://u:secret@127.0.0.1:1/x")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await);
        assert!(
            e.contains("cannot connect to PostgreSQL at 127.0.0.1:1/x"),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");
        let e = err(PostgresStore::builder("postgres://u:secret@host:port/x")
            .connect()
            .await);
        assert!(e.contains("not a usable PostgreSQL URL"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        let e = err(PostgresStore::builder(test_url())
            .schema("Bad-Name")
            .connect()
            .await);
        assert!(e.contains("'Bad-Name' is not a usable schema name"), "{e}");
        let e = err(PostgresStore::builder(test_url())
            .pool_size(0)
            .connect()
            .await);
        assert!(e.contains("pool size"), "{e}");
        assert!(is_postgres_url("postgres://h/db") && is_postgres_url("PostgreSQL://h/db"));
        assert!(!is_postgres_url("durable.db") && !is_postgres_url("postgres.db"));
    }
}
