//! The SQLite store and the host when storage fails or is not what it should be: a full
//! disk (a real one: a small tmpfs), a damaged file, a read-only file or directory, a file
//! of another application, a second store on the same file, and what a clean close leaves
//! on disk; what HTTP clients are answered and what is logged.
//!
//! Full and read-only file systems are tmpfs mounts and immutable files, which need root
//! (CI runs as root); elsewhere the tmpfs tests say so and pass only when not under CI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::Utc;
use durable_core::instance::NewInstance;
use durable_core::store::sqlite::SqliteStore;
use durable_core::{
    ActivityError, InstanceFilter, OrchestrationContext, OrchestrationError, Registry,
    RuntimeStatus, Store,
};
use durable_http::{App, ClientExt, Host, RunningHost};
use http_body_util::{BodyExt, Full};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("durable-storage-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn instance(id: &str, input_bytes: usize) -> NewInstance {
    NewInstance {
        instance_id: id.into(),
        execution_id: format!("e-{id}"),
        name: "orch".into(),
        version: None,
        input: Some(format!("\"{}\"", "x".repeat(input_bytes))),
        parent: None,
        created_at: Utc::now(),
        start_at: None,
        trace_parent: None,
    }
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "8m") on a fresh directory, or None when this
    /// machine does not allow it (not root); under CI that is a failure.
    fn mount(name: &str, size: &str) -> Option<Tmpfs> {
        let dir = temp(name);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(Tmpfs(dir));
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run as root: this test mounts a tmpfs"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        None
    }

    fn remount_read_only(&self) {
        let ok = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount read-only");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a file until the file system is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "ENOSPC, got {e}");
                break;
            }
        }
    }
    path
}

fn wal_len(db: &Path) -> u64 {
    std::fs::metadata(format!("{}-wal", db.display()))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_as_retryable_and_the_store_recovers_when_space_returns() {
    let Some(fs) = Tmpfs::mount("full", "8m") else {
        return;
    };
    let path = fs.0.join("t.db");
    let store = SqliteStore::open(&path).unwrap();
    store.create_instance(instance("before", 10)).await.unwrap();
    let filler = fill(&fs.0);
    // The WAL reuses its space until it must grow: write until a commit needs new space.
    let mut refused = None;
    for i in 0..100 {
        let id = format!("i{i}");
        if let Err(e) = store.create_instance(instance(&id, 64 * 1024)).await {
            refused = Some((id, e));
            break;
        }
    }
    let (id, e) = refused.expect("a write fails once the disk is full");
    assert!(e.is_retryable(), "a full disk may pass: {e}");
    assert!(e.to_string().contains("disk is full"), "{e}");
    assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
    // Reads still work, and the refused write left nothing behind.
    assert!(store.get_instance(&id).await.unwrap().is_none());
    assert!(store.get_instance("before").await.unwrap().is_some());
    // A batch of concurrent writes fails as a whole and leaves nothing either.
    let store = std::sync::Arc::new(store);
    let writes: Vec<_> = (0..8)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move {
                s.create_instance(instance(&format!("batch{i}"), 64 * 1024))
                    .await
            })
        })
        .collect();
    for w in writes {
        assert!(w.await.unwrap().unwrap_err().is_retryable());
    }

    // Space returns: the next write commits, with no restart.
    std::fs::remove_file(filler).unwrap();
    store
        .create_instance(instance("after", 64 * 1024))
        .await
        .unwrap();
    let work = store
        .fetch_orchestration_work(
            &durable_core::WorkerId::new("w"),
            Duration::from_secs(30),
            10,
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert!(!work.is_empty(), "the writer works again");
    let ids: Vec<String> = store
        .list_instances(&InstanceFilter::default(), 100, None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.instance_id)
        .collect();
    assert!(ids.contains(&"after".to_string()), "{ids:?}");
    assert!(
        !ids.iter().any(|i| i.starts_with("batch") || *i == id),
        "{ids:?}"
    );
    drop(store);
    // The file is sound: it passes the start-up check and holds what was acknowledged.
    let store = SqliteStore::open(&path).unwrap();
    assert!(store.get_instance("after").await.unwrap().is_some());
}

