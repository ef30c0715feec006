//! The store conformance suite: the `Store` contract, every method and every optional
//! capability, as executable cases. A provider implements [`Harness`] (how to get a fresh,
//! empty store) and expands [`store_conformance_tests!`](crate::store_conformance_tests),
//! which makes one `#[tokio::test]` per case (enable the `testing` feature to use it from
//! another crate). Cases of a capability the store does not offer pass without checking.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use super::*;
use crate::history::ParentInstance;

/// A short lease, so cases that wait for one to lapse stay quick.
const LEASE: Duration = Duration::from_millis(200);
/// The longest a case waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(5);

/// How the conformance cases get stores.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A fresh, empty store.
    async fn store(&self) -> Arc<dyn Store>;

    /// Another handle on the data of `store`, opened as another process would open it
    /// (its own connections, its own wake-ups). A store owned by one process returns
    /// `store` itself, the default.
    async fn peer(&self, store: &Arc<dyn Store>) -> Arc<dyn Store> {
        store.clone()
    }
}

fn owner() -> WorkerId {
    WorkerId::new("conformance-worker")
}

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
        trace_parent: None,
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
        lease_token: item.lease_token.clone(),
        consumed: item.messages.iter().map(|(id, _)| *id).collect(),
        history: HistoryUpdate::Append(vec![HistoryEvent::new(
            Utc::now(),
            EventKind::OrchestratorStarted,
        )]),
        state: None,
        activities: Vec::new(),
        messages: Vec::new(),
        new_instances: Vec::new(),
        cancelled_activities: Vec::new(),
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
        seq,
        name: "act".into(),
        input: Some("5".into()),
        attempt: 1,
        lease_token: String::new(),
        dequeue_count: 0,
        start_to_close: None,
        heartbeat_timeout: None,
        heartbeat_details: None,
        trace_parent: None,
        scheduled_at: None,
    }
}

async fn fetch_many(store: &dyn Store, max: usize, wait: Duration) -> Vec<OrchestrationWorkItem> {
    store
        .fetch_orchestration_work(&owner(), LEASE, max, wait)
        .await
        .expect("fetch works")
}

/// The next work item, waiting for it up to [`PATIENCE`].
async fn fetch(store: &dyn Store) -> OrchestrationWorkItem {
    fetch_many(store, 1, PATIENCE)
        .await
        .pop()
        .expect("a work item is ready")
}

/// True when no work item is ready now.
async fn nothing_ready(store: &dyn Store) -> bool {
    fetch_many(store, 1, Duration::ZERO).await.is_empty()
}

async fn fetch_activities(store: &dyn Store, max: usize) -> Vec<ActivityWorkItem> {
    store
        .fetch_activity_work(&owner(), LEASE, max, Duration::ZERO)
        .await
        .expect("fetch works")
}

/// The next activity work item, waiting for it up to [`PATIENCE`].
async fn fetch_activity(store: &dyn Store) -> ActivityWorkItem {
    store
        .fetch_activity_work(&owner(), LEASE, 1, PATIENCE)
        .await
        .expect("fetch works")
        .pop()
        .expect("an activity is ready")
}

async fn drain(store: &dyn Store) {
    loop {
        let items = fetch_many(store, 16, Duration::ZERO).await;
        if items.is_empty() {
            break;
        }
        for item in items {
            let mut c = commit_for(&item);
            c.state = Some(running(&item));
            store.commit_orchestration(c).await.unwrap();
        }
    }
}

/// `a`, running, with one activity scheduled; returns the activity, leased.
async fn running_with_activity(store: &dyn Store) -> (OrchestrationWorkItem, ActivityWorkItem) {
    store.create_instance(new_instance("a")).await.unwrap();
    let item = fetch(store).await;
    let mut c = commit_for(&item);
    c.state = Some(running(&item));
    c.activities.push(activity(&item, 0));
    store.commit_orchestration(c).await.unwrap();
    let a = fetch_activity(store).await;
    (item, a)
}

fn result_of(a: &ActivityWorkItem) -> OrchestrationMessage {
    OrchestrationMessage::new(
        a.instance_id.clone(),
        HistoryEvent::new(
            Utc::now(),
            EventKind::TaskCompleted {
                seq: a.seq,
                result: Some("1".into()),
            },
        ),
    )
    .for_execution(a.execution_id.clone())
}

fn assert_lease_lost<T: std::fmt::Debug>(r: StoreResult<T>, what: &str) {
    match r {
        Err(e) if e.kind() == StoreErrorKind::LeaseLost => {}
        other => panic!("{what}: expected LeaseLost, got {other:?}"),
    }
}

