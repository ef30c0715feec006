//! The instance cache under a fan-in: results arriving while an episode's commit is being
//! answered must not make the next episode replay the whole history.

use std::sync::Arc;
use std::time::Duration;

use durable_core::metrics::Metrics;
use durable_core::store::sqlite::SqliteStore;
use durable_core::{
    ActivityError, OrchestrationContext, OrchestrationError, Registry, StartOptions, Worker,
};

const WAIT: Duration = Duration::from_secs(60);

/// The value of a counter without labels in the text exposition.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_in_runs_on_the_cached_execution() {
    let dir = std::env::temp_dir().join(format!("durable-cache-fanin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(SqliteStore::open(dir.join("c.db")).unwrap());
    let registry = Registry::builder()
        .activity("add_one", |_ctx, n: u64| async move {
            Ok::<_, ActivityError>(n + 1)
        })
        .orchestrator("fan", |ctx: OrchestrationContext, n: u64| async move {
            let calls: Vec<_> = (0..n)
                .map(|i| ctx.call_activity_by_name::<u64>("add_one", &i))
                .collect();
            let mut sum = 0u64;
            for r in ctx.when_all(calls).await {
                sum += r?;
            }
            Ok::<_, OrchestrationError>(sum)
        })
        .build()
        .unwrap();
    let metrics = Metrics::new();
    let worker = Worker::builder(store)
        .registry(registry)
        .metrics(metrics.clone())
        .start()
        .unwrap();
    let client = worker.client();
    let n = 3_000u64;
    for _ in 0..2 {
        let id = client
            .start_by_name("fan", Some(n.to_string()), StartOptions::default())
            .await
            .unwrap();
        let sum: u64 = client.wait_for_output(&id, WAIT).await.unwrap();
        assert_eq!(sum, n * (n + 1) / 2);
    }
    let mut prom = prometheus_client::registry::Registry::default();
    metrics.register(&mut prom);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &prom).unwrap();
    // Every episode after the first finds its execution in the cache, or waits for the
    // episode that has it out to put it back.
    assert_eq!(
        counter(&text, "durable_replayed_events_total"),
        0.0,
        "history was replayed:\n{}",
        text.lines()
            .filter(|l| l.starts_with("durable_episodes_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    worker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
