//! A worker process for the crash test: runs a 5-activity sequence for 200 instances on a
//! SQLite file. The test kills it with SIGKILL at random moments and starts it again.
//!
//! Usage: `crash_host <db-path> <instances> [--until-done] [--lease-secs N] [--step-ms N]`
//! (leases default to 2 s, so work held by a killed process comes back quickly; each step
//! takes 30 ms by default). Every activity execution appends its idempotency key to
//! `<db-path>.log`, so re-executions can be counted.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use durable_core::store::sqlite::SqliteStore;
use durable_core::{
    ActivityContext, ActivityError, InstanceFilter, OrchestrationContext, OrchestrationError,
    Registry, RuntimeStatus, StartOptions, Worker, WorkerOptions,
};

fn registry(log: std::path::PathBuf, step: Duration) -> Registry {
    Registry::builder()
        .activity(
            "step",
            move |ctx: ActivityContext, (n, acc): (u32, String)| {
                let log = log.clone();
                async move {
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)?;
                    // One write call per line, so a kill never leaves half a line.
                    f.write_all(format!("{}\n", ctx.idempotency_key()).as_bytes())?;
                    // Some work, so kills land mid-activity too.
                    tokio::time::sleep(step).await;
                    Ok::<_, ActivityError>(format!("{acc}{n}"))
                }
            },
        )
        .orchestrator("sequence5", |ctx: OrchestrationContext, _: ()| async move {
            let mut acc = String::new();
            for n in 1..=5u32 {
                acc = ctx.call_activity_by_name("step", &(n, acc)).await?;
            }
            Ok::<_, OrchestrationError>(acc)
        })
        .build()
        .expect("registry")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let db = std::path::PathBuf::from(&args[1]);
    let instances: u32 = args[2].parse().expect("instance count");
    let until_done = args.iter().any(|a| a == "--until-done");
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].parse().expect("a number after the flag"))
            .unwrap_or(default)
    };
    let lease = Duration::from_secs(flag("--lease-secs", 2));
    let step = Duration::from_millis(flag("--step-ms", 30));
    let store = Arc::new(SqliteStore::open(&db).expect("open store"));
    let mut log = db.clone().into_os_string();
    log.push(".log");
    let options = WorkerOptions {
        orchestration_lease: lease,
        activity_lease: lease,
        activity_concurrency: 16,
        ..WorkerOptions::default()
    };
    let runtime = Worker::builder(store.clone())
        .registry(registry(log.into(), step))
        .options(options)
        .start()
        .expect("runtime");
    let client = runtime.client();
    for i in 0..instances {
        let id = format!("crash-{i:04}");
        if client.get_state(&id).await.expect("read state").is_some() {
            continue;
        }
        match client
            .start_by_name("sequence5", None, StartOptions::with_instance_id(&id))
            .await
        {
            Ok(_) | Err(durable_core::Error::InstanceExists { .. }) => {}
            Err(e) => panic!("start {id}: {e}"),
        }
    }
    println!("started");
    loop {
        let page = client
            .list_instances(
                &InstanceFilter {
                    statuses: vec![RuntimeStatus::Completed],
                    ..Default::default()
                },
                10_000,
                None,
            )
            .await
            .expect("list");
        if until_done && page.items.len() as u32 >= instances {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    runtime.shutdown().await;
    println!("done");
}
