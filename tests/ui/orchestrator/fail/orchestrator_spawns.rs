use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};

#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let _ = ctx;
    let _ = tokio::spawn(async {});
    let _ = std::thread::spawn(|| {});
    let _ = tokio::task::spawn_blocking(|| {});
    Ok(())
}
fn main() {}
