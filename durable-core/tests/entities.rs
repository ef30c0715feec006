//! Durable entities on the in-memory store: serial operations, exactly-once delivery in
//! per-sender order, calls and signals from orchestrations, deletion, critical sections
//! and their locking rules.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use durable_core::{
    DurableClient, EntityContext, EntityId, MemoryStore, Operation, OrchestrationContext,
    OrchestrationError, Registry, RuntimeStatus, StartOptions, Worker,
};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(30);

fn counter_ops(
    reg: durable_core::registry::RegistryBuilder,
) -> durable_core::registry::RegistryBuilder {
    reg.entity(
        "Counter",
        |ctx: EntityContext<i64>, op: Operation| async move {
            let mut v = ctx.get_state_or_default()?;
            match op.name.as_str() {
                "add" => {
                    let n: i64 = op.input()?;
                    v += n;
                    ctx.set_state(&v);
                }
                "reset" => ctx.set_state(&0),
                "get" => {}
                "delete" => {
                    ctx.delete_state();
                    return Ok(None);
                }
                "fail" => {
                    return Err(durable_core::FailureDetails::new(
                        "Refused",
                        "fail always fails",
                    ))
                }
                other => {
                    return Err(durable_core::FailureDetails::new(
                        "UnknownOperation",
                        format!("no operation '{other}'"),
                    ))
                }
            }
            Ok(Some(v))
        },
    )
}

/// Records, per sender, the last sequence number seen and any out-of-order arrival.
#[derive(Default, Serialize, Deserialize)]
struct OrderLog {
    last: BTreeMap<String, u64>,
    violations: u64,
    total: u64,
}

fn registry() -> Registry {
    counter_ops(Registry::builder())
        .entity(
            "orderlog",
            |ctx: EntityContext<OrderLog>, op: Operation| async move {
                let mut log = ctx.get_state_or_default()?;
                let (sender, seq): (String, u64) = op.input()?;
                let last = log.last.entry(sender).or_insert(0);
                if seq != *last + 1 {
                    log.violations += 1;
                }
                *last = seq;
                log.total += 1;
                ctx.set_state(&log);
                Ok::<_, durable_core::FailureDetails>(())
            },
        )
        .entity(
            "account",
            |ctx: EntityContext<i64>, op: Operation| async move {
                let mut balance = ctx.get_state_or_default()?;
                match op.name.as_str() {
                    "deposit" => balance += op.input::<i64>()?,
                    "withdraw" => {
                        let n: i64 = op.input()?;
                        if n > balance {
                            return Err(durable_core::FailureDetails::new(
                                "Insufficient",
                                "insufficient funds",
                            ));
                        }
                        balance -= n;
                    }
                    _ => {}
                }
                ctx.set_state(&balance);
                Ok(balance)
            },
        )
        .orchestrator(
            "use_counter",
            |ctx: OrchestrationContext, key: String| async move {
                let id = EntityId::new("counter", key);
                let a: Option<i64> = ctx.call_entity(&id, "add", &5).await?;
                let b: Option<i64> = ctx.call_entity(&id, "add", &2).await?;
                ctx.signal_entity(&id, "add", &100)?;
                let failed = ctx.call_entity::<Option<i64>>(&id, "fail", &()).await;
                let err = failed.expect_err("fail fails").failure.message;
                let after: Option<i64> = ctx.call_entity(&id, "get", &()).await?;
                Ok::<_, OrchestrationError>((a, b, err, after))
            },
        )
        .orchestrator(
            "transfer",
            |ctx: OrchestrationContext, (from, to, amount): (String, String, i64)| async move {
                let a = EntityId::new("account", from);
                let b = EntityId::new("account", to);
                let _guard = ctx.lock(&[a.clone(), b.clone()]).await?;
                let balance: i64 = ctx.call_entity(&a, "get", &()).await?;
                if balance < amount {
                    return Ok::<_, OrchestrationError>(false);
                }
                let _: i64 = ctx.call_entity(&a, "withdraw", &amount).await?;
                let _: i64 = ctx.call_entity(&b, "deposit", &amount).await?;
                Ok(true)
            },
        )
        .orchestrator(
            "break_rules",
            |ctx: OrchestrationContext, _: ()| async move {
                let a = EntityId::new("account", "r1");
                let b = EntityId::new("account", "r2");
                let guard = ctx.lock(std::slice::from_ref(&a)).await?;
                let mut errors = Vec::new();
                if let Err(e) = ctx.call_entity::<i64>(&b, "get", &()).await {
                    errors.push(e.failure.error_type.clone());
                }
                if let Err(e) = ctx.signal_entity(&a, "deposit", &1) {
                    errors.push(e.failure.error_type.clone());
                }
                if let Err(e) = ctx.lock(std::slice::from_ref(&b)).await {
                    errors.push(e.failure.error_type.clone());
                }
                if let Err(e) = ctx
                    .call_sub_orchestrator_by_name::<()>("use_counter", None, &"x")
                    .await
                {
                    errors.push(e.failure.error_type.clone());
                }
                drop(guard);
                // After the critical section, anything goes again.
                let _: i64 = ctx.call_entity(&b, "get", &()).await?;
                Ok::<_, OrchestrationError>(errors)
            },
        )
        .orchestrator(
            "hold_and_fail",
            |ctx: OrchestrationContext, _: ()| async move {
                let a = EntityId::new("account", "held");
                let _guard = ctx.lock(std::slice::from_ref(&a)).await?;
                Err::<(), _>(OrchestrationError::new("failing while holding a lock"))
            },
        )
        .build()
        .unwrap()
}

