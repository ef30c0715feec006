//! The `Retry-After` of a 503 for a store that is unavailable for a while: 2 s unless the
//! host is configured otherwise.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use durable_core::store::StoreError;
use durable_core::MemoryStore;
use durable_http::{Host, HostBuilder, HttpResponse, StatusCode};
use http_body_util::{BodyExt, Full};

fn builder() -> HostBuilder {
    Host::builder()
        .store(Arc::new(MemoryStore::new()))
        .key("retry-after-key-0123456789")
        .without_registered_routes()
        .route(&["GET"], "/api/busy", |_client, _req| async move {
            Err(durable_core::Error::Store(StoreError::unavailable(
                "the database is busy",
            )))?;
            Ok(HttpResponse::text(StatusCode::OK, "never"))
        })
}

async fn busy(b: HostBuilder) -> (u16, String, String) {
    let host = b.build().unwrap();
    let req = http::Request::get("/api/busy")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = host.app().handle(req).await;
    let status = resp.status().as_u16();
    let after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let Ok(body) = resp.into_body().collect().await;
    (
        status,
        after,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    )
}

#[tokio::test]
async fn an_unavailable_store_answers_503_with_the_configured_retry_after() {
    let (status, after, body) = busy(builder()).await;
    assert_eq!((status, after.as_str()), (503, "2"), "{body}");
    assert!(body.contains("try again"), "{body}");
    let (status, after, _) = busy(builder().store_retry_after(Duration::from_secs(30))).await;
    assert_eq!((status, after.as_str()), (503, "30"));
    // Whole seconds, rounded up.
    let (_, after, _) = busy(builder().store_retry_after(Duration::from_millis(1500))).await;
    assert_eq!(after, "2");
    // Checked like the other durations.
    let err = builder()
        .store_retry_after(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("DURABLE_STORE_RETRY_AFTER"),
        "{err}"
    );
}
