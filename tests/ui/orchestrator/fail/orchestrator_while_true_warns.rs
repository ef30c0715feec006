#![deny(warnings)]
#![allow(while_true)]
use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};
#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    while true {
        ctx.create_timer(std::time::Duration::from_secs(60)).await;
    }
    Ok(())
}
fn main() {}
