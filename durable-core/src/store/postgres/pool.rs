//! A small connection pool: up to `size` connections, opened on demand, each with its own
//! cache of prepared statements. A connection that broke is dropped, not returned.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::error::pg_in;
use crate::store::StoreError;
use crate::store::StoreResult;

/// One pooled connection and the statements prepared on it.
pub(crate) struct Conn {
    pub client: Client,
    pub statements: HashMap<&'static str, Statement>,
    /// True between a `BEGIN` sent by hand and its `COMMIT`/`ROLLBACK`: a connection
    /// dropped in that state (its caller's future was dropped, or the end failed) is
    /// closed, never reused, so the server rolls the transaction back.
    pub in_tx: bool,
}

impl Conn {
    /// The statement for `text`, prepared once per connection.
    pub async fn prepare(&mut self, text: &'static str) -> StoreResult<Statement> {
        if let Some(s) = self.statements.get(text) {
            return Ok(s.clone());
        }
        let s = self
            .client
            .prepare(text)
            .await
            .map_err(|e| pg_in("cannot prepare a statement", e))?;
        self.statements.insert(text, s.clone());
        Ok(s)
    }
}

/// The pool.
pub(crate) struct Pool {
    config: Config,
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
    connect_timeout: Duration,
}

/// A connection taken from the pool; goes back on drop unless it broke.
pub(crate) struct Pooled<'a> {
    conn: Option<Conn>,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            if !c.client.is_closed() && !c.in_tx {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(c);
            }
        }
    }
}

impl Pool {
    pub fn new(config: Config, size: usize, connect_timeout: Duration) -> Self {
        Self {
            config,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
            connect_timeout,
        }
    }

    /// A connection: an idle one, or a new one when the pool is not full; waits otherwise.
    pub async fn get(&self) -> StoreResult<Pooled<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::failed("the PostgreSQL store is closed"))?;
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match idle {
                Some(c) if c.client.is_closed() => continue,
                Some(c) => {
                    return Ok(Pooled {
                        conn: Some(c),
                        pool: self,
                        _permit: permit,
                    })
                }
                None => break,
            }
        }
        let client = connect(&self.config, self.connect_timeout).await?;
        Ok(Pooled {
            conn: Some(Conn {
                client,
                statements: HashMap::new(),
                in_tx: false,
            }),
            pool: self,
            _permit: permit,
        })
    }

    /// Closes the idle connections and refuses new checkouts.
    pub fn close(&self) {
        self.permits.close();
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Opens one connection and drives it on the current tokio runtime.
pub(crate) async fn connect(config: &Config, timeout: Duration) -> StoreResult<Client> {
    let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| {
            StoreError::unavailable(format!(
                "cannot connect to PostgreSQL at {}: no answer within {timeout:?}",
                describe(config)
            ))
        })?
        .map_err(|e| {
            pg_in(
                format!("cannot connect to PostgreSQL at {}", describe(config)),
                e,
            )
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "a PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// `host:port/dbname` for messages (never the password).
pub(crate) fn describe(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        config
            .get_dbname()
            .unwrap_or_else(|| config.get_user().unwrap_or("?"))
    )
}
