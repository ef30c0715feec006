//! The host against hostile clients, over raw TCP: spoofed `Host` and forwarded headers,
//! panicking handlers, hostile numbers, what the public status reveals, and floods of
//! idle connections and stalled bodies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use durable_core::{
    ActivityError, MemoryStore, OrchestrationContext, OrchestrationError, Registry,
};
use durable_http::{ClientExt, Host, HostBuilder, PeerAddr, PublicStatus, RunningHost};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const KEY: &str = "hostile-test-key-0123456789";

fn registry() -> Registry {
    Registry::builder()
        .activity("fail", |_ctx, _: ()| async move {
            Err::<(), _>(ActivityError::new(
                "boom at /srv/app/src/secret.rs:42 (password=hunter2)",
            ))
        })
        .orchestrator("quick", |_ctx: OrchestrationContext, _: ()| async move {
            Ok::<_, OrchestrationError>("done".to_string())
        })
        .orchestrator("wait", |ctx: OrchestrationContext, _: ()| async move {
            ctx.wait_for_external_event::<Value>("go").await?;
            Ok::<_, OrchestrationError>(())
        })
        .orchestrator("failing", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_activity_by_name::<()>("fail", &()).await?;
            Ok::<_, OrchestrationError>(())
        })
        .build()
        .unwrap()
}

/// A builder for a host on an ephemeral port with two start endpoints and one that
/// panics.
fn builder() -> HostBuilder {
    Host::builder()
        .addr("127.0.0.1:0")
        .store(Arc::new(MemoryStore::new()))
        .key(KEY)
        .registry(registry())
        .without_registered_routes()
        .route(&["POST"], "/api/start/{name}", |client, req| async move {
            let name = req.param("name").unwrap_or_default().to_string();
            let id = client
                .start_by_name(&name, None, Default::default())
                .await?;
            Ok(client.check_status_response(&req, &id))
        })
        .route(&["POST"], "/api/run/{name}", |client, req| async move {
            let name = req.param("name").unwrap_or_default().to_string();
            let id = client
                .start_by_name(&name, None, Default::default())
                .await?;
            client
                .wait_for_completion_or_check_status_response(&req, &id, Duration::from_secs(20))
                .await
        })
        .route(&["GET"], "/api/panic", |_client, req| async move {
            let n: u64 = req.query("n").unwrap_or("x").parse().unwrap();
            Ok(durable_http::HttpResponse::text(
                http::StatusCode::OK,
                n.to_string(),
            ))
        })
        .route(&["GET"], "/api/base", |_client, req| async move {
            Ok(durable_http::HttpResponse::json(
                http::StatusCode::OK,
                &serde_json::json!({
                    "base": req.base_url(),
                    "configured": req.configured_base_url(),
                }),
            ))
        })
}

async fn serve(b: HostBuilder) -> RunningHost {
    b.build().unwrap().bind().await.unwrap()
}

async fn host() -> RunningHost {
    serve(builder()).await
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// Parses one HTTP/1.1 response (the whole of what the server sent).
fn parse(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response in {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    Resp {
        status,
        headers,
        body,
    }
}

/// One request on its own connection (`connection: close`), with the given extra
/// header lines; the answer must come within 20 s.
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> Resp {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        head.push_str(&format!("host: {addr}\r\n"));
    }
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.push_str(body);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 20 s")
        .expect("the connection stays up until the answer");
    parse(&raw)
}

fn mgmt_header() -> String {
    format!("x-functions-key: {KEY}")
}

/// Waits (up to 20 s) for the server to close `stream`, discarding what it sends.
async fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    match timeout(Duration::from_secs(20), stream.read_to_end(&mut got)).await {
        Ok(_) => got,
        Err(_) => panic!("the server never closed the connection"),
    }
}

const SPOOF: [&str; 4] = [
    "host: internal.example:8080",
    "x-forwarded-host: evil.example",
    "x-forwarded-proto: https",
    "forwarded: proto=https;host=evil.example",
];

fn assert_unspoofed(h: &RunningHost, url: &str) {
    assert!(url.starts_with(&format!("http://{}/", h.addr)), "{url}");
    assert!(!url.contains("evil") && !url.contains("internal"), "{url}");
}

