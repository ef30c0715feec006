//! Wake-ups across hosts: one dedicated connection LISTENs on the schema's channel and
//! also sends this process's notifications (batched, after the commits they announce).
//! A lost connection is reopened with backoff; on every (re)connect all waiters are woken,
//! since notifications may have been missed. Polling remains only as a fallback.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::{watch, Notify};
use tokio_postgres::{AsyncMessage, Config, NoTls};

/// What a notification announces.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Event {
    /// Orchestration messages became visible (or an instance was released with some).
    Orchestrations,
    /// Activity work items became visible.
    Activities,
    /// A delayed message or work item was stored: waiters recompute their wake-up time.
    Timer,
    /// The stored state of this instance changed.
    Instance(String),
}

impl Event {
    fn payload(&self) -> String {
        match self {
            Event::Orchestrations => "o".into(),
            Event::Activities => "a".into(),
            Event::Timer => "t".into(),
            Event::Instance(id) => format!("i{id}"),
        }
    }

    fn parse(p: &str) -> Option<Event> {
        match p.as_bytes().first()? {
            b'o' => Some(Event::Orchestrations),
            b'a' => Some(Event::Activities),
            b't' => Some(Event::Timer),
            b'i' => Some(Event::Instance(p[1..].to_string())),
            _ => None,
        }
    }
}

/// Local waiters, woken by this process's commits and by other hosts' notifications.
#[derive(Default)]
pub(crate) struct Wakers {
    pub orchestrations: Notify,
    pub activities: Notify,
    /// Fired when a delayed message or work item was stored (or notifications may have
    /// been missed): waiting fetches read the next due time again.
    pub timers: Notify,
    instances: crate::store::signals::InstanceWaiters,
    /// Notifications waiting to be sent.
    pending: Mutex<HashSet<Event>>,
    send: Notify,
    /// Database time minus local time, in microseconds (measured on each connect and
    /// every minute).
    pub clock_offset_micros: AtomicI64,
    /// Whether the listening connection is up (polling is the only wake-up otherwise).
    pub listening: AtomicBool,
}

/// Notification payloads are limited to 8000 bytes; longer instance ids wake every
/// instance waiter instead.
const MAX_PAYLOAD: usize = 7900;

impl Wakers {
    /// A wait for the stored state of `instance_id` to change: its notifier fires on a
    /// change; dropping it unregisters it.
    pub fn instance_waiter<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> crate::store::signals::InstanceWaiter<'a> {
        self.instances.register(instance_id)
    }

    fn instance_changed(&self, instance_id: &str) {
        self.instances.changed(instance_id);
    }

    /// How many instances have waiters now.
    #[cfg(test)]
    pub fn waited_instances(&self) -> usize {
        self.instances.len()
    }

    fn all_instances_changed(&self) {
        self.instances.all_changed();
    }

    /// Wakes local waiters for `events`.
    pub fn wake(&self, events: &[Event]) {
        for e in events {
            self.wake_one(e);
        }
    }

    fn wake_one(&self, e: &Event) {
        match e {
            Event::Orchestrations => self.orchestrations.notify_waiters(),
            Event::Activities => self.activities.notify_waiters(),
            Event::Timer => {
                self.timers.notify_waiters();
                self.orchestrations.notify_waiters();
                self.activities.notify_waiters();
            }
            Event::Instance(id) if id.is_empty() || id.len() + 1 > MAX_PAYLOAD => {
                self.all_instances_changed()
            }
            Event::Instance(id) => self.instance_changed(id),
        }
    }

    fn wake_all(&self) {
        self.timers.notify_waiters();
        self.orchestrations.notify_waiters();
        self.activities.notify_waiters();
        self.all_instances_changed();
    }

    /// Wakes local waiters at once and queues the notifications for the other hosts.
    pub fn announce(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.wake(&events);
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.extend(events);
        drop(p);
        self.send.notify_one();
    }

    /// The database's clock, as seen from here.
    pub fn db_now(&self) -> DateTime<Utc> {
        let off = self.clock_offset_micros.load(Ordering::Relaxed);
        Utc::now() + chrono::Duration::microseconds(off)
    }
}

