use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};

#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let _ = ctx;
    let _ = std::env::var("HOME");
    Ok(())
}
fn main() {}