// ---------------------------------------------------------------------------------------
// Untrusted input reaching URLs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_host_and_forwarded_headers_never_reach_urls() {
    let h = host().await;
    // A start endpoint's Location and statusQueryGetUri.
    let r = request(h.addr, "POST", "/api/start/wait", &SPOOF, "").await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_unspoofed(&h, r.header("location"));
    assert_unspoofed(&h, r.body["statusQueryGetUri"].as_str().unwrap());
    let id = r.body["id"].as_str().unwrap().to_string();
    // The public status of a running instance.
    let r = request(h.addr, "GET", &format!("/api/instances/{id}"), &SPOOF, "").await;
    assert_eq!(r.status, 202);
    assert_unspoofed(&h, r.header("location"));
    // The management API's payload URLs and Location.
    let key = mgmt_header();
    let mut headers = SPOOF.to_vec();
    headers.push(&key);
    let r = request(
        h.addr,
        "POST",
        "/runtime/webhooks/durabletask/orchestrators/wait",
        &headers,
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_unspoofed(&h, r.header("location"));
    for (k, v) in r.body.as_object().unwrap() {
        if k != "id" {
            assert_unspoofed(&h, v.as_str().unwrap());
        }
    }
    let mid = r.body["id"].as_str().unwrap().to_string();
    let r = request(
        h.addr,
        "GET",
        &format!("/runtime/webhooks/durabletask/instances/{mid}"),
        &headers,
        "",
    )
    .await;
    assert_eq!(r.status, 202);
    assert_unspoofed(&h, r.header("location"));
    // What handlers see.
    let r = request(h.addr, "GET", "/api/base", &SPOOF, "").await;
    assert_eq!(r.body["base"], format!("http://{}", h.addr));
    assert_eq!(r.body["configured"], format!("http://{}", h.addr));
    assert_eq!(h.base_url(), format!("http://{}", h.addr));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_url_and_trusted_proxies_decide_the_base() {
    // A configured public URL wins over every header, trusted or not.
    let h = serve(
        builder()
            .public_url("https://jobs.example.com/svc/")
            .trusted_proxies(["127.0.0.1"]),
    )
    .await;
    let r = request(h.addr, "POST", "/api/start/quick", &SPOOF, "").await;
    assert!(
        r.header("location")
            .starts_with("https://jobs.example.com/svc/api/instances/"),
        "{:?}",
        r.headers
    );
    assert_eq!(h.base_url(), "https://jobs.example.com/svc");
    h.shutdown().await;

    // Forwarded headers count from a trusted proxy, each value checked.
    let h = serve(builder().trusted_proxies(["10.9.9.9", "127.0.0.0/8"])).await;
    let r = request(
        h.addr,
        "GET",
        "/api/base",
        &[
            "x-forwarded-host: forged.example, app.example:8443",
            "x-forwarded-proto: https",
        ],
        "",
    )
    .await;
    assert_eq!(r.body["base"], "https://app.example:8443");
    assert_eq!(
        r.body["configured"],
        format!("http://{}", h.addr),
        "the configured base never comes from headers"
    );
    let r = request(
        h.addr,
        "GET",
        "/api/base",
        &[
            "host: a b",
            "x-forwarded-host: evil.example/@x",
            "x-forwarded-proto: javascript",
        ],
        "",
    )
    .await;
    assert_eq!(
        r.body["base"],
        format!("http://{}", h.addr),
        "invalid values are ignored"
    );
    h.shutdown().await;

    // A proxy that is not trusted is a stranger.
    let h = serve(builder().trusted_proxies(["10.9.9.9"])).await;
    let r = request(h.addr, "GET", "/api/base", &SPOOF, "").await;
    assert_eq!(r.body["base"], format!("http://{}", h.addr));
    h.shutdown().await;

    // Bad public URLs and proxy lists stop the build.
    for url in [
        "jobs.example.com",
        "ftp://x",
        "https://x/?q=1",
        "https://x/#f",
        "http://a b",
    ] {
        let err = builder().public_url(url).build().unwrap_err();
        assert!(err.to_string().contains("public URL"), "{url}: {err}");
    }
    let err = builder()
        .trusted_proxies(["10.0.0.0/99"])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("10.0.0.0/99"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_host_trusts_no_header_without_a_peer() {
    let host = builder()
        .mount_prefix("/durable")
        .trusted_proxies(["0.0.0.0/0", "::/0"])
        .build()
        .unwrap();
    let app = host.app();
    let req = |peer: Option<&str>| {
        let mut r = http::Request::builder()
            .method("POST")
            .uri("/durable/api/start/quick")
            .header("host", "internal.example")
            .header("x-forwarded-host", "evil.example")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        if let Some(p) = peer {
            r.extensions_mut().insert(PeerAddr(p.parse().unwrap()));
        }
        r
    };
    // No peer known: root-relative URLs, no header used.
    let resp = app.handle(req(None)).await;
    assert_eq!(resp.status(), 202);
    let loc = resp.headers()["location"].to_str().unwrap();
    assert!(loc.starts_with("/durable/api/instances/"), "{loc}");
    // The embedding server says the peer is a trusted proxy.
    let resp = app.handle(req(Some("10.1.1.1:4000"))).await;
    let loc = resp.headers()["location"].to_str().unwrap();
    assert!(
        loc.starts_with("http://evil.example/durable/api/instances/"),
        "{loc}"
    );
}

// ---------------------------------------------------------------------------------------
// Panics and hostile numbers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_500_json_and_the_host_keeps_serving() {
    let h = host().await;
    for _ in 0..3 {
        let r = request(h.addr, "GET", "/api/panic", &[], "").await;
        assert_eq!(r.status, 500, "{:?}", r.body);
        let error = r.body["error"].as_str().unwrap();
        assert!(
            !error.contains("ParseIntError"),
            "panic text stays in the log: {error}"
        );
    }
    let r = request(h.addr, "GET", "/api/panic?n=7", &[], "").await;
    assert_eq!((r.status, &r.body), (200, &Value::from(7)));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_numbers_are_refused_or_capped_never_a_panic() {
    let h = host().await;
    let r = request(h.addr, "POST", "/api/run/quick", &[], "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let id = h
        .client()
        .list_instances(&Default::default(), 10, None)
        .await
        .unwrap()
        .items[0]
        .instance_id
        .clone();
    // Huge waits are capped (the instance is done, so 200 at once); non-numbers are 400.
    for (wait, expected) in [
        ("1e20", 200),
        ("1e20ms", 200),
        ("1e300m", 200),
        ("18446744073709551616", 200),
        ("NaN", 400),
        ("inf", 400),
        ("-1", 400),
        ("1e999", 400),
        ("%00", 400),
    ] {
        let path = format!("/api/instances/{id}?wait={wait}");
        let r = request(h.addr, "GET", &path, &[], "").await;
        assert_eq!(r.status, expected, "wait={wait}: {:?}", r.body);
        if expected == 400 {
            assert!(r.body["error"].as_str().unwrap().contains("invalid wait"));
        }
    }
    let key = mgmt_header();
    let start = "/runtime/webhooks/durabletask/orchestrators/quick";
    let r = request(
        h.addr,
        "POST",
        &format!("{start}?timeout=1e20&pollingInterval=1e19"),
        &[&key],
        "",
    )
    .await;
    assert_eq!((r.status, &r.body), (200, &Value::from("done")));
    for q in [
        "timeout=NaN&pollingInterval=1",
        "timeout=inf&pollingInterval=1",
        "timeout=5&pollingInterval=-1",
    ] {
        let r = request(h.addr, "POST", &format!("{start}?{q}"), &[&key], "").await;
        assert_eq!(r.status, 400, "{q}: {:?}", r.body);
    }
    for top in ["1e20", "-1", "0", "18446744073709551616"] {
        let r = request(
            h.addr,
            "GET",
            &format!("/runtime/webhooks/durabletask/instances?top={top}"),
            &[&key],
            "",
        )
        .await;
        assert_eq!(r.status, 400, "top={top}: {:?}", r.body);
    }
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// What the public status shows

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_status_shows_fixed_reasons_by_default_and_details_only_with_the_key() {
    let h = host().await;
    let r = request(h.addr, "POST", "/api/run/failing", &[], "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["runtimeStatus"], "Failed");
    assert_eq!(r.body["reason"], "the orchestration failed");
    let failed = r.body["id"].as_str().unwrap().to_string();
    let r = request(h.addr, "GET", &format!("/api/instances/{failed}"), &[], "").await;
    assert_eq!(r.body["reason"], "the orchestration failed");
    assert!(!r.body.to_string().contains("secret"), "{}", r.body);
    // The keyed management API has the details.
    let r = request(
        h.addr,
        "GET",
        &format!("/runtime/webhooks/durabletask/instances/{failed}"),
        &[&mgmt_header()],
        "",
    )
    .await;
    assert!(
        r.body["output"].as_str().unwrap().contains("secret.rs"),
        "{:?}",
        r.body
    );
    // Terminated: a fixed reason too.
    let r = request(h.addr, "POST", "/api/start/wait", &[], "").await;
    let id = r.body["id"].as_str().unwrap().to_string();
    h.client()
        .terminate(&id, Some("fired by /home/ops/terminate.sh"))
        .await
        .unwrap();
    let r = request(
        h.addr,
        "GET",
        &format!("/api/instances/{id}?wait=10s"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.body["runtimeStatus"], "Terminated");
    assert_eq!(r.body["reason"], "terminated");
    h.shutdown().await;

    // Full: the messages, shortened.
    let h = serve(builder().public_status(PublicStatus::Full)).await;
    let r = request(h.addr, "POST", "/api/run/failing", &[], "").await;
    assert!(
        r.body["reason"].as_str().unwrap().contains("boom"),
        "{:?}",
        r.body
    );
    h.shutdown().await;

    // Off: no public status route, and start answers do not point at one.
    let h = serve(builder().public_status(PublicStatus::Off)).await;
    let r = request(h.addr, "POST", "/api/start/quick", &[], "").await;
    assert_eq!(r.status, 202);
    assert_eq!(r.headers.get("location"), None);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body.as_object().unwrap().len(), 1, "{:?}", r.body);
    let r = request(h.addr, "GET", &format!("/api/instances/{id}"), &[], "").await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert!(r.body["error"].is_string());
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Connection floods

/// Waits until `cond` holds, up to 20 s.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: never happened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_connections_are_closed_and_a_request_is_served_meanwhile() {
    let h = serve(
        builder()
            .header_read_timeout(Duration::from_millis(1500))
            .idle_timeout(Duration::from_millis(1500)),
    )
    .await;
    // 250 connections that never send a byte, and one that sends half a header.
    let mut idle = Vec::new();
    for _ in 0..250 {
        idle.push(TcpStream::connect(h.addr).await.unwrap());
    }
    let mut slow = TcpStream::connect(h.addr).await.unwrap();
    slow.write_all(b"GET /api/base HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    // A normal request is served within a second meanwhile.
    let r = timeout(
        Duration::from_secs(1),
        request(h.addr, "GET", "/api/base", &[], ""),
    )
    .await
    .expect("served within a second");
    assert_eq!(r.status, 200);
    // A kept-alive connection that goes quiet after a request.
    let mut kept = TcpStream::connect(h.addr).await.unwrap();
    kept.write_all(format!("GET /api/base HTTP/1.1\r\nhost: {}\r\n\r\n", h.addr).as_bytes())
        .await
        .unwrap();
    // All of them are closed by the server.
    for s in &mut idle {
        assert!(closed_by_server(s).await.is_empty());
    }
    assert!(closed_by_server(&mut slow).await.is_empty());
    let answered = closed_by_server(&mut kept).await;
    assert_eq!(parse(&answered).status, 200);
    until("no connection left open", || h.open_connections() == 0).await;
    h.shutdown().await;
}

/// A connection that sends a POST's header and `sent` of `len` body bytes, then stalls.
async fn stalled_body(addr: SocketAddr, len: usize, sent: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head =
        format!("POST /api/start/quick HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'x'; sent]).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_are_capped_and_timed_out_and_a_request_is_served_meanwhile() {
    const MIB: usize = 1024 * 1024;
    let h = serve(
        builder()
            .body_limit(MIB)
            .max_concurrent_bodies(3)
            .body_read_timeout(Duration::from_secs(2)),
    )
    .await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stalled_body(h.addr, MIB, MIB - 4096).await);
    }
    // Once the three hold every body slot, one more body is refused at once: bodies in
    // memory stay bounded by the cap times the body limit.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let r = request(h.addr, "POST", "/api/start/quick", &[], "{}").await;
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 202, "{:?}", r.body);
        assert!(Instant::now() < deadline, "the body cap never filled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(refused.header("retry-after"), "1");
    assert!(refused.body["error"].as_str().unwrap().contains("bodies"));
    // A request without a body is served meanwhile.
    let r = timeout(
        Duration::from_secs(1),
        request(h.addr, "GET", "/api/base", &[], ""),
    )
    .await
    .expect("served within a second");
    assert_eq!(r.status, 200);
    // The stalled ones get 408 at the body deadline and are closed.
    for s in &mut stalled {
        let r = parse(&closed_by_server(s).await);
        assert_eq!(r.status, 408, "{:?}", r.body);
        assert!(r.body["error"].as_str().unwrap().contains("did not arrive"));
    }
    // Their slots are free again.
    let r = request(h.addr, "POST", "/api/start/quick", &[], "{}").await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_and_waiting_connections_are_served_when_one_closes() {
    let h = serve(
        builder()
            .max_connections(4)
            .header_read_timeout(Duration::from_secs(60)),
    )
    .await;
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(TcpStream::connect(h.addr).await.unwrap());
    }
    until("the cap filled", || h.open_connections() == 4).await;
    // Six more connect (the kernel completes the handshake) and ask for something.
    let mut waiting = Vec::new();
    for _ in 0..6 {
        waiting.push(tokio::spawn(request(h.addr, "GET", "/api/base", &[], "")));
    }
    // None is accepted while the cap is full.
    let first = timeout(Duration::from_millis(500), &mut waiting[0]).await;
    assert!(first.is_err(), "a connection over the cap was served");
    assert_eq!(h.open_connections(), 4);
    // Each holder that leaves lets waiting connections in, never more than the cap.
    holders.clear();
    for w in waiting {
        let r = w.await.unwrap();
        assert_eq!(r.status, 200);
        assert!(h.open_connections() <= 4);
    }
    h.shutdown().await;
}