/// How long the notifier gathers notifications before sending them: the most a wake-up
/// across hosts is delayed by batching.
const GATHER: Duration = Duration::from_millis(2);

/// The channel of `schema`.
pub(crate) fn channel(schema: &str) -> String {
    format!("{schema}_events")
}

/// The `application_name` of `schema`'s listening connection.
pub(crate) fn listener_name(schema: &str) -> String {
    format!("durable listener {schema}")
}

/// Runs the listener until `stop` turns true.
pub(crate) async fn run(
    config: Config,
    schema: String,
    wakers: Arc<Wakers>,
    connect_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let chan = channel(&schema);
    // Named, so an operator (or a test) can tell it in pg_stat_activity.
    let mut config = config;
    config.application_name(listener_name(&schema));
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let connected = tokio::time::timeout(connect_timeout, config.connect(NoTls)).await;
        let (client, mut connection) = match connected {
            Ok(Ok(c)) => c,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer".into(),
                };
                tracing::warn!(error = %why, "cannot open the PostgreSQL listening connection; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // Drives the connection: notifications from other backends wake local waiters;
        // ours (same backend pid) were already delivered locally.
        let (closed_tx, mut closed_rx) = watch::channel(false);
        let w = wakers.clone();
        let own_pid = Arc::new(AtomicI64::new(-1));
        let own = own_pid.clone();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        if i64::from(n.process_id()) == own.load(Ordering::Relaxed) {
                            continue;
                        }
                        if let Some(e) = Event::parse(n.payload()) {
                            w.wake_one(&e);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "the PostgreSQL listening connection failed");
                        break;
                    }
                }
            }
            let _ = closed_tx.send(true);
        });
        let setup = async {
            let pid: i32 = client
                .query_one("SELECT pg_backend_pid()", &[])
                .await?
                .get(0);
            own_pid.store(i64::from(pid), Ordering::Relaxed);
            client.batch_execute(&format!("LISTEN \"{chan}\"")).await?;
            measure_clock(&client, &wakers).await
        };
        if let Err(e) = setup.await {
            tracing::warn!(error = %e, "cannot LISTEN on PostgreSQL; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(100);
        wakers.listening.store(true, Ordering::Relaxed);
        // Anything may have happened while no one listened.
        wakers.wake_all();
        let send = client
            .prepare("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .await;
        let Ok(send) = send else {
            wakers.listening.store(false, Ordering::Relaxed);
            continue;
        };
        let mut last_clock = Instant::now();
        loop {
            // A short gathering window: under load, one statement carries the
            // notifications of many commits (each NOTIFY is a transaction of its own).
            if !wakers
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                tokio::time::sleep(GATHER).await;
            }
            let batch: Vec<String> = {
                let mut p = wakers.pending.lock().unwrap_or_else(|e| e.into_inner());
                p.drain().map(|e| e.payload()).collect()
            };
            if !batch.is_empty() {
                let batch: Vec<String> = batch
                    .into_iter()
                    .map(|p| if p.len() > MAX_PAYLOAD { "i".into() } else { p })
                    .collect();
                if let Err(e) = client.execute(&send, &[&chan, &batch]).await {
                    tracing::warn!(error = %e, "cannot send PostgreSQL notifications");
                    break;
                }
                continue;
            }
            if last_clock.elapsed() > Duration::from_secs(60) {
                if measure_clock(&client, &wakers).await.is_err() {
                    break;
                }
                last_clock = Instant::now();
            }
            tokio::select! {
                _ = wakers.send.notified() => {}
                _ = closed_rx.changed() => break,
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
        wakers.listening.store(false, Ordering::Relaxed);
    }
}

/// Measures the database clock against the local one (midpoint of the round trip).
async fn measure_clock(
    client: &tokio_postgres::Client,
    wakers: &Wakers,
) -> Result<(), tokio_postgres::Error> {
    let before = Utc::now();
    let db: DateTime<Utc> = client
        .query_one("SELECT clock_timestamp()", &[])
        .await?
        .get(0);
    let after = Utc::now();
    let mid = before + (after - before) / 2;
    let off = (db - mid).num_microseconds().unwrap_or(0);
    wakers.clock_offset_micros.store(off, Ordering::Relaxed);
    Ok(())
}
