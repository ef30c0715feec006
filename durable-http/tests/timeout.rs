//! The request timeout: a handler that does not answer in time is cut with 504 in the
//! host's error shape, on the standalone server, mounted and around an application's own
//! handler; long polls get the wait they ask for on top and are not cut.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use durable_core::{MemoryStore, OrchestrationContext, OrchestrationError, Registry};
use durable_http::layers::{LongPoll, MatchedRoute, TimeoutLayer, TraceLayer};
use durable_http::{ClientExt, Host, HostBuilder, HttpResponse, StatusCode};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

const KEY: &str = "timeout-key-0123456789abcdef";
const TIMEOUT: Duration = Duration::from_millis(300);
const TIMED_OUT: &str = r#"{"error":"the request was not answered within 0.3 s"}"#;

fn registry() -> Registry {
    Registry::builder()
        .orchestrator("wait", |ctx: OrchestrationContext, _: ()| async move {
            let v: Value = ctx.wait_for_external_event("go").await?;
            Ok::<_, OrchestrationError>(v)
        })
        .build()
        .unwrap()
}

fn builder() -> HostBuilder {
    Host::builder()
        .addr("127.0.0.1:0")
        .store(Arc::new(MemoryStore::new()))
        .key(KEY)
        .registry(registry())
        .without_registered_routes()
        .request_timeout(TIMEOUT)
        .route(&["GET"], "/api/slow", |_client, _req| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(HttpResponse::text(StatusCode::OK, "too late"))
        })
        .route(&["POST"], "/api/start", |client, req| async move {
            let id = client
                .start_by_name("wait", None, Default::default())
                .await?;
            Ok(client.check_status_response(&req, &id))
        })
}

struct Answer {
    status: u16,
    content_type: Option<String>,
    body: String,
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

async fn call(addr: std::net::SocketAddr, method: &str, path: &str) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("x-functions-key", KEY)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[tokio::test]
async fn a_slow_handler_is_cut_with_504_standalone_and_mounted() {
    let h = builder().build().unwrap().bind().await.unwrap();
    let t = Instant::now();
    let r = call(h.addr, "GET", "/api/slow").await;
    assert_eq!((r.status, r.body.as_str()), (504, TIMED_OUT));
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert!(t.elapsed() >= TIMEOUT, "{:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    // Counted as a 504 of its route.
    let m = call(h.addr, "GET", "/metrics").await;
    assert!(
        m.body.contains(
            r#"durable_http_requests_total{route="/api/slow",method="GET",status="504"} 1"#
        ),
        "{}",
        m.body
    );
    h.shutdown().await;

    // Mounted: the same answer from `App::handle`.
    let host = builder().build().unwrap();
    let app = host.app();
    let req = Request::get("/api/slow")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = into_answer(app.handle(req).await).await;
    assert_eq!((r.status, r.body.as_str()), (504, TIMED_OUT));
}

#[tokio::test]
async fn long_polls_longer_than_the_timeout_are_not_cut() {
    let h = builder().build().unwrap().bind().await.unwrap();
    let started = call(h.addr, "POST", "/api/start").await;
    assert_eq!(started.status, 202, "{}", started.body);
    let id = serde_json::from_str::<Value>(&started.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let wait = Duration::from_secs(1);
    assert!(wait > TIMEOUT * 2);

    // The public status waits the whole `?wait=`, then answers 202: still running.
    let t = Instant::now();
    let r = call(h.addr, "GET", &format!("/api/instances/{id}?wait=1s")).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(t.elapsed() >= wait, "{:?}", t.elapsed());

    // A management start that waits, and a restart that waits: their `timeout`.
    let base = "/runtime/webhooks/durabletask";
    let t = Instant::now();
    let r = call(
        h.addr,
        "POST",
        &format!("{base}/orchestrators/wait?timeout=1&pollingInterval=1"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(t.elapsed() >= wait, "{:?}", t.elapsed());
    let second = serde_json::from_str::<Value>(&r.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let client = h.client();
    client.terminate(&second, None).await.unwrap();
    client
        .wait_for_completion(&second, Duration::from_secs(10))
        .await
        .unwrap();
    let t = Instant::now();
    let r = call(
        h.addr,
        "POST",
        &format!(
            "{base}/instances/{second}/restart?timeout=1&pollingInterval=1&restartWithNewInstanceId=true"
        ),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(t.elapsed() >= wait, "{:?}", t.elapsed());

    // Without a wait of their own the same routes keep the timeout: a list is quick and
    // is answered; the status without `?wait=` too.
    let r = call(h.addr, "GET", &format!("/api/instances/{id}")).await;
    assert_eq!(r.status, 202, "{}", r.body);
    h.shutdown().await;
}

/// The application's own handler: sleeps as long as its path says (in ms).
#[derive(Clone)]
struct Sleepy;

impl Service<Request<Full<Bytes>>> for Sleepy {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let ms: u64 = req
            .uri()
            .path()
            .trim_start_matches("/own/")
            .parse()
            .unwrap();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Response::new(Full::new(Bytes::from_static(b"done"))))
        })
    }
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

fn own(path: &str, long_poll: Option<Duration>) -> Request<Full<Bytes>> {
    let mut r = Request::get(path).body(Full::new(Bytes::new())).unwrap();
    r.extensions_mut()
        .insert(MatchedRoute::new("/own/{ms}", false));
    if let Some(wait) = long_poll {
        r.extensions_mut().insert(LongPoll(wait));
    }
    r
}

#[tokio::test]
async fn an_application_wrapping_its_own_handler_gets_the_same_answer() {
    let host = builder().build().unwrap();
    let app = host.app();
    let mut svc = app.metrics_layer().layer(
        TraceLayer::new().layer(
            app.auth_layer().layer(
                app.body_limit_layer()
                    .layer(app.timeout_layer().layer(Sleepy)),
            ),
        ),
    );
    let own_answer = send(&mut svc, own("/own/3600000", None)).await;
    let req = Request::get("/api/slow")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let hosts = into_answer(app.handle(req).await).await;
    assert_eq!(own_answer.status, 504);
    assert_eq!(
        (
            own_answer.status,
            &own_answer.content_type,
            &own_answer.body
        ),
        (hosts.status, &hosts.content_type, &hosts.body)
    );
    // In time: the handler's answer.
    let r = send(&mut svc, own("/own/1", None)).await;
    assert_eq!((r.status, r.body.as_str()), (200, "done"));
    // A long poll of its own: its wait on top of the timeout.
    let r = send(&mut svc, own("/own/600", Some(Duration::from_secs(2)))).await;
    assert_eq!((r.status, r.body.as_str()), (200, "done"));
    let text = app.metrics_text().await;
    assert!(
        text.contains(
            r#"durable_http_requests_total{route="/own/{ms}",method="GET",status="504"} 1"#
        ),
        "{text}"
    );

    // A layer of its own with another time.
    let mut quick = TimeoutLayer::new(Duration::from_millis(50)).layer(Sleepy);
    let r = send(&mut quick, own("/own/3600000", None)).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            504,
            r#"{"error":"the request was not answered within 0.05 s"}"#
        )
    );
}
