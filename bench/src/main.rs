//! The benchmark harness: runs throughput and latency scenarios named after the reference
//! system's published microbenchmarks on a chosen store, prints a markdown table and
//! writes JSON.
//!
//! ```text
//! cargo run --release -p durable-bench -- [--store memory|sqlite|postgres|all] [--scenario NAME|all] [--json FILE]
//! ```
//!
//! `--store postgres` uses the database `DURABLE_BENCH_PG` (default
//! `postgres://root@127.0.0.1:5432/test`), a fresh schema per scenario, dropped after it;
//! its rows also give the CPU time the PostgreSQL server processes spent (`db CPU`). The
//! `hosts-1` and `hosts-3` scenarios (PostgreSQL only) run HelloSequence5 ×2,000 on one and
//! on three worker processes sharing the schema.
//!
//! Each scenario runs in a child process of its own, so the reported peak RSS belongs to
//! that scenario alone. Timings are measured here and never asserted in tests.
//!
//! The `recovery` scenario (SQLite only) kills a worker process with SIGKILL while 300
//! HelloSequence5 instances run (activities taking a second each, under the default
//! one-minute activity lease), then reopens the file and measures how long the restarted
//! worker (whose activities take no time) takes to finish them all.
//!
//! The `http-*` scenarios serve a real [`durable_http::Host`] on an ephemeral loopback port
//! and drive it with a built-in load generator: a fixed number of keep-alive HTTP/1.1
//! connections, each sending its share of a bounded number of requests one after the other.
//! `http-hello` starts 10,000 HelloSequence5 through the host's management API and
//! long-polls each to completion; `http-latency` starts and waits for one at a time in one
//! request. `payload-10mib` runs orchestrations with a 10 MiB input, activity result and
//! output. `stored-N` (SQLite only; `stored-1000` and `stored-100000` in `all`, any N from
//! 1,000 by name) stores N completed HelloSequence5 instances and measures status reads,
//! filtered list pages, database bytes per instance and purging by time range.
//! `inflight-N` (`inflight-100000` in `all`, any N from 1,000 by name) starts N
//! orchestrations that each wait for an external event, waits until every one is running,
//! then raises the events and counts the instances that complete (none may be lost); its
//! row's peak RSS is what holding N instances in flight costs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_core::{
    ActivityError, DurableClient, OrchestrationContext, OrchestrationError, Registry,
    RuntimeStatus, StartOptions, Store, Worker,
};
use serde::{Deserialize, Serialize};

const SCENARIOS: &[&str] = &[
    "seq",
    "fanout",
    "hello-1000",
    "hello-10000",
    "latency",
    "events",
    "entity",
    "replay-100",
    "replay-1000",
    "replay-10000",
    "http-start",
    "http-status",
    "http-hello",
    "http-latency",
    "payload-10mib",
    "stored-1000",
    "stored-100000",
    "inflight-100000",
    "hosts-1",
    "hosts-3",
    "recovery",
];

/// Scenarios that fill a SQLite file directly (any `stored-N` may be named with
/// `--scenario`, e.g. `stored-1000000`).
fn sqlite_only(scenario: &str) -> bool {
    scenario.starts_with("stored-") || scenario == "recovery"
}

/// Scenarios that need a store shared by several processes.
const MULTI_HOST: &[&str] = &["hosts-1", "hosts-3"];

/// One measured row.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    scenario: String,
    store: String,
    count: u64,
    unit: String,
    wall_ms: f64,
    rate: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    extra: Option<String>,
    peak_rss_mb: f64,
    /// CPU time (user + system) of the whole scenario process, all threads; steadier than
    /// wall time on a busy machine.
    cpu_ms: f64,
}

