#![deny(warnings)]
use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};

#[orchestrator]
async fn monitor(ctx: OrchestrationContext, round: u32) -> Result<(), OrchestrationError> {
    // Deliberate and harmless: only logged.
    #[nondeterministic]
    let started = std::time::Instant::now();
    let _ = started;
    loop {
        ctx.create_timer(std::time::Duration::from_secs(60)).await;
        if round > 10 {
            return ctx.continue_as_new(0u32).await;
        }
    }
}

#[orchestrator]
async fn biased(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let a = ctx.create_timer(std::time::Duration::from_secs(1));
    let b = ctx.create_timer(std::time::Duration::from_secs(2));
    tokio::select! {
        biased;
        _ = a => {}
        _ = b => {}
    }
    Ok(())
}

// The escape hatch on an expression statement and on a deliberate endless loop: both
// markers are removed before compiling, and nothing is reported.
#[orchestrator]
async fn heartbeat(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    #[nondeterministic]
    println!("started at {:?}", std::time::SystemTime::now());
    #[nondeterministic]
    loop {
        ctx.create_timer(std::time::Duration::from_secs(60)).await;
    }
}

fn main() {
    let _ = (monitor, biased, heartbeat);
}
