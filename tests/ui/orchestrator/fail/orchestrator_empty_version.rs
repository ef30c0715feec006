use durable_core::{OrchestrationContext, OrchestrationError};
#[durable_core::orchestrator(version = "")]
async fn hello(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let _ = ctx;
    Ok(())
}
fn main() {}
