//! What the example tests share: a host on an ephemeral port and a plain HTTP client.

use std::sync::Arc;

use bytes::Bytes;
use durable_http::{Host, RunningHost};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

// Linking the library registers its functions and endpoints.
use durable_examples as _;

/// The management key of the test hosts.
pub const KEY: &str = "scenario-test-key-0123456789";

/// A host on an ephemeral loopback port serving every example, on a memory store.
#[allow(dead_code)] // not every test binary runs in real time
pub async fn host() -> RunningHost {
    host_on(Arc::new(durable_core::MemoryStore::new())).await
}

/// A host serving every example on a memory store in virtual time: its timers fire when
/// the test moves `time`.
#[allow(dead_code)] // not every test binary waits for timers
pub async fn host_in(time: &durable_core::testing::VirtualTime) -> RunningHost {
    host_on(time.store()).await
}

/// A host on an ephemeral loopback port serving every example, on `store`.
pub async fn host_on(store: Arc<dyn durable_core::Store>) -> RunningHost {
    Host::builder()
        .addr("127.0.0.1:0")
        .store(store)
        .key(KEY)
        .build()
        .unwrap()
        .bind()
        .await
        .unwrap()
}

/// One request; the body is parsed as JSON when it is JSON, else kept as a string.
pub async fn call(
    h: &RunningHost,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, http::HeaderMap, Value) {
    let host = h.addr.to_string();
    call_with(h, method, path, &[("host", host.as_str())], body).await
}

/// [`call`] with the given headers (and no `host` header unless among them).
#[allow(dead_code)] // not every test binary sends its own headers
pub async fn call_with(
    h: &RunningHost,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, Value) {
    let stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, body)
}

/// The path of a URL this host handed out.
pub fn path_of(h: &RunningHost, url: &str) -> String {
    url.split_once(&h.addr.to_string())
        .map(|(_, p)| p.to_string())
        .unwrap_or_else(|| panic!("{url} is not on {}", h.addr))
}

/// An instance's status with its input and history, straight from the store.
#[allow(dead_code)] // not every test binary looks inside instances
pub async fn inspect(h: &RunningHost, id: &str) -> durable_core::OrchestrationStatus {
    h.client()
        .get_status(
            id,
            durable_core::StatusOptions {
                show_input: true,
                show_history: true,
            },
        )
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no instance {id}"))
}