fn usage() -> ! {
    eprintln!(
        "usage: durable-bench [--store memory|sqlite|postgres|all] [--scenario NAME|all] [--json FILE]\nscenarios: {}\n(any stored-N or inflight-N with N >= 1000 may be named, e.g. stored-1000000, inflight-10000)",
        SCENARIOS.join(", ")
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut store = "all".to_string();
    let mut scenario = "all".to_string();
    let mut json = "bench-results.json".to_string();
    let mut child = false;
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).cloned().unwrap_or_else(|| usage());
        match args[i].as_str() {
            "--store" => store = value(),
            "--scenario" => scenario = value(),
            "--json" => json = value(),
            "--child" => {
                // A flag without a value: step over it alone.
                child = true;
                i += 1;
                continue;
            }
            "--recovery-host" => {
                // The process the recovery scenario kills: starts its instances on the
                // SQLite file, says so, and works until killed.
                run_recovery_host(&value());
                return;
            }
            "--worker" => {
                // A worker process of a multi-host scenario: serves the schema until its
                // standard input closes.
                run_worker(&value());
                return;
            }
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument '{other}'");
                usage()
            }
        }
        i += 2;
    }
    if child {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let sampler = (store == "postgres").then(PostgresCpu::start);
        let mut row = rt.block_on(run_scenario(&scenario, &store));
        if let Some(sampler) = sampler {
            let db = sampler.stop();
            let note = format!(
                "db CPU {db:.0} ms ({:.0} us/unit)",
                db * 1000.0 / row.count as f64
            );
            row.extra = Some(match row.extra.take() {
                Some(e) => format!("{e}; {note}"),
                None => note,
            });
        }
        println!("{}", serde_json::to_string(&row).expect("row serializes"));
        return;
    }
    let stores: Vec<&str> = match store.as_str() {
        "all" => vec!["memory", "sqlite", "postgres"],
        "memory" => vec!["memory"],
        "sqlite" => vec!["sqlite"],
        "postgres" => vec!["postgres"],
        _ => usage(),
    };
    let scenarios: Vec<&str> = if scenario == "all" {
        SCENARIOS.to_vec()
    } else if SCENARIOS.contains(&scenario.as_str())
        || ["stored-", "inflight-"].iter().any(|p| {
            scenario
                .strip_prefix(p)
                .is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n >= 1000))
        })
    {
        vec![scenario.as_str()]
    } else {
        usage()
    };
    let exe = std::env::current_exe().expect("own path");
    let mut rows = Vec::new();
    for st in &stores {
        for sc in &scenarios {
            if MULTI_HOST.contains(sc) && *st != "postgres" {
                continue;
            }
            if sqlite_only(sc) && *st != "sqlite" {
                continue;
            }
            eprintln!("running {sc} on {st} ...");
            let proc = std::process::Command::new(&exe)
                .args(["--child", "--store", st, "--scenario", sc])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("child runs");
            // The SQLite scenarios keep their files in a directory named after the child's
            // process id; it goes once the child has exited, whatever the outcome.
            let scratch = std::env::temp_dir().join(format!("durable-bench-{}", proc.id()));
            let out = proc.wait_with_output().expect("child runs");
            let _ = std::fs::remove_dir_all(&scratch);
            if !out.status.success() {
                eprintln!(
                    "scenario {sc} on {st} failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                continue;
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout.lines().last().unwrap_or_default();
            match serde_json::from_str::<Row>(line) {
                Ok(row) => rows.push(row),
                Err(e) => eprintln!("scenario {sc} on {st}: bad output ({e}): {stdout}"),
            }
        }
    }
    println!("{}", markdown(&rows));
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&rows).expect("rows serialize"),
    )
    .expect("write JSON results");
    eprintln!("wrote {json}");
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| scenario | store | count | wall (ms) | rate | p50 (ms) | p99 (ms) | peak RSS (MB) | CPU (ms) | notes |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for r in rows {
        let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} {} | {} | {} | {:.0} | {:.0} | {} |\n",
            r.scenario,
            r.store,
            r.count,
            r.wall_ms,
            r.rate,
            r.unit,
            f(r.p50_ms),
            f(r.p99_ms),
            r.peak_rss_mb,
            r.cpu_ms,
            r.extra.clone().unwrap_or_default()
        ));
    }
    s
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn make_store(kind: &str) -> Arc<dyn Store> {
    match kind {
        "memory" => Arc::new(durable_core::MemoryStore::new()),
        "sqlite" => {
            let dir = std::env::temp_dir().join(format!("durable-bench-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join("bench.db");
            let _ = std::fs::remove_file(&path);
            Arc::new(durable_core::store::sqlite::SqliteStore::open(&path).expect("open sqlite"))
        }
        "postgres" => Arc::new(postgres_store(&bench_schema(), true)),
        other => panic!("unknown store {other}"),
    }
}

/// The database the PostgreSQL scenarios use.
fn bench_pg_url() -> String {
    std::env::var("DURABLE_BENCH_PG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "postgres://root@127.0.0.1:5432/test".into())
}

/// A schema of this scenario's own.
fn bench_schema() -> String {
    format!("bench_{}", std::process::id())
}

/// A PostgreSQL store on `schema` (dropped with the store when `owner`); must run inside
/// the tokio runtime.
fn postgres_store(schema: &str, owner: bool) -> durable_core::store::postgres::PostgresStore {
    let pool = std::env::var("DURABLE_BENCH_PG_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(durable_core::store::postgres::DEFAULT_POOL_SIZE);
    durable_core::store::postgres::PostgresStore::builder(bench_pg_url())
        .schema(schema)
        .pool_size(pool)
        .drop_schema_on_drop(owner)
        .open()
        .expect("open PostgreSQL (DURABLE_BENCH_PG)")
}

/// CPU time spent by the PostgreSQL server processes while a scenario runs: sampled every
/// 20 ms per process, since a connection's backend exits (taking its counters along) when
/// the scenario closes its store.
struct PostgresCpu {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl PostgresCpu {
    fn start() -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::collections::HashMap;
            // pid -> (CPU when first seen, CPU when last seen); processes started during
            // the scenario count from zero.
            let mut seen: HashMap<u32, (f64, f64)> = postgres_processes()
                .into_iter()
                .map(|(pid, cpu)| (pid, (cpu, cpu)))
                .collect();
            loop {
                let done = flag.load(std::sync::atomic::Ordering::Relaxed);
                for (pid, cpu) in postgres_processes() {
                    seen.entry(pid).or_insert((0.0, cpu)).1 = cpu;
                }
                if done {
                    return seen.values().map(|(a, b)| b - a).sum();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { stop, thread }
    }

    /// Stops sampling; the CPU milliseconds spent since the start.
    fn stop(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0.0)
    }
}

/// Every PostgreSQL server process on this machine with its CPU time (user + system) so
/// far, in milliseconds.
fn postgres_processes() -> Vec<(u32, f64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(postgres") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        out.push((pid, (ticks(11) + ticks(12)) * 10.0));
    }
    out
}

/// A worker process of a multi-host scenario: runs every bench function on `schema` until
/// its standard input closes.
fn run_worker(schema: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let worker = runtime(Arc::new(postgres_store(schema, false)), 20_000);
        println!("ready");
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
        worker.shutdown().await;
    });
}

/// Instances the recovery scenario has in flight when it kills their worker.
const RECOVERY_INSTANCES: u64 = 300;

/// How long `say_hello_paced` takes: long in the process the recovery scenario kills (so
/// the kill finds activities running), nothing after the restart (so what is measured is
/// the recovery, not the work).
static PACE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The worker process the recovery scenario kills: default options (one-minute activity
/// leases), [`RECOVERY_INSTANCES`] paced HelloSequence5 instances started on `db`, each
/// activity taking a second.
fn run_recovery_host(db: &str) {
    PACE_MS.store(1000, std::sync::atomic::Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let store = durable_core::store::sqlite::SqliteStore::open(db).expect("open sqlite");
        let worker = runtime(Arc::new(store), 20_000);
        let c = worker.client();
        for _ in 0..RECOVERY_INSTANCES {
            start(&c, "hello_sequence5_paced", "null").await;
        }
        println!("started");
        std::future::pending::<()>().await;
    });
}

/// SIGKILL with work in flight, then a restart on the same SQLite file: the time from
/// reopening the file to the last instance completed.
async fn recovery_scenario() -> Row {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("durable-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("recovery.db");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    let exe = std::env::current_exe().expect("own path");
    let mut host = std::process::Command::new(&exe)
        .arg("--recovery-host")
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("host starts");
    let mut line = String::new();
    std::io::BufReader::new(host.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("host says it started");
    // Mid-flight: activities running under their leases, the rest queued.
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.kill().expect("SIGKILL");
    host.wait().expect("host exits");
    let t = Instant::now();
    let store: Arc<dyn Store> =
        Arc::new(durable_core::store::sqlite::SqliteStore::open(&db).expect("reopen sqlite"));
    let running = store
        .list_instances(&durable_core::InstanceFilter::default(), 10_000, None)
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|s| !s.status.is_terminal())
        .map(|s| s.instance_id)
        .collect::<Vec<_>>();
    let rt = runtime(store, 20_000);
    let c = rt.client();
    for id in &running {
        completed(&c, id).await;
    }
    let wall = t.elapsed();
    let mut r = row(
        "recovery",
        "sqlite",
        running.len() as u64,
        "orchestrations/s",
        wall,
    );
    r.extra = Some(format!(
        "{} of {RECOVERY_INSTANCES} instances unfinished at SIGKILL; wall = reopen to all done",
        running.len()
    ));
    rt.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// HelloSequence5 ×`n` started by this process (a client only) and run by `hosts` worker
/// processes sharing one PostgreSQL schema.
async fn multi_host_scenario(scenario: &str, hosts: usize, n: u64) -> Row {
    use std::io::BufRead;
    let schema = bench_schema();
    let store = Arc::new(postgres_store(&schema, true));
    let exe = std::env::current_exe().expect("own path");
    let mut workers = Vec::new();
    for _ in 0..hosts {
        let mut child = std::process::Command::new(&exe)
            .args(["--worker", &schema])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("worker starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("worker says it is ready");
        workers.push(child);
    }
    let c = DurableClient::new(store.clone());
    let t = Instant::now();
    let mut starters = Vec::new();
    for i in 0..64 {
        let c = c.clone();
        let share = n / 64 + u64::from(i < n % 64);
        starters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..share {
                ids.push(start(&c, "hello_sequence5", "null").await);
            }
            ids
        }));
    }
    let mut ids = Vec::with_capacity(n as usize);
    for s in starters {
        ids.extend(s.await.expect("starter"));
    }
    for id in &ids {
        completed(&c, id).await;
    }
    let wall = t.elapsed();
    for mut w in workers {
        drop(w.stdin.take());
        let _ = w.wait();
    }
    let worker_cpu = children_cpu_ms();
    let mut r = row(scenario, "postgres", n, "orchestrations/s", wall);
    r.extra = Some(format!(
        "{hosts} worker processes; their CPU {worker_cpu:.0} ms ({:.0} us/orchestration)",
        worker_cpu * 1000.0 / n as f64
    ));
    r
}

/// CPU time of this process's waited-for children so far (cumulative), in milliseconds.
fn children_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(13) + ticks(14)) * 10.0
}

fn registry() -> Registry {
    Registry::builder()
        .activity("say_hello", |_ctx, name: String| async move {
            Ok::<_, ActivityError>(format!("Hello {name}!"))
        })
        .activity("say_hello_paced", |_ctx, name: String| async move {
            let pace = PACE_MS.load(std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(pace)).await;
            Ok::<_, ActivityError>(format!("Hello {name}!"))
        })
        .activity("big_result", |_ctx, len: usize| async move {
            Ok::<_, ActivityError>("r".repeat(len))
        })
        .activity("add_one", |_ctx, n: u64| async move {
            Ok::<_, ActivityError>(n + 1)
        })
        .orchestrator("noop", |_ctx: OrchestrationContext, n: u64| async move {
            Ok::<_, OrchestrationError>(n)
        })
        .orchestrator(
            "hello_sequence5",
            |ctx: OrchestrationContext, _: ()| async move {
                let mut out = Vec::with_capacity(5);
                for city in ["Tokyo", "Seattle", "London", "Paris", "Cairo"] {
                    out.push(
                        ctx.call_activity_by_name::<String>("say_hello", &city)
                            .await?,
                    );
                }
                Ok::<_, OrchestrationError>(out)
            },
        )
        .orchestrator(
            "hello_sequence5_paced",
            |ctx: OrchestrationContext, _: ()| async move {
                let mut out = Vec::with_capacity(5);
                for city in ["Tokyo", "Seattle", "London", "Paris", "Cairo"] {
                    out.push(
                        ctx.call_activity_by_name::<String>("say_hello_paced", &city)
                            .await?,
                    );
                }
                Ok::<_, OrchestrationError>(out)
            },
        )
        .orchestrator(
            "big",
            |ctx: OrchestrationContext, input: String| async move {
                let result: String = ctx
                    .call_activity_by_name("big_result", &input.len())
                    .await?;
                Ok::<_, OrchestrationError>(result)
            },
        )
        .orchestrator("sequence", |ctx: OrchestrationContext, n: u64| async move {
            let mut v = 0u64;
            for _ in 0..n {
                v = ctx.call_activity_by_name("add_one", &v).await?;
            }
            Ok::<_, OrchestrationError>(v)
        })
        .orchestrator("fanout", |ctx: OrchestrationContext, n: u64| async move {
            let calls: Vec<_> = (0..n)
                .map(|i| ctx.call_activity_by_name::<u64>("add_one", &i))
                .collect();
            let mut sum = 0u64;
            for r in ctx.when_all(calls).await {
                sum += r?;
            }
            Ok::<_, OrchestrationError>(sum)
        })
        .orchestrator("events", |ctx: OrchestrationContext, n: u64| async move {
            let mut sum = 0u64;
            for _ in 0..n {
                let v: u64 = ctx.wait_for_external_event("e").await?;
                sum += v;
            }
            Ok::<_, OrchestrationError>(sum)
        })
        .orchestrator(
            "steps_then_wait",
            |ctx: OrchestrationContext, n: u64| async move {
                let mut v = 0u64;
                for _ in 0..n {
                    v = ctx.call_activity_by_name("add_one", &v).await?;
                }
                ctx.set_custom_status("steps done");
                let _: () = ctx.wait_for_external_event("finish").await?;
                Ok::<_, OrchestrationError>(v)
            },
        )
        .entity(
            "counter",
            |ctx: durable_core::EntityContext<u64>, op: durable_core::Operation| async move {
                let v = ctx.get_state_or_default()? + op.input::<u64>()?;
                ctx.set_state(&v);
                Ok::<_, durable_core::FailureDetails>(v)
            },
        )
        .build()
        .expect("registry")
}

fn runtime(store: Arc<dyn Store>, cache: usize) -> Worker {
    Worker::builder(store)
        .registry(registry())
        .cache_capacity(cache)
        .start()
        .expect("runtime")
}

const LONG: Duration = Duration::from_secs(600);

/// Concurrent clients raising events or signalling the entity (each acknowledged only after
/// its commit, so concurrency is what lets commits share an fsync).
const SENDERS: u64 = 40;

async fn start(client: &DurableClient, name: &str, input: &str) -> String {
    client
        .start_by_name(name, Some(input.to_string()), StartOptions::default())
        .await
        .expect("start")
}

async fn completed(client: &DurableClient, id: &str) {
    let st = client
        .wait_for_completion(id, LONG)
        .await
        .expect("finishes");
    assert_eq!(st.status, RuntimeStatus::Completed, "{:?}", st.failure);
}

fn row(scenario: &str, store: &str, count: u64, unit: &str, wall: Duration) -> Row {
    Row {
        scenario: scenario.to_string(),
        store: store.to_string(),
        count,
        unit: unit.to_string(),
        wall_ms: wall.as_secs_f64() * 1000.0,
        rate: count as f64 / wall.as_secs_f64(),
        p50_ms: None,
        p99_ms: None,
        extra: None,
        peak_rss_mb: 0.0,
        cpu_ms: 0.0,
    }
}

async fn run_scenario(scenario: &str, store_kind: &str) -> Row {
    if let Some(hosts) = scenario.strip_prefix("hosts-") {
        let hosts = hosts.parse().expect("host count");
        let mut r = multi_host_scenario(scenario, hosts, 2000).await;
        r.peak_rss_mb = peak_rss_mb();
        r.cpu_ms = cpu_ms();
        return r;
    }
    if scenario == "recovery" {
        let mut r = recovery_scenario().await;
        r.peak_rss_mb = peak_rss_mb();
        r.cpu_ms = cpu_ms();
        return r;
    }
    if let Some(n) = scenario.strip_prefix("stored-") {
        let mut r = stored_scenario(scenario, n.parse().expect("instance count")).await;
        r.peak_rss_mb = peak_rss_mb();
        r.cpu_ms = cpu_ms();
        return r;
    }
    let store = make_store(store_kind);
    if let Some(n) = scenario.strip_prefix("inflight-") {
        let n = n.parse().expect("instance count");
        let mut r = inflight_scenario(scenario, store_kind, store, n).await;
        r.peak_rss_mb = peak_rss_mb();
        r.cpu_ms = cpu_ms();
        return r;
    }
    let mut r = match scenario {
        "seq" => {
            let rt = runtime(store, 10_000);
            let c = rt.client();
            let t = Instant::now();
            let id = start(&c, "sequence", "1000").await;
            completed(&c, &id).await;
            let r = row(scenario, store_kind, 1000, "activities/s", t.elapsed());
            rt.shutdown().await;
            r
        }
        "fanout" => {
            let rt = runtime(store, 10_000);
            let c = rt.client();
            let t = Instant::now();
            let id = start(&c, "fanout", "10000").await;
            completed(&c, &id).await;
            let r = row(scenario, store_kind, 10_000, "activities/s", t.elapsed());
            rt.shutdown().await;
            r
        }
        "hello-1000" | "hello-10000" => {
            let n: u64 = scenario
                .trim_start_matches("hello-")
                .parse()
                .expect("count");
            let rt = runtime(store, 20_000);
            let c = rt.client();
            let t = Instant::now();
            // Started at once: concurrent clients, so starts share commits.
            let mut starters = Vec::new();
            for i in 0..64 {
                let c = c.clone();
                let share = n / 64 + u64::from(i < n % 64);
                starters.push(tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for _ in 0..share {
                        ids.push(start(&c, "hello_sequence5", "null").await);
                    }
                    ids
                }));
            }
            let mut ids = Vec::with_capacity(n as usize);
            for s in starters {
                ids.extend(s.await.expect("starter"));
            }
            for id in &ids {
                completed(&c, id).await;
            }
            let wall = t.elapsed();
            let mut r = row(scenario, store_kind, n, "orchestrations/s", wall);
            r.extra = Some(format!(
                "{:.0} activities/s",
                (n * 5) as f64 / wall.as_secs_f64()
            ));
            rt.shutdown().await;
            r
        }
        "latency" => {
            let rt = runtime(store, 1000);
            let c = rt.client();
            let mut samples = Vec::with_capacity(100);
            let t = Instant::now();
            for _ in 0..100 {
                let s = Instant::now();
                let id = start(&c, "hello_sequence5", "null").await;
                completed(&c, &id).await;
                samples.push(s.elapsed().as_secs_f64() * 1000.0);
            }
            let wall = t.elapsed();
            samples.sort_by(|a, b| a.total_cmp(b));
            let mut r = row(scenario, store_kind, 100, "orchestrations/s", wall);
            r.p50_ms = Some(samples[49]);
            r.p99_ms = Some(samples[98]);
            rt.shutdown().await;
            r
        }
        "events" => {
            let rt = runtime(store, 1000);
            let c = rt.client();
            let n = 10_000u64;
            let id = start(&c, "events", &n.to_string()).await;
            let t = Instant::now();
            let mut senders = Vec::new();
            for s in 0..SENDERS {
                let c = c.clone();
                let id = id.clone();
                senders.push(tokio::spawn(async move {
                    for _ in 0..n / SENDERS {
                        c.raise_event(&id, "e", &s).await.expect("raise");
                    }
                }));
            }
            for s in senders {
                s.await.expect("sender");
            }
            completed(&c, &id).await;
            let mut r = row(scenario, store_kind, n, "events/s", t.elapsed());
            r.extra = Some(format!("{SENDERS} concurrent senders"));
            rt.shutdown().await;
            r
        }
        "entity" => {
            let rt = runtime(store, 1000);
            let c = rt.client();
            let n = 10_000u64;
            let id = durable_core::EntityId::new("counter", "bench");
            let t = Instant::now();
            let mut senders = Vec::new();
            for _ in 0..SENDERS {
                let c = c.clone();
                let id = id.clone();
                senders.push(tokio::spawn(async move {
                    for _ in 0..n / SENDERS {
                        c.signal_entity(&id, "add", &1u64).await.expect("signal");
                    }
                }));
            }
            for s in senders {
                s.await.expect("sender");
            }
            loop {
                if c.read_entity_state::<u64>(&id).await.expect("read") == Some(n) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut r = row(scenario, store_kind, n, "operations/s", t.elapsed());
            r.extra = Some(format!("{SENDERS} concurrent senders"));
            rt.shutdown().await;
            r
        }
        s if s.starts_with("replay-") => {
            let n: u64 = s.trim_start_matches("replay-").parse().expect("steps");
            // Cache on: time per step of a long sequential orchestration.
            let rt = runtime(store.clone(), 1000);
            let c = rt.client();
            let t = Instant::now();
            let id = start(&c, "steps_then_wait", &n.to_string()).await;
            loop {
                let st = store
                    .get_instance(&id)
                    .await
                    .expect("state")
                    .expect("exists");
                if st.custom_status.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let warm = t.elapsed();
            rt.shutdown().await;
            // Cache off: one cold replay of the whole history.
            let rt = runtime(store, 0);
            let c = rt.client();
            let t = Instant::now();
            c.raise_event(&id, "finish", &()).await.expect("raise");
            completed(&c, &id).await;
            let cold = t.elapsed();
            let mut r = row(scenario, store_kind, n, "steps/s", warm);
            r.extra = Some(format!(
                "{:.1} us/step warm; cold full replay {:.1} ms ({:.2} us/event)",
                warm.as_secs_f64() * 1e6 / n as f64,
                cold.as_secs_f64() * 1e3,
                cold.as_secs_f64() * 1e6 / (n as f64 * 4.0)
            ));
            rt.shutdown().await;
            r
        }
        "payload-10mib" => {
            // A 10 MiB input, a 10 MiB activity result and a 10 MiB output, one
            // orchestration at a time.
            const BIG: usize = 10 * 1024 * 1024;
            let rt = runtime(store, 10);
            let c = rt.client();
            let input = format!("\"{}\"", "i".repeat(BIG));
            let n = 10;
            let mut samples = Vec::with_capacity(n);
            let t = Instant::now();
            for _ in 0..n {
                let s = Instant::now();
                let id = start(&c, "big", &input).await;
                let st = c.wait_for_completion(&id, LONG).await.expect("finishes");
                assert_eq!(st.status, RuntimeStatus::Completed, "{:?}", st.failure);
                assert_eq!(st.output.map(|o| o.len()), Some(BIG + 2));
                samples.push(s.elapsed().as_secs_f64() * 1000.0);
            }
            let mut r = row(
                scenario,
                store_kind,
                n as u64,
                "orchestrations/s",
                t.elapsed(),
            );
            set_percentiles(&mut r, samples);
            r.extra = Some("10 MiB input, activity result and output each, one at a time".into());
            rt.shutdown().await;
            r
        }
        "http-start" | "http-status" => http_scenario(scenario, store_kind, store).await,
        "http-hello" | "http-latency" => http_hello_scenario(scenario, store_kind, store).await,
        other => panic!("unknown scenario {other}"),
    };
    r.peak_rss_mb = peak_rss_mb();
    r.cpu_ms = cpu_ms();
    r
}

/// `inflight-N`: N instances of `events` (input 1: each waits for one external event `e`)
/// started at once by concurrent clients under the ids `inflight-0`.., on a worker with
/// the default replay cache (10,000 instances); then a wait until none is `Pending` (every
/// one has run its first episode and is waiting, so all N are in flight together); then
/// the N events raised by [`SENDERS`] concurrent clients; then a wait for each instance.
/// The row's rate is orchestrations per second from the first start to the last
/// completion; `notes` has the phases, the counts (lost = N - completed, within ten
/// minutes) and the CPU per orchestration. Any instance lost or failed fails the scenario.
async fn inflight_scenario(scenario: &str, store_kind: &str, store: Arc<dyn Store>, n: u64) -> Row {
    assert!(n >= 1000, "inflight-N needs N >= 1000");
    let rt = runtime(store.clone(), 10_000);
    let c = rt.client();
    let id = |i: u64| format!("inflight-{i}");
    let t = Instant::now();
    let mut starters = Vec::new();
    for s in 0..64 {
        let c = c.clone();
        starters.push(tokio::spawn(async move {
            let mut i = s;
            while i < n {
                c.start_by_name(
                    "events",
                    Some("1".into()),
                    StartOptions {
                        instance_id: Some(id(i)),
                        ..StartOptions::default()
                    },
                )
                .await
                .expect("start");
                i += 64;
            }
        }));
    }
    for s in starters {
        s.await.expect("starter");
    }
    let started = t.elapsed();
    // In flight: no instance still waits for its first episode.
    let pending = durable_core::InstanceFilter {
        statuses: vec![RuntimeStatus::Pending],
        ..Default::default()
    };
    let deadline = Instant::now() + LONG;
    while !store
        .list_instances(&pending, 1, None)
        .await
        .expect("list")
        .items
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "instances still pending after {LONG:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running = t.elapsed();
    let rss_running = peak_rss_mb();
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let c = c.clone();
        senders.push(tokio::spawn(async move {
            let mut i = s;
            while i < n {
                c.raise_event(&id(i), "e", &1u64).await.expect("raise");
                i += SENDERS;
            }
        }));
    }
    for s in senders {
        s.await.expect("sender");
    }
    let raised = t.elapsed();
    // Each instance's final status, waited for by 16 clients until a shared deadline.
    let deadline = Instant::now() + LONG;
    let mut waiters = Vec::new();
    for w in 0..16u64 {
        let c = c.clone();
        waiters.push(tokio::spawn(async move {
            let (mut completed, mut failed) = (0u64, 0u64);
            let mut i = w;
            while i < n {
                let left = deadline.saturating_duration_since(Instant::now());
                match c.wait_for_completion(&id(i), left).await {
                    Ok(st) if st.status == RuntimeStatus::Completed => completed += 1,
                    Ok(st) if st.status.is_terminal() => failed += 1,
                    _ => {}
                }
                i += 16;
            }
            (completed, failed)
        }));
    }
    let (mut completed, mut failed) = (0, 0);
    for w in waiters {
        let (c, f) = w.await.expect("waiter");
        completed += c;
        failed += f;
    }
    let wall = t.elapsed();
    let lost = n - completed - failed;
    let cpu = cpu_ms();
    let mut r = row(scenario, store_kind, completed, "orchestrations/s", wall);
    r.extra = Some(format!(
        "{n} in flight together: started in {:.1} s, all running at {:.1} s (peak RSS then {rss_running:.0} MB), events raised by {:.1} s; completed {completed}, failed {failed}, lost {lost}; {:.0} us CPU/orchestration",
        started.as_secs_f64(),
        running.as_secs_f64(),
        raised.as_secs_f64(),
        cpu * 1000.0 / n as f64,
    ));
    rt.shutdown().await;
    assert!(
        failed == 0 && lost == 0,
        "{scenario} on {store_kind}: {}",
        r.extra.as_deref().unwrap_or_default()
    );
    r
}

