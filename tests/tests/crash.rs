//! Crash safety on SQLite: a real worker process is killed with SIGKILL at random moments
//! while 200 five-step instances run, restarted each time, and must still finish every
//! instance exactly once per orchestration step. And recovery: a process killed with
//! activities in flight under long leases is restarted and finishes everything within
//! seconds, not after the leases lapse.

use std::collections::HashSet;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use durable_core::store::sqlite::SqliteStore;
use durable_core::{EventKind, InstanceFilter, RuntimeStatus, Store};

const INSTANCES: u32 = 200;
const KILLS: u32 = 12;

/// A small xorshift generator seeded from the clock: kill moments differ per run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("durable-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("crash.db");
    for ext in ["", "-wal", "-shm", ".log"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    let exe = env!("CARGO_BIN_EXE_crash_host");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    println!("kill schedule seed: {seed}");
    for round in 0..KILLS {
        let mut child = Command::new(exe)
            .arg(&db)
            .arg(INSTANCES.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("host starts");
        let wait = 40 + rng.next() % 400;
        std::thread::sleep(Duration::from_millis(wait));
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        println!("round {round}: killed after {wait} ms");
    }
    let started = Instant::now();
    let status = Command::new(exe)
        .arg(&db)
        .arg(INSTANCES.to_string())
        .arg("--until-done")
        .stdout(Stdio::null())
        .status()
        .expect("final host run");
    assert!(status.success(), "final run failed: {status}");
    println!("final run took {:?}", started.elapsed());

    let store = SqliteStore::open(&db).unwrap();
    let page = store
        .list_instances(&InstanceFilter::default(), 10_000, None)
        .await
        .unwrap();
    assert_eq!(page.items.len() as u32, INSTANCES);
    for st in &page.items {
        assert_eq!(
            st.status,
            RuntimeStatus::Completed,
            "{}: {:?}",
            st.instance_id,
            st.failure
        );
        assert_eq!(
            st.output.as_deref(),
            Some("\"12345\""),
            "{}",
            st.instance_id
        );
        let history = store.read_history(&st.instance_id).await.unwrap();
        let mut scheduled = HashSet::new();
        let mut completed = HashSet::new();
        let mut starts = 0;
        for e in &history {
            match &e.kind {
                EventKind::TaskScheduled { .. } => {
                    assert!(
                        scheduled.insert(e.seq),
                        "{}: step {} scheduled twice",
                        st.instance_id,
                        e.seq
                    )
                }
                EventKind::TaskCompleted { seq, .. } => assert!(
                    completed.insert(*seq),
                    "{}: step {seq} completed twice",
                    st.instance_id
                ),
                EventKind::ExecutionStarted { .. } => starts += 1,
                _ => {}
            }
        }
        assert_eq!(starts, 1, "{}", st.instance_id);
        assert_eq!(scheduled.len(), 5, "{}", st.instance_id);
        assert_eq!(completed.len(), 5, "{}", st.instance_id);
    }
    let log = std::fs::read_to_string(format!("{}.log", db.display())).unwrap();
    let executions = log.lines().count();
    let distinct: HashSet<&str> = log.lines().collect();
    assert_eq!(
        distinct.len() as u32,
        INSTANCES * 5,
        "every step ran at least once"
    );
    println!(
        "activity executions: {executions} for {} steps ({} re-executions after kills; activities are at-least-once)",
        INSTANCES * 5,
        executions - distinct.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The store, opened after the host has gone, has every instance completed.
async fn all_completed(db: &std::path::Path, instances: usize) {
    let store = SqliteStore::open(db).unwrap();
    let page = store
        .list_instances(&InstanceFilter::default(), 10_000, None)
        .await
        .unwrap();
    assert_eq!(page.items.len(), instances);
    for st in &page.items {
        assert_eq!(st.status, RuntimeStatus::Completed, "{}", st.instance_id);
        assert_eq!(
            st.output.as_deref(),
            Some("\"12345\""),
            "{}",
            st.instance_id
        );
    }
}

/// SIGKILL while activities run under one-minute leases, then a restart: the new process
/// finds the dead one's leases when it opens the file (which it holds alone) and gives
/// them back at once, so everything finishes within two seconds instead of after the
/// leases lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_sigkill_finishes_within_seconds() {
    const N: usize = 40;
    let dir = std::env::temp_dir().join(format!("durable-recovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("recovery.db");
    let log = dir.join("recovery.db.log");
    let exe = env!("CARGO_BIN_EXE_crash_host");
    let mut child = Command::new(exe)
        .arg(&db)
        .arg(N.to_string())
        .args(["--lease-secs", "60", "--step-ms", "400"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("host starts");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");
    // Kill once a full set of activities is running (each takes 400 ms).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = std::fs::read_to_string(&log)
            .map(|l| l.lines().count())
            .unwrap_or(0);
        if running >= 16 {
            break;
        }
        assert!(Instant::now() < deadline, "activities never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let held: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM activities WHERE lease_owner IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    assert!(
        held > 0,
        "the killed process held activity leases (one minute long)"
    );

    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg(&db)
        .arg(N.to_string())
        .args(["--until-done", "--lease-secs", "60", "--step-ms", "5"])
        .stdout(Stdio::null())
        .spawn()
        .expect("host restarts");
    let deadline = started + Duration::from_secs(2);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the restarted host had not finished after two seconds ({held} activity leases were left by the killed one)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "restarted host failed: {status}");
    println!(
        "restart finished {N} instances in {:?} ({held} activity leases left by the killed process)",
        started.elapsed()
    );
    all_completed(&db, N).await;
    let _ = std::fs::remove_dir_all(&dir);
}
