//! The store conformance suite: the `Store` contract as executable cases. Every provider
//! runs [`run_all`] (enable the `testing` feature to use it from another crate). Each case
//! receives a fresh, empty store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::*;
use crate::history::ParentInstance;

const LEASE: Duration = Duration::from_millis(200);

fn new_instance(id: &str) -> NewInstance {
    NewInstance {
        instance_id: id.to_string(),
        execution_id: random_id(),
        name: "orch".into(),
        version: None,
        input: Some("1".into()),
        parent: None,
        created_at: Utc::now(),
        start_at: None,
    }
}

fn event(name: &str) -> HistoryEvent {
    HistoryEvent::new(
        Utc::now(),
        EventKind::EventRaised {
            name: name.into(),
            input: Some("\"x\"".into()),
        },
    )
}

fn commit_for(item: &OrchestrationWorkItem) -> OrchestrationCommit {
    OrchestrationCommit {
        instance_id: item.instance_id.clone(),
        lock_token: item.lock_token.clone(),
        consumed: item.messages.iter().map(|(id, _)| *id).collect(),
        history: HistoryUpdate::Append(vec![HistoryEvent::new(
            Utc::now(),
            EventKind::OrchestratorStarted,
        )]),
        state: None,
        activities: Vec::new(),
        messages: Vec::new(),
        new_instances: Vec::new(),
    }
}

fn running(item: &OrchestrationWorkItem) -> InstanceState {
    let mut s = item.state.clone().expect("instance exists");
    s.status = RuntimeStatus::Running;
    s
}

fn activity(item: &OrchestrationWorkItem, seq: u64) -> ActivityWorkItem {
    let st = item.state.as_ref().expect("instance exists");
    ActivityWorkItem {
        id: 0,
        instance_id: item.instance_id.clone(),
        execution_id: st.execution_id.clone(),
        task_scheduled_id: seq,
        name: "act".into(),
        input: Some("5".into()),
        attempt: 1,
        lock_token: String::new(),
        dequeue_count: 0,
    }
}

async fn fetch(store: &dyn Store) -> OrchestrationWorkItem {
    store
        .fetch_orchestration_work_item(LEASE)
        .await
        .expect("fetch works")
        .expect("a work item is ready")
}

async fn drain(store: &dyn Store) {
    while let Some(item) = store.fetch_orchestration_work_item(LEASE).await.unwrap() {
        let mut c = commit_for(&item);
        c.state = Some(running(&item));
        store.commit_orchestration(c).await.unwrap();
    }
}

/// Creating an instance stores it as Pending and queues its start message; a second
/// create with the id of a running instance is refused and changes nothing.
pub async fn create_and_duplicate(store: Arc<dyn Store>) {
    let n = new_instance("a");
    store.create_instance(n.clone()).await.unwrap();
    let st = store.get_instance("a").await.unwrap().unwrap();
    assert_eq!(st.status, RuntimeStatus::Pending);
    assert_eq!(st.input.as_deref(), Some("1"));
    let item = fetch(&*store).await;
    assert_eq!(item.messages.len(), 1);
    assert!(matches!(
        item.messages[0].1.event.kind,
        EventKind::ExecutionStarted { .. }
    ));
    let mut c = commit_for(&item);
    c.state = Some(running(&item));
    store.commit_orchestration(c).await.unwrap();
    let err = store.create_instance(new_instance("a")).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InstanceExists {
                status: RuntimeStatus::Running,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.read_history("a").await.unwrap().len(), 1);
    assert!(store
        .fetch_orchestration_work_item(LEASE)
        .await
        .unwrap()
        .is_none());
}

