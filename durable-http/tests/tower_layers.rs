//! The host's public tower layers composed by an application around a handler of its
//! own: the same key check, body limit, panic answer and metrics as the host's routes,
//! down to the bytes of the error bodies.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use durable_core::{MemoryStore, Registry};
use durable_http::layers::{BodyLimitLayer, ManagementAuthLayer, MatchedRoute, TraceLayer};
use durable_http::{App, Host};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower_layer::Layer;
use tower_service::Service;

const KEY: &str = "layers-key-0123456789abcdef";

fn host() -> Host {
    Host::builder()
        .store(Arc::new(MemoryStore::new()))
        .key(KEY)
        .registry(Registry::builder().build().unwrap())
        .without_registered_routes()
        .body_limit(1024)
        .build()
        .unwrap()
}

/// The application's own handler: answers with the size of the body it got, and panics
/// on `/panic`.
#[derive(Clone)]
struct Own;

impl Service<Request<Full<Bytes>>> for Own {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        Box::pin(async move {
            if req.uri().path() == "/admin/panic" {
                panic!("the application's handler failed");
            }
            let body = req.into_body().collect().await?.to_bytes();
            Ok(Response::new(Full::new(Bytes::from(format!(
                "got {} bytes",
                body.len()
            )))))
        })
    }
}

