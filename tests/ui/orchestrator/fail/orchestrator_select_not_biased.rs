use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};
#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let a = ctx.create_timer(std::time::Duration::from_secs(1));
    let b = ctx.create_timer(std::time::Duration::from_secs(2));
    tokio::select! {
        _ = a => {}
        _ = b => {}
    }
    Ok(())
}
fn main() {}
