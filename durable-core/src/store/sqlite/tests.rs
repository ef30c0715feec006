//! Tests of what is particular to SQLite (the shared contract is in the conformance suite).

use super::*;
use rusqlite::Connection;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("durable-sqlite-{}-{name}", std::process::id()));
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
    assert!(err.contains(&format!("up to {SCHEMA_VERSION}")), "{err}");
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
                trace_parent: None,
            })
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let st = store.get_instance("keep").await.unwrap().unwrap();
    assert_eq!(st.input.as_deref(), Some("[1,2]"));
    assert_eq!(st.version.as_deref(), Some("2"));
    let item = store
        .fetch_orchestration_work(
            &WorkerId::new("w"),
            Duration::from_secs(1),
            1,
            Duration::ZERO,
        )
        .await
        .unwrap()
        .pop()
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
        trace_parent: None,
    }
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
    let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
    let mut replies = Vec::new();
    for (id, size) in [("a", 10), ("big", 200_000), ("c", 10)] {
        let mut n = new_instance(id);
        n.input = Some("x".repeat(size));
        let (job, answer) = Typed::request(Durability::Durable, move |conn, _, w| {
            ops::create(conn, &n, w)
        });
        tx.send(job).unwrap();
        replies.push(answer);
    }
    // All three are waiting: the writer takes them as one batch.
    let writer = std::thread::spawn(move || {
        writer::writer_loop(
            conn,
            rx,
            Arc::new(LocalSignals::default()),
            Arc::new(SystemClock),
            Synchronous::Full,
        )
    });
    for answer in replies {
        let e = answer.await.unwrap().expect_err("the batch failed");
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
                trace_parent: None,
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

/// A version 1 file from before the application id (leases called locks, no owners) opens:
/// it is migrated to the current version, keeps its instances and gets the application id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_file_without_the_application_id_is_migrated() {
    let path = temp("legacy");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(schema::SCHEMA_V1).unwrap();
        conn.execute_batch(
            "INSERT INTO instances(id, execution_id, name, status, created_at, last_updated_at,
                lock_token, locked_until, history_len)
             VALUES('old', 'e', 'orch', 'Running', 1, 1, 'token', 1, 0);
             INSERT INTO messages(instance_id, visible_at, message) VALUES('old', 0, '{}');
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let st = store.get_instance("old").await.unwrap().unwrap();
    assert_eq!(st.status, RuntimeStatus::Running);
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .unwrap();
    assert_eq!(id, APPLICATION_ID);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let owner: Option<String> = conn
        .query_row(
            "SELECT lease_owner FROM instances WHERE id = 'old' AND lease_token = 'token'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        owner, None,
        "the lease columns were renamed, the owner added"
    );
}

