use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};
#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<u64, OrchestrationError> {
    let _ = ctx;
    let t = std::time::SystemTime::now();
    let _ = std::time::Instant::now();
    Ok(t.elapsed().map(|d| d.as_secs()).unwrap_or(0))
}
fn main() {}
