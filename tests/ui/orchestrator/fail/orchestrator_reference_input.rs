use durable_core::{OrchestrationContext, OrchestrationError};
#[durable_core::orchestrator]
async fn hello(ctx: OrchestrationContext, city: &str) -> Result<(), OrchestrationError> {
    let _ = (ctx, city);
    Ok(())
}
fn main() {}
