//! Waiting for a single-process store: in-process [`LocalSignals`] fired by commits, and
//! the fetch and instance waits built on them. For providers owned by one process (memory,
//! SQLite); a provider shared by several processes waits on its backend instead.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::{Clock, StoreResult};
use crate::instance::InstanceState;

/// Wake-ups a single-process store fires when it commits, so waiting fetches and waiting
/// clients react at once instead of polling.
#[derive(Debug, Default)]
pub struct LocalSignals {
    orchestrations: Notify,
    activities: Notify,
    instance_waiters: InstanceWaiters,
}

impl LocalSignals {
    /// Orchestration messages became visible, or a delayed one (a timer) was stored.
    pub fn orchestrations_changed(&self) {
        self.orchestrations.notify_waiters();
    }

    /// Activity work items became visible, or a delayed retry was stored.
    pub fn activities_changed(&self) {
        self.activities.notify_waiters();
    }

    /// The stored state of `instance_id` changed.
    pub fn instance_changed(&self, instance_id: &str) {
        self.instance_waiters.changed(instance_id);
    }

    fn instance_waiter<'a>(&'a self, instance_id: &'a str) -> InstanceWaiter<'a> {
        self.instance_waiters.register(instance_id)
    }

    /// How many instances have waiters registered now.
    #[cfg(test)]
    fn waited_instances(&self) -> usize {
        self.instance_waiters.len()
    }
}

/// Waiters for changes of single instances, by instance id: registered by a wait,
/// woken (and forgotten) by a change, unregistered when the wait ends.
#[derive(Debug, Default)]
pub(crate) struct InstanceWaiters {
    map: Mutex<HashMap<String, Arc<Notify>>>,
}

impl InstanceWaiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a waiter for changes of `instance_id`; dropping it unregisters it, so
    /// a wait that ends without a change (timed out, or done at its first read) leaves
    /// nothing behind.
    pub(crate) fn register<'a>(&'a self, instance_id: &'a str) -> InstanceWaiter<'a> {
        let notify = self
            .lock()
            .entry(instance_id.to_string())
            .or_default()
            .clone();
        InstanceWaiter {
            waiters: self,
            instance_id,
            notify: Some(notify),
        }
    }

    /// Wakes the waiters of `instance_id`.
    pub(crate) fn changed(&self, instance_id: &str) {
        let notify = self.lock().remove(instance_id);
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }

    /// Wakes every waiter.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn all_changed(&self) {
        let all: Vec<_> = self.lock().drain().map(|(_, n)| n).collect();
        for n in all {
            n.notify_waiters();
        }
    }

    /// How many instances have waiters now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A registered wait for changes of one instance (see [`InstanceWaiters::register`]).
pub(crate) struct InstanceWaiter<'a> {
    waiters: &'a InstanceWaiters,
    instance_id: &'a str,
    /// Always `Some` until dropped.
    notify: Option<Arc<Notify>>,
}

impl InstanceWaiter<'_> {
    /// The notifier a change fires.
    pub(crate) fn notify(&self) -> &Notify {
        self.notify.as_deref().expect("set until dropped")
    }
}

impl Drop for InstanceWaiter<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.lock();
        // Released under the lock, so of several waiters leaving at once the last one
        // sees only the map's reference and removes the entry.
        let mine = self.notify.take();
        let last = match (map.get(self.instance_id), &mine) {
            (Some(entry), Some(mine)) => Arc::ptr_eq(entry, mine) && Arc::strong_count(entry) == 2,
            _ => false,
        };
        drop(mine);
        if last {
            map.remove(self.instance_id);
        }
    }
}

impl LocalSignals {
    /// Runs `attempt` until it returns work or `wait` passes. `attempt` returns the work it
    /// leased and, when none, the store-clock time delayed work next comes due; between
    /// attempts this sleeps until then, until `wait` ends, or until a commit signals work.
    pub async fn fetch_orchestrations<T, F, Fut>(
        &self,
        clock: &dyn Clock,
        wait: Duration,
        attempt: F,
    ) -> StoreResult<Vec<T>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<(Vec<T>, Option<DateTime<Utc>>)>>,
    {
        fetch_waiting(&self.orchestrations, clock, wait, attempt).await
    }