#[test]
fn a_database_with_a_zeroed_page_is_refused_naming_the_file() {
    let dir = temp("damaged");
    let path = dir.join("t.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    {
        let store = SqliteStore::open(&path).unwrap();
        rt.block_on(async {
            for i in 0..200 {
                store
                    .create_instance(instance(&format!("i{i}"), 500))
                    .await
                    .unwrap();
            }
        });
    }
    // Everything is in the main file now; zero one page in its middle.
    let _ = std::fs::remove_file(format!("{}-wal", path.display()));
    let mut bytes = std::fs::read(&path).unwrap();
    let pages = bytes.len() / 4096;
    assert!(pages > 10, "{pages} pages");
    let page = pages / 2;
    bytes[page * 4096..(page + 1) * 4096].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("damaged") && msg.contains("quick_check"),
        "{msg}"
    );
    assert!(!err.is_retryable());

    // A zeroed first page (the header) is refused too.
    bytes[..4096].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let msg = SqliteStore::open(&path).unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_foreign_sqlite_file_is_refused_and_left_byte_for_byte_unchanged() {
    let dir = temp("foreign");
    let cases = [
        ("notes.db", "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes(body) VALUES('keep me');"),
        // Same table names as ours, another application's id.
        ("app.db", "PRAGMA application_id = 1234; CREATE TABLE instances(x); INSERT INTO instances VALUES(1);"),
        // Empty but claimed by another application.
        ("claimed.db", "PRAGMA user_version = 7;"),
    ];
    for (name, setup) in cases {
        let path = dir.join(name);
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(setup).unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let err = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("not a durable database"), "{name}: {err}");
        assert!(err.contains(&path.display().to_string()), "{name}: {err}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "{name} was changed");
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete", "{name} was switched to WAL");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Makes a file immutable (which binds root too) for the life of the guard.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Immutable {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chattr +i {}", path.display());
        Immutable(path.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn a_read_only_directory_holding_the_wal_and_shm_is_refused() {
    let Some(fs) = Tmpfs::mount("readonly", "16m") else {
        return;
    };
    // A live store's file, -wal and -shm, copied while it has commits in its WAL.
    let src = temp("readonly-src").join("t.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = SqliteStore::open(&src).unwrap();
    rt.block_on(store.create_instance(instance("a", 10)))
        .unwrap();
    let dst = fs.0.join("t.db");
    for ext in ["", "-wal", "-shm"] {
        std::fs::copy(
            format!("{}{ext}", src.display()),
            format!("{}{ext}", dst.display()),
        )
        .unwrap();
    }
    drop(store);
    let _ = std::fs::remove_dir_all(src.parent().unwrap());
    assert!(wal_len(&dst) > 0);
    fs.remount_read_only();
    let err = SqliteStore::open(&dst).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&dst.display().to_string()), "{msg}");
    assert!(msg.contains("cannot be written"), "{msg}");
    assert!(!err.is_retryable());
}

#[test]
fn a_read_only_database_file_or_shm_file_is_refused() {
    let dir = temp("immutable");
    let path = dir.join("t.db");
    for ext in ["", "-shm"] {
        drop(SqliteStore::open(&path).unwrap());
        let file = PathBuf::from(format!("{}{ext}", path.display()));
        assert!(file.exists(), "{}", file.display());
        let guard = Immutable::set(&file);
        let msg = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(msg.contains(&path.display().to_string()), "{ext}: {msg}");
        assert!(msg.contains("cannot be written"), "{ext}: {msg}");
        drop(guard);
    }
    drop(SqliteStore::open(&path).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run as a child process by the test below: opens the file and says what happened.
const CHILD: &str = "DURABLE_TEST_OPEN_IN_CHILD";

fn open_in_child(path: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_second_store_on_the_same_file_is_refused",
            "--nocapture",
        ])
        .env(CHILD, path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_second_store_on_the_same_file_is_refused() {
    if let Some(path) = std::env::var_os(CHILD) {
        match SqliteStore::open(PathBuf::from(path)) {
            Ok(_) => println!("child: opened"),
            Err(e) => println!("child: refused: {e}"),
        }
        return;
    }
    let dir = temp("twice");
    let path = dir.join("t.db");
    let first = SqliteStore::open(&path).unwrap();
    let msg = SqliteStore::open(&path).unwrap_err().to_string();
    assert!(msg.contains("already open"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    let child = open_in_child(&path);
    assert!(
        child.contains("child: refused") && child.contains("already open"),
        "{child}"
    );

    // Once the first is closed, either can open it.
    drop(first);
    drop(SqliteStore::open(&path).unwrap());
    let child = open_in_child(&path);
    assert!(child.contains("child: opened"), "{child}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_store_leaves_the_database_file_complete() {
    let dir = temp("close");
    let path = dir.join("t.db");
    let store = SqliteStore::open(&path).unwrap();
    for i in 0..50 {
        store
            .create_instance(instance(&format!("i{i}"), 100))
            .await
            .unwrap();
    }
    assert!(wal_len(&path) > 0, "the commits are in the WAL");
    drop(store);
    assert_eq!(wal_len(&path), 0, "the WAL was checkpointed and emptied");
    // The database file alone holds everything.
    let copy = temp("close-copy").join("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    let store = SqliteStore::open(&copy).unwrap();
    let page = store
        .list_instances(&InstanceFilter::default(), 100, None)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 50);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(copy.parent().unwrap());
}

fn registry() -> Registry {
    Registry::builder()
        .activity("echo", |_ctx, s: String| async move {
            Ok::<_, ActivityError>(s.len())
        })
        .orchestrator("echo", |ctx: OrchestrationContext, s: String| async move {
            Ok::<_, OrchestrationError>(ctx.call_activity_by_name::<usize>("echo", &s).await?)
        })
        .build()
        .unwrap()
}

/// A host on `db` serving in the background, and its request handler.
async fn host(db: &Path) -> (RunningHost, Arc<App>) {
    let host = Host::builder()
        .addr("127.0.0.1:0")
        .db(db)
        .key("test-key-0123456789abcdef")
        .registry(registry())
        .without_registered_routes()
        .route(&["POST"], "/api/echo", |client, req| async move {
            let id = client
                .start_by_name("echo", Some(req.text()?.to_string()), Default::default())
                .await?;
            Ok(client.check_status_response(&req, &id))
        })
        .build()
        .unwrap();
    let app = host.app();
    (host.bind().await.unwrap(), app)
}

/// POSTs a JSON string of `len` bytes to the echo start endpoint.
async fn start(app: &App, len: usize) -> http::Response<Full<Bytes>> {
    let body = format!("\"{}\"", "x".repeat(len));
    let req = http::Request::post("/api/echo")
        .header("host", "localhost")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    app.handle(req).await
}

async fn json_body(resp: http::Response<Full<Bytes>>) -> serde_json::Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Collects what the test's tasks log (the test runs on one thread, so every task of the
/// host logs here).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Logs of this thread go here until the guard is dropped.
    fn install() -> (Captured, tracing::subscriber::DefaultGuard) {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_full_disk_answers_503_with_retry_after_logs_the_cause_once_and_recovers() {
    let Some(fs) = Tmpfs::mount("http-full", "8m") else {
        return;
    };
    let (log, _guard) = Captured::install();
    let db = fs.0.join("t.db");
    let (h, app) = host(&db).await;
    assert_eq!(start(&app, 10).await.status(), 202);
    let filler = fill(&fs.0);
    let mut refused = None;
    for _ in 0..100 {
        let resp = start(&app, 64 * 1024).await;
        if resp.status() != 202 {
            refused = Some(resp);
            break;
        }
    }
    let resp = refused.expect("a start fails once the disk is full");
    assert_eq!(resp.status(), 503);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    let body = json_body(resp).await;
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("temporarily unavailable"), "{msg}");
    assert!(
        !msg.contains("t.db") && !msg.contains("SQLite"),
        "no details: {msg}"
    );
    let logged = log.text();
    let lines: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("answered 503"))
        .collect();
    assert_eq!(lines.len(), 1, "logged once: {logged}");
    assert!(
        lines[0].contains("database or disk is full"),
        "with its cause: {}",
        lines[0]
    );

    // Space returns: starts are accepted again and run to the end, with no restart.
    std::fs::remove_file(filler).unwrap();
    let resp = start(&app, 10).await;
    assert_eq!(resp.status(), 202);
    let id = json_body(resp).await["id"].as_str().unwrap().to_string();
    let status = h
        .client()
        .wait_for_completion(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(status.status, RuntimeStatus::Completed);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_refuses_to_start_on_a_damaged_or_busy_database() {
    let dir = temp("host-refuses");
    let db = dir.join("t.db");
    let (h, app) = host(&db).await;
    drop(app);
    let err = Host::builder()
        .db(&db)
        .key("test-key-0123456789abcdef")
        .registry(registry())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("already open"), "{err}");
    h.shutdown().await;
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[..4096].fill(0);
    std::fs::write(&db, &bytes).unwrap();
    let err = Host::builder()
        .db(&db)
        .key("test-key-0123456789abcdef")
        .registry(registry())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains(&db.display().to_string()), "{err}");
    // What `main` prints when it returns the error: the message, as written.
    assert_eq!(format!("{err:?}"), err.to_string());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_shutdown_leaves_the_database_file_complete() {
    let dir = temp("host-shutdown");
    let db = dir.join("t.db");
    let (h, app) = host(&db).await;
    // The host logs somewhere even though this test set no subscriber.
    assert!(tracing::dispatcher::has_been_set());
    // A client kept past shutdown keeps the store open: the host checkpoints anyway.
    let client = h.client();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let resp = start(&app, 100).await;
        assert_eq!(resp.status(), 202);
        ids.push(json_body(resp).await["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        client
            .wait_for_completion(id, Duration::from_secs(30))
            .await
            .unwrap();
    }
    drop(app);
    h.shutdown().await;
    assert_eq!(wal_len(&db), 0, "the WAL was checkpointed");
    let copy = temp("host-shutdown-copy").join("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    drop(client);
    let store = SqliteStore::open(&copy).unwrap();
    for id in &ids {
        let st = store.get_instance(id).await.unwrap().unwrap();
        assert_eq!(st.status, RuntimeStatus::Completed, "{id}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(copy.parent().unwrap());
}

#[tokio::test]
async fn the_worker_logs_the_failures_it_retries_and_finishes_once_space_returns() {
    let Some(fs) = Tmpfs::mount("worker-full", "8m") else {
        return;
    };
    let (log, _guard) = Captured::install();
    let started = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (s, g) = (started.clone(), gate.clone());
    let registry = Registry::builder()
        .activity("big", move |_ctx, _: ()| {
            let (s, g) = (s.clone(), g.clone());
            async move {
                s.notify_one();
                let _pass = g.acquire().await.unwrap();
                Ok::<_, ActivityError>("x".repeat(64 * 1024))
            }
        })
        .orchestrator("big", |ctx: OrchestrationContext, _: ()| async move {
            let s: String = ctx.call_activity_by_name("big", &()).await?;
            Ok::<_, OrchestrationError>(s.len())
        })
        .build()
        .unwrap();
    let store = Arc::new(SqliteStore::open(fs.0.join("t.db")).unwrap());
    let rt = durable_core::Worker::builder(store)
        .registry(registry)
        .options(durable_core::WorkerOptions {
            activity_lease: Duration::from_secs(2),
            orchestration_lease: Duration::from_secs(2),
            ..Default::default()
        })
        .start()
        .unwrap();
    let client = rt.client();
    let id = client
        .start_by_name("big", None, Default::default())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), started.notified())
        .await
        .expect("the activity runs");
    // The disk fills while the activity runs: its result cannot be recorded.
    let filler = fill(&fs.0);
    gate.add_permits(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let line = loop {
        let text = log.text();
        if let Some(l) = text
            .lines()
            .find(|l| l.contains("could not record the activity result"))
        {
            break l.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "not logged: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        line.contains("WARN") && line.contains("database or disk is full"),
        "{line}"
    );

    // Space returns: the activity runs again and the instance finishes, with no restart.
    std::fs::remove_file(filler).unwrap();
    let state = client
        .wait_for_completion(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        state.status,
        RuntimeStatus::Completed,
        "{:?}",
        state.failure
    );
    assert_eq!(state.output.as_deref(), Some("65536"));
    rt.shutdown().await;
}
