use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};

// Not seen by the check: it reads only the orchestrator's own body.
fn deadline() -> tokio::time::Instant {
    tokio::time::Instant::now()
}
#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let _ = ctx;
    let d = std::time::Duration::from_secs(1);
    tokio::time::sleep(d).await;
    tokio::time::sleep_until(deadline()).await;
    let _ = tokio::time::interval(d);
    let _ = tokio::time::timeout(d, async {}).await;
    std::thread::sleep(d);
    Ok(())
}
fn main() {}
