//! The dashboard through a real host under a mount prefix: its files, security headers and
//! redirect; then the browser test (`tests/dashboard/browser.mjs`), which drives Debian's
//! headless Chromium through sign-in, filters, paging, an instance's timeline, terminate,
//! raise event and the entities view.
//!
//! The browser test needs `/usr/bin/chromium` (or `CHROMIUM`), `node` and
//! `npm ci --prefix durable-http/tests/dashboard`; `.ci/run` installs them and sets
//! `DURABLE_BROWSER_TESTS=1`, which turns a missing piece into a failure instead of a skip.
//! `DASHBOARD_SCREENSHOTS=dir` makes it save screenshots there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use durable_core::{
    ActivityError, EntityContext, EntityId, MemoryStore, Operation, OrchestrationContext,
    OrchestrationError, Registry, RuntimeStatus,
};
use durable_http::{Host, HttpError, RunningHost};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

const KEY: &str = "dashboard-key-0123456789abcdef";
const PREFIX: &str = "/durable";
const WAIT: Duration = Duration::from_secs(30);

fn registry() -> Registry {
    Registry::builder()
        .activity("validate_order", |_ctx, order: Value| async move {
            Ok::<_, ActivityError>(order)
        })
        .activity("charge_card", |_ctx, order: Value| async move {
            Ok::<_, ActivityError>(json!({ "order": order["order"], "charged": true }))
        })
        .activity("ship_order", |_ctx, order: Value| async move {
            Ok::<_, ActivityError>(json!({ "order": order["order"], "status": "shipped" }))
        })
        .activity("download_feed", |_ctx, _: ()| async move {
            Err::<(), _>(ActivityError::new(
                "HTTP 503 Service Unavailable from the partner feed",
            ))
        })
        .orchestrator(
            "process_order",
            |ctx: OrchestrationContext, order: Value| async move {
                let order: Value = ctx.call_activity_by_name("validate_order", &order).await?;
                ctx.create_timer(Duration::from_millis(30)).await;
                let _: Value = ctx.call_activity_by_name("charge_card", &order).await?;
                let shipped: Value = ctx.call_activity_by_name("ship_order", &order).await?;
                Ok::<_, OrchestrationError>(shipped)
            },
        )
        .orchestrator(
            "import_feed",
            |ctx: OrchestrationContext, _: ()| async move {
                ctx.call_activity_by_name::<()>("download_feed", &())
                    .await?;
                Ok::<_, OrchestrationError>(())
            },
        )
        .orchestrator(
            "approval",
            |ctx: OrchestrationContext, _doc: Value| async move {
                ctx.set_custom_status("waiting for approval");
                let decision: Value = ctx.wait_for_external_event("approved").await?;
                Ok::<_, OrchestrationError>(decision)
            },
        )
        .entity(
            "counter",
            |ctx: EntityContext<i64>, op: Operation| async move {
                let v = ctx.get_state_or_default()? + op.input::<i64>()?;
                ctx.set_state(&v);
                Ok::<_, durable_core::FailureDetails>(Some(v))
            },
        )
        .build()
        .unwrap()
}

fn builder() -> durable_http::HostBuilder {
    Host::builder()
        .addr("127.0.0.1:0")
        .store(Arc::new(MemoryStore::new()))
        .key(KEY)
        .registry(registry())
        .without_registered_routes()
        .mount_prefix(PREFIX)
}

async fn get(app: &durable_http::App, path: &str, key: Option<&str>) -> http::Response<Bytes> {
    let mut req = http::Request::builder()
        .uri(path)
        .header("host", "example.test");
    if let Some(k) = key {
        req = req.header("x-functions-key", k);
    }
    let resp = app.handle(req.body(Full::new(Bytes::new())).unwrap()).await;
    let (parts, body) = resp.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

fn header<'a>(r: &'a http::Response<Bytes>, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_under_the_mount_prefix_with_strict_headers() {
    let host = builder().build().unwrap();
    let app = host.app();

    let r = get(&app, "/durable/dashboard", None).await;
    assert_eq!(r.status(), 308);
    assert_eq!(header(&r, "location"), "dashboard/");

    let page = get(&app, "/durable/dashboard/", None).await;
    assert_eq!(page.status(), 200);
    assert!(header(&page, "content-type").starts_with("text/html"));
    let csp = header(&page, "content-security-policy");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "referrer-policy"), "no-referrer");
    let html = String::from_utf8_lossy(page.body());
    assert!(html.contains(r#"<script src="app.js" defer></script>"#));

    let js = get(&app, "/durable/dashboard/app.js", None).await;
    assert_eq!(js.status(), 200);
    assert!(header(&js, "content-type").starts_with("text/javascript"));
    // The script finds the API beside the dashboard, whatever the prefix.
    assert!(String::from_utf8_lossy(js.body()).contains("'../runtime/webhooks/durabletask/'"));

    // The page is public; the data behind it is not.
    let api = "/durable/runtime/webhooks/durabletask/instances";
    assert_eq!(get(&app, api, None).await.status(), 401);
    assert_eq!(get(&app, api, Some(KEY)).await.status(), 200);

    assert_eq!(get(&app, "/dashboard/", None).await.status(), 404);
    assert_eq!(
        get(&app, "/durable/dashboard/../secret", None)
            .await
            .status(),
        404
    );

    // Turned off, the dashboard's paths answer 404; the API stays.
    let off = builder().dashboard(false).build().unwrap();
    let off = off.app();
    for path in [
        "/durable/dashboard/",
        "/durable/dashboard/app.js",
        "/durable/dashboard",
    ] {
        let r = get(&off, path, None).await;
        assert_eq!(r.status(), 404, "{path}");
        assert!(
            String::from_utf8_lossy(r.body()).contains("no route"),
            "{path}"
        );
    }
    assert_eq!(get(&off, api, Some(KEY)).await.status(), 200);
    // ... and its paths stay reserved.
    let err = builder()
        .dashboard(false)
        .route(&["GET"], "/dashboard/{page}", |_c, _r| async {
            Err(HttpError::not_found("x"))
        })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("/dashboard"), "{err}");

    // A start endpoint cannot take the dashboard's path.
    let err = builder()
        .route(&["GET"], "/dashboard/{page}", |_c, _r| async {
            Err(HttpError::not_found("x"))
        })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("/dashboard"), "{err}");
}

