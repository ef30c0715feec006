//! The seed scenarios (order processing and the other patterns, durable search, the
//! approval workflow), each driven over real HTTP from its start to its final status.

use std::time::Duration;

use durable_core::testing::VirtualTime;
use durable_http::RunningHost;
use serde_json::{json, Value};

mod support;
use support::{call, host, host_in, inspect, path_of, KEY};

const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

async fn start(h: &RunningHost, path: &str, body: &str) -> String {
    let (status, headers, resp) = call(h, "POST", path, body).await;
    assert_eq!(status, 202, "{path}: {resp}");
    assert!(headers.contains_key("retry-after"));
    path_of(h, headers["location"].to_str().unwrap())
}

/// Follows a status path while it answers 202 (long-polling), returns the final body.
async fn finish(h: &RunningHost, status_path: &str) -> Value {
    for _ in 0..100 {
        let (status, _, body) = call(h, "GET", &format!("{status_path}?wait=5s"), "").await;
        if status == 200 {
            return body;
        }
        assert_eq!(status, 202, "{body}");
    }
    panic!("{status_path} never finished");
}

/// Polls `path` until `cond` holds on its body (a wait for a condition, not for time).
async fn until(h: &RunningHost, path: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..1200 {
        let (_, _, body) = call(h, "GET", path, "").await;
        if cond(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: never happened");
}

/// The custom status of the instance behind `status_path`, read once.
async fn custom_status(h: &RunningHost, status_path: &str) -> Value {
    let (status, _, body) = call(h, "GET", status_path, "").await;
    assert_eq!(status, 202, "{body}");
    body["customStatus"].clone()
}

async fn mailbox(h: &RunningHost, to: &str) -> Vec<Value> {
    let (status, _, body) = call(h, "GET", &format!("/api/mailbox?to={to}"), "").await;
    assert_eq!(status, 200);
    body.as_array().unwrap().clone()
}

// ---------------------------------------------------------------------------------------
// order_processing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_chain_their_steps_and_stop_at_the_first_no() {
    let h = host().await;
    let order = |sku: &str, qty: u32, card: &str, email: &str| {
        json!({"id": format!("A-{sku}-{qty}"), "email": email,
               "items": [{"sku": sku, "quantity": qty}], "card": card})
        .to_string()
    };
    let ok = start(
        &h,
        "/api/orders",
        &order("widget", 2, "4242 4242 4242 4242", "ada@shop.test"),
    )
    .await;
    let done = finish(&h, &ok).await;
    assert_eq!(done["runtimeStatus"], "Completed");
    assert_eq!(done["customStatus"], "Completed");
    assert_eq!(done["output"]["message"], "Order processed successfully!");
    assert_eq!(done["output"]["failedStep"], Value::Null);
    assert!(done["output"]["note"]
        .as_str()
        .unwrap()
        .starts_with("charged 5.00"));
    let mails = mailbox(&h, "ada@shop.test").await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["subject"], "Order A-widget-2 confirmed");

    for (body, step, note) in [
        (
            order("teapot", 1, "4242424242424242", "bob@shop.test"),
            "ValidateOrder",
            "unknown product 'teapot'",
        ),
        (
            order("gizmo", 1, "4242424242424242", "bob@shop.test"),
            "CheckInventory",
            "only 0 'gizmo' in stock, 1 ordered",
        ),
        (
            order("gadget", 1, "4000000000000002", "bob@shop.test"),
            "ProcessPayment",
            "the card was declined",
        ),
    ] {
        let done = finish(&h, &start(&h, "/api/orders", &body).await).await;
        assert_eq!(done["output"]["message"], "Order processing failed.");
        assert_eq!(done["output"]["failedStep"], step);
        assert_eq!(done["output"]["note"], note);
        assert_eq!(done["customStatus"], "Failed");
    }
    assert!(
        mailbox(&h, "bob@shop.test").await.is_empty(),
        "no confirmation for failed orders"
    );

    let (status, _, body) = call(&h, "POST", "/api/orders", "{not json").await;
    assert_eq!(status, 400);
    assert!(body["error"].is_string());
    let (status, _, body) = call(&h, "POST", "/api/orders", r#"{"id":"A-2","email":"x@y"}"#).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("items"), "{body}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_fan_in_processes_every_task() {
    let h = host().await;
    let tasks: Vec<String> = (1..=12).map(|i| format!("Task{i}")).collect();
    let done = finish(
        &h,
        &start(&h, "/api/fan-out", &json!(tasks).to_string()).await,
    )
    .await;
    let expected: Vec<String> = tasks.iter().map(|t| format!("{t} completed")).collect();
    assert_eq!(done["output"], json!(expected));
    for (body, msg) in [
        ("[]", "give 1 to 1000 task names, got 0"),
        (r#"["a",""]"#, "task name 1 is empty"),
    ] {
        let (status, _, resp) = call(&h, "POST", "/api/fan-out", body).await;
        assert_eq!((status, resp["error"].as_str()), (400, Some(msg)));
    }
    let (status, _, _) = call(&h, "POST", "/api/fan-out", r#"{"tasks":1}"#).await;
    assert_eq!(status, 400);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_checks_alerts_continues_as_new_and_stops() {
    // Hourly checks for a day, in virtual time.
    let time = VirtualTime::new();
    let h = host_in(&time).await;
    let health = "/api/demo/services/billing-test/health";
    let (status, _, body) = call(&h, "GET", health, "").await;
    assert_eq!((status, &body["status"]), (200, &json!("healthy")));
    let url = format!("http://{}{health}", h.addr);
    let status_path = start(
        &h,
        "/api/monitors",
        &json!({"url": url, "intervalSeconds": 3600}).to_string(),
    )
    .await;
    time.idle().await.unwrap();
    let s = custom_status(&h, &status_path).await;
    assert_eq!((&s["checks"], &s["lastCheck"]), (&json!(1), &json!("up")));
    time.advance(HOUR).await.unwrap();
    assert_eq!(custom_status(&h, &status_path).await["checks"], 2);

    // The service goes down: one alert, however many checks see it down.
    let (status, _, _) = call(&h, "PUT", health, r#"{"healthy": false}"#).await;
    assert_eq!(status, 200);
    time.advance(HOUR).await.unwrap();
    let down = custom_status(&h, &status_path).await;
    assert_eq!(
        (&down["checks"], &down["lastCheck"], &down["alerts"]),
        (&json!(3), &json!("down"), &json!(1))
    );
    assert_eq!(down["detail"], "answered 503");
    time.advance(5 * HOUR).await.unwrap();
    let still_down = custom_status(&h, &status_path).await;
    assert_eq!(
        (&still_down["checks"], &still_down["alerts"]),
        (&json!(8), &json!(1))
    );
    let ops = mailbox(&h, "ops@example.com").await;
    let about_us: Vec<&Value> = ops
        .iter()
        .filter(|m| m["subject"].as_str().unwrap().contains(&url))
        .collect();
    assert_eq!(about_us.len(), 1);
    assert_eq!(about_us[0]["subject"], format!("{url} is down"));

    // Back up, and the rest of the day passes: a check every hour.
    call(&h, "PUT", health, r#"{"healthy": true}"#).await;
    time.advance(17 * HOUR).await.unwrap();
    let s = custom_status(&h, &status_path).await;
    assert_eq!(
        (&s["checks"], &s["lastCheck"], &s["alerts"]),
        (&json!(25), &json!("up"), &json!(1))
    );
    let checks_when_stopped = s["checks"].as_u64().unwrap();

    // Each cycle is a new execution: the history stays short.
    let id = status_path.rsplit('/').next().unwrap().to_string();
    let (status, _, mgmt) = call(
        &h,
        "GET",
        &format!("/runtime/webhooks/durabletask/instances/{id}?showHistory=true&code={KEY}"),
        "",
    )
    .await;
    assert_eq!(status, 202);
    assert!(
        mgmt["historyEvents"].as_array().unwrap().len() < 30,
        "{mgmt}"
    );

    let (status, _, body) = call(&h, "POST", &format!("/api/monitors/{id}/stop"), "").await;
    assert_eq!((status, &body["stopping"]), (202, &json!(true)));
    let done = finish(&h, &status_path).await;
    assert_eq!(done["runtimeStatus"], "Completed");
    assert_eq!(done["output"]["alerts"], 1);
    assert_eq!(done["output"]["last"], "up");
    assert_eq!(done["output"]["checks"].as_u64(), Some(checks_when_stopped));
    let recovered: Vec<Value> = mailbox(&h, "ops@example.com")
        .await
        .into_iter()
        .filter(|m| m["subject"] == format!("{url} is recovered"))
        .collect();
    assert_eq!(recovered.len(), 1);

    let (status, _, body) = call(&h, "POST", &format!("/api/monitors/{id}/stop"), "").await;
    assert_eq!(status, 410, "{body}");
    let (status, _, _) = call(&h, "POST", "/api/monitors/no-such-monitor/stop", "").await;
    assert_eq!(status, 404);
    for (body, msg) in [
        (
            json!({"url": "ftp://x/health"}),
            "is not an absolute http(s) URL",
        ),
        (
            json!({"url": url, "intervalSeconds": 0}),
            "intervalSeconds must be 1 to 86400",
        ),
        (json!({"url": url, "every": 5}), "unknown field"),
    ] {
        let (status, _, resp) = call(&h, "POST", "/api/monitors", &body.to_string()).await;
        assert_eq!(status, 400);
        assert!(resp["error"].as_str().unwrap().contains(msg), "{resp}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_wait_for_a_decision_or_time_out() {
    // Approvers get a week, in virtual time.
    let time = VirtualTime::new();
    let h = host_in(&time).await;
    let request = |doc: &str, approver: &str, timeout: u64| {
        json!({"document": doc, "approver": approver, "timeoutSeconds": timeout}).to_string()
    };
    let week = 7 * 86_400;
    // Approved through the link in the mail, three days later.
    let status_path = start(
        &h,
        "/api/approvals",
        &request("Q3 budget", "boss-a@corp.test", week),
    )
    .await;
    time.idle().await.unwrap();
    let mail = mailbox(&h, "boss-a@corp.test").await[0].clone();
    assert_eq!(mail["subject"], "Approval needed: Q3 budget");
    let approve = path_of(&h, mail["links"][0].as_str().unwrap());
    let reject = path_of(&h, mail["links"][1].as_str().unwrap());
    assert!(approve.ends_with("/approve") && reject.ends_with("/reject"));
    let (status, _, s) = call(&h, "GET", &status_path, "").await;
    assert_eq!(
        (status, &s["customStatus"]),
        (202, &json!("AwaitingApproval"))
    );
    time.advance(3 * DAY).await.unwrap();
    let (status, _, s) = call(&h, "GET", &status_path, "").await;
    assert_eq!((status, &s["runtimeStatus"]), (202, &json!("Running")));
    let (status, _, body) = call(&h, "GET", &approve, "").await;
    assert_eq!((status, &body["decision"]), (202, &json!("approve")));
    let done = finish(&h, &status_path).await;
    assert_eq!(
        done["output"],
        json!({"document": "Q3 budget", "outcome": "Approved"})
    );
    // Too late to change one's mind.
    let (status, _, body) = call(&h, "GET", &reject, "").await;
    assert_eq!(status, 410);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no longer waiting"),
        "{body}"
    );
    let outcome_mail = mailbox(&h, "boss-a@corp.test").await;
    assert_eq!(
        outcome_mail.last().unwrap()["subject"],
        "Q3 budget: Approved"
    );

    // Rejected.
    let status_path = start(
        &h,
        "/api/approvals",
        &request("New logo", "boss-b@corp.test", week),
    )
    .await;
    time.idle().await.unwrap();
    let mail = mailbox(&h, "boss-b@corp.test").await[0].clone();
    let (status, _, _) = call(
        &h,
        "POST",
        &path_of(&h, mail["links"][1].as_str().unwrap()),
        "",
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        finish(&h, &status_path).await["output"]["outcome"],
        "Rejected"
    );

    // Nobody answers: after a week less an hour it still waits; then the timer wins.
    let status_path = start(
        &h,
        "/api/approvals",
        &request("Holiday", "boss-c@corp.test", week),
    )
    .await;
    time.advance(7 * DAY - HOUR).await.unwrap();
    let (status, _, s) = call(&h, "GET", &status_path, "").await;
    assert_eq!(
        (status, &s["customStatus"]),
        (202, &json!("AwaitingApproval"))
    );
    time.advance(HOUR).await.unwrap();
    assert_eq!(
        finish(&h, &status_path).await["output"]["outcome"],
        "TimedOut"
    );
    let mails = mailbox(&h, "boss-c@corp.test").await;
    assert_eq!(mails.last().unwrap()["subject"], "Holiday: TimedOut");
    let (status, _, _) = call(
        &h,
        "GET",
        &path_of(&h, mails[0]["links"][0].as_str().unwrap()),
        "",
    )
    .await;
    assert_eq!(status, 410);

    let (status, _, body) = call(&h, "GET", "/api/approvals/some-id/maybe", "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            400,
            Some("'maybe' is not a decision: use approve or reject")
        )
    );
    let (status, _, _) = call(&h, "GET", "/api/approvals/no-such-approval/approve", "").await;
    assert_eq!(status, 404);
    for (body, msg) in [
        (
            request("", "a@b.test", 5),
            "document must be 1 to 200 characters",
        ),
        (
            request("Doc", "nobody", 5),
            "approver 'nobody' is not an email address",
        ),
        (
            request("Doc", "a@b.test", 0),
            "timeoutSeconds must be 1 to 2592000",
        ),
    ] {
        let (status, _, resp) = call(&h, "POST", "/api/approvals", &body).await;
        assert_eq!((status, resp["error"].as_str()), (400, Some(msg)));
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_badly_shaped_decision_is_rejected_and_the_approval_keeps_waiting() {
    let h = host().await;
    let body =
        json!({"document": "Q4 plan", "approver": "boss-d@corp.test", "timeoutSeconds": 600});
    let status_path = start(&h, "/api/approvals", &body.to_string()).await;
    let id = status_path.rsplit('/').next().unwrap().to_string();
    until(&h, &status_path, "awaiting approval", |b| {
        b["customStatus"] == "AwaitingApproval"
    })
    .await;
    // Raised by hand with the wrong shape: rejected, and the approval still waits.
    h.client()
        .raise_event_json(
            &id,
            durable_examples::order_processing::approval::DECISION_EVENT,
            Some(r#"{"approved": "yes"}"#.into()),
        )
        .await
        .unwrap();
    let s = until(&h, &status_path, "the rejection", |b| {
        b["customStatus"]
            .as_str()
            .is_some_and(|s| s.starts_with("AwaitingApproval (ignored a malformed decision"))
    })
    .await;
    assert!(
        s["customStatus"]
            .as_str()
            .unwrap()
            .contains("expected a boolean"),
        "{s}"
    );
    let (status, _, s) = call(&h, "GET", &status_path, "").await;
    assert_eq!((status, &s["runtimeStatus"]), (202, &json!("Running")));
    // A well-formed decision, sent as Durable Functions' Python client sends it (JSON in
    // a JSON string), ends it.
    h.client()
        .raise_event_json(
            &id,
            durable_examples::order_processing::approval::DECISION_EVENT,
            Some(r#""{\"approved\": true}""#.into()),
        )
        .await
        .unwrap();
    let done = finish(&h, &status_path).await;
    assert_eq!(
        done["output"],
        json!({"document": "Q4 plan", "outcome": "Approved"})
    );
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// durable_search

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_search_fans_out_to_the_sites_and_a_watcher_long_polls_it() {
    let h = host().await;
    let (status, headers, page) = call(&h, "GET", "/api/search", "").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = page.as_str().unwrap();
    assert!(
        page.contains("const root = location.pathname"),
        "the page finds its routes from its own address"
    );
    assert!(page.contains("<input id=\"query\""));

    let (status, _, started) =
        call(&h, "POST", "/api/search/start?q=durable%20%3Crust%3E", "").await;
    assert_eq!(status, 200, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let result = path_of(&h, started["resultUrl"].as_str().unwrap());
    assert_eq!(result, format!("/api/search/results/{id}"));

    let mut html = String::new();
    for _ in 0..400 {
        let (status, headers, body) = call(&h, "GET", &result, "").await;
        if status == 200 {
            assert!(headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"));
            html = body.as_str().unwrap().to_string();
            break;
        }
        assert_eq!(status, 202, "{body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let pages: Vec<&str> = html.split("<hr/>").collect();
    assert_eq!(pages.len(), 4, "{html}");
    assert!(
        pages[0].starts_with("<h2>Fast Search</h2><p>3 results for <b>durable &lt;rust&gt;</b>"),
        "{}",
        pages[0]
    );
    assert!(
        pages[1].starts_with("<h2>Slow Search</h2><p>2 results"),
        "{}",
        pages[1]
    );
    assert_eq!(pages[2], "<h1>No Results</h1><p>broken answered 500</p>");
    assert_eq!(
        pages[3],
        "<h1>No Results</h1><p>offline could not be reached</p>"
    );

    // The slow site was polled on durable timers by the HTTP task.
    let history = inspect(&h, &id).await.history.unwrap();
    let timers = history
        .iter()
        .filter(|e| matches!(e.kind, durable_core::EventKind::TimerCreated { .. }))
        .count();
    assert_eq!(timers, 2);

    // The watcher saw the search through to its 200.
    let watcher = finish(
        &h,
        &format!("/api/instances/{}", started["watcherId"].as_str().unwrap()),
    )
    .await;
    assert_eq!(watcher["runtimeStatus"], "Completed");
    assert_eq!(watcher["output"], 200);

    // Unknown, failed and malformed.
    let (status, _, _) = call(&h, "GET", "/api/search/results/no-such-search", "").await;
    assert_eq!(status, 404);
    let (status, _, _) = call(
        &h,
        "GET",
        &format!(
            "/api/search/results/{}",
            started["watcherId"].as_str().unwrap()
        ),
        "",
    )
    .await;
    assert_eq!(status, 404, "a watcher is not a search");
    // Mistyped input fails at the host's door; a client without the registry (another
    // process, say) can still store it, and the instance fails.
    assert!(h
        .client()
        .start_by_name("search_workflow", Some("42".into()), Default::default())
        .await
        .is_err());
    let broken = durable_core::DurableClient::new(h.client().store().clone())
        .start_by_name("search_workflow", Some("42".into()), Default::default())
        .await
        .unwrap();
    h.client()
        .wait_for_completion(&broken, Duration::from_secs(30))
        .await
        .unwrap();
    let (status, _, body) = call(&h, "GET", &format!("/api/search/results/{broken}"), "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("Orchestration failed."))
    );
    let (status, _, body) = call(&h, "GET", "/api/search/start", "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("give a query: ?q=..."))
    );
    let long = "x".repeat(201);
    let (status, _, _) = call(&h, "GET", &format!("/api/search/start?q={long}"), "").await;
    assert_eq!(status, 400);
    let (status, _, _) = call(&h, "GET", "/api/search/sites/nowhere?q=a", "").await;
    assert_eq!(status, 404);
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// approval_workflow

mod files {
    use super::*;
    use durable_examples::approval_workflow::{spawn_watcher, WorkflowConfig};
    use std::path::{Path, PathBuf};

    fn temp_root(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "durable-approval-{tag}-{}-{}",
            std::process::id(),
            durable_core::store::random_id()
        ));
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    /// Drops a request the safe way: written aside, then moved in.
    fn drop_request(root: &Path, name: &str, content: &str) {
        let aside = root.join(format!(".{name}.part"));
        std::fs::write(&aside, content).unwrap();
        std::fs::rename(&aside, root.join("requests").join(name)).unwrap();
    }

    /// Waits for the outbox email about `file`; returns its (approve, reject) links.
    async fn email_for(root: &Path, file: &str) -> (String, String) {
        for _ in 0..600 {
            for entry in std::fs::read_dir(root.join("outbox")).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "html") {
                    let html = std::fs::read_to_string(&path).unwrap();
                    if html.contains(&format!("<b>{file}</b>")) {
                        let links: Vec<String> = html
                            .split("href=\"")
                            .skip(1)
                            .map(|s| s.split('"').next().unwrap().to_string())
                            .collect();
                        return (links[0].clone(), links[1].clone());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no email about {file}");
    }

    fn instance_of(link: &str) -> String {
        link.rsplit('/').nth(1).unwrap().to_string()
    }

    fn config(h: &RunningHost, root: &Path, timeout: Duration) -> WorkflowConfig {
        let cfg = WorkflowConfig {
            root: root.to_path_buf(),
            base_url: h.url(),
            timeout,
            approver: "cat-boss@furry.test".into(),
            scan_every: Duration::from_millis(20),
            smtp: None,
        };
        cfg.ensure_dirs().unwrap();
        cfg
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_files_are_approved_or_rejected_by_link_or_by_timeout() {
        let time = VirtualTime::new();
        let h = host_in(&time).await;
        let root = temp_root("links");
        let watcher = spawn_watcher(h.client(), config(&h, &root, Duration::from_secs(600)));
        drop_request(&root, "whiskers.jpg", "meow");
        drop_request(&root, "tom.png", "hiss");

        let (approve, _) = email_for(&root, "whiskers.jpg").await;
        let (_, reject) = email_for(&root, "tom.png").await;
        let html = std::fs::read_to_string(
            root.join("outbox")
                .join(format!("{}.html", instance_of(&approve))),
        )
        .unwrap();
        assert!(html.contains("To: cat-boss@furry.test"));
        let status_whiskers = format!("/api/instances/{}", instance_of(&approve));
        until(&h, &status_whiskers, "awaiting a decision", |b| {
            b["customStatus"]["state"] == "AwaitingDecision"
        })
        .await;
        let (status, _, s) = call(&h, "GET", &status_whiskers, "").await;
        assert_eq!(
            (status, &s["customStatus"]["state"]),
            (202, &json!("AwaitingDecision"))
        );

        let (status, _, _) = call(&h, "GET", &path_of(&h, &approve), "").await;
        assert_eq!(status, 202);
        let (status, _, _) = call(&h, "GET", &path_of(&h, &reject), "").await;
        assert_eq!(status, 202);
        let done = finish(&h, &status_whiskers).await;
        assert_eq!(
            done["output"],
            json!({"file": "whiskers.jpg", "outcome": "Approved", "reason": "approved by cat-boss@furry.test", "movedTo": "approved/whiskers.jpg"})
        );
        let done = finish(&h, &format!("/api/instances/{}", instance_of(&reject))).await;
        assert_eq!(done["output"]["outcome"], "Rejected");
        assert_eq!(done["output"]["movedTo"], "rejected/tom.png");
        assert_eq!(
            std::fs::read_to_string(root.join("approved/whiskers.jpg")).unwrap(),
            "meow"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("rejected/tom.png")).unwrap(),
            "hiss"
        );
        assert_eq!(std::fs::read_dir(root.join("requests")).unwrap().count(), 0);
        // One instance (and one email) per file, however often the folder was scanned.
        assert_eq!(std::fs::read_dir(root.join("outbox")).unwrap().count(), 2);

        // A decided request cannot be decided again.
        let (status, _, body) = call(
            &h,
            "GET",
            &path_of(&h, &approve).replace("/approve", "/reject"),
            "",
        )
        .await;
        assert_eq!(status, 410, "{body}");
        let (status, _, _) =
            call(&h, "GET", "/api/approval-requests/req-unknown/approve", "").await;
        assert_eq!(status, 404);
        let (status, _, body) = call(
            &h,
            "POST",
            &path_of(&h, &approve).replace("/approve", "/perhaps"),
            "",
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (
                400,
                Some("'perhaps' is not a decision: use approve or reject")
            )
        );
        watcher.abort();

        // Nobody answers for a week: the timeout rejects.
        let root2 = temp_root("timeout");
        let watcher = spawn_watcher(h.client(), config(&h, &root2, 7 * DAY));
        drop_request(&root2, "garfield.gif", "lasagna");
        let (approve, _) = email_for(&root2, "garfield.gif").await;
        let status_garfield = format!("/api/instances/{}", instance_of(&approve));
        time.advance(7 * DAY - HOUR).await.unwrap();
        let (status, _, s) = call(&h, "GET", &status_garfield, "").await;
        assert_eq!(
            (status, &s["customStatus"]["state"]),
            (202, &json!("AwaitingDecision"))
        );
        time.advance(HOUR).await.unwrap();
        let done = finish(&h, &status_garfield).await;
        assert_eq!(done["output"]["outcome"], "Rejected");
        assert_eq!(done["output"]["reason"], "no decision within 604800 s");
        assert!(root2.join("rejected/garfield.gif").exists());
        let (status, _, _) = call(&h, "GET", &path_of(&h, &approve), "").await;
        assert_eq!(status, 410);
        watcher.abort();
        h.shutdown().await;
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&root2);
    }

    /// A mail received by [`smtp_sink`].
    #[derive(Debug)]
    struct Mail {
        from: String,
        to: Vec<String>,
        /// The message as sent (headers and body), soft line breaks of quoted-printable
        /// bodies joined and `=XX` escapes decoded.
        text: String,
    }

    /// Decodes quoted-printable text (RFC 2045), enough for a mail's ASCII body.
    fn unquote(qp: &str) -> String {
        let joined = qp.replace("=\r\n", "");
        let bytes = joined.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'=' && i + 2 < bytes.len() {
                if let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A local SMTP server that accepts every mail and hands it over the channel: the
    /// approver's mailbox in the test.
    async fn smtp_sink() -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Mail>,
    ) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut r = BufReader::new(r);
                    w.write_all(b"220 sink.test ESMTP\r\n").await.unwrap();
                    let (mut from, mut to) = (String::new(), Vec::new());
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let cmd = line.trim_end().to_string();
                        let upper = cmd.to_ascii_uppercase();
                        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO")
                        {
                            b"250 sink.test\r\n"
                        } else if upper.starts_with("MAIL FROM:") {
                            from = cmd[10..].trim().to_string();
                            b"250 OK\r\n"
                        } else if upper.starts_with("RCPT TO:") {
                            to.push(cmd[8..].trim().to_string());
                            b"250 OK\r\n"
                        } else if upper == "DATA" {
                            w.write_all(b"354 go ahead\r\n").await.unwrap();
                            let mut data = String::new();
                            loop {
                                line.clear();
                                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if line == ".\r\n" {
                                    break;
                                }
                                // Dot-stuffing (RFC 5321 4.5.2).
                                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                            }
                            let mail = Mail {
                                from: std::mem::take(&mut from),
                                to: std::mem::take(&mut to),
                                text: unquote(&data),
                            };
                            let _ = tx.send(mail);
                            b"250 queued\r\n"
                        } else if upper == "QUIT" {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        } else if upper == "RSET" || upper == "NOOP" {
                            b"250 OK\r\n"
                        } else {
                            b"502 not implemented\r\n"
                        };
                        w.write_all(reply).await.unwrap();
                    }
                });
            }
        });
        (addr, rx)
    }

    /// The link after `label` in a mail's text.
    fn link_in(mail: &Mail, label: &str) -> String {
        let at = mail
            .text
            .find(label)
            .unwrap_or_else(|| panic!("{label} in {mail:?}"));
        mail.text[at + label.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn approval_mail_goes_out_over_smtp_and_its_link_decides() {
        let time = VirtualTime::new();
        let h = host_in(&time).await;
        let (smtp, mut inbox) = smtp_sink().await;
        let root = temp_root("smtp");
        let mut cfg = config(&h, &root, 7 * DAY);
        cfg.smtp = Some(
            durable_examples::approval_workflow::SmtpServer::parse(
                &smtp.to_string(),
                "approvals@cattery.test",
            )
            .unwrap(),
        );
        let watcher = spawn_watcher(h.client(), cfg);
        drop_request(&root, "felix.png", "purr");
        let mail = tokio::time::timeout(Duration::from_secs(30), inbox.recv())
            .await
            .expect("the approval mail within 30 s")
            .unwrap();
        assert_eq!(mail.from, "<approvals@cattery.test>");
        assert_eq!(mail.to, ["<cat-boss@furry.test>"]);
        assert!(
            mail.text.contains("Subject: Approval request: felix.png"),
            "{mail:?}"
        );
        assert!(mail.text.contains("To: cat-boss@furry.test"), "{mail:?}");
        let approve = link_in(&mail, "Approve: ");
        assert!(
            approve.starts_with(&h.url()) && approve.ends_with("/approve"),
            "{approve}"
        );
        let status_felix = format!("/api/instances/{}", instance_of(&approve));

        // Three days later, the approver follows the link.
        time.advance(3 * DAY).await.unwrap();
        let (status, _, s) = call(&h, "GET", &status_felix, "").await;
        assert_eq!(
            (status, &s["customStatus"]["state"]),
            (202, &json!("AwaitingDecision"))
        );
        let (status, _, _) = call(&h, "GET", &path_of(&h, &approve), "").await;
        assert_eq!(status, 202);
        let done = finish(&h, &status_felix).await;
        assert_eq!(done["output"]["outcome"], "Approved");
        assert_eq!(
            std::fs::read_to_string(root.join("approved/felix.png")).unwrap(),
            "purr"
        );

        // The next request is rejected through the link in its mail.
        drop_request(&root, "grumpy.png", "no");
        let mail = tokio::time::timeout(Duration::from_secs(30), inbox.recv())
            .await
            .expect("the second mail")
            .unwrap();
        let reject = link_in(&mail, "Reject: ");
        let (status, _, _) = call(&h, "POST", &path_of(&h, &reject), "").await;
        assert_eq!(status, 202);
        let done = finish(&h, &format!("/api/instances/{}", instance_of(&reject))).await;
        assert_eq!(done["output"]["outcome"], "Rejected");
        assert_eq!(done["output"]["reason"], "rejected by cat-boss@furry.test");
        watcher.abort();
        h.shutdown().await;
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mail_server_that_is_down_is_retried_on_durable_timers() {
        let time = VirtualTime::new();
        let h = host_in(&time).await;
        // A port nobody listens on (bound, then released).
        let down = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let root = temp_root("smtp-down");
        let mut cfg = config(&h, &root, 7 * DAY);
        cfg.smtp = Some(
            durable_examples::approval_workflow::SmtpServer::parse(&down.to_string(), "a@b.test")
                .unwrap(),
        );
        let client = h.client();
        std::fs::write(root.join("requests/kitty.png"), "mew").unwrap();
        let started = durable_examples::approval_workflow::scan_once(&client, &cfg)
            .await
            .unwrap();
        let id = started[0].clone();
        // Five attempts, thirty seconds apart in virtual time, then the instance fails.
        let status_path = format!("/api/instances/{id}");
        time.advance(Duration::from_secs(600)).await.unwrap();
        let done = finish(&h, &status_path).await;
        assert_eq!(done["runtimeStatus"], "Failed", "{done}");
        let history = client
            .get_status(
                &id,
                durable_core::StatusOptions {
                    show_input: false,
                    show_history: true,
                },
            )
            .await
            .unwrap()
            .unwrap()
            .history
            .unwrap();
        let failures = history
            .iter()
            .filter(|e| matches!(e.kind, durable_core::EventKind::TaskFailed { .. }))
            .count();
        assert_eq!(failures, 5);
        h.shutdown().await;
        let _ = std::fs::remove_dir_all(&root);
    }
}