/// The application's stack, composed from the host's public layers.
fn stack(
    app: &App,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> {
    app.metrics_layer().layer(
        TraceLayer::new()
            .layer(ManagementAuthLayer::new(KEY).layer(app.body_limit_layer().layer(Own))),
    )
}

struct Answer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

async fn send<S>(svc: &mut S, req: Request<Full<Bytes>>) -> Answer
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>,
{
    let ready = std::future::poll_fn(|cx| svc.poll_ready(cx)).await;
    let resp = match ready {
        Ok(()) => svc.call(req).await,
        Err(e) => Err(e),
    };
    let Ok(resp) = resp;
    into_answer(resp).await
}

async fn into_answer(resp: Response<Full<Bytes>>) -> Answer {
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let Ok(body) = resp.into_body().collect().await;
    Answer {
        status,
        content_type,
        body: String::from_utf8(body.to_bytes().to_vec()).unwrap(),
    }
}

/// A request for the application's route, as its own router would mark it.
fn req(
    method: &str,
    path: &str,
    route: &str,
    keyed: bool,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut r = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    r.extensions_mut().insert(MatchedRoute::new(route, keyed));
    r
}

/// The host's own answer to a request, for comparison.
async fn host_answer(
    app: &App,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let r = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    into_answer(app.handle(r).await).await
}

#[tokio::test]
async fn an_app_composing_the_layers_answers_as_the_host_does() {
    let host = host();
    let app = host.app();
    let mut svc = stack(&app);
    let route = "/admin/things/{id}";

    // The key: missing or wrong answers the host's 401 byte for byte.
    let own = send(
        &mut svc,
        req("GET", "/admin/things/1", route, true, &[], ""),
    )
    .await;
    let hosts = host_answer(
        &app,
        "GET",
        "/runtime/webhooks/durabletask/instances",
        &[],
        "",
    )
    .await;
    assert_eq!(own.status, 401);
    assert_eq!(
        (own.status, &own.content_type, &own.body),
        (hosts.status, &hosts.content_type, &hosts.body)
    );
    assert_eq!(own.body, r#"{"error":"missing or invalid key"}"#);
    let wrong = [("x-functions-key", "not-the-key-0123456789")];
    let own = send(
        &mut svc,
        req("GET", "/admin/things/1", route, true, &wrong, ""),
    )
    .await;
    assert_eq!(own.status, 401);
    // In each place the host takes it.
    let bearer = format!("Bearer {KEY}");
    for (path, headers) in [
        ("/admin/things/1", vec![("x-functions-key", KEY)]),
        ("/admin/things/1", vec![("authorization", bearer.as_str())]),
        (&*format!("/admin/things/1?code={KEY}"), vec![]),
    ] {
        let own = send(&mut svc, req("GET", path, route, true, &headers, "")).await;
        assert_eq!(
            (own.status, own.body.as_str()),
            (200, "got 0 bytes"),
            "{path}"
        );
    }
    // The host's management API takes the same forms of the key.
    let hosts = host_answer(
        &app,
        "GET",
        "/runtime/webhooks/durabletask/instances",
        &[("authorization", bearer.as_str())],
        "",
    )
    .await;
    assert_eq!(hosts.status, 200, "{}", hosts.body);
    // A route its router marks as public passes without one.
    let own = send(&mut svc, req("GET", "/open", "/open", false, &[], "")).await;
    assert_eq!(own.status, 200);

    // The body limit: the host's 413 byte for byte, by Content-Length or by the body.
    let big = "x".repeat(2000);
    let keyed = [("x-functions-key", KEY), ("content-length", "2000")];
    let own = send(
        &mut svc,
        req("POST", "/admin/things/1", route, true, &keyed, &big),
    )
    .await;
    let hosts = host_answer(
        &app,
        "POST",
        "/runtime/webhooks/durabletask/instances/x/terminate",
        &keyed,
        &big,
    )
    .await;
    assert_eq!(own.status, 413);
    assert_eq!(
        (own.status, &own.content_type, &own.body),
        (hosts.status, &hosts.content_type, &hosts.body)
    );
    let own = send(
        &mut svc,
        req(
            "POST",
            "/admin/things/1",
            route,
            true,
            &[("x-functions-key", KEY)],
            &big,
        ),
    )
    .await;
    assert_eq!(own.status, 413, "{}", own.body);
    let own = send(
        &mut svc,
        req(
            "POST",
            "/admin/things/1",
            route,
            true,
            &[("x-functions-key", KEY)],
            "hello",
        ),
    )
    .await;
    assert_eq!((own.status, own.body.as_str()), (200, "got 5 bytes"));

    // A panic in the handler answers the host's 500.
    let own = send(
        &mut svc,
        req(
            "GET",
            "/admin/panic",
            "/admin/panic",
            true,
            &[("x-functions-key", KEY)],
            "",
        ),
    )
    .await;
    assert_eq!(own.status, 500);
    assert_eq!(
        own.body,
        r#"{"error":"the request failed inside the server"}"#
    );

    // Counted in the host's metrics by the route's pattern, never the raw path.
    let text = app.metrics_text().await;
    for line in [
        r#"durable_http_requests_total{route="/admin/things/{id}",method="GET",status="401"} 2"#,
        r#"durable_http_requests_total{route="/admin/things/{id}",method="GET",status="200"} 3"#,
        r#"durable_http_requests_total{route="/admin/things/{id}",method="POST",status="413"} 2"#,
        r#"durable_http_requests_total{route="/admin/things/{id}",method="POST",status="200"} 1"#,
        r#"durable_http_requests_total{route="/open",method="GET",status="200"} 1"#,
        r#"durable_http_requests_total{route="/admin/panic",method="GET",status="500"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(!text.contains("/admin/things/1\""), "{text}");
}

#[tokio::test]
async fn a_request_without_a_matched_route_needs_the_key_and_counts_as_unmatched() {
    let host = host();
    let app = host.app();
    let mut svc = app
        .metrics_layer()
        .layer(ManagementAuthLayer::new(KEY).layer(BodyLimitLayer::new(8).layer(Own)));
    let plain = |headers: &[(&str, &str)], body: &str| {
        let mut b = Request::builder().method("POST").uri("/anything");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
    };
    assert_eq!(send(&mut svc, plain(&[], "")).await.status, 401);
    let own = send(&mut svc, plain(&[("x-functions-key", KEY)], "123456789")).await;
    assert_eq!(own.status, 413);
    assert_eq!(
        own.body,
        r#"{"error":"the request body is 9 bytes or more, over the limit of 8 bytes"}"#
    );
    let own = send(&mut svc, plain(&[("x-functions-key", KEY)], "12345678")).await;
    assert_eq!((own.status, own.body.as_str()), (200, "got 8 bytes"));
    let text = app.metrics_text().await;
    assert!(
        text.contains(
            r#"durable_http_requests_total{route="unmatched",method="POST",status="401"} 1"#
        ),
        "{text}"
    );
}
