//! Payloads at the doors and inside orchestrations: typed checks before anything is
//! stored, the one decoding rule (a JSON value of the type, or a JSON string holding one),
//! and badly shaped event data an orchestration rejects while it keeps waiting.

use std::sync::Arc;
use std::time::Duration;

use durable_core::history::EventKind;
use durable_core::{
    ActivityError, DurableClient, Error, MemoryStore, OrchestrationContext, OrchestrationError,
    Registry, RuntimeStatus, StartOptions, Store, Worker,
};

const WAIT: Duration = Duration::from_secs(20);

fn registry() -> Registry {
    Registry::builder()
        .activity("say_hello", |_ctx, city: String| async move {
            Ok::<_, ActivityError>(format!("Hello {city}!"))
        })
        .orchestrator(
            "hello_cities",
            |ctx: OrchestrationContext, cities: Vec<String>| async move {
                let mut out = Vec::new();
                for city in cities {
                    out.push(
                        ctx.call_activity_by_name::<String>("say_hello", &city)
                            .await?,
                    );
                }
                Ok::<_, OrchestrationError>(out)
            },
        )
        // Waits for a well-formed `numbers` event, rejecting the others; returns the
        // numbers and how many were rejected.
        .orchestrator("numbers", |ctx: OrchestrationContext, _: ()| async move {
            let mut rejected = Vec::new();
            loop {
                match ctx.wait_for_external_event::<Vec<u32>>("numbers").await {
                    Ok(n) => return Ok::<_, OrchestrationError>((n, rejected)),
                    Err(e) if e.is_decode_error() => {
                        rejected.push(e.failure.message.clone());
                        ctx.set_custom_status(rejected.len());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        })
        .orchestrator("strict", |ctx: OrchestrationContext, _: ()| async move {
            let n: Vec<u32> = ctx.wait_for_external_event("numbers").await?;
            Ok::<_, OrchestrationError>(n)
        })
        .build()
        .unwrap()
}

fn runtime(cache: usize) -> (Worker, DurableClient, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let runtime = Worker::builder(store.clone())
        .registry(registry())
        .cache_capacity(cache)
        .start()
        .unwrap();
    let client = runtime.client();
    (runtime, client, store)
}

async fn count(client: &DurableClient) -> usize {
    client
        .list_instances(&Default::default(), 1000, None)
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_start_refuses_input_of_the_wrong_type_and_stores_nothing() {
    let (rt, client, _) = runtime(100);
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    for (input, says) in [
        (r#"{"cities": 5}"#, "expected a sequence"),
        ("[1,2,3]", "expected a string"),
        (r#""Paris""#, "expected a sequence"),
        (r#""[1,2]""#, "expected a string"),
        (deep.as_str(), "recursion limit exceeded"),
        ("5", "expected a sequence"),
    ] {
        let err = client
            .start_by_name(
                "hello_cities",
                Some(input.to_string()),
                StartOptions::with_instance_id("never"),
            )
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidArgument(_)), "{input}: {msg}");
        if input != deep {
            assert!(
                msg.starts_with(
                    "input of orchestrator 'hello_cities' does not match its input type Vec<String>: "
                ),
                "{msg}"
            );
        }
        assert!(msg.contains(says), "{input}: {msg}");
    }
    assert_eq!(count(&client).await, 0);
    // No registry: the type is unknown here, but the JSON is still checked, depth too.
    let bare = DurableClient::new(client.store().clone());
    let err = bare
        .start_by_name("hello_cities", Some(deep.clone()), StartOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("recursion limit"), "{err}");
    assert_eq!(count(&client).await, 0);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_sent_as_a_json_string_holding_json_runs_and_is_stored_as_the_value() {
    let (rt, client, _) = runtime(100);
    let id = client
        .start_by_name(
            "hello_cities",
            Some(r#""[\"Paris\", \"Rome\"]""#.into()),
            StartOptions::default(),
        )
        .await
        .unwrap();
    let state = client.get_state(&id).await.unwrap().unwrap();
    assert_eq!(state.input.as_deref(), Some(r#"["Paris", "Rome"]"#));
    let out: Vec<String> = client.wait_for_output(&id, WAIT).await.unwrap();
    assert_eq!(out, ["Hello Paris!", "Hello Rome!"]);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badly_shaped_event_data_is_rejected_and_the_wait_goes_on() {
    for cache in [100, 0] {
        let (rt, client, store) = runtime(cache);
        let id = client
            .start_by_name("numbers", None, StartOptions::default())
            .await
            .unwrap();
        client
            .raise_event_json(&id, "numbers", Some(r#"{"x": 1}"#.into()))
            .await
            .unwrap();
        // The rejection is visible while the instance keeps running.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let st = client.get_state(&id).await.unwrap().unwrap();
            if st.custom_status.as_deref() == Some("1") {
                assert_eq!(st.status, RuntimeStatus::Running);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never rejected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // As the Python client sends it: JSON inside a JSON string.
        client
            .raise_event_json(&id, "numbers", Some(r#""[1, 2]""#.into()))
            .await
            .unwrap();
        let (numbers, rejected): (Vec<u32>, Vec<String>) =
            client.wait_for_output(&id, WAIT).await.unwrap();
        assert_eq!(numbers, [1, 2]);
        assert_eq!(rejected.len(), 1);
        assert!(
            rejected[0]
                .starts_with("the event data does not decode as Vec<u32>: invalid type: map"),
            "{}",
            rejected[0]
        );
        let raised = store
            .read_history(&id)
            .await
            .unwrap()
            .iter()
            .filter(|e| matches!(e.kind, EventKind::EventRaised { .. }))
            .count();
        assert_eq!(raised, 2, "cache {cache}");
        rt.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestration_that_does_not_handle_bad_event_data_fails_saying_why() {
    let (rt, client, _) = runtime(100);
    let id = client
        .start_by_name("strict", None, StartOptions::default())
        .await
        .unwrap();
    client
        .raise_event_json(&id, "numbers", Some(r#""not numbers""#.into()))
        .await
        .unwrap();
    let st = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(st.status, RuntimeStatus::Failed);
    let msg = st.failure.unwrap().message;
    assert!(
        msg.contains("external event 'numbers' failed: the event data does not decode as Vec<u32>"),
        "{msg}"
    );
    // Event data is checked as JSON at the door, depth included.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let (rt2, client2, _) = runtime(100);
    let id2 = client2
        .start_by_name("strict", None, StartOptions::default())
        .await
        .unwrap();
    let err = client2
        .raise_event_json(&id2, "numbers", Some(deep))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("recursion limit"), "{err}");
    rt2.shutdown().await;
    rt.shutdown().await;
}
