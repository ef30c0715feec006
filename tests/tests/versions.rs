//! Orchestrator versions across deployments: instances keep replaying on the version they
//! started with while new ones start on the newest, whether they were started with a
//! version, without one, or by a client that knows no registry.

use std::sync::Arc;
use std::time::Duration;

use durable_core::{
    DurableClient, EventKind, MemoryStore, OrchestrationContext, Registry, RuntimeStatus,
    StartOptions, Store, TaskError, Worker,
};

/// One version of `greet`: waits for a `go` event, then answers with its tag. Version
/// "2" makes a different call first (a timer), so replaying a v1 history on it would be
/// nondeterministic.
fn greet(tag: &'static str, v2: bool) -> impl Fn(OrchestrationContext, String) -> futures::Greet {
    move |ctx: OrchestrationContext, who: String| {
        Box::pin(async move {
            if v2 {
                ctx.create_timer(Duration::from_millis(1)).await;
            }
            ctx.wait_for_external_event::<()>("go").await?;
            Ok::<_, TaskError>(format!(
                "{tag}: hello {who} (ctx version {:?})",
                ctx.version()
            ))
        })
    }
}

mod futures {
    pub type Greet = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<String, durable_core::TaskError>> + Send>,
    >;
}

async fn run(store: &Arc<MemoryStore>, registry: Registry) -> Worker {
    let store: Arc<dyn Store> = store.clone();
    Worker::builder(store)
        .registry(registry)
        .worker_id(durable_core::WorkerId::random())
        .start()
        .unwrap()
}

/// Starts `greet` for `who` and waits until it waits for its event.
async fn start_waiting(client: &DurableClient, who: &str, version: Option<&str>) -> String {
    let options = StartOptions {
        version: version.map(str::to_string),
        ..StartOptions::default()
    };
    let id = client
        .start_by_name("greet", Some(format!("\"{who}\"")), options)
        .await
        .unwrap();
    let waiting = client
        .store()
        .wait_for_instance_until(&id, Duration::from_secs(10), &|s| {
            s.is_some_and(|s| s.status == RuntimeStatus::Running)
        })
        .await
        .unwrap();
    assert_eq!(waiting.unwrap().status, RuntimeStatus::Running);
    id
}

async fn finish(client: &DurableClient, id: &str) -> String {
    client.raise_event(id, "go", &()).await.unwrap();
    client
        .wait_for_output::<String>(id, Duration::from_secs(10))
        .await
        .unwrap()
}

async fn recorded_version(store: &Arc<MemoryStore>, id: &str) -> Option<String> {
    let history = store.read_history(id).await.unwrap();
    history.iter().find_map(|e| match &e.kind {
        EventKind::ExecutionStarted { version, .. } => Some(version.clone()),
        _ => None,
    })?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_instances_keep_replaying_on_v1_while_new_ones_start_on_v2() {
    let store = Arc::new(MemoryStore::new());
    let v1 = Registry::builder()
        .orchestrator_version("greet", "1", greet("v1", false))
        .build()
        .unwrap();
    let worker = run(&store, v1).await;
    let old = start_waiting(&worker.client(), "old", None).await;
    assert_eq!(recorded_version(&store, &old).await.as_deref(), Some("1"));
    worker.shutdown().await;

    // The next deployment registers version 2 beside version 1.
    let both = Registry::builder()
        .orchestrator_version("greet", "1", greet("v1", false))
        .orchestrator_version("greet", "2", greet("v2", true))
        .build()
        .unwrap();
    let worker = run(&store, both).await;
    let client = worker.client();
    let new = start_waiting(&client, "new", None).await;
    assert_eq!(recorded_version(&store, &new).await.as_deref(), Some("2"));
    assert_eq!(
        finish(&client, &old).await,
        "v1: hello old (ctx version Some(\"1\"))"
    );
    assert_eq!(
        finish(&client, &new).await,
        "v2: hello new (ctx version Some(\"2\"))"
    );
    // Asking for a version explicitly still works.
    let pinned = start_waiting(&client, "pinned", Some("1")).await;
    assert_eq!(
        finish(&client, &pinned).await,
        "v1: hello pinned (ctx version Some(\"1\"))"
    );
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_without_a_version_keeps_the_unversioned_code() {
    let store = Arc::new(MemoryStore::new());
    let unversioned = Registry::builder()
        .orchestrator("greet", greet("original", false))
        .build()
        .unwrap();
    let worker = run(&store, unversioned).await;
    let old = start_waiting(&worker.client(), "old", None).await;
    assert_eq!(recorded_version(&store, &old).await, None);
    worker.shutdown().await;

    // Version 2 is added beside the unversioned code: the old instance replays on the
    // unversioned code (not on the newest, which would fail it as nondeterministic).
    let both = Registry::builder()
        .orchestrator("greet", greet("original", false))
        .orchestrator_version("greet", "2", greet("v2", true))
        .build()
        .unwrap();
    let worker = run(&store, both).await;
    let client = worker.client();
    let new = start_waiting(&client, "new", None).await;
    assert_eq!(
        finish(&client, &old).await,
        "original: hello old (ctx version None)"
    );
    assert_eq!(
        finish(&client, &new).await,
        "v2: hello new (ctx version Some(\"2\"))"
    );
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_by_a_client_without_a_registry_records_the_version_it_ran() {
    let store = Arc::new(MemoryStore::new());
    let v1 = Registry::builder()
        .orchestrator_version("greet", "1", greet("v1", false))
        .build()
        .unwrap();
    let worker = run(&store, v1).await;
    // A client that knows no registry (a management tool) records no version.
    let bare = DurableClient::new(store.clone());
    let id = start_waiting(&bare, "bare", None).await;
    // The first episode ran the newest version, and recorded it.
    assert_eq!(recorded_version(&store, &id).await.as_deref(), Some("1"));
    assert_eq!(
        store
            .get_instance(&id)
            .await
            .unwrap()
            .unwrap()
            .version
            .as_deref(),
        Some("1")
    );
    worker.shutdown().await;

    let both = Registry::builder()
        .orchestrator_version("greet", "1", greet("v1", false))
        .orchestrator_version("greet", "2", greet("v2", true))
        .build()
        .unwrap();
    let worker = run(&store, both).await;
    assert_eq!(
        finish(&worker.client(), &id).await,
        "v1: hello bare (ctx version Some(\"1\"))"
    );
    worker.shutdown().await;
}