    /// [`fetch_orchestrations`](Self::fetch_orchestrations) for activity work items.
    pub async fn fetch_activities<T, F, Fut>(
        &self,
        clock: &dyn Clock,
        wait: Duration,
        attempt: F,
    ) -> StoreResult<Vec<T>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<(Vec<T>, Option<DateTime<Utc>>)>>,
    {
        fetch_waiting(&self.activities, clock, wait, attempt).await
    }

    /// Waits until `read` returns a state different from `seen`, or `timeout` passes;
    /// returns the last state read.
    pub async fn wait_for_instance<F, Fut>(
        &self,
        instance_id: &str,
        seen: Option<&InstanceState>,
        timeout: Duration,
        read: F,
    ) -> StoreResult<Option<InstanceState>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<Option<InstanceState>>>,
    {
        self.wait_for_instance_until(instance_id, timeout, &|s| s != seen, read)
            .await
    }

    /// Waits until `read` returns a state `done` accepts, or `timeout` passes; returns the
    /// last state read. Reads once at the start and once per change of the instance.
    pub async fn wait_for_instance_until<F, Fut>(
        &self,
        instance_id: &str,
        timeout: Duration,
        done: &(dyn for<'s> Fn(Option<&'s InstanceState>) -> bool + Send + Sync),
        mut read: F,
    ) -> StoreResult<Option<InstanceState>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<Option<InstanceState>>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the read, so a change committed after it still wakes us.
            let waiter = self.instance_waiter(instance_id);
            let notified = waiter.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let state = read().await?;
            if done(state.as_ref()) || tokio::time::Instant::now() >= deadline {
                return Ok(state);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

async fn fetch_waiting<T, F, Fut>(
    notify: &Notify,
    clock: &dyn Clock,
    wait: Duration,
    mut attempt: F,
) -> StoreResult<Vec<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<(Vec<T>, Option<DateTime<Utc>>)>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let attempted_at = clock.now();
        let (items, next_due) = attempt().await?;
        let now = tokio::time::Instant::now();
        if !items.is_empty() || now >= deadline {
            return Ok(items);
        }
        // Work that was due when the attempt ran and was not taken is not takeable (a lapsed
        // lease on an instance with nothing to do): only later due times end the nap early.
        // The due time is on the store's clock, which may be virtual: sleep on the clock.
        let due = next_due.filter(|d| *d > attempted_at);
        let until_due = async {
            match due {
                Some(d) => clock.sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = until_due => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_that_end_without_a_change_leave_no_waiter_behind() {
        let signals = LocalSignals::default();
        let never = |_: Option<&InstanceState>| false;
        let always = |_: Option<&InstanceState>| true;
        // Timed out: the instance never changed.
        let got = signals
            .wait_for_instance_until("a", Duration::from_millis(50), &never, || async {
                Ok(None)
            })
            .await
            .unwrap();
        assert!(got.is_none());
        assert_eq!(signals.waited_instances(), 0, "a timed-out waiter stayed");
        // Done at the first read.
        signals
            .wait_for_instance_until("b", Duration::from_secs(5), &always, || async { Ok(None) })
            .await
            .unwrap();
        assert_eq!(signals.waited_instances(), 0, "a satisfied waiter stayed");

        // Two waiters on one instance: the first to time out leaves the entry to the
        // other, which a change still wakes; once it is gone too, nothing is left.
        let signals = Arc::new(signals);
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let read_count = || reads.load(std::sync::atomic::Ordering::SeqCst);
        let long = tokio::spawn({
            let (signals, reads) = (signals.clone(), reads.clone());
            async move {
                let done = |_: Option<&InstanceState>| false;
                signals
                    .wait_for_instance_until("c", Duration::from_secs(60), &done, || {
                        reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async { Ok(None) }
                    })
                    .await
                    .unwrap();
            }
        });
        async fn until(what: &str, cond: impl Fn() -> bool) {
            for _ in 0..1000 {
                if cond() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("never: {what}");
        }
        until("the long waiter read once", || read_count() == 1).await;
        signals
            .wait_for_instance_until("c", Duration::from_millis(50), &never, || async {
                Ok(None)
            })
            .await
            .unwrap();
        assert_eq!(
            signals.waited_instances(),
            1,
            "the other waiter's entry went"
        );
        signals.instance_changed("c");
        until("the long waiter woke and read again", || read_count() == 2).await;
        until("the long waiter registered again", || {
            signals.waited_instances() == 1
        })
        .await;
        long.abort();
        let _ = long.await;
        assert_eq!(signals.waited_instances(), 0, "an aborted waiter stayed");
    }
}
