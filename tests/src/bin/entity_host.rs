//! A worker process for the entity crash test: serves a `counter` and an `orderlog`
//! entity from a SQLite file until it is killed, or, with `--until N`, until both the
//! counter and the order log have applied at least N operations (the test checks for
//! exactly N).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use durable_core::store::sqlite::SqliteStore;
use durable_core::{
    DurableClient, EntityContext, EntityId, FailureDetails, Operation, Registry, Worker,
    WorkerOptions,
};
use serde::{Deserialize, Serialize};

/// Per sender: last sequence number seen; plus out-of-order arrivals and the total.
#[derive(Default, Serialize, Deserialize)]
pub struct OrderLog {
    last: BTreeMap<String, u64>,
    violations: u64,
    total: u64,
}

fn registry() -> Registry {
    Registry::builder()
        .entity(
            "counter",
            |ctx: EntityContext<i64>, op: Operation| async move {
                let v = ctx.get_state_or_default()? + op.input::<i64>()?;
                ctx.set_state(&v);
                Ok::<_, FailureDetails>(v)
            },
        )
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
                Ok::<_, FailureDetails>(())
            },
        )
        .build()
        .expect("registry")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let store = Arc::new(SqliteStore::open(&args[1]).expect("open store"));
    let until: Option<i64> = args
        .iter()
        .position(|a| a == "--until")
        .map(|i| args[i + 1].parse().expect("count"));
    let options = WorkerOptions {
        orchestration_lease: Duration::from_secs(2),
        ..WorkerOptions::default()
    };
    let runtime = Worker::builder(store.clone())
        .registry(registry())
        .options(options)
        .start()
        .expect("runtime");
    let client = DurableClient::new(store);
    let counter = EntityId::new("counter", "c");
    let log = EntityId::new("orderlog", "l");
    loop {
        if let Some(n) = until {
            let count = client
                .read_entity_state::<i64>(&counter)
                .await
                .expect("read counter");
            let logged = client
                .read_entity_state::<OrderLog>(&log)
                .await
                .expect("read order log")
                .map(|l| l.total);
            if count.is_some_and(|c| c >= n) && logged.is_some_and(|t| t >= n as u64) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runtime.shutdown().await;
}
