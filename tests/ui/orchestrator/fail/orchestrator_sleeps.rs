use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};
#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let _ = ctx;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    std::thread::sleep(std::time::Duration::from_secs(1));
    Ok(())
}
fn main() {}
