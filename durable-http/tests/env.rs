//! The `DURABLE_*` variables for the public URL, trusted proxies, public status and
//! limits: read at build, checked, and overridden by the builder. One test in its own
//! binary, since it changes the process environment.

use std::sync::Arc;

use durable_core::MemoryStore;
use durable_http::{Host, HostBuilder, PublicStatus};

fn builder() -> HostBuilder {
    Host::builder()
        .addr("127.0.0.1:0")
        .store(Arc::new(MemoryStore::new()))
        .key("env-test-key-0123456789")
        .without_registered_routes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_the_environment_are_checked_and_the_builder_wins() {
    std::env::set_var("DURABLE_PUBLIC_URL", "https://env.example/base/");
    std::env::set_var("DURABLE_PUBLIC_STATUS", "OFF");
    std::env::set_var("DURABLE_TRUSTED_PROXIES", "10.0.0.0/8, ::1");
    std::env::set_var("DURABLE_HEADER_TIMEOUT", "2s");
    std::env::set_var("DURABLE_MAX_CONNECTIONS", "8");
    std::env::set_var("DURABLE_REQUEST_TIMEOUT", "250ms");
    let host = builder().build().unwrap();
    assert_eq!(
        host.app().timeout_layer().timeout(),
        std::time::Duration::from_millis(250)
    );
    let h = host.bind().await.unwrap();
    assert_eq!(h.base_url(), "https://env.example/base");
    let r = get_text(h.addr, "/api/instances/x").await;
    assert!(r.starts_with("HTTP/1.1 404"), "public status is off: {r}");
    h.shutdown().await;
    let host = builder()
        .request_timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    assert_eq!(
        host.app().timeout_layer().timeout(),
        std::time::Duration::from_secs(5)
    );
    drop(host);
    let h = builder()
        .public_url("http://builder.example")
        .public_status(PublicStatus::Minimal)
        .build()
        .unwrap()
        .bind()
        .await
        .unwrap();
    assert_eq!(h.base_url(), "http://builder.example");
    let r = get_text(h.addr, "/api/instances/x").await;
    assert!(
        r.starts_with("HTTP/1.1 404") && r.contains("no instance"),
        "{r}"
    );
    h.shutdown().await;

    for (var, value) in [
        ("DURABLE_PUBLIC_URL", "env.example"),
        ("DURABLE_PUBLIC_STATUS", "some"),
        ("DURABLE_TRUSTED_PROXIES", "10.0.0.0/40"),
        ("DURABLE_HEADER_TIMEOUT", "1e20"),
        ("DURABLE_BODY_TIMEOUT", "0"),
        ("DURABLE_REQUEST_TIMEOUT", "0"),
        ("DURABLE_DASHBOARD", "maybe"),
        ("DURABLE_STORE_RETRY_AFTER", "0s"),
        ("DURABLE_REQUEST_TIMEOUT", "2h"),
        ("DURABLE_IDLE_TIMEOUT", "soon"),
        ("DURABLE_MAX_CONNECTIONS", "-1"),
        ("DURABLE_MAX_BODIES", "0"),
        ("DURABLE_MAX_BODIES", "18446744073709551615"),
        ("DURABLE_BODY_LIMIT", "1MB"),
    ] {
        let before = std::env::var(var).ok();
        std::env::set_var(var, value);
        let err = builder().build().unwrap_err().to_string();
        assert!(err.contains(var), "{var}={value}: {err}");
        match before {
            Some(v) => std::env::set_var(var, v),
            None => std::env::remove_var(var),
        }
    }
}

/// One GET with `connection: close`; the whole answer as text.
async fn get_text(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
