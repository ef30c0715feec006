//! The examples against hostile requests: spoofed headers never pick the URLs the server
//! calls or the pages it serves, public links act only on their own orchestrator's
//! instances, fan-outs from user input are bounded, and money never overflows.

use std::time::Duration;

use durable_core::EventKind;
use durable_examples::bank::{transfer, Transfer};
use durable_http::RunningHost;
use serde_json::{json, Value};

mod support;
use support::{call, call_with, host, inspect, path_of};

const SPOOF: [(&str, &str); 4] = [
    ("host", "169.254.169.254"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "https"),
    ("forwarded", "host=evil.example;proto=https"),
];

async fn input_of(h: &RunningHost, id: &str) -> Value {
    let s = inspect(h, id).await;
    serde_json::from_str(s.state.input.as_deref().unwrap()).unwrap()
}

async fn instance_count(h: &RunningHost) -> usize {
    h.client()
        .list_instances(&Default::default(), 1000, None)
        .await
        .unwrap()
        .items
        .len()
}

/// Polls `path` until `cond` holds on its body, up to 20 s.
async fn until(h: &RunningHost, path: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, body) = call(h, "GET", path, "").await;
        if cond(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: never happened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_targets_and_the_watched_url_come_from_configuration_not_headers() {
    let h = host().await;
    let (status, _, started) = call_with(&h, "POST", "/api/search/start?q=rust", &SPOOF, "").await;
    assert_eq!(status, 200, "{started}");
    let own = format!("http://{}/", h.addr);
    let input = input_of(&h, started["id"].as_str().unwrap()).await;
    for site in input["sites"].as_array().unwrap() {
        let url = site["url"].as_str().unwrap();
        assert!(
            url.starts_with(&own) || url.starts_with("http://127.0.0.1:1/"),
            "{url}"
        );
    }
    let watched = input_of(&h, started["watcherId"].as_str().unwrap()).await;
    assert!(watched.as_str().unwrap().starts_with(&own), "{watched}");
    assert!(started["resultUrl"].as_str().unwrap().starts_with(&own));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailed_approval_links_and_status_urls_ignore_spoofed_headers() {
    let h = host().await;
    let own = format!("http://{}/", h.addr);
    let body = json!({"document": "Spoof", "approver": "spoof@corp.test", "timeoutSeconds": 60});
    let (status, headers, started) =
        call_with(&h, "POST", "/api/approvals", &SPOOF, &body.to_string()).await;
    assert_eq!(status, 202, "{started}");
    assert!(headers["location"].to_str().unwrap().starts_with(&own));
    let mails = until(&h, "/api/mailbox?to=spoof@corp.test", "the mail", |b| {
        b.as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    for link in mails[0]["links"].as_array().unwrap() {
        assert!(link.as_str().unwrap().starts_with(&own), "{link}");
    }
    let (status, _, job) = call_with(
        &h,
        "GET",
        "/api/submit/query?s=10/02/2021&e=10/05/2021",
        &SPOOF,
        "",
    )
    .await;
    assert_eq!(status, 200, "{job}");
    assert!(
        job["statusUri"].as_str().unwrap().starts_with(&own),
        "{job}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_page_embeds_nothing_from_the_request() {
    let h = host().await;
    let hostile = "x\"</script><script>alert(1)</script>";
    let (status, headers, page) = call_with(
        &h,
        "GET",
        "/api/search",
        &[("host", hostile), ("x-forwarded-host", hostile)],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let page = page.as_str().unwrap();
    assert!(!page.contains("alert(1)"), "{page}");
    assert_eq!(page.matches("<script").count(), 1);
    // Only the script with this answer's nonce may run: no inline handlers, and the
    // nonce is fresh each time.
    let csp = headers["content-security-policy"].to_str().unwrap();
    let scripts = csp
        .split(';')
        .find(|d| d.trim().starts_with("script-src"))
        .unwrap();
    assert!(
        scripts.contains("'nonce-") && !scripts.contains("unsafe-inline"),
        "{csp}"
    );
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert!(page.contains(&format!("<script nonce=\"{nonce}\">")));
    let (_, again, _) = call(&h, "GET", "/api/search", "").await;
    assert_ne!(
        again["content-security-policy"],
        headers["content-security-policy"]
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_links_act_only_on_their_own_orchestrators_instances() {
    let h = host().await;
    // A monitor (on this host's demo service) and an approval, both waiting.
    let health = format!("http://{}/api/demo/services/links-test/health", h.addr);
    let (status, headers, _) = call(
        &h,
        "POST",
        "/api/monitors",
        &json!({"url": health, "intervalSeconds": 3600}).to_string(),
    )
    .await;
    assert_eq!(status, 202);
    let monitor_status = path_of(&h, headers["location"].to_str().unwrap());
    let monitor_id = monitor_status.rsplit('/').next().unwrap().to_string();
    let (status, headers, _) = call(
        &h,
        "POST",
        "/api/approvals",
        &json!({"document": "Links", "approver": "links@corp.test", "timeoutSeconds": 600})
            .to_string(),
    )
    .await;
    assert_eq!(status, 202);
    let approval_status = path_of(&h, headers["location"].to_str().unwrap());
    let approval_id = approval_status.rsplit('/').next().unwrap().to_string();

    // Each public link refuses the other's instance: 404, nothing raised.
    for path in [
        format!("/api/approvals/{monitor_id}/approve"),
        format!("/api/approval-requests/{monitor_id}/reject"),
        format!("/api/approval-requests/{approval_id}/approve"),
        format!("/api/monitors/{approval_id}/stop"),
    ] {
        let method = if path.ends_with("stop") {
            "POST"
        } else {
            "GET"
        };
        let (status, _, body) = call(&h, method, &path, "").await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _, body) = call(&h, "GET", &format!("/api/status/{monitor_id}"), "").await;
    assert_eq!((status, &body["error"]), (404, &json!("Job not found")));

    // Their own links still work; the histories show only what those raised.
    let (status, _, _) = call(&h, "POST", &format!("/api/monitors/{monitor_id}/stop"), "").await;
    assert_eq!(status, 202);
    let (status, _, _) = call(
        &h,
        "GET",
        &format!("/api/approvals/{approval_id}/approve"),
        "",
    )
    .await;
    assert_eq!(status, 202);
    for (id, path, event) in [
        (&monitor_id, &monitor_status, "stop"),
        (&approval_id, &approval_status, "ApprovalDecision"),
    ] {
        until(&h, path, "the instance finished", |b| {
            b["runtimeStatus"] == "Completed"
        })
        .await;
        let history = inspect(&h, id).await.history.unwrap();
        let raised: Vec<&str> = history
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::EventRaised { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(raised, [event], "{id}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_check_only_this_hosts_urls_and_allowed_ones() {
    let h = host().await;
    let before = instance_count(&h).await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:1/",
        &format!("http://{}@evil.example/", h.addr),
        &format!("http://{}0/", h.addr),
    ] {
        let (status, _, body) = call(
            &h,
            "POST",
            "/api/monitors",
            &json!({"url": url, "intervalSeconds": 60}).to_string(),
        )
        .await;
        assert_eq!(status, 400, "{url}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("MONITOR_ALLOWED_URLS"),
            "{body}"
        );
    }
    assert_eq!(instance_count(&h).await, before, "nothing started");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_outs_from_user_input_are_bounded() {
    let h = host().await;
    let before = instance_count(&h).await;
    let many: Vec<String> = (0..101).map(|i| format!("City{i}")).collect();
    let (status, _, body) = call(&h, "POST", "/api/hello", &json!(many).to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "give at most 100 cities, got 101");
    let long = json!(["Lima", "x".repeat(101)]).to_string();
    let (status, _, body) = call(&h, "POST", "/api/hello", &long).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "city 1 is longer than 100 characters");
    let long = json!(["Task1", "t".repeat(201)]).to_string();
    let (status, _, body) = call(&h, "POST", "/api/fan-out", &long).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "task name 1 is longer than 200 characters");
    assert_eq!(instance_count(&h).await, before, "nothing started");
    // At the limits it runs.
    let most: Vec<String> = (0..100).map(|i| format!("{i:0>100}")).collect();
    let (status, _, _) = call(&h, "POST", "/api/hello", &json!(most).to_string()).await;
    assert_eq!(status, 202);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_amounts_never_overflow() {
    let h = host().await;
    let (status, _, _) = call(
        &h,
        "POST",
        "/api/accounts/rich/deposit",
        &i64::MAX.to_string(),
    )
    .await;
    assert_eq!(status, 202);
    let (status, _, _) = call(&h, "POST", "/api/accounts/poor/deposit", "10").await;
    assert_eq!(status, 202);
    until(&h, "/api/accounts/rich", "the deposit", |b| {
        b["balance"] == i64::MAX
    })
    .await;
    until(&h, "/api/accounts/poor", "the deposit", |b| {
        b["balance"] == 10
    })
    .await;
    // One more cent does not fit: refused with a clear error, nothing changes.
    let (status, _, body) = call(&h, "POST", "/api/accounts/rich/deposit", "1").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("would exceed the largest balance"),
        "{body}"
    );
    let t = json!({"from": "poor", "to": "rich", "amount": 5}).to_string();
    let (status, _, body) = call(&h, "POST", "/api/transfers", &t).await;
    assert_eq!(status, 400, "{body}");
    for amount in ["0", "-3"] {
        let t = format!(r#"{{"from": "poor", "to": "rich", "amount": {amount}}}"#);
        let (status, _, _) = call(&h, "POST", "/api/transfers", &t).await;
        assert_eq!(status, 400, "{amount}");
    }
    // The orchestration checks too (inside its critical section), so a transfer that
    // got past the endpoint moves nothing rather than stranding the money.
    let id = h
        .client()
        .start(
            transfer,
            Transfer {
                from: "poor".into(),
                to: "rich".into(),
                amount: 5,
            },
        )
        .await
        .unwrap();
    let moved: bool = h
        .client()
        .wait_for_output(&id, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(!moved);
    let (_, _, rich) = call(&h, "GET", "/api/accounts/rich", "").await;
    let (_, _, poor) = call(&h, "GET", "/api/accounts/poor", "").await;
    assert_eq!(
        (rich["balance"].as_i64(), poor["balance"].as_i64()),
        (Some(i64::MAX), Some(10))
    );
    h.shutdown().await;
}
