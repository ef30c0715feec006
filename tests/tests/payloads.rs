//! Large payloads end to end: a 10 MiB orchestration input, a 10 MiB activity result and a
//! 10 MiB output, on SQLite and on PostgreSQL, through the client and through the host
//! (whose request body limit, 1 MiB by default, is raised for it; at the default such an
//! input is refused with 413 and nothing starts).
//!
//! The PostgreSQL database is `DURABLE_TEST_PG` (default
//! `postgres://root@127.0.0.1:5432/test`); each test uses a schema of its own, dropped
//! afterwards.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use durable_core::store::postgres::PostgresStore;
use durable_core::store::sqlite::SqliteStore;
use durable_core::{
    ActivityError, DurableClient, OrchestrationContext, OrchestrationError, Registry,
    RuntimeStatus, StartOptions, Store,
};
use durable_http::{App, Host, RunningHost};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};

/// 10 MiB.
const BIG: usize = 10 * 1024 * 1024;
const KEY: &str = "payload-test-key-0123456789";
const WAIT: Duration = Duration::from_secs(120);

/// `len` bytes of text that does not repeat with a short period (so a truncation or a
/// mix-up of two payloads shows), distinct per `seed`.
fn text(len: usize, seed: u8) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((i / 7 + i * 13 + usize::from(seed)) % 26) as u8))
        .collect()
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Output {
    input_len: usize,
    input_ok: bool,
    result: String,
}

fn registry() -> Registry {
    Registry::builder()
        .activity("big_result", |_ctx, len: usize| async move {
            Ok::<_, ActivityError>(text(len, 2))
        })
        .orchestrator(
            "big",
            |ctx: OrchestrationContext, input: String| async move {
                let result: String = ctx
                    .call_activity_by_name("big_result", &input.len())
                    .await?;
                Ok::<_, OrchestrationError>(Output {
                    input_len: input.len(),
                    input_ok: input == text(input.len(), 1),
                    result,
                })
            },
        )
        .build()
        .expect("registry")
}

async fn host(store: Arc<dyn Store>, body_limit: Option<usize>) -> (RunningHost, Arc<App>) {
    let mut b = Host::builder()
        .addr("127.0.0.1:0")
        .store(store)
        .key(KEY)
        .registry(registry())
        .without_registered_routes();
    if let Some(limit) = body_limit {
        b = b.body_limit(limit);
    }
    let host = b.build().expect("host builds");
    let app = host.app();
    (host.bind().await.expect("host binds"), app)
}

fn check_output(out: &Output) {
    assert_eq!(out.input_len, BIG);
    assert!(out.input_ok, "the orchestration saw its input changed");
    assert_eq!(out.result.len(), BIG);
    assert!(out.result == text(BIG, 2), "the activity's result changed");
}

/// Through the client: start with a 10 MiB input, wait, read the 10 MiB output.
async fn through_client(client: &DurableClient, id: &str) {
    let input = serde_json::to_string(&text(BIG, 1)).unwrap();
    client
        .start_by_name(
            "big",
            Some(input),
            StartOptions {
                instance_id: Some(id.into()),
                ..StartOptions::default()
            },
        )
        .await
        .expect("a 10 MiB input starts");
    let state = client
        .wait_for_completion(id, WAIT)
        .await
        .expect("finishes");
    assert_eq!(
        state.status,
        RuntimeStatus::Completed,
        "{:?}",
        state.failure
    );
    let out: Output = serde_json::from_str(state.output.as_deref().expect("output")).unwrap();
    check_output(&out);
    // Read back from the store: the input is kept as given.
    let stored = client.get_state(id).await.unwrap().expect("stored");
    assert_eq!(stored.input.map(|s| s.len()), Some(BIG + 2));
}

/// Through the host: `POST .../orchestrators/big/{id}?timeout=..` with the 10 MiB input as
/// the body answers 200 with the 10 MiB output.
async fn through_host(app: &App, id: &str) {
    let body = serde_json::to_string(&text(BIG, 1)).unwrap();
    let req = http::Request::post(format!(
        "/runtime/webhooks/durabletask/orchestrators/big/{id}?timeout=120&pollingInterval=1&code={KEY}"
    ))
    .header("host", "localhost")
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(body)))
    .unwrap();
    let resp = app.handle(req).await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        status,
        http::StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
    );
    let out: Output = serde_json::from_slice(&bytes).unwrap();
    check_output(&out);
}

async fn end_to_end(store: Arc<dyn Store>) {
    let (running, app) = host(store, Some(16 * 1024 * 1024)).await;
    through_client(&running.client(), "big-client").await;
    through_host(&app, "big-http").await;
    running.shutdown().await;
}

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("durable-payloads-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("durable.db")
}

fn pg_url() -> String {
    std::env::var("DURABLE_TEST_PG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "postgres://root@127.0.0.1:5432/test".into())
}

async fn postgres(schema: &str) -> Arc<dyn Store> {
    Arc::new(
        PostgresStore::builder(pg_url())
            .schema(schema)
            .drop_schema_on_drop(true)
            .connect()
            .await
            .expect("the test database is reachable (DURABLE_TEST_PG)"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_payloads_on_sqlite() {
    let path = temp_db("sqlite");
    end_to_end(Arc::new(SqliteStore::open(&path).unwrap())).await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_payloads_on_postgres() {
    let schema = format!("payloads_{}", std::process::id());
    end_to_end(postgres(&schema).await).await;
}

/// At the default body limit (1 MiB) a 10 MiB start body is refused with 413 and starts
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_body_limit_refuses_a_ten_mib_start() {
    let path = temp_db("limit");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let (running, app) = host(store.clone(), None).await;
    let body = serde_json::to_string(&text(BIG, 1)).unwrap();
    let req = http::Request::post(format!(
        "/runtime/webhooks/durabletask/orchestrators/big/refused?code={KEY}"
    ))
    .header("host", "localhost")
    .body(Full::new(Bytes::from(body)))
    .unwrap();
    let resp = app.handle(req).await;
    assert_eq!(resp.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    assert!(store.get_instance("refused").await.unwrap().is_none());
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
