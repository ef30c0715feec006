//! `/metrics` scraped over real HTTP: the key it needs, the separate listener, and values
//! that move as instances, activities and requests go through the host.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use durable_core::{
    ActivityError, MemoryStore, OrchestrationContext, OrchestrationError, Registry,
};
use durable_http::{ClientExt, Host, RunningHost};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

const KEY: &str = "metrics-key-0123456789abcdef";

fn registry() -> Registry {
    Registry::builder()
        .activity("say_hello", |_ctx, city: String| async move {
            Ok::<_, ActivityError>(format!("Hello {city}!"))
        })
        .activity("fail", |_ctx, _: ()| async move {
            Err::<(), _>(ActivityError::new("boom"))
        })
        .orchestrator(
            "hello",
            |ctx: OrchestrationContext, cities: Vec<String>| async move {
                let mut out = Vec::new();
                for c in cities {
                    out.push(ctx.call_activity_by_name::<String>("say_hello", &c).await?);
                }
                Ok::<_, OrchestrationError>(out)
            },
        )
        .orchestrator("failing", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_activity_by_name::<()>("fail", &()).await?;
            Ok::<_, OrchestrationError>(())
        })
        .orchestrator("wait", |ctx: OrchestrationContext, _: ()| async move {
            let v: Value = ctx.wait_for_external_event("go").await?;
            Ok::<_, OrchestrationError>(v)
        })
        .build()
        .unwrap()
}

async fn host() -> RunningHost {
    Host::builder()
        .addr("127.0.0.1:0")
        .metrics_addr("127.0.0.1:0")
        .store(Arc::new(MemoryStore::new()))
        .key(KEY)
        .registry(registry())
        .without_registered_routes()
        .route(&["POST"], "/api/start/{name}", |client, req| async move {
            let name = req.param("name").unwrap_or_default().to_string();
            let input =
                (!req.body().is_empty()).then(|| String::from_utf8_lossy(req.body()).into());
            let id = client
                .start_by_name(&name, input, Default::default())
                .await?;
            Ok(client.check_status_response(&req, &id))
        })
        .build()
        .unwrap()
        .bind()
        .await
        .unwrap()
}

struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Every sample of a scrape: `name{labels}` to value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line has a value");
            (series.to_string(), value.parse().expect("a numeric value"))
        })
        .collect()
}

