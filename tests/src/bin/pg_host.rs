//! A host for the multi-host tests (`tests/tests/multi_host.rs`): several of these share
//! one PostgreSQL database. Configured like any host from the environment (`DURABLE_DB`
//! with a `postgres://` URL, `DURABLE_DB_SCHEMA`, `DURABLE_KEY`, `DURABLE_DB_POLL`), on an
//! ephemeral loopback port, with short leases so a killed host's work is taken over
//! quickly.
//!
//! Usage: `pg_host`. Prints `listening on http://127.0.0.1:PORT` on stdout once it accepts
//! requests, and serves until its standard input closes (so it never outlives the test
//! that started it) or it gets SIGINT/SIGTERM. A start-up error is printed on stderr and
//! the exit code is 1.

use std::time::Duration;

use durable_core::{
    activity, entity, orchestrator, ActivityError, OrchestrationContext, OrchestrationError,
};
use serde::{Deserialize, Serialize};

/// One step of a chain: its input plus one.
#[activity]
async fn step(n: u64) -> Result<u64, ActivityError> {
    Ok(n + 1)
}

/// Five steps, one after another: returns its input plus five.
#[orchestrator]
async fn chain5(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let mut v = n;
    for _ in 0..5 {
        v = ctx.call_activity(step, v).await?;
    }
    Ok(v)
}

/// Doubles its input.
#[activity]
async fn double(n: u64) -> Result<u64, ActivityError> {
    Ok(n * 2)
}

/// `n` activities at once; returns the sum of their results (`n * (n - 1)`).
#[orchestrator]
async fn fan_out(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let calls: Vec<_> = (0..n).map(|i| ctx.call_activity(double, i)).collect();
    let results = ctx.when_all(calls).await;
    let mut sum = 0;
    for r in results {
        sum += r?;
    }
    Ok(sum)
}

/// Waits for the `go` event and returns its data.
#[orchestrator]
async fn wait_go(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    Ok(ctx.wait_for_external_event::<String>("go").await?)
}

/// A total that signals add to.
#[derive(Default, Serialize, Deserialize)]
struct Tally {
    total: i64,
}

#[entity(name = "tally")]
impl Tally {
    /// Adds `n`.
    pub fn add(&mut self, n: i64) -> i64 {
        self.total += n;
        self.total
    }
}

#[tokio::main]
async fn main() {
    let options = durable_core::WorkerOptions {
        orchestration_lease: Duration::from_secs(3),
        activity_lease: Duration::from_secs(3),
        ..Default::default()
    };
    let host = match durable_http::Host::builder()
        .addr("127.0.0.1:0")
        .worker_options(options)
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("pg_host: {e}");
            std::process::exit(1);
        }
    };
    let host = host.bind().await.expect("host binds");
    println!("listening on {}", host.url());
    // Serve until the parent closes our standard input (or a signal ends the process).
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    tokio::select! {
        _ = stdin_closed => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    host.shutdown().await;
}
