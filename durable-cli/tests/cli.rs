//! The `durable` binary end to end against a real host on an ephemeral port (memory
//! store): every command's output and exit code, the errors (one line, distinct codes), and
//! that the key never appears in anything the binary prints.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable_core::{
    ActivityError, EntityContext, EntityId, MemoryStore, Operation, OrchestrationContext,
    OrchestrationError, Registry, RuntimeStatus, StartOptions,
};
use durable_http::{Host, RunningHost};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const KEY: &str = "cli-test-key-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(30);

/// Inputs whose `flaky` activity already failed once (it fails the first time per input).
fn failed_once() -> &'static Mutex<HashSet<String>> {
    static SEEN: std::sync::OnceLock<Mutex<HashSet<String>>> = std::sync::OnceLock::new();
    SEEN.get_or_init(Default::default)
}

fn registry() -> Registry {
    Registry::builder()
        .activity("say_hello", |_ctx, city: String| async move {
            Ok::<_, ActivityError>(format!("Hello {city}!"))
        })
        .activity("boom", |_ctx, _: ()| async move {
            Err::<(), _>(ActivityError::new("boom: the disk is full"))
        })
        .activity("flaky", |_ctx, key: String| async move {
            if failed_once().lock().unwrap().insert(key) {
                return Err(ActivityError::new("flaky: first attempt fails"));
            }
            Ok::<_, ActivityError>(())
        })
        .orchestrator(
            "hello",
            |ctx: OrchestrationContext, cities: Vec<String>| async move {
                let mut out = Vec::new();
                for c in cities {
                    out.push(ctx.call_activity_by_name::<String>("say_hello", &c).await?);
                }
                ctx.create_timer(Duration::from_millis(20)).await;
                Ok::<_, OrchestrationError>(out)
            },
        )
        .orchestrator("failing", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_activity_by_name::<()>("boom", &()).await?;
            Ok::<_, OrchestrationError>(())
        })
        .orchestrator(
            "flaky",
            |ctx: OrchestrationContext, key: String| async move {
                ctx.call_activity_by_name::<()>("flaky", &key).await?;
                Ok::<_, OrchestrationError>("recovered".to_string())
            },
        )
        .orchestrator("wait", |ctx: OrchestrationContext, _: ()| async move {
            ctx.set_custom_status("waiting for go");
            let v: Value = ctx.wait_for_external_event("go").await?;
            Ok::<_, OrchestrationError>(v)
        })
        .entity(
            "counter",
            |ctx: EntityContext<i64>, op: Operation| async move {
                let v = ctx.get_state_or_default()? + op.input::<i64>()?;
                ctx.set_state(&v);
                Ok::<_, durable_core::FailureDetails>(Some(v))
            },
        )
        .build()
        .unwrap()
}

async fn host() -> RunningHost {
    Host::builder()
        .addr("127.0.0.1:0")
        .store(Arc::new(MemoryStore::new()))
        .key(KEY)
        .registry(registry())
        .without_registered_routes()
        .build()
        .unwrap()
        .bind()
        .await
        .unwrap()
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }

    /// A failure: this exit code and one `error: ...` line on stderr containing `text`.
    fn fails(self, code: i32, text: &str) -> Self {
        assert_eq!(self.code, code, "{self:?}");
        assert_eq!(self.stderr.lines().count(), 1, "{self:?}");
        assert!(self.stderr.starts_with("error: "), "{self:?}");
        assert!(self.stderr.contains(text), "{self:?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// The rows of a table, without its header.
    fn rows(&self) -> Vec<&str> {
        self.stdout.lines().skip(1).collect()
    }
}

fn command(url: &str, key: Option<&str>, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_durable"));
    cmd.args(args)
        .env_remove("DURABLE_KEY")
        .env("DURABLE_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(k) = key {
        cmd.env("DURABLE_KEY", k);
    }
    cmd
}

/// Waits for the process (with a deadline) and checks the key appears nowhere in what it
/// printed. `stderr` is what was already read from its stderr.
async fn finish(child: tokio::process::Child, key: Option<&str>, mut stderr: String) -> Out {
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("durable did not finish")
        .unwrap();
    stderr.push_str(&String::from_utf8(out.stderr).unwrap());
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr,
    };
    for k in [Some(KEY), key].into_iter().flatten() {
        assert!(
            !out.stdout.contains(k) && !out.stderr.contains(k),
            "the key was printed: {out:?}"
        );
    }
    out
}

