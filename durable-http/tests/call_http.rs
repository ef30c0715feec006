//! `ctx.call_http` against real local HTTP endpoints (127.0.0.1, ephemeral ports): plain
//! answers, the 202 polling pattern on durable timers (Retry-After, defaults, opt-out, a
//! missing Location, a restart mid-poll on SQLite), timeouts, retries, token sources and
//! https.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use durable_core::http::{DurableHttpRequest, DurableHttpResponse};
use durable_core::registry::BoxFuture;
use durable_core::{
    DurableClient, EventKind, HistoryEvent, MemoryStore, OrchestrationContext, OrchestrationError,
    Registry, RetryPolicy, RuntimeStatus, StartOptions, StatusOptions, Store, Worker,
};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// A local HTTP server whose answers each test scripts.

/// A request the server received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: String,
}

/// `(request, how many requests this path has had, this one included)` to an answer.
type Script = Arc<dyn Fn(Seen, usize) -> BoxFuture<'static, Response<Full<Bytes>>> + Send + Sync>;

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `script`; the first `drop_first` connections are closed without an answer.
    async fn start<F, Fut>(drop_first: usize, script: F) -> Server
    where
        F: Fn(Seen, usize) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let script: Script = Arc::new(move |s, n| Box::pin(script(s, n)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            let mut accepted = 0;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted += 1;
                if accepted <= drop_first {
                    drop(stream);
                    continue;
                }
                let (script, seen) = (script.clone(), s2.clone());
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (script, seen) = (script.clone(), seen.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let s = Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                headers: parts.headers,
                                body: String::from_utf8_lossy(&body).into_owned(),
                            };
                            let n = {
                                let mut seen = seen.lock().unwrap();
                                seen.push(s.clone());
                                seen.iter().filter(|x| x.path == s.path).count()
                            };
                            Ok::<_, std::convert::Infallible>(script(s, n).await)
                        }
                    });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server { addr, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

// ---------------------------------------------------------------------------------------
// The orchestration under test: one `call_http`, its outcome as the output.

/// What the orchestration is asked to do.
#[derive(Serialize, Deserialize)]
struct Call {
    req: DurableHttpRequest,
    /// Attempts of a retry policy with 100 ms waits.
    retry: Option<u32>,
}

/// A failed call as the orchestration saw it.
#[derive(Debug, Serialize, Deserialize)]
struct Failed {
    error_type: String,
    message: String,
    is_timeout: bool,
    non_retriable: bool,
}

type Outcome = Result<DurableHttpResponse, Failed>;

fn registry() -> Registry {
    Registry::builder()
        .with_inventory()
        .orchestrator("call", |ctx: OrchestrationContext, call: Call| async move {
            let mut req = call.req;
            if let Some(n) = call.retry {
                req.retry = Some(RetryPolicy::new(n, Duration::from_millis(100)));
            }
            let out: Outcome = ctx.call_http(req).await.map_err(|e| Failed {
                error_type: e.failure.error_type.clone(),
                message: e.to_string(),
                is_timeout: e.is_timeout(),
                non_retriable: e.failure.non_retriable,
            });
            Ok::<_, OrchestrationError>(out)
        })
        .build()
        .unwrap()
}

fn runtime(store: Arc<dyn Store>) -> Worker {
    Worker::builder(store).registry(registry()).start().unwrap()
}

async fn start(client: &DurableClient, req: DurableHttpRequest, retry: Option<u32>) -> String {
    let input = serde_json::to_string(&Call { req, retry }).unwrap();
    client
        .start_by_name("call", Some(input), StartOptions::default())
        .await
        .unwrap()
}

/// Runs one call on a memory store; returns its outcome and the instance's history.
async fn run(req: DurableHttpRequest, retry: Option<u32>) -> (Outcome, Vec<HistoryEvent>) {
    let rt = runtime(Arc::new(MemoryStore::new()));
    let client = rt.client();
    let id = start(&client, req, retry).await;
    let out: Outcome = client.wait_for_output(&id, WAIT).await.unwrap();
    let history = history(&client, &id).await;
    rt.shutdown().await;
    (out, history)
}

async fn history(client: &DurableClient, id: &str) -> Vec<HistoryEvent> {
    client
        .get_status(
            id,
            StatusOptions {
                show_input: true,
                show_history: true,
            },
        )
        .await
        .unwrap()
        .unwrap()
        .history
        .unwrap()
}

fn http_tasks(history: &[HistoryEvent]) -> usize {
    history
        .iter()
        .filter(
            |e| matches!(&e.kind, EventKind::TaskScheduled { name, .. } if name == "durable::http"),
        )
        .count()
}

/// The wait of each durable timer: its fire time less the time of the episode that made it.
fn timer_waits(history: &[HistoryEvent]) -> Vec<chrono::Duration> {
    let mut episode = None;
    let mut waits = Vec::new();
    for e in history {
        match &e.kind {
            EventKind::OrchestratorStarted => episode = Some(e.timestamp),
            EventKind::TimerCreated { fire_at } => waits.push(*fire_at - episode.unwrap()),
            _ => {}
        }
    }
    waits
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_answer_is_the_response() {
    let server = Server::start(0, |s: Seen, _| async move {
        answer(
            201,
            &[("content-type", "application/json"), ("x-echo", &s.body)],
            r#"{"ok":true}"#,
        )
    })
    .await;
    let req = DurableHttpRequest::post_json(server.url("/orders"), &serde_json::json!({"n": 1}))
        .header("X-Trace", "t-1");
    let (out, history) = run(req, None).await;
    let resp = out.unwrap();
    assert_eq!(resp.status, 201);
    assert_eq!(resp.body, r#"{"ok":true}"#);
    assert_eq!(resp.header("X-ECHO"), Some(r#"{"n":1}"#));
    assert_eq!(resp.json::<serde_json::Value>().unwrap()["ok"], true);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/orders")
    );
    assert_eq!(seen[0].headers["x-trace"], "t-1");
    assert_eq!(seen[0].headers["content-type"], "application/json");
    assert_eq!(http_tasks(&history), 1);
    assert!(timer_waits(&history).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_is_polled_on_durable_timers_honouring_retry_after() {
    let server = Server::start(0, |s: Seen, n| async move {
        match (s.path.as_str(), n) {
            ("/start", _) => answer(
                202,
                &[("location", "/jobs/7"), ("retry-after", "1")],
                "accepted",
            ),
            ("/jobs/7", 1) => answer(
                202,
                &[("location", "/jobs/7"), ("retry-after", "1")],
                "running",
            ),
            ("/jobs/7", _) => answer(200, &[], "done"),
            _ => answer(404, &[], ""),
        }
    })
    .await;
    let req = DurableHttpRequest::post_json(server.url("/start"), &1)
        .header("x-functions-key", "management-secret")
        .header("x-trace", "t-2");
    let (out, history) = run(req, None).await;
    let resp = out.unwrap();
    assert_eq!((resp.status, resp.body.as_str()), (200, "done"));
    let seen = server.seen();
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        [("POST", "/start"), ("GET", "/jobs/7"), ("GET", "/jobs/7")]
    );
    assert_eq!(seen[0].headers["x-functions-key"], "management-secret");
    for poll in &seen[1..] {
        assert!(
            !poll.headers.contains_key("x-functions-key"),
            "the management key must not reach the polled URL"
        );
        assert_eq!(poll.headers["x-trace"], "t-2");
        assert!(poll.body.is_empty());
    }
    // One durable timer per poll, each as long as the Retry-After asked.
    assert_eq!(timer_waits(&history), vec![chrono::Duration::seconds(1); 2]);
    assert_eq!(http_tasks(&history), 3);
}

/// Relative `Location`s resolve against the URL that answered, per RFC 3986: dot
/// segments, a query-only reference, a network-path reference to another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_locations_resolve_per_rfc_3986() {
    let other = Server::start(
        0,
        |_s: Seen, _| async move { answer(200, &[], "elsewhere") },
    )
    .await;
    let network_path = format!("//{}/final", other.addr);
    let server = Server::start(0, move |s: Seen, n| {
        let network_path = network_path.clone();
        async move {
            let next = |l: &str| answer(202, &[("location", l), ("retry-after", "1")], "");
            match (s.path.as_str(), n) {
                ("/api/v1/jobs/start", _) => next("../status/./7"),
                ("/api/v1/status/7", 1) => next("?page=2"),
                ("/api/v1/status/7", _) => next(&network_path),
                _ => answer(404, &[], ""),
            }
        }
    })
    .await;
    let (out, _) = run(
        DurableHttpRequest::post_json(server.url("/api/v1/jobs/start"), &1),
        None,
    )
    .await;
    let resp = out.unwrap();
    assert_eq!((resp.status, resp.body.as_str()), (200, "elsewhere"));
    let paths: Vec<String> = server.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        paths,
        ["/api/v1/jobs/start", "/api/v1/status/7", "/api/v1/status/7"]
    );
    let polled: Vec<String> = other.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(polled, ["/final"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retry_after_the_configured_default_interval_is_used() {
    let script = |s: Seen, _| async move {
        match s.path.as_str() {
            "/status" => answer(200, &[], "ok"),
            _ => answer(202, &[("location", "/status")], ""),
        }
    };
    // Per request.
    let server = Server::start(0, script).await;
    let req =
        DurableHttpRequest::get(server.url("/a")).default_poll_interval(Duration::from_secs(1));
    let (out, history) = run(req, None).await;
    assert_eq!(out.unwrap().status, 200);
    assert_eq!(timer_waits(&history), vec![chrono::Duration::seconds(1)]);

    // Process-wide, for requests that do not choose.
    assert_eq!(
        durable_core::http::default_poll_interval(),
        Duration::from_secs(30)
    );
    durable_core::http::set_default_poll_interval(Duration::from_millis(500));
    let server = Server::start(0, script).await;
    let (out, history) = run(DurableHttpRequest::get(server.url("/b")), None).await;
    durable_core::http::set_default_poll_interval(Duration::from_secs(30));
    assert_eq!(out.unwrap().status, 200);
    assert_eq!(
        timer_waits(&history),
        vec![chrono::Duration::milliseconds(500)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_can_be_turned_off_per_request() {
    let server = Server::start(0, |_s: Seen, _| async move {
        answer(
            202,
            &[("location", "/status/1"), ("retry-after", "1")],
            "queued",
        )
    })
    .await;
    let req = DurableHttpRequest::get(server.url("/work")).asynchronous_pattern(false);
    let (out, history) = run(req, None).await;
    let resp = out.unwrap();
    assert_eq!(resp.status, 202);
    let absolute = server.url("/status/1");
    assert_eq!(resp.header("location"), Some(absolute.as_str()));
    assert_eq!(server.seen().len(), 1);
    assert!(timer_waits(&history).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_without_location_is_the_final_response() {
    let server = Server::start(0, |_s: Seen, _| async move {
        answer(202, &[("retry-after", "1")], "accepted, no location")
    })
    .await;
    let (out, history) = run(DurableHttpRequest::get(server.url("/x")), None).await;
    let resp = out.unwrap();
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (202, "accepted, no location")
    );
    assert_eq!(server.seen().len(), 1);
    assert!(timer_waits(&history).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_its_timeout_fails_the_task_with_a_clear_error() {
    let server = Server::start(0, |_s: Seen, _| async move {
        std::future::pending::<()>().await;
        answer(200, &[], "never")
    })
    .await;
    let url = server.url("/hang");
    let req = DurableHttpRequest::get(&url).timeout(Duration::from_millis(300));
    let (out, _) = run(req, None).await;
    let failed = out.unwrap_err();
    assert!(failed.is_timeout);
    assert_eq!(failed.error_type, "Timeout");
    assert_eq!(
        failed.message,
        format!("HTTP call 'GET {url}' failed: timed out: no response within 300ms (the request's timeout)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_bounds_the_polling_too() {
    // Always "still working": without a limit the orchestration would poll forever.
    let server = Server::start(0, |_s: Seen, _| async move {
        answer(202, &[("location", "/job"), ("retry-after", "1")], "")
    })
    .await;
    let url = server.url("/job");
    let req = DurableHttpRequest::get(&url).timeout(Duration::from_millis(2500));
    let (out, history) = run(req, None).await;
    let failed = out.unwrap_err();
    assert!(failed.is_timeout, "{failed:?}");
    assert!(
        failed
            .message
            .contains("still 202 Accepted at http://127.0.0.1:"),
        "{}",
        failed.message
    );
    assert!(
        failed
            .message
            .contains("after the request's timeout of 2.5s"),
        "{}",
        failed.message
    );
    // Polls stopped at the limit: one timer per poll that fit within 2.5 s.
    let polls = server.seen().len();
    assert!((1..=3).contains(&polls), "{polls} requests");
    assert_eq!(timer_waits(&history).len(), polls - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_that_is_not_handled_fails_the_instance() {
    let server = Server::start(0, |_s: Seen, _| async move {
        std::future::pending::<()>().await;
        answer(200, &[], "never")
    })
    .await;
    let reg = Registry::builder()
        .with_inventory()
        .orchestrator(
            "strict",
            |ctx: OrchestrationContext, url: String| async move {
                let resp = ctx
                    .call_http(DurableHttpRequest::get(url).timeout(Duration::from_millis(200)))
                    .await?;
                Ok::<_, OrchestrationError>(resp.status)
            },
        )
        .build()
        .unwrap();
    let rt = Worker::builder(Arc::new(MemoryStore::new()))
        .registry(reg)
        .start()
        .unwrap();
    let client = rt.client();
    let id = client
        .start_by_name(
            "strict",
            Some(serde_json::to_string(&server.url("/hang")).unwrap()),
            StartOptions::default(),
        )
        .await
        .unwrap();
    let state = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(state.status, RuntimeStatus::Failed);
    let failure = state.failure.unwrap();
    assert!(
        failure
            .message
            .contains("timed out: no response within 200ms"),
        "{}",
        failure.message
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chosen_status_codes_are_retried_until_a_good_answer() {
    let server = Server::start(0, |_s: Seen, n| async move {
        if n < 3 {
            answer(503, &[], "busy")
        } else {
            answer(200, &[], "ok")
        }
    })
    .await;
    let mut req = DurableHttpRequest::get(server.url("/busy"));
    req.retry_status_codes = vec![503];
    let (out, history) = run(req, Some(5)).await;
    assert_eq!(out.unwrap().body, "ok");
    assert_eq!(server.seen().len(), 3);
    assert_eq!(http_tasks(&history), 3);
    // The waits between attempts are durable timers.
    assert_eq!(timer_waits(&history).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_retries_run_out_on_a_status_code_its_last_answer_is_returned() {
    let server = Server::start(0, |_s: Seen, n| async move {
        answer(503, &[], &format!("busy {n}"))
    })
    .await;
    let mut req = DurableHttpRequest::get(server.url("/down"));
    req.retry_status_codes = vec![500, 503];
    let (out, history) = run(req, Some(3)).await;
    let resp = out.unwrap();
    assert_eq!((resp.status, resp.body.as_str()), (503, "busy 3"));
    assert_eq!(http_tasks(&history), 3);

    // Without a retry policy a chosen status code is simply the answer.
    let server = Server::start(0, |_s: Seen, _| async move { answer(503, &[], "busy") }).await;
    let mut req = DurableHttpRequest::get(server.url("/down"));
    req.retry_status_codes = vec![503];
    let (out, history) = run(req, None).await;
    assert_eq!(out.unwrap().status, 503);
    assert_eq!(http_tasks(&history), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_failures_are_retried() {
    // The first connection is closed without an answer.
    let server = Server::start(1, |_s: Seen, _| async move {
        answer(200, &[], "second time lucky")
    })
    .await;
    let (out, history) = run(DurableHttpRequest::get(server.url("/flaky")), Some(3)).await;
    assert_eq!(out.unwrap().body, "second time lucky");
    assert_eq!(http_tasks(&history), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_failure_fails_the_task_once_the_retries_run_out() {
    // A socket bound to the port but not listening: connections are refused, and no
    // other test can take the port while it is held.
    let holder = tokio::net::TcpSocket::new_v4().unwrap();
    holder.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = holder.local_addr().unwrap();
    let url = format!("http://{closed}/nobody-home");
    let (out, history) = run(DurableHttpRequest::get(&url), Some(3)).await;
    let failed = out.unwrap_err();
    assert_eq!(failed.error_type, "TransportError");
    assert!(!failed.is_timeout);
    assert!(
        failed
            .message
            .starts_with(&format!("HTTP call 'GET {url}' failed: ")),
        "{}",
        failed.message
    );
    assert!(
        failed.message.to_lowercase().contains("connect"),
        "{}",
        failed.message
    );
    assert_eq!(http_tasks(&history), 3);

    // Without retries: one attempt.
    let (out, history) = run(DurableHttpRequest::get(&url), None).await;
    assert_eq!(out.unwrap_err().error_type, "TransportError");
    assert_eq!(http_tasks(&history), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_fail_without_being_sent_or_retried() {
    let (out, history) = run(DurableHttpRequest::get("ftp://example.com/file"), Some(3)).await;
    let failed = out.unwrap_err();
    assert_eq!(failed.error_type, "InvalidArgument");
    assert!(failed.non_retriable);
    assert!(failed
        .message
        .contains("'ftp://example.com/file' is not an absolute http(s) URL"));
    assert_eq!(http_tasks(&history), 0);

    let server = Server::start(0, |_s: Seen, _| async move { answer(200, &[], "") }).await;
    let req = DurableHttpRequest::get(server.url("/x")).header("bad header", "v");
    let (out, history) = run(req, Some(3)).await;
    let failed = out.unwrap_err();
    assert_eq!(failed.error_type, "InvalidArgument");
    assert!(
        failed.message.contains("invalid header name 'bad header'"),
        "{}",
        failed.message
    );
    assert_eq!(http_tasks(&history), 1, "not retried");
    assert!(server.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sources_authenticate_at_call_time_and_stay_out_of_history() {
    let fetched = Arc::new(AtomicUsize::new(0));
    let f2 = fetched.clone();
    durable_http::activity::register_token_source("test-identity", move || {
        let n = f2.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok(format!("s3cr3t-token-{n}")) }
    });
    durable_http::activity::register_header_source("test-api-key", |method, url| async move {
        Ok(vec![(
            "x-api-key".to_string(),
            format!("k3y-for-{method}-{}", url.len()),
        )])
    });
    let server = Server::start(0, |s: Seen, n| async move {
        match (s.path.as_str(), n) {
            ("/start", _) => answer(202, &[("location", "/status"), ("retry-after", "1")], ""),
            _ => answer(200, &[], "authenticated"),
        }
    })
    .await;
    let rt = runtime(Arc::new(MemoryStore::new()));
    let client = rt.client();
    let id = start(
        &client,
        DurableHttpRequest::post_json(server.url("/start"), &"payload")
            .token_source("test-identity"),
        None,
    )
    .await;
    let out: Outcome = client.wait_for_output(&id, WAIT).await.unwrap();
    assert_eq!(out.unwrap().body, "authenticated");
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    // A fresh token for each request, the poll included.
    assert_eq!(seen[0].headers["authorization"], "Bearer s3cr3t-token-1");
    assert_eq!(seen[1].headers["authorization"], "Bearer s3cr3t-token-2");
    let status = client
        .get_status(
            &id,
            StatusOptions {
                show_input: true,
                show_history: true,
            },
        )
        .await
        .unwrap()
        .unwrap();
    let recorded = format!("{status:?}");
    assert!(
        recorded.contains("test-identity"),
        "the source's name is recorded"
    );
    assert!(
        !recorded.contains("s3cr3t"),
        "a token reached history or status: {recorded}"
    );

    let url = server.url("/api");
    let (out, _) = run(
        DurableHttpRequest::get(&url).token_source("test-api-key"),
        None,
    )
    .await;
    assert_eq!(out.unwrap().status, 200);
    let last = server.seen().pop().unwrap();
    assert_eq!(
        last.headers["x-api-key"],
        format!("k3y-for-GET-{}", url.len())
    );

    // An unknown source is a mistake retries cannot fix.
    let (out, history) = run(
        DurableHttpRequest::get(server.url("/x")).token_source("nobody"),
        Some(3),
    )
    .await;
    let failed = out.unwrap_err();
    assert_eq!(failed.error_type, "UnknownTokenSource");
    assert!(failed
        .message
        .contains("no token source named 'nobody' is registered"));
    assert_eq!(http_tasks(&history), 1);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_survives_a_restart_on_sqlite() {
    use durable_core::store::sqlite::SqliteStore;
    let dir = std::env::temp_dir().join(format!(
        "durable-call-http-restart-{}-{}",
        std::process::id(),
        durable_core::store::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("poll.db");
    // The job stays "running" until the second host is up, whatever the timing.
    let generation = Arc::new(AtomicUsize::new(1));
    let g2 = generation.clone();
    let server = Server::start(0, move |s: Seen, _| {
        let generation = g2.load(Ordering::SeqCst);
        async move {
            match (s.path.as_str(), generation) {
                ("/start", _) => answer(202, &[("location", "/job"), ("retry-after", "1")], ""),
                ("/job", 1) => answer(202, &[("location", "/job"), ("retry-after", "1")], ""),
                ("/job", _) => answer(200, &[], "finished after the restart"),
                _ => answer(404, &[], ""),
            }
        }
    })
    .await;

    let first = runtime(Arc::new(SqliteStore::open(&db).unwrap()));
    let client = first.client();
    let id = start(
        &client,
        DurableHttpRequest::post_json(server.url("/start"), &1),
        None,
    )
    .await;
    // Wait until the first poll is waiting on its durable timer, then stop the host.
    let mut polling = false;
    for _ in 0..1000 {
        let h = history(&client, &id).await;
        if !timer_waits(&h).is_empty() {
            polling = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(polling, "the instance never started polling");
    first.shutdown().await;
    // The last reference closes the store (one store per file at a time).
    drop(client);

    generation.store(2, Ordering::SeqCst);
    let second = runtime(Arc::new(SqliteStore::open(&db).unwrap()));
    let client = second.client();
    let out: Outcome = client.wait_for_output(&id, WAIT).await.unwrap();
    let resp = out.unwrap();
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, "finished after the restart")
    );
    let seen = server.seen();
    assert_eq!(
        seen.iter().filter(|s| s.path == "/start").count(),
        1,
        "the first request is not repeated after the restart"
    );
    assert!(seen.iter().any(|s| s.path == "/job"));
    let h = history(&client, &id).await;
    assert!(timer_waits(&h)
        .iter()
        .all(|w| *w == chrono::Duration::seconds(1)));
    second.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_rustls_checks_certificates() {
    use tokio_rustls::rustls;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let der = cert.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        cert.key_pair.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![rustls::pki_types::CertificateDer::from(der.clone())],
        key,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(answer(
                            200,
                            &[],
                            &format!("secure {}", req.uri().path()),
                        ))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let url = format!("https://{addr}/hello");

    // Not trusted: a clear transport error naming the certificate problem.
    let (out, _) = run(DurableHttpRequest::get(&url), None).await;
    let failed = out.unwrap_err();
    assert_eq!(failed.error_type, "TransportError");
    assert!(
        failed.message.to_lowercase().contains("certificate"),
        "{}",
        failed.message
    );

    durable_http::activity::trust_root_certificate(&der).unwrap();
    let (out, _) = run(DurableHttpRequest::get(&url), None).await;
    assert_eq!(out.unwrap().body, "secure /hello");
    assert!(durable_http::activity::trust_root_certificate(b"not a certificate").is_err());
    served.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_of_calls_in_parallel() {
    let server = Server::start(0, |s: Seen, _| async move { answer(200, &[], &s.path) }).await;
    let reg = Registry::builder()
        .with_inventory()
        .orchestrator(
            "fan",
            |ctx: OrchestrationContext, urls: Vec<String>| async move {
                let calls: Vec<_> = urls
                    .into_iter()
                    .map(|u| ctx.call_http(DurableHttpRequest::get(u)))
                    .collect();
                let mut bodies = HashMap::new();
                for r in ctx.when_all(calls).await {
                    let r = r?;
                    bodies.insert(r.body.clone(), r.status);
                }
                Ok::<_, OrchestrationError>(bodies)
            },
        )
        .build()
        .unwrap();
    let rt = Worker::builder(Arc::new(MemoryStore::new()))
        .registry(reg)
        .start()
        .unwrap();
    let urls: Vec<String> = (0..5).map(|i| server.url(&format!("/p{i}"))).collect();
    let id = rt
        .client()
        .start_by_name(
            "fan",
            Some(serde_json::to_string(&urls).unwrap()),
            StartOptions::default(),
        )
        .await
        .unwrap();
    let out: HashMap<String, u16> = rt.client().wait_for_output(&id, WAIT).await.unwrap();
    assert_eq!(out.len(), 5);
    assert!(out.values().all(|s| *s == 200));
    rt.shutdown().await;
}
