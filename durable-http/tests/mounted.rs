//! The host mounted in an application's own hyper server through `Host::service()`: the
//! same router and the same checks as the standalone server (keys, body limit, 405 with
//! `Allow`, JSON errors), metrics by route pattern, and trace context on starts. Also the
//! start routes the one routing table refuses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use durable_core::{
    ActivityError, MemoryStore, OrchestrationContext, OrchestrationError, Registry,
};
use durable_http::{ClientExt, Host};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

const KEY: &str = "mounted-key-0123456789abcdef";

fn registry() -> Registry {
    Registry::builder()
        .activity("echo", |_ctx, s: String| async move {
            Ok::<_, ActivityError>(s)
        })
        .orchestrator("echo", |ctx: OrchestrationContext, s: String| async move {
            Ok::<_, OrchestrationError>(ctx.call_activity_by_name::<String>("echo", &s).await?)
        })
        .build()
        .unwrap()
}

fn builder() -> durable_http::HostBuilder {
    Host::builder()
        .store(Arc::new(MemoryStore::new()))
        .key(KEY)
        .registry(registry())
        .without_registered_routes()
        .body_limit(1024)
}

/// Serves the host's service under `/durable` on a listener of the test's own, as an
/// application would.
async fn mounted() -> (SocketAddr, Host) {
    let host = builder()
        .mount_prefix("/durable")
        .route(&["POST"], "/api/echo/{word}", |client, req| async move {
            let word = req.param("word").unwrap_or_default().to_string();
            let id = client
                .start_by_name(
                    "echo",
                    Some(serde_json::to_string(&word).unwrap()),
                    Default::default(),
                )
                .await?;
            Ok(client.check_status_response(&req, &id))
        })
        .build()
        .unwrap();
    let service = host.service();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, host)
}

struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

async fn call(
    addr: SocketAddr,
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

fn error_of(r: &Resp) -> String {
    let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("not JSON: {}", r.body));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {}", r.body))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_host_answers_as_the_standalone_one_does() {
    let (addr, host) = mounted().await;
    let client = host.client();

    // A start through the mount, with a trace context that the instance keeps.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = call(
        addr,
        "POST",
        "/durable/api/echo/hi%20there",
        &[("traceparent", traceparent)],
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = serde_json::from_str::<Value>(&r.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let state = client
        .wait_for_completion(&id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(state.output.as_deref(), Some("\"hi there\""));
    let status = client
        .get_status(
            &id,
            durable_core::StatusOptions {
                show_history: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    let history = serde_json::to_string(&status.history.unwrap()).unwrap();
    assert!(history.contains(traceparent), "{history}");

    // 405 with Allow and a JSON body; 404 outside the mount and for unknown paths.
    let r = call(addr, "GET", "/durable/api/echo/x", &[], "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST");
    assert!(error_of(&r).contains("not allowed"));
    assert_eq!(call(addr, "POST", "/api/echo/x", &[], "").await.status, 404);
    assert_eq!(
        call(addr, "GET", "/durable/nothing/here", &[], "")
            .await
            .status,
        404
    );
    // The body limit, by header and by the body itself.
    let big = "x".repeat(2048);
    let r = call(addr, "POST", "/durable/api/echo/x", &[], &big).await;
    assert_eq!(r.status, 413);
    assert!(error_of(&r).contains("over the limit"));
    // The public status (405 with Allow for other methods), the keyed management API,
    // the dashboard and the metrics.
    let r = call(
        addr,
        "GET",
        &format!("/durable/api/instances/{id}"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(
        addr,
        "DELETE",
        &format!("/durable/api/instances/{id}"),
        &[],
        "",
    )
    .await;
    assert_eq!(
        (r.status, r.headers["allow"].to_str().unwrap()),
        (405, "GET")
    );
    let r = call(
        addr,
        "GET",
        "/durable/runtime/webhooks/durabletask/instances",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(error_of(&r), "missing or invalid key");
    let r = call(
        addr,
        "GET",
        "/durable/runtime/webhooks/durabletask/instances",
        &[("x-functions-key", KEY)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        call(addr, "GET", "/durable/dashboard/", &[], "")
            .await
            .status,
        200
    );
    assert_eq!(
        call(addr, "GET", "/durable/metrics", &[], "").await.status,
        401
    );
    let r = call(
        addr,
        "GET",
        "/durable/metrics",
        &[("x-functions-key", KEY)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    for line in [
        r#"durable_http_requests_total{route="/api/echo/{word}",method="POST",status="202"} 1"#,
        r#"durable_http_requests_total{route="/api/echo/{word}",method="GET",status="405"} 1"#,
        r#"durable_http_requests_total{route="/api/echo/{word}",method="POST",status="413"} 1"#,
        r#"durable_http_requests_total{route="unmatched",method="POST",status="404"} 1"#,
        r#"durable_http_requests_total{route="/api/instances/{id}",method="GET",status="200"} 1"#,
        r#"durable_http_requests_total{route="/runtime/webhooks/durabletask/instances",method="GET",status="401"} 1"#,
        r#"durable_http_requests_total{route="/dashboard/{file}",method="GET",status="200"} 1"#,
        r#"durable_http_requests_total{route="/metrics",method="GET",status="401"} 1"#,
        r#"durable_instances_finished_total{orchestrator="echo",status="completed"} 1"#,
    ] {
        assert!(r.body.contains(line), "{line} in\n{}", r.body);
    }
}

/// As a tower service (what axum's `nest_service` takes), with the application's own
/// request body type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_is_a_tower_service_too() {
    use tower_service::Service;
    let host = builder().mount_prefix("/durable").build().unwrap();
    let mut service = host.service();
    std::future::poll_fn(|cx| Service::<http::Request<Full<Bytes>>>::poll_ready(&mut service, cx))
        .await
        .unwrap();
    let req = http::Request::builder()
        .uri("/durable/runtime/webhooks/durabletask/instances")
        .header("x-functions-key", KEY)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = service.call(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let req = http::Request::builder()
        .uri("/durable/runtime/webhooks/durabletask/instances")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = service.call(req).await.unwrap();
    assert_eq!(resp.status(), 401);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"],
        "missing or invalid key"
    );
}

#[tokio::test]
async fn start_routes_under_host_routes_or_colliding_are_refused() {
    let ok = |_c: durable_http::DurableClient, _r: durable_http::HttpRequest| async {
        Ok(durable_http::HttpResponse::empty(http::StatusCode::OK))
    };
    for (pattern, reserved) in [
        (
            "/runtime/webhooks/durabletask/mine",
            "/runtime/webhooks/durabletask",
        ),
        (
            "/runtime/webhooks/durabletask/{x}/y",
            "/runtime/webhooks/durabletask",
        ),
        ("/dashboard/extra.js", "/dashboard"),
        ("/metrics", "/metrics"),
    ] {
        let err = builder().route(&["GET"], pattern, ok).build().unwrap_err();
        let err = err.to_string();
        assert!(err.contains(pattern) && err.contains(reserved), "{err}");
    }
    // The public status route's shape is the host's.
    let err = builder()
        .route(&["GET"], "/api/instances/{name}", ok)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("routes collide") && err.contains("host"),
        "{err}"
    );
    // Unless the public status is off; and a deeper route under its prefix is fine.
    builder()
        .public_status(durable_http::PublicStatus::Off)
        .route(&["GET"], "/api/instances/{name}", ok)
        .build()
        .unwrap();
    builder()
        .route(&["GET"], "/api/instances/{id}/cancel", ok)
        .build()
        .unwrap();
}
