#![deny(warnings)]
use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};
#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    loop {
        ctx.create_timer(std::time::Duration::from_secs(60)).await;
    }
}
fn main() {}
