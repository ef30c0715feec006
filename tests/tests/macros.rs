//! The attribute macros end to end: registration, direct calls, typed handles.

use std::sync::Arc;
use std::time::Duration;

use durable_core::{
    activity, orchestrator, ActivityContext, ActivityError, MemoryStore, OrchestrationContext,
    OrchestrationError, Registry, Runtime,
};
use serde::{Deserialize, Serialize};

/// Greets a city.
#[activity]
async fn say_hello(city: String) -> Result<String, ActivityError> {
    Ok(format!("Hello {city}!"))
}

#[activity(name = "add_numbers")]
async fn add(ctx: ActivityContext, a: i64, b: i64, c: i64) -> i64 {
    assert!(ctx.attempt() >= 1);
    a + b + c
}

#[activity]
async fn no_input() -> Result<u8, String> {
    Ok(7)
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Summary {
    greetings: Vec<String>,
    total: i64,
    seven: u8,
}

#[orchestrator]
async fn hello_cities(
    ctx: OrchestrationContext,
    cities: Vec<String>,
) -> Result<Summary, OrchestrationError> {
    let mut greetings = Vec::new();
    for city in cities {
        greetings.push(ctx.call_activity(say_hello, city).await?);
    }
    let total = ctx.call_activity(add, (1, 2, 3)).await?;
    let seven = ctx.call_activity(no_input, ()).await?;
    Ok(Summary {
        greetings,
        total,
        seven,
    })
}

#[orchestrator(name = "parent", version = "2")]
async fn parent_v2(ctx: OrchestrationContext) -> Result<usize, OrchestrationError> {
    let s = ctx
        .call_sub_orchestrator(hello_cities, vec!["Oslo".to_string()])
        .await?;
    Ok(s.greetings.len() + ctx.version().map(str::len).unwrap_or(0))
}

#[tokio::test]
async fn generated_functions_stay_directly_callable() {
    assert_eq!(
        say_hello("Tokyo".to_string()).await.unwrap(),
        "Hello Tokyo!"
    );
    assert_eq!(
        add(ActivityContext::for_test("add_numbers"), 1, 2, 3).await,
        6
    );
    assert_eq!(no_input().await.unwrap(), 7);
}

#[test]
fn registrations_are_found_at_link_time() {
    let reg = Registry::from_inventory().unwrap();
    for name in ["say_hello", "add_numbers", "no_input"] {
        assert!(reg.activity(name).is_some(), "{name}");
    }
    assert!(reg.orchestrator("hello_cities", None).is_some());
    assert_eq!(
        reg.orchestrator("parent", None).unwrap().version.as_deref(),
        Some("2")
    );
    assert!(
        reg.activity("add").is_none(),
        "the durable name is the one given"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_handles_run_end_to_end() {
    let rt = Runtime::builder(Arc::new(MemoryStore::new()))
        .start()
        .unwrap();
    let client = rt.client();
    let id = client
        .start(hello_cities, vec!["Tokyo".into(), "Lima".into()])
        .await
        .unwrap();
    let out: Summary = client
        .wait_for_output(&id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        out,
        Summary {
            greetings: vec!["Hello Tokyo!".into(), "Hello Lima!".into()],
            total: 6,
            seven: 7
        }
    );
    let id = client.start(parent_v2, ()).await.unwrap();
    let n: usize = client
        .wait_for_output(&id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(n, 2);
    rt.shutdown().await;
}