/// User + system CPU time of this process so far, in milliseconds (from /proc/self/stat,
/// in clock ticks of 10 ms).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) * 10.0
}

/// Connections the HTTP load generator keeps open.
const HTTP_CONNECTIONS: usize = 64;
/// The management key of the bench host.
const HTTP_KEY: &str = "bench-key-0123456789abcdef";

/// Serves a host on a loopback port and measures start requests (each answered `202` only
/// after the new instance is committed) or public status reads of finished instances.
async fn http_scenario(scenario: &str, store_kind: &str, store: Arc<dyn Store>) -> Row {
    use durable_http::{ClientExt, Host, HttpRequest, HttpResult};

    let host = Host::builder()
        .addr("127.0.0.1:0")
        .store(store)
        .key(HTTP_KEY)
        .registry(registry())
        .without_registered_routes()
        .route(
            &["POST"],
            "/api/start",
            |client: DurableClient, req: HttpRequest| async move {
                let id = client
                    .start_by_name("noop", Some("1".into()), StartOptions::default())
                    .await?;
                HttpResult::Ok(client.check_status_response(&req, &id))
            },
        )
        .build()
        .expect("host builds")
        .bind()
        .await
        .expect("host binds");
    let addr = host.addr;
    let client = host.client();
    let r = if scenario == "http-start" {
        let n = 20_000;
        let (wall, lat) = load(addr, HTTP_CONNECTIONS, n, |_| {
            (
                http::Method::POST,
                "/api/start".to_string(),
                http::StatusCode::ACCEPTED,
                bytes::Bytes::new(),
            )
        })
        .await;
        let mut r = row(scenario, store_kind, n as u64, "req/s", wall);
        set_percentiles(&mut r, lat);
        r.extra = Some(format!(
            "POST /api/start ({HTTP_CONNECTIONS} keep-alive connections; 202 after commit)"
        ));
        r
    } else {
        // Finished instances to read: started through the client, in parallel.
        let mut starters = Vec::new();
        for _ in 0..16 {
            let c = client.clone();
            starters.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..64 {
                    ids.push(start(&c, "noop", "1").await);
                }
                ids
            }));
        }
        let mut ids = Vec::new();
        for s in starters {
            ids.extend(s.await.expect("starter"));
        }
        for id in &ids {
            completed(&client, id).await;
        }
        let ids = Arc::new(ids);
        let n = 100_000;
        let (wall, lat) = load(addr, HTTP_CONNECTIONS, n, move |i| {
            (
                http::Method::GET,
                format!("/api/instances/{}", ids[i % ids.len()]),
                http::StatusCode::OK,
                bytes::Bytes::new(),
            )
        })
        .await;
        let mut r = row(scenario, store_kind, n as u64, "req/s", wall);
        set_percentiles(&mut r, lat);
        r.extra = Some(format!(
            "GET /api/instances/{{id}} of completed instances ({HTTP_CONNECTIONS} keep-alive connections)"
        ));
        r
    };
    host.shutdown().await;
    r
}

