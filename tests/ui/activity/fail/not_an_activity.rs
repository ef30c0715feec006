use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};
async fn plain(n: u64) -> u64 {
    n
}
#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<u64, OrchestrationError> {
    Ok(ctx.call_activity(plain, 1).await?)
}
fn main() {}