/// A process killed while holding leases leaves them in the file; the next store to open
/// it (the lock proves that process is gone) gives them back at once, whoever held them,
/// while a delayed abandon keeps its delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_gives_back_the_leases_a_dead_process_left() {
    let path = temp("dead-leases");
    let dead = WorkerId::new("dead-process");
    let hour = Duration::from_secs(3600);
    let (activity_id, held) = {
        let store = SqliteStore::open(&path).unwrap();
        store.create_instance(new_instance("a")).await.unwrap();
        let item = store
            .fetch_orchestration_work(&dead, hour, 1, Duration::ZERO)
            .await
            .unwrap()
            .pop()
            .unwrap();
        let mut st = item.state.clone().unwrap();
        st.status = RuntimeStatus::Running;
        let execution_id = st.execution_id.clone();
        store
            .commit_orchestration(OrchestrationCommit {
                instance_id: "a".into(),
                lease_token: item.lease_token.clone(),
                consumed: item.messages.iter().map(|(id, _)| *id).collect(),
                history: HistoryUpdate::Append(vec![HistoryEvent::new(
                    Utc::now(),
                    EventKind::OrchestratorStarted,
                )]),
                state: Some(st),
                activities: vec![ActivityWorkItem {
                    id: 0,
                    instance_id: "a".into(),
                    execution_id,
                    seq: 0,
                    name: "act".into(),
                    input: None,
                    attempt: 1,
                    lease_token: String::new(),
                    dequeue_count: 0,
                    start_to_close: None,
                    heartbeat_timeout: None,
                    heartbeat_details: None,
                    trace_parent: None,
                    scheduled_at: None,
                }],
                messages: Vec::new(),
                new_instances: Vec::new(),
                cancelled_activities: Vec::new(),
            })
            .await
            .unwrap();
        let act = store
            .fetch_activity_work(&dead, hour, 1, Duration::ZERO)
            .await
            .unwrap()
            .pop()
            .unwrap();
        // `b` is leased and then abandoned with a delay: that hold has no owner and stays.
        store.create_instance(new_instance("b")).await.unwrap();
        store.create_instance(new_instance("held")).await.unwrap();
        let mut items = store
            .fetch_orchestration_work(&dead, hour, 2, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(items.len(), 2);
        items.sort_by(|x, y| x.instance_id.cmp(&y.instance_id));
        store
            .abandon_orchestration("b", &items[0].lease_token, hour)
            .await
            .unwrap();
        // The process "dies" holding the activity and `held`.
        (act.id, items[1].instance_id.clone())
    };
    let store = SqliteStore::open(&path).unwrap();
    let other = WorkerId::new("new-process");
    let acts = store
        .fetch_activity_work(&other, hour, 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(acts.len(), 1, "the dead process's activity is free at once");
    assert_eq!(acts[0].id, activity_id);
    assert_eq!(acts[0].dequeue_count, 2);
    let items = store
        .fetch_orchestration_work(&other, hour, 10, Duration::ZERO)
        .await
        .unwrap();
    let ids: Vec<&str> = items.iter().map(|i| i.instance_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![held.as_str()],
        "the held instance is free at once; the abandoned one keeps its delay"
    );
}

/// The query plans of listing pages do not grow with the instances stored: an id prefix is
/// a range of the primary key, a status filter reads `(status, created_at, id)` in the
/// page's order and stops after the page (no sort of every instance with that status), and
/// a continuation is a seek, not an offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_plans_use_the_indexes() {
    let path = temp("plans");
    let store = SqliteStore::open(&path).unwrap();
    let conn = Connection::open(&path).unwrap();
    let plan = |filter: &InstanceFilter, token: Option<(chrono::DateTime<chrono::Utc>, String)>| {
        let (text, args) = ops::list_sql(filter, 100, token);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {text}")).unwrap();
        let rows: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        rows.join("; ")
    };
    let token = Some((chrono::Utc::now(), "x".to_string()));
    let prefixed = InstanceFilter {
        statuses: vec![RuntimeStatus::Completed],
        instance_id_prefix: Some("order-17".into()),
        ..Default::default()
    };
    for t in [None, token.clone()] {
        let p = plan(&prefixed, t);
        // The page is found in the index alone; only its rows are read from the table.
        assert!(
            p.contains(
                "SEARCH instances USING COVERING INDEX instances_id_status_created (id>? AND id<?)"
            ),
            "{p}"
        );
    }
    let by_status = InstanceFilter {
        statuses: vec![RuntimeStatus::Completed],
        ..Default::default()
    };
    for t in [None, token.clone()] {
        let p = plan(&by_status, t);
        assert!(
            p.contains("INDEX instances_status_created (status=?"),
            "{p}"
        );
        assert!(!p.contains("TEMP B-TREE"), "{p}");
    }
    let p = plan(&InstanceFilter::default(), token);
    assert!(
        p.contains("INDEX instances_created ((created_at,id)>(?,?))"),
        "{p}"
    );
    assert!(!p.contains("TEMP B-TREE"), "{p}");
    drop(store);
}

fn commit_with(
    item: &OrchestrationWorkItem,
    events: Vec<HistoryEvent>,
    state: InstanceState,
) -> OrchestrationCommit {
    OrchestrationCommit {
        instance_id: item.instance_id.clone(),
        lease_token: item.lease_token.clone(),
        consumed: item.messages.iter().map(|(id, _)| *id).collect(),
        history: HistoryUpdate::Append(events),
        state: Some(state),
        activities: Vec::new(),
        messages: Vec::new(),
        new_instances: Vec::new(),
        cancelled_activities: Vec::new(),
    }
}

