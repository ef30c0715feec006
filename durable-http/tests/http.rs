//! The host over real HTTP on an ephemeral port: start endpoints, the public status
//! endpoint, every management route and status code, keys, and bad input.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use durable_core::{
    ActivityError, EntityContext, MemoryStore, Operation, OrchestrationContext, OrchestrationError,
    Registry,
};
use durable_http::{ClientExt, Host, HttpError, RunningHost};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

const KEY: &str = "test-key-0123456789abcdef";

/// A counter whose operations' input types the door knows (`#[entity]` on an impl).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Tally {
    value: i64,
}

#[durable_core::entity]
impl Tally {
    pub fn add(&mut self, n: i64) -> i64 {
        self.value += n;
        self.value
    }
}

fn registry() -> Registry {
    Registry::builder()
        .with_inventory()
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
        .orchestrator("wait", |ctx: OrchestrationContext, _: ()| async move {
            ctx.set_custom_status("waiting");
            let v: Value = ctx.wait_for_external_event("go").await?;
            Ok::<_, OrchestrationError>(v)
        })
        .orchestrator("failing", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_activity_by_name::<()>("fail", &()).await?;
            Ok::<_, OrchestrationError>(())
        })
        .entity(
            "counter",
            |ctx: EntityContext<i64>, op: Operation| async move {
                let v = ctx.get_state_or_default()?;
                let v = match op.name.as_str() {
                    "add" => v + op.input::<i64>()?,
                    "delete" => {
                        ctx.delete_state();
                        return Ok(None);
                    }
                    _ => v,
                };
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
        .body_limit(16 * 1024)
        .without_registered_routes()
        .route(&["POST"], "/api/hello", |client, req| async move {
            let cities: Vec<String> = req.json()?;
            let id = client
                .start_by_name(
                    "hello",
                    Some(serde_json::to_string(&cities).unwrap()),
                    Default::default(),
                )
                .await?;
            Ok(client.check_status_response(&req, &id))
        })
        .route(&["POST"], "/api/hello-wait", |client, req| async move {
            let id = client
                .start_by_name("hello", Some("[\"Rome\"]".into()), Default::default())
                .await?;
            client
                .wait_for_completion_or_check_status_response(&req, &id, Duration::from_secs(20))
                .await
        })
        .route(
            &["POST"],
            "/api/start-wait/{name}",
            |client, req| async move {
                let name = req.param("name").unwrap_or_default().to_string();
                let ms: u64 = req.query("ms").and_then(|v| v.parse().ok()).unwrap_or(5000);
                let id = client
                    .start_by_name(&name, None, Default::default())
                    .await?;
                client
                    .wait_for_completion_or_check_status_response(
                        &req,
                        &id,
                        Duration::from_millis(ms),
                    )
                    .await
            },
        )
        .route(&["GET"], "/api/item/{id}", |_client, req| async move {
            let id = req.param("id").unwrap_or_default().to_string();
            if id == "missing" {
                return Err(HttpError::not_found("Job not found"));
            }
            Ok(durable_http::HttpResponse::json(
                http::StatusCode::OK,
                &json!({ "id": id }),
            ))
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
    body: Value,
}

async fn call(
    h: &RunningHost,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
) -> Resp {
    call_at(h.addr, method, path, headers, body).await
}

async fn call_at(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
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
        .send_request(
            req.body(Full::new(Bytes::copy_from_slice(body.as_ref())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Resp {
        status,
        headers,
        body,
    }
}

async fn mgmt(h: &RunningHost, method: &str, path: &str, body: impl AsRef<[u8]>) -> Resp {
    call(
        h,
        method,
        &format!("/runtime/webhooks/durabletask/{path}"),
        &[
            ("x-functions-key", KEY),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// Polls the management status of `id` until its body satisfies `done`.
async fn status_when(h: &RunningHost, id: &str, done: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(&mgmt(h, "GET", &format!("instances/{id}"), "").await.body) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance {id} never reached the expected state"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every item of a management list, following `x-ms-continuation-token` page by page as
/// Durable Functions' clients do: any token present is followed, so the last page must
/// carry none.
async fn list_all(h: &RunningHost, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..100 {
        let mut headers = vec![("x-functions-key", KEY)];
        if let Some(t) = &token {
            headers.push(("x-ms-continuation-token", t.as_str()));
        }
        let r = call(h, "GET", path, &headers, "").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        items.extend(r.body.as_array().unwrap().iter().cloned());
        token = r
            .headers
            .get("x-ms-continuation-token")
            .map(|v| v.to_str().unwrap().to_string());
        match &token {
            None => return items,
            Some(t) => assert!(
                !t.is_empty() && t != "null",
                "a token that ends nothing: {t:?}"
            ),
        }
    }
    panic!("{path}: the continuation tokens never ran out");
}

async fn count(h: &RunningHost) -> usize {
    h.client()
        .list_instances(&Default::default(), 1000, None)
        .await
        .unwrap()
        .items
        .len()
}

fn assert_error(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert!(
        r.body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "JSON error body: {:?}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_endpoint_answers_202_and_the_public_status_follows() {
    let h = host().await;
    let r = call(&h, "POST", "/api/hello", &[], r#"["Tokyo","Lima"]"#).await;
    assert_eq!(r.status, 202);
    let location = r.headers["location"].to_str().unwrap().to_string();
    assert_eq!(r.headers["retry-after"], "1");
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["statusQueryGetUri"], location);
    assert!(location.ends_with(&format!("/api/instances/{id}")));
    let text = r.body.to_string();
    assert!(
        !text.contains("runtime/webhooks") && !text.contains(KEY),
        "no management URLs or keys"
    );
    // Long-poll answers as soon as the instance finishes.
    let r = call(&h, "GET", &format!("/api/instances/{id}?wait=10s"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["runtimeStatus"], "Completed");
    assert_eq!(r.body["output"], json!(["Hello Tokyo!", "Hello Lima!"]));
    assert!(r.body.get("input").is_none());
    assert!(r.body["createdTime"].as_str().unwrap().ends_with('Z'));
    // A running instance answers 202 with Location, and the long-poll returns at its deadline.
    let wid = h
        .client()
        .start_by_name("wait", None, Default::default())
        .await
        .unwrap();
    status_when(&h, &wid, |b| b["customStatus"] == "waiting").await;
    let t = std::time::Instant::now();
    let r = call(
        &h,
        "GET",
        &format!("/api/instances/{wid}?wait=300ms"),
        &[],
        "",
    )
    .await;
    assert!(t.elapsed() >= Duration::from_millis(250));
    assert_eq!(r.status, 202);
    assert!(r.headers.contains_key("location"));
    assert_eq!(r.body["customStatus"], "waiting");
    // Unknown and malformed ids, bad waits.
    assert_error(&call(&h, "GET", "/api/instances/nope", &[], "").await, 404);
    assert_error(
        &call(&h, "GET", "/api/instances/%3Fbad", &[], "").await,
        400,
    );
    assert_error(
        &call(
            &h,
            "GET",
            &format!("/api/instances/{wid}?wait=forever"),
            &[],
            "",
        )
        .await,
        400,
    );
    assert_error(
        &call(&h, "POST", &format!("/api/instances/{wid}"), &[], "").await,
        405,
    );
    // The wait variant answers 200 with the output.
    let r = call(&h, "POST", "/api/hello-wait", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!(["Hello Rome!"]));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_json_and_changes_nothing() {
    let h = host().await;
    let before = count(&h).await;
    assert_error(&call(&h, "POST", "/api/hello", &[], "{not json").await, 400);
    let r = call(&h, "POST", "/api/hello", &[], r#"{"cities": 3}"#).await;
    assert_error(&r, 400);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("expected a sequence"),
        "{:?}",
        r.body
    );
    assert_error(&call(&h, "POST", "/api/hello", &[], "").await, 400);
    let big = format!("[\"{}\"]", "x".repeat(20_000));
    assert_error(&call(&h, "POST", "/api/hello", &[], &big).await, 413);
    assert_error(&call(&h, "GET", "/api/nowhere", &[], "").await, 404);
    let r = call(&h, "GET", "/api/hello", &[], "").await;
    assert_error(&r, 405);
    assert_eq!(r.headers["allow"], "POST");
    assert_error(&mgmt(&h, "POST", "orchestrators/no_such", "").await, 400);
    assert_error(&mgmt(&h, "POST", "orchestrators/hello", "{oops").await, 400);
    assert_error(
        &mgmt(&h, "POST", "orchestrators/hello/bad%3Fid", "[]").await,
        400,
    );
    assert_error(&mgmt(&h, "GET", "nowhere", "").await, 404);
    assert_eq!(count(&h).await, before, "nothing was started");
    // Route parameters and handler errors.
    let r = call(&h, "GET", "/api/item/abc", &[], "").await;
    assert_eq!(r.body["id"], "abc");
    let r = call(&h, "GET", "/api/item/missing", &[], "").await;
    assert_error(&r, 404);
    assert_eq!(r.body["error"], "Job not found");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_api_requires_the_key() {
    let h = host().await;
    let path = "/runtime/webhooks/durabletask/instances";
    assert_error(&call(&h, "GET", path, &[], "").await, 401);
    assert_error(
        &call(&h, "GET", path, &[("x-functions-key", "wrong")], "").await,
        401,
    );
    assert_error(
        &call(&h, "GET", &format!("{path}?code=wrong"), &[], "").await,
        401,
    );
    assert_error(
        &call(&h, "GET", "/runtime/webhooks/durabletask/unknown", &[], "").await,
        401,
    );
    assert_eq!(
        call(&h, "GET", &format!("{path}?code={KEY}"), &[], "")
            .await
            .status,
        200
    );
    assert_eq!(
        call(&h, "GET", path, &[("x-functions-key", KEY)], "")
            .await
            .status,
        200
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_routes_follow_the_reference_contract() {
    let h = host().await;
    // Start with a chosen id; the 202 carries management URLs without the key.
    let r = mgmt(&h, "POST", "orchestrators/wait/job-1", "").await;
    assert_eq!(r.status, 202);
    assert_eq!(r.body["id"], "job-1");
    for k in [
        "statusQueryGetUri",
        "sendEventPostUri",
        "terminatePostUri",
        "purgeHistoryDeleteUri",
        "restartPostUri",
        "suspendPostUri",
        "resumePostUri",
    ] {
        let url = r.body[k].as_str().unwrap();
        assert!(!url.contains("code=") && !url.contains(KEY), "{k}: {url}");
    }
    status_when(&h, "job-1", |b| b["customStatus"] == "waiting").await;
    let r = mgmt(
        &h,
        "GET",
        "instances/job-1?showHistory=true&showHistoryOutput=true",
        "",
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.headers["retry-after"], "5");
    assert_eq!(r.body["instanceId"], "job-1");
    assert_eq!(r.body["runtimeStatus"], "Running");
    assert_eq!(r.body["customStatus"], "waiting");
    // The reference system's history shape: no episode markers, so ExecutionStarted first.
    assert_eq!(r.body["historyEvents"][0]["EventType"], "ExecutionStarted");
    assert_eq!(r.body["historyEvents"][0]["FunctionName"], "wait");
    // Starting the same running id again is a conflict.
    assert_error(&mgmt(&h, "POST", "orchestrators/wait/job-1", "").await, 409);
    // Raise event: content type and JSON are checked.
    let r = call(
        &h,
        "POST",
        "/runtime/webhooks/durabletask/instances/job-1/raiseEvent/go",
        &[("x-functions-key", KEY), ("content-type", "text/plain")],
        "1",
    )
    .await;
    assert_error(&r, 400);
    assert_error(
        &mgmt(&h, "POST", "instances/job-1/raiseEvent/go", "{bad").await,
        400,
    );
    assert_error(
        &mgmt(&h, "POST", "instances/nobody/raiseEvent/go", "1").await,
        404,
    );
    // Suspend and resume.
    assert_eq!(
        mgmt(&h, "POST", "instances/job-1/suspend?reason=pause", "")
            .await
            .status,
        202
    );
    status_when(&h, "job-1", |b| b["runtimeStatus"] == "Suspended").await;
    assert_eq!(
        mgmt(&h, "POST", "instances/job-1/resume", "").await.status,
        202
    );
    assert_eq!(
        mgmt(
            &h,
            "POST",
            "instances/job-1/raiseEvent/go",
            r#"{"ok":true}"#
        )
        .await
        .status,
        202
    );
    let st = h
        .client()
        .wait_for_completion("job-1", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(st.output.as_deref(), Some(r#"{"ok":true}"#));
    let r = mgmt(&h, "GET", "instances/job-1?showInput=false", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["output"], json!({"ok": true}));
    assert_eq!(r.body["input"], Value::Null);
    // Finished: events, terminate, suspend answer 410; rewind of a non-failed 410/400.
    assert_error(
        &mgmt(&h, "POST", "instances/job-1/raiseEvent/go", "1").await,
        410,
    );
    assert_error(
        &mgmt(&h, "POST", "instances/job-1/terminate", "").await,
        410,
    );
    assert_error(&mgmt(&h, "POST", "instances/job-1/suspend", "").await, 410);
    assert_error(&mgmt(&h, "POST", "instances/job-1/rewind", "").await, 410);
    assert_error(
        &mgmt(&h, "POST", "instances/nobody/terminate", "").await,
        404,
    );
    assert_error(&mgmt(&h, "POST", "instances/job-1/explode", "").await, 404);
    // Terminate a running one.
    mgmt(&h, "POST", "orchestrators/wait/job-2", "").await;
    assert_eq!(
        mgmt(&h, "POST", "instances/job-2/terminate?reason=enough", "")
            .await
            .status,
        202
    );
    let st = h
        .client()
        .wait_for_completion("job-2", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(st.status, durable_core::RuntimeStatus::Terminated);
    // Failed: 200, or 500 when asked; rewind accepted.
    let r = mgmt(
        &h,
        "POST",
        "orchestrators/failing/job-3?timeout=5&pollingInterval=1",
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["runtimeStatus"], "Failed");
    assert_eq!(mgmt(&h, "GET", "instances/job-3", "").await.status, 200);
    assert_eq!(
        mgmt(
            &h,
            "GET",
            "instances/job-3?returnInternalServerErrorOnFailure=true",
            ""
        )
        .await
        .status,
        500
    );
    assert_eq!(
        mgmt(&h, "POST", "instances/job-3/rewind?reason=retry", "")
            .await
            .status,
        202
    );
    // Restart under a new id and the same id.
    let r = mgmt(
        &h,
        "POST",
        "orchestrators/hello/job-4?timeout=5&pollingInterval=1",
        r#"["Kyiv"]"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!(["Hello Kyiv!"]));
    let r = mgmt(&h, "POST", "instances/job-4/restart", "").await;
    assert_eq!(r.status, 202);
    assert_ne!(r.body["id"], "job-4");
    let r = mgmt(
        &h,
        "POST",
        "instances/job-4/restart?restartWithNewInstanceId=false",
        "",
    )
    .await;
    assert_eq!(r.body["id"], "job-4");
    assert_error(&mgmt(&h, "POST", "instances/nobody/restart", "").await, 400);
    h.client()
        .wait_for_completion("job-4", Duration::from_secs(20))
        .await
        .unwrap();
    // List: filters, paging with the continuation header.
    let r = mgmt(
        &h,
        "GET",
        "instances?instanceIdPrefix=job-&runtimeStatus=Completed,Terminated",
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        !r.headers.contains_key("x-ms-continuation-token"),
        "no token on the last page"
    );
    let ids: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["instanceId"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"job-1") && ids.contains(&"job-2") && ids.contains(&"job-4"),
        "{ids:?}"
    );
    let seen = list_all(&h, "/runtime/webhooks/durabletask/instances?top=2")
        .await
        .len();
    assert_eq!(seen, count(&h).await);
    assert_error(
        &mgmt(&h, "GET", "instances?createdTimeFrom=yesterday", "").await,
        400,
    );
    // Purge one, then in bulk.
    let r = mgmt(&h, "DELETE", "instances/job-2", "").await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!({"instancesDeleted": 1}))
    );
    assert_error(&mgmt(&h, "DELETE", "instances/job-2", "").await, 404);
    assert_error(&mgmt(&h, "DELETE", "instances", "").await, 400);
    assert_error(
        &mgmt(
            &h,
            "DELETE",
            "instances?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Canceled",
            "",
        )
        .await,
        404,
    );
    let r = mgmt(
        &h,
        "DELETE",
        "instances?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Completed",
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body["instancesDeleted"].as_u64().unwrap() >= 2);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_routes() {
    let h = host().await;
    assert_eq!(
        mgmt(&h, "POST", "entities/Counter/c1?op=add", "5")
            .await
            .status,
        202
    );
    assert_eq!(
        mgmt(&h, "POST", "entities/counter/c1?op=add", "2")
            .await
            .status,
        202
    );
    let mut state = Value::Null;
    for _ in 0..200 {
        let r = mgmt(&h, "GET", "entities/counter/c1", "").await;
        if r.status == 200 && r.body == json!(7) {
            state = r.body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, json!(7));
    assert_error(&mgmt(&h, "GET", "entities/counter/C1", "").await, 404);
    assert_error(
        &mgmt(&h, "POST", "entities/nosuch/x?op=add", "1").await,
        404,
    );
    assert_error(
        &mgmt(&h, "POST", "entities/counter/c1?op=add", "{bad").await,
        400,
    );
    let r = mgmt(&h, "GET", "entities/counter", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        keys(&r.body[0]),
        ["entityId", "lastOperationTime", "state"],
        "state is always present"
    );
    assert_eq!(
        r.body[0]["state"],
        Value::Null,
        "no state without fetchState"
    );
    let r = mgmt(&h, "GET", "entities/counter?fetchState=true", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body[0]["entityId"],
        json!({"name": "counter", "key": "c1"})
    );
    assert_eq!(r.body[0]["state"], json!(7));
    assert!(
        !r.headers.contains_key("x-ms-continuation-token"),
        "no token on the last page"
    );
    // Paging one entity at a time reaches the end.
    for key in ["c2", "c3"] {
        let path = format!("entities/counter/{key}?op=add");
        assert_eq!(mgmt(&h, "POST", &path, "1").await.status, 202);
    }
    let mut seen = 0;
    for _ in 0..200 {
        seen = list_all(&h, "/runtime/webhooks/durabletask/entities/counter?top=1")
            .await
            .len();
        if seen == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, 3);
    assert_eq!(
        mgmt(&h, "DELETE", "entities/counter/c1", "").await.status,
        202
    );
    let mut gone = false;
    for _ in 0..200 {
        if mgmt(&h, "GET", "entities/counter/c1", "").await.status == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_routes_are_a_startup_error_and_mounting_works() {
    let err = Host::builder()
        .addr("127.0.0.1:0")
        .store(Arc::new(MemoryStore::new()))
        .key(KEY)
        .registry(registry())
        .without_registered_routes()
        .route(&["GET"], "/api/x/{a}", |_c, _r| async {
            Err(HttpError::not_found("x"))
        })
        .route(&["GET", "POST"], "/api/x/{b}", |_c, _r| async {
            Err(HttpError::not_found("x"))
        })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("routes collide"), "{err}");

    let host = Host::builder()
        .store(Arc::new(MemoryStore::new()))
        .key(KEY)
        .registry(registry())
        .without_registered_routes()
        .mount_prefix("/durable")
        .build()
        .unwrap();
    let app = host.app();
    let req = http::Request::builder()
        .method("POST")
        .uri("/durable/runtime/webhooks/durabletask/orchestrators/hello")
        .header("host", "example.test")
        .header("x-functions-key", KEY)
        .body(Full::new(Bytes::from_static(b"[\"Bern\"]")))
        .unwrap();
    let resp = app.handle(req).await;
    assert_eq!(resp.status(), 202);
    // No public URL and no bound address: root-relative, never from the Host header.
    let loc = resp.headers()["location"].to_str().unwrap();
    assert!(
        loc.starts_with("/durable/runtime/webhooks/durabletask/instances/"),
        "{loc}"
    );
    let outside = http::Request::builder()
        .uri("/elsewhere")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(app.handle(outside).await.status(), 404);

    // The same host as a hyper service on connections the application accepts itself.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = host.service();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await
    });
    let r = call_at(
        addr,
        "GET",
        "/durable/runtime/webhooks/durabletask/instances",
        &[("x-functions-key", KEY)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body.as_array().map(Vec::len), Some(1));
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_answers_match_the_reference_source_in_detail() {
    let h = host().await;
    // The 202 body has exactly the reference system's fields (no rewindPostUri), Location
    // is the status URL and Retry-After 10; routes' literal segments are case-insensitive.
    let r = mgmt(&h, "POST", "Orchestrators/wait/w-1", "").await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(
        keys(&r.body),
        [
            "id",
            "purgeHistoryDeleteUri",
            "restartPostUri",
            "resumePostUri",
            "sendEventPostUri",
            "statusQueryGetUri",
            "suspendPostUri",
            "terminatePostUri"
        ]
    );
    assert_eq!(header(&r, "location"), r.body["statusQueryGetUri"]);
    assert_eq!(header(&r, "retry-after"), "10");
    assert!(header(&r, "content-type").starts_with("application/json"));
    assert!(r.body["terminatePostUri"]
        .as_str()
        .unwrap()
        .ends_with("/instances/w-1/terminate?reason={text}"));
    status_when(&h, "w-1", |b| b["customStatus"] == "waiting").await;
    // A running instance's 202 Location is the request URL, without the key.
    let r = call(
        &h,
        "GET",
        &format!("/runtime/webhooks/durabletask/INSTANCES/w-1?showHistory=true&code={KEY}"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 202);
    let loc = header(&r, "location");
    assert!(
        loc.ends_with("/runtime/webhooks/durabletask/INSTANCES/w-1?showHistory=true"),
        "{loc}"
    );
    assert!(!loc.contains(KEY) && !loc.contains("code="), "{loc}");
    // Purging a running instance is refused with 412 and changes nothing.
    assert_error(&mgmt(&h, "DELETE", "instances/w-1", "").await, 412);
    assert_eq!(mgmt(&h, "GET", "instances/w-1", "").await.status, 202);
    // Restarting under the id of a running instance is a conflict.
    assert_error(
        &mgmt(
            &h,
            "POST",
            "instances/w-1/restart?restartWithNewInstanceId=false",
            "",
        )
        .await,
        409,
    );
    // Bad wait parameters are refused before anything starts or restarts.
    let before = count(&h).await;
    assert_error(
        &mgmt(
            &h,
            "POST",
            "orchestrators/hello/w-2?timeout=1&pollingInterval=5",
            "[]",
        )
        .await,
        400,
    );
    assert_error(
        &mgmt(
            &h,
            "POST",
            "instances/w-1/restart?timeout=soon&pollingInterval=1",
            "",
        )
        .await,
        400,
    );
    // `version` picks the orchestrator version; an unknown one is a 400.
    assert_error(
        &mgmt(&h, "POST", "orchestrators/hello?version=9.9", "[]").await,
        400,
    );
    assert_eq!(count(&h).await, before, "nothing was started");
    // Wrong methods: 405 with Allow.
    let r = mgmt(&h, "PUT", "instances/w-1", "").await;
    assert_error(&r, 405);
    assert_eq!(header(&r, "allow"), "GET, DELETE");
    // Raise event: 404 and 410 come before the content checks.
    let text = [("x-functions-key", KEY), ("content-type", "text/plain")];
    let r = call(
        &h,
        "POST",
        "/runtime/webhooks/durabletask/instances/nobody/raiseEvent/go",
        &text,
        "x",
    )
    .await;
    assert_error(&r, 404);
    assert_eq!(
        mgmt(&h, "POST", "instances/w-1/RAISEEVENT/go", "5")
            .await
            .status,
        202
    );
    h.client()
        .wait_for_completion("w-1", Duration::from_secs(20))
        .await
        .unwrap();
    let r = call(
        &h,
        "POST",
        "/runtime/webhooks/durabletask/instances/w-1/raiseEvent/go",
        &text,
        "x",
    )
    .await;
    assert_error(&r, 410);

    // History in the reference shape: completions carry the activity's name and
    // scheduling time; no TaskScheduled, no episode markers, no ids; results only with
    // showHistoryOutput.
    let r = mgmt(
        &h,
        "POST",
        "orchestrators/hello/h-1?timeout=5&pollingInterval=1",
        r#"["Oslo"]"#,
    )
    .await;
    assert_eq!((r.status, r.body.clone()), (200, json!(["Hello Oslo!"])));
    let r = mgmt(
        &h,
        "GET",
        "instances/h-1?showHistory=true&showHistoryOutput=true",
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let events = r.body["historyEvents"].as_array().unwrap();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["EventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["ExecutionStarted", "TaskCompleted", "ExecutionCompleted"]
    );
    assert_eq!(keys(&events[0]), ["EventType", "FunctionName", "Timestamp"]);
    assert_eq!(events[0]["FunctionName"], "hello");
    assert_eq!(
        keys(&events[1]),
        [
            "EventType",
            "FunctionName",
            "Result",
            "ScheduledTime",
            "Timestamp"
        ]
    );
    assert_eq!(events[1]["FunctionName"], "say_hello");
    assert_eq!(events[1]["Result"], "Hello Oslo!");
    assert_eq!(events[2]["OrchestrationStatus"], "Completed");
    assert_eq!(events[2]["Result"], json!(["Hello Oslo!"]));
    let r = mgmt(&h, "GET", "instances/h-1?showHistory=true", "").await;
    let events = r.body["historyEvents"].as_array().unwrap();
    assert!(
        events.iter().all(|e| e.get("Result").is_none()),
        "{events:?}"
    );
    // A failed activity: its name and reason.
    let r = mgmt(
        &h,
        "POST",
        "orchestrators/failing/h-2?timeout=5&pollingInterval=1&returnInternalServerErrorOnFailure=true",
        "",
    )
    .await;
    assert_eq!(r.status, 200, "the wait variant never answers 500");
    assert_eq!(r.body["runtimeStatus"], "Failed");
    let r = mgmt(&h, "GET", "instances/h-2?showHistory=true", "").await;
    let failed = r.body["historyEvents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["EventType"] == "TaskFailed")
        .cloned()
        .unwrap();
    assert_eq!(failed["FunctionName"], "fail");
    assert!(failed["Reason"].as_str().unwrap().contains("boom"));

    // List: inputs shown by default, hidden with showInput=false.
    let r = mgmt(&h, "GET", "instances?instanceIdPrefix=h-1", "").await;
    assert_eq!(r.body[0]["input"], json!(["Oslo"]));
    let r = mgmt(
        &h,
        "GET",
        "instances?instanceIdPrefix=h-1&showInput=false",
        "",
    )
    .await;
    assert_eq!(r.body[0]["input"], Value::Null);
    // Continuation tokens are header-safe whatever the ids contain, and page to the end.
    for i in 0..3 {
        let r = mgmt(
            &h,
            "POST",
            &format!("orchestrators/hello/caf%C3%A9-{i}"),
            "[]",
        )
        .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    let mut ids: Vec<String> = list_all(
        &h,
        "/runtime/webhooks/durabletask/instances?top=1&instanceIdPrefix=caf%C3%A9",
    )
    .await
    .iter()
    .map(|v| v["instanceId"].as_str().unwrap().to_string())
    .collect();
    ids.sort();
    assert_eq!(ids, ["caf\u{e9}-0", "caf\u{e9}-1", "caf\u{e9}-2"]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_or_check_status_answers_like_the_reference_on_the_public_endpoint() {
    let h = host().await;
    // Failed within the timeout: 200 with the public status and a short, fixed reason.
    let r = call(&h, "POST", "/api/start-wait/failing", &[], "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["runtimeStatus"], "Failed");
    assert_eq!(r.body["reason"], "the orchestration failed");
    assert_eq!(r.body["output"], Value::Null);
    assert!(r.body.get("input").is_none() && r.body.get("historyEvents").is_none());
    let failed = r.body["id"].as_str().unwrap().to_string();
    let r = call(&h, "GET", &format!("/api/instances/{failed}"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["reason"], "the orchestration failed");
    // Still running at the timeout: the same 202 as check_status_response, public URL only.
    let r = call(&h, "POST", "/api/start-wait/wait?ms=100", &[], "").await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(keys(&r.body), ["id", "statusQueryGetUri"]);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(header(&r, "location"), r.body["statusQueryGetUri"]);
    assert!(header(&r, "location").ends_with(&format!("/api/instances/{id}")));
    assert_eq!(header(&r, "retry-after"), "1");
    // Terminated: 200 with a fixed reason, no output.
    h.client().terminate(&id, Some("enough")).await.unwrap();
    let r = call(&h, "GET", &format!("/api/instances/{id}?wait=10s"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["runtimeStatus"], "Terminated");
    assert_eq!(r.body["reason"], "terminated");
    assert_eq!(r.body["output"], Value::Null);
    // Unknown orchestrator: 400 JSON from the helper's start.
    assert_error(
        &call(&h, "POST", "/api/start-wait/nope", &[], "").await,
        400,
    );
    // A malformed continuation token is bad input, not a server error.
    let r = call(
        &h,
        "GET",
        "/runtime/webhooks/durabletask/instances",
        &[
            ("x-functions-key", KEY),
            ("x-ms-continuation-token", "garbage"),
        ],
        "",
    )
    .await;
    assert_error(&r, 400);
    h.shutdown().await;
}

/// Every instance's id, status, input and output, and every entity's state: what a
/// rejected request must leave as it was.
async fn snapshot(h: &RunningHost) -> Vec<(String, String, Option<String>, Option<String>)> {
    let mut all: Vec<_> = h
        .client()
        .list_instances(&Default::default(), 1000, None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| (s.instance_id, s.status.to_string(), s.input, s.output))
        .collect();
    all.sort();
    all
}

/// Walks every management route with malformed or mistyped requests: each gets a 4xx
/// JSON error and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_management_route_refuses_bad_input_and_changes_nothing() {
    let h = host().await;
    // Something to refuse changes to: a running instance, a finished one, an entity.
    assert_eq!(
        mgmt(&h, "POST", "orchestrators/wait/running-1", "")
            .await
            .status,
        202
    );
    status_when(&h, "running-1", |b| b["customStatus"] == "waiting").await;
    let r = mgmt(
        &h,
        "POST",
        "orchestrators/hello/done-1?timeout=10&pollingInterval=1",
        r#"["Oslo"]"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        mgmt(&h, "POST", "entities/tally/t1?op=add", "1")
            .await
            .status,
        202
    );
    let tally = durable_core::EntityId::new("tally", "t1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while h.client().get_entity(&tally).await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the entity never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = snapshot(&h).await;

    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let json = ("content-type", "application/json");
    let text = ("content-type", "text/plain");
    let not_utf8: &[u8] = b"[\"\xff\"]";
    // Method, path under the management base, headers, body, expected status.
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a [u8], u16);
    let cases: Vec<Case<'_>> = vec![
        // Start: the orchestrator's input type is checked at the door.
        (
            "POST",
            "orchestrators/hello",
            vec![json],
            br#"{"cities": 5}"#,
            400,
        ),
        ("POST", "orchestrators/hello", vec![json], b"[1,2,3]", 400),
        (
            "POST",
            "orchestrators/hello",
            vec![json],
            br#""Paris""#,
            400,
        ),
        (
            "POST",
            "orchestrators/hello",
            vec![json],
            deep.as_bytes(),
            400,
        ),
        ("POST", "orchestrators/hello", vec![json], b"{oops", 400),
        ("POST", "orchestrators/hello", vec![json], not_utf8, 400),
        ("POST", "orchestrators/wait", vec![json], b"5", 400),
        ("POST", "orchestrators/no_such", vec![json], b"[]", 400),
        ("POST", "orchestrators/hello/..", vec![json], b"[]", 400),
        ("POST", "orchestrators/hello/%2E", vec![json], b"[]", 400),
        (
            "POST",
            "orchestrators/hello/bad%3Fid",
            vec![json],
            b"[]",
            400,
        ),
        ("POST", "orchestrators/hello/%FF", vec![json], b"[]", 400),
        (
            "POST",
            "orchestrators/hello/x?timeout=soon&pollingInterval=1",
            vec![],
            b"[]",
            400,
        ),
        (
            "POST",
            "orchestrators/hello/x?timeout=1&pollingInterval=5",
            vec![],
            b"[]",
            400,
        ),
        (
            "POST",
            "orchestrators/hello?version=9.9",
            vec![],
            b"[]",
            400,
        ),
        ("POST", "orchestrators/wait/running-1", vec![], b"", 409),
        ("GET", "orchestrators/hello", vec![], b"", 405),
        // List and bulk purge: every filter value is checked.
        ("GET", "instances?runtimeStatus=Complete", vec![], b"", 400),
        (
            "GET",
            "instances?runtimeStatus=Running,Bogus",
            vec![],
            b"",
            400,
        ),
        (
            "GET",
            "instances?createdTimeFrom=yesterday",
            vec![],
            b"",
            400,
        ),
        (
            "GET",
            "instances?createdTimeTo=2024-13-01",
            vec![],
            b"",
            400,
        ),
        ("GET", "instances?top=0", vec![], b"", 400),
        ("GET", "instances?top=many", vec![], b"", 400),
        ("GET", "instances?showInput=maybe", vec![], b"", 400),
        (
            "GET",
            "instances",
            vec![("x-ms-continuation-token", "garbage")],
            b"",
            400,
        ),
        (
            "GET",
            "instances",
            vec![("x-ms-continuation-token", "%FF")],
            b"",
            400,
        ),
        ("DELETE", "instances", vec![], b"", 400),
        (
            "DELETE",
            "instances?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Complete",
            vec![],
            b"",
            400,
        ),
        (
            "DELETE",
            "instances?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=completed,Bogus",
            vec![],
            b"",
            400,
        ),
        ("DELETE", "instances?createdTimeFrom=soon", vec![], b"", 400),
        (
            "DELETE",
            "instances?createdTimeFrom=2000-01-01T00:00:00Z&createdTimeTo=later",
            vec![],
            b"",
            400,
        ),
        ("PUT", "instances", vec![], b"", 405),
        // One instance.
        ("GET", "instances/nope", vec![], b"", 404),
        ("GET", "instances/..", vec![], b"", 400),
        ("GET", "instances/%2E", vec![], b"", 400),
        ("GET", "instances/done-1?showHistory=yes", vec![], b"", 400),
        (
            "GET",
            "instances/done-1?showHistoryOutput=1",
            vec![],
            b"",
            400,
        ),
        (
            "GET",
            "instances/done-1?returnInternalServerErrorOnFailure=x",
            vec![],
            b"",
            400,
        ),
        ("DELETE", "instances/running-1", vec![], b"", 412),
        ("DELETE", "instances/nope", vec![], b"", 404),
        ("DELETE", "instances/%FF", vec![], b"", 400),
        ("PATCH", "instances/done-1", vec![], b"", 405),
        // Operations.
        ("POST", "instances/done-1/terminate", vec![], b"", 410),
        ("POST", "instances/nope/terminate", vec![], b"", 404),
        ("POST", "instances/done-1/suspend", vec![], b"", 410),
        ("POST", "instances/done-1/resume", vec![], b"", 410),
        ("POST", "instances/running-1/rewind", vec![], b"", 400),
        ("POST", "instances/running-1/explode", vec![], b"", 404),
        ("POST", "instances/../terminate", vec![], b"", 400),
        (
            "POST",
            "instances/done-1/restart?restartWithNewInstanceId=maybe",
            vec![],
            b"",
            400,
        ),
        (
            "POST",
            "instances/done-1/restart?timeout=x&pollingInterval=1",
            vec![],
            b"",
            400,
        ),
        ("POST", "instances/nope/restart", vec![], b"", 400),
        (
            "POST",
            "instances/running-1/restart?restartWithNewInstanceId=false",
            vec![],
            b"",
            409,
        ),
        ("GET", "instances/running-1/terminate", vec![], b"", 405),
        // Raise event.
        (
            "POST",
            "instances/running-1/raiseEvent/go",
            vec![json],
            deep.as_bytes(),
            400,
        ),
        (
            "POST",
            "instances/running-1/raiseEvent/go",
            vec![json],
            b"{bad",
            400,
        ),
        (
            "POST",
            "instances/running-1/raiseEvent/go",
            vec![json],
            not_utf8,
            400,
        ),
        (
            "POST",
            "instances/running-1/raiseEvent/go",
            vec![text],
            b"1",
            400,
        ),
        (
            "POST",
            "instances/running-1/raiseEvent/go",
            vec![],
            b"1",
            400,
        ),
        (
            "POST",
            "instances/done-1/raiseEvent/go",
            vec![json],
            b"1",
            410,
        ),
        (
            "POST",
            "instances/nope/raiseEvent/go",
            vec![json],
            b"1",
            404,
        ),
        // Entities: an operation's input type is checked when it is known.
        (
            "POST",
            "entities/tally/t1?op=add",
            vec![json],
            br#""five""#,
            400,
        ),
        (
            "POST",
            "entities/tally/t1?op=add",
            vec![json],
            br#"{"n": 1}"#,
            400,
        ),
        ("POST", "entities/tally/t1?op=add", vec![text], b"five", 400),
        (
            "POST",
            "entities/tally/t1?op=add",
            vec![json],
            deep.as_bytes(),
            400,
        ),
        ("POST", "entities/tally/t1?op=add", vec![json], b"{bad", 400),
        (
            "POST",
            "entities/tally/t1?op=subtract",
            vec![json],
            b"1",
            400,
        ),
        ("POST", "entities/tally/t1", vec![json], b"1", 400),
        (
            "POST",
            "entities/counter/c9?op=add",
            vec![json],
            deep.as_bytes(),
            400,
        ),
        ("POST", "entities/nosuch/k?op=x", vec![json], b"1", 404),
        ("POST", "entities/tally/..?op=add", vec![json], b"1", 400),
        ("POST", "entities/tally/%2E?op=add", vec![json], b"1", 400),
        ("DELETE", "entities/nosuch/k", vec![], b"", 404),
        ("GET", "entities/tally/%2E%2E", vec![], b"", 400),
        ("GET", "entities/tally/nope", vec![], b"", 404),
        ("GET", "entities?fetchState=maybe", vec![], b"", 400),
        (
            "GET",
            "entities/tally?lastOperationTimeFrom=bad",
            vec![],
            b"",
            400,
        ),
        ("GET", "entities/tally?top=0", vec![], b"", 400),
        (
            "GET",
            "entities/tally",
            vec![("x-ms-continuation-token", "garbage")],
            b"",
            400,
        ),
        ("PUT", "entities/tally/t1", vec![], b"", 405),
        ("POST", "entities", vec![], b"", 405),
        // No such route.
        ("GET", "nowhere", vec![], b"", 404),
        ("POST", "instances/a/b/c/d", vec![], b"", 404),
    ];
    for (method, path, headers, body, want) in cases {
        let mut all = vec![("x-functions-key", KEY)];
        all.extend(headers);
        let r = call(
            &h,
            method,
            &format!("/runtime/webhooks/durabletask/{path}"),
            &all,
            body,
        )
        .await;
        assert_eq!(r.status, want, "{method} {path}: {:?}", r.body);
        assert!(
            r.body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: a JSON error: {:?}",
            r.body
        );
        assert_eq!(
            r.body["ExceptionMessage"], r.body["error"],
            "{method} {path}"
        );
        assert_eq!(
            snapshot(&h).await,
            before,
            "{method} {path} changed something"
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistyped_input_is_refused_naming_the_orchestrator_the_type_and_the_mismatch() {
    let h = host().await;
    let r = mgmt(&h, "POST", "orchestrators/hello", r#"{"cities": 5}"#).await;
    assert_error(&r, 400);
    assert_eq!(
        r.body["error"],
        "input of orchestrator 'hello' does not match its input type Vec<String>: invalid type: map, expected a sequence at line 1 column 0"
    );
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let r = mgmt(&h, "POST", "orchestrators/hello", &deep).await;
    assert_error(&r, 400);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("recursion limit exceeded"),
        "{:?}",
        r.body
    );
    // The form Durable Functions' Python client sends: JSON inside a JSON string. It runs,
    // and the status shows the value.
    let r = mgmt(
        &h,
        "POST",
        "orchestrators/hello/py-1?timeout=10&pollingInterval=1",
        r#""[\"Paris\", \"Rome\"]""#,
    )
    .await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!(["Hello Paris!", "Hello Rome!"]))
    );
    let r = mgmt(&h, "GET", "instances/py-1", "").await;
    assert_eq!(r.body["input"], json!(["Paris", "Rome"]));
    // The same for an entity operation's input.
    assert_eq!(
        mgmt(&h, "POST", "entities/tally/py?op=add", r#""41""#)
            .await
            .status,
        202
    );
    let r = call(
        &h,
        "POST",
        "/runtime/webhooks/durabletask/entities/tally/py?op=add",
        &[("x-functions-key", KEY), ("content-type", "text/plain")],
        "1",
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let mut state = Value::Null;
    for _ in 0..2000 {
        state = mgmt(&h, "GET", "entities/tally/py", "").await.body;
        if state["value"] == 42 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, json!({"value": 42}));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_segments_keep_plus_signs_and_dot_ids_are_refused() {
    let h = host().await;
    let r = mgmt(&h, "POST", "orchestrators/hello/a+b", "[]").await;
    assert_eq!((r.status, r.body["id"].clone()), (202, json!("a+b")));
    // Both spellings of the plus sign name the same instance; a space is another id.
    for path in ["instances/a+b", "instances/a%2Bb"] {
        let r = mgmt(&h, "GET", path, "").await;
        assert_eq!(r.body["instanceId"], "a+b", "{path}");
    }
    assert_error(&mgmt(&h, "GET", "instances/a%20b", "").await, 404);
    // The URLs handed out name the instance, and work.
    let url = r.body["statusQueryGetUri"].as_str().unwrap().to_string();
    assert!(url.ends_with("/instances/a%2Bb"), "{url}");
    // `.` and `..` can have no working status URL: refused at creation, on every door.
    for id in [".", ".."] {
        let err = h
            .client()
            .start_by_name(
                "hello",
                None,
                durable_core::StartOptions::with_instance_id(id),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("relative path"), "{err}");
    }
    let bad = durable_core::EntityId::new("tally", "..");
    assert!(h.client().signal_entity(&bad, "add", &1).await.is_err());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_purge_with_an_unknown_status_purges_nothing() {
    let h = host().await;
    for id in ["p-1", "p-2"] {
        let r = mgmt(
            &h,
            "POST",
            &format!("orchestrators/hello/{id}?timeout=10&pollingInterval=1"),
            r#"["Oslo"]"#,
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let r = mgmt(
        &h,
        "DELETE",
        "instances?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Complete",
        "",
    )
    .await;
    assert_error(&r, 400);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("invalid runtimeStatus 'Complete'"),
        "{:?}",
        r.body
    );
    assert_eq!(count(&h).await, 2, "nothing was purged");
    let r = mgmt(
        &h,
        "DELETE",
        "instances?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Completed",
        "",
    )
    .await;
    assert_eq!((r.status, r.body), (200, json!({"instancesDeleted": 2})));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_management_key_is_a_startup_error_naming_the_setting_and_lengths() {
    let err = Host::builder()
        .addr("127.0.0.1:0")
        .store(Arc::new(MemoryStore::new()))
        .key("short-secret")
        .registry(registry())
        .without_registered_routes()
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("DURABLE_KEY"), "{err}");
    assert!(err.contains("at least 16 characters"), "{err}");
    assert!(err.contains("has 12"), "{err}");
    assert!(
        !err.contains("short-secret"),
        "the key itself is never shown: {err}"
    );
}

/// `showHeartbeats=true` adds the latest heartbeat details of the instance's running
/// activities to its status (they reach the store with the lease renewals); without it
/// the status has no such field, and a bad value is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_running_activities_heartbeats_on_request() {
    let registry = Registry::builder()
        .activity(
            "beating",
            |ctx: durable_core::ActivityContext, _: ()| async move {
                ctx.heartbeat(&json!({ "done": 1 }));
                ctx.heartbeat(&json!({ "done": 2 }));
                ctx.cancelled().await;
                Ok::<_, ActivityError>(())
            },
        )
        .orchestrator("beat", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_activity_by_name::<()>("beating", &()).await?;
            Ok::<_, OrchestrationError>(())
        })
        .build()
        .unwrap();
    let h = Host::builder()
        .addr("127.0.0.1:0")
        .store(Arc::new(MemoryStore::new()))
        .key(KEY)
        .registry(registry)
        .worker_options(durable_core::WorkerOptions {
            activity_lease: Duration::from_millis(300),
            activity_cancel_poll: Duration::from_millis(50),
            shutdown_grace: Duration::from_millis(50),
            ..Default::default()
        })
        .build()
        .unwrap()
        .bind()
        .await
        .unwrap();
    let r = mgmt(&h, "POST", "orchestrators/beat/b-1", "").await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let path = "instances/b-1?showHeartbeats=true";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let body = loop {
        let r = mgmt(&h, "GET", path, "").await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        if r.body["heartbeats"]
            .as_array()
            .is_some_and(|b| !b.is_empty())
        {
            break r.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the heartbeat never showed: {:?}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        body["heartbeats"],
        json!([{ "name": "beating", "eventId": 0, "attempt": 1, "details": { "done": 2 } }])
    );
    let plain = mgmt(&h, "GET", "instances/b-1", "").await;
    assert!(plain.body.get("heartbeats").is_none(), "{:?}", plain.body);
    assert_error(
        &mgmt(&h, "GET", "instances/b-1?showHeartbeats=maybe", "").await,
        400,
    );
    let r = mgmt(&h, "POST", "instances/b-1/terminate?reason=done", "").await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    status_when(&h, "b-1", |b| b["runtimeStatus"] == "Terminated").await;
    h.shutdown().await;
}