/// A work item carries at most [`MAX_MESSAGES_PER_WORK_ITEM`] messages, the oldest first;
/// the rest come in the next work item, in order.
pub async fn work_items_are_bounded(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    drain(&*store).await;
    let total = MAX_MESSAGES_PER_WORK_ITEM + 5;
    for i in 0..total {
        store
            .send_message(OrchestrationMessage::new("a", event(&format!("e{i}"))))
            .await
            .unwrap();
    }
    let names = |item: &OrchestrationWorkItem| -> Vec<String> {
        item.messages
            .iter()
            .map(|(_, m)| match &m.event.kind {
                EventKind::EventRaised { name, .. } => name.clone(),
                other => panic!("unexpected message {other:?}"),
            })
            .collect()
    };
    let first = fetch(&*store).await;
    let expected: Vec<String> = (0..MAX_MESSAGES_PER_WORK_ITEM)
        .map(|i| format!("e{i}"))
        .collect();
    assert_eq!(names(&first), expected);
    store
        .commit_orchestration(commit_for(&first))
        .await
        .unwrap();
    let rest = fetch(&*store).await;
    let expected: Vec<String> = (MAX_MESSAGES_PER_WORK_ITEM..total)
        .map(|i| format!("e{i}"))
        .collect();
    assert_eq!(names(&rest), expected);
    store.commit_orchestration(commit_for(&rest)).await.unwrap();
    assert!(store
        .fetch_orchestration_work_item(LEASE)
        .await
        .unwrap()
        .is_none());
}

/// A finished instance is replaced by a create with its id: fresh state and history.
pub async fn replace_finished_instance(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let item = fetch(&*store).await;
    let mut c = commit_for(&item);
    let mut st = running(&item);
    st.status = RuntimeStatus::Completed;
    st.output = Some("42".into());
    c.state = Some(st);
    store.commit_orchestration(c).await.unwrap();
    store.create_instance(new_instance("a")).await.unwrap();
    let st = store.get_instance("a").await.unwrap().unwrap();
    assert_eq!(st.status, RuntimeStatus::Pending);
    assert_eq!(st.output, None);
    assert!(store.read_history("a").await.unwrap().is_empty());
}