async fn fetch_one(store: &SqliteStore) -> OrchestrationWorkItem {
    store
        .fetch_orchestration_work(
            &WorkerId::new("w"),
            Duration::from_secs(60),
            1,
            Duration::ZERO,
        )
        .await
        .unwrap()
        .pop()
        .expect("a work item")
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

/// The kinds of the stored history rows of `id`, in order ("text" rows are one JSON event
/// of schema version 5, "blob" rows an episode).
fn row_types(path: &Path, id: &str) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT typeof(events) FROM history WHERE instance_id = ?1 ORDER BY seq")
        .unwrap();
    stmt.query_map([id], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// A schema version 5 file (one JSON row per event) opens as version 6: its history reads
/// as it was, and an episode appended after it is one row, read in order after the old
/// ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_5_file_is_migrated_and_its_history_kept() {
    let path = temp("v5");
    let t0 = Utc::now();
    let old = vec![
        HistoryEvent::new(t0, EventKind::OrchestratorStarted),
        HistoryEvent::new(
            t0,
            EventKind::ExecutionStarted {
                name: "orch".into(),
                version: None,
                input: Some("\"in\"".into()),
                parent: None,
                trace_parent: None,
            },
        ),
        HistoryEvent::scheduled(
            0,
            t0,
            EventKind::TaskScheduled {
                name: "act".into(),
                input: None,
                options: None,
            },
        ),
    ];
    {
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        schema::upgrade(&tx, 0, 5).unwrap();
        tx.execute(
            "INSERT INTO instances(id, execution_id, name, status, input, created_at,
                last_updated_at, history_len)
             VALUES('old', 'e', 'orch', 'Running', '\"in\"', 1, 1, 3)",
            [],
        )
        .unwrap();
        for (seq, e) in old.iter().enumerate() {
            tx.execute(
                "INSERT INTO history(instance_id, seq, event) VALUES('old', ?1, ?2)",
                rusqlite::params![seq as i64, serde_json::to_string(e).unwrap()],
            )
            .unwrap();
        }
        tx.execute_batch(&format!(
            "PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version=5"
        ))
        .unwrap();
        tx.commit().unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.read_history("old").await.unwrap(), old);
    store.send_message(raised("old", "go")).await.unwrap();
    let item = fetch_one(&store).await;
    let new = vec![
        HistoryEvent::new(Utc::now(), EventKind::OrchestratorStarted),
        HistoryEvent::new(
            Utc::now(),
            EventKind::TaskCompleted {
                seq: 0,
                result: Some("1".into()),
            },
        ),
        HistoryEvent::new(Utc::now(), EventKind::OrchestratorCompleted),
    ];
    let state = item.state.clone().unwrap();
    store
        .commit_orchestration(commit_with(&item, new.clone(), state))
        .await
        .unwrap();
    let mut all = old.clone();
    all.extend(new);
    assert_eq!(store.read_history("old").await.unwrap(), all);
    drop(store);
    assert_eq!(row_types(&path, "old"), ["text", "text", "text", "blob"]);
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let len: i64 = conn
        .query_row(
            "SELECT history_len FROM instances WHERE id = 'old'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(len, 6);
}

/// An episode is one history row; the input and output are stored once (the rows refer
/// to the instance row), and stay what they were in the history when a later commit
/// changes the instance row's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_rows_refer_to_the_payloads_and_stay_exact() {
    let path = temp("refs");
    let store = SqliteStore::open(&path).unwrap();
    let input = format!("\"{}\"", "i".repeat(500));
    let output = format!("\"{}\"", "o".repeat(500));
    let mut n = new_instance("r");
    n.input = Some(input.clone());
    store.create_instance(n).await.unwrap();
    let item = fetch_one(&store).await;
    let t = Utc::now();
    let first = vec![
        HistoryEvent::new(t, EventKind::OrchestratorStarted),
        HistoryEvent::new(
            t,
            EventKind::ExecutionStarted {
                name: "orch".into(),
                version: None,
                input: Some(input.clone()),
                parent: None,
                trace_parent: None,
            },
        ),
        HistoryEvent::new(t, EventKind::OrchestratorCompleted),
    ];
    let mut state = item.state.clone().unwrap();
    state.status = RuntimeStatus::Running;
    store
        .commit_orchestration(commit_with(&item, first.clone(), state.clone()))
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
        .commit_orchestration(commit_with(&item, second.clone(), state.clone()))
        .await
        .unwrap();
    let mut all = first.clone();
    all.extend(second);
    assert_eq!(store.read_history("r").await.unwrap(), all);
    assert_eq!(row_types(&path, "r"), ["blob", "blob"]);
    let stored: i64 = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT sum(length(events)) FROM history WHERE instance_id = 'r'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        stored < 200,
        "the payloads are not repeated: {stored} bytes"
    );
    // A commit that changes both payloads under the kept history.
    store.send_message(raised("r", "more")).await.unwrap();
    let item = fetch_one(&store).await;
    state.input = Some("\"changed\"".into());
    state.output = Some("\"changed too\"".into());
    store
        .commit_orchestration(commit_with(&item, Vec::new(), state))
        .await
        .unwrap();
    assert_eq!(store.read_history("r").await.unwrap(), all);
}