/// `pending_work`, when the store counts it, counts instances with a due message and no
/// lease, and activities due and not leased: leasing takes them out of the count, a
/// delayed message is not counted before it is due.
pub async fn pending_work_counts(store: Arc<dyn Store>) {
    let pending = || async { store.pending_work().await.expect("pending_work works") };
    let Some(empty) = pending().await else {
        return;
    };
    assert_eq!(
        empty,
        PendingWork::default(),
        "an empty store has nothing pending"
    );
    store.create_instance(new_instance("a")).await.unwrap();
    store.create_instance(new_instance("b")).await.unwrap();
    let mut later = new_instance("c");
    later.start_at = Some(Utc::now() + chrono::Duration::hours(1));
    store.create_instance(later).await.unwrap();
    let two = pending().await.expect("still counted");
    assert_eq!((two.orchestrations, two.activities), (2, 0), "{two:?}");
    let item = fetch(store.as_ref()).await;
    assert_eq!(
        pending().await.unwrap().orchestrations,
        1,
        "a leased instance is not pending"
    );
    let mut c = commit_for(&item);
    c.state = Some(running(&item));
    c.activities.push(activity(&item, 0));
    c.activities.push(activity(&item, 1));
    store.commit_orchestration(c).await.unwrap();
    let now = pending().await.unwrap();
    assert_eq!((now.orchestrations, now.activities), (1, 2), "{now:?}");
    fetch_activity(store.as_ref()).await;
    assert_eq!(
        pending().await.unwrap().activities,
        1,
        "a leased activity is not pending"
    );
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
    assert_eq!(
        err.kind(),
        StoreErrorKind::AlreadyExists {
            status: RuntimeStatus::Running
        },
        "{err}"
    );
    assert_eq!(err.instance_id(), Some("a"));
    assert_eq!(store.read_history("a").await.unwrap().len(), 1);
    assert!(nothing_ready(&*store).await);
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
    assert!(nothing_ready(&*store).await);
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
    assert_eq!(err.kind(), StoreErrorKind::NotFound, "{err}");
    assert_eq!(err.instance_id(), Some("nobody"));
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
        nothing_ready(&*store).await,
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
        seq: 1,
        name: "orch".into(),
    });
    c.new_instances.push(child);
    c.messages
        .push(OrchestrationMessage::new("p:0001", event("to-child")));
    store.commit_orchestration(c).await.unwrap();

    let st = store.get_instance("p").await.unwrap().unwrap();
    assert_eq!(st.custom_status.as_deref(), Some("\"busy\""));
    assert_eq!(store.read_history("p").await.unwrap().len(), 2);
    let acts = fetch_activities(&*store, 10).await;
    assert_eq!(acts.len(), 1);
    assert_eq!(acts[0].dequeue_count, 1);
    assert_eq!(acts[0].input.as_deref(), Some("5"));
    let child = store.get_instance("p:0001").await.unwrap().unwrap();
    assert_eq!(child.parent.unwrap().instance_id, "p");
    assert!(store.get_instance("ghost").await.unwrap().is_none());
    let mut seen = std::collections::HashMap::new();
    loop {
        let items = fetch_many(&*store, 16, Duration::ZERO).await;
        if items.is_empty() {
            break;
        }
        for item in items {
            seen.insert(item.instance_id.clone(), item.messages.len());
            store.commit_orchestration(commit_for(&item)).await.unwrap();
        }
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
        seq: 3,
        name: "orch".into(),
    });
    c.new_instances.push(child);
    store.commit_orchestration(c).await.unwrap();
    let item = fetch(&*store).await;
    assert_eq!(item.instance_id, "p");
    assert!(matches!(
        item.messages[0].1.event.kind,
        EventKind::SubOrchestrationInstanceFailed { seq: 3, .. }
    ));
}

/// A commit with a stale lease token is refused and changes nothing (fencing); a lapsed
/// lease makes the instance fetchable again, and a waiting fetch takes it when it lapses.
pub async fn fencing(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let first = fetch(&*store).await;
    let second = fetch(&*store).await;
    assert_ne!(first.lease_token, second.lease_token);
    let mut stale = commit_for(&first);
    stale.state = Some(running(&first));
    assert_lease_lost(store.commit_orchestration(stale).await, "stale commit");
    assert!(store.read_history("a").await.unwrap().is_empty());
    assert_eq!(
        store.get_instance("a").await.unwrap().unwrap().status,
        RuntimeStatus::Pending
    );
    let mut wrong = commit_for(&second);
    wrong.lease_token = "not-a-token".into();
    assert_lease_lost(store.commit_orchestration(wrong).await, "wrong token");
    store
        .commit_orchestration(commit_for(&second))
        .await
        .unwrap();
}

/// Orchestration work items count their hand-outs since the instance's last commit: a
/// lease that lapsed or was released (its worker died) counts, an abandoned hand-out does
/// not, and a commit starts the count over.
pub async fn orchestration_dequeue_count(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let first = fetch(&*store).await;
    assert_eq!(first.dequeue_count, 1);
    // The lease lapses (a fetch waits for it).
    let second = fetch(&*store).await;
    assert_eq!(second.dequeue_count, 2, "a lapsed lease counts");
    store.release_leases(&owner()).await.unwrap();
    let third = fetch(&*store).await;
    assert_eq!(third.dequeue_count, 3, "a released lease counts");
    store
        .abandon_orchestration("a", &third.lease_token, Duration::ZERO)
        .await
        .unwrap();
    let fourth = fetch(&*store).await;
    assert_eq!(
        fourth.dequeue_count, 3,
        "an abandoned hand-out does not count"
    );
    let mut c = commit_for(&fourth);
    c.state = Some(running(&fourth));
    store.commit_orchestration(c).await.unwrap();
    store
        .send_message(OrchestrationMessage::new("a", event("e")))
        .await
        .unwrap();
    let fifth = fetch(&*store).await;
    assert_eq!(fifth.dequeue_count, 1, "a commit starts the count over");
    store
        .commit_orchestration(commit_for(&fifth))
        .await
        .unwrap();
    store
        .send_message(OrchestrationMessage::new("a", event("e")))
        .await
        .unwrap();
    assert_eq!(
        fetch(&*store).await.dequeue_count,
        1,
        "a commit that keeps the state starts it over too"
    );
}

/// An activity's timeouts and heartbeat details are kept with its work item (times to the
/// microsecond); an item without them has none.
pub async fn activity_timeout_is_kept(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let item = fetch(&*store).await;
    let mut c = commit_for(&item);
    c.state = Some(running(&item));
    let mut timed = activity(&item, 0);
    timed.start_to_close = Some(Duration::from_micros(1_500_001));
    timed.heartbeat_timeout = Some(Duration::from_millis(250));
    timed.heartbeat_details = Some("{\"done\":3}".into());
    c.activities.push(timed);
    c.activities.push(activity(&item, 1));
    store.commit_orchestration(c).await.unwrap();
    let mut got = fetch_activities(&*store, 10).await;
    got.sort_by_key(|a| a.seq);
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].start_to_close,
        Some(Duration::from_micros(1_500_001))
    );
    assert_eq!(got[0].heartbeat_timeout, Some(Duration::from_millis(250)));
    assert_eq!(got[0].heartbeat_details.as_deref(), Some("{\"done\":3}"));
    assert_eq!(got[1].start_to_close, None);
    assert_eq!(got[1].heartbeat_timeout, None);
    assert_eq!(got[1].heartbeat_details, None);
}

