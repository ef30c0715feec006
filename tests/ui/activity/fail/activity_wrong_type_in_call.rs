use durable_core::{activity, orchestrator, OrchestrationContext, OrchestrationError};
#[activity]
async fn double(n: u64) -> u64 {
    n * 2
}
#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<u64, OrchestrationError> {
    Ok(ctx.call_activity(double, "two".to_string()).await?)
}
fn main() {}