/// Messages to unknown instances are refused by `send_message`.
pub async fn send_to_unknown(store: Arc<dyn Store>) {
    let err = store
        .send_message(OrchestrationMessage::new("nobody", event("e")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

/// A fetch returns every visible message in arrival order and leases the instance.
pub async fn fetch_order_and_lease(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    for n in ["e1", "e2", "e3"] {
        store
            .send_message(OrchestrationMessage::new("a", event(n)))
            .await
            .unwrap();
    }
    let item = fetch(&*store).await;
    let names: Vec<String> = item
        .messages
        .iter()
        .map(|(_, m)| match &m.event.kind {
            EventKind::EventRaised { name, .. } => name.clone(),
            k => k.type_name().to_string(),
        })
        .collect();
    assert_eq!(names, ["ExecutionStarted", "e1", "e2", "e3"]);
    let ids: Vec<u64> = item.messages.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    store
        .send_message(OrchestrationMessage::new("a", event("e4")))
        .await
        .unwrap();
    assert!(
        store
            .fetch_orchestration_work_item(LEASE)
            .await
            .unwrap()
            .is_none(),
        "a leased instance is not handed out twice"
    );
    store.commit_orchestration(commit_for(&item)).await.unwrap();
    let next = fetch(&*store).await;
    assert_eq!(
        next.messages.len(),
        1,
        "only the unconsumed message remains"
    );
}

/// A commit applies everything it carries, atomically.
pub async fn commit_applies_everything(store: Arc<dyn Store>) {
    store.create_instance(new_instance("p")).await.unwrap();
    store.create_instance(new_instance("other")).await.unwrap();
    drain(&*store).await;
    store
        .send_message(OrchestrationMessage::new("p", event("go")))
        .await
        .unwrap();
    let item = fetch(&*store).await;
    let mut c = commit_for(&item);
    c.state = Some({
        let mut s = running(&item);
        s.custom_status = Some("\"busy\"".into());
        s
    });
    c.activities.push(activity(&item, 0));
    c.messages
        .push(OrchestrationMessage::new("other", event("hello")));
    c.messages
        .push(OrchestrationMessage::new("ghost", event("lost")));
    let mut child = new_instance("p:0001");
    child.parent = Some(ParentInstance {
        instance_id: "p".into(),
        execution_id: item.state.as_ref().unwrap().execution_id.clone(),
        task_scheduled_id: 1,
        name: "orch".into(),
    });
    c.new_instances.push(child);
    c.messages
        .push(OrchestrationMessage::new("p:0001", event("to-child")));
    store.commit_orchestration(c).await.unwrap();

    let st = store.get_instance("p").await.unwrap().unwrap();
    assert_eq!(st.custom_status.as_deref(), Some("\"busy\""));
    assert_eq!(store.read_history("p").await.unwrap().len(), 2);
    let acts = store.fetch_activity_work_items(LEASE, 10).await.unwrap();
    assert_eq!(acts.len(), 1);
    assert_eq!(acts[0].dequeue_count, 1);
    assert_eq!(acts[0].input.as_deref(), Some("5"));
    let child = store.get_instance("p:0001").await.unwrap().unwrap();
    assert_eq!(child.parent.unwrap().instance_id, "p");
    assert!(store.get_instance("ghost").await.unwrap().is_none());
    let mut seen = std::collections::HashMap::new();
    while let Some(item) = store.fetch_orchestration_work_item(LEASE).await.unwrap() {
        seen.insert(item.instance_id.clone(), item.messages.len());
        store.commit_orchestration(commit_for(&item)).await.unwrap();
    }
    assert_eq!(seen.get("other"), Some(&1));
    assert_eq!(
        seen.get("p:0001"),
        Some(&2),
        "start message and the message sent to it"
    );
}

/// Creating a child whose id belongs to a running instance fails the parent's call.
pub async fn child_conflict_fails_parent(store: Arc<dyn Store>) {
    store.create_instance(new_instance("p")).await.unwrap();
    store.create_instance(new_instance("busy")).await.unwrap();
    drain(&*store).await;
    store
        .send_message(OrchestrationMessage::new("p", event("go")))
        .await
        .unwrap();
    let item = fetch(&*store).await;
    let mut c = commit_for(&item);
    let mut child = new_instance("busy");
    child.parent = Some(ParentInstance {
        instance_id: "p".into(),
        execution_id: item.state.as_ref().unwrap().execution_id.clone(),
        task_scheduled_id: 3,
        name: "orch".into(),
    });
    c.new_instances.push(child);
    store.commit_orchestration(c).await.unwrap();
    let item = fetch(&*store).await;
    assert_eq!(item.instance_id, "p");
    assert!(matches!(
        item.messages[0].1.event.kind,
        EventKind::SubOrchestrationInstanceFailed {
            task_scheduled_id: 3,
            ..
        }
    ));
}

/// A commit with a stale lock token is refused and changes nothing (fencing).
pub async fn fencing(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let first = fetch(&*store).await;
    tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
    let second = fetch(&*store).await;
    assert_ne!(first.lock_token, second.lock_token);
    let mut stale = commit_for(&first);
    stale.state = Some(running(&first));
    assert_eq!(
        store.commit_orchestration(stale).await.unwrap_err(),
        StoreError::LockLost
    );
    assert!(store.read_history("a").await.unwrap().is_empty());
    assert_eq!(
        store.get_instance("a").await.unwrap().unwrap().status,
        RuntimeStatus::Pending
    );
    let mut wrong = commit_for(&second);
    wrong.lock_token = "not-a-token".into();
    assert_eq!(
        store.commit_orchestration(wrong).await.unwrap_err(),
        StoreError::LockLost
    );
    store
        .commit_orchestration(commit_for(&second))
        .await
        .unwrap();
}

/// Abandoning releases the lease; the messages come back after the delay.
pub async fn abandon(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let item = fetch(&*store).await;
    store
        .abandon_orchestration_work_item("a", &item.lock_token, Duration::ZERO)
        .await
        .unwrap();
    let item = fetch(&*store).await;
    store
        .abandon_orchestration_work_item("a", &item.lock_token, Duration::from_millis(150))
        .await
        .unwrap();
    assert!(store
        .fetch_orchestration_work_item(LEASE)
        .await
        .unwrap()
        .is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = fetch(&*store).await;
    assert_eq!(again.messages.len(), 1);
}

/// Delayed messages wait for their time, are reported by `next_wakeup`, and storing one
/// signals idle dispatchers.
pub async fn delayed_messages(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    drain(&*store).await;
    let notified = store.signals().orchestrations.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let at = Utc::now() + chrono::Duration::milliseconds(200);
    store
        .send_message(OrchestrationMessage::new("a", event("later")).visible_at(at))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(1), notified)
        .await
        .expect("storing a delayed message signals dispatchers");
    assert!(store
        .fetch_orchestration_work_item(LEASE)
        .await
        .unwrap()
        .is_none());
    let wake = store.next_wakeup().await.unwrap().expect("a wake-up time");
    assert!(wake <= at + chrono::Duration::milliseconds(1));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let item = fetch(&*store).await;
    assert_eq!(item.messages.len(), 1);
}

/// Activity leases: complete, renew, abandon, and fencing after a takeover.
pub async fn activity_leases(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let item = fetch(&*store).await;
    let mut c = commit_for(&item);
    c.state = Some(running(&item));
    c.activities.push(activity(&item, 0));
    c.activities.push(activity(&item, 1));
    store.commit_orchestration(c).await.unwrap();
    let acts = store.fetch_activity_work_items(LEASE, 1).await.unwrap();
    assert_eq!(acts.len(), 1);
    let a0 = acts[0].clone();
    let exec = item.state.as_ref().unwrap().execution_id.clone();
    let done = |seq| {
        OrchestrationMessage::new(
            "a",
            HistoryEvent::new(
                Utc::now(),
                EventKind::TaskCompleted {
                    task_scheduled_id: seq,
                    result: Some("1".into()),
                },
            ),
        )
        .for_execution(exec.clone())
    };
    store
        .renew_activity_lease(&a0, Duration::from_secs(5))
        .await
        .unwrap();
    store
        .complete_activity(&a0, done(a0.task_scheduled_id))
        .await
        .unwrap();
    assert_eq!(
        store
            .complete_activity(&a0, done(a0.task_scheduled_id))
            .await
            .unwrap_err(),
        StoreError::LockLost,
        "a completed item cannot complete twice"
    );
    let a1 = store
        .fetch_activity_work_items(LEASE, 10)
        .await
        .unwrap()
        .remove(0);
    store.abandon_activity(&a1, Duration::ZERO).await.unwrap();
    let a1b = store
        .fetch_activity_work_items(LEASE, 10)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(a1b.id, a1.id);
    assert_eq!(a1b.dequeue_count, 2);
    tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
    let a1c = store
        .fetch_activity_work_items(LEASE, 10)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(a1c.dequeue_count, 3);
    assert_eq!(
        store.complete_activity(&a1b, done(1)).await.unwrap_err(),
        StoreError::LockLost,
        "the worker whose lease expired is fenced off"
    );
    assert_eq!(
        store.renew_activity_lease(&a1b, LEASE).await.unwrap_err(),
        StoreError::LockLost
    );
    store.complete_activity(&a1c, done(1)).await.unwrap();
    let item = fetch(&*store).await;
    assert_eq!(item.messages.len(), 2);
}

/// Listing with filters and continuation tokens.
pub async fn listing(store: Arc<dyn Store>) {
    let t0 = Utc::now();
    for i in 0..7 {
        let id = if i < 3 {
            format!("job-{i}")
        } else {
            format!("other-{i}")
        };
        store.create_instance(new_instance(&id)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let item = fetch(&*store).await;
    let mut c = commit_for(&item);
    let mut st = running(&item);
    st.status = RuntimeStatus::Completed;
    c.state = Some(st);
    store.commit_orchestration(c).await.unwrap();

    let all = InstanceFilter::default();
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = store
            .list_instances(&all, 3, token.as_deref())
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|s| s.instance_id.clone()));
        match page.continuation_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 7, "every instance exactly once: {seen:?}");
    assert_eq!(seen.len(), 7);

    let prefix = InstanceFilter {
        instance_id_prefix: Some("job-".into()),
        ..Default::default()
    };
    assert_eq!(
        store
            .list_instances(&prefix, 100, None)
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    let done = InstanceFilter {
        statuses: vec![RuntimeStatus::Completed],
        ..Default::default()
    };
    assert_eq!(
        store
            .list_instances(&done, 100, None)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let future = InstanceFilter {
        created_from: Some(Utc::now() + chrono::Duration::hours(1)),
        ..Default::default()
    };
    assert!(store
        .list_instances(&future, 100, None)
        .await
        .unwrap()
        .items
        .is_empty());
    let range = InstanceFilter {
        created_from: Some(t0),
        created_to: Some(Utc::now()),
        ..Default::default()
    };
    assert_eq!(
        store
            .list_instances(&range, 100, None)
            .await
            .unwrap()
            .items
            .len(),
        7
    );
    let err = store
        .list_instances(&all, 3, Some("garbage"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
}

/// Purging one instance, and finished instances by filter.
pub async fn purging(store: Arc<dyn Store>) {
    for id in ["a", "b", "c"] {
        store.create_instance(new_instance(id)).await.unwrap();
    }
    for _ in 0..2 {
        let item = fetch(&*store).await;
        let mut c = commit_for(&item);
        let mut st = running(&item);
        st.status = RuntimeStatus::Failed;
        c.state = Some(st);
        store.commit_orchestration(c).await.unwrap();
    }
    assert!(store.purge_instance("c").await.unwrap());
    assert!(!store.purge_instance("c").await.unwrap());
    assert!(store.get_instance("c").await.unwrap().is_none());
    let n = store
        .purge_instances(&InstanceFilter {
            statuses: vec![RuntimeStatus::Failed, RuntimeStatus::Pending],
            ..Default::default()
        })
        .await
        .unwrap();
    let left = store
        .list_instances(&InstanceFilter::default(), 10, None)
        .await
        .unwrap();
    assert_eq!(n as usize + left.items.len(), 2);
    assert!(
        left.items.iter().all(|s| !s.status.is_terminal()),
        "only finished instances are purged"
    );
}

/// Payloads over the limit are refused with their size and the limit; nothing changes.
pub async fn payload_limit(store: Arc<dyn Store>) {
    let limit = store.max_payload_bytes();
    let big = format!("\"{}\"", "x".repeat(limit + 10));
    let mut n = new_instance("big");
    n.input = Some(big.clone());
    match store.create_instance(n).await.unwrap_err() {
        StoreError::PayloadTooLarge { size, limit: l, .. } => {
            assert_eq!(size, big.len());
            assert_eq!(l, limit);
        }
        other => panic!("expected PayloadTooLarge, got {other}"),
    }
    assert!(store.get_instance("big").await.unwrap().is_none());
    store.create_instance(new_instance("a")).await.unwrap();
    let item = fetch(&*store).await;
    let mut c = commit_for(&item);
    let mut st = running(&item);
    st.output = Some(big.clone());
    c.state = Some(st);
    assert!(matches!(
        store.commit_orchestration(c).await.unwrap_err(),
        StoreError::PayloadTooLarge { .. }
    ));
    assert!(store.read_history("a").await.unwrap().is_empty());
    let mut c = commit_for(&item);
    c.state = Some(running(&item));
    c.activities.push(activity(&item, 0));
    store.commit_orchestration(c).await.unwrap();
    let a = store
        .fetch_activity_work_items(LEASE, 1)
        .await
        .unwrap()
        .remove(0);
    let msg = OrchestrationMessage::new(
        "a",
        HistoryEvent::new(
            Utc::now(),
            EventKind::TaskCompleted {
                task_scheduled_id: 0,
                result: Some(big),
            },
        ),
    );
    assert!(matches!(
        store.complete_activity(&a, msg).await.unwrap_err(),
        StoreError::PayloadTooLarge { .. }
    ));
}

/// Waiters of an instance are woken when a commit changes its state.
pub async fn instance_change_signal(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let waiter = store.signals().instance_waiter("a");
    let notified = waiter.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let item = fetch(&*store).await;
    let mut c = commit_for(&item);
    c.state = Some(running(&item));
    store.commit_orchestration(c).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), notified)
        .await
        .expect("the waiter is woken");
}

/// Runs every case, each on a fresh store from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    create_and_duplicate(make().await).await;
    replace_finished_instance(make().await).await;
    send_to_unknown(make().await).await;
    fetch_order_and_lease(make().await).await;
    commit_applies_everything(make().await).await;
    child_conflict_fails_parent(make().await).await;
    fencing(make().await).await;
    abandon(make().await).await;
    delayed_messages(make().await).await;
    activity_leases(make().await).await;
    listing(make().await).await;
    purging(make().await).await;
    payload_limit(make().await).await;
    instance_change_signal(make().await).await;
    work_items_are_bounded(make().await).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_store_conforms() {
        run_all(|| async { Arc::new(MemoryStore::with_max_payload(64 * 1024)) as Arc<dyn Store> })
            .await;
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_store_conforms() {
        let dir = std::env::temp_dir().join(format!("durable-conformance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let counter = std::sync::atomic::AtomicU32::new(0);
        run_all(|| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path = dir.join(format!("c{n}.db"));
            async move {
                Arc::new(
                    crate::store::sqlite::SqliteStore::builder(&path)
                        .max_payload_bytes(64 * 1024)
                        .open()
                        .unwrap(),
                ) as Arc<dyn Store>
            }
        })
        .await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
