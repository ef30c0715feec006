use durable_core::{OrchestrationContext, OrchestrationError};
pub struct Order;
#[durable_core::orchestrator]
async fn hello(ctx: OrchestrationContext, order: Order) -> Result<(), OrchestrationError> {
    let _ = (ctx, order);
    Ok(())
}
fn main() {}