/// Runs `durable` with the URL and key in the environment and `stdin` fed to it.
async fn run_with(url: &str, key: Option<&str>, args: &[&str], stdin: Option<&str>) -> Out {
    let mut child = command(url, key, args)
        .spawn()
        .expect("the durable binary runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.unwrap();
    }
    drop(input);
    finish(child, key, String::new()).await
}

/// `durable watch ID` in the background, returned once its progress line says `Running`;
/// await the returned future for its outcome.
async fn watch_running(h: &RunningHost, id: &str) -> impl std::future::Future<Output = Out> {
    let mut child = command(&h.url(), Some(KEY), &["watch", id, "--interval", "0.05"])
        .spawn()
        .expect("the durable binary runs");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let want = format!("{id}  Running");
    while !seen.contains(&want) {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("no progress line")
            .unwrap()
            .unwrap_or_else(|| panic!("watch ended before {want}: {seen}"));
        seen.push_str(&line);
        seen.push('\n');
    }
    async move {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
        }
        finish(child, None, seen).await
    }
}

async fn durable(h: &RunningHost, args: &[&str]) -> Out {
    run_with(&h.url(), Some(KEY), args, None).await
}

async fn start(h: &RunningHost, name: &str, id: &str, input: Value) -> String {
    h.client()
        .start_by_name(
            name,
            Some(input.to_string()),
            StartOptions::with_instance_id(id),
        )
        .await
        .unwrap()
}

/// Waits (with a deadline) until the instance has `status`.
async fn until_status(h: &RunningHost, id: &str, status: RuntimeStatus) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = h.client().get_state(id).await.unwrap().map(|s| s.status);
        if s == Some(status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} is {s:?}, never {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_pages_and_prints_json() {
    let h = host().await;
    for n in 1..=3 {
        let id = start(&h, "hello", &format!("hello-{n}"), json!(["Oslo"])).await;
        until_status(&h, &id, RuntimeStatus::Completed).await;
    }
    start(&h, "failing", "bad-1", json!(null)).await;
    start(&h, "wait", "waiter-1", json!(null)).await;
    until_status(&h, "bad-1", RuntimeStatus::Failed).await;
    until_status(&h, "waiter-1", RuntimeStatus::Running).await;

    let out = durable(&h, &["list"]).await.ok();
    assert!(out.stdout.starts_with("INSTANCE "), "{out:?}");
    assert_eq!(out.rows().len(), 5, "{out:?}");
    assert!(out
        .rows()
        .iter()
        .any(|r| r.starts_with("bad-1") && r.contains("failing") && r.contains("Failed")));

    let out = durable(&h, &["list", "--status", "failed"]).await.ok();
    assert_eq!(out.rows().len(), 1);
    assert!(out.rows()[0].starts_with("bad-1"), "{out:?}");
    let out = durable(&h, &["list", "--status", "Running,Completed"])
        .await
        .ok();
    assert_eq!(out.rows().len(), 4, "{out:?}");
    let out = durable(&h, &["list", "--status", "Running", "--status", "Failed"])
        .await
        .ok();
    assert_eq!(out.rows().len(), 2, "{out:?}");
    let out = durable(&h, &["list", "--prefix", "hello-"]).await.ok();
    assert_eq!(out.rows().len(), 3, "{out:?}");

    let out = durable(&h, &["list", "--top", "2"]).await.ok();
    assert_eq!(out.rows().len(), 2, "{out:?}");
    assert!(out.stderr.contains("--all"), "{out:?}");
    let out = durable(&h, &["list", "--top", "2", "--all"]).await.ok();
    assert_eq!(out.rows().len(), 5, "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");

    let out = durable(&h, &["list", "--all", "--json", "--top", "2"])
        .await
        .ok();
    let items = out.json();
    assert_eq!(items.as_array().unwrap().len(), 5);
    assert!(items
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["instanceId"] == "waiter-1" && i["customStatus"] == "waiting for go"));

    let out = durable(&h, &["list", "--from", "1h"]).await.ok();
    assert_eq!(out.rows().len(), 5, "{out:?}");
    let out = durable(&h, &["list", "--from", "2099-01-01T00:00:00Z"])
        .await
        .ok();
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("no instances match"), "{out:?}");

    durable(&h, &["list", "--status", "Done"])
        .await
        .fails(2, "Done");
    durable(&h, &["list", "--from", "yesterday"])
        .await
        .fails(6, "400 Bad Request: invalid createdTimeFrom 'yesterday'");
    h.shutdown().await;
}

