//! Virtual time: durable timers fire when a test moves the clock, activities are replaced
//! by closures, and long waits take no real time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_core::testing::{TestEnv, VirtualTime};
use durable_core::{EventKind, OrchestrationContext, Registry, RuntimeStatus, TaskError};

const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3_600);

/// Waits for an approval for seven days; reminds once after three.
fn approval_registry() -> Registry {
    Registry::builder()
        .orchestrator(
            "approval",
            |ctx: OrchestrationContext, doc: String| async move {
                ctx.set_custom_status("AwaitingApproval");
                let decision = ctx.wait_for_external_event::<bool>("decision");
                let reminder = ctx.create_timer(3 * DAY);
                let decision = match durable_core::race(decision, reminder).await {
                    durable_core::Either::Left(d) => Some(d?),
                    durable_core::Either::Right(()) => {
                        ctx.call_activity_by_name::<()>("remind", &doc).await?;
                        ctx.set_custom_status("Reminded");
                        ctx.wait_for_external_event_with_timeout::<bool>("decision", 4 * DAY)
                            .await
                            .ok()
                    }
                };
                let outcome = match decision {
                    Some(true) => "Approved",
                    Some(false) => "Rejected",
                    None => "TimedOut",
                };
                ctx.set_custom_status(outcome);
                Ok::<_, TaskError>(outcome.to_string())
            },
        )
        .activity("remind", |_ctx, _doc: String| async move {
            Err::<(), _>("the real mail server is not reachable from tests")
        })
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seven_day_timeout_fires_in_virtual_time_with_an_activity_replaced() {
    let real = Instant::now();
    let reminders = Arc::new(AtomicU32::new(0));
    let r2 = reminders.clone();
    let env = TestEnv::builder()
        .registry(approval_registry())
        .activity("remind", move |_ctx, doc: String| {
            let r = r2.clone();
            async move {
                assert_eq!(doc, "budget");
                r.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(())
            }
        })
        .start()
        .unwrap();
    let client = env.client();
    let started = env.now();
    let id = client
        .start_by_name("approval", Some("\"budget\"".into()), Default::default())
        .await
        .unwrap();
    env.idle().await.unwrap();
    assert_eq!(
        env.custom_status::<String>(&id).await.unwrap().as_deref(),
        Some("AwaitingApproval")
    );
    assert_eq!(
        env.time().next_timer(),
        Some(started + chrono::Duration::days(3))
    );

    // Two days pass: nothing happens.
    assert_eq!(env.advance(2 * DAY).await.unwrap(), 0);
    assert_eq!(reminders.load(Ordering::SeqCst), 0);
    assert_eq!(
        env.status(&id).await.unwrap().status(),
        RuntimeStatus::Running
    );

    // Day three: the reminder goes out (through the closure), then four more days of silence.
    assert_eq!(env.advance(DAY).await.unwrap(), 1);
    assert_eq!(reminders.load(Ordering::SeqCst), 1);
    assert_eq!(
        env.custom_status::<String>(&id).await.unwrap().as_deref(),
        Some("Reminded")
    );
    let done = env.run_until_finished(&id, 30 * DAY).await.unwrap();
    assert_eq!(done.status(), RuntimeStatus::Completed);
    assert_eq!(
        done.output::<String>().unwrap().as_deref(),
        Some("TimedOut")
    );
    assert_eq!(env.now() - started, chrono::Duration::days(7));
    // The timers were recorded at their virtual due times.
    let history = env.history(&id).await.unwrap();
    let fired: Vec<_> = history
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TimerFired { fire_at, .. } => Some(*fire_at - started),
            _ => None,
        })
        .collect();
    assert_eq!(
        fired,
        [chrono::Duration::days(3), chrono::Duration::days(7)]
    );
    env.shutdown().await;
    assert!(
        real.elapsed() < Duration::from_secs(5),
        "{:?}",
        real.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_before_the_timeout_wins_and_the_unreplaced_activity_is_the_registered_one() {
    let env = TestEnv::builder()
        .registry(approval_registry())
        .start()
        .unwrap();
    let client = env.client();
    let id = client
        .start_by_name("approval", Some("\"logo\"".into()), Default::default())
        .await
        .unwrap();
    env.advance(DAY).await.unwrap();
    client.raise_event(&id, "decision", &true).await.unwrap();
    let done = env.run_until_finished(&id, 30 * DAY).await.unwrap();
    assert_eq!(
        done.output::<String>().unwrap().as_deref(),
        Some("Approved")
    );
    assert_eq!(
        done.custom_status::<String>().unwrap().as_deref(),
        Some("Approved")
    );

    // Without the replacement, the registered activity runs: its failure fails the instance.
    let id = client
        .start_by_name("approval", Some("\"logo\"".into()), Default::default())
        .await
        .unwrap();
    let done = env.run_until_finished(&id, 30 * DAY).await.unwrap();
    assert_eq!(done.status(), RuntimeStatus::Failed);
    let failure = done.state.failure.unwrap();
    assert!(
        failure.message.contains("not reachable from tests"),
        "{failure:?}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advance_stops_at_every_timer_on_the_way() {
    // An hourly poll for a day: each timer starts the next, so jumping straight to the end
    // would run one poll; advance runs all 24.
    let polls = Arc::new(AtomicU32::new(0));
    let p2 = polls.clone();
    let registry = Registry::builder()
        .orchestrator(
            "poll",
            |ctx: OrchestrationContext, rounds: u32| async move {
                for _ in 0..rounds {
                    ctx.create_timer(HOUR).await;
                    ctx.call_activity_by_name::<u32>("check", &()).await?;
                }
                Ok::<_, TaskError>(ctx.current_utc_datetime())
            },
        )
        .activity("check", move |_ctx, (): ()| {
            let p = p2.clone();
            async move { Ok::<_, String>(p.fetch_add(1, Ordering::SeqCst) + 1) }
        })
        .build()
        .unwrap();
    let env = TestEnv::builder().registry(registry).start().unwrap();
    let started = env.now();
    let id = env
        .client()
        .start_by_name("poll", Some("48".into()), Default::default())
        .await
        .unwrap();
    assert_eq!(env.advance(DAY).await.unwrap(), 24);
    assert_eq!(polls.load(Ordering::SeqCst), 24);
    assert_eq!(env.now() - started, chrono::Duration::days(1));
    assert_eq!(
        env.skip_to_next_timer().await.unwrap(),
        Some(started + chrono::Duration::hours(25))
    );
    assert_eq!(polls.load(Ordering::SeqCst), 25);
    let done = env.run_until_finished(&id, DAY).await.unwrap();
    assert_eq!(done.status(), RuntimeStatus::Completed);
    assert_eq!(
        done.output::<chrono::DateTime<chrono::Utc>>().unwrap(),
        Some(started + chrono::Duration::hours(48))
    );
    assert_eq!(env.skip_to_next_timer().await.unwrap(), None);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waiting_for_a_far_timer_wakes_when_the_clock_moves() {
    // VirtualTime drives a worker it did not start (as a host runs its own): the fetch the
    // worker is waiting in wakes on the clock, not after its idle poll.
    let time = VirtualTime::new();
    let registry = Registry::builder()
        .orchestrator("nap", |ctx: OrchestrationContext, (): ()| async move {
            ctx.create_timer(365 * DAY).await;
            Ok::<_, TaskError>(())
        })
        .build()
        .unwrap();
    let options = durable_core::WorkerOptions {
        idle_poll: Duration::from_secs(3_600),
        ..Default::default()
    };
    let worker = durable_core::Worker::builder(time.store())
        .registry(registry)
        .options(options)
        .start()
        .unwrap();
    let id = worker
        .client()
        .start_by_name("nap", None, Default::default())
        .await
        .unwrap();
    time.idle().await.unwrap();
    let real = Instant::now();
    time.clock().advance(366 * DAY);
    let done = worker
        .client()
        .wait_for_completion(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.status, RuntimeStatus::Completed);
    assert!(
        real.elapsed() < Duration::from_secs(5),
        "{:?}",
        real.elapsed()
    );
    worker.shutdown().await;
}