/// A host serving everything [`registry`] registers (no routes of its own), with the
/// management API under its key; everything else as shipped.
async fn bench_host(store: Arc<dyn Store>) -> durable_http::RunningHost {
    durable_http::Host::builder()
        .addr("127.0.0.1:0")
        .store(store)
        .key(HTTP_KEY)
        .registry(registry())
        .without_registered_routes()
        .build()
        .expect("host builds")
        .bind()
        .await
        .expect("host binds")
}

/// HelloSequence5 through a real host over HTTP.
///
/// `http-hello`: 10,000 starts (`POST .../orchestrators/hello_sequence5/{id}` on
/// `HTTP_CONNECTIONS` keep-alive connections, each answered `202` after its commit), then a
/// long-poll per instance (`GET /api/instances/{id}?wait=120s`, `200` once it completed);
/// the rate is orchestrations per second from the first start to the last completion.
///
/// `http-latency`: one at a time on one connection, start-and-wait in one request
/// (`POST .../orchestrators/hello_sequence5/{id}?timeout=10`, `200` with the output);
/// p50/p99 of 200 such requests after 20 unmeasured ones.
async fn http_hello_scenario(scenario: &str, store_kind: &str, store: Arc<dyn Store>) -> Row {
    const BASE: &str = "/runtime/webhooks/durabletask";

    let host = bench_host(store).await;
    let addr = host.addr;
    let r = if scenario == "http-hello" {
        let n = 10_000;
        let t = Instant::now();
        let (starts, start_lat) = load(addr, HTTP_CONNECTIONS, n, |i| {
            (
                http::Method::POST,
                format!("{BASE}/orchestrators/hello_sequence5/hello-{i}?code={HTTP_KEY}"),
                http::StatusCode::ACCEPTED,
                bytes::Bytes::new(),
            )
        })
        .await;
        let (_, _) = load(addr, HTTP_CONNECTIONS, n, |i| {
            (
                http::Method::GET,
                format!("/api/instances/hello-{i}?wait=120s"),
                http::StatusCode::OK,
                bytes::Bytes::new(),
            )
        })
        .await;
        let wall = t.elapsed();
        let mut r = row(scenario, store_kind, n as u64, "orchestrations/s", wall);
        let mut start_lat = start_lat;
        start_lat.sort_by(|a, b| a.total_cmp(b));
        r.extra = Some(format!(
            "{n} starts over HTTP at {:.0} req/s (start p50 {:.2} ms), then a long-poll each; {HTTP_CONNECTIONS} keep-alive connections",
            n as f64 / starts.as_secs_f64(),
            start_lat.get(start_lat.len() / 2).copied().unwrap_or(0.0),
        ));
        r
    } else {
        let (warm, n) = (20, 200);
        let request = |i: usize| {
            (
                http::Method::POST,
                format!(
                    "{BASE}/orchestrators/hello_sequence5/latency-{i}?timeout=10&pollingInterval=1&code={HTTP_KEY}"
                ),
                http::StatusCode::OK,
                bytes::Bytes::new(),
            )
        };
        load(addr, 1, warm, request).await;
        let (wall, lat) = load(addr, 1, n, move |i| request(warm + i)).await;
        let mut r = row(scenario, store_kind, n as u64, "orchestrations/s", wall);
        set_percentiles(&mut r, lat);
        r.extra = Some(
            "start-and-wait in one POST (?timeout=10&pollingInterval=1), one at a time on one connection".into(),
        );
        r
    };
    host.shutdown().await;
    r
}