fn start(cache: usize) -> (Worker, DurableClient) {
    let store = Arc::new(MemoryStore::new());
    let runtime = Worker::builder(store)
        .registry(registry())
        .cache_capacity(cache)
        .start()
        .unwrap();
    let client = runtime.client();
    (runtime, client)
}

async fn wait_for_state<T: serde::de::DeserializeOwned>(
    client: &DurableClient,
    id: &EntityId,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = client.read_entity_state::<T>(id).await.unwrap() {
            if done(&v) {
                return v;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "entity {id} did not reach the expected state"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_signals_from_20_senders_in_order_exactly_once() {
    let (rt, client) = start(100);
    let counter = EntityId::new("Counter", "game1");
    let log = EntityId::new("orderlog", "l");
    let mut senders = Vec::new();
    for s in 0..20 {
        let client = client.clone();
        let counter = counter.clone();
        let log = log.clone();
        senders.push(tokio::spawn(async move {
            for i in 1..=500u64 {
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
    let v: i64 = wait_for_state(&client, &counter, |v: &i64| *v >= 10_000).await;
    assert_eq!(v, 10_000);
    let log: OrderLog = wait_for_state(&client, &log, |l: &OrderLog| l.total >= 10_000).await;
    assert_eq!(log.total, 10_000);
    assert_eq!(log.violations, 0);
    assert!(log.last.values().all(|v| *v == 500));
    // The entity name is case-insensitive, the key case-sensitive.
    assert_eq!(
        client
            .read_entity_state::<i64>(&EntityId::new("COUNTER", "game1"))
            .await
            .unwrap(),
        Some(10_000)
    );
    assert_eq!(
        client
            .read_entity_state::<i64>(&EntityId::new("counter", "GAME1"))
            .await
            .unwrap(),
        None
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_orchestrations_return_results_and_failures_keep_state() {
    for cache in [100, 0] {
        let (rt, client) = start(cache);
        let id = client
            .start_by_name(
                "use_counter",
                Some("\"c1\"".into()),
                StartOptions::default(),
            )
            .await
            .unwrap();
        let (a, b, err, after): (Option<i64>, Option<i64>, String, Option<i64>) =
            client.wait_for_output(&id, WAIT).await.unwrap();
        assert_eq!((a, b), (Some(5), Some(7)));
        assert!(err.contains("fail always fails"), "{err}");
        // The signal was sent before the failing call, so it ran first; the failure changed nothing.
        assert_eq!(after, Some(107));
        rt.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_entity_and_list_pages() {
    let (rt, client) = start(100);
    for k in 0..5 {
        client
            .signal_entity(&EntityId::new("counter", format!("k{k}")), "add", &k)
            .await
            .unwrap();
    }
    let k4 = EntityId::new("counter", "k4");
    wait_for_state(&client, &k4, |v: &i64| *v == 4).await;
    let page = client
        .list_entities(Some("counter"), true, 100, None)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 5);
    assert!(page.items.iter().all(|m| m.state.is_some()));
    client.signal_entity(&k4, "delete", &()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while client.get_entity(&k4).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let page = client
        .list_entities(Some("counter"), false, 100, None)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 4);
    let (removed, _) = client.clean_entity_storage(true, true).await.unwrap();
    assert_eq!(removed, 1);
    // Bad ids and unknown entity names are refused.
    let err = client
        .signal_entity(&EntityId::new("nope", "x"), "add", &1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, durable_core::Error::UnknownName { .. }),
        "{err}"
    );
    let err = client
        .signal_entity(&EntityId::new("counter", "a/b"), "add", &1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, durable_core::Error::InvalidArgument(_)),
        "{err}"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_signals_wait_for_their_time() {
    let (rt, client) = start(100);
    let id = EntityId::new("counter", "later");
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(1000);
    client.signal_entity_at(&id, "add", &3, at).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let early = client.read_entity_state::<i64>(&id).await.unwrap();
    // Read before the signal's time, the entity must not have seen it yet.
    if chrono::Utc::now() < at {
        assert_eq!(early, None);
    }
    let v = wait_for_state(&client, &id, |v: &i64| *v == 3).await;
    assert_eq!(v, 3);
    assert!(chrono::Utc::now() >= at);
    rt.shutdown().await;
}

/// A small deterministic generator for the randomized transfer test.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_transfers_never_deadlock_and_keep_the_total() {
    for cache in [100, 0] {
        let (rt, client) = start(cache);
        let accounts = 6;
        for a in 0..accounts {
            client
                .signal_entity(&EntityId::new("account", format!("a{a}")), "deposit", &100)
                .await
                .unwrap();
        }
        for a in 0..accounts {
            wait_for_state(
                &client,
                &EntityId::new("account", format!("a{a}")),
                |v: &i64| *v == 100,
            )
            .await;
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 + cache as u64);
        let mut ids = Vec::new();
        for _ in 0..60 {
            let from = rng.below(accounts);
            let mut to = rng.below(accounts);
            if to == from {
                to = (to + 1) % accounts;
            }
            let amount = 1 + rng.below(40) as i64;
            let input =
                serde_json::to_string(&(format!("a{from}"), format!("a{to}"), amount)).unwrap();
            ids.push(
                client
                    .start_by_name("transfer", Some(input), StartOptions::default())
                    .await
                    .unwrap(),
            );
        }
        for id in &ids {
            let st = client.wait_for_completion(id, WAIT).await.unwrap();
            assert_eq!(st.status, RuntimeStatus::Completed, "{:?}", st.failure);
        }
        let mut total = 0;
        for a in 0..accounts {
            let id = EntityId::new("account", format!("a{a}"));
            // Releases travel as messages: give the last ones a moment to arrive.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let meta = client.get_entity(&id).await.unwrap().unwrap();
                if meta.locked_by.is_none() {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{id} still locked by {:?}",
                    meta.locked_by
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            total += client.read_entity_state::<i64>(&id).await.unwrap().unwrap();
        }
        assert_eq!(total, 100 * accounts as i64);
        rt.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locking_rules_are_enforced_with_clear_errors() {
    let (rt, client) = start(100);
    let id = client
        .start_by_name("break_rules", None, StartOptions::default())
        .await
        .unwrap();
    let errors: Vec<String> = client.wait_for_output(&id, WAIT).await.unwrap();
    assert_eq!(errors, vec!["LockingRulesViolation"; 4]);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_released_when_the_orchestration_fails() {
    let (rt, client) = start(100);
    let id = client
        .start_by_name("hold_and_fail", None, StartOptions::default())
        .await
        .unwrap();
    let st = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(st.status, RuntimeStatus::Failed);
    let held = EntityId::new("account", "held");
    client.signal_entity(&held, "deposit", &7).await.unwrap();
    let v = wait_for_state(&client, &held, |v: &i64| *v == 7).await;
    assert_eq!(v, 7);
    assert!(client
        .get_entity(&held)
        .await
        .unwrap()
        .unwrap()
        .locked_by
        .is_none());
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_state_fails_the_call_and_keeps_the_old_state() {
    let reg = Registry::builder()
        .entity(
            "blob",
            |ctx: EntityContext<String>, op: Operation| async move {
                let n: usize = op.input()?;
                ctx.set_state(&"x".repeat(n));
                Ok::<_, durable_core::FailureDetails>(n)
            },
        )
        .orchestrator("grow", |ctx: OrchestrationContext, n: usize| async move {
            let id = EntityId::new("blob", "b");
            match ctx.call_entity::<usize>(&id, "set", &n).await {
                Ok(v) => Ok::<_, OrchestrationError>(format!("ok {v}")),
                Err(e) => Ok(format!("{}: {}", e.failure.error_type, e.failure.message)),
            }
        })
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let rt = Worker::builder(store)
        .registry(reg)
        .options(durable_core::WorkerOptions {
            max_payload_bytes: 4096,
            ..Default::default()
        })
        .start()
        .unwrap();
    let client = rt.client();
    let small = client
        .start_by_name("grow", Some("10".into()), StartOptions::default())
        .await
        .unwrap();
    assert_eq!(
        client
            .wait_for_output::<String>(&small, WAIT)
            .await
            .unwrap(),
        "ok 10"
    );
    let big = client
        .start_by_name("grow", Some("10000".into()), StartOptions::default())
        .await
        .unwrap();
    let out: String = client.wait_for_output(&big, WAIT).await.unwrap();
    assert!(out.starts_with("PayloadTooLarge"), "{out}");
    assert!(out.contains("4096"), "{out}");
    let state: String = client
        .read_entity_state(&EntityId::new("blob", "b"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.len(), 10);
    rt.shutdown().await;
}

/// An entity's batch of operations that keeps going to workers that die before committing
/// (simulated: taken by a worker id that never commits, then released as a restart would)
/// is refused once over `max_orchestration_dequeues`: its operations never run, a call
/// batched with them is answered with a `Poison` failure, and the entity works as usual
/// afterwards (the count starts over at its commit).
async fn poison_entity_batch(store: Arc<dyn durable_core::Store>) {
    use durable_core::store::WorkerId;
    use std::sync::atomic::{AtomicU32, Ordering};
    // Runs of `set`, counted per test (tests may share a process).
    let sets = Arc::new(AtomicU32::new(0));
    let reg = || {
        let sets = sets.clone();
        Registry::builder()
            .entity("tally", move |ctx: EntityContext<i64>, op: Operation| {
                let sets = sets.clone();
                async move {
                    if op.name == "set" {
                        sets.fetch_add(1, Ordering::SeqCst);
                        let n: i64 = op.input()?;
                        ctx.set_state(&n);
                    }
                    let v: Result<i64, durable_core::FailureDetails> = ctx.get_state_or_default();
                    v
                }
            })
            .orchestrator(
                "reads_tally",
                |ctx: OrchestrationContext, _: ()| async move {
                    let r: Result<i64, _> = ctx
                        .call_entity(&EntityId::new("tally", "k"), "get", &())
                        .await;
                    Ok::<_, OrchestrationError>(match r {
                        Ok(v) => format!("value {v}"),
                        Err(e) => format!("{}: {}", e.failure.error_type, e.failure.message),
                    })
                },
            )
            .build()
            .unwrap()
    };
    let client = DurableClient::with_registry(store.clone(), Arc::new(reg()));
    let id = EntityId::new("tally", "k");
    client.signal_entity(&id, "set", &1i64).await.unwrap();
    let dead = WorkerId::new("crashing-worker");
    for n in 1..=3 {
        let item = store
            .fetch_orchestration_work(&dead, Duration::from_secs(60), 1, WAIT)
            .await
            .unwrap()
            .pop()
            .expect("the entity's work item");
        assert_eq!(item.dequeue_count, n);
        assert_eq!(store.release_leases(&dead).await.unwrap(), 1);
    }
    let rt = Worker::builder(store.clone())
        .registry(reg())
        .options(durable_core::WorkerOptions {
            max_orchestration_dequeues: 2,
            shutdown_grace: Duration::ZERO,
            ..Default::default()
        })
        .start()
        .unwrap();
    // A call sent now is answered: refused with the poison batch when it joined it, else
    // run after it (the refused `set` left no state).
    let reader = client
        .start_by_name("reads_tally", None, StartOptions::default())
        .await
        .unwrap();
    let out: String = client.wait_for_output(&reader, WAIT).await.unwrap();
    assert!(
        out == "value 0"
            || (out.starts_with("Poison: the batch of operations of entity")
                && out.contains("handed to a worker 3 times")),
        "{out}"
    );
    assert_eq!(
        sets.load(Ordering::SeqCst),
        0,
        "the poison operation never ran"
    );
    // The entity works again.
    client.signal_entity(&id, "set", &5i64).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v: Option<i64> = client.read_entity_state(&id).await.unwrap();
        if v == Some(5) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sets.load(Ordering::SeqCst), 1);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entity_batch_is_refused_in_memory() {
    poison_entity_batch(Arc::new(MemoryStore::new())).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entity_batch_is_refused_on_sqlite() {
    let dir = std::env::temp_dir().join(format!(
        "durable-entity-poison-{}-{}",
        std::process::id(),
        durable_core::store::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let store = durable_core::store::sqlite::SqliteStore::open(dir.join("p.db")).unwrap();
    poison_entity_batch(Arc::new(store)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// On PostgreSQL when `DURABLE_TEST_PG` names a database (skipped otherwise).
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entity_batch_is_refused_on_postgres() {
    let Some(url) = std::env::var("DURABLE_TEST_PG")
        .ok()
        .filter(|s| !s.trim().is_empty())
    else {
        return;
    };
    let schema = format!(
        "t_ep_{}_{}",
        std::process::id(),
        &durable_core::store::random_id()[..12]
    );
    let store = durable_core::store::postgres::PostgresStore::builder(url)
        .schema(schema)
        .drop_schema_on_drop(true)
        .connect()
        .await
        .expect("DURABLE_TEST_PG is reachable");
    poison_entity_batch(Arc::new(store)).await;
}
