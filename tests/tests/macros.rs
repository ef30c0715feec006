//! The attribute macros end to end: registration, direct calls, typed handles.

use std::sync::Arc;
use std::time::Duration;

use durable_core::{
    activity, orchestrator, ActivityContext, ActivityError, MemoryStore, OrchestrationContext,
    OrchestrationError, Registry, Worker,
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
    let rt = Worker::builder(Arc::new(MemoryStore::new()))
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

/// A counter whose operations' input types the macro records.
#[derive(Default, Serialize, Deserialize)]
struct Tally {
    value: i64,
}

#[durable_core::entity]
impl Tally {
    pub fn add(&mut self, n: i64) -> i64 {
        self.value += n;
        self.value
    }

    pub fn get(&self) -> i64 {
        self.value
    }
}

#[test]
fn generated_registrations_know_their_input_types() {
    let reg = Registry::from_inventory().unwrap();
    let o = reg.orchestrator("hello_cities", None).unwrap();
    assert_eq!(o.input.name(), "Vec<String>");
    assert_eq!(o.input.check(Some(r#"["a"]"#)), Ok(None));
    assert_eq!(
        o.input.check(Some(r#""[\"a\"]""#)),
        Ok(Some(r#"["a"]"#.to_string()))
    );
    assert!(o.input.check(Some(r#"{"cities": 5}"#)).is_err());
    let p = reg.orchestrator("parent", None).unwrap();
    assert_eq!(p.input.name(), "()");
    assert!(p.input.check(None).is_ok());
    assert!(p.input.check(Some("[1]")).is_err());

    let ops = reg.entity("tally").unwrap().operations.unwrap();
    let names: Vec<&str> = ops.iter().map(|o| o.name).collect();
    assert_eq!(names, ["add", "get", "delete"]);
    let add_input = ops[0].input.unwrap();
    assert_eq!(add_input.name(), "i64");
    assert_eq!(add_input.check(Some(r#""5""#)), Ok(Some("5".to_string())));
    assert!(add_input.check(Some(r#""five""#)).is_err());
    assert!(ops[1].input.is_none() && ops[2].input.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_signals_are_checked_against_the_operations() {
    let rt = Worker::builder(Arc::new(MemoryStore::new()))
        .start()
        .unwrap();
    let client = rt.client();
    let id = durable_core::EntityId::new("tally", "t1");
    for (op, input, says) in [
        ("add", Some(r#""five""#), "input of operation 'add' of entity 'tally' does not match its input type i64: invalid type: string \"five\", expected i64"),
        ("add", Some(r#"{"n": 1}"#), "expected i64"),
        ("subtract", Some("1"), "entity 'tally' has no operation 'subtract'; it has: add, get, delete"),
    ] {
        let err = client
            .signal_entity_json(&id, op, input.map(str::to_string), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, durable_core::Error::InvalidArgument(_)) && err.to_string().contains(says),
            "{op}: {err}"
        );
    }
    assert!(client.get_entity(&id).await.unwrap().is_none());
    // The value, or a JSON string holding it (stored as the value).
    client
        .signal_entity_json(&id, "add", Some("2".into()), None)
        .await
        .unwrap();
    client
        .signal_entity_json(&id, "add", Some(r#""3""#.into()), None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state: Option<Tally> = client.read_entity_state(&id).await.unwrap();
        if state.as_ref().is_some_and(|t| t.value == 5) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reached 5");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rt.shutdown().await;
}

/// Hangs unless told to stop; its default start-to-close timeout is 200 ms.
#[activity(timeout = "200ms")]
async fn hangs_by_default(ctx: ActivityContext) -> Result<u8, ActivityError> {
    ctx.cancelled().await;
    Err("stopped".into())
}

#[orchestrator]
async fn uses_the_default_timeout(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    // The activity's default applies; a call's own start_to_close would replace it.
    match ctx.call_activity(hangs_by_default, ()).await {
        Ok(v) => Ok(format!("answered {v}")),
        Err(e) if e.is_timeout() => Ok(e.failure.message),
        Err(e) => Err(e.into()),
    }
}

/// `#[activity(timeout = "...")]` is the start-to-close timeout of calls that set none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_timeout_attribute_bounds_calls_without_their_own() {
    let rt = Worker::builder(Arc::new(MemoryStore::new()))
        .start()
        .unwrap();
    let client = rt.client();
    let id = client.start(uses_the_default_timeout, ()).await.unwrap();
    let out: String = client
        .wait_for_output(&id, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        out.starts_with("activity 'hangs_by_default' did not finish within 200ms of starting"),
        "{out}"
    );
    rt.shutdown().await;
}
