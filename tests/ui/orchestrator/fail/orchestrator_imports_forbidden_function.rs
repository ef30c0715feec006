use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};

#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let _ = ctx;
    use tokio::time::sleep;
    sleep(std::time::Duration::from_secs(1)).await;
    Ok(())
}
fn main() {}