/// A purge by filter deletes in batches, one transaction each: requests queued while it
/// runs commit before its next batch, and the count is exact (unfinished instances in
/// the range stay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_by_filter_run_in_batches() {
    let path = temp("purge-batches");
    let store = SqliteStore::open(&path).unwrap();
    for i in 0..23 {
        let id = format!("done-{i:02}");
        store.create_instance(new_instance(&id)).await.unwrap();
        let item = fetch_one(&store).await;
        let mut state = item.state.clone().unwrap();
        state.status = if i % 2 == 0 {
            RuntimeStatus::Completed
        } else {
            RuntimeStatus::Failed
        };
        let events = vec![HistoryEvent::new(
            Utc::now(),
            EventKind::OrchestratorStarted,
        )];
        store
            .commit_orchestration(commit_with(&item, events, state))
            .await
            .unwrap();
    }
    store
        .create_instance(new_instance("pending"))
        .await
        .unwrap();
    let filter = InstanceFilter {
        created_from: Some(Utc::now() - chrono::Duration::hours(1)),
        created_to: Some(Utc::now() + chrono::Duration::hours(1)),
        ..Default::default()
    };
    let mut queued = Vec::new();
    let mut batches = Vec::new();
    let purged = store
        .purge_in_batches(&filter, 5, |so_far| {
            // The request queued after the previous batch has been answered by now: it
            // did not wait for the whole purge.
            if let Some(rx) = queued.last_mut() {
                let rx: &mut tokio::sync::oneshot::Receiver<StoreResult<()>> = rx;
                assert!(
                    matches!(rx.try_recv(), Ok(Ok(()))),
                    "a request queued during the purge committed before its next batch"
                );
            }
            let n = new_instance(&format!("during-{so_far}"));
            queued.push(
                store
                    .submit(Durability::Durable, move |conn, _, w| {
                        ops::create(conn, &n, w)
                    })
                    .unwrap(),
            );
            batches.push(so_far);
        })
        .await
        .unwrap();
    assert_eq!(purged, 23);
    assert_eq!(batches, [5, 10, 15, 20]);
    let left = store
        .list_instances(&InstanceFilter::default(), 100, None)
        .await
        .unwrap()
        .items;
    let mut ids: Vec<&str> = left.iter().map(|s| s.instance_id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["during-10", "during-15", "during-20", "during-5", "pending"]
    );
    let conn = Connection::open(&path).unwrap();
    let rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM history WHERE instance_id LIKE 'done-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0, "their history went with them");
}

