use durable_core::{ActivityContext, OrchestrationError};
#[durable_core::orchestrator]
async fn hello(ctx: ActivityContext) -> Result<(), OrchestrationError> {
    let _ = ctx;
    Ok(())
}
fn main() {}