/// `stored-N`: N completed HelloSequence5 instances in a SQLite file, then the cost of
/// reading and purging them. One instance is run by a worker; its rows (instance and
/// history, exactly as the engine wrote them) are copied N times with SQL in batches of
/// 50,000 under ids `s00000000`.. and creation times 1 ms apart. Then, through a host on
/// one connection: status GETs of random instances (p50/p99 of 2,000) and filtered list
/// pages `runtimeStatus=Completed&instanceIdPrefix=sNNNNN&top=100` (each prefix matches
/// 1,000 instances; p50 of 200, in `notes`), the database bytes per instance, and a purge
/// of all N by creation time range (instances/s, in `notes`). The row's rate is status
/// GETs per second.
async fn stored_scenario(scenario: &str, n: u64) -> Row {
    const BASE: &str = "/runtime/webhooks/durabletask";
    assert!(n >= 1000, "stored-N needs N >= 1000");
    let dir = std::env::temp_dir().join(format!("durable-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("stored.db");
    let _ = std::fs::remove_file(&path);
    {
        let store: Arc<dyn Store> =
            Arc::new(durable_core::store::sqlite::SqliteStore::open(&path).expect("open sqlite"));
        let rt = runtime(store.clone(), 10);
        let c = rt.client();
        let id = c
            .start_by_name(
                "hello_sequence5",
                Some("null".into()),
                StartOptions {
                    instance_id: Some("template".into()),
                    ..StartOptions::default()
                },
            )
            .await
            .expect("start");
        completed(&c, &id).await;
        rt.shutdown().await;
        store.close().await.expect("close");
    }
    let fill = Instant::now();
    let path2 = path.clone();
    tokio::task::spawn_blocking(move || fill_sqlite(&path2, n))
        .await
        .expect("fill");
    let fill = fill.elapsed();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(path.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);

    let store: Arc<dyn Store> =
        Arc::new(durable_core::store::sqlite::SqliteStore::open(&path).expect("open sqlite"));
    let host = bench_host(store).await;
    let addr = host.addr;
    let pick = move |i: usize| (i as u64).wrapping_mul(2_654_435_761) % n;
    let (wall, status) = load(addr, 1, 2000, move |i| {
        (
            http::Method::GET,
            format!("/api/instances/s{:08}", pick(i)),
            http::StatusCode::OK,
            bytes::Bytes::new(),
        )
    })
    .await;
    let groups = n / 1000;
    let (_, mut lists) = load(addr, 1, 200, move |i| {
        (
            http::Method::GET,
            format!(
                "{BASE}/instances?runtimeStatus=Completed&instanceIdPrefix=s{:05}&top=100&code={HTTP_KEY}",
                (i as u64).wrapping_mul(2_654_435_761) % groups
            ),
            http::StatusCode::OK,
            bytes::Bytes::new(),
        )
    })
    .await;
    lists.sort_by(|a, b| a.total_cmp(b));
    let client = host.client();
    let filter = durable_core::InstanceFilter {
        created_from: Some(chrono::DateTime::<chrono::Utc>::MIN_UTC),
        created_to: Some(chrono::Utc::now() + chrono::Duration::days(3650)),
        ..Default::default()
    };
    let t = Instant::now();
    let purged = client.purge_instances(&filter).await.expect("purge");
    let purge = t.elapsed();
    assert_eq!(purged, n + 1, "every stored instance purged");
    host.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);

    let mut r = row(scenario, "sqlite", 2000, "status GETs/s", wall);
    set_percentiles(&mut r, status);
    r.extra = Some(format!(
        "{n} stored ({:.0} bytes/instance; filled in {:.1} s); list page p50 {:.2} ms, p99 {:.2} ms; purge by time range {:.0} instances/s ({:.2} s)",
        bytes as f64 / n as f64,
        fill.as_secs_f64(),
        lists[lists.len() / 2],
        lists[lists.len() * 99 / 100],
        n as f64 / purge.as_secs_f64(),
        purge.as_secs_f64()
    ));
    r
}

/// Copies the instance `template` and its history `n` times (see [`stored_scenario`]),
/// then checkpoints the WAL into the file.
fn fill_sqlite(path: &std::path::Path, n: u64) {
    let mut conn = rusqlite::Connection::open(path).expect("open for filling");
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL")
        .expect("pragmas");
    const BATCH: u64 = 50_000;
    let mut from = 0;
    while from < n {
        let to = (from + BATCH).min(n);
        let tx = conn.transaction().expect("transaction");
        tx.execute(
            "WITH RECURSIVE k(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < ?2)
             INSERT INTO instances(id, execution_id, name, version, status, input, output,
                 failure, custom_status, created_at, last_updated_at, parent, history_len)
             SELECT printf('s%08d', k.i), execution_id, name, version, status, input, output,
                 failure, custom_status, created_at - (?3 * 1000) + k.i * 1000,
                 last_updated_at - (?3 * 1000) + k.i * 1000, parent, history_len
             FROM instances, k WHERE id = 'template' ORDER BY k.i",
            rusqlite::params![from as i64, to as i64, n as i64],
        )
        .expect("copy instances");
        tx.execute(
            "WITH RECURSIVE k(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < ?2)
             INSERT INTO history(instance_id, seq, events)
             SELECT printf('s%08d', k.i), seq, events
             FROM history, k WHERE instance_id = 'template' ORDER BY k.i, seq",
            rusqlite::params![from as i64, to as i64],
        )
        .expect("copy history");
        tx.commit().expect("commit");
        from = to;
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
}

fn set_percentiles(r: &mut Row, mut samples: Vec<f64>) {
    samples.sort_by(|a, b| a.total_cmp(b));
    if samples.is_empty() {
        return;
    }
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    r.p50_ms = Some(at(0.50));
    r.p99_ms = Some(at(0.99));
}

/// The load generator: `connections` keep-alive connections share `n` requests;
/// `request(i)` gives the method, path and expected status of request `i`, and its body.
/// Returns the wall time and each request's latency in milliseconds.
async fn load<F>(
    addr: std::net::SocketAddr,
    connections: usize,
    n: usize,
    request: F,
) -> (Duration, Vec<f64>)
where
    F: Fn(usize) -> (http::Method, String, http::StatusCode, bytes::Bytes) + Send + Sync + 'static,
{
    use http_body_util::{BodyExt, Full};

    let request = Arc::new(request);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..connections {
        let request = request.clone();
        let next = next.clone();
        conns.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let (method, path, expect, body) = request(i);
                let req = http::Request::builder()
                    .method(method)
                    .uri(path)
                    .header(http::header::HOST, "127.0.0.1")
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body))
                    .expect("request");
                let s = Instant::now();
                sender.ready().await.expect("connection ready");
                let resp = sender.send_request(req).await.expect("response");
                let status = resp.status();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(status, expect, "{}", String::from_utf8_lossy(&body));
                lat.push(s.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut lat = Vec::with_capacity(n);
    for c in conns {
        lat.extend(c.await.expect("connection task"));
    }
    (t.elapsed(), lat)
}
