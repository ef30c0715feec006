//! The host Durable Functions' own clients are tested against (`tests/clients/`): the
//! management API on an ephemeral loopback port, with a fixed key and a SQLite file.
//!
//! Usage: `client_host <db-path> <key>`. Prints `listening on http://127.0.0.1:PORT` on
//! stdout once it accepts requests, and serves until its standard input closes (so it
//! never outlives the test that started it) or it gets SIGINT/SIGTERM.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use durable_core::{
    activity, entity, orchestrator, ActivityContext, ActivityError, OrchestrationContext,
    OrchestrationError,
};
use serde::{Deserialize, Serialize};

/// Greets a city.
#[activity]
async fn say_hello(city: String) -> Result<String, ActivityError> {
    Ok(format!("Hello {city}!"))
}

/// Greets each city in turn.
#[orchestrator]
async fn hello_cities(
    ctx: OrchestrationContext,
    cities: Vec<String>,
) -> Result<Vec<String>, OrchestrationError> {
    let mut out = Vec::new();
    for city in cities {
        out.push(ctx.call_activity(say_hello, city).await?);
    }
    Ok(out)
}

/// What `approval` waits for.
#[derive(Debug, Serialize, Deserialize)]
struct Decision {
    approved: bool,
}

/// What `approval` is asked to approve.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    document: String,
}

/// Waits for an `Approval` event; data that is not a [`Decision`] is counted in the
/// custom status and the wait goes on (for up to 100 of them).
#[orchestrator]
async fn approval(
    ctx: OrchestrationContext,
    request: Request,
) -> Result<String, OrchestrationError> {
    let document = request.document;
    ctx.set_custom_status(&serde_json::json!({"document": document, "rejected": 0}));
    for rejected in 1..=100 {
        match ctx.wait_for_external_event::<Decision>("Approval").await {
            Ok(d) if d.approved => return Ok(format!("{document}: approved")),
            Ok(_) => return Ok(format!("{document}: rejected")),
            Err(e) if e.is_decode_error() => ctx.set_custom_status(
                &serde_json::json!({"document": document, "rejected": rejected}),
            ),
            Err(e) => return Err(e.into()),
        }
    }
    Err(OrchestrationError::new("too many malformed decisions"))
}

/// Fails the first time it runs for an instance, succeeds after that: a rewind's work.
#[activity]
async fn flaky_step(ctx: ActivityContext, n: u32) -> Result<u32, ActivityError> {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let first = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(ctx.instance_id().to_string());
    if first {
        return Err(ActivityError::new("the first attempt fails"));
    }
    Ok(n * 2)
}

/// Doubles its input through `flaky_step`: fails until rewound.
#[orchestrator]
async fn flaky(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    Ok(ctx.call_activity(flaky_step, n).await?)
}

/// A counter entity with a typed `add`.
#[derive(Default, Serialize, Deserialize)]
struct Counter {
    value: i64,
}

#[entity]
impl Counter {
    /// Adds `n`.
    pub fn add(&mut self, n: i64) -> i64 {
        self.value += n;
        self.value
    }

    /// Back to zero.
    pub fn reset(&mut self) {
        self.value = 0;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(db), Some(key)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: client_host <db-path> <key>");
        std::process::exit(2);
    };
    let host = durable_http::Host::builder()
        .addr("127.0.0.1:0")
        .db(db)
        .key(key.as_str())
        .build()
        .expect("host builds")
        .bind()
        .await
        .expect("host binds");
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