/// The host the browser test drives, with: ten completed orders (activities and a timer in
/// their histories), one failed import, two approvals waiting for an event, one entity.
async fn demo_host() -> (RunningHost, Value) {
    let host = builder().build().unwrap().bind().await.unwrap();
    let client = host.client();
    let mut orders = Vec::new();
    for n in 1001..=1010 {
        let id = format!("order-A{n}");
        let input = json!({ "order": format!("A-{n}"), "items": n % 4 + 1 });
        client
            .start_by_name(
                "process_order",
                Some(input.to_string()),
                durable_core::StartOptions::with_instance_id(&id),
            )
            .await
            .unwrap();
        orders.push(id);
    }
    let failed = "feed-import-nightly".to_string();
    client
        .start_by_name(
            "import_feed",
            None,
            durable_core::StartOptions::with_instance_id(&failed),
        )
        .await
        .unwrap();
    let mut waiting = Vec::new();
    for (id, doc) in [
        ("approval-q3-budget", "Q3 budget"),
        ("approval-new-laptop", "new laptop"),
    ] {
        client
            .start_by_name(
                "approval",
                Some(json!({ "document": doc }).to_string()),
                durable_core::StartOptions::with_instance_id(id),
            )
            .await
            .unwrap();
        waiting.push(id.to_string());
    }
    for id in orders.iter().chain([&failed]) {
        client.wait_for_completion(id, WAIT).await.unwrap();
    }
    assert_eq!(
        client.get_state(&failed).await.unwrap().unwrap().status,
        RuntimeStatus::Failed
    );
    let entity = EntityId::new("counter", "visits");
    client
        .signal_entity_json(&entity, "add", Some("42".into()), None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut ready = client
            .get_entity(&entity)
            .await
            .unwrap()
            .is_some_and(|m| m.state.as_deref() == Some("42"));
        for id in &waiting {
            let s = client.get_state(id).await.unwrap().unwrap();
            ready &= s.status == RuntimeStatus::Running && s.custom_status.is_some();
        }
        if ready {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the demo instances never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fixture = json!({
        "completed": orders,
        "failed": failed,
        "waiting": waiting,
        "entity": { "name": "counter", "key": "visits", "state": 42 },
    });
    (host, fixture)
}

/// What the browser test needs, or why it cannot run.
fn browser_setup() -> Result<(PathBuf, PathBuf), String> {
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    if !chromium.exists() {
        return Err(format!(
            "{} is missing (apt-get install chromium)",
            chromium.display()
        ));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard");
    if !dir.join("node_modules/playwright-core").exists() {
        return Err(format!(
            "playwright-core is missing (npm ci --prefix {})",
            dir.display()
        ));
    }
    Ok((chromium, dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    let (chromium, dir) = match browser_setup() {
        Ok(found) => found,
        Err(why) if std::env::var("DURABLE_BROWSER_TESTS").is_ok_and(|v| v == "1") => {
            panic!("the browser test cannot run: {why}")
        }
        Err(why) => {
            eprintln!("skipping the browser test: {why} (DURABLE_BROWSER_TESTS=1 makes this fail)");
            return;
        }
    };
    let (host, fixture) = demo_host().await;
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("browser.mjs")
        .current_dir(&dir)
        .env("DASHBOARD_URL", format!("{}{PREFIX}/dashboard", host.url()))
        .env("DASHBOARD_KEY", KEY)
        .env("DASHBOARD_FIXTURE", fixture.to_string())
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true);
    let run = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .expect("the browser test did not finish within 4 minutes")
        .expect("cannot run node");
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    println!("{out}");
    assert!(
        run.status.success(),
        "the browser test failed ({}):\n{out}\n{err}",
        run.status
    );
    assert!(out.contains("ok - no console errors"), "{out}");
    host.shutdown().await;
}