/// A schema version 6 file opens as version 7 with the index of children by parent, and
/// a purge by filter then takes the children its rows recorded before the migration
/// (parent-close policy), keeping the abandoned one. The lookup uses the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_6_file_is_migrated_and_purges_follow_parent_close() {
    let path = temp("v6-parent");
    let created = |child: &str, abandon: bool| {
        serde_json::to_string(&HistoryEvent::scheduled(
            0,
            Utc::now(),
            EventKind::SubOrchestrationInstanceCreated {
                name: "orch".into(),
                version: None,
                instance_id: child.into(),
                input: None,
                abandon_on_parent_close: abandon,
            },
        ))
        .unwrap()
    };
    {
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        schema::upgrade(&tx, 0, 6).unwrap();
        let parent =
            r#"{"instance_id":"p","execution_id":"e","task_scheduled_id":0,"name":"orch"}"#;
        for (id, status, parent) in [
            ("p", "Completed", None),
            ("c", "Running", Some(parent)),
            ("kept", "Running", Some(parent)),
        ] {
            tx.execute(
                "INSERT INTO instances(id, execution_id, name, status, created_at,
                    last_updated_at, parent, history_len)
                 VALUES(?1, 'e', 'orch', ?2, 1, 1, ?3, 2)",
                rusqlite::params![id, status, parent],
            )
            .unwrap();
        }
        for (seq, e) in [created("c", false), created("kept", true)]
            .iter()
            .enumerate()
        {
            tx.execute(
                "INSERT INTO history(instance_id, seq, events) VALUES('p', ?1, ?2)",
                rusqlite::params![seq as i64, e],
            )
            .unwrap();
        }
        tx.execute_batch(&format!(
            "PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version=6"
        ))
        .unwrap();
        tx.commit().unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let n = store
        .purge_instances(&InstanceFilter {
            statuses: vec![RuntimeStatus::Completed],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(n, 2, "the parent and its child");
    assert!(store.get_instance("c").await.unwrap().is_none());
    assert!(store.get_instance("kept").await.unwrap().is_some());
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", ops::CHILDREN_OF))
        .unwrap()
        .query_map(["[\"p\"]"], |r| r.get::<_, String>(3))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let plan = plan.join("; ");
    assert!(plan.contains("USING INDEX instances_parent"), "{plan}");
    drop(store);
}

/// A version 7 file gains the index on `(id, status, created_at)`, and a listing with an
/// id prefix finds its page there: the right instances, in order, across pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_7_file_is_migrated_and_prefix_pages_read_the_index() {
    let path = temp("v7-prefix");
    {
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        schema::upgrade(&tx, 0, 7).unwrap();
        // Ids in the opposite order of creation, every third one still running.
        for i in 0..30i64 {
            let status = if i % 3 == 0 { "Running" } else { "Completed" };
            tx.execute(
                "INSERT INTO instances(id, execution_id, name, status, created_at,
                    last_updated_at, history_len)
                 VALUES(?1, 'e', 'orch', ?2, ?3, ?3, 0)",
                rusqlite::params![format!("a{i:02}"), status, 1_000 - i],
            )
            .unwrap();
        }
        tx.execute(
            "INSERT INTO instances(id, execution_id, name, status, created_at,
                last_updated_at, history_len)
             VALUES('b00', 'e', 'orch', 'Completed', 1, 1, 0)",
            [],
        )
        .unwrap();
        tx.execute_batch(&format!(
            "PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version=7"
        ))
        .unwrap();
        tx.commit().unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let filter = InstanceFilter {
        statuses: vec![RuntimeStatus::Completed],
        instance_id_prefix: Some("a".into()),
        ..Default::default()
    };
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = store
            .list_instances(&filter, 7, token.as_deref())
            .await
            .unwrap();
        ids.extend(page.items.into_iter().map(|s| s.instance_id));
        token = page.continuation_token;
        if token.is_none() {
            break;
        }
    }
    let expected: Vec<String> = (0..30)
        .rev()
        .filter(|i| i % 3 != 0)
        .map(|i| format!("a{i:02}"))
        .collect();
    assert_eq!(ids, expected);
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let (text, args) = ops::list_sql(&filter, 7, None);
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {text}"))
        .unwrap()
        .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let plan = plan.join("; ");
    assert!(
        plan.contains("COVERING INDEX instances_id_status_created (id>? AND id<?)"),
        "{plan}"
    );
    drop(store);
}

/// A child that the filter matches too, in a later batch than its parent, is purged with
/// its parent and counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_batches_count_a_matching_child_once() {
    let path = temp("purge-child-once");
    let store = SqliteStore::open(&path).unwrap();
    store
        .create_instance(new_instance("a-parent"))
        .await
        .unwrap();
    let item = fetch_one(&store).await;
    let mut state = item.state.clone().unwrap();
    state.status = RuntimeStatus::Completed;
    let mut c = commit_with(
        &item,
        vec![HistoryEvent::scheduled(
            0,
            Utc::now(),
            EventKind::SubOrchestrationInstanceCreated {
                name: "orch".into(),
                version: None,
                instance_id: "b-child".into(),
                input: None,
                abandon_on_parent_close: false,
            },
        )],
        state.clone(),
    );
    let mut child = new_instance("b-child");
    child.parent = Some(crate::history::ParentInstance {
        instance_id: "a-parent".into(),
        execution_id: state.execution_id.clone(),
        seq: 0,
        name: "orch".into(),
    });
    c.new_instances.push(child);
    store.commit_orchestration(c).await.unwrap();
    let item = fetch_one(&store).await;
    let mut state = item.state.clone().unwrap();
    state.status = RuntimeStatus::Completed;
    store
        .commit_orchestration(commit_with(&item, Vec::new(), state))
        .await
        .unwrap();
    let mut batches = Vec::new();
    let purged = store
        .purge_in_batches(&InstanceFilter::default(), 1, |n| batches.push(n))
        .await
        .unwrap();
    assert_eq!(purged, 2);
    assert_eq!(batches, [2], "the child went with the first batch");
    assert!(store.get_instance("b-child").await.unwrap().is_none());
}