/// A commit's `cancelled_activities` delete the work items of those calls, queued or
/// running: a queued one is never handed out; a running one's renewals and result fail
/// with `LeaseLost` and its result reaches no one. Other calls, other executions' calls
/// and other instances' calls stay; cancelling a call without a work item does nothing.
/// Works on both commit paths (with and without new activities and children).
pub async fn cancelled_activities(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    store.create_instance(new_instance("b")).await.unwrap();
    let mut items = fetch_many(&*store, 2, PATIENCE).await;
    if items.len() < 2 {
        items.push(fetch(&*store).await);
    }
    items.sort_by(|x, y| x.instance_id.cmp(&y.instance_id));
    let (a, b) = (&items[0], &items[1]);
    for item in [a, b] {
        let mut c = commit_for(item);
        c.state = Some(running(item));
        for seq in 0..3 {
            c.activities.push(activity(item, seq));
        }
        store.commit_orchestration(c).await.unwrap();
    }
    // a's seq 0 runs (scheduled first); the rest wait in the queue.
    let running_a0 = fetch_activity(&*store).await;
    assert_eq!((running_a0.instance_id.as_str(), running_a0.seq), ("a", 0));
    store
        .send_message(OrchestrationMessage::new("a", event("go")))
        .await
        .unwrap();
    let item = fetch(&*store).await;
    assert_eq!(item.instance_id, "a");
    let exec = running_a0.execution_id.clone();
    let mut c = commit_for(&item);
    c.cancelled_activities = vec![
        ActivityCall {
            execution_id: exec.clone(),
            seq: 0,
        },
        ActivityCall {
            execution_id: exec.clone(),
            seq: 1,
        },
        // No work item: skipped.
        ActivityCall {
            execution_id: exec.clone(),
            seq: 9,
        },
        // Another execution's call with the same number: not this one's.
        ActivityCall {
            execution_id: "another".into(),
            seq: 2,
        },
    ];
    store.commit_orchestration(c).await.unwrap();
    assert_lease_lost(
        store.renew_activity_lease(&running_a0, LEASE).await,
        "renewing a cancelled attempt",
    );
    assert_lease_lost(
        store
            .complete_activity(&running_a0, result_of(&running_a0))
            .await,
        "completing a cancelled attempt",
    );
    // What is left: a's seq 2 and b's three.
    let mut left: Vec<(String, u64)> = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while left.len() < 4 && tokio::time::Instant::now() < deadline {
        for got in store
            .fetch_activity_work(&owner(), LEASE * 50, 10, Duration::from_millis(200))
            .await
            .unwrap()
        {
            left.push((got.instance_id.clone(), got.seq));
        }
    }
    left.sort();
    left.dedup();
    assert_eq!(
        left,
        vec![
            ("a".to_string(), 2),
            ("b".to_string(), 0),
            ("b".to_string(), 1),
            ("b".to_string(), 2)
        ],
        "cancelled calls are never handed out; the others are"
    );
    // The completed attempt's result never reached the instance.
    assert!(
        nothing_ready(&*store).await,
        "a cancelled attempt's result is not delivered"
    );

    // With new activities in the same commit (the other commit path of some stores): the
    // cancellation applies to the items stored before it only.
    store
        .send_message(OrchestrationMessage::new("b", event("go")))
        .await
        .unwrap();
    let item = fetch(&*store).await;
    assert_eq!(item.instance_id, "b");
    let mut c = commit_for(&item);
    c.activities.push(activity(&item, 3));
    c.new_instances.push({
        let mut child = new_instance("b-child");
        child.parent = Some(ParentInstance {
            instance_id: "b".into(),
            execution_id: item.state.as_ref().unwrap().execution_id.clone(),
            seq: 4,
            name: "orch".into(),
        });
        child
    });
    let exec_b = item.state.as_ref().unwrap().execution_id.clone();
    c.cancelled_activities = vec![
        ActivityCall {
            execution_id: exec_b.clone(),
            seq: 1,
        },
        ActivityCall {
            execution_id: exec_b.clone(),
            seq: 3,
        },
    ];
    store.commit_orchestration(c).await.unwrap();
    store.release_leases(&owner()).await.unwrap();
    let mut got: Vec<u64> = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while got.len() < 3 && tokio::time::Instant::now() < deadline {
        for a in store
            .fetch_activity_work(&owner(), LEASE * 50, 10, Duration::from_millis(200))
            .await
            .unwrap()
        {
            if a.instance_id == "b" {
                got.push(a.seq);
            }
        }
    }
    got.sort();
    assert_eq!(
        got,
        vec![0, 2, 3],
        "b's seq 1 is gone; the new seq 3 is not"
    );
}

/// Activity work items carry the store-clock time they were stored at, on every hand-out.
pub async fn activity_scheduled_at(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let item = fetch(&*store).await;
    let before = store.clock().now();
    let mut c = commit_for(&item);
    c.state = Some(running(&item));
    c.activities.push(activity(&item, 0));
    store.commit_orchestration(c).await.unwrap();
    let after = store.clock().now();
    let got = fetch_activity(&*store).await;
    let at = got
        .scheduled_at
        .expect("a stored item says when it was stored");
    // Times are kept to the microsecond.
    let slack = chrono::Duration::milliseconds(1);
    assert!(
        at >= before - slack && at <= after + slack,
        "{before} <= {at} <= {after}"
    );
    store.abandon_activity(&got, Duration::ZERO).await.unwrap();
    let again = fetch_activity(&*store).await;
    assert_eq!(again.scheduled_at, Some(at), "kept across hand-outs");
}

