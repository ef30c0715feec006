use durable_core::{OrchestrationContext, OrchestrationError};
#[durable_core::orchestrator]
async fn hello<T: Default>(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let _ = (ctx, T::default());
    Ok(())
}
fn main() {}
