use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};

#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let _ = ctx;
    println!("now: {:?}", std::time::Instant::now());
    Ok(())
}
fn main() {}