/// Heartbeat details stored with a lease renewal stay on the work item: a later hand-out
/// (after the lease was given back, or lapsed as when its worker died) carries them in
/// place of those it was scheduled with; a plain renewal keeps them; a stale lease stores
/// nothing.
pub async fn activity_heartbeat_details(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let item = fetch(&*store).await;
    let mut c = commit_for(&item);
    c.state = Some(running(&item));
    let mut scheduled = activity(&item, 0);
    scheduled.heartbeat_details = Some("{\"done\":1}".into());
    c.activities.push(scheduled);
    store.commit_orchestration(c).await.unwrap();
    let beats = |done: &str| {
        vec![ActivityHeartbeat {
            name: "act".into(),
            seq: 0,
            attempt: 1,
            details: format!("{{\"done\":{done}}}"),
        }]
    };
    assert_eq!(store.activity_heartbeats("a").await.unwrap(), beats("1"));
    let a1 = fetch_activity(&*store).await;
    assert_eq!(a1.heartbeat_details.as_deref(), Some("{\"done\":1}"));
    store
        .renew_activity_lease_with_heartbeat(&a1, LEASE, "{\"done\":2}")
        .await
        .unwrap();
    assert_eq!(store.activity_heartbeats("a").await.unwrap(), beats("2"));
    assert!(store.activity_heartbeats("b").await.unwrap().is_empty());
    store.renew_activity_lease(&a1, LEASE).await.unwrap();
    store.abandon_activity(&a1, Duration::ZERO).await.unwrap();
    let a2 = fetch_activity(&*store).await;
    assert_eq!(a2.id, a1.id);
    assert_eq!(a2.heartbeat_details.as_deref(), Some("{\"done\":2}"));
    assert_lease_lost(
        store
            .renew_activity_lease_with_heartbeat(&a1, LEASE, "{\"done\":9}")
            .await,
        "stale heartbeat",
    );
    // A short lease that lapses, as when the worker holding it dies.
    store
        .renew_activity_lease_with_heartbeat(&a2, Duration::from_millis(1), "{\"done\":3}")
        .await
        .unwrap();
    let a3 = fetch_activity(&*store).await;
    assert_eq!(a3.id, a1.id);
    assert_eq!(a3.dequeue_count, 3);
    assert_eq!(a3.heartbeat_details.as_deref(), Some("{\"done\":3}"));
    assert_lease_lost(
        store
            .renew_activity_lease_with_heartbeat(&a2, LEASE, "{\"done\":9}")
            .await,
        "the worker whose lease lapsed is fenced off",
    );
    assert_eq!(store.activity_heartbeats("a").await.unwrap(), beats("3"));
    store.complete_activity(&a3, result_of(&a3)).await.unwrap();
    assert!(store.activity_heartbeats("a").await.unwrap().is_empty());
}

/// Abandoning releases the lease; the messages come back after the delay; a stale token
/// is refused.
pub async fn abandon(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let item = fetch(&*store).await;
    store
        .abandon_orchestration("a", &item.lease_token, Duration::ZERO)
        .await
        .unwrap();
    assert_lease_lost(
        store
            .abandon_orchestration("a", &item.lease_token, Duration::ZERO)
            .await,
        "abandoning twice",
    );
    let item = fetch(&*store).await;
    store
        .abandon_orchestration("a", &item.lease_token, Duration::from_millis(150))
        .await
        .unwrap();
    assert!(nothing_ready(&*store).await);
    let again = fetch(&*store).await;
    assert_eq!(again.messages.len(), 1);
}

/// Renewing an instance's lease keeps others from taking it past the first expiry; a stale
/// token cannot renew.
pub async fn renew_orchestration_lease(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let item = fetch(&*store).await;
    store
        .renew_orchestration_lease("a", &item.lease_token, Duration::from_secs(60))
        .await
        .unwrap();
    // Well past the first lease: still held.
    let taken = fetch_many(&*store, 1, LEASE * 3).await;
    assert!(taken.is_empty(), "a renewed lease is not taken over");
    assert_lease_lost(
        store
            .renew_orchestration_lease("a", "not-a-token", LEASE)
            .await,
        "renewing with a wrong token",
    );
    store.commit_orchestration(commit_for(&item)).await.unwrap();
    assert_lease_lost(
        store
            .renew_orchestration_lease("a", &item.lease_token, LEASE)
            .await,
        "renewing a released lease",
    );
}

/// Delayed messages (timers) wait for their time on the store's clock; a fetch that is
/// already waiting when one is stored takes it when it comes due.
pub async fn delayed_messages(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    drain(&*store).await;
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .fetch_orchestration_work(&owner(), LEASE, 1, PATIENCE)
                .await
        })
    };
    let at = store.clock().now() + chrono::Duration::milliseconds(300);
    store
        .send_message(OrchestrationMessage::new("a", event("later")).visible_at(at))
        .await
        .unwrap();
    assert!(nothing_ready(&*store).await, "not before its time");
    let items = waiting.await.unwrap().unwrap();
    assert_eq!(items.len(), 1, "the waiting fetch takes it when due");
    assert_eq!(items[0].messages.len(), 1);
    assert!(
        store.clock().now() >= at,
        "delivered at its time on the store's clock"
    );
}

/// A fetch with a wait returns as soon as work arrives, and empty when none arrives in
/// time; a fetch without a wait returns at once.
pub async fn fetch_waits_for_work(store: Arc<dyn Store>) {
    assert!(nothing_ready(&*store).await);
    let started = tokio::time::Instant::now();
    assert!(fetch_many(&*store, 1, Duration::from_millis(100))
        .await
        .is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "waits up to `wait`"
    );
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .fetch_orchestration_work(&owner(), LEASE, 1, PATIENCE)
                .await
        })
    };
    tokio::task::yield_now().await;
    store.create_instance(new_instance("a")).await.unwrap();
    let items = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiting fetch returns")
        .unwrap()
        .unwrap();
    assert_eq!(items.len(), 1, "it wakes for the new instance");
    assert_eq!(items[0].instance_id, "a");
}

