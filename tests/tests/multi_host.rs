//! Many hosts on one PostgreSQL database: real `pg_host` processes share one schema.
//! Chains and a large fan-out finish with every orchestration step recorded exactly once
//! while one host is killed with SIGKILL over and over; an entity signalled through all
//! three hosts ends with the exact total; an event raised on one host wakes a long-poll
//! status wait on another at once; bad settings are refused at start-up.
//!
//! The database is `DURABLE_TEST_PG` (default `postgres://root@127.0.0.1:5432/test`); each
//! test works in a fresh schema of its own and drops it at the end.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_core::store::postgres::PostgresStore;
use durable_core::{DurableClient, EventKind, InstanceFilter, RuntimeStatus, StartOptions, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "multi-host-test-key-0123456789";

fn pg_url() -> String {
    std::env::var("DURABLE_TEST_PG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "postgres://root@127.0.0.1:5432/test".into())
}

/// A schema no other test or run uses.
fn fresh_schema(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    format!("mh_{test}_{}_{nanos}", std::process::id())
}

/// One `pg_host` process.
struct HostProcess {
    child: Child,
    url: String,
}

impl HostProcess {
    /// Starts a host on `schema` and waits (with a deadline) until it listens.
    fn start(schema: &str, extra_env: &[(&str, &str)]) -> HostProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pg_host"));
        cmd.env("DURABLE_DB", pg_url())
            .env("DURABLE_DB_SCHEMA", schema)
            .env("DURABLE_KEY", KEY)
            .env("RUST_LOG", "warn")
            .env_remove("DURABLE_WORKER_ID")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("pg_host starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the host says where it listens within a minute");
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        HostProcess { child, url }
    }

    fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// SIGKILL: no shutdown, no lease given back.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        // Closing stdin asks it to stop; kill whatever is left.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the body.
async fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The test's own store on `schema`; the schema is dropped with it, also when the test
/// fails (it is declared before the hosts, so they have stopped by then).
async fn store(schema: &str) -> Arc<PostgresStore> {
    Arc::new(
        PostgresStore::builder(pg_url())
            .schema(schema)
            .drop_schema_on_drop(true)
            .connect()
            .await
            .expect("the test database is reachable (DURABLE_TEST_PG)"),
    )
}

/// Waits (with a deadline) until no instance with `prefix` is unfinished; returns them.
async fn wait_all_finished(
    store: &PostgresStore,
    prefix: &str,
    expected: usize,
    deadline: Instant,
) -> Vec<durable_core::InstanceState> {
    loop {
        let filter = InstanceFilter {
            instance_id_prefix: Some(prefix.into()),
            ..Default::default()
        };
        let all = store
            .list_instances(&filter, 100_000, None)
            .await
            .unwrap()
            .items;
        let done = all.iter().filter(|s| s.status.is_terminal()).count();
        if all.len() == expected && done == expected {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {expected} '{prefix}' instances finished before the deadline"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every activity call of the history was scheduled once and completed once.
async fn assert_steps_once(store: &PostgresStore, id: &str, steps: usize) {
    let history = store.read_history(id).await.unwrap();
    let mut scheduled = HashSet::new();
    let mut completed = HashSet::new();
    for e in &history {
        match &e.kind {
            EventKind::TaskScheduled { .. } => {
                assert!(
                    scheduled.insert(e.seq as u64),
                    "{id}: step {} scheduled twice",
                    e.seq
                )
            }
            EventKind::TaskCompleted { seq, .. } => {
                assert!(completed.insert(*seq), "{id}: step {seq} recorded twice")
            }
            _ => {}
        }
    }
    assert_eq!(scheduled.len(), steps, "{id}: steps scheduled");
    assert_eq!(scheduled, completed, "{id}: every step completed once");
}

/// Leases a killed host left behind, still unexpired: work only another host can finish,
/// once they lapse.
async fn leases_held_by(schema: &str, worker: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let q = format!(
        "SELECT (SELECT count(*) FROM {schema}.instances WHERE lease_owner = $1
                   AND lease_expires_at > now())
              + (SELECT count(*) FROM {schema}.activities WHERE lease_owner = $1
                   AND visible_at > now())"
    );
    client.query_one(&q, &[&worker]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_share_chains_and_a_fan_out_while_one_is_killed_over_and_over() {
    let schema = fresh_schema("chains");
    let st = store(&schema).await;
    let client = DurableClient::new(st.clone());
    let hosts = [
        HostProcess::start(&schema, &[]),
        HostProcess::start(&schema, &[]),
    ];
    let mut incarnation = 0;
    let victim_id = |n: u32| format!("victim-{n}");
    let mut victim = Some(HostProcess::start(
        &schema,
        &[("DURABLE_WORKER_ID", &victim_id(incarnation))],
    ));
    const CHAINS: u64 = 1000;
    const FAN: u64 = 2000;
    let starter = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .start_by_name(
                    "fan_out",
                    Some(FAN.to_string()),
                    StartOptions::with_instance_id("fan"),
                )
                .await
                .unwrap();
            for i in 0..CHAINS {
                client
                    .start_by_name(
                        "chain5",
                        Some(i.to_string()),
                        StartOptions::with_instance_id(format!("chain-{i}")),
                    )
                    .await
                    .unwrap();
            }
        })
    };
    // Kill the third host again and again while the others work, each time with the
    // leases it held; restart it under a new worker id, so it does not take them back.
    let mut kills = 0;
    let mut orphaned = 0;
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if let Some(v) = victim.take() {
            v.kill();
            kills += 1;
            orphaned += leases_held_by(&schema, &victim_id(incarnation)).await;
        }
        let filter = InstanceFilter {
            statuses: vec![RuntimeStatus::Pending, RuntimeStatus::Running],
            ..Default::default()
        };
        let open = st
            .list_instances(&filter, 1, None)
            .await
            .unwrap()
            .items
            .len();
        if starter.is_finished() && open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instances still open at the deadline"
        );
        incarnation += 1;
        victim = Some(HostProcess::start(
            &schema,
            &[("DURABLE_WORKER_ID", &victim_id(incarnation))],
        ));
    }
    starter.await.unwrap();
    assert!(kills >= 3, "the third host was killed {kills} times");
    assert!(
        orphaned > 0,
        "the killed host never held a lease when killed ({kills} kills)"
    );
    println!("{kills} kills left {orphaned} leases to lapse and be taken over");
    let chains = wait_all_finished(&st, "chain-", CHAINS as usize, deadline).await;
    let fan = wait_all_finished(&st, "fan", 1, deadline).await;
    for s in &chains {
        assert_eq!(
            s.status,
            RuntimeStatus::Completed,
            "{}: {:?}",
            s.instance_id,
            s.failure
        );
        let i: u64 = s.instance_id["chain-".len()..].parse().unwrap();
        assert_eq!(s.output.as_deref(), Some((i + 5).to_string().as_str()));
        assert_steps_once(&st, &s.instance_id, 5).await;
    }
    assert_eq!(
        fan[0].status,
        RuntimeStatus::Completed,
        "{:?}",
        fan[0].failure
    );
    assert_eq!(
        fan[0].output.as_deref(),
        Some((FAN * (FAN - 1)).to_string().as_str())
    );
    assert_steps_once(&st, "fan", FAN as usize).await;
    drop(victim);
    drop(hosts);
    st.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_signalled_through_three_hosts_ends_with_the_exact_total() {
    let schema = fresh_schema("entity");
    let st = store(&schema).await;
    let hosts: Vec<HostProcess> = (0..3).map(|_| HostProcess::start(&schema, &[])).collect();
    let mut expected = 0i64;
    let mut sends = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        for n in 1..=50i64 {
            let v = n * (h as i64 + 1);
            expected += v;
            let addr = host.addr();
            sends.push(tokio::spawn(async move {
                let path =
                    format!("/runtime/webhooks/durabletask/entities/tally/total?op=add&code={KEY}");
                http(&addr, "POST", &path, &v.to_string()).await
            }));
        }
    }
    for s in sends {
        let (status, body) = s.await.unwrap();
        assert_eq!(status, 202, "{body}");
    }
    let client = DurableClient::new(st.clone());
    let id = durable_core::EntityId::new("tally", "total");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let total = client
            .read_entity_state::<serde_json::Value>(&id)
            .await
            .unwrap()
            .and_then(|v| v["total"].as_i64());
        if total == Some(expected) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the total is {total:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(hosts);
    st.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_raised_on_one_host_wakes_a_long_poll_on_another_at_once() {
    let schema = fresh_schema("event");
    let st = store(&schema).await;
    // Polling, the fallback, is slow here: only a notification can answer in time.
    let poll = [("DURABLE_DB_POLL", "30s")];
    let hosts: Vec<HostProcess> = (0..3).map(|_| HostProcess::start(&schema, &poll)).collect();
    let client = DurableClient::new(st.clone());
    // Three waiters: whichever host runs an instance's last episode, the long poll on host
    // B hears of it from another host for most of them.
    const WAITERS: usize = 3;
    for w in 0..WAITERS {
        let id = format!("waiter-{w}");
        client
            .start_by_name(
                "wait_go",
                Some("null".into()),
                StartOptions::with_instance_id(&id),
            )
            .await
            .unwrap();
        let running = st
            .wait_for_instance_until(&id, Duration::from_secs(30), &|s| {
                s.is_some_and(|s| s.status == RuntimeStatus::Running)
            })
            .await
            .unwrap();
        assert_eq!(running.map(|s| s.status), Some(RuntimeStatus::Running));
    }
    let mut polls = Vec::new();
    for w in 0..WAITERS {
        let b_addr = hosts[1].addr();
        polls.push(tokio::spawn(async move {
            http(
                &b_addr,
                "GET",
                &format!("/api/instances/waiter-{w}?wait=60s"),
                "",
            )
            .await
        }));
    }
    // The long polls answer only once their instance finishes, so starting them a little
    // before the events changes nothing but lets them be waiting when the events land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let raised_at = Instant::now();
    for w in 0..WAITERS {
        let (status, body) = http(
            &hosts[0].addr(),
            "POST",
            &format!("/runtime/webhooks/durabletask/instances/waiter-{w}/raiseEvent/go?code={KEY}"),
            &format!("\"hello {w} from A\""),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    for (w, poll) in polls.into_iter().enumerate() {
        let (status, body) = poll.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("hello {w} from A")), "{body}");
    }
    let waited = raised_at.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "the long polls on host B answered {waited:?} after the events, as slow as polling"
    );
    drop(hosts);
    st.drop_schema().await.unwrap();
}

#[test]
fn bad_postgres_settings_are_refused_at_start_up() {
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pg_host"));
        cmd.env_remove("DURABLE_KEY")
            .env_remove("DURABLE_DB_SCHEMA")
            .env_remove("DURABLE_DB_POLL")
            .env("RUST_LOG", "off")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{env:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let url = pg_url();
    let err = run(&[("DURABLE_DB", &url)]);
    assert!(err.contains("DURABLE_KEY"), "{err}");
    let err = run(&[
        ("DURABLE_DB", "postgres://postgres@127.0.0.1:1/nowhere"),
        ("DURABLE_KEY", KEY),
    ]);
    assert!(
        err.contains("cannot connect to PostgreSQL at 127.0.0.1:1"),
        "{err}"
    );
    let err = run(&[
        ("DURABLE_DB", &url),
        ("DURABLE_KEY", KEY),
        ("DURABLE_DB_SCHEMA", "Not-A-Schema"),
    ]);
    assert!(
        err.contains("'Not-A-Schema' is not a usable schema name"),
        "{err}"
    );
    let err = run(&[
        ("DURABLE_DB", &url),
        ("DURABLE_KEY", KEY),
        ("DURABLE_DB_POLL", "often"),
    ]);
    assert!(err.contains("DURABLE_DB_POLL"), "{err}");
    let err = run(&[
        ("DURABLE_DB", "postgres://host:notaport/db"),
        ("DURABLE_KEY", KEY),
    ]);
    assert!(err.contains("not a usable PostgreSQL URL"), "{err}");
}