async fn scrape(h: &RunningHost) -> (String, HashMap<String, f64>) {
    let r = call(h.addr, "GET", "/metrics", &[("x-functions-key", KEY)], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = samples(&r.body);
    (r.body, s)
}

fn value(s: &HashMap<String, f64>, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

async fn start(h: &RunningHost, name: &str, input: &str) -> String {
    let r = call(h.addr, "POST", &format!("/api/start/{name}"), &[], input).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// Waits until the management status of `id` is `status`, with a deadline.
async fn wait_status(h: &RunningHost, id: &str, status: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = call(
            h.addr,
            "GET",
            &format!("/runtime/webhooks/durabletask/instances/{id}"),
            &[("x-functions-key", KEY)],
            "",
        )
        .await;
        let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        if v["runtimeStatus"] == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never became {status}: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_key_on_the_host_listener_and_none_on_their_own() {
    let h = host().await;
    let no_key = call(h.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(no_key.status, 401);
    let wrong = call(
        h.addr,
        "GET",
        "/metrics",
        &[("x-functions-key", "not-the-key-at-all-0000")],
        "",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let wrong_bearer = call(
        h.addr,
        "GET",
        "/metrics",
        &[("authorization", "Bearer not-the-key-at-all-0000")],
        "",
    )
    .await;
    assert_eq!(wrong_bearer.status, 401);

    let bearer = format!("Bearer {KEY}");
    let ok = call(h.addr, "GET", "/metrics", &[("authorization", &bearer)], "").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    assert!(
        ok.body.contains("# TYPE durable_http_requests counter"),
        "{}",
        ok.body
    );
    assert!(
        ok.body
            .contains("# TYPE durable_store_commit_batch_size histogram"),
        "{}",
        ok.body
    );
    assert!(ok.body.ends_with("# EOF\n"), "{}", ok.body);
    let by_query = call(h.addr, "GET", &format!("/metrics?code={KEY}"), &[], "").await;
    assert_eq!(by_query.status, 200);

    let post = call(h.addr, "POST", "/metrics", &[("x-functions-key", KEY)], "").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET");

    // The separate listener answers without a key, and nothing else.
    let at = h.metrics_addr.expect("a metrics listener");
    let open = call(at, "GET", "/metrics", &[], "").await;
    assert_eq!(open.status, 200);
    assert!(
        open.body.contains("durable_http_requests_total"),
        "{}",
        open.body
    );
    assert_eq!(
        call(at, "GET", "/api/start/hello", &[], "").await.status,
        404
    );
    assert_eq!(
        call(
            at,
            "GET",
            "/runtime/webhooks/durabletask/instances",
            &[],
            ""
        )
        .await
        .status,
        404
    );
    assert_eq!(call(at, "DELETE", "/metrics", &[], "").await.status, 405);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_values_follow_instances_activities_and_requests() {
    let h = host().await;
    let (_, before) = scrape(&h).await;

    let a = start(&h, "hello", r#"["Rome","Oslo"]"#).await;
    let b = start(&h, "hello", r#"["Lima"]"#).await;
    let f = start(&h, "failing", "").await;
    let w = start(&h, "wait", "").await;
    wait_status(&h, &a, "Completed").await;
    wait_status(&h, &b, "Completed").await;
    wait_status(&h, &f, "Failed").await;
    wait_status(&h, &w, "Running").await;
    let r = call(
        h.addr,
        "POST",
        &format!("/runtime/webhooks/durabletask/instances/{w}/terminate?reason=test"),
        &[("x-functions-key", KEY)],
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&h, &w, "Terminated").await;
    // The public status route, with an id in its path.
    let r = call(h.addr, "GET", &format!("/api/instances/{a}"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A path no route has.
    assert_eq!(
        call(h.addr, "GET", "/no/such/path/x1", &[], "")
            .await
            .status,
        404
    );

    // Leases are given back just after the commits the statuses show: wait for that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (text, after) = loop {
        let (text, after) = scrape(&h).await;
        let held = value(&after, r#"durable_leases_held{kind="activity"}"#)
            + value(&after, r#"durable_leases_held{kind="orchestration"}"#);
        if held == 0.0 {
            break (text, after);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leases never given back: {text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        delta(r#"durable_instances_started_total{orchestrator="hello"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"durable_instances_finished_total{orchestrator="hello",status="completed"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"durable_instances_finished_total{orchestrator="failing",status="failed"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"durable_instances_finished_total{orchestrator="wait",status="terminated"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"durable_activity_executions_total{activity="say_hello",outcome="completed"}"#),
        3.0
    );
    assert_eq!(
        delta(r#"durable_activity_executions_total{activity="fail",outcome="failed"}"#),
        1.0
    );
    assert_eq!(
        delta(
            r#"durable_activity_duration_seconds_count{activity="say_hello",outcome="completed"}"#
        ),
        3.0
    );
    let episodes: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("durable_episodes_total{kind=\"orchestration\""))
        .map(|(_, v)| v)
        .sum();
    // Each instance runs at least one episode per step.
    assert!(episodes >= 4.0 + 3.0 + 1.0, "{text}");
    assert!(
        value(
            &after,
            r#"durable_episodes_total{kind="orchestration",source="new"}"#
        ) >= 4.0,
        "{text}"
    );
    assert!(
        value(
            &after,
            r#"durable_schedule_to_start_seconds_count{kind="orchestration"}"#
        ) >= 4.0,
        "{text}"
    );
    // Every activity attempt that started (3 say_hello, 1 fail) observed the delay since
    // its work item was stored.
    assert_eq!(
        delta(r#"durable_schedule_to_start_seconds_count{kind="activity"}"#),
        4.0,
        "{text}"
    );
    assert!(
        delta(r#"durable_schedule_to_start_seconds_sum{kind="activity"}"#) >= 0.0,
        "{text}"
    );
    assert!(
        value(
            &after,
            r#"durable_store_commit_duration_seconds_count{op="episode"}"#
        ) >= 4.0,
        "{text}"
    );
    assert!(
        value(&after, "durable_store_commit_batch_size_count") >= 4.0,
        "{text}"
    );
    // Every lease was held for a while and given back; nothing is pending.
    assert!(
        text.contains(r#"durable_leases_held{kind="activity"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"durable_leases_held{kind="orchestration"} 0"#),
        "{text}"
    );
    assert_eq!(
        value(
            &after,
            r#"durable_pending_work_items{kind="orchestration"}"#
        ),
        0.0
    );
    assert!(
        text.contains(r#"durable_pending_work_items{kind="activity"} 0"#),
        "{text}"
    );

    // HTTP requests by route pattern and status, never by raw path.
    assert_eq!(
        delta(
            r#"durable_http_requests_total{route="/api/start/{name}",method="POST",status="202"}"#
        ),
        4.0
    );
    assert_eq!(
        delta(
            r#"durable_http_requests_total{route="/api/instances/{id}",method="GET",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        delta(
            r#"durable_http_requests_total{route="/runtime/webhooks/durabletask/instances/{id}/{operation}",method="POST",status="202"}"#
        ),
        1.0
    );
    assert!(
        delta(r#"durable_http_requests_total{route="/metrics",method="GET",status="200"}"#) >= 1.0,
        "{text}"
    );
    assert_eq!(
        delta(r#"durable_http_requests_total{route="unmatched",method="GET",status="404"}"#),
        1.0
    );
    assert!(
        value(
            &after,
            r#"durable_http_request_duration_seconds_count{route="/api/start/{name}"}"#
        ) >= 4.0
    );
    for raw in [&a, &b, &f, &w] {
        assert!(
            !text.contains(raw.as_str()),
            "an instance id leaked into a label"
        );
    }
    assert!(!text.contains("x1"), "a raw path leaked into a label");
    h.shutdown().await;
}

/// Waits until `cond` holds, failing after 10 s.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_separate_listener_goes_through_the_layers_and_caps_its_connections() {
    let h = Host::builder()
        .addr("127.0.0.1:0")
        .metrics_addr("127.0.0.1:0")
        .store(Arc::new(MemoryStore::new()))
        .key(KEY)
        .registry(registry())
        .without_registered_routes()
        .body_limit(16)
        .max_connections(2)
        .header_read_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .bind()
        .await
        .unwrap();
    let at = h.metrics_addr.expect("a metrics listener");

    // Its requests are counted, by pattern, in the metrics it serves.
    assert_eq!(call(at, "GET", "/metrics", &[], "").await.status, 200);
    assert_eq!(call(at, "GET", "/nothing/here", &[], "").await.status, 404);
    let text = call(at, "GET", "/metrics", &[], "").await.body;
    let s = samples(&text);
    assert_eq!(
        value(
            &s,
            r#"durable_http_requests_total{route="/metrics",method="GET",status="200"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &s,
            r#"durable_http_requests_total{route="unmatched",method="GET",status="404"}"#
        ),
        1.0,
        "{text}"
    );
    // The body limit, with the host's error body.
    let big = call(at, "POST", "/metrics", &[], &"x".repeat(100)).await;
    assert_eq!(big.status, 413, "{}", big.body);
    assert_eq!(
        big.body,
        r#"{"error":"the request body is 100 bytes or more, over the limit of 16 bytes"}"#
    );

    // The connection cap: two connections that send nothing hold it; one more waits in
    // the backlog until one of them leaves.
    let mut holders = Vec::new();
    for _ in 0..2 {
        holders.push(tokio::net::TcpStream::connect(at).await.unwrap());
    }
    until("the cap filled", || h.open_metrics_connections() == 2).await;
    let mut waiting = tokio::spawn(call(at, "GET", "/metrics", &[], ""));
    let early = tokio::time::timeout(Duration::from_millis(500), &mut waiting).await;
    assert!(early.is_err(), "a connection over the cap was served");
    assert_eq!(h.open_metrics_connections(), 2);
    // The host's own listener has a cap of its own.
    assert_eq!(h.open_connections(), 0);
    let r = call(h.addr, "GET", "/metrics", &[("x-functions-key", KEY)], "").await;
    assert_eq!(r.status, 200);
    holders.clear();
    let served = waiting.await.unwrap();
    assert_eq!(served.status, 200);
    until("the metrics connections closed", || {
        h.open_metrics_connections() == 0
    })
    .await;
    h.shutdown().await;
}