/// A fetch leases at most `max` instances, each once.
pub async fn fetch_takes_up_to_max(store: Arc<dyn Store>) {
    // The oldest messages are all "a"'s: it still counts once in a batch.
    store.create_instance(new_instance("a")).await.unwrap();
    for n in ["e1", "e2"] {
        store
            .send_message(OrchestrationMessage::new("a", event(n)))
            .await
            .unwrap();
    }
    for id in ["b", "c", "d", "e"] {
        store.create_instance(new_instance(id)).await.unwrap();
    }
    let first = fetch_many(&*store, 3, Duration::ZERO).await;
    assert_eq!(first.len(), 3);
    let mut oldest: Vec<&str> = first.iter().map(|i| i.instance_id.as_str()).collect();
    oldest.sort();
    assert_eq!(oldest, ["a", "b", "c"], "the oldest messages first");
    let messages: usize = first.iter().map(|i| i.messages.len()).sum();
    assert_eq!(messages, 5, "each instance with all its messages");
    let rest = fetch_many(&*store, 10, Duration::ZERO).await;
    assert_eq!(rest.len(), 2);
    let mut ids: Vec<String> = first
        .iter()
        .chain(&rest)
        .map(|i| i.instance_id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c", "d", "e"]);
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
    let acts = fetch_activities(&*store, 1).await;
    assert_eq!(acts.len(), 1);
    let a0 = acts[0].clone();
    let exec = item.state.as_ref().unwrap().execution_id.clone();
    let done = |seq| {
        OrchestrationMessage::new(
            "a",
            HistoryEvent::new(
                Utc::now(),
                EventKind::TaskCompleted {
                    seq,
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
    store.complete_activity(&a0, done(a0.seq)).await.unwrap();
    assert_lease_lost(
        store.complete_activity(&a0, done(a0.seq)).await,
        "a completed item cannot complete twice",
    );
    let a1 = fetch_activities(&*store, 10).await.remove(0);
    store.abandon_activity(&a1, Duration::ZERO).await.unwrap();
    assert_lease_lost(
        store.abandon_activity(&a1, Duration::ZERO).await,
        "abandoning twice",
    );
    let a1b = fetch_activities(&*store, 10).await.remove(0);
    assert_eq!(a1b.id, a1.id);
    assert_eq!(a1b.dequeue_count, 2);
    assert!(
        fetch_activities(&*store, 10).await.is_empty(),
        "leased once"
    );
    // Waits for the lease to lapse, then takes the item over.
    let a1c = fetch_activity(&*store).await;
    assert_eq!(a1c.id, a1.id);
    assert_eq!(a1c.dequeue_count, 3);
    assert_lease_lost(
        store.complete_activity(&a1b, done(1)).await,
        "the worker whose lease lapsed is fenced off",
    );
    assert_lease_lost(store.renew_activity_lease(&a1b, LEASE).await, "stale renew");
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
    assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
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

/// What one instance of [`purge_tree`] does in its only episode: its status after it, the
/// children its history records (with `abandon_on_parent_close`), and children it creates
/// without recording them (rows naming it as parent, as a reused id or an earlier
/// execution's child would).
struct Episode {
    status: RuntimeStatus,
    children: Vec<(&'static str, bool)>,
    unrecorded: Vec<&'static str>,
}

/// Creates `root` and runs every instance's one episode by `plan` (instances without a
/// plan stay running), children included, until no work is left.
async fn purge_tree(
    store: &dyn Store,
    roots: &[&str],
    plan: &mut std::collections::HashMap<&'static str, Episode>,
) {
    for root in roots {
        store.create_instance(new_instance(root)).await.unwrap();
    }
    loop {
        let items = fetch_many(store, 16, Duration::ZERO).await;
        if items.is_empty() {
            break;
        }
        for item in items {
            let ep = plan.remove(item.instance_id.as_str()).unwrap_or(Episode {
                status: RuntimeStatus::Running,
                children: Vec::new(),
                unrecorded: Vec::new(),
            });
            let mut c = commit_for(&item);
            let mut st = running(&item);
            st.status = ep.status;
            let execution_id = st.execution_id.clone();
            c.state = Some(st);
            let all = ep
                .children
                .iter()
                .map(|(id, _)| *id)
                .chain(ep.unrecorded.iter().copied());
            for (seq, child) in all.enumerate() {
                let mut n = new_instance(child);
                n.parent = Some(ParentInstance {
                    instance_id: item.instance_id.clone(),
                    execution_id: execution_id.clone(),
                    seq: seq as u64,
                    name: "orch".into(),
                });
                c.new_instances.push(n);
            }
            if let HistoryUpdate::Append(events) = &mut c.history {
                for (seq, (child, abandon)) in ep.children.iter().enumerate() {
                    events.push(HistoryEvent::scheduled(
                        seq as u64,
                        Utc::now(),
                        EventKind::SubOrchestrationInstanceCreated {
                            name: "orch".into(),
                            version: None,
                            instance_id: (*child).into(),
                            input: None,
                            abandon_on_parent_close: *abandon,
                        },
                    ));
                }
            }
            store.commit_orchestration(c).await.unwrap();
        }
    }
}

/// A purge by filter follows the parent-close policy: the matching finished instances go
/// with the sub-orchestrations their history started, finished or not, matching or not,
/// and theirs in turn; abandoned children, rows that only name a purged instance as parent
/// and the children of instances that do not match stay. Each instance counts once.
pub async fn purging_follows_parent_close(store: Arc<dyn Store>) {
    use RuntimeStatus::{Completed, Failed, Running};
    let ep = |status, children: &[(&'static str, bool)], unrecorded: &[&'static str]| Episode {
        status,
        children: children.to_vec(),
        unrecorded: unrecorded.to_vec(),
    };
    let mut plan = std::collections::HashMap::from([
        (
            "p",
            ep(
                Completed,
                &[("p-run", false), ("p-abandoned", true), ("p-done", false)],
                &["p-unrecorded"],
            ),
        ),
        (
            "p-run",
            ep(
                Running,
                &[("p-run-g", false), ("p-run-abandoned", true)],
                &[],
            ),
        ),
        ("p-done", ep(Completed, &[], &[])),
        ("alone", ep(Completed, &[], &[])),
        ("failed", ep(Failed, &[("failed-child", false)], &[])),
        ("failed-child", ep(Completed, &[], &[])),
    ]);
    purge_tree(&*store, &["p", "alone", "failed", "busy"], &mut plan).await;
    assert!(
        plan.is_empty(),
        "every planned episode ran: {:?}",
        plan.keys()
    );
    let completed = InstanceFilter {
        statuses: vec![Completed],
        instance_id_prefix: Some("p".into()),
        ..Default::default()
    };
    let alone = InstanceFilter {
        instance_id_prefix: Some("alone".into()),
        ..Default::default()
    };
    let n = store.purge_instances(&completed).await.unwrap();
    assert_eq!(n, 4, "p, p-run, p-run-g and p-done, each once");
    assert_eq!(store.purge_instances(&alone).await.unwrap(), 1);
    for gone in ["p", "p-run", "p-run-g", "p-done", "alone"] {
        assert!(
            store.get_instance(gone).await.unwrap().is_none(),
            "{gone} was purged"
        );
        assert!(store.read_history(gone).await.unwrap().is_empty(), "{gone}");
    }
    for kept in [
        "p-abandoned",
        "p-run-abandoned",
        "p-unrecorded",
        "failed",
        "failed-child",
        "busy",
    ] {
        assert!(
            store.get_instance(kept).await.unwrap().is_some(),
            "{kept} was kept"
        );
    }
    assert_eq!(store.purge_instances(&completed).await.unwrap(), 0);
}

/// An abandoned activity with a delay comes back after it; a renewed activity lease
/// outlives the first expiry.
pub async fn activity_delay_and_renew(store: Arc<dyn Store>) {
    let (_, a) = running_with_activity(&*store).await;
    store
        .renew_activity_lease(&a, Duration::from_secs(60))
        .await
        .unwrap();
    let taken = store
        .fetch_activity_work(&owner(), LEASE, 1, LEASE * 3)
        .await
        .unwrap();
    assert!(taken.is_empty(), "a renewed lease is not taken over");
    store
        .abandon_activity(&a, Duration::from_millis(150))
        .await
        .unwrap();
    assert!(
        fetch_activities(&*store, 1).await.is_empty(),
        "not before the delay"
    );
    let again = fetch_activity(&*store).await;
    assert_eq!(again.id, a.id);
}

/// A fetch of activities waits for work a commit schedules.
pub async fn activity_fetch_waits(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let item = fetch(&*store).await;
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .fetch_activity_work(&owner(), LEASE, 4, PATIENCE)
                .await
        })
    };
    tokio::task::yield_now().await;
    let mut c = commit_for(&item);
    c.activities.push(activity(&item, 0));
    store.commit_orchestration(c).await.unwrap();
    let got = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiting fetch returns")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].dequeue_count, 1);
}

/// `release_leases` gives back exactly the leases of one owner, instances and activities,
/// making their work visible at once.
pub async fn release_leases(store: Arc<dyn Store>) {
    let (_, a) = running_with_activity(&*store).await;
    store.create_instance(new_instance("b")).await.unwrap();
    store.create_instance(new_instance("c")).await.unwrap();
    let mine = fetch(&*store).await;
    let theirs = store
        .fetch_orchestration_work(
            &WorkerId::new("someone-else"),
            Duration::from_secs(60),
            1,
            PATIENCE,
        )
        .await
        .unwrap()
        .pop()
        .expect("a work item for the other worker");
    assert_ne!(mine.instance_id, theirs.instance_id);
    let n = store.release_leases(&owner()).await.unwrap();
    assert_eq!(n, 2, "one instance and one activity");
    assert_lease_lost(
        store.commit_orchestration(commit_for(&mine)).await,
        "a released instance lease",
    );
    assert_lease_lost(
        store.complete_activity(&a, result_of(&a)).await,
        "a released activity lease",
    );
    let again = fetch_many(&*store, 10, Duration::ZERO).await;
    assert_eq!(again.len(), 1, "only the released instance is free");
    assert_eq!(again[0].instance_id, mine.instance_id);
    let act = fetch_activities(&*store, 10).await;
    assert_eq!(act.len(), 1);
    assert_eq!(act[0].id, a.id);
    store
        .commit_orchestration(commit_for(&theirs))
        .await
        .expect("the other worker's lease is untouched");
    assert_eq!(
        store
            .release_leases(&WorkerId::new("nobody"))
            .await
            .unwrap(),
        0
    );
}

/// History reads: appended events in order, a replacement (continue-as-new) starts over,
/// an unknown instance has none.
pub async fn history_reads(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let item = fetch(&*store).await;
    let mut c = commit_for(&item);
    if let HistoryUpdate::Append(events) = &mut c.history {
        events.push(event("one"));
        events.push(event("two"));
    }
    c.state = Some(running(&item));
    store.commit_orchestration(c).await.unwrap();
    let names = |h: &[HistoryEvent]| -> Vec<String> {
        h.iter()
            .map(|e| match &e.kind {
                EventKind::EventRaised { name, .. } => name.clone(),
                k => k.type_name().to_string(),
            })
            .collect()
    };
    let h = store.read_history("a").await.unwrap();
    assert_eq!(names(&h), ["OrchestratorStarted", "one", "two"]);
    store
        .send_message(OrchestrationMessage::new("a", event("go")))
        .await
        .unwrap();
    let item = fetch(&*store).await;
    assert_eq!(item.history_len, 3);
    let mut c = commit_for(&item);
    c.history = HistoryUpdate::Replace(vec![event("fresh")]);
    store.commit_orchestration(c).await.unwrap();
    let h = store.read_history("a").await.unwrap();
    assert_eq!(names(&h), ["fresh"]);
    assert!(store.read_history("nobody").await.unwrap().is_empty());
    assert!(store.get_instance("nobody").await.unwrap().is_none());
}

/// `wait_for_instance` returns when a commit changes the state (also one made through
/// another handle on the same data), at once when the state already differs from what the
/// caller saw, and with the unchanged state when the timeout passes.
pub async fn wait_for_instance(store: Arc<dyn Store>, peer: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let pending = store.get_instance("a").await.unwrap();
    let same = store
        .wait_for_instance("a", pending.as_ref(), Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(same, pending, "timed out: the state as it is");
    let none_seen = store.wait_for_instance("a", None, PATIENCE).await.unwrap();
    assert_eq!(none_seen, pending, "already different from what was seen");
    let waiting = {
        let store = store.clone();
        let pending = pending.clone();
        tokio::spawn(async move {
            store
                .wait_for_instance("a", pending.as_ref(), PATIENCE)
                .await
        })
    };
    tokio::task::yield_now().await;
    let item = fetch(&*peer).await;
    let mut c = commit_for(&item);
    c.state = Some(running(&item));
    peer.commit_orchestration(c).await.unwrap();
    let changed = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiter returns")
        .unwrap()
        .unwrap()
        .expect("the instance exists");
    assert_eq!(changed.status, RuntimeStatus::Running);
}

/// `wait_for_instance_until` returns once its condition holds, and with the last state when
/// the timeout passes first.
pub async fn wait_for_instance_until(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    let finished = |s: Option<&InstanceState>| s.is_some_and(|s| s.status.is_terminal());
    let last = store
        .wait_for_instance_until("a", Duration::from_millis(50), &finished)
        .await
        .unwrap();
    assert_eq!(last.unwrap().status, RuntimeStatus::Pending);
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move {
            let finished = |s: Option<&InstanceState>| s.is_some_and(|s| s.status.is_terminal());
            store
                .wait_for_instance_until("a", PATIENCE, &finished)
                .await
        })
    };
    // Two changes: running (not enough), then completed.
    let item = fetch(&*store).await;
    let mut c = commit_for(&item);
    c.state = Some(running(&item));
    store.commit_orchestration(c).await.unwrap();
    store
        .send_message(OrchestrationMessage::new("a", event("finish")))
        .await
        .unwrap();
    let item = fetch(&*store).await;
    let mut c = commit_for(&item);
    let mut st = running(&item);
    st.status = RuntimeStatus::Completed;
    c.state = Some(st);
    store.commit_orchestration(c).await.unwrap();
    let done = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiter returns")
        .unwrap()
        .unwrap();
    assert_eq!(done.unwrap().status, RuntimeStatus::Completed);
}

/// The store's clock reads the current time, and work items lease from it.
pub async fn clock_reads_now(store: Arc<dyn Store>) {
    let before = Utc::now() - chrono::Duration::seconds(5);
    let now = store.clock().now();
    let after_ = Utc::now() + chrono::Duration::seconds(5);
    assert!(before <= now && now <= after_, "{now} is not about now");
}

/// Closing flushes and succeeds.
pub async fn close(store: Arc<dyn Store>) {
    store.create_instance(new_instance("a")).await.unwrap();
    store.close().await.expect("close works");
}

/// [`FastPaths::commit_orchestration_and_lease`]: the commit leases up to `max` of its new
/// activities to the caller (the rest are queued), deletes the completed activity, and a
/// lost lease on that activity refuses the whole commit.
pub async fn fast_commit_and_lease(store: Arc<dyn Store>) {
    let Some(fast) = store.fast_paths() else {
        return;
    };
    let (_, a) = running_with_activity(&*store).await;
    let item = fast
        .lease_instance_for_result(&a, &owner(), LEASE)
        .await
        .unwrap()
        .expect("the instance is free");
    let mut c = commit_for(&item);
    c.activities.push(activity(&item, 1));
    c.activities.push(activity(&item, 2));
    c.activities.push(activity(&item, 3));
    let direct = DirectLease {
        owner: &owner(),
        lease: Duration::from_secs(60),
        max: 2,
    };
    let leased = fast
        .commit_orchestration_and_lease(c, Some(&a), direct)
        .await
        .unwrap();
    assert_eq!(leased.len(), 2);
    assert!(leased
        .iter()
        .all(|l| l.dequeue_count == 1 && !l.lease_token.is_empty()));
    let queued = fetch_activities(&*store, 10).await;
    assert_eq!(queued.len(), 1, "the rest are queued");
    assert_lease_lost(
        store.complete_activity(&a, result_of(&a)).await,
        "the completed activity is gone",
    );
    for l in &leased {
        store.complete_activity(l, result_of(l)).await.unwrap();
    }
    // A lost activity lease refuses the commit as a whole.
    let item = fetch(&*store).await;
    let mut c = commit_for(&item);
    c.state = Some({
        let mut s = running(&item);
        s.custom_status = Some("\"changed\"".into());
        s
    });
    let direct = DirectLease {
        owner: &owner(),
        lease: LEASE,
        max: 0,
    };
    assert_lease_lost(
        fast.commit_orchestration_and_lease(c.clone(), Some(&a), direct)
            .await,
        "a lost activity lease",
    );
    assert_eq!(
        store
            .get_instance("a")
            .await
            .unwrap()
            .unwrap()
            .custom_status,
        None,
        "nothing changed"
    );
    let mut stale = c.clone();
    stale.lease_token = "not-a-token".into();
    assert_lease_lost(
        fast.commit_orchestration_and_lease(stale, None, direct)
            .await,
        "a stale instance lease",
    );
    assert!(fast
        .commit_orchestration_and_lease(c, None, direct)
        .await
        .unwrap()
        .is_empty());
}

/// [`FastPaths::commit_unleased`]: a compare-and-set on execution id, history length and no
/// waiting message; refused with nothing changed when any differs or the instance is held.
pub async fn fast_commit_unleased(store: Arc<dyn Store>) {
    let Some(fast) = store.fast_paths() else {
        return;
    };
    let (item, a) = running_with_activity(&*store).await;
    let exec = item.state.as_ref().unwrap().execution_id.clone();
    let len = store.read_history("a").await.unwrap().len() as u64;
    let direct = DirectLease {
        owner: &owner(),
        lease: LEASE,
        max: 4,
    };
    let unleased = |extra: &str| {
        let mut c = commit_for(&item);
        c.lease_token = String::new();
        c.consumed.clear();
        c.history = HistoryUpdate::Append(vec![event(extra)]);
        c
    };
    assert_lease_lost(
        fast.commit_unleased(unleased("x"), "other-execution", len, &a, direct)
            .await,
        "another execution",
    );
    assert_lease_lost(
        fast.commit_unleased(unleased("x"), &exec, len + 1, &a, direct)
            .await,
        "another history length",
    );
    // A waiting message refuses it.
    store
        .send_message(OrchestrationMessage::new("a", event("waiting")))
        .await
        .unwrap();
    assert_lease_lost(
        fast.commit_unleased(unleased("x"), &exec, len, &a, direct)
            .await,
        "a waiting message",
    );
    // A held instance refuses it.
    let held = fetch(&*store).await;
    assert_lease_lost(
        fast.commit_unleased(unleased("x"), &exec, len, &a, direct)
            .await,
        "a held instance",
    );
    assert_eq!(
        store.read_history("a").await.unwrap().len() as u64,
        len,
        "nothing changed"
    );
    let mut c = commit_for(&held);
    c.history = HistoryUpdate::Append(Vec::new());
    store.commit_orchestration(c).await.unwrap();
    // In sync: it applies, deletes the activity and leases the new ones.
    let mut c = unleased("applied");
    c.activities.push(activity(&item, 5));
    let leased = fast
        .commit_unleased(c, &exec, len, &a, direct)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(store.read_history("a").await.unwrap().len() as u64, len + 1);
    assert_lease_lost(
        store.complete_activity(&a, result_of(&a)).await,
        "the completed activity is gone",
    );
    // Its activity lease must be held.
    assert_lease_lost(
        fast.commit_unleased(unleased("y"), &exec, len + 1, &a, direct)
            .await,
        "a lost activity lease",
    );
}

/// [`FastPaths::lease_instance_for_result`]: leases a free instance while the activity's
/// lease holds, records nothing; None when the instance is held or the activity's lease is
/// lost.
pub async fn fast_lease_instance_for_result(store: Arc<dyn Store>) {
    let Some(fast) = store.fast_paths() else {
        return;
    };
    let (_, a) = running_with_activity(&*store).await;
    let item = fast
        .lease_instance_for_result(&a, &owner(), LEASE)
        .await
        .unwrap()
        .expect("the instance is free");
    assert_eq!(item.instance_id, "a");
    assert!(item.messages.is_empty(), "the result is not recorded");
    assert!(
        fast.lease_instance_for_result(&a, &owner(), LEASE)
            .await
            .unwrap()
            .is_none(),
        "the instance is held now"
    );
    assert!(nothing_ready(&*store).await);
    store
        .abandon_orchestration("a", &item.lease_token, Duration::ZERO)
        .await
        .unwrap();
    store.abandon_activity(&a, Duration::ZERO).await.unwrap();
    assert!(
        fast.lease_instance_for_result(&a, &owner(), LEASE)
            .await
            .unwrap()
            .is_none(),
        "the activity's lease is gone"
    );
    // The activity runs again: nothing was lost.
    assert_eq!(fetch_activity(&*store).await.id, a.id);
}

/// [`FastPaths::complete_activity_and_fetch`]: records the result and leases the free
/// instance with it in one step; when the instance is held the result waits for the next
/// fetch; a lost activity lease is refused.
pub async fn fast_complete_activity_and_fetch(store: Arc<dyn Store>) {
    let Some(fast) = store.fast_paths() else {
        return;
    };
    let (item, a) = {
        store.create_instance(new_instance("a")).await.unwrap();
        let item = fetch(&*store).await;
        let mut c = commit_for(&item);
        c.state = Some(running(&item));
        c.activities.push(activity(&item, 0));
        c.activities.push(activity(&item, 1));
        store.commit_orchestration(c).await.unwrap();
        (item, fetch_activities(&*store, 2).await)
    };
    let _ = item;
    let work = fast
        .complete_activity_and_fetch(&a[0], result_of(&a[0]), &owner(), LEASE)
        .await
        .unwrap()
        .expect("the instance was free");
    assert_eq!(work.messages.len(), 1);
    assert!(matches!(
        work.messages[0].1.event.kind,
        EventKind::TaskCompleted { seq: 0, .. }
    ));
    assert_lease_lost(
        fast.complete_activity_and_fetch(&a[0], result_of(&a[0]), &owner(), LEASE)
            .await,
        "completing twice",
    );
    // Held by the first: the second result waits.
    assert!(fast
        .complete_activity_and_fetch(&a[1], result_of(&a[1]), &owner(), LEASE)
        .await
        .unwrap()
        .is_none());
    store.commit_orchestration(commit_for(&work)).await.unwrap();
    let next = fetch(&*store).await;
    assert_eq!(next.messages.len(), 1);
    assert!(matches!(
        next.messages[0].1.event.kind,
        EventKind::TaskCompleted { seq: 1, .. }
    ));
}

/// Expands one `#[tokio::test]` per conformance case for the [`Harness`] built by `$harness`
/// (an expression). Put it in a module of its own per provider:
///
/// ```ignore
/// mod memory_conformance {
///     durable_core::store_conformance_tests!(crate::MyHarness::new());
/// }
/// ```
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! store_conformance_tests {
    ($harness:expr) => {
        $crate::store_conformance_tests!(@cases $harness;
            create_and_duplicate, replace_finished_instance, send_to_unknown,
            fetch_order_and_lease, fetch_takes_up_to_max, fetch_waits_for_work,
            work_items_are_bounded, commit_applies_everything, child_conflict_fails_parent,
            fencing, orchestration_dequeue_count, activity_timeout_is_kept, activity_heartbeat_details, abandon, renew_orchestration_lease, delayed_messages, activity_leases,
            activity_delay_and_renew, activity_fetch_waits, release_leases, history_reads,
            listing, purging, purging_follows_parent_close, wait_for_instance_until, clock_reads_now, close,
            fast_commit_and_lease, fast_commit_unleased, fast_lease_instance_for_result,
            fast_complete_activity_and_fetch, pending_work_counts, cancelled_activities,
            activity_scheduled_at
        );
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn wait_for_instance() {
            let harness = $harness;
            let store = $crate::store::conformance::Harness::store(&harness).await;
            let peer = $crate::store::conformance::Harness::peer(&harness, &store).await;
            $crate::store::conformance::wait_for_instance(store, peer).await;
        }
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                let store = $crate::store::conformance::Harness::store(&harness).await;
                $crate::store::conformance::$case(store).await;
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    struct Memory;

    #[async_trait]
    impl Harness for Memory {
        async fn store(&self) -> Arc<dyn Store> {
            Arc::new(MemoryStore::new())
        }
    }

    mod memory {
        crate::store_conformance_tests!(super::Memory);
    }

    #[cfg(feature = "sqlite")]
    mod sqlite {
        use super::*;
        use crate::store::sqlite::SqliteStore;

        /// A fresh file per store under the temporary directory, removed when the harness
        /// is dropped.
        pub(super) struct Sqlite {
            dir: std::path::PathBuf,
        }

        impl Sqlite {
            pub(super) fn new() -> Self {
                let dir = std::env::temp_dir().join(format!(
                    "durable-conformance-{}-{}",
                    std::process::id(),
                    random_id()
                ));
                std::fs::create_dir_all(&dir).unwrap();
                Self { dir }
            }
        }

        impl Drop for Sqlite {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }

        #[async_trait]
        impl Harness for Sqlite {
            async fn store(&self) -> Arc<dyn Store> {
                Arc::new(SqliteStore::open(self.dir.join(format!("{}.db", random_id()))).unwrap())
            }
        }

        mod cases {
            crate::store_conformance_tests!(super::Sqlite::new());
        }
    }
}
