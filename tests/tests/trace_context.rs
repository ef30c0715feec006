//! W3C trace context end to end: a start request's `traceparent` is kept with the
//! instance and parents its episode, activity, entity operation and `call_http` spans
//! (checked in OpenTelemetry's in-memory exporter), and `call_http` sends it on; a
//! malformed header is ignored.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use durable_core::{
    ActivityContext, ActivityError, DurableHttpRequest, EntityContext, EntityId, MemoryStore,
    OrchestrationContext, OrchestrationError, Registry,
};
use durable_http::{ClientExt, Host, RunningHost};
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

const KEY: &str = "trace-key-0123456789abcdef";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// A local server that answers 200 and keeps the `traceparent` of every request.
async fn server() -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = s2.clone();
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let seen = seen.clone();
                async move {
                    let _: &hyper::body::Incoming = req.body();
                    seen.lock().unwrap().push(
                        req.headers()
                            .get("traceparent")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string),
                    );
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, seen)
}

fn registry() -> Registry {
    Registry::builder()
        .with_inventory()
        .activity("step", |ctx: ActivityContext, _: ()| async move {
            Ok::<_, ActivityError>(ctx.trace_parent().map(|t| t.trace_id()))
        })
        .entity(
            "tally",
            |ctx: EntityContext<i64>, op: durable_core::Operation| async move {
                let v = ctx.get_state_or_default()? + op.input::<i64>()?;
                ctx.set_state(&v);
                Ok::<_, durable_core::FailureDetails>(Some(v))
            },
        )
        .orchestrator(
            "traced",
            |ctx: OrchestrationContext, url: String| async move {
                let seen: Option<String> = ctx.call_activity_by_name("step", &()).await?;
                let n: i64 = ctx
                    .call_entity(&EntityId::new("tally", "t1"), "add", &1)
                    .await?;
                let resp = ctx.call_http(DurableHttpRequest::get(url)).await?;
                Ok::<_, OrchestrationError>((seen, n, resp.status))
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
        .route(&["POST"], "/api/traced", |client, req| async move {
            let url: String = req.json()?;
            let id = client
                .start_by_name(
                    "traced",
                    Some(serde_json::to_string(&url).unwrap()),
                    Default::default(),
                )
                .await?;
            Ok(client.check_status_response(&req, &id))
        })
        .build()
        .unwrap()
        .bind()
        .await
        .unwrap()
}

/// POSTs `body` with these headers; the started instance's id.
async fn start(h: &RunningHost, headers: &[(&str, &str)], body: &str) -> String {
    let stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method("POST")
        .uri("/api/traced")
        .header("host", h.addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["id"].as_str().unwrap().to_string()
}

async fn history_of(
    client: &durable_core::DurableClient,
    id: &str,
) -> Vec<durable_core::HistoryEvent> {
    let options = durable_core::StatusOptions {
        show_history: true,
        ..Default::default()
    };
    let status = client.get_status(id, options).await.unwrap().unwrap();
    status.history.unwrap()
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_requests_traceparent_parents_the_instances_spans() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("durable-tests")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let (addr, seen) = server().await;
    let url = serde_json::to_string(&format!("http://{addr}/hook")).unwrap();
    let h = host().await;
    let client = h.client();

    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let id = start(&h, &[("traceparent", &traceparent)], &url).await;
    let state = client
        .wait_for_completion(&id, Duration::from_secs(30))
        .await
        .unwrap();
    let out: (Option<String>, i64, u16) =
        serde_json::from_str(state.output.as_deref().unwrap()).unwrap();
    assert_eq!(
        out,
        (Some(TRACE.to_string()), 1, 200),
        "the activity saw the trace"
    );

    // Kept with the instance: the start event carries it, so any host replaying the
    // history continues the trace.
    let history = history_of(&client, &id).await;
    let started = serde_json::to_string(&history).unwrap();
    assert!(started.contains(&traceparent), "{started}");

    // `call_http` sent the trace on, from a span of its own.
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let forwarded = durable_core::trace::TraceParent::parse(sent[0].as_deref().unwrap()).unwrap();
    assert_eq!(forwarded.trace_id(), TRACE);
    assert_ne!(forwarded.parent_id(), PARENT);

    // A malformed header is ignored: the instance starts, with no trace of its own.
    let bad = start(&h, &[("traceparent", "00-not-a-trace-context")], &url).await;
    client
        .wait_for_completion(&bad, Duration::from_secs(30))
        .await
        .unwrap();
    let history = history_of(&client, &bad).await;
    let started = serde_json::to_string(&history).unwrap();
    assert!(!started.contains("trace_parent"), "{started}");
    let sent = seen.lock().unwrap().clone();
    assert_eq!(
        sent.get(1),
        Some(&None),
        "no traceparent sent for an untraced instance"
    );
    h.shutdown().await;

    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let trace = TraceId::from_hex(TRACE).unwrap();
    let remote = SpanId::from_hex(PARENT).unwrap();
    let in_trace = |s: &&SpanData| s.span_context.trace_id() == trace;

    // The start request is a span in the caller's trace, named by its route.
    let requests: Vec<_> = named(&spans, "http_request")
        .into_iter()
        .filter(in_trace)
        .collect();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].parent_span_id, remote);
    let attribute = |s: &SpanData, key: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(
        attribute(requests[0], "route").as_deref(),
        Some("/api/traced")
    );
    assert_eq!(attribute(requests[0], "status").as_deref(), Some("202"));

    // Every episode of the traced instance is a child of the caller's span.
    let episodes: Vec<_> = named(&spans, "episode")
        .into_iter()
        .filter(in_trace)
        .collect();
    assert!(
        episodes.len() >= 4,
        "one per step at least: {}",
        episodes.len()
    );
    for e in &episodes {
        assert_eq!(e.parent_span_id, remote, "{e:?}");
    }
    // Activities too, the built-in HTTP one included; the call_http span is the
    // activity's child and the id it sent on is its own.
    let activities: Vec<_> = named(&spans, "activity")
        .into_iter()
        .filter(in_trace)
        .collect();
    assert_eq!(activities.len(), 2, "{activities:?}");
    for a in &activities {
        assert_eq!(a.parent_span_id, remote, "{a:?}");
    }
    let calls: Vec<_> = named(&spans, "call_http")
        .into_iter()
        .filter(in_trace)
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = calls[0];
    assert!(
        activities
            .iter()
            .any(|a| a.span_context.span_id() == call.parent_span_id),
        "call_http is a child of its activity"
    );
    assert_eq!(
        call.span_context.span_id().to_string(),
        forwarded.parent_id()
    );
    // The entity operation the instance called.
    let ops: Vec<_> = named(&spans, "entity_operation")
        .into_iter()
        .filter(in_trace)
        .collect();
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0].parent_span_id, remote);

    // The untraced instance's spans are in other traces, none under the caller's span.
    let others = named(&spans, "episode")
        .into_iter()
        .filter(|s| s.span_context.trace_id() != trace)
        .count();
    assert!(others >= 4, "{others}");
    assert!(spans
        .iter()
        .filter(|s| s.span_context.trace_id() != trace)
        .all(|s| s.parent_span_id != remote));
}
