//! Entities across crashes: 10,000 signals from 20 concurrent senders reach one counter
//! exactly once, in per-sender order, while the worker process is SIGKILLed and restarted
//! (the signals arrive in rounds between worker runs: one process owns the file at a time).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use durable_core::store::sqlite::SqliteStore;
use durable_core::{DurableClient, EntityId};

#[derive(serde::Deserialize)]
struct OrderLog {
    last: std::collections::BTreeMap<String, u64>,
    violations: u64,
    total: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_are_applied_exactly_once_in_order_across_kills() {
    let dir = std::env::temp_dir().join(format!("durable-entity-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("entities.db");
    let exe = env!("CARGO_BIN_EXE_entity_host");
    let counter = EntityId::new("counter", "c");
    let log = EntityId::new("orderlog", "l");
    // One process at a time owns the file: the signals arrive in rounds, and after each
    // the worker is started and killed while it works through the backlog.
    const ROUNDS: u64 = 5;
    const PER_ROUND: u64 = 500 / ROUNDS;
    for round in 0..ROUNDS {
        let client = DurableClient::new(Arc::new(SqliteStore::open(&db).unwrap()));
        let mut senders = Vec::new();
        for s in 0..20u64 {
            let client = client.clone();
            let (counter, log) = (counter.clone(), log.clone());
            senders.push(tokio::spawn(async move {
                for i in round * PER_ROUND + 1..=(round + 1) * PER_ROUND {
                    client.signal_entity(&counter, "add", &1).await.unwrap();
                    client
                        .signal_entity(&log, "append", &(format!("s{s}"), i))
                        .await
                        .unwrap();
                }
            }));
        }
        for s in senders {
            s.await.unwrap();
        }
        drop(client);
        let mut child = Command::new(exe)
            .arg(&db)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30 + 50 * (round % 4))).await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let kills = ROUNDS;
    {
        let client = DurableClient::new(Arc::new(SqliteStore::open(&db).unwrap()));
        let applied = client.read_entity_state::<i64>(&counter).await.unwrap();
        assert!(
            applied < Some(10_000),
            "the kills cut the work short: {applied:?}"
        );
    }
    // A last worker runs undisturbed until both entities have applied every signal.
    let mut last = Command::new(exe)
        .arg(&db)
        .args(["--until", "10000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = last.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            last.kill().unwrap();
            last.wait().unwrap();
            let client = DurableClient::new(Arc::new(SqliteStore::open(&db).unwrap()));
            let count = client.read_entity_state::<i64>(&counter).await.unwrap();
            let total = client
                .read_entity_state::<OrderLog>(&log)
                .await
                .unwrap()
                .map(|l| l.total);
            panic!("the signals were not all applied: counter {count:?}, order log {total:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success());
    let client = DurableClient::new(Arc::new(SqliteStore::open(&db).unwrap()));
    assert_eq!(
        client.read_entity_state::<i64>(&counter).await.unwrap(),
        Some(10_000)
    );
    let state: Option<OrderLog> = client.read_entity_state(&log).await.unwrap();
    let state = state.unwrap();
    assert_eq!(state.total, 10_000, "every signal applied exactly once");
    assert_eq!(state.violations, 0, "per-sender order preserved");
    assert!(state.last.values().all(|v| *v == 500));
    println!("worker killed {kills} times during the run");
    let _ = std::fs::remove_dir_all(&dir);
}