/// `250ms`, `1.5s`, `3m07s`, `2h05m`.
fn is_duration(w: &str) -> bool {
    let number = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.');
    let pair = |s: &str, a: char| s.split_once(a).is_some_and(|(x, y)| number(x) && number(y));
    w.strip_suffix("ms").is_some_and(number)
        || w.strip_suffix('s')
            .is_some_and(|s| number(s) || pair(s, 'm'))
        || w.strip_suffix('m').is_some_and(|s| pair(s, 'h'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_status_and_history_and_export_has_the_internal_history() {
    let h = host().await;
    start(&h, "hello", "h1", json!(["Tokyo", "Lima"])).await;
    start(&h, "failing", "f1", json!(null)).await;
    until_status(&h, "h1", RuntimeStatus::Completed).await;
    until_status(&h, "f1", RuntimeStatus::Failed).await;

    let out = durable(&h, &["show", "h1"]).await.ok();
    println!("{}", out.stdout);
    println!("{}", durable(&h, &["show", "f1"]).await.stdout);
    println!("{}", durable(&h, &["list"]).await.stdout);
    let text = &out.stdout;
    for line in [
        "Instance:      h1",
        "Orchestrator:  hello",
        "Status:        Completed",
        r#"Input:         ["Tokyo","Lima"]"#,
        r#"Output:        ["Hello Tokyo!","Hello Lima!"]"#,
        "Custom status: null",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}\n{text}");
    }
    let history: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "History:")
        .skip(1)
        .collect();
    assert!(history[0].starts_with("TIME "), "{text}");
    let tasks: Vec<&&str> = history
        .iter()
        .filter(|l| l.contains("TaskCompleted"))
        .collect();
    assert_eq!(tasks.len(), 2, "{text}");
    assert!(tasks[0].contains("say_hello") && tasks[0].contains("Hello Tokyo!"));
    assert!(
        tasks[0].split_whitespace().any(is_duration),
        "a duration column: {text}"
    );
    assert!(
        history
            .iter()
            .any(|l| l.contains("TimerFired") && l.split_whitespace().any(is_duration)),
        "{text}"
    );
    assert!(
        history
            .iter()
            .any(|l| l.contains("ExecutionCompleted") && l.contains("Completed")),
        "{text}"
    );

    let json = durable(&h, &["show", "h1", "--json"]).await.ok().json();
    assert_eq!(json["runtimeStatus"], "Completed");
    assert!(json["historyEvents"].as_array().unwrap().len() >= 4);

    let out = durable(&h, &["show", "f1"]).await.ok();
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("Failure:") && l.contains("boom: the disk is full")),
        "{out:?}"
    );

    // The engine's own events: scheduling events with their inputs, episode markers.
    let exported = durable(&h, &["history", "export", "h1"]).await.ok();
    let export = exported.json();
    assert_eq!(export["instanceId"], "h1");
    let events = export["historyEvents"].as_array().unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"OrchestratorStarted"), "{kinds:?}");
    assert!(kinds.contains(&"TaskScheduled") && kinds.contains(&"TimerCreated"));
    let scheduled = events
        .iter()
        .find(|e| e["eventType"] == "TaskScheduled")
        .unwrap();
    assert_eq!(scheduled["name"], "say_hello");
    assert_eq!(scheduled["input"], "\"Tokyo\"");
    assert_eq!(scheduled["event_id"], 0);
    let parsed: Vec<durable_core::HistoryEvent> =
        serde_json::from_value(export["historyEvents"].clone()).unwrap();
    let real = h
        .client()
        .get_status(
            "h1",
            durable_core::StatusOptions {
                show_input: true,
                show_history: true,
            },
        )
        .await
        .unwrap()
        .unwrap()
        .history
        .unwrap();
    assert_eq!(parsed, real, "the export is the stored history");

    // The export replays on the same code, and not on code that changed the call order.
    let replayed = durable_core::replayer::Replayer::new(registry())
        .replay_json(&exported.stdout)
        .unwrap();
    assert_eq!((replayed.name.as_str(), replayed.finished), ("hello", true));
    let changed = Registry::builder()
        .orchestrator(
            "hello",
            |ctx: OrchestrationContext, _cities: Vec<String>| async move {
                ctx.create_timer(Duration::from_millis(20)).await;
                Ok::<_, OrchestrationError>(())
            },
        )
        .build()
        .unwrap();
    let err = durable_core::replayer::Replayer::new(changed)
        .replay_json(&exported.stdout)
        .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "instance 'h1': non-deterministic orchestration 'hello': at sequence number 0 the history recorded TaskScheduled 'say_hello' but the code now attempted create_timer"
        ),
        "{err}"
    );

    durable(&h, &["show", "nope"])
        .await
        .fails(5, "404 Not Found: no instance with id 'nope'");
    durable(&h, &["history", "export", "nope"])
        .await
        .fails(5, "404");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_raise_and_watch() {
    let h = host().await;
    let out = durable(&h, &["start", "wait", "--id", "w1"]).await.ok();
    assert_eq!(out.stdout, "w1\n");
    let out = durable(&h, &["start", "hello", "--input", r#"["Rome"]"#])
        .await
        .ok();
    let id = out.stdout.trim().to_string();
    assert_eq!(id.len(), 32, "{out:?}");
    let out = durable(&h, &["watch", &id, "--interval", "0.05"])
        .await
        .ok();
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        json!(["Hello Rome!"])
    );
    assert!(out.stderr.contains(&format!("{id}  Completed")), "{out:?}");

    let watcher = watch_running(&h, "w1").await;
    let out = durable(&h, &["raise", "w1", "go", r#"{"by":"ops"}"#])
        .await
        .ok();
    assert_eq!(out.stdout, "raised 'go' on w1\n");
    let out = watcher.await.ok();
    assert_eq!(out.json(), json!({"by": "ops"}));
    assert!(
        out.stderr.contains("w1  Running  waiting for go"),
        "{out:?}"
    );
    assert!(out.stderr.contains("w1  Completed"), "{out:?}");

    durable(&h, &["start", "hello", "--input", "[\"Rome\""])
        .await
        .fails(6, "400 Bad Request: Invalid JSON content");
    durable(&h, &["start", "nobody", "--input", "1"])
        .await
        .fails(6, "400 Bad Request");
    durable(&h, &["start", "wait", "--id", "w2"]).await.ok();
    until_status(&h, "w2", RuntimeStatus::Running).await;
    durable(&h, &["raise", "w2", "go", "{nope"])
        .await
        .fails(6, "400 Bad Request: Invalid JSON content");
    durable(&h, &["raise", "missing", "go", "1"])
        .await
        .fails(5, "404");
    durable(&h, &["start", "wait", "--id", "w2"])
        .await
        .fails(6, "409");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_suspend_resume_rewind_and_restart() {
    let h = host().await;
    start(&h, "wait", "w", json!(null)).await;
    until_status(&h, "w", RuntimeStatus::Running).await;
    let out = durable(&h, &["suspend", "w", "--reason", "maintenance"])
        .await
        .ok();
    assert_eq!(out.stdout, "suspend requested for w\n");
    until_status(&h, "w", RuntimeStatus::Suspended).await;
    durable(&h, &["resume", "w"]).await.ok();
    until_status(&h, "w", RuntimeStatus::Running).await;
    let watcher = watch_running(&h, "w").await;
    durable(&h, &["terminate", "w", "--reason", "enough"])
        .await
        .ok();
    let out = watcher.await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr.lines().last(),
        Some("error: instance w was terminated: enough"),
        "{out:?}"
    );
    durable(&h, &["terminate", "w"]).await.fails(6, "410 Gone");

    start(&h, "flaky", "f", json!("f")).await;
    until_status(&h, "f", RuntimeStatus::Failed).await;
    let out = durable(&h, &["watch", "f"]).await;
    println!("{out:?}");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.ends_with(
            "error: instance f failed: TaskFailed: activity 'flaky' failed: flaky: first attempt fails\n"
        ),
        "{out:?}"
    );
    durable(&h, &["rewind", "f", "--reason", "fixed"])
        .await
        .ok();
    until_status(&h, "f", RuntimeStatus::Completed).await;
    durable(&h, &["rewind", "f"]).await.fails(6, "410");

    let out = durable(&h, &["restart", "f"]).await.ok();
    assert_eq!(out.stdout, "f\n");
    until_status(&h, "f", RuntimeStatus::Completed).await;
    let out = durable(&h, &["restart", "f", "--new-id"]).await.ok();
    let new_id = out.stdout.trim();
    assert!(!new_id.is_empty() && new_id != "f", "{out:?}");
    until_status(&h, new_id, RuntimeStatus::Completed).await;
    durable(&h, &["restart", "ghost"]).await.fails(6, "400");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_one_or_by_filter_with_a_count_and_a_confirmation() {
    let h = host().await;
    for n in 1..=4 {
        let id = start(&h, "hello", &format!("p{n}"), json!([])).await;
        until_status(&h, &id, RuntimeStatus::Completed).await;
    }
    start(&h, "wait", "keep", json!(null)).await;
    until_status(&h, "keep", RuntimeStatus::Running).await;
    let count = || async {
        h.client()
            .list_instances(&Default::default(), 100, None)
            .await
            .unwrap()
            .items
            .len()
    };

    let out = durable(&h, &["purge", "p1"]).await.ok();
    assert_eq!(out.stdout, "purged p1\n");
    durable(&h, &["show", "p1"]).await.fails(5, "404");
    durable(&h, &["purge", "p1"]).await.fails(5, "404");
    durable(&h, &["purge", "keep"]).await.fails(6, "412");
    durable(&h, &["purge"]).await.fails(2, "<ID|--from <FROM>>");
    durable(&h, &["purge", "p2", "--from", "1h"])
        .await
        .fails(2, "cannot be used with");

    // Not confirmed: nothing changes.
    let url = h.url();
    let out = run_with(&url, Some(KEY), &["purge", "--from", "1h"], Some("n\n")).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("3 finished instances created from"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("1 unfinished ones match too"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("Purge 3 instances, with the sub-orchestrations they started? [y/N]"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .ends_with("error: not confirmed; nothing was purged\n"),
        "{out:?}"
    );
    assert_eq!(count().await, 4);
    let out = run_with(&url, Some(KEY), &["purge", "--from", "1h"], None).await;
    assert_eq!(out.code, 1, "no answer is no: {out:?}");
    assert_eq!(count().await, 4);

    // A status filter narrows the count.
    let out = run_with(
        &url,
        Some(KEY),
        &["purge", "--from", "1h", "--status", "Failed"],
        None,
    )
    .await
    .ok();
    assert_eq!(out.stdout, "purged 0 instances\n");

    let out = run_with(&url, Some(KEY), &["purge", "--from", "1h"], Some("y\n"))
        .await
        .ok();
    assert_eq!(out.stdout, "purged 3 instances\n");
    assert_eq!(count().await, 1);
    start(&h, "hello", "p9", json!([])).await;
    until_status(&h, "p9", RuntimeStatus::Completed).await;
    let out = durable(
        &h,
        &[
            "purge",
            "--from",
            "2000-01-01",
            "--status",
            "completed",
            "--yes",
        ],
    )
    .await
    .ok();
    assert_eq!(out.stdout, "purged 1 instances\n");
    assert_eq!(count().await, 1, "the running instance stays");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_list_get_and_signal() {
    let h = host().await;
    let out = durable(&h, &["entities", "signal", "counter", "k1", "add", "5"])
        .await
        .ok();
    assert_eq!(out.stdout, "signalled 'add' to counter@k1\n");
    durable(&h, &["entities", "signal", "counter", "k2", "add", "7"])
        .await
        .ok();
    let deadline = tokio::time::Instant::now() + WAIT;
    for (key, want) in [("k1", "5"), ("k2", "7")] {
        let id = EntityId::new("counter", key);
        while h
            .client()
            .get_entity(&id)
            .await
            .unwrap()
            .and_then(|m| m.state)
            .as_deref()
            != Some(want)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key} never got {want}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let out = durable(&h, &["entities", "list"]).await.ok();
    assert!(out.stdout.starts_with("NAME "), "{out:?}");
    let rows = out.rows();
    assert_eq!(rows.len(), 2, "{out:?}");
    assert!(
        rows.iter()
            .any(|r| r.starts_with("counter  k1") && r.ends_with(" 5")),
        "{out:?}"
    );
    let items = durable(&h, &["entities", "list", "counter", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(items.as_array().unwrap().len(), 2);
    assert!(items
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["entityId"]["key"] == "k2" && e["state"] == 7));
    let out = durable(&h, &["entities", "list", "nothing"]).await.ok();
    assert!(out.stderr.contains("no entities"), "{out:?}");

    let out = durable(&h, &["entities", "get", "counter", "k1"])
        .await
        .ok();
    assert_eq!(out.stdout, "5\n");
    durable(&h, &["entities", "get", "counter", "k9"])
        .await
        .fails(5, "404");
    durable(&h, &["entities", "signal", "counter", "k1", "add", "{x"])
        .await
        .fails(6, "400 Bad Request");
    durable(&h, &["entities", "signal", "ghost", "k1", "add", "1"])
        .await
        .fails(5, "404");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_with_distinct_exit_codes_and_the_key_stays_secret() {
    let h = host().await;
    let url = h.url();
    run_with(&url, Some("wrong-key-but-long-enough"), &["list"], None)
        .await
        .fails(4, "401 Unauthorized: missing or invalid key");
    run_with(&url, None, &["list"], None)
        .await
        .fails(2, "set DURABLE_KEY or pass --key-file");

    let dir = std::env::temp_dir().join(format!("durable-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let path = key_file.to_str().unwrap();
    run_with(&url, None, &["--key-file", path, "list"], None)
        .await
        .ok();
    run_with(
        &url,
        None,
        &["list", "--key-file", "/nonexistent/key"],
        None,
    )
    .await
    .fails(2, "cannot read the key file /nonexistent/key");
    std::fs::remove_dir_all(&dir).unwrap();

    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    run_with(&format!("http://{closed}"), Some(KEY), &["list"], None)
        .await
        .fails(3, "cannot reach http://");
    run_with(&url, Some(KEY), &["--url", "localhost:1", "list"], None)
        .await
        .fails(2, "invalid --url");
    let out = run_with(&url, Some(KEY), &["frobnicate"], None).await;
    assert_eq!(out.code, 2, "{out:?}");
    let out = run_with(&url, Some(KEY), &["--help"], None).await.ok();
    assert!(out.stdout.contains("Exit codes:"), "{out:?}");
    h.shutdown().await;
}
