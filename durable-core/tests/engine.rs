//! End-to-end behaviour of the engine on the in-memory store: one test per pattern, each
//! run with the instance cache on and off.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use durable_core::history::EventKind;
use durable_core::{
    race, ActivityError, DurableClient, Either, MemoryStore, OrchestrationContext,
    OrchestrationError, Registry, RetryPolicy, RuntimeStatus, StartOptions, StatusOptions, Store,
    Worker,
};

const WAIT: Duration = Duration::from_secs(20);

struct Harness {
    runtime: Worker,
    client: DurableClient,
    store: Arc<MemoryStore>,
}

fn start(registry: Registry, cache: usize) -> Harness {
    start_on(Arc::new(MemoryStore::new()), registry, cache)
}

fn start_on(store: Arc<MemoryStore>, registry: Registry, cache: usize) -> Harness {
    let runtime = Worker::builder(store.clone())
        .registry(registry)
        .cache_capacity(cache)
        .start()
        .expect("runtime starts");
    let client = runtime.client();
    Harness {
        runtime,
        client,
        store,
    }
}

/// Polls the instance's stored state until `done` holds, failing after [`WAIT`].
async fn state_when(
    client: &DurableClient,
    id: &str,
    done: impl Fn(&durable_core::InstanceState) -> bool,
) -> durable_core::InstanceState {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(st) = client.get_state(id).await.unwrap() {
            if done(&st) {
                return st;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance {id} never reached the expected state"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn hello_registry() -> durable_core::registry::RegistryBuilder {
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
}

async fn history_kinds(store: &MemoryStore, id: &str) -> Vec<String> {
    store
        .read_history(id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind.type_name().to_string())
        .collect()
}

async fn for_both_cache_modes<F, Fut>(f: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    f(1000).await;
    f(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaining_completes_with_outputs_in_order() {
    for_both_cache_modes(|cache| async move {
        let h = start(hello_registry().build().unwrap(), cache);
        let id = h
            .client
            .start_by_name(
                "hello_cities",
                Some(r#"["Tokyo","Seattle","London"]"#.into()),
                StartOptions::default(),
            )
            .await
            .unwrap();
        let out: Vec<String> = h.client.wait_for_output(&id, WAIT).await.unwrap();
        assert_eq!(out, vec!["Hello Tokyo!", "Hello Seattle!", "Hello London!"]);
        let kinds = history_kinds(&h.store, &id).await;
        assert_eq!(kinds.iter().filter(|k| *k == "TaskScheduled").count(), 3);
        assert_eq!(kinds.iter().filter(|k| *k == "TaskCompleted").count(), 3);
        assert_eq!(
            kinds.last().map(String::as_str),
            Some("OrchestratorCompleted")
        );
        assert!(kinds.contains(&"ExecutionCompleted".to_string()));
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_fan_in_of_1000_activities() {
    for_both_cache_modes(|cache| async move {
        let reg = Registry::builder()
            .activity("double", |_ctx, n: u64| async move {
                Ok::<_, ActivityError>(n * 2)
            })
            .orchestrator("fan", |ctx: OrchestrationContext, n: u64| async move {
                let calls: Vec<_> = (0..n)
                    .map(|i| ctx.call_activity_by_name::<u64>("double", &i))
                    .collect();
                let results = ctx.when_all(calls).await;
                let mut sum = 0;
                for r in results {
                    sum += r?;
                }
                Ok::<_, OrchestrationError>(sum)
            })
            .build()
            .unwrap();
        let h = start(reg, cache);
        let id = h
            .client
            .start_by_name("fan", Some("1000".into()), StartOptions::default())
            .await
            .unwrap();
        let sum: u64 = h.client.wait_for_output(&id, WAIT).await.unwrap();
        assert_eq!(sum, (0..1000u64).map(|i| i * 2).sum::<u64>());
        let kinds = history_kinds(&h.store, &id).await;
        assert_eq!(kinds.iter().filter(|k| *k == "TaskScheduled").count(), 1000);
        assert_eq!(kinds.iter().filter(|k| *k == "TaskCompleted").count(), 1000);
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_timer_fires_after_its_delay() {
    for_both_cache_modes(|cache| async move {
        let reg = Registry::builder()
            .orchestrator("sleepy", |ctx: OrchestrationContext, ms: u64| async move {
                let before = ctx.current_utc_datetime();
                ctx.create_timer(Duration::from_millis(ms)).await;
                let after = ctx.current_utc_datetime();
                Ok::<_, OrchestrationError>((after - before).num_milliseconds())
            })
            .build()
            .unwrap();
        let h = start(reg, cache);
        let t0 = std::time::Instant::now();
        let id = h
            .client
            .start_by_name("sleepy", Some("300".into()), StartOptions::default())
            .await
            .unwrap();
        let elapsed_ms: i64 = h.client.wait_for_output(&id, WAIT).await.unwrap();
        assert!(
            elapsed_ms >= 300,
            "replay-safe clock advanced {elapsed_ms} ms"
        );
        assert!(t0.elapsed() >= Duration::from_millis(300));
        let kinds = history_kinds(&h.store, &id).await;
        assert!(kinds.contains(&"TimerCreated".to_string()));
        assert!(kinds.contains(&"TimerFired".to_string()));
        h.runtime.shutdown().await;
    })
    .await;
}

fn event_registry() -> Registry {
    Registry::builder()
        .orchestrator(
            "wait_event",
            |ctx: OrchestrationContext, _: ()| async move {
                let v: String = ctx.wait_for_external_event("go").await?;
                Ok::<_, OrchestrationError>(v)
            },
        )
        .orchestrator("wait_two", |ctx: OrchestrationContext, _: ()| async move {
            // Wait for a timer first, so events arrive before anyone waits for them.
            ctx.create_timer(Duration::from_millis(300)).await;
            let a: i32 = ctx.wait_for_external_event("n").await?;
            let b: i32 = ctx.wait_for_external_event("n").await?;
            Ok::<_, OrchestrationError>(vec![a, b])
        })
        .orchestrator(
            "wait_timeout",
            |ctx: OrchestrationContext, ms: u64| async move {
                match ctx
                    .wait_for_external_event_with_timeout::<String>(
                        "approval",
                        Duration::from_millis(ms),
                    )
                    .await
                {
                    Ok(v) => Ok::<_, OrchestrationError>(format!("got {v}")),
                    Err(e) if e.is_timeout() => Ok("timed out".to_string()),
                    Err(e) => Err(e.into()),
                }
            },
        )
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_event_after_the_wait() {
    for_both_cache_modes(|cache| async move {
        let h = start(event_registry(), cache);
        let id = h
            .client
            .start_by_name("wait_event", None, StartOptions::default())
            .await
            .unwrap();
        state_when(&h.client, &id, |st| st.status == RuntimeStatus::Running).await;
        h.client.raise_event(&id, "go", &"yes").await.unwrap();
        let out: String = h.client.wait_for_output(&id, WAIT).await.unwrap();
        assert_eq!(out, "yes");
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_events_before_the_wait_are_buffered_fifo() {
    for_both_cache_modes(|cache| async move {
        let h = start(event_registry(), cache);
        let id = h
            .client
            .start_by_name("wait_two", None, StartOptions::default())
            .await
            .unwrap();
        h.client.raise_event(&id, "n", &1).await.unwrap();
        h.client.raise_event(&id, "n", &2).await.unwrap();
        let out: Vec<i32> = h.client.wait_for_output(&id, WAIT).await.unwrap();
        assert_eq!(out, vec![1, 2]);
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_event_with_timeout_both_ways() {
    for_both_cache_modes(|cache| async move {
        let h = start(event_registry(), cache);
        // Times out.
        let late = h
            .client
            .start_by_name("wait_timeout", Some("200".into()), StartOptions::default())
            .await
            .unwrap();
        let out: String = h.client.wait_for_output(&late, WAIT).await.unwrap();
        assert_eq!(out, "timed out");
        // Arrives in time.
        let early = h
            .client
            .start_by_name(
                "wait_timeout",
                Some("10000".into()),
                StartOptions::default(),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.client
            .raise_event(&early, "approval", &"ok")
            .await
            .unwrap();
        let out: String = h.client.wait_for_output(&early, WAIT).await.unwrap();
        assert_eq!(out, "got ok");
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_orchestration_success_and_failure_propagate() {
    for_both_cache_modes(|cache| async move {
        let reg = Registry::builder()
            .orchestrator("child", |_ctx: OrchestrationContext, n: i64| async move {
                if n < 0 {
                    Err(OrchestrationError::new(format!("negative input {n}")))
                } else {
                    Ok(n * 10)
                }
            })
            .orchestrator("parent", |ctx: OrchestrationContext, n: i64| async move {
                let v: i64 = ctx.call_sub_orchestrator_by_name("child", None, &n).await?;
                Ok::<_, OrchestrationError>(v + 1)
            })
            .build()
            .unwrap();
        let h = start(reg, cache);
        let ok = h
            .client
            .start_by_name("parent", Some("4".into()), StartOptions::default())
            .await
            .unwrap();
        let v: i64 = h.client.wait_for_output(&ok, WAIT).await.unwrap();
        assert_eq!(v, 41);
        let child = h
            .client
            .get_state(&format!("{ok}:0000"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(child.status, RuntimeStatus::Completed);
        assert_eq!(child.parent.unwrap().instance_id, ok);

        let bad = h
            .client
            .start_by_name("parent", Some("-1".into()), StartOptions::default())
            .await
            .unwrap();
        let st = h.client.wait_for_completion(&bad, WAIT).await.unwrap();
        assert_eq!(st.status, RuntimeStatus::Failed);
        let msg = st.failure.unwrap().message;
        assert!(msg.contains("sub-orchestration 'child' failed"), "{msg}");
        assert!(msg.contains("negative input -1"), "{msg}");
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_counts_and_backoff_spacing() {
    for_both_cache_modes(|cache| async move {
        let calls = Arc::new(AtomicU32::new(0));
        let c2 = calls.clone();
        let reg = Registry::builder()
            .activity(
                "flaky",
                move |ctx: durable_core::ActivityContext, fail_times: u32| {
                    let calls = c2.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        if ctx.attempt() <= fail_times {
                            Err(ActivityError::new(format!(
                                "attempt {} failed",
                                ctx.attempt()
                            )))
                        } else {
                            Ok(ctx.attempt())
                        }
                    }
                },
            )
            .orchestrator(
                "retrying",
                |ctx: OrchestrationContext, fail_times: u32| async move {
                    let policy = RetryPolicy::new(4, Duration::from_millis(50))
                        .with_backoff_coefficient(2.0);
                    let attempt: u32 = ctx
                        .call_activity_by_name_with_retry("flaky", &policy, &fail_times)
                        .await?;
                    Ok::<_, OrchestrationError>(attempt)
                },
            )
            .build()
            .unwrap();
        let h = start(reg, cache);
        let id = h
            .client
            .start_by_name("retrying", Some("2".into()), StartOptions::default())
            .await
            .unwrap();
        let attempt: u32 = h.client.wait_for_output(&id, WAIT).await.unwrap();
        assert_eq!(attempt, 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let history = h.store.read_history(&id).await.unwrap();
        let spacing: Vec<i64> = history
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::TimerCreated { fire_at } => {
                    Some((fire_at - e.timestamp).num_milliseconds())
                }
                _ => None,
            })
            .collect();
        assert_eq!(spacing, vec![50, 100]);

        // Exhausted: 4 attempts, then the failure propagates.
        calls.store(0, Ordering::SeqCst);
        let id = h
            .client
            .start_by_name("retrying", Some("10".into()), StartOptions::default())
            .await
            .unwrap();
        let st = h.client.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(st.status, RuntimeStatus::Failed);
        assert!(st.failure.unwrap().message.contains("attempt 4 failed"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retriable_failures_and_handle_predicate_stop_retries() {
    let calls = Arc::new(AtomicU32::new(0));
    let c2 = calls.clone();
    let reg = Registry::builder()
        .activity(
            "fatal",
            move |_ctx: durable_core::ActivityContext, kind: String| {
                let calls = c2.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if kind == "fatal" {
                        Err::<(), _>(ActivityError::non_retriable("bad request"))
                    } else {
                        Err(ActivityError::new("not found"))
                    }
                }
            },
        )
        .orchestrator("r", |ctx: OrchestrationContext, kind: String| async move {
            let policy = RetryPolicy::new(5, Duration::from_millis(10))
                .with_handle(|e| !e.failure.message.contains("not found"));
            ctx.call_activity_by_name_with_retry::<()>("fatal", &policy, &kind)
                .await?;
            Ok::<_, OrchestrationError>(())
        })
        .build()
        .unwrap();
    let h = start(reg, 100);
    for kind in ["fatal", "missing"] {
        calls.store(0, Ordering::SeqCst);
        let id = h
            .client
            .start_by_name("r", Some(format!("\"{kind}\"")), StartOptions::default())
            .await
            .unwrap();
        let st = h.client.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(st.status, RuntimeStatus::Failed);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{kind} must not be retried"
        );
    }
    h.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_100_generations_resets_history() {
    for_both_cache_modes(|cache| async move {
        let reg = Registry::builder()
            .activity("inc", |_ctx, n: u32| async move {
                Ok::<_, ActivityError>(n + 1)
            })
            .orchestrator("counter", |ctx: OrchestrationContext, n: u32| async move {
                let next: u32 = ctx.call_activity_by_name("inc", &n).await?;
                if next < 100 {
                    return ctx.continue_as_new(next).await;
                }
                Ok::<_, OrchestrationError>(next)
            })
            .build()
            .unwrap();
        let h = start(reg, cache);
        let id = h
            .client
            .start_by_name("counter", Some("0".into()), StartOptions::default())
            .await
            .unwrap();
        let first_exec = h.client.get_state(&id).await.unwrap().unwrap().execution_id;
        let out: u32 = h.client.wait_for_output(&id, WAIT).await.unwrap();
        assert_eq!(out, 100);
        let st = h.client.get_state(&id).await.unwrap().unwrap();
        assert_ne!(st.execution_id, first_exec);
        assert_eq!(st.input.as_deref(), Some("99"));
        // Only the last generation's history remains.
        let kinds = history_kinds(&h.store, &id).await;
        assert_eq!(kinds.iter().filter(|k| *k == "ExecutionStarted").count(), 1);
        assert_eq!(kinds.iter().filter(|k| *k == "TaskScheduled").count(), 1);
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_carries_unprocessed_events() {
    let reg = Registry::builder()
        .orchestrator("gen", |ctx: OrchestrationContext, round: u32| async move {
            let v: u32 = ctx.wait_for_external_event("tick").await?;
            if round == 0 {
                // Wait so the second event is buffered before continuing.
                ctx.create_timer(Duration::from_millis(200)).await;
                return ctx.continue_as_new(1u32).await;
            }
            Ok::<_, OrchestrationError>(v)
        })
        .build()
        .unwrap();
    let h = start(reg, 100);
    let id = h
        .client
        .start_by_name("gen", Some("0".into()), StartOptions::default())
        .await
        .unwrap();
    h.client.raise_event(&id, "tick", &10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.client.raise_event(&id, "tick", &20).await.unwrap();
    let out: u32 = h.client.wait_for_output(&id, WAIT).await.unwrap();
    assert_eq!(out, 20);
    h.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_status_is_visible_while_running() {
    for_both_cache_modes(|cache| async move {
        let reg = Registry::builder()
            .orchestrator("staged", |ctx: OrchestrationContext, _: ()| async move {
                ctx.set_custom_status(serde_json::json!({"stage": "review"}));
                let _: () = ctx.wait_for_external_event("next").await?;
                ctx.set_custom_status("done");
                Ok::<_, OrchestrationError>(())
            })
            .build()
            .unwrap();
        let h = start(reg, cache);
        let id = h
            .client
            .start_by_name("staged", None, StartOptions::default())
            .await
            .unwrap();
        let mut status = None;
        for _ in 0..100 {
            let s = h
                .client
                .get_status(&id, StatusOptions::default())
                .await
                .unwrap()
                .unwrap();
            if s.state.custom_status.is_some() {
                status = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s = status.expect("custom status appears");
        assert_eq!(
            s.custom_status::<serde_json::Value>().unwrap(),
            Some(serde_json::json!({"stage": "review"}))
        );
        h.client.raise_event(&id, "next", &()).await.unwrap();
        let st = h.client.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(st.custom_status.as_deref(), Some("\"done\""));
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_while_waiting() {
    for_both_cache_modes(|cache| async move {
        let h = start(event_registry(), cache);
        let id = h
            .client
            .start_by_name("wait_event", None, StartOptions::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.client
            .terminate(&id, Some("no longer needed"))
            .await
            .unwrap();
        let st = h.client.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(st.status, RuntimeStatus::Terminated);
        assert_eq!(st.output.as_deref(), Some("\"no longer needed\""));
        // Further operations on a finished instance are refused and change nothing.
        let err = h.client.raise_event(&id, "go", &"late").await.unwrap_err();
        assert!(
            matches!(err, durable_core::Error::InvalidStatus { .. }),
            "{err}"
        );
        let err = h.client.terminate(&id, None).await.unwrap_err();
        assert!(
            matches!(err, durable_core::Error::InvalidStatus { .. }),
            "{err}"
        );
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_defers_events_until_resume() {
    for_both_cache_modes(|cache| async move {
        let h = start(event_registry(), cache);
        let id = h
            .client
            .start_by_name("wait_event", None, StartOptions::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.client.suspend(&id, Some("maintenance")).await.unwrap();
        h.client
            .raise_event(&id, "go", &"while suspended")
            .await
            .unwrap();
        state_when(&h.client, &id, |st| st.status == RuntimeStatus::Suspended).await;
        // The event raised while suspended waits: the instance stays suspended.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = h.client.get_state(&id).await.unwrap().unwrap();
        assert_eq!(st.status, RuntimeStatus::Suspended);
        h.client.resume(&id, None).await.unwrap();
        let out: String = h.client.wait_for_output(&id, WAIT).await.unwrap();
        assert_eq!(out, "while suspended");
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nondeterminism_is_detected_after_a_code_change() {
    let store = Arc::new(MemoryStore::new());
    let v1 = Registry::builder()
        .activity("a", |_ctx, _: ()| async move { Ok::<_, ActivityError>(1) })
        .activity("b", |_ctx, _: ()| async move { Ok::<_, ActivityError>(2) })
        .orchestrator("changing", |ctx: OrchestrationContext, _: ()| async move {
            let x: i32 = ctx.call_activity_by_name("a", &()).await?;
            let _: () = ctx.wait_for_external_event("continue").await?;
            Ok::<_, OrchestrationError>(x)
        })
        .build()
        .unwrap();
    let h = start_on(store.clone(), v1, 100);
    let id = h
        .client
        .start_by_name("changing", None, StartOptions::default())
        .await
        .unwrap();
    // Wait until the activity result is recorded.
    for _ in 0..200 {
        if history_kinds(&store, &id)
            .await
            .contains(&"TaskCompleted".to_string())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.runtime.shutdown().await;

    let v2 = Registry::builder()
        .activity("a", |_ctx, _: ()| async move { Ok::<_, ActivityError>(1) })
        .activity("b", |_ctx, _: ()| async move { Ok::<_, ActivityError>(2) })
        .orchestrator("changing", |ctx: OrchestrationContext, _: ()| async move {
            let x: i32 = ctx.call_activity_by_name("b", &()).await?;
            let _: () = ctx.wait_for_external_event("continue").await?;
            Ok::<_, OrchestrationError>(x)
        })
        .build()
        .unwrap();
    let h = start_on(store.clone(), v2, 100);
    h.client.raise_event(&id, "continue", &()).await.unwrap();
    let st = h.client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(st.status, RuntimeStatus::Failed);
    let f = st.failure.unwrap();
    assert_eq!(f.error_type, "NonDeterminism");
    assert!(f.message.contains("sequence number 0"), "{}", f.message);
    assert!(f.message.contains("TaskScheduled 'a'"), "{}", f.message);
    assert!(f.message.contains("call_activity 'b'"), "{}", f.message);
    h.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_fail_the_task_or_instance_not_the_worker() {
    for_both_cache_modes(|cache| async move {
        let reg = Registry::builder()
            .activity("boom", |_ctx, _: ()| async move {
                if true {
                    panic!("activity exploded");
                }
                Ok::<(), ActivityError>(())
            })
            .orchestrator(
                "calls_boom",
                |ctx: OrchestrationContext, _: ()| async move {
                    match ctx.call_activity_by_name::<()>("boom", &()).await {
                        Err(e) => Ok::<_, OrchestrationError>(e.failure.message),
                        Ok(()) => Ok("no failure".into()),
                    }
                },
            )
            .orchestrator("panics", |_ctx: OrchestrationContext, _: ()| async move {
                if true {
                    panic!("orchestrator exploded");
                }
                Ok::<(), OrchestrationError>(())
            })
            .build()
            .unwrap();
        let h = start(reg, cache);
        let id = h
            .client
            .start_by_name("calls_boom", None, StartOptions::default())
            .await
            .unwrap();
        let msg: String = h.client.wait_for_output(&id, WAIT).await.unwrap();
        assert!(msg.contains("activity exploded"), "{msg}");
        let id = h
            .client
            .start_by_name("panics", None, StartOptions::default())
            .await
            .unwrap();
        let st = h.client.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(st.status, RuntimeStatus::Failed);
        let f = st.failure.unwrap();
        assert_eq!(f.error_type, "Panic");
        assert!(f.message.contains("orchestrator exploded"));
        // The worker is still alive.
        let id = h
            .client
            .start_by_name("calls_boom", None, StartOptions::default())
            .await
            .unwrap();
        let _: String = h.client.wait_for_output(&id, WAIT).await.unwrap();
        h.runtime.shutdown().await;
    })
    .await;
}

fn racing_registry() -> Registry {
    Registry::builder()
        .activity("slow", |_ctx, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, ActivityError>(ms)
        })
        .orchestrator("racer", |ctx: OrchestrationContext, _: ()| async move {
            let calls = vec![
                ctx.call_activity_by_name::<u64>("slow", &300u64),
                ctx.call_activity_by_name::<u64>("slow", &10u64),
                ctx.call_activity_by_name::<u64>("slow", &150u64),
            ];
            let (winner, value) = ctx.when_any(calls).await;
            let value = value?;
            // More episodes after the race, so it is replayed several times.
            let timer = ctx.create_timer(Duration::from_millis(20));
            let event = ctx.wait_for_external_event::<String>("never");
            let second = match race(event, timer).await {
                Either::Left(_) => "event",
                Either::Right(()) => "timer",
            };
            for i in 0..3u64 {
                let _: u64 = ctx.call_activity_by_name("slow", &i).await?;
            }
            Ok::<_, OrchestrationError>(format!("{winner}:{value}:{second}"))
        })
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_any_picks_the_same_winner_on_replay() {
    for_both_cache_modes(|cache| async move {
        let h = start(racing_registry(), cache);
        let id = h
            .client
            .start_by_name("racer", None, StartOptions::default())
            .await
            .unwrap();
        let out: String = h.client.wait_for_output(&id, WAIT).await.unwrap();
        assert_eq!(out, "1:10:timer");
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_on_and_off_give_identical_histories() {
    let reg = || {
        Registry::builder()
            .activity("echo", |_ctx, s: String| async move {
                Ok::<_, ActivityError>(s)
            })
            .orchestrator("mixed", |ctx: OrchestrationContext, _: ()| async move {
                let a: String = ctx.call_activity_by_name("echo", &"one").await?;
                ctx.create_timer(Duration::from_millis(20)).await;
                let calls: Vec<_> = (0..5)
                    .map(|i| ctx.call_activity_by_name::<String>("echo", &format!("f{i}")))
                    .collect();
                let fan: Vec<String> = ctx
                    .when_all(calls)
                    .await
                    .into_iter()
                    .collect::<Result<_, _>>()?;
                let e: String = ctx.wait_for_external_event("e").await?;
                Ok::<_, OrchestrationError>(format!("{a}|{}|{e}|{}", fan.join(","), ctx.new_guid()))
            })
            .build()
            .unwrap()
    };
    let mut shapes = Vec::new();
    for cache in [1000, 0] {
        let h = start(reg(), cache);
        let id = h.client.start_with_id("mixed", "same-id").await;
        // Raise the event once every activity result is in the history, so both runs
        // record it at the same position.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let history = h.store.read_history(&id).await.unwrap();
            let completed = history
                .iter()
                .filter(|e| matches!(e.kind, EventKind::TaskCompleted { .. }))
                .count();
            if completed == 6 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "activities never completed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        h.client.raise_event(&id, "e", &"E").await.unwrap();
        let out: String = h.client.wait_for_output(&id, WAIT).await.unwrap();
        let history = h.store.read_history(&id).await.unwrap();
        let shape: Vec<String> = history
            .iter()
            .map(|e| match &e.kind {
                EventKind::TaskScheduled { name, input, .. } => {
                    format!("{}#{} {name} {input:?}", e.kind.type_name(), e.seq)
                }
                EventKind::TaskCompleted { seq, result } => {
                    format!("TaskCompleted {seq} {result:?}")
                }
                k => format!("{}#{}", k.type_name(), e.seq),
            })
            .collect();
        let scheduled: Vec<&String> = shape
            .iter()
            .filter(|s| s.starts_with("TaskScheduled"))
            .collect();
        assert_eq!(scheduled.len(), 6);
        shapes.push((
            out.split('|').take(3).collect::<Vec<_>>().join("|"),
            scheduled.into_iter().cloned().collect::<Vec<_>>(),
        ));
        h.runtime.shutdown().await;
    }
    assert_eq!(shapes[0], shapes[1]);
}

trait StartWithId {
    async fn start_with_id(&self, name: &str, id: &str) -> String;
}

impl StartWithId for DurableClient {
    async fn start_with_id(&self, name: &str, id: &str) -> String {
        self.start_by_name(name, None, StartOptions::with_instance_id(id))
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_running_id_is_refused_and_bad_ids_rejected() {
    let h = start(event_registry(), 100);
    let id = h.client.start_with_id("wait_event", "job-1").await;
    let err = h
        .client
        .start_by_name("wait_event", None, StartOptions::with_instance_id("job-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, durable_core::Error::InstanceExists { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("job-1"));
    for bad in ["", "a/b", "x?y", &"z".repeat(300)] {
        let err = h
            .client
            .start_by_name("wait_event", None, StartOptions::with_instance_id(bad))
            .await
            .unwrap_err();
        assert!(
            matches!(err, durable_core::Error::InvalidArgument(_)),
            "{bad}: {err}"
        );
    }
    let err = h
        .client
        .start_by_name("no_such_orchestrator", None, StartOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, durable_core::Error::UnknownName { .. }),
        "{err}"
    );
    let err = h
        .client
        .start_by_name(
            "wait_event",
            Some("{not json".into()),
            StartOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, durable_core::Error::InvalidArgument(_)),
        "{err}"
    );
    // Nothing but the first instance exists.
    let page = h
        .client
        .list_instances(&Default::default(), 100, None)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].instance_id, id);
    h.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_reruns_failed_work_and_restart_purge_list() {
    let failing = Arc::new(AtomicU32::new(1));
    let f2 = failing.clone();
    let reg = Registry::builder()
        .activity(
            "first",
            |_ctx, _: ()| async move { Ok::<_, ActivityError>(1) },
        )
        .activity("fragile", move |_ctx, _: ()| {
            let failing = f2.clone();
            async move {
                if failing.load(Ordering::SeqCst) == 1 {
                    Err(ActivityError::new("downstream unavailable"))
                } else {
                    Ok(2)
                }
            }
        })
        .orchestrator("two_steps", |ctx: OrchestrationContext, _: ()| async move {
            let a: i32 = ctx.call_activity_by_name("first", &()).await?;
            let b: i32 = ctx.call_activity_by_name("fragile", &()).await?;
            Ok::<_, OrchestrationError>(a + b)
        })
        .build()
        .unwrap();
    let h = start(reg, 100);
    let id = h.client.start_with_id("two_steps", "rw").await;
    let st = h.client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(st.status, RuntimeStatus::Failed);
    // Rewind is only for failed instances.
    failing.store(0, Ordering::SeqCst);
    h.client
        .rewind(&id, Some("fixed downstream"))
        .await
        .unwrap();
    let mut out = None;
    for _ in 0..500 {
        let s = h.client.get_state(&id).await.unwrap().unwrap();
        if s.status == RuntimeStatus::Completed {
            out = s.output;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(out.as_deref(), Some("3"));
    let kinds = history_kinds(&h.store, &id).await;
    assert!(kinds.contains(&"ExecutionRewound".to_string()));
    assert!(!kinds.contains(&"TaskFailed".to_string()));
    let err = h.client.rewind(&id, None).await.unwrap_err();
    assert!(matches!(err, durable_core::Error::InvalidStatus { .. }));

    // Restart under a new id and under the same id.
    let new_id = h.client.restart(&id, true).await.unwrap();
    assert_ne!(new_id, id);
    let v: i32 = h.client.wait_for_output(&new_id, WAIT).await.unwrap();
    assert_eq!(v, 3);
    let same = h.client.restart(&id, false).await.unwrap();
    assert_eq!(same, id);
    let v: i32 = h.client.wait_for_output(&id, WAIT).await.unwrap();
    assert_eq!(v, 3);

    // List with a prefix filter and paging.
    let filter = durable_core::InstanceFilter {
        instance_id_prefix: Some("rw".into()),
        ..Default::default()
    };
    let page = h.client.list_instances(&filter, 10, None).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let all = h
        .client
        .list_instances(&Default::default(), 1, None)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 1);
    let next = h
        .client
        .list_instances(&Default::default(), 1, all.continuation_token.as_deref())
        .await
        .unwrap();
    assert_eq!(next.items.len(), 1);
    assert_ne!(next.items[0].instance_id, all.items[0].instance_id);
    assert!(next.continuation_token.is_none());

    // Purge one, then by filter.
    assert!(h.client.purge(&id).await.unwrap());
    assert!(!h.client.purge(&id).await.unwrap());
    assert!(h.client.get_state(&id).await.unwrap().is_none());
    let n = h
        .client
        .purge_instances(&durable_core::InstanceFilter {
            statuses: vec![RuntimeStatus::Completed],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    h.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_guid_and_replay_safe_time() {
    let reg = Registry::builder()
        .orchestrator("ids", |ctx: OrchestrationContext, _: ()| async move {
            let g1 = ctx.new_guid();
            let t1 = ctx.current_utc_datetime();
            ctx.create_timer(Duration::from_millis(10)).await;
            let g2 = ctx.new_guid();
            ctx.set_custom_status(&(g1.to_string(), t1));
            let _: () = ctx.wait_for_external_event("go").await?;
            // After more replays, the first values are recomputed identically.
            Ok::<_, OrchestrationError>((g1.to_string(), g2.to_string(), t1))
        })
        .build()
        .unwrap();
    let h = start(reg, 0);
    let id = h.client.start_with_id("ids", "guid").await;
    let early = state_when(&h.client, &id, |st| st.custom_status.is_some()).await;
    let early = early.custom_status.unwrap();
    h.client.raise_event(&id, "go", &()).await.unwrap();
    let (g1, g2, t1): (String, String, chrono::DateTime<chrono::Utc>) =
        h.client.wait_for_output(&id, WAIT).await.unwrap();
    assert_ne!(g1, g2);
    let early: (String, chrono::DateTime<chrono::Utc>) = serde_json::from_str(&early).unwrap();
    assert_eq!(early, (g1, t1));
    h.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_event_reaches_another_instance() {
    let reg = Registry::builder()
        .orchestrator("receiver", |ctx: OrchestrationContext, _: ()| async move {
            let v: String = ctx.wait_for_external_event("ping").await?;
            Ok::<_, OrchestrationError>(v)
        })
        .orchestrator(
            "sender",
            |ctx: OrchestrationContext, target: String| async move {
                ctx.send_event(&target, "ping", &"from sender");
                Ok::<_, OrchestrationError>(())
            },
        )
        .build()
        .unwrap();
    let h = start(reg, 100);
    let rx = h.client.start_with_id("receiver", "rx").await;
    let tx = h
        .client
        .start_by_name("sender", Some("\"rx\"".into()), StartOptions::default())
        .await
        .unwrap();
    h.client.wait_for_completion(&tx, WAIT).await.unwrap();
    let out: String = h.client.wait_for_output(&rx, WAIT).await.unwrap();
    assert_eq!(out, "from sender");
    assert!(history_kinds(&h.store, &tx)
        .await
        .contains(&"EventSent".to_string()));
    h.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_safe_logging_runs_once_per_step() {
    for_both_cache_modes(|cache| async move {
        let lines = Arc::new(AtomicU32::new(0));
        let l2 = lines.clone();
        let reg = Registry::builder()
            .activity(
                "noop",
                |_ctx, _: ()| async move { Ok::<_, ActivityError>(()) },
            )
            .orchestrator("chatty", move |ctx: OrchestrationContext, _: ()| {
                let lines = l2.clone();
                async move {
                    for _ in 0..5 {
                        durable_core::replay_safe!(ctx, lines.fetch_add(1, Ordering::SeqCst));
                        let _: () = ctx.call_activity_by_name("noop", &()).await?;
                    }
                    Ok::<_, OrchestrationError>(())
                }
            })
            .build()
            .unwrap();
        let h = start(reg, cache);
        let id = h
            .client
            .start_by_name("chatty", None, StartOptions::default())
            .await
            .unwrap();
        h.client.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(lines.load(Ordering::SeqCst), 5, "cache {cache}");
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_start_waits_and_early_events_are_kept() {
    let h = start(event_registry(), 100);
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(1000);
    let id = h
        .client
        .start_by_name(
            "wait_event",
            None,
            StartOptions {
                start_at: Some(at),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    h.client.raise_event(&id, "go", &"early").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = h.client.get_state(&id).await.unwrap().unwrap().status;
    // Read before the start time, the instance must still be waiting for it.
    if chrono::Utc::now() < at {
        assert_eq!(status, RuntimeStatus::Pending);
    }
    let out: String = h.client.wait_for_output(&id, WAIT).await.unwrap();
    assert_eq!(out, "early");
    assert!(chrono::Utc::now() >= at);
    h.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_http_polls_202_locations_on_durable_timers() {
    use durable_core::{DurableHttpRequest, DurableHttpResponse};
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let reg = Registry::builder()
        // Stands in for the real HTTP activity: a job that answers 202 twice, then 200 (the
        // real activity hands back `Location` resolved against the request URL).
        .activity(
            durable_core::http::HTTP_ACTIVITY,
            move |_ctx, req: DurableHttpRequest| {
                let seen = s2.clone();
                async move {
                    let mut seen = seen.lock().unwrap();
                    seen.push((
                        req.method.clone(),
                        req.url.clone(),
                        req.headers.contains_key("x-functions-key"),
                    ));
                    let polls = seen.len();
                    let mut headers = std::collections::BTreeMap::new();
                    let status = if polls < 3 {
                        headers
                            .insert("location".to_string(), "http://svc:8080/jobs/1".to_string());
                        headers.insert("retry-after".to_string(), "0".to_string());
                        202
                    } else {
                        200
                    };
                    Ok::<_, ActivityError>(DurableHttpResponse {
                        status,
                        headers,
                        body: format!("poll {polls}"),
                    })
                }
            },
        )
        .orchestrator("http_job", |ctx: OrchestrationContext, _: ()| async move {
            let resp = ctx
                .call_http(
                    DurableHttpRequest::post_json("http://svc:8080/jobs", &1)
                        .header("x-functions-key", "k"),
                )
                .await?;
            let raw = ctx
                .call_http(
                    DurableHttpRequest::get("http://svc:8080/jobs").asynchronous_pattern(false),
                )
                .await?;
            let bad = ctx.call_http(DurableHttpRequest::get("ftp://nope")).await;
            Ok::<_, OrchestrationError>((resp.status, resp.body, raw.status, bad.is_err()))
        })
        .build()
        .unwrap();
    let h = start(reg, 0);
    let id = h
        .client
        .start_by_name("http_job", None, StartOptions::default())
        .await
        .unwrap();
    let out: (u16, String, u16, bool) = h.client.wait_for_output(&id, WAIT).await.unwrap();
    assert_eq!(out, (200, "poll 3".to_string(), 200, true));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[0],
        ("POST".to_string(), "http://svc:8080/jobs".to_string(), true)
    );
    assert_eq!(
        seen[1],
        (
            "GET".to_string(),
            "http://svc:8080/jobs/1".to_string(),
            false
        )
    );
    assert_eq!(seen[2].1, "http://svc:8080/jobs/1");
    let kinds = history_kinds(&h.store, &id).await;
    assert_eq!(kinds.iter().filter(|k| *k == "TimerCreated").count(), 2);
    h.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_patterns_run_on_sqlite_and_survive_a_restart() {
    use durable_core::store::sqlite::SqliteStore;
    let dir = std::env::temp_dir().join(format!("durable-engine-sqlite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("e.db");
    let reg = || {
        let base = hello_registry();
        base.orchestrator("fan", |ctx: OrchestrationContext, n: u64| async move {
            let calls: Vec<_> = (0..n)
                .map(|i| ctx.call_activity_by_name::<String>("say_hello", &i.to_string()))
                .collect();
            Ok::<_, OrchestrationError>(
                ctx.when_all(calls)
                    .await
                    .into_iter()
                    .filter(|r| r.is_ok())
                    .count(),
            )
        })
        .orchestrator(
            "wait_event",
            |ctx: OrchestrationContext, _: ()| async move {
                ctx.create_timer(Duration::from_millis(50)).await;
                let v: String = ctx.wait_for_external_event("go").await?;
                Ok::<_, OrchestrationError>(v)
            },
        )
        .build()
        .unwrap()
    };
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let rt = Worker::builder(store).registry(reg()).start().unwrap();
    let client = rt.client();
    let chain = client
        .start_by_name(
            "hello_cities",
            Some(r#"["A","B"]"#.into()),
            StartOptions::default(),
        )
        .await
        .unwrap();
    let fan = client
        .start_by_name("fan", Some("200".into()), StartOptions::default())
        .await
        .unwrap();
    let waiting = client
        .start_by_name(
            "wait_event",
            None,
            StartOptions::with_instance_id("waiting"),
        )
        .await
        .unwrap();
    let out: Vec<String> = client.wait_for_output(&chain, WAIT).await.unwrap();
    assert_eq!(out, ["Hello A!", "Hello B!"]);
    let n: usize = client.wait_for_output(&fan, WAIT).await.unwrap();
    assert_eq!(n, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    rt.shutdown().await;
    // The last reference closes the store (one store per file at a time).
    drop(client);

    // A new process on the same file picks up where the last one stopped.
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let rt = Worker::builder(store).registry(reg()).start().unwrap();
    let client = rt.client();
    client
        .raise_event(&waiting, "go", &"after restart")
        .await
        .unwrap();
    let v: String = client.wait_for_output(&waiting, WAIT).await.unwrap();
    assert_eq!(v, "after restart");
    rt.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn duplicate_durable_names_are_an_error_naming_both() {
    let err = Registry::builder()
        .activity(
            "twice",
            |_ctx, _: ()| async move { Ok::<_, ActivityError>(()) },
        )
        .activity(
            "twice",
            |_ctx, _: ()| async move { Ok::<_, ActivityError>(()) },
        )
        .orchestrator("o", |_ctx: OrchestrationContext, _: ()| async move {
            Ok::<_, OrchestrationError>(())
        })
        .orchestrator("o", |_ctx: OrchestrationContext, _: ()| async move {
            Ok::<_, OrchestrationError>(())
        })
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("activity 'twice' is defined twice"), "{err}");
    assert!(err.contains("orchestrator 'o' is defined twice"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_that_never_completes_becomes_poison() {
    static STARTED: AtomicU32 = AtomicU32::new(0);
    let reg = || {
        Registry::builder()
            .activity("fragile", |_ctx, _: ()| async move {
                STARTED.fetch_add(1, Ordering::SeqCst);
                // Never finishes: each worker holding it stops before it completes.
                std::future::pending::<Result<(), ActivityError>>().await
            })
            .orchestrator("poisoned", |ctx: OrchestrationContext, _: ()| async move {
                ctx.call_activity_by_name::<()>("fragile", &()).await?;
                Ok::<_, OrchestrationError>(())
            })
            .build()
            .unwrap()
    };
    let options = durable_core::WorkerOptions {
        max_activity_dequeues: 2,
        shutdown_grace: Duration::ZERO,
        ..Default::default()
    };
    let store = Arc::new(MemoryStore::new());
    let run = || {
        Worker::builder(store.clone())
            .registry(reg())
            .options(options.clone())
            .start()
            .unwrap()
    };
    let mut rt = run();
    let id = rt
        .client()
        .start_by_name("poisoned", None, StartOptions::default())
        .await
        .unwrap();
    // Two workers in turn take the activity and stop before it completes.
    for started in 1..=2 {
        let deadline = tokio::time::Instant::now() + WAIT;
        while STARTED.load(Ordering::SeqCst) < started {
            assert!(
                tokio::time::Instant::now() < deadline,
                "activity never started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rt.shutdown().await;
        rt = run();
    }
    // The third hand-out is over the limit: the task fails without running again.
    let st = rt.client().wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(st.status, RuntimeStatus::Failed);
    let failure = st.failure.unwrap().to_string();
    assert!(
        failure.contains("'fragile' was handed to a worker 3 times"),
        "{failure}"
    );
    assert_eq!(STARTED.load(Ordering::SeqCst), 2);
    rt.shutdown().await;
}

/// An orchestration whose work item keeps going to workers that die before committing
/// (simulated: taken by a worker id that never commits, then released as a restart
/// would) fails with `Poison` once over `max_orchestration_dequeues`, without running its
/// code again; under the limit it runs as usual, and the count starts over at each commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestration_that_keeps_crashing_its_worker_is_poison() {
    use durable_core::store::WorkerId;
    static RAN: AtomicU32 = AtomicU32::new(0);
    let reg = || {
        hello_registry()
            .orchestrator("counted", |ctx: OrchestrationContext, _: ()| async move {
                if !ctx.is_replaying() {
                    RAN.fetch_add(1, Ordering::SeqCst);
                }
                let s: String = ctx.call_activity_by_name("say_hello", &"x").await?;
                Ok::<_, OrchestrationError>(s)
            })
            .build()
            .unwrap()
    };
    let dead = WorkerId::new("crashing-worker");
    for (max, poisoned) in [(3u32, true), (4, false)] {
        RAN.store(0, Ordering::SeqCst);
        let store = Arc::new(MemoryStore::new());
        let client = DurableClient::with_registry(store.clone(), Arc::new(reg()));
        let id = client
            .start_by_name("counted", None, StartOptions::default())
            .await
            .unwrap();
        for n in 1..=3 {
            let item = store
                .fetch_orchestration_work(&dead, Duration::from_secs(60), 1, WAIT)
                .await
                .unwrap()
                .pop()
                .expect("the instance's work item");
            assert_eq!(item.dequeue_count, n);
            assert_eq!(store.release_leases(&dead).await.unwrap(), 1);
        }
        let rt = Worker::builder(store.clone())
            .registry(reg())
            .options(durable_core::WorkerOptions {
                max_orchestration_dequeues: max,
                ..Default::default()
            })
            .start()
            .unwrap();
        let st = client.wait_for_completion(&id, WAIT).await.unwrap();
        if poisoned {
            assert_eq!(st.status, RuntimeStatus::Failed, "max {max}");
            let failure = st.failure.unwrap();
            assert_eq!(failure.error_type, "Poison");
            assert!(
                failure
                    .message
                    .contains("'counted' was handed to a worker 4 times"),
                "{failure}"
            );
            assert_eq!(RAN.load(Ordering::SeqCst), 0, "its code never ran");
        } else {
            // The fourth hand-out is within the limit; the episodes after it commit, so
            // the count starts over and the later steps are never near the limit.
            assert_eq!(st.status, RuntimeStatus::Completed, "max {max}: {st:?}");
            assert_eq!(st.output.as_deref(), Some("\"Hello x!\""));
        }
        rt.shutdown().await;
    }
}

fn parent_close_registry() -> Registry {
    use durable_core::SubOrchestrationOptions;
    Registry::builder()
        .orchestrator("quick", |_ctx: OrchestrationContext, n: i64| async move {
            Ok::<_, OrchestrationError>(n)
        })
        // Waits for "go"; with `nest`, starts a waiter of its own and waits for it instead.
        .orchestrator(
            "waiter",
            |ctx: OrchestrationContext, nest: bool| async move {
                let v: i64 = if nest {
                    ctx.call_sub_orchestrator_by_name("waiter", None, &false)
                        .await?
                } else {
                    ctx.wait_for_external_event("go").await?
                };
                Ok::<_, OrchestrationError>(v)
            },
        )
        .orchestrator("parent", |ctx: OrchestrationContext, _: ()| async move {
            let id = ctx.instance_id().to_string();
            let with_id = |suffix: &str| SubOrchestrationOptions {
                instance_id: Some(format!("{id}-{suffix}")),
                ..Default::default()
            };
            let done: i64 = ctx
                .call_sub_orchestrator_by_name_with_options("quick", &1, &with_id("done"))
                .await?;
            let kept = SubOrchestrationOptions {
                instance_id: Some(format!("{id}-kept")),
                ..SubOrchestrationOptions::abandon_on_parent_close()
            };
            let waits = vec![
                ctx.call_sub_orchestrator_by_name_with_options::<i64>(
                    "waiter",
                    &true,
                    &with_id("child"),
                ),
                ctx.call_sub_orchestrator_by_name_with_options::<i64>("waiter", &false, &kept),
            ];
            let mut sum = done;
            for r in ctx.when_all(waits).await {
                sum += r?;
            }
            Ok::<_, OrchestrationError>(sum)
        })
        .build()
        .unwrap()
}

/// Parent-close policy: terminating a parent terminates its unfinished children and their
/// children, not those started with `ParentClosePolicy::Abandon` (which run on) and not
/// those already finished; purging it purges the same tree and leaves the abandoned child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_or_purging_a_parent_closes_its_children_unless_abandoned() {
    for cache in [1000, 0] {
        let h = start(parent_close_registry(), cache);
        let c = &h.client;
        let p = c
            .start_by_name("parent", None, StartOptions::default())
            .await
            .unwrap();
        let (child, grandchild, kept, done) = (
            format!("{p}-child"),
            format!("{p}-child:0000"),
            format!("{p}-kept"),
            format!("{p}-done"),
        );
        for id in [&child, &grandchild, &kept] {
            state_when(c, id, |s| s.status == RuntimeStatus::Running).await;
        }
        assert_eq!(
            c.get_state(&done).await.unwrap().unwrap().status,
            RuntimeStatus::Completed
        );
        c.terminate(&p, Some("enough")).await.unwrap();
        let st = state_when(c, &grandchild, |s| s.status.is_terminal()).await;
        assert_eq!(st.status, RuntimeStatus::Terminated);
        let st = c.get_state(&child).await.unwrap().unwrap();
        assert_eq!(st.status, RuntimeStatus::Terminated);
        assert!(
            st.output.as_deref().is_some_and(
                |o| o.contains(&format!("parent instance '{p}' was terminated: enough"))
            ),
            "{:?}",
            st.output
        );
        assert_eq!(
            c.get_state(&p).await.unwrap().unwrap().status,
            RuntimeStatus::Terminated
        );
        assert_eq!(
            c.get_state(&done).await.unwrap().unwrap().status,
            RuntimeStatus::Completed,
            "a finished child is left as it was"
        );
        // The abandoned child still runs: it takes its event and completes.
        assert_eq!(
            c.get_state(&kept).await.unwrap().unwrap().status,
            RuntimeStatus::Running
        );
        c.raise_event(&kept, "go", &5i64).await.unwrap();
        let st = c.wait_for_completion(&kept, WAIT).await.unwrap();
        assert_eq!(st.status, RuntimeStatus::Completed);

        assert!(c.purge(&p).await.unwrap());
        for id in [&p, &child, &grandchild, &done] {
            assert!(
                c.get_state(id).await.unwrap().is_none(),
                "{id} is purged with its parent"
            );
        }
        assert!(
            c.get_state(&kept).await.unwrap().is_some(),
            "the abandoned child stays"
        );
        h.runtime.shutdown().await;
    }
}

/// Purging a parent leaves an instance that took a child's id since (another parent's or
/// none), and refuses a parent that is still running, changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_parent_leaves_reused_child_ids_and_refuses_running_parents() {
    let h = start(parent_close_registry(), 1000);
    let c = &h.client;
    let p = c
        .start_by_name("parent", None, StartOptions::default())
        .await
        .unwrap();
    let child = format!("{p}-child");
    state_when(c, &child, |s| s.status == RuntimeStatus::Running).await;
    assert!(c.purge(&p).await.is_err(), "a running parent is refused");
    assert!(c.get_state(&child).await.unwrap().is_some());
    c.terminate(&p, None).await.unwrap();
    state_when(c, &child, |s| s.status.is_terminal()).await;
    // The finished child's id is taken by a new, unrelated instance.
    c.start_by_name(
        "quick",
        Some("7".into()),
        StartOptions::with_instance_id(&child),
    )
    .await
    .unwrap();
    state_when(c, &child, |s| s.status == RuntimeStatus::Completed).await;
    state_when(c, &p, |s| s.status.is_terminal()).await;
    assert!(c.purge(&p).await.unwrap());
    assert!(c.get_state(&p).await.unwrap().is_none());
    let st = c
        .get_state(&child)
        .await
        .unwrap()
        .expect("not the parent's child any more");
    assert_eq!(st.output.as_deref(), Some("7"));
    h.runtime.shutdown().await;
}

/// An activity learns through `ActivityContext::cancelled` that its result is no longer
/// wanted once its instance is terminated, and stops early; one whose instance still
/// waits is not told, and runs to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_learns_its_result_is_no_longer_wanted() {
    static RUNNING: AtomicU32 = AtomicU32::new(0);
    static STOPPED_EARLY: AtomicU32 = AtomicU32::new(0);
    let reg = Registry::builder()
        // Works for up to `ms` milliseconds, stopping early when told.
        .activity(
            "long",
            |ctx: durable_core::ActivityContext, ms: u64| async move {
                RUNNING.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    _ = ctx.cancelled() => {
                        assert!(ctx.is_cancelled());
                        STOPPED_EARLY.fetch_add(1, Ordering::SeqCst);
                        Err(ActivityError::from("stopped: result no longer wanted"))
                    }
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(ctx.is_cancelled()),
                }
            },
        )
        .orchestrator(
            "calls_long",
            |ctx: OrchestrationContext, ms: u64| async move {
                let cancelled: bool = ctx.call_activity_by_name("long", &ms).await?;
                Ok::<_, OrchestrationError>(cancelled)
            },
        )
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let rt = Worker::builder(store.clone())
        .registry(reg)
        .options(durable_core::WorkerOptions {
            activity_cancel_poll: Duration::from_millis(20),
            shutdown_grace: Duration::ZERO,
            ..Default::default()
        })
        .start()
        .unwrap();
    let c = rt.client();
    // Still wanted: runs to the end, never told otherwise.
    let id = c
        .start_by_name("calls_long", Some("200".into()), StartOptions::default())
        .await
        .unwrap();
    let st = c.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(st.status, RuntimeStatus::Completed);
    assert_eq!(st.output.as_deref(), Some("false"));
    assert_eq!(STOPPED_EARLY.load(Ordering::SeqCst), 0);
    // Terminated while its activity runs (for up to ten minutes): the activity stops.
    let id = c
        .start_by_name("calls_long", Some("600000".into()), StartOptions::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while RUNNING.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "activity never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.terminate(&id, Some("not needed")).await.unwrap();
    while STOPPED_EARLY.load(Ordering::SeqCst) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the activity was never told"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        c.get_state(&id).await.unwrap().unwrap().status,
        RuntimeStatus::Terminated
    );
    rt.shutdown().await;
}

/// Outside a worker nothing cancels: `cancelled` never resolves.
#[tokio::test]
async fn a_test_context_is_never_cancelled() {
    let ctx = durable_core::ActivityContext::for_test("x");
    assert!(!ctx.is_cancelled());
    let r = tokio::time::timeout(Duration::from_millis(20), ctx.cancelled()).await;
    assert!(r.is_err());
}

/// A worker that loses a running activity's lease (here: released under it, as when it
/// lapsed and another worker took it) tells the activity at its next renewal, even with
/// the instance check off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_whose_lease_is_lost_is_told() {
    static STARTED: AtomicU32 = AtomicU32::new(0);
    static TOLD: AtomicU32 = AtomicU32::new(0);
    let reg = Registry::builder()
        .activity(
            "waits",
            |ctx: durable_core::ActivityContext, _: ()| async move {
                if STARTED.fetch_add(1, Ordering::SeqCst) == 0 {
                    ctx.cancelled().await;
                    TOLD.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, ActivityError>(ctx.dequeue_count())
            },
        )
        .orchestrator(
            "calls_waits",
            |ctx: OrchestrationContext, _: ()| async move {
                let n: u32 = ctx.call_activity_by_name("waits", &()).await?;
                Ok::<_, OrchestrationError>(n)
            },
        )
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let rt = Worker::builder(store.clone())
        .registry(reg)
        .options(durable_core::WorkerOptions {
            activity_cancel_poll: Duration::ZERO,
            activity_lease: Duration::from_millis(300),
            shutdown_grace: Duration::ZERO,
            ..Default::default()
        })
        .start()
        .unwrap();
    let c = rt.client();
    let id = c
        .start_by_name("calls_waits", None, StartOptions::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while STARTED.load(Ordering::SeqCst) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "activity never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(store.release_leases(rt.id()).await.unwrap() >= 1);
    // The released activity runs again (dequeue 2) and completes the instance; the first
    // run is told at its next renewal.
    let st = c.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(st.status, RuntimeStatus::Completed, "{st:?}");
    assert_eq!(st.output.as_deref(), Some("2"));
    while TOLD.load(Ordering::SeqCst) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first run was never told"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rt.shutdown().await;
}

/// The instances whose first `hangs_once` attempt has started (its deadline is set).
fn hung_started() -> &'static std::sync::Mutex<std::collections::HashSet<String>> {
    static STARTED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    STARTED.get_or_init(Default::default)
}

fn timeout_registry() -> Registry {
    use durable_core::ActivityOptions;
    Registry::builder()
        // Never finishes on its first attempt; answers at once on later ones.
        .activity(
            "hangs_once",
            |ctx: durable_core::ActivityContext, _: ()| async move {
                if ctx.attempt() == 1 {
                    hung_started()
                        .lock()
                        .unwrap()
                        .insert(ctx.instance_id().to_string());
                    std::future::pending::<()>().await;
                }
                Ok::<_, ActivityError>(ctx.attempt())
            },
        )
        .orchestrator(
            "bounded",
            |ctx: OrchestrationContext, (ms, attempts): (u64, u32)| async move {
                let mut options = ActivityOptions::start_to_close(Duration::from_millis(ms));
                if attempts > 1 {
                    options =
                        options.with_retry(RetryPolicy::new(attempts, Duration::from_millis(10)));
                }
                match ctx
                    .call_activity_by_name_with_options::<u32>("hangs_once", &(), &options)
                    .await
                {
                    Ok(attempt) => {
                        Ok::<_, OrchestrationError>(format!("done on attempt {attempt}"))
                    }
                    Err(e) if e.is_timeout() => Ok(format!("timed out: {}", e.failure.message)),
                    Err(e) => Err(e.into()),
                }
            },
        )
        // The whole call within `total` ms, attempts of `attempt` ms (0: unbounded), retried.
        .orchestrator(
            "bounded_total",
            |ctx: OrchestrationContext, (total, attempt): (u64, u64)| async move {
                let mut options = ActivityOptions::default()
                    .with_schedule_to_close(Duration::from_millis(total))
                    .with_retry(RetryPolicy::new(3, Duration::from_millis(10)));
                if attempt > 0 {
                    options.start_to_close = Some(Duration::from_millis(attempt));
                }
                match ctx
                    .call_activity_by_name_with_options::<u32>("hangs_once", &(), &options)
                    .await
                {
                    Ok(attempt) => {
                        Ok::<_, OrchestrationError>(format!("done on attempt {attempt}"))
                    }
                    Err(e) if e.is_timeout() => Ok(format!("timed out: {}", e.failure.message)),
                    Err(e) => Err(e.into()),
                }
            },
        )
        .build()
        .unwrap()
}

/// A schedule-to-close timeout bounds the whole call with a durable timer: it fails the
/// call when the store's clock passes it, and does not when the call finishes in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_to_close_timeout_bounds_the_whole_call() {
    let clock = Arc::new(durable_core::store::ManualClock::new(chrono::Utc::now()));
    let store = Arc::new(MemoryStore::with_clock(clock.clone()));
    let rt = Worker::builder(store.clone())
        .registry(timeout_registry())
        .options(durable_core::WorkerOptions {
            // The hung attempt is still running at the end: shutdown does not wait for it.
            shutdown_grace: Duration::ZERO,
            ..Default::default()
        })
        .start()
        .unwrap();
    let c = rt.client();
    let id = c
        .start_by_name(
            "bounded_total",
            Some("[5000,0]".into()),
            StartOptions::default(),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let h = store.read_history(&id).await.unwrap();
        if h.iter()
            .any(|e| matches!(e.kind, EventKind::TimerCreated { .. }))
            && h.iter()
                .any(|e| matches!(e.kind, EventKind::TaskScheduled { .. }))
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never scheduled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    clock.advance(Duration::from_secs(6));
    let st = c.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(st.status, RuntimeStatus::Completed, "{st:?}");
    let out = st.output.unwrap();
    assert!(
        out.contains(
            "timed out: activity 'hangs_once' did not finish within 5s of being scheduled"
        ),
        "{out}"
    );
    rt.shutdown().await;

    // In time: the first attempt times out after 200 ms, the second answers.
    let h = start(timeout_registry(), 1000);
    let id = h
        .client
        .start_by_name(
            "bounded_total",
            Some("[600000,200]".into()),
            StartOptions::default(),
        )
        .await
        .unwrap();
    let st = h.client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(
        st.output.as_deref(),
        Some("\"done on attempt 2\""),
        "{st:?}"
    );
    h.runtime.shutdown().await;
}

/// A start-to-close timeout is measured on the store's clock: a hung activity is stopped
/// when the clock passes it (not before), and the orchestration sees a typed timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_activity_times_out_on_the_store_clock() {
    let clock = Arc::new(durable_core::store::ManualClock::new(chrono::Utc::now()));
    let store = Arc::new(MemoryStore::with_clock(clock.clone()));
    let rt = Worker::builder(store.clone())
        .registry(timeout_registry())
        .start()
        .unwrap();
    let c = rt.client();
    // Ten seconds on the store's clock, which stands still until moved.
    let id = c
        .start_by_name("bounded", Some("[10000,1]".into()), StartOptions::default())
        .await
        .unwrap();
    // The clock moves only once the attempt runs, so its deadline counts from now.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !hung_started().lock().unwrap().contains(&id) {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nine seconds: not yet (the instance is still running after several deadline checks).
    clock.advance(Duration::from_secs(9));
    let early = c.wait_for_completion(&id, Duration::from_millis(300)).await;
    assert!(
        matches!(early, Err(durable_core::Error::Timeout(_))),
        "{early:?}"
    );
    clock.advance(Duration::from_secs(2));
    let st = c.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(st.status, RuntimeStatus::Completed, "{st:?}");
    let out = st.output.unwrap();
    assert!(
        out.contains("timed out: activity 'hangs_once' did not finish within 10s of starting"),
        "{out}"
    );
    rt.shutdown().await;
}

/// A timed-out attempt is retried by the call's retry policy; the next attempt succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_attempt_is_retried() {
    let h = start(timeout_registry(), 1000);
    let id = h
        .client
        .start_by_name("bounded", Some("[200,3]".into()), StartOptions::default())
        .await
        .unwrap();
    let st = h.client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(st.status, RuntimeStatus::Completed, "{st:?}");
    assert_eq!(st.output.as_deref(), Some("\"done on attempt 2\""));
    let failed: Vec<_> = h
        .store
        .read_history(&id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::TaskFailed { failure, .. } => Some(failure.error_type),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec!["Timeout".to_string()]);
    h.runtime.shutdown().await;
}

fn heartbeat_registry() -> Registry {
    use durable_core::ActivityOptions;
    Registry::builder()
        // Beats `{"done": n}` for n = 1..=steps, 20 ms apart, then finishes, or (with
        // `stall`, on its first attempt) goes quiet forever. A later attempt starts from
        // what the last one reported.
        .activity(
            "beats",
            |ctx: durable_core::ActivityContext, (steps, stall): (u32, bool)| async move {
                let from = ctx
                    .last_heartbeat_details::<serde_json::Value>()
                    .and_then(|v| v["done"].as_u64())
                    .unwrap_or(0) as u32;
                for n in from + 1..=steps {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    ctx.heartbeat(&serde_json::json!({ "done": n }));
                }
                if stall && ctx.attempt() == 1 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, ActivityError>(format!("attempt {} from {from}", ctx.attempt()))
            },
        )
        .orchestrator(
            "beating",
            |ctx: OrchestrationContext, (steps, stall, attempts): (u32, bool, u32)| async move {
                let mut options =
                    ActivityOptions::default().with_heartbeat_timeout(Duration::from_millis(300));
                if attempts > 1 {
                    options =
                        options.with_retry(RetryPolicy::new(attempts, Duration::from_millis(10)));
                }
                match ctx
                    .call_activity_by_name_with_options::<String>(
                        "beats",
                        &(steps, stall),
                        &options,
                    )
                    .await
                {
                    Ok(s) => Ok::<_, OrchestrationError>(s),
                    Err(e) if e.is_timeout() => Ok(format!(
                        "{} | {}",
                        e.failure.message,
                        e.failure.details.unwrap_or_default()
                    )),
                    Err(e) => Err(e.into()),
                }
            },
        )
        .build()
        .unwrap()
}

/// Heartbeats: an activity that keeps beating runs past its heartbeat timeout; one that
/// goes quiet is stopped with a `Timeout` carrying its last details, and the call's next
/// attempt resumes from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_activity_alive_and_carry_its_progress() {
    let h = start(heartbeat_registry(), 1000);
    let run = |input: &'static str| {
        let c = h.client.clone();
        async move {
            let id = c
                .start_by_name("beating", Some(input.into()), StartOptions::default())
                .await
                .unwrap();
            let st = c.wait_for_completion(&id, WAIT).await.unwrap();
            assert_eq!(st.status, RuntimeStatus::Completed, "{st:?}");
            serde_json::from_str::<String>(&st.output.unwrap()).unwrap()
        }
    };
    // 30 beats, 20 ms apart: about 600 ms, twice the heartbeat timeout.
    assert_eq!(run("[30,false,1]").await, "attempt 1 from 0");
    // Quiet after 3 beats, no retry: the timeout carries the last details.
    let out = run("[3,true,1]").await;
    assert!(
        out.starts_with("activity 'beats' sent no heartbeat for 300ms"),
        "{out}"
    );
    assert!(out.ends_with(r#"| {"done":3}"#), "{out}");
    // With a retry, the second attempt starts from where the first got to.
    assert_eq!(run("[5,true,2]").await, "attempt 2 from 5");
    h.runtime.shutdown().await;
}

/// Heartbeat details reach the store with the lease renewals: the instance's status shows
/// the progress of its running activity, and a run of the same task that starts after its
/// worker went away (here a shutdown whose grace period the activity outlives, which gives
/// its lease back) resumes from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_details_are_stored_shown_and_read_by_the_next_run() {
    let registry = || {
        Registry::builder()
            // The first run reports `{"done": n}` for n = 1..=steps, then hangs; a later
            // run reports where it started from.
            .activity(
                "progress",
                |ctx: durable_core::ActivityContext, steps: u32| async move {
                    let from = ctx
                        .last_heartbeat_details::<serde_json::Value>()
                        .and_then(|v| v["done"].as_u64())
                        .unwrap_or(0);
                    if ctx.dequeue_count() == 1 {
                        for n in 1..=steps {
                            ctx.heartbeat(&serde_json::json!({ "done": n }));
                        }
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, ActivityError>(format!("run {} from {from}", ctx.dequeue_count()))
                },
            )
            .orchestrator(
                "progressing",
                |ctx: OrchestrationContext, steps: u32| async move {
                    Ok::<_, OrchestrationError>(
                        ctx.call_activity_by_name::<String>("progress", &steps)
                            .await?,
                    )
                },
            )
            .build()
            .unwrap()
    };
    let options = durable_core::WorkerOptions {
        activity_lease: Duration::from_millis(300),
        shutdown_grace: Duration::from_millis(50),
        ..Default::default()
    };
    let store = Arc::new(MemoryStore::new());
    let first = Worker::builder(store.clone())
        .registry(registry())
        .options(options.clone())
        .start()
        .unwrap();
    let client = first.client();
    let id = client
        .start_by_name("progressing", Some("3".into()), StartOptions::default())
        .await
        .unwrap();
    let shown = |beats: &[durable_core::store::ActivityHeartbeat]| {
        beats
            .iter()
            .map(|b| format!("{} {} {}", b.name, b.seq, b.details))
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let beats = client.activity_heartbeats(&id).await.unwrap();
        if !beats.is_empty() {
            assert_eq!(shown(&beats), vec!["progress 0 {\"done\":3}"]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the heartbeat never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.shutdown().await;
    assert_eq!(
        shown(&client.activity_heartbeats(&id).await.unwrap()),
        vec!["progress 0 {\"done\":3}"],
        "the details outlive the worker"
    );
    let second = Worker::builder(store.clone())
        .registry(registry())
        .options(options)
        .start()
        .unwrap();
    let st = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(st.status, RuntimeStatus::Completed, "{st:?}");
    assert_eq!(st.output.as_deref(), Some("\"run 2 from 3\""));
    assert!(client.activity_heartbeats(&id).await.unwrap().is_empty());
    second.shutdown().await;
}

/// Waits (up to [`WAIT`]) until `n` reaches `at_least`.
async fn count_reaches(n: &AtomicU32, at_least: u32, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while n.load(Ordering::SeqCst) < at_least {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The losing branch of `when_any` is cancelled: the long activity it dropped learns
/// through `cancelled()` that its result is no longer wanted while the instance still
/// runs (the instance check is off: the episode that dropped it says so), its work item
/// is gone so it never runs again, and the instance goes on. With the cache on and off
/// (the drop happens on a cached execution, or on one replayed from history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_losing_branch_of_when_any_is_cancelled() {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    static TOLD: AtomicU32 = AtomicU32::new(0);
    for_both_cache_modes(|cache| async move {
        RUNS.store(0, Ordering::SeqCst);
        TOLD.store(0, Ordering::SeqCst);
        let reg = Registry::builder()
            .activity(
                "long",
                |ctx: durable_core::ActivityContext, _: ()| async move {
                    RUNS.fetch_add(1, Ordering::SeqCst);
                    tokio::select! {
                        _ = ctx.cancelled() => {
                            TOLD.fetch_add(1, Ordering::SeqCst);
                            Err(ActivityError::from("stopped: no longer wanted"))
                        }
                        _ = tokio::time::sleep(Duration::from_secs(600)) => Ok(1u32),
                    }
                },
            )
            .activity(
                "short",
                |_ctx: durable_core::ActivityContext, _: ()| async move {
                    // Only once the long one runs, so the race has a loser.
                    count_reaches(&RUNS, 1, "the long activity never started").await;
                    Ok::<_, ActivityError>(2u32)
                },
            )
            .orchestrator("first_of", |ctx: OrchestrationContext, _: ()| async move {
                let long = ctx.call_activity_by_name::<u32>("long", &());
                let short = ctx.call_activity_by_name::<u32>("short", &());
                let (i, r) = ctx.when_any(vec![long, short]).await;
                let v = r?;
                let _: String = ctx.wait_for_external_event("finish").await?;
                Ok::<_, OrchestrationError>((i, v))
            })
            .build()
            .unwrap();
        let store = Arc::new(MemoryStore::new());
        let rt = Worker::builder(store.clone())
            .registry(reg)
            .cache_capacity(cache)
            .options(durable_core::WorkerOptions {
                activity_cancel_poll: Duration::ZERO,
                shutdown_grace: Duration::ZERO,
                ..Default::default()
            })
            .start()
            .unwrap();
        let c = rt.client();
        let id = c
            .start_by_name("first_of", None, StartOptions::default())
            .await
            .unwrap();
        count_reaches(&TOLD, 1, "the losing activity was never told").await;
        let st = c.get_state(&id).await.unwrap().unwrap();
        assert_eq!(
            st.status,
            RuntimeStatus::Running,
            "told while still running"
        );
        // Its work item is gone: nothing of it is leased, queued or left to come back.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let pending = store.pending_work().await.unwrap().unwrap();
            if pending.activities == 0
                && rt
                    .metrics()
                    .leases_held(durable_core::metrics::WorkKind::Activity)
                    == 0
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{pending:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(store.release_leases(rt.id()).await.unwrap(), 0);
        c.raise_event(&id, "finish", &"now").await.unwrap();
        let st = c.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(st.status, RuntimeStatus::Completed, "{st:?}");
        assert_eq!(st.output.as_deref(), Some("[1,2]"));
        assert_eq!(RUNS.load(Ordering::SeqCst), 1, "the loser never ran again");
        rt.shutdown().await;
    })
    .await;
}

/// An attempt beaten by its call's schedule-to-close timeout is told (`cancelled()`)
/// while the instance goes on, and is not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_past_its_schedule_to_close_is_told() {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    static TOLD: AtomicU32 = AtomicU32::new(0);
    let reg = Registry::builder()
        .activity(
            "slow",
            |ctx: durable_core::ActivityContext, _: ()| async move {
                RUNS.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    _ = ctx.cancelled() => {
                        TOLD.fetch_add(1, Ordering::SeqCst);
                        Err(ActivityError::from("stopped: no longer wanted"))
                    }
                    _ = tokio::time::sleep(Duration::from_secs(600)) => Ok(1u32),
                }
            },
        )
        .orchestrator("bounded", |ctx: OrchestrationContext, _: ()| async move {
            let options = durable_core::ActivityOptions::default()
                .with_schedule_to_close(Duration::from_millis(200));
            let r = ctx
                .call_activity_by_name_with_options::<u32>("slow", &(), &options)
                .await;
            let timed_out = matches!(&r, Err(e) if e.is_timeout());
            let _: String = ctx.wait_for_external_event("finish").await?;
            Ok::<_, OrchestrationError>(timed_out)
        })
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let rt = Worker::builder(store.clone())
        .registry(reg)
        .options(durable_core::WorkerOptions {
            activity_cancel_poll: Duration::ZERO,
            shutdown_grace: Duration::ZERO,
            ..Default::default()
        })
        .start()
        .unwrap();
    let c = rt.client();
    let id = c
        .start_by_name("bounded", None, StartOptions::default())
        .await
        .unwrap();
    count_reaches(&TOLD, 1, "the attempt was never told").await;
    let st = c.get_state(&id).await.unwrap().unwrap();
    assert_eq!(
        st.status,
        RuntimeStatus::Running,
        "told while still running"
    );
    assert_eq!(store.release_leases(rt.id()).await.unwrap(), 0);
    c.raise_event(&id, "finish", &"now").await.unwrap();
    let st = c.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(st.output.as_deref(), Some("true"), "{st:?}");
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    rt.shutdown().await;
}

/// A call the orchestration drops without awaiting it is recorded but never run; a rewind
/// does not issue a dropped call again (its result was not wanted), only the failed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_calls_never_run_and_a_rewind_leaves_them() {
    static DROPPED_RUNS: AtomicU32 = AtomicU32::new(0);
    static LOSER_RUNS: AtomicU32 = AtomicU32::new(0);
    static FLAKY_RUNS: AtomicU32 = AtomicU32::new(0);
    let reg = Registry::builder()
        .activity(
            "never",
            |_ctx: durable_core::ActivityContext, _: ()| async move {
                DROPPED_RUNS.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ActivityError>(())
            },
        )
        .activity(
            "loser",
            |ctx: durable_core::ActivityContext, _: ()| async move {
                LOSER_RUNS.fetch_add(1, Ordering::SeqCst);
                ctx.cancelled().await;
                Err::<u32, _>(ActivityError::from("stopped"))
            },
        )
        .activity(
            "winner",
            |_ctx: durable_core::ActivityContext, _: ()| async move {
                count_reaches(&LOSER_RUNS, 1, "the loser never started").await;
                Ok::<_, ActivityError>(2u32)
            },
        )
        .activity(
            "flaky",
            |_ctx: durable_core::ActivityContext, _: ()| async move {
                if FLAKY_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(ActivityError::from("down"))
                } else {
                    Ok(3u32)
                }
            },
        )
        .orchestrator("drops", |ctx: OrchestrationContext, _: ()| async move {
            drop(ctx.call_activity_by_name::<()>("never", &()));
            let (_, won) = ctx
                .when_any(vec![
                    ctx.call_activity_by_name::<u32>("loser", &()),
                    ctx.call_activity_by_name::<u32>("winner", &()),
                ])
                .await;
            let v: u32 = ctx.call_activity_by_name("flaky", &()).await?;
            Ok::<_, OrchestrationError>(won? + v)
        })
        .build()
        .unwrap();
    let h = start(reg, 0);
    let id = h
        .client
        .start_by_name("drops", None, StartOptions::default())
        .await
        .unwrap();
    let st = state_when(&h.client, &id, |s| s.status.is_terminal()).await;
    assert_eq!(st.status, RuntimeStatus::Failed, "{st:?}");
    h.client.rewind(&id, Some("fixed")).await.unwrap();
    let st = state_when(&h.client, &id, |s| s.status == RuntimeStatus::Completed).await;
    assert_eq!(st.output.as_deref(), Some("5"));
    assert_eq!(FLAKY_RUNS.load(Ordering::SeqCst), 2);
    assert_eq!(LOSER_RUNS.load(Ordering::SeqCst), 1, "the loser ran once");
    assert_eq!(
        DROPPED_RUNS.load(Ordering::SeqCst),
        0,
        "a dropped call never ran"
    );
    let kinds = history_kinds(&h.store, &id).await;
    assert!(kinds.iter().any(|k| k == "TaskScheduled"));
    h.runtime.shutdown().await;
}

/// A rewind issues a failed attempt again with the timeouts its call gave (they are
/// recorded in its `TaskScheduled` event): the hung activity times out again instead of
/// holding the instance forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_keeps_the_calls_timeouts() {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let reg = Registry::builder()
        .activity(
            "hangs",
            |_ctx: durable_core::ActivityContext, _: ()| async move {
                RUNS.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok::<_, ActivityError>(())
            },
        )
        .orchestrator(
            "bounded_call",
            |ctx: OrchestrationContext, _: ()| async move {
                let options =
                    durable_core::ActivityOptions::start_to_close(Duration::from_millis(150))
                        .with_heartbeat_timeout(Duration::from_secs(3600));
                ctx.call_activity_by_name_with_options::<()>("hangs", &(), &options)
                    .await?;
                Ok::<_, OrchestrationError>(())
            },
        )
        .build()
        .unwrap();
    let h = start(reg, 0);
    let id = h
        .client
        .start_by_name("bounded_call", None, StartOptions::default())
        .await
        .unwrap();
    let st = state_when(&h.client, &id, |s| s.status == RuntimeStatus::Failed).await;
    assert!(
        st.failure.as_ref().unwrap().message.contains("timed out")
            || st
                .failure
                .as_ref()
                .unwrap()
                .message
                .contains("start-to-close"),
        "{st:?}"
    );
    let history = h.store.read_history(&id).await.unwrap();
    let options = history
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::TaskScheduled { options, .. } => Some(options.clone()),
            _ => None,
        })
        .expect("the call is recorded")
        .expect("with its timeouts");
    assert_eq!(options.start_to_close(), Some(Duration::from_millis(150)));
    assert_eq!(options.heartbeat_timeout(), Some(Duration::from_secs(3600)));
    assert_eq!(options.attempt, 1);
    h.client.rewind(&id, Some("again")).await.unwrap();
    // Rewound: the attempt runs again, and times out again.
    count_reaches(&RUNS, 2, "the rewound attempt never ran").await;
    let st = state_when(&h.client, &id, |s| s.status == RuntimeStatus::Failed).await;
    assert!(
        st.failure
            .as_ref()
            .unwrap()
            .message
            .contains("start-to-close"),
        "{st:?}"
    );
    h.runtime.shutdown().await;
}

/// An activity registered as a closure with a default timeout
/// (`RegistryBuilder::activity_with_timeout`) is stopped at it when the call gives none;
/// a call's own start-to-close replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_activity_has_a_default_timeout() {
    let reg = Registry::builder()
        .activity_with_timeout(
            "hangs",
            Duration::from_millis(150),
            |ctx: durable_core::ActivityContext, _: ()| async move {
                ctx.cancelled().await;
                Err::<u8, _>(ActivityError::from("stopped"))
            },
        )
        .orchestrator(
            "calls_hangs",
            |ctx: OrchestrationContext, own: bool| async move {
                let r = if own {
                    let options =
                        durable_core::ActivityOptions::start_to_close(Duration::from_millis(300));
                    ctx.call_activity_by_name_with_options::<u8>("hangs", &(), &options)
                        .await
                } else {
                    ctx.call_activity_by_name::<u8>("hangs", &()).await
                };
                match r {
                    Err(e) if e.is_timeout() => Ok::<_, OrchestrationError>(e.failure.message),
                    other => Ok(format!("not a timeout: {other:?}")),
                }
            },
        )
        .build()
        .unwrap();
    let h = start(reg, 1000);
    for (own, within) in [(false, "150ms"), (true, "300ms")] {
        let id = h
            .client
            .start_by_name(
                "calls_hangs",
                Some(own.to_string()),
                StartOptions::default(),
            )
            .await
            .unwrap();
        let out: String = h.client.wait_for_output(&id, WAIT).await.unwrap();
        assert!(
            out.starts_with(&format!(
                "activity 'hangs' did not finish within {within} of starting"
            )),
            "{out}"
        );
    }
    h.runtime.shutdown().await;
}
